"""Reading images the way users have them: one function per question, one exception for every failure.

Contract
--------
* :func:`read_image` returns ``(H, W)`` for single-channel images and ``(H, W, C)`` otherwise, in
  the file's own precision: ``uint8``, ``uint16`` or ``float32`` (nothing else). Channels are in
  **RGB(A) order** (never BGR); alpha is kept (``C == 4``). Grey+alpha is expanded to RGBA, palette
  images are expanded to RGB (RGBA when the palette has transparency), bilevel images become
  ``uint8`` 0/255. Scaling to float is explicit and lives in
  :func:`segflow.preprocess.to_float_chw`.
* The EXIF orientation of JPEG, PNG (``eXIf``) and WebP files is applied, so the array is the
  picture as a viewer shows it. TIFF orientation tags are not applied (tifffile's and the
  scientific imaging convention: the array is the stored raster).
* Content decides the format (magic bytes), never the file name: a JPEG named ``.png`` is read as
  JPEG; a text file named ``.png`` is refused as an unrecognised format.
* Every file that cannot be read raises :class:`ImageReadError` (a ``ValueError``) with the source
  (path, or the ``name`` given for bytes) and the reason: empty file, truncated data, corrupt
  header or pixels, unsupported format or sample layout, and headers claiming more than
  ``max_pixels`` pixels. Invalid *arguments* (a bad window, a bad ``max_pixels``) raise plain
  ``ValueError``.

Decompression-bomb guard
------------------------
The claimed size is read from the header (PNG ``IHDR``, JPEG ``SOF``, BMP/GIF/WebP headers through
Pillow's lazy ``open``, the TIFF page's ``ImageWidth``/``ImageLength``) and compared with
``max_pixels`` *before* any pixel is decoded, so a 100,000 × 100,000 PNG of 60 bytes is refused in
microseconds without allocating. The guard is for images decoded whole: :func:`read_window` on a
TIFF decodes only the tiles/strips a window touches and is not limited by it. Pillow's own global
limit (``PIL.Image.MAX_IMAGE_PIXELS``) is deliberately bypassed by opening files through the format
plugins directly, so ``max_pixels`` is the single knob (changing Pillow's global would be shared
mutable state); only GIF frame extents still pass through Pillow's own check.

Decoders (measured here: 1024² images, one thread, medians; 2-core machine shared with others)
------------------------------------------------------------------------------------------------
* PNG: ``cv2.imdecode``. Quiet machine: 92–138 MP/s vs Pillow 82–132 MP/s for 8-bit grey (the
  pipeline's hot path); under load, interleaved: 65 vs 63 MP/s. OpenCV also keeps 16-bit RGB(A)
  PNG, which Pillow reduces to 8 bit. Pillow (~7 µs, lazy) reads the header for EXIF; segflow's
  own IHDR parse feeds the guard. ``read_image`` costs 1.00–1.02× a bare ``cv2.imdecode``.
  ``IMREAD_UNCHANGED`` makes OpenCV ignore EXIF; segflow applies the orientation itself (numpy
  flips/rotations, checked against ``PIL.ImageOps.exif_transpose`` in the tests).
* JPEG: ``cv2.imdecode``, 1.3–2.2× Pillow for RGB (quiet: 340 vs 152 MP/s), 1.07–1.13× for grey,
  pixel-identical here (both libjpeg-turbo). Truncation is detected independently of the decoder
  (OpenCV 4.x pads a truncated JPEG silently; Pillow does when ``ImageFile.LOAD_TRUNCATED_IMAGES``
  is set): a JPEG with no EOI marker after its last SOS marker is refused. CMYK JPEGs: Pillow.
* BMP, GIF (first frame), WebP: Pillow (with ``LOAD_TRUNCATED_IMAGES`` at its default, False,
  Pillow raises on truncated data).
* TIFF: tifffile with imagecodecs (``uint8``/``uint16``/float, bilevel, grey/RGB/RGBA/palette,
  chunky or planar, tiled or striped; none, deflate, LZW, PackBits, JPEG, LZMA, ... compression).
  The first page is read; a multi-page stack gives its first plane. Other integer sample types
  become ``float32`` holding the same values. CMYK/Lab TIFFs are refused (unsupported).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import struct
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import cv2
import numpy as np
import tifffile
from PIL import Image, ImageFile

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "TIFF_MAGIC",
    "ImageHeader",
    "ImageReadError",
    "TiffWindowReader",
    "image_shape",
    "labels_from_array",
    "read_header",
    "read_image",
    "read_labels",
    "read_window",
    "sha256_bytes",
]

logger = logging.getLogger(__name__)

#: Default largest image (H * W) decoded whole: 2**28 ≈ 268 megapixels (a 16k × 16k image).
DEFAULT_MAX_PIXELS = 1 << 28

#: Formats read_image understands (names as in :attr:`ImageHeader.format`).
FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP")

Source = str | os.PathLike[str] | bytes | bytearray | memoryview

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: First 4 bytes of a TIFF (classic / BigTIFF, little / big endian).
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_JPEG_COMPRESSIONS = frozenset({6, 7, 33007, 34892})
_EXIF_ORIENTATION = 0x0112


class ImageReadError(ValueError):
    """The one exception raised for every image file that cannot be read.

    Attributes
    ----------
    source : str
        The path, or the ``name`` given with bytes (``"<bytes>"`` when none was given).
    reason : str
        Why the file could not be read (e.g. ``"truncated JPEG: no EOI marker after the last
        scan"``, ``"header claims 100000 x 100000 = 10000000000 pixels, more than
        max_pixels=268435456"``).

    The message is ``"cannot read image <source>: <reason>"``. Instances pickle (for process
    pools and Dask workers).
    """

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"cannot read image {source}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.source, self.reason))


class ImageHeader(NamedTuple):
    """What a file's header says, read without decoding pixels.

    ``height``/``width`` are as :func:`read_image` returns them (after EXIF orientation);
    ``tiled`` is True for TIFF pages stored in tiles (readable window by window).
    """

    format: str
    height: int
    width: int
    orientation: int
    tiled: bool


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """Hex sha256 digest of ``data`` (the image identity used by the store)."""
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# sources and format sniffing


def _source_name(source: Source, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>"
    return os.fspath(source)


def _sniff(head: bytes) -> str | None:
    """Format name from the first bytes of a file, or None if unrecognised."""
    if head.startswith(_PNG_SIGNATURE):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] in TIFF_MAGIC:
        return "TIFF"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _describe_unknown(head: bytes) -> str:
    if not head.strip(b"\x00"):
        return "unrecognised image format (file starts with zero bytes)"
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    kind = "looks like text" if printable == len(head) else "unknown signature"
    return (
        f"unrecognised image format ({kind}: first bytes {head[:8]!r}); "
        f"supported formats are {', '.join(FORMATS)}"
    )


class _Loaded(NamedTuple):
    """A source resolved to bytes (or, for TIFF paths, left on disk)."""

    name: str
    format: str
    data: bytes | None  # None only for TIFF files read from disk
    path: str | None


def _load(source: Source, name: str | None, *, tiff_from_disk: bool = True) -> _Loaded:
    """Resolve ``source`` to bytes and a sniffed format; TIFF paths stay on disk (lazy reads)."""
    if not isinstance(source, str | os.PathLike | bytes | bytearray | memoryview):
        raise TypeError(
            f"source must be a path (str or os.PathLike) or bytes, got {type(source).__name__}"
        )
    label = _source_name(source, name)
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        path = None
    elif isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        try:
            with open(path, "rb") as fh:
                head = fh.read(16)
                fmt = _sniff(head)
                if fmt == "TIFF" and tiff_from_disk:
                    return _Loaded(label, fmt, None, path)
                fh.seek(0)
                data = fh.read()
        except OSError as exc:
            raise ImageReadError(label, f"cannot open file: {exc.strerror or exc}") from exc
    if not data:
        raise ImageReadError(label, "empty file (0 bytes)")
    fmt = _sniff(data[:16])
    if fmt is None:
        raise ImageReadError(label, _describe_unknown(data[:16]))
    return _Loaded(label, fmt, data, path)


def _check_max_pixels(max_pixels: int | None) -> None:
    if max_pixels is None:
        return
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int | np.integer):
        raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels}")


def _guard(label: str, height: int, width: int, max_pixels: int | None) -> None:
    if max_pixels is not None and height * width > max_pixels:
        raise ImageReadError(
            label,
            f"header claims {width} x {height} (width x height) = {width * height} pixels, "
            f"more than max_pixels={max_pixels} (decompression-bomb guard; raise max_pixels "
            "to read it, or read it by window if it is a tiled TIFF)",
        )


# --------------------------------------------------------------------------------------------
# Pillow headers (PNG, JPEG, BMP, GIF, WebP)


def _pil_class(fmt: str) -> Callable[..., ImageFile.ImageFile]:
    """The Pillow plugin class for ``fmt``, used directly to bypass Pillow's global pixel limit."""
    if fmt == "PNG":
        from PIL import PngImagePlugin

        return PngImagePlugin.PngImageFile
    if fmt == "JPEG":
        from PIL import JpegImagePlugin

        return JpegImagePlugin.JpegImageFile
    if fmt == "BMP":
        from PIL import BmpImagePlugin

        return BmpImagePlugin.BmpImageFile
    if fmt == "GIF":
        from PIL import GifImagePlugin

        return GifImagePlugin.GifImageFile
    if fmt == "WEBP":
        from PIL import WebPImagePlugin

        return WebPImagePlugin.WebPImageFile
    raise AssertionError(f"no Pillow plugin for {fmt}")  # unreachable: formats are sniffed


def _pil_open(loaded: _Loaded) -> ImageFile.ImageFile:
    """Open the header only (Pillow is lazy); any failure becomes ImageReadError."""
    assert loaded.data is not None  # internal invariant: only TIFF stays on disk
    try:
        return _pil_class(loaded.format)(io.BytesIO(loaded.data))
    except ImportError as exc:
        raise ImageReadError(
            loaded.name, f"{loaded.format} is not supported by this Pillow build ({exc})"
        ) from exc
    except Exception as exc:  # decoders raise SyntaxError, OSError, struct.error, EOFError, ...
        raise ImageReadError(
            loaded.name, f"corrupt {loaded.format} header: {_exc_text(exc)}"
        ) from exc


def _exc_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1..8) from the header's EXIF block, 1 when absent or invalid.

    Reads ``info["exif"]`` only: ``getexif()`` on a PNG without EXIF before IDAT would decode
    the whole image.
    """
    raw = im.info.get("exif")
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        value = int(exif.get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        logger.debug("ignoring unreadable EXIF block", exc_info=True)
        return 1
    return value if 1 <= value <= 8 else 1


def _apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a stored raster ``(H, W[, C])`` into the picture EXIF ``orientation`` describes."""
    if orientation == 1:
        return arr
    if orientation == 2:
        out = arr[:, ::-1]
    elif orientation == 3:
        out = arr[::-1, ::-1]
    elif orientation == 4:
        out = arr[::-1]
    elif orientation == 5:
        out = arr.swapaxes(0, 1)
    elif orientation == 6:
        out = np.rot90(arr, -1)
    elif orientation == 7:
        out = arr[::-1, ::-1].swapaxes(0, 1)
    else:  # 8
        out = np.rot90(arr, 1)
    return np.ascontiguousarray(out)


