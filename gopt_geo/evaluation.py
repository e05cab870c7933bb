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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.classes import IGNORE_INDEX, ClassScheme
from .errors import InputError


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


def evaluate_maps(
    prediction: str | Path,
    reference: str | Path,
    classes: ClassScheme | None = None,
    block_rows: int = 512,
    within: str | Path | None = None,
) -> Metrics:
    """Compare a predicted class map with a reference raster, on the prediction's grid.

    The reference is warped onto the prediction's grid with nearest-neighbour when the
    grids differ (a ``WarpedVRT``, read strip by strip, so memory stays flat). Pixels
    that are nodata in either raster, or the reference's ignore code, are skipped.
    Codes become class indices through the scheme embedded in the prediction (or
    ``classes``; WHU-OPT-SAR's by default). ``within``: a 0/1 raster on the
    prediction's grid (e.g. a cloud mask); only its non-zero pixels are scored.
    """
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    from .data.classes import WHU_OPT_SAR_CLASSES
    from .data.rasters import check_overlap, open_raster, same_grid, warp_onto
    from .inference.writers import read_class_scheme

    check_overlap(prediction, reference, "reference")
    with open_raster(prediction) as pred, open_raster(reference) as ref:
        scheme = classes or read_class_scheme(pred) or WHU_OPT_SAR_CLASSES
        lut = scheme.code_to_index_lut().astype(np.int64)
        src = (
            ref
            if same_grid(ref, pred)
            else warp_onto(ref, pred, Resampling.nearest, nodata=ref.nodata)
        )
        cm = np.zeros((scheme.num_classes, scheme.num_classes), dtype=np.int64)
        region = open_raster(within) if within is not None else None
        if region is not None and region.shape != pred.shape:
            region.close()
            raise InputError(f"{within}: mask is {region.shape}, prediction {pred.shape}")
        try:
            for row in range(0, pred.height, block_rows):
                win = Window(0, row, pred.width, min(block_rows, pred.height - row))
                p = pred.read(1, window=win)
                r = src.read(1, window=win)
                valid = np.ones(p.shape, dtype=bool)
                if pred.nodata is not None:
                    valid &= p != pred.nodata
                if ref.nodata is not None:
                    valid &= r != ref.nodata
                pi = lut[np.clip(p, 0, 255).astype(np.int64)]
                ri = lut[np.clip(r, 0, 255).astype(np.int64)]
                if region is not None:
                    valid &= region.read(1, window=win) != 0
                ri[~valid] = IGNORE_INDEX
                cm += confusion_matrix(ri, pi, scheme.num_classes)
        finally:
            if src is not ref:
                src.close()
            if region is not None:
                region.close()
    return metrics_from_confusion(cm, scheme.names)
