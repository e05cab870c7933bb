"""Scenes named by STAC: bands matched to assets, single-band assets stacked by a VRT.

A STAC Item names one scene through its assets: each band of the adapter is
matched to an asset (:func:`match_assets`: ``--assets`` first, then the asset key, then
the usual keys of Sentinel-2 L2A and Sentinel-1 catalogues, then ``eo:bands`` common
names), and the single-band assets of each role (optical, SAR) are stacked by a VRT held
as a string (:func:`stack_assets`). Nothing is copied or downloaded: GDAL reads each
asset by byte ranges, window by window, when the predictor asks. The VRT also honours
the asset's ``raster:bands`` nodata (masked as NaN) and scale/offset:

- A STAC ``scale``/``offset`` turns stored asset values into physical ones:
  ``physical = stored * scale + offset``.
- The adapter expects values in the stored convention of its training data, which its
  :meth:`~gopt_geo.data.bands.BandRouting.to_physical` turns into physical ones with its
  own ``optical_scale`` a and ``optical_offset`` b: ``physical = (v + b) * a``.
- So an asset that declares a scale/offset is fed as ``v = physical / a - b``, i.e. the
  VRT applies ``v = stored * (scale / a) + (offset / a - b)`` (one affine map, exact in
  float32 for the usual values), and the adapter's scale is then applied exactly once.
  An asset without scale/offset is fed as stored, like any file. An adapter without an
  optical scale was trained on values it treats as physical; a STAC scale is then
  applied alone (e.g. Sentinel-2 reflectance 0-1 rather than digital numbers), which is
  right only if the training data were reflectances too - give such a model an
  ``optical_scale`` at training time.
- SAR has no adapter scale: ``v = stored * scale + offset``, in the units the adapter's
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin
from xml.sax.saxutils import escape

from rasterio.crs import CRS
from rasterio.transform import Affine

from ..data.bands import BandRouting
from ..errors import InputError
from ..io import VRT_LABEL_KEY, VRT_NAME_KEY, display_name, gdal_path, is_remote, open_raster
from .scene import Scene, gdal_string, safe_id

#: Band name as adapters call it -> the STAC common name it stands for.
COMMON_NAMES = {
    "coastal": "coastal",
    "b01": "coastal",
    "b": "blue",
    "blue": "blue",
    "b02": "blue",
    "g": "green",
    "green": "green",
    "b03": "green",
    "r": "red",
    "red": "red",
    "b04": "red",
    "n": "nir",
    "nir": "nir",
    "b08": "nir",
    "nir08": "nir08",
    "b8a": "nir08",
    "swir16": "swir16",
    "b11": "swir16",
    "swir22": "swir22",
    "b12": "swir22",
    "vv": "vv",
    "vh": "vh",
    "hh": "hh",
    "hv": "hv",
}
#: Common name -> asset keys tried in order: Sentinel-2 L2A on Earth Search uses common
#: names, on Planetary Computer band ids; Sentinel-1 RTC/GRD items use the polarisation.
ASSET_KEYS = {
    "coastal": ("coastal", "B01"),
    "blue": ("blue", "B02"),
    "green": ("green", "B03"),
    "red": ("red", "B04"),
    "nir": ("nir", "B08"),
    "nir08": ("nir08", "B8A"),
    "swir16": ("swir16", "B11"),
    "swir22": ("swir22", "B12"),
    "vv": ("vv",),
    "vh": ("vh",),
    "hh": ("hh",),
    "hv": ("hv",),
}


def read_stac(href: str | os.PathLike[str]) -> list[Any]:
    """The items of a STAC Item or ItemCollection document (a file or a URL), each with
    its document's location as ``self_href`` so that relative asset hrefs resolve."""
    import pystac

    href = str(href)
    if not is_remote(href) and not Path(gdal_path(href)).exists():
        raise InputError(f"{href}: file not found")
    location = href if is_remote(href) else str(Path(gdal_path(href)).absolute())
    try:
        document = pystac.StacIO.default().read_json(location)
    except Exception as err:  # unreadable, not JSON, HTTP error
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{href}: not a readable STAC document ({reason})") from None
    kind = document.get("type") if isinstance(document, dict) else None
    try:
        if kind == "Feature":
            items = [pystac.Item.from_dict(document)]
        elif kind == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(document).items)
        else:
            raise InputError(
                f"{href}: not a STAC Item or ItemCollection (type {kind!r}; a Catalog or "
                "Collection must be searched first, e.g. with pystac-client)"
            )
    except (KeyError, TypeError, ValueError, pystac.STACError) as err:
        raise InputError(f"{href}: not a valid STAC document ({err})") from None
    for item in items:
        item.set_self_href(location)
    if not items:
        raise InputError(f"{href}: the STAC ItemCollection holds no items")
    return items


