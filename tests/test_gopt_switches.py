"""Issue 13: every open choice of the GoPT paper is a switch, and each switch changes the
computation (and nothing else does).

Switches: ``aux_path`` (side | backbone), ``cup_attention`` (cross | self), ``prompters``
(cup+acp | cup | acp), ``prompt_points``, the assignment's logits and schedule (``assign_scale``,
``anneal``, ``tau_start``) and ``cup_context`` (window | scene, with the predictor's
`gopt_geo.inference.context.scene_context`); the ``optical_all_bands`` baseline. Tiny
random-init timm models (``test_vit``, ``test_efficientnet``), tiny tensors.
"""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F

from gopt_geo.config import load_config
from gopt_geo.data.bands import BandRouting
from gopt_geo.data.classes import IGNORE_INDEX
from gopt_geo.errors import InputError
from gopt_geo.models import ModelConfig, SceneContext, build_model
from gopt_geo.models.backbone import pad_to_multiple
from gopt_geo.models.prompters import CUP, assign

pytestmark = pytest.mark.filterwarnings("ignore::gopt_geo.models.RandomBackboneWarning")

SIZE = (37, 45)


def config(backbone: str = "test_vit", **kwargs) -> ModelConfig:
    return ModelConfig(backbone=backbone, weights="random", **kwargs)


def model_for(backbone: str = "test_vit", seed: int = 0, gates: float = 0.3, **kwargs):
    torch.manual_seed(seed)
    model = build_model(config(backbone, **kwargs))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate"):
                p.fill_(gates)
    return model


