"""A light multi-level segmentation head, optionally with a full-resolution detail path
(design §3, "Decoder").

Counted in GoPT's trainable budget, so it stays small: one 1x1 projection per level to
``dim`` channels, all levels resized to 1/4 of the input, concatenated, fused by one
1x1 conv + batch norm + ReLU (SegFormer's all-MLP head, in miniature). Then either

- (default, the paper's head) a 1x1 classifier at 1/4, its logits upsampled to the input
  size: anything narrower than ~4 pixels (a river, a road at 10 m) is blurred away; or
- `DetailHead` (``model.detail_path``): a per-pixel MLP over every input band at full
  resolution whose logits are added to those upsampled logits, so that a 1-pixel-wide
  feature visible in any band can be mapped: the decoder brings the context, the detail
  path the pixel. `pixel_mlp` is the same MLP the ``pixel`` yardstick is made of.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gopt_geo.constants import Keep


def pixel_mlp(in_bands: int, width: int, layers: int = 2) -> nn.Sequential:
    """``layers`` x (1x1 conv, batch norm, ReLU), ``width`` wide: a per-pixel MLP over the
    bands, the classifier a remote-sensing user tries first (the ``pixel`` variant) and
    the detail path's body. Batch norm is what lets it learn within a short budget: the
    normalised bands of different pixels span very different ranges per class, and
    without it (the first detail paths) the same MLP learned the spectral rule far
    more slowly than the decoder learned its coarse map."""
    modules: list[nn.Module] = []
    c_in = in_bands
    for _ in range(layers):
        modules += [
            nn.Conv2d(c_in, width, kernel_size=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        c_in = width
    return nn.Sequential(*modules)


#: Pixels per chunk when `apply_pixel_mlp` predicts (no gradient): each chunk's hidden
#: activations (16384 x 48 floats, 3 MiB) stay in cache, where the whole window's
#: (4 x 384² x 48, 113 MiB) would be fresh pages every batch.
PREDICT_CHUNK = 16384


class OutputLayer(NamedTuple):
    """A 1x1 layer's tensors: what `pixel_logits` reads of a classifier (a ``nn.Conv2d``
    has the same two attributes)."""

    weight: Tensor  # [out, in] or [out, in, 1, 1]
    bias: Tensor | None


def pixel_logits(mlp: nn.Sequential, classifier: nn.Conv2d | OutputLayer, flat: Tensor) -> Tensor:
    """`pixel_mlp` then ``classifier`` on pixels ``flat`` [N, C] -> logits [N, classes],
    as matrix products with the same tensors (and the same batch-norm statistics and
    running averages) as the 1x1 convolutions.

    Why not the convolutions: on a CPU a 1x1 conv over NCHW maps is a strided, reordering
    kernel, and this path's cost is all full-resolution work; the same layers as GEMMs
    train 1.65x and predict about 1.3x faster (measured on the detail head alone, batch 8
    of 128², 2 threads), with results equal to float rounding. Predicting (no gradient,
    batch norm in eval mode), each batch norm is folded into its layer's weights and the
    pixels go through in chunks: 4.4x faster again on a batch of 4 windows of 384²
    (measured on the head alone), where most of the time went on fresh pages for the
    hidden activations."""
    layers = list(mlp)
    pairs = list(zip(layers[0::3], layers[1::3], strict=True))
    if not torch.is_grad_enabled() and not any(bn.training for _, bn in pairs):
        return _pixel_logits_folded(pairs, classifier, flat)
    for conv, bn in pairs:
        flat = F.linear(flat, conv.weight.flatten(1), conv.bias)
        if bn.training and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)  # as BatchNorm2d's own forward counts
        flat = F.batch_norm(
            flat,
            bn.running_mean,
            bn.running_var,
            bn.weight,
            bn.bias,
            bn.training,
            bn.momentum,  # pixel_mlp's BatchNorm2d: the default 0.1, running averages kept
            bn.eps,
        )
        flat = F.relu(flat, inplace=True)
    return F.linear(flat, classifier.weight.flatten(1), classifier.bias)


def _pixel_logits_folded(
    pairs: list[tuple[nn.Module, nn.Module]], classifier: nn.Conv2d | OutputLayer, flat: Tensor
) -> Tensor:
    """`pixel_logits` for prediction: y = relu(s * (W x) + t) is relu((s W) x + t) with
    s = gamma / sqrt(running_var + eps), t = beta - running_mean * s; chunked over pixels
    (`PREDICT_CHUNK`)."""
    folded = []
    for conv, bn in pairs:
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = conv.weight.flatten(1) * scale[:, None]
        bias = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        folded.append((weight.t().contiguous(), bias))
    w_out = classifier.weight.flatten(1).t().contiguous()
    b_out = classifier.bias if classifier.bias is not None else flat.new_zeros(w_out.shape[1])
    out = flat.new_empty(flat.shape[0], w_out.shape[1])
    for start in range(0, flat.shape[0], PREDICT_CHUNK):
        hidden = flat[start : start + PREDICT_CHUNK]
        for weight, bias in folded:
            hidden = torch.addmm(bias, hidden, weight).relu_()
        torch.addmm(b_out, hidden, w_out, out=out[start : start + PREDICT_CHUNK])
    return out


def apply_pixel_mlp(mlp: nn.Sequential, classifier: nn.Conv2d | OutputLayer, x: Tensor) -> Tensor:
    """`pixel_logits` over every pixel of ``x`` [B, C, H, W] -> [B, classes, H, W]."""
    b, c, h, w = x.shape
    flat = pixel_logits(mlp, classifier, x.permute(0, 2, 3, 1).reshape(-1, c))
    return flat.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def upsample_at(coarse: Tensor, size: tuple[int, int], points: Tensor) -> Tensor:
    """What ``F.interpolate(coarse, size, mode="bilinear", align_corners=False)`` gives at
    ``points`` [B, P] (flat indices into ``size``) -> [B, C, P], without the full map.

    Why: training scores a sample of the pixels (`sample_points`), and upsampling every
    pixel only to keep a quarter of them costs the demo's step 6 ms of backward. The same
    sampling positions: output pixel i of n maps to (i + 0.5) * in / n - 0.5 in both, and
    ``grid_sample``'s border padding clamps as ``interpolate`` does at the edges."""
    height, width = size
    ys, xs = points // width, points % width
    grid = torch.stack([(2 * xs + 1) / width - 1, (2 * ys + 1) / height - 1], dim=-1)
    sampled = F.grid_sample(
        coarse, grid[:, None].to(coarse.dtype), "bilinear", "border", align_corners=False
    )
    return sampled[:, :, 0]


