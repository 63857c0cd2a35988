"""The segmenter registry and the classic segmenters, against scikit-image / scikit-learn."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from skimage import color, filters, measure, segmentation
from sklearn.cluster import KMeans

from segflow import segmenters
from segflow.inference import segment_image
from segflow.preprocess import to_float_chw
from segflow.segmenters import classic
from segflow.segmenters.base import Segmentation, Segmenter

CLASSIC = (
    "adaptive",
    "felzenszwalb",
    "kmeans",
    "multiotsu",
    "otsu",
    "region_growing",
    "slic",
    "watershed",
)


def discs(
    seed: int = 0,
    *,
    shape: tuple[int, int] = (64, 80),
    n: int = 6,
    channels: int = 1,
    dark: bool = False,
    noise: float = 0.03,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic nuclei: (C, H, W) float32 image in [0, 1] and the (H, W) bool truth."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    truth = np.zeros(shape, dtype=bool)
    img = np.full(shape, 0.2)
    for _ in range(n):
        cy, cx = rng.integers(6, h - 6), rng.integers(6, w - 6)
        r = rng.integers(3, 7)
        d = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        truth |= d
        img[d] = rng.uniform(0.65, 0.9)
    img = np.clip(img + rng.normal(0, noise, shape), 0, 1)
    if dark:
        img = 1 - img
    chw = np.repeat(img[None], channels, axis=0).astype(np.float32)
    if channels == 3:
        chw[0] *= 0.9  # not quite grey
    return chw, truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------


def test_registry_lists_every_classic_segmenter() -> None:
    names = segmenters.available()
    assert names == sorted(names)
    assert set(CLASSIC) <= set(names)
    for name in CLASSIC:
        cls = segmenters.get_class(name)
        assert issubclass(cls, Segmenter) and cls.name == name
        assert cls.output in ("semantic", "instances")


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown segmenter 'otsuu'") as info:
        segmenters.create("otsuu")
    for name in CLASSIC:
        assert name in str(info.value)


def test_unknown_parameter_is_a_type_error_naming_the_segmenter() -> None:
    with pytest.raises(TypeError, match="bad parameters for segmenter 'otsu'"):
        segmenters.create("otsu", treshold=0.5)


def test_register_refuses_a_second_class_under_a_taken_name() -> None:
    class Other(Segmenter):
        pass

    with pytest.raises(ValueError, match="already registered"):
        segmenters.register("otsu")(Other)


def test_output_kinds_and_pointwise_flags() -> None:
    semantic = {"otsu", "multiotsu", "adaptive", "kmeans"}
    for name in CLASSIC:
        cls = segmenters.get_class(name)
        assert cls.output == ("semantic" if name in semantic else "instances")
        assert cls.pointwise == (name in semantic)
    assert segmenters.get_class("region_growing").image_scoped


# ---------------------------------------------------------------------------------------------
# option validation: ValueError naming the bad value and the allowed ones
# ---------------------------------------------------------------------------------------------

BAD_OPTIONS = [
    ("otsu", {"polarity": "brite"}, ["'brite'", "'bright'", "'dark'", "'auto'"]),
    ("otsu", {"min_size": -1}, ["min_size", "-1", ">= 0"]),
    ("otsu", {"sigma": -0.5}, ["sigma", "-0.5", ">= 0"]),
    ("otsu", {"opening": 1.5}, ["opening", "1.5", "0 to 256"]),
    ("otsu", {"fill_holes": "yes"}, ["fill_holes", "'yes'", "True or False"]),
    ("otsu", {"instances": 1}, ["instances", "1", "True or False"]),
    ("otsu", {"connectivity": 4}, ["connectivity", "4", "1 (4-connected) or 2"]),
    ("otsu", {"nbins": 1}, ["nbins", "1", "2 to 65536"]),
    ("otsu", {"max_hole_size": -3}, ["max_hole_size", "-3", ">= 0"]),
    ("multiotsu", {"classes": 7}, ["classes", "7", "2 to 5"]),
    ("adaptive", {"block_size": 50}, ["block_size", "50", "odd"]),
    ("adaptive", {"block_size": 1}, ["block_size", "1", "3"]),
    ("adaptive", {"method": "max"}, ["'max'", "'gaussian'", "'mean'", "'median'"]),
    ("adaptive", {"offset": float("nan")}, ["offset", "nan", "finite"]),
    ("kmeans", {"k": 1}, ["k must", "1", "2 to 16"]),
    ("kmeans", {"seed": -1}, ["seed", "-1", ">= 0"]),
    ("watershed", {"min_distance": 0}, ["min_distance", "0", "1 to 1024"]),
    ("watershed", {"footprint": 4}, ["footprint", "4", "odd"]),
    ("slic", {"compactness": 0}, ["compactness", "0", "> 0"]),
    ("slic", {"region_size": 2}, ["region_size", "2", "4 to 4096"]),
    ("slic", {"foreground": "some"}, ["'some'", "'all'", "'otsu'"]),
    ("felzenszwalb", {"scale": -1.0}, ["scale", "-1.0", "> 0"]),
    ("region_growing", {"tolerance": 0}, ["tolerance", "0", "> 0", "<= 1"]),
    ("region_growing", {"tolerance": 1.5}, ["tolerance", "1.5", "<= 1"]),
    ("region_growing", {"seeds": "1;2"}, ["seeds", "'1;2'", "y,x"]),
    ("region_growing", {"seeds": [(1, -2)]}, ["seeds", "(y, x) integer pairs >= 0"]),
]


@pytest.mark.parametrize(("name", "params", "fragments"), BAD_OPTIONS)
def test_bad_option_raises_value_error_naming_value_and_allowed(
    name: str, params: dict[str, Any], fragments: list[str]
) -> None:
    with pytest.raises(ValueError) as info:
        segmenters.create(name, **params)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_seeds_outside_the_image_raise() -> None:
    img, _ = discs(0)
    seg = segmenters.create("region_growing", seeds="10,10;100,5")
    with pytest.raises(ValueError, match=re.escape("seeds must lie inside the 64x80 image")):
        segment_image(seg, img)


# ---------------------------------------------------------------------------------------------
# every registered segmenter: shapes, dtypes, ids, determinism
# ---------------------------------------------------------------------------------------------


def _build(name: str) -> Segmenter:
    try:
        return segmenters.create(name)
    except ImportError as exc:
        pytest.skip(f"segmenter {name!r} needs an optional package: {exc}")
    except TypeError as exc:  # needs a model file or another required parameter
        if name in CLASSIC:
            raise
        pytest.skip(f"segmenter {name!r} cannot be built without parameters: {exc}")


def _check_segmentation(seg: Segmentation, segmenter: Segmenter, shape: tuple[int, int]) -> None:
    assert seg.classes.shape == shape and seg.classes.dtype == np.int32
    assert seg.classes.min() >= 0 and seg.classes.max() < segmenter.num_classes
    assert len(seg.class_names) == segmenter.num_classes
    if seg.probabilities is not None:
        assert seg.probabilities.shape == (segmenter.num_classes, *shape)
        assert seg.probabilities.dtype == np.float32
    if segmenter.output == "instances":
        assert seg.instances is not None
    if seg.instances is not None:
        inst = seg.instances
        assert inst.shape == shape and inst.dtype == np.int32
        ids = np.unique(inst)
        n = int(inst.max())
        np.testing.assert_array_equal(ids[ids > 0], np.arange(1, n + 1))  # consecutive 1..N
        assert set(seg.instance_classes) <= set(range(1, n + 1))
        assert set(seg.instance_classes.values()) <= set(range(1, segmenter.num_classes))
        # every instance lies in the foreground and in one class
        assert np.all(seg.classes[inst > 0] > 0)
        for i, k in seg.instance_classes.items():
            assert np.all(seg.classes[inst == i] == k)


@pytest.mark.parametrize("name", segmenters.available())
@pytest.mark.parametrize("channels", [1, 3])
def test_every_segmenter_runs_validly_and_deterministically(name: str, channels: int) -> None:
    img, truth = discs(1, channels=channels)
    first = _build(name)
    seg = segment_image(first, img, tile=48, overlap=8)
    _check_segmentation(seg, first, truth.shape)
    again = segment_image(_build(name), img.copy(), tile=48, overlap=8)
    np.testing.assert_array_equal(seg.classes, again.classes)
    if seg.instances is not None:
        assert again.instances is not None
        np.testing.assert_array_equal(seg.instances, again.instances)
    # the same instance re-fit on another image forgets the first one
    other, _ = discs(2, channels=channels, dark=True)
    seg_other = segment_image(first, other, tile=48, overlap=8)
    _check_segmentation(seg_other, first, truth.shape)
    fresh = segment_image(_build(name), other, tile=48, overlap=8)
    np.testing.assert_array_equal(seg_other.classes, fresh.classes)


@pytest.mark.parametrize("name", CLASSIC)
@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_constant_image_gives_a_valid_result(name: str, value: float) -> None:
    seg = segmenters.create(name)
    out = segment_image(seg, np.full((1, 20, 24), value, np.float32), tile=16, overlap=4)
    _check_segmentation(out, seg, (20, 24))


@pytest.mark.parametrize("name", ["otsu", "multiotsu", "adaptive", "kmeans", "watershed"])
def test_threshold_methods_find_the_synthetic_nuclei(name: str) -> None:
    for dark in (False, True):
        img, truth = discs(3, dark=dark, n=8)
        params: dict[str, Any] = {"classes": 2} if name == "multiotsu" else {}
        if name == "adaptive":
            params = {"block_size": 31, "offset": -0.05, "min_size": 5}
        out = segment_image(segmenters.create(name, **params), img)
        assert iou(out.classes > 0, truth) > 0.8, (name, dark)


# ---------------------------------------------------------------------------------------------
# otsu / multiotsu against scikit-image
# ---------------------------------------------------------------------------------------------


def test_otsu_equals_skimage_on_8bit_rgb() -> None:
    rng = np.random.default_rng(5)
    rgb8 = (ndi.gaussian_filter(rng.random((60, 70, 3)), (2, 2, 0)) * 255).astype(np.uint8)
    chw = to_float_chw(rgb8)
    g = color.rgb2gray(rgb8)  # float64 of the 8-bit values
    t = filters.threshold_otsu(g)
    seg = classic.OtsuSegmenter(polarity="bright", instances=False)
    seg.fit(chw)
    assert seg.threshold == pytest.approx(t, abs=1e-12)
    out = segment_image(seg, chw, tile=32, overlap=4)
    np.testing.assert_array_equal(out.classes == 1, g > t)
    assert out.probabilities is None and out.instances is None


def test_grey_values_and_the_8bit_grid() -> None:
    rng = np.random.default_rng(21)
    u8 = rng.integers(0, 256, (3, 9, 11)).astype(np.uint8)
    x = u8.astype(np.float32) / np.float32(255)
    assert classic.is_8bit_grid(x) and classic.is_8bit_grid(x, max_pixels=20)
    assert not classic.is_8bit_grid(x + np.float32(0.001))
    assert not classic.is_8bit_grid(x * np.float32(1.5))  # outside [0, 1]
    levels = u8.astype(np.float64) / 255.0
    expected = levels[0] * 0.2125 + levels[1] * 0.7154 + levels[2] * 0.0721
    np.testing.assert_array_equal(classic.grey(x, snap=True), expected)  # exact 8-bit levels
    np.testing.assert_allclose(classic.grey(x), color.rgb2gray(np.moveaxis(x, 0, -1)), atol=1e-6)
    np.testing.assert_array_equal(classic.grey(x[:1]), x[0].astype(np.float64))
    np.testing.assert_allclose(
        classic.grey(np.concatenate([x, x[:1]])), x.mean(0) * 0.75 + x[0] * 0.25, atol=1e-6
    )
    batch = np.stack([x, x[:, ::-1]])
    np.testing.assert_array_equal(classic.grey(batch, axis=1, snap=True)[0], expected)


def test_large_images_fit_on_a_strided_overview(monkeypatch: pytest.MonkeyPatch) -> None:
    img, _ = discs(22, shape=(60, 90))
    monkeypatch.setattr(classic, "FIT_MAX_PIXELS", 600)
    seg = classic.OtsuSegmenter(polarity="bright")
    seg.fit(img)
    step = int(np.ceil(np.sqrt(60 * 90 / 600)))  # 3
    sample = img[0, ::step, ::step].astype(np.float64)
    assert sample.size <= 600
    assert seg.threshold == filters.threshold_otsu(sample)
    out = segment_image(seg, img)
    np.testing.assert_array_equal(out.classes == 1, img[0] > seg.threshold)


@pytest.mark.parametrize("polarity", ["bright", "dark"])
def test_otsu_polarity_bright_and_dark_are_complements(polarity: str) -> None:
    img, _ = discs(4)
    g = img[0].astype(np.float64)
    t = filters.threshold_otsu(g)
    out = segment_image(segmenters.create("otsu", polarity=polarity), img)
    expected = g > t if polarity == "bright" else g <= t
    np.testing.assert_array_equal(out.classes == 1, expected)


def test_auto_polarity_takes_the_minority_phase() -> None:
    for dark in (False, True):
        img, truth = discs(6, dark=dark)
        seg = classic.OtsuSegmenter()
        seg.fit(img)
        assert seg.dark is dark
        out = segment_image(seg, img)
        assert (out.classes == 1).mean() < 0.5
        assert iou(out.classes == 1, truth) > 0.85


def test_multiotsu_equals_skimage_digitize() -> None:
    rng = np.random.default_rng(7)
    img = rng.random((1, 40, 50)).astype(np.float32) ** 2
    g = img[0].astype(np.float64)
    th = filters.threshold_multiotsu(g, classes=4)
    expected = np.digitize(g, th, right=True)  # x > t goes up, x == t stays
    out = segment_image(segmenters.create("multiotsu", classes=4, polarity="bright"), img)
    np.testing.assert_array_equal(out.classes, expected)
    out_dark = segment_image(segmenters.create("multiotsu", classes=4, polarity="dark"), img)
    np.testing.assert_array_equal(out_dark.classes, 3 - expected)


def test_multiotsu_with_fewer_levels_than_classes() -> None:
    img = np.zeros((1, 10, 10), np.float32)
    img[0, :, 5:] = 1.0
    seg = segmenters.create("multiotsu", classes=3, polarity="bright", instances=False)
    out = segment_image(seg, img)
    np.testing.assert_array_equal(out.classes, (img[0] > 0.5).astype(np.int32))


def test_adaptive_equals_skimage_threshold_local() -> None:
    img, _ = discs(8, shape=(50, 60))
    g = img[0].astype(np.float64)
    local = filters.threshold_local(g, 15, method="gaussian", offset=-0.01)
    out = segment_image(
        segmenters.create("adaptive", block_size=15, offset=-0.01, polarity="bright"), img
    )
    np.testing.assert_array_equal(out.classes == 1, g > local)
    inverted = 1.0 - g
    local_dark = filters.threshold_local(inverted, 15, method="gaussian", offset=-0.01)
    out_dark = segment_image(
        segmenters.create("adaptive", block_size=15, offset=-0.01, polarity="dark"), img
    )
    np.testing.assert_array_equal(out_dark.classes == 1, inverted > local_dark)


# ---------------------------------------------------------------------------------------------
# tiled == untiled for the pointwise (global / prepared) methods
# ---------------------------------------------------------------------------------------------

POINTWISE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("otsu", {}),
    ("otsu", {"sigma": 1.5, "opening": 1, "min_size": 5, "fill_holes": True}),
    ("multiotsu", {"classes": 3}),
    ("kmeans", {"k": 3}),
    ("adaptive", {"block_size": 21, "sigma": 1.0}),
]


@settings(max_examples=25, deadline=None)
@given(
    case=st.sampled_from(POINTWISE_CASES),
    tile=st.integers(8, 40),
    overlap_frac=st.floats(0, 0.9),
    blend=st.sampled_from(["constant", "linear", "gaussian"]),
    channels=st.sampled_from([1, 3]),
    seed=st.integers(0, 5),
)
def test_tiled_equals_untiled_for_pointwise_segmenters(
    case: tuple[str, dict[str, Any]],
    tile: int,
    overlap_frac: float,
    blend: str,
    channels: int,
    seed: int,
) -> None:
    name, params = case
    img, _ = discs(seed, shape=(37, 53), channels=channels)
    overlap = min(int(tile * overlap_frac), tile - 1)
    untiled = segment_image(segmenters.create(name, **params), img, tile=64, overlap=0)
    tiled = segment_image(
        segmenters.create(name, **params),
        img,
        tile=tile,
        overlap=overlap,
        blend=blend,
        max_untiled_pixels=0,  # force tiles: ordinary images are predicted whole
    )
    np.testing.assert_array_equal(tiled.classes, untiled.classes)
    assert tiled.instances is not None and untiled.instances is not None
    np.testing.assert_array_equal(tiled.instances, untiled.instances)
    assert tiled.instance_classes == untiled.instance_classes


def test_predict_is_pointwise_on_a_shuffled_batch() -> None:
    """The per-pixel decision does not depend on where the pixel is in the tile."""
    img, _ = discs(9, channels=3)
    for name, params in POINTWISE_CASES:
        seg = segmenters.create(name, **params)
        prepared = seg.prepare(img)
        seg.fit(prepared)
        full = seg.predict(prepared[None])
        perm = np.random.default_rng(0).permutation(prepared.shape[1] * prepared.shape[2])
        flat = prepared.reshape(prepared.shape[0], -1)[:, perm].reshape(prepared.shape)
        shuffled = seg.predict(flat[None])
        np.testing.assert_array_equal(
            shuffled.reshape(shuffled.shape[1], -1), full.reshape(full.shape[1], -1)[:, perm]
        )


def test_predict_before_fit_raises() -> None:
    for name in ("otsu", "multiotsu", "kmeans"):
        with pytest.raises(RuntimeError, match="fit"):
            segmenters.create(name).predict(np.zeros((1, 1, 4, 4), np.float32))


# ---------------------------------------------------------------------------------------------
# kmeans against scikit-learn
# ---------------------------------------------------------------------------------------------


def test_kmeans_centres_are_a_lloyd_fixed_point_and_assignment_is_nearest() -> None:
    rng = np.random.default_rng(11)
    img = (
        np.concatenate([rng.normal(m, 0.05, (3, 20, 60)) for m in (0.2, 0.5, 0.8)], axis=1)
        .clip(0, 1)
        .astype(np.float32)
    )
    img[1] = img[1][::-1]  # make colours differ per channel
    seg = classic.KMeansSegmenter(k=3, polarity="bright")
    seg.fit(img)
    assert seg.centres is not None
    data = img.reshape(3, -1).T.astype(np.float64)
    ref = KMeans(n_clusters=3, init=seg.centres, n_init=1, max_iter=300, tol=0).fit(data)
    np.testing.assert_allclose(
        np.sort(ref.cluster_centers_, axis=0), np.sort(seg.centres, axis=0), atol=1e-9
    )
    out = seg.predict(img[None])[0]
    nearest = ((data[:, None, :] - seg.centres[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(out.argmax(0).ravel(), nearest)
    np.testing.assert_array_equal(out.sum(0), 1.0)
    lum = classic.grey(seg.centres.T[:, :, None])[:, 0]
    assert np.all(np.diff(lum) > 0)  # bright polarity: class 0 darkest


def test_kmeans_auto_background_is_the_largest_cluster() -> None:
    img, truth = discs(12, channels=3, dark=True)
    seg = segmenters.create("kmeans", k=2)
    out = segment_image(seg, img)
    assert (out.classes == 0).sum() > (out.classes == 1).sum()
    assert iou(out.classes == 1, truth) > 0.8


def test_kmeans_seed_changes_nothing_on_separable_data_and_is_deterministic() -> None:
    img, _ = discs(13, channels=3)
    a = segment_image(segmenters.create("kmeans", seed=1), img)
    b = segment_image(segmenters.create("kmeans", seed=1), img)
    c = segment_image(segmenters.create("kmeans", seed=7), img)
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_array_equal(a.classes, c.classes)


# ---------------------------------------------------------------------------------------------
# instance segmenters
# ---------------------------------------------------------------------------------------------


def _two_touching_discs() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:40, :60]
    a = (yy - 20) ** 2 + (xx - 20) ** 2 <= 100
    b = (yy - 20) ** 2 + (xx - 37) ** 2 <= 100
    img = np.where(a | b, 0.8, 0.1).astype(np.float32)[None]
    truth = np.zeros((40, 60), np.int32)
    truth[a] = 1
    truth[b & ~a] = 2
    return img, truth


def test_watershed_splits_touching_discs() -> None:
    img, truth = _two_touching_discs()
    out = segment_image(segmenters.create("watershed", min_distance=5), img)
    assert out.instances is not None
    assert out.instances.max() == 2
    np.testing.assert_array_equal(out.instances > 0, truth > 0)
    for i in (1, 2):
        best = max(iou(out.instances == i, truth == j) for j in (1, 2))
        assert best > 0.85
    # plain connected components would see one object
    assert measure.label(truth > 0).max() == 1


def test_watershed_min_size_drops_small_objects() -> None:
    img, _ = _two_touching_discs()
    img[0, 2:4, 50:52] = 0.8  # a 4-pixel speck
    kept = segment_image(segmenters.create("watershed"), img)
    dropped = segment_image(segmenters.create("watershed", min_size=10), img)
    assert kept.instances is not None and dropped.instances is not None
    assert kept.instances.max() == 3 and dropped.instances.max() == 2
    assert dropped.instances[2:4, 50:52].max() == 0


def test_slic_all_covers_the_image_and_region_size_sets_the_count() -> None:
    img, _ = discs(14, shape=(64, 64), channels=3)
    small = segment_image(segmenters.create("slic", region_size=8), img)
    large = segment_image(segmenters.create("slic", region_size=32), img)
    assert small.instances is not None and large.instances is not None
    assert np.all(small.instances > 0) and np.all(small.classes == 1)
    assert small.instances.max() > 3 * large.instances.max()
    # equal to scikit-image's slic with the same parameters (CIELAB for 3 channels)
    ref = segmentation.slic(
        np.moveaxis(img, 0, -1).astype(np.float64),
        n_segments=64,
        compactness=10.0,
        start_label=1,
        channel_axis=-1,
        sigma=0,
    )
    np.testing.assert_array_equal(small.instances, segmentation.relabel_sequential(ref)[0])


def test_superpixels_otsu_foreground_keeps_object_superpixels() -> None:
    img, _ = discs(15, shape=(64, 64), n=5)
    g = img[0].astype(np.float64)
    t = filters.threshold_otsu(g)
    for name, params in (("slic", {"region_size": 6}), ("felzenszwalb", {"scale": 50.0})):
        every = segment_image(segmenters.create(name, **params), img).instances
        kept = segment_image(segmenters.create(name, foreground="otsu", **params), img).instances
        assert every is not None and kept is not None
        # oracle: the superpixels of "all" whose mean grey value is above the Otsu threshold
        expected = np.zeros_like(every)
        for i in range(1, every.max() + 1):
            if g[every == i].mean() > t:
                expected[every == i] = i
        np.testing.assert_array_equal(kept, segmentation.relabel_sequential(expected)[0])
        assert 0 < kept.max() < every.max()
    # big, clean objects are found whole
    yy, xx = np.mgrid[:64, :64]
    squares = ((yy // 16) % 2 == 1) & ((xx // 16) % 2 == 1)
    flat = np.where(squares, 0.8, 0.2).astype(np.float32)[None]
    for name, params in (("slic", {"region_size": 8}), ("felzenszwalb", {})):
        out = segment_image(segmenters.create(name, foreground="otsu", **params), flat)
        assert iou(out.classes > 0, squares) > 0.95, name


def test_felzenszwalb_equals_skimage_without_smoothing() -> None:
    img, _ = discs(16, channels=3)
    out = segment_image(segmenters.create("felzenszwalb", scale=30.0, sigma=0.0, min_size=5), img)
    ref = segmentation.felzenszwalb(
        np.moveaxis(img, 0, -1).astype(np.float64), scale=30.0, sigma=0, min_size=5
    )
    assert out.instances is not None
    np.testing.assert_array_equal(out.instances, segmentation.relabel_sequential(ref + 1)[0])


@pytest.mark.parametrize("connectivity", [1, 2])
def test_region_growing_single_seed_equals_skimage_flood(connectivity: int) -> None:
    rng = np.random.default_rng(17)
    g = ndi.gaussian_filter(rng.random((40, 50)), 2).astype(np.float32)
    g = (g - g.min()) / (g.max() - g.min())
    seg = segmenters.create(
        "region_growing", seeds=[(20, 25)], tolerance=0.1, connectivity=connectivity
    )
    out = segment_image(seg, g[None])
    ref = segmentation.flood(g, (20, 25), tolerance=0.1, connectivity=connectivity)
    assert out.instances is not None
    np.testing.assert_array_equal(out.instances == 1, ref)
    assert out.instances.max() == 1


def test_region_growing_regions_are_disjoint_and_first_seed_wins() -> None:
    g = np.zeros((10, 20), np.float32)
    g[:, 10:] = 0.5
    seg = segmenters.create("region_growing", seeds="2,2;3,3;2,15", tolerance=0.2)
    out = segment_image(seg, g[None])
    assert out.instances is not None
    np.testing.assert_array_equal(out.instances[:, :10], 1)  # the second seed starts nothing
    np.testing.assert_array_equal(out.instances[:, 10:], 2)


def test_region_growing_automatic_seeds_find_the_nuclei() -> None:
    img, truth = discs(18, n=5, noise=0.01)
    out = segment_image(segmenters.create("region_growing", tolerance=0.15, min_size=5), img)
    assert out.instances is not None
    assert iou(out.instances > 0, truth) > 0.8
    assert out.instances.max() == measure.label(truth).max()


# ---------------------------------------------------------------------------------------------
# real data: every classic segmenter on one image of each dataset
# ---------------------------------------------------------------------------------------------


def _first_image(data: Path, sub: str, pattern: str) -> Path:
    folder = data / sub
    if not folder.is_dir():
        pytest.skip(f"real data not available: {folder} is absent")
    files = sorted(folder.glob(pattern))
    if not files:
        pytest.skip(f"real data not available: no {pattern} in {folder}")
    return files[0]


REAL = [
    ("isbi2012_membranes", "train/images/*.png"),
    ("dsb2018_nuclei", "images/*.png"),
    ("coco_val2017_subset", "images/*.jpg"),
    ("voc2011_instances", "data_dataset_voc/JPEGImages/*.jpg"),
]


@pytest.mark.parametrize(("dataset", "pattern"), REAL)
def test_every_classic_segmenter_runs_on_real_data(
    shared_data: Path, dataset: str, pattern: str
) -> None:
    from segflow.io import read_image

    path = _first_image(shared_data, dataset, pattern)
    chw = to_float_chw(read_image(path))
    h, w = chw.shape[1:]
    for name in CLASSIC:
        seg = segmenters.create(name)
        out = segment_image(seg, chw)
        _check_segmentation(out, seg, (h, w))
        fg = float((out.classes > 0).mean())
        if name not in ("slic", "felzenszwalb"):  # superpixels cover everything by default
            assert 0.0 < fg < 1.0, (name, dataset, fg)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 3000),
    kind=st.sampled_from(["uniform", "8bit", "narrow", "rounded", "linspace"]),
    nbins=st.sampled_from([2, 3, 17, 256, 1000, 65536]),
)
def test_float_histogram_and_otsu_equal_numpy_and_skimage(
    seed: int, n: int, kind: str, nbins: int
) -> None:
    rng = np.random.default_rng(seed)
    values = {
        "uniform": lambda: rng.random(n),
        "8bit": lambda: rng.integers(0, 256, n) / 255.0,
        "narrow": lambda: 1000 + rng.random(n) * 1e-3,  # loose error bound: NumPy fallback
        "rounded": lambda: np.round(rng.normal(size=n), 2),  # many values on bin edges
        "linspace": lambda: np.linspace(-3.0, 7.0, n),
    }[kind]()
    counts, edges = classic.float_histogram(values, nbins=nbins)
    ref_counts, ref_edges = np.histogram(values, bins=nbins)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_array_equal(edges, ref_edges)
    assert classic.otsu_threshold(values, nbins=nbins) == filters.threshold_otsu(
        values, nbins=nbins
    )
    # multiotsu is fed the same histogram, normalised (MultiOtsuSegmenter.fit); its search is
    # quadratic in nbins, so only the smaller bin counts
    if nbins > 1000:
        return
    try:
        ref_multi = filters.threshold_multiotsu(values, classes=3, nbins=nbins)
    except ValueError:
        return  # fewer than 3 occupied bins: the segmenter's own fallback handles it
    counts_f, centers = classic._grey_histogram(values, nbins)
    multi = filters.threshold_multiotsu(classes=3, hist=(counts_f / np.sum(counts_f), centers))
    np.testing.assert_array_equal(multi, ref_multi)


def _edge_neighbours(lo: np.float32, hi: np.float32, nbins: int, ulps: int) -> np.ndarray:
    """The float32 values within ``ulps`` steps of every float64 bin edge of [lo, hi]."""
    near = np.linspace(float(lo), float(hi), nbins + 1).astype(np.float32)
    out = [near]
    up, down = near, near
    for _ in range(ulps):
        up = np.nextafter(up, np.float32(np.inf))
        down = np.nextafter(down, np.float32(-np.inf))
        out += [up, down]
    values = np.concatenate(out)
    return values[(values >= lo) & (values <= hi)]


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 200_000),
    kind=st.sampled_from(["uniform", "8bit", "smoothed", "rounded", "tiny", "edges", "narrow"]),
    nbins=st.sampled_from([2, 3, 17, 255, 256, 1000]),
)
def test_float32_histogram_equals_numpy_of_the_float64_values(
    seed: int, n: int, kind: str, nbins: int
) -> None:
    """The float32 fast path (float32 index estimate, exact float64 bins near the edges)."""
    rng = np.random.default_rng(seed)
    if kind == "edges":  # values on and next to the bin edges, plus lo and hi themselves
        lo, hi = np.sort(rng.normal(size=2) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
        if lo == hi:
            hi = np.nextafter(lo, np.float32(np.inf))
        values = np.concatenate(
            [_edge_neighbours(lo, hi, nbins, 3), rng.uniform(lo, hi, n).astype(np.float32)]
        )
    else:
        values = {
            "uniform": lambda: rng.random(n),
            "8bit": lambda: rng.integers(0, 256, n) / 255.0,
            "smoothed": lambda: ndi.gaussian_filter(rng.integers(0, 256, n) / 255.0, 1.0),
            "rounded": lambda: np.round(rng.normal(size=n), 2),
            "tiny": lambda: rng.random(n) * 1e-30,
            "narrow": lambda: 1000 + rng.random(n) * 1e-3,  # loose error bound: NumPy fallback
        }[kind]().astype(np.float32)
    counts, edges = classic.float_histogram(values, nbins=nbins)
    ref_counts, ref_edges = np.histogram(values.astype(np.float64), bins=nbins)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_array_equal(edges, ref_edges)
    assert classic.otsu_threshold(values, nbins=nbins) == filters.threshold_otsu(
        values.astype(np.float64), nbins=nbins
    )


def test_float32_comparisons_decide_as_float64() -> None:
    """``_above`` / ``_at_most`` on float32 values give the float64 decisions, also for
    thresholds between, on and next to float32 values, and beyond float32's range."""
    rng = np.random.default_rng(3)
    x = np.concatenate(
        [
            rng.random(5000).astype(np.float32),
            np.array([0.0, 1.0, np.inf, -np.inf, np.nan, 3e38, -3e38], dtype=np.float32),
        ]
    )
    x = np.concatenate([x, np.nextafter(x, np.float32(1)), np.nextafter(x, np.float32(-1))])
    x64 = x.astype(np.float64)
    picks = x64[rng.integers(0, x.size, 200)]
    thresholds = [*picks, *(picks + 1e-12), *(picks - 1e-12), 0.5, 1e300, -1e300, np.inf, -np.inf]
    for t in thresholds:
        t = float(t)
        np.testing.assert_array_equal(classic._above(x, t), x64 > t)
        np.testing.assert_array_equal(classic._at_most(x, t), x64 <= t)
        np.testing.assert_array_equal(classic._above(x64, t), x64 > t)


