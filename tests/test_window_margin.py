"""Tiling with a margin of context: each window is read larger and only its core is kept.

On arrays, a model whose output at a pixel depends on its neighbourhood (a box filter with
zero padding, like a CNN's) gives exactly the whole-array result once the margin covers
its radius, and does not without one; end to end, a tiny random GoPT model agrees with a
whole-scene pass better with a margin than without; bad margins are refused in one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from conftest import SYNTH_ROUTING
from rasterio.windows import Window

from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
from gopt_geo.data.synthetic import make_scene
from gopt_geo.errors import InputError
from gopt_geo.inference import PredictOptions, Predictor
from gopt_geo.inference.tiling import AUTO_MARGIN, WindowPlan, stream_rows
from gopt_geo.models import ModelConfig, build_model

pytestmark = pytest.mark.filterwarnings("ignore::gopt_geo.models.RandomBackboneWarning")

K, C = 4, 3
RADIUS = 5
MIX = torch.randn(K, C, generator=torch.Generator().manual_seed(0))


def box_filter(images: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Logits from the mean of a (2r+1)² neighbourhood, zero padded at the input's edges:
    a pixel near a window edge sees zeros where the scene goes on."""
    mixed = torch.einsum("kc,bchw->bkhw", MIX, images)
    kernel = torch.full((K, 1, 2 * RADIUS + 1, 2 * RADIUS + 1), 1.0 / (2 * RADIUS + 1) ** 2)
    return F.conv2d(mixed, kernel, padding=RADIUS, groups=K)


def grid(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(C, height, width)).astype(np.float32), np.ones((height, width), bool)


def batches_of(
    image: np.ndarray, valid: np.ndarray, plan: WindowPlan, batch_size: int
) -> Iterator[tuple[list[Window], np.ndarray, np.ndarray]]:
    """What the reader hands the tiling: the enlarged windows, in plan order."""
    windows = plan.read_windows()
    for i in range(0, len(windows), batch_size):
        group = windows[i : i + batch_size]
        cut = [
            (slice(w.row_off, w.row_off + w.height), slice(w.col_off, w.col_off + w.width))
            for w in group
        ]
        yield (
            group,
            np.stack([image[:, r, c] for r, c in cut]),
            np.stack([valid[r, c] for r, c in cut]),
        )


def tiled(image: np.ndarray, valid: np.ndarray, window: int, overlap: float, margin: int):
    plan = WindowPlan.for_grid(*valid.shape, window, overlap, margin)
    rows = list(stream_rows(plan, batches_of(image, valid, plan, 3), box_filter, K, "cpu"))
    return torch.cat([r for _, r, _ in rows], dim=1).numpy(), torch.cat([v for *_, v in rows])


