"""Evaluation rows (checked against pycocotools, scikit-learn and brute force) and per-image runs."""

from __future__ import annotations

import base64
import hashlib
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as cocomask
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import jaccard_score

from segflow.config import RunConfig
from segflow.evaluate import (
    ChunkResult,
    RunStats,
    StageError,
    done_hashes,
    evaluate,
    foreground,
    items_by_chunk,
    mask_rows,
    mean_entropy,
    metrics_row,
    process_chunk,
    process_image,
    summary_markdown,
)
from segflow.ingest import IGNORE, ImageItem, hash_items, list_images, pair_ground_truth
from segflow.segmenters.base import Segmentation
from segflow.store import Store

# pycocotools 2.0 calls np.array(copy=False) internally; harmless, noisy under numpy 2
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

IDS = {
    "image_id": "img",
    "source_uri": "/x/img.png",
    "sha256": "ab" * 32,
    "config_hash": "c0123456789abcdef",
    "run_id": "run-1",
    "segmenter": "otsu",
}


def _disks(shape: tuple[int, int], n: int, seed: int, *, r: tuple[int, int] = (3, 7)) -> np.ndarray:
    """Instance label map of ``n`` random disks (later ones drawn over earlier ones)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, dtype=np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for k in range(1, n + 1):
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        rad = rng.integers(*r)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= rad * rad] = k
    return lab


def _relabel(lab: np.ndarray) -> np.ndarray:
    ids = np.unique(lab)
    lut = np.zeros(int(ids.max()) + 1, dtype=np.int32)
    lut[ids[ids > 0]] = np.arange(1, int((ids > 0).sum()) + 1)
    return lut[lab]


def _instance_seg(lab: np.ndarray) -> Segmentation:
    lab = _relabel(lab)
    n = int(lab.max())
    return Segmentation(
        classes=(lab > 0).astype(np.int32),
        instances=lab,
        instance_classes={k: 1 + (k % 2) for k in range(1, n + 1)},
        instance_scores={k: 0.5 + k / (2 * n + 2) for k in range(1, n + 1)},
        class_names=["background", "odd", "even"],
    )


# -- metrics rows ---------------------------------------------------------------------------------


def test_foreground_prefers_instances() -> None:
    classes = np.array([[0, 1], [1, 1]], dtype=np.int32)
    inst = np.array([[0, 0], [2, 3]], dtype=np.int32)
    np.testing.assert_array_equal(foreground(Segmentation(classes=classes)), classes > 0)
    np.testing.assert_array_equal(
        foreground(Segmentation(classes=classes, instances=inst)), inst > 0
    )


def test_metrics_row_without_ground_truth() -> None:
    seg = _instance_seg(_disks((40, 50), 6, 0))
    row = metrics_row(seg, None, gt_format="binary", ids=IDS)
    assert {k: row[k] for k in IDS} == IDS
    assert row["width"] == 50 and row["height"] == 40
    inst = np.asarray(seg.instances)
    assert row["n_instances"] == int(inst.max())
    assert row["fg_fraction"] == pytest.approx(np.count_nonzero(inst) / 2000)
    assert row["has_ground_truth"] is False
    assert "fg_iou" not in row and "fg_tp" not in row and row["mean_entropy"] is None


@pytest.mark.parametrize("seed", range(5))
def test_foreground_counts_and_scores_match_sklearn(seed: int) -> None:
    pred = _instance_seg(_disks((48, 40), 8, seed))
    truth = _disks((48, 40), 8, seed + 100)
    row = metrics_row(pred, truth, gt_format="binary", ids=IDS)
    p, t = np.asarray(pred.instances) > 0, np.asarray(truth) > 0
    assert (row["fg_tp"], row["fg_fp"], row["fg_fn"], row["fg_tn"]) == (
        int((p & t).sum()),
        int((p & ~t).sum()),
        int((~p & t).sum()),
        int((~p & ~t).sum()),
    )
    assert row["fg_iou"] == pytest.approx(jaccard_score(t.ravel(), p.ravel()))
    assert row["fg_dice"] == pytest.approx(2 * (p & t).sum() / (p.sum() + t.sum()))
    assert row["fg_precision"] == pytest.approx((p & t).sum() / p.sum())
    assert row["fg_recall"] == pytest.approx((p & t).sum() / t.sum())
    assert row["has_ground_truth"] is True
    assert "inst_tp" not in row and "class_iou" not in row


def _brute_instance_matches(pred: np.ndarray, true: np.ndarray, thr: float = 0.5) -> int:
    tp = 0
    for i in np.unique(pred[pred > 0]):
        for j in np.unique(true[true > 0]):
            a, b = pred == i, true == j
            if (a & b).sum() / (a | b).sum() > thr:
                tp += 1
    return tp


@pytest.mark.parametrize("seed", range(4))
def test_instance_scores_match_brute_force(seed: int) -> None:
    truth = _relabel(_disks((40, 40), 7, seed))
    # prediction: the truth, shifted by one pixel, with one object dropped and one added
    pred = np.roll(truth, 1, axis=1)
    pred[pred == 1] = 0
    pred[30:34, 30:34] = 50
    seg = _instance_seg(pred)
    row = metrics_row(seg, truth, gt_format="instances", ids=IDS)
    tp = _brute_instance_matches(seg.instances, truth)  # type: ignore[arg-type]
    n_pred, n_true = int(seg.instances.max()), int(truth.max())  # type: ignore[union-attr]
    assert (row["inst_tp"], row["inst_fp"], row["inst_fn"]) == (tp, n_pred - tp, n_true - tp)
    assert row["inst_f1"] == pytest.approx(2 * tp / (n_pred + n_true))
    assert 0.0 <= row["dsb_score"] <= 1.0 and 0.0 <= row["inst_pq"] <= 1.0
    assert row["inst_mean_iou"] > 0.5


def test_semantic_output_is_scored_by_connected_components() -> None:
    truth = np.zeros((20, 20), dtype=np.int32)
    truth[2:6, 2:6] = 1
    truth[10:15, 10:15] = 2
    seg = Segmentation(classes=(truth > 0).astype(np.int32))  # two blobs, no instance map
    row = metrics_row(seg, truth, gt_format="instances", ids=IDS)
    assert (row["inst_tp"], row["inst_fp"], row["inst_fn"]) == (2, 0, 0)
    assert row["fg_iou"] == 1.0


def test_class_scores_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 3, (30, 30)).astype(np.int32)
    truth = rng.integers(0, 4, (30, 30)).astype(np.int32)  # truth knows one class more
    seg = Segmentation(classes=pred, class_names=["bg", "a", "b"])
    row = metrics_row(seg, truth, gt_format="classes", ids=IDS)
    expected = jaccard_score(truth.ravel(), pred.ravel(), labels=[0, 1, 2, 3], average=None)
    assert len(row["class_iou"]) == 4
    np.testing.assert_allclose(row["class_iou"], expected)
    for c in range(4):
        assert row["class_tp"][c] == int(((pred == c) & (truth == c)).sum())
        assert row["class_fp"][c] == int(((pred == c) & (truth != c)).sum())
        assert row["class_fn"][c] == int(((pred != c) & (truth == c)).sum())
    # foreground = any class but 0
    assert row["fg_iou"] == pytest.approx(jaccard_score((truth > 0).ravel(), (pred > 0).ravel()))


# -- ignored ground truth (RunConfig.gt_ignore: VOC's 255 border) --------------------------------


def _void_border(lab: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels within ``width`` of an object's edge, outside it: where VOC draws 255."""
    grown = cv2.dilate((lab > 0).astype(np.uint8), np.ones((2 * width + 1,) * 2, np.uint8)) > 0
    return grown & (lab == 0)


