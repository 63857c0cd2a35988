"""Streamed (window by window) segmentation equals the in-memory path, in bounded memory.

Oracles: ``segflow.inference.segment_image`` on the whole image (classes, instance ids and the
``evaluate`` rows built from them), ``segflow.tiling.AvgMerger`` for the strip merger,
``segflow.metrics.binary_counts`` for the confusion counts, and the generator's own ground truth.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import tracemalloc
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from segflow import evaluate, large, segmenters
from segflow import metrics as M
from segflow import rle as R
from segflow.config import RunConfig
from segflow.inference import segment_image
from segflow.ingest import ImageItem
from segflow.io import ImageReadError, read_image
from segflow.preprocess import to_float_chw
from segflow.segmenters.base import Segmentation, Segmenter
from segflow.sources import ArraySource, ZarrSource, is_remote_zarr_uri, open_source
from segflow.synth import huge_header_png
from segflow.synth_large import NucleiField
from segflow.tiling import AvgMerger, Window, blend_weights, predict_tiled, tile_grid

TILE = 128  # TIFF tile and strip granularity of the small test images
STRIP = 100  # rounded up to 128 rows by the streamer


def _partition_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same partition of the pixels (ids may differ): a one-to-one id correspondence."""
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@pytest.fixture(scope="module")
def field3k(tmp_path_factory: pytest.TempPathFactory) -> tuple[NucleiField, Path, Path]:
    """A 3000 x 3000 nuclei field as a tiled TIFF (128-px tiles, two pyramid levels) + labels."""
    root = tmp_path_factory.mktemp("large")
    field = NucleiField(3000, 3000, spacing=40, radius=(4.0, 11.0), seed=7)
    path = field.write_tiff(root / "f.tif", tile=TILE, labels_path=root / "f_labels.tif")
    return field, path, root / "f_labels.tif"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Path]:
    """A 1500 x 1700 field with denser, varied objects, saved as a tiled TIFF."""
    root = tmp_path_factory.mktemp("small")
    field = NucleiField(1500, 1700, spacing=32, radius=(3.0, 9.0), jitter=0.1, seed=3)
    path = field.write_tiff(root / "s.tif", tile=TILE, levels=())
    return field.image(), path


def _crossing(objects: list[large.StreamedObject], step: int) -> int:
    """Objects whose box spans a multiple of ``step`` rows (i.e. crosses a strip border)."""
    return sum(1 for o in objects if (o.bbox[1] // step) != ((o.bbox[1] + o.bbox[3] - 1) // step))


# -------------------------------------------------------------------------------------------
# streamed == in memory
# -------------------------------------------------------------------------------------------


def test_3000px_tiff_streamed_equals_in_memory(field3k: tuple[NucleiField, Path, Path]) -> None:
    """The acceptance case: a 3000 x 3000 TIFF, 128-px tiles and strips, otsu + instances."""
    field, path, _ = field3k
    image = read_image(path)
    params = {"sigma": 1.0, "min_size": 10, "opening": 1}
    ref = segment_image(segmenters.create("otsu", **params), to_float_chw(image))
    res = large.segment_streamed(path, segmenters.create("otsu", **params), strip_rows=STRIP)
    assert res.info["strip_rows"] == TILE
    assert res.info["overview"] == "strided 1/1"  # 9 MP: fitted on the same pixels
    assert np.array_equal(res.label_map(), ref.instances)  # same ids, not only a partition
    assert np.array_equal(res.class_map(), ref.classes)
    assert _crossing(res.objects, TILE) > 100  # many objects were joined across strips
    # the store rows are the same too
    ids = {"image_id": "f", "sha256": "x", "config_hash": "c", "run_id": "r"}
    ref_rows = evaluate.mask_rows(ref, ids=ids)
    _, rows = large.result_rows(res, ids=ids, mask_ids=ids)
    assert len(rows) == len(ref_rows) == ref.instances.max()
    for mine, theirs in zip(rows, ref_rows, strict=True):
        for key in ("instance_id", "rle_counts", "area", "bbox_x", "bbox_y", "bbox_w", "bbox_h"):
            assert mine[key] == theirs[key], key
    # and the objects are the generator's: every one found once
    assert len(res.objects) == field.n_objects


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("otsu", {}),
        ("otsu", {"polarity": "dark"}),  # background is the object: huge objects across strips
        ("otsu", {"instances": False}),
        ("otsu", {"instances": False, "min_size": 25, "opening": 2}),
        ("multiotsu", {"classes": 3, "min_size": 5, "connectivity": 1, "sigma": 1.0}),
        ("kmeans", {"k": 3, "sigma": 0.7}),
    ],
)
def test_pointwise_streamed_equals_in_memory(
    small: tuple[np.ndarray, Path], name: str, params: dict[str, object]
) -> None:
    image, path = small
    ref = segment_image(segmenters.create(name, **params), to_float_chw(image))
    res = large.segment_streamed(path, segmenters.create(name, **params), strip_rows=STRIP)
    assert np.array_equal(res.class_map(), ref.classes)
    assert res.has_instances == (ref.instances is not None)
    if ref.instances is not None:
        assert np.array_equal(res.label_map(), ref.instances)
        assert _partition_equal(res.label_map(), ref.instances)
    else:
        for c, rle in res.class_masks.items():
            assert R.encode(ref.classes == c)["counts"] == rle["counts"]
    counts = np.bincount(ref.classes.ravel(), minlength=res.class_pixels.size)
    assert np.array_equal(res.class_pixels, counts[: res.class_pixels.size])


