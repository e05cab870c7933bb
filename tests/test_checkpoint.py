"""Adapter file tests (issue 3): round trip, backbone identity, size, errors, info text."""

from __future__ import annotations

import json
import warnings

import pytest
import safetensors.torch
import torch

from gopt_geo import checkpoint
from gopt_geo.checkpoint import (
    describe_adapter,
    load_adapter,
    read_adapter_metadata,
    save_adapter,
)
from gopt_geo.data.bands import BandRouting
from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
from gopt_geo.errors import InputError
from gopt_geo.models import ModelConfig, RandomBackboneWarning, build_model

pytestmark = pytest.mark.filterwarnings("ignore::gopt_geo.models.RandomBackboneWarning")

ROUTING = BandRouting(
    optical_bands=("R", "G", "B", "NIR"),
    sar_bands=("VV", "VH"),
    mean={"R": 0.1, "G": 0.2, "B": 0.3, "NIR": 0.4, "VV": -12.0, "VH": -18.0},
    std={"R": 1.0, "G": 1.0, "B": 1.0, "NIR": 1.0, "VV": 4.0, "VH": 5.0},
)


def metadata() -> dict:
    return {
        "routing": ROUTING.to_dict(),
        "classes": WHU_OPT_SAR_CLASSES.to_dict(),
        "training": {"epochs": 3, "dataset": "synthetic"},
        "metrics": {"val": {"miou": 0.4321, "iou": [0.5, 0.25]}, "epoch": 4},
    }


