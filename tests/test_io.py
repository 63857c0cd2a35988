"""segflow.io: every format round-trips, EXIF is applied, bad files raise ImageReadError.

Oracles: files are written by Pillow, OpenCV or tifffile (never by segflow) and compared with the
array that was written, or with Pillow's own decode (``ImageOps.exif_transpose`` for orientation).
"""

from __future__ import annotations

import io
import pickle
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps, features

from segflow.io import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    TiffWindowReader,
    image_shape,
    read_header,
    read_image,
    read_labels,
    read_window,
    sha256_bytes,
)

RNG_SEED = 20261125


def _rng(salt: int = 0) -> np.random.Generator:
    return np.random.default_rng(RNG_SEED + salt)


def _smooth(shape: tuple[int, ...], dtype: type, salt: int = 0) -> np.ndarray:
    """A picture-like array (gradients + noise) of ``shape`` and integer ``dtype``."""
    rng = _rng(salt)
    top = np.iinfo(dtype).max
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    base = (yy * 3 + xx * 5) % (top + 1)
    if len(shape) == 3:
        base = np.stack([(base + 97 * c) % (top + 1) for c in range(shape[2])], axis=-1)
    noise = rng.integers(0, min(top, 4096), size=shape)
    return ((base + noise) % (top + 1)).astype(dtype)


def _cv2_write(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB(A)/grey array with OpenCV (which wants BGR order)."""
    arr = rgb
    if rgb.ndim == 3 and rgb.shape[2] == 3:
        arr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif rgb.ndim == 3 and rgb.shape[2] == 4:
        arr = cv2.cvtColor(rgb, cv2.COLOR_RGBA2BGRA)
    assert cv2.imwrite(str(path), arr)


def _pil_bytes(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _pillow_array(path: Path, mode: str | None = None) -> np.ndarray:
    """Pillow's decode of ``path`` (the oracle), optionally converted to ``mode``."""
    with Image.open(path) as im:
        return np.array(im.convert(mode) if mode else im)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def _bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny valid-looking PNG (IHDR with correct CRC, one small IDAT, IEND) claiming WxH."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------------------
# PNG


PNG_CASES = [
    ("grey8", (37, 53), np.uint8),
    ("grey16", (37, 53), np.uint16),
    ("rgb8", (37, 53, 3), np.uint8),
    ("rgb16", (37, 53, 3), np.uint16),
    ("rgba8", (37, 53, 4), np.uint8),
    ("rgba16", (37, 53, 4), np.uint16),
]


@pytest.mark.parametrize(("kind", "shape", "dtype"), PNG_CASES, ids=[c[0] for c in PNG_CASES])
def test_png_roundtrip_opencv_writer(tmp_path: Path, kind: str, shape: tuple, dtype: type) -> None:
    data = _smooth(shape, dtype, salt=len(kind))
    path = tmp_path / f"{kind}.png"
    _cv2_write(path, data)
    out = read_image(path)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, data)  # RGB order, alpha kept, full precision


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16"])
def test_png_roundtrip_pillow_writer(tmp_path: Path, mode: str) -> None:
    shape = {"L": (20, 31), "RGB": (20, 31, 3), "RGBA": (20, 31, 4), "I;16": (20, 31)}[mode]
    dtype = np.uint16 if mode == "I;16" else np.uint8
    data = _smooth(shape, dtype, salt=3)
    path = tmp_path / "p.png"
    im = Image.fromarray(data)
    assert im.mode == mode
    im.save(path)
    out = read_image(path)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, data)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 24),
    w=st.integers(1, 24),
    channels=st.sampled_from([1, 3, 4]),
    sixteen=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_png_roundtrip_property(h: int, w: int, channels: int, sixteen: bool, seed: int) -> None:
    dtype = np.uint16 if sixteen else np.uint8
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    data = rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    bgr = data
    if channels == 3:
        bgr = cv2.cvtColor(data, cv2.COLOR_RGB2BGR)
    elif channels == 4:
        bgr = cv2.cvtColor(data, cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", bgr)
    assert ok
    out = read_image(buf.tobytes(), name="mem.png")
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, data)


def test_png_palette_image_gives_colours_and_labels_give_indices(tmp_path: Path) -> None:
    rng = _rng(1)
    indices = rng.integers(0, 6, size=(19, 23)).astype(np.uint8)
    indices[0, :3] = 255  # VOC-style "ignore"
    palette = rng.integers(0, 256, size=256 * 3).astype(np.uint8).tolist()
    im = Image.fromarray(indices, "P")
    im.putpalette(palette)
    path = tmp_path / "palette.png"
    im.save(path)
    rgb = read_image(path)
    np.testing.assert_array_equal(rgb, _pillow_array(path, "RGB"))
    labels = read_labels(path)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, indices.astype(np.int32))


