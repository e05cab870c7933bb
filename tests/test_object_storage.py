"""Outputs in object storage: ``predict`` and ``predict-many -o s3://bucket/prefix/``.

A local S3-compatible server (moto's server mode on 127.0.0.1, started and stopped by a
fixture) stands in for the store; the client finds it through ``AWS_ENDPOINT_URL``, as a
user's run would find MinIO or Ceph. Each test writes under its own prefix.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import make_adapter, predict_args
from typer.testing import CliRunner

from gopt_geo.cli import app
from gopt_geo.data.synthetic import SceneFiles, make_scenes, scene_files
from gopt_geo.errors import InputError
from gopt_geo.inference import runner as scene_runner
from gopt_geo.inference.many import predict_many
from gopt_geo.inference.options import PredictOptions
from gopt_geo.inference.predictor import predict_scene
from gopt_geo.inference.runner import SceneTask
from gopt_geo.inference.sources import Scene
from gopt_geo.outputs import remote

pytestmark = pytest.mark.filterwarnings("ignore::gopt_geo.models.RandomBackboneWarning")

BUCKET = "gopt-test-bucket"
QUICK = PredictOptions(window=64, progress=False, vector="geojson")
cli = CliRunner()


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with one bucket; the environment points at it."""
    pytest.importorskip("moto")
    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = pytest.MonkeyPatch()
    env.setenv("AWS_ACCESS_KEY_ID", "testing")
    env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    env.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    s3fs.S3FileSystem.clear_instance_cache()  # no client of another server
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    try:
        yield f"http://{host}:{port}"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        env.undo()
        server.stop()


