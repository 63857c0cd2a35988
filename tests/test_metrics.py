"""segflow.metrics against scikit-learn, MONAI and a brute-force instance matcher."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm

from segflow import metrics
from segflow.metrics import (
    DSB_THRESHOLDS,
    binary_counts,
    confusion_matrix,
    instance_overlaps,
    instance_scores,
    scores_from_counts,
    semantic_scores,
)

TOL = 1e-12

# scikit-learn warns when y_true and y_pred hold one label only: those inputs are wanted here.
pytestmark = pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")


# --------------------------------------------------------------------------------------------
# semantic metrics vs scikit-learn
# --------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, dtypes: tuple[type[np.integer], ...]) -> type[np.integer]:
    return dtypes[int(rng.integers(len(dtypes)))]


def _random_semantic_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Random (pred, true, K) with some classes missing from truth, prediction or both."""
    k = int(rng.integers(1, 9))
    shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    n_true_classes = int(rng.integers(1, k + 1))
    n_pred_classes = int(rng.integers(1, k + 1))
    true_classes = rng.choice(k, size=n_true_classes, replace=False)
    pred_classes = rng.choice(k, size=n_pred_classes, replace=False)
    true = rng.choice(true_classes, size=shape)
    pred = rng.choice(pred_classes, size=shape)
    # make the prediction partly right so that scores are not all near zero
    agree = rng.random(shape) < rng.random()
    pred = np.where(agree & np.isin(true, pred_classes), true, pred)
    dtype = _pick(rng, (np.uint8, np.int32, np.int64))
    return pred.astype(dtype), true.astype(dtype), k


_SKLEARN_SCORES = {
    "iou": skm.jaccard_score,
    "dice": skm.f1_score,
    "precision": skm.precision_score,
    "recall": skm.recall_score,
}


def _sklearn_scores(y_t: np.ndarray, y_p: np.ndarray, **kw: object) -> dict[str, np.ndarray]:
    """scikit-learn's scores with NaN exactly where scikit-learn calls them undefined.

    ``jaccard_score`` does not accept ``zero_division=np.nan``; an entry is undefined when its
    value changes between ``zero_division=0`` and ``zero_division=1``.
    """
    out = {}
    for name, fn in _SKLEARN_SCORES.items():
        at0 = np.asarray(fn(y_t, y_p, zero_division=0, **kw), dtype=np.float64)
        at1 = np.asarray(fn(y_t, y_p, zero_division=1, **kw), dtype=np.float64)
        out[name] = np.where(at0 != at1, np.nan, at0)
    return out


@pytest.mark.parametrize("seed", range(8))
def test_confusion_matrix_and_scores_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(40):
        pred, true, k = _random_semantic_case(rng)
        labels = list(range(k))
        cm = confusion_matrix(pred, true, num_classes=k)
        expected_cm = skm.confusion_matrix(true.ravel(), pred.ravel(), labels=labels)
        assert cm.dtype == np.int64 and cm.shape == (k, k)
        np.testing.assert_array_equal(cm, expected_cm)

        s = semantic_scores(cm)
        y_t, y_p = true.ravel(), pred.ravel()
        for name, want in _sklearn_scores(y_t, y_p, labels=labels, average=None).items():
            got = getattr(s, name)
            assert got.shape == (k,) and got.dtype == np.float64
            np.testing.assert_allclose(got, want, rtol=0, atol=TOL, equal_nan=True, err_msg=name)
            with np.errstate(all="ignore"):
                want_mean = float(np.nanmean(want)) if np.isfinite(want).any() else math.nan
            got_mean = getattr(s, f"mean_{name}")
            assert isinstance(got_mean, float)
            np.testing.assert_allclose(got_mean, want_mean, rtol=0, atol=TOL, equal_nan=True)