def trained_like(variant: str = "gopt", backbone: str = "test_vit"):
    """A model whose trainable state differs from a fresh build: open gates, perturbed
    weights, moved batch-norm statistics; so that a round trip proves something."""
    model = build_model(ModelConfig(variant=variant, backbone=backbone, weights="random"))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.train()
    model(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    return model.eval()


def sample(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, 45, 37, generator=g), torch.randn(1, 3, 45, 37, generator=g)


@pytest.mark.parametrize(
    "variant,backbone",
    [
        ("gopt", "test_vit"),
        ("gopt", "test_efficientnet"),
        ("optical_only", "test_efficientnet"),
        ("early_fusion", "test_efficientnet"),
        ("static_prompt", "test_vit"),
    ],
)
def test_round_trip_gives_identical_logits(tmp_path, variant, backbone):
    model = trained_like(variant, backbone)
    path = save_adapter(tmp_path / "model.safetensors", model, metadata())
    loaded, meta = load_adapter(path)
    rgb, aux = sample()
    with torch.no_grad():
        assert torch.equal(loaded(rgb, aux).logits, model(rgb, aux).logits)
    assert not loaded.training
    assert meta.model == model.config
    assert meta.routing == ROUTING and meta.classes == WHU_OPT_SAR_CLASSES
    assert meta.backbone == model.backbone_identity()
    assert meta.parameters == model.parameter_report().to_dict()
    assert meta.metrics == metadata()["metrics"]
    stored = safetensors.torch.load_file(str(path))
    assert set(stored) == set(model.trainable_state_dict())
    assert variant == "early_fusion" or not any(k.startswith("backbone.") for k in stored)


def test_mismatched_backbone_weights_are_refused(tmp_path):
    model = trained_like()
    path = save_adapter(tmp_path / "model.safetensors", model, metadata())
    # the same weights exported to a file (timm key names, no classifier) load fine
    state = {k: v.clone() for k, v in model.backbone.model.state_dict().items()}
    same = tmp_path / "same.safetensors"
    safetensors.torch.save_file(state, str(same))
    loaded, _ = load_adapter(path, weights=str(same))
    assert loaded.backbone_identity()["sha256"] == model.backbone_identity()["sha256"]

    state["blocks.3.mlp.fc1.weight"] = state["blocks.3.mlp.fc1.weight"] + 1e-3
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file(state, str(other))
    sha = model.backbone_identity()["sha256"]
    with pytest.raises(InputError) as err:
        load_adapter(path, weights=str(other))
    message = str(err.value)
    assert message.startswith(f"{path}: adapter was trained on backbone test_vit (weights random")
    assert f"sha256 {sha[:12]}…" in message
    assert f"but the backbone built here is test_vit (weights {other}" in message


def test_unbuildable_backbone_names_the_adapter(tmp_path):
    path = save_adapter(tmp_path / "model.safetensors", trained_like(), metadata())
    missing = tmp_path / "gone.safetensors"
    with pytest.raises(InputError, match=f"{path}: cannot rebuild the backbone .*{missing}"):
        load_adapter(path, weights=str(missing))


def test_vit_b_adapter_is_under_5_mb(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomBackboneWarning)
        model = build_model(ModelConfig(backbone="vit_base_patch16_224", weights="random"))
    path = save_adapter(tmp_path / "vitb.safetensors", model, metadata())
    size = path.stat().st_size
    print(f"\nViT-B/16 GoPT adapter: {size / 1e6:.2f} MB ({model.parameter_report()})")
    assert size < 5_000_000
    assert size > 4 * model.parameter_report().trainable  # it does hold the tensors


def test_save_is_atomic(tmp_path, monkeypatch):
    model = trained_like()
    target = tmp_path / "model.safetensors"

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(target, model, metadata())
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    save_adapter(target, model, metadata())
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_save_checks_routing_and_classes_against_the_model(tmp_path):
    model = trained_like()
    bad = {**metadata(), "routing": BandRouting(("R", "G", "B"), ("VV",)).to_dict()}
    with pytest.raises(ValueError, match="routing has 1 aux bands"):
        save_adapter(tmp_path / "a.safetensors", model, bad)
    with pytest.raises(ValueError, match="metadata needs 'classes'"):
        save_adapter(tmp_path / "a.safetensors", model, {"routing": ROUTING.to_dict()})


def test_unreadable_files_are_refused_with_their_name(tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(InputError, match=f"{missing}: adapter file not found"):
        read_adapter_metadata(missing)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 definitely not safetensors")
    with pytest.raises(InputError, match=f"{garbage}: not a readable .safetensors adapter file"):
        load_adapter(garbage)

    foreign = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(foreign), metadata={"a": "b"})
    with pytest.raises(InputError, match=f"{foreign}: not a gopt-geo adapter"):
        read_adapter_metadata(foreign)

    corrupt = tmp_path / "corrupt.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(corrupt), metadata={"gopt_geo": "{"})
    with pytest.raises(InputError, match=f"{corrupt}: corrupt gopt-geo metadata"):
        read_adapter_metadata(corrupt)

    partial = tmp_path / "partial.safetensors"
    doc = json.dumps({"format_version": 1, "model": {}})
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(partial), metadata={"gopt_geo": doc})
    with pytest.raises(InputError, match=f"{partial}: corrupt gopt-geo metadata \\(missing"):
        read_adapter_metadata(partial)


def test_tensors_that_do_not_fit_are_refused(tmp_path):
    model = trained_like()
    path = save_adapter(tmp_path / "model.safetensors", model, metadata())
    with safetensors.safe_open(str(path), "pt") as f:
        stored = f.metadata()
    tensors = safetensors.torch.load_file(str(path))
    tensors.pop("decoder.classifier.bias")
    broken = tmp_path / "broken.safetensors"
    safetensors.torch.save_file(tensors, str(broken), metadata=stored)
    with pytest.raises(InputError, match=f"{broken}: tensors do not match the model: 1 missing"):
        load_adapter(broken)


def test_describe_adapter_lists_what_a_user_needs(tmp_path):
    model = trained_like()
    path = save_adapter(tmp_path / "model.safetensors", model, metadata())
    text = describe_adapter(path)
    identity = model.backbone_identity()
    assert f"Backbone: test_vit, weights random, sha256 {identity['sha256']}" in text
    assert "rgb (frozen backbone): R, G, B" in text
    assert "aux (prompt stream): NIR, VV, VH" in text
    assert "VV -12±4" in text
    for index, c in enumerate(WHU_OPT_SAR_CLASSES.classes):
        assert f"{index}: code {c.code:>3}  {c.name}" in text
    assert f"Parameters: {model.parameter_report()}" in text
    expected = "  val.miou: 0.4321\n  val.iou.farmland: 0.5000\n  val.iou.city: 0.2500\n  epoch: 4"
    assert expected in text
    assert "epochs: 3" in text
