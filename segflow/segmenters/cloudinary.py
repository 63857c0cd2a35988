"""Cloudinary as a segmenter: hosted AI detection, background removal and prompt extraction.

The segmenter ``cloudinary`` sends each image, whole, to Cloudinary through the official
``cloudinary`` Python SDK (``pip install 'segflow[cloudinary]'``) and turns the answer into a
:class:`~segflow.segmenters.base.Segmentation`. It is *image-scoped*: the tiler is bypassed and
the service sees the whole (possibly downscaled) image once.

Modes (``mode=``)
-----------------
``background_removal`` (default, output ``semantic``, classes ``background``/``foreground``)
    Delivery URL with the effect ``e_background_removal`` (``e_background_removal:fineedges_y``
    with ``fine_edges=True``) as ``.png``. The alpha channel of the returned PNG, scaled to
    [0, 1], is the foreground probability; class scores are ``(1 - alpha, alpha)``, so a pixel
    is foreground when alpha > 0.5.
``extract`` (output ``semantic``, classes ``background`` + one per prompt)
    One delivery URL per prompt with ``e_extract:prompt_<prompt>;multiple_true;mode_mask``
    (``multiple_false`` with ``multiple=False``); the prompt is percent-encoded. ``prompts``
    lists the prompts separated by ``;`` (``"cat;the red car"``). Each returned grey mask,
    scaled to [0, 1], is the score ``s_k`` of class ``k``; background scores
    ``1 - max_k s_k`` and the scores are normalised to sum to 1, so a pixel belongs to its
    strongest prompt when that mask is above 0.5. (One URL per prompt: with several prompts in
    one URL Cloudinary returns the union of all of them in a single mask.)
``detection`` (output ``instances``)
    Upload with ``detection=<model>`` (``model=``: ``coco``, ``coco_v2``, ``lvis``,
    ``unidet``, ``openimages``, ``cld-fashion``, ... — the AI Content Analysis add-on must be
    enabled on the account). Every returned object with ``confidence >= min_confidence`` becomes
    one instance: its box filled (``refine="box"``) or the Otsu foreground inside its box
    (``refine="otsu"``: Otsu threshold of the grey pixels in the box grown by 15 %, the object
    being the phase that touches the grown box's border least, its largest connected component
    inside the box, holes filled; the box itself when the crop shows no clear object). Overlaps go to the more confident object. Class ids: with ``labels="person,dog"``
    only those labels are kept, with ids 1, 2, ... in that order (stable across images); without
    ``labels`` every label is kept and the ids are the labels' sorted order *in this image*
    (``masks.class_name`` names them).

Request and response fields used (checked against Cloudinary's Upload API and transformation
reference and the SDK source, ``cloudinary/uploader.py`` and ``cloudinary/utils.py``)
----------------------------------------------------------------------------------------------
* Upload: ``POST {upload_prefix}/v1_1/{cloud_name}/image/upload`` (multipart), fields
  ``file`` (PNG bytes, file name ``<sha256>.png``), ``public_id``, ``overwrite=0``,
  ``unique_filename=0``, ``detection`` (detection mode only), ``timestamp``, ``api_key``,
  ``signature`` (SHA-1 of the sorted parameters + API secret, signature version 2).
* Explicit: ``POST {upload_prefix}/v1_1/{cloud_name}/image/explicit`` with ``public_id``,
  ``type=upload`` (+ ``detection``), signed the same way: the existence check (HTTP 404
  ``Resource not found`` when the asset is absent) and, in detection mode, the analysis of an
  asset uploaded earlier.
* Response JSON read: ``width``, ``height`` (the stored asset's size) and, for detection,
  ``info.detection.object_detection.status`` (must be ``complete``) and
  ``info.detection.object_detection.data.<model>.tags.<label>[]`` objects with
  ``bounding-box`` (``[x, y, width, height]`` in pixels of the stored asset) and
  ``confidence`` (0..1); an ``error.message`` on failures.
* Delivery: ``GET {https://res.cloudinary.com | cname}/{cloud_name}/image/upload/
  [s--<signature>--/]<transformation>/v1/<public_id>.png`` built by
  ``cloudinary.utils.cloudinary_url`` (signed with ``sign_url=True``, the default, because
  accounts may require signed URLs for AI effects). Statuses 423 (derived image still being
  generated) and 420 (pending) are retried; ``X-Cld-Error`` is quoted in errors.

How requests are sent
---------------------
Requests are built entirely by the SDK (``utils.build_upload_params``, ``utils.sign_request``,
``utils.cloudinary_api_url``, ``utils.cloudinary_url``, the SDK's user agent and its
``utils.get_http_connector`` pool, which honours ``api_proxy``) and sent with ``urllib3``, the
SDK's own HTTP library, in the same multipart form as ``cloudinary.uploader.call_api``. segflow
does not call ``uploader.upload`` itself because that function raises a bare ``Error(message)``
and drops the HTTP status and headers, so ``429``/``5xx`` could not be told apart from a bad
request and ``Retry-After`` could not be honoured. Every SDK call gets its configuration
(credentials, ``upload_prefix``, ``cname``, ``secure``, ...) as per-call options; the SDK's
process-wide ``cloudinary.config()`` is never changed.

Idempotent uploads
------------------
The public id is ``<folder>/<sha256>`` where the hash covers the uploaded pixels (the 8-bit,
possibly downscaled image and its shape — stable across PNG encoder versions). Before uploading,
segflow calls ``explicit`` for that public id: an existing asset is reused (no upload); only on
404 is the image uploaded, with ``overwrite=0`` so that even a race with another worker cannot
replace or duplicate it (Cloudinary then answers with the existing asset, ``existing: true``).
Derived images (background removal, extract masks) are cached by Cloudinary's CDN, so a re-run
asks for nothing new. In detection mode, an asset that already exists is analysed again through
``explicit`` (the add-on is billed again, no upload). The pipeline's own store already skips
images done with the same configuration, so this only happens for forced or retried images.

Throttling and faults
---------------------
Each HTTP request is retried up to ``max_retries`` times on 420, 423, 429 and 5xx statuses,
timeouts (``timeout`` seconds to read), connection errors and malformed (non-JSON or
undecodable) bodies, with exponential backoff ``retry_base_delay * 2**k`` (at most
``retry_max_delay``) and jitter (each wait drawn from its upper half); a ``Retry-After`` header
(seconds or an HTTP date) raises the wait to what the server asks, up to ``retry_max_delay``.
401 and 403 raise :class:`CloudinaryAuthError` at once, other 4xx :class:`CloudinaryError` at
once; after the last retry :class:`CloudinaryError` names the request, the attempts and the
last reason. The pipeline records either as the image's ``errors`` row (stage ``segment``)
and carries on with the other images. A caller (segflow's task layer) can wrap every request in
a guard with :meth:`CloudinarySegmenter.bind` (``call_guard=``): ``tasks/cloudinary.py`` uses
the Prefect global concurrency limit named ``cloudinary`` (see ``docs/cloudinary.md``).

Credentials and secrets
-----------------------
Credentials come from, in this order: a value bound by the task layer
(:meth:`CloudinarySegmenter.bind`, e.g. resolved from the Prefect Secret block named by
``secret_block``), ``CLOUDINARY_CLOUD_NAME`` + ``CLOUDINARY_API_KEY`` + ``CLOUDINARY_API_SECRET``
(the SDK's precedence), or ``CLOUDINARY_URL=cloudinary://<api_key>:<api_secret>@<cloud_name>``
(query parameters such as ``?upload_prefix=...`` are honoured). They are never segmenter
parameters, so they never reach the run configuration, its hash, the ``runs`` dataset or Prefect
parameters. The API key, the API secret and the whole URL are removed (:func:`redact`) from
every message this module logs or raises, and chained exceptions are dropped.

Size limits
-----------
Images whose longer side exceeds ``max_side`` (default 2048; 0 = no limit) are downscaled
(``cv2.INTER_AREA``) before upload; masks are resized back to the image size (bilinear on the
scores, then thresholded by the argmax) and detection boxes are scaled back. 2048 is the size
Cloudinary's ``e_extract`` works at internally; ``e_background_removal`` accepts up to
6144 x 6144 and downscales larger inputs itself; uploads are also bound by the account's
maximum image file size and megapixels. Images are uploaded as 8-bit PNG (grey or RGB).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cv2
import numpy as np
from scipy import ndimage

from segflow.segmenters import register
from segflow.segmenters.base import OutputKind, Segmentation, Segmenter

__all__ = [
    "MODES",
    "REFINE_METHODS",
    "CloudinaryAuthError",
    "CloudinaryDetector",
    "CloudinaryError",
    "CloudinarySegmenter",
    "Credentials",
    "Detection",
    "MissingCredentialsError",
    "UploadImage",
    "credentials_from_env",
    "encode_upload",
    "parse_credentials",
    "parse_detections",
    "redact",
]

logger = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("background_removal", "extract", "detection")
REFINE_METHODS: tuple[str, ...] = ("box", "otsu")
DEFAULT_MAX_SIDE = 2048
#: HTTP statuses that are retried: rate limits (420, 429), derived asset not ready (423), 5xx.
RETRY_STATUSES = frozenset({420, 423, 429, *range(500, 600)})
_HASH_VERSION = b"segflow-cloudinary/1"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_\-]+(,[A-Za-z0-9_\-]+)*$")
REDACTED = "[REDACTED]"


# ---------------------------------------------------------------------------------------------
# errors and secrets
# ---------------------------------------------------------------------------------------------


class MissingCredentialsError(TypeError):
    """No Cloudinary credentials were found when the segmenter was built.

    A ``TypeError`` because credentials are a required input of the segmenter, given through the
    environment or the task layer rather than as keyword parameters (the registry reports
    required-parameter problems as ``TypeError``).
    """


class CloudinaryError(RuntimeError):
    """A Cloudinary request failed (after its retries, or at once for a non-retryable answer).

    Attributes: ``status`` (last HTTP status or ``None`` for a transport fault), ``attempts``.
    The message never contains credentials.
    """

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class CloudinaryAuthError(CloudinaryError):
    """Cloudinary refused the credentials or the signature (HTTP 401/403): never retried."""


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret (and its URL-encoded form) replaced.

    Longer secrets are replaced first, so a URL containing the key and the secret disappears
    whole. Empty secrets are ignored.
    """
    out = str(text)
    forms: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        forms.add(secret)
        forms.add(urllib.parse.quote(secret, safe=""))
        forms.add(urllib.parse.quote_plus(secret))
    for form in sorted(forms, key=len, reverse=True):
        if form:
            out = out.replace(form, REDACTED)
    return out


