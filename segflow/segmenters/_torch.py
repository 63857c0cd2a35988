"""Helpers shared by the torch backends (U-Net, Mask R-CNN, transformers): device, threads, AMP.

Nothing here imports torch at module level (``import segflow.segmenters._torch`` stays cheap);
every function imports it when called.

Device rules: ``auto`` is ``cuda`` (GPU 0) when ``torch.cuda.is_available()``, else ``cpu``;
``cuda`` / ``cuda:N`` without a usable GPU is an error, not a silent CPU fallback. Mixed
precision (``torch.autocast`` float16) and ``channels_last`` memory format are used on CUDA
only: on the CPU they are slower or change results.

Threads: ``torch.set_num_threads`` is process-wide. A backend sets it only when given
``threads``; otherwise torch keeps its setting (which follows ``OMP_NUM_THREADS``, set to 1 per
worker by the ``segflow`` CLI so that worker threads do not oversubscribe the cores).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segflow.segmenters.onnx import parse_device

__all__ = [
    "autocast",
    "check_threads",
    "offline_hub",
    "require_file",
    "resolve_device",
    "set_threads",
]


def resolve_device(device: str) -> Any:
    """``auto|cpu|cuda|cuda:N`` -> a ``torch.device``; ``RuntimeError`` if CUDA is asked for and absent."""
    import torch

    kind, index = parse_device(device)
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device!r} asked for, but torch sees no CUDA GPU; use device='cpu' or 'auto'"
        )
    if index >= torch.cuda.device_count():
        raise RuntimeError(
            f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s) "
            f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
        )
    return torch.device("cuda", index)


def check_threads(threads: int | None) -> int | None:
    """Validate ``threads`` (a positive int or None = leave torch's setting)."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(
            f"threads must be a positive int or None (keep torch's setting), got {threads!r}"
        )
    return threads


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` when ``threads`` is given (process-wide)."""
    if threads is None:
        return
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def autocast(device: Any, *, enabled: bool) -> Iterator[None]:
    """float16 autocast on CUDA when ``enabled``; nothing on the CPU."""
    import torch

    if enabled and device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.float16):
            yield
    else:
        yield


def offline_hub() -> None:
    """Make Hugging Face libraries fail fast instead of waiting on the network (2-4 s, not 26-98 s)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def require_file(path: Path, *, what: str, hint: str) -> Path:
    """``path`` if it is a file, else ``FileNotFoundError`` naming the expected file and where."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{what}: expected the file {path.name} at {path.resolve()}, found nothing there; {hint}. "
            "Weights are never downloaded: give a local path."
        )
    return path
