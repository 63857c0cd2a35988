"""Tests for segflow.tiling: grid, padding, weights, merger and tiled prediction.

Oracles: MONAI (``dense_patch_slices``, ``compute_importance_map``, ``sliding_window_inference``),
the untiled prediction of a pointwise predictor, and a brute-force float64 weighted average.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segflow.tiling import (
    BLEND_MODES,
    AvgMerger,
    GridMerger,
    Window,
    blend_weights,
    pad_to_tile,
    predict_tiled,
    tile_grid,
)

# --------------------------------------------------------------------------- helpers


def pointwise(batch: np.ndarray) -> np.ndarray:
    """(N, C, t, t) -> (N, 2, t, t); only +, -, *, min/max, so every element rounds the same
    way whatever the array layout (no SIMD-vs-scalar transcendental differences)."""
    a = batch[:, :1] * np.float32(0.7) - batch[:, -1:] * np.float32(0.2) + np.float32(0.1)
    fg = np.clip(a, 0.0, 1.0)
    return np.concatenate([1.0 - fg, fg * fg], axis=1)


def tile_means(batch: np.ndarray) -> np.ndarray:
    """Not pointwise: every tile predicts its channel means, plus a position ramp."""
    means = batch.mean(axis=(2, 3), keepdims=True, dtype=np.float64)
    ramp = np.linspace(0.0, 1.0, batch.shape[-1])[None, None, None, :]
    return np.broadcast_to(means + ramp, batch.shape).astype(np.float32)


def brute_force_blend(
    image: np.ndarray, predictor, *, tile: int, overlap: int, blend: str
) -> np.ndarray:
    """sum_i(w_i * v_i) / sum_i(w_i) in float64, window by window, on the reflect-padded image."""
    _, height, width = image.shape
    padded = np.pad(
        image, ((0, 0), (0, max(tile - height, 0)), (0, max(tile - width, 0))), mode="reflect"
    )
    weights = blend_weights(tile, mode=blend).astype(np.float64)
    total = None
    wsum = np.zeros(padded.shape[1:], dtype=np.float64)
    for win in tile_grid(height, width, tile=tile, overlap=overlap):
        values = predictor(padded[None, :, win.y : win.y + tile, win.x : win.x + tile])[0]
        if total is None:
            total = np.zeros((values.shape[0], *padded.shape[1:]), dtype=np.float64)
        total[:, win.y : win.y + tile, win.x : win.x + tile] += weights * values
        wsum[win.y : win.y + tile, win.x : win.x + tile] += weights
    assert total is not None
    return (total / wsum)[:, :height, :width]


# --------------------------------------------------------------------------- Window / tile_grid


def test_window_slices_select_the_tile() -> None:
    image = np.arange(6 * 7).reshape(6, 7)
    win = Window(y=1, x=2, h=3, w=4)
    assert win.slices == (slice(1, 4), slice(2, 6))
    assert np.array_equal(image[win.slices], image[1:4, 2:6])


TILE_GRID_CASES = [
    # (height, width, tile, overlap, expected row starts, expected column starts)
    (4, 4, 2, 0, [0, 2], [0, 2]),
    (4, 4, 3, 1, [0, 1], [0, 1]),
    (5, 4, 2, 1, [0, 1, 2, 3], [0, 1, 2]),
    (2, 3, 4, 1, [0], [0]),  # smaller than a tile: one window into the padded image
    (10, 1, 4, 2, [0, 2, 4, 6], [0]),
    (7, 7, 7, 3, [0], [0]),
    (9, 4, 4, 0, [0, 4, 5], [0]),  # last window shifted inward
    (1, 1, 1, 0, [0], [0]),
]


@pytest.mark.parametrize(("height", "width", "tile", "overlap", "ys", "xs"), TILE_GRID_CASES)
def test_tile_grid_table(
    height: int, width: int, tile: int, overlap: int, ys: list[int], xs: list[int]
) -> None:
    expected = [Window(y, x, tile, tile) for y in ys for x in xs]
    assert tile_grid(height, width, tile=tile, overlap=overlap) == expected


@settings(max_examples=200, deadline=None)
@given(
    height=st.integers(1, 70),
    width=st.integers(1, 70),
    tile=st.integers(1, 24),
    data=st.data(),
)
def test_tile_grid_covers_with_overlap(
    height: int, width: int, tile: int, data: st.DataObject
) -> None:
    overlap = data.draw(st.integers(0, tile - 1))
    windows = tile_grid(height, width, tile=tile, overlap=overlap)
    padded_h, padded_w = max(height, tile), max(width, tile)
    coverage = np.zeros((padded_h, padded_w), dtype=int)
    for win in windows:
        assert (win.h, win.w) == (tile, tile)
        assert 0 <= win.y and win.y + tile <= padded_h
        assert 0 <= win.x and win.x + tile <= padded_w
        coverage[win.slices] += 1
    assert coverage.min() >= 1
    ys = sorted({w.y for w in windows})
    xs = sorted({w.x for w in windows})
    assert windows == [Window(y, x, tile, tile) for y in ys for x in xs]  # raster order, full grid
    for starts, length in ((ys, padded_h), (xs, padded_w)):
        assert starts[0] == 0 and starts[-1] + tile == length
        for prev, nxt in itertools.pairwise(starts):
            assert 0 < nxt - prev <= tile - overlap  # overlap at least `overlap`


@settings(max_examples=100, deadline=None)
@given(height=st.integers(1, 90), width=st.integers(1, 90), tile=st.integers(1, 30), data=st.data())
def test_tile_grid_matches_monai_dense_patch_slices(
    height: int, width: int, tile: int, data: st.DataObject
) -> None:
    monai_utils = pytest.importorskip("monai.data.utils")
    overlap = data.draw(st.integers(0, tile - 1))
    size = (max(height, tile), max(width, tile))
    slices = monai_utils.dense_patch_slices(size, (tile, tile), (tile - overlap, tile - overlap))
    expected = [Window(s[0].start, s[1].start, tile, tile) for s in slices]
    assert tile_grid(height, width, tile=tile, overlap=overlap) == expected


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"tile": 0, "overlap": 0}, "tile must be an integer >= 1, got 0"),
        ({"tile": -3, "overlap": 0}, "tile must be an integer >= 1, got -3"),
        ({"tile": 2.5, "overlap": 0}, "tile must be an integer >= 1, got 2.5"),
        ({"tile": True, "overlap": 0}, "tile must be an integer >= 1, got True"),
        ({"tile": 8, "overlap": -1}, "overlap must be an integer in [0, 7], got -1"),
        ({"tile": 8, "overlap": 8}, "overlap must be an integer in [0, 7], got 8"),
        ({"tile": 8, "overlap": 20}, "overlap must be an integer in [0, 7], got 20"),
        ({"tile": 1, "overlap": 1}, "overlap must be an integer in [0, 0], got 1"),
    ],
)
def test_tile_grid_rejects_bad_tile_or_overlap(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        tile_grid(10, 10, **kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize(("height", "width"), [(0, 5), (5, 0), (-1, 3)])
def test_tile_grid_rejects_empty_images(height: int, width: int) -> None:
    with pytest.raises(ValueError, match=r"must be an integer >= 1, got -?\d"):
        tile_grid(height, width, tile=4, overlap=1)


def test_tile_grid_accepts_numpy_integers() -> None:
    assert tile_grid(np.int64(5), np.int32(5), tile=np.int64(4), overlap=np.uint8(1)) == [  # type: ignore[arg-type]
        Window(y, x, 4, 4) for y in (0, 1) for x in (0, 1)
    ]


# --------------------------------------------------------------------------- pad_to_tile


def test_pad_to_tile_returns_input_when_large_enough() -> None:
    image = np.zeros((2, 8, 9), dtype=np.float32)
    padded, size = pad_to_tile(image, 8)
    assert padded is image and size == (8, 9)


@pytest.mark.parametrize(
    ("height", "width", "tile"), [(1, 1, 4), (3, 10, 7), (10, 2, 5), (5, 5, 6)]
)
def test_pad_to_tile_reflects_bottom_right(height: int, width: int, tile: int) -> None:
    rng = np.random.default_rng(height * 100 + width)
    image = rng.random((2, height, width), dtype=np.float32)
    padded, size = pad_to_tile(image, tile)
    assert size == (height, width)
    assert padded.shape == (2, max(height, tile), max(width, tile))
    assert np.array_equal(padded[:, :height, :width], image)
    # reflection without repeating the border: row height + i mirrors row height - 2 - i
    for i in range(min(padded.shape[1] - height, height - 1)):
        assert np.array_equal(padded[:, height + i, :width], image[:, height - 2 - i])
    if height == 1:  # a 1-pixel side can only repeat itself
        assert np.all(padded[:, :, :width] == image[:, :1, :])


def test_pad_to_tile_rejects_non_chw() -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        pad_to_tile(np.zeros((4, 4)), 8)


# --------------------------------------------------------------------------- blend_weights


@pytest.mark.parametrize("mode", BLEND_MODES)
@pytest.mark.parametrize("tile", [1, 2, 3, 8, 17, 64])
def test_blend_weights_shape_positive_symmetric(mode: str, tile: int) -> None:
    weights = blend_weights(tile, mode=mode)
    assert weights.shape == (tile, tile) and weights.dtype == np.float32
    assert weights.min() > 0
    assert weights.max() <= 1.0
    if mode != "gaussian" or tile % 2 == 1:  # an even gaussian peaks between the centre pixels
        assert weights.max() == pytest.approx(1.0, abs=1e-6)
    assert np.array_equal(weights, weights[::-1]) and np.array_equal(weights, weights[:, ::-1])
    assert np.array_equal(weights, weights.T)


def test_blend_weights_constant_and_linear_values() -> None:
    assert np.array_equal(blend_weights(3, mode="constant"), np.ones((3, 3), dtype=np.float32))
    ramp4 = np.array([0.5, 1.0, 1.0, 0.5])
    np.testing.assert_allclose(blend_weights(4, mode="linear"), np.outer(ramp4, ramp4), rtol=1e-7)
    ramp5 = np.array([1, 2, 3, 2, 1]) / 3
    np.testing.assert_allclose(blend_weights(5, mode="linear"), np.outer(ramp5, ramp5), rtol=1e-6)


@pytest.mark.parametrize("tile", [1, 2, 7, 16, 64, 512])
def test_gaussian_weights_match_monai_importance_map(tile: int) -> None:
    monai_utils = pytest.importorskip("monai.data.utils")
    expected = monai_utils.compute_importance_map(
        (tile, tile), mode="gaussian", sigma_scale=0.125
    ).numpy()
    np.testing.assert_allclose(blend_weights(tile, mode="gaussian"), expected, rtol=1e-5, atol=1e-7)
    assert blend_weights(tile, mode="gaussian").min() >= np.float32(1e-3)


def test_blend_weights_rejects_unknown_mode() -> None:
    with pytest.raises(
        ValueError, match=r"one of \['constant', 'linear', 'gaussian'\], got 'cosine'"
    ):
        blend_weights(8, mode="cosine")


# --------------------------------------------------------------------------- predict_tiled


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    channels=st.integers(1, 3),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    tile=st.integers(1, 24),
    blend=st.sampled_from(BLEND_MODES),
    batch_size=st.integers(1, 5),
    data=st.data(),
)
def test_pointwise_prediction_is_exactly_untiled(
    seed: int,
    channels: int,
    height: int,
    width: int,
    tile: int,
    blend: str,
    batch_size: int,
    data: st.DataObject,
) -> None:
    overlap = data.draw(st.integers(0, tile - 1))
    image = np.random.default_rng(seed).normal(size=(channels, height, width)).astype(np.float32)
    got = predict_tiled(
        image, pointwise, tile=tile, overlap=overlap, blend=blend, batch_size=batch_size
    )
    expected = pointwise(image[None])[0]
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.array_equal(got, expected)  # bit for bit


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    height=st.integers(1, 36),
    width=st.integers(1, 36),
    tile=st.integers(2, 16),
    blend=st.sampled_from(BLEND_MODES),
    data=st.data(),
)
def test_non_pointwise_prediction_is_the_weighted_mean(
    seed: int, height: int, width: int, tile: int, blend: str, data: st.DataObject
) -> None:
    overlap = data.draw(st.integers(0, tile - 1))
    image = np.random.default_rng(seed).random((2, height, width), dtype=np.float32)
    got = predict_tiled(image, tile_means, tile=tile, overlap=overlap, blend=blend, batch_size=3)
    expected = brute_force_blend(image, tile_means, tile=tile, overlap=overlap, blend=blend)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap", "blend"),
    [
        (40, 52, 16, 4, "gaussian"),
        (64, 33, 32, 8, "gaussian"),
        (37, 37, 8, 2, "constant"),
        (20, 45, 20, 5, "gaussian"),
        (16, 16, 16, 4, "constant"),
    ],
)
def test_non_pointwise_prediction_matches_monai(
    height: int, width: int, tile: int, overlap: int, blend: str
) -> None:
    torch = pytest.importorskip("torch")
    inferers = pytest.importorskip("monai.inferers")
    rng = np.random.default_rng(7)
    image = rng.random((2, height, width), dtype=np.float32)
    got = predict_tiled(image, tile_means, tile=tile, overlap=overlap, blend=blend, batch_size=4)
    with torch.no_grad():
        expected = inferers.sliding_window_inference(
            torch.from_numpy(image)[None],
            roi_size=(tile, tile),
            sw_batch_size=4,
            predictor=lambda t: torch.from_numpy(tile_means(t.numpy())),
            overlap=overlap / tile,
            mode=blend,
        )[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_predict_tiled_batches_and_keeps_inputs_intact() -> None:
    rng = np.random.default_rng(3)
    image = rng.random((2, 23, 30), dtype=np.float32)
    seen: list[np.ndarray] = []

    def spy(batch: np.ndarray) -> np.ndarray:
        seen.append(batch)  # kept across calls: must not be overwritten by later batches
        return pointwise(batch)

    windows = tile_grid(23, 30, tile=10, overlap=3)
    predict_tiled(image, spy, tile=10, overlap=3, batch_size=4)
    assert [len(b) for b in seen] == [4] * (len(windows) // 4) + (
        [len(windows) % 4] if len(windows) % 4 else []
    )
    stacked = np.concatenate(seen)
    for tile_input, win in zip(stacked, windows, strict=True):
        assert np.array_equal(tile_input, image[:, win.y : win.y + 10, win.x : win.x + 10])


@pytest.mark.parametrize(("width", "batch_size"), [(60, 3), (60, 8), (47, 4), (30, 2), (12, 5)])
def test_predict_tiled_batches_stay_in_a_row_and_are_read_only(width: int, batch_size: int) -> None:
    """Rows of >= batch_size windows are split into near-equal batches (>= half full), each a
    read-only view when evenly spaced; otherwise batches are full and run across rows."""
    image = np.random.default_rng(4).random((2, 25, width), dtype=np.float32)
    windows = tile_grid(25, width, tile=8, overlap=2)
    per_row = len({w.x for w in windows})
    seen: list[np.ndarray] = []

    def spy(batch: np.ndarray) -> np.ndarray:
        assert not batch.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            batch[0, 0, 0, 0] = 1.0
        seen.append(batch)
        return pointwise(batch)

    got = predict_tiled(image, spy, tile=8, overlap=2, batch_size=batch_size)
    assert np.array_equal(got, pointwise(image[None])[0])
    sizes = [len(b) for b in seen]
    assert sum(sizes) == len(windows) and max(sizes) <= batch_size
    if per_row >= batch_size:
        assert min(sizes) >= (batch_size + 1) // 2
        assert len(seen) == len({w.y for w in windows}) * -(-per_row // batch_size)
    else:
        assert sizes[:-1] == [batch_size] * (len(sizes) - 1)
    stacked = np.concatenate(seen)  # every batch still holds its windows after the call
    for tile_input, win in zip(stacked, windows, strict=True):
        assert np.array_equal(tile_input, image[:, win.y : win.y + 8, win.x : win.x + 8])
    # views of the image wherever the batch's windows are one row apart by equal steps
    views = [b for b in seen if np.shares_memory(b, image)]
    assert per_row < batch_size or views


def test_identity_predictor_returning_views_is_exact() -> None:
    image = np.random.default_rng(6).random((3, 40, 70), dtype=np.float32)
    got = predict_tiled(image, lambda b: b, tile=16, overlap=5, blend="gaussian", batch_size=2)
    assert np.array_equal(got, image)


def test_predict_tiled_converts_float64_input() -> None:
    image = np.random.default_rng(5).random((1, 12, 12))
    got = predict_tiled(image, pointwise, tile=5, overlap=2)
    assert got.dtype == np.float32
    assert np.array_equal(
        got, predict_tiled(image.astype(np.float32), pointwise, tile=5, overlap=2)
    )


@pytest.mark.parametrize(
    ("image", "kwargs", "fragment"),
    [
        (np.zeros((8, 8), np.float32), {}, "(C, H, W)"),
        (np.zeros((1, 8, 8), np.uint8), {}, "floating"),
        (np.zeros((1, 8, 8), np.float32), {"blend": "median"}, "got 'median'"),
        (
            np.zeros((1, 8, 8), np.float32),
            {"batch_size": 0},
            "batch_size must be an integer >= 1, got 0",
        ),
        (
            np.zeros((1, 8, 8), np.float32),
            {"overlap": 4, "tile": 4},
            "overlap must be an integer in [0, 3], got 4",
        ),
    ],
)
def test_predict_tiled_rejects_bad_arguments(
    image: np.ndarray, kwargs: dict, fragment: str
) -> None:
    options = {"tile": 4, "overlap": 1, **kwargs}
    with pytest.raises(ValueError) as info:
        predict_tiled(image, pointwise, **options)
    assert fragment in str(info.value)


def test_predict_tiled_rejects_bad_predictor_output() -> None:
    image = np.zeros((1, 10, 10), np.float32)
    with pytest.raises(
        ValueError, match=r"must return \(N, K, 4, 4\) with N = 1, got shape \(1, 1, 3, 3\)"
    ):
        predict_tiled(image, lambda b: b[:, :, :3, :3], tile=4, overlap=1, batch_size=2)

    calls = iter(range(100))

    def changing_k(batch: np.ndarray) -> np.ndarray:
        k = 1 + next(calls)
        return np.zeros((batch.shape[0], k, 4, 4), np.float32)

    with pytest.raises(ValueError, match="K = 2 channels, earlier batches had K = 1"):
        predict_tiled(image, changing_k, tile=4, overlap=1, batch_size=2)


# --------------------------------------------------------------------------- AvgMerger


@pytest.mark.parametrize("seed", range(5))
def test_avg_merger_is_order_independent(seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width, tile, overlap = 29, 41, 12, 5
    windows = tile_grid(height, width, tile=tile, overlap=overlap)
    values = [rng.random((2, tile, tile), dtype=np.float32) for _ in windows]
    weights = blend_weights(tile, mode="gaussian")
    results = []
    for order in (range(len(windows)), rng.permutation(len(windows)), range(len(windows))[::-1]):
        merger = AvgMerger((2, height, width), weights=weights)
        for i in order:
            merger.aggregate(values[i], windows[i])
        results.append(merger.finalize())
    for result in results[1:]:
        np.testing.assert_allclose(result, results[0], rtol=0, atol=1e-6)
    # identical predictions are reproduced exactly in any order (general path included)
    constant = rng.random((2, height, width), dtype=np.float32)
    merger = AvgMerger((2, height, width), weights=weights)
    for i in rng.permutation(len(windows)):
        merger.aggregate(constant[(slice(None), *windows[i].slices)], windows[i])
    assert np.array_equal(merger.finalize(), constant)


def test_avg_merger_leaves_unseen_pixels_zero() -> None:
    merger = AvgMerger((1, 6, 6), weights=np.ones((3, 3), np.float32))
    merger.aggregate(np.full((1, 3, 3), 2.0, np.float32), Window(0, 0, 3, 3))
    result = merger.finalize()
    assert np.all(result[:, :3, :3] == 2.0) and np.count_nonzero(result) == 9


def test_avg_merger_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="strictly positive"):
        AvgMerger((1, 4, 4), weights=np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"shape must be \(K, H, W\)"):
        AvgMerger((0, 4, 4), weights=np.ones((2, 2), np.float32))
    merger = AvgMerger((2, 4, 4), weights=np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"values must have shape \(2, 2, 2\)"):
        merger.aggregate(np.zeros((1, 2, 2), np.float32), Window(0, 0, 2, 2))
    with pytest.raises(ValueError, match="must lie inside"):
        merger.aggregate(np.zeros((2, 2, 2), np.float32), Window(3, 0, 2, 2))
    with pytest.raises(ValueError, match="must equal the weights' shape"):
        merger.aggregate(np.zeros((2, 3, 3), np.float32), Window(0, 0, 3, 3))


def test_predictor_reusing_its_output_buffer_is_merged_in_line() -> None:
    """A predictor that returns the same buffer every call still gives the exact answer."""
    image = np.random.default_rng(11).normal(size=(2, 40, 50)).astype(np.float32)
    buffer = np.empty((3, 2, 8, 8), np.float32)

    def reusing(batch: np.ndarray) -> np.ndarray:
        out = buffer[: len(batch)]
        out[...] = pointwise(batch)
        return out

    got = predict_tiled(image, reusing, tile=8, overlap=3, blend="gaussian", batch_size=3)
    assert len(tile_grid(40, 50, tile=8, overlap=3)) > 6  # several batches
    assert np.array_equal(got, pointwise(image[None])[0])


def test_predictor_starting_to_reuse_memory_late_is_refused() -> None:
    image = np.zeros((1, 30, 30), np.float32)
    buffer = np.zeros((2, 1, 8, 8), np.float32)
    calls = iter(range(100))

    def late_reuser(batch: np.ndarray) -> np.ndarray:
        return (
            np.zeros((len(batch), 1, 8, 8), np.float32) if next(calls) < 3 else buffer[: len(batch)]
        )

    with pytest.raises(RuntimeError, match="return a new array from each call"):
        predict_tiled(image, late_reuser, tile=8, overlap=2, batch_size=2)


# --------------------------------------------------------------------------- GridMerger


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    tile=st.integers(1, 14),
    blend=st.sampled_from(BLEND_MODES),
    data=st.data(),
)
def test_grid_merger_equals_avg_merger(
    seed: int, height: int, width: int, tile: int, blend: str, data: st.DataObject
) -> None:
    overlap = data.draw(st.integers(0, tile - 1))
    height, width = max(height, tile), max(width, tile)
    windows = tile_grid(height, width, tile=tile, overlap=overlap)
    ys = sorted({w.y for w in windows})
    xs = sorted({w.x for w in windows})
    weights = blend_weights(tile, mode=blend)
    rng = np.random.default_rng(seed)
    grid = GridMerger((2, height, width), ys=ys, xs=xs, weights=weights)
    avg = AvgMerger((2, height, width), weights=weights)
    for win in windows:
        values = rng.random((2, tile, tile), dtype=np.float32)
        grid.aggregate(values, win)
        avg.aggregate(values, win)
    np.testing.assert_allclose(grid.finalize(), avg.finalize(), rtol=0, atol=2e-6)


def test_grid_merger_enforces_raster_order_and_completion() -> None:
    windows = tile_grid(10, 10, tile=4, overlap=1)  # starts 0, 3, 6 on both axes
    merger = GridMerger(
        (1, 10, 10), ys=[0, 3, 6], xs=[0, 3, 6], weights=np.ones((4, 4), np.float32)
    )
    values = np.zeros((1, 4, 4), np.float32)
    merger.aggregate(values, windows[0])
    with pytest.raises(ValueError, match=r"raster order: expected the window at \(y=0, x=3\)"):
        merger.aggregate(values, windows[2])
    with pytest.raises(ValueError, match="only 1 of 9 grid windows"):
        merger.finalize()
    for win in windows[1:]:
        merger.aggregate(values, win)
    assert merger.finalize().shape == (1, 10, 10)
    with pytest.raises(ValueError, match="already aggregated"):
        merger.aggregate(values, windows[0])


@pytest.mark.parametrize(
    ("ys", "xs"),
    [([0, 3], [0, 3, 6]), ([1, 3, 6], [0, 3, 6]), ([0, 5, 6], [0, 3, 6]), ([], [0, 3, 6])],
)
def test_grid_merger_rejects_grids_that_do_not_tile_the_image(ys: list[int], xs: list[int]) -> None:
    with pytest.raises(ValueError, match="ys must be increasing window starts from 0 to 6"):
        GridMerger((1, 10, 10), ys=ys, xs=xs, weights=np.ones((4, 4), np.float32))
