"""Typed run configuration: the one parameter of the ``segment_batch`` flow.

:class:`RunConfig` is a pydantic model, so the Prefect UI renders it as a form and validates it,
and the CLI builds it from its arguments. :meth:`RunConfig.config_hash` identifies everything that
changes a result (segmenter, its parameters, tiling, preprocessing, ground-truth reading, segflow's
major version); together with an image's sha256 it is the store's idempotence key. Where the
input lives, where the output goes, chunking and forcing do not change results and are left out.

The core never holds untyped ``params: dict`` objects: segmenter parameters are a mapping of
scalars validated here and become keyword arguments only in :meth:`RunConfig.create_segmenter`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

import segflow
from segflow import segmenters
from segflow.coco import is_coco_path
from segflow.io import DEFAULT_MAX_PIXELS
from segflow.large import DEFAULT_LARGE_PIXELS
from segflow.segmenters.base import Segmenter

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_EXTENSIONS",
    "PREPROCESS_ID",
    "RunConfig",
    "Scalar",
    "apply_malloc_settings",
    "apply_thread_limits",
    "default_workers",
    "parse_scalar",
    "parse_set",
]

logger = logging.getLogger(__name__)

#: A segmenter parameter value: JSON scalars only (strict, so ``"3"`` stays a string).
Scalar = StrictBool | StrictInt | StrictFloat | StrictStr

#: Images per task run, chosen by measurement (``benchmarks/pipeline.py --chunk-sweep``: 64 Otsu
#: images of 1024x1024, 2 workers, shared 2-core machine, ms per image): 1 -> 43.5 (69 task
#: runs), 2 -> 34.8, 4 -> 29.0, 8 -> 25.9, 16 -> 24.4 (9 task runs), 32 -> 24.0; on 200 images
#: (interleaved, medians of 4-5 runs) 8 -> 4.6-4.9 s, 12 -> 4.3-4.4, 16 -> 4.3-4.5, 20 -> 4.3,
#: 25 -> 4.35. Each task run costs tens of ms of Prefect bookkeeping (in the flow's process and
#: in the API server); much larger chunks leave one worker idle at the end of small batches.
DEFAULT_CHUNK_SIZE = 16

DEFAULT_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
    ".zarr",  # a folder: a Zarr array / OME-Zarr image, streamed by window (segflow.large)
)

#: Identifies the preprocessing step (``segflow.preprocess.to_float_chw``) in the config hash;
#: bump it when that step changes its output.
PREPROCESS_ID = "to_float_chw/1"


@lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are part of the cache key so an overwritten file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_digest(path: Path) -> str | None:
    """sha256 of a model file, or of a model folder's files (names and bytes); None if absent."""
    if path.is_file():
        st = path.stat()
        return _file_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)
    if path.is_dir():
        digest = hashlib.sha256()
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(item.relative_to(path)).encode())
            digest.update((content_digest(item) or "").encode())
        return digest.hexdigest()
    return None  # the segmenter itself reports the missing file, naming what it expected


def _major_version() -> str:
    return segflow.__version__.split(".")[0]


def url_has_credentials(value: str) -> bool:
    """Whether ``value`` is a URL with a user-info part holding a secret (``user:pw@``, or any
    user name for http(s), where ``https://TOKEN@host`` is a common way to pass a token)."""
    if "://" not in value:
        return False
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    if parts.password is not None:
        return True
    return parts.username is not None and parts.scheme.lower() in ("http", "https")


def mask_url_credentials(value: str) -> str:
    """``value`` with its user-info part replaced by ``***`` (for messages)."""
    scheme, sep, rest = value.partition("://")
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return f"{scheme}{sep}{netloc}{slash}{path}"


