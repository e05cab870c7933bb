"""``gopt-geo change``: what changed between two class maps of the same place.

Two maps of one area (two dates, or two models) are compared pixel by pixel on BEFORE's
grid; AFTER, in any CRS and resolution, is warped onto it on the fly (nearest neighbour, a
``WarpedVRT`` read strip by strip, design §1), so memory stays flat in the scene's size.
The outputs form one set, committed together (:mod:`gopt_geo.outputs.staging`):

- ``NAME_transitions.tif``: one code per from->to pair (``1 + i * T + j`` for BEFORE's
  i-th and AFTER's j-th class, in code order), nodata 0 where either map is nodata or,
  with ``min_confidence``, where either map's confidence is below it; a colour table (a
  change takes the colour of its new class, an unchanged pixel a pale version of its
  class's), a ``from → to`` name per code in the tags, a raster attribute table and a
  QGIS style beside it;
- ``NAME_matrix.csv``: one row per pair with pixels, m² and ha;
- ``NAME_matrix.md``: the matrix in hectares (pixels without a CRS) and the changes by area.

Classes come from each map's tags (a gopt-geo class map's scheme, without its ignore
codes, or ``CLASS_<code>`` tags as label rasters have); pixels whose code is not a listed
class count as nodata.
Areas are ground areas (per-row pixel areas on the ellipsoid for geographic grids).
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data.classes import DEFAULT_COLOURS, ClassScheme, names_from_tags, scheme_from_tags
from .errors import InputError
from .io import (
    bounds_in,
    ensure_output_dir,
    open_raster,
    streaming_gdal_env,
)
from .outputs.aligned import AlignedRaster, read_with_mask, strips
from .outputs.grid import Grid, pixel_areas_m2
from .outputs.staging import StagedSet
from .outputs.styles import paletted_qml
from .outputs.writers import StripRasterWriter, rat_xml

#: Nodata of the transition map.
TRANSITION_NODATA = 0
#: Tag holding the transitions (code, from, to, name) as JSON.
TRANSITIONS_TAG = "GOPT_GEO_TRANSITIONS"
#: How far an unchanged class's colour is faded towards white.
UNCHANGED_FADE = 0.6


@dataclass(frozen=True)
class MapClass:
    """One class of a compared map: code, name, colour."""

    code: int
    name: str
    color: tuple[int, int, int]

    def same_class(self, other: MapClass) -> bool:
        """Whether a pixel going from this class to ``other`` is unchanged: classes are
        matched by name (case and surrounding spaces ignored), so two maps whose schemes
        give one class different codes still compare class for class."""
        return self.name.strip().casefold() == other.name.strip().casefold()


@dataclass
class ChangeResult:
    """What :func:`change_maps` wrote and counted.

    ``pixels[i, j]`` (and ``area_m2[i, j]``) is BEFORE's class ``before_classes[i]``
    becoming AFTER's class ``after_classes[j]``.
    """

    transitions: Path
    matrix_csv: Path
    matrix_markdown: Path
    style: Path
    before_classes: list[MapClass]
    after_classes: list[MapClass]
    pixels: np.ndarray
    area_m2: np.ndarray | None
    nodata_pixels: int
    masked_pixels: int  # valid in both maps, but below min_confidence in either
    seconds: float
    min_confidence: float | None = None
    files: list[Path] = field(default_factory=list)

    def code(self, before_code: int, after_code: int) -> int:
        """The transition map's code for ``before_code`` -> ``after_code``."""
        i = [c.code for c in self.before_classes].index(before_code)
        j = [c.code for c in self.after_classes].index(after_code)
        return transition_code(i, j, len(self.after_classes))

    @property
    def changed_share(self) -> float:
        """Share of the compared pixels whose class changed."""
        total = int(self.pixels.sum())
        same = sum(
            int(self.pixels[i, j])
            for i, b in enumerate(self.before_classes)
            for j, a in enumerate(self.after_classes)
            if b.same_class(a)
        )
        return (total - same) / total if total else 0.0

    @property
    def renumbered(self) -> list[tuple[str, int, int]]:
        """(name, before code, after code) of classes matched by name across two codes."""
        return [
            (b.name, b.code, a.code)
            for b in self.before_classes
            for a in self.after_classes
            if b.same_class(a) and b.code != a.code
        ]

    def summary(self) -> str:
        compared = int(self.pixels.sum())
        text = (
            f"{compared:,} px compared, {100 * self.changed_share:.1f}% changed class; "
            f"{self.nodata_pixels:,} px nodata in either map"
        )
        if self.min_confidence is not None:
            text += f", {self.masked_pixels:,} px below confidence {self.min_confidence:g}"
        if self.renumbered:
            pairs = ", ".join(f"{n} ({b} -> {a})" for n, b, a in self.renumbered)
            text += f"; classes matched by name across the two schemes: {pairs}"
        return text


