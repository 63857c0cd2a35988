"""segflow.rle against pycocotools (the independent oracle), brute force and round-trip properties."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from segflow import rle

mask_utils = pytest.importorskip("pycocotools.mask", reason="pycocotools is the reference oracle")

# pycocotools' decode trips a numpy 2 deprecation inside its own code
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def coco_encode(mask: np.ndarray) -> dict[str, Any]:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def coco_str(mask: np.ndarray) -> str:
    return coco_encode(mask)["counts"].decode("ascii")


def random_masks(rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Masks of random sizes and kinds, including the edge cases the issue names."""
    special = [
        np.ones((1, 1), bool),
        np.zeros((1, 1), bool),
        np.zeros((7, 9), bool),
        np.ones((7, 9), bool),
        rng.random((1, 50)) < 0.5,  # single row
        rng.random((50, 1)) < 0.5,  # single column
        np.ones((1, 33), bool),
        np.ones((33, 1), bool),
    ]
    yield from special
    yy, xx = np.mgrid[:64, :64]
    for _ in range(520):
        h, w = (int(v) for v in rng.integers(1, 65, size=2))
        kind = rng.integers(0, 5)
        if kind == 0:  # noise of random density
            mask = rng.random((h, w)) < rng.random()
        elif kind == 1:  # a few discs
            mask = np.zeros((h, w), bool)
            for _ in range(int(rng.integers(1, 4))):
                cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(1, 20)
                mask |= (yy[:h, :w] - cy) ** 2 + (xx[:h, :w] - cx) ** 2 < r * r
        elif kind == 2:  # horizontal stripes: runs that span columns
            mask = np.zeros((h, w), bool)
            mask[rng.integers(0, h) :: max(1, int(rng.integers(1, 5)))] = True
        elif kind == 3:  # rectangle touching borders
            mask = np.zeros((h, w), bool)
            mask[rng.integers(0, h) :, : rng.integers(1, w + 1)] = True
        else:  # nearly full
            mask = rng.random((h, w)) < 0.97
        yield mask


# ---------------------------------------------------------------------------------------------
# byte equality with pycocotools, decoding both ways


def test_encode_equals_pycocotools_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    layouts: list[Callable[[np.ndarray], np.ndarray]] = [
        lambda m: m,
        lambda m: m.astype(np.uint8),
        np.asfortranarray,
        lambda m: np.ascontiguousarray(m[:, ::-1])[:, ::-1],  # negative strides
        lambda m: m.astype(np.int32),
    ]
    checked = 0
    for i, mask in enumerate(random_masks(rng)):
        given_mask = layouts[i % len(layouts)](mask)
        ours = rle.encode(given_mask)
        theirs = coco_encode(mask)
        assert isinstance(ours["counts"], str)
        assert ours == {"size": theirs["size"], "counts": theirs["counts"].decode("ascii")}
        assert np.array_equal(rle.decode(ours), mask)
        assert np.array_equal(mask_utils.decode(ours), mask)  # pycocotools reads our str
        assert np.array_equal(rle.decode(theirs), mask)  # we read their bytes
        assert np.array_equal(rle.decode({"size": ours["size"], "counts": theirs["counts"]}), mask)
        checked += 1
    assert checked >= 500


@pytest.mark.parametrize(
    "shape, density",
    [((300, 300), 0.5), ((257, 400), 0.1), ((2, 70000), 0.001), ((180, 200), 0.999)],
)
def test_encode_large_masks_dense_and_sparse_paths(shape: tuple[int, int], density: float) -> None:
    # > 2**14 pixels: exercises the transposing (dense) and the sorting (sparse, w > 65536) paths
    mask = np.random.default_rng(1).random(shape) < density
    for given_mask in (mask, np.asfortranarray(mask)):
        assert rle.encode(given_mask)["counts"] == coco_str(mask)
    assert np.array_equal(rle.decode(rle.encode(mask)), mask)


