"""A folder of co-registered optical + SAR (+ label) scenes as one torchgeo GeoDataset.

Layout (WHU-OPT-SAR's, and what ``gopt-geo synth`` writes)::

    root/
      optical/<scene>.tif     reference grid
      sar/<scene>.tif         any CRS / resolution; warped onto the optical grid
      labels/<scene>.tif      land-cover codes on the optical grid (optional for prediction)

Splits are made of whole scenes, so train, validation and test patches can never
overlap as long as the scenes themselves do not (map sheets, or ``synth`` output).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from torchgeo.datasets import IntersectionDataset
from torchgeo.datasets.utils import Sample

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


class OpticalSarScenes(IntersectionDataset):
    """Optical & SAR (& labels) for the scenes of one split, optical grid as reference.

    Samples hold ``image`` (optical bands then SAR bands, float, NaN where nodata),
    ``mask`` (class indices, IGNORE_INDEX for background/nodata) when labels exist,
    ``bounds`` and ``transform`` of the patch.
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
