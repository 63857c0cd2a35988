"""The ``cloudinary`` segmenter with the real SDK against a stand-in server on 127.0.0.1.

The stand-in (``tests/cloudinary_standin.py``) answers from fixed rules on the grey level of the
stored image; the expected masks here come from the shapes the tests draw, not from the server's
code. The last tests run the whole ``segment_batch`` flow under a temporary Prefect API, and an
opt-in test talks to the real service when ``CLOUDINARY_URL`` is set.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

pytest.importorskip("cloudinary", reason="the cloudinary extra is not installed")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the stand-in module

from cloudinary_standin import Fault, StandIn

from segflow import segmenters
from segflow.evaluate import evaluate
from segflow.inference import segment_image
from segflow.segmenters import cloudinary as C

ENV_KEYS = (
    "CLOUDINARY_URL",
    "CLOUDINARY_CLOUD_NAME",
    "CLOUDINARY_API_KEY",
    "CLOUDINARY_API_SECRET",
    "CLOUDINARY_UPLOAD_PREFIX",
)

# ---------------------------------------------------------------------------------------------
# fixtures and pictures
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.fixture
def server(clean_env: pytest.MonkeyPatch) -> Iterator[StandIn]:
    with StandIn() as s:
        clean_env.setenv("CLOUDINARY_URL", s.cloudinary_url)
        yield s


class Sleeps(list[float]):
    """Records the waits between retries instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make(**params: Any) -> Any:
    """A segmenter with fast retries (waits recorded in ``.sleeps``, not slept)."""
    opts: dict[str, Any] = {"retry_base_delay": 0.5, "retry_max_delay": 8.0, "timeout": 2.0}
    opts.update(params)
    seg: Any = segmenters.create("cloudinary", **opts)
    seg.sleeps = Sleeps()
    seg.bind(sleep=seg.sleeps)
    return seg


