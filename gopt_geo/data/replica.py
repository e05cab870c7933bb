"""A WHU-OPT-SAR-shaped replica: synthetic scenes in the dataset's layout, as released.

Why: the headline job is training on WHU-OPT-SAR (100 scenes of 5556 x 3704 px, about
10 GB), which this project cannot ship. Its loaders, caches and timings must still be
exercised and measured at that size; the replica writes scenes that the
:class:`~gopt_geo.data.whu_opt_sar.WHUOptSar` dataset reads exactly as it would read the
release. The layout is taken from that class (folders, band order, scene shape, class
scheme), so the two cannot drift apart::

    root/optical/<scene>.tif   4 bands in WHUOptSar.optical_bands order (R, G, B, NIR),
                               uint8, no band descriptions
    root/sar/<scene>.tif       1 band, uint8
    root/lbl/<scene>.tif       1 band, uint8 codes: 0 background, 10 farmland ... 70 others

No file carries a CRS, a geotransform or a nodata value (the release's files are read on
a pixel grid, see rasters.py). Files are uncompressed and striped, GDAL's default, so that
reading them costs what reading the release costs (100 full scenes: 100 x 124 MB).
Scene names are the official split's (:func:`~gopt_geo.data.whu_opt_sar.official_split`):
``scenes`` of them, drawn from its training and test lists in the official 80/20
proportion; :attr:`Replica.split` is the train/val/test split to train on (for all 100
scenes, the dataset's default split).

Content: the synthetic model of :mod:`gopt_geo.data.synthetic` (parcels, roads, lakes,
thin features, clouds, class signatures; :func:`~gopt_geo.data.synthetic.render_scene`)
at WHU-OPT-SAR's 5 m pixels, one seed per scene. The release's radiometry is not
documented, so its 8-bit scaling is ours: optical digital numbers are surface
reflectance x 10000 / :data:`OPTICAL_DN_DIVISOR` (vegetation NIR ~ 100, water NIR ~ 6,
clouds saturate at 255); the SAR band is VV backscatter, speckled (4 looks), mapped
linearly from :data:`SAR_DB_RANGE` onto 0-255. Scenes are rendered and written in strips
of about a megapixel, so memory stays bounded at full size; each scene's files are
written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from ..errors import InputError
from ..io import streaming_gdal_env
from .synthetic import OPTICAL_BANDS, SAR_BANDS, render_scene
from .whu_opt_sar import WHUOptSar, official_split

#: (height, width) of a WHU-OPT-SAR scene.
WHU_OS_SHAPE: tuple[int, int] = WHUOptSar.scene_shape
#: Ground sampling distance of WHU-OPT-SAR (GF-1 multispectral), metres.
WHU_OS_PIXEL_SIZE = 5.0
#: Optical digital number = reflectance x 10000 / this (8 bits; clouds saturate).
OPTICAL_DN_DIVISOR = 32.0
#: SAR backscatter (dB) mapped linearly onto digital numbers 0 .. 255.
SAR_DB_RANGE = (-40.0, 10.0)


@dataclass(frozen=True)
class Replica:
    """What :func:`write_whu_os_like` wrote: the root, the scene names, a split of them."""

    root: Path
    scenes: list[str]
    split: dict[str, list[str]]


def replica_split(n_scenes: int, val_scenes: int = 8) -> dict[str, list[str]]:
    """The scenes of an ``n_scenes`` replica as a train/val/test split of official names.

    Test scenes are the first of the official test list, a fifth of them (at least one
    when there are two scenes or more); training scenes the first of the official
    training list, whose last ``val_scenes`` (scaled like the test share, at least one
    when there are three scenes or more) are for validation, as in
    :meth:`WHUOptSar.default_split`. All 100: the dataset's own split.
    """
    official = official_split()
    train_names, test_names = official["train"], official["test"]
    total = len(train_names) + len(test_names)
    if not 1 <= n_scenes <= total:
        raise InputError(f"WHU-OS replica: scenes must be 1 to {total}, got {n_scenes}")
    n_test = min(round(n_scenes * len(test_names) / total), len(test_names))
    if n_scenes >= 2:
        n_test = max(n_test, 1)
    n_train = n_scenes - n_test
    n_val = round(n_train * val_scenes / len(train_names))
    if n_scenes >= 3:
        n_val = max(n_val, 1)
    n_val = min(n_val, n_train - 1) if n_train > 1 else 0
    train = train_names[:n_train]
    return {
        "train": train[: n_train - n_val],
        "val": train[n_train - n_val :],
        "test": test_names[:n_test],
    }


def write_whu_os_like(
    root: str | Path,
    scenes: int = 100,
    size: int | tuple[int, int] = WHU_OS_SHAPE,
    seed: int = 0,
    *,
    cloud_cover: float | None = None,
    pixel_size: float = WHU_OS_PIXEL_SIZE,
    progress: Callable[[int, int, str], None] | None = None,
) -> Replica:
    """Write a WHU-OPT-SAR-shaped replica of ``scenes`` scenes under ``root``.

    ``size`` is pixels per side or (height, width), full size by default (3704, 5556);
    smaller scenes make quick tests. ``cloud_cover`` is as in
    :func:`~gopt_geo.data.synthetic.make_scene` (None: 20-40 %, drawn per scene), and
    ``pixel_size`` sets the metres per pixel the features are drawn at (5 m, WHU-OPT-SAR's;
    it is not written: the files carry no georeferencing). ``progress(i, n, name)`` is
    called after each scene. Existing files of the same names are replaced.
    """
    shape = (size, size) if isinstance(size, int) else tuple(size)
    if len(shape) != 2 or any(int(s) != s or s < 16 for s in shape):
        raise InputError(f"WHU-OS replica: size must be >= 16 pixels per axis, got {size!r}")
    height, width = int(shape[0]), int(shape[1])
    if cloud_cover is not None and not 0.0 <= cloud_cover <= 1.0:
        raise InputError(f"WHU-OS replica: cloud_cover must be in [0, 1], got {cloud_cover!r}")
    if not pixel_size > 0:
        raise InputError(f"WHU-OS replica: pixel_size must be > 0, got {pixel_size!r}")
    split = replica_split(scenes)
    names = [n for part in ("train", "val", "test") for n in split[part]]
    root = Path(root)
    try:
        for folder in (WHUOptSar.optical_dir, WHUOptSar.sar_dir, WHUOptSar.label_dir):
            (root / folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{root}: cannot create the replica's folders ({e.strerror})") from e
    for i, name in enumerate(names):
        scene_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        _write_scene(root, name, height, width, scene_seed, cloud_cover, pixel_size)
        if progress is not None:
            progress(i + 1, len(names), name)
    return Replica(root=root, scenes=names, split=split)


def _profile(height: int, width: int, count: int) -> dict:
    """Uncompressed, striped, uint8, no georeferencing: what GDAL writes by default."""
    return {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": "uint8",
    }


def _optical_dn(reflectance: np.ndarray) -> np.ndarray:
    """uint16 reflectance x 10000 (B, G, R, NIR) -> uint8 in WHUOptSar's band order."""
    order = [OPTICAL_BANDS.index(b) for b in WHUOptSar.optical_bands]
    dn = np.rint(reflectance[order].astype(np.float32) / np.float32(OPTICAL_DN_DIVISOR))
    return np.clip(dn, 0, 255).astype(np.uint8)


