"""Scene sources: remote paths, STAC items stacked by a VRT, folders, manifests.

No model here: these tests check what GDAL reads through the sources, value by value.
"""

from __future__ import annotations

import datetime
import json
import re
import socket
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from conftest import write_raster
from rasterio.transform import from_origin

from gopt_geo.data.bands import BandRouting
from gopt_geo.errors import InputError
from gopt_geo.inference.many import is_transient
from gopt_geo.inference.sources import (
    collect_scenes,
    match_assets,
    parse_asset_map,
    read_stac,
    scenes_from_dirs,
    scenes_from_manifest,
    single_scene,
    stac_scene,
)
from gopt_geo.io import (
    display_name,
    gdal_path,
    is_remote,
    open_raster,
    raster_stem,
)

ROUTING = BandRouting(("B", "G", "R", "NIR"), ("VV", "VH"))
T = from_origin(500_000, 3_400_000, 10, 10)


def test_remote_names_go_to_gdal_and_local_paths_keep_their_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a refused connection is retried with backoff by default (io.HTTP_DEFAULTS): once here
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    assert gdal_path("https://h.org/a.tif") == "/vsicurl/https://h.org/a.tif"
    assert gdal_path("s3://bucket/k/a.tif") == "/vsis3/bucket/k/a.tif"
    assert gdal_path("/vsicurl/http://h/a.tif") == "/vsicurl/http://h/a.tif"
    assert gdal_path("file:///data/a.tif") == Path("/data/a.tif")
    assert gdal_path("data/a.tif") == Path("data/a.tif")
    assert is_remote("<VRTDataset/>") and is_remote("/vsimem/x.vrt") and not is_remote("a.tif")
    assert not is_remote(Path("https://h/a.tif"))  # a Path cannot hold a URL
    assert raster_stem("https://h.org/dir/T49_B04.tif?sig=abc&se=2") == "T49_B04"
    with pytest.raises(InputError, match=r"nope\.tif: file not found"):
        open_raster(tmp_path / "nope.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(InputError, match=r"bad\.tif: not a readable raster"):
        open_raster(bad)
    # a remote failure names the URL as given, with GDAL's reason, not "file not found"
    with socket.socket() as sock:  # a port on this machine that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/a.tif"
    with pytest.raises(InputError, match=rf"^{re.escape(url)}: cannot open \(.*") as err:
        open_raster(url)
    assert "file not found" not in str(err.value)
    assert is_transient(err.value)  # worth another try in predict-many
    assert not is_transient(InputError("a.tif: not a readable raster (not a TIFF)"))


def test_asset_map_option() -> None:
    assert parse_asset_map("B=blue, NIR=B08,R=visual:1") == {
        "B": ("blue", 1),
        "NIR": ("B08", 1),
        "R": ("visual", 1),
    }
    assert parse_asset_map(None) == {}
    with pytest.raises(InputError, match=r"--assets 'B': expected BAND=ASSET_KEY"):
        parse_asset_map("B")
    with pytest.raises(InputError, match=r"--assets 'B=x:y': the band after ':' must be a num"):
        parse_asset_map("B=x:y")


def _item(assets: dict[str, dict], item_id: str = "S2A_T49_20240101") -> pystac.Item:
    item = pystac.Item(
        item_id,
        {"type": "Point", "coordinates": [0, 0]},
        [0, 0, 0, 0],
        datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
        {},
    )
    for key, fields in assets.items():
        href = fields.pop("href", f"/data/{key}.tif")
        item.add_asset(key, pystac.Asset(href, extra_fields=fields))
    return item


def test_band_names_are_matched_to_the_usual_asset_keys() -> None:
    earth_search = _item({k: {} for k in ("blue", "green", "red", "nir", "visual", "scl")})
    found, missing = match_assets(earth_search, ("B", "G", "R", "NIR"))
    assert not missing and [found[b][0] for b in ("B", "G", "R", "NIR")] == [
        "blue",
        "green",
        "red",
        "nir",
    ]
    planetary = _item({k: {} for k in ("B02", "B03", "B04", "B08", "visual")})
    found, _ = match_assets(planetary, ("B", "G", "R", "NIR"))
    assert [found[b][0] for b in ("B", "G", "R", "NIR")] == ["B02", "B03", "B04", "B08"]
    by_common_name = _item({"band_2": {"eo:bands": [{"name": "b2", "common_name": "blue"}]}})
    assert match_assets(by_common_name, ("B",))[0] == {"B": ("band_2", 1)}
    s1 = _item({"vv": {}, "vh": {}})
    assert match_assets(s1, ("VV", "VH"))[0] == {"VV": ("vv", 1), "VH": ("vh", 1)}
    # --assets wins; a key the item lacks is named
    assert match_assets(planetary, ("NIR",), {"NIR": ("B04", 1)})[0] == {"NIR": ("B04", 1)}
    with pytest.raises(InputError, match=r"--assets NIR=B8A: item S2A_T49_20240101 has no asset"):
        match_assets(planetary, ("NIR",), {"NIR": ("B8A", 1)})
    scene = stac_scene(_item({"blue": {}, "green": {}}), ROUTING)
    assert scene.problem is not None
    assert "has no asset for band(s) R, NIR" in scene.problem and "--assets" in scene.problem


def _bands(tmp_path: Path, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Path]]:
    """Four single-band uint16 files stored as 2x + 10 (nodata 0 kept), and x itself."""
    x = rng.integers(200, 4000, (4, 20, 24)).astype(np.uint16)
    x[:, :2, :] = 0  # nodata rows
    stored = np.where(x > 0, 2 * x + 10, 0).astype(np.uint16)
    files = {}
    for key, band in zip(("blue", "green", "red", "nir"), stored, strict=True):
        files[key] = write_raster(tmp_path / f"{key}.tif", band, transform=T)  # no nodata tag
    return x, files