def transition_code(i: int, j: int, n_after: int) -> int:
    """Code of BEFORE's i-th class becoming AFTER's j-th (0 is nodata)."""
    return 1 + i * n_after + j


def _classes(path: Path, src: Any, given: ClassScheme | None = None) -> list[MapClass]:
    """The classes a map's tags declare (or ``given``, for maps from other tools), in code
    order, with colours (scheme, colour table, or defaults). A gopt-geo scheme's ignore
    codes (background) are not classes: their pixels are not compared, as in evaluation."""
    names = names_from_tags(src.tags(), src.tags(1))
    scheme = given or scheme_from_tags(src.tags())
    if scheme is not None:
        names = {c.code: c.name for c in scheme.classes}
    if not names:
        raise InputError(
            f"{path}: no class names in the map's tags (a class map from gopt-geo predict, "
            "or a raster with CLASS_<code> tags); give the scheme with --classes"
        )
    colours: dict[int, tuple[int, int, int]] = {}
    if scheme is not None:
        colours = {c.code: c.color for c in scheme.classes}
    try:
        cmap = src.colormap(1)
    except ValueError:  # no colour table
        cmap = {}
    out = []
    for i, code in enumerate(sorted(names)):
        rgba = cmap.get(code)
        default = rgba[:3] if rgba and rgba[3] else DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)]
        out.append(MapClass(code, names[code], tuple(colours.get(code, default))))  # type: ignore[arg-type]
    return out


def _check_common(
    before: Path, after: Path, b_classes: list[MapClass], a_classes: list[MapClass]
) -> None:
    """Refuse two maps that share no class name: every pixel would count as changed."""
    if not any(b.same_class(a) for b in b_classes for a in a_classes):
        raise InputError(
            f"{after}: no class in common with {before} (before: "
            f"{', '.join(c.name for c in b_classes)}; after: "
            f"{', '.join(c.name for c in a_classes)}); classes are matched by name: give "
            "both maps one scheme with --classes"
        )


def _lut(classes: list[MapClass]) -> np.ndarray:
    lut = np.full(65536, -1, dtype=np.int64)
    for i, c in enumerate(classes):
        lut[c.code] = i
    return lut


def _check_class_map(path: Path, src: Any) -> None:
    if src.dtypes[0] not in ("uint8", "uint16", "int8", "int16", "int32", "uint32"):
        raise InputError(
            f"{path}: not a class map (band 1 is {src.dtypes[0]}; expected integer codes)"
        )


def _check_overlap(before: Path, after: Path) -> None:
    """AFTER must overlap BEFORE (and both have a CRS, or neither)."""
    with open_raster(before) as b, open_raster(after) as a:
        if (b.crs is None) != (a.crs is None):
            missing = before if b.crs is None else after
            raise InputError(
                f"{missing}: map has no CRS, but the other one has; cannot place them relative "
                "to each other (give both a CRS, or neither)"
            )
        crs = b.crs
        own = b.bounds
    other = bounds_in(after, crs)
    bx = sorted((own[0], own[2])), sorted((own[1], own[3]))
    ax = sorted((other[0], other[2])), sorted((other[1], other[3]))
    if any(a_[0] >= b_[1] or a_[1] <= b_[0] for a_, b_ in zip(ax, bx, strict=True)):
        raise InputError(f"{after}: does not overlap {before}; nothing to compare")