class RunConfig(BaseModel):
    """Everything one ``segment_batch`` run needs.

    Attributes
    ----------
    input : str
        Folder or fsspec URL (``file://``, ``memory://``, ``s3://`` with s3fs) of the images.
    out : str
        Local folder of the Parquet store (``metrics/``, ``masks/``, ``errors/``, ``runs/``)
        and ``overlays/``.
    segmenter : str
        Registered segmenter name (``segflow.segmenters.available()``).
    segmenter_params : dict[str, bool | int | float | str]
        Keyword arguments of the segmenter.
    ground_truth : str or None
        Folder or URL of label images (or ``*.zarr`` label arrays) matching the images'
        relative paths by stem, a COCO annotation file (``.json``; pairing and label maps:
        :mod:`segflow.coco`), or ``"ome-labels:NAME"``: each OME-Zarr image's own label image
        ``labels/NAME`` (:func:`segflow.ingest.ome_label_uri`).
    gt_format : "binary" | "instances" | "classes"
        How label images are read: non-zero = foreground; each non-zero id one object;
        the value is the class id.
    gt_ignore : int or None
        Label value whose pixels no score counts, in any format (PASCAL VOC's 255 "void"
        border): left out of the foreground counts, the class confusion matrix and instance
        matching (a predicted object's pixels there are not false positives), drawn grey in
        overlays.
    tile, overlap, blend, batch_size
        Tiled inference: tile side, overlap in pixels, blending of overlapping tiles, tiles per
        segmenter call.
    chunk_size : int
        Images per task run.
    max_in_flight : int or None
        Chunks submitted and not yet collected (backpressure); ``None`` = 2 x workers.
    force : bool
        Recompute images already in the store for this config (adds rows beside the old ones).
    retry_errors : bool
        Retry images that failed before with this config (by default a file whose bytes already
        failed is skipped like a done one, so a rerun adds no rows).
    extensions : tuple[str, ...]
        File name endings listed as images (case-insensitive).
    max_pixels : int
        Decompression-bomb guard: images whose header claims more pixels are refused.
    write_overlays : bool
        Write ``OUT/overlays/<image_id>.png`` for images with ground truth.
    fail_on_error : bool
        Mark the run failed when any image went to ``errors``.
    recursive : bool
        List sub-folders too.
    large_image : "auto" | "always" | "never"
        Scale options (issue 7; none changes a result, so none is hashed). TIFF files and Zarr
        stores above ``large_image_pixels`` (or above ``max_pixels``) are segmented streamed by
        window (``segflow.large``), in memory bounded by width x tile; ``always`` streams every
        TIFF, ``never`` none (then TIFFs above ``max_pixels`` are refused).
    large_image_pixels : int
        Size above which TIFF/Zarr images stream with ``large_image="auto"`` (default 64 MP).
    task_runner : "threads" | "dask"
        Where chunks run: a thread pool in the flow's process, or a Dask cluster (needs a Prefect
        API server; see docs/scaling.md).
    dask_address : str or None
        ``tcp://host:8786`` of an existing Dask scheduler; None starts a local cluster.
    dask_workers : int or None
        Worker processes of the local Dask cluster (default: the CPUs available).
    shard_index, shard_count : int or None, int
        Process only the images of shard ``shard_index`` of ``shard_count`` (a stable hash of the
        relative path; ``segflow.shard``): set by ``segment_sharded`` for its child runs.
    """

    # a URL field may carry a secret (user:password@): errors name fields, never echo inputs
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    input: str = Field(min_length=1)
    out: str = Field(min_length=1)
    segmenter: str = "otsu"
    segmenter_params: dict[str, Scalar] = Field(default_factory=dict)
    ground_truth: str | None = None
    gt_format: Literal["binary", "instances", "classes"] = "binary"
    gt_ignore: int | None = Field(default=None, ge=1)
    tile: int = Field(default=512, ge=16, le=16384)
    overlap: int = Field(default=64, ge=0)
    blend: Literal["constant", "linear", "gaussian"] = "gaussian"
    batch_size: int = Field(default=8, ge=1, le=4096)
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, ge=1, le=10_000)
    max_in_flight: int | None = Field(default=None, ge=1, le=10_000)
    force: bool = False
    retry_errors: bool = False
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    write_overlays: bool = True
    fail_on_error: bool = False
    recursive: bool = True
    # -- scale (issue 7): large images, task runners, shards; not hashed ----------------------
    large_image: Literal["auto", "always", "never"] = "auto"
    large_image_pixels: int = Field(default=DEFAULT_LARGE_PIXELS, ge=1)
    task_runner: Literal["threads", "dask"] = "threads"
    dask_address: str | None = Field(default=None, pattern=r"^(tcp|tls|inproc|ucx)://.+")
    dask_workers: int | None = Field(default=None, ge=1, le=1024)
    shard_index: int | None = Field(default=None, ge=0)
    shard_count: int = Field(default=1, ge=1, le=100_000)

    @field_validator("segmenter")
    @classmethod
    def _known_segmenter(cls, name: str) -> str:
        names = segmenters.available()
        if name not in names:
            raise ValueError(
                f"unknown segmenter {name!r}; available segmenters are: {', '.join(names)}"
            )
        return name

    @field_validator("input", "out", "ground_truth")
    @classmethod
    def _no_credentials_in_urls(cls, value: str | None) -> str | None:
        if value is not None and url_has_credentials(value):
            raise ValueError(
                f"{mask_url_credentials(value)}: a URL with credentials (user:password@, "
                "token@) would put the secret into the store's rows (source_uri, runs) and the "
                "logs; give credentials to "
                'fsspec instead (for http(s): FSSPEC_HTTP=\'{"headers": {"Authorization": '
                '"..."}}\'; for s3: the usual AWS variables or profile)'
            )
        return value

    @field_validator("extensions")
    @classmethod
    def _normalise_extensions(cls, exts: tuple[str, ...]) -> tuple[str, ...]:
        if not exts:
            raise ValueError("extensions must name at least one file ending, e.g. ('.png',)")
        out = []
        for ext in exts:
            e = ext.strip().lower()
            if not e:
                raise ValueError(f"empty extension in {exts!r}; give endings such as '.png'")
            out.append(e if e.startswith(".") else "." + e)
        return tuple(dict.fromkeys(out))

    @model_validator(mode="after")
    def _shard_in_range(self) -> RunConfig:
        if self.shard_index is not None and self.shard_index >= self.shard_count:
            raise ValueError(
                f"shard_index must be in [0, shard_count={self.shard_count}), got {self.shard_index}"
            )
        return self

    @model_validator(mode="after")
    def _ignore_applies_to_label_images(self) -> RunConfig:
        if self.gt_ignore is not None and self.ground_truth and is_coco_path(self.ground_truth):
            raise ValueError(
                "gt_ignore applies to label images; a COCO annotation file "
                f"({self.ground_truth}) marks its crowd regions as ignored itself"
            )
        return self

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> RunConfig:
        if self.overlap >= self.tile:
            raise ValueError(f"overlap must be >= 0 and < tile ({self.tile}), got {self.overlap}")
        return self

    # -- derived values -------------------------------------------------------------------

    def effective_segmenter_params(self) -> dict[str, Any]:
        """The segmenter's keyword defaults (JSON scalars) overridden by ``segmenter_params``.

        Giving a parameter its default value therefore hashes like leaving it out. Segmenters
        whose optional packages are missing hash on the given parameters only.
        """
        params: dict[str, Any] = {}
        try:
            cls = segmenters.get_class(self.segmenter)
        except (ImportError, ValueError):
            cls = None
        # base classes first, so a subclass's own default wins (``**options`` pass-through)
        for klass in reversed(cls.__mro__ if cls is not None else ()):
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            try:
                sig = inspect.signature(init)
            except (TypeError, ValueError):
                continue
            for p in sig.parameters.values():
                if p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) or p.name == "self":
                    continue
                if p.default is p.empty:
                    continue
                if p.default is None or isinstance(p.default, bool | int | float | str):
                    params[p.name] = p.default
        for key, value in self.segmenter_params.items():
            default = params.get(key)
            # 1 and 1.0 are the same setting of a float parameter: hash them alike
            if (
                isinstance(default, float)
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                value = float(value)
            params[key] = value
        return params

    def hashed_fields(self) -> dict[str, Any]:
        """The canonical description of the computation that :meth:`config_hash` digests."""
        params = self.effective_segmenter_params()
        fields = {
            "segflow_major": _major_version(),
            "segmenter": self.segmenter,
            "segmenter_params": {k: params[k] for k in sorted(params)},
            "tile": self.tile,
            "overlap": self.overlap,
            "blend": self.blend,
            "preprocess": PREPROCESS_ID,
            # the metrics row depends on whether and how ground truth is read
            "gt_format": self.gt_format if self.ground_truth else None,
            # a retrained model behind the same path is a different computation
            "model_content": self.model_digests(),
        }
        if self.ground_truth and self.gt_ignore is not None:
            # only when set, so that every configuration without it keeps its hash
            fields["gt_ignore"] = self.gt_ignore
        return fields

    def model_digests(self) -> list[str | None]:
        """Content digests of the model files the segmenter reads (see Segmenter.model_files)."""
        try:
            cls = segmenters.get_class(self.segmenter)
        except (ValueError, ImportError):
            return []
        return [content_digest(p) for p in cls.model_files(dict(self.segmenter_params))]

    def config_hash(self) -> str:
        """Stable hash of :meth:`hashed_fields`: ``"c"`` + 16 hex digits of sha256 of sorted JSON.

        The leading letter keeps the value a string in hive partition folders (a bare hex digest
        such as ``"1234e567..."`` would be read back as a number; see ``segflow.store``).
        """
        text = json.dumps(self.hashed_fields(), sort_keys=True, separators=(",", ":"))
        return "c" + hashlib.sha256(text.encode()).hexdigest()[:16]

    def in_flight(self, workers: int) -> int:
        """Chunks allowed in flight for ``workers`` worker threads."""
        return self.max_in_flight if self.max_in_flight is not None else max(2, 2 * workers)

    def create_segmenter(self) -> Segmenter:
        """A fresh segmenter instance (one per chunk: ``fit`` keeps per-image state)."""
        return segmenters.create(self.segmenter, **dict(self.segmenter_params))


# -- command-line helpers ------------------------------------------------------------------


def parse_scalar(text: str) -> bool | int | float | str:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"``/``"false"`` -> bool, anything else -> str."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)  # type: ignore[operator]
        except ValueError:
            pass
    return text


