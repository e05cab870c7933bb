"""GoPTSegmenter: frozen backbone + grouping prompters + light decoder (DESIGN.md §3).

GoPT only; what it shares with the baselines (backbone + decoder construction, padding,
parameter bookkeeping) is `SegmentationModel` in ``base.py``, its config ``config.py``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gopt_geo.models.backbone import InjectionPoint
from gopt_geo.models.base import SegmentationModel
from gopt_geo.models.prompters import (
    AuxEmbedding,
    GroupingPrompter,
    ProjectionBank,
    alignment_loss,
    class_aware_loss,
    labels_to_grid,
    prompted_points,
    resample_tokens,
)


class GoPTSegmenter(SegmentationModel):
    """Grouping Prompt Tuning on a frozen backbone.

    The auxiliary bands are embedded to d_p tokens at the first prompted point; at every
    prompted point a `GroupingPrompter` groups them (CUP), lets the RGB tokens read the
    groups (ACP), and carries the updated auxiliary and class tokens to the next point.
    """

    def build_prompting(self, points: list[InjectionPoint]) -> None:
        config = self.config
        self.prompted = prompted_points(
            [p.stride for p in points], config.prompt_every, config.prompt_min_stride
        )
        dim = config.prompt_dim
        self.aux_embed = AuxEmbedding(config.aux_channels, dim, points[self.prompted[0]].stride)
        self.prompters = nn.ModuleDict(
            {
                str(i): GroupingPrompter(
                    points[i].channels,
                    dim,
                    config.groups,
                    config.prompt_heads,
                    config.assignment,
                    config.tau,
                    carry=i != self.prompted[-1],
                    query=config.acp_query,
                )
                for i in self.prompted
            }
        )
        self.projections = ProjectionBank(
            {i: points[i].channels for i in self.prompted}, dim, config.share_projections
        )

    @property
    def class_aware_enabled(self) -> bool:
        """The class-aware loss needs one group per class."""
        return self.config.class_aware_loss and self.config.groups == self.config.num_classes

    def forward_features(
        self, rgb: Tensor, aux: Tensor, target: Tensor | None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        tokens, grid = self.aux_embed(aux)
        state: dict[str, Any] = {"aux": tokens, "grid": grid, "cls": None}
        collected: dict[str, list[Tensor]] = {"class_aware": [], "alignment": []}
        labels: dict[tuple[int, int], Tensor] = {}

        def inject(index: int, rgb_tokens: Tensor, point_grid: tuple[int, int]) -> Tensor:
            key = str(index)
            if key not in self.prompters:
                return rgb_tokens
            aux_tokens = resample_tokens(state["aux"], state["grid"], point_grid)
            step = self.prompters[key](
                rgb_tokens, aux_tokens, state["cls"], self.projections.for_point(index)
            )
            state.update(aux=step.cup.aux, grid=point_grid, cls=step.cup.class_tokens)
            if self.class_aware_enabled and target is not None:
                if point_grid not in labels:
                    labels[point_grid] = labels_to_grid(target, point_grid, self.config.num_classes)
                collected["class_aware"].append(
                    class_aware_loss(step.cup.logits, labels[point_grid])
                )
            if self.config.alignment_loss:
                collected["alignment"].append(
                    alignment_loss(step.attention, step.cup.logits, self.config.tau)
                )
            return step.rgb

        features = self.backbone(rgb, inject)
        losses = {k: torch.stack(v).mean() for k, v in collected.items() if v}
        return features, losses
