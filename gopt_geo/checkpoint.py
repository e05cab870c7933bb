"""The adapter file: what GoPT trained, in one small `.safetensors` file (design §5).

The file holds the trainable tensors only (prompters, auxiliary embedding, decoder;
a few MB), never the frozen backbone, plus JSON metadata under one safetensors metadata
key: the model config, the backbone's name, weights source and sha256, the band routing
(band names per modality, order, SAR units, normalisation statistics), the class scheme
(codes, names, colours), the parameter report, training summary, metrics and gopt-geo
version. Loading rebuilds the backbone from that record and refuses different weights,
so an adapter can never be silently applied to a backbone it was not trained on.

This module writes and loads the tensors (torch). Reading the metadata alone
(`read_adapter_metadata`, `describe_adapter`, for ``gopt-geo info``) is torch-free and
lives in `gopt_geo.adapter`; it is re-exported here.

It also reads the other checkpoint file, the Lightning ``.ckpt`` a run resumes from
(:func:`load_training_checkpoint`): a pickle, so it is always loaded with torch's
``weights_only`` unpickler, which builds tensors and plain values and calls nothing a
file names. Run folders are copied and shared like any data; opening one must never run
code. What a run saves is kept to such values (the task's hyper-parameters are plain
dicts, not config objects), so a normal resume needs no allow-list.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from gopt_geo import __version__
from gopt_geo.adapter import (
    FORMAT_VERSION,
    METADATA_KEY,
    AdapterMetadata,
    describe_adapter,
    read_adapter_metadata,
)
from gopt_geo.data.bands import BandRouting
from gopt_geo.data.classes import ClassScheme
from gopt_geo.errors import InputError
from gopt_geo.io import atomic_path, ensure_output_dir
from gopt_geo.models import SegmentationModel, build_model

__all__ = [
    "FORMAT_VERSION",
    "METADATA_KEY",
    "AdapterMetadata",
    "describe_adapter",
    "load_adapter",
    "load_training_checkpoint",
    "read_adapter_metadata",
    "save_adapter",
]


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
    ensure_output_dir(path.parent)
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(
            tensors, str(tmp), metadata={METADATA_KEY: json.dumps(document)}
        )
    return path


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


def load_training_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A Lightning training checkpoint (``.ckpt``), loaded without running anything in it.

    ``torch.load(weights_only=True)``: a file whose unpickling would call a function or
    build an object other than tensors and plain containers is refused, naming what it
    would have called, before any of it runs. Unreadable files (truncated, not a
    checkpoint) are refused too. Both are one-line :class:`InputError`s naming the file.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        called = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if called:
            raise InputError(
                f"{path}: refused: loading it would call {called.group(1)}; a training "
                "checkpoint holds tensors and plain values only, and gopt-geo never runs "
                "code from a file"
            ) from None
        raise InputError(f"{path}: not a readable checkpoint ({_first_reason(err)})") from None
    except Exception as err:  # truncated, corrupt or not a torch file at all
        raise InputError(f"{path}: not a readable checkpoint ({_first_reason(err)})") from None
    if not isinstance(ckpt, dict):
        raise InputError(f"{path}: not a gopt-geo training checkpoint")
    return ckpt


def _first_reason(err: Exception) -> str:
    """The telling line of a load error (torch's weights-only errors open with advice
    about loading the file unsafely, which is the one thing not to do)."""
    text = str(err).strip()
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if detail:
        return detail.group(1).strip()
    return text.splitlines()[0] if text else type(err).__name__