@dataclass(frozen=True, repr=False)
class Credentials:
    """Cloudinary account credentials and the account's endpoint options.

    ``options`` holds non-secret SDK options that came with the credentials (the query of a
    ``CLOUDINARY_URL`` such as ``upload_prefix``, ``cname``, ``secure``). ``repr`` shows the
    cloud name only.
    """

    cloud_name: str
    api_key: str
    api_secret: str
    url: str = ""
    options: tuple[tuple[str, Any], ...] = ()

    def secrets(self) -> list[str]:
        """The strings that must never appear in logs or messages."""
        return [s for s in (self.url, self.api_secret, self.api_key) if s]

    def __repr__(self) -> str:
        return f"Credentials(cloud_name={self.cloud_name!r}, api_key={REDACTED}, api_secret={REDACTED})"


def _option_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    return text


def parse_credentials(value: str | Mapping[str, Any]) -> Credentials:
    """Credentials from a ``cloudinary://<api_key>:<api_secret>@<cloud_name>[?opts]`` URL or
    a mapping with ``cloud_name``, ``api_key``, ``api_secret`` (e.g. a JSON Prefect Secret).

    Raises ``ValueError`` (without echoing the value) when the form is wrong.
    """
    if isinstance(value, Mapping):
        missing = [k for k in ("cloud_name", "api_key", "api_secret") if not value.get(k)]
        if missing:
            raise ValueError(
                f"Cloudinary credentials mapping lacks {', '.join(missing)}; expected the keys "
                "cloud_name, api_key and api_secret"
            )
        extra = tuple(
            (str(k), v)
            for k, v in sorted(value.items())
            if k not in ("cloud_name", "api_key", "api_secret")
        )
        return Credentials(
            cloud_name=str(value["cloud_name"]),
            api_key=str(value["api_key"]),
            api_secret=str(value["api_secret"]),
            options=extra,
        )
    text = str(value).strip()
    if text.startswith("{"):
        try:
            return parse_credentials(json.loads(text))
        except json.JSONDecodeError:
            raise ValueError("Cloudinary credentials look like JSON but do not parse") from None
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme.lower() != "cloudinary" or not parsed.hostname:
        raise ValueError(
            "Cloudinary credentials must be a URL of the form "
            "cloudinary://<api_key>:<api_secret>@<cloud_name> (or a JSON object with cloud_name, "
            "api_key and api_secret)"
        )
    if not parsed.username or not parsed.password:
        raise ValueError(
            "the Cloudinary URL lacks the API key or secret: expected "
            "cloudinary://<api_key>:<api_secret>@<cloud_name>"
        )
    options: dict[str, Any] = {}
    if parsed.path not in ("", "/"):  # cloudinary://k:s@cloud/secure-distribution (private CDN)
        options["private_cdn"] = True
        options["secure_distribution"] = parsed.path.lstrip("/")
    for key, val in urllib.parse.parse_qsl(parsed.query):
        options[key] = _option_value(val)
    return Credentials(
        cloud_name=parsed.hostname,
        api_key=urllib.parse.unquote(parsed.username),
        api_secret=urllib.parse.unquote(parsed.password),
        url=text,
        options=tuple(sorted(options.items())),
    )


