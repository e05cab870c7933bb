"""The adapter file: what GoPT trained, in one small `.safetensors` file (DESIGN.md §5).

The file holds the trainable tensors only (prompters, auxiliary embedding, decoder;
a few MB), never the frozen backbone, plus JSON metadata under one safetensors metadata
key: the model config, the backbone's name, weights source and sha256, the band routing
(band names per modality, order, SAR units, normalisation statistics), the class scheme
(codes, names, colours), the parameter report, training summary, metrics and gopt-geo
version. Loading rebuilds the backbone from that record and refuses different weights,
so an adapter can never be silently applied to a backbone it was not trained on.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from gopt_geo import __version__
from gopt_geo.data.bands import BandRouting
from gopt_geo.data.classes import ClassScheme
from gopt_geo.errors import InputError
from gopt_geo.models.gopt import ModelConfig, ParameterReport, SegmentationModel, build_model

#: The safetensors metadata key holding the JSON document.
METADATA_KEY = "gopt_geo"
#: Version of the JSON layout, bumped on incompatible changes.
FORMAT_VERSION = 1


@dataclass
class AdapterMetadata:
    """The adapter's metadata, parsed; ``raw`` is the JSON document as stored."""

    model: ModelConfig
    backbone: dict[str, Any]
    routing: BandRouting
    classes: ClassScheme
    parameters: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    gopt_geo_version: str = ""
    raw: dict[str, Any] = field(default_factory=dict)


