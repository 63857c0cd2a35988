"""``unet``: segmentation-models-pytorch models loaded from a local checkpoint folder.

Checkpoint folder (what ``model.save_pretrained(folder)`` of smp >= 0.4 writes, plus segflow's
metadata)::

    folder/config.json          smp's model config: "_model_class" (Unet, UnetPlusPlus, FPN, ...),
                                encoder_name (any encoder), in_channels, classes, ...
    folder/model.safetensors    the weights (or pytorch_model.bin / model.pt / model.pth: a plain
                                state dict, read with torch.load(weights_only=True))
    folder/segflow.json         optional: segflow model metadata (preprocessing, classes, boundary
                                head; see segflow.segmenters.nuclei.ModelMeta). segflow's
                                training always writes it.

The model is rebuilt from ``config.json`` with ``encoder_weights=None`` whatever the file says
(an ``"imagenet"`` there would otherwise start a download), then the weights are loaded; a
missing or mismatching file fails at once with the expected path. ``model_path`` may also be a
weights file directly, with ``config.json`` beside it.

Without ``segflow.json`` (a model trained elsewhere) the raw outputs are read as logits:
``activation`` ``sigmoid`` (one channel: foreground; several: independent classes) or
``softmax`` (mutually exclusive classes, background first); ``normalize`` and ``channels``
describe the input the model expects.

Serving: :meth:`UnetSegmenter.prepare` makes the model input from the whole image (channels,
per-image normalisation, inversion), so statistics never depend on tiling; :meth:`predict` runs
batches of tiles (padded by reflection to a multiple of the encoder's stride) on the device,
under float16 autocast and in ``channels_last`` on CUDA; the tiler blends the tiles; and
:meth:`finish` takes the argmax and, for segflow models with a boundary head (or with
``instances=True``), labels instances (:func:`segflow.segmenters.nuclei.instances_from_outputs`).
``predict`` returns the K class probabilities followed, for a boundary head, by the boundary
probability channel, which ``finish`` splits off again.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from segflow.segmenters import register
from segflow.segmenters._torch import (
    autocast,
    check_threads,
    predict_tiled_on_device,
    require_file,
    resolve_device,
    set_threads,
)
from segflow.segmenters.nuclei import (
    META_FILE,
    ModelMeta,
    SegflowOutputs,
    check_instance_options,
    prepare_input,
)

__all__ = [
    "UnetSegmenter",
    "build_model",
    "export_onnx",
    "load_model_dir",
    "outputs_module",
    "save_model_dir",
]

logger = logging.getLogger(__name__)

WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth")
CONFIG_FILE = "config.json"

Activation = Literal["auto", "sigmoid", "softmax"]


# --------------------------------------------------------------------------------------------
# building, saving, loading


def build_model(
    *,
    arch: str = "Unet",
    encoder_name: str = "mobilenet_v2",
    in_channels: int = 1,
    classes: int = 1,
    **kwargs: Any,
) -> Any:
    """A freshly initialised smp model, never with downloaded encoder weights.

    ``kwargs`` go to ``smp.create_model`` (``encoder_depth``, ``decoder_channels``, ...);
    ``encoder_weights`` other than None is refused.
    """
    import segmentation_models_pytorch as smp

    weights = kwargs.pop("encoder_weights", None)
    if weights is not None:
        raise ValueError(
            f"encoder_weights must be None (no downloads here), got {weights!r}; "
            "initialise randomly or load a local checkpoint"
        )
    try:
        return smp.create_model(
            arch,
            encoder_name=encoder_name,
            encoder_weights=None,
            in_channels=in_channels,
            classes=classes,
            **kwargs,
        )
    except KeyError as exc:
        raise ValueError(
            f"cannot build smp model {arch!r} with encoder {encoder_name!r}: {exc}"
        ) from exc


def _weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"unet checkpoint: expected a weights file ({' or '.join(WEIGHT_FILES)}) in "
        f"{folder.resolve()}, found {sorted(p.name for p in folder.iterdir()) or 'an empty folder'}; "
        "save one with model.save_pretrained(folder). Weights are never downloaded."
    )


def _read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, not a state dict, pickle refused
        raise ValueError(
            f"could not read weights from {path}: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a state dict")
    return state


def _load_state(model: Any, state: dict[str, Any], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"the weights in {path} do not fit the model described by its config.json: {exc}"
        ) from exc


def load_model_dir(model_path: str | Path) -> tuple[Any, dict[str, Any], ModelMeta | None]:
    """Load ``(model, smp config, segflow metadata or None)`` from a checkpoint folder (see above).

    The model is on the CPU in eval mode.
    """
    path = Path(model_path).expanduser()
    if path.is_file():
        folder, weights = path.parent, path
    elif path.is_dir():
        folder, weights = path, None
    else:
        raise FileNotFoundError(
            f"unet checkpoint not found: expected a folder with {CONFIG_FILE} and model.safetensors "
            f"at {path.resolve()} (model_path={str(model_path)!r}). Weights are never downloaded: "
            "give a local folder written by save_pretrained or by segflow's training."
        )
    config_path = require_file(
        folder / CONFIG_FILE,
        what="unet checkpoint",
        hint="the smp model config written by model.save_pretrained(folder)",
    )
    if weights is None:
        weights = _weights_file(folder)
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or "_model_class" not in config:
        raise ValueError(f"{config_path} lacks '_model_class' (the smp architecture name)")
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    arch = config["_model_class"]
    kwargs.pop("encoder_weights", None)  # rebuilt without weights; the file provides them
    for key in ("decoder_channels",):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    model = build_model(arch=arch, **kwargs)
    _load_state(model, _read_state_dict(weights), weights)
    model.eval()
    meta = None
    if (folder / META_FILE).is_file():
        meta = ModelMeta.from_json((folder / META_FILE).read_text())
    return model, config, meta


def save_model_dir(model: Any, folder: str | Path, *, meta: ModelMeta | None = None) -> Path:
    """``model.save_pretrained(folder)`` (config.json + model.safetensors) and ``segflow.json``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    readme = out / "README.md"  # smp's generated card links to the Hub; ours is the model card
    if readme.is_file():
        readme.unlink()
    if meta is not None:
        (out / META_FILE).write_text(meta.to_json())
    return out