def _sibling_confidence(class_map: Path) -> Path:
    """``X_classes.tif`` -> ``X_confidence.tif`` (as gopt-geo predict names them)."""
    stem = class_map.stem.removesuffix("_classes")
    return class_map.with_name(f"{stem}_confidence.tif")


def _entries(
    before: list[MapClass], after: list[MapClass]
) -> list[tuple[int, MapClass, MapClass, tuple[int, int, int]]]:
    """(code, from, to, colour) for every pair."""
    out = []
    for i, b in enumerate(before):
        for j, a in enumerate(after):
            if b.same_class(a):
                color = tuple(round(v + (255 - v) * UNCHANGED_FADE) for v in b.color)
            else:
                color = a.color
            out.append((transition_code(i, j, len(after)), b, a, color))
    return out  # type: ignore[return-value]


def change_maps(
    before: str | Path,
    after: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    min_confidence: float | None = None,
    before_confidence: str | Path | None = None,
    after_confidence: str | Path | None = None,
    overwrite: bool = False,
    block_rows: int = 512,
    classes: ClassScheme | None = None,
) -> ChangeResult:
    """Compare two class maps of the same place into ``out_dir`` (module docstring).

    ``name`` prefixes the outputs (default ``BEFORE_to_AFTER``, from the file names);
    ``min_confidence`` (0..1) masks pixels where either map's confidence is lower, read
    from ``before_confidence`` / ``after_confidence`` or, by default, the
    ``X_confidence.tif`` that gopt-geo predict wrote beside ``X_classes.tif``.
    ``classes``: the scheme of both maps, for maps from other tools that carry none
    (it replaces what the maps' tags declare).
    """
    before, after, out_dir = Path(before), Path(after), Path(out_dir)
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise InputError(f"--min-confidence must be between 0 and 1, got {min_confidence}")
    if block_rows < 1:
        raise InputError(f"block rows must be at least 1, got {block_rows}")
    name = name or (
        f"{before.stem.removesuffix('_classes')}_to_{after.stem.removesuffix('_classes')}"
    )
    confidences: list[tuple[Path, str]] = []
    if min_confidence is not None:
        for given, cmap, role in (
            (before_confidence, before, "BEFORE"),
            (after_confidence, after, "AFTER"),
        ):
            path = Path(given) if given is not None else _sibling_confidence(cmap)
            if not path.exists():
                raise InputError(
                    f"{path}: confidence map of {cmap.name} not found (needed by "
                    f"--min-confidence; give --{role.lower()}-confidence)"
                )
            confidences.append((path, role))
    finals = {
        "transitions": out_dir / f"{name}_transitions.tif",
        "rat": out_dir / f"{name}_transitions.tif.aux.xml",
        "style": out_dir / f"{name}_transitions.qml",
        "csv": out_dir / f"{name}_matrix.csv",
        "markdown": out_dir / f"{name}_matrix.md",
    }
    staging = StagedSet(out_dir, f"{name}_change", list(finals.values()))
    for path in (before, after):
        with open_raster(path) as src:
            _check_class_map(path, src)
    _check_overlap(before, after)
    staging.prepare(overwrite)  # leftovers of a killed run; refuses existing outputs
    ensure_output_dir(out_dir)
    start = time.perf_counter()
    with streaming_gdal_env():
        result = _compare(
            before,
            after,
            finals,
            staging,
            name,
            min_confidence,
            confidences,
            block_rows,
            overwrite,
            classes,
        )
    result.seconds = time.perf_counter() - start
    return result