def parse_asset_map(text: str | None) -> dict[str, tuple[str, int]]:
    """``--assets B=blue,NIR=B08,R=visual:1`` -> band name -> (asset key, 1-based band)."""
    mapping: dict[str, tuple[str, int]] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, key = part.partition("=")
        key, _, band = key.strip().partition(":")
        if not sep or not name.strip() or not key:
            raise InputError(f"--assets {part!r}: expected BAND=ASSET_KEY (or BAND=KEY:N)")
        try:
            index = int(band) if band else 1
        except ValueError:
            raise InputError(f"--assets {part!r}: the band after ':' must be a number") from None
        if index < 1:
            raise InputError(f"--assets {part!r}: bands are numbered from 1")
        mapping[name.strip()] = (key, index)
    return mapping


def _asset_bands(asset: Any) -> list[dict[str, Any]]:
    """Per-band metadata of an asset: STAC 1.1 ``bands`` or the extensions' ``raster:bands``
    and ``eo:bands`` (merged band by band)."""
    fields = asset.extra_fields
    if isinstance(fields.get("bands"), list):
        return [dict(b) for b in fields["bands"]]
    raster = fields.get("raster:bands") or []
    eo = fields.get("eo:bands") or []
    merged = []
    for i in range(max(len(raster), len(eo))):
        band: dict[str, Any] = {}
        if i < len(eo):
            band.update({f"eo:{k}": v for k, v in eo[i].items()})
            band.setdefault("name", eo[i].get("name"))
        if i < len(raster):
            band.update({f"raster:{k}": v for k, v in raster[i].items() if k != "nodata"})
            if "nodata" in raster[i]:
                band["nodata"] = raster[i]["nodata"]
        merged.append(band)
    return merged


def _common_names(asset: Any) -> set[str]:
    names = set()
    for band in _asset_bands(asset):
        for key in ("eo:common_name", "name"):
            if isinstance(band.get(key), str):
                names.add(band[key].lower())
    return names


def match_assets(
    item: Any, bands: Sequence[str], explicit: Mapping[str, tuple[str, int]] | None = None
) -> tuple[dict[str, tuple[str, int]], list[str]]:
    """Asset key and band for each of ``bands``; and the bands no asset was found for.

    In order: ``explicit`` (``--assets``), an asset key equal to the band name (any
    case), the keys of :data:`ASSET_KEYS` for the band's common name, a single-band asset
    whose ``eo:bands`` common name or band name is the band's.
    """
    explicit = explicit or {}
    by_lower = {k.lower(): k for k in item.assets}
    found: dict[str, tuple[str, int]] = {}
    missing = []
    for band in bands:
        if band in explicit:
            key, index = explicit[band]
            if key not in item.assets:
                raise InputError(
                    f"--assets {band}={key}: item {item.id} has no asset {key!r} "
                    f"(assets: {', '.join(item.assets)})"
                )
            found[band] = (key, index)
            continue
        common = COMMON_NAMES.get(band.lower(), band.lower())
        candidates = [band.lower(), *(k.lower() for k in ASSET_KEYS.get(common, ()))]
        key = next((by_lower[c] for c in candidates if c in by_lower), None)
        if key is None:
            key = next(
                (
                    k
                    for k, a in item.assets.items()
                    if len(_asset_bands(a)) <= 1 and {band.lower(), common} & _common_names(a)
                ),
                None,
            )
        if key is None:
            missing.append(band)
        else:
            found[band] = (key, 1)
    return found, missing


@dataclass(frozen=True)
class _Source:
    """One band of a stack: where it is, its grid, and how to turn its values."""

    band: str
    href: str
    index: int
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    nodata: float | None
    ratio: float
    offset: float


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)  # "nan", "inf" and "-inf" too
    except (TypeError, ValueError):
        return None


def _asset_href(item: Any, key: str) -> str:
    """The asset's href, absolute (relative hrefs resolve against the item's document)."""
    href = item.assets[key].href
    if "://" in href or href.startswith("/"):
        return href
    base = item.get_self_href() or ""
    if "://" in base and not base.startswith("file://"):
        return urljoin(base, href)
    return str((Path(base).parent / href).resolve())


