"""Your own data: declared class schemes, optical scale/offset, bands by name, starter
configs, and row splits that keep patches on the pixel grid."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from conftest import write_raster, write_scene
from test_training import tiny_config

from gopt_geo.config import load_config
from gopt_geo.data.bands import BandRouting
from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
from gopt_geo.data.datamodule import OpticalSarDataModule
from gopt_geo.data.normalize import band_statistics
from gopt_geo.errors import InputError
from gopt_geo.evaluation import evaluate_maps
from gopt_geo.inference import PredictOptions, Predictor
from gopt_geo.init_config import write_starter_config
from gopt_geo.models import ModelConfig, build_model
from gopt_geo.training import train

QUIET = {"log": lambda *_: None}
WATER_LAND = [
    "data.classes=[{code: 1, name: water, colour: [0, 90, 230]}, "
    "{code: 2, name: land, colour: [200, 170, 90]}]",
    "data.ignore_codes=[0]",
]
FAST = {"window": 64, "overlap": 0.25, "batch_size": 4, "progress": False}


@pytest.fixture(scope="module")
def water_land(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three scenes whose labels are 1 (water: WHU code 40), 2 (land: every other class)
    and 0 (unlabelled)."""
    root = tmp_path_factory.mktemp("water_land")
    for i in range(3):
        rng = np.random.default_rng(i)
        blocks = rng.choice([0, 1, 2, 2], (13, 13))
        labels = np.kron(blocks, np.ones((8, 8)))[:96, :96].astype(np.uint8)
        write_scene(
            root, f"s{i}", size=96, origin=(500_000 + 5_000 * i, 3_400_000), seed=i, labels=labels
        )
    return root


def test_a_declared_two_class_scheme_trains_predicts_and_evaluates(
    water_land: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(water_land, tmp_path / "run", *WATER_LAND)
    result = train(cfg, **QUIET)
    assert result.adapter is not None
    assert result.metrics["val"]["class_names"] == ["water", "land"]

    predictor = Predictor.from_adapter(result.adapter, device="cpu")
    scene = water_land / "optical" / "s2.tif"
    out = predictor.predict(
        scene, water_land / "sar" / "s2.tif", tmp_path / "map", PredictOptions(**FAST)
    )
    with rasterio.open(out.class_map) as src:
        codes = set(np.unique(src.read(1)).tolist())
        colormap = src.colormap(1)
    assert codes <= {1, 2, 255}
    assert colormap[1][:3] == (0, 90, 230) and colormap[2][:3] == (200, 170, 90)
    rat = Path(f"{out.class_map}.aux.xml").read_text()
    assert "<F>water</F>" in rat and "<F>land</F>" in rat and "farmland" not in rat
    frame = gpd.read_file(out.vector)
    assert set(frame["class_name"]) <= {"water", "land"} and len(frame)

    metrics = evaluate_maps(out.class_map, water_land / "labels" / "s2.tif")
    assert metrics.class_names == ["water", "land"] and len(metrics.iou) == 2
    report = json.loads(out.report_json.read_text())
    assert [c["name"] for c in report["classes"]] == ["water", "land"]


def test_undeclared_label_codes_are_listed_with_a_hint(water_land: Path, tmp_path: Path) -> None:
    sets = ("data.classes=[{code: 1, name: water}]", "data.ignore_codes=[0]")
    cfg = tiny_config(water_land, tmp_path / "run", *sets)
    with pytest.raises(InputError, match=r"label values \[2\] .*declare them in data.classes"):
        train(cfg, **QUIET)


def test_a_class_absent_from_the_data_is_reported_as_absent() -> None:
    from gopt_geo.evaluation import metrics_from_confusion

    m = metrics_from_confusion(np.array([[5, 1, 0], [2, 7, 0], [0, 0, 0]]), ["a", "b", "c"])
    assert m.absent == ["c"] and m.to_dict()["iou"][2] is None
    assert m.miou == pytest.approx(np.mean([5 / 8, 7 / 10]))
    assert "absent" in m.summary() and "c" in m.summary()


def test_sentinel2_digital_numbers_and_reflectance_map_alike(tmp_path: Path) -> None:
    """The same scene stored as L2A digital numbers ((reflectance x 10000) + 1000) and as
    float reflectance: with the matching scale/offset, statistics and maps are the same."""
    reflectance_root, dn_root = tmp_path / "refl", tmp_path / "dn"
    files = write_scene(reflectance_root, "s", size=96)
    with rasterio.open(files["optical"]) as src:
        stored = src.read().astype(np.float64)
        t = src.transform
    refl = (stored / 10000.0).astype(np.float32)
    write_raster(reflectance_root / "optical" / "s.tif", refl, transform=t)
    write_raster(dn_root / "optical" / "s.tif", (stored + 1000).astype(np.uint16), transform=t)
    for sub in ("sar", "labels"):
        (dn_root / sub).mkdir(parents=True)
        shutil.copy(reflectance_root / sub / "s.tif", dn_root / sub / "s.tif")

    bands = (("B", "G", "R", "NIR"), ("VV", "VH"))
    plain = BandRouting(*bands)
    l2a = BandRouting(*bands, optical_scale=(1e-4,), optical_offset=(-1000.0,))
    images = {}
    for name, root in (("refl", reflectance_root), ("dn", dn_root)):
        with rasterio.open(root / "optical" / "s.tif") as o:
            images[name] = torch.from_numpy(o.read().astype(np.float32))
    mean_r, std_r, _ = band_statistics([images["refl"]], plain)
    mean_d, std_d, _ = band_statistics([images["dn"]], l2a)
    for b in bands[0]:
        assert mean_d[b] == pytest.approx(mean_r[b], rel=1e-5)
        assert std_d[b] == pytest.approx(std_r[b], rel=1e-4)

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            backbone="test_efficientnet",
            weights="random",
            aux_channels=3,
            prompt_dim=16,
            decoder_dim=16,
        )
    ).eval()
    maps = []
    for name, routing, root in (
        ("refl", plain.with_stats(mean_r, std_r), reflectance_root),
        ("dn", l2a.with_stats(mean_r, std_r), dn_root),
    ):
        result = Predictor(model, routing, WHU_OPT_SAR_CLASSES, device="cpu").predict(
            root / "optical" / "s.tif",
            root / "sar" / "s.tif",
            tmp_path / name,
            PredictOptions(**FAST, vector=None),
        )
        with rasterio.open(result.class_map) as src:
            maps.append(src.read(1))
    assert (maps[0] == maps[1]).mean() > 0.999


