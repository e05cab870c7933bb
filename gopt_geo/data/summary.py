"""A readable summary of a scene folder: grids, CRS, bands and class fractions.

Reads labels block by block, so it works on full WHU-OPT-SAR scenes in flat memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import open_raster, value_counts
from .classes import names_from_tags


def _codes(path: Path) -> dict[int, int]:
    """Pixels per value of band 1, every integer counted as it is (-1, 255, 1000): the
    nodata value too, so that no-data pixels show in the shares."""
    with open_raster(path) as src:
        return value_counts(src)


def _resolution(src: Any) -> str:
    """The pixel size in the units of the raster's CRS (degrees are not metres)."""
    xres, yres = src.res
    size = f"{xres:g}" if xres == yres else f"{xres:g} x {yres:g}"
    if src.crs is None:
        return f"{size} (pixel grid, no CRS)"
    if src.crs.is_geographic:
        return f"{size} degrees"
    unit = src.crs.linear_units or "units"
    return f"{size} {'m' if unit.lower() in ('metre', 'meter', 'm') else unit}"


def summarize_scenes(root: str | Path) -> str:
    """Text table of the scenes under ``root`` (layout of :mod:`gopt_geo.data.scenes`);
    pixel sizes in their CRS's units; every label code with its share of the label
    pixels, no-data codes included (and marked), named as the label rasters name them
    (their tags), else by code."""
    root = Path(root)
    optical = sorted((root / "optical").glob("*.tif"))
    if not optical:
        raise InputError(f"{root}: no scenes found (expected optical/<scene>.tif)")
    lines = [f"{len(optical)} scene(s) in {root}"]
    totals: dict[int, int] = {}
    names: dict[int, str] = {}
    nodata: set[int] = set()
    for opt in optical:
        name = opt.stem
        with open_raster(opt) as o:
            desc = ",".join(d or f"b{i + 1}" for i, d in enumerate(o.descriptions))
            line = (
                f"  {name}: optical {o.width}x{o.height} px, {_resolution(o)}, "
                f"{o.crs.to_string() if o.crs else 'no CRS'}, bands {desc}"
            )
        sar = root / "sar" / f"{name}.tif"
        if sar.exists():
            with open_raster(sar) as s:
                line += (
                    f"; SAR {s.width}x{s.height} px, {_resolution(s)}, "
                    f"{s.crs.to_string() if s.crs else 'no CRS'}, {s.count} band(s)"
                )
        clouds = root / "clouds" / f"{name}.tif"
        if clouds.exists():
            c = _codes(clouds)
            cloudy = sum(k for v, k in c.items() if v != 0)
            line += f"; clouds {100 * cloudy / max(sum(c.values()), 1):.1f}%"
        lines.append(line)
        labels = root / "labels" / f"{name}.tif"
        if labels.exists():
            for code, n in _codes(labels).items():
                totals[code] = totals.get(code, 0) + n
            with open_raster(labels) as lab:
                names = {**names_from_tags(lab.tags(), lab.tags(1)), **names}
                if lab.nodata is not None and np.isfinite(lab.nodata):
                    nodata.add(int(lab.nodata))
    total = sum(totals.values())
    if total:
        parts = [
            f"{names.get(code, f'code {code}')} {100 * totals[code] / total:.1f}%"
            + (" (nodata)" if code in nodata else "")
            for code in sorted(totals)
        ]
        lines.append("  label codes: " + ", ".join(parts))
    return "\n".join(lines)