def inputs(size: tuple[int, int] = SIZE, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randn(batch, 3, *size, generator=g)
    aux = torch.randn(batch, 3, *size, generator=g)
    target = torch.randint(0, 7, (batch, *size), generator=g)
    target[:, : size[0] // 4] = IGNORE_INDEX
    return rgb, aux, target


def eval_logits(model, rgb, aux, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(rgb, aux, **kwargs).logits


def same_weights_logits(base: dict, backbone: str = "test_vit", **switch) -> torch.Tensor:
    """Logits of a model with ``switch`` holding the default model's tensors (the switch
    must not change the keys): any difference is the computation's."""
    model = model_for(backbone, **switch)
    model.load_trainable_state_dict(base)
    return eval_logits(model, *inputs()[:2])


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"aux_path": "sideways"}, "aux_path must be one of side, backbone, got 'sideways'"),
        ({"cup_attention": "both"}, "cup_attention must be one of cross, self, got 'both'"),
        ({"prompters": "acp+cup"}, "prompters must be one of cup+acp, cup, acp, got 'acp+cup'"),
        ({"cup_context": "tile"}, "cup_context must be one of window, scene, got 'tile'"),
        ({"acp_query": "aux"}, "acp_query must be one of rgb+aux, rgb, got 'aux'"),
        ({"prompt_points": []}, "prompt_points must be a non-empty list of distinct"),
        ({"prompt_points": [1, 1]}, "prompt_points must be a non-empty list of distinct"),
        ({"prompt_points": [-1]}, "prompt_points must be a non-empty list of distinct"),
        ({"anneal": 1.5}, "anneal must be a fraction of training in [0, 1], got 1.5"),
        ({"tau_start": 2.0}, "tau_start needs anneal > 0"),
        ({"tau_start": 0.0, "anneal": 0.5}, "tau_start must be > 0, got 0.0"),
        ({"assign_scale": 0.0}, "assign_scale must be > 0 (or null), got 0.0"),
        ({"group_mass_floor": 0.0}, "group_mass_floor must be > 0 (or null), got 0.0"),
        ({"soft_to_hard": 1.5}, "soft_to_hard must be a fraction of training in [0, 1], got 1.5"),
        ({"soft_to_hard": 0.5, "assignment": "soft"}, "soft_to_hard needs assignment hard"),
        ({"soft_to_hard_start": 0.2}, "soft_to_hard_start needs soft_to_hard > 0"),
        (
            {"soft_to_hard_start": 0.6, "soft_to_hard": 0.5},
            "soft_to_hard_start + soft_to_hard must be <= 1 (the whole training), got 0.6 + 0.5",
        ),
        ({"context_size": 0}, "context_size must be >= 1, got 0"),
        ({"variant": "optical_all_bands", "aux_channels": 0}, "aux_channels must be >= 1 for"),
    ],
)
def test_bad_switch_values_are_one_line_errors_naming_the_key(kwargs, message):
    with pytest.raises(InputError) as err:
        ModelConfig(**kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("model config: ")


def test_prompt_points_out_of_range_name_the_backbone():
    with pytest.raises(InputError, match=r"prompt_points \[5, 9\] out of range: backbone test_vit"):
        build_model(config("test_vit", prompt_points=[0, 5, 9]))


def test_switches_parse_from_a_run_config():
    cfg = load_config(
        None,
        [
            "model.prompt_points=[4, 0]",
            "model.aux_path=backbone",
            "model.tau_start=2",
            "model.anneal=0.5",
        ],
    )
    assert cfg.model.prompt_points == [4, 0] and cfg.model.tau_start == 2.0
    with pytest.raises(InputError, match=r"model.prompt_points: expected"):
        load_config(None, ["model.prompt_points=first"])


def test_new_fields_default_to_the_old_behaviour():
    new = ModelConfig()
    assert (new.aux_path, new.cup_attention, new.prompters) == ("side", "cross", "cup+acp")
    assert (new.prompt_points, new.assign_scale, new.anneal, new.tau_start) == (None,) * 2 + (
        0.0,
        None,
    )
    assert new.cup_context == "window"
    stored = new.to_dict()
    for name in ("aux_path", "cup_attention", "prompters", "prompt_points", "assign_scale"):
        del stored[name]
    for name in ("anneal", "tau_start", "cup_context", "context_size"):
        del stored[name]
    assert (new.soft_to_hard, new.soft_to_hard_start) == (0.0, 0.0)  # hard from the start
    assert new.group_mass_floor is None  # group means over mass + 1e-6
    for name in ("soft_to_hard", "soft_to_hard_start", "group_mass_floor"):
        del stored[name]
    assert ModelConfig.from_dict(stored) == new  # an adapter written before them


#: sha256 (first 16 hex) of "key:shape;..." of the trainable state, in order, as written
#: by the code before issue 13: existing configurations must keep loading their adapters.
STATE_KEYS_BEFORE = {
    "gopt_vit": ({"backbone": "test_vit"}, 172, "89ea540acea8a876"),
    "gopt_eff": ({"backbone": "test_efficientnet"}, 120, "6a18f12bb191aefd"),
    "gopt_eff_rgb": (
        {"backbone": "test_efficientnet", "acp_query": "rgb"},
        114,
        "b1f75ca7e67f55c3",
    ),
    "gopt_vit_soft_k4": (
        {"assignment": "soft", "num_groups": 4, "share_projections": False},
        188,
        "0a57ed1d008645e3",
    ),
    "gopt_vit_every2": ({"prompt_every": 2, "class_aware_loss": False}, 112, "fdee5c4a04b6e81f"),
    "static_vit": ({"variant": "static_prompt"}, 80, "91b0947f8ac91964"),
    "static_eff": (
        {"variant": "static_prompt", "backbone": "test_efficientnet"},
        64,
        "a7e71a85d586bdea",
    ),
    "optical_eff": (
        {"variant": "optical_only", "backbone": "test_efficientnet"},
        16,
        "77c3201714a10ad1",
    ),
    "ef_eff": (
        {"variant": "early_fusion", "backbone": "test_efficientnet"},
        96,
        "40dcfa156a45accb",
    ),
}


@pytest.mark.parametrize("name", list(STATE_KEYS_BEFORE))
def test_state_dict_keys_of_existing_configurations_are_unchanged(name):
    kwargs, count, digest = STATE_KEYS_BEFORE[name]
    kwargs = {"backbone": "test_vit", **kwargs}
    state = build_model(ModelConfig(weights="random", **kwargs)).trainable_state_dict()
    text = ";".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in state.items())
    assert len(state) == count
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == digest