def save_adapter(path: str | os.PathLike[str], model: SegmentationModel, metadata: dict) -> Path:
    """Write ``model``'s trainable state and ``metadata`` to one ``.safetensors`` file.

    ``metadata`` holds at least ``routing`` (BandRouting.to_dict()) and ``classes``
    (ClassScheme.to_dict()), optionally ``training`` and ``metrics``; the model config,
    backbone identity, parameter report and version are added here. The file is written
    under a temporary name and renamed when complete, so a crash never leaves a file that
    looks like a finished adapter.
    """
    path = Path(path)
    for key in ("routing", "classes"):
        if key not in metadata:
            raise ValueError(f"save_adapter: metadata needs {key!r}")
    routing = BandRouting.from_dict(metadata["routing"])
    classes = ClassScheme.from_dict(metadata["classes"])
    cfg = model.config
    if routing.num_aux != cfg.aux_channels:
        raise ValueError(
            f"save_adapter: routing has {routing.num_aux} aux bands {routing.aux_bands}, "
            f"the model was built for {cfg.aux_channels}"
        )
    if classes.num_classes != cfg.num_classes:
        raise ValueError(
            f"save_adapter: class scheme has {classes.num_classes} classes, "
            f"the model predicts {cfg.num_classes}"
        )
    document = {
        **metadata,
        "format_version": FORMAT_VERSION,
        "model": cfg.to_dict(),
        "backbone": model.backbone_identity(),
        "parameters": model.parameter_report().to_dict(),
        "gopt_geo_version": __version__,
    }
    tensors = {
        k: v.detach().to("cpu").contiguous() for k, v in model.trainable_state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        safetensors.torch.save_file(
            tensors, str(tmp), metadata={METADATA_KEY: json.dumps(document)}
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _read_document(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path}: adapter file not found")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            stored = f.metadata() or {}
    except Exception as e:
        raise InputError(f"{path}: not a readable .safetensors adapter file ({e})") from e
    if METADATA_KEY not in stored:
        raise InputError(f"{path}: not a gopt-geo adapter (no {METADATA_KEY!r} metadata)")
    try:
        document = json.loads(stored[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: corrupt gopt-geo metadata ({e})") from e
    if not isinstance(document, dict):
        raise InputError(f"{path}: corrupt gopt-geo metadata (not a JSON object)")
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(
            f"{path}: adapter format version {version}, this gopt-geo reads {FORMAT_VERSION}"
        )
    return document


def read_adapter_metadata(path: str | os.PathLike[str]) -> AdapterMetadata:
    """The adapter's metadata, without building any model (for ``gopt-geo info``)."""
    path = Path(path)
    document = _read_document(path)
    missing = [k for k in ("model", "backbone", "routing", "classes") if k not in document]
    if missing:
        raise InputError(f"{path}: corrupt gopt-geo metadata (missing {', '.join(missing)})")
    try:
        return AdapterMetadata(
            model=ModelConfig.from_dict(document["model"]),
            backbone=dict(document["backbone"]),
            routing=BandRouting.from_dict(document["routing"]),
            classes=ClassScheme.from_dict(document["classes"]),
            parameters=dict(document.get("parameters", {})),
            training=dict(document.get("training") or {}),
            metrics=dict(document.get("metrics") or {}),
            gopt_geo_version=str(document.get("gopt_geo_version", "")),
            raw=document,
        )
    except (InputError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: corrupt gopt-geo metadata ({e})") from e


def _short(sha: str) -> str:
    return f"{sha[:12]}…"


def load_adapter(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    weights: str | None = None,
) -> tuple[SegmentationModel, AdapterMetadata]:
    """Rebuild the model an adapter was trained with, in eval mode.

    The backbone is created from the recorded name and weights source (or ``weights``,
    e.g. a local copy of the same weights on another machine), its sha256 is checked
    against the recorded one, and the trainable tensors are loaded strictly.
    """
    path = Path(path)
    meta = read_adapter_metadata(path)
    cfg = meta.model if weights is None else dataclasses.replace(meta.model, weights=weights)
    recorded = meta.backbone
    try:
        model = build_model(cfg)
    except InputError as e:
        raise InputError(
            f"{path}: cannot rebuild the backbone it was trained on ({recorded.get('name')}, "
            f"weights {recorded.get('weights')}): {e}"
        ) from e
    built = model.backbone_identity()
    if built["name"] != recorded.get("name") or built["sha256"] != recorded.get("sha256"):
        raise InputError(
            f"{path}: adapter was trained on backbone {recorded.get('name')} (weights "
            f"{recorded.get('weights')}, sha256 {_short(str(recorded.get('sha256')))}), but the "
            f"backbone built here is {built['name']} (weights {built['weights']}, sha256 "
            f"{_short(built['sha256'])}); load it with the weights it was trained on"
        )
    try:
        tensors = safetensors.torch.load_file(str(path), device="cpu")
    except Exception as e:
        raise InputError(f"{path}: cannot read the adapter tensors ({e})") from e
    model.load_trainable_state_dict(tensors, source=str(path))
    model.to(map_location)
    model.eval()
    return model, meta


def _format_section(section: dict[str, Any], indent: str = "  ") -> list[str]:
    """``key: value`` lines; nested dicts (e.g. metrics per split) as dotted keys."""
    lines = []
    for key, value in section.items():
        if isinstance(value, dict):
            nested = _format_section(value, indent)
            lines.extend(f"{indent}{key}.{line.strip()}" for line in nested)
        elif isinstance(value, float):
            lines.append(f"{indent}{key}: {value:.4f}")
        elif isinstance(value, list):
            lines.append(f"{indent}{key}: {json.dumps(value)}")
        else:
            lines.append(f"{indent}{key}: {value}")
    return lines


def _readable_metrics(metrics: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Per-split scores with per-class lists turned into ``name: value`` entries."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if not isinstance(value, dict):
            out[key] = value
            continue
        split = {k: v for k, v in value.items() if not isinstance(v, list)}
        for list_key in ("iou", "accuracy"):
            if isinstance(value.get(list_key), list):
                split[list_key] = {
                    n: round(float(v), 4) for n, v in zip(names, value[list_key], strict=False)
                }
        out[key] = split
    return out


def describe_adapter(path: str | os.PathLike[str]) -> str:
    """Human-readable summary of an adapter for ``gopt-geo info``."""
    path = Path(path)
    meta = read_adapter_metadata(path)
    cfg, routing, backbone = meta.model, meta.routing, meta.backbone
    size_mb = path.stat().st_size / 1e6
    lines = [
        f"Adapter: {path} ({size_mb:.2f} MB, gopt-geo {meta.gopt_geo_version})",
        f"Model: {cfg.variant}, {cfg.num_classes} classes, {cfg.groups} groups, "
        f"prompt dim {cfg.prompt_dim}, prompt every {cfg.prompt_every}, "
        f"assignment {cfg.assignment} (tau {cfg.tau}), decoder dim {cfg.decoder_dim}",
        f"Backbone: {backbone.get('name')}, weights {backbone.get('weights')}, "
        f"sha256 {backbone.get('sha256')}",
        f"Bands: optical {', '.join(routing.optical_bands)}; SAR "
        f"{', '.join(routing.sar_bands) or '-'} (units {routing.sar_units})",
        f"  rgb (frozen backbone): {', '.join(routing.rgb)}",
        f"  aux (prompt stream): {', '.join(routing.aux_bands) or '-'}",
    ]
    if routing.mean:
        stats = ", ".join(
            f"{b} {routing.mean.get(b, 0.0):.4g}±{routing.std.get(b, 1.0):.4g}"
            for b in routing.all_bands
        )
        lines.append(f"  normalisation (mean±std): {stats}")
    lines.append(f"Classes ({meta.classes.num_classes}):")
    for index, c in enumerate(meta.classes.classes):
        lines.append(f"  {index}: code {c.code:>3}  {c.name}  rgb{tuple(c.color)}")
    if meta.classes.ignore_code is not None:
        lines.append(f"  ignored: code {meta.classes.ignore_code}  {meta.classes.ignore_name}")
    p = meta.parameters
    if p:
        report = ParameterReport(int(p["trainable"]), int(p["total"]), float(p["percent"]))
        lines.append(f"Parameters: {report}")
    # the full run config stays in the file (read_adapter_metadata(...).training) but
    # is too long to print; per-class lists are shown as the per-class table instead
    training = {k: v for k, v in meta.training.items() if k != "config"}
    metrics = _readable_metrics(meta.metrics, meta.classes.names)
    for title, section in (("Training", training), ("Metrics", metrics)):
        if section:
            lines.append(f"{title}:")
            lines.extend(_format_section(section))
    return "\n".join(lines)
