"""From one image to store rows: read -> preprocess -> segment -> evaluate (no Prefect here).

* :func:`metrics_row` and :func:`mask_rows` turn a :class:`~segflow.segmenters.base.Segmentation`
  (and optional ground truth) into the rows of the ``metrics`` and ``masks`` datasets
  (``segflow.store.SCHEMAS``). Foreground counts and scores come from :mod:`segflow.metrics`;
  instance scores when the ground truth holds instances; ``class_iou`` when it holds classes;
  ``mean_entropy`` when the segmenter gives probabilities.
* The predicted foreground is ``instances > 0`` for instance output and ``classes > 0`` for
  semantic output, i.e. exactly the union of the image's ``masks`` rows, so the IoU of the decoded
  masks against the ground truth equals the stored ``fg_iou``.
* :func:`process_image` runs the stages on one image and times them; a failure becomes a
  :class:`StageError` naming the stage. :func:`process_chunk` runs a list of images, turning each
  failure into one ``errors`` row, so one broken file never fails the chunk.
* :class:`RunStats` keeps bounded run aggregates (means, the worst images) for the summary, so the
  flow's memory does not grow with the number of images.

Per-image cost is kept close to a plain scikit-image loop: the foreground mask is computed once
and shared by the counts, the fraction and the overlay; instance RLEs are built from object crops
(``rle.encode_labels``), never from full-size per-object masks.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segflow import metrics as M
from segflow import postprocess
from segflow import rle as R
from segflow.ingest import IGNORE, ImageItem, load_ground_truth, read_bytes
from segflow.io import read_image
from segflow.preprocess import to_float_chw
from segflow.segmenters.base import Segmentation, Segmenter

if TYPE_CHECKING:
    from segflow.config import RunConfig
    from segflow.store import Store

__all__ = [
    "SCORE_COLUMNS",
    "STAGES",
    "ChunkResult",
    "ImageResult",
    "RunStats",
    "StageError",
    "done_hashes",
    "error_row",
    "evaluate",
    "foreground",
    "items_by_chunk",
    "mask_rows",
    "mean_entropy",
    "metrics_row",
    "process_chunk",
    "process_image",
    "summary_markdown",
    "write_overlay",
]

logger = logging.getLogger(__name__)

#: Stage names used in ``errors.stage``. Timings: ``t_read_ms`` (bytes + decode),
#: ``t_preprocess_ms``, ``t_segment_ms`` (tiling, segmenting and stitching), ``t_evaluate_ms``
#: (ground truth read + scores + RLE), ``t_total_ms``.
STAGES: tuple[str, ...] = ("read", "decode", "preprocess", "segment", "ground_truth", "evaluate")

#: Metrics columns averaged in run summaries.
SCORE_COLUMNS: tuple[str, ...] = (
    "fg_iou",
    "fg_dice",
    "fg_precision",
    "fg_recall",
    "inst_f1",
    "dsb_score",
    "mean_entropy",
)


class StageError(Exception):
    """A failure while processing one image, tagged with the stage it happened in."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage}: {type(error).__name__}: {error}")
        self.stage = stage
        self.error = error


# ---------------------------------------------------------------------------------------------
# evaluation of one Segmentation
# ---------------------------------------------------------------------------------------------


def foreground(seg: Segmentation) -> np.ndarray:
    """Predicted foreground ``(H, W) bool``: ``instances > 0`` if present, else ``classes > 0``."""
    labels = seg.instances if seg.instances is not None else seg.classes
    return np.asarray(labels) > 0


def mean_entropy(probabilities: np.ndarray) -> float:
    """Mean per-pixel Shannon entropy (nats) of ``(K, H, W)`` class probabilities.

    0 for one-hot pixels, ``log K`` for uniform ones. Computed in float32, one class plane at a
    time (no ``(K, H, W)`` temporaries).
    """
    p = np.asarray(probabilities)
    if p.ndim != 3 or p.shape[0] < 1:
        raise ValueError(f"probabilities must be (K, H, W) with K >= 1, got shape {p.shape}")
    if p.shape[1] * p.shape[2] == 0:
        return float("nan")
    acc = np.zeros(p.shape[1:], dtype=np.float32)
    tmp = np.empty(p.shape[1:], dtype=np.float32)
    tiny = np.float32(1e-12)
    for plane in p:
        np.maximum(plane, tiny, out=tmp)
        np.log(tmp, out=tmp)
        tmp *= plane
        acc -= tmp
    return float(acc.mean(dtype=np.float64))