@pytest.mark.parametrize("polarity", ["bright", "dark", "auto"])
def test_otsu_on_one_float32_channel_equals_the_float64_decision(polarity: str) -> None:
    """Smoothed (off the 8-bit grid) single-channel images take the float32 path."""
    for seed in range(6):
        img, _ = discs(seed, shape=(70, 90), dark=seed % 2 == 1, noise=0.1)
        seg = segmenters.create("otsu", polarity=polarity, sigma=1.0, instances=False)
        prepared = seg.prepare(img)
        assert not classic.is_8bit_grid(prepared)
        g = prepared[0].astype(np.float64)
        t = filters.threshold_otsu(g)
        out = segment_image(seg, img)
        assert seg.threshold == t
        dark = polarity == "dark" or (polarity == "auto" and 2 * np.count_nonzero(g > t) > g.size)
        np.testing.assert_array_equal(out.classes == 1, g <= t if dark else g > t)


@settings(max_examples=120, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["uniform", "bimodal", "few", "two", "constant", "stray"]),
    nbins=st.sampled_from([2, 17, 51, 255, 256, 1000]),  # 51, 255: edges on levels k / 255
    polarity=st.sampled_from(["bright", "dark", "auto"]),
)
def test_otsu_on_one_8bit_channel_from_level_counts_equals_the_grey_image_path(
    seed: int, kind: str, nbins: int, polarity: str
) -> None:
    """One channel on the 8-bit grid: threshold and polarity from the 256 level counts, and the
    decision looked up by level, equal the float64 grey-image path and scikit-image."""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 60)), int(rng.integers(1, 60)))
    u8 = {
        "uniform": lambda: rng.integers(0, 256, shape),
        "bimodal": lambda: np.clip(rng.normal(rng.choice([60, 190], shape), 20), 0, 255),
        "few": lambda: rng.choice(rng.integers(0, 256, 4), shape),
        "two": lambda: rng.choice([0, 255], shape),
        "constant": lambda: np.full(shape, rng.integers(0, 256)),
        "stray": lambda: rng.integers(0, 256, shape),
    }[kind]().astype(np.uint8)
    img = to_float_chw(u8)
    if kind == "stray":  # off-grid values the grid check's sample may miss: snapped to a level
        img[0].flat[rng.integers(0, img[0].size, 3)] += np.float32(0.3 / 255)
        np.clip(img, 0, 1, out=img)
    fast = classic.OtsuSegmenter(polarity=polarity, nbins=nbins, instances=False)
    fast.fit(img)
    slow = classic.OtsuSegmenter(polarity=polarity, nbins=nbins, instances=False)
    g = slow._fit_otsu(img)
    assert (fast.threshold, fast.dark, fast._snap) == (slow.threshold, slow.dark, slow._snap)
    if not fast._snap:
        return
    assert fast.threshold == (g[0, 0] if g.min() == g.max() else filters.threshold_otsu(g, nbins))
    decision = fast.predict(img[None])[0, 1] == 1
    grey = classic.grey(img, snap=True)
    np.testing.assert_array_equal(
        decision, grey <= fast.threshold if fast.dark else grey > fast.threshold
    )


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_levels=st.integers(1, 256),
    nbins=st.sampled_from([2, 3, 5, 17, 51, 85, 255, 256, 1000]),
)
def test_level_histogram_equals_numpy_of_the_level_values(
    seed: int, n_levels: int, nbins: int
) -> None:
    rng = np.random.default_rng(seed)
    counts = np.zeros(256, np.int64)
    counts[rng.choice(256, n_levels, replace=False)] = rng.integers(1, 50, n_levels)
    values = np.repeat(np.arange(256) / 255.0, counts)
    hist, edges = classic._level_histogram(counts, nbins)
    ref_hist, ref_edges = np.histogram(values, bins=nbins)
    np.testing.assert_array_equal(hist, ref_hist)
    np.testing.assert_array_equal(edges, ref_edges)