def outputs_module(model: Any, *, label_kind: str, boundary: bool) -> Any:
    """Wrap ``model`` so that it returns segflow's outputs (see ``segflow.segmenters.nuclei``).

    ``forward(x)`` gives ``probabilities`` (N, K, h, w) and, with ``boundary``, also the
    boundary probability (N, 1, h, w) as a second tensor. Raw channels: ``binary`` /
    ``instances`` -> channel 0 is the foreground logit (channel 1 the boundary logit);
    ``classes`` -> K class logits (softmax).
    """
    import torch

    class SegflowOutputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> Any:
            raw = self.model(x)
            if label_kind == "classes":
                return torch.softmax(raw, dim=1)
            fg = torch.sigmoid(raw[:, :1])
            probs = torch.cat([1.0 - fg, fg], dim=1)
            if boundary:
                return probs, torch.sigmoid(raw[:, 1:2])
            return probs

    return SegflowOutputs().eval()


def export_onnx(
    model: Any,
    path: str | Path,
    *,
    meta: ModelMeta,
    opset: int = 17,
    sample_size: int = 64,
    weights: Literal["float32", "float16"] = "float32",
) -> Path:
    """Export ``model`` with segflow's outputs to ONNX, metadata stored in ``metadata_props``.

    Inputs ``image`` (N, C, H, W) float32 with dynamic N, H, W (multiples of ``meta.divisor``);
    outputs ``probabilities`` and (boundary head) ``boundary``. Uses the TorchScript exporter
    (``dynamo=False``), which needs no ``onnxscript``. The file is written atomically.

    ``weights="float16"`` stores the weights in half precision (half the file) and casts them
    back to float32 inside the graph (ONNX Runtime folds the casts when it loads the file), so
    the model still computes in float32 on any CPU: the outputs are those of the model with
    its weights rounded to float16.
    """
    if weights not in ("float32", "float16"):
        raise ValueError(f"weights must be 'float32' or 'float16', got {weights!r}")
    import onnx
    import torch

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = outputs_module(model, label_kind=meta.label_kind, boundary=meta.boundary).cpu().eval()
    names = ["probabilities", "boundary"] if meta.boundary else ["probabilities"]
    axes = {"image": {0: "batch", 2: "height", 3: "width"}}
    axes.update({n: {0: "batch", 2: "height", 3: "width"} for n in names})
    x = torch.zeros(1, meta.channels, sample_size, sample_size)
    tmp = out.with_name(out.name + ".tmp")
    with torch.no_grad():
        torch.onnx.export(
            module,
            (x,),
            str(tmp),
            input_names=["image"],
            output_names=names,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    proto = onnx.load(str(tmp))
    if weights == "float16":
        _store_weights_as_float16(proto)
    onnx.helper.set_model_props(proto, {"segflow": meta.to_json()})
    onnx.save(proto, str(tmp))
    tmp.replace(out)
    return out


def _store_weights_as_float16(proto: Any) -> None:
    """Replace each float32 initializer by a float16 one plus a ``Cast`` back to float32."""
    import onnx
    from onnx import numpy_helper

    graph = proto.graph
    kept, casts = [], []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            kept.append(init)
            continue
        half = numpy_helper.to_array(init).astype(np.float16)
        kept.append(numpy_helper.from_array(half, name=f"{init.name}__float16"))
        casts.append(
            onnx.helper.make_node(
                "Cast",
                [f"{init.name}__float16"],
                [init.name],
                to=onnx.TensorProto.FLOAT,
                name=f"{init.name}__cast",
            )
        )
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # the casts go first: nodes must come after what they read (topological order)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*casts, *nodes])


# --------------------------------------------------------------------------------------------
# the segmenter


#: On the CPU a batch is run in pieces of at most this many input pixels (one 512 x 512
#: window). A batch of eight such windows makes every layer's output ~134 MB, which glibc maps
#: and unmaps layer by layer: ~1.5x slower per window and ~6x the peak memory of single windows,
#: with bit-identical outputs (``benchmarks/models.py``). CUDA keeps whole batches.
CPU_MICROBATCH_PIXELS = 512 * 512


@register("unet")
class UnetSegmenter(SegflowOutputs):
    """U-Net (or any smp architecture) from a local checkpoint folder, on CPU or CUDA.

    Parameters (keyword-only)
    -------------------------
    model_path : checkpoint folder (``config.json`` + ``model.safetensors`` [+ ``segflow.json``])
        or the weights file inside it
    device : ``auto | cpu | cuda | cuda:N``
    threads : ``torch.set_num_threads`` (process-wide) when given; None keeps torch's setting
    amp : float16 autocast on CUDA (never on the CPU); ``channels_last`` on CUDA too
    instances : label instances (default: when the model has a boundary head or was trained on
        instance labels); ``threshold``, ``seed_threshold``, ``min_seed``, ``min_size``, ``h``
        as in :func:`segflow.segmenters.nuclei.instances_from_outputs`
    For checkpoints without ``segflow.json``: ``activation`` (``sigmoid`` | ``softmax``),
    ``normalize`` (``none | percentile | minmax | zero_mean_unit_variance``), ``channels`` (1 | 3),
    ``class_names``.
    """

    output: ClassVar[Literal["semantic", "instances"]] = "semantic"

    def __init__(
        self,
        *,
        model_path: str | Path,
        device: str = "auto",
        threads: int | None = None,
        amp: bool = True,
        instances: bool | None = None,
        threshold: float = 0.5,
        seed_threshold: float = 0.5,
        min_seed: int = 4,
        min_size: int = 16,
        h: float = 2.0,
        activation: Activation = "auto",
        normalize: str = "none",
        channels: int | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        check_instance_options(
            threshold=threshold, seed_threshold=seed_threshold, min_seed=min_seed, min_size=min_size
        )
        if activation not in ("auto", "sigmoid", "softmax"):
            raise ValueError(
                f"activation must be one of auto, sigmoid, softmax, got {activation!r}"
            )
        self.threads = check_threads(threads)
        self.device = resolve_device(device)
        set_threads(self.threads)
        model, config, meta = load_model_dir(model_path)
        self.model_path = Path(model_path)
        raw_classes = int(config.get("classes", 1))
        in_channels = int(config.get("in_channels", 3))
        if meta is None:
            meta = self._meta_for_raw_model(
                raw_classes=raw_classes,
                in_channels=in_channels,
                activation=activation,
                normalize=normalize,
                channels=channels,
                class_names=class_names,
            )
        self.meta = meta
        self.amp = bool(amp)
        self.instances = (
            bool(instances)
            if instances is not None
            else (meta.boundary or meta.label_kind == "instances")
        )
        self.threshold = float(threshold)
        self.seed_threshold = float(seed_threshold)
        self.min_seed = int(min_seed)
        self.min_size = int(min_size)
        self.h = float(h)
        depth = int(config.get("encoder_depth", 5))
        self.divisor = max(meta.divisor, 2**depth)
        self.module = outputs_module(model, label_kind=meta.label_kind, boundary=meta.boundary)
        self.module.to(self.device)
        if self.device.type == "cuda":
            import torch

            self.module.to(memory_format=torch.channels_last)
        self.module.eval()

    @staticmethod
    def _meta_for_raw_model(
        *,
        raw_classes: int,
        in_channels: int,
        activation: str,
        normalize: str,
        channels: int | None,
        class_names: Sequence[str] | None,
    ) -> ModelMeta:
        if activation == "auto":
            activation = "sigmoid" if raw_classes == 1 else "softmax"
        if activation == "sigmoid" and raw_classes != 1:
            raise ValueError(
                f"activation 'sigmoid' serves one-channel (foreground) models; this one has "
                f"{raw_classes} output channels: use activation='softmax'"
            )
        if channels is not None and channels != in_channels:
            raise ValueError(
                f"channels={channels} but the model takes {in_channels} input channels"
            )
        if activation == "sigmoid":
            names = tuple(class_names) if class_names else ("background", "foreground")
            kind = "binary"
        else:
            names = (
                tuple(class_names)
                if class_names
                else ("background", *(f"class_{k}" for k in range(1, raw_classes)))
            )
            kind = "classes"
            if len(names) != raw_classes:
                raise ValueError(
                    f"class_names has {len(names)} names but the model has {raw_classes} output channels"
                )
        return ModelMeta(
            channels=in_channels,
            normalize=normalize,
            invert="never",
            label_kind=kind,
            class_names=names,
            boundary=False,
        )

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.class_names)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Model input of the whole image: (C, H, W) float32 -> (channels, H, W) float32."""
        return prepare_input(image, self.meta)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, channels, t, t) float32 -> (N, K [+ 1 boundary], t, t) float32 probabilities."""
        import torch

        x = np.asarray(batch, dtype=np.float32)
        if x.ndim != 4:
            raise ValueError(f"batch must be (N, C, H, W), got shape {x.shape}")
        # torch.from_numpy needs writable memory; predict_tiled passes read-only views
        tensor = torch.from_numpy(np.require(x, requirements=["C", "W"])).to(self.device)
        return np.ascontiguousarray(self._forward(tensor).cpu().numpy(), dtype=np.float32)

    def predict_tiled(
        self, prepared: np.ndarray, *, tile: int, overlap: int, blend: str, batch_size: int
    ) -> np.ndarray:
        """On CUDA the windows are cut and blended on the GPU (``predict_tiled_on_device``)."""
        if self.device.type != "cuda":
            return super().predict_tiled(
                prepared, tile=tile, overlap=overlap, blend=blend, batch_size=batch_size
            )
        return predict_tiled_on_device(
            prepared,
            self._forward,
            device=self.device,
            tile=tile,
            overlap=overlap,
            blend=blend,
            batch_size=batch_size,
        )

    def _forward(self, tensor: Any) -> Any:
        """(N, channels, h, w) float32 tensor on the device -> (N, K', h, w) float32 tensor."""
        import torch
        import torch.nn.functional as F

        _, _, height, width = tensor.shape
        ph = math.ceil(height / self.divisor) * self.divisor - height
        pw = math.ceil(width / self.divisor) * self.divisor - width
        if ph or pw:
            mode = "reflect" if height > ph and width > pw else "replicate"
            tensor = F.pad(tensor, (0, pw, 0, ph), mode=mode)
        if self.device.type == "cuda":
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        step = tensor.shape[0]
        if self.device.type == "cpu":
            step = max(1, CPU_MICROBATCH_PIXELS // (tensor.shape[2] * tensor.shape[3]))
        pieces = []
        with torch.inference_mode(), autocast(self.device, enabled=self.amp):
            for start in range(0, tensor.shape[0], step):
                out = self.module(tensor[start : start + step])
                parts = list(out) if isinstance(out, tuple) else [out]
                pieces.append(torch.cat([p.float() for p in parts], dim=1))
        result = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        return result[:, :, :height, :width]