@pytest.mark.parametrize("width", [16, 24, 64, 72, 136])
def test_encode_rows_compared_as_words(width: int) -> None:
    # widths that are multiples of 8 compare rows 8 pixels at a time; check every bit position
    rng = np.random.default_rng(width)
    for density in (0.01, 0.2, 0.5):
        mask = rng.random((37, width)) < density
        mask[5, :] = True
        mask[6, 3::8] = False
        assert rle.encode(mask)["counts"] == coco_str(mask)


def test_decode_layout_and_dtype_match_pycocotools() -> None:
    mask = np.random.default_rng(2).random((5, 7)) < 0.5
    ours = rle.decode(rle.encode(mask))
    theirs = mask_utils.decode(coco_encode(mask))
    assert ours.dtype == theirs.dtype == np.uint8
    assert ours.shape == theirs.shape == (5, 7)
    assert ours.flags.f_contiguous


def test_nonzero_is_foreground_for_integer_masks() -> None:
    mask = np.random.default_rng(3).random((9, 11)) < 0.4
    values = mask.astype(np.uint8) * np.uint8(7)
    assert rle.encode(values) == rle.encode(mask)
    assert rle.encode(-mask.astype(np.int64)) == rle.encode(mask)


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)])
def test_empty_shapes_match_pycocotools(shape: tuple[int, int]) -> None:
    mask = np.zeros(shape, bool)
    ours = rle.encode(mask)
    assert ours["counts"] == coco_str(mask) == "0"
    assert rle.decode(ours).shape == shape
    assert rle.area(ours) == 0


def test_known_strings() -> None:
    # hand-checked against the rleToString definition
    mask = np.array([[0, 1], [1, 1]], bool)  # column-major: 0 1 1 1 -> counts [1, 3]
    assert rle.encode(mask) == {"size": [2, 2], "counts": "13"}
    # c[3] is delta-coded against c[1] (c[2] is not): [2, 40, 3, 41] -> 2, 40, 3, 1
    # 40 = 0b01000 + 1 << 5 -> "X" (8 | 0x20 continuation) then "1"
    cases = {(2, 40, 3, 41): "2X131", (2, 40, 3, 10, 31): "2X13ROl0"}  # -30 -> "RO", 28 -> "l0"
    for counts, expected in cases.items():
        r = {"size": [sum(counts), 1], "counts": list(counts)}
        theirs = mask_utils.frPyObjects(r, sum(counts), 1)["counts"]
        assert rle.merge([r])["counts"] == expected == theirs.decode("ascii")
        assert rle.decode({"size": r["size"], "counts": expected}).ravel().tolist() == (
            rle.decode(r).ravel().tolist()
        )


def test_uncompressed_counts_forms() -> None:
    mask = np.random.default_rng(4).random((6, 4)) < 0.5
    flat = mask.ravel(order="F").astype(np.int64)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    for given_counts in (counts, tuple(counts), np.array(counts, np.uint32)):
        assert np.array_equal(rle.decode({"size": [6, 4], "counts": given_counts}), mask)
    # zero-length runs after the first are tolerated and dropped from outputs
    padded = [*counts[:1], 0, 0, *counts[1:], 0]
    r = {"size": [6, 4], "counts": padded}
    assert np.array_equal(rle.decode(r), mask)
    assert rle.merge([r]) == rle.encode(mask)
    assert rle.bbox(r) == mask_utils.toBbox(coco_encode(mask)).tolist()


def test_large_counts_round_trip_beyond_pycocotools_range() -> None:
    # pycocotools' own string writer/reader overflows for counts of >= 6 characters (>= 2**24),
    # so large counts are checked by round trip and against area arithmetic only.
    rng = np.random.default_rng(5)
    for _ in range(200):
        h, w = int(rng.integers(1, 65536)), int(rng.integers(1, 65536))
        n = h * w
        cuts: Any = np.unique(rng.integers(1, n, size=int(rng.integers(0, 8)))) if n > 1 else []
        counts = np.diff(np.concatenate([[0], cuts, [n]])).astype(np.int64)
        r = {"size": [h, w], "counts": counts.tolist()}
        compressed = rle.merge([r])
        assert rle.merge([compressed]) == compressed
        assert rle.area(compressed) == int(counts[1::2].sum())


