"""Window sources: images read rectangle by rectangle, never whole (tiled TIFF, Zarr, arrays).

A :class:`WindowSource` answers four questions about a large image without decoding it:
its size (``height``, ``width``), its samples per pixel and dtype, which downsampled copies it
stores (``levels``: TIFF pyramid levels / SubIFDs, OME-Zarr multiscale datasets), and the pixels
of a window::

    with open_source("scan.tif") as src:
        block = src.read(y=0, x=0, h=512, w=src.width)     # (512, W) or (512, W, C), native dtype

Windows come back exactly as :func:`segflow.io.read_image` would return that part of the image
(RGB order, palette expanded, MINISWHITE inverted; ``labels=True`` gives raw label values), so a
pipeline that streams windows sees the same pixels as one that reads the file whole.

* :class:`TiffSource` wraps :class:`segflow.io.TiffWindowReader` (tiled or striped TIFF, any
  compression imagecodecs decodes): only the tiles/strips a window touches are decoded, so the
  decompression-bomb guard (``max_pixels``) does not apply. Pyramid levels are the series'
  ``levels`` (SubIFDs or OME-TIFF reduced resolutions) as tifffile reports them.
* :class:`ZarrSource` reads a Zarr array (``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``) or an
  OME-Zarr image group (``multiscales`` metadata, v0.4 in ``attrs`` or v0.5 under ``attrs["ome"]``;
  ``t``/``z`` axes of length 1 are dropped, ``c`` becomes the last axis).
* :class:`ArraySource` serves an in-memory array through the same interface (tests, callers
  that already hold the pixels).

:func:`open_source` picks one from a path (TIFF file or Zarr folder), a zarr array/group or a
numpy array. Zarr is an optional dependency, imported only when a Zarr source is opened.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from segflow.io import ImageReadError, TiffWindowReader

__all__ = [
    "ArraySource",
    "TiffSource",
    "WindowSource",
    "ZarrSource",
    "is_remote_zarr_uri",
    "is_zarr_path",
    "open_source",
]

logger = logging.getLogger(__name__)


@runtime_checkable
class WindowSource(Protocol):
    """What the streaming code needs from a large image.

    Attributes
    ----------
    name : str
        Used in error messages.
    height, width : int
        Image size in pixels.
    shape : tuple
        ``(H, W)`` or ``(H, W, C)``, as :func:`segflow.io.read_image` would return the image.
    dtype : numpy.dtype
        dtype of the windows.
    chunk_shape : tuple[int, int]
        ``(rows, cols)`` of the storage chunks; windows aligned to them decode nothing twice.
    levels : list[tuple[int, int]]
        ``(h, w)`` of the stored downsampled copies, largest first (empty when none).
    """

    name: str
    height: int
    width: int
    shape: tuple[int, ...]
    dtype: np.dtype
    chunk_shape: tuple[int, int]
    levels: list[tuple[int, int]]

    def read(self, *, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Pixels ``[y:y+h, x:x+w]``: ``(h, w)`` or ``(h, w, C)`` in :attr:`dtype`."""
        ...

    def read_level(self, index: int) -> np.ndarray:
        """The whole downsampled copy ``levels[index]``: ``(h, w)`` or ``(h, w, C)``."""
        ...

    def close(self) -> None:
        """Release the file."""
        ...


def _check_window(y: int, x: int, h: int, w: int, height: int, width: int) -> None:
    if h < 1 or w < 1:
        raise ValueError(f"window size must be at least 1 x 1, got h={h}, w={w}")
    if y < 0 or x < 0 or y + h > height or x + w > width:
        raise ValueError(
            f"window y={y}, x={x}, h={h}, w={w} is outside the image: "
            f"need 0 <= y, y + h <= {height}, 0 <= x, x + w <= {width}"
        )


class _Base:
    """Context-manager plumbing shared by the sources."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release."""