def test_stac_assets_are_stacked_with_scale_offset_and_nodata(tmp_path: Path) -> None:
    x, files = _bands(tmp_path, np.random.default_rng(0))
    raster = {"raster:bands": [{"nodata": 0, "scale": 0.5, "offset": -5.0}]}
    assets = {k: {"href": str(p), **json.loads(json.dumps(raster))} for k, p in files.items()}
    assets["nir"]["href"] = "nir.tif"  # relative: resolved against the item's document
    item = _item(assets)
    item.set_self_href(str(tmp_path / "item.json"))
    scene = stac_scene(item, ROUTING)
    assert scene.problem is None and scene.sar is None  # no SAR assets: from elsewhere
    assert scene.id == "S2A_T49_20240101"
    assert (
        display_name(scene.optical) == "STAC item S2A_T49_20240101 (optical: blue, green, red, nir)"
    )
    assert raster_stem(scene.optical) == "S2A_T49_20240101"
    with open_raster(scene.optical) as src:
        assert src.count == 4 and src.descriptions == ("B", "G", "R", "NIR")
        assert src.transform == T and src.crs == "EPSG:32649"
        values = src.read()
        mask = src.dataset_mask()
    valid = x[0] > 0
    np.testing.assert_array_equal(values[:, valid], x[:, valid].astype(np.float32))
    assert np.isnan(values[:, ~valid]).all() and not mask[~valid].any() and mask[valid].all()

    # an adapter trained on values v with physical = (v - 1000) * 1e-4: the STAC scale
    # turns stored values into physical ones, the VRT then into the adapter's convention
    routing = BandRouting(
        ("B", "G", "R", "NIR"), (), optical_scale=(1e-4,), optical_offset=(-1000.0,)
    )
    with open_raster(stac_scene(item, routing).optical) as src:
        fed = src.read()
    physical = x.astype(np.float64) * 1.0  # 0.5 * (2x + 10) - 5
    np.testing.assert_allclose(fed[:, valid], physical[:, valid] / 1e-4 + 1000.0, rtol=1e-6)
    assert routing.to_physical is not None  # (the adapter then applies its scale once)


def test_stac_grid_from_the_projection_extension_needs_no_request(tmp_path: Path) -> None:
    """With proj:* and nodata in the item, the assets are not even opened: a missing file
    shows up only when pixels are read."""
    proj = {"proj:epsg": 32649, "proj:shape": [20, 24], "proj:transform": list(T)[:6]}
    assets = {
        k: {"href": str(tmp_path / f"{k}.tif"), "raster:bands": [{"nodata": 0}], **proj}
        for k in ("blue", "green", "red", "nir", "swir16")
    }
    assets["swir16"].update({"proj:shape": [10, 12], "proj:transform": [20, 0, T.c, 0, -20, T.f]})
    routing = BandRouting(("B", "G", "R", "NIR", "SWIR16"), ())
    scene = stac_scene(_item(assets), routing)  # the files do not exist
    assert scene.problem is None
    with rasterio.open(scene.optical) as src:  # the coarser band is resampled onto 10 m
        assert (src.width, src.height, src.count) == (24, 20, 5)


