"""A store-wide report: scores per segmenter and over time, with PNG plots (pure: no Prefect).

:func:`build_report` reads a store (``metrics``, ``runs``, ``errors``) and returns a
:class:`Report`: two tables as DataFrames, two plots as PNG bytes and a markdown page whose plots
are inline ``data:image/png;base64`` images (the Prefect UI renders them in a markdown artifact;
``flows/report.py`` publishes it). :func:`write_report` saves ``report.md`` and the PNG files.

Scores are means over images (nulls skipped, as the store stores undefined scores as null):
``fg_iou``, ``fg_dice``, ``fg_precision``, ``fg_recall`` for images with ground truth,
``inst_f1`` and ``dsb_score`` where ground truth has instances. "Over time" is one point per
run (the ``runs`` row's end time; the run's newest ``created_at`` when the run has no ``runs``
row) and segmenter. A store without ground truth shows ``fg_fraction`` (foreground share)
instead, so the trend plot still says something.

Plots are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend
switch), 640 x 320 px.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from segflow.store import Store

__all__ = [
    "SCORES",
    "Report",
    "build_report",
    "runs_over_time",
    "segmenter_summary",
    "write_report",
]

SCORES: tuple[str, ...] = ("fg_iou", "fg_dice", "fg_precision", "fg_recall", "inst_f1", "dsb_score")
"""Score columns summarised (means over images, nulls skipped)."""

_LABELS = {
    "fg_iou": "IoU",
    "fg_dice": "Dice",
    "fg_precision": "precision",
    "fg_recall": "recall",
    "inst_f1": "instance F1",
    "dsb_score": "DSB score",
    "fg_fraction": "foreground fraction",
}

_METRIC_COLUMNS = (
    "sha256",
    "config_hash",
    "run_id",
    "segmenter",
    "has_ground_truth",
    "fg_fraction",
    "n_instances",
    "t_total_ms",
    "created_at",
    *SCORES,
)


@dataclass
class Report:
    """What :func:`build_report` found.

    Attributes
    ----------
    markdown : str
        The page, plots inline as data URIs.
    by_segmenter : DataFrame
        One row per segmenter (:func:`segmenter_summary`).
    over_time : DataFrame
        One row per (run, segmenter) (:func:`runs_over_time`).
    plots : dict[str, bytes]
        ``{"scores_by_segmenter.png": ..., "scores_over_time.png": ...}`` (absent when no data).
    """

    markdown: str
    by_segmenter: pd.DataFrame
    over_time: pd.DataFrame
    plots: dict[str, bytes] = field(default_factory=dict)


def _mean(series: pd.Series) -> float:
    values = pd.to_numeric(series, errors="coerce").astype("float64")
    return float(values.mean()) if values.notna().any() else math.nan


def segmenter_summary(metrics: pd.DataFrame, errors: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per segmenter: ``images`` (distinct sha256), ``with_gt``, ``runs``, ``configs``,
    the mean of each score in :data:`SCORES`, ``fg_fraction``, ``n_instances`` and the median
    ``t_total_ms``; plus ``errors`` (rows of ``errors`` whose ``config_hash`` belongs to the
    segmenter) when ``errors`` is given. Sorted by segmenter name.
    """
    rows = []
    for segmenter, group in metrics.groupby(metrics["segmenter"].astype(str), sort=True):
        row: dict[str, Any] = {
            "segmenter": segmenter,
            "images": int(group["sha256"].nunique()),
            "with_gt": int(group["has_ground_truth"].fillna(False).astype(bool).sum()),
            "runs": int(group["run_id"].nunique()),
            "configs": int(group["config_hash"].astype(str).nunique()),
        }
        for column in (*SCORES, "fg_fraction", "n_instances"):
            row[column] = _mean(group[column])
        total = pd.to_numeric(group["t_total_ms"], errors="coerce").astype("float64")
        row["median_ms"] = float(total.median()) if total.notna().any() else math.nan
        if errors is not None:
            hashes = set(group["config_hash"].astype(str))
            row["errors"] = (
                int(errors["config_hash"].astype(str).isin(hashes).sum()) if len(errors) else 0
            )
        rows.append(row)
    columns = [
        "segmenter",
        "images",
        "with_gt",
        "runs",
        "configs",
        *SCORES,
        "fg_fraction",
        "n_instances",
        "median_ms",
    ]
    if errors is not None:
        columns.append("errors")
    return pd.DataFrame(rows, columns=columns)


