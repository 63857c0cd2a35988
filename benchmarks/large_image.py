"""A 20,000 x 20,000 (400 MP) tiled TIFF segmented by ``segflow run`` in bounded memory.

1. **Generate** (in this process, bounded memory): a :class:`segflow.synth_large.NucleiField`
   of ``--size`` x ``--size`` 8-bit pixels, one nucleus per 48-px grid cell (a few empty), written
   tile by tile as a deflate-compressed tiled TIFF (256-px tiles) with two pyramid levels
   (1/4, 1/16) as SubIFDs, as whole-slide scanners store them.
2. **Baseline: read only.** A fresh process decodes every tile of the full-resolution page once
   (``segflow.io.TiffWindowReader``, 256-row full-width blocks: the reader the streamer uses).
3. **Segment through the flow.** A fresh process runs ``segflow run DIR --out STORE`` with
   default settings (images up to 64 MP, e.g. ``--size 4000``, run the same flow with
   ``large_image="always"``) (``otsu``: global threshold + 8-connected instances; 512-px tiles): the
   image is above the 64 MP switch, so it is streamed (``segflow.large``). Its own per-image
   timing (``t_total_ms`` in the metrics row, which excludes Prefect's start-up) gives the
   ``ratio`` to the read-only time; ``flow_wall_s`` includes start-up, listing and hashing.
   Read-only and segmentation runs are interleaved ``--reps`` times; medians are reported.
4. **Check against the generator.** Every mask row's box centre names one grid cell; an object
   is *recovered* when exactly one instance lies in its cell, *split* when more than one does.
   Objects crossing a 512-row strip border or a 256-px tile border are counted separately:
   none may be split.

``peak_rss_mb`` is the segmenting process's ``ru_maxrss`` (target <= 1,500 MB); the generator and
read-only processes' peaks are reported beside it.

Usage: ``python benchmarks/large_image.py [--size 20000] [--reps 1] [--workdir DIR] [--keep]``.
Develop with ``--size 4000``. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPACING = 48
RADIUS = (5.0, 12.0)
TIFF_TILE = 256
STRIP = 512  # the streamer's strip rows with default settings (max(512, tile))

# Peak RSS: VmHWM of the child's own address space (ru_maxrss would carry the parent's peak over
# fork + exec on Linux).
HWM = "int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) / 1024"

READ_SCRIPT = """
import json, sys, time
from segflow.io import TiffWindowReader
t0 = time.perf_counter()
with TiffWindowReader(sys.argv[1]) as r:
    total = 0
    for y in range(0, r.height, 256):
        block = r.read(y=y, x=0, h=min(256, r.height - y), w=r.width)
        total += int(block[::97, ::89].sum())
dt = time.perf_counter() - t0
print(json.dumps({"read_s": dt, "rss_mb": HWM}))
""".replace("HWM", HWM)

RUN_SCRIPT = """
import json, sys, time
from segflow.cli import main
t0 = time.perf_counter()
if sys.argv[3] == "cli":  # the acceptance path: segflow run DIR with default settings
    status = main(["run", sys.argv[1], "--out", sys.argv[2], "-q"])
else:  # small sizes (development): the same flow, streaming forced
    from segflow.cli import _execute, _prepare_environment
    from segflow.config import RunConfig
    _prepare_environment(verbose=False)
    config = RunConfig(input=sys.argv[1], out=sys.argv[2], large_image="always")
    status, _ = _execute(config, workers=None, quiet=True)
