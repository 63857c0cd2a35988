"""The ``segflow`` command, run as a subprocess like a user would (each run starts Prefect's
ephemeral API, so this file holds only a few runs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from segflow.cli import build_parser, format_summary

SEGFLOW = shutil.which("segflow", path=str(Path(sys.executable).parent)) or "segflow"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A private PREFECT_HOME shared by this file's runs (no clash with other test processes)."""
    home = tmp_path_factory.mktemp("prefect-home")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    environ["PREFECT_HOME"] = str(home)
    return environ


def _segflow(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SEGFLOW, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_help_does_not_import_prefect() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from segflow.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try:\n"
        "        main(['run', '--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0\n"
        "assert '--ground-truth' in buf.getvalue() and '--fail-on-error' in buf.getvalue()\n"
        "assert 'prefect' not in sys.modules, 'the CLI must import flows lazily'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "command",
    [
        ["--help"],
        ["run", "--help"],
        ["demo", "--help"],
        ["show", "--help"],
        ["coco-eval", "--help"],
    ],
)
def test_help_exits_zero(command: list[str], env: dict[str, str], tmp_path: Path) -> None:
    out = _segflow(*command, env=env, cwd=tmp_path, timeout=60)
    assert out.returncode == 0 and "usage: segflow" in out.stdout


def test_parser_builds_typed_options() -> None:
    args = build_parser().parse_args(
        [
            "run",
            "in",
            "--out",
            "o",
            "--set",
            "sigma=1",
            "--set",
            "min_size=5",
            "--tile",
            "256",
            "--force",
            "--gt-ignore",
            "255",
        ]
    )
    assert args.gt_ignore == 255
    assert (args.input, args.out, args.set, args.tile, args.force) == (
        "in",
        "o",
        ["sigma=1", "min_size=5"],
        256,
        True,
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "in", "--out", "o", "--gt-format", "polygons"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "in", "--out", "o", "--gt-ignore", "0"])


def test_bad_options_exit_2_before_any_run(env: dict[str, str], tmp_path: Path) -> None:
    for args, needle in [
        (
            ["run", str(tmp_path), "--out", str(tmp_path / "o"), "--segmenter", "nope"],
            "available segmenters",
        ),
        (
            ["run", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "polarity=sideways"],
            "polarity",
        ),
        (["run", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "novalue"], "key=value"),
        (
            ["run", str(tmp_path), "--out", str(tmp_path / "o"), "--tile", "64", "--overlap", "64"],
            "overlap",
        ),
        (
            ["run", "https://ann:s3cr3t@data.example/in", "--out", str(tmp_path / "o")],
            "https://***@data.example/in",
        ),
    ]:
        out = _segflow(*args, env=env, cwd=tmp_path, timeout=60)
        assert out.returncode == 2, out.stderr
        assert needle in out.stderr and "s3cr3t" not in out.stderr + out.stdout
    assert not (tmp_path / "o").exists()


def test_format_summary_names_counts_scores_and_locations(tmp_path: Path) -> None:
    text = format_summary(
        {
            "run_id": "r",
            "flow_run_name": "images-1",
            "config_hash": "c1",
            "listed": 10,
            "done": 7,
            "skipped": 1,
            "failed": 2,
            "means": {"fg_iou": 0.81234},
            "out": str(tmp_path),
            "status": "completed",
        }
    )
    assert "10 images listed, 7 done, 1 skipped (already in the store), 2 failed" in text
    assert (
        "fg_iou 0.8123" in text
        and str(tmp_path / "metrics") in text
        and str(tmp_path / "errors") in text
    )


@pytest.mark.slow
def test_demo_run_rerun_fail_on_error_and_show(env: dict[str, str], tmp_path: Path) -> None:
    # demo: synthetic data + broken files, run, summary
    demo = _segflow(
        "demo",
        "--out",
        str(tmp_path / "demo"),
        "--n-images",
        "3",
        "--size",
        "128",
        env=env,
        cwd=tmp_path,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "8 images listed, 3 done, 0 skipped (already in the store), 5 failed" in demo.stdout
    assert "mean scores: fg_iou" in demo.stdout
    assert "8/8 images 100.0%" in demo.stderr  # the progress bar's last line
    store = tmp_path / "demo" / "store"
    metrics = pd.read_parquet(store / "metrics")
    assert len(metrics) == 3 and metrics["fg_iou"].notna().all()
    assert len(pd.read_parquet(store / "errors")) == 5

    # run on the demo data with --fail-on-error: finishes, stores, exits 1
    images, labels = tmp_path / "demo" / "data" / "images", tmp_path / "demo" / "data" / "labels"
    args = [
        "run",
        str(images),
        "--out",
        str(tmp_path / "out"),
        "--ground-truth",
        str(labels),
        "--gt-format",
        "instances",
    ]
    args += ["--set", "sigma=1", "--tile", "64", "--overlap", "16", "--chunk-size", "2", "-q"]
    failed = _segflow(*args, "--fail-on-error", env=env, cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert (
        "3 done" in failed.stdout
        and "5 failed" in failed.stdout
        and "status failed" in failed.stdout
    )
    assert "5 of 8 images failed" in failed.stderr

    # the same command again: nothing recomputed, everything reported as skipped, exit 0
    again = _segflow(*args, env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "8 images listed, 0 done, 8 skipped" in again.stdout
    assert len(pd.read_parquet(tmp_path / "out" / "metrics")) == 3

    shown = _segflow("show", str(tmp_path / "out"), "--json", env=env, cwd=tmp_path, timeout=60)
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert (
        info["rows"]["metrics"] == 3 and info["rows"]["errors"] == 5 and info["rows"]["runs"] == 2
    )
    assert info["segmenters"]["otsu"]["images"] == 3
    text = _segflow("show", str(tmp_path / "demo"), env=env, cwd=tmp_path, timeout=60)
    assert text.returncode == 0 and "metrics" in text.stdout and "3 distinct images" in text.stdout


def test_show_refuses_a_missing_folder(env: dict[str, str], tmp_path: Path) -> None:
    out = _segflow("show", str(tmp_path / "nothing"), env=env, cwd=tmp_path, timeout=60)
    assert out.returncode == 2 and "is not a folder" in out.stderr


def test_coco_eval_refuses_what_it_cannot_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segflow.cli import main

    assert main(["coco-eval", str(tmp_path / "nope"), "--annotations", "a.json"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["coco-eval", str(tmp_path), "--annotations", str(tmp_path / "a.json")]) == 2
    assert "COCO annotation file not found" in capsys.readouterr().err
    (tmp_path / "a.json").write_text('{"images": [], "annotations": [], "categories": []}')
    assert main(["coco-eval", str(tmp_path), "--annotations", str(tmp_path / "a.json")]) == 1
    assert "no masks rows" in capsys.readouterr().err
