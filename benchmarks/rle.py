"""segflow.rle vs pycocotools: encode/decode of 2048x2048 blob masks and per-instance encoding.

Both libraries run in this one process on the same inputs, repetitions interleaved (segflow,
pycocotools, segflow, ...), and the medians of the per-call times are reported with their ratios
(segflow / pycocotools: below 1.0 means segflow is faster).

* ``encode``: input is the C-ordered bool mask a segmenter produces. pycocotools needs a
  Fortran-ordered uint8 copy, so its time includes ``np.asfortranarray(mask.view(np.uint8))``
  (the call every user makes); ``pycocotools_kernel`` times its encode alone on a prepared
  Fortran array, for reference.
* ``decode``: each library decodes its own RLE of the same mask (both return Fortran-ordered
  ``uint8``).
* ``labels``: one RLE per object of a label image with ~200 objects: ``encode_labels`` (bounding
  box crops) vs pycocotools encoding each full-size instance mask ``labels == i``.
* ``noise``: a worst case (random 50 % noise, about 2 million runs), for information.
* peak memory: ``tracemalloc`` peak of one call (numpy buffers are traced; pycocotools' own C
  buffers are not, e.g. its encoder's ``(H * W + 1)`` uint32 run buffer, 16 MiB at 2048x2048),
  and the process's maximum RSS.

Usage: ``python benchmarks/rle.py [--reps N] [--masks N] [--size S]``; the last line printed is
one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

from segflow import rle


def blob_mask(rng: np.random.Generator, size: int, *, blobs: int = 40) -> np.ndarray:
    """(size, size) bool: union of random ellipses, some touching or overlapping."""
    yy, xx = np.ogrid[:size, :size]
    mask = np.zeros((size, size), bool)
    for _ in range(blobs):
        cy, cx = rng.integers(0, size, 2)
        ry, rx = rng.integers(size // 100, size // 10, 2)
        y0, y1 = max(cy - ry, 0), min(cy + ry + 1, size)
        x0, x1 = max(cx - rx, 0), min(cx + rx + 1, size)
        sub = ((yy[y0:y1] - cy) / ry) ** 2 + ((xx[:, x0:x1] - cx) / rx) ** 2 < 1
        mask[y0:y1, x0:x1] |= sub
    return mask


def label_image(rng: np.random.Generator, size: int, *, objects: int = 200) -> np.ndarray:
    """(size, size) int32 label image with about ``objects`` nucleus-like discs."""
    yy, xx = np.ogrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    for i in range(1, objects + 1):
        cy, cx = rng.integers(0, size, 2)
        r = int(rng.integers(size // 200, size // 35))
        y0, y1 = max(cy - r, 0), min(cy + r + 1, size)
        x0, x1 = max(cx - r, 0), min(cx + r + 1, size)
        disc = (yy[y0:y1] - cy) ** 2 + (xx[:, x0:x1] - cx) ** 2 < r * r
        labels[y0:y1, x0:x1][disc] = i
    return labels


def count_runs(mask: np.ndarray) -> int:
    """Number of COCO counts of ``mask`` (runs in column-major order, leading zero run included)."""
    flat = mask.ravel(order="F")
    return 1 + int(np.count_nonzero(flat[1:] != flat[:-1])) + int(flat[0])


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def traced_peak(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def compare(
    cases: dict[str, list[Callable[[], Any]]], reps: int
) -> tuple[dict[str, float], dict[str, int]]:
    """Median seconds per call of each named case, runs interleaved; plus traced peaks."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fns in cases.values():  # warm-up (imports, caches)
        for fn in fns:
            fn()
    for _ in range(reps):
        for i in range(max(len(fns) for fns in cases.values())):
            for name, fns in cases.items():
                if i < len(fns):
                    times[name].append(timed(fns[i]))
    medians = {name: statistics.median(values) for name, values in times.items()}
    peaks = {name: traced_peak(fns[0]) for name, fns in cases.items()}
    return medians, peaks


