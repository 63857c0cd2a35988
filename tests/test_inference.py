"""segflow.inference.segment_image: the driver's wiring, its checks, and the DSB acceptance."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image
from skimage import color, filters, measure, segmentation

from segflow import segmenters
from segflow.inference import segment_image
from segflow.preprocess import to_float_chw
from segflow.segmenters.base import Segmentation, Segmenter


def image(seed: int = 0, shape: tuple[int, int] = (45, 70), channels: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((channels, *shape)).astype(np.float32)


class SoftThreshold(Segmenter):
    """Pointwise, with soft scores: the default ``finish`` keeps the probabilities."""

    pointwise = True

    def predict(self, batch: np.ndarray) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-20.0 * (batch[:, :1] - 0.5)))
        return np.concatenate([1.0 - p, p], axis=1).astype(np.float32)


class Recorder(Segmenter):
    """Records what each hook receives; prepare adds a channel, predict is pointwise."""

    image_scoped_flag = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...]]] = []
        self.finish_image: np.ndarray | None = None

    def prepare(self, image: np.ndarray) -> np.ndarray:
        self.calls.append(("prepare", image.shape))
        return np.concatenate([image, image.mean(axis=0, keepdims=True)], axis=0)

    def fit(self, image: np.ndarray) -> None:
        self.calls.append(("fit", image.shape))
        self.level = float(np.median(image[-1]))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(("predict", batch.shape))
        fg = (batch[:, -1:] > self.level).astype(np.float32)
        return np.concatenate([1 - fg, fg], axis=1)

    def finish(
        self,
        probabilities: np.ndarray | None,
        image: np.ndarray,
        *,
        labels: np.ndarray | None = None,
    ) -> Segmentation:
        self.finish_image = image
        return super().finish(probabilities, image, labels=labels)


class ScopedRecorder(Recorder):
    image_scoped = True


class ComponentLabeler(Segmenter):
    """Connected components of a fixed threshold: a local labeler (stitching is exact)."""

    output = "instances"
    labels_whole_image = True

    def __init__(self) -> None:
        self.tiles: list[tuple[int, ...]] = []

    def label_tile(self, tile: np.ndarray) -> np.ndarray:
        self.tiles.append(tile.shape)
        return measure.label(tile[0] > 0.6, connectivity=2).astype(np.int32)


class TileOnlyLabeler(ComponentLabeler):
    labels_whole_image: ClassVar[bool] = False


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Label maps equal up to renumbering."""
    ra, _, _ = segmentation.relabel_sequential(a)
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return bool(
        np.array_equal(a > 0, b > 0)
        and len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
        and ra.max() == segmentation.relabel_sequential(b)[0].max()
    )


# ---------------------------------------------------------------------------------------------
# semantic path
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blend", ["constant", "linear", "gaussian"])
def test_semantic_path_blends_tiles_to_the_untiled_scores(blend: str) -> None:
    img = image(1)
    seg = segment_image(
        SoftThreshold(), img, tile=16, overlap=5, blend=blend, batch_size=3, max_untiled_pixels=0
    )
    expected = SoftThreshold().predict(img[None])[0]
    assert seg.probabilities is not None
    np.testing.assert_array_equal(seg.probabilities, expected)  # pointwise: bit for bit
    np.testing.assert_array_equal(seg.classes, expected.argmax(0))
    assert seg.classes.dtype == np.int32 and seg.instances is None


def test_pointwise_segmenters_predict_ordinary_images_in_one_call() -> None:
    class CountingSoft(SoftThreshold):
        def __init__(self) -> None:
            self.shapes: list[tuple[int, ...]] = []

        def predict(self, batch: np.ndarray) -> np.ndarray:
            self.shapes.append(batch.shape)
            return super().predict(batch)

    img = image(11)
    whole, tiled = CountingSoft(), CountingSoft()
    a = segment_image(whole, img, tile=16, overlap=4)
    b = segment_image(tiled, img, tile=16, overlap=4, max_untiled_pixels=45 * 70 - 1)
    assert whole.shapes == [(1, 2, 45, 70)]
    assert len(tiled.shapes) > 1 and all(s[1:] == (2, 16, 16) for s in tiled.shapes)
    assert a.probabilities is not None and b.probabilities is not None
    np.testing.assert_array_equal(a.probabilities, b.probabilities)


