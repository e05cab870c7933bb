"""Issue 7, item 4: prompter overhead at inference.

GoPT forward time / frozen-backbone forward time at 512², batch 4, CPU, for each
backbone. "Frozen backbone" is measured two ways: the optical-only model (the same
frozen backbone and the same decoder as GoPT, no prompters: the fair reference, since
GoPT's extra cost is exactly its prompters and aux embedding), and the bare backbone
(feature extraction only, no decoder). Target: GoPT / optical-only <= 1.15.

The models alternate within each repeat (median of ``--repeats``). One extra GoPT pass
with forward hooks splits its time into backbone, aux embedding, prompters and decoder,
and a torch.profiler pass lists the operators the prompters spend their time in.

    ./run python benchmarks/prompter_overhead.py
    ./run python benchmarks/prompter_overhead.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SIZE, BATCH = 512, 4


def _component_times(model: Any, rgb: Any, aux: Any) -> dict[str, float]:
    """Wall time per component of one GoPT forward, by forward hooks on the submodules."""
    import torch

    spent: dict[str, float] = {}
    starts: dict[int, float] = {}
    handles: list[Any] = []

    def watch(module: torch.nn.Module, name: str) -> None:
        def pre(mod: Any, inp: Any) -> None:
            starts[id(mod)] = time.perf_counter()

        def post(mod: Any, inp: Any, out: Any) -> None:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - starts[id(mod)]

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))

    watch(model.aux_embed, "aux embedding")
    for prompter in model.prompters.values():
        watch(prompter.cup, "prompters: CUP")
        watch(prompter.acp, "prompters: ACP")
    watch(model.decoder, "decoder")
    with torch.inference_mode():
        start = time.perf_counter()
        model(rgb, aux)
        total = time.perf_counter() - start
    for handle in handles:
        handle.remove()
    spent["backbone and glue (rest)"] = total - sum(spent.values())
    spent["total"] = total
    return spent


def _profile_ops(model: Any, rgb: Any, aux: Any) -> list[list[Any]]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(rgb, aux)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]
    return [[e.key, e.count, e.self_cpu_time_total / 1e3] for e in events]


def _measure(args: dict[str, Any]) -> dict[str, Any]:
    import torch

    if args.get("threads"):
        torch.set_num_threads(args["threads"])
    routing = C.routing()
    models = {
        "gopt": C.model("gopt", args["backbone"]).eval(),
        "optical_only": C.model("optical_only", args["backbone"]).eval(),
    }
    # the bare frozen backbone: the optical-only model's feature extractor
    backbone = models["optical_only"].backbone
    x = torch.randn(BATCH, len(routing.all_bands), SIZE, SIZE)
    rgb, aux = routing.prepare(x)
    if args.get("channels_last"):
        # NHWC weights and inputs (not what the library does today; see RESULTS.md)
        for mod in models.values():
            mod.to(memory_format=torch.channels_last)
        rgb = rgb.contiguous(memory_format=torch.channels_last)
        aux = aux.contiguous(memory_format=torch.channels_last)

    calls = {
        "gopt": lambda: models["gopt"](rgb, aux),
        "optical_only": lambda: models["optical_only"](rgb, aux),
        "backbone": lambda: backbone(rgb),
    }
    times: dict[str, list[float]] = {k: [] for k in calls}
    with torch.inference_mode():
        for fn in calls.values():  # warm-up
            fn()
        names = list(calls)
        for r in range(args["repeats"]):
            for name in names[r % 3 :] + names[: r % 3]:
                start = time.perf_counter()
                calls[name]()
                times[name].append(time.perf_counter() - start)
    return {
        "times": times,
        "components": _component_times(models["gopt"], rgb, aux),
        "ops": _profile_ops(models["gopt"], rgb, aux),
        "params": {k: m.parameter_report().to_dict() for k, m in models.items()},
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    if C.child_main(_measure):
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny backbone, 2 reps")
    parser.add_argument("--work", type=Path, default=C.DEFAULT_WORK)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backbones", default="lite0,vit_s")
    parser.add_argument(
        "--threads", default="", help="also measure with these torch thread counts, e.g. 1"
    )
    parser.add_argument(
        "--channels-last",
        default="",
        help="also measure these backbones with channels_last weights and inputs, e.g. lite0",
    )
    args = parser.parse_args()
    C.quiet()
    backbones = ["tiny"] if args.quick else args.backbones.split(",")
    repeats = 2 if args.quick else args.repeats
    thread_counts = [0] + [int(t) for t in args.threads.split(",") if t]
    cl_backbones = [b for b in args.channels_last.split(",") if b]
    m = C.machine()
    rows, comp_lines, raw = [], [], {}
    for backbone in backbones:
        variants = [(t, False) for t in thread_counts]
        variants += [(0, True)] if backbone in cl_backbones else []
        for threads, channels_last in variants:
            print(f"{C.BACKBONE_LABEL[backbone]} threads={threads or 'default'} ...", flush=True)
            load = C.wait_for_quiet(timeout=0 if args.quick else 60)
            res = C.run_child(
                "prompter_overhead.py",
                {
                    "backbone": backbone,
                    "repeats": repeats,
                    "threads": threads,
                    "channels_last": channels_last,
                },
            )
            res["load_before"] = load
            raw[f"{backbone}:{threads}:{'nhwc' if channels_last else 'nchw'}"] = res
            med = {k: C.median(v) for k, v in res["times"].items()}
            ratio = med["gopt"] / med["optical_only"]
            rows.append(
                [
                    C.BACKBONE_LABEL[backbone],
                    "channels_last" if channels_last else "default (NCHW)",
                    res["threads"],
                    len(res["times"]["gopt"]),
                    f"{med['backbone']:.2f}",
                    f"{med['optical_only']:.2f}",
                    f"{med['gopt']:.2f}",
                    f"{ratio:.2f}",
                    f"{med['gopt'] / med['backbone']:.2f}",
                    "yes" if ratio <= 1.15 else f"no (+{100 * (ratio - 1.15):.0f} points)",
                ]
            )
            if threads == 0 and not channels_last:
                comp = res["components"]
                parts = ", ".join(f"{k} {v:.2f} s" for k, v in comp.items() if k != "total")
                ops = "; ".join(f"{n} x{c}: {ms:.0f} ms" for n, c, ms in res["ops"])
                comp_lines.append(
                    f"- {C.BACKBONE_LABEL[backbone]}: one GoPT forward of {comp['total']:.2f} s = "
                    f"{parts}. Top operators (self CPU): {ops}."
                )
    C.save_raw(args.work, "prompter_overhead", {"machine": m, "runs": raw}, args.quick)
    body = "\n".join(
        [
            f"Command: `{C.command_line()}`",
            "",
            C.machine_line(m),
            "",
            f"Input {BATCH} x {SIZE}², inference mode, CPU, seconds per forward (median). "
            "optical-only = the same frozen backbone and decoder without prompters.",
            "",
            C.table(
                [
                    "backbone",
                    "memory format",
                    "torch threads",
                    "runs",
                    "bare backbone s",
                    "optical-only s",
                    "GoPT s",
                    "GoPT / optical-only",
                    "GoPT / bare backbone",
                    "≤ 1.15?",
                ],
                rows,
            ),
            "",
            "Where a GoPT forward spends its time (forward hooks, one pass):",
            "",
            *comp_lines,
        ]
    )
    C.publish("prompter_overhead", "4. Prompter overhead", body, args.quick)


if __name__ == "__main__":
    main()
