"""QGIS styles for the maps: they open in QGIS coloured and labelled, with no setup.

QGIS loads ``NAME.qml`` beside ``NAME.tif`` (or any file layer) as the layer's default
style, and a GeoPackage layer's default style from the GeoPackage's own
``layer_styles`` table. gopt-geo writes both:

- :func:`paletted_qml` - a class map (or a transition map): one palette entry per code,
  with the class name as its label and the class colour;
- :func:`ramp_qml` - a continuous map (confidence, uncertainty): an interpolated colour
  ramp. QGIS applies a band's scale and offset when it reads it, so the ramp's values are
  in the physical units (0..1), not the stored bytes;
- :func:`categorized_qml` - polygons coloured by their ``code`` attribute, labelled with
  the class names;
- :func:`add_gpkg_style` - that QML stored as the default style of a GeoPackage layer,
  in the table layout QGIS itself creates.

Everything is written from the class scheme, so the styles cannot disagree with the map.
"""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from ..data.classes import ClassScheme

#: The QGIS version the QML documents declare (any QGIS 3 reads them).
QGIS_VERSION = "3.28.0"
#: ``layer_styles`` as QGIS creates it in a GeoPackage (QgsOgrProvider::saveStyle).
LAYER_STYLES_SQL = """CREATE TABLE IF NOT EXISTS layer_styles (
  id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
  f_table_catalog TEXT(256),
  f_table_schema TEXT(256),
  f_table_name TEXT(256),
  f_geometry_column TEXT(256),
  styleName TEXT(30),
  styleQML TEXT,
  styleSLD TEXT,
  useAsDefault BOOLEAN,
  description TEXT,
  owner TEXT(30),
  ui TEXT(30),
  update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
)"""

#: Colour ramps (value in 0..1 -> RGB): perceptually uniform, readable in grey.
VIRIDIS = ((0.0, (68, 1, 84)), (0.25, (59, 82, 139)), (0.5, (33, 145, 140)),
           (0.75, (94, 201, 98)), (1.0, (253, 231, 37)))  # fmt: skip
INFERNO = ((0.0, (0, 0, 4)), (0.25, (87, 16, 110)), (0.5, (188, 55, 84)),
           (0.75, (249, 142, 9)), (1.0, (252, 255, 164)))  # fmt: skip


def hex_colour(rgb: Sequence[int]) -> str:
    """``#rrggbb``."""
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb[:3]))


def _document() -> ET.Element:
    return ET.Element(
        "qgis",
        {"version": QGIS_VERSION, "styleCategories": "AllStyleCategories"},
    )


def _serialise(root: ET.Element) -> str:
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f"<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n{body}\n"


def _raster_pipe(root: ET.Element, renderer: ET.Element) -> None:
    pipe = ET.SubElement(root, "pipe")
    pipe.append(renderer)
    ET.SubElement(pipe, "brightnesscontrast", {"brightness": "0", "contrast": "0"})
    ET.SubElement(pipe, "huesaturation", {"saturation": "0", "grayscaleMode": "0"})
    ET.SubElement(pipe, "rasterresampler", {"maxOversampling": "2"})
    ET.SubElement(root, "blendMode").text = "0"


def paletted_qml(entries: Sequence[tuple[int, str, Sequence[int]]]) -> str:
    """A paletted raster style: ``(value, label, (r, g, b))`` per class. Values without
    an entry (nodata) are not drawn."""
    root = _document()
    renderer = ET.Element(
        "rasterrenderer",
        {"type": "paletted", "band": "1", "opacity": "1", "alphaBand": "-1", "nodataColor": ""},
    )
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for value, label, color in entries:
        ET.SubElement(
            palette,
            "paletteEntry",
            {"value": str(int(value)), "color": hex_colour(color), "alpha": "255", "label": label},
        )
    _raster_pipe(root, renderer)
    return _serialise(root)


def class_map_qml(classes: ClassScheme) -> str:
    """The class map's style: its classes' codes, names and colours."""
    return paletted_qml([(c.code, c.name, c.color) for c in classes.classes])


