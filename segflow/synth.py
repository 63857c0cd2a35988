"""Synthetic nuclei images with instance ground truth, and deliberately broken image files.

:func:`make_dataset` writes a small fluorescence-microscopy-like dataset for the demo, the tests
and the benchmarks::

    out_dir/images/synth_0000.png   (H, W) uint8 grey (or (H, W, 3) uint8 with ``rgb=True``)
    out_dir/labels/synth_0000.png   (H, W) uint16 instance labels: 0 background, 1..N objects

How an image is made (:func:`make_sample`):

* objects are filled ellipses (nuclei) of random size, elongation and orientation, each with its
  own brightness and a brighter centre; about 25 % are placed **touching** an earlier object
  (centre distance = the sum of the two radii along the line joining them) and about 15 %
  **overlapping** one (50-75 % of that distance); the rest land at random, avoiding others;
* **overlaps: the later object wins** - it owns the shared pixels in the label image *and* gives
  them its brightness, so the label image is exactly the set of pixels each object shows;
  whatever is left of an earlier object is kept only as its largest connected piece (stray
  fragments become background) and objects under ``min_area`` pixels are dropped; labels are
  then renumbered 1..N in placement order;
* the picture: dark background, objects with a faint texture, a slight Gaussian blur (optics),
  a smooth linear illumination gradient across the field (55-80 % at the dim side), and
  additive Gaussian noise; everything is clipped to [0, 1] and stored as 8-bit.

Objects are always brighter than the background around them, so a global Otsu threshold
segments them well but not perfectly.  Everything is deterministic for a seed: image ``i`` of a
dataset depends only on ``(seed, i)``, so a bigger dataset starts with the same images.

:func:`make_bad_files` writes the unreadable kinds the pipeline must turn into ``errors`` rows.
"""

from __future__ import annotations

import logging
import math
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

BAD_KINDS = ("zero_bytes", "truncated_png", "truncated_jpeg", "text_as_png", "huge_header_png")
"""The kinds of broken file :func:`make_bad_files` writes, in order."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_options(
    size: tuple[int, int], n_objects: tuple[int, int], min_area: int
) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s < 16 for s in size):
        raise ValueError(f"size must be (height, width) with both >= 16 pixels, got {size!r}")
    if len(n_objects) != 2 or not 0 <= n_objects[0] <= n_objects[1] <= 65535:
        raise ValueError(
            f"n_objects must be (low, high) with 0 <= low <= high <= 65535, got {n_objects!r}"
        )
    if min_area < 1:
        raise ValueError(f"min_area must be >= 1 pixel, got {min_area}")
    return int(size[0]), int(size[1])


def _radius_along(a: float, b: float, theta: float, phi: float) -> float:
    """Distance from an ellipse's centre to its edge in direction ``phi`` (semi-axes a, b)."""
    d = phi - theta
    return a * b / math.hypot(b * math.cos(d), a * math.sin(d))


def _paint(
    labels: np.ndarray,
    shade: np.ndarray,
    *,
    label: int,
    centre: tuple[float, float],
    axes: tuple[float, float],
    theta: float,
    brightness: float,
) -> None:
    """Paint one filled ellipse into ``labels`` (int32) and ``shade`` (float32), later wins."""
    h, w = labels.shape
    cy, cx = centre
    a, b = axes
    reach = max(a, b) + 1
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, h)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, w)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    c, s = math.cos(theta), math.sin(theta)
    d2 = ((dx * c + dy * s) / a) ** 2 + ((-dx * s + dy * c) / b) ** 2
    inside = d2 <= 1.0
    labels[y0:y1, x0:x1][inside] = label
    shade[y0:y1, x0:x1][inside] = brightness * (1.0 - 0.25 * d2[inside])


def _clean_labels(labels: np.ndarray, *, min_area: int) -> np.ndarray:
    """Keep each label's largest connected piece, drop small objects, renumber 1..N in order."""
    out = np.zeros_like(labels)
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        mine = labels[region] == index
        pieces, n = ndimage.label(mine)
        if n > 1:
            sizes = np.bincount(pieces.ravel())[1:]
            mine = pieces == (int(np.argmax(sizes)) + 1)
        if int(mine.sum()) >= min_area:
            out[region][mine] = index
    present = np.unique(out)
    present = present[present > 0]
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lookup[present] = np.arange(1, present.size + 1, dtype=np.int32)
    return lookup[out]


