"""torchgeo raster datasets for optical, SAR and label scenes, and their combination.

The optical raster's grid is the reference grid (design §1): SAR and labels are
combined with ``&`` (torchgeo ``IntersectionDataset``, optical first) so torchgeo warps
them onto it. Band names are given per instance because they differ between archives
(WHU-OPT-SAR's optical band order is not documented; its SAR has one band).

Rasters without a CRS (possible for WHU-OPT-SAR) are placed on a *pixel grid*: one
unit per pixel, each scene at its own offset so that scenes never overlap in the
index. torchgeo itself cannot index such files (it needs a CRS or GCPs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from torchgeo.datasets import RasterDataset
from torchgeo.datasets.utils import Sample

from ..compat import torchgeo_load_warp_file
from ..errors import InputError
from ..io import band_indexes, open_raster, value_counts
from .classes import IGNORE_INDEX, ClassScheme

#: Stand-in CRS for rasters without one: a local engineering CRS in metres, one metre
#: per pixel. It is never written to an output; it only lets torchgeo index the files.
PIXEL_GRID_CRS = CRS.from_wkt('LOCAL_CS["pixel grid",UNIT["metre",1]]')


class BandedRaster(RasterDataset):
    """A RasterDataset whose band names are chosen per instance.

    ``band_names`` are the bands to read, in the order the model takes them. Files whose
    bands carry descriptions are read by name (a 13-band Sentinel-2 file serves a B, G,
    R, NIR config as it is); files without are read at ``band_indices`` (1-based) or as
    their first bands (:func:`gopt_geo.io.band_indexes`). Every file of one dataset must
    lay its bands out alike. Explicit files are checked up front, so a missing,
    unreadable or too-small file is reported by name instead of being skipped silently,
    as torchgeo does with unreadable files.
    """

    filename_glob = "*.tif"
    all_bands: tuple[str, ...] = ()
    role = "raster"
    #: every file lies on the grid it is read onto (the optical scenes themselves, SAR
    #: co-registered with them): read nearest-neighbour, i.e. exactly. torchgeo reads
    #: image rasters bilinearly, and window bounds off the grid by float noise (degrees)
    #: then let a valid neighbour leak into a no-data pixel, which would be trained and
    #: scored although prediction maps it as no data.
    on_grid = False

    @property
    def resampling(self) -> Resampling:
        return Resampling.nearest if self.on_grid else super().resampling

    def __init__(
        self,
        paths: Path | Iterable[Path],
        band_names: Sequence[str] | None = None,
        crs: Any = None,
        res: float | tuple[float, float] | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        pixel_grid_offsets: dict[str, tuple[float, float]] | None = None,
        cache: bool = True,
        band_indices: Sequence[int] = (),
    ) -> None:
        names = tuple(band_names) if band_names is not None else tuple(self.all_bands)
        self.pixel_grid_offsets = pixel_grid_offsets or {}
        files = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
        layout: tuple[list[int], Path] | None = None
        for f in files:
            if f.suffix.lower() in {".tif", ".tiff"} or not f.is_dir():
                with open_raster(f) as src:
                    # a label raster has one band of codes, whatever it is called
                    indexes = (
                        band_indexes(f, src, names, self.role, band_indices)
                        if self.is_image
                        else [1]
                    )
                    width = src.count
                if layout is not None and indexes != layout[0]:
                    raise InputError(
                        f"{f}: {self.role} bands {list(names)} are bands {indexes} here but "
                        f"{layout[0]} in {layout[1]}; every file must lay its bands out alike"
                    )
                layout = layout or (indexes, f)
        # torchgeo reads ``bands`` at their positions in ``all_bands``: name the file's
        # bands so that each configured name sits at the band it is read from
        positions = layout[0] if layout else list(range(1, len(names) + 1))
        slots = [
            f"_band{i}" for i in range(1, max([*positions, len(names), width if layout else 0]) + 1)
        ]
        for name, index in zip(names, positions, strict=True):
            slots[index - 1] = name
        self.all_bands = tuple(slots)
        super().__init__(
            [str(f) for f in files],
            crs=crs,
            res=res,
            bands=names or None,
            transforms=transforms,
            cache=cache,
        )

    def _load_warp_file(self, filepath: Path, crs: Any = None) -> Any:
        """Place rasters without a CRS on the pixel grid; defer to torchgeo otherwise."""
        src = rasterio.open(filepath)
        if src.crs is not None:
            src.close()
            return torchgeo_load_warp_file(self, filepath, crs)
        xoff, yoff = self.pixel_grid_offsets.get(Path(filepath).stem, (0.0, 0.0))
        transform = Affine(1.0, 0.0, xoff, 0.0, -1.0, yoff)
        return WarpedVRT(
            src,
            src_crs=PIXEL_GRID_CRS,
            src_transform=transform,
            crs=PIXEL_GRID_CRS,
            transform=transform,
            width=src.width,
            height=src.height,
        )


class OpticalRaster(BandedRaster):
    """Optical reflectance (default band names: B, G, R, NIR)."""

    all_bands = ("B", "G", "R", "NIR")
    rgb_bands = ("R", "G", "B")
    role = "optical"


class SarRaster(BandedRaster):
    """SAR backscatter (default band names: VV, VH); warped onto the optical grid."""

    all_bands = ("VV", "VH")
    role = "SAR"


class LabelRaster(BandedRaster):
    """Land-cover codes on the optical grid (nearest-neighbour, integer)."""

    all_bands = ("label",)
    is_image = False
    role = "label"


def collate_intersection(samples: Sequence[Sample]) -> Sample:
    """Join samples of the same patch from several datasets.

    Images are stacked along channels in dataset order (optical first), the mask is
    taken from whichever dataset has one, and ``bounds``/``transform`` from the first:
    torchgeo's default ``concat_samples`` concatenates those too (9 -> 18 -> 27 values).
    """
    out: Sample = {"bounds": samples[0]["bounds"], "transform": samples[0]["transform"]}
    images = [s["image"] for s in samples if "image" in s]
    if images:
        out["image"] = torch.cat(images, dim=-3)
    for s in samples:
        if "mask" in s:
            out["mask"] = s["mask"]
    return out


class SampleCleaner:
    """Turns a raw joined sample into a training sample.

    - pixels that are optical nodata, SAR nodata or outside the SAR footprint become
      NaN in the image (see :meth:`BandRouting.prepare`) and IGNORE_INDEX in the mask;
    - label codes become contiguous class indices, whatever integers they are (-1 "no
      data" in an int16 raster stays ignored: a code is never clamped onto a class's);
      the label raster's nodata and unknown codes are ignored (the datamodule refuses
      unknown codes up front with :func:`check_label_codes`).
    """

    def __init__(
        self,
        n_optical: int,
        optical_nodata: float | None,
        sar_nodata: float | None,
        scheme: ClassScheme,
        label_nodata: float | None = None,
    ) -> None:
        self.n_optical = n_optical
        self.optical_nodata = optical_nodata
        self.sar_nodata = sar_nodata
        self.label_nodata = label_nodata
        self.codes = list(scheme.codes)

    def invalid(self, image: torch.Tensor) -> torch.Tensor:
        opt, sar = image[: self.n_optical], image[self.n_optical :]
        bad = torch.isnan(image).any(0)
        if self.optical_nodata is not None:
            bad |= (opt == self.optical_nodata).all(0)
        if self.sar_nodata is not None and sar.shape[0]:
            bad |= (sar == self.sar_nodata).any(0)
        return bad

    def indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Class index of each code (int64), IGNORE_INDEX for every other value."""
        codes = codes.long()
        mask = torch.full_like(codes, IGNORE_INDEX)
        for i, code in enumerate(self.codes):
            mask[codes == code] = i
        if self.label_nodata is not None and np.isfinite(self.label_nodata):
            mask[codes == int(self.label_nodata)] = IGNORE_INDEX
        return mask

    def __call__(self, sample: Sample) -> Sample:
        image = sample["image"].float()
        bad = self.invalid(image)
        image[:, bad] = float("nan")
        sample["image"] = image
        if "mask" in sample:
            mask = self.indices(sample["mask"])
            mask[bad] = IGNORE_INDEX
            sample["mask"] = mask
        return sample


def label_codes(path: str | Path) -> dict[int, int]:
    """Pixels per code of a label raster (its nodata left out), read block by block:
    every integer the raster's type holds is counted as it is (-1, 255, 1000)."""
    with open_raster(path) as src:
        return value_counts(src, skip_nodata=True)


def check_label_codes(paths: Iterable[str | Path], scheme: ClassScheme) -> None:
    """Fail when a label raster holds codes outside the class scheme: one line naming
    the codes, the file and the config keys that would take them."""
    valid = scheme.valid_codes()
    for path in paths:
        bad = sorted(set(label_codes(path)) - valid)
        if bad:
            raise InputError(
                f"{path}: label values {bad} are outside the code map (classes "
                f"{scheme.codes}, ignored {list(scheme.ignore_codes)}); declare them in "
                "data.classes or list them in data.ignore_codes"
            )


def read_nodata(paths: Sequence[str | Path]) -> float | None:
    """The nodata value of the first file (files of one role share it)."""
    if not paths:
        return None
    with open_raster(paths[0]) as src:
        return src.nodata