class TiffSource(_Base):
    """A TIFF file read by window (first page = full resolution), plus its pyramid levels.

    Parameters
    ----------
    path : str or os.PathLike
        The TIFF file (kept open until :meth:`close`).
    name : str, optional
        Name for error messages.
    labels : bool
        Read raw label values (palette indices kept), as :func:`segflow.io.read_labels`.

    Raises
    ------
    ImageReadError
        Not a readable TIFF, or an unsupported page layout.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, name: str | None = None, labels: bool = False
    ) -> None:
        self._reader = TiffWindowReader(os.fspath(path), name=name, labels=labels)
        self._path = os.fspath(path)
        self.name: str = self._reader.name
        self.height: int = self._reader.height
        self.width: int = self._reader.width
        self.shape: tuple[int, ...] = tuple(self._reader.shape)
        self.dtype: np.dtype = np.dtype(self._reader.dtype)
        self.chunk_shape: tuple[int, int] = self._reader.chunk_shape
        self._labels = labels
        self.levels: list[tuple[int, int]] = self._find_levels()

    def _find_levels(self) -> list[tuple[int, int]]:
        try:
            import tifffile

            with tifffile.TiffFile(self._path) as tif:
                series = tif.series[0]
                out = []
                for level in series.levels[1:]:
                    shape = tuple(int(s) for s in level.shape)
                    h, w = self._level_hw(shape)
                    if 0 < h < self.height and 0 < w < self.width:
                        out.append((h, w))
                return out
        except Exception:  # levels are an optimisation: an odd file just has none
            logger.debug("no pyramid levels readable in %s", self.name, exc_info=True)
            return []

    def _level_hw(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """``(h, w)`` of a level from its series shape (YX, YXS or SYX)."""
        if len(shape) == 2:
            return shape[0], shape[1]
        if len(shape) == 3:
            channels = self.shape[2] if len(self.shape) == 3 else 1
            if shape[2] == channels:
                return shape[0], shape[1]
            return shape[1], shape[2]
        return 0, 0

    def read(self, *, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Pixels ``[y:y+h, x:x+w]`` (only the tiles/strips they touch are decoded)."""
        return self._reader.read(y=y, x=x, h=h, w=w)

    def read_level(self, index: int) -> np.ndarray:
        """Level ``index`` of :attr:`levels` read whole, in the layout of :meth:`read`."""
        import tifffile

        if not 0 <= index < len(self.levels):
            raise ValueError(f"level index must be in [0, {len(self.levels)}), got {index}")
        try:
            with tifffile.TiffFile(self._path) as tif:
                levels = [
                    lv
                    for lv in tif.series[0].levels[1:]
                    if self._level_hw(tuple(int(s) for s in lv.shape)) in self.levels
                ]
                arr = np.asarray(levels[index].asarray())
        except Exception as exc:
            raise ImageReadError(self.name, f"cannot read pyramid level {index}: {exc}") from exc
        h, w = self.levels[index]
        if arr.ndim == 3 and arr.shape[:2] != (h, w):
            arr = np.moveaxis(arr, 0, -1)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        return np.ascontiguousarray(arr)

    def close(self) -> None:
        """Close the file."""
        self._reader.close()


_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")


