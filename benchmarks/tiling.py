"""segflow.tiling.predict_tiled vs MONAI's sliding_window_inference, side by side.

Same image (3 x 4096 x 4096 float32), tile 512, overlap 64 px (MONAI: overlap=0.125, which
gives the same window starts), gaussian blending (sigma = 0.125 * tile on both sides), batch 8,
``torch.set_num_threads(2)``.

The predictor is the same cheap pointwise function for both, so the comparison measures the
tiling machinery (gather windows, run predictor, blend, normalise):

* ``segflow``: ``predict_tiled(image, predict_np, ...)`` (main thread + one merge thread). A
  row of the grid holds 9 windows, so segflow's batches are 5 + 4 windows of one row each, handed
  to the predictor as read-only views of the image (no gather copy); MONAI copies 8 windows per
  batch into a new tensor;
* ``monai``: ``sliding_window_inference`` with ``predict_np`` wrapped zero-copy
  (``torch.from_numpy(predict_np(t.numpy()))``): identical work per tile, torch with 2 threads;
* ``monai_torch_op``: MONAI with the same operation written in torch;
* ``monai_1thread``: as ``monai`` but with ``torch.set_num_threads(1)`` during the call. torch's
  thread pool suffers badly when the machine is shared (its 2 threads wait on each other), so
  this is MONAI's most robust time on a busy machine; the ratio against it is reported too.

Timings: interleaved repetitions (the order rotates each round), one warm-up each, medians of
wall time (and of process CPU time, all threads, for context). The 1-minute load average before
and after is reported: on a shared 2-core machine the wall times depend on it.
Peak memory: each variant once more in a fresh child process; the figure is the process's peak
RSS during the call minus its RSS just before (the peak mark is reset through
``/proc/self/clear_refs``), i.e. memory beyond the input image, output included.
Accuracy: max |difference| to the untiled prediction (exact for segflow by construction), and
between segflow and MONAI for the pointwise predictor and for a non-pointwise one (tile mean),
where only blending differences show.

Run: ``.venv/bin/python benchmarks/tiling.py [--reps 7] [--size 4096]``. The last line printed is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

try:
    from segflow.tiling import predict_tiled
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from segflow.tiling import predict_tiled

TILE = 512
OVERLAP = 64
BATCH = 8
CHANNELS = 3
TORCH_THREADS = 2
VARIANTS = ("segflow", "monai", "monai_torch_op", "monai_1thread")


def predict_np(batch: np.ndarray) -> np.ndarray:
    """Pointwise two-class scores: (N, 3, t, t) float32 -> (N, 2, t, t) float32."""
    fg = batch[:, :1] * 0.5 + 0.25
    return np.concatenate([1.0 - fg, fg], axis=1)


def predict_torch(batch: torch.Tensor) -> torch.Tensor:
    """``predict_np`` written in torch."""
    fg = batch[:, :1] * 0.5 + 0.25
    return torch.cat([1.0 - fg, fg], dim=1)


def tile_mean_np(batch: np.ndarray) -> np.ndarray:
    """Not pointwise: each tile predicts its own per-channel mean (blending differences show)."""
    means = batch[:, :2].mean(axis=(2, 3), keepdims=True, dtype=np.float64).astype(np.float32)
    return np.broadcast_to(means, (*batch.shape[:1], 2, *batch.shape[2:])).copy()


def make_image(size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((CHANNELS, size, size), dtype=np.float32)


def run_segflow(image: np.ndarray, predictor: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return predict_tiled(
        image, predictor, tile=TILE, overlap=OVERLAP, blend="gaussian", batch_size=BATCH
    )


def run_monai(image: np.ndarray, predictor: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    def wrapped(t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(predictor(t.numpy()))

    return _monai(image, wrapped)


def _monai(image: np.ndarray, predictor: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    with torch.no_grad():
        out = sliding_window_inference(
            torch.from_numpy(image)[None],
            roi_size=(TILE, TILE),
            sw_batch_size=BATCH,
            predictor=predictor,
            overlap=OVERLAP / TILE,
            mode="gaussian",
            sigma_scale=0.125,
        )
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"expected a tensor from MONAI, got {type(out)}")
    return out[0].numpy()


def run_variant(name: str, image: np.ndarray) -> np.ndarray:
    if name == "segflow":
        return run_segflow(image, predict_np)
    if name == "monai":
        return run_monai(image, predict_np)
    if name == "monai_torch_op":
        return _monai(image, predict_torch)
    if name == "monai_1thread":
        torch.set_num_threads(1)
        try:
            return run_monai(image, predict_np)
        finally:
            torch.set_num_threads(TORCH_THREADS)
    raise ValueError(f"variant must be one of {VARIANTS}, got {name!r}")


def _status_mb(key: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MiB (Linux ``/proc/self/status``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the peak-RSS mark (``echo 5 > /proc/self/clear_refs``); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


def child_peak(name: str, size: int) -> None:
    """Child process: print the peak-RSS growth (MiB) of one call of variant ``name``."""
    torch.set_num_threads(TORCH_THREADS)
    image = make_image(size)
    run_variant(name, image[:, :TILE, :TILE].copy())  # import/initialise code paths first
    reset = _reset_peak()
    before = _status_mb("VmRSS") if reset else _status_mb("VmHWM")
    out = run_variant(name, image)
    growth = _status_mb("VmHWM") - before
    print(
        json.dumps(
            {
                "variant": name,
                "peak_growth_mb": growth,
                "out_mb": out.nbytes / 2**20,
                "exact": reset,
            }
        )
    )


def peak_memory(size: int) -> dict[str, dict[str, float]]:
    result = {}
    for name in VARIANTS:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", name, "--size", str(size)],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        result[name] = {
            "peak_growth_mb": round(row["peak_growth_mb"], 1),
            "output_mb": round(row["out_mb"], 1),
            "peak_reset_supported": row["exact"],
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--child", choices=VARIANTS)
    args = parser.parse_args()
    if args.child:
        child_peak(args.child, args.size)
        return

    torch.set_num_threads(TORCH_THREADS)
    image = make_image(args.size)
    untiled = predict_np(image[None])[0]
    load_before = os.getloadavg()[0]

    outputs = {name: run_variant(name, image) for name in VARIANTS}  # warm-up + outputs
    wall: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for rep in range(args.reps):
        shift = rep % len(VARIANTS)
        for name in VARIANTS[shift:] + VARIANTS[:shift]:
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            run_variant(name, image)
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
        print(
            f"rep {rep}: " + ", ".join(f"{n} {wall[n][-1]:.3f}s" for n in VARIANTS),
            file=sys.stderr,
        )
    load_after = os.getloadavg()[0]

    def max_diff(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))

    nonpointwise_segflow = run_segflow(image, tile_mean_np)
    nonpointwise_monai = run_monai(image, tile_mean_np)
    med = {name: statistics.median(wall[name]) for name in VARIANTS}
    med_cpu = {name: statistics.median(cpu[name]) for name in VARIANTS}
    ratio = med["segflow"] / med["monai"]
    report = {
        "benchmark": "tiling",
        "image_shape": list(image.shape),
        "output_shape": list(outputs["segflow"].shape),
        "tile": TILE,
        "overlap_px": OVERLAP,
        "monai_overlap": OVERLAP / TILE,
        "blend": "gaussian",
        "batch_size": BATCH,
        "torch_threads": TORCH_THREADS,
        "reps": args.reps,
        "load_avg_1min_before_after": [round(load_before, 2), round(load_after, 2)],
        "wall_s_median": {name: round(med[name], 4) for name in VARIANTS},
        "cpu_s_median": {name: round(med_cpu[name], 4) for name in VARIANTS},
        "ratio_segflow_over_monai": round(ratio, 3),
        "ratio_segflow_over_monai_torch_op": round(med["segflow"] / med["monai_torch_op"], 3),
        "ratio_segflow_over_monai_1thread": round(med["segflow"] / med["monai_1thread"], 3),
        "target_ratio": 0.7,
        "meets_target": ratio <= 0.7,
        "wall_s": {name: [round(t, 4) for t in wall[name]] for name in VARIANTS},
        "max_abs_diff_segflow_vs_untiled": max_diff(outputs["segflow"], untiled),
        "max_abs_diff_monai_vs_untiled": max_diff(outputs["monai"], untiled),
        "max_abs_diff_segflow_vs_monai": max_diff(outputs["segflow"], outputs["monai"]),
        "segflow_equals_untiled_bitwise": bool(np.array_equal(outputs["segflow"], untiled)),
        "nonpointwise_max_abs_diff_segflow_vs_monai": max_diff(
            nonpointwise_segflow, nonpointwise_monai
        ),
        "peak_memory": peak_memory(args.size),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
