"""A light multi-level segmentation head, optionally with a full-resolution detail path
(design §3, "Decoder").

Counted in GoPT's trainable budget, so it stays small: one 1x1 projection per level to
``dim`` channels, all levels resized to 1/4 of the input, concatenated, fused by one
1x1 conv + batch norm + ReLU (SegFormer's all-MLP head, in miniature). Then either

- (default, the paper's head) a 1x1 classifier at 1/4, its logits upsampled to the input
  size: anything narrower than ~4 pixels (a river, a road at 10 m) is blurred away; or
- `DetailHead` (``model.detail_path``): a full-resolution correction of those upsampled
  logits from every input band (one 3x3 conv) plus the decoder's features (reduced to
  ``detail_dim`` channels at 1/4, then upsampled), summed, ReLU, a 1x1 conv, ReLU, a 1x1
  classifier; so that a 1-pixel-wide feature visible in any band can be mapped. Cheap by
  construction:
  all full-resolution work is on ``detail_dim`` (16) channels, a shallow version of the
  full-resolution branch of a U-Net or of Prithvi-CAFE's parallel CNN branch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DetailHead(nn.Module):
    """The full-resolution part of the detail path: a correction added to the decoder's
    upsampled logits, computed from every band and the decoder's context.

    ``context``: a 1x1 conv of the decoder's fused features to ``dim`` channels at 1/4,
    upsampled bilinearly (reduced before upsampling: the full-resolution tensor is
    ``dim`` wide, not ``decoder_dim``); ``stem``: a 3x3 conv over the bands, ``dim``
    wide; their sum -> ReLU -> ``mix`` (1x1 conv, ``dim`` wide) -> ReLU -> ``classifier``
    (1x1 conv), zero-initialised, added to the decoder's upsampled logits: an untrained
    detail path changes nothing, and training starts from the decoder's own map. The
    ``mix`` layer gives each pixel a second non-linearity, as the per-pixel yardstick
    (``pixel``) has: with one, the path could only draw linear boundaries between the
    bands' values.

    Why this shape (Lite0, patch 128, CPU): everything here runs on H x W pixels, and
    its cost is the memory traffic of ``dim``-wide full-resolution tensors (a 1x1 stem
    instead of the 3x3 costs the same). Batch norm, a concatenation + 1x1 fusion and a
    second 3x3 conv at full resolution (the first design) cost 1.65x the step; a sum of
    two convolutions is that fusion without the copy. Measured on held-out synthetic
    scenes with thin features (benchmarks/at_the_pixel.py, one seed): 8 channels
    without ``mix`` 31.5 % of thin-feature pixels right (1.14x the GoPT step), 8 with
    ``mix`` 36.4 % (1.16x), 16 with ``mix`` 48.0 %, above the per-pixel yardstick's
    47.5 % (1.26x the step, 1.22x prediction: over the 1.15x aimed at, for the accuracy
    users judge a map by).
    """

    def __init__(self, in_bands: int, decoder_dim: int, num_classes: int, dim: int = 16) -> None:
        super().__init__()
        self.context = nn.Conv2d(decoder_dim, dim, kernel_size=1)
        self.stem = nn.Conv2d(in_bands, dim, kernel_size=3, padding=1)
        self.mix = nn.Conv2d(dim, dim, kernel_size=1)
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, fused: Tensor, logits: Tensor, bands: Tensor) -> Tensor:
        """``fused`` [B, decoder_dim, h, w] (the decoder's features at ~1/4), ``logits``
        [B, classes, H, W] (its upsampled logits), ``bands`` [B, in_bands, H, W] ->
        logits [B, classes, H, W]."""
        size = bands.shape[-2:]
        context = F.interpolate(
            self.context(fused), size=size, mode="bilinear", align_corners=False
        )
        # one memory format throughout (the decoder's follows the backbone's): mixed
        # formats take PyTorch's slow strided paths
        nhwc = logits.is_contiguous(memory_format=torch.channels_last) and logits.shape[1] > 1
        form = torch.channels_last if nhwc else torch.contiguous_format
        # in place where autograd allows: on a CPU, every fresh full-resolution tensor
        # costs its page faults, a visible share of this path's time
        h = self.stem(bands.contiguous(memory_format=form))
        h = F.relu(h.add_(context.contiguous(memory_format=form)), inplace=True)
        h = F.relu(self.mix(h), inplace=True)
        return self.classifier(h).add_(logits)


class MultiLevelDecoder(nn.Module):
    """Four feature maps of any widths and strides -> logits at the input resolution.

    ``detail_bands`` > 0: a `DetailHead` over that many input bands (``detail_dim``
    wide) corrects the upsampled logits at full resolution (then ``forward`` needs the
    input bands); 0: none, the original head. The detail path adds modules and changes
    none: adapters trained without it load unchanged, and since it is built last (and
    starts at zero) the rest draws the same initial values and predicts the same.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        dim: int = 64,
        detail_bands: int = 0,
        detail_dim: int = 16,
    ) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Conv2d(c, dim, kernel_size=1) for c in in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(dim * len(in_channels), dim, kernel_size=1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)
        self.detail: DetailHead | None = None
        if detail_bands:
            self.detail = DetailHead(detail_bands, dim, num_classes, detail_dim)

    def forward(
        self, features: Sequence[Tensor], size: tuple[int, int], bands: Tensor | None = None
    ) -> Tensor:
        """``features`` [B, C_i, h_i, w_i]; ``size`` (H, W) of the input; ``bands`` [B, A+3,
        H, W] (the detail path's input; ignored without one) -> [B, classes, H, W]."""
        quarter = (-(-size[0] // 4), -(-size[1] // 4))
        levels = [
            F.interpolate(proj(f), size=quarter, mode="bilinear", align_corners=False)
            for proj, f in zip(self.projections, features, strict=True)
        ]
        fused = self.fuse(torch.cat(levels, dim=1))
        logits = F.interpolate(
            self.classifier(fused), size=size, mode="bilinear", align_corners=False
        )
        if self.detail is None:
            return logits
        if bands is None or tuple(bands.shape[-2:]) != tuple(size):
            raise ValueError(f"the detail path needs the input bands at {tuple(size)}")
        return self.detail(fused, logits, bands)