def test_hooks_run_in_order_on_what_they_should_see() -> None:
    img = image(2, channels=3)
    rec = Recorder()
    seg = segment_image(rec, img, tile=32, overlap=4, batch_size=2)
    names = [c[0] for c in rec.calls]
    assert names[:2] == ["prepare", "fit"] and set(names[2:]) == {"predict"}
    assert rec.calls[0][1] == (3, 45, 70)  # prepare: the image
    assert rec.calls[1][1] == (4, 45, 70)  # fit: the prepared image, whole
    for _, shape in rec.calls[2:]:  # predict: batches of prepared tiles
        assert shape[1:] == (4, 32, 32) and 1 <= shape[0] <= 2
    assert rec.finish_image is not None and rec.finish_image.shape == (3, 45, 70)
    prepared = rec.prepare(img)
    expected = prepared[-1] > np.median(prepared[-1])
    np.testing.assert_array_equal(seg.classes == 1, expected)


def test_image_scoped_segmenter_sees_the_whole_image() -> None:
    img = image(3)
    rec = ScopedRecorder()
    seg = segment_image(rec, img, tile=16, overlap=4)
    predicts = [c for c in rec.calls if c[0] == "predict"]
    assert predicts == [("predict", (1, 3, 45, 70))]
    assert seg.classes.shape == (45, 70)


def test_float64_image_is_accepted_as_float32() -> None:
    img = image(4).astype(np.float64)
    seg = segment_image(SoftThreshold(), img, tile=32, overlap=4)
    assert seg.probabilities is not None and seg.probabilities.dtype == np.float32
    np.testing.assert_array_equal(
        seg.probabilities, SoftThreshold().predict(img.astype(np.float32)[None])[0]
    )


# ---------------------------------------------------------------------------------------------
# instance path
# ---------------------------------------------------------------------------------------------


def test_labeler_labels_ordinary_images_whole() -> None:
    img = image(5, shape=(50, 61), channels=1)
    lab = ComponentLabeler()
    seg = segment_image(lab, img, tile=16, overlap=4)
    assert lab.tiles == [(1, 50, 61)]
    assert seg.instances is not None
    np.testing.assert_array_equal(seg.instances, measure.label(img[0] > 0.6, connectivity=2))
    np.testing.assert_array_equal(seg.classes, (seg.instances > 0).astype(np.int32))


@pytest.mark.parametrize(("tile", "overlap"), [(16, 1), (16, 4), (23, 7), (64, 3)])
def test_large_images_are_labelled_by_tiles_and_stitched(tile: int, overlap: int) -> None:
    img = image(6, shape=(50, 61), channels=1)
    whole = segment_image(ComponentLabeler(), img, tile=tile, overlap=overlap).instances
    lab = ComponentLabeler()
    tiled = segment_image(lab, img, tile=tile, overlap=overlap, max_untiled_pixels=0).instances
    assert whole is not None and tiled is not None
    assert all(shape == (1, tile, tile) for shape in lab.tiles)
    assert len(lab.tiles) > 1 or tile >= 61
    assert same_partition(tiled, whole)
    ids = np.unique(tiled)
    np.testing.assert_array_equal(ids, np.arange(ids.size))  # 0 and consecutive 1..N


def test_tile_only_labelers_are_always_tiled() -> None:
    img = image(7, shape=(40, 40), channels=1)
    lab = TileOnlyLabeler()
    seg = segment_image(lab, img, tile=16, overlap=4)
    assert lab.tiles and all(shape == (1, 16, 16) for shape in lab.tiles)
    assert seg.instances is not None
    assert same_partition(seg.instances, measure.label(img[0] > 0.6, connectivity=2))


