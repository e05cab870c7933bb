"""Does a scene look like what the model was trained on? Checked before any mapping.

A model trained on 16-bit digital numbers maps a float 0-1 reflectance scene (or an
8-bit one) into nonsense, and one trained on SAR in dB does the same with linear power:
the values are simply in another range, and the map comes out as one class with exit
status 0. The adapter records the stored training values per band (1st, 50th and 99th
percentiles, :attr:`BandRouting.profile`); here a decimated read of the scene (overviews
when the file has them, never the whole raster in memory) is compared with them.

- Optical: the typical ratio of scene to training medians over the bands. Scenes differ
  (haze, season, water), but not by a factor of five: beyond that it is a unit or
  scaling mismatch.
- SAR: medians compared in dB after the adapter's declared units; scenes differ by a few
  dB, a unit mismatch by ten or more.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data.bands import BandRouting
from ..errors import InputError
from ..io import band_indexes, display_name, interruptible, open_raster, reading

#: Scene/training median ratio beyond which optical values are refused (either way).
OPTICAL_FACTOR = 5.0
#: Difference of SAR medians (dB) beyond which SAR values are refused.
SAR_DB_GAP = 10.0
#: Longest side of the decimated read.
SAMPLE_SIZE = 256


def _medians(
    path: str | Path, names: tuple[str, ...], role: str, indices: tuple[int, ...]
) -> tuple[list[float], str]:
    """Median of the valid stored values of each named band (NaN if none), and the dtype."""
    with open_raster(path) as src:
        bands = band_indexes(path, src, names, role, indices)
        scale = max(src.width, src.height) / SAMPLE_SIZE
        shape = (
            len(bands),
            max(1, round(src.height / max(scale, 1))),
            max(1, round(src.width / max(scale, 1))),
        )
        # a truncated file: one line, not a traceback; a stalled server: Ctrl-C stops it
        with reading(display_name(path)):
            data = interruptible(
                lambda: src.read(bands, out_shape=shape, masked=True).astype("float64")
            )
        dtype = src.dtypes[bands[0] - 1]
    values = np.ma.masked_invalid(data)
    out = []
    for b in range(len(bands)):
        v = values[b].compressed()
        out.append(float(np.median(v)) if v.size else math.nan)
    return out, dtype


def _to_db(x: float, units: str) -> float:
    if units == "db":
        return x
    factor = 10.0 if units == "linear" else 20.0
    return factor * math.log10(max(x, 1e-5 if units == "linear" else 1e-5**0.5))


def check_inputs(scene: str | Path, sar: str | Path | None, routing: BandRouting) -> None:
    """Refuse a scene whose values do not look like the training data (module docstring).

    Adapters written before the profile was recorded (empty ``routing.profile``) and
    scenes without a valid pixel are not checked here.
    """
    profile = routing.profile
    if not profile:
        return
    optical, dtype = _medians(scene, routing.optical_bands, "optical", routing.optical_indices)
    ratios = []
    for name, median in zip(routing.optical_bands, optical, strict=True):
        trained = profile.get(name, {}).get("p50")
        if trained and trained > 0 and median > 0:
            ratios.append(math.log(median / trained))
        elif trained and trained > 0 and median <= 0:
            ratios.append(math.log(1e-6))
    if ratios:
        factor = math.exp(sum(ratios) / len(ratios))
        if not 1 / OPTICAL_FACTOR <= factor <= OPTICAL_FACTOR:
            expected = ", ".join(
                f"{n} {profile[n]['p50']:.4g}" for n in routing.optical_bands if n in profile
            )
            found = ", ".join(
                f"{n} {m:.4g}" for n, m in zip(routing.optical_bands, optical, strict=True)
            )
            raise InputError(
                f"{scene}: optical values are about {factor:.3g}x those the model was trained on "
                f"(medians: scene {found} [{dtype}]; training {expected}); convert the scene to "
                "the training units (e.g. 0-1 reflectance x 10000 for digital numbers), or train "
                "with data.optical_scale / data.optical_offset that map both to reflectance"
            )
    if sar is None or not routing.sar_bands:
        return
    values, _ = _medians(sar, routing.sar_bands, "SAR", ())
    for name, median in zip(routing.sar_bands, values, strict=True):
        trained = profile.get(name, {}).get("p50")
        if trained is None or math.isnan(median):
            continue
        gap = _to_db(median, routing.sar_units) - _to_db(trained, routing.sar_units)
        if abs(gap) > SAR_DB_GAP:
            looks = (
                "linear power or amplitude"
                if 0 <= median < 3
                else "dB"
                if median < 0
                else "another scale"
            )
            raise InputError(
                f"{sar}: SAR band {name} has a median of {median:.4g}, the model was trained on "
                f"{routing.sar_units} values with a median of {trained:.4g} ({abs(gap):.0f} dB "
                f"apart); the scene looks like {looks}: convert it to {routing.sar_units}"
            )
