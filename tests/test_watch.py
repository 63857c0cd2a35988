"""Batch detection (segflow.watch): marker, manifest, quiet period, state, locks, fsspec URLs."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segflow import ingest
from segflow.watch import (
    Batch,
    BatchWatcher,
    WatcherBusyError,
    check_manifest,
    default_state_path,
    list_batch,
    list_batch_folders,
)


class FakeClock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def write(path: Path, data: bytes = b"\x89PNG fake") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def collect() -> tuple[list[Batch], Callable[[Batch], None]]:
    got: list[Batch] = []
    return got, got.append


@pytest.fixture()
def inbox(tmp_path: Path) -> Path:
    root = tmp_path / "inbox"
    root.mkdir()
    return root


@pytest.fixture()
def mem_root() -> Iterator[str]:
    fs = fsspec.filesystem("memory")
    root = f"/watch-{uuid.uuid4().hex}"
    fs.mkdir(root)
    yield root
    fs.rm(root, recursive=True)


def watcher(root: Path | str, tmp_path: Path, **kw) -> BatchWatcher:  # type: ignore[no-untyped-def]
    kw.setdefault("state_path", tmp_path / "state" / "watch.json")
    kw.setdefault("quiet_period", None)
    return BatchWatcher(root, **kw)


# -- marker ---------------------------------------------------------------------------------


def test_marker_completes_a_batch_once(inbox: Path, tmp_path: Path) -> None:
    for i in range(3):
        write(inbox / "b1" / f"img_{i}.png")
    write(inbox / "b1" / "notes.txt", b"not an image")
    w = watcher(inbox, tmp_path)
    got, emit = collect()
    assert w.poll(emit) == [] and got == []  # no marker yet: a half-written batch
    write(inbox / "b1" / "_READY", b"")
    emitted = w.poll(emit)
    assert [b.name for b in emitted] == ["b1"]
    batch = emitted[0]
    assert batch.reason == "marker"
    assert batch.n_images == 3
    assert batch.uri == str(inbox / "b1")
    assert batch.resource_id == "segflow.batch.b1"
    assert batch.payload() == {
        "uri": str(inbox / "b1"),
        "n_images": 3,
        "name": "b1",
        "reason": "marker",
    }
    assert w.poll(emit) == []  # never twice
    assert got == emitted


def test_marker_without_images_is_not_announced(inbox: Path, tmp_path: Path) -> None:
    write(inbox / "empty" / "_READY", b"")
    w = watcher(inbox, tmp_path)
    got, emit = collect()
    assert w.poll(emit) == [] and got == []
    write(inbox / "empty" / "late.png")
    assert [b.n_images for b in w.poll(emit)] == [1]


def test_image_count_matches_the_pipeline_listing(inbox: Path, tmp_path: Path) -> None:
    """The announced count equals what segflow.ingest.list_images will process."""
    batch = inbox / "mixed"
    for rel in [
        "a.png",
        "b.JPG",
        "sub/c.tif",
        "sub/deeper/d.tiff",
        ".hidden.png",
        ".cache/e.png",
        "f.txt",
        "g.bmp",
    ]:
        write(batch / rel)
    write(batch / "_READY", b"")
    (b,) = watcher(inbox, tmp_path).poll(lambda _: None)
    assert b.n_images == len(ingest.list_images(batch)) == 5


def test_hidden_and_plain_files_at_root_are_not_batches(inbox: Path, tmp_path: Path) -> None:
    write(inbox / ".staging" / "x.png")
    write(inbox / ".staging" / "_READY", b"")
    write(inbox / "loose.png")
    assert list_batch_folders(inbox) == []
    assert watcher(inbox, tmp_path).poll(lambda _: None) == []


# -- manifest -------------------------------------------------------------------------------


def test_json_manifest_waits_for_every_listed_file(inbox: Path, tmp_path: Path) -> None:
    batch = inbox / "m1"
    manifest = {"files": ["a.png", {"path": "sub/b.png", "size": 5}, "c.png"]}
    write(batch / "manifest.json", json.dumps(manifest).encode())
    write(batch / "a.png")
    w = watcher(inbox, tmp_path)
    assert w.poll(lambda _: None) == []
    write(batch / "sub" / "b.png", b"1234")  # wrong size: still in flight
    write(batch / "c.png")
    assert w.poll(lambda _: None) == []
    write(batch / "sub" / "b.png", b"12345")
    (b,) = w.poll(lambda _: None)
    assert (b.name, b.reason, b.n_images) == ("m1", "manifest", 3)


def test_text_manifest_and_comments(inbox: Path, tmp_path: Path) -> None:
    batch = inbox / "t1"
    write(batch / "MANIFEST.txt", b"# produced by scope 3\n./a.png\nb.png\n\n")
    write(batch / "a.png")
    w = watcher(inbox, tmp_path)
    assert w.poll(lambda _: None) == []
    write(batch / "b.png")
    assert [b.reason for b in w.poll(lambda _: None)] == ["manifest"]


def test_unusable_manifest_never_completes_and_does_not_raise(
    inbox: Path, tmp_path: Path, caplog
) -> None:  # type: ignore[no-untyped-def]
    write(inbox / "bad" / "manifest.json", b"{not json")
    write(inbox / "bad" / "a.png")
    w = watcher(inbox, tmp_path, quiet_period=0.0)
    assert w.poll(lambda _: None) == []
    assert (
        w.poll(lambda _: None) == []
    )  # not even by quiet period: the manifest says what is coming
    assert "manifest.json unusable" in caplog.text


@pytest.mark.parametrize(
    ("text", "json_format", "message"),
    [
        ('{"files": 3}', True, "list of paths"),
        ('[{"path": "a.png", "size": -1}]', True, "integer >= 0"),
        ('[{"size": 3}]', True, "paths or"),
        ("# only a comment\n", False, "lists no file"),
    ],
)
def test_check_manifest_rejects_malformed(
    text: str, json_format: bool, message: str, tmp_path: Path
) -> None:
    listing = list_batch(str(write(tmp_path / "b" / "a.png").parent))
    with pytest.raises(ValueError, match=message):
        check_manifest(text, listing, json_format=json_format)


def test_check_manifest_reports_missing(tmp_path: Path) -> None:
    listing = list_batch(str(write(tmp_path / "b" / "a.png", b"xyz").parent))
    assert check_manifest('["a.png", "z.png"]', listing, json_format=True) == ["z.png"]
    assert check_manifest('[{"path": "a.png", "size": 3}]', listing, json_format=True) == []


def test_a_manifest_naming_a_folder_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """A store's chunks may still be arriving: a manifest must list its files, not its name."""
    batch = tmp_path / "b"
    write(batch / "s.zarr" / "zarr.json", b"{}")
    write(batch / "s.zarr" / "c" / "0" / "0", b"chunk")
    listing = list_batch(str(batch))
    with pytest.raises(ValueError, match=r"names the folder 's\.zarr'; list the files"):
        check_manifest('["s.zarr"]', listing, json_format=True)
    files = '["s.zarr/zarr.json", "s.zarr/c/0/0"]'
    assert check_manifest(files, listing, json_format=True) == []
    assert check_manifest('["s.zarr/c/0/1"]', listing, json_format=True) == ["s.zarr/c/0/1"]


