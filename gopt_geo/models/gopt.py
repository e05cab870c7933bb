"""GoPTSegmenter: frozen backbone + grouping prompters + light decoder (design §3).

GoPT only; what it shares with the baselines (backbone + decoder construction, padding,
parameter bookkeeping) is `SegmentationModel` in ``base.py``, its config ``config.py``.
The switches between readings of the paper (``aux_path``, ``cup_attention``,
``prompters``, ``prompt_points``, the assignment schedule (``anneal``, ``tau_start``,
``soft_to_hard``), ``group_mass_floor``, ``cup_context``) are
documented on `ModelConfig` and in README "GoPT as implemented here".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gopt_geo.models.backbone import InjectionPoint, pad_to_multiple
from gopt_geo.models.base import SegmentationModel
from gopt_geo.models.prompters import (
    AuxEmbedding,
    AuxStreamLink,
    AuxToImage,
    CUPContext,
    GroupingPrompter,
    ProjectionBank,
    PromptStep,
    alignment_loss,
    class_aware_loss,
    labels_to_grid,
    resample_tokens,
)


@dataclass
class SceneContext:
    """CUP's window-level quantities at every prompted point, from one whole-scene pass
    (`GoPTSegmenter.scene_context`); ``model(rgb, aux, context=...)`` uses them for every
    window of that scene, so that a pixel's prediction does not depend on its window."""

    points: dict[int, CUPContext] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> SceneContext:
        return SceneContext({i: c.to(device) for i, c in self.points.items()})


