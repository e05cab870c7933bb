"""``gopt-geo change``: transition map and matrix of two class maps."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.warp import calculate_default_transform, reproject
from typer.testing import CliRunner

from gopt_geo.change import TRANSITIONS_TAG, change_maps
from gopt_geo.cli import app
from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
from gopt_geo.errors import InputError
from gopt_geo.outputs.grid import Grid
from gopt_geo.outputs.writers import StripRasterWriter, class_map_metadata

CLASSES = WHU_OPT_SAR_CLASSES
NODATA = 255
CODES = CLASSES.codes  # 10 .. 70
GRID = Grid(CRS.from_epsg(32649), from_origin(600_000, 3_380_000, 10, 10), 100, 120)


def write_map(path: Path, codes: np.ndarray, grid: Grid = GRID) -> Path:
    """A class map as gopt-geo predict writes it (COG, palette, scheme in the tags)."""
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


def write_confidence(path: Path, conf: np.ndarray) -> Path:
    writer = StripRasterWriter(
        path, GRID, count=1, dtype="uint8", nodata=0, overview_resampling="AVERAGE"
    )
    writer.write(conf[None])
    return writer.finish(scales=[1 / 255])


@pytest.fixture(scope="module")
def maps(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """BEFORE: 20x20-pixel blocks of classes; AFTER: the same with known changes; some
    nodata in each."""
    root = tmp_path_factory.mktemp("maps")
    rng = np.random.default_rng(0)
    blocks = rng.choice([10, 30, 40, 50, 60], size=(6, 5))
    before = np.kron(blocks, np.ones((20, 20), dtype=np.int64)).astype(np.uint8)
    after = before.copy()
    after[20:60, 20:60] = 40  # a lake appears
    after[80:100, 0:40] = np.where(before[80:100, 0:40] == 50, 20, before[80:100, 0:40])
    before[:, :6] = NODATA  # nodata in either map
    after[110:, :] = NODATA
    b = write_map(root / "before_classes.tif", before)
    a = write_map(root / "after_classes.tif", after)
    return b, a, before, after


def expected_pixels(before: np.ndarray, after: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Pixel counts [from, to] computed directly from the arrays."""
    index = {c: i for i, c in enumerate(CODES)}
    m = np.zeros((len(CODES), len(CODES)), dtype=np.int64)
    valid = (before != NODATA) & (after != NODATA) & keep
    for b, a in zip(before[valid], after[valid], strict=True):
        m[index[int(b)], index[int(a)]] += 1
    return m


def test_known_transitions_give_the_exact_matrix(maps, tmp_path: Path) -> None:
    before_path, after_path, before, after = maps
    result = change_maps(before_path, after_path, tmp_path)
    expected = expected_pixels(before, after, np.ones(before.shape, bool))
    assert [c.code for c in result.before_classes] == CODES  # no background class
    np.testing.assert_array_equal(result.pixels, expected)
    assert result.area_m2 is not None
    np.testing.assert_allclose(result.area_m2, expected * 100.0)  # 10 m pixels
    assert result.nodata_pixels == int(((before == NODATA) | (after == NODATA)).sum())
    assert result.changed_share > 0.05
    # the transition map: one code per pair, nodata where either map is
    with rasterio.open(result.transitions) as src:
        codes = src.read(1)
        assert src.nodata == 0 and src.crs == GRID.crs and src.transform == GRID.transform
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        table = {t["code"]: t for t in json.loads(src.tags()[TRANSITIONS_TAG])}
        cmap = src.colormap(1)
        band_tags = src.tags(1)
    lake = result.code(10, 40) if before[30, 30] == 10 else result.code(int(before[30, 30]), 40)
    assert codes[30, 30] == lake
    assert table[lake]["name"] == f"{table[lake]['from_name']} → water"
    assert band_tags[f"CLASS_{lake}"] == table[lake]["name"]
    assert cmap[lake][:3] == (0, 92, 230)  # a change: the colour of the new class
    same = result.code(50, 50)
    assert table[same]["name"] == "forest → forest" and cmap[same][:3] != (34, 139, 34)
    nodata = (before == NODATA) | (after == NODATA)
    np.testing.assert_array_equal(codes == 0, nodata)
    # every pixel's code decodes to its (before, after) pair
    valid = ~nodata
    decoded_from = np.array([table[int(c)]["from_code"] for c in codes[valid]])
    decoded_to = np.array([table[int(c)]["to_code"] for c in codes[valid]])
    np.testing.assert_array_equal(decoded_from, before[valid])
    np.testing.assert_array_equal(decoded_to, after[valid])
    # the matrix in CSV (m² and ha) and Markdown
    with result.matrix_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(CODES) ** 2
    for row in rows:
        i, j = CODES.index(int(row["from_code"])), CODES.index(int(row["to_code"]))
        assert int(row["pixels"]) == expected[i, j]
        assert float(row["area_m2"]) == pytest.approx(expected[i, j] * 100.0)
        assert float(row["area_ha"]) == pytest.approx(expected[i, j] * 100.0 / 1e4)
    text = result.matrix_markdown.read_text()
    assert "| before \\ after | farmland | city |" in text and "## Changes, largest first" in text
    # GIS sidecars: attribute table and QGIS palette with the "from → to" names
    rat = Path(f"{result.transitions}.aux.xml").read_text()
    assert f"<F>{lake}</F><F>{table[lake]['name']}</F>" in rat
    qml = ET.parse(result.style).getroot()
    labels = {int(e.get("value", -1)): e.get("label") for e in qml.iter("paletteEntry")}
    assert labels == {code: t["name"] for code, t in table.items()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_after_in_another_crs_gives_the_same_matrix(maps, tmp_path: Path) -> None:
    before_path, after_path, before, after = maps
    warped = tmp_path / "after_wgs84.tif"
    with rasterio.open(after_path) as src:
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:4326", src.width, src.height, *src.bounds
        )
        data = np.full((height, width), NODATA, dtype=np.uint8)
        reproject(
            src.read(1),
            data,
            src_transform=src.transform,
            src_crs=src.crs,
            src_nodata=NODATA,
            dst_transform=transform,
            dst_crs="EPSG:4326",
            dst_nodata=NODATA,
            resampling=Resampling.nearest,
        )
        grid = Grid(CRS.from_epsg(4326), transform, width, height)
    write_map(warped, data, grid)
    same = change_maps(before_path, after_path, tmp_path / "same")
    other = change_maps(before_path, warped, tmp_path / "other")
    total = same.pixels.sum()
    # nearest-neighbour resampling twice moves class borders by a pixel at most
    assert np.abs(other.pixels - same.pixels).sum() <= 0.02 * total
    changed = ~np.eye(len(CODES), dtype=bool)
    assert other.pixels[changed].sum() == pytest.approx(same.pixels[changed].sum(), rel=0.1)
    assert other.pixels.sum() == pytest.approx(total, rel=0.03)


