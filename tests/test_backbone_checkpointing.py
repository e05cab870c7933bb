"""Activation checkpointing of the frozen backbone and channels_last CNN backbones.

Both change how the frozen backbone runs, never what it computes: gradients with and
without checkpointing, and predictions with and without channels_last, must agree; and
each must actually be in effect (blocks recomputed, weights in NHWC order), or a
silently disabled switch would pass the equality tests.
"""

from __future__ import annotations

import pytest
import torch

from gopt_geo.config import TrainConfig, load_config
from gopt_geo.data.bands import BandRouting
from gopt_geo.data.classes import IGNORE_INDEX, WHU_OPT_SAR_CLASSES
from gopt_geo.errors import InputError
from gopt_geo.models import ModelConfig, SegmentationModel, build_model
from gopt_geo.models.config import AUTO_VIT_SHARE
from gopt_geo.training import GoPTTask

pytestmark = pytest.mark.filterwarnings("ignore::gopt_geo.models.RandomBackboneWarning")

#: (backbone, input size): a multiple of the backbone's stride, a few tokens per point
BACKBONES = [("test_vit", 48), ("test_efficientnet", 64)]


def make_model(backbone: str, **kwargs) -> SegmentationModel:
    """A tiny GoPT model with non-zero ACP gates, so prompters change the backbone's
    tokens (an untrained model's zero gates would make every segment input gradient-free
    except through the gates themselves)."""
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(backbone=backbone, weights="random", aux_channels=3, num_classes=7, **kwargs)
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("acp.gate"):
                p.fill_(0.1)
    return model


