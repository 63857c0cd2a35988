"""segflow model metadata, boundary-aware instances, the ``nuclei`` ONNX segmenter (equal to the
torch backend on the same model) and the shipped model's accuracy on held-out DSB images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from segflow import segmenters
from segflow.segmenters.nuclei import (
    AutoInvert,
    ModelMeta,
    default_model_path,
    instances_from_boundary,
    prepare_input,
)

ROOT = Path(__file__).resolve().parents[1]


def _two_touching_discs() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:40, :60]
    a = (yy - 20) ** 2 + (xx - 20) ** 2 < 12**2
    b = ((yy - 20) ** 2 + (xx - 41) ** 2 < 12**2) & ~a
    labels = a.astype(np.int32) + 2 * b.astype(np.int32)
    return labels, (labels > 0).astype(np.float32)


def test_boundary_band_separates_touching_objects() -> None:
    from segflow.train import boundary_target

    labels, fg = _two_touching_discs()
    assert __import__("scipy.ndimage").ndimage.label(fg > 0.5)[1] == 1  # one blob without help
    boundary = boundary_target(labels, width=2).astype(np.float32)
    got = instances_from_boundary(fg, boundary, min_size=0)
    assert got.max() == 2 and got.dtype == np.int32
    # each predicted object is (almost) one true object: the watershed gives the band back
    for k in (1, 2):
        true = labels == k
        best = max(((got == j) & true).sum() / ((got == j) | true).sum() for j in (1, 2))
        assert best > 0.9
    # no boundary information: one object
    one = instances_from_boundary(fg, np.zeros_like(fg), min_size=0)
    assert one.max() == 1
    np.testing.assert_array_equal(one > 0, fg > 0.5)


def test_small_components_dropped_and_unseeded_kept() -> None:
    fg = np.zeros((30, 30), dtype=np.float32)
    fg[2:4, 2:4] = 1.0  # 4 pixels: dropped by min_size
    fg[10:20, 10:20] = 1.0
    bd = np.zeros_like(fg)
    bd[10:20, 10:20] = 1.0  # all boundary: no seed, still one instance
    got = instances_from_boundary(fg, bd, min_size=10)
    assert got.max() == 1 and (got > 0).sum() == 100 and got[3, 3] == 0
    with pytest.raises(ValueError, match="one shape"):
        instances_from_boundary(fg, bd[:10])


def test_auto_invert_turns_bright_backgrounds_dark() -> None:
    bright = np.full((1, 20, 20), 0.9, dtype=np.float32)
    bright[:, 5:10, 5:10] = 0.1
    step = AutoInvert()
    step.fit(bright)
    assert step.invert
    np.testing.assert_allclose(step.apply(bright), 1.0 - bright)
    dark = 1.0 - bright
    step.fit(dark)
    assert not step.invert
    np.testing.assert_array_equal(step.apply(dark), dark)
    with pytest.raises(ValueError, match="invert must be one of auto, never, always"):
        AutoInvert("sometimes")
    # the full preprocessing makes both polarities the same model input
    a = prepare_input(np.repeat(bright, 3, axis=0), ModelMeta())
    b = prepare_input(dark, ModelMeta())
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_model_meta_json_round_trip_and_errors() -> None:
    meta = ModelMeta(
        channels=3,
        percentiles=(2.0, 98.0),
        class_names=("bg", "cell"),
        boundary=False,
        label_kind="binary",
        extra={"epochs": 3},
    )
    assert ModelMeta.from_json(meta.to_json()) == meta
    with pytest.raises(ValueError, match="unknown segflow model metadata keys"):
        ModelMeta.from_json(json.dumps({"format": "segflow-model/1", "colour": 1}))
    with pytest.raises(ValueError, match="format 'segflow-model/1'"):
        ModelMeta.from_json("{}")
    with pytest.raises(ValueError, match="channels must be 1"):
        ModelMeta(channels=2)
    with pytest.raises(ValueError, match="boundary head needs label_kind"):
        ModelMeta(label_kind="classes", class_names=("a", "b", "c"), boundary=True)


def _tiny_model() -> Any:
    """A random tiny smp U-Net (1 channel in, 2 classes; skips without torch/smp/onnxruntime)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("segmentation_models_pytorch")
    pytest.importorskip("onnxruntime")
    from segflow.segmenters.torch_unet import build_model

    torch.manual_seed(0)
    return build_model(
        encoder_name="tu-regnetx_002",
        encoder_depth=3,
        decoder_channels=(16, 8, 8),
        in_channels=1,
        classes=2,
    ).eval()


