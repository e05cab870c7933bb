"""Issue 23: what the detail path costs, per training step and per prediction.

Two models, each with and without ``model.detail_path`` (randomly initialised backbones:
speed does not depend on the weights):

- ``demo``: GoPT on EfficientNet-Lite0 with the demo's widths (prompt 32, decoder 48,
  soft assignment), batch 8 of 128² patches, 3 auxiliary bands (``configs/demo.yaml``);
  the worst case, since Lite0 does little work per pixel;
- ``whu-os``: GoPT on ViT-B/16 with ``configs/whu-os.yaml``'s widths (prompt 48, decoder
  64, hard assignment, side path), batch 1 of 512² patches, 2 auxiliary bands: the
  headline job.

A training step is forward, loss, backward and AdamW step; a prediction is an inference
forward. Three models per row (no detail path; with it, training scoring one pixel per
2x2 block, the default ``model.detail_sample_block``; with it, scoring every pixel), their
calls interleaved one by one in one process (this VM's speed drifts by 10-20 % between
minutes), the ratios medians of per-call ratios. Then ``predict`` as the command runs
it (`Predictor.predict`: read, tile with the default margin, model, blend, write the
COG) on a synthetic scene (1024² unless ``--scene``), each model with and without the
detail path, calls interleaved. Torch keeps its default threads (every core) unless
``--threads`` says otherwise.

    ./run python benchmarks/detail_path_cost.py
    ./run python benchmarks/detail_path_cost.py --models demo --threads 1 --quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from gopt_geo.models import ModelConfig, build_model  # noqa: E402

#: name -> (model settings, batch, patch, auxiliary bands, repeats per round)
MODELS: dict[str, tuple[dict[str, Any], int, int, int, int]] = {
    "demo": (
        {
            "backbone": "efficientnet_lite0",
            "weights": "random",
            "prompt_dim": 32,
            "decoder_dim": 48,
            "assignment": "soft",
            "aux_channels": 3,
        },
        8,
        128,
        3,
        7,
    ),
    "whu-os": (
        {
            "backbone": "vit_base_patch16_224.mae",
            "weights": "random",
            "prompt_dim": 48,
            "decoder_dim": 64,
            "assignment": "hard",
            "acp_query": "rgb+aux",
            "aux_channels": 2,
        },
        1,
        512,
        2,
        2,
    ),
}


def model_calls(cfg: ModelConfig, batch: int, patch: int, aux: int) -> tuple[Any, Any, int]:
    """A training step and an inference call of the model ``cfg`` on random inputs
    (speed does not depend on the weights), and its trainable parameters."""
    torch.manual_seed(0)
    model = build_model(cfg)
    model.set_backbone_checkpointing("auto")
    opt = torch.optim.AdamW(model.trainable_parameters(), 1e-3)
    rgb, extra = torch.randn(batch, 3, patch, patch), torch.randn(batch, aux, patch, patch)
    target = torch.randint(0, cfg.num_classes, (batch, patch, patch))

    def step() -> None:
        model.train()
        model.backbone.eval()  # frozen, as in training
        out = model(rgb, extra, target)
        loss = torch.nn.functional.cross_entropy(out.logits, out.labels(target))
        loss = loss + sum(out.losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer() -> None:
        model.eval()
        with torch.no_grad():
            model(rgb, extra)

    return step, infer, model.parameter_report().trainable


def predict_times(
    settings: dict[str, Any], size: int, work: Path, rounds: int, window: int
) -> tuple[float, float]:
    """``gopt-geo predict``'s own pipeline (`Predictor.predict`: read, tile with the
    default margin, model, blend, write the COG) on a ``size``² synthetic scene, the model
    with and without the detail path; calls interleaved, medians (seconds without, ratio)."""
    from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
    from gopt_geo.inference import Predictor

    files = C.scene(work, size)
    routing = C.routing()  # B, G, R, NIR + VV, VH: three auxiliary bands for either model
    options = C.predict_options(window=window, confidence=False)
    steps = {}
    for key, detail in (("off", False), ("on", True)):
        torch.manual_seed(0)
        cfg = ModelConfig(**{**settings, "aux_channels": routing.num_aux}, detail_path=detail)
        predictor = Predictor(build_model(cfg).eval(), routing, WHU_OPT_SAR_CLASSES, device="cpu")
        out = work / "out" / f"detail_cost_{key}"
        steps[key] = lambda p=predictor, o=out: p.predict(files.optical, files.sar, o, options)
    times, ratios = C.interleaved_ratios(steps, "off", rounds)
    return C.median(times["off"]), ratios["on"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--detail-dim", type=int, default=ModelConfig().detail_dim)
    parser.add_argument("--quick", action="store_true", help="1 round, RESULTS.md untouched")
    parser.add_argument("--work", type=Path, default=C.DEFAULT_WORK)
    parser.add_argument("--scene", type=int, default=1024, help="predict: scene size (px)")
    parser.add_argument("--window", type=int, default=512, help="predict: window (px)")
    parser.add_argument("--predict-rounds", type=int, default=5)
    args = parser.parse_args()
    C.quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    m = C.machine()
    rows = []
    for name in args.models.split(","):
        settings, batch, patch, aux, reps = MODELS[name]
        variants = {
            "off": ModelConfig(**settings),
            "on": ModelConfig(**settings, detail_path=True, detail_dim=args.detail_dim),
            "every pixel": ModelConfig(
                **settings, detail_path=True, detail_dim=args.detail_dim, detail_sample_block=1
            ),
        }
        calls = {key: model_calls(cfg, batch, patch, aux) for key, cfg in variants.items()}
        n = (2 if args.quick else args.rounds) * reps
        step_s, step_ratio = C.interleaved_ratios({k: c[0] for k, c in calls.items()}, "off", n)
        infer_s, infer_ratio = C.interleaved_ratios({k: c[1] for k, c in calls.items()}, "off", n)
        print(
            f"{name}: step {C.median(step_s['off']):.3f} s, with detail {step_ratio['on']:.2f}x "
            f"(every pixel {step_ratio['every pixel']:.2f}x); predict "
            f"{C.median(infer_s['off']):.3f} s, with detail {infer_ratio['on']:.2f}x"
        )
        rounds = 2 if args.quick else args.predict_rounds
        scene_s, scene_ratio = predict_times(settings, args.scene, args.work, rounds, args.window)
        print(f"{name}: predict {args.scene}² {scene_s:.2f} s, with detail {scene_ratio:.2f}x")
        rows.append(
            [
                f"`{name}` ({settings['backbone']}, batch {batch} x {patch}²)",
                f"{C.median(step_s['off']):.3f}",
                f"{step_ratio['on']:.2f}x",
                f"{step_ratio['every pixel']:.2f}x",
                f"{C.median(infer_s['off']):.3f}",
                f"{infer_ratio['on']:.2f}x",
                f"{scene_s:.2f}",
                f"{scene_ratio:.2f}x",
                f"{calls['on'][2] - calls['off'][2]:,}",
            ]
        )
    headers = [
        "model",
        "step s (no detail)",
        "step with detail",
        "... scoring every pixel",
        "predict s (no detail)",
        "predict with detail",
        f"`predict` {args.scene}² s (no detail)",
        "`predict` with detail",
        "detail parameters",
    ]
    body = "\n".join(
        [
            f"Command: `{C.command_line()}`",
            "",
            C.machine_line(m),
            "",
            f"Detail path `detail_dim` {args.detail_dim}, training scores one pixel per "
            f"{ModelConfig().detail_sample_block}x{ModelConfig().detail_sample_block} block "
            "(`model.detail_sample_block`; 1: every "
            f"pixel); calls interleaved one by one, {args.rounds} x repeats each, ratios are "
            "medians of per-call ratios (target: <= 1.15x). `predict`: window "
            f"{args.window}, default margin, {args.predict_rounds} interleaved calls of each.",
            "",
            C.table(headers, rows),
        ]
    )
    C.publish("detail_path_cost", "Detail path cost (issue 23)", body, args.quick)


if __name__ == "__main__":
    main()