def test_small_counts_strings_equal_pycocotools_frpyobjects() -> None:
    rng = np.random.default_rng(6)
    for _ in range(300):
        h, w = int(rng.integers(1, 4000)), int(rng.integers(1, 4000))
        n = h * w
        if n >= 1 << 24:  # keep pycocotools inside its safe range (see above)
            continue
        cuts: Any = np.unique(rng.integers(1, n, size=int(rng.integers(0, 12)))) if n > 1 else []
        counts = np.diff(np.concatenate([[0], cuts, [n]])).tolist()
        if rng.random() < 0.5:
            counts = [0, *counts]
        theirs = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        ours = rle.merge([{"size": [h, w], "counts": counts}])
        assert ours["counts"] == theirs["counts"].decode("ascii")
        assert rle.area(ours) == int(mask_utils.area(theirs))
        assert rle.bbox(ours) == mask_utils.toBbox(theirs).tolist()


def test_json_round_trip() -> None:
    mask = np.random.default_rng(7).random((20, 30)) < 0.3
    text = json.dumps(rle.encode(mask))
    assert np.array_equal(rle.decode(json.loads(text)), mask)


# ---------------------------------------------------------------------------------------------
# area, bbox, merge


def test_area_and_bbox_match_pycocotools() -> None:
    rng = np.random.default_rng(8)
    for mask in random_masks(rng):
        ours, theirs = rle.encode(mask), coco_encode(mask)
        assert rle.area(ours) == int(mask_utils.area(theirs)) == int(mask.sum())
        assert rle.bbox(ours) == mask_utils.toBbox(theirs).tolist()
        assert rle.bbox(theirs) == rle.bbox(ours)


def test_bbox_of_a_compact_object_is_tight() -> None:
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    assert rle.bbox(rle.encode(mask)) == [3.0, 2.0, 6.0, 3.0]
    assert rle.bbox(rle.encode(np.zeros((4, 4), bool))) == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("intersect", [False, True])
def test_merge_matches_pycocotools(intersect: bool) -> None:
    rng = np.random.default_rng(9 + intersect)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 40, size=2))
        k = int(rng.integers(1, 6))
        masks = [rng.random((h, w)) < rng.random() for _ in range(k)]
        if rng.random() < 0.2:
            masks.append(np.ones((h, w), bool) if intersect else np.zeros((h, w), bool))
        theirs_in = [coco_encode(m) for m in masks]
        ours = rle.merge([rle.encode(m) for m in masks], intersect=intersect)
        expected = mask_utils.merge(theirs_in, intersect=intersect)
        assert ours["counts"] == expected["counts"].decode("ascii")
        reduce = np.logical_and if intersect else np.logical_or
        assert np.array_equal(rle.decode(ours), reduce.reduce(masks))
        assert rle.merge(theirs_in, intersect=intersect) == ours  # bytes inputs too


def test_merge_rejects_empty_and_mixed_sizes() -> None:
    with pytest.raises(ValueError, match="at least one"):
        rle.merge([])
    a, b = rle.encode(np.ones((3, 3), bool)), rle.encode(np.ones((3, 4), bool))
    with pytest.raises(ValueError, match=r"RLE 1 has size \[3, 4\]"):
        rle.merge([a, b])


# ---------------------------------------------------------------------------------------------
# crops and label images


def test_encode_crop_examples() -> None:
    crop = np.array([[1, 0], [1, 1]], bool)
    full = np.zeros((5, 4), bool)
    full[3:5, 2:4] = crop
    assert rle.encode_crop(crop, offset=(3, 2), size=(5, 4)) == rle.encode(full)
    # full-height crops: runs continue from one column into the next
    tall = np.ones((5, 2), bool)
    full = np.zeros((5, 4), bool)
    full[:, 1:3] = True
    assert rle.encode_crop(tall, offset=(0, 1), size=(5, 4)) == rle.encode(full)
    with pytest.raises(ValueError, match="does not fit"):
        rle.encode_crop(tall, offset=(1, 0), size=(5, 4))


