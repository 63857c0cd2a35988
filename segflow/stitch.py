"""Instance stitching: per-tile label maps merged into one image-wide label map.

How tiles are merged
--------------------
1. **Matching by mask overlap.** Every pair of neighbouring windows in the grid (side and
   corner neighbours) is compared on the pixels the two windows share. (Windows further apart
   can share pixels too, when an edge window was shifted inward or the overlap is large; those
   pixels lie inside every window in between, so the chain of neighbours links them.) Two tile labels that cover a common pixel there are the same object; the pairs are
   joined with a union-find (``scipy.sparse.csgraph.connected_components``). Boxes play no part.
   ``min_overlap`` can demand more than one shared pixel, as a fraction of the smaller of the two
   labels' areas inside the shared band, for labelers (watershed, learned models) whose splits
   can wobble between tiles.
2. **Ownership.** Each pixel takes its label from exactly one tile: the one whose centre is
   nearest (per axis, the boundary sits at the midpoint between neighbouring window centres, i.e.
   the middle of the overlap band; ties go to the later window). Far from its tile's border a
   pixel has the most context, and the result is a clean partition: no pixel is claimed twice.
3. **Ids** are renumbered to ``1..N`` (0 is background); objects that no pixel's owner reports
   (e.g. seen only in another tile's margin) vanish.

When is the result exact?
-------------------------
For a *local* labeler -- connected components of a fixed threshold, with 4- or 8-connectivity --
and ``overlap >= 1``, the stitched map equals the untiled labeling up to renumbering: every two
adjacent pixels lie together in at least one window (windows overlap by at least one pixel), so
the chain of tile labels along any path inside an object is joined through shared pixels, and
tile components never span two untiled objects. Labelers that look at whole-tile statistics
(per-tile thresholds, per-tile size filters, watershed seeds near the border) can disagree
between tiles; the overlap band then decides, so make it wider than the objects' typical size.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from segflow.tiling import Window, pad_to_tile, tile_grid

logger = logging.getLogger(__name__)

Labeler = Callable[[np.ndarray], np.ndarray]


def _compact(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered to ``0..n`` (0 kept for background) when their ids are sparse."""
    uniq, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if uniq[0] != 0:
        inverse += 1
    return inverse


def _relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """``(H, W)`` int32 labels renumbered to ``1..N`` in order of their old ids (0 stays 0)."""
    if labels.size == 0:
        return labels.astype(np.int32)
    present = np.bincount(labels.ravel()) > 0
    present[0] = False
    lut = np.cumsum(present, dtype=np.int64).astype(np.int32)
    lut[~present] = 0
    return lut[labels]


