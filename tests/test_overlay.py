"""segflow.overlay: colours at known pixels, contours on borders, PNG round trips, thumbnails."""

from __future__ import annotations

import base64
import io

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from scipy import ndimage as ndi

from segflow.overlay import (
    FN_COLOUR,
    FP_COLOUR,
    IGNORE_COLOUR,
    PRED_CONTOUR_COLOUR,
    PRED_TINT_COLOUR,
    TP_COLOUR,
    TRUE_CONTOUR_COLOUR,
    draw_overlay,
    thumbnail,
    to_data_uri,
    to_png,
    to_uint8_rgb,
)

GREY = 100


def _blend(base: int, colour: tuple[int, int, int], alpha: float) -> np.ndarray:
    return np.rint(base * (1 - alpha) + np.asarray(colour, dtype=float) * alpha).astype(np.uint8)


def _inner_border(mask: np.ndarray) -> np.ndarray:
    """Object pixels with a 4-neighbour outside the object (independent of skimage)."""
    return mask & ~ndi.binary_erosion(mask, structure=ndi.generate_binary_structure(2, 1))


@pytest.fixture
def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey image; truth square rows/cols 5..14; prediction the same square shifted 6 columns."""
    image = np.full((24, 30), GREY, dtype=np.uint8)
    true = np.zeros(image.shape, dtype=np.int32)
    true[5:15, 5:15] = 3
    pred = np.zeros(image.shape, dtype=np.int32)
    pred[5:15, 11:21] = 8
    return image, pred, true


def test_colours_are_distinct() -> None:
    colours = {TP_COLOUR, FP_COLOUR, FN_COLOUR, PRED_CONTOUR_COLOUR, TRUE_CONTOUR_COLOUR}
    assert len(colours) == 5


def test_fp_fn_tp_pixels_have_their_colours(scene: tuple[np.ndarray, ...]) -> None:
    image, pred, true = scene
    out = draw_overlay(image, pred, true)
    assert out.shape == (24, 30, 3) and out.dtype == np.uint8
    fp_pixel, fn_pixel, tp_pixel, bg_pixel = (10, 17), (10, 7), (10, 12), (20, 25)
    assert pred[fp_pixel] and not true[fp_pixel]
    assert true[fn_pixel] and not pred[fn_pixel]
    np.testing.assert_array_equal(out[fp_pixel], _blend(GREY, FP_COLOUR, 0.5))
    np.testing.assert_array_equal(out[fn_pixel], _blend(GREY, FN_COLOUR, 0.5))
    np.testing.assert_array_equal(out[tp_pixel], _blend(GREY, TP_COLOUR, 0.25))
    np.testing.assert_array_equal(out[bg_pixel], [GREY, GREY, GREY])
    r, g, b = (int(v) for v in out[fp_pixel])
    assert r > g + 60 and r > b + 60  # reads as red
    r, g, b = (int(v) for v in out[fn_pixel])
    assert b > r + 60 and b > g + 30  # reads as blue
    # the true-positive tint is lighter than the error tints
    tp_shift = np.abs(out[tp_pixel].astype(int) - GREY).sum()
    fp_shift = np.abs(out[fp_pixel].astype(int) - GREY).sum()
    assert 0 < tp_shift < fp_shift


def test_ignored_truth_is_grey_never_an_error(scene: tuple[np.ndarray, ...]) -> None:
    image, pred, true = scene
    true = true.copy()
    true[:, 17:] = -1  # IGNORE: the prediction's right part and the background there
    out = draw_overlay(image, pred, true)
    was_fp, ignored_bg = (10, 18), (20, 25)
    assert pred[was_fp] and true[was_fp] < 0
    np.testing.assert_array_equal(out[was_fp], _blend(GREY, IGNORE_COLOUR, 0.5))
    np.testing.assert_array_equal(out[ignored_bg], _blend(GREY, IGNORE_COLOUR, 0.5))
    np.testing.assert_array_equal(out[10, 16], _blend(GREY, FP_COLOUR, 0.5))  # still an error
    assert IGNORE_COLOUR not in {TP_COLOUR, FP_COLOUR, FN_COLOUR}


def test_contours_lie_on_object_borders(scene: tuple[np.ndarray, ...]) -> None:
    image, pred, true = scene
    out = draw_overlay(image, pred, true)
    pred_border = _inner_border(pred != 0)
    true_border = _inner_border(true != 0)
    assert pred_border.sum() == 36 and true_border.sum() == 36  # 10x10 squares
    assert (out[pred_border] == PRED_CONTOUR_COLOUR).all()  # predicted contours are on top
    assert (out[true_border & ~pred_border] == TRUE_CONTOUR_COLOUR).all()
    # no contour colour anywhere off the borders
    off = ~(pred_border | true_border)
    assert not (out[off] == PRED_CONTOUR_COLOUR).all(axis=1).any()
    assert not (out[off] == TRUE_CONTOUR_COLOUR).all(axis=1).any()


def test_touching_instances_are_separated_by_contours() -> None:
    image = np.zeros((12, 16), dtype=np.uint8)
    labels = np.zeros(image.shape, dtype=np.int32)
    labels[2:10, 2:8] = 1
    labels[2:10, 8:14] = 2  # touches object 1 along columns 7 | 8
    out_labels = draw_overlay(image, labels, labels)
    out_mask = draw_overlay(image, labels > 0, labels > 0)
    is_contour = (out_labels == PRED_CONTOUR_COLOUR).all(axis=2)
    expected = _inner_border(labels == 1) | _inner_border(labels == 2)
    np.testing.assert_array_equal(is_contour, expected)
    assert is_contour[5, 7] and is_contour[5, 8]  # the shared border is drawn
    # a bool mask is one blob: no contour through the middle
    assert not (out_mask[5, 7] == PRED_CONTOUR_COLOUR).all()
    np.testing.assert_array_equal(
        (out_mask == PRED_CONTOUR_COLOUR).all(axis=2), _inner_border(labels > 0)
    )


def test_without_truth_the_prediction_is_tinted() -> None:
    image = np.full((10, 10), GREY, dtype=np.uint8)
    pred = np.zeros((10, 10), dtype=bool)
    pred[2:8, 2:8] = True
    out = draw_overlay(image, pred)
    np.testing.assert_array_equal(out[5, 5], _blend(GREY, PRED_TINT_COLOUR, 0.25))
    np.testing.assert_array_equal(out[2, 2], PRED_CONTOUR_COLOUR)
    np.testing.assert_array_equal(out[0, 0], [GREY, GREY, GREY])
    assert not (out == FP_COLOUR).all(axis=2).any()


def test_alphas_are_options_and_checked(scene: tuple[np.ndarray, ...]) -> None:
    image, pred, true = scene
    out = draw_overlay(image, pred, true, tint_alpha=0.0, error_alpha=1.0)
    np.testing.assert_array_equal(out[10, 12], [GREY, GREY, GREY])
    np.testing.assert_array_equal(out[10, 17], FP_COLOUR)
    with pytest.raises(ValueError, match=r"error_alpha must be in \[0, 1\], got 1.5"):
        draw_overlay(image, pred, true, error_alpha=1.5)


def test_draw_overlay_rejects_mismatched_input(scene: tuple[np.ndarray, ...]) -> None:
    image, pred, true = scene
    with pytest.raises(ValueError, match=r"pred must have the image's shape \(24, 30\)"):
        draw_overlay(image, pred[:-1], true)
    with pytest.raises(ValueError, match="float64"):
        draw_overlay(image, pred, true.astype(float))
    with pytest.raises(ValueError, match="got shape"):
        draw_overlay(np.zeros((24, 30, 5)), pred, true)


# image normalisation ------------------------------------------------------------------------


def test_to_uint8_rgb_normalises_each_kind() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8_rgb(rgb), rgb)
    rgba = np.concatenate([rgb, np.full((5, 6, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_uint8_rgb(rgba), rgb)
    grey = rgb[..., 0]
    np.testing.assert_array_equal(to_uint8_rgb(grey), np.stack([grey] * 3, axis=2))
    np.testing.assert_array_equal(to_uint8_rgb(grey[..., None]), np.stack([grey] * 3, axis=2))

    u16 = np.array([[1000, 2000], [3000, 1000]], dtype=np.uint16)  # stretched min..max
    np.testing.assert_array_equal(to_uint8_rgb(u16)[..., 0], [[0, 128], [255, 0]])
    unit = np.array([[0.0, 0.5], [1.0, np.nan]], dtype=np.float32)  # [0, 1] floats: x 255
    np.testing.assert_array_equal(to_uint8_rgb(unit)[..., 1], [[0, 128], [255, 0]])
    wide = np.array([[-1.0, 1.0], [3.0, np.inf]])
    np.testing.assert_array_equal(to_uint8_rgb(wide)[..., 2], [[0, 128], [255, 0]])
    np.testing.assert_array_equal(to_uint8_rgb(np.eye(2, dtype=bool))[..., 0], [[255, 0], [0, 255]])
    assert not to_uint8_rgb(np.full((3, 3), 5, dtype=np.int32)).any()


def test_overlay_of_16_bit_rgb_image_keeps_shape() -> None:
    image = np.random.default_rng(1).integers(0, 65535, size=(9, 11, 3), dtype=np.uint16)
    out = draw_overlay(image, np.zeros((9, 11), dtype=np.uint16))
    assert out.shape == (9, 11, 3) and out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255  # stretched, nothing drawn


# PNG, thumbnail, data URI -------------------------------------------------------------------


def _imdecode(data: bytes) -> np.ndarray:
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded is not None, "OpenCV could not decode the PNG"
    return np.asarray(decoded)


def _decode_rgb(data: bytes) -> np.ndarray:
    bgr = _imdecode(data)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else bgr


def test_png_round_trip_via_opencv_and_pillow(scene: tuple[np.ndarray, ...]) -> None:
    image, pred, true = scene
    out = draw_overlay(image, pred, true)
    data = to_png(out)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(_decode_rgb(data), out)
    pil = Image.open(io.BytesIO(data))
    assert pil.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(pil), out)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([(), (3,), (4,)]).flatmap(
        lambda ch: arrays(
            st.sampled_from([np.uint8, np.uint16]),
            st.tuples(st.integers(1, 12), st.integers(1, 12)).map(lambda hw: hw + ch),
        )
    )
)
def test_png_round_trip_property(img: np.ndarray) -> None:
    decoded = _imdecode(to_png(img))
    if img.ndim == 3:
        code = cv2.COLOR_BGR2RGB if img.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
        decoded = cv2.cvtColor(decoded, code)
    assert decoded.dtype == img.dtype
    np.testing.assert_array_equal(decoded, img)


def test_to_png_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8 or uint16, got float32"):
        to_png(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"got shape \(2, 2, 2\)"):
        to_png(np.zeros((2, 2, 2), np.uint8))


@pytest.mark.parametrize(
    ("shape", "max_side", "expected"),
    [
        ((1000, 500, 3), 128, (128, 64, 3)),
        ((300, 900, 3), 128, (43, 128, 3)),
        ((256, 256), 64, (64, 64)),
        ((500, 2, 3), 100, (100, 1, 3)),
        ((40, 30, 3), 128, (40, 30, 3)),  # never enlarged
        ((50, 50, 1), 10, (10, 10, 1)),
    ],
)
def test_thumbnail_size(shape: tuple[int, ...], max_side: int, expected: tuple[int, ...]) -> None:
    img = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    small = thumbnail(img, max_side=max_side)
    assert small.shape == expected and small.dtype == np.uint8
    assert max(small.shape[:2]) == min(max_side, max(shape[:2]))


def test_thumbnail_averages_areas() -> None:
    img = np.random.default_rng(2).integers(0, 256, size=(256, 192, 3), dtype=np.uint8)
    small = thumbnail(img, max_side=64)  # exact 4x reduction
    block_mean = img.reshape(64, 4, 48, 4, 3).mean(axis=(1, 3))
    assert np.abs(small.astype(float) - block_mean).max() <= 0.5 + 1e-9
    copy = thumbnail(small, max_side=64)
    np.testing.assert_array_equal(copy, small)
    assert copy is not small
    with pytest.raises(ValueError, match="max_side must be an int >= 1, got 0"):
        thumbnail(img, max_side=0)


def test_data_uri_decodes_to_the_image(scene: tuple[np.ndarray, ...]) -> None:
    image, pred, true = scene
    out = thumbnail(draw_overlay(image, pred, true), max_side=16)
    uri = to_data_uri(out)
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    data = base64.b64decode(uri[len(prefix) :], validate=True)
    assert data == to_png(out)
    np.testing.assert_array_equal(_decode_rgb(data), out)
