"""Clean-up steps of the classic segmentation tutorials, on plain numpy arrays.

The scikit-image tutorial pipeline is: gaussian smoothing -> threshold -> morphological opening
-> remove small objects -> fill small holes -> connected components (instances). This module holds
every step except the threshold, as small functions with keyword-only options:

* :func:`smooth` — gaussian smoothing of a ``(C, H, W)`` image, per channel (before
  thresholding); equal to ``skimage.filters.gaussian(..., mode="nearest", truncate=4.0)``;
* :func:`open_mask` — binary opening with a disk of a given radius (``skimage.morphology.disk``);
  pixels outside the image never erode or dilate anything (as in scikit-image);
* :func:`remove_small_objects` — drop connected components with fewer than ``min_size`` pixels;
* :func:`fill_holes` — fill holes (background components that do not touch the image border),
  optionally only those of at most ``max_size`` pixels;
* :func:`label_components` — connected components -> ``(H, W) int32`` ids ``1..N`` in raster
  order of their first pixel (the order of ``skimage.measure.label``);
* :func:`clean_mask` / :func:`clean_classes` — the steps above in the tutorial order, on one mask
  or per foreground class of a class map;
* :func:`instances_from_classes`, :func:`remove_small_instances`, :func:`relabel_sequential` —
  instance label maps.

``connectivity`` follows scikit-image: ``1`` = 4-connected (edges), ``2`` = 8-connected (edges
and corners). Holes use the dual connectivity of the objects (8-connected objects enclose
4-connected holes and vice versa), which is the topologically consistent choice and what
``scipy.ndimage.binary_fill_holes`` does for its default structure with 8-connected objects.

These steps are not pointwise: on a tiled image they run once on the full-size class map (which
is as large as one image channel), never per tile.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

__all__ = [
    "CONNECTIVITIES",
    "argmax_classes",
    "check_connectivity",
    "clean_classes",
    "clean_mask",
    "disk",
    "fill_holes",
    "instances_from_classes",
    "label_components",
    "open_mask",
    "relabel_sequential",
    "remove_small_instances",
    "remove_small_objects",
    "smooth",
]

#: Allowed ``connectivity`` values: 1 (4-connected) and 2 (8-connected).
CONNECTIVITIES = (1, 2)


def argmax_classes(scores: np.ndarray) -> np.ndarray:
    """``argmax(scores, axis=0)`` of (K, H, W) scores as (H, W) int32, ties to the lower id.

    Plane by plane (K - 1 contiguous comparisons) instead of NumPy's strided reduction over
    the first axis: 2.5 times faster for K = 2 on 1024². Unlike ``np.argmax``, a NaN score
    never wins.
    """
    if scores.ndim != 3 or scores.shape[0] < 1:
        raise ValueError(f"scores must be (K, H, W) with K >= 1, got shape {scores.shape}")
    if scores.shape[0] == 2:
        return np.greater(scores[1], scores[0]).astype(np.int32)
    best = np.array(scores[0], dtype=np.float32)
    idx = np.zeros(best.shape, dtype=np.int32)
    for k in range(1, scores.shape[0]):
        better = scores[k] > best
        idx[better] = k
        np.maximum(best, scores[k], out=best)
    return idx


def check_connectivity(connectivity: Any) -> int:
    """Validate ``connectivity`` (1 or 2) and return it as ``int``."""
    if isinstance(connectivity, bool) or connectivity not in CONNECTIVITIES:
        raise ValueError(
            f"connectivity must be 1 (4-connected) or 2 (8-connected), got {connectivity!r}"
        )
    return int(connectivity)


def _check_nonneg_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def _check_mask(mask: np.ndarray) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be a 2-D (H, W) array, got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def disk(radius: int) -> np.ndarray:
    """``(2r+1, 2r+1) uint8`` disk footprint, identical to ``skimage.morphology.disk(radius)``."""
    r = _check_nonneg_int("radius", radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy <= r * r).astype(np.uint8)


def smooth(image: np.ndarray, *, sigma: float) -> np.ndarray:
    """Gaussian smoothing of each channel.

    Parameters
    ----------
    image : (C, H, W) float32
    sigma : float
        Standard deviation in pixels, ``>= 0``; ``0`` returns the image unchanged (no copy).

    Returns
    -------
    (C, H, W) float32
        ``scipy.ndimage.gaussian_filter`` over the two spatial axes, ``mode="nearest"``,
        ``truncate=4.0`` (what ``skimage.filters.gaussian`` does by default).
    """
    if isinstance(sigma, bool) or not isinstance(sigma, int | float | np.number):
        raise ValueError(f"sigma must be a number >= 0, got {sigma!r}")
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    img = np.asarray(image)
    if img.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {img.shape}")
    if sigma == 0:
        return img
    # scipy's kernel (same radius and weights), applied by OpenCV: ~25x faster than
    # ndi.gaussian_filter on a 1 MP float32 image; outputs agree to ~2e-7 (float32 sums).
    radius = int(4.0 * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 / (float(sigma) * float(sigma)) * x * x)
    kernel /= kernel.sum()
    src = img.astype(np.float32, copy=False)
    out = np.empty(src.shape, dtype=np.float32)
    for c in range(src.shape[0]):
        cv2.sepFilter2D(
            np.ascontiguousarray(src[c]),
            cv2.CV_32F,
            kernel,
            kernel,
            dst=out[c],
            borderType=cv2.BORDER_REPLICATE,  # scipy's mode="nearest"
        )
    return out


def open_mask(mask: np.ndarray, *, radius: int) -> np.ndarray:
    """Binary opening (erosion then dilation) with :func:`disk` ``(radius)``.

    ``mask`` (H, W) bool -> (H, W) bool; ``radius=0`` returns the mask unchanged. Equal to
    ``skimage.morphology.binary_opening(mask, disk(radius))``: the image border neither erodes
    nor dilates.
    """
    m = _check_mask(mask)
    r = _check_nonneg_int("radius", radius)
    if r == 0 or not m.any():
        return m
    kernel = disk(r)
    u8 = m.view(np.uint8) if m.flags.c_contiguous else m.astype(np.uint8)
    # OpenCV's default border for morphology is neutral (+inf for erosion, -inf for dilation)
    opened = cv2.morphologyEx(u8, cv2.MORPH_OPEN, kernel)
    return opened.astype(bool)


def label_components(mask: np.ndarray, *, connectivity: int = 2) -> tuple[np.ndarray, int]:
    """Connected components of ``mask`` (H, W) bool.

    Returns ``(labels, n)``: ``labels`` (H, W) int32 with ``0`` = background and ``1..n`` the
    components, numbered in raster order of their first pixel (as ``skimage.measure.label``).
    """
    m = _check_mask(mask)
    c = check_connectivity(connectivity)
    if m.size == 0:
        return np.zeros(m.shape, dtype=np.int32), 0
    u8 = m.view(np.uint8) if m.flags.c_contiguous else np.ascontiguousarray(m, dtype=np.uint8)
    # Wu's scan-order algorithm numbers components by their first pixel in raster order, as
    # skimage/scipy do (OpenCV's default block-based one does not); ~5x faster than ndi.label.
    n, labels = cv2.connectedComponentsWithAlgorithm(u8, 8 if c == 2 else 4, cv2.CV_32S, cv2.CCL_WU)
    return labels, int(n) - 1


def remove_small_objects(mask: np.ndarray, *, min_size: int, connectivity: int = 2) -> np.ndarray:
    """Drop connected components with fewer than ``min_size`` pixels.

    ``mask`` (H, W) bool -> (H, W) bool. ``min_size`` 0 or 1 keeps everything. Components of
    exactly ``min_size`` pixels are kept (the classic ``skimage`` ``min_size`` meaning).
    """
    m = _check_mask(mask)
    n_min = _check_nonneg_int("min_size", min_size)
    if n_min <= 1 or not m.any():
        return m
    labels, n = label_components(m, connectivity=connectivity)
    # ids are in range: "clip" skips take's bounds check (4x faster than the default)
    return np.take(_kept(labels, n, n_min), labels, mode="clip")


def _kept(labels: np.ndarray, n: int, n_min: int) -> np.ndarray:
    """(n + 1,) bool: components ``1..n`` of at least ``n_min`` pixels (background False)."""
    keep = component_sizes(labels, n) >= n_min
    keep[0] = False
    return keep


#: Above one run per this many pixels, component sizes come from a histogram instead.
_RUNS_PER_PIXEL = 8


def component_sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """Pixel count of each label ``0..n`` of ``labels`` (H, W) int32 -> (n + 1,) int64.

    From the runs of equal ids in raster order (one comparison pass; a label map of blobs has
    few runs): ~3x faster than a histogram of the ids, whose counts of one busy bin depend on
    each other. Maps with too many runs (noise) take OpenCV's 16-bit histogram when every count
    is exact in its float32 bins (fewer than 2**24 pixels, ids below 2**16), else
    ``np.bincount``.
    """
    flat = np.ascontiguousarray(labels).reshape(-1)
    if flat.size == 0:
        return np.zeros(n + 1, dtype=np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1])
    if change.size < flat.size // _RUNS_PER_PIXEL:
        starts = np.empty(change.size + 1, dtype=np.intp)
        starts[0] = 0
        np.add(change, 1, out=starts[1:])
        lengths = np.diff(starts, append=flat.size)
        return np.bincount(flat[starts], weights=lengths, minlength=n + 1).astype(np.int64)
    if n < (1 << 16) - 1 and flat.size < (1 << 24) and labels.ndim == 2:
        hist = cv2.calcHist([labels.astype(np.uint16)], [0], None, [n + 1], [0, n + 1])
        return hist.ravel().astype(np.int64)
    return np.bincount(flat, minlength=n + 1).astype(np.int64)


def binary_instances(
    mask: np.ndarray, *, min_size: int = 0, connectivity: int = 2
) -> tuple[np.ndarray, int]:
    """Instances of a binary mask: components of at least ``min_size`` pixels, one labelling.

    ``mask`` (H, W) bool -> ``(labels (H, W) int32, n)``, ids ``1..n`` in raster order of each
    component's first pixel: equal to ``label_components(remove_small_objects(mask, ...))``
    (dropping whole components leaves the others as they are), at half the cost.
    """
    m = _check_mask(mask)
    n_min = _check_nonneg_int("min_size", min_size)
    labels, n = label_components(m, connectivity=connectivity)
    if n_min <= 1 or n == 0:
        return labels, n
    keep = _kept(labels, n, n_min)
    if keep[1:].all():
        return labels, n
    lut = np.cumsum(keep, dtype=np.int32)
    lut[~keep] = 0
    if n < 256 and labels.flags.c_contiguous:
        # one byte per id: OpenCV's table lookup (0.3 ms on 1 MP) instead of np.take, which
        # first widens the int32 ids to an 8 MB intp copy (1 ms); written over the old ids,
        # which the byte copy replaces (no fresh pages)
        table = np.zeros(256, dtype=np.int32)
        table[: n + 1] = lut
        out = cv2.LUT(labels.astype(np.uint8), table, dst=labels)
        return np.asarray(out), int(lut.max())
    return np.take(lut, labels, mode="clip"), int(lut.max())


def fill_holes(
    mask: np.ndarray, *, max_size: int | None = None, connectivity: int = 2
) -> np.ndarray:
    """Fill holes of ``mask`` (H, W) bool.

    A hole is a background component (with the dual connectivity of ``connectivity``) that does
    not touch the image border. With ``max_size`` only holes of at most ``max_size`` pixels are
    filled; ``None`` fills every hole (``scipy.ndimage.binary_fill_holes``).
    """
    m = _check_mask(mask)
    c = check_connectivity(connectivity)
    if max_size is not None:
        max_size = _check_nonneg_int("max_size", max_size)
    if m.all() or not m.any():
        return m
    bg_labels, n = label_components(~m, connectivity=3 - c)
    if n == 0:
        return m
    border = np.unique(
        np.concatenate([bg_labels[0], bg_labels[-1], bg_labels[:, 0], bg_labels[:, -1]])
    )
    fill = np.ones(n + 1, dtype=bool)
    fill[0] = False
    fill[border] = False
    if max_size is not None:
        fill &= np.bincount(bg_labels.ravel(), minlength=n + 1) <= max_size
    if not fill.any():
        return m
    return m | fill[bg_labels]


def clean_mask(
    mask: np.ndarray,
    *,
    opening: int = 0,
    min_size: int = 0,
    fill: bool = False,
    max_hole_size: int | None = None,
    connectivity: int = 2,
) -> np.ndarray:
    """The tutorial's clean-up of one binary mask, in order: opening -> small objects -> holes.

    ``mask`` (H, W) bool -> (H, W) bool. Options as in :func:`open_mask` (``opening`` = disk
    radius), :func:`remove_small_objects` and :func:`fill_holes` (only when ``fill``).
    """
    m = _check_mask(mask)
    if opening:
        m = open_mask(m, radius=opening)
    if min_size:
        m = remove_small_objects(m, min_size=min_size, connectivity=connectivity)
    if fill:
        m = fill_holes(m, max_size=max_hole_size, connectivity=connectivity)
    return m


def clean_classes(
    classes: np.ndarray,
    *,
    num_classes: int,
    opening: int = 0,
    min_size: int = 0,
    fill: bool = False,
    max_hole_size: int | None = None,
    connectivity: int = 2,
) -> np.ndarray:
    """:func:`clean_mask` applied to each foreground class of a class map.

    ``classes`` (H, W) int, values in ``0..num_classes-1`` (0 = background) -> (H, W) int32.
    For each class ``k = 1..K-1`` in turn, pixels that opening or small-object removal drop
    become background (0), and holes are filled with ``k`` only where they are background, so a
    class never overwrites another foreground class. With two classes this is exactly
    :func:`clean_mask` of ``classes == 1``.
    """
    cls = np.asarray(classes)
    if cls.ndim != 2:
        raise ValueError(f"classes must be a 2-D (H, W) array, got shape {cls.shape}")
    if not (opening or min_size or fill):
        return cls.astype(np.int32, copy=False)
    out = cls.astype(np.int32, copy=True)
    for k in range(1, int(num_classes)):
        m = out == k
        if not m.any():
            continue
        kept = clean_mask(m, opening=opening, min_size=min_size, connectivity=connectivity)
        out[m & ~kept] = 0
        if fill:
            filled = fill_holes(kept, max_size=max_hole_size, connectivity=connectivity)
            out[filled & (out == 0)] = k
    return out


def instances_from_classes(
    classes: np.ndarray, *, num_classes: int, connectivity: int = 2
) -> tuple[np.ndarray, dict[int, int]]:
    """Connected components of each foreground class as instances.

    ``classes`` (H, W) int (0 = background) -> ``(labels, instance_classes)``: ``labels``
    (H, W) int32, ids ``1..N`` numbered class by class (class 1's components first, each class
    in raster order), and ``instance_classes`` mapping every id to its class.
    """
    cls = np.asarray(classes)
    if cls.ndim != 2:
        raise ValueError(f"classes must be a 2-D (H, W) array, got shape {cls.shape}")
    labels = np.zeros(cls.shape, dtype=np.int32)
    instance_classes: dict[int, int] = {}
    next_id = 0
    for k in range(1, int(num_classes)):
        m = cls == k
        if not m.any():
            continue
        lab, n = label_components(m, connectivity=connectivity)
        if n == 0:
            continue
        labels[m] = lab[m] + next_id
        instance_classes.update({next_id + i: k for i in range(1, n + 1)})
        next_id += n
    return labels, instance_classes


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber the non-zero ids of ``labels`` (H, W) int to ``1..N`` keeping their order.

    Returns (H, W) int32; 0 stays 0.
    """
    lab = np.asarray(labels)
    if lab.size == 0:
        return lab.astype(np.int32)
    if lab.min() < 0:
        raise ValueError(f"labels must be >= 0, got minimum {lab.min()}")
    ids = np.unique(lab)
    ids = ids[ids != 0]
    if ids.size == 0:
        return np.zeros(lab.shape, dtype=np.int32)
    if ids[-1] == ids.size:  # already 1..N
        return lab.astype(np.int32, copy=False)
    lut = np.zeros(int(ids[-1]) + 1, dtype=np.int32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lut[lab]


def remove_small_instances(labels: np.ndarray, *, min_size: int) -> np.ndarray:
    """Set instances with fewer than ``min_size`` pixels to 0 and renumber the rest ``1..N``.

    ``labels`` (H, W) int -> (H, W) int32 (order of the remaining ids kept).
    """
    lab = np.asarray(labels)
    n_min = _check_nonneg_int("min_size", min_size)
    if n_min > 1 and lab.size:
        sizes = np.bincount(lab.ravel())
        small = sizes < n_min
        small[0] = False
        if small.any():
            lab = np.where(small[lab], 0, lab)
    return relabel_sequential(lab)
