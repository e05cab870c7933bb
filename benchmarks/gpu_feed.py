"""Issue 26: how many patches per second GoPT-ViT-B training consumes on a GPU, and so
how many loader workers keep one fed.

No GPU was at hand when this was written, so the GPU side is an **estimate** from
measured FLOPs: torch's ``FlopCounterMode`` counts one training step of GoPT on a
frozen ViT-B/16 (``configs/whu-os.yaml``'s model: prompters between every block, the
detail path, 512² patches, batch 1) forward and backward, with the activation
checkpointing of the default (a third of the blocks recomputed). Patches per second
= sustained bf16 throughput / FLOPs per patch, for a range of GPUs at a stated model
FLOPs utilisation (MFU). The loader side is measured: ``benchmarks/loader_rate.py``'s
patches per second per process from the disk cache (its saved JSON). Workers a GPU
needs = GPU patches/s / one worker's patches/s, rounded up.

    ./run python benchmarks/gpu_feed.py
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

#: GPU -> dense bf16 tensor TFLOP/s (vendor peak)
GPUS = {"A100": 312.0, "L40S": 362.0, "H100 SXM": 989.0, "H200": 989.0}
#: model FLOPs utilisation assumed for the estimate (a ViT-B at batch 8-32 in bf16)
MFU = 0.35


def step_flops(patch: int) -> dict[str, float]:
    """FLOPs of one GoPT-ViT-B training step on one ``patch``² patch (forward, backward)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from gopt_geo.config import load_config
    from gopt_geo.models import ModelConfig, build_model

    cfg = load_config(Path(C.ROOT) / "configs" / "whu-os.yaml", [])
    model_cfg = ModelConfig(
        **{
            **cfg.model.__dict__,
            "weights": "random",
            "num_classes": 7,
            "aux_channels": 2,
        }
    )
    model = build_model(model_cfg)
    model.set_backbone_checkpointing(cfg.train.checkpoint_backbone)
    model.train()
    model.backbone.eval()  # frozen, as in training
    rgb = torch.randn(1, 3, patch, patch)
    aux = torch.randn(1, 2, patch, patch)
    target = torch.randint(0, 7, (1, patch, patch))
    with FlopCounterMode(display=False) as fwd:
        out = model(rgb, aux, target)
    loss = torch.nn.functional.cross_entropy(out.logits, target) + sum(out.losses.values())
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    report = model.parameter_report()
    return {
        "forward": float(fwd.get_total_flops()),
        "backward": float(bwd.get_total_flops()),
        "trainable": report.trainable,
        "total": report.total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, default=512)
    parser.add_argument("--work", type=Path, default=C.DEFAULT_WORK)
    parser.add_argument("--quick", action="store_true", help="print only")
    args = parser.parse_args()
    C.quiet()
    flops = step_flops(args.patch)
    per_patch = flops["forward"] + flops["backward"]
    loader = args.work / "results" / "loader_rate.json"
    rate: dict[str, Any] = json.loads(loader.read_text()) if loader.exists() else {}
    per_worker = rate.get("rates", {}).get("disk cache")
    rows = []
    for gpu, peak in GPUS.items():
        patches = peak * 1e12 * MFU / per_patch
        need = math.ceil(patches / per_worker) if per_worker else "-"
        rows.append([gpu, f"{peak:.0f}", f"{patches:,.0f}", need])
    lines = [
        f"Command: `{C.command_line()}`",
        "",
        C.machine_line(C.machine()),
        "",
        f"**An estimate, not a GPU measurement** (no GPU was available). Counted by torch's "
        f"FlopCounterMode: one GoPT-ViT-B/16 training step (`configs/whu-os.yaml`'s model, "
        f"{args.patch}² patch, frozen backbone with a third of its blocks checkpointed) is "
        f"{flops['forward'] / 1e9:,.0f} GFLOP forward + {flops['backward'] / 1e9:,.0f} GFLOP "
        f"backward = {per_patch / 1e9:,.0f} GFLOP per patch ({flops['trainable']:,} of "
        f"{flops['total']:,} parameters trained). At {100 * MFU:.0f} % of each GPU's dense "
        "bf16 peak:",
        "",
        C.table(["GPU", "bf16 peak TFLOP/s", "patches/s consumed", "loader workers needed"], rows),
        "",
        (
            f"One loader process serves {per_worker:.0f} patches/s of {rate.get('patch', '?')}² "
            "from the disk cache (`benchmarks/loader_rate.py`, this machine's CPU); workers "
            "needed = GPU patches/s / that, rounded up."
            if per_worker
            else "Run `benchmarks/loader_rate.py` first for the loader's rate per worker."
        ),
    ]
    C.publish("gpu_feed", "GPU feed (issue 26)", "\n".join(lines), args.quick)


if __name__ == "__main__":
    main()
