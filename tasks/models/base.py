"""The base classes of every model and the one place that builds onnxruntime sessions."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

logger = logging.getLogger(__name__)

#: How many times this process has loaded a model (the warm indexer reports it).
load_count = 0


#: An (H, W, 3) uint8 photo or crop; the face models take it in BGR order.
Image = npt.NDArray[np.uint8]
Floats = npt.NDArray[np.float32]


def onnx_session(model_path: Path, threads: int = 1) -> ort.InferenceSession:
    """Build a CPU onnxruntime session with a fixed thread count."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(
        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )


class LazyModel(ABC):
    """A model with a lazy, thread-safe `load()` that stays behind when pickled.

    Loaded state goes in attributes prefixed `_m_`: a pickled copy drops them and loads
    its own on first use.
    """

    model_id: str = "unknown"
    #: Whether a load counts in `load_count`; a pair of models counts its members instead.
    counts_as_load = True

    def __init__(self) -> None:
        self._loaded = False
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the model once; later calls do nothing."""
        if self._loaded:
            return
        with self._lock:
            if not self._loaded:
                global load_count
                logger.info("loading model %s", self.model_id)
                self._load()
                self._loaded = True
                if self.counts_as_load:
                    load_count += 1

    @property
    def loaded(self) -> bool:
        return self._loaded

    @abstractmethod
    def _load(self) -> None: ...

    def __getstate__(self) -> dict[str, Any]:
        # Loaded weights and sessions never travel between processes; each loads its own.
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_loaded"] = False
        return {k: v for k, v in state.items() if not k.startswith("_m_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
