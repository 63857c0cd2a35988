"""Find images and their ground truth in a local folder or any fsspec URL.

* :func:`list_images` walks a folder (``/data/x``, ``file:///data/x``, ``memory://x``, ``s3://b/p``
  when s3fs is installed), recursively by default, and keeps files whose name ends with one of the
  extensions (case-insensitive). Hidden files and folders (name starting with ``.``) are skipped.
  ``http(s)://`` folders are listed from the server's HTML index pages (fsspec's HTTP
  filesystem, the ``http`` extra). With ``.zarr`` among the extensions, a folder named ``*.zarr``
  (a Zarr array or OME-Zarr image), local or remote, is one item, read by window by
  :mod:`segflow.large` (a remote store chunk by chunk, never copied whole); its identity hashes
  its files.
  Items are sorted by relative path, so listings are reproducible.
* An image's identity is the sha256 of its bytes (:func:`hash_items`), so renaming or moving a
  file does not make it new, and changing its bytes does.
* :func:`pair_ground_truth` matches each image with the label image of the same relative path
  without extension (``a/b.jpg`` pairs with ``a/b.png`` or ``a/b.tif``) in a ground-truth folder.
* :func:`read_ground_truth` reads a label image (0 = background) as ``binary`` (non-zero is
  foreground), ``instances`` (each non-zero id is one object) or ``classes`` (the value is the class).
  With ``ignore`` (PASCAL VOC's 255 "void" border, say) those pixels become :data:`IGNORE`
  (``-1``) and every score leaves them out (:mod:`segflow.evaluate`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal

import fsspec
import numpy as np

from segflow.io import DEFAULT_MAX_PIXELS, ImageReadError, labels_from_array, read_labels
from segflow.sources import is_remote_zarr_uri, is_zarr_path, open_source

__all__ = [
    "IGNORE",
    "GtFormat",
    "ImageItem",
    "hash_items",
    "list_images",
    "load_ground_truth",
    "pair_ground_truth",
    "read_bytes",
    "read_ground_truth",
    "sha256_file",
    "split_done",
]

logger = logging.getLogger(__name__)

GtFormat = Literal["binary", "instances", "classes"]
GT_FORMATS: tuple[str, ...] = ("binary", "instances", "classes")
#: Ground-truth value of a pixel that no score counts (see ``ignore`` of :func:`read_ground_truth`).
IGNORE = -1

_HASH_BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class ImageItem:
    """One listed image (metadata only: no pixels).

    Attributes
    ----------
    uri : str
        What readers open and the store records as ``source_uri``: a plain local path when the
        input was a plain path, else a protocol-qualified URL (``memory:///x/a.png``).
    rel_path : str
        POSIX path relative to the listed folder (``sub/a.png``).
    image_id : str
        ``rel_path`` without its extension (``sub/a``); with the full ``rel_path`` instead when two
        files differ only by extension.
    size : int
        Bytes, from the listing.
    sha256 : str or None
        Hex digest of the bytes, once :func:`hash_items` has run.
    gt_uri : str or None
        Ground-truth label image (or COCO annotation file) paired by :func:`pair_ground_truth`.
    gt_key : str or None
        With a COCO annotation file: the ``file_name`` of the image's entry in it.
    """

    uri: str
    rel_path: str
    image_id: str
    size: int
    sha256: str | None = None
    gt_uri: str | None = None
    gt_key: str | None = None


def _has_protocol(source: str) -> bool:
    return "://" in source or source.startswith(("s3:", "gs:", "az:", "memory:"))


def _normalise_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if not exts:
        raise ValueError("extensions must name at least one file ending, e.g. ('.png',)")
    return exts


def _list_files(
    source: str, *, extensions: tuple[str, ...], recursive: bool, exclude: Sequence[str] = ()
) -> list[tuple[str, str, int]]:
    """``(uri, rel_path, size)`` of every matching file under ``source``, sorted by rel_path."""
    source = str(source)
    fs, root = fsspec.core.url_to_fs(source)
    if not fs.exists(root):
        if _has_protocol(source):
            # a remote "does not exist" may be a refusal: say the server's own reason (401 ...)
            try:
                fs.ls(root)
            except FileNotFoundError:
                pass
            except Exception as exc:
                refused = getattr(exc, "status", None) in (401, 403)  # aiohttp, not transient
                error = PermissionError if refused else OSError
                raise error(f"cannot list input folder {source!r}: {exc}") from exc
        raise FileNotFoundError(f"input folder {source!r} does not exist")
    if not fs.isdir(root):
        raise ValueError(f"input {source!r} is a file; give the folder that holds the images")
    root = root.rstrip("/") or "/"
    plain = not _has_protocol(source)
    excluded = []
    for ex in exclude:
        try:
            excluded.append(fsspec.core.url_to_fs(str(ex))[1].rstrip("/") + "/")
        except (ValueError, ImportError):  # an unusable exclude cannot match anything
            continue
    zarr = ".zarr" in extensions
    # a Zarr store is a folder of chunk files: its files are found under any depth
    found = fs.find(root, maxdepth=None if recursive or zarr else 1, withdirs=False, detail=True)
    out: list[tuple[str, str, int]] = []
    stores: dict[str, int] = {}  # rel path of a Zarr store -> total bytes
    prefix = root if root.endswith("/") else root + "/"
    for path, info in found.items():
        if not path.startswith(prefix):
            continue
        if info.get("type", "file") != "file":
            # fsspec reports a local symlink as "other". One to a file is that file (split
            # folders made of symlinks are common); a dangling one is listed too, so that it
            # becomes an `errors` row rather than vanishing; links to folders are not followed.
            if not (plain and info.get("islink") and not os.path.isdir(path)):
                continue
            info = {**info, "size": os.path.getsize(path) if os.path.isfile(path) else 0}
        rel = path[len(prefix) :]
        parts = rel.split("/")
        if any(part.startswith(".") and not _zarr_metadata(part) for part in parts):
            continue
        store = zarr_store_of(parts) if zarr else None
        if store is not None:
            if store.count("/") and not recursive:
                continue
            stores[store] = stores.get(store, 0) + int(info.get("size") or 0)
            continue
        if not recursive and len(parts) > 1:
            continue
        if not rel.lower().endswith(extensions):
            continue
        if any((path + "/").startswith(ex) or path.startswith(ex) for ex in excluded):
            continue
        uri = path if plain else fs.unstrip_protocol(path)
        out.append((uri, rel, int(info.get("size") or 0)))
    for rel, size in stores.items():
        if any((prefix + rel + "/").startswith(ex) for ex in excluded):
            continue
        # a remote store is one item too: segflow.large reads its chunks by window over fsspec
        out.append((prefix + rel if plain else fs.unstrip_protocol(prefix + rel), rel, size))
    out.sort(key=lambda t: t[1])
    return out


def _zarr_metadata(name: str) -> bool:
    """Zarr v2's metadata files start with a dot (``.zarray``, ``.zgroup``, ``.zattrs``)."""
    return name in (".zarray", ".zgroup", ".zattrs", ".zmetadata")


def zarr_store_of(parts: list[str]) -> str | None:
    """The relative path of the outermost ``*.zarr`` folder holding a file, if any."""
    for i, part in enumerate(parts[:-1]):
        if part.lower().endswith(".zarr"):
            return "/".join(parts[: i + 1])
    return None


def _stem(rel: str) -> str:
    base, ext = posixpath.splitext(rel)
    return base if ext else rel


def list_images(
    source: str | Path,
    *,
    extensions: Iterable[str] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"),
    recursive: bool = True,
    exclude: Sequence[str | Path] = (),
) -> list[ImageItem]:
    """List the images under ``source`` (folder path or fsspec URL), sorted by relative path.

    ``exclude`` names folders to leave out (e.g. an output folder inside the input folder).
    Raises ``FileNotFoundError`` when ``source`` does not exist and ``ValueError`` when it is a file.
    """
    files = _list_files(
        str(source),
        extensions=_normalise_extensions(extensions),
        recursive=recursive,
        exclude=[str(e) for e in exclude],
    )
    stems: dict[str, int] = {}
    for _, rel, _ in files:
        stems[_stem(rel)] = stems.get(_stem(rel), 0) + 1
    return [
        ImageItem(
            uri=uri, rel_path=rel, image_id=_stem(rel) if stems[_stem(rel)] == 1 else rel, size=size
        )
        for uri, rel, size in files
    ]


def read_bytes(uri: str) -> bytes:
    """All bytes of ``uri`` (plain local path or fsspec URL)."""
    if not _has_protocol(uri):
        return Path(uri).read_bytes()
    with fsspec.open(uri, "rb") as fh:
        return fh.read()  # type: ignore[no-any-return]


def sha256_file(uri: str) -> str:
    """sha256 hex digest of the bytes at ``uri``, read in 1 MiB blocks (constant memory).

    A folder (a Zarr store; remote ones by a URL ending in ``.zarr``) hashes as the sha256 of its
    files' relative paths and bytes, in sorted order: the same array written again, or served
    from elsewhere, gives the same identity.
    """
    if not _has_protocol(uri) and Path(uri).is_dir():
        return _sha256_folder(Path(uri))
    if is_remote_zarr_uri(uri):
        fs, root = fsspec.core.url_to_fs(uri)
        if fs.isdir(root):
            return _sha256_remote_folder(fs, root.rstrip("/"))
    digest = hashlib.sha256()
    opener = open(uri, "rb") if not _has_protocol(uri) else fsspec.open(uri, "rb").open()
    with opener as fh:
        _hash_stream(digest, fh)
    return digest.hexdigest()


def _hash_stream(digest: Any, fh: BinaryIO) -> None:
    while block := fh.read(_HASH_BLOCK):
        digest.update(block)


def _sha256_folder(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode("utf-8") + b"\0")
        with open(path, "rb") as fh:
            _hash_stream(digest, fh)
        digest.update(b"\0")
    return digest.hexdigest()


def _sha256_remote_folder(fs: Any, root: str) -> str:
    """:func:`_sha256_folder` over fsspec: the same digest for the same files (sorted by parts)."""
    prefix = root + "/"
    rels = [p[len(prefix) :] for p in fs.find(root, withdirs=False) if p.startswith(prefix)]
    rels.sort(key=lambda r: r.split("/"))  # pathlib's order: part by part
    digest = hashlib.sha256()
    # chunk files are small and many: fetch them _REMOTE_BATCH at a time (concurrently on async
    # filesystems such as HTTP and S3; one by one they cost a round trip each)
    for i in range(0, len(rels), _REMOTE_BATCH):
        batch = rels[i : i + _REMOTE_BATCH]
        blobs = fs.cat([prefix + rel for rel in batch], on_error="raise")
        for rel in batch:
            digest.update(rel.encode("utf-8") + b"\0")
            digest.update(blobs[prefix + rel])
            digest.update(b"\0")
    return digest.hexdigest()


_REMOTE_BATCH = 16


def hash_items(items: Sequence[ImageItem], *, threads: int = 4) -> list[ImageItem]:
    """``items`` with ``sha256`` filled in (files read by ``threads`` I/O threads, order kept).

    A file that cannot be read keeps ``sha256=None``; processing it reports the error.
    """

    def one(item: ImageItem) -> ImageItem:
        if item.sha256 is not None:
            return item
        try:
            return replace(item, sha256=sha256_file(item.uri))
        except OSError as exc:
            logger.warning("cannot read %s to hash it: %s", item.uri, exc)
            return item

    if threads <= 1 or len(items) < 2:
        return [one(i) for i in items]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, items))


