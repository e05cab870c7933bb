"""The Lightning callbacks of a training run: the adapter export and the step seeds.

:class:`AdapterExport` writes the adapter file of the best validation epoch (staged until
that epoch's checkpoint is saved, so a full disk never leaves an adapter ahead of it)
and remembers the best and the last epoch's scores; :class:`StepSeeds` makes every
random draw depend on the step alone, so a resumed run is exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from .checkpoint import save_adapter
from .evaluation import Metrics
from .io import finite_or_none
from .run_folder import AtomicCheckpointIO


class AdapterExport(Callback):
    """Writes the adapter file whenever the validation mIoU improves.

    It keeps the scores of the epoch it wrote (:attr:`best`: ``val``, ``epoch``,
    ``step``) and of the last validated epoch (:attr:`last`), so that what a run reports
    as the adapter's scores are the adapter's, and the last epoch's are labelled as such.
    Both are part of the checkpoint (``state_dict``): a resumed run replaces the adapter
    only with a better epoch than any before the interruption, and reports the same.
    """

    def __init__(
        self,
        path: Path,
        metadata: dict[str, Any],
        checkpoint_io: AtomicCheckpointIO | None = None,
    ) -> None:
        self.path = path
        self.metadata = metadata
        # with it, the adapter is staged and renamed into place only once the checkpoint
        # of the same epoch is saved: a full disk never leaves an adapter ahead of it
        self.checkpoint_io = checkpoint_io
        self.best_score = -float("inf")
        self.best: dict[str, Any] = {}
        self.last: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best_score, "best_metrics": self.best, "last_metrics": self.last}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = float(state_dict.get("best", -float("inf")))
        self.best = dict(state_dict.get("best_metrics") or {})
        self.last = dict(state_dict.get("last_metrics") or {})

    def on_validation_end(self, trainer: pl.Trainer, task: pl.LightningModule) -> None:
        if trainer.sanity_checking or "val" not in getattr(task, "last_metrics", {}):
            return
        m: Metrics = task.last_metrics["val"]
        scores = {
            "val": finite_or_none(m.to_dict()),
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
        }
        self.last = scores
        score = m.miou if np.isfinite(m.miou) else -1.0
        if score <= self.best_score:
            return
        self.best_score = score
        self.best = scores
        if trainer.global_rank != 0:
            return
        meta = dict(self.metadata)
        meta["metrics"] = dict(scores)
        target = self.checkpoint_io.stage(self.path) if self.checkpoint_io else self.path
        save_adapter(target, task.model, meta)

    def on_exception(
        self, trainer: pl.Trainer, task: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.checkpoint_io:
            self.checkpoint_io.discard_staged()

    def on_fit_end(self, trainer: pl.Trainer, task: pl.LightningModule) -> None:
        if self.checkpoint_io:
            self.checkpoint_io.commit_staged()

    def summary(self) -> dict[str, Any]:
        """The run's scores: the adapter's epoch (``val``, ``epoch``, ``step``) and the
        last validated epoch (``last_val``, ``last_epoch``); empty before any validation."""
        out: dict[str, Any] = dict(self.best)
        if self.last:
            out["last_val"] = self.last["val"]
            out["last_epoch"] = self.last["epoch"]
        return out


def record_last_epoch(adapter: Path, scores: dict[str, Any]) -> None:
    """Add the last epoch's scores (``last_val``, ``last_epoch``) to an adapter's metrics.

    The adapter holds the best epoch's tensors and scores; the last epoch is known only
    when training ends, after the file was written. Its tensors are copied unchanged
    into a new file with the completed metadata (written under a temporary name)."""
    import json

    import safetensors
    import safetensors.torch

    from .adapter import METADATA_KEY
    from .io import atomic_path

    with safetensors.safe_open(str(adapter), framework="pt") as f:
        header = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    document = json.loads(header[METADATA_KEY])
    metrics = dict(document.get("metrics") or {})
    metrics["last_val"] = scores["last_val"]
    metrics["last_epoch"] = scores["last_epoch"]
    document["metrics"] = metrics
    header[METADATA_KEY] = json.dumps(document)
    with atomic_path(adapter) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata=header)


class StepSeeds(Callback):
    """Reseeds torch before every training step from (seed, global step).

    Flips and Gumbel noise then depend on the step alone, not on how many steps this
    process has run (patch positions depend on the epoch alone: ``EpochPatchSampler``),
    so a run resumed at step N draws exactly what an uninterrupted run draws there.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(
        self, trainer: pl.Trainer, task: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        torch.manual_seed(self.seed * 100_003 + trainer.global_step)
