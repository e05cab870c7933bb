"""Synthetic co-registered optical + SAR + label scenes, for tests, the demo and benchmarks.

A scene is four GeoTIFFs named after the scene, in WHU-OPT-SAR's folder layout (the
one :mod:`gopt_geo.data.scenes` reads): ``optical/<name>.tif``, ``sar/<name>.tif``,
``labels/<name>.tif`` and ``clouds/<name>.tif``. They imitate what gopt-geo meets in
real archives (WHU-OPT-SAR, Hubei), so that every consumer is exercised the way real
data exercises it:

* **Optical**: 4 bands B, G, R, NIR, uint16 surface reflectance x 10000, in a projected
  CRS (UTM 49N, EPSG:32649), ``nodata = 0``, optionally a nodata collar of
  ``nodata_collar`` pixels (reflectances are clipped to >= 1, so 0 only means nodata).
* **SAR**: 2 bands VV, VH, float32 backscatter in dB, in **EPSG:4326** at a resolution
  ``SAR_RESOLUTION_FACTOR`` (1.5x) coarser than the optical pixels, covering the optical
  footprint plus a margin of a pixel or two, or only part of it (``sar_coverage``).
  ``nodata = SAR_NODATA`` (-9999.0; a finite value so that ``==`` comparisons work).
  Because the grids differ in CRS and resolution, every consumer must warp the SAR onto
  the optical grid, as with real data.
* **Labels**: uint8 WHU-OPT-SAR codes on the optical grid (0 background, 10 farmland,
  20 city, 30 village, 40 water, 50 forest, 60 road, 70 others), colour table set.
* **Clouds**: uint8 0/1 mask on the optical grid.

Physics (plausible, and learnable by a small model in a few CPU minutes)
------------------------------------------------------------------------
*Land cover.* The land is cut into parcels: a Voronoi tessellation of jittered seed
points (about ``PARCEL_SIZE_M`` = 400 m apart), seen through a smooth domain warp so
that parcel borders bend like field and settlement edges. Each parcel gets one class
from smooth, large-scale "urbanness" and "vegetation" fields evaluated at its seed, so
cities cluster, villages scatter around them, forests form massifs, and farmland fills
the rest; a few parcels are background (0, unlabelled land). Class shares are fixed by
rank (about 7% city, 13% village, 25% forest, 5% others and 4% background parcels), and
every scene holds at least one city and one village parcel (so that small scenes
over-represent them). Roads (code 60, ~25 m wide) run along a random
subset of parcel borders, densest between urban parcels. Lakes (code 40, ~7% of the
area) are a thresholded smooth field that overrides everything else.

*Thin features* (:mod:`gopt_geo.data.synthetic_features`): what real 10 m imagery shows
and a model predicting at 1/4 resolution misses. Meandering rivers 1-3 px wide (~1.5% of
the pixels), straight canals 1-2 px wide on a rotated grid through farmland, fields of
small fish ponds (rectangles of 2-5 px a side) -- all water (40) -- and rural tracks 1-2
px wide with branches -- road (60) -- are drawn over the parcels and wide roads, under
the lakes; together about a third of the water and of the road pixels. Each kind has its
own signature (below). ``thin_features=False`` leaves them out and changes nothing else
(they have their own random stream), which is how the tests find them.

*Optical.* Each class has a mean spectrum (``CLASS_SPECTRA``): vegetation (farmland,
forest) is dark in the visible and bright in NIR (red edge), water is dark in NIR,
built-up surfaces are grey and flat. Parcels differ by a multiplicative factor (crop
type and stage: ~15% for farmland, 4-12% for the other classes), pixels by texture
noise (5-18%, strongest in built-up areas), and a smooth illumination/haze field adds
+-5%. **City and village share one
spectrum and one texture**: optical bands alone cannot tell them apart.

*SAR.* Each class has a mean backscatter (``CLASS_BACKSCATTER``, dB, typical C-band
values): calm water is the darkest (specular reflection away from the sensor), roads
and bare soil are dark, vegetation gives volume scattering (forest has the highest
VH/VV ratio of the natural classes), and built-up areas are bright through double bounce
between walls and ground -- dense **city ~8 dB brighter than village**, which is what
separates the two. Thin features have their own signatures: rivers, canals and ponds
are dark in NIR and in SAR and low in the visible, tracks bright grey in the optical and
bright in SAR (their embankments, tree rows and fences return a double bounce, where a
wide asphalt road is dark). Parcels differ by ~1 dB. Speckle is multiplicative: linear power
times a unit-mean Gamma variate with ``SAR_LOOKS`` looks. The SAR is rendered on the
optical grid (extended by a margin), then reprojected with
:func:`rasterio.warp.reproject` (``average`` resampling, in linear power, i.e.
multilooking) onto the coarser EPSG:4326 grid, and only then converted to dB.

*Clouds.* Thick cumulus: a smooth multi-octave field thresholded so that a fraction
``cloud_cover`` of the valid optical pixels is cloud (default drawn from 20-40% by the
seed). Inside the mask the optical signal is replaced by bright, nearly white cloud top
reflectance in all four bands (opaque: the land cover below is not recoverable from the
optical bands); a thin haze fringe (at most 50% opacity) surrounds it outside the mask.
SAR sees through clouds and is unaffected. Cloud shadows are not modelled.

Everything is deterministic for a given seed (same bytes twice). Separate random
streams drive the layout, the clouds, the optical noise and the speckle, so for example
changing ``cloud_cover`` does not change the land cover. Scenes are generated and
written in row blocks, so memory stays bounded for large scenes (8192 x 8192 and more);
files are written under a temporary name and renamed when complete.

Why one module over 500 lines: the landscape model, its rendering and the writing of
the rasters share the spectra tables and the seeded random streams that make a seed
give the same bytes; the thin features live in :mod:`.synthetic_features` and the
WHU-OPT-SAR layout in :mod:`.replica`.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine, from_origin
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
from gopt_geo.data.synthetic_features import (
    THIN_ALLOWED_ON,
    THIN_BACKSCATTER,
    THIN_CODES,
    THIN_KINDS,
    THIN_SPECTRA,
    THIN_TEXTURE,
    ThinFeatures,
)
from gopt_geo.errors import InputError
from gopt_geo.io import streaming_gdal_env

OPTICAL_BANDS: tuple[str, ...] = ("B", "G", "R", "NIR")
SAR_BANDS: tuple[str, ...] = ("VV", "VH")

#: Optical CRS: UTM zone 49N, where WHU-OPT-SAR (Hubei) lies.
OPTICAL_CRS = CRS.from_epsg(32649)
#: SAR CRS: geographic, so that the SAR must always be warped onto the optical grid.
SAR_CRS = CRS.from_epsg(4326)
#: SAR pixels are this many times larger than optical pixels (per axis).
SAR_RESOLUTION_FACTOR = 1.5
OPTICAL_NODATA = 0
SAR_NODATA = -9999.0
#: Equivalent number of looks of the speckle before multilooking by the reprojection.
SAR_LOOKS = 4.0
#: Upper-left corner (x, y) of the default scene in EPSG:32649: about 112.0 E, 30.5 N.
DEFAULT_ORIGIN = (600_000.0, 3_380_000.0)

#: Characteristic lengths in metres (converted to pixels with ``pixel_size``).
PARCEL_SIZE_M = 400.0
ROAD_WIDTH_M = 25.0
LAKE_SCALE_M = 2500.0
CLOUD_SCALE_M = 2000.0
URBAN_SCALE_M = 6000.0

#: Mean surface reflectance x 10000 per class code, bands (B, G, R, NIR).
CLASS_SPECTRA: dict[int, tuple[float, float, float, float]] = {
    0: (450.0, 750.0, 600.0, 2400.0),  # background: mixed grass and unmapped land
    10: (380.0, 700.0, 480.0, 3400.0),  # farmland: green crops, strong red edge
    20: (950.0, 1000.0, 1050.0, 1500.0),  # city: concrete and roofs ...
    30: (950.0, 1000.0, 1050.0, 1500.0),  # village: ... the same materials (optically alike)
    40: (650.0, 550.0, 320.0, 180.0),  # water: absorbs NIR
    50: (250.0, 480.0, 260.0, 2900.0),  # forest: darker canopy, high NIR
    60: (1100.0, 1100.0, 1100.0, 1300.0),  # road: asphalt / concrete
    70: (900.0, 1100.0, 1300.0, 1900.0),  # others: bare soil, construction sites
}
#: Mean backscatter in dB per class code, bands (VV, VH).
CLASS_BACKSCATTER: dict[int, tuple[float, float]] = {
    0: (-12.0, -19.0),
    10: (-11.0, -18.0),  # crops: moderate volume scattering
    20: (3.0, -5.0),  # dense city: double bounce, very bright
    30: (-5.0, -13.0),  # village: low, sparse buildings
    40: (-22.0, -28.0),  # calm water: specular, darkest
    50: (-7.5, -12.5),  # forest: volume scattering, high VH/VV
    60: (-17.0, -24.0),  # road: smooth surface
    70: (-14.0, -21.0),  # bare soil
}
#: Per-pixel relative texture noise of the optical bands per class code.
_TEXTURE = {0: 0.07, 10: 0.06, 20: 0.18, 30: 0.18, 40: 0.05, 50: 0.06, 60: 0.06, 70: 0.10}
#: Parcel-to-parcel spread (log-normal sigma) of the optical brightness per class code:
#: crops differ a lot between fields; built-up materials little, so that city and village
#: stay optically alike at every scale.
_PARCEL_SIGMA = {0: 0.10, 10: 0.15, 20: 0.04, 30: 0.04, 40: 0.0, 50: 0.08, 60: 0.0, 70: 0.12}
#: Probability that a border of a parcel of this class carries a road.
_ROAD_PROPENSITY = {0: 0.15, 10: 0.22, 20: 0.85, 30: 0.45, 40: 0.0, 50: 0.08, 60: 0.0, 70: 0.3}
#: Cloud-top reflectance x 10000 (B, G, R, NIR): bright and nearly white.
_CLOUD_SPECTRUM = (7800.0, 7700.0, 7600.0, 7100.0)
#: Pixels generated at a time (a block of whole rows; its height divides the 256-pixel
#: tiles), which bounds the memory of the generator whatever the scene size.
_BLOCK_PIXELS = 2**20

_CODES = np.array(sorted(CLASS_SPECTRA), dtype=np.uint8)
_CODE_INDEX = np.zeros(256, dtype=np.uint8)
_CODE_INDEX[_CODES] = np.arange(len(_CODES))
_SPECTRA = np.array([CLASS_SPECTRA[int(c)] for c in _CODES], dtype=np.float32)  # (K, 4)
_BACKSCATTER = np.array([CLASS_BACKSCATTER[int(c)] for c in _CODES], dtype=np.float32)
_TEXTURE_SIGMA = np.array([_TEXTURE[int(c)] for c in _CODES], dtype=np.float32)

# Materials: what a pixel looks like. The classes' first (index = position of the code in
# _CODES), then one per thin-feature kind (index = len(_CODES) + kind - 1).
_KINDS = sorted(THIN_KINDS)
_MATERIAL_SPECTRA = np.vstack(
    [_SPECTRA, np.array([THIN_SPECTRA[k] for k in _KINDS], dtype=np.float32)]
)
_MATERIAL_BACKSCATTER = np.vstack(
    [_BACKSCATTER, np.array([THIN_BACKSCATTER[k] for k in _KINDS], dtype=np.float32)]
)
_MATERIAL_TEXTURE = np.concatenate(
    [_TEXTURE_SIGMA, np.array([THIN_TEXTURE[k] for k in _KINDS], dtype=np.float32)]
)
#: Kind -> its material, its label code, and the land codes it may be drawn over.
_KIND_MATERIAL = np.zeros(max(_KINDS) + 1, dtype=np.uint8)
_KIND_CODE = np.zeros(max(_KINDS) + 1, dtype=np.uint8)
_KIND_ALLOWED = np.zeros((max(_KINDS) + 1, 256), dtype=bool)
for _kind in _KINDS:
    _KIND_MATERIAL[_kind] = len(_CODES) + _kind - 1
    _KIND_CODE[_kind] = THIN_CODES[_kind]
    _KIND_ALLOWED[_kind, list(THIN_ALLOWED_ON[_kind])] = True


@dataclass(frozen=True)
class SceneFiles:
    """The four files of one synthetic scene."""

    name: str
    optical: Path
    sar: Path
    labels: Path
    clouds: Path


def scene_files(out_dir: Path, name: str) -> SceneFiles:
    """Where :func:`make_scene` writes scene ``name`` in ``out_dir`` (one folder per layer)."""
    out_dir = Path(out_dir)
    return SceneFiles(
        name=name,
        optical=out_dir / "optical" / f"{name}.tif",
        sar=out_dir / "sar" / f"{name}.tif",
        labels=out_dir / "labels" / f"{name}.tif",
        clouds=out_dir / "clouds" / f"{name}.tif",
    )


# --------------------------------------------------------------------------- noise


class _ValueNoise:
    """Smooth random field: random values on a coarse lattice, smoothstep-interpolated.

    Evaluating it costs two gathers per pixel and needs no full-size temporaries, so any
    row block of a huge scene can be rendered on its own and blocks join seamlessly.
    """

    def __init__(
        self, rng: np.random.Generator, lo: tuple[float, float], extent: float, scale: float
    ):
        self.y0, self.x0 = lo
        self.scale = scale
        n = int(math.ceil(extent / scale)) + 3
        self.lattice = rng.random((n, n), dtype=np.float32)

    def _axis(self, coords: np.ndarray, origin: float) -> tuple[np.ndarray, np.ndarray]:
        u = (np.asarray(coords, dtype=np.float64) - origin) / self.scale
        i = np.floor(u)
        f = (u - i).astype(np.float32)
        i = np.clip(i.astype(np.intp), 0, self.lattice.shape[0] - 2)
        return i, f * f * (3.0 - 2.0 * f)

    def grid(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Values on the grid ys x xs (pixel-centre coordinates), shape (len(ys), len(xs))."""
        iy, fy = self._axis(ys, self.y0)
        ix, fx = self._axis(xs, self.x0)
        rows = self.lattice[iy] * (1.0 - fy)[:, None] + self.lattice[iy + 1] * fy[:, None]
        return rows[:, ix] * (1.0 - fx) + rows[:, ix + 1] * fx

    def points(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Values at scattered points (ys[i], xs[i])."""
        iy, fy = self._axis(ys, self.y0)
        ix, fx = self._axis(xs, self.x0)
        lat = self.lattice
        top = lat[iy, ix] * (1.0 - fx) + lat[iy, ix + 1] * fx
        bottom = lat[iy + 1, ix] * (1.0 - fx) + lat[iy + 1, ix + 1] * fx
        return top * (1.0 - fy) + bottom * fy


class _Fbm:
    """Fractal sum of value-noise octaves (each half the scale, half the weight), in [0, 1]."""

    def __init__(
        self,
        rng: np.random.Generator,
        lo: tuple[float, float],
        extent: float,
        scale: float,
        octaves: int,
    ):
        self.octaves = [
            _ValueNoise(rng, lo, extent, max(scale / 2**k, 2.0)) for k in range(octaves)
        ]
        self.weights = [0.5**k for k in range(octaves)]
        self.total = float(sum(self.weights))

    def grid(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        out = np.zeros((len(ys), len(xs)), dtype=np.float32)
        for w, noise in zip(self.weights, self.octaves, strict=True):
            out += np.float32(w / self.total) * noise.grid(ys, xs)
        return out

    def points(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return (
            sum(w * n.points(ys, xs) for w, n in zip(self.weights, self.octaves, strict=True))
            / self.total
        )


def _hash_uniform(a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """Uniform [0, 1) value per unordered pair (a, b): a deterministic coin per parcel border."""
    lo = np.minimum(a, b).astype(np.uint64)
    hi = np.maximum(a, b).astype(np.uint64)
    h = lo * np.uint64(0x9E3779B97F4A7C15) ^ (hi + np.uint64(salt)) * np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(31)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(29)
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


# --------------------------------------------------------------------------- layout


@dataclass
class _Block:
    """One row block of the extended grid: codes, parcel ids, road/water masks, materials."""

    codes: np.ndarray  # uint8 (n, W')
    parcel: np.ndarray  # int32 (n, W'), seed index of the parcel
    plain: np.ndarray  # bool (n, W'), road or water: no per-parcel variation
    material: np.ndarray  # uint8 (n, W'), row of the _MATERIAL_* tables

    def columns(self, cols: slice) -> _Block:
        return _Block(
            self.codes[:, cols], self.parcel[:, cols], self.plain[:, cols], self.material[:, cols]
        )


class _Landscape:
    """The scene's land cover as a function of pixel coordinates (optical pixel units).

    Row/column 0 is the optical grid's first pixel; negative and >= size coordinates are
    the margin that the SAR needs beyond the optical footprint.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        height: int,
        width: int,
        pad: int,
        pixel_size: float,
        thin: ThinFeatures | None = None,
    ):
        self.height, self.width, self.pad = height, width, pad
        self.thin = thin
        px = 1.0 / pixel_size
        cell = max(PARCEL_SIZE_M * px, 6.0)
        self.cell = cell
        self.warp_amp = 0.35 * cell
        self.road_half = max(ROAD_WIDTH_M * px / 2.0, 0.6)
        margin = pad + 3.0 * cell
        lo = (-margin, -margin)
        # One seed cell per `cell` pixels over the footprint, the margin and a ring of
        # cells beyond it; the smooth fields cover every seed.
        self.n_cells = int(math.ceil((max(height, width) + 2.0 * margin) / cell)) + 1
        extent = (self.n_cells + 1) * cell
        self.lo, self.extent = lo, extent

        self.warp_y = _Fbm(rng, lo, extent, 1.5 * cell, 2)
        self.warp_x = _Fbm(rng, lo, extent, 1.5 * cell, 2)
        urban = _Fbm(rng, lo, extent, URBAN_SCALE_M * px, 3)
        veg = _Fbm(rng, lo, extent, 0.7 * URBAN_SCALE_M * px, 3)
        self.lake = _Fbm(rng, lo, extent, LAKE_SCALE_M * px, 3)
        self.illumination = _Fbm(rng, lo, extent, 3000.0 * px, 2)

        # Jittered seed lattice: one parcel seed per cell, kept away from cell borders so
        # that the 3x3 neighbourhood search finds the nearest seeds.
        nc = self.n_cells
        jitter = rng.uniform(0.1, 0.9, size=(2, nc, nc))
        ii, jj = np.meshgrid(np.arange(nc), np.arange(nc), indexing="ij")
        self.seed_y = (lo[0] + (ii + jitter[0]) * cell).ravel().astype(np.float32)
        self.seed_x = (lo[1] + (jj + jitter[1]) * cell).ravel().astype(np.float32)
        self.road_salt = int(rng.integers(0, 2**31))

        self.seed_code = self._assign_classes(rng, urban, veg)
        propensity = np.zeros(256, dtype=np.float32)
        for code, p in _ROAD_PROPENSITY.items():
            propensity[code] = p
        self.seed_road = propensity[self.seed_code]
        n_seeds = self.seed_y.size
        spread = np.zeros(256, dtype=np.float32)
        for code, sigma in _PARCEL_SIGMA.items():
            spread[code] = sigma
        sigma = spread[self.seed_code]
        self.opt_factor = np.exp(sigma * rng.standard_normal(n_seeds, dtype=np.float32))
        self.band_factor = np.exp(
            0.4 * sigma[:, None] * rng.standard_normal((n_seeds, 4), dtype=np.float32)
        )
        self.sar_offset = rng.normal(0.0, 1.0, size=(n_seeds, 2)).astype(np.float32)

        # Lake threshold from a sample of the footprint: about 7% water.
        ys, xs = _sample_axes(height, width)
        self.lake_threshold = float(np.quantile(self.lake.grid(ys, xs), 0.93))

    def _assign_classes(self, rng: np.random.Generator, urban: _Fbm, veg: _Fbm) -> np.ndarray:
        """Class per parcel: by rank of the smooth fields at the seeds, so shares are stable."""
        n = self.seed_y.size
        # Ranks are taken among the parcels whose seed lies well inside the scene (the
        # warp moves a parcel by up to warp_amp), so that the guaranteed classes show.
        inset = min(self.warp_amp + 1.0, min(self.height, self.width) / 4.0)
        near = self._seeds_within(inset)
        if not near.any():  # a scene smaller than a parcel
            near = self._seeds_within(-self.cell)
        n_ref = int(near.sum())
        u_urban = urban.points(self.seed_y, self.seed_x)
        u_veg = veg.points(self.seed_y, self.seed_x)
        coin = rng.random((3, n))
        codes = np.full(n, 10, dtype=np.uint8)  # farmland unless picked below
        free = coin[0] >= 0.04
        codes[~free] = 0
        for code, score, share, at_least_one in (
            (20, u_urban, 0.07, True),
            (30, u_urban + 0.35 * coin[1], 0.13, True),
            (50, u_veg, 0.25, False),
            (70, coin[2], 0.05, False),
        ):
            # Stochastic rounding keeps the expected share right in small scenes.
            k = int(share * n_ref + rng.random())
            if at_least_one:
                k = max(k, 1)
            candidates = score[free & near]
            if k == 0 or candidates.size == 0:
                continue
            threshold = np.sort(candidates)[-min(k, candidates.size)]
            picked = free & (score >= threshold)
            codes[picked] = code
            free &= ~picked
        return codes

    def _seeds_within(self, inset: float) -> np.ndarray:
        """Seeds at least ``inset`` pixels inside the optical footprint (negative: outside)."""
        return (
            (self.seed_y >= inset)
            & (self.seed_y < self.height - inset)
            & (self.seed_x >= inset)
            & (self.seed_x < self.width - inset)
        )

    def render(self, ys: np.ndarray, xs: np.ndarray) -> _Block:
        """Land cover at pixel centres ys x xs."""
        wy = self.warp_y.grid(ys, xs)
        wx = self.warp_x.grid(ys, xs)
        amp = np.float32(2.0 * self.warp_amp)
        yy = ys.astype(np.float32)[:, None] + (wy - np.float32(0.5)) * amp
        xx = xs.astype(np.float32)[None, :] + (wx - np.float32(0.5)) * amp
        del wy, wx
        nc = self.n_cells
        ci = np.floor((yy - np.float32(self.lo[0])) / np.float32(self.cell)).astype(np.int32)
        cj = np.floor((xx - np.float32(self.lo[1])) / np.float32(self.cell)).astype(np.int32)
        np.clip(ci, 1, nc - 2, out=ci)
        np.clip(cj, 1, nc - 2, out=cj)
        base = ci * nc + cj
        del ci, cj
        inf = np.float32(np.inf)
        d1 = np.full(yy.shape, inf, dtype=np.float32)
        d2 = np.full(yy.shape, inf, dtype=np.float32)
        id1 = np.zeros(yy.shape, dtype=np.int32)
        id2 = np.zeros(yy.shape, dtype=np.int32)
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                k = base + (di * nc + dj)
                dy = yy - self.seed_y[k]
                dx = xx - self.seed_x[k]
                d = dy * dy + dx * dx
                closer = d < d1
                second = ~closer & (d < d2)
                d2 = np.where(closer, d1, np.where(second, d, d2))
                id2 = np.where(closer, id1, np.where(second, k, id2))
                d1 = np.where(closer, d, d1)
                id1 = np.where(closer, k, id1)
        del base, k, dy, dx, d, closer, second
        codes = self.seed_code[id1]

        # Roads: pixels within half a road width of the border (bisector) of their two
        # nearest seeds, on the borders whose coin says "road".
        sep = np.hypot(self.seed_y[id1] - self.seed_y[id2], self.seed_x[id1] - self.seed_x[id2])
        border = (d2 - d1) / (2.0 * sep) < self.road_half
        del d1, d2, sep
        rows, cols = np.nonzero(border)
        a, b = id1[rows, cols], id2[rows, cols]
        p = np.maximum(self.seed_road[a], self.seed_road[b])
        on = _hash_uniform(a, b, self.road_salt) < p
        road = np.zeros(codes.shape, dtype=bool)
        road[rows[on], cols[on]] = True
        codes[road] = 60

        # Thin features over the parcels and wide roads they may cross, under the lakes.
        kind = self.thin.render(ys, xs) if self.thin is not None else None
        if kind is not None:
            kind[~_KIND_ALLOWED[kind, codes]] = 0
            thin = kind > 0
            codes[thin] = _KIND_CODE[kind[thin]]

        water = self.lake.grid(ys, xs) > np.float32(self.lake_threshold)
        codes[water] = 40
        material = _CODE_INDEX[codes]
        plain = road | water
        if kind is not None:
            thin &= ~water
            material[thin] = _KIND_MATERIAL[kind[thin]]
            plain |= thin
        return _Block(codes=codes, parcel=id1, plain=plain, material=material)


