"""Whole-scene prediction: grids, tiling, nodata, outputs, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import SYNTH_ROUTING, make_adapter, read_pixels
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.warp import reproject
from rasterio.windows import Window
from safetensors.torch import load_file, save_file
from torch import nn

from gopt_geo.data.classes import CLASSES_TAG, WHU_OPT_SAR_CLASSES
from gopt_geo.data.synthetic import (
    SAR_NODATA,
    SceneFiles,
    make_scene,
)
from gopt_geo.errors import InputError
from gopt_geo.inference import PredictOptions, Predictor, WindowPlan, blend_weight
from gopt_geo.inference.reader import SceneReader
from gopt_geo.models import ModelConfig, SegmentationOutput, build_model
from gopt_geo.outputs.grid import Grid
from gopt_geo.outputs.writers import StripRasterWriter

pytestmark = pytest.mark.filterwarnings("ignore::gopt_geo.models.RandomBackboneWarning")

CLASSES = WHU_OPT_SAR_CLASSES
ROUTING = SYNTH_ROUTING
NODATA = 255


class PointwiseModel(nn.Module):
    """A 1x1 convolution: every pixel's logits depend on that pixel only."""

    def __init__(self, aux_channels: int = 3, num_classes: int = 7) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3 + aux_channels, num_classes, kernel_size=1)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor, target=None) -> SegmentationOutput:
        return SegmentationOutput(self.conv(torch.cat([rgb, aux], dim=1)))


class LocalCNN(nn.Module):
    """Translation-equivariant, receptive field 11 px, batch norm (eval mode matters).

    GoPT's backbones are not like this on purpose: squeeze-excitation (EfficientNet),
    self-attention (ViT) and the prompters' class tokens see the whole window, so their
    output depends on the window's extent, not only on a pixel's surroundings. With such
    a model tiling differences measure the model's context, not the tiling. A model with
    a finite receptive field isolates what the predictor is responsible for: with Hann
    blending pixels near window edges (bad context) hardly count; with a uniform average
    this test fails (about 97.5%).
    """

    def __init__(self, aux_channels: int = 3, num_classes: int = 7) -> None:
        super().__init__()
        torch.manual_seed(1)
        layers: list[nn.Module] = []
        channels = 3 + aux_channels
        for _ in range(5):
            layers += [nn.Conv2d(channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
            channels = 16
        self.body = nn.Sequential(*layers, nn.Conv2d(16, num_classes, 1))
        for m in self.body:
            if isinstance(m, nn.Conv2d):  # strong enough that the map has several classes
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                m.weight.data *= 1.5
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor, target=None) -> SegmentationOutput:
        return SegmentationOutput(self.body(torch.cat([rgb, aux], dim=1)))


def tiny_gopt() -> nn.Module:
    return build_model(
        ModelConfig(backbone="test_efficientnet", weights="random", num_classes=7, aux_channels=3)
    )


def whole_scene_codes(model: nn.Module, scene: SceneFiles) -> np.ndarray:
    """Reference: the model on the whole scene at once (no windows), nodata -> 255."""
    with SceneReader(scene.optical, scene.sar, ROUTING) as reader:
        g = reader.grid
        image, valid = reader.read(Window(0, 0, g.width, g.height))
    x = torch.from_numpy(image)[None]
    v = torch.from_numpy(valid)[None, None]
    rgb, aux = ROUTING.prepare(x)
    with torch.inference_mode():
        logits = model.eval()(torch.where(v, rgb, 0.0), torch.where(v, aux, 0.0)).logits[0]
    codes = CLASSES.index_to_code_lut()[logits.argmax(0).numpy()]
    codes[~valid] = NODATA
    return codes


def prewarp_sar(scene: SceneFiles, out: Path) -> Path:
    """The scene's SAR reprojected onto the optical grid up front (bilinear)."""
    with rasterio.open(scene.optical) as opt, rasterio.open(scene.sar) as sar:
        dst = np.full((sar.count, opt.height, opt.width), SAR_NODATA, dtype=np.float32)
        reproject(
            sar.read(),
            dst,
            src_transform=sar.transform,
            src_crs=sar.crs,
            src_nodata=sar.nodata,
            dst_transform=opt.transform,
            dst_crs=opt.crs,
            dst_nodata=SAR_NODATA,
            resampling=Resampling.bilinear,
        )
        profile = opt.profile | {"count": sar.count, "dtype": "float32", "nodata": SAR_NODATA}
    with rasterio.open(out, "w", **profile) as dst_file:
        dst_file.write(dst)
    return out


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory: pytest.TempPathFactory) -> SceneFiles:
    """A 300x260 scene "s": several 64- and 128-pixel windows, not square."""
    return make_scene(tmp_path_factory.mktemp("scene"), "s", size=(300, 260), seed=3)