# --- each switch changes the computation ----------------------------------------------------


@pytest.fixture(scope="module")
def default_state() -> dict:
    return model_for("test_vit").trainable_state_dict()


def test_switches_that_keep_the_tensors_change_the_logits(default_state):
    base = same_weights_logits(default_state)
    assert torch.equal(base, same_weights_logits(default_state, cup_context="window"))
    for switch in ({"cup_attention": "self"}, {"assignment": "soft"}):
        assert not torch.allclose(base, same_weights_logits(default_state, **switch), atol=1e-5)
    # bounded logits (s cos(q, k)) change the assignment itself, hence the logits
    assert not torch.allclose(base, same_weights_logits(default_state, assign_scale=4.0))


def test_bounded_logits_stay_within_the_scale():
    torch.manual_seed(0)
    cup = CUP(dim=16, num_groups=5, heads=2, scale=3.0).eval()
    with torch.no_grad():
        cup.assign_q.weight.mul_(100)  # as the straight-through gradient drives it
    aux = torch.randn(2, 40, 16)
    assert cup(aux).logits.abs().max() <= 3.0 + 1e-5
    unbounded = CUP(dim=16, num_groups=5, heads=2).eval()
    unbounded.load_state_dict(cup.state_dict())
    assert unbounded(aux).logits.abs().max() > 3.0


def test_self_attention_updates_the_aux_tokens_from_each_other():
    torch.manual_seed(0)
    cross = CUP(dim=16, num_groups=3, heads=2, attention="cross").eval()
    self_ = CUP(dim=16, num_groups=3, heads=2, attention="self").eval()
    self_.load_state_dict(cross.state_dict())
    aux = torch.randn(1, 20, 16)
    moved = aux.clone()
    moved[:, 10:] += 1.0  # change half of the tokens
    # the first token's carried update: cross depends on the others only through the
    # K prompts; self-attention mixes the tokens themselves
    assert not torch.allclose(self_(aux).aux[:, 0], cross(aux).aux[:, 0])
    with pytest.raises(ValueError, match="CUP attention must be 'cross' or 'self'"):
        CUP(dim=16, num_groups=3, heads=2, attention="global")
    assert not torch.allclose(self_(moved).aux[:, 0], self_(aux).aux[:, 0])


@pytest.mark.parametrize("backbone", ["test_vit", "test_efficientnet"])
@pytest.mark.parametrize("aux_path", ["side", "backbone"])
@pytest.mark.parametrize("parts", ["cup+acp", "cup", "acp"])
def test_every_structure_trains_every_tensor_and_no_backbone_tensor(backbone, aux_path, parts):
    model = model_for(backbone, aux_path=aux_path, prompters=parts, cup_attention="cross").train()
    rgb, aux, target = inputs()
    out = model(rgb, aux, target)
    expected = {"cup+acp": {"class_aware", "alignment"}, "cup": {"class_aware"}, "acp": set()}
    assert set(out.losses) == expected[parts]
    (
        F.cross_entropy(out.logits, target, ignore_index=IGNORE_INDEX) + sum(out.losses.values())
    ).backward()
    for name, p in model.named_parameters():
        if name.startswith("backbone."):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "switch", [{"aux_path": "backbone"}, {"prompters": "cup"}, {"prompters": "acp"}]
)
def test_zero_gates_still_give_the_frozen_backbone(switch):
    gated = model_for("test_efficientnet", gates=0.0, **switch)
    bare = model_for("test_efficientnet", gates=0.0, variant="optical_only")
    bare.decoder.load_state_dict(gated.decoder.state_dict())
    rgb, aux, _ = inputs()
    # (aux_path backbone runs a batch twice as large: equal up to the kernels' rounding)
    assert torch.allclose(eval_logits(gated, rgb, aux), eval_logits(bare, rgb, aux), atol=1e-6)


