"""The ``unet`` backend: save -> load round trips give the in-memory model's outputs, offline
construction, missing/wrong weights fail at once naming the expected file, and the tiled driver."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("segmentation_models_pytorch")

from segflow import segmenters  # noqa: E402
from segflow.inference import segment_image  # noqa: E402
from segflow.segmenters.nuclei import ModelMeta, prepare_input  # noqa: E402
from segflow.segmenters.torch_unet import (  # noqa: E402
    UnetSegmenter,
    build_model,
    outputs_module,
    save_model_dir,
)

TINY = {"encoder_name": "tu-regnetx_002", "encoder_depth": 3, "decoder_channels": (16, 8, 8)}


def _random_model(*, in_channels: int = 1, classes: int = 2, seed: int = 0, **kw: object) -> object:
    torch.manual_seed(seed)
    params = {**TINY, **kw}
    model = build_model(arch="Unet", in_channels=in_channels, classes=classes, **params)
    # move BatchNorm statistics away from identity so that eval mode matters
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _image(h: int = 64, w: int = 64, c: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.random((c, h, w), dtype=np.float32) * 0.2
    yy, xx = np.mgrid[:h, :w]
    for cy, cx in [(16, 16), (40, 30), (20, 50)]:
        img[:, (yy - cy) ** 2 + (xx - cx) ** 2 < 64] += 0.7
    return np.clip(img, 0, 1)


def test_segflow_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = _random_model()
    meta = ModelMeta(label_kind="instances", boundary=True)
    save_model_dir(model, tmp_path / "ckpt", meta=meta)
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {
        "config.json",
        "model.safetensors",
        "segflow.json",
    }
    seg = segmenters.create("unet", model_path=str(tmp_path / "ckpt"), device="cpu")
    assert isinstance(seg, UnetSegmenter) and seg.num_classes == 2 and seg.instances
    x = np.random.default_rng(1).random((3, 1, 48, 64), dtype=np.float32)
    got = seg.predict(x)
    with torch.no_grad():
        probs, boundary = outputs_module(model, label_kind="instances", boundary=True)(
            torch.from_numpy(x)
        )
    want = np.concatenate([probs.numpy(), boundary.numpy()], axis=1)
    assert got.shape == (3, 3, 48, 64)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_raw_smp_folder_without_segflow_metadata(tmp_path: Path) -> None:
    model = _random_model(in_channels=3, classes=3, seed=2)
    model.save_pretrained(str(tmp_path / "raw"))
    # a config that names ImageNet weights must not trigger a download
    cfg_path = tmp_path / "raw" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["encoder_weights"] = "imagenet"
    cfg_path.write_text(json.dumps(cfg))
    seg = UnetSegmenter(
        model_path=tmp_path / "raw", device="cpu", class_names=["background", "a", "b"]
    )
    assert seg.num_classes == 3 and seg.class_names == ["background", "a", "b"]
    assert not seg.instances
    x = np.random.default_rng(3).random((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(seg.predict(x), want, atol=1e-6)
    with pytest.raises(ValueError, match="activation 'sigmoid' serves one-channel"):
        UnetSegmenter(model_path=tmp_path / "raw", device="cpu", activation="sigmoid")


def test_weights_file_path_and_torch_state_dict(tmp_path: Path) -> None:
    model = _random_model(seed=4, classes=1)
    model.save_pretrained(str(tmp_path / "d"))
    (tmp_path / "d" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "d" / "model.pt")
    seg = UnetSegmenter(model_path=tmp_path / "d" / "model.pt", device="cpu")
    x = np.random.default_rng(5).random((1, 1, 32, 48), dtype=np.float32)
    with torch.no_grad():
        p = torch.sigmoid(model(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(seg.predict(x), np.concatenate([1 - p, p], axis=1), atol=1e-6)


def test_missing_or_wrong_weights_fail_naming_the_expected_file(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"config\.json and model\.safetensors at .*nowhere"
    ):
        UnetSegmenter(model_path=tmp_path / "nowhere", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"expected the file config\.json at .*empty"):
        UnetSegmenter(model_path=tmp_path / "empty", device="cpu")
    model = _random_model()
    model.save_pretrained(str(tmp_path / "noweights"))
    (tmp_path / "noweights" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"expected a weights file \(model\.safetensors"):
        UnetSegmenter(model_path=tmp_path / "noweights", device="cpu")
    # weights of another architecture: refused with the path
    other = _random_model(classes=5)
    save_model_dir(model, tmp_path / "mix")
    save_model_dir(other, tmp_path / "other")
    (tmp_path / "mix" / "model.safetensors").write_bytes(
        (tmp_path / "other" / "model.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match=r"weights in .*model\.safetensors do not fit"):
        UnetSegmenter(model_path=tmp_path / "mix", device="cpu")
    with pytest.raises(ValueError, match="encoder_weights must be None"):
        build_model(encoder_weights="imagenet", **TINY)
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda, cuda:N"):
        UnetSegmenter(model_path=tmp_path / "mix", device="gpu")


def test_model_path_is_required() -> None:
    with pytest.raises(TypeError, match="bad parameters for segmenter 'unet'"):
        segmenters.create("unet")


def test_tiled_driver_gives_consistent_segmentation(tmp_path: Path) -> None:
    model = _random_model(seed=6)
    save_model_dir(model, tmp_path / "m", meta=ModelMeta(label_kind="instances", boundary=True))
    seg = UnetSegmenter(model_path=tmp_path / "m", device="cpu", min_size=0)
    image = _image(90, 110)
    result = segment_image(seg, image, tile=48, overlap=16, batch_size=3)
    assert result.probabilities is not None and result.probabilities.shape == (2, 90, 110)
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5)
    assert result.instances is not None and result.instances.shape == (90, 110)
    np.testing.assert_array_equal(result.classes > 0, result.instances > 0)
    # a single window covering the image (tile >= image, multiple of 16) is the direct model output
    small = _image(64, 64)
    whole = segment_image(seg, small, tile=64, overlap=0)
    x = prepare_input(small, seg.meta)[None]
    with torch.no_grad():
        probs, _ = outputs_module(model, label_kind="instances", boundary=True)(torch.from_numpy(x))
    np.testing.assert_allclose(whole.probabilities, probs.numpy()[0], atol=1e-5)


def test_predict_pads_tiles_to_the_encoder_stride(tmp_path: Path) -> None:
    save_model_dir(
        _random_model(seed=7), tmp_path / "m", meta=ModelMeta(boundary=False, label_kind="binary")
    )
    seg = UnetSegmenter(model_path=tmp_path / "m", device="cpu")
    out = seg.predict(np.random.default_rng(0).random((2, 1, 37, 41), dtype=np.float32))
    assert out.shape == (2, 2, 37, 41)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)


def test_cpu_microbatches_give_the_whole_batch_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segflow.segmenters import torch_unet

    save_model_dir(
        _random_model(seed=3), tmp_path / "m", meta=ModelMeta(boundary=True, label_kind="instances")
    )
    seg = UnetSegmenter(model_path=tmp_path / "m", device="cpu")
    x = np.random.default_rng(2).random((5, 1, 32, 48), dtype=np.float32)
    whole = seg.predict(x)  # 5 * 32 * 48 pixels: one piece under the default limit
    monkeypatch.setattr(torch_unet, "CPU_MICROBATCH_PIXELS", 2 * 32 * 48)  # pieces of 2, 2, 1
    pieces = seg.predict(x)
    with torch.no_grad():  # the module on each window alone: the oracle for both
        single = [seg.module(torch.from_numpy(x[i : i + 1])) for i in range(5)]
    want = np.concatenate([np.concatenate([p.numpy() for p in out], axis=1) for out in single])
    assert pieces.shape == whole.shape == (5, 3, 32, 48)
    np.testing.assert_allclose(pieces, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(whole, want, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# the device tiler (used on CUDA): checked on the CPU against the numpy tiler and the untiled map


@pytest.mark.parametrize(
    ("shape", "tile", "overlap", "blend", "batch"),
    [
        ((90, 110), 48, 16, "gaussian", 3),
        ((64, 200), 64, 8, "linear", 8),
        ((30, 45), 48, 16, "constant", 2),  # smaller than a tile: reflection padding
        ((77, 51), 40, 12, "gaussian", 1),  # tile not a multiple of the encoder's stride
    ],
)
def test_device_tiler_matches_the_numpy_tiler(
    tmp_path: Path, shape: tuple[int, int], tile: int, overlap: int, blend: str, batch: int
) -> None:
    from segflow.segmenters._torch import predict_tiled_on_device
    from segflow.tiling import predict_tiled

    save_model_dir(
        _random_model(seed=8), tmp_path / "m", meta=ModelMeta(label_kind="instances", boundary=True)
    )
    seg = UnetSegmenter(model_path=tmp_path / "m", device="cpu")
    prepared = seg.prepare(_image(*shape))
    options = {"tile": tile, "overlap": overlap, "blend": blend, "batch_size": batch}
    want = predict_tiled(prepared, seg.predict, **options)
    got = predict_tiled_on_device(prepared, seg._forward, device=seg.device, **options)
    assert got.shape == want.shape == (3, *shape) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 70),
    width=st.integers(1, 70),
    tile=st.integers(8, 32),
    overlap_frac=st.floats(0, 0.9),
    batch=st.integers(1, 5),
    blend=st.sampled_from(["constant", "linear", "gaussian"]),
)
def test_device_tiler_with_a_pointwise_forward_is_the_untiled_map(
    height: int, width: int, tile: int, overlap_frac: float, batch: int, blend: str
) -> None:
    from segflow.segmenters._torch import predict_tiled_on_device

    image = np.random.default_rng(height * 71 + width).random((2, height, width), np.float32)
    overlap = int(overlap_frac * (tile - 1))

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.sigmoid(3 * x[:, :1] - x[:, 1:]), x * x], dim=1)

    got = predict_tiled_on_device(
        image,
        forward,
        device=torch.device("cpu"),
        tile=tile,
        overlap=overlap,
        blend=blend,
        batch_size=batch,
    )
    want = forward(torch.from_numpy(image[None]))[0].numpy()
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-7)


def test_device_tiler_refuses_bad_outputs_and_options() -> None:
    from segflow.segmenters._torch import predict_tiled_on_device

    image = np.zeros((1, 40, 40), np.float32)
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match=r"forward must return \(N, K, 32, 32\) with N = 4"):
        predict_tiled_on_device(
            image, lambda x: x[:, :, :16], device=cpu, tile=32, overlap=8, batch_size=4
        )
    with pytest.raises(ValueError, match="blend mode must be one of"):
        predict_tiled_on_device(image, lambda x: x, device=cpu, tile=32, overlap=8, blend="max")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        predict_tiled_on_device(image, lambda x: x, device=cpu, tile=32, overlap=8, batch_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_segment_image_tiles_on_the_gpu_like_the_cpu(tmp_path: Path) -> None:
    save_model_dir(
        _random_model(seed=9), tmp_path / "m", meta=ModelMeta(label_kind="instances", boundary=True)
    )
    image = _image(200, 260)
    options = {"tile": 64, "overlap": 16, "batch_size": 4}
    cpu = segment_image(UnetSegmenter(model_path=tmp_path / "m", device="cpu"), image, **options)
    gpu = segment_image(
        UnetSegmenter(model_path=tmp_path / "m", device="cuda", amp=False), image, **options
    )
    assert gpu.probabilities is not None and cpu.probabilities is not None
    np.testing.assert_allclose(gpu.probabilities, cpu.probabilities, atol=1e-3)
