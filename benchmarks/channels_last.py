"""Issue 15, item 2: channels_last (NHWC) memory format for a frozen CNN backbone.

GoPT on EfficientNet-Lite0, the library's default (weights and feature maps in
channels_last, `FrozenBackbone.set_channels_last`) against the same model in NCHW:

- predict: what `Predictor` runs per batch (default window 512, batch 4; eval mode,
  ``torch.no_grad``), routing.prepare + model forward;
- train: one optimisation step as in ``training_cost.py`` (batch 8, patch 256, AdamW
  over the trainable tensors, activation checkpointing as training sets it: ``auto``).

Each (mode, format) runs in a fresh process (peak RSS its own), warm-up steps first; the
table gives the median time and the speed-up NCHW / NHWC, and the speed-up measured with
both formats in one process, step by step in alternating order (the one to quote: the
machine's speed drifts between the separate processes). A last child compares the
logits of both formats on the same input (max |difference|, class-map agreement).

    ./run python benchmarks/channels_last.py
    ./run python benchmarks/channels_last.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

#: The section this script writes, once _common.SECTIONS lists it (until then it prints).
SECTION = "channels_last"


def _inputs(args: dict[str, Any], batch: int, size: int) -> tuple[Any, Any, Any]:
    import torch

    from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES

    g = torch.Generator().manual_seed(0)
    image = torch.randn(batch, len(C.routing().all_bands), size, size, generator=g)
    mask = torch.randint(0, WHU_OPT_SAR_CLASSES.num_classes, (batch, size, size), generator=g)
    return image, mask, g


def _predict_step(model: Any, args: dict[str, Any]) -> Any:
    """One predict batch as `Predictor` runs it (a callable, timed by the caller)."""
    import torch

    routing = C.routing()
    image, _, _ = _inputs(args, args["predict_batch"], args["window"])
    model.eval()

    def step() -> None:
        with torch.no_grad():
            rgb, aux = routing.prepare(image)
            model(rgb, aux).logits.softmax(1)

    return step


def _train_step(model: Any, args: dict[str, Any]) -> Any:
    """One optimisation step as `training_cost.py` runs it (a callable)."""
    import torch
    from torch import nn

    from gopt_geo.data.classes import IGNORE_INDEX

    routing = C.routing()
    model.set_backbone_checkpointing("auto")
    model.train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    image, mask, _ = _inputs(args, args["train_batch"], args["patch"])

    def step() -> None:
        rgb, aux = routing.prepare(image)
        out = model(rgb, aux, target=mask)
        loss = criterion(out.logits, mask)
        for value in out.losses.values():
            loss = loss + 0.1 * value
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _timed(step: Any) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _interleaved(args: dict[str, Any]) -> dict[str, Any]:
    """Speed-up NCHW / channels_last with both models in one process, one step of each
    per round in alternating order: the machine's drift between minutes (10-20 %) stays
    out of the ratio, which separate processes one after another do not guarantee."""
    import torch

    make = _predict_step if args["mode"] == "predict" else _train_step
    steps = {}
    for fmt, key in ((False, "nchw"), (True, "nhwc")):
        torch.manual_seed(0)
        model = C.model("gopt", args["backbone"])
        model.backbone.set_channels_last(fmt)
        steps[key] = make(model, args)
    times, _ = C.interleaved_ratios(steps, "nhwc", args["rounds"], warmup=args["warmup"])
    # per round, for the spread the report gives beside the median
    return {"ratios": [n / c for n, c in zip(times["nchw"], times["nhwc"], strict=True)]}


def _numerics(model: Any, args: dict[str, Any]) -> dict[str, Any]:
    import torch

    routing = C.routing()
    image, _, _ = _inputs(args, args["predict_batch"], args["window"])
    model.eval()
    logits = {}
    with torch.no_grad():
        for fmt in (True, False):
            model.backbone.set_channels_last(fmt)
            logits[fmt] = model(*routing.prepare(image)).logits
    diff = (logits[True] - logits[False]).abs().max().item()
    agree = (logits[True].argmax(1) == logits[False].argmax(1)).float().mean().item()
    return {"max_abs_diff": diff, "class_agreement": agree}


def _measure(args: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    model = C.model("gopt", args["backbone"])
    if args["mode"] == "numerics":
        return _numerics(model, args)
    if args.get("interleaved"):
        return _interleaved(args)
    model.backbone.set_channels_last(args["channels_last"])
    before = C.current_rss_mib()
    step = (_predict_step if args["mode"] == "predict" else _train_step)(model, args)
    times = [_timed(step) for _ in range(args["warmup"] + args["repeats"])][args["warmup"] :]
    return {"times": times, "rss_before_mib": before}


def main() -> None:
    if C.child_main(_measure):
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny backbone")
    parser.add_argument("--work", type=Path, default=C.DEFAULT_WORK)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per case")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds per mode")
    args = parser.parse_args()
    C.quiet()
    quick = args.quick
    common = {
        "backbone": "tiny" if quick else "lite0",
        "window": 128 if quick else 512,
        "predict_batch": 2 if quick else 4,
        "patch": 64 if quick else 256,
        "train_batch": 2 if quick else 8,
        "warmup": 1 if quick else args.warmup,
        "repeats": 2 if quick else args.repeats,
    }
    processes = 1 if quick else args.processes
    m = C.machine()
    res: dict[str, dict[str, Any]] = {}
    for mode in ("predict", "train"):
        for channels_last in (False, True):
            key = f"{mode}:{'nhwc' if channels_last else 'nchw'}"
            print(f"{key} ...", flush=True)
            procs = []
            for _ in range(processes):
                C.wait_for_quiet(timeout=0 if quick else 60)
                case = {**common, "mode": mode, "channels_last": channels_last}
                procs.append(C.run_child("channels_last.py", case))
            res[key] = {
                "times": [t for p in procs for t in p["times"]],
                "peak_rss_mib": C.median([p["peak_rss_mib"] for p in procs]),
                "extra_mib": C.median([p["peak_rss_mib"] - p["rss_before_mib"] for p in procs]),
            }
        print(f"{mode}: interleaved ...", flush=True)
        C.wait_for_quiet(timeout=0 if quick else 60)
        case = {**common, "mode": mode, "interleaved": True, "rounds": 2 if quick else args.rounds}
        res[f"{mode}:interleaved"] = C.run_child("channels_last.py", case)
    numerics = C.run_child("channels_last.py", {**common, "mode": "numerics"})
    C.save_raw(args.work, SECTION, {"machine": m, "runs": res, "numerics": numerics}, quick)
    rows, verdicts = [], []
    for mode in ("predict", "train"):
        step = {f: C.median(res[f"{mode}:{f}"]["times"]) for f in ("nchw", "nhwc")}
        speedup = step["nchw"] / step["nhwc"]
        paired = C.median(res[f"{mode}:interleaved"]["ratios"])
        for fmt, name in (("nchw", "NCHW"), ("nhwc", "channels_last (default)")):
            r = res[f"{mode}:{fmt}"]
            rows.append(
                [
                    mode,
                    name,
                    len(r["times"]),
                    f"{step[fmt]:.3f}",
                    f"{r['peak_rss_mib']:.0f}",
                    f"{speedup:.2f}x" if fmt == "nhwc" else "",
                    f"{paired:.2f}x" if fmt == "nhwc" else "",
                ]
            )
        spread = res[f"{mode}:interleaved"]["ratios"]
        verdicts.append(
            f"- {mode}: channels_last is {paired:.2f}x as fast as NCHW, interleaved "
            f"({len(spread)} rounds, {min(spread):.2f}-{max(spread):.2f}); "
            f"{speedup:.2f}x from the separate processes."
        )
    label = C.BACKBONE_LABEL[common["backbone"]]
    body = "\n".join(
        [
            f"Command: `{C.command_line()}`",
            "",
            C.machine_line(m),
            "",
            f"GoPT on {label}, CPU, fp32. predict: batch {common['predict_batch']} of "
            f"{common['window']}² windows, eval, no_grad, softmax included; train: batch "
            f"{common['train_batch']}, patch {common['patch']}², AdamW, checkpoint_backbone "
            f"auto; {common['warmup']} warm-up + {common['repeats']} timed repeats per "
            f"process, {processes} fresh process(es) per case; time = median. "
            "Interleaved: one more process per mode holds both formats (same weights) and "
            "times one step of each per round in alternating order; the speed-up is the "
            "median over rounds of NCHW / channels_last (free of the machine's drift between "
            "minutes, which the processes one after another are not).",
            "",
            C.table(
                [
                    "mode",
                    "format",
                    "repeats",
                    "s",
                    "peak RSS MiB",
                    "speed-up",
                    "speed-up, interleaved",
                ],
                rows,
            ),
            "",
            *verdicts,
            f"- Same predictions: max |logit difference| {numerics['max_abs_diff']:.2e}, "
            f"class maps agree on {100 * numerics['class_agreement']:.3f}% of pixels.",
        ]
    )
    title = "Channels-last CNN backbone"
    if SECTION in C.SECTIONS:
        C.publish(SECTION, title, body, quick)
    else:
        print(f"## {title}\n\n{body}\n(section {SECTION!r} not in _common.SECTIONS: not written)")


if __name__ == "__main__":
    main()
