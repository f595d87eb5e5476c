"""A tiny random-weight open_clip model that loads through the same route as real weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import save_file

from photoindex.settings import Settings

TINY_CLIP_NAME = "photoindex-tiny-clip"

TINY_CLIP_CONFIG: dict[str, object] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 16, "patch_size": 32},
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,
        "width": 64,
        "heads": 4,
        "layers": 2,
    },
}


def build_tiny_clip(dest: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write the tiny model's config JSON and seeded random weights; return both paths."""
    dest.mkdir(parents=True, exist_ok=True)
    config_path = dest / f"{TINY_CLIP_NAME}.json"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
    open_clip.add_model_config(config_path)
    # fork_rng keeps the caller's global RNG state untouched by the seeding.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_CLIP_NAME)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    weights_path = dest / "tiny_clip.safetensors"
    save_file(state, str(weights_path))
    return config_path, weights_path


def tiny_settings(tiny: tuple[Path, Path], **fields: Any) -> Settings:
    """Settings that use the tiny model: its config file names the architecture."""
    config, weights = tiny
    return Settings(clip_config=config, clip_pretrained=str(weights), **fields)
