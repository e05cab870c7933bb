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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .data.classes import DEFAULT_COLOURS, names_from_tags
from .errors import InputError
from .io import check_writable, data_band_count, open_raster, write_text_atomic

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


def _label_codes(paths: list[Path]) -> tuple[dict[int, float], dict[int, str], dict, int | None]:
    """Pixel share per code, names and colour table from the label rasters, their nodata."""
    counts: dict[int, int] = {}
    names: dict[int, str] = {}
    colours: dict[int, tuple[int, int, int]] = {}
    nodata = None
    for path in paths:
        with open_raster(path) as src:
            nodata = src.nodata if src.nodata is not None else nodata
            names = {**names_from_tags(src.tags(), src.tags(1)), **names}
            try:
                colours = {k: tuple(v[:3]) for k, v in src.colormap(1).items()} | colours
            except ValueError:  # no colour table
                pass
            for _, window in src.block_windows(1):
                block = src.read(1, window=window)
                if nodata is not None:
                    block = block[block != nodata]
                codes, n = np.unique(block, return_counts=True)
                for c, k in zip(codes.tolist(), n.tolist(), strict=True):
                    counts[int(c)] = counts.get(int(c), 0) + k
    total = max(sum(counts.values()), 1)
    shares = {c: counts[c] / total for c in sorted(counts)}
    return shares, names, colours, None if nodata is None else int(nodata)


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
    shares, code_names, colours, label_nodata = _label_codes(labels)
    with open_raster(optical[0]) as src:
        crs = src.crs.to_string() if src.crs else "none (pixel grid)"
        res = abs(src.transform.a)
        smallest = min(src.width, src.height)
    for p in optical[1:]:
        with open_raster(p) as src:
            smallest = min(smallest, src.width, src.height)

    ignore = [c for c, n in code_names.items() if n.lower() in _IGNORE_NAMES and c in shares]
    if not ignore and 0 in shares and 0 not in code_names:
        ignore = [0]
    classes = []
    for i, code in enumerate(c for c in shares if c not in ignore):
        colour = colours.get(code, DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)])
        classes.append(
            {
                "code": code,
                "name": code_names.get(code, f"class_{code}"),
                "colour": [int(v) for v in colour],
            }
        )
    if len(classes) < 2:
        raise InputError(f"{folders['labels']}: found fewer than two class codes ({list(shares)})")

    patch = int(min(256, max(32, (smallest // 2) // 32 * 32)))
    data: dict[str, Any] = {
        "dataset": "scenes",
        "root": str(root.resolve()),
        "optical_bands": used_optical,
        "sar_bands": sar_bands.names,
        "rgb_bands": rgb,
        "sar_units": units,
        "classes": classes,
        "ignore_codes": ignore,
        "patch_size": patch,
        "batch_size": 8,
        "train_patches": 256,
        "stats_patches": 32,
    }
    if len(names) >= 3:
        n_hold = max(1, round(0.15 * len(names)))
        train_n = len(names) - 2 * n_hold
        data["scenes"] = {
            "train": names[:train_n],
            "val": names[train_n : train_n + n_hold],
            "test": names[train_n + n_hold :],
        }
        split_note = "whole scenes: the last ones are held out (check they are not neighbours)"
    else:
        data["split_rows"] = [0.7, 0.15, 0.15]
        split_note = (
            f"bands of rows of each scene (fewer than 3 scenes); a {patch}-row guard gap "
            "between bands is used by no split"
        )
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
        },
        "train": {"epochs": 20, "lr": 0.003, "class_weights": "auto", "device": "auto"},
    }
    share_text = ", ".join(f"{c}: {100 * s:.1f}%" for c, s in shares.items())
    header = [
        f"# Starter config written by `gopt-geo init-config {root}`: edit, then",
        "#   gopt-geo train --config THIS_FILE",
        f"# Scenes: {len(names)} ({crs}, {res:g} units/pixel, smallest side {smallest} px)",
        f"# Optical: {len(opt.names)} band(s) {opt.names} ({opt.dtype}); "
        + (
            "selected by their descriptions"
            if opt.described
            else "no band descriptions: the order R, G, B[, NIR] is a guess, check it"
        ),
        f"# SAR: {sar_bands.names} ({sar_bands.dtype}); units guessed: {units_why}",
        f"# Label codes and pixel shares: {share_text}"
        + (f"; nodata {label_nodata}" if label_nodata is not None else ""),
        f"# Ignored codes (never trained on or scored): {ignore or 'none'}; class names "
        + ("from the label rasters" if code_names else "are placeholders: rename them"),
        f"# Split: {split_note}",
        "# Loss: class_weights auto weighs each class by 1/sqrt(its share of the training "
        "pixels), so rare classes (often the thin ones: rivers, roads) are not traded away",
        "",
    ]
    return "\n".join(header) + yaml.safe_dump(config, sort_keys=False, default_flow_style=None)


def write_starter_config(root: str | Path, output: str | Path, overwrite: bool = False) -> Path:
    """Write :func:`starter_config` to ``output`` (never over an existing file unless asked)."""
    output = Path(output)
    check_writable([output], overwrite)
    text = starter_config(root)
    return write_text_atomic(output, text)
