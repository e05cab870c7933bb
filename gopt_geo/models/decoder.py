"""A light multi-level segmentation head (design §3, "Decoder").

Counted in GoPT's trainable budget, so it stays small: one 1x1 projection per level to
``dim`` channels, all levels resized to 1/4 of the input, concatenated, fused by one
1x1 conv + batch norm + ReLU, classified by a 1x1 conv, upsampled to the input size
(SegFormer's all-MLP head, in miniature).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MultiLevelDecoder(nn.Module):
    """Four feature maps of any widths and strides -> logits at the input resolution."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, dim: int = 64) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Conv2d(c, dim, kernel_size=1) for c in in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(dim * len(in_channels), dim, kernel_size=1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)

    def forward(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        """``features`` [B, C_i, h_i, w_i]; ``size`` (H, W) of the input -> [B, classes, H, W]."""
        quarter = (-(-size[0] // 4), -(-size[1] // 4))
        levels = [
            F.interpolate(proj(f), size=quarter, mode="bilinear", align_corners=False)
            for proj, f in zip(self.projections, features, strict=True)
        ]
        logits = self.classifier(self.fuse(torch.cat(levels, dim=1)))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
