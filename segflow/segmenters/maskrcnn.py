"""``maskrcnn``: torchvision Mask R-CNN (ResNet-50 FPN, v1 or v2) from a local weights file.

Weights: a state dict saved with ``torch.save(model.state_dict(), path)`` (for instance
torchvision's ``maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth`` or ``maskrcnn_resnet50_fpn_v2_coco-
73cbd019.pth`` copied onto the machine), or a ``.safetensors`` file. It is read with
``torch.load(path, weights_only=True)`` (no pickled code runs) into a model built with
``weights=None, weights_backbone=None``, so nothing is ever downloaded. The number of classes
is read from the weights (``roi_heads.box_predictor.cls_score``); with 91 classes the COCO
category names (torchvision's list, ``N/A`` for unused ids) name them.

Output: instances. Every detection with ``score >= score_threshold`` becomes one instance:
the pixels where its mask probability is ``> mask_threshold``. Masks are painted from the lowest
score to the highest, so where two overlap the more confident one keeps the pixels; an instance
left with fewer than ``min_size`` pixels is dropped. ``Segmentation.classes`` is each pixel's
instance class (0 = background), ``instance_classes`` / ``instance_scores`` give every
instance's class id and detection score.

Large images: the model resizes its input to ``resize_min``..``resize_max`` pixels (800..1333
by default), which would shrink a large image's objects away. Images whose sides both fit in
``tile`` are run whole; larger ones are cut into ``tile`` x ``tile`` windows overlapping by
``overlap`` pixels (:func:`segflow.tiling.tile_grid`, reflection padding) and the window
instances are merged by mask overlap (:func:`segflow.stitch.stitch_instances`). A merged
instance takes the class most of its pixels were given and the mean of its pixels' scores.
This tiling is done here (the segmenter is ``image_scoped``) because the driver's stitching
would not carry classes and scores across tiles.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from segflow.segmenters import register
from segflow.segmenters._torch import (
    autocast,
    check_threads,
    require_file,
    resolve_device,
    set_threads,
)
from segflow.segmenters.base import OutputKind, Segmentation, Segmenter
from segflow.segmenters.onnx import adapt_channels

__all__ = ["COCO_CATEGORIES", "MaskRcnnSegmenter", "build_maskrcnn", "detections_to_labels"]

logger = logging.getLogger(__name__)

Version = Literal["v1", "v2"]
VERSIONS: tuple[str, ...] = ("v1", "v2")

#: torchvision's COCO category names, index = Mask R-CNN class id (``N/A``: unused ids).
COCO_CATEGORIES: tuple[str, ...] = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter",
    "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
    "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A",
    "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


def build_maskrcnn(*, version: str = "v1", num_classes: int = 91, **kwargs: Any) -> Any:
    """A Mask R-CNN ResNet-50 FPN with random weights (``weights=None, weights_backbone=None``)."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2

    if version not in VERSIONS:
        raise ValueError(f"version must be one of {', '.join(VERSIONS)}, got {version!r}")
    factory = maskrcnn_resnet50_fpn if version == "v1" else maskrcnn_resnet50_fpn_v2
    return factory(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)


