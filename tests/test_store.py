"""The Parquet store: round trips, three independent readers, atomic and concurrent writes."""

from __future__ import annotations

import datetime as dt
import math
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from segflow import store as store_module
from segflow.store import (
    DATASETS,
    PARTITION_COLUMN,
    REQUIRED,
    SCHEMA_VERSION,
    SCHEMAS,
    UPGRADES,
    Store,
    check_partition_value,
)

# pycocotools' own decode trips a numpy 2 deprecation warning; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

UTC = dt.UTC
T0 = dt.datetime(2026, 11, 25, 12, 30, 15, 123456, tzinfo=UTC)


def metrics_row(
    i: int, *, config_hash: str = "cfa01", run_id: str = "run-1", **extra: Any
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "image_id": f"img{i:03d}",
        "source_uri": f"file:///data/img{i:03d}.png",
        "sha256": f"{i:064x}",
        "config_hash": config_hash,
        "run_id": run_id,
        "segmenter": "otsu",
        "width": 64 + i,
        "height": 32 + i,
        "has_ground_truth": True,
        "created_at": T0,
    }
    row.update(extra)
    return row


def mask_row(i: int, *, config_hash: str = "cfa01", run_id: str = "run-1") -> dict[str, Any]:
    return {
        "image_id": f"img{i:03d}",
        "sha256": f"{i:064x}",
        "config_hash": config_hash,
        "run_id": run_id,
        "class_id": 1,
        "class_name": "nucleus",
        "instance_id": i + 1,
        "score": 0.5,
        "bbox_x": 1.0,
        "bbox_y": 2.0,
        "bbox_w": 3.0,
        "bbox_h": 4.0,
        "area": 12,
        "height": 8,
        "width": 8,
        "rle_counts": "PPYo1",
    }


def error_row(i: int, *, run_id: str = "run-1") -> dict[str, Any]:
    return {
        "source_uri": f"file:///data/bad{i}.png",
        "stage": "ingest",
        "error_type": "ImageReadError",
        "message": f"truncated file {i}",
        "run_id": run_id,
    }


def run_row(run_id: str = "run-1") -> dict[str, Any]:
    return {
        "run_id": run_id,
        "flow_run_name": "clever-fox",
        "parameters": {"segmenter": "otsu", "tile": 512},
        "config_hash": "cfa01",
        "n_images": 3,
        "n_done": 2,
        "n_skipped": 0,
        "n_failed": 1,
        "started_at": T0,
        "ended_at": T0 + dt.timedelta(seconds=5),
        "status": "completed",
    }


def dataset_files(root: Path, dataset: str) -> list[Path]:
    return sorted((root / dataset).rglob("*.parquet"))


# --- round trips ------------------------------------------------------------------------------


def test_metrics_round_trip_every_type_with_nulls_and_lists(tmp_path: Path) -> None:
    store = Store(tmp_path)
    full = metrics_row(
        1,
        n_instances=7,
        fg_fraction=0.25,
        t_read_ms=1.5,
        t_preprocess_ms=2.5,
        t_segment_ms=3.5,
        t_stitch_ms=0.0,
        t_evaluate_ms=4.0,
        t_total_ms=11.5,
        fg_tp=np.int64(10),
        fg_fp=2,
        fg_fn=3,
        fg_tn=2**40,
        fg_iou=10 / 15,
        fg_dice=20 / 25,
        fg_precision=10 / 12,
        fg_recall=10 / 13,
        class_iou=np.array([0.9, np.nan, 0.4]),
        class_tp=[5, 0, 2],
        class_fp=np.array([1, 0, 0], dtype=np.int64),
        class_fn=[0, 0, 4],
        inst_tp=5,
        inst_fp=1,
        inst_fn=2,
        inst_f1=np.float32(0.75),
        inst_mean_iou=0.8,
        inst_pq=0.6,
        dsb_score=0.5,
        mean_entropy=0.1,
    )
    sparse = metrics_row(
        2, has_ground_truth=False, fg_iou=float("nan"), class_iou=[], created_at=None
    )
    before = dt.datetime.now(UTC)
    path = store.write("metrics", [full, sparse])
    after = dt.datetime.now(UTC)
    assert isinstance(path, Path) and path.is_file()
    assert path.parent.name == "config_hash=cfa01"
    assert path.name.startswith("part-run-1-") and path.suffix == ".parquet"

    table = store.read_arrow("metrics")
    assert table.schema.equals(SCHEMAS["metrics"], check_metadata=False)
    got = {row["image_id"]: row for row in table.to_pylist()}
    one, two = got["img001"], got["img002"]
    for key, value in full.items():
        if key == "class_iou":
            assert one[key] == [0.9, None, 0.4]
        elif isinstance(value, np.ndarray):
            assert one[key] == value.tolist()
        elif isinstance(value, float | np.floating):
            assert one[key] == pytest.approx(float(value), rel=1e-7)
        else:
            assert one[key] == value, key
    assert one["fg_tn"] == 2**40
    # a left-out or NaN column is null, never NaN; an empty list stays an empty list
    assert two["fg_iou"] is None and two["fg_tp"] is None and two["mean_entropy"] is None
    assert two["class_iou"] == [] and two["class_tp"] is None
    assert two["has_ground_truth"] is False
    assert before <= two["created_at"] <= after

    frame = store.read("metrics")
    assert list(frame.columns) == SCHEMAS["metrics"].names
    assert str(frame["fg_tp"].dtype) == "Int64" and frame["fg_tp"].isna().tolist() == [False, True]
    assert str(frame["has_ground_truth"].dtype) == "boolean"
    assert str(frame["created_at"].dtype) == "datetime64[us, UTC]"
    assert frame["config_hash"].tolist() == ["cfa01", "cfa01"]


