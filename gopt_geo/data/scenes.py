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

Disk cache: a split too large for the budget (every split of WHU-OPT-SAR) is cached on
disk instead (disk_cache.py): each scene is read once, through the same torchgeo path, in
strips of rows, into ``.npy`` files under ``GOPT_GEO_SCENE_CACHE_DIR`` (default
``~/.cache/gopt-geo/scenes``; ``off`` turns it off), keyed by the source files' identity
and the band routing. The arrays are memory-mapped read-only; a :class:`CachedScene`
whose arrays are mapped pickles as its folder, so DataLoader workers (forked or
spawned) map the same files instead of copying them. Patches are sliced from the mapped
arrays exactly as from the in-memory ones.

Why one module over 500 lines: the dataset and its scene cache are one contract (a
cached patch must equal the dataset's own read, pixel for pixel), and the cache's
`locate`/`resolve` are written against the dataset's index; the disk storage itself
lives in :mod:`.disk_cache`.
"""

from __future__ import annotations

import copy
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import rasterio
import rasterio.transform
import shapely
import torch
import torchgeo
from torchgeo.datasets import GeoDataset, IntersectionDataset
from torchgeo.datasets.utils import GeoSlice, Sample

from ..errors import InputError
from ..io import check_overlap, open_raster, same_grid
from . import disk_cache
from .bands import BandRouting
from .classes import IGNORE_INDEX, ClassScheme
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
#: Environment override of :data:`SCENE_CACHE_BYTES`, in MiB; 0 turns the scene cache
#: off, in memory and on disk (every patch is read by torchgeo).
SCENE_CACHE_ENV = "GOPT_GEO_SCENE_CACHE_MB"
#: Bytes of image read at once while a scene is written to the disk cache: a WHU-OPT-SAR
#: scene is about 400 MB as float32, so it is read in strips of rows of about this size.
STRIP_BYTES = 32 * 2**20
#: Scenes read at once while the disk cache is built (GDAL releases the GIL while it
#: reads and warps, so threads overlap).
BUILD_THREADS = 4
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

    ``image`` is [C, H, W] (optical then SAR on the optical grid): float32 in memory; on
    disk float32 or a narrower dtype that holds every value exactly (uint8 for
    WHU-OPT-SAR), so a patch converted to float32 is torchgeo's. ``mask`` is the raw
    label codes [H, W] (or None); pixel (0, 0) has its corner at (``left``, ``top``).
    ``source`` is the disk cache entry the arrays are mapped from, if any: such a scene
    pickles as that folder and is mapped again where it is unpickled.
    """

    name: str
    left: float
    top: float
    image: torch.Tensor
    mask: torch.Tensor | None
    source: Path | None = None

    def __reduce_ex__(self, protocol: Any) -> Any:
        if self.source is None:
            return super().__reduce_ex__(protocol)
        return mapped_scene, (self.source, self.name, self.left, self.top)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    @property
    def nbytes(self) -> int:
        n = self.image.numel() * self.image.element_size()
        if self.mask is not None:
            n += self.mask.numel() * self.mask.element_size()
        return n


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over a read-only mapped array, without copying it. torch warns that it
    cannot mark the tensor read-only; nothing writes to it (:meth:`SceneCache.sample`
    copies every patch it serves)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def mapped_scene(folder: str | Path, name: str, left: float, top: float) -> CachedScene:
    """The disk cache entry in ``folder`` as a :class:`CachedScene`, mapped read-only."""
    stored = disk_cache.open_entry(folder)
    mask = _tensor(stored.mask) if stored.mask is not None else None
    return CachedScene(name, left, top, _tensor(stored.image), mask, stored.folder)


class ScenePlan(NamedTuple):
    """A scene the cache can answer for: its optical bounds, size and source files."""

    name: str
    bounds: tuple[float, float, float, float]
    height: int
    width: int
    #: every file of every role (optical, SAR, labels) that overlaps the scene
    sources: tuple[str, ...]


class SceneCache:
    """The scenes of a split in memory (or mapped from disk), answering patches by slicing.

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
        # copies: the cleaner writes NaN into the image in place (and mapped arrays are
        # read-only); a narrow dtype on disk holds torchgeo's float32 values exactly
        sample["image"] = scene.image[:, rows, cols].to(
            torch.float32, memory_format=torch.contiguous_format, copy=True
        )
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

    Patches are served from the split's :class:`SceneCache` (built on first use or by
    :meth:`build_scene_cache`): in memory when the split fits the budget (DataLoader
    workers forked after that share it copy-on-write), else mapped from the disk cache
    (workers map the same files), else read by torchgeo; all give the same sample.
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
        # files read on their own grid are read exactly (BandedRaster.on_grid)
        opt_ds.on_grid = all(_native(o, opt_ds.crs, opt_ds.res) for o in optical)
        sar_ds.on_grid = opt_ds.on_grid and all(
            _same_grid(o, s) for o, s in zip(optical, sar, strict=True)
        )
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
            len(self.routing.optical_bands),
            read_nodata(optical),
            read_nodata(sar),
            self.classes,
            label_nodata=read_nodata(self.label_paths),
        )
        #: boxes (x0, y0, x1, y1) this split may label (a row split's bands); a patch
        #: reaching past them has its mask ignored there, so a split scores only its own
        #: pixels (None: the whole scenes)
        self.region: np.ndarray | None = None
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
            sample = super().__getitem__(index)
        elif self.transforms is not None:
            sample = self.transforms(sample)
        return self.mask_outside_region(sample, index)

    def restrict_to(self, boxes: Sequence[tuple[float, float, float, float]]) -> None:
        """Label only inside ``boxes`` (x0, y0, x1, y1 in the dataset's CRS): a gridded
        validation or test patch that reaches past its band into the guard gap (or into
        another split's rows) keeps its image, for context, but its mask is ignored there,
        so a split is scored on its own pixels only, each once."""
        self.region = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)

    def mask_outside_region(self, sample: Sample, index: GeoSlice) -> Sample:
        """IGNORE_INDEX in the mask wherever a pixel's centre lies outside :attr:`region`."""
        if self.region is None or "mask" not in sample:
            return sample
        parts = (index,) if isinstance(index, slice) else tuple(index)
        if len(parts) < 2:
            return sample
        x, y = parts[0], parts[1]
        mask = sample["mask"]
        h, w = mask.shape[-2:]
        x0, x1, y0, y1 = float(x.start), float(x.stop), float(y.start), float(y.stop)
        cx = x0 + (np.arange(w) + 0.5) * (x1 - x0) / w
        cy = y1 - (np.arange(h) + 0.5) * (y1 - y0) / h
        keep = np.zeros((h, w), dtype=bool)
        for bx0, by0, bx1, by1 in self.region:
            rows = (cy > by0) & (cy < by1)
            cols = (cx > bx0) & (cx < bx1)
            keep |= rows[:, None] & cols[None, :]
        if not keep.all():
            mask = mask.clone()
            mask[..., torch.from_numpy(~keep)] = IGNORE_INDEX
            sample["mask"] = mask
        return sample

    def build_scene_cache(
        self, disk_dir: str | Path | None = "auto", threads: int | None = None
    ) -> SceneCache | None:
        """Cache the split's scenes once: in memory if they fit the budget, else on disk.

        Called on first access; the datamodule calls it as it builds a split's dataset,
        so that DataLoader workers (forked later) share one copy, copy-on-write, instead
        of each reading the scenes. A split over the budget is cached on disk under
        ``disk_dir`` (``"auto"``: ``GOPT_GEO_SCENE_CACHE_DIR`` or the user's cache
        folder; None or ``"off"``: no disk cache; see :func:`disk_cache.resolve_cache_dir`),
        built with ``threads`` scenes at a time. Returns None when the cache is off
        (``GOPT_GEO_SCENE_CACHE_MB=0``), over budget without a disk cache, or no scene
        qualifies.
        """
        if self._scene_cache_done:
            return self.scene_cache
        self._scene_cache_done = True
        budget = scene_cache_budget()
        if budget <= 0:
            return None
        plan = self._cacheable_scenes()
        if not plan:
            return None
        channels = len(self.routing.optical_bands) + len(self.routing.sar_bands)
        per_pixel = 4 * channels + (1 if self.label_paths else 0)
        if sum(p.height * p.width for p in plan) * per_pixel <= budget:
            self.scene_cache = self._memory_cache(plan, budget)
        if self.scene_cache is None:
            folder = disk_cache.resolve_cache_dir(disk_dir)
            if folder is not None:
                self.scene_cache = self._disk_cache(plan, folder, threads)
        return self.scene_cache

    def _read_raw(
        self, leaves: Sequence[GeoDataset], x0: float, y0: float, x1: float, y1: float
    ) -> Sample:
        """The raw (uncleaned) sample of ``leaves`` over a box: the torchgeo path itself
        (what :class:`IntersectionDataset` does with this dataset's leaves)."""
        return collate_intersection([leaf[x0:x1, y0:y1] for leaf in leaves])

    def _memory_cache(self, plan: Sequence[ScenePlan], budget: int) -> SceneCache | None:
        """Every planned scene read whole into memory; None past the budget."""
        scenes: list[CachedScene] = []
        total = 0
        for p in plan:
            x0, y0, x1, y1 = p.bounds
            raw = self._read_raw(self._leaves, x0, y0, x1, y1)
            mask = raw.get("mask")
            scene = CachedScene(
                p.name,
                float(x0),
                float(y1),
                raw["image"].contiguous(),
                _smallest_int(mask) if mask is not None else None,
            )
            total += scene.nbytes
            if total > budget:  # labels wider than estimated
                return None
            scenes.append(scene)
        return SceneCache(scenes, self.res, self._optical.bounds)

    # -- disk cache ----------------------------------------------------------------------
    def cache_recipe(self) -> dict[str, Any]:
        """Everything besides the source files that the cached arrays depend on: which
        bands are read from where, the grid and resampling they are read onto, and the
        reading libraries' versions. Cleaning (nodata, class scheme) is applied to every
        patch after the cache, so it is not part of it."""
        leaves = []
        for leaf in self._leaves:
            leaves.append(
                {
                    "role": type(leaf).__name__,
                    "bands": list(getattr(leaf, "bands", ()) or ()),
                    "band_indexes": list(getattr(leaf, "band_indexes", None) or ()),
                    "dtype": str(getattr(leaf, "dtype", "")),
                    "resampling": str(getattr(leaf, "resampling", "")),
                }
            )
        crs = self._optical.crs
        return {
            "leaves": leaves,
            "crs": crs.to_wkt() if crs is not None else None,
            "res": list(self.res),
            "torchgeo": torchgeo.__version__,
            "rasterio": rasterio.__version__,
            "gdal": rasterio.__gdal_version__,
        }

    def _disk_cache(
        self, plan: Sequence[ScenePlan], folder: Path, threads: int | None
    ) -> SceneCache | None:
        """Every planned scene mapped from the disk cache under ``folder``, building the
        entries that are missing (in parallel, with a progress bar on a terminal)."""
        try:
            store = disk_cache.SceneStore(folder)
        except OSError as e:
            _note(
                f"scene cache: cannot use {folder} ({e.strerror or e}); set "
                f"{disk_cache.CACHE_DIR_ENV} to another folder ('off' to silence this). "
                "Patches are read by torchgeo."
            )
            return None
        recipe = self.cache_recipe()
        start = time.perf_counter()
        n_threads = max(1, min(threads or BUILD_THREADS, os.cpu_count() or 1, len(plan)))
        local = threading.local()

        def one(p: ScenePlan) -> tuple[CachedScene | None, bool]:
            if not hasattr(local, "leaves"):  # each thread its own file handles
                local.leaves = _uncached_copies(self._leaves)
            try:
                return self._disk_scene(store, recipe, p, local.leaves)
            except OSError as e:
                _note(f"scene cache: scene {p.name} not cached on disk ({e}); read by torchgeo")
                return None, False

        from tqdm.auto import tqdm

        results: list[tuple[CachedScene | None, bool]] = []
        with (
            ThreadPoolExecutor(n_threads, thread_name_prefix="scene-cache") as pool,
            # disable=None: a bar on a terminal only, not in logs
            tqdm(
                total=len(plan), unit="scene", desc=f"scene cache {self.split}", disable=None
            ) as bar,
        ):
            for result in pool.map(one, plan):
                results.append(result)
                bar.update()
        scenes = [s for s, _ in results if s is not None]
        if not scenes:
            return None
        built = sum(b for _, b in results)
        size = sum(s.nbytes for s in scenes)
        seconds = time.perf_counter() - start
        _note(
            f"scene cache: split {self.split!r}, {len(scenes)} scene(s), "
            f"{disk_cache.human_size(size)} on disk in {folder} "
            + (f"({built} built in {seconds:.1f} s)" if built else "(reused)")
        )
        return SceneCache(scenes, self.res, self._optical.bounds)

    def _disk_scene(
        self,
        store: disk_cache.SceneStore,
        recipe: dict[str, Any],
        p: ScenePlan,
        leaves: Sequence[GeoDataset],
    ) -> tuple[CachedScene, bool]:
        """One scene's entry, built if missing (or stale); (scene, built here?)."""
        key = disk_cache.entry_key(p.sources, recipe)
        channels = len(self.routing.optical_bands) + len(self.routing.sar_bands)
        shape = (channels, p.height, p.width)
        x0, y0, x1, y1 = p.bounds
        meta = {
            "sources": [disk_cache.file_identity(f) for f in p.sources],
            "recipe": recipe,
        }
        image_dtype, mask_dtype = self._narrow_dtypes(p)

        def fill(writer: disk_cache.SceneWriter) -> None:
            self._write_scene(writer, p, leaves)

        while True:
            try:
                stored, built = store.build(p.name, key, shape, image_dtype, mask_dtype, fill, meta)
                break
            except _Inexact as e:  # a value a narrow dtype cannot hold: store torchgeo's
                if e.part == "image" and image_dtype != np.float32:
                    image_dtype = np.dtype(np.float32)
                elif e.part == "mask" and mask_dtype not in (None, np.int64):
                    mask_dtype = np.dtype(np.int64)
                else:
                    raise
        if built:
            store.prune(p.name, p.sources, keep=key)
        return mapped_scene(stored.folder, p.name, float(x0), float(y1)), built

    def _narrow_dtypes(self, p: ScenePlan) -> tuple[np.dtype, np.dtype | None]:
        """The narrowest dtypes that can hold the scene's values exactly, judged from the
        source files' dtypes (checked strip by strip as they are written)."""
        image_dtypes, mask_dtype = [], None
        for leaf in self._leaves:
            files = [f for f in p.sources if f in set(leaf.index["filepath"])]
            dtypes = []
            for f in files:
                with open_raster(f) as src:
                    dtypes.append(np.dtype(src.dtypes[0]))
            if getattr(leaf, "is_image", True):
                image_dtypes += dtypes
            else:
                mask_dtype = _narrow(dtypes, np.dtype(np.int64), wide=np.dtype(np.int32))
        image = _narrow(image_dtypes, np.dtype(np.float32))
        if self.label_paths and mask_dtype is None:
            mask_dtype = np.dtype(np.int64)
        return image, (mask_dtype if self.label_paths else None)

    def _write_scene(
        self, writer: disk_cache.SceneWriter, p: ScenePlan, leaves: Sequence[GeoDataset]
    ) -> None:
        """Read the scene through torchgeo in strips of whole rows and store them.

        A strip is a patch on the scene's grid inside it: what :class:`SceneCache` relies
        on (a slice of the whole read is the patch read) makes the strips, put together,
        the whole-scene read.
        """
        x0, y0, x1, y1 = p.bounds
        yres = self.res[1]
        channels = writer.shape[0]
        rows = max(1, STRIP_BYTES // (4 * channels * p.width))
        for r0 in range(0, p.height, rows):
            r1 = min(p.height, r0 + rows)
            top = y1 if r0 == 0 else y1 - r0 * yres
            bottom = y0 if r1 == p.height else y1 - r1 * yres
            raw = self._read_raw(leaves, x0, bottom, x1, top)
            image = raw["image"].numpy()
            if image.shape != (channels, r1 - r0, p.width):
                raise OSError(f"torchgeo read {tuple(image.shape)} for rows {r0}:{r1}")
            stored = image.astype(writer.image_dtype)
            if stored.dtype != image.dtype and not np.array_equal(stored, image):
                raise _Inexact("image")
            mask = raw.get("mask")
            codes = None
            if writer.mask_dtype is not None and mask is not None:
                m = mask.numpy()
                codes = m.astype(writer.mask_dtype)
                if codes.dtype != m.dtype and not np.array_equal(codes, m):
                    raise _Inexact("mask")
            writer.write_rows(r0, stored, codes)

    def _cacheable_scenes(self) -> list[ScenePlan]:
        """Each optical scene the cache can answer for, with its source files.

        A scene qualifies when it lies on the dataset's pixel grid, overlaps this split's
        index (row splits clip it), and every source file that overlaps it contains it
        whole: a file cut by the scene's edge is read by torchgeo at a patch-dependent
        scale (rasterio's merge rounds the clipped window), which slicing cannot repeat.
        """
        xres, yres = self.res
        # a footprint short of the scene's edge by float noise (a reprojected SAR file's
        # bounds) contains it: torchgeo's window there is within GDAL's whole-pixel slack
        slack = GRID_TOLERANCE * min(xres, yres)
        footprint = self.index.geometry.to_numpy()
        plan = []
        for path, geom in zip(
            self._optical.index["filepath"], self._optical.index.geometry, strict=True
        ):
            x0, y0, x1, y1 = geom.bounds
            box = shapely.box(x0, y0, x1, y1)
            w, h = (x1 - x0) / xres, (y1 - y0) / yres
            if abs(w - round(w)) > GRID_TOLERANCE or abs(h - round(h)) > GRID_TOLERANCE:
                continue
            # shapely on the raw geometries, not geopandas: these are tests on the grid
            # (overlap, containment), which geopandas would warn about in a geographic CRS
            if not (shapely.area(shapely.intersection(footprint, box)) > 0).any():
                continue
            sources: list[str] = []
            for leaf in self._leaves:
                geoms = leaf.index.geometry.to_numpy()
                hit = shapely.area(shapely.intersection(geoms, box)) > 0
                grown = shapely.buffer(geoms[hit], slack, join_style="mitre")
                if not hit.any() or not shapely.covers(grown, box).all():
                    break
                sources += sorted(str(f) for f in leaf.index["filepath"][hit])
            else:
                plan.append(
                    ScenePlan(Path(path).stem, (x0, y0, x1, y1), round(h), round(w), tuple(sources))
                )
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


class _Inexact(Exception):
    """A value read for the disk cache that its narrow dtype cannot hold exactly."""

    def __init__(self, part: str) -> None:
        super().__init__(part)
        self.part = part  # "image" or "mask"


def _narrow(
    dtypes: Sequence[np.dtype], fallback: np.dtype, wide: np.dtype | None = None
) -> np.dtype:
    """One dtype, at most 2 bytes wide, that holds every value of ``dtypes`` exactly
    (torch converts these to float32 and long without loss), else ``wide`` for integers
    up to 32 bits (label codes: torch has no uint16 arithmetic), else ``fallback``."""
    if not dtypes or not all(np.issubdtype(d, np.integer) for d in dtypes):
        return fallback
    common = np.result_type(*dtypes)
    if common in (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.int16)):
        return common
    if wide is not None and common in (np.dtype(np.uint16), np.dtype(np.int32)):
        return wide
    return fallback


def _same_grid(a: Path, b: Path) -> bool:
    """Whether two rasters share CRS, transform and size (a SAR file co-registered with
    its optical scene, read without resampling)."""
    with open_raster(a) as sa, open_raster(b) as sb:
        return sa.crs is not None and same_grid(sa, sb)


def _native(path: Path, crs: Any, res: tuple[float, float]) -> bool:
    """Whether a raster is in ``crs`` at ``res`` (read onto its own grid); rasters
    without a CRS are placed on the pixel grid at their own resolution."""
    with open_raster(path) as src:
        if src.crs is None:
            return True
        return src.crs == crs and np.allclose(src.res, res, rtol=1e-9, atol=0)


def _uncached_copies(leaves: Sequence[GeoDataset]) -> list[GeoDataset]:
    """The leaves with their own file handles: torchgeo's handle cache is shared by every
    thread of a process, and one GDAL dataset must not be read by two threads at once."""
    out = []
    for leaf in leaves:
        twin = copy.copy(leaf)
        twin.cache = False  # type: ignore[attr-defined]
        out.append(twin)
    return out


def _note(message: str) -> None:
    """A one-line progress or fallback message on stderr (the cache's size and time)."""
    print(f"gopt-geo: {message}", file=sys.stderr, flush=True)
