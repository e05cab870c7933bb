"""Messy files (issue 24): a truncated TIFF, manifests as spreadsheets save them, the
tool's own outputs in its input folder, read failures that must name the file and
GDAL's reason. Each ends in a correct result or one line naming the file."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import rasterio
from conftest import QUICK_PREDICT, predict_args, write_scene
from rasterio.windows import Window
from typer.testing import CliRunner

from gopt_geo.cli import app
from gopt_geo.data.bands import BandRouting
from gopt_geo.errors import InputError
from gopt_geo.inference import reader as reader_module
from gopt_geo.inference.reader import SceneReader
from gopt_geo.inference.sanity import check_inputs
from gopt_geo.inference.sources import collect_scenes, scenes_from_dirs
from gopt_geo.io import reading

runner = CliRunner()
ROUTING = BandRouting(("B", "G", "R", "NIR"), ("VV", "VH"))


@pytest.fixture
def truncated(tmp_path: Path) -> dict[str, Path]:
    """A scene whose optical GeoTIFF was cut off half way (an interrupted copy)."""
    files = write_scene(tmp_path, "cut", size=256)
    data = files["optical"].read_bytes()
    files["optical"].write_bytes(data[: len(data) // 2])
    return files


def _one_line_naming(err: BaseException, name: Path | str) -> str:
    text = str(err)
    assert "\n" not in text and text.startswith(f"{name}: ")
    assert "see previous exception" not in text.lower()
    return text


def test_truncated_tiff_in_the_input_check_is_one_line(truncated: dict[str, Path]) -> None:
    profile = {b: {"p1": 100.0, "p50": 1500.0, "p99": 4000.0} for b in ROUTING.optical_bands}
    routing = dataclasses.replace(ROUTING, profile=profile)
    with pytest.raises(InputError) as caught:
        check_inputs(truncated["optical"], None, routing)
    assert "cannot read pixels" in _one_line_naming(caught.value, truncated["optical"])


def test_truncated_tiff_while_reading_is_one_line(truncated: dict[str, Path]) -> None:
    with SceneReader(truncated["optical"], truncated["sar"], ROUTING) as reader:
        with pytest.raises(InputError) as caught:
            reader.read(Window(0, 0, 256, 256))
    text = _one_line_naming(caught.value, truncated["optical"])
    assert "TIFF" in text  # GDAL's own reason


def test_truncated_tiff_through_predict_is_one_line(
    truncated: dict[str, Path], adapter: Path, tmp_path: Path
) -> None:
    files = {"optical": truncated["optical"], "sar": truncated["sar"]}
    args = [str(files["optical"]), "--sar", str(files["sar"])]
    res = runner.invoke(
        app, ["predict", *args, "--model", str(adapter), "-o", str(tmp_path / "o"), *QUICK_PREDICT]
    )
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines()[-1].startswith(f"error: {files['optical']}: ")
    assert "Traceback" not in res.output


def test_read_failures_give_gdals_reason_not_a_pointer() -> None:
    def fail() -> None:
        try:
            raise rasterio._err.CPLE_HttpResponseError(1, 11, "HTTP response code: 503")
        except Exception as gdal:
            raise rasterio.errors.RasterioIOError(
                "Read failed. See previous exception for details."
            ) from gdal

    with pytest.raises(InputError) as caught:
        with reading("https://example.org/a.tif"):
            fail()
    assert str(caught.value) == (
        "https://example.org/a.tif: cannot read pixels (HTTP response code: 503)"
    )


# -- manifests as spreadsheets save them ----------------------------------------------


def _scene_files(tmp_path: Path) -> tuple[Path, Path]:
    files = write_scene(tmp_path, "a")
    return files["optical"], files["sar"]


def test_csv_with_a_byte_order_mark_keeps_its_id_column(tmp_path: Path) -> None:
    optical, sar = _scene_files(tmp_path)
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(f"id,optical,sar\nfield_7,{optical},{sar}\n".encode("utf-8-sig"))
    (scene,) = collect_scenes([str(manifest)], ROUTING)
    assert scene.id == "field_7" and scene.problem is None


def test_latin1_csv_is_read_with_a_warning(tmp_path: Path) -> None:
    optical, sar = _scene_files(tmp_path)
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(f"id;optical;sar\nbl\xe9;{optical};{sar}\n".encode("latin-1"))
    with pytest.warns(UserWarning, match=r"m\.csv: not UTF-8 .* read as Windows-1252"):
        (scene,) = collect_scenes([str(manifest)], ROUTING)
    assert scene.id.startswith("bl") and scene.problem is None  # semicolons too


def test_csv_without_an_optical_column_is_one_line(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("name,image\na,a.tif\n")
    with pytest.raises(InputError, match=r"m\.csv: no 'optical' column .*found: name, image"):
        collect_scenes([str(manifest)], ROUTING)


# -- the tool's own outputs are never inputs --------------------------------------------


def test_outputs_written_into_the_input_folder_are_not_scenes(
    tmp_path: Path, adapter: Path
) -> None:
    write_scene(tmp_path, "s0")
    write_scene(tmp_path, "s1", origin=(505_000, 3_400_000), seed=1)
    folder = tmp_path / "optical"
    # predict-many with -o equal to --optical-dir: per-scene folders and a mosaic VRT
    res = runner.invoke(
        app,
        [
            "predict-many", "--optical-dir", str(folder), "--sar-dir", str(tmp_path / "sar"),
            "--model", str(adapter), "-o", str(folder), "--workers", "0", *QUICK_PREDICT,
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert list(folder.glob("mosaic_*.vrt"))
    # and a predict into the same folder: class map, confidence beside the scenes
    res = runner.invoke(app, predict_args(
        write_scene(tmp_path, "s0")["optical"].parent / "s0.tif", adapter, folder,
        "--sar", str(tmp_path / "sar" / "s0.tif"), "--confidence",
    ))  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (folder / "s0_classes.tif").exists() and (folder / "s0_confidence.tif").exists()
    with pytest.warns(UserWarning, match=r"skipped \d gopt-geo output\(s\).*mosaic_"):
        scenes = scenes_from_dirs(folder, tmp_path / "sar")
    assert sorted(s.id for s in scenes) == ["s0", "s1"]
    assert all(s.problem is None for s in scenes)


def test_a_users_raster_named_like_an_output_is_still_a_scene(tmp_path: Path) -> None:
    files = write_scene(tmp_path, "field_classes")  # not written by gopt-geo: no tag
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (scene,) = scenes_from_dirs(files["optical"].parent, files["sar"].parent)
    assert scene.id == "field_classes"


def test_run_report_is_not_a_raster_either(tmp_path: Path) -> None:
    # run.json / index.parquet never had a raster suffix; the folder check stays strict
    folder = tmp_path / "optical"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({}))
    with pytest.raises(InputError, match="no rasters"):
        scenes_from_dirs(folder, None)


# -- Ctrl-C and SIGTERM while waiting on a stalled server ---------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_predict_waiting_on_a_stalled_server(
    stall: tuple[str, threading.Event], adapter: Path, tmp_path: Path, signum: int
) -> None:
    url, connected = stall
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gopt_geo", *predict_args(url, adapter, out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # GDAL alone would wait 120 s for this server
        env={**os.environ, "GDAL_HTTP_LOW_SPEED_TIME": "120", "GDAL_HTTP_MAX_RETRY": "0"},
    )
    try:
        assert connected.wait(60), "predict never reached the server"
        time.sleep(0.5)  # inside GDAL's wait
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=20)  # stopped in seconds, not GDAL's 120 s
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert not [p for p in out.rglob("*") if p.suffix in (".tif", ".json")]


def test_a_read_stuck_on_the_network_is_abandoned_when_the_run_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_scene(tmp_path, "a")
    monkeypatch.setattr(reader_module, "READ_GRACE", 0.2)
    never = threading.Event()
    reader = SceneReader(files["optical"], files["sar"], ROUTING)
    monkeypatch.setattr(reader, "read_batch", lambda windows: never.wait())

    def ctrl_c(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, ctrl_c)
    try:
        batches = reader.batches([Window(0, 0, 16, 16)] * 2, 1)
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            next(batches)  # waits on the stuck read until "Ctrl-C"
        batches.close()  # gives the read its grace, then abandons it
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    reader.close()
    assert not reader._opt.closed  # never closed under the live read
    never.set()