def _sample_axes(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of at most ~512 x 512 pixels spread over a grid."""
    sy = max(1, height // 512)
    sx = max(1, width // 512)
    return np.arange(0, height, sy) + 0.5, np.arange(0, width, sx) + 0.5


# --------------------------------------------------------------------------- rendering


class _Clouds:
    """Cloud field: mask (f >= threshold), opacity, and cloud-top brightness.

    The threshold is the (1 - cover) quantile of the field over the valid (non-collar)
    optical pixels, so the mask covers ``cover`` of them (exactly up to 512 x 512
    pixels, from a regular sample beyond).
    """

    def __init__(
        self,
        rng: np.random.Generator,
        landscape: _Landscape,
        pixel_size: float,
        cover: float | None,
        collar: int,
    ):
        self.cover = float(rng.uniform(0.2, 0.4)) if cover is None else float(cover)
        self.field = _Fbm(rng, landscape.lo, landscape.extent, CLOUD_SCALE_M / pixel_size, 4)
        h, w = landscape.height - 2 * collar, landscape.width - 2 * collar
        ys, xs = _sample_axes(h, w)
        sample = self.field.grid(ys + collar, xs + collar)
        if self.cover <= 0.0:
            self.threshold = np.inf
        elif self.cover >= 1.0:
            self.threshold = -np.inf
        else:
            self.threshold = float(np.quantile(sample, 1.0 - self.cover))
        self.fringe = float(np.std(sample)) * 0.25

    def render(self, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mask bool, opacity float32 in [0, 1], field float32) at ys x xs."""
        f = self.field.grid(ys, xs)
        mask = f >= np.float32(self.threshold)
        if np.isfinite(self.threshold):
            haze = np.clip(
                (f - np.float32(self.threshold - self.fringe)) / np.float32(self.fringe), 0, 1
            )
            alpha = np.where(mask, np.float32(1.0), np.float32(0.4) * haze * haze)
        else:
            alpha = mask.astype(np.float32)
        return mask, alpha.astype(np.float32), f


def _render_optical(
    rng: np.random.Generator,
    land: _Landscape,
    block: _Block,
    ys: np.ndarray,
    xs: np.ndarray,
    clouds: _Clouds,
) -> tuple[np.ndarray, np.ndarray]:
    """uint16 reflectance (4, n, w) and the uint8 cloud mask for a block of the optical grid."""
    cls = block.material
    parcel_factor = np.where(block.plain, np.float32(1.0), land.opt_factor[block.parcel])
    illumination = np.float32(0.97) + np.float32(0.06) * land.illumination.grid(ys, xs)
    common = parcel_factor * illumination
    sigma = _MATERIAL_TEXTURE[cls]
    mask, alpha, thickness = clouds.render(ys, xs)
    cloud_brightness = np.float32(0.88) + np.float32(0.2) * thickness
    out = np.empty((4, *cls.shape), dtype=np.uint16)
    for band in range(4):
        band_factor = np.where(block.plain, np.float32(1.0), land.band_factor[block.parcel, band])
        noise = rng.standard_normal(cls.shape, dtype=np.float32)
        ground = (
            _MATERIAL_SPECTRA[cls, band] * common * band_factor * (np.float32(1.0) + sigma * noise)
        )
        cloud = np.float32(_CLOUD_SPECTRUM[band]) * cloud_brightness
        cloud *= np.float32(1.0) + np.float32(0.01) * rng.standard_normal(
            cls.shape, dtype=np.float32
        )
        value = ground + alpha * (cloud - ground)
        np.clip(value, 1.0, 10000.0, out=value)
        out[band] = np.rint(value).astype(np.uint16)
    return out, mask.astype(np.uint8)


def _render_sar_linear(rng: np.random.Generator, land: _Landscape, block: _Block) -> np.ndarray:
    """Speckled backscatter in linear power (2, n, w), float32."""
    cls = block.material
    out = np.empty((2, *cls.shape), dtype=np.float32)
    for band in range(2):
        offset = np.where(block.plain, np.float32(0.0), land.sar_offset[block.parcel, band])
        db = _MATERIAL_BACKSCATTER[cls, band] + offset
        speckle = rng.standard_gamma(SAR_LOOKS, size=cls.shape, dtype=np.float32)
        out[band] = (
            np.power(np.float32(10.0), db / np.float32(10.0)) * speckle / np.float32(SAR_LOOKS)
        )
    return out


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _SarGrid:
    transform: Affine
    width: int
    height: int
    pad: int  # optical pixels to render beyond the optical footprint on every side


def _sar_grid(
    optical_transform: Affine, height: int, width: int, pixel_size: float, coverage: float
) -> _SarGrid:
    """The EPSG:4326 SAR grid over the covered part of the optical footprint (+1 pixel)."""
    left, top = optical_transform.c, optical_transform.f
    right = left + width * pixel_size
    bottom = top - height * pixel_size
    # Anchored at the north-west corner: the east and south strips are left uncovered.
    cov_right = left + coverage * (right - left)
    cov_bottom = top - coverage * (top - bottom)
    w, s, e, n = transform_bounds(
        OPTICAL_CRS, SAR_CRS, left, cov_bottom, cov_right, top, densify_pts=21
    )
    lat = math.radians((s + n) / 2.0)
    res_y = SAR_RESOLUTION_FACTOR * pixel_size / 111_320.0
    res_x = res_y / math.cos(lat)
    w, e, s, n = w - res_x, e + res_x, s - res_y, n + res_y
    sar_w = int(math.ceil((e - w) / res_x))
    sar_h = int(math.ceil((n - s) / res_y))
    transform = from_origin(w, n, res_x, res_y)
    # How far the SAR grid reaches beyond the optical footprint, in optical pixels.
    bl, bb, br, bt = transform_bounds(
        SAR_CRS, OPTICAL_CRS, w, n - sar_h * res_y, w + sar_w * res_x, n, densify_pts=21
    )
    beyond = max(left - bl, br - right, bottom - bb, bt - top, 0.0)
    pad = int(math.ceil(beyond / pixel_size)) + 2
    return _SarGrid(transform=transform, width=sar_w, height=sar_h, pad=pad)


def _block_size(rows: int, cols: int) -> int | None:
    """Tile edge for a raster: 256, or the largest smaller power of two >= 16 that fits."""
    edge = 256
    while edge >= 16:
        if edge <= rows and edge <= cols:
            return edge
        edge //= 2
    return None


def _profile(height: int, width: int, count: int, dtype: str, crs: CRS, transform: Affine) -> dict:
    profile: dict = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "compress": "deflate",
        "zlevel": 1,
    }
    edge = _block_size(height, width)
    if edge is not None:
        profile.update(tiled=True, blockxsize=edge, blockysize=edge)
    if dtype == "uint16":
        profile["predictor"] = 2
    elif dtype == "float32":
        profile["predictor"] = 3
    return profile