def parse_set(items: Iterable[str]) -> dict[str, bool | int | float | str]:
    """Parse ``key=value`` strings (the CLI's ``--set``) into typed scalars."""
    out: dict[str, bool | int | float | str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(
                f"--set expects key=value with a Python identifier as key, got {item!r}"
            )
        out[key] = parse_scalar(value)
    return out


# -- threads -----------------------------------------------------------------------------------


def default_workers() -> int:
    """Worker threads for the task runner: the CPUs this process may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


#: glibc ``mallopt`` parameters (``<malloc.h>``).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks below this many bytes come from the heap, whose freed memory is reused (a 1 MP image's
#: largest maps are 4-8 MB; glibc's default threshold starts at 128 KB and moves with frees).
MALLOC_MMAP_THRESHOLD = 64 << 20
#: glibc gives freed heap memory back to the OS only above this much at its top.
MALLOC_TRIM_THRESHOLD = 256 << 20


def apply_malloc_settings(
    *, mmap_threshold: int = MALLOC_MMAP_THRESHOLD, trim_threshold: int = MALLOC_TRIM_THRESHOLD
) -> bool:
    """Let glibc's malloc keep freed memory for the next image (Linux with glibc only).

    Every image allocates a few maps of its own size (a 1 MP Otsu image: ~16 MB of float32 and
    int32 arrays) and frees them when done. With glibc's defaults the heap's top is then given
    back to the OS (its trim threshold follows the largest freed block) and the next image
    page-faults those megabytes in again, zero-filled by the kernel: ~1,500 faults and ~2.5 ms
    of CPU per 1 MP image in ``segment_batch``. Fixed thresholds keep the memory in the heap:
    RSS stays at the per-image peak (it does not grow with the number of images) instead of
    dropping between images. Process-wide, like :func:`apply_thread_limits`; returns whether
    the settings were applied (False where the C library is not glibc).
    """
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
            raise ValueError(f"{name} must be an integer from 0 to 2**31 - 1 bytes, got {value!r}")
    import ctypes
    import platform
    import sys

    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    return bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1 and ok)


def apply_thread_limits(threads: int = 1) -> dict[str, int]:
    """Cap BLAS/OpenMP, OpenCV and (when already imported) torch threads at ``threads``.

    The pipeline parallelises over images with worker threads; letting every numeric library
    also spawn one thread per core oversubscribes small machines badly (see STACK-NOTES). Sets
    process-wide limits and returns what it set. Environment variables only help libraries not yet
    loaded; threadpoolctl changes loaded BLAS/OpenMP pools too.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    done: dict[str, int] = {}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)
        done["blas_openmp"] = threads
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn/scipy stacks
        logger.debug("threadpoolctl missing: BLAS threads left as configured by the environment")
    import cv2

    cv2.setNumThreads(threads)
    done["opencv"] = threads
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
        done["torch"] = threads
    return done
