"""The one place that builds and keeps the models: one of each per process and setting.

Phases, search and the warm indexer all take their models from here, so a model loaded
for one session is the one the next session uses, and `unload_all` frees every one.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

from photoindex.settings import Settings

if TYPE_CHECKING:
    from tasks.models.clip import ClipEmbedder
    from tasks.models.faces import FaceAnalyzer

logger = logging.getLogger(__name__)

M = TypeVar("M")
_models: dict[Hashable, Any] = {}
_guard = threading.Lock()


def _kept(key: Hashable, build: Callable[[], M]) -> M:
    with _guard:
        model = _models.get(key)
        if model is None:
            model = _models[key] = build()
        return model


def clip_embedder(settings: Settings) -> ClipEmbedder:
    """The CLIP model of these settings, loaded on first use."""
    from tasks.models.clip import ClipEmbedder

    key = ("clip", settings.clip_architecture, settings.clip_pretrained, settings.clip_config,
           settings.threads, settings.clip_precision)  # fmt: skip
    return _kept(key, lambda: ClipEmbedder(settings=settings))


def face_analyzer(settings: Settings, threads: int | None = None) -> FaceAnalyzer:
    """The face detector and encoder of these settings, loaded on first use."""
    from tasks.models.faces import FaceAnalyzer

    n = settings.threads if threads is None else threads
    key = ("faces", settings.face_detector, settings.face_encoder, settings.face_pack,
           settings.models_dir, settings.face_det_size, settings.face_det_threshold, n)  # fmt: skip
    return _kept(key, lambda: FaceAnalyzer(threads=n, settings=settings))


def loaded_models() -> list[str]:
    """The ids of the models this process holds loaded now."""
    with _guard:
        return sorted(m.model_id for m in _models.values() if m.loaded)


def unload_all() -> list[str]:
    """Drop every model this process holds and give the memory back; returns their ids."""
    dropped = loaded_models()
    with _guard:
        _models.clear()
    gc.collect()
    try:  # glibc keeps freed memory in its arenas; hand it back so the RSS really falls
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    if dropped:
        logger.info("unloaded models: %s", ", ".join(dropped))
    return dropped