def _row_blocks(
    start: int, stop: int, width: int, extra_cuts: tuple[int, ...] = ()
) -> Iterator[tuple[int, int]]:
    """Row ranges [a, b) covering [start, stop), ~1 Mpixel each.

    Cuts fall on tile rows (multiples of a power of two <= 256, counted from row 0) and
    on ``extra_cuts``, so that no block straddles the edge of the optical grid.
    """
    step = 256
    while step > 16 and step * width > _BLOCK_PIXELS:
        step //= 2
    inner = {*range(0, stop, step), *extra_cuts}
    cuts = [start, *sorted(c for c in inner if start < c < stop), stop]
    yield from zip(cuts[:-1], cuts[1:], strict=True)


# --------------------------------------------------------------------------- public API


def _check_args(
    name: str,
    size: int | tuple[int, int],
    pixel_size: float,
    cloud_cover: float | None,
    nodata_collar: int,
    sar_coverage: float,
) -> tuple[int, int]:
    shape = (size, size) if isinstance(size, int) else tuple(size)
    if len(shape) != 2 or any(int(s) != s or s < 16 for s in shape):
        raise InputError(
            f"synthetic scene {name!r}: size must be >= 16 pixels per axis, got {size!r}"
        )
    height, width = int(shape[0]), int(shape[1])
    if not pixel_size > 0:
        raise InputError(f"synthetic scene {name!r}: pixel_size must be > 0, got {pixel_size!r}")
    if cloud_cover is not None and not 0.0 <= cloud_cover <= 1.0:
        raise InputError(
            f"synthetic scene {name!r}: cloud_cover must be in [0, 1], got {cloud_cover!r}"
        )
    if nodata_collar < 0 or 2 * nodata_collar >= min(height, width) - 8:
        raise InputError(
            f"synthetic scene {name!r}: nodata_collar {nodata_collar} leaves no valid pixels "
            f"in a {height}x{width} scene"
        )
    if not 0.0 < sar_coverage <= 1.0:
        raise InputError(
            f"synthetic scene {name!r}: sar_coverage must be in (0, 1], got {sar_coverage!r}"
        )
    return height, width


