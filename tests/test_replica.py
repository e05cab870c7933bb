"""The WHU-OPT-SAR-shaped replica: layout as released, read by the WHUOptSar dataset."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from torchgeo.samplers import GriddedPatchSampler, RandomPatchSampler

from gopt_geo.data.classes import IGNORE_INDEX, WHU_OPT_SAR_CLASSES
from gopt_geo.data.replica import (
    WHU_OS_SHAPE,
    Replica,
    replica_split,
    write_whu_os_like,
)
from gopt_geo.data.whu_opt_sar import WHUOptSar, official_split
from gopt_geo.errors import InputError

H, W = 192, 256
WATER, FARMLAND, ROAD = 40, 10, 60


def _read(path: Path) -> tuple[np.ndarray, dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read(), {
                "crs": src.crs,
                "transform": src.transform,
                "nodata": src.nodata,
                "dtypes": src.dtypes,
                "compression": src.compression,
                "descriptions": src.descriptions,
                "tiled": src.profile.get("tiled", False),
            }


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Replica:
    return write_whu_os_like(tmp_path_factory.mktemp("whu"), scenes=3, size=(H, W), seed=1)


def test_layout_as_released(replica: Replica) -> None:
    root = replica.root
    assert WHU_OS_SHAPE == (3704, 5556)
    official = official_split()
    assert replica.split == {
        "train": official["train"][:1],
        "val": official["train"][1:2],
        "test": official["test"][:1],
    }
    assert sorted(p.name for p in root.iterdir()) == ["lbl", "optical", "sar"]  # no leftovers
    for folder, bands in (("optical", 4), ("sar", 1), ("lbl", 1)):
        assert sorted(p.stem for p in (root / folder).glob("*.tif")) == sorted(replica.scenes)
        for name in replica.scenes:
            data, meta = _read(root / folder / f"{name}.tif")
            assert data.shape == (bands, H, W) and data.dtype == np.uint8
            assert meta["crs"] is None and meta["transform"].is_identity
            assert meta["nodata"] is None and meta["compression"] is None
            assert not meta["tiled"] and set(meta["descriptions"]) == {None}
    labels = np.stack([_read(root / "lbl" / f"{n}.tif")[0][0] for n in replica.scenes])
    codes = set(np.unique(labels).tolist())
    assert codes <= WHU_OPT_SAR_CLASSES.valid_codes() and {WATER, FARMLAND, ROAD} <= codes


def test_signatures_survive_the_8_bit_scaling(replica: Replica) -> None:
    """Water is dark in NIR and SAR; optical is in WHUOptSar's band order (R, G, B, NIR)."""
    name = replica.split["train"][0]
    optical = _read(replica.root / "optical" / f"{name}.tif")[0].astype(np.float64)
    sar = _read(replica.root / "sar" / f"{name}.tif")[0][0].astype(np.float64)
    labels = _read(replica.root / "lbl" / f"{name}.tif")[0][0]
    water, farm = labels == WATER, labels == FARMLAND
    nir = WHUOptSar.optical_bands.index("NIR")
    red = WHUOptSar.optical_bands.index("R")
    clear = optical.max(axis=0) < 200  # outside the clouds
    assert optical[nir, farm & clear].mean() > 5 * optical[nir, water & clear].mean()
    assert optical[nir, farm & clear].mean() > 4 * optical[red, farm & clear].mean()  # red edge
    assert sar[farm].mean() - sar[water].mean() > 30  # ~10 dB at 5.1 DN per dB


def test_read_by_the_dataset_class(replica: Replica) -> None:
    train = WHUOptSar(replica.root, "train", scenes=replica.split)
    test = WHUOptSar(replica.root, "test", scenes=replica.split)
    assert train.scene_names == replica.split["train"]
    query = next(iter(RandomPatchSampler(train, size=64, length=1, generator=0)))
    sample = train[query]
    assert sample["image"].shape == (5, 64, 64)  # R, G, B, NIR + one SAR band
    image = sample["image"]
    assert float(image.min()) >= 0 and float(image.max()) <= 255
    mask = sample["mask"]
    assert set(mask.unique().tolist()) <= set(range(7)) | {IGNORE_INDEX}
    assert len(mask.unique()) >= 2
    assert len(list(GriddedPatchSampler(test, size=64, stride=64))) == (H // 64) * (W // 64)


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = write_whu_os_like(tmp_path / "a", scenes=2, size=48, seed=3)
    b = write_whu_os_like(tmp_path / "b", scenes=2, size=48, seed=3)
    c = write_whu_os_like(tmp_path / "c", scenes=2, size=48, seed=4)
    assert a.scenes == b.scenes == c.scenes
    for folder in ("optical", "sar", "lbl"):
        for name in a.scenes:
            one = (a.root / folder / f"{name}.tif").read_bytes()
            assert one == (b.root / folder / f"{name}.tif").read_bytes()
            assert one != (c.root / folder / f"{name}.tif").read_bytes()


@pytest.mark.parametrize(
    ("n", "sizes"), [(1, (1, 0, 0)), (2, (1, 0, 1)), (20, (14, 2, 4)), (100, (72, 8, 20))]
)
def test_replica_split(n: int, sizes: tuple[int, int, int]) -> None:
    split = replica_split(n)
    assert tuple(len(split[k]) for k in ("train", "val", "test")) == sizes
    official = official_split()
    train_and_val = split["train"] + split["val"]
    assert train_and_val == official["train"][: len(train_and_val)]
    assert split["test"] == official["test"][: sizes[2]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scenes": 0}, "scenes must be 1 to 100, got 0"),
        ({"scenes": 101}, "scenes must be 1 to 100, got 101"),
        ({"size": 8}, "size must be >= 16 pixels per axis, got 8"),
        ({"cloud_cover": 2.0}, "cloud_cover must be in [0, 1], got 2.0"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"scenes": 1, "size": 32, **kwargs}
    with pytest.raises(InputError) as err:
        write_whu_os_like(tmp_path, **args)
    assert str(err.value) == f"WHU-OS replica: {message}"


def test_synth_like_whu_os_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gopt_geo.cli import app

    runner = CliRunner()
    done = runner.invoke(
        app, ["synth", str(tmp_path / "r"), "--like", "whu-os", "--scenes", "2", "--size", "64x96"]
    )
    assert done.exit_code == 0, done.output
    for folder in ("optical", "sar", "lbl"):
        assert len(list((tmp_path / "r" / folder).glob("*.tif"))) == 2
    with rasterio.open(next((tmp_path / "r" / "optical").glob("*.tif"))) as src:
        assert (src.height, src.width, src.count, src.crs) == (64, 96, 4, None)
    bad = runner.invoke(app, ["synth", str(tmp_path / "x"), "--like", "other"])
    assert bad.exit_code == 2 and "--like: unknown layout 'other'" in bad.output