def box_slices(keep: Keep) -> Iterator[tuple[slice, slice, slice, slice]]:
    """For each image j of a batch, the index of its ``keep`` box (row, col, height,
    width) in a [B, C, H, W] tensor: what the models' per-pixel work is limited to."""
    for j, (r, c, h, w) in enumerate(keep):
        yield slice(j, j + 1), slice(None), slice(r, r + h), slice(c, c + w)


def gather_pixels(x: Tensor, points: Tensor) -> Tensor:
    """``x`` [B, C, H, W] at ``points`` [B, P] (flat indices into H * W) -> [B, C, P]."""
    b, c = x.shape[:2]
    return x.flatten(2).gather(2, points[:, None, :].expand(b, c, -1))


class DetailHead(nn.Module):
    """The full-resolution part of the detail path: per-pixel logits from every band,
    added to the decoder's upsampled logits, which a per-pixel gate weighs.

    ``mlp`` (`pixel_mlp`, ``dim`` wide, two hidden layers) -> ``classifier`` (1x1 conv):
    the ``pixel`` yardstick's own model, trained jointly with the decoder, whose logits
    it corrects: logits = classifier(h) + 2 sigmoid(gate(h)) x decoder's logits, h the
    MLP's features of the pixel. The decoder's logits carry the context (what a pixel's
    neighbourhood says), the MLP's the pixel (what its bands say); where a thin river
    crosses a field, or at the ragged edge of a town block, the bilinearly upsampled
    context is wrong on a band of pixels, and the gate lets the pixel's own evidence
    turn it down there instead of outvoting it (gated fusion, as in GFF, Li et al.,
    2020). The gate starts at zero, i.e. weight 1: the plain sum.

    The gate was kept for its scores on the two scenes drawn to check the design
    (at_the_pixel.py, seeds 4321 and 777, 2 training seeds each; so for the gate they
    are no longer untouched): 79.2 vs 78.5 and 79.1 vs 78.6 mIoU over
    the plain sum, better on all four runs; town IoU 98.2 vs 97.1 (the per-pixel
    yardstick 97.8) and 98.5 vs 98.3, water +1.0 and +0.9, roads +1.3 and +2.1.

    What was measured before settling on this (benchmarks/at_the_pixel.py, held-out
    scene, one seed, 8 epochs; mIoU / thin-feature pixels right / water IoU): the first
    path, a 3x3 conv over the bands summed with the decoder's features reduced to 16
    channels and upsampled, then a 1x1 mix, no normalisation, 75.6 / 48.0 / 78.0, below
    the per-pixel yardstick's water (85.7); 32 channels 76.3 / 51.2 / 77.7; a gate on
    the decoder's logits 75.8 / 48.0 / 77.8; an auxiliary loss on the path's own logits
    75.3 / 46.7 / 78.4; the decoder's logits as an input instead of a summand 73.9 /
    37.5 / 78.0. The per-pixel MLP with batch norm: 16 wide 77.4 / 55.8 / 85.1, 24 wide
    78.4 / 58.3 / 84.4, 48 wide with one hidden layer 76.9 / 55.3 / 84.4, 48 wide with
    two 80.4 / 63.4 / 87.2 (this head; 81.7 / 66.6 / 88.6 with a randomly initialised
    classifier, within seed noise); the yardstick alone 74.2 / 47.5 / 85.7. The
    classifier starts at zero, so that an untrained path changes nothing.
    """

    def __init__(self, in_bands: int, num_classes: int, dim: int = 48) -> None:
        super().__init__()
        self.mlp = pixel_mlp(in_bands, dim)
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)
        self.gate = nn.Conv2d(dim, 1, kernel_size=1)
        for layer in (self.classifier, self.gate):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _output(self) -> OutputLayer:
        """The classifier and the gate as one layer: one matrix product gives both."""
        return OutputLayer(
            torch.cat([self.classifier.weight, self.gate.weight]),
            torch.cat([self.classifier.bias, self.gate.bias]),
        )

    @staticmethod
    def _fuse(detail: Tensor, logits: Tensor) -> Tensor:
        """``detail`` [B, classes + 1, ...] (logits, then the gate's input) and the
        decoder's ``logits`` [B, classes, ...] -> the fused logits."""
        classes = logits.shape[1]
        gate = 2 * torch.sigmoid(detail[:, classes:])
        return torch.addcmul(detail[:, :classes], gate, logits)

    def forward(
        self,
        logits: Tensor,
        bands: Tensor,
        points: Tensor | None = None,
        keep: Keep | None = None,
    ) -> Tensor:
        """``logits`` [B, classes, H, W] (the decoder's, upsampled), ``bands`` [B,
        in_bands, H, W] -> logits [B, classes, H, W]; with ``points`` [B, P] (flat pixel
        indices, `sample_points`) the logits of those pixels only, [B, classes, P] (and
        ``logits`` the decoder's at those pixels, [B, classes, P]); with
        ``keep`` (a (row, col, height, width) box per image) corrected inside the boxes
        only, where a prediction's tiling keeps them (a per-pixel path needs no margin)."""
        output = self._output()
        if keep is not None:
            for box in box_slices(keep):
                logits[box] = self._fuse(apply_pixel_mlp(self.mlp, output, bands[box]), logits[box])
            return logits
        if points is None:
            return self._fuse(apply_pixel_mlp(self.mlp, output, bands), logits)
        b, c = bands.shape[:2]
        pixels = gather_pixels(bands, points).permute(0, 2, 1).reshape(-1, c)
        detail = pixel_logits(self.mlp, output, pixels)
        return self._fuse(detail.reshape(b, -1, detail.shape[1]).permute(0, 2, 1), logits)