def make_scene(
    out_dir: Path,
    name: str,
    size: int | tuple[int, int] = 512,
    seed: int = 0,
    *,
    pixel_size: float = 10.0,
    cloud_cover: float | None = None,
    nodata_collar: int = 0,
    sar_coverage: float = 1.0,
    origin: tuple[float, float] | None = None,
    thin_features: bool = True,
) -> SceneFiles:
    """Write one synthetic scene (optical, SAR, labels, clouds) under ``out_dir``.

    ``size`` is pixels per side or (height, width) of the optical grid, ``pixel_size``
    its resolution in metres and ``origin`` its upper-left corner (x, y) in EPSG:32649
    (default :data:`DEFAULT_ORIGIN`). ``cloud_cover`` is the cloud fraction of the valid
    optical pixels (None: drawn from 0.2-0.4 by the seed). ``nodata_collar`` pixels along
    every optical edge are nodata (optical 0, label 0, no cloud). ``sar_coverage`` is the
    fraction of the optical width and of its height that the SAR footprint covers,
    anchored at the north-west corner; below 1 the east and south strips of the optical
    grid lie outside the SAR. ``thin_features=False`` leaves out the rivers, canals, ponds
    and tracks and nothing else: every other pixel is the same.
    """
    height, width = _check_args(name, size, pixel_size, cloud_cover, nodata_collar, sar_coverage)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out_dir}: cannot create the output folder ({e.strerror})") from e
    files = scene_files(out_dir, name)
    x0, y0 = DEFAULT_ORIGIN if origin is None else origin
    optical_transform = from_origin(x0, y0, pixel_size, pixel_size)
    sar = _sar_grid(optical_transform, height, width, pixel_size, sar_coverage)

    land, clouds, optical_rng, sar_rng = _scene_model(
        seed, height, width, sar.pad, pixel_size, cloud_cover, nodata_collar, thin_features
    )

    with (
        streaming_gdal_env(),
        tempfile.TemporaryDirectory(prefix=f".{name}-", dir=out_dir) as tmp,
    ):
        tmp_dir = Path(tmp)
        staged = scene_files(tmp_dir, name)
        for path in (staged.optical, staged.sar, staged.labels, staged.clouds):
            path.parent.mkdir()
        linear_path = tmp_dir / "sar_linear.tif"
        _write_optical_grid(
            staged,
            linear_path,
            land,
            clouds,
            optical_rng,
            sar_rng,
            optical_transform,
            nodata_collar,
        )
        _write_sar(linear_path, staged.sar, sar)
        for field in ("optical", "sar", "labels", "clouds"):
            final: Path = getattr(files, field)
            final.parent.mkdir(exist_ok=True)
            Path(getattr(staged, field)).replace(final)
    return files


