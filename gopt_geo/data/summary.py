"""A readable summary of a scene folder: grids, CRS, bands and class fractions.

Reads labels block by block, so it works on full WHU-OPT-SAR scenes in flat memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import open_raster
from .classes import names_from_tags


def _histogram(path: Path) -> np.ndarray:
    counts = np.zeros(256, dtype=np.int64)
    with open_raster(path) as src:
        for _, window in src.block_windows(1):
            block = src.read(1, window=window)
            counts += np.bincount(block.ravel().clip(0, 255).astype(np.int64), minlength=256)
    return counts


def summarize_scenes(root: str | Path) -> str:
    """Text table of the scenes under ``root`` (layout of :mod:`gopt_geo.data.scenes`); label
    codes are named as the label rasters name them (their tags), else by code."""
    root = Path(root)
    optical = sorted((root / "optical").glob("*.tif"))
    if not optical:
        raise InputError(f"{root}: no scenes found (expected optical/<scene>.tif)")
    lines = [f"{len(optical)} scene(s) in {root}"]
    totals = np.zeros(256, dtype=np.int64)
    names: dict[int, str] = {}
    for opt in optical:
        name = opt.stem
        with open_raster(opt) as o:
            desc = ",".join(d or f"b{i + 1}" for i, d in enumerate(o.descriptions))
            line = (
                f"  {name}: optical {o.width}x{o.height} px, {o.res[0]:g} m, "
                f"{o.crs.to_string() if o.crs else 'no CRS'}, bands {desc}"
            )
        sar = root / "sar" / f"{name}.tif"
        if sar.exists():
            with open_raster(sar) as s:
                line += (
                    f"; SAR {s.width}x{s.height} px, res {s.res[0]:.3g}, "
                    f"{s.crs.to_string() if s.crs else 'no CRS'}, {s.count} band(s)"
                )
        clouds = root / "clouds" / f"{name}.tif"
        if clouds.exists():
            c = _histogram(clouds)
            line += f"; clouds {100 * c[1:].sum() / max(c.sum(), 1):.1f}%"
        lines.append(line)
        labels = root / "labels" / f"{name}.tif"
        if labels.exists():
            totals += _histogram(labels)
            with open_raster(labels) as lab:
                names = {**names_from_tags(lab.tags(), lab.tags(1)), **names}
    if totals.sum():
        parts = [
            f"{names.get(code, f'code {code}')} {100 * totals[code] / totals.sum():.1f}%"
            for code in np.flatnonzero(totals).tolist()
        ]
        lines.append("  label codes: " + ", ".join(parts))
    return "\n".join(lines)