def credentials_from_env(environ: Mapping[str, str] | None = None) -> Credentials | None:
    """Credentials from the environment, with the SDK's precedence; ``None`` when absent.

    ``CLOUDINARY_CLOUD_NAME`` (+ ``CLOUDINARY_API_KEY``, ``CLOUDINARY_API_SECRET`` and optional
    ``CLOUDINARY_UPLOAD_PREFIX``, ``CLOUDINARY_CNAME``, ``CLOUDINARY_SECURE``, ...) wins over
    ``CLOUDINARY_URL``, as in ``cloudinary.Config``.
    """
    env = os.environ if environ is None else environ
    cloud = env.get("CLOUDINARY_CLOUD_NAME", "")
    if cloud:
        key, secret = env.get("CLOUDINARY_API_KEY", ""), env.get("CLOUDINARY_API_SECRET", "")
        if not key or not secret:
            raise ValueError(
                "CLOUDINARY_CLOUD_NAME is set but CLOUDINARY_API_KEY or CLOUDINARY_API_SECRET "
                "is missing; set all three or use CLOUDINARY_URL"
            )
        skip = {
            "CLOUDINARY_CLOUD_NAME",
            "CLOUDINARY_API_KEY",
            "CLOUDINARY_API_SECRET",
            "CLOUDINARY_URL",
        }
        options = tuple(
            sorted(
                (k[len("CLOUDINARY_") :].lower(), _option_value(v))
                for k, v in env.items()
                if k.startswith("CLOUDINARY_") and k not in skip
            )
        )
        return Credentials(cloud_name=cloud, api_key=key, api_secret=secret, options=options)
    url = env.get("CLOUDINARY_URL", "")
    if url:
        return parse_credentials(url)
    return None


# ---------------------------------------------------------------------------------------------
# images in, masks and detections out
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadImage:
    """The image as uploaded: ``png`` bytes of ``(height, width)`` pixels, ``sha256`` of the
    pixels (hex), and the original size it was downscaled from."""

    png: bytes
    sha256: str
    height: int
    width: int
    orig_height: int
    orig_width: int


