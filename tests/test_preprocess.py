"""segflow.preprocess against independent oracles (float64 arithmetic, scikit-image, numpy)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from skimage.color import rgb2gray

from segflow.preprocess import (
    FLOAT_MODES,
    NORMALIZE_MODES,
    normalize,
    overview,
    to_float_chw,
    to_grey,
)


def _rng(salt: int = 0) -> np.random.Generator:
    return np.random.default_rng(4242 + salt)


# ---------------------------------------------------------------------------------------------
# to_float_chw


def test_uint8_every_value_maps_to_value_over_255() -> None:
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = to_float_chw(grey)
    assert out.shape == (1, 16, 16) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out[0], grey / 255.0, rtol=1e-7, atol=0)
    assert out.min() == 0.0 and out.max() == 1.0


def test_uint16_scaled_by_65535() -> None:
    values = np.array([[0, 1, 257, 32768, 65534, 65535]], dtype=np.uint16)
    out = to_float_chw(values)
    np.testing.assert_allclose(out[0], values / 65535.0, rtol=1e-7, atol=0)
    assert out[0, 0, -1] == 1.0


def test_rgb_channel_order_kept_and_channels_first() -> None:
    rgb = _rng(1).integers(0, 256, size=(5, 7, 3)).astype(np.uint8)
    out = to_float_chw(rgb)
    assert out.shape == (3, 5, 7)
    for c in range(3):
        np.testing.assert_allclose(out[c], rgb[..., c] / 255.0, rtol=1e-7)


def test_rgba_alpha_dropped_unless_asked() -> None:
    rgba = _rng(2).integers(0, 256, size=(4, 6, 4)).astype(np.uint8)
    out = to_float_chw(rgba)
    assert out.shape == (3, 4, 6)
    np.testing.assert_allclose(out, np.moveaxis(rgba[..., :3], -1, 0) / 255.0, rtol=1e-7)
    kept = to_float_chw(rgba, drop_alpha=False)
    assert kept.shape == (4, 4, 6)
    np.testing.assert_allclose(kept[3], rgba[..., 3] / 255.0, rtol=1e-7)


def test_other_channel_counts_kept() -> None:
    two = _rng(3).integers(0, 256, size=(3, 3, 2)).astype(np.uint8)
    five = _rng(4).integers(0, 65536, size=(3, 3, 5)).astype(np.uint16)
    assert to_float_chw(two).shape == (2, 3, 3)
    assert to_float_chw(five).shape == (5, 3, 3)


def test_bool_maps_to_zero_one() -> None:
    mask = _rng(5).random((6, 6)) > 0.5
    out = to_float_chw(mask)
    np.testing.assert_array_equal(out[0], mask.astype(np.float32))


def test_float_in_unit_range_is_unchanged() -> None:
    arr = _rng(6).random((8, 9), dtype=np.float32)
    arr[0, 0], arr[0, 1] = 0.0, 1.0
    for mode in FLOAT_MODES:
        out = to_float_chw(arr, float_mode=mode)
        if mode == "minmax":
            expected = (arr.astype(np.float64) - arr.min()) / (arr.max() - arr.min())
            np.testing.assert_allclose(out[0], expected, atol=1e-6)
        else:
            np.testing.assert_array_equal(out[0], arr)


def test_float_out_of_range_auto_is_minmax_and_clip_clips() -> None:
    arr = (_rng(7).random((10, 12)) * 4000.0 - 100.0).astype(np.float32)
    auto = to_float_chw(arr)
    expected = (arr.astype(np.float64) - arr.min()) / (float(arr.max()) - float(arr.min()))
    np.testing.assert_allclose(auto[0], expected, atol=1e-6)
    assert auto.min() == 0.0 and auto.max() == pytest.approx(1.0, abs=1e-6)
    clipped = to_float_chw(arr, float_mode="clip")
    np.testing.assert_array_equal(clipped[0], np.clip(arr, 0, 1))


def test_float_nan_and_inf() -> None:
    arr = np.array([[np.nan, 0.25, np.inf, -np.inf, 0.75]], dtype=np.float32)
    out = to_float_chw(arr)  # finite values in range: kept; NaN -> 0, inf -> 1, -inf -> 0
    np.testing.assert_array_equal(out[0, 0], [0.0, 0.25, 1.0, 0.0, 0.75])
    wide = np.array([[np.nan, 10.0, np.inf, 30.0]], dtype=np.float64)
    out = to_float_chw(wide)
    np.testing.assert_allclose(out[0, 0], [0.0, 0.0, 1.0, 1.0])
    assert not np.isnan(to_float_chw(np.full((2, 2), np.nan))).any()


def test_constant_float_image_outside_range_gives_zeros() -> None:
    out = to_float_chw(np.full((3, 4), 7.5, np.float32))
    np.testing.assert_array_equal(out, np.zeros((1, 3, 4), np.float32))


def test_int16_is_scaled_like_float() -> None:
    arr = np.array([[-1000, 0, 3000]], dtype=np.int16)
    out = to_float_chw(arr)
    np.testing.assert_allclose(out[0, 0], [0.0, 0.25, 1.0], atol=1e-7)


@settings(max_examples=100, deadline=None)
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int32, np.bool_]),
        shape=st.tuples(st.integers(1, 6), st.integers(1, 6), st.sampled_from([1, 3, 4])),
    ),
    mode=st.sampled_from(FLOAT_MODES),
)
def test_to_float_chw_always_in_unit_range(arr: np.ndarray, mode: str) -> None:
    out = to_float_chw(arr, float_mode=mode)
    channels = 3 if arr.shape[2] == 4 else arr.shape[2]
    assert out.shape == (channels, arr.shape[0], arr.shape[1])
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros(5, np.uint8), "must be \\(H, W\\) or \\(H, W, C\\)"),
        (np.zeros((2, 2, 2, 2), np.uint8), "must be \\(H, W\\) or \\(H, W, C\\)"),
        (np.zeros((2, 2, 0), np.uint8), "at least one channel"),
        (np.zeros((2, 2), np.complex64), "dtype"),
    ],
)
def test_to_float_chw_rejects_bad_input(image: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        to_float_chw(image)


def test_to_float_chw_rejects_bad_float_mode() -> None:
    with pytest.raises(ValueError, match="float_mode must be one of"):
        to_float_chw(np.zeros((2, 2), np.float32), float_mode="scale")


# ---------------------------------------------------------------------------------------------
# to_grey


def test_to_grey_matches_skimage_rgb2gray() -> None:
    rgb = _rng(8).random((3, 20, 30), dtype=np.float32)
    out = to_grey(rgb)
    assert out.shape == (1, 20, 30) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], rgb2gray(np.moveaxis(rgb, 0, -1)), atol=1e-6)


def test_to_grey_single_channel_unchanged_rgba_ignores_alpha_other_counts_mean() -> None:
    grey = _rng(9).random((1, 5, 6), dtype=np.float32)
    np.testing.assert_array_equal(to_grey(grey), grey)
    rgba = _rng(10).random((4, 5, 6), dtype=np.float32)
    np.testing.assert_allclose(to_grey(rgba), to_grey(rgba[:3]), atol=0)
    two = _rng(11).random((2, 5, 6), dtype=np.float32)
    np.testing.assert_allclose(to_grey(two)[0], two.mean(axis=0), atol=1e-7)
    with pytest.raises(ValueError, match="must be \\(C, H, W\\)"):
        to_grey(np.zeros((5, 6), np.float32))


# ---------------------------------------------------------------------------------------------
# normalize


def _image(salt: int, shape: tuple[int, int, int] = (2, 30, 40)) -> np.ndarray:
    rng = _rng(salt)
    scale = np.array([1.0, 50.0])[: shape[0], None, None]
    return (rng.normal(3.0, 2.0, size=shape) * scale).astype(np.float32)


def test_normalize_none_is_a_float32_copy() -> None:
    img = _image(12)
    out = normalize(img, mode="none")
    np.testing.assert_array_equal(out, img)
    assert out is not img and out.dtype == np.float32


def test_normalize_minmax_per_channel() -> None:
    img = _image(13)
    out = normalize(img, mode="minmax")
    for c in range(2):
        x = img[c].astype(np.float64)
        np.testing.assert_allclose(out[c], (x - x.min()) / (x.max() - x.min()), atol=1e-6)


def test_normalize_percentile_matches_numpy() -> None:
    img = _image(14)
    out = normalize(img, mode="percentile", low=2.0, high=98.0)
    for c in range(2):
        x = img[c].astype(np.float64)
        lo, hi = np.percentile(x, [2.0, 98.0])
        np.testing.assert_allclose(out[c], np.clip((x - lo) / (hi - lo), 0, 1), atol=1e-5)
    unclipped = normalize(img, mode="percentile", low=2.0, high=98.0, clip=False)
    assert unclipped.min() < 0.0 and unclipped.max() > 1.0


def test_normalize_zscore() -> None:
    img = _image(15)
    out = normalize(img, mode="zscore")
    for c in range(2):
        x = img[c].astype(np.float64)
        np.testing.assert_allclose(out[c], (x - x.mean()) / x.std(), atol=1e-5)
        assert abs(float(out[c].mean())) < 1e-5 and abs(float(out[c].std()) - 1.0) < 1e-5


def test_normalize_with_reference_uses_reference_statistics() -> None:
    img = _image(16)
    tile = img[:, 5:15, 10:30]
    whole = normalize(img, mode="zscore")
    tiled = normalize(tile, mode="zscore", reference=img)
    np.testing.assert_allclose(tiled, whole[:, 5:15, 10:30], atol=1e-6)
    with pytest.raises(ValueError, match="reference must be"):
        normalize(img, mode="minmax", reference=img[:1])


def test_normalize_constant_channel_is_shifted_not_nan() -> None:
    img = np.full((1, 4, 4), 3.0, np.float32)
    for mode in ("minmax", "percentile", "zscore"):
        out = normalize(img, mode=mode)
        np.testing.assert_array_equal(out, np.zeros_like(img))


def test_normalize_rejects_bad_arguments() -> None:
    img = _image(17)
    with pytest.raises(ValueError, match="mode must be one of"):
        normalize(img, mode="l2")
    for low, high in [(50.0, 50.0), (-1.0, 50.0), (10.0, 101.0)]:
        with pytest.raises(ValueError, match="0 <= low < high <= 100"):
            normalize(img, mode="percentile", low=low, high=high)
    with pytest.raises(ValueError, match="must be \\(C, H, W\\)"):
        normalize(img[0], mode="minmax")
    assert set(NORMALIZE_MODES) == {"none", "minmax", "percentile", "zscore"}


# ---------------------------------------------------------------------------------------------
# overview


def test_overview_integer_factor_equals_block_mean() -> None:
    img = _rng(18).random((3, 64, 96), dtype=np.float32)
    out = overview(img, max_side=24)  # factor 4 exactly
    assert out.shape == (3, 16, 24) and out.dtype == np.float32
    block_mean = img.astype(np.float64).reshape(3, 16, 4, 24, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(out, block_mean, atol=1e-6)


def test_overview_non_integer_factor_preserves_mean_and_aspect() -> None:
    img = _rng(19).random((1, 1000, 700), dtype=np.float32)
    out = overview(img, max_side=300)
    assert out.shape == (1, 300, 210)
    assert abs(float(out.mean()) - float(img.mean())) < 1e-3
    assert out.min() >= img.min() - 1e-6 and out.max() <= img.max() + 1e-6


def test_overview_small_image_unchanged_and_thin_images_keep_one_pixel() -> None:
    img = _rng(20).random((2, 10, 20), dtype=np.float32)
    assert overview(img, max_side=20) is img
    as_float = overview(img.astype(np.float64), max_side=64)
    assert as_float.dtype == np.float32
    thin = _rng(21).random((1, 3, 5000), dtype=np.float32)
    out = overview(thin, max_side=100)
    assert out.shape == (1, 1, 100)


@settings(max_examples=50, deadline=None)
@given(
    h=st.integers(1, 120),
    w=st.integers(1, 120),
    max_side=st.integers(1, 64),
)
def test_overview_bounds_property(h: int, w: int, max_side: int) -> None:
    img = np.random.default_rng(h * 131 + w).random((1, h, w), dtype=np.float32)
    out = overview(img, max_side=max_side)
    assert max(out.shape[1:]) <= max(max_side, 1) or max(h, w) <= max_side
    assert min(out.shape[1:]) >= 1
    assert out.min() >= img.min() - 1e-6 and out.max() <= img.max() + 1e-6


def test_overview_rejects_bad_arguments() -> None:
    img = np.zeros((1, 4, 4), np.float32)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="max_side must be a positive int"):
            overview(img, max_side=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be \\(C, H, W\\)"):
        overview(np.zeros((4, 4), np.float32))
