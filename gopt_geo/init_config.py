"""``gopt-geo init-config ROOT``: a starter run config written from a folder of scenes.

It reads what the files say about themselves - band counts and descriptions, data types,
CRS and resolution, the label codes with their pixel shares and names (a label raster's
gopt-geo scheme, ``CLASS_<code>`` tags or colour table) - and writes a config that trains
as it is: the classes declared, the bands routed (RGB to the frozen backbone, the rest
to the prompters), the SAR units guessed from the values, and a spatially disjoint split
(whole scenes when there are at least three, bands of rows otherwise). Every guess is
marked in a comment, so the user knows what to check before a long run.
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .data.classes import DEFAULT_COLOURS, names_from_tags
from .data.row_split import band_rows, choose_row_split
from .errors import InputError
from .io import check_writable, data_band_count, open_raster, value_counts, write_text_atomic

#: Band names that mean red, green, blue and near infrared, by convention.
_COLOUR_NAMES = {
    "R": ("r", "red", "b4", "b04"),
    "G": ("g", "green", "b3", "b03"),
    "B": ("b", "blue", "b2", "b02"),
    "NIR": ("nir", "n", "b8", "b08", "nir08"),
}
#: Codes taken as "ignore" when a label raster names them so.
_IGNORE_NAMES = ("background", "nodata", "no data", "unlabelled", "unlabeled", "ignore", "void")
#: Longest side of the decimated reads used to guess units and count codes.
_SAMPLE = 1024


@dataclass
class _Bands:
    names: list[str]
    described: bool
    dtype: str


def _band_names(path: Path, role: str) -> _Bands:
    with open_raster(path) as src:
        count = data_band_count(src)
        desc = list(src.descriptions[:count])
        dtype = src.dtypes[0]
    if count and all(desc) and len(set(desc)) == count:
        return _Bands(desc, True, dtype)
    if role == "sar":
        return _Bands(["VV", "VH", *(f"SAR{i}" for i in range(3, count + 1))][:count], False, dtype)
    defaults = {1: ["R"], 2: ["R", "G"], 3: ["R", "G", "B"], 4: ["R", "G", "B", "NIR"]}
    return _Bands(defaults.get(count, [f"band{i}" for i in range(1, count + 1)]), False, dtype)


def _rgb_and_nir(names: list[str]) -> tuple[list[str], list[str]]:
    """The file's bands for R, G, B (in that order) and NIR, by their conventional names."""
    found: dict[str, str] = {}
    for key, aliases in _COLOUR_NAMES.items():
        for n in names:
            if n.lower() in aliases:
                found[key] = n
                break
    rgb = [found[k] for k in ("R", "G", "B") if k in found]
    if len(rgb) < 3:
        raise InputError(
            f"cannot tell which optical bands are red, green and blue among {names}; "
            "name them in the files' band descriptions (R/G/B, red/green/blue or B04/B03/B02)"
        )
    return rgb, [found["NIR"]] if "NIR" in found else []


def _sample(path: Path, band: int = 1) -> np.ndarray:
    with open_raster(path) as src:
        scale = max(1.0, max(src.width, src.height) / _SAMPLE)
        shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
        data = src.read(band, out_shape=shape, masked=True)
    return np.ma.masked_invalid(data.astype("float64")).compressed()


def _sar_units(paths: list[Path]) -> tuple[str, str]:
    """(units, why): dB values are mostly negative; linear power lies in 0..~1."""
    values = np.concatenate([_sample(p) for p in paths[:3]])
    if values.size == 0:
        return "db", "no valid SAR value to tell; check"
    median = float(np.median(values))
    if (values < 0).mean() > 0.5:
        return "db", f"median {median:.3g}: mostly negative, so dB"
    if median < 3:
        return "linear", f"median {median:.3g}, never negative: linear power (amplitude? check)"
    return "db", f"median {median:.3g}: neither dB nor linear power; check"


@dataclass
class _Labels:
    """What the label rasters hold: pixels per code (nodata included), names, colours."""

    counts: dict[int, int]
    names: dict[int, str]
    colours: dict[int, tuple[int, int, int]]
    nodata: int | None
    dtype: str

    @property
    def shares(self) -> dict[int, float]:
        total = max(sum(self.counts.values()), 1)
        return {c: self.counts[c] / total for c in sorted(self.counts)}