def whole(image: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(image)[None]
    return box_filter(x, torch.ones(x.shape[-2:], dtype=torch.bool)[None])[0].numpy()


@pytest.mark.parametrize(
    ("height", "width", "window", "overlap", "margin"),
    [
        (130, 170, 32, 0.25, RADIUS),  # margin exactly the radius
        (130, 170, 32, 0.0, 8),  # no overlap: the cores tile the grid
        (97, 61, 24, 0.5, 12),  # edge windows shifted inside, enlarged windows too
        (40, 150, 32, 0.25, 16),  # enlarged windows as tall as the grid
        (20, 150, 32, 0.25, 8),  # grid lower than a window: padded, margin only sideways
    ],
)
def test_margin_covering_the_receptive_field_gives_the_whole_array_result(
    height: int, width: int, window: int, overlap: float, margin: int
) -> None:
    image, valid = grid(height, width)
    logits, ok = tiled(image, valid, window, overlap, margin)
    expected = whole(image)
    if height >= window:  # a padded grid is reflected, not zero padded, below the scene
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_allclose(
            logits[:, : height - RADIUS], expected[:, : height - RADIUS], rtol=1e-5, atol=1e-5
        )
    assert ok.all() and ok.shape == (height, width)


def test_without_a_margin_window_edges_show() -> None:
    image, valid = grid(130, 170)
    expected = whole(image)
    plain, _ = tiled(image, valid, 32, 0.25, 0)
    assert np.abs(plain - expected).max() > 1e-2  # the zero padding at window edges
    short, _ = tiled(image, valid, 32, 0.25, RADIUS - 2)
    assert np.abs(short - expected).max() > 1e-3  # a margin short of the radius too
    assert np.abs(short - expected).max() < np.abs(plain - expected).max()


def test_plan_with_a_margin() -> None:
    plan = WindowPlan.for_grid(100, 70, 32, 0.25, margin=8)
    assert plan.windows() == [t.core for t in plan.tiles()]
    assert plan.row_starts == [0, 24, 48, 68] and plan.col_starts == [0, 24, 38]
    assert (plan.read_height, plan.read_width) == (48, 48)
    reads = plan.read_windows()
    assert {(w.height, w.width) for w in reads} == {(48, 48)}  # one size: they batch
    # rows: the core's margin before it, shifted inside at the grid's edges
    assert sorted({int(w.row_off) for w in reads}) == [0, 16, 40, 52]
    assert sorted({int(w.col_off) for w in reads}) == [0, 16, 22]
    for t in plan.tiles():  # every core inside its read window
        assert t.read.row_off <= t.core.row_off
        assert t.core.row_off + t.core.height <= t.read.row_off + t.read.height
        assert t.read.col_off <= t.core.col_off
        assert t.core.col_off + t.core.width <= t.read.col_off + t.read.width
    assert plan.model_pixels == len(plan) * 48 * 48
    assert WindowPlan.for_grid(100, 70, 32, 0.25).read_windows() == plan.windows()
    # one window over a small grid: the margin is clipped to nothing, as a whole-scene pass
    one = WindowPlan.for_grid(50, 60, 64, 0.25, margin=32)
    assert one.read_windows() == one.windows() == [Window(0, 0, 60, 50)]


def test_batches_out_of_plan_are_refused() -> None:
    image, valid = grid(64, 64)
    plan = WindowPlan.for_grid(64, 64, 32, 0.25, margin=8)
    cores = WindowPlan.for_grid(64, 64, 32, 0.25)  # the cores given instead of the reads

    with pytest.raises(ValueError, match=r"not the plan's next window to read"):
        list(stream_rows(plan, batches_of(image, valid, cores, 2), box_filter, K, "cpu"))


def test_memory_stays_one_core_tall() -> None:
    """The strip holds one window's rows; only the model's batch grows with the margin."""
    image, valid = grid(300, 40)
    plan = WindowPlan.for_grid(300, 40, 32, 0.25, margin=16)
    spans = [
        (r0, rows.shape[1])
        for r0, rows, _ in stream_rows(
            plan, batches_of(image, valid, plan, 2), box_filter, K, "cpu"
        )
    ]
    assert max(n for _, n in spans) <= 32
    assert spans[-1][0] + spans[-1][1] == 300


# ------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"margin": -1}, r"^margin must be at least 0 pixels, got -1$"),
        ({"margin": "-3"}, r"^margin must be auto or a whole number of pixels, got '-3'$"),
        ({"margin": "wide"}, r"^margin must be auto or a whole number of pixels, got 'wide'$"),
        ({"margin": 2.5}, r"^margin must be a whole number of pixels, got 2\.5$"),
        (
            {"window": 64, "margin": 65},
            r"^margin 65 is larger than the window \(64 pixels\): the model would run on 9x "
            r"the window's pixels; use a margin of at most 64 or a larger window$",
        ),
        ({"window": 8, "margin": 1}, r"^window must be at least 16 pixels, got 8$"),
    ],
)
def test_bad_margins_are_refused_in_one_line(options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        PredictOptions(**options)


def test_margin_option_forms() -> None:
    assert PredictOptions().margin == "auto"
    assert PredictOptions().margin_pixels == AUTO_MARGIN == 64
    assert PredictOptions(window=64).margin_pixels == 32  # at most half the window
    assert PredictOptions(margin="AUTO").margin == "auto"
    assert PredictOptions(margin="16").margin == PredictOptions(margin=16).margin == 16
    assert PredictOptions(margin=0).margin_pixels == 0
    # resume compares the pixels used: auto and its value are the same maps
    assert PredictOptions(margin="auto").output_settings()["margin"] == 64
    assert PredictOptions(margin=64).output_settings() == PredictOptions().output_settings()
    assert PredictOptions(margin=0).output_settings() != PredictOptions().output_settings()


# ---------------------------------------------------------------------- end to end

CLASSES = WHU_OPT_SAR_CLASSES
ROUTING = SYNTH_ROUTING


def test_margin_brings_tiled_gopt_closer_to_the_whole_scene(tmp_path: Path) -> None:
    scene = make_scene(tmp_path, "m", size=(192, 160), seed=4)
    torch.manual_seed(0)  # the prompters' and head's random init: the same in any test order
    model = build_model(
        ModelConfig(
            backbone="test_efficientnet",
            weights="random",
            num_classes=7,
            aux_channels=3,
            cup_context="scene",  # groups from the scene: what is left is the receptive field
        )
    )
    predictor = Predictor(model, ROUTING, CLASSES, device="cpu")

    def codes(window: int, margin: int, out: str) -> np.ndarray:
        options = PredictOptions(
            window=window, overlap=0.25, margin=margin, vector=None, progress=False
        )
        result = predictor.predict(scene.optical, scene.sar, tmp_path / out, options)
        with rasterio.open(result.class_map) as src:
            return src.read(1)

    reference = codes(192, 0, "whole")
    plain = (codes(64, 0, "plain") == reference).mean()
    margin = (codes(64, 32, "margin") == reference).mean()
    assert margin >= plain + 0.05  # about 73 % -> 91 % with this seed
