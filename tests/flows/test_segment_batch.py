"""The ``segment_batch`` flow end to end, under a temporary Prefect API (prefect_test_harness)."""

from __future__ import annotations

import math
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import numpy as np
import pandas as pd
import polars as pl
import pytest
from pycocotools import mask as cocomask

from segflow.config import RunConfig
from segflow.io import read_labels
from segflow.store import DATASETS, Store
from segflow.synth import BAD_KINDS, make_bad_files, make_dataset

pytestmark = [
    pytest.mark.usefixtures("prefect_harness"),
    # pycocotools 2.0 calls np.array(copy=False) internally; harmless, noisy under numpy 2
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

CHUNK = 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """6 top-level + 2 nested images with labels, 1 image without labels, 5 broken files."""
    root = tmp_path_factory.mktemp("data")
    make_dataset(root, n_images=6, size=(96, 112), seed=3, n_objects=(4, 9))
    nested = tmp_path_factory.mktemp("nested")
    make_dataset(nested, n_images=2, size=(80, 80), seed=4, n_objects=(3, 6), prefix="deep")
    shutil.copytree(nested / "images", root / "images" / "sub")
    shutil.copytree(nested / "labels", root / "labels" / "sub")
    make_dataset(nested / "x", n_images=1, size=(64, 64), seed=5, prefix="nogt")
    shutil.copy(nested / "x" / "images" / "nogt_0000.png", root / "images" / "nogt_0000.png")
    bad = make_bad_files(root / "images")
    good = sorted(p for p in (root / "images").rglob("*.png") if not p.name.startswith("bad_"))
    assert len(good) == 9 and set(bad) == set(BAD_KINDS)
    return {"root": root, "good": good, "bad": sorted(bad.values())}


def _config(dataset: dict[str, Any], out: Path, **kw: Any) -> RunConfig:
    fields: dict[str, Any] = {
        "input": str(dataset["root"] / "images"),
        "out": str(out),
        "ground_truth": str(dataset["root"] / "labels"),
        "gt_format": "instances",
        "segmenter": "otsu",
        "segmenter_params": {"sigma": 1.0},
        "tile": 64,
        "overlap": 16,
        "chunk_size": CHUNK,
    }
    fields.update(kw)
    return RunConfig(**fields)


def _run(config: RunConfig) -> tuple[Any, dict[str, Any]]:
    from flows.segment_batch import segment_batch

    state = segment_batch(config, return_state=True)
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, dict), summary
    return state, summary


def _counts(out: Path) -> dict[str, int]:
    store = Store(out)
    return {name: len(store.read(name)) for name in DATASETS}


