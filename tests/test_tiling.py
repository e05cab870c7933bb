"""The tiling on arrays alone: plan, blend weight, streaming row strip; no file, no model class."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from gopt_geo.errors import InputError
from gopt_geo.inference.tiling import (
    ROW_CHUNK,
    RowStrip,
    WindowPlan,
    blend_weight,
    check_window,
    stream_rows,
)

K, C = 5, 3
MIX = torch.randn(K, C, generator=torch.Generator().manual_seed(0))


def pointwise(images: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Logits of each pixel from that pixel only (a 1x1 convolution)."""
    return torch.einsum("kc,bchw->bkhw", MIX, images)


def scene_arrays(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(C, height, width)).astype(np.float32)
    valid = rng.random((height, width)) > 0.1
    return image, valid


def batches_of(
    image: np.ndarray, valid: np.ndarray, plan: WindowPlan, batch_size: int, log: list | None = None
) -> Iterator[tuple[list, np.ndarray, np.ndarray]]:
    """What a reader hands the tiling: windows in plan order, batch by batch."""
    windows = plan.read_windows()  # the windows themselves when there is no margin
    for i in range(0, len(windows), batch_size):
        group = windows[i : i + batch_size]
        cut = [
            (slice(w.row_off, w.row_off + w.height), slice(w.col_off, w.col_off + w.width))
            for w in group
        ]
        if log is not None:
            log.append(("batch", i))
        yield (
            group,
            np.stack([image[:, r, c] for r, c in cut]),
            np.stack([valid[r, c] for r, c in cut]),
        )


def run(
    image: np.ndarray,
    valid: np.ndarray,
    window: int,
    overlap: float,
    batch_size: int = 3,
    margin: int = 0,
    **kw,
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Row starts, and the rows put together: logits [K, H, W] and validity [H, W]."""
    height, width = valid.shape
    plan = WindowPlan.for_grid(height, width, window, overlap, margin)
    starts, logits, valids = [], [], []
    for row0, rows, ok in stream_rows(
        plan, batches_of(image, valid, plan, batch_size), pointwise, K, "cpu", **kw
    ):
        starts.append(row0)
        logits.append(rows)
        valids.append(ok)
        assert rows.shape[0] == K and rows.shape[2] == width and ok.shape == rows.shape[1:]
        assert ok.dtype == torch.bool
    return starts, torch.cat(logits, dim=1).numpy(), torch.cat(valids).numpy()


@pytest.mark.parametrize(
    ("height", "width", "window", "overlap"),
    [
        (130, 170, 32, 0.5),  # edge windows shifted inside
        (130, 170, 48, 0.25),
        (100, 100, 32, 0.0),  # no overlap, not a multiple of the window
        (97, 61, 16, 0.75),  # stride 4: 16 windows over each pixel (the most allowed)
        (40, 50, 64, 0.25),  # smaller than a window: padded (reflect) and cropped back
        (10, 40, 32, 0.25),  # padded by more than the grid's height: replicate
    ],
)
def test_pointwise_model_gives_the_per_pixel_result(
    height: int, width: int, window: int, overlap: float
) -> None:
    image, valid = scene_arrays(height, width)
    starts, logits, ok = run(image, valid, window, overlap)
    expected = pointwise(torch.from_numpy(image)[None], torch.from_numpy(valid)[None])[0].numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(logits.argmax(0), expected.argmax(0))
    np.testing.assert_array_equal(ok, valid)


@pytest.mark.parametrize(
    ("height", "width", "window", "overlap", "margin"),
    [
        (130, 170, 32, 0.5, 8),
        (97, 61, 16, 0.75, 16),  # the largest margin a 16-pixel window takes
        (40, 50, 64, 0.25, 32),  # smaller than a window: the margin clipped to nothing
        (70, 200, 48, 0.0, 20),  # enlarged windows taller than the grid: clipped to it
    ],
)
def test_margin_keeps_the_pointwise_result_and_the_validity(
    height: int, width: int, window: int, overlap: float, margin: int
) -> None:
    """Only the cores are blended: the margins' pixels and validity change nothing."""
    image, valid = scene_arrays(height, width)
    _, logits, ok = run(image, valid, window, overlap, margin=margin)
    expected = pointwise(torch.from_numpy(image)[None], torch.from_numpy(valid)[None])[0].numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ok, valid)


def test_rows_cover_the_grid_once_in_order_a_few_at_a_time() -> None:
    image, valid = scene_arrays(300, 90)
    plan = WindowPlan.for_grid(300, 90, 128, 0.25)
    spans = [
        (row0, rows.shape[1])
        for row0, rows, _ in stream_rows(
            plan, batches_of(image, valid, plan, 2), pointwise, K, "cpu", chunk=40
        )
    ]
    assert spans[0][0] == 0
    for (r0, n), (r1, _) in zip(spans, spans[1:], strict=False):
        assert r1 == r0 + n  # contiguous: no row twice, none left out
    assert spans[-1][0] + spans[-1][1] == 300
    assert max(n for _, n in spans) <= 40


def test_rows_leave_before_the_last_window_is_read() -> None:
    """Streaming: memory is one strip, so rows are handed on while windows still come in."""
    image, valid = scene_arrays(200, 60)
    plan = WindowPlan.for_grid(200, 60, 32, 0.5)
    log: list[tuple[str, int]] = []
    for row0, _, _ in stream_rows(
        plan, batches_of(image, valid, plan, 2, log), pointwise, K, "cpu"
    ):
        log.append(("rows", row0))
    kinds = [k for k, _ in log]
    assert kinds.index("rows") < len(kinds) - 1 - kinds[::-1].index("batch")


