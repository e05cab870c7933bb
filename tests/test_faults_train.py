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
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from gopt_geo.adapter import read_adapter_metadata
from gopt_geo.config import load_config
from gopt_geo.io import PARTIAL_MARKER
from gopt_geo.training import train

pytestmark = pytest.mark.slow  # trainings in subprocesses, killed

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
        "train.epochs=1000",  # never reached: the run is killed (a later test may wait)
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


CASES = {
    "kill_after_adapter": (signal.SIGKILL, "adapter.safetensors"),
    "interrupt_after_checkpoint": (signal.SIGINT, "checkpoints/last.ckpt"),
}


@pytest.fixture(scope="module")
def launched(
    scenes: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[Path, subprocess.Popen]]]:
    """Both trainings, started together when the module starts: each is one thread and
    pays for its own interpreter and torch import, so on two cores they overlap."""
    runs = {}
    for name in CASES:
        out = tmp_path_factory.mktemp(name) / "run"
        runs[name] = (out, _start(scenes, out))
    yield runs
    for _, proc in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("case", list(CASES))
def test_a_killed_training_leaves_a_run_that_can_be_taken_up(
    scenes: Path, launched: dict[str, tuple[Path, subprocess.Popen]], case: str
) -> None:
    sig, after = CASES[case]
    out, proc = launched[case]
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
        epoch = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
        cfg = load_config(CONFIG, [*_sets(scenes, out), f"train.epochs={epoch + 2}"])
        result = train(cfg, resume=True, log=lambda *_: None)
    else:
        cfg = load_config(CONFIG, [*_sets(scenes, out), "train.epochs=1"])
        result = train(cfg, overwrite=True, log=lambda *_: None)
    assert result.adapter is not None
    assert not [p for p in out.rglob("*") if PARTIAL_MARKER in p.name]