def _label_codes(paths: list[Path]) -> _Labels:
    """Pixels per code of the label rasters (every integer, -1 and 255 included; the
    nodata value's pixels counted under it), their names, colour table and nodata."""
    counts: dict[int, int] = {}
    names: dict[int, str] = {}
    colours: dict[int, tuple[int, int, int]] = {}
    nodata: int | None = None
    dtype = ""
    for path in paths:
        with open_raster(path) as src:
            dtype = dtype or src.dtypes[0]
            if src.nodata is not None and np.isfinite(src.nodata):
                nodata = int(src.nodata)
            names = {**names_from_tags(src.tags(), src.tags(1)), **names}
            try:
                colours = {k: tuple(v[:3]) for k, v in src.colormap(1).items()} | colours
            except ValueError:  # no colour table
                pass
            for c, k in value_counts(src).items():
                counts[c] = counts.get(c, 0) + k
    return _Labels(counts, names, colours, nodata, dtype)


def _ignored_codes(labels: _Labels) -> tuple[list[int], list[str]]:
    """(codes to ignore, one reason per line). Whatever the data mark as no data is
    ignored: the nodata tag, codes named so, negative codes, 255 in 8-bit labels; 0 is
    taken as background only when nothing else marks unlabelled pixels and two classes
    remain without it (a 0/1 water mask keeps 0 as a class)."""
    present = set(labels.counts)
    reasons: dict[int, str] = {}
    if labels.nodata is not None:
        reasons[labels.nodata] = "the label rasters' nodata value"
    for c, n in labels.names.items():
        if n.lower() in _IGNORE_NAMES and c in present:
            reasons.setdefault(c, f"named {n!r}")
    for c in present:
        if c < 0:
            reasons.setdefault(c, "negative: no data by convention")
        elif c == 255 and labels.dtype == "uint8":
            reasons.setdefault(c, "255 in 8-bit labels: no data by convention")
        elif c > 254:
            reasons.setdefault(c, "outside 0..254, so it cannot be a class (class maps are uint8)")
    rest = present - set(reasons)
    if not reasons and 0 in rest and 0 not in labels.names and len(rest - {0}) >= 2:
        reasons[0] = (
            "0 taken as background/unlabelled (WHU-OPT-SAR's convention), as nothing else "
            "marks unlabelled pixels; if 0 is a class, move it to data.classes"
        )
    ignore = sorted(reasons)
    return ignore, [f"{c} ({reasons[c]})" for c in ignore]


#: Sentinel-2 band names (B1..B12, B8A; with or without the leading zero).
_S2_NAME = re.compile(r"^b(0?[1-9]|1[0-2]|8a)$", re.IGNORECASE)


def _optical_units(
    paths: list[Path], names: list[str], read: list[str], dtype: str
) -> tuple[float | None, float | None, str]:
    """(optical_scale, optical_offset, why) guessed from the data type, the values of the
    bands read and the band names. Sentinel-2 L1C and L2A store reflectance x 10000;
    since processing baseline 04.00 (25 January 2022) both add 1000 (offset -1000), which
    shows as no valid value below 1000."""
    indexes = [names.index(b) + 1 for b in read if b in names]
    values = np.concatenate([_sample(p, i) for p in paths[:3] for i in indexes[:4] or [1]])
    values = values[values != 0] if values.size else values
    if values.size == 0:
        return None, None, "no valid optical value to tell the units from; set them if known"
    p01, p50, p99 = (float(v) for v in np.percentile(values, [1, 50, 99]))
    seen = f"values p1 {p01:.4g}, median {p50:.4g}, p99 {p99:.4g}"
    kind = np.dtype(dtype).kind
    if kind == "f":
        if p99 <= 2.0:
            return None, None, f"{dtype} {seen}: reflectance already (0..1); no scale"
        return None, None, f"{dtype} {seen}: units unknown; no scale (statistics normalise)"
    if np.dtype(dtype).itemsize == 1:
        return None, None, f"8-bit {seen}: display values; no scale (statistics normalise)"
    sentinel2 = sum(bool(_S2_NAME.match(n)) for n in names) >= 10
    if not (sentinel2 or (20 <= p50 <= 10_000 and p99 <= 25_000)):
        return None, None, f"{dtype} {seen}: units unknown; no scale (statistics normalise)"
    product = (
        "Sentinel-2 " + ("L1C (13 bands, B10 present)" if "B10" in names else "L2A")
        if sentinel2
        else "reflectance x 10000 (Sentinel-2's convention)"
    )
    below = float((values < 1000).mean())
    if below < 0.001:
        return (
            0.0001,
            -1000.0,
            f"{product}, {dtype} {seen}: reflectance x 10000 stored +1000 (processing "
            "baseline >= 04.00: no value below 1000), so optical_scale 0.0001, "
            "optical_offset -1000; for products before baseline 04.00 or harmonised ones "
            "(e.g. Earth Engine's *_HARMONIZED) set optical_offset: 0",
        )
    return (
        0.0001,
        None,
        f"{product}, {dtype} {seen}: reflectance x 10000 without the +1000 of processing "
        f"baseline >= 04.00 ({100 * below:.0f}% of values below 1000), so optical_scale "
        "0.0001, no offset; for baseline >= 04.00 products set optical_offset: -1000",
    )