def test_png_palette_with_transparency_gives_rgba(tmp_path: Path) -> None:
    indices = _rng(2).integers(0, 4, size=(9, 11)).astype(np.uint8)
    im = Image.fromarray(indices, "P")
    im.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120])
    path = tmp_path / "trns.png"
    im.save(path, transparency=2)
    out = read_image(path)
    assert out.shape == (9, 11, 4)
    np.testing.assert_array_equal(out, _pillow_array(path, "RGBA"))
    np.testing.assert_array_equal(read_labels(path), indices)


def test_png_grey_alpha_becomes_rgba(tmp_path: Path) -> None:
    la = _smooth((12, 14, 2), np.uint8, salt=4)
    path = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(path)
    out = read_image(path)
    assert out.shape == (12, 14, 4)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], la[..., 0])
    np.testing.assert_array_equal(out[..., 3], la[..., 1])


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_png_low_bit_depth(tmp_path: Path, bits: int) -> None:
    raw = _rng(bits).integers(0, 2**bits, size=(10, 13)).astype(np.uint8)
    path = tmp_path / f"b{bits}.png"
    if bits == 1:
        Image.fromarray(raw.astype(bool)).save(path)
    else:
        Image.fromarray(raw, "L").save(path, bits=bits)
    assert Path(path).read_bytes()[24] == bits  # the file really is low bit depth
    # display: scaled to 0..255 as every viewer (and Pillow's "L" conversion) shows it
    np.testing.assert_array_equal(read_image(path), _pillow_array(path, "L"))
    # labels: the raw stored values
    np.testing.assert_array_equal(read_labels(path), raw.astype(np.int32))


# ---------------------------------------------------------------------------------------------
# JPEG and EXIF orientation


def _pillow_jpeg_decode(data: bytes) -> np.ndarray:
    return np.array(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_matches_pillow_decode(mode: str) -> None:
    shape = (40, 56) if mode == "L" else (40, 56, 3)
    data = _pil_bytes(Image.fromarray(_smooth(shape, np.uint8, salt=5), mode), "JPEG", quality=90)
    out = read_image(data, name="x.jpg")
    ref = np.array(Image.open(io.BytesIO(data)))
    assert out.shape == ref.shape and out.dtype == np.uint8
    # same libjpeg-turbo IDCT in both; allow one grey level for a differently built decoder
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def test_jpeg_quality_100_is_close_to_the_original() -> None:
    grey = _smooth((32, 32), np.uint8, salt=6) // 4 + 64  # smooth-ish, compresses well
    data = _pil_bytes(Image.fromarray(grey), "JPEG", quality=100)
    out = read_image(data)
    assert np.abs(out.astype(int) - grey.astype(int)).mean() < 2.0


def test_jpeg_cmyk_is_converted_to_rgb() -> None:
    cmyk = _smooth((16, 20, 4), np.uint8, salt=7)
    data = _pil_bytes(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95)
    out = read_image(data)
    assert out.shape == (16, 20, 3)
    np.testing.assert_array_equal(out, np.array(Image.open(io.BytesIO(data)).convert("RGB")))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_applied(orientation: int, fmt: str) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("this Pillow build has no WebP support")
    # asymmetric, non-square content so every flip/rotation is distinguishable
    rgb = np.zeros((24, 40, 3), np.uint8)
    rgb[:8, :16] = (250, 10, 10)
    rgb[16:, 30:] = (10, 250, 10)
    rgb[:, 20] = (10, 10, 250)
    exif = Image.Exif()
    exif[0x0112] = orientation
    kwargs: dict[str, object] = {"exif": exif.tobytes()}
    if fmt == "JPEG":
        kwargs["quality"] = 95
    if fmt == "WEBP":
        kwargs["lossless"] = True
    data = _pil_bytes(Image.fromarray(rgb), fmt, **kwargs)
    out = read_image(data, name=f"o{orientation}")
    ref = _pillow_jpeg_decode(data)  # Pillow's own exif_transpose is the oracle
    assert out.shape == ref.shape
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    expected_hw = (40, 24) if orientation >= 5 else (24, 40)
    assert out.shape[:2] == expected_hw
    assert image_shape(data) == expected_hw
    assert read_header(data).orientation == orientation


def test_jpeg_orientation_applies_to_labels() -> None:
    grey = np.zeros((6, 10), np.uint8)
    grey[:, :3] = 200
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _pil_bytes(Image.fromarray(grey), "PNG", exif=exif.tobytes())
    labels = read_labels(data)
    np.testing.assert_array_equal(labels, np.rot90(grey, -1).astype(np.int32))


# ---------------------------------------------------------------------------------------------
# TIFF


TIFF_CASES = {
    "grey8": (_smooth((33, 47), np.uint8), {}),
    "grey16": (_smooth((33, 47), np.uint16, 1), {}),
    "rgb8": (_smooth((33, 47, 3), np.uint8, 2), {"photometric": "rgb"}),
    "rgb16_zlib": (
        _smooth((33, 47, 3), np.uint16, 3),
        {"photometric": "rgb", "compression": "zlib"},
    ),
    "rgba8": (
        _smooth((33, 47, 4), np.uint8, 4),
        {"photometric": "rgb", "extrasamples": ["unassalpha"]},
    ),
    "tiled_grey8": (_smooth((70, 90), np.uint8, 5), {"tile": (32, 48), "compression": "zlib"}),
    "float32": (_rng(6).random((33, 47), dtype=np.float32) * 1000, {}),
}


@pytest.mark.parametrize("kind", list(TIFF_CASES))
def test_tiff_roundtrip(tmp_path: Path, kind: str) -> None:
    data, kwargs = TIFF_CASES[kind]
    path = tmp_path / f"{kind}.tif"
    tifffile.imwrite(path, data, **kwargs)
    out = read_image(path)
    assert out.dtype == data.dtype
    np.testing.assert_array_equal(out, data)
    # the same from bytes
    np.testing.assert_array_equal(read_image(path.read_bytes(), name=kind), data)


def test_tiff_float64_and_int16_become_float32(tmp_path: Path) -> None:
    f64 = _rng(7).normal(size=(9, 8))
    i16 = _rng(8).integers(-3000, 3000, size=(9, 8)).astype(np.int16)
    tifffile.imwrite(tmp_path / "f64.tif", f64)
    tifffile.imwrite(tmp_path / "i16.tif", i16)
    out64 = read_image(tmp_path / "f64.tif")
    out16 = read_image(tmp_path / "i16.tif")
    assert out64.dtype == np.float32 and out16.dtype == np.float32
    np.testing.assert_array_equal(out64, f64.astype(np.float32))
    np.testing.assert_array_equal(out16, i16.astype(np.float32))


def test_tiff_planar_separate_is_returned_channels_last(tmp_path: Path) -> None:
    rgb = _smooth((25, 30, 3), np.uint8, 9)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, rgb.transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(path), rgb)