@pytest.fixture
def prefix(s3: str) -> str:
    """A fresh ``s3://`` folder URL for one test."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/"


@pytest.fixture(scope="module")
def small_scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 2, size=64, seed=5)
    return root


def names(url: str) -> set[str]:
    return remote.list_names(url)


def remote_pixels(url: str) -> np.ndarray:
    with remote.open_raster(url) as src:
        return src.read(1)


# ---------------------------------------------------------------------------- the module


def test_url_folders_are_told_from_paths() -> None:
    assert remote.is_url_folder("s3://bucket/prefix/")
    assert remote.is_url_folder("gs://b/p")
    assert not remote.is_url_folder("out/run")
    assert not remote.is_url_folder(Path("s3://bucket/x"))  # a Path folds the //
    assert not remote.is_url_folder("file:///tmp/x")
    assert remote.local_folder("file:///tmp/x") == Path("/tmp/x")
    assert remote.join("s3://b/p/", "a", "x.tif") == "s3://b/p/a/x.tif"
    assert remote.relative("s3://b/p/a/x.tif", "s3://b/p/") == "a/x.tif"


def test_upload_order_puts_the_report_json_last() -> None:
    order = remote.upload_order(
        ["s_report.json", "s_report.md", "s_item.json", "s_classes.tif", "s_classes.qml"]
    )
    assert order[-3:] == ["s_item.json", "s_report.md", "s_report.json"]
    assert set(order[:2]) == {"s_classes.tif", "s_classes.qml"}


def test_staged_locally_uploads_on_success_only(prefix: str) -> None:
    with remote.staged_locally(prefix) as local:
        (local / "sub").mkdir()
        (local / "sub" / "a_report.json").write_text("{}")
        (local / "sub" / "a_classes.tif").write_bytes(b"x")
        (local / ".a.partial-0000.tif").write_bytes(b"temporary")
    assert not local.exists()  # the local stage is gone
    assert names(remote.join(prefix, "sub")) == {"a_report.json", "a_classes.tif"}
    assert ".a.partial-0000.tif" not in names(prefix)

    with pytest.raises(RuntimeError, match="boom"):
        with remote.staged_locally(remote.join(prefix, "failed")) as local:
            (local / "b_report.json").write_text("{}")
            raise RuntimeError("boom")
    assert names(remote.join(prefix, "failed")) == set()


def test_existing_remote_files_are_refused_or_replaced(prefix: str) -> None:
    with remote.staged_locally(prefix) as local:
        (local / "a_report.json").write_text('{"old": true}')
        (local / "a_landcover.geojson").write_text("{}")
    with pytest.raises(InputError, match=r"a_report\.json: output already exists"):
        with remote.staged_locally(prefix) as local:
            (local / "a_report.json").write_text('{"new": true}')
    assert remote.read_json(remote.join(prefix, "a_report.json")) == {"old": True}
    # overwrite: the new set replaces the old one whole (a file it no longer has goes)
    with remote.staged_locally(
        prefix, overwrite=True, replace=["a_report.json", "a_landcover.geojson"]
    ) as local:
        (local / "a_report.json").write_text('{"new": true}')
    assert remote.read_json(remote.join(prefix, "a_report.json")) == {"new": True}
    assert names(prefix) == {"a_report.json"}


def test_a_missing_bucket_is_one_line(s3: str) -> None:
    with pytest.raises(InputError, match=r"s3://no-such-bucket-x/p/: cannot write"):
        remote.check_url_folder("s3://no-such-bucket-x/p/")


# ---------------------------------------------------------------------------- predict


def test_predict_uploads_the_set_as_a_local_run_writes_it(
    prefix: str, scene: SceneFiles, adapter: Path, tmp_path: Path
) -> None:
    local = predict_scene(scene.optical, scene.sar, adapter, tmp_path / "here", QUICK)
    result = predict_scene(scene.optical, scene.sar, adapter, prefix, QUICK)
    assert result.class_map == remote.join(prefix, "tile_classes.tif")
    assert result.report_json == remote.join(prefix, "tile_report.json")
    assert names(prefix) == {p.name for p in (tmp_path / "here").iterdir()}
    np.testing.assert_array_equal(
        remote_pixels(str(result.class_map)), rasterio.open(local.class_map).read(1)
    )
    item = remote.read_json(remote.join(prefix, "tile_item.json"))
    assert item is not None
    assert item["assets"]["class_map"]["href"] == "./tile_classes.tif"  # valid after upload

    # a second run is refused before any work, naming the file, as in a folder
    with pytest.raises(InputError, match=r"tile_classes\.tif: output already exists"):
        predict_scene(scene.optical, scene.sar, adapter, prefix, QUICK)
    # overwrite replaces the set whole: no vector now, so the old GeoJSON goes
    again = PredictOptions(window=64, progress=False, vector=None, overwrite=True)
    predict_scene(scene.optical, scene.sar, adapter, prefix, again)
    assert "tile_landcover.geojson" not in names(prefix)
    assert "tile_report.json" in names(prefix)


def test_cli_predict_to_a_url(prefix: str, scene: SceneFiles, adapter: Path) -> None:
    res = cli.invoke(
        app, [*predict_args(scene, adapter, Path("x")), "-o", prefix, "--vector", "none"]
    )
    assert res.exit_code == 0, res.output
    assert remote.join(prefix, "tile_classes.tif") in res.output
    assert "tile_report.json" in names(prefix)

    res = cli.invoke(
        app, [*predict_args(scene, adapter, Path("x")), "-o", "s3://no-such-bucket-x/p/"]
    )
    assert res.exit_code == 2
    assert "s3://no-such-bucket-x/p/: cannot write" in res.output


# ---------------------------------------------------------------------------- predict-many


def _scenes(root: Path) -> list[Scene]:
    found = []
    for i in range(2):
        files = scene_files(root, f"scene_{i:03d}")
        found.append(Scene(f"scene_{i:03d}", str(files.optical), str(files.sar)))
    return found


def test_predict_many_into_a_bucket_resumes_from_what_is_there(
    prefix: str, small_scenes: Path, adapter: Path
) -> None:
    scenes = _scenes(small_scenes)
    run = predict_many(scenes, adapter, prefix, options=QUICK, progress=False)
    assert [s.status for s in run.scenes] == ["done", "done"]
    assert run.scenes[0].class_map == remote.join(prefix, "scene_000", "scene_000_classes.tif")
    assert {"run.json", "run.md", "index.parquet", "collection.json"} <= names(prefix)
    assert run.files["run_json"] == remote.join(prefix, "run.json")

    # the run's files link by relative paths, so they hold once uploaded
    mosaic = next(n for n in names(prefix) if n.endswith(".vrt"))
    fs, path = remote.filesystem(remote.join(prefix, mosaic))
    vrt = fs.cat_file(path).decode()
    assert '<SourceFilename relativeToVRT="1">scene_000/scene_000_classes.tif' in vrt
    collection = remote.read_json(remote.join(prefix, "collection.json"))
    assert collection is not None
    hrefs = {link["href"] for link in collection["links"] if link["rel"] == "item"}
    assert hrefs == {"./scene_000/scene_000_item.json", "./scene_001/scene_001_item.json"}
    item = remote.read_json(remote.join(prefix, "scene_000", "scene_000_item.json"))
    assert item is not None and item.get("collection") == collection["id"]
    summary = remote.read_json(remote.join(prefix, "run.json"))
    assert summary is not None and summary["counts"]["done"] == 2

    # resume reads the uploaded reports: nothing to map again
    again = predict_many(scenes, adapter, prefix, options=QUICK, progress=False)
    assert [s.status for s in again.scenes] == ["skipped", "skipped"]
    # a scene whose report (the commit mark) is gone is mapped again, the other skipped
    fs.rm_file(remote.filesystem(remote.join(prefix, "scene_001", "scene_001_report.json"))[1])
    third = predict_many(scenes, adapter, prefix, options=QUICK, progress=False)
    assert [s.status for s in third.scenes] == ["skipped", "done"]


def test_the_adapter_travels_with_the_task(prefix: str, small_scenes: Path, tmp_path: Path) -> None:
    """A worker that cannot read the client's adapter path loads the bytes the task
    carries (a cluster without a shared file system)."""
    import hashlib

    path = make_adapter(tmp_path / "elsewhere.safetensors", seed=1)
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    path.unlink()  # the worker's view: no such file
    scene_runner._LOADED.clear()
    task = SceneTask(
        _scenes(small_scenes)[0],
        str(path),
        sha,
        remote.join(prefix, "scene_000"),
        PredictOptions(window=64, progress=False, vector=None, overwrite=True),
        adapter_bytes=data,
    )
    outcome = scene_runner.map_scene(task)
    assert outcome.status == "done", outcome.reason
    assert outcome.report == remote.join(prefix, "scene_000", "scene_000_report.json")
    report = remote.read_json(outcome.report)
    assert report is not None and report["model"]["adapter_sha256"] == sha
    scene_runner._LOADED.clear()


@pytest.mark.slow
def test_a_cluster_without_a_shared_folder_writes_to_the_bucket(
    prefix: str, small_scenes: Path, adapter: Path, tmp_path: Path
) -> None:
    """Two worker processes with their own working folders upload their scenes; the
    client never sees a worker's files."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            local_directory=str(tmp_path / "workers"),
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        run = predict_many(
            _scenes(small_scenes),
            adapter,
            prefix,
            executor=client.get_executor(),
            options=QUICK,
            progress=False,
            threads=1,
        )
    assert [s.status for s in run.scenes] == ["done", "done"], [s.reason for s in run.scenes]
    for i in range(2):
        folder = remote.join(prefix, f"scene_{i:03d}")
        assert {f"scene_{i:03d}_classes.tif", f"scene_{i:03d}_report.json"} <= names(folder)
    assert {"run.json", "index.parquet", "collection.json"} <= names(prefix)
    again = predict_many(_scenes(small_scenes), adapter, prefix, options=QUICK, progress=False)
    assert [s.status for s in again.scenes] == ["skipped", "skipped"]
