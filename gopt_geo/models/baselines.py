"""The baselines GoPT is compared against, in the same code and interface (design §3).

- `OpticalOnlySegmenter`: frozen backbone + decoder, auxiliary bands ignored: what the
  RGB image alone gives.
- `OpticalAllBandsSegmenter` (``optical_all_bands``): frozen backbone on RGB + decoder,
  and the auxiliary bands (meant: the optical bands the RGB backbone cannot take, e.g.
  NIR, with ``data.aux_bands: [NIR]``) reach the decoder through a trainable patch
  embedding: the fair optical baseline, which sees every optical band GoPT's prompts see.
- `EarlyFusionSegmenter`: all bands concatenated into the backbone (stem widened with
  timm's adapt_input_conv), every weight trained: the expensive upper reference.
- `StaticPromptSegmenter`: VPT-style learnable prompt tokens at every injection point,
  read by the RGB tokens through the same gated cross-attention as GoPT's ACP, but
  without grouping and without the auxiliary bands: what prompts alone give.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gopt_geo.models.backbone import InjectionPoint
from gopt_geo.models.base import SegmentationModel
from gopt_geo.models.config import ModelConfig
from gopt_geo.models.prompters import ACP, AuxEmbedding, Projection, ProjectionBank


class OpticalOnlySegmenter(SegmentationModel):
    """Frozen backbone on RGB + trainable decoder; ``aux`` is accepted and ignored."""

    def forward_features(
        self, rgb: Tensor, aux: Tensor, target: Tensor | None, context: Any = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        return self.backbone(rgb), {}


#: Stride of the auxiliary map `OpticalAllBandsSegmenter` hands to the decoder: the
#: decoder's own working resolution (1/4), so the extra bands keep their detail.
ALL_BANDS_STRIDE = 4


class OpticalAllBandsSegmenter(SegmentationModel):
    """Frozen backbone on RGB + trainable decoder, with the auxiliary bands as a fifth
    decoder level: a patch embedding (``AuxEmbedding``, stride 4, ``prompt_dim`` wide).

    Why this design for "optical-only with every optical band": the frozen backbone can
    only take the three bands it was pretrained on, and widening its stem would change
    the frozen model (early fusion). Here NIR reaches a trainable path as cheaply as
    GoPT's auxiliary embedding, and meets the RGB features in the decoder's fusion layer
    (1x1 conv, batch norm, ReLU): what a practitioner would add without prompting. It
    is meant with the optical extra bands as ``aux`` (``data.aux_bands: [NIR]``); with
    SAR there, it is a late-fusion baseline.
    """

    def build_prompting(self, points: list[InjectionPoint]) -> None:
        config = self.config
        self.aux_embed = AuxEmbedding(config.aux_channels, config.prompt_dim, ALL_BANDS_STRIDE)

    def decoder_channels(self) -> list[int]:
        return [*self.backbone.feature_channels, self.config.prompt_dim]

    def forward_features(
        self, rgb: Tensor, aux: Tensor, target: Tensor | None, context: Any = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        tokens, grid = self.aux_embed(aux)
        side = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)
        return [*self.backbone(rgb), side], {}


class EarlyFusionSegmenter(SegmentationModel):
    """RGB + auxiliary bands stacked into one fully fine-tuned backbone."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, frozen=False, in_chans=3 + config.aux_channels)

    def forward_features(
        self, rgb: Tensor, aux: Tensor, target: Tensor | None, context: Any = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        return self.backbone(torch.cat([rgb, aux], dim=1)), {}


class StaticPrompter(nn.Module):
    """``num_tokens`` learnable prompt vectors read by the RGB tokens through an ACP."""

    def __init__(self, width: int, dim: int, num_tokens: int, heads: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.zeros(num_tokens, dim))
        nn.init.trunc_normal_(self.tokens, std=0.02)
        self.acp = ACP(width, dim, heads, query="rgb")  # static prompts: no aux tokens

    def forward(self, rgb: Tensor, projection: Projection) -> Tensor:
        prompts = self.tokens.unsqueeze(0).expand(rgb.shape[0], -1, -1)
        return self.acp(rgb, prompts, projection).rgb


class StaticPromptSegmenter(SegmentationModel):
    """Input-independent prompts at the same injection points as GoPT; ``aux`` ignored."""

    def build_prompting(self, points: list[InjectionPoint]) -> None:
        config = self.config
        prompted = self.prompted_indices(points)
        dim = config.prompt_dim
        self.prompters = nn.ModuleDict(
            {
                str(i): StaticPrompter(
                    points[i].channels, dim, config.num_prompt_tokens, config.prompt_heads
                )
                for i in prompted
            }
        )
        self.projections = ProjectionBank(
            {i: points[i].channels for i in prompted}, dim, config.share_projections
        )

    def forward_features(
        self, rgb: Tensor, aux: Tensor, target: Tensor | None, context: Any = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        def inject(index: int, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
            key = str(index)
            if key not in self.prompters:
                return tokens
            return self.prompters[key](tokens, self.projections.for_point(index))

        return self.backbone(rgb, inject), {}