class GoPTSegmenter(SegmentationModel):
    """Grouping Prompt Tuning on a frozen backbone.

    ``aux_path: side`` (default): the auxiliary bands are embedded to d_p tokens at the
    first prompted point and travel beside the backbone; at every prompted point a
    `GroupingPrompter` groups them (CUP), lets the RGB tokens read the groups (ACP), and
    carries the updated auxiliary and class tokens to the next point.

    ``aux_path: backbone`` (the paper's figure: both modalities are patch-embedded and fed
    to the frozen transformer): the auxiliary bands become a 3-channel image
    (`AuxToImage`) that runs through the same frozen blocks as the RGB image, as a second
    half of the batch. At a prompted point CUP reads the auxiliary stream's tokens
    (projected down to d_p) and writes its update back into that stream (`AuxStreamLink`,
    zero-initialised gate); ACP writes into the RGB stream. The decoder reads the RGB
    stream. It costs a second backbone pass.
    """

    def build_prompting(self, points: list[InjectionPoint]) -> None:
        config = self.config
        self.prompted = self.prompted_indices(points)
        dim = config.prompt_dim
        # construction order fixes the random initialisation: the default configuration
        # builds aux_embed, prompters, projections, as it always has
        if config.aux_path == "side":
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
                    parts=config.prompters,
                    attention=config.cup_attention,
                    scale=config.assign_scale,
                    mass_floor=config.group_mass_floor,
                )
                for i in self.prompted
            }
        )
        self.projections = ProjectionBank(
            {i: points[i].channels for i in self.prompted},
            dim,
            config.share_projections,
            down=config.prompters != "cup",
        )
        if config.aux_path == "backbone":
            self.aux_image = AuxToImage(config.aux_channels)
            # points whose CUP update is written back into the auxiliary stream: those
            # that carry to a later point (not the last; none without CUP)
            writers = self.prompted[:-1] if config.prompters != "acp" else []
            self.aux_links = nn.ModuleDict(
                {str(i): AuxStreamLink(points[i].channels, i in writers) for i in self.prompted}
            )
            self.aux_projections = ProjectionBank(
                {i: points[i].channels for i in self.prompted},
                dim,
                config.share_projections,
                up_points=writers,
            )

    @property
    def class_aware_enabled(self) -> bool:
        """The class-aware loss needs one group per class (and CUP)."""
        return (
            self.config.class_aware_loss
            and self.config.groups == self.config.num_classes
            and self.config.prompters != "acp"
        )

    # -- schedule ---------------------------------------------------------------------

    def set_progress(self, fraction: float) -> None:
        """Apply the assignment schedule at ``fraction`` of training (0 first step, 1 last).

        Over the first ``anneal`` of training (t from 0 to 1) the hard assignment's Gumbel
        noise goes from 1 (standard Gumbel-Softmax) to 0 (the straight-through argmax,
        which is what inference does), ``1 - t``, and tau goes geometrically from
        ``tau_start`` to ``tau``; afterwards both stay at their final values. Why: with
        small logits, standard Gumbel samples mostly differ from the argmax the model
        predicts with, so it trains on noisier groups than it predicts with (RESULTS.md,
        paper ablations: 47 -> 54 mIoU with q.k logits; no gain on top of bounded logits,
        one seed). Eval mode always uses the final values; a model never told its
        progress trains unscheduled (what gopt-geo did before).

        ``soft_to_hard`` (hard assignment): up to ``soft_to_hard_start`` the training
        assignment is the softmax, then over the next ``soft_to_hard`` of training its
        forward goes linearly to the hard one, (1 - a) softmax + a hard, a 0 -> 1
        (`prompters.assign`, ``mix``). Why: hard from the first step forms groups that do
        not follow the classes (17 % of tokens vs 96 % for soft, RESULTS.md paper
        ablations) and trails soft by 9-17 mIoU; soft forms them, and the end of training
        adapts the rest to the one-hot groups that inference uses.
        """
        config = self.config
        if config.soft_to_hard > 0:
            done = (float(fraction) - config.soft_to_hard_start) / config.soft_to_hard
            mix = min(max(done, 0.0), 1.0)
            for prompter in self.prompters.values():
                if prompter.cup is not None:
                    prompter.cup.mix = mix
        if config.anneal <= 0:
            return
        t = min(1.0, min(max(float(fraction), 0.0), 1.0) / config.anneal)
        tau = config.tau
        if config.tau_start is not None:
            tau = config.tau_start * (config.tau / config.tau_start) ** t
        noise = 1.0 - t if config.assignment == "hard" else 1.0
        for prompter in self.prompters.values():
            if prompter.cup is not None:
                prompter.cup.tau = tau
                prompter.cup.noise = noise

    # -- scene context ----------------------------------------------------------------

    @property
    def needs_scene_context(self) -> bool:
        """``cup_context: scene`` with CUP (``prompters: acp`` has no groups to share)."""
        return self.config.cup_context == "scene" and self.config.prompters != "acp"

    @torch.no_grad()
    def scene_context(self, rgb: Tensor, aux: Tensor) -> SceneContext | None:
        """CUP's class tokens and grouped prompts at every prompted point, from one pass over
        a whole scene (``rgb`` [1,3,H,W], ``aux`` [1,A,H,W], normalised, any size; a
        downsampled scene is fine). None unless ``cup_context: scene`` (and CUP exists).

        ``model(window_rgb, window_aux, context=ctx)`` then uses these instead of the
        window's own, so every window of the scene groups its tokens around the same
        class tokens and prompts; ``model(x, context=model.scene_context(x))`` equals
        ``model(x)``. Call it in eval mode (what prediction uses)."""
        if not self.needs_scene_context:
            return None
        if rgb.shape[0] != 1:
            raise ValueError(f"scene_context takes one scene [1, 3, H, W], got {tuple(rgb.shape)}")
        self._check_inputs(rgb, aux, None)
        divisor = self.backbone.size_divisor
        record: dict[int, CUPContext] = {}
        self.forward_features(
            pad_to_multiple(rgb, divisor), pad_to_multiple(aux, divisor), None, record=record
        )
        return SceneContext(record)

    # -- forward ----------------------------------------------------------------------

    def forward_features(
        self,
        rgb: Tensor,
        aux: Tensor,
        target: Tensor | None,
        context: Any = None,
        record: dict[int, CUPContext] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """See `SegmentationModel.forward_features`; ``record`` (scene_context) collects
        each point's `CUPContext`."""
        if context is not None and not isinstance(context, SceneContext):
            raise TypeError(f"context must be a SceneContext, got {type(context).__name__}")
        collected: dict[str, list[Tensor]] = {"class_aware": [], "alignment": []}
        labels: dict[tuple[int, int], Tensor] = {}
        state: dict[str, Any] = {"cls": None}

        def prompt(index: int, rgb_tokens: Tensor, aux_tokens: Tensor, grid: tuple[int, int]):
            point_context = context.points.get(index) if context is not None else None
            step: PromptStep = self.prompters[str(index)](
                rgb_tokens,
                aux_tokens,
                state["cls"],
                self.projections.for_point(index),
                point_context,
            )
            cup = step.cup
            if cup is None:
                return step
            state["cls"] = cup.class_tokens
            if record is not None:
                record[index] = cup.context()
            if self.class_aware_enabled and target is not None:
                if grid not in labels:
                    labels[grid] = labels_to_grid(target, grid, self.config.num_classes)
                collected["class_aware"].append(class_aware_loss(cup.logits, labels[grid]))
            if self.config.alignment_loss and step.attention is not None:
                tau = self.prompters[str(index)].cup.tau
                collected["alignment"].append(alignment_loss(step.attention, cup.logits, tau))
            return step

        if self.config.aux_path == "side":
            tokens, grid0 = self.aux_embed(aux)
            state.update(aux=tokens, grid=grid0)

            def inject(index: int, rgb_tokens: Tensor, grid: tuple[int, int]) -> Tensor:
                if str(index) not in self.prompters:
                    return rgb_tokens
                aux_tokens = resample_tokens(state["aux"], state["grid"], grid)
                step = prompt(index, rgb_tokens, aux_tokens, grid)
                carried = step.cup.aux if step.cup is not None else aux_tokens
                state.update(aux=carried, grid=grid)
                return step.rgb

            features = self.backbone(rgb, inject)
        else:
            batch = rgb.shape[0]

            def inject(index: int, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
                if str(index) not in self.prompters:
                    return tokens
                rgb_tokens, stream = tokens[:batch], tokens[batch:]
                link = self.aux_links[str(index)]
                projection = self.aux_projections.for_point(index)
                aux_in = projection.down(link.norm(stream))
                step = prompt(index, rgb_tokens, aux_in, grid)
                if step.cup is not None and link.gate is not None:
                    stream = stream + link.gate * projection.up(step.cup.aux - aux_in)
                return torch.cat([step.rgb, stream], dim=0)

            both = torch.cat([rgb, self.aux_image(aux)], dim=0)
            features = [f[:batch] for f in self.backbone(both, inject)]
        losses = {k: torch.stack(v).mean() for k, v in collected.items() if v}
        return features, losses
