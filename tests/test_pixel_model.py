"""The per-pixel baseline ``pixel`` (issue 23): the yardstick a remote-sensing user
applies first, trained by the same trainer, written as an adapter, used by `predict`.

It builds no backbone: its adapter records `NO_BACKBONE` and holds the MLP alone, and
it loads on any machine (nothing to download, nothing to check the weights of).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from gopt_geo.adapter import describe_adapter
from gopt_geo.checkpoint import load_adapter
from gopt_geo.config import load_config
from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
from gopt_geo.inference.options import PredictOptions
from gopt_geo.inference.predictor import Predictor, predict_scene
from gopt_geo.models import ModelConfig, build_model
from gopt_geo.models.base import NO_BACKBONE
from gopt_geo.models.pixel import PixelSegmenter
from gopt_geo.training import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def test_pixel_builds_no_backbone_and_is_per_pixel():
    model = build_model(ModelConfig(variant="pixel", backbone="no_such_model", aux_channels=3))
    assert isinstance(model, PixelSegmenter) and model.backbone is None
    assert model.backbone_identity() == NO_BACKBONE
    report = model.parameter_report()
    assert report.trainable == report.total > 0
    assert not model.set_backbone_checkpointing(True)  # nothing to checkpoint
    model.eval()
    g = torch.Generator().manual_seed(0)
    rgb, aux = torch.randn(1, 3, 17, 23, generator=g), torch.randn(1, 3, 17, 23, generator=g)
    with torch.no_grad():
        before = model(rgb, aux).logits
        aux[..., 5, 7] += 10  # one pixel changes: only its prediction may
        after = model(rgb, aux).logits
    assert before.shape == (1, 7, 17, 23)
    changed = (before != after).any(1)[0]
    assert changed[5, 7] and changed.sum() == 1


@pytest.fixture(scope="module")
def pixel_run(scenes: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("pixel") / "run"
    cfg = load_config(
        CONFIG,
        [
            f"data.root={scenes}",
            f"output_dir={out}",
            "model.variant=pixel",
            "data.patch_size=64",
            "data.batch_size=4",
            "data.train_patches=16",
            "data.stats_patches=4",
            "model.decoder_dim=16",
            "train.epochs=3",
            "train.progress=false",
            "train.lr=0.01",
            "train.log_every_n_steps=1",
        ],
    )
    return cfg, train(cfg, log=lambda *_: None)


def test_pixel_trains_through_the_trainer_into_an_adapter(pixel_run):
    cfg, result = pixel_run
    trained, meta = load_adapter(result.adapter)
    assert meta.model.variant == "pixel" and isinstance(trained, PixelSegmenter)
    assert meta.backbone == NO_BACKBONE
    assert "Backbone: none" in describe_adapter(result.adapter)
    # the loss on training patches went down from a fresh model's
    dm = cfg.datamodule()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))

    def loss(model: torch.nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            rgb, aux = meta.routing.prepare(batch["image"])
            logits = model(rgb, aux).logits
            return float(torch.nn.functional.cross_entropy(logits, batch["mask"], ignore_index=255))

    torch.manual_seed(0)
    assert loss(trained) < loss(build_model(meta.model)) * 0.95


def test_pixel_predicts_a_scene_end_to_end(pixel_run, scenes: Path, tmp_path: Path):
    _, result = pixel_run
    optical, sar = scenes / "optical" / "scene_2.tif", scenes / "sar" / "scene_2.tif"
    predictor = Predictor.from_adapter(result.adapter, device="cpu")
    assert predictor.variant == "pixel" and predictor.needs_sar  # it reads the SAR bands
    options = PredictOptions(window=48, device="cpu", progress=False)
    prediction = predict_scene(optical, sar, result.adapter, tmp_path / "maps", options)
    with rasterio.open(prediction.class_map) as src, rasterio.open(optical) as ref:
        codes = src.read(1)
        assert (src.width, src.height) == (ref.width, ref.height)
    known = {c.code for c in WHU_OPT_SAR_CLASSES.classes}
    assert set(np.unique(codes)) <= known | {0, 255}
