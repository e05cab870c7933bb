"""A folder of co-registered optical + SAR (+ label) scenes as one torchgeo GeoDataset.

Layout (WHU-OPT-SAR's, and what ``gopt-geo synth`` writes)::

    root/
      optical/<scene>.tif     reference grid
      sar/<scene>.tif         any CRS / resolution; warped onto the optical grid
      labels/<scene>.tif      land-cover codes on the optical grid (optional for prediction)

Splits are made of whole scenes, so train, validation and test patches can never
overlap as long as the scenes themselves do not (map sheets, or ``synth`` output).

Scene cache: torchgeo answers every patch with index queries and three windowed reads
(SAR through a WarpedVRT), about 25 ms of CPU for a 128-px patch, which dominated
training on small archives. When a split's scenes fit in :data:`SCENE_CACHE_BYTES`,
each scene is read once, through that same torchgeo path, over its whole extent, and
patches inside it are sliced out of the arrays (:class:`SceneCache`). A patch the cache
cannot answer exactly as torchgeo would (past a scene's edge, across scenes, off the
pixel grid) is read by torchgeo as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import rasterio.transform
import shapely
import torch
from torchgeo.datasets import GeoDataset, IntersectionDataset
from torchgeo.datasets.utils import GeoSlice, Sample

from ..errors import InputError
from ..io import check_overlap, open_raster
from .bands import BandRouting
from .classes import ClassScheme
from .rasters import (
    LabelRaster,
    OpticalRaster,
    SampleCleaner,
    SarRaster,
    collate_intersection,
    read_nodata,
)

SPLITS = ("train", "val", "test")

#: Memory budget of one split's scene cache (bytes): the arrays of every scene of the
#: split (image float32, labels in their smallest integer type). A split that needs more
#: is not cached at all and is read patch by patch, as without the cache.
SCENE_CACHE_BYTES = 2 * 2**30
#: Environment override of :data:`SCENE_CACHE_BYTES`, in MiB; 0 turns the cache off.
SCENE_CACHE_ENV = "GOPT_GEO_SCENE_CACHE_MB"
#: Patch edges this close to a pixel border (in pixels) are on the grid: GDAL reads such
#: a window as the whole-pixel one, so slicing gives the same pixels.
GRID_TOLERANCE = 1e-6


def scene_cache_budget() -> int:
    """The scene cache's budget in bytes: ``GOPT_GEO_SCENE_CACHE_MB`` or the default."""
    value = os.environ.get(SCENE_CACHE_ENV, "").strip()
    if not value:
        return SCENE_CACHE_BYTES
    try:
        mb = float(value)
    except ValueError:
        mb = -1.0
    if not mb >= 0:
        raise InputError(
            f"{SCENE_CACHE_ENV}={value!r}: expected a size in MiB (0 turns the scene cache off)"
        )
    return int(mb * 2**20)


def split_scenes(names: Sequence[str], val: int, test: int) -> dict[str, list[str]]:
    """Deterministic whole-scene split: the last ``test`` scenes, then ``val``, the rest train."""
    names = sorted(names)
    if len(names) < val + test + 1:
        raise InputError(
            f"need at least {val + test + 1} scenes for {val} validation and {test} test "
            f"scene(s) plus training, found {len(names)}"
        )
    n_train = len(names) - val - test
    return {
        "train": names[:n_train],
        "val": names[n_train : n_train + val],
        "test": names[n_train + val :],
    }


