"""Sliding-window inference over a grid, as pure tensor work: plan, blend, stream rows.

Windows of ``window`` pixels with ``overlap`` are laid over the grid (edge windows shifted
inside, grids smaller than a window padded and cropped back), run through a
``model_forward`` callable in batches and blended with a smooth weight that is largest at
the window centre, where the model sees the most context. Only a strip of rows as tall as
one window is held: rows are handed on as soon as no later window touches them, so memory
grows with the grid's width, never with its height (design §6).

With a ``margin``, each window (its *core*) is read and run through the model with
``margin`` more pixels of the grid on every side, and only the core's logits are kept
and blended. A CNN's prediction near a window edge depends on the zero padding there, not
on the scene beyond it: with a margin, every kept pixel has at least ``margin`` real
pixels of context wherever the scene has them, which is what makes a tiled map agree
with a whole-scene pass (benchmarks/window_independence.py). At the grid border there is
no more scene, exactly as in a whole-scene pass; there the enlarged window is shifted
inside, so all enlarged windows have one size and batch together. Overlap blending still
applies, on the cores; the strip stays one core tall, only the model's batches grow.

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

from ..constants import Keep
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
#: the device; ``h, w`` are the enlarged window's size (window + 2 x margin, at most the
#: grid's; grids smaller than a window arrive padded to the window).
ModelForward = Callable[..., torch.Tensor]  # (images, valid[, keep]) -> logits
#: One batch of windows: the windows read (:meth:`WindowPlan.read_windows`), their pixels
#: [B, C, h, w] and validity [B, h, w].
Batch = tuple[Sequence[Window], np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]


#: Most windows per pixel an overlap may cost, against no overlap ((window/stride)^2):
#: beyond it a typo (0.95 for 0.25) would run the model hundreds of times per pixel.
MAX_OVERLAP_FACTOR = 16.0
#: The margin ``auto`` gives (pixels; at most half the window): on the demo model
#: (EfficientNet-Lite0) at window 128 it lifts agreement with a whole-scene pass from
#: 94.8 % to 99.1 % (32: 97.9 %; benchmarks/window_independence.py). A multiple of the backbone's
#: coarsest stride (32), so that a window's enlarged read starts on the whole-scene
#: pass's pixel grid of every feature map wherever the cores do.
AUTO_MARGIN = 64
#: Largest margin, as a multiple of the window: the model then runs on 9x the window's
#: pixels; beyond it a typo (640 for 64) would multiply the cost by a hundred.
MAX_MARGIN_FACTOR = 1.0


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


def check_margin(margin: int, window: int) -> None:
    """Refuse a margin that is negative, not whole pixels, or larger than the window."""
    if isinstance(margin, bool) or not isinstance(margin, int | np.integer):
        raise InputError(f"margin must be a whole number of pixels, got {margin!r}")
    if margin < 0:
        raise InputError(f"margin must be at least 0 pixels, got {margin}")
    if margin > MAX_MARGIN_FACTOR * window:
        raise InputError(
            f"margin {margin} is larger than the window ({window} pixels): the model would "
            f"run on {((window + 2 * margin) / window) ** 2:.0f}x the window's pixels; use a "
            f"margin of at most {int(MAX_MARGIN_FACTOR * window)} or a larger window"
        )


def axis_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets along one axis; the last window is shifted inside the grid."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window, stride))
    starts.append(size - window)
    return starts


def read_start(start: int, size: int, read: int, margin: int) -> int:
    """Where the enlarged window of a core starting at ``start`` begins along one axis:
    ``margin`` before the core, shifted inside a grid of ``size`` (``read`` long)."""
    return min(max(start - margin, 0), size - read)


@dataclass(frozen=True)
class Tile:
    """One window of a plan: ``core``, the pixels it predicts (blended into the map), and
    ``read``, the pixels read and run through the model (the core with the margin)."""

    core: Window
    read: Window


@dataclass(frozen=True)
class WindowPlan:
    """The windows over a ``height`` x ``width`` grid, in row-major order.

    Row-major order is what lets :func:`stream_rows` finish rows early: once a window
    starts at row ``r``, no later window touches the rows above ``r``. ``margin``: pixels
    of context read around each window (module docstring); 0, the window alone.
    """

    height: int
    width: int
    window: int
    stride: int
    margin: int = 0

    @classmethod
    def for_grid(
        cls, height: int, width: int, window: int, overlap: float, margin: int = 0
    ) -> WindowPlan:
        check_window(window, overlap)
        check_margin(margin, window)
        return cls(height, width, window, window_stride(window, overlap), int(margin))

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

    @property
    def read_height(self) -> int:
        """Height of the enlarged windows: the window and its margins, at most the grid."""
        return min(self.window + 2 * self.margin, self.height)

    @property
    def read_width(self) -> int:
        return min(self.window + 2 * self.margin, self.width)

    def windows(self) -> list[Window]:
        """The cores: what each window predicts."""
        return [t.core for t in self.tiles()]

    def read_windows(self) -> list[Window]:
        """What each window reads (the core and its margin): hand these to the reader."""
        return [t.read for t in self.tiles()]

    def tiles(self) -> list[Tile]:
        """Every window (core) with the window it reads, in row-major order."""
        h, w = self.tile_height, self.tile_width
        rh, rw = self.read_height, self.read_width
        rows = [(r, read_start(r, self.height, rh, self.margin)) for r in self.row_starts]
        cols = [(c, read_start(c, self.width, rw, self.margin)) for c in self.col_starts]
        return [
            Tile(Window(c, r, w, h), Window(rc, rr, rw, rh)) for r, rr in rows for c, rc in cols
        ]

    @property
    def model_pixels(self) -> int:
        """Pixels run through the model (each enlarged window, padded to the window when
        the grid is smaller): the compute a plan costs."""
        return len(self) * max(self.read_height, self.window) * max(self.read_width, self.window)

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
    model_forward: ModelForward,
    images: torch.Tensor,
    valid: torch.Tensor,
    window: int,
    keep: Keep | None = None,
) -> torch.Tensor:
    """``model_forward`` on window-sized inputs: a grid smaller than a window is padded
    (reflected where it can be, else replicated) and the logits are cropped back; ``keep``
    is passed on when given (padding is added at the bottom and right: boxes still hold)."""
    h, w = images.shape[-2:]
    pad_h, pad_w = max(0, window - h), max(0, window - w)
    if pad_h or pad_w:
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        images = F.pad(images, (0, pad_w, 0, pad_h), mode=mode)
        valid = F.pad(valid[:, None].float(), (0, pad_w, 0, pad_h), mode=mode)[:, 0] > 0.5
    logits = model_forward(images, valid) if keep is None else model_forward(images, valid, keep)
    expected = (images.shape[0], images.shape[-2], images.shape[-1])
    if logits.ndim != 4 or (logits.shape[0], *logits.shape[-2:]) != expected:
        raise ValueError(
            f"model_forward returned logits of shape {tuple(logits.shape)} for "
            f"{expected[0]} window(s) of {expected[1]}x{expected[2]} pixels"
        )
    return logits[..., :h, :w]


def _forward_valid(
    model_forward: ModelForward,
    images: torch.Tensor,
    valid: torch.Tensor,
    window: int,
    num_classes: int,
    keep: Keep | None = None,
) -> torch.Tensor:
    """:func:`_forward_padded` on the windows that hold a valid pixel; zeros for the rest.

    A window without one only ever yields nodata (a pixel is valid only where every
    window that read it found it valid), so its logits are never looked at: a scene's
    nodata border or an empty scene costs reading, not the model.
    """
    run = valid.flatten(1).any(1)
    if bool(run.all()):
        return _forward_padded(model_forward, images, valid, window, keep)
    shape = (images.shape[0], num_classes, *images.shape[-2:])
    if not bool(run.any()):
        return torch.zeros(shape, device=images.device)
    boxes = None if keep is None else [b for b, r in zip(keep, run.tolist(), strict=True) if r]
    part = _forward_padded(model_forward, images[run], valid[run], window, boxes)
    logits = part.new_zeros((images.shape[0], *part.shape[1:]))
    logits[run] = part
    return logits


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
    cores: bool = False,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Blend the windows of ``plan`` and yield the grid's rows as soon as they are final.

    ``batches`` gives ``(windows, images [B, C, h, w], valid [B, h, w])`` (numpy or torch)
    for the windows of ``plan.read_windows()`` (the windows themselves without a margin),
    in that order; ``model_forward`` maps them to logits ``[B, K, h, w]``
    (``K = num_classes``) on ``device``, and is called only with windows that hold a
    valid pixel; each window's core is cut out of them and blended. Yields
    ``(row0, logits [K, n, W], valid [n, W])``: blended logits and validity (every window
    that read a pixel found it valid) of rows ``row0 .. row0 + n``, top to bottom, each row
    exactly once, at most ``chunk`` rows at a time. ``on_batch(n)`` is called after each
    batch of ``n`` windows is blended (a progress bar). ``cores``: ``model_forward`` also
    takes ``keep``, a (row, col, height, width) box per window of the pixels that will be
    kept (its core; `Keep`), and may leave the logits outside them unfinished: a model's
    per-pixel work (the detail path) then skips the margin.
    """
    device = torch.device(device)
    weight = blend_weight(plan.tile_height, plan.tile_width).to(device)
    strip = RowStrip(num_classes, plan.tile_height, plan.width, device)
    h, w = plan.tile_height, plan.tile_width
    tiles = iter(plan.tiles())
    for windows, images, valid in batches:
        x = torch.as_tensor(images).to(device, non_blocking=True)
        v = torch.as_tensor(valid).to(device)
        batch_tiles = []
        for win in windows:
            tile = next(tiles, None)
            if tile is None or win != tile.read:
                raise ValueError(
                    f"window {win} is not the plan's next window to read "
                    f"({tile.read if tile else 'none left'}); give plan.read_windows() in order"
                )
            batch_tiles.append(tile)
        offsets = [
            (int(t.core.row_off - t.read.row_off), int(t.core.col_off - t.read.col_off))
            for t in batch_tiles
        ]
        keep = [(r, c, h, w) for r, c in offsets] if cores else None
        logits = _forward_valid(model_forward, x, v, plan.window, num_classes, keep)
        if logits.shape[1] != num_classes:
            raise ValueError(f"model_forward returned {logits.shape[1]} classes, not {num_classes}")
        for j, (tile, (r, c)) in enumerate(zip(batch_tiles, offsets, strict=True)):
            core = tile.core
            yield from strip.drain(int(core.row_off), chunk)
            strip.add(core, logits[j, :, r : r + h, c : c + w], weight, v[j, r : r + h, c : c + w])
        if on_batch is not None:
            on_batch(len(windows))
    yield from strip.drain(plan.height, chunk)
