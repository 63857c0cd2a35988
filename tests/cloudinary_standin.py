"""A small stand-in for the part of Cloudinary's API that segflow uses, on 127.0.0.1.

The real ``cloudinary`` SDK talks to it through its own configuration: uploads go to
``upload_prefix=server.url`` (``POST /v1_1/<cloud>/image/upload`` and ``.../image/explicit``),
delivery URLs to ``cname=server.host, secure=False, private_cdn=False``
(``GET /<cloud>/image/upload/[s--sig--/][<transformation>/][v<n>/]<public_id>.png``).

What it implements (from Cloudinary's Upload API and transformation reference):

* signed Upload API requests: ``api_key`` must match and ``signature`` must equal
  ``cloudinary.utils.api_sign_request`` of the other fields with the API secret, else 401 with a
  JSON ``error.message`` (which, like the real service's "Unknown API key", names the key);
* ``upload``: stores the file under ``public_id``; ``overwrite=0`` on an existing id stores
  nothing and answers the existing asset with ``existing: true``; ``detection=<model>`` adds
  ``info.detection.object_detection`` (``status: complete``, ``data.<model>.tags.<label>[]``
  objects with ``bounding-box`` ``[x, y, w, h]`` and ``confidence``);
* ``explicit``: 404 ``Resource not found`` for an unknown id, else the asset (+ detection);
* delivery: the original, ``e_background_removal[:fineedges_y]`` (RGBA PNG) and
  ``e_extract:prompt_<p>;multiple_<b>;mode_mask`` (grey PNG); signed URLs are verified; an
  unknown id is 404 with ``X-Cld-Error``.

Its "AI" is a fixed rule on the grey level ``g`` (mean of the channels) of the stored image, so
tests know the answer from the pictures they draw: foreground ``g > 80``; prompt ``bright`` is
``g > 180``, ``dim`` is ``80 < g <= 180``, ``object`` is ``g > 80``, anything else nothing;
detection = 8-connected components of the foreground, labelled ``bright``/``dim`` by their mean,
confidence ``0.6 + 0.39 * mean / 255`` (0.2 for components under 20 pixels).

Faults: :meth:`StandIn.inject` queues one-shot faults per endpoint (``upload``, ``explicit``,
``delivery``): an HTTP status with an optional ``Retry-After``, a hang longer than the client's
timeout, a malformed (non-JSON / non-PNG) 200 body. ``fail_rule`` fails requests persistently
(e.g. every upload of one image). ``counts`` and ``requests`` record what arrived.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np
from cloudinary.utils import api_sign_request
from scipy import ndimage

FG, BRIGHT = 80, 180


@dataclass
class Fault:
    """One injected fault: ``kind`` is ``"status"``, ``"hang"`` or ``"malformed"``."""

    kind: str = "status"
    status: int = 500
    retry_after: str | None = None
    seconds: float = 0.0
    message: str = "injected fault"
    echo_key: bool = False


@dataclass
class Asset:
    public_id: str
    pixels: np.ndarray  # (H, W) or (H, W, 3) uint8, RGB
    png: bytes
    version: int


@dataclass
class StandIn:
    """The server; use as a context manager (``with StandIn() as server:``)."""

    cloud_name: str = "segflow-test"
    api_key: str = "814736259185263"
    api_secret: str = "Zq8vN3-standin-SECRET-x7Kp2"
    bg_limit: int = 6144
    assets: dict[str, Asset] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    fields_seen: list[dict[str, str]] = field(default_factory=list)
    faults: dict[str, deque[Fault]] = field(default_factory=dict)
    #: persistent failures: (endpoint, info) -> Fault or None; info has public_id, width, height
    fail_rule: Callable[[str, dict[str, Any]], Fault | None] | None = None
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> StandIn:
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``upload_prefix`` for the SDK."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        """``cname`` for delivery URLs (with ``secure=False``)."""
        return f"127.0.0.1:{self.port}"

    @property
    def cloudinary_url(self) -> str:
        """``CLOUDINARY_URL`` of this stand-in account, endpoints included."""
        query = urllib.parse.urlencode(
            {"upload_prefix": self.url, "cname": self.host, "secure": "false"}
        )
        return f"cloudinary://{self.api_key}:{self.api_secret}@{self.cloud_name}?{query}"

    def endpoint_params(self) -> dict[str, Any]:
        """Segmenter parameters pointing the SDK here."""
        return {"upload_prefix": self.url, "cname": self.host, "secure": False}

    def inject(self, endpoint: str, *faults: Fault) -> None:
        with self._lock:
            self.faults.setdefault(endpoint, deque()).extend(faults)

    def _next_fault(self, endpoint: str, info: dict[str, Any]) -> Fault | None:
        with self._lock:
            queue = self.faults.get(endpoint)
            if queue:
                return queue.popleft()
        if self.fail_rule is not None:
            return self.fail_rule(endpoint, info)
        return None

    # -- the "AI" ---------------------------------------------------------------------------

    @staticmethod
    def grey(pixels: np.ndarray) -> np.ndarray:
        return (
            pixels.astype(np.float64)
            if pixels.ndim == 2
            else pixels.astype(np.float64).mean(axis=2)
        )

    def detect(self, pixels: np.ndarray) -> dict[str, list[dict[str, Any]]]:
        g = self.grey(pixels)
        labels, _ = ndimage.label(g > FG, structure=np.ones((3, 3), dtype=bool))
        tags: dict[str, list[dict[str, Any]]] = {}
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None:
                continue
            comp = labels[sl] == i
            mean = float(g[sl][comp].mean())
            label = "bright" if mean > BRIGHT else "dim"
            area = int(comp.sum())
            conf = round(0.6 + 0.39 * mean / 255, 4) if area >= 20 else 0.2
            box = [sl[1].start, sl[0].start, sl[1].stop - sl[1].start, sl[0].stop - sl[0].start]
            tags.setdefault(label, []).append(
                {"bounding-box": [float(v) for v in box], "confidence": conf, "categories": [label]}
            )
        return tags

    def extract(self, pixels: np.ndarray, prompt: str) -> np.ndarray:
        g = self.grey(pixels)
        if prompt == "bright":
            m = g > BRIGHT
        elif prompt == "dim":
            m = (g > FG) & (g <= BRIGHT)
        elif prompt == "object":
            m = g > FG
        else:
            m = np.zeros(g.shape, dtype=bool)
        return np.where(m, 255, 0).astype(np.uint8)

    def remove_background(self, pixels: np.ndarray) -> np.ndarray:
        rgb = pixels if pixels.ndim == 3 else np.repeat(pixels[:, :, None], 3, axis=2)
        alpha = np.where(self.grey(pixels) > FG, 255, 0).astype(np.uint8)
        rgba = np.dstack([rgb, alpha])
        h, w = alpha.shape
        if max(h, w) > self.bg_limit:  # the service scales inputs down to its limit
            s = self.bg_limit / max(h, w)
            rgba = cv2.resize(
                rgba, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA
            )
        return rgba

    # -- responses ------------------------------------------------------------------------

    def details(
        self, asset: Asset, *, detection: str | None, existing: bool = False
    ) -> dict[str, Any]:
        h, w = asset.pixels.shape[:2]
        body: dict[str, Any] = {
            "asset_id": hashlib.md5(asset.public_id.encode()).hexdigest(),
            "public_id": asset.public_id,
            "version": asset.version,
            "width": w,
            "height": h,
            "format": "png",
            "resource_type": "image",
            "type": "upload",
            "bytes": len(asset.png),
            "url": f"http://{self.host}/{self.cloud_name}/image/upload/v{asset.version}/{asset.public_id}.png",
            "secure_url": f"https://{self.host}/{self.cloud_name}/image/upload/v{asset.version}/{asset.public_id}.png",
        }
        if existing:
            body["existing"] = True
        if detection:
            body["info"] = {
                "detection": {
                    "object_detection": {
                        "status": "complete",
                        "data": {
                            detection: {
                                "model_version": 1,
                                "schema_version": 1,
                                "tags": self.detect(asset.pixels),
                            }
                        },
                    }
                }
            }
        return body


def _png(img: np.ndarray) -> bytes:
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def _url_signature(to_sign: str, secret: str) -> str:
    digest = hashlib.sha1((to_sign + secret).encode()).digest()
    return "s--" + base64.urlsafe_b64encode(digest)[:8].decode() + "--"


class _Handler(BaseHTTPRequestHandler):
    standin: StandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing ---------------------------------------------------------------------------

    def _send(
        self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
    ) -> None:
        s = self.standin
        with s._lock:
            s.requests.append((self.command, self.path, status))
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": {"message": message}}, headers)

    def _apply(self, fault: Fault | None, *, api_key: str = "", json_api: bool = True) -> bool:
        """Play ``fault``; True when the request was answered (or dropped) by it."""
        if fault is None:
            return False
        if fault.kind == "hang":
            self.standin.stopping.wait(fault.seconds)
            return False  # answer normally, late: the client has given up by then
        if fault.kind == "malformed":
            if json_api:
                self._send(200, b'{"public_id": "trunc', "application/json")
            else:
                self._send(200, b"\x89PNG\r\n\x1a\n-truncated", "image/png")
            return True
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        message = fault.message + (f" (api_key={api_key})" if fault.echo_key else "")
        if json_api:
            self._error(fault.status, message, headers)
        else:
            headers["X-Cld-Error"] = message
            self._send(fault.status, b"", "text/html", headers)
        return True

    # -- Upload API ---------------------------------------------------------------------------

    def _form(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        ctype = self.headers.get("Content-Type", "")
        msg = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body
        )
        out: dict[str, Any] = {}
        if not msg.is_multipart():
            return out
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            out[str(name)] = payload if part.get_filename() else payload.decode()
        return out

    def do_POST(self) -> None:
        s = self.standin
        m = re.fullmatch(r"/v1_1/([^/]+)/image/(upload|explicit)", self.path)
        form = self._form()
        if not m:
            self._error(404, f"unknown endpoint {self.path}")
            return
        cloud, action = m.groups()
        s.counts[action] += 1
        fields = {k: v for k, v in form.items() if k != "file"}
        with s._lock:
            s.fields_seen.append({"action": action, **fields})
        api_key = str(form.get("api_key", ""))
        if cloud != s.cloud_name:
            self._error(401, f"Invalid cloud_name {cloud}")
            return
        if api_key != s.api_key:
            self._error(401, f"Unknown API key {api_key}")
            return
        signed = {k: v for k, v in fields.items() if k not in ("api_key", "signature")}
        if form.get("signature") != api_sign_request(signed, s.api_secret):
            self._error(401, "Invalid Signature")
            return
        public_id = str(form.get("public_id", ""))
        info: dict[str, Any] = {"public_id": public_id}
        pixels = None
        if action == "upload":
            data = form.get("file")
            if not isinstance(data, bytes):
                self._error(400, "Missing required parameter - file")
                return
            arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            if arr is None:
                self._error(400, "Invalid image file")
                return
            pixels = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB) if arr.ndim == 3 else arr
            info.update(height=pixels.shape[0], width=pixels.shape[1])
        elif public_id in s.assets:
            info.update(
                height=s.assets[public_id].pixels.shape[0],
                width=s.assets[public_id].pixels.shape[1],
            )
        if self._apply(s._next_fault(action, info), api_key=api_key):
            return
        detection = fields.get("detection") or None
        asset = s.assets.get(public_id)
        if action == "explicit":
            if asset is None:
                self._error(404, f"Resource not found - {public_id}")
                return
            self._json(200, s.details(asset, detection=detection))
            return
        if asset is not None and fields.get("overwrite") in ("0", "false"):
            s.counts["existing"] += 1
            self._json(200, s.details(asset, detection=None, existing=True))
            return
        assert pixels is not None
        asset = Asset(
            public_id=public_id, pixels=pixels, png=_png(pixels), version=int(time.time())
        )
        with s._lock:
            s.assets[public_id] = asset
            s.counts["created"] += 1
        self._json(200, s.details(asset, detection=detection))

    # -- delivery ---------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        s = self.standin
        path = urllib.parse.urlsplit(self.path).path
        prefix = f"/{s.cloud_name}/image/upload/"
        if not path.startswith(prefix):
            self._send(404, b"", "text/html", {"X-Cld-Error": "Invalid URL"})
            return
        s.counts["delivery"] += 1
        comps = path[len(prefix) :].split("/")
        signature = comps.pop(0) if comps and comps[0].startswith("s--") else None
        transformation: list[str] = []
        while len(comps) > 1 and re.match(r"^[a-z]{1,3}_", comps[0]):
            transformation.append(comps.pop(0))
        if comps and re.fullmatch(r"v\d+", comps[0]):
            comps.pop(0)
        source = "/".join(comps)
        t = "/".join(transformation)
        if signature is not None and signature != _url_signature(
            "/".join(p for p in (t, source) if p), s.api_secret
        ):
            self._send(401, b"", "text/html", {"X-Cld-Error": "Invalid signature"})
            return
        public_id, _, ext = source.rpartition(".")
        asset = s.assets.get(urllib.parse.unquote(public_id))
        info = {"public_id": public_id, "transformation": t}
        if self._apply(s._next_fault("delivery", info), json_api=False):
            return
        if asset is None or ext != "png":
            self._send(404, b"", "text/html", {"X-Cld-Error": f"Resource not found - {public_id}"})
            return
        if not t:
            self._send(200, asset.png, "image/png")
            return
        with s._lock:
            key = f"derived:{t}/{public_id}"
            s.counts[key] += 1
            if s.counts[key] == 1:
                s.counts["derived_created"] += 1
        effect = urllib.parse.unquote(t)
        if re.fullmatch(r"e_background_removal(:fineedges_[yn])?", effect):
            self._send(200, _png(s.remove_background(asset.pixels)), "image/png")
            return
        m = re.fullmatch(r"e_extract:prompt_([^;]+)((?:;[a-z-]+_[a-z]+)*)", effect)
        if m:
            opts = dict(o.split("_", 1) for o in m.group(2).split(";") if o)
            if opts.get("mode") != "mask":
                self._send(
                    400, b"", "text/html", {"X-Cld-Error": "stand-in only supports mode_mask"}
                )
                return
            self._send(200, _png(s.extract(asset.pixels, m.group(1))), "image/png")
            return
        self._send(400, b"", "text/html", {"X-Cld-Error": f"Invalid transformation {effect}"})
