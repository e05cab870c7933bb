"""STAC metadata of a run's outputs: one Item per predicted scene, a Collection for many.

Catalogues, STAC browsers and tools such as ``odc-stac`` or ``stackstac`` find maps through
STAC. :func:`build_item` describes one run's output set with core STAC 1.1 and the
``proj`` (CRS, transform, shape), ``raster`` (band types, nodata, scales), ``classification``
(the class map's codes, names and colours) and ``file`` (size and sha256 multihash of
every file) extensions, plus gopt-geo's provenance: the adapter's sha256, backbone and
variant, the run's options, the gopt-geo version and the input hrefs (also as
``derived_from`` links). Asset hrefs are relative (``./NAME``), so the output folder can be
moved or uploaded as it is. The item is written inside the output set, so the sizes and
checksums describe exactly the files committed beside it.

The item's ``datetime`` is the processing time: gopt-geo does not know when the input was
acquired; ``gopt_geo:datetime`` says so.

:func:`write_collection` links several items (``predict-many``) in a Collection whose
extent covers them all.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pystac
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension, Sampling
from rasterio.transform import array_bounds
from rasterio.warp import transform as warp_points

from .. import __version__
from ..data.classes import ClassScheme
from ..errors import InputError
from ..io import check_writable, ensure_output_dir, write_text_atomic
from .grid import Grid
from .output_set import CONFIDENCE_SCALE, PROBABILITY_SCALE, UNCERTAINTY_NODATA, UNCERTAINTY_SCALE

#: The processing extension (``processing:software``, ``processing:datetime``).
PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
#: Points per edge of the scene's footprint in EPSG:4326 (edges curve when reprojected).
FOOTPRINT_POINTS = 11

#: Output name -> (media type, roles, title) of its asset.
ASSETS: dict[str, tuple[str, list[str], str]] = {
    "class_map": (pystac.MediaType.COG, ["data"], "Land-cover class map"),
    "class_map_rat": ("application/xml", ["metadata"], "Raster attribute table (GDAL PAM)"),
    "class_map_style": ("application/xml", ["metadata", "style"], "QGIS style (class map)"),
    "confidence": (pystac.MediaType.COG, ["data", "quality"], "Confidence (max probability)"),
    "confidence_style": ("application/xml", ["metadata", "style"], "QGIS style (confidence)"),
    "probabilities": (pystac.MediaType.COG, ["data"], "Class probabilities"),
    "uncertainty": (pystac.MediaType.COG, ["data", "quality"], "Uncertainty (entropy)"),
    "uncertainty_style": ("application/xml", ["metadata", "style"], "QGIS style (uncertainty)"),
    "vector": ("", ["data"], "Land-cover polygons"),
    "vector_style": ("application/xml", ["metadata", "style"], "QGIS style (polygons)"),
    "quicklook": (pystac.MediaType.PNG, ["overview"], "Quicklook: optical image and classes"),
    "report_markdown": ("text/markdown", ["metadata"], "Run report"),
    "report_json": (pystac.MediaType.JSON, ["metadata"], "Run report (JSON)"),
}
VECTOR_MEDIA_TYPES = {
    ".gpkg": pystac.MediaType.GEOPACKAGE,
    ".parquet": "application/vnd.apache.parquet",
    ".geojson": pystac.MediaType.GEOJSON,
}


def sha256_multihash(path: Path) -> str:
    """The file's sha256 as the multihash the ``file`` extension expects (``1220`` + hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "1220" + digest.hexdigest()


def footprint_wgs84(grid: Grid) -> tuple[dict[str, Any], list[float]] | None:
    """The scene's outline in EPSG:4326 (densified edges, corners as vertices) and its
    bbox; None without a CRS."""
    if grid.crs is None:
        return None
    t = np.linspace(0.0, 1.0, FOOTPRINT_POINTS)[:-1]
    w, h = grid.width, grid.height
    cols = np.concatenate([t * w, np.full_like(t, w), (1 - t) * w, np.zeros_like(t)])
    rows = np.concatenate([np.zeros_like(t), t * h, np.full_like(t, h), (1 - t) * h])
    a, b, c, d, e, f = list(grid.transform)[:6]
    xs, ys = a * cols + b * rows + c, d * cols + e * rows + f
    lon, lat = warp_points(grid.crs, "EPSG:4326", xs.tolist(), ys.tolist())
    ring = [[float(x), float(y)] for x, y in zip(lon, lat, strict=True)]
    ring.append(ring[0])
    if _signed_area(ring) < 0:  # GeoJSON: exterior rings counter-clockwise
        ring.reverse()
    bbox = [min(lon), min(lat), max(lon), max(lat)]
    return {"type": "Polygon", "coordinates": [ring]}, [float(v) for v in bbox]