def test_min_confidence_masks_pixels(maps, tmp_path: Path) -> None:
    before_path, after_path, before, after = maps
    folder = before_path.parent
    conf_b = np.full(before.shape, 250, dtype=np.uint8)
    conf_b[0:30, 50:100] = 60  # 0.24: below 0.5
    conf_a = np.full(before.shape, 250, dtype=np.uint8)
    conf_a[90:120, 0:50] = 100  # 0.39
    write_confidence(folder / "before_confidence.tif", conf_b)  # found beside the maps
    write_confidence(folder / "after_confidence.tif", conf_a)
    result = change_maps(before_path, after_path, tmp_path, min_confidence=0.5)
    keep = (conf_b >= 128) & (conf_a >= 128)
    np.testing.assert_array_equal(result.pixels, expected_pixels(before, after, keep))
    both = (before != NODATA) & (after != NODATA)
    assert result.masked_pixels == int((both & ~keep).sum())
    with rasterio.open(result.transitions) as src:
        assert (src.read(1)[~keep] == 0).all()
    with pytest.raises(InputError, match=r"nope\.tif: confidence map of before_classes\.tif not"):
        change_maps(
            before_path, after_path, tmp_path / "x", min_confidence=0.5,
            before_confidence=tmp_path / "nope.tif",
        )  # fmt: skip


def test_existing_outputs_and_bad_input(maps, tmp_path: Path) -> None:
    before_path, after_path, *_ = maps
    change_maps(before_path, after_path, tmp_path, name="c")
    with pytest.raises(InputError, match=r"c_transitions\.tif: output already exists"):
        change_maps(before_path, after_path, tmp_path, name="c")
    change_maps(before_path, after_path, tmp_path, name="c", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "c_matrix.csv",
        "c_matrix.md",
        "c_transitions.qml",
        "c_transitions.tif",
        "c_transitions.tif.aux.xml",
    ]
    floats = tmp_path / "floats.tif"
    with rasterio.open(
        floats, "w", driver="GTiff", width=8, height=8, count=1, dtype="float32",
        crs=GRID.crs, transform=GRID.transform,
    ) as dst:  # fmt: skip
        dst.write(np.zeros((1, 8, 8), dtype=np.float32))
    with pytest.raises(InputError, match=r"floats\.tif: not a class map"):
        change_maps(floats, after_path, tmp_path / "f")
    far = write_map(
        tmp_path / "far.tif",
        np.full((120, 100), 10, np.uint8),
        Grid(GRID.crs, from_origin(700_000, 3_300_000, 10, 10), 100, 120),
    )
    with pytest.raises(InputError, match=r"far\.tif: does not overlap .*before_classes\.tif"):
        change_maps(before_path, far, tmp_path / "g")
    with pytest.raises(InputError, match=r"--min-confidence must be between 0 and 1"):
        change_maps(before_path, after_path, tmp_path / "h", min_confidence=2.0)
    assert not (tmp_path / "f").exists() or not list((tmp_path / "f").iterdir())


def test_change_command(maps, tmp_path: Path) -> None:
    before_path, after_path, *_ = maps
    res = CliRunner().invoke(
        app, ["change", str(before_path), str(after_path), "-o", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    assert "changed class" in res.output
    assert (tmp_path / "before_to_after_transitions.tif").exists()
    assert (tmp_path / "before_to_after_matrix.csv").exists()
    again = CliRunner().invoke(
        app, ["change", str(before_path), str(after_path), "-o", str(tmp_path)]
    )
    assert again.exit_code == 2 and "--overwrite" in again.output