@pytest.mark.parametrize("seed", range(4))
def test_ignored_pixels_are_left_out_of_foreground_and_class_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, 3, (40, 36)).astype(np.int32)
    truth = rng.integers(0, 3, (40, 36)).astype(np.int32)
    ignored = rng.random((40, 36)) < 0.2
    truth[ignored] = IGNORE
    keep = ~ignored
    seg = Segmentation(classes=pred, class_names=["bg", "a", "b"])
    row = metrics_row(seg, truth, gt_format="classes", ids=IDS)
    # scikit-learn on the pixels that are not ignored
    p, t = pred[keep], truth[keep]
    np.testing.assert_allclose(
        row["class_iou"], jaccard_score(t, p, labels=[0, 1, 2], average=None)
    )
    assert len(row["class_iou"]) == 3  # the ignore value is no class
    assert row["fg_iou"] == pytest.approx(jaccard_score(t > 0, p > 0))
    assert row["fg_tp"] + row["fg_fp"] + row["fg_fn"] + row["fg_tn"] == int(keep.sum())
    # the same ground truth without the ignore mark scores differently (the test can fail)
    plain = metrics_row(seg, np.where(ignored, 0, truth), gt_format="classes", ids=IDS)
    assert plain["fg_tn"] + plain["fg_fp"] > row["fg_tn"] + row["fg_fp"]