def test_masks_rle_round_trip_decodes_with_pycocotools(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    masks = [(rng.random((9, 13)) > 0.6).astype(np.uint8) for _ in range(4)]
    rows = []
    for i, mask in enumerate(masks):
        rle = mask_utils.encode(np.asfortranarray(mask))
        x, y, w, h = mask_utils.toBbox(rle).tolist()
        rows.append(
            {
                "image_id": "im",
                "sha256": "f" * 64,
                "config_hash": "cbeef",
                "run_id": "r",
                "class_id": 1,
                "instance_id": i + 1 if i else None,
                "score": 0.25 * i,
                "bbox_x": x,
                "bbox_y": y,
                "bbox_w": w,
                "bbox_h": h,
                "area": int(mask_utils.area(rle)),
                "height": 9,
                "width": 13,
                "rle_counts": rle["counts"].decode(),
            }
        )
    store = Store(tmp_path)
    store.write("masks", rows)
    frame = store.read("masks")
    assert len(frame) == 4
    for row in frame.itertuples():
        decoded = mask_utils.decode({"size": [row.height, row.width], "counts": row.rle_counts})
        index = [r["rle_counts"] for r in rows].index(row.rle_counts)
        np.testing.assert_array_equal(decoded, masks[index])
        assert [row.bbox_x, row.bbox_y, row.bbox_w, row.bbox_h] == [
            rows[index][k] for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")
        ]
        assert row.score == pytest.approx(rows[index]["score"])
        assert row.area == decoded.sum()
        assert (row.bbox_x, row.bbox_y, row.bbox_w, row.bbox_h) == tuple(
            mask_utils.toBbox(mask_utils.encode(np.asfortranarray(decoded))).tolist()
        )
    assert store.read("masks")["instance_id"].isna().sum() == 1


def test_errors_and_runs_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path)
    before = dt.datetime.now(UTC)
    error_path = store.write(
        "errors", [error_row(0), {**error_row(1), "sha256": "ab" * 32, "config_hash": "c1"}]
    )
    run_path = store.write("runs", [run_row()])
    assert isinstance(error_path, Path) and isinstance(run_path, Path)
    for path in (error_path, run_path):
        key, value = path.parent.name.split("=")
        assert key == "date"
        assert dt.date.fromisoformat(value) in {before.date(), dt.datetime.now(UTC).date()}
    errors = store.read_arrow("errors").to_pylist()
    assert [e["message"] for e in errors] == ["truncated file 0", "truncated file 1"]
    assert all(e["image_id"] is None for e in errors)  # optional: rows without one still store
    assert errors[0]["sha256"] is None and errors[1]["config_hash"] == "c1"
    assert all(e["created_at"] >= before for e in errors)
    (run,) = store.read_arrow("runs").to_pylist()
    assert run["parameters"] == '{"segmenter": "otsu", "tile": 512}'
    assert run["segflow_version"] == __import__("segflow").__version__
    assert run["ended_at"] - run["started_at"] == dt.timedelta(seconds=5)
    assert list(store.read("runs").columns) == SCHEMAS["runs"].names  # no "date" in read()


