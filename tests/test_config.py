"""RunConfig: validation, the config hash (what changes it and what does not), --set parsing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from segflow.config import (
    RunConfig,
    apply_malloc_settings,
    apply_thread_limits,
    parse_scalar,
    parse_set,
)

BASE = {"input": "/data/in", "out": "/data/out"}


def cfg(**kw: object) -> RunConfig:
    return RunConfig(**{**BASE, **kw})  # type: ignore[arg-type]


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"segmenter": "nope"}, "available segmenters are"),
        ({"tile": 8}, "tile"),
        ({"overlap": 512, "tile": 512}, "overlap must be >= 0 and < tile (512), got 512"),
        ({"overlap": -1}, "overlap"),
        ({"gt_format": "masks"}, "gt_format"),
        ({"blend": "cubic"}, "blend"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"segmenter_params": {"sigma": [1, 2]}}, "segmenter_params"),
        ({"unknown_option": 1}, "unknown_option"),
        ({"extensions": ()}, "extensions"),
    ],
)
def test_invalid_values_are_refused_with_the_name(kw: dict, needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        cfg(**kw)
    assert needle in str(info.value)


@pytest.mark.parametrize("field", ["input", "out", "ground_truth"])
@pytest.mark.parametrize(
    "url",
    [
        "https://alice:s3cr3t@data.example/batch",
        "http://s3cr3t@127.0.0.1:8000/batch",  # a token as the user name
        "s3://AKIA:s3cr3t@bucket/batch",
    ],
)
def test_urls_with_credentials_are_refused_without_echoing_the_secret(field: str, url: str) -> None:
    with pytest.raises(ValidationError) as info:
        cfg(**{field: url})
    message = str(info.value)
    assert field in message and "FSSPEC_HTTP" in message and "***@" in message
    assert "s3cr3t" not in message and "alice" not in message


def test_urls_without_secrets_are_kept() -> None:
    c = cfg(input="s3://bucket/in", ground_truth="sftp://me@host/labels", out="memory://o")
    assert (c.input, c.ground_truth, c.out) == (
        "s3://bucket/in",
        "sftp://me@host/labels",
        "memory://o",
    )
    assert cfg(input="/data/a@b/in").input == "/data/a@b/in"  # a local path with an @


def test_unknown_segmenter_lists_valid_names() -> None:
    with pytest.raises(ValidationError) as info:
        cfg(segmenter="nope")
    assert "otsu" in str(info.value) and "'nope'" in str(info.value)


def test_extensions_are_normalised() -> None:
    c = cfg(extensions=("PNG", ".Tif", "png"))
    assert c.extensions == (".png", ".tif")


def test_params_keep_their_scalar_types() -> None:
    c = cfg(segmenter_params={"sigma": 1.5, "min_size": 3, "polarity": "dark", "fill_holes": True})
    assert c.segmenter_params == {
        "sigma": 1.5,
        "min_size": 3,
        "polarity": "dark",
        "fill_holes": True,
    }
    assert type(c.segmenter_params["min_size"]) is int
    assert type(c.segmenter_params["fill_holes"]) is bool
    # strings stay strings: nothing is guessed inside the model
    assert cfg(segmenter_params={"polarity": "3"}).segmenter_params["polarity"] == "3"


def test_config_is_frozen_and_json_round_trips() -> None:
    c = cfg(segmenter_params={"sigma": 1.0}, ground_truth="/gt", gt_format="instances")
    with pytest.raises(ValidationError):
        c.tile = 256  # type: ignore[misc]
    again = RunConfig.model_validate_json(c.model_dump_json())
    assert again == c
    assert again.config_hash() == c.config_hash()


def test_json_schema_renders_a_form() -> None:
    schema = RunConfig.model_json_schema()
    props = schema["properties"]
    assert schema["required"] == ["input", "out"]
    assert props["gt_format"]["enum"] == ["binary", "instances", "classes"]
    assert props["tile"]["minimum"] == 16


def test_create_segmenter_passes_params_as_kwargs() -> None:
    seg = cfg(segmenter_params={"sigma": 2.0, "min_size": 7}).create_segmenter()
    assert seg.name == "otsu"
    assert seg.sigma == 2.0 and seg.min_size == 7  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        cfg(segmenter_params={"polarity": "sideways"}).create_segmenter()


# -- the hash ----------------------------------------------------------------------------------


def test_hash_is_a_partition_safe_string() -> None:
    from segflow.store import check_partition_value

    h = cfg().config_hash()
    assert len(h) == 17 and h[0] == "c" and int(h[1:], 16) >= 0
    assert check_partition_value(h) == h


@pytest.mark.parametrize(
    "change",
    [
        {"input": "/elsewhere"},
        {"out": "/other-store"},
        {"force": True},
        {"chunk_size": 3},
        {"max_in_flight": 7},
        {"batch_size": 2},
        {"extensions": (".png",)},
        {"write_overlays": False},
        {"fail_on_error": True},
        {"max_pixels": 1000},
        {"gt_format": "instances"},  # no ground truth given: the format cannot matter
    ],
)
def test_hash_ignores_what_does_not_change_results(change: dict) -> None:
    assert cfg(**change).config_hash() == cfg().config_hash()


@pytest.mark.parametrize(
    "change",
    [
        {"segmenter": "multiotsu"},
        {"segmenter_params": {"sigma": 1.0}},
        {"segmenter_params": {"min_size": 10}},
        {"tile": 256},
        {"overlap": 32},
        {"blend": "linear"},
        {"ground_truth": "/gt"},
    ],
)
def test_hash_changes_with_what_changes_results(change: dict) -> None:
    assert cfg(**change).config_hash() != cfg().config_hash()


def test_hash_depends_on_gt_format_when_ground_truth_is_given() -> None:
    a = cfg(ground_truth="/gt", gt_format="binary").config_hash()
    b = cfg(ground_truth="/gt", gt_format="instances").config_hash()
    assert a != b
    # but not on where the ground truth lives
    assert cfg(ground_truth="/other", gt_format="binary").config_hash() == a


def test_gt_ignore_is_hashed_only_when_set_with_ground_truth() -> None:
    base = cfg(ground_truth="/gt", gt_format="classes")
    marked = cfg(ground_truth="/gt", gt_format="classes", gt_ignore=255)
    assert marked.config_hash() != base.config_hash()
    assert cfg(ground_truth="/gt", gt_format="classes", gt_ignore=254).config_hash() not in {
        base.config_hash(),
        marked.config_hash(),
    }
    # without it the hash is that of every earlier configuration; without truth it is moot
    assert "gt_ignore" not in base.hashed_fields()
    assert cfg(gt_ignore=255).config_hash() == cfg().config_hash()
    with pytest.raises(ValueError, match="gt_ignore"):
        cfg(ground_truth="/gt", gt_ignore=0)


def test_default_valued_params_hash_like_absent_ones() -> None:
    plain = cfg().config_hash()
    assert cfg(segmenter_params={"sigma": 0.0}).config_hash() == plain
    assert cfg(segmenter_params={"sigma": 0}).config_hash() == plain  # int for a float default
    assert cfg(segmenter_params={"polarity": "auto", "min_size": 0}).config_hash() == plain
    assert cfg(segmenter_params={"sigma": 0.5}).config_hash() != plain


def test_param_order_does_not_matter() -> None:
    a = cfg(segmenter_params={"sigma": 1.0, "min_size": 4})
    b = cfg(segmenter_params={"min_size": 4, "sigma": 1.0})
    assert a.config_hash() == b.config_hash()


def test_hash_is_stable_across_processes() -> None:
    """Independent oracle: a fresh interpreter (different hash seed) gives the same value."""
    code = (
        "from segflow.config import RunConfig;"
        "print(RunConfig(input='/data/in', out='/data/out', segmenter_params={'sigma': 1.0}).config_hash())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    assert out.stdout.strip() == cfg(segmenter_params={"sigma": 1.0}).config_hash()


def test_hashed_fields_are_json() -> None:
    fields = cfg(segmenter_params={"sigma": 1.0}).hashed_fields()
    assert json.loads(json.dumps(fields)) == fields
    assert fields["segmenter_params"]["sigma"] == 1.0
    assert set(fields) >= {
        "segmenter",
        "segmenter_params",
        "tile",
        "overlap",
        "blend",
        "preprocess",
    }
    assert "input" not in fields and "chunk_size" not in fields


def test_in_flight_default_scales_with_workers() -> None:
    assert cfg().in_flight(2) == 4
    assert cfg().in_flight(1) == 2
    assert cfg(max_in_flight=3).in_flight(8) == 3


# -- parsing --set -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("-2", -2),
        ("0.5", 0.5),
        ("1e-3", 1e-3),
        ("true", True),
        ("False", False),
        ("dark", "dark"),
        ("", ""),
    ],
)
def test_parse_scalar(text: str, value: object) -> None:
    got = parse_scalar(text)
    assert got == value and type(got) is type(value)


def test_parse_set_builds_typed_params() -> None:
    params = parse_set(["sigma=1.5", "min_size=20", "polarity=dark", "fill_holes=true"])
    assert params == {"sigma": 1.5, "min_size": 20, "polarity": "dark", "fill_holes": True}
    assert cfg(segmenter_params=params).segmenter_params == params


@pytest.mark.parametrize("bad", ["sigma", "=3", "1x=2", "a b=1"])
def test_parse_set_refuses_bad_items(bad: str) -> None:
    with pytest.raises(ValueError, match="key=value"):
        parse_set([bad])


def test_apply_thread_limits_sets_opencv() -> None:
    import cv2

    before = cv2.getNumThreads()
    try:
        done = apply_thread_limits(1)
        assert cv2.getNumThreads() == 1
        assert done["opencv"] == 1
    finally:
        cv2.setNumThreads(before)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        apply_thread_limits(0)


def test_config_hash_follows_the_model_file_content(tmp_path) -> None:
    """A retrained model behind the same path must not be skipped as already processed."""
    model = tmp_path / "model.onnx"
    model.write_bytes(b"weights v1")
    first = RunConfig(
        input="in", out="out", segmenter="onnx", segmenter_params={"model_path": str(model)}
    )
    same = RunConfig(
        input="in", out="out", segmenter="onnx", segmenter_params={"model_path": str(model)}
    )
    before = first.config_hash()
    assert before == same.config_hash()
    model.write_bytes(b"weights v2, retrained")
    changed = RunConfig(
        input="in", out="out", segmenter="onnx", segmenter_params={"model_path": str(model)}
    )
    assert changed.config_hash() != before
    # classic segmenters read no model file
    assert RunConfig(input="in", out="out", segmenter="otsu").model_digests() == []


def test_apply_malloc_settings_keeps_freed_memory_for_the_next_image() -> None:
    import platform
    import resource
    import sys

    with pytest.raises(ValueError, match="trim_threshold"):
        apply_malloc_settings(trim_threshold=-1)
    with pytest.raises(ValueError, match="mmap_threshold"):
        apply_malloc_settings(mmap_threshold=2**40)
    applied = apply_malloc_settings()
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        assert applied is False
        return
    assert applied is True
    # an image-sized map, freed and allocated again: the second time its pages are still there
    np.ones(4 << 20, dtype=np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    np.ones(4 << 20, dtype=np.float32)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 256  # 16 MB = 4096 pages
