"""The Lightning/torchgeo datamodule: whole-scene splits, patch samplers, statistics.

- training patches: torchgeo ``RandomPatchSampler`` (seeded), with flips;
- validation/test patches: ``GriddedPatchSampler`` over their own scenes;
- splits are whole scenes (see scenes.py), or, with ``split_rows``, bands of rows of
  every scene separated by a guard gap of one patch (so even a single labelled scene can
  be split); either way no patch is shared across splits;
- label codes are checked against the class scheme before anything trains;
- per-band statistics come from training patches only and end up in
  :attr:`routing`, which the task stores in the adapter file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas
import kornia.augmentation as K
import shapely
import torch
from torchgeo.datamodules import GeoDataModule
from torchgeo.datasets.utils import Sample
from torchgeo.samplers import GriddedPatchSampler, RandomPatchSampler

from ..errors import InputError
from .bands import BandRouting
from .classes import WHU_OPT_SAR_CLASSES, ClassScheme
from .normalize import band_statistics
from .rasters import check_label_codes
from .scenes import SPLITS, OpticalSarScenes
from .whu_opt_sar import WHUOptSar

DATASETS: dict[str, type[OpticalSarScenes]] = {"scenes": OpticalSarScenes, "whu_opt_sar": WHUOptSar}


def _identity(batch: Sample) -> Sample:
    return batch


class OpticalSarDataModule(GeoDataModule):
    """Optical + SAR + labels scenes for training, validation and testing."""

    def __init__(
        self,
        root: str | Path,
        dataset: str = "scenes",
        routing: BandRouting | None = None,
        classes: ClassScheme | None = None,
        scenes: dict[str, list[str]] | None = None,
        batch_size: int = 8,
        patch_size: int = 256,
        length: int | None = None,
        num_workers: int = 0,
        stats_patches: int = 64,
        seed: int = 0,
        augment: bool = True,
        split_rows: list[float] | None = None,
    ) -> None:
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
        self.classes = classes or WHU_OPT_SAR_CLASSES
        kwargs: dict[str, Any] = {"root": root, "scenes": scenes}
        if routing is not None:
            kwargs["routing"] = routing
        if dataset == "scenes":
            kwargs["classes"] = self.classes
        super().__init__(
            DATASETS[dataset],
            batch_size=batch_size,
            patch_size=patch_size,
            length=length,
            num_workers=num_workers,
            **kwargs,
        )
        self.routing = routing
        if split_rows is not None:
            if len(split_rows) != 3 or min(split_rows) <= 0 or abs(sum(split_rows) - 1) > 1e-6:
                raise InputError(
                    f"data.split_rows: expected 3 positive fractions (train, val, test) "
                    f"summing to 1, got {split_rows}"
                )
            if scenes is not None:
                raise InputError("data.split_rows and data.scenes cannot be used together")
        self.split_rows = split_rows
        self._checked: set[Path] = set()
        self.stats_patches = stats_patches
        self.seed = seed
        self.aug = _identity
        if augment:
            self.train_aug = K.AugmentationSequential(
                K.RandomHorizontalFlip(), K.RandomVerticalFlip(), data_keys=None, keepdim=True
            )

    def split_dataset(self, split: str) -> OpticalSarScenes:
        kwargs = dict(self.kwargs)
        if self.split_rows is not None:  # every scene in every split, clipped below
            names = sorted(p.stem for p in (Path(kwargs["root"]) / "optical").glob("*.tif"))
            kwargs["scenes"] = {s: names for s in SPLITS}
        ds = self.dataset_class(split=split, **kwargs)
        assert isinstance(ds, OpticalSarScenes)
        if self.split_rows is not None:
            ds.index = geopandas.clip(ds.index, self.row_band(ds, split))
        # each label file is read once per datamodule, however often Lightning sets up
        unchecked = [p for p in ds.label_paths if p not in self._checked]
        check_label_codes(unchecked, self.classes)
        self._checked.update(unchecked)
        if self.routing is None:
            self.routing = ds.routing
        return ds

    def row_band(self, ds: OpticalSarScenes, split: str) -> shapely.Geometry:
        """This split's band of rows of every scene, as torchgeo's ``roi_split`` takes it.

        Bands follow the order train, val, test from the top of each scene. Inner borders
        are pulled back by half a patch on each side: random training patches stay
        inside their band, and gridded validation/test patches, which may reach up to
        half a patch past theirs, can then never meet a training patch."""
        assert self.split_rows is not None
        i = SPLITS.index(split)
        start, stop = sum(self.split_rows[:i]), sum(self.split_rows[: i + 1])
        half_gap = self.patch_size * ds.res[1] / 2
        parts = []
        for geom in ds.index.geometry:
            x0, y0, x1, y1 = geom.bounds
            h = y1 - y0
            top = y1 - start * h - (half_gap if i > 0 else 0.0)
            bottom = y1 - stop * h + (half_gap if i < len(SPLITS) - 1 else 0.0)
            if top > bottom:
                parts.append(shapely.box(x0, bottom, x1, top).intersection(geom))
        if not parts:
            raise InputError(
                f"data.split_rows: the {split} band is thinner than one patch "
                f"({self.patch_size} px) in every scene; use larger fractions or smaller patches"
            )
        return shapely.union_all(parts)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train_dataset = self.split_dataset("train")
            self.train_sampler = RandomPatchSampler(
                self.train_dataset, size=self.patch_size, length=self.length, generator=self.seed
            )
            self.ensure_statistics()
        if stage in ("fit", "validate"):
            self.val_dataset = self.split_dataset("val")
            self.val_sampler = GriddedPatchSampler(
                self.val_dataset, size=self.patch_size, stride=self.patch_size
            )
        if stage == "test":
            self.test_dataset = self.split_dataset("test")
            self.test_sampler = GriddedPatchSampler(
                self.test_dataset, size=self.patch_size, stride=self.patch_size
            )

    def ensure_statistics(self) -> BandRouting:
        """Compute per-band statistics from training patches, unless the routing has them."""
        assert self.routing is not None
        if self.routing.mean and self.routing.std:
            return self.routing
        ds = self.train_dataset if self.train_dataset is not None else self.split_dataset("train")
        sampler = RandomPatchSampler(
            ds, size=self.patch_size, length=self.stats_patches, generator=self.seed + 1
        )
        mean, std = band_statistics((ds[q]["image"] for q in sampler), self.routing)
        self.routing = self.routing.with_stats(mean, std)
        return self.routing

    def transfer_batch_to_device(
        self, batch: Sample, device: torch.device, dataloader_idx: int
    ) -> Sample:
        # bounds/transform are metadata; only tensors the model needs travel.
        return {k: v.to(device) for k, v in batch.items() if k in ("image", "mask")}
