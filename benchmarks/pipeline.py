"""segment_batch (Otsu) against the classic scikit-image tutorial loop, in one process.

Baseline, as the tutorials write it: ``skimage.io.imread`` -> ``filters.gaussian(sigma=1)`` ->
``threshold_otsu`` -> ``remove_small_objects`` -> ``measure.label`` -> one COCO RLE per object
from its full-size mask (``pycocotools.mask.encode(labels == k)``) -> one Parquet write at the end.

Pipeline: ``flows.segment_batch.segment_batch`` with ``otsu`` set to the same steps (sigma 1,
bright objects, min_size 20, 8-connected instances), default tiling (512 px tiles, 64 px overlap,
gaussian blend), default chunking and threads, on a fresh store each repetition; it also hashes,
computes the foreground fraction and writes metrics, masks and runs datasets.

Measured (interleaved repetitions, medians):

* ``time_ratio``: pipeline wall time / baseline wall time for the same images, with Prefect's
  start-up (import + ephemeral API server) excluded: a warm-up flow runs first; both sides read
  the same files from the page cache. ``time_ratio_1_worker`` runs the pipeline with one worker
  thread (the baseline's parallelism); ``cpu_ratio`` compares process CPU time.
* ``startup_s``: importing the flow module plus the first (empty) flow run in this process.
* ``mp_per_s_ratio``: pipeline megapixels/s over PNG-decode-only megapixels/s (``cv2.imdecode``
  of the same bytes, one thread).
* ``task_runs_per_image``: task runs the API recorded for one pipeline run / images.
* ``peak_rss_mb``: ``ru_maxrss`` of a fresh process running the flow on 200 and on 2,000
  images (the 2,000 are the 200 repeated with a distinct ``tEXt`` chunk each, so every file has
  its own sha256); ``rss_ratio`` = 2,000 / 200.

Usage: ``python benchmarks/pipeline.py [--n 200] [--big 2000] [--reps 3] [--size 1024]``;
``--chunk-sweep`` times chunk sizes 1..32 on 64 images (how the default chunk size was chosen).
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

MIN_SIZE = 20
SEGMENTER_PARAMS = {
    "sigma": 1.0,
    "min_size": MIN_SIZE,
    "polarity": "bright",
    "connectivity": 2,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def with_text_chunk(png: bytes, text: str) -> bytes:
    """The same PNG (same pixels) with a ``tEXt`` chunk before IEND: new bytes, new sha256."""
    iend = png.rindex(b"IEND") - 4
    return png[:iend] + _png_chunk(b"tEXt", b"segflow\x00" + text.encode()) + png[iend:]


def make_images(folder: Path, n: int, size: int) -> list[Path]:
    from segflow.synth import make_dataset

    make_dataset(folder, n_images=n, size=(size, size), seed=7, n_objects=(100, 250))
    shutil.rmtree(folder / "labels")
    return sorted((folder / "images").glob("*.png"))


def replicate(src: list[Path], dst: Path, n: int) -> None:
    """``n`` distinct files from ``src`` (cycled), each with its own tEXt chunk."""
    dst.mkdir(parents=True, exist_ok=True)
    blobs = [p.read_bytes() for p in src]
    for i in range(n):
        (dst / f"img_{i:05d}.png").write_bytes(with_text_chunk(blobs[i % len(blobs)], f"copy {i}"))


# ---------------------------------------------------------------------------------------------
# the two contenders
# ---------------------------------------------------------------------------------------------


def baseline(paths: list[Path], out: Path) -> int:
    """The plain tutorial loop; returns the number of object rows written."""
    import pandas as pd
    from pycocotools import mask as mask_util
    from skimage import filters, io, measure, morphology

    rows = []
    for path in paths:
        image = io.imread(path)
        smooth = filters.gaussian(image, sigma=1)
        mask = smooth > filters.threshold_otsu(smooth)
        mask = morphology.remove_small_objects(mask, max_size=MIN_SIZE - 1)
        labels = measure.label(mask)
        for region in measure.regionprops(labels):
            rle = mask_util.encode(np.asfortranarray(labels == region.label, dtype=np.uint8))
            y0, x0, y1, x1 = region.bbox
            rows.append(
                {
                    "image": path.name,
                    "instance_id": region.label,
                    "area": int(region.area),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "rle_counts": rle["counts"].decode(),
                }
            )
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(out / "objects.parquet")
    return len(rows)


def pipeline(
    images: Path, out: Path, *, workers: int | None = None, chunk_size: int | None = None
) -> dict[str, Any]:
    from flows.segment_batch import segment_batch
    from segflow.config import RunConfig

    fields: dict[str, Any] = {"input": str(images), "out": str(out), "segmenter": "otsu"}
    fields["segmenter_params"] = SEGMENTER_PARAMS
    if chunk_size is not None:
        fields["chunk_size"] = chunk_size
    flow_fn = segment_batch
    if workers is not None:
        from prefect.task_runners import ThreadPoolTaskRunner

        flow_fn = segment_batch.with_options(
            task_runner=ThreadPoolTaskRunner(max_workers=workers)  # type: ignore[arg-type]
        )
    from tasks.runners import local_run_settings

    with local_run_settings():  # as the CLI runs it
        state = flow_fn(RunConfig(**fields), return_state=True)
    summary = state.result()
    if not isinstance(summary, dict) or summary["failed"]:
        raise RuntimeError(f"pipeline run did not process every image: {summary}")
    return summary


def count_task_runs(run_id: str, *, expect_at_least: int) -> int:
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flt = FlowRunFilter(id=FlowRunFilterId(any_=[UUID(run_id)]))
    deadline = time.monotonic() + 30
    n = 0
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            n, page = 0, 200
            while True:  # the API returns at most 200 per call
                got = len(client.read_task_runs(flow_run_filter=flt, limit=page, offset=n))
                n += got
                if got < page:
                    break
            if n >= expect_at_least:
                break
            time.sleep(0.5)
    return n


def decode_only(paths: list[Path]) -> float:
    blobs = [p.read_bytes() for p in paths]
    t0 = time.perf_counter()
    for b in blobs:
        cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED)
    return time.perf_counter() - t0


def warm_up() -> float:
    t0 = time.perf_counter()
    from prefect import flow

    import flows.segment_batch  # noqa: F401

    @flow(name="segflow-benchmark-warm-up", persist_result=False)
    def _warm() -> int:
        return 1

    _warm()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# modes
# ---------------------------------------------------------------------------------------------


def _vm_hwm_mb() -> float:
    """Peak RSS of this process image (``VmHWM``; unlike ``ru_maxrss`` it is reset by exec, so a
    child does not inherit its parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(images: Path, out: Path) -> None:
    """Run the flow once in this fresh process; print peak RSS (MB) and timings as JSON."""
    import threading

    import psutil

    me = psutil.Process()
    server_peak = 0.0
    run_peak = 0.0
    sampling_run = threading.Event()
    stop = threading.Event()

    def sample() -> None:
        nonlocal server_peak, run_peak
        while not stop.wait(0.25):
            try:
                total = sum(c.memory_info().rss for c in me.children(recursive=True))
                own = me.memory_info().rss
            except psutil.Error:
                continue
            server_peak = max(server_peak, total / 2**20)
            if sampling_run.is_set():
                run_peak = max(run_peak, own / 2**20)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    startup = warm_up()
    rss_after_startup = me.memory_info().rss / 2**20
    sampling_run.set()
    t0 = time.perf_counter()
    summary = pipeline(images, out)
    wall = time.perf_counter() - t0
    stop.set()
    print(
        json.dumps(
            {
                "images": summary["done"],
                "wall_s": wall,
                "startup_s": startup,
                "peak_rss_mb": _vm_hwm_mb(),
                "rss_after_startup_mb": rss_after_startup,
                "run_peak_rss_sampled_mb": run_peak,
                "rss_at_end_mb": me.memory_info().rss / 2**20,
                "server_peak_rss_mb": server_peak,
            }
        )
    )


def run_rss(images: Path, out: Path) -> dict[str, Any]:
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(images), str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"RSS child failed:\n{proc.stderr[-4000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def rss_pair(paths: list[Path], work: Path, n_big: int) -> dict[str, Any]:
    """Peak RSS of a fresh process running the flow on ``paths`` and on ``n_big`` distinct copies."""
    big = work / "big"
    replicate(paths, big, n_big)
    log(f"{n_big} distinct files written; RSS runs in fresh processes")
    small = run_rss(paths[0].parent, work / "rss-small")
    log(f"RSS {len(paths)}: {small}")
    large = run_rss(big, work / "rss-big")
    log(f"RSS {n_big}: {large}")
    ns, nl = str(small["images"]), str(large["images"])
    keys = ("peak_rss_mb", "run_peak_rss_sampled_mb", "rss_after_startup_mb", "server_peak_rss_mb")
    out: dict[str, Any] = {k: {ns: small[k], nl: large[k]} for k in keys}
    out["rss_ratio"] = large["peak_rss_mb"] / small["peak_rss_mb"]
    out["big_run_s_per_image"] = large["wall_s"] / large["images"]
    return out


def chunk_sweep(paths: list[Path], work: Path, sizes: list[int]) -> dict[str, Any]:
    sub = work / "sweep-images"
    sub.mkdir()
    for p in paths:
        os.link(p, sub / p.name)
    results: dict[str, Any] = {}
    for rep in range(2):
        for cs in sizes if rep == 0 else sizes[::-1]:
            out = work / f"sweep-out-{cs}-{rep}"
            t0 = time.perf_counter()
            summary = pipeline(sub, out, chunk_size=cs)
            wall = time.perf_counter() - t0
            runs = count_task_runs(summary["run_id"], expect_at_least=-(-len(paths) // cs))
            results.setdefault(str(cs), []).append({"wall_s": wall, "task_runs": runs})
            shutil.rmtree(out)
            log(f"chunk {cs}: {wall:.1f} s, {runs} task runs")
    return {
        cs: {
            "ms_per_image": 1000 * statistics.median(r["wall_s"] for r in v) / len(paths),
            "task_runs": v[0]["task_runs"],
        }
        for cs, v in results.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--big", type=int, default=2000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--work", default=None, help="work folder (default: a temporary folder, removed)"
    )
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--chunk-sweep", action="store_true")
    ap.add_argument("--rss-only", action="store_true", help="only the RSS runs (200 vs 2,000)")
    ap.add_argument("--rss-child", nargs=2, metavar=("IMAGES", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(Path(args.rss_child[0]), Path(args.rss_child[1]))
        return

    work = Path(args.work or tempfile.mkdtemp(prefix="segflow-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        paths = make_images(work / "data", args.n, args.size)
        images = work / "data" / "images"
        log(f"{len(paths)} images of {args.size}x{args.size} in {time.perf_counter() - t0:.0f} s")
        megapixels = len(paths) * args.size * args.size / 1e6
        startup = warm_up()
        log(f"Prefect start-up (import + first flow run): {startup:.1f} s")

        if args.rss_only:
            print(json.dumps(rss_pair(paths, work, args.big)))
            return
        if args.chunk_sweep:
            sweep = chunk_sweep(paths[:64], work, [1, 2, 4, 8, 16, 32])
            print(json.dumps({"chunk_sweep": sweep}))
            return

        base_t: list[float] = []
        base_cpu: list[float] = []
        pipe_t: list[float] = []
        pipe_cpu: list[float] = []
        pipe1_t: list[float] = []
        dec_t: list[float] = []
        last_summary: dict[str, Any] = {}
        for rep in range(args.reps):
            order = ["base", "pipe", "pipe1"] if rep % 2 == 0 else ["pipe1", "pipe", "base"]
            for which in order:
                out = work / f"out-{which}-{rep}"
                c0, w0 = time.process_time(), time.perf_counter()
                if which == "base":
                    n_rows = baseline(paths, out)
                elif which == "pipe":
                    last_summary = pipeline(images, out)
                else:
                    pipeline(images, out, workers=1)
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                {"base": base_t, "pipe": pipe_t, "pipe1": pipe1_t}[which].append(wall)
                if which == "base":
                    base_cpu.append(cpu)
                elif which == "pipe":
                    pipe_cpu.append(cpu)
                if which != "pipe" or rep < args.reps - 1:
                    shutil.rmtree(out)
                log(f"rep {rep} {which}: {wall:.1f} s wall, {cpu:.1f} s CPU")
            dec_t.append(decode_only(paths))

        from segflow.store import Store

        store = Store(work / f"out-pipe-{args.reps - 1}")
        n_masks = len(store.read("masks", columns=["image_id"]))
        task_runs = count_task_runs(last_summary["run_id"], expect_at_least=-(-len(paths) // 8) + 5)
        med = statistics.median
        stage_ms = store.read("metrics")[
            ["t_read_ms", "t_preprocess_ms", "t_segment_ms", "t_evaluate_ms", "t_total_ms"]
        ]
        result: dict[str, Any] = {
            "benchmark": "pipeline",
            "images": len(paths),
            "size": args.size,
            "reps": args.reps,
            "cpus": len(os.sched_getaffinity(0)),
            "baseline_s": med(base_t),
            "pipeline_s": med(pipe_t),
            "pipeline_1_worker_s": med(pipe1_t),
            "time_ratio": med(pipe_t) / med(base_t),
            "time_ratio_1_worker": med(pipe1_t) / med(base_t),
            "cpu_ratio": med(pipe_cpu) / med(base_cpu),
            "startup_s": startup,
            "pipeline_mp_per_s": megapixels / med(pipe_t),
            "baseline_mp_per_s": megapixels / med(base_t),
            "decode_mp_per_s": megapixels / med(dec_t),
            "mp_per_s_ratio": (megapixels / med(pipe_t)) / (megapixels / med(dec_t)),
            "task_runs": task_runs,
            "task_runs_per_image": task_runs / len(paths),
            "objects_baseline": n_rows,
            "objects_pipeline": n_masks,
            "stage_ms_median": {c: float(stage_ms[c].median()) for c in stage_ms.columns},
        }
        if not args.skip_rss:
            result.update(rss_pair(paths, work, args.big))
        result["targets_met"] = {
            "time_ratio<=1.15": result["time_ratio"] <= 1.15,
            "mp_per_s_ratio>=0.5": result["mp_per_s_ratio"] >= 0.5,
            **({"rss_ratio<=1.3": result["rss_ratio"] <= 1.3} if "rss_ratio" in result else {}),
        }
        print(json.dumps(result))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
