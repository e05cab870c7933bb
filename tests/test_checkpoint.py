"""Adapter file tests: round trip, backbone identity, size, errors, info text."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import safetensors.torch
import torch

from gopt_geo import adapter, checkpoint
from gopt_geo.adapter import read_safetensors_metadata
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


def test_checkpoint_reexports_the_torch_free_reader():
    assert checkpoint.read_adapter_metadata is adapter.read_adapter_metadata
    assert checkpoint.describe_adapter is adapter.describe_adapter
    assert checkpoint.AdapterMetadata is adapter.AdapterMetadata


def test_header_parser_agrees_with_safetensors(tmp_path):
    path = save_adapter(tmp_path / "model.safetensors", trained_like(), metadata())
    with safetensors.safe_open(str(path), "pt") as f:
        assert read_safetensors_metadata(path) == f.metadata()
    empty = tmp_path / "empty.safetensors"
    safetensors.torch.save_file({}, str(empty), metadata={"a": "b"})
    assert read_safetensors_metadata(empty) == {"a": "b"}


def test_truncated_and_tiny_files_are_refused_with_their_name(tmp_path):
    path = save_adapter(tmp_path / "model.safetensors", trained_like(), metadata())
    data = path.read_bytes()
    for name, content in [
        ("empty", b""),
        ("short", data[:5]),
        ("header_cut", data[:100]),
        ("tensors_cut", data[:-10]),
    ]:
        broken = tmp_path / f"{name}.safetensors"
        broken.write_bytes(content)
        with pytest.raises(InputError) as err:
            read_adapter_metadata(broken)
        message = str(err.value)
        assert message.startswith(f"{broken}: not a readable .safetensors adapter file ("), name
        assert "\n" not in message


# --- files from other gopt-geo versions ------------------------------------------------


def rewrite_model_config(src, dst, change) -> None:
    """Copy an adapter with its stored model config changed by ``change(dict)``, as
    another gopt-geo version would have written it."""
    with safetensors.safe_open(str(src), "pt") as f:
        stored = f.metadata()
    document = json.loads(stored["gopt_geo"])
    change(document["model"])
    stored["gopt_geo"] = json.dumps(document)
    safetensors.torch.save_file(safetensors.torch.load_file(str(src)), str(dst), stored)


def test_adapter_from_an_older_version_loads_with_the_model_it_was_trained_with(tmp_path):
    """Before ``prompt_min_stride`` and ``acp_query`` existed every point was prompted
    and ACP queried with RGB alone; a file without them must rebuild that model, not the
    newer defaults (which would not even fit its tensors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomBackboneWarning)
        model = build_model(
            ModelConfig(
                backbone="test_efficientnet", weights="random", prompt_min_stride=1, acp_query="rgb"
            )
        )
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    new = save_adapter(tmp_path / "new.safetensors", model, metadata())
    old = tmp_path / "old.safetensors"

    def older(d: dict) -> None:
        for name in ("prompt_min_stride", "acp_query", "num_prompt_tokens"):
            del d[name]

    rewrite_model_config(new, old, older)
    loaded, meta = load_adapter(old)
    assert meta.model == model.config
    assert "acp_query" not in meta.raw["model"]
    rgb, aux = sample()
    with torch.no_grad():
        assert torch.equal(loaded(rgb, aux).logits, model(rgb, aux).logits)


def test_adapter_from_a_newer_version_is_refused_naming_the_fields(tmp_path):
    path = save_adapter(tmp_path / "model.safetensors", trained_like(), metadata())
    newer = tmp_path / "newer.safetensors"
    rewrite_model_config(path, newer, lambda d: d.update(prompt_depth=2, gate_init=0.5))
    for read in (read_adapter_metadata, load_adapter, describe_adapter):
        with pytest.raises(InputError) as err:
            read(newer)
        message = str(err.value)
        assert message.startswith(f"{newer}: written by gopt-geo ")
        assert "unknown fields gate_init, prompt_depth" in message
        assert "upgrade gopt-geo" in message and "\n" not in message


def test_non_mapping_model_config_is_corrupt(tmp_path):
    path = save_adapter(tmp_path / "model.safetensors", trained_like(), metadata())
    with safetensors.safe_open(str(path), "pt") as f:
        stored = f.metadata()
    document = json.loads(stored["gopt_geo"])
    document["model"] = "gopt"
    bad = tmp_path / "bad.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(bad), {"gopt_geo": json.dumps(document)})
    with pytest.raises(InputError, match=f"{bad}: corrupt gopt-geo metadata \\(model config"):
        read_adapter_metadata(bad)


# --- gopt-geo info stays light ----------------------------------------------------------

HEAVY = ("torch", "timm", "torchgeo", "lightning", "safetensors.torch")


def imported_heavy_modules(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the heavy packages it left in sys.modules."""
    check = f"import json, sys; heavy = {HEAVY!r}; " + (
        "print(json.dumps([m for m in sys.modules if m in heavy or m.split('.')[0] in heavy[:-1]]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\n{check}"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_describing_an_adapter_imports_neither_torch_nor_timm(tmp_path):
    path = save_adapter(tmp_path / "model.safetensors", trained_like(), metadata())
    code = (
        "from gopt_geo.adapter import describe_adapter\n"
        "from gopt_geo.models import ModelConfig, ParameterReport\n"
        f"assert 'Backbone: test_vit' in describe_adapter({str(path)!r})"
    )
    assert imported_heavy_modules(code) == []


@pytest.mark.slow
def test_info_command_imports_neither_torch_nor_timm(tmp_path):
    path = save_adapter(tmp_path / "model.safetensors", trained_like(), metadata())
    code = (
        "from typer.testing import CliRunner\n"
        "from gopt_geo.cli import app\n"
        f"result = CliRunner().invoke(app, ['info', {str(path)!r}])\n"
        "assert result.exit_code == 0, result.output\n"
        "assert 'Backbone: test_vit' in result.output"
    )
    assert imported_heavy_modules(code) == []
