"""``bioimageio`` (and ``onnx``) on the real bioimage.io U-Net in ``../shared/models``.

Reference pair: the descriptor's ``test_input.npy`` -> ``test_output.npy``. The U-Net's
ONNX graph ends before the sigmoid: the descriptor's postprocessing (``sigmoid``) is what turns
its output into the reference probabilities.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime", reason="the bioimageio segmenter runs ONNX weights")
pytest.importorskip("yaml", reason="reading bioimageio.yaml needs pyyaml")

from segflow.segmenters import create  # noqa: E402
from segflow.segmenters.bioimageio import BioimageioSegmenter, read_descriptor  # noqa: E402
from segflow.segmenters.onnx import window_starts  # noqa: E402

MODEL = "unet2d_nuclei_broad"
#: mean foreground IoU on the first 20 dsb2018 images measured 0.613 (fluorescence images score
#: 0.64-0.94; the bright-field ones, dark nuclei on a light background, fail); floor = measured - 0.02
DSB_FLOOR = 0.59


@pytest.fixture(scope="module")
def model_dir(shared_models: Path) -> Path:
    path = shared_models / MODEL
    if not path.is_dir():
        pytest.skip(f"real model not available: {path} is absent")
    return path


@pytest.fixture(scope="module")
def unet(model_dir: Path):
    return create("bioimageio", descriptor=model_dir, threads=2)


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(model_dir / "test_input.npy"), np.load(model_dir / "test_output.npy")


def test_descriptor_is_read(model_dir: Path) -> None:
    spec = read_descriptor(model_dir / "bioimageio.yaml")
    assert spec.size == (512, 512) and spec.channels == 1 and spec.halo == 32
    assert spec.input_axes == ("batch", "channel", "y", "x")
    assert spec.activation == "sigmoid"
    assert spec.weights == model_dir / "weights.onnx"
    assert [type(s).__name__ for s in spec.steps] == ["ZeroMeanUnitVariance"]


def test_onnx_segmenter_reproduces_the_reference(model_dir: Path, reference) -> None:
    x, y = reference
    seg = create(
        "onnx",
        model_path=model_dir / "weights.onnx",
        normalize="zero_mean_unit_variance",
        activation="sigmoid",
        halo=32,
        threads=2,
    )
    seg.fit(x[0])
    out = seg.predict(x)
    assert out.shape == (1, 2, 512, 512)
    assert np.abs(out[:, 1] - y[:, 0]).max() <= 1e-4


def test_bioimageio_route_reproduces_the_reference(unet, reference) -> None:
    x, y = reference
    unet.fit(x[0])
    out = unet.predict(x)
    assert np.abs(out[:, 1] - y[:, 0]).max() <= 1e-4
    # without fit, predict normalises per image (bioimage.io "per sample"): the same answer
    fresh = create("bioimageio", descriptor=unet.spec.descriptor, threads=2)
    assert np.abs(fresh.predict(x)[:, 1] - y[:, 0]).max() <= 1e-4


def test_512_image_is_the_direct_model_output(unet, model_dir: Path) -> None:
    image = np.random.default_rng(0).random((1, 512, 512), dtype=np.float32)
    unet.fit(image)
    norm = ((image - image.mean()) / (image.std() + 1e-6)).astype(np.float32)
    session = ort.InferenceSession(
        str(model_dir / "weights.onnx"), providers=["CPUExecutionProvider"]
    )
    logits = session.run(None, {session.get_inputs()[0].name: norm[None]})[0][0, 0]
    direct = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    np.testing.assert_allclose(unet.predict(image[None])[0, 1], direct, atol=1e-5)


def test_tiled_600x700_matches_per_window_calls_and_the_halo_holds(
    unet, model_dir: Path, shared_data: Path
) -> None:
    root = shared_data / "dsb2018_nuclei"
    from segflow.io import read_image
    from segflow.preprocess import to_float_chw

    name = "1b44d22643830cd4f23c9deadb0bd499fb392fb2cd9526d81547d93077d983df"  # 1024x1024
    image = to_float_chw(read_image(root / "images" / f"{name}.png"))[:, :600, :700]
    grey = image.mean(axis=0, keepdims=True)
    unet.fit(grey)
    tiled = unet.predict(grey[None])[0, 1]
    assert tiled.shape == (600, 700)

    norm = ((grey - grey.mean()) / (grey.std() + 1e-6)).astype(np.float32)
    session = ort.InferenceSession(
        str(model_dir / "weights.onnx"), providers=["CPUExecutionProvider"]
    )
    ys = window_starts(600, size=512, halo=32)
    xs = window_starts(700, size=512, halo=32)
    assert ys == [0, 88] and xs == [0, 188]
    direct = {}
    for y in ys:
        for x in xs:
            logit = session.run(None, {"input.1": norm[None, :, y : y + 512, x : x + 512]})[0]
            direct[y, x] = 1.0 / (1.0 + np.exp(-logit[0, 0].astype(np.float64)))
    # each window's owned (central) region is that window's own direct output
    cy, cx = (88 + 512) // 2, (188 + 512) // 2  # cuts in the middle of the overlaps
    np.testing.assert_allclose(tiled[:cy, :cx], direct[0, 0][:cy, :cx], atol=1e-5)
    np.testing.assert_allclose(tiled[cy:, cx:], direct[88, 188][cy - 88 :, cx - 188 :], atol=1e-5)
    # the halo claim: beyond 32 px from their edges, overlapping windows agree
    a = direct[0, 0][:, 188 + 32 : 512 - 32]
    b = direct[0, 188][:, 32 : 512 - 32 - 188]
    assert np.abs(a - b).mean() < 1e-3 and np.abs(a - b).max() < 0.05
    assert ((a > 0.5) != (b > 0.5)).mean() < 1e-3


def test_weights_sha256_is_checked(model_dir: Path, tmp_path: Path) -> None:
    text = (model_dir / "bioimageio.yaml").read_text()
    bad = text.replace("85f5ac80fa977fea", "00000000fa977fea").replace(
        "source: weights.onnx", f"source: {model_dir / 'weights.onnx'}"
    )
    (tmp_path / "bioimageio.yaml").write_text(bad)
    with pytest.raises(ValueError, match="sha256"):
        create("bioimageio", descriptor=tmp_path)


def test_only_onnx_weights_are_supported(model_dir: Path, tmp_path: Path) -> None:
    text = (model_dir / "bioimageio.yaml").read_text()
    start, end = text.index("  onnx:\n"), text.index("  pytorch_state_dict:\n")
    (tmp_path / "bioimageio.yaml").write_text(text[:start] + text[end:])
    with pytest.raises(
        ValueError, match=r"pytorch_state_dict, torchscript; segflow runs only: onnx"
    ):
        create("bioimageio", descriptor=tmp_path / "bioimageio.yaml")


def test_unsupported_preprocessing_names_the_supported(model_dir: Path, tmp_path: Path) -> None:
    text = (model_dir / "bioimageio.yaml").read_text()
    text = text.replace("- id: zero_mean_unit_variance", "- id: stardist_magic").replace(
        "source: weights.onnx", f"source: {model_dir / 'weights.onnx'}"
    )
    (tmp_path / "bioimageio.yaml").write_text(text)
    with pytest.raises(
        ValueError, match="'stardist_magic' is not supported; supported: ensure_dtype"
    ):
        create("bioimageio", descriptor=tmp_path)


def test_missing_descriptor_or_weights_fail_at_once(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"expected bioimageio\.yaml or rdf\.yaml in the folder"
    ):
        create("bioimageio", descriptor=tmp_path)
    text = (model_dir / "bioimageio.yaml").read_text()
    (tmp_path / "bioimageio.yaml").write_text(text)  # weights.onnx is not beside this copy
    with pytest.raises(FileNotFoundError, match=r"expected .*weights\.onnx"):
        create("bioimageio", descriptor=tmp_path)
    url = text.replace("source: weights.onnx", "source: https://example.org/weights.onnx")
    (tmp_path / "bioimageio.yaml").write_text(url)
    with pytest.raises(ValueError, match="never downloads"):
        create("bioimageio", descriptor=tmp_path)


def test_format_04_descriptor_gives_the_same(model_dir: Path, tmp_path: Path, reference) -> None:
    x, y = reference
    (tmp_path / "rdf.yaml").write_text(
        f"""