def test_encode_crop_large_dense_crop() -> None:
    rng = np.random.default_rng(11)
    crop = rng.random((150, 160)) < 0.5
    full = np.zeros((400, 300), bool)
    full[100:250, 40:200] = crop
    expected = coco_str(full)
    assert rle.encode_crop(crop, offset=(100, 40), size=(400, 300))["counts"] == expected
    assert (
        rle.encode_crop(np.asfortranarray(crop), offset=(100, 40), size=(400, 300))["counts"]
        == expected
    )


def test_encode_crop_random_layouts_match_pycocotools() -> None:
    rng = np.random.default_rng(15)
    for i in range(300):
        height, width = (int(v) for v in rng.integers(1, 30, size=2))
        h = height if i % 3 == 0 else int(rng.integers(1, height + 1))  # often full height
        w = int(rng.integers(1, width + 1))
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        crop = rng.random((h, w)) < rng.choice([0.05, 0.5, 0.95])
        full = np.zeros((height, width), bool)
        full[y : y + h, x : x + w] = crop
        expected = coco_str(full)
        for given_crop in (
            crop,
            np.asfortranarray(crop),
            np.repeat(crop.astype(np.uint8), 2, axis=1)[:, ::2],
        ):
            got = rle.encode_crop(given_crop, offset=(y, x), size=(height, width))
            assert got == {"size": [height, width], "counts": expected}


def test_encode_labels_matches_pycocotools_per_instance() -> None:
    rng = np.random.default_rng(12)
    labels = np.zeros((120, 90), np.int32)
    yy, xx = np.mgrid[:120, :90]
    for i in range(1, 40):
        cy, cx, r = rng.integers(0, 120), rng.integers(0, 90), rng.integers(2, 15)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = i
    labels[labels == 5] = 0  # a missing id
    labels[0, :] = 7  # a disconnected piece of object 7 on the border
    out = rle.encode_labels(labels)
    ids = sorted(set(np.unique(labels).tolist()) - {0})
    assert list(out) == ids
    for i in ids:
        assert out[i]["counts"] == coco_str(labels == i)
        assert out[i]["size"] == [120, 90]


@settings(max_examples=150, deadline=None)
@given(
    labels=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.int64]),
        shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24),
        elements=st.integers(0, 5),
    ),
    sparse=st.booleans(),
)
def test_encode_objects_equals_pycocotools_per_label(labels: np.ndarray, sparse: bool) -> None:
    """RLE, box and area of every object against pycocotools on ``labels == k``: objects that
    touch the top and bottom rows give runs wrapping into the next column; sparse ids too."""
    if sparse:
        labels = labels * np.asarray(37 if labels.dtype.itemsize < 8 else 10**11, labels.dtype)
    objects = rle.encode_objects(labels)
    ids = sorted(set(np.unique(labels).tolist()) - {0})
    assert [o.label for o in objects] == ids
    h, w = labels.shape
    for obj in objects:
        mask = labels == obj.label
        expected = coco_encode(mask)
        assert obj.rle == {"size": [h, w], "counts": expected["counts"].decode("ascii")}
        assert list(obj.bbox) == mask_utils.toBbox(expected).astype(int).tolist()
        assert obj.area == int(mask_utils.area(expected)) == int(mask.sum())
    assert rle.encode_objects(np.asfortranarray(labels)) == objects


