"""The ``segflow`` command: ``run``, ``demo`` and ``show``.

The CLI is the top layer and the one named exemption to the core's no-Prefect rule: it imports
the flows, lazily, inside the command functions, so ``import segflow.cli`` (and ``--help``)
never loads Prefect. Before the first Prefect import it sets, unless the user already set them:

* ``PREFECT_SERVER_ANALYTICS_ENABLED=false`` and ``DO_NOT_TRACK=1`` (no telemetry calls);
* ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120`` (the temporary server needs 10-20 s
  on a small machine, above Prefect's 20 s default margin);
* ``PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL=WARNING`` (the console shows the progress bar and
  warnings; ``--verbose`` keeps Prefect's INFO lines; the API/UI still receives every log).

On the embedded API, flow runs send no heartbeats (``tasks.runners.local_run_settings``: no one
could listen for them, and Prefect's heartbeat thread adds up to a second to every run).

Without ``PREFECT_API_URL`` flows run on Prefect's embedded ephemeral API (a temporary local
server, nothing to start). With ``PREFECT_API_URL`` set the run is recorded on that server.
Exit status: 0 when the run finished (even if some images went to ``errors``), 1 when the run
failed, or with ``--fail-on-error`` when any image failed; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["build_parser", "main"]

_ENV_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}

_DATASETS = ("metrics", "masks", "errors", "runs")


def _echo(text: str) -> None:
    """Write a line of the command's output (stdout; progress and diagnostics go to stderr)."""
    sys.stdout.write(f"{text}\n")


def _prepare_environment(*, verbose: bool) -> None:
    """Set the Prefect defaults above (only those the user has not set). Before importing prefect."""
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


# --------------------------------------------------------------------------------------------
# progress bar
# --------------------------------------------------------------------------------------------


