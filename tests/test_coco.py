"""COCO annotation files as ground truth: pairing, label maps (checked against pycocotools'
own ``COCO.annToMask``), crowds ignored, errors, the in-memory and streamed pipelines, and the
real PASCAL VOC set, whose objects exist both as a COCO file and as label PNGs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from pycocotools import mask as cocomask
from pycocotools.coco import COCO

from segflow import evaluate
from segflow.coco import CocoGroundTruth, coco_labels, is_coco_path, load_coco
from segflow.config import RunConfig
from segflow.ingest import IGNORE, ImageItem, load_ground_truth, pair_ground_truth
from segflow.io import read_labels

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 60, 80


def _disk(cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _compressed(mask: np.ndarray) -> dict[str, Any]:
    rle = cocomask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def _uncompressed(mask: np.ndarray) -> dict[str, Any]:
    flat = mask.astype(np.uint8).ravel(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": [H, W], "counts": np.diff(np.concatenate([[0], changes])).tolist()}


def _dataset() -> dict[str, Any]:
    """Two images; every segmentation kind; a small object on a large one; a crowd."""
    large = _disk(30, 30, 20)
    return {
        "images": [
            {"id": 7, "file_name": "sub/a.png", "height": H, "width": W},
            {"id": 9, "file_name": "b.png", "height": H, "width": W},
        ],
        "annotations": [
            # polygon (two parts), category 3
            {
                "id": 1,
                "image_id": 7,
                "category_id": 3,
                "iscrowd": 0,
                "segmentation": [[60, 5, 75, 5, 75, 20, 60, 20], [62, 40, 74, 40, 68, 55]],
            },
            {
                "id": 2,
                "image_id": 7,
                "category_id": 5,
                "iscrowd": 0,
                "segmentation": _compressed(large),
            },
            {
                "id": 3,
                "image_id": 7,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": _uncompressed(_disk(30, 30, 6)),  # on the large disk
            },
            {
                "id": 4,
                "image_id": 7,
                "category_id": 1,
                "iscrowd": 1,
                "segmentation": _uncompressed(_disk(50, 50, 9)),  # a crowd, partly under #2
            },
            {
                "id": 5,
                "image_id": 9,
                "category_id": 3,
                "iscrowd": 0,
                "segmentation": _compressed(_disk(20, 20, 8)),
            },
        ],
        "categories": [
            {"id": 1, "name": "cat"},
            {"id": 3, "name": "dog"},
            {"id": 5, "name": "cow"},
        ],
    }


@pytest.fixture
def coco_file(tmp_path: Path) -> Path:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(_dataset()))
    return path


def _oracle(path: Path, image_id: int) -> tuple[list[np.ndarray], np.ndarray]:
    """pycocotools' own masks of an image's objects (file order) and the union of its crowds."""
    coco = COCO(str(path))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    objects = [coco.annToMask(a).astype(bool) for a in anns if not a["iscrowd"]]
    crowd = np.zeros((H, W), dtype=bool)
    for a in anns:
        if a["iscrowd"]:
            crowd |= coco.annToMask(a).astype(bool)
    return objects, crowd


def test_instance_labels_are_pycocotools_masks_smaller_on_top(coco_file: Path) -> None:
    coco = load_coco(coco_file)
    labels = coco.labels(coco.images["sub/a.png"], gt_format="instances")
    assert labels.dtype == np.int32 and labels.shape == (H, W)
    masks, crowd = _oracle(coco_file, 7)
    assert len(masks) == 3 and sorted(np.unique(labels).tolist()) == [IGNORE, 0, 1, 2, 3]
    areas = [m.sum() for m in masks]
    for i, mask in enumerate(masks, start=1):  # ids in file order
        above = np.zeros((H, W), dtype=bool)
        for j, other in enumerate(masks):
            if areas[j] < areas[i - 1]:
                above |= other
        np.testing.assert_array_equal(labels == i, mask & ~above)
    # the small disk (id 3) cut its pixels out of the large one (id 2)
    assert (labels == 3).sum() == masks[2].sum() and (labels == 2).sum() < masks[1].sum()
    # crowd pixels not under an object are ignored, under one they belong to it
    objects = np.any(masks, axis=0)
    np.testing.assert_array_equal(labels == IGNORE, crowd & ~objects)
    assert (crowd & objects).any()


def test_class_and_binary_labels(coco_file: Path) -> None:
    coco = load_coco(coco_file)
    image = coco.images["sub/a.png"]
    inst = coco.labels(image, gt_format="instances")
    classes = coco.labels(image, gt_format="classes")
    binary = coco.labels(image, gt_format="binary")
    lut = {IGNORE: IGNORE, 0: 0, 1: 3, 2: 5, 3: 1}  # id -> category_id
    np.testing.assert_array_equal(classes, np.vectorize(lut.get)(inst))
    np.testing.assert_array_equal(binary, np.where(inst > 0, 1, inst))
    assert coco.categories == {1: "cat", 3: "dog", 5: "cow"}


@pytest.mark.parametrize(
    ("rel_path", "file_name"),
    [
        ("sub/a.png", "sub/a.png"),  # the same relative path
        ("a.png", "sub/a.png"),  # the folder listed was sub/
        ("x/sub/a.png", "sub/a.png"),  # listed one level up
        ("b.png", "b.png"),
        ("deeper/b.png", "b.png"),  # the JSON names bare files
        ("c.png", None),
        ("other/a.png", None),  # same name, another folder
    ],
)
def test_pairing_rule(coco_file: Path, rel_path: str, file_name: str | None) -> None:
    entry = load_coco(coco_file).match(rel_path)
    assert (entry.file_name if entry else None) == file_name


def test_same_file_name_in_two_folders_is_ambiguous() -> None:
    data = {
        "images": [
            {"id": 1, "file_name": "p/a.png", "height": 4, "width": 4},
            {"id": 2, "file_name": "q/a.png", "height": 4, "width": 4},
        ]
    }
    coco = CocoGroundTruth(data)
    assert coco.match("a.png") is None
    assert coco.match("q/a.png") is not None and coco.match("q/a.png").id == 2  # type: ignore[union-attr]


def test_pair_ground_truth_sets_the_entry(coco_file: Path) -> None:
    items = [
        ImageItem(uri=f"/in/{r}", rel_path=r, image_id=r[:-4], size=1)
        for r in ("a.png", "b.png", "c.png")
    ]
    paired = pair_ground_truth(items, coco_file)
    assert [(i.gt_uri, i.gt_key) for i in paired] == [
        (str(coco_file), "sub/a.png"),
        (str(coco_file), "b.png"),
        (None, None),
    ]
    truth = load_ground_truth(paired[1], gt_format="instances")
    np.testing.assert_array_equal(truth, _disk(20, 20, 8).astype(np.int32))


def test_errors_name_the_problem(tmp_path: Path, coco_file: Path) -> None:
    assert is_coco_path("x/Ann.JSON") and not is_coco_path("x/labels")
    with pytest.raises(FileNotFoundError, match="COCO annotation file not found"):
        load_coco(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a COCO annotation file"):
        load_coco(tmp_path / "list.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_coco(tmp_path / "broken.json")
    bad = _dataset()
    bad["annotations"][0]["segmentation"] = [[1, 2]]  # a polygon needs 3 points
    bad["annotations"][1]["segmentation"] = {"size": [5, 5], "counts": "PPX"}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="annotation 1 of image 7"):
        coco_labels(tmp_path / "bad.json", "sub/a.png", gt_format="instances")
    with pytest.raises(ValueError, match="no image entry"):
        coco_labels(coco_file, "zzz.png", gt_format="instances")
    with pytest.raises(ValueError, match="max_pixels"):
        coco_labels(coco_file, "b.png", gt_format="instances", max_pixels=100)
    with pytest.raises(ValueError, match="gt_ignore applies to label images"):
        RunConfig(input="in", out="out", ground_truth=str(coco_file), gt_ignore=255)


def test_an_edited_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "ann.json"
    data = _dataset()
    path.write_text(json.dumps(data))
    assert len(load_coco(path).images) == 2
    data["images"] = data["images"][:1]
    path.write_text(json.dumps(data) + " " * 10)  # another size, whatever the clock says
    assert len(load_coco(path).images) == 1


def _image_files(tmp_path: Path) -> tuple[Path, Path]:
    """A grey image with bright disks where the COCO objects are, as PNG and as tiled TIFF."""
    import cv2

    rng = np.random.default_rng(0)
    img = (rng.random((H, W)) * 40).astype(np.uint8)
    img[_disk(30, 30, 20)] = 200
    img[5:21, 60:76] = 220  # the polygon's first part
    img[_disk(50, 50, 9)] = 210  # on the crowd: not a false positive
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), img)
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, img, tile=(16, 16))
    return png, tif


def test_pipeline_scores_against_the_coco_entry_in_memory_and_streamed(
    tmp_path: Path, coco_file: Path
) -> None:
    png, tif = _image_files(tmp_path)
    base = dict(input=str(tmp_path), out=str(tmp_path / "out"), gt_format="instances")
    config = RunConfig(**base, ground_truth=str(coco_file), segmenter_params={"min_size": 4})
    rows = {}
    for path, mode in ((png, "never"), (tif, "never"), (tif, "always")):
        cfg = config.model_copy(update={"large_image": mode})
        # the TIFF holds the same pixels as the PNG the entry names
        item = ImageItem(
            uri=str(path),
            rel_path=path.name,
            image_id="a",
            size=1,
            gt_uri=str(coco_file),
            gt_key="sub/a.png",
        )
        res = evaluate.process_image(
            item, config=cfg, segmenter=cfg.create_segmenter(), run_id="r", config_hash="c"
        )
        rows[(path.suffix, mode)] = res.metrics
        # the oracle: the same prediction scored against pycocotools' masks, crowd left out
        truth = load_coco(coco_file).labels(
            load_coco(coco_file).images["sub/a.png"], gt_format="instances"
        )
        keep = truth != IGNORE
        assert res.metrics["fg_tp"] + res.metrics["fg_fp"] + res.metrics["fg_fn"] + res.metrics[
            "fg_tn"
        ] == int(keep.sum())
    ref = rows[(".png", "never")]
    # the blob on the crowd is no false positive; the small disk inside the large one is missed
    assert (ref["inst_tp"], ref["inst_fp"], ref["inst_fn"]) == (2, 0, 1)
    for key in ("fg_tp", "fg_fp", "fg_fn", "fg_tn", "inst_tp", "inst_fp", "inst_fn", "dsb_score"):
        assert rows[(".tif", "never")][key] == ref[key] == rows[(".tif", "always")][key], key
    # an image whose size differs from its entry fails at the ground_truth stage
    wrong = _dataset()
    wrong["images"][0]["height"] = H + 1
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    [item] = pair_ground_truth(
        [ImageItem(uri=str(png), rel_path="a.png", image_id="a", size=1)], tmp_path / "wrong.json"
    )
    with pytest.raises(evaluate.StageError) as info:
        evaluate.process_image(
            item, config=config, segmenter=config.create_segmenter(), run_id="r", config_hash="c"
        )
    assert info.value.stage == "ground_truth" and "is 61 x 80" in str(info.value)


def test_voc_coco_file_matches_its_label_pngs(shared_data: Path) -> None:
    """The real VOC set ships each object twice: as a COCO polygon and in a label PNG."""
    from segflow.metrics import instance_scores

    root = shared_data / "voc2011_instances"
    coco = load_coco(root / "data_dataset_coco" / "annotations.json")
    for name in ("2011_000003", "2011_000006", "2011_000025"):
        entry = coco.match(f"{name}.jpg")
        assert entry is not None and entry.file_name == f"JPEGImages/{name}.jpg"
        inst = coco.labels(entry, gt_format="instances")
        png = read_labels(root / "data_dataset_voc" / "SegmentationObject" / f"{name}.png")
        png = np.where(png == 255, 0, png)
        scores = instance_scores(inst, png)
        assert scores.tp == scores.n_true == scores.n_pred  # every object found, one to one
        assert scores.mean_matched_iou > 0.9  # polygons traced from the PNGs
        classes = coco.labels(entry, gt_format="classes")
        voc = read_labels(root / "data_dataset_voc" / "SegmentationClass" / f"{name}.png")
        keep = voc != 255
        assert (classes[keep] == voc[keep]).mean() > 0.97


# -- COCO mask AP of a store's masks rows -----------------------------------------------------


def _mask_rows(dets: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "image_id": d["store_id"],
                "class_id": d["category_id"],
                "score": d["score"],
                "height": H,
                "width": W,
                "rle_counts": d["segmentation"]["counts"],
            }
            for d in dets
        ]
    )


def _detections(coco_file: Path, seed: int) -> list[dict[str, Any]]:
    """Each object of the file, shifted by 0-3 pixels, a random score, plus one spurious mask."""
    rng = np.random.default_rng(seed)
    masks, _ = _oracle(coco_file, 7)
    extra, _ = _oracle(coco_file, 9)
    cats = {7: [3, 5, 1], 9: [3]}
    dets = []
    for image_id, store_id, objects in ((7, "sub/a", masks), (9, "b", extra)):
        for mask, cat in zip(objects, cats[image_id], strict=True):
            shifted = np.roll(mask, int(rng.integers(0, 4)), axis=1)
            dets.append(
                {
                    "image_id": image_id,
                    "store_id": store_id,
                    "category_id": cat,
                    "segmentation": _compressed(shifted),
                    "score": float(rng.random()),
                }
            )
    dets.append(
        {
            "image_id": 7,
            "store_id": "sub/a",
            "category_id": 3,
            "segmentation": _compressed(_disk(5, 5, 4)),
            "score": 0.99,
        }
    )
    return dets


@pytest.mark.parametrize(("seed", "agnostic"), [(0, False), (1, False), (2, True)])
def test_mask_ap_is_cocoevals(coco_file: Path, seed: int, agnostic: bool) -> None:
    """The oracle: pycocotools' COCOeval run here on the same detections as a results list."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    from segflow.coco import AP_NAMES, mask_ap

    dets = _detections(coco_file, seed)
    got = mask_ap(_mask_rows(dets), load_coco(coco_file), class_agnostic=agnostic)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_file))
        for ann in gt.dataset["annotations"]:  # COCOeval needs the areas our file leaves out
            ann["area"] = float(cocomask.area(gt.annToRLE(ann)))
        gt.createIndex()
        dt = gt.loadRes([{k: v for k, v in d.items() if k != "store_id"} for d in dets])
        ev = COCOeval(gt, dt, iouType="segm")
        ev.params.useCats = 0 if agnostic else 1
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert [got[k] for k in AP_NAMES] == pytest.approx(list(ev.stats), abs=1e-12)
    assert got["n_images"] == 2 and got["n_detections"] == len(dets)
    assert 0.0 < got["AP"] < 1.0


