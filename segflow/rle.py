"""COCO run-length encoding (RLE) of binary masks, byte for byte what pycocotools writes.

The encoding contract
---------------------
A mask is an ``(H, W)`` array; every nonzero pixel is foreground. Its pixels are read in
**column-major** (Fortran) order: ``p = x * H + y``, top to bottom, then left to right. The
uncompressed RLE ``counts`` are the lengths of the alternating runs of that sequence, **starting
with a zero (background) run**, which has length 0 when pixel ``(0, 0)`` is foreground. No other
run has length 0; the counts sum to ``H * W`` (an ``H * W == 0`` mask is ``counts == [0]``).

The compressed form (``rle["counts"]`` as produced by :func:`encode`) is pycocotools'
``rleToString``: each count ``c[i]`` is first replaced by ``c[i] - c[i - 2]`` for ``i > 2``
(note: ``>``, so ``c[2]`` is stored as is), then written as a little-endian sequence of 5-bit
groups, two's complement, one ASCII character per group: ``chr(48 + (group | 0x20))`` while more
groups follow, ``chr(48 + group)`` for the last, whose bit ``0x10`` is the sign. Characters are
therefore in ``"0"`` (48) .. ``"o"`` (111). :func:`encode` returns::

    {"size": [H, W], "counts": "<ASCII str>"}

with ``counts`` a ``str`` (pycocotools gives ``bytes`` with the same characters), so JSON and
Parquet store it directly and ``pycocotools.mask.decode`` reads it unchanged (after
``.encode("ascii")`` when a pycocotools version insists on ``bytes``).

Every function that reads an RLE accepts ``counts`` as that compressed ``str`` or ``bytes``, or as
an uncompressed sequence (``list[int]`` or a 1-D integer array) of run lengths. Zero-length runs
after the first are tolerated on input and dropped from every output. Pycocotools limits counts
to unsigned 32 bits, so masks have at most :data:`MAX_PIXELS` pixels.

Malformed input (counts that do not sum to ``H * W``, negative runs, characters outside
``"0".."o"``, a truncated compressed string, a count longer than 7 characters, sizes that are
negative, non-integer or too large, wrong types) raises :class:`ValueError` with the reason.
Validation is vectorised and proportional to the size of the RLE itself, and :func:`decode`
refuses to allocate more than ``max_pixels`` pixels (default :data:`DEFAULT_MAX_PIXELS`, the same
guard as ``segflow.io``), so no input crashes, hangs or triggers a huge allocation.

Why our own implementation, not a pycocotools wrapper
-----------------------------------------------------
pycocotools (a dev dependency only) needs a Fortran-ordered ``uint8`` copy of every mask
(``np.asfortranarray``), a slow strided transpose that dominates its encode time for the
C-ordered masks segmenters produce; it does not validate RLE (a ``counts`` string that sums to
less than ``H * W`` decodes to uninitialised memory, a merge of different sizes silently returns
an empty mask); and it cannot encode an object from its bounding-box crop. This module finds run
boundaries directly on the C-ordered mask (vertical differences, then a stable radix sort of the
few boundaries by column), or through a fast ``cv2.transpose`` when boundaries are dense, and
vectorises ``rleToString`` / ``rleFrString`` with numpy. ``benchmarks/rle.py`` measures it against
pycocotools; ``tests/test_rle.py`` checks byte equality on random masks. Large counts: pycocotools'
own string code is unreliable for counts of 6 or more characters (``>= 2**24``): its writer's
buffer holds 6 bytes per count and crashed the test process with random large counts, and its
reader shifts a 32-bit ``int`` so 7-character counts (``>= 2**29``) parse wrongly. This module
handles the full 32-bit range; pycocotools reads its output unchanged for masks under ``2**29``
pixels (and for larger ones whenever no count needs 7 characters).

Kaggle "start length" strings (:func:`encode_kaggle`, :func:`decode_kaggle`) are space-separated
pairs of a 1-based start pixel and a run length, with the pixel order given explicitly
(``order="F"``: column-major as in the 2018 Data Science Bowl; ``order="C"``: row-major).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, TypedDict

import numpy as np

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_PIXELS",
    "CocoRLE",
    "EncodedObject",
    "area",
    "bbox",
    "decode",
    "decode_kaggle",
    "encode",
    "encode_crop",
    "encode_kaggle",
    "encode_labels",
    "encode_objects",
    "merge",
]

#: Hard limit on ``H * W``: pycocotools stores run lengths as unsigned 32-bit integers.
MAX_PIXELS = 2**32 - 1
#: Default limit on the pixels :func:`decode` / :func:`decode_kaggle` allocate (as ``segflow.io``).
DEFAULT_MAX_PIXELS = 1 << 28
#: A count of at most 2**32 - 1 (or a difference of two) needs at most 7 characters.
_MAX_CHARS = 7
#: Above this fraction of boundaries per pixel, transposing the mask beats sorting boundaries.
_DENSE_FRACTION = 32

Order = Literal["F", "C"]


class CocoRLE(TypedDict):
    """A compressed COCO RLE: ``size`` is ``[H, W]``, ``counts`` the ASCII string."""

    size: list[int]
    counts: str


# --------------------------------------------------------------------------------------------
# validation helpers


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _check_shape(size: object, *, what: str = "size") -> tuple[int, int]:
    """Validate an ``(H, W)`` pair of non-negative ints with ``H * W <= MAX_PIXELS``."""
    if isinstance(size, str | bytes) or not isinstance(size, Sequence | np.ndarray):
        raise ValueError(f"{what} must be a pair [H, W] of ints, got {size!r}")
    if len(size) != 2:
        raise ValueError(f"{what} must have exactly 2 entries [H, W], got {len(size)}: {size!r}")
    h, w = size[0], size[1]
    if not (_is_int(h) and _is_int(w)):
        raise ValueError(f"{what} entries must be ints, got {size!r}")
    h, w = int(h), int(w)
    if h < 0 or w < 0:
        raise ValueError(f"{what} entries must be >= 0, got [{h}, {w}]")
    if h * w > MAX_PIXELS:
        raise ValueError(
            f"{what} [{h}, {w}] has {h * w} pixels; COCO RLE allows at most {MAX_PIXELS} "
            "(32-bit run lengths)"
        )
    return h, w


def _check_mask(mask: object, *, name: str = "mask") -> np.ndarray:
    """Return ``mask`` as an ``(H, W)`` bool array (nonzero = foreground), validating it."""
    if not isinstance(mask, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(mask).__name__}")
    if mask.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W), got shape {mask.shape}")
    if mask.dtype == np.bool_:
        out = mask
    elif mask.dtype.kind in "iu":
        out = mask != 0
    else:
        raise ValueError(
            f"{name} dtype {mask.dtype} is not allowed; use bool or an integer dtype "
            "(nonzero = foreground)"
        )
    _check_shape(out.shape, what=f"{name} shape")
    return out


def _check_order(order: object) -> Order:
    if order not in ("F", "C"):
        raise ValueError(f"order must be 'F' (column-major) or 'C' (row-major), got {order!r}")
    return order  # type: ignore[return-value]


def _check_max_pixels(h: int, w: int, max_pixels: int) -> None:
    if h * w > max_pixels:
        raise ValueError(
            f"mask size [{h}, {w}] has {h * w} pixels, more than max_pixels={max_pixels}; "
            "pass a larger max_pixels to decode it"
        )


# --------------------------------------------------------------------------------------------
# run boundaries ("toggles"): sorted flat positions where the pixel value changes


def _crop_toggles(crop: np.ndarray, y0: int, x0: int, height: int) -> np.ndarray:
    """Run boundaries of ``crop`` placed at ``(y0, x0)`` in an image of ``height`` rows.

    ``crop`` is ``(h, w)`` bool. Returns the sorted column-major flat positions (int64) in the
    full image where a foreground run starts or ends (exclusive end). A run ending at the bottom
    of one column and a run starting at the top of the next give the same position twice (they
    cancel, see :func:`_cancel_pairs`); positions can equal ``height * width`` (a run ending at
    the last pixel).
    """
    h, w = crop.shape
    if h == 0 or w == 0:
        return np.empty(0, np.int64)
    transposed = crop.T
    if not transposed.flags.c_contiguous:
        crop = np.ascontiguousarray(crop)
        if not _looks_dense(crop):
            return _sparse_toggles(crop, y0, x0, height)
        transposed = _transpose(crop)
    if h == height:  # whole columns: the column-major order is the transposed array's order
        flat = transposed.ravel()
        parts = [np.flatnonzero(flat[1:] != flat[:-1]) + 1]
        if flat[0]:  # a run starts at the first pixel
            parts.insert(0, np.zeros(1, np.int64))
        if flat[-1]:  # a run ends at the last pixel of the crop
            parts.append(np.full(1, flat.size, np.int64))
        toggles = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return toggles + x0 * height
    # Pad every column with background above and below so runs never cross columns.
    padded = np.zeros((w, h + 2), np.bool_)
    padded[:, 1 : h + 1] = transposed
    flat = padded.ravel()
    q = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    cols, index = np.divmod(q, h + 2)
    # full position = (x0 + col) * height + y0 + (index - 1)
    return cols * height + (index + (x0 * height + y0 - 1))


def _looks_dense(crop: np.ndarray) -> bool:
    """Estimate from a few row pairs whether run boundaries are dense (then transpose)."""
    h, w = crop.shape
    if crop.size <= 1 << 14 or h < 2:
        return False
    rows = np.unique(np.linspace(0, h - 2, num=min(h - 1, 32)).astype(np.intp))
    changes = np.count_nonzero(crop[rows] != crop[rows + 1])
    return changes * _DENSE_FRACTION > rows.size * w


def _sparse_toggles(crop: np.ndarray, y0: int, x0: int, height: int) -> np.ndarray:
    """:func:`_crop_toggles` for a C-contiguous crop with few boundaries, without transposing.

    Vertical differences give the boundaries inside each column in row-major order; a stable
    (radix) sort by column puts them in column-major order.
    """
    h, w = crop.shape
    y, x = np.divmod(_vertical_changes(crop), w)
    top = np.flatnonzero(crop[0])
    bottom = np.flatnonzero(crop[h - 1])
    keys = np.concatenate([top, x, bottom])
    rows = np.concatenate([np.zeros(top.size, np.int64), y + 1, np.full(bottom.size, h, np.int64)])
    # Stable sort by column keeps rows increasing within a column (radix sort on uint16).
    order = np.argsort(keys.astype(np.uint16) if w <= 1 << 16 else keys, kind="stable")
    return (keys[order] + x0) * height + (rows[order] + y0)


def _vertical_changes(crop: np.ndarray) -> np.ndarray:
    """Flat indices ``r * w + c`` (ascending) where ``crop[r + 1, c] != crop[r, c]``.

    For C-contiguous rows of a multiple of 8 pixels, rows are first compared as 64-bit words (8
    pixels at once) and only the differing words are expanded to pixels.
    """
    h, w = crop.shape
    if w % 8 or w < 16 or h < 2:
        return np.flatnonzero(crop[1:] != crop[:-1])
    words = crop.view(np.uint64)
    changed = np.flatnonzero(words[1:] != words[:-1])  # word (r, j) has flat index r * w/8 + j
    flat = words.ravel()
    xor = flat[changed] ^ flat[changed + w // 8]  # bytes are 0/1: 1 where the pixel changes
    byte = np.flatnonzero(xor.view(np.bool_))  # memory order = pixel order
    return changed[byte >> 3] * 8 + (byte & 7)  # -> flat r * w + 8 * j + b


def _transpose(a: np.ndarray) -> np.ndarray:
    """C-contiguous transpose of a 2-D array (OpenCV's blocked copy for 1-, 2- and 4-byte items)."""
    src = np.ascontiguousarray(a)
    if src.dtype.itemsize not in (1, 2, 4) or max(src.shape) >= 1 << 31:
        return np.ascontiguousarray(src.T)  # beyond OpenCV's types or int dimensions
    import cv2  # core dependency; imported here so that importing segflow.rle stays light

    view = {1: np.uint8, 2: np.uint16, 4: np.int32}[src.dtype.itemsize]
    return cv2.transpose(src.view(view)).view(src.dtype)


def _cancel_pairs(toggles: np.ndarray) -> np.ndarray:
    """Drop pairs of equal adjacent boundaries (a run ending where the next one starts)."""
    if toggles.size < 2:
        return toggles
    same = toggles[1:] == toggles[:-1]
    if not same.any():
        return toggles
    drop = np.zeros(toggles.size, np.bool_)
    drop[1:] |= same
    drop[:-1] |= same
    return toggles[~drop]


def _counts_from_toggles(toggles: np.ndarray, n: int) -> np.ndarray:
    """Canonical counts from sorted unique boundaries in ``[0, n]`` (``n`` itself is dropped)."""
    if toggles.size and toggles[-1] == n:
        toggles = toggles[:-1]
    bounds = np.empty(toggles.size + 2, np.int64)
    bounds[0] = 0
    bounds[1:-1] = toggles
    bounds[-1] = n
    return np.diff(bounds)


def _toggles_from_counts(counts: np.ndarray, n: int) -> np.ndarray:
    """Canonical sorted boundaries in ``[0, n)`` of valid counts (zero-length runs cancelled)."""
    ends = np.cumsum(counts[:-1])
    if counts.size > 1 and not (counts[1:] > 0).all():
        values, mult = np.unique(ends, return_counts=True)
        ends = values[(mult % 2) == 1]
    return ends[ends < n]


def _canonical(counts: np.ndarray, n: int) -> np.ndarray:
    if counts.size and (counts.size == 1 or (counts[1:] > 0).all()):
        return counts
    return _counts_from_toggles(_toggles_from_counts(counts, n), n)


# --------------------------------------------------------------------------------------------
# pycocotools' compressed string, vectorised

#: Up to this many counts a plain loop beats a dozen numpy calls (a typical object's RLE).
_SMALL_COUNTS = 96


def _counts_to_string_small(counts: np.ndarray) -> str:
    """pycocotools ``rleToString`` as its C loop, for short counts (cheaper than numpy calls)."""
    values = counts.tolist()
    out = bytearray()
    for i, x in enumerate(values):
        if i > 2:
            x -= values[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as in C
            more = x != -1 if c & 0x10 else x != 0
            out.append(c + 48 + (0x20 if more else 0))
    return out.decode("ascii")


def _counts_to_string(counts: np.ndarray) -> str:
    """pycocotools ``rleToString`` of int64 ``counts``, vectorised."""
    if counts.size == 0:
        return ""
    if counts.size <= _SMALL_COUNTS:
        return _counts_to_string_small(counts)
    x = counts.astype(np.int64, copy=True)
    if x.size > 3:
        x[3:] -= counts[1:-2]
    chars, _ = _delta_chars(x)
    return chars.tobytes().decode("ascii")


def _delta_chars(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The characters of already delta-coded values ``x`` (int64), and each value's end.

    Returns ``(chars (total,) uint8, ends (x.size,) int64)``: value ``i`` is
    ``chars[ends[i - 1]:ends[i]]``.
    """
    # A value needs k characters when -2**(5k-1) <= x < 2**(5k-1), i.e. u < 2**(5k-1) with
    # u = x for x >= 0 and u = -x - 1 = ~x for x < 0.
    u = x ^ (x >> 63)
    largest = int(u.max())
    nchars = np.ones(x.size, np.int64)
    most, limit = 1, 16
    while limit <= largest:
        nchars += u >= limit
        most, limit = most + 1, limit << 5
    if most == 1:
        return ((x & 0x1F) + 48).astype(np.uint8), np.arange(1, x.size + 1, dtype=np.int64)
    ends = np.cumsum(nchars)
    starts = ends - nchars
    out = np.empty(int(ends[-1]), np.uint8)
    out[starts] = (x & 0x1F) + 48 + 0x20 * (nchars > 1)
    index = np.flatnonzero(nchars > 1)
    for digit in range(1, most):
        part = x[index]
        more = nchars[index] > digit + 1
        out[starts[index] + digit] = ((part >> (5 * digit)) & 0x1F) + 48 + 0x20 * more
        index = index[more]
    return out, ends


def _string_to_counts(data: bytes) -> np.ndarray:
    """pycocotools ``rleFrString``, vectorised and validated: int64 counts (maybe negative)."""
    chars = np.frombuffer(data, np.uint8)
    if chars.size == 0:
        return np.empty(0, np.int64)
    values = chars - np.uint8(48)  # wraps below "0", so one comparison checks the range
    bad = values > 63
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"RLE counts has an invalid character {data[i : i + 1]!r} at position {i}; "
            "allowed are ASCII '0' (48) .. 'o' (111)"
        )
    more = (values & 0x20) != 0
    if more[-1]:
        raise ValueError(
            f"RLE counts string is truncated: its last character {data[-1:]!r} has the "
            "continuation bit 0x20 set"
        )
    if not more.any():  # every count is one character
        x = _signed5(values).astype(np.int64)
    else:
        ends = np.flatnonzero(~more)
        starts = np.empty_like(ends)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        lengths = ends - starts + 1
        longest = int(lengths.max())
        if longest > _MAX_CHARS:
            i = int(np.argmax(lengths > _MAX_CHARS))
            raise ValueError(
                f"RLE count {i} is {int(lengths[i])} characters long; at most {_MAX_CHARS} are "
                "allowed (32-bit counts)"
            )
        # The last character of a count is a signed 5-bit digit, the others unsigned.
        first = values[starts] & 0x1F
        single = lengths == 1
        x = np.where(single, _signed5(first), first).astype(np.int64)
        index = np.flatnonzero(~single)
        for digit in range(1, longest):
            part = values[starts[index] + digit] & 0x1F
            last = lengths[index] == digit + 1
            x[index] += np.where(last, _signed5(part), part).astype(np.int64) << (5 * digit)
            index = index[~last]
    counts = x
    if counts.size > 1:
        counts[1::2] = np.cumsum(x[1::2])
    if counts.size > 2:
        counts[2::2] = np.cumsum(x[2::2])
    return counts


def _signed5(digits: np.ndarray) -> np.ndarray:
    """Two's complement value (int8) of the low 5 bits of uint8 ``digits``."""
    return ((digits & 0x1F) ^ 0x10).view(np.int8) - np.int8(0x10)


def _counts_array(counts: object) -> np.ndarray:
    """Uncompressed counts (sequence or 1-D integer array) as int64, range-checked."""
    if isinstance(counts, np.ndarray):
        arr = counts
    else:
        if isinstance(counts, Sequence) and len(counts) == 0:
            return np.empty(0, np.int64)
        bad = next((c for c in counts if not _is_int(c)), None)  # type: ignore[attr-defined]
        if bad is not None:
            raise ValueError(
                f"uncompressed RLE counts must be ints, got {bad!r} ({type(bad).__name__})"
            )
        try:
            arr = np.asarray(counts)
        except (OverflowError, ValueError) as exc:
            raise ValueError(f"uncompressed RLE counts are not valid integers: {exc}") from None
    if arr.ndim != 1:
        raise ValueError(f"uncompressed RLE counts must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(
            f"uncompressed RLE counts must be integers, got dtype {arr.dtype} "
            f"(values outside int64 or non-ints)"
        )
    if arr.dtype.kind == "u" and arr.max() > MAX_PIXELS:
        raise ValueError(f"RLE run length {int(arr.max())} exceeds {MAX_PIXELS}")
    return arr.astype(np.int64, copy=False)


def _parse(rle: object) -> tuple[int, int, np.ndarray]:
    """Validate an RLE mapping; return ``(h, w, counts)`` with counts int64 summing to h*w."""
    if not isinstance(rle, Mapping):
        raise ValueError(
            f"an RLE must be a mapping with keys 'size' and 'counts', got {type(rle).__name__}"
        )
    for key in ("size", "counts"):
        if key not in rle:
            raise ValueError(f"RLE is missing the key {key!r}; it has {sorted(map(str, rle))}")
    h, w = _check_shape(rle["size"], what="RLE size")
    n = h * w
    raw = rle["counts"]
    if isinstance(raw, str):
        try:
            data = raw.encode("ascii")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"RLE counts string has a non-ASCII character at position {exc.start}; "
                "allowed are '0' .. 'o'"
            ) from None
        counts = _string_to_counts(data)
    elif isinstance(raw, bytes | bytearray | memoryview):
        counts = _string_to_counts(bytes(raw))
    elif isinstance(raw, Sequence | np.ndarray):
        counts = _counts_array(raw)
    else:
        raise ValueError(
            f"RLE counts must be a compressed str/bytes or a list of ints, got {type(raw).__name__}"
        )
    if counts.size == 0:
        if n != 0:
            raise ValueError(f"RLE counts are empty but size [{h}, {w}] needs {n} pixels")
        return h, w, np.zeros(1, np.int64)
    low = int(counts.min())
    if low < 0:
        i = int(np.argmax(counts < 0))
        raise ValueError(f"RLE run {i} has negative length {int(counts[i])}; runs must be >= 0")
    high = int(counts.max())
    if high > n:
        i = int(np.argmax(counts > n))
        raise ValueError(
            f"RLE run {i} has length {int(counts[i])}, more than the {n} pixels of size [{h}, {w}]"
        )
    total = int(counts.sum())
    if total != n:
        raise ValueError(f"RLE counts sum to {total}, but size [{h}, {w}] has {n} pixels")
    return h, w, counts


def _make(h: int, w: int, counts: np.ndarray) -> CocoRLE:
    return {"size": [h, w], "counts": _counts_to_string(counts)}


# --------------------------------------------------------------------------------------------
# public API


def encode(mask: np.ndarray) -> CocoRLE:
    """Encode a binary mask as compressed COCO RLE, identical to ``pycocotools.mask.encode``.

    Parameters
    ----------
    mask : (H, W) bool or integer ndarray
        Nonzero pixels are foreground; any memory layout.

    Returns
    -------
    CocoRLE
        ``{"size": [H, W], "counts": str}`` (see the module docstring for the contract).
    """
    m = _check_mask(mask)
    h, w = m.shape
    toggles = _cancel_pairs(_crop_toggles(m, 0, 0, h))
    return _make(h, w, _counts_from_toggles(toggles, h * w))


def encode_crop(
    mask_crop: np.ndarray, *, offset: tuple[int, int], size: tuple[int, int]
) -> CocoRLE:
    """Encode the full ``size`` mask that is zero except ``mask_crop`` at ``offset``.

    The full ``(H, W)`` mask is never allocated: the cost is proportional to the crop.

    Parameters
    ----------
    mask_crop : (h, w) bool or integer ndarray
        The object's pixels inside its box (nonzero = foreground).
    offset : (y, x)
        Row and column of ``mask_crop[0, 0]`` in the full image.
    size : (H, W)
        Full image size; the crop must lie inside it.

    Returns
    -------
    CocoRLE
        Equal to ``encode(full)`` where ``full[y:y+h, x:x+w] = mask_crop``.
    """
    crop = _check_mask(mask_crop, name="mask_crop")
    height, width = _check_shape(size, what="size")
    y0, x0 = _check_shape(offset, what="offset")
    h, w = crop.shape
    if y0 + h > height or x0 + w > width:
        raise ValueError(
            f"mask_crop of shape ({h}, {w}) at offset ({y0}, {x0}) does not fit in size "
            f"[{height}, {width}]; need offset + crop shape <= size"
        )
    toggles = _cancel_pairs(_crop_toggles(crop, y0, x0, height))
    return _make(height, width, _counts_from_toggles(toggles, height * width))


class EncodedObject(NamedTuple):
    """One object of a label image: its ``label``, COCO ``rle``, ``bbox`` ``(x, y, w, h)``
    (integers, what ``bbox(rle)`` gives) and ``area`` in pixels."""

    label: int
    rle: CocoRLE
    bbox: tuple[int, int, int, int]
    area: int


def _min_max(labels: np.ndarray) -> tuple[int, int]:
    """Smallest and largest id of an integer label image (one OpenCV pass for int32)."""
    if labels.dtype == np.int32 and max(labels.shape) < 1 << 31:  # OpenCV's int dimensions
        import cv2  # core dependency; imported here so that importing segflow.rle stays light

        low, high, _, _ = cv2.minMaxLoc(labels)
        return int(low), int(high)
    return int(labels.min()), int(labels.max())


def encode_objects(labels: np.ndarray) -> list[EncodedObject]:
    """One COCO RLE per nonzero label of a label image, all from one pass over the image.

    Parameters
    ----------
    labels : (H, W) integer or bool ndarray
        0 is background; every other value is one object (need not be connected).
        Negative labels are not allowed.

    Returns
    -------
    list[EncodedObject]
        In increasing label order; ``rle == encode(labels == label)``.

    Notes
    -----
    The image is read once in column-major order (an OpenCV transpose) and cut into runs of
    equal labels; a stable sort by label gives every object's runs in pixel order, from which
    all counts, boxes, areas and compressed strings are computed at once, vectorised. The cost
    is one pass over the image plus a little per run, not per object (a tile with thousands of
    nuclei costs about what one with ten does).
    """
    if not isinstance(labels, np.ndarray):
        raise ValueError(f"labels must be a numpy array, got {type(labels).__name__}")
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D (H, W), got shape {labels.shape}")
    if labels.dtype.kind not in "iub":
        raise ValueError(f"labels dtype {labels.dtype} is not allowed; use an integer dtype")
    height, width = _check_shape(labels.shape, what="labels shape")
    if labels.size == 0:
        return []
    if labels.dtype.kind == "b":
        labels = labels.view(np.uint8)
    if labels.dtype.itemsize > 1:
        low, high = _min_max(labels)
        if low < 0:
            raise ValueError(f"labels must be >= 0 (0 = background), got minimum {low}")
        # few ids (the usual label map): transpose and compare a one- or two-byte copy, a
        # quarter of the memory traffic of int32 ids; the ids themselves are unchanged
        if high < 1 << 8:
            labels = labels.astype(np.uint8)
        elif high < 1 << 16 and labels.dtype.itemsize > 2:
            labels = labels.astype(np.uint16)
    n = height * width
    flat = _transpose(labels).ravel()  # column-major order
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([np.zeros(1, np.int64), change])
    ends = np.concatenate([change, np.full(1, n, np.int64)])
    values = flat[starts]
    foreground = values != 0
    if not foreground.any():
        return []
    starts, ends, values = starts[foreground], ends[foreground], values[foreground]
    order = np.argsort(values, kind="stable")  # by label; runs of one label stay in pixel order
    starts, ends, values = starts[order], ends[order], values[order]
    n_runs = values.size
    first = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    last = np.concatenate([first[1:], [n_runs]]) - 1
    runs = last - first + 1
    obj = np.repeat(np.arange(first.size), runs)  # object index of every run

    # counts of object k: gap, run, gap, run, ..., then the trailing gap when it is not empty
    previous_end = np.concatenate([np.zeros(1, np.int64), ends[:-1]])
    previous_end[first] = 0
    tail = n - ends[last]
    n_counts = 2 * runs + (tail > 0)
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(n_counts)])
    counts = np.empty(int(offsets[-1]), np.int64)
    at = offsets[obj] + 2 * (np.arange(n_runs) - first[obj])
    counts[at] = starts - previous_end
    counts[at + 1] = ends - starts
    counts[(offsets[1:] - 1)[tail > 0]] = tail[tail > 0]
    # pycocotools codes count i > 2 of each object as the difference to count i - 2
    local = np.arange(counts.size) - np.repeat(offsets[:-1], n_counts)
    coded = counts.copy()
    later = np.flatnonzero(local > 2)
    coded[later] -= counts[later - 2]
    chars, char_ends = _delta_chars(coded)
    text = chars.tobytes().decode("ascii")
    char_bounds = np.concatenate([np.zeros(1, np.int64), char_ends[offsets[1:] - 1]])

    # boxes: a run inside one column spans its rows; one wrapping into the next column spans
    # every row
    col_start, row_start = np.divmod(starts, height)
    col_end, row_end = np.divmod(ends - 1, height)
    wraps = col_start != col_end
    row_start[wraps] = 0
    row_end[wraps] = height - 1
    y0 = np.minimum.reduceat(row_start, first)
    y1 = np.maximum.reduceat(row_end, first)
    x0, x1 = col_start[first], col_end[last]
    area = np.add.reduceat(ends - starts, first)

    size = [height, width]
    return [
        EncodedObject(
            label=label,
            rle={"size": list(size), "counts": text[a:b]},
            bbox=(bx0, by0, bx1 - bx0 + 1, by1 - by0 + 1),
            area=ar,
        )
        for label, a, b, bx0, by0, bx1, by1, ar in zip(
            values[first].tolist(),
            char_bounds[:-1].tolist(),
            char_bounds[1:].tolist(),
            x0.tolist(),
            y0.tolist(),
            x1.tolist(),
            y1.tolist(),
            area.tolist(),
            strict=True,
        )
    ]