def _pixel_size(crs: Any, transform: Any, height: int) -> str:
    """The pixel size in the CRS's units, with metres for a geographic CRS."""
    xres, yres = abs(transform.a), abs(transform.e)
    if crs is None:
        return "pixel grid (no CRS)"
    if crs.is_geographic:
        lat = math.radians(transform.f + transform.e * height / 2)
        return (
            f"{xres:.6g} x {yres:.6g} degrees per pixel (about {xres * 111_320 * math.cos(lat):.1f}"
            f" x {yres * 110_540:.1f} m)"
        )
    unit = crs.linear_units or "units"
    unit = "m" if unit.lower() in ("metre", "meter", "m") else unit
    return f"{xres:g} x {yres:g} {unit} per pixel"


def _row_split(heights: dict[str, int], widths: dict[str, int]) -> tuple[int, list[float], str]:
    """(patch size, split_rows, comment) for scenes split by bands of rows."""
    fitting = tuple(p for p in (256, 128, 64, 32) if p <= min(widths.values()))
    chosen = choose_row_split(list(heights.values()), fitting) if fitting else None
    if chosen is None:
        name = min(heights, key=lambda n: heights[n])
        raise InputError(
            f"scene {name} is {heights[name]} x {widths[name]} px: too small to split into "
            "train, validation and test bands of at least one 32-px patch each (plus the "
            "guard gaps between them); label a larger area or more scenes"
        )
    patch, fractions = chosen
    name = min(heights, key=lambda n: heights[n])
    bands = [band_rows(heights[name], fractions, i, patch) for i in range(3)]
    rows = ", ".join(
        f"{s} rows {a}..{b} ({b - a})"
        for s, (a, b) in zip(("train", "val", "test"), bands, strict=True)
    )
    note = (
        f"bands of rows of each scene (fewer than 3 scenes), train on top, val in the "
        f"middle, test at the bottom, with a {patch}-row guard gap at each inner border, "
        f"so that every band holds at least one {patch}-px patch; in {name} "
        f"({heights[name]} rows): {rows}. Change split_rows and patch_size together: "
        "training refuses a band thinner than one patch"
    )
    return patch, fractions, note