def test_prediction_on_ignored_pixels_is_no_false_positive() -> None:
    truth = _relabel(_disks((60, 60), 6, 11, r=(4, 7)))
    border = _void_border(truth, 2)
    pred = truth.copy()
    pred[border] = 0
    # an object predicted wholly inside the ignored border, and one grown into it
    grown = cv2.dilate((truth == 1).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    pred[grown & (pred == 0)] = 1
    lone = np.argwhere(border & (pred == 0))[0]
    pred[lone[0], lone[1]] = 99
    seg = _instance_seg(pred)
    marked = np.where(border, IGNORE, truth)
    row = metrics_row(seg, marked, gt_format="instances", ids=IDS)
    n_true = int(truth.max())
    assert (row["inst_tp"], row["inst_fp"], row["inst_fn"]) == (n_true, 0, 0)
    assert row["inst_mean_iou"] == 1.0 and row["fg_iou"] == 1.0
    assert row["fg_tn"] == int(((truth == 0) & ~border).sum())
    # without the ignore mark the lone object is a false positive and object 1 is too large
    plain = metrics_row(seg, truth, gt_format="instances", ids=IDS)
    assert plain["inst_fp"] >= 1 and plain["fg_iou"] < 1.0


def test_shape_mismatch_is_a_value_error() -> None:
    seg = Segmentation(classes=np.zeros((4, 5), dtype=np.int32))
    with pytest.raises(ValueError, match=r"ground truth shape \(5, 4\)"):
        metrics_row(seg, np.zeros((5, 4), dtype=np.int32), gt_format="binary", ids=IDS)


def test_unknown_gt_format_is_refused() -> None:
    seg = Segmentation(classes=np.zeros((4, 4), dtype=np.int32))
    with pytest.raises(ValueError, match=r"gt_format must be one of .* got 'masks'"):
        metrics_row(seg, np.zeros((4, 4), dtype=np.int32), gt_format="masks", ids=IDS)


def test_mean_entropy_matches_scipy() -> None:
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 9, 11))
    p = (np.exp(logits) / np.exp(logits).sum(axis=0)).astype(np.float32)
    expected = scipy_entropy(p.reshape(3, -1).astype(np.float64), axis=0).mean()
    assert mean_entropy(p) == pytest.approx(expected, rel=1e-5)
    onehot = np.zeros((2, 4, 4), dtype=np.float32)
    onehot[0] = 1
    assert mean_entropy(onehot) == pytest.approx(0.0, abs=1e-6)
    assert mean_entropy(np.full((4, 3, 3), 0.25, dtype=np.float32)) == pytest.approx(
        math.log(4), rel=1e-6
    )
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        mean_entropy(np.zeros((3, 3), dtype=np.float32))


def test_metrics_row_reports_entropy_when_probabilities_exist() -> None:
    p = np.full((2, 5, 5), 0.5, dtype=np.float32)
    seg = Segmentation(classes=np.zeros((5, 5), dtype=np.int32), probabilities=p)
    assert metrics_row(seg, None, gt_format="binary", ids=IDS)["mean_entropy"] == pytest.approx(
        math.log(2)
    )


