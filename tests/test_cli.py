"""The command line around the library: synth, predict, vectorize, evaluate maps, help."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import geopandas as gpd
import numpy as np
import rasterio
from conftest import predict_args
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
    args = predict_args(scene, adapter, out, "--device", "cpu")
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
    nope = tmp_path / "nope.tif"
    res = runner.invoke(app, predict_args(nope, adapter, tmp_path, "--sar", str(scene.sar)))
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
    args = predict_args(tmp_path / "scene.tif", tmp_path / "adapter.safetensors", tmp_path)
    res = runner.invoke(app, [*args, "--sar", str(tmp_path / "sar.tif"), "--vector", "shp"])
    # refused before any file is opened
    assert res.exit_code == 2 and "unknown vector format 'shp'" in res.output
    assert "Traceback" not in res.output


def _flags(command: str) -> dict[str, object]:
    """The command's parameters as typer builds them: name -> click parameter."""
    import typer.main

    group = typer.main.get_command(app)
    return {p.name: p for p in group.commands[command].params}  # type: ignore[attr-defined]


def test_prediction_flags_come_from_the_options_declaration() -> None:
    import dataclasses

    from gopt_geo.inference.options import PredictOptions

    fields = {f.name: f for f in dataclasses.fields(PredictOptions)}
    for command, own in (("predict", ()), ("predict-many", ("progress",))):
        flags = _flags(command)
        shared = [name for name in flags if name in fields and name not in own]
        expected = (
            set(fields) - {"overwrite", "progress"} if command == "predict-many" else set(fields)
        )
        assert set(shared) == expected, command  # every option has a flag (weights too)
        for name in shared:
            flag, field = flags[name], fields[name]
            assert flag.help == field.metadata["help"], (command, name)
            assert flag.default == field.default, (command, name)
    # the option names and their order are the command line's as before, the new ones added
    assert [n for n in _flags("predict") if n in fields] == [
        "window", "overlap", "margin", "batch_size", "device", "weights", "probabilities",
        "confidence", "uncertainty", "uncertainty_threshold", "vector", "min_area", "simplify",
        "wait",
        "overwrite", "progress",
    ]  # fmt: skip
    assert _flags("predict")["confidence"].secondary_opts == ["--no-confidence"]
    assert _flags("predict-many")["progress"].help == "Show a progress bar over scenes."


def test_prediction_flags_reach_the_options(monkeypatch, tmp_path: Path) -> None:
    """Each command hands the library one PredictOptions made of its flags."""
    import gopt_geo.adapter
    import gopt_geo.inference.predictor
    import gopt_geo.inference.sources
    from gopt_geo.inference.options import PredictOptions

    seen: list[PredictOptions] = []

    class Stop(Exception):
        pass

    def capture(optical, sar, model, out_dir, options):  # noqa: ANN001, ANN202
        seen.append(options)
        raise Stop

    chosen = SimpleNamespace(routing=None, optical="scene.tif", sar=None)
    monkeypatch.setattr(gopt_geo.adapter, "read_adapter_metadata", lambda path: chosen)
    monkeypatch.setattr(gopt_geo.inference.sources, "single_scene", lambda *args: chosen)
    monkeypatch.setattr(gopt_geo.inference.predictor, "predict_scene", capture)
    weights = tmp_path / "backbone.safetensors"
    args = ["predict", "scene.tif", "--model", "a.safetensors", "--margin", "32"]
    args += ["--uncertainty", "--uncertainty-threshold", "0.3", "--weights", str(weights)]
    args += ["--vector", "none", "--no-confidence", "--no-progress"]
    res = runner.invoke(app, args)
    assert isinstance(res.exception, Stop), res.output
    assert seen == [
        PredictOptions(
            margin=32,
            uncertainty=True,
            uncertainty_threshold=0.3,
            weights=weights,
            vector=None,
            confidence=False,
            progress=False,
        )
    ]
    res = runner.invoke(app, ["predict", "s.tif", "--model", "a", "--uncertainty-threshold", "1"])
    assert res.exit_code == 2 and "uncertainty threshold must be between 0 and 1" in res.output
