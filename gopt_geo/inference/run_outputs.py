"""The files of a ``predict-many`` run as a whole, beside the scenes' own folders.

:func:`write_run_outputs` writes ``run.json`` and ``run.md`` (scenes done, skipped and
failed with reasons, time, scenes/hour, class areas summed over the run),
``index.parquet`` (GeoParquet, one row per scene: footprint, paths, class areas,
status), ``mosaic_<CRS>.vrt`` (the class maps of each CRS as one raster: QGIS opens the
whole run as one layer, styled by ``mosaic_<CRS>.qml``) and a STAC collection linking
the items the scenes' runs wrote (and giving each its collection). It reads only what
the scenes left on disk (their reports and class maps) and the outcomes :mod:`.runner`
reported, so an interrupted run is described as well as a finished one.

A run into object storage (``location``: the URL the run's files go to) writes these
files in a local folder that is uploaded afterwards; the scenes' reports are read and
their class maps opened (header and palette only) where they were uploaded, the items
are fetched into the local folder to get their collection and go up again with it, and
every path the files name is the URL (relative links, as in a folder).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from rasterio.crs import CRS

from .. import __version__
from ..data.classes import scheme_from_tags
from ..io import atomic_path, open_raster, strict_json, write_text_atomic
from ..outputs import remote
from ..outputs.remote import is_url_folder
from ..outputs.stac import input_name, write_collection
from ..outputs.styles import paletted_qml
from .runner import SceneOutcome
from .scene import Scene, safe_id

RUN_JSON = "run.json"
RUN_MARKDOWN = "run.md"
INDEX = "index.parquet"
#: The index's CRS when the scenes are in several CRSs.
INDEX_FALLBACK_CRS = "EPSG:4326"


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _class_rows(report: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list((report or {}).get("classes") or [])


def _read_report(ref: str) -> dict[str, Any] | None:
    """A scene's report, from its folder or its URL."""
    return remote.read_json(ref) if is_url_folder(ref) else read_json(Path(ref))


def _open_output(path: str | Path) -> Any:
    """One of the run's own rasters (a class map), in a folder or uploaded."""
    import rasterio

    return remote.open_raster(path) if is_url_folder(path) else rasterio.open(path)


def _footprint(path: str, output: bool = False) -> tuple[Any, Any] | None:
    """(CRS, shapely polygon of the grid's bounds) of a raster (``output``: one of the
    run's class maps, else an input), or None if it cannot be read or has no CRS."""
    from shapely.geometry import box

    try:
        with _open_output(path) if output else open_raster(path) as src:
            if src.crs is None:
                return None
            return src.crs, box(*src.bounds)
    except Exception:  # a failed scene's unreadable input: no footprint, not an error
        return None


def _to_crs(geometry: Any, src: Any, dst: Any) -> Any:
    """A polygon in another CRS, its edges densified (straight lines do not stay straight)."""
    from rasterio.warp import transform_geom
    from shapely.geometry import mapping, shape

    if src == dst:
        return geometry
    dense = geometry.segmentize(max(geometry.length / 400, 1e-9))
    return shape(transform_geom(src, dst, mapping(dense)))


