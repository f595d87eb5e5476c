"""CLIP image and text embeddings through open_clip, with weights from a tag or a local file."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError

from photoindex.settings import Settings, get_settings
from tasks.models.base import LazyModel

logger = logging.getLogger(__name__)

Embeddings = npt.NDArray[np.float32]

_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".npz", ".npy"}

# What open_clip raises when weights cannot be had or do not fit the architecture (all checked):
# RuntimeError - a tag's download failed (offline, hub unreachable) or the state dict mismatches;
# AssertionError - open_clip's positional-embedding resize meets weights of another width;
# SafetensorError / UnpicklingError - the file is not a readable checkpoint.
_WEIGHT_LOAD_ERRORS = (RuntimeError, AssertionError, SafetensorError, pickle.UnpicklingError)


@contextlib.contextmanager
def _weights_to_come() -> Iterator[None]:
    """Build a model whose every parameter a checkpoint then overwrites: torch.nn.init's
    random initialisers do nothing meanwhile (as Hugging Face's `no_init_weights` does).

    open_clip loads checkpoints strictly, so no parameter keeps the uninitialised values;
    buffers computed in constructors (the text tower's attention mask) are untouched.
    Measured (`bench/bench_model_load.py`): ViT-B-32 loads in a new process in 0.85 s
    instead of 1.54 s. Only for the construction, which no other thread does meanwhile.
    """
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}

    def keep(tensor: torch.Tensor, *_: Any, **__: Any) -> torch.Tensor:
        return tensor

    try:
        for name in names:
            setattr(torch.nn.init, name, keep)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


Precision = Literal["auto", "float32", "bfloat16"]


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16): there,
    oneDNN runs CLIP's matrix products at twice the float32 speed; elsewhere bfloat16 is
    emulated and slower than float32."""
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def clip_dtype(precision: Precision) -> torch.dtype:
    """The dtype CLIP runs in: `auto` is bfloat16 where the CPU computes it natively.

    Measured (`bench/bench_clip_precision.py`, ViT-B-32, 2 threads, AVX512-BF16): 24.7-43.5
    ms a photo instead of 49.3-98.7 ms, at batch 16 down to 1; the embeddings' cosine to
    the float32 ones is 0.99995 or more. OpenAI released CLIP's weights in float16 and runs
    them so on GPUs: reduced precision is how the model is used. The model's id does not
    change with it, so a library indexed in one precision is not embedded again in the
    other.
    """
    if precision == "bfloat16" or (precision == "auto" and native_bfloat16()):
        return torch.bfloat16
    return torch.float32


class ClipModelError(RuntimeError):
    """The CLIP architecture or its config cannot be found."""


class ClipWeightsError(ClipModelError):
    """CLIP weights cannot be had: no download, unknown tag, or a missing or unfit file."""


class ClipEmbedder(LazyModel):
    """open_clip model that embeds photos and texts as L2-normalised float32 vectors."""

    # Loaded state is prefixed `_m_` so pickling drops it; class defaults cover unpickled copies.
    _m_model: Any = None
    _m_preprocess: Callable[[Image.Image], torch.Tensor] | None = None
    _m_tokenizer: Callable[[list[str]], torch.Tensor] | None = None
    _m_dim: int | None = None
    _m_dtype: torch.dtype = torch.float32

    def __init__(
        self,
        model_name: str | None = None,
        pretrained: str | Path | None = None,
        config: Path | None = None,
        threads: int | None = None,
        settings: Settings | None = None,
        precision: Precision | None = None,
    ) -> None:
        super().__init__()
        settings = settings or get_settings()  # what an argument left out defaults to
        self.config: Path | None = config if config is not None else settings.clip_config
        if config is None and model_name is not None and self.config is not None:
            # An explicit architecture uses the configured JSON only if that JSON defines it.
            if self.config.stem != model_name:
                self.config = None
        if model_name is not None:
            name = model_name
        elif config is not None:
            name = config.stem
        else:
            name = settings.clip_architecture
        self.model_name: str = name
        self.pretrained: str = str(
            pretrained if pretrained is not None else settings.clip_pretrained
        )
        self.threads: int = threads if threads is not None else settings.threads
        self.precision: Precision = precision or settings.clip_precision
        self._model_id: str | None = None

    # The base declares model_id as a plain class attribute; here it is derived and read-only.
    @property
    def model_id(self) -> str:  # type: ignore[override]
        """Architecture plus weights, e.g. "ViT-B-32:laion2b_s34b_b79k" or "arch:file:sha12"."""
        if self._model_id is None:
            kind, source = self._weights_source()
            if kind == "tag":
                self._model_id = f"{self.model_name}:{source}"
            else:
                path = Path(source)
                with path.open("rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                self._model_id = f"{self.model_name}:{path.name}:{digest[:12]}"
        return self._model_id

    @property
    def dim(self) -> int:
        """Embedding width, as the loaded model produces it."""
        self.load()
        assert self._m_dim is not None
        return self._m_dim

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """The model's own open_clip transform: one photo to a (3, H, W) tensor."""
        self.load()
        assert self._m_preprocess is not None
        return self._m_preprocess(img)

    def embed_tensors(self, batch: torch.Tensor) -> Embeddings:
        """Embed a batch of already preprocessed photos, shape (N, 3, H, W)."""
        self.load()
        with torch.inference_mode():
            return _unit_rows(self._m_model.encode_image(batch.to(self._m_dtype)))

    def embed_text(self, texts: list[str]) -> Embeddings:
        """Embed texts with the model's own tokenizer, one unit row per text."""
        self.load()
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        tokenizer = self._m_tokenizer
        if tokenizer is None:
            with self._lock:
                if self._m_tokenizer is None:
                    self._m_tokenizer = open_clip.get_tokenizer(self.model_name)
                tokenizer = self._m_tokenizer
        assert tokenizer is not None
        with torch.inference_mode():
            return _unit_rows(self._m_model.encode_text(tokenizer(texts)))

    def embed_images(self, inputs: list[Image.Image]) -> Embeddings:
        """Embed photos: the model's preprocess, then one forward pass for all of them."""
        if not inputs:
            return np.empty((0, self.dim), dtype=np.float32)
        return self.embed_tensors(torch.stack([self.preprocess(img) for img in inputs]))

    def _load(self) -> None:
        if self.config is not None:
            self._register_config(self.config)
        if self.model_name not in open_clip.list_models():
            raise ClipModelError(
                f"open_clip does not know the CLIP architecture '{self.model_name}'. Set "
                "PHOTOINDEX_CLIP_MODEL to one of open_clip.list_models() (e.g. ViT-B-32), or "
                "PHOTOINDEX_CLIP_CONFIG=/path/to/<arch>.json for an architecture of your own."
            )
        kind, source = self._weights_source()
        model_id = self.model_id  # hash the file before open_clip reads it
        try:
            with _weights_to_come():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    self.model_name, pretrained=source
                )
        except _WEIGHT_LOAD_ERRORS as e:
            raise ClipWeightsError(self._load_failure(kind, source, e)) from e
        dtype = clip_dtype(self.precision)
        model.eval().to(dtype)
        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            probe = model.encode_image(preprocess(Image.new("RGB", (64, 64)))[None].to(dtype))
        self._m_model = model
        self._m_dtype = dtype
        self._m_preprocess = preprocess
        self._m_dim = int(probe.shape[-1])
        logger.info(
            "loaded CLIP %s (dim %d, %d threads, %s)",
            model_id, self._m_dim, self.threads, str(dtype).removeprefix("torch."),
        )  # fmt: skip

    def _register_config(self, config: Path) -> None:
        if not config.is_file():
            raise ClipModelError(
                f"CLIP model config not found: {config}. Set PHOTOINDEX_CLIP_CONFIG to an existing "
                "open_clip model-config JSON, or unset it to use a built-in architecture."
            )
        if config.stem != self.model_name:
            raise ClipModelError(
                f"open_clip names the architecture in {config} '{config.stem}' (the file's stem), "
                f"but the model name is '{self.model_name}'. Rename the file to "
                f"{self.model_name}.json, or set PHOTOINDEX_CLIP_MODEL={config.stem}."
            )
        open_clip.add_model_config(config)

    def _weights_source(self) -> tuple[Literal["tag", "file"], str]:
        """Classify `pretrained` as a known tag or an existing file; raise if it is neither."""
        if open_clip.get_pretrained_cfg(self.model_name, self.pretrained):
            return "tag", self.pretrained
        path = Path(self.pretrained).expanduser()
        if path.is_file():
            return "file", str(path)
        if "/" in self.pretrained or "\\" in self.pretrained or path.suffix in _WEIGHT_SUFFIXES:
            problem = f"CLIP weights file not found: {self.pretrained}."
        else:
            tags = open_clip.list_pretrained_tags_by_model(self.model_name)
            known = f"known tags: {', '.join(tags)}" if tags else "it has no known tags"
            problem = (
                f"'{self.pretrained}' is neither an open_clip pretrained tag for "
                f"'{self.model_name}' ({known}) nor an existing file."
            )
        raise ClipWeightsError(f"{problem} {self._fix_hint()}")

    def _load_failure(self, kind: Literal["tag", "file"], source: str, err: BaseException) -> str:
        if kind == "tag":
            hub = str(open_clip.get_pretrained_cfg(self.model_name, source).get("hf_hub", ""))
            where = f" from https://huggingface.co/{hub.rstrip('/')}" if hub else ""
            return (
                f"Could not download CLIP weights '{source}' for '{self.model_name}'{where} "
                f"(offline or hub unreachable?): {_sentence(err)} {self._fix_hint()}"
            )
        return (
            f"CLIP weights file {source} could not be loaded as '{self.model_name}' (corrupt, "
            f"or weights for another architecture): {_sentence(err)} {self._fix_hint()}"
        )

    def _fix_hint(self) -> str:
        arch = f"PHOTOINDEX_CLIP_MODEL={self.model_name}"
        if self.config is not None:
            arch += f" and PHOTOINDEX_CLIP_CONFIG={self.config}"
        return (
            "To fix: get the open_clip weights for this architecture on a machine with internet "
            "(e.g. open_clip_model.safetensors from the model hub), copy the file here, and set "
            "PHOTOINDEX_CLIP_PRETRAINED=/path/to/open_clip_model.safetensors together with "
            f"{arch} (the architecture)."
        )


def _sentence(err: BaseException) -> str:
    """An exception's text ending in exactly one full stop."""
    return str(err).strip().rstrip(".") + "."


def _unit_rows(features: torch.Tensor) -> Embeddings:
    """L2-normalise each row in float32 and hand it back as a numpy array."""
    unit = F.normalize(features.float(), dim=-1)
    return np.ascontiguousarray(unit.cpu().numpy(), dtype=np.float32)