#: ``ground_truth="ome-labels:NAME"``: each OME-Zarr image's own label image ``labels/NAME``
#: inside its store (the OME-NGFF layout); ``"ome-labels:"`` takes the first one listed.
OME_LABELS = "ome-labels:"


def ome_label_uri(store: str, name: str = "") -> str | None:
    """The label image ``labels/<name>`` of the OME-Zarr image ``store`` (path or URL), or None.

    ``name`` empty: the first label image the store's ``labels`` group lists (its ``labels``
    attribute, NGFF 0.4, or ``ome.labels``, 0.5). None when the store has no such label image.
    """
    import zarr

    base = store.rstrip("/")
    try:
        group = zarr.open_group(f"{base}/labels", mode="r")
        attrs: dict[str, Any] = dict(group.attrs)
    except Exception:  # no labels group (or not a Zarr store): no ground truth
        return None
    listed = attrs.get("labels") or dict(attrs.get("ome") or {}).get("labels") or []
    chosen = name or (str(listed[0]) if listed else "")
    if not chosen:
        return None
    try:
        group[chosen]
    except Exception:
        return None
    return f"{base}/labels/{chosen}"


def _pair_ome_labels(items: Sequence[ImageItem], name: str) -> list[ImageItem]:
    out = [
        replace(item, gt_uri=ome_label_uri(item.uri, name) if _is_zarr_store(item.uri) else None)
        for item in items
    ]
    missing = sum(i.gt_uri is None for i in out)
    if missing:
        logger.info(
            "%d of %d images have no OME-Zarr label image %r",
            missing,
            len(items),
            name or "(the first listed)",
        )
    return out