def _grid_from_stac(item: Any, asset: Any) -> tuple[CRS | None, Affine, int, int] | None:
    """CRS, transform and size from the projection extension, when it gives all of them
    (no request to the asset then; per-asset fields override the item's)."""
    fields = {**item.properties, **asset.extra_fields}
    transform, shape = fields.get("proj:transform"), fields.get("proj:shape")
    if not transform or not shape or len(transform) < 6 or len(shape) != 2:
        return None
    if fields.get("proj:code"):
        crs = CRS.from_user_input(fields["proj:code"])
    elif fields.get("proj:epsg"):
        crs = CRS.from_epsg(int(fields["proj:epsg"]))
    elif fields.get("proj:wkt2"):
        crs = CRS.from_wkt(fields["proj:wkt2"])
    elif fields.get("proj:projjson"):
        crs = CRS.from_dict(fields["proj:projjson"])
    else:
        return None
    return crs, Affine(*transform[:6]), int(shape[1]), int(shape[0])


def _adapter_affine(routing: BandRouting, i: int) -> tuple[float, float]:
    """The adapter's (scale a, offset b) for optical band ``i``: ``physical = (v + b) * a``."""

    def pick(values: tuple[float, ...], default: float) -> float:
        if not values:
            return default
        return values[i] if len(values) > 1 else values[0]

    return pick(routing.optical_scale, 1.0), pick(routing.optical_offset, 0.0)


def _sources(
    item: Any,
    role: str,
    bands: Sequence[str],
    found: Mapping[str, tuple[str, int]],
    routing: BandRouting,
) -> list[_Source]:
    sources = []
    for i, band in enumerate(bands):
        key, index = found[band]
        asset = item.assets[key]
        href = gdal_string(_asset_href(item, key))
        meta = _asset_bands(asset)
        # per-band fields, else the asset's own (STAC 1.1 puts a single band's there)
        own = {
            k: v
            for k, v in asset.extra_fields.items()
            if k in ("nodata", "raster:scale", "raster:offset")
        }
        info = {**own, **(meta[index - 1] if index - 1 < len(meta) else {})}
        scale = _number(info.get("raster:scale"))
        offset = _number(info.get("raster:offset"))
        nodata = _number(info.get("nodata"))
        grid = _grid_from_stac(item, asset)
        if grid is None or nodata is None:  # read the header (one request for a URL)
            with open_raster(href) as src:
                if index > src.count:
                    raise InputError(
                        f"{display_name(href)}: asset {key!r} of item {item.id} has "
                        f"{src.count} band(s), band {index} was asked for ({band})"
                    )
                grid = grid or (src.crs, src.transform, src.width, src.height)
                if nodata is None:
                    nodata = src.nodatavals[index - 1]
        ratio, shift = 1.0, 0.0
        if scale is not None or offset is not None:  # see the module docstring
            scale = 1.0 if scale is None else scale
            offset = 0.0 if offset is None else offset
            a, b = _adapter_affine(routing, i) if role == "optical" else (1.0, 0.0)
            ratio, shift = scale / a, offset / a - b
        crs, transform, width, height = grid
        sources.append(
            _Source(band, href, index, crs, transform, width, height, nodata, ratio, shift)
        )
    return sources


