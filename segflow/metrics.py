"""Segmentation metrics computed from counts.

Everything here is derived from integer counts first (a confusion matrix, the four binary counts
``tp, fp, fn, tn``, or the pairwise intersections of instances) and only then reduced to scores,
the way segmentation-models-pytorch separates ``get_stats`` from the reductions.  The counts are
what the store keeps, so every score can be recomputed later without the masks.

Undefined values: one rule for the whole module
-----------------------------------------------
Every score is a ratio of counts.  **When the denominator is zero the score is undefined and is
returned as NaN**, never 0 or 1.  Means (``mean_iou`` and friends) are NaN-means, so undefined
entries are excluded from them; a mean over nothing is NaN (no warning is raised).  In particular:

* a class absent from both truth and prediction has NaN IoU, Dice, precision and recall and does
  not enter the means;
* a class present in the truth but never predicted has IoU = Dice = recall = 0 and NaN precision;
* a class predicted but absent from the truth has IoU = Dice = precision = 0 and NaN recall;
* for instances, an image with no objects in the truth *and* none predicted has NaN ``f1``,
  ``panoptic_quality``, ``dsb_score``, precision and recall; ``mean_matched_iou`` is NaN whenever
  nothing matched.

Other tools pick a number instead: stardist's ``matching`` returns 0.0 for the empty-empty case
(its ``_safe_divide``), several panoptic-quality scripts and Kaggle's Airbus challenge return 1.0,
and the 2018 Data Science Bowl's metric description does not cover an image without nuclei.
NaN keeps "nothing to score" apart from "scored badly"; a caller who wants either convention
writes ``np.nan_to_num(score, nan=1.0)`` (or ``nan=0.0``).  scikit-learn's scores agree with this
module wherever they are defined; where they are not, scikit-learn returns its ``zero_division``
value and this module returns NaN.

Instance matching
-----------------
A predicted object matches a true object when their IoU is strictly greater than the threshold.
For thresholds >= 0.5 a matching is unique without any assignment step: two objects with
IoU > 0.5 with the same partner would have to overlap that partner in more than half of it each
(see :func:`instance_scores`).  The IoUs come from one joint ``bincount`` of the two label maps
(a sparse contingency table: only pairs that actually overlap are kept), so hundreds or thousands
of objects cost one pass over the pixels; label ids need not be consecutive.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DSB_THRESHOLDS",
    "InstanceOverlaps",
    "InstanceScores",
    "SemanticScores",
    "binary_counts",
    "confusion_matrix",
    "instance_overlaps",
    "instance_scores",
    "instance_scores_from_overlaps",
    "scores_from_counts",
    "semantic_scores",
]

#: IoU thresholds of the 2018 Data Science Bowl metric, 0.50, 0.55, ..., 0.95, as ``k / 20``.
#: The metric compares ``20 * intersection > k * union`` in integers, so no float rounding of
#: ``0.5 + 0.05 * i`` can move a match across a threshold.
DSB_THRESHOLDS: tuple[float, ...] = tuple(k / 20 for k in range(10, 20))
_DSB_NUMERATORS = np.arange(10, 20, dtype=np.int64)  # thresholds = numerators / 20

# Above this many cells the instance contingency table is built sparsely (np.unique) instead of
# with a dense bincount over all (true, pred) id pairs.
_DENSE_PAIR_LIMIT = 1 << 20


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _as_int_array(name: str, values: npt.ArrayLike) -> np.ndarray:
    """Return ``values`` as an integer ndarray (bool becomes 0/1); reject other dtypes."""
    arr = np.asarray(values)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{name} must hold integer labels or booleans, got dtype {arr.dtype}; "
            "allowed: bool, int8..int64, uint8..uint64"
        )
    return arr


def _check_same_shape(pred: np.ndarray, true: np.ndarray) -> None:
    if pred.shape != true.shape:
        raise ValueError(
            f"pred and true must have the same shape, got pred {pred.shape} and true {true.shape}"
        )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` as float64 with NaN where ``den == 0``."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    """Mean over the finite entries; NaN (without a warning) when there are none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return float(np.nanmean(values)) if values.size else float("nan")


