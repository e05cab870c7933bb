"""Many scenes, one command: a Dask cluster, failures, resume, remote and STAC
inputs, the run's index and mosaic.

One module-wide run on a real 2-process LocalCluster (worker start-up is the expensive
part) serves the equality, failure and index tests; the rest run in this process
(``--workers 0``) or call the library.
"""

from __future__ import annotations

import datetime
import functools
import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
from conftest import (
    ADAPTER_ROUTING,
    QUICK_PREDICT,
    RangeHandler,
    make_adapter,
    predict_args,
    read_raster,
    serve,
)
from rasterio.windows import from_bounds
from shapely.geometry import box
from typer.testing import CliRunner

from gopt_geo.cli import app
from gopt_geo.data.synthetic import SceneFiles, make_scenes, scene_files
from gopt_geo.errors import InputError
from gopt_geo.inference import runner as scene_runner
from gopt_geo.inference.cluster import plan_workers
from gopt_geo.inference.options import PredictOptions
from gopt_geo.inference.runner import SceneOutcome, SceneTask
from gopt_geo.inference.sources import Scene

pytestmark = pytest.mark.filterwarnings("ignore::gopt_geo.models.RandomBackboneWarning")

runner = CliRunner()
GOOD = ("scene_000", "scene_001", "scene_002")
#: Per-scene options of every run here: one 64-pixel window per scene, GeoJSON polygons.
FLAGS = [*QUICK_PREDICT, "--vector", "geojson"]
#: Class-map tags that may differ between two runs of the same scene (none today).
RUN_SPECIFIC_TAGS = {"TIFFTAG_DATETIME"}


