"""Whole-scene mapping: reader -> tiling -> outputs -> polygons -> report.

A :class:`Predictor` holds a model with the band routing and class scheme it was trained
with and maps scenes with it. Each part lives in its own module, so that each can be
tested and changed alone: :class:`~gopt_geo.inference.reader.SceneReader` reads windows
(SAR warped on the fly, one batch read ahead on a thread),
:func:`~gopt_geo.inference.tiling.stream_rows` blends the model's windows into finished
rows while holding one strip of rows (memory flat in the scene's height, DESIGN.md §6),
:class:`~gopt_geo.inference.outputs.OutputSet` writes those rows as COGs,
:func:`~gopt_geo.inference.vectorize.vectorize` polygonises the class map and
:mod:`~gopt_geo.inference.report` describes the run. What to do comes in one
:class:`~gopt_geo.inference.options.PredictOptions`.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.bands import BandRouting
from ..data.classes import ClassScheme
from ..io import resolve_device, streaming_gdal_env
from .options import PredictOptions
from .outputs import OutputSet
from .reader import SceneReader
from .report import PredictionStats, build_report, write_report
from .tiling import WindowPlan, stream_rows
from .vectorize import VectorResult, vectorize


@dataclass
class PredictionResult:
    """Paths of everything a run wrote, and its statistics."""

    class_map: Path
    report_json: Path
    report_markdown: Path
    stats: PredictionStats
    confidence: Path | None = None
    probabilities: Path | None = None
    vector: Path | None = None


class Predictor:
    """Maps whole scenes with a segmentation model and the routing/classes it was trained with.

    ``model(rgb, aux)`` must return logits ``[B, K, H, W]`` (or an object with ``.logits``)
    for any H, W; ``routing`` turns raster bands into those inputs, ``classes`` turns
    class indices into the dataset's codes, names and colours.
    """

    def __init__(
        self,
        model: nn.Module,
        routing: BandRouting,
        classes: ClassScheme,
        *,
        device: str | torch.device = "auto",
        model_info: dict[str, Any] | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.routing = routing
        self.classes = classes
        self.model_info = dict(model_info or {})

    @classmethod
    def from_adapter(
        cls, path: str | Path, device: str | torch.device = "auto", weights: str | None = None
    ) -> Predictor:
        """Load an adapter file (frozen backbone + trained prompters/head) for prediction.

        ``weights`` points at a local copy of the backbone weights the adapter was trained
        on (another machine); the adapter refuses any other backbone.
        """
        from ..checkpoint import load_adapter

        dev = resolve_device(device)
        model, meta = load_adapter(path, map_location=dev, weights=weights)
        info: dict[str, Any] = {
            "adapter": str(path),
            "backbone": dict(meta.backbone),
            "config": meta.model.to_dict(),
            "parameters": dict(meta.parameters),
        }
        return cls(model, meta.routing, meta.classes, device=dev, model_info=info)

    # ------------------------------------------------------------------ prediction

    def predict(
        self,
        scene: str | Path,
        sar: str | Path | None,
        out_dir: str | Path,
        options: PredictOptions | None = None,
    ) -> PredictionResult:
        """Map ``scene`` (with ``sar``) into ``out_dir`` as ``options`` say (default
        options when None); see the module docstring. ``options.device`` and
        ``options.weights`` are not used: this predictor's model is already loaded."""
        options = options if options is not None else PredictOptions()
        with streaming_gdal_env():  # memory flat in scene size: GDAL's cache too
            return self._predict(Path(scene), sar, Path(out_dir), options)

    def _predict(
        self, scene: Path, sar: str | Path | None, out_dir: Path, options: PredictOptions
    ) -> PredictionResult:
        outputs = OutputSet(scene, out_dir, self.classes, options)  # refuses to overwrite
        start = time.perf_counter()
        with SceneReader(scene, sar, self.routing) as reader:
            grid = reader.grid
            plan = WindowPlan.for_grid(grid.height, grid.width, options.window, options.overlap)
            inputs = reader.describe()
            with outputs.open(grid):
                self._map(reader, plan, outputs, options)
                outputs.finish()
        seconds_map = time.perf_counter() - start
        vector_result: VectorResult | None = None
        if options.vector is not None:
            vector_result = vectorize(
                outputs.paths["class_map"],
                outputs.paths["vector"],
                min_area=options.min_area,
                simplify=options.simplify,
                overwrite=options.overwrite,
            )
        seconds = time.perf_counter() - start
        class_pixels = outputs.class_pixels
        stats = PredictionStats(
            windows=len(plan),
            seconds=seconds,
            mpix_per_s=grid.pixels / 1e6 / max(seconds_map, 1e-9),
            device=str(self.device),
            pixels=grid.pixels,
            nodata_pixels=grid.pixels - int(sum(class_pixels.values())),
            class_pixels=class_pixels,
            class_area_m2=outputs.class_area_m2,
            vector_features=vector_result.features if vector_result else None,
        )
        report = build_report(
            inputs=inputs,
            model_info=self.model_info,
            routing=self.routing,
            classes=self.classes,
            plan=plan,
            batch_size=options.batch_size,
            stats=stats,
            seconds_map=seconds_map,
            vector=vector_result,
            class_map_nodata=outputs.nodata,
            outputs=outputs.paths,
        )
        paths = outputs.paths
        write_report(report, paths["report_json"], paths["report_markdown"])
        return PredictionResult(
            class_map=paths["class_map"],
            report_json=paths["report_json"],
            report_markdown=paths["report_markdown"],
            stats=stats,
            confidence=paths.get("confidence"),
            probabilities=paths.get("probabilities"),
            vector=paths.get("vector"),
        )

    def _map(
        self, reader: SceneReader, plan: WindowPlan, outputs: OutputSet, options: PredictOptions
    ) -> None:
        """Windows (read ahead) -> model -> blended rows -> outputs, strip by strip."""
        bar = tqdm(total=len(plan), unit="window", desc="predict", disable=not options.progress)
        batches = reader.batches(plan.windows(), options.batch_size)
        rows = stream_rows(
            plan,
            batches,
            self._infer,
            self.classes.num_classes,
            self.device,
            on_batch=bar.update,
        )
        # closing: the read in flight ends before the reader's files close, even on error
        with bar, closing(batches), closing(rows):
            for row0, logits, valid in rows:
                outputs.write_rows(row0, logits, valid)

    @torch.inference_mode()
    def _infer(self, images: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The model's logits [B, K, h, w] for a batch of windows (the tiling's
        ``model_forward``); invalid pixels are fed as band means (0 after normalising)."""
        rgb, aux = self.routing.prepare(images)
        rgb = torch.where(valid[:, None], rgb, 0.0)  # also clears NaN, which would spread
        aux = torch.where(valid[:, None], aux, 0.0)
        out = self.model(rgb, aux)
        logits = out.logits if hasattr(out, "logits") else out
        if logits.shape[1] != self.classes.num_classes:
            raise RuntimeError(
                f"model returns {logits.shape[1]} classes, the class scheme has "
                f"{self.classes.num_classes}"
            )
        return logits.float()


def predict_scene(
    scene: str | Path,
    sar: str | Path | None,
    model: str | Path,
    out_dir: str | Path,
    options: PredictOptions | None = None,
) -> PredictionResult:
    """``gopt-geo predict``: load the adapter ``model`` (on ``options.device``, with
    ``options.weights``) and map ``scene`` with it."""
    options = options if options is not None else PredictOptions()
    weights = str(options.weights) if options.weights is not None else None
    predictor = Predictor.from_adapter(model, device=options.device, weights=weights)
    return predictor.predict(scene, sar, out_dir, options)