def _scene_model(
    seed: int,
    height: int,
    width: int,
    pad: int,
    pixel_size: float,
    cloud_cover: float | None,
    collar: int,
    thin_features: bool,
) -> tuple[_Landscape, _Clouds, np.random.Generator, np.random.Generator]:
    """Landscape, clouds and the optical and SAR noise streams of one scene.

    One random stream each (layout, clouds, optical noise, speckle, thin features), so
    that changing one part (the cloud cover, the thin features) leaves the rest as it is.
    """
    layout_seq, cloud_seq, optical_seq, sar_seq, thin_seq = np.random.SeedSequence(seed).spawn(5)
    thin = (
        ThinFeatures(np.random.default_rng(thin_seq), height, width, pad, pixel_size)
        if thin_features
        else None
    )
    land = _Landscape(np.random.default_rng(layout_seq), height, width, pad, pixel_size, thin)
    clouds = _Clouds(np.random.default_rng(cloud_seq), land, pixel_size, cloud_cover, collar)
    return land, clouds, np.random.default_rng(optical_seq), np.random.default_rng(sar_seq)


@dataclass(frozen=True)
class RenderedBlock:
    """Rows ``rows`` of a scene rendered on its optical grid (see :func:`render_scene`)."""

    rows: slice
    reflectance: np.ndarray  # uint16 (4, n, w): B, G, R, NIR surface reflectance x 10000
    clouds: np.ndarray  # uint8 (n, w): 1 cloud, 0 clear
    codes: np.ndarray  # uint8 (n, w): WHU-OPT-SAR label codes
    sar_power: np.ndarray  # float32 (2, n, w): VV, VH speckled linear backscatter