def _read_state(path: Path) -> dict[str, Any]:
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = dict(load_file(str(path)))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickled objects refused by weights_only
        raise ValueError(
            f"could not read Mask R-CNN weights from {path} ({type(exc).__name__}: {exc}); "
            "expected a state dict saved with torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # torchvision reference-scripts checkpoints
    if not isinstance(state, dict) or "roi_heads.box_predictor.cls_score.weight" not in state:
        raise ValueError(
            f"{path} is not a Mask R-CNN state dict (no roi_heads.box_predictor.cls_score.weight)"
        )
    return state


def detections_to_labels(
    masks: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    *,
    mask_threshold: float,
    min_size: int,
) -> tuple[np.ndarray, dict[int, int], dict[int, float]]:
    """Paint detections into a label map, lowest score first (higher scores win overlaps).

    ``masks`` (N, H, W) float probabilities, ``scores`` (N,), ``classes`` (N,). Returns
    (H, W) int32 labels 1..M (detections left with fewer than ``min_size`` pixels dropped, ids
    in descending score order), and each id's class and score.
    """
    n, height, width = masks.shape if masks.ndim == 3 else (0, *masks.shape[-2:])
    labels = np.zeros((height, width), dtype=np.int32)
    if n == 0:
        return labels, {}, {}
    order = np.argsort(-np.asarray(scores), kind="stable")  # id r + 1 = the r-th best detection
    for rank in range(n - 1, -1, -1):  # worst first, so better detections overwrite
        labels[masks[order[rank]] > mask_threshold] = rank + 1
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = [i for i in range(1, n + 1) if sizes[i] >= max(min_size, 1)]
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    out = lut[labels]
    cls = {j + 1: int(classes[order[i - 1]]) for j, i in enumerate(keep)}
    sc = {j + 1: float(scores[order[i - 1]]) for j, i in enumerate(keep)}
    return out, cls, sc


@register("maskrcnn")
class MaskRcnnSegmenter(Segmenter):
    """Instances (class, score, mask) with a torchvision Mask R-CNN from a local weights file.

    Parameters (keyword-only)
    -------------------------
    model_path : ``.pth``/``.pt`` state dict or ``.safetensors`` file
    version : ``v1`` (``maskrcnn_resnet50_fpn``) | ``v2`` (``maskrcnn_resnet50_fpn_v2``)
    class_names : names of the classes (default: COCO's for 91 classes, else ``class_k``)
    score_threshold : keep detections scoring at least this (also the model's
        ``box_score_thresh``); ``mask_threshold`` : mask probability cut; ``min_size`` : pixels
    max_detections : detections per image (window)
    resize_min, resize_max : the model's internal resizing (torchvision defaults 800, 1333)
    tile, overlap : window size and overlap for images larger than ``tile``
    device : ``auto | cpu | cuda | cuda:N``; ``threads``: ``torch.set_num_threads`` when given;
    ``amp``: float16 autocast on CUDA; ``batch_size``: windows per forward pass
    """

    output: ClassVar[OutputKind] = "instances"
    image_scoped: ClassVar[bool] = True

    def __init__(
        self,
        *,
        model_path: str | Path,
        version: Version = "v1",
        class_names: Sequence[str] | None = None,
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        min_size: int = 1,
        max_detections: int = 100,
        resize_min: int = 800,
        resize_max: int = 1333,
        tile: int = 1024,
        overlap: int = 128,
        device: str = "auto",
        threads: int | None = None,
        amp: bool = True,
        batch_size: int = 2,
    ) -> None:
        import torch

        if version not in VERSIONS:
            raise ValueError(f"version must be one of {', '.join(VERSIONS)}, got {version!r}")
        for name, value in (
            ("score_threshold", score_threshold),
            ("mask_threshold", mask_threshold),
        ):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if min_size < 0 or max_detections < 1 or batch_size < 1:
            raise ValueError(
                f"need min_size >= 0, max_detections >= 1, batch_size >= 1; got {min_size}, "
                f"{max_detections}, {batch_size}"
            )
        if tile < 32 or not 0 <= overlap < tile:
            raise ValueError(
                f"need tile >= 32 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}"
            )
        path = require_file(
            Path(model_path).expanduser(),
            what="Mask R-CNN weights",
            hint="a state dict saved with torch.save(model.state_dict(), path), e.g. torchvision's "
            "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
        )
        self.threads = check_threads(threads)
        self.device = resolve_device(device)
        set_threads(self.threads)
        state = _read_state(path)
        k = int(state["roi_heads.box_predictor.cls_score.weight"].shape[0])
        model = build_maskrcnn(
            version=version,
            num_classes=k,
            box_score_thresh=float(score_threshold),
            box_detections_per_img=int(max_detections),
            min_size=int(resize_min),
            max_size=int(resize_max),
        )
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            other = "v2" if version == "v1" else "v1"
            raise ValueError(
                f"the weights in {path} do not fit Mask R-CNN {version} with {k} classes "
                f"(try version={other!r}): {str(exc)[:400]}"
            ) from exc
        if class_names is not None and len(class_names) != k:
            raise ValueError(
                f"class_names has {len(class_names)} names, the weights have {k} classes"
            )
        self._class_names = (
            list(class_names)
            if class_names is not None
            else (
                list(COCO_CATEGORIES)
                if k == len(COCO_CATEGORIES)
                else ["background", *(f"class_{i}" for i in range(1, k))]
            )
        )
        self._class_names[0] = "background"
        self.model_path = path
        self.model = model.eval().to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.score_threshold = float(score_threshold)
        self.mask_threshold = float(mask_threshold)
        self.min_size = int(min_size)
        self.tile, self.overlap = int(tile), int(overlap)
        self.amp = bool(amp)
        self.batch_size = int(batch_size)
        self._last: tuple[np.ndarray, dict[int, int], dict[int, float]] | None = None

    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    # -- running the model -------------------------------------------------------------------

    def detect(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Raw detections of (3, H, W) float32 images: dicts of boxes, labels, scores, masks."""
        import torch

        tensors = [
            torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32)).to(self.device)
            for im in images
        ]
        with torch.inference_mode(), autocast(self.device, enabled=self.amp):
            outs = self.model(tensors)
        return [
            {
                "boxes": o["boxes"].float().cpu().numpy(),
                "labels": o["labels"].cpu().numpy(),
                "scores": o["scores"].float().cpu().numpy(),
                "masks": o["masks"][:, 0].float().cpu().numpy(),
            }
            for o in outs
        ]

    def _label(
        self, det: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[int, int], dict[int, float]]:
        keep = det["scores"] >= self.score_threshold
        return detections_to_labels(
            det["masks"][keep],
            det["scores"][keep],
            det["labels"][keep],
            mask_threshold=self.mask_threshold,
            min_size=self.min_size,
        )

    def label_tile(self, tile: np.ndarray) -> np.ndarray:
        """Instances of the whole image (C, H, W) float32 -> (H, W) int32 (tiled when large)."""
        from segflow.stitch import stitch_instances
        from segflow.tiling import pad_to_tile, tile_grid

        image = adapt_channels(np.asarray(tile, dtype=np.float32), 3)
        _, height, width = image.shape
        if height <= self.tile and width <= self.tile:
            self._last = self._label(self.detect([image])[0])
            return self._last[0]
        padded, _ = pad_to_tile(image, self.tile)
        hp, wp = padded.shape[1:]
        windows = tile_grid(hp, wp, tile=self.tile, overlap=self.overlap)
        tiles: list[tuple[Any, np.ndarray]] = []
        cls_map = np.zeros((hp, wp), dtype=np.int32)
        score_map = np.zeros((hp, wp), dtype=np.float32)
        for k in range(0, len(windows), self.batch_size):
            chunk = windows[k : k + self.batch_size]
            dets = self.detect([padded[:, w.y : w.y + w.h, w.x : w.x + w.w] for w in chunk])
            for w, det in zip(chunk, dets, strict=True):
                labels, classes, scores = self._label(det)
                tiles.append((w, labels))
                inside = labels > 0
                c_lut = np.zeros(len(classes) + 1, dtype=np.int32)
                s_lut = np.zeros(len(classes) + 1, dtype=np.float32)
                for i in classes:
                    c_lut[i], s_lut[i] = classes[i], scores[i]
                region = (slice(w.y, w.y + w.h), slice(w.x, w.x + w.w))
                cls_map[region][inside] = c_lut[labels][inside]
                score_map[region][inside] = s_lut[labels][inside]
        stitched = stitch_instances(tiles, height=hp, width=wp, min_overlap=0.3)
        labels = stitched[:height, :width]
        self._last = self._vote(labels, cls_map[:height, :width], score_map[:height, :width])
        return self._last[0]

    def _vote(
        self, labels: np.ndarray, cls_map: np.ndarray, score_map: np.ndarray
    ) -> tuple[np.ndarray, dict[int, int], dict[int, float]]:
        from skimage.segmentation import relabel_sequential

        labels = relabel_sequential(labels)[0].astype(np.int32)
        n = int(labels.max(initial=0))
        if n == 0:
            return labels, {}, {}
        flat = labels.ravel()
        k = self.num_classes
        votes = np.bincount(flat * k + cls_map.ravel(), minlength=(n + 1) * k).reshape(n + 1, k)
        votes[:, 0] = 0
        counts = np.bincount(flat, minlength=n + 1)
        mean_score = np.bincount(flat, weights=score_map.ravel(), minlength=n + 1) / np.maximum(
            counts, 1
        )
        classes = {i: int(votes[i].argmax()) for i in range(1, n + 1)}
        scores = {i: float(mean_score[i]) for i in range(1, n + 1)}
        return labels, classes, scores

    def finish(
        self,
        probabilities: np.ndarray | None,
        image: np.ndarray,
        *,
        labels: np.ndarray | None = None,
    ) -> Segmentation:
        """Instances with their classes and scores; ``classes`` = each pixel's instance class."""
        if labels is None:
            raise ValueError("maskrcnn finish needs the labels of label_tile")
        labels = np.asarray(labels, dtype=np.int32)
        if (
            self._last is not None
            and self._last[0].shape == labels.shape
            and np.array_equal(self._last[0], labels)
        ):
            _, classes, scores = self._last
        else:  # labels from elsewhere: no detection record, class 1 and score 1 by convention
            classes = {int(i): 1 for i in np.unique(labels) if i}
            scores = {i: 1.0 for i in classes}
        lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
        for i, c in classes.items():
            lut[i] = c
        return Segmentation(
            classes=lut[labels],
            probabilities=None,
            instances=labels,
            instance_classes=dict(classes),
            instance_scores=dict(scores),
            class_names=self.class_names,
        )