def _value_strategy(field: pa.Field, *, nullable: bool = True) -> st.SearchStrategy[Any]:
    t = field.type
    if pa.types.is_list(t):
        inner = _value_strategy(pa.field("x", t.value_type))
        return st.lists(inner, max_size=4) | st.none()
    if pa.types.is_string(t):
        base: st.SearchStrategy[Any] = st.text(max_size=12)
    elif pa.types.is_int32(t):
        base = st.integers(-(2**31), 2**31 - 1)
    elif pa.types.is_int64(t):
        base = st.integers(-(2**63), 2**63 - 1)
    elif pa.types.is_float32(t):
        base = st.floats(width=32, allow_nan=nullable)
    elif pa.types.is_floating(t):
        base = st.floats(allow_nan=nullable)
    elif pa.types.is_boolean(t):
        base = st.booleans()
    else:  # timestamp[us, UTC]
        base = st.datetimes(
            min_value=dt.datetime(1971, 1, 1),
            max_value=dt.datetime(2200, 1, 1),
            timezones=st.just(UTC),
        )
    return base | st.none() if nullable else base


def _rows_strategy(dataset: str) -> st.SearchStrategy[list[dict[str, Any]]]:
    fields = {}
    for field in SCHEMAS[dataset]:
        strategy = _value_strategy(field, nullable=field.name not in REQUIRED[dataset])
        if field.name == "config_hash":
            strategy = st.just("cabc")
        if field.name == "parameters":
            strategy = st.none() | st.dictionaries(st.text(max_size=4), st.integers(), max_size=3)
        fields[field.name] = strategy
    optional = [f.name for f in SCHEMAS[dataset] if f.name not in REQUIRED[dataset]]
    row = st.fixed_dictionaries(
        {n: fields[n] for n in REQUIRED[dataset]}, optional={n: fields[n] for n in optional}
    )
    return st.lists(row, min_size=1, max_size=4)


def _expected(value: Any, field_type: pa.DataType) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, list):
        return [_expected(v, field_type.value_type) for v in value]
    if pa.types.is_float32(field_type):
        return float(np.float32(value))
    if isinstance(value, dict):
        import json

        return json.dumps(value, sort_keys=True)
    return value


@pytest.mark.parametrize("dataset", DATASETS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_property(dataset: str, data: st.DataObject) -> None:
    rows = data.draw(_rows_strategy(dataset))
    with tempfile.TemporaryDirectory() as folder:
        store = Store(folder, fsync=False)
        store.write(dataset, rows)
        got = store.read_arrow(dataset).to_pylist()
    assert len(got) == len(rows)
    for row, back in zip(rows, got, strict=True):
        for field in SCHEMAS[dataset]:
            if field.name == "segflow_version" and row.get(field.name) is None:
                assert back[field.name] == __import__("segflow").__version__
                continue
            if field.name not in row:
                if field.name != "created_at":
                    assert back[field.name] is None
                continue
            assert back[field.name] == _expected(row[field.name], field.type), field.name


# --- the three readers ------------------------------------------------------------------------


@pytest.fixture
def filled_store(tmp_path: Path) -> Store:
    store = Store(tmp_path)
    store.write(
        "metrics", [metrics_row(i, fg_iou=0.1 * i, class_iou=[0.5, 0.1 * i]) for i in range(3)]
    )
    store.write("metrics", [metrics_row(i, config_hash="cb77", fg_iou=None) for i in range(3, 5)])
    store.write("masks", [mask_row(i) for i in range(4)])
    store.write("masks", [mask_row(9, config_hash="cb77")])
    store.write("errors", [error_row(0), error_row(1)])
    store.write("errors", [error_row(2, run_id="run-2")])
    store.write("runs", [run_row("run-1")])
    store.write("runs", [run_row("run-2")])
    return store


EXPECTED_ROWS = {"metrics": 5, "masks": 5, "errors": 3, "runs": 2}
ID_COLUMN = {"metrics": "image_id", "masks": "image_id", "errors": "source_uri", "runs": "run_id"}


def _duckdb_rows(
    root: Path, dataset: str, select: str = "*", where: str = ""
) -> list[tuple[Any, ...]]:
    """Run ``SELECT <select> FROM <dataset> <where>`` through DuckDB's documented hive read."""
    glob = (root / dataset).as_posix() + "/**/*.parquet"
    relation = duckdb.sql(
        f"SELECT {select} FROM read_parquet('{glob}', hive_partitioning = true) {where}"
    )
    assert relation is not None
    return relation.fetchall()


def _duckdb(root: Path, dataset: str) -> pd.DataFrame:
    glob = (root / dataset).as_posix() + "/**/*.parquet"
    relation = duckdb.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true)")
    assert relation is not None
    return relation.df()


