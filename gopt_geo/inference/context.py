"""Scene-level context for window-independent maps (``model.cup_context: scene``).

GoPT's CUP groups the auxiliary tokens of its input around class tokens and averages
each group: two quantities that depend on the whole input. Predicting a scene window by
window, each window groups around its own statistics, so a pixel's class can depend on
which window it was predicted in. With ``cup_context: scene`` the scene is read once at
low resolution (at most ``model.config.context_size`` pixels on its longer side; the
full resolution when the scene is smaller), the model computes CUP's class tokens and
grouped prompts from it (`GoPTSegmenter.scene_context`), and every window of the scene
then uses those: the prediction at a pixel depends only on the pixels in the backbone's
receptive field. That receptive field remains: on EfficientNet-Lite0 at window 128 the
frozen backbone alone agrees with a whole-scene pass on 85 % of the pixels, GoPT on
91-93 % with per-window groups and 94-95 % with scene groups (RESULTS.md, paper
ablations), so the window size and overlap matter more than this switch. What closes
the gap is the tiling's margin (``PredictOptions.margin``, :mod:`.tiling`): each window
read with real pixels around it instead of zero padding. On the demo model at window
128 a 64-pixel margin gives 99.1 % with per-window groups and 99.6 % with scene groups
(benchmarks/window_independence.py); the two work together, the margin for the
receptive field, this switch for CUP's groups.

The predictor calls :func:`scene_context` once per scene, before the first window, and
passes the result to ``model(rgb, aux, context=...)`` for every batch of windows.
Models without a scene context (baselines, ``cup_context: window``) get None and are
called as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.windows import Window
from torch import nn

from ..data.bands import BandRouting
from ..errors import InputError
from ..io import rasterio_reason
from .reader import SceneReader


def overview_shape(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The scene's size scaled down so that its longer side is at most ``max_side``
    (never scaled up)."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def read_overview(reader: SceneReader, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole scene as ``reader.read`` would give it, at ``height`` x ``width`` pixels:
    image float32 [C, h, w] (optical then SAR) and validity bool [h, w].

    At full size this is ``reader.read`` of one window covering the scene. Smaller, the
    bands are read decimated (average resampling; GDAL uses overviews where the file has
    them) and the masks by nearest neighbour, through the reader's own datasets (the SAR
    through its WarpedVRT), with the same validity rules as ``SceneReader.read``.
    """
    grid = reader.grid
    if (height, width) == (grid.height, grid.width):
        return reader.read(Window(0, 0, width, height))
    # The reader's datasets are private to it; this is the one place outside reader.py
    # that reads them (a SceneReader.read_overview method would be their natural home).
    routing = reader.routing
    n_opt = len(routing.optical_bands)
    try:
        optical = reader._opt.read(
            indexes=list(range(1, n_opt + 1)),
            out_shape=(n_opt, height, width),
            resampling=Resampling.average,
            out_dtype="float32",
        )
        valid = reader._opt.dataset_mask(out_shape=(height, width)) > 0
        parts = [optical]
        sar = reader._sar
        if sar is not None:
            n_sar = len(routing.sar_bands)
            bands = list(range(1, n_sar + 1))
            parts.append(
                sar.read(
                    indexes=bands,
                    out_shape=(n_sar, height, width),
                    resampling=Resampling.average,
                    out_dtype="float32",
                )
            )
            if reader._sar_alpha is not None:
                valid &= sar.read(reader._sar_alpha, out_shape=(height, width)) > 0
            else:
                masks = sar.read_masks(indexes=bands, out_shape=(n_sar, height, width))
                valid &= (masks > 0).all(axis=0)
    except rasterio.errors.RasterioError as err:
        raise InputError(
            f"{reader.scene_path}: cannot read the scene overview ({rasterio_reason(err)})"
        ) from None
    image = np.concatenate(parts, axis=0)
    valid &= np.isfinite(image).all(axis=0)
    return image, valid


def model_inputs(
    image: np.ndarray, valid: np.ndarray, routing: BandRouting
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rgb [1,3,h,w], aux [1,A,h,w]) as the predictor feeds windows: normalised, invalid
    pixels at the band means (0 after normalising)."""
    rgb, aux = routing.prepare(torch.from_numpy(image)[None])
    v = torch.from_numpy(valid)[None, None]
    return torch.where(v, rgb, 0.0), torch.where(v, aux, 0.0)


def scene_context(
    reader: SceneReader, model: nn.Module, routing: BandRouting | None = None
) -> Any | None:
    """What ``model`` needs to predict any window of ``reader``'s scene as part of the
    whole scene, or None when it needs nothing (then call the model without a context).

    Reads the scene at ``model.config.context_size`` pixels on its longer side at most
    (one decimated read, a fraction of the cost of the windows' reads) and runs the
    model's context pass on it, on the model's device. ``routing`` defaults to the
    reader's.
    """
    if not getattr(model, "needs_scene_context", False):
        return None
    config = model.config
    routing = routing if routing is not None else reader.routing
    grid = reader.grid
    height, width = overview_shape(grid.height, grid.width, int(config.context_size))
    rgb, aux = model_inputs(*read_overview(reader, height, width), routing)
    device = next(model.parameters()).device
    with torch.inference_mode():
        return model.scene_context(rgb.to(device), aux.to(device))