def write_run_outputs(
    out: Path,
    scenes: Sequence[Scene],
    outcomes: Sequence[SceneOutcome],
    *,
    adapter: str,
    adapter_sha256: str,
    settings: dict[str, Any],
    seconds: float,
    started: _dt.datetime,
    executor_info: str,
    class_names: dict[int, str],
    location: str | None = None,
) -> tuple[dict[str, Path | str], dict[str, Any]]:
    """``run.json``, ``run.md``, ``index.parquet`` and the mosaics of a run (see the
    module docstring) in ``out``; returns their paths (URLs with ``location``, the URL
    ``out`` is uploaded to) and the summary."""

    def where(path: Path) -> Path | str:
        return remote.join(location, path.relative_to(out).as_posix()) if location else path

    rows = []
    totals: dict[int, dict[str, Any]] = {}
    for scene, outcome in zip(scenes, outcomes, strict=True):
        report = _read_report(outcome.report) if outcome.report else None
        areas: dict[str, float | None] = {}
        for c in _class_rows(report):
            total = totals.setdefault(
                int(c["code"]), {"code": c["code"], "name": c["name"], "pixels": 0}
            )
            total["pixels"] += int(c.get("pixels", 0))
            if "area_ha" in c:
                total["area_ha"] = total.get("area_ha", 0.0) + float(c["area_ha"])
                areas[c["name"]] = float(c["area_ha"])
        mapped = outcome.status in ("done", "skipped") and outcome.class_map
        source = outcome.class_map if mapped else scene.optical
        footprint = _footprint(source, output=bool(mapped)) if source else None
        rows.append((scene, outcome, report, areas, footprint))

    crss = {fp[0].to_string(): fp[0] for *_, fp in rows if fp is not None}
    index_crs = next(iter(crss.values())) if len(crss) == 1 else CRS.from_string(INDEX_FALLBACK_CRS)
    mosaics = write_mosaics(out, [(o, fp) for _, o, _, _, fp in rows], location=location)
    index_path = _write_index(out, rows, index_crs, class_names)
    # the STAC items the scenes' runs wrote, linked by one collection (rewritten per run)
    items = [
        _item_here(o.report.replace("_report.json", "_item.json"), out, location)
        for o in outcomes
        if o.status in ("done", "skipped") and o.report
    ]
    items = [p for p in items if p is not None and p.exists()]
    collection = (
        write_collection(
            items,
            out,
            # the adapter by name: no local path in the catalogue (the folder may move)
            description=f"gopt-geo land-cover maps made with {input_name(adapter)}",
            overwrite=True,
        )
        if items
        else None
    )

    done = [o for o in outcomes if o.status == "done"]
    counts = {
        status: sum(o.status == status for o in outcomes)
        for status in ("done", "skipped", "failed", "not run")
    }
    summary: dict[str, Any] = {
        "gopt_geo_version": __version__,
        "started": started.isoformat(timespec="seconds"),
        "seconds": seconds,
        "scenes_per_hour": len(done) / (seconds / 3600) if done and seconds > 0 else 0.0,
        "executor": executor_info,
        "adapter": adapter,
        "adapter_sha256": adapter_sha256,
        "options": settings,
        "counts": {**counts, "total": len(outcomes)},
        "model_loads": sum(o.model_loaded for o in outcomes),
        "workers": sorted({o.worker for o in outcomes if o.worker}),
        "scenes": [
            {
                **scene.describe(),
                **dataclasses.asdict(outcome),
                "area_ha": areas or None,
                "crs": fp[0].to_string() if fp else None,
            }
            for scene, outcome, _, areas, fp in rows
        ],
        "class_totals": [totals[k] for k in sorted(totals)],
        "index": str(where(index_path)),
        "index_crs": index_crs.to_string(),
        "mosaics": {k: str(where(v)) for k, v in mosaics.items()},
        "collection": str(where(collection)) if collection else None,
    }
    files: dict[str, Path] = {
        "run_json": write_text_atomic(out / RUN_JSON, strict_json(summary)),
        "run_markdown": write_text_atomic(out / RUN_MARKDOWN, render_run_markdown(summary)),
        "index": index_path,
        **{f"mosaic {k}": v for k, v in mosaics.items()},
        **({"collection": collection} if collection else {}),
    }
    return {k: where(v) for k, v in files.items()}, summary


def _item_here(ref: str, out: Path, location: str | None) -> Path | None:
    """A scene's STAC item as a local file: its own path, or (a run in object storage)
    a copy fetched to the same place under ``out`` (None when it is missing)."""
    if not location or not is_url_folder(ref):
        return Path(ref)
    return remote.download(ref, out / remote.relative(ref, location))


def _write_index(
    out: Path, rows: Sequence[tuple[Any, ...]], crs: Any, class_names: dict[int, str]
) -> Path:
    """The GeoParquet index: one row per scene, its footprint in ``crs``."""
    import geopandas as gpd

    names = [class_names[k] for k in sorted(class_names)]
    records, geometries = [], []
    for scene, outcome, _report, areas, fp in rows:
        record = {
            "id": scene.id,
            "status": outcome.status,
            "reason": outcome.reason,
            "attempts": outcome.attempts,
            "seconds": outcome.seconds,
            "optical": scene.describe()["optical"],
            "sar": scene.describe()["sar"],
            "class_map": outcome.class_map,
            "report": outcome.report,
            "scene_crs": fp[0].to_string() if fp else None,
        }
        for name in names:
            record[f"area_ha_{safe_id(name)}"] = areas.get(name) if areas else None
        records.append(record)
        geometries.append(_to_crs(fp[1], fp[0], crs) if fp else None)
    frame = gpd.GeoDataFrame(records, geometry=geometries, crs=crs)
    final = out / INDEX
    with atomic_path(final) as tmp:
        frame.to_parquet(tmp)
    return final