def foreground_columns(tp: int, fp: int, fn: int, tn: int) -> dict[str, Any]:
    """The ``metrics`` columns of the foreground confusion counts and the scores derived from them."""
    scores = M.scores_from_counts(tp, fp, fn, tn)
    return {
        "fg_tp": tp,
        "fg_fp": fp,
        "fg_fn": fn,
        "fg_tn": tn,
        "fg_iou": scores["iou"],
        "fg_dice": scores["dice"],
        "fg_precision": scores["precision"],
        "fg_recall": scores["recall"],
    }


def instance_columns(inst: M.InstanceScores) -> dict[str, Any]:
    """The ``metrics`` columns of the instance scores."""
    return {
        "inst_tp": inst.tp,
        "inst_fp": inst.fp,
        "inst_fn": inst.fn,
        "inst_f1": inst.f1,
        "inst_mean_iou": inst.mean_matched_iou,
        "inst_pq": inst.panoptic_quality,
        "dsb_score": inst.dsb_score,
    }


def metrics_row(
    seg: Segmentation,
    truth: np.ndarray | None,
    *,
    gt_format: str,
    ids: Mapping[str, Any],
    fg: np.ndarray | None = None,
    n_instances: int | None = None,
) -> dict[str, Any]:
    """One ``metrics`` row (without timings) for ``seg`` against optional ``truth``.

    Parameters
    ----------
    seg : Segmentation
        ``classes`` (H, W) int32, optional ``instances`` and ``probabilities`` (K, H, W).
    truth : (H, W) int32 or None
        Ground truth as read by :func:`segflow.ingest.read_ground_truth` with ``gt_format``;
        pixels equal to :data:`segflow.ingest.IGNORE` (-1) are left out of every score.
    gt_format : "binary" | "instances" | "classes"
    ids : mapping
        Identity columns copied into the row (image_id, source_uri, sha256, config_hash, run_id,
        segmenter).
    fg : (H, W) bool, optional
        The predicted foreground if the caller already has it (:func:`foreground`).
    n_instances : int, optional
        Number of predicted objects if already known (else counted from ``seg.instances``; 0 for
        semantic output).

    Score columns are left out when there is no ground truth (the store writes null) and are NaN
    when undefined (e.g. IoU with no foreground in prediction and truth; also stored as null).
    """
    if gt_format not in _GT_FORMATS:
        raise ValueError(f"gt_format must be one of {_GT_FORMATS}, got {gt_format!r}")
    classes = np.asarray(seg.classes)
    height, width = int(classes.shape[0]), int(classes.shape[1])
    if fg is None:
        fg = foreground(seg)
    n_fg = int(np.count_nonzero(fg))
    if n_instances is None:
        n_instances = (
            int(np.unique(seg.instances[seg.instances > 0]).size)
            if seg.instances is not None
            else 0
        )
    row: dict[str, Any] = dict(ids)
    row.update(
        width=width,
        height=height,
        n_instances=int(n_instances),
        fg_fraction=n_fg / max(1, height * width),
        mean_entropy=mean_entropy(seg.probabilities) if seg.probabilities is not None else None,
        has_ground_truth=truth is not None,
    )
    if truth is None:
        return row
    truth = np.asarray(truth)
    if truth.shape != classes.shape:
        raise ValueError(
            f"ground truth shape {truth.shape} differs from the image's {classes.shape}"
        )
    # IGNORE pixels (``gt_ignore``) count nowhere: not in the foreground counts, not in the
    # confusion matrix, and a predicted object's pixels there are cut off before matching
    ignored = truth == IGNORE
    if not ignored.any():
        ignored = None
    if ignored is None:
        row.update(foreground_columns(*M.binary_counts(fg, truth)))
    else:
        valid = ~ignored
        row.update(foreground_columns(*M.binary_counts(fg[valid], truth[valid] > 0)))
    if gt_format == "instances":
        pred_inst = seg.instances if seg.instances is not None else _components(classes)
        if ignored is not None:
            pred_inst = np.where(ignored, 0, pred_inst)
            truth = np.where(ignored, 0, truth)
        row.update(instance_columns(M.instance_scores(pred_inst, truth)))
    elif gt_format == "classes":
        k = max(
            len(seg.class_names), int(classes.max(initial=0)) + 1, int(truth.max(initial=0)) + 1
        )
        cm = M.confusion_matrix(classes, truth, num_classes=k, ignore_index=IGNORE)
        diag = np.diag(cm)
        row.update(
            class_iou=[float(v) for v in M.semantic_scores(cm).iou],
            class_tp=[int(v) for v in diag],
            class_fp=[int(v) for v in cm.sum(axis=0) - diag],
            class_fn=[int(v) for v in cm.sum(axis=1) - diag],
        )
    return row


