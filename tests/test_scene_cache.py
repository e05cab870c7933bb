"""The in-memory scene cache: patches sliced from cached scenes equal torchgeo's reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import to_wgs84, write_scene
from rasterio.transform import from_origin
from torchgeo.datasets import IntersectionDataset
from torchgeo.samplers import GriddedPatchSampler, RandomPatchSampler

from gopt_geo.data.classes import IGNORE_INDEX, WHU_OPT_SAR_CLASSES
from gopt_geo.data.datamodule import OpticalSarDataModule
from gopt_geo.data.disk_cache import CACHE_DIR_ENV
from gopt_geo.data.scenes import SCENE_CACHE_ENV, OpticalSarScenes
from gopt_geo.errors import InputError

NAMES = ["s0", "s1", "s2"]


def torchgeo_sample(ds: OpticalSarScenes, index: Any) -> dict[str, Any]:
    """The sample as torchgeo reads it (index queries, merges, cleaner), cache or not;
    a row split's mask ignored past its band, as the dataset does either way."""
    return ds.mask_outside_region(IntersectionDataset.__getitem__(ds, index), index)


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].shape == b[key].shape, key
        if key == "image":
            assert torch.equal(a[key].isnan(), b[key].isnan())
            assert torch.equal(a[key].nan_to_num(-1), b[key].nan_to_num(-1))
        else:
            assert torch.equal(a[key], b[key]), key


def dataset(root: Path, **kw: Any) -> OpticalSarScenes:
    """The training split of the scenes under ``root`` (s0, s1, s2)."""
    return OpticalSarScenes(
        root, split="train", scenes={"train": NAMES}, classes=WHU_OPT_SAR_CLASSES, **kw
    )


def patches(ds: OpticalSarScenes) -> list[Any]:
    """Random patches, gridded ones, and a grid whose edge patches run past the scenes."""
    return [
        *RandomPatchSampler(ds, size=16, length=30, generator=0),
        *GriddedPatchSampler(ds, size=32, stride=32),
        *GriddedPatchSampler(ds, size=24, stride=24),
    ]


@pytest.fixture
def torchgeo_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every patch that reaches torchgeo's IntersectionDataset.__getitem__."""
    calls: list[Any] = []
    original = IntersectionDataset.__getitem__

    def counted(self: IntersectionDataset, index: Any) -> Any:
        if isinstance(self, OpticalSarScenes):
            calls.append(index)
        return original(self, index)

    monkeypatch.setattr(IntersectionDataset, "__getitem__", counted)
    return calls


def test_cached_patches_equal_torchgeo_reads(holed_scenes: Path) -> None:
    ds = dataset(holed_scenes)
    cache = ds.build_scene_cache()
    assert cache is not None and sorted(cache.names) == NAMES
    served = fallen_back = 0
    nan_seen = False
    for index in patches(ds):
        from_cache = cache.sample(index) is not None
        sample = ds[index]
        assert_same(sample, torchgeo_sample(ds, index))
        served += from_cache
        fallen_back += not from_cache
        nan_seen |= from_cache and bool(sample["image"].isnan().any())
    assert served >= 30  # at least every random patch
    assert fallen_back >= 1  # grid patches running past a scene's edge
    assert nan_seen  # nodata (optical rows, SAR block) cleaned the same way
    whole = (slice(500_000, 500_640), slice(3_399_360, 3_400_000))  # all of s0
    assert cache.sample(whole) is not None
    sample = ds[whole]
    assert_same(sample, torchgeo_sample(ds, whole))
    assert sample["image"][:, :10].isnan().all()  # optical nodata rows
    assert sample["image"][:, 10:].isnan().any(0).sum() >= 50  # the SAR nodata block


def test_edge_patch_past_the_data_falls_back(holed_scenes: Path, torchgeo_calls: list[Any]) -> None:
    ds = dataset(holed_scenes)
    cache = ds.build_scene_cache()
    assert cache is not None
    x0, top = 500_000.0, 3_400_000.0
    index = (slice(x0 - 80, x0 + 240), slice(top - 240, top + 80))  # 8 px past W and N
    assert cache.sample(index) is None
    sample = ds[index]
    assert len(torchgeo_calls) == 1
    assert_same(sample, torchgeo_sample(ds, index))
    assert sample["image"][:, :8].isnan().all() and sample["image"][:, :, :8].isnan().all()
    assert (sample["mask"][:8] == IGNORE_INDEX).all()


def test_scene_with_sar_over_part_of_it_is_read_by_torchgeo(holed_scenes: Path) -> None:
    """A SAR file cut by the scene's edge is read at a patch-dependent scale: not cached,
    and its patches (outside the SAR footprint too) still equal torchgeo's."""
    sar = np.full((2, 64, 32), -10.0, dtype=np.float32)  # western half only
    to_wgs84(holed_scenes / "sar" / "s1.tif", sar, from_origin(505_000, 3_400_000, 10, 10))
    ds = dataset(holed_scenes)
    cache = ds.build_scene_cache()
    assert cache is not None and sorted(cache.names) == ["s0", "s2"]
    checked = 0
    for index in GriddedPatchSampler(ds, size=16, stride=16):
        if index[0].start >= 505_000 and index[0].stop <= 505_640:
            assert_same(ds[index], torchgeo_sample(ds, index))
            checked += 1
    assert checked >= 8