def starter_config(root: str | Path) -> str:
    """The YAML text of a starter config for the scene folder ``root``."""
    root = Path(root)
    folders = {k: root / k for k in ("optical", "sar", "labels")}
    missing = [f"{k}/" for k, d in folders.items() if not d.is_dir()]
    if missing:
        raise InputError(
            f"{root}: expected folders optical/, sar/ and labels/ of .tif scenes; missing "
            f"{', '.join(missing)}"
        )
    optical = sorted(folders["optical"].glob("*.tif"))
    if not optical:
        raise InputError(f"{folders['optical']}: no .tif scenes")
    names = [p.stem for p in optical]
    for kind in ("sar", "labels"):
        lacking = [n for n in names if not (folders[kind] / f"{n}.tif").exists()]
        if lacking:
            raise InputError(f"{folders[kind]}: no file for scene(s) {', '.join(lacking[:5])}")
    sar = [folders["sar"] / f"{n}.tif" for n in names]
    labels = [folders["labels"] / f"{n}.tif" for n in names]

    opt = _band_names(optical[0], "optical")
    sar_bands = _band_names(sar[0], "sar")
    rgb, nir = _rgb_and_nir(opt.names)
    used_optical = [*rgb, *nir] if opt.described else opt.names
    units, units_why = _sar_units(sar)
    scale, offset, scale_why = _optical_units(optical, opt.names, rgb, opt.dtype)
    found = _label_codes(labels)
    shares = found.shares
    heights: dict[str, int] = {}
    widths: dict[str, int] = {}
    for name, path in zip(names, optical, strict=True):
        with open_raster(path) as src:
            heights[name], widths[name] = src.height, src.width
            if path == optical[0]:
                crs = src.crs.to_string() if src.crs else "no CRS"
                pixel = _pixel_size(src.crs, src.transform, src.height)
    smallest = min(min(heights.values()), min(widths.values()))

    ignore, ignore_why = _ignored_codes(found)
    classes = []
    for i, code in enumerate(c for c in shares if c not in ignore):
        colour = found.colours.get(code, DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)])
        classes.append(
            {
                "code": code,
                "name": found.names.get(code, f"class_{code}"),
                "colour": [int(v) for v in colour],
            }
        )
    if len(classes) < 2:
        raise InputError(
            f"{folders['labels']}: found fewer than two class codes besides the ignored "
            f"ones (codes {list(shares)}, ignored {ignore}); a model needs two classes"
        )

    data: dict[str, Any] = {
        "dataset": "scenes",
        "root": str(root.resolve()),
        "optical_bands": used_optical,
        "sar_bands": sar_bands.names,
        "rgb_bands": rgb,
        "sar_units": units,
    }
    if scale is not None:
        data["optical_scale"] = scale
    if offset is not None:
        data["optical_offset"] = offset
    data |= {"classes": classes, "ignore_codes": ignore}
    if len(names) >= 3:
        patch = int(min(256, (smallest // 2) // 32 * 32))
        if patch < 32:
            raise InputError(f"{root}: scenes of {smallest} px are too small for 32-px patches")
        n_hold = max(1, round(0.15 * len(names)))
        train_n = len(names) - 2 * n_hold
        data["scenes"] = {
            "train": names[:train_n],
            "val": names[train_n : train_n + n_hold],
            "test": names[train_n + n_hold :],
        }
        split_note = (
            "whole scenes: the last ones are held out (check they are not neighbours); "
            f"patch_size {patch}: at most half the smallest scene side ({smallest} px)"
        )
    else:
        patch, data["split_rows"], split_note = _row_split(heights, widths)
    data |= {"patch_size": patch, "batch_size": 8, "train_patches": 256, "stats_patches": 32}
    config = {
        "seed": 0,
        "output_dir": f"runs/{root.resolve().name}",
        "data": data,
        "model": {
            "variant": "gopt",
            "backbone": "efficientnet_lite0",
            "weights": "packaged",
            "prompt_dim": 32,
            "assignment": "soft",
            "decoder_dim": 48,
            # maps as sharp as the pixels: 1-3 px rivers and roads (issue 23)
            "detail_path": True,
        },
        "train": {"epochs": 20, "lr": 0.003, "class_weights": "auto", "device": "auto"},
    }
    share_text = ", ".join(
        f"{c}: {100 * s:.1f}%" + (" (nodata)" if c == found.nodata else "")
        for c, s in shares.items()
    )
    header = [
        f"# Starter config written by `gopt-geo init-config {root}`: edit, then",
        "#   gopt-geo train --config THIS_FILE",
        "# Each line below is a guess from the files; check it before a long run.",
        f"# Scenes: {len(names)} ({crs}, {pixel}; smallest side {smallest} px)",
        f"# optical_bands: {len(opt.names)} band(s) in the files {opt.names} ({opt.dtype}); "
        + (
            "R, G, B (and NIR) selected by their descriptions"
            if opt.described
            else "no band descriptions: the order R, G, B[, NIR] is a guess, check it"
        ),
        f"# optical_scale / optical_offset: {scale_why}",
        f"# sar_units: {sar_bands.names} ({sar_bands.dtype}) {units}: {units_why}",
        f"# Label codes, share of all label pixels: {share_text} ({found.dtype})",
        "# ignore_codes (never trained on or scored): "
        + ("; ".join(ignore_why) if ignore_why else "none"),
        "# classes: every other code; names "
        + ("from the label rasters" if found.names else "are placeholders: rename them"),
        f"# patch_size and split: {split_note}",
        "# class_weights auto: each class weighs 1/sqrt(its share of the training pixels), "
        "so rare classes (often the thin ones: rivers, roads) are not traded away",
        "# model.detail_path: a full-resolution path from every band to the classifier, so "
        "features 1-3 px wide (rivers, canals, roads, field edges) are mapped, not blurred "
        "by the decoder's 1/4 resolution; false is the paper's head",
    ]
    wrapped = [
        part
        for line in header
        for part in (textwrap.wrap(line, 96, subsequent_indent="#     ") or [line])
    ]
    return (
        "\n".join(wrapped) + "\n" + yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
    )


def write_starter_config(root: str | Path, output: str | Path, overwrite: bool = False) -> Path:
    """Write :func:`starter_config` to ``output`` (never over an existing file unless asked)."""
    output = Path(output)
    check_writable([output], overwrite)
    text = starter_config(root)
    return write_text_atomic(output, text)
