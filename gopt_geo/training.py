"""Training: a torchgeo task (Lightning module) for GoPT and the baselines, and `train()`.

The task is built on ``torchgeo.tasks.BaseTask``. What differs from torchgeo's own
segmentation task, and why:

- the optimiser gets the trainable tensors only (prompters, aux embedding, decoder), so
  a frozen backbone costs no optimiser state and cannot drift;
- Lightning checkpoints (for resuming) hold the trainable tensors only; the frozen
  backbone is rebuilt from its weights, as in the adapter file;
- inputs are split and normalised by the run's :class:`BandRouting`, the same code the
  predictor uses;
- half of a frozen ViT's blocks are activation-checkpointed by default
  (``train.checkpoint_backbone``): with prompters between all its blocks, backward runs
  through every frozen block, and keeping their activations would cost nearly what full
  fine-tuning costs;
- validation metrics come from one confusion matrix (:mod:`gopt_geo.evaluation`), and
  the adapter file of the best validation epoch is written as training goes.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import yaml
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torchgeo.tasks import BaseTask

from . import __version__
from .checkpoint import save_adapter
from .config import RunConfig
from .data.bands import BandRouting
from .data.classes import IGNORE_INDEX, ClassScheme
from .data.datamodule import OpticalSarDataModule
from .errors import InputError
from .evaluation import Metrics, confusion_matrix, metrics_from_confusion
from .io import (
    atomic_path,
    ensure_output_dir,
    finite_or_none,
    resolve_device,
    strict_json,
    write_text_atomic,
)
from .models import ModelConfig, build_model


def random_flips(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each sample flipped left-right and/or up-down with probability 1/2, image and mask
    alike (land cover has no preferred orientation)."""
    image, mask = batch["image"], batch["mask"]
    n = image.shape[0]
    for dim in (-1, -2):
        flip = torch.rand(n, device=image.device) < 0.5
        image = torch.where(flip[:, None, None, None], image.flip(dim), image)
        mask = torch.where(flip[:, None, None], mask.flip(dim), mask)
    return {**batch, "image": image, "mask": mask}


