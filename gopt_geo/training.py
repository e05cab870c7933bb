"""Training: a torchgeo task (Lightning module) for GoPT and the baselines, and `train()`.

The task is built on ``torchgeo.tasks.BaseTask``. What differs from torchgeo's own
segmentation task, and why:

- the optimiser gets the trainable tensors only (prompters, aux embedding, decoder), so
  a frozen backbone costs no optimiser state and cannot drift;
- Lightning checkpoints (for resuming) hold the trainable tensors only; the frozen
  backbone is rebuilt from its weights, as in the adapter file;
- inputs are split and normalised by the run's :class:`BandRouting`, the same code the
  predictor uses;
- validation metrics come from one confusion matrix (:mod:`gopt_geo.evaluation`), and
  the adapter file of the best validation epoch is written as training goes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torchgeo.tasks import BaseTask

from . import __version__
from .checkpoint import save_adapter
from .config import RunConfig
from .data.bands import BandRouting
from .data.classes import IGNORE_INDEX, WHU_OPT_SAR_CLASSES, ClassScheme
from .data.datamodule import OpticalSarDataModule
from .errors import InputError
from .evaluation import Metrics, confusion_matrix, metrics_from_confusion
from .models import ModelConfig, build_model

CLASS_SCHEMES = {"whu_opt_sar": WHU_OPT_SAR_CLASSES}


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
    ) -> None:
        self.routing = BandRouting.from_dict(routing)
        self.scheme = ClassScheme.from_dict(classes)
        super().__init__()
        self._confusion: dict[str, np.ndarray] = {}

    # -- torchgeo BaseTask hooks --------------------------------------------------------
    def configure_models(self) -> None:
        self.model = build_model(ModelConfig(**self.hparams["model"]))

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

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._accumulate("test", batch)

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

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

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
    """Writes the adapter file whenever the validation mIoU improves."""

    def __init__(self, path: Path, metadata: dict[str, Any]) -> None:
        self.path = path
        self.metadata = metadata
        self.best = -float("inf")

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
            "val": m.to_dict(),
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
        }
        save_adapter(self.path, task.model, meta)


@dataclass
class TrainResult:
    """What a training run left behind."""

    output_dir: Path
    adapter: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    metrics: dict[str, Any]
    parameters: str
    seconds: float


def scheme_for(cfg: RunConfig) -> ClassScheme:
    if cfg.data.classes not in CLASS_SCHEMES:
        raise InputError(f"data.classes: unknown class scheme {cfg.data.classes!r}")
    return CLASS_SCHEMES[cfg.data.classes]


def routing_for(cfg: RunConfig) -> BandRouting:
    d = cfg.data
    try:
        return BandRouting(
            tuple(d.optical_bands),
            tuple(d.sar_bands),
            tuple(d.rgb_bands),
            tuple(d.aux_bands) if d.aux_bands is not None else None,
            d.sar_units,
        )
    except ValueError as err:
        raise InputError(f"data: {err}") from None


def datamodule_for(cfg: RunConfig, routing: BandRouting | None = None) -> OpticalSarDataModule:
    root = Path(cfg.data.root)
    if not root.exists():
        raise InputError(f"{root}: data root not found (data.root)")
    return OpticalSarDataModule(
        root,
        dataset=cfg.data.dataset,
        routing=routing or routing_for(cfg),
        classes=scheme_for(cfg),
        scenes=cfg.data.scenes,
        batch_size=cfg.data.batch_size,
        patch_size=cfg.data.patch_size,
        length=cfg.data.train_patches,
        num_workers=cfg.data.num_workers,
        stats_patches=cfg.data.stats_patches,
        seed=cfg.seed,
        split_rows=cfg.data.split_rows,
    )


def accelerator_for(device: str) -> str:
    if device not in ("auto", "cpu", "cuda", "gpu"):
        raise InputError(f"--device {device!r}: expected auto, cpu or cuda")
    if device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return "gpu" if device in ("cuda", "gpu") else "cpu"


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


def loggers_for(out: Path) -> list[Any]:
    """Per-epoch metrics to ``metrics.csv``, and to TensorBoard when it is installed."""
    loggers: list[Any] = [CSVLogger(save_dir=str(out), name="", version="")]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return loggers
    from lightning.pytorch.loggers import TensorBoardLogger

    loggers.append(TensorBoardLogger(save_dir=str(out), name="tensorboard", version=""))
    return loggers


def train(cfg: RunConfig, resume: bool = False, log: Any = print) -> TrainResult:
    """Train the configured model; returns where the adapter and checkpoints are."""
    quiet_lightning()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume and not last.exists():
        raise InputError(f"{last}: nothing to resume (no last checkpoint in {out})")
    scheme = scheme_for(cfg)
    dm = datamodule_for(cfg)
    dm.setup("fit")
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
    )
    report = task.model.parameter_report()
    log(f"model: {model_cfg.variant} on {model_cfg.backbone} ({model_cfg.weights} weights)")
    log(str(report))

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    metadata = {
        "routing": routing.to_dict(),
        "classes": scheme.to_dict(),
        "training": {
            "config": cfg.to_dict(),
            "data_root": str(Path(cfg.data.root).resolve()),
            "dataset": cfg.data.dataset,
            "train_scenes": dm.train_dataset.scene_names,  # type: ignore[union-attr]
            "val_scenes": dm.split_dataset("val").scene_names,
            "gopt_geo_version": __version__,
        },
    }
    adapter_path = out / "adapter.safetensors"
    accelerator = accelerator_for(cfg.train.device)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        strategy=cfg.train.strategy,
        precision=precision_for(cfg.train.precision, accelerator),  # type: ignore[arg-type]
        max_epochs=cfg.train.epochs,
        max_steps=cfg.train.max_steps,
        logger=loggers_for(out),
        callbacks=[
            ModelCheckpoint(
                dirpath=ckpt_dir, filename="best", monitor="val_miou", mode="max", save_last=True
            ),
            AdapterExport(adapter_path, metadata),
        ],
        log_every_n_steps=cfg.train.log_every_n_steps,
        enable_progress_bar=cfg.train.progress,
        enable_model_summary=False,
        deterministic=accelerator == "cpu",
        num_sanity_val_steps=0,
        default_root_dir=str(out),
    )
    start = time.perf_counter()
    trainer.fit(task, datamodule=dm, ckpt_path=str(last) if resume else None)
    seconds = time.perf_counter() - start
    metrics = {k: v.to_dict() for k, v in getattr(task, "last_metrics", {}).items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    best = (
        Path(trainer.checkpoint_callback.best_model_path) if trainer.checkpoint_callback else None
    )
    return TrainResult(
        out,
        adapter_path,
        best if best and best.name else None,
        last if last.exists() else None,
        metrics,
        str(report),
        seconds,
    )


def evaluate_model(
    adapter: str | Path,
    cfg: RunConfig,
    split: str = "test",
    device: str = "auto",
    progress: bool = True,
) -> Metrics:
    """Metrics of an adapter on a split of the configured data (gridded patches).

    The adapter's routing (bands, statistics) is used, not the config's: the model must
    see its inputs exactly as in training.
    """
    from torch.utils.data import DataLoader
    from torchgeo.datasets.utils import stack_samples
    from torchgeo.samplers import GriddedPatchSampler
    from tqdm import tqdm

    from .checkpoint import load_adapter

    if split not in ("train", "val", "test"):
        raise InputError(f"--split {split!r}: expected train, val or test")
    dev = torch.device("cuda" if accelerator_for(device) == "gpu" else "cpu")
    model, meta = load_adapter(adapter, map_location=dev)
    dm = datamodule_for(cfg, routing=meta.routing)
    ds = dm.split_dataset(split)
    loader = DataLoader(
        ds,
        batch_size=cfg.data.batch_size,
        sampler=GriddedPatchSampler(ds, size=cfg.data.patch_size),
        collate_fn=stack_samples,
        num_workers=cfg.data.num_workers,
    )
    cm = np.zeros((meta.classes.num_classes,) * 2, dtype=np.int64)
    model.eval()
    with torch.inference_mode():
        for batch in tqdm(loader, desc=f"evaluate {split}", disable=not progress, unit="batch"):
            rgb, aux = meta.routing.prepare(batch["image"].to(dev))
            pred = model(rgb, aux).logits.argmax(1)
            cm += confusion_matrix(batch["mask"], pred.cpu(), meta.classes.num_classes)
    return metrics_from_confusion(cm, meta.classes.names)
