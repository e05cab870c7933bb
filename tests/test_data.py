"""The torchgeo data layer: scene datasets, routing, splits, statistics, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
import torch
from conftest import UTM, write_raster, write_scene, write_scenes
from rasterio.transform import from_origin

from gopt_geo.data.bands import BandRouting
from gopt_geo.data.classes import IGNORE_INDEX, WHU_OPT_SAR_CLASSES
from gopt_geo.data.datamodule import OpticalSarDataModule
from gopt_geo.data.rasters import check_label_codes
from gopt_geo.data.scenes import OpticalSarScenes
from gopt_geo.errors import InputError


def _dm(root: Path, **kw) -> OpticalSarDataModule:
    kw.setdefault("classes", WHU_OPT_SAR_CLASSES)
    return OpticalSarDataModule(root, batch_size=2, patch_size=32, length=6, stats_patches=4, **kw)


def scenes_of(root: Path, **kw: Any) -> OpticalSarScenes:
    """The scenes of a synthetic folder (WHU-OPT-SAR's codes, as ``synth`` writes them)."""
    return OpticalSarScenes(root, classes=WHU_OPT_SAR_CLASSES, **kw)


def test_training_batch_routes_bands_and_maps_codes(scene_root: Path) -> None:
    dm = _dm(scene_root)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 6, 32, 32)  # B, G, R, NIR, VV, VH
    assert batch["mask"].dtype == torch.long
    # codes 10..70 became indices 0..6
    assert set(batch["mask"].unique().tolist()) <= set(range(7)) | {IGNORE_INDEX}
    routing = dm.routing
    assert routing is not None and set(routing.mean) == set(routing.all_bands)
    rgb, aux = routing.prepare(batch["image"])
    assert rgb.shape == (2, 3, 32, 32) and aux.shape == (2, 3, 32, 32)
    # SAR in the fixture encodes the label (VV = code/10 - 20 dB): after warping back
    # onto the optical grid it must still agree with the mask in the interior.
    vv = batch["image"][:, 4]
    idx = batch["mask"]
    inner = (idx != IGNORE_INDEX)[:, 4:-4, 4:-4]
    expected = (idx.float() + 1) * 10 / 10 - 20  # index k is code 10(k+1)
    err = (vv - expected)[:, 4:-4, 4:-4][inner].abs()
    assert err.median() < 0.3  # SAR is coarser and bilinear: close, not exact


def test_statistics_come_from_training_patches(scene_root: Path) -> None:
    dm = _dm(scene_root)
    dm.setup("fit")
    r = dm.routing
    assert r is not None
    # optical DNs in the fixture are uniform in [200, 4000): mean near 2100
    for band in ("B", "G", "R", "NIR"):
        assert 1800 < r.mean[band] < 2400 and 900 < r.std[band] < 1300
    # normalised training inputs are close to zero-mean, unit-variance
    batch = next(iter(dm.train_dataloader()))
    rgb, _ = r.prepare(batch["image"])
    assert abs(float(rgb.mean())) < 0.3 and 0.7 < float(rgb.std()) < 1.3


def patch_boxes(dm: OpticalSarDataModule) -> dict[str, list]:
    """Footprints of every patch each split's sampler yields (none may be empty)."""
    boxes = {}
    for split, sampler in (
        ("train", dm.train_sampler),
        ("val", dm.val_sampler),
        ("test", dm.test_sampler),
    ):
        boxes[split] = [shapely.box(x.start, y.start, x.stop, y.stop) for x, y in sampler]
        assert boxes[split], split
    return boxes


def test_splits_are_spatially_disjoint(scene_root: Path) -> None:
    dm = _dm(scene_root)
    dm.setup("fit")
    dm.setup("test")
    boxes = patch_boxes(dm)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        ua, ub = shapely.union_all(boxes[a]), shapely.union_all(boxes[b])
        assert ua.intersection(ub).area == 0, (a, b)
    assert dm.train_dataset.scene_names == ["scene_0"]
    assert dm.val_dataset.scene_names == ["scene_1"]
    assert dm.test_dataset.scene_names == ["scene_2"]