def test_empty_class_convention() -> None:
    # class 0 in both, class 1 only in truth, class 2 only predicted, class 3 nowhere
    true = np.array([0, 0, 1, 1, 0])
    pred = np.array([0, 0, 0, 2, 0])
    s = semantic_scores(confusion_matrix(pred, true, num_classes=4))
    # class 0: tp=3, fp=1 (a true 1 predicted 0), fn=0
    np.testing.assert_allclose(s.iou[0], 3 / 4, rtol=0, atol=TOL)
    assert s.iou[1] == 0 and s.recall[1] == 0 and s.dice[1] == 0 and math.isnan(s.precision[1])
    assert s.iou[2] == 0 and s.precision[2] == 0 and s.dice[2] == 0 and math.isnan(s.recall[2])
    assert all(math.isnan(v[3]) for v in (s.iou, s.dice, s.precision, s.recall))
    # means skip the NaN of class 3 (and the other undefined entries)
    np.testing.assert_allclose(s.mean_iou, (3 / 4 + 0 + 0) / 3, rtol=0, atol=TOL)
    np.testing.assert_allclose(s.mean_precision, (3 / 4 + 0) / 2, rtol=0, atol=TOL)
    np.testing.assert_allclose(s.mean_recall, (1 + 0) / 2, rtol=0, atol=TOL)


def test_all_classes_absent_gives_nan_means_without_warning() -> None:
    with np.testing.assert_no_warnings():
        s = semantic_scores(np.zeros((3, 3), dtype=np.int64))
    assert np.isnan(s.iou).all() and math.isnan(s.mean_iou) and math.isnan(s.mean_dice)


def test_ignore_index_matches_sklearn_on_kept_pixels() -> None:
    rng = np.random.default_rng(11)
    for ignore in (255, 2, -1):
        true = rng.integers(0, 4, size=(30, 17))
        true[rng.random(true.shape) < 0.3] = ignore
        pred = rng.integers(0, 4, size=true.shape)
        cm = confusion_matrix(pred, true, num_classes=4, ignore_index=ignore)
        keep = true != ignore
        expected = skm.confusion_matrix(true[keep], pred[keep], labels=[0, 1, 2, 3])
        np.testing.assert_array_equal(cm, expected)
        assert cm.sum() == keep.sum()


def test_confusion_matrix_accepts_bool_masks() -> None:
    rng = np.random.default_rng(3)
    true = rng.random((20, 20)) < 0.4
    pred = rng.random((20, 20)) < 0.5
    cm = confusion_matrix(pred, true, num_classes=2)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(true.ravel(), pred.ravel()))


@pytest.mark.parametrize(
    ("pred", "true", "k", "fragment"),
    [
        (np.array([0, 1, 7]), np.array([0, 1, 1]), 3, "pred contains class id 7"),
        (np.array([0, 1, 1]), np.array([0, -2, 1]), 3, "true contains class id -2"),
        (np.array([0, 1, 1]), np.array([0, 3, 1]), 3, "[0, 3)"),
    ],
)
def test_confusion_matrix_out_of_range_names_value_and_range(
    pred: np.ndarray, true: np.ndarray, k: int, fragment: str
) -> None:
    with pytest.raises(ValueError, match=r"outside the allowed range \[0, 3\)") as info:
        confusion_matrix(pred, true, num_classes=k)
    assert fragment in str(info.value)


def test_confusion_matrix_rejects_bad_arguments() -> None:
    a = np.zeros((2, 2), dtype=np.int32)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(a, np.zeros((2, 3), dtype=np.int32), num_classes=2)
    with pytest.raises(ValueError, match="dtype float64"):
        confusion_matrix(a.astype(float), a, num_classes=2)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1, got 0"):
        confusion_matrix(a, a, num_classes=0)
    with pytest.raises(ValueError, match="square"):
        semantic_scores(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=">= 0"):
        semantic_scores(np.array([[1, -1], [0, 1]]))