def strip_crs(src_path: Path, out: Path) -> Path:
    with rasterio.open(src_path) as src:
        profile = {k: v for k, v in src.profile.items() if k not in ("crs", "transform")}
        data = src.read()
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    return out


def test_windows_cover_the_grid_and_stay_inside() -> None:
    plan = WindowPlan.for_grid(260, 300, 64, 0.5)
    cover = np.zeros((260, 300), dtype=int)
    for w in plan.windows():
        assert (w.width, w.height) == (64, 64)
        assert 0 <= w.col_off and w.col_off + 64 <= 300 and 0 <= w.row_off and w.row_off + 64 <= 260
        cover[w.row_off : w.row_off + 64, w.col_off : w.col_off + 64] += 1
    assert cover.min() >= 1
    assert plan.row_starts[-1] == 260 - 64 and plan.col_starts[-1] == 300 - 64  # shifted inside
    small = WindowPlan.for_grid(40, 50, 64, 0.25)
    assert len(small) == 1 and (small.tile_height, small.tile_width) == (40, 50)


def test_blend_weight_is_smooth_peaked_and_never_zero() -> None:
    w = blend_weight(64, 64)
    assert w.min() > 0
    assert w[32, 32] == w.max() and w[0, 0] == w.min()
    # 50% overlap: neighbouring windows' weights sum to one (sin^2 + cos^2).
    row = blend_weight(1, 64)[0]
    assert torch.allclose(row[32:] + row[:32], torch.ones(32), atol=2e-3)


def test_output_grid_equals_optical_grid_with_wgs84_sar(
    big_scene: SceneFiles, tmp_path: Path
) -> None:
    with rasterio.open(big_scene.sar) as sar:
        assert sar.crs.to_epsg() == 4326  # another CRS and resolution than the optical
    model = tiny_gopt()
    predictor = Predictor(model, ROUTING, CLASSES, device="cpu")
    options = PredictOptions(window=128, overlap=0.25, vector=None, progress=False)
    on_the_fly = predictor.predict(big_scene.optical, big_scene.sar, tmp_path / "a", options)
    prewarped = prewarp_sar(big_scene, tmp_path / "sar_on_optical_grid.tif")
    reference = predictor.predict(big_scene.optical, prewarped, tmp_path / "b", options)
    with rasterio.open(big_scene.optical) as opt, rasterio.open(on_the_fly.class_map) as out:
        assert out.crs == opt.crs
        assert out.transform == opt.transform
        assert (out.width, out.height) == (opt.width, opt.height)
    a, b = read_pixels(on_the_fly.class_map, 1), read_pixels(reference.class_map, 1)
    assert (a == b).mean() >= 0.995
    assert (a != NODATA).mean() > 0.95


def test_tiling_does_not_show_pointwise_exact(big_scene: SceneFiles, tmp_path: Path) -> None:
    model = PointwiseModel()
    result = Predictor(model, ROUTING, CLASSES, device="cpu").predict(
        big_scene.optical,
        big_scene.sar,
        tmp_path,
        PredictOptions(window=64, overlap=0.5, vector=None, progress=False),
    )
    assert result.stats.windows == 9 * 8
    np.testing.assert_array_equal(
        read_pixels(result.class_map, 1), whole_scene_codes(model, big_scene)
    )