def test_prompter_parts_are_what_the_ablation_removes():
    cup_only = model_for("test_vit", prompters="cup")
    acp_only = model_for("test_vit", prompters="acp", cup_context="window")
    for prompter in cup_only.prompters.values():
        assert prompter.cup is not None and not hasattr(prompter, "acp")
    for prompter in acp_only.prompters.values():
        assert prompter.cup is None and hasattr(prompter, "acp")
    # CUP only never projects down (no RGB query): no unused tensors
    assert all(p.down is None for p in cup_only.projections.bank.values())
    # ACP only: the RGB tokens read the aux tokens themselves, so SAR reaches a location
    # even where every RGB token is the same (a cloud)
    rgb = torch.zeros(1, 3, 32, 32)
    aux_a, aux_b = torch.randn(2, 1, 3, 32, 32)
    assert not torch.allclose(eval_logits(acp_only, rgb, aux_a), eval_logits(acp_only, rgb, aux_b))


def test_aux_path_backbone_runs_the_aux_image_through_the_frozen_blocks():
    model = model_for("test_vit", aux_path="backbone").eval()
    batches = []
    model.backbone.model.blocks[0].register_forward_hook(lambda m, i, o: batches.append(o.shape[0]))
    rgb, aux, _ = inputs(batch=2)
    eval_logits(model, rgb, aux)
    assert batches == [4]  # RGB and auxiliary images, one batch through the same blocks
    assert not hasattr(model, "aux_embed") and hasattr(model, "aux_image")
    # the last point writes nothing back into the aux stream: no gate, no up projection
    last = str(model.prompted[-1])
    assert model.aux_links[last].gate is None
    assert all(link.gate is not None for k, link in model.aux_links.items() if k != last)
    # the aux image is the mean of the bands at initialisation (a grey image)
    image = model.aux_image(aux)
    assert torch.allclose(image, aux.mean(1, keepdim=True).expand_as(image), atol=1e-6)
    side = model_for("test_vit")
    assert not torch.allclose(eval_logits(side, rgb, aux), eval_logits(model, rgb, aux))


def test_prompt_points_place_the_prompters_for_gopt_and_static_prompts():
    gopt = build_model(config("test_vit", prompt_points=[3, 0]))
    assert sorted(gopt.prompters) == ["0", "3"] and gopt.prompted == [0, 3]
    static = build_model(config("test_efficientnet", variant="static_prompt", prompt_points=[1]))
    assert list(static.prompters) == ["1"]  # below prompt_min_stride: explicit wins
    deep = model_for("test_vit", prompt_points=[4])
    shallow = model_for("test_vit", prompt_points=[0])
    rgb, aux, _ = inputs()
    assert not torch.allclose(eval_logits(deep, rgb, aux), eval_logits(shallow, rgb, aux))


# --- assignment schedule -------------------------------------------------------------------


def test_tau_does_not_change_the_hard_sample_but_the_noise_does():
    logits = torch.randn(2, 50, 5)
    torch.manual_seed(3)
    cold = assign(logits, "hard", 0.1, training=True)
    torch.manual_seed(3)
    hot = assign(logits, "hard", 10.0, training=True)
    assert torch.equal(cold, hot)  # argmax((l + g) / tau) = argmax(l + g)
    argmax = F.one_hot(logits.argmax(-1), 5).float()
    assert not torch.equal(cold, argmax)  # standard Gumbel noise: many samples differ
    # no noise: the straight-through argmax, the inference assignment, with soft gradients
    logits.requires_grad_(True)
    quiet = assign(logits, "hard", 1.0, training=True, noise=0.0)
    assert torch.equal(quiet, argmax)
    (quiet * torch.randn_like(quiet)).sum().backward()
    assert logits.grad.abs().sum() > 0
    with torch.no_grad():
        torch.manual_seed(3)
        half = assign(logits, "hard", 1.0, training=True, noise=0.5)
    agree = lambda a: (a.argmax(-1) == logits.argmax(-1)).float().mean()  # noqa: E731
    assert agree(cold) < agree(half) < 1.0
    assert torch.equal(assign(logits, "hard", 1.0, training=False, noise=1.0), argmax)