def test_optical_nodata_is_ignored(tmp_path: Path) -> None:
    for i in range(3):
        write_scene(tmp_path, f"s{i}", origin=(500_000 + 5_000 * i, 3_400_000), seed=i)
    # blank the top 16 rows of scene s0's optical data (nodata = 0)
    import rasterio

    path = tmp_path / "optical" / "s0.tif"
    with rasterio.open(path, "r+") as dst:
        data = dst.read()
        data[:, :16] = 0
        dst.write(data)
    ds = scenes_of(tmp_path, split="train")
    b = ds.bounds
    sample = ds[b[0].start : b[0].start + 640, b[1].stop - 640 : b[1].stop]
    assert torch.isnan(sample["image"][:, :16]).all()
    assert (sample["mask"][:16] == IGNORE_INDEX).all()
    assert (sample["mask"][20:] != IGNORE_INDEX).all()


def test_sar_outside_footprint_is_ignored(tmp_path: Path) -> None:
    for i in range(3):
        write_scene(tmp_path, f"s{i}", origin=(500_000 + 5_000 * i, 3_400_000), seed=i)
    # replace s0's SAR by one that covers only the western half of the optical scene
    from conftest import to_wgs84

    t = from_origin(500_000, 3_400_000, 10, 10)
    sar = np.full((2, 64, 32), -10.0, dtype=np.float32)
    to_wgs84(tmp_path / "sar" / "s0.tif", sar, t)
    ds = scenes_of(tmp_path, split="train")
    b = ds.bounds
    sample = ds[b[0].start : b[0].start + 640, b[1].stop - 640 : b[1].stop]
    assert (sample["mask"][:, 40:] == IGNORE_INDEX).all()
    assert (sample["mask"][:, :28] != IGNORE_INDEX).all()


def test_custom_band_routing() -> None:
    r = BandRouting(("R", "G", "B", "NIR"), ("SAR",), mean={"R": 10.0}, std={"R": 2.0})
    assert r.aux_bands == ("NIR", "SAR")
    image = torch.zeros(1, 5, 2, 2)
    image[0, 0] = 14.0
    image[0, 4] = float("nan")
    rgb, aux = r.prepare(image)
    assert torch.allclose(rgb[0, 0], torch.full((2, 2), 2.0))
    assert (aux[0, 1] == 0).all()  # NaN (nodata) -> 0
    assert BandRouting.from_dict(r.to_dict()) == r
    with pytest.raises(ValueError, match="not in the inputs"):
        BandRouting(("B", "G", "NIR"), ("VV",))


def test_linear_sar_is_converted_to_db() -> None:
    r = BandRouting(("R", "G", "B"), ("VV",), sar_units="linear")
    image = torch.tensor([1.0, 1.0, 1.0, 0.01]).view(1, 4, 1, 1)
    _, aux = r.prepare(image)
    assert aux.item() == pytest.approx(-20.0)


# -- bad input ---------------------------------------------------------------------------


def test_sar_not_overlapping(scene_root: Path) -> None:
    far = from_origin(-70.0, 40.0, 0.001, 0.001)  # somewhere else entirely (New York)
    write_raster(
        scene_root / "sar" / "scene_0.tif",
        np.zeros((2, 10, 10), np.float32),
        crs="EPSG:4326",
        transform=far,
    )
    with pytest.raises(InputError, match=r"sar/scene_0.tif: SAR raster does not overlap"):
        scenes_of(scene_root, split="train")


def test_fewer_bands_than_configured(scene_root: Path) -> None:
    write_scene(scene_root, "scene_0", optical_bands=3)
    with pytest.raises(
        InputError,
        match=r"optical/scene_0.tif: optical raster has 3 band\(s\), "
        r"but 4 are configured \(B, G, R, NIR\)",
    ):
        scenes_of(scene_root, split="train")


def test_label_codes_outside_map(scene_root: Path) -> None:
    labels = np.full((64, 64), 10, np.uint8)
    labels[0, :3] = [15, 99, 15]
    write_raster(scene_root / "labels" / "scene_0.tif", labels)
    with pytest.raises(
        InputError,
        match=r"labels/scene_0.tif: label values \[15, 99\] are "
        r"outside the code map",
    ):
        check_label_codes([scene_root / "labels" / "scene_0.tif"], WHU_OPT_SAR_CLASSES)
    with pytest.raises(InputError, match=r"\[15, 99\]"):
        _dm(scene_root).setup("fit")


def test_missing_file(scene_root: Path) -> None:
    (scene_root / "sar" / "scene_0.tif").unlink()
    with pytest.raises(InputError, match=r"sar/scene_0.tif: file not found"):
        scenes_of(scene_root, split="train")