def test_tiff_multipage_reads_first_page(tmp_path: Path) -> None:
    stack = _smooth((3, 12, 15), np.uint16, 10)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    np.testing.assert_array_equal(read_image(path), stack[0])


def test_tiff_miniswhite_is_inverted_for_display_not_for_labels(tmp_path: Path) -> None:
    raw = _smooth((10, 12), np.uint8, 11)
    path = tmp_path / "white.tif"
    tifffile.imwrite(path, raw, photometric="miniswhite")
    np.testing.assert_array_equal(read_image(path), 255 - raw)
    np.testing.assert_array_equal(read_labels(path), raw.astype(np.int32))


def test_tiff_palette(tmp_path: Path) -> None:
    indices = _rng(12).integers(0, 7, size=(14, 9)).astype(np.uint8)
    im = Image.fromarray(indices, "P")
    im.putpalette(_rng(13).integers(0, 256, 768).astype(np.uint8).tolist())
    path = tmp_path / "palette.tif"
    im.save(path)
    np.testing.assert_array_equal(read_image(path), _pillow_array(path, "RGB"))
    np.testing.assert_array_equal(read_labels(path), indices)


@pytest.mark.parametrize("compression", ["tiff_lzw", "packbits", "tiff_adobe_deflate", "jpeg"])
def test_tiff_written_by_pillow_with_common_compressions(tmp_path: Path, compression: str) -> None:
    rgb = _smooth((30, 44, 3), np.uint8, 35)
    path = tmp_path / f"{compression}.tif"
    Image.fromarray(rgb).save(path, compression=compression)
    out = read_image(path)
    np.testing.assert_array_equal(out, _pillow_array(path, "RGB"))
    if compression != "jpeg":
        np.testing.assert_array_equal(out, rgb)


def test_tiff_bilevel_group4(tmp_path: Path) -> None:
    mask = _smooth((25, 33), np.uint8, 36) > 128
    path = tmp_path / "g4.tif"
    Image.fromarray(mask).save(path, compression="group4")
    np.testing.assert_array_equal(read_image(path), mask.astype(np.uint8) * 255)
    np.testing.assert_array_equal(read_labels(path), mask.astype(np.int32))


