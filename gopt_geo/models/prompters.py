"""Grouping prompters: CUP groups the auxiliary tokens, ACP lets the RGB tokens read the groups.

design §3. At every injection point the auxiliary (SAR, NIR, ...) tokens are grouped
around K class tokens (CUP) and the frozen backbone's RGB tokens query the K grouped
prompts (ACP); the answer is added to the RGB stream through a zero-initialised gate,
so an untrained model is exactly the frozen backbone. In the default form all attention
is between N tokens and K (or M) prompts, O(N*K); two switches of the paper's ablations
(``cup_attention: self`` and ``prompters: acp``) attend token to token, O(N^2).

Readings of the paper that are switches (``ModelConfig``, README "GoPT as implemented
here"): CUP's attention (`CUP`, ``attention``), CUP and ACP alone (`GroupingPrompter`,
``parts``), the assignment's logits and schedule (``CUP.scale``; `assign`'s ``noise`` and
``mix``) and where CUP's groups come from (`CUPContext`: the window itself, or a
whole-scene pass).

Why one module over 500 lines: CUP, ACP and the grouping prompter are one algorithm
(the paper's prompter), with the switches between its readings beside the code they
switch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gopt_geo.constants import IGNORE_INDEX


def assign(
    logits: Tensor, mode: str, tau: float, training: bool, noise: float = 1.0, mix: float = 1.0
) -> Tensor:
    """Token-to-group assignment weights [B, N, K] from logits [B, N, K].

    ``hard``: Gumbel-Softmax with a straight-through estimator while training (one-hot
    forward, soft gradients backward), plain argmax one-hot at inference (deterministic).
    ``soft``: softmax(logits / tau), training and inference alike.

    tau does not change the hard *forward* sample: argmax((logits + g) / tau) =
    argmax(logits + g); it only shapes the straight-through gradient. What decides how often
    a training sample differs from the inference argmax is the noise against the logits:
    ``noise`` scales the Gumbel noise (the sample is drawn from softmax(logits / noise)),
    1 is standard Gumbel-Softmax, 0 the deterministic straight-through argmax, which is
    what inference does. The training schedule (``ModelConfig.anneal``) takes it from 1
    to 0.

    ``mix`` (hard, training only) blends the two: (1 - mix) softmax(logits / tau) + mix
    times the straight-through sample above. 1 is the hard assignment, 0 the soft one; the
    gradient is the softmax's either way (the straight-through part passes it), only the
    forward moves from soft weights to one-hot. The training schedule
    (``ModelConfig.soft_to_hard``) takes it from 0 to 1: the groups form under soft
    assignment, which learns groups = classes by itself, and the model ends training on the
    one-hot groups it predicts with (RESULTS.md, paper ablations).
    """
    if mode == "hard" and training and mix < 1.0:
        soft = torch.softmax(logits / tau, dim=-1)
        if mix <= 0.0:
            return soft
        return (1.0 - mix) * soft + mix * assign(logits, mode, tau, training, noise)
    if mode == "soft":
        return torch.softmax(logits / tau, dim=-1)
    if mode != "hard":
        raise ValueError(f"assignment must be 'hard' or 'soft', got {mode!r}")
    if not training:
        index = logits.argmax(dim=-1)
        return F.one_hot(index, logits.shape[-1]).to(logits.dtype)
    if noise == 1.0:
        return F.gumbel_softmax(logits, tau=tau, hard=True, dim=-1)
    if noise > 0.0:
        gumbels = -torch.empty_like(logits).exponential_().log()
        logits = logits + noise * gumbels
    soft = torch.softmax(logits / tau, dim=-1)
    hard = F.one_hot(soft.argmax(dim=-1), logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


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

    def forward(
        self, query: Tensor, context: Tensor, need_weights: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """``query`` [B, N, d], ``context`` [B, M, d] -> (output [B, N, d], attention [B, N, M]
        averaged over heads, or None without ``need_weights``).

        Without ``need_weights`` the fused kernel runs and no [N, M] map is stored: what
        ``prompters: acp`` needs, whose context is the N auxiliary tokens themselves."""
        b, n, d = query.shape
        m = context.shape[1]
        h = self.heads
        q = self.q(query).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, m, 2, h, d // h).permute(2, 0, 3, 1, 4)
        if not need_weights:
            out = F.scaled_dot_product_attention(q, k, v)
            return self.proj(out.transpose(1, 2).reshape(b, n, d)), None
        attn = torch.softmax(q @ k.transpose(-2, -1) * (d // h) ** -0.5, dim=-1)  # [B, h, N, M]
        out = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(out), attn.mean(dim=1)

    def self_attend(self, tokens: Tensor) -> Tensor:
        """Self-attention of [B, T, d] tokens with the same weights (``cup_attention: self``):
        O(T^2) compute, the fused kernel keeps memory at O(T)."""
        return self.forward(tokens, tokens, need_weights=False)[0]


@dataclass
class CUPOutput:
    """What CUP hands to ACP and to the next injection point."""

    aux: Tensor  # updated auxiliary tokens [B, N, d], carried to the next point
    class_tokens: Tensor  # updated class tokens [B, K, d], carried to the next point
    prompts: Tensor  # grouped prompts P [B, K, d], read by ACP
    logits: Tensor  # assignment logits [B, N, K] (class-aware loss, alignment target)
    assignment: Tensor  # assignment weights [B, N, K] (one-hot when hard)
    class_tokens_in: Tensor  # class tokens before CUP's attention [B, K, d] (scene context)

    def context(self) -> CUPContext:
        """This step's window-level quantities, to be reused for other windows."""
        return CUPContext(
            self.class_tokens_in.detach(), self.class_tokens.detach(), self.prompts.detach()
        )