def test_unreadable_file(scene_root: Path) -> None:
    (scene_root / "optical" / "scene_0.tif").write_bytes(b"II*\x00 this is not a tiff")
    with pytest.raises(InputError, match=r"optical/scene_0.tif: not a readable raster"):
        scenes_of(scene_root, split="train")


def test_missing_layout(tmp_path: Path) -> None:
    (tmp_path / "optical").mkdir()
    with pytest.raises(InputError, match=r"missing sar/"):
        scenes_of(tmp_path)


def test_no_crs_with_crs_is_refused(scene_root: Path) -> None:
    write_raster(scene_root / "optical" / "scene_0.tif", np.ones((4, 64, 64), np.uint16), crs=None)
    with pytest.raises(
        InputError,
        match=r"optical/scene_0.tif: raster has no CRS, but .*sar/"
        r"scene_0.tif has one",
    ):
        scenes_of(scene_root, split="train")


def test_training_patches_lie_on_the_optical_grid_in_its_crs(scene_root: Path) -> None:
    """The datasets index every scene in the optical raster's projected CRS (UTM metres),
    with SAR (stored in EPSG:4326) warped onto it: a patch's bounds are optical pixels."""
    ds = scenes_of(scene_root, split="train")
    assert ds.crs == rasterio.crs.CRS.from_user_input(UTM)
    assert ds.res == (10.0, 10.0)
    b = ds.bounds
    sample = ds[b[0].start : b[0].start + 320, b[1].stop - 320 : b[1].stop]
    assert sample["image"].shape == (6, 32, 32)
    assert torch.isfinite(sample["image"][4:]).any()  # SAR found on the optical grid


def test_row_bands_split_a_single_scene(tmp_path: Path) -> None:
    write_scene(tmp_path, "only", size=160)
    dm = OpticalSarDataModule(
        tmp_path,
        classes=WHU_OPT_SAR_CLASSES,
        batch_size=2,
        patch_size=16,
        length=200,
        stats_patches=4,
        split_rows=[0.6, 0.2, 0.2],
    )
    dm.setup("fit")
    dm.setup("test")
    boxes = patch_boxes(dm)
    top = 3_400_000
    # train patches come from the top 60% of the scene, test ones from the bottom
    assert min(b.bounds[1] for b in boxes["train"]) >= top - 0.6 * 1600
    assert max(b.bounds[3] for b in boxes["test"]) <= top - 0.8 * 1600 + 160
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        ua, ub = shapely.union_all(boxes[a]), shapely.union_all(boxes[b])
        assert ua.intersection(ub).area == 0, (a, b)
    sample = dm.val_dataset[next(iter(dm.val_sampler))]
    assert sample["image"].shape == (6, 16, 16)


def test_row_bands_bad_fractions(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"data.split_rows: expected 3 positive fractions"):
        OpticalSarDataModule(tmp_path, classes=WHU_OPT_SAR_CLASSES, split_rows=[0.5, 0.5])


def test_val_patches_is_a_fixed_subset_spread_over_every_val_scene(tmp_path: Path) -> None:
    from gopt_geo.config import load_config

    names = [f"scene_{i}" for i in range(5)]
    write_scenes(tmp_path, names)
    split = {"train": names[:1], "val": names[1:4], "test": names[4:]}

    def val_sampler(count: int | None, seed: int = 0) -> Any:
        dm = _dm(tmp_path, scenes=split, val_patches=count, seed=seed)
        dm.setup("validate")
        return dm.val_sampler

    everything = list(val_sampler(None))
    assert len(everything) >= 12  # 3 scenes of 64 px, 32-px patches: 2 x 2 each, or more
    sampler = val_sampler(7)
    subset = list(sampler)
    assert len(subset) == len(sampler) == 7
    assert set(subset) <= set(everything)
    assert list(sampler) == subset  # the same patches every epoch ...
    assert list(val_sampler(7)) == subset  # ... and in every run of the same seed
    # spread over every validation scene (the scene holding each patch's centre), in
    # proportion to their patches
    held = [Path(str(s)).stem for s in sampler.scene_of(subset)]
    assert sorted(held.count(n) for n in split["val"]) == [2, 2, 3]
    assert list(val_sampler(10_000)) == everything  # more than there are: all
    with pytest.raises(InputError, match=r"data.val_patches: expected a count >= 1"):
        _dm(tmp_path, scenes=split, val_patches=0)
    cfg = load_config(None, [f"data.root={tmp_path}", "data.val_patches=7"])
    assert cfg.datamodule().val_patches == 7
