"""Quicklooks of samples: optical RGB, SAR and labels side by side (torchgeo's `plot`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from matplotlib import pyplot as plt
from matplotlib.colors import ListedColormap

from .bands import BandRouting
from .classes import IGNORE_INDEX, ClassScheme


def stretch(x: np.ndarray, lo: float = 2, hi: float = 98) -> np.ndarray:
    """Percentile stretch to [0, 1], ignoring NaN (nodata)."""
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return np.zeros_like(x)
    a, b = np.percentile(finite, [lo, hi])
    return np.nan_to_num(np.clip((x - a) / max(b - a, 1e-6), 0, 1))


def class_index_cmap(classes: ClassScheme) -> ListedColormap:
    """Colours of class indices 0..K-1 (for masks holding indices, not codes)."""
    return ListedColormap([np.array(c.color) / 255 for c in classes.classes])


def plot_sample(
    sample: dict[str, Any],
    routing: BandRouting,
    classes: ClassScheme,
    show_titles: bool = True,
    suptitle: str | None = None,
) -> Any:
    image = sample["image"]
    image = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    names = list(routing.all_bands)
    rgb = np.stack([stretch(image[names.index(b)]) for b in routing.rgb], axis=-1)
    panels: list[tuple[str, np.ndarray, dict[str, Any]]] = [("Optical (RGB)", rgb, {})]
    if routing.sar_bands:
        sar = image[names.index(routing.sar_bands[0])]
        panels.append((f"SAR {routing.sar_bands[0]}", stretch(sar), {"cmap": "gray"}))
    for key, title in (("mask", "Labels"), ("prediction", "Prediction")):
        if key in sample:
            m = sample[key]
            m = (m.numpy() if isinstance(m, torch.Tensor) else np.asarray(m)).astype(float)
            m[m == IGNORE_INDEX] = np.nan
            kw = {"cmap": class_index_cmap(classes), "vmin": 0, "vmax": classes.num_classes - 1}
            panels.append((title, m, kw))
    fig, axs = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4))
    for ax, (title, data, kw) in zip(np.atleast_1d(axs), panels, strict=True):
        ax.imshow(data, interpolation="nearest", **kw)
        ax.axis("off")
        if show_titles:
            ax.set_title(title)
    if suptitle:
        fig.suptitle(suptitle)
    return fig