def _components(classes: np.ndarray) -> np.ndarray:
    """The objects of a semantic output: connected components (8-connectivity) of each
    foreground class, as an ``(H, W) int32`` label map (two touching regions of different
    classes are two objects; the streamed path takes them the same way)."""
    labels, _ = postprocess.instances_from_classes(
        classes, num_classes=int(classes.max(initial=0)) + 1
    )
    return labels


def mask_rows(
    seg: Segmentation,
    *,
    ids: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """``masks`` rows: one per instance for instance output, one per present class otherwise.

    Each row holds ``class_id``, ``class_name``, ``instance_id`` (``None`` for class rows),
    ``score`` (instance score; mean class probability over the mask for class rows when the
    segmenter gives probabilities), the COCO ``bbox_*``, ``area``, ``height``, ``width`` and the
    compressed ``rle_counts`` string that ``pycocotools.mask.decode`` reads.
    """
    classes = np.asarray(seg.classes)
    height, width = int(classes.shape[0]), int(classes.shape[1])
    names = list(seg.class_names)
    rows: list[dict[str, Any]] = []

    def name_of(c: int) -> str:
        return names[c] if 0 <= c < len(names) else f"class_{c}"

    def add(
        rle: Mapping[str, Any],
        *,
        class_id: int,
        instance_id: int | None,
        score: float | None,
        box: tuple[int, int, int, int] | None = None,
        area: int | None = None,
    ) -> None:
        x, y, w, h = box if box is not None else R.bbox(rle)
        counts = rle["counts"]
        rows.append(
            {
                **ids,
                "class_id": int(class_id),
                "class_name": name_of(int(class_id)),
                "instance_id": instance_id,
                "score": score,
                "bbox_x": float(x),
                "bbox_y": float(y),
                "bbox_w": float(w),
                "bbox_h": float(h),
                "area": int(area if area is not None else R.area(rle)),
                "height": height,
                "width": width,
                "rle_counts": counts.decode() if isinstance(counts, bytes) else counts,
            }
        )

    if seg.instances is not None:
        # boxes and areas come with the RLEs (one pass), not by re-parsing them
        for obj in R.encode_objects(np.asarray(seg.instances)):
            add(
                obj.rle,
                class_id=int(seg.instance_classes.get(obj.label, 1)),
                instance_id=int(obj.label),
                score=float(seg.instance_scores.get(obj.label, 1.0)),
                box=obj.bbox,
                area=obj.area,
            )
        return rows
    present = np.flatnonzero(np.bincount(classes.ravel().astype(np.intp, copy=False)))
    for c in present:
        if c == 0:
            continue
        mask = classes == c
        score = None
        if seg.probabilities is not None and c < seg.probabilities.shape[0]:
            score = float(seg.probabilities[c][mask].mean(dtype=np.float64))
        add(R.encode(mask), class_id=int(c), instance_id=None, score=score)
    return rows


def evaluate(
    seg: Segmentation,
    truth: np.ndarray | None,
    *,
    gt_format: str,
    ids: Mapping[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(metrics row, mask rows)`` of one segmentation (see :func:`metrics_row`, :func:`mask_rows`)."""
    masks = mask_rows(seg, ids={k: ids[k] for k in _MASK_ID_KEYS if k in ids})
    n_inst = len(masks) if seg.instances is not None else 0
    row = metrics_row(seg, truth, gt_format=gt_format, ids=ids, n_instances=n_inst)
    return row, masks


_MASK_ID_KEYS = ("image_id", "sha256", "config_hash", "run_id")
_GT_FORMATS = ("binary", "instances", "classes")


# ---------------------------------------------------------------------------------------------
# one image, one chunk
# ---------------------------------------------------------------------------------------------


@dataclass
class ImageResult:
    """Rows of one processed image, and its overlay ``(H, W, 3) uint8`` when it has ground truth."""

    metrics: dict[str, Any]
    masks: list[dict[str, Any]]
    overlay: np.ndarray | None = None


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def process_image(
    item: ImageItem,
    *,
    config: RunConfig,
    segmenter: Segmenter,
    run_id: str,
    config_hash: str,
    data: bytes | None = None,
    overlay: bool = False,
) -> ImageResult:
    """Read, preprocess, segment and evaluate one image, timing each stage.

    Parameters
    ----------
    item : ImageItem
        The listed image (``gt_uri`` set when it has ground truth).
    config : RunConfig
        Tiling, ground-truth format and the pixel guard.
    segmenter : Segmenter
        A segmenter instance owned by the caller's thread (``fit`` keeps per-image state).
    data : bytes, optional
        The file's bytes if already read.
    overlay : bool
        Also draw the overlay (only for images with ground truth).

    Raises
    ------
    StageError
        With ``stage`` one of :data:`STAGES`, wrapping the original exception.
    """
    from segflow.inference import segment_image

    if data is None and _streams(item, config):  # issue 7: large TIFF/Zarr images, by window
        from segflow.large import process_image_streamed

        return process_image_streamed(
            item,
            config=config,
            segmenter=segmenter,
            run_id=run_id,
            config_hash=config_hash,
            overlay=overlay,
        )

    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    stage = "read"
    try:
        t0 = time.perf_counter()
        if data is None:
            data = read_bytes(item.uri)
        sha = hashlib.sha256(data).hexdigest()

        stage = "decode"
        image = read_image(data, name=item.rel_path, max_pixels=config.max_pixels)
        timings["t_read_ms"] = _ms(t0)

        stage = "preprocess"
        t0 = time.perf_counter()
        chw = to_float_chw(image)
        timings["t_preprocess_ms"] = _ms(t0)

        stage = "segment"
        seg = segment_image(
            segmenter,
            chw,
            tile=config.tile,
            overlap=config.overlap,
            blend=config.blend,
            batch_size=config.batch_size,
            timings=timings,  # t_segment_ms, t_stitch_ms
        )
        del chw

        t0 = time.perf_counter()
        truth = None
        if item.gt_uri is not None:
            stage = "ground_truth"
            truth = load_ground_truth(
                item,
                gt_format=config.gt_format,
                ignore=config.gt_ignore,
                shape=seg.classes.shape[:2],
                max_pixels=config.max_pixels,
            )

        stage = "evaluate"
        ids = {
            "image_id": item.image_id,
            "source_uri": item.uri,
            "sha256": sha,
            "config_hash": config_hash,
            "run_id": run_id,
            "segmenter": config.segmenter,
        }
        row, masks = evaluate(seg, truth, gt_format=config.gt_format, ids=ids)
        timings["t_evaluate_ms"] = _ms(t0)
    except Exception as exc:  # one image's failure, whatever it is, is data for `errors`
        raise StageError(stage, exc) from exc
    timings["t_total_ms"] = _ms(t_all)
    row.update(timings)
    picture = None
    if overlay and truth is not None:
        from segflow.overlay import draw_overlay

        try:
            pred = seg.instances if seg.instances is not None else seg.classes
            picture = draw_overlay(image, pred, truth)
        except Exception as exc:  # a picture never turns a scored image into an error
            logger.warning("cannot draw the overlay of %s: %s", item.uri, exc)
    return ImageResult(metrics=row, masks=masks, overlay=picture)


def _streams(item: ImageItem, config: RunConfig) -> bool:
    """Whether ``item`` goes through ``segflow.large`` (TIFF above the size switch, any Zarr;
    local or remote: :func:`segflow.large.should_stream`)."""
    from segflow import large

    mode, threshold = large.stream_mode(config)
    try:
        return large.should_stream(
            item.uri, mode=mode, threshold_pixels=threshold, max_pixels=config.max_pixels
        )
    except Exception:  # an unreadable header: the normal path reports it
        return False


def error_row(
    item: ImageItem, *, stage: str, error: BaseException, run_id: str, config_hash: str
) -> dict[str, Any]:
    """One ``errors`` row for ``item``."""
    message = str(error) or repr(error)
    return {
        "image_id": item.image_id,
        "source_uri": item.uri,
        "sha256": item.sha256,
        "config_hash": config_hash,
        "run_id": run_id,
        "stage": stage,
        "error_type": type(error).__name__,
        "message": message[:2000],
    }


def write_overlay(out_dir: str | Path, image_id: str, picture: np.ndarray) -> Path:
    """Write ``picture`` (H, W, 3) uint8 as ``out_dir/<image_id>.png`` atomically; returns the path."""
    from segflow.overlay import to_png

    path = Path(out_dir) / f"{image_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_bytes(to_png(picture))
    os.replace(tmp, path)
    return path


@dataclass
class ChunkResult:
    """Rows produced by a chunk of images (plain lists of dicts, ready for ``Store.write``)."""

    metrics: list[dict[str, Any]] = field(default_factory=list)
    masks: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: ChunkResult) -> None:
        self.metrics.extend(other.metrics)
        self.masks.extend(other.masks)
        self.errors.extend(other.errors)

    @property
    def n_images(self) -> int:
        return len(self.metrics) + len(self.errors)


def process_chunk(
    items: Sequence[ImageItem],
    *,
    config: RunConfig,
    run_id: str,
    config_hash: str,
    segmenter: Segmenter | None = None,
) -> ChunkResult:
    """Process ``items`` one after the other; every failure becomes one ``errors`` row.

    Overlays of images with ground truth go to ``<config.out>/overlays/<image_id>.png`` when
    ``config.write_overlays``. A failing overlay write is logged, not counted as an error (the
    image's rows are fine).
    """
    result = ChunkResult()
    if segmenter is None:
        segmenter = config.create_segmenter()
    overlay_dir = Path(config.out) / "overlays"
    for item in items:
        try:
            res = process_image(
                item,
                config=config,
                segmenter=segmenter,
                run_id=run_id,
                config_hash=config_hash,
                overlay=config.write_overlays,
            )
        except StageError as exc:
            logger.info("%s failed at %s: %s", item.uri, exc.stage, exc.error)
            result.errors.append(
                error_row(
                    item, stage=exc.stage, error=exc.error, run_id=run_id, config_hash=config_hash
                )
            )
            continue
        if res.overlay is not None:
            try:
                write_overlay(overlay_dir, item.image_id, res.overlay)
            except OSError as exc:
                logger.warning("cannot write the overlay of %s: %s", item.uri, exc)
        result.metrics.append(res.metrics)
        result.masks.extend(res.masks)
    return result


# ---------------------------------------------------------------------------------------------
# run aggregates
# ---------------------------------------------------------------------------------------------

_TABLE_COLUMNS = (
    "image_id",
    "width",
    "height",
    "n_instances",
    "fg_fraction",
    "fg_iou",
    "fg_dice",
    "inst_f1",
    "dsb_score",
    "t_total_ms",
)


@dataclass
class RunStats:
    """Bounded aggregates of a run: counts, score means, and the ``keep`` worst images.

    Images are ranked by ``fg_iou`` (lowest first; images without a score rank last, in arrival
    order), so memory stays ``O(keep)`` whatever the number of images.
    """

    keep: int = 500
    listed: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    _heap: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)
    _seq: int = 0

    def add(self, chunk: ChunkResult) -> None:
        """Count a chunk's images and fold its metrics rows into the aggregates."""
        self.done += len(chunk.metrics)
        self.failed += len(chunk.errors)
        for row in chunk.metrics:
            for col in SCORE_COLUMNS:
                v = row.get(col)
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    self.sums[col] = self.sums.get(col, 0.0) + float(v)
                    self.counts[col] = self.counts.get(col, 0) + 1
            iou = row.get("fg_iou")
            key = float(iou) if iou is not None and not math.isnan(iou) else math.inf
            entry = (-key, -self._seq, {c: row.get(c) for c in _TABLE_COLUMNS})
            self._seq += 1
            # max-heap on (key, seq) via negation: keep the `keep` smallest keys, earliest first
            if len(self._heap) < self.keep:
                heapq.heappush(self._heap, entry)
            elif entry > self._heap[0]:
                heapq.heapreplace(self._heap, entry)

    def means(self) -> dict[str, float]:
        """Mean of each score column over the images that have it."""
        return {c: self.sums[c] / self.counts[c] for c in SCORE_COLUMNS if self.counts.get(c)}

    def worst(self, n: int | None = None) -> list[dict[str, Any]]:
        """The kept images, worst ``fg_iou`` first (then arrival order), at most ``n``."""
        rows = [r for _, _, r in sorted(self._heap, reverse=True)]
        return rows if n is None else rows[:n]


def summary_markdown(
    stats: RunStats,
    *,
    config_hash: str,
    out: str | Path,
    n_thumbnails: int = 5,
    thumb_side: int = 160,
) -> str:
    """Markdown run summary: counts, mean scores, and the worst images' overlays inline.

    Thumbnails are read from ``out/overlays/<image_id>.png`` and embedded as
    ``data:image/png;base64`` images (the Prefect UI renders them).
    """
    from segflow.io import read_image
    from segflow.overlay import thumbnail, to_data_uri

    lines = [
        "# segflow run summary",
        "",
        f"config hash `{config_hash}`, store `{out}`",
        "",
        "| listed | done | skipped | failed |",
        "|---:|---:|---:|---:|",
        f"| {stats.listed} | {stats.done} | {stats.skipped} | {stats.failed} |",
        "",
    ]
    means = stats.means()
    if means:
        lines += ["| score | mean | images |", "|---|---:|---:|"]
        lines += [f"| {c} | {v:.4f} | {stats.counts[c]} |" for c, v in means.items()]
        lines.append("")
    shown = 0
    overlay_dir = Path(out) / "overlays"
    for row in stats.worst():
        if shown >= n_thumbnails or row.get("fg_iou") is None:
            break
        path = overlay_dir / f"{row['image_id']}.png"
        if not path.is_file():
            continue
        if shown == 0:
            lines += ["## Worst images (lowest foreground IoU)", ""]
        try:
            thumb = thumbnail(read_image(str(path)), max_side=thumb_side)
        except Exception as exc:  # a summary never fails the run for a picture
            logger.warning("cannot thumbnail %s: %s", path, exc)
            continue
        score = float(row["fg_iou"])
        lines.append(
            f"**{row['image_id']}** fg_iou {score:.3f}  \n![{row['image_id']}]({to_data_uri(thumb)})"
        )
        lines.append("")
        shown += 1
    return "\n".join(lines)


def done_hashes(store: Store, config_hash: str, *, retry_errors: bool = False) -> set[str]:
    """sha256 values already handled for ``config_hash``: a ``metrics`` row, or (unless
    ``retry_errors``) an ``errors`` row whose failure would repeat (any stage but ``read``, which
    can be a passing I/O problem). Rerunning a batch then adds no rows at all.
    """
    done = store.processed(config_hash)
    if not retry_errors:
        errors = store.read("errors", columns=["sha256", "config_hash", "stage"])
        hit = errors[(errors["config_hash"] == config_hash) & (errors["stage"] != "read")]
        done |= {s for s in hit["sha256"].dropna().tolist()}
    return done


def items_by_chunk(items: Sequence[ImageItem], size: int) -> Iterable[list[ImageItem]]:
    """Consecutive chunks of ``size`` items (the last one shorter)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    for i in range(0, len(items), size):
        yield list(items[i : i + size])
