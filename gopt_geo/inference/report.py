"""The run report of a prediction: the same facts as JSON (for scripts) and Markdown (for people).

A map is only as useful as what is known about how it was made: which inputs, which
model and bands, how it was tiled, how long it took and what it found (class areas).
:func:`build_report` gathers those facts into one dict, :func:`render_markdown` lays
it out for people, :func:`write_report` writes both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.bands import BandRouting
from ..data.classes import ClassScheme
from ..io import write_text_atomic

if TYPE_CHECKING:
    from ..outputs.vectorize import VectorResult
    from .tiling import WindowPlan


@dataclass
class PredictionStats:
    """What a run did and found (also in the run report)."""

    windows: int
    seconds: float
    mpix_per_s: float
    device: str
    pixels: int
    nodata_pixels: int
    class_pixels: dict[int, int]
    class_area_m2: dict[int, float] | None  # None when the scene has no CRS
    vector_features: int | None = None
    # pixels above the uncertainty threshold per class; None without --uncertainty
    class_uncertain_pixels: dict[int, int] | None = None
    uncertainty_threshold: float | None = None


def build_report(
    *,
    inputs: Mapping[str, Any],
    model_info: Mapping[str, Any],
    routing: BandRouting,
    classes: ClassScheme,
    plan: WindowPlan,
    batch_size: int,
    stats: PredictionStats,
    seconds_map: float,
    vector: VectorResult | None,
    class_map_nodata: int,
    outputs: Mapping[str, Path],
) -> dict[str, Any]:
    """The report of one run: inputs, model and bands, tiling, timing, classes, outputs."""
    valid = max(stats.pixels - stats.nodata_pixels, 1)
    class_rows = []
    for c in classes.classes:
        n = stats.class_pixels.get(c.code, 0)
        entry: dict[str, Any] = {
            "code": c.code,
            "name": c.name,
            "pixels": n,
            "percent": 100 * n / valid,
        }
        if stats.class_area_m2 is not None:
            entry["area_ha"] = stats.class_area_m2.get(c.code, 0.0) / 1e4
        if stats.class_uncertain_pixels is not None:
            uncertain = stats.class_uncertain_pixels.get(c.code, 0)
            entry["uncertain_percent"] = 100 * uncertain / n if n else None
        class_rows.append(entry)
    uncertainty = None
    if stats.class_uncertain_pixels is not None:
        uncertainty = {
            "threshold": stats.uncertainty_threshold,
            "measure": "entropy of the blended class probabilities / log(number of classes)",
            "uncertain_pixels": int(sum(stats.class_uncertain_pixels.values())),
            "uncertain_percent": 100 * sum(stats.class_uncertain_pixels.values()) / valid,
        }
    return {
        "inputs": dict(inputs),
        "model": {
            **model_info,
            "optical_bands": list(routing.optical_bands),
            "sar_bands": list(routing.sar_bands),
            "rgb_bands": list(routing.rgb),
            "aux_bands": list(routing.aux_bands),
            "classes": classes.to_dict(),
        },
        "prediction": {
            "device": stats.device,
            "window": plan.window,
            "overlap": plan.overlap,
            "stride": plan.stride,
            "margin": plan.margin,
            "model_pixels_per_scene_pixel": round(
                plan.model_pixels / (plan.width * plan.height), 3
            ),
            "batch_size": batch_size,
            "windows": stats.windows,
            "blend": "separable Hann (sin^2) weight on logits",
        },
        "timing": {
            "seconds_total": stats.seconds,
            "seconds_map": seconds_map,
            "seconds_vector": vector.seconds if vector else None,
            "megapixels": stats.pixels / 1e6,
            "mpix_per_s": stats.mpix_per_s,
        },
        "classes": class_rows,
        "nodata_pixels": stats.nodata_pixels,
        "class_map_nodata": class_map_nodata,
        "uncertainty": uncertainty,
        "vector": vector.to_dict() if vector else None,
        "outputs": {k: str(v) for k, v in outputs.items()},
    }


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _section(title: str, items: dict[str, Any]) -> list[str]:
    lines = [f"## {title}", "", "| | |", "|---|---|"]
    for key, value in items.items():
        if isinstance(value, dict):
            continue
        lines.append(f"| {key.replace('_', ' ')} | {_fmt(value)} |")
    return [*lines, ""]


def render_markdown(report: dict[str, Any]) -> str:
    """A human-readable page with the report's inputs, model, tiling, timing and classes."""
    inputs = report["inputs"]
    lines = [f"# Land-cover map of {Path(str(inputs['scene'])).name}", ""]
    lines += _section("Inputs", inputs)
    model = {k: v for k, v in report["model"].items() if k != "classes"}
    lines += _section("Model", model)
    lines += _section("Prediction", report["prediction"])
    lines += _section("Timing", report["timing"])
    quicklook = report["outputs"].get("quicklook")
    if quicklook:  # the report sits beside it: a relative link survives moving the folder
        lines += [f"![quicklook: optical image and class map]({Path(quicklook).name})", ""]
    has_area = any("area_ha" in c for c in report["classes"])
    uncertainty = report.get("uncertainty")
    lines += ["## Classes", ""]
    header = "| code | class | pixels | % of mapped |" + (" area (ha) |" if has_area else "")
    align = "|---:|---|---:|---:|" + ("---:|" if has_area else "")
    if uncertainty:
        header += f" % uncertain (> {uncertainty['threshold']:g}) |"
        align += "---:|"
    lines += [header, align]
    for c in report["classes"]:
        row = f"| {c['code']} | {c['name']} | {c['pixels']:,} | {c['percent']:.2f} |"
        if has_area:
            row += f" {c.get('area_ha', 0.0):,.2f} |"
        if uncertainty:
            share = c.get("uncertain_percent")
            row += f" {share:.2f} |" if share is not None else " - |"
        lines.append(row)
    lines += ["", f"Nodata pixels (no prediction): {report['nodata_pixels']:,}", ""]
    if uncertainty:
        lines += [
            f"Uncertainty ({uncertainty['measure']}) above {uncertainty['threshold']:g}: "
            f"{uncertainty['uncertain_percent']:.2f}% of the mapped pixels.",
            "",
        ]
    if report.get("vector"):
        v = report["vector"]
        sieve = ""
        if v.get("sieve_pixels", 0) > 1:
            sieve = (
                f" Regions under {v['sieve_pixels']:,} pixels were merged into their "
                f"neighbours ({v.get('sieved_pixels', 0):,} pixels);"
            )
        lines += [
            "## Vector",
            "",
            f"{v['features']:,} polygons ({v['driver']}), {v['blocks']} block(s), "
            f"{v['seconds']:.1f} s.{sieve} {v['removed_small']:,} isolated region(s) below "
            "the minimum area dropped.",
            "",
        ]
    lines += ["## Outputs", ""]
    lines += [f"- {k.replace('_', ' ')}: `{v}`" for k, v in report["outputs"].items()]
    return "\n".join(lines) + "\n"


def report_json(report: dict[str, Any]) -> str:
    """The report as JSON text."""
    return json.dumps(report, indent=2, default=str) + "\n"


def write_report(report: dict[str, Any], json_path: Path, markdown_path: Path) -> None:
    """Write the report as JSON and Markdown, each under a temporary name first (alone;
    a prediction writes them into its output set, which commits them last)."""
    write_text_atomic(json_path, report_json(report))
    write_text_atomic(markdown_path, render_markdown(report))
