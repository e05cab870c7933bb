"""`PixelSegmenter` (``pixel``): a per-pixel classifier on every band, the yardstick.

What a remote-sensing user tries first (a random forest or logistic regression on the
bands, pixel by pixel): here a small MLP of 1x1 convolutions over the normalised RGB and
auxiliary bands, trained by the same trainer and written as an adapter like the other
variants, so that its report sits beside GoPT's on the same split. On real 10 m
imagery it beats any model whose map is coarser than its pixels (issue 23), which is
why it is a row of the demo and of the benchmarks.

It builds no backbone (its adapter records `base.NO_BACKBONE`) and no decoder; of
`ModelConfig` it reads ``num_classes``, ``aux_channels`` and ``decoder_dim`` (the width
of its hidden layers), and ignores the rest. A pixel's prediction depends on that pixel
alone, so it does not depend on the window either.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gopt_geo.constants import Keep
from gopt_geo.models.base import SegmentationModel, SegmentationOutput
from gopt_geo.models.decoder import apply_pixel_mlp, box_slices, pixel_mlp

#: Hidden layers of the MLP: two, as in the usual per-pixel MLP baselines; one is close
#: to logistic regression, more adds nothing a pixel's few bands can use.
HIDDEN_LAYERS = 2


class PixelSegmenter(SegmentationModel):
    """1x1-conv MLP on cat(rgb, aux): ``HIDDEN_LAYERS`` x (1x1 conv, batch norm, ReLU) of
    ``decoder_dim`` channels, then a 1x1 classifier."""

    def build_modules(self, *, frozen: bool, in_chans: int) -> None:
        config = self.config
        self.backbone = None
        width = config.decoder_dim
        self.mlp = pixel_mlp(3 + config.aux_channels, width, HIDDEN_LAYERS)
        self.classifier = nn.Conv2d(width, config.num_classes, kernel_size=1)

    def forward(
        self,
        rgb: Tensor,
        aux: Tensor,
        target: Tensor | None = None,
        context: Any = None,
        keep: Keep | None = None,
    ) -> SegmentationOutput:
        """See `SegmentationModel.forward`; any H, W, no padding (nothing has a stride).
        With ``keep``, only the boxes are computed (zeros elsewhere: a pixel needs no
        context, so a window's margin is wasted work)."""
        self._check_inputs(rgb, aux, target)
        bands = torch.cat([rgb, aux], dim=1)
        if keep is None:
            return SegmentationOutput(apply_pixel_mlp(self.mlp, self.classifier, bands))
        b, _, h, w = bands.shape
        logits = bands.new_zeros(b, self.config.num_classes, h, w)
        for box in box_slices(keep):
            logits[box] = apply_pixel_mlp(self.mlp, self.classifier, bands[box])
        return SegmentationOutput(logits)