@pytest.mark.parametrize("dataset", DATASETS)
def test_pandas_duckdb_polars_read_every_dataset_alike(filled_store: Store, dataset: str) -> None:
    root = Path(filled_store.root)
    key = PARTITION_COLUMN[dataset]
    ours = filled_store.read(dataset)
    by_pandas = pd.read_parquet(root / dataset)
    by_duckdb = _duckdb(root, dataset)
    by_polars = pl.read_parquet(root / dataset)
    by_polars_scan = pl.scan_parquet(root / dataset, hive_partitioning=True).collect()
    id_column = ID_COLUMN[dataset]
    expected_ids = sorted(ours[id_column].tolist())
    assert len(ours) == EXPECTED_ROWS[dataset]
    for name, frame in [("pandas", by_pandas), ("duckdb", by_duckdb)]:
        assert sorted(frame[id_column].tolist()) == expected_ids, name
        assert key in frame.columns, name
    for name, polars_frame in [("polars", by_polars), ("polars scan", by_polars_scan)]:
        assert sorted(polars_frame[id_column].to_list()) == expected_ids, name
        assert key in polars_frame.columns, name
    # every schema column is visible to every reader
    for column in SCHEMAS[dataset].names:
        assert (
            column in by_pandas.columns
            and column in by_duckdb.columns
            and column in by_polars.columns
        )

    if key == "config_hash":
        # the partition column comes back as strings, equal to what read() gives
        assert isinstance(by_pandas[key].dtype, pd.CategoricalDtype)
        assert all(isinstance(v, str) for v in by_pandas[key].cat.categories)
        assert by_polars.schema[key] == pl.String and by_polars_scan.schema[key] == pl.String
        assert _duckdb_rows(root, dataset, "DISTINCT typeof(config_hash)") == [("VARCHAR",)]
        pairs = sorted(zip(ours[id_column].tolist(), ours[key].tolist(), strict=True))
        readers: list[tuple[str, list[Any], list[Any]]] = [
            ("pandas", by_pandas[id_column].tolist(), by_pandas[key].astype(str).tolist()),
            ("duckdb", by_duckdb[id_column].tolist(), by_duckdb[key].tolist()),
            ("polars", by_polars[id_column].to_list(), by_polars[key].to_list()),
        ]
        for name, ids, keys in readers:
            assert sorted(zip(ids, keys, strict=True)) == pairs, name
        # the partition column is in the folder name only, never inside the file
        for path in dataset_files(root, dataset):
            assert "config_hash" not in pq.read_schema(path).names
    else:
        folders = {p.parent.name.split("=")[1] for p in dataset_files(root, dataset)}
        assert {str(v) for v in by_pandas[key]} == folders
        assert {pd.Timestamp(v).date().isoformat() for v in by_duckdb[key]} == folders
        assert {v.isoformat() for v in by_polars[key].to_list()} == folders

    if dataset == "metrics":
        iou = dict(zip(ours["image_id"], ours["fg_iou"], strict=True))
        duck = dict(zip(by_duckdb["image_id"], by_duckdb["fg_iou"], strict=True))
        polars_iou = dict(
            zip(by_polars["image_id"].to_list(), by_polars["fg_iou"].to_list(), strict=True)
        )
        for image_id, value in iou.items():
            if pd.isna(value):
                assert pd.isna(duck[image_id]) and polars_iou[image_id] is None
            else:
                assert duck[image_id] == pytest.approx(value) and polars_iou[
                    image_id
                ] == pytest.approx(value)
        # null, not NaN: SQL avg skips the missing scores
        [(mean,)] = _duckdb_rows(root, dataset, "avg(fg_iou)")
        assert mean == pytest.approx((0.0 + 0.1 + 0.2) / 3)
        lists = _duckdb_rows(root, dataset, "class_iou", "WHERE image_id = 'img002'")
        assert lists == [([0.5, 0.2],)]


