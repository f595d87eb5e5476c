"""ClipEmbedder on a tiny random-weight model loaded the way real weights are."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from tasks.models.clip import ClipEmbedder, ClipWeightsError, Precision, clip_dtype
from tests.clip_tiny import TINY_CLIP_NAME, build_tiny_clip

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Config and weights of the tiny model, built once for this module."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def embedder(tiny: tuple[Path, Path]) -> ClipEmbedder:
    """The tiny model, loaded through `pretrained=<file>`."""
    config, weights = tiny
    model = ClipEmbedder(pretrained=weights, config=config, threads=2)
    model.load()
    return model


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    """Real photos shipped with scikit-image."""
    return {
        name: Image.fromarray(getattr(data, name)())
        for name in ("astronaut", "coffee", "rocket", "chelsea")
    }


def test_loads_tiny_model_from_weights_file(
    embedder: ClipEmbedder, tiny: tuple[Path, Path]
) -> None:
    _, weights = tiny
    assert embedder.loaded
    assert embedder.model_name == TINY_CLIP_NAME
    assert embedder.model_id.startswith(f"{TINY_CLIP_NAME}:{weights.name}:")
    assert embedder.dim == 64


def test_photo_embeddings_are_unit_float32_rows(
    embedder: ClipEmbedder, photos: dict[str, Image.Image]
) -> None:
    vectors = embedder.embed_images(list(photos.values()))
    assert vectors.shape == (len(photos), 64)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Different photos must not collapse onto one vector.
    assert len({row.tobytes() for row in vectors}) == len(photos)


def test_real_photo_embeds(embedder: ClipEmbedder, photos: dict[str, Image.Image]) -> None:
    vector = embedder.embed_images([photos["astronaut"]])
    assert vector.shape == (1, 64)
    assert np.isfinite(vector).all()


def test_empty_batch_gives_empty_rows(embedder: ClipEmbedder) -> None:
    assert embedder.embed_images([]).shape == (0, 64)
    assert embedder.embed_text([]).shape == (0, 64)


def test_caller_side_preprocessing_matches_embed_images(
    embedder: ClipEmbedder, photos: dict[str, Image.Image]
) -> None:
    images = list(photos.values())
    batch = torch.stack([embedder.preprocess(img) for img in images])
    assert batch.shape == (len(images), 3, 224, 224)
    np.testing.assert_array_equal(embedder.embed_tensors(batch), embedder.embed_images(images))


def test_reload_gives_identical_embeddings(
    embedder: ClipEmbedder, tiny: tuple[Path, Path], photos: dict[str, Image.Image]
) -> None:
    config, weights = tiny
    again = ClipEmbedder(pretrained=weights, config=config, threads=2)
    images = list(photos.values())
    np.testing.assert_array_equal(again.embed_images(images), embedder.embed_images(images))
    texts = ["a photo of a cat", "a rocket"]
    np.testing.assert_array_equal(again.embed_text(texts), embedder.embed_text(texts))


def test_a_model_built_without_random_init_holds_exactly_the_checkpoint(
    tiny: tuple[Path, Path],
) -> None:
    """The embedder skips torch's random initialisers while it builds the model (the
    checkpoint overwrites every parameter): its parameters and buffers are those of
    open_clip's own build-then-load, and the initialisers work again afterwards."""
    import open_clip

    config, weights = tiny
    exact = ClipEmbedder(pretrained=weights, config=config, threads=2, precision="float32")
    exact.load()
    reference, _, _ = open_clip.create_model_and_transforms(TINY_CLIP_NAME, pretrained=str(weights))
    ours = exact._m_model.state_dict(keep_vars=False)
    theirs = reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    for (name, mine), (_, ref) in zip(
        exact._m_model.named_buffers(), reference.named_buffers(), strict=True
    ):
        assert torch.equal(mine, ref), name
    drawn = torch.nn.init.kaiming_uniform_(torch.zeros(8, 8))
    assert drawn.abs().sum() > 0, "torch.nn.init was left disabled"


