"""The names of one prediction's files, derived from the scene's name.

Every file of a run is named ``<scene stem><suffix>`` in the output folder
(:data:`FAMILY`). :func:`output_paths` is what one run writes, as its options say;
:func:`output_family` is every name a run of that scene may own whatever its options,
so that a run replacing an older set (or refusing to) sees all of it. What a set holds
is read through the :class:`Products` protocol, so nothing here imports the prediction
layer above.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .vectorize import VECTOR_FORMATS


class Products(Protocol):
    """What a set holds beyond the class map, and whether it may replace an old set.

    :class:`~gopt_geo.inference.options.PredictOptions` is one; the output layer only
    reads these fields, so it needs nothing from the prediction layer above it.
    """

    confidence: bool
    probabilities: bool
    uncertainty: bool
    uncertainty_threshold: float
    vector: str | None
    overwrite: bool


#: Every file a run may write, as ``name: suffix after the scene stem``.
FAMILY = {
    "class_map": "_classes.tif",
    "class_map_rat": "_classes.tif.aux.xml",
    "class_map_style": "_classes.qml",
    "confidence": "_confidence.tif",
    "confidence_aux": "_confidence.tif.aux.xml",
    "confidence_style": "_confidence.qml",
    "probabilities": "_probabilities.tif",
    "probabilities_aux": "_probabilities.tif.aux.xml",
    "uncertainty": "_uncertainty.tif",
    "uncertainty_aux": "_uncertainty.tif.aux.xml",
    "uncertainty_style": "_uncertainty.qml",
    **{f"vector_{fmt}": f"_landcover{suffix}" for fmt, suffix in VECTOR_FORMATS.items()},
    "vector_style": "_landcover.qml",
    "quicklook": "_quicklook.png",
    "item": "_item.json",
    "report_markdown": "_report.md",
    "report_json": "_report.json",
}
#: The last files renamed into place when a set is committed, and (reversed) the first of
#: an old set removed when a run replaces it: the report JSON is the mark of a complete set.
COMMIT_LAST = ("item", "report_markdown", "report_json")


def output_family(scene: str | Path, out_dir: Path) -> list[Path]:
    """Every file name a run of ``scene`` may own in ``out_dir``, whatever its options
    (removed together when a run replaces the set; refused without ``overwrite``)."""
    stem = Path(scene).stem
    return [Path(out_dir) / f"{stem}{suffix}" for suffix in FAMILY.values()]


def output_paths(scene: str | Path, out_dir: Path, options: Products) -> dict[str, Path]:
    """File names of this run's outputs, derived from the scene's name."""
    stem = Path(scene).stem
    out_dir = Path(out_dir)

    def name(key: str) -> Path:
        return out_dir / f"{stem}{FAMILY[key]}"

    keys = ["class_map", "class_map_rat", "class_map_style"]
    if options.confidence:
        keys += ["confidence", "confidence_style"]
    if options.probabilities:
        keys += ["probabilities"]
    if options.uncertainty:
        keys += ["uncertainty", "uncertainty_style"]
    paths = {key: name(key) for key in keys}
    if options.vector is not None:
        paths["vector"] = name(f"vector_{options.vector}")
        if options.vector != "gpkg":  # a GeoPackage holds its style itself
            paths["vector_style"] = name("vector_style")
    for key in ("quicklook", "item", "report_markdown", "report_json"):
        paths[key] = name(key)
    return paths