def test_binary_counts_and_scores_from_counts_match_sklearn() -> None:
    rng = np.random.default_rng(5)
    for _ in range(60):
        shape = (int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        # label maps (ids > 1) as well as bool masks; sometimes empty foreground
        true = rng.integers(0, 5, size=shape) * (rng.random(shape) < rng.random())
        pred = (rng.random(shape) < rng.random()) if rng.random() < 0.5 else true * 0
        tp, fp, fn, tn = binary_counts(pred, true)
        assert all(type(v) is int for v in (tp, fp, fn, tn))
        y_t, y_p = (true != 0).ravel(), (pred != 0).ravel()
        e_tn, e_fp, e_fn, e_tp = skm.confusion_matrix(y_t, y_p, labels=[False, True]).ravel()
        assert (tp, fp, fn, tn) == (e_tp, e_fp, e_fn, e_tn)

        got = scores_from_counts(tp, fp, fn, tn)
        assert set(got) == {"iou", "dice", "precision", "recall"}
        expected = _sklearn_scores(y_t, y_p, pos_label=True, labels=[False, True])
        for name, want in expected.items():
            np.testing.assert_allclose(got[name], want, rtol=0, atol=TOL, equal_nan=True)
        # the same numbers as class 1 of the 2-class semantic scores
        s = semantic_scores(confusion_matrix(pred != 0, true != 0, num_classes=2))
        np.testing.assert_allclose(got["iou"], s.iou[1], rtol=0, atol=TOL, equal_nan=True)
        np.testing.assert_allclose(got["dice"], s.dice[1], rtol=0, atol=TOL, equal_nan=True)


def test_scores_from_counts_edge_cases() -> None:
    empty = scores_from_counts(0, 0, 0, 100)
    assert all(math.isnan(v) for v in empty.values())
    missed = scores_from_counts(0, 0, 5, 10)
    assert missed["iou"] == 0 and missed["recall"] == 0 and math.isnan(missed["precision"])
    with pytest.raises(ValueError, match="fp must be an integer count >= 0, got -1"):
        scores_from_counts(1, -1, 0, 0)
    with pytest.raises(ValueError, match="tp must be an integer count"):
        scores_from_counts(1.5, 0, 0, 0)  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 5).flatmap(
        lambda k: st.tuples(
            st.just(k),
            arrays(np.int16, (6, 7), elements=st.integers(0, k - 1)),
            arrays(np.int16, (6, 7), elements=st.integers(0, k - 1)),
        )
    )
)
def test_semantic_scores_property(case: tuple[int, np.ndarray, np.ndarray]) -> None:
    k, pred, true = case
    cm = confusion_matrix(pred, true, num_classes=k)
    assert cm.sum() == pred.size
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(true.ravel(), minlength=k))
    np.testing.assert_array_equal(cm.sum(axis=0), np.bincount(pred.ravel(), minlength=k))
    s = semantic_scores(cm)
    want = _sklearn_scores(true.ravel(), pred.ravel(), labels=list(range(k)), average=None)
    for name, values in want.items():
        np.testing.assert_allclose(getattr(s, name), values, rtol=0, atol=TOL, equal_nan=True)
    # Dice and IoU are the same ranking: dice = 2 iou / (1 + iou)
    np.testing.assert_allclose(s.dice, 2 * s.iou / (1 + s.iou), rtol=0, atol=TOL, equal_nan=True)


# --------------------------------------------------------------------------------------------
# instance metrics vs a brute-force matcher
# --------------------------------------------------------------------------------------------


def _brute_force(pred: np.ndarray, true: np.ndarray, threshold: Fraction) -> dict[str, float]:
    """Independent oracle: explicit masks, exact IoUs, maximum matching by linear assignment."""
    t_ids = [int(i) for i in np.unique(true) if i != 0]
    p_ids = [int(i) for i in np.unique(pred) if i != 0]
    iou = [[Fraction(0)] * len(p_ids) for _ in t_ids]
    for a, ti in enumerate(t_ids):
        tm = true == ti
        for b, pj in enumerate(p_ids):
            pm = pred == pj
            inter = int(np.logical_and(tm, pm).sum())
            union = int(np.logical_or(tm, pm).sum())
            iou[a][b] = Fraction(inter, union)

    def match(t: Fraction) -> tuple[int, Fraction]:
        if not t_ids or not p_ids:
            return 0, Fraction(0)
        hit = np.array([[1.0 if v > t else 0.0 for v in row] for row in iou])
        rows, cols = linear_sum_assignment(-hit)  # maximum number of hits, no uniqueness assumed
        pairs = [(r, c) for r, c in zip(rows, cols, strict=True) if hit[r, c] > 0]
        return len(pairs), sum((iou[r][c] for r, c in pairs), Fraction(0))

    n_t, n_p = len(t_ids), len(p_ids)
    tp, iou_sum = match(threshold)
    fp, fn = n_p - tp, n_t - tp

    def div(a: float | Fraction, b: float | Fraction) -> float:
        return float(Fraction(a) / Fraction(b)) if b else math.nan

    per_t = []
    for k in range(10, 20):
        tp_k, _ = match(Fraction(k, 20))
        per_t.append(div(tp_k, n_t + n_p - tp_k))
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": div(tp, n_p),
        "recall": div(tp, n_t),
        "f1": div(2 * tp, 2 * tp + fp + fn),
        "mean_matched_iou": div(iou_sum, tp),
        "panoptic_quality": div(iou_sum, Fraction(2 * tp + fp + fn, 2)),
        "dsb_score": math.nan if n_t + n_p == 0 else float(np.mean(per_t)),
    }


