"""The ``transformers`` backend with tiny random Segformer / Mask2Former / DETR models saved to a
folder: offline loading, outputs equal to the in-memory model run through its own processor,
tiling of semantic models, and errors that name the expected files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

from segflow import segmenters  # noqa: E402
from segflow.inference import segment_image  # noqa: E402
from segflow.segmenters.hf import TransformersSegmenter  # noqa: E402


def _uint8_image(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 and the same as (3, H, W) float32 in [0, 1] (exactly k / 255)."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    rgb[h // 4 : h // 2, w // 4 : w // 2] = 230
    return rgb, rgb.transpose(2, 0, 1).astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def segformer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, object]:
    torch.manual_seed(0)
    cfg = tf.SegformerConfig(
        num_channels=3,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=3,
        id2label={0: "sky", 1: "tree", 2: "road"},
        label2id={"sky": 0, "tree": 1, "road": 2},
    )
    model = tf.SegformerForSemanticSegmentation(cfg).eval()
    with torch.no_grad():  # decisive scores, so that argmax ties are rare
        model.decode_head.classifier.weight.mul_(200.0)
    processor = tf.SegformerImageProcessor()
    folder = tmp_path_factory.mktemp("segformer")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


@pytest.fixture(scope="module")
def mask2former(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, object]:
    torch.manual_seed(1)
    swin = tf.SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    cfg = tf.Mask2FormerConfig(
        backbone_config=swin,
        use_pretrained_backbone=False,
        hidden_dim=32,
        mask_feature_size=32,
        feature_size=32,
        encoder_layers=1,
        decoder_layers=2,
        num_queries=5,
        encoder_feedforward_dim=64,
        dim_feedforward=64,
        num_attention_heads=2,
        num_labels=3,
    )
    model = tf.Mask2FormerForUniversalSegmentation(cfg).eval()
    with torch.no_grad():  # random weights predict "no object" everywhere; make queries objects
        model.class_predictor.bias[-1] = -10.0
    processor = tf.Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})
    folder = tmp_path_factory.mktemp("mask2former")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


@pytest.fixture(scope="module")
def detr(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, object]:
    torch.manual_seed(2)
    resnet = tf.ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 16, 32],
        depths=[1, 1, 1, 1],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    cfg = tf.DetrConfig(
        use_timm_backbone=False,
        backbone_config=resnet,
        use_pretrained_backbone=False,
        d_model=128,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=5,
        num_labels=3,
    )
    model = tf.DetrForSegmentation(cfg).eval()
    with torch.no_grad():
        model.detr.class_labels_classifier.bias[-1] = -10.0
    processor = tf.DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})
    folder = tmp_path_factory.mktemp("detr")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


def test_loading_sets_offline_mode(segformer: tuple[Path, object, object]) -> None:
    segmenters.create("transformers", model_path=str(segformer[0]), device="cpu")
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_segformer_round_trip_equals_the_processor_pipeline(
    segformer: tuple[Path, object, object],
) -> None:
    folder, model, processor = segformer
    seg = segmenters.create("transformers", model_path=str(folder), device="cpu")
    assert isinstance(seg, TransformersSegmenter) and seg.task == "semantic"
    assert seg.class_names == ["sky", "tree", "road"]
    rgb, chw = _uint8_image(64, 64)
    result = segment_image(seg, chw)
    # the in-memory model through its own processor (no resizing), logits upsampled to the image
    inputs = processor(images=[rgb], do_resize=False, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)  # type: ignore[operator]
    logits = torch.nn.functional.interpolate(
        out.logits, size=(64, 64), mode="bilinear", align_corners=False
    )
    want = torch.softmax(logits, dim=1)[0].numpy()
    assert result.probabilities is not None
    np.testing.assert_allclose(result.probabilities, want, atol=1e-5)
    classes = processor.post_process_semantic_segmentation(out, target_sizes=[(64, 64)])[0].numpy()
    top2 = np.sort(want, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-4  # ties may break either way in float arithmetic
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(result.classes[clear], classes[clear])


def test_segformer_tiles_large_images(segformer: tuple[Path, object, object]) -> None:
    seg = segmenters.create(
        "transformers", model_path=str(segformer[0]), device="cpu", tile=64, overlap=16
    )
    _, chw = _uint8_image(100, 150, seed=3)
    result = segment_image(seg, chw)
    assert result.probabilities is not None and result.probabilities.shape == (3, 100, 150)
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5)
    resized = segmenters.create(
        "transformers", model_path=str(segformer[0]), device="cpu", strategy="resize"
    )
    assert segment_image(resized, chw).classes.shape == (100, 150)


def test_segformer_device_tiling_equals_the_numpy_tiler(
    segformer: tuple[Path, object, object],
) -> None:
    # on CUDA the windows are cut and blended on the GPU; the same code on the CPU must give the
    # numpy tiler's probabilities
    seg = segmenters.create(
        "transformers", model_path=str(segformer[0]), device="cpu", tile=64, overlap=16
    )
    _, chw = _uint8_image(100, 150, seed=4)
    want = seg._semantic(chw)
    got = seg._tiled_on_device(chw)
    assert got.shape == want.shape == (3, 100, 150)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_segformer_on_cuda_tiles_on_the_gpu_like_the_cpu(
    segformer: tuple[Path, object, object],
) -> None:
    _, chw = _uint8_image(100, 150, seed=5)
    results = [
        segment_image(
            segmenters.create(
                "transformers",
                model_path=str(segformer[0]),
                device=device,
                amp=False,
                tile=64,
                overlap=16,
            ),
            chw,
        )
        for device in ("cpu", "cuda")
    ]
    cpu, gpu = (r.probabilities for r in results)
    assert cpu is not None and gpu is not None
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)


def _segments_as_labels(seg: np.ndarray, infos: list[dict]) -> tuple[np.ndarray, dict[int, int]]:
    """Segments as consecutive ids (segments left without pixels by later ones are dropped)."""
    labels = np.zeros(seg.shape, dtype=np.int32)
    classes = {}
    for info in infos:
        where = seg == info["id"]
        if where.any():
            k = len(classes) + 1
            labels[where] = k
            classes[k] = info["label_id"] + 1
    return labels, classes


@pytest.mark.parametrize("task", ["instance", "panoptic"])
def test_mask2former_round_trip(mask2former: tuple[Path, object, object], task: str) -> None:
    folder, model, processor = mask2former
    seg = segmenters.create(
        "transformers",
        model_path=str(folder),
        device="cpu",
        task=task,
        threshold=0.0,
        mask_threshold=0.1,
        overlap_mask_area_threshold=0.0,
    )
    assert seg.num_classes == 4 and seg.class_names[0] == "background"
    rgb, chw = _uint8_image(48, 80, seed=4)
    result = segment_image(seg, chw)
    inputs = processor(images=[rgb], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)  # type: ignore[operator]
    post = getattr(processor, f"post_process_{task}_segmentation")
    ref = post(
        out,
        threshold=0.0,
        mask_threshold=0.1,
        overlap_mask_area_threshold=0.0,
        target_sizes=[(48, 80)],
    )[0]
    labels, classes = _segments_as_labels(ref["segmentation"].numpy(), ref["segments_info"])
    assert result.instances is not None and labels.max() > 0
    np.testing.assert_array_equal(result.instances, labels)
    assert result.instance_classes == classes
    lut = np.zeros(labels.max() + 1, dtype=np.int32)
    for i, c in classes.items():
        lut[i] = c
    np.testing.assert_array_equal(result.classes, lut[labels])


def test_detr_panoptic_round_trip(detr: tuple[Path, object, object]) -> None:
    folder, model, processor = detr
    seg = segmenters.create(
        "transformers",
        model_path=str(folder),
        device="cpu",
        threshold=0.0,
        mask_threshold=0.1,
        overlap_mask_area_threshold=0.0,
    )
    assert seg.task == "panoptic"
    rgb, chw = _uint8_image(64, 80, seed=5)
    result = segment_image(seg, chw)
    inputs = processor(images=[rgb], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)  # type: ignore[operator]
    ref = processor.post_process_panoptic_segmentation(
        out,
        threshold=0.0,
        mask_threshold=0.1,
        overlap_mask_area_threshold=0.0,
        target_sizes=[(64, 80)],
    )[0]
    labels, classes = _segments_as_labels(ref["segmentation"].numpy(), ref["segments_info"])
    assert result.instances is not None and labels.max() > 0
    np.testing.assert_array_equal(result.instances, labels)
    assert result.instance_classes == classes


def test_errors_name_the_expected_files(
    tmp_path: Path, segformer: tuple[Path, object, object]
) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json and model\.safetensors at .*absent"):
        segmenters.create("transformers", model_path=str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"expected the file config\.json at .*empty"):
        segmenters.create("transformers", model_path=str(tmp_path / "empty"))
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((segformer[0] / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"expected weights \(model\.safetensors"):
        segmenters.create("transformers", model_path=str(tmp_path / "noweights"))
    (tmp_path / "bert").mkdir()
    cfg = json.loads((segformer[0] / "config.json").read_text())
    cfg["architectures"] = ["BertModel"]
    (tmp_path / "bert" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "bert" / "model.safetensors").write_bytes(
        (segformer[0] / "model.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match="supported: SegformerForSemanticSegmentation"):
        segmenters.create("transformers", model_path=str(tmp_path / "bert"))
    with pytest.raises(ValueError, match="task 'panoptic' is not available"):
        segmenters.create("transformers", model_path=str(segformer[0]), task="panoptic")