def _sar_dn(power: np.ndarray) -> np.ndarray:
    """Linear VV power -> uint8, linear in dB over SAR_DB_RANGE."""
    lo, hi = SAR_DB_RANGE
    db = np.float32(10.0) * np.log10(power[SAR_BANDS.index("VV")])
    dn = np.rint((db - np.float32(lo)) * np.float32(255.0 / (hi - lo)))
    return np.clip(dn, 0, 255).astype(np.uint8)


def _write_scene(
    root: Path,
    name: str,
    height: int,
    width: int,
    seed: int,
    cloud_cover: float | None,
    pixel_size: float,
) -> None:
    """Render one scene strip by strip into staged files, then rename them into place."""
    folders = (WHUOptSar.optical_dir, WHUOptSar.sar_dir, WHUOptSar.label_dir)
    counts = (len(WHUOptSar.optical_bands), len(WHUOptSar.sar_bands), 1)
    with (
        streaming_gdal_env(),
        warnings.catch_warnings(),
        tempfile.TemporaryDirectory(prefix=f".{name}-", dir=root) as tmp,
    ):
        # no CRS or geotransform, as released: rasterio says so on every open
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        staged = [Path(tmp) / f"{folder}.tif" for folder in folders]
        with (
            rasterio.open(staged[0], "w", **_profile(height, width, counts[0])) as opt,
            rasterio.open(staged[1], "w", **_profile(height, width, counts[1])) as sar,
            rasterio.open(staged[2], "w", **_profile(height, width, counts[2])) as lbl,
        ):
            for block in render_scene(
                (height, width), seed, pixel_size=pixel_size, cloud_cover=cloud_cover
            ):
                r0, r1 = block.rows.start, block.rows.stop
                window = Window(0, r0, width, r1 - r0)
                opt.write(_optical_dn(block.reflectance), window=window)
                sar.write(_sar_dn(block.sar_power), 1, window=window)
                lbl.write(block.codes, 1, window=window)
        for path, folder in zip(staged, folders, strict=True):
            path.replace(root / folder / f"{name}.tif")
