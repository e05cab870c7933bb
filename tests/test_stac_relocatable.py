"""A predict-many run folder as a catalogue takes it: items that carry their collection,
no absolute local path, the acquisition time as ``datetime``, valid STAC 1.1 (offline),
and a folder copied elsewhere that still loads (``odc.stac.load`` equals the maps)."""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from conftest import make_adapter
from pystac.validation.stac_validator import JsonSchemaSTACValidator

from gopt_geo.data.synthetic import make_scenes
from gopt_geo.inference.many import predict_many
from gopt_geo.inference.options import PredictOptions
from gopt_geo.inference.sources import Scene
from gopt_geo.outputs.stac import acquisition_time, parse_datetime, portable_href

pytestmark = [
    pytest.mark.filterwarnings("ignore::gopt_geo.models.RandomBackboneWarning"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:odc"),  # odc-geo's affine *
]

ACQUIRED = "2021-07-14T03:25:51Z"


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A two-scene run (one scene tagged with its acquisition time) made in one folder,
    copied to another and the original (and the inputs, adapter) deleted; returns (the
    copy, where the run was made)."""
    root = tmp_path_factory.mktemp("relocate")
    files = make_scenes(root / "in", 2, size=64, seed=5)
    with rasterio.open(files[0].optical, "r+") as dst:
        dst.update_tags(ACQUISITION_DATETIME=ACQUIRED)
    adapter = make_adapter(root / "adapter.safetensors")
    scenes = [Scene(f.name, str(f.optical), str(f.sar)) for f in files]
    made = root / "made"
    options = PredictOptions(window=64, vector="gpkg", progress=False)
    environ = dict(os.environ)
    try:
        result = predict_many(scenes, adapter, made, options=options, executor=None, progress=False)
    finally:  # the runner sets worker-wide GDAL options (GDAL_DISABLE_READDIR_ON_OPEN),
        os.environ.clear()  # which hide .aux.xml sidecars from later opens here
        os.environ.update(environ)
    assert [s.status for s in result.scenes] == ["done", "done"]
    copy = tmp_path_factory.mktemp("elsewhere") / "maps"
    shutil.copytree(made, copy)
    shutil.rmtree(made)
    shutil.rmtree(root / "in")
    return copy, made


def item_paths(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*_item.json"))


def test_no_absolute_local_path_anywhere(moved_run: tuple[Path, Path]) -> None:
    copy, made = moved_run
    for path in [*item_paths(copy), copy / "collection.json"]:
        text = path.read_text()
        assert str(made) not in text and str(made.parent) not in text, path
        d = json.loads(text)
        hrefs = [link["href"] for link in d["links"]]
        hrefs += [a["href"] for a in d.get("assets", {}).values()]
        assert all(not h.startswith("/") for h in hrefs), (path, hrefs)


def test_items_carry_their_collection(moved_run: tuple[Path, Path]) -> None:
    copy, _ = moved_run
    collection = pystac.Collection.from_file(str(copy / "collection.json"))
    rels = {
        link.rel: Path(link.get_absolute_href() or "")
        for link in collection.links
        if link.rel in ("self", "root")
    }
    assert rels == {"self": copy / "collection.json", "root": copy / "collection.json"}
    raw = json.loads((copy / "collection.json").read_text())
    assert {link["rel"] for link in raw["links"]} >= {"self", "root", "item"}
    linked = sorted(Path(link.get_absolute_href() or "") for link in collection.get_item_links())
    assert linked == item_paths(copy)
    for path in item_paths(copy):
        item = pystac.Item.from_file(str(path))
        assert item.collection_id == collection.id
        for rel in ("collection", "parent", "root"):
            link = item.get_single_link(rel)
            assert link is not None and link.href == "../collection.json"
            assert Path(link.get_absolute_href() or "") == copy / "collection.json"


def test_datetime_is_the_acquisition_time_when_the_input_says(
    moved_run: tuple[Path, Path],
) -> None:
    copy, _ = moved_run
    tagged, untagged = (pystac.Item.from_file(str(p)) for p in item_paths(copy))
    assert tagged.datetime == datetime(2021, 7, 14, 3, 25, 51, tzinfo=UTC)
    assert "ACQUISITION_DATETIME" in tagged.properties["gopt_geo:datetime"]
    assert tagged.properties["processing:datetime"] != ACQUIRED  # processing time kept apart
    # the other scene says nothing: processing time, flagged as such
    assert "processing time" in untagged.properties["gopt_geo:datetime"]
    assert untagged.properties["datetime"] == untagged.properties["processing:datetime"]


def test_items_and_collection_validate_offline(moved_run: tuple[Path, Path]) -> None:
    """STAC 1.1 core schemas as pystac ships them (no network)."""
    copy, _ = moved_run
    validator = JsonSchemaSTACValidator()
    for path in item_paths(copy):
        validator.validate_core(json.loads(path.read_text()), pystac.STACObjectType.ITEM, "1.1.0")
    d = json.loads((copy / "collection.json").read_text())
    validator.validate_core(d, pystac.STACObjectType.COLLECTION, "1.1.0")


def test_moved_folder_loads_with_odc_stac(moved_run: tuple[Path, Path]) -> None:
    odc_stac = pytest.importorskip("odc.stac")
    copy, _ = moved_run
    for path in item_paths(copy):
        item = pystac.Item.from_file(str(path))
        data = odc_stac.load([item], bands=["class_map"], chunks=None)
        class_map = path.with_name(path.name.replace("_item.json", "_classes.tif"))
        with rasterio.open(class_map) as src:
            expected = src.read(1)
        loaded = data["class_map"].isel(time=0).values
        np.testing.assert_array_equal(loaded, expected)


def test_acquisition_tags_and_hrefs() -> None:
    assert parse_datetime("2020:05:01 10:20:30") == datetime(2020, 5, 1, 10, 20, 30, tzinfo=UTC)
    assert parse_datetime("2020-05-01") == datetime(2020, 5, 1, tzinfo=UTC)
    assert parse_datetime("yesterday") is None
    found = acquisition_time(
        {"IMAGERY": {"ACQUISITIONDATETIME": "2019-01-02T03:04:05+01:00"}, "": {}}
    )
    assert found == (datetime(2019, 1, 2, 2, 4, 5, tzinfo=UTC), "IMAGERY:ACQUISITIONDATETIME")
    assert acquisition_time({"": {"TIFFTAG_DATETIME": "nonsense"}}) is None
    # URLs as they are, without a signature; local files relative to the item
    signed = "https://example.org/a/b.tif?sig=SECRET&se=2030"
    assert portable_href(signed, Path("/x")) == "https://example.org/a/b.tif"
    assert portable_href("/data/in/a.tif", Path("/data/out/s1")) == "../../in/a.tif"


def test_mosaic_vrt_is_styled_and_named(moved_run: tuple[Path, Path]) -> None:
    """Each mosaic has its .qml; its colour table has no opaque filler; categories named."""
    from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES as CLASSES

    copy, _ = moved_run
    (vrt,) = copy.glob("mosaic_*.vrt")
    qml = ET.parse(vrt.with_suffix(".qml")).getroot()
    labels = [(int(e.get("value", -1)), e.get("label")) for e in qml.iter("paletteEntry")]
    assert labels == [(c.code, c.name) for c in CLASSES.classes]
    codes = {c.code for c in CLASSES.classes}
    with rasterio.open(vrt) as src:  # the copy still opens: sources relative to the VRT
        cmap = src.colormap(1)
        assert (src.read(1) != src.nodata).any()
    assert len(cmap) == max(codes) + 1
    assert all(rgba[3] == 0 for code, rgba in cmap.items() if code not in codes)
    names = [e.text or "" for e in ET.parse(vrt).getroot().iter("Category")]
    assert [names[c.code] for c in CLASSES.classes] == CLASSES.names
