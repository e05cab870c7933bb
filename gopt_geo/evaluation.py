"""Segmentation metrics from one confusion matrix.

Training, ``gopt-geo evaluate``, the demo and the benchmarks all use this module, so a
number means the same thing wherever it is printed. Definitions (rows = reference,
columns = prediction, ignored pixels never enter the matrix):

- OA: trace / total;
- AA: mean over classes of per-class recall (producer's accuracy);
- kappa: (OA - pe) / (1 - pe), pe = sum(row_total * col_total) / total^2;
- IoU_k: tp / (tp + fp + fn); mIoU: mean over classes present in reference or prediction.

A class that appears in neither the reference nor the prediction is *absent*: it has no
IoU or accuracy (``None`` in JSON, listed in ``absent``) and is left out of every mean.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .data.classes import IGNORE_INDEX, ClassScheme
from .errors import InputError
from .io import finite_or_none

if TYPE_CHECKING:
    from .config import RunConfig


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
    absent: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-ready: values that do not exist (absent classes, no pixels) are None."""
        return finite_or_none(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Metrics:
        def num(v: Any) -> float:
            return float("nan") if v is None else float(v)

        return cls(
            oa=num(d["oa"]),
            aa=num(d["aa"]),
            kappa=num(d["kappa"]),
            miou=num(d["miou"]),
            iou=[num(v) for v in d["iou"]],
            accuracy=[num(v) for v in d["accuracy"]],
            pixels=int(d["pixels"]),
            class_names=list(d.get("class_names", [])),
            absent=list(d.get("absent", [])),
        )

    def summary(self) -> str:
        def pct(v: float) -> str:
            return f"{100 * v:.2f}" if np.isfinite(v) else "n/a"

        kappa = f"{self.kappa:.4f}" if np.isfinite(self.kappa) else "n/a"
        text = (
            f"mIoU {pct(self.miou)}  OA {pct(self.oa)}  AA {pct(self.aa)}  "
            f"kappa {kappa}  ({self.pixels:,} px)"
        )
        if self.absent:
            text += f"; absent from the data, left out of the means: {', '.join(self.absent)}"
        return text


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
    names = list(class_names or [])
    gone = np.flatnonzero((ref == 0) & (pred == 0))
    return Metrics(
        oa=float(oa),
        aa=_nanmean(recall),
        kappa=float(kappa),
        miou=_nanmean(iou),
        iou=[float(v) for v in iou],
        accuracy=[float(v) for v in recall],
        pixels=int(total),
        class_names=names,
        absent=[names[i] if i < len(names) else str(i) for i in gone],
    )


#: A part of a map to score: rows [r0, r1) and columns [c0, c1) in pixel coordinates
#: (fractional allowed); a pixel counts when its centre lies inside.
PixelBox = tuple[float, float, float, float]


def evaluate_maps(
    prediction: str | Path,
    reference: str | Path,
    classes: ClassScheme | None = None,
    block_rows: int = 512,
    within: str | Path | None = None,
    region: list[PixelBox] | None = None,
) -> Metrics:
    """Compare a predicted class map with a reference raster, on the prediction's grid.

    The reference is warped onto the prediction's grid with nearest-neighbour when the
    grids differ (a ``WarpedVRT``, read strip by strip, so memory stays flat). Pixels
    that are nodata in either raster, or the reference's ignore code, are skipped.
    Codes become class indices through ``classes``, or the scheme embedded in the
    prediction; a map with neither is refused. ``within``: a 0/1 raster on the
    prediction's grid (e.g. a cloud mask); only its non-zero pixels are scored.
    ``region``: only pixels inside these boxes are scored (a split's band of rows,
    :func:`split_region`). Codes map to classes as they are, whatever integers they are
    (-1 in an int16 reference is ignored, never clamped onto a class's code).
    """
    from .data.classes import scheme_from_tags
    from .io import check_overlap, open_raster
    from .outputs.aligned import AlignedRaster, read_with_mask, strips

    check_overlap(prediction, reference, "reference")
    with open_raster(prediction) as pred, AlignedRaster(reference, pred, "reference") as ref:
        scheme = classes or scheme_from_tags(pred.tags())
        if scheme is None:
            raise InputError(
                f"{prediction}: the map carries no gopt-geo class scheme; give the scheme "
                "(--classes: a built-in scheme name or a class file)"
            )
        cm = np.zeros((scheme.num_classes, scheme.num_classes), dtype=np.int64)
        mask = open_raster(within) if within is not None else None
        if mask is not None and mask.shape != pred.shape:
            mask.close()
            raise InputError(f"{within}: mask is {mask.shape}, prediction {pred.shape}")
        try:
            for _, win in strips(pred.height, pred.width, block_rows):
                p, valid = read_with_mask(pred, win, prediction)
                r, ref_valid = ref.read(win)
                valid &= ref_valid
                pi = scheme.code_indices(p)
                ri = scheme.code_indices(r)
                if mask is not None:
                    valid &= mask.read(1, window=win) != 0
                if region is not None:
                    valid &= _inside(region, win)
                ri[~valid] = IGNORE_INDEX
                cm += confusion_matrix(ri, pi, scheme.num_classes)
        finally:
            if mask is not None:
                mask.close()
    if cm.sum() == 0:
        raise InputError(
            f"{prediction}: no pixel to score against {reference} (no valid pixel in common, "
            "or the two share no class code)"
        )
    return metrics_from_confusion(cm, scheme.names)


def _inside(region: list[PixelBox], window: Any) -> np.ndarray:
    """Pixels of ``window`` whose centres lie inside one of the ``region`` boxes."""
    rows = window.row_off + np.arange(window.height) + 0.5
    cols = window.col_off + np.arange(window.width) + 0.5
    keep = np.zeros((window.height, window.width), dtype=bool)
    for r0, r1, c0, c1 in region:
        keep |= ((rows > r0) & (rows < r1))[:, None] & ((cols > c0) & (cols < c1))[None, :]
    return keep


@dataclass
class SplitRegion:
    """Where a map of one of a config's scenes belongs to a split: ``boxes`` in the
    map's pixel coordinates (None: the whole map, a scene of a whole-scene split)."""

    scene: str
    split: str
    boxes: list[PixelBox] | None
    description: str


def split_region(cfg: RunConfig, split: str, prediction: str | Path) -> SplitRegion:
    """The part of ``prediction`` (a map of one of ``cfg``'s scenes, on its optical
    grid) that belongs to ``split``: the split's band of rows (``data.split_rows``),
    exactly as training and ``evaluate --model`` draw it, or the whole map when its
    scene is one of the split's scenes. A map of a scene outside the split, or on no
    scene's grid, is refused in one line."""
    from .data.scenes import SPLITS
    from .io import open_raster, same_grid

    if split not in SPLITS:
        raise InputError(f"--split {split!r}: expected train, val or test")
    folder = Path(cfg.data.root) / "optical"
    with open_raster(prediction) as pred:
        matches = []
        for path in sorted(folder.glob("*.tif")):
            with open_raster(path) as src:
                if same_grid(src, pred):
                    matches.append(path.stem)
        transform, crs = pred.transform, pred.crs
    if len(matches) > 1:  # scenes on one grid: the map's name says which (S_classes.tif)
        named = [m for m in matches if Path(prediction).stem.startswith(m)]
        matches = named[-1:] if named else matches
    if len(matches) != 1:
        raise InputError(
            f"{prediction}: the map is on "
            + ("the grid of none" if not matches else f"the grids of several ({matches})")
            + f" of the scenes in {folder} (data.root); --split scores a map of one of them"
        )
    scene = matches[0]
    extent = cfg.datamodule().split_extent(split)
    if scene not in extent.scenes:
        raise InputError(
            f"{prediction}: scene {scene} is not in the {split} split ({extent.scenes})"
        )
    boxes = extent.boxes
    if boxes is None:
        return SplitRegion(scene, split, None, f"the whole scene {scene} ({split} split)")
    if crs is None:  # pixel grid: each scene at its own offset (data/rasters.py)
        xoff, yoff = extent.pixel_grid_offsets.get(scene, (0.0, 0.0))

        def to_pixels(x: float, y: float) -> tuple[float, float]:
            return x - xoff, yoff - y
    else:
        inverse = ~transform

        def to_pixels(x: float, y: float) -> tuple[float, float]:
            return inverse @ (x, y)  # type: ignore[return-value]

    pixel_boxes = []
    for x0, y0, x1, y1 in boxes:
        (ca, ra), (cb, rb) = to_pixels(x0, y1), to_pixels(x1, y0)
        pixel_boxes.append((min(ra, rb), max(ra, rb), min(ca, cb), max(ca, cb)))
    rows = ", ".join(f"rows {round(b[0])}..{round(b[1])}" for b in pixel_boxes)
    return SplitRegion(scene, split, pixel_boxes, f"the {split} band of {scene} ({rows})")


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
    from .io import resolve_device

    if split not in ("train", "val", "test"):
        raise InputError(f"--split {split!r}: expected train, val or test")
    dev = resolve_device(device)
    model, meta = load_adapter(adapter, map_location=dev)
    dm = cfg.datamodule(routing=meta.routing)
    ds = dm.split_dataset(split)
    loader = DataLoader(
        ds,
        batch_size=cfg.data.batch_size,
        sampler=GriddedPatchSampler(ds, size=cfg.data.patch_size),
        collate_fn=stack_samples,
        num_workers=cfg.loader_workers(),
    )
    cm = np.zeros((meta.classes.num_classes,) * 2, dtype=np.int64)
    model.eval()
    with torch.inference_mode():
        for batch in tqdm(loader, desc=f"evaluate {split}", disable=not progress, unit="batch"):
            rgb, aux = meta.routing.prepare(batch["image"].to(dev))
            pred = model(rgb, aux).logits.argmax(1)
            cm += confusion_matrix(batch["mask"], pred.cpu(), meta.classes.num_classes)
    return metrics_from_confusion(cm, meta.classes.names)