def runs_over_time(metrics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, segmenter), oldest first: ``run_id``, ``flow_run_name``, ``time`` (UTC),
    ``segmenter``, ``images`` and the mean of each score in :data:`SCORES` and ``fg_fraction``.

    ``time`` is the run's ``ended_at`` (else ``started_at``) from ``runs``, falling back to the
    newest ``created_at`` of the run's metrics rows.
    """
    columns = ["run_id", "flow_run_name", "time", "segmenter", "images", *SCORES, "fg_fraction"]
    if metrics.empty:
        return pd.DataFrame(columns=columns)
    info: dict[str, tuple[Any, Any]] = {}
    for run_id, name, started, ended in zip(
        runs["run_id"], runs["flow_run_name"], runs["started_at"], runs["ended_at"], strict=True
    ):
        info[str(run_id)] = (name, ended if pd.notna(ended) else started)
    rows = []
    keys = [metrics["run_id"].astype(str), metrics["segmenter"].astype(str)]
    for (run_id, segmenter), group in metrics.groupby(keys, sort=False):
        name, when = info.get(str(run_id), (None, None))
        if when is None or pd.isna(when):
            when = group["created_at"].max()
        row_out: dict[str, Any] = {
            "run_id": run_id,
            "flow_run_name": name if isinstance(name, str) else None,
            "time": pd.Timestamp(when),
            "segmenter": segmenter,
            "images": int(group["sha256"].nunique()),
        }
        for column in (*SCORES, "fg_fraction"):
            row_out[column] = _mean(group[column])
        rows.append(row_out)
    out = pd.DataFrame(rows, columns=columns)
    return out.sort_values(["time", "segmenter"], kind="stable").reset_index(drop=True)


# -- plots --------------------------------------------------------------------------------------


def _figure(width: float = 6.4, height: float = 3.2) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _present(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c in frame and frame[c].notna().any()]


def plot_by_segmenter(summary: pd.DataFrame) -> bytes | None:
    """Grouped bars: mean score per segmenter (the :data:`SCORES` that have data, else
    ``fg_fraction``). PNG bytes, or ``None`` when there is nothing to draw."""
    scores = _present(summary, SCORES) or _present(summary, ["fg_fraction"])
    if summary.empty or not scores:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    n = len(scores)
    width = 0.8 / n
    x = list(range(len(summary)))
    for i, column in enumerate(scores):
        offsets = [v - 0.4 + width * (i + 0.5) for v in x]
        ax.bar(offsets, summary[column].fillna(0.0), width=width, label=_LABELS.get(column, column))
    ax.set_xticks(x, [str(s) for s in summary["segmenter"]])
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean over images")
    ax.set_title("scores per segmenter")
    fig.legend(fontsize="small", loc="outside right upper")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_over_time(over_time: pd.DataFrame) -> bytes | None:
    """One line per segmenter: mean ``fg_iou`` per run against the run's time (``fg_fraction``
    when no run has ground truth). PNG bytes, or ``None`` when there is nothing to draw."""
    candidates = _present(over_time, ["fg_iou"]) or _present(over_time, ["fg_fraction"])
    if over_time.empty or not candidates:
        return None
    score = candidates[0]
    from matplotlib import dates as mdates

    fig = _figure()
    ax = fig.add_subplot()
    all_times = []
    for segmenter, group in over_time.groupby("segmenter", sort=True):
        times = [t.to_pydatetime() for t in pd.to_datetime(group["time"], utc=True)]
        all_times += times
        ax.plot(times, group[score], marker="o", label=str(segmenter))
    # a span of at least a day, so one run (or runs minutes apart) is not spread over years
    lo, hi = min(all_times), max(all_times)
    pad = max((hi - lo) * 0.05, dt.timedelta(hours=12) - (hi - lo) / 2)
    ax.set_xlim(lo - pad, hi + pad)  # type: ignore[arg-type]
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_ylabel(f"mean {_LABELS.get(score, score)} per run")
    ax.set_title(f"{_LABELS.get(score, score)} over time (one point per run)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.legend(fontsize="small", loc="outside right upper")
    return _png(fig)


# -- markdown -----------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return str(value).replace("|", "\\|")


def _table(frame: pd.DataFrame, columns: Sequence[str], headers: Sequence[str]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in frame[list(columns)].itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _image(alt: str, png: bytes) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def build_report(
    root: str | Path, *, last_runs: int = 20, title: str = "segflow store report"
) -> Report:
    """Read the store at ``root`` and build the :class:`Report` (``last_runs`` rows in the run table)."""
    if last_runs < 1:
        raise ValueError(f"last_runs must be >= 1, got {last_runs}")
    store = Store(root)
    metrics = store.read("metrics", columns=list(_METRIC_COLUMNS))
    runs = store.read(
        "runs", columns=["run_id", "flow_run_name", "started_at", "ended_at", "status"]
    )
    errors = store.read("errors", columns=["stage", "error_type", "config_hash", "run_id"])
    by_segmenter = segmenter_summary(metrics, errors)
    over_time = runs_over_time(metrics, runs)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"# {title}",
        f"Store `{root}` · {metrics['sha256'].nunique()} images · {len(runs)} runs · "
        f"{len(by_segmenter)} segmenters · {len(errors)} errors · generated {now}",
    ]
    plots: dict[str, bytes] = {}
    if metrics.empty:
        parts.append("The store holds no metrics yet: run `segflow run` or a deployment first.")
        return Report("\n\n".join(parts) + "\n", by_segmenter, over_time, plots)

    parts.append("## Scores per segmenter")
    parts.append(
        "Means over images (scores need ground truth; `–` where there is none). "
        "`ms/image`: median total time per image."
    )
    parts.append(
        _table(
            by_segmenter,
            ["segmenter", "images", "with_gt", "runs", "configs", *SCORES, "median_ms", "errors"],
            [
                "segmenter",
                "images",
                "with GT",
                "runs",
                "configs",
                "IoU",
                "Dice",
                "precision",
                "recall",
                "inst. F1",
                "DSB",
                "ms/image",
                "errors",
            ],
        )
    )
    bars = plot_by_segmenter(by_segmenter)
    if bars is not None:
        plots["scores_by_segmenter.png"] = bars
        parts.append(_image("scores per segmenter", bars))

    parts.append("## Over time")
    recent = over_time.tail(last_runs).iloc[::-1]
    parts.append(
        f"The {len(recent)} most recent runs, newest first (of {over_time['run_id'].nunique()})."
    )
    parts.append(
        _table(
            recent,
            [
                "time",
                "flow_run_name",
                "segmenter",
                "images",
                "fg_iou",
                "fg_dice",
                "inst_f1",
                "fg_fraction",
            ],
            ["time", "run", "segmenter", "images", "IoU", "Dice", "inst. F1", "fg fraction"],
        )
    )
    trend = plot_over_time(over_time)
    if trend is not None:
        plots["scores_over_time.png"] = trend
        parts.append(_image("scores over time", trend))

    if len(errors):
        counts = (
            errors.assign(
                stage=errors["stage"].astype(str), error_type=errors["error_type"].astype(str)
            )
            .groupby(["stage", "error_type"])
            .size()
            .sort_values(ascending=False)
            .head(10)
            .reset_index(name="rows")
        )
        parts.append("## Errors")
        parts.append(
            _table(counts, ["stage", "error_type", "rows"], ["stage", "error type", "rows"])
        )
    return Report("\n\n".join(parts) + "\n", by_segmenter, over_time, plots)


def write_report(root: str | Path, out_dir: str | Path, **options: Any) -> Path:
    """:func:`build_report`, then ``out_dir/report.md`` (self-contained) and the PNG files; returns
    the markdown's path."""
    report = build_report(root, **options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, png in report.plots.items():
        (out / name).write_bytes(png)
    path = out / "report.md"
    path.write_text(report.markdown)
    return path