def render_scene(
    size: int | tuple[int, int],
    seed: int = 0,
    *,
    pixel_size: float = 10.0,
    cloud_cover: float | None = None,
    thin_features: bool = True,
) -> Iterator[RenderedBlock]:
    """A synthetic scene's layers on its optical grid, row block by row block.

    The model of :func:`make_scene` (land cover, signatures, clouds, thin features), with
    the SAR on the optical grid, in linear power, before any multilooking or
    reprojection, and no SAR margin (so not the very scene make_scene draws for the same
    seed): for writers of other layouts (:mod:`gopt_geo.data.replica`). Blocks of about
    a megapixel, so memory stays bounded whatever the size; same seed, same blocks.
    """
    height, width = _check_args("render", size, pixel_size, cloud_cover, 0, 1.0)
    land, clouds, optical_rng, sar_rng = _scene_model(
        seed, height, width, 0, pixel_size, cloud_cover, 0, thin_features
    )
    xs = np.arange(width) + 0.5
    for r0, r1 in _row_blocks(0, height, width):
        ys = np.arange(r0, r1) + 0.5
        block = land.render(ys, xs)
        sar_power = _render_sar_linear(sar_rng, land, block)
        reflectance, mask = _render_optical(optical_rng, land, block, ys, xs, clouds)
        yield RenderedBlock(slice(r0, r1), reflectance, mask, block.codes, sar_power)