def test_encode_objects_many_objects_long_counts() -> None:
    """Thousands of objects and counts that need several characters (large images)."""
    rng = np.random.default_rng(21)
    labels = np.zeros((700, 900), np.int32)
    for i in range(1, 3001):
        y, x = int(rng.integers(0, 690)), int(rng.integers(0, 890))
        labels[y : y + int(rng.integers(1, 10)), x : x + int(rng.integers(1, 10))] = i
    objects = rle.encode_objects(labels)
    ids = sorted(set(np.unique(labels).tolist()) - {0})
    assert [o.label for o in objects] == ids
    for obj in objects[::37]:
        expected = coco_encode(labels == obj.label)
        assert obj.rle["counts"] == expected["counts"].decode("ascii")
        assert list(obj.bbox) == mask_utils.toBbox(expected).astype(int).tolist()


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int64])
@pytest.mark.parametrize("offset", [0, 250, 65_530, 2**31 - 10])
def test_encode_objects_ids_around_the_narrow_copies(dtype: type, offset: int) -> None:
    """Ids below 256 / 65536 are encoded from a one- / two-byte copy; ids crossing those
    limits, and larger ones, must come out the same as each label's own mask."""
    rng = np.random.default_rng(offset % 97)
    small = rng.integers(0, 9, size=(37, 29))
    labels = np.where(small > 0, small + offset, 0).astype(dtype)
    objects = rle.encode_objects(labels)
    ids = sorted(set(np.unique(labels).tolist()) - {0})
    assert [o.label for o in objects] == ids
    for obj in objects:
        mask = labels == obj.label
        assert obj.rle["counts"] == coco_str(mask)
        assert obj.area == int(mask.sum())


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int64, np.uint64])
def test_encode_labels_dtypes_and_sparse_ids(dtype: type) -> None:
    rng = np.random.default_rng(13)
    labels: np.ndarray = rng.integers(0, 4, size=(30, 20)).astype(dtype)
    if np.dtype(dtype).itemsize >= 8:
        labels[labels == 3] = 10**12  # huge id: relabelled internally, reported unchanged
    out = rle.encode_labels(labels)
    assert list(out) == sorted(set(np.unique(labels).tolist()) - {0})
    for i, r in out.items():
        assert r["counts"] == coco_str(labels == i)


def test_encode_labels_edge_cases() -> None:
    assert rle.encode_labels(np.zeros((4, 4), np.int32)) == {}
    assert rle.encode_labels(np.ones((3, 3), bool)) == {1: rle.encode(np.ones((3, 3), bool))}
    with pytest.raises(ValueError, match=">= 0"):
        rle.encode_labels(np.array([[0, -1]]))
    with pytest.raises(ValueError, match="dtype"):
        rle.encode_labels(np.zeros((2, 2), np.float32))


# ---------------------------------------------------------------------------------------------
# Kaggle strings


def kaggle_brute_force(mask: np.ndarray, order: str) -> str:
    flat = mask.ravel(order="F" if order == "F" else "C").tolist()
    parts: list[int] = []
    i = 0
    while i < len(flat):
        if flat[i]:
            j = i
            while j < len(flat) and flat[j]:
                j += 1
            parts += [i + 1, j - i]
            i = j
        else:
            i += 1
    return " ".join(map(str, parts))


def test_kaggle_known_example() -> None:
    # DSB 2018: "1 3" is pixels 1, 2, 3, counted top to bottom, then left to right
    mask = rle.decode_kaggle("1 3 10 5", shape=(5, 3), order="F")
    expected = np.zeros(15, np.uint8)
    expected[[0, 1, 2, 9, 10, 11, 12, 13]] = 1
    assert np.array_equal(mask, expected.reshape(3, 5).T)
    assert np.array_equal(
        rle.decode_kaggle("1 3 10 5", shape=(5, 3), order="C"), expected.reshape(5, 3)
    )
    assert rle.encode_kaggle(np.zeros((3, 3), bool), order="C") == ""
    assert rle.decode_kaggle("  ", shape=(2, 2), order="F").sum() == 0


def test_kaggle_matches_brute_force_and_coco() -> None:
    rng = np.random.default_rng(14)
    for mask in list(random_masks(rng))[:200]:
        for order in ("F", "C"):
            s = rle.encode_kaggle(mask, order=order)
            assert s == kaggle_brute_force(mask, order)
            assert np.array_equal(rle.decode_kaggle(s, shape=mask.shape, order=order), mask)
        # column-major Kaggle starts are the COCO foreground runs
        assert rle.encode_kaggle(mask.T, order="C") == rle.encode_kaggle(mask, order="F")


def test_kaggle_rejects_bad_order() -> None:
    with pytest.raises(ValueError, match="order must be 'F'"):
        rle.encode_kaggle(np.ones((2, 2), bool), order="A")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="order must be 'F'"):
        rle.decode_kaggle("1 1", shape=(2, 2), order="f")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# malformed input: each a ValueError with its reason, fast, with no large allocation

