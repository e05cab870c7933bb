"""Class map -> polygons: round trip, seams, formats, areas, min area, simplify."""

from __future__ import annotations

import importlib
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from conftest import read_raster
from rasterio.crs import CRS
from rasterio.features import rasterize, sieve
from rasterio.transform import from_origin

from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
from gopt_geo.data.synthetic import make_scene
from gopt_geo.errors import InputError
from gopt_geo.inference import vectorize
from gopt_geo.outputs.grid import Grid, pixel_areas_m2
from gopt_geo.outputs.writers import StripRasterWriter, class_map_metadata

CLASSES = WHU_OPT_SAR_CLASSES
NODATA = 255
HOLE = (slice(120, 170), slice(60, 140))  # a nodata rectangle across several seams


@pytest.fixture(scope="module")
def class_map(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic land cover (parcels, roads, lakes) written as gopt-geo writes class maps."""
    root = tmp_path_factory.mktemp("vec")
    scene = make_scene(root, "v", size=(300, 260), seed=4)
    with rasterio.open(scene.labels) as src:
        codes = src.read(1)
        grid = Grid(src.crs, src.transform, src.width, src.height)
    codes[HOLE] = NODATA
    return write_class_map(root / "classes.tif", codes, grid)


def write_class_map(path: Path, codes: np.ndarray, grid: Grid) -> Path:
    writer = StripRasterWriter(
        path,
        grid,
        count=1,
        dtype="uint8",
        nodata=NODATA,
        overview_resampling="MODE",
        colormap=CLASSES.colormap(NODATA),
    )
    writer.write(codes[None])
    return writer.finish(**class_map_metadata(CLASSES, NODATA))  # type: ignore[arg-type]


def read_layer(path: Path) -> gpd.GeoDataFrame:
    """The land-cover layer (a GeoPackage also holds QGIS's ``layer_styles`` table)."""
    return gpd.read_file(path, layer=path.stem) if path.suffix == ".gpkg" else gpd.read_file(path)


def rasterize_back(frame: gpd.GeoDataFrame, shape: tuple[int, int], transform) -> np.ndarray:
    return rasterize(
        zip(frame.geometry, frame["code"], strict=True),
        out_shape=shape,
        transform=transform,
        fill=NODATA,
        dtype="uint8",
    )


def test_round_trip_across_block_seams(class_map: Path, tmp_path: Path) -> None:
    raster = read_raster(class_map, 1)
    codes, transform = raster.data, raster.profile["transform"]
    result = vectorize(class_map, tmp_path / "lc.gpkg", block_size=37)  # 9 seams
    assert result.blocks == 9
    frame = read_layer(result.path)
    assert len(frame) == result.features
    assert frame.crs == CRS.from_epsg(32649)
    back = rasterize_back(frame, codes.shape, transform)
    assert (back == codes).mean() >= 0.999
    assert (back[HOLE] == NODATA).all()
    assert frame.geometry.is_valid.all()
    # Seams leave no trace: the same regions as polygonising the whole map in one block.
    whole = read_layer(vectorize(class_map, tmp_path / "one.gpkg", block_size=10_000).path)
    assert len(frame) == len(whole)
    key = ["code", "area_m2"]
    a = frame.assign(x=frame.geometry.centroid.x).sort_values([*key, "x"]).reset_index(drop=True)
    b = whole.assign(x=whole.geometry.centroid.x).sort_values([*key, "x"]).reset_index(drop=True)
    assert shapely.equals(a.geometry.values, b.geometry.values).all()


def test_columns_names_and_formats(class_map: Path, tmp_path: Path) -> None:
    gpkg = read_layer(vectorize(class_map, tmp_path / "lc.gpkg", block_size=64).path)
    columns = ["code", "class_name", "area_m2", "scene_id", "adapter_sha", "geometry"]
    assert list(gpkg.columns) == columns
    expected = {c.code: c.name for c in CLASSES.classes} | {0: "background"}
    assert (gpkg["class_name"] == gpkg["code"].map(expected)).all()  # names from the tags
    assert {"water", "farmland", "road"} <= set(gpkg["class_name"])
    # a map without gopt-geo's provenance tags: the scene from the file name, no adapter
    assert (gpkg["scene_id"] == "classes").all() and gpkg["adapter_sha"].isna().all()
    for suffix, reader in ((".parquet", gpd.read_parquet), (".geojson", gpd.read_file)):
        result = vectorize(class_map, tmp_path / f"lc{suffix}", block_size=64)
        other = reader(result.path)
        assert list(other.columns) == columns
        assert other.crs == gpkg.crs
        assert len(other) == len(gpkg) == result.features
        assert other["area_m2"].sum() == pytest.approx(gpkg["area_m2"].sum())
        assert sorted(other["class_name"].unique()) == sorted(gpkg["class_name"].unique())
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_areas_and_sieve_min_area(class_map: Path, tmp_path: Path) -> None:
    """--min-area merges small regions into their neighbours (block-wise sieve with a
    halo): no polygon below the area, no hole where a small region was, every mapped
    pixel still mapped, large regions untouched."""
    raster = read_raster(class_map, 1)
    codes, transform = raster.data, raster.profile["transform"]
    full = read_layer(vectorize(class_map, tmp_path / "all.gpkg", block_size=50).path)
    # 10 m pixels: the areas add up to 100 m² per mapped pixel, class by class.
    for code in np.unique(codes[codes != NODATA]):
        total = full.loc[full["code"] == code, "area_m2"].sum()
        assert total == pytest.approx(100.0 * (codes == code).sum())
    small = full["area_m2"] < 5_000
    assert small.sum() > 5  # the map has small regions to merge
    result = vectorize(class_map, tmp_path / "big.gpkg", block_size=50, min_area=5_000)
    big = read_layer(result.path)
    assert result.sieve_pixels == 50 and result.removed_small == 0
    assert (big["area_m2"] >= 5_000).all()
    back = rasterize_back(big, codes.shape, transform)
    mapped = codes != NODATA
    np.testing.assert_array_equal(back != NODATA, mapped)  # no hole, nothing added
    assert big["area_m2"].sum() == pytest.approx(100.0 * mapped.sum())  # pixels conserved
    in_large = rasterize(
        ((g, 1) for g in full.geometry[~small]), out_shape=codes.shape, transform=transform
    ).astype(bool)
    np.testing.assert_array_equal(back[in_large], codes[in_large])  # large regions kept
    assert result.sieved_pixels == int((back != codes)[mapped].sum()) > 0
    # block-wise (50 rows, seams everywhere) equals GDAL's sieve of the whole map
    whole = sieve(codes, size=50, mask=mapped, connectivity=4)
    assert (back[mapped] == whole[mapped]).mean() > 0.999


def test_simplify_keeps_a_gapless_coverage(class_map: Path, tmp_path: Path) -> None:
    plain = read_layer(vectorize(class_map, tmp_path / "plain.gpkg", block_size=50).path)
    result = vectorize(class_map, tmp_path / "simple.gpkg", block_size=50, simplify=15.0)
    simple = read_layer(result.path)
    assert len(simple) == len(plain)
    assert shapely.get_num_coordinates(simple.geometry.values).sum() < 0.8 * (
        shapely.get_num_coordinates(plain.geometry.values).sum()
    )
    assert simple.geometry.is_valid.all()
    # Shared edges were simplified once for both neighbours, also across batches:
    # no overlaps (union == sum) and no gaps (same total area as the pixels).
    total = plain["area_m2"].sum()
    assert simple["area_m2"].sum() == pytest.approx(total, rel=1e-9)
    assert shapely.union_all(simple.geometry.values).area == pytest.approx(total, rel=1e-9)


def test_geographic_class_map_areas_in_square_metres(tmp_path: Path) -> None:
    codes = np.full((120, 150), 10, dtype=np.uint8)
    codes[30:90, 40:100] = 40
    transform = from_origin(112.0, 30.6, 0.0001, 0.0001)
    grid = Grid(CRS.from_epsg(4326), transform, 150, 120)
    path = write_class_map(tmp_path / "geo.tif", codes, grid)
    frame = read_layer(vectorize(path, tmp_path / "geo.gpkg", block_size=40).path)
    assert frame.crs == CRS.from_epsg(4326)  # polygons stay in the raster's CRS
    assert set(frame["class_name"]) == {"farmland", "water"}
    water = frame.loc[frame["code"] == 40, "area_m2"]
    # Independent estimate: pixel areas on the WGS84 ellipsoid, row by row.
    row_areas = pixel_areas_m2(grid.crs, transform, 30, 60)
    assert water.sum() == pytest.approx(60 * row_areas.sum(), rel=1e-3)
    assert len(water) == 1 and 3.5e5 < water.iloc[0] < 4.2e5  # ~666 m x ~574 m at 30.6 N


def test_bad_vector_input(class_map: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"out\.shp: unknown vector format '\.shp'"):
        vectorize(class_map, tmp_path / "out.shp")
    vectorize(class_map, tmp_path / "out.gpkg")
    with pytest.raises(InputError, match=r"out\.gpkg: output already exists"):
        vectorize(class_map, tmp_path / "out.gpkg")
    vectorize(class_map, tmp_path / "out.gpkg", overwrite=True)
    floats = tmp_path / "floats.tif"
    with rasterio.open(
        floats,
        "w",
        driver="GTiff",
        width=8,
        height=8,
        count=1,
        dtype="float64",
        crs="EPSG:32649",
        transform=from_origin(0, 80, 10, 10),
    ) as dst:
        dst.write(np.zeros((1, 8, 8)))
    with pytest.raises(InputError, match=r"floats\.tif: not a class map \(band 1 is float64"):
        vectorize(floats, tmp_path / "f.gpkg")
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff at all")
    with pytest.raises(InputError, match=r"broken\.tif: not a readable raster"):
        vectorize(broken, tmp_path / "b.gpkg")
    with pytest.raises(
        InputError, match=r"--min-area -1(\.0)?: the minimum polygon area must be >= 0"
    ):
        vectorize(class_map, tmp_path / "neg.gpkg", min_area=-1.0)
    with pytest.raises(InputError, match=r"--simplify -2(\.0)?: the tolerance must be >= 0 metres"):
        vectorize(class_map, tmp_path / "neg.gpkg", simplify=-2.0)
    assert not list(tmp_path.glob(".*partial*"))  # failed runs leave no temporary file


@pytest.mark.parametrize("suffix", [".gpkg", ".parquet"])
def test_failed_vectorize_leaves_no_file(
    class_map: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    """An error after some polygons were written removes the temporary file; no output."""
    module = importlib.import_module("gopt_geo.outputs.vectorize")  # not the function
    original, calls = module._write_batch, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "_write_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        vectorize(class_map, tmp_path / f"lc{suffix}", block_size=50)
    assert list(tmp_path.iterdir()) == []
