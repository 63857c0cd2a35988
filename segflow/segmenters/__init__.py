"""Segmenter registry: ``available()`` lists names, ``create(name, **params)`` builds one.

Each backend is one module that registers its classes with :func:`register`. Modules with heavy
imports (torch, transformers, cloudinary) are listed in ``_LAZY_MODULES`` and imported only when
one of their names is asked for, so the core installs and runs without them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from segflow.segmenters.base import Segmentation, Segmenter

__all__ = ["Segmentation", "Segmenter", "available", "create", "get_class", "register"]

_REGISTRY: dict[str, type[Segmenter]] = {}

# name -> module that registers it; imported on first use because it needs optional packages.
_LAZY_MODULES: dict[str, str] = {
    "onnx": "segflow.segmenters.onnx",
    "bioimageio": "segflow.segmenters.bioimageio",
    "tflite": "segflow.segmenters.tflite",
    "cloudinary": "segflow.segmenters.cloudinary",
    "nuclei": "segflow.segmenters.nuclei",
    "unet": "segflow.segmenters.torch_unet",
    "maskrcnn": "segflow.segmenters.maskrcnn",
    "transformers": "segflow.segmenters.hf",
}

_EAGER_MODULES = ("segflow.segmenters.classic",)

S = TypeVar("S", bound=type[Segmenter])


def register(name: str) -> Callable[[S], S]:
    """Class decorator that registers a :class:`Segmenter` subclass under ``name``."""

    def deco(cls: S) -> S:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"segmenter name {name!r} is already registered by {_REGISTRY[name]}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_eager() -> None:
    for module in _EAGER_MODULES:
        importlib.import_module(module)


def available() -> list[str]:
    """Sorted names of every segmenter, including those whose optional packages are missing."""
    _load_eager()
    return sorted(set(_REGISTRY) | set(_LAZY_MODULES))


def get_class(name: str) -> type[Segmenter]:
    """The class registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    _load_eager()
    if name not in _REGISTRY and name in _LAZY_MODULES:
        try:
            importlib.import_module(_LAZY_MODULES[name])
        except ImportError as exc:
            raise ImportError(
                f"segmenter {name!r} needs an optional package that is not installed: {exc}"
            ) from exc
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown segmenter {name!r}; available segmenters are: {', '.join(available())}"
        ) from None


def create(name: str, **params: Any) -> Segmenter:
    """Build the segmenter registered as ``name`` with keyword ``params``.

    Raises ``ValueError`` naming the valid segmenters when ``name`` is unknown, and the
    backend's own ``ValueError``/``TypeError`` when a parameter is wrong.
    """
    cls = get_class(name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise TypeError(f"bad parameters for segmenter {name!r}: {exc}") from exc