def coco_encode(mask: np.ndarray) -> dict[str, Any]:
    return mask_utils.encode(np.asfortranarray(mask.view(np.uint8)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--masks", type=int, default=5)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--label-reps", type=int, default=3)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    masks = [blob_mask(rng, args.size) for _ in range(args.masks)]
    fortran = [np.asfortranarray(m.view(np.uint8)) for m in masks]
    ours = [rle.encode(m) for m in masks]
    theirs = [coco_encode(m) for m in masks]
    for m, a, b in zip(masks, ours, theirs, strict=True):  # same bytes, both decoders agree
        if a["counts"] != b["counts"].decode("ascii") or not np.array_equal(rle.decode(b), m):
            raise SystemExit("segflow and pycocotools disagree: benchmark aborted")

    def bind(fn: Callable[[Any], Any], items: list[Any]) -> list[Callable[[], Any]]:
        return [functools.partial(fn, item) for item in items]

    enc, enc_peak = compare(
        {
            "segflow": bind(rle.encode, masks),
            "pycocotools": bind(coco_encode, masks),
            "pycocotools_kernel": bind(mask_utils.encode, fortran),
        },
        args.reps,
    )
    dec, dec_peak = compare(
        {"segflow": bind(rle.decode, ours), "pycocotools": bind(mask_utils.decode, theirs)},
        args.reps,
    )

    noise = rng.random((args.size, args.size)) < 0.5
    noise_rle, noise_coco = rle.encode(noise), coco_encode(noise)
    if noise_rle["counts"] != noise_coco["counts"].decode("ascii"):
        raise SystemExit("segflow and pycocotools disagree on noise: benchmark aborted")
    noise_enc, _ = compare(
        {"segflow": bind(rle.encode, [noise]), "pycocotools": bind(coco_encode, [noise])},
        max(3, args.reps // 3),
    )
    noise_dec, _ = compare(
        {
            "segflow": bind(rle.decode, [noise_rle]),
            "pycocotools": bind(mask_utils.decode, [noise_coco]),
        },
        max(3, args.reps // 3),
    )

    labels = label_image(rng, args.size)
    ids = np.unique(labels)[1:]

    def coco_instances() -> dict[int, Any]:
        return {int(i): coco_encode(labels == i) for i in ids}

    by_label = rle.encode_labels(labels)
    reference = coco_instances()
    if list(by_label) != list(reference) or any(
        by_label[i]["counts"] != reference[i]["counts"].decode("ascii") for i in reference
    ):
        raise SystemExit("encode_labels disagrees with pycocotools: benchmark aborted")
    lab, lab_peak = compare(
        {
            "segflow_encode_labels": [lambda: rle.encode_labels(labels)],
            "pycocotools_per_instance": [coco_instances],
        },
        args.label_reps,
    )

    ms = 1e3
    result: dict[str, Any] = {
        "benchmark": "rle",
        "mask_size": [args.size, args.size],
        "masks": args.masks,
        "reps": args.reps,
        "mean_runs_per_mask": float(np.mean([count_runs(m) for m in masks])),
        "mean_counts_chars": float(np.mean([len(r["counts"]) for r in ours])),
        "encode_ms": {k: round(v * ms, 3) for k, v in enc.items()},
        "encode_ratio": round(enc["segflow"] / enc["pycocotools"], 3),
        "encode_ratio_vs_kernel": round(enc["segflow"] / enc["pycocotools_kernel"], 3),
        "encode_target_met": enc["segflow"] <= enc["pycocotools"],
        "decode_ms": {k: round(v * ms, 3) for k, v in dec.items()},
        "decode_ratio": round(dec["segflow"] / dec["pycocotools"], 3),
        "noise_encode_ms": {k: round(v * ms, 3) for k, v in noise_enc.items()},
        "noise_encode_ratio": round(noise_enc["segflow"] / noise_enc["pycocotools"], 3),
        "noise_decode_ms": {k: round(v * ms, 3) for k, v in noise_dec.items()},
        "noise_decode_ratio": round(noise_dec["segflow"] / noise_dec["pycocotools"], 3),
        "labels_objects": len(ids),
        "labels_ms": {k: round(v * ms, 3) for k, v in lab.items()},
        "labels_ratio": round(lab["segflow_encode_labels"] / lab["pycocotools_per_instance"], 4),
        "peak_traced_mib": {
            f"{op}_{k}": round(v / 2**20, 2)
            for op, peaks in (("encode", enc_peak), ("decode", dec_peak), ("labels", lab_peak))
            for k, v in peaks.items()
        },
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pycocotools": importlib.metadata.version("pycocotools"),
    }
    for key in ("encode", "decode", "labels"):
        table = result[f"{key}_ms"]
        print(f"{key:>7}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in table.items()))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