class _ProgressBar(logging.Handler):
    """Draws ``segflow.progress`` events (``extra``: segflow_done / segflow_total) on a stream.

    On a terminal the bar is redrawn in place; otherwise one line is written per 10 % step.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(logging.INFO)
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.started: float | None = None
        self._last_step = -1
        self.drawn = False

    def emit(self, record: logging.LogRecord) -> None:
        done = getattr(record, "segflow_done", None)
        total = getattr(record, "segflow_total", None)
        if done is None or total is None:
            return
        if done == 0 or self.started is None:
            self.started = time.monotonic()  # rate counts from the first chunk, not start-up
        frac = done / total if total else 1.0
        elapsed = time.monotonic() - (self.started or time.monotonic())
        rate = done / elapsed if elapsed > 0 else 0.0
        width = 30
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        text = f"[{bar}] {done}/{total} images {100 * frac:5.1f}% {rate:5.1f} img/s"
        if self.tty:
            self.stream.write("\r" + text)
            if done >= total:
                self.stream.write("\n")
            self.drawn = True
        else:
            step = int(frac * 10)
            if step == self._last_step:
                return
            self._last_step = step
            self.stream.write(text + "\n")
        self.stream.flush()


def _attach_progress(stream: TextIO) -> tuple[logging.Logger, _ProgressBar]:
    logger = logging.getLogger("segflow.progress")
    handler = _ProgressBar(stream)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, handler


# --------------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_summary(summary: dict[str, Any]) -> str:
    """The closing summary of ``segflow run`` (counts, mean scores, where the data is)."""
    out = summary["out"]
    lines = [
        f"segflow run {summary.get('flow_run_name') or summary.get('run_id')}: "
        f"{summary['listed']} images listed, {summary['done']} done, "
        f"{summary['skipped']} skipped (already in the store), {summary['failed']} failed",
        f"config hash {summary['config_hash']}, status {summary['status']}",
    ]
    means = summary.get("means") or {}
    if means:
        lines.append("mean scores: " + ", ".join(f"{k} {_fmt(v)}" for k, v in means.items()))
    lines.append(f"data in {out}:")
    for name in _DATASETS:
        lines.append(f"  {name:<8} {Path(out) / name}")
    overlays = Path(out) / "overlays"
    if overlays.is_dir():
        lines.append(f"  overlays {overlays}")
    if summary["failed"]:
        lines.append(
            f"failed files are listed in {Path(out) / 'errors'} (stage, error type, message)"
        )
    lines.append(
        f"query: python -c \"import pandas as pd; print(pd.read_parquet('{Path(out) / 'metrics'}').describe())\""
    )
    return "\n".join(lines)


def format_store_summary(info: dict[str, Any]) -> str:
    """``segflow show``: rows per dataset, images, configs, runs, mean scores per segmenter."""
    lines = [f"store {info['root']}"]
    for name in _DATASETS:
        lines.append(f"  {name:<8} {info['rows'][name]:>8} rows in {info['files'][name]} files")
    lines.append(
        f"{info['images']} distinct images, {info['configs']} configs, {info['runs']} runs, {info['errors']} errors"
    )
    for seg, entry in info.get("segmenters", {}).items():
        scores = ", ".join(
            f"{k} {_fmt(v)}" for k, v in entry.items() if k not in ("images", "with_ground_truth")
        )
        lines.append(
            f"  {seg}: {entry['images']} images ({entry['with_ground_truth']} with ground truth); {scores}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------


def _api_description() -> str:
    url = os.environ.get("PREFECT_API_URL")
    return f"Prefect API {url}" if url else "Prefect ephemeral API (temporary local server)"


def _execute(config: Any, *, workers: int | None, quiet: bool) -> tuple[int, dict[str, Any] | None]:
    """Run ``segment_batch`` (imported here, lazily); return (exit status, summary)."""
    from flows.segment_batch import segment_batch_for  # the CLI's Prefect-side imports
    from tasks.runners import local_run_settings

    flow_fn = segment_batch_for(config, workers=workers)
    attached = None if quiet else _attach_progress(sys.stderr)
    try:
        with local_run_settings():
            state = flow_fn(config, return_state=True)
    finally:
        if attached is not None:
            attached[0].removeHandler(attached[1])
    result = state.result(raise_on_failure=False)
    summary = result if isinstance(result, dict) else None
    if state.is_completed():
        return 0, summary
    if summary is None:
        sys.stderr.write(f"segflow: the run failed: {state.message or result}\n")
    else:
        sys.stderr.write(f"segflow: {state.message}\n")
    return 1, summary


def _config_from_args(args: argparse.Namespace) -> Any:
    from segflow.config import RunConfig, parse_set

    fields: dict[str, Any] = {
        "input": args.input,
        "out": args.out,
        "segmenter": args.segmenter,
        "segmenter_params": parse_set(args.set or []),
        "ground_truth": args.ground_truth,
        "gt_format": args.gt_format,
        "gt_ignore": args.gt_ignore,
        "tile": args.tile,
        "overlap": args.overlap,
        "blend": args.blend,
        "batch_size": args.batch_size,
        "chunk_size": args.chunk_size,
        "max_in_flight": args.max_in_flight,
        "force": args.force,
        "retry_errors": args.retry_errors,
        "write_overlays": not args.no_overlays,
        "fail_on_error": args.fail_on_error,
        "recursive": not args.no_recursive,
    }
    if args.ext:
        fields["extensions"] = tuple(args.ext)
    if args.max_pixels is not None:
        fields["max_pixels"] = args.max_pixels
    # issue 7: large images and Dask (None = the RunConfig default)
    fields["large_image"] = args.large_image
    fields["task_runner"] = args.task_runner
    fields["dask_address"] = args.dask_address
    fields["dask_workers"] = args.dask_workers
    return RunConfig(**{k: v for k, v in fields.items() if v is not None})


def _usage_error(exc: Exception) -> int:
    sys.stderr.write(f"segflow: invalid options:\n{exc}\n")
    return 2


def cmd_run(args: argparse.Namespace) -> int:
    _prepare_environment(verbose=args.verbose)
    try:
        config = _config_from_args(args)
        config.create_segmenter()  # bad segmenter parameters fail here, before any run starts
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        return _usage_error(exc)
    if config.task_runner == "dask":  # issue 7: Dask needs a real API server; say so up front
        from segflow.scale import ApiServerRequiredError, require_api_server

        try:
            require_api_server(os.environ.get("PREFECT_API_URL"))
        except ApiServerRequiredError as exc:
            return _usage_error(exc)
    if not args.quiet:
        sys.stderr.write(
            f"segflow: {config.input} -> {config.out} with {config.segmenter} ({_api_description()})\n"
        )
    status, summary = _execute(config, workers=args.workers, quiet=args.quiet)
    if summary is not None:
        _echo(format_summary(summary))
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    _prepare_environment(verbose=args.verbose)
    from segflow.config import RunConfig
    from segflow.synth import make_bad_files, make_dataset

    out = Path(args.out)
    data = out / "data"
    if not (data / "images").is_dir() or args.regenerate:
        shutil.rmtree(data, ignore_errors=True)
        sys.stderr.write(
            f"segflow demo: writing {args.n_images} synthetic images with ground truth to {data}\n"
        )
        make_dataset(data, n_images=args.n_images, size=(args.size, args.size), seed=args.seed)
        bad = make_bad_files(data / "images")
        sys.stderr.write(
            f"segflow demo: plus {len(bad)} broken files ({', '.join(bad)}) that must end up in errors\n"
        )
    config = RunConfig(
        input=str(data / "images"),
        out=str(out / "store"),
        segmenter="otsu",
        segmenter_params={"sigma": 1.0, "min_size": 20},
        ground_truth=str(data / "labels"),
        gt_format="instances",
        tile=args.tile,
        overlap=32,
        force=args.force,
    )
    sys.stderr.write(f"segflow demo: {config.input} -> {config.out} ({_api_description()})\n")
    status, summary = _execute(config, workers=None, quiet=args.quiet)
    if summary is not None:
        _echo(format_summary(summary))
        _echo(f"inspect the store: segflow show {config.out}")
    return status


def _store_root(out: str, command: str) -> Path | None:
    """The store under ``out`` (``out`` itself, or ``out/store`` as ``segflow demo`` writes it);
    None (after saying so) when ``out`` is no folder."""
    root = Path(out)
    if "://" not in out and not root.is_dir():
        sys.stderr.write(f"segflow {command}: {out} is not a folder\n")
        return None
    if (root / "store" / "metrics").is_dir() and not (root / "metrics").is_dir():
        return root / "store"
    return root


def cmd_show(args: argparse.Namespace) -> int:
    from segflow.store import Store

    store_root = _store_root(args.out, "show")
    if store_root is None:
        return 2
    info = Store(store_root).summary()
    if args.json:
        _echo(json.dumps(info, indent=2, default=str))
    else:
        _echo(format_store_summary(info))
    return 0


def cmd_coco_eval(args: argparse.Namespace) -> int:
    """COCO mask AP of each configuration in a store (see :func:`segflow.coco.mask_ap`)."""
    from segflow.coco import load_coco, mask_ap
    from segflow.store import Store

    store_root = _store_root(args.out, "coco-eval")
    if store_root is None:
        return 2
    try:
        coco = load_coco(args.annotations)
    except (FileNotFoundError, ValueError) as exc:
        return _usage_error(exc)
    store = Store(store_root)
    masks = store.read("masks")
    metrics = store.read("metrics", columns=["config_hash", "segmenter"])
    hashes = sorted(set(masks["config_hash"]))
    if args.config_hash:
        hashes = [h for h in hashes if h == args.config_hash]
    if not hashes:
        sys.stderr.write(f"segflow coco-eval: no masks rows in {store_root} to evaluate\n")
        return 1
    segmenter = dict(zip(metrics["config_hash"], metrics["segmenter"], strict=True))
    results = []
    for config_hash in hashes:
        try:
            scores = mask_ap(
                masks[masks["config_hash"] == config_hash], coco, class_agnostic=args.class_agnostic
            )
        except ValueError as exc:
            sys.stderr.write(f"segflow coco-eval: {config_hash}: {exc}\n")
            return 1
        results.append(
            {"config_hash": config_hash, "segmenter": segmenter.get(config_hash), **scores}
        )
    if args.json:
        _echo(json.dumps(results, indent=2))
        return 0
    _echo("config_hash        segmenter      images  detections  AP     AP50   AP75   AR100")
    for r in results:
        _echo(
            f"{r['config_hash']:<18} {r['segmenter']!s:<14} {r['n_images']:>6}  "
            f"{r['n_detections']:>10}  {r['AP']:.3f}  {r['AP50']:.3f}  {r['AP75']:.3f}  "
            f"{r['AR100']:.3f}"
        )
        if r["unmatched_images"]:
            _echo(f"  {len(r['unmatched_images'])} image(s) without an entry left out")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    _prepare_environment(verbose=args.verbose)
    from segflow.train import config_from_args, format_result

    try:
        config = config_from_args(args)
    except ValueError as exc:
        return _usage_error(exc)
    from flows.train_unet import train_unet
    from tasks.runners import local_run_settings

    with local_run_settings():
        state = train_unet(config, return_state=True)
    result = state.result(raise_on_failure=False)
    if not state.is_completed() or not isinstance(result, dict):
        sys.stderr.write(f"segflow train: the run failed: {state.message or result}\n")
        return 1
    _echo(format_result(result))
    return 0


# --------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _prefect_setup(**options: Any) -> dict[str, Any]:
    """``segflow setup``'s Prefect side: work pools and concurrency limits (imported lazily)."""
    from tasks.ops import setup

    return setup(**options)


