"""Bad input, through the real CLI: one line naming the file or option, exit status 2,
no traceback, nothing written. One test per class of mistake."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import predict_args
from typer.testing import CliRunner

from gopt_geo.cli import app

runner = CliRunner()
HAS_GPU = torch.cuda.is_available()


def _fails(args: list[str], *expected: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for text in expected:
        assert text in res.output, res.output


def test_an_output_folder_that_cannot_be_written(scene, adapter: Path) -> None:
    _fails(predict_args(scene, adapter, Path("/sys")), "/sys: cannot write into the output folder")
    _fails(predict_args(scene, adapter, Path("/proc/nowhere/out")), "/proc/nowhere/out: cannot")


@pytest.mark.skipif(HAS_GPU, reason="checks the message on a machine without a GPU")
def test_a_gpu_asked_for_where_there_is_none(scene, adapter: Path, tmp_path: Path) -> None:
    _fails(
        predict_args(scene, adapter, tmp_path, "--device", "cuda"), "--device 'cuda': no CUDA GPU"
    )
    cfg = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    _fails(
        ["train", "-c", str(cfg), "--device", "cuda", "--set", f"output_dir={tmp_path}/r"],
        "--device 'cuda': no CUDA GPU",
    )
    _fails(
        ["evaluate", "--model", str(adapter), "-c", str(cfg), "--device", "cuda"],
        "--device 'cuda': no CUDA GPU",
    )
    assert not any(tmp_path.iterdir())


def test_an_unknown_device_name(scene, adapter: Path, tmp_path: Path) -> None:
    _fails(predict_args(scene, adapter, tmp_path, "--device", "tpu"), "--device 'tpu': expected")


@pytest.mark.parametrize(("option", "value"), [("--min-area", "-5"), ("--simplify", "-1")])
def test_negative_polygon_options(
    scene, adapter: Path, tmp_path: Path, option: str, value: str
) -> None:
    _fails(predict_args(scene, adapter, tmp_path, option, value), f"{option} {value}")
    assert not any(tmp_path.iterdir())


def test_an_overlap_that_multiplies_the_windows(scene, adapter: Path, tmp_path: Path) -> None:
    _fails(
        predict_args(scene, adapter, tmp_path, "--overlap", "0.95"), "overlap 0.95 runs the model"
    )


def test_a_missing_scene_fails_before_the_model_loads(adapter: Path, tmp_path: Path) -> None:
    _fails(predict_args(tmp_path / "nope.tif", adapter, tmp_path), "nope.tif: file not found")


def test_maps_without_a_common_class(scene, tmp_path: Path) -> None:
    with rasterio.open(scene.labels) as src:
        profile, codes = src.profile, src.read(1)
    other = tmp_path / "other.tif"
    with rasterio.open(other, "w", **profile) as dst:
        dst.write(np.where(codes > 0, 200, 0).astype(codes.dtype), 1)
    predicted = tmp_path / "pred.tif"
    res = runner.invoke(
        app, ["evaluate", str(scene.labels), str(other), "-o", str(tmp_path / "m.json")]
    )
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert not (tmp_path / "m.json").exists() and not predicted.exists()
