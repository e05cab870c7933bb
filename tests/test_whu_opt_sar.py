"""WHUOptSar on tiny fake files that mimic the release's layout (with and without CRS)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from conftest import write_raster
from rasterio.transform import from_origin
from torchgeo.datasets import DatasetNotFoundError
from torchgeo.samplers import GriddedPatchSampler, RandomPatchSampler

from gopt_geo.data.classes import IGNORE_INDEX
from gopt_geo.data.whu_opt_sar import WHUOptSar, official_split
from gopt_geo.errors import InputError

matplotlib.use("Agg")
H, W = 24, 36  # the real scenes are 3704 x 5556


def fake_whu(root: Path, crs: bool) -> Path:
    rng = np.random.default_rng(0)
    split = official_split()
    for i, name in enumerate(split["train"] + split["test"]):
        kw = {"crs": None}
        if crs:  # map sheets side by side, 5 m pixels
            kw = {
                "crs": "EPSG:32649",
                "transform": from_origin(400_000 + i * 1000, 3_500_000, 5, 5),
            }
        write_raster(
            root / "optical" / f"{name}.tif", rng.integers(1, 255, (4, H, W)).astype(np.uint8), **kw
        )
        write_raster(
            root / "sar" / f"{name}.tif", rng.integers(1, 255, (1, H, W)).astype(np.uint8), **kw
        )
        write_raster(
            root / "lbl" / f"{name}.tif",
            (rng.integers(0, 8, (1, H, W)) * 10).astype(np.uint8),
            **kw,
        )
    return root


def test_official_split() -> None:
    split = official_split()
    assert len(split["train"]) == 80 and len(split["test"]) == 20
    assert not set(split["train"]) & set(split["test"])
    assert split["train"][0] == "NH49E004021"


@pytest.mark.parametrize("crs", [False, True])
def test_samples_with_and_without_crs(tmp_path: Path, crs: bool) -> None:
    root = fake_whu(tmp_path, crs)
    train = WHUOptSar(root, "train", val_scenes=8)
    val = WHUOptSar(root, "val", val_scenes=8)
    test = WHUOptSar(root, "test")
    assert (len(train.scene_names), len(val.scene_names), len(test.scene_names)) == (72, 8, 20)
    query = next(iter(RandomPatchSampler(train, size=16, length=1, generator=0)))
    sample = train[query]
    assert sample["image"].shape == (5, 16, 16)  # R, G, B, NIR + one SAR band
    mask = sample["mask"]
    assert set(mask.unique().tolist()) <= set(range(7)) | {IGNORE_INDEX}
    # background (code 0) is ignored
    assert (mask == IGNORE_INDEX).any()
    # every test scene is covered by the gridded sampler, none of them overlaps training
    n_patches = len(list(GriddedPatchSampler(test, size=12, stride=12)))
    assert n_patches >= 20 * 2 * 3  # at least a 2 x 3 grid per 24 x 36 scene
    fig = train.plot(sample, suptitle="WHU")
    assert len(fig.axes) == 3


def test_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "optical").mkdir()
    with pytest.raises(
        DatasetNotFoundError,
        match=r"WHU-OPT-SAR not found: .* lacks sar/, lbl/;"
        r" expected .*AmberHen/WHU-OPT-SAR-dataset",
    ):
        WHUOptSar(tmp_path)


def test_missing_scenes(tmp_path: Path) -> None:
    root = fake_whu(tmp_path, crs=False)
    (root / "sar" / "NH49E004021.tif").unlink()
    (root / "lbl" / "NH50E014003.tif").unlink()
    with pytest.raises(
        InputError,
        match=r"WHU-OPT-SAR incomplete: 2 file\(s\) missing .*"
        r"sar/NH49E004021.tif, lbl/NH50E014003.tif",
    ):
        WHUOptSar(root, "test")
