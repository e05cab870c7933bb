"""Per-band normalisation statistics, computed from training patches only.

Statistics are taken in physical units (:meth:`BandRouting.to_physical`: SAR in dB,
optical scale/offset applied), over
valid pixels (NaN = nodata is skipped), and stored with the run in the adapter file, so
prediction normalises exactly as training did. Test or validation data never feed them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .bands import BandRouting

#: Values kept per band and patch for the input profile's quantiles.
PROFILE_SAMPLES = 4096


def band_statistics(
    images: Iterable[torch.Tensor], routing: BandRouting
) -> tuple[dict[str, float], dict[str, float], dict[str, dict[str, float]]]:
    """Mean and standard deviation per band over valid pixels of ``images`` ([C,H,W] each),
    in physical units, and the input profile: the 1st, 50th and 99th percentiles of the
    values as stored in the files, which prediction compares a new scene against.

    Accumulates sums in float64 so that millions of pixels do not lose precision.
    """
    n = len(routing.all_bands)
    count = torch.zeros(n, dtype=torch.float64)
    total = torch.zeros(n, dtype=torch.float64)
    total_sq = torch.zeros(n, dtype=torch.float64)
    samples: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for image in images:
        raw = image.reshape(n, -1).float()
        for b in range(n):
            values = raw[b][torch.isfinite(raw[b])]
            step = max(1, values.numel() // PROFILE_SAMPLES)
            samples[b].append(values[::step])
        x = routing.to_physical(image).reshape(n, -1).double()
        valid = torch.isfinite(x)
        x = torch.where(valid, x, 0.0)
        count += valid.sum(1)
        total += x.sum(1)
        total_sq += (x * x).sum(1)
    if (count == 0).any():
        empty = [b for b, c in zip(routing.all_bands, count.tolist(), strict=True) if c == 0]
        raise ValueError(f"no valid pixels to compute statistics for bands {empty}")
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    std = var.sqrt().clamp_min(1e-6)
    names = routing.all_bands
    levels = torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64)
    profile = {}
    for b, name in enumerate(names):
        q = torch.quantile(torch.cat(samples[b]).double(), levels).tolist()
        profile[name] = {"p01": q[0], "p50": q[1], "p99": q[2]}
    return (
        {b: float(v) for b, v in zip(names, mean.tolist(), strict=True)},
        {b: float(v) for b, v in zip(names, std.tolist(), strict=True)},
        profile,
    )
