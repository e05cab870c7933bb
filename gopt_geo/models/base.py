"""`SegmentationModel`: what GoPT and every baseline share (design §3).

Every variant is a timm backbone plus the same light decoder, with the same inputs
(normalised RGB, auxiliary bands, optional target), the same outputs and the same
bookkeeping: padding to the backbone's stride, the peft-style parameter report, and
the split between the trainable state (what goes into the adapter file) and the frozen
backbone. The backbone + decoder construction lives here once, the decoder's optional
full-resolution detail path (``model.detail_path``) with it; a variant adds its
prompting modules in `build_prompting` and says how its features are computed in
`forward_features`. The per-pixel baseline (``pixel.py``) builds neither backbone nor
decoder: it overrides `build_modules` and `forward`, and keeps the bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gopt_geo.constants import IGNORE_INDEX, Keep
from gopt_geo.errors import InputError
from gopt_geo.models.backbone import FrozenBackbone, InjectionPoint, pad_to_multiple
from gopt_geo.models.config import (
    AUTO_VIT_SHARE,
    ModelConfig,
    ParameterReport,
    checkpoint_share,
)
from gopt_geo.models.decoder import MultiLevelDecoder, sample_points
from gopt_geo.models.prompters import prompted_points
from gopt_geo.models.variants import VARIANT_INFO

#: What a model without a backbone (``pixel``) records as its backbone identity: the
#: adapter check (same name, same sha256) then passes on any machine, as it should.
NO_BACKBONE = {"name": "none", "weights": "none", "sha256": "none"}


@dataclass
class SegmentationOutput:
    logits: Tensor  # [B, num_classes, H, W] at input resolution; [B, num_classes, P]
    # when training scored a sample of the pixels (``target`` then holds their labels)
    losses: dict[str, Tensor] = field(default_factory=dict)  # "class_aware", "alignment"
    target: Tensor | None = None  # [B, P]: the labels of the sampled pixels, or None

    def labels(self, target: Tensor) -> Tensor:
        """What ``logits`` are to be scored against: the sampled pixels' labels when
        training sampled (``model.detail_sample_block`` > 1), else ``target`` itself."""
        return target if self.target is None else self.target


#: Tensors only the first design of the detail path had.
FIRST_DETAIL_KEYS = ("decoder.detail.stem.", "decoder.detail.context.", "decoder.detail.mix.")
#: The detail path's gate, which adapters written before it lack: a zero gate is the
#: plain sum those adapters were trained with, so they load with one.
DETAIL_GATE_KEYS = ("decoder.detail.gate.weight", "decoder.detail.gate.bias")


class SegmentationModel(nn.Module):
    """Base of GoPT and every baseline: same inputs, same outputs, same bookkeeping.

    Builds (`build_modules`), in this order (the order fixes the state-dict layout and
    which random numbers each module's initialisation draws): ``self.backbone`` (frozen
    unless ``frozen=False``, its stem widened to ``in_chans`` if that is not 3), the
    variant's own modules (`build_prompting`), ``self.decoder`` over the backbone's four
    feature levels (its detail path last). Subclasses implement ``forward_features``.
    """

    config: ModelConfig
    backbone: FrozenBackbone | None  # None: the per-pixel baseline
    decoder: MultiLevelDecoder

    def __init__(self, config: ModelConfig, *, frozen: bool = True, in_chans: int = 3) -> None:
        super().__init__()
        self.config = config
        self.build_modules(frozen=frozen, in_chans=in_chans)

    def build_modules(self, *, frozen: bool, in_chans: int) -> None:
        """The backbone, the variant's prompting modules and the decoder (see the class)."""
        config = self.config
        self.backbone = FrozenBackbone(config.backbone, config.weights, frozen=frozen)
        if in_chans != 3:
            self.backbone.adapt_input_channels(in_chans)
        self.build_prompting(self.backbone.injection_points)
        self.decoder = MultiLevelDecoder(
            self.decoder_channels(),
            config.num_classes,
            config.decoder_dim,
            detail_bands=self.detail_bands if config.detail_path else 0,
            detail_dim=config.detail_dim,
        )

    @property
    def reads_aux(self) -> bool:
        """Whether the model uses the auxiliary input (``optical_only`` and
        ``static_prompt`` do not: they predict without SAR)."""
        return VARIANT_INFO[self.config.variant].reads_aux

    @property
    def detail_bands(self) -> int:
        """Bands the detail path reads: every band the variant reads (RGB + auxiliary,
        RGB alone for a variant that ignores the auxiliary input)."""
        return 3 + (self.config.aux_channels if self.reads_aux else 0)

    def build_prompting(self, points: list[InjectionPoint]) -> None:
        """Create the modules the variant adds at the backbone's injection points
        (prompters, projections); none by default."""

    def decoder_channels(self) -> list[int]:
        """Widths of the maps ``forward_features`` returns: the backbone's four levels,
        unless the variant adds its own (``optical_all_bands``)."""
        return list(self.backbone.feature_channels)

    def prompted_indices(self, points: list[InjectionPoint]) -> list[int]:
        """The injection points that get a prompter: ``prompt_points`` when given (checked
        against this backbone), else every ``prompt_every``-th from ``prompt_min_stride``."""
        config = self.config
        if config.prompt_points is None:
            return prompted_points(
                [p.stride for p in points], config.prompt_every, config.prompt_min_stride
            )
        bad = [i for i in config.prompt_points if i >= len(points)]
        if bad:
            raise InputError(
                f"model config: prompt_points {bad} out of range: backbone {config.backbone} "
                f"has {len(points)} injection points (0-{len(points) - 1})"
            )
        return sorted(config.prompt_points)

    def forward_features(
        self, rgb: Tensor, aux: Tensor, target: Tensor | None, context: Any = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Padded inputs -> (the decoder's feature maps, auxiliary losses). ``context``:
        what `scene_context` returned (None: everything from these inputs)."""
        raise NotImplementedError

    #: `forward` takes ``keep`` (the predictor then passes each window's core).
    takes_keep = True

    def forward(
        self,
        rgb: Tensor,
        aux: Tensor,
        target: Tensor | None = None,
        context: Any = None,
        keep: Keep | None = None,
    ) -> SegmentationOutput:
        """``rgb`` [B,3,H,W] and ``aux`` [B,A,H,W] normalised, ``target`` [B,H,W] (optional,
        IGNORE_INDEX ignored) -> logits [B,classes,H,W]. Any H, W: inputs are padded to the
        backbone's stride and the logits cropped back. ``context``: `scene_context` of the
        scene these windows come from, for window-independent predictions (None: each
        window on its own, as in training). ``keep``: per image, the (row, col, height,
        width) box whose logits will be used (a window's core, when predicting): the detail
        path's per-pixel work runs there only, and outside it the logits are the decoder's
        alone; None: everywhere."""
        self._check_inputs(rgb, aux, target)
        h, w = rgb.shape[-2:]
        divisor = self.backbone.size_divisor
        rgb = pad_to_multiple(rgb, divisor)
        aux = pad_to_multiple(aux, divisor)
        if target is not None:
            target = pad_to_multiple(target, divisor, value=IGNORE_INDEX)
        features, losses = self.forward_features(rgb, aux, target, context)
        size = (rgb.shape[-2], rgb.shape[-1])
        bands = points = None
        if self.decoder.detail is not None:
            bands = torch.cat([rgb, aux], dim=1) if self.reads_aux else rgb
            block = self.config.detail_sample_block
            if self.training and target is not None and block > 1:
                # the loss scores a sample of the pixels (decoder.sample_points), drawn
                # from the image, not its padding
                points = sample_points(len(rgb), h, w, block, rgb.device, size[1])
                logits = self.decoder(features, size, bands, points)
                return SegmentationOutput(logits, losses, target.flatten(1).gather(1, points))
        logits = self.decoder(features, size, bands, keep=keep)
        return SegmentationOutput(logits[..., :h, :w], losses)

    @property
    def needs_scene_context(self) -> bool:
        """Whether predicting a scene window by window needs `scene_context` first."""
        return False

    def scene_context(self, rgb: Tensor, aux: Tensor) -> Any:
        """What this model needs from the whole scene to predict any window of it as it
        would the whole scene; None for models whose windows need nothing (the default)."""
        return None

    def set_backbone_checkpointing(self, mode: bool | str | float = "auto") -> bool:
        """Activation checkpointing of the frozen backbone in training (``train.
        checkpoint_backbone``): ``auto`` checkpoints a frozen ViT's blocks
        (``AUTO_VIT_SHARE`` of them) and nothing of a CNN, ``True`` every segment of any
        frozen backbone (refused for a fine-tuned one), a number that share of the
        segments, ``False`` none. Returns whether any is checkpointed.

        Why ``auto`` means ViTs only (benchmarks/training_cost.py, patch 256, batch 8,
        tensor peak relative to full fine-tuning): prompters between all blocks make
        backward run through every frozen block, so without it a ViT-S GoPT step keeps
        0.70x (0.58x with a third of the blocks checkpointed, the default, 0.37x with
        all), for one more forward of each checkpointed block. A CNN keeps far less
        (EfficientNet-Lite0: 0.43x without), so there the recomputation buys little.
        """
        share = checkpoint_share(mode)
        if self.backbone is None:
            return False  # nothing to checkpoint
        if share == "auto":
            share = AUTO_VIT_SHARE if self.backbone.frozen and self.backbone.kind == "vit" else 0.0
        if share and not self.backbone.frozen:
            raise InputError(
                f"train.checkpoint_backbone: {mode} needs a frozen backbone; "
                f"{self.config.variant} fine-tunes its backbone (use auto or false)"
            )
        self.backbone.set_checkpointing(share)
        return bool(share)

    def set_progress(self, fraction: float) -> None:
        """Where training is (0 at the first step, 1 at the last), for models with a
        schedule (GoPT's assignment); the default has none."""

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
        backbone = self.backbone
        return backbone is not None and backbone.frozen and key.startswith("backbone.")

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The trainable state: trainable parameters plus the buffers of trainable modules
        (decoder batch-norm statistics), i.e. everything outside the frozen backbone."""
        return {k: v for k, v in self.state_dict().items() if not self._is_frozen_key(k)}

    def load_trainable_state_dict(self, state: dict[str, Tensor], source: str = "state") -> None:
        """Load ``trainable_state_dict`` output strictly: same keys, same shapes."""
        expected = self.trainable_state_dict()
        if all(k in expected and k not in state for k in DETAIL_GATE_KEYS):
            state = {**state, **{k: torch.zeros_like(expected[k]) for k in DETAIL_GATE_KEYS}}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            # the detail path's first design (3x3 stem + decoder context, 2026-12-03) was
            # replaced by a per-pixel MLP before a release; say so rather than list keys
            first_detail = any(k.startswith(FIRST_DETAIL_KEYS) for k in unexpected)
            hint = " (the first detail path's tensors: retrain this adapter)" * first_detail
            raise InputError(
                f"{source}: tensors do not match the model: {len(missing)} missing "
                f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}{hint}"
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
        """What the adapter records to refuse loading onto other weights (``NO_BACKBONE``
        for a model without one)."""
        return dict(NO_BACKBONE) if self.backbone is None else self.backbone.identity()
