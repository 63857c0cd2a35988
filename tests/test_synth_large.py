"""segflow.synth_large: windows agree with the whole image; TIFF writing is exact and bounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from segflow.synth_large import NucleiField


def test_windows_agree_with_the_whole_image() -> None:
    field = NucleiField(300, 420, spacing=40, seed=4)
    image, labels = field.image(), field.labels()
    for y, x, h, w in [(0, 0, 300, 420), (37, 91, 120, 77), (256, 250, 44, 170), (5, 400, 10, 20)]:
        win_img, win_lab = field.render(y=y, x=x, h=h, w=w)
        assert np.array_equal(win_img, image[y : y + h, x : x + w])
        assert np.array_equal(win_lab, labels[y : y + h, x : x + w])


def test_ground_truth_matches_the_objects() -> None:
    field = NucleiField(400, 500, spacing=40, seed=1)
    labels = field.labels()
    ids = np.unique(labels[labels > 0])
    objs = field.objects()
    assert ids.size == field.n_objects == objs["id"].size
    assert np.array_equal(ids, np.sort(objs["id"]))
    # objects never touch: each id is one 8-connected component, separate from every other
    _, count = ndi.label(labels > 0, structure=np.ones((3, 3)))
    assert count == field.n_objects
    # objects are brighter than the background around them
    image = field.image().astype(float)
    assert image[labels > 0].mean() > image[labels == 0].mean() + 60


def test_write_tiff_tiles_and_levels(tmp_path: Path) -> None:
    field = NucleiField(333, 290, spacing=32, radius=(3.0, 8.0), seed=2)
    path = field.write_tiff(
        tmp_path / "f.tif", tile=64, levels=(4,), labels_path=tmp_path / "l.tif"
    )
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (64, 64)
        assert np.array_equal(page.asarray(), field.image())
        (level,) = tif.series[0].levels[1:]
        assert level.shape == (84, 73)
        small = level.asarray().astype(float)
        expected = field.image()[:332, :288].reshape(83, 4, 72, 4).mean(axis=(1, 3))
        assert np.abs(small[:83, :72] - expected).max() <= 0.5 + 1e-9  # block means, rounded
    assert np.array_equal(tifffile.imread(tmp_path / "l.tif"), field.labels())


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="could touch"):
        NucleiField(100, 100, spacing=20, radius=(5.0, 9.0))
    with pytest.raises(ValueError, match="height"):
        NucleiField(0, 100)
    with pytest.raises(ValueError, match="inside"):
        NucleiField(100, 100, spacing=40).render(y=90, x=0, h=20, w=5)
