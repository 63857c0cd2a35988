"""Batch detection: which folders under a root are *complete* batches (pure: no Prefect).

A **batch** is a direct sub-folder of the watched root — a local folder or any fsspec URL
(``file://``, ``memory://``, ``s3://`` with s3fs). Its **name** is the folder name, and the name
is its identity: one batch name is announced once, ever (producers should use unique names such
as ``2026-11-25T0300-scope3``). A batch counts as complete when, checked in this order,

1. **marker**: it holds a marker file (default ``_READY``), which the producer writes last;
2. **manifest**: it holds a manifest (default ``manifest.json``, ``MANIFEST.txt`` or
   ``manifest.txt``) and every file the manifest lists is present — with the listed size, where
   the manifest gives one. The manifest may be written first: the batch completes when the last
   listed file has arrived. Formats: JSON ``["a.png", ...]`` or ``{"files": ["a.png",
   {"path": "b.png", "size": 1234}, ...]}``; text: one relative path per line, ``#`` comments;
3. **quiet period** (``quiet_period`` seconds, ``None`` turns it off): its listing (relative paths,
   sizes, modification times) stayed identical for at least ``quiet_period`` seconds *as seen by
   this watcher* (two observations that far apart; file times are never trusted, because copy tools
   preserve old times), and no file looks like a partial upload (``*.part``, ``*.tmp``,
   ``*.partial``, ``*.crdownload``, ``*.filepart``, ``*.!sync``, ``~$*``).

Whatever the mode, a batch must hold at least one image (a file whose name ends with one of the
extensions, hidden files and folders excluded — the same rule as :func:`segflow.ingest.list_images`;
a ``*.zarr`` store is one image) to count; ``n_images`` is that count. A manifest lists files:
for a Zarr store, list its files (or use the marker).

**State.** :class:`BatchWatcher` keeps a small JSON file (``state_path``, always local): the batches
already announced (name, URI, image count, reason, fingerprint, time) and the quiet-period timers
of those still pending. It is rewritten atomically (temporary file + ``os.replace``) after every
announcement, so a restarted watcher never announces a batch again and resumes its timers. The
watcher calls ``emit(batch)`` *before* recording the batch: an ``emit`` that raises leaves the batch
pending, to be retried at the next poll; a crash between a successful ``emit`` and the state write
(a window of one file write) would announce it again on restart, which is why
:attr:`Batch.event_id` is deterministic (receivers such as Prefect's trigger service drop an event
id they have seen). One watcher per state file: a second one is refused (an ``flock`` on
``<state_path>.lock``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import posixpath
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import fsspec

from segflow.config import DEFAULT_EXTENSIONS, mask_url_credentials, url_has_credentials
from segflow.ingest import zarr_store_of

__all__ = [
    "DEFAULT_MANIFESTS",
    "DEFAULT_MARKERS",
    "DEFAULT_QUIET_PERIOD",
    "PARTIAL_SUFFIXES",
    "STATE_VERSION",
    "Batch",
    "BatchListing",
    "BatchWatcher",
    "WatcherBusyError",
    "check_manifest",
    "default_state_path",
    "list_batch",
    "list_batch_folders",
]

logger = logging.getLogger(__name__)

DEFAULT_MARKERS: tuple[str, ...] = ("_READY",)
DEFAULT_MANIFESTS: tuple[str, ...] = ("manifest.json", "MANIFEST.txt", "manifest.txt")
DEFAULT_QUIET_PERIOD = 300.0
"""Seconds a batch's listing must stay unchanged to count as complete without marker/manifest."""

PARTIAL_SUFFIXES: tuple[str, ...] = (
    ".part",
    ".tmp",
    ".partial",
    ".crdownload",
    ".filepart",
    ".!sync",
)
"""File endings of uploads in progress: a batch holding one is never complete by quiet period."""

STATE_VERSION = 1

Reason = Literal["marker", "manifest", "quiet"]

#: Namespace of :attr:`Batch.event_id` (uuid5 of ``segflow.batch:<uri>``).
_EVENT_NAMESPACE = uuid.UUID("6d1f6c3e-5a0b-4c8e-9b43-2f0d9e6a8c11")