@dataclass
class CUPContext:
    """CUP's window-level quantities at one point, taken from another pass (the scene).

    Everything else CUP computes is per token (assignment, token update), so with these
    fixed a token's result no longer depends on which window it was predicted in.
    """

    class_tokens_in: Tensor  # [1, K, d]: class tokens before attention (self-attention form)
    class_tokens: Tensor  # [1, K, d]: class tokens after attention (assignment keys)
    prompts: Tensor  # [1, K, d]: grouped prompts (ACP keys/values, token update)

    def to(self, device: torch.device | str) -> CUPContext:
        return CUPContext(*(t.to(device) for t in dataclasses.astuple(self)))


class CUP(nn.Module):
    """Class-aware Uni-modal Prompter: groups auxiliary tokens around K class tokens.

    1. The class tokens (this point's learnable tokens plus those carried from the
       previous point) attend to the auxiliary tokens: C' = C + Attn(C, Z)
       (``attention="cross"``, O(N*K)). ``attention="self"`` is the other published
       reading: self-attention over [C; Z], which also updates every auxiliary token from
       every other one, O((N+K)^2) (fused kernel: memory O(N+K), compute quadratic).
    2. Each auxiliary token is assigned to one class token (``assign``). The logits are
       q.k / sqrt(d) (``scale=None``), or ``scale * cos(q, k)`` (``ModelConfig.assign_scale``):
       bounded, so that the straight-through gradient of hard assignment cannot drive
       them to 25-100, as it does unbounded (measured: RESULTS.md, paper ablations).
    3. The grouped prompts are the assignment-weighted means of the auxiliary tokens plus
       the updated class tokens: P = C' + sum_n a_nk Z_n / sum_n a_nk. The divisor is
       mass + 1e-6 (``mass_floor=None``) or max(mass, mass_floor)
       (``ModelConfig.group_mass_floor``). Why the floor: with a hard (one-hot) forward a
       group no token chose has mass 0, and the straight-through gradient of its mean with
       respect to a token's weight is Z_n / 1e-6: a million times a token's features, which
       throws the assignment logits around (class-aware loss 0.4 -> 4.6 within 30 steps of
       the forward turning one-hot, RESULTS.md paper ablations). With a floor of 1 an empty
       group's forward is unchanged (0) and that gradient is Z_n.
    4. Each auxiliary token receives its group's prompt: Z' = Z + W (a P), so the tokens
       carried to the next point, and hence the prompts, change with depth. The last
       prompted point has nothing to carry to (``carry=False``) and skips this step.

    Steps 1 and 3 are the only ones that look at the whole window. With a ``context``
    (`CUPContext` from a whole-scene pass) C' and P are taken from it instead, and the
    result at a token depends only on that token (``cup_context: scene``).

    ``tau``, ``noise`` and ``mix`` (soft -> hard, `assign`) are set by the training
    schedule (`GoPTSegmenter.set_progress`); in eval mode ``tau_final`` is used (and hard
    assignment is the argmax), so a model predicts as it will at the end of training.
    """

    def __init__(
        self,
        dim: int,
        num_groups: int,
        heads: int,
        assignment: str = "hard",
        tau: float = 1.0,
        carry: bool = True,
        attention: str = "cross",
        scale: float | None = None,
        mass_floor: float | None = None,
    ) -> None:
        super().__init__()
        if attention not in ("cross", "self"):
            raise ValueError(f"CUP attention must be 'cross' or 'self', got {attention!r}")
        self.assignment = assignment
        self.attention = attention
        self.scale = scale
        self.mass_floor = mass_floor
        self.tau = tau
        self.tau_final = tau
        self.noise = 1.0
        self.mix = 1.0
        self.class_tokens = nn.Parameter(torch.zeros(num_groups, dim))
        nn.init.trunc_normal_(self.class_tokens, std=0.02)
        self.norm_aux = nn.LayerNorm(dim)
        self.norm_cls = nn.LayerNorm(dim)
        self.attn = TokenCrossAttention(dim, heads)
        self.assign_q = nn.Linear(dim, dim)
        self.assign_k = nn.Linear(dim, dim)
        self.update = nn.Linear(dim, dim) if carry else None

    def forward(
        self, aux: Tensor, carried: Tensor | None = None, context: CUPContext | None = None
    ) -> CUPOutput:
        b = aux.shape[0]
        if context is None:
            cls_in = self.class_tokens.unsqueeze(0).expand(b, -1, -1)
            if carried is not None:
                cls_in = cls_in + carried
        else:
            cls_in = context.class_tokens_in.expand(b, -1, -1)
        z = self.norm_aux(aux)
        if self.attention == "self":
            k = cls_in.shape[1]
            out = self.attn.self_attend(torch.cat([self.norm_cls(cls_in), z], dim=1))
            cls = cls_in + out[:, :k]
            aux = aux + out[:, k:]
            z = self.norm_aux(aux)
        elif context is None:
            cls = cls_in + self.attn(self.norm_cls(cls_in), z)[0]
        if context is not None:
            cls = context.class_tokens.expand(b, -1, -1)
        q, k = self.assign_q(z), self.assign_k(self.norm_cls(cls))
        if self.scale is None:
            logits = q @ k.transpose(1, 2) * aux.shape[-1] ** -0.5  # [B, N, K]
        else:  # bounded: |logit| <= scale
            logits = self.scale * F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(1, 2)
        tau = self.tau if self.training else self.tau_final
        weights = assign(logits, self.assignment, tau, self.training, self.noise, self.mix)
        if context is None:
            mass = weights.sum(dim=1).unsqueeze(-1)  # [B, K, 1]
            if self.mass_floor is None:
                grouped = weights.transpose(1, 2) @ aux / (mass + 1e-6)  # [B, K, d]
            else:
                grouped = weights.transpose(1, 2) @ aux / mass.clamp_min(self.mass_floor)
            prompts = cls + grouped
        else:
            prompts = context.prompts.expand(b, -1, -1)
        if self.update is not None:
            aux = aux + self.update(weights @ prompts)
        return CUPOutput(aux, cls, prompts, logits, weights, cls_in)


