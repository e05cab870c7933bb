"""The Lightning/torchgeo datamodule: whole-scene splits, patch samplers, statistics.

- training patches: torchgeo ``RandomPatchSampler``, seeded per epoch (flips are the
  task's);
- validation/test patches: ``GriddedPatchSampler`` over their own scenes (one grid over
  the bounding box of the split's scenes, patches that touch a scene kept); validation
  can be capped at ``val_patches`` of them (:class:`GridSubsetSampler`: a fixed subset,
  spread over every validation scene, the same every epoch), so that validating a large
  split (WHU-OPT-SAR: 8 scenes, about 800 patches of 512²) stays a small share of an
  epoch;
- splits are whole scenes (see scenes.py), or, with ``split_rows``, bands of rows of
  every scene separated by a guard gap of one patch (so even a single labelled scene can
  be split); either way no patch is shared across splits;
- label codes are checked against the class scheme before anything trains;
- per-band statistics come from training patches only and end up in
  :attr:`routing`, which the task stores in the adapter file; the same pass counts the
  labelled pixels of each class (:attr:`class_pixels`, for ``class_weights: auto``);
- the datamodule is built from a run config by ``RunConfig.datamodule`` (config.py):
  this layer never imports the run configuration above it (design §2);
- each split's scenes are read into memory when its dataset is built, if they fit the
  scene cache's budget (scenes.py), before any DataLoader worker is forked.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas
import numpy as np
import shapely
import torch
from torchgeo.datamodules import GeoDataModule
from torchgeo.datasets import GeoDataset
from torchgeo.datasets.utils import Sample
from torchgeo.samplers import GriddedPatchSampler, RandomPatchSampler

from ..errors import InputError
from .bands import BandRouting
from .classes import IGNORE_INDEX, ClassScheme
from .normalize import band_statistics
from .rasters import check_label_codes
from .row_split import band_rows
from .scenes import SPLITS, OpticalSarScenes
from .whu_opt_sar import WHUOptSar

#: Dataset classes by the name a run config gives in ``data.dataset``.
DATASETS: dict[str, type[OpticalSarScenes]] = {"scenes": OpticalSarScenes, "whu_opt_sar": WHUOptSar}


def _identity(batch: Sample) -> Sample:
    return batch


class EpochPatchSampler(RandomPatchSampler):
    """torchgeo's random patch sampler, with the patches of an epoch a function of
    (seed, epoch) alone.

    A resumed run then draws at epoch N exactly the patches an uninterrupted run draws
    there. Lightning calls :meth:`set_epoch` before each epoch; each pass also moves on
    to the next epoch by itself, for loops that do not call it.
    """

    def __init__(self, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, generator=seed, **kwargs)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[slice, slice]]:
        self.generator = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1
        return super().__iter__()


class GridSubsetSampler(GriddedPatchSampler):
    """torchgeo's gridded sampler, cut down to a fixed subset of ``count`` patches.

    The subset is the same in every pass (validation scores of different epochs compare
    the same pixels) and a function of (``seed``, the split's scenes) alone. It is spread
    over every scene of the split: each gridded patch belongs to the scene nearest its
    centre; scenes get shares of ``count`` in proportion to their patches (largest
    remainder, at least one each when ``count`` allows), and a scene's share is taken at
    even strides through its patches (row by row), from a seeded phase. ``count`` None,
    or at least the number of gridded patches, keeps them all. Patches come in the
    gridded order.
    """

    def __init__(
        self, dataset: GeoDataset, *, count: int | None = None, seed: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(dataset, **kwargs)
        if count is not None and count < 1:
            raise ValueError(f"count must be >= 1 or None, got {count}")
        #: the dataset's index (footprints, files): which scene a patch belongs to
        self.scene_index = dataset.index
        self.count = count
        self.seed = seed
        self._chosen: list[tuple[slice, slice]] | None = None

    def all_patches(self) -> list[tuple[slice, slice]]:
        """Every patch of the full grid, in torchgeo's order."""
        return list(super().__iter__())

    def scene_of(self, patches: Sequence[tuple[slice, slice]]) -> np.ndarray:
        """The scene of each patch: the file (or row) of the sampler's index nearest the
        patch's centre (the one it lies in, for a centre inside a scene)."""
        index = self.scene_index
        geoms = index.geometry.to_numpy()
        keys = (
            index["filepath"].astype(str).to_numpy()
            if "filepath" in index
            else np.arange(len(geoms))
        )
        if not patches:
            return keys[:0]
        centres = shapely.points(
            [((x.start + x.stop) / 2, (y.start + y.stop) / 2) for x, y in patches]
        )
        nearest = shapely.STRtree(geoms).query_nearest(centres, all_matches=False)
        out = np.empty(len(patches), dtype=keys.dtype)
        out[nearest[0]] = keys[nearest[1]]
        return out

    def chosen(self) -> list[tuple[slice, slice]]:
        """The subset (computed once)."""
        if self._chosen is None:
            patches = self.all_patches()
            if self.count is None or self.count >= len(patches):
                self._chosen = patches
            else:
                keep = spread_subset(self.scene_of(patches), self.count, self.seed)
                self._chosen = [patches[i] for i in keep]
        return self._chosen

    def __iter__(self) -> Iterator[tuple[slice, slice]]:
        yield from self.chosen()

    def __len__(self) -> int:
        return len(self.chosen())


def spread_subset(groups: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices (ascending) of ``count`` items of ``groups`` (one group label per item),
    spread over the groups in proportion to their sizes (largest remainder; at least one
    per group when ``count`` allows) and, inside a group, at even strides from a phase
    drawn from ``seed``."""
    labels, sizes = np.unique(groups, return_counts=True)
    count = min(count, len(groups))
    exact = count * sizes / sizes.sum()
    quota = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: count - int(quota.sum())]] += 1
    if count >= len(labels):  # every group gets one, taken from the largest shares
        while (quota == 0).any():
            quota[int(np.argmax(quota))] -= 1
            quota[int(np.flatnonzero(quota == 0)[0])] += 1
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for label, n, q in zip(labels, sizes, quota, strict=True):
        members = np.flatnonzero(groups == label)
        phase = rng.random()
        if q:
            keep.append(members[np.floor((np.arange(q) + phase) * n / q).astype(np.int64)])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class SplitExtent:
    """Where a split's pixels are: its scenes, and for a row split its bands as boxes
    (x0, y0, x1, y1) in the dataset's coordinates (None: the whole scenes), with the
    pixel-grid offsets of scenes without a CRS (data/rasters.py)."""

    scenes: list[str]
    boxes: list[tuple[float, float, float, float]] | None
    pixel_grid_offsets: dict[str, tuple[float, float]]


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
        split_rows: list[float] | None = None,
        split_order: list[str] | None = None,
        scene_cache_dir: str | Path | None = "auto",
        val_patches: int | None = None,
    ) -> None:
        if dataset not in DATASETS:
            raise InputError(
                f"data.dataset: unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}"
            )
        scheme = classes or DATASETS[dataset].default_classes
        if scheme is None:
            raise InputError(f"{root}: give the scenes' class scheme (data.classes)")
        self.classes = scheme
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
        if val_patches is not None and (isinstance(val_patches, bool) or val_patches < 1):
            raise InputError(
                f"data.val_patches: expected a count >= 1, or null for every gridded "
                f"validation patch, got {val_patches!r}"
            )
        #: validation patches per epoch: a fixed subset of the gridded ones
        #: (:class:`GridSubsetSampler`); None: all of them
        self.val_patches = val_patches
        #: where a split too large for the memory cache is cached on disk ("auto": the
        #: default folder or GOPT_GEO_SCENE_CACHE_DIR; None/"off": no disk cache)
        self.scene_cache_dir = scene_cache_dir
        self.split_order = list(split_order or SPLITS)
        if sorted(self.split_order) != sorted(SPLITS):
            raise InputError(
                f"data.split_order: expected train, val and test once each, got {split_order}"
            )
        self._datasets: dict[str, OpticalSarScenes] = {}
        self._band_boxes: dict[str, list[tuple[float, float, float, float]]] = {}
        self._checked: set[Path] = set()
        self._stages: set[str] = set()  # label files already checked (row splits share them)
        self.stats_patches = stats_patches
        #: labelled pixels per class in the statistics' training patches (ignore-index
        #: pixels left out); None until that pass ran
        self.class_pixels: np.ndarray | None = None
        self.seed = seed
        # batches reach the task as read: the task flips them inside its training step,
        # where every random draw is seeded per step (resume-exact)
        self.aug = _identity
        self.train_aug = _identity

    def split_dataset(self, split: str) -> OpticalSarScenes:
        """The dataset of one split, built (and its label codes checked) once.

        Its scene cache is built here, in this process, so that DataLoader workers forked
        later (training, validation, ``evaluate``) share one copy instead of each reading
        the scenes again: in memory when the split fits the budget, else on disk
        (``scene_cache_dir``), memory-mapped by every worker."""
        if split not in self._datasets:
            ds = self._build_split(split)
            ds.build_scene_cache(disk_dir=self.scene_cache_dir)
            self._datasets[split] = ds
        return self._datasets[split]

    def split_extent(self, split: str) -> SplitExtent:
        """The scenes and (row splits) bands of ``split``, as training and evaluation
        sample them; its scenes are indexed and its labels checked, nothing cached."""
        ds = self._datasets.get(split) or self._build_split(split)
        boxes = self._band_boxes.get(split) if self.split_rows is not None else None
        return SplitExtent(list(ds.scene_names), boxes, ds.pixel_grid_offsets())

    def _build_split(self, split: str) -> OpticalSarScenes:
        kwargs = dict(self.kwargs)
        if self.split_rows is not None:  # every scene in every split, clipped below
            names = sorted(p.stem for p in (Path(kwargs["root"]) / "optical").glob("*.tif"))
            kwargs["scenes"] = {s: names for s in SPLITS}
        ds = self.dataset_class(split=split, **kwargs)
        assert isinstance(ds, OpticalSarScenes)
        if self.split_rows is not None:
            band = self.row_band(ds, split)
            ds.index = geopandas.clip(ds.index, band)
            ds.restrict_to(self._band_boxes[split])
        unchecked = [p for p in ds.label_paths if p not in self._checked]
        check_label_codes(unchecked, self.classes)
        self._checked.update(unchecked)
        if self.routing is None:
            self.routing = ds.routing
        return ds

    def row_band(self, ds: OpticalSarScenes, split: str) -> shapely.Geometry:
        """This split's band of rows of every scene, as torchgeo's ``roi_split`` takes it.

        Bands follow ``split_order`` from the top of each scene (train, val, test unless
        chosen otherwise), with ``split_rows`` fractions of its rows each
        (:func:`row_split.band_rows`). Every border is a whole pixel row: patches inside a
        band then lie on the raster's own grid and are read without resampling. Inner
        borders are pulled back by half a patch on each side (the guard gap: one patch
        height per border is used by no split, so on a small scene this costs
        ``patch_size`` rows per inner border): random training patches stay inside their
        band, and gridded validation/test patches, which may reach up to half a patch
        past theirs, can never meet a training patch (and are masked past their band,
        :meth:`OpticalSarScenes.restrict_to`). A band thinner than one patch in any scene
        is refused, naming the band, its rows and the patch size: torchgeo's samplers
        would skip it without a word."""
        assert self.split_rows is not None
        order = self.split_order
        i = order.index(split)
        fractions = [self.split_rows[SPLITS.index(s)] for s in order]
        res = ds.res[1]
        parts = []
        names = list(ds.index["filepath"]) if "filepath" in ds.index else []
        for k, geom in enumerate(ds.index.geometry):
            x0, y0, x1, y1 = geom.bounds
            rows = round((y1 - y0) / res)
            first, last = band_rows(rows, fractions, i, self.patch_size)
            if last - first < self.patch_size:
                where = f" of scene {Path(names[k]).stem}" if k < len(names) else ""
                raise InputError(
                    f"data.split_rows: the {split} band{where} is {last - first} rows (rows "
                    f"{first}..{last} of {rows}), thinner than one patch "
                    f"(data.patch_size {self.patch_size}); give {split} a larger fraction "
                    "or use smaller patches"
                )
            top, bottom = y1 - first * res, y1 - last * res
            parts.append(shapely.box(x0, bottom, x1, top).intersection(geom))
        self._band_boxes[split] = [part.bounds for part in parts]
        return shapely.union_all(parts)

    def setup(self, stage: str) -> None:
        """Datasets and samplers of ``stage``; a stage already set up is left as it is
        (``train()`` sets up before fitting to read statistics, then Lightning asks again)."""
        if stage in self._stages:
            return
        self._stages.add(stage)
        if stage == "fit":
            self.train_dataset = self.split_dataset("train")
            self.train_sampler = EpochPatchSampler(
                self.train_dataset, size=self.patch_size, length=self.length, seed=self.seed
            )
            self.ensure_statistics()
        if stage in ("fit", "validate"):
            self.val_dataset = self.split_dataset("val")
            self.val_sampler = GridSubsetSampler(
                self.val_dataset,
                size=self.patch_size,
                stride=self.patch_size,
                count=self.val_patches,
                seed=self.seed,
            )
        if stage == "test":
            self.test_dataset = self.split_dataset("test")
            self.test_sampler = GriddedPatchSampler(
                self.test_dataset, size=self.patch_size, stride=self.patch_size
            )

    def ensure_statistics(self) -> BandRouting:
        """Compute per-band statistics from training patches, unless the routing has them
        (the same pass counts :attr:`class_pixels`)."""
        assert self.routing is not None
        if self.routing.mean and self.routing.std:
            return self.routing
        images = self._statistics_patches()
        mean, std, profile = band_statistics(images, self.routing)
        self.routing = self.routing.with_stats(mean, std, profile)
        warning = self.routing.sar_units_warning()
        if warning:
            warnings.warn(f"{self.kwargs['root']}: {warning}", UserWarning, stacklevel=2)
        return self.routing

    def class_pixel_counts(self) -> np.ndarray:
        """Labelled pixels per class (scheme order) in the training patches the
        statistics are computed from: a fixed sample (``data.stats_patches``, seeded),
        so a resumed run counts the same. Counted in the statistics' pass when that ran;
        otherwise in a pass of its own."""
        if self.class_pixels is None:
            for _ in self._statistics_patches():
                pass
        assert self.class_pixels is not None
        return self.class_pixels

    def _statistics_patches(self) -> Iterator[torch.Tensor]:
        """The images of the statistics' training patches, counting the classes of
        their labels on the way (ignore-index pixels are not counted)."""
        ds = self.split_dataset("train")
        sampler = RandomPatchSampler(
            ds,
            size=self.patch_size,
            length=self.stats_patches,
            generator=self.seed + 1,
        )
        k = self.classes.num_classes
        counts = np.zeros(k, dtype=np.int64)
        for query in sampler:
            sample = ds[query]
            if "mask" in sample:
                mask = torch.as_tensor(sample["mask"]).reshape(-1).long()
                mask = mask[(mask != IGNORE_INDEX) & (mask >= 0) & (mask < k)]
                counts += torch.bincount(mask, minlength=k).numpy()
            yield sample["image"]
        self.class_pixels = counts

    def transfer_batch_to_device(
        self, batch: Sample, device: torch.device, dataloader_idx: int
    ) -> Sample:
        # bounds/transform are metadata; only tensors the model needs travel.
        return {k: v.to(device) for k, v in batch.items() if k in ("image", "mask")}