@pytest.mark.parametrize(
    ("name", "params"), [("watershed", {"min_size": 8}), ("slic", {"region_size": 24})]
)
def test_labelers_streamed_equal_tiled_stitching(
    small: tuple[np.ndarray, Path], name: str, params: dict[str, object]
) -> None:
    """Labelers: windows stitched row by row == stitch.label_tiled over the whole image."""
    image, path = small
    crop = image[:700, :900]
    tifffile.imwrite(path.with_name(f"{name}.tif"), crop, tile=(64, 64))
    opts = {"tile": 192, "overlap": 48}
    ref = segment_image(
        segmenters.create(name, **params), to_float_chw(crop), max_untiled_pixels=0, **opts
    )
    res = large.segment_streamed(
        path.with_name(f"{name}.tif"), segmenters.create(name, **params), **opts
    )
    assert ref.instances is not None
    assert _partition_equal(res.label_map(), ref.instances)
    assert np.array_equal(res.label_map(), ref.instances)


def test_image_smaller_than_tile_is_padded_like_in_memory(small: tuple[np.ndarray, Path]) -> None:
    image, _ = small
    crop = image[:90, :300]  # height < tile: one row of windows over the reflected image
    opts = {"tile": 128, "overlap": 32}
    ref = segment_image(
        segmenters.create("watershed"), to_float_chw(crop), max_untiled_pixels=0, **opts
    )
    res = large.segment_streamed(crop, segmenters.create("watershed"), **opts)
    assert ref.instances is not None
    assert np.array_equal(res.label_map(), ref.instances)


class _BoxScores(Segmenter):
    """A tile-dependent semantic model: 5x5 box filter (reflect at tile borders) -> soft scores."""

    name = "test-box"
    output = "semantic"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        g = batch.mean(axis=1)
        s = ndi.uniform_filter(g, size=(1, 5, 5), mode="reflect")
        p = 1.0 / (1.0 + np.exp(-(s - 0.3) * 25.0))
        return np.stack([1.0 - p, p], axis=1).astype(np.float32)


def test_tile_dependent_model_streamed_equals_predict_tiled(small: tuple[np.ndarray, Path]) -> None:
    """The StripMerger path: same windows, same blend, same bits as predict_tiled."""
    image, path = small
    opts = {"tile": 96, "overlap": 24, "blend": "gaussian", "batch_size": 5}
    ref = segment_image(_BoxScores(), to_float_chw(image), max_untiled_pixels=0, **opts)
    assert ref.probabilities is not None
    res = large.segment_streamed(path, _BoxScores(), strip_rows=STRIP, **opts)
    assert np.array_equal(res.class_map(), ref.classes)
    assert res.mean_entropy == pytest.approx(evaluate.mean_entropy(ref.probabilities), rel=1e-5)
    for c in (1,):
        mask = ref.classes == c
        assert res.class_scores[c] == pytest.approx(
            float(ref.probabilities[c][mask].mean()), rel=1e-5
        )
    assert res.info["merger_rows_held"] == 96


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(20, 90),
    w=st.integers(20, 90),
    tile=st.integers(8, 20),
    frac=st.floats(0.0, 0.9),
    mode=st.sampled_from(["constant", "linear", "gaussian"]),
    seed=st.integers(0, 2**16),
)
def test_strip_merger_is_bitwise_avg_merger(
    h: int, w: int, tile: int, frac: float, mode: str, seed: int
) -> None:
    overlap = min(tile - 1, int(tile * frac))
    tile = min(tile, h, w)
    overlap = min(overlap, tile - 1)
    rng = np.random.default_rng(seed)
    windows = tile_grid(h, w, tile=tile, overlap=overlap)
    values = rng.random((len(windows), 3, tile, tile), dtype=np.float32)
    weights = blend_weights(tile, mode=mode)
    ref = AvgMerger((3, h, w), weights=weights)
    got = np.full((3, h, w), np.nan, dtype=np.float32)
    emitted: list[int] = []
    merger = large.StripMerger(
        (3, h, w), weights=weights, out=got, emit=lambda y, b: emitted.append(b.shape[1])
    )
    for v, win in zip(values, windows, strict=True):
        ref.aggregate(v, win)
        merger.aggregate(v, win)
    assert merger.finalize() is got
    assert np.array_equal(got, ref.finalize())
    assert sum(emitted) == h and merger.rows_held == tile


def test_strip_merger_refuses_windows_out_of_raster_order() -> None:
    merger = large.StripMerger((1, 40, 40), weights=np.ones((10, 10), np.float32))
    merger.aggregate(np.ones((1, 10, 10), np.float32), Window(20, 0, 10, 10))
    with pytest.raises(ValueError, match="raster order"):
        merger.aggregate(np.ones((1, 10, 10), np.float32), Window(0, 0, 10, 10))