def sample_points(
    batch: int, height: int, width: int, block: int, device: Any, row_length: int = 0
) -> Tensor:
    """One pixel drawn at random in every ``block`` x ``block`` block of each of ``batch``
    images of ``height`` x ``width`` (blocks cut by the image's edge draw within what is
    left), with torch's global generator (seeded runs repeat): flat indices [B, P] into
    rows of ``row_length`` pixels (a padded image's width; 0: ``width``).

    Why: the detail path is per-pixel work at full resolution, and a training step that
    scores every pixel of a small backbone's patch pays for it in full (1.58x the step of
    the demo's Lite0). Scoring a random sample of the pixels is how Mask2Former (Cheng
    et al., 2022) and PointRend (Kirillov et al., 2020) train: every pixel is scored with
    the same probability, so the loss is an unbiased estimate of the full one, on
    1/block² of the work. One per block (stratified) rather than any P of the image
    spreads the sample evenly and needs no sort (a top-k over the image's pixels cost 2.5
    ms of the demo's 16 ms detail-path step). Validation and prediction score every pixel.
    """
    rows = torch.arange(0, height, block, device=device)
    cols = torch.arange(0, width, block, device=device)
    tall = (height - rows).clamp(max=block)  # the block's extent inside the image
    wide = (width - cols).clamp(max=block)
    shape = (batch, len(rows), len(cols))
    dy = (torch.rand(shape, device=device) * tall[:, None]).long()
    dx = (torch.rand(shape, device=device) * wide[None, :]).long()
    y, x = rows[:, None] + dy, cols[None, :] + dx
    return (y * (row_length or width) + x).flatten(1)


