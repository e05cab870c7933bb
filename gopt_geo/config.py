"""Typed run configuration: YAML files, ``--set key=value`` overrides, strict checking.

A config has three sections - ``data``, ``model`` (:class:`gopt_geo.models.ModelConfig`)
and ``train`` - plus ``seed`` and ``output_dir``. Unknown keys and values of the wrong
type are errors that name the key (``model.prompt_dim: expected int, got 'big'``):
a typo must never silently fall back to a default in a run that takes hours.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .data.bands import BandRouting
from .data.classes import ClassScheme, resolve_scheme
from .errors import InputError
from .models.config import ModelConfig, checkpoint_share


@dataclass
class DataConfig:
    """Where the scenes are and how they become patches."""

    root: str = "data"
    dataset: str = "scenes"  # scenes | whu_opt_sar
    optical_bands: list[str] = field(default_factory=lambda: ["B", "G", "R", "NIR"])
    sar_bands: list[str] = field(default_factory=lambda: ["VV", "VH"])
    rgb_bands: list[str] = field(default_factory=lambda: ["R", "G", "B"])
    aux_bands: list[str] | None = None  # None: every non-RGB band
    sar_units: str = "db"  # db | linear | amplitude
    # stored optical value -> physical: (stored + offset) * scale, one value or one per band
    optical_scale: float | list[float] | None = None  # Sentinel-2 L2A: 0.0001
    optical_offset: float | list[float] | None = None  # Sentinel-2 L2A (baseline >= 04.00): -1000
    optical_band_indices: list[int] | None = None  # 1-based, for files without band names
    # a built-in scheme's name, a .yaml/.json file, or a list of {code, name, colour}
    classes: str | list[dict[str, Any]] = "whu_opt_sar"
    ignore_codes: list[int] | None = None  # None: the scheme's own (inline: none)
    scenes: dict[str, list[str]] | None = None  # explicit {train,val,test} scene names
    split_rows: list[float] | None = None  # e.g. [0.7, 0.15, 0.15]: row bands of each scene
    split_order: list[str] | None = None  # bands from the top; default [train, val, test]
    patch_size: int = 256
    batch_size: int = 8
    train_patches: int = 512  # random training patches per epoch
    stats_patches: int = 64
    num_workers: int = 0


@dataclass
class TrainConfig:
    """Optimisation and hardware."""

    epochs: int = 20
    max_steps: int = -1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    class_weights: list[float] | None = None
    class_aware_weight: float = 0.1
    alignment_weight: float = 0.1
    device: str = "auto"  # auto | cpu | cuda
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"  # auto: bf16/16-mixed on GPU, 32 on CPU
    log_every_n_steps: int = 10
    progress: bool = True
    # activation checkpointing of the frozen backbone: keep only the tokens at each
    # injection point and recompute the frozen blocks between them in backward (same
    # gradients). auto: a share (models.config.AUTO_VIT_SHARE) of a frozen ViT's blocks,
    # none of a CNN's (they already keep little) | true (every segment of any frozen
    # backbone) | false | a share in (0, 1), spread over the depth. Measured in
    # benchmarks/training_cost.py.
    checkpoint_backbone: bool | str | float = "auto"

    def __post_init__(self) -> None:
        checkpoint_share(self.checkpoint_backbone)  # refuses anything else


@dataclass
class RunConfig:
    """A whole training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    output_dir: str = "runs/default"
    #: the config file's folder (relative class-scheme files are found there); set by
    #: load_config on the instance, not a config key
    base_dir: ClassVar[Path | None] = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def class_scheme(self) -> ClassScheme:
        """The run's class scheme (``data.classes``: built-in name, file or inline list;
        a relative file is found beside the config file)."""
        try:
            return resolve_scheme(self.data.classes, self.data.ignore_codes, self.base_dir)
        except ValueError as err:
            raise InputError(str(err)) from None

    def band_routing(self) -> BandRouting:
        """The run's band routing (without statistics; those come from the training data)."""
        d = self.data
        try:
            return BandRouting(
                tuple(d.optical_bands),
                tuple(d.sar_bands),
                tuple(d.rgb_bands),
                tuple(d.aux_bands) if d.aux_bands is not None else None,
                d.sar_units,
                optical_scale=_floats(d.optical_scale),
                optical_offset=_floats(d.optical_offset),
                optical_indices=tuple(d.optical_band_indices or ()),
            )
        except ValueError as err:
            raise InputError(f"data: {err}") from None


def _floats(value: float | list[float] | None) -> tuple[float, ...]:
    if value is None:
        return ()
    return tuple(float(v) for v in value) if isinstance(value, list) else (float(value),)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints are accepted as floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except InputError as err:
                errors.append(str(err))
        raise InputError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise InputError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{key}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp is Any:
        return value
    raise InputError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: Any, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise InputError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
            f"valid keys{' in ' + prefix if prefix else ''}: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in values.items()}
    return cls(**kwargs)


def _set(tree: dict[str, Any], dotted: str, raw: str) -> None:
    """Apply one ``key.sub=value`` override; the value is parsed as YAML."""
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise InputError(f"--set {dotted}: {k} is not a section")
    node[keys[-1]] = yaml.safe_load(raw) if raw != "" else ""


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the defaults) and apply ``key=value`` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: config file not found")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(tree, dict):
            raise InputError(f"{path}: a config must be a mapping of sections")
    for item in overrides or []:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        _set(tree, key.strip(), raw)
    try:
        cfg = _build(RunConfig, tree)
    except InputError as err:
        raise InputError(f"{path}: {err}" if path else str(err)) from None
    if path is not None:
        cfg.base_dir = Path(path).resolve().parent  # type: ignore[misc]
    return cfg
