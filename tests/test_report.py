"""Store-wide report (segflow.report): tables checked against plain-Python means, real PNGs."""

from __future__ import annotations

import base64
import datetime as dt
import io
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segflow.report import SCORES, build_report, runs_over_time, segmenter_summary, write_report
from segflow.store import Store

T0 = dt.datetime(2026, 11, 1, 2, 0, tzinfo=dt.UTC)


def _metric_row(
    rng: np.random.Generator, *, run: str, segmenter: str, config: str, i: int, gt: bool
) -> dict:
    row = {
        "image_id": f"img{i}",
        "source_uri": f"/in/img{i}.png",
        "sha256": f"{i:064x}",
        "config_hash": config,
        "run_id": run,
        "segmenter": segmenter,
        "width": 64,
        "height": 64,
        "has_ground_truth": gt,
        "fg_fraction": float(rng.uniform(0.1, 0.5)),
        "n_instances": int(rng.integers(1, 20)),
        "t_total_ms": float(rng.uniform(5, 50)),
    }
    if gt:
        for column in SCORES:
            row[column] = float(rng.uniform(0.3, 1.0))
    return row


@pytest.fixture()
def store(tmp_path: Path) -> tuple[Path, list[dict], list[dict]]:
    """Two segmenters, three runs on three nights, one error; returns (root, metric rows, run rows)."""
    rng = np.random.default_rng(7)
    root = tmp_path / "store"
    s = Store(root)
    metrics: list[dict] = []
    runs: list[dict] = []
    plan = [
        ("r1", "otsu", "c0000000000000001", 0),
        ("r2", "otsu", "c0000000000000001", 1),
        ("r3", "watershed", "c0000000000000002", 2),
    ]
    for run, segmenter, config, day in plan:
        rows = [
            _metric_row(rng, run=run, segmenter=segmenter, config=config, i=10 * day + i, gt=i != 0)
            for i in range(5)
        ]
        s.write("metrics", rows)
        metrics += rows
        run_row = {
            "run_id": run,
            "flow_run_name": f"batch-{day}",
            "started_at": T0 + dt.timedelta(days=day),
            "ended_at": T0 + dt.timedelta(days=day, minutes=3),
            "status": "completed",
        }
        s.write("runs", [run_row])
        runs.append(run_row)
    s.write(
        "errors",
        [
            {
                "source_uri": "/in/bad.png",
                "stage": "read",
                "error_type": "ImageReadError",
                "message": "truncated",
                "run_id": "r1",
                "config_hash": "c0000000000000001",
            }
        ],
    )
    return root, metrics, runs


def _mean(values: list[float | None]) -> float:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else math.nan


def test_segmenter_summary_matches_plain_means(store) -> None:  # type: ignore[no-untyped-def]
    root, metrics, _ = store
    s = Store(root)
    summary = segmenter_summary(s.read("metrics"), s.read("errors"))
    assert list(summary["segmenter"]) == ["otsu", "watershed"]
    for row in summary.itertuples(index=False):
        mine = [m for m in metrics if m["segmenter"] == row.segmenter]
        assert row.images == len({m["sha256"] for m in mine})
        assert row.with_gt == sum(m["has_ground_truth"] for m in mine)
        assert row.runs == len({m["run_id"] for m in mine})
        for column in SCORES:
            assert getattr(row, column) == pytest.approx(_mean([m.get(column) for m in mine]))
        assert row.median_ms == pytest.approx(float(np.median([m["t_total_ms"] for m in mine])))
    assert dict(zip(summary["segmenter"], summary["errors"], strict=True)) == {
        "otsu": 1,
        "watershed": 0,
    }


def test_runs_over_time_one_point_per_run_in_time_order(store) -> None:  # type: ignore[no-untyped-def]
    root, metrics, runs = store
    s = Store(root)
    over = runs_over_time(s.read("metrics"), s.read("runs"))
    assert list(over["run_id"]) == ["r1", "r2", "r3"]
    assert list(over["flow_run_name"]) == ["batch-0", "batch-1", "batch-2"]
    assert [t.to_pydatetime() for t in over["time"]] == [r["ended_at"] for r in runs]
    for row in over.itertuples(index=False):
        mine = [m for m in metrics if m["run_id"] == row.run_id]
        assert row.fg_iou == pytest.approx(_mean([m.get("fg_iou") for m in mine]))
        assert row.images == len(mine)


def test_runs_without_runs_row_fall_back_to_created_at(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    s = Store(tmp_path / "s")
    when = T0 + dt.timedelta(hours=5)
    s.write(
        "metrics",
        [
            {
                **_metric_row(
                    rng, run="lost", segmenter="otsu", config="c0000000000000001", i=1, gt=True
                ),
                "created_at": when,
            }
        ],
    )
    over = runs_over_time(s.read("metrics"), s.read("runs"))
    assert over["time"].iloc[0].to_pydatetime() == when
    assert over["flow_run_name"].iloc[0] is None


def _data_uri_pngs(markdown: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    ]


def test_markdown_has_tables_and_inline_pngs(store) -> None:  # type: ignore[no-untyped-def]
    root, metrics, _ = store
    report = build_report(root)
    md = report.markdown
    assert md.startswith("# segflow store report")
    assert f"{len({m['sha256'] for m in metrics})} images · 3 runs · 2 segmenters · 1 errors" in md
    assert "| otsu | 10 | 8 | 2 | 1 |" in md
    assert "| read | ImageReadError | 1 |" in md
    pngs = _data_uri_pngs(md)
    assert pngs == [report.plots["scores_by_segmenter.png"], report.plots["scores_over_time.png"]]
    for png in pngs:
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size == (640, 320)
        pixels = np.asarray(image.convert("L"))
        assert pixels.std() > 5  # something was drawn, not a blank canvas
    # newest run first in the run table
    assert md.index("batch-2") < md.index("batch-1") < md.index("batch-0")


def test_store_without_ground_truth_plots_foreground_fraction(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    s = Store(tmp_path / "s")
    rows = [
        _metric_row(rng, run="r", segmenter="otsu", config="c0000000000000001", i=i, gt=False)
        for i in range(4)
    ]
    s.write("metrics", rows)
    report = build_report(tmp_path / "s")
    assert math.isnan(report.by_segmenter["fg_iou"].iloc[0])
    assert report.by_segmenter["fg_fraction"].iloc[0] == pytest.approx(
        _mean([r["fg_fraction"] for r in rows])
    )
    assert set(report.plots) == {"scores_by_segmenter.png", "scores_over_time.png"}


def test_empty_store(tmp_path: Path) -> None:
    report = build_report(tmp_path / "nothing")
    assert "no metrics yet" in report.markdown
    assert report.plots == {} and report.by_segmenter.empty and report.over_time.empty
    with pytest.raises(ValueError, match="last_runs must be >= 1"):
        build_report(tmp_path / "nothing", last_runs=0)


def test_write_report_files(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, _, _ = store
    path = write_report(root, tmp_path / "out", last_runs=2)
    assert path.read_text().count("| batch-") == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "report.md",
        "scores_by_segmenter.png",
        "scores_over_time.png",
    ]
    assert (tmp_path / "out" / "scores_over_time.png").read_bytes() in _data_uri_pngs(
        path.read_text()
    )