@pytest.mark.parametrize("name", ["watershed", "slic", "felzenszwalb"])
def test_classic_labelers_run_tiled(name: str) -> None:
    rng = np.random.default_rng(8)
    yy, xx = np.mgrid[:90, :100]
    img = np.full((90, 100), 0.1)
    for _ in range(12):
        cy, cx, r = rng.integers(5, 85), rng.integers(5, 95), rng.integers(4, 9)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 0.8
    chw = img.astype(np.float32)[None]
    seg = segment_image(segmenters.create(name), chw, tile=48, overlap=16, max_untiled_pixels=0)
    assert seg.instances is not None and seg.instances.shape == (90, 100)
    ids = np.unique(seg.instances)
    np.testing.assert_array_equal(ids[ids > 0], np.arange(1, seg.instances.max() + 1))
    if name == "watershed":  # the foreground is the global threshold's, tiled or not
        np.testing.assert_array_equal(seg.instances > 0, img > 0.45)


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("img", "options", "fragment"),
    [
        ([[0.0]], {}, "numpy array"),
        (np.zeros((4, 4), np.float32), {}, "(C, H, W)"),
        (np.zeros((1, 0, 4), np.float32), {}, "(C, H, W)"),
        (np.zeros((1, 4, 4), np.uint8), {}, "floating point"),
        (np.zeros((1, 4, 4), np.float32), {"tile": 0}, "tile must be an integer >= 1, got 0"),
        (
            np.zeros((1, 4, 4), np.float32),
            {"tile": 8, "overlap": 8},
            "overlap must be an integer in [0, 7], got 8",
        ),
        (np.zeros((1, 4, 4), np.float32), {"blend": "cosine"}, "'cosine'"),
        (
            np.zeros((1, 4, 4), np.float32),
            {"batch_size": 0},
            "batch_size must be an integer >= 1, got 0",
        ),
        (
            np.zeros((1, 4, 4), np.float32),
            {"max_untiled_pixels": -1},
            "max_untiled_pixels must be an integer >= 0",
        ),
    ],
)
def test_bad_input_raises_value_error(img: Any, options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        segment_image(SoftThreshold(), img, **options)
    assert fragment in str(info.value)
    if "blend" in options:
        assert "'gaussian'" in str(info.value)


def test_segmenter_outputs_of_the_wrong_shape_are_refused() -> None:
    class BadPrepare(SoftThreshold):
        def prepare(self, image: np.ndarray) -> np.ndarray:
            return image[:, :-1]

    class BadLabels(ComponentLabeler):
        def label_tile(self, tile: np.ndarray) -> np.ndarray:
            return np.zeros((3, 3), np.int32)

    img = image(9, channels=1)
    with pytest.raises(ValueError, match="prepare"):
        segment_image(BadPrepare(), img)
    with pytest.raises(ValueError, match="labels must be"):
        segment_image(BadLabels(), img)


def test_base_finish_needs_probabilities_or_labels() -> None:
    with pytest.raises(ValueError, match="probabilities or labels"):
        Segmenter().finish(None, np.zeros((1, 2, 2), np.float32))


# ---------------------------------------------------------------------------------------------
# acceptance on real data: DSB 2018 nuclei, otsu with polarity="auto"
# ---------------------------------------------------------------------------------------------


def _fg_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.count_nonzero(pred | truth)
    return 1.0 if union == 0 else np.count_nonzero(pred & truth) / union


def test_dsb2018_otsu_auto_reaches_plain_skimage_otsu_with_flip(shared_data: Path) -> None:
    """Mean foreground IoU over the first 100 images by file name: ours >= baseline, >= 0.75.

    Baseline: the plain scikit-image tutorial on the 8-bit file — ``rgb2gray`` ->
    ``threshold_otsu`` -> ``grey > t``, flipped per image so that the foreground is the
    minority. Ours: ``segflow.io.read_image`` -> ``to_float_chw`` -> ``segment_image`` with
    ``otsu``, ``polarity="auto"``, default options and tiling.
    """
    from segflow.io import read_image, read_labels

    root = shared_data / "dsb2018_nuclei"
    files = sorted((root / "images").glob("*.png"))[:100]
    if len(files) < 100:
        pytest.skip(f"real data incomplete: {root / 'images'} has {len(files)} PNG files")
    ours, baseline = [], []
    for path in files:
        truth = read_labels(root / "labels" / path.name) > 0
        rgb = np.asarray(Image.open(path))
        g = color.rgb2gray(rgb[..., :3]) if rgb.ndim == 3 else rgb / 255.0
        t = filters.threshold_otsu(g)
        fg = g > t
        if fg.mean() > 0.5:
            fg = ~fg
        baseline.append(_fg_iou(fg, truth))
        seg = segment_image(
            segmenters.create("otsu", polarity="auto"), to_float_chw(read_image(path))
        )
        ours.append(_fg_iou(seg.classes > 0, truth))
    mean_ours, mean_base = float(np.mean(ours)), float(np.mean(baseline))
    print(
        f"DSB2018 first 100: segflow otsu auto {mean_ours:.6f}, skimage otsu + flip {mean_base:.6f}"
    )
    assert mean_ours >= mean_base - 1e-9
    assert mean_ours >= 0.75