def _scalar_ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den != 0 else float("nan")


# --------------------------------------------------------------------------------------------
# semantic metrics
# --------------------------------------------------------------------------------------------


def confusion_matrix(
    pred: npt.ArrayLike,
    true: npt.ArrayLike,
    *,
    num_classes: int,
    ignore_index: int | None = None,
) -> np.ndarray:
    """Confusion matrix of a semantic prediction.

    Parameters
    ----------
    pred, true : (...) integer or bool ndarray, same shape
        Class ids per pixel (any shape, e.g. ``(H, W)``); bool is read as classes 0/1.
    num_classes : int
        ``K`` >= 1; valid class ids are ``0 .. K-1``.
    ignore_index : int, optional
        Pixels whose *truth* equals this value are left out (their prediction is not checked).
        It may lie inside or outside ``0 .. K-1``.

    Returns
    -------
    (K, K) int64 ndarray
        ``cm[i, j]`` = number of pixels of true class ``i`` predicted as class ``j`` (rows =
        truth, columns = prediction, as ``sklearn.metrics.confusion_matrix``).

    Raises
    ------
    ValueError
        shapes differ, a non-integer dtype, ``num_classes`` < 1, or a (non-ignored) value outside
        ``[0, K)``; the message names the value and the range.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    k = int(num_classes)
    if k < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {k}")
    p = _as_int_array("pred", pred)
    t = _as_int_array("true", true)
    _check_same_shape(p, t)
    p = p.ravel()
    t = t.ravel()
    if ignore_index is not None:
        keep = t != ignore_index
        if not keep.all():
            p = p[keep]
            t = t[keep]
    for name, arr in (("true", t), ("pred", p)):
        if arr.size == 0:
            continue
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= k:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{name} contains class id {bad}, outside the allowed range [0, {k}) "
                f"(num_classes={k}"
                + (f", ignore_index={ignore_index}" if ignore_index is not None else "")
                + ")"
            )
    # One pass: each (truth, prediction) pair becomes one bin of a K*K histogram.
    codes = t.astype(np.intp, copy=False) * k + p.astype(np.intp, copy=False)
    cm = np.bincount(codes, minlength=k * k).reshape(k, k)
    return cm.astype(np.int64, copy=False)


@dataclass(frozen=True, eq=False)
class SemanticScores:
    """Per-class scores derived from a confusion matrix (see :func:`semantic_scores`).

    Arrays are ``(K,)`` float64 with NaN where a score is undefined (zero denominator); the
    ``mean_*`` fields are NaN-means over the classes (NaN entries excluded).
    """

    iou: np.ndarray
    dice: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    mean_iou: float
    mean_dice: float
    mean_precision: float
    mean_recall: float


def semantic_scores(cm: npt.ArrayLike) -> SemanticScores:
    """Per-class IoU, Dice, precision and recall from a confusion matrix.

    Parameters
    ----------
    cm : (K, K) integer ndarray
        Rows = truth, columns = prediction (as returned by :func:`confusion_matrix`).

    Returns
    -------
    SemanticScores
        With ``tp = cm[c, c]``, ``fp = column sum - tp``, ``fn = row sum - tp`` for class ``c``:
        ``iou = tp / (tp + fp + fn)``, ``dice = 2 tp / (2 tp + fp + fn)``,
        ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``.

    Empty-class convention: a ratio with a zero denominator is NaN and is excluded from the
    means.  So a class absent from both truth and prediction has NaN in all four scores; a class
    only in the truth has precision NaN (nothing predicted) and IoU = Dice = recall = 0; a class
    only predicted has recall NaN and IoU = Dice = precision = 0.  This equals scikit-learn's
    ``jaccard_score`` / ``f1_score`` / ``precision_score`` / ``recall_score`` with
    ``average=None``, except that scikit-learn puts its ``zero_division`` value where this
    function puts NaN.
    """
    m = np.asarray(cm)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise ValueError(f"cm must be a square (K, K) matrix with K >= 1, got shape {m.shape}")
    if not np.issubdtype(m.dtype, np.integer):
        raise ValueError(f"cm must hold integer counts, got dtype {m.dtype}")
    if m.size and int(m.min()) < 0:
        raise ValueError(f"cm must hold counts >= 0, got a minimum of {int(m.min())}")
    m = m.astype(np.int64, copy=False)
    tp = np.diagonal(m)
    fp = m.sum(axis=0) - tp
    fn = m.sum(axis=1) - tp
    iou = _ratio(tp, tp + fp + fn)
    dice = _ratio(2 * tp, 2 * tp + fp + fn)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return SemanticScores(
        iou=iou,
        dice=dice,
        precision=precision,
        recall=recall,
        mean_iou=_nanmean(iou),
        mean_dice=_nanmean(dice),
        mean_precision=_nanmean(precision),
        mean_recall=_nanmean(recall),
    )


def binary_counts(pred: npt.ArrayLike, true: npt.ArrayLike) -> tuple[int, int, int, int]:
    """Foreground confusion counts of two masks.

    Parameters
    ----------
    pred, true : (H, W) bool or integer ndarray, same shape
        Foreground is ``!= 0``, so label maps can be passed directly.

    Returns
    -------
    (tp, fp, fn, tn) : tuple of Python int
        ``tp`` = both foreground, ``fp`` = predicted only, ``fn`` = true only, ``tn`` = neither;
        they sum to the number of pixels.
    """
    p = np.asarray(pred)
    t = np.asarray(true)
    _check_same_shape(p, t)
    pf = p if p.dtype == np.bool_ else p != 0
    tf = t if t.dtype == np.bool_ else t != 0
    tp = int(np.count_nonzero(pf & tf))
    n_pred = int(np.count_nonzero(pf))
    n_true = int(np.count_nonzero(tf))
    fp = n_pred - tp
    fn = n_true - tp
    tn = int(pf.size) - tp - fp - fn
    return tp, fp, fn, tn


def scores_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """IoU, Dice, precision and recall of one class from its four counts.

    Returns ``{"iou", "dice", "precision", "recall"}`` as floats; NaN where the denominator is
    zero (the module-wide convention: with no foreground in truth and prediction all four are
    NaN).  ``tn`` does not enter these scores; it is checked and accepted so that a stored row
    ``(tp, fp, fn, tn)`` can be passed as is.
    """
    counts = {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name} must be an integer count >= 0, got {value!r}")
    tp_, fp_, fn_ = int(tp), int(fp), int(fn)
    return {
        "iou": _scalar_ratio(tp_, tp_ + fp_ + fn_),
        "dice": _scalar_ratio(2 * tp_, 2 * tp_ + fp_ + fn_),
        "precision": _scalar_ratio(tp_, tp_ + fp_),
        "recall": _scalar_ratio(tp_, tp_ + fn_),
    }


# --------------------------------------------------------------------------------------------
# instance metrics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class InstanceOverlaps:
    """Sparse contingency table of two label maps.

    ``true_ids`` ``(Nt,)`` and ``pred_ids`` ``(Np,)`` are the non-zero label ids present (sorted),
    ``true_areas`` / ``pred_areas`` their pixel counts (int64).  Each overlapping pair ``k`` is
    ``(pair_true[k], pair_pred[k])`` — indices into ``true_ids`` / ``pred_ids`` — with
    ``intersection[k]`` pixels in common (int64, > 0).  Pairs that do not overlap are absent.
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_areas: np.ndarray
    pred_areas: np.ndarray
    pair_true: np.ndarray
    pair_pred: np.ndarray
    intersection: np.ndarray

    @property
    def union(self) -> np.ndarray:
        """``(P,)`` int64 union size of each overlapping pair."""
        return self.true_areas[self.pair_true] + self.pred_areas[self.pair_pred] - self.intersection

    @property
    def iou(self) -> np.ndarray:
        """``(P,)`` float64 IoU of each overlapping pair."""
        return self.intersection / self.union


