"""bioimage.io model descriptors (``bioimageio.yaml``, formats 0.5 and 0.4) served by ONNX Runtime.

What is read from the descriptor
--------------------------------
* ``inputs[0]``: the axes (batch, channel, y, x in the file's order), the spatial size (a fixed
  number, or ``min`` + ``step`` from which the size nearest to ``tile`` is taken), the channel count
  and the preprocessing chain.
* ``outputs[0]``: the axes, the halo (the larger of y and x; cropped from window borders when
  tiling, see :mod:`segflow.segmenters.onnx`) and the postprocessing.
* ``weights.onnx.source``: the model file, relative to the descriptor's folder, checked against
  its ``sha256`` when given. Only ONNX weights run here; a descriptor without them is refused
  with the list of formats it has and the one supported.

Pre-processing steps run as whole-image steps: statistics (``zero_mean_unit_variance``,
``scale_range``) are computed once per image in :meth:`fit` over the declared axes, never per
tile, so tiling does not change them. Supported preprocessing: ``ensure_dtype`` (float32),
``zero_mean_unit_variance``, ``fixed_zero_mean_unit_variance``, ``scale_range``, ``scale_linear``,
``clip``. Supported postprocessing: ``sigmoid``, ``softmax``, ``ensure_dtype`` (float32). Anything
else is a ``ValueError`` naming what is supported.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segflow.segmenters import register
from segflow.segmenters.onnx import (
    Activation,
    Clip,
    Layout,
    OnnxSegmenter,
    ScaleLinear,
    ScaleRange,
    Step,
    ZeroMeanUnitVariance,
)

__all__ = ["BioimageioSegmenter", "ModelSpec", "read_descriptor"]

SUPPORTED_WEIGHTS = ("onnx",)
PREPROCESSING = (
    "ensure_dtype",
    "zero_mean_unit_variance",
    "fixed_zero_mean_unit_variance",
    "scale_range",
    "scale_linear",
    "clip",
)
POSTPROCESSING = ("sigmoid", "softmax", "ensure_dtype")
DESCRIPTOR_NAMES = ("bioimageio.yaml", "rdf.yaml")


@dataclass(frozen=True)
class ModelSpec:
    """What segflow needs from a bioimage.io model descriptor."""

    descriptor: Path
    name: str
    format_version: str
    weights: Path
    weights_sha256: str | None
    input_axes: tuple[str, ...]  # e.g. ("batch", "channel", "y", "x")
    channels: int
    size: tuple[int, int]  # (y, x) window size
    halo: int
    steps: tuple[Step, ...]
    activation: Activation
    output_channels: int
    channel_names: tuple[str, ...]
    test_input: Path | None
    test_output: Path | None


def _find_descriptor(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        for name in DESCRIPTOR_NAMES:
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(
            f"bioimage.io descriptor not found: expected {' or '.join(DESCRIPTOR_NAMES)} in "
            f"the folder {p.resolve()}"
        )
    if not p.is_file():
        raise FileNotFoundError(
            f"bioimage.io descriptor not found: expected a bioimageio.yaml file at {p.resolve()} "
            f"(descriptor={str(path)!r}); models are never downloaded, give a local path"
        )
    return p


def _local_file(root: Path, source: Any, what: str) -> Path:
    text = str(source)
    if "://" in text:
        raise ValueError(
            f"{what} is a URL ({text}); segflow never downloads: put the file beside the "
            f"descriptor and point 'source' at it"
        )
    return root / text


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- format 0.5 --------------------------------------------------------------------------------


def _axes_05(axes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for ax in axes:
        kind = ax.get("type")
        ident = ax.get("id") or {"batch": "batch", "channel": "channel", "space": "x"}.get(
            str(kind), str(kind)
        )
        out.append({**ax, "id": str(ident), "type": kind})
    return out


def _axis_size(size: Any, *, tile: int, what: str) -> int:
    """A 0.5 axis size: int; {min, step} -> the allowed size nearest to ``tile``."""
    if isinstance(size, int):
        return size
    if isinstance(size, Mapping) and "min" in size:
        lo, step = int(size["min"]), int(size.get("step", 0) or 0)
        if step <= 0:
            return lo
        k = max(0, round((tile - lo) / step))
        return lo + k * step
    raise ValueError(f"{what}: unsupported size {size!r}; expected an int or {{min, step}}")


def _stat_axes_per_channel(axes: Any) -> bool:
    """True when statistics are per channel (the reduced axes leave the channel out)."""
    if axes is None:
        return False  # all axes reduced: one global statistic
    names = set(axes)  # a list of axis ids (0.5) or a string of axis letters (0.4)
    return "channel" not in names and "c" not in names


def _pre_steps(items: Sequence[Mapping[str, Any]] | None) -> list[Step]:
    steps: list[Step] = []
    for item in items or []:
        ident = str(item.get("id", item.get("name")))
        kw = dict(item.get("kwargs") or {})
        if ident == "ensure_dtype":
            if str(kw.get("dtype", "float32")) != "float32":
                raise ValueError(
                    f"preprocessing ensure_dtype to {kw.get('dtype')!r}; supported: float32"
                )
        elif ident == "zero_mean_unit_variance":
            if str(kw.get("mode", "per_sample")) not in ("per_sample",):
                if kw.get("mode") == "fixed":
                    steps.append(_fixed_zmuv(kw))
                    continue
                raise ValueError(
                    f"zero_mean_unit_variance mode {kw.get('mode')!r}; supported: per_sample, fixed"
                )
            steps.append(
                ZeroMeanUnitVariance(
                    per_channel=_stat_axes_per_channel(kw.get("axes")),
                    eps=float(kw.get("eps", 1e-6)),
                )
            )
        elif ident == "fixed_zero_mean_unit_variance":
            steps.append(_fixed_zmuv(kw))
        elif ident == "scale_range":
            if kw.get("reference_tensor") not in (None, "", "raw"):
                raise ValueError(
                    "scale_range with a reference_tensor other than the input is unsupported"
                )
            steps.append(
                ScaleRange(
                    float(kw.get("min_percentile", 0.0)),
                    float(kw.get("max_percentile", 100.0)),
                    per_channel=_stat_axes_per_channel(kw.get("axes")),
                    eps=float(kw.get("eps", 1e-6)),
                )
            )
        elif ident == "scale_linear":
            steps.append(ScaleLinear(gain=kw.get("gain", 1.0), offset=kw.get("offset", 0.0)))
        elif ident == "clip":
            steps.append(Clip(low=kw.get("min"), high=kw.get("max")))
        else:
            raise ValueError(
                f"preprocessing {ident!r} is not supported; supported: {', '.join(PREPROCESSING)}"
            )
    return steps


def _fixed_zmuv(kw: Mapping[str, Any]) -> Step:
    mean = np.asarray(kw.get("mean", 0.0), dtype=np.float64)
    std = np.asarray(kw.get("std", 1.0), dtype=np.float64)
    eps = float(kw.get("eps", 1e-6))
    gain = 1.0 / (std + eps)
    return ScaleLinear(gain=gain.tolist(), offset=(-mean * gain).tolist())


def _activation(items: Sequence[Mapping[str, Any]] | None) -> Activation:
    activation: Activation = "none"
    for item in items or []:
        ident = str(item.get("id", item.get("name")))
        if ident == "sigmoid":
            activation = "sigmoid"
        elif ident == "softmax":
            activation = "softmax"
        elif ident == "ensure_dtype":
            kw = item.get("kwargs") or {}
            if str(kw.get("dtype", "float32")) != "float32":
                raise ValueError(
                    f"postprocessing ensure_dtype to {kw.get('dtype')!r}; supported: float32"
                )
        else:
            raise ValueError(
                f"postprocessing {ident!r} is not supported; supported: {', '.join(POSTPROCESSING)}"
            )
    return activation


def _weights(doc: Mapping[str, Any], root: Path) -> tuple[Path, str | None]:
    weights = doc.get("weights") or {}
    if "onnx" not in weights:
        raise ValueError(
            f"the descriptor offers weights in {', '.join(weights) or 'no format'}; segflow runs "
            f"only: {', '.join(SUPPORTED_WEIGHTS)}"
        )
    entry = weights["onnx"]
    path = _local_file(root, entry["source"], "weights.onnx.source")
    if not path.is_file():
        raise FileNotFoundError(
            f"ONNX weights named by the descriptor are missing: expected {path.resolve()}"
        )
    return path, entry.get("sha256")


def _test_tensor(
    root: Path,
    tensor: Mapping[str, Any],
    key05: str,
    doc: Mapping[str, Any],
    key04: str,
    index: int,
) -> Path | None:
    source = (
        (tensor.get(key05) or {}).get("source") if isinstance(tensor.get(key05), Mapping) else None
    )
    if source is None:
        listed = doc.get(key04) or []
        source = listed[index] if index < len(listed) else None
    return None if source is None else _local_file(root, source, key05)


def _spec_05(doc: Mapping[str, Any], path: Path, tile: int) -> ModelSpec:
    root = path.parent
    inp, out = doc["inputs"][0], doc["outputs"][0]
    in_axes = _axes_05(inp["axes"])
    out_axes = _axes_05(out["axes"])
    ids = tuple(a["id"] for a in in_axes)
    spatial = [a for a in in_axes if a["type"] == "space"]
    if sorted(a["id"] for a in spatial) != ["x", "y"]:
        raise ValueError(
            f"only 2-D models (space axes y and x) are supported; input axes are {ids}"
        )
    size_of = {
        a["id"]: _axis_size(a.get("size"), tile=tile, what=f"input axis {a['id']}") for a in spatial
    }
    channel = next((a for a in in_axes if a["type"] == "channel"), None)
    channels = len(channel["channel_names"]) if channel and "channel_names" in channel else 1
    out_channel = next((a for a in out_axes if a["type"] == "channel"), None)
    names = tuple(out_channel.get("channel_names", ())) if out_channel else ()
    halo = max([int(a.get("halo", 0) or 0) for a in out_axes if a["type"] == "space"] or [0])
    weights, sha = _weights(doc, root)
    return ModelSpec(
        descriptor=path,
        name=str(doc.get("name", path.parent.name)),
        format_version=str(doc.get("format_version")),
        weights=weights,
        weights_sha256=sha,
        input_axes=ids,
        channels=channels,
        size=(size_of["y"], size_of["x"]),
        halo=halo,
        steps=tuple(_pre_steps(inp.get("preprocessing"))),
        activation=_activation(out.get("postprocessing")),
        output_channels=len(names) if names else 1,
        channel_names=names,
        test_input=_test_tensor(root, inp, "test_tensor", doc, "test_inputs", 0),
        test_output=_test_tensor(root, out, "test_tensor", doc, "test_outputs", 0),
    )


# -- format 0.4 --------------------------------------------------------------------------------

_AXES_04 = {"b": "batch", "c": "channel", "y": "y", "x": "x"}


def _spec_04(doc: Mapping[str, Any], path: Path, tile: int) -> ModelSpec:
    root = path.parent
    inp, out = doc["inputs"][0], doc["outputs"][0]
    letters = str(inp["axes"])
    if set(letters) - set(_AXES_04) or not {"y", "x"} <= set(letters):
        raise ValueError(
            f"only 2-D models with axes from 'bcyx' are supported; input axes are {letters!r}"
        )
    ids = tuple(_AXES_04[a] for a in letters)
    shape = inp["shape"]
    if isinstance(shape, Mapping):
        lo, step = list(shape["min"]), list(shape["step"])
        sizes = {
            a: _axis_size({"min": lo[i], "step": step[i]}, tile=tile, what=f"input axis {a}")
            for i, a in enumerate(letters)
        }
    else:
        sizes = {a: int(shape[i]) for i, a in enumerate(letters)}
    channels = sizes.get("c", 1)
    out_letters = str(out["axes"])
    halo_list = list(out.get("halo") or [0] * len(out_letters))
    halo = max(int(halo_list[i]) for i, a in enumerate(out_letters) if a in "yx")
    pre = []
    for item in inp.get("preprocessing") or []:
        kw = dict(item.get("kwargs") or {})
        if "axes" in kw and isinstance(kw["axes"], str):
            kw["axes"] = [_AXES_04.get(a, a) for a in kw["axes"]]
        pre.append({"id": item.get("name"), "kwargs": kw})
    post = [
        {"id": item.get("name"), "kwargs": item.get("kwargs")}
        for item in out.get("postprocessing") or []
    ]
    weights, sha = _weights(doc, root)
    out_shape = out.get("shape")
    k = 1
    if "c" in out_letters and isinstance(out_shape, Mapping):
        c_index = out_letters.index("c")
        k = round(
            float(out_shape["scale"][c_index]) * channels + 2 * float(out_shape["offset"][c_index])
        )
    elif "c" in out_letters and isinstance(out_shape, Sequence):
        k = int(out_shape[out_letters.index("c")])
    return ModelSpec(
        descriptor=path,
        name=str(doc.get("name", path.parent.name)),
        format_version=str(doc.get("format_version")),
        weights=weights,
        weights_sha256=sha,
        input_axes=ids,
        channels=int(channels),
        size=(sizes["y"], sizes["x"]),
        halo=halo,
        steps=tuple(_pre_steps(pre)),
        activation=_activation(post),
        output_channels=max(1, k),
        channel_names=(),
        test_input=_local_file(root, doc["test_inputs"][0], "test_inputs")
        if doc.get("test_inputs")
        else None,
        test_output=_local_file(root, doc["test_outputs"][0], "test_outputs")
        if doc.get("test_outputs")
        else None,
    )


def read_descriptor(descriptor: str | Path, *, tile: int = 512) -> ModelSpec:
    """Read a bioimage.io model descriptor (a ``bioimageio.yaml`` file or its folder).

    ``tile`` picks the window size among the sizes a parameterised input allows.
    """
    import yaml

    path = _find_descriptor(descriptor)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, Mapping) or doc.get("type", "model") != "model":
        raise ValueError(f"{path} is not a bioimage.io model descriptor (type: model)")
    version = str(doc.get("format_version", ""))
    try:
        if version.startswith("0.5"):
            return _spec_05(doc, path, tile)
        if version.startswith("0.4"):
            return _spec_04(doc, path, tile)
    except KeyError as exc:
        raise ValueError(f"{path}: the descriptor lacks the field {exc}") from exc
    raise ValueError(
        f"{path}: format_version {version!r} is not supported; supported: 0.4.x, 0.5.x"
    )


@register("bioimageio")
class BioimageioSegmenter(OnnxSegmenter):
    """A bioimage.io model (ONNX weights) served with the descriptor's settings.

    Parameters (keyword-only)
    -------------------------
    descriptor : path of ``bioimageio.yaml`` or of the folder holding it
    verify_sha256 : check the weights file against the descriptor's sha256 (default True)
    tile : preferred window size for parameterised inputs (a fixed size wins)
    halo : override the descriptor's halo (None: use it)
    device, threads, batch_size, instances, threshold, h, min_size, class_names : as for ``onnx``
    """

    def __init__(
        self,
        *,
        descriptor: str | Path,
        verify_sha256: bool = True,
        tile: int = 512,
        halo: int | None = None,
        device: str = "auto",
        threads: int | None = None,
        batch_size: int = 4,
        instances: bool = False,
        threshold: float = 0.5,
        h: float = 2.0,
        min_size: int = 16,
        class_names: Sequence[str] | None = None,
    ) -> None:
        spec = read_descriptor(descriptor, tile=tile)
        if verify_sha256 and spec.weights_sha256:
            actual = _sha256(spec.weights)
            if actual != spec.weights_sha256:
                raise ValueError(
                    f"{spec.weights} has sha256 {actual}, the descriptor expects "
                    f"{spec.weights_sha256}; the file is not the model the descriptor describes"
                )
        self.spec = spec
        layout: Layout = "NHWC" if spec.input_axes[-1] == "channel" else "NCHW"
        if class_names is None and len(spec.channel_names) > 1:
            class_names = list(spec.channel_names)  # one channel per class, background first
        super().__init__(
            model_path=spec.weights,
            steps=list(spec.steps),
            activation=spec.activation,
            halo=spec.halo if halo is None else halo,
            tile=spec.size,
            layout=layout,
            device=device,
            threads=threads,
            batch_size=batch_size,
            instances=instances,
            threshold=threshold,
            h=h,
            min_size=min_size,
            class_names=class_names,
        )
        if self.size != spec.size:
            raise ValueError(
                f"the descriptor declares an input of {spec.size} (y, x) but the ONNX model's input "
                f"is {self.size}"
            )
        if self._channels != spec.channels:
            raise ValueError(
                f"the descriptor declares {spec.channels} input channel(s) but the ONNX model "
                f"takes {self._channels}"
            )

    def test_tensors(self) -> tuple[np.ndarray, np.ndarray]:
        """The descriptor's test input and expected output arrays (as stored, axes as declared)."""
        if self.spec.test_input is None or self.spec.test_output is None:
            raise ValueError(f"{self.spec.descriptor} names no test tensors")
        return np.load(self.spec.test_input), np.load(self.spec.test_output)
