"""``transformers``: Hugging Face segmentation models from a local folder, never from the Hub.

The folder is what ``model.save_pretrained(folder)`` and ``processor.save_pretrained(folder)``
write: ``config.json``, ``model.safetensors`` (or ``pytorch_model.bin``) and optionally
``preprocessor_config.json``. Everything is loaded with ``local_files_only=True`` after
``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` are set (unless already set), so a missing file
fails in seconds with the expected path instead of waiting on a network. Without
``preprocessor_config.json`` the model family's default image processor is built locally.

Supported architectures (``config.json``'s ``architectures``) and what they give:

=====================================  ===================  ===================================
architecture                           ``task`` (default)   output
=====================================  ===================  ===================================
``SegformerForSemanticSegmentation``   ``semantic``         class probabilities (softmax of the
                                                            logits, upsampled bilinearly)
``Mask2FormerForUniversalSegmentation`` ``instance``        instances (also ``panoptic`` or
                                                            ``semantic``)
``MaskFormerForInstanceSegmentation``  ``instance``         as Mask2Former
``DetrForSegmentation``                ``panoptic``         instances (also ``instance``)
=====================================  ===================  ===================================

Class ids. ``semantic``: the model's label ids as they are (``id2label`` names them; class 0 is
whatever the model calls label 0, e.g. ADE20K's "wall"). ``instance`` / ``panoptic``: 0 is
background (pixels no segment claims) and a segment of label ``l`` has class ``l + 1``;
``class_names`` = ``["background", *id2label]``.

Serving:

* ``semantic`` with ``strategy="tile"`` (default): the model runs at the image's native
  resolution. Images up to ``tile`` x ``tile`` are one forward pass; larger ones are tiled
  (``tile``, ``overlap``, ``blend``; :func:`segflow.tiling.predict_tiled`) and blended. The
  processor's mean/std normalisation is applied, its resizing is not (the image is already in
  [0, 1], which is what its 1/255 rescale gives). ``strategy="resize"``: the processor resizes
  the whole image as in the model's tutorial and the logits are resized back.
* ``instance`` / ``panoptic``: the whole image goes through the processor (its resizing) and
  the model, then the processor's ``post_process_instance_segmentation`` /
  ``post_process_panoptic_segmentation`` (``threshold``, ``mask_threshold``,
  ``overlap_mask_area_threshold``) at the image's size. Segments become instances with the
  segment's class and score; ``probabilities`` is the one-hot of the per-pixel class.

The segmenter is ``image_scoped``: it gets whole images and does the tiling above itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from segflow.segmenters import register
from segflow.segmenters._torch import (
    autocast,
    check_threads,
    offline_hub,
    predict_tiled_on_device,
    require_file,
    resolve_device,
    set_threads,
)
from segflow.segmenters.base import Segmentation, Segmenter
from segflow.segmenters.onnx import adapt_channels, one_hot

__all__ = ["ARCHITECTURES", "TransformersSegmenter", "load_local"]

logger = logging.getLogger(__name__)

Task = Literal["auto", "semantic", "instance", "panoptic"]
Strategy = Literal["tile", "resize"]

#: architecture -> (default task, allowed tasks, default image processor class)
ARCHITECTURES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "SegformerForSemanticSegmentation": ("semantic", ("semantic",), "SegformerImageProcessor"),
    "Mask2FormerForUniversalSegmentation": (
        "instance",
        ("instance", "panoptic", "semantic"),
        "Mask2FormerImageProcessor",
    ),
    "MaskFormerForInstanceSegmentation": (
        "instance",
        ("instance", "panoptic", "semantic"),
        "MaskFormerImageProcessor",
    ),
    "DetrForSegmentation": ("panoptic", ("panoptic", "instance"), "DetrImageProcessor"),
}

WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")


def load_local(model_path: str | Path) -> tuple[Any, Any, str]:
    """``(model, image processor, architecture)`` from a local folder (see the module doc)."""
    offline_hub()
    folder = Path(model_path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"transformers model folder not found: expected a folder with config.json and "
            f"model.safetensors at {folder.resolve()} (model_path={str(model_path)!r}); write one "
            "with model.save_pretrained(folder). Weights are never downloaded."
        )
    require_file(
        folder / "config.json",
        what="transformers model",
        hint="the model config written by model.save_pretrained(folder)",
    )
    if not any((folder / name).is_file() for name in WEIGHT_FILES) and not any(
        folder.glob("model-*.safetensors")
    ):
        raise FileNotFoundError(
            f"transformers model: expected weights ({' or '.join(WEIGHT_FILES)}) in "
            f"{folder.resolve()}, found {sorted(p.name for p in folder.iterdir())}; "
            "write them with model.save_pretrained(folder). Weights are never downloaded."
        )
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    archs = list(getattr(config, "architectures", None) or [])
    arch = next((a for a in archs if a in ARCHITECTURES), None)
    if arch is None:
        raise ValueError(
            f"{folder / 'config.json'} declares architectures {archs}; supported: "
            f"{', '.join(ARCHITECTURES)}"
        )
    model_cls = getattr(transformers, arch)
    model = model_cls.from_pretrained(str(folder), local_files_only=True)
    if (folder / "preprocessor_config.json").is_file():
        processor = transformers.AutoImageProcessor.from_pretrained(
            str(folder), local_files_only=True
        )
    else:
        processor = getattr(transformers, ARCHITECTURES[arch][2])()
    return model.eval(), processor, arch


@register("transformers")
class TransformersSegmenter(Segmenter):
    """Segformer / Mask2Former / MaskFormer / DETR from a local folder (see the module doc).

    Parameters (keyword-only)
    -------------------------
    model_path : folder written by ``save_pretrained``
    task : ``auto`` (the architecture's default) | ``semantic`` | ``instance`` | ``panoptic``
    strategy : ``tile`` | ``resize`` (semantic models)
    tile, overlap, blend, batch_size : tiling of semantic models at native resolution
    threshold, mask_threshold, overlap_mask_area_threshold : instance/panoptic post-processing
    min_size : instances smaller than this (pixels) are dropped
    device : ``auto | cpu | cuda | cuda:N``; ``threads``: ``torch.set_num_threads`` when given;
    ``amp``: float16 autocast (and ``channels_last``) on CUDA only
    """

    image_scoped: ClassVar[bool] = True

    def __init__(
        self,
        *,
        model_path: str | Path,
        task: Task = "auto",
        strategy: Strategy = "tile",
        tile: int = 512,
        overlap: int = 64,
        blend: str = "gaussian",
        batch_size: int = 4,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        min_size: int = 0,
        device: str = "auto",
        threads: int | None = None,
        amp: bool = True,
    ) -> None:
        import torch

        from segflow.tiling import BLEND_MODES, tile_grid

        if strategy not in ("tile", "resize"):
            raise ValueError(f"strategy must be one of tile, resize, got {strategy!r}")
        if blend not in BLEND_MODES:
            raise ValueError(f"blend must be one of {', '.join(BLEND_MODES)}, got {blend!r}")
        tile_grid(tile, tile, tile=tile, overlap=overlap)  # validates tile and overlap
        for name, value in (
            ("threshold", threshold),
            ("mask_threshold", mask_threshold),
            ("overlap_mask_area_threshold", overlap_mask_area_threshold),
        ):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if batch_size < 1 or min_size < 0:
            raise ValueError(
                f"need batch_size >= 1 and min_size >= 0, got {batch_size}, {min_size}"
            )
        self.threads = check_threads(threads)
        self.device = resolve_device(device)
        set_threads(self.threads)
        model, self.processor, self.architecture = load_local(model_path)
        default_task, tasks, _ = ARCHITECTURES[self.architecture]
        chosen = default_task if task == "auto" else task
        if chosen not in tasks:
            raise ValueError(
                f"task {task!r} is not available for {self.architecture}; allowed: auto, {', '.join(tasks)}"
            )
        self.task = chosen
        self.model_path = Path(model_path)
        self.model = model.to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.strategy = strategy
        self.tile, self.overlap, self.blend = int(tile), int(overlap), blend
        self.batch_size = int(batch_size)
        self.threshold = float(threshold)
        self.mask_threshold = float(mask_threshold)
        self.overlap_mask_area_threshold = float(overlap_mask_area_threshold)
        self.min_size = int(min_size)
        self.amp = bool(amp)
        id2label = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
        n_labels = int(model.config.num_labels)
        labels = [id2label.get(i, f"label_{i}") for i in range(n_labels)]
        self._class_names = labels if self.task == "semantic" else ["background", *labels]
        self._last: tuple[np.ndarray, dict[int, int], dict[int, float]] | None = None

    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    # -- semantic ----------------------------------------------------------------------------

    def _normalise(self, batch: np.ndarray) -> np.ndarray:
        x = batch
        if getattr(self.processor, "do_normalize", True):
            mean = np.asarray(getattr(self.processor, "image_mean", [0.5] * 3), dtype=np.float32)
            std = np.asarray(getattr(self.processor, "image_std", [0.5] * 3), dtype=np.float32)
            x = (x - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)
        # torch.from_numpy needs writable memory; predict_tiled passes read-only views
        return np.require(x, dtype=np.float32, requirements=["C", "W"])

    def _semantic_logits(self, pixel_values: Any) -> Any:
        import torch

        out = self.model(pixel_values=pixel_values)
        if hasattr(out, "logits"):
            return out.logits
        # MaskFormer family in semantic mode: combine class and mask predictions
        classes = out.class_queries_logits.softmax(dim=-1)[..., :-1]
        masks = out.masks_queries_logits.sigmoid()
        return torch.einsum("bqc,bqhw->bchw", classes, masks).clamp_min(1e-6).log()

    def predict_tiles(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, h, w) float32 in [0, 1] -> (N, K, h, w) class probabilities at native size."""
        import torch

        x = self._normalise(adapt_channels(np.asarray(batch, dtype=np.float32), 3))
        probs = self._probabilities(torch.from_numpy(x).to(self.device))
        return np.asarray(probs.cpu().numpy(), dtype=np.float32)  # no copy: float32 already

    def _probabilities(self, pixel_values: Any) -> Any:
        """Normalised (N, 3, h, w) float32 tensor on the device -> (N, K, h, w) probabilities."""
        import torch

        if self.device.type == "cuda":
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.device, enabled=self.amp):
            logits = self._semantic_logits(pixel_values).float()
            logits = torch.nn.functional.interpolate(
                logits, size=tuple(pixel_values.shape[2:]), mode="bilinear", align_corners=False
            )
            return torch.softmax(logits, dim=1)

    def _semantic(self, image: np.ndarray) -> np.ndarray:
        from segflow.tiling import predict_tiled

        _, height, width = image.shape
        if self.strategy == "resize":
            return self._resized_semantic(image)
        if height <= self.tile and width <= self.tile:
            return self.predict_tiles(image[None])[0]
        if self.device.type == "cuda":
            return self._tiled_on_device(image)
        return predict_tiled(
            image,
            self.predict_tiles,
            tile=self.tile,
            overlap=self.overlap,
            blend=self.blend,
            batch_size=self.batch_size,
        )

    def _tiled_on_device(self, image: np.ndarray) -> np.ndarray:
        """``_semantic``'s tiles cut and blended on the model's device (used on CUDA).

        Channels and normalisation are per pixel, so they are applied to the whole image once;
        the result equals the numpy tiler's up to float32 rounding.
        """
        return predict_tiled_on_device(
            self._normalise(adapt_channels(image[None], 3))[0],
            self._probabilities,
            device=self.device,
            tile=self.tile,
            overlap=self.overlap,
            blend=self.blend,
            batch_size=self.batch_size,
        )

    def _processor_inputs(self, image: np.ndarray) -> Any:
        rgb = np.clip(np.rint(adapt_channels(image, 3) * 255.0), 0, 255).astype(np.uint8)
        inputs = self.processor(images=[rgb.transpose(1, 2, 0)], return_tensors="pt")
        return {k: v.to(self.device) for k, v in inputs.items()}

    def _resized_semantic(self, image: np.ndarray) -> np.ndarray:
        import torch

        _, height, width = image.shape
        inputs = self._processor_inputs(image)
        with torch.inference_mode(), autocast(self.device, enabled=self.amp):
            logits = self._semantic_logits(inputs["pixel_values"]).float()
            logits = torch.nn.functional.interpolate(
                logits, size=(height, width), mode="bilinear", align_corners=False
            )
            probs = torch.softmax(logits, dim=1)
        return probs[0].cpu().numpy().astype(np.float32)

    # -- instance / panoptic -----------------------------------------------------------------

    def segments(self, image: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The processor's post-processed (H, W) segment ids and segments_info of one image."""
        import torch

        _, height, width = image.shape
        inputs = self._processor_inputs(image)
        with torch.inference_mode(), autocast(self.device, enabled=self.amp):
            outputs = self.model(**inputs)
        post = (
            self.processor.post_process_instance_segmentation
            if self.task == "instance"
            else self.processor.post_process_panoptic_segmentation
        )
        result = post(
            outputs,
            threshold=self.threshold,
            mask_threshold=self.mask_threshold,
            overlap_mask_area_threshold=self.overlap_mask_area_threshold,
            target_sizes=[(height, width)],
        )[0]
        seg = result["segmentation"]
        seg_np = (
            np.full((height, width), -1, dtype=np.int64)
            if seg is None
            else np.asarray(seg.cpu().numpy(), dtype=np.int64)
        )
        return seg_np, list(result["segments_info"])

    def _instances(self, image: np.ndarray) -> tuple[np.ndarray, dict[int, int], dict[int, float]]:
        seg, infos = self.segments(image)
        labels = np.zeros(seg.shape, dtype=np.int32)
        classes: dict[int, int] = {}
        scores: dict[int, float] = {}
        next_id = 1
        for info in infos:
            where = seg == int(info["id"])
            if int(where.sum()) <= max(self.min_size - 1, 0):
                continue
            labels[where] = next_id
            classes[next_id] = int(info["label_id"]) + 1
            scores[next_id] = float(info.get("score", 1.0))
            next_id += 1
        return labels, classes, scores

    # -- Segmenter API -----------------------------------------------------------------------

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Whole images (N, C, H, W) float32 -> (N, K, H, W) class probabilities."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4:
            raise ValueError(f"batch must be (N, C, H, W), got shape {batch.shape}")
        out = []
        for image in batch:
            if self.task == "semantic":
                out.append(self._semantic(image))
                continue
            labels, classes, scores = self._instances(image)
            self._last = (labels, classes, scores)
            lut = np.zeros(len(classes) + 1, dtype=np.int64)
            for i, c in classes.items():
                lut[i] = c
            out.append(one_hot(lut[labels][None], self.num_classes)[0])
        return np.stack(out)

    def finish(
        self,
        probabilities: np.ndarray | None,
        image: np.ndarray,
        *,
        labels: np.ndarray | None = None,
    ) -> Segmentation:
        """Argmax classes; for instance/panoptic models the segments of the last ``predict``."""
        seg = super().finish(probabilities, image, labels=labels)
        if self.task != "semantic" and self._last is not None:
            inst, classes, scores = self._last
            if inst.shape == seg.classes.shape:
                seg.instances = inst
                seg.instance_classes = dict(classes)
                seg.instance_scores = dict(scores)
        return seg

    def label_tile(self, tile: np.ndarray) -> np.ndarray:
        """Instances of a whole image (C, H, W) -> (H, W) int32 (connected classes for semantic)."""
        image = np.asarray(tile, dtype=np.float32)
        if self.task == "semantic":
            from scipy import ndimage as ndi

            classes = self._semantic(image).argmax(axis=0)
            return ndi.label(classes > 0)[0].astype(np.int32)
        labels, classes_, scores = self._instances(image)
        self._last = (labels, classes_, scores)
        return labels
