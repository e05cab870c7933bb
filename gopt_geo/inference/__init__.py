"""Whole-scene mapping: streaming sliding-window prediction, COG outputs, vector land cover.

Modules, bottom up: :mod:`.reader` (windows of a scene, SAR warped on the fly),
:mod:`.tiling` (window plan, blend weight, streaming row strip; arrays only),
:mod:`.writers` (strip-by-strip COG writer), :mod:`.vectorize` (class map -> polygons),
:mod:`.options` (:class:`PredictOptions`), :mod:`.outputs` (the files of one run),
:mod:`.report` (the run report), :mod:`.staging` (committing a run's files as one set),
:mod:`.sanity` (does a scene look like the training data), :mod:`.predictor` (all of
it, for one scene), :mod:`.sources` (scenes from paths, URLs, STAC, manifests) and
:mod:`.many` (many scenes on any executor).
"""

from ..outputs.grid import Grid
from ..outputs.output_set import OutputSet
from ..outputs.vectorize import VectorResult, vectorize
from .many import RunResult, predict_many
from .options import PredictOptions
from .predictor import PredictionResult, Predictor, predict_scene
from .reader import SceneReader
from .report import PredictionStats
from .sources import Scene, collect_scenes
from .tiling import WindowPlan, blend_weight, stream_rows

__all__ = [
    "Grid",
    "OutputSet",
    "PredictOptions",
    "PredictionResult",
    "PredictionStats",
    "Predictor",
    "RunResult",
    "Scene",
    "SceneReader",
    "VectorResult",
    "WindowPlan",
    "blend_weight",
    "collect_scenes",
    "predict_many",
    "predict_scene",
    "stream_rows",
    "vectorize",
]
