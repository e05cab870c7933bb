"""GoPT and its baselines: frozen timm backbone, grouping prompters, decoder.

The registry of model variants and `build_model` live here, as in
segmentation_models_pytorch (registry + create function in the package). The package
is lazy: ``ModelConfig``, ``ParameterReport`` and ``VARIANTS`` come from the torch-free
``config`` and ``variants`` modules, every torch name is imported on first use (module
``__getattr__``), so that reading a config or an adapter's metadata does not import
torch and timm.

One table each, every other list derived: the variants are ``variants.VARIANT_TABLE``
(``VARIANTS``, ``MODEL_REGISTRY`` and the variant classes' lazy names come from it),
the other torch-backed public names are ``_SHARED`` below; ``__all__`` is both plus the
torch-free names. (Type checkers see the lazy names through ``__getattr__``.)

Modules, each importing only those before it: ``variants`` and ``config`` (torch-free);
``backbone`` (timm, its internals through ``gopt_geo.compat``), ``decoder`` (with the
full-resolution detail path), ``prompters``; ``base`` (config + backbone + decoder: what
every variant shares); ``gopt``, ``baselines`` and ``pixel`` (base (+ prompters); the
baselines never import GoPT).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from gopt_geo.lazy import lazy_exports
from gopt_geo.models.config import ModelConfig, ParameterReport
from gopt_geo.models.variants import AUX_FREE_VARIANTS, VARIANT_TABLE, VARIANTS, Variant

if TYPE_CHECKING:  # this module's own annotations
    from gopt_geo.models.base import SegmentationModel

#: variant name -> "module:class" of its model; resolved on use, so that the registry
#: itself costs no torch import. Keys are exactly ``VARIANTS`` (what configs accept).
MODEL_REGISTRY: dict[str, str] = {v.name: v.target for v in VARIANT_TABLE}

#: The torch-backed public names that are not a variant's class -> their module.
_SHARED: dict[str, str] = {
    "FrozenBackbone": "gopt_geo.models.backbone",
    "InjectionPoint": "gopt_geo.models.backbone",
    "RandomBackboneWarning": "gopt_geo.models.backbone",
    "SegmentationModel": "gopt_geo.models.base",
    "SegmentationOutput": "gopt_geo.models.base",
    "SceneContext": "gopt_geo.models.gopt",
}

#: Every torch-backed public name -> the module that defines it (imported on first access).
_LAZY: dict[str, str] = {**_SHARED, **{v.class_name: v.module for v in VARIANT_TABLE}}


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


# torch-backed names imported on first access (PEP 562)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [  # derived from the tables above
    "AUX_FREE_VARIANTS",
    "MODEL_REGISTRY",
    "VARIANTS",
    "VARIANT_TABLE",
    "ModelConfig",
    "ParameterReport",
    "Variant",
    "build_model",
    "model_class",
    *_LAZY,
]
