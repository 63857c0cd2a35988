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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from segflow import tiling
from segflow.segmenters.onnx import parse_device

# results larger than this come back through pageable memory (see _to_host)
PINNED_RESULT_MAX_BYTES = 1 << 30

__all__ = [
    "autocast",
    "check_threads",
    "offline_hub",
    "predict_tiled_on_device",
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


def predict_tiled_on_device(
    image: np.ndarray,
    forward: Callable[[Any], Any],
    *,
    device: Any,
    tile: int,
    overlap: int,
    blend: str = "gaussian",
    batch_size: int = 8,
) -> np.ndarray:
    """:func:`segflow.tiling.predict_tiled` with the windows and the blending on ``device``.

    On a GPU the numpy tiler's host-side work (gathering windows, copying each batch to the
    device and its outputs back, blending on the CPU) costs several times the model's forward
    pass; here the image goes to the device once, windows are slices of it, each output is
    blended in place on the device, and one ``(K, H, W)`` array comes back.

    Parameters
    ----------
    image : (C, H, W) float32
    forward : callable
        ``(N, C, tile, tile)`` float32 tensor on ``device`` -> ``(N, K, tile, tile)`` float32
        tensor on ``device`` (called under ``torch.inference_mode``).
    device : torch.device
    tile, overlap, blend, batch_size
        As for :func:`~segflow.tiling.predict_tiled`: the same grid (padding by reflection for
        sides shorter than ``tile``), weights and batches in grid order.

    Returns
    -------
    (K, H, W) float32
        The weighted mean of the windows' outputs: ``predict_tiled``'s result up to float32
        rounding (the sums run in another order).
    """
    import torch

    # the numpy tiler's checks and messages: blend_weights names the blend modes, pad_to_tile
    # and tile_grid the shape, tile and overlap
    blend_map = tiling.blend_weights(tile, mode=blend)
    batch_size = tiling._as_int("batch_size", batch_size, minimum=1)
    padded, (height, width) = tiling.pad_to_tile(np.asarray(image, dtype=np.float32), tile)
    padded_h, padded_w = padded.shape[1:]
    windows = tiling.tile_grid(padded_h, padded_w, tile=tile, overlap=overlap)
    with torch.inference_mode():
        source = torch.from_numpy(np.require(padded, requirements=["C", "W"])).to(device)
        weights = torch.from_numpy(blend_map).to(device)
        total: Any = None
        norm = torch.zeros((padded_h, padded_w), dtype=torch.float32, device=device)
        for start in range(0, len(windows), batch_size):
            chunk = windows[start : start + batch_size]
            batch = torch.stack([source[(slice(None), *w.slices)] for w in chunk])
            out = forward(batch)
            if out.ndim != 4 or out.shape[0] != len(chunk) or tuple(out.shape[2:]) != (tile,) * 2:
                raise ValueError(
                    f"forward must return (N, K, {tile}, {tile}) with N = {len(chunk)}, "
                    f"got shape {tuple(out.shape)}"
                )
            if total is None:
                total = torch.zeros(
                    (out.shape[1], padded_h, padded_w), dtype=torch.float32, device=device
                )
            for window, values in zip(chunk, out.float(), strict=True):
                total[(slice(None), *window.slices)].addcmul_(values, weights)
                norm[window.slices].add_(weights)
        total /= norm
        return _to_host(total[:, :height, :width])


def _to_host(tensor: Any) -> np.ndarray:
    """A CUDA tensor's values as a C-contiguous numpy array, copied through pinned memory.

    A copy into ordinary (pageable) host memory goes through the driver's staging buffers at a
    fraction of the bus's speed: on an H100, 43.5 ms for a (3, 2048, 2048) float32 result
    against 1.1 ms into page-locked memory, and 1.7 times the whole tiled forward pass
    (``docs/models.md``). Results over ``PINNED_RESULT_MAX_BYTES`` (and CPU tensors)
    take the ordinary path, so that a gigapixel result does not lock that much RAM.
    """
    import torch

    host = None
    if tensor.device.type == "cuda" and (
        tensor.numel() * tensor.element_size() <= PINNED_RESULT_MAX_BYTES
    ):
        try:
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        except RuntimeError:  # page-locked memory can run out; the pageable copy still works
            host = None
    if host is None:
        return np.ascontiguousarray(tensor.cpu().numpy())
    host.copy_(tensor)
    return host.numpy()
