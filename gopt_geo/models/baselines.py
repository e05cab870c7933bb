"""The baselines GoPT is compared against, in the same code and interface (DESIGN.md §3).

- `OpticalOnlySegmenter`: frozen backbone + decoder, auxiliary bands ignored: what the
  optical image alone gives.
- `EarlyFusionSegmenter`: all bands concatenated into the backbone (stem widened with
  timm's adapt_input_conv), every weight trained: the expensive upper reference.
- `StaticPromptSegmenter`: VPT-style learnable prompt tokens at every injection point,
  read by the RGB tokens through the same gated cross-attention as GoPT's ACP, but
  without grouping and without the auxiliary bands: what prompts alone give.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gopt_geo.models.backbone import InjectionPoint
from gopt_geo.models.base import SegmentationModel
from gopt_geo.models.config import ModelConfig
from gopt_geo.models.prompters import ACP, Projection, ProjectionBank, prompted_points


class OpticalOnlySegmenter(SegmentationModel):
    """Frozen backbone on RGB + trainable decoder; ``aux`` is accepted and ignored."""

    def forward_features(
        self, rgb: Tensor, aux: Tensor, target: Tensor | None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        return self.backbone(rgb), {}


class EarlyFusionSegmenter(SegmentationModel):
    """RGB + auxiliary bands stacked into one fully fine-tuned backbone."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, frozen=False, in_chans=3 + config.aux_channels)

    def forward_features(
        self, rgb: Tensor, aux: Tensor, target: Tensor | None
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
        prompted = prompted_points(
            [p.stride for p in points], config.prompt_every, config.prompt_min_stride
        )
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
        self, rgb: Tensor, aux: Tensor, target: Tensor | None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        def inject(index: int, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
            key = str(index)
            if key not in self.prompters:
                return tokens
            return self.prompters[key](tokens, self.projections.for_point(index))

        return self.backbone(rgb, inject), {}
