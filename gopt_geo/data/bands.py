"""Band routing and normalisation: the one place that turns raster bands into model inputs.

GoPT feeds the optical RGB bands to the frozen, RGB-pretrained backbone as they were
pretrained, and every other band (SAR VV/VH, NIR, ...) to the trainable auxiliary
stream (DESIGN.md §3). Training (torchgeo samples) and prediction (windows read with
rasterio) both call :meth:`BandRouting.prepare`, and the routing - band names, order,
SAR units, statistics - is stored in the adapter file, so the two can never disagree
silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

#: Floor applied to linear SAR backscatter before converting to dB (-50 dB).
_SAR_LINEAR_FLOOR = 1e-5


def sar_to_db(x: torch.Tensor, units: str) -> torch.Tensor:
    """Convert SAR backscatter to dB: `db` passes through, `linear` is power, `amplitude` is |s|."""
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
    SAR conversion to dB.
    """

    optical_bands: tuple[str, ...]
    sar_bands: tuple[str, ...]
    rgb: tuple[str, ...] = ("R", "G", "B")
    aux: tuple[str, ...] | None = None
    sar_units: str = "db"
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)

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

    def with_stats(self, mean: dict[str, float], std: dict[str, float]) -> BandRouting:
        return BandRouting(
            self.optical_bands,
            self.sar_bands,
            self.rgb,
            self.aux,
            self.sar_units,
            dict(mean),
            dict(std),
        )

    def to_db(self, image: torch.Tensor) -> torch.Tensor:
        """Stacked image [..., C, H, W] (optical then SAR) as float, SAR converted to dB."""
        image = image.float()
        n_opt = len(self.optical_bands)
        if self.sar_units == "db" or not self.sar_bands:
            return image
        return torch.cat(
            [image[..., :n_opt, :, :], sar_to_db(image[..., n_opt:, :, :], self.sar_units)], dim=-3
        )

    def prepare(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split a stacked image [B, C, H, W] into normalised (rgb [B,3,H,W], aux [B,A,H,W]).

        NaN marks nodata (the datasets and the predictor write it there); it becomes 0,
        the training mean, after normalisation, so masked pixels carry no signal.
        """
        if image.shape[-3] != len(self.all_bands):
            raise ValueError(
                f"image has {image.shape[-3]} bands, routing expects "
                f"{len(self.all_bands)}: {self.all_bands}"
            )
        x = self.to_db(image)
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
        )