def _to_uint8_hwc(image: np.ndarray) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W) or (H, W, 3) uint8 (grey for 1-2 channels, RGB else)."""
    if image.ndim != 3 or min(image.shape) < 1:
        raise ValueError(f"image must be (C, H, W) with C, H, W >= 1, got shape {image.shape}")
    c = image.shape[0]
    planes = image[:1] if c < 3 else image[:3]
    u8 = np.clip(np.rint(np.asarray(planes, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return u8[0] if u8.shape[0] == 1 else np.ascontiguousarray(np.moveaxis(u8, 0, -1))


def encode_upload(image: np.ndarray, *, max_side: int = DEFAULT_MAX_SIDE) -> UploadImage:
    """Encode ``image`` (C, H, W) float32 in [0, 1] as the 8-bit PNG that is uploaded.

    Images whose longer side exceeds ``max_side`` (> 0) are downscaled with ``cv2.INTER_AREA``
    keeping the aspect ratio. ``sha256`` digests a version tag, the uploaded shape and the
    uploaded pixels, so equal pixels give equal public ids whatever PNG encoder is installed.
    """
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 0:
        raise ValueError(f"max_side must be an integer >= 0 (0 = no limit), got {max_side!r}")
    pixels = _to_uint8_hwc(np.asarray(image))
    h, w = pixels.shape[:2]
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        pixels = cv2.resize(pixels, (nw, nh), interpolation=cv2.INTER_AREA)
    pixels = np.ascontiguousarray(pixels)
    uh, uw = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    digest = hashlib.sha256()
    digest.update(_HASH_VERSION + f":{uh}x{uw}x{channels}:".encode())
    digest.update(pixels.tobytes())
    bgr = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:  # pragma: no cover - cv2 encodes any uint8 grey/BGR image
        raise ValueError(f"cannot encode a {uh}x{uw} image as PNG")
    return UploadImage(
        png=buf.tobytes(),
        sha256=digest.hexdigest(),
        height=uh,
        width=uw,
        orig_height=h,
        orig_width=w,
    )


@dataclass(frozen=True)
class Detection:
    """One detected object: ``label``, ``confidence`` in [0, 1] and its box ``(x, y, w, h)``
    in pixels of the analysed (uploaded) image."""

    label: str
    confidence: float
    box: tuple[float, float, float, float]


def parse_detections(response: Mapping[str, Any]) -> list[Detection]:
    """Objects of an Upload API response's ``info.detection.object_detection``.

    Reads ``status`` (must be ``complete``) and every ``data.<model>.tags.<label>[]`` object's
    ``bounding-box`` ``[x, y, w, h]`` and ``confidence``. A response without
    ``info.detection`` raises :class:`CloudinaryError` (was detection enabled on the account?).
    """
    info = response.get("info")
    detection = info.get("detection") if isinstance(info, Mapping) else None
    obj = detection.get("object_detection") if isinstance(detection, Mapping) else None
    if not isinstance(obj, Mapping):
        raise CloudinaryError(
            "the Cloudinary response has no info.detection.object_detection: is the AI Content "
            "Analysis add-on enabled for this account and the detection model valid?"
        )
    status = obj.get("status", "complete")
    if status != "complete":
        raise CloudinaryError(
            f"Cloudinary object detection status is {status!r}, expected 'complete'"
        )
    out: list[Detection] = []
    data = obj.get("data") or {}
    if not isinstance(data, Mapping):
        raise CloudinaryError(
            "malformed detection data: info.detection.object_detection.data is not an object"
        )
    for model_data in data.values():
        tags = model_data.get("tags") if isinstance(model_data, Mapping) else None
        if not isinstance(tags, Mapping):
            continue
        for label, objects in tags.items():
            for item in objects if isinstance(objects, list) else []:
                box = item.get("bounding-box") if isinstance(item, Mapping) else None
                try:
                    x, y, w, h = (float(v) for v in box)  # type: ignore[union-attr]
                    conf = float(item.get("confidence", 0.0))
                except (TypeError, ValueError):
                    raise CloudinaryError(
                        f"malformed detection object for label {label!r}: expected "
                        "'bounding-box': [x, y, w, h] and a numeric 'confidence'"
                    ) from None
                if not all(math.isfinite(v) for v in (x, y, w, h, conf)):
                    raise CloudinaryError(f"non-finite detection box or confidence for {label!r}")
                out.append(Detection(label=str(label), confidence=conf, box=(x, y, w, h)))
    return out


def _decode_png(data: bytes) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        raise ValueError(f"the delivered image ({len(data)} bytes) does not decode")
    return arr


def _unit(arr: np.ndarray) -> np.ndarray:
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0
    return arr.astype(np.float32) / np.float32(scale)


def alpha_from_png(data: bytes) -> np.ndarray:
    """The alpha channel of a PNG as ``(h, w) float32`` in [0, 1]; ``ValueError`` if it has none."""
    arr = _decode_png(data)
    if arr.ndim != 3 or arr.shape[2] not in (2, 4):
        raise ValueError(
            f"the delivered image has no alpha channel (shape {arr.shape}); background removal "
            "returns a PNG with transparency"
        )
    return _unit(arr[:, :, -1])


def grey_from_png(data: bytes) -> np.ndarray:
    """A mask PNG as ``(h, w) float32`` in [0, 1]: the grey level (mean of the colour
    channels), multiplied by alpha when the PNG has transparency."""
    arr = _decode_png(data)
    if arr.ndim == 2:
        return _unit(arr)
    colour = arr[:, :, : 3 if arr.shape[2] >= 3 else 1]
    grey = _unit(colour).mean(axis=2)
    if arr.shape[2] in (2, 4):
        grey *= _unit(arr[:, :, -1])
    return grey.astype(np.float32)


def _resize_scores(score: np.ndarray, height: int, width: int) -> np.ndarray:
    if score.shape == (height, width):
        return score
    return cv2.resize(score, (width, height), interpolation=cv2.INTER_LINEAR)


#: Otsu separability (between-class / total variance) below which a box holds no clear object;
#: a unimodal Gaussian gives 2/pi (about 0.64), a clean object on a background above 0.9.
MIN_SEPARABILITY = 0.75


def refine_box(
    grey: np.ndarray, box: tuple[int, int, int, int], *, margin: float = 0.15
) -> np.ndarray | None:
    """Otsu foreground of the object in ``box`` of a grey image.

    Parameters
    ----------
    grey : (H, W) float
        The whole image's grey level.
    box : (y0, y1, x0, x1)
        The detection box in pixels (end exclusive).
    margin : float
        The threshold is fitted on the box grown by this fraction of its larger side (at least
        2 pixels, clipped to the image), so a tight box still sees background around the object.

    Returns
    -------
    (y1 - y0, x1 - x0) bool or None
        The phase that touches the grown box's border least, its largest 8-connected component
        inside the box with holes filled; ``None`` when the crop shows no clear object (too
        small, flat, or an Otsu separability below :data:`MIN_SEPARABILITY`).
    """
    y0, y1, x0, x1 = box
    h, w = grey.shape
    m = max(2, round(margin * max(y1 - y0, x1 - x0)))
    gy0, gy1, gx0, gx1 = max(0, y0 - m), min(h, y1 + m), max(0, x0 - m), min(w, x1 + m)
    crop = np.asarray(grey[gy0:gy1, gx0:gx1], dtype=np.float64)
    if min(crop.shape) < 3 or float(crop.max()) - float(crop.min()) < 1e-6:
        return None
    from skimage.filters import threshold_otsu

    t = threshold_otsu(crop)
    above = crop > t
    frac = float(above.mean())
    if frac in (0.0, 1.0):
        return None
    between = frac * (1 - frac) * (float(crop[above].mean()) - float(crop[~above].mean())) ** 2
    if between < MIN_SEPARABILITY * float(crop.var()):
        return None
    border = np.concatenate([above[0], above[-1], above[1:-1, 0], above[1:-1, -1]])
    fg = above if border.mean() <= 0.5 else ~above
    inner = fg[y0 - gy0 : y1 - gy0, x0 - gx0 : x1 - gx0]
    labels, n = ndimage.label(inner, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = labels == int(np.argmax(sizes))
    return np.asarray(ndimage.binary_fill_holes(keep), dtype=bool)


# ---------------------------------------------------------------------------------------------
# HTTP with retries
# ---------------------------------------------------------------------------------------------


def _sdk() -> Any:
    try:
        import cloudinary
        import cloudinary.utils  # the request builders
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "segmenter 'cloudinary' needs the Cloudinary SDK: pip install 'segflow[cloudinary]' "
            f"({exc})"
        ) from exc
    return cloudinary


def _retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds asked by a ``Retry-After`` header (delta-seconds or HTTP date), or ``None``."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        base = time.time() if now is None else now
        seconds = when.timestamp() - base
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


@dataclass
class _Answer:
    status: int
    headers: Mapping[str, str]
    data: bytes


@dataclass
class _Retrying:
    """The retry loop around single HTTP requests (one per instance of the segmenter)."""

    timeout: float
    max_retries: int
    base_delay: float
    max_delay: float
    secrets: Callable[[], list[str]]
    guard: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    _pool: Any = None

    def _redact(self, text: str) -> str:
        return redact(text, self.secrets())

    def pool(self) -> Any:
        if self._pool is None:
            sdk = _sdk()
            self._pool = sdk.utils.get_http_connector(sdk.config(), sdk.CERT_KWARGS)
        return self._pool

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Wait before retry ``attempt`` (1-based): jittered backoff, at least ``Retry-After``."""
        backoff = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        wait = backoff / 2 + self.rng.uniform(0, backoff / 2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_delay))
        return wait

    def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        fields: list[tuple[str, Any]] | None = None,
        ok: Callable[[_Answer], Any],
        accept: frozenset[int] = frozenset(),
    ) -> Any:
        """Send ``method url`` until ``ok(answer)`` returns for a 2xx (or ``accept``) answer.

        ``ok`` may raise ``ValueError`` for a malformed body: that attempt is retried like a
        transport fault. Returns what ``ok`` returns.
        """
        import urllib3

        sdk = _sdk()
        headers = {"User-Agent": sdk.get_user_agent()}
        timeout = urllib3.Timeout(connect=min(10.0, self.timeout), read=self.timeout)
        attempts = self.max_retries + 1
        last = "no attempt made"
        status: int | None = None
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            try:
                with self.guard():
                    resp = self.pool().request(
                        method,
                        url,
                        fields=fields,
                        headers=headers,
                        timeout=timeout,
                        retries=False,
                        redirect=method == "GET",
                    )
                answer = _Answer(status=resp.status, headers=resp.headers, data=resp.data)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                status = None
                last = f"{type(exc).__name__}: {exc}"
            else:
                status = answer.status
                if 200 <= status < 300 or status in accept:
                    try:
                        return ok(answer)
                    except ValueError as exc:
                        last = f"HTTP {status} with a malformed body: {exc}"
                else:
                    last = f"HTTP {status}: {_error_text(answer)}"
                    if status in (401, 403):
                        raise CloudinaryAuthError(
                            self._redact(
                                f"cloudinary {what} was refused (HTTP {status}): {_error_text(answer)}"
                                " - check the credentials (CLOUDINARY_URL or the secret block)"
                            ),
                            status=status,
                            attempts=attempt,
                        ) from None
                    if status not in RETRY_STATUSES:
                        raise CloudinaryError(
                            self._redact(f"cloudinary {what} failed: {last}"),
                            status=status,
                            attempts=attempt,
                        ) from None
                    retry_after = _retry_after(answer.headers.get("Retry-After"))
            if attempt < attempts:
                wait = self.delay(attempt, retry_after)
                logger.warning(
                    "%s",
                    self._redact(
                        f"cloudinary {what}: {last}; retry {attempt}/{self.max_retries} in {wait:.2f} s"
                    ),
                )
                self.sleep(wait)
        raise CloudinaryError(
            self._redact(f"cloudinary {what} failed after {attempts} attempt(s): {last}"),
            status=status,
            attempts=attempts,
        ) from None