def _has_protocol(source: str) -> bool:
    return "://" in source or source.startswith(("s3:", "gs:", "az:", "memory:"))


@dataclass(frozen=True, slots=True)
class Batch:
    """One complete batch, as announced.

    Attributes
    ----------
    name : str
        Folder name (the batch's identity).
    uri : str
        What the pipeline reads: a plain local path when the root was a plain path, else a
        protocol-qualified URL (``memory:///inbox/b1``, ``s3://bucket/inbox/b1``).
    n_images : int
        Images in the folder (recursive, by extension, hidden files excluded).
    reason : "marker" | "manifest" | "quiet"
        Why it counts as complete.
    fingerprint : str
        sha256 of the listing (relative paths, sizes, modification times) when announced.
    """

    name: str
    uri: str
    n_images: int
    reason: Reason
    fingerprint: str

    @property
    def resource_id(self) -> str:
        """``segflow.batch.<name>``: the Prefect resource id of the batch."""
        return f"segflow.batch.{self.name}"

    @property
    def event_id(self) -> str:
        """Deterministic event id (uuid5 of the URI): a repeated announcement carries the same id."""
        return str(uuid.uuid5(_EVENT_NAMESPACE, f"segflow.batch:{self.uri}"))

    def payload(self) -> dict[str, Any]:
        """The event payload: ``uri``, ``n_images``, ``name``, ``reason``."""
        return {
            "uri": self.uri,
            "n_images": self.n_images,
            "name": self.name,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class BatchListing:
    """What one look at a batch folder found.

    ``files`` maps each relative path (``/``-separated) to ``(size, mtime)`` (``mtime`` is ``""``
    when the filesystem gives none); ``images`` are the relative paths counted as images.
    """

    name: str
    uri: str
    files: Mapping[str, tuple[int, str]]
    images: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        """sha256 over the sorted ``(path, size, mtime)`` entries."""
        h = hashlib.sha256()
        for rel in sorted(self.files):
            size, mtime = self.files[rel]
            h.update(f"{rel}\0{size}\0{mtime}\n".encode())
        return h.hexdigest()

    def has_partial_uploads(self) -> bool:
        """Whether a file looks like an upload in progress (:data:`PARTIAL_SUFFIXES`, ``~$*``)."""
        for rel in self.files:
            base = posixpath.basename(rel)
            if base.lower().endswith(PARTIAL_SUFFIXES) or base.startswith("~$"):
                return True
        return False


def _mtime(info: Mapping[str, Any]) -> str:
    """A filesystem's modification time, as text (local ``mtime``, memory ``created``, S3 ``LastModified``)."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(key)
        if value is not None:
            return str(value)
    return ""


def _is_hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def list_batch_folders(
    root: str | Path, *, storage_options: Mapping[str, Any] | None = None
) -> list[tuple[str, str]]:
    """``(name, uri)`` of every direct, non-hidden sub-folder of ``root``, sorted by name.

    Raises ``FileNotFoundError`` when ``root`` does not exist and ``ValueError`` when it is a file.
    """
    source = str(root)
    fs, path = fsspec.core.url_to_fs(source, **dict(storage_options or {}))
    if not fs.exists(path):
        raise FileNotFoundError(f"watched root {source!r} does not exist")
    if not fs.isdir(path):
        raise ValueError(
            f"watched root {source!r} is a file; give the folder that holds the batch folders"
        )
    plain = not _has_protocol(source)
    out: list[tuple[str, str]] = []
    for info in fs.ls(path, detail=True):
        if info.get("type") != "directory":
            continue
        full = str(info["name"]).rstrip("/")
        name = posixpath.basename(full)
        if not name or name.startswith("."):
            continue
        uri = full if plain else fs.unstrip_protocol(full)
        out.append((name, uri))
    out.sort()
    return out


def list_batch(
    uri: str,
    *,
    extensions: Iterable[str] = DEFAULT_EXTENSIONS,
    storage_options: Mapping[str, Any] | None = None,
) -> BatchListing:
    """List one batch folder (recursive): every file with size and mtime, and which are images."""
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if not exts:
        raise ValueError("extensions must name at least one file ending, e.g. ('.png',)")
    fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    path = path.rstrip("/")
    prefix = path + "/"
    files: dict[str, tuple[int, str]] = {}
    images: set[str] = set()
    zarr = ".zarr" in exts
    for full, info in fs.find(path, withdirs=False, detail=True).items():
        if info.get("type", "file") != "file" or not str(full).startswith(prefix):
            continue
        rel = str(full)[len(prefix) :]
        files[rel] = (int(info.get("size") or 0), _mtime(info))
        parts = rel.split("/")
        store = zarr_store_of(parts) if zarr else None
        if store is not None:  # a Zarr store is one image, as segflow.ingest lists it
            if not _is_hidden(store):  # (its own metadata files may start with a dot)
                images.add(store)
        elif not _is_hidden(rel) and rel.lower().endswith(exts):
            images.add(rel)
    return BatchListing(
        name=posixpath.basename(path), uri=uri, files=files, images=tuple(sorted(images))
    )


def _manifest_entries(text: str, *, json_format: bool) -> list[tuple[str, int | None]]:
    """``(relative path, size or None)`` of a manifest; ``ValueError`` when it cannot be parsed."""
    entries: list[tuple[str, int | None]] = []
    if not json_format:
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                entries.append((line[2:] if line.startswith("./") else line, None))
        return entries
    data = json.loads(text)
    items = data.get("files") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError('a JSON manifest must be a list of paths or {"files": [...]}')
    for item in items:
        if isinstance(item, str):
            entries.append((item, None))
        elif isinstance(item, dict) and isinstance(item.get("path"), str):
            size = item.get("size")
            if size is not None and (
                not isinstance(size, int) or isinstance(size, bool) or size < 0
            ):
                raise ValueError(
                    f"manifest size of {item['path']!r} must be an integer >= 0, got {size!r}"
                )
            entries.append((item["path"], size))
        else:
            raise ValueError(
                f'manifest entries must be paths or {{"path": ..., "size": ...}}, got {item!r}'
            )
    return entries


def check_manifest(text: str, listing: BatchListing, *, json_format: bool) -> list[str]:
    """The manifest's files that are missing from ``listing`` (or have another size); ``[]`` = complete.

    Raises ``ValueError`` for a manifest that cannot be parsed, lists no file, or names a folder
    (a ``*.zarr`` store, say: whether all its chunks have arrived cannot be told from its name,
    and a missing chunk reads as zeros, so its files must be listed, or the marker used).
    """
    entries = _manifest_entries(text, json_format=json_format)
    if not entries:
        raise ValueError("the manifest lists no file")
    missing = []
    for rel, size in entries:
        rel = posixpath.normpath(rel.strip("/"))
        found = listing.files.get(rel)
        if found is None and any(f.startswith(rel + "/") for f in listing.files):
            raise ValueError(
                f"the manifest names the folder {rel!r}; list the files in it, or complete "
                "the batch with the marker file"
            )
        if found is None or (size is not None and found[0] != size):
            missing.append(rel)
    return missing


def default_state_path(root: str | Path) -> Path:
    """``$SEGFLOW_HOME/watch/<sha256(root)[:16]>.json`` (``SEGFLOW_HOME`` defaults to ``~/.segflow``)."""
    home = Path(os.environ.get("SEGFLOW_HOME") or Path.home() / ".segflow")
    digest = hashlib.sha256(str(root).rstrip("/").encode()).hexdigest()[:16]
    return home / "watch" / f"{digest}.json"


class WatcherBusyError(RuntimeError):
    """Another watcher holds the lock of this state file."""


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class BatchWatcher:
    """Finds complete batches under ``root`` and announces each once, across restarts.

    Parameters
    ----------
    root : str or Path
        Folder or fsspec URL whose direct sub-folders are batches.
    state_path : str or Path, optional
        Local JSON state file (default :func:`default_state_path`).
    quiet_period : float or None
        Seconds of unchanged listing that complete a batch without marker or manifest;
        ``None`` waits for a marker or manifest only.
    markers, manifests : sequence of str
        File names that mark a batch complete / list its files.
    extensions : iterable of str
        File endings counted as images.
    clock : callable
        Seconds since the epoch (``time.time``); tests pass a fake clock.
    storage_options : mapping, optional
        fsspec options for ``root`` (credentials stay out of the state file).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        state_path: str | Path | None = None,
        quiet_period: float | None = DEFAULT_QUIET_PERIOD,
        markers: Sequence[str] = DEFAULT_MARKERS,
        manifests: Sequence[str] = DEFAULT_MANIFESTS,
        extensions: Iterable[str] = DEFAULT_EXTENSIONS,
        clock: Callable[[], float] = time.time,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if quiet_period is not None and not quiet_period >= 0:
            raise ValueError(
                f"quiet_period must be >= 0 seconds or None (off), got {quiet_period!r}"
            )
        if not markers and not manifests and quiet_period is None:
            raise ValueError(
                "give at least one of markers, manifests or quiet_period: nothing could complete a batch"
            )
        if url_has_credentials(str(root)):
            raise ValueError(
                f"{mask_url_credentials(str(root))}: a URL with credentials would put the secret "
                "into the state file, the events and the runs; give them to fsspec instead "
                "(storage_options, or FSSPEC_<PROTOCOL> variables)"
            )
        self.root = str(root)
        self.state_path = (
            Path(state_path) if state_path is not None else default_state_path(self.root)
        )
        self.quiet_period = quiet_period
        self.markers = tuple(markers)
        self.manifests = tuple(manifests)
        self.extensions = tuple(extensions)
        self.clock = clock
        self.storage_options = dict(storage_options or {})
        self.state = self._load_state()

    # -- state ----------------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {"version": STATE_VERSION, "root": self.root, "emitted": {}, "pending": {}}
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"watch state file {self.state_path} cannot be read ({exc}); fix or remove it "
                "(removing it announces every complete batch under the root again)"
            ) from exc
        version = state.get("version") if isinstance(state, dict) else None
        if version != STATE_VERSION:
            raise ValueError(
                f"watch state file {self.state_path} has version {version!r}; this segflow reads version {STATE_VERSION}"
            )
        if state.get("root") != self.root:
            logger.warning(
                "state file %s was written for root %r, now watching %r",
                self.state_path,
                state.get("root"),
                self.root,
            )
        state.setdefault("emitted", {})
        state.setdefault("pending", {})
        return dict(state)

    def save_state(self) -> None:
        """Write the state file atomically (temporary file in the same folder, then ``os.replace``)."""
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=self.state_path.name + ".", suffix=".tmp", dir=self.state_path.parent
        )
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.state, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.state_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @property
    def emitted(self) -> dict[str, dict[str, Any]]:
        """Announced batches by name (from the state file)."""
        return dict(self.state["emitted"])

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``<state_path>.lock`` (``flock``); raises :class:`WatcherBusyError` if another holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock, one watcher by convention
            yield
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.state_path.with_name(self.state_path.name + ".lock")
        with open(lock_path, "a") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise WatcherBusyError(
                    f"another watcher uses the state file {self.state_path} (lock {lock_path})"
                ) from exc
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # -- detection ------------------------------------------------------------------------

    def _read_text(self, uri: str, rel: str) -> str:
        fs, path = fsspec.core.url_to_fs(uri, **self.storage_options)
        with fs.open(path.rstrip("/") + "/" + rel, "rb") as fh:
            return fh.read().decode("utf-8", errors="replace")

    def _completion(self, listing: BatchListing, now: float) -> Reason | None:
        """Why ``listing`` is complete, or ``None`` (updates the pending quiet-period timer)."""
        if any(m in listing.files for m in self.markers):
            return "marker"
        for manifest in self.manifests:
            if manifest not in listing.files:
                continue
            try:
                missing = check_manifest(
                    self._read_text(listing.uri, manifest),
                    listing,
                    json_format=manifest.lower().endswith(".json"),
                )
            except (ValueError, OSError) as exc:
                logger.warning(
                    "batch %s: manifest %s unusable (%s); waiting", listing.name, manifest, exc
                )
                return None
            if not missing:
                return "manifest"
            logger.debug("batch %s: %d files of the manifest missing", listing.name, len(missing))
            return None  # a manifest says what is coming: no quiet-period completion before that
        if self.quiet_period is None:
            return None
        fingerprint = listing.fingerprint
        pending = self.state["pending"].get(listing.name)
        if pending is None or pending.get("fingerprint") != fingerprint:
            self.state["pending"][listing.name] = {"fingerprint": fingerprint, "since": now}
            return None
        if listing.has_partial_uploads():
            return None
        if now - float(pending["since"]) >= self.quiet_period:
            return "quiet"
        return None

    def find_complete(self) -> list[Batch]:
        """Complete, not yet announced batches (sorted by name); updates the quiet-period timers.

        Does not record anything as announced: :meth:`poll` does, after ``emit`` succeeded.
        """
        now = self.clock()
        found: list[Batch] = []
        seen: set[str] = set()
        for name, uri in list_batch_folders(self.root, storage_options=self.storage_options):
            seen.add(name)
            if name in self.state["emitted"]:
                continue
            listing = list_batch(
                uri, extensions=self.extensions, storage_options=self.storage_options
            )
            reason = self._completion(listing, now)
            if reason is None:
                continue
            if not listing.images:
                logger.warning(
                    "batch %s is marked complete (%s) but holds no image; waiting", name, reason
                )
                continue
            found.append(
                Batch(
                    name=name,
                    uri=uri,
                    n_images=len(listing.images),
                    reason=reason,
                    fingerprint=listing.fingerprint,
                )
            )
        # forget timers of folders that went away
        for name in list(self.state["pending"]):
            if name not in seen:
                del self.state["pending"][name]
        return found

    def poll(self, emit: Callable[[Batch], Any]) -> list[Batch]:
        """One look: ``emit(batch)`` for each new complete batch, then record it; return those emitted.

        A batch whose ``emit`` raises is logged and left for the next poll. The state file is
        written after each successful ``emit`` (and once at the end, for the timers).
        """
        done: list[Batch] = []
        for batch in self.find_complete():
            try:
                emit(batch)
            except Exception as exc:
                logger.error(
                    "announcing batch %s failed (%s: %s); retrying at the next poll",
                    batch.name,
                    type(exc).__name__,
                    exc,
                )
                continue
            self.state["emitted"][batch.name] = {
                "uri": batch.uri,
                "n_images": batch.n_images,
                "reason": batch.reason,
                "fingerprint": batch.fingerprint,
                "event_id": batch.event_id,
                "emitted_at": _now_iso(),
            }
            self.state["pending"].pop(batch.name, None)
            self.save_state()
            logger.info(
                "batch %s complete (%s, %d images): announced",
                batch.name,
                batch.reason,
                batch.n_images,
            )
            done.append(batch)
        self.save_state()
        return done

    def run(
        self,
        emit: Callable[[Batch], Any],
        *,
        interval: float = 10.0,
        once: bool = False,
        stop: threading.Event | None = None,
    ) -> int:
        """Poll every ``interval`` seconds until ``stop`` is set (or once); return the batches announced.

        Holds the state file's lock for the whole run. A poll that fails (root unreachable) is
        logged and retried after ``interval``; with ``once`` the error propagates.
        """
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        stop = stop if stop is not None else threading.Event()
        total = 0
        with self.locked():
            while True:
                try:
                    total += len(self.poll(emit))
                except (OSError, ValueError) as exc:
                    if once:
                        raise
                    logger.error(
                        "watching %s failed (%s: %s); retrying in %.0f s",
                        self.root,
                        type(exc).__name__,
                        exc,
                        interval,
                    )
                if once or stop.wait(interval):
                    return total