def encode_labels(labels: np.ndarray) -> dict[int, CocoRLE]:
    """Label -> ``encode(labels == label)`` for every nonzero label (see :func:`encode_objects`).

    ``labels`` (H, W) integer or bool ndarray, 0 = background, no negative values; the dict is
    in increasing label order.
    """
    return {obj.label: obj.rle for obj in encode_objects(labels)}


def decode(rle: Mapping[str, Any], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a COCO RLE to an ``(H, W)`` uint8 mask of 0 and 1.

    Parameters
    ----------
    rle : mapping
        ``{"size": [H, W], "counts": ...}`` with counts a compressed ``str``/``bytes`` or an
        uncompressed list of ints.
    max_pixels : int
        Refuse (``ValueError``) masks with more pixels than this, before allocating.

    Returns
    -------
    (H, W) uint8 ndarray
        Fortran-ordered, as pycocotools returns it (``np.ascontiguousarray`` for C order).
    """
    h, w, counts = _parse(rle)
    _check_max_pixels(h, w, max_pixels)
    values = np.zeros(counts.size, np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, counts)
    return flat.reshape(w, h).T


def area(rle: Mapping[str, Any]) -> int:
    """Number of foreground pixels of an RLE (as ``pycocotools.mask.area``), without decoding."""
    _, _, counts = _parse(rle)
    return int(counts[1::2].sum())


def bbox(rle: Mapping[str, Any]) -> list[float]:
    """Bounding box ``[x, y, w, h]`` of the foreground, as ``pycocotools.mask.toBbox``.

    Computed from the runs, without decoding. An empty mask gives ``[0, 0, 0, 0]``; a run that
    spans several columns makes the box cover the full height of those columns, exactly as
    pycocotools does.
    """
    h, w, counts = _parse(rle)
    counts = _canonical(counts, h * w)
    m = (counts.size // 2) * 2
    if m == 0:
        return [0.0, 0.0, 0.0, 0.0]
    cum = np.cumsum(counts[:m])
    pixel = cum.copy()
    pixel[1::2] -= 1  # last pixel of each foreground run; [0::2] is its first pixel
    xs, ys = np.divmod(pixel, h)
    x_min, x_max = int(xs.min()), int(xs.max())
    if (xs[0::2] < xs[1::2]).any():
        y_min, y_max = 0, h - 1
    else:
        y_min, y_max = int(ys.min()), int(ys.max())
    return [float(x_min), float(y_min), float(x_max - x_min + 1), float(y_max - y_min + 1)]


def merge(rles: Iterable[Mapping[str, Any]], *, intersect: bool = False) -> CocoRLE:
    """Union (or intersection) of RLEs of one size, computed on the runs, without decoding.

    Equal to ``pycocotools.mask.merge(rles, intersect=intersect)`` for valid inputs; unlike
    pycocotools, an empty list or different sizes raise ``ValueError``.

    Parameters
    ----------
    rles : iterable of mappings
        RLEs with the same ``size``.
    intersect : bool
        ``False``: pixels in any mask; ``True``: pixels in all masks.
    """
    parsed = [_parse(r) for r in rles]
    if not parsed:
        raise ValueError("merge needs at least one RLE, got none")
    h, w = parsed[0][0], parsed[0][1]
    for i, (hi, wi, _) in enumerate(parsed):
        if (hi, wi) != (h, w):
            raise ValueError(
                f"merge needs RLEs of one size: RLE {i} has size [{hi}, {wi}], RLE 0 has [{h}, {w}]"
            )
    n = h * w
    if len(parsed) == 1:
        return _make(h, w, _canonical(parsed[0][2], n))
    positions: list[np.ndarray] = []
    deltas: list[np.ndarray] = []
    for _, _, counts in parsed:
        toggles = _toggles_from_counts(counts, n)
        starts = toggles[0::2]
        ends = toggles[1::2]
        if ends.size < starts.size:
            ends = np.append(ends, n)
        positions += [starts, ends]
        deltas += [np.ones(starts.size, np.int64), np.full(ends.size, -1, np.int64)]
    pos = np.concatenate(positions)
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    coverage = np.cumsum(np.concatenate(deltas)[order])
    last = np.ones(pos.size, np.bool_)
    last[:-1] = pos[1:] != pos[:-1]
    pos, coverage = pos[last], coverage[last]
    state = coverage == len(parsed) if intersect else coverage > 0
    changed = state.copy()
    changed[1:] = state[1:] != state[:-1]
    toggles = pos[changed]
    return _make(h, w, _counts_from_toggles(toggles[toggles < n], n))


def encode_kaggle(mask: np.ndarray, *, order: Order) -> str:
    """Kaggle "start length" run-length string of a mask.

    Parameters
    ----------
    mask : (H, W) bool or integer ndarray
        Nonzero = foreground.
    order : "F" or "C"
        Pixel numbering: ``"F"`` column-major (top to bottom, then left to right), ``"C"``
        row-major. Starts are 1-based.

    Returns
    -------
    str
        ``"start length start length ..."`` with increasing starts; ``""`` for an empty mask.
    """
    m = _check_mask(mask)
    order = _check_order(order)
    h, w = m.shape
    n = h * w
    if order == "F":
        toggles = _cancel_pairs(_crop_toggles(m, 0, 0, h))
    else:
        flat = np.ascontiguousarray(m).ravel()
        if flat.size == 0:
            return ""
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        toggles = np.concatenate([[0], change]) if flat[0] else change
    starts = toggles[0::2]
    ends = toggles[1::2]
    if ends.size < starts.size:
        ends = np.append(ends, n)
    pairs = np.empty(2 * starts.size, np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = ends - starts
    return " ".join(map(str, pairs.tolist()))


def decode_kaggle(
    s: str, *, shape: tuple[int, int], order: Order, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode a Kaggle "start length" string (1-based starts) to an ``(H, W)`` uint8 mask.

    Parameters
    ----------
    s : str
        Space-separated pairs; runs must be in increasing order, not overlap, have length >= 1
        and lie inside the image. An empty (or blank) string is an empty mask.
    shape : (H, W)
        Image size.
    order : "F" or "C"
        Pixel numbering the string uses (see :func:`encode_kaggle`).
    max_pixels : int
        Refuse larger shapes before allocating.
    """
    h, w = _check_shape(shape, what="shape")
    order = _check_order(order)
    _check_max_pixels(h, w, max_pixels)
    if not isinstance(s, str):
        raise ValueError(f"a Kaggle RLE must be a str, got {type(s).__name__}")
    n = h * w
    tokens = s.split()
    if len(tokens) % 2:
        raise ValueError(f"a Kaggle RLE needs start/length pairs, got {len(tokens)} numbers")
    if len(tokens) > 2 * n:
        raise ValueError(
            f"a Kaggle RLE with {len(tokens) // 2} runs cannot fit {n} pixels of shape [{h}, {w}]"
        )
    try:
        values = np.array([int(t) for t in tokens], np.int64)
    except (ValueError, OverflowError):
        bad = next(t for t in tokens if not _looks_int(t))
        raise ValueError(f"a Kaggle RLE must hold integers, got {bad!r}") from None
    starts = values[0::2] - 1
    lengths = values[1::2]
    if starts.size:
        if starts.min() < 0:
            raise ValueError(f"Kaggle RLE starts are 1-based, got start {int(starts.min()) + 1}")
        if lengths.min() < 1:
            raise ValueError(f"Kaggle RLE run lengths must be >= 1, got {int(lengths.min())}")
        ends = starts + lengths
        if ends.max() > n:
            raise ValueError(
                f"a Kaggle RLE run ends at pixel {int(ends.max())}, beyond the {n} pixels of "
                f"shape [{h}, {w}]"
            )
        if (starts[1:] < ends[:-1]).any():
            i = int(np.argmax(starts[1:] < ends[:-1]))
            raise ValueError(
                f"Kaggle RLE runs must be increasing and not overlap: run {i + 1} starts at "
                f"{int(starts[i + 1]) + 1}, before run {i} ends at {int(ends[i])}"
            )
    else:
        ends = starts
    bounds = np.empty(2 * starts.size + 2, np.int64)
    bounds[0] = 0
    bounds[1:-1:2] = starts
    bounds[2:-1:2] = ends
    bounds[-1] = n
    values01 = np.zeros(bounds.size - 1, np.uint8)
    values01[1::2] = 1
    flat = np.repeat(values01, np.diff(bounds))
    return flat.reshape(w, h).T if order == "F" else flat.reshape(h, w)


def _looks_int(token: str) -> bool:
    try:
        value = int(token)
    except ValueError:
        return False
    return -(1 << 63) <= value < 1 << 63