def test_tiling_does_not_show_local_model(big_scene: SceneFiles, tmp_path: Path) -> None:
    model = LocalCNN()
    result = Predictor(model, ROUTING, CLASSES, device="cpu").predict(
        big_scene.optical,
        big_scene.sar,
        tmp_path,
        PredictOptions(window=64, overlap=0.5, vector=None, progress=False),
    )
    tiled, whole = read_pixels(result.class_map, 1), whole_scene_codes(model, big_scene)
    assert (tiled == whole).mean() >= 0.99
    _, counts = np.unique(whole, return_counts=True)
    assert (counts > 0.01 * whole.size).sum() >= 3  # a map with structure, not one class


def test_small_scene_is_padded_and_cropped_back(tmp_path: Path) -> None:
    small = make_scene(tmp_path, "small", size=(40, 50), seed=5)
    model = PointwiseModel()
    result = Predictor(model, ROUTING, CLASSES, device="cpu").predict(
        small.optical,
        small.sar,
        tmp_path / "out",
        PredictOptions(window=64, vector=None, progress=False),
    )
    assert read_pixels(result.class_map, 1).shape == (40, 50)
    np.testing.assert_array_equal(read_pixels(result.class_map, 1), whole_scene_codes(model, small))


def test_nodata_collar_and_sar_footprint_give_nodata_exactly(tmp_path: Path) -> None:
    scene = make_scene(tmp_path, "n", size=(200, 180), seed=2, nodata_collar=7, sar_coverage=0.7)
    # Expected mask, computed independently of the predictor: optical pixels whose bands
    # are all nodata, and pixels where the SAR warped up front (bilinear) is nodata.
    optical = read_pixels(scene.optical)
    sar_on_grid = read_pixels(prewarp_sar(scene, tmp_path / "sar_grid.tif"))
    expected = (optical == 0).all(0) | (sar_on_grid == SAR_NODATA).any(0)
    result = Predictor(PointwiseModel(), ROUTING, CLASSES, device="cpu").predict(
        scene.optical,
        scene.sar,
        tmp_path / "out",
        PredictOptions(window=64, overlap=0.25, vector=None, progress=False),
    )
    codes = read_pixels(result.class_map, 1)
    collar = np.ones((200, 180), dtype=bool)
    collar[7:-7, 7:-7] = False
    assert (codes[collar] == NODATA).all()
    assert (codes[:, -40:] == NODATA).all() and (codes[-45:, :] == NODATA).all()  # outside SAR
    np.testing.assert_array_equal(codes == NODATA, expected)
    assert set(np.unique(codes[~expected])) <= set(CLASSES.codes)
    confidence = read_pixels(result.confidence, 1)
    np.testing.assert_array_equal(confidence == 0, expected)
    assert result.stats.nodata_pixels == int(expected.sum())


def test_sar_nodata_inside_the_scene_is_masked(big_scene: SceneFiles, tmp_path: Path) -> None:
    sar = prewarp_sar(big_scene, tmp_path / "sar.tif")
    with rasterio.open(sar, "r+") as dst:
        vh = dst.read(2)
        vh[100:140, 50:90] = SAR_NODATA  # one band missing is enough
        dst.write(vh, 2)
    result = Predictor(PointwiseModel(), ROUTING, CLASSES, device="cpu").predict(
        big_scene.optical,
        sar,
        tmp_path / "out",
        PredictOptions(window=64, vector=None, progress=False),
    )
    codes = read_pixels(result.class_map, 1)
    assert (codes[100:140, 50:90] == NODATA).all()
    assert (codes != NODATA).sum() == 300 * 260 - 40 * 40


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_rasters_without_crs_on_the_same_pixel_grid(big_scene: SceneFiles, tmp_path: Path) -> None:
    """WHU-OPT-SAR-like tiles: no CRS on either file, co-registered pixel for pixel."""
    sar = prewarp_sar(big_scene, tmp_path / "sar.tif")
    optical = strip_crs(big_scene.optical, tmp_path / "opt_nocrs.tif")
    sar_nocrs = strip_crs(sar, tmp_path / "sar_nocrs.tif")
    predictor = Predictor(PointwiseModel(), ROUTING, CLASSES, device="cpu")
    options = PredictOptions(window=64, vector="gpkg", progress=False)
    plain = predictor.predict(optical, sar_nocrs, tmp_path / "plain", options)
    georef = predictor.predict(big_scene.optical, sar, tmp_path / "georef", options)
    with rasterio.open(plain.class_map) as out:
        assert out.crs is None and out.shape == (300, 260)
    np.testing.assert_array_equal(read_pixels(plain.class_map, 1), read_pixels(georef.class_map, 1))
    report = json.loads(plain.report_json.read_text())
    assert all("area_ha" not in c for c in report["classes"])  # no CRS: no ground areas
    assert report["vector"]["features"] == georef.stats.vector_features > 0