def _signed_area(ring: list[list[float]]) -> float:
    return 0.5 * sum(
        x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:], strict=True)
    )


def _name_token(name: str) -> str:
    """A class name as the classification extension's ``name`` (letters, digits, -, _)."""
    token = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in name)
    return token or "class"


def class_entries(classes: ClassScheme, nodata: int) -> list[Classification]:
    """``classification:classes`` of a class map: code, name, title and colour of every
    class, and the nodata value."""
    entries = [
        Classification.create(
            value=c.code,
            name=_name_token(c.name),
            title=c.name,
            description=c.name,
            color_hint="{:02X}{:02X}{:02X}".format(*c.color),
        )
        for c in classes.classes
    ]
    entries.append(
        Classification.create(value=nodata, name="nodata", title="no prediction", nodata=True)
    )
    return entries


def _raster_bands(name: str, classes: ClassScheme, nodata: int, resolution: float | None) -> list:
    """``raster:bands`` of output ``name`` (see OutputSet's scales and nodata values)."""

    def band(nodata_value: int, scale: float | None = None, sampling: str = "area") -> RasterBand:
        return RasterBand.create(
            nodata=nodata_value,
            data_type=DataType.UINT8,
            sampling=Sampling(sampling),
            spatial_resolution=resolution,
            scale=scale,
            offset=0.0 if scale is not None else None,
        )

    if name == "class_map":
        return [band(nodata)]
    if name == "confidence":
        return [band(0, 1 / CONFIDENCE_SCALE)]
    if name == "uncertainty":
        return [band(UNCERTAINTY_NODATA, 1 / UNCERTAINTY_SCALE)]
    return [band(255, 1 / PROBABILITY_SCALE) for _ in classes.classes]


def _input_links(
    inputs: Mapping[str, str | os.PathLike[str] | None], model_info: Mapping[str, Any]
) -> list[pystac.Link]:
    """``derived_from`` links to the inputs (title -> path or URL) and the adapter; an
    input held as an inline VRT document (STAC assets stacked) has no href to link."""
    links = []
    named = {**inputs, "adapter": model_info.get("adapter")}
    for title, href in named.items():
        if href is not None and not str(href).lstrip().startswith("<"):
            links.append(pystac.Link("derived_from", _href(str(href)), title=title))
    return links


def _href(path: str) -> str:
    """An input as an href: URLs as they are, local files as absolute paths."""
    if "://" in path or path.startswith("/vsi"):
        return path
    return os.path.abspath(path)


def build_item(
    *,
    scene_id: str,
    grid: Grid,
    files: Mapping[str, tuple[Path, Path]],
    classes: ClassScheme,
    class_map_nodata: int,
    inputs: Mapping[str, Any],
    model_info: Mapping[str, Any],
    options: Mapping[str, Any],
    input_hrefs: Mapping[str, str | os.PathLike[str] | None] | None = None,
    created: datetime | None = None,
) -> pystac.Item:
    """The STAC item of one run (module docstring).

    ``files`` maps output names (as :func:`~gopt_geo.outputs.output_set.output_paths`
    names them) to ``(final path, path of the finished file now)``: hrefs come from the
    first, sizes and checksums from the second. ``inputs`` is the reader's description
    (names as messages give them), ``input_hrefs`` the inputs as given (title -> path or
    URL), linked as ``derived_from``.
    """
    created = created or datetime.now(UTC)
    footprint = footprint_wgs84(grid)
    geometry, bbox = footprint if footprint is not None else (None, None)
    config = model_info.get("config") or {}
    item = pystac.Item(
        id=scene_id,
        geometry=geometry,
        bbox=bbox,
        datetime=created,
        properties={
            "created": pystac.utils.datetime_to_str(created),
            "title": f"Land cover of {scene_id}",
            "processing:software": {"gopt-geo": __version__},
            "processing:datetime": pystac.utils.datetime_to_str(created),
            "gopt_geo:datetime": "processing time (the acquisition time is not known)",
            "gopt_geo:version": __version__,
            "gopt_geo:adapter": {
                "href": str(model_info["adapter"]) if model_info.get("adapter") else None,
                "sha256": model_info.get("adapter_sha256"),
                "variant": config.get("variant"),
                "backbone": model_info.get("backbone"),
            },
            "gopt_geo:options": dict(options),
            "gopt_geo:inputs": {"optical": inputs.get("scene"), "sar": inputs.get("sar")},
        },
        stac_extensions=[PROCESSING_SCHEMA],
    )
    for link in _input_links(input_hrefs or {}, model_info):
        item.add_link(link)
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.code = None  # no CRS (pixel grid only), unless set below
    if grid.crs is not None:
        epsg = grid.crs.to_epsg()
        proj.code = f"EPSG:{epsg}" if epsg else None
        proj.wkt2 = grid.crs.to_wkt(version="WKT2_2019")
        proj.bbox = list(rasterio_bounds(grid))
    proj.transform = [float(v) for v in list(grid.transform)[:6]]
    proj.shape = [grid.height, grid.width]
    RasterExtension.add_to(item)
    FileExtension.add_to(item)
    ClassificationExtension.add_to(item)
    resolution = abs(grid.transform.a) if grid.crs is not None else None
    for name, (final, current) in files.items():
        if name not in ASSETS:
            continue
        media_type, roles, title = ASSETS[name]
        if name == "vector":
            media_type = VECTOR_MEDIA_TYPES.get(Path(final).suffix.lower(), "")
        asset = pystac.Asset(
            href=f"./{Path(final).name}",
            media_type=media_type or None,
            roles=list(roles),
            title=title,
        )
        item.add_asset(name, asset)
        file_ext = FileExtension.ext(asset)
        file_ext.size = Path(current).stat().st_size
        file_ext.checksum = sha256_multihash(Path(current))
        if media_type == pystac.MediaType.COG:
            bands = _raster_bands(name, classes, class_map_nodata, resolution)
            RasterExtension.ext(asset).bands = bands
        if name == "class_map":
            ClassificationExtension.ext(asset).classes = class_entries(classes, class_map_nodata)
    return item


