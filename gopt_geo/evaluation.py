"""Segmentation metrics from one confusion matrix.

Training, ``gopt-geo evaluate``, the demo and the benchmarks all use this module, so a
number means the same thing wherever it is printed. Definitions (rows = reference,
columns = prediction, ignored pixels never enter the matrix):

- OA: trace / total;
- AA: mean over classes of per-class recall (producer's accuracy);
- kappa: (OA - pe) / (1 - pe), pe = sum(row_total * col_total) / total^2;
- IoU_k: tp / (tp + fp + fn); mIoU: mean over classes present in reference or prediction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .data.classes import IGNORE_INDEX


def confusion_matrix(
    target: torch.Tensor | np.ndarray,
    prediction: torch.Tensor | np.ndarray,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """``num_classes`` x ``num_classes`` int64 counts; pixels with the ignore index are skipped."""
    t = torch.as_tensor(target).reshape(-1).long()
    p = torch.as_tensor(prediction).reshape(-1).long().to(t.device)
    keep = (t != ignore_index) & (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    idx = t[keep] * num_classes + p[keep]
    cm = torch.bincount(idx, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64)


@dataclass
class Metrics:
    """Scores derived from a confusion matrix; per-class lists follow class index order."""

    oa: float
    aa: float
    kappa: float
    miou: float
    iou: list[float]
    accuracy: list[float]
    pixels: int
    class_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"mIoU {100 * self.miou:.2f}  OA {100 * self.oa:.2f}  AA {100 * self.aa:.2f}  "
            f"kappa {self.kappa:.4f}  ({self.pixels:,} px)"
        )


def _nanmean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def metrics_from_confusion(cm: np.ndarray, class_names: list[str] | None = None) -> Metrics:
    """OA, AA, kappa, mIoU and per-class IoU/accuracy (NaN for classes absent everywhere)."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    tp = np.diag(cm)
    ref = cm.sum(1)
    pred = cm.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        oa = tp.sum() / total if total else float("nan")
        recall = np.where(ref > 0, tp / ref, np.nan)
        union = ref + pred - tp
        iou = np.where(union > 0, tp / union, np.nan)
        pe = (ref * pred).sum() / (total * total) if total else float("nan")
        kappa = (oa - pe) / (1 - pe) if total and pe != 1 else float("nan")
    return Metrics(
        oa=float(oa),
        aa=_nanmean(recall),
        kappa=float(kappa),
        miou=_nanmean(iou),
        iou=[float(v) for v in iou],
        accuracy=[float(v) for v in recall],
        pixels=int(total),
        class_names=list(class_names or []),
    )
