"""Synthetic nuclei datasets and broken files: deterministic, consistent, realistic, really bad."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.measure import regionprops

from segflow.synth import BAD_KINDS, huge_header_png, make_bad_files, make_dataset, make_sample

GUARD_PIXELS = 1 << 28  # segflow.io.DEFAULT_MAX_PIXELS


def read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[np.ndarray, np.ndarray]]:
    out = tmp_path_factory.mktemp("synth")
    paths = make_dataset(out, n_images=6, seed=7)
    return [(read(p), read(out / "labels" / p.name)) for p in paths]


def test_layout_shapes_and_dtypes(tmp_path: Path) -> None:
    paths = make_dataset(tmp_path, n_images=3, size=(96, 128), seed=1, n_objects=(4, 9))
    assert paths == [tmp_path / "images" / f"synth_{i:04d}.png" for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == [p.name for p in paths]
    for path in paths:
        image, labels = read(path), read(tmp_path / "labels" / path.name)
        assert image.shape == (96, 128) and image.dtype == np.uint8
        assert labels.shape == (96, 128) and labels.dtype == np.uint16
        ids = np.unique(labels)
        assert ids[0] == 0 and ids.tolist() == list(range(int(ids[-1]) + 1))  # consecutive 1..N
        assert 2 <= ids[-1] <= 9


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    first = make_dataset(tmp_path / "a", n_images=3, seed=5)
    second = make_dataset(tmp_path / "b", n_images=3, seed=5)
    other = make_dataset(tmp_path / "c", n_images=3, seed=6)
    for p, q, r in zip(first, second, other, strict=True):
        assert p.read_bytes() == q.read_bytes()
        assert (p.parent.parent / "labels" / p.name).read_bytes() == (
            q.parent.parent / "labels" / q.name
        ).read_bytes()
        assert not np.array_equal(read(p), read(r))


def test_image_i_does_not_depend_on_dataset_size(tmp_path: Path) -> None:
    small = make_dataset(tmp_path / "small", n_images=2, seed=3)
    large = make_dataset(tmp_path / "large", n_images=4, seed=3)
    for p, q in zip(small, large[:2], strict=True):
        np.testing.assert_array_equal(read(p), read(q))
    assert not np.array_equal(read(large[0]), read(large[1]))


def test_objects_are_brighter_than_their_surroundings(
    dataset: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    for image, labels in dataset:
        foreground = labels > 0
        assert image[foreground].mean() > 2 * image[~foreground].mean()
        # locally too, object by object (robust to the illumination gradient)
        ring_all = ndimage.binary_dilation(foreground, iterations=4) & ~foreground
        for index, region in enumerate(ndimage.find_objects(labels.astype(np.int32)), start=1):
            assert region is not None, f"label {index} missing: ids must be consecutive"
            grown = tuple(slice(max(s.start - 6, 0), s.stop + 6) for s in region)
            inside = labels[grown] == index
            ring = ring_all[grown] & ndimage.binary_dilation(inside, iterations=4)
            if ring.sum() >= 5:
                assert image[grown][inside].mean() > image[grown][ring].mean() + 10


def test_each_object_is_one_connected_piece(dataset: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for _, labels in dataset:
        for index, region in enumerate(ndimage.find_objects(labels.astype(np.int32)), start=1):
            assert region is not None
            _, pieces = ndimage.label(labels[region] == index)
            assert pieces == 1
            assert (labels == index).sum() >= 12  # min_area


def test_touching_and_overlapping_objects_occur(
    dataset: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    touching_pairs = 0
    crescents = 0
    for _, labels in dataset:
        a, b = labels[:, 1:], labels[:, :-1]
        touching_pairs += len(
            {
                (int(x), int(y))
                for x, y in zip(
                    a[(a != b) & (a > 0) & (b > 0)], b[(a != b) & (a > 0) & (b > 0)], strict=True
                )
            }
        )
        # an ellipse partly covered by a later one is no longer convex
        crescents += sum(r.solidity < 0.85 for r in regionprops(labels.astype(np.int32)))
    assert touching_pairs >= 10
    assert crescents >= 3


def test_noise_blur_and_uneven_illumination(dataset: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for image, labels in dataset:
        background = ~ndimage.binary_dilation(labels > 0, iterations=5)
        values = image.astype(np.float64)
        # noise: neighbouring background pixels differ
        diff = np.abs(np.diff(values, axis=1))[background[:, 1:] & background[:, :-1]]
        assert diff.mean() > 1.0
        # illumination: the background level varies smoothly by >= 15 % across 4x4 blocks
        h, w = image.shape
        means = [
            values[y : y + h // 4, x : x + w // 4][
                background[y : y + h // 4, x : x + w // 4]
            ].mean()
            for y in range(0, h, h // 4)
            for x in range(0, w, w // 4)
            if background[y : y + h // 4, x : x + w // 4].sum() > 200
        ]
        assert (max(means) - min(means)) / max(means) >= 0.15
        # blur: object edges are soft (no pixel jumps straight from background to full object level)
        edge = (labels > 0) & ~ndimage.binary_erosion(labels > 0)
        assert values[edge].mean() < values[ndimage.binary_erosion(labels > 0, iterations=2)].mean()


def test_otsu_segments_well_but_not_perfectly(dataset: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for image, labels in dataset:
        predicted = image > threshold_otsu(image)
        truth = labels > 0
        iou = (predicted & truth).sum() / (predicted | truth).sum()
        assert 0.75 <= iou < 0.995


def test_rgb_option(tmp_path: Path) -> None:
    (path,) = make_dataset(tmp_path, n_images=1, size=(64, 80), rgb=True)
    image = cv2.cvtColor(read(path), cv2.COLOR_BGR2RGB)
    assert image.shape == (64, 80, 3) and image.dtype == np.uint8
    labels = read(tmp_path / "labels" / path.name)
    blue = image[..., 2].astype(float)
    assert blue[labels > 0].mean() > 2 * blue[labels == 0].mean()
    assert (image[..., 0] <= image[..., 2]).all()  # blue-tinted


def test_make_sample_matches_make_dataset(tmp_path: Path) -> None:
    (path,) = make_dataset(tmp_path, n_images=1, seed=11)
    image, labels = make_sample(seed=np.random.default_rng([11, 0]))
    np.testing.assert_array_equal(read(path), image)
    np.testing.assert_array_equal(read(tmp_path / "labels" / path.name), labels)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": (8, 64)}, "size must be"),
        ({"n_objects": (5, 2)}, "n_objects must be"),
        ({"n_images": -1}, "n_images must be >= 0"),
        ({"seed": -3}, "seed must be >= 0"),
        ({"prefix": "a/b"}, "prefix must be"),
    ],
)
def test_bad_options_raise(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_dataset(tmp_path, **kwargs)  # type: ignore[arg-type]


def test_zero_objects_gives_empty_labels() -> None:
    image, labels = make_sample(size=(32, 32), n_objects=(0, 0))
    assert labels.max() == 0 and image.shape == (32, 32)


# --- bad files --------------------------------------------------------------------------------


def test_bad_files_are_unreadable(tmp_path: Path) -> None:
    paths = make_bad_files(tmp_path)
    assert tuple(paths) == BAD_KINDS
    assert all(p.parent == tmp_path for p in paths.values())
    assert paths["zero_bytes"].stat().st_size == 0
    for kind in ("zero_bytes", "truncated_png", "truncated_jpeg", "text_as_png"):
        data = paths[kind].read_bytes()
        if kind != "truncated_jpeg":
            # OpenCV decodes a JPEG cut inside its scan *without an error*, filling the missing
            # rows with grey: readers must not rely on cv2.imread returning None for it
            assert cv2.imread(str(paths[kind]), cv2.IMREAD_UNCHANGED) is None, kind
        with pytest.raises((OSError, SyntaxError)):
            with Image.open(io.BytesIO(data)) as im:
                im.load()
    png = paths["truncated_png"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and b"IEND" not in png and b"IDAT" in png
    jpg = paths["truncated_jpeg"].read_bytes()
    assert jpg.startswith(b"\xff\xd8") and b"\xff\xda" in jpg and not jpg.endswith(b"\xff\xd9")
    assert paths["truncated_jpeg"].suffix == ".jpg"


def test_huge_header_png_is_valid_but_claims_too_many_pixels(tmp_path: Path) -> None:
    data = make_bad_files(tmp_path)["huge_header_png"].read_bytes()
    assert len(data) < 200
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    body = data[16 : 16 + 13]
    (crc,) = struct.unpack(">I", data[29:33])
    assert crc == zlib.crc32(b"IHDR" + body)
    width, height = struct.unpack(">II", body[:8])
    assert width * height > GUARD_PIXELS
    # a real decoder accepts the header and refuses on size alone
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    assert huge_header_png(width=7, height=9)[16:24] == struct.pack(">II", 7, 9)
    with pytest.raises(ValueError, match="width and height"):
        huge_header_png(width=0)
