"""Synthetic scenes: formats, grids, physics (class signatures, clouds), determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import read_pixels, sar_on_optical_grid
from rasterio.warp import transform_bounds
from shapely.geometry import box

from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
from gopt_geo.data.synthetic import (
    OPTICAL_BANDS,
    SAR_BANDS,
    SAR_NODATA,
    SceneFiles,
    make_scene,
    make_scenes,
)
from gopt_geo.errors import InputError

CITY, VILLAGE, WATER, FARMLAND, FOREST, ROAD = 20, 30, 40, 10, 50, 60


@pytest.fixture(scope="module")
def clear_scene(tmp_path_factory: pytest.TempPathFactory) -> SceneFiles:
    """A cloud-free 256 x 256 scene: class signatures can be read everywhere."""
    return make_scene(tmp_path_factory.mktemp("clear"), "clear", 256, seed=5, cloud_cover=0.0)


@pytest.fixture(scope="module")
def cloudy_scene(tmp_path_factory: pytest.TempPathFactory) -> SceneFiles:
    """A non-square scene with the default (seed-drawn) cloud cover."""
    return make_scene(tmp_path_factory.mktemp("cloudy"), "cloudy", (192, 256), seed=3)


def test_files_bands_dtypes_and_grids(cloudy_scene: SceneFiles) -> None:
    f = cloudy_scene
    assert f.optical.parent.name == "optical" and f.optical.name == "cloudy.tif"
    with (
        rasterio.open(f.optical) as opt,
        rasterio.open(f.sar) as sar,
        rasterio.open(f.labels) as lab,
        rasterio.open(f.clouds) as cld,
    ):
        assert (opt.height, opt.width, opt.count) == (192, 256, 4)
        assert opt.dtypes == ("uint16",) * 4 and opt.nodata == 0
        assert opt.descriptions == OPTICAL_BANDS
        assert opt.crs.is_projected and opt.crs.to_epsg() == 32649
        assert opt.profile["tiled"] and opt.compression.value == "DEFLATE"

        assert sar.count == 2 and sar.dtypes == ("float32",) * 2
        assert sar.descriptions == SAR_BANDS and sar.nodata == SAR_NODATA
        assert sar.crs.to_epsg() == 4326
        # Coarser than the optical 10 m: about 15 m (1 degree of latitude ~ 111.3 km).
        sar_res_m = abs(sar.transform.e) * 111_320.0
        assert 14.0 < sar_res_m < 16.0
        # The SAR covers the whole optical footprint.
        w, s, e, n = transform_bounds(opt.crs, sar.crs, *opt.bounds, densify_pts=21)
        assert sar.bounds.left < w and sar.bounds.right > e
        assert sar.bounds.bottom < s and sar.bounds.top > n
        assert np.all(sar.read() != SAR_NODATA)

        for r in (lab, cld):
            assert (r.crs, r.transform, r.shape, r.dtypes) == (
                opt.crs,
                opt.transform,
                opt.shape,
                ("uint8",),
            )
        labels = lab.read(1)
        assert set(np.unique(labels)) <= WHU_OPT_SAR_CLASSES.valid_codes()
        # Every class appears, even in a small scene.
        assert set(np.unique(labels)) >= set(WHU_OPT_SAR_CLASSES.codes)
        assert lab.colormap(1)[CITY][:3] == next(
            c.color for c in WHU_OPT_SAR_CLASSES.classes if c.code == CITY
        )
        assert set(np.unique(cld.read(1))) <= {0, 1}


def test_land_cover_is_patchy_with_thin_roads(clear_scene: SceneFiles) -> None:
    labels = read_pixels(clear_scene.labels)[0]
    same_right = (labels[:, 1:] == labels[:, :-1]).mean()
    same_down = (labels[1:] == labels[:-1]).mean()
    assert same_right > 0.85 and same_down > 0.85  # coherent patches, not salt and pepper
    road = labels == ROAD
    assert 0.005 < road.mean() < 0.15
    # Thin: almost no road pixel has road all around it within 2 pixels.
    inner = np.ones_like(road[2:-2, 2:-2])
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            inner &= road[2 + dy : road.shape[0] - 2 + dy, 2 + dx : road.shape[1] - 2 + dx]
    assert inner.sum() < 0.05 * road.sum()


def test_class_signatures(clear_scene: SceneFiles) -> None:
    """City and village: alike in optical, far apart in SAR. Water darkest in NIR and SAR."""
    optical = read_pixels(clear_scene.optical).astype(np.float64)
    labels = read_pixels(clear_scene.labels)[0]
    sar = sar_on_optical_grid(clear_scene)
    present = [c for c in WHU_OPT_SAR_CLASSES.codes if (labels == c).sum() > 50]

    def mean(data: np.ndarray, code: int) -> np.ndarray:
        return np.nanmean(data[:, labels == code], axis=1)

    city_opt, village_opt = mean(optical, CITY), mean(optical, VILLAGE)
    assert np.all(np.abs(city_opt - village_opt) / village_opt < 0.1)
    city_sar, village_sar = mean(sar, CITY), mean(sar, VILLAGE)
    assert np.all(city_sar - village_sar > 5.0)  # dB, both VV and VH

    nir = OPTICAL_BANDS.index("NIR")
    for code in present:
        if code != WATER:
            assert mean(optical, WATER)[nir] < mean(optical, code)[nir]
            assert np.all(mean(sar, WATER) < mean(sar, code))
    for veg in (FARMLAND, FOREST):
        assert mean(optical, veg)[nir] > 1.5 * mean(optical, CITY)[nir]


def test_clouds_hide_optical_not_sar(cloudy_scene: SceneFiles) -> None:
    optical = read_pixels(cloudy_scene.optical).astype(np.float64)
    labels = read_pixels(cloudy_scene.labels)[0]
    cloud = read_pixels(cloudy_scene.clouds)[0].astype(bool)
    sar = sar_on_optical_grid(cloudy_scene)
    assert 0.18 <= cloud.mean() <= 0.42
    # Under clouds: bright, nearly white in all four bands, whatever the land cover.
    assert np.all(optical[:, cloud].mean(axis=1) > 6000)
    nir = OPTICAL_BANDS.index("NIR")
    water, farm = cloud & (labels == WATER), cloud & (labels == FARMLAND)
    assert water.sum() > 20 and farm.sum() > 20
    assert abs(optical[nir, water].mean() - optical[nir, farm].mean()) < 300
    # ... while the SAR still tells water from farmland there.
    assert np.all(np.nanmean(sar[:, farm], axis=1) - np.nanmean(sar[:, water], axis=1) > 5)


@pytest.mark.parametrize("cover", [0.0, 0.1, 0.35])
def test_cloud_cover_is_honoured(tmp_path: Path, cover: float) -> None:
    f = make_scene(tmp_path, "c", 128, seed=1, cloud_cover=cover)
    assert abs(read_pixels(f.clouds).mean() - cover) < 0.02


def test_deterministic_for_a_seed_and_different_across_seeds(tmp_path: Path) -> None:
    a = make_scene(tmp_path / "a", "s", 128, seed=7)
    b = make_scene(tmp_path / "b", "s", 128, seed=7)
    c = make_scene(tmp_path / "c", "s", 128, seed=8)
    for field in ("optical", "sar", "labels", "clouds"):
        assert getattr(a, field).read_bytes() == getattr(b, field).read_bytes(), field
    assert not np.array_equal(read_pixels(a.labels), read_pixels(c.labels))
    assert not np.array_equal(read_pixels(a.sar), read_pixels(c.sar))
    # Nothing but the four files is left behind (no staging folders).
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "clouds",
        "labels",
        "optical",
        "sar",
    ]


def test_nodata_collar(tmp_path: Path) -> None:
    f = make_scene(tmp_path, "collar", 96, seed=2, nodata_collar=6, cloud_cover=0.3)
    optical = read_pixels(f.optical)
    labels, clouds = read_pixels(f.labels, 1), read_pixels(f.clouds, 1)
    border = np.ones(labels.shape, dtype=bool)
    border[6:-6, 6:-6] = False
    assert np.all(optical[:, border] == 0) and np.all(optical[:, ~border] > 0)
    assert np.all(labels[border] == 0) and np.all(clouds[border] == 0)
    assert abs(clouds[~border].mean() - 0.3) < 0.02
    # SAR is not affected by the optical collar.
    assert not np.isnan(sar_on_optical_grid(f)).any()


def test_partial_sar_coverage(tmp_path: Path) -> None:
    f = make_scene(tmp_path, "part", 128, seed=4, sar_coverage=0.6)
    missing = np.isnan(sar_on_optical_grid(f)).any(axis=0)
    assert not missing[:70, :70].any()  # north-west part covered
    assert missing[:, 85:].all() and missing[85:, :].all()  # east and south strips not
    assert 1 - 0.7**2 < missing.mean() < 1 - 0.6**2 + 0.02


def test_make_scenes_are_disjoint_and_distinct(tmp_path: Path) -> None:
    scenes = make_scenes(tmp_path, 3, size=64, seed=0, cloud_cover=0.2)
    assert [s.name for s in scenes] == ["scene_000", "scene_001", "scene_002"]
    footprints = []
    for s in scenes:
        with rasterio.open(s.optical) as src:
            footprints.append(box(*src.bounds))
    for i in range(3):
        for j in range(i + 1, 3):
            assert not footprints[i].intersects(footprints[j])
    assert not np.array_equal(read_pixels(scenes[0].labels), read_pixels(scenes[1].labels))
    assert len(list((tmp_path / "optical").glob("*.tif"))) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cloud_cover": 1.5}, "cloud_cover must be in [0, 1], got 1.5"),
        ({"sar_coverage": 0.0}, "sar_coverage must be in (0, 1], got 0.0"),
        ({"nodata_collar": 30}, "nodata_collar 30 leaves no valid pixels in a 64x64 scene"),
        ({"size": 8}, "size must be >= 16 pixels per axis, got 8"),
        ({"pixel_size": -1.0}, "pixel_size must be > 0, got -1.0"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"size": 64, **kwargs}
    with pytest.raises(InputError) as err:
        make_scene(tmp_path, "bad", **args)
    assert str(err.value) == f"synthetic scene 'bad': {message}"
    assert not any(tmp_path.iterdir())
