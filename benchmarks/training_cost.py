"""Issue 7, item 5: training cost of GoPT vs early-fusion full fine-tuning.

Time per optimisation step and peak memory, same backbone, batch and patch size, CPU.
GoPT runs twice: without and with activation checkpointing of the frozen backbone
(``train.checkpoint_backbone``, issue 15); full fine-tuning without (it cannot: its
backbone trains).
A step is what ``GoPTTask.training_step`` + Lightning's optimisation do: routing.prepare,
forward with the target (GoPT adds its class-aware and alignment losses with the task's
default weights 0.1), cross-entropy, backward, AdamW step over the model's trainable
parameters only, zero_grad. Each (backbone, variant) runs in a fresh process: peak RSS
(``ru_maxrss``) and its increase over the process right before the first step (model and
optimiser built) are reported. Targets: GoPT <= 0.8x the time and <= 0.6x the memory;
GoPT with checkpointing <= 0.85x the time and <= 0.6x the memory (issue 15).

    ./run python benchmarks/training_cost.py
    ./run python benchmarks/training_cost.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _trainer(args: dict[str, Any], variant: str) -> tuple[Any, Any]:
    """(model, step): one optimisation step of ``variant`` as the training task runs it."""
    import torch
    from torch import nn

    from gopt_geo.data.classes import IGNORE_INDEX, WHU_OPT_SAR_CLASSES

    torch.manual_seed(0)
    routing = C.routing()
    model = C.model(variant, args["backbone"])
    model.set_backbone_checkpointing(args.get("checkpoint", False))
    model.train()
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    b, p = args["batch"], args["patch"]
    image = torch.randn(b, len(routing.all_bands), p, p)
    mask = torch.randint(0, WHU_OPT_SAR_CLASSES.num_classes, (b, p, p))
    loss_weights = {"class_aware": 0.1, "alignment": 0.1}

    def step() -> float:
        rgb, aux = routing.prepare(image)
        out = model(rgb, aux, target=mask)
        loss = criterion(out.logits, mask)
        for name, value in out.losses.items():
            loss = loss + loss_weights.get(name, 0.0) * value
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    return model, step


def _paired(args: dict[str, Any]) -> dict[str, Any]:
    """Step times of every case in one process, interleaved step by step.

    The machine's speed drifts by 10-20 % between minutes here; cases timed in separate
    processes one after another put that drift into their ratios. Here each round times
    one step of every case (GoPT switches its checkpointing between them, the model and
    optimiser stay), in a rotating order, and each case is divided by full fine-tuning's
    step of the same round: the ratio is the median over rounds.
    """
    gopt, gopt_step = _trainer(args, "gopt")
    _, full_step = _trainer(args, "early_fusion")

    def case(share: bool | float) -> None:
        gopt.set_backbone_checkpointing(share)  # sets a share: nothing to time
        gopt_step()

    steps = {key: partial(case, ckpt) for key, variant, ckpt, _ in CASES if variant == "gopt"}
    times, ratios = C.interleaved_ratios(
        {**steps, "early_fusion": full_step}, "early_fusion", args["rounds"]
    )
    return {"times": times, "ratios": ratios, "rounds": args["rounds"]}


def _measure(args: dict[str, Any]) -> dict[str, Any]:
    if args.get("paired"):
        return _paired(args)
    model, step = _trainer(args, args["variant"])
    params = model.trainable_parameters()
    before = C.current_rss_mib()
    peak_before = C.peak_rss_mib()
    times = []
    for i in range(args["warmup"] + args["steps"]):
        start = time.perf_counter()
        step()
        if i >= args["warmup"]:
            times.append(time.perf_counter() - start)
    report = model.parameter_report()
    peak_rss = C.peak_rss_mib()  # before the profiled step, whose bookkeeping costs memory
    return {
        "times": times,
        "peak_rss_mib": peak_rss,
        "tensors": _tensor_memory(step) if args.get("tensor_memory", True) else None,
        "rss_before_mib": before,
        "peak_before_mib": peak_before,
        "trainable": report.trainable,
        "total": report.total,
        "optimizer_tensors": len(params),
        "channels_last": model.backbone.channels_last,
    }


def _tensor_memory(step: Any) -> dict[str, float]:
    """Peak tensor memory of one more step, from torch's memory profiler (every tensor
    allocation and free, each tagged parameter / optimizer state / activation / gradient /
    temporary ...), in MiB.

    Why besides RSS: on CPU the peak RSS also holds what glibc's allocator keeps of freed
    blocks, so it changes with the order of allocations (checkpointing frees and
    re-allocates a segment's activations in every backward) and hides what a GPU's
    ``max_memory_allocated`` would show. This is the number that transfers to a GPU.
    Returned: the peak of all tensors, the peak without parameters (what training adds to
    the built model: the figure the targets compare), and the split at that moment.
    """
    import tempfile

    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    names = {i + 1: (c.name.lower() if c else "unknown") for c, i in _CATEGORY_TO_INDEX.items()}
    parameter = next(i for i, n in names.items() if n == "parameter")
    totals = [sum(row[1:]) for row in sizes]
    training = [total - row[parameter] for total, row in zip(totals, sizes, strict=True)]
    at = max(range(len(training)), key=training.__getitem__)
    mib = 2**20
    split = {names[i]: sizes[at][i] / mib for i in names if sizes[at][i]}
    return {"peak_mib": max(totals) / mib, "training_peak_mib": training[at] / mib, **split}


#: (row key, variant, checkpoint_backbone (a share of the segments, or all/none), label)
CASES = (
    ("gopt", "gopt", False, "GoPT"),
    ("gopt_ckpt", "gopt", True, "GoPT, checkpoint_backbone"),
    ("gopt_ckpt_0.5", "gopt", 0.5, "GoPT, checkpoint_backbone 0.5 (every other segment)"),
    ("gopt_ckpt_0.33", "gopt", 1 / 3, "GoPT, checkpoint_backbone 1/3"),
    ("gopt_ckpt_0.25", "gopt", 0.25, "GoPT, checkpoint_backbone 0.25"),
    ("early_fusion", "early_fusion", False, "early fusion (full fine-tuning)"),
)


def main() -> None:
    if C.child_main(_measure):
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny backbone")
    parser.add_argument("--work", type=Path, default=C.DEFAULT_WORK)
    parser.add_argument("--backbones", default="lite0,vit_s")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per model")
    parser.add_argument(
        "--rounds", type=int, default=8, help="interleaved rounds of the paired time ratio"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the saved results of the backbones not run now (one backbone re-measured)",
    )
    args = parser.parse_args()
    C.quiet()
    backbones = ["tiny"] if args.quick else args.backbones.split(",")
    steps, warmup = (2, 1) if args.quick else (args.steps, args.warmup)
    m = C.machine()
    saved = args.work / "results" / "training_cost.json"
    raw: dict[str, Any] = {}
    if args.merge and saved.exists():
        old = json.loads(saved.read_text())
        raw = {bb: r for bb, r in old["runs"].items() if bb not in backbones}
        m["merged"] = {bb: old["machine"]["date"] for bb in raw}
    for backbone in backbones:
        res = {}
        for key, variant, ckpt, label in CASES:
            print(f"{C.BACKBONE_LABEL[backbone]} {label} ...", flush=True)
            procs = []
            for _ in range(1 if args.quick else args.processes):
                C.wait_for_quiet(timeout=0 if args.quick else 60)
                procs.append(
                    C.run_child(
                        "training_cost.py",
                        {
                            "backbone": backbone,
                            "variant": variant,
                            "checkpoint": ckpt,
                            "batch": args.batch,
                            "patch": args.patch,
                            "steps": steps,
                            "warmup": warmup,
                        },
                    )
                )
            # medians over processes: every step time, and the memory numbers
            res[key] = {
                **procs[0],
                "times": [t for p in procs for t in p["times"]],
                "peak_rss_mib": C.median([p["peak_rss_mib"] for p in procs]),
                "rss_before_mib": C.median([p["rss_before_mib"] for p in procs]),
                "extra_mib": C.median([p["peak_rss_mib"] - p["rss_before_mib"] for p in procs]),
                "tensor_mib": C.median([p["tensors"]["training_peak_mib"] for p in procs]),
                "processes": len(procs),
            }
        print(f"{C.BACKBONE_LABEL[backbone]} interleaved step times ...", flush=True)
        C.wait_for_quiet(timeout=0 if args.quick else 60)
        paired = C.run_child(
            "training_cost.py",
            {
                "paired": True,
                "backbone": backbone,
                "batch": args.batch,
                "patch": args.patch,
                "rounds": 1 if args.quick else args.rounds,
            },
        )
        raw[backbone] = {**res, "paired": paired}
    rows, verdicts = [], []
    for backbone in sorted(raw, key=lambda bb: list(C.BACKBONE_LABEL).index(bb)):
        res = {k: v for k, v in raw[backbone].items() if k != "paired"}
        cases = [case for case in CASES if case[0] in res]  # older runs lack newer cases
        step_s = {v: C.median(r["times"]) for v, r in res.items()}
        interleaved = {**raw[backbone]["paired"]["ratios"], "early_fusion": 1.0}
        peak = {v: r["peak_rss_mib"] for v, r in res.items()}
        extra = {v: r["extra_mib"] for v, r in res.items()}
        tensor = {v: r["tensor_mib"] for v, r in res.items()}
        for key, _, _, label in cases:
            r = res[key]
            rows.append(
                [
                    C.BACKBONE_LABEL[backbone],
                    label,
                    f"{r['trainable']:,}",
                    f"{100 * r['trainable'] / r['total']:.2f}%",
                    len(r["times"]),
                    f"{step_s[key]:.2f}",
                    f"{step_s[key] / step_s['early_fusion']:.2f}",
                    f"{interleaved[key]:.2f}",
                    f"{peak[key]:.0f}",
                    f"{extra[key]:.0f}",
                    f"{extra[key] / extra['early_fusion']:.2f}",
                    f"{tensor[key]:.0f}",
                    f"{tensor[key] / tensor['early_fusion']:.2f}",
                ]
            )
        t_ratio = interleaved["gopt"]
        m_ratio = peak["gopt"] / peak["early_fusion"]
        e_ratio = extra["gopt"] / extra["early_fusion"]
        verdicts.append(
            f"- {C.BACKBONE_LABEL[backbone]}: time GoPT / early fusion = {t_ratio:.2f} "
            f"({'meets' if t_ratio <= 0.8 else 'misses'} ≤ 0.8); peak RSS ratio = "
            f"{m_ratio:.2f}, training memory above the built model = {e_ratio:.2f} "
            f"({'meets' if e_ratio <= 0.6 else 'misses'} ≤ 0.6 on the training memory; "
            f"{'meets' if m_ratio <= 0.6 else 'misses'} it on the whole-process peak)."
        )
        t_ckpt = interleaved["gopt_ckpt"]
        e_ckpt = extra["gopt_ckpt"] / extra["early_fusion"]
        ts = {k: tensor[k] / tensor["early_fusion"] for k in ("gopt", "gopt_ckpt")}
        verdicts.append(
            f"- {C.BACKBONE_LABEL[backbone]}, GoPT with checkpoint_backbone: time / early "
            f"fusion = {t_ckpt:.2f} ({'meets' if t_ckpt <= 0.85 else 'misses'} ≤ 0.85), "
            f"training memory / early fusion = {e_ckpt:.2f} by RSS "
            f"({'meets' if e_ckpt <= 0.6 else 'misses'} ≤ 0.6), {ts['gopt_ckpt']:.2f} by "
            f"tensors ({'meets' if ts['gopt_ckpt'] <= 0.6 else 'misses'}; without "
            f"checkpointing {ts['gopt']:.2f}); checkpointing costs "
            f"{step_s['gopt_ckpt'] / step_s['gopt']:.2f}x the time of GoPT without and "
            f"keeps {extra['gopt_ckpt'] / extra['gopt']:.2f}x its training memory by RSS, "
            f"{tensor['gopt_ckpt'] / tensor['gopt']:.2f}x by tensors."
        )
        shares = [
            f"{label.split(', ', 1)[1]}: time {interleaved[key]:.2f}, "
            f"tensor peak {tensor[key] / tensor['early_fusion']:.2f}"
            for key, _, share, label in cases
            if isinstance(share, float)
        ]
        verdicts.append(
            f"- {C.BACKBONE_LABEL[backbone]}, a share of the segments checkpointed (relative "
            f"to full fine-tuning; targets ≤ 0.85 time, ≤ 0.6 memory): " + "; ".join(shares) + "."
        )
    C.save_raw(args.work, "training_cost", {"machine": m, "runs": raw}, args.quick)
    body = "\n".join(
        [
            f"Command: `{C.command_line()}`",
            "",
            C.machine_line(m),
            *(
                [
                    "",
                    "Kept from an earlier run (`--merge`): "
                    + ", ".join(f"{C.BACKBONE_LABEL[bb]} ({d})" for bb, d in m["merged"].items())
                    + "; the cases added since are missing from its rows.",
                ]
                if m.get("merged")
                else []
            ),
            "",
            f"Batch {args.batch}, patch {args.patch}², CPU, fp32, AdamW over the trainable "
            f"parameters; per process {warmup} warm-up steps then {steps} timed steps, "
            f"{1 if args.quick else args.processes} fresh processes per model; "
            "s / step = median over all timed steps, memory = median over the processes. "
            f"'time / full FT, interleaved' (what the verdicts use): one more process holds "
            f"GoPT and full fine-tuning and times one step of every case per round, in a "
            f"rotating order, for {1 if args.quick else args.rounds} rounds; the median over "
            "rounds of each case's step / full fine-tuning's step in that round. The machine's "
            "speed drifts by 10-20 % between minutes, which the column before (cases in "
            "separate processes, one after another) carries into its ratios. "
            "Peak RSS = whole process (interpreter, torch, frozen weights included); "
            "'training memory' = peak RSS minus the RSS right before the first step. "
            "'tensor peak' = the peak of all live tensors except parameters during one more "
            "step, from torch's memory profiler (activations, gradients, optimizer state, "
            "temporaries): free of the CPU allocator's caching, the figure a GPU's "
            "max_memory_allocated would show; RSS is measured before that step.",
            "",
            C.table(
                [
                    "backbone",
                    "model",
                    "trainable params",
                    "trainable %",
                    "steps",
                    "s / step",
                    "time / full FT",
                    "time / full FT, interleaved",
                    "peak RSS MiB",
                    "training memory MiB",
                    "memory / full FT",
                    "tensor peak MiB",
                    "tensor peak / full FT",
                ],
                rows,
            ),
            "",
            *verdicts,
        ]
    )
    C.publish("training_cost", "5. Training cost: GoPT vs full fine-tuning", body, args.quick)


if __name__ == "__main__":
    main()
