"""The segmenter contract shared by every backend.

A segmenter turns one image into a :class:`Segmentation`. The driver
(:func:`segflow.inference.segment_image`) calls its hooks in this order::

    prepared = segmenter.prepare(image)          # whole image: smoothing, local contrast, ...
    segmenter.fit(prepared)                      # whole image: global statistics
    probabilities = predict_tiled(prepared, segmenter.predict, ...)     # "semantic"
      or labels   = label_tiled(prepared, segmenter.label_tile, ...)    # "instances"
    return segmenter.finish(probabilities, image, labels=labels)        # post-processing

Two kinds exist (``output``):

* ``semantic`` segmenters map a batch of tiles ``(N, C, t, t) float32`` to class scores
  ``(N, K, t, t) float32`` (:meth:`Segmenter.predict`). The tiler blends the tiles back into a
  ``(K, H, W)`` map, so any per-pixel model (a threshold, a U-Net, an ONNX file) is served the same
  way. Class 0 is background.
* ``instances`` segmenters label objects: :meth:`Segmenter.label_tile` maps one tile
  ``(C, t, t) float32`` to an ``(t, t) int32`` label map, and tiles are merged by mask overlap into
  one image-wide label map.

Global methods (Otsu, multi-Otsu, k-means) learn their statistics once per image in
:meth:`Segmenter.fit` (on the whole image or a downsampled overview) and then apply them per tile
in a pointwise :meth:`Segmenter.predict`, so tiling never changes their answer. Neighbourhood
operations that a result must not depend on tiling for (gaussian smoothing, a local threshold
surface) belong in :meth:`Segmenter.prepare`, which sees the whole image; clean-up of the
full-size result (opening, small objects, holes, connected components) belongs in
:meth:`Segmenter.finish`.

A segmenter instance keeps per-image state between ``fit`` and ``predict``: use one instance per
thread, and ``fit`` again for every image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from segflow import tiling
from segflow.postprocess import argmax_classes

OutputKind = Literal["semantic", "instances"]


@dataclass
class Segmentation:
    """The result of segmenting one image.

    Attributes
    ----------
    classes : (H, W) int32
        Class id per pixel; 0 is background.
    probabilities : (K, H, W) float32 or None
        Per-class scores summing to 1 per pixel, when the segmenter produces them (``None`` for
        hard decisions such as thresholds, whose scores would be one-hot).
    instances : (H, W) int32 or None
        Instance id per pixel (0 = no instance, 1..N objects), for instance segmenters and for
        semantic segmenters asked to label connected components.
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
    #: True when the backend must see the whole image (a remote API, a flood fill seeded in
    #: image coordinates): the tiler is bypassed and ``predict``/``label_tile`` get the whole
    #: prepared image.
    image_scoped: ClassVar[bool] = False
    #: True when ``predict`` is pointwise on the prepared image, so tiled == untiled exactly.
    pointwise: ClassVar[bool] = False
    #: True when ``label_tile`` accepts an image of any size and gives its best answer on the
    #: whole image (classic labelers): the driver then labels images up to its
    #: ``max_untiled_pixels`` in one call and tiles only larger ones.
    labels_whole_image: ClassVar[bool] = False
    #: ``min_overlap`` for ``stitch.label_tiled``: tile labels are one object when they share
    #: more than this fraction of the smaller one's area in the overlap band (0 = any pixel,
    #: exact for connected components; higher for labelers whose splits wobble between tiles).
    stitch_min_overlap: ClassVar[float] = 0.0

    #: Parameters naming model files or folders: their content enters the run's config hash.
    model_params: ClassVar[tuple[str, ...]] = ("model_path", "descriptor")

    @classmethod
    def model_files(cls, params: Mapping[str, Any]) -> list[Path]:
        """Files or folders whose bytes decide this segmenter's output for ``params``.

        The store's idempotence keys on the config hash, so a retrained model behind the same
        path must change the hash: segflow.config digests the content of what this returns.
        """
        return [Path(str(params[name])) for name in cls.model_params if params.get(name)]

    @property
    def num_classes(self) -> int:
        """K, the number of channels ``predict`` returns (background included)."""
        return 2

    @property
    def class_names(self) -> list[str]:
        """Name of each class id: ``background``, ``foreground``, then ``class_2``, ..."""
        return ["background", "foreground"][: self.num_classes] + [
            f"class_{k}" for k in range(2, self.num_classes)
        ]

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Whole-image transform before tiling: (C, H, W) float32 -> (C', H, W) float32.

        Default: the image itself. ``fit``, ``predict`` and ``label_tile`` see its output.
        """
        return image

    def fit(self, image: np.ndarray) -> None:
        """Learn image-level statistics from ``image`` (C, H, W) float32. Default: nothing."""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class scores for a batch of tiles: (N, C, t, t) float32 -> (N, K, t, t) float32."""
        raise NotImplementedError(f"segmenter {self.name!r} has no per-tile class scores")

    def predict_tiled(
        self, prepared: np.ndarray, *, tile: int, overlap: int, blend: str, batch_size: int
    ) -> np.ndarray:
        """Blended class scores of the whole prepared image: (C, H, W) -> (K, H, W) float32.

        Default: :func:`segflow.tiling.predict_tiled` over :meth:`predict`. A backend on an
        accelerator overrides it to keep the windows and the blending there (same result up to
        float32 rounding).
        """
        return tiling.predict_tiled(
            prepared, self.predict, tile=tile, overlap=overlap, blend=blend, batch_size=batch_size
        )

    def label_tile(self, tile: np.ndarray) -> np.ndarray:
        """Instances of one tile: (C, t, t) float32 -> (t, t) int32 label map (0 = none)."""
        raise NotImplementedError(f"segmenter {self.name!r} does not label instances per tile")

    def finish(
        self,
        probabilities: np.ndarray | None,
        image: np.ndarray,
        *,
        labels: np.ndarray | None = None,
    ) -> Segmentation:
        """Turn the stitched output into a :class:`Segmentation` (post-processing hook).

        Parameters
        ----------
        probabilities : (K, H, W) float32 or None
            Blended ``predict`` output (semantic segmenters), else ``None``.
        image : (C, H, W) float32
            The image as given to the driver (before ``prepare``).
        labels : (H, W) int32 or None
            Stitched ``label_tile`` output (instance segmenters), else ``None``.

        The default takes ``classes = argmax(probabilities)`` (ties go to the lower class id) or,
        without probabilities, ``classes = labels > 0``, and keeps ``labels`` as instances.
        """
        instances = None if labels is None else np.asarray(labels, dtype=np.int32)
        if probabilities is not None:
            classes = argmax_classes(probabilities)
        elif instances is not None:
            classes = (instances > 0).astype(np.int32)
        else:
            raise ValueError("finish needs probabilities or labels; both are None")
        return Segmentation(
            classes=classes,
            probabilities=probabilities,
            instances=instances,
            class_names=self.class_names,
        )