def _write_optical_grid(
    staged: SceneFiles,
    linear_path: Path,
    land: _Landscape,
    clouds: _Clouds,
    optical_rng: np.random.Generator,
    sar_rng: np.random.Generator,
    optical_transform: Affine,
    collar: int,
) -> None:
    """Render the extended optical grid block by block; write optical, labels, clouds, SAR."""
    h, w, pad = land.height, land.width, land.pad
    ext_transform = optical_transform @ Affine.translation(-pad, -pad)
    xs = np.arange(-pad, w + pad) + 0.5
    inner = slice(pad, pad + w)
    valid_cols = np.zeros(w, dtype=bool)
    valid_cols[collar : w - collar] = True
    scheme = WHU_OPT_SAR_CLASSES
    optical_profile = _profile(h, w, 4, "uint16", OPTICAL_CRS, optical_transform)
    optical_profile["nodata"] = OPTICAL_NODATA
    linear_profile = _profile(h + 2 * pad, w + 2 * pad, 2, "float32", OPTICAL_CRS, ext_transform)
    del linear_profile["compress"], linear_profile["zlevel"], linear_profile["predictor"]
    with (
        rasterio.open(staged.optical, "w", **optical_profile) as opt,
        rasterio.open(
            staged.labels, "w", **_profile(h, w, 1, "uint8", OPTICAL_CRS, optical_transform)
        ) as lab,
        rasterio.open(
            staged.clouds, "w", **_profile(h, w, 1, "uint8", OPTICAL_CRS, optical_transform)
        ) as cld,
        rasterio.open(linear_path, "w", **linear_profile) as lin,
    ):
        for i, band in enumerate(OPTICAL_BANDS, start=1):
            opt.set_band_description(i, band)
        opt.update_tags(units="surface reflectance x 10000", generator="gopt_geo.data.synthetic")
        lab.set_band_description(1, "land cover")
        lab.write_colormap(1, scheme.colormap())
        lab.update_tags(
            **{f"class_{c.code}": c.name for c in scheme.classes}, class_0=scheme.ignore_name
        )
        cld.set_band_description(1, "cloud")
        cld.update_tags(values="1 cloud, 0 clear")
        for r0, r1 in _row_blocks(-pad, h + pad, w + 2 * pad, (0, h)):
            ys = np.arange(r0, r1) + 0.5
            block = land.render(ys, xs)
            lin.write(
                _render_sar_linear(sar_rng, land, block),
                window=Window(0, r0 + pad, w + 2 * pad, r1 - r0),
            )
            if r1 <= 0 or r0 >= h:
                continue
            block = block.columns(inner)
            optical, mask = _render_optical(optical_rng, land, block, ys, xs[inner], clouds)
            rows = np.arange(r0, r1)
            valid = ((rows >= collar) & (rows < h - collar))[:, None] & valid_cols[None, :]
            optical[:, ~valid] = OPTICAL_NODATA
            codes = np.where(valid, block.codes, np.uint8(0))
            mask[~valid] = 0
            window = Window(0, r0, w, r1 - r0)
            opt.write(optical, window=window)
            lab.write(codes, 1, window=window)
            cld.write(mask, 1, window=window)


