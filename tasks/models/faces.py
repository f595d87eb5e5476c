"""Every face in a photo: a detector (YuNet or an InsightFace pack's SCRFD) and an encoder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from insightface.model_zoo.scrfd import SCRFD

from photoindex.settings import Settings, get_settings
from tasks.models.base import Floats, Image, LazyModel, onnx_session
from tasks.models.face_detector import YUNET_ID, FaceDetector
from tasks.models.face_encoder import SFACE_ID, FaceEncoder
from tasks.models.onnx_fix import prepare_face_models

PACK_DETECTOR = "det_10g.onnx"
PACK_ENCODER = "w600k_r50.onnx"


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
    def detect(self, img: Image) -> tuple[Floats, Floats]: ...


class FaceAnalyzer(LazyModel):
    """Detects, aligns and embeds every face in a photo; models load on first use."""

    counts_as_load = False  # the detector and the encoder count their own loads
    # Loaded state is prefixed `_m_` so pickling drops it; class defaults cover unpickled copies.
    _m_detector: _Detector | None = None
    _m_encoder: FaceEncoder | None = None

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
        super().__init__()
        settings = settings or get_settings()  # what an argument left out defaults to
        self.pack_dir = settings.face_pack if pack_dir is None else pack_dir
        self.detector_path = settings.face_detector if detector_path is None else detector_path
        self.encoder_path = settings.face_encoder if encoder_path is None else encoder_path
        self.models_dir = settings.models_dir if models_dir is None else models_dir
        self.det_size = settings.face_det_size if det_size is None else det_size
        self.det_threshold = settings.face_det_threshold if det_threshold is None else det_threshold
        self.min_face_size = min_face_size
        self.threads = settings.threads if threads is None else threads
        self.encoder_threads = encoder_threads

    # The base declares model_id as a plain class attribute; here it is derived and read-only.
    @property
    def model_id(self) -> str:  # type: ignore[override]
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
        assert self._m_encoder is not None
        return self._m_encoder

    @property
    def detector(self) -> _Detector:
        """The detector, built on first use."""
        self.load()
        assert self._m_detector is not None
        return self._m_detector

    @property
    def dim(self) -> int:
        """Embedding width of the configured recogniser."""
        return self.encoder.dim

    def _load(self) -> None:
        """Prepare model files if needed and load both models."""
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
            self._m_detector, self._m_encoder = scrfd, encoder
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
        self._m_detector, self._m_encoder = yunet, encoder

    def analyze(self, img_bgr: Image) -> list[Face]:
        """Every face of at least min_face_size pixels, best score first."""
        return self.encode(self.find(img_bgr))

    def find(self, img_bgr: Image) -> list[FoundFace]:
        """Detect and align every face of at least min_face_size pixels, best score first.

        This is all that needs the photo's pixels: the aligned crops carry the rest.
        """
        bboxes, kpss = self.detector.detect(img_bgr)
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
