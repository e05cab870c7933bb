"""Training: a torchgeo task (Lightning module) for GoPT and the baselines, and `train()`.

The task is built on ``torchgeo.tasks.BaseTask``. What differs from torchgeo's own
segmentation task, and why:

- the optimiser gets the trainable tensors only (prompters, aux embedding, decoder), so
  a frozen backbone costs no optimiser state and cannot drift;
- Lightning checkpoints (for resuming) hold the trainable tensors only; the frozen
  backbone is rebuilt from its weights, as in the adapter file;
- inputs are split and normalised by the run's :class:`BandRouting`, the same code the
  predictor uses;
- a third of a frozen ViT's blocks are activation-checkpointed by default
  (``train.checkpoint_backbone``): with prompters between all its blocks, backward runs
  through every frozen block, and keeping their activations would cost nearly what full
  fine-tuning costs;
- validation metrics come from one confusion matrix (:mod:`gopt_geo.evaluation`), and
  the adapter file of the best validation epoch is written as training goes;
- the task takes the run's typed configs (``ModelConfig``, ``TrainConfig``), checked
  once when the config was read, and keeps them as plain dicts in its hyper-parameters:
  a checkpoint then holds tensors and plain values only, and every checkpoint load,
  Lightning's resume included, is ``weights_only`` (:mod:`gopt_geo.run_folder`, which
  also keeps one run per folder);
- ``train.class_weights: auto`` weighs the loss by the training labels' class shares
  (:mod:`gopt_geo.class_weights`), so rare classes are not traded away for common ones;
  the callbacks (adapter export, step seeds) are :mod:`gopt_geo.training_callbacks`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
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
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torchgeo.tasks import BaseTask

from . import __version__
from .class_weights import AUTO_WEIGHT_CAP, auto_class_weights, resolve_class_weights
from .config import RunConfig, TrainConfig, check_optical_scale
from .data.bands import BandRouting
from .data.classes import IGNORE_INDEX, ClassScheme
from .evaluation import confusion_matrix, metrics_from_confusion
from .io import (
    disk_errors,
    ensure_output_dir,
    resolve_device,
    strict_json,
    write_text_atomic,
)
from .models import ModelConfig, build_model
from .run_folder import (
    RESUME_CHECKPOINT,
    AtomicCheckpointIO,
    check_output,
    check_resume_matches,
    clear_run,
    finished,
    loggers_for,
    read_resume_checkpoint,
)
from .training_callbacks import AdapterExport, StepSeeds, record_last_epoch

__all__ = [
    "AUTO_WEIGHT_CAP",
    "AdapterExport",
    "GoPTTask",
    "StepSeeds",
    "TrainResult",
    "auto_class_weights",
    "record_last_epoch",
    "resolve_class_weights",
    "train",
]


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
    """Semantic segmentation of optical + SAR with a frozen backbone (or a baseline).

    Built from the run's typed configs: ``model`` (its ``num_classes`` and
    ``aux_channels`` those of ``classes`` and ``routing``) and ``train``, whose
    ``class_weights`` are resolved already (a list or None: :func:`resolve_class_weights`).
    Lightning's hyper-parameters hold the same as plain dicts (:meth:`hparams_of`),
    which a resumed run is compared against.
    """

    monitor = "val_miou"
    mode = "max"
    #: the typed configs are stored by ``__init__`` as plain dicts, not as objects:
    #: a checkpoint must hold nothing a weights-only load would refuse
    ignore = ("model", "train", "routing", "classes")

    def __init__(
        self,
        model: ModelConfig,
        train: TrainConfig,
        routing: BandRouting,
        classes: ClassScheme,
    ) -> None:
        if not (train.class_weights is None or isinstance(train.class_weights, list)):
            raise ValueError(
                f"GoPTTask: train.class_weights {train.class_weights!r} must be resolved "
                "to a list first (resolve_class_weights)"
            )
        self.model_config = model
        self.train_config = train
        self.routing = routing
        self.scheme = classes
        super().__init__()
        self.save_hyperparameters(self.hparams_of(model, train, routing, classes))
        self._confusion: dict[str, np.ndarray] = {}

    @staticmethod
    def hparams_of(
        model: ModelConfig, train: TrainConfig, routing: BandRouting, classes: ClassScheme
    ) -> dict[str, Any]:
        """The task's hyper-parameters: its configs as plain dicts."""
        return {
            "model": model.to_dict(),
            "train": dataclasses.asdict(train),
            "routing": routing.to_dict(),
            "classes": classes.to_dict(),
        }

    # -- torchgeo BaseTask hooks --------------------------------------------------------
    def configure_models(self) -> None:
        self.model = build_model(self.model_config)
        # only a training forward (grad enabled) checkpoints; validation is unaffected
        self.model.set_backbone_checkpointing(self.train_config.checkpoint_backbone)

    def configure_losses(self) -> None:
        weights = self.train_config.class_weights
        self.criterion = nn.CrossEntropyLoss(
            weight=torch.tensor(weights, dtype=torch.float32) if weights else None,
            ignore_index=IGNORE_INDEX,
        )

    def configure_optimizers(self) -> Any:
        params = self.model.trainable_parameters()
        optimizer = torch.optim.AdamW(
            params, lr=self.train_config.lr, weight_decay=self.train_config.weight_decay
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
        batch = random_flips(batch)
        out = self._forward(batch, with_target=True)
        ce = self.criterion(out.logits, out.labels(batch["mask"]))
        loss = ce
        weights = {
            "class_aware": self.train_config.class_aware_weight,
            "alignment": self.train_config.alignment_weight,
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


@dataclass
class TrainResult:
    """What a training run left behind; ``adapter`` is None when no validation ran (no
    adapter is written before the first validated epoch)."""

    output_dir: Path
    adapter: Path | None
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    #: the adapter's epoch: ``val`` (Metrics.to_dict), ``epoch``, ``step``; the last
    #: validated epoch: ``last_val``, ``last_epoch`` (also in metrics.json and the adapter)
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


def _process_rank(cfg: RunConfig) -> int:
    """Global rank as the launcher set it (torchrun RANK, Slurm SLURM_PROCID, Lightning's
    DDP launcher NODE_RANK/LOCAL_RANK; unset in the process that starts the others)."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env.get("SLURM_PROCID", "0"))
    return int(env.get("NODE_RANK", "0")) * cfg.train.devices + int(env.get("LOCAL_RANK", "0"))


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
        check_output(out, resume, overwrite)  # before the data is even read
    ckpt = read_resume_checkpoint(last) if resume else None
    accelerator = accelerator_for(cfg.train.device)
    scheme = cfg.class_scheme()
    dm = cfg.datamodule()
    dm.setup("fit")  # statistics first: the model's aux width and the adapter need them
    routing = dm.ensure_statistics()
    # a scale or offset that puts reflectance out of range (wrong by 10x, the classic
    # mistake) trains a model on nonsense without any error: say so, naming the band
    for problem in check_optical_scale(
        {b: routing.mean[b] for b in routing.optical_bands},
        cfg.data.optical_scale,
        cfg.data.optical_offset,
        physical=True,
    ):
        log(f"warning: {problem}")
    model_cfg = dataclasses.replace(
        cfg.model, num_classes=scheme.num_classes, aux_channels=routing.num_aux
    )
    weights = resolve_class_weights(cfg.train, scheme, dm.class_pixel_counts)
    train_cfg = dataclasses.replace(cfg.train, class_weights=weights)
    task = GoPTTask(model_cfg, train_cfg, routing, scheme)
    report = task.model.parameter_report()
    adapter_path = out / "adapter.safetensors"
    if ckpt is not None:
        check_resume_matches(last, ckpt, dict(task.hparams))
        dm.train_sampler.set_epoch(int(ckpt["epoch"]) + 1)  # type: ignore[union-attr]
        if finished(ckpt, cfg.train.epochs, cfg.train.max_steps):
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
        clear_run(out)
    if task.model.backbone is None:  # the per-pixel yardstick
        log(f"model: {model_cfg.variant} (no backbone)")
    else:
        log(f"model: {model_cfg.variant} on {model_cfg.backbone} ({model_cfg.weights} weights)")
    log(str(report))
    if cfg.train.class_weights == "auto" and weights is not None:
        pixels = int(dm.class_pixel_counts().sum())
        log(
            f"class weights (auto, from {pixels:,} labelled pixels of {cfg.data.stats_patches} "
            "training patches): "
            + ", ".join(f"{n} {w:.2f}" for n, w in zip(scheme.names, weights, strict=True))
        )

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
    checkpoint_io = AtomicCheckpointIO()
    export = AdapterExport(adapter_path, metadata, checkpoint_io)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        strategy=cfg.train.strategy,
        precision=precision_for(cfg.train.precision, accelerator),  # type: ignore[arg-type]
        max_epochs=cfg.train.epochs,
        max_steps=cfg.train.max_steps,
        logger=loggers_for(out, int(ckpt["epoch"]) if ckpt is not None else None),
        callbacks=[
            ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_miou", mode="max"),
            # last.ckpt after every validated epoch: Lightning's save_last saves it only in
            # an epoch that also saved a top-k checkpoint (2.6), so after an epoch that did
            # not improve, --resume would restart from an older epoch
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename=Path(RESUME_CHECKPOINT).stem,
                monitor=None,
                save_top_k=1,
                enable_version_counter=False,
            ),
            export,
            StepSeeds(cfg.seed),
            *callbacks,
        ],
        plugins=[checkpoint_io],
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
        with disk_errors(out):  # a full disk: one line naming the folder
            trainer.fit(
                task, datamodule=dm, ckpt_path=str(last) if resume else None, weights_only=True
            )
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
    # the adapter's epoch (val, epoch, step) and the last one (last_val, last_epoch)
    metrics = export.summary()
    if metrics and primary:
        write_text_atomic(out / "metrics.json", strict_json(metrics))
        if adapter_path.exists() and "last_val" in metrics:
            record_last_epoch(adapter_path, metrics)
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