def test_tiff_cmyk_is_refused_with_reason(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.tif"
    Image.fromarray(_smooth((8, 8, 3), np.uint8, 37)).convert("CMYK").save(path)
    with pytest.raises(ImageReadError, match="photometric") as info:
        read_image(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------------------------
# BMP, GIF, WebP


@pytest.mark.parametrize("shape", [(21, 17), (21, 17, 3)])
def test_bmp_roundtrip(tmp_path: Path, shape: tuple) -> None:
    data = _smooth(shape, np.uint8, 14)
    path = tmp_path / "x.bmp"
    _cv2_write(path, data)
    np.testing.assert_array_equal(read_image(path), data)
    pil_path = tmp_path / "y.bmp"
    Image.fromarray(data).save(pil_path)
    np.testing.assert_array_equal(read_image(pil_path), data)


def test_gif_first_frame_colours_and_indices(tmp_path: Path) -> None:
    rng = _rng(15)
    frames = [rng.integers(0, 5, size=(13, 16)).astype(np.uint8) for _ in range(3)]
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 200, 200, 200]
    images = []
    for f in frames:
        im = Image.fromarray(f, "P")
        im.putpalette(palette)
        images.append(im)
    path = tmp_path / "anim.gif"
    images[0].save(path, save_all=True, append_images=images[1:], optimize=False)
    lut = np.array(palette, np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(read_image(path), lut[frames[0]])
    np.testing.assert_array_equal(read_labels(path), frames[0])


@pytest.mark.skipif(not features.check("webp"), reason="this Pillow build has no WebP support")
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_webp_lossless_roundtrip(tmp_path: Path, mode: str) -> None:
    data = _smooth((18, 22, len(mode)), np.uint8, 16)
    if mode == "RGBA":
        data[..., 3] = np.where(data[..., 3] > 128, 255, 40)  # avoid alpha-premultiply loss
    path = tmp_path / "x.webp"
    Image.fromarray(data, mode).save(path, lossless=True, exact=True)
    out = read_image(path)
    np.testing.assert_array_equal(out, _pillow_array(path))
    np.testing.assert_array_equal(out, data)


def test_content_decides_format_not_name(tmp_path: Path) -> None:
    rgb = _smooth((8, 9, 3), np.uint8, 17)
    path = tmp_path / "really_a_png.jpg"
    Image.fromarray(rgb).save(path, format="PNG")
    np.testing.assert_array_equal(read_image(path), rgb)
    assert read_header(path).format == "PNG"


# ---------------------------------------------------------------------------------------------
# labels


def test_labels_16bit_preserved(tmp_path: Path) -> None:
    labels = _rng(18).integers(0, 60000, size=(17, 19)).astype(np.uint16)
    path = tmp_path / "labels.png"
    _cv2_write(path, labels)
    out = read_labels(path)
    assert out.dtype == np.int32 and out.max() > 255
    np.testing.assert_array_equal(out, labels.astype(np.int32))


def test_labels_rgb_with_equal_channels_accepted(tmp_path: Path) -> None:
    grey = _rng(19).integers(0, 9, size=(7, 8)).astype(np.uint8)
    path = tmp_path / "rgb_labels.png"
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(path)
    np.testing.assert_array_equal(read_labels(path), grey)


def test_labels_colour_coded_rejected(tmp_path: Path) -> None:
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[1:3, 1:3] = (255, 0, 0)
    path = tmp_path / "colour_labels.png"
    Image.fromarray(rgb).save(path)
    with pytest.raises(ImageReadError, match="channels whose values differ") as info:
        read_labels(path)
    assert str(path) in str(info.value)


def test_labels_from_float_tiff(tmp_path: Path) -> None:
    whole = _rng(20).integers(0, 300, size=(6, 7)).astype(np.float32)
    tifffile.imwrite(tmp_path / "ok.tif", whole)
    np.testing.assert_array_equal(read_labels(tmp_path / "ok.tif"), whole.astype(np.int32))
    tifffile.imwrite(tmp_path / "bad.tif", whole + 0.5)
    with pytest.raises(ImageReadError, match="whole numbers"):
        read_labels(tmp_path / "bad.tif")
    tifffile.imwrite(tmp_path / "big.tif", np.full((2, 2), 2**31 + 5, np.uint32))
    with pytest.raises(ImageReadError, match="int32 range"):
        read_labels(tmp_path / "big.tif")


# ---------------------------------------------------------------------------------------------
# the decompression-bomb guard


def test_guard_refuses_png_bomb_fast_without_allocating(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png())
    assert path.stat().st_size < 200
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    err = info.value
    assert "100000 x 100000" in str(err) and "10000000000 pixels" in str(err)
    assert str(path) in str(err) and err.source == str(path)
    assert "max_pixels" in err.reason
    assert peak < 1 << 20, f"guard allocated {peak} bytes"
    assert elapsed < 1.0  # generous: it is microseconds; decoding would take minutes
    # header-only helpers still report the claimed size
    assert image_shape(path) == (100_000, 100_000)
    with pytest.raises(ImageReadError, match="100000 x 100000"):
        read_labels(path)


def test_guard_refuses_png_with_only_an_ihdr() -> None:
    data = _bomb_png()
    header_only = data[: 8 + 25]  # signature + IHDR, nothing else
    with pytest.raises(ImageReadError, match="decompression-bomb guard"):
        read_image(header_only, name="ihdr_only.png")


def test_guard_refuses_jpeg_bmp_gif_tiff_headers(tmp_path: Path) -> None:
    small = _smooth((16, 16, 3), np.uint8, 21)
    # JPEG: patch the SOF0 height/width
    jpeg = bytearray(_pil_bytes(Image.fromarray(small), "JPEG"))
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    # BMP: patch BITMAPINFOHEADER width/height
    bmp = bytearray(_pil_bytes(Image.fromarray(small), "BMP"))
    bmp[18:26] = struct.pack("<ii", 70000, 70000)
    # GIF: patch the logical screen size and the first frame's size
    gif = bytearray(_pil_bytes(Image.fromarray(small[..., 0], "L"), "GIF"))
    gif[6:10] = struct.pack("<HH", 65000, 65000)
    desc = gif.find(b",")
    gif[desc + 5 : desc + 9] = struct.pack("<HH", 65000, 65000)
    # TIFF: rewrite ImageWidth/ImageLength tags in place
    tif = tmp_path / "big.tif"
    tifffile.imwrite(tif, small[..., 0])
    with tifffile.TiffFile(tif, mode="r+b") as handle:
        handle.pages.first.tags["ImageWidth"].overwrite(50000)
        handle.pages.first.tags["ImageLength"].overwrite(50000)
    cases = {"bomb.jpg": bytes(jpeg), "bomb.bmp": bytes(bmp), "bomb.gif": bytes(gif)}
    for name, data in cases.items():
        start = time.perf_counter()
        with pytest.raises(ImageReadError, match="decompression-bomb guard") as info:
            read_image(data, name=name)
        assert time.perf_counter() - start < 1.0
        assert name in str(info.value)
    with pytest.raises(ImageReadError, match="50000 x 50000") as info:
        read_image(tif)
    assert str(tif) in str(info.value)


def test_guard_boundary_and_none(tmp_path: Path) -> None:
    grey = _smooth((10, 20), np.uint8, 22)
    path = tmp_path / "g.png"
    _cv2_write(path, grey)
    np.testing.assert_array_equal(read_image(path, max_pixels=200), grey)  # exactly 200: allowed
    with pytest.raises(ImageReadError, match="20 x 10"):
        read_image(path, max_pixels=199)
    np.testing.assert_array_equal(read_image(path, max_pixels=None), grey)
    assert DEFAULT_MAX_PIXELS == 1 << 28
    for bad in (0, -5, 1.5, "many", True):
        with pytest.raises(ValueError, match="max_pixels must be a positive int"):
            read_image(path, max_pixels=bad)  # type: ignore[arg-type]


def test_tiled_tiff_window_passes_the_guard(tmp_path: Path) -> None:
    big = _smooth((128, 160), np.uint8, 23)
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, big, tile=(32, 32))
    with pytest.raises(ImageReadError, match="decompression-bomb guard"):
        read_image(path, max_pixels=1000)
    np.testing.assert_array_equal(
        read_window(path, y=40, x=50, h=30, w=20, max_pixels=1000), big[40:70, 50:70]
    )


# ---------------------------------------------------------------------------------------------
# bad files: one exception type, the path and the reason in the message


def _good_png() -> bytes:
    return cv2.imencode(".png", _smooth((64, 64), np.uint8, 24))[1].tobytes()


def _good_jpeg(progressive: bool = False) -> bytes:
    rgb = _rng(25).integers(0, 256, size=(64, 64, 3)).astype(np.uint8)
    return _pil_bytes(Image.fromarray(rgb), "JPEG", quality=90, progressive=progressive)


def _good_tiff(**kwargs: object) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, _rng(26).integers(0, 256, size=(64, 64)).astype(np.uint8), **kwargs)
    return buf.getvalue()


