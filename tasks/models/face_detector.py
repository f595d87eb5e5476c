"""The YuNet face detector on onnxruntime, decoding its heads as OpenCV's FaceDetectorYN does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tasks.models.base import Floats, Image, LazyModel, onnx_session

YUNET_ID = "yunet-2023mar"

# YuNet's three heads, in the order OpenCV's FaceDetectorYN reads them.
_YUNET_STRIDES = (8, 16, 32)
_YUNET_OUTPUTS = [f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in _YUNET_STRIDES]
_YUNET_DIVISOR = 32


def _round_up(value: int) -> int:
    """The next multiple of YuNet's stride divisor."""
    return -(-value // _YUNET_DIVISOR) * _YUNET_DIVISOR


class FaceDetector(LazyModel):
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

    def detect(self, img_bgr: Image) -> tuple[Floats, Floats]:
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