def _ownership(starts: Sequence[int], size: int, length: int) -> list[tuple[int, int]]:
    """Per window start along one axis, the ``[begin, end)`` range of pixels it owns."""
    bounds = [0]
    for prev, nxt in itertools.pairwise(starts):
        bounds.append((prev + nxt + size) // 2)
    bounds.append(length)
    return list(itertools.pairwise(bounds))


def _axis_pairs(starts: Sequence[int], size: int) -> list[tuple[int, int]]:
    """Index pairs ``(i, i + 1)`` of consecutive windows along one axis (they share pixels)."""
    return [(i, i + 1) for i in range(len(starts) - 1) if starts[i + 1] < starts[i] + size]


def _check_tiles(
    tiles: Sequence[tuple[Window, np.ndarray]], height: int, width: int
) -> tuple[list[int], list[int], int, int, dict[tuple[int, int], np.ndarray]]:
    """Validate the tiles; return row starts, column starts, window size and the grid."""
    if len(tiles) == 0:
        raise ValueError("tiles must contain at least one (window, labels) pair, got none")
    sizes = {(int(window.h), int(window.w)) for window, _ in tiles}
    if len(sizes) != 1:
        raise ValueError(f"all windows must have the same size, got sizes {sorted(sizes)}")
    tile_h, tile_w = sizes.pop()
    grid: dict[tuple[int, int], np.ndarray] = {}
    for window, labels in tiles:
        labels = np.asarray(labels)
        y, x = int(window.y), int(window.x)
        if y < 0 or x < 0 or y + tile_h > height or x + tile_w > width:
            raise ValueError(f"window {window} must lie inside the image of size {(height, width)}")
        if labels.shape != (tile_h, tile_w):
            raise ValueError(
                f"labels of window {window} must have shape {(tile_h, tile_w)}, got {labels.shape}"
            )
        if labels.dtype.kind not in "iu":
            raise ValueError(
                f"labels must be an integer array, got dtype {labels.dtype} for window {window}"
            )
        if labels.size and labels.min() < 0:
            raise ValueError(
                f"labels must be >= 0 (0 = background), got {labels.min()} in window {window}"
            )
        if (y, x) in grid:
            raise ValueError(f"window {window} appears more than once")
        grid[(y, x)] = labels
    ys = sorted({y for y, _ in grid})
    xs = sorted({x for _, x in grid})
    if len(grid) != len(ys) * len(xs):
        raise ValueError(
            f"windows must form a full grid (every row start with every column start, as tile_grid "
            f"makes): got {len(grid)} windows for {len(ys)} row starts x {len(xs)} column starts"
        )
    for axis, starts, size, length in (("row", ys, tile_h, height), ("column", xs, tile_w, width)):
        if starts[0] != 0 or starts[-1] + size != length:
            raise ValueError(
                f"windows must cover the image: {axis} windows span [{starts[0]}, "
                f"{starts[-1] + size}), image has {length} {axis}s"
            )
        for prev, nxt in itertools.pairwise(starts):
            if nxt > prev + size:
                raise ValueError(f"{axis} windows at {prev} and {nxt} (size {size}) leave a gap")
    return ys, xs, tile_h, tile_w, grid


def stitch_instances(
    tiles: Sequence[tuple[Window, np.ndarray]],
    *,
    height: int,
    width: int,
    min_overlap: float = 0.0,
) -> np.ndarray:
    """Merge per-tile label maps into one image-wide label map.

    Parameters
    ----------
    tiles : sequence of (Window, (h, w) int labels)
        One label map per window (0 = background, objects ``> 0``, ids local to the tile and
        any non-negative integers). The windows must form a full grid covering the image, as
        :func:`segflow.tiling.tile_grid` returns (any order).
    height, width : int
        Image size; every window lies inside it.
    min_overlap : float
        ``0 <= min_overlap < 1``. Two tile labels are the same object when they share more than
        ``min_overlap * min(area_a, area_b)`` pixels, areas counted inside the shared band. The
        default 0 merges on any shared pixel, which is exact for connected components.

    Returns
    -------
    (H, W) int32
        Image-wide labels, 0 = background, objects numbered ``1..N``. Each pixel's label comes
        from the tile whose centre is nearest (see the module docstring).
    """
    for side in (height, width):
        if isinstance(side, bool) or not isinstance(side, int | np.integer) or side < 1:
            raise ValueError(
                f"height and width must be integers >= 1, got {height!r} and {width!r}"
            )
    height, width = int(height), int(width)
    if not 0.0 <= float(min_overlap) < 1.0:
        raise ValueError(f"min_overlap must be in [0, 1), got {min_overlap!r}")
    ys, xs, tile_h, tile_w, grid = _check_tiles(tiles, height, width)

    # Tile-local labels -> global node ids: node = offset[tile] + label - 1.
    labels_by_index: dict[tuple[int, int], np.ndarray] = {}
    offsets: dict[tuple[int, int], int] = {}
    counts: dict[tuple[int, int], int] = {}
    total = 0
    for r, y in enumerate(ys):
        for c, x in enumerate(xs):
            labels = grid[(y, x)]
            top = int(labels.max()) if labels.size else 0
            if top > labels.size:
                labels = _compact(labels)
                top = int(labels.max())
            labels_by_index[(r, c)] = labels
            offsets[(r, c)] = total
            counts[(r, c)] = top
            total += top

    sources, targets = [], []
    # Every unordered pair of neighbouring windows once: rows ordered r1 <= r2; columns in both
    # orders (so anti-diagonal neighbours are included), and ordered c1 < c2 on a row tie.
    row_pairs = [(r, r) for r in range(len(ys))] + _axis_pairs(ys, tile_h)
    x_pairs = _axis_pairs(xs, tile_w)
    col_pairs = [(c, c) for c in range(len(xs))] + x_pairs + [(j, i) for i, j in x_pairs]
    for r1, r2 in row_pairs:
        for c1, c2 in col_pairs:
            if r1 == r2 and c1 >= c2:
                continue
            y0, y1 = ys[r2], ys[r1] + tile_h
            x0, x1 = max(xs[c1], xs[c2]), min(xs[c1], xs[c2]) + tile_w
            la = labels_by_index[(r1, c1)][y0 - ys[r1] : y1 - ys[r1], x0 - xs[c1] : x1 - xs[c1]]
            lb = labels_by_index[(r2, c2)][y0 - ys[r2] : y1 - ys[r2], x0 - xs[c2] : x1 - xs[c2]]
            a, b = matched_pairs(la, lb, min_overlap)
            sources.append(a.astype(np.int64) + offsets[(r1, c1)] - 1)
            targets.append(b.astype(np.int64) + offsets[(r2, c2)] - 1)

    out = np.zeros((height, width), dtype=np.int32)
    if total == 0:
        return out
    src = np.concatenate(sources) if sources else np.zeros(0, dtype=np.int64)
    dst = np.concatenate(targets) if targets else np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(total, total))
    n_components, component = connected_components(graph, directed=False)

    # Ownership: the nearest window centre, per axis.
    row_own = _ownership(ys, tile_h, height)
    col_own = _ownership(xs, tile_w, width)
    owned: dict[tuple[int, int], np.ndarray] = {}
    present = np.zeros(n_components, dtype=bool)
    for r, (r0, r1) in enumerate(row_own):
        for c, (c0, c1) in enumerate(col_own):
            if counts[(r, c)] == 0:
                continue
            local = labels_by_index[(r, c)][r0 - ys[r] : r1 - ys[r], c0 - xs[c] : c1 - xs[c]]
            seen = np.flatnonzero(np.bincount(local.ravel(), minlength=counts[(r, c)] + 1)[1:])
            present[component[offsets[(r, c)] + seen]] = True
            owned[(r, c)] = local
    final_id = np.cumsum(present, dtype=np.int64)
    if final_id[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"too many objects for int32 labels: {final_id[-1]}")
    for (r, c), local in owned.items():
        start = offsets[(r, c)]
        lut = np.zeros(counts[(r, c)] + 1, dtype=np.int32)
        lut[1:] = final_id[component[start : start + counts[(r, c)]]]
        (r0, r1), (c0, c1) = row_own[r], col_own[c]
        out[r0:r1, c0:c1] = lut[local]
    logger.debug("stitch_instances: %d tile labels -> %d objects", total, int(final_id[-1]))
    return out