def pair_ground_truth(
    items: Sequence[ImageItem],
    ground_truth: str | Path,
    *,
    extensions: Iterable[str] = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".zarr"),
    recursive: bool = True,
) -> list[ImageItem]:
    """``items`` with ``gt_uri`` set where ``ground_truth`` holds a file of the same relative stem.

    A ``*.zarr`` store (a Zarr array, or an OME-Zarr label image with ``multiscales``) is a label
    image too, local or remote: the image ``a/b.png`` (or the store ``a/b.zarr``) pairs with
    ``a/b.zarr`` when no label file of that stem ranks before it in ``extensions``.

    Images without a match keep ``gt_uri=None`` (they are segmented, without scores). When several
    label files share a stem, the one whose extension comes first in ``extensions`` wins.
    ``ground_truth="ome-labels:NAME"`` (:data:`OME_LABELS`) pairs each OME-Zarr image with its
    own label image ``<store>/labels/NAME`` (``"ome-labels:"``: the first one listed); other
    images get none. A ``.json`` ``ground_truth`` is a COCO annotation file: items get it as ``gt_uri`` and their
    entry's ``file_name`` as ``gt_key`` (pairing rule: :meth:`segflow.coco.CocoGroundTruth.match`).
    """
    from segflow import coco

    if str(ground_truth).startswith(OME_LABELS):
        return _pair_ome_labels(items, str(ground_truth)[len(OME_LABELS) :])
    if coco.is_coco_path(ground_truth):
        annotations = coco.load_coco(ground_truth)
        out = []
        for item in items:
            entry = annotations.match(item.rel_path)
            out.append(
                replace(item, gt_uri=str(ground_truth), gt_key=entry.file_name)
                if entry is not None
                else item
            )
        missing = sum(i.gt_key is None for i in out)
        if missing:
            logger.info("%d of %d images have no entry in %s", missing, len(items), ground_truth)
        return out
    exts = _normalise_extensions(extensions)
    files = _list_files(str(ground_truth), extensions=exts, recursive=recursive)
    index: dict[str, tuple[int, str]] = {}
    for uri, rel, _ in files:
        rank = next(i for i, e in enumerate(exts) if rel.lower().endswith(e))
        stem = _stem(rel)
        if stem not in index or rank < index[stem][0]:
            index[stem] = (rank, uri)
    out = []
    missing = 0
    for item in items:
        hit = index.get(_stem(item.rel_path))
        missing += hit is None
        out.append(replace(item, gt_uri=hit[1] if hit else None))
    if missing:
        logger.info("%d of %d images have no ground truth in %s", missing, len(items), ground_truth)
    return out


