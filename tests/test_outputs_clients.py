"""Outputs as other clients read them without gopt-geo's sidecar styles: GDAL category
names and a colour table without filler in the class map's ``.aux.xml``, legends that
state the values they show, GeoPackages of a version GDAL 3.6 / QGIS 3.22 open without
a warning, GeoParquet read back without GDAL, and the xarray hand-over
(``Predictor.predict_array`` equals ``open_map`` of the files)."""

from __future__ import annotations

import sqlite3
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import rioxarray
from conftest import make_adapter

from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
from gopt_geo.data.synthetic import SceneFiles, make_scene
from gopt_geo.inference import PredictOptions, Predictor
from gopt_geo.inference.predictor import PredictionResult
from gopt_geo.maps import open_map
from gopt_geo.outputs.vectorize import read_polygons, vectorize
from gopt_geo.outputs.writers import rat_xml

pytestmark = pytest.mark.filterwarnings("ignore::gopt_geo.models.RandomBackboneWarning")

CLASSES = WHU_OPT_SAR_CLASSES


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> SceneFiles:
    return make_scene(tmp_path_factory.mktemp("scene"), "tile", size=(80, 72), seed=7)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    adapter = make_adapter(tmp_path_factory.mktemp("model") / "adapter.safetensors")
    return Predictor.from_adapter(adapter, device="cpu")


OPTIONS = PredictOptions(
    window=64, probabilities=True, uncertainty=True, vector="gpkg", progress=False, device="cpu"
)


@pytest.fixture(scope="module")
def run(
    scene: SceneFiles, predictor: Predictor, tmp_path_factory: pytest.TempPathFactory
) -> PredictionResult:
    out = tmp_path_factory.mktemp("run")
    return predictor.predict(scene.optical, scene.sar, out, OPTIONS)


# ---------------------------------------------------------------------------- class map


def test_class_map_names_and_colours_without_the_qml(run: PredictionResult) -> None:
    """GDAL reads category names and a colour table as long as the highest code from the
    ``.aux.xml`` (QGIS labels a paletted layer with them); no opaque black filler."""
    codes = [c.code for c in CLASSES.classes]
    # GDAL takes the sidecar's table (sibling files listed: an in-process predict-many
    # of another test may have left GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR in os.environ)
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="NO"), rasterio.open(run.class_map) as src:
        cmap = src.colormap(1)
    assert sorted(cmap) == list(range(max(codes) + 1))
    for code, rgba in cmap.items():
        if code in codes:
            colour = next(c.color for c in CLASSES.classes if c.code == code)
            assert rgba == (*colour, 255)
        else:
            assert rgba[3] == 0  # unused codes transparent
    band = ET.parse(f"{run.class_map}.aux.xml").getroot().find("PAMRasterBand")
    assert band is not None
    names = [e.text or "" for e in band.iter("Category")]
    assert len(names) == max(codes) + 1
    for i, name in enumerate(names):
        expected = next((c.name for c in CLASSES.classes if c.code == i), "")
        assert name == expected
    assert band.findtext("ColorInterp") == "Palette"
    assert band.find("GDALRasterAttributeTable") is not None  # the RAT stays


def test_class_map_alone_keeps_its_own_palette(run: PredictionResult, tmp_path: Path) -> None:
    alone = tmp_path / "alone.tif"
    alone.write_bytes(run.class_map.read_bytes())  # no .aux.xml beside it
    with rasterio.open(alone) as src:
        cmap = src.colormap(1)
    for c in CLASSES.classes:
        assert cmap[c.code][:3] == c.color


def test_rat_xml_leaves_wide_codes_to_the_table() -> None:
    text = rat_xml([(1, "a", (1, 2, 3)), (300, "b", (4, 5, 6))])
    root = ET.fromstring(text)
    assert root.find(".//CategoryNames") is None and root.find(".//ColorTable") is None
    assert len(root.findall(".//Row")) == 2


def test_legends_state_the_values_they_show(run: PredictionResult) -> None:
    """QGIS applies the band's scale (0..1) and titles the legend with the description."""
    for path in (run.confidence, run.uncertainty, run.probabilities):
        assert path is not None
        with rasterio.open(path) as src:
            for description, scale in zip(src.descriptions, src.scales, strict=True):
                assert scale < 1 and "0-1" in (description or "") or "1: uniform" in description
                assert " x 25" not in (description or "")


# ---------------------------------------------------------------------------- vectors


def test_geopackage_version_opens_in_gdal_3_6(run: PredictionResult) -> None:
    assert run.vector is not None
    with sqlite3.connect(run.vector) as db:
        (application_id,) = db.execute("PRAGMA application_id").fetchone()
        (user_version,) = db.execute("PRAGMA user_version").fetchone()
        styles = db.execute("SELECT COUNT(*) FROM layer_styles").fetchone()
    assert application_id == 0x47504B47  # "GPKG"
    assert user_version == 10200  # GeoPackage 1.2: no "partially supported" warning
    assert styles == (1,)  # the stored style is kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = pyogrio.read_dataframe(run.vector, layer="tile_landcover")
    assert len(frame) > 0


def test_geoparquet_reads_back_in_our_own_environment(run: PredictionResult, tmp_path: Path):
    out = tmp_path / "polygons.parquet"
    vectorize(run.class_map, out)
    frame = read_polygons(out)  # pyarrow, not GDAL (whose wheel lacks a Parquet driver)
    gpkg = read_polygons(run.vector, layer="tile_landcover")  # type: ignore[arg-type]
    assert len(frame) == len(gpkg) and frame.crs == gpkg.crs
    assert sorted(frame["area_m2"].round(3)) == sorted(gpkg["area_m2"].round(3))


# ---------------------------------------------------------------------------- xarray


def test_predict_array_equals_open_map_of_the_files(
    scene: SceneFiles, predictor: Predictor, run: PredictionResult
) -> None:
    optical = rioxarray.open_rasterio(scene.optical)
    sar = rioxarray.open_rasterio(scene.sar)
    ds = predictor.predict_array(optical, sar, OPTIONS)
    files = open_map(run.class_map).load()
    assert set(ds.data_vars) == set(files.data_vars)
    np.testing.assert_array_equal(ds["classes"].values, files["classes"].values)
    for name in ("confidence", "uncertainty", "probabilities"):
        np.testing.assert_allclose(ds[name].values, files[name].values, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(ds.x.values, files.x.values)
    np.testing.assert_allclose(ds.y.values, files.y.values)
    assert ds.rio.crs == files.rio.crs
    assert ds.attrs["class_names"] == files.attrs["class_names"]


def test_predict_array_takes_named_bands_and_one_time_step(
    scene: SceneFiles, predictor: Predictor, run: PredictionResult
) -> None:
    """A Dataset of one variable per band with a time axis, as odc.stac.load returns,
    in another band order: bands are picked by name."""
    optical = rioxarray.open_rasterio(scene.optical)
    names = list(predictor.routing.optical_bands)
    optical = optical.assign_coords(band=names).expand_dims("time")
    shuffled = optical.to_dataset("band")[names[::-1]]  # variables in reverse order
    sar = rioxarray.open_rasterio(scene.sar)
    ds = predictor.predict_array(shuffled, sar, PredictOptions(window=64, progress=False))
    with rasterio.open(run.class_map) as src:
        np.testing.assert_array_equal(ds["classes"].values, src.read(1))
    two = optical.isel(time=[0, 0])
    from gopt_geo.errors import InputError

    with pytest.raises(InputError, match="2 time steps"):
        predictor.predict_array(two, sar)