def rasterio_bounds(grid: Grid) -> tuple[float, float, float, float]:
    """The grid's bounds in its CRS (xmin, ymin, xmax, ymax)."""
    west, south, east, north = array_bounds(grid.height, grid.width, grid.transform)
    return (min(west, east), min(south, north), max(west, east), max(south, north))


def item_json(item: pystac.Item) -> str:
    """The item as JSON text (no self link: hrefs are relative to wherever it lies)."""
    d = item.to_dict(include_self_link=False, transform_hrefs=False)
    return json.dumps(d, indent=2) + "\n"


def write_collection(
    items: Iterable[pystac.Item | str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    collection_id: str = "gopt-geo-maps",
    description: str | None = None,
    title: str | None = None,
    file_name: str = "collection.json",
    overwrite: bool = False,
) -> Path:
    """Write a STAC Collection in ``out_dir`` that links ``items`` (their JSON files, or
    items read from them), with an extent covering them all; returns its path.

    For ``predict-many``: pass the items each scene's run wrote
    (``PredictionResult.item``). Item hrefs are relative to the collection, so the folder
    can be moved as it is. The items are not modified (they were committed with their own
    output sets).
    """
    out_dir = ensure_output_dir(out_dir)
    path = out_dir / file_name
    check_writable([path], overwrite)
    loaded: list[tuple[pystac.Item, Path]] = []
    for entry in items:
        if isinstance(entry, pystac.Item):
            href = entry.get_self_href()
            if href is None:
                raise InputError(f"item {entry.id}: has no file (self href) to link to")
            loaded.append((entry, Path(href)))
        else:
            item_path = Path(entry)
            if not item_path.is_file():
                raise InputError(f"{item_path}: STAC item not found")
            loaded.append((pystac.Item.from_file(str(item_path)), item_path))
    if not loaded:
        raise InputError(f"{path}: no items to put in a collection")
    boxes = [item.bbox for item, _ in loaded if item.bbox]
    if boxes:
        bbox = [
            min(b[0] for b in boxes),
            min(b[1] for b in boxes),
            max(b[2] for b in boxes),
            max(b[3] for b in boxes),
        ]
    else:
        bbox = [-180.0, -90.0, 180.0, 90.0]
    times = [item.datetime for item, _ in loaded if item.datetime is not None]
    extent = pystac.Extent(
        pystac.SpatialExtent([bbox]),
        pystac.TemporalExtent([[min(times), max(times)] if times else [None, None]]),
    )
    shas = sorted(
        {
            str(sha)
            for item, _ in loaded
            if (sha := (item.properties.get("gopt_geo:adapter") or {}).get("sha256"))
        }
    )
    collection = pystac.Collection(
        id=collection_id,
        description=description or f"Land-cover maps of {len(loaded)} scene(s) by gopt-geo",
        title=title,
        extent=extent,
        license="other",
        summaries=pystac.Summaries({"gopt_geo:adapter_sha256": shas}) if shas else None,
    )
    collection.stac_extensions = []
    for item, item_path in loaded:
        rel = os.path.relpath(item_path.resolve(), out_dir.resolve())
        collection.add_link(
            pystac.Link("item", f"./{rel}", media_type=pystac.MediaType.JSON, title=item.id)
        )
    d = collection.to_dict(include_self_link=False, transform_hrefs=False)
    return write_text_atomic(path, json.dumps(d, indent=2) + "\n")