def _crs_tag(crs: Any) -> str:
    epsg = crs.to_epsg()
    return f"EPSG_{epsg}" if epsg else safe_id(crs.to_string())[:40]


def write_mosaics(
    out: Path, mapped: Sequence[tuple[SceneOutcome, Any]], location: str | None = None
) -> dict[str, Path]:
    """One VRT per CRS over the class maps of the run (done and skipped scenes): the finest
    pixel size of the group, nearest-neighbour, each map's nodata transparent so that
    overlapping scenes do not hide each other; palette and class names from the maps.
    Paths are relative to the VRT, so the run folder can be moved as a whole (and
    uploaded: with ``location``, the URL ``out`` goes to, the maps are URLs under it)."""

    def rel(p: str) -> str:
        if location and is_url_folder(p):
            return remote.relative(p, location)
        return os.path.relpath(Path(p).absolute(), out.absolute())

    groups: dict[str, list[Any]] = {}
    for outcome, fp in mapped:
        if outcome.status in ("done", "skipped") and outcome.class_map and fp is not None:
            groups.setdefault(fp[0].to_string(), []).append(outcome.class_map)
    written = {}
    for key, paths in groups.items():
        infos = []
        for p in paths:
            with _open_output(p) as src:
                infos.append(
                    {
                        "rel": rel(p),
                        "transform": src.transform,
                        "width": src.width,
                        "height": src.height,
                        "crs": src.crs,
                        "nodata": src.nodata,
                        "colormap": _colormap(src),
                        "tags": src.tags(1),
                        "scheme": scheme_from_tags(src.tags()),
                    }
                )
        final = out / f"mosaic_{_crs_tag(infos[0]['crs'])}.vrt"
        write_text_atomic(final, _mosaic_xml(final.parent, infos))
        entries = _mosaic_entries(infos[0])
        if entries:  # QGIS loads NAME.qml beside NAME.vrt, as beside each class map
            write_text_atomic(final.with_suffix(".qml"), paletted_qml(entries))
        written[key] = final
    return written


def _mosaic_entries(first: dict[str, Any]) -> list[tuple[int, str, tuple[int, ...]]]:
    """(code, name, colour) of the mosaic's classes: the maps' scheme, else their band
    tags and colour table."""
    scheme = first["scheme"]
    if scheme is not None:
        return [(c.code, c.name, tuple(c.color)) for c in scheme.classes]
    cmap = first["colormap"] or {}
    names = _band_names(first["tags"])
    return [(code, name, tuple(cmap[code][:3])) for code, name in names.items() if code in cmap]


def _band_names(tags: dict[str, str]) -> dict[int, str]:
    """Class names from a class map's band tags (``CLASS_<code>``)."""
    return {
        int(k.split("_", 1)[1]): v
        for k, v in tags.items()
        if k.startswith("CLASS_") and k.split("_", 1)[1].isdigit()
    }


def _colormap(src: Any) -> dict[int, tuple[int, ...]] | None:
    try:
        return src.colormap(1)
    except ValueError:  # no palette
        return None