def _smallest_int(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` in the smallest integer type that holds its values (labels are codes)."""
    if mask.numel() == 0:
        return mask.to(torch.uint8)
    lo, hi = int(mask.min()), int(mask.max())
    for dtype in (torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return mask.to(dtype)
    return mask


@dataclass(frozen=True)
class CachedScene:
    """One scene as torchgeo reads it over its whole extent, before cleaning.

    ``image`` is [C, H, W] float32 (optical then SAR on the optical grid), ``mask`` the
    raw label codes [H, W] (or None); pixel (0, 0) has its corner at (``left``, ``top``).
    """

    name: str
    left: float
    top: float
    image: torch.Tensor
    mask: torch.Tensor | None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    @property
    def nbytes(self) -> int:
        n = self.image.numel() * self.image.element_size()
        if self.mask is not None:
            n += self.mask.numel() * self.mask.element_size()
        return n


class SceneCache:
    """The scenes of a split in memory, answering patches by slicing.

    Only scenes whose every source file (optical, SAR, labels) either contains the whole
    scene or does not overlap it are cached: torchgeo then reads each file over a patch
    with the same scale and offsets as over the whole scene, so a slice of the whole read
    is the patch read, pixel for pixel (tests/test_scene_cache.py checks this against
    torchgeo). :meth:`locate` answers only patches inside one cached scene and on its
    pixel grid; everything else is left to torchgeo.
    """

    def __init__(
        self, scenes: Sequence[CachedScene], res: tuple[float, float], bounds: tuple[slice, ...]
    ) -> None:
        self.scenes = list(scenes)
        self.res = (float(res[0]), float(res[1]))
        #: The optical dataset's bounds: what torchgeo fills a partial GeoSlice from.
        self.bounds = bounds
        xres, yres = self.res
        self._boxes = np.array(
            [
                (s.left, s.top - s.shape[0] * yres, s.left + s.shape[1] * xres, s.top)
                for s in self.scenes
            ],
            dtype=np.float64,
        ).reshape(-1, 4)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.scenes)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.scenes]

    def resolve(self, index: GeoSlice) -> tuple[slice, slice, slice] | None:
        """``index`` completed from the bounds as torchgeo's ``_disambiguate_slice`` does,
        or None when the cache must not answer it (a time slice, another resolution)."""
        parts = (index,) if isinstance(index, slice) else tuple(index)
        if not 1 <= len(parts) <= 3 or not all(isinstance(p, slice) for p in parts):
            return None
        if len(parts) == 3 and parts[2] != slice(None):
            return None  # torchgeo filters files by time: leave that to it
        out = list(self.bounds)
        for i, part in enumerate(parts):
            if part.start is not None:
                out[i] = slice(part.start, out[i].stop, out[i].step)
            if part.stop is not None:
                out[i] = slice(out[i].start, part.stop, out[i].step)
            if part.step is not None:
                out[i] = slice(out[i].start, out[i].stop, part.step)
        x, y, t = out
        if x.step != self.res[0] or y.step != self.res[1]:
            return None  # torchgeo would resample
        return x, y, t

    def locate(self, x: slice, y: slice) -> tuple[CachedScene, slice, slice] | None:
        """The cached scene holding the patch and the patch's rows and columns in it."""
        if not len(self.scenes):
            return None
        xres, yres = self.res
        x0, x1, y0, y1 = float(x.start), float(x.stop), float(y.start), float(y.stop)
        b = self._boxes
        tol_x, tol_y = GRID_TOLERANCE * xres, GRID_TOLERANCE * yres
        inside = (
            (x0 >= b[:, 0] - tol_x)
            & (x1 <= b[:, 2] + tol_x)
            & (y0 >= b[:, 1] - tol_y)
            & (y1 <= b[:, 3] + tol_y)
        )
        hits = np.flatnonzero(inside)
        if not hits.size:
            return None
        scene = self.scenes[int(hits[0])]
        edges = np.array(
            [
                (x0 - scene.left) / xres,
                (x1 - scene.left) / xres,
                (scene.top - y1) / yres,
                (scene.top - y0) / yres,
            ]
        )
        whole = np.round(edges)
        if np.abs(edges - whole).max() > GRID_TOLERANCE:
            return None  # off the grid: torchgeo resamples
        c0, c1, r0, r1 = (int(v) for v in whole)
        h, w = scene.shape
        if not (0 <= c0 < c1 <= w and 0 <= r0 < r1 <= h):
            return None
        return scene, slice(r0, r1), slice(c0, c1)

    def sample(self, index: GeoSlice) -> Sample | None:
        """The raw (uncleaned) sample torchgeo would read at ``index``, or None."""
        resolved = self.resolve(index)
        if resolved is None:
            return None
        x, y, t = resolved
        found = self.locate(x, y)
        if found is None:
            return None
        scene, rows, cols = found
        # same construction as torchgeo's RasterDataset.__getitem__ / _slice_to_tensor
        bounds = [
            x.start,
            x.stop,
            x.step,
            y.start,
            y.stop,
            y.step,
            t.start.timestamp(),
            t.stop.timestamp(),
            t.step,
        ]
        transform = rasterio.transform.from_origin(x.start, y.stop, x.step, y.step)
        sample: Sample = {"bounds": torch.tensor(bounds), "transform": torch.tensor(transform)}
        # copies: the cleaner writes NaN into the image in place
        sample["image"] = scene.image[:, rows, cols].clone(memory_format=torch.contiguous_format)
        if scene.mask is not None:
            sample["mask"] = scene.mask[rows, cols].to(
                torch.long, memory_format=torch.contiguous_format, copy=True
            )
        return sample


class OpticalSarScenes(IntersectionDataset):
    """Optical & SAR (& labels) for the scenes of one split, optical grid as reference.

    Samples hold ``image`` (optical bands then SAR bands, float, NaN where nodata),
    ``mask`` (class indices, IGNORE_INDEX for background/nodata) when labels exist,
    ``bounds`` and ``transform`` of the patch.

    Patches are served from the split's :class:`SceneCache` when it fits the memory
    budget (built on first use or by :meth:`build_scene_cache`; DataLoader workers forked
    after that share it copy-on-write), otherwise read by torchgeo; both give the same
    sample.
    """

    optical_dir: ClassVar[str] = "optical"
    sar_dir: ClassVar[str] = "sar"
    label_dir: ClassVar[str] = "labels"
    #: The class scheme of a dataset that has one; a generic folder of scenes has none and
    #: must be given its scheme.
    default_classes: ClassVar[ClassScheme | None] = None

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        scenes: dict[str, list[str]] | None = None,
        routing: BandRouting | None = None,
        classes: ClassScheme | None = None,
        labels: bool = True,
        transforms: Callable[[Sample], Sample] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.routing = routing or BandRouting(("B", "G", "R", "NIR"), ("VV", "VH"))
        self._verify()
        scheme = classes or self.default_classes
        if scheme is None:
            raise InputError(f"{self.root}: give the scenes' class scheme (data.classes)")
        self.classes = scheme
        self.scenes = scenes or self.default_split()
        if split not in self.scenes:
            raise InputError(f"unknown split {split!r}; expected one of {sorted(self.scenes)}")
        self.scene_names = list(self.scenes[split])
        if not self.scene_names:
            raise InputError(f"{self.root}: split {split!r} has no scenes")

        optical = [self.scene_path(self.optical_dir, n) for n in self.scene_names]
        sar = [self.scene_path(self.sar_dir, n) for n in self.scene_names]
        for o, s in zip(optical, sar, strict=True):
            check_overlap(o, s, "SAR")
        offsets = self.pixel_grid_offsets()
        opt_ds = OpticalRaster(
            optical,
            self.routing.optical_bands,
            pixel_grid_offsets=offsets,
            band_indices=self.routing.optical_indices,
        )
        # SAR and labels are indexed on the optical grid from the start (torchgeo would
        # otherwise re-index them, and print about it, when they are intersected)
        grid = {"crs": opt_ds.crs, "res": opt_ds.res, "pixel_grid_offsets": offsets}
        sar_ds = SarRaster(sar, self.routing.sar_bands, **grid)
        joined: Any = IntersectionDataset(
            opt_ds, sar_ds, spatial_only=True, collate_fn=collate_intersection
        )
        self.label_paths: list[Path] = []
        if labels:
            self.label_paths = [self.scene_path(self.label_dir, n) for n in self.scene_names]
            for o, lab in zip(optical, self.label_paths, strict=True):
                check_overlap(o, lab, "label", cover=True)
            lab_ds = LabelRaster(self.label_paths, **grid)
            first, second = joined, lab_ds
        else:
            first, second = opt_ds, sar_ds
            lab_ds = None
        self._optical = opt_ds
        self._leaves: tuple[GeoDataset, ...] = tuple(
            d for d in (opt_ds, sar_ds, lab_ds) if d is not None
        )
        self.scene_cache: SceneCache | None = None
        self._scene_cache_done = False
        self.cleaner = SampleCleaner(
            len(self.routing.optical_bands), read_nodata(optical), read_nodata(sar), self.classes
        )
        self.user_transforms = transforms
        super().__init__(
            first,
            second,
            spatial_only=True,
            collate_fn=collate_intersection,
            transforms=self._transform,
        )

    def __getitem__(self, index: GeoSlice) -> Sample:
        """The patch at ``index``: sliced from the scene cache where it can be, else read
        by torchgeo (index queries, windowed reads, SAR warped onto the optical grid)."""
        cache = self.build_scene_cache()
        sample = cache.sample(index) if cache is not None else None
        if sample is None:
            return super().__getitem__(index)
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def build_scene_cache(self) -> SceneCache | None:
        """Read the split's scenes into memory once, if they fit the budget.

        Called on first access; the datamodule calls it as it builds a split's dataset,
        so that DataLoader workers (forked later) share one copy, copy-on-write, instead
        of each reading the scenes. Returns None when the cache is off
        (``GOPT_GEO_SCENE_CACHE_MB=0``), over budget, or no scene qualifies.
        """
        if self._scene_cache_done:
            return self.scene_cache
        self._scene_cache_done = True
        budget = scene_cache_budget()
        if budget <= 0:
            return None
        plan = self._cacheable_scenes()
        channels = len(self.routing.optical_bands) + len(self.routing.sar_bands)
        per_pixel = 4 * channels + (1 if self.label_paths else 0)
        if not plan or sum(h * w for *_, h, w in plan) * per_pixel > budget:
            return None
        scenes: list[CachedScene] = []
        total = 0
        for name, (x0, y0, x1, y1), _, _ in plan:
            # the torchgeo path itself, over the whole scene, without cleaning
            raw = self.collate_fn([ds[x0:x1, y0:y1] for ds in self.datasets])
            mask = raw.get("mask")
            scene = CachedScene(
                name,
                float(x0),
                float(y1),
                raw["image"].contiguous(),
                _smallest_int(mask) if mask is not None else None,
            )
            total += scene.nbytes
            if total > budget:  # labels wider than estimated
                return None
            scenes.append(scene)
        self.scene_cache = SceneCache(scenes, self.res, self._optical.bounds)
        return self.scene_cache

    def _cacheable_scenes(
        self,
    ) -> list[tuple[str, tuple[float, float, float, float], int, int]]:
        """(name, bounds, height, width) of each optical scene the cache can answer for.

        A scene qualifies when it lies on the dataset's pixel grid, overlaps this split's
        index (row splits clip it), and every source file that overlaps it contains it
        whole: a file cut by the scene's edge is read by torchgeo at a patch-dependent
        scale (rasterio's merge rounds the clipped window), which slicing cannot repeat.
        """
        xres, yres = self.res
        # a footprint short of the scene's edge by float noise (a reprojected SAR file's
        # bounds) contains it: torchgeo's window there is within GDAL's whole-pixel slack
        slack = GRID_TOLERANCE * min(xres, yres)
        footprint = self.index.geometry
        plan = []
        for path, geom in zip(
            self._optical.index["filepath"], self._optical.index.geometry, strict=True
        ):
            x0, y0, x1, y1 = geom.bounds
            box = shapely.box(x0, y0, x1, y1)
            w, h = (x1 - x0) / xres, (y1 - y0) / yres
            if abs(w - round(w)) > GRID_TOLERANCE or abs(h - round(h)) > GRID_TOLERANCE:
                continue
            if not (footprint.intersection(box).area > 0).any():
                continue
            ok = True
            for leaf in self._leaves:
                geoms = leaf.index.geometry
                overlapping = geoms[geoms.intersection(box).area > 0]
                grown = overlapping.buffer(slack, join_style="mitre")
                if overlapping.empty or not grown.covers(box).all():
                    ok = False
                    break
            if ok:
                plan.append((Path(path).stem, (x0, y0, x1, y1), round(h), round(w)))
        return plan

    def _transform(self, sample: Sample) -> Sample:
        sample = self.cleaner(sample)
        if self.user_transforms is not None:
            sample = self.user_transforms(sample)
        return sample

    # -- layout --------------------------------------------------------------------------
    def scene_path(self, folder: str, name: str) -> Path:
        path = self.root / folder / f"{name}.tif"
        if not path.exists():
            raise InputError(f"{path}: file not found (scene {name!r} in {self.root})")
        return path

    def available_scenes(self) -> list[str]:
        return sorted(p.stem for p in (self.root / self.optical_dir).glob("*.tif"))

    def default_split(self) -> dict[str, list[str]]:
        """Without an explicit split: one validation and one test scene, the rest train."""
        return split_scenes(self.available_scenes(), val=1, test=1)

    def _verify(self) -> None:
        """Check that the folder layout exists, naming what is missing."""
        missing = [d for d in (self.optical_dir, self.sar_dir) if not (self.root / d).is_dir()]
        if missing:
            raise InputError(
                f"{self.root}: expected folders {self.optical_dir}/, {self.sar_dir}/ and "
                f"{self.label_dir}/ of .tif scenes; missing {', '.join(m + '/' for m in missing)}"
            )

    def pixel_grid_offsets(self) -> dict[str, tuple[float, float]]:
        """Disjoint pixel-grid placements for scenes without a CRS (see rasters.py)."""
        offsets: dict[str, tuple[float, float]] = {}
        x = 0.0
        for name in sorted(set().union(*self.scenes.values())):
            path = self.root / self.optical_dir / f"{name}.tif"
            if not path.exists():
                continue
            with open_raster(path) as src:
                if src.crs is not None:
                    continue
                offsets[name] = (x, 0.0)
                x += src.width + 10_000
        return offsets

    def plot(self, sample: Sample, show_titles: bool = True, suptitle: str | None = None) -> Any:
        """Optical RGB, SAR (first band, dB) and labels side by side."""
        from .plotting import plot_sample

        return plot_sample(sample, self.routing, self.classes, show_titles, suptitle)
