"""COCO instance annotations (one JSON file) as ground truth.

``segflow run IMAGES --ground-truth instances.json`` scores each image against the
annotations of the COCO ``images`` entry whose ``file_name`` it is:

* **Pairing** (:meth:`CocoGroundTruth.match`): an image's path relative to the listed folder
  equals the ``file_name`` (``JPEGImages/a.jpg``), or the last parts of one are the other
  (the folder listed was ``JPEGImages``, or the JSON names ``a.jpg`` and the image lies in a
  sub-folder); a bare file name pairs only when one entry has it. Images without an entry are
  segmented without scores, as with a label folder.
* **Masks** are those of pycocotools (``annToRLE``): polygons, uncompressed and compressed RLE,
  rasterised at the entry's ``height`` x ``width`` (an image of another size is an error of
  its ``ground_truth`` stage).
* **Label map** (:meth:`CocoGroundTruth.labels`), ``(H, W) int32``: ``instances`` gives the
  n-th non-crowd annotation of the image (in file order) the id ``n``; ``classes`` gives each
  pixel its annotation's ``category_id``; ``binary`` 1 on any annotation. COCO masks may
  overlap, a label map cannot: larger objects are painted first, so a smaller object lying on
  a larger one keeps its pixels (as panoptic conversions do). ``iscrowd`` regions not under an
  object are :data:`segflow.ingest.IGNORE`: no score counts them, so a prediction on a crowd is
  neither right nor wrong (COCO's own evaluation ignores detections matched to crowds).

:func:`load_coco` reads a file once per process (cached by location, size and modification
time), because every image of a run looks it up.

**COCO mask AP** (:func:`mask_ap`, ``segflow coco-eval OUT --annotations FILE``): the ``masks``
rows of a store (COCO RLE, score, class) are the detections of pycocotools' ``COCOeval`` with
``iouType="segm"``: AP at IoU 0.50:0.95, 0.50 and 0.75, by object size, and AR at 1, 10 and 100
detections, for the images of the store that have an entry. ``class_agnostic`` (``useCats=0``)
for segmenters whose classes are not the file's categories (``otsu``'s "foreground"); otherwise
``class_id`` must be the ``category_id`` (as torchvision's Mask R-CNN gives them).
"""

from __future__ import annotations

import functools
import json
import logging
import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "AP_NAMES",
    "CocoGroundTruth",
    "CocoImage",
    "coco_labels",
    "is_coco_path",
    "load_coco",
    "mask_ap",
]

logger = logging.getLogger(__name__)

#: The value of ignored pixels (``segflow.ingest.IGNORE``; repeated here so that this module
#: does not import the listing code).
_IGNORE = -1


def is_coco_path(source: str | Path) -> bool:
    """Whether ``--ground-truth`` names a COCO annotation file (a ``.json`` file)."""
    return str(source).lower().endswith(".json")


@dataclass(frozen=True, slots=True)
class CocoImage:
    """One entry of the ``images`` list."""

    id: int
    file_name: str
    height: int
    width: int