def _check_against_brute_force(pred: np.ndarray, true: np.ndarray, threshold: float = 0.5) -> None:
    got = instance_scores(pred, true, iou_threshold=threshold)
    want = _brute_force(pred, true, Fraction(threshold))
    for name, value in want.items():
        np.testing.assert_allclose(
            getattr(got, name), value, rtol=0, atol=TOL, equal_nan=True, err_msg=name
        )
    assert got.n_true == len(np.unique(true[true != 0]))
    assert got.n_pred == len(np.unique(pred[pred != 0]))


def _random_labels(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    """Overlapping rectangles and discs painted in turn, with non-consecutive random ids."""
    out = np.zeros(shape, dtype=np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    ids = rng.choice(np.arange(1, 10_000), size=n, replace=False)
    for label in ids:
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        r = int(rng.integers(2, max(3, min(shape) // 3)))
        if rng.random() < 0.5:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= int(rng.integers(1, r + 1)))
        out[mask] = label
    return out


def _perturb(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """A plausible prediction: shifted, some objects dropped, merged or split, extras added."""
    pred = np.roll(labels, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
    ids = [i for i in np.unique(pred) if i != 0]
    for label in ids:
        u = rng.random()
        if u < 0.15:
            pred[pred == label] = 0  # dropped
        elif u < 0.3 and ids:
            pred[pred == label] = rng.choice(ids)  # merged into another
        elif u < 0.45:
            ys, xs = np.nonzero(pred == label)
            if ys.size:
                cut = np.median(xs)
                pred[ys[xs > cut], xs[xs > cut]] = label + 20_000  # split in two
    extra = _random_labels(rng, labels.shape, int(rng.integers(0, 3))) * 3 + 40_000
    pred = np.where((pred == 0) & (extra > 40_000), extra, pred)
    return pred.astype(_pick(rng, (np.int32, np.uint16, np.int64)))


@pytest.mark.parametrize("seed", range(6))
def test_instance_scores_match_brute_force_on_random_label_images(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(12):
        shape = (int(rng.integers(8, 48)), int(rng.integers(8, 48)))
        true = _random_labels(rng, shape, int(rng.integers(0, 12)))
        pred = _perturb(rng, true) if rng.random() < 0.8 else _random_labels(rng, shape, 6)
        _check_against_brute_force(pred, true)
        _check_against_brute_force(pred, true, threshold=0.7)


@settings(max_examples=150, deadline=None)
@given(
    arrays(np.int32, (5, 6), elements=st.integers(0, 4)),
    arrays(np.int32, (5, 6), elements=st.integers(0, 4)),
)
def test_instance_scores_property_exact_thresholds(pred: np.ndarray, true: np.ndarray) -> None:
    # tiny images: IoUs are small fractions, so many land exactly on 0.5, 0.6, 0.75 ...
    _check_against_brute_force(pred, true)


def test_instance_scores_agree_with_monai_panoptic_quality() -> None:
    torch = pytest.importorskip("torch")
    monai_pq = pytest.importorskip("monai.metrics.panoptic_quality")
    rng = np.random.default_rng(42)
    for _ in range(15):
        true = _random_labels(rng, (40, 40), 10)
        pred = _perturb(rng, true).astype(np.int32)
        got = instance_scores(pred, true)
        tp, fp, fn, iou_sum = monai_pq.compute_panoptic_quality(
            torch.from_numpy(pred), torch.from_numpy(true), output_confusion_matrix=True
        ).tolist()
        assert (got.tp, got.fp, got.fn) == (tp, fp, fn)
        if tp:  # MONAI computes IoUs in float32
            np.testing.assert_allclose(got.mean_matched_iou, iou_sum / tp, rtol=0, atol=1e-6)
        else:
            assert math.isnan(got.mean_matched_iou) and iou_sum == 0
        np.testing.assert_allclose(
            got.panoptic_quality, iou_sum / (tp + 0.5 * fp + 0.5 * fn), rtol=0, atol=1e-6
        )


def test_sparse_and_dense_contingency_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    true = _random_labels(rng, (60, 60), 20)
    pred = _perturb(rng, true)
    dense = instance_scores(pred, true).as_dict()
    monkeypatch.setattr(metrics, "_DENSE_PAIR_LIMIT", 0)
    sparse = instance_scores(pred, true).as_dict()
    assert dense.keys() == sparse.keys()
    for key in dense:
        np.testing.assert_allclose(sparse[key], dense[key], rtol=0, atol=0, equal_nan=True)


def test_huge_label_ids_use_the_sparse_path() -> None:
    true = np.zeros((8, 8), dtype=np.int64)
    true[:4, :4] = 2**40
    true[4:, 4:] = 7
    pred = np.zeros_like(true)
    pred[:4, :3] = 2**33  # IoU 12/16 with the 2**40 object
    pred[4:, 4:] = 3_000_000  # identical to object 7
    ov = instance_overlaps(pred, true)
    np.testing.assert_array_equal(ov.true_ids, [7, 2**40])
    np.testing.assert_array_equal(ov.pred_ids, [3_000_000, 2**33])
    _check_against_brute_force(pred, true)


def test_many_objects_shifted_grid() -> None:
    # 400 squares of 10x10; the prediction is shifted by one pixel: every IoU = 90/110 = 9/11
    true = np.zeros((400, 400), dtype=np.int32)
    label = 0
    for y in range(0, 400, 20):
        for x in range(0, 400, 20):
            label += 3  # non-consecutive ids
            true[y + 5 : y + 15, x + 5 : x + 15] = label
    shifted = np.roll(true, 1, axis=1)
    pred = np.where(shifted > 0, shifted * 2 + 1, 0)
    s = instance_scores(pred, true)
    assert (s.n_true, s.n_pred, s.tp, s.fp, s.fn) == (400, 400, 400, 0, 0)
    np.testing.assert_allclose(s.mean_matched_iou, 9 / 11, rtol=0, atol=TOL)
    np.testing.assert_allclose(s.panoptic_quality, 9 / 11, rtol=0, atol=TOL)
    hits = sum(Fraction(9, 11) > Fraction(k, 20) for k in range(10, 20))  # 0.50 .. 0.80
    np.testing.assert_allclose(s.dsb_score, hits / 10, rtol=0, atol=TOL)


# hand-made tiny cases -------------------------------------------------------------------------


def test_identical_label_maps_score_one() -> None:
    true = np.zeros((10, 10), dtype=np.int32)
    true[1:4, 1:4] = 5
    true[5:9, 2:8] = 9
    s = instance_scores(true * 7, true)  # ids differ, objects are the same
    assert (s.tp, s.fp, s.fn) == (2, 0, 0)
    assert s.f1 == 1 and s.dsb_score == 1 and s.panoptic_quality == 1 and s.mean_matched_iou == 1


def test_one_object_split_in_equal_halves_is_not_matched() -> None:
    true = np.zeros((4, 8), dtype=np.int32)
    true[:, :] = 1
    pred = np.zeros_like(true)
    pred[:, :4] = 1
    pred[:, 4:] = 2  # each half has IoU exactly 0.5: not > 0.5
    s = instance_scores(pred, true)
    assert (s.tp, s.fp, s.fn) == (0, 2, 1)
    assert s.f1 == 0 and s.dsb_score == 0 and s.panoptic_quality == 0
    assert math.isnan(s.mean_matched_iou)
    _check_against_brute_force(pred, true)


def test_one_object_split_unequally() -> None:
    true = np.ones((4, 8), dtype=np.int32)
    pred = np.ones_like(true)
    pred[:, 5:] = 2  # IoU 5/8 = 0.625 for the big part, 3/8 for the small one
    s = instance_scores(pred, true)
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)
    np.testing.assert_allclose(s.mean_matched_iou, 5 / 8, rtol=0, atol=TOL)
    np.testing.assert_allclose(s.panoptic_quality, (5 / 8) / 1.5, rtol=0, atol=TOL)
    # hits at t = 0.50, 0.55, 0.60 (score 1/2 each), misses above (score 0/3)
    np.testing.assert_allclose(s.dsb_score, 3 * 0.5 / 10, rtol=0, atol=TOL)
    _check_against_brute_force(pred, true)


def test_merged_objects() -> None:
    true = np.zeros((4, 9), dtype=np.int32)
    true[:, :6] = 1
    true[:, 6:] = 2
    pred = (true > 0).astype(np.int32)  # one object covering both: IoU 24/36 and 12/36
    s = instance_scores(pred, true)
    assert (s.tp, s.fp, s.fn) == (1, 0, 1)
    np.testing.assert_allclose(s.f1, 2 / 3, rtol=0, atol=TOL)
    _check_against_brute_force(pred, true)


def test_empty_images_follow_the_nan_convention() -> None:
    empty = np.zeros((5, 5), dtype=np.int32)
    both = instance_scores(empty, empty)
    assert (both.tp, both.fp, both.fn, both.n_true, both.n_pred) == (0, 0, 0, 0, 0)
    for name in ("precision", "recall", "f1", "mean_matched_iou", "panoptic_quality", "dsb_score"):
        assert math.isnan(getattr(both, name)), name

    objects = empty.copy()
    objects[1:3, 1:3] = 4
    missed = instance_scores(empty, objects)
    assert (missed.tp, missed.fp, missed.fn) == (0, 0, 1)
    assert missed.recall == 0 and missed.f1 == 0 and missed.dsb_score == 0
    assert missed.panoptic_quality == 0 and math.isnan(missed.precision)

    hallucinated = instance_scores(objects, empty)
    assert (hallucinated.tp, hallucinated.fp, hallucinated.fn) == (0, 1, 0)
    assert hallucinated.precision == 0 and hallucinated.dsb_score == 0
    assert math.isnan(hallucinated.recall)

    zero_size = np.zeros((0, 4), dtype=np.int32)
    assert math.isnan(instance_scores(zero_size, zero_size).dsb_score)


def test_bool_masks_are_one_object_each() -> None:
    true = np.zeros((6, 6), dtype=bool)
    true[1:5, 1:5] = True
    pred = np.zeros_like(true)
    pred[1:5, 1:4] = True  # IoU 12/16
    s = instance_scores(pred, true)
    assert (s.tp, s.fp, s.fn) == (1, 0, 0)
    np.testing.assert_allclose(s.mean_matched_iou, 0.75, rtol=0, atol=TOL)
    # 0.75 is a hit at 0.70 but not at 0.75 (strict >): thresholds 0.50 .. 0.70 hit
    np.testing.assert_allclose(s.dsb_score, 5 / 10, rtol=0, atol=TOL)


def test_instance_scores_rejects_bad_input() -> None:
    a = np.zeros((3, 3), dtype=np.int32)
    with pytest.raises(ValueError, match=r"iou_threshold must be in \[0.5, 1\).*0.3"):
        instance_scores(a, a, iou_threshold=0.3)
    with pytest.raises(ValueError, match=r"got 1\.0"):
        instance_scores(a, a, iou_threshold=1.0)
    with pytest.raises(ValueError, match="got -1"):
        instance_scores(a - 1, a)
    with pytest.raises(ValueError, match="same shape"):
        instance_scores(a, np.zeros((3, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="dtype float32"):
        instance_scores(a.astype(np.float32), a)


def test_dsb_thresholds_are_the_ten_nominal_values() -> None:
    assert DSB_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