def _thirteen_band_scenes(root: Path, swap: bool = False) -> None:
    """Scenes whose optical files hold Sentinel-2's 13 bands, named, B G R NIR among them."""
    s2 = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
    for i in range(3):
        files = write_scene(root, f"s{i}", size=96, origin=(500_000 + 5_000 * i, 3_400_000), seed=i)
        with rasterio.open(files["optical"]) as src:
            bgrn, t = src.read(), src.transform
        rng = np.random.default_rng(i)
        stack = rng.integers(100, 3000, (13, 96, 96)).astype(np.uint16)
        for band, k in zip(("B2", "B3", "B4", "B8"), range(4), strict=True):
            stack[s2.index(band)] = bgrn[k]
        names = list(s2)
        if swap:
            names[s2.index("B8")] = "NIR_OTHER"
        write_raster(files["optical"], stack, transform=t, nodata=0, descriptions=tuple(names))


def test_thirteen_named_bands_serve_a_four_band_config(tmp_path: Path) -> None:
    root = tmp_path / "s2"
    _thirteen_band_scenes(root)
    sets = ["data.optical_bands=[B2, B3, B4, B8]", "data.rgb_bands=[B4, B3, B2]"]
    result = train(tiny_config(root, tmp_path / "run", *sets), **QUIET)
    assert result.adapter is not None
    out = Predictor.from_adapter(result.adapter, device="cpu").predict(
        root / "optical" / "s2.tif",
        root / "sar" / "s2.tif",
        tmp_path / "map",
        PredictOptions(**FAST, vector=None),
    )
    assert out.class_map.exists()

    bad = tmp_path / "bad"
    _thirteen_band_scenes(bad, swap=True)
    with pytest.raises(InputError, match=r"bands are named \[.*NIR_OTHER.*\].*B8 not in the file"):
        train(tiny_config(bad, tmp_path / "run2", *sets), **QUIET)