def test_nuclei_backend_on_an_exported_model_equals_torch(tmp_path: Path) -> None:
    from segflow.inference import segment_image
    from segflow.segmenters.torch_unet import export_onnx, save_model_dir

    model = _tiny_model()
    meta = ModelMeta()
    save_model_dir(model, tmp_path / "ckpt", meta=meta)
    export_onnx(model, tmp_path / "m.onnx", meta=meta)
    rng = np.random.default_rng(0)
    image = rng.random((3, 64, 64), dtype=np.float32)
    onnx_seg = segmenters.create("nuclei", model_path=str(tmp_path / "m.onnx"), tile=64, threads=1)
    torch_seg = segmenters.create("unet", model_path=str(tmp_path / "ckpt"), device="cpu")
    a = segment_image(onnx_seg, image)
    b = segment_image(torch_seg, image, tile=64, overlap=0)
    assert a.probabilities is not None and b.probabilities is not None
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)
    assert a.instances is not None and b.instances is not None
    assert (a.instances != b.instances).mean() < 0.01
    # a larger image is tiled with the halo cropped, and still gives one value per pixel
    big = segment_image(onnx_seg, rng.random((1, 150, 170), dtype=np.float32))
    assert big.probabilities is not None and big.probabilities.shape == (2, 150, 170)
    # test-time augmentation makes the prediction equivariant to flips
    tta = segmenters.create("nuclei", model_path=str(tmp_path / "m.onnx"), tile=64, tta=True)
    p = segment_image(tta, image).probabilities
    q = segment_image(tta, np.ascontiguousarray(image[:, ::-1, :])).probabilities
    assert p is not None and q is not None
    np.testing.assert_allclose(q[:, ::-1, :], p, atol=1e-5)
    assert np.abs(p - a.probabilities).max() > 1e-4  # and it is not the plain output
    # an ONNX file without segflow metadata is refused, naming the onnx segmenter
    import onnx

    proto = onnx.load(str(tmp_path / "m.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="use the 'onnx' segmenter"):
        segmenters.create("nuclei", model_path=str(tmp_path / "plain.onnx"))


def test_float16_weights_halve_the_file_and_compute_with_the_rounded_weights(
    tmp_path: Path,
) -> None:
    model = _tiny_model()
    torch = pytest.importorskip("torch")
    import onnx

    from segflow.inference import segment_image
    from segflow.segmenters.torch_unet import export_onnx

    meta = ModelMeta()
    full = export_onnx(model, tmp_path / "full.onnx", meta=meta)
    half = export_onnx(model, tmp_path / "half.onnx", meta=meta, weights="float16")
    assert 0.4 < half.stat().st_size / full.stat().st_size < 0.6
    proto = onnx.load(str(half))
    assert not [i.name for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    assert ModelMeta.from_json(dict((p.key, p.value) for p in proto.metadata_props)["segflow"])
    # oracle: the float32 export of the same model with every float weight rounded to float16
    # (batch-norm statistics too: the exporter folds them into the convolutions' weights)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dtype == torch.float32:
                tensor.copy_(tensor.half().float())
    rounded = export_onnx(model, tmp_path / "rounded.onnx", meta=meta)
    image = np.random.default_rng(0).random((1, 64, 96), dtype=np.float32)
    outs = {}
    for path in (full, half, rounded):
        seg = segmenters.create("nuclei", model_path=str(path), tile=64, threads=1)
        res = segment_image(seg, image)
        assert res.probabilities is not None
        outs[path.stem] = res.probabilities
    diff_rounding = np.abs(outs["half"] - outs["rounded"]).max()
    diff_precision = np.abs(outs["half"] - outs["full"]).max()
    assert diff_precision > 0  # the weights really changed
    assert diff_rounding < 1e-4 and diff_rounding < diff_precision / 2
    with pytest.raises(ValueError, match="weights must be 'float32' or 'float16'"):
        export_onnx(model, tmp_path / "x.onnx", meta=meta, weights="bfloat16")  # type: ignore[arg-type]


def test_nuclei_missing_file_names_the_expected_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("SEGFLOW_MODELS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"expected .*nuclei/nuclei\.onnx"):
        segmenters.create("nuclei")
    with pytest.raises(FileNotFoundError, match=r"\.onnx file at .*absent\.onnx"):
        segmenters.create("nuclei", model_path=str(tmp_path / "absent.onnx"))


# ---------------------------------------------------------------------------------------------
# the shipped model


def _shipped() -> Path:
    path = default_model_path()
    if not path.is_file():
        pytest.skip(f"the shipped model {path} is absent")
    return path


def test_models_dir_prefers_the_env_then_the_checkout_then_the_installed_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segflow.segmenters import nuclei

    checkout, installed = tmp_path / "checkout", tmp_path / "prefix"
    assert nuclei._first_with_model(checkout, installed) == checkout  # neither: name the first
    (installed / "nuclei").mkdir(parents=True)
    (installed / "nuclei" / "nuclei.onnx").write_bytes(b"x")
    assert nuclei._first_with_model(checkout, installed) == installed
    (checkout / "nuclei").mkdir(parents=True)
    (checkout / "nuclei" / "nuclei.onnx").write_bytes(b"x")
    assert nuclei._first_with_model(checkout, installed) == checkout
    monkeypatch.setenv("SEGFLOW_MODELS_DIR", str(tmp_path / "mine"))
    assert nuclei.models_dir() == tmp_path / "mine"


def test_wheels_carry_the_shipped_model_files() -> None:
    """``pyproject.toml`` installs ``models/nuclei`` under ``<prefix>/share/segflow/models``."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    files = config["tool"]["setuptools"]["data-files"]["share/segflow/models/nuclei"]
    assert "models/nuclei/nuclei.onnx" in files
    assert all((root / f).is_file() for f in files)


def test_shipped_model_is_small_and_self_describing() -> None:
    pytest.importorskip("onnxruntime")
    path = _shipped()
    assert path.stat().st_size <= 15 * 1024 * 1024
    seg = segmenters.create("nuclei")
    assert (
        seg.meta.boundary
        and seg.meta.channels == 1
        and seg.class_names == ["background", "foreground"]
    )


def test_shipped_model_reaches_its_model_card_iou_on_held_out_dsb(shared_data: Path) -> None:
    pytest.importorskip("onnxruntime")
    _shipped()
    from segflow.inference import segment_image
    from segflow.io import read_image, read_labels
    from segflow.metrics import binary_counts, instance_scores, scores_from_counts
    from segflow.preprocess import to_float_chw

    card = json.loads((ROOT / "models" / "nuclei" / "validation.json").read_text())
    dsb = shared_data / "dsb2018_nuclei"
    seg = segmenters.create("nuclei", threads=1)
    ious, f1s = [], []
    for stem in card["test_subset"]:
        image = to_float_chw(read_image(dsb / "images" / f"{stem}.png"))
        truth = read_labels(dsb / "labels" / f"{stem}.png")
        result = segment_image(seg, image)
        assert result.instances is not None
        ious.append(scores_from_counts(*binary_counts(result.instances > 0, truth > 0))["iou"])
        f1s.append(instance_scores(result.instances, truth).f1)
    # small margins: thread counts may move a few pixels across a threshold
    assert np.mean(ious) >= card["test_subset_fg_iou"] - 0.005
    assert np.mean(f1s) >= card["test_subset_f1"] - 0.02
    assert np.mean(ious) > card["test_subset_otsu_fg_iou"]
