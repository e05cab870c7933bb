"""Training runs that never lose work: exact resume, one run per folder, checked resumes,
labels that must cover their scene, honest results when nothing was validated."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from test_training import tiny_config

from gopt_geo.errors import InputError
from gopt_geo.training import train

QUIET = {"log": lambda *_: None}


class StopAfter(pl.Callback):
    """Stops training at the end of epoch ``epochs`` - 1, as an interruption would."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_validation_end(self, trainer: pl.Trainer, task: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("detail", [False, True])
def test_resume_equals_an_uninterrupted_run(scenes: Path, tmp_path: Path, detail: bool) -> None:
    # with the detail path, training also draws the pixels it scores (decoder.sample_points)
    sets = ("train.epochs=4", "train.log_every_n_steps=1", f"model.detail_path={detail}")
    whole = train(tiny_config(scenes, tmp_path / "whole", *sets), **QUIET)
    cut = tmp_path / "cut"
    train(tiny_config(scenes, cut, *sets), callbacks=[StopAfter(2)], **QUIET)
    assert torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    resumed = train(tiny_config(scenes, cut, *sets), resume=True, **QUIET)

    a, b = _state(tmp_path / "whole"), _state(cut)
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert _history(cut) == _history(tmp_path / "whole")  # history kept and appended
    assert resumed.metrics == whole.metrics


def test_the_adapter_is_only_replaced_by_a_better_epoch(scenes: Path, tmp_path: Path) -> None:
    """The best score survives the interruption: after resuming, the adapter holds the
    best epoch of the whole run, not the best since the restart."""
    out = tmp_path / "run"
    sets = ("train.epochs=4",)
    train(tiny_config(scenes, out, *sets), callbacks=[StopAfter(2)], **QUIET)
    train(tiny_config(scenes, out, *sets), resume=True, **QUIET)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    scores = [float(r["val_miou"]) for r in _history(out) if r.get("val_miou")]
    export = next(v for k, v in ckpt["callbacks"].items() if k.startswith("AdapterExport"))
    assert len(scores) == 4 and export["best"] == pytest.approx(max(scores))

    from gopt_geo.adapter import read_adapter_metadata

    meta = read_adapter_metadata(out / "adapter.safetensors")
    assert meta.metrics["val"]["miou"] == pytest.approx(max(scores))


def test_resuming_a_finished_run_changes_nothing(scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_config(scenes, out, "train.epochs=1"), **QUIET)
    before = _snapshot(out)
    said: list[str] = []
    result = train(tiny_config(scenes, out, "train.epochs=1"), resume=True, log=said.append)
    assert result.finished_before and "already finished" in " ".join(said)
    assert _snapshot(out) == before


def test_a_folder_holding_a_run_is_refused_and_left_alone(scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_config(scenes, out, "train.epochs=1"), **QUIET)
    before = _snapshot(out)
    with pytest.raises(InputError, match=r"run: already holds a training run .*--resume.*"):
        train(tiny_config(scenes, out, "train.epochs=1"), **QUIET)
    assert _snapshot(out) == before
    (out / "notes.txt").write_text("mine")
    train(tiny_config(scenes, out, "train.epochs=1"), overwrite=True, **QUIET)
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files replaced


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_bad_resume_checkpoints_are_refused_before_any_write(
    scenes: Path, tmp_path: Path, damage: str
) -> None:
    out = tmp_path / "run"
    train(tiny_config(scenes, out, "train.epochs=1"), **QUIET)
    last = out / "checkpoints" / "last.ckpt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:2000])
    elif damage == "garbage":
        last.write_bytes(b"not a checkpoint at all")
    else:  # a checkpoint of another model
        other = tmp_path / "other"
        train(tiny_config(scenes, other, "train.epochs=1", "model.prompt_dim=8"), **QUIET)
        last.write_bytes((other / "checkpoints" / "last.ckpt").read_bytes())
    before = _snapshot(out)
    with pytest.raises(InputError, match=r"last.ckpt: (not a readable|written for another)"):
        train(tiny_config(scenes, out, "train.epochs=2"), resume=True, **QUIET)
    assert _snapshot(out) == before


def test_labels_that_miss_their_scene_are_named(scenes: Path, tmp_path: Path) -> None:
    """A shifted label file (half off its scene) is refused by name before training."""
    import shutil

    import rasterio

    root = tmp_path / "data"
    shutil.copytree(scenes, root)
    label = sorted((root / "labels").glob("*.tif"))[0]
    with rasterio.open(label, "r+") as dst:
        t = dst.transform
        dst.transform = rasterio.Affine(t.a, t.b, t.c + t.a * dst.width / 2, t.d, t.e, t.f)
    with pytest.raises(InputError, match=rf"{label.name}: label raster covers only 50\.0%"):
        train(tiny_config(root, tmp_path / "run"), **QUIET)
    assert not (tmp_path / "run").exists()


def test_training_that_never_validates_writes_no_adapter(scenes: Path, tmp_path: Path) -> None:
    result = train(tiny_config(scenes, tmp_path / "run", "train.max_steps=2"), **QUIET)
    assert result.adapter is None and not (tmp_path / "run" / "adapter.safetensors").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()