def _oriented_shape(height: int, width: int, orientation: int) -> tuple[int, int]:
    return (width, height) if orientation >= 5 else (height, width)


# --------------------------------------------------------------------------------------------
# decoding


def _cv2_decode(loaded: _Loaded) -> np.ndarray:
    assert loaded.data is not None
    try:
        arr = cv2.imdecode(np.frombuffer(loaded.data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageReadError(
            loaded.name, f"corrupt {loaded.format} data: {_exc_text(exc)}"
        ) from exc
    if arr is None:
        raise ImageReadError(
            loaded.name,
            f"corrupt or truncated {loaded.format} data (the decoder could not read the pixels)",
        )
    if arr.ndim == 3:
        if arr.shape[2] == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        elif arr.shape[2] == 4:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    return arr


def _check_png_complete(loaded: _Loaded) -> None:
    assert loaded.data is not None
    if loaded.data.rfind(b"IEND") < 0:
        raise ImageReadError(loaded.name, "truncated PNG: no IEND chunk (the file ends early)")


def _check_jpeg_complete(loaded: _Loaded) -> None:
    # Entropy-coded data cannot contain FF D9 or FF DA (0xFF is stuffed with 0x00), so the
    # last SOS marker must be followed by an EOI marker unless the file was cut short.
    assert loaded.data is not None
    if loaded.data.endswith(b"\xff\xd9"):
        return  # the usual case, O(1): the file ends with its EOI marker
    last_sos = loaded.data.rfind(b"\xff\xda")
    if last_sos < 0:
        raise ImageReadError(loaded.name, "truncated JPEG: no scan (SOS marker) in the file")
    if loaded.data.rfind(b"\xff\xd9") < last_sos:
        raise ImageReadError(
            loaded.name, "truncated JPEG: no EOI marker after the last scan (the file ends early)"
        )


def _pil_pixels(loaded: _Loaded, im: ImageFile.ImageFile, *, indices: bool) -> np.ndarray:
    """Decode a Pillow image into segflow's layout; ``indices`` keeps palette indices."""
    try:
        im.load()
        mode = im.mode
        if indices and mode in ("P", "PA"):
            arr = np.array(im.getchannel(0) if mode == "PA" else im)
        elif mode == "1":
            arr = np.array(im.convert("L"))
        elif mode in ("L", "RGB", "RGBA", "F") or mode.startswith("I;16"):
            arr = np.array(im)
        elif mode in ("P", "PA"):
            has_alpha = mode == "PA" or "transparency" in im.info
            arr = np.array(im.convert("RGBA" if has_alpha else "RGB"))
        elif mode in ("LA", "La", "RGBa"):
            arr = np.array(im.convert("RGBA"))
        elif mode == "I":
            arr = np.array(im)
        else:  # CMYK, YCbCr, LAB, HSV, RGBX, ...
            arr = np.array(im.convert("RGB"))
    except Exception as exc:
        raise ImageReadError(
            loaded.name, f"corrupt or truncated {loaded.format} data: {_exc_text(exc)}"
        ) from exc
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2 and arr.dtype.byteorder == ">":
        arr = arr.astype(np.uint16)
    return arr


def _native(arr: np.ndarray) -> np.ndarray:
    """Cast to one of uint8, uint16, float32 (bool -> 0/255 uint8; other ints -> float32)."""
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if arr.dtype.kind in "fiu":
        return arr.astype(np.float32)
    raise ValueError(f"unsupported sample type {arr.dtype}")


def _png_size(loaded: _Loaded) -> tuple[int, int]:
    """``(height, width)`` from the PNG IHDR chunk (validated, CRC checked)."""
    data = loaded.data
    assert data is not None
    if len(data) < 33 or data[8:16] != b"\x00\x00\x00\rIHDR":
        raise ImageReadError(loaded.name, "corrupt PNG header: no IHDR chunk after the signature")
    width, height = struct.unpack(">II", data[16:24])
    (crc,) = struct.unpack(">I", data[29:33])
    if zlib.crc32(data[12:29]) != crc:
        raise ImageReadError(loaded.name, "corrupt PNG header: IHDR checksum mismatch")
    if width == 0 or height == 0:
        raise ImageReadError(loaded.name, f"corrupt PNG header: size {width} x {height}")
    return height, width


# JPEG start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(loaded: _Loaded) -> tuple[int, int] | None:
    """``(height, width)`` from the first JPEG SOF segment, None when none precedes the scan."""
    data = loaded.data
    assert data is not None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None  # not at a marker: malformed; the decoder reports it
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI / SOS: no frame header before the scan
            return None
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF and pos + 9 <= end:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return (height, width) if height and width else None
        pos += 2 + length
    return None


def _decode(loaded: _Loaded, *, max_pixels: int | None, labels: bool) -> np.ndarray:
    """Pixels of a non-TIFF file: guard, decode, orient."""
    # The guard runs on segflow's own header parse first, so a file holding nothing but a
    # header claiming a huge size is refused for its size, not reported as corrupt.
    if loaded.format == "PNG":
        _guard(loaded.name, *_png_size(loaded), max_pixels)
    elif loaded.format == "JPEG":
        size = _jpeg_size(loaded)
        if size is not None:
            _guard(loaded.name, *size, max_pixels)
    with _pil_open(loaded) as im:
        width, height = im.size
        _guard(loaded.name, height, width, max_pixels)
        orientation = _orientation(im)
        if loaded.format == "PNG":
            _check_png_complete(loaded)
            if labels and im.mode in ("P", "PA"):
                arr = _pil_pixels(loaded, im, indices=True)
            else:
                arr = _cv2_decode(loaded)
                if labels:
                    arr = _png_raw_low_bits(loaded, arr)
        elif loaded.format == "JPEG":
            _check_jpeg_complete(loaded)
            arr = (
                _pil_pixels(loaded, im, indices=labels)
                if im.mode not in ("L", "RGB")
                else _cv2_decode(loaded)
            )
        else:
            arr = _pil_pixels(loaded, im, indices=labels)
    if arr.shape[:2] != (height, width):
        raise ImageReadError(
            loaded.name,
            f"decoded size {arr.shape[1]} x {arr.shape[0]} differs from the header's "
            f"{width} x {height}",
        )
    return _apply_orientation(arr, orientation)


def _png_raw_low_bits(loaded: _Loaded, arr: np.ndarray) -> np.ndarray:
    """Undo the 0..255 scaling decoders apply to 1/2/4-bit grey PNGs (labels keep raw values)."""
    assert loaded.data is not None
    bit_depth, colour_type = loaded.data[24], loaded.data[25]
    if colour_type == 0 and bit_depth < 8:
        return arr // np.uint8(255 // (2**bit_depth - 1))
    return arr


# --------------------------------------------------------------------------------------------
# TIFF


_PHOTOMETRIC_SUPPORTED = {0: "MINISWHITE", 1: "MINISBLACK", 2: "RGB", 3: "PALETTE", 6: "YCBCR"}


class TiffWindowReader:
    """Windows of the first page of a TIFF, decoding only the tiles/strips a window touches.

    Parameters
    ----------
    source : path or bytes
        The TIFF file (kept open until :meth:`close`; use as a context manager).
    name : str, optional
        Name used in error messages (defaults to the path).
    labels : bool
        False (default): windows as :func:`read_image` would return them (palette expanded to
        RGB, MINISWHITE inverted, grey+alpha -> RGBA, dtype uint8/uint16/float32).
        True: raw sample values as ``int32``, as :func:`read_labels` (palette indices kept).

    Attributes
    ----------
    height, width : int
        Image size. The decompression-bomb guard does not apply: only windows are decoded.
    shape : tuple
        Shape :func:`read_image` would return: ``(H, W)`` or ``(H, W, C)``.
    dtype : numpy.dtype
        dtype of the windows.
    tiled : bool
        True when the page is stored in tiles (False: strips).
    chunk_shape : tuple[int, int]
        ``(rows, cols)`` of one tile or strip: windows aligned to it decode no pixel twice.

    Raises
    ------
    ImageReadError
        The file is not a readable TIFF, or its page layout is unsupported (volumetric pages,
        CMYK/Lab photometric, compression tifffile cannot decode).
    """

    def __init__(self, source: Source, *, name: str | None = None, labels: bool = False) -> None:
        loaded = _load(source, name)
        if loaded.format != "TIFF":
            raise ImageReadError(
                loaded.name, f"window reading needs a TIFF file, this is {loaded.format}"
            )
        self.name = loaded.name
        self.labels = labels
        self._tif = _open_tiff(loaded)
        try:
            page = _first_page(self._tif, self.name)
            self._page = page
            self.height = int(page.imagelength)
            self.width = int(page.imagewidth)
            self.tiled = bool(page.is_tiled)
            seps, _, _, _, contig = page.shaped
            if self.tiled:
                rows, cols = int(page.tilelength), int(page.tilewidth)
            else:
                rows, cols = min(int(page.rowsperstrip), self.height), self.width
            self.chunk_shape = (rows, cols)
            self._grid = (math.ceil(self.height / rows), math.ceil(self.width / cols))
            expected = seps * self._grid[0] * self._grid[1]
            if len(page.dataoffsets) != expected:
                raise ImageReadError(
                    self.name,
                    f"corrupt TIFF: {len(page.dataoffsets)} tiles/strips, expected {expected}",
                )
            probe = _tiff_finish(
                np.zeros((seps, 1, 1, 1, contig), dtype=page.dtype), page, self.name, labels
            )
            self.dtype = probe.dtype
            self.shape = (self.height, self.width, *probe.shape[2:])
            self._decode = page.decode
        except BaseException:
            self._tif.close()
            raise

    def __enter__(self) -> TiffWindowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        self._tif.close()

    def read(self, *, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Pixels ``[y:y+h, x:x+w]`` of the image: ``(h, w)`` or ``(h, w, C)``.

        The window must lie inside the image (``0 <= y``, ``y + h <= height``, same for x/w) and
        be non-empty; otherwise ``ValueError``.
        """
        _check_window(y, x, h, w, self.height, self.width)
        page = self._page
        seps, _, _, _, contig = page.shaped
        rows, cols = self.chunk_shape
        n_ty, n_tx = self._grid
        out = np.empty((seps, h, w, contig), dtype=page.dtype)
        fh = self._tif.filehandle
        kwargs: dict[str, Any] = {}
        if page.compression in _JPEG_COMPRESSIONS:
            kwargs = {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader}
        for sep in range(seps):
            for ty in range(y // rows, (y + h - 1) // rows + 1):
                for tx in range(x // cols, (x + w - 1) // cols + 1):
                    index = (sep * n_ty + ty) * n_tx + tx
                    offset = int(page.dataoffsets[index])
                    count = int(page.databytecounts[index])
                    y0, x0 = ty * rows, tx * cols
                    # overlap of this chunk with the window, in image coordinates
                    ya, yb = max(y, y0), min(y + h, y0 + rows, self.height)
                    xa, xb = max(x, x0), min(x + w, x0 + cols, self.width)
                    target = out[sep, ya - y : yb - y, xa - x : xb - x]
                    if offset == 0 or count == 0:
                        target[...] = page.nodata
                        continue
                    try:
                        with fh.lock:
                            fh.seek(offset)
                            data = fh.read(count)
                        if len(data) != count:
                            raise ImageReadError(
                                self.name,
                                f"truncated TIFF: tile/strip {index} needs {count} bytes at "
                                f"offset {offset}, the file has {len(data)}",
                            )
                        segment, _, _ = self._decode(data, index, **kwargs)
                        if segment is None:
                            target[...] = page.nodata
                            continue
                        chunk = segment[0]  # (rows', cols', contig)
                        patch = chunk[ya - y0 : yb - y0, xa - x0 : xb - x0]
                        if patch.shape[:2] != target.shape[:2]:
                            raise ImageReadError(
                                self.name,
                                f"corrupt TIFF: tile/strip {index} decoded to {chunk.shape[:2]}",
                            )
                        target[...] = patch
                    except ImageReadError:
                        raise
                    except Exception as exc:
                        raise ImageReadError(
                            self.name, f"corrupt TIFF tile/strip {index}: {_exc_text(exc)}"
                        ) from exc
        return _tiff_finish(out[:, None], page, self.name, self.labels)


def _check_window(y: int, x: int, h: int, w: int, height: int, width: int) -> None:
    if h < 1 or w < 1:
        raise ValueError(f"window size must be at least 1 x 1, got h={h}, w={w}")
    if y < 0 or x < 0 or y + h > height or x + w > width:
        raise ValueError(
            f"window y={y}, x={x}, h={h}, w={w} is outside the image: "
            f"need 0 <= y, y + h <= {height}, 0 <= x, x + w <= {width}"
        )


def _open_tiff(loaded: _Loaded) -> tifffile.TiffFile:
    target: Any = loaded.path if loaded.data is None else io.BytesIO(loaded.data)
    try:
        return tifffile.TiffFile(target)
    except Exception as exc:
        raise ImageReadError(loaded.name, f"corrupt TIFF: {_exc_text(exc)}") from exc


def _first_page(tif: tifffile.TiffFile, label: str) -> tifffile.TiffPage:
    try:
        if len(tif.pages) == 0:
            raise ImageReadError(label, "corrupt TIFF: no image page (invalid first IFD offset)")
        page = tif.pages.first
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(label, f"corrupt TIFF: {_exc_text(exc)}") from exc
    if not isinstance(page, tifffile.TiffPage):
        raise ImageReadError(label, "corrupt TIFF: no image page")
    photometric = int(page.photometric)
    if photometric not in _PHOTOMETRIC_SUPPORTED or (
        photometric == 6 and page.compression not in _JPEG_COMPRESSIONS
    ):
        raise ImageReadError(
            label,
            f"unsupported TIFF photometric interpretation {photometric}; supported: "
            "MINISWHITE, MINISBLACK, RGB, PALETTE (and YCbCr in JPEG-compressed files)",
        )
    if page.shaped[1] != 1:
        raise ImageReadError(
            label, f"volumetric TIFF pages (image depth {page.shaped[1]}) are not supported"
        )
    if page.dtype is None:
        raise ImageReadError(
            label,
            f"unsupported TIFF sample format (bits per sample {page.bitspersample}, "
            f"sample format {page.sampleformat})",
        )
    return page


def _tiff_finish(arr5: np.ndarray, page: tifffile.TiffPage, label: str, labels: bool) -> np.ndarray:
    """``(S_sep, 1, h, w, S_contig)`` raw samples -> segflow's layout (see TiffWindowReader)."""
    seps = arr5.shape[0]
    arr = arr5[:, 0]
    arr = np.moveaxis(arr[..., 0], 0, -1) if seps > 1 else arr[0]
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    if labels:
        return arr
    photometric = int(page.photometric)
    if photometric == 3:  # palette: colormap is (3, 2**bits) uint16
        colormap = np.asarray(page.colormap)
        if colormap.ndim != 2 or colormap.shape[0] != 3:
            raise ImageReadError(label, "corrupt TIFF: palette image without a colour map")
        if arr.dtype.kind not in "ub":
            raise ImageReadError(label, f"corrupt TIFF: palette indices of type {arr.dtype}")
        # 8-bit palettes are stored as v, v * 256 (Pillow) or v * 257 (libtiff tools)
        if colormap.max(initial=0) < 256:
            lut = colormap.T.astype(np.uint8)
        elif not np.any(colormap % 256) or not np.any(colormap % 257):
            lut = (colormap.T >> 8).astype(np.uint8)
        else:
            lut = colormap.T.astype(np.uint16)
        idx = arr.astype(np.intp)
        if idx.size and idx.max() >= len(lut):
            raise ImageReadError(
                label, f"corrupt TIFF: palette index {idx.max()} beyond a {len(lut)}-entry map"
            )
        return lut[idx]
    if photometric == 0 and arr.dtype.kind in "ub":  # white is zero: invert to black-is-zero
        if arr.dtype == np.bool_:
            arr = ~arr
        else:
            arr = (np.uint64(2 ** int(page.bitspersample) - 1) - arr).astype(arr.dtype)
    if arr.ndim == 3 and arr.shape[2] == 2 and tuple(page.extrasamples)[:1] in ((1,), (2,)):
        grey, alpha = arr[..., 0], arr[..., 1]
        arr = np.stack([grey, grey, grey, alpha], axis=-1)
    try:
        return _native(arr)
    except ValueError as exc:
        raise ImageReadError(label, str(exc)) from exc


def _read_tiff(loaded: _Loaded, *, max_pixels: int | None, labels: bool) -> np.ndarray:
    with _open_tiff(loaded) as tif:
        page = _first_page(tif, loaded.name)
        _guard(loaded.name, int(page.imagelength), int(page.imagewidth), max_pixels)
        try:
            raw = page.asarray()
            raw = raw.reshape(page.shaped)
        except Exception as exc:
            raise ImageReadError(
                loaded.name, f"corrupt or undecodable TIFF data: {_exc_text(exc)}"
            ) from exc
        return _tiff_finish(raw, page, loaded.name, labels)


# --------------------------------------------------------------------------------------------
# public readers


def read_header(source: Source, *, name: str | None = None) -> ImageHeader:
    """Format and size from the header alone (no pixels decoded, no size limit applied).

    Only the header is validated: a PNG/JPEG whose size header is intact but which ends early
    still reports its claimed size here (orientation then defaults to 1).

    Returns
    -------
    ImageHeader
        ``height``/``width`` as :func:`read_image` would return them (EXIF rotation applied).

    Raises
    ------
    ImageReadError
        The file is empty, unrecognised or its header is corrupt.
    """
    loaded = _load(source, name)
    if loaded.format == "TIFF":
        with _open_tiff(loaded) as tif:
            page = _first_page(tif, loaded.name)
            return ImageHeader(
                "TIFF", int(page.imagelength), int(page.imagewidth), 1, bool(page.is_tiled)
            )
    own_size = (
        _png_size(loaded)
        if loaded.format == "PNG"
        else _jpeg_size(loaded)
        if loaded.format == "JPEG"
        else None
    )
    try:
        with _pil_open(loaded) as im:
            width, height = im.size
            orientation = _orientation(im)
    except ImageReadError:
        if own_size is None:
            raise
        # PNG IHDR / JPEG SOF read fine but a later header part did not (e.g. the file ends
        # before the pixel data): the size is known, EXIF is not; read_image will refuse it.
        (height, width), orientation = own_size, 1
    height, width = _oriented_shape(height, width, orientation)
    return ImageHeader(loaded.format, height, width, orientation, False)


def image_shape(source: Source, *, name: str | None = None) -> tuple[int, int]:
    """``(H, W)`` from the header (EXIF rotation applied), without decoding pixels."""
    header = read_header(source, name=name)
    return header.height, header.width


def read_image(
    source: Source, *, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read an image file into an array (see the module docstring for the full contract).

    Parameters
    ----------
    source : str, os.PathLike or bytes
        A path, or the file's bytes.
    name : str, optional
        The name error messages use (e.g. the URI the bytes came from).
    max_pixels : int or None
        Largest ``H * W`` the header may claim; larger files are refused before decoding.
        None disables the guard.

    Returns
    -------
    ndarray
        ``(H, W)`` grey or ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA (or ``(H, W, C)`` for other
        multi-sample TIFFs), dtype ``uint8``, ``uint16`` or ``float32``; EXIF orientation applied.

    Raises
    ------
    ImageReadError
        For every file that cannot be read (empty, truncated, corrupt, unsupported, too large).
    """
    _check_max_pixels(max_pixels)
    loaded = _load(source, name)
    if loaded.format == "TIFF":
        return _read_tiff(loaded, max_pixels=max_pixels, labels=False)
    arr = _decode(loaded, max_pixels=max_pixels, labels=False)
    try:
        return _native(arr)
    except ValueError as exc:
        raise ImageReadError(loaded.name, str(exc)) from exc


def read_labels(
    source: Source, *, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read a label image (ground truth) as ``(H, W) int32``.

    * Palette images (PNG, GIF, BMP, TIFF) give their palette **indices**, not their colours
      (VOC-style ``SegmentationClass``/``SegmentationObject`` PNGs give class/object ids, 255 =
      ignore stays 255).
    * Grey images give their stored values: 8- and 16-bit values are preserved exactly; 1/2/4-bit
      PNGs give their raw values (0/1 for bilevel), not the 0..255 scaling used for display.
    * RGB(A) images are accepted only when the R, G and B channels are equal everywhere (a grey
      label image saved as RGB); that channel is returned and alpha is ignored. Labels encoded as
      distinct colours raise :class:`ImageReadError`: convert them to indices first.
    * Float images are accepted when every value is a whole number in the int32 range.
    * EXIF orientation is applied as in :func:`read_image`, so labels align with their images.

    Raises
    ------
    ImageReadError
        As :func:`read_image`, and for colour, fractional or out-of-range label values.
    """
    _check_max_pixels(max_pixels)
    loaded = _load(source, name)
    if loaded.format == "TIFF":
        arr = _read_tiff(loaded, max_pixels=max_pixels, labels=True)
    else:
        arr = _decode(loaded, max_pixels=max_pixels, labels=True)
    return labels_from_array(arr, loaded.name)


def labels_from_array(arr: np.ndarray, label: str) -> np.ndarray:
    """A decoded label array as ``(H, W) int32`` under :func:`read_labels`' rules (grey-equal
    channels collapsed, whole-number floats, int32 range); ``label`` names it in errors."""
    if arr.ndim == 3:
        channels = arr.shape[2]
        colour = arr[..., :3] if channels in (3, 4) else arr[..., :1] if channels == 2 else arr
        first = colour[..., 0]
        for c in range(1, colour.shape[2]):
            if not np.array_equal(first, colour[..., c]):
                raise ImageReadError(
                    label,
                    f"label image has {channels} channels whose values differ (colour-coded "
                    "labels); save labels as one channel (grey, 16-bit grey or palette)",
                )
        arr = first
    if arr.dtype == np.bool_:
        return arr.astype(np.int32)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ImageReadError(
                label,
                "float label image has non-integer or non-finite values; labels must be whole numbers",
            )
    if arr.dtype.kind in "uif" and arr.size:
        lo, hi = arr.min(), arr.max()
        info = np.iinfo(np.int32)
        if lo < info.min or hi > info.max:
            raise ImageReadError(
                label,
                f"label values span [{lo}, {hi}], outside the int32 range [{info.min}, {info.max}]",
            )
    elif arr.dtype.kind not in "uif":
        raise ImageReadError(label, f"unsupported label sample type {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int32)


def read_window(
    source: Source,
    *,
    y: int,
    x: int,
    h: int,
    w: int,
    name: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Pixels ``[y:y+h, x:x+w]`` of an image, as :func:`read_image` would give them.

    TIFF files decode only the tiles (or strips) the window touches, so windows of images far
    larger than ``max_pixels`` are readable (the guard does not apply to TIFF windows). Other
    formats cannot be decoded partially: they are read whole (guard applied) and sliced. To read
    many windows of one TIFF, keep a :class:`TiffWindowReader` open instead.

    Raises
    ------
    ValueError
        The window is empty or not inside the image.
    ImageReadError
        The file cannot be read.
    """
    _check_max_pixels(max_pixels)
    loaded = _load(source, name)
    if loaded.format == "TIFF":
        reader_source: Source = loaded.data if loaded.data is not None else str(loaded.path)
        with TiffWindowReader(reader_source, name=loaded.name) as reader:
            return reader.read(y=y, x=x, h=h, w=w)
    arr = _native(_decode(loaded, max_pixels=max_pixels, labels=False))
    _check_window(y, x, h, w, arr.shape[0], arr.shape[1])
    return arr[y : y + h, x : x + w].copy()