@pytest.fixture(scope="module")
def first_run(dataset: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("store")
    config = _config(dataset, out)
    state, summary = _run(config)
    return {"config": config, "state": state, "summary": summary, "out": out, "store": Store(out)}


def test_run_completes_with_bad_files(first_run: dict[str, Any], dataset: dict[str, Any]) -> None:
    assert first_run["state"].is_completed()
    s = first_run["summary"]
    assert (s["listed"], s["done"], s["skipped"], s["failed"]) == (14, 9, 0, 5)
    assert s["status"] == "completed" and s["config_hash"] == first_run["config"].config_hash()


def test_every_good_image_one_metrics_row_every_bad_file_one_error_row(
    first_run: dict[str, Any], dataset: dict[str, Any]
) -> None:
    store: Store = first_run["store"]
    metrics = store.read("metrics")
    assert sorted(metrics["source_uri"]) == sorted(str(p) for p in dataset["good"])
    assert metrics["sha256"].is_unique
    errors = store.read("errors")
    assert sorted(errors["source_uri"]) == sorted(str(p) for p in dataset["bad"])
    stems = [p.stem for p in dataset["bad"]]  # a stem two files share: the file name instead
    assert sorted(errors["image_id"]) == sorted(
        p.stem if stems.count(p.stem) == 1 else p.name for p in dataset["bad"]
    )
    assert set(errors["stage"]) == {"decode"}
    assert all(errors["message"].str.len() > 0) and all(errors["error_type"] == "ImageReadError")
    assert "pixels" in errors.loc[errors["source_uri"].str.contains("huge"), "message"].item()
    # ids, ground truth and timings
    by_id = metrics.set_index("image_id")
    assert set(by_id.index) == {f"synth_{i:04d}" for i in range(6)} | {
        "sub/deep_0000",
        "sub/deep_0001",
        "nogt_0000",
    }
    nogt = by_id.loc["nogt_0000"].to_dict()
    assert not nogt["has_ground_truth"] and pd.isna(nogt["fg_iou"])
    with_gt = metrics[metrics["has_ground_truth"].astype(bool)]
    assert len(with_gt) == 8
    assert with_gt[["fg_iou", "inst_f1", "dsb_score", "inst_tp"]].notna().all().all()
    assert (with_gt["fg_iou"] > 0.6).all()
    assert (metrics["t_total_ms"] > 0).all() and (metrics["t_segment_ms"] > 0).all()
    assert (metrics["t_stitch_ms"] > 0).all()  # finish: argmax, clean-up, components
    assert (metrics["segmenter"] == "otsu").all()
    assert (metrics["run_id"] == first_run["summary"]["run_id"]).all()


def test_runs_row_and_overlays(first_run: dict[str, Any], dataset: dict[str, Any]) -> None:
    runs = first_run["store"].read("runs")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["run_id"] == first_run["summary"]["run_id"] and row["status"] == "completed"
    assert (row["n_images"], row["n_done"], row["n_skipped"], row["n_failed"]) == (14, 9, 0, 5)
    assert RunConfig.model_validate_json(row["parameters"]) == first_run["config"]
    assert row["ended_at"] >= row["started_at"]
    overlays = sorted(
        str(p.relative_to(first_run["out"] / "overlays"))
        for p in (first_run["out"] / "overlays").rglob("*.png")
    )
    assert overlays == sorted(
        [f"synth_{i:04d}.png" for i in range(6)] + ["sub/deep_0000.png", "sub/deep_0001.png"]
    )


def test_masks_decode_and_reproduce_fg_iou(
    first_run: dict[str, Any], dataset: dict[str, Any]
) -> None:
    store: Store = first_run["store"]
    metrics = store.read("metrics").set_index("sha256")
    masks = store.read("masks")
    assert len(masks) == int(metrics["n_instances"].sum()) > 0
    labels_dir = dataset["root"] / "labels"
    for sha, group in masks.groupby("sha256"):
        row: dict[str, Any] = {str(k): v for k, v in metrics.loc[sha].to_dict().items()}
        union = np.zeros((int(row["height"]), int(row["width"])), dtype=np.bool_)
        for m in group.to_dict("records"):
            decoded = cocomask.decode(
                {"size": [int(m["height"]), int(m["width"])], "counts": m["rle_counts"]}
            )
            assert decoded.shape == (row["height"], row["width"])
            assert int(decoded.sum()) == m["area"]
            union |= decoded.astype(bool)
        if not row["has_ground_truth"]:
            continue
        truth = np.asarray(read_labels(labels_dir / f"{row['image_id']}.png") > 0)
        inter, uni = int((union & truth).sum()), int((union | truth).sum())
        assert inter / uni == row["fg_iou"]
        assert (row["fg_tp"], row["fg_fp"], row["fg_fn"]) == (
            inter,
            int((union & ~truth).sum()),
            int((~union & truth).sum()),
        )


def test_pandas_duckdb_polars_read_all_four_datasets(first_run: dict[str, Any]) -> None:
    out: Path = first_run["out"]
    expected = _counts(out)
    assert expected == {"metrics": 9, "masks": expected["masks"], "errors": 5, "runs": 1}
    for name in DATASETS:
        folder = out / name
        assert len(pd.read_parquet(folder)) == expected[name]
        assert len(pl.read_parquet(folder, hive_partitioning=True)) == expected[name]
        rel = duckdb.sql(
            f"SELECT count(*) FROM read_parquet('{folder}/**/*.parquet', hive_partitioning = true)"
        )
        assert rel is not None and rel.fetchall()[0][0] == expected[name]
    rel = duckdb.sql(
        f"SELECT avg(fg_iou) FROM read_parquet('{out}/metrics/**/*.parquet', hive_partitioning = true)"
    )
    assert rel is not None
    assert rel.fetchall()[0][0] == pytest.approx(first_run["summary"]["means"]["fg_iou"])
    hashes = (
        pl.read_parquet(out / "metrics", hive_partitioning=True)["config_hash"].unique().to_list()
    )
    assert hashes == [first_run["config"].config_hash()]


def test_task_runs_grow_with_chunks_and_artifacts_are_published(first_run: dict[str, Any]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    run_id = uuid.UUID(first_run["summary"]["run_id"])
    flt = FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
    expected_chunks = math.ceil(14 / CHUNK)
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30
        while True:  # task-run records reach the API asynchronously
            runs = client.read_task_runs(flow_run_filter=flt)
            names = [r.name for r in runs]
            if (
                sum(n.startswith("chunk-") for n in names) >= expected_chunks
                or time.monotonic() > deadline
            ):
                break
            time.sleep(0.5)
        artifacts = client.read_artifacts(flow_run_filter=flt)
    assert sorted(n for n in names if n.startswith("chunk-")) == sorted(
        f"chunk-{i}" for i in range(expected_chunks)
    )
    # every other task runs once per run (or once per store write): none per tile
    assert len(names) <= expected_chunks + 6
    kinds = {a.type: a for a in artifacts}
    assert set(kinds) >= {"progress", "table", "markdown"}
    assert float(kinds["progress"].data) == 100.0  # type: ignore[arg-type]
    assert "data:image/png;base64," in str(kinds["markdown"].data)
    assert "synth_" in str(kinds["table"].data)


def test_rerun_is_idempotent_and_a_parameter_change_adds_rows(
    dataset: dict[str, Any], tmp_path: Path
) -> None:
    config = _config(dataset, tmp_path / "out")
    _run(config)
    before = _counts(tmp_path / "out")
    state, second = _run(config)
    assert state.is_completed()
    assert (second["done"], second["skipped"], second["failed"]) == (0, 14, 0)
    after = _counts(tmp_path / "out")
    assert {k: v for k, v in after.items() if k != "runs"} == {
        k: v for k, v in before.items() if k != "runs"
    }
    assert after["runs"] == before["runs"] + 1

    changed = _config(dataset, tmp_path / "out", segmenter_params={"sigma": 1.0, "min_size": 30})
    assert changed.config_hash() != config.config_hash()
    _, third = _run(changed)
    assert (third["done"], third["skipped"], third["failed"]) == (9, 0, 5)
    metrics = Store(tmp_path / "out").read("metrics")
    per_hash = metrics.groupby("config_hash", observed=True).size().to_dict()
    assert per_hash == {config.config_hash(): 9, changed.config_hash(): 9}
    # force recomputes everything under the same hash
    _, forced = _run(changed.model_copy(update={"force": True}))
    assert (forced["done"], forced["skipped"]) == (9, 0)


def test_fail_on_error_marks_the_run_failed(dataset: dict[str, Any], tmp_path: Path) -> None:
    state, summary = _run(
        _config(dataset, tmp_path / "out", fail_on_error=True, write_overlays=False)
    )
    assert state.is_failed() and "5 of 14 images failed" in (state.message or "")
    assert summary["failed"] == 5 and summary["done"] == 9
    store = Store(tmp_path / "out")
    assert store.read("runs")["status"].tolist() == ["failed"]
    assert len(store.read("metrics")) == 9  # the good images are stored all the same
    assert not (tmp_path / "out" / "overlays").exists()


def test_memory_filesystem_input(dataset: dict[str, Any], tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    base = f"/flow-{uuid.uuid4().hex}"
    try:
        for p in dataset["good"][:2]:
            fs.pipe(f"{base}/{p.name}", p.read_bytes())
        config = RunConfig(input=f"memory://{base}", out=str(tmp_path / "out"), tile=64, overlap=16)
        state, summary = _run(config)
        assert state.is_completed() and summary["done"] == 2
        uris = sorted(Store(tmp_path / "out").read("metrics")["source_uri"])
        assert uris == sorted(f"memory://{base}/{p.name}" for p in dataset["good"][:2])
    finally:
        fs.rm(base, recursive=True)


def test_missing_input_fails_the_run(tmp_path: Path) -> None:
    from flows.segment_batch import segment_batch

    state = segment_batch(
        RunConfig(input=str(tmp_path / "nope"), out=str(tmp_path / "out")), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(FileNotFoundError):
        state.result()


@pytest.mark.slow
def test_dsb2018_nuclei_real_data(shared_data: Path, tmp_path: Path) -> None:
    """528 real nuclei images: Otsu reaches mean foreground IoU >= 0.75 with instance scores for all."""
    root = shared_data / "dsb2018_nuclei"
    if not root.is_dir():
        pytest.skip(f"real data not available: {root} is absent")
    config = RunConfig(
        input=str(root / "images"),
        out=str(tmp_path / "out"),
        ground_truth=str(root / "labels"),
        gt_format="instances",
        segmenter="otsu",
        write_overlays=False,
    )
    state, summary = _run(config)
    assert state.is_completed()
    metrics = Store(tmp_path / "out").read("metrics")
    assert len(metrics) == 528 and summary["failed"] == 0
    assert metrics["has_ground_truth"].all()
    assert metrics[["inst_tp", "inst_fp", "inst_fn", "inst_f1", "dsb_score"]].notna().all().all()
    assert metrics["fg_iou"].mean() >= 0.75


def test_voc_void_border_is_ignored(shared_data: Path, shared_models: Path, tmp_path: Path) -> None:
    """PASCAL VOC class labels with their 255 "void" border (``gt_ignore=255``), segmented by
    the real DeepLab TFLite model: the stored class scores are scikit-learn's on the pixels
    that are not void, computed from the stored masks decoded by pycocotools."""
    pytest.importorskip("ai_edge_litert", reason="the tflite segmenter needs ai-edge-litert")
    from sklearn.metrics import jaccard_score

    voc = shared_data / "voc2011_instances" / "data_dataset_voc"
    model = shared_models / "deeplabv3_mnv2_pascal"
    config = RunConfig(
        input=str(voc / "JPEGImages"),
        out=str(tmp_path / "out"),
        segmenter="tflite",
        segmenter_params={
            "model_path": str(model / "deeplabv3_mnv2_pascal_quant.tflite"),
            "labels_path": str(model / "pascal_voc_segmentation_labels.txt"),
        },
        ground_truth=str(voc / "SegmentationClass"),
        gt_format="classes",
        gt_ignore=255,
    )
    state, summary = _run(config)
    assert state.is_completed() and summary["failed"] == 0
    store = Store(tmp_path / "out")
    metrics = store.read("metrics").set_index("image_id")
    masks = store.read("masks")
    assert len(metrics) == 3
    void = 0
    for image_id, row in metrics.iterrows():
        truth = read_labels(voc / "SegmentationClass" / f"{image_id}.png").astype(np.int64)
        keep = truth != 255
        void += int((~keep).sum())
        pred = np.zeros(truth.shape, dtype=np.int64)
        for m in masks[masks["image_id"] == image_id].itertuples():
            rle = {"size": [m.height, m.width], "counts": m.rle_counts.encode()}
            pred[cocomask.decode(rle).astype(bool)] = m.class_id
        labels = list(range(21))
        want = jaccard_score(truth[keep], pred[keep], labels=labels, average=None, zero_division=0)
        got = np.asarray(row["class_iou"], dtype=float)
        assert got.shape == (21,)  # 255 is no class
        present = np.isin(labels, np.union1d(truth[keep], pred[keep]))  # else IoU is undefined
        np.testing.assert_allclose(got[present], want[present])
        assert np.isnan(got[~present]).all()
        assert row["fg_iou"] == pytest.approx(jaccard_score(truth[keep] > 0, pred[keep] > 0))
        assert row["fg_tp"] + row["fg_fp"] + row["fg_fn"] + row["fg_tn"] == int(keep.sum())
    assert void > 1000  # VOC draws void borders round (most) objects
    # the same run without gt_ignore would count the border as a class: another configuration
    assert config.config_hash() != config.model_copy(update={"gt_ignore": None}).config_hash()
    assert (tmp_path / "out" / "overlays" / "2011_000003.png").is_file()


def test_coco_annotation_file_as_ground_truth(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real COCO val2017 subset (polygons and one crowd RLE) scored from its JSON file; an
    image with no entry is segmented without scores."""
    from pycocotools.coco import COCO

    root = shared_data / "coco_val2017_subset"
    ann_file = root / "annotations" / "instances_val2017_subset.json"
    images = tmp_path / "images"
    images.mkdir()
    for src in sorted((root / "images").glob("*.jpg")):
        (images / src.name).symlink_to(src)
    make_dataset(tmp_path / "extra", n_images=1, size=(64, 64), seed=0)
    extra = next((tmp_path / "extra" / "images").glob("*.png"))
    shutil.copy(extra, images / "not_in_the_json.png")
    config = RunConfig(
        input=str(images),
        out=str(tmp_path / "out"),
        ground_truth=str(ann_file),
        gt_format="instances",
    )
    state, summary = _run(config)
    assert state.is_completed() and summary["failed"] == 0
    metrics = Store(tmp_path / "out").read("metrics").set_index("image_id")
    assert len(metrics) == 11
    assert not metrics.loc["not_in_the_json", "has_ground_truth"]
    scored = metrics.drop(index="not_in_the_json")
    assert scored["has_ground_truth"].all() and scored["inst_f1"].notna().all()
    coco = COCO(str(ann_file))
    crowds = 0
    for img in coco.loadImgs(coco.getImgIds()):
        row = scored.loc[Path(img["file_name"]).stem]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        objects = np.zeros((img["height"], img["width"]), dtype=bool)
        crowd = np.zeros_like(objects)
        for a in anns:
            (crowd if a["iscrowd"] else objects)[coco.annToMask(a) > 0] = True
        # every pixel is counted once, but crowd pixels outside objects not at all
        counted = row["fg_tp"] + row["fg_fp"] + row["fg_fn"] + row["fg_tn"]
        assert counted == img["height"] * img["width"] - int((crowd & ~objects).sum())
        assert row["fg_tp"] + row["fg_fn"] == int(objects.sum())
        assert row["inst_tp"] + row["inst_fn"] == sum(not a["iscrowd"] for a in anns)
        crowds += int(crowd.any())
    assert crowds == 1
    # segflow coco-eval: pycocotools' mask AP of the stored masks (tests/test_coco.py checks the
    # numbers against COCOeval; here the store and the command line)
    import json

    from segflow.cli import main

    capsys.readouterr()
    argv = ["coco-eval", str(tmp_path / "out"), "--annotations", str(ann_file), "--json"]
    assert main([*argv, "--class-agnostic"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    masks = Store(tmp_path / "out").read("masks")
    assert result["segmenter"] == "otsu" and result["n_images"] == 10
    assert result["unmatched_images"] == ["not_in_the_json"]
    assert result["n_detections"] == int((masks["image_id"] != "not_in_the_json").sum())
    assert 0.0 <= result["AP"] <= result["AP50"] <= 1.0 and result["AR100"] > 0.0


def test_zarr_stores_in_the_input_folder_are_images(
    dataset: dict[str, Any], tmp_path: Path
) -> None:
    """A ``*.zarr`` folder (plain Zarr array or OME-Zarr) is one image, streamed by window."""
    zarr = pytest.importorskip("zarr", reason="Zarr input needs the zarr extra")
    from segflow import rle, segmenters
    from segflow.inference import segment_image
    from segflow.preprocess import to_float_chw

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(dataset["good"][0], folder / "plain.png")
    image = read_labels(dataset["good"][1]).astype(np.uint8)  # grey 8-bit pixels of a good image
    arr = zarr.create_array(
        store=str(folder / "arr.zarr"), shape=image.shape, chunks=(32, 64), dtype="uint8"
    )
    arr[:] = image
    group = zarr.open_group(str(folder / "sub" / "ome.zarr"), mode="w")
    group.create_array("0", shape=(1, *image.shape), chunks=(1, 40, 40), dtype="uint8")[:] = image[
        None
    ]
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space"},
                {"name": "x", "type": "space"},
            ],
            "datasets": [{"path": "0"}],
        }
    ]
    out = tmp_path / "out"
    config = RunConfig(input=str(folder), out=str(out), segmenter="otsu", tile=64, overlap=16)
    state, summary = _run(config)
    assert state.is_completed() and summary["done"] == 3 and summary["failed"] == 0
    store = Store(out)
    metrics = store.read("metrics").set_index("image_id")
    assert sorted(metrics.index) == ["arr", "plain", "sub/ome"]
    # the oracle: the whole array segmented in memory
    want = segment_image(segmenters.create("otsu"), to_float_chw(image)).instances
    masks = store.read("masks")
    for image_id in ("arr", "sub/ome"):
        rows = masks[masks["image_id"] == image_id]
        assert len(rows) == int(want.max()) == metrics.loc[image_id, "n_instances"]
        got = np.zeros(image.shape, dtype=bool)
        for counts in rows["rle_counts"]:
            got |= rle.decode({"size": list(image.shape), "counts": counts}).astype(bool)
        np.testing.assert_array_equal(got, want > 0)
    # identity: the store's files hash the same on the next listing, so a re-run skips them all
    state, again = _run(config)
    assert again["skipped"] == 3 and again["done"] == 0


def test_remote_zarr_and_ground_truth_over_http_score_as_on_disk(
    dataset: dict[str, Any], tmp_path: Path, file_server: Any
) -> None:
    """An input folder on a real HTTP server (127.0.0.1): its Zarr store is read chunk by chunk,
    its PNG and the ground truth are fetched, and every row equals the run on the same files on
    disk (the oracle); a store without metadata is an ``errors`` row, the rest is written."""
    zarr = pytest.importorskip("zarr", reason="Zarr input needs the zarr extra")
    www = tmp_path / "www"
    (www / "in").mkdir()
    (www / "gt").mkdir()
    labels = dataset["root"] / "labels"
    plain, other = [p for p in dataset["good"] if (labels / p.name).exists()][:2]
    shutil.copy(plain, www / "in" / "plain.png")
    shutil.copy(labels / plain.name, www / "gt" / "plain.png")
    image = read_labels(other).astype(np.uint8)
    truth = read_labels(labels / other.name)  # the Zarr image's truth: a Zarr label array
    zarr.create_array(
        store=str(www / "gt" / "arr.zarr"), shape=truth.shape, chunks=(40, 40), dtype="int32"
    )[:] = truth
    arr = zarr.create_array(
        store=str(www / "in" / "arr.zarr"), shape=image.shape, chunks=(32, 48), dtype="uint8"
    )
    arr[:] = image
    (www / "in" / "broken.zarr").mkdir()
    (www / "in" / "broken.zarr" / "junk").write_bytes(b"not zarr metadata")

    def run(root: str, out: Path) -> dict[str, Any]:
        config = _config(dataset, out, input=f"{root}/in", ground_truth=f"{root}/gt")
        state, summary = _run(config)
        assert state.is_completed() and summary["done"] == 2 and summary["failed"] == 1, summary
        return summary

    run(file_server.url, tmp_path / "remote")
    chunk_gets = [p for p in file_server.requests if p.startswith("/in/arr.zarr/c/")]
    assert len(chunk_gets) >= 9  # 3 x 2 chunks: fetched one by one, never as one file
    run(str(www), tmp_path / "local")
    got, want = Store(tmp_path / "remote"), Store(tmp_path / "local")
    cols = ["image_id", "sha256", "n_instances", "fg_iou", "inst_f1", "inst_tp", "has_ground_truth"]
    m_got = got.read("metrics").sort_values("image_id")[cols].reset_index(drop=True)
    m_want = want.read("metrics").sort_values("image_id")[cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(m_got, m_want)
    assert list(m_got["image_id"]) == ["arr", "plain"] and m_got["inst_f1"].notna().all()
    assert got.read("metrics").set_index("image_id").loc["arr", "source_uri"] == (
        f"{file_server.url}/in/arr.zarr"
    )
    keys = ["image_id", "instance_id", "rle_counts"]
    assert got.read("masks").sort_values(keys[:2])[keys].values.tolist() == (
        want.read("masks").sort_values(keys[:2])[keys].values.tolist()
    )
    [error] = got.read("errors").to_dict("records")
    assert error["image_id"] == "broken" and error["stage"] == "read"
    assert "no Zarr store" in error["message"] and error["source_uri"].endswith("/in/broken.zarr")
    assert want.read("errors")["message"].tolist() == [error["message"]]  # on disk: the same
    # same identity over HTTP as on disk: the remote batch into the local store is all skipped
    config = _config(dataset, tmp_path / "local", input=f"{file_server.url}/in")
    _, again = _run(config)
    assert again["skipped"] == 2 and again["done"] == 0


def _ome_zarr(path: Path, image: np.ndarray, *, labels: dict[str, np.ndarray]) -> None:
    """An NGFF 0.4 OME-Zarr image (y, x) with label images under ``labels/``."""
    import zarr

    def multiscales(group: Any, array: np.ndarray) -> None:
        group.create_array("0", shape=array.shape, chunks=(40, 40), dtype=array.dtype)[:] = array
        group.attrs["multiscales"] = [
            {"version": "0.4", "axes": ["y", "x"], "datasets": [{"path": "0"}]}
        ]

    root = zarr.open_group(str(path), mode="w")
    multiscales(root, image)
    if labels:
        group = root.create_group("labels")
        group.attrs["labels"] = list(labels)
        for name, truth in labels.items():
            label = group.create_group(name)
            multiscales(label, truth)
            label.attrs["image-label"] = {"version": "0.4"}


def test_ome_zarr_images_are_scored_against_their_own_label_images(
    dataset: dict[str, Any], tmp_path: Path, file_server: Any
) -> None:
    """``ground_truth="ome-labels:NAME"``: each OME-Zarr image's ``labels/NAME``, on disk and over
    HTTP; the oracle is the same pixels and labels as PNG files, scored in memory."""
    pytest.importorskip("zarr", reason="Zarr input needs the zarr extra")
    import cv2

    inp = tmp_path / "www" / "in"
    inp.mkdir()
    labels = dataset["root"] / "labels"
    a, b = [p for p in dataset["good"] if (labels / p.name).exists()][:2]
    for name, src in (("a", a), ("b", b)):
        image = read_labels(src).astype(np.uint8)
        truth = read_labels(labels / src.name)
        # b's store has a label image of another name only: no truth for "nuclei"
        other = {"cells": truth} if name == "b" else {"nuclei": truth, "cells": 0 * truth}
        _ome_zarr(inp / f"{name}.zarr", image, labels=other)
        (tmp_path / "png" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "png" / "labels").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "png" / "images" / f"{name}.png"), image)
        cv2.imwrite(str(tmp_path / "png" / "labels" / f"{name}.png"), truth.astype(np.uint16))
    shutil.copy(a, inp / "plain.png")  # not an OME-Zarr image: no truth either

    def metrics(input: str, ground_truth: str, out: str) -> pd.DataFrame:
        config = _config(dataset, tmp_path / out, input=input, ground_truth=ground_truth)
        state, summary = _run(config)
        assert state.is_completed() and summary["failed"] == 0, summary
        return Store(tmp_path / out).read("metrics").set_index("image_id").sort_index()

    cols = ["n_instances", "fg_tp", "fg_fp", "fg_fn", "fg_tn", "inst_tp", "inst_fp", "inst_fn"]
    local = metrics(str(inp), "ome-labels:nuclei", "local")
    assert list(local.index) == ["a", "b", "plain"]
    assert local["has_ground_truth"].tolist() == [True, False, False]
    oracle = metrics(str(tmp_path / "png" / "images"), str(tmp_path / "png" / "labels"), "oracle")
    assert local.loc["a", cols].tolist() == oracle.loc["a", cols].tolist()
    assert local.loc["a", "inst_f1"] == pytest.approx(oracle.loc["a", "inst_f1"], rel=1e-12)
    # over HTTP, "ome-labels:" takes the first label image listed: a -> nuclei, b -> cells
    remote = metrics(f"{file_server.url}/in", "ome-labels:", "remote")
    assert remote["has_ground_truth"].tolist() == [True, True, False]
    assert remote.loc["a", cols].tolist() == local.loc["a", cols].tolist()
    assert remote.loc["b", cols].tolist() == oracle.loc["b", cols].tolist()


def test_http_credentials_given_to_fsspec_stay_out_of_rows_files_and_logs(
    dataset: dict[str, Any],
    tmp_path: Path,
    file_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that wants a token: fsspec's config carries it (as ``FSSPEC_HTTP`` would), every
    image is read, and the token is in no store file, overlay or log line."""
    zarr = pytest.importorskip("zarr", reason="Zarr input needs the zarr extra")
    import fsspec.config

    secret = "Bearer s3cr3t-9f1c"
    www = tmp_path / "www"
    (www / "in").mkdir()
    (www / "gt").mkdir()
    labels = dataset["root"] / "labels"
    with_gt = [p for p in dataset["good"] if (labels / p.name).exists()][:2]
    for p in with_gt:
        shutil.copy(p, www / "in" / p.name)
        shutil.copy(labels / p.name, www / "gt" / p.name)
    image = read_labels(with_gt[0]).astype(np.uint8)
    zarr.create_array(
        store=str(www / "in" / "z.zarr"), shape=image.shape, chunks=(48, 48), dtype="uint8"
    )[:] = image
    file_server.auth = secret
    config = _config(
        dataset,
        tmp_path / "out",
        input=f"{file_server.url}/in",
        ground_truth=f"{file_server.url}/gt",
    )
    from flows.segment_batch import segment_batch
    from segflow.ingest import list_images

    with pytest.raises(PermissionError, match="401"):  # without it the listing is refused
        list_images(config.input)
    one_try = len(file_server.requests)
    refused = segment_batch(config, return_state=True)
    assert refused.is_failed()
    with pytest.raises(PermissionError, match="401"):
        refused.result()
    # a refusal is not retried as a transient error (the task's 2 retries)
    assert len(file_server.requests) == 2 * one_try
    monkeypatch.setitem(fsspec.config.conf, "http", {"headers": {"Authorization": secret}})
    caplog.set_level("DEBUG")
    state, summary = _run(config)
    assert state.is_completed() and summary["done"] == 3 and summary["failed"] == 0, summary
    metrics = Store(tmp_path / "out").read("metrics")
    assert metrics["fg_iou"].notna().sum() == 2  # the PNGs were scored against remote truth
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in written) and any(p.suffix == ".png" for p in written)
    for path in written:
        assert b"s3cr3t" not in path.read_bytes(), path
    assert "s3cr3t" not in caplog.text


def test_local_run_settings_turn_heartbeats_off_only_on_the_embedded_api() -> None:
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    from tasks.runners import local_run_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}):
        with temporary_settings(updates={PREFECT_API_URL: None}), local_run_settings():
            assert get_current_settings().flows.heartbeat_frequency is None
        with (
            temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}),
            local_run_settings(),
        ):
            assert get_current_settings().flows.heartbeat_frequency == 60
        assert get_current_settings().flows.heartbeat_frequency == 60


def test_progress_updates_are_throttled_but_the_last_one_always_lands() -> None:
    from prefect.client.orchestration import get_client

    from tasks.artifacts import Progress

    progress = Progress(f"throttle-{uuid.uuid4().hex[:8]}", 10, min_interval_s=1.0)
    assert progress.artifact_id is not None

    def value() -> float:
        with get_client(sync_client=True) as client:
            (row,) = [a for a in client.read_artifacts() if a.id == progress.artifact_id]
        return float(row.data)  # type: ignore[arg-type]

    assert value() == 0.0
    progress.update(3)
    progress.update(5)  # within a second of the previous: skipped
    assert value() == 30.0
    progress.update(10)  # the final one is never skipped
    assert value() == 100.0
