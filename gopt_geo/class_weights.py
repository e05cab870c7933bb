"""Class weights of the training loss: given, or derived from the training labels.

``train.class_weights: auto`` weighs the cross-entropy by the inverse square root of each
class's share of the training pixels, so that rare classes (thin rivers and roads are
often a few per cent of the pixels) are not traded away for common ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .config import TrainConfig
from .data.classes import ClassScheme
from .errors import InputError

#: ``train.class_weights: auto``: the largest weight a class gets, relative to the
#: pixel-weighted mean weight of 1. Seven classes, one of them with 1 % of the pixels
#: and six even: 3.9 for the rare one, 0.97 for the others; at 0.1 % it would be 12.8,
#: capped; without a cap a class of a few pixels would get hundreds and its label noise
#: would steer training. Classes absent from the counted training pixels get the cap.
AUTO_WEIGHT_CAP = 10.0


def auto_class_weights(pixels: Sequence[int] | np.ndarray) -> list[float]:
    """Cross-entropy class weights from the training labels' pixels per class.

    A class's weight is the inverse square root of its share of the labelled pixels,
    scaled so that the pixel-weighted mean weight, sum(share * weight), is 1: on the
    training distribution the loss keeps the scale of the unweighted loss, common classes
    weigh a little under 1 and rare ones more (the square root: inverse shares would
    trade the common classes' accuracy away for a few rare pixels). Weights are then
    capped at :data:`AUTO_WEIGHT_CAP`, and a class with no counted pixel gets the cap
    (rarer than any counted one; if it is truly absent from training its weight is never
    used, since a class's weight only scales pixels labelled with it).
    """
    counts = np.asarray(pixels, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"expected pixel counts per class, got {pixels!r}")
    total = counts.sum()
    if total <= 0:
        raise ValueError("no labelled pixel to derive class weights from")
    root = np.sqrt(counts / total)
    weights = np.full(counts.shape, AUTO_WEIGHT_CAP)
    present = counts > 0
    weights[present] = 1.0 / (root[present] * root.sum())
    return [float(w) for w in np.minimum(weights, AUTO_WEIGHT_CAP)]


def resolve_class_weights(
    train_cfg: TrainConfig, scheme: ClassScheme, pixels: Callable[[], np.ndarray]
) -> list[float] | None:
    """``train.class_weights`` as the loss takes them: None, the configured list (one
    per class of the scheme), or ``auto`` derived from ``pixels`` (a callable giving the
    training labels' pixels per class, called only for ``auto``)."""
    weights = train_cfg.class_weights
    if weights is None:
        return None
    if weights == "auto":
        counts = pixels()
        if int(np.sum(counts)) == 0:
            raise InputError(
                "train.class_weights: auto found no labelled pixel in the training patches "
                "read for statistics (data.stats_patches); raise it or give the weights"
            )
        return auto_class_weights(counts)
    assert isinstance(weights, list)
    if len(weights) != scheme.num_classes:
        raise InputError(
            f"train.class_weights: {len(weights)} weights for {scheme.num_classes} classes "
            f"({', '.join(scheme.names)}); give one per class, in that order, or auto"
        )
    return [float(w) for w in weights]
