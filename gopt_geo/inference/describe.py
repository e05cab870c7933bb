"""What a finished prediction says about itself: statistics, run report, STAC item.

Once the rasters, polygons and quicklook of a scene are complete (under temporary
names), :func:`describe_prediction` gathers what the run did and found
(:class:`~gopt_geo.inference.report.PredictionStats`), writes the run report (JSON for
scripts, Markdown for people; the JSON holds the output settings ``predict-many
--resume`` compares) and then the STAC item, which lists every other file of the set
with its size and checksum: the report must be written before it. The predictor calls
it once, just before the set is committed; nothing here runs the model or reads the
scene.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.bands import BandRouting
from ..data.classes import ClassScheme
from ..outputs.grid import Grid
from ..outputs.output_set import OutputSet
from ..outputs.stac import build_item, item_json, raster_acquisition_time
from ..outputs.vectorize import VectorResult
from .options import PredictOptions
from .report import PredictionStats, build_report, render_markdown, report_json
from .tiling import WindowPlan

if TYPE_CHECKING:
    import pystac


@dataclass
class Description:
    """A finished prediction described: its statistics, run report and STAC item (the
    last two as written into the output set)."""

    stats: PredictionStats
    report: dict[str, Any]
    item: pystac.Item


def describe_prediction(
    outputs: OutputSet,
    *,
    scene: str | Path,
    sar: str | Path | None,
    scene_id: str,
    grid: Grid,
    plan: WindowPlan,
    options: PredictOptions,
    inputs: Mapping[str, Any],
    model_info: Mapping[str, Any],
    routing: BandRouting,
    classes: ClassScheme,
    device: str,
    vector: VectorResult | None,
    seconds: float,
    seconds_map: float,
) -> Description:
    """Describe the prediction held by ``outputs`` (finished, not yet committed) and write
    its report and STAC item into it under their temporary names.

    ``seconds`` is the whole run so far, ``seconds_map`` the part that read the scene and
    ran the model (the throughput is the scene's pixels over it); ``vector`` is the
    polygons' result (None without polygons).
    """
    class_pixels = outputs.class_pixels
    stats = PredictionStats(
        windows=len(plan),
        seconds=seconds,
        mpix_per_s=grid.pixels / 1e6 / max(seconds_map, 1e-9),
        device=device,
        pixels=grid.pixels,
        nodata_pixels=grid.pixels - int(sum(class_pixels.values())),
        class_pixels=class_pixels,
        class_area_m2=outputs.class_area_m2,
        vector_features=vector.features if vector else None,
        class_uncertain_pixels=outputs.class_uncertain_pixels,
        uncertainty_threshold=options.uncertainty_threshold if options.uncertainty else None,
    )
    report = build_report(
        inputs=inputs,
        model_info=model_info,
        routing=routing,
        classes=classes,
        plan=plan,
        batch_size=options.batch_size,
        stats=stats,
        seconds_map=seconds_map,
        vector=vector,
        class_map_nodata=outputs.nodata,
        outputs=outputs.paths,
    )
    report["options"] = options.output_settings()  # what predict-many's resume compares
    outputs.write_text("report_json", report_json(report))
    outputs.write_text("report_markdown", render_markdown(report))
    # the item lists every other file with its size and checksum: written after them
    files = {
        name: (final, outputs.temp(name)) for name, final in outputs.paths.items() if name != "item"
    }
    item = build_item(
        scene_id=scene_id,
        grid=grid,
        files=files,
        classes=classes,
        class_map_nodata=outputs.nodata,
        inputs=inputs,
        model_info=model_info,
        options=options.output_settings(),
        input_hrefs={"optical scene": scene, "SAR raster": sar},
        acquired=raster_acquisition_time(scene),  # the item's datetime when the scene says
    )
    outputs.write_text("item", item_json(item))
    return Description(stats, report, item)
