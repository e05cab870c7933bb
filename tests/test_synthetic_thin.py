"""Thin features of the synthetic scenes: widths, shares, signatures, seamless blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import read_pixels, sar_on_optical_grid
from numpy.lib.stride_tricks import sliding_window_view

from gopt_geo.data import synthetic
from gopt_geo.data.synthetic import (
    OPTICAL_BANDS,
    SceneFiles,
    make_scene,
    render_scene,
)
from gopt_geo.data.synthetic_features import CANAL, POND, RIVER, TRACK, ThinFeatures

WATER, ROAD = 40, 60
NIR = OPTICAL_BANDS.index("NIR")


def _opening(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary opening by a k x k square: the union of the k x k squares inside ``mask``."""
    full = sliding_window_view(mask, (k, k)).all(axis=(-2, -1))
    out = np.zeros_like(mask)
    n, m = full.shape
    for dy in range(k):
        for dx in range(k):
            out[dy : dy + n, dx : dx + m] |= full
    return out


def _grow(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r + 1)^2 square."""
    padded = np.pad(mask, r)
    out = np.zeros_like(mask)
    h, w = mask.shape
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[SceneFiles, SceneFiles]:
    """One cloud-free scene with thin features and the same scene without them."""
    root = tmp_path_factory.mktemp("thin")
    with_thin = make_scene(root / "with", "s", 256, seed=5, cloud_cover=0.0)
    without = make_scene(root / "without", "s", 256, seed=5, cloud_cover=0.0, thin_features=False)
    return with_thin, without


def test_thin_features_change_only_their_pixels_and_are_a_real_share(
    pair: tuple[SceneFiles, SceneFiles],
) -> None:
    a, b = pair
    la, lb = read_pixels(a.labels)[0], read_pixels(b.labels)[0]
    thin = la != lb
    # drawn as the existing water and road classes, nothing else
    assert set(np.unique(la[thin]).tolist()) == {WATER, ROAD}
    water, road = thin & (la == WATER), thin & (la == ROAD)
    assert water.mean() > 0.015 and water.sum() > 0.2 * (la == WATER).sum()
    assert road.mean() > 0.005 and road.sum() > 0.2 * (la == ROAD).sum()
    # the rest of the scene is untouched: same optical pixels, same clouds
    changed = (read_pixels(a.optical) != read_pixels(b.optical)).any(axis=0)
    assert not (changed & ~thin).any() and changed[thin].mean() > 0.99
    assert np.array_equal(read_pixels(a.clouds), read_pixels(b.clouds))


def test_thin_features_are_thin(pair: tuple[SceneFiles, SceneFiles]) -> None:
    """Roads 1-2 px: no 3 x 3 block. Water: lines 1-3 px and ponds of a few px."""
    a, b = pair
    la, lb = read_pixels(a.labels)[0], read_pixels(b.labels)[0]
    thin = la != lb
    road, water = thin & (la == ROAD), thin & (la == WATER)
    assert _opening(road, 3).sum() < 0.05 * road.sum()
    assert _opening(water, 6).sum() < 0.01 * water.sum()  # ponds are 2-5 px a side
    assert _opening(water, 4).sum() < 0.5 * water.sum()
    # ... while lakes are wide: most of them survive the same opening
    lakes = (lb == WATER) & (la == WATER)
    assert _opening(lakes, 4).sum() > 0.9 * lakes.sum()


def test_widths_per_kind() -> None:
    """The drawn geometry, kind by kind, before the land-cover masks."""
    features = ThinFeatures(np.random.default_rng(3), 320, 320, 0, pixel_size=10.0)
    kind = features.render(np.arange(320) + 0.5, np.arange(320) + 0.5)
    for k in (RIVER, CANAL, TRACK, POND):
        assert (kind == k).sum() > 200, k
    river = kind == RIVER
    assert _opening(river, 4).sum() < 0.03 * river.sum()  # at most 3 px wide ...
    assert _opening(river, 2).sum() > 0.1 * river.sum()  # ... and wider than 1 px in places
    for k in (CANAL, TRACK):
        line = kind == k
        assert _opening(line, 3).sum() < 0.05 * line.sum(), k  # 1-2 px
    ponds = kind == POND
    assert _opening(ponds, 2).sum() > 0.9 * ponds.sum()
    assert not _opening(ponds, 6).any()


def test_widths_follow_the_pixel_size() -> None:
    """Widths are in metres: at 5 m the same rivers are twice as many pixels wide."""
    coarse = ThinFeatures(np.random.default_rng(4), 256, 256, 0, pixel_size=10.0)
    fine = ThinFeatures(np.random.default_rng(4), 256, 256, 0, pixel_size=5.0)
    assert fine.half[fine.kind == RIVER].mean() == pytest.approx(
        2 * coarse.half[coarse.kind == RIVER].mean(), rel=0.25
    )
    assert coarse.half.min() >= 0.5  # never below one pixel


def test_blocks_join_seamlessly() -> None:
    features = ThinFeatures(np.random.default_rng(7), 200, 150, 5, pixel_size=10.0)
    ys, xs = np.arange(-5, 205) + 0.5, np.arange(-5, 155) + 0.5
    whole = features.render(ys, xs)
    pieces = np.concatenate(
        [
            np.concatenate(
                [features.render(ys[r0:r1], xs[c0:c1]) for c0, c1 in ((0, 37), (37, 160))], axis=1
            )
            for r0, r1 in ((0, 3), (3, 90), (90, 210))
        ]
    )
    assert np.array_equal(whole, pieces) and whole.any()


def test_scene_is_the_same_whatever_the_block_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = make_scene(tmp_path / "a", "s", 96, seed=11)
    monkeypatch.setattr(synthetic, "_BLOCK_PIXELS", 96 * 16)  # blocks of 16 rows
    b = make_scene(tmp_path / "b", "s", 96, seed=11)
    assert np.array_equal(read_pixels(a.labels), read_pixels(b.labels))
    assert np.array_equal(read_pixels(a.clouds), read_pixels(b.clouds))


def test_signatures_against_the_surroundings(pair: tuple[SceneFiles, SceneFiles]) -> None:
    """Water: dark in NIR and SAR, low in the visible. Tracks: bright grey, bright in SAR."""
    a, b = pair
    la, lb = read_pixels(a.labels)[0], read_pixels(b.labels)[0]
    optical = read_pixels(a.optical).astype(np.float64)
    sar, sar_without = sar_on_optical_grid(a, False), sar_on_optical_grid(b, False)
    thin = la != lb
    plain_land = ~np.isin(la, [WATER, ROAD])

    def around(mask: np.ndarray) -> np.ndarray:  # land 2-4 px away
        return _grow(mask, 4) & ~_grow(mask, 1) & plain_land

    water, road = thin & (la == WATER), thin & (la == ROAD)
    w_ring, r_ring = around(water), around(road)
    visible = optical[:3].mean(axis=0)
    assert optical[NIR, water].mean() < 0.2 * optical[NIR, w_ring].mean()
    assert visible[water].mean() < visible[w_ring].mean()
    assert visible[water].mean() < 0.6 * visible[road].mean()
    assert np.all(sar[:, water].mean(axis=1) < sar[:, w_ring].mean(axis=1) - 3.0)  # dB

    assert visible[road].mean() > 1.5 * visible[r_ring].mean()
    assert np.all(sar[:, road].mean(axis=1) > sar[:, r_ring].mean(axis=1) + 1.0)
    # the same pixels without the features: the tracks brighten the SAR, water darkens it
    assert np.all((sar[:, road] - sar_without[:, road]).mean(axis=1) > 1.0)
    assert np.all((sar[:, water] - sar_without[:, water]).mean(axis=1) < -3.0)


def test_render_scene_blocks() -> None:
    """The block iterator (for other layouts): whole rows, all layers, thin features in."""
    blocks = list(render_scene((80, 96), seed=9, cloud_cover=0.25))
    assert blocks[0].rows.start == 0 and blocks[-1].rows.stop == 80
    assert all(x.rows.stop == y.rows.start for x, y in zip(blocks, blocks[1:], strict=False))
    codes = np.concatenate([blk.codes for blk in blocks])
    assert codes.shape == (80, 96) and set(np.unique(codes)) <= {0, 10, 20, 30, 40, 50, 60, 70}
    clouds = np.concatenate([blk.clouds for blk in blocks])
    assert abs(clouds.mean() - 0.25) < 0.02
    reflectance = np.concatenate([blk.reflectance for blk in blocks], axis=1)
    assert reflectance.shape == (4, 80, 96) and reflectance.dtype == np.uint16
    assert np.all(reflectance > 0)
    power = np.concatenate([blk.sar_power for blk in blocks], axis=1)
    assert power.shape == (2, 80, 96) and power.dtype == np.float32 and np.all(power > 0)
    plain = np.concatenate([b.codes for b in render_scene((80, 96), 9, thin_features=False)])
    assert (codes != plain).any()
