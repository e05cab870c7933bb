"""The run report of a prediction: the same facts as JSON (for scripts) and Markdown (for people).

A map is only as useful as what is known about how it was made: which inputs, which
model and bands, how it was tiled, how long it took and what it found (class areas).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
    has_area = any("area_ha" in c for c in report["classes"])
    lines += ["## Classes", ""]
    header = "| code | class | pixels | % of mapped |" + (" area (ha) |" if has_area else "")
    lines += [header, "|---:|---|---:|---:|" + ("---:|" if has_area else "")]
    for c in report["classes"]:
        row = f"| {c['code']} | {c['name']} | {c['pixels']:,} | {c['percent']:.2f} |"
        if has_area:
            row += f" {c.get('area_ha', 0.0):,.2f} |"
        lines.append(row)
    lines += ["", f"Nodata pixels (no prediction): {report['nodata_pixels']:,}", ""]
    if report.get("vector"):
        v = report["vector"]
        lines += [
            "## Vector",
            "",
            f"{v['features']:,} polygons ({v['driver']}), {v['removed_small']:,} removed "
            f"below the minimum area, {v['blocks']} block(s), {v['seconds']:.1f} s.",
            "",
        ]
    lines += ["## Outputs", ""]
    lines += [f"- {k.replace('_', ' ')}: `{v}`" for k, v in report["outputs"].items()]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], json_path: Path, markdown_path: Path) -> None:
    """Write the report as JSON and Markdown, each under a temporary name first."""
    _atomic_write(json_path, json.dumps(report, indent=2, default=str) + "\n")
    _atomic_write(markdown_path, render_markdown(report))