def test_cache_replaces_torchgeo_reads(holed_scenes: Path, torchgeo_calls: list[Any]) -> None:
    ds = dataset(holed_scenes)
    for index in RandomPatchSampler(ds, size=16, length=20, generator=1):
        sample = ds[index]
        assert sample["image"].shape == (6, 16, 16) and sample["mask"].dtype == torch.long
    assert torchgeo_calls == []


def test_scenes_without_labels(holed_scenes: Path) -> None:
    ds = dataset(holed_scenes, labels=False)
    assert ds.build_scene_cache() is not None
    for index in RandomPatchSampler(ds, size=16, length=5, generator=3):
        sample = ds[index]
        assert "mask" not in sample
        assert_same(sample, torchgeo_sample(ds, index))


def test_user_transforms_apply_to_cached_samples(holed_scenes: Path) -> None:
    def double(sample: dict[str, Any]) -> dict[str, Any]:
        sample["image"] = sample["image"] * 2
        return sample

    ds = dataset(holed_scenes, transforms=double)
    index = next(iter(RandomPatchSampler(ds, size=16, length=1, generator=2)))
    assert ds.build_scene_cache() is not None
    assert_same(ds[index], torchgeo_sample(ds, index))


def test_cache_off_with_env_zero(
    holed_scenes: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    torchgeo_calls: list[Any],
) -> None:
    """0 turns the scene cache off altogether: no disk cache either."""
    monkeypatch.setenv(SCENE_CACHE_ENV, "0")
    disk = tmp_path_factory.mktemp("scene-cache")
    ds = dataset(holed_scenes)
    assert ds.build_scene_cache(disk_dir=disk) is None
    assert list(disk.iterdir()) == []
    indices = list(RandomPatchSampler(ds, size=16, length=5, generator=1))
    for index in indices:
        ds[index]
    assert len(torchgeo_calls) == len(indices)


def test_cache_off_over_budget_and_bad_env(
    holed_scenes: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SCENE_CACHE_ENV, "0.05")  # 52 KB < 3 scenes x 64 x 64 x 25 B
    monkeypatch.setenv(CACHE_DIR_ENV, "off")
    assert dataset(holed_scenes).build_scene_cache() is None
    assert dataset(holed_scenes).build_scene_cache(disk_dir=None) is None
    # over the budget with a disk cache: every scene mapped from disk, none in memory
    disk = tmp_path_factory.mktemp("scene-cache")
    cache = dataset(holed_scenes).build_scene_cache(disk_dir=disk)
    assert cache is not None and sorted(cache.names) == NAMES
    assert all(s.source is not None and s.source.parent == disk for s in cache.scenes)
    monkeypatch.setenv(CACHE_DIR_ENV, str(disk))
    assert dataset(holed_scenes).build_scene_cache() is not None  # "auto": the environment's folder
    monkeypatch.setenv(SCENE_CACHE_ENV, "1")
    assert dataset(holed_scenes).build_scene_cache() is not None
    monkeypatch.setenv(SCENE_CACHE_ENV, "lots")
    with pytest.raises(InputError, match=SCENE_CACHE_ENV):
        dataset(holed_scenes).build_scene_cache()


def _batches(root: Path, workers: int, n: int, **kw: Any) -> tuple[list[Any], Any]:
    dm = OpticalSarDataModule(
        root,
        classes=WHU_OPT_SAR_CLASSES,
        batch_size=4,
        patch_size=16,
        length=16,
        stats_patches=8,
        num_workers=workers,
        **kw,
    )
    dm.setup("fit")
    train = [b for _, b in zip(range(n), dm.train_dataloader(), strict=False)]
    val = list(dm.val_dataloader())
    return train + val, dm


def test_datamodule_with_workers_equals_uncached(
    holed_scenes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forked workers serve from the cache built in setup; batches and statistics equal
    those of the torchgeo path."""
    cached, dm = _batches(holed_scenes, workers=2, n=4)
    assert dm.train_dataset.scene_cache is not None
    assert dm.val_dataset.scene_cache is not None
    monkeypatch.setenv(SCENE_CACHE_ENV, "0")
    plain, dm_plain = _batches(holed_scenes, workers=0, n=4)
    assert dm_plain.train_dataset.scene_cache is None
    assert dm.routing == dm_plain.routing
    assert len(cached) == len(plain)
    for a, b in zip(cached, plain, strict=True):
        assert_same(a, b)


def test_row_split_caches_the_clipped_scene(tmp_path: Path) -> None:
    write_scene(tmp_path, "only", size=96)
    dm = OpticalSarDataModule(
        tmp_path,
        classes=WHU_OPT_SAR_CLASSES,
        batch_size=2,
        patch_size=16,
        length=8,
        stats_patches=4,
        split_rows=[0.4, 0.35, 0.25],  # every band at least one 16-px patch
    )
    dm.setup("fit")
    ds = dm.val_dataset
    assert ds.scene_cache is not None and ds.scene_cache.names == ["only"]
    for index in dm.val_sampler:
        assert_same(ds[index], torchgeo_sample(ds, index))
