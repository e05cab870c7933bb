"""Sliding-window inference over a grid, as pure tensor work: plan, blend, stream rows.

Windows of ``window`` pixels with ``overlap`` are laid over the grid (edge windows shifted
inside, grids smaller than a window padded and cropped back), run through a
``model_forward`` callable in batches and blended with a smooth weight that is largest at
the window centre, where the model sees the most context. Only a strip of rows as tall as
one window is held: rows are handed on as soon as no later window touches them, so memory
grows with the grid's width, never with its height (design §6).

Nothing here opens a file or knows a model class: windows come in as arrays, logits go
out as rows. That keeps the tiling testable on arrays (a pointwise ``model_forward`` must
give exactly the per-pixel result, whatever the window and overlap) and lets the reader
(read-ahead thread, SAR warping) and the outputs (COG writers) change without touching it.
The split follows TerraTorch's ``tiled_inference`` (a ``model_forward`` callable, its own
blend mask); unlike it, the whole grid is never held in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.windows import Window

from ..errors import InputError

#: Smallest value of the 1-D blending weight: never exactly zero, so that pixels on the
#: grid border, seen by one window only and at its edge, still get a prediction.
MIN_BLEND_WEIGHT = 1e-3
#: Smallest window a plan accepts.
MIN_WINDOW = 16
#: Rows finished at a time: the temporaries of blending (and of whatever consumes the rows:
#: softmax, argmax) stay a few rows high however wide the grid. Finishing the whole strip
#: at once made memory grow with the width, several strips over.
ROW_CHUNK = 64

#: ``model_forward(images [B, C, h, w], valid [B, h, w]) -> logits [B, K, h, w]``, all on
#: the device; ``h, w`` are the window size (smaller grids arrive padded).
ModelForward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: One batch of windows: the windows, their pixels [B, C, h, w] and validity [B, h, w].
Batch = tuple[Sequence[Window], np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]


#: Most windows per pixel an overlap may cost, against no overlap ((window/stride)^2):
#: beyond it a typo (0.95 for 0.25) would run the model hundreds of times per pixel.
MAX_OVERLAP_FACTOR = 16.0


def window_stride(window: int, overlap: float) -> int:
    """Pixels between the starts of neighbouring windows."""
    return max(1, int(round(window * (1.0 - overlap))))


def check_window(window: int, overlap: float) -> None:
    """Refuse a window or overlap no plan can be made from (one line, naming the value)."""
    if window < MIN_WINDOW:
        raise InputError(f"window must be at least {MIN_WINDOW} pixels, got {window}")
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"overlap must be in [0, 1), got {overlap}")
    factor = (window / window_stride(window, overlap)) ** 2
    if factor > MAX_OVERLAP_FACTOR:
        raise InputError(
            f"overlap {overlap} runs the model {factor:.0f}x as often as no overlap (at most "
            f"{MAX_OVERLAP_FACTOR:.0f}x); use an overlap of at most 0.75"
        )


def axis_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets along one axis; the last window is shifted inside the grid."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window, stride))
    starts.append(size - window)
    return starts


@dataclass(frozen=True)
class WindowPlan:
    """The windows over a ``height`` x ``width`` grid, in row-major order.

    Row-major order is what lets :func:`stream_rows` finish rows early: once a window
    starts at row ``r``, no later window touches the rows above ``r``.
    """

    height: int
    width: int
    window: int
    stride: int

    @classmethod
    def for_grid(cls, height: int, width: int, window: int, overlap: float) -> WindowPlan:
        check_window(window, overlap)
        return cls(height, width, window, window_stride(window, overlap))

    @property
    def overlap(self) -> float:
        """The overlap the stride gives (the requested one, up to rounding)."""
        return 1 - self.stride / self.window

    @property
    def tile_height(self) -> int:
        return min(self.window, self.height)

    @property
    def tile_width(self) -> int:
        return min(self.window, self.width)

    @property
    def row_starts(self) -> list[int]:
        return axis_starts(self.height, self.window, self.stride)

    @property
    def col_starts(self) -> list[int]:
        return axis_starts(self.width, self.window, self.stride)

    def windows(self) -> list[Window]:
        h, w = self.tile_height, self.tile_width
        return [Window(c, r, w, h) for r in self.row_starts for c in self.col_starts]

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)


def blend_weight(height: int, width: int) -> torch.Tensor:
    """Separable Hann (sin²) weight: 1 at the centre, small but never zero at the edges.

    With 50% overlap the weights of neighbouring windows sum to one (sin² + cos² = 1);
    in any case the blend divides by the summed weights.
    """

    def hann(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float64)
        return torch.sin(math.pi * (i + 0.5) / n).pow(2).clamp_min(MIN_BLEND_WEIGHT)

    return (hann(height)[:, None] * hann(width)[None, :]).float()


class RowStrip:
    """Blend accumulators for the rows ``top .. top + rows`` of the grid, on one device.

    ``rows`` is one window's height: with windows in row-major order, that is all that is
    ever unfinished at once.
    """

    def __init__(self, num_classes: int, rows: int, width: int, device: torch.device) -> None:
        self.rows = rows
        self.top = 0
        self.logits = torch.zeros(num_classes, rows, width, device=device)
        self.weight = torch.zeros(rows, width, device=device)
        self.valid = torch.ones(rows, width, dtype=torch.bool, device=device)

    def add(
        self, window: Window, logits: torch.Tensor, weight: torch.Tensor, valid: torch.Tensor
    ) -> None:
        """Blend one window's logits [K, h, w] (weighted) and validity [h, w] into the strip."""
        r = int(window.row_off) - self.top
        c = int(window.col_off)
        h, w = weight.shape
        if r < 0 or r + h > self.rows:
            raise RuntimeError(f"window {window} outside the accumulator strip at row {self.top}")
        self.logits[:, r : r + h, c : c + w] += logits * weight
        self.weight[r : r + h, c : c + w] += weight
        # A pixel is valid only if every window that read it found it valid (warped
        # footprints can differ by a fraction of a pixel between windows).
        self.valid[r : r + h, c : c + w] &= valid

    def finished(
        self, until: int, chunk: int = ROW_CHUNK
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(first row, blended logits [K, n, W], validity [n, W]) of rows ``top .. until``,
        ``chunk`` rows at a time (see :data:`ROW_CHUNK`). Both are fresh tensors, so they
        stay valid after the strip moves on."""
        n = until - self.top
        for r in range(0, n, chunk):
            e = min(n, r + chunk)
            yield self.top + r, self.logits[:, r:e] / self.weight[r:e], self.valid[r:e].clone()

    def discard(self, until: int) -> None:
        """Drop rows ``top .. until`` and move the rest up, without a full-strip copy."""
        n = until - self.top
        keep = self.rows - n
        for buf, fill in ((self.logits, 0.0), (self.weight, 0.0), (self.valid, True)):
            # forward copy in blocks of n rows: a block's source lies entirely below its
            # destination, so nothing is overwritten before it is read
            for r in range(0, keep, n):
                e = min(keep, r + n)
                buf[..., r:e, :] = buf[..., r + n : e + n, :]
            buf[..., keep:, :] = fill
        self.top = until

    def drain(
        self, until: int, chunk: int = ROW_CHUNK
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """:meth:`finished` rows up to ``until``, then :meth:`discard` them."""
        if until <= self.top:
            return
        yield from self.finished(until, chunk)
        self.discard(until)


def _forward_padded(
    model_forward: ModelForward, images: torch.Tensor, valid: torch.Tensor, window: int
) -> torch.Tensor:
    """``model_forward`` on window-sized inputs: a grid smaller than a window is padded
    (reflected where it can be, else replicated) and the logits are cropped back."""
    h, w = images.shape[-2:]
    pad_h, pad_w = max(0, window - h), max(0, window - w)
    if pad_h or pad_w:
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        images = F.pad(images, (0, pad_w, 0, pad_h), mode=mode)
        valid = F.pad(valid[:, None].float(), (0, pad_w, 0, pad_h), mode=mode)[:, 0] > 0.5
    logits = model_forward(images, valid)
    expected = (images.shape[0], images.shape[-2], images.shape[-1])
    if logits.ndim != 4 or (logits.shape[0], *logits.shape[-2:]) != expected:
        raise ValueError(
            f"model_forward returned logits of shape {tuple(logits.shape)} for "
            f"{expected[0]} window(s) of {expected[1]}x{expected[2]} pixels"
        )
    return logits[..., :h, :w]


@torch.inference_mode()
def stream_rows(
    plan: WindowPlan,
    batches: Iterable[Batch],
    model_forward: ModelForward,
    num_classes: int,
    device: str | torch.device,
    *,
    on_batch: Callable[[int], object] | None = None,
    chunk: int = ROW_CHUNK,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Blend the windows of ``plan`` and yield the grid's rows as soon as they are final.

    ``batches`` gives ``(windows, images [B, C, h, w], valid [B, h, w])`` (numpy or torch)
    for the windows of ``plan.windows()``, in that order; ``model_forward`` maps them to
    logits ``[B, K, h, w]`` (``K = num_classes``) on ``device``. Yields
    ``(row0, logits [K, n, W], valid [n, W])``: blended logits and validity (every window
    that read a pixel found it valid) of rows ``row0 .. row0 + n``, top to bottom, each row
    exactly once, at most ``chunk`` rows at a time. ``on_batch(n)`` is called after each
    batch of ``n`` windows is blended (a progress bar).
    """
    device = torch.device(device)
    weight = blend_weight(plan.tile_height, plan.tile_width).to(device)
    strip = RowStrip(num_classes, plan.tile_height, plan.width, device)
    for windows, images, valid in batches:
        x = torch.as_tensor(images).to(device, non_blocking=True)
        v = torch.as_tensor(valid).to(device)
        logits = _forward_padded(model_forward, x, v, plan.window)
        if logits.shape[1] != num_classes:
            raise ValueError(f"model_forward returned {logits.shape[1]} classes, not {num_classes}")
        for j, win in enumerate(windows):
            yield from strip.drain(int(win.row_off), chunk)
            strip.add(win, logits[j], weight, v[j])
        if on_batch is not None:
            on_batch(len(windows))
    yield from strip.drain(plan.height, chunk)
