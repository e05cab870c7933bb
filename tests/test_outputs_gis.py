"""Maps that GIS users and catalogues use as they are: STAC item and collection,
QGIS styles (QML sidecars, GeoPackage default style), traceable polygons, uncertainty,
quicklook, optical-only adapters without SAR."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pystac
import pytest
import rasterio
import shapely
import torch
from conftest import SYNTH_ROUTING
from PIL import Image
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from pystac.validation.stac_validator import JsonSchemaSTACValidator
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_points
from rasterio.windows import Window
from torch import nn
from typer.testing import CliRunner

from gopt_geo.checkpoint import save_adapter
from gopt_geo.cli import app
from gopt_geo.data.bands import BandRouting
from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
from gopt_geo.data.synthetic import OPTICAL_BANDS, SAR_BANDS, SceneFiles, make_scene
from gopt_geo.errors import InputError
from gopt_geo.inference import PredictOptions, Predictor
from gopt_geo.inference.predictor import PredictionResult, predict_scene
from gopt_geo.inference.reader import SceneReader
from gopt_geo.models import ModelConfig, SegmentationOutput, build_model
from gopt_geo.outputs.grid import Grid
from gopt_geo.outputs.output_set import normalised_entropy
from gopt_geo.outputs.quicklook import _overview_level, class_panel, panel_shape
from gopt_geo.outputs.stac import write_collection
from gopt_geo.outputs.writers import StripRasterWriter

pytestmark = pytest.mark.filterwarnings("ignore::gopt_geo.models.RandomBackboneWarning")

CLASSES = WHU_OPT_SAR_CLASSES
ROUTING = SYNTH_ROUTING
NODATA = 255
runner = CliRunner()


def save(path: Path, variant: str = "gopt") -> Path:
    model = build_model(
        ModelConfig(variant=variant, backbone="test_efficientnet", weights="random", num_classes=7)
    )
    meta = {"routing": ROUTING.to_dict(), "classes": CLASSES.to_dict()}
    return save_adapter(path, model, meta)


@pytest.fixture(scope="module")
def gis_scene(tmp_path_factory: pytest.TempPathFactory) -> SceneFiles:
    return make_scene(tmp_path_factory.mktemp("scene"), "tile", size=(112, 96), seed=3)


@pytest.fixture(scope="module")
def gis_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(tmp_path_factory.mktemp("model") / "adapter.safetensors")


@pytest.fixture(scope="module")
def run(gis_scene: SceneFiles, gis_adapter: Path, tmp_path_factory: pytest.TempPathFactory):
    """One prediction with every output: probabilities, uncertainty, polygons (sieved)."""
    out = tmp_path_factory.mktemp("run")
    options = PredictOptions(
        window=64,
        probabilities=True,
        uncertainty=True,
        min_area=1_000,
        progress=False,
        device="cpu",
    )
    return predict_scene(gis_scene.optical, gis_scene.sar, gis_adapter, out, options)


def read(path: Path, band: int | None = 1) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(band) if band else src.read()


# ---------------------------------------------------------------------------- STAC


def test_item_round_trip_contents_and_checksums(run: PredictionResult, gis_adapter: Path) -> None:
    assert run.item is not None and run.item.name == "tile_item.json"
    d = json.loads(run.item.read_text())
    item = pystac.Item.from_file(str(run.item))
    again = item.to_dict(include_self_link=False, transform_hrefs=False)
    assert again == d  # round trip: nothing lost or changed by pystac
    JsonSchemaSTACValidator().validate_core(d, pystac.STACObjectType.ITEM, "1.1.0")  # offline
    assert item.id == "tile" and item.datetime is not None
    # proj: the class map's grid
    proj = ProjectionExtension.ext(item)
    with rasterio.open(run.class_map) as cm:
        assert proj.code == f"EPSG:{cm.crs.to_epsg()}" == "EPSG:32649"
        assert proj.shape == [cm.height, cm.width]
        assert proj.transform == list(cm.transform)[:6]
        assert proj.bbox == pytest.approx(list(cm.bounds))
        assert CRS.from_wkt(proj.wkt2) == cm.crs
    # every output of the run is an asset whose file exists, with its size and sha256
    expected = {
        "class_map", "class_map_rat", "class_map_style", "confidence", "confidence_style",
        "probabilities", "uncertainty", "uncertainty_style", "vector", "quicklook",
        "report_markdown", "report_json",
    }  # fmt: skip
    assert set(item.assets) == expected
    for key, asset in item.assets.items():
        path = Path(asset.get_absolute_href())
        assert path.parent == run.item.parent and path.exists(), key
        assert asset.href == f"./{path.name}"  # relative: the folder can move
        file = FileExtension.ext(asset)
        assert file.size == path.stat().st_size, key
        assert file.checksum == "1220" + hashlib.sha256(path.read_bytes()).hexdigest(), key
    assert item.assets["vector"].media_type == pystac.MediaType.GEOPACKAGE
    assert item.assets["class_map"].media_type == pystac.MediaType.COG
    assert "overview" in item.assets["quicklook"].roles
    # raster bands: types, nodata, scales
    bands = RasterExtension.ext(item.assets["class_map"]).bands
    assert bands is not None and bands[0].nodata == NODATA and bands[0].data_type == "uint8"
    confidence = RasterExtension.ext(item.assets["confidence"]).bands[0]  # type: ignore[index]
    assert confidence.nodata == 0 and confidence.scale == pytest.approx(1 / 255)
    assert len(RasterExtension.ext(item.assets["probabilities"]).bands or []) == 7
    # classification: codes, names, colours of the scheme, and the nodata value
    classes = ClassificationExtension.ext(item.assets["class_map"]).classes or []
    by_value = {c.value: c for c in classes}
    for c in CLASSES.classes:
        entry = by_value[c.code]
        assert entry.title == c.name and re.fullmatch(r"[0-9A-Za-z_-]+", entry.name)
        assert entry.color_hint == "{:02X}{:02X}{:02X}".format(*c.color)
    assert by_value[NODATA].nodata is True
    # provenance: adapter sha256, backbone, options, version, inputs
    props = item.properties
    sha = hashlib.sha256(gis_adapter.read_bytes()).hexdigest()
    assert props["gopt_geo:adapter"]["sha256"] == sha
    assert props["gopt_geo:adapter"]["backbone"]["name"] == "test_efficientnet"
    assert props["gopt_geo:adapter"]["variant"] == "gopt"
    assert props["gopt_geo:options"]["window"] == 64 and props["gopt_geo:options"]["uncertainty"]
    assert props["gopt_geo:version"] == props["processing:software"]["gopt-geo"]
    derived = {link.title: link for link in item.links if link.rel == "derived_from"}
    assert Path(derived["optical scene"].get_absolute_href() or "").name == "tile.tif"
    assert Path(derived["SAR raster"].get_absolute_href() or "").parent.name == "sar"
    # relative to the item (the run folder can move), the adapter with its sha256
    assert Path(derived["adapter"].get_absolute_href() or "").resolve() == gis_adapter.resolve()
    assert derived["adapter"].extra_fields["file:checksum"] == "1220" + sha
    assert props["gopt_geo:adapter"]["name"] == gis_adapter.name
    assert props["gopt_geo:inputs"]["optical"] == "tile.tif"
    assert "/tmp/" not in run.item.read_text()  # no absolute local path anywhere
    report = json.loads(run.report_json.read_text())
    assert report["model"]["adapter_sha256"] == sha  # the report carries it too


def test_item_geometry_covers_the_reprojected_corners(run: PredictionResult) -> None:
    item = pystac.Item.from_file(str(run.item))
    footprint = shapely.geometry.shape(item.geometry)
    assert footprint.is_valid and footprint.exterior.is_ccw
    with rasterio.open(run.class_map) as cm:
        left, bottom, right, top = cm.bounds
        crs = cm.crs
    lon, lat = warp_points(crs, "EPSG:4326", [left, right, right, left], [top, top, bottom, bottom])
    corners = shapely.points(np.column_stack([lon, lat]))
    assert shapely.covers(footprint, corners).all()
    xmin, ymin, xmax, ymax = item.bbox
    assert (xmin <= min(lon) and max(lon) <= xmax) and (ymin <= min(lat) and max(lat) <= ymax)
    assert 111 < xmin < 113 and 30 < ymin < 31  # the synthetic scenes lie near Wuhan


def test_collection_links_the_items(run: PredictionResult, tmp_path: Path) -> None:
    other = tmp_path / "b" / "other_item.json"
    other.parent.mkdir()
    d = json.loads(run.item.read_text())  # a second scene's item, 0.1 degree east
    d["id"] = "other"
    d["bbox"] = [d["bbox"][0] + 0.1, d["bbox"][1], d["bbox"][2] + 0.1, d["bbox"][3]]
    d["geometry"]["coordinates"] = [[[x + 0.1, y] for x, y in d["geometry"]["coordinates"][0]]]
    other.write_text(json.dumps(d))
    path = write_collection([run.item, other], tmp_path / "maps", collection_id="test-maps")
    collection = pystac.Collection.from_file(str(path))
    JsonSchemaSTACValidator().validate_core(
        collection.to_dict(include_self_link=False, transform_hrefs=False),
        pystac.STACObjectType.COLLECTION,
        "1.1.0",
    )
    items = {link.title: Path(link.get_absolute_href()) for link in collection.get_item_links()}
    assert items == {"tile": run.item.resolve(), "other": other.resolve()}
    bbox = collection.extent.spatial.bboxes[0]
    assert bbox[0] == pytest.approx(json.loads(run.item.read_text())["bbox"][0])
    assert bbox[2] == pytest.approx(d["bbox"][2])
    with pytest.raises(InputError, match=r"collection\.json: output already exists"):
        write_collection([run.item], tmp_path / "maps")
    with pytest.raises(InputError, match=r"missing\.json: STAC item not found"):
        write_collection([tmp_path / "missing.json"], tmp_path / "maps2")


# ---------------------------------------------------------------------------- QGIS styles


def palette(qml: Path) -> list[tuple[int, str, str]]:
    root = ET.parse(qml).getroot()
    renderer = root.find("pipe/rasterrenderer")
    assert (
        renderer is not None and renderer.get("type") == "paletted" and renderer.get("band") == "1"
    )
    return [
        (int(e.get("value", -1)), e.get("label", ""), e.get("color", ""))
        for e in renderer.iter("paletteEntry")
    ]


def hex_of(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def test_qml_sidecars_match_the_class_scheme(run: PredictionResult) -> None:
    qml = run.class_map.with_suffix(".qml")  # QGIS loads NAME.qml beside NAME.tif
    assert palette(qml) == [(c.code, c.name, hex_of(c.color)) for c in CLASSES.classes]
    for raster in (run.confidence, run.uncertainty):
        assert raster is not None
        root = ET.parse(raster.with_suffix(".qml")).getroot()
        renderer = root.find("pipe/rasterrenderer")
        assert renderer is not None and renderer.get("type") == "singlebandpseudocolor"
        shader = renderer.find("rastershader/colorrampshader")
        assert shader is not None and shader.get("colorRampType") == "INTERPOLATED"
        values = [float(i.get("value", "nan")) for i in shader.iter("item")]
        # QGIS applies the band's scale: the ramp runs over 0..1, not the stored bytes
        assert values[0] == 0.0 and values[-1] == 1.0 and values == sorted(values)
    with rasterio.open(run.class_map) as cm:
        assert cm.scales[0] == 1.0
    with rasterio.open(run.confidence) as conf:
        assert conf.scales[0] == pytest.approx(1 / 255)


def test_geopackage_default_style_colours_polygons_by_class(run: PredictionResult) -> None:
    assert run.vector is not None
    layers = dict(pyogrio.list_layers(run.vector))
    assert layers == {"tile_landcover": "Polygon", "layer_styles": None}
    with sqlite3.connect(run.vector) as db:
        (geometry_column,) = db.execute(
            "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = 'tile_landcover'"
        ).fetchone()
        rows = db.execute(
            "SELECT f_table_catalog, f_table_schema, f_table_name, f_geometry_column, "
            "useAsDefault, styleQML FROM layer_styles"
        ).fetchall()
        contents = db.execute(
            "SELECT data_type FROM gpkg_contents WHERE table_name = 'layer_styles'"
        ).fetchone()
    assert contents == ("attributes",)
    assert len(rows) == 1
    catalog, schema, table, column, default, qml = rows[0]
    assert (catalog, schema, table, column, default) == (
        "",
        "",
        "tile_landcover",
        geometry_column,
        1,
    )
    renderer = ET.fromstring(qml.split("\n", 1)[1]).find("renderer-v2")
    assert renderer is not None and renderer.get("type") == "categorizedSymbol"
    assert renderer.get("attr") == "code"
    categories = [(int(c.get("value", -1)), c.get("label")) for c in renderer.iter("category")]
    assert categories == [(c.code, c.name) for c in CLASSES.classes]
    for cat in renderer.iter("category"):
        symbol = renderer.find(f"symbols/symbol[@name='{cat.get('symbol')}']")
        assert symbol is not None
        colour = symbol.find("layer/Option/Option[@name='color']")
        assert colour is not None
        code = int(cat.get("value", -1))
        expected = next(c.color for c in CLASSES.classes if c.code == code)
        assert colour.get("value") == ",".join(map(str, (*expected, 255)))


def test_vector_sidecar_style_for_other_formats(gis_scene: SceneFiles, tmp_path: Path) -> None:
    model = PointwiseModel()
    result = Predictor(model, ROUTING, CLASSES, device="cpu").predict(
        gis_scene.optical,
        gis_scene.sar,
        tmp_path,
        PredictOptions(window=64, vector="parquet", confidence=False, progress=False),
    )
    assert result.vector is not None and result.vector.suffix == ".parquet"
    qml = ET.parse(result.vector.with_suffix(".qml")).getroot()
    labels = [c.get("label") for c in qml.iter("category")]
    assert labels == CLASSES.names
    assert not (tmp_path / "tile_confidence.tif").exists()
    assert not (tmp_path / "tile_confidence.qml").exists()


# ---------------------------------------------------------------------------- polygons


def test_polygons_carry_scene_and_adapter(run: PredictionResult, gis_adapter: Path) -> None:
    assert run.vector is not None
    frame = gpd.read_file(run.vector, layer="tile_landcover")
    sha = hashlib.sha256(gis_adapter.read_bytes()).hexdigest()
    assert (frame["scene_id"] == "tile").all()
    assert (frame["adapter_sha"] == sha[:12]).all()
    assert (frame["area_m2"] >= 1_000).all()  # --min-area (sieved) as asked
    codes = read(run.class_map)
    assert frame["area_m2"].sum() == pytest.approx(100.0 * (codes != NODATA).sum())  # no holes
    with rasterio.open(run.class_map) as cm:  # the map itself says where it came from
        assert cm.tags()["GOPT_GEO_SCENE_ID"] == "tile"
        assert cm.tags()["GOPT_GEO_ADAPTER_SHA256"] == sha


# ---------------------------------------------------------------------------- uncertainty


class PointwiseModel(nn.Module):
    """A 1x1 convolution: every pixel's logits depend on that pixel only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(6, 7, kernel_size=1)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor, target=None) -> SegmentationOutput:
        return SegmentationOutput(self.conv(torch.cat([rgb, aux], dim=1)))


