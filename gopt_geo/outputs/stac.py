"""STAC metadata of a run's outputs: one Item per predicted scene, a Collection for many.

Catalogues, STAC browsers and tools such as ``odc-stac`` or ``stackstac`` find maps through
STAC. :func:`build_item` describes one run's output set with core STAC 1.1 and the
``proj`` (CRS, transform, shape), ``raster`` (band types, nodata, scales), ``classification``
(the class map's codes, names and colours), ``file`` (size and sha256 multihash of
every file) and ``processing`` (software, processing time) extensions, plus gopt-geo's
provenance: the adapter's sha256, backbone and variant, the run's options, the gopt-geo
version and the inputs (also as ``derived_from`` links). The item is written inside the
output set, so the sizes and checksums describe exactly the files committed beside it.

No absolute local path is written anywhere, so a run folder can be moved, copied or
uploaded as it is and its items still open: asset hrefs are relative to the item
(``./NAME``); inputs are linked by URL when they came from one (its query string, which
may hold a signature, left out), else by their path relative to the item; the adapter by
its relative path with its sha256 (``file:checksum``), and by name in the properties.

The item's ``datetime`` is the acquisition time of the input when gopt-geo can know it
(:func:`acquisition_time`: the raster's ``IMAGERY`` metadata or an acquisition tag, which
a scene stacked from a STAC item carries from that item), else the processing time;
``gopt_geo:datetime`` says which. The processing time is always in
``processing:datetime``.

:func:`write_collection` links several items (``predict-many``) in a Collection whose
extent covers them all, and gives each item its collection (the ``collection`` field and
``collection``/``parent``/``root`` links, all relative).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import unescape

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
    inputs: Mapping[str, str | os.PathLike[str] | None],
    model_info: Mapping[str, Any],
    base: Path,
) -> list[pystac.Link]:
    """``derived_from`` links to the inputs (title -> path or URL) and the adapter (with
    its sha256 as ``file:checksum``); an input held as an inline VRT document (STAC
    assets stacked) is linked through the STAC item it came from when it names one."""
    links = []
    for title, href in inputs.items():
        if href is None:
            continue
        text = str(href)
        if text.lstrip().startswith("<"):
            text = source_item(text) or ""
            title = f"{title} (STAC item)"
        if text:
            links.append(pystac.Link("derived_from", portable_href(text, base), title=title))
    adapter = model_info.get("adapter")
    if adapter:
        sha = model_info.get("adapter_sha256")
        extra = {"file:checksum": f"1220{sha}"} if sha else None
        href = portable_href(str(adapter), base)
        links.append(pystac.Link("derived_from", href, title="adapter", extra_fields=extra))
    return links


def _adapter_name(model_info: Mapping[str, Any]) -> str | None:
    adapter = model_info.get("adapter")
    return input_name(str(adapter)) if adapter else None


def portable_href(path: str, base: Path) -> str:
    """An input as an href that survives moving the run folder: a URL as it is (without
    its query string, which may hold a signature), a local file relative to ``base`` (the
    item's folder; its name alone where no relative path exists, another drive)."""
    if "://" in path or path.startswith("/vsi"):
        return path.split("?", 1)[0]
    try:
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(base))).as_posix()
    except ValueError:  # another drive (Windows)
        return Path(path).name


def input_name(path: str | None) -> str | None:
    """How the item's properties name an input: a URL (without its query) or a file's
    name; a stacked scene by its label."""
    if path is None:
        return None
    text = str(path)
    if "://" in text or text.startswith("/vsi"):
        return text.split("?", 1)[0]
    return Path(text).name


#: Where a raster says when it was acquired, in the order they are trusted: GDAL's
#: ``IMAGERY`` metadata (DigitalGlobe, Pleiades, SPOT... readers), the tag a scene stacked
#: from a STAC item carries, common product tags, and last the TIFF's own date.
ACQUISITION_TAGS: tuple[tuple[str, str], ...] = (
    ("IMAGERY", "ACQUISITIONDATETIME"),
    ("", "ACQUISITION_DATETIME"),
    ("", "ACQUISITIONDATETIME"),
    ("", "ACQUISITION_DATE"),
    ("", "DATE_ACQUIRED"),
    ("", "SENSING_TIME"),
    ("", "PRODUCT_START_TIME"),
    ("", "DATATAKE_1_DATATAKE_SENSING_START"),
    ("", "TIFFTAG_DATETIME"),
)
#: Tag of a stacked STAC scene (a VRT document) naming the STAC item it came from.
SOURCE_ITEM_TAG = "GOPT_GEO_STAC_ITEM"


def parse_datetime(text: str) -> datetime | None:
    """A timestamp as rasters write it (ISO 8601, ``YYYY:MM:DD HH:MM:SS`` of TIFF, a date
    alone), in UTC (naive times taken as UTC); None when it is not one."""
    text = text.strip()
    if len(text) >= 10 and text[4] == ":" and text[7] == ":":  # TIFF: 2020:05:01 10:20:30
        text = f"{text[:4]}-{text[5:7]}-{text[8:]}"
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def acquisition_time(tags: Mapping[str, Mapping[str, str]]) -> tuple[datetime, str] | None:
    """(time, ``DOMAIN:TAG`` it came from) from a raster's tags by domain (``""``: the
    default domain); None when no tag of :data:`ACQUISITION_TAGS` holds a time."""
    for domain, key in ACQUISITION_TAGS:
        value = (tags.get(domain) or {}).get(key)
        parsed = parse_datetime(value) if value else None
        if parsed is not None:
            return parsed, f"{domain}:{key}" if domain else key
    return None