def scene(h: int = 72, w: int = 96, *, seed: int = 0, rgb: bool = False) -> dict[str, Any]:
    """Dark background, two bright discs, two dim rectangles and a 2x2 bright speck.

    Returns the (C, H, W) float32 image and the truth: per-object masks and labels.
    """
    rng = np.random.default_rng(seed)
    img = np.full((h, w), 20, np.uint8)
    objects: list[tuple[str, np.ndarray]] = []

    def add(label: str, draw: Any) -> None:
        m = np.zeros((h, w), np.uint8)
        draw(m)
        objects.append((label, m.astype(bool)))

    s = h / 72
    add("bright", lambda m: cv2.circle(m, (int(20 * s), int(18 * s)), int(9 * s), 1, -1))
    add("bright", lambda m: cv2.circle(m, (int(70 * s), int(52 * s)), int(11 * s), 1, -1))
    add(
        "dim",
        lambda m: cv2.rectangle(m, (int(45 * s), int(8 * s)), (int(62 * s), int(24 * s)), 1, -1),
    )
    add(
        "dim",
        lambda m: cv2.rectangle(m, (int(8 * s), int(44 * s)), (int(30 * s), int(60 * s)), 1, -1),
    )
    for label, m in objects:
        img[m] = 230 if label == "bright" else 130
    speck = np.zeros((h, w), bool)
    speck[h - 4 : h - 2, w - 4 : w - 2] = True
    img[speck] = 200
    img = np.clip(img.astype(np.int16) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
    chw = img.astype(np.float32)[None] / 255
    if rgb:
        chw = np.repeat(chw, 3, axis=0)
        chw[0] *= 0.95
    bright = np.any([m for lab, m in objects if lab == "bright"], axis=0)
    dim = np.any([m for lab, m in objects if lab == "dim"], axis=0)
    return {
        "image": chw,
        "objects": objects,
        "bright": bright,
        "dim": dim,
        "speck": speck,
        "u8": img,
    }


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def bbox_mask(m: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(m)
    out = np.zeros_like(m)
    out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    return out


# ---------------------------------------------------------------------------------------------
# registry, parameters, credentials, redaction
# ---------------------------------------------------------------------------------------------


def test_registered_lazily_and_output_follows_the_mode(server: StandIn) -> None:
    assert "cloudinary" in segmenters.available()
    cls = segmenters.get_class("cloudinary")
    assert cls is C.CloudinarySegmenter and cls.image_scoped and cls.name == "cloudinary"
    semantic = segmenters.create("cloudinary")
    assert isinstance(semantic, C.CloudinarySegmenter)
    assert semantic.output == "semantic" and semantic.mode == "background_removal"
    detector = segmenters.create("cloudinary", mode="detection")
    assert isinstance(detector, C.CloudinaryDetector) and detector.output == "instances"
    assert detector.name == "cloudinary" and detector.image_scoped


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"mode": "segment"},
            "mode must be one of 'background_removal', 'extract', 'detection'; got 'segment'",
        ),
        ({"refine": "grabcut"}, "refine must be one of 'box', 'otsu'; got 'grabcut'"),
        ({"min_confidence": 1.5}, r"min_confidence must be a number in \[0.0, 1.0\], got 1.5"),
        ({"max_side": -1}, "max_side must be an integer >= 0, got -1"),
        ({"max_retries": 2.5}, "max_retries must be an integer"),
        ({"folder": "/abs/"}, "folder must be '' or path segments"),
        ({"model": "coco;drop"}, "model must be a Cloudinary detection model name"),
        ({"mode": "extract"}, "mode 'extract' needs prompts"),
        ({"secure": "yes"}, "secure must be true or false, got 'yes'"),
    ],
)
def test_bad_parameters_name_the_value_and_the_allowed_ones(
    server: StandIn, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        segmenters.create("cloudinary", **params)


def test_missing_credentials_is_a_type_error_naming_the_ways_to_give_them(
    clean_env: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(
        TypeError, match=r"bad parameters for segmenter 'cloudinary'.*CLOUDINARY_URL"
    ):
        segmenters.create("cloudinary")
    # a secret block defers the credentials to the task layer; unbound, calls fail clearly
    seg = segmenters.create("cloudinary", secret_block="my-cloudinary")
    with pytest.raises(C.CloudinaryError, match=r"secret_block='my-cloudinary'.*bind"):
        segment_image(seg, scene()["image"])


def test_credentials_from_url_env_and_mapping() -> None:
    url = "cloudinary://1234:s%40cret@mycloud?upload_prefix=https://api-eu.cloudinary.com&secure=false"
    creds = C.parse_credentials(url)
    assert (creds.cloud_name, creds.api_key, creds.api_secret) == ("mycloud", "1234", "s@cret")
    assert dict(creds.options) == {
        "upload_prefix": "https://api-eu.cloudinary.com",
        "secure": False,
    }
    assert "s@cret" not in repr(creds) and "1234" not in repr(creds)
    assert (
        C.parse_credentials(
            json.dumps({"cloud_name": "c", "api_key": "k1", "api_secret": "s1"})
        ).api_secret
        == "s1"
    )
    # the separate variables win over the URL, as in the SDK
    env = {
        "CLOUDINARY_URL": url,
        "CLOUDINARY_CLOUD_NAME": "other",
        "CLOUDINARY_API_KEY": "9",
        "CLOUDINARY_API_SECRET": "x",
        "CLOUDINARY_CNAME": "img.example.com",
    }
    got = C.credentials_from_env(env)
    assert got is not None and (got.cloud_name, got.api_key, dict(got.options)) == (
        "other",
        "9",
        {"cname": "img.example.com"},
    )
    assert C.credentials_from_env({"CLOUDINARY_URL": url}) == creds
    assert C.credentials_from_env({}) is None
    for bad in ("https://k:s@cloud", "cloudinary://cloud", "{not json"):
        with pytest.raises(ValueError) as info:
            C.parse_credentials(bad)
        assert "s@cloud" not in str(info.value)


def test_redact_removes_secrets_and_their_encoded_forms() -> None:
    secret, key = "ab/c+d=e", "1234567"
    url = f"cloudinary://{key}:{secret}@cloud"
    text = f"failed {url} sig {secret} quoted ab%2Fc%2Bd%3De plus ab%2Fc%2Bd%3De key {key}"
    out = C.redact(text, [url, secret, key])
    assert secret not in out and key not in out and "ab%2Fc%2Bd%3De" not in out
    assert out.count(C.REDACTED) == 5 and out.startswith("failed [REDACTED] sig")


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert C._retry_after("3") == 3.0
    assert C._retry_after(" 1.5 ") == 1.5
    assert C._retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert C._retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert C._retry_after("soon") is None and C._retry_after(None) is None


def test_backoff_grows_exponentially_with_jitter_and_honours_retry_after() -> None:
    http = C._Retrying(timeout=1, max_retries=5, base_delay=1.0, max_delay=10.0, secrets=list)
    for attempt in range(1, 7):
        full = min(10.0, 2.0 ** (attempt - 1))
        waits = [http.delay(attempt, None) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in waits)
        assert len(set(waits)) > 1  # jitter
    assert http.delay(1, 7.0) == 7.0  # Retry-After above the backoff wins
    assert http.delay(1, 100.0) == 10.0  # ... up to retry_max_delay


# ---------------------------------------------------------------------------------------------
# the three modes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rgb", [False, True])
def test_background_removal_alpha_is_the_foreground(server: StandIn, rgb: bool) -> None:
    sc = scene(rgb=rgb)
    seg = make()
    out = segment_image(seg, sc["image"])
    truth = sc["bright"] | sc["dim"] | sc["speck"]
    np.testing.assert_array_equal(out.classes, truth.astype(np.int32))
    assert out.probabilities is not None and out.probabilities.shape == (2, *truth.shape)
    np.testing.assert_allclose(out.probabilities.sum(axis=0), 1.0, atol=1e-6)
    assert out.class_names == ["background", "foreground"] and out.instances is None
    # store rows: one foreground class row whose RLE pycocotools decodes to the truth
    from pycocotools import mask as cocomask

    ids = {
        "image_id": "a",
        "sha256": "0" * 64,
        "config_hash": "c1",
        "run_id": "r",
        "source_uri": "a.png",
        "segmenter": "cloudinary",
    }
    row, masks = evaluate(out, truth.astype(np.int32), gt_format="binary", ids=ids)
    assert row["fg_iou"] == 1.0 and len(masks) == 1 and masks[0]["class_name"] == "foreground"
    rle = {"size": [masks[0]["height"], masks[0]["width"]], "counts": masks[0]["rle_counts"]}
    np.testing.assert_array_equal(cocomask.decode(rle).astype(bool), truth)
    assert server.counts["created"] == 1 and server.counts["delivery"] == 1
    upload = next(f for f in server.fields_seen if f["action"] == "upload")
    assert upload["overwrite"] == "0" and upload["public_id"].startswith("segflow/")
    assert "detection" not in upload


def test_extract_gives_one_class_per_prompt(server: StandIn) -> None:
    sc = scene()
    seg = make(mode="extract", prompts="bright; dim ;big cat")
    out = segment_image(seg, sc["image"])
    expected = np.zeros(sc["bright"].shape, np.int32)
    expected[sc["bright"] | sc["speck"]] = 1
    expected[sc["dim"]] = 2
    np.testing.assert_array_equal(out.classes, expected)
    assert out.class_names == ["background", "bright", "dim", "big cat"] and seg.num_classes == 4
    assert out.probabilities is not None
    np.testing.assert_allclose(out.probabilities.sum(axis=0), 1.0, atol=1e-6)
    paths = [p for m, p, _ in server.requests if m == "GET"]
    assert len(paths) == 3
    assert any("e_extract:prompt_big%20cat;multiple_true;mode_mask" in p for p in paths)
    _, masks = evaluate(out, None, gt_format="binary", ids={"image_id": "x"})
    assert sorted(r["class_name"] for r in masks) == [
        "bright",
        "dim",
    ]  # the empty prompt has no row


def test_detection_boxes_become_instances_with_labels_and_scores(server: StandIn) -> None:
    sc = scene()
    out = segment_image(make(mode="detection"), sc["image"])
    assert out.instances is not None and out.probabilities is None
    assert out.class_names == ["background", "bright", "dim"]
    n = int(out.instances.max())
    assert n == 4  # the 2x2 speck is below min_confidence (the stand-in gives it 0.2)
    for label, truth in sc["objects"]:
        ids = np.unique(out.instances[truth])
        assert ids.size == 1 and ids[0] > 0
        inst = int(ids[0])
        np.testing.assert_array_equal(out.instances == inst, bbox_mask(truth))
        assert out.class_names[out.instance_classes[inst]] == label
        assert 0.5 <= out.instance_scores[inst] <= 1.0
        assert np.all(out.classes[out.instances == inst] == out.instance_classes[inst])
    # labels keep only the named ones, with stable ids; min_confidence admits the speck
    only_dim = segment_image(
        make(mode="detection", labels="dim,person", min_confidence=0.1), sc["image"]
    )
    assert only_dim.class_names == ["background", "dim", "person"]
    assert only_dim.instances is not None and int(only_dim.instances.max()) == 2
    assert set(only_dim.instance_classes.values()) == {1}
    everything = segment_image(make(mode="detection", min_confidence=0.1), sc["image"])
    assert everything.instances is not None and int(everything.instances.max()) == 5


def test_detection_overlaps_go_to_the_more_confident_object(server: StandIn) -> None:
    img = np.full((60, 60), 20, np.uint8)
    cv2.circle(img, (30, 30), 24, 130, 3)  # a dim ring ...
    cv2.circle(
        img, (30, 30), 8, 235, -1
    )  # ... around a bright disc: its box lies inside the ring's
    out = segment_image(make(mode="detection"), img.astype(np.float32)[None] / 255)
    assert out.instances is not None and int(out.instances.max()) == 2
    disc_box = bbox_mask(img > 180)
    ring_box = bbox_mask((img > 80) & (img <= 180))
    disc_id = int(np.unique(out.instances[disc_box])[0])
    assert np.all(out.instances[disc_box] == disc_id)
    assert out.class_names[out.instance_classes[disc_id]] == "bright"
    ring_id = 3 - disc_id
    np.testing.assert_array_equal(out.instances == ring_id, ring_box & ~disc_box)


def test_detection_otsu_refinement_recovers_the_shapes(server: StandIn) -> None:
    sc = scene(h=96, w=128, seed=2)
    out = segment_image(make(mode="detection", refine="otsu"), sc["image"])
    assert out.instances is not None and int(out.instances.max()) == 4
    for _, truth in sc["objects"]:
        inst = int(np.bincount(out.instances[truth]).argmax())
        assert inst > 0 and iou(out.instances == inst, truth) > 0.9


def test_large_images_are_downscaled_and_results_scaled_back(server: StandIn) -> None:
    sc = scene(h=180, w=240, seed=1)
    out = segment_image(make(max_side=96), sc["image"])
    (asset,) = server.assets.values()
    assert asset.pixels.shape == (72, 96)  # longer side 96, aspect kept
    assert iou(out.classes > 0, sc["bright"] | sc["dim"]) > 0.93
    det = segment_image(make(mode="detection", max_side=96), sc["image"])
    assert det.instances is not None and int(det.instances.max()) == 4
    assert server.counts["created"] == 1  # the same downscaled pixels: one asset for both modes
    for _, truth in sc["objects"]:
        inst = int(np.bincount(det.instances[truth]).argmax())
        ys, xs = np.nonzero(det.instances == inst)
        ty, tx = np.nonzero(truth)
        for got, want in (
            (ys.min(), ty.min()),
            (xs.min(), tx.min()),
            (ys.max(), ty.max()),
            (xs.max(), tx.max()),
        ):
            assert abs(int(got) - int(want)) <= 3  # 2.5 px per uploaded pixel


def test_service_side_downscaling_is_resized_back(server: StandIn) -> None:
    server.bg_limit = 40  # the stand-in shrinks like e_background_removal above its limit
    sc = scene()
    out = segment_image(make(), sc["image"])
    assert out.classes.shape == sc["bright"].shape
    assert iou(out.classes > 0, sc["bright"] | sc["dim"]) > 0.85


# ---------------------------------------------------------------------------------------------
# idempotence
# ---------------------------------------------------------------------------------------------


def test_rerun_makes_no_new_upload_and_same_pixels_share_a_public_id(server: StandIn) -> None:
    sc = scene()
    first = segment_image(make(), sc["image"])
    again = segment_image(make(), sc["image"] + np.float32(1e-4))  # rounds to the same pixels
    np.testing.assert_array_equal(first.classes, again.classes)
    assert (server.counts["upload"], server.counts["created"], server.counts["explicit"]) == (
        1,
        1,
        2,
    )
    expected = "segflow/" + C.encode_upload(sc["image"]).sha256
    assert list(server.assets) == [expected]
    segment_image(make(folder="proj/a"), scene(seed=5)["image"])
    assert server.counts["created"] == 2 and any(k.startswith("proj/a/") for k in server.assets)
    # detection on an existing asset analyses it through explicit, without uploading
    det = segment_image(make(mode="detection"), sc["image"])
    assert det.instances is not None and int(det.instances.max()) == 4
    assert server.counts["upload"] == 2 and server.fields_seen[-1]["action"] == "explicit"
    assert server.fields_seen[-1]["detection"] == "coco"


def test_upload_never_overwrites_an_existing_asset(server: StandIn) -> None:
    sc = scene()
    segment_image(make(), sc["image"])
    server.inject("explicit", Fault(status=404, message="Resource not found"))  # a stale lookup
    out = segment_image(make(), sc["image"])
    assert int(out.classes.sum()) > 0
    assert server.counts["upload"] == 2 and server.counts["created"] == 1
    assert server.counts["existing"] == 1  # answered with the stored asset, existing: true


def test_detection_after_a_lost_race_analyses_the_stored_asset(server: StandIn) -> None:
    sc = scene()
    segment_image(make(), sc["image"])  # the asset exists
    server.inject("explicit", Fault(status=404, message="Resource not found"))
    out = segment_image(make(mode="detection"), sc["image"])
    assert out.instances is not None and int(out.instances.max()) == 4
    assert server.counts["created"] == 1 and server.counts["existing"] == 1
    assert [f["action"] for f in server.fields_seen[-3:]] == ["explicit", "upload", "explicit"]


def test_sdk_upload_and_segflow_send_the_same_request(server: StandIn) -> None:
    """The stand-in speaks the SDK's protocol, and segflow's request equals ``uploader.upload``'s."""
    import cloudinary.uploader

    sc = scene()
    segment_image(make(), sc["image"])
    ours = next(f for f in server.fields_seen if f["action"] == "upload")
    res = cloudinary.uploader.upload(
        C.encode_upload(scene(seed=9)["image"]).png,
        public_id="segflow/sdk-upload",
        overwrite=False,
        unique_filename=False,
        type="upload",
        cloud_name=server.cloud_name,
        api_key=server.api_key,
        api_secret=server.api_secret,
        upload_prefix=server.url,
    )
    assert res["public_id"] == "segflow/sdk-upload" and "segflow/sdk-upload" in server.assets
    sdk = server.fields_seen[-1]
    assert set(sdk) == set(ours)
    assert {k: sdk[k] for k in ("overwrite", "unique_filename", "type", "api_key")} == {
        k: ours[k] for k in ("overwrite", "unique_filename", "type", "api_key")
    }


# ---------------------------------------------------------------------------------------------
# throttling and faults
# ---------------------------------------------------------------------------------------------


def test_429_with_retry_after_is_waited_out(server: StandIn) -> None:
    server.inject("upload", Fault(status=429, retry_after="5", message="Rate Limit Exceeded"))
    server.inject(
        "delivery", Fault(status=423, retry_after="3", message="derived image is being generated")
    )
    seg = make()
    out = segment_image(seg, scene()["image"])
    assert int(out.classes.sum()) > 0
    assert seg.sleeps == [5.0, 3.0]  # exactly what the server asked (above the 0.25-0.5 s backoff)
    assert server.counts["upload"] == 2 and server.counts["delivery"] == 2


def test_5xx_are_retried_with_growing_waits(server: StandIn) -> None:
    server.inject("explicit", Fault(status=500), Fault(status=502), Fault(status=503))
    seg = make()
    segment_image(seg, scene()["image"])
    assert server.counts["explicit"] == 4 and server.counts["created"] == 1
    assert len(seg.sleeps) == 3
    for k, wait in enumerate(seg.sleeps):
        assert 0.25 * 2**k <= wait <= 0.5 * 2**k


def test_a_hang_past_the_timeout_is_retried(server: StandIn) -> None:
    server.inject("upload", Fault(kind="hang", seconds=5.0))  # cut short when the server stops
    seg = make(timeout=1.0)
    out = segment_image(seg, scene()["image"])
    assert int(out.classes.sum()) > 0
    assert server.counts["upload"] == 2 and len(seg.sleeps) == 1


def test_malformed_answers_are_retried(server: StandIn) -> None:
    server.inject("upload", Fault(kind="malformed"))
    server.inject("delivery", Fault(kind="malformed"))
    seg = make()
    out = segment_image(seg, scene()["image"])
    assert int(out.classes.sum()) > 0 and len(seg.sleeps) == 2


def test_persistent_failure_raises_after_the_last_retry(
    server: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    server.inject("delivery", *[Fault(status=500, message="boom") for _ in range(3)])
    seg = make(max_retries=2)
    with (
        caplog.at_level(logging.WARNING, logger="segflow"),
        pytest.raises(C.CloudinaryError) as info,
    ):
        segment_image(seg, scene()["image"])
    err = info.value
    assert err.status == 500 and err.attempts == 3
    assert "failed after 3 attempt(s): HTTP 500: boom" in str(
        err
    ) and "e_background_removal" in str(err)
    assert err.__cause__ is None and err.__suppress_context__
    assert len(seg.sleeps) == 2 and server.counts["delivery"] == 3
    assert sum("retry" in r.getMessage() for r in caplog.records) == 2


def test_401_is_not_retried_and_never_shows_the_key(
    server: StandIn, clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wrong_key = "999888777666555"
    clean_env.setenv("CLOUDINARY_URL", server.cloudinary_url.replace(server.api_key, wrong_key))
    seg = make()
    with caplog.at_level(logging.DEBUG), pytest.raises(C.CloudinaryAuthError) as info:
        segment_image(seg, scene()["image"])
    assert info.value.status == 401 and info.value.attempts == 1 and seg.sleeps == []
    message = str(info.value)
    assert "Unknown API key [REDACTED]" in message and wrong_key not in message
    assert server.api_secret not in message and wrong_key not in caplog.text
    # a wrong secret: the signature check fails, also at once
    clean_env.setenv(
        "CLOUDINARY_URL", server.cloudinary_url.replace(server.api_secret, "wrong-secret-123")
    )
    with pytest.raises(C.CloudinaryAuthError, match="Invalid Signature"):
        segment_image(make(), scene()["image"])


def test_other_client_errors_fail_at_once(server: StandIn) -> None:
    server.inject("delivery", Fault(status=400, message="Invalid transformation"))
    seg = make()
    with pytest.raises(C.CloudinaryError, match="HTTP 400: Invalid transformation") as info:
        segment_image(seg, scene()["image"])
    assert info.value.attempts == 1 and seg.sleeps == []


def test_connection_errors_are_retried_then_reported(clean_env: pytest.MonkeyPatch) -> None:
    with StandIn() as s:
        url = s.cloudinary_url
    clean_env.setenv("CLOUDINARY_URL", url)  # the server is gone: connection refused
    seg = make(max_retries=1)
    with pytest.raises(C.CloudinaryError, match="failed after 2 attempt") as info:
        segment_image(seg, scene()["image"])
    assert info.value.status is None and len(seg.sleeps) == 1


def test_secret_never_in_logs_or_messages(
    server: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    """Every fault on the way, the server echoing the key in its errors: nothing leaks."""
    server.inject(
        "explicit", Fault(status=500, echo_key=True, message=f"echo {server.cloudinary_url}")
    )
    server.inject(
        "upload", Fault(status=429, echo_key=True, retry_after="1"), Fault(kind="malformed")
    )
    server.inject(
        "delivery", Fault(status=503, echo_key=True, message=f"secret={server.api_secret}")
    )
    seg = make()
    with caplog.at_level(logging.DEBUG):
        segment_image(seg, scene()["image"])
        server.inject(
            "delivery",
            *[Fault(status=500, echo_key=True, message=f"{server.api_secret}") for _ in range(9)],
        )
        with pytest.raises(C.CloudinaryError) as info:
            segment_image(make(max_retries=2), scene()["image"])
    texts = [caplog.text, str(info.value), repr(info.value), repr(seg)]
    assert len(seg.sleeps) == 4 and C.REDACTED in caplog.text
    for secret in (server.api_secret, server.api_key, server.cloudinary_url):
        assert all(secret not in t for t in texts)


def test_every_request_runs_inside_the_call_guard(server: StandIn) -> None:
    inside = threading.local()
    entered: list[int] = []

    class Guard:
        def __enter__(self) -> None:
            inside.flag = True
            entered.append(1)

        def __exit__(self, *exc: object) -> None:
            inside.flag = False

    server.inject("delivery", Fault(status=500))
    seg = make().bind(call_guard=Guard)
    segment_image(seg, scene()["image"])
    assert len(entered) == len(server.requests) == 4  # explicit 404, upload, delivery 500, delivery


# ---------------------------------------------------------------------------------------------
# the pipeline: errors rows, and the whole flow under Prefect
# ---------------------------------------------------------------------------------------------


def write_dataset(root: Path, n: int = 3) -> dict[str, Any]:
    """``n`` good scenes with binary labels and one odd-sized image that the server fails."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    truths = {}
    for i in range(n):
        sc = scene(seed=10 + i)
        cv2.imwrite(str(root / "images" / f"img_{i}.png"), sc["u8"])
        truth = sc["bright"] | sc["dim"] | sc["speck"]
        cv2.imwrite(str(root / "labels" / f"img_{i}.png"), truth.astype(np.uint8) * 255)
        truths[f"img_{i}"] = truth
    odd = scene(h=41, w=53, seed=99)["u8"]
    cv2.imwrite(str(root / "images" / "odd.png"), odd)
    return {"truths": truths, "odd": str(root / "images" / "odd.png")}


def fail_odd_uploads(server: StandIn) -> None:
    def rule(endpoint: str, info: dict[str, Any]) -> Fault | None:
        if endpoint == "upload" and info.get("width") == 53:
            return Fault(status=500, echo_key=True, message=f"storage failure {server.api_secret}")
        return None

    server.fail_rule = rule


def test_process_chunk_records_a_failing_image_and_writes_the_others(
    server: StandIn, tmp_path: Path
) -> None:
    from segflow.config import RunConfig
    from segflow.evaluate import process_chunk
    from segflow.ingest import hash_items, list_images, pair_ground_truth

    data = write_dataset(tmp_path / "data")
    fail_odd_uploads(server)
    config = RunConfig(
        input=str(tmp_path / "data" / "images"),
        out=str(tmp_path / "out"),
        segmenter="cloudinary",
        segmenter_params={"retry_base_delay": 0.001, "max_retries": 1},
        ground_truth=str(tmp_path / "data" / "labels"),
    )
    items = hash_items(pair_ground_truth(list_images(config.input), config.ground_truth or ""))
    result = process_chunk(items, config=config, run_id="r1", config_hash=config.config_hash())
    assert sorted(r["image_id"] for r in result.metrics) == sorted(data["truths"])
    assert all(r["fg_iou"] == 1.0 for r in result.metrics)
    (err,) = result.errors
    assert err["source_uri"] == data["odd"] and err["stage"] == "segment"
    assert err["error_type"] == "CloudinaryError" and "HTTP 500: storage failure" in err["message"]
    assert server.api_secret not in err["message"] and server.api_key not in err["message"]


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    """A temporary Prefect API for the flow tests of this module."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _everything_text(out: Path, flow_run_ids: list[Any]) -> str:
    """Logs, artifacts and flow-run parameters from the Prefect API, and every Parquet value."""
    import pyarrow.parquet as pq
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    parts: list[str] = []
    with get_client(sync_client=True) as client:
        parts += [log.message for log in client.read_logs()]
        for art in client.read_artifacts():
            parts.append(json.dumps(art.model_dump(mode="json"), default=str))
        for run_id in flow_run_ids:
            parts.append(json.dumps(client.read_flow_run(run_id).parameters, default=str))
    files = sorted(out.rglob("*.parquet"))
    assert files
    for path in files:
        parts.append(json.dumps(pq.read_table(path).to_pylist(), default=str))
        parts.append(path.read_bytes().decode("latin-1"))
    return "\n".join(parts)


def test_flow_with_a_secret_block_leaks_nothing_and_records_the_failure(
    prefect_api: None,
    server: StandIn,
    clean_env: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client

    from flows.segment_batch import segment_batch
    from segflow.config import RunConfig
    from segflow.store import Store

    clean_env.delenv("CLOUDINARY_URL")  # only the Secret block knows the credentials
    Secret(value=server.cloudinary_url).save("segflow-cloudinary-test", overwrite=True)  # type: ignore[arg-type]
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name("cloudinary", 2)
    data = write_dataset(tmp_path / "data")
    fail_odd_uploads(server)
    config = RunConfig(
        input=str(tmp_path / "data" / "images"),
        out=str(tmp_path / "out"),
        segmenter="cloudinary",
        segmenter_params={
            "secret_block": "segflow-cloudinary-test",
            "retry_base_delay": 0.001,
            "max_retries": 1,
        },
        ground_truth=str(tmp_path / "data" / "labels"),
        chunk_size=2,
    )
    prefect_logger = logging.getLogger("prefect")
    prefect_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.DEBUG):
            state = segment_batch(config, return_state=True)
            summary = state.result(raise_on_failure=False)
            assert isinstance(summary, dict) and state.is_completed()
            assert (summary["done"], summary["failed"]) == (3, 1)
            uploads = server.counts["upload"]
            assert server.counts["created"] == 3 and uploads == 3 + 2  # odd.png: 2 attempts
            # a rerun skips everything in the store; a forced one reuses the uploaded assets
            again = segment_batch(config, return_state=True).result(raise_on_failure=False)
            assert (again["done"], again["skipped"]) == (0, 4)
            forced_config = config.model_copy(update={"force": True})
            forced_state = segment_batch(forced_config, return_state=True)
            forced = forced_state.result(raise_on_failure=False)
            assert (forced["done"], forced["failed"]) == (3, 1)
            assert server.counts["created"] == 3 and server.counts["upload"] == uploads + 2
    finally:
        prefect_logger.removeHandler(caplog.handler)
    store = Store(tmp_path / "out")
    metrics = store.read("metrics")
    assert len(metrics) == 6 and (metrics["fg_iou"] == 1.0).all()
    errors = store.read("errors")
    assert len(errors) == 2 and set(errors["source_uri"]) == {data["odd"]}
    assert set(errors["error_type"]) == {"CloudinaryError"} and set(errors["stage"]) == {"segment"}
    runs = store.read("runs")
    assert all("segflow-cloudinary-test" in p for p in runs["parameters"])
    text = _everything_text(
        tmp_path / "out", [state.state_details.flow_run_id, forced_state.state_details.flow_run_id]
    )
    assert "storage failure" in text and C.REDACTED in text  # the failure is there, redacted
    for secret in (server.api_secret, server.api_key, server.cloudinary_url):
        assert secret not in text
        assert secret not in caplog.text
    assert "storage failure" in caplog.text


def test_call_guard_without_the_limit_is_a_no_op_with_one_warning(prefect_api: None) -> None:
    import contextlib

    from prefect.client.orchestration import get_client

    from tasks.cloudinary import call_guard

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name("cloudinary-cap", 1)
    assert call_guard("no-such-limit") is contextlib.nullcontext
    guard = call_guard("cloudinary-cap")
    assert guard is not contextlib.nullcontext
    with guard():
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name("cloudinary-cap").active_slots == 1
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("cloudinary-cap").active_slots == 0


# ---------------------------------------------------------------------------------------------
# the real service (opt-in)
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not os.environ.get("CLOUDINARY_URL"),
    reason="opt-in: set CLOUDINARY_URL=cloudinary://<api_key>:<api_secret>@<cloud_name> to run "
    "against the real Cloudinary service (uploads a small test image, uses AI quota)",
)
def test_real_service_background_removal_and_idempotent_upload() -> None:
    from skimage import data as skdata

    img = cv2.resize(skdata.astronaut(), (192, 192), interpolation=cv2.INTER_AREA)
    chw = np.moveaxis(img, -1, 0).astype(np.float32) / 255
    seg = segmenters.create("cloudinary", folder="segflow-test", max_side=192)
    out = segment_image(seg, chw)
    fg = float((out.classes > 0).mean())
    assert 0.05 < fg < 0.95  # the astronaut is foreground, the background is not
    again = segment_image(segmenters.create("cloudinary", folder="segflow-test", max_side=192), chw)
    assert iou(again.classes > 0, out.classes > 0) > 0.99