class ThreeRegimes(nn.Module):
    """Hand-made: by the normalised red band, one class certain (class 0 or 1: its logit
    60 above the others) or all classes equally likely."""

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor, target=None) -> SegmentationOutput:
        red = rgb[:, :1]
        logits = torch.zeros(rgb.shape[0], 7, *rgb.shape[2:])
        logits[:, 0:1] = torch.where(red < -0.3, 60.0, 0.0)
        logits[:, 1:2] = torch.where((red >= -0.3) & (red < 0.3), 60.0, 0.0)
        return SegmentationOutput(logits)


def test_uncertainty_zero_when_certain_maximal_when_uniform(
    gis_scene: SceneFiles, tmp_path: Path
) -> None:
    result = Predictor(ThreeRegimes(), ROUTING, CLASSES, device="cpu").predict(
        gis_scene.optical,
        gis_scene.sar,
        tmp_path,
        PredictOptions(window=64, uncertainty=True, vector=None, progress=False),
    )
    assert result.uncertainty is not None
    u = read(result.uncertainty)
    with SceneReader(gis_scene.optical, gis_scene.sar, ROUTING) as reader:
        image, valid = reader.read(Window(0, 0, reader.grid.width, reader.grid.height))
    red = ROUTING.prepare(torch.from_numpy(image)[None])[0][0, 0].numpy()
    certain = (red < -0.3) | ((red >= -0.3) & (red < 0.3))
    assert certain.sum() > 100 and (~certain).sum() > 100  # both regimes present
    assert (u[certain & valid] == 0).all()  # one class has probability 1: entropy 0
    assert (u[~certain & valid] == 254).all()  # uniform over 7 classes: the maximum
    assert (u[~valid] == 255).all()
    with rasterio.open(result.uncertainty) as src:
        assert src.nodata == 255 and src.scales[0] == pytest.approx(1 / 254)
    # the report's share of uncertain pixels per class equals the map's
    codes = read(result.class_map)
    report = json.loads(result.report_json.read_text())
    assert report["uncertainty"]["threshold"] == 0.5
    for entry in report["classes"]:
        mine = codes == entry["code"]
        if mine.sum() == 0:
            assert entry["uncertain_percent"] is None
        else:
            share = 100 * (u[mine] > 127).mean()
            assert entry["uncertain_percent"] == pytest.approx(share)
    assert "% uncertain (> 0.5)" in result.report_markdown.read_text()