class Projection(nn.Module):
    """Down (backbone width D -> d_p) and up (d_p -> D) projections for ACP.

    These dominate the prompter budget at ViT-B width (2 * 768 * d_p each), so GoPT can
    share one pair between all injection points of the same width. A direction nothing
    reads is not built (``prompters: cup`` never projects down): an unused parameter
    would only cost memory and break distributed training's gradient bookkeeping."""

    def __init__(self, width: int, dim: int, down: bool = True, up: bool = True) -> None:
        super().__init__()
        self.down = nn.Linear(width, dim) if down else None
        self.up = nn.Linear(dim, width) if up else None


class ProjectionBank(nn.Module):
    """The ACP projections of all prompted points: one per backbone width when shared
    (the default, which keeps ViT-B under the 1% budget), one per point otherwise.

    ``down=False`` builds no down projections; ``up_points`` (None: all) names the points
    that project up, so that a shared projection has an up half only if one of its points
    uses it."""

    def __init__(
        self,
        widths: dict[int, int],
        dim: int,
        shared: bool = True,
        down: bool = True,
        up_points: Collection[int] | None = None,
    ) -> None:
        super().__init__()
        self.key_of = {i: (f"w{w}" if shared else f"p{i}") for i, w in widths.items()}
        up_keys = {key for i, key in self.key_of.items() if up_points is None or i in up_points}
        self.bank = nn.ModuleDict()
        for i, key in self.key_of.items():
            if key not in self.bank:
                self.bank[key] = Projection(widths[i], dim, down, key in up_keys)

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
    attention: Tensor | None  # RGB tokens' attention over the prompts [B, N, K]