def _write_sar(linear_path: Path, sar_path: Path, grid: _SarGrid) -> None:
    """Reproject the linear SAR onto the EPSG:4326 grid (averaging = multilook), in dB."""
    profile = _profile(grid.height, grid.width, 2, "float32", SAR_CRS, grid.transform)
    profile["nodata"] = SAR_NODATA
    with rasterio.open(linear_path) as src, rasterio.open(sar_path, "w", **profile) as dst:
        for i, band in enumerate(SAR_BANDS, start=1):
            dst.set_band_description(i, band)
        dst.update_tags(
            units="dB", speckle_looks=str(SAR_LOOKS), generator="gopt_geo.data.synthetic"
        )
        for r0, r1 in _row_blocks(0, grid.height, grid.width):
            window = Window(0, r0, grid.width, r1 - r0)
            power = np.full((2, r1 - r0, grid.width), SAR_NODATA, dtype=np.float32)
            reproject(
                source=rasterio.band(src, [1, 2]),
                destination=power,
                dst_transform=window_transform(window, grid.transform),
                dst_crs=SAR_CRS,
                src_nodata=SAR_NODATA,
                dst_nodata=SAR_NODATA,
                resampling=Resampling.average,
            )
            valid = power > 0
            db = np.full(power.shape, SAR_NODATA, dtype=np.float32)
            db[valid] = np.float32(10.0) * np.log10(power[valid])
            dst.write(db, window=window)


def make_scenes(
    out_dir: Path, n_scenes: int, size: int | tuple[int, int] = 512, seed: int = 0, **kw
) -> list[SceneFiles]:
    """Write ``n_scenes`` scenes named ``scene_000``, ... at spatially disjoint locations.

    Scenes lie on a grid of columns and rows with a gap of a quarter scene between
    footprints (wider than the SAR margin), each with its own seed derived from ``seed``.
    Further keyword arguments go to :func:`make_scene`.
    """
    if n_scenes < 1:
        raise InputError(f"{out_dir}: the number of scenes must be >= 1, got {n_scenes}")
    pixel_size = float(kw.get("pixel_size", 10.0))
    height, width = (size, size) if isinstance(size, int) else size
    x0, y0 = kw.pop("origin", None) or DEFAULT_ORIGIN
    step_x = (width + max(width // 4, 32)) * pixel_size
    step_y = (height + max(height // 4, 32)) * pixel_size
    columns = math.ceil(math.sqrt(n_scenes))
    scenes = []
    for i in range(n_scenes):
        row, col = divmod(i, columns)
        scene_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        scenes.append(
            make_scene(
                out_dir,
                f"scene_{i:03d}",
                size,
                scene_seed,
                origin=(x0 + col * step_x, y0 - row * step_y),
                **kw,
            )
        )
    return scenes
