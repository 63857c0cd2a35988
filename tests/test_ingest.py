"""Listing images (local folders and fsspec URLs), hashing, pairing and reading ground truth."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import cv2
import fsspec
import numpy as np
import pytest

from segflow.ingest import (
    IGNORE,
    ImageItem,
    hash_items,
    list_images,
    pair_ground_truth,
    read_bytes,
    read_ground_truth,
    sha256_file,
    split_done,
)
from segflow.io import ImageReadError


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def _tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    files = {
        "a.png": _png(rng.integers(0, 255, (8, 9), dtype=np.uint8)),
        "B.PNG": _png(rng.integers(0, 255, (8, 9), dtype=np.uint8)),
        "sub/c.jpg": b"not really a jpeg, but listed by name",
        "sub/deeper/d.tif": b"tiff?",
        "notes.txt": b"text",
        ".hidden.png": b"hidden file",
        ".cache/e.png": b"hidden folder",
        "sub/f.png": _png(rng.integers(0, 255, (5, 5), dtype=np.uint8)),
    }
    _tree(root, files)
    return root


def test_lists_recursively_by_extension_sorted(folder: Path) -> None:
    items = list_images(folder)
    assert [i.rel_path for i in items] == [
        "B.PNG",
        "a.png",
        "sub/c.jpg",
        "sub/deeper/d.tif",
        "sub/f.png",
    ]
    assert [i.image_id for i in items] == ["B", "a", "sub/c", "sub/deeper/d", "sub/f"]
    assert all(Path(i.uri).is_file() and i.uri == str(folder / i.rel_path) for i in items)
    assert [i.size for i in items] == [(folder / i.rel_path).stat().st_size for i in items]
    assert all(i.sha256 is None and i.gt_uri is None for i in items)


def test_non_recursive_and_extension_filter(folder: Path) -> None:
    assert [i.rel_path for i in list_images(folder, recursive=False)] == ["B.PNG", "a.png"]
    assert [i.rel_path for i in list_images(folder, extensions=("TIF",))] == ["sub/deeper/d.tif"]


def test_exclude_drops_an_output_folder_inside_the_input(folder: Path) -> None:
    _tree(folder, {"out/overlays/a.png": b"x"})
    assert "out/overlays/a.png" in [i.rel_path for i in list_images(folder)]
    rels = [i.rel_path for i in list_images(folder, exclude=[folder / "out"])]
    assert "out/overlays/a.png" not in rels and "a.png" in rels


def test_same_stem_with_two_extensions_keeps_ids_distinct(tmp_path: Path) -> None:
    _tree(tmp_path, {"x.png": b"1", "x.jpg": b"2", "y.png": b"3"})
    ids = [i.image_id for i in list_images(tmp_path)]
    assert ids == ["x.jpg", "x.png", "y"]


def test_missing_folder_and_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        list_images(tmp_path / "f.png")


def test_file_url_lists_the_same_files(folder: Path) -> None:
    plain = list_images(folder)
    url = list_images(f"file://{folder}")
    assert [i.rel_path for i in url] == [i.rel_path for i in plain]
    assert all(i.uri.startswith("file://") for i in url)
    assert [read_bytes(i.uri) for i in url] == [read_bytes(i.uri) for i in plain]


def test_memory_filesystem_listing_hashing_and_reading() -> None:
    fs = fsspec.filesystem("memory")
    base = f"/segflow-test-{uuid.uuid4().hex}"
    rng = np.random.default_rng(1)
    blobs = {
        f"{base}/imgs/p{i}.png": _png(rng.integers(0, 255, (6, 7), dtype=np.uint8))
        for i in range(3)
    }
    blobs[f"{base}/imgs/deep/q.png"] = b"q"
    blobs[f"{base}/labels/p1.tif"] = b"label-of-p1"
    blobs[f"{base}/labels/deep/q.png"] = b"label-of-q"
    try:
        for path, data in blobs.items():
            fs.pipe(path, data)
        items = list_images(f"memory://{base}/imgs")
        assert [i.rel_path for i in items] == ["deep/q.png", "p0.png", "p1.png", "p2.png"]
        assert all(i.uri.startswith("memory://") for i in items)
        hashed = hash_items(items)
        for item in hashed:
            data = blobs[f"{base}/imgs/{item.rel_path}"]
            assert read_bytes(item.uri) == data
            assert item.sha256 == hashlib.sha256(data).hexdigest()
        paired = pair_ground_truth(hashed, f"memory://{base}/labels")
        gt = {i.rel_path: i.gt_uri for i in paired}
        assert gt["p1.png"] is not None and read_bytes(gt["p1.png"]) == b"label-of-p1"
        assert gt["deep/q.png"] is not None and read_bytes(gt["deep/q.png"]) == b"label-of-q"
        assert gt["p0.png"] is None and gt["p2.png"] is None
    finally:
        fs.rm(base, recursive=True)


def test_hash_items_matches_hashlib_and_keeps_order(folder: Path) -> None:
    items = list_images(folder)
    for threads in (1, 3):
        hashed = hash_items(items, threads=threads)
        assert [h.rel_path for h in hashed] == [i.rel_path for i in items]
        for h in hashed:
            assert h.sha256 == hashlib.sha256((folder / h.rel_path).read_bytes()).hexdigest()


def test_sha256_file_streams_large_files(tmp_path: Path) -> None:
    data = np.random.default_rng(2).bytes(3 * (1 << 20) + 17)  # several 1 MiB blocks + a tail
    (tmp_path / "big.bin").write_bytes(data)
    assert sha256_file(str(tmp_path / "big.bin")) == hashlib.sha256(data).hexdigest()


def test_unreadable_file_keeps_no_hash(tmp_path: Path) -> None:
    item = ImageItem(uri=str(tmp_path / "gone.png"), rel_path="gone.png", image_id="gone", size=0)
    assert hash_items([item])[0].sha256 is None


def test_identity_follows_bytes_not_names(tmp_path: Path) -> None:
    _tree(tmp_path, {"one.png": b"same", "two.png": b"same", "three.png": b"other"})
    h = {i.rel_path: i.sha256 for i in hash_items(list_images(tmp_path))}
    assert h["one.png"] == h["two.png"] != h["three.png"]


def test_pair_ground_truth_by_relative_stem_any_extension(tmp_path: Path) -> None:
    _tree(tmp_path / "img", {"a.jpg": b"1", "sub/b.png": b"2", "c.png": b"3", "b.png": b"4"})
    _tree(tmp_path / "gt", {"a.png": b"g", "sub/b.tif": b"g", "sub/b.png": b"g2", "c.txt": b"no"})
    paired = {
        i.rel_path: i.gt_uri
        for i in pair_ground_truth(list_images(tmp_path / "img"), tmp_path / "gt")
    }
    assert paired["a.jpg"] == str(tmp_path / "gt" / "a.png")
    # two label files with the same stem: the earlier extension in the preference list wins
    assert paired["sub/b.png"] == str(tmp_path / "gt" / "sub" / "b.png")
    # stems match by relative path, so b.png at the top level has no partner in sub/
    assert paired["b.png"] is None
    assert paired["c.png"] is None  # c.txt is not a label image


def test_split_done_keeps_order_and_unhashed_items() -> None:
    items = [
        ImageItem(uri=f"/x/{n}", rel_path=n, image_id=n, size=1, sha256=s)
        for n, s in [("a", "h1"), ("b", "h2"), ("c", None), ("d", "h1")]
    ]
    todo, skipped = split_done(items, {"h1"})
    assert [i.rel_path for i in todo] == ["b", "c"]
    assert [i.rel_path for i in skipped] == ["a", "d"]


# -- ground truth reading ------------------------------------------------------------------------


@pytest.fixture
def label_png(tmp_path: Path) -> tuple[Path, np.ndarray]:
    labels = np.zeros((12, 10), dtype=np.uint16)
    labels[1:4, 1:4] = 7
    labels[5:9, 2:6] = 300
    labels[9:11, 7:9] = 2
    path = tmp_path / "lab.png"
    path.write_bytes(_png(labels))
    return path, labels


def test_read_ground_truth_binary(label_png: tuple[Path, np.ndarray]) -> None:
    path, labels = label_png
    got = read_ground_truth(path, gt_format="binary")
    assert got.dtype == np.int32 and got.shape == labels.shape
    np.testing.assert_array_equal(got, (labels != 0).astype(np.int32))


@pytest.mark.parametrize("fmt", ["instances", "classes"])
def test_read_ground_truth_keeps_ids(label_png: tuple[Path, np.ndarray], fmt: str) -> None:
    path, labels = label_png
    got = read_ground_truth(path, gt_format=fmt)  # type: ignore[arg-type]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, labels.astype(np.int32))


def test_read_ground_truth_from_bytes_and_url(label_png: tuple[Path, np.ndarray]) -> None:
    path, labels = label_png
    np.testing.assert_array_equal(
        read_ground_truth(path.read_bytes(), gt_format="instances"), labels
    )
    np.testing.assert_array_equal(
        read_ground_truth(f"file://{path}", gt_format="instances"), labels
    )


@pytest.mark.parametrize("fmt", ["binary", "instances", "classes"])
def test_read_ground_truth_marks_the_ignore_value(
    label_png: tuple[Path, np.ndarray], fmt: str
) -> None:
    path, labels = label_png
    plain = read_ground_truth(path, gt_format=fmt)  # type: ignore[arg-type]
    got = read_ground_truth(path, gt_format=fmt, ignore=300)  # type: ignore[arg-type]
    hit = labels == 300
    assert hit.any() and (got[hit] == IGNORE).all()
    np.testing.assert_array_equal(got[~hit], plain[~hit])
    # a value no pixel has changes nothing
    np.testing.assert_array_equal(read_ground_truth(path, gt_format=fmt, ignore=255), plain)  # type: ignore[arg-type]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="ignore must be a label value >= 1"):
            read_ground_truth(path, gt_format=fmt, ignore=bad)  # type: ignore[arg-type]


def test_read_ground_truth_errors(tmp_path: Path, label_png: tuple[Path, np.ndarray]) -> None:
    path, _ = label_png
    with pytest.raises(ValueError, match="gt_format must be one of"):
        read_ground_truth(path, gt_format="masks")  # type: ignore[arg-type]
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError):
        read_ground_truth(tmp_path / "bad.png", gt_format="binary")


def test_symlinks_to_files_are_listed_and_dangling_ones_kept_for_errors(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.png").write_bytes(b"a-bytes")
    (real / "sub").mkdir()
    (real / "sub" / "b.png").write_bytes(b"b")
    split = tmp_path / "split"
    split.mkdir()
    (split / "a.png").symlink_to(real / "a.png")
    (split / "gone.png").symlink_to(real / "missing.png")  # dangling
    (split / "linked_dir").symlink_to(real / "sub", target_is_directory=True)
    items = list_images(split)
    assert [i.rel_path for i in items] == ["a.png", "gone.png"]
    assert items[0].size == len(b"a-bytes") and items[1].size == 0
    hashed = hash_items(items)
    assert hashed[0].sha256 == hashlib.sha256(b"a-bytes").hexdigest()
    assert hashed[1].sha256 is None  # unreadable: processing reports it as an error row


def _zarr_folder(root: Path) -> None:
    """``root`` with a PNG, a Zarr v3 array, a Zarr v2 array (hidden ``.zarray``) in a subfolder
    and an OME-Zarr group."""
    zarr = pytest.importorskip("zarr", reason="Zarr input needs the zarr extra")
    rng = np.random.default_rng(5)
    image = rng.integers(0, 255, (70, 90), dtype=np.uint8)
    _tree(root, {"plain.png": _png(image)})
    zarr.create_array(store=str(root / "a.zarr"), shape=image.shape, chunks=(32, 32), dtype="u1")[
        :
    ] = image
    v2 = zarr.create_array(
        store=str(root / "sub" / "v2.zarr"),
        shape=image.shape,
        chunks=(40, 40),
        dtype="u1",
        zarr_format=2,
    )
    v2[:] = image
    group = zarr.open_group(str(root / "o.zarr"), mode="w")
    group.create_array("0", shape=image.shape, chunks=(50, 50), dtype="u1")[:] = image
    group.attrs["multiscales"] = [
        {"version": "0.4", "axes": ["y", "x"], "datasets": [{"path": "0"}]}
    ]


def test_remote_zarr_stores_list_and_hash_as_on_disk(tmp_path: Path, file_server: Any) -> None:
    """A ``*.zarr`` folder under an http:// or memory:// URL is one item, and its identity is
    the same sha256 as the same folder on disk (the oracle: pathlib's walk and hashing)."""
    local = tmp_path / "www" / "in"  # what file_server serves
    _zarr_folder(local)
    exts = (".png", ".zarr")
    want = hash_items(list_images(local, extensions=exts))
    assert [i.rel_path for i in want] == ["a.zarr", "o.zarr", "plain.png", "sub/v2.zarr"]
    assert [i.image_id for i in want] == ["a", "o", "plain", "sub/v2"]
    assert all(i.sha256 for i in want) and len({i.sha256 for i in want}) == 4

    over_http = hash_items(list_images(f"{file_server.url}/in", extensions=exts))
    assert [i.uri for i in over_http] == [f"{file_server.url}/in/{i.rel_path}" for i in want]
    assert [i.sha256 for i in over_http] == [i.sha256 for i in want]

    fs = fsspec.filesystem("memory")
    base = f"/segflow-test-{uuid.uuid4().hex}"
    try:
        fs.put(str(local), f"{base}/in", recursive=True)
        in_memory = hash_items(list_images(f"memory://{base}/in", extensions=exts))
        assert [i.uri for i in in_memory] == [f"memory://{base}/in/{i.rel_path}" for i in want]
        assert [i.sha256 for i in in_memory] == [i.sha256 for i in want]
        # not recursive: the store in the subfolder is left out, as on disk
        flat = list_images(f"memory://{base}/in", extensions=exts, recursive=False)
        assert (
            [i.rel_path for i in flat]
            == [i.rel_path for i in list_images(local, extensions=exts, recursive=False)]
            == ["a.zarr", "o.zarr", "plain.png"]
        )
    finally:
        fs.rm(base, recursive=True)


def test_zarr_label_stores_pair_and_read_as_ground_truth(tmp_path: Path) -> None:
    """A Zarr array or OME-Zarr label group is ground truth too (on disk and in memory://); the
    oracle is the array written."""
    zarr = pytest.importorskip("zarr", reason="Zarr input needs the zarr extra")
    rng = np.random.default_rng(9)
    truth = rng.integers(0, 40, (50, 60)).astype(np.int32)
    _tree(tmp_path / "imgs", {"a.png": _png(truth.astype(np.uint8)), "b.png": b"x", "c.png": b"x"})
    zarr.create_array(
        store=str(tmp_path / "gt" / "a.zarr"), shape=truth.shape, chunks=(16, 16), dtype="uint16"
    )[:] = truth
    group = zarr.open_group(str(tmp_path / "gt" / "b.zarr"), mode="w")
    group.create_array("0", shape=truth.shape, chunks=(20, 20), dtype="int32")[:] = truth
    group.attrs["multiscales"] = [
        {"version": "0.4", "axes": ["y", "x"], "datasets": [{"path": "0"}]}
    ]
    _tree(tmp_path / "gt", {"c.png": _png(truth.astype(np.uint8))})
    zarr.create_array(store=str(tmp_path / "gt" / "c.zarr"), shape=(2, 2), dtype="u1")[:] = 1
    paired = {
        i.rel_path: i.gt_uri
        for i in pair_ground_truth(list_images(tmp_path / "imgs"), tmp_path / "gt")
    }
    assert paired == {
        "a.png": str(tmp_path / "gt" / "a.zarr"),
        "b.png": str(tmp_path / "gt" / "b.zarr"),
        "c.png": str(tmp_path / "gt" / "c.png"),  # a label file ranks before a store
    }
    for uri in (paired["a.png"], paired["b.png"]):
        got = read_ground_truth(uri, gt_format="instances")
        assert got.dtype == np.int32 and np.array_equal(got, truth)
        assert np.array_equal(
            read_ground_truth(uri, gt_format="binary"), (truth > 0).astype(np.int32)
        )
        with pytest.raises(ImageReadError, match="max_pixels=100"):
            read_ground_truth(uri, gt_format="instances", max_pixels=100)
    ignored = read_ground_truth(paired["a.png"], gt_format="classes", ignore=7)
    assert np.array_equal(ignored == IGNORE, truth == 7)
    zarr.create_array(store=str(tmp_path / "rgb.zarr"), shape=(4, 4, 3), dtype="u1")
    with pytest.raises(ImageReadError, match="2-D"):
        read_ground_truth(str(tmp_path / "rgb.zarr"), gt_format="instances")
    fs = fsspec.filesystem("memory")
    base = f"/segflow-test-{uuid.uuid4().hex}"
    try:
        fs.put(str(tmp_path / "gt" / "a.zarr"), f"{base}/gt/a.zarr", recursive=True)
        got = read_ground_truth(f"memory://{base}/gt/a.zarr", gt_format="instances")
        assert np.array_equal(got, truth)
    finally:
        fs.rm(base, recursive=True)
