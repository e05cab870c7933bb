"""Issue 23: what the detail path costs, per training step and per prediction.

GoPT on a randomly initialised EfficientNet-Lite0 (speed does not depend on the
weights), the demo's widths (prompt 32, decoder 48, soft assignment), batch 8 of 128²
patches with 3 auxiliary bands, one torch thread: a training step (forward, loss,
backward, AdamW step) and an inference forward, with and without ``model.detail_path``
(``DETAIL_DIM`` channels, default 16), in 3 interleaved rounds of 9 repeats; the ratios
are medians of per-round ratios. Printed only (quoted in RESULTS.md's issue-23 summary).

    ./run python benchmarks/detail_path_cost.py
    DETAIL_DIM=8 ./run python benchmarks/detail_path_cost.py
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from gopt_geo.models import ModelConfig, build_model

BASE = {
    "backbone": "efficientnet_lite0",
    "weights": "random",
    "prompt_dim": 32,
    "decoder_dim": 48,
    "assignment": "soft",
}


def step_times(cfg: ModelConfig, reps: int = 9) -> tuple[float, float, int]:
    """Median training-step and inference seconds, and the trainable parameters."""
    model = build_model(cfg)
    model.train()
    model.backbone.eval()  # frozen, as in training
    opt = torch.optim.AdamW(model.trainable_parameters(), 1e-3)
    rgb, aux = torch.randn(8, 3, 128, 128), torch.randn(8, 3, 128, 128)
    target = torch.randint(0, 7, (8, 128, 128))
    train = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = model(rgb, aux, target)
        loss = torch.nn.functional.cross_entropy(out.logits, target) + sum(out.losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        train.append(time.perf_counter() - t0)
    model.eval()
    infer = []
    with torch.no_grad():
        for _ in range(reps):
            t0 = time.perf_counter()
            model(rgb, aux)
            infer.append(time.perf_counter() - t0)
    return statistics.median(train), statistics.median(infer), model.parameter_report().trainable


def main() -> None:
    torch.set_num_threads(1)
    dim = int(os.environ.get("DETAIL_DIM", "16"))
    ratios = []
    for _ in range(3):
        off = step_times(ModelConfig(**BASE))
        on = step_times(ModelConfig(**BASE, detail_path=True, detail_dim=dim))
        ratios.append((on[0] / off[0], on[1] / off[1], off[2], on[2]))
    print(
        f"detail_dim {dim}: training step {statistics.median(r[0] for r in ratios):.2f}x, "
        f"prediction {statistics.median(r[1] for r in ratios):.2f}x; trainable "
        f"{ratios[0][2]:,} -> {ratios[0][3]:,}"
    )


if __name__ == "__main__":
    main()
