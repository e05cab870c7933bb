"""Grouping prompters: CUP groups the auxiliary tokens, ACP lets the RGB tokens read the groups.

DESIGN.md §3. At every injection point the auxiliary (SAR, NIR, ...) tokens are grouped
around K class tokens (CUP) and the frozen backbone's RGB tokens query the K grouped
prompts (ACP); the answer is added to the RGB stream through a zero-initialised gate,
so an untrained model is exactly the frozen backbone. All attention is between N tokens
and K (or M) prompts, O(N*K): there is never an N x N attention map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gopt_geo.data.classes import IGNORE_INDEX


def assign(logits: Tensor, mode: str, tau: float, training: bool) -> Tensor:
    """Token-to-group assignment weights [B, N, K] from logits [B, N, K].

    ``hard``: Gumbel-Softmax with a straight-through estimator while training (one-hot
    forward, soft gradients backward), plain argmax one-hot at inference (deterministic).
    ``soft``: softmax(logits / tau), training and inference alike.
    """
    if mode == "soft":
        return torch.softmax(logits / tau, dim=-1)
    if mode != "hard":
        raise ValueError(f"assignment must be 'hard' or 'soft', got {mode!r}")
    if training:
        return F.gumbel_softmax(logits, tau=tau, hard=True, dim=-1)
    index = logits.argmax(dim=-1)
    return F.one_hot(index, logits.shape[-1]).to(logits.dtype)


class TokenCrossAttention(nn.Module):
    """Multi-head attention of N query tokens over M (few) key/value tokens.

    Written out rather than using scaled_dot_product_attention because the alignment
    loss needs the attention weights; with M = K the map is only [B, heads, N, K].
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"prompt_dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """``query`` [B, N, d], ``context`` [B, M, d] -> (output [B, N, d], attention [B, N, M]
        averaged over heads)."""
        b, n, d = query.shape
        m = context.shape[1]
        h = self.heads
        q = self.q(query).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, m, 2, h, d // h).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (d // h) ** -0.5, dim=-1)  # [B, h, N, M]
        out = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(out), attn.mean(dim=1)


@dataclass
class CUPOutput:
    """What CUP hands to ACP and to the next injection point."""

    aux: Tensor  # updated auxiliary tokens [B, N, d], carried to the next point
    class_tokens: Tensor  # updated class tokens [B, K, d], carried to the next point
    prompts: Tensor  # grouped prompts P [B, K, d], read by ACP
    logits: Tensor  # assignment logits [B, N, K] (class-aware loss, alignment target)
    assignment: Tensor  # assignment weights [B, N, K] (one-hot when hard)


class CUP(nn.Module):
    """Class-aware Uni-modal Prompter: groups auxiliary tokens around K class tokens.

    1. The class tokens (this point's learnable tokens plus those carried from the
       previous point) attend to the auxiliary tokens: C' = C + Attn(C, Z).
    2. Each auxiliary token is assigned to one class token (``assign``).
    3. The grouped prompts are the assignment-weighted means of the auxiliary tokens plus
       the updated class tokens: P = C' + sum_n a_nk Z_n / sum_n a_nk.
    4. Each auxiliary token receives its group's prompt: Z' = Z + W (a P), so the tokens
       carried to the next point, and hence the prompts, change with depth. The last
       prompted point has nothing to carry to (``carry=False``) and skips this step.
    """

    def __init__(
        self,
        dim: int,
        num_groups: int,
        heads: int,
        assignment: str = "hard",
        tau: float = 1.0,
        carry: bool = True,
    ) -> None:
        super().__init__()
        self.assignment = assignment
        self.tau = tau
        self.class_tokens = nn.Parameter(torch.zeros(num_groups, dim))
        nn.init.trunc_normal_(self.class_tokens, std=0.02)
        self.norm_aux = nn.LayerNorm(dim)
        self.norm_cls = nn.LayerNorm(dim)
        self.attn = TokenCrossAttention(dim, heads)
        self.assign_q = nn.Linear(dim, dim)
        self.assign_k = nn.Linear(dim, dim)
        self.update = nn.Linear(dim, dim) if carry else None

    def forward(self, aux: Tensor, carried: Tensor | None = None) -> CUPOutput:
        b = aux.shape[0]
        cls = self.class_tokens.unsqueeze(0).expand(b, -1, -1)
        if carried is not None:
            cls = cls + carried
        z = self.norm_aux(aux)
        cls = cls + self.attn(self.norm_cls(cls), z)[0]
        logits = self.assign_q(z) @ self.assign_k(self.norm_cls(cls)).transpose(1, 2)
        logits = logits * aux.shape[-1] ** -0.5  # [B, N, K]
        weights = assign(logits, self.assignment, self.tau, self.training)
        mass = weights.sum(dim=1).unsqueeze(-1)  # [B, K, 1]
        grouped = weights.transpose(1, 2) @ aux / (mass + 1e-6)  # [B, K, d]
        prompts = cls + grouped
        if self.update is not None:
            aux = aux + self.update(weights @ prompts)
        return CUPOutput(aux, cls, prompts, logits, weights)


class Projection(nn.Module):
    """Down (backbone width D -> d_p) and up (d_p -> D) projections for ACP.

    These dominate the prompter budget at ViT-B width (2 * 768 * d_p each), so GoPT can
    share one pair between all injection points of the same width."""

    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, dim)
        self.up = nn.Linear(dim, width)


class ProjectionBank(nn.Module):
    """The ACP projections of all prompted points: one per backbone width when shared
    (the default, which keeps ViT-B under the 1% budget), one per point otherwise."""

    def __init__(self, widths: dict[int, int], dim: int, shared: bool = True) -> None:
        super().__init__()
        self.key_of = {i: (f"w{w}" if shared else f"p{i}") for i, w in widths.items()}
        self.bank = nn.ModuleDict()
        for i, key in self.key_of.items():
            if key not in self.bank:
                self.bank[key] = Projection(widths[i], dim)

    def for_point(self, index: int) -> Projection:
        return self.bank[self.key_of[index]]


def prompted_points(strides: list[int], every: int, min_stride: int = 1) -> list[int]:
    """Indices of the injection points that get a prompter: every n-th, from the first
    point whose stride is at least ``min_stride``.

    On a CNN the first stages run at stride 2 and 4, where a prompter sees 4-16x more
    tokens than at stride 8 and costs more than the frozen stage it follows; ViT points
    all share the patch stride, so ``min_stride`` does not change them."""
    eligible = [i for i, s in enumerate(strides) if s >= min_stride] or [len(strides) - 1]
    return eligible[::every]


@dataclass
class ACPOutput:
    rgb: Tensor  # RGB tokens with the gated prompt answer added [B, N, D]
    attention: Tensor  # RGB tokens' attention over the prompts [B, N, K]


class ACP(nn.Module):
    """Alignment-induced Cross-modal Prompter: RGB tokens query the grouped prompts.

    X' = X + gate * up(Attn(q, LN(P))), q = down(LN(X)) [+ LN(Z)]. The per-channel gate
    starts at zero, so until it is trained the RGB features are exactly those of the
    frozen backbone.

    ``query="rgb+aux"`` (our default) adds the co-located auxiliary token Z to the
    query. With RGB alone, every location chooses among the K prompts by what it looks
    like optically; where the optical signal is gone (cloud), all locations ask the same
    question and get the same answer, so no per-location SAR information can reach the
    RGB stream. ``query="rgb"`` is the pure form, kept for the ablation.
    """

    def __init__(self, width: int, dim: int, heads: int, query: str = "rgb+aux") -> None:
        super().__init__()
        if query not in ("rgb", "rgb+aux"):
            raise ValueError(f"ACP query must be 'rgb' or 'rgb+aux', got {query!r}")
        self.query = query
        self.norm_rgb = nn.LayerNorm(width)
        self.norm_prompt = nn.LayerNorm(dim)
        self.norm_aux = nn.LayerNorm(dim) if query == "rgb+aux" else None
        self.attn = TokenCrossAttention(dim, heads)
        self.gate = nn.Parameter(torch.zeros(width))

    def forward(
        self, rgb: Tensor, prompts: Tensor, projection: Projection, aux: Tensor | None = None
    ) -> ACPOutput:
        query = projection.down(self.norm_rgb(rgb))
        if self.norm_aux is not None:
            if aux is None:
                raise ValueError("ACP with query='rgb+aux' needs the auxiliary tokens")
            query = query + self.norm_aux(aux)
        answer, attention = self.attn(query, self.norm_prompt(prompts))
        return ACPOutput(rgb + self.gate * projection.up(answer), attention)


@dataclass
class PromptStep:
    """Result of one grouping prompter: new RGB tokens and the state for the next point."""

    rgb: Tensor
    cup: CUPOutput
    attention: Tensor


class GroupingPrompter(nn.Module):
    """CUP then ACP at one injection point."""

    def __init__(
        self,
        width: int,
        dim: int,
        num_groups: int,
        heads: int = 4,
        assignment: str = "hard",
        tau: float = 1.0,
        carry: bool = True,
        query: str = "rgb+aux",
    ) -> None:
        super().__init__()
        self.cup = CUP(dim, num_groups, heads, assignment, tau, carry)
        self.acp = ACP(width, dim, heads, query)

    def forward(
        self, rgb: Tensor, aux: Tensor, carried: Tensor | None, projection: Projection
    ) -> PromptStep:
        cup = self.cup(aux, carried)
        acp = self.acp(rgb, cup.prompts, projection, aux)
        return PromptStep(acp.rgb, cup, acp.attention)


class AuxEmbedding(nn.Module):
    """Auxiliary bands -> d_p tokens at the first prompted point's stride (a patch conv)."""

    def __init__(self, in_channels: int, dim: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=stride, stride=stride)
        self.norm = nn.LayerNorm(dim)

    def forward(self, aux: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(aux)
        grid = (x.shape[-2], x.shape[-1])
        return self.norm(x.flatten(2).transpose(1, 2)), grid


def resample_tokens(tokens: Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Carry tokens [B, h*w, d] to another grid: average-pool down, bilinear up."""
    if grid == new_grid:
        return tokens
    b, _, d = tokens.shape
    x = tokens.transpose(1, 2).reshape(b, d, *grid)
    if new_grid[0] <= grid[0] and new_grid[1] <= grid[1]:
        x = F.adaptive_avg_pool2d(x, new_grid)
    else:
        x = F.interpolate(x, size=new_grid, mode="bilinear", align_corners=False)
    return x.flatten(2).transpose(1, 2)


def labels_to_grid(target: Tensor, grid: tuple[int, int], num_classes: int) -> Tensor:
    """Majority label of each token cell [B, h, w]; IGNORE_INDEX where no pixel is labelled.

    A mode rather than nearest sampling, so that a cell's label describes the cell, not
    one pixel of it."""
    valid = (target != IGNORE_INDEX).unsqueeze(1)
    index = torch.where(valid, target.unsqueeze(1), 0).long()
    b, _, h, w = index.shape
    onehot = torch.zeros(b, num_classes, h, w, device=target.device)
    onehot.scatter_(1, index, valid.float())
    counts = F.adaptive_avg_pool2d(onehot, grid)
    best, label = counts.max(dim=1)
    return torch.where(best > 0, label, torch.full_like(label, IGNORE_INDEX))


def class_aware_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy between assignment logits [B, N, K] and token-grid labels [B, h, w]."""
    b, h, w = labels.shape
    flat = labels.reshape(b, h * w)
    total = F.cross_entropy(
        logits.transpose(1, 2), flat, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    # mean over labelled cells; 0 (not NaN) when none is labelled, without a device sync
    return total / (flat != IGNORE_INDEX).sum().clamp_min(1)


def alignment_loss(attention: Tensor, logits: Tensor, tau: float = 1.0) -> Tensor:
    """KL(aux assignment || RGB attention), token by token, averaged.

    The auxiliary assignment (detached: it is the teacher) says which group a location
    belongs to; the RGB token at that location should attend to that group."""
    target = torch.softmax(logits.detach() / tau, dim=-1)
    log_attention = torch.log(attention.clamp_min(1e-8))
    return F.kl_div(log_attention, target, reduction="none").sum(-1).mean()