def test_predict_tiled_oracle_matches_merger_rows(small: tuple[np.ndarray, Path]) -> None:
    """Blended scores streamed into a memmap-like array equal predict_tiled's."""
    image, _ = small
    chw = to_float_chw(image[:300, :260])
    seg = _BoxScores()
    ref = predict_tiled(chw, seg.predict, tile=64, overlap=16, blend="linear", batch_size=3)
    out = np.zeros_like(ref)
    merger = large.StripMerger(ref.shape, weights=blend_weights(64, mode="linear"), out=out)
    for win in tile_grid(300, 260, tile=64, overlap=16):
        merger.aggregate(seg.predict(chw[None, :, win.y : win.y + 64, win.x : win.x + 64])[0], win)
    merger.finalize()
    assert np.array_equal(out, ref)


# -------------------------------------------------------------------------------------------
# ground truth, label images, Zarr, pyramids
# -------------------------------------------------------------------------------------------


def test_confusion_counts_match_in_memory_metrics(field3k: tuple[NucleiField, Path, Path]) -> None:
    _, path, labels_path = field3k
    truth = tifffile.imread(labels_path)
    for params in ({"min_size": 30}, {"instances": False}):
        ref = segment_image(segmenters.create("otsu", **params), to_float_chw(read_image(path)))
        fg = evaluate.foreground(ref)
        res = large.segment_streamed(path, segmenters.create("otsu", **params), truth=labels_path)
        assert res.confusion == M.binary_counts(fg, truth > 0)


def _same_scores(got: M.InstanceScores | None, want: M.InstanceScores) -> None:
    assert got is not None
    assert (got.tp, got.fp, got.fn, got.n_pred, got.n_true) == (
        want.tp,
        want.fp,
        want.fn,
        want.n_pred,
        want.n_true,
    )
    for key in ("f1", "dsb_score", "panoptic_quality", "mean_matched_iou", "precision", "recall"):
        assert getattr(got, key) == pytest.approx(getattr(want, key), rel=1e-12), key


def test_instance_scores_match_the_whole_label_maps(
    field3k: tuple[NucleiField, Path, Path], tmp_path: Path
) -> None:
    """Objects' areas and overlaps summed piece by piece score as the whole maps do, for
    instances, for a semantic output (its connected components) and with clean-up."""
    from skimage.measure import label

    _, path, full_truth_path = field3k
    truth = tifffile.imread(full_truth_path)
    assert truth.max() > 100  # an instance label image
    # every 7th true object erased: the predictions there are false positives
    truth[np.isin(truth, np.arange(7, truth.max() + 1, 7))] = 0
    labels_path = tmp_path / "truth.tif"
    tifffile.imwrite(labels_path, truth, tile=(TILE, TILE))
    image = to_float_chw(read_image(path))
    cases: list[tuple[str, dict[str, object]]] = [
        ("otsu", {"min_size": 150}),
        ("otsu", {"instances": False}),
        ("otsu", {"sigma": 1.0, "opening": 1}),
        ("multiotsu", {"classes": 3}),  # semantic, touching classes: components per class
    ]
    for name, params in cases:
        ref = segment_image(segmenters.create(name, **params), image)
        res = large.segment_streamed(
            path,
            segmenters.create(name, **params),
            truth=labels_path,
            truth_instances=True,
            strip_rows=STRIP,
        )
        fg = evaluate.foreground(ref)
        if ref.instances is not None:
            pred = ref.instances
        else:  # an independent oracle: scikit-image's labelling of each class
            pred = np.zeros(ref.classes.shape, dtype=np.int64)
            for c in range(1, int(ref.classes.max()) + 1):
                lab = label(ref.classes == c, connectivity=2)
                pred[lab > 0] = lab[lab > 0] + pred.max()
        want = M.instance_scores(pred, truth)
        assert want.tp > 100 and want.fp > 100 and want.dsb_score < 0.95  # not trivial
        assert want.fn > 100 or "min_size" not in params  # small objects dropped: missed
        _same_scores(res.instance_scores, want)
        assert res.confusion == M.binary_counts(fg, truth > 0)
        # the in-memory metrics row takes the same objects
        row = evaluate.metrics_row(ref, truth, gt_format="instances", ids={})
        assert (row["inst_tp"], row["inst_fp"], row["inst_fn"]) == (want.tp, want.fp, want.fn)
        assert row["dsb_score"] == pytest.approx(want.dsb_score, rel=1e-12)
        if ref.instances is None:  # objects were built for the scores: masks as before
            for c, rle in res.class_masks.items():
                assert R.encode(ref.classes == c)["counts"] == rle["counts"]
    # without truth_instances there are none
    plain = large.segment_streamed(path, segmenters.create("otsu"), truth=labels_path)
    assert plain.instance_scores is None


