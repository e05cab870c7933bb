"""Metrics against a confusion matrix computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gopt_geo.data.classes import IGNORE_INDEX
from gopt_geo.evaluation import confusion_matrix, metrics_from_confusion


def test_confusion_matrix_counts_and_ignores() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, IGNORE_INDEX, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
    cm = confusion_matrix(target, pred, 3)
    expected = np.array([[1, 1, 0], [0, 2, 1], [1, 0, 1]])
    np.testing.assert_array_equal(cm, expected)


def test_metrics_by_hand() -> None:
    # rows = reference, columns = prediction
    cm = np.array([[50, 10, 0], [5, 30, 5], [0, 0, 0]])
    m = metrics_from_confusion(cm, ["a", "b", "c"])
    total = 100
    assert m.oa == pytest.approx(80 / total)
    assert m.accuracy[:2] == pytest.approx([50 / 60, 30 / 40])
    assert np.isnan(m.accuracy[2])  # class absent from the reference
    assert m.aa == pytest.approx((50 / 60 + 30 / 40) / 2)
    iou_a = 50 / (60 + 55 - 50)
    iou_b = 30 / (40 + 40 - 30)
    iou_c = 0 / (0 + 5 - 0)  # predicted but never present: IoU 0, it counts
    assert m.iou == pytest.approx([iou_a, iou_b, iou_c])
    assert m.miou == pytest.approx((iou_a + iou_b + iou_c) / 3)
    pe = (60 * 55 + 40 * 40 + 0 * 5) / total**2
    assert m.kappa == pytest.approx((0.8 - pe) / (1 - pe))
    assert m.pixels == 100


def test_perfect_prediction() -> None:
    m = metrics_from_confusion(np.diag([3, 4, 5]))
    assert (m.oa, m.aa, m.miou, m.kappa) == (1.0, 1.0, 1.0, 1.0)