def test_set_progress_anneals_noise_and_tau_then_holds_the_final_values():
    model = model_for("test_vit", anneal=0.5, tau_start=2.0, tau=0.5)
    cup = model.prompters["0"].cup
    assert (cup.tau, cup.noise) == (0.5, 1.0)  # never told: the unscheduled form
    model.set_progress(0.0)
    assert (cup.tau, cup.noise) == (2.0, 1.0)  # standard Gumbel-Softmax, tau_start
    model.set_progress(0.25)
    assert (cup.tau, cup.noise) == pytest.approx((1.0, 0.5))
    model.set_progress(0.9)
    assert (cup.tau, cup.noise) == (pytest.approx(0.5), 0.0)  # the straight-through argmax
    soft = model_for("test_vit", assignment="soft", anneal=1.0, tau_start=4.0)
    soft.set_progress(0.0)
    cup = soft.prompters["0"].cup
    assert (cup.tau, cup.noise) == (4.0, 1.0)  # soft assignment: tau only
    plain = model_for("test_vit")
    plain.set_progress(0.0)  # no schedule configured: nothing moves
    assert (plain.prompters["0"].cup.tau, plain.prompters["0"].cup.noise) == (1.0, 1.0)


def test_the_schedule_changes_training_not_inference():
    rgb, aux, target = inputs()
    outs = []
    for progress in (0.0, 1.0):
        model = model_for("test_vit", anneal=0.5)  # fresh batch-norm stats
        model.set_progress(progress)
        outs.append(eval_logits(model, rgb, aux))  # before training mode moves batch norm
        torch.manual_seed(0)
        outs.append(model.train()(rgb, aux, target).logits)
    assert torch.equal(outs[0], outs[2])  # evaluation is always the final form
    assert not torch.allclose(outs[1], outs[3])  # early training samples with noise


def test_mix_blends_the_soft_weights_into_the_hard_sample_with_soft_gradients():
    logits = torch.randn(2, 50, 5, requires_grad=True)
    soft = torch.softmax(logits / 0.7, dim=-1)
    assert torch.equal(assign(logits, "hard", 0.7, training=True, mix=0.0), soft)
    torch.manual_seed(3)
    hard = assign(logits, "hard", 0.7, training=True, noise=0.5)
    torch.manual_seed(3)
    assert torch.equal(assign(logits, "hard", 0.7, training=True, noise=0.5, mix=1.0), hard)
    torch.manual_seed(3)
    half = assign(logits, "hard", 0.7, training=True, noise=0.5, mix=0.25)
    assert torch.allclose(half, 0.75 * soft + 0.25 * hard)
    assert not torch.allclose(half, soft) and not torch.allclose(half, hard)
    probe = torch.randn_like(soft)
    (grad_soft,) = torch.autograd.grad((soft * probe).sum(), logits, retain_graph=True)
    (grad_quiet,) = torch.autograd.grad(
        (assign(logits, "hard", 0.7, training=True, noise=0.0, mix=0.5) * probe).sum(), logits
    )
    assert torch.allclose(grad_quiet, grad_soft, atol=1e-6)  # no noise: exactly the softmax's
    argmax = F.one_hot(logits.argmax(-1), 5).float()
    assert torch.equal(assign(logits, "hard", 0.7, training=False, mix=0.0), argmax)


def test_group_mass_floor_tames_the_gradient_of_groups_no_token_chose():
    grads, prompts = [], []
    for floor in (None, 1.0):
        torch.manual_seed(0)
        cup = CUP(dim=16, num_groups=7, heads=2, scale=10.0, mass_floor=floor).train()
        cup.noise = 0.0  # the straight-through argmax
        out = cup(torch.randn(2, 4, 16))  # 4 tokens, 7 groups: some groups are empty
        assert (out.assignment.sum(1) == 0).any()
        (out.prompts.square().sum() + out.aux.square().sum()).backward()
        grads.append(cup.assign_q.weight.grad.norm())
        prompts.append(out.prompts.detach())
    assert torch.allclose(prompts[0], prompts[1], atol=1e-4)  # the same forward
    assert grads[0] > 1000 * grads[1]  # d mean / d a = Z / 1e-6 for an empty group
    model = model_for("test_vit", group_mass_floor=1.0)
    assert all(p.cup.mass_floor == 1.0 for p in model.prompters.values())