def test_outputs_are_cogs_with_codes_names_and_colours(
    big_scene: SceneFiles, tmp_path: Path
) -> None:
    result = Predictor(PointwiseModel(), ROUTING, CLASSES, device="cpu").predict(
        big_scene.optical,
        big_scene.sar,
        tmp_path,
        PredictOptions(window=96, probabilities=True, vector="gpkg", progress=False),
    )
    with rasterio.open(result.class_map) as cm:
        assert cm.dtypes[0] == "uint8" and cm.nodata == NODATA
        assert cm.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert cm.profile["tiled"] and cm.profile["compress"] == "deflate"
        codes = cm.read(1)
        assert set(np.unique(codes)) <= {*CLASSES.codes, NODATA}  # dataset codes, not indices
        cmap = cm.colormap(1)
        for c in CLASSES.classes:
            assert cmap[c.code][:3] == c.color
        scheme = json.loads(cm.tags()[CLASSES_TAG])
        assert [c["name"] for c in scheme["classes"]] == CLASSES.names
        assert cm.tags(1)["CLASS_40"] == "water"
    assert "<Row" in Path(f"{result.class_map}.aux.xml").read_text()  # RAT for QGIS
    probs = read_pixels(result.probabilities).astype(int)
    valid = codes != NODATA
    assert probs.shape == (7, 300, 260)
    assert np.abs(probs[:, valid].sum(0) - 254).max() <= 4  # rounding of 7 bands
    top = CLASSES.index_to_code_lut()[probs.argmax(0)]
    assert (top[valid] == codes[valid]).mean() > 0.99  # ties after rounding aside
    conf = read_pixels(result.confidence, 1)
    assert conf[valid].min() >= 255 // 7 and (conf[~valid] == 0).all()
    report = json.loads(result.report_json.read_text())
    counts = {c: int((codes == c).sum()) for c in CLASSES.codes}
    for entry in report["classes"]:
        assert entry["pixels"] == counts[entry["code"]]
        assert entry["area_ha"] == pytest.approx(counts[entry["code"]] * 100 / 1e4)
    assert report["prediction"]["windows"] == result.stats.windows
    assert report["timing"]["mpix_per_s"] > 0
    assert "water" in result.report_markdown.read_text()
    assert result.vector is not None and result.vector.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_overviews_built_for_large_outputs(tmp_path: Path) -> None:
    grid = Grid(rasterio.crs.CRS.from_epsg(32649), from_origin(0, 0, 10, -10), 1300, 1100)
    writer = StripRasterWriter(
        tmp_path / "m.tif",
        grid,
        count=1,
        dtype="uint8",
        nodata=NODATA,
        overview_resampling="MODE",
        colormap=CLASSES.colormap(NODATA),
    )
    data = np.repeat(np.array(CLASSES.codes, dtype=np.uint8), 1100 * 1300 // 7 + 1)[: 1100 * 1300]
    data = data.reshape(1, 1100, 1300)
    for r0 in range(0, 1100, 137):  # strips that do not line up with the tiles
        writer.write(data[:, r0 : r0 + 137])
    path = writer.finish()
    with rasterio.open(path) as src:
        assert src.overviews(1) == [2, 4]
        assert src.tags(ns="IMAGE_STRUCTURE")["OVERVIEW_RESAMPLING"] == "MODE"
        np.testing.assert_array_equal(src.read(), data)


def test_rows_are_written_before_the_scene_is_done(
    big_scene: SceneFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streaming: finished rows leave the accumulators while windows are still running."""
    events: list[tuple[str, int]] = []
    original = StripRasterWriter.write

    def spy(self: StripRasterWriter, rows: np.ndarray) -> None:
        if self.count == 1 and self.path.name.endswith("_classes.tif"):
            events.append(("rows", rows.shape[1]))
        original(self, rows)

    class Counting(PointwiseModel):
        def forward(self, rgb, aux, target=None):
            events.append(("batch", rgb.shape[0]))
            return super().forward(rgb, aux)

    monkeypatch.setattr(StripRasterWriter, "write", spy)
    Predictor(Counting(), ROUTING, CLASSES, device="cpu").predict(
        big_scene.optical,
        big_scene.sar,
        tmp_path,
        PredictOptions(
            window=64, overlap=0.5, batch_size=2, vector=None, progress=False, confidence=False
        ),
    )
    kinds = [k for k, _ in events]
    assert kinds.index("rows") < len(kinds) - 1 - kinds[::-1].index("batch")
    assert sum(n for k, n in events if k == "rows") == 300
    assert max(n for k, n in events if k == "rows") <= 64  # never more than one window tall


def test_progress_bar_over_windows(big_scene: SceneFiles, tmp_path: Path, capsys) -> None:
    Predictor(PointwiseModel(), ROUTING, CLASSES, device="cpu").predict(
        big_scene.optical,
        big_scene.sar,
        tmp_path,
        PredictOptions(window=128, vector=None, progress=True),
    )
    err = capsys.readouterr().err
    assert "window" in err and "9/9" in err


def test_on_forward_hook_sees_every_model_call(big_scene: SceneFiles, tmp_path: Path) -> None:
    """The public timing hook (benchmarks): one call per batch of windows the model ran,
    the windows adding up to the plan's, and the maps unchanged by it."""
    calls: list[tuple[int, float]] = []
    options = PredictOptions(window=64, batch_size=4, vector=None, progress=False)
    plain = Predictor(PointwiseModel(), ROUTING, CLASSES, device="cpu")
    reference = plain.predict(big_scene.optical, big_scene.sar, tmp_path / "plain", options)
    hooked = Predictor(PointwiseModel(), ROUTING, CLASSES, device="cpu")
    hooked.on_forward = lambda windows, seconds: calls.append((windows, seconds))
    result = hooked.predict(big_scene.optical, big_scene.sar, tmp_path / "hooked", options)
    assert [n for n, _ in calls] == [4] * (result.stats.windows // 4) + (
        [result.stats.windows % 4] if result.stats.windows % 4 else []
    )
    assert all(seconds >= 0 for _, seconds in calls)
    np.testing.assert_array_equal(
        read_pixels(result.class_map, 1), read_pixels(reference.class_map, 1)
    )
    np.testing.assert_array_equal(
        read_pixels(result.confidence, 1), read_pixels(reference.confidence, 1)
    )


# ---------------------------------------------------------------------------- bad input


def predict(scene: Path, sar: Path | None, out: Path, **kw) -> None:
    Predictor(PointwiseModel(), ROUTING, CLASSES, device="cpu").predict(
        scene, sar, out, PredictOptions(window=64, vector=None, progress=False, **kw)
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, r"^batch size must be at least 1, got 0$"),
        ({"window": 8}, r"^window must be at least 16 pixels, got 8$"),
        ({"overlap": 1.0}, r"^overlap must be in \[0, 1\), got 1\.0$"),
        ({"overlap": -0.1}, r"^overlap must be in \[0, 1\), got -0\.1$"),
        (
            {"vector": "shp"},
            r"^unknown vector format 'shp' \(use gpkg, parquet, geojson or none\)$",
        ),
        ({"min_area": -1.0}, r"^--min-area -1\.0: the minimum polygon area must be >= 0 m²$"),
        ({"simplify": -0.5}, r"^--simplify -0\.5: the tolerance must be >= 0 metres$"),
    ],
)
def test_bad_options_are_refused_in_one_line(options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        PredictOptions(**options)


def test_vector_option_is_normalised() -> None:
    assert PredictOptions(vector="none").vector is None
    assert PredictOptions(vector="None").vector is None
    assert PredictOptions(vector=None).vector is None
    assert PredictOptions(vector="GPKG").vector == "gpkg"


def test_sar_not_overlapping_the_scene(big_scene: SceneFiles, tmp_path: Path) -> None:
    far = make_scene(tmp_path, "far", size=64, seed=1, origin=(700_000.0, 3_300_000.0))
    with pytest.raises(InputError, match=r"sar/far\.tif: SAR raster does not overlap"):
        predict(big_scene.optical, far.sar, tmp_path / "out")


def test_band_count_differs_from_the_adapter(big_scene: SceneFiles, tmp_path: Path) -> None:
    three = tmp_path / "three_bands.tif"
    with rasterio.open(big_scene.optical) as src:
        profile = src.profile | {"count": 3}
        data = src.read([1, 2, 3])
    with rasterio.open(three, "w", **profile) as dst:
        dst.write(data)
    with pytest.raises(
        InputError,
        match=r"three_bands\.tif: optical raster has 3 band\(s\), but the model expects 4",
    ):
        predict(three, big_scene.sar, tmp_path / "out")


def test_unreadable_or_corrupt_tiff(big_scene: SceneFiles, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    with pytest.raises(InputError, match=r"garbage\.tif: not a readable raster"):
        predict(garbage, big_scene.sar, tmp_path / "out")
    truncated = tmp_path / "truncated_sar.tif"
    shutil.copy(prewarp_sar(big_scene, tmp_path / "full.tif"), truncated)
    with truncated.open("r+b") as f:
        f.truncate(truncated.stat().st_size // 3)
    with pytest.raises(InputError, match=r"truncated_sar\.tif: cannot read pixels \(.*TIFF"):
        predict(big_scene.optical, truncated, tmp_path / "out2")
    assert not (tmp_path / "out2" / "s_classes.tif").exists()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_scene_without_crs_with_a_sar_that_has_one(big_scene: SceneFiles, tmp_path: Path) -> None:
    no_crs = strip_crs(big_scene.optical, tmp_path / "no_crs.tif")
    with pytest.raises(
        InputError, match=r"no_crs\.tif: raster has no CRS, but .*sar/s\.tif has one"
    ):
        predict(no_crs, big_scene.sar, tmp_path / "out")


def test_existing_output_needs_overwrite(big_scene: SceneFiles, tmp_path: Path) -> None:
    predict(big_scene.optical, big_scene.sar, tmp_path)
    before = (tmp_path / "s_classes.tif").stat().st_mtime_ns
    with pytest.raises(InputError, match=r"s_classes\.tif: output already exists"):
        predict(big_scene.optical, big_scene.sar, tmp_path)
    assert (tmp_path / "s_classes.tif").stat().st_mtime_ns == before
    predict(big_scene.optical, big_scene.sar, tmp_path, overwrite=True)


def test_interrupted_run_leaves_nothing_that_looks_complete(
    big_scene: SceneFiles, tmp_path: Path
) -> None:
    class Failing(PointwiseModel):
        calls = 0

        def forward(self, rgb, aux, target=None):
            Failing.calls += 1
            if Failing.calls == 5:
                raise KeyboardInterrupt
            return super().forward(rgb, aux)

    with pytest.raises(KeyboardInterrupt):
        Predictor(Failing(), ROUTING, CLASSES, device="cpu").predict(
            big_scene.optical,
            big_scene.sar,
            tmp_path,
            PredictOptions(window=64, batch_size=2, progress=False, probabilities=True),
        )
    assert list(tmp_path.iterdir()) == []


def test_adapter_for_another_backbone(big_scene: SceneFiles, tmp_path: Path) -> None:
    import timm

    weights = tmp_path / "backbone.safetensors"
    save_file(timm.create_model("test_efficientnet").state_dict(), str(weights))
    adapter = make_adapter(tmp_path / "adapter.safetensors", weights=str(weights))
    predictor = Predictor.from_adapter(adapter, device="cpu")  # the same backbone loads
    assert predictor.routing == ROUTING and predictor.classes == CLASSES
    state = load_file(str(weights))
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 10)
    state[key] = state[key] + 0.5  # other weights under the same file name
    save_file(state, str(weights))
    with pytest.raises(InputError, match=r"adapter\.safetensors: adapter was trained on backbone"):
        Predictor.from_adapter(adapter, device="cpu")
