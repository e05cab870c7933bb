"""The command line around the library: synth, predict, vectorize, evaluate maps, help."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from typer.testing import CliRunner

from gopt_geo.cli import app
from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES

runner = CliRunner()


def test_every_command_has_help() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for command in (
        "synth",
        "summary",
        "train",
        "evaluate",
        "predict",
        "vectorize",
        "info",
        "demo",
        "init-config",
        "predict-many",
        "change",
    ):
        assert command in res.output
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.output, command


def test_synth_writes_and_summarises(tmp_path: Path) -> None:
    res = runner.invoke(app, ["synth", str(tmp_path / "s"), "--size", "64", "--scenes", "2"])
    assert res.exit_code == 0, res.output
    assert "2 scene(s)" in res.output and "EPSG:32649" in res.output and "farmland" in res.output
    assert len(list((tmp_path / "s" / "sar").glob("*.tif"))) == 2
    again = runner.invoke(app, ["synth", str(tmp_path / "s"), "--size", "64"])
    assert again.exit_code == 2 and "already holds scenes; use --overwrite" in again.output


def test_predict_vectorize_evaluate(adapter: Path, scene, tmp_path: Path) -> None:
    out = tmp_path / "maps"
    args = [
        "predict",
        str(scene.optical),
        "--sar",
        str(scene.sar),
        "--model",
        str(adapter),
        "-o",
        str(out),
        "--window",
        "64",
        "--no-progress",
        "--device",
        "cpu",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    class_map = out / "tile_classes.tif"
    with rasterio.open(class_map) as dst, rasterio.open(scene.optical) as src:
        assert (dst.crs, dst.transform, dst.shape) == (src.crs, src.transform, src.shape)
        codes = set(np.unique(dst.read(1)).tolist())
    assert codes <= set(WHU_OPT_SAR_CLASSES.codes) | {255}
    assert (out / "tile_landcover.gpkg").exists() and (out / "tile_report.json").exists()

    # an existing output is not replaced without --overwrite, and stays intact
    before = class_map.read_bytes()
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert "Traceback" not in again.output and class_map.read_bytes() == before

    vec = tmp_path / "lc.geojson"
    res = runner.invoke(app, ["vectorize", str(class_map), "-o", str(vec)])
    assert res.exit_code == 0, res.output
    frame = gpd.read_file(vec)
    assert set(frame["code"]) <= set(WHU_OPT_SAR_CLASSES.codes) and len(frame) > 0

    # a map scored against itself is perfect; against the labels it is a real number
    res = runner.invoke(
        app, ["evaluate", str(class_map), str(class_map), "-o", str(tmp_path / "self.json")]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "self.json").read_text())["oa"] == 1.0
    res = runner.invoke(
        app, ["evaluate", str(class_map), str(scene.labels), "-o", str(tmp_path / "m.json")]
    )
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert 0 <= m["oa"] < 1 and m["pixels"] > 0


def test_evaluate_map_reference_on_another_grid(scene, tmp_path: Path) -> None:
    """The reference is warped (nearest) onto the prediction's grid: a 2x coarser copy of
    the labels still agrees with the labels almost everywhere."""
    from rasterio.enums import Resampling

    from gopt_geo.evaluation import evaluate_maps

    coarse = tmp_path / "coarse.tif"
    with rasterio.open(scene.labels) as src:
        data = src.read(
            1, out_shape=(src.height // 2, src.width // 2), resampling=Resampling.nearest
        )
        profile = src.profile | {
            "width": src.width // 2,
            "height": src.height // 2,
            "transform": src.transform * src.transform.scale(2, 2),
        }
    with rasterio.open(coarse, "w", **profile) as dst:
        dst.write(data, 1)
    m = evaluate_maps(scene.labels, coarse, classes=WHU_OPT_SAR_CLASSES)
    assert 0.7 < m.oa < 1.0  # coarse blocks lose detail at class borders, nowhere else


def test_bad_input_messages(adapter: Path, scene, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "predict",
            str(tmp_path / "nope.tif"),
            "--sar",
            str(scene.sar),
            "--model",
            str(adapter),
            "-o",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 2 and "nope.tif: file not found" in res.output
    res = runner.invoke(app, ["info", str(tmp_path / "missing.safetensors")])
    assert res.exit_code == 2 and "missing.safetensors" in res.output
    assert "Traceback" not in res.output


def test_predict_options_units_and_bad_values(tmp_path: Path) -> None:
    for command in ("predict", "vectorize"):
        help_text = runner.invoke(app, [command, "--help"]).output
        text = " ".join(help_text.replace("│", " ").split())  # rich boxes wrap lines
        assert "Simplification tolerance in metres" in text, command
        assert "(m²)" in text, command
    res = runner.invoke(
        app,
        [
            "predict",
            str(tmp_path / "scene.tif"),
            "--sar",
            str(tmp_path / "sar.tif"),
            "--model",
            str(tmp_path / "adapter.safetensors"),
            "--vector",
            "shp",
        ],
    )  # refused before any file is opened
    assert res.exit_code == 2 and "unknown vector format 'shp'" in res.output
    assert "Traceback" not in res.output