def _compact_labels(name: str, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map the ids of a label map to ``0 (background), 1..N``.

    Returns ``(compact (P,) intp, ids (N,) int64 sorted, areas (N,) int64)``.
    """
    flat = labels.ravel()
    if flat.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros(0, dtype=np.intp), empty, empty
    lo = int(flat.min())
    if lo < 0:
        raise ValueError(f"{name} must hold label ids >= 0 (0 = background), got {lo}")
    hi = int(flat.max())
    if hi <= max(4 * flat.size, 1 << 16):
        # ids are small enough for a lookup table: one bincount, one gather.
        counts = np.bincount(flat.astype(np.intp, copy=False), minlength=1)
        ids = np.flatnonzero(counts)
        ids = ids[ids > 0]
        lut = np.zeros(counts.size, dtype=np.intp)
        lut[ids] = np.arange(1, ids.size + 1, dtype=np.intp)
        return lut[flat], ids.astype(np.int64), counts[ids].astype(np.int64)
    uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1).astype(np.intp, copy=False)
    if uniq[0] == 0:
        return inverse, uniq[1:].astype(np.int64), counts[1:].astype(np.int64)
    return inverse + 1, uniq.astype(np.int64), counts.astype(np.int64)


def instance_overlaps(pred_labels: npt.ArrayLike, true_labels: npt.ArrayLike) -> InstanceOverlaps:
    """Sparse table of pixel overlaps between the instances of two label maps.

    Parameters
    ----------
    pred_labels, true_labels : (H, W) integer or bool ndarray, same shape
        Instance label maps: 0 = background, every other id is one object (ids need not be
        consecutive; a bool mask is one object).

    Returns
    -------
    InstanceOverlaps
        Built from one joint ``bincount`` over the pixels where both maps are foreground (or
        ``np.unique`` on the pair codes when ``Nt * Np`` is very large).
    """
    p = _as_int_array("pred_labels", pred_labels)
    t = _as_int_array("true_labels", true_labels)
    _check_same_shape(p, t)
    cp, pred_ids, pred_areas = _compact_labels("pred_labels", p)
    ct, true_ids, true_areas = _compact_labels("true_labels", t)
    n_p, n_t = pred_ids.size, true_ids.size
    both = (cp > 0) & (ct > 0)
    codes = (ct[both] - 1) * n_p + (cp[both] - 1) if n_p else np.zeros(0, dtype=np.intp)
    if n_t * n_p <= _DENSE_PAIR_LIMIT:
        table = np.bincount(codes, minlength=n_t * n_p)
        pair_codes = np.flatnonzero(table)
        inter = table[pair_codes]
    else:
        pair_codes, inter = np.unique(codes, return_counts=True)
    pair_true, pair_pred = np.divmod(pair_codes, max(n_p, 1))
    return InstanceOverlaps(
        true_ids=true_ids,
        pred_ids=pred_ids,
        true_areas=true_areas,
        pred_areas=pred_areas,
        pair_true=pair_true.astype(np.intp),
        pair_pred=pair_pred.astype(np.intp),
        intersection=inter.astype(np.int64),
    )


@dataclass(frozen=True, eq=False)
class InstanceScores:
    """Object-level scores of an instance segmentation (see :func:`instance_scores`)."""

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    mean_matched_iou: float
    panoptic_quality: float
    dsb_score: float
    n_pred: int
    n_true: int
    iou_threshold: float

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain ``dict`` (for table rows)."""
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "mean_matched_iou": self.mean_matched_iou,
            "panoptic_quality": self.panoptic_quality,
            "dsb_score": self.dsb_score,
            "n_pred": self.n_pred,
            "n_true": self.n_true,
            "iou_threshold": self.iou_threshold,
        }