def _xml_number(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return repr(float(value))


def stack_assets(sources: Sequence[_Source], label: str, name: str) -> str:
    """A VRT document stacking single bands of (possibly different) files, one VRT band per
    source, on the finest source grid; values are Float32, nodata is NaN, and each source's
    nodata, scale and offset are applied by GDAL while reading (nothing is copied).

    Sources at a coarser resolution (Sentinel-2's 20 m bands next to its 10 m ones) are
    resampled bilinearly onto the finest grid; sources must share one CRS.
    """
    ref = min(sources, key=lambda s: abs(s.transform.a))
    crs_set = {s.crs.to_string() if s.crs else None for s in sources}
    if len(crs_set) > 1:
        raise InputError(
            f"{label}: the assets are in different CRSs ({', '.join(map(str, crs_set))}); "
            "stack them only after warping them onto one grid"
        )
    t = ref.transform
    lines = [f'<VRTDataset rasterXSize="{ref.width}" rasterYSize="{ref.height}">']
    if ref.crs is not None:
        lines.append(f"<SRS>{escape(ref.crs.to_wkt())}</SRS>")
    lines.append(
        f"<GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>"
    )
    lines.append(
        f'<Metadata><MDI key="{VRT_LABEL_KEY}">{escape(label)}</MDI>'
        f'<MDI key="{VRT_NAME_KEY}">{escape(name)}</MDI></Metadata>'
    )
    for i, s in enumerate(sources, start=1):
        # the source's footprint in pixels of the reference grid
        x0 = (s.transform.c - t.c) / t.a
        y0 = (s.transform.f - t.f) / t.e
        xs = s.width * s.transform.a / t.a
        ys = s.height * s.transform.e / t.e
        resample = "" if (xs, ys) == (s.width, s.height) else ' resampling="bilinear"'
        lines += [
            f'<VRTRasterBand dataType="Float32" band="{i}">',
            f"<Description>{escape(s.band)}</Description>",
            "<NoDataValue>nan</NoDataValue>",
            f"<ComplexSource{resample}>",
            f'<SourceFilename relativeToVRT="0">{escape(s.href)}</SourceFilename>',
            f"<SourceBand>{s.index}</SourceBand>",
            f'<SrcRect xOff="0" yOff="0" xSize="{s.width}" ySize="{s.height}"/>',
            f'<DstRect xOff="{x0!r}" yOff="{y0!r}" xSize="{xs!r}" ySize="{ys!r}"/>',
            f"<NODATA>{_xml_number(s.nodata)}</NODATA>"
            if s.nodata is not None
            else "<UseMaskBand>true</UseMaskBand>",
        ]
        if (s.ratio, s.offset) != (1.0, 0.0):
            lines.append(f"<ScaleOffset>{s.offset!r}</ScaleOffset>")
            lines.append(f"<ScaleRatio>{s.ratio!r}</ScaleRatio>")
        lines += ["</ComplexSource>", "</VRTRasterBand>"]
    lines.append("</VRTDataset>")
    return "".join(lines)


def stac_stack(
    item: Any,
    role: str,
    routing: BandRouting,
    assets: Mapping[str, tuple[str, int]] | None = None,
    *,
    origin: str | None = None,
) -> str | None:
    """The VRT document stacking the item's assets for the adapter's ``role`` bands
    (``optical`` or ``SAR``), or None when the item has none of them; an item with only
    some of them (or no optical ones) is an error naming the bands and the assets."""
    bands = routing.optical_bands if role == "optical" else routing.sar_bands
    found, missing = match_assets(item, bands, assets)
    if missing and (found or role == "optical"):
        where = f"{origin}: " if origin else ""
        raise InputError(
            f"{where}STAC item {item.id} has no asset for band(s) {', '.join(missing)} "
            f"(assets: {', '.join(item.assets)}); map them with --assets BAND=KEY,..."
        )
    if not found:
        return None
    keys = ", ".join(found[b][0] for b in bands)
    label = f"STAC item {item.id.replace('/', '_')} ({role}: {keys})"
    return stack_assets(_sources(item, role, bands, found, routing), label, safe_id(item.id))


def stac_scene(
    item: Any,
    routing: BandRouting,
    assets: Mapping[str, tuple[str, int]] | None = None,
    *,
    origin: str | None = None,
) -> Scene:
    """The scene a STAC item names: its optical bands stacked, and its SAR bands when it
    has them (else ``sar`` is None: the SAR may come from elsewhere). What keeps it from
    being mapped (a band without an asset) is the scene's problem."""
    try:
        optical = stac_stack(item, "optical", routing, assets, origin=origin)
        sar = stac_stack(item, "SAR", routing, assets, origin=origin)
    except InputError as err:
        return Scene(safe_id(item.id), "", problem=str(err), origin=origin)
    assert optical is not None  # an item without the optical bands raised
    return Scene(safe_id(item.id), optical, sar, origin=origin)


def stac_scenes(
    href: str | os.PathLike[str],
    routing: BandRouting,
    assets: Mapping[str, tuple[str, int]] | None = None,
) -> list[Scene]:
    """One scene per item of a STAC Item or ItemCollection document."""
    return [stac_scene(item, routing, assets, origin=str(href)) for item in read_stac(href)]


def one_item(href: str | os.PathLike[str]) -> Any:
    items = read_stac(href)
    if len(items) != 1:
        raise InputError(f"{href}: holds {len(items)} STAC items; map them with predict-many")
    return items[0]
