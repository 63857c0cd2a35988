"""The ``unet`` backend: tiled throughput vs the raw forward pass; torch vs ONNX Runtime.

Model: segflow's training defaults (``TrainConfig``: smp ``Unet``, ``resnet18`` encoder, depth
4, decoder 64, 32, 16, 16, 1 input channel, foreground + boundary heads; the shipped
``models/nuclei/nuclei.onnx`` has the same encoder and a wider decoder, 128, 64, 32, 16) with
random weights (``torch.manual_seed(0)``, no downloads), built by ``segflow.train._build`` /
``_meta_for`` as training builds it, saved with ``save_model_dir`` and exported with
``export_onnx`` into a temporary folder. Both backends load it from there as the pipeline
would: ``segmenters.create("unet", ...)`` and ``segmenters.create("nuclei", model_path=...)``.

Image: 2048 x 2048 grey float32 (seeded noise plus bright disks). With tile 512 and overlap 64
(``segment_image``'s defaults; ``nuclei``'s tile 512 / halo 32 gives the same 5 x 5 windows)
that is 25 windows, 1.56 times the image's pixels: big enough that the tiler's blending, the
batching and the copies all show, small enough for a 2-core machine. Batch 8 tiles (the
default of ``segment_image``; ``nuclei`` and the raw ONNX Runtime side get the same).

Variants (all on the same prepared pixels: ``UnetSegmenter.prepare`` of the image, i.e.
percentile normalisation and auto-inversion fitted on the whole image):

* ``raw_torch``: the 25 windows gathered beforehand into one ``(25, 1, 512, 512)`` tensor, fed
  8 at a time straight to the model (``segmenter.module``: the smp model plus the sigmoid that
  is part of the exported graph too) under ``torch.inference_mode``; outputs kept, not copied
  back to numpy. No tiling machinery at all.
* ``tiled_torch``: ``segmenter.predict_tiled(prepared, ...)``, exactly the call ``segment_image``
  makes for this backend: on the CPU ``tiling.predict_tiled`` over ``segmenter.predict`` (gather
  windows, predict, gaussian blend); on CUDA ``predict_tiled_on_device`` (windows cut and
  blended on the GPU, one copy back). On CUDA ``tiled_torch_host`` is the numpy tiler there,
  for comparison.
* ``tiled_torch_pageable`` (CUDA): ``tiled_torch`` with the result copied back through pageable
  memory instead of a pinned buffer (``pinned_result_speedup`` in the report).
* ``segment_unet``: ``inference.segment_image`` end to end (prepare, tiled predict, argmax;
  ``instances=False`` so the watershed of a random model's output does not dominate).
* ``raw_torch_batch1``: as ``raw_torch`` one window per call (context: on the CPU a batch of 8
  512 x 512 windows is slower per window than single windows, see the report's ratio).
* ``raw_ort``: the same 25 windows through an ONNX Runtime session on the exported file, with
  the options the ``onnx``/``nuclei`` backends use (intra-op threads as torch, inter-op 1).
* ``segment_nuclei``: ``segment_image`` with the ``nuclei`` segmenter on the exported file
  (``instances=False``): ONNX Runtime, halo-cropped windows instead of blending.
* ``nuclei_shipped``: ``segment_image`` with the shipped ``models/nuclei/nuclei.onnx``, default
  options (instances on), for MP/s of what ``--segmenter nuclei`` really does.

On CUDA (``--device cuda``, or ``auto`` with a GPU) the torch variants run on the GPU in float32
(``amp=False``) and again as ``*_amp`` with float16 autocast and ``channels_last`` (what the
backend does by default there); the torch-vs-ONNX comparison then adds ``raw_torch_cpu`` and
``segment_unet_cpu`` so that it stays a CPU-vs-CPU comparison (ONNX Runtime always runs on the
CPU here).

Ratios: ``tiled_over_raw_throughput = t(raw_torch) / t(tiled_torch)`` (throughput of the tiled
path relative to the raw forward pass; target >= 0.8), the same for ``segment_unet``, and
``ort_over_torch_time`` = t(ONNX Runtime) / t(torch) for the raw windows and for
``segment_image``. Accuracy: max |difference| between torch and ONNX Runtime outputs on the same
windows (float32 rounding only), between ``segment_unet`` and ``segment_nuclei``
probabilities (adds blending vs halo cropping), and between the tiled and raw torch outputs on
the pixels only one window covers (there blending must give that window's output).

Threads: ``torch.set_num_threads(--threads)`` and ONNX Runtime intra-op ``--threads`` on both
sides (default 1: the ``segflow`` CLI runs each worker with ``OMP_NUM_THREADS=1``, and on this
shared 2-core machine a 2-thread pool stalls whenever the other core is busy). ``predict_tiled``
merges batch ``i`` in one helper thread while batch ``i + 1`` is predicted; that thread is part
of the tiled path and is left as it is.

Timings: one warm-up of every variant, then ``--reps`` interleaved rounds (the order rotates each
round), medians of wall time and of process CPU time; the 1-minute load average before and after
is reported. Peak memory: each variant once more in a fresh child process (after a warm-up on a
512 x 512 crop); the figure is the peak RSS during the call minus the RSS just before (peak mark
reset through ``/proc/self/clear_refs``), i.e. memory beyond the image, prepared input and
gathered windows; on CUDA also ``torch.cuda.max_memory_allocated`` growth.

``--profile`` prints where ``tiled_torch``'s time goes (model, gather, merge, copies) and the
raw forward pass's time per window for batch sizes 1, 2, 4 and 8.

Run: ``.venv/bin/python benchmarks/models.py [--reps 5] [--size 2048] [--threads 1]
[--device auto]``. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

try:
    import segflow  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segflow import segmenters, tiling
from segflow.inference import segment_image
from segflow.segmenters import _torch
from segflow.segmenters.nuclei import default_model_path
from segflow.segmenters.torch_unet import export_onnx, save_model_dir
from segflow.train import TrainConfig, _build, _meta_for

TILE = 512
OVERLAP = 64
HALO = OVERLAP // 2
BATCH = 8
BLEND = "gaussian"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# model, image, variants
# ---------------------------------------------------------------------------------------------


def make_model_files(folder: Path) -> tuple[Path, Path]:
    """Random-weight nuclei-architecture U-Net -> ``folder/ckpt`` (torch) and ``folder/model.onnx``."""
    config = TrainConfig(images=str(folder), labels=str(folder), out=str(folder))
    meta = _meta_for(config, [])
    torch.manual_seed(0)
    model = _build(config, meta).eval()
    ckpt = save_model_dir(model, folder / "ckpt", meta=meta)
    onnx_path = export_onnx(model, folder / "model.onnx", meta=meta)
    return ckpt, onnx_path


def make_image(size: int) -> np.ndarray:
    """(1, size, size) float32 in [0, 1]: dim noisy background with bright disks (nuclei-like)."""
    rng = np.random.default_rng(0)
    img = 0.1 + 0.05 * rng.standard_normal((size, size)).astype(np.float32)
    yy, xx = np.ogrid[:size, :size]
    for _ in range(size * size // 4000):
        cy, cx = rng.integers(0, size, 2)
        r = rng.uniform(5, 14)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += rng.uniform(0.3, 0.7)
    return np.clip(img, 0.0, 1.0)[None]


@dataclass
class Context:
    """Everything the variants share: segmenters, the image and its prepared windows."""

    device: torch.device
    threads: int
    ckpt: Path
    onnx_path: Path
    image: np.ndarray
    unet: Any = None
    unet_amp: Any = None
    unet_cpu: Any = None
    nuclei: Any = None
    shipped: Any = None
    session: Any = None
    prepared: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    windows: list[tiling.Window] = field(default_factory=list)
    tiles: torch.Tensor = field(default_factory=lambda: torch.zeros(0))


def build_context(
    *, device: torch.device, threads: int, ckpt: Path, onnx_path: Path, image: np.ndarray
) -> Context:
    ctx = Context(device=device, threads=threads, ckpt=ckpt, onnx_path=onnx_path, image=image)
    common = {"model_path": str(ckpt), "threads": threads, "instances": False}
    ctx.unet = segmenters.create("unet", device=str(device), amp=False, **common)
    if device.type == "cuda":
        ctx.unet_amp = segmenters.create("unet", device=str(device), amp=True, **common)
        ctx.unet_cpu = segmenters.create("unet", device="cpu", **common)
    ctx.nuclei = segmenters.create(
        "nuclei",
        model_path=str(onnx_path),
        device="cpu",
        threads=threads,
        tile=TILE,
        halo=HALO,
        batch_size=BATCH,
        instances=False,
    )
    if default_model_path().is_file():
        ctx.shipped = segmenters.create(
            "nuclei", device="cpu", threads=threads, tile=TILE, halo=HALO, batch_size=BATCH
        )
    options = ort.SessionOptions()  # as OnnxSegmenter._open_session
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    ctx.session = ort.InferenceSession(
        str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    ctx.prepared = ctx.unet.prepare(image)
    ctx.unet.fit(ctx.prepared)
    padded, _ = tiling.pad_to_tile(ctx.prepared, TILE)
    ctx.windows = tiling.tile_grid(*padded.shape[1:], tile=TILE, overlap=OVERLAP)
    ctx.tiles = torch.from_numpy(np.stack([padded[(slice(None), *w.slices)] for w in ctx.windows]))
    return ctx


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def raw_torch(
    ctx: Context, seg: Any, *, amp: bool = False, batch: int = BATCH
) -> list[torch.Tensor]:
    """The gathered windows straight through ``seg.module``, ``batch`` at a time."""
    device = seg.device
    module = seg.module
    outs = []
    with torch.inference_mode():
        for i in range(0, len(ctx.tiles), batch):
            x = ctx.tiles[i : i + batch].to(device)
            if amp:
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.float16):
                    out = module(x)
            else:
                out = module(x)
            outs.append(torch.cat(list(out), dim=1) if isinstance(out, tuple) else out)
    _sync(device)
    return outs


def raw_ort(ctx: Context) -> list[np.ndarray]:
    tiles = ctx.tiles.numpy()
    outs = []
    for i in range(0, len(tiles), BATCH):
        probs, boundary = ctx.session.run(
            ["probabilities", "boundary"], {"image": tiles[i : i + BATCH]}
        )
        outs.append(np.concatenate([probs, boundary], axis=1))
    return outs


def tiled(ctx: Context, seg: Any) -> np.ndarray:
    """What ``segment_image`` calls: numpy tiler on the CPU, the device tiler on CUDA."""
    return seg.predict_tiled(
        ctx.prepared, tile=TILE, overlap=OVERLAP, blend=BLEND, batch_size=BATCH
    )


def tiled_host(ctx: Context, seg: Any) -> np.ndarray:
    """The numpy tiler over ``seg.predict`` (windows cut and blended on the host)."""
    return tiling.predict_tiled(
        ctx.prepared, seg.predict, tile=TILE, overlap=OVERLAP, blend=BLEND, batch_size=BATCH
    )


def tiled_pageable(ctx: Context, seg: Any) -> np.ndarray:
    """The device tiler with its result copied back through pageable memory (no pinned buffer)."""
    saved = _torch.PINNED_RESULT_MAX_BYTES
    _torch.PINNED_RESULT_MAX_BYTES = 0
    try:
        return tiled(ctx, seg)
    finally:
        _torch.PINNED_RESULT_MAX_BYTES = saved


def segment(ctx: Context, seg: Any) -> np.ndarray:
    result = segment_image(
        seg, ctx.image, tile=TILE, overlap=OVERLAP, blend=BLEND, batch_size=BATCH
    )
    _sync(ctx.device)
    if result.probabilities is None:
        raise RuntimeError(f"{seg.name} returned no probabilities")
    return result.probabilities


def variants(ctx: Context) -> dict[str, Callable[[], Any]]:
    """Name -> zero-argument call, in the order they are listed in the report."""
    out: dict[str, Callable[[], Any]] = {
        "raw_torch": lambda: raw_torch(ctx, ctx.unet),
        "tiled_torch": lambda: tiled(ctx, ctx.unet),
        "segment_unet": lambda: segment(ctx, ctx.unet),
        "raw_torch_batch1": lambda: raw_torch(ctx, ctx.unet, batch=1),
    }
    if ctx.unet_amp is not None:
        out["raw_torch_amp"] = lambda: raw_torch(ctx, ctx.unet_amp, amp=True)
        out["tiled_torch_amp"] = lambda: tiled(ctx, ctx.unet_amp)
        out["tiled_torch_host"] = lambda: tiled_host(ctx, ctx.unet)
        out["tiled_torch_pageable"] = lambda: tiled_pageable(ctx, ctx.unet)
        out["segment_unet_amp"] = lambda: segment(ctx, ctx.unet_amp)
        out["raw_torch_cpu"] = lambda: raw_torch(ctx, ctx.unet_cpu)
        out["segment_unet_cpu"] = lambda: segment(ctx, ctx.unet_cpu)
    out["raw_ort"] = lambda: raw_ort(ctx)
    out["segment_nuclei"] = lambda: segment(ctx, ctx.nuclei)
    if ctx.shipped is not None:
        out["nuclei_shipped"] = lambda: segment(ctx, ctx.shipped)
    return out


# ---------------------------------------------------------------------------------------------
# peak memory (child processes)
# ---------------------------------------------------------------------------------------------


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


def child_peak(name: str, args: argparse.Namespace, device: torch.device) -> None:
    """Child process: print the peak-RSS growth (MiB) of one call of variant ``name``."""
    torch.set_num_threads(args.threads)
    folder = Path(args.workdir)
    kwargs = {"device": device, "threads": args.threads, "ckpt": folder / "ckpt"}
    kwargs["onnx_path"] = folder / "model.onnx"
    small = build_context(image=make_image(args.size)[:, :TILE, :TILE].copy(), **kwargs)
    variants(small)[name]()  # import and initialise the code paths on one window
    ctx = build_context(image=make_image(args.size), **kwargs)
    del small
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        gpu_before = torch.cuda.memory_allocated(device)
    reset = _reset_peak()
    before = _status_mb("VmRSS") if reset else _status_mb("VmHWM")
    variants(ctx)[name]()
    row: dict[str, Any] = {"peak_rss_growth_mb": round(_status_mb("VmHWM") - before, 1)}
    row["peak_reset_supported"] = reset
    if cuda:
        row["cuda_peak_growth_mb"] = round(
            (torch.cuda.max_memory_allocated(device) - gpu_before) / 2**20, 1
        )
    print(json.dumps(row))


def peak_memory(names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in names:
        cmd = [sys.executable, __file__, "--child", name, "--workdir", args.workdir]
        cmd += ["--size", str(args.size), "--threads", str(args.threads), "--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            result[name] = {"error": proc.stderr.strip().splitlines()[-1:]}
            continue
        result[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        log(f"peak memory {name}: {result[name]}")
    return result


# ---------------------------------------------------------------------------------------------
# profile of the tiled path
# ---------------------------------------------------------------------------------------------


def profile(ctx: Context) -> dict[str, Any]:
    """Where ``tiled_torch``'s time goes, and the raw forward pass per window by batch size."""
    seg = ctx.unet
    spent = {"predict_total": 0.0, "model_forward": 0.0}
    module = seg.module
    original_forward = module.forward

    def timed_forward(x: torch.Tensor) -> Any:
        start = time.perf_counter()
        out = original_forward(x)
        _sync(ctx.device)
        spent["model_forward"] += time.perf_counter() - start
        return out

    def timed_predict(batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = seg.predict(batch)
        spent["predict_total"] += time.perf_counter() - start
        return out

    module.forward = timed_forward
    try:
        start = time.perf_counter()
        tiling.predict_tiled(
            ctx.prepared, timed_predict, tile=TILE, overlap=OVERLAP, blend=BLEND, batch_size=BATCH
        )
        total = time.perf_counter() - start
    finally:
        del module.forward
    # the tiler's own work with a free predictor (returns a new array each call, as a model does)
    k = 3
    start = time.perf_counter()
    tiling.predict_tiled(
        ctx.prepared,
        lambda b: np.zeros((b.shape[0], k, *b.shape[2:]), np.float32),
        tile=TILE,
        overlap=OVERLAP,
        blend=BLEND,
        batch_size=BATCH,
    )
    tiler_only = time.perf_counter() - start
    per_window: dict[str, float] = {}
    for bs in (1, 2, 4, 8):
        with torch.inference_mode():
            module(ctx.tiles[:bs].to(seg.device))  # warm-up for this shape
            _sync(ctx.device)
            start = time.perf_counter()
            for i in range(0, len(ctx.tiles), bs):
                module(ctx.tiles[i : i + bs].to(seg.device))
            _sync(ctx.device)
        per_window[str(bs)] = round((time.perf_counter() - start) / len(ctx.tiles), 4)
        log(f"raw forward, batch {bs}: {per_window[str(bs)]:.3f} s per window")
    return {
        "tiled_total_s": round(total, 3),
        "predict_calls_s": round(spent["predict_total"], 3),
        "model_forward_s": round(spent["model_forward"], 3),
        "predict_overhead_s (pad, to tensor, cat, to numpy, crop)": round(
            spent["predict_total"] - spent["model_forward"], 3
        ),
        "tiler_outside_predict_s (gather, blend, wait for merge)": round(
            total - spent["predict_total"], 3
        ),
        "tiler_with_free_predictor_s": round(tiler_only, 3),
        "raw_forward_s_per_window_by_batch": per_window,
    }


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--size", type=int, default=2048, help="image side in pixels")
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--no-memory", action="store_true", help="skip the child processes")
    parser.add_argument("--profile", action="store_true", help="break down tiled_torch's time")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reps < 1 or args.size < TILE or args.threads < 1:
        parser.error(f"--reps and --threads must be >= 1 and --size >= {TILE}")
    from segflow.segmenters._torch import resolve_device

    device = resolve_device(args.device)
    if args.child:
        child_peak(args.child, args, device)
        return

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="segflow-bench-models-") as tmp:
        args.workdir = tmp
        ckpt, onnx_path = make_model_files(Path(tmp))
        image = make_image(args.size)
        ctx = build_context(
            device=device, threads=args.threads, ckpt=ckpt, onnx_path=onnx_path, image=image
        )
        calls = variants(ctx)
        names = list(calls)
        log(f"{len(ctx.windows)} windows of {TILE} px on {device}, {args.threads} thread(s)")
        load_before = os.getloadavg()[0]
        outputs = {}
        for name in names:  # warm-up, and the outputs compared below
            start = time.perf_counter()
            outputs[name] = calls[name]()
            log(f"warm-up {name}: {time.perf_counter() - start:.2f}s")
        wall: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        for rep in range(args.reps):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                calls[name]()
                wall[name].append(time.perf_counter() - start_wall)
                cpu[name].append(time.process_time() - start_cpu)
            log(f"rep {rep}: " + ", ".join(f"{n} {wall[n][-1]:.2f}s" for n in names))
        load_after = os.getloadavg()[0]
        prof = profile(ctx) if args.profile else None

        med = {n: statistics.median(wall[n]) for n in names}
        megapixels = args.size * args.size / 1e6
        torch_cpu = "raw_torch_cpu" if "raw_torch_cpu" in names else "raw_torch"
        unet_cpu = "segment_unet_cpu" if "segment_unet_cpu" in names else "segment_unet"

        def as_np(outs: list[Any]) -> np.ndarray:
            return np.concatenate(
                [np.asarray(o.float().cpu()) if torch.is_tensor(o) else o for o in outs]
            )

        raw_t, raw_o = as_np(outputs[torch_cpu]), as_np(outputs["raw_ort"])
        # pixels that only one window covers: there the blended result is that window's output
        tiled_out, raw_out = outputs["tiled_torch"], as_np(outputs["raw_torch"])
        cover = np.zeros(tiled_out.shape[1:], dtype=np.int32)
        for w in ctx.windows:
            cover[w.slices] += 1
        single_diffs = []
        for w, window_out in zip(ctx.windows, raw_out, strict=True):
            only = cover[w.slices] == 1
            if only.any():
                single_diffs.append(
                    max_diff(tiled_out[:, w.slices[0], w.slices[1]][:, only], window_out[:, only])
                )
        ratio = med["raw_torch"] / med["tiled_torch"]
        report: dict[str, Any] = {
            "benchmark": "models",
            "model": "smp Unet resnet18 depth 4 decoder (64, 32, 16, 16), 1 in, fg + boundary, "
            "random weights (segflow.train._build)",
            "device": str(device),
            "image_shape": list(image.shape),
            "tile": TILE,
            "overlap_px": OVERLAP,
            "nuclei_halo_px": HALO,
            "windows": len(ctx.windows),
            "window_pixels_over_image_pixels": round(
                len(ctx.windows) * TILE * TILE / (args.size * args.size), 3
            ),
            "batch_size": BATCH,
            "blend": BLEND,
            "threads_torch_and_ort": args.threads,
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "reps": args.reps,
            "load_avg_1min_before_after": [round(load_before, 2), round(load_after, 2)],
            "wall_s_median": {n: round(med[n], 3) for n in names},
            "cpu_s_median": {n: round(statistics.median(cpu[n]), 3) for n in names},
            "image_mp_per_s": {n: round(megapixels / med[n], 3) for n in names},
            "tiled_over_raw_throughput": round(ratio, 3),
            "segment_image_over_raw_throughput": round(med["raw_torch"] / med["segment_unet"], 3),
            "target_tiled_over_raw": 0.8,
            "meets_target": ratio >= 0.8,
            "raw_batch1_over_batch8_throughput": round(
                med["raw_torch"] / med["raw_torch_batch1"], 3
            ),
            "ort_over_torch_time_raw_windows": round(med["raw_ort"] / med[torch_cpu], 3),
            "ort_over_torch_time_segment_image": round(med["segment_nuclei"] / med[unet_cpu], 3),
            "max_abs_diff_torch_vs_ort_same_windows": max_diff(raw_t, raw_o),
            "max_abs_diff_segment_unet_vs_segment_nuclei_probabilities": max_diff(
                outputs[unet_cpu], outputs["segment_nuclei"][:2]
            ),
            "max_abs_diff_tiled_vs_raw_where_one_window": max(single_diffs, default=float("nan")),
            "wall_s": {n: [round(t, 3) for t in wall[n]] for n in names},
        }
        if "raw_torch_amp" in names:
            report["amp_tiled_over_raw_throughput"] = round(
                med["raw_torch_amp"] / med["tiled_torch_amp"], 3
            )
            report["amp_speedup_tiled"] = round(med["tiled_torch"] / med["tiled_torch_amp"], 3)
            report["max_abs_diff_amp_vs_fp32_tiled"] = max_diff(
                outputs["tiled_torch_amp"], outputs["tiled_torch"]
            )
        if "tiled_torch_host" in names:
            report["device_tiler_speedup"] = round(med["tiled_torch_host"] / med["tiled_torch"], 3)
            report["host_tiler_over_raw_throughput"] = round(
                med["raw_torch"] / med["tiled_torch_host"], 3
            )
            report["max_abs_diff_device_vs_host_tiler"] = max_diff(
                outputs["tiled_torch"], outputs["tiled_torch_host"]
            )
            report["pinned_result_speedup"] = round(
                med["tiled_torch_pageable"] / med["tiled_torch"], 3
            )
        if "nuclei_shipped" not in names:
            report["nuclei_shipped"] = f"skipped: {default_model_path()} not found"
        if prof is not None:
            report["profile_tiled_torch"] = prof
        if not args.no_memory:
            report["peak_memory"] = peak_memory(names, args)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
