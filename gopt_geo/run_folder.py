"""A training run's folder: what it holds, one run per folder, the checkpoints that
resume it and the metrics history that survives a resume.

A run folder (``output_dir``) holds one run (:data:`RUN_FILES`): a new run refuses a
folder that holds one unless asked to resume or replace it, and every check happens
before the first write. Lightning's checkpoints are written under a temporary name and
renamed, and read back with torch's weights-only unpickler only
(:func:`gopt_geo.checkpoint.load_training_checkpoint`): run folders are copied and shared
like data, and opening one must never run code.

The adapter and the checkpoint of one epoch go together: the adapter an epoch exports is
staged (:meth:`AtomicCheckpointIO.stage`) and renamed into place only once that epoch's
``last.ckpt`` is saved, so a run that fails in between (a full disk, an interruption)
leaves the previous adapter beside the previous checkpoint, never an adapter that no
checkpoint can resume from.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.loggers import CSVLogger

from .checkpoint import load_training_checkpoint
from .errors import InputError
from .io import atomic_path, ensure_output_dir, remove_quietly, temporary_name
from .models import ModelConfig


def loggers_for(out: Path, resume_epoch: int | None = None) -> list[Any]:
    """Per-epoch metrics to ``metrics.csv``, and to TensorBoard when it is installed.

    Resuming after epoch ``resume_epoch``, the history up to that epoch is kept and the
    new rows are appended (Lightning's CSV writer would start the file afresh); rows of
    an epoch the interruption cut short are dropped, since that epoch is run again.
    """
    csv_logger = CSVLogger(save_dir=str(out), name="", version="")
    path = out / "metrics.csv"
    if resume_epoch is not None and path.exists():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("epoch") and int(r["epoch"]) <= resume_epoch]
        writer = csv_logger.experiment  # created now: it removes the old file
        with open(path, "w", newline="") as f:
            out_csv = csv.DictWriter(f, fieldnames=header)
            out_csv.writeheader()
            out_csv.writerows(rows)
        writer.metrics_keys = header  # appended rows then share the kept header
    loggers: list[Any] = [csv_logger]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return loggers
    from lightning.pytorch.loggers import TensorBoardLogger

    loggers.append(TensorBoardLogger(save_dir=str(out), name="tensorboard", version=""))
    return loggers


#: What a training run writes into its output folder (removed by ``overwrite=True``).
RUN_FILES = (
    "checkpoints",
    "adapter.safetensors",
    "metrics.csv",
    "metrics.json",
    "config.yaml",
    "hparams.yaml",
    "tensorboard",
)


def holds_a_run(out: Path) -> list[str]:
    return [name for name in RUN_FILES if (out / name).exists()]


def check_output(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to train into a folder that already holds a run, unless resuming it or
    asked to replace it; decided before anything is read or written."""
    if resume and overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: output_dir exists and is not a folder")
    found = holds_a_run(out)
    if found and not (resume or overwrite):
        raise InputError(
            f"{out}: already holds a training run ({', '.join(found)}); use --resume to "
            "continue it or --overwrite to replace it"
        )
    if resume and not (out / "checkpoints" / "last.ckpt").exists():
        raise InputError(
            f"{out / 'checkpoints' / 'last.ckpt'}: nothing to resume (no last checkpoint in {out})"
        )


def clear_run(out: Path) -> None:
    """Remove a previous run's files (``overwrite``), and nothing else in the folder."""
    for name in holds_a_run(out):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()


def read_resume_checkpoint(last: Path) -> dict[str, Any]:
    """Load the checkpoint a run resumes from, before the data is read or anything is
    written: crafted (code-running), unreadable, truncated or foreign checkpoints are
    one-line errors."""
    if not last.is_file():
        raise InputError(f"{last}: nothing to resume (no last checkpoint in {last.parent.parent})")
    ckpt = load_training_checkpoint(last)
    needed = ("state_dict", "epoch", "global_step", "hyper_parameters")
    if any(k not in ckpt for k in needed) or not isinstance(ckpt["hyper_parameters"], dict):
        raise InputError(f"{last}: not a gopt-geo training checkpoint")
    return ckpt


def check_resume_matches(last: Path, ckpt: dict[str, Any], task_hparams: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint written for another model, bands or classes."""
    saved = dict(ckpt["hyper_parameters"])
    try:  # model configs compared as configs: fields added since then take their defaults
        saved["model"] = ModelConfig.from_dict(saved.get("model") or {}).to_dict()
    except InputError:
        raise InputError(f"{last}: not a checkpoint of this gopt-geo's models") from None
    for key in ("model", "routing", "classes"):
        if saved.get(key) != task_hparams[key]:
            raise InputError(
                f"{last}: written for another run ({key} differs from this config's); "
                "resume with the config it was trained with"
            )


def finished(ckpt: dict[str, Any], epochs: int, max_steps: int) -> bool:
    """Whether the checkpoint's run already reached ``epochs`` (or ``max_steps`` > 0)."""
    if max_steps > 0 and int(ckpt["global_step"]) >= max_steps:
        return True
    return int(ckpt["epoch"]) + 1 >= epochs


#: The checkpoint a run resumes from; files staged beside it are committed once it is saved.
RESUME_CHECKPOINT = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written under a temporary name and renamed when complete,
    so an interruption while saving never leaves a truncated ``last.ckpt``; and read
    back with torch's weights-only unpickler, whatever Lightning asks for (its resume
    path, ``fit(ckpt_path=...)``, loads through here), so a crafted checkpoint cannot
    run code.

    Files that must not get ahead of the checkpoint (the adapter) are written to
    :meth:`stage`'s temporary name and committed when the next :data:`RESUME_CHECKPOINT`
    is saved; a failed save (a full disk is one line naming the folder,
    :func:`gopt_geo.io.disk_errors`) discards them, so the previous file stays.
    """

    def __init__(self) -> None:
        super().__init__()
        self._staged: dict[Path, Path] = {}  # final -> temporary

    def stage(self, final: str | os.PathLike[str]) -> Path:
        """A temporary path to write ``final`` to; it becomes ``final`` once the next
        resume checkpoint is saved (:meth:`commit_staged`). Staging ``final`` again
        replaces the earlier staged file."""
        final = Path(final)
        if final in self._staged:
            remove_quietly(self._staged[final])
        tmp = temporary_name(final)
        self._staged[final] = tmp
        return tmp

    def commit_staged(self) -> None:
        """Rename every staged file that was written into place."""
        staged, self._staged = self._staged, {}
        for final, tmp in staged.items():
            if tmp.exists():
                os.replace(tmp, final)

    def discard_staged(self) -> None:
        """Remove every staged file: the files they would replace stay as they were."""
        staged, self._staged = self._staged, {}
        for tmp in staged.values():
            remove_quietly(tmp)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_training_checkpoint(path)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        final = Path(path)
        try:
            ensure_output_dir(final.parent)
            with atomic_path(final) as tmp:  # a full disk: one line naming the folder
                super().save_checkpoint(checkpoint, tmp, storage_options)
        except BaseException:
            self.discard_staged()
            raise
        if final.name == RESUME_CHECKPOINT:
            self.commit_staged()