# -- mask rows --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_instance_mask_rows_decode_with_pycocotools(seed: int) -> None:
    seg = _instance_seg(_disks((37, 53), 9, seed))
    rows = mask_rows(seg, ids={"image_id": "i", "sha256": "s", "config_hash": "c1", "run_id": "r"})
    ids = sorted(int(v) for v in np.unique(seg.instances) if v)  # type: ignore[arg-type]
    assert [r["instance_id"] for r in rows] == ids
    for r in rows:
        k = r["instance_id"]
        rle = {"size": [r["height"], r["width"]], "counts": r["rle_counts"]}
        decoded = cocomask.decode(rle)
        assert decoded.shape == (37, 53)
        np.testing.assert_array_equal(decoded, (seg.instances == k).astype(np.uint8))  # type: ignore[union-attr]
        assert r["area"] == int(cocomask.area(rle))
        assert [r["bbox_x"], r["bbox_y"], r["bbox_w"], r["bbox_h"]] == cocomask.toBbox(rle).tolist()
        assert r["class_id"] == 1 + (k % 2)
        assert r["class_name"] == ["background", "odd", "even"][r["class_id"]]
        assert r["score"] == pytest.approx(seg.instance_scores[k])


def test_semantic_mask_rows_one_per_present_class() -> None:
    classes = np.zeros((10, 12), dtype=np.int32)
    classes[1:4, 2:5] = 1
    classes[6:9, 1:11] = 3  # class 2 absent
    probs = np.zeros((4, 10, 12), dtype=np.float32)
    for c in range(4):
        probs[c][classes == c] = 0.6 + 0.1 * c
    seg = Segmentation(classes=classes, probabilities=probs, class_names=["bg", "a", "b", "c"])
    rows = mask_rows(seg, ids={"image_id": "i", "sha256": "s", "config_hash": "c1", "run_id": "r"})
    assert [(r["class_id"], r["class_name"], r["instance_id"]) for r in rows] == [
        (1, "a", None),
        (3, "c", None),
    ]
    for r in rows:
        rle = {"size": [10, 12], "counts": r["rle_counts"]}
        np.testing.assert_array_equal(
            cocomask.decode(rle), (classes == r["class_id"]).astype(np.uint8)
        )
        assert r["score"] == pytest.approx(0.6 + 0.1 * r["class_id"])


def test_union_of_mask_rows_gives_the_stored_fg_iou() -> None:
    seg = _instance_seg(_disks((40, 44), 10, 7))
    truth = _disks((40, 44), 10, 8)
    row, masks = evaluate(seg, truth, gt_format="instances", ids=IDS)
    union = np.zeros((40, 44), dtype=bool)
    for m in masks:
        union |= cocomask.decode(
            {"size": [m["height"], m["width"]], "counts": m["rle_counts"]}
        ).astype(bool)
    t = truth > 0
    assert row["fg_iou"] == pytest.approx((union & t).sum() / (union | t).sum(), abs=0)
    assert row["n_instances"] == len(masks)
    assert all(m["sha256"] == IDS["sha256"] and "source_uri" not in m for m in masks)


def test_empty_prediction_has_no_mask_rows() -> None:
    seg = Segmentation(
        classes=np.zeros((6, 6), dtype=np.int32), instances=np.zeros((6, 6), dtype=np.int32)
    )
    row, masks = evaluate(seg, np.zeros((6, 6), dtype=np.int32), gt_format="binary", ids=IDS)
    assert masks == [] and row["n_instances"] == 0
    assert math.isnan(row["fg_iou"])  # undefined (no foreground anywhere); stored as null