@pytest.fixture(scope="module")
def many_scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three good 64x64 scenes, a corrupt one (with its SAR) and one without SAR."""
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, len(GOOD), size=64, seed=4)
    (root / "optical" / "scene_bad.tif").write_bytes(b"II*\x00 this is not a GeoTIFF")
    shutil.copy(root / "sar" / "scene_000.tif", root / "sar" / "scene_bad.tif")
    shutil.copy(root / "optical" / "scene_000.tif", root / "optical" / "scene_lonely.tif")
    return root


def predict_cli(scene: SceneFiles | str, adapter: Path, out: Path, *extra: str) -> Path:
    """``gopt-geo predict`` with ``FLAGS``; returns the class map."""
    res = runner.invoke(app, predict_args(scene, adapter, out, *FLAGS, *extra))
    assert res.exit_code == 0, res.output
    return next(out.glob("*_classes.tif"))


@pytest.fixture(scope="module")
def cluster_run(many_scenes: Path, adapter: Path, tmp_path_factory: pytest.TempPathFactory):
    """``predict-many`` on a 2-worker x 1-thread LocalCluster (processes), and the same
    scenes through three sequential ``predict`` calls."""
    out = tmp_path_factory.mktemp("run")
    res = runner.invoke(
        app,
        [
            "predict-many",
            "--optical-dir",
            str(many_scenes / "optical"),
            "--sar-dir",
            str(many_scenes / "sar"),
            "--model",
            str(adapter),
            "-o",
            str(out),
            "--workers",
            "2",
            "--threads-per-worker",
            "1",
            *FLAGS,
        ],
    )
    sequential = tmp_path_factory.mktemp("sequential")
    for name in GOOD:
        predict_cli(scene_files(many_scenes, name), adapter, sequential / name)
    return res, out, sequential


def _tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k not in RUN_SPECIFIC_TAGS}


@pytest.mark.slow
def test_cluster_run_equals_sequential_predicts(cluster_run) -> None:
    res, out, sequential = cluster_run
    assert "Dask LocalCluster: 2 worker(s) x 1 torch thread(s)" in res.output
    for name in GOOD:
        a = read_raster(out / name / f"{name}_classes.tif")
        b = read_raster(sequential / name / f"{name}_classes.tif")
        np.testing.assert_array_equal(a.data, b.data)
        assert a.profile == b.profile and _tags(a.tags) == _tags(b.tags)
        assert a.band_tags == b.band_tags
        assert len(np.unique(a.data)) > 1  # a real map, not a constant
    run = json.loads((out / "run.json").read_text())
    done = [s for s in run["scenes"] if s["status"] == "done"]
    assert {s["id"] for s in done} == set(GOOD)
    # each worker process loaded the model once and reused it for its next scenes
    workers = {s["worker"] for s in done}
    assert 1 <= len(workers) <= 2 and run["model_loads"] == len(workers)
    assert all(s["threads"] == 1 for s in done)  # set explicitly in each worker
    assert run["scenes_per_hour"] > 0 and run["counts"]["done"] == 3


@pytest.mark.slow
def test_a_corrupt_scene_fails_alone(cluster_run, many_scenes: Path) -> None:
    res, out, _ = cluster_run
    assert res.exit_code == 1  # some scenes failed
    run = json.loads((out / "run.json").read_text())
    by_id = {s["id"]: s for s in run["scenes"]}
    bad = by_id["scene_bad"]
    assert bad["status"] == "failed" and bad["attempts"] == 1  # a bad file is not retried
    bad_file = many_scenes / "optical" / "scene_bad.tif"
    assert bad["reason"].startswith(f"{bad_file}: not a readable")
    lonely = by_id["scene_lonely"]
    assert lonely["status"] == "failed" and "no SAR raster named scene_lonely.*" in lonely["reason"]
    assert run["counts"] == {"done": 3, "skipped": 0, "failed": 2, "not run": 0, "total": 5}
    markdown = (out / "run.md").read_text()
    assert "| scene_bad | failed |" in markdown and "not a readable raster" in markdown
    assert "failed scene_bad:" in res.output and "Traceback" not in res.output
    assert not (out / "scene_bad").exists() or not any((out / "scene_bad").iterdir())


@pytest.mark.slow
def test_index_and_mosaic_cover_the_run(cluster_run) -> None:
    _, out, _ = cluster_run
    index = gpd.read_parquet(out / "index.parquet")
    assert len(index) == 5 and index.crs == "EPSG:32649"  # the scenes' own CRS
    assert set(index.columns) >= {"id", "status", "class_map", "report", "area_ha_farmland"}
    rows = index.set_index("id")
    assert rows.loc["scene_bad", "geometry"] is None  # unreadable: no footprint
    with rasterio.open(out / next(out.glob("mosaic_*.vrt")).name) as mosaic:
        assert mosaic.crs == "EPSG:32649" and mosaic.colormap(1)[10][:3] != (0, 0, 0)
        for name in GOOD:
            with rasterio.open(out / name / f"{name}_classes.tif") as src:
                assert rows.loc[name, "geometry"].equals(box(*src.bounds))  # the footprint
                assert rows.loc[name, "area_ha_farmland"] >= 0
                window = from_bounds(*src.bounds, transform=mosaic.transform)
                np.testing.assert_array_equal(mosaic.read(1, window=window), src.read(1))


def _run_many(args: list[str]) -> dict:
    res = runner.invoke(app, ["predict-many", *args, "--workers", "0", *FLAGS])
    assert res.exit_code == 0, res.output
    assert "in this process (--workers 0, no cluster)" in res.output
    return json.loads((Path(args[args.index("-o") + 1]) / "run.json").read_text())


def _stamps(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.stat().st_mtime_ns, p.stat().st_ino) for p in folder.rglob("*") if p.is_file()
    }


def test_resume_skips_finished_scenes_and_remaps_for_another_adapter(
    many_scenes: Path, adapter: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "scenes.csv"
    root = many_scenes
    manifest.write_text(
        "id,optical,sar\n"
        + "".join(f"{n},{root}/optical/{n}.tif,{root}/sar/{n}.tif\n" for n in GOOD[:2])
    )
    out = tmp_path / "run"
    args = [str(manifest), "--model", str(adapter), "-o", str(out)]
    first = _run_many(args)
    assert first["counts"]["done"] == 2
    folders = [out / n for n in GOOD[:2]]
    before = {f: _stamps(f) for f in folders}

    again = _run_many(args)
    assert again["counts"] == {"done": 0, "skipped": 2, "failed": 0, "not run": 0, "total": 2}
    assert again["model_loads"] == 0  # nothing was recomputed, not even loaded
    assert all(_stamps(f) == before[f] for f in folders)  # files untouched

    shutil.rmtree(folders[1])  # as if the run had been interrupted before this scene
    resumed = _run_many(args)
    assert [s["status"] for s in resumed["scenes"]] == ["skipped", "done"]
    assert _stamps(folders[0]) == before[folders[0]]

    # prompters and head differ between seeds: another adapter
    other = make_adapter(tmp_path / "other.safetensors", routing=ADAPTER_ROUTING, seed=1)
    changed = _run_many([str(manifest), "--model", str(other), "-o", str(out)])
    assert changed["counts"]["done"] == 2  # another adapter: mapped again
    with rasterio.open(folders[0] / f"{GOOD[0]}_classes.tif") as src:
        assert src.tags()["GOPT_GEO_ADAPTER_SHA256"] == changed["adapter_sha256"]
    option = _run_many([*args[:1], "--model", str(other), "-o", str(out), "--probabilities"])
    assert option["counts"]["done"] == 2  # another output option: mapped again
    assert (folders[0] / f"{GOOD[0]}_probabilities.tif").exists()


@pytest.fixture
def server(many_scenes: Path) -> Iterator[str]:
    with serve(many_scenes) as url:
        yield url


def test_a_scene_over_http_equals_the_local_file(
    server: str, many_scenes: Path, adapter: Path, tmp_path: Path
) -> None:
    local = predict_cli(scene_files(many_scenes, "scene_001"), adapter, tmp_path / "local")
    before = RangeHandler.range_requests
    remote = predict_cli(
        f"/vsicurl/{server}/optical/scene_001.tif",
        adapter,
        tmp_path / "remote",
        "--sar",
        f"{server}/sar/scene_001.tif",  # a plain URL goes through /vsicurl/ as well
    )
    assert RangeHandler.range_requests > before  # read by byte ranges
    assert remote.name == local.name == "scene_001_classes.tif"
    from_local, from_remote = read_raster(local), read_raster(remote)
    np.testing.assert_array_equal(from_remote.data, from_local.data)
    assert from_remote.profile == from_local.profile
    report = json.loads((tmp_path / "remote" / "scene_001_report.json").read_text())
    assert report["inputs"]["scene"] == f"/vsicurl/{server}/optical/scene_001.tif"
    missing = runner.invoke(
        app,
        predict_args(
            f"{server}/optical/nope.tif",
            adapter,
            tmp_path / "x",
            "--sar",
            f"{server}/sar/scene_001.tif",
        ),
    )
    assert missing.exit_code == 2 and f"{server}/optical/nope.tif: cannot open (" in missing.output
    assert "file not found" not in missing.output and "Traceback" not in missing.output


def _split_bands(scene: str, root: Path, adapter_dir: str) -> dict[str, dict]:
    """One single-band file per band; optical stored as 2x + 10 with a STAC scale/offset
    that undoes it, SAR as it was; returns the STAC assets."""
    assets = {}
    for role, keys in (("optical", ("blue", "green", "red", "nir")), ("sar", ("vv", "vh"))):
        with rasterio.open(root / role / f"{scene}.tif") as src:
            profile = src.profile | {"count": 1}
            for i, key in enumerate(keys, start=1):
                band = src.read(i)
                raster = {"nodata": src.nodata}
                if role == "optical":
                    stored = np.where(band != src.nodata, 2 * band + 10, src.nodata)
                    band = stored.astype(band.dtype)
                    raster.update(scale=0.5, offset=-5.0)
                path = Path(adapter_dir) / f"{scene}_{key}.tif"
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(band, 1)
                    dst.nodata = None  # nodata comes from the STAC item alone
                assets[key] = pystac.Asset(path.name, extra_fields={"raster:bands": [raster]})
    return assets


def test_a_stac_collection_of_single_bands_equals_the_stacked_geotiff(
    many_scenes: Path, adapter: Path, tmp_path: Path
) -> None:
    name = "scene_002"
    (tmp_path / "assets").mkdir()
    item = pystac.Item(
        "S2X_T49_scene_002",
        {"type": "Point", "coordinates": [112.0, 30.5]},
        [112.0, 30.5, 112.0, 30.5],
        datetime.datetime(2024, 5, 1, tzinfo=datetime.UTC),
        {},
    )
    for key, asset in _split_bands(name, many_scenes, str(tmp_path / "assets")).items():
        item.add_asset(key, asset)  # relative hrefs: beside the collection document
    collection = tmp_path / "assets" / "items.json"
    collection.write_text(json.dumps(pystac.ItemCollection([item]).to_dict()))

    stacked = predict_cli(scene_files(many_scenes, name), adapter, tmp_path / "stacked")
    from_stac = predict_cli(str(collection), adapter, tmp_path / "stac")
    assert from_stac.name == "S2X_T49_scene_002_classes.tif"
    stac, tif = read_raster(from_stac), read_raster(stacked)
    np.testing.assert_array_equal(stac.data, tif.data)
    assert stac.profile == tif.profile
    report = json.loads((tmp_path / "stac" / "S2X_T49_scene_002_report.json").read_text())
    label = "STAC item S2X_T49_scene_002 (optical: blue, green, red, nir)"
    assert report["inputs"]["scene"] == label
    # the same collection through predict-many, read from a URL: its relative asset
    # hrefs are then URLs too, read by byte ranges; one scene, named by the item id
    with serve(tmp_path / "assets") as url:
        args = [f"{url}/items.json", "--model", str(adapter), "-o", str(tmp_path / "run")]
        run = _run_many(args)
    assert run["counts"]["done"] == 1
    assert run["scenes"][0]["origin"] == f"{url}/items.json"
    many = read_raster(tmp_path / "run" / item.id / f"{item.id}_classes.tif")
    np.testing.assert_array_equal(many.data, tif.data)


def _record(outcomes: dict[str, SceneOutcome], outcome: SceneOutcome) -> None:
    outcomes[outcome.id] = outcome


def test_only_transient_failures_are_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, int] = {}
    plans = {
        "flaky": ["CURL error: Connection reset by peer", "HTTP response code: 503", None],
        "broken": ["a.tif: not a readable raster (not a TIFF)", None],
        "down": ["HTTP response code: 502"] * 5,
    }

    def fake(task: SceneTask) -> SceneOutcome:
        n = calls[task.scene.id] = calls.get(task.scene.id, 0) + 1
        reason = plans[task.scene.id][n - 1]
        if reason is None:
            return SceneOutcome(task.scene.id, "done")
        err = InputError(f"{task.scene.id}: cannot read pixels ({reason})")
        return SceneOutcome(
            task.scene.id, "failed", reason=str(err), transient=scene_runner.is_transient(err)
        )

    monkeypatch.setattr(scene_runner, "map_scene", fake)
    tasks = [SceneTask(Scene(n, f"{n}.tif"), "a", "sha", ".", PredictOptions()) for n in plans]
    for executor in (None, ThreadPoolExecutor(2)):
        calls.clear()
        outcomes: dict[str, SceneOutcome] = {}
        scene_runner.run_tasks(tasks, executor, 2, functools.partial(_record, outcomes))
        assert (outcomes["flaky"].status, outcomes["flaky"].attempts) == ("done", 3)
        assert (outcomes["broken"].status, outcomes["broken"].attempts) == ("failed", 1)
        assert (outcomes["down"].status, outcomes["down"].attempts) == ("failed", 3)
        if executor is not None:
            executor.shutdown()


def test_workers_are_sized_to_the_machine() -> None:
    assert plan_workers(None, None, cores=16, gpus=0) == (4, 4)
    assert plan_workers(None, None, cores=2, gpus=0) == (1, 2)
    assert plan_workers(2, None, cores=8, gpus=0) == (2, 4)
    assert plan_workers(None, 1, cores=8, gpus=0) == (8, 1)
    assert plan_workers(None, None, cores=32, gpus=4) == (4, 8)  # one worker per GPU
    with pytest.raises(InputError, match=r"--workers must be at least 1, got -1"):
        plan_workers(-1, None, cores=4, gpus=0)


def test_predict_many_bad_input_messages(adapter: Path, many_scenes: Path, tmp_path: Path) -> None:
    scenes = many_scenes
    help_text = runner.invoke(app, ["predict-many", "--help"], env={"COLUMNS": "200"}).output
    text = " ".join(help_text.replace("│", " ").split())
    for option in ("--scheduler", "--workers", "--threads-per-worker", "--resume", "--retries"):
        assert option in text
    base = ["predict-many", "--model", str(adapter), "-o", str(tmp_path / "o"), "--workers", "0"]
    cases = [
        ([], "no scenes given"),
        ([str(tmp_path / "none.csv")], "none.csv: file not found"),
        (["--optical-dir", str(tmp_path / "nowhere")], "nowhere: optical folder not found"),
        (["--optical-dir", str(scenes / "optical"), "--assets", "B"], "--assets 'B': expected"),
        (["--optical-dir", str(scenes / "optical"), "--retries", "-1"], "--retries must be 0"),
        (["--optical-dir", str(scenes / "optical"), "--window", "8"], "window must be at least"),
    ]
    for extra, message in cases:
        res = runner.invoke(app, [*base, *extra])
        assert res.exit_code == 2 and message in res.output, (extra, res.output)
        assert "Traceback" not in res.output


@pytest.mark.slow
def test_the_run_collection_links_every_mapped_scene(cluster_run) -> None:
    import pystac

    _, out, _ = cluster_run
    collection = pystac.Collection.from_file(str(out / "collection.json"))
    ids = {item.id for item in collection.get_items()}
    assert ids == set(GOOD)
