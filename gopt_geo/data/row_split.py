"""Bands of rows of one scene for ``data.split_rows``: where each split's band lies.

Pure arithmetic (no torch, no files), shared by the datamodule (which samples inside the
bands and refuses a band thinner than one patch), ``init-config`` (which picks fractions
and a patch size whose bands all hold a patch) and ``evaluate MAP --split`` (which scores
a map on one band only). One formula, so the three cannot disagree by a row.

Bands follow the split order from the top of a scene; each gets its fraction of the rows,
borders on whole rows. Every inner border is pulled back by half a patch on each side
(the guard gap: ``patch`` rows per inner border belong to no split), so random training
patches inside their band and gridded validation/test patches never share a pixel.
"""

from __future__ import annotations

from collections.abc import Sequence


def band_rows(rows: int, fractions: Sequence[float], i: int, patch: int) -> tuple[int, int]:
    """Rows ``[first, last)`` of band ``i`` (in top-to-bottom order) of a scene of ``rows``
    rows split by ``fractions`` (same order), guard gaps of ``patch`` rows removed."""
    start, stop = sum(fractions[:i]), sum(fractions[: i + 1])
    half = patch // 2
    first = round(start * rows) + (half if i > 0 else 0)
    last = round(stop * rows) - (half if i < len(fractions) - 1 else 0)
    return first, max(first, last)


def thinnest_band(rows: int, fractions: Sequence[float], patch: int) -> tuple[int, int] | None:
    """(band index, its rows) of the first band thinner than one patch, or None."""
    for i in range(len(fractions)):
        first, last = band_rows(rows, fractions, i, patch)
        if last - first < patch:
            return i, last - first
    return None


def _ceil_hundredth(value: float) -> float:
    return -(-round(value * 1000) // 10) / 100  # 0.1875 -> 0.19; exact hundredths stay


def choose_row_split(
    heights: Sequence[int], patches: Sequence[int] = (256, 128, 64, 32)
) -> tuple[int, list[float]] | None:
    """A patch size and (train, val, test) fractions for scenes of ``heights`` rows, with
    the validation band in the middle: the largest patch whose validation and test bands
    each need at most a quarter of the rows (training keeps at least half), validation
    and test at least 15 % each; the smallest patch is taken with any split that leaves
    every band one patch. None when no band layout fits (scenes too small)."""
    smallest = min(heights)
    for k, patch in enumerate(patches):
        last_resort = k == len(patches) - 1
        for slack in range(0, 6):  # a row or two more where rounding cost them
            val = _ceil_hundredth(max(0.15, (2 * patch + slack) / smallest))
            test = _ceil_hundredth(max(0.15, (1.5 * patch + slack) / smallest))
            train = round(1.0 - val - test, 2)
            if not last_resort and max(val, test) > 0.25:
                break
            if train <= 0:
                break
            fractions = [train, val, test]
            if all(thinnest_band(h, fractions, patch) is None for h in heights):
                return patch, fractions
    return None