class CocoGroundTruth:
    """The images, annotations and categories of one COCO annotation file.

    Parameters
    ----------
    data : mapping
        The parsed JSON: ``images`` (``id``, ``file_name``, ``height``, ``width``),
        ``annotations`` (``image_id``, ``category_id``, ``segmentation``, ``iscrowd``) and
        ``categories`` (``id``, ``name``).
    source : str
        Where it came from, for messages.
    """

    def __init__(self, data: Mapping[str, Any], *, source: str = "<COCO JSON>") -> None:
        self.source = source
        self.data = data
        if not isinstance(data, Mapping) or not isinstance(data.get("images"), list):
            raise ValueError(
                f"{source} is not a COCO annotation file: it needs an 'images' list "
                "(and 'annotations', 'categories')"
            )
        self.images: dict[str, CocoImage] = {}
        for entry in data["images"]:
            try:
                image = CocoImage(
                    id=int(entry["id"]),
                    file_name=posixpath.normpath(str(entry["file_name"]).replace("\\", "/")),
                    height=int(entry["height"]),
                    width=int(entry["width"]),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(
                    f"{source}: an 'images' entry lacks id, file_name, height or width: "
                    f"{str(entry)[:120]}"
                ) from exc
            self.images[image.file_name] = image
        self._by_stem: dict[str, list[CocoImage]] | None = None
        self._by_name: dict[str, list[CocoImage]] = {}
        for image in self.images.values():
            self._by_name.setdefault(posixpath.basename(image.file_name), []).append(image)
        self.annotations: dict[int, list[Mapping[str, Any]]] = {}
        for ann in data.get("annotations") or []:
            self.annotations.setdefault(int(ann["image_id"]), []).append(ann)
        self.categories: dict[int, str] = {
            int(c["id"]): str(c.get("name", c["id"])) for c in data.get("categories") or []
        }

    def match(self, rel_path: str) -> CocoImage | None:
        """The entry of the image at ``rel_path`` (relative to the listed folder), or None."""
        rel = posixpath.normpath(rel_path.replace("\\", "/"))
        if rel in self.images:
            return self.images[rel]
        return _tail_match(
            rel, self._by_name.get(posixpath.basename(rel), []), lambda c: c.file_name
        )

    def match_id(self, image_id: str) -> CocoImage | None:
        """:meth:`match` for a store's ``image_id`` (the relative path without its extension)."""
        if self._by_stem is None:
            self._by_stem = {}
            for image in self.images.values():
                stem = posixpath.splitext(posixpath.basename(image.file_name))[0]
                self._by_stem.setdefault(stem, []).append(image)
        rel = posixpath.normpath(image_id.replace("\\", "/"))
        return _tail_match(
            rel,
            self._by_stem.get(posixpath.basename(rel), []),
            lambda c: posixpath.splitext(c.file_name)[0],
        )

    def labels(self, image: CocoImage, *, gt_format: str) -> np.ndarray:
        """The label map of ``image`` (see the module docstring): ``(H, W) int32``.

        ``gt_format``: ``binary`` | ``instances`` | ``classes``. Raises ``ValueError`` naming
        the annotation whose segmentation pycocotools cannot read.
        """
        if gt_format not in ("binary", "instances", "classes"):
            raise ValueError(
                f"gt_format must be one of ('binary', 'instances', 'classes'), got {gt_format!r}"
            )
        h, w = image.height, image.width
        out = np.zeros((h, w), dtype=np.int32)
        objects: list[tuple[int, int, np.ndarray]] = []  # (area, value, mask)
        crowd = np.zeros((h, w), dtype=bool)
        n = 0
        for ann in self.annotations.get(image.id, []):
            mask = self._mask(ann, h, w)
            if ann.get("iscrowd"):
                crowd |= mask
                continue
            n += 1
            value = {"instances": n, "classes": int(ann["category_id"]), "binary": 1}[gt_format]
            objects.append((int(np.count_nonzero(mask)), value, mask))
        out[crowd] = _IGNORE
        # larger first: a small object on a large one keeps its pixels; ties in file order
        for _, value, mask in sorted(objects, key=lambda o: -o[0]):
            out[mask] = value
        return out

    def _mask(self, ann: Mapping[str, Any], h: int, w: int) -> np.ndarray:
        """pycocotools' ``annToMask``: polygons, uncompressed or compressed RLE -> (H, W) bool."""
        from pycocotools import mask as cocomask

        try:
            return np.asarray(cocomask.decode(_to_rle(ann.get("segmentation"), h, w)), dtype=bool)
        except Exception as exc:
            raise ValueError(
                f"{self.source}: annotation {ann.get('id')!r} of image {ann.get('image_id')!r} "
                f"has a segmentation pycocotools cannot read: {exc}"
            ) from exc


def _to_rle(segm: Any, h: int, w: int) -> dict[str, Any]:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) as a compressed RLE of
    an ``h`` x ``w`` image, as pycocotools' ``annToRLE`` makes it."""
    from pycocotools import mask as cocomask

    if isinstance(segm, list):  # polygons: one RLE per part, merged
        return dict(cocomask.merge(cocomask.frPyObjects(segm, h, w)))
    if isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        return dict(cocomask.frPyObjects(segm, h, w))
    if isinstance(segm, dict):
        counts, size = segm["counts"], [int(v) for v in segm["size"]]
        if size != [h, w]:
            raise ValueError(f"RLE size {size} differs from the image's {[h, w]}")
        return {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
    raise ValueError(f"segmentation must be polygons or an RLE, got {type(segm)}")


def _tail_match(
    rel: str, candidates: list[CocoImage], key: Callable[[CocoImage], str]
) -> CocoImage | None:
    """The one candidate whose ``key`` is ``rel``, or ends with it, or is how ``rel`` ends."""
    hits = [
        c
        for c in candidates
        if key(c) == rel or key(c).endswith("/" + rel) or rel.endswith("/" + key(c))
    ]
    return hits[0] if len(hits) == 1 else None  # several: ambiguous, left unpaired


#: The names of ``COCOeval.stats`` for masks, in its order.
AP_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


def mask_ap(masks: Any, coco: CocoGroundTruth, *, class_agnostic: bool = False) -> dict[str, Any]:
    """COCO mask AP of a store's ``masks`` rows against ``coco`` (pycocotools' ``COCOeval``).

    Parameters
    ----------
    masks : pandas DataFrame
        ``masks`` rows of one configuration: ``image_id``, ``class_id``, ``score``, ``height``,
        ``width``, ``rle_counts``.
    coco : CocoGroundTruth
    class_agnostic : bool
        Match predictions to objects of any category (``useCats=0``).

    Returns
    -------
    dict
        :data:`AP_NAMES` (floats; -1 where COCOeval has no object of that size) and
        ``n_images`` (images with an entry), ``n_detections``, ``unmatched_images`` (image ids
        of ``masks`` without an entry, left out).
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    # pycocotools' useCats=0 still drops detections of categories the file does not list:
    # class-agnostic detections take any listed one
    any_category = min(coco.categories) if class_agnostic and coco.categories else None
    entries: dict[str, CocoImage] = {}
    unmatched: list[str] = []
    for image_id in sorted(set(masks["image_id"])):
        entry = coco.match_id(str(image_id))
        if entry is None:
            unmatched.append(str(image_id))
        else:
            entries[str(image_id)] = entry
    detections = []
    for row in masks.itertuples(index=False):
        entry = entries.get(str(row.image_id))
        if entry is None:
            continue
        if (int(row.height), int(row.width)) != (entry.height, entry.width):
            raise ValueError(
                f"masks of {row.image_id} are {row.height} x {row.width}, its COCO entry "
                f"{entry.file_name!r} is {entry.height} x {entry.width}"
            )
        detections.append(
            {
                "image_id": entry.id,
                "category_id": int(row.class_id) if any_category is None else any_category,
                "segmentation": {
                    "size": [int(row.height), int(row.width)],
                    "counts": row.rle_counts,
                },
                "score": float(row.score) if row.score == row.score else 1.0,  # NaN: no score
            }
        )
    out: dict[str, Any] = {
        "n_images": len(entries),
        "n_detections": len(detections),
        "unmatched_images": unmatched,
    }
    if not entries:
        raise ValueError(f"no image of the masks has an entry in {coco.source}")
    quiet = io.StringIO()  # pycocotools prints its progress and table
    with contextlib.redirect_stdout(quiet):
        gt = COCO()
        gt.dataset = _with_areas(coco.data)
        gt.createIndex()
        if not detections:
            out.update(dict.fromkeys(AP_NAMES, 0.0))
            return out
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, iouType="segm")
        ev.params.imgIds = sorted(e.id for e in entries.values())
        ev.params.useCats = 0 if class_agnostic else 1
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out.update({name: float(v) for name, v in zip(AP_NAMES, ev.stats, strict=True)})
    return out


def _with_areas(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with every annotation's ``area`` and ``iscrowd`` (COCOeval reads both)."""
    from pycocotools import mask as cocomask

    sizes = {int(i["id"]): (int(i["height"]), int(i["width"])) for i in data["images"]}
    anns = []
    for ann in data.get("annotations") or []:
        if "area" not in ann or "iscrowd" not in ann:
            ann = dict(ann)
            ann.setdefault("iscrowd", 0)
            if "area" not in ann:
                h, w = sizes[int(ann["image_id"])]
                ann["area"] = float(cocomask.area(_to_rle(ann["segmentation"], h, w)))
        anns.append(ann)
    return {**data, "annotations": anns, "categories": data.get("categories") or []}


def _read_json(source: str) -> Any:
    import fsspec

    with fsspec.open(source, "rb") as fh:
        return json.load(fh)


@functools.lru_cache(maxsize=4)
def _load(source: str, size: int | None, mtime: float | None) -> CocoGroundTruth:
    # size and mtime are only part of the cache key: an edited file is read again
    return CocoGroundTruth(_read_json(source), source=source)


def load_coco(source: str | Path) -> CocoGroundTruth:
    """The COCO annotation file at ``source`` (path or fsspec URL), read once per process.

    Raises ``FileNotFoundError`` when it is missing and ``ValueError`` when it is not COCO.
    """
    import fsspec

    text = str(source)
    fs, path = fsspec.core.url_to_fs(text)
    if not fs.isfile(path):
        raise FileNotFoundError(f"COCO annotation file not found: {text}")
    info = fs.info(path)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("created")
    try:
        mtime_key = float(mtime) if mtime is not None else None
    except (TypeError, ValueError):
        mtime_key = None
    try:
        return _load(text, info.get("size"), mtime_key)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{text} is not valid JSON: {exc}") from exc


def coco_labels(
    source: str | Path,
    file_name: str,
    *,
    gt_format: str,
    shape: tuple[int, int] | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """The label map of the entry ``file_name`` of the COCO file at ``source``.

    ``shape``: the image's ``(H, W)``; an entry of another size is refused before anything is
    drawn. ``max_pixels``: refuse an entry whose ``height`` x ``width`` is larger (as image
    headers are).
    """
    coco = load_coco(source)
    image = coco.images.get(file_name)
    if image is None:
        raise ValueError(f"{source} has no image entry with file_name {file_name!r}")
    if shape is not None and (image.height, image.width) != tuple(shape):
        raise ValueError(
            f"{source}: the entry {file_name!r} is {image.height} x {image.width} (height x "
            f"width), the image {shape[0]} x {shape[1]}: ground truth shape differs"
        )
    if max_pixels is not None and image.height * image.width > max_pixels:
        raise ValueError(
            f"{source}: {file_name} is {image.width} x {image.height}, more than max_pixels "
            f"({max_pixels})"
        )
    return coco.labels(image, gt_format=gt_format)