def is_zarr_path(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder holding a Zarr v2 or v3 array or group.

    ``path`` may be an fsspec URL (``http://``, ``s3://``, ``memory://``, ...): then the store's
    metadata file is looked up remotely (one request per marker until one is found).
    """
    p = os.fspath(path)
    if "://" in p:
        return _is_remote_zarr(p)
    folder = Path(p)
    return folder.is_dir() and any((folder / marker).is_file() for marker in _ZARR_MARKERS)


def is_remote_zarr_uri(uri: str) -> bool:
    """Whether ``uri`` names a remote Zarr store or a node inside one: a URL with a path part
    ending in ``.zarr`` (``.../slide.zarr``, ``.../slide.zarr/labels/nuclei``), as listing
    names them. Decided by the name, without a request: such a URL that holds no store then
    fails to open with a clear error instead of being fetched whole as a file."""
    if "://" not in uri:
        return False
    return any(part.lower().endswith(".zarr") for part in uri.split("://", 1)[1].split("/"))


def _is_remote_zarr(url: str) -> bool:
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
        root = root.rstrip("/")
        return any(fs.isfile(f"{root}/{marker}") for marker in _ZARR_MARKERS)
    except Exception as exc:  # unreachable host, missing filesystem package: not a Zarr store
        logger.debug("cannot look up Zarr metadata under %s: %s", url, exc)
        return False


_OME_DROP = ("t", "z")


class ZarrSource(_Base):
    """A Zarr array or an OME-Zarr image (multiscales) read by window.

    Parameters
    ----------
    source : path, URL, zarr.Array or zarr.Group
        A Zarr folder, an fsspec URL of one (``http(s)://``, ``s3://``, ... : only the chunks a
        window touches are fetched), or an opened zarr array/group.
    name : str, optional
        Name for error messages.
    channel_axis : int or None
        For plain 3-D arrays: the channel axis (0 or 2). ``None`` guesses: axis 0 when it has at
        most 4 entries and the last axis more than 4, else axis 2. OME-Zarr images say it in
        their ``axes`` metadata.
    """

    def __init__(
        self, source: Any, *, name: str | None = None, channel_axis: int | None = None
    ) -> None:
        import zarr

        self.name = name or (
            os.fspath(source) if isinstance(source, str | os.PathLike) else "<zarr>"
        )
        try:
            node = zarr.open(source, mode="r") if isinstance(source, str | os.PathLike) else source
        except Exception as exc:
            raise ImageReadError(self.name, f"cannot open Zarr store: {exc}") from exc
        arrays: list[Any]
        axes: list[str] | None = None
        if isinstance(node, zarr.Group):
            attrs: dict[str, Any] = dict(node.attrs)
            ms = attrs.get("multiscales") or dict(attrs.get("ome") or {}).get("multiscales")
            if not ms:
                raise ImageReadError(
                    self.name,
                    "Zarr group without OME 'multiscales' metadata; give the array itself",
                )
            meta: Any = ms[0]
            arrays = [node[d["path"]] for d in meta["datasets"]]
            axes = [
                str(a["name"] if isinstance(a, dict) else a).lower() for a in meta.get("axes", [])
            ] or None
        else:
            arrays = [node]
        self._arrays = arrays
        self._axes = axes
        self._channel_axis = channel_axis
        base = arrays[0]
        self._layout = self._layout_of(tuple(base.shape))
        h, w, c = self._hwc(tuple(base.shape))
        self.height: int = h
        self.width: int = w
        self.shape: tuple[int, ...] = (h, w) if c is None else (h, w, c)
        self.dtype: np.dtype = np.dtype(base.dtype)
        chunks = tuple(int(s) for s in base.chunks)
        self.chunk_shape: tuple[int, int] = (chunks[self._layout["y"]], chunks[self._layout["x"]])
        self.levels: list[tuple[int, int]] = [
            (self._hwc(tuple(a.shape))[0], self._hwc(tuple(a.shape))[1]) for a in arrays[1:]
        ]

    def _layout_of(self, shape: tuple[int, ...]) -> dict[str, Any]:
        """Axis index of y, x and c (None) and the singleton axes to drop."""
        if self._axes is not None:
            if len(self._axes) != len(shape):
                raise ImageReadError(
                    self.name, f"OME axes {self._axes} do not match array shape {shape}"
                )
            drop = [i for i, a in enumerate(self._axes) if a in _OME_DROP]
            for i in drop:
                if shape[i] != 1:
                    raise ImageReadError(
                        self.name,
                        f"axis {self._axes[i]!r} has {shape[i]} entries; only 2-D images "
                        "(t and z of length 1) can be segmented",
                    )
            return {
                "y": self._axes.index("y"),
                "x": self._axes.index("x"),
                "c": self._axes.index("c") if "c" in self._axes else None,
                "drop": drop,
            }
        if len(shape) == 2:
            return {"y": 0, "x": 1, "c": None, "drop": []}
        if len(shape) == 3:
            ca = self._channel_axis
            if ca is None:
                ca = 0 if shape[0] <= 4 < shape[2] else 2
            if ca not in (0, 2):
                raise ValueError(f"channel_axis must be 0, 2 or None, got {ca}")
            return (
                {"y": 1, "x": 2, "c": 0, "drop": []}
                if ca == 0
                else {"y": 0, "x": 1, "c": 2, "drop": []}
            )
        raise ImageReadError(
            self.name, f"Zarr array of shape {shape}: need (H, W), (H, W, C) or (C, H, W)"
        )

    def _hwc(self, shape: tuple[int, ...]) -> tuple[int, int, int | None]:
        lay = self._layout_of(shape)
        c = None if lay["c"] is None else int(shape[lay["c"]])
        if c == 1:
            c = None
        return int(shape[lay["y"]]), int(shape[lay["x"]]), c

    def _fetch(self, array: Any, ys: slice, xs: slice) -> np.ndarray:
        lay = self._layout_of(tuple(array.shape))
        index: list[Any] = [0] * len(array.shape)
        for i in range(len(array.shape)):
            if i == lay["y"]:
                index[i] = ys
            elif i == lay["x"]:
                index[i] = xs
            elif i == lay["c"]:
                index[i] = slice(None)
        block = np.asarray(array[tuple(index)])
        # remaining axes, in order, are a subset of (c, y, x): move c last
        kept = [i for i in range(len(array.shape)) if i in (lay["y"], lay["x"], lay["c"])]
        if lay["c"] is not None:
            block = np.moveaxis(block, kept.index(lay["c"]), -1)
            if block.shape[-1] == 1:
                block = block[..., 0]
        elif kept.index(lay["y"]) > kept.index(lay["x"]):
            block = block.T
        return np.ascontiguousarray(block)

    def read(self, *, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Pixels ``[y:y+h, x:x+w]`` (only the chunks they touch are read)."""
        _check_window(y, x, h, w, self.height, self.width)
        try:
            return self._fetch(self._arrays[0], slice(y, y + h), slice(x, x + w))
        except ValueError:
            raise
        except Exception as exc:
            raise ImageReadError(self.name, f"cannot read Zarr window: {exc}") from exc

    def read_level(self, index: int) -> np.ndarray:
        """Multiscale dataset ``index + 1`` read whole."""
        if not 0 <= index < len(self.levels):
            raise ValueError(f"level index must be in [0, {len(self.levels)}), got {index}")
        array = self._arrays[index + 1]
        return self._fetch(array, slice(None), slice(None))


class ArraySource(_Base):
    """An in-memory ``(H, W)`` or ``(H, W, C)`` array served through :class:`WindowSource`.

    ``levels`` are optional downsampled copies (largest first), as a file would store them.
    """

    def __init__(
        self,
        array: np.ndarray,
        *,
        name: str = "<array>",
        levels: Sequence[np.ndarray] = (),
        chunk_shape: tuple[int, int] = (256, 256),
    ) -> None:
        arr = np.asarray(array)
        if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
            raise ValueError(f"array must be (H, W) or (H, W, C) with H, W >= 1, got {arr.shape}")
        self._array = arr
        self._levels = [np.asarray(lv) for lv in levels]
        self.name: str = name
        self.height: int = int(arr.shape[0])
        self.width: int = int(arr.shape[1])
        self.shape: tuple[int, ...] = tuple(int(s) for s in arr.shape)
        self.dtype: np.dtype = arr.dtype
        self.chunk_shape: tuple[int, int] = chunk_shape
        self.levels: list[tuple[int, int]] = [
            (int(lv.shape[0]), int(lv.shape[1])) for lv in self._levels
        ]

    def read(self, *, y: int, x: int, h: int, w: int) -> np.ndarray:
        """A copy of ``array[y:y+h, x:x+w]``."""
        _check_window(y, x, h, w, self.height, self.width)
        return self._array[y : y + h, x : x + w].copy()

    def read_level(self, index: int) -> np.ndarray:
        """The level array ``index``."""
        if not 0 <= index < len(self._levels):
            raise ValueError(f"level index must be in [0, {len(self._levels)}), got {index}")
        return self._levels[index]


def open_source(
    source: Any, *, name: str | None = None, labels: bool = False
) -> TiffSource | ZarrSource | ArraySource:
    """A :class:`WindowSource` for ``source``.

    Parameters
    ----------
    source : path, URL, numpy array, zarr array or zarr group
        A TIFF file or a Zarr folder (by content, not name), an fsspec URL of a Zarr store, or
        an array.
    name : str, optional
        Name for error messages.
    labels : bool
        TIFF only: raw label values (see :class:`TiffSource`).

    Raises
    ------
    ImageReadError
        A path that is neither a readable TIFF nor a Zarr store.
    """
    if isinstance(source, np.ndarray):
        return ArraySource(source, name=name or "<array>")
    if isinstance(source, str | os.PathLike):
        if is_zarr_path(source):
            return ZarrSource(source, name=name)
        path = os.fspath(source)
        if "://" in path or os.path.isdir(path):
            # a folder (or a URL: only Zarr stores are read by window remotely) with no metadata
            raise ImageReadError(
                name or path, "no Zarr store here (none of zarr.json, .zarray, .zgroup)"
            )
        return TiffSource(source, name=name, labels=labels)
    mod = type(source).__module__
    if mod.startswith("zarr"):
        return ZarrSource(source, name=name)
    raise TypeError(
        f"source must be a path, a numpy array or a zarr array/group, got {type(source).__name__}"
    )
