"""The adapter file's metadata, read without torch (``gopt-geo info``, design §5).

An adapter is a ``.safetensors`` file: the trainable tensors plus one JSON document
under the metadata key ``gopt_geo`` (model config, backbone identity, band routing,
class scheme, parameter report, training summary, metrics, gopt-geo version). Reading
that document must stay cheap: ``gopt-geo info`` answers in about a second, which
importing torch and timm alone would exceed. So the safetensors header is parsed here
directly (its layout is fixed by the format: an 8-byte little-endian header length,
then that many bytes of JSON whose ``__metadata__`` maps strings to strings), and
nothing here imports torch; saving and loading tensors is `gopt_geo.checkpoint`.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gopt_geo.data.bands import BandRouting
from gopt_geo.data.classes import ClassScheme
from gopt_geo.errors import InputError
from gopt_geo.models.config import ModelConfig, ParameterReport, UnknownConfigFields

#: The safetensors metadata key holding the JSON document.
METADATA_KEY = "gopt_geo"
#: Version of the JSON layout, bumped on incompatible changes.
FORMAT_VERSION = 1
#: safetensors refuses headers above 100 MB; an adapter's is a few kB.
_MAX_HEADER_BYTES = 100_000_000


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


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a ``.safetensors`` file, checked as safetensors would.

    Also checks that the file holds every tensor byte its header promises, so that a
    truncated download is refused here (as ``safetensors.safe_open`` does) rather than
    described as a valid adapter. Raises ValueError naming what is wrong.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{size} bytes, shorter than a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(size - 8, _MAX_HEADER_BYTES):
            raise ValueError(f"header length {length} does not fit the file's {size} bytes")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError("header __metadata__ is not a map of strings")
    end = 0
    for name, info in header.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            raise ValueError(f"tensor {name!r} has no valid data_offsets")
        end = max(end, offsets[1])
    data = size - 8 - length
    if end != data:
        raise ValueError(f"header describes {end} bytes of tensor data, the file holds {data}")
    return metadata


#: Limits of the metadata document: an adapter's is a few kB, about 6 levels deep; a
#: file far outside them was crafted or damaged, and is refused before anything reads it.
MAX_METADATA_BYTES = 16 * 2**20
MAX_METADATA_DEPTH = 32


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _read_document(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path}: adapter file not found")
    try:
        stored = read_safetensors_metadata(path)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable .safetensors adapter file ({e})") from e
    if METADATA_KEY not in stored:
        raise InputError(f"{path}: not a gopt-geo adapter (no {METADATA_KEY!r} metadata)")
    text = stored[METADATA_KEY]
    if len(text) > MAX_METADATA_BYTES:
        raise InputError(
            f"{path}: gopt-geo metadata of {len(text):,} bytes, more than the "
            f"{MAX_METADATA_BYTES:,} an adapter holds (not an adapter gopt-geo wrote)"
        )
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: corrupt gopt-geo metadata ({e})") from e
    except RecursionError:
        document = None  # nested past Python's limit: refused below like any deep document
    if document is None or _depth(document) > MAX_METADATA_DEPTH:
        raise InputError(
            f"{path}: gopt-geo metadata nested deeper than {MAX_METADATA_DEPTH} levels "
            "(not an adapter gopt-geo wrote)"
        )
    if not isinstance(document, dict):
        raise InputError(f"{path}: corrupt gopt-geo metadata (not a JSON object)")
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(
            f"{path}: adapter format version {version}, this gopt-geo reads {FORMAT_VERSION}"
        )
    return document


def read_adapter_metadata(path: str | os.PathLike[str]) -> AdapterMetadata:
    """The adapter's metadata, without building any model (for ``gopt-geo info``).

    A file written by an older gopt-geo loads (config fields it lacks get the values it
    was trained with); one whose model config has fields this version does not know is
    refused, naming them, since they may change the model's math.
    """
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
    except UnknownConfigFields as e:
        written = document.get("gopt_geo_version", "an unknown version")
        raise InputError(f"{path}: written by gopt-geo {written}: {e}") from e
    except (InputError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: corrupt gopt-geo metadata ({e})") from e


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
