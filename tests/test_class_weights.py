"""``train.class_weights``: auto weights from the training labels' class shares, checked
lists, and the weights a run actually trains with."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import tiny_config

from gopt_geo.config import TrainConfig, load_config
from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
from gopt_geo.errors import InputError
from gopt_geo.training import (
    AUTO_WEIGHT_CAP,
    auto_class_weights,
    resolve_class_weights,
    train,
)


def test_auto_weights_are_inverse_square_roots_of_the_shares() -> None:
    # shares 0.9 / 0.1: 1/sqrt -> 1.054, 3.162; pixel-weighted mean 1.265 -> /1.265
    w = auto_class_weights([900, 100])
    assert w == pytest.approx([1 / (math.sqrt(0.9) * (math.sqrt(0.9) + math.sqrt(0.1))), 2.5])
    assert 0.9 * w[0] + 0.1 * w[1] == pytest.approx(1.0)  # pixel-weighted mean 1
    assert auto_class_weights([5, 5, 5, 5]) == pytest.approx([1.0] * 4)  # balanced: all 1
    assert auto_class_weights([10, 20]) == pytest.approx(auto_class_weights([1000, 2000]))


def test_absent_and_very_rare_classes_get_the_cap() -> None:
    w = auto_class_weights([600, 400, 0])
    assert w[2] == AUTO_WEIGHT_CAP and w[0] < w[1] < AUTO_WEIGHT_CAP
    rare = auto_class_weights([10**7, 1])
    assert rare[1] == AUTO_WEIGHT_CAP and rare[0] == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="no labelled pixel"):
        auto_class_weights([0, 0])


def test_config_takes_auto_lists_and_null_and_refuses_the_rest() -> None:
    assert load_config(None, ["train.class_weights=auto"]).train.class_weights == "auto"
    assert load_config(None, ["train.class_weights=[1, 2.5]"]).train.class_weights == [1.0, 2.5]
    for bad, why in [
        ("autp", "expected auto, null or a list"),
        ("[1, -1]", "expected one finite weight >= 0 .* got \\[1.0, -1.0\\]"),
        ("[0, 0]", "expected .*not all 0"),
        ("[]", "expected one finite weight >= 0"),
    ]:
        with pytest.raises(InputError, match=f"train.class_weights: {why}"):
            load_config(None, [f"train.class_weights={bad}"])


def test_resolved_weights_match_the_scheme() -> None:
    scheme = WHU_OPT_SAR_CLASSES
    k = scheme.num_classes
    never = lambda: pytest.fail("counted pixels for weights that are not auto")  # noqa: E731
    assert resolve_class_weights(TrainConfig(), scheme, never) is None
    given = TrainConfig(class_weights=[1.0] * k)
    assert resolve_class_weights(given, scheme, never) == [1.0] * k
    with pytest.raises(InputError, match=rf"2 weights for {k} classes \(farmland, "):
        resolve_class_weights(TrainConfig(class_weights=[1.0, 2.0]), scheme, never)
    counts = np.arange(1, k + 1) * 100
    auto = TrainConfig(class_weights="auto")
    assert resolve_class_weights(auto, scheme, lambda: counts) == auto_class_weights(counts)
    with pytest.raises(InputError, match="auto found no labelled pixel"):
        resolve_class_weights(auto, scheme, lambda: np.zeros(k, dtype=int))


def test_a_run_trains_with_the_auto_weights_of_its_training_labels(
    scenes: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(scenes, tmp_path / "run", "train.epochs=1", "train.class_weights=auto")
    dm = cfg.datamodule()
    dm.setup("fit")
    counts = dm.class_pixel_counts()
    # the statistics' patches, their labels counted without the ignored pixels
    stats = cfg.data.stats_patches * cfg.data.patch_size**2
    assert 0 < counts.sum() <= stats and len(counts) == cfg.class_scheme().num_classes
    said: list[str] = []
    result = train(cfg, log=said.append)
    ckpt = torch.load(result.last_checkpoint, weights_only=True)
    weights = ckpt["hyper_parameters"]["train"]["class_weights"]
    assert weights == pytest.approx(auto_class_weights(counts))
    line = next(s for s in said if s.startswith("class weights (auto"))
    assert f"{int(counts.sum()):,} labelled pixels" in line
    assert cfg.class_scheme().names[0] in line


def test_class_pixels_leave_out_ignored_pixels(tmp_path: Path) -> None:
    from conftest import write_scenes
    from torchgeo.samplers import RandomPatchSampler

    from gopt_geo.data.classes import IGNORE_INDEX
    from gopt_geo.data.datamodule import OpticalSarDataModule

    labels = np.zeros((64, 64), dtype=np.uint8)  # code 0: background, ignored
    labels[:, 40:] = 40  # water, a quarter-ish of every scene
    write_scenes(tmp_path, ("s0", "s1", "s2"), labels=labels)
    dm = OpticalSarDataModule(
        tmp_path, classes=WHU_OPT_SAR_CLASSES, patch_size=32, length=4, stats_patches=6, seed=3
    )
    dm.setup("fit")
    counts = dm.class_pixel_counts()
    water = WHU_OPT_SAR_CLASSES.names.index("water")
    # the statistics' patches again, as the datamodule draws them
    ds = dm.split_dataset("train")
    masks = [ds[q]["mask"] for q in RandomPatchSampler(ds, size=32, length=6, generator=4)]
    ignored = sum(int((m == IGNORE_INDEX).sum()) for m in masks)
    assert ignored > 0 and counts[water] == sum(int((m == water).sum()) for m in masks)
    assert counts.sum() == counts[water] == 6 * 32 * 32 - ignored