class ACP(nn.Module):
    """Alignment-induced Cross-modal Prompter: RGB tokens query the grouped prompts.

    X' = X + gate * up(Attn(q, LN(P))), q = down(LN(X)) [+ LN(Z)]. The per-channel gate
    starts at zero, so until it is trained the RGB features are exactly those of the
    frozen backbone.

    ``query="rgb+aux"`` (our default) adds the co-located auxiliary token Z to the
    query. With RGB alone, every location chooses among the K prompts by what it looks
    like optically; where the optical signal is gone (cloud), all locations ask the same
    question and get the same answer, so no per-location SAR information can reach the
    RGB stream. ``query="rgb"`` is the pure form (the paper's, configs/whu-os-paper.yaml).
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
        self,
        rgb: Tensor,
        prompts: Tensor,
        projection: Projection,
        aux: Tensor | None = None,
        need_weights: bool = True,
    ) -> ACPOutput:
        assert projection.down is not None and projection.up is not None
        query = projection.down(self.norm_rgb(rgb))
        if self.norm_aux is not None:
            if aux is None:
                raise ValueError("ACP with query='rgb+aux' needs the auxiliary tokens")
            query = query + self.norm_aux(aux)
        answer, attention = self.attn(query, self.norm_prompt(prompts), need_weights)
        return ACPOutput(rgb + self.gate * projection.up(answer), attention)


class GroupInjection(nn.Module):
    """``prompters: cup`` (CUP without ACP): each RGB token receives the prompt of the group
    its co-located auxiliary token was assigned to, X' = X + gate * up(LN(a P)).

    The RGB token has no say in which prompt it gets (no cross-modal query): that is what
    removing ACP means. Zero-initialised gate, as ACP's."""

    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        self.norm_prompt = nn.LayerNorm(dim)
        self.gate = nn.Parameter(torch.zeros(width))

    def forward(self, rgb: Tensor, cup: CUPOutput, projection: Projection) -> Tensor:
        assert projection.up is not None
        own = cup.assignment @ cup.prompts  # [B, N, d]: each token's group prompt
        return rgb + self.gate * projection.up(self.norm_prompt(own))


@dataclass
class PromptStep:
    """Result of one grouping prompter: new RGB tokens and the state for the next point.

    ``cup`` is None with ``prompters: acp``; ``attention`` (ACP's, the alignment loss's
    input) is None with ``prompters: cup`` and ``prompters: acp``."""

    rgb: Tensor
    cup: CUPOutput | None
    attention: Tensor | None


#: ``ModelConfig.prompters`` values: which of CUP and ACP a grouping prompter has.
PROMPTER_PARTS = ("cup+acp", "cup", "acp")


class GroupingPrompter(nn.Module):
    """CUP then ACP at one injection point; ``parts`` removes one (the paper's ablation).

    - ``cup+acp``: CUP groups the auxiliary tokens, ACP lets the RGB tokens query the groups.
    - ``cup``: CUP, then each RGB token gets its own group's prompt (`GroupInjection`).
    - ``acp``: no grouping; the RGB tokens query the N auxiliary tokens directly (O(N^2),
      fused attention kernel, no attention map kept, hence no alignment loss).
    """

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
        parts: str = "cup+acp",
        attention: str = "cross",
        scale: float | None = None,
        mass_floor: float | None = None,
    ) -> None:
        super().__init__()
        if parts not in PROMPTER_PARTS:
            raise ValueError(f"prompter parts must be one of {PROMPTER_PARTS}, got {parts!r}")
        self.parts = parts
        self.cup = (
            CUP(dim, num_groups, heads, assignment, tau, carry, attention, scale, mass_floor)
            if parts != "acp"
            else None
        )
        if parts == "cup":
            self.inject = GroupInjection(width, dim)
        else:
            self.acp = ACP(width, dim, heads, query)

    def forward(
        self,
        rgb: Tensor,
        aux: Tensor,
        carried: Tensor | None,
        projection: Projection,
        context: CUPContext | None = None,
    ) -> PromptStep:
        if self.cup is None:
            acp = self.acp(rgb, aux, projection, aux, need_weights=False)
            return PromptStep(acp.rgb, None, None)
        cup = self.cup(aux, carried, context)
        if self.parts == "cup":
            return PromptStep(self.inject(rgb, cup, projection), cup, None)
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


class AuxToImage(nn.Module):
    """``aux_path: backbone``: the auxiliary bands as a 3-channel image for the frozen stem.

    A trainable 1x1 conv (3A + 3 parameters), initialised so that each of the three
    channels is the mean of the normalised auxiliary bands: a SAR band is fed as a grey
    image, the usual way to put a one-band image through an RGB-pretrained model."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, 3, kernel_size=1)
        with torch.no_grad():
            self.proj.weight.fill_(1.0 / in_channels)
            self.proj.bias.zero_()

    def forward(self, aux: Tensor) -> Tensor:
        return self.proj(aux)


class AuxStreamLink(nn.Module):
    """``aux_path: backbone``, one prompted point: how CUP reads the auxiliary stream of the
    frozen backbone and writes its update back.

    Read: Z = down(LN(tokens)) (the projection shared per width, as ACP's). Write (points
    that carry to a later point): tokens + gate * up(Z' - Z), zero-initialised gate, so the
    auxiliary stream starts as the frozen backbone's own features of the auxiliary image."""

    def __init__(self, width: int, carry: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.gate = nn.Parameter(torch.zeros(width)) if carry else None


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
