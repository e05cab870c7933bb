"""What a model is, without building it: `ModelConfig`, `ParameterReport`, the variants.

Torch-free on purpose: the config is read from YAML files and from adapter metadata
(``gopt-geo info``), which must not pay for importing torch and timm. The modules that
build models import this one, never the other way round.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gopt_geo import __version__
from gopt_geo.errors import InputError
from gopt_geo.models.variants import VARIANT_INFO, VARIANTS

__all__ = [
    "AUTO_VIT_SHARE",
    "CHOICES",
    "VARIANTS",
    "ModelConfig",
    "ParameterReport",
    "UnknownConfigFields",
    "checkpoint_share",
]

#: The allowed values of the switches that pick between readings of the paper
#: (docs/design.md §3, README "GoPT as implemented here"); defaults are on the fields.
CHOICES: dict[str, tuple[str, ...]] = {
    "assignment": ("hard", "soft"),
    "acp_query": ("rgb+aux", "rgb"),
    "aux_path": ("side", "backbone"),
    "cup_attention": ("cross", "self"),
    "prompters": ("cup+acp", "cup", "acp"),
    "cup_context": ("window", "scene"),
}

#: Fields added after adapter files were first written, with the value that reproduces
#: what a file without the field was trained with, where that differs from the field's
#: default. A stored config lacking a field gets the value here, else the default, so
#: an older adapter keeps its model. Rule for new fields: default to the old behaviour,
#: or add the old behaviour here.
_BEFORE_FIELD_EXISTED: dict[str, Any] = {
    "prompt_min_stride": 1,  # before it, every injection point was prompted
    "acp_query": "rgb",  # before it, ACP queried with the RGB tokens alone
}


class UnknownConfigFields(InputError):
    """A stored config names fields this gopt-geo does not know (a newer version wrote it).

    Refused rather than ignored: an unknown field may change the model's math, and
    dropping it would rebuild a different model than the one the tensors were trained in.
    """

    def __init__(self, fields: list[str]) -> None:
        self.fields = fields
        super().__init__(
            f"model config: unknown fields {', '.join(fields)} (written by a newer "
            f"gopt-geo? this is {__version__}; upgrade gopt-geo to load it)"
        )


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored in the adapter file."""

    variant: str = "gopt"  # one of VARIANTS (models/variants.py: gopt, the baselines, pixel)
    backbone: str = "efficientnet_lite0"  # any timm model name
    weights: str = "packaged"  # packaged | timm | random | path to .safetensors/.pth
    num_classes: int = 7
    aux_channels: int = 3  # number of auxiliary bands (e.g. NIR, VV, VH)
    prompt_dim: int = 48  # d_p
    num_groups: int | None = None  # K; None -> num_classes
    prompt_every: int = 1  # prompter at every n-th injection point
    assignment: str = "hard"  # hard | soft
    tau: float = 1.0  # Gumbel-Softmax / softmax temperature (the final one with a schedule)
    class_aware_loss: bool = True
    alignment_loss: bool = True
    decoder_dim: int = 64  # the decoder's width (pixel: the width of its hidden layers)
    num_prompt_tokens: int = 8  # static_prompt variant only
    prompt_heads: int = 4  # heads of the prompt cross-attentions (must divide prompt_dim)
    share_projections: bool = True  # one ACP down/up projection per backbone width
    prompt_min_stride: int = 8  # first prompted point: stride >= this (CNN stages; ViT: all)
    acp_query: str = "rgb+aux"  # rgb | rgb+aux: what the RGB tokens query the prompts with
    # -- switches between readings of the paper (README "GoPT as implemented here") --------
    aux_path: str = "side"  # side: own d_p embedding | backbone: through the frozen blocks too
    cup_attention: str = "cross"  # cross: class tokens attend to aux (O(N*K)) | self: O((N+K)^2)
    prompters: str = "cup+acp"  # cup+acp | cup | acp: the paper's structure ablation
    prompt_points: list[int] | None = None  # explicit injection-point indices (overrides
    # prompt_every and prompt_min_stride); None: every prompt_every-th from prompt_min_stride
    assign_scale: float | None = None  # None: CUP logits q.k/sqrt(d), unbounded; s: s*cos(q, k)
    anneal: float = 0.0  # fraction of training over which the hard assignment's Gumbel noise
    # goes 1 -> 0 (then training samples are the argmax, as inference) and tau_start -> tau
    tau_start: float | None = None  # tau at the start of the schedule; None: tau throughout
    soft_to_hard: float = 0.0  # hard only: fraction of training over which the training
    # assignment goes from soft weights to hard (one-hot forward): (1-a) softmax + a hard,
    # a 0 -> 1; 0: hard from the first step. Inference is the argmax either way
    soft_to_hard_start: float = 0.0  # fraction of training before that (pure soft)
    group_mass_floor: float | None = None  # CUP's group means divide by max(mass, this);
    # None: mass + 1e-6, whose gradient for a group no token chose (hard) is 1e6 x features
    cup_context: str = "window"  # window: groups per window | scene: from a whole-scene pass
    context_size: int = 1024  # longest side (pixels) of the scene-context pass
    # -- the full-resolution detail path (decoder.DetailHead; every variant with a decoder) --
    detail_path: bool = False  # a per-pixel MLP over every band at full resolution whose
    # logits are added to the decoder's upsampled ones, so that 1-3 px features (rivers,
    # roads) can be mapped; False: logits at 1/4, upsampled (the paper)
    detail_dim: int = 48  # its width: 16 and 24 fell short of the per-pixel yardstick on
    # water (benchmarks/at_the_pixel.py), 48 is the demo decoder's (and the yardstick's) width
    detail_sample_block: int = 2  # with the detail path, training's loss scores one random
    # pixel in every block of this many x this many (2: a quarter; decoder.sample_points);
    # 1: every pixel. Validation and prediction score every pixel either way

    def __post_init__(self) -> None:
        problems = []
        if self.variant not in VARIANTS:
            problems.append(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.assignment not in CHOICES["assignment"]:
            problems.append(f"assignment must be hard or soft, got {self.assignment!r}")
        for name in ("acp_query", "aux_path", "cup_attention", "prompters", "cup_context"):
            value, allowed = getattr(self, name), CHOICES[name]
            if value not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        for name in (
            "num_classes",
            "prompt_dim",
            "prompt_every",
            "decoder_dim",
            "prompt_heads",
            "context_size",
            "detail_dim",
            "detail_sample_block",
        ):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        info = VARIANT_INFO.get(self.variant)
        needs_aux = info is not None and info.needs_aux
        if self.aux_channels < 0 or (self.aux_channels == 0 and needs_aux):
            who = "GoPT" if self.variant == "gopt" else self.variant
            problems.append(f"aux_channels must be >= 1 for {who}, got {self.aux_channels}")
        if self.num_groups is not None and self.num_groups < 1:
            problems.append(f"num_groups must be >= 1, got {self.num_groups}")
        if self.tau <= 0:
            problems.append(f"tau must be > 0, got {self.tau}")
        if self.tau_start is not None and self.tau_start <= 0:
            problems.append(f"tau_start must be > 0, got {self.tau_start}")
        if self.tau_start is not None and self.anneal <= 0:
            problems.append(
                "tau_start needs anneal > 0 (the fraction of training over which tau goes "
                f"from tau_start to tau), got anneal {self.anneal}"
            )
        if self.group_mass_floor is not None and self.group_mass_floor <= 0:
            problems.append(f"group_mass_floor must be > 0 (or null), got {self.group_mass_floor}")
        if self.assign_scale is not None and self.assign_scale <= 0:
            problems.append(f"assign_scale must be > 0 (or null), got {self.assign_scale}")
        if not 0.0 <= self.anneal <= 1.0:
            problems.append(f"anneal must be a fraction of training in [0, 1], got {self.anneal}")
        for name in ("soft_to_hard", "soft_to_hard_start"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(
                    f"{name} must be a fraction of training in [0, 1], got {getattr(self, name)}"
                )
        if self.soft_to_hard > 0 and self.assignment != "hard":
            problems.append(
                "soft_to_hard needs assignment hard (it schedules soft -> hard), got "
                f"assignment {self.assignment!r}"
            )
        if self.soft_to_hard_start > 0 and self.soft_to_hard <= 0:
            problems.append(
                "soft_to_hard_start needs soft_to_hard > 0 (the fraction of training over which "
                f"the assignment goes soft -> hard), got soft_to_hard {self.soft_to_hard}"
            )
        if self.soft_to_hard_start + self.soft_to_hard > 1.0 + 1e-9:
            problems.append(
                f"soft_to_hard_start + soft_to_hard must be <= 1 (the whole training), got "
                f"{self.soft_to_hard_start} + {self.soft_to_hard}"
            )
        if self.prompt_points is not None:
            points = list(self.prompt_points)
            if not points or any(p < 0 for p in points) or len(set(points)) != len(points):
                problems.append(
                    "prompt_points must be a non-empty list of distinct injection-point "
                    f"indices >= 0, got {self.prompt_points}"
                )
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
        """A stored config (``to_dict`` output, possibly from another gopt-geo version).

        As in peft's config loading, an older file loads in a newer gopt-geo: a field the
        older version did not write gets the value that version behaved as (see
        ``_BEFORE_FIELD_EXISTED``), else its default. Fields this version does not know
        (a newer file) are refused with `UnknownConfigFields` rather than dropped with a
        warning as peft does: they may change the model's math.
        """
        if not isinstance(d, dict):
            raise InputError(f"model config: expected a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UnknownConfigFields(unknown)
        older = {k: v for k, v in _BEFORE_FIELD_EXISTED.items() if k not in d}
        return cls(**{**older, **d})


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


#: ``train.checkpoint_backbone: auto`` on a frozen ViT: the share of its blocks whose
#: activations are recomputed in backward instead of kept. A ViT-S/16 GoPT step (patch
#: 256, batch 8; benchmarks/RESULTS.md, training cost), relative to full fine-tuning, time
#: (interleaved with it in one process) and tensor peak: none 0.77 / 0.70, a quarter
#: 0.82 / 0.61, a third 0.84 / 0.58, half 0.87 / 0.52, all 0.97 / 0.37. A third is the
#: only share measured within both of issue 15's targets (time <= 0.85, memory <= 0.6).
AUTO_VIT_SHARE = 1 / 3


def checkpoint_share(mode: object) -> float | str:
    """``train.checkpoint_backbone`` as ``"auto"`` or a share of segments in [0, 1]."""
    if mode == "auto" or isinstance(mode, bool):
        return mode if mode == "auto" else float(mode)
    if isinstance(mode, int | float) and 0 <= mode <= 1:
        return float(mode)
    raise InputError(
        f"train.checkpoint_backbone must be auto, true, false or a share of the backbone's "
        f"segments between 0 and 1, got {mode!r}"
    )
