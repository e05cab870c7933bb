"""Fault injection for training: the real CLI in a subprocess, killed mid-run.

SIGKILL and SIGINT here (SIGTERM ends a run as SIGINT does: Lightning and the CLI treat
both as an interruption; test_faults.py kills predict with all three). Whatever the signal
and the moment, a run folder never holds a half-written adapter or
checkpoint (both are written under temporary names and renamed), and the run can be
taken up again: resumed from its last checkpoint, or replaced when none was written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gopt_geo.adapter import read_adapter_metadata
from gopt_geo.config import load_config
from gopt_geo.io import PARTIAL_MARKER
from gopt_geo.training import train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo.yaml"


def _sets(scenes: Path, out: Path) -> list[str]:
    return [
        f"data.root={scenes}",
        f"output_dir={out}",
        "data.patch_size=32",
        "data.train_patches=64",
        "data.batch_size=4",
        "data.stats_patches=4",
        "model.backbone=test_efficientnet",
        "model.weights=random",
        "model.prompt_dim=16",
        "model.decoder_dim=16",
        "train.epochs=30",
        "train.progress=false",
    ]


def _start(scenes: Path, out: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "gopt_geo", "--threads", "1", "train", "-c", str(CONFIG)]
    for s in _sets(scenes, out):
        args += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:] if proc.stdout else ""
        assert time.time() - start < timeout, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("sig", "after"),
    [
        (signal.SIGKILL, "adapter.safetensors"),
        (signal.SIGINT, "checkpoints/last.ckpt"),
    ],
)
def test_a_killed_training_leaves_a_run_that_can_be_taken_up(
    scenes: Path, tmp_path: Path, sig: signal.Signals, after: str
) -> None:
    out = tmp_path / "run"
    proc = _start(scenes, out)
    try:
        _wait_for(out / after, proc)
        time.sleep(0.3)  # into the next epoch (or its checkpoint write)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0  # an interrupted run does not claim success

    assert not [p for p in out.rglob("*") if PARTIAL_MARKER in p.name] or sig == signal.SIGKILL
    if (out / "adapter.safetensors").exists():
        read_adapter_metadata(out / "adapter.safetensors")  # complete, never half-written
    last = out / "checkpoints" / "last.ckpt"
    if last.exists():
        epoch = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
        cfg = load_config(CONFIG, [*_sets(scenes, out), f"train.epochs={epoch + 2}"])
        result = train(cfg, resume=True, log=lambda *_: None)
    else:
        cfg = load_config(CONFIG, [*_sets(scenes, out), "train.epochs=1"])
        result = train(cfg, overwrite=True, log=lambda *_: None)
    assert result.adapter is not None
    assert not [p for p in out.rglob("*") if PARTIAL_MARKER in p.name]
