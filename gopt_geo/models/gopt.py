"""GoPTSegmenter: frozen backbone + grouping prompters + light decoder (DESIGN.md §3).

Also the pieces every model variant shares: `ModelConfig`, `SegmentationOutput`, the
peft-style `ParameterReport`, and the `SegmentationModel` base class that pads inputs to
the backbone's stride, reports parameters and separates the trainable state (what goes
into the adapter file) from the frozen backbone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gopt_geo.data.classes import IGNORE_INDEX
from gopt_geo.errors import InputError
from gopt_geo.models.backbone import FrozenBackbone, pad_to_multiple
from gopt_geo.models.decoder import MultiLevelDecoder
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

VARIANTS = ("gopt", "optical_only", "early_fusion", "static_prompt")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored in the adapter file."""

    variant: str = "gopt"  # gopt | optical_only | early_fusion | static_prompt
    backbone: str = "efficientnet_lite0"  # any timm model name
    weights: str = "packaged"  # packaged | timm | random | path to .safetensors/.pth
    num_classes: int = 7
    aux_channels: int = 3  # number of auxiliary bands (e.g. NIR, VV, VH)
    prompt_dim: int = 48  # d_p
    num_groups: int | None = None  # K; None -> num_classes
    prompt_every: int = 1  # prompter at every n-th injection point
    assignment: str = "hard"  # hard | soft
    tau: float = 1.0  # Gumbel-Softmax temperature
    class_aware_loss: bool = True
    alignment_loss: bool = True
    decoder_dim: int = 64
    num_prompt_tokens: int = 8  # static_prompt variant only
    prompt_heads: int = 4  # heads of the prompt cross-attentions (must divide prompt_dim)
    share_projections: bool = True  # one ACP down/up projection per backbone width
    prompt_min_stride: int = 8  # first prompted point: stride >= this (CNN stages; ViT: all)
    acp_query: str = "rgb+aux"  # rgb | rgb+aux: what the RGB tokens query the prompts with

    def __post_init__(self) -> None:
        problems = []
        if self.variant not in VARIANTS:
            problems.append(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.assignment not in ("hard", "soft"):
            problems.append(f"assignment must be hard or soft, got {self.assignment!r}")
        for name in ("num_classes", "prompt_dim", "prompt_every", "decoder_dim", "prompt_heads"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.aux_channels < 0 or (self.aux_channels == 0 and self.variant == "gopt"):
            problems.append(f"aux_channels must be >= 1 for GoPT, got {self.aux_channels}")
        if self.num_groups is not None and self.num_groups < 1:
            problems.append(f"num_groups must be >= 1, got {self.num_groups}")
        if self.tau <= 0:
            problems.append(f"tau must be > 0, got {self.tau}")
        if self.prompt_dim % max(self.prompt_heads, 1):
            problems.append(
                f"prompt_dim {self.prompt_dim} must be divisible by "
                f"prompt_heads {self.prompt_heads}"
            )
        if problems:
            raise InputError("model config: " + "; ".join(problems))

    @property
    def groups(self) -> int:
        """K, the number of class tokens / prompt groups."""
        return self.num_groups if self.num_groups is not None else self.num_classes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"model config: unknown fields {unknown} (newer gopt-geo?)")
        return cls(**d)


@dataclass
class SegmentationOutput:
    logits: Tensor  # [B, num_classes, H, W] at input resolution
    losses: dict[str, Tensor] = field(default_factory=dict)  # "class_aware", "alignment"


@dataclass
class ParameterReport:
    """Parameter accounting in the peft convention."""

    trainable: int
    total: int
    percent: float

    def __str__(self) -> str:
        return (
            f"trainable params: {self.trainable:,} || all params: {self.total:,} "
            f"|| trainable%: {self.percent:.4f}"
        )

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


class SegmentationModel(nn.Module):
    """Base of GoPT and every baseline: same inputs, same outputs, same bookkeeping.

    Subclasses build ``self.backbone`` and ``self.decoder`` and implement
    ``forward_features``.
    """

    config: ModelConfig
    backbone: FrozenBackbone
    decoder: MultiLevelDecoder

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def forward_features(
        self, rgb: Tensor, aux: Tensor, target: Tensor | None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Padded inputs -> (four decoder feature maps, auxiliary losses)."""
        raise NotImplementedError

    def forward(self, rgb: Tensor, aux: Tensor, target: Tensor | None = None) -> SegmentationOutput:
        """``rgb`` [B,3,H,W] and ``aux`` [B,A,H,W] normalised, ``target`` [B,H,W] (optional,
        IGNORE_INDEX ignored) -> logits [B,classes,H,W]. Any H, W: inputs are padded to the
        backbone's stride and the logits cropped back."""
        self._check_inputs(rgb, aux, target)
        h, w = rgb.shape[-2:]
        divisor = self.backbone.size_divisor
        rgb = pad_to_multiple(rgb, divisor)
        aux = pad_to_multiple(aux, divisor)
        if target is not None:
            target = pad_to_multiple(target, divisor, value=IGNORE_INDEX)
        features, losses = self.forward_features(rgb, aux, target)
        logits = self.decoder(features, (rgb.shape[-2], rgb.shape[-1]))
        return SegmentationOutput(logits[..., :h, :w], losses)

    def _check_inputs(self, rgb: Tensor, aux: Tensor, target: Tensor | None) -> None:
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"rgb must be [B, 3, H, W], got {tuple(rgb.shape)}")
        if aux.ndim != 4 or aux.shape[1] != self.config.aux_channels:
            raise ValueError(
                f"aux must be [B, {self.config.aux_channels}, H, W] (aux_channels), "
                f"got {tuple(aux.shape)}"
            )
        if aux.shape[0] != rgb.shape[0] or aux.shape[-2:] != rgb.shape[-2:]:
            raise ValueError(f"rgb {tuple(rgb.shape)} and aux {tuple(aux.shape)} do not match")
        if target is not None and (
            target.shape[0] != rgb.shape[0] or target.shape[-2:] != rgb.shape[-2:]
        ):
            raise ValueError(f"target {tuple(target.shape)} does not match rgb {tuple(rgb.shape)}")

    # bookkeeping -------------------------------------------------------------------

    def parameter_report(self) -> ParameterReport:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return ParameterReport(trainable, total, 100.0 * trainable / max(total, 1))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser gets: never a frozen backbone tensor."""
        return [p for p in self.parameters() if p.requires_grad]

    def _is_frozen_key(self, key: str) -> bool:
        return self.backbone.frozen and key.startswith("backbone.")

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The trainable state: trainable parameters plus the buffers of trainable modules
        (decoder batch-norm statistics), i.e. everything outside the frozen backbone."""
        return {k: v for k, v in self.state_dict().items() if not self._is_frozen_key(k)}

    def load_trainable_state_dict(self, state: dict[str, Tensor], source: str = "state") -> None:
        """Load ``trainable_state_dict`` output strictly: same keys, same shapes."""
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise InputError(
                f"{source}: tensors do not match the model: {len(missing)} missing "
                f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
            )
        for key, tensor in state.items():
            if tensor.shape != expected[key].shape:
                raise InputError(
                    f"{source}: tensor {key} has shape {tuple(tensor.shape)}, the model "
                    f"expects {tuple(expected[key].shape)}"
                )
        result = self.load_state_dict(state, strict=False)
        assert not result.unexpected_keys
        assert all(self._is_frozen_key(k) for k in result.missing_keys)

    def backbone_identity(self) -> dict[str, str]:
        return self.backbone.identity()


class GoPTSegmenter(SegmentationModel):
    """Grouping Prompt Tuning on a frozen backbone.

    The auxiliary bands are embedded to d_p tokens at the first prompted point; at every
    prompted point a `GroupingPrompter` groups them (CUP), lets the RGB tokens read the
    groups (ACP), and carries the updated auxiliary and class tokens to the next point.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.backbone = FrozenBackbone(config.backbone, config.weights, frozen=True)
        points = self.backbone.injection_points
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
        self.decoder = MultiLevelDecoder(
            self.backbone.feature_channels, config.num_classes, config.decoder_dim
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


def build_model(cfg: ModelConfig) -> SegmentationModel:
    """The model for ``cfg.variant``: gopt | optical_only | early_fusion | static_prompt."""
    from gopt_geo.models import baselines

    builders = {
        "gopt": GoPTSegmenter,
        "optical_only": baselines.OpticalOnlySegmenter,
        "early_fusion": baselines.EarlyFusionSegmenter,
        "static_prompt": baselines.StaticPromptSegmenter,
    }
    return builders[cfg.variant](cfg)
