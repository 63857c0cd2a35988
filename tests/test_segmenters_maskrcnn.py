"""The ``maskrcnn`` backend with random weights saved by state_dict: offline construction,
outputs equal to the in-memory model's, painting by score, tiling with class/score votes, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from segflow import segmenters  # noqa: E402
from segflow.inference import segment_image  # noqa: E402
from segflow.segmenters.maskrcnn import (  # noqa: E402
    COCO_CATEGORIES,
    MaskRcnnSegmenter,
    build_maskrcnn,
    detections_to_labels,
)

SMALL = {"min_size": 96, "max_size": 96}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    torch.manual_seed(0)
    model = build_maskrcnn(version="v1", num_classes=91, box_score_thresh=0.0, **SMALL).eval()
    path = tmp_path_factory.mktemp("maskrcnn") / "maskrcnn_random.pth"
    torch.save(model.state_dict(), path)
    return path, model


def _image(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    img = rng.random((3, h, w), dtype=np.float32) * 0.3
    img[:, h // 4 : h // 2, w // 4 : w // 2] += 0.6
    return np.clip(img, 0, 1)


def _segmenter(path: Path, **kw: object) -> MaskRcnnSegmenter:
    params: dict[str, object] = {
        "model_path": str(path),
        "device": "cpu",
        "score_threshold": 0.0,
        "resize_min": 96,
        "resize_max": 96,
    }
    params.update(kw)
    seg = segmenters.create("maskrcnn", **params)
    assert isinstance(seg, MaskRcnnSegmenter)
    return seg


@pytest.fixture(scope="module")
def shared_seg(weights: tuple[Path, object]) -> MaskRcnnSegmenter:
    return _segmenter(weights[0], min_size=0)


def test_loaded_model_detects_exactly_like_the_in_memory_one(
    weights: tuple[Path, object], shared_seg: MaskRcnnSegmenter
) -> None:
    _, model = weights
    seg = shared_seg
    assert seg.num_classes == 91 and seg.class_names == ["background", *COCO_CATEGORIES[1:]]
    assert seg.class_names[1] == "person"
    image = _image(80, 96)
    got = seg.detect([image])[0]
    with torch.no_grad():
        want = model([torch.from_numpy(image)])[0]  # type: ignore[operator]
    assert len(got["scores"]) > 0
    np.testing.assert_allclose(got["boxes"], want["boxes"].numpy(), atol=1e-5)
    np.testing.assert_allclose(got["scores"], want["scores"].numpy(), atol=1e-6)
    np.testing.assert_array_equal(got["labels"], want["labels"].numpy())
    np.testing.assert_allclose(got["masks"], want["masks"][:, 0].numpy(), atol=1e-5)


def test_segmentation_paints_detections_by_score(shared_seg: MaskRcnnSegmenter) -> None:
    seg = shared_seg
    image = _image(80, 96)
    result = segment_image(seg, image)
    det = seg.detect([image])[0]
    # brute force: each pixel belongs to the best-scoring detection whose mask covers it
    cover = det["masks"] > 0.5
    best = np.where(
        cover.any(axis=0), np.argmax(np.where(cover, det["scores"][:, None, None], -1), axis=0), -1
    )
    assert result.instances is not None
    np.testing.assert_array_equal(result.instances > 0, best >= 0)
    for i, cls in result.instance_classes.items():
        k = np.unique(best[result.instances == i])
        assert len(k) == 1  # one detection per instance
        assert cls == int(det["labels"][k[0]])
        assert result.instance_scores[i] == pytest.approx(float(det["scores"][k[0]]))
        assert np.all(result.classes[result.instances == i] == cls)
    assert np.all(result.classes[result.instances == 0] == 0)


def test_large_images_are_tiled_and_merged(weights: tuple[Path, object]) -> None:
    path, _ = weights
    seg = _segmenter(path, tile=64, overlap=16, score_threshold=0.2, batch_size=3)
    result = segment_image(seg, _image(100, 130))
    assert result.instances is not None and result.instances.shape == (100, 130)
    n = int(result.instances.max())
    np.testing.assert_array_equal(
        np.unique(result.instances[result.instances > 0]), np.arange(1, n + 1)
    )
    assert set(result.instance_classes) == set(range(1, n + 1))
    assert all(1 <= c < 91 for c in result.instance_classes.values())
    assert all(0.2 <= s <= 1.0 for s in result.instance_scores.values())


def test_detections_to_labels_drops_small_and_orders_by_score() -> None:
    masks = np.zeros((3, 10, 10), dtype=np.float32)
    masks[0, :5, :5] = 0.9
    masks[1, 2:8, 2:8] = 0.9  # overlaps 0, higher score: wins the overlap
    masks[2, 9, 9] = 0.9  # one pixel: dropped with min_size 2
    labels, classes, scores = detections_to_labels(
        masks, np.array([0.5, 0.8, 0.9]), np.array([3, 4, 5]), mask_threshold=0.5, min_size=2
    )
    assert classes == {1: 4, 2: 3} and scores == {1: 0.8, 2: 0.5}
    assert labels[3, 3] == 1 and labels[0, 0] == 2 and labels[9, 9] == 0


def test_errors_name_the_expected_file(weights: tuple[Path, object], tmp_path: Path) -> None:
    path, _ = weights
    with pytest.raises(FileNotFoundError, match=r"expected the file nope\.pth at .*nope\.pth"):
        _segmenter(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read Mask R-CNN weights"):
        _segmenter(tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="try version='v1'"):
        _segmenter(path, version="v2")
    with pytest.raises(ValueError, match="version must be one of v1, v2"):
        _segmenter(path, version="v3")
    with pytest.raises(ValueError, match="class_names has 2 names"):
        _segmenter(path, class_names=["a", "b"])