class GoPTTask(BaseTask):
    """Semantic segmentation of optical + SAR with a frozen backbone (or a baseline)."""

    monitor = "val_miou"
    mode = "max"
    ignore = None

    def __init__(
        self,
        model: dict[str, Any],
        routing: dict[str, Any],
        classes: dict[str, Any],
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        class_weights: list[float] | None = None,
        class_aware_weight: float = 0.1,
        alignment_weight: float = 0.1,
        flips: bool = True,
        checkpoint_backbone: bool | str | float = "auto",
    ) -> None:
        self.routing = BandRouting.from_dict(routing)
        self.scheme = ClassScheme.from_dict(classes)
        super().__init__()
        self._confusion: dict[str, np.ndarray] = {}

    # -- torchgeo BaseTask hooks --------------------------------------------------------
    def configure_models(self) -> None:
        self.model = build_model(ModelConfig(**self.hparams["model"]))
        # only a training forward (grad enabled) checkpoints; validation is unaffected
        self.model.set_backbone_checkpointing(self.hparams.get("checkpoint_backbone", "auto"))

    def configure_losses(self) -> None:
        weights = self.hparams["class_weights"]
        self.criterion = nn.CrossEntropyLoss(
            weight=torch.tensor(weights, dtype=torch.float32) if weights else None,
            ignore_index=IGNORE_INDEX,
        )

    def configure_optimizers(self) -> Any:
        params = self.model.trainable_parameters()
        optimizer = torch.optim.AdamW(
            params, lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )
        trainer = self._trainer  # None outside fit (e.g. when inspecting the optimiser)
        if trainer is not None and trainer.max_steps and trainer.max_steps > 0:
            total = trainer.max_steps
        elif trainer is not None:
            total = max(1, int(trainer.estimated_stepping_batches))
        else:
            total = 1000
        warmup = max(1, total // 10)

        def schedule(step: int) -> float:
            # linear warm-up, then cosine decay; a lambda (not OneCycleLR) so that a run
            # resumed with more epochs recomputes its horizon instead of overrunning it
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # -- steps --------------------------------------------------------------------------
    def _forward(self, batch: dict[str, torch.Tensor], with_target: bool) -> Any:
        rgb, aux = self.routing.prepare(batch["image"])
        return self.model(rgb, aux, target=batch["mask"] if with_target else None)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # schedules (e.g. the annealed Gumbel noise of hard assignment) follow training progress
        self.model.set_progress(self.global_step / max(1, self.trainer.estimated_stepping_batches))
        if self.hparams["flips"]:
            batch = random_flips(batch)
        out = self._forward(batch, with_target=True)
        ce = self.criterion(out.logits, batch["mask"])
        loss = ce
        weights = {
            "class_aware": self.hparams["class_aware_weight"],
            "alignment": self.hparams["alignment_weight"],
        }
        for name, value in out.losses.items():
            w = weights.get(name, 0.0)
            if w:
                loss = loss + w * value
            self.log(f"train_{name}_loss", value, batch_size=batch["image"].shape[0])
        bs = batch["image"].shape[0]
        self.log("train_ce", ce, batch_size=bs)
        self.log("train_loss", loss, prog_bar=True, batch_size=bs)
        return loss

    def _accumulate(self, split: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self._forward(batch, with_target=False)
        loss = self.criterion(out.logits, batch["mask"])
        pred = out.logits.argmax(1)
        cm = confusion_matrix(batch["mask"], pred, self.scheme.num_classes)
        self._confusion[split] = self._confusion.get(split, 0) + cm
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss = self._accumulate("val", batch)
        if torch.isfinite(loss):
            self.log("val_loss", loss, batch_size=batch["image"].shape[0])

    def _log_metrics(self, split: str) -> None:
        cm = self._confusion.pop(split, None)
        if cm is None:
            return
        cm = self.all_gather(torch.as_tensor(cm)).reshape(-1, *cm.shape).sum(0).cpu().numpy()
        m = metrics_from_confusion(cm, self.scheme.names)
        self.last_metrics = {**getattr(self, "last_metrics", {}), split: m}
        for key in ("miou", "oa", "aa", "kappa"):
            self.log(f"{split}_{key}", getattr(m, key), prog_bar=key == "miou", sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    # -- checkpoints: trainable tensors only ---------------------------------------------
    def _trainable_keys(self) -> set[str]:
        return {f"model.{k}" for k in self.model.trainable_state_dict()}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self._trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        full = self.state_dict()
        full.update(checkpoint["state_dict"])
        checkpoint["state_dict"] = full


class AdapterExport(Callback):
    """Writes the adapter file whenever the validation mIoU improves.

    The best score so far is part of the checkpoint (``state_dict``), so a resumed run
    replaces the adapter only with a better epoch than any before the interruption.
    """

    def __init__(self, path: Path, metadata: dict[str, Any]) -> None:
        self.path = path
        self.metadata = metadata
        self.best = -float("inf")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = float(state_dict.get("best", -float("inf")))

    def on_validation_end(self, trainer: pl.Trainer, task: GoPTTask) -> None:
        if trainer.sanity_checking or "val" not in getattr(task, "last_metrics", {}):
            return
        m: Metrics = task.last_metrics["val"]
        score = m.miou if np.isfinite(m.miou) else -1.0
        if score <= self.best or trainer.global_rank != 0:
            return
        self.best = score
        meta = dict(self.metadata)
        meta["metrics"] = {
            "val": finite_or_none(m.to_dict()),
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
        }
        save_adapter(self.path, task.model, meta)


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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written under a temporary name and renamed when complete,
    so an interruption while saving never leaves a truncated ``last.ckpt``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        final = Path(path)
        ensure_output_dir(final.parent)
        with atomic_path(final) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


@dataclass
class TrainResult:
    """What a training run left behind; ``adapter`` is None when no validation ran (no
    adapter is written before the first validated epoch)."""

    output_dir: Path
    adapter: Path | None
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    metrics: dict[str, Any]
    parameters: str
    seconds: float
    finished_before: bool = False  # a resumed run that had already finished


def accelerator_for(device: str) -> str:
    """Lightning's accelerator name for ``--device`` (checked by :func:`resolve_device`)."""
    return "gpu" if resolve_device(device).type == "cuda" else "cpu"


def precision_for(precision: str, accelerator: str) -> str:
    if precision != "auto":
        return precision
    if accelerator == "gpu":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def quiet_lightning() -> None:
    """Keep Lightning's banner lines (accelerator info, tips) and the expected warning
    about the frozen backbone's eval-mode modules out of the user's console."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* exists.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


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


def _holds_a_run(out: Path) -> list[str]:
    return [name for name in RUN_FILES if (out / name).exists()]


def _process_rank(cfg: RunConfig) -> int:
    """Global rank as the launcher set it (torchrun RANK, Slurm SLURM_PROCID, Lightning's
    DDP launcher NODE_RANK/LOCAL_RANK; unset in the process that starts the others)."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env.get("SLURM_PROCID", "0"))
    return int(env.get("NODE_RANK", "0")) * cfg.train.devices + int(env.get("LOCAL_RANK", "0"))


def _check_output(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to train into a folder that already holds a run, unless resuming it or
    asked to replace it; decided before anything is read or written."""
    if resume and overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: output_dir exists and is not a folder")
    found = _holds_a_run(out)
    if found and not (resume or overwrite):
        raise InputError(
            f"{out}: already holds a training run ({', '.join(found)}); use --resume to "
            "continue it or --overwrite to replace it"
        )
    if resume and not (out / "checkpoints" / "last.ckpt").exists():
        raise InputError(
            f"{out / 'checkpoints' / 'last.ckpt'}: nothing to resume (no last checkpoint in {out})"
        )


def _clear_run(out: Path) -> None:
    """Remove a previous run's files (``overwrite``), and nothing else in the folder."""
    for name in _holds_a_run(out):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()


def _read_resume_checkpoint(last: Path, task_hparams: dict[str, Any]) -> dict[str, Any]:
    """Load and check the checkpoint a run resumes from, before anything is written:
    unreadable, truncated or foreign checkpoints are one-line errors."""
    if not last.is_file():
        raise InputError(f"{last}: nothing to resume (no last checkpoint in {last.parent.parent})")
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated, corrupt or not a torch file at all
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{last}: not a readable checkpoint ({reason})") from None
    needed = ("state_dict", "epoch", "global_step", "hyper_parameters")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in needed):
        raise InputError(f"{last}: not a gopt-geo training checkpoint")
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
    return ckpt


def _finished(ckpt: dict[str, Any], cfg: RunConfig) -> bool:
    """Whether the checkpoint's run already reached the configured epochs or steps."""
    done_epochs = int(ckpt["epoch"]) + 1
    if cfg.train.max_steps > 0 and int(ckpt["global_step"]) >= cfg.train.max_steps:
        return True
    return done_epochs >= cfg.train.epochs


def train(
    cfg: RunConfig,
    resume: bool = False,
    log: Any = print,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train the configured model; returns where the adapter and checkpoints are.

    A run folder holds one run: ``resume`` continues it exactly where its last
    checkpoint stopped (written at the end of every epoch), ``overwrite`` replaces it,
    and without either a folder that holds a run is refused. Every check happens before
    the first write, so a refused call leaves the folder as it was. ``callbacks`` are
    extra Lightning callbacks (e.g. early stopping).
    """
    quiet_lightning()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    # Under DDP every process runs train(); only the first checks, clears and writes the
    # run folder (the others start after it wrote config.yaml, which they must not refuse)
    primary = _process_rank(cfg) == 0
    if primary:
        _check_output(out, resume, overwrite)  # before the data is even read
    accelerator = accelerator_for(cfg.train.device)
    scheme = cfg.class_scheme()
    dm = OpticalSarDataModule.from_config(cfg)
    dm.setup("fit")  # statistics first: the model's aux width and the adapter need them
    routing = dm.ensure_statistics()
    model_cfg = dataclasses.replace(
        cfg.model, num_classes=scheme.num_classes, aux_channels=routing.num_aux
    )
    task = GoPTTask(
        model=dataclasses.asdict(model_cfg),
        routing=routing.to_dict(),
        classes=scheme.to_dict(),
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        class_weights=cfg.train.class_weights,
        class_aware_weight=cfg.train.class_aware_weight,
        alignment_weight=cfg.train.alignment_weight,
        checkpoint_backbone=cfg.train.checkpoint_backbone,
    )
    report = task.model.parameter_report()
    adapter_path = out / "adapter.safetensors"
    if resume:
        ckpt = _read_resume_checkpoint(last, dict(task.hparams))
        dm.train_sampler.set_epoch(int(ckpt["epoch"]) + 1)  # type: ignore[union-attr]
        if _finished(ckpt, cfg):
            log(
                f"{out}: this run already finished (epoch {int(ckpt['epoch']) + 1} of "
                f"{cfg.train.epochs}, step {int(ckpt['global_step'])}); nothing to do "
                "(raise train.epochs to train further)"
            )
            return TrainResult(
                out,
                adapter_path if adapter_path.exists() else None,
                None,
                last,
                {},
                str(report),
                0.0,
                finished_before=True,
            )
    elif overwrite and primary:
        _clear_run(out)
    log(f"model: {model_cfg.variant} on {model_cfg.backbone} ({model_cfg.weights} weights)")
    log(str(report))

    ensure_output_dir(out)
    if primary:
        write_text_atomic(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    metadata = {
        "routing": routing.to_dict(),
        "classes": scheme.to_dict(),
        "training": {
            "config": cfg.to_dict(),
            "data_root": str(Path(cfg.data.root).resolve()),
            "dataset": cfg.data.dataset,
            "train_scenes": dm.split_dataset("train").scene_names,
            "val_scenes": dm.split_dataset("val").scene_names,
            "gopt_geo_version": __version__,
        },
    }
    export = AdapterExport(adapter_path, metadata)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        strategy=cfg.train.strategy,
        precision=precision_for(cfg.train.precision, accelerator),  # type: ignore[arg-type]
        max_epochs=cfg.train.epochs,
        max_steps=cfg.train.max_steps,
        logger=loggers_for(out, int(ckpt["epoch"]) if resume else None),
        callbacks=[
            ModelCheckpoint(
                dirpath=ckpt_dir, filename="best", monitor="val_miou", mode="max", save_last=True
            ),
            export,
            StepSeeds(cfg.seed),
            *callbacks,
        ],
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=cfg.train.log_every_n_steps,
        enable_progress_bar=cfg.train.progress,
        enable_model_summary=False,
        deterministic=accelerator == "cpu",
        num_sanity_val_steps=0,
        default_root_dir=str(out),
    )
    start = time.perf_counter()
    main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        trainer.fit(task, datamodule=dm, ckpt_path=str(last) if resume else None)
    except SystemExit:
        # Lightning answers Ctrl-C with a graceful stop and sys.exit(1); an interruption
        # it is, and the CLI reports it as one (exit 130) instead of a silent status
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        # Lightning ignores Ctrl-C for good after an interruption; the caller (a notebook,
        # a test process) gets its handler back
        if main_thread and sigint is not None:
            signal.signal(signal.SIGINT, sigint)
    seconds = time.perf_counter() - start
    metrics = {k: v.to_dict() for k, v in getattr(task, "last_metrics", {}).items()}
    if metrics and primary:
        write_text_atomic(out / "metrics.json", strict_json(metrics))
    best = (
        Path(trainer.checkpoint_callback.best_model_path) if trainer.checkpoint_callback else None
    )
    return TrainResult(
        out,
        adapter_path if adapter_path.exists() else None,
        best if best and best.name else None,
        last if last.exists() else None,
        metrics,
        str(report),
        seconds,
    )
