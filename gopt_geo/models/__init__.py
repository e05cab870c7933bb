"""GoPT and its baselines: frozen timm backbone, grouping prompters, decoder.

The registry of model variants and `build_model` live here, as in
segmentation_models_pytorch (registry + create function in the package). The package
is lazy: ``ModelConfig``, ``ParameterReport`` and ``VARIANTS`` come from the torch-free
``config`` module, every torch name is imported on first use (module ``__getattr__``),
so that reading a config or an adapter's metadata does not import torch and timm.

Modules, each importing only those before it: ``config`` (torch-free); ``backbone``
(timm, its internals through ``gopt_geo.compat``), ``decoder``, ``prompters``; ``base``
(config + backbone + decoder: what every variant shares); ``gopt`` and ``baselines``
(base + prompters; the baselines never import GoPT).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gopt_geo.models.config import VARIANTS, ModelConfig, ParameterReport

if TYPE_CHECKING:
    from gopt_geo.models.backbone import FrozenBackbone, InjectionPoint, RandomBackboneWarning
    from gopt_geo.models.base import SegmentationModel, SegmentationOutput
    from gopt_geo.models.baselines import (
        EarlyFusionSegmenter,
        OpticalAllBandsSegmenter,
        OpticalOnlySegmenter,
        StaticPromptSegmenter,
    )
    from gopt_geo.models.gopt import GoPTSegmenter, SceneContext

#: variant name -> "module:class" of its model; resolved on use, so that the registry
#: itself costs no torch import. Keys are exactly ``VARIANTS`` (what configs accept).
MODEL_REGISTRY: dict[str, str] = {
    "gopt": "gopt_geo.models.gopt:GoPTSegmenter",
    "optical_only": "gopt_geo.models.baselines:OpticalOnlySegmenter",
    "optical_all_bands": "gopt_geo.models.baselines:OpticalAllBandsSegmenter",
    "early_fusion": "gopt_geo.models.baselines:EarlyFusionSegmenter",
    "static_prompt": "gopt_geo.models.baselines:StaticPromptSegmenter",
}

#: torch-backed public names -> the module that defines them (imported on first access).
_LAZY: dict[str, str] = {
    "FrozenBackbone": "gopt_geo.models.backbone",
    "InjectionPoint": "gopt_geo.models.backbone",
    "RandomBackboneWarning": "gopt_geo.models.backbone",
    "SegmentationModel": "gopt_geo.models.base",
    "SegmentationOutput": "gopt_geo.models.base",
    "GoPTSegmenter": "gopt_geo.models.gopt",
    "SceneContext": "gopt_geo.models.gopt",
    "OpticalOnlySegmenter": "gopt_geo.models.baselines",
    "OpticalAllBandsSegmenter": "gopt_geo.models.baselines",
    "EarlyFusionSegmenter": "gopt_geo.models.baselines",
    "StaticPromptSegmenter": "gopt_geo.models.baselines",
}


def model_class(variant: str) -> type[SegmentationModel]:
    """The model class registered for ``variant``."""
    try:
        target = MODEL_REGISTRY[variant]
    except KeyError:
        raise ValueError(
            f"unknown model variant {variant!r}; registered: {', '.join(MODEL_REGISTRY)}"
        ) from None
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def build_model(cfg: ModelConfig) -> SegmentationModel:
    """The model for ``cfg.variant`` (one of ``VARIANTS``)."""
    return model_class(cfg.variant)(cfg)


def __getattr__(name: str) -> Any:
    """Import torch-backed names on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "MODEL_REGISTRY",
    "VARIANTS",
    "EarlyFusionSegmenter",
    "FrozenBackbone",
    "GoPTSegmenter",
    "InjectionPoint",
    "ModelConfig",
    "OpticalAllBandsSegmenter",
    "OpticalOnlySegmenter",
    "ParameterReport",
    "RandomBackboneWarning",
    "SceneContext",
    "SegmentationModel",
    "SegmentationOutput",
    "StaticPromptSegmenter",
    "build_model",
    "model_class",
]