format_version: 0.4.10
type: model
name: unet2d as 0.4
inputs:
  - name: raw
    axes: bcyx
    data_type: float32
    shape: [1, 1, 512, 512]
    preprocessing:
      - name: zero_mean_unit_variance
        kwargs: {{mode: per_sample, axes: xy}}
outputs:
  - name: probability
    axes: bcyx
    data_type: float32
    shape: {{reference_tensor: raw, scale: [1, 1, 1, 1], offset: [0, 0, 0, 0]}}
    halo: [0, 0, 32, 32]
    postprocessing:
      - name: sigmoid
test_inputs: [{model_dir / "test_input.npy"}]
test_outputs: [{model_dir / "test_output.npy"}]
weights:
  onnx:
    source: {model_dir / "weights.onnx"}
"""
    )
    seg = create("bioimageio", descriptor=tmp_path, threads=2)
    assert isinstance(seg, BioimageioSegmenter)
    assert seg.spec.halo == 32 and seg.spec.size == (512, 512)
    test_in, test_out = seg.test_tensors()
    np.testing.assert_array_equal(test_in, x)
    np.testing.assert_array_equal(test_out, y)
    seg.fit(x[0])
    assert np.abs(seg.predict(x)[:, 1] - y[:, 0]).max() <= 1e-4


@pytest.mark.slow
def test_dsb_first_20_images_through_segment_image(unet, shared_data: Path) -> None:
    from segflow.inference import segment_image
    from segflow.io import read_image, read_labels
    from segflow.preprocess import to_float_chw

    root = shared_data / "dsb2018_nuclei"
    with (root / "index.csv").open() as fh:
        ids = [row["id"] for row in csv.DictReader(fh)][:20]
    ious = []
    for name in ids:
        image = to_float_chw(read_image(root / "images" / f"{name}.png"))
        truth = read_labels(root / "labels" / f"{name}.png") > 0
        pred = segment_image(unet, image).classes > 0
        ious.append((pred & truth).sum() / max((pred | truth).sum(), 1))
    mean_iou = float(np.mean(ious))
    print(f"unet2d_nuclei_broad on the first 20 dsb2018 images: mean foreground IoU {mean_iou:.3f}")
    assert mean_iou >= DSB_FLOOR
