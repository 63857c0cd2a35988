"""segflow.postprocess against scikit-image / SciPy as independent oracles."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage as ndi
from skimage import filters, measure, morphology, segmentation

from segflow import postprocess as pp

masks = arrays(
    dtype=bool,
    shape=st.tuples(st.integers(1, 24), st.integers(1, 24)),
    elements=st.booleans(),
)


def blobs(seed: int, shape: tuple[int, int] = (48, 64), p: float = 0.5) -> np.ndarray:
    """Random blobby mask: smoothed noise thresholded (objects, holes, specks)."""
    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.random(shape), 1.5)
    return noise > np.quantile(noise, 1 - p)


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5])
def test_smooth_equals_skimage_gaussian(sigma: float) -> None:
    rng = np.random.default_rng(1)
    img = rng.random((3, 20, 30)).astype(np.float32)
    out = pp.smooth(img, sigma=sigma)
    assert out.shape == img.shape and out.dtype == np.float32
    for c in range(3):
        ref = filters.gaussian(
            img[c].astype(np.float64),
            sigma=sigma,
            mode="nearest",
            truncate=4.0,
            preserve_range=True,
        )
        np.testing.assert_allclose(out[c], ref, atol=1e-6)


def test_smooth_zero_sigma_is_identity_and_bad_sigma_raises() -> None:
    img = np.random.default_rng(0).random((1, 5, 5)).astype(np.float32)
    assert pp.smooth(img, sigma=0) is img
    for bad in (-1.0, float("nan"), "1", True):
        with pytest.raises(ValueError, match="sigma must be"):
            pp.smooth(img, sigma=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 7])
def test_disk_equals_skimage(radius: int) -> None:
    np.testing.assert_array_equal(pp.disk(radius), morphology.disk(radius))


@settings(max_examples=120, deadline=None)
@given(mask=masks, radius=st.integers(0, 3))
def test_open_mask_equals_scipy_with_neutral_border(mask: np.ndarray, radius: int) -> None:
    fp = morphology.disk(radius).astype(bool)
    eroded = ndi.binary_erosion(mask, structure=fp, border_value=1)
    expected = ndi.binary_dilation(eroded, structure=fp, border_value=0)
    np.testing.assert_array_equal(pp.open_mask(mask, radius=radius), expected)


@settings(max_examples=120, deadline=None)
@given(mask=masks, connectivity=st.sampled_from([1, 2]))
def test_label_components_equals_skimage_label(mask: np.ndarray, connectivity: int) -> None:
    labels, n = pp.label_components(mask, connectivity=connectivity)
    ref = measure.label(mask, connectivity=connectivity)
    assert labels.dtype == np.int32
    assert n == ref.max()
    np.testing.assert_array_equal(labels, ref)  # same raster numbering


@settings(max_examples=120, deadline=None)
@given(mask=masks, min_size=st.integers(0, 8), connectivity=st.sampled_from([1, 2]))
def test_remove_small_objects_equals_skimage(
    mask: np.ndarray, min_size: int, connectivity: int
) -> None:
    out = pp.remove_small_objects(mask, min_size=min_size, connectivity=connectivity)
    # skimage's new API removes objects of size <= max_size
    ref = morphology.remove_small_objects(
        mask, max_size=max(min_size - 1, 0), connectivity=connectivity
    )
    np.testing.assert_array_equal(out, ref)


@settings(max_examples=120, deadline=None)
@given(mask=masks, connectivity=st.sampled_from([1, 2]))
def test_fill_all_holes_equals_binary_fill_holes(mask: np.ndarray, connectivity: int) -> None:
    # objects with connectivity c enclose holes with the dual connectivity 3 - c
    ref = ndi.binary_fill_holes(mask, structure=ndi.generate_binary_structure(2, 3 - connectivity))
    np.testing.assert_array_equal(pp.fill_holes(mask, connectivity=connectivity), ref)


@settings(max_examples=120, deadline=None)
@given(mask=masks, max_size=st.integers(0, 10), connectivity=st.sampled_from([1, 2]))
def test_fill_small_holes_only(mask: np.ndarray, max_size: int, connectivity: int) -> None:
    holes = (
        ndi.binary_fill_holes(mask, structure=ndi.generate_binary_structure(2, 3 - connectivity))
        & ~mask
    )
    small_holes = holes & ~morphology.remove_small_objects(
        holes, max_size=max_size, connectivity=3 - connectivity
    )
    out = pp.fill_holes(mask, max_size=max_size, connectivity=connectivity)
    np.testing.assert_array_equal(out, mask | small_holes)


def test_fill_holes_keeps_border_background() -> None:
    mask = np.ones((7, 7), dtype=bool)
    mask[0, 3] = False  # background touching the border: not a hole
    mask[3, 3] = False  # enclosed: a hole
    out = pp.fill_holes(mask)
    assert not out[0, 3] and out[3, 3]


def test_clean_mask_is_the_tutorial_order() -> None:
    for seed in range(5):
        m = blobs(seed)
        out = pp.clean_mask(m, opening=1, min_size=12, fill=True, max_hole_size=6, connectivity=2)
        ref = ndi.binary_dilation(
            ndi.binary_erosion(m, morphology.disk(1).astype(bool), border_value=1),
            morphology.disk(1).astype(bool),
        )
        ref = morphology.remove_small_objects(ref, max_size=11, connectivity=2)
        holes = ndi.binary_fill_holes(ref) & ~ref
        ref = ref | (holes & ~morphology.remove_small_objects(holes, max_size=6, connectivity=1))
        np.testing.assert_array_equal(out, ref)


def test_clean_classes_binary_equals_clean_mask_and_multiclass_never_overwrites() -> None:
    for seed in range(4):
        m = blobs(seed)
        opts = {"opening": 1, "min_size": 10, "fill": True, "max_hole_size": None}
        out = pp.clean_classes(m.astype(np.int32), num_classes=2, **opts)  # type: ignore[arg-type]
        np.testing.assert_array_equal(out == 1, pp.clean_mask(m, **opts))  # type: ignore[arg-type]
        # three classes: a foreground class never takes another foreground class's pixels
        cls = np.where(m, 1, 0) + (blobs(seed + 10, p=0.2) & m)
        cls = cls.astype(np.int32)
        out3 = pp.clean_classes(cls, num_classes=3, **opts)  # type: ignore[arg-type]
        changed = out3 != cls
        assert set(np.unique(out3)) <= {0, 1, 2}
        # a changed pixel either became background or was background before
        assert np.all((out3[changed] == 0) | (cls[changed] == 0))
        assert changed.any()  # the clean-up did something to check


def test_instances_from_classes_per_class_components() -> None:
    cls = np.zeros((20, 20), dtype=np.int32)
    cls[1:5, 1:5] = 1
    cls[10:14, 1:5] = 1
    cls[5:9, 5:9] = 2  # touches a class-1 square only at a corner: separate instances anyway
    cls[15:19, 15:19] = 2
    labels, inst_cls = pp.instances_from_classes(cls, num_classes=3, connectivity=2)
    assert labels.dtype == np.int32
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4}
    assert inst_cls == {1: 1, 2: 1, 3: 2, 4: 2}
    for i, k in inst_cls.items():
        assert np.all(cls[labels == i] == k)
    np.testing.assert_array_equal(labels > 0, cls > 0)


@settings(max_examples=80, deadline=None)
@given(
    labels=arrays(
        np.int32, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 9)
    )
)
def test_relabel_sequential_equals_skimage(labels: np.ndarray) -> None:
    ref, _, _ = segmentation.relabel_sequential(labels)
    out = pp.relabel_sequential(labels)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, ref)


@settings(max_examples=80, deadline=None)
@given(
    labels=arrays(
        np.int32, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 6)
    ),
    min_size=st.integers(0, 6),
)
def test_remove_small_instances_brute_force(labels: np.ndarray, min_size: int) -> None:
    out = pp.remove_small_instances(labels, min_size=min_size)
    expected = labels.copy()
    for i in np.unique(labels):
        if i and (labels == i).sum() < min_size:
            expected[labels == i] = 0
    np.testing.assert_array_equal(out > 0, expected > 0)
    ref, _, _ = segmentation.relabel_sequential(expected)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (
            lambda: pp.label_components(np.ones((2, 2), bool), connectivity=3),
            "1 (4-connected) or 2",
        ),
        (
            lambda: pp.remove_small_objects(np.ones((2, 2), bool), min_size=-1),
            "min_size must be an integer >= 0, got -1",
        ),
        (
            lambda: pp.open_mask(np.ones((2, 2), bool), radius=1.5),  # type: ignore[arg-type]
            "radius must be an integer >= 0, got 1.5",
        ),
        (
            lambda: pp.fill_holes(np.ones((2, 2), bool), max_size=-2),
            "max_size must be an integer >= 0, got -2",
        ),
        (lambda: pp.open_mask(np.ones((2, 2, 2), bool), radius=1), "2-D"),
        (lambda: pp.relabel_sequential(np.array([[-1, 0]])), "must be >= 0"),
    ],
)
def test_bad_arguments_raise_value_error(call, fragment: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        call()


@settings(max_examples=150, deadline=None)
@given(mask=masks, min_size=st.integers(0, 8), connectivity=st.sampled_from([1, 2]))
def test_binary_instances_equal_labelled_clean_mask(
    mask: np.ndarray, min_size: int, connectivity: int
) -> None:
    labels, n = pp.binary_instances(mask, min_size=min_size, connectivity=connectivity)
    cleaned = morphology.remove_small_objects(
        mask, max_size=max(min_size - 1, 0), connectivity=connectivity
    )
    ref = measure.label(cleaned, connectivity=connectivity)
    np.testing.assert_array_equal(labels, ref)
    assert n == ref.max() and labels.dtype == np.int32


@settings(max_examples=80, deadline=None)
@given(mask=masks, connectivity=st.sampled_from([1, 2]))
def test_component_sizes_equal_bincount(mask: np.ndarray, connectivity: int) -> None:
    labels, n = pp.label_components(mask, connectivity=connectivity)
    np.testing.assert_array_equal(
        pp.component_sizes(labels, n), np.bincount(labels.ravel(), minlength=n + 1)
    )


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 5),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    seed=st.integers(0, 2**32 - 1),
)
def test_argmax_classes_is_numpy_argmax_with_ties_to_the_lower_id(
    k: int, h: int, w: int, seed: int
) -> None:
    # few distinct values, so that ties between classes are common
    scores = np.random.default_rng(seed).integers(0, 3, size=(k, h, w)).astype(np.float32)
    got = pp.argmax_classes(scores)
    assert got.dtype == np.int32 and got.shape == (h, w)
    np.testing.assert_array_equal(got, np.argmax(scores, axis=0))


def test_argmax_classes_refuses_other_shapes() -> None:
    with pytest.raises(ValueError, match=r"scores must be \(K, H, W\) with K >= 1, got shape"):
        pp.argmax_classes(np.zeros((4, 4), np.float32))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["discs", "noise", "many_blobs", "empty", "full", "line"])
def test_component_sizes_and_binary_instances_on_larger_maps(seed: int, kind: str) -> None:
    """Both size paths (runs of a blob map, histogram of a noisy one) and both renumberings
    (a byte table below 256 ids, np.take above) against bincount and scikit-image."""
    rng = np.random.default_rng(seed)

    def discs_and_specks() -> np.ndarray:  # tens of components, few runs
        yy, xx = np.mgrid[:300, :420]
        out = np.zeros((300, 420), bool)
        for _ in range(40):
            cy, cx, r = rng.integers(0, 300), rng.integers(0, 420), rng.integers(1, 15)
            out |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        out[rng.integers(0, 300, 60), rng.integers(0, 420, 60)] = True
        return out

    mask = {
        "discs": discs_and_specks,
        "noise": lambda: rng.random((200, 230)) < 0.3,  # thousands of specks, many runs
        "many_blobs": lambda: blobs(seed, (600, 700), p=0.2),  # hundreds of components
        "empty": lambda: np.zeros((50, 60), bool),
        "full": lambda: np.ones((50, 60), bool),
        "line": lambda: rng.random((1, 500)) < 0.5,
    }[kind]()
    for connectivity in (1, 2):
        labels, n = pp.label_components(mask, connectivity=connectivity)
        np.testing.assert_array_equal(
            pp.component_sizes(labels, n), np.bincount(labels.ravel(), minlength=n + 1)
        )
        for min_size in (2, 5, 40):
            got, n_got = pp.binary_instances(mask, min_size=min_size, connectivity=connectivity)
            cleaned = morphology.remove_small_objects(
                mask, max_size=min_size - 1, connectivity=connectivity
            )
            ref = measure.label(cleaned, connectivity=connectivity)
            np.testing.assert_array_equal(got, ref)
            assert n_got == ref.max() and got.dtype == np.int32 and got.shape == mask.shape