def ramp_qml(
    stops: Sequence[tuple[float, Sequence[int]]] = VIRIDIS,
    minimum: float = 0.0,
    maximum: float = 1.0,
) -> str:
    """A continuous raster style: the colour ``stops`` (value in 0..1 of the range,
    colour) interpolated from ``minimum`` to ``maximum`` (physical units)."""
    root = _document()
    renderer = ET.Element(
        "rasterrenderer",
        {
            "type": "singlebandpseudocolor",
            "band": "1",
            "opacity": "1",
            "alphaBand": "-1",
            "classificationMin": repr(minimum),
            "classificationMax": repr(maximum),
            "nodataColor": "",
        },
    )
    ET.SubElement(renderer, "rasterTransparency")
    origin = ET.SubElement(renderer, "minMaxOrigin")
    for tag, text in (("limits", "None"), ("extent", "WholeRaster"), ("statAccuracy", "Estimated")):
        ET.SubElement(origin, tag).text = text
    shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader")
    shader.attrib.update(
        {
            "colorRampType": "INTERPOLATED",
            "classificationMode": "1",
            "clip": "0",
            "minimumValue": repr(minimum),
            "maximumValue": repr(maximum),
            "labelPrecision": "2",
        }
    )
    for fraction, color in stops:
        value = minimum + fraction * (maximum - minimum)
        ET.SubElement(
            shader,
            "item",
            {
                "value": repr(value),
                "color": hex_colour(color),
                "alpha": "255",
                "label": f"{value:.2f}",
            },
        )
    _raster_pipe(root, renderer)
    return _serialise(root)


def _option_map(parent: ET.Element, values: dict[str, str]) -> None:
    """Symbol layer properties, both as QGIS >= 3.16 writes them (``Option``) and in the
    older ``prop`` form, so that every QGIS 3 reads them."""
    options = ET.SubElement(parent, "Option", {"type": "Map"})
    for key, value in values.items():
        ET.SubElement(options, "Option", {"name": key, "type": "QString", "value": value})
    for key, value in values.items():
        ET.SubElement(parent, "prop", {"k": key, "v": value})


def categorized_qml(
    entries: Sequence[tuple[int, str, Sequence[int]]], attribute: str = "code"
) -> str:
    """Polygons coloured by ``attribute`` (the class code), one category per
    ``(value, label, (r, g, b))``, labelled with the class name in the legend."""
    root = _document()
    renderer = ET.SubElement(
        root,
        "renderer-v2",
        {
            "type": "categorizedSymbol",
            "attr": attribute,
            "symbollevels": "0",
            "enableorderby": "0",
            "forceraster": "0",
        },
    )
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for i, (value, label, color) in enumerate(entries):
        ET.SubElement(
            categories,
            "category",
            {"value": str(int(value)), "label": label, "symbol": str(i), "render": "true"},
        )
        symbol = ET.SubElement(
            symbols,
            "symbol",
            {"type": "fill", "name": str(i), "alpha": "1", "clip_to_extent": "1", "force_rhr": "0"},
        )
        layer = ET.SubElement(
            symbol, "layer", {"class": "SimpleFill", "enabled": "1", "locked": "0", "pass": "0"}
        )
        _option_map(
            layer,
            {
                "color": ",".join(str(int(v)) for v in (*color[:3], 255)),
                "outline_color": "35,35,35,255",
                "outline_style": "solid",
                "outline_width": "0.1",
                "outline_width_unit": "MM",
                "style": "solid",
            },
        )
    ET.SubElement(root, "blendMode").text = "0"
    return _serialise(root)


def vector_qml(classes: ClassScheme) -> str:
    """The land-cover polygons' style: coloured by ``code``, labelled with class names."""
    return categorized_qml([(c.code, c.name, c.color) for c in classes.classes])


def add_gpkg_style(
    gpkg: Path, layer: str, qml: str, name: str = "gopt-geo classes", description: str = ""
) -> None:
    """Store ``qml`` as the default QGIS style of ``layer`` in the GeoPackage ``gpkg``.

    The table is the one QGIS creates when a user saves a style into a GeoPackage
    (``layer_styles``, registered in ``gpkg_contents`` as attributes), so QGIS applies the
    style when the layer is opened. Call it on the file before it is renamed into place.
    """
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    with closing(sqlite3.connect(gpkg)) as db, db:
        row = db.execute(
            "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)
        ).fetchone()
        geometry_column = row[0] if row else ""
        db.execute(LAYER_STYLES_SQL)
        db.execute(
            "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, "
            "description, last_change) VALUES ('layer_styles', 'attributes', "
            "'layer_styles', '', ?)",
            (now,),
        )
        db.execute("UPDATE layer_styles SET useAsDefault = 0 WHERE f_table_name = ?", (layer,))
        db.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
            "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, "
            "owner, ui, update_time) VALUES ('', '', ?, ?, ?, ?, '', 1, ?, '', '', ?)",
            (layer, geometry_column, name, qml, description, now),
        )
