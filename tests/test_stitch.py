"""Tests for segflow.stitch: instance stitching across tiles.

Oracles: connected components of the untiled image (``skimage.measure.label``), compared as
partitions; a brute-force nearest-window-centre ownership map; hand-made tiles.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from skimage.measure import label

from segflow.stitch import label_tiled, stitch_instances
from segflow.tiling import Window, tile_grid

# --------------------------------------------------------------------------- helpers


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when label maps ``a`` and ``b`` are equal up to renumbering (0 = background)."""
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    fg = a > 0
    if not fg.any():
        return True
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1).shape[1]
    return pairs == np.unique(a[fg]).size == np.unique(b[fg]).size


def assert_consecutive(labels: np.ndarray) -> None:
    ids = np.unique(labels)
    ids = ids[ids > 0]
    assert np.array_equal(ids, np.arange(1, ids.size + 1))


def blob_image(seed: int, height: int, width: int) -> tuple[np.ndarray, float]:
    """(1, H, W) float32 smooth noise and a threshold leaving 10-70 % foreground."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.4, 3.0)
    image = ndi.gaussian_filter(rng.random((height, width)), sigma).astype(np.float32)[None]
    threshold = float(np.quantile(image, rng.uniform(0.3, 0.9)))
    return image, threshold


def split_into_tiles(labels: np.ndarray, windows: list[Window]) -> list[tuple[Window, np.ndarray]]:
    return [(w, labels[w.slices].copy()) for w in windows]


# --------------------------------------------------------------------------- property: tiled CC == untiled CC


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    height=st.integers(1, 48),
    width=st.integers(1, 48),
    tile=st.integers(2, 20),
    connectivity=st.sampled_from([1, 2]),
    data=st.data(),
)
def test_tiled_connected_components_equal_untiled(
    seed: int, height: int, width: int, tile: int, connectivity: int, data: st.DataObject
) -> None:
    overlap = data.draw(st.integers(1, tile - 1))
    image, threshold = blob_image(seed, height, width)

    def labeler(t: np.ndarray) -> np.ndarray:
        return label(t[0] > threshold, connectivity=connectivity).astype(np.int32)

    got = label_tiled(image, labeler, tile=tile, overlap=overlap)
    expected = labeler(image)
    assert got.dtype == np.int32 and got.shape == (height, width)
    assert same_partition(got, expected)
    assert_consecutive(got)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tile=st.integers(3, 12), data=st.data())
def test_stitching_untiled_labels_cut_into_tiles_in_any_order(
    seed: int, tile: int, data: st.DataObject
) -> None:
    """Tiles cut from one global CC map (with sparse, shuffled ids) stitch back to it."""
    overlap = data.draw(st.integers(1, tile - 1))
    image, threshold = blob_image(seed, 30, 37)
    rng = np.random.default_rng(seed)
    windows = tile_grid(30, 37, tile=tile, overlap=overlap)
    tiles = []
    for w in windows:
        local = label(image[0][w.slices] > threshold)
        scramble = np.concatenate([[0], rng.choice(10**9, size=local.max(), replace=False) + 1])
        tiles.append((w, scramble[local].astype(np.int64)))
    order = rng.permutation(len(tiles))
    got = stitch_instances([tiles[i] for i in order], height=30, width=37)
    assert same_partition(got, label(image[0] > threshold))
    assert_consecutive(got)


# --------------------------------------------------------------------------- table cases


def test_bar_crossing_many_tiles_is_one_object() -> None:
    image = np.zeros((1, 20, 50), np.float32)
    image[0, 9:11, 1:49] = 1.0  # a long bar through 7 windows
    image[0, 2, 2] = 1.0  # and a dot
    got = label_tiled(image, lambda t: label(t[0] > 0.5), tile=10, overlap=3)
    expected = np.zeros((20, 50), np.int32)
    expected[9:11, 1:49] = 2
    expected[2, 2] = 1
    assert same_partition(got, expected)
    assert got.max() == 2


def test_objects_separated_at_a_seam_stay_apart() -> None:
    # windows at x = 0 and x = 6 (tile 10, overlap 4): the ownership seam is at x = 8
    image = np.zeros((1, 6, 16), np.float32)
    image[0, 1:5, 2:8] = 1.0
    image[0, 1:5, 9:14] = 1.0  # one empty column (x = 8) between them
    got = label_tiled(image, lambda t: label(t[0] > 0.5), tile=10, overlap=4)
    assert got.max() == 2
    assert got[2, 7] != got[2, 9] and got[2, 7] > 0 and got[2, 9] > 0
    assert got[2, 8] == 0


def test_each_pixel_comes_from_the_nearest_window_centre() -> None:
    """Each tile marks only its own region (by a brute-force nearest-centre rule); regions do not
    overlap, so nothing merges and the output must be exactly that ownership partition."""
    height, width, tile, overlap = 23, 31, 9, 4
    windows = tile_grid(height, width, tile=tile, overlap=overlap)
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    best = np.full((height, width), np.inf)
    owner = np.zeros((height, width), np.int64)
    for index, w in enumerate(windows):  # raster order: ties go to the later window
        dist = (yy - (w.y + tile / 2)) ** 2 + (xx - (w.x + tile / 2)) ** 2
        take = dist <= best
        best[take], owner[take] = dist[take], index
    tiles = [(w, (owner[w.slices] == i).astype(np.int32)) for i, w in enumerate(windows)]
    got = stitch_instances(tiles, height=height, width=width)
    assert same_partition(got, owner + 1)
    assert got.max() == len(windows)


def test_min_overlap_ignores_accidental_contact() -> None:
    # two windows of 4 x 8 at x = 0 and x = 4; the shared band is columns 4..7
    left = np.zeros((4, 8), np.int32)
    left[0:2, :] = 1
    left[2, 5] = 1  # one pixel of the upper object reaches into row 2
    right = np.zeros((4, 8), np.int32)
    right[2:4, :] = 1  # the lower object, columns 4..11 of the image
    tiles = [(Window(0, 0, 4, 8), left), (Window(0, 4, 4, 8), right)]

    # ownership seam at x = (0 + 4 + 8) // 2 = 6: columns 0..5 from the left window
    upper = np.zeros((4, 12), bool)
    upper[0:2, 0:6] = True
    upper[2, 5] = True
    lower = np.zeros((4, 12), bool)
    lower[2:4, 6:12] = True

    merged = stitch_instances(tiles, height=4, width=12)  # any shared pixel merges
    assert np.array_equal(merged, (upper | lower).astype(np.int32))

    # 1 shared pixel <= 0.5 * min(9, 8) band pixels: kept apart
    apart = stitch_instances(tiles, height=4, width=12, min_overlap=0.5)
    assert np.array_equal(apart, upper * 1 + lower * 2)


def test_empty_tiles_give_an_empty_map() -> None:
    windows = tile_grid(12, 12, tile=5, overlap=2)
    got = stitch_instances([(w, np.zeros((5, 5), np.int32)) for w in windows], height=12, width=12)
    assert got.shape == (12, 12) and got.dtype == np.int32 and not got.any()


def test_image_smaller_than_tile_is_padded_and_cropped() -> None:
    image = np.zeros((1, 3, 5), np.float32)
    image[0, 0, 0] = image[0, 2, 4] = image[0, 1, 4] = 1.0
    seen = []

    def labeler(t: np.ndarray) -> np.ndarray:
        seen.append(t.shape)
        return label(t[0] > 0.5)

    got = label_tiled(image, labeler, tile=8, overlap=2)
    assert seen == [(1, 8, 8)]
    assert same_partition(got, label(image[0] > 0.5)) and got.max() == 2
    assert_consecutive(got)


# --------------------------------------------------------------------------- validation


def _tiles(labels: np.ndarray, tile: int = 4, overlap: int = 1) -> list[tuple[Window, np.ndarray]]:
    return split_into_tiles(labels, tile_grid(*labels.shape, tile=tile, overlap=overlap))


@pytest.mark.parametrize(
    ("tiles", "kwargs", "fragment"),
    [
        ([], {}, "at least one"),
        (_tiles(np.zeros((7, 7), np.int32))[1:], {}, "full grid"),
        (_tiles(np.zeros((7, 7), np.int32))[:1], {}, "must cover the image"),
        (
            [(Window(0, 0, 4, 4), np.zeros((3, 4), np.int32))],
            {"height": 4, "width": 4},
            "must have shape (4, 4)",
        ),
        (
            [(Window(0, 0, 4, 4), np.zeros((4, 4), np.float32))],
            {"height": 4, "width": 4},
            "integer array",
        ),
        ([(Window(0, 0, 4, 4), np.full((4, 4), -1))], {"height": 4, "width": 4}, "must be >= 0"),
        (
            [(Window(2, 0, 4, 4), np.zeros((4, 4), np.int32))],
            {"height": 5, "width": 4},
            "must lie inside",
        ),
        (
            [
                (Window(0, 0, 4, 4), np.zeros((4, 4), int)),
                (Window(0, 0, 4, 4), np.zeros((4, 4), int)),
            ],
            {"height": 4, "width": 4},
            "more than once",
        ),
        (
            [
                (Window(0, 0, 4, 4), np.zeros((4, 4), int)),
                (Window(0, 5, 4, 4), np.zeros((4, 4), int)),
            ],
            {"height": 4, "width": 9},
            "leave a gap",
        ),
        (
            _tiles(np.zeros((7, 7), np.int32)),
            {"min_overlap": 1.0},
            "min_overlap must be in [0, 1), got 1.0",
        ),
        (
            _tiles(np.zeros((7, 7), np.int32)),
            {"height": 0},
            "height and width must be integers >= 1",
        ),
    ],
)
def test_stitch_instances_rejects_bad_input(tiles: list, kwargs: dict, fragment: str) -> None:
    options = {"height": 7, "width": 7, **kwargs}
    with pytest.raises(ValueError) as info:
        stitch_instances(tiles, **options)
    assert fragment in str(info.value)


def test_label_tiled_requires_overlap_and_a_well_shaped_labeler() -> None:
    image = np.zeros((1, 10, 10), np.float32)
    with pytest.raises(ValueError, match=r"overlap must be >= 1 for instance stitching.*got 0"):
        label_tiled(image, lambda t: label(t[0] > 0), tile=4, overlap=0)
    with pytest.raises(ValueError, match=r"overlap must be an integer in \[0, 3\], got 4"):
        label_tiled(image, lambda t: label(t[0] > 0), tile=4, overlap=4)
    with pytest.raises(ValueError, match=r"must return a \(4, 4\) label map, got shape \(3, 3\)"):
        label_tiled(image, lambda t: np.zeros((3, 3), np.int32), tile=4, overlap=1)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        label_tiled(np.zeros((10, 10), np.float32), lambda t: t, tile=4, overlap=1)