def read_ground_truth(
    source: str | Path | bytes,
    *,
    gt_format: GtFormat,
    ignore: int | None = None,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read a label image as ground truth: ``(H, W) int32``.

    ``binary``: 0/1 (non-zero is foreground); ``instances``: the object ids as stored (0 =
    background); ``classes``: the class ids as stored. Palette PNGs give their indices.
    ``ignore``: the stored value of pixels no score may count (255 in PASCAL VOC labels); they
    are returned as :data:`IGNORE` (-1) in every format.
    Raises ``segflow.io.ImageReadError`` for unreadable files, ``ValueError`` for a bad format.
    """
    if gt_format not in GT_FORMATS:
        raise ValueError(f"gt_format must be one of {GT_FORMATS}, got {gt_format!r}")
    if ignore is not None and (
        isinstance(ignore, bool) or not isinstance(ignore, int) or ignore < 1
    ):
        raise ValueError(f"ignore must be a label value >= 1 (0 is background), got {ignore!r}")
    if isinstance(source, str | Path) and _is_zarr_store(str(source)):
        labels = _read_zarr_labels(str(source), name=name, max_pixels=max_pixels)
    else:
        if isinstance(source, str) and _has_protocol(source):
            source = read_bytes(source)
        labels = read_labels(source, name=name, max_pixels=max_pixels)
    if labels.dtype != np.int32:
        labels = labels.astype(np.int32)
    if gt_format != "binary" and labels.min(initial=0) < 0:
        raise ValueError(
            f"{gt_format} ground truth must be >= 0, got minimum {labels.min()} in {name or source!r}"
        )
    ignored = labels == ignore if ignore is not None else None
    if gt_format == "binary":
        labels = (labels != 0).view(np.uint8).astype(np.int32)
    if ignored is not None:
        labels[ignored] = IGNORE
    return labels


def _is_zarr_store(source: str) -> bool:
    """A local Zarr folder, or a URL ending in ``.zarr`` (what listing calls a remote store)."""
    return is_remote_zarr_uri(source) if _has_protocol(source) else is_zarr_path(source)


def _read_zarr_labels(source: str, *, name: str | None, max_pixels: int) -> np.ndarray:
    """A Zarr label array read whole as ``(H, W)`` (its full-resolution level), under the guard."""
    label = name or source
    with open_source(source, name=label) as src:
        if src.height * src.width > max_pixels:
            raise ImageReadError(
                label,
                f"{src.height} x {src.width} = {src.height * src.width} label pixels, more than "
                f"max_pixels={max_pixels}",
            )
        if len(src.shape) != 2:
            raise ImageReadError(label, f"a label array must be 2-D (H, W), got {src.shape}")
        return labels_from_array(src.read(y=0, x=0, h=src.height, w=src.width), label)


def load_ground_truth(
    item: ImageItem,
    *,
    gt_format: GtFormat,
    ignore: int | None = None,
    shape: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """The ground truth paired with ``item``: ``(H, W) int32`` (:data:`IGNORE` where ignored).

    A label image through :func:`read_ground_truth`; a COCO entry (``gt_key``) through
    :func:`segflow.coco.coco_labels` (crowd regions ignored; ``ignore`` does not apply).
    ``shape``: the image's ``(H, W)``; ground truth of another size is a ``ValueError``.
    """
    if item.gt_uri is None:
        raise ValueError(f"{item.rel_path} has no ground truth")
    if item.gt_key is not None:
        from segflow.coco import coco_labels

        return coco_labels(
            item.gt_uri, item.gt_key, gt_format=gt_format, shape=shape, max_pixels=max_pixels
        )
    truth = read_ground_truth(
        item.gt_uri, gt_format=gt_format, ignore=ignore, max_pixels=max_pixels
    )
    if shape is not None and truth.shape != tuple(shape):
        raise ValueError(
            f"ground truth shape {truth.shape} of {item.gt_uri} differs from the image's "
            f"{tuple(shape)}"
        )
    return truth


def split_done(
    items: Sequence[ImageItem], done: set[str]
) -> tuple[list[ImageItem], list[ImageItem]]:
    """``(todo, skipped)``: items whose ``sha256`` is in ``done`` are skipped (order kept).

    Items without a hash (unreadable at listing time) are always kept, so they get an error row.
    """
    todo: list[ImageItem] = []
    skipped: list[ImageItem] = []
    for item in items:
        (skipped if item.sha256 is not None and item.sha256 in done else todo).append(item)
    return todo, skipped
