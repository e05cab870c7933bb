"""GoPT and its baselines: frozen timm backbone, grouping prompters, decoder."""

from gopt_geo.models.backbone import FrozenBackbone, InjectionPoint, RandomBackboneWarning
from gopt_geo.models.gopt import (
    GoPTSegmenter,
    ModelConfig,
    ParameterReport,
    SegmentationModel,
    SegmentationOutput,
    build_model,
)

__all__ = [
    "FrozenBackbone",
    "GoPTSegmenter",
    "InjectionPoint",
    "ModelConfig",
    "ParameterReport",
    "RandomBackboneWarning",
    "SegmentationModel",
    "SegmentationOutput",
    "build_model",
]