def _event_sender() -> Any:
    """``segflow watch``'s Prefect side: a confirmed sender of ``segflow.batch.arrived`` events."""
    from tasks.events import EventSender

    return EventSender()


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``segflow`` (no Prefect import)."""
    parser = argparse.ArgumentParser(
        prog="segflow",
        description="Segment folders of images with Prefect; masks and metrics go to a Parquet store.",
        epilog="Without PREFECT_API_URL the runs use Prefect's ephemeral local API; set it to record "
        "runs on a server (prefect server start).",
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="{run,demo,show,coco-eval,train,server,setup,deploy,worker,watch,report}",
    )

    run = sub.add_parser(
        "run",
        help="segment every new image of a folder or URL",
        description="Segment every image under INPUT that the store does not hold yet for this "
        "configuration; write masks, metrics, errors and a runs row under OUT.",
    )
    run.add_argument("input", help="folder or fsspec URL of the images (searched recursively)")
    run.add_argument(
        "--out", required=True, help="folder of the Parquet store (created if missing)"
    )
    run.add_argument(
        "--segmenter",
        default="otsu",
        help="segmenter name (default otsu; see segflow.segmenters.available())",
    )
    run.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="segmenter parameter, repeatable (e.g. --set sigma=1 --set min_size=20)",
    )
    run.add_argument(
        "--ground-truth",
        help="folder of label images (or *.zarr label arrays) matching the images' relative "
        "paths by stem, a COCO annotation file (.json), or ome-labels:NAME for each OME-Zarr "
        "image's own labels/NAME (ome-labels: takes the first listed)",
    )
    run.add_argument(
        "--gt-format",
        choices=["binary", "instances", "classes"],
        default="binary",
        help="how label images are read (default binary)",
    )
    run.add_argument(
        "--gt-ignore",
        type=_positive,
        default=None,
        metavar="VALUE",
        help="label value no score counts (e.g. 255, PASCAL VOC's void border)",
    )
    run.add_argument(
        "--tile", type=_positive, default=512, help="tile side in pixels (default 512)"
    )
    run.add_argument("--overlap", type=int, default=64, help="tile overlap in pixels (default 64)")
    run.add_argument(
        "--blend",
        choices=["constant", "linear", "gaussian"],
        default="gaussian",
        help="tile blending (default gaussian)",
    )
    run.add_argument(
        "--batch-size", type=_positive, default=8, help="tiles per segmenter call (default 8)"
    )
    run.add_argument(
        "--chunk-size", type=_positive, default=None, help="images per task run (default 16)"
    )
    run.add_argument(
        "--max-in-flight",
        type=_positive,
        default=None,
        help="chunks in flight (default 2 x workers)",
    )
    run.add_argument(
        "--workers",
        type=_positive,
        default=None,
        help="worker threads (default: the CPUs available)",
    )
    run.add_argument(
        "--ext",
        action="append",
        help="file ending to list, repeatable (default .png .jpg .jpeg .tif .tiff .bmp)",
    )
    run.add_argument(
        "--max-pixels",
        type=_positive,
        default=None,
        help="refuse images whose header claims more pixels",
    )
    run.add_argument("--no-recursive", action="store_true", help="do not list sub-folders")
    run.add_argument(
        "--large-image",
        choices=["auto", "always", "never"],
        default=None,
        help="stream TIFF/Zarr images by window: auto (above 64 MP or --max-pixels), always, never",
    )
    run.add_argument(
        "--task-runner",
        choices=["threads", "dask"],
        default=None,
        help="run chunks on a thread pool (default) or a Dask cluster (needs PREFECT_API_URL)",
    )
    run.add_argument("--dask-address", default=None, help="tcp://host:8786 of a Dask scheduler")
    run.add_argument(
        "--dask-workers",
        type=_positive,
        default=None,
        help="worker processes of a local Dask cluster (default: the CPUs available)",
    )
    run.add_argument("--no-overlays", action="store_true", help="do not write OUT/overlays/*.png")
    run.add_argument(
        "--force", action="store_true", help="recompute images already in the store for this config"
    )
    run.add_argument(
        "--retry-errors",
        action="store_true",
        help="retry images that failed before with this config",
    )
    run.add_argument(
        "--fail-on-error",
        action="store_true",
        help="exit 1 (and mark the run failed) if any image failed",
    )
    run.add_argument(
        "-v", "--verbose", action="store_true", help="show Prefect's INFO logs on the console"
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser(
        "demo",
        help="make a synthetic dataset with ground truth and run the flow on it",
        description="Write synthetic nuclei-like images (touching and overlapping objects, noise, "
        "uneven illumination) with instance labels and a few broken files, segment them with Otsu, "
        "and print the summary.",
    )
    demo.add_argument(
        "--out", default="demo-out", help="folder for the data and the store (default demo-out)"
    )
    demo.add_argument(
        "--n-images", type=_positive, default=24, help="number of images (default 24)"
    )
    demo.add_argument(
        "--size", type=_positive, default=512, help="image side in pixels (default 512)"
    )
    demo.add_argument("--tile", type=_positive, default=256, help="tile side (default 256)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--regenerate", action="store_true", help="rewrite the synthetic data")
    demo.add_argument("--force", action="store_true", help="recompute images already in the store")
    demo.add_argument(
        "-v", "--verbose", action="store_true", help="show Prefect's INFO logs on the console"
    )
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=cmd_demo)

    show = sub.add_parser(
        "show",
        help="print a summary of a store",
        description="Rows, images, runs and mean scores of a store.",
    )
    show.add_argument("out", help="folder of the store (the --out of segflow run)")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)

    coco_eval = sub.add_parser(
        "coco-eval",
        help="COCO mask AP of a store's masks against a COCO annotation file",
        description="pycocotools' COCOeval (segm) of each configuration's masks rows: AP at IoU "
        "0.50:0.95, 0.50, 0.75 and AR at 100 detections, over the images with an entry.",
    )
    coco_eval.add_argument("out", help="folder of the store (the --out of segflow run)")
    coco_eval.add_argument("--annotations", required=True, help="COCO annotation file (.json)")
    coco_eval.add_argument("--config-hash", default=None, help="only this configuration")
    coco_eval.add_argument(
        "--class-agnostic",
        action="store_true",
        help="match masks to objects of any category (segmenters without COCO categories)",
    )
    coco_eval.add_argument("--json", action="store_true", help="print JSON")
    coco_eval.set_defaults(func=cmd_coco_eval)

    from segflow.train import add_train_arguments

    train = sub.add_parser(
        "train", help="train a U-Net on image/label folders and export it to ONNX"
    )
    add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    # operations commands (issue 6) live in segflow/ops_cli.py; their Prefect side is injected here
    from segflow import ops_cli

    ops_cli.add_commands(
        sub,
        {"prepare": _prepare_environment, "setup": _prefect_setup, "event_sender": _event_sender},
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``segflow`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        sys.stderr.write("segflow: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