def test_soft_to_hard_trains_soft_then_hard_and_never_changes_inference(default_state):
    rgb, aux, target = inputs()

    def train_logits(progress: float | None = None, **switch) -> torch.Tensor:
        model = model_for("test_vit", **switch)
        model.load_trainable_state_dict(default_state)
        if progress is not None:
            model.set_progress(progress)
        torch.manual_seed(0)
        return model.train()(rgb, aux, target).logits

    scheduled = {"soft_to_hard": 0.5, "soft_to_hard_start": 0.2, "anneal": 0.5}
    model = model_for("test_vit", **scheduled)
    cup = model.prompters["0"].cup
    assert cup.mix == 1.0  # never told its progress: hard, as before the switch
    for progress, mix in ((0.0, 0.0), (0.2, 0.0), (0.45, 0.5), (0.7, 1.0), (1.0, 1.0)):
        model.set_progress(progress)
        assert cup.mix == pytest.approx(mix)
    soft = train_logits(assignment="soft")
    hard = train_logits(1.0, anneal=0.5)  # hard, noise annealed to 0: the ST argmax
    assert torch.equal(train_logits(0.1, **scheduled), soft)  # before the ramp: soft
    assert torch.equal(train_logits(1.0, **scheduled), hard)  # after it: hard
    between = train_logits(0.45, **scheduled)
    assert not torch.allclose(between, soft) and not torch.allclose(between, hard)
    # inference is the hard argmax whatever the progress (a batch-norm-free eval pass)
    plain = same_weights_logits(default_state)
    for progress in (0.0, 0.45):
        model = model_for("test_vit", **scheduled)
        model.load_trainable_state_dict(default_state)
        model.set_progress(progress)
        assert torch.equal(eval_logits(model, rgb, aux), plain)


# --- scene context: window-independent maps ---------------------------------------------------


@pytest.mark.parametrize(
    "switch",
    [{}, {"cup_attention": "self"}, {"aux_path": "backbone"}, {"prompters": "cup"}],
)
def test_scene_context_of_the_input_itself_changes_nothing(switch):
    model = model_for("test_efficientnet", cup_context="scene", **switch).eval()
    rgb, aux, _ = inputs(batch=1)
    context = model.scene_context(rgb, aux)
    assert isinstance(context, SceneContext) and sorted(context.points) == model.prompted
    assert torch.allclose(
        eval_logits(model, rgb, aux, context=context), eval_logits(model, rgb, aux), atol=1e-6
    )
    assert context.to("cpu").points.keys() == context.points.keys()


def test_scene_context_makes_a_pixel_independent_of_its_window():
    """Two overlapping windows of one scene, compared in the centre of their common part
    (far from both windows' borders, so the CNN's receptive field sees the same pixels).
    Per-window groups differ between the windows; scene groups agree as well as the frozen
    CNN alone (the optical-only model) does."""
    g = torch.Generator().manual_seed(0)
    rgb = torch.randn(1, 3, 64, 768, generator=g)
    aux = torch.randn(1, 3, 64, 768, generator=g)
    (a0, a1), (b0, b1), (c0, c1) = (0, 480), (288, 768), (352, 416)

    def centre_gap(model) -> float:
        context = model.scene_context(rgb, aux)
        la = eval_logits(model, rgb[..., a0:a1], aux[..., a0:a1], context=context)
        lb = eval_logits(model, rgb[..., b0:b1], aux[..., b0:b1], context=context)
        return (la[..., c0 - a0 : c1 - a0] - lb[..., c0 - b0 : c1 - b0]).abs().max().item()

    frozen_cnn = centre_gap(model_for("test_efficientnet", variant="optical_only"))
    window = centre_gap(model_for("test_efficientnet", cup_context="window"))
    scene = centre_gap(model_for("test_efficientnet", cup_context="scene"))
    assert scene < 2 * frozen_cnn + 1e-5
    assert window > 20 * scene