def _compare(
    before: Path,
    after: Path,
    finals: dict[str, Path],
    staging: StagedSet,
    name: str,
    min_confidence: float | None,
    confidences: list[tuple[Path, str]],
    block_rows: int,
    overwrite: bool,
    classes: ClassScheme | None = None,
) -> ChangeResult:
    opened: list[AlignedRaster] = []
    writer: StripRasterWriter | None = None
    try:
        with open_raster(before) as b_src:
            b_classes = _classes(before, b_src, classes)
            after_map = AlignedRaster(after, b_src, "AFTER class map")
            opened.append(after_map)
            a_classes = _classes(after, after_map.src, classes)
            _check_common(before, after, b_classes, a_classes)
            conf_maps = []
            for path, role in confidences:
                conf_maps.append(AlignedRaster(path, b_src, f"{role} confidence"))
                opened.append(conf_maps[-1])
            n_b, n_a = len(b_classes), len(a_classes)
            pairs = n_b * n_a
            dtype = "uint8" if pairs <= 255 else "uint16"
            entries = _entries(b_classes, a_classes)
            grid = Grid(b_src.crs, b_src.transform, b_src.width, b_src.height)
            colormap = {code: (*color, 255) for code, _, _, color in entries}
            colormap[TRANSITION_NODATA] = (0, 0, 0, 0)
            writer = StripRasterWriter(
                finals["transitions"],
                grid,
                count=1,
                dtype=dtype,
                nodata=TRANSITION_NODATA,
                overview_resampling="MODE",
                colormap=colormap if dtype == "uint8" else None,
            )
            lut_b, lut_a = _lut(b_classes), _lut(a_classes)
            pixels = np.zeros(pairs, dtype=np.int64)
            areas = np.zeros(pairs, dtype=np.float64) if grid.crs is not None else None
            nodata = masked = 0
            for row0, window in strips(grid.height, grid.width, block_rows):
                n = int(window.height)
                b_codes, b_valid = read_with_mask(b_src, window, before)
                a_codes, a_valid = after_map.read(window)
                i = lut_b[b_codes.astype(np.int64) & 0xFFFF]
                j = lut_a[a_codes.astype(np.int64) & 0xFFFF]
                valid = b_valid & a_valid & (i >= 0) & (j >= 0)
                nodata += int((~valid).sum())
                if min_confidence is not None:
                    confident = np.ones_like(valid)
                    for conf in conf_maps:
                        raw, ok = conf.read(window)
                        confident &= ok & (raw * conf.scale + conf.offset >= min_confidence)
                    masked += int((valid & ~confident).sum())
                    valid &= confident
                pair = np.where(valid, i * n_a + j, 0)
                codes = np.where(valid, pair + 1, TRANSITION_NODATA).astype(dtype)
                writer.write(codes[None])
                pixels += np.bincount(pair[valid], minlength=pairs)
                if areas is not None:
                    row_area = pixel_areas_m2(grid.crs, grid.transform, row0, n)
                    per_pixel = np.broadcast_to(row_area[:, None], pair.shape)  # type: ignore[index]
                    areas += np.bincount(pair[valid], weights=per_pixel[valid], minlength=pairs)
            transitions = [
                {
                    "code": code,
                    "from_code": b.code,
                    "from_name": b.name,
                    "to_code": a.code,
                    "to_name": a.name,
                    "name": f"{b.name} → {a.name}",
                }
                for code, b, a, _ in entries
            ]
            writer.finish(
                target=staging.stage(finals["transitions"]),
                tags={
                    TRANSITIONS_TAG: json.dumps(transitions),
                    "CHANGE_BEFORE": str(before),
                    "CHANGE_AFTER": str(after),
                    "NODATA_MEANING": f"{TRANSITION_NODATA}: nodata in either map"
                    + (" or confidence below the threshold" if min_confidence is not None else ""),
                },
                band_tags={1: {f"CLASS_{t['code']}": t["name"] for t in transitions}},
                descriptions=["land-cover transition (before → after)"],
            )
        result = ChangeResult(
            transitions=finals["transitions"],
            matrix_csv=finals["csv"],
            matrix_markdown=finals["markdown"],
            style=finals["style"],
            before_classes=b_classes,
            after_classes=a_classes,
            pixels=pixels.reshape(n_b, n_a),
            area_m2=areas.reshape(n_b, n_a) if areas is not None else None,
            nodata_pixels=nodata,
            masked_pixels=masked,
            seconds=0.0,
            min_confidence=min_confidence,
            files=list(finals.values()),
        )
        named = [(code, f"{b.name} → {a.name}", color) for code, b, a, color in entries]
        staging.stage(finals["rat"]).write_text(rat_xml(named), encoding="utf-8")
        staging.stage(finals["style"]).write_text(paletted_qml(named), encoding="utf-8")
        staging.stage(finals["csv"]).write_text(_matrix_csv(result), encoding="utf-8")
        staging.stage(finals["markdown"]).write_text(
            _matrix_markdown(result, before, after, name), encoding="utf-8"
        )
        order = [finals[k] for k in ("transitions", "rat", "style", "csv", "markdown")]
        staging.commit(order, overwrite=overwrite, remove_first=[finals["markdown"]])
        return result
    finally:
        for m in opened:
            m.close()
        if not staging.committed:
            if writer is not None:
                writer.abort()
            staging.discard()