def test_bfloat16_embeddings_agree_with_float32(
    tiny: tuple[Path, Path], photos: dict[str, Image.Image]
) -> None:
    """bfloat16 (what `auto` picks on a CPU that computes it natively) runs the model in
    bfloat16 and gives the float32 embeddings to within a cosine of 0.999, so each text
    finds the same photo first."""
    config, weights = tiny
    full, half = (
        ClipEmbedder(pretrained=weights, config=config, threads=2, precision=p)
        for p in ("float32", "bfloat16")
    )
    images = list(photos.values())
    exact, reduced = full.embed_images(images), half.embed_images(images)
    assert half._m_model.visual.conv1.weight.dtype == torch.bfloat16
    assert full._m_model.visual.conv1.weight.dtype == torch.float32
    assert reduced.dtype == np.float32
    assert not np.array_equal(exact, reduced), "the same numbers: bfloat16 did not run"
    assert np.sum(exact * reduced, axis=1).min() >= 0.999
    texts = ["a photo of a cat", "a cup of coffee", "a rocket launch", "an astronaut"]
    words, words_half = full.embed_text(texts), half.embed_text(texts)
    assert np.sum(words * words_half, axis=1).min() >= 0.999
    np.testing.assert_array_equal(
        (words @ exact.T).argmax(axis=1), (words_half @ reduced.T).argmax(axis=1)
    )


@pytest.mark.parametrize(
    ("precision", "capabilities", "dtype"),
    [
        ("auto", {"avx512_bf16": True}, torch.bfloat16),
        ("auto", {"amx_bf16": True, "avx512_bf16": False}, torch.bfloat16),
        ("auto", {"avx512_bf16": False, "avx2": True}, torch.float32),
        ("float32", {"avx512_bf16": True}, torch.float32),
        ("bfloat16", {}, torch.bfloat16),
    ],
)
def test_auto_precision_is_bfloat16_only_where_the_cpu_computes_it(
    monkeypatch: pytest.MonkeyPatch,
    precision: Precision,
    capabilities: dict[str, bool],
    dtype: torch.dtype,
) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert clip_dtype(precision) == dtype


def test_pickled_copy_reloads_and_matches(
    embedder: ClipEmbedder, photos: dict[str, Image.Image]
) -> None:
    copy = pickle.loads(pickle.dumps(embedder))  # how Dask ships it to a worker
    assert not copy.loaded
    images = [photos["chelsea"]]
    np.testing.assert_array_equal(copy.embed_images(images), embedder.embed_images(images))


def test_text_embeds_as_unit_rows(embedder: ClipEmbedder) -> None:
    vectors = embedder.embed_text(["a photo of a cat", "a cup of coffee", "a rocket launch"])
    assert vectors.shape == (3, 64)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