class MultiLevelDecoder(nn.Module):
    """Four feature maps of any widths and strides -> logits at the input resolution.

    ``detail_bands`` > 0: a `DetailHead` over that many input bands (``detail_dim``
    wide) corrects the upsampled logits at full resolution (then ``forward`` needs the
    input bands); 0: none, the original head. The detail path adds modules and changes
    none: adapters trained without it load unchanged, and since it is built last (and
    starts at zero) the rest draws the same initial values and predicts the same.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        dim: int = 64,
        detail_bands: int = 0,
        detail_dim: int = 48,
    ) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Conv2d(c, dim, kernel_size=1) for c in in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(dim * len(in_channels), dim, kernel_size=1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)
        self.detail: DetailHead | None = None
        if detail_bands:
            self.detail = DetailHead(detail_bands, num_classes, detail_dim)

    def forward(
        self,
        features: Sequence[Tensor],
        size: tuple[int, int],
        bands: Tensor | None = None,
        points: Tensor | None = None,
        keep: Keep | None = None,
    ) -> Tensor:
        """``features`` [B, C_i, h_i, w_i]; ``size`` (H, W) of the input; ``bands`` [B, A+3,
        H, W] (the detail path's input; ignored without one) -> [B, classes, H, W]; with
        ``points`` [B, P] (`sample_points`), the logits of those pixels, [B, classes, P];
        ``keep``: boxes the detail path corrects (`DetailHead.forward`), None: all."""
        quarter = (-(-size[0] // 4), -(-size[1] // 4))
        levels = [
            F.interpolate(proj(f), size=quarter, mode="bilinear", align_corners=False)
            for proj, f in zip(self.projections, features, strict=True)
        ]
        fused = self.fuse(torch.cat(levels, dim=1))
        coarse = self.classifier(fused)
        if points is None:
            logits = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
        else:
            logits = upsample_at(coarse, size, points)
        if self.detail is None:
            return logits
        if bands is None or tuple(bands.shape[-2:]) != tuple(size):
            raise ValueError(f"the detail path needs the input bands at {tuple(size)}")
        return self.detail(logits, bands, points, keep)