def test_uncertainty_is_not_changed_by_tiling(gis_scene: SceneFiles, tmp_path: Path) -> None:
    model = PointwiseModel()
    predictor = Predictor(model, ROUTING, CLASSES, device="cpu")
    maps = []
    for window, overlap in ((64, 0.5), (48, 0.25)):
        result = predictor.predict(
            gis_scene.optical,
            gis_scene.sar,
            tmp_path / f"w{window}",
            PredictOptions(
                window=window, overlap=overlap, uncertainty=True, vector=None, progress=False
            ),
        )
        assert result.uncertainty is not None
        maps.append(read(result.uncertainty).astype(int))
    # reference: the model on the whole scene at once, no windows, no blending
    with SceneReader(gis_scene.optical, gis_scene.sar, ROUTING) as reader:
        image, valid = reader.read(Window(0, 0, reader.grid.width, reader.grid.height))
    rgb, aux = ROUTING.prepare(torch.from_numpy(image)[None])
    with torch.inference_mode():
        logits = model(rgb, aux).logits[0]
    whole = (normalised_entropy(logits) * 254).round().numpy().astype(int)
    assert 10 < whole[valid].mean() < 244  # neither certain nor uniform everywhere
    for tiled in maps:
        assert np.abs(tiled[valid] - whole[valid]).max() <= 1  # blending tolerance
    assert normalised_entropy(torch.zeros(7, 1, 1)).item() == pytest.approx(1.0)
    assert normalised_entropy(torch.tensor([[[80.0]], [[0.0]]])).item() == pytest.approx(0.0)