def test_scene_context_is_none_where_nothing_is_shared():
    rgb, aux, _ = inputs(batch=1)
    for model in (
        model_for("test_vit"),  # cup_context: window, the default
        model_for("test_vit", prompters="acp", cup_context="scene"),
        model_for("test_vit", variant="optical_only"),
        model_for("test_vit", variant="optical_all_bands"),
    ):
        assert model.scene_context(rgb, aux) is None and not model.needs_scene_context
    with pytest.raises(ValueError, match=r"scene_context takes one scene \[1, 3, H, W\]"):
        model_for("test_vit", cup_context="scene").scene_context(*inputs(batch=2)[:2])


ROUTING = BandRouting(
    optical_bands=("B", "G", "R", "NIR"),
    sar_bands=("VV", "VH"),
    mean={"B": 2000.0, "G": 2000.0, "R": 2000.0, "NIR": 2000.0, "VV": -15.0, "VH": -20.0},
    std={"B": 1000.0, "G": 1000.0, "R": 1000.0, "NIR": 1000.0, "VV": 3.0, "VH": 3.0},
)


def test_predictor_hook_reads_the_scene_once_at_full_or_reduced_size(tmp_path):
    from conftest import write_scene
    from rasterio.windows import Window

    from gopt_geo.inference.context import model_inputs, overview_shape, scene_context
    from gopt_geo.inference.reader import SceneReader

    files = write_scene(tmp_path, "s", size=80)
    model = model_for("test_efficientnet", cup_context="scene").eval()
    with SceneReader(files["optical"], files["sar"], ROUTING) as reader:
        full = scene_context(reader, model)  # 80 px <= context_size: the scene as it is
        image, valid = reader.read(Window(0, 0, 80, 80))
        expected = model.scene_context(*model_inputs(image, valid, ROUTING))
        for i, point in expected.points.items():
            assert torch.equal(full.points[i].prompts, point.prompts)
        model.config.context_size = 40  # a decimated read through the same datasets
        small = scene_context(reader, model)
        assert sorted(small.points) == sorted(full.points)
        assert not torch.allclose(small.points[2].prompts, full.points[2].prompts)
        model.config.cup_context = "window"
        assert scene_context(reader, model) is None
    assert overview_shape(3000, 1200, 1024) == (1024, 410)
    assert overview_shape(300, 120, 1024) == (300, 120)


# --- the fair optical baseline ---------------------------------------------------------------


def test_optical_all_bands_feeds_the_extra_bands_to_the_decoder_only():
    model = model_for("test_efficientnet", variant="optical_all_bands", aux_channels=1)
    optical = model_for("test_efficientnet", variant="optical_only", aux_channels=1)
    assert len(model.decoder.projections) == 5  # four backbone levels + the NIR map
    extra = model.parameter_report().trainable - optical.parameter_report().trainable
    dim, k = 48, 4 * 4
    embed = dim * k + dim + 2 * dim  # patch conv + layer norm
    decoder = dim * 64 + 64 + 64 * 64  # one more 1x1 projection, wider fuse input
    assert extra == embed + decoder
    rgb = torch.randn(1, 3, 64, 64)
    nir_a, nir_b = torch.randn(2, 1, 1, 64, 64)
    assert not torch.allclose(eval_logits(model, rgb, nir_a), eval_logits(model, rgb, nir_b))
    assert all(not p.requires_grad for p in model.backbone.parameters())
    state = model.trainable_state_dict()
    assert {k.split(".")[0] for k in state} == {"aux_embed", "decoder"}
    assert math.isclose(
        sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k),
        model.parameter_report().trainable,
    )


def test_every_variant_and_switch_survives_odd_sizes_with_padding():
    for kwargs in ({"aux_path": "backbone", "cup_attention": "self"}, {"prompters": "acp"}):
        model = model_for("test_vit", **kwargs)
        rgb, aux, _ = inputs()
        padded = pad_to_multiple(rgb, model.backbone.size_divisor)
        assert padded.shape[-1] % 16 == 0
        assert eval_logits(model, rgb, aux).shape == (2, 7, *SIZE)
