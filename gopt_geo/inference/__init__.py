"""Whole-scene mapping: streaming sliding-window prediction, COG outputs, vector land cover."""

from .predictor import (
    PredictionResult,
    PredictionStats,
    Predictor,
    WindowPlan,
    blend_weight,
    predict_scene,
)
from .vectorize import VectorResult, vectorize

__all__ = [
    "PredictionResult",
    "PredictionStats",
    "Predictor",
    "VectorResult",
    "WindowPlan",
    "blend_weight",
    "predict_scene",
    "vectorize",
]
