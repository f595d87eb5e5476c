"""A face recogniser (SFace, or an InsightFace ArcFace pack) on onnxruntime: crops to vectors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.utils import face_align

from tasks.models.base import Floats, Image, LazyModel, onnx_session

SFACE_ID = "sface-2021dec"


class FaceEncoder(LazyModel):
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
            # and due for removal in 2.2; pyproject pins scikit-image <2.2 until then.
            warnings.simplefilter("ignore", FutureWarning)
            crop: Image = face_align.norm_crop(img_bgr, landmark=kps, image_size=self.crop_size)
        return crop

    def embed(self, crop_bgr: Image) -> Floats:
        """L2-normalised float32 embedding of one aligned BGR crop."""
        self.load()
        feat = np.asarray(self._m_model.get_feat(crop_bgr), dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(feat))
        return feat / norm if norm > 0 else feat