def _error_text(answer: _Answer) -> str:
    """A short reason from an error answer: ``error.message`` of a JSON body, the
    ``X-Cld-Error`` header, or the start of the body."""
    parts = []
    cld = answer.headers.get("X-Cld-Error")
    if cld:
        parts.append(cld)
    try:
        body = json.loads(answer.data.decode("utf-8"))
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        if message:
            parts.append(str(message))
    except (ValueError, UnicodeDecodeError, AttributeError):
        text = answer.data[:200].decode("utf-8", errors="replace").strip()
        if text:
            parts.append(text)
    return "; ".join(parts) or "(empty body)"


def _json_body(answer: _Answer) -> dict[str, Any]:
    try:
        body = json.loads(answer.data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {type(body).__name__}")
    return body


# ---------------------------------------------------------------------------------------------
# the segmenter
# ---------------------------------------------------------------------------------------------


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _check_number(
    name: str, value: Any, *, lo: float, hi: float = math.inf, integer: bool = False
) -> None:
    numeric = isinstance(value, int) or (not integer and isinstance(value, float))
    if isinstance(value, bool) or not numeric or not (lo <= value <= hi):
        kind = "an integer" if integer else "a number"
        rng = f">= {lo}" if hi == math.inf else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {kind} {rng}, got {value!r}")


def _split(text: str, sep: str) -> list[str]:
    return [p.strip() for p in text.split(sep) if p.strip()]


@register("cloudinary")
class CloudinarySegmenter(Segmenter):
    """Segment whole images with Cloudinary (see the module docstring for modes and fields).

    Parameters (keyword-only, JSON scalars, so they fit ``RunConfig.segmenter_params``)
    ------------------------------------------------------------------------------------
    mode : "background_removal" | "extract" | "detection"
    model : str
        Detection model(s) for ``detection`` (``coco``, ``lvis``, ``unidet``, ...).
    labels : str
        Comma-separated labels kept in ``detection`` mode, in class-id order ("" = all).
    min_confidence : float in [0, 1]
        Detections below are dropped.
    refine : "box" | "otsu"
        Instance mask of a detection: the box, or the Otsu foreground inside it.
    prompts : str
        ``;``-separated natural-language prompts for ``extract`` (one class each).
    multiple : bool
        ``extract``: every instance of a prompt (``multiple_true``) or one.
    fine_edges : bool
        ``background_removal``: ``fineedges_y``.
    folder : str
        Public-id folder of the uploads ("" = top level).
    max_side : int
        Downscale images whose longer side is larger before upload (0 = never).
    secret_block : str
        Name of a Prefect Secret block holding the credentials, resolved by segflow's task
        layer (``tasks/cloudinary.py``); "" = credentials from the environment.
    upload_prefix, cname, secure, private_cdn, secure_distribution, sign_url
        SDK endpoint options (override those coming with the credentials); ""/default = the
        SDK's defaults (``https://api.cloudinary.com``, ``https://res.cloudinary.com``).
    timeout : float
        Seconds to wait for a response before retrying.
    max_retries : int
        Retries per request after the first attempt.
    retry_base_delay, retry_max_delay : float
        Backoff ``base * 2**k`` seconds, each wait capped at ``retry_max_delay`` (which also
        caps a ``Retry-After``).

    ``output`` depends on ``mode``: building with ``mode="detection"`` gives a
    :class:`CloudinaryDetector` (``output = "instances"``); the other modes are ``semantic``.
    """

    output: ClassVar[OutputKind] = "semantic"
    image_scoped: ClassVar[bool] = True

    def __new__(cls, *args: Any, **kwargs: Any) -> CloudinarySegmenter:
        if cls is CloudinarySegmenter and kwargs.get("mode") == "detection":
            cls = CloudinaryDetector
        return super().__new__(cls)

    def __init__(
        self,
        *,
        mode: str = "background_removal",
        model: str = "coco",
        labels: str = "",
        min_confidence: float = 0.5,
        refine: str = "box",
        prompts: str = "",
        multiple: bool = True,
        fine_edges: bool = False,
        folder: str = "segflow",
        max_side: int = DEFAULT_MAX_SIDE,
        secret_block: str = "",
        upload_prefix: str = "",
        cname: str = "",
        secure: bool = True,
        private_cdn: bool = False,
        secure_distribution: str = "",
        sign_url: bool = True,
        timeout: float = 60.0,
        max_retries: int = 5,
        retry_base_delay: float = 1.0,
        retry_max_delay: float = 60.0,
    ) -> None:
        _check_choice("mode", mode, MODES)
        _check_choice("refine", refine, REFINE_METHODS)
        if not isinstance(model, str) or not _MODEL_NAME.match(model):
            raise ValueError(
                f"model must be a Cloudinary detection model name such as 'coco', 'lvis' or "
                f"'unidet' (letters, digits, '_', '-', comma-separated), got {model!r}"
            )
        if not isinstance(folder, str) or (folder and not _SAFE_NAME.match(folder)):
            raise ValueError(
                f"folder must be '' or path segments of letters, digits, '_' and '-' separated "
                f"by '/', got {folder!r}"
            )
        _check_number("min_confidence", min_confidence, lo=0.0, hi=1.0)
        _check_number("max_side", max_side, lo=0, integer=True)
        _check_number("timeout", timeout, lo=0.001)
        _check_number("max_retries", max_retries, lo=0, hi=100, integer=True)
        _check_number("retry_base_delay", retry_base_delay, lo=0.0)
        _check_number("retry_max_delay", retry_max_delay, lo=0.0)
        for name, flag in (
            ("multiple", multiple),
            ("fine_edges", fine_edges),
            ("secure", secure),
            ("private_cdn", private_cdn),
            ("sign_url", sign_url),
        ):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be true or false, got {flag!r}")
        for name, text in (
            ("labels", labels),
            ("prompts", prompts),
            ("secret_block", secret_block),
            ("upload_prefix", upload_prefix),
            ("cname", cname),
            ("secure_distribution", secure_distribution),
        ):
            if not isinstance(text, str):
                raise ValueError(f"{name} must be a string, got {text!r}")
        self.mode = mode
        self.model = model
        self.labels = _split(labels, ",")
        self.min_confidence = float(min_confidence)
        self.refine = refine
        self.prompts = _split(prompts, ";")
        if mode == "extract" and not self.prompts:
            raise ValueError(
                "mode 'extract' needs prompts: one or more descriptions separated by ';', "
                "e.g. prompts='cat;the red car'"
            )
        self.multiple = multiple
        self.fine_edges = fine_edges
        self.folder = folder
        self.max_side = int(max_side)
        self.secret_block = secret_block
        self._endpoint = {
            k: v
            for k, v in (
                ("upload_prefix", upload_prefix),
                ("cname", cname),
                ("secure_distribution", secure_distribution),
            )
            if v
        }
        self._endpoint_flags = {"secure": secure, "private_cdn": private_cdn}
        self._explicit_flags = {
            k
            for k, v, default in (("secure", secure, True), ("private_cdn", private_cdn, False))
            if v != default
        }
        self.sign_url = sign_url
        _sdk()
        self._credentials: Credentials | None = None
        if not secret_block:
            self._credentials = credentials_from_env()
            if self._credentials is None:
                raise MissingCredentialsError(
                    "segmenter 'cloudinary' needs credentials: set CLOUDINARY_URL="
                    "cloudinary://<api_key>:<api_secret>@<cloud_name> (or CLOUDINARY_CLOUD_NAME, "
                    "CLOUDINARY_API_KEY and CLOUDINARY_API_SECRET), or give secret_block=<name of a "
                    "Prefect Secret block> and run through segflow's flow"
                )
        self._http = _Retrying(
            timeout=float(timeout),
            max_retries=int(max_retries),
            base_delay=float(retry_base_delay),
            max_delay=float(retry_max_delay),
            secrets=self._secrets,
        )
        # per-image state (fit resets it)
        self._names: list[str] = []
        self._instance_classes: dict[int, int] = {}
        self._instance_scores: dict[int, float] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r}, folder={self.folder!r})"

    # -- runtime wiring (task layer) -------------------------------------------------------

    def bind(
        self,
        *,
        credentials: str | Mapping[str, Any] | Credentials | None = None,
        call_guard: Callable[[], AbstractContextManager[Any]] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> CloudinarySegmenter:
        """Attach what is not configuration: resolved credentials (a ``cloudinary://`` URL, a
        mapping or :class:`Credentials`, e.g. a Prefect Secret's value), a ``call_guard``
        context-manager factory entered around every HTTP request (a concurrency limit), and
        the ``sleep`` used between retries. Returns ``self``."""
        if credentials is not None:
            self._credentials = (
                credentials
                if isinstance(credentials, Credentials)
                else parse_credentials(credentials)
            )
        if call_guard is not None:
            self._http.guard = call_guard
        if sleep is not None:
            self._http.sleep = sleep
        return self

    def _secrets(self) -> list[str]:
        return self._credentials.secrets() if self._credentials is not None else []

    def _creds(self) -> Credentials:
        if self._credentials is None:
            raise CloudinaryError(
                f"segmenter 'cloudinary' has secret_block={self.secret_block!r} but no credentials "
                "were bound: run it through segflow's flow (tasks/cloudinary.py resolves the "
                "Prefect Secret), or call bind(credentials=...)"
            )
        return self._credentials

    def _options(self) -> dict[str, Any]:
        """Per-call SDK options: credentials, then the options that came with them, then the
        endpoint parameters given to the segmenter."""
        creds = self._creds()
        opts: dict[str, Any] = dict(creds.options)
        for key in ("secure", "private_cdn"):
            if key in self._explicit_flags or key not in opts:
                opts[key] = self._endpoint_flags[key]
        opts.update(self._endpoint)
        opts.update(cloud_name=creds.cloud_name, api_key=creds.api_key, api_secret=creds.api_secret)
        return opts

    # -- requests ----------------------------------------------------------------------------

    def public_id(self, upload: UploadImage) -> str:
        """``<folder>/<sha256 of the uploaded pixels>``."""
        return f"{self.folder}/{upload.sha256}" if self.folder else upload.sha256

    def _post(
        self,
        action: str,
        params: dict[str, Any],
        *,
        what: str,
        file: UploadImage | None = None,
        accept: frozenset[int] = frozenset(),
    ) -> dict[str, Any] | None:
        """Signed Upload API call ``action`` built by the SDK; ``None`` for an accepted 404."""
        sdk = _sdk()
        opts = self._options()
        signed = sdk.utils.sign_request(sdk.utils.cleanup_params(params), opts)
        fields: list[tuple[str, Any]] = []
        for key, value in signed.items():
            if isinstance(value, list):
                fields.extend((f"{key}[]", v) for v in value)
            elif value:
                fields.append((key, value))
        if file is not None:
            fields.append(("file", (f"{file.sha256}.png", file.png, "image/png")))
        url = sdk.utils.cloudinary_api_url(action, **opts)

        def ok(answer: _Answer) -> dict[str, Any] | None:
            if answer.status == 404:
                return None
            body = _json_body(answer)
            if "error" in body:
                raise CloudinaryError(
                    redact(f"cloudinary {what} failed: {_error_text(answer)}", self._secrets()),
                    status=answer.status,
                )
            return body

        result: dict[str, Any] | None = self._http.request(
            "POST", url, what=what, fields=fields, ok=ok, accept=accept
        )
        return result

    def _upload_params(self, public_id: str, **extra: Any) -> dict[str, Any]:
        sdk = _sdk()
        return dict(sdk.utils.build_upload_params(public_id=public_id, **extra))

    def _ensure_asset(self, upload: UploadImage, *, detection: str | None = None) -> dict[str, Any]:
        """The asset's Upload API details, uploading the image only when it is not there yet."""
        public_id = self.public_id(upload)
        extra: dict[str, Any] = {"type": "upload"}
        if detection:
            extra["detection"] = detection
        existing = self._post(
            "explicit",
            self._upload_params(public_id, **extra),
            what=f"lookup of {public_id}",
            accept=frozenset({404}),
        )
        if existing is not None:
            logger.debug("cloudinary asset %s exists: not uploaded again", public_id)
            return existing
        params = self._upload_params(public_id, overwrite=False, unique_filename=False, **extra)
        body = self._post("upload", params, what=f"upload of {public_id}", file=upload)
        if body is None:  # pragma: no cover - 404 is not accepted for uploads
            raise CloudinaryError(f"cloudinary upload of {public_id} answered 404")
        logger.info(
            "cloudinary: %s %s (%dx%d)",
            "reused" if body.get("existing") else "uploaded",
            public_id,
            upload.width,
            upload.height,
        )
        if detection and body.get("existing") and "info" not in body:
            # another worker uploaded it between the lookup and the upload, which then stored
            # nothing and analysed nothing: analyse the stored asset
            analysed = self._post(
                "explicit", self._upload_params(public_id, **extra), what=f"analysis of {public_id}"
            )
            if analysed is not None:
                return analysed
        return body

    def delivery_url(self, public_id: str, effect: str) -> str:
        """Delivery URL of ``public_id`` as PNG with the transformation ``e_<effect>``."""
        sdk = _sdk()
        opts = self._options()
        opts.pop("upload_prefix", None)
        opts.pop("api_key", None)
        url, _ = sdk.utils.cloudinary_url(
            public_id,
            format="png",
            transformation=[{"effect": effect}],
            sign_url=self.sign_url,
            **opts,
        )
        return str(url)

    def _deliver(
        self, public_id: str, effect: str, decode: Callable[[bytes], np.ndarray]
    ) -> np.ndarray:
        url = self.delivery_url(public_id, effect)
        what = f"delivery of {public_id} with e_{effect.split(':')[0]}"

        def ok(answer: _Answer) -> np.ndarray:
            return decode(answer.data)

        result: np.ndarray = self._http.request("GET", url, what=what, ok=ok)
        return result

    # -- segmenter hooks -------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        if self.mode == "extract":
            return 1 + len(self.prompts)
        if self.mode == "detection":
            return 1 + len(self.labels or self._names)
        return 2

    @property
    def class_names(self) -> list[str]:
        if self.mode == "extract":
            return ["background", *self.prompts]
        if self.mode == "detection":
            return ["background", *(self.labels or self._names)]
        return ["background", "foreground"]

    def fit(self, image: np.ndarray) -> None:
        """Forget the previous image's detections (the service needs no statistics)."""
        self._names = []
        self._instance_classes = {}
        self._instance_scores = {}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class scores of whole images: ``(N, C, H, W)`` float32 -> ``(N, K, H, W)`` float32."""
        if self.mode == "detection":
            raise NotImplementedError(
                "mode 'detection' labels instances (label_tile), not class scores"
            )
        batch = np.asarray(batch)
        if batch.ndim != 4:
            raise ValueError(f"batch must be (N, C, H, W), got shape {batch.shape}")
        return np.stack([self._scores(img) for img in batch]).astype(np.float32, copy=False)

    def _scores(self, image: np.ndarray) -> np.ndarray:
        _, h, w = image.shape
        upload = encode_upload(image, max_side=self.max_side)
        self._ensure_asset(upload)
        public_id = self.public_id(upload)
        if self.mode == "background_removal":
            effect = "background_removal" + (":fineedges_y" if self.fine_edges else "")
            alpha = _resize_scores(self._deliver(public_id, effect, alpha_from_png), h, w)
            fg = np.clip(alpha, 0.0, 1.0)
            return np.stack([1.0 - fg, fg])
        scores = np.empty((1 + len(self.prompts), h, w), dtype=np.float32)
        multiple = "true" if self.multiple else "false"
        for k, prompt in enumerate(self.prompts, start=1):
            effect = f"extract:prompt_{urllib.parse.quote(prompt, safe='')};multiple_{multiple};mode_mask"
            scores[k] = np.clip(
                _resize_scores(self._deliver(public_id, effect, grey_from_png), h, w), 0, 1
            )
        scores[0] = 1.0 - scores[1:].max(axis=0)
        scores /= scores.sum(axis=0, keepdims=True)
        return scores

    def label_tile(self, tile: np.ndarray) -> np.ndarray:
        """Instances of the whole image (detection mode): ``(C, H, W)`` -> ``(H, W)`` int32."""
        if self.mode != "detection":
            raise NotImplementedError(
                f"mode {self.mode!r} gives class scores (predict), not instances"
            )
        image = np.asarray(tile)
        if image.ndim != 3:
            raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
        _, h, w = image.shape
        upload = encode_upload(image, max_side=self.max_side)
        body = self._ensure_asset(upload, detection=self.model)
        found = [d for d in parse_detections(body) if d.confidence >= self.min_confidence]
        if self.labels:
            wanted = {name: i for i, name in enumerate(self.labels, start=1)}
            found = [d for d in found if d.label in wanted]
            self._names = []
        else:
            self._names = sorted({d.label for d in found})
            wanted = {name: i for i, name in enumerate(self._names, start=1)}
        # the stored asset's size is what the boxes refer to
        aw = float(body.get("width") or upload.width)
        ah = float(body.get("height") or upload.height)
        sx, sy = w / aw, h / ah
        grey = image.mean(axis=0) if self.refine == "otsu" else None
        labels = np.zeros((h, w), dtype=np.int32)
        classes: dict[int, int] = {}
        scores: dict[int, float] = {}
        # paint the least confident first: overlaps go to the more confident object
        order = sorted(range(len(found)), key=lambda i: (found[i].confidence, -i))
        for n, i in enumerate(order, start=1):
            det = found[i]
            x, y, bw, bh = det.box
            x0, y0 = max(0, math.floor(x * sx)), max(0, math.floor(y * sy))
            x1, y1 = min(w, math.ceil((x + bw) * sx)), min(h, math.ceil((y + bh) * sy))
            if x1 <= x0 or y1 <= y0:
                continue
            region: np.ndarray | None = None
            if grey is not None:
                region = refine_box(grey, (y0, y1, x0, x1))
            view = labels[y0:y1, x0:x1]
            if region is None:
                view[...] = n
            else:
                view[region] = n
            classes[n] = wanted[det.label]
            scores[n] = det.confidence
        # consecutive ids 1..N in painting order (objects painted over entirely disappear)
        present = np.unique(labels)
        present = present[present > 0]
        lut = np.zeros(len(order) + 1, dtype=np.int32)
        lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
        labels = lut[labels]
        self._instance_classes = {int(lut[old]): classes[int(old)] for old in present}
        self._instance_scores = {int(lut[old]): scores[int(old)] for old in present}
        logger.debug("cloudinary detection: %d objects kept of %d", present.size, len(found))
        return labels

    def finish(
        self,
        probabilities: np.ndarray | None,
        image: np.ndarray,
        *,
        labels: np.ndarray | None = None,
    ) -> Segmentation:
        """Semantic modes: argmax of the scores. Detection: instances with their class and
        confidence, ``classes`` the class of the instance at each pixel."""
        if self.mode != "detection" or labels is None:
            return super().finish(probabilities, image, labels=labels)
        instances = np.asarray(labels, dtype=np.int32)
        lut = np.zeros(int(instances.max(initial=0)) + 1, dtype=np.int32)
        for inst, cls in self._instance_classes.items():
            lut[inst] = cls
        return Segmentation(
            classes=lut[instances],
            probabilities=None,
            instances=instances,
            instance_classes=dict(self._instance_classes),
            instance_scores=dict(self._instance_scores),
            class_names=self.class_names,
        )


class CloudinaryDetector(CloudinarySegmenter):
    """:class:`CloudinarySegmenter` with ``mode="detection"``: instance output."""

    output: ClassVar[OutputKind] = "instances"
