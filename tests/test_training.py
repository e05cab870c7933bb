"""Training: the loss goes down, the backbone does not move, resume, determinism, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gopt_geo.cli import app
from gopt_geo.config import RunConfig, load_config
from gopt_geo.errors import InputError
from gopt_geo.training import GoPTTask, train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def tiny_config(scenes: Path, out: Path, *extra: str) -> RunConfig:
    return load_config(
        CONFIG,
        [
            f"data.root={scenes}",
            f"output_dir={out}",
            "data.patch_size=64",
            "data.batch_size=4",
            "data.train_patches=16",
            "data.stats_patches=4",
            "model.backbone=test_efficientnet",
            "model.weights=random",
            "model.prompt_dim=16",
            "model.decoder_dim=16",
            "train.epochs=2",
            "train.progress=false",
            "train.lr=0.01",
            *extra,
        ],
    )


def _fixed_batch(cfg: RunConfig) -> tuple[dict[str, torch.Tensor], object]:
    """Training patches (as read; the task flips them in its step), and the routing with
    the training statistics."""
    dm = cfg.datamodule()
    dm.setup("fit")
    return next(iter(dm.train_dataloader())), dm.routing


def test_training_lowers_loss_and_keeps_backbone(scenes: Path, tmp_path: Path) -> None:
    cfg = tiny_config(scenes, tmp_path / "run", "train.epochs=8", "data.train_patches=32")
    batch, routing = _fixed_batch(cfg)
    result = train(cfg, log=lambda *_: None)

    from gopt_geo.checkpoint import load_adapter
    from gopt_geo.models import ModelConfig, build_model

    trained, meta = load_adapter(result.adapter)
    fresh = build_model(meta.model)  # same backbone weights, untrained prompters/head
    assert isinstance(meta.model, ModelConfig)

    def loss(model: torch.nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            rgb, aux = meta.routing.prepare(batch["image"])
            logits = model(rgb, aux).logits
            return float(torch.nn.functional.cross_entropy(logits, batch["mask"], ignore_index=255))

    assert loss(trained) < loss(fresh) * 0.95
    # the frozen backbone is bit-identical to a freshly built one
    fresh_bb = {k: v for k, v in fresh.state_dict().items() if k.startswith("backbone.")}
    trained_bb = {k: v for k, v in trained.state_dict().items() if k.startswith("backbone.")}
    assert fresh_bb and fresh_bb.keys() == trained_bb.keys()
    assert all(torch.equal(fresh_bb[k], trained_bb[k]) for k in fresh_bb)
    # outputs of a run
    assert (tmp_path / "run" / "metrics.csv").exists()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    assert meta.metrics["val"]["miou"] >= 0
    # a checkpoint holds the trainable tensors only
    ckpt = torch.load(result.last_checkpoint, weights_only=True)
    assert not any(k.startswith("model.backbone.") for k in ckpt["state_dict"])


def test_optimizer_holds_only_trainable_tensors(scenes: Path, tmp_path: Path) -> None:
    cfg = tiny_config(scenes, tmp_path / "run")
    _, routing = _fixed_batch(cfg)
    from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES

    task = GoPTTask(cfg.model, cfg.train, routing, WHU_OPT_SAR_CLASSES)
    opt = task.configure_optimizers()["optimizer"]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in task.parameters() if p.requires_grad}
    assert in_opt == trainable and trainable
    assert all(not p.requires_grad for p in task.model.backbone.parameters())


def _steps(run: Path) -> list[int]:
    with open(run / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train_loss")]


def test_resume_continues(scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(
        tiny_config(scenes, out, "train.epochs=1", "train.log_every_n_steps=1"), log=lambda *_: None
    )
    first = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["global_step"] == 4 and first["epoch"] == 0
    train(
        tiny_config(scenes, out, "train.epochs=2", "train.log_every_n_steps=1"),
        resume=True,
        log=lambda *_: None,
    )
    second = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert second["global_step"] == 8  # 4 more steps, not 8 from zero
    assert max(_steps(out)) >= 4


def test_same_seed_same_metrics(scenes: Path, tmp_path: Path) -> None:
    a = train(tiny_config(scenes, tmp_path / "a"), log=lambda *_: None)
    b = train(tiny_config(scenes, tmp_path / "b"), log=lambda *_: None)
    assert a.metrics == b.metrics and a.metrics["val"]["pixels"] > 0


def test_missing_data_root(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "nowhere", tmp_path / "run")
    with pytest.raises(InputError, match=r"nowhere: data root not found \(data.root\)"):
        train(cfg, log=lambda *_: None)


def test_cli_train_info_evaluate(scenes: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "run"
    common = ["--config", str(CONFIG)]
    sets = [
        f"data.root={scenes}",
        f"output_dir={out}",
        "data.patch_size=64",
        "data.train_patches=8",
        "data.batch_size=4",
        "data.stats_patches=4",
        "model.backbone=test_efficientnet",
        "model.weights=random",
        "train.epochs=1",
        "train.progress=false",
    ]
    args = ["train", *common, *[x for s in sets for x in ("--set", s)]]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "trainable params:" in res.output and "(best epoch: 1 of 1)" in res.output
    res = runner.invoke(app, ["info", str(out / "adapter.safetensors")])
    assert res.exit_code == 0 and "test_efficientnet" in res.output
    res = runner.invoke(
        app,
        [
            "evaluate",
            "--model",
            str(out / "adapter.safetensors"),
            *common,
            *[x for s in sets for x in ("--set", s)],
        ],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "adapter.metrics-test.json").read_text())
    assert 0 <= metrics["oa"] <= 1 and metrics["pixels"] == 96 * 96


def test_cli_bad_config_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    res = CliRunner().invoke(app, ["train", "--config", str(bad)])
    assert res.exit_code == 2
    assert "unknown config key(s) train.epoch" in res.output
    assert "Traceback" not in res.output