def make_sample(
    *,
    size: tuple[int, int] = (256, 256),
    seed: int | np.random.Generator = 0,
    n_objects: tuple[int, int] = (10, 30),
    rgb: bool = False,
    min_area: int = 12,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its instance labels (see the module docstring for the recipe).

    Parameters
    ----------
    size : (height, width), both >= 16.
    seed : int or numpy Generator; the same int gives the same sample.
    n_objects : (low, high) inclusive range of objects placed (fewer may survive: objects hidden
        under later ones or under ``min_area`` pixels are dropped).
    rgb : if True the image is (H, W, 3) uint8 (blue-tinted, DAPI-like), else (H, W) uint8.
    min_area : smallest object kept, in pixels.

    Returns
    -------
    image : (H, W) or (H, W, 3) uint8
    labels : (H, W) uint16, 0 = background, objects 1..N
    """
    h, w = _check_options(size, n_objects, min_area)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    scale = min(h, w)
    r_lo, r_hi = max(3.0, 0.03 * scale), max(4.0, 0.06 * scale)
    n = int(rng.integers(n_objects[0], n_objects[1] + 1))

    labels = np.zeros((h, w), dtype=np.int32)
    shade = np.zeros((h, w), dtype=np.float32)
    placed: list[tuple[float, float, float, float, float]] = []  # cy, cx, a, b, theta
    for label in range(1, n + 1):
        a = float(rng.uniform(r_lo, r_hi))
        b = a * float(rng.uniform(0.55, 1.0))
        theta = float(rng.uniform(0.0, math.pi))
        brightness = float(rng.uniform(0.4, 0.95))
        mode = rng.choice(3, p=[0.6, 0.25, 0.15]) if placed else 0
        centre = None
        if mode:
            cy0, cx0, a0, b0, t0 = placed[int(rng.integers(len(placed)))]
            phi = float(rng.uniform(0.0, 2 * math.pi))
            reach = _radius_along(a0, b0, t0, phi) + _radius_along(a, b, theta, phi)
            if mode == 2:
                reach *= float(rng.uniform(0.5, 0.75))
            cy, cx = cy0 + reach * math.sin(phi), cx0 + reach * math.cos(phi)
            if 0 <= cy < h and 0 <= cx < w:
                centre = (cy, cx)
        if centre is None:  # free placement: try to avoid everything placed so far
            for _ in range(30):
                cy, cx = float(rng.uniform(0, h)), float(rng.uniform(0, w))
                y0, y1 = max(int(cy - a) - 1, 0), min(int(cy + a) + 2, h)
                x0, x1 = max(int(cx - a) - 1, 0), min(int(cx + a) + 2, w)
                if not labels[y0:y1, x0:x1].any():
                    break
            centre = (cy, cx)
        _paint(
            labels,
            shade,
            label=label,
            centre=centre,
            axes=(a, b),
            theta=theta,
            brightness=brightness,
        )
        placed.append((centre[0], centre[1], a, b, theta))

    labels = _clean_labels(labels, min_area=min_area)
    foreground = labels > 0
    texture = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 1.5)
    texture *= 0.08 / max(float(texture.std()), 1e-6)
    signal = np.where(foreground, shade * (1.0 + texture), 0.0).astype(np.float32)
    signal += float(rng.uniform(0.06, 0.12))  # background level
    signal = ndimage.gaussian_filter(signal, float(rng.uniform(0.7, 1.2)))

    # uneven illumination: a linear ramp in a random direction, from `low` to 1
    low = float(rng.uniform(0.55, 0.8))
    phi = float(rng.uniform(0.0, 2 * math.pi))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = yy * math.sin(phi) + xx * math.cos(phi)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    signal *= low + (1.0 - low) * ramp
    signal += rng.normal(0.0, float(rng.uniform(0.015, 0.03)), size=(h, w)).astype(np.float32)
    grey = np.clip(np.rint(signal * 255.0), 0, 255).astype(np.uint8)
    if rgb:
        tint = np.array([0.35, 0.55, 1.0], dtype=np.float32)  # R, G, B
        image = np.clip(np.rint(grey[..., None] * tint), 0, 255).astype(np.uint8)
    else:
        image = grey
    return image, labels.astype(np.uint16)


def _write_png(path: Path, array: np.ndarray) -> None:
    data = array[..., ::-1] if array.ndim == 3 else array  # OpenCV writes BGR
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(data), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f"could not encode {path.name} as PNG")
    path.write_bytes(encoded.tobytes())


def make_dataset(
    out_dir: str | Path,
    *,
    n_images: int = 8,
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
    n_objects: tuple[int, int] = (10, 30),
    rgb: bool = False,
    prefix: str = "synth",
) -> list[Path]:
    """Write ``n_images`` synthetic images and their labels; return the image paths in order.

    Files: ``out_dir/images/<prefix>_<i:04d>.png`` ((H, W) uint8, or (H, W, 3) uint8 with
    ``rgb``) and ``out_dir/labels/<prefix>_<i:04d>.png`` ((H, W) uint16 instance ids, 0 is
    background).  Image ``i`` is :func:`make_sample` with seed ``(seed, i)``: deterministic, and
    independent of ``n_images``.  Existing files of the same names are replaced.
    """
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not prefix or any(ch in prefix for ch in "/\\"):
        raise ValueError(
            f"prefix must be a non-empty file-name part without slashes, got {prefix!r}"
        )
    _check_options(size, n_objects, 1)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_images):
        rng = np.random.default_rng([seed, i])
        image, labels = make_sample(size=size, seed=rng, n_objects=n_objects, rgb=rgb)
        name = f"{prefix}_{i:04d}.png"
        _write_png(out / "images" / name, image)
        _write_png(out / "labels" / name, labels)
        paths.append(out / "images" / name)
    log.debug("wrote %d synthetic images to %s", n_images, out)
    return paths


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def huge_header_png(*, width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose valid IHDR (correct CRC) claims ``width x height`` 8-bit grey pixels.

    Only a few bytes of compressed data follow, so a reader that trusts the header before checking
    it against a pixel limit would try to allocate ``width * height`` bytes.
    """
    if not (0 < width < 2**31 and 0 < height < 2**31):
        raise ValueError(
            f"width and height must be in 1..2**31-1 (PNG limit), got {width}x{height}"
        )
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def make_bad_files(out_dir: str | Path, *, prefix: str = "bad") -> dict[str, Path]:
    """Write one file of each kind in :data:`BAD_KINDS` into ``out_dir``; return kind -> path.

    * ``zero_bytes``: ``<prefix>_zero_bytes.png``, an empty file;
    * ``truncated_png``: the first half of a valid 64x64 PNG (cut inside the image data);
    * ``truncated_jpeg``: the first 60 % of a valid 64x64 JPEG (cut inside the scan, no EOI);
    * ``text_as_png``: a text file named ``.png``;
    * ``huge_header_png``: :func:`huge_header_png`, 100000 x 100000 pixels claimed in a
      ~100-byte file (far above ``segflow.io``'s default guard of 2**28 pixels).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image, _ = make_sample(size=(64, 64), seed=12345, n_objects=(3, 5))
    ok_png, png = cv2.imencode(".png", image)
    ok_jpg, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not (ok_png and ok_jpg):
        raise OSError("OpenCV could not encode the sample image")
    png_bytes, jpg_bytes = png.tobytes(), jpg.tobytes()
    contents = {
        "zero_bytes": (f"{prefix}_zero_bytes.png", b""),
        "truncated_png": (f"{prefix}_truncated.png", png_bytes[: len(png_bytes) // 2]),
        "truncated_jpeg": (f"{prefix}_truncated.jpg", jpg_bytes[: int(len(jpg_bytes) * 0.6)]),
        "text_as_png": (f"{prefix}_text.png", b"This is a text file, not an image.\n"),
        "huge_header_png": (f"{prefix}_huge_header.png", huge_header_png()),
    }
    paths = {}
    for kind in BAD_KINDS:
        name, data = contents[kind]
        path = out / name
        path.write_bytes(data)
        paths[kind] = path
    return paths


__all__ = ["BAD_KINDS", "huge_header_png", "make_bad_files", "make_dataset", "make_sample"]
