"""Your own Sentinel-1/2 scene, first try (issue 27): the layout a hand-labelled scene
really has - Sentinel-2 L1C as int16 reflectance x 10000 with nodata 0, Sentinel-1 VV/VH
in dB with NaN, int16 labels with -1 = no data, 0 = not water, 1 = water, EPSG:4326 -
goes through init-config, train (the starter config as written, a tiny budget),
predict and evaluate --split test, and every number is about the right pixels."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
import yaml
from conftest import write_raster
from rasterio.transform import from_origin
from typer.testing import CliRunner

from gopt_geo.cli import app
from gopt_geo.config import load_config
from gopt_geo.data.classes import IGNORE_INDEX, ClassScheme, LandCoverClass
from gopt_geo.data.rasters import SampleCleaner, check_label_codes
from gopt_geo.data.row_split import band_rows, choose_row_split, thinnest_band
from gopt_geo.data.summary import summarize_scenes
from gopt_geo.errors import InputError
from gopt_geo.init_config import starter_config

runner = CliRunner()
S2_L1C = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
#: the test split's scene layout: 256 rows, 96 columns, about 10 m pixels at 50 N
ROWS, COLS = 256, 96


def sentinel_scene(root: Path, name: str = "scene", offset: int = 0, seed: int = 0) -> None:
    """One scene as exported from a GIS: optical/, sar/, labels/ on one EPSG:4326 grid.

    Water is a band down the scene, dark in the optical and at -20 dB in VV; labels hold
    -1 (the nodata tag) in the four left columns and in a few blocks; optical nodata (0)
    in the top-left corner and in a block of the bottom rows; SAR NaN in the bottom right.
    """
    rng = np.random.default_rng(seed)
    t = from_origin(10.0, 50.0, 1e-4, 1e-4)
    yy, xx = np.mgrid[:ROWS, :COLS]
    water = np.sin(xx / 9.0) * 12 + COLS / 2 - xx + (yy % 64) / 3 > 10
    labels = water.astype(np.int16)
    labels[:, :4] = -1
    labels[(yy // 16 % 5 == 2) & (xx // 16 % 4 == 1)] = -1
    optical = rng.integers(600, 3000, (13, ROWS, COLS))
    optical[:, water] = rng.integers(100, 700, (13, int(water.sum())))
    optical = (optical + offset).astype(np.int16)
    optical[:, (xx + yy) < 20] = 0
    optical[:, 240:250, 20:30] = 0
    sar = np.stack([np.where(water, -20.0, -9.0), np.where(water, -27.0, -15.0)])
    sar = (sar + rng.normal(0, 1.0, sar.shape)).astype(np.float32)
    sar[:, (xx > COLS - 10) & (yy > ROWS - 30)] = np.nan
    write_raster(root / "optical" / f"{name}.tif", optical, "EPSG:4326", t, 0, S2_L1C)
    write_raster(root / "sar" / f"{name}.tif", sar, "EPSG:4326", t, float("nan"), ("VV", "VH"))
    write_raster(root / "labels" / f"{name}.tif", labels, "EPSG:4326", t, -1)


def band_labelled_pixels(root: Path, first: int, last: int) -> int:
    """Pixels of rows [first, last) with a class label (0 or 1) and valid inputs,
    counted from the files themselves."""
    with rasterio.open(root / "labels" / "scene.tif") as src:
        labels = src.read(1)
    with rasterio.open(root / "optical" / "scene.tif") as src:
        optical_ok = (src.read() != 0).any(0)
    with rasterio.open(root / "sar" / "scene.tif") as src:
        sar_ok = np.isfinite(src.read()).all(0)
    ok = np.isin(labels, (0, 1)) & optical_ok & sar_ok
    return int(ok[first:last].sum())


def test_a_sentinel_scene_trains_as_written_and_scores_its_test_band(tmp_path: Path) -> None:
    root, cfg_path = tmp_path / "scene", tmp_path / "water.yaml"
    sentinel_scene(root)
    res = runner.invoke(app, ["init-config", str(root), "-o", str(cfg_path)])
    assert res.exit_code == 0, res.output
    text = cfg_path.read_text()
    doc = yaml.safe_load(text)
    data = doc["data"]
    # the guesses: -1 is no data (the nodata tag), 0 and 1 are the classes
    assert data["ignore_codes"] == [-1]
    assert [c["code"] for c in data["classes"]] == [0, 1]
    assert data["optical_bands"] == ["B4", "B3", "B2", "B8"]
    assert data["rgb_bands"] == ["B4", "B3", "B2"]
    assert data["optical_scale"] == 0.0001 and "optical_offset" not in data
    assert data["sar_units"] == "db"
    assert "L1C" in text and "set optical_offset: -1000" in text and "degrees" in text
    patch, fractions = data["patch_size"], data["split_rows"]
    bands = [band_rows(ROWS, fractions, i, patch) for i in range(3)]
    assert all(b - a >= patch for a, b in bands), (patch, fractions, bands)
    assert doc["train"]["class_weights"] == "auto"

    run = tmp_path / "run"
    budget = [
        f"output_dir={run}",
        "model.backbone=test_efficientnet",
        "model.weights=random",
        "model.prompt_dim=16",
        "model.decoder_dim=16",
        "train.epochs=2",
        "data.train_patches=8",
        "data.stats_patches=8",
        "data.batch_size=4",
        "train.progress=false",
    ]
    sets = [arg for s in budget for arg in ("--set", s)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = runner.invoke(app, ["train", "--config", str(cfg_path), *sets])
    assert res.exit_code == 0, res.output
    assert not [w for w in caught if "geographic CRS" in str(w.message)]
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"val", "epoch", "last_val", "last_epoch"} <= set(metrics)
    assert f"(best epoch: {metrics['epoch'] + 1} of 2)" in res.output
    assert "(the adapter's)" in res.output
    from gopt_geo.adapter import read_adapter_metadata

    meta = read_adapter_metadata(run / "adapter.safetensors")
    assert meta.metrics["val"] == metrics["val"] and meta.metrics["epoch"] == metrics["epoch"]
    assert meta.metrics["last_epoch"] == metrics["last_epoch"] == 1
    val_first, val_last = bands[1]
    assert metrics["val"]["pixels"] == band_labelled_pixels(root, val_first, val_last)

    maps = tmp_path / "map"
    res = runner.invoke(
        app,
        [
            "predict",
            str(root / "optical" / "scene.tif"),
            "--sar",
            str(root / "sar" / "scene.tif"),
            "--model",
            str(run / "adapter.safetensors"),
            "-o",
            str(maps),
            "--window",
            "64",
            "--vector",
            "none",
        ],
    )
    assert res.exit_code == 0, res.output
    test_first, test_last = bands[2]
    expected = band_labelled_pixels(root, test_first, test_last)
    assert 0 < expected < (test_last - test_first) * COLS  # -1, nodata 0 and NaN inside
    res = runner.invoke(
        app,
        [
            "evaluate",
            str(maps / "scene_classes.tif"),
            str(root / "labels" / "scene.tif"),
            "--config",
            str(cfg_path),
            "--split",
            "test",
            "-o",
            str(tmp_path / "map_test.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert f"rows {test_first}..{test_last}" in res.output
    assert json.loads((tmp_path / "map_test.json").read_text())["pixels"] == expected
    res = runner.invoke(
        app,
        [
            "evaluate",
            "--model",
            str(run / "adapter.safetensors"),
            "--config",
            str(cfg_path),
            "--split",
            "test",
            "--device",
            "cpu",
            "-o",
            str(tmp_path / "model_test.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "model_test.json").read_text())["pixels"] == expected
    assert f"({expected:,} px)" in res.output


def test_an_l2a_baseline_4_scene_gets_the_minus_1000_offset(tmp_path: Path) -> None:
    sentinel_scene(tmp_path, offset=1000)
    text = starter_config(tmp_path)
    data = yaml.safe_load(text)["data"]
    assert data["optical_scale"] == 0.0001 and data["optical_offset"] == -1000
    assert "baseline >= 04.00" in text and "set optical_offset: 0" in text


@pytest.mark.parametrize(
    ("codes", "nodata", "ignored", "classes"),
    [
        ((0, 1), None, [], [0, 1]),  # a 0/1 water mask: 0 is a class
        ((0, 1, 2), None, [0], [1, 2]),  # 0 as background, as WHU-OPT-SAR
        ((-1, 0, 1), None, [-1], [0, 1]),  # negative: no data
        ((0, 1, 255), None, [255], [0, 1]),  # 255 in uint8: no data
        ((0, 1, 2), 2, [2], [0, 1]),  # the nodata tag says so
    ],
)
def test_init_config_ignores_what_the_labels_mark_as_no_data(
    tmp_path: Path, codes: tuple[int, ...], nodata: int | None, ignored: list, classes: list
) -> None:
    sentinel_scene(tmp_path)
    dtype = np.int16 if min(codes) < 0 else np.uint8
    labels = np.resize(np.repeat(np.array(codes, dtype=dtype), 8), (ROWS, COLS))
    with rasterio.open(tmp_path / "labels" / "scene.tif") as src:
        t = src.transform
    write_raster(tmp_path / "labels" / "scene.tif", labels, "EPSG:4326", t, nodata)
    data = yaml.safe_load(starter_config(tmp_path))["data"]
    assert data["ignore_codes"] == ignored
    assert [c["code"] for c in data["classes"]] == classes


def test_row_splits_chosen_for_any_scene_height_hold_a_patch_in_every_band() -> None:
    for rows in [*range(170, 700, 7), 1000, 3704, 10980]:
        chosen = choose_row_split([rows])
        assert chosen is not None, rows
        patch, fractions = chosen
        assert abs(sum(fractions) - 1) < 1e-9 and thinnest_band(rows, fractions, patch) is None
    assert choose_row_split([512])[0] == 64  # the scene: not 256
    assert choose_row_split([10980])[0] == 256
    assert choose_row_split([150]) is None  # 3 bands of 32 px and 2 guard gaps: 160 rows


def test_a_band_thinner_than_a_patch_is_refused_naming_it(tmp_path: Path) -> None:
    sentinel_scene(tmp_path)
    cfg = load_config(
        None,
        [
            f"data.root={tmp_path}",
            "data.optical_bands=[B4, B3, B2, B8]",
            "data.rgb_bands=[B4, B3, B2]",
            "data.classes=[{code: 0, name: land}, {code: 1, name: water}]",
            "data.ignore_codes=[-1]",
            "data.split_rows=[0.6, 0.15, 0.25]",
            "data.patch_size=64",
        ],
    )
    with pytest.raises(
        InputError,
        match=r"data.split_rows: the val band of scene scene is 0 rows \(rows 186..186 of "
        r"256\), thinner than one patch \(data.patch_size 64\)",
    ):
        cfg.datamodule().setup("fit")


def test_ignore_codes_take_any_integer_and_codes_map_without_clamping() -> None:
    cfg = load_config(
        None,
        ["data.classes=[{code: 0, name: land}, {code: 1, name: water}]", "data.ignore_codes=[-1]"],
    )
    scheme = cfg.class_scheme()
    assert scheme.ignore_codes == (-1,)
    codes = np.array([-1, 0, 1, 255, 256, -256, 1000])
    expected = [IGNORE_INDEX, 0, 1, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    assert scheme.code_indices(codes).tolist() == expected
    cleaner = SampleCleaner(1, None, None, scheme, label_nodata=-1)
    sample = {"image": torch.ones(2, 1, 7), "mask": torch.from_numpy(codes)[None]}
    assert cleaner(sample)["mask"][0].tolist() == expected
    assert -1 not in scheme.colormap()  # a uint8 colour table has no entry for -1
    with pytest.raises(InputError, match=r"data.classes\[0\].code: -1 is outside 0..254"):
        load_config(None, ["data.classes=[{code: -1, name: x}, {code: 1, name: y}]"]).class_scheme()
    both = ["data.classes=[{code: 0, name: x}, {code: 1, name: y}]", "data.ignore_codes=[0]"]
    with pytest.raises(InputError, match=r"data.ignore_codes: \[0\] also declared as classes"):
        load_config(None, both).class_scheme()


def test_an_undeclared_negative_code_is_one_line_naming_it(tmp_path: Path) -> None:
    sentinel_scene(tmp_path)
    with rasterio.open(tmp_path / "labels" / "scene.tif", "r+") as dst:
        dst.nodata = None  # -1 is a plain value now
    classes = (LandCoverClass(0, "land", (1, 2, 3)), LandCoverClass(1, "water", (4, 5, 6)))
    scheme = ClassScheme(classes, ignore_codes=())
    with pytest.raises(
        InputError,
        match=r"labels/scene.tif: label values \[-1\] are outside the code map .*declare "
        r"them in data.classes or list them in data.ignore_codes",
    ):
        check_label_codes([tmp_path / "labels" / "scene.tif"], scheme)


def test_summary_speaks_degrees_and_lists_every_code(tmp_path: Path) -> None:
    sentinel_scene(tmp_path)
    text = summarize_scenes(tmp_path)
    assert "0.0001 degrees" in text and " m," not in text
    assert "code -1 " in text and "(nodata)" in text and "code 0 " in text


def test_the_adapter_epoch_and_the_last_epoch_are_kept_apart(tmp_path: Path) -> None:
    from gopt_geo.evaluation import metrics_from_confusion
    from gopt_geo.training import AdapterExport

    export = AdapterExport(tmp_path / "adapter.safetensors", {})
    for epoch, right in enumerate((5, 9, 7)):
        m = metrics_from_confusion(np.array([[right, 10 - right], [0, 10]]), ["a", "b"])
        task = SimpleNamespace(last_metrics={"val": m})
        # rank 1 writes no file: only the bookkeeping is tested here
        trainer = SimpleNamespace(
            sanity_checking=False, current_epoch=epoch, global_step=epoch, global_rank=1
        )
        export.on_validation_end(trainer, task)  # type: ignore[arg-type]
    summary = export.summary()
    assert summary["epoch"] == 1 and summary["last_epoch"] == 2
    assert summary["val"]["miou"] > summary["last_val"]["miou"]
    restored = AdapterExport(tmp_path / "a", {})
    restored.load_state_dict(export.state_dict())
    assert restored.summary() == summary
