"""segflow.train: data pairing and split, joint augmentation, targets, loss, checkpoints/resume,
determinism and the ONNX export (outputs equal to torch's within 1e-4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("segmentation_models_pytorch")

from scipy import ndimage as ndi

from segflow.segmenters.nuclei import ModelMeta
from segflow.synth import make_dataset
from segflow.train import (
    Sample,
    TrainConfig,
    _crop_pool,
    augment,
    boundary_target,
    file_list_hash,
    is_validation,
    list_pairs,
    load_sample,
    split_pairs,
    train,
)

TINY = {
    "encoder": "tu-regnetx_002",
    "encoder_depth": 3,
    "decoder_channels": [16, 8, 8],
    "crop": 32,
    "batch_size": 2,
    "threads": 1,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    make_dataset(root, n_images=6, size=(64, 64), seed=3)
    return root


def _config(data: Path, out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "images": str(data / "images"),
        "labels": str(data / "labels"),
        "out": str(out),
        "val_fraction": 0.34,
        **TINY,
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _samples(data: Path) -> list[Sample]:
    meta = ModelMeta(channels=1, label_kind="instances", boundary=False)
    pairs = list_pairs(data / "images", data / "labels")
    return [load_sample(*p, meta=meta, label_kind="instances") for p in pairs]


# ---------------------------------------------------------------------------------------------
# data


def test_list_pairs_matches_stems_and_ignores_unpaired(tmp_path: Path) -> None:
    (tmp_path / "i").mkdir()
    (tmp_path / "l").mkdir()
    for name in ("a.png", "b.jpg", "c.png", "notes.txt"):
        (tmp_path / "i" / name).write_bytes(b"x")
    for name in ("a.png", "b.png", "z.png"):
        (tmp_path / "l" / name).write_bytes(b"y")
    pairs = list_pairs(tmp_path / "i", tmp_path / "l")
    assert [(s, i.name, lab.name) for s, i, lab in pairs] == [
        ("a", "a.png", "a.png"),
        ("b", "b.jpg", "b.png"),
    ]
    with pytest.raises(FileNotFoundError, match="labels folder not found"):
        list_pairs(tmp_path / "i", tmp_path / "missing")
    (tmp_path / "e").mkdir()
    with pytest.raises(FileNotFoundError, match="no image in"):
        list_pairs(tmp_path / "i", tmp_path / "e")


def test_file_list_hash_changes_with_any_byte(tmp_path: Path) -> None:
    (tmp_path / "i").mkdir()
    (tmp_path / "l").mkdir()
    for k in range(3):
        (tmp_path / "i" / f"{k}.png").write_bytes(bytes([k]))
        (tmp_path / "l" / f"{k}.png").write_bytes(bytes([k, k]))
    first = file_list_hash(list_pairs(tmp_path / "i", tmp_path / "l"))
    assert first == file_list_hash(list_pairs(tmp_path / "i", tmp_path / "l"))
    (tmp_path / "l" / "1.png").write_bytes(b"changed")
    assert file_list_hash(list_pairs(tmp_path / "i", tmp_path / "l")) != first


def test_split_is_the_stated_hash_rule_and_stable() -> None:
    import hashlib

    stems = [f"img{k:03d}" for k in range(400)]
    for stem in stems[:50]:
        digest = int(hashlib.sha256(f"7:{stem}".encode()).hexdigest(), 16)
        assert is_validation(stem, val_fraction=0.2, seed=7) == (digest % 10000 < 2000)
    pairs = [(s, Path(s), Path(s)) for s in stems]
    train_, val = split_pairs(pairs, val_fraction=0.2, seed=7)
    assert {p[0] for p in train_} | {p[0] for p in val} == set(stems)
    assert not {p[0] for p in train_} & {p[0] for p in val}
    assert 0.12 < len(val) / len(stems) < 0.28
    # adding images never moves an existing one across the split
    more = pairs + [(f"new{k}", Path("x"), Path("x")) for k in range(50)]
    _, val2 = split_pairs(more, val_fraction=0.2, seed=7)
    assert {p[0] for p in val} <= {p[0] for p in val2}


def test_boundary_target_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros((20, 24), dtype=np.int32)
    labels[2:10, 2:12] = 1
    labels[2:10, 12:20] = 2  # touches 1
    labels[12:18, 5:9] = 3
    labels[rng.random(labels.shape) < 0.02] = 0
    got = boundary_target(labels, width=2)
    want = np.zeros_like(got)
    h, w = labels.shape
    for y in range(h):
        for x in range(w):
            if labels[y, x] == 0:
                continue
            win = labels[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3]
            # borders count as "nearest" padding: only other values inside the image matter
            want[y, x] = bool(np.any(win != labels[y, x]))
    np.testing.assert_array_equal(got, want)


def test_augment_moves_image_and_labels_together() -> None:
    """Labels follow the image: a crop of a label-coded image reproduces its labels."""
    rng = np.random.default_rng(5)
    labels = np.zeros((80, 96), dtype=np.int32)
    for k, (y, x) in enumerate([(20, 20), (20, 60), (55, 40), (60, 80)], start=1):
        yy, xx = np.ogrid[:80, :96]
        labels[(yy - y) ** 2 + (xx - x) ** 2 < 12**2] = k
    image = (labels.astype(np.float16) / 8.0)[None]  # intensity encodes the id
    sample = Sample("s", image, labels)
    for _ in range(20):
        img, lab = augment(rng, sample, crop=48, scale_range=(0.7, 1.4), intensity=False)
        assert img.shape == (1, 48, 48) and lab.shape == (48, 48)
        assert img.dtype == np.float32 and lab.dtype == np.int32
        inner = ndi.binary_erosion(lab > 0, iterations=2)  # away from interpolated edges
        np.testing.assert_allclose(img[0][inner], lab[inner] / 8.0, atol=1e-3)
        assert set(np.unique(lab)) <= {0, 1, 2, 3, 4}


def test_augment_is_deterministic_for_a_generator_seed() -> None:
    sample = Sample(
        "s",
        np.random.default_rng(1).random((1, 40, 50)).astype(np.float16),
        np.arange(2000, dtype=np.int32).reshape(40, 50) % 7,
    )
    a = augment(np.random.default_rng(9), sample, crop=32, scale_range=(0.5, 2.0), intensity=True)
    b = augment(np.random.default_rng(9), sample, crop=32, scale_range=(0.5, 2.0), intensity=True)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_config_validation_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match="crop must be a multiple of 16, got 40"):
        TrainConfig(images="i", labels="l", out="o", crop=40)
    with pytest.raises(ValueError, match="decoder_channels needs 4 entries"):
        TrainConfig(images="i", labels="l", out="o", decoder_channels=[8, 8])
    assert not TrainConfig(images="i", labels="l", out="o", label_kind="binary").boundary


# ---------------------------------------------------------------------------------------------
# training


def test_training_lowers_the_loss_saves_and_exports(synth: Path, tmp_path: Path) -> None:
    import onnxruntime as ort
    import torch

    from segflow.segmenters.torch_unet import load_model_dir, outputs_module

    cfg = _config(synth, tmp_path / "run", epochs=3, steps_per_epoch=6, lr=1e-2, val_max_images=1)
    result = train(cfg)
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert result.best_epoch in (0, 1, 2)
    assert 0.0 <= result.best_scores["fg_iou"] <= 1.0
    out = tmp_path / "run"
    for name in (
        "checkpoints/last.pt",
        "best/config.json",
        "best/model.safetensors",
        "best/segflow.json",
        "curves.png",
        "history.json",
        "split.json",
        "result.json",
    ):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "epochs").glob("epoch_*.png"))) == 3
    split = json.loads((out / "split.json").read_text())
    assert split["file_list_sha256"] == result.file_list_sha256
    assert len(split["train"]) + len(split["validation"]) == 6 and len(split["validation"]) > 1
    assert split["validated_each_epoch"] == split["validation"][:1] and result.n_val == 1

    # the exported ONNX model gives the torch model's outputs within 1e-4
    model, _, meta = load_model_dir(out / "best")
    assert meta is not None and meta.boundary
    module = outputs_module(model, label_kind=meta.label_kind, boundary=meta.boundary)
    x = np.random.default_rng(0).random((2, 1, 48, 80), dtype=np.float32)
    with torch.no_grad():
        probs, bd = (t.numpy() for t in module(torch.from_numpy(x)))
    sess = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    o_probs, o_bd = sess.run(["probabilities", "boundary"], {"image": x})
    np.testing.assert_allclose(o_probs, probs, atol=1e-4)
    np.testing.assert_allclose(o_bd, bd, atol=1e-4)
    assert json.loads(sess.get_modelmeta().custom_metadata_map["segflow"])["boundary"] is True


def test_resume_continues_exactly_like_an_uninterrupted_run(synth: Path, tmp_path: Path) -> None:
    import torch

    full = train(_config(synth, tmp_path / "full", epochs=2, steps_per_epoch=2, export_onnx=False))
    # stop after the first epoch (time limit), then resume in the same folder
    first = train(
        _config(
            synth,
            tmp_path / "split",
            epochs=2,
            steps_per_epoch=2,
            export_onnx=False,
            time_limit_s=1e-6,
        )
    )
    assert first.stopped == "time_limit" and first.epochs_run == 1
    resumed = train(
        _config(synth, tmp_path / "split", epochs=2, steps_per_epoch=2, export_onnx=False)
    )
    assert resumed.epochs_run == 2 and resumed.history[0] == first.history[0]
    a = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split/checkpoints/last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(
        [h["train_loss"] for h in full.history], abs=1e-6
    )


def test_crop_workers_give_the_same_stream_for_any_count(synth: Path, tmp_path: Path) -> None:
    from segflow.train import _epoch_batches, _make_batch

    samples = _samples(synth)
    cfg = _config(synth, tmp_path / "w", workers=2, batch_size=3)
    serial = [_make_batch(np.random.default_rng([cfg.seed, 1, s]), samples, cfg) for s in range(5)]
    for workers in (1, 3):
        c = cfg.model_copy(update={"workers": workers})
        with _crop_pool(samples, c) as pool:
            got = list(_epoch_batches(pool, samples, c, epoch=1, steps=5))
        assert len(got) == 5
        for (xa, ya), (xb, yb) in zip(serial, got, strict=True):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    # without workers: the one per-epoch generator, another stream
    with _crop_pool(samples, cfg.model_copy(update={"workers": 0})) as pool:
        assert pool is None
        plain = list(_epoch_batches(None, samples, cfg, epoch=1, steps=5))
    assert not np.array_equal(plain[1][0], serial[1][0])


def test_inverted_weight_draws_bright_background_images_more_often(
    synth: Path, tmp_path: Path
) -> None:
    import cv2

    from segflow.train import _make_batch

    # load_sample records the auto-inversion's decision: a synthetic fluorescence image is not
    # inverted, the same image with its grey values reversed is
    stem, image_path, label_path = list_pairs(synth / "images", synth / "labels")[0]
    bright = tmp_path / "bright.png"
    cv2.imwrite(str(bright), 255 - cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED))
    meta = ModelMeta(channels=1, label_kind="instances", boundary=False)
    assert not load_sample(stem, image_path, label_path, meta=meta, label_kind="instances").inverted
    assert load_sample(stem, bright, label_path, meta=meta, label_kind="instances").inverted

    labels = np.zeros((64, 64), dtype=np.int32)
    samples = [
        Sample("dark", np.zeros((1, 64, 64), np.float16), labels),
        Sample("bright", np.ones((1, 64, 64), np.float16), labels, inverted=True),
        Sample("dark2", np.zeros((1, 64, 64), np.float16), labels),
    ]

    def bright_share(weight: float) -> float:
        cfg = _config(synth, tmp_path / "w", crop=32, batch_size=8, intensity=False)
        cfg = cfg.model_copy(update={"inverted_weight": weight})
        rng = np.random.default_rng(0)
        crops = np.concatenate([_make_batch(rng, samples, cfg)[0] for _ in range(60)])
        return float((crops.mean(axis=(1, 2, 3)) > 0.5).mean())

    assert bright_share(1.0) == pytest.approx(1 / 3, abs=0.07)
    assert bright_share(4.0) == pytest.approx(4 / 6, abs=0.07)
    # the default leaves the fingerprint (and so resuming older checkpoints) as it was
    assert "inverted_weight" not in _config(synth, tmp_path / "w").fingerprint()
    assert _config(synth, tmp_path / "w", inverted_weight=2.0).fingerprint()["inverted_weight"] == 2


def test_training_with_crop_workers_is_deterministic_and_resumes(
    synth: Path, tmp_path: Path
) -> None:
    kw = {"epochs": 2, "steps_per_epoch": 3, "export_onnx": False}
    a = train(_config(synth, tmp_path / "a", workers=1, **kw))
    # stopped after epoch 0, resumed with another worker count: the same run
    first = train(_config(synth, tmp_path / "b", workers=2, time_limit_s=1e-6, **kw))
    assert first.epochs_run == 1
    b = train(_config(synth, tmp_path / "b", workers=3, **kw))
    assert [h["train_loss"] for h in a.history] == pytest.approx(
        [h["train_loss"] for h in b.history], abs=1e-6
    )
    # switching workers off is another crop stream: refused
    first = train(_config(synth, tmp_path / "c", workers=2, time_limit_s=1e-6, **kw))
    with pytest.raises(ValueError, match=r"cannot resume .*\['workers'\]"):
        train(_config(synth, tmp_path / "c", workers=0, **kw))
    # a finished schedule cannot be stretched by resuming with more epochs
    with pytest.raises(ValueError, match="one-cycle learning rate schedule ends after 6 steps"):
        train(_config(synth, tmp_path / "a", workers=1, **{**kw, "epochs": 3}))


def test_resume_refuses_other_training_settings(synth: Path, tmp_path: Path) -> None:
    train(_config(synth, tmp_path / "r", epochs=1, steps_per_epoch=1, export_onnx=False))
    with pytest.raises(ValueError, match=r"cannot resume .*\['lr'\]"):
        train(
            _config(synth, tmp_path / "r", epochs=2, steps_per_epoch=1, lr=0.5, export_onnx=False)
        )


def test_binary_and_class_labels_train(synth: Path, tmp_path: Path) -> None:
    binary = train(_config(synth, tmp_path / "b", label_kind="binary", epochs=1, steps_per_epoch=1))
    assert set(binary.best_scores) == {"fg_iou"}
    meta = ModelMeta.from_json((tmp_path / "b/best/segflow.json").read_text())
    assert meta.label_kind == "binary" and not meta.boundary and meta.num_classes == 2

    # class labels: the synthetic instance ids modulo 3 as classes 0..2
    from segflow.io import read_labels
    from segflow.synth import make_dataset as _make

    root = tmp_path / "classes"
    _make(root, n_images=4, size=(48, 48), seed=1)
    import cv2

    for p in (root / "labels").iterdir():
        lab = read_labels(p)
        cls = np.where(lab > 0, 1 + lab % 2, 0).astype(np.uint8)
        cv2.imwrite(str(p), cls)
    res = train(
        _config(
            root,
            tmp_path / "c",
            label_kind="classes",
            epochs=1,
            steps_per_epoch=1,
            class_names=["background", "odd", "even"],
        )
    )
    assert "mean_iou" in res.best_scores
    meta = ModelMeta.from_json((tmp_path / "c/best/segflow.json").read_text())
    assert meta.class_names == ("background", "odd", "even") and meta.label_kind == "classes"


def test_init_from_starts_with_the_given_weights(synth: Path, tmp_path: Path) -> None:
    import torch

    from segflow.segmenters.torch_unet import load_model_dir

    train(_config(synth, tmp_path / "a", epochs=1, steps_per_epoch=2, export_onnx=False))
    train(
        _config(
            synth,
            tmp_path / "b",
            epochs=1,
            steps_per_epoch=1,
            lr=1e-12,
            export_onnx=False,
            init_from=str(tmp_path / "a" / "best"),
        )
    )
    a, _, _ = load_model_dir(tmp_path / "a" / "best")
    b, _, _ = load_model_dir(tmp_path / "b" / "best")
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="holds another architecture"):
        train(
            _config(
                synth,
                tmp_path / "c",
                epochs=1,
                steps_per_epoch=1,
                decoder_channels=[8, 8, 8],
                init_from=str(tmp_path / "a" / "best"),
            )
        )


@pytest.mark.parametrize("seed", range(4))
def test_lovasz_hinge_of_a_hard_mask_is_twice_its_jaccard_loss(seed: int) -> None:
    """At logits of +-1 the Lovasz extension equals the set function: 2 * (1 - IoU), per image
    (scikit-learn's jaccard_score as the oracle), averaged over the batch."""
    import torch
    from sklearn.metrics import jaccard_score

    from segflow.train import lovasz_hinge

    rng = np.random.default_rng(seed)
    truth = rng.random((3, 12, 10)) < 0.3
    pred = truth ^ (rng.random((3, 12, 10)) < 0.15)  # some pixels flipped
    logits = torch.from_numpy(np.where(pred, 1.0, -1.0))
    got = float(lovasz_hinge(logits, torch.from_numpy(truth.astype(np.float64))))
    want = np.mean(
        [2 * (1 - jaccard_score(t.ravel(), p.ravel())) for t, p in zip(truth, pred, strict=True)]
    )
    assert got == pytest.approx(want, rel=1e-12)
    # right and confident: no loss; an empty truth pays for its largest error only
    assert (
        float(
            lovasz_hinge(
                3 * (2 * torch.from_numpy(truth[:1]).double() - 1),
                torch.from_numpy(truth[:1]).double(),
            )
        )
        == 0.0
    )
    empty = torch.zeros((1, 4, 4), dtype=torch.float64)
    logits = torch.full((1, 4, 4), -2.0, dtype=torch.float64)
    logits[0, 1, 1] = 0.5
    assert float(lovasz_hinge(logits, empty)) == pytest.approx(1.5)


def test_lovasz_fine_tuning_lowers_the_loss_and_is_part_of_the_fingerprint(
    synth: Path, tmp_path: Path
) -> None:
    result = train(
        _config(
            synth,
            tmp_path / "l",
            epochs=3,
            steps_per_epoch=6,
            lr=1e-2,
            loss="lovasz_bce",
            val_max_images=1,
            export_onnx=False,
        )
    )
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    # a run cannot resume with another loss; the default loss keeps old fingerprints
    with pytest.raises(ValueError, match=r"cannot resume .*\['loss'\]"):
        train(
            _config(
                synth,
                tmp_path / "l",
                epochs=4,
                steps_per_epoch=6,
                lr=1e-2,
                export_onnx=False,
                val_max_images=1,
            )
        )
    assert "loss" not in _config(synth, tmp_path / "x").fingerprint()


def test_split_seed_keeps_the_split_while_the_seed_changes_the_crops(
    synth: Path, tmp_path: Path
) -> None:
    runs = {}
    for name, kw in (("a", {"seed": 0}), ("b", {"seed": 1}), ("c", {"seed": 1, "split_seed": 0})):
        result = train(
            _config(synth, tmp_path / name, epochs=1, steps_per_epoch=2, export_onnx=False, **kw)
        )
        runs[name] = (json.loads((tmp_path / name / "split.json").read_text()), result)
    assert runs["a"][0]["validation"] != runs["b"][0]["validation"]  # the seed moves the split
    assert runs["c"][0]["validation"] == runs["a"][0]["validation"]  # unless split_seed holds it
    assert runs["c"][0]["rule"] == runs["a"][0]["rule"]
    # the crops follow the seed: another training loss than the seed-0 run
    assert runs["c"][1].history[0]["train_loss"] != runs["a"][1].history[0]["train_loss"]
    assert "split_seed" not in _config(synth, tmp_path / "x").fingerprint()


def test_command_line_arguments_build_the_config() -> None:
    import argparse

    from segflow.train import add_train_arguments, config_from_args, format_result

    parser = add_train_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            "imgs",
            "labs",
            "--out",
            "o",
            "--label-kind",
            "instances",
            "--decoder-channels",
            "32,16,8",
            "--encoder-depth",
            "3",
            "--epochs",
            "4",
            "--cpu-bf16",
            "--class-names",
            "background,nucleus",
            "--init-from",
            "prev/best",
            "--time-limit",
            "60",
            "--loss",
            "lovasz_bce",
            "--split-seed",
            "0",
            "--no-onnx",
            "--inverted-weight",
            "2.5",
            "--onnx-weights",
            "float16",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.inverted_weight == 2.5 and cfg.onnx_weights == "float16"
    assert (cfg.images, cfg.labels, cfg.out) == ("imgs", "labs", "o")
    assert cfg.decoder_channels == [32, 16, 8] and cfg.encoder_depth == 3 and cfg.epochs == 4
    assert cfg.cpu_bf16 and cfg.class_names == ["background", "nucleus"]
    assert cfg.init_from == "prev/best" and cfg.time_limit_s == 60 and not cfg.export_onnx
    assert cfg.loss == "lovasz_bce" and cfg.split_seed == 0
    with pytest.raises(ValueError, match="decoder_channels needs 3 entries"):
        config_from_args(parser.parse_args(["i", "l", "--out", "o", "--encoder-depth", "3"]))
    text = format_result(
        {
            "epochs_run": 2,
            "stopped": "epochs",
            "n_train": 5,
            "n_val": 1,
            "best_epoch": 1,
            "best_scores": {"fg_iou": 0.5},
            "best_dir": "o/best",
            "onnx_path": None,
            "out": "o",
        }
    )
    assert "best epoch 1: fg_iou 0.5000" in text and "o/best" in text