def _matrix_csv(result: ChangeResult) -> str:
    """One row per pair: codes, names, transition code, pixels, m², ha."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(
        [
            "from_code",
            "from_class",
            "to_code",
            "to_class",
            "transition_code",
            "pixels",
            "area_m2",
            "area_ha",
        ]
    )
    n_a = len(result.after_classes)
    for i, b in enumerate(result.before_classes):
        for j, a in enumerate(result.after_classes):
            area = result.area_m2[i, j] if result.area_m2 is not None else None
            w.writerow(
                [
                    b.code,
                    b.name,
                    a.code,
                    a.name,
                    transition_code(i, j, n_a),
                    int(result.pixels[i, j]),
                    f"{area:.2f}" if area is not None else "",
                    f"{area / 1e4:.4f}" if area is not None else "",
                ]
            )
    return out.getvalue()


def _matrix_markdown(result: ChangeResult, before: Path, after: Path, name: str) -> str:
    """The matrix (ha, or pixels without a CRS) with totals, and the changes by size."""
    has_area = result.area_m2 is not None
    values = result.area_m2 / 1e4 if result.area_m2 is not None else result.pixels
    unit = "ha" if has_area else "pixels"

    def fmt(v: float) -> str:
        return f"{v:,.2f}" if has_area else f"{int(v):,}"

    lines = [
        f"# Land-cover change: {name}",
        "",
        f"- before: `{before}`",
        f"- after: `{after}` (warped onto the before map's grid, nearest neighbour)",
        f"- {result.summary()}",
        "",
        f"## Transition matrix ({unit}; rows: before, columns: after)",
        "",
        "| before \\ after | " + " | ".join(a.name for a in result.after_classes) + " | total |",
        "|---|" + "---:|" * (len(result.after_classes) + 1),
    ]
    for i, b in enumerate(result.before_classes):
        row = [fmt(v) for v in values[i]] + [fmt(values[i].sum())]
        lines.append(f"| {b.name} | " + " | ".join(row) + " |")
    totals = [fmt(v) for v in values.sum(0)] + [fmt(values.sum())]
    lines += ["| total | " + " | ".join(totals) + " |", "", "## Changes, largest first", ""]
    changes = [
        (values[i, j], result.pixels[i, j], b, a)
        for i, b in enumerate(result.before_classes)
        for j, a in enumerate(result.after_classes)
        if not b.same_class(a) and result.pixels[i, j] > 0
    ]
    changes.sort(key=lambda c: -c[0])
    if not changes:
        lines.append("No pixel changed class.")
    else:
        head = "| from | to | pixels |" + (" m² | ha |" if has_area else "")
        lines += [head, "|---|---|---:|" + ("---:|---:|" if has_area else "")]
        for v, n, b, a in changes:
            row = f"| {b.name} | {a.name} | {int(n):,} |"
            if has_area:
                row += f" {v * 1e4:,.0f} | {v:,.2f} |"
            lines.append(row)
    return "\n".join(lines) + "\n"
