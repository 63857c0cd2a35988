"""The segmenter contract shared by every backend.

A segmenter turns one image into a :class:`Segmentation`. Two kinds exist:

* ``semantic`` segmenters map a batch of tiles ``(N, C, t, t) float32`` to class scores
  ``(N, K, t, t) float32`` (:meth:`Segmenter.predict`). The tiler blends the tiles back into a
  ``(K, H, W)`` map, so any per-pixel model (a threshold, a U-Net, an ONNX file) is served the same
  way. Class 0 is background.
* ``instances`` segmenters additionally (or only) label objects: :meth:`Segmenter.label_tile` maps
  one tile ``(C, t, t) float32`` to an ``(t, t) int32`` label map, and tiles are merged by mask
  overlap into one image-wide label map.

Global methods (Otsu, multi-Otsu, k-means) learn their statistics once per image in
:meth:`Segmenter.fit` (on the whole image or a downsampled overview) and then apply them per tile,
so tiling never changes their answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

OutputKind = Literal["semantic", "instances"]


@dataclass
class Segmentation:
    """The result of segmenting one image.

    Attributes
    ----------
    classes : (H, W) int32
        Class id per pixel; 0 is background.
    probabilities : (K, H, W) float32 or None
        Per-class scores summing to 1 per pixel, when the segmenter produces them.
    instances : (H, W) int32 or None
        Instance id per pixel (0 = no instance, 1..N objects), for instance segmenters.
    instance_classes : dict[int, int]
        Class id of each instance id (absent ids default to class 1).
    instance_scores : dict[int, float]
        Confidence of each instance id (absent ids default to 1.0).
    class_names : list[str]
        Name of each class id, index 0 being background.
    """

    classes: np.ndarray
    probabilities: np.ndarray | None = None
    instances: np.ndarray | None = None
    instance_classes: dict[int, int] = field(default_factory=dict)
    instance_scores: dict[int, float] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=lambda: ["background", "foreground"])


class Segmenter:
    """Base class: subclasses set ``name`` and ``output`` and override what they support."""

    name: ClassVar[str] = ""
    output: ClassVar[OutputKind] = "semantic"
    #: True when the backend must see the whole image (a remote API): the tiler is bypassed.
    image_scoped: ClassVar[bool] = False
    #: True when ``predict`` is pointwise, so tiled == untiled exactly.
    pointwise: ClassVar[bool] = False

    @property
    def num_classes(self) -> int:
        """K, the number of channels ``predict`` returns (background included)."""
        return 2

    @property
    def class_names(self) -> list[str]:
        return ["background", "foreground"][: self.num_classes] + [
            f"class_{k}" for k in range(2, self.num_classes)
        ]

    def fit(self, image: np.ndarray) -> None:  # noqa: B027 - optional hook
        """Learn image-level statistics from ``image`` (C, H, W) float32. Default: nothing."""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class scores for a batch of tiles: (N, C, t, t) float32 -> (N, K, t, t) float32."""
        raise NotImplementedError(f"segmenter {self.name!r} has no per-tile class scores")

    def label_tile(self, tile: np.ndarray) -> np.ndarray:
        """Instances of one tile: (C, t, t) float32 -> (t, t) int32 label map."""
        raise NotImplementedError(f"segmenter {self.name!r} does not label instances per tile")