def test_model_id_is_stable_and_follows_file_content(
    embedder: ClipEmbedder, tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    config, weights = tiny
    assert ClipEmbedder(pretrained=weights, config=config).model_id == embedder.model_id

    copy = tmp_path / weights.name
    shutil.copyfile(weights, copy)
    assert ClipEmbedder(pretrained=copy, config=config).model_id == embedder.model_id

    with copy.open("r+b") as f:  # flip one byte of tensor data at the end of the file
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    changed = ClipEmbedder(pretrained=copy, config=config).model_id
    assert changed != embedder.model_id
    assert changed.startswith(f"{TINY_CLIP_NAME}:{weights.name}:")


def test_model_id_for_a_tag_names_arch_and_tag() -> None:
    model = ClipEmbedder(model_name="ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert model.model_id == "ViT-B-32:laion2b_s34b_b79k"
    assert not model.loaded


def test_missing_weights_file_says_how_to_fix(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    config, _ = tiny
    missing = tmp_path / "open_clip_model.safetensors"
    model = ClipEmbedder(pretrained=missing, config=config)
    with pytest.raises(ClipWeightsError) as err:
        model.load()
    message = str(err.value)
    assert str(missing) in message
    assert "PHOTOINDEX_CLIP_PRETRAINED=" in message
    assert f"PHOTOINDEX_CLIP_MODEL={TINY_CLIP_NAME}" in message
    assert not model.loaded


@pytest.mark.parametrize("pretrained", ["no_such_tag", ""])
def test_unknown_tag_says_how_to_fix(pretrained: str) -> None:
    # An empty setting must not fall through to open_clip's silent random init.
    with pytest.raises(ClipWeightsError, match="PHOTOINDEX_CLIP_PRETRAINED=") as err:
        ClipEmbedder(model_name="ViT-B-32", pretrained=pretrained).load()
    assert "laion2b_s34b_b79k" in str(err.value)  # the known tags are listed


def test_weights_for_another_arch_are_refused(tiny: tuple[Path, Path]) -> None:
    _, weights = tiny
    with pytest.raises(ClipWeightsError, match="PHOTOINDEX_CLIP_MODEL=ViT-B-32"):
        ClipEmbedder(model_name="ViT-B-32", pretrained=weights).load()


@pytest.mark.slow
def test_default_tag_offline_says_how_to_fix(tmp_path: Path) -> None:
    # A fresh process, because huggingface_hub reads HF_HUB_OFFLINE when it is imported.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTOINDEX_")}
    env |= {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = (
        "from tasks.models.clip import ClipEmbedder, ClipWeightsError\n"
        "try:\n"
        "    ClipEmbedder(model_name='ViT-B-32', pretrained='laion2b_s34b_b79k').load()\n"
        "except ClipWeightsError as e:\n"
        "    raise SystemExit('WEIGHTS-ERROR ' + str(e))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "WEIGHTS-ERROR" in result.stderr
    assert "PHOTOINDEX_CLIP_PRETRAINED=/path/to/open_clip_model.safetensors" in result.stderr
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in result.stderr


REAL_CLIP = os.environ.get("PHOTOINDEX_TEST_REAL_CLIP")


@pytest.mark.skipif(
    not REAL_CLIP,
    reason="needs real CLIP weights: set PHOTOINDEX_TEST_REAL_CLIP=/path/to/"
    "open_clip_model.safetensors (architecture from PHOTOINDEX_CLIP_MODEL, default ViT-B-32); "
    "the tiny test model has random weights, so it cannot judge meaning",
)
def test_real_clip_finds_the_cat_photo(photos: dict[str, Image.Image]) -> None:
    model = ClipEmbedder(pretrained=REAL_CLIP)
    names = list(photos)
    image_vectors = model.embed_images([photos[name] for name in names])
    text_vector = model.embed_text(["a photo of a cat"])[0]
    ranking = [names[i] for i in np.argsort(-(image_vectors @ text_vector))]
    assert ranking[0] == "chelsea", ranking


def test_a_config_alone_names_the_architecture(tiny: tuple[Path, Path]) -> None:
    """PHOTOINDEX_CLIP_CONFIG without PHOTOINDEX_CLIP_MODEL: the config's architecture, not
    the default ViT-B-32; both set and disagreeing: a one-line error naming the variable."""
    from photoindex.settings import Settings
    from tasks.models.clip import ClipModelError
    from tasks.models.registry import clip_embedder

    config, weights = tiny
    alone = Settings(clip_config=config, clip_pretrained=str(weights))
    model = clip_embedder(alone)
    assert model.model_name == TINY_CLIP_NAME
    model.load()
    assert model.dim == 64

    both = Settings(clip_config=config, clip_pretrained=str(weights), clip_model="ViT-B-32")
    with pytest.raises(ClipModelError, match="PHOTOINDEX_CLIP_MODEL="):
        clip_embedder(both).load()