def test_init_config_writes_a_config_that_trains(water_land: Path, tmp_path: Path) -> None:
    for i in range(3):  # name the codes as a label raster from a GIS would
        with rasterio.open(water_land / "labels" / f"s{i}.tif", "r+") as dst:
            dst.update_tags(CLASS_1="water", CLASS_2="land", CLASS_0="background")
    path = write_starter_config(water_land, tmp_path / "mine.yaml")
    text = path.read_text()
    assert "name: water" in text and "name: land" in text
    speed = [
        f"output_dir={tmp_path / 'run'}",
        "model.backbone=test_efficientnet",
        "model.weights=random",
        "model.prompt_dim=16",
        "model.decoder_dim=16",
        "data.patch_size=32",
        "data.train_patches=8",
        "train.epochs=1",
        "train.progress=false",
    ]
    cfg = load_config(path, speed)  # only the model size and the budget are changed
    assert cfg.class_scheme().names == ["water", "land"] and cfg.class_scheme().ignore_codes == (0,)
    result = train(cfg, **QUIET)
    assert result.adapter is not None and result.metrics["val"]["class_names"] == ["water", "land"]
    with pytest.raises(InputError, match="output already exists"):
        write_starter_config(water_land, path)


def test_row_split_patches_read_the_files_pixels(tmp_path: Path) -> None:
    """Band borders on whole rows: a training patch is the file's pixels, not resampled."""
    write_scene(tmp_path, "only", size=160)
    dm = OpticalSarDataModule(
        tmp_path,
        classes=WHU_OPT_SAR_CLASSES,
        batch_size=2,
        patch_size=16,
        length=20,
        stats_patches=4,
        split_rows=[0.6, 0.15, 0.25],
        split_order=["test", "train", "val"],
    )
    dm.setup("fit")
    ds = dm.train_dataset
    with rasterio.open(tmp_path / "optical" / "only.tif") as src:
        for query in list(dm.train_sampler)[:5]:
            sample = ds[query]
            x0, y1 = query[0].start, query[1].stop
            col, row = ~src.transform * (x0, y1)
            assert col == pytest.approx(round(col)) and row == pytest.approx(round(row))
            window = rasterio.windows.Window(round(col), round(row), 16, 16)
            expected = src.read(window=window).astype(np.float32)
            got = sample["image"][:4].numpy()
            valid = np.isfinite(got)
            np.testing.assert_array_equal(got[valid], expected[valid])
            assert 0.25 * 160 <= row  # the test band is on top now


def test_predict_refuses_inputs_in_other_units(water_land: Path, tmp_path: Path) -> None:
    """A scene in 0-1 reflectance, or SAR in linear power, given to a model trained on
    digital numbers and dB: refused with what was expected and found, nothing written."""
    result = train(tiny_config(water_land, tmp_path / "run", *WATER_LAND), **QUIET)
    predictor = Predictor.from_adapter(result.adapter, device="cpu")
    scene, sar = water_land / "optical" / "s2.tif", water_land / "sar" / "s2.tif"
    with rasterio.open(scene) as src:
        refl = (src.read() / 10000.0).astype(np.float32)
        t = src.transform
    float_scene = write_raster(
        tmp_path / "float.tif", refl, transform=t, descriptions=("B", "G", "R", "NIR")
    )
    with pytest.raises(InputError, match=r"float.tif: optical values are about .*x those"):
        predictor.predict(float_scene, sar, tmp_path / "out", PredictOptions(**FAST))
    with rasterio.open(sar) as src:
        linear = np.where(src.read() == src.nodata, src.nodata, 10 ** (src.read() / 10))
        profile = src.profile
    linear_sar = tmp_path / "linear.tif"
    with rasterio.open(linear_sar, "w", **profile) as dst:
        dst.write(linear.astype(np.float32))
    with pytest.raises(InputError, match=r"linear.tif: SAR band VV .*convert it to db"):
        predictor.predict(scene, linear_sar, tmp_path / "out", PredictOptions(**FAST))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_all_nodata_scene_warns_and_maps_nothing(water_land: Path, tmp_path: Path) -> None:
    result = train(tiny_config(water_land, tmp_path / "run", *WATER_LAND), **QUIET)
    predictor = Predictor.from_adapter(result.adapter, device="cpu")
    with rasterio.open(water_land / "optical" / "s2.tif") as src:
        empty = np.zeros((4, src.height, src.width), np.uint16)
        t = src.transform
    scene = write_raster(tmp_path / "empty.tif", empty, transform=t, nodata=0)
    with pytest.warns(UserWarning, match=r"empty.tif: no pixel is valid in both the scene and"):
        out = predictor.predict(
            scene,
            water_land / "sar" / "s2.tif",
            tmp_path / "out",
            PredictOptions(**FAST, vector=None),
        )
    with rasterio.open(out.class_map) as src:
        assert (src.read(1) == src.nodata).all()


def test_too_much_overlap_is_refused() -> None:
    with pytest.raises(InputError, match=r"overlap 0.9 runs the model 101x .*at most 16x"):
        PredictOptions(window=512, overlap=0.9)