def raster_acquisition_time(path: str | os.PathLike[str]) -> tuple[datetime, str] | None:
    """:func:`acquisition_time` of a raster (path, URL or VRT document); None when it
    says nothing or cannot be read (the item then carries the processing time)."""
    from ..io import open_raster

    try:
        with open_raster(path) as src:
            tags = {
                domain: src.tags(ns=domain or None) for domain in {d for d, _ in ACQUISITION_TAGS}
            }
    except Exception:  # noqa: BLE001 - metadata only: never fails a finished run
        return None
    return acquisition_time(tags)


def source_item(vrt_document: str) -> str | None:
    """The STAC item a stacked scene (VRT document) came from, when its metadata says."""
    match = re.search(rf'<MDI key="{SOURCE_ITEM_TAG}">([^<]*)</MDI>', vrt_document)
    return unescape(match.group(1)) if match and match.group(1) else None


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
    acquired: tuple[datetime, str] | None = None,
) -> pystac.Item:
    """The STAC item of one run (module docstring).

    ``files`` maps output names (as :func:`~gopt_geo.outputs.output_set.output_paths`
    names them) to ``(final path, path of the finished file now)``: hrefs come from the
    first, sizes and checksums from the second. ``inputs`` is the reader's description
    (names as messages give them), ``input_hrefs`` the inputs as given (title -> path or
    URL), linked as ``derived_from``; ``acquired`` the input's acquisition time and the
    tag it came from (:func:`acquisition_time`), else the item's time is ``created``.
    """
    created = created or datetime.now(UTC)
    base = Path(next(iter(files.values()))[0]).parent if files else Path.cwd()
    footprint = footprint_wgs84(grid)
    geometry, bbox = footprint if footprint is not None else (None, None)
    config = model_info.get("config") or {}
    item = pystac.Item(
        id=scene_id,
        geometry=geometry,
        bbox=bbox,
        datetime=acquired[0] if acquired else created,
        properties={
            "created": pystac.utils.datetime_to_str(created),
            "title": f"Land cover of {scene_id}",
            "processing:software": {"gopt-geo": __version__},
            "processing:datetime": pystac.utils.datetime_to_str(created),
            "gopt_geo:datetime": (
                f"acquisition time of the input (its {acquired[1]} tag)"
                if acquired
                else "processing time (the input does not say when it was acquired)"
            ),
            "gopt_geo:version": __version__,
            "gopt_geo:adapter": {
                "name": _adapter_name(model_info),
                "sha256": model_info.get("adapter_sha256"),
                "variant": config.get("variant"),
                "backbone": model_info.get("backbone"),
            },
            "gopt_geo:options": dict(options),
            "gopt_geo:inputs": {
                "optical": input_name(inputs.get("scene")),
                "sar": input_name(inputs.get("sar")),
            },
        },
        stac_extensions=[PROCESSING_SCHEMA],
    )
    for link in _input_links(input_hrefs or {}, model_info, base):
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
    can be moved as it is. Each item gets its collection (:func:`join_collection`); nothing
    else in it changes.
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
        rel = Path(os.path.relpath(item_path.resolve(), out_dir.resolve())).as_posix()
        collection.add_link(
            pystac.Link("item", f"./{rel}", media_type=pystac.MediaType.JSON, title=item.id)
        )
    d = collection.to_dict(include_self_link=False, transform_hrefs=False)
    own = {"href": f"./{file_name}", "type": pystac.MediaType.JSON, "title": collection.title}
    own = {k: v for k, v in own.items() if v is not None}
    d["links"] = [{"rel": "root", **own}, {"rel": "self", **own}, *d["links"]]
    written = write_text_atomic(path, json.dumps(d, indent=2) + "\n")
    for _, item_path in loaded:
        join_collection(item_path, written, collection_id)
    return written


#: Link relations that tie an item to its collection (rewritten by :func:`join_collection`).
COLLECTION_RELS = ("collection", "parent", "root")


def join_collection(item_path: Path, collection_path: Path, collection_id: str) -> None:
    """Give the item at ``item_path`` its collection: the ``collection`` field and
    ``collection``, ``parent`` and ``root`` links, relative to the item (rewritten in
    place, atomically, only when they change). The item's own checksums describe the
    other files of its set, so they stay true."""
    try:
        d = json.loads(item_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{item_path}: cannot read the STAC item ({exc})") from None
    rel = Path(os.path.relpath(collection_path.resolve(), item_path.resolve().parent)).as_posix()
    href = rel if rel.startswith(".") else f"./{rel}"
    links = [link for link in d.get("links", []) if link.get("rel") not in COLLECTION_RELS]
    links += [
        {"rel": rel_, "href": href, "type": pystac.MediaType.JSON} for rel_ in COLLECTION_RELS
    ]
    updated = {**d, "collection": collection_id, "links": links}
    if updated != d:
        write_text_atomic(item_path, json.dumps(updated, indent=2) + "\n")
