"""Training beyond one process: a 2-process DDP run on CPU (gloo).

Lightning's DDP launcher starts the second process by running the same script again, so
the run lives in a small script file run with ``python``, as a user would run
``gopt-geo train --devices 2 --strategy ddp``. Each process validates its own share of
the validation patches; the task gathers the confusion matrices
(``GoPTTask._log_metrics``), so the metrics every process logs must count the pixels of
both shares.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # two training processes

SCRIPT = '''
import json, os, sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from gopt_geo.config import load_config
from gopt_geo.training import train


class Record(Callback):
    """Each process's own validation pixels (before the task gathers them) and the
    pixels of the metrics it logs (after)."""

    def on_validation_epoch_end(self, trainer, task):  # runs before the task's hook
        cm = task._confusion.get("val")
        self.local = int(cm.sum()) if cm is not None else 0

    def on_validation_end(self, trainer, task):
        out = Path(sys.argv[2]) / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps({
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "local_pixels": self.local,
            "logged_pixels": task.last_metrics["val"].pixels,
            "steps": trainer.global_step,
        }))


if __name__ == "__main__":
    torch.set_num_threads(1)
    cfg = load_config(sys.argv[3], [
        f"data.root={sys.argv[1]}", f"output_dir={sys.argv[2]}/run",
        "data.patch_size=64", "data.batch_size=2", "data.train_patches=8",
        "data.stats_patches=2", "model.backbone=test_efficientnet", "model.weights=random",
        "model.prompt_dim=8", "model.decoder_dim=8", "train.epochs=1", "train.max_steps=2",
        "train.progress=false", "train.device=cpu", "train.devices=2",
        "train.strategy=ddp", "train.log_every_n_steps=1",
    ])
    train(cfg, log=lambda *_: None, callbacks=[Record()])
'''

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_process_ddp_gathers_validation_metrics(scenes: Path, tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",  # the rendezvous stays on this machine
        "MASTER_PORT": str(_free_port()),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    proc = subprocess.run(
        [sys.executable, str(script), str(scenes), str(tmp_path), str(CONFIG)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["world_size"] == 2 and r["strategy"] == "DDPStrategy"
        assert r["steps"] == 2 and r["local_pixels"] > 0
    # every process logs metrics over both processes' pixels, not only its own
    total = ranks[0]["local_pixels"] + ranks[1]["local_pixels"]
    assert ranks[0]["logged_pixels"] == ranks[1]["logged_pixels"] == total
    assert (tmp_path / "run" / "adapter.safetensors").exists()