def test_file_metadata_carries_schema_version(filled_store: Store) -> None:
    for dataset in DATASETS:
        for path in dataset_files(Path(filled_store.root), dataset):
            metadata = pq.read_metadata(path).metadata
            assert metadata[b"segflow.schema_version"] == str(SCHEMA_VERSION).encode()
            assert metadata[b"segflow.dataset"] == dataset.encode()


# --- atomic, unique, concurrent ---------------------------------------------------------------


def test_each_write_adds_one_new_file_and_never_overwrites(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = store.write("metrics", [metrics_row(0)])
    second = store.write("metrics", [metrics_row(0)])
    assert isinstance(first, Path) and isinstance(second, Path) and first != second
    assert dataset_files(tmp_path, "metrics") == sorted([first, second])
    assert store.write("metrics", []) is None
    assert len(dataset_files(tmp_path, "metrics")) == 2
    assert len(store.read("metrics")) == 2


def test_concurrent_writes_from_threads_never_collide(tmp_path: Path) -> None:
    store = Store(tmp_path, fsync=False)
    n_threads, n_writes, n_rows = 8, 5, 3
    barrier = threading.Barrier(n_threads)
    failures: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for w in range(n_writes):
                base = (t * n_writes + w) * n_rows
                # the same run id in every thread: only the uuid keeps the names apart
                store.write(
                    "metrics", [metrics_row(base + r, run_id="same-run") for r in range(n_rows)]
                )
                store.write(
                    "errors", [error_row(base + r, run_id="same-run") for r in range(n_rows)]
                )
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    total = n_threads * n_writes
    assert len(dataset_files(tmp_path, "metrics")) == total
    assert len(dataset_files(tmp_path, "errors")) == total
    ids = store.read("metrics")["image_id"].tolist()
    assert sorted(ids) == [f"img{i:03d}" for i in range(total * n_rows)]
    assert len(store.processed("cfa01")) == total * n_rows
    assert len(store.read("errors")) == total * n_rows
    assert list((tmp_path / ".staging").iterdir()) == []


def _all_readers_count(root: Path, dataset: str) -> dict[str, int]:
    return {
        "store": len(Store(root).read(dataset)),
        "pandas": len(pd.read_parquet(root / dataset)),
        "duckdb": len(_duckdb(root, dataset)),
        "polars": len(pl.read_parquet(root / dataset)),
        "polars_scan": pl.scan_parquet(root / dataset, hive_partitioning=True).collect().height,
    }


def test_crash_while_writing_leaves_no_visible_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path)
    store.write("metrics", [metrics_row(0)])
    store.write("errors", [error_row(0)])
    real_write_table = pq.write_table

    def crashing_write_table(table: pa.Table, where: Any, **kwargs: Any) -> None:
        real_write_table(table, where, **kwargs)
        where.seek(0)
        where.truncate(40)  # half a file on disk, then the process "dies"
        raise RuntimeError("simulated crash mid-write")

    monkeypatch.setattr(store_module.pq, "write_table", crashing_write_table)
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.write("metrics", [metrics_row(1)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.write("metrics", [metrics_row(2, config_hash="cnew")])  # a brand-new partition folder
    monkeypatch.undo()

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("simulated failure of the rename")

    monkeypatch.setattr(store_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename"):
        store.write("errors", [error_row(1)])
    monkeypatch.undo()

    assert len(dataset_files(tmp_path, "metrics")) == 1
    assert len(dataset_files(tmp_path, "errors")) == 1
    assert list((tmp_path / ".staging").iterdir()) == []  # cleaned up
    # a hard kill (no clean-up) leaves a partial temp file in .staging: no reader sees it
    (tmp_path / ".staging" / "metrics-part-x-0.parquet.tmp").write_bytes(b"PAR1\x00\x01partial")
    (tmp_path / ".staging" / "metrics-part-y-1.parquet").write_bytes(b"PAR1\x00\x01partial")
    for dataset in ("metrics", "errors"):
        counts = _all_readers_count(tmp_path, dataset)
        assert set(counts.values()) == {1}, counts
    assert Store(tmp_path).processed("cfa01") == {f"{0:064x}"}
    assert Store(tmp_path).processed("cnew") == set()


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "rows", "message"),
    [
        ("metrics", [metrics_row(0, colour="red")], "unknown column.*colour"),
        (
            "metrics",
            [metrics_row(0), metrics_row(1, fg_iuo=0.5)],
            "row 1 has unknown column.*fg_iuo",
        ),
        (
            "metrics",
            [{k: v for k, v in metrics_row(0).items() if k != "sha256"}],
            "sha256 is required",
        ),
        ("metrics", [metrics_row(0, sha256=None)], "sha256 is required"),
        ("metrics", [metrics_row(0), metrics_row(1, config_hash="cother")], "several config_hash"),
        ("metrics", [metrics_row(0, config_hash="0123")], "would be read back as a number"),
        ("metrics", [metrics_row(0, config_hash="a/b")], "allowed are"),
        ("metrics", [metrics_row(0, created_at=dt.datetime(2026, 1, 1))], "naive datetime"),
        ("metrics", [metrics_row(0, width="wide")], "metrics.width"),
        ("metrics", [metrics_row(0, fg_tp=1.5)], "fg_tp must be a whole number"),
        ("metrics", [metrics_row(0, fg_tp=True)], "metrics.fg_tp"),
        ("metrics", [metrics_row(0, class_iou="0.5")], "class_iou must be a sequence"),
        ("masks", [{**mask_row(0), "instance_id": 2**40}], "masks.instance_id"),
        ("errors", [{**error_row(0), "stage": 3}], "stage must be a string"),
        ("runs", [{**run_row(), "status": None}], "status is required"),
    ],
)
def test_bad_rows_raise_value_error(
    tmp_path: Path, dataset: str, rows: list[dict[str, Any]], message: str
) -> None:
    store = Store(tmp_path)
    with pytest.raises(ValueError, match=message):
        store.write(dataset, rows)
    assert not (tmp_path / dataset).exists() or dataset_files(tmp_path, dataset) == []


def test_bad_dataset_and_column_names(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(ValueError, match=r"unknown dataset 'metric'.*metrics"):
        store.write("metric", [metrics_row(0)])
    with pytest.raises(ValueError, match=r"unknown dataset"):
        store.read("images")
    with pytest.raises(ValueError, match=r"unknown metrics column.*\['iou'\]"):
        store.read("metrics", columns=["sha256", "iou"])
    with pytest.raises(ValueError, match="single dict"):
        store.write("metrics", metrics_row(0))  # type: ignore[arg-type]


# values readers parse as something else (from trying pandas, DuckDB and Polars), and safe ones
SUSPECT_VALUES = [
    "0123", "99", "-5", "+5", "1.5", "1.", ".5", "1e5", "1E5", "12e45", "0x1f", "1_000", "nan",
    "NaN", "inf", "Infinity", "true", "False", "null", "2026-11-25", "2026-11-25T10:00:00",
    "__HIVE_DEFAULT_PARTITION__", "e5", "5e", "1d5", "00ff", "deadbeef", "cfa01", "a1b2",
    "2026-11", "abc.def", "x-1",
]  # fmt: skip


@pytest.mark.parametrize("value", SUSPECT_VALUES)
def test_accepted_partition_values_read_back_unchanged_by_every_reader(
    tmp_path: Path, value: str
) -> None:
    try:
        check_partition_value(value)
    except ValueError:
        return  # refused: the store never writes it
    store = Store(tmp_path, fsync=False)
    store.write("metrics", [metrics_row(0, config_hash=value)])
    root = tmp_path / "metrics"
    assert pd.read_parquet(root)["config_hash"].astype(str).tolist() == [value]
    assert pd.read_parquet(root)["config_hash"].map(type).tolist() == [str]
    assert pl.read_parquet(root)["config_hash"].to_list() == [value]
    assert _duckdb(tmp_path, "metrics")["config_hash"].tolist() == [value]
    assert store.processed(value) == {f"{0:064x}"}


def test_partition_guard_refuses_what_readers_misread() -> None:
    for value in [
        "0123",
        "99",
        "-5",
        "1.5",
        "1e5",
        "12e45",
        "0x1f",
        "NaN",
        "inf",
        "true",
        "2026-11-25",
    ]:
        with pytest.raises(ValueError, match="would be read back"):
            check_partition_value(value)
    for value in ["", "a b", "a/b", "a=b", "%20", "_x", "x" * 129]:
        with pytest.raises(ValueError, match="allowed are"):
            check_partition_value(value)
    assert check_partition_value("c" + "0" * 15) == "c" + "0" * 15


@settings(max_examples=30, deadline=None)
@given(st.text(alphabet="0123456789abcdef", min_size=1, max_size=16))
def test_hex_hashes_are_either_refused_or_read_back_exactly(value: str) -> None:
    try:
        check_partition_value(value)
    except ValueError:
        assert any(ch not in "abcdf" for ch in value)  # only number-like hex is refused
        return
    with tempfile.TemporaryDirectory() as folder:
        Store(folder, fsync=False).write("metrics", [metrics_row(0, config_hash=value)])
        root = Path(folder) / "metrics"
        assert pd.read_parquet(root)["config_hash"].astype(str).tolist() == [value]
        assert pl.read_parquet(root)["config_hash"].to_list() == [value]
        assert _duckdb(Path(folder), "metrics")["config_hash"].tolist() == [value]


# --- schema versions --------------------------------------------------------------------------


def _write_by_hand(path: Path, table: pa.Table, version: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if version is not None:
        table = table.replace_schema_metadata({b"segflow.schema_version": str(version).encode()})
    pq.write_table(table, path)


def test_upgrade_table_covers_every_earlier_version() -> None:
    assert set(UPGRADES) == set(range(SCHEMA_VERSION))


@pytest.mark.parametrize("version", [0, None])
def test_version_0_file_missing_a_column_reads_with_nulls(
    tmp_path: Path, version: int | None
) -> None:
    store = Store(tmp_path)
    store.write("metrics", [metrics_row(0, mean_entropy=0.3)])
    current = store.read_arrow("metrics").drop_columns(["config_hash"])
    old = current.drop_columns(["mean_entropy", "dsb_score"]).replace_schema_metadata(None)
    old = old.set_column(0, "image_id", pa.array(["old-image"]))
    old_file = tmp_path / "metrics" / "config_hash=cfa01" / "part-old-0.parquet"
    _write_by_hand(old_file, old, version)
    assert "mean_entropy" not in pq.read_schema(old_file).names

    frame = store.read("metrics").set_index("image_id")
    assert list(frame.reset_index().columns) == SCHEMAS["metrics"].names
    assert frame["mean_entropy"].isna().to_dict() == {"img000": False, "old-image": True}
    assert frame["dsb_score"].isna().to_dict() == {"img000": True, "old-image": True}
    assert frame.loc["img000", "mean_entropy"] == pytest.approx(0.3)
    assert frame.loc["old-image", "sha256"] == f"{0:064x}"
    assert frame.loc["old-image", "config_hash"] == "cfa01"
    assert store.processed("cfa01") == {f"{0:064x}"}
    assert store.read("metrics", columns=["mean_entropy", "config_hash"]).shape == (2, 2)


def test_errors_file_written_before_image_id_existed_reads_with_null_image_id(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    store.write("errors", [{**error_row(0), "image_id": "bad0"}])
    current = store.read_arrow("errors")
    old = current.drop_columns(["image_id"]).replace_schema_metadata(None)
    old = old.set_column(0, "source_uri", pa.array(["file:///data/old.png"]))
    old_file = next((tmp_path / "errors").glob("date=*")) / "part-old-0.parquet"
    _write_by_hand(old_file, old, SCHEMA_VERSION)
    frame = store.read("errors").set_index("source_uri")
    assert frame.loc["file:///data/bad0.png", "image_id"] == "bad0"
    assert pd.isna(frame.loc["file:///data/old.png", "image_id"])


def test_upgrade_steps_run_for_old_files_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upgrade step that renames a column (the kind a later version would add) is applied."""
    store = Store(tmp_path)
    store.write("metrics", [metrics_row(0, fg_iou=0.9)])
    old = (
        store.read_arrow("metrics")
        .drop_columns(["config_hash"])
        .rename_columns(
            [
                "iou" if c == "fg_iou" else c
                for c in store.read_arrow("metrics").drop_columns(["config_hash"]).column_names
            ]
        )
    )
    old = old.set_column(0, "image_id", pa.array(["old-image"]))
    _write_by_hand(tmp_path / "metrics" / "config_hash=cfa01" / "part-old-0.parquet", old, 0)
    calls: list[int] = []

    def rename_iou(table: pa.Table, dataset: str) -> pa.Table:
        calls.append(table.num_rows)
        if dataset == "metrics" and "iou" in table.column_names:
            table = table.rename_columns(
                ["fg_iou" if c == "iou" else c for c in table.column_names]
            )
        return table

    monkeypatch.setitem(UPGRADES, 0, rename_iou)
    frame = store.read("metrics").set_index("image_id")
    assert calls == [1]  # the current-version file is not passed through
    assert frame.loc["old-image", "fg_iou"] == pytest.approx(0.9)


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write("runs", [run_row()])
    table = store.read_arrow("runs")
    _write_by_hand(
        tmp_path / "runs" / "date=2030-01-01" / "part-future.parquet", table, SCHEMA_VERSION + 1
    )
    with pytest.raises(ValueError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade segflow"):
        store.read("runs")


# --- processed, summary, empty store, fsspec --------------------------------------------------


def test_processed_reads_only_its_partition(filled_store: Store) -> None:
    root = Path(filled_store.root)
    assert filled_store.processed("cfa01") == {f"{i:064x}" for i in range(3)}
    assert filled_store.processed("cb77") == {f"{i:064x}" for i in (3, 4)}
    assert filled_store.processed("cnever") == set()
    # a broken file in another configuration's folder does not matter to this one
    (root / "metrics" / "config_hash=cb77" / "part-broken.parquet").write_bytes(b"not parquet")
    assert filled_store.processed("cfa01") == {f"{i:064x}" for i in range(3)}
    with pytest.raises(ValueError, match="would be read back"):
        filled_store.processed("0123")


def test_summary_counts_and_means(filled_store: Store) -> None:
    summary = filled_store.summary()
    assert summary["rows"] == EXPECTED_ROWS
    assert summary["files"] == {"metrics": 2, "masks": 2, "errors": 2, "runs": 2}
    assert summary["images"] == 5 and summary["configs"] == 2
    assert summary["runs"] == 2 and summary["errors"] == 3
    otsu = summary["segmenters"]["otsu"]
    assert otsu["images"] == 5 and otsu["with_ground_truth"] == 5
    assert otsu["fg_iou"] == pytest.approx((0.0 + 0.1 + 0.2) / 3)
    assert otsu["dsb_score"] is None


def test_empty_store_reads_empty_frames(tmp_path: Path) -> None:
    store = Store(tmp_path / "nothing-yet")
    for dataset in DATASETS:
        frame = store.read(dataset)
        assert frame.empty and list(frame.columns) == SCHEMAS[dataset].names
    assert store.processed("cfa01") == set()
    summary = store.summary()
    assert summary["images"] == 0 and summary["segmenters"] == {}
    assert store.path("masks") == (tmp_path / "nothing-yet" / "masks").resolve()


def test_fsspec_memory_root_round_trip() -> None:
    root = f"memory://segflow-test-{uuid.uuid4().hex}/out"
    store = Store(root)
    written = store.write("metrics", [metrics_row(0), metrics_row(1)])
    store.write("errors", [error_row(0)])
    assert (
        isinstance(written, str)
        and written.startswith("memory://")
        and "config_hash=cfa01" in written
    )
    assert sorted(store.read("metrics")["image_id"]) == ["img000", "img001"]
    assert store.processed("cfa01") == {f"{0:064x}", f"{1:064x}"}
    assert len(store.read("errors")) == 1
    assert store.url("metrics").endswith("/out/metrics")
    with pytest.raises(ValueError, match="not local"):
        store.path("metrics")
    import fsspec

    fs = fsspec.filesystem("memory")
    assert [p for p in fs.find(root) if "/.staging/" in p] == []