def batch(size: int, n: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    rgb = torch.randn(n, 3, size, size, generator=g)
    aux = torch.randn(n, 3, size, size, generator=g)
    target = torch.randint(0, 7, (n, size, size), generator=g)
    target[:, : size // 4] = IGNORE_INDEX
    return rgb, aux, target


def gradients(model: SegmentationModel, size: int) -> tuple[float, dict[str, torch.Tensor]]:
    """One training step's loss (CE + the auxiliary losses) and the gradient of every
    trainable parameter; Gumbel noise seeded, so two calls draw the same."""
    model.train()
    model.zero_grad(set_to_none=True)
    rgb, aux, target = batch(size)
    torch.manual_seed(2)
    out = model(rgb, aux, target=target)
    loss = torch.nn.functional.cross_entropy(out.logits, target, ignore_index=IGNORE_INDEX)
    for value in out.losses.values():
        loss = loss + 0.1 * value
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads


def last_frozen_module(model: SegmentationModel) -> torch.nn.Module:
    """A frozen module after the first prompted point: its input needs a gradient."""
    backbone = model.backbone
    if backbone.kind == "vit":
        return backbone.model.blocks[-1]
    return backbone._sequence[-1][1]


def count_calls(module: torch.nn.Module) -> list[int]:
    """Calls of ``module``, counted on entry: a recomputation stops as soon as it has
    rebuilt what backward needs, so it may never reach a forward (post-)hook."""
    calls = [0]

    def hook(*_: object) -> None:
        calls[0] += 1

    module.register_forward_pre_hook(hook)
    return calls


# --- checkpointing: same gradients, really recomputed -------------------------------


@pytest.mark.parametrize(("backbone", "size"), BACKBONES)
def test_checkpointing_gives_the_same_gradients(backbone: str, size: int) -> None:
    model = make_model(backbone)
    assert model.set_backbone_checkpointing(False) is False
    loss_plain, plain = gradients(model, size)
    assert model.set_backbone_checkpointing(True) is True
    loss_ckpt, ckpt = gradients(model, size)
    assert loss_ckpt == pytest.approx(loss_plain, rel=1e-6)
    assert plain.keys() == ckpt.keys() and plain
    for name, grad in plain.items():
        assert torch.allclose(ckpt[name], grad, rtol=1e-5, atol=1e-7), name
    # the comparison means something: the prompters upstream of frozen blocks get gradients
    assert any(n.startswith("prompters.") and g.abs().sum() > 0 for n, g in plain.items())


@pytest.mark.parametrize(("backbone", "size"), BACKBONES)
def test_checkpointed_blocks_run_again_in_backward(backbone: str, size: int) -> None:
    model = make_model(backbone)
    calls = count_calls(last_frozen_module(model))
    gradients(model, size)
    assert calls[0] == 1  # off (a bare model): once per step
    model.set_backbone_checkpointing(True)
    calls[0] = 0
    gradients(model, size)
    assert calls[0] == 2  # forward, and the recomputation in backward
    calls[0] = 0
    with torch.no_grad():  # prediction and validation: nothing to recompute
        model.eval()(*batch(size)[:2])
    assert calls[0] == 1


def test_segments_without_gradient_are_not_checkpointed() -> None:
    """The stem and the stages before the first prompter see only the frozen RGB path:
    nothing to keep for backward, so nothing to recompute either."""
    model = make_model("test_efficientnet")
    model.set_backbone_checkpointing(True)
    first = count_calls(model.backbone._sequence[0][1])
    gradients(model, 64)
    assert first[0] == 1


def test_auto_means_frozen_vits_only() -> None:
    assert make_model("test_vit").set_backbone_checkpointing("auto") is True
    assert make_model("test_efficientnet").set_backbone_checkpointing("auto") is False
    assert make_model("test_efficientnet").set_backbone_checkpointing(True) is True
    fused = make_model("test_vit", variant="early_fusion")
    assert fused.set_backbone_checkpointing("auto") is False
    assert fused.backbone.checkpointing == 0
    with pytest.raises(InputError, match="frozen backbone"):
        fused.set_backbone_checkpointing(True)
    with pytest.raises(InputError, match="frozen backbone"):
        fused.set_backbone_checkpointing(0.5)
    with pytest.raises(InputError, match="auto, true, false or a share"):
        make_model("test_vit").set_backbone_checkpointing("yes")
    with pytest.raises(InputError, match="between 0 and 1"):
        make_model("test_vit").set_backbone_checkpointing(1.5)


def test_a_share_checkpoints_evenly_spread_segments() -> None:
    model = make_model("test_vit")
    blocks = model.backbone.model.blocks
    assert len(blocks) >= 4
    calls = [count_calls(b) for b in blocks]
    _, plain = gradients(model, 48)
    assert model.set_backbone_checkpointing(0.5) is True
    for c in calls:
        c[0] = 0
    _, half = gradients(model, 48)
    # every other block is recomputed in backward (block 0 needs no gradient: nothing
    # trainable before it), and the gradients do not change
    recomputed = [i for i, c in enumerate(calls) if c[0] == 2]
    assert recomputed == list(range(1, len(blocks), 2))
    assert all(c[0] in (1, 2) for c in calls)
    for name, grad in plain.items():
        assert torch.allclose(half[name], grad, rtol=1e-5, atol=1e-7), name


def test_training_task_checkpoints_by_default() -> None:
    routing = BandRouting(("B", "G", "R", "NIR"), ("VV", "VH"))
    model = ModelConfig(backbone="test_vit", weights="random")

    def task(share: bool | str | float) -> GoPTTask:
        train = TrainConfig(checkpoint_backbone=share)
        return GoPTTask(model, train, routing, WHU_OPT_SAR_CLASSES)

    assert task("auto").model.backbone.checkpointing == AUTO_VIT_SHARE > 0
    assert task(False).model.backbone.checkpointing == 0
    assert task(0.25).model.backbone.checkpointing == 0.25


def test_config_field_is_checked() -> None:
    assert TrainConfig().checkpoint_backbone == "auto"
    assert load_config(None, ["train.checkpoint_backbone=false"]).train.checkpoint_backbone is False
    assert load_config(None, ["train.checkpoint_backbone=true"]).train.checkpoint_backbone is True
    with pytest.raises(InputError, match="train.checkpoint_backbone"):
        load_config(None, ["train.checkpoint_backbone=sometimes"])
    assert load_config(None, ["train.checkpoint_backbone=0.5"]).train.checkpoint_backbone == 0.5
    with pytest.raises(InputError, match="train.checkpoint_backbone"):
        load_config(None, ["train.checkpoint_backbone=1.5"])


# --- channels_last: CNNs only, same predictions -------------------------------------


def test_frozen_cnn_runs_channels_last_and_vit_does_not() -> None:
    cnn = make_model("test_efficientnet").backbone
    assert cnn.channels_last
    convs = [m for m in cnn.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not make_model("test_vit").backbone.channels_last
    with pytest.raises(ValueError, match="convolutional"):
        make_model("test_vit").backbone.set_channels_last(True)


def test_channels_last_predicts_the_same() -> None:
    model = make_model("test_efficientnet").eval()
    sha = model.backbone.weights_sha256
    rgb, aux, _ = batch(64, n=3)
    with torch.no_grad():
        fast = model(rgb, aux).logits
        model.backbone.set_channels_last(False)
        assert model.backbone.weights_sha256 == sha
        plain = model(rgb, aux).logits
    assert model.backbone.weights_sha256 == sha
    assert torch.allclose(fast, plain, rtol=1e-4, atol=1e-5)
    agree = (fast.argmax(1) == plain.argmax(1)).float().mean()
    assert agree > 0.999
