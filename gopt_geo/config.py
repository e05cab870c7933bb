"""Typed run configuration: YAML files, ``--set key=value`` overrides, strict checking.

A config has three sections - ``data``, ``model`` (:class:`gopt_geo.models.ModelConfig`)
and ``train`` - plus ``seed`` and ``output_dir``. Unknown keys and values of the wrong
type are errors that name the key (``model.prompt_dim: expected int, got 'big'``):
a typo must never silently fall back to a default in a run that takes hours.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from .data.bands import BandRouting
from .data.classes import ClassScheme, resolve_scheme
from .errors import InputError
from .models.config import ModelConfig, checkpoint_share

if TYPE_CHECKING:  # built on demand: reading a config imports neither torch nor torchgeo
    from .data.datamodule import OpticalSarDataModule


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
    # validation patches per epoch: a fixed subset of the gridded validation patches, spread
    # over every validation scene and the same every epoch (datamodule.GridSubsetSampler);
    # null: all of them. Caps validation's share of an epoch on large archives.
    val_patches: int | None = None
    stats_patches: int = 64
    # DataLoader worker processes; auto: 0 on a CPU (workers would compete with torch's
    # threads), on a GPU min(5, cores - 1): GoPT-ViT-B at 512 px consumes ~300 (A100) to
    # ~900 (H100) patches/s and one worker serves ~195 from the disk cache
    # (benchmarks/RESULTS.md "GPU feed")
    num_workers: int | str = "auto"
    # splits over the memory budget are cached on disk here: auto (GOPT_GEO_SCENE_CACHE_DIR,
    # else ~/.cache/gopt-geo/scenes), a folder, or off
    scene_cache_dir: str = "auto"


#: Loader workers ``data.num_workers: auto`` gives a GPU run (at most; cores - 1 at most):
#: an H100-class GPU needs about 5 at 512 px (benchmarks/gpu_feed.py, an estimate).
AUTO_GPU_WORKERS = 5


@dataclass
class TrainConfig:
    """Optimisation and hardware."""

    epochs: int = 20
    max_steps: int = -1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    # the cross-entropy weight of each class, in the scheme's order | auto: from the
    # training labels' class shares (training.auto_class_weights) | null: all equal
    class_weights: list[float] | str | None = None
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
        # every train value is checked here, once, when the config is read; the task and
        # the model take the checked values as they are
        checkpoint_share(self.checkpoint_backbone)  # refuses anything else
        w = self.class_weights
        if isinstance(w, str) and w != "auto":
            raise InputError(f"train.class_weights: expected auto, null or a list, got {w!r}")
        if isinstance(w, list) and (
            not w or not all(math.isfinite(v) and v >= 0 for v in w) or not any(w)
        ):
            raise InputError(
                "train.class_weights: expected one finite weight >= 0 per class, not all "
                f"0, got {w}"
            )


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
        """The run's band routing (without statistics; those come from the training data).

        The optical yardstick, ``model.variant: optical_all_bands``, gets every optical
        band and only those, whatever ``data.aux_bands`` says (with SAR it would be a
        late-fusion model, not the optical baseline GoPT is measured against); a warning
        says so when ``data.aux_bands`` asked for something else.
        """
        d = self.data
        try:
            routing = BandRouting(
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
        if self.model.variant != "optical_all_bands":
            return routing
        optical = routing.every_optical_band()
        if not optical.aux_bands:
            raise InputError(
                "model.variant optical_all_bands: no optical band besides the RGB ones "
                f"(data.optical_bands {list(d.optical_bands)}); use optical_only"
            )
        if d.aux_bands is not None and tuple(d.aux_bands) != optical.aux_bands:
            sar = [b for b in d.aux_bands if b in routing.sar_bands]
            warnings.warn(
                f"data.aux_bands {list(d.aux_bands)}: the optical_all_bands baseline gets "
                f"the optical bands only, {list(optical.aux_bands)}"
                + (f" (not the SAR bands {sar})" if sar else ""),
                UserWarning,
                stacklevel=2,
            )
        return optical

    def loader_workers(self) -> int:
        """``data.num_workers`` as a number (``auto``: see :class:`DataConfig`)."""
        value = self.data.num_workers
        if value != "auto":
            if isinstance(value, str) or value < 0:
                raise InputError(f"data.num_workers: expected auto or a count >= 0, got {value!r}")
            return int(value)
        device = str(self.train.device).lower()
        if device == "cpu":
            return 0
        import torch

        if device.startswith("cuda") or torch.cuda.is_available():
            return max(0, min(AUTO_GPU_WORKERS, (os.cpu_count() or 1) - 1))
        return 0

    def datamodule(self, routing: BandRouting | None = None) -> OpticalSarDataModule:
        """The datamodule this run reads its patches from; ``routing`` replaces the run's
        (e.g. an adapter's, with its training statistics, for evaluation).

        Built here, not by the datamodule from a config: the data layer stays below the
        run configuration and never imports it (design §2)."""
        from .data.datamodule import OpticalSarDataModule

        d = self.data
        root = Path(d.root)
        if not root.exists():
            raise InputError(f"{root}: data root not found (data.root)")
        return OpticalSarDataModule(
            root,
            dataset=d.dataset,
            routing=routing or self.band_routing(),
            classes=self.class_scheme(),
            scenes=d.scenes,
            batch_size=d.batch_size,
            patch_size=d.patch_size,
            length=d.train_patches,
            num_workers=self.loader_workers(),
            stats_patches=d.stats_patches,
            seed=self.seed,
            split_rows=d.split_rows,
            split_order=d.split_order,
            scene_cache_dir=d.scene_cache_dir,
            val_patches=d.val_patches,
        )


#: Plausible band means (physical units) of optical data given a scale or offset:
#: reflectance, a little below 0 (atmospheric correction) up to bright snow and glint.
REFLECTANCE_RANGE = (-0.1, 1.5)
#: Below this, the brightest band's mean is too dark for any land-cover scene: a scale
#: too small (by 10 or more).
DARKEST_PLAUSIBLE = 0.04
#: Stored values without a scale: reflectance, or digital numbers up to 16 bits.
UNSCALED_RANGE = (-0.1, 65535.0)


def check_optical_scale(
    values_by_band: Mapping[str, float],
    scale: float | Sequence[float] | None,
    offset: float | Sequence[float] | None,
    *,
    physical: bool = False,
) -> list[str]:
    """Warnings (one line each, naming the band and its value) when the optical data's
    typical values (e.g. each band's mean over the training patches) do not look like
    the physical range the scale and offset are meant to give; empty when they do.

    ``values_by_band``: band name -> value, in the order of ``data.optical_bands``; the
    stored values (``physical=False``: ``(stored + offset) * scale`` is applied here) or
    values already in physical units (``physical=True``, as the datamodule's statistics
    are). With a scale or offset the result must be reflectance
    (:data:`REFLECTANCE_RANGE`, and not all bands darker than
    :data:`DARKEST_PLAUSIBLE`); without, either reflectance or digital numbers
    (:data:`UNSCALED_RANGE`). A scale wrong by 10x, the classic mistake, lands outside.
    """
    names = list(values_by_band)
    scales, offsets = _per_band(scale, len(names)), _per_band(offset, len(names))
    scaled = scale is not None or offset is not None
    values = {}
    for i, name in enumerate(names):
        v = float(values_by_band[name])
        values[name] = (
            v
            if physical
            else (v + (offsets[i] if offsets else 0.0)) * (scales[i] if scales else 1.0)
        )
    finite = {n: v for n, v in values.items() if math.isfinite(v)}
    how = (
        f"after data.optical_scale {scale} and data.optical_offset {offset}"
        if scaled
        else "(no data.optical_scale)"
    )
    low, high = REFLECTANCE_RANGE if scaled else UNSCALED_RANGE
    hint = (
        "check data.optical_scale / data.optical_offset (Sentinel-2 L2A digital numbers: "
        "scale 0.0001, offset -1000 from processing baseline 04.00)"
    )
    warnings_ = [
        f"optical band {n}: mean {v:.4g} {how} is outside the plausible range "
        f"{low:g}..{high:g} of {'reflectance' if scaled else 'reflectance or digital numbers'}; "
        + hint
        for n, v in finite.items()
        if not low <= v <= high
    ]
    if scaled and finite and not warnings_ and max(finite.values()) < DARKEST_PLAUSIBLE:
        shown = ", ".join(f"{n} {v:.3g}" for n, v in finite.items())
        warnings_.append(
            f"optical bands {shown}: every band's mean {how} is below {DARKEST_PLAUSIBLE:g}, "
            "darker than any land-cover scene's reflectance (a scale too small?); " + hint
        )
    return warnings_


def _per_band(value: float | Sequence[float] | None, n: int) -> list[float]:
    if value is None:
        return []
    if isinstance(value, int | float):
        return [float(value)] * n
    values = [float(v) for v in value]
    return values if len(values) == n else [values[0]] * n if len(values) == 1 else values


def _floats(value: float | list[float] | None) -> tuple[float, ...]:
    if value is None:
        return ()
    return tuple(float(v) for v in value) if isinstance(value, list) else (float(value),)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


#: String settings documented with the value ``off``, which YAML reads as ``False``.
OFF_KEYS = frozenset({"data.scene_cache_dir"})


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints are accepted as floats)."""
    if value is False and key in OFF_KEYS:
        return "off"  # YAML 1.1 reads a bare `off` as false
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
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads 1e-3 (no dot) as a string; a number it is
        try:
            value = float(value)
        except ValueError:
            raise InputError(f"{key}: expected a number, got {value!r}") from None
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InputError(f"{key}: expected a finite number, got {value!r}")
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


#: Longest ``--set`` value: a value, not a document.
MAX_SET_VALUE = 10_000


def _parse_yaml(text: str, where: str) -> Any:
    """YAML text parsed safely (no tags that build objects), or one line naming ``where``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        reason = " ".join(str(err).split())  # PyYAML's messages span lines
        raise InputError(f"{where}: not valid YAML ({reason[:200]})") from None
    except RecursionError:
        raise InputError(f"{where}: YAML nested too deeply") from None


def _set(tree: dict[str, Any], dotted: str, raw: str) -> None:
    """Apply one ``key.sub=value`` override; the value is parsed as YAML.

    Every mistake is one line naming the override: an empty key or part of one, an empty
    value (write ``null`` for none, ``''`` for an empty string), invalid YAML, a key
    below a value that is not a section. Types and unknown keys are checked with the
    whole config (:func:`_build`)."""
    shown = f"--set {dotted}={raw}" if len(raw) <= 60 else f"--set {dotted}=..."
    keys = dotted.split(".")
    if not all(k.strip() for k in keys):
        raise InputError(f"{shown}: expected key=value with a dotted key such as train.lr")
    keys = [k.strip() for k in keys]
    if not raw.strip():
        raise InputError(f"{shown}: no value (write null for none, '' for an empty string)")
    if len(raw) > MAX_SET_VALUE:
        raise InputError(f"--set {dotted}: value longer than {MAX_SET_VALUE} characters")
    value = _parse_yaml(raw, shown)
    node = tree
    for depth, k in enumerate(keys[:-1]):
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise InputError(f"{shown}: {'.'.join(keys[: depth + 1])} is not a section")
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the defaults) and apply ``key=value`` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: config file not found")
        if not path.is_file():
            raise InputError(f"{path}: not a file (a config is a YAML file)")
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise InputError(
                f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8"
            ) from None
        except OSError as err:
            raise InputError(f"{path}: cannot read the config ({err.strerror})") from None
        tree = _parse_yaml(text, str(path)) or {}
        if not isinstance(tree, dict):
            raise InputError(f"{path}: a config must be a mapping of sections")
    for item in overrides or []:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        _set(tree, key.strip(), raw.strip())
    try:
        cfg = _build(RunConfig, tree)
    except InputError as err:
        raise InputError(f"{path}: {err}" if path else str(err)) from None
    if path is not None:
        cfg.base_dir = Path(path).resolve().parent  # type: ignore[misc]
    return cfg