MALFORMED: list[tuple[str, Callable[[], object], str]] = [
    ("sum too small", lambda: rle.decode({"size": [2, 2], "counts": "1"}), "sum to 1"),
    ("sum too large", lambda: rle.decode({"size": [2, 2], "counts": [3, 2]}), "sum to 5"),
    ("run longer than image", lambda: rle.area({"size": [2, 2], "counts": [0, 9]}), "more than"),
    ("negative run, list", lambda: rle.decode({"size": [2, 2], "counts": [5, -1]}), "negative"),
    ("negative run, string", lambda: rle.decode({"size": [2, 2], "counts": "5O"}), "negative"),
    ("bad character", lambda: rle.decode({"size": [2, 2], "counts": "4 "}), "invalid character"),
    ("char above 'o'", lambda: rle.area({"size": [2, 2], "counts": "4~"}), "invalid character"),
    ("non-ASCII", lambda: rle.decode({"size": [2, 2], "counts": "4é"}), "non-ASCII"),
    ("NUL byte", lambda: rle.decode({"size": [2, 2], "counts": b"4\x00"}), "invalid character"),
    ("truncated", lambda: rle.decode({"size": [2, 2], "counts": "0P"}), "truncated"),
    ("overlong count", lambda: rle.bbox({"size": [2, 2], "counts": "PPPPPPP0"}), "characters"),
    ("absurd size", lambda: rle.decode({"size": [10**6, 10**6], "counts": "0"}), "at most"),
    ("absurd size, area", lambda: rle.area({"size": [2**40, 1], "counts": [2**40]}), "at most"),
    ("negative size", lambda: rle.decode({"size": [-1, 4], "counts": []}), ">= 0"),
    ("float size", lambda: rle.decode({"size": [2.0, 2], "counts": "4"}), "ints"),
    ("bool size", lambda: rle.decode({"size": [True, 1], "counts": "1"}), "ints"),
    ("size length", lambda: rle.decode({"size": [4], "counts": "4"}), "exactly 2"),
    ("size str", lambda: rle.decode({"size": "22", "counts": "4"}), "pair"),
    ("float counts", lambda: rle.decode({"size": [2, 2], "counts": [1.5, 2.5]}), "ints"),
    ("bool counts", lambda: rle.decode({"size": [1, 1], "counts": [False, True]}), "ints"),
    ("float array", lambda: rle.decode({"size": [2, 2], "counts": np.array([4.0])}), "integers"),
    ("nested counts", lambda: rle.decode({"size": [2, 2], "counts": [[4]]}), "ints"),
    ("huge int count", lambda: rle.area({"size": [2, 2], "counts": [2**70]}), "integers"),
    (
        "huge uint64",
        lambda: rle.area({"size": [2, 2], "counts": np.array([2**63], np.uint64)}),
        "exceeds",
    ),
    ("counts None", lambda: rle.decode({"size": [2, 2], "counts": None}), "str/bytes"),
    ("counts int", lambda: rle.decode({"size": [2, 2], "counts": 4}), "str/bytes"),
    ("empty counts", lambda: rle.decode({"size": [2, 2], "counts": ""}), "empty"),
    ("not a mapping", lambda: rle.decode([[2, 2], "4"]), "mapping"),  # type: ignore[arg-type]
    ("missing key", lambda: rle.decode({"size": [2, 2]}), "missing the key 'counts'"),
    (
        "too big to decode",
        lambda: rle.decode(rle.merge([{"size": [60000, 60000], "counts": [3_600_000_000]}])),
        "max_pixels",
    ),
    (
        "long junk string",
        lambda: rle.decode({"size": [3, 3], "counts": "0" * 1_000_000}),
        "sum to 0",
    ),
    ("mask 3-D", lambda: rle.encode(np.zeros((2, 2, 2), bool)), "2-D"),
    ("mask float", lambda: rle.encode(np.zeros((2, 2), np.float32)), "dtype"),
    ("mask list", lambda: rle.encode([[0, 1]]), "numpy array"),  # type: ignore[arg-type]
    ("kaggle odd", lambda: rle.decode_kaggle("1 2 3", shape=(3, 3), order="F"), "pairs"),
    ("kaggle junk", lambda: rle.decode_kaggle("1 x", shape=(3, 3), order="F"), "integers"),
    ("kaggle start 0", lambda: rle.decode_kaggle("0 2", shape=(3, 3), order="F"), "1-based"),
    ("kaggle length 0", lambda: rle.decode_kaggle("2 0", shape=(3, 3), order="F"), ">= 1"),
    ("kaggle beyond", lambda: rle.decode_kaggle("8 3", shape=(3, 3), order="C"), "beyond"),
    ("kaggle overlap", lambda: rle.decode_kaggle("1 3 2 1", shape=(3, 3), order="C"), "overlap"),
    ("kaggle huge", lambda: rle.decode_kaggle("1 1", shape=(10**6, 10**6), order="C"), "at most"),
    ("kaggle not str", lambda: rle.decode_kaggle(None, shape=(2, 2), order="C"), "str"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("name, call, reason", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_raises_value_error_fast(
    name: str, call: Callable[[], object], reason: str
) -> None:
    tracemalloc.start()
    try:
        start = time.perf_counter()
        with pytest.raises(ValueError, match=reason):
            call()
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.1, f"{name}: {elapsed:.3f} s"
    assert peak < 64 << 20, f"{name}: allocated {peak} bytes"


def test_at_least_ten_kinds_of_malformed_rle() -> None:
    assert len(MALFORMED) >= 10


def test_valid_but_large_rle_is_cheap_without_decoding() -> None:
    big = rle.merge([{"size": [60000, 60000], "counts": [1000, 5, 3_599_998_995]}])
    assert rle.area(big) == 5
    assert rle.bbox(big) == [0.0, 1000.0, 1.0, 5.0]
    assert rle.merge([big, big], intersect=True) == big


# ---------------------------------------------------------------------------------------------
# properties

masks_strategy = hnp.arrays(
    dtype=np.bool_,
    shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24),
    elements=st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(masks_strategy)
def test_property_encode_decode_round_trip(mask: np.ndarray) -> None:
    r = rle.encode(mask)
    assert np.array_equal(rle.decode(r), mask)
    assert r["counts"] == coco_str(mask)
    assert rle.area(r) == int(mask.sum())


@settings(max_examples=150, deadline=None)
@given(masks_strategy, st.data())
def test_property_encode_crop_equals_full_encode(mask: np.ndarray, data: st.DataObject) -> None:
    h, w = mask.shape
    height = h + data.draw(st.integers(0, 6), label="extra rows")
    width = w + data.draw(st.integers(0, 6), label="extra cols")
    y = data.draw(st.integers(0, height - h), label="y")
    x = data.draw(st.integers(0, width - w), label="x")
    full = np.zeros((height, width), bool)
    full[y : y + h, x : x + w] = mask
    assert rle.encode_crop(mask, offset=(y, x), size=(height, width)) == rle.encode(full)


@settings(max_examples=150, deadline=None)
@given(masks_strategy, st.sampled_from(["F", "C"]))
def test_property_kaggle_round_trip(mask: np.ndarray, order: str) -> None:
    s = rle.encode_kaggle(mask, order=order)  # type: ignore[arg-type]
    assert s == kaggle_brute_force(mask, order)
    back = rle.decode_kaggle(s, shape=mask.shape, order=order)  # type: ignore[arg-type]
    assert back.dtype == np.uint8
    assert np.array_equal(back, mask)


@settings(max_examples=100, deadline=None)
@given(masks_strategy, st.integers(1, 4), st.booleans())
def test_property_merge_equals_pixelwise(mask: np.ndarray, extra: int, intersect: bool) -> None:
    rng = np.random.default_rng(mask.size + extra)
    masks = [mask] + [rng.random(mask.shape) < rng.random() for _ in range(extra)]
    reduce = np.logical_and if intersect else np.logical_or
    merged = rle.merge([rle.encode(m) for m in masks], intersect=intersect)
    assert merged == rle.encode(reduce.reduce(masks))