def _mosaic_xml(folder: Path, infos: Sequence[dict[str, Any]]) -> str:
    res_x = min(abs(i["transform"].a) for i in infos)
    res_y = min(abs(i["transform"].e) for i in infos)
    lefts = [i["transform"].c for i in infos]
    tops = [i["transform"].f for i in infos]
    rights = [i["transform"].c + i["width"] * i["transform"].a for i in infos]
    bottoms = [i["transform"].f + i["height"] * i["transform"].e for i in infos]
    left, top, right, bottom = min(lefts), max(tops), max(rights), min(bottoms)
    width = max(1, round((right - left) / res_x))
    height = max(1, round((top - bottom) / res_y))
    first = infos[0]
    nodata = first["nodata"]
    lines = [
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
        f"<SRS>{escape(first['crs'].to_wkt())}</SRS>",
        f"<GeoTransform>{left!r}, {res_x!r}, 0.0, {top!r}, 0.0, {-res_y!r}</GeoTransform>",
        '<VRTRasterBand dataType="Byte" band="1">',
        "<Description>land cover class</Description>",
    ]
    if nodata is not None:
        lines.append(f"<NoDataValue>{int(nodata)}</NoDataValue>")
    # category names and a colour table as long as the highest class code, codes of no
    # class transparent (the maps' own TIFF palette has 256 opaque entries)
    entries = {code: (name, color) for code, name, color in _mosaic_entries(first)}
    if not entries:
        names = _band_names(first["tags"])
        entries = {code: (name, (0, 0, 0)) for code, name in names.items()}
    if entries:
        lines.append("<CategoryNames>")
        lines += [
            f"<Category>{escape(entries[c][0] if c in entries else '')}</Category>"
            for c in range(max(entries) + 1)
        ]
        lines.append("</CategoryNames>")
    if first["colormap"] and entries:
        lines.append("<ColorInterp>Palette</ColorInterp><ColorTable>")
        for value in range(max(entries) + 1):
            r, g, b, a = (*entries[value][1][:3], 255) if value in entries else (0, 0, 0, 0)
            lines.append(f'<Entry c1="{r}" c2="{g}" c3="{b}" c4="{a}"/>')
        lines.append("</ColorTable>")
    for info in infos:
        t = info["transform"]
        x0, y0 = (t.c - left) / res_x, (top - t.f) / res_y
        xs, ys = info["width"] * abs(t.a) / res_x, info["height"] * abs(t.e) / res_y
        rel = info["rel"]  # relative to the VRT's folder (write_mosaics)
        lines += [
            "<ComplexSource>",
            f'<SourceFilename relativeToVRT="1">{escape(rel)}</SourceFilename>',
            "<SourceBand>1</SourceBand>",
            f'<SrcRect xOff="0" yOff="0" xSize="{info["width"]}" ySize="{info["height"]}"/>',
            f'<DstRect xOff="{x0!r}" yOff="{y0!r}" xSize="{xs!r}" ySize="{ys!r}"/>',
        ]
        if info["nodata"] is not None:
            lines.append(f"<NODATA>{int(info['nodata'])}</NODATA>")
        lines.append("</ComplexSource>")
    lines += ["</VRTRasterBand>", "</VRTDataset>"]
    return "\n".join(lines) + "\n"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds:.1f} s"


def render_run_markdown(summary: dict[str, Any]) -> str:
    """The run report for people: counts, time, scenes/hour, failures, class areas."""
    c = summary["counts"]
    lines = [
        "# Prediction run",
        "",
        f"{c['total']} scene(s): {c['done']} mapped, {c['skipped']} skipped (already mapped), "
        f"{c['failed']} failed"
        + (f", {c['not run']} not run (interrupted)" if c["not run"] else "")
        + ".",
        "",
        "| | |",
        "|---|---|",
        f"| started | {summary['started']} |",
        f"| time | {_hours(summary['seconds'])} |",
        f"| scenes/hour | {summary['scenes_per_hour']:,.1f} |",
        f"| executor | {summary['executor']} |",
        f"| model loads | {summary['model_loads']} |",
        f"| adapter | `{summary['adapter']}` (sha256 {summary['adapter_sha256'][:12]}) |",
        f"| options | {', '.join(f'{k}={v}' for k, v in summary['options'].items())} |",
        f"| index | `{Path(summary['index']).name}` (footprints in {summary['index_crs']}) |",
    ]
    for crs, path in summary["mosaics"].items():
        lines.append(f"| mosaic ({crs}) | `{Path(path).name}` |")
    lines += ["", "## Scenes", "", "| scene | status | s | reason |", "|---|---|---:|---|"]
    for s in summary["scenes"]:
        reason = (s["reason"] or "").replace("|", "\\|") if s["status"] != "done" else ""
        lines.append(f"| {s['id']} | {s['status']} | {s['seconds']:.1f} | {reason} |")
    totals = summary["class_totals"]
    if totals:
        has_area = any("area_ha" in t for t in totals)
        lines += ["", "## Classes over the run (mapped and skipped scenes)", ""]
        lines += [
            "| code | class | pixels |" + (" area (ha) |" if has_area else ""),
            "|---:|---|---:|" + ("---:|" if has_area else ""),
        ]
        for t in totals:
            row = f"| {t['code']} | {t['name']} | {t['pixels']:,} |"
            if has_area:
                row += f" {t.get('area_ha', 0.0):,.2f} |"
            lines.append(row)
    return "\n".join(lines) + "\n"