def test_stac_documents_items_and_collections(tmp_path: Path) -> None:
    x, files = _bands(tmp_path, np.random.default_rng(1))
    sar = write_raster(tmp_path / "vv.tif", np.ones((20, 24), np.float32), transform=T)
    items = []
    for i in range(2):
        assets = {k: {"href": str(p)} for k, p in files.items()}
        assets.update({"vv": {"href": str(sar)}, "vh": {"href": str(sar)}})
        items.append(_item(assets, f"S2_{i}"))
    collection = tmp_path / "items.json"
    collection.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    single = tmp_path / "one.json"
    single.write_text(json.dumps(items[0].to_dict()))
    assert [i.id for i in read_stac(collection)] == ["S2_0", "S2_1"]
    scene = single_scene(str(single), None, ROUTING)  # SAR from the same item
    assert scene.id == "S2_0" and scene.sar is not None
    with open_raster(scene.sar) as src:
        assert src.descriptions == ("VV", "VH")
    with pytest.raises(
        InputError, match=r"items\.json: holds 2 STAC items; map them with predict-many"
    ):
        single_scene(str(collection), None, ROUTING)
    scenes = collect_scenes([str(collection)], ROUTING)
    assert [s.id for s in scenes] == ["S2_0", "S2_1"] and all(s.problem is None for s in scenes)
    with pytest.raises(InputError, match=r"scene id S2_0 is given twice"):
        collect_scenes([str(collection), str(single)], ROUTING)
    not_stac = tmp_path / "catalog.json"
    not_stac.write_text(json.dumps({"type": "Catalog", "id": "c"}))
    with pytest.raises(InputError, match=r"catalog\.json: not a STAC Item or ItemCollection"):
        read_stac(not_stac)
    with pytest.raises(InputError, match=r"missing\.json: file not found"):
        read_stac(tmp_path / "missing.json")


def test_folders_pair_by_stem_and_report_a_missing_sar(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        write_raster(tmp_path / "opt" / f"{name}.tif", np.ones((4, 8, 8), np.uint16))
    for name in ("a", "c"):
        write_raster(tmp_path / "sar" / f"{name}.tif", np.ones((2, 8, 8), np.float32))
    (tmp_path / "opt" / "a.tif.aux.xml").write_text("<PAMDataset/>")  # not a scene
    scenes = scenes_from_dirs(tmp_path / "opt", tmp_path / "sar")
    assert [s.id for s in scenes] == ["a", "b", "c"]
    assert scenes[0].sar is not None and Path(scenes[0].sar).is_absolute()
    assert scenes[1].sar is None
    assert (
        scenes[1].problem
        == f"{tmp_path / 'opt' / 'b.tif'}: no SAR raster named b.* in {tmp_path / 'sar'}"
    )
    with pytest.raises(InputError, match=r"nowhere: optical folder not found"):
        scenes_from_dirs(tmp_path / "nowhere", None)


def test_manifests_csv_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    csv_file = tmp_path / "m" / "scenes.csv"
    csv_file.write_text(
        "id,optical,sar\nfirst,opt/a.tif,sar/a.tif\n,https://h.org/x/b.tif?sig=1,\n"
    )
    scenes = collect_scenes([str(csv_file)], ROUTING, sar_dir=None)
    assert scenes[0].id == "first" and scenes[0].optical == str(tmp_path / "m" / "opt" / "a.tif")
    assert scenes[0].sar == str(tmp_path / "m" / "sar" / "a.tif")
    assert scenes[1].id == "b" and scenes[1].optical == "https://h.org/x/b.tif?sig=1"
    assert scenes[1].problem is not None and "no SAR input for this scene" in scenes[1].problem
    yaml_file = tmp_path / "m" / "scenes.yaml"
    yaml_file.write_text("scenes:\n  - {id: one, optical: /abs/a.tif, sar: /abs/s.tif}\n")
    assert scenes_from_manifest(yaml_file, ROUTING)[0].optical == "/abs/a.tif"
    yaml_file.write_text("- {id: one}\n")
    with pytest.raises(InputError, match=r"scenes\.yaml: scene 1 has no 'optical' entry"):
        scenes_from_manifest(yaml_file, ROUTING)
    yaml_file.write_text("just text\n")
    with pytest.raises(InputError, match=r"scenes\.yaml: expected a list of scenes"):
        scenes_from_manifest(yaml_file, ROUTING)
