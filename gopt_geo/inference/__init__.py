"""Whole-scene mapping: streaming sliding-window prediction into the GIS outputs.

Modules, bottom up: :mod:`.reader` (windows of a scene, SAR warped on the fly),
:mod:`.tiling` (window plan, blend weight, streaming row strip; arrays only),
:mod:`.context` (a scene-wide context for CUP's groups), :mod:`.options`
(:class:`PredictOptions`, every prediction option declared once), :mod:`.report` (the
run report), :mod:`.describe` (statistics, report and STAC item of a finished
prediction), :mod:`.sanity` (does a scene look like the training data),
:mod:`.predictor` (all of it, for one scene), :mod:`.scene` (a scene as plain strings),
:mod:`.stac_scenes` (scenes from STAC items), :mod:`.sources` (scenes from paths, URLs,
STAC, folders, manifests), :mod:`.runner` (one scene per task, retried when transient),
:mod:`.run_outputs` (a run's report, index, mosaics and collection), :mod:`.cluster`
(the Dask executor) and :mod:`.many` (many scenes on any executor). The files
themselves (writers, output set, styles, STAC, quicklook, polygons, grid) are
:mod:`gopt_geo.outputs`.

Names are imported on first use (module ``__getattr__``): importing
:mod:`.options` (what the command line reads to build its flags) must not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gopt_geo.lazy import lazy_exports

if TYPE_CHECKING:
    from ..outputs.grid import Grid
    from ..outputs.output_set import OutputSet
    from ..outputs.vectorize import VectorResult, vectorize
    from .many import RunResult, predict_many
    from .options import PredictOptions
    from .predictor import PredictionResult, Predictor, predict_scene
    from .reader import SceneReader
    from .report import PredictionStats
    from .scene import Scene
    from .sources import collect_scenes
    from .tiling import WindowPlan, blend_weight, stream_rows

#: Every public name: the module it comes from.
_LAZY: dict[str, str] = {
    "Grid": "gopt_geo.outputs.grid",
    "OutputSet": "gopt_geo.outputs.output_set",
    "VectorResult": "gopt_geo.outputs.vectorize",
    "vectorize": "gopt_geo.outputs.vectorize",
    "RunResult": "gopt_geo.inference.many",
    "predict_many": "gopt_geo.inference.many",
    "PredictOptions": "gopt_geo.inference.options",
    "PredictionResult": "gopt_geo.inference.predictor",
    "Predictor": "gopt_geo.inference.predictor",
    "predict_scene": "gopt_geo.inference.predictor",
    "SceneReader": "gopt_geo.inference.reader",
    "PredictionStats": "gopt_geo.inference.report",
    "Scene": "gopt_geo.inference.scene",
    "collect_scenes": "gopt_geo.inference.sources",
    "WindowPlan": "gopt_geo.inference.tiling",
    "blend_weight": "gopt_geo.inference.tiling",
    "stream_rows": "gopt_geo.inference.tiling",
}


# torch-backed names imported on first access (PEP 562)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


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
