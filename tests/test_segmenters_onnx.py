"""The ``onnx`` segmenter on small ONNX models built here (no shared data needed).

Oracle: the same ONNX file run untiled through a plain ``onnxruntime.InferenceSession`` on the
whole image (the models are fully convolutional with a receptive radius of 2 px, so halo-cropped
tiling with ``halo >= 2`` must reproduce the untiled output).
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ort = pytest.importorskip("onnxruntime", reason="the onnx segmenter needs onnxruntime")
onnx = pytest.importorskip("onnx", reason="building test models needs the onnx package")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from segflow.segmenters import available, create  # noqa: E402
from segflow.segmenters.onnx import (  # noqa: E402
    OnnxSegmenter,
    _owned,
    instances_from_probability,
    parse_device,
    predict_fixed_size,
    window_starts,
)

RADIUS = 2  # two 3x3 convolutions


def conv_model(
    path: Path,
    *,
    in_ch: int = 1,
    out_ch: int = 1,
    size: tuple[int, int] | None = None,
    batch: int | None = None,
    nhwc: bool = False,
    argmax: bool = False,
    seed: int = 0,
) -> Path:
    """Conv3x3 -> ReLU -> Conv3x3 (zero padding), dynamic or fixed N/H/W; optional NHWC / argmax."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (4, in_ch, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 4).astype(np.float32)
    w2 = rng.normal(0, 0.5, (out_ch, 4, 3, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, out_ch).astype(np.float32)
    n = batch if batch is not None else "n"
    h, w = size if size is not None else ("h", "w")
    in_shape = [n, h, w, in_ch] if nhwc else [n, in_ch, h, w]
    nodes = []
    src = "x"
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]))
        src = "x_nchw"
    nodes += [
        helper.make_node("Conv", [src, "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
    ]
    if argmax:
        nodes.append(helper.make_node("ArgMax", ["c2"], ["y"], axis=1, keepdims=0))
        out = helper.make_tensor_value_info("y", TensorProto.INT64, [n, h, w])
    elif nhwc:
        nodes.append(helper.make_node("Transpose", ["c2"], ["y"], perm=[0, 2, 3, 1]))
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, h, w, out_ch])
    else:
        nodes.append(helper.make_node("Identity", ["c2"], ["y"]))
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, out_ch, h, w])
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [out],
        initializer=[
            numpy_helper.from_array(a, name)
            for a, name in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def run_untiled(path: Path, x: np.ndarray) -> np.ndarray:
    """The oracle: the whole (N, C, H, W) batch through a plain session."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.astype(np.float32)})[0]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx-models")
    return {
        "dynamic": conv_model(root / "dynamic.onnx"),
        "fixed": conv_model(root / "fixed.onnx", size=(32, 32), batch=1),
        "three": conv_model(root / "three.onnx", in_ch=3, out_ch=3, seed=1),
        "nhwc": conv_model(root / "nhwc.onnx", in_ch=3, out_ch=3, nhwc=True, seed=1),
        "argmax": conv_model(root / "argmax.onnx", in_ch=3, out_ch=3, argmax=True, seed=1),
    }


def test_registered_lazily() -> None:
    assert {"onnx", "bioimageio", "tflite"} <= set(available())


# -- window placement ------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(4, 40),
    extra=st.integers(0, 120),
    halo_frac=st.floats(0.0, 0.49),
)
def test_windows_cover_and_owned_pixels_keep_the_halo(
    size: int, extra: int, halo_frac: float
) -> None:
    halo = min(int(size * halo_frac), (size - 1) // 2)
    length = size + extra
    starts = window_starts(length, size=size, halo=halo)
    assert starts[0] == 0 and starts[-1] == length - size
    assert all(b > a for a, b in itertools.pairwise(starts))
    assert all(a + size - b >= 2 * halo for a, b in itertools.pairwise(starts))
    owned = _owned(starts, size=size, length=length)
    covered = np.zeros(length, dtype=int)
    for i, ((lo, hi), s) in enumerate(zip(owned, starts, strict=True)):
        covered[lo:hi] += 1
        assert s <= lo and hi <= s + size
        if i > 0:  # an interior left edge: the halo is not kept
            assert lo >= s + halo
        if i < len(starts) - 1:
            assert hi <= s + size - halo
    assert (covered == 1).all()


def test_window_starts_rejects_a_halo_that_leaves_nothing() -> None:
    with pytest.raises(ValueError, match="halo"):
        window_starts(100, size=16, halo=8)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70), halo=st.integers(0, 7), batch=st.integers(1, 5))
def test_pointwise_predictor_is_exact_and_batched(h: int, w: int, halo: int, batch: int) -> None:
    rng = np.random.default_rng(h * 100 + w)
    image = rng.random((2, h, w), dtype=np.float32)
    calls: list[int] = []

    def run(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape[0])
        return np.concatenate([x * 2.0, x.sum(axis=1, keepdims=True)], axis=1)

    out = predict_fixed_size(image, run, size=(16, 16), halo=halo, batch_size=batch)
    expected = np.concatenate([image * 2.0, image.sum(axis=0, keepdims=True)])
    np.testing.assert_array_equal(out, expected)
    n_windows = len(window_starts(max(h, 16), size=16, halo=halo)) * len(
        window_starts(max(w, 16), size=16, halo=halo)
    )
    assert sum(calls) == n_windows
    assert len(calls) == math.ceil(n_windows / batch) and max(calls) <= batch


# -- against the untiled model -----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(70, 90), (32, 33), (129, 64)])
def test_halo_tiling_equals_untiled_run(models: dict[str, Path], shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((1, *shape), dtype=np.float32)
    seg = create(
        "onnx", model_path=models["dynamic"], activation="sigmoid", tile=24, halo=RADIUS, threads=1
    )
    probs = seg.predict(image[None])[0]
    expected = sigmoid(run_untiled(models["dynamic"], image[None])[0, 0])
    assert probs.shape == (2, *shape)
    np.testing.assert_allclose(probs[1], expected, atol=1e-5)
    np.testing.assert_allclose(probs[0], 1.0 - expected, atol=1e-5)


def test_without_halo_tile_borders_differ(models: dict[str, Path]) -> None:
    """The oracle is sensitive: halo 0 leaves window-border errors that halo 2 removes."""
    image = np.random.default_rng(1).random((1, 70, 90), dtype=np.float32)
    expected = sigmoid(run_untiled(models["dynamic"], image[None])[0, 0])
    seg = create(
        "onnx", model_path=models["dynamic"], activation="sigmoid", tile=24, halo=0, threads=1
    )
    assert np.abs(seg.predict(image[None])[0, 1] - expected).max() > 1e-3


def test_fixed_size_model_is_tiled_one_by_one(models: dict[str, Path]) -> None:
    seg = create(
        "onnx", model_path=models["fixed"], activation="sigmoid", halo=RADIUS, batch_size=8
    )
    assert isinstance(seg, OnnxSegmenter)
    assert seg.size == (32, 32) and seg._calls() == 1  # static batch 1 wins over batch_size
    image = np.random.default_rng(2).random((1, 75, 101), dtype=np.float32)
    expected = sigmoid(run_untiled(models["dynamic"], image[None])[0, 0])  # same weights
    np.testing.assert_allclose(seg.predict(image[None])[0, 1], expected, atol=1e-5)
    # an image of exactly the model size is one window: the direct model output
    x = image[:, :32, :32]
    np.testing.assert_allclose(
        seg.predict(x[None])[0, 1], sigmoid(run_untiled(models["fixed"], x[None])[0, 0]), atol=1e-6
    )


def test_small_image_is_reflect_padded_and_cropped(models: dict[str, Path]) -> None:
    seg = create("onnx", model_path=models["fixed"], activation="sigmoid", halo=RADIUS)
    image = np.random.default_rng(3).random((1, 20, 25), dtype=np.float32)
    padded = np.pad(image, ((0, 0), (0, 12), (0, 7)), mode="reflect")
    expected = sigmoid(run_untiled(models["fixed"], padded[None])[0, 0])[:20, :25]
    np.testing.assert_allclose(seg.predict(image[None])[0, 1], expected, atol=1e-6)


def test_normalisation_is_fitted_on_the_whole_image(models: dict[str, Path]) -> None:
    rng = np.random.default_rng(4)
    image = (rng.random((1, 80, 96)) * np.linspace(0.2, 3.0, 96)).astype(np.float32)  # a ramp
    seg = create(
        "onnx",
        model_path=models["dynamic"],
        normalize="zero_mean_unit_variance",
        activation="sigmoid",
        tile=32,
        halo=RADIUS,
    )
    seg.fit(image)
    norm = (image - image.mean()) / (image.std() + 1e-6)
    expected = sigmoid(run_untiled(models["dynamic"], norm[None])[0, 0])
    np.testing.assert_allclose(seg.predict(image[None])[0, 1], expected, atol=1e-5)


@pytest.mark.parametrize(
    ("normalize", "low", "high"), [("minmax", 0.0, 100.0), ("percentile", 1.0, 99.8)]
)
def test_range_normalisations(
    models: dict[str, Path], normalize: str, low: float, high: float
) -> None:
    image = np.random.default_rng(5).gamma(2.0, size=(1, 40, 40)).astype(np.float32)
    seg = create("onnx", model_path=models["dynamic"], normalize=normalize, tile=40)
    seg.fit(image)
    lo, hi = np.percentile(image, [low, high])
    norm = (image - lo) / (hi - lo + 1e-6)
    expected = np.clip(run_untiled(models["dynamic"], norm[None])[0, 0], 0, 1)
    np.testing.assert_allclose(seg.predict(image[None])[0, 1], expected, atol=1e-5)


def test_softmax_multiclass_and_nhwc_layout(models: dict[str, Path]) -> None:
    image = np.random.default_rng(6).random((3, 50, 45), dtype=np.float32)
    logits = run_untiled(models["three"], image[None])[0]
    e = np.exp(logits - logits.max(axis=0))
    expected = e / e.sum(axis=0)
    for name in ("three", "nhwc"):
        seg = create("onnx", model_path=models[name], activation="softmax", tile=24, halo=RADIUS)
        assert isinstance(seg, OnnxSegmenter)
        assert seg.num_classes == 3 and seg.layout == ("NHWC" if name == "nhwc" else "NCHW")
        probs = seg.predict(image[None])[0]
        np.testing.assert_allclose(probs, expected, atol=1e-5)
        np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def test_class_map_output_becomes_one_hot(models: dict[str, Path]) -> None:
    image = np.random.default_rng(7).random((3, 40, 50), dtype=np.float32)
    with pytest.raises(ValueError, match="num_classes"):
        create("onnx", model_path=models["argmax"])
    seg = create(
        "onnx",
        model_path=models["argmax"],
        class_names=["background", "a", "b"],
        tile=24,
        halo=RADIUS,
    )
    probs = seg.predict(image[None])[0]
    expected = run_untiled(models["three"], image[None])[0].argmax(axis=0)  # same weights
    assert set(np.unique(probs)) <= {0.0, 1.0}
    np.testing.assert_array_equal(probs.argmax(axis=0), expected)
    assert seg.class_names == ["background", "a", "b"]


def test_grey_model_takes_rgb_images(models: dict[str, Path]) -> None:
    rgb = np.random.default_rng(8).random((3, 30, 30), dtype=np.float32)
    seg = create("onnx", model_path=models["dynamic"], tile=30)
    expected = np.clip(run_untiled(models["dynamic"], rgb.mean(axis=0)[None, None])[0, 0], 0, 1)
    np.testing.assert_allclose(seg.predict(rgb[None])[0, 1], expected, atol=1e-5)


def test_segment_image_with_instances(models: dict[str, Path]) -> None:
    from segflow.inference import segment_image

    image = np.zeros((1, 64, 64), dtype=np.float32)
    yy, xx = np.mgrid[:64, :64]
    for cy, cx in ((20, 20), (44, 46)):
        image[0][(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 1.0
    # the driver's finish() must label the full-size probability map exactly as the
    # post-processing does when applied to it directly
    seg = create(
        "onnx",
        model_path=models["dynamic"],
        activation="sigmoid",
        tile=32,
        halo=RADIUS,
        instances=True,
    )
    result = segment_image(seg, image)
    assert result.probabilities is not None and result.instances is not None
    expected = instances_from_probability(result.probabilities[1], threshold=0.5)
    np.testing.assert_array_equal(result.instances, expected)
    n = int(result.instances.max())
    assert n >= 1
    assert set(result.instance_classes) == set(range(1, n + 1))
    assert all(0.5 <= s <= 1.0 for s in result.instance_scores.values())


# -- instances post-processing ------------------------------------------------------------------


def test_touching_discs_become_two_instances() -> None:
    yy, xx = np.mgrid[:80, :120]
    a = (yy - 40) ** 2 + (xx - 40) ** 2 < 20**2
    b = (yy - 40) ** 2 + (xx - 76) ** 2 < 20**2  # overlaps a by a thin lens: a neck
    prob = (a | b).astype(np.float32)
    speck = np.zeros_like(prob)
    speck[5, 110] = 1.0  # a single-pixel speck is dropped by min_size
    labels = instances_from_probability(prob + speck, threshold=0.5, min_size=16)
    assert labels.dtype == np.int32 and labels.max() == 2
    assert labels[5, 110] == 0
    for disc in (a & ~b, b & ~a):
        _, counts = np.unique(labels[disc], return_counts=True)
        assert counts.max() / disc.sum() > 0.95  # each disc is (almost) one label
    assert labels[40, 40] != labels[40, 76]
    assert instances_from_probability(np.zeros((10, 10)), threshold=0.5).max() == 0


# -- options and failures ---------------------------------------------------------------------


def test_missing_or_wrong_model_file_fails_at_once(tmp_path: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"expected a \.onnx file at .*nowhere\.onnx"):
        create("onnx", model_path=tmp_path / "nowhere.onnx")
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("this is not a model")
    with pytest.raises(ValueError, match="ONNX model"):
        create("onnx", model_path=not_onnx)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"expected one \.onnx file in the folder"):
        create("onnx", model_path=empty)
    assert time.perf_counter() - start < 5.0  # "fails at once": no retries, no downloads


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"normalize": "zscore"}, "normalize must be one of"),
        ({"activation": "relu"}, "activation must be one of"),
        ({"layout": "CHW"}, "layout must be one of"),
        ({"strategy": "crop"}, "strategy must be one of"),
        ({"halo": -1}, "halo must be"),
        ({"threads": 0}, "threads must be"),
        ({"device": "gpu"}, "device must be one of"),
        ({"threshold": 2.0}, "threshold must be"),
    ],
)
def test_bad_options_name_the_allowed_values(
    models: dict[str, Path], params: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        create("onnx", model_path=models["dynamic"], **params)


def test_device_parsing_and_cuda_without_provider(models: dict[str, Path]) -> None:
    assert parse_device("auto") == ("auto", 0)
    assert parse_device("cuda:3") == ("cuda", 3)
    assert parse_device("CPU") == ("cpu", 0)
    seg = create("onnx", model_path=models["dynamic"], device="cpu", threads=1)
    assert isinstance(seg, OnnxSegmenter) and seg.threads == 1
    assert seg.providers == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has a CUDA provider; the no-CUDA error cannot happen here")
    with pytest.raises(RuntimeError, match="onnxruntime offers only"):
        create("onnx", model_path=models["dynamic"], device="cuda:0")