def test_instance_scores_of_a_streamed_labeler(
    field3k: tuple[NucleiField, Path, Path], tmp_path: Path
) -> None:
    """Window-stitched labels (watershed): scores equal those of the streamed label map."""
    _, path, labels_path = field3k
    image = tifffile.imread(path)[:900, :1100]
    truth = tifffile.imread(labels_path)[:900, :1100]
    tifffile.imwrite(tmp_path / "w.tif", image, tile=(64, 64))
    tifffile.imwrite(tmp_path / "w_labels.tif", truth, tile=(64, 64))
    res = large.segment_streamed(
        tmp_path / "w.tif",
        segmenters.create("watershed", min_size=8),
        tile=192,
        overlap=48,
        truth=tmp_path / "w_labels.tif",
        truth_instances=True,
    )
    want = M.instance_scores(res.label_map(), truth)
    assert want.tp > 50 and want.dsb_score < 0.95
    _same_scores(res.instance_scores, want)


def test_ignored_truth_streamed_equals_in_memory(
    field3k: tuple[NucleiField, Path, Path], tmp_path: Path
) -> None:
    """``gt_ignore``: pixels of the ignore value count nowhere, strip by strip as in memory
    (``read_ground_truth(ignore=...)`` + ``metrics_row``), for objects, a semantic output without
    objects, and a window-stitched labeler."""
    import cv2

    from segflow.ingest import IGNORE, read_ground_truth

    _, path, full_truth_path = field3k
    truth = tifffile.imread(full_truth_path)[:1400, :1300]
    image = tifffile.imread(path)[:1400, :1300]
    void = 999_999  # above every object id
    grown = cv2.dilate((truth > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    truth[grown & (truth == 0)] = void  # VOC-like void borders ...
    truth[300:420, :] = void  # ... a band across strips ...
    truth[np.isin(truth, np.arange(5, truth.max() + 1, 9))] = void  # ... and whole objects
    img_path, truth_path = tmp_path / "v.tif", tmp_path / "v_labels.tif"
    tifffile.imwrite(img_path, image, tile=(TILE, TILE))
    tifffile.imwrite(truth_path, truth, tile=(TILE, TILE))
    marked = read_ground_truth(truth_path, gt_format="instances", ignore=void)
    assert (marked == IGNORE).sum() > 100_000
    chw = to_float_chw(read_image(img_path))
    cases: list[tuple[str, dict[str, object], dict[str, object]]] = [
        ("otsu", {"min_size": 150}, {}),
        ("otsu", {"instances": False}, {}),
        ("multiotsu", {"classes": 3}, {}),
        ("watershed", {"min_size": 8}, {"tile": 192, "overlap": 48}),
    ]

    def stream(
        name: str, params: dict[str, object], tiling: dict[str, object], ignore: int | None
    ) -> large.StreamedSegmentation:
        return large.segment_streamed(
            img_path,
            segmenters.create(name, **params),
            truth=truth_path,
            truth_instances=True,
            truth_ignore=ignore,
            strip_rows=STRIP,
            **tiling,  # type: ignore[arg-type]
        )

    for name, params, tiling in cases:
        res = stream(name, params, tiling, void)
        if name == "watershed":  # window-stitched ids: score the streamed label map itself
            seg = Segmentation(
                classes=(res.label_map() > 0).astype(np.int32), instances=res.label_map()
            )
        else:
            seg = segment_image(segmenters.create(name, **params), chw)
        row = evaluate.metrics_row(seg, marked, gt_format="instances", ids={})
        assert res.confusion == (row["fg_tp"], row["fg_fp"], row["fg_fn"], row["fg_tn"]), name
        got = res.instance_scores
        assert got is not None
        assert (got.tp, got.fp, got.fn) == (row["inst_tp"], row["inst_fp"], row["inst_fn"]), name
        assert got.dsb_score == pytest.approx(row["dsb_score"], rel=1e-12)
        # and the ignore value mattered
        plain = stream(name, params, tiling, None)
        assert plain.instance_scores is not None and plain.confusion is not None
        assert plain.instance_scores.fp > got.fp and plain.confusion != res.confusion
    # binary truth, semantic output: without objects the strips count the pixels
    binary = read_ground_truth(truth_path, gt_format="binary", ignore=void)
    for name, params, _ in cases[1:3]:
        res = large.segment_streamed(
            img_path, segmenters.create(name, **params), truth=truth_path, truth_ignore=void
        )
        assert name != "otsu" or not res.objects  # otsu without instances: strips only
        seg = segment_image(segmenters.create(name, **params), chw)
        row = evaluate.metrics_row(seg, binary, gt_format="binary", ids={})
        assert res.confusion == (row["fg_tp"], row["fg_fp"], row["fg_fn"], row["fg_tn"]), name


def test_label_image_written_to_zarr_and_tiff(
    small: tuple[np.ndarray, Path], tmp_path: Path
) -> None:
    zarr = pytest.importorskip("zarr", reason="label images on disk need the zarr extra")

    image, path = small
    params = {"min_size": 12, "opening": 1}
    ref = segment_image(segmenters.create("otsu", **params), to_float_chw(image))
    large.segment_streamed(
        path, segmenters.create("otsu", **params), strip_rows=STRIP, labels_out=tmp_path / "l.zarr"
    )
    assert np.array_equal(
        np.asarray(zarr.open_array(str(tmp_path / "l.zarr"), mode="r")), ref.instances
    )
    t = large.segment_streamed(
        path, segmenters.create("otsu", **params), strip_rows=STRIP, labels_out=tmp_path / "l.tif"
    )
    assert t.labels_path == tmp_path / "l.tif"
    with tifffile.TiffFile(t.labels_path) as tif:
        assert tif.pages.first.is_tiled
        assert np.array_equal(tif.asarray(), ref.instances)
    assert not (tmp_path / "l.tif.provisional.zarr").exists()
    # class ids when there are no instances
    c = large.segment_streamed(
        path, segmenters.create("otsu", instances=False), labels_out=tmp_path / "c.zarr"
    )
    assert c.labels_path is not None
    ref_c = segment_image(segmenters.create("otsu", instances=False), to_float_chw(image))
    assert np.array_equal(
        np.asarray(zarr.open_array(str(tmp_path / "c.zarr"), mode="r")), ref_c.classes
    )


def test_watershed_label_image(small: tuple[np.ndarray, Path], tmp_path: Path) -> None:
    pytest.importorskip("zarr", reason="label images on disk need the zarr extra")
    _, path = small
    opts = {"tile": 256, "overlap": 32}
    res = large.segment_streamed(
        path, segmenters.create("watershed", min_size=6), labels_out=tmp_path / "w.tif", **opts
    )
    assert np.array_equal(tifffile.imread(tmp_path / "w.tif"), res.label_map())


def test_zarr_and_ome_zarr_input(small: tuple[np.ndarray, Path], tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr", reason="Zarr input needs the zarr extra")

    image, path = small
    ref = large.segment_streamed(path, segmenters.create("otsu", sigma=1.0))
    arr = zarr.create_array(
        store=str(tmp_path / "a.zarr"), shape=image.shape, chunks=(100, 256), dtype="uint8"
    )
    arr[:] = image
    plain = large.segment_streamed(
        tmp_path / "a.zarr", segmenters.create("otsu", sigma=1.0), strip_rows=STRIP
    )
    assert plain.info["strip_rows"] == 100  # the Zarr chunk rows
    assert np.array_equal(plain.label_map(), ref.label_map())
    # OME-Zarr: (c, y, x) with two levels, RGB
    rgb = np.stack([image, image // 2, image], axis=0)
    group = zarr.open_group(str(tmp_path / "o.zarr"), mode="w")
    group.create_array("0", shape=rgb.shape, chunks=(3, 128, 128), dtype="uint8")[:] = rgb
    group.create_array("1", shape=(3, 750, 850), chunks=(3, 128, 128), dtype="uint8")[:] = rgb[
        :, ::2, ::2
    ]
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space"},
        {"name": "x", "type": "space"},
    ]
    group.attrs["multiscales"] = [
        {"version": "0.4", "axes": axes, "datasets": [{"path": "0"}, {"path": "1"}]}
    ]
    src = open_source(tmp_path / "o.zarr")
    assert (
        isinstance(src, ZarrSource) and src.shape == (1500, 1700, 3) and src.levels == [(750, 850)]
    )
    assert np.array_equal(src.read(y=10, x=20, h=5, w=7), np.moveaxis(rgb[:, 10:15, 20:27], 0, -1))
    res = large.segment_streamed(src, segmenters.create("otsu"), strip_rows=STRIP)
    mem = segment_image(segmenters.create("otsu"), to_float_chw(np.moveaxis(rgb, 0, -1)))
    assert np.array_equal(res.label_map(), mem.instances)
    # forcing the stored level as the overview: the threshold comes from the 1/2 level
    pyr_seg = segmenters.create("otsu")
    pyr = large.segment_streamed(src, pyr_seg, overview="pyramid")
    assert pyr.info["overview"] == "pyramid level (750, 850)"
    assert abs(len(pyr.objects) - len(res.objects)) <= 0.02 * len(res.objects)


def test_remote_zarr_uris_are_known_by_their_path_without_a_request() -> None:
    for uri in ("http://h/a/slide.zarr", "s3://b/slide.ZARR/", "memory://x/s.zarr/labels/n"):
        assert is_remote_zarr_uri(uri), uri
    for uri in ("http://h/a/slide.png", "/local/slide.zarr", "http://h/zarr/x.tif", "s3://b/zarrs"):
        assert not is_remote_zarr_uri(uri), uri


def test_ome_zarr_written_by_the_reference_writer_is_scored_against_its_labels(
    tmp_path: Path,
) -> None:
    """An OME-Zarr image and label image written by ome-zarr-py (NGFF 0.5, a 5-level pyramid):
    listed, paired with ``ome-labels:``, streamed; the oracle is the writer's own input arrays
    segmented and scored in memory."""
    writer = pytest.importorskip(
        "ome_zarr.writer", reason="the reference OME-Zarr writer (ome-zarr, dev extra)"
    )
    zarr = pytest.importorskip("zarr", reason="Zarr input needs the zarr extra")
    from segflow.ingest import hash_items, list_images, pair_ground_truth

    image, truth = NucleiField(700, 900, spacing=40, radius=(4.0, 11.0), seed=2).render(
        y=0, x=0, h=700, w=900
    )
    root = zarr.open_group(str(tmp_path / "in" / "slide.zarr"), mode="w")
    writer.write_image(image=image, group=root, axes="yx")
    writer.write_labels(labels=truth.astype(np.uint32), group=root, name="nuclei", axes="yx")
    items = pair_ground_truth(
        hash_items(list_images(tmp_path / "in", extensions=(".zarr",))), "ome-labels:"
    )
    [item] = items
    assert item.rel_path == "slide.zarr" and str(item.gt_uri).endswith("slide.zarr/labels/nuclei")
    cfg = RunConfig(
        input=str(tmp_path / "in"),
        out=str(tmp_path / "out"),
        ground_truth="ome-labels:",
        gt_format="instances",
        segmenter_params={"min_size": 10},
    )
    got = evaluate.process_image(
        item, config=cfg, segmenter=cfg.create_segmenter(), run_id="r", config_hash="c"
    )
    seg = segment_image(
        cfg.create_segmenter(), to_float_chw(image), tile=cfg.tile, overlap=cfg.overlap
    )
    want = evaluate.metrics_row(seg, truth.astype(np.int32), gt_format="instances", ids={})
    keys = ("n_instances", "fg_tp", "fg_fp", "fg_fn", "fg_tn", "inst_tp", "inst_fp", "inst_fn")
    assert [got.metrics[k] for k in keys] == [want[k] for k in keys]
    assert got.metrics["inst_f1"] == pytest.approx(want["inst_f1"], rel=1e-12)
    assert got.metrics["inst_f1"] > 0.9  # the generator's nuclei are found


def test_pyramid_overview_used_only_above_overview_size(
    field3k: tuple[NucleiField, Path, Path],
) -> None:
    field, path, _ = field3k
    seg = segmenters.create("otsu")
    res = large.segment_streamed(path, seg, overview_max_pixels=1 << 20)
    # the largest level of at most 4 MP (the 1/4 level), here already within the 1 MP overview
    assert res.info["overview"] == "pyramid level (750, 750)"
    assert res.info["overview_shape"] == [1, 750, 750]
    seg = segmenters.create("otsu")
    res = large.segment_streamed(path, seg, overview_max_pixels=1 << 18)
    assert res.info["overview"] == "pyramid level (750, 750)"  # 562,500 px <= 4 x 2**18
    assert res.info["overview_shape"] == [1, 375, 375]  # strided to at most 2**18 px
    # the threshold from the level separates the same objects
    assert len(res.objects) == field.n_objects


def test_float_tiff_scaled_with_overview_range(tmp_path: Path) -> None:
    field = NucleiField(600, 700, spacing=40, seed=2)
    img = field.image().astype(np.float32) * 16.0  # a float image in [0, 4080]
    tifffile.imwrite(tmp_path / "f.tif", img, tile=(128, 128))
    ref = segment_image(segmenters.create("otsu"), to_float_chw(img))
    res = large.segment_streamed(tmp_path / "f.tif", segmenters.create("otsu"))
    assert np.array_equal(res.label_map(), ref.instances)  # overview = whole image at this size


# -------------------------------------------------------------------------------------------
# memory
# -------------------------------------------------------------------------------------------


def _peak(path: Path) -> int:
    tracemalloc.start()
    try:
        large.segment_streamed(
            path, segmenters.create("otsu", sigma=1.0), strip_rows=64, overview_max_pixels=1 << 16
        )
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_height(tmp_path: Path) -> None:
    """Peak traced memory of a 4800-row image is about that of a 1200-row one (same width),
    and far below the tall image's own float32 size (what the in-memory path holds)."""
    width = 1600
    paths = {}
    for h in (64, 1200, 4800):
        field = NucleiField(h, width, spacing=100, radius=(5.0, 10.0), seed=1)
        paths[h] = field.write_tiff(tmp_path / f"h{h}.tif", tile=64, levels=())
    _peak(paths[64])  # warm-up: lazy imports allocate too
    p_short, p_tall = _peak(paths[1200]), _peak(paths[4800])
    image_bytes = 4800 * width * 4
    assert p_tall < 1.3 * p_short
    assert p_tall < image_bytes / 4


# -------------------------------------------------------------------------------------------
# the switch, and what does not stream
# -------------------------------------------------------------------------------------------


def test_should_stream_by_size_and_format(small: tuple[np.ndarray, Path], tmp_path: Path) -> None:
    _, path = small
    pixels = 1500 * 1700
    assert not large.should_stream(path)  # 2.5 MP: in memory by default
    assert large.should_stream(path, threshold_pixels=pixels - 1)
    assert large.should_stream(path, max_pixels=pixels - 1)  # the guard would refuse it whole
    assert large.should_stream(path, mode="always")
    assert not large.should_stream(path, mode="never", threshold_pixels=1)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(huge_header_png(width=60_000, height=60_000))
    assert not large.should_stream(bomb, mode="always")  # PNG is decoded whole: never streamed
    with pytest.raises(ImageReadError, match="max_pixels"):
        read_image(bomb)
    with pytest.raises(ValueError, match="mode must be one of"):
        large.should_stream(path, mode="sometimes")


def _item(path: Path, *, gt: Path | None = None) -> ImageItem:
    return ImageItem(
        uri=str(path),
        rel_path=path.name,
        image_id=path.stem,
        size=path.stat().st_size,
        gt_uri=None if gt is None else str(gt),
    )


def test_pipeline_switch_streams_a_tiff_above_max_pixels(
    field3k: tuple[NucleiField, Path, Path], tmp_path: Path
) -> None:
    """process_image with a guard below the TIFF's size streams it (the 400 MP case, scaled
    down); the rows equal the in-memory rows of the same image, and a PNG bomb is refused."""
    field, path, labels_path = field3k
    cfg = dict(
        input=str(tmp_path),
        out=str(tmp_path / "out"),
        segmenter_params={"min_size": 10},
        ground_truth=str(tmp_path),
        gt_format="instances",
    )
    small_guard = RunConfig(**cfg, max_pixels=1 << 22)  # 4 MP < 9 MP
    ordinary = RunConfig(**cfg)
    item = _item(path, gt=labels_path)
    kw = {"run_id": "r", "config_hash": "c"}
    streamed = evaluate.process_image(
        item, config=small_guard, segmenter=small_guard.create_segmenter(), overlay=True, **kw
    )
    whole = evaluate.process_image(
        item, config=ordinary, segmenter=ordinary.create_segmenter(), **kw
    )
    # the overlay of a streamed image: every 2nd row and column (4 MP of 9 MP)
    assert large.OVERLAY_MAX_PIXELS == 1 << 22
    assert streamed.overlay is not None and streamed.overlay.shape == (1500, 1500, 3)
    assert whole.overlay is None  # not asked for
    assert [m["rle_counts"] for m in streamed.masks] == [m["rle_counts"] for m in whole.masks]
    for key in (
        "n_instances",
        "fg_fraction",
        "fg_tp",
        "fg_fp",
        "fg_fn",
        "fg_tn",
        "fg_iou",
        "sha256",
        "width",
        "height",
        "inst_tp",
        "inst_fp",
        "inst_fn",
    ):
        assert streamed.metrics[key] == whole.metrics[key], key
    for key in ("inst_f1", "inst_pq", "inst_mean_iou", "dsb_score"):
        assert streamed.metrics[key] == pytest.approx(whole.metrics[key], rel=1e-12), key
    assert streamed.metrics["n_instances"] == field.n_objects
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(huge_header_png(width=60_000, height=60_000))
    with pytest.raises(evaluate.StageError) as info:
        evaluate.process_image(
            _item(bomb), config=ordinary, segmenter=ordinary.create_segmenter(), **kw
        )
    assert info.value.stage == "decode" and "max_pixels" in str(info.value.error)


def test_pipeline_switch_can_be_forced_either_way(
    small: tuple[np.ndarray, Path], tmp_path: Path
) -> None:
    _, path = small
    base = dict(input=str(tmp_path), out=str(tmp_path / "out"))
    never = RunConfig(**base, large_image="never", max_pixels=1 << 20)
    with pytest.raises(evaluate.StageError, match="max_pixels"):
        evaluate.process_image(
            _item(path),
            config=never,
            segmenter=never.create_segmenter(),
            run_id="r",
            config_hash="c",
        )
    always = RunConfig(**base, large_image="always")
    res = evaluate.process_image(
        _item(path), config=always, segmenter=always.create_segmenter(), run_id="r", config_hash="c"
    )
    ref = evaluate.process_image(
        _item(path),
        config=RunConfig(**base),
        segmenter=RunConfig(**base).create_segmenter(),
        run_id="r",
        config_hash="c",
    )
    assert res.overlay is None  # the streamed path draws no overlay
    assert [m["rle_counts"] for m in res.masks] == [m["rle_counts"] for m in ref.masks]


def test_remote_tiff_above_the_guard_streams_like_the_local_file(
    small: tuple[np.ndarray, Path], tmp_path: Path, file_server: Any
) -> None:
    """A TIFF on a real HTTP server (and in memory://) is switched by its header, fetched with
    ranged reads; above the pixel guard it streams and gives the local file's rows."""
    _, path = small  # 1500 x 1700 = 2.55 MP
    shutil.copy(path, tmp_path / "www" / "s.tif")
    (tmp_path / "www" / "p.png").write_bytes(b"not read")
    url = f"{file_server.url}/s.tif"
    assert large.should_stream(url, max_pixels=1 << 20)  # the guard (1 MP) would refuse it
    assert large.should_stream(url, mode="always")
    assert not large.should_stream(url)  # 2.55 MP < the 64 MP switch, under the default guard
    assert not large.should_stream(url, mode="never", threshold_pixels=1)
    before = len(file_server.requests)
    assert not large.should_stream(f"{file_server.url}/p.png", mode="always")
    assert not large.should_stream(f"{file_server.url}/missing.tif", threshold_pixels=1)
    assert set(file_server.requests[before:]) == {"/missing.tif"}  # a PNG is not even opened

    guard = RunConfig(input=str(tmp_path), out=str(tmp_path / "out"), max_pixels=1 << 20)
    temps = set(Path(tempfile.gettempdir()).glob("tmp*.tif"))
    kw: dict[str, Any] = {"run_id": "r", "config_hash": "c"}
    want = evaluate.process_image(
        _item(path), config=guard, segmenter=guard.create_segmenter(), **kw
    )
    fs = fsspec.filesystem("memory")
    base = f"/segflow-test-{uuid.uuid4().hex}"
    fs.put(str(path), f"{base}/s.tif")
    try:
        for uri in (url, f"memory://{base}/s.tif"):
            got = evaluate.process_image(
                replace(_item(path), uri=uri),
                config=guard,
                segmenter=guard.create_segmenter(),
                **kw,
            )
            assert got.metrics["sha256"] == want.metrics["sha256"] == _sha256(path), uri
            assert got.metrics["source_uri"] == uri
            assert got.metrics["n_instances"] == want.metrics["n_instances"] > 100
            assert [m["rle_counts"] for m in got.masks] == [m["rle_counts"] for m in want.masks]
    finally:
        fs.rm(base, recursive=True)
    # the temporary local copies are gone
    assert set(Path(tempfile.gettempdir()).glob("tmp*.tif")) <= temps


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("adaptive", {}, "prepare"),
        ("region_growing", {}, "image-scoped"),
        ("otsu", {"fill_holes": True}, "fill_holes"),
    ],
)
def test_not_streamable_segmenters_are_refused(
    name: str, params: dict[str, object], match: str
) -> None:
    with pytest.raises(large.NotStreamableError, match=match):
        large.segment_streamed(np.zeros((64, 64), np.uint8), segmenters.create(name, **params))


def test_file_stored_as_one_huge_strip_is_refused(tmp_path: Path) -> None:
    img = np.zeros((400, 500), np.uint8)
    tifffile.imwrite(tmp_path / "one.tif", img, rowsperstrip=400)
    with pytest.raises(ImageReadError, match="chunks of 400 x 500"):
        large.segment_streamed(
            tmp_path / "one.tif", segmenters.create("otsu"), max_chunk_pixels=100_000
        )


def test_array_source_windows_and_bad_windows() -> None:
    arr = np.arange(30 * 40, dtype=np.uint16).reshape(30, 40)
    src = ArraySource(arr)
    assert np.array_equal(src.read(y=3, x=4, h=5, w=6), arr[3:8, 4:10])
    with pytest.raises(ValueError, match="outside the image"):
        src.read(y=28, x=0, h=5, w=5)


def test_overlay_of_a_streamed_image_is_that_of_the_sampled_maps(
    field3k: tuple[NucleiField, Path, Path], small: tuple[np.ndarray, Path]
) -> None:
    """The overlay drawn as the rows go by equals draw_overlay of the in-memory image, label
    map and truth sampled on the same stride, for instances (clean-up dropping objects), a
    semantic output, a window-stitched labeler and without truth."""
    from segflow.overlay import draw_overlay

    _, path, labels_path = field3k
    truth = tifffile.imread(labels_path)
    image = read_image(path)
    for name, params in (("otsu", {"min_size": 150}), ("otsu", {"instances": False})):
        ref = segment_image(segmenters.create(name, **params), to_float_chw(image))
        pred = ref.instances if ref.instances is not None else ref.classes
        res = large.segment_streamed(
            path,
            segmenters.create(name, **params),
            truth=labels_path,
            strip_rows=STRIP,
            overlay_max_pixels=1_000_000,
        )
        step = res.info["overlay_step"]
        assert step == 3  # ceil(sqrt(9 MP / 1 MP))
        assert res.overlay is not None and res.overlay.shape == (1000, 1000, 3)
        s = np.s_[::step, ::step]
        want = draw_overlay(image[s], pred[s], truth[s])
        assert np.array_equal(res.overlay, want), name
        # not trivial: predicted and true contours are drawn
        for colour in ((255, 255, 0), (0, 255, 255)):
            assert (res.overlay == colour).all(axis=2).sum() > 1000, colour
    # a labeler stitched from windows; no truth: the prediction alone
    img, small_path = small
    seg = segmenters.create("watershed")
    ref = segment_image(seg, to_float_chw(img), tile=256, overlap=64)
    res = large.segment_streamed(
        small_path, segmenters.create("watershed"), tile=256, overlap=64, overlay_max_pixels=500_000
    )
    step = res.info["overlay_step"]
    assert step == 3
    s = np.s_[::step, ::step]
    assert res.overlay is not None
    # ids may differ from the in-memory ones, the partition (so the contours) may not
    assert np.array_equal(res.overlay, draw_overlay(img[s], ref.instances[s]))
    # without the option nothing is drawn
    assert large.segment_streamed(small_path, segmenters.create("otsu")).overlay is None
