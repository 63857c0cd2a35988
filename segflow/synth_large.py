"""Synthetic nuclei fields of any size, rendered window by window with known ground truth.

:class:`NucleiField` places one elliptical "nucleus" per cell of a jittered grid (a few cells
stay empty), so objects never touch and their number is known exactly. Any window of the image
and of its instance labels can be rendered on its own, and every pixel's value depends only on
its position: a 20,000 x 20,000 field is written to a tiled TIFF tile by tile
(:meth:`NucleiField.write_tiff`), in memory bounded by one tile (plus the pyramid levels, 1/16
and 1/256 of the pixels).

Recipe (8-bit grey): background ``0.12-0.22`` with a smooth illumination ramp; each object a
filled ellipse (semi-axes ``radius``, random orientation) of brightness ``0.55-0.9`` with an
anti-aliased one-pixel edge and a gentle shading towards the rim; gaussian noise
(sigma 0.03) drawn per 256 x 256 block from a generator seeded by ``(seed, block row,
block column)``. Object ids are ``cell index + 1`` (row-major over the grid), so a window's labels
name the same objects as the whole image's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["NucleiField"]

_NOISE_BLOCK = 256
_NOISE_SIGMA = 0.03


@dataclass(frozen=True)
class NucleiField:
    """A deterministic field of non-touching nuclei on a jittered grid.

    Parameters
    ----------
    height, width : int
        Image size in pixels (>= 1).
    spacing : int
        Grid cell side in pixels (>= 16); one object per cell at most.
    radius : (low, high)
        Range of the ellipses' semi-axes in pixels, ``2 <= low <= high`` and
        ``2 * high + 4 <= spacing * (1 - 2 * jitter)`` so objects never touch.
    jitter : float
        Centre offset from the cell centre, as a fraction of ``spacing`` (``0 <= jitter < 0.5``).
    fill : float
        Fraction of cells holding an object.
    seed : int
    """

    height: int
    width: int
    spacing: int = 48
    radius: tuple[float, float] = (5.0, 12.0)
    jitter: float = 0.12
    fill: float = 0.97
    seed: int = 0
    _cells: dict[str, np.ndarray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, value in (("height", self.height), ("width", self.width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.spacing, int) or self.spacing < 16:
            raise ValueError(f"spacing must be an integer >= 16, got {self.spacing!r}")
        lo, hi = self.radius
        if not 2 <= lo <= hi:
            raise ValueError(f"radius must be (low, high) with 2 <= low <= high, got {self.radius}")
        if not 0 <= self.jitter < 0.5:
            raise ValueError(f"jitter must be in [0, 0.5), got {self.jitter}")
        if 2 * hi + 4 > self.spacing * (1 - 2 * self.jitter):
            raise ValueError(
                f"objects could touch: need 2 * radius_high + 4 <= spacing * (1 - 2 * jitter), got "
                f"{2 * hi + 4} > {self.spacing * (1 - 2 * self.jitter):.1f}"
            )
        if not 0 < self.fill <= 1:
            raise ValueError(f"fill must be in (0, 1], got {self.fill}")
        ny, nx = self.grid
        rng = np.random.default_rng(self.seed)
        s = self.spacing
        cells = {
            "present": rng.random((ny, nx)) < self.fill,
            "cy": (np.arange(ny)[:, None] + 0.5) * s
            + rng.uniform(-1, 1, (ny, nx)) * self.jitter * s,
            "cx": (np.arange(nx)[None, :] + 0.5) * s
            + rng.uniform(-1, 1, (ny, nx)) * self.jitter * s,
            "a": rng.uniform(lo, hi, (ny, nx)),
            "ratio": rng.uniform(0.6, 1.0, (ny, nx)),
            "theta": rng.uniform(0, math.pi, (ny, nx)),
            "bright": rng.uniform(0.55, 0.9, (ny, nx)),
        }
        object.__setattr__(self, "_cells", cells)

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, columns)`` of grid cells: only whole cells inside the image hold objects."""
        return max(1, self.height // self.spacing), max(1, self.width // self.spacing)

    @property
    def n_objects(self) -> int:
        """Number of objects in the image (the ground-truth count)."""
        return int(np.count_nonzero(self._cells["present"]))

    def objects(self) -> dict[str, np.ndarray]:
        """Per present object: ``id``, centre ``cy``/``cx``, semi-axes ``a``/``b`` (pixels)."""
        c = self._cells
        present = c["present"]
        ids = np.flatnonzero(present.ravel()) + 1
        return {
            "id": ids,
            "cy": c["cy"][present],
            "cx": c["cx"][present],
            "a": c["a"][present],
            "b": (c["a"] * c["ratio"])[present],
        }

    def _background(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        ramp = 0.12 + 0.1 * (
            ys[:, None] / max(1, self.height) * 0.6 + xs[None, :] / max(1, self.width) * 0.4
        )
        return ramp.astype(np.float32)

    def _noise(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        out = np.empty((h, w), dtype=np.float32)
        b = _NOISE_BLOCK
        for by in range(y // b, (y + h - 1) // b + 1):
            for bx in range(x // b, (x + w - 1) // b + 1):
                block = np.random.default_rng([self.seed, by, bx]).standard_normal(
                    (b, b), dtype=np.float32
                )
                ya, yb = max(y, by * b), min(y + h, (by + 1) * b)
                xa, xb = max(x, bx * b), min(x + w, (bx + 1) * b)
                out[ya - y : yb - y, xa - x : xb - x] = block[
                    ya - by * b : yb - by * b, xa - bx * b : xb - bx * b
                ]
        return out * np.float32(_NOISE_SIGMA)

    def render(self, *, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixels and labels of the window ``[y:y+h, x:x+w]``.

        Returns
        -------
        image : (h, w) uint8
        labels : (h, w) int32, 0 = background, object ids as :meth:`objects` gives them
        """
        if h < 1 or w < 1 or y < 0 or x < 0 or y + h > self.height or x + w > self.width:
            raise ValueError(
                f"window y={y}, x={x}, h={h}, w={w} must lie inside {self.height} x {self.width}"
            )
        ys = np.arange(y, y + h, dtype=np.float32)
        xs = np.arange(x, x + w, dtype=np.float32)
        signal = self._background(ys, xs)
        labels = np.zeros((h, w), dtype=np.int32)
        s = self.spacing
        reach = self.radius[1] + self.jitter * s + 2
        ny, nx = self.grid
        c = self._cells
        r0 = max(0, int((y - reach) // s))
        r1 = min(ny - 1, int((y + h + reach) // s))
        q0 = max(0, int((x - reach) // s))
        q1 = min(nx - 1, int((x + w + reach) // s))
        for r in range(r0, r1 + 1):
            for q in range(q0, q1 + 1):
                if not c["present"][r, q]:
                    continue
                cy, cx, a = float(c["cy"][r, q]), float(c["cx"][r, q]), float(c["a"][r, q])
                ya, yb = max(y, int(cy - a) - 2), min(y + h, int(cy + a) + 3)
                xa, xb = max(x, int(cx - a) - 2), min(x + w, int(cx + a) + 3)
                if ya >= yb or xa >= xb:
                    continue
                b = a * float(c["ratio"][r, q])
                t = float(c["theta"][r, q])
                dy = np.arange(ya, yb, dtype=np.float32)[:, None] - np.float32(cy)
                dx = np.arange(xa, xb, dtype=np.float32)[None, :] - np.float32(cx)
                u = (dx * math.cos(t) + dy * math.sin(t)) / a
                v = (-dx * math.sin(t) + dy * math.cos(t)) / b
                rn = np.sqrt(u * u + v * v)
                inside = rn <= 1.0
                edge = np.clip((1.0 - rn) * b + 0.5, 0.0, 1.0)  # ~1 px anti-aliased rim
                value = float(c["bright"][r, q]) * (1.0 - 0.25 * rn * rn)
                sub = signal[ya - y : yb - y, xa - x : xb - x]
                sub += (edge * (value - sub)).astype(np.float32)
                labels[ya - y : yb - y, xa - x : xb - x][inside] = r * nx + q + 1
        signal += self._noise(y, x, h, w)
        image = np.clip(np.rint(signal * 255.0), 0, 255).astype(np.uint8)
        return image, labels

    def image(self) -> np.ndarray:
        """The whole image ``(H, W) uint8`` (small fields only)."""
        return self.render(y=0, x=0, h=self.height, w=self.width)[0]

    def labels(self) -> np.ndarray:
        """The whole label image ``(H, W) int32`` (small fields only)."""
        return self.render(y=0, x=0, h=self.height, w=self.width)[1]

    def write_tiff(
        self,
        path: str | os.PathLike[str],
        *,
        tile: int = 256,
        levels: Sequence[int] = (4, 16),
        compression: str | None = "zlib",
        labels_path: str | os.PathLike[str] | None = None,
    ) -> Path:
        """Write the image as a tiled TIFF, tile by tile, with pyramid levels as SubIFDs.

        ``levels``: downsampling factors of the stored reduced resolutions (block means; each
        must divide ``tile``). ``labels_path``: also write the labels as a tiled int32 TIFF.
        Memory: one tile plus the level arrays. Written to a temporary name, then renamed.
        """
        import tifffile

        for f in levels:
            if tile % f:
                raise ValueError(f"every level factor must divide tile={tile}, got {f}")
        path = Path(path)
        height, width = self.height, self.width
        level_arrays = [
            np.zeros((-(-height // f), -(-width // f)), dtype=np.float32) for f in levels
        ]

        def tiles(want_labels: bool) -> Iterator[np.ndarray]:
            for ty in range(0, height, tile):
                for tx in range(0, width, tile):
                    h, w = min(tile, height - ty), min(tile, width - tx)
                    img, lab = self.render(y=ty, x=tx, h=h, w=w)
                    if want_labels:
                        out_l = np.zeros((tile, tile), dtype=np.int32)
                        out_l[:h, :w] = lab
                        yield out_l
                        continue
                    for f, arr in zip(levels, level_arrays, strict=True):
                        hh, ww = -(-h // f), -(-w // f)
                        pad = np.zeros((hh * f, ww * f), dtype=np.float32)
                        pad[:h, :w] = img
                        cnt = np.zeros((hh * f, ww * f), dtype=np.float32)
                        cnt[:h, :w] = 1
                        sums = pad.reshape(hh, f, ww, f).sum(axis=(1, 3))
                        n = cnt.reshape(hh, f, ww, f).sum(axis=(1, 3))
                        arr[ty // f : ty // f + hh, tx // f : tx // f + ww] = sums / n
                    out = np.zeros((tile, tile), dtype=np.uint8)
                    out[:h, :w] = img
                    yield out

        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tifffile.TiffWriter(tmp, bigtiff=height * width > 2**31) as tw:
            tw.write(
                tiles(False),
                shape=(height, width),
                dtype=np.uint8,
                tile=(tile, tile),
                compression=compression,
                subifds=len(levels),
            )
            for arr in level_arrays:
                tw.write(
                    np.clip(np.rint(arr), 0, 255).astype(np.uint8),
                    tile=(tile, tile),
                    compression=compression,
                    subfiletype=1,
                )
        os.replace(tmp, path)
        if labels_path is not None:
            lp = Path(labels_path)
            tmp = lp.with_name(f".{lp.name}.{os.getpid()}.tmp")
            with tifffile.TiffWriter(tmp, bigtiff=height * width * 4 > 2**31) as tw:
                tw.write(
                    tiles(True),
                    shape=(height, width),
                    dtype=np.int32,
                    tile=(tile, tile),
                    compression=compression,
                )
            os.replace(tmp, lp)
        return path