def test_a_pixel_is_valid_only_where_every_window_found_it_valid() -> None:
    image, valid = scene_arrays(64, 64)
    plan = WindowPlan.for_grid(64, 64, 32, 0.5)

    def batches() -> Iterator[tuple[list, np.ndarray, np.ndarray]]:
        for group, images, ok in batches_of(image, valid, plan, 1):
            w = group[0]
            if (w.row_off, w.col_off) == (16, 16):  # one window sees its corner as nodata
                ok = ok.copy()
                ok[:, :2, :2] = False
            yield group, images, ok

    rows = list(stream_rows(plan, batches(), pointwise, K, "cpu"))
    ok = torch.cat([v for _, _, v in rows]).numpy()
    expected = valid.copy()
    expected[16:18, 16:18] = False
    np.testing.assert_array_equal(ok, expected)


def test_model_sees_whole_windows_and_progress_counts_them() -> None:
    image, valid = scene_arrays(20, 50)
    plan = WindowPlan.for_grid(20, 50, 32, 0.5)
    shapes: list[tuple[tuple[int, ...], tuple[int, ...], torch.dtype]] = []
    done: list[int] = []

    def forward(images: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        shapes.append((tuple(images.shape), tuple(ok.shape), ok.dtype))
        return pointwise(images, ok)

    list(
        stream_rows(
            plan, batches_of(image, valid, plan, 2), forward, K, "cpu", on_batch=done.append
        )
    )
    assert all(s[0][-2:] == (32, 32) and s[1][-2:] == (32, 32) for s in shapes)
    assert all(s[2] == torch.bool for s in shapes)
    assert sum(done) == len(plan) == 3 and done == [2, 1]


@pytest.mark.parametrize(("overlap", "margin"), [(0.0, 0), (0.5, 8)])
def test_windows_without_a_valid_pixel_skip_the_model(overlap: float, margin: int) -> None:
    """A nodata border costs no model time, and the map is the one a full run gives."""
    image, valid = scene_arrays(96, 96)
    valid[:, :48] = False  # the left half is nodata
    seen: list[int] = []

    def forward(images: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        assert bool(ok.flatten(1).any(1).all()), "a window without a valid pixel was run"
        seen.append(images.shape[0])
        return pointwise(images, ok)

    plan = WindowPlan.for_grid(96, 96, 32, overlap, margin)
    rows = list(stream_rows(plan, batches_of(image, valid, plan, 4), forward, K, "cpu"))
    logits = torch.cat([r for _, r, _ in rows], dim=1).numpy()
    ok = torch.cat([v for _, _, v in rows]).numpy()
    # every valid pixel gets the logits the model gives it (the per-pixel result)
    full = pointwise(torch.from_numpy(image)[None], torch.from_numpy(valid)[None])[0].numpy()
    np.testing.assert_array_equal(ok, valid)
    np.testing.assert_allclose(logits[:, valid], full[:, valid], rtol=1e-5, atol=1e-5)
    with_valid = sum(
        bool(valid[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width].any())
        for w in plan.read_windows()
    )
    assert 0 < sum(seen) == with_valid < len(plan)
    empty = list(stream_rows(plan, batches_of(image, valid & False, plan, 4), forward, K, "cpu"))
    assert sum(seen) == with_valid  # nothing more ran
    assert not torch.cat([v for _, _, v in empty]).any()


def test_wrong_model_output_is_named() -> None:
    image, valid = scene_arrays(40, 40)
    plan = WindowPlan.for_grid(40, 40, 32, 0.25)
    with pytest.raises(ValueError, match=r"returned 4 classes, not 5"):
        list(
            stream_rows(
                plan,
                batches_of(image, valid, plan, 2),
                lambda x, v: pointwise(x, v)[:, :4],
                K,
                "cpu",
            )
        )
    with pytest.raises(
        ValueError, match=r"logits of shape \(2, 5, 16, 16\) for 2 window\(s\) of 32x32"
    ):
        list(
            stream_rows(
                plan,
                batches_of(image, valid, plan, 2),
                lambda x, v: pointwise(x, v)[..., ::2, ::2],
                K,
                "cpu",
            )
        )


def test_strip_moves_up_in_place() -> None:
    strip = RowStrip(2, 8, 3, torch.device("cpu"))
    strip.logits.copy_(torch.arange(48, dtype=torch.float32).view(2, 8, 3))
    strip.weight.fill_(1.0)
    before, buffer = strip.logits.clone(), strip.logits.data_ptr()
    out = list(strip.drain(3, chunk=2))
    assert [(r, t.shape[1]) for r, t, _ in out] == [(0, 2), (2, 1)]
    torch.testing.assert_close(torch.cat([t for _, t, _ in out], dim=1), before[:, :3])
    assert strip.top == 3 and strip.logits.data_ptr() == buffer
    torch.testing.assert_close(strip.logits[:, :5], before[:, 3:])
    assert (strip.logits[:, 5:] == 0).all() and (strip.weight[5:] == 0).all()
    assert list(strip.drain(3)) == []  # nothing left above row 3
    assert ROW_CHUNK == 64  # rows finished at a time: temporaries stay a few rows high


def test_plan_and_blend_weight() -> None:
    plan = WindowPlan.for_grid(100, 70, 32, 0.25)
    assert plan.stride == 24 and plan.overlap == pytest.approx(0.25)
    assert plan.row_starts == [0, 24, 48, 68] and plan.col_starts == [0, 24, 38]
    w = blend_weight(32, 20)
    assert w.shape == (32, 20) and w.dtype == torch.float32 and w.min() > 0
    with pytest.raises(InputError, match=r"window must be at least 16 pixels, got 15"):
        check_window(15, 0.0)
    with pytest.raises(InputError, match=r"overlap must be in \[0, 1\), got 1"):
        WindowPlan.for_grid(100, 100, 32, 1)