def test_mask_ap_of_the_truth_itself_is_one_and_wrong_classes_need_agnostic(
    coco_file: Path,
) -> None:
    from segflow.coco import mask_ap

    masks, _ = _oracle(coco_file, 7)
    rows = _mask_rows(
        [
            {"store_id": "sub/a", "category_id": cat, "score": 1.0, "segmentation": _compressed(m)}
            for m, cat in zip(masks, (3, 5, 1), strict=True)
        ]
        + [
            {
                "store_id": "not/there",
                "category_id": 1,
                "score": 1.0,
                "segmentation": _compressed(masks[0]),
            }
        ]
    )
    coco = load_coco(coco_file)
    exact = mask_ap(rows, coco)
    assert exact["AP"] == pytest.approx(1.0) and exact["AR100"] == pytest.approx(1.0)
    assert exact["unmatched_images"] == ["not/there"] and exact["n_images"] == 1
    wrong = rows.assign(class_id=99)  # not a category: nothing matches unless agnostic
    assert mask_ap(wrong, coco)["AP"] == 0.0
    assert mask_ap(wrong, coco, class_agnostic=True)["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="are 61 x 80"):
        mask_ap(rows.assign(height=61), coco)
    with pytest.raises(ValueError, match="no image of the masks has an entry"):
        mask_ap(rows[rows["image_id"] == "not/there"], coco)