def instance_scores(
    pred_labels: npt.ArrayLike,
    true_labels: npt.ArrayLike,
    *,
    iou_threshold: float = 0.5,
) -> InstanceScores:
    """Match predicted to true objects and score the matching.

    Parameters
    ----------
    pred_labels, true_labels : (H, W) integer or bool ndarray, same shape
        Instance label maps, 0 = background; ids need not be consecutive.
    iou_threshold : float
        A pair matches when ``IoU > iou_threshold`` (strictly).  Allowed range ``[0.5, 1)``:
        from 0.5 up, every object has at most one partner above the threshold (if a true object
        ``T`` had two predicted partners ``A``, ``B`` with IoU > 0.5, then ``|A ∩ T| > |T|/2`` and
        ``|B ∩ T| > |T|/2``, so ``A`` and ``B`` would overlap, which disjoint labels cannot), so
        the matching is unique and needs no assignment solver.

    Returns
    -------
    InstanceScores
        * ``tp`` matched pairs, ``fp = n_pred - tp``, ``fn = n_true - tp``;
        * ``precision = tp / n_pred``, ``recall = tp / n_true``,
          ``f1 = 2 tp / (2 tp + fp + fn)``;
        * ``mean_matched_iou``: mean IoU of the matched pairs (NaN when ``tp == 0``);
        * ``panoptic_quality = sum of matched IoUs / (tp + fp/2 + fn/2)`` (Kirillov et al.;
          equals segmentation quality × recognition quality);
        * ``dsb_score``: the 2018 Data Science Bowl metric, the mean over the thresholds
          ``t = 0.50, 0.55, ..., 0.95`` of ``TP(t) / (TP(t) + FP(t) + FN(t))`` where a pair is a
          hit when ``IoU > t``; independent of ``iou_threshold`` and compared exactly in
          integers (``20 * intersection > 20 t * union``).

    Edge cases follow the module rule (zero denominator -> NaN): with no objects in either map
    ``precision``, ``recall``, ``f1``, ``panoptic_quality`` and ``dsb_score`` are NaN (stardist
    returns 0.0 there, some PQ scripts 1.0; the DSB metric does not define it).  With objects on
    only one side they are 0, except the undefined one of precision/recall and
    ``mean_matched_iou``, which is NaN whenever ``tp == 0``.
    """
    return instance_scores_from_overlaps(
        instance_overlaps(pred_labels, true_labels), iou_threshold=iou_threshold
    )


