"""Files the tool reads never run code: a crafted training checkpoint is refused.

A run folder is data that users copy and share; ``train --resume`` unpickles its
``checkpoints/last.ckpt``, and so does Lightning's own resume. Both load with torch's
weights-only unpickler: a checkpoint whose unpickling would call a function (here: touch
a marker file) is refused in one line, and the function never runs.
"""

from __future__ import annotations

import pathlib
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from test_training import CONFIG, tiny_config
from typer.testing import CliRunner

from gopt_geo.checkpoint import load_training_checkpoint
from gopt_geo.cli import app
from gopt_geo.errors import InputError
from gopt_geo.run_folder import AtomicCheckpointIO
from gopt_geo.training import train


class _TouchOnLoad:
    """Unpickling this creates ``marker``: a stand-in for any code a file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def crafted_run(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real one-epoch run whose last checkpoint was then given a payload (in its
    hyper-parameters, read by every resume), and the marker the payload would create."""
    out = tmp_path_factory.mktemp("crafted") / "run"
    train(tiny_config(scenes, out, "train.epochs=1"), log=lambda *_: None)
    last = out / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    marker = out.parent / "pwned"
    ckpt["hyper_parameters"]["payload"] = _TouchOnLoad(marker)
    torch.save(ckpt, last)
    assert not marker.exists()
    return out, marker


def test_train_resume_refuses_a_checkpoint_that_would_run_code(
    scenes: Path, crafted_run: tuple[Path, Path]
) -> None:
    out, marker = crafted_run
    sets = [f"data.root={scenes}", f"output_dir={out}", "train.epochs=2", "train.progress=false"]
    args = ["train", "--config", str(CONFIG), "--resume"]
    res = CliRunner().invoke(app, [*args, *[x for s in sets for x in ("--set", s)]])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert "last.ckpt: refused: loading it would call" in lines[0]
    assert not marker.exists()


def test_lightning_resume_path_loads_weights_only(crafted_run: tuple[Path, Path]) -> None:
    """What ``trainer.fit(ckpt_path=...)`` calls to read the checkpoint refuses it too."""
    out, marker = crafted_run
    last = out / "checkpoints" / "last.ckpt"
    trainer = pl.Trainer(plugins=[AtomicCheckpointIO()], logger=False, accelerator="cpu")
    with pytest.raises(InputError, match=r"last.ckpt: refused"):
        trainer.strategy.load_checkpoint(last, weights_only=False)  # asked unsafe: still safe
    with pytest.raises(InputError, match=r"last.ckpt: refused"):
        load_training_checkpoint(last)
    assert not marker.exists()


def test_the_payload_is_live(crafted_run: tuple[Path, Path]) -> None:
    """The tests above could fail: an unsafe load of the same file does run the payload."""
    out, marker = crafted_run
    torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert marker.exists()
    marker.unlink()
