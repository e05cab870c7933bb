"""The model variants: one table, the source of every list of them.

Torch-free on purpose, like ``config``: configs are validated against it and adapters
described from it without importing torch. ``VARIANTS`` (what configs accept, in the
order reports list them), the package's ``MODEL_REGISTRY`` (variant -> "module:class"),
its lazily imported class names and ``__all__`` all derive from ``VARIANT_TABLE``; a new
variant is one row here and its class.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """One model variant: its name, where its class lives, and what it reads."""

    name: str  # what ``model.variant`` says
    target: str  # "module:class" of its model, imported on first use
    reads_aux: bool  # whether the model uses the auxiliary input at all (else: predicts
    # without SAR, feeding the aux bands as their training means)
    needs_aux: bool  # whether it refuses ``aux_channels: 0``
    backbone: bool  # whether it builds a (timm) backbone; the per-pixel baseline does not
    summary: str  # one line for docs and reports

    @property
    def module(self) -> str:
        return self.target.split(":")[0]

    @property
    def class_name(self) -> str:
        return self.target.split(":")[1]


#: Every variant, in the order reports list them.
VARIANT_TABLE: tuple[Variant, ...] = (
    Variant(
        "gopt",
        "gopt_geo.models.gopt:GoPTSegmenter",
        reads_aux=True,
        needs_aux=True,
        backbone=True,
        summary="frozen backbone + grouping prompters fed by the auxiliary bands",
    ),
    Variant(
        "optical_only",
        "gopt_geo.models.baselines:OpticalOnlySegmenter",
        reads_aux=False,
        needs_aux=False,
        backbone=True,
        summary="frozen backbone on RGB + decoder; auxiliary bands ignored",
    ),
    Variant(
        "optical_all_bands",
        "gopt_geo.models.baselines:OpticalAllBandsSegmenter",
        reads_aux=True,
        needs_aux=True,
        backbone=True,
        summary="frozen backbone on RGB + decoder, auxiliary bands as a decoder level",
    ),
    Variant(
        "early_fusion",
        "gopt_geo.models.baselines:EarlyFusionSegmenter",
        reads_aux=True,
        needs_aux=False,
        backbone=True,
        summary="every band into one fully fine-tuned backbone",
    ),
    Variant(
        "static_prompt",
        "gopt_geo.models.baselines:StaticPromptSegmenter",
        reads_aux=False,
        needs_aux=False,
        backbone=True,
        summary="learnable prompt tokens without grouping; auxiliary bands ignored",
    ),
    Variant(
        "pixel",
        "gopt_geo.models.pixel:PixelSegmenter",
        reads_aux=True,
        needs_aux=False,
        backbone=False,
        summary="per-pixel classifier (1x1 MLP) on every band: the remote-sensing yardstick",
    ),
)

#: variant name -> its row.
VARIANT_INFO: dict[str, Variant] = {v.name: v for v in VARIANT_TABLE}

#: The variant names, in the order reports list them (what configs accept).
VARIANTS: tuple[str, ...] = tuple(VARIANT_INFO)

#: Variants whose model ignores the auxiliary input: they predict without SAR.
AUX_FREE_VARIANTS: tuple[str, ...] = tuple(v.name for v in VARIANT_TABLE if not v.reads_aux)