def _corrupt_idat(data: bytes) -> bytes:
    pos = data.find(b"IDAT") + 20
    return data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1 :]


def _webp() -> bytes:
    return _pil_bytes(
        Image.fromarray(_rng(27).integers(0, 256, (40, 40, 3)).astype(np.uint8)), "WEBP"
    )


BAD_FILES = {
    "zero_bytes.png": (lambda: b"", "empty file"),
    "truncated_half.png": (lambda: _good_png()[: len(_good_png()) // 2], "truncated|corrupt"),
    "truncated_no_iend.png": (lambda: _good_png()[:-12], "truncated PNG"),
    "corrupt_idat.png": (lambda: _corrupt_idat(_good_png()), "corrupt"),
    "header_only.png": (lambda: _good_png()[:40], "corrupt|truncated"),
    "truncated_half.jpg": (lambda: _good_jpeg()[: len(_good_jpeg()) // 2], "truncated JPEG"),
    "truncated_no_eoi.jpg": (lambda: _good_jpeg()[:-2], "truncated JPEG"),
    "truncated_progressive.jpg": (
        lambda: _good_jpeg(True)[: len(_good_jpeg(True)) * 3 // 4],
        "truncated JPEG",
    ),
    "jpeg_header_only.jpg": (lambda: _good_jpeg()[:300], "truncated JPEG|corrupt"),
    "text.png": (lambda: b"this is not an image, just some text\n" * 3, "looks like text"),
    "random.png": (lambda: bytes(_rng(28).integers(0, 256, 512, dtype=np.uint8)), "unrecognised"),
    "nulls.png": (lambda: b"\x00" * 100, "unrecognised"),
    "unsupported.ico": (lambda: b"\x00\x00\x01\x00" + b"\x01" * 60, "unrecognised"),
    "corrupt.tif": (lambda: b"II*\x00" + b"\xff\xff\xff\x7f" + b"\x00" * 40, "corrupt TIFF"),
    "truncated.tif": (lambda: _good_tiff(compression="zlib")[:200], "TIFF"),
    "truncated_uncompressed.tif": (lambda: _good_tiff()[:-10], "TIFF"),
    "truncated_tiled.tif": (
        lambda: (lambda d: d[: len(d) - 2000])(_good_tiff(tile=(16, 16), compression="zlib")),
        "TIFF",
    ),
    "truncated.bmp": (
        lambda: _pil_bytes(Image.fromarray(_smooth((40, 40, 3), np.uint8, 29)), "BMP")[:900],
        "truncated|corrupt",
    ),
    "truncated.gif": (
        lambda: _pil_bytes(Image.fromarray(_smooth((40, 40), np.uint8, 30)), "GIF")[:300],
        "truncated|corrupt",
    ),
}


@pytest.mark.parametrize("filename", list(BAD_FILES))
def test_bad_files_raise_image_read_error(tmp_path: Path, filename: str) -> None:
    make, reason_pattern = BAD_FILES[filename]
    data = make()
    path = tmp_path / filename
    path.write_bytes(data)
    for reader in (read_image, read_labels):
        with pytest.raises(ImageReadError, match=reason_pattern) as info:
            reader(path)
        err = info.value
        assert isinstance(err, ValueError)
        assert err.source == str(path)
        assert str(path) in str(err) and err.reason in str(err) and err.reason
    # bytes with a name: the name is in the message
    with pytest.raises(ImageReadError) as info:
        read_image(data, name=f"s3://bucket/{filename}")
    assert f"s3://bucket/{filename}" in str(info.value)


@pytest.mark.skipif(not features.check("webp"), reason="this Pillow build has no WebP support")
def test_truncated_webp(tmp_path: Path) -> None:
    data = _webp()
    path = tmp_path / "t.webp"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_truncated_jpeg_detected_even_when_pillow_loads_truncated_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = _good_jpeg()
    for cut in (len(data) // 3, len(data) - 2):
        with pytest.raises(ImageReadError, match="truncated JPEG"):
            read_image(data[:cut], name="cut.jpg")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageReadError, match="cannot open file") as info:
        read_image(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(ImageReadError, match="cannot open file"):
        read_image(tmp_path)
    with pytest.raises(ImageReadError):
        image_shape(missing)


def test_header_readers_reject_bad_headers(tmp_path: Path) -> None:
    for name, data in {"empty.png": b"", "text.png": b"hello world"}.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ImageReadError) as info:
            image_shape(path)
        assert str(path) in str(info.value)


def test_source_of_wrong_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="source must be a path"):
        read_image(12345)  # type: ignore[arg-type]


def test_image_read_error_pickles() -> None:
    err = ImageReadError("s3://b/x.png", "truncated PNG: no IEND chunk")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, ImageReadError)
    assert (back.source, back.reason, str(back)) == (err.source, err.reason, str(err))
    assert str(err) == "cannot read image s3://b/x.png: truncated PNG: no IEND chunk"


# ---------------------------------------------------------------------------------------------
# header-only helpers, hashing


def test_image_shape_reads_only_the_header(tmp_path: Path) -> None:
    grey = _smooth((30, 50), np.uint8, 31)
    data = cv2.imencode(".png", grey)[1].tobytes()
    truncated = data[: len(data) // 2]  # pixels missing: read_image must fail, the header is fine
    assert image_shape(truncated) == (30, 50)
    with pytest.raises(ImageReadError):
        read_image(truncated)
    tif = tmp_path / "t.tif"
    tifffile.imwrite(tif, _smooth((40, 64), np.uint8), tile=(16, 16))
    header = read_header(tif)
    assert (header.format, header.height, header.width, header.tiled) == ("TIFF", 40, 64, True)
    assert image_shape(_pil_bytes(Image.fromarray(grey), "BMP")) == (30, 50)


def test_sha256_bytes() -> None:
    import hashlib

    payload = _good_png()
    assert sha256_bytes(payload) == hashlib.sha256(payload).hexdigest()
    assert sha256_bytes(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# ---------------------------------------------------------------------------------------------
# windows of tiled / striped TIFFs


WINDOW_LAYOUTS = {
    "tiled_grey8_zlib": (np.uint8, (), {"tile": (32, 48), "compression": "zlib"}),
    "tiled_rgb8_lzw": (
        np.uint8,
        (3,),
        {"tile": (16, 32), "compression": "lzw", "photometric": "rgb"},
    ),
    "tiled_rgb16": (np.uint16, (3,), {"tile": (16, 16), "photometric": "rgb"}),
    "tiled_rgb_planar": (
        np.uint8,
        (3,),
        {"tile": (32, 32), "photometric": "rgb", "planarconfig": "separate"},
    ),
    "striped_grey16": (np.uint16, (), {"rowsperstrip": 7}),
    "striped_rgb_zlib": (
        np.uint8,
        (3,),
        {"rowsperstrip": 5, "compression": "zlib", "photometric": "rgb"},
    ),
    "float32_tiled": (np.float32, (), {"tile": (16, 32)}),
}


def _window_image(dtype: type, extra: tuple, salt: int) -> np.ndarray:
    shape = (100, 130, *extra)
    if dtype == np.float32:
        return _rng(salt).random(shape, dtype=np.float32)
    return _smooth(shape, dtype, salt)


@pytest.mark.parametrize("layout", list(WINDOW_LAYOUTS))
def test_read_window_equals_slice_of_full_image(tmp_path: Path, layout: str) -> None:
    dtype, extra, kwargs = WINDOW_LAYOUTS[layout]
    full = _window_image(dtype, extra, salt=len(layout))
    path = tmp_path / f"{layout}.tif"
    data = full.transpose(2, 0, 1) if kwargs.get("planarconfig") == "separate" else full
    tifffile.imwrite(path, data, **kwargs)
    np.testing.assert_array_equal(read_image(path), full)  # untiled oracle agrees with the data
    windows = [(0, 0, 100, 130), (0, 0, 1, 1), (99, 129, 1, 1), (31, 47, 2, 2), (10, 20, 57, 91)]
    rng = _rng(32)
    for _ in range(15):
        y, x = int(rng.integers(0, 100)), int(rng.integers(0, 130))
        h, w = int(rng.integers(1, 101 - y)), int(rng.integers(1, 131 - x))
        windows.append((y, x, h, w))
    with TiffWindowReader(path) as reader:
        assert reader.shape == full.shape and reader.dtype == full.dtype
        for y, x, h, w in windows:
            expected = full[y : y + h, x : x + w]
            np.testing.assert_array_equal(reader.read(y=y, x=x, h=h, w=w), expected)
    y, x, h, w = windows[-1]
    np.testing.assert_array_equal(read_window(path, y=y, x=x, h=h, w=w), full[y : y + h, x : x + w])
    np.testing.assert_array_equal(
        read_window(path.read_bytes(), y=y, x=x, h=h, w=w), full[y : y + h, x : x + w]
    )


@settings(max_examples=40, deadline=None)
@given(
    tile=st.sampled_from([16, 32, 48]),
    y=st.integers(0, 79),
    x=st.integers(0, 89),
    h=st.integers(1, 80),
    w=st.integers(1, 90),
)
def test_read_window_property(
    tmp_path_factory: pytest.TempPathFactory, tile: int, y: int, x: int, h: int, w: int
) -> None:
    h, w = min(h, 80 - y), min(w, 90 - x)
    full = _smooth((80, 90), np.uint16, tile)
    path = tmp_path_factory.mktemp("win") / "t.tif"
    tifffile.imwrite(path, full, tile=(tile, tile), compression="zlib")
    np.testing.assert_array_equal(read_window(path, y=y, x=x, h=h, w=w), full[y : y + h, x : x + w])


def test_window_reader_attributes_and_labels(tmp_path: Path) -> None:
    indices = _rng(33).integers(0, 9, size=(64, 80)).astype(np.uint8)
    path = tmp_path / "labels.tif"
    tifffile.imwrite(path, indices, tile=(16, 32))
    with TiffWindowReader(path, labels=True) as reader:
        assert reader.tiled and reader.chunk_shape == (16, 32)
        assert (reader.height, reader.width) == (64, 80)
        assert reader.dtype == np.uint8
        np.testing.assert_array_equal(reader.read(y=5, x=33, h=40, w=20), indices[5:45, 33:53])
    with TiffWindowReader(tmp_path / "labels.tif") as reader:
        assert reader.read(y=0, x=0, h=1, w=1).shape == (1, 1)


def test_read_window_rejects_windows_outside(tmp_path: Path) -> None:
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, _smooth((20, 30), np.uint8), tile=(16, 16))
    for bad in [(-1, 0, 5, 5), (0, 0, 21, 5), (0, 26, 5, 5), (0, 0, 0, 5)]:
        y, x, h, w = bad
        with pytest.raises(ValueError, match="window"):
            read_window(path, y=y, x=x, h=h, w=w)


def test_read_window_on_png_reads_whole_and_slices(tmp_path: Path) -> None:
    rgb = _smooth((30, 40, 3), np.uint8, 34)
    path = tmp_path / "x.png"
    _cv2_write(path, rgb)
    np.testing.assert_array_equal(read_window(path, y=3, x=4, h=10, w=20), rgb[3:13, 4:24])
    with pytest.raises(ImageReadError, match="window reading needs a TIFF"):
        TiffWindowReader(path)


def test_window_reader_corrupt_tile(tmp_path: Path) -> None:
    data = _good_tiff(tile=(16, 16), compression="zlib")
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        offset = int(tif.pages.first.dataoffsets[0])
    broken = data[: offset + 2] + b"\x00" * 20 + data[offset + 22 :]  # garble tile 0's stream
    path = tmp_path / "broken.tif"
    path.write_bytes(broken)
    with TiffWindowReader(path) as reader:
        np.testing.assert_array_equal(  # tiles the window does not touch still read fine
            reader.read(y=16, x=16, h=16, w=16), read_image(data)[16:32, 16:32]
        )
        with pytest.raises(ImageReadError, match="tile/strip 0") as info:
            reader.read(y=0, x=0, h=16, w=16)
    assert str(path) in str(info.value)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: offset + 10])
    with pytest.raises(ImageReadError, match="TIFF") as info:
        read_window(cut, y=0, x=0, h=8, w=8)
    assert str(cut) in str(info.value)


# ---------------------------------------------------------------------------------------------
# real data (skipped when ../shared/data is absent)


def test_real_data_png_grey_and_uint16_labels(shared_data: Path) -> None:
    isbi = sorted((shared_data / "isbi2012_membranes" / "train" / "images").glob("*.png"))[0]
    np.testing.assert_array_equal(read_image(isbi), cv2.imread(str(isbi), cv2.IMREAD_UNCHANGED))
    labels_dir = shared_data / "dsb2018_nuclei" / "labels"
    label_file = sorted(labels_dir.glob("*.png"))[0]
    expected = cv2.imread(str(label_file), cv2.IMREAD_UNCHANGED)
    out = read_labels(label_file)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, expected.astype(np.int32))
    image_file = shared_data / "dsb2018_nuclei" / "images" / label_file.name
    rgb = read_image(image_file)
    np.testing.assert_array_equal(rgb, _pillow_array(image_file))


def test_real_data_voc_palette_labels(shared_data: Path) -> None:
    voc = shared_data / "voc2011_instances" / "data_dataset_voc"
    files = sorted(voc.glob("Segmentation*/*.png"))
    if not files:
        pytest.skip(f"no VOC Segmentation* PNGs under {voc}")
    values: set[int] = set()
    for path in files:
        expected = _pillow_array(path)  # Pillow keeps palette indices for mode "P"
        with Image.open(path) as im:
            assert im.mode == "P"
        out = read_labels(path)
        np.testing.assert_array_equal(out, expected.astype(np.int32))
        values.update(np.unique(out).tolist())
    assert 255 in values  # the VOC "ignore" border survives as an index, not a colour