def test_bad_uncertainty_threshold() -> None:
    with pytest.raises(
        InputError, match=r"^uncertainty threshold must be between 0 and 1, got 1\.5$"
    ):
        PredictOptions(uncertainty_threshold=1.5)


# ---------------------------------------------------------------------------- quicklook


def test_quicklook_png_linked_from_the_report(run: PredictionResult) -> None:
    assert run.quicklook is not None
    with Image.open(run.quicklook) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        width, height = image.size
        # both panels at full resolution (the scene is smaller than a panel) and a legend
        assert width > 2 * 96 and height > 112
        pixels = np.asarray(image)
    for c in CLASSES.classes:  # the legend shows every class's colour
        assert (pixels == np.array(c.color, dtype=np.uint8)).all(-1).any(), c.name
    assert f"]({run.quicklook.name})" in run.report_markdown.read_text()


def test_quicklook_reads_the_class_map_overviews(tmp_path: Path) -> None:
    grid = Grid(CRS.from_epsg(32649), from_origin(0, 0, 10, -10), 1300, 1100)
    writer = StripRasterWriter(
        tmp_path / "m.tif",
        grid,
        count=1,
        dtype="uint8",
        nodata=NODATA,
        overview_resampling="MODE",
        colormap=CLASSES.colormap(NODATA),
    )
    codes = np.full((1, 1100, 1300), 10, dtype=np.uint8)
    codes[:, :, 650:] = 40
    writer.write(codes)
    path = writer.finish()
    assert _overview_level(path, 1) is None  # full resolution
    assert _overview_level(path, 3) == 0  # the 2x overview, not coarser than 3x
    assert _overview_level(path, 5) == 1  # the 4x overview
    panel = class_panel(path, CLASSES, NODATA, max_size=300)
    assert panel.shape == (1100 // 5, 1300 // 5, 3)
    # the shape the predictor reads the optical panel at, before the class map exists
    assert panel_shape(1300, 1100, max_size=300) == panel.shape[:2]
    assert (panel[:, :100] == (204, 178, 102)).all() and (panel[:, -100:] == (0, 92, 230)).all()


# ---------------------------------------------------------------------------- optical only


def test_optical_only_adapter_predicts_without_sar(gis_scene: SceneFiles, tmp_path: Path) -> None:
    gis_adapter = save(tmp_path / "optical_only.safetensors", variant="optical_only")
    out = tmp_path / "out"
    args = ["predict", str(gis_scene.optical), "--model", str(gis_adapter), "-o", str(out)]
    args += ["--window", "64", "--no-progress", "--device", "cpu", "--vector", "none"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    no_sar = read(out / "tile_classes.tif")
    assert set(np.unique(no_sar)) <= {*CLASSES.codes, NODATA} and (no_sar != NODATA).all()
    report = json.loads((out / "tile_report.json").read_text())
    assert (
        report["inputs"]["sar"] is None
        and "ignores auxiliary bands" in report["inputs"]["sar_note"]
    )
    # the model ignores the auxiliary input: with SAR it maps exactly the same
    with_sar = runner.invoke(app, [*args, "-o", str(tmp_path / "sar"), "--sar", str(gis_scene.sar)])
    assert with_sar.exit_code == 0, with_sar.output
    np.testing.assert_array_equal(read(tmp_path / "sar" / "tile_classes.tif"), no_sar)


def test_sar_required_only_when_the_model_reads_it(
    gis_scene: SceneFiles, gis_adapter: Path, tmp_path: Path
) -> None:
    res = runner.invoke(
        app,
        [
            "predict",
            str(gis_scene.optical),
            "--model",
            str(gis_adapter),
            "-o",
            str(tmp_path),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 2, res.output
    assert "tile.tif: the model expects SAR bands (VV, VH); give a SAR raster (--sar)" in res.output
    assert "Traceback" not in res.output
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_model_without_sar_in_its_aux_bands_needs_no_sar(
    gis_scene: SceneFiles, tmp_path: Path
) -> None:
    """An adapter trained with ``aux_bands: [NIR]`` lists the config's SAR bands but reads
    none of them: no SAR needed, and giving one changes nothing."""
    routing = BandRouting(
        OPTICAL_BANDS, SAR_BANDS, aux=("NIR",), mean=ROUTING.mean, std=ROUTING.std
    )

    class NirModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(4, 7, kernel_size=1)

        def forward(self, rgb: torch.Tensor, aux: torch.Tensor, target=None):
            return SegmentationOutput(self.conv(torch.cat([rgb, aux], dim=1)))

    predictor = Predictor(NirModel(), routing, CLASSES, device="cpu")
    assert not predictor.needs_sar
    options = PredictOptions(window=64, vector=None, progress=False)
    alone = predictor.predict(gis_scene.optical, None, tmp_path / "a", options)
    with_sar = predictor.predict(gis_scene.optical, gis_scene.sar, tmp_path / "b", options)
    np.testing.assert_array_equal(read(alone.class_map), read(with_sar.class_map))