def matched_pairs(
    la: np.ndarray, lb: np.ndarray, min_overlap: float
) -> tuple[np.ndarray, np.ndarray]:
    """Unique label pairs ``(a, b)`` (both ``> 0``) sharing enough pixels of the band."""
    both = (la > 0) & (lb > 0)
    a = la[both].astype(np.int64)
    b = lb[both].astype(np.int64)
    if a.size == 0:
        return a, b
    width = int(lb.max()) + 1
    keys, shared = np.unique(a * width + b, return_counts=True)
    a, b = keys // width, keys % width
    if min_overlap > 0:
        area_a = np.bincount(la.ravel())
        area_b = np.bincount(lb.ravel())
        keep = shared > min_overlap * np.minimum(area_a[a], area_b[b])
        a, b = a[keep], b[keep]
    return a, b


def label_tiled(
    image: np.ndarray,
    labeler: Labeler,
    *,
    tile: int,
    overlap: int,
    min_overlap: float = 0.0,
) -> np.ndarray:
    """Label objects tile by tile and stitch the tiles into one image-wide label map.

    Parameters
    ----------
    image : (C, H, W) float32
        The image. Sides shorter than ``tile`` are padded by reflection
        (:func:`segflow.tiling.pad_to_tile`); the result is cropped back and renumbered.
    labeler : callable
        Maps one tile ``(C, tile, tile) float32`` to a ``(tile, tile)`` integer label map
        (0 = background).
    tile : int
        Window side, ``>= 1``.
    overlap : int
        Window overlap, ``1 <= overlap < tile``: objects are matched on the pixels neighbouring
        windows share, so the windows must share some.
    min_overlap : float
        See :func:`stitch_instances`.

    Returns
    -------
    (H, W) int32
        Objects numbered ``1..N``; an object crossing tile borders is one id. Exactly the
        untiled labeling (up to renumbering) for connected components of a fixed threshold.

    Notes
    -----
    All tile label maps are held until the stitch: about ``(1 + overlap / tile) ** 2`` times the
    image's pixels in the labeler's integer dtype.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        raise ValueError(
            f"image must be a (C, H, W) ndarray, got shape {getattr(image, 'shape', None)}"
        )
    padded, (height, width) = pad_to_tile(image, tile)
    padded_h, padded_w = padded.shape[1:]
    windows = tile_grid(padded_h, padded_w, tile=tile, overlap=overlap)
    if overlap < 1:
        raise ValueError(
            f"overlap must be >= 1 for instance stitching (objects are matched on shared pixels), got {overlap}"
        )
    tiles = []
    for window in windows:
        rows, cols = window.slices
        labels = np.asarray(labeler(padded[:, rows, cols]))
        if labels.shape != (window.h, window.w):
            raise ValueError(
                f"labeler must return a ({window.h}, {window.w}) label map, got shape {labels.shape}"
            )
        tiles.append((window, labels))
    stitched = stitch_instances(tiles, height=padded_h, width=padded_w, min_overlap=min_overlap)
    if (padded_h, padded_w) != (height, width):
        stitched = _relabel_consecutive(stitched[:height, :width])
    return stitched