# -- one image, one chunk ------------------------------------------------------------------------


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(5)
    for i in range(3):
        lab = _relabel(_disks((64, 72), 6, 20 + i, r=(4, 9)))
        img = np.where(lab > 0, 190, 40).astype(np.float64) + rng.normal(0, 8, lab.shape)
        (images / f"im{i}.png").write_bytes(_png(img.clip(0, 255).astype(np.uint8)))
        (labels / f"im{i}.png").write_bytes(_png(lab.astype(np.uint16)))
    (images / "zero.png").write_bytes(b"")
    (images / "text.png").write_bytes(b"hello, I am text")
    good = (images / "im0.png").read_bytes()
    (images / "trunc.png").write_bytes(good[: len(good) // 2])
    # a readable image whose ground truth has another size
    (images / "odd.png").write_bytes(_png(np.full((10, 10), 200, dtype=np.uint8)))
    (labels / "odd.png").write_bytes(_png(np.ones((11, 10), dtype=np.uint8)))
    return images, labels


def _config(images: Path, labels: Path, out: Path, **kw: object) -> RunConfig:
    return RunConfig(
        input=str(images),
        out=str(out),
        ground_truth=str(labels),
        gt_format="instances",
        tile=32,
        overlap=8,
        **kw,  # type: ignore[arg-type]
    )


def _items(images: Path, labels: Path) -> dict[str, ImageItem]:
    return {i.image_id: i for i in hash_items(pair_ground_truth(list_images(images), labels))}


def test_process_image_rows_timings_and_overlay(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    images, labels = dataset
    cfg = _config(images, labels, tmp_path / "out")
    item = _items(images, labels)["im1"]
    res = process_image(
        item,
        config=cfg,
        segmenter=cfg.create_segmenter(),
        run_id="r1",
        config_hash=cfg.config_hash(),
        overlay=True,
    )
    row = res.metrics
    assert row["sha256"] == hashlib.sha256((images / "im1.png").read_bytes()).hexdigest()
    assert row["image_id"] == "im1" and row["source_uri"] == str(images / "im1.png")
    assert row["segmenter"] == "otsu" and row["config_hash"] == cfg.config_hash()
    stages = ("t_read_ms", "t_preprocess_ms", "t_segment_ms", "t_stitch_ms", "t_evaluate_ms")
    for t in (*stages, "t_total_ms"):
        assert row[t] >= 0
    assert row["t_total_ms"] >= sum(row[t] for t in stages) * 0.999
    assert row["fg_iou"] > 0.9 and row["inst_tp"] >= 4  # bright disks on a dark background
    assert (
        res.overlay is not None
        and res.overlay.shape == (64, 72, 3)
        and res.overlay.dtype == np.uint8
    )
    assert len(res.masks) == row["n_instances"]


@pytest.mark.parametrize(
    ("name", "stage"),
    [("zero", "decode"), ("text", "decode"), ("trunc", "decode"), ("odd", "ground_truth")],
)
def test_process_image_names_the_failing_stage(
    dataset: tuple[Path, Path], tmp_path: Path, name: str, stage: str
) -> None:
    images, labels = dataset
    cfg = _config(images, labels, tmp_path / "out")
    with pytest.raises(StageError) as info:
        process_image(
            _items(images, labels)[name],
            config=cfg,
            segmenter=cfg.create_segmenter(),
            run_id="r",
            config_hash="c1",
        )
    assert info.value.stage == stage


def test_missing_file_fails_at_read(tmp_path: Path) -> None:
    cfg = RunConfig(input=str(tmp_path), out=str(tmp_path / "out"))
    item = ImageItem(uri=str(tmp_path / "gone.png"), rel_path="gone.png", image_id="gone", size=0)
    with pytest.raises(StageError) as info:
        process_image(
            item, config=cfg, segmenter=cfg.create_segmenter(), run_id="r", config_hash="c1"
        )
    assert info.value.stage == "read" and isinstance(info.value.error, FileNotFoundError)


def test_pixel_guard_fails_at_decode(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    images, labels = dataset
    cfg = _config(images, labels, tmp_path / "out", max_pixels=100)
    with pytest.raises(StageError) as info:
        process_image(
            _items(images, labels)["im0"],
            config=cfg,
            segmenter=cfg.create_segmenter(),
            run_id="r",
            config_hash="c1",
        )
    assert info.value.stage == "decode" and "pixel" in str(info.value.error).lower()


def test_process_chunk_isolates_failures_and_rows_fit_the_store(
    dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    images, labels = dataset
    out = tmp_path / "out"
    cfg = _config(images, labels, out)
    items = list(_items(images, labels).values())
    result = process_chunk(items, config=cfg, run_id="run-a", config_hash=cfg.config_hash())
    assert sorted(r["image_id"] for r in result.metrics) == ["im0", "im1", "im2"]
    assert sorted(Path(e["source_uri"]).stem for e in result.errors) == [
        "odd",
        "text",
        "trunc",
        "zero",
    ]
    assert all(e["run_id"] == "run-a" and e["error_type"] and e["message"] for e in result.errors)
    assert result.n_images == len(items)
    assert sorted(p.stem for p in (out / "overlays").glob("*.png")) == ["im0", "im1", "im2"]
    # the rows are exactly what the store accepts
    store = Store(out)
    for ds in ("masks", "errors", "metrics"):
        store.write(ds, getattr(result, ds))
    assert len(store.read("metrics")) == 3 and len(store.read("errors")) == 4
    assert len(store.read("masks")) == sum(r["n_instances"] for r in result.metrics)
    assert store.processed(cfg.config_hash()) == {r["sha256"] for r in result.metrics}
    # known failures count as done (rerun adds nothing) unless retried
    failed = {e["sha256"] for e in result.errors}
    assert done_hashes(store, cfg.config_hash()) == store.processed(cfg.config_hash()) | failed
    assert done_hashes(store, cfg.config_hash(), retry_errors=True) == store.processed(
        cfg.config_hash()
    )
    assert done_hashes(store, "cffff") == set()


def test_items_by_chunk() -> None:
    items = [ImageItem(uri=str(i), rel_path=str(i), image_id=str(i), size=0) for i in range(7)]
    chunks = list(items_by_chunk(items, 3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert [i for c in chunks for i in c] == items
    with pytest.raises(ValueError, match="chunk size must be >= 1"):
        list(items_by_chunk(items, 0))


# -- run aggregates ------------------------------------------------------------------------------


def _row(i: int, iou: float | None) -> dict:
    return {
        "image_id": f"im{i}",
        "fg_iou": iou,
        "fg_dice": None if iou is None else iou,
        "t_total_ms": 1.0,
    }


def test_run_stats_means_and_worst_are_bounded() -> None:
    rng = np.random.default_rng(9)
    ious = rng.random(50)
    stats = RunStats(keep=5)
    rows = [_row(i, float(v)) for i, v in enumerate(ious)] + [
        _row(50, None),
        _row(51, float("nan")),
    ]
    for start in range(0, len(rows), 7):
        stats.add(ChunkResult(metrics=rows[start : start + 7], errors=[{}] if start == 0 else []))
    assert stats.done == 52 and stats.failed == 1
    assert stats.means()["fg_iou"] == pytest.approx(ious.mean())
    assert stats.counts["fg_iou"] == 50
    worst = stats.worst()
    assert len(worst) == 5 and len(stats._heap) == 5
    assert [r["image_id"] for r in worst] == [f"im{i}" for i in np.argsort(ious)[:5]]


def test_run_stats_without_scores_keeps_arrival_order() -> None:
    stats = RunStats(keep=3)
    stats.add(ChunkResult(metrics=[_row(i, None) for i in range(6)]))
    assert [r["image_id"] for r in stats.worst()] == ["im0", "im1", "im2"]
    assert stats.means() == {}


def test_summary_markdown_inlines_worst_overlays(tmp_path: Path) -> None:
    (tmp_path / "overlays").mkdir()
    for i in range(3):
        img = np.full((40, 60, 3), 50 * i, dtype=np.uint8)
        (tmp_path / "overlays" / f"im{i}.png").write_bytes(_png(img))
    stats = RunStats(listed=5, skipped=1)
    stats.add(ChunkResult(metrics=[_row(0, 0.9), _row(1, 0.2), _row(2, 0.5)], errors=[{}]))
    md = summary_markdown(stats, config_hash="c1", out=tmp_path, n_thumbnails=2)
    assert "| 5 | 3 | 1 | 1 |" in md
    assert "fg_iou | 0.5333" in md
    uris = [part.split(")")[0] for part in md.split("](data:image/png;base64,")[1:]]
    assert len(uris) == 2
    assert md.index("**im1**") < md.index("**im2**") and "**im0**" not in md
    thumb = cv2.imdecode(np.frombuffer(base64.b64decode(uris[0]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert thumb is not None
    assert max(thumb.shape[:2]) <= 160 and thumb.shape[2] == 3