def instance_scores_from_overlaps(
    ov: InstanceOverlaps, *, iou_threshold: float = 0.5
) -> InstanceScores:
    """:func:`instance_scores` from the contingency table alone (object areas and overlaps).

    For label maps that are never whole in memory: a streamed image accumulates each object's
    area and its overlaps with the true objects window by window, and scores them here.
    """
    thr = float(iou_threshold)
    if not 0.5 <= thr < 1.0:
        raise ValueError(
            f"iou_threshold must be in [0.5, 1) so that matches are unique, got {iou_threshold!r}"
        )
    n_pred, n_true = int(ov.pred_ids.size), int(ov.true_ids.size)
    union = ov.union
    iou = ov.intersection / union if union.size else np.zeros(0, dtype=np.float64)
    matched = iou > thr
    tp = int(np.count_nonzero(matched))
    fp, fn = n_pred - tp, n_true - tp
    matched_iou_sum = float(iou[matched].sum())

    # DSB: hits at t = k/20  <=>  20 * intersection > k * union (exact integer comparison).
    hits = (20 * ov.intersection)[:, None] > union[:, None] * _DSB_NUMERATORS[None, :]
    tp_t = hits.sum(axis=0).astype(np.int64)
    denom_t = n_pred + n_true - tp_t  # = tp + fp + fn at each threshold
    if n_pred + n_true == 0:
        dsb = float("nan")
    else:
        dsb = float(np.mean(tp_t / denom_t))

    return InstanceScores(
        tp=tp,
        fp=fp,
        fn=fn,
        precision=_scalar_ratio(tp, n_pred),
        recall=_scalar_ratio(tp, n_true),
        f1=_scalar_ratio(2 * tp, 2 * tp + fp + fn),
        mean_matched_iou=_scalar_ratio(matched_iou_sum, tp),
        panoptic_quality=_scalar_ratio(matched_iou_sum, tp + 0.5 * fp + 0.5 * fn),
        dsb_score=dsb,
        n_pred=n_pred,
        n_true=n_true,
        iou_threshold=thr,
    )
