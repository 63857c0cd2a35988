"""TFLite segmenter on ``ai-edge-litert`` (CPU).

Contract of a model file served here
------------------------------------
* One image input ``(1, th, tw, C)`` (NHWC). Its dtype decides what is fed:
  ``uint8`` -> the pixel values ``round(image * 255)`` (a quantised model's own scale/zero-point
  map them to what the float model saw, e.g. DeepLab's ``(q - 128) / 128``);
  ``int8`` -> ``round(image * 255) - 128``; float -> the image scaled to ``input_range``
  (default ``(0, 1)``; MobileNet-style float models often want ``(-1, 1)``).
* The first output is either a class map ``(1, h, w)`` of integers (an ``argmax`` inside the
  model, e.g. DeepLab v3) -> one-hot probabilities over ``num_classes`` (or the labels file's
  names), or scores ``(1, h, w, K)`` / ``(1, h, w)`` (uint8/int8 dequantised) with ``activation``
  ``none | sigmoid | softmax``; a single channel ``p`` becomes ``[1 - p, p]``.
* A dynamic batch dimension (-1 in the signature) is resized to ``batch_size`` windows per call;
  otherwise windows are fed one by one.

Image to model size (``strategy``)
----------------------------------
``resize`` (default; what scene models such as DeepLab and the selfie model are trained for): the
whole image is resized to the model size and the scores are resized back. ``tile``: windows of
the model size at native resolution with ``halo`` cropped, exactly as for the ONNX backend (see
:mod:`segflow.segmenters.onnx`).

The interpreter is not thread-safe: calls are serialised by a lock per segmenter.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from segflow.segmenters import register
from segflow.segmenters.onnx import (
    ACTIVATIONS,
    STRATEGIES,
    Activation,
    Strategy,
    WatershedInstances,
    adapt_channels,
    apply_activation,
    default_threads,
    match_spatial,
    one_hot,
    parse_device,
    predict_fixed_size,
    predict_resized,
    resolve_model_file,
    to_class_probabilities,
)

__all__ = ["TfliteSegmenter", "read_labels_file"]

logger = logging.getLogger(__name__)


def read_labels_file(path: str | Path) -> list[str]:
    """Class names, one per line, up to the first blank line (text after it is a comment)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"labels file not found: expected a text file at {p.resolve()}")
    names: list[str] = []
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if names:
                break
            continue
        names.append(line.strip())
    if len(names) < 2:
        raise ValueError(
            f"{p} lists {len(names)} class name(s); need at least 2 (background first)"
        )
    return names


