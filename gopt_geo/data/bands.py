"""Band routing and normalisation: the one place that turns raster bands into model inputs.

GoPT feeds the optical RGB bands to the frozen, RGB-pretrained backbone as they were
pretrained, and every other band (SAR VV/VH, NIR, ...) to the trainable auxiliary
stream (design §3). Training (torchgeo samples) and prediction (windows read with
rasterio) both call :meth:`BandRouting.prepare`, and the routing - band names, order,
SAR units, statistics - is stored in the adapter file, so the two can never disagree
silently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the routing itself is read without torch
    import torch

#: Floor applied to linear SAR backscatter before converting to dB (-50 dB).
_SAR_LINEAR_FLOOR = 1e-5


def sar_to_db(x: torch.Tensor, units: str) -> torch.Tensor:
    """Convert SAR backscatter to dB: `db` passes through, `linear` is power, `amplitude` is |s|."""
    import torch

    if units == "db":
        return x
    if units == "linear":
        return 10.0 * torch.log10(x.clamp_min(_SAR_LINEAR_FLOOR))
    if units == "amplitude":
        return 20.0 * torch.log10(x.clamp_min(_SAR_LINEAR_FLOOR**0.5))
    raise ValueError(f"unknown SAR units {units!r} (expected db, linear or amplitude)")


@dataclass(frozen=True)
class BandRouting:
    """Which file bands exist, which feed the frozen backbone, which the auxiliary stream.

    ``optical_bands`` and ``sar_bands`` name the bands in file order. ``rgb`` names the
    three bands for the backbone (in the order the backbone was pretrained on);
    ``aux`` names the auxiliary bands (default: every other band, optical first).
    ``mean``/``std`` are per-band statistics from the training data, applied after the
    SAR conversion to dB and the optical scale/offset.

    ``optical_scale``/``optical_offset`` turn stored optical values into physical ones,
    ``(stored + offset) * scale``, one value for every band or one per optical band (empty:
    as stored). Sentinel-2 L2A since processing baseline 04.00 stores reflectance x 10000
    plus 1000: ``scale 0.0001, offset -1000``. ``optical_indices`` are the 1-based file
    bands read as ``optical_bands`` when the file's bands carry no descriptions (empty:
    the first bands, or the bands whose descriptions are the names).
    """

    optical_bands: tuple[str, ...]
    sar_bands: tuple[str, ...]
    rgb: tuple[str, ...] = ("R", "G", "B")
    aux: tuple[str, ...] | None = None
    sar_units: str = "db"
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    optical_scale: tuple[float, ...] = ()
    optical_offset: tuple[float, ...] = ()
    optical_indices: tuple[int, ...] = ()
    #: per band, percentiles (p01, p50, p99) of the stored training values: what a scene
    #: given to this model should look like (see gopt_geo.inference.sanity)
    profile: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.aux is None:  # resolve the default once, so equal routings compare equal
            object.__setattr__(self, "aux", tuple(b for b in self.all_bands if b not in self.rgb))
        names = self.all_bands
        if len(set(names)) != len(names):
            raise ValueError(f"band names must be unique across optical and SAR: {names}")
        missing = [b for b in (*self.rgb, *self.aux_bands) if b not in names]
        if missing:
            raise ValueError(
                f"bands {missing} are routed to the model but not in the inputs {names}"
            )
        n_opt = len(self.optical_bands)
        for key in ("optical_scale", "optical_offset", "optical_indices"):
            values = getattr(self, key)
            allowed = (0, n_opt) if key == "optical_indices" else (0, 1, n_opt)
            if len(values) not in allowed:
                raise ValueError(
                    f"{key} has {len(values)} values; give "
                    + ("one per optical band" if key == "optical_indices" else "one, or one per")
                    + f" optical band ({n_opt}: {', '.join(self.optical_bands)})"
                )
        if any(i < 1 for i in self.optical_indices):
            raise ValueError(
                f"optical_indices are 1-based band numbers, got {self.optical_indices}"
            )
        if self.sar_units not in ("db", "linear", "amplitude"):
            raise ValueError(
                f"unknown SAR units {self.sar_units!r} (expected db, linear or amplitude)"
            )

    @property
    def all_bands(self) -> tuple[str, ...]:
        """Every input band, optical first, in file order: the layout of a stacked image."""
        return (*self.optical_bands, *self.sar_bands)

    @property
    def aux_bands(self) -> tuple[str, ...]:
        assert self.aux is not None  # resolved in __post_init__
        return self.aux

    @property
    def num_aux(self) -> int:
        return len(self.aux_bands)

    def with_stats(
        self,
        mean: dict[str, float],
        std: dict[str, float],
        profile: dict[str, dict[str, float]] | None = None,
    ) -> BandRouting:
        return dataclasses.replace(
            self, mean=dict(mean), std=dict(std), profile=dict(profile or self.profile)
        )

    def every_optical_band(self) -> BandRouting:
        """This routing with every optical band the backbone does not take as the
        auxiliary bands, and nothing else (the SAR bands stay inputs, read and checked,
        but reach no part of the model).

        The optical yardstick (``optical_all_bands``) is meant to see every optical band
        and only those: with SAR among its auxiliary bands it would be a late-fusion
        model, and GoPT's gain over it would no longer be what the SAR brings.
        """
        aux = tuple(b for b in self.optical_bands if b not in self.rgb)
        return dataclasses.replace(self, aux=aux)

    def sar_units_warning(self) -> str | None:
        """A warning when the SAR values do not look like the declared ``sar_units``
        (from the training statistics, in dB after conversion), else None.

        Backscatter of land and water lies roughly between -35 and +5 dB. Linear power
        read as dB averages near 0 (a few hundredths); dB values read as linear are
        negative, floored at -50 dB by the conversion.
        """
        for band in self.sar_bands:
            mean = self.mean.get(band)
            if mean is None:
                continue
            if self.sar_units == "db" and -1.0 < mean < 3.0:
                return (
                    f"SAR band {band} averages {mean:.3g} 'dB': that looks like linear power "
                    "or amplitude, not dB; check data.sar_units (db, linear, amplitude)"
                )
            if self.sar_units != "db" and mean < -40.0:
                return (
                    f"SAR band {band} averages {mean:.3g} dB after converting from "
                    f"{self.sar_units}: the stored values look like dB already (negative); "
                    "check data.sar_units"
                )
        return None

    def to_physical(self, image: torch.Tensor) -> torch.Tensor:
        """Stacked image [..., C, H, W] (optical then SAR) as float in physical units:
        optical ``(stored + offset) * scale``, SAR in dB. Statistics and the model see this."""
        import torch

        image = image.float()
        n_opt = len(self.optical_bands)
        optical, sar = image[..., :n_opt, :, :], image[..., n_opt:, :, :]
        if self.optical_offset:
            optical = optical + image.new_tensor(self.optical_offset).view(-1, 1, 1)
        if self.optical_scale:
            optical = optical * image.new_tensor(self.optical_scale).view(-1, 1, 1)
        if self.sar_bands and self.sar_units != "db":
            sar = sar_to_db(sar, self.sar_units)
        return torch.cat([optical, sar], dim=-3)

    def prepare(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split a stacked image [B, C, H, W] into normalised (rgb [B,3,H,W], aux [B,A,H,W]).

        NaN marks nodata (the datasets and the predictor write it there); it becomes 0,
        the training mean, after normalisation, so masked pixels carry no signal.
        """
        import torch

        if image.shape[-3] != len(self.all_bands):
            raise ValueError(
                f"image has {image.shape[-3]} bands, routing expects "
                f"{len(self.all_bands)}: {self.all_bands}"
            )
        x = self.to_physical(image)
        index = {b: i for i, b in enumerate(self.all_bands)}

        def pick(names: tuple[str, ...]) -> torch.Tensor:
            idx = [index[b] for b in names]
            mean = x.new_tensor([self.mean.get(b, 0.0) for b in names]).view(-1, 1, 1)
            std = x.new_tensor([self.std.get(b, 1.0) for b in names]).view(-1, 1, 1)
            return torch.nan_to_num((x[..., idx, :, :] - mean) / std, nan=0.0)

        return pick(self.rgb), pick(self.aux_bands)

    def to_dict(self) -> dict[str, Any]:
        return {
            "optical_bands": list(self.optical_bands),
            "sar_bands": list(self.sar_bands),
            "rgb": list(self.rgb),
            "aux": list(self.aux_bands),
            "sar_units": self.sar_units,
            "mean": dict(self.mean),
            "std": dict(self.std),
            "optical_scale": list(self.optical_scale),
            "optical_offset": list(self.optical_offset),
            "optical_indices": list(self.optical_indices),
            "profile": {k: dict(v) for k, v in self.profile.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BandRouting:
        return cls(
            optical_bands=tuple(d["optical_bands"]),
            sar_bands=tuple(d["sar_bands"]),
            rgb=tuple(d["rgb"]),
            aux=tuple(d["aux"]) if d.get("aux") is not None else None,
            sar_units=d.get("sar_units", "db"),
            mean={k: float(v) for k, v in d.get("mean", {}).items()},
            std={k: float(v) for k, v in d.get("std", {}).items()},
            optical_scale=tuple(float(v) for v in d.get("optical_scale", ())),
            optical_offset=tuple(float(v) for v in d.get("optical_offset", ())),
            optical_indices=tuple(int(v) for v in d.get("optical_indices", ())),
            profile={
                k: {q: float(x) for q, x in v.items()} for k, v in d.get("profile", {}).items()
            },
        )