# -- quiet period ---------------------------------------------------------------------------


def test_quiet_period_uses_the_watchers_own_observations(inbox: Path, tmp_path: Path) -> None:
    clock = FakeClock()
    w = watcher(inbox, tmp_path, quiet_period=100.0, clock=clock)
    write(inbox / "q" / "a.png")
    assert w.poll(lambda _: None) == []  # first sighting starts the timer
    clock.t += 99
    assert w.poll(lambda _: None) == []
    write(inbox / "q" / "b.png")  # a change restarts the timer
    clock.t += 50
    assert w.poll(lambda _: None) == []
    clock.t += 99
    assert w.poll(lambda _: None) == []
    clock.t += 1
    (b,) = w.poll(lambda _: None)
    assert (b.reason, b.n_images) == ("quiet", 2)


def test_quiet_period_does_not_trust_old_file_times(inbox: Path, tmp_path: Path) -> None:
    """A batch copied with preserved (old) mtimes still needs a quiet period of observation."""
    import os

    f = write(inbox / "old" / "a.png")
    os.utime(f, (1, 1))
    clock = FakeClock()
    w = watcher(inbox, tmp_path, quiet_period=100.0, clock=clock)
    assert w.poll(lambda _: None) == []


def test_partial_uploads_block_quiet_completion(inbox: Path, tmp_path: Path) -> None:
    clock = FakeClock()
    w = watcher(inbox, tmp_path, quiet_period=10.0, clock=clock)
    write(inbox / "p" / "a.png")
    write(inbox / "p" / "b.png.part")
    w.poll(lambda _: None)
    clock.t += 1_000
    assert w.poll(lambda _: None) == []
    (inbox / "p" / "b.png.part").rename(inbox / "p" / "b.png")
    w.poll(lambda _: None)  # the rename is a change: timer restarts
    clock.t += 10
    assert [b.n_images for b in w.poll(lambda _: None)] == [2]


# -- state ----------------------------------------------------------------------------------