@register("tflite")
class TfliteSegmenter(WatershedInstances):
    """Semantic (optionally instance) segmentation with a TFLite model file.

    Parameters (keyword-only)
    -------------------------
    model_path : local ``.tflite`` file (or a folder holding exactly one)
    labels_path : text file of class names (one per line, background first); or give
        ``class_names`` / ``num_classes`` for class-map models
    activation : ``none | sigmoid | softmax`` applied to float score outputs
    input_range : (low, high) a float-input model expects for pixel values 0..1
    strategy : ``resize`` (default) or ``tile`` (with ``halo`` cropped)
    device : ``auto | cpu`` (TFLite runs on the CPU here; ``cuda`` is refused)
    threads : interpreter threads (default: the cores this process may use)
    batch_size : windows per call when the model's batch dimension is dynamic
    instances : also label instances of the non-background pixels (threshold + watershed)
    """

    image_scoped: ClassVar[bool] = True

    def __init__(
        self,
        *,
        model_path: str | Path,
        labels_path: str | Path | None = None,
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        activation: Activation = "none",
        input_range: tuple[float, float] = (0.0, 1.0),
        strategy: Strategy = "resize",
        halo: int = 0,
        device: str = "auto",
        threads: int | None = None,
        batch_size: int = 4,
        instances: bool = False,
        threshold: float = 0.5,
        h: float = 2.0,
        min_size: int = 16,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}"
            )
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        if halo < 0:
            raise ValueError(f"halo must be >= 0 pixels, got {halo}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        kind, _ = parse_device(device)
        if kind == "cuda":
            raise ValueError(
                f"the tflite segmenter runs on the CPU; device must be auto or cpu, got {device!r}"
            )
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ValueError(
                f"threads must be a positive int or None (all usable cores), got {threads!r}"
            )
        self.model_path = resolve_model_file(model_path, suffix=".tflite", what="TFLite")
        if labels_path is not None:
            if class_names is not None:
                raise ValueError("give labels_path or class_names, not both")
            class_names = read_labels_file(labels_path)
        self.activation = activation
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.strategy = strategy
        self.halo = int(halo)
        self.batch_size = int(batch_size)
        self.instances = bool(instances)
        self.threshold = float(threshold)
        self.h = float(h)
        self.min_size = int(min_size)
        self.threads = threads if threads is not None else default_threads()
        self._lock = threading.Lock()
        self._interpreter = self._open()
        self._in = self._interpreter.get_input_details()[0]
        self._out = self._interpreter.get_output_details()[0]
        shape = [int(v) for v in self._in["shape"]]
        signature = [int(v) for v in self._in.get("shape_signature", self._in["shape"])]
        if len(shape) != 4:
            raise ValueError(
                f"model input has shape {shape}; expected 4-D (1, height, width, channels)"
            )
        self.size = (shape[1], shape[2])
        self._channels = shape[3]
        self._dynamic_batch = signature[0] == -1
        self._batch = 1
        # integers without a quantisation scale are class ids (argmax inside the model);
        # quantised integers are scores
        out_shape = [int(v) for v in self._out["shape"]]
        scale = float(self._out.get("quantization", (0.0, 0))[0] or 0.0)
        self._class_map = (
            np.issubdtype(np.dtype(self._out["dtype"]), np.integer)
            and scale == 0.0
            and (len(out_shape) == 3 or (len(out_shape) == 4 and out_shape[-1] == 1))
        )
        self._num_classes = self._classes(num_classes, class_names)
        self._class_names = list(class_names) if class_names is not None else None
        if self._class_names is not None and len(self._class_names) != self._num_classes:
            raise ValueError(
                f"class_names has {len(self._class_names)} names but the model gives "
                f"{self._num_classes} classes"
            )

    def _open(self) -> Any:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the tflite segmenter needs ai-edge-litert: pip install 'segflow[tflite]'"
            ) from exc
        try:
            interpreter = Interpreter(model_path=str(self.model_path), num_threads=self.threads)
            interpreter.allocate_tensors()
        except Exception as exc:  # the runtime raises ValueError/RuntimeError of its own
            raise ValueError(
                f"could not load {self.model_path} as a TFLite model ({type(exc).__name__}: {exc}); "
                "expected a TFLite flatbuffer (.tflite)"
            ) from exc
        return interpreter

    def _classes(self, num_classes: int | None, class_names: Sequence[str] | None) -> int:
        if self._class_map:
            k = (
                num_classes
                if num_classes is not None
                else (len(class_names) if class_names else None)
            )
            if k is None or k < 2:
                raise ValueError(
                    "the model outputs a class map (integers): give labels_path, class_names or "
                    "num_classes (>= 2)"
                )
            return int(k)
        out_shape = [int(v) for v in self._out["shape"]]
        k = out_shape[-1] if len(out_shape) == 4 else 1
        return 2 if k == 1 else k

    # -- Segmenter API -----------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def class_names(self) -> list[str]:
        if self._class_names is not None:
            return list(self._class_names)
        return super().class_names

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities of whole images: (N, C, H, W) float32 in [0, 1] -> (N, K, H, W)."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4:
            raise ValueError(f"batch must be (N, C, H, W), got shape {batch.shape}")
        results = []
        for image in batch:
            x = adapt_channels(image, self._channels)
            if self.strategy == "resize":
                results.append(predict_resized(x, self._run, size=self.size))
            else:
                results.append(
                    predict_fixed_size(
                        x, self._run, size=self.size, halo=self.halo, batch_size=self.batch_size
                    )
                )
        return np.stack(results)

    # -- running the model -------------------------------------------------------------------

    def _run(self, windows: np.ndarray) -> np.ndarray:
        """(N, C, th, tw) float32 in [0, 1] -> (N, K, th, tw) class probabilities."""
        per_call = self.batch_size if self._dynamic_batch else 1
        outs = []
        with self._lock:
            for k in range(0, windows.shape[0], per_call):
                outs.append(self._invoke(windows[k : k + per_call]))
        return np.concatenate(outs)

    def _invoke(self, chunk: np.ndarray) -> np.ndarray:
        n, _, height, width = chunk.shape
        interp = self._interpreter
        if n != self._batch:
            interp.resize_tensor_input(self._in["index"], [n, *self.size, self._channels])
            interp.allocate_tensors()
            self._batch = n
        interp.set_tensor(self._in["index"], self._encode(chunk.transpose(0, 2, 3, 1)))
        interp.invoke()
        raw = np.array(interp.get_tensor(self._out["index"]))
        return match_spatial(self._decode(raw), height, width)

    def _encode(self, x: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self._in["dtype"])
        if dtype == np.uint8:
            return np.ascontiguousarray(np.clip(np.rint(x * 255.0), 0, 255), dtype=np.uint8)
        if dtype == np.int8:
            return np.ascontiguousarray(np.clip(np.rint(x * 255.0), 0, 255) - 128, dtype=np.int8)
        if np.issubdtype(dtype, np.floating):
            lo, hi = self.input_range
            return np.ascontiguousarray(x * (hi - lo) + lo, dtype=dtype)
        raise ValueError(
            f"model input dtype {dtype} is not supported; supported: uint8, int8, float"
        )

    def _decode(self, raw: np.ndarray) -> np.ndarray:
        if self._class_map:
            classes = raw.reshape(raw.shape[0], raw.shape[1], raw.shape[2])  # drop a last axis of 1
            return one_hot(classes.astype(np.int64), self._num_classes)
        scores = raw.astype(np.float32)
        if np.issubdtype(raw.dtype, np.integer):  # quantised scores
            scale, zero = self._out.get("quantization", (0.0, 0))
            if scale:
                scores = (scores - float(zero)) * float(scale)
        scores = scores[:, None] if scores.ndim == 3 else scores.transpose(0, 3, 1, 2)
        return to_class_probabilities(apply_activation(scores, self.activation, axis=1))