dt = time.perf_counter() - t0
print(json.dumps({"status": status, "flow_wall_s": dt, "rss_mb": HWM}))
""".replace("HWM", HWM)


def _child(script: str, *args: str, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, cwd=ROOT
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"child failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def check_instances(masks: Any, field: Any) -> dict[str, Any]:
    """Match mask rows to generator objects by grid cell (see the module docstring)."""
    ny, nx = field.grid
    cx = masks["bbox_x"].to_numpy() + masks["bbox_w"].to_numpy() / 2.0
    cy = masks["bbox_y"].to_numpy() + masks["bbox_h"].to_numpy() / 2.0
    r = np.floor(cy / field.spacing).astype(np.int64)
    q = np.floor(cx / field.spacing).astype(np.int64)
    inside = (r >= 0) & (r < ny) & (q >= 0) & (q < nx)
    per_cell = np.zeros(ny * nx, dtype=np.int64)
    np.add.at(per_cell, r[inside] * nx + q[inside], 1)
    objs = field.objects()
    cells = objs["id"] - 1
    hits = per_cell[cells]
    present = np.zeros(ny * nx, dtype=bool)
    present[cells] = True
    extra = int(per_cell[~present].sum()) + int((~inside).sum())
    # generator objects crossing a strip border (rows) or a TIFF tile border (rows or columns)
    top = np.floor(objs["cy"] - objs["a"]).astype(np.int64)
    bottom = np.ceil(objs["cy"] + objs["a"]).astype(np.int64)
    left = np.floor(objs["cx"] - objs["a"]).astype(np.int64)
    right = np.ceil(objs["cx"] + objs["a"]).astype(np.int64)
    strip_x = (top // STRIP) != (bottom // STRIP)
    tile_x = ((top // TIFF_TILE) != (bottom // TIFF_TILE)) | (
        (left // TIFF_TILE) != (right // TIFF_TILE)
    )
    return {
        "objects_true": int(cells.size),
        "instances": len(masks),
        "recovered": int(np.count_nonzero(hits == 1)),
        "recovered_fraction": float(np.count_nonzero(hits == 1) / max(1, cells.size)),
        "missed": int(np.count_nonzero(hits == 0)),
        "split": int(np.count_nonzero(hits > 1)),
        "false_positive_instances": extra,
        "crossing_strip_border": int(np.count_nonzero(strip_x)),
        "split_at_strip_border": int(np.count_nonzero(strip_x & (hits > 1))),
        "crossing_tile_border": int(np.count_nonzero(tile_x)),
        "split_at_tile_border": int(np.count_nonzero(tile_x & (hits > 1))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the TIFF and the store")
    args = parser.parse_args()

    import pandas as pd

    from segflow.large import DEFAULT_LARGE_PIXELS
    from segflow.synth_large import NucleiField

    work = Path(args.workdir or tempfile.mkdtemp(prefix="segflow-large-"))
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    field = NucleiField(args.size, args.size, spacing=SPACING, radius=RADIUS, seed=20)
    tif = images / f"nuclei_{args.size}.tif"
    t0 = time.perf_counter()
    if not tif.exists():
        field.write_tiff(tif, tile=TIFF_TILE, levels=(4, 16))
    gen_s = time.perf_counter() - t0
    gen_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this process
    print(
        f"generated {tif} ({tif.stat().st_size / 1e6:.0f} MB) in {gen_s:.0f} s, {field.n_objects} objects",
        flush=True,
    )

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        {
            "PREFECT_HOME": str(work / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
            "PYTHONPATH": str(ROOT),
        }
    )
    reads: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    metrics_rows: list[dict[str, Any]] = []
    masks = None
    for rep in range(args.reps):
        reads.append(_child(READ_SCRIPT, str(tif), env=env))
        print(f"rep {rep}: read only {reads[-1]}", flush=True)
        store = work / f"store-{rep}"
        shutil.rmtree(store, ignore_errors=True)
        how = "cli" if args.size * args.size > DEFAULT_LARGE_PIXELS else "forced"
        run = _child(RUN_SCRIPT, str(images), str(store), how, env=env)
        metrics = pd.read_parquet(store / "metrics")
        if run["status"] != 0 or len(metrics) != 1:
            errors = pd.read_parquet(store / "errors") if (store / "errors").exists() else None
            raise RuntimeError(f"segflow run failed: {run}, errors: {errors}")
        row = metrics.iloc[0].to_dict()
        metrics_rows.append(row)
        runs.append(run)
        print(f"rep {rep}: segflow run {run}, image {row['t_total_ms'] / 1000:.1f} s", flush=True)
        if rep == args.reps - 1:
            masks = pd.read_parquet(
                store / "masks", columns=["bbox_x", "bbox_y", "bbox_w", "bbox_h", "area"]
            )
        if not args.keep:
            shutil.rmtree(store, ignore_errors=True)

    read_s = statistics.median(r["read_s"] for r in reads)
    image_s = statistics.median(r["t_total_ms"] / 1000 for r in metrics_rows)
    assert masks is not None
    check = check_instances(masks, field)
    result = {
        "benchmark": "large_image",
        "size": [args.size, args.size],
        "megapixels": args.size * args.size / 1e6,
        "tiff_mb": round(tif.stat().st_size / 1e6, 1),
        "reps": args.reps,
        "generate_s": round(gen_s, 1),
        "generate_peak_rss_mb": round(gen_rss, 1),
        "read_only_s": round(read_s, 2),
        "read_only_peak_rss_mb": round(max(r["rss_mb"] for r in reads), 1),
        "segment_image_s": round(image_s, 2),
        "ratio": round(image_s / read_s, 2),
        "flow_wall_s": round(statistics.median(r["flow_wall_s"] for r in runs), 1),
        "peak_rss_mb": round(max(r["rss_mb"] for r in runs), 1),
        "rss_target_mb": 1500,
        "n_instances_row": int(metrics_rows[-1]["n_instances"]),
        **check,
        "ok": bool(
            check["recovered_fraction"] >= 0.99
            and check["split_at_strip_border"] == 0
            and check["split_at_tile_border"] == 0
            and max(r["rss_mb"] for r in runs) <= 1500
        ),
    }
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