def test_restarted_watcher_never_reannounces(inbox: Path, tmp_path: Path) -> None:
    write(inbox / "b1" / "a.png")
    write(inbox / "b1" / "_READY", b"")
    state = tmp_path / "s.json"
    assert len(watcher(inbox, tmp_path, state_path=state).poll(lambda _: None)) == 1
    saved = json.loads(state.read_text())
    assert saved["emitted"]["b1"]["n_images"] == 1
    assert (
        saved["emitted"]["b1"]["event_id"]
        == Batch("b1", str(inbox / "b1"), 1, "marker", "").event_id
    )
    got, emit = collect()
    again = watcher(inbox, tmp_path, state_path=state)
    assert again.poll(emit) == [] and got == []
    write(inbox / "b2" / "a.png")
    write(inbox / "b2" / "_READY", b"")
    assert [b.name for b in again.poll(emit)] == ["b2"]


def test_quiet_timer_survives_a_restart(inbox: Path, tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    clock = FakeClock()
    write(inbox / "q" / "a.png")
    watcher(inbox, tmp_path, state_path=state, quiet_period=60.0, clock=clock).poll(lambda _: None)
    clock.t += 60
    (b,) = watcher(inbox, tmp_path, state_path=state, quiet_period=60.0, clock=clock).poll(
        lambda _: None
    )
    assert b.reason == "quiet"


def test_failed_emit_is_retried_not_recorded(inbox: Path, tmp_path: Path) -> None:
    write(inbox / "b1" / "a.png")
    write(inbox / "b1" / "_READY", b"")
    w = watcher(inbox, tmp_path)

    def broken(batch: Batch) -> None:
        raise ConnectionError("server down")

    assert w.poll(broken) == []
    assert "b1" not in json.loads(w.state_path.read_text())["emitted"]
    assert [b.name for b in w.poll(lambda _: None)] == ["b1"]


def test_corrupt_state_file_is_an_error_naming_it(inbox: Path, tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    state.write_text("{oops")
    with pytest.raises(ValueError, match=str(state)):
        watcher(inbox, tmp_path, state_path=state)
    state.write_text(json.dumps({"version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        watcher(inbox, tmp_path, state_path=state)


def test_state_writes_are_atomic_no_temp_left(inbox: Path, tmp_path: Path) -> None:
    write(inbox / "b1" / "a.png")
    write(inbox / "b1" / "_READY", b"")
    w = watcher(inbox, tmp_path)
    w.poll(lambda _: None)
    assert sorted(p.name for p in w.state_path.parent.iterdir()) == ["watch.json"]


def test_second_watcher_on_same_state_is_refused(inbox: Path, tmp_path: Path) -> None:
    a = watcher(inbox, tmp_path)
    b = watcher(inbox, tmp_path)
    with a.locked():
        with pytest.raises(WatcherBusyError, match="another watcher"):
            with b.locked():
                pass
    with b.locked():  # released
        pass


def test_default_state_path_is_per_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEGFLOW_HOME", str(tmp_path))
    a, b = default_state_path("/data/inbox"), default_state_path("/data/inbox/")
    assert a == b and a.parent == tmp_path / "watch"
    assert default_state_path("s3://bucket/inbox") != a


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quiet_period": -1.0}, "quiet_period must be >= 0"),
        ({"markers": (), "manifests": (), "quiet_period": None}, "nothing could complete"),
    ],
)
def test_bad_options(inbox: Path, tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        watcher(inbox, tmp_path, **kwargs)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_batch_folders(tmp_path / "nope")
    with pytest.raises(ValueError, match="is a file"):
        list_batch_folders(write(tmp_path / "f.png"))


# -- fsspec URLs ----------------------------------------------------------------------------


def test_memory_url_root(mem_root: str, tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{mem_root}/b1/a.png", b"x")
    fs.pipe(f"{mem_root}/b1/sub/b.png", b"y")
    w = watcher(f"memory://{mem_root}", tmp_path)
    assert w.poll(lambda _: None) == []
    fs.pipe(f"{mem_root}/b1/_READY", b"")
    (b,) = w.poll(lambda _: None)
    assert b.uri == f"memory://{mem_root}/b1"
    assert b.n_images == 2 == len(ingest.list_images(b.uri))
    assert w.poll(lambda _: None) == []


def test_memory_url_quiet_and_manifest(mem_root: str, tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{mem_root}/q/a.png", b"x")
    fs.pipe(f"{mem_root}/m/manifest.json", b'["a.png", "b.png"]')
    fs.pipe(f"{mem_root}/m/a.png", b"x")
    clock = FakeClock()
    w = watcher(f"memory://{mem_root}", tmp_path, quiet_period=30.0, clock=clock)
    assert w.poll(lambda _: None) == []
    fs.pipe(f"{mem_root}/m/b.png", b"y")
    clock.t += 30
    got = {b.name: b.reason for b in w.poll(lambda _: None)}
    assert got == {"q": "quiet", "m": "manifest"}


def test_file_url_root(inbox: Path, tmp_path: Path) -> None:
    write(inbox / "b1" / "a.png")
    write(inbox / "b1" / "_READY", b"")
    (b,) = watcher(f"file://{inbox}", tmp_path).poll(lambda _: None)
    assert b.uri == f"file://{inbox}/b1"
    assert len(ingest.list_images(b.uri)) == 1


# -- batch identity and the run loop -------------------------------------------------------


def test_event_id_is_deterministic_per_uri() -> None:
    a = Batch("b1", "/in/b1", 3, "marker", "f1")
    assert a.event_id == Batch("b1", "/in/b1", 9, "quiet", "f2").event_id
    assert a.event_id != Batch("b1", "/other/b1", 3, "marker", "f1").event_id
    assert uuid.UUID(a.event_id).version == 5


def test_run_once_and_run_until_stopped(inbox: Path, tmp_path: Path) -> None:
    write(inbox / "b1" / "a.png")
    write(inbox / "b1" / "_READY", b"")
    assert watcher(inbox, tmp_path).run(lambda _: None, once=True) == 1

    stop = threading.Event()
    got: list[Batch] = []

    def emit(batch: Batch) -> None:
        got.append(batch)
        stop.set()

    write(inbox / "b2" / "a.png")
    w = watcher(inbox, tmp_path)
    thread = threading.Thread(target=w.run, args=(emit,), kwargs={"interval": 0.05, "stop": stop})
    thread.start()
    write(inbox / "b2" / "_READY", b"")
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert [b.name for b in got] == ["b2"]
    with pytest.raises(ValueError, match="interval must be > 0"):
        w.run(emit, interval=0)


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z]{1,6}(/[a-z]{1,4})?\.(png|jpg|txt|tif|bin)", fullmatch=True),
        st.binary(min_size=0, max_size=8),
        min_size=1,
        max_size=8,
    )
)
def test_listing_fingerprint_tracks_content(files: dict[str, bytes]) -> None:
    fs = fsspec.filesystem("memory")
    root = f"/fp-{uuid.uuid4().hex}"
    try:
        for rel, data in files.items():
            fs.pipe(f"{root}/{rel}", data)
        listing = list_batch(f"memory://{root}")
        again = list_batch(f"memory://{root}")
        assert listing.fingerprint == again.fingerprint
        assert set(listing.files) == set(files)
        assert len(listing.images) == len(ingest.list_images(f"memory://{root}"))
        rel = sorted(files)[0]
        fs.pipe(f"{root}/{rel}", files[rel] + b"!")  # one byte more
        assert list_batch(f"memory://{root}").fingerprint != listing.fingerprint
    finally:
        fs.rm(root, recursive=True)


def test_an_inbox_url_with_credentials_is_refused_without_echoing_them(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="credentials") as info:
        watcher("https://bob:s3cr3t@inbox.example/batches", tmp_path)
    assert "https://***@inbox.example/batches" in str(info.value)
    assert "s3cr3t" not in str(info.value) and "bob" not in str(info.value)
    assert not (tmp_path / "state").exists()  # nothing written


def test_zarr_stores_in_a_batch_count_as_one_image_each(inbox: Path, tmp_path: Path) -> None:
    """A batch of OME-Zarr slides is announced with one image per store, as the run lists them."""
    zarr = pytest.importorskip("zarr", reason="Zarr input needs the zarr extra")
    from segflow.config import DEFAULT_EXTENSIONS
    from segflow.ingest import list_images

    batch = inbox / "slides-1"
    zarr.create_array(store=str(batch / "a.zarr"), shape=(40, 40), chunks=(16, 16), dtype="u1")[
        :
    ] = 1
    zarr.create_array(
        store=str(batch / "sub" / "b.zarr"),
        shape=(40, 40),
        chunks=(16, 16),
        dtype="u1",
        zarr_format=2,
    )[:] = 1
    write(batch / "c.png")
    write(batch / "_READY", b"")
    listing = list_batch(str(batch))
    assert listing.images == ("a.zarr", "c.png", "sub/b.zarr")
    run_items = list_images(batch, extensions=DEFAULT_EXTENSIONS)  # what the run will list
    assert listing.images == tuple(i.rel_path for i in run_items)
    got, emit = collect()
    watcher(inbox, tmp_path).poll(emit)
    assert [(b.name, b.n_images) for b in got] == [("slides-1", 3)]
    # a batch of stores only is announced too (it used to wait for "an image" forever)
    only = inbox / "slides-2"
    zarr.create_array(store=str(only / "s.zarr"), shape=(8, 8), dtype="u1")[:] = 1
    write(only / "_READY", b"")
    got, emit = collect()
    watcher(inbox, tmp_path).poll(emit)
    assert [(b.name, b.n_images) for b in got] == [("slides-2", 1)]
