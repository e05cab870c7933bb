"""Issue 7, item 1: prediction throughput and pipeline overhead.

For each (backbone, scene size): the end-to-end wall time of ``Predictor.predict`` (read
optical + warp SAR per window, model, blend, class map + confidence COGs; no vector
output, which item 8 measures) and the pure model time over the same windows (the same
number of batches of the same shape, already in memory, through the same
``routing.prepare`` + model call). Overhead ratio = end-to-end / pure model; target <= 1.10.

Both are measured in the same child process, alternating their order between repeats,
after one warm-up batch, so that one-time costs (oneDNN kernel selection) hit neither.
The child also times a read-only pass over all windows (``SceneReader.read``), which is
what the pipeline adds on top of the model when nothing overlaps.

    ./run python benchmarks/predict_throughput.py            # the table in RESULTS.md
    ./run python benchmarks/predict_throughput.py --quick    # smoke run, small scene
    ./run python benchmarks/predict_throughput.py --profile  # cProfile of one predict
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

#: The predict defaults: window 512, no overlap, the auto margin (64 px of context).
WINDOW, OVERLAP, BATCH = 512, 0.0, 4


def _options() -> Any:
    """What every predict here runs with: the defaults, no vector output (item 8)."""
    return C.predict_options(window=WINDOW, overlap=OVERLAP, batch_size=BATCH)


def _backbone(case: str) -> tuple[str, bool]:
    """A case's backbone, and whether it runs in NCHW (``lite0_nchw``: the CNN without
    its default channels_last, to show that format's effect on a whole predict)."""
    return case.removesuffix("_nchw"), case.endswith("_nchw")


def _label(case: str) -> str:
    backbone, nchw = _backbone(case)
    return C.BACKBONE_LABEL[backbone] + (" (NCHW)" if nchw else "")


def _measure(args: dict[str, Any]) -> dict[str, Any]:
    import torch

    from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
    from gopt_geo.inference import Predictor
    from gopt_geo.inference.reader import SceneReader
    from gopt_geo.inference.tiling import WindowPlan

    work = Path(args["work"])
    files = C.scene(work, args["size"])
    routing = C.routing()
    backbone, nchw = _backbone(args["backbone"])
    model = C.model(args.get("variant", "gopt"), backbone).eval()
    if nchw:  # the CNN default is channels_last; this case measures what it gains end to end
        model.backbone.set_channels_last(False)
    predictor = Predictor(model, routing, WHU_OPT_SAR_CLASSES, device="cpu")
    options = _options()
    plan = WindowPlan.for_grid(args["size"], args["size"], WINDOW, OVERLAP, options.margin_pixels)
    n_windows = len(plan)
    sizes = [min(BATCH, n_windows - i) for i in range(0, n_windows, BATCH)]
    cap = args.get("forward_cap") or len(sizes)
    timed_sizes = sizes[:cap]
    # the model sees each window with its margin (the read window), as predict runs it
    x_full = torch.randn(BATCH, len(routing.all_bands), plan.read_height, plan.read_width)

    @torch.inference_mode()
    def forward(b: int) -> None:
        rgb, aux = routing.prepare(x_full[:b])
        model(rgb, aux)

    def pure_forward() -> float:
        start = time.perf_counter()
        for b in timed_sizes:
            forward(b)
        return (time.perf_counter() - start) * len(sizes) / len(timed_sizes)

    out_dir = work / "out" / f"throughput_{args['backbone']}_{args['size']}"
    # the model's own time inside predict: the same forward, timed where the pipeline calls it
    in_model = [0.0]
    infer = predictor._infer

    def timed_infer(*a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        try:
            return infer(*a, **k)
        finally:
            in_model[0] += time.perf_counter() - start

    predictor._infer = timed_infer  # type: ignore[method-assign]

    def end_to_end() -> tuple[float, float, float]:
        in_model[0] = 0.0
        start = time.perf_counter()
        result = predictor.predict(files.optical, files.sar, out_dir, options)
        return time.perf_counter() - start, result.stats.seconds, in_model[0]

    def read_only() -> float:
        start = time.perf_counter()
        with SceneReader(files.optical, files.sar, routing) as reader:
            for w in plan.read_windows():
                reader.read(w)
        return time.perf_counter() - start

    forward(BATCH)  # warm-up
    runs = []
    # each predict between two pure passes, compared with their mean: the machine's speed
    # drifts by 10-20 % between minutes here, which a single neighbour would put in the ratio
    before = pure_forward()
    for r in range(args["repeats"]):
        e2e, stats_s, inside = end_to_end()
        after = pure_forward()
        fwd = (before + after) / 2
        runs.append(
            {
                "e2e_s": e2e,
                "stats_s": stats_s,
                "forward_s": fwd,
                "forward_before_s": before,
                "forward_after_s": after,
                "model_in_predict_s": inside,
                "ratio": e2e / fwd,
                "pipeline_ratio": e2e / inside,
            }
        )
        print(
            f"    run {r + 1}: predict {e2e:.1f} s (model inside {inside:.1f} s), "
            f"pure model {before:.1f}/{after:.1f} s",
            flush=True,
        )
        before = after
    read_s = read_only()
    return {
        "windows": n_windows,
        "batches": len(sizes),
        "forward_batches_timed": len(timed_sizes),
        "pixels": args["size"] ** 2,
        "runs": runs,
        "read_only_s": read_s,
        "torch_threads": torch.get_num_threads(),
    }


def _profile(work: Path, size: int, backbone: str) -> str:
    """cProfile of one end-to-end predict (main thread: model, blending, writing)."""
    from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
    from gopt_geo.inference import Predictor

    files = C.scene(work, size)
    predictor = Predictor(
        C.model("gopt", backbone).eval(), C.routing(), WHU_OPT_SAR_CLASSES, device="cpu"
    )
    prof = cProfile.Profile()
    prof.enable()
    predictor.predict(
        files.optical,
        files.sar,
        work / "out" / "profile",
        _options(),
    )
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(30)
    return buf.getvalue()


def _report(m: dict[str, Any], raw: dict[str, Any], command: str) -> str:
    rows = []
    for case, res in raw.items():
        backbone, size = case.split(":")[0], int(case.split(":")[1])
        e2e = C.median([r["e2e_s"] for r in res["runs"]])
        fwd = C.median([r["forward_s"] for r in res["runs"]])
        ratio = C.median([r["ratio"] for r in res["runs"]])
        inside = [r["model_in_predict_s"] for r in res["runs"] if "model_in_predict_s" in r]
        pipeline = C.median([r["pipeline_ratio"] for r in res["runs"] if "pipeline_ratio" in r])
        scaled = res["forward_batches_timed"] != res["batches"]
        note = (
            f" (model time: {res['forward_batches_timed']} of {res['batches']} batches, scaled)"
            if scaled
            else ""
        )
        rows.append(
            [
                f"GoPT / {_label(backbone)}",
                f"{size}²",
                res["windows"],
                len(res["runs"]),
                f"{e2e:.1f}",
                f"{res['pixels'] / 1e6 / e2e:.3f}",
                f"{fwd:.1f}",
                f"{C.median(inside):.1f}" if inside else "",
                f"{res['read_only_s']:.1f}",
                f"{ratio:.3f}" + note,
                ", ".join(f"{r['ratio']:.2f}" for r in res["runs"]),
                f"{pipeline:.3f}" if inside else "",
                "yes" if ratio <= 1.10 else f"no (+{100 * (ratio - 1.10):.1f} points)",
            ]
        )
    return "\n".join(
        [
            f"Command: `{command}`",
            "",
            C.machine_line(m),
            "",
            f"Window {WINDOW}, overlap {OVERLAP}, margin auto (64 px), batch {BATCH}, CPU. "
            "Outputs: class map + "
            "confidence (COG); no vector file (item 8). Model: GoPT with untrained prompters "
            "and head (speed does not depend on their values); EfficientNet-Lite0 with its "
            "packaged ImageNet weights, ViT-S/16 randomly initialised (no download possible).",
            "",
            C.table(
                [
                    "model",
                    "scene",
                    "windows",
                    "runs",
                    "predict s (median)",
                    "MPix/s",
                    "pure model s",
                    "model inside predict s",
                    "read-only s",
                    "overhead ratio (median)",
                    "per-run ratios",
                    "predict / model inside",
                    "≤ 1.10?",
                ],
                rows,
            ),
            "",
            "predict s: wall time of `Predictor.predict` end to end (opening the rasters to the "
            "finished COGs). pure model s: the same number of batches of the same shape, "
            "already in memory, through `routing.prepare` + the model, timed just before and just "
            "after each predict (the ratio divides by their mean). model inside predict s: the "
            "model calls inside that predict, timed where the pipeline makes them; predict / "
            "model inside is therefore what the pipeline adds around the model in the same "
            "run, free of the machine's drift, but blind to the model running slower beside "
            "the reader thread (which the overhead ratio includes). read-only s: one "
            "sequential pass of `SceneReader.read` over all windows (optical read + SAR warp "
            "+ masks), no model. Ratios are medians of the per-run ratios. Per-run values (in "
            "the results JSON) vary a lot on this shared VM: the machine's speed itself "
            "changes by 10-20 % between minutes (see the summary).",
        ]
    )


def main() -> None:
    if C.child_main(_measure):
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1024^2, 1 repeat")
    parser.add_argument("--work", type=Path, default=C.DEFAULT_WORK)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--cases",
        default="lite0:2048,vit_s:2048,lite0:8192",
        help="backbone:size[:repeats[:forward_cap]] list (backbones: lite0, vit_s, ...; "
        "lite0_nchw: Lite0 without channels_last)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile one 2048^2 predict")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the RESULTS.md section from the last run's results JSON",
    )
    args = parser.parse_args()
    C.quiet()
    if args.profile:
        print(_profile(args.work, 2048, "lite0"))
        return
    results = args.work / "results" / "predict_throughput.json"
    if args.report_only:
        saved = json.loads(results.read_text())
        command = saved.get("command", C.command_line([]))
        title = "1. Prediction throughput and pipeline overhead"
        C.publish(
            "predict_throughput", title, _report(saved["machine"], saved["cases"], command), False
        )
        return
    cases = "tiny:1024" if args.quick else args.cases
    m = C.machine()
    raw = {}
    for case in cases.split(","):
        parts = case.split(":")
        backbone, size = parts[0], int(parts[1])
        repeats = int(parts[2]) if len(parts) > 2 else (1 if args.quick else args.repeats)
        cap = int(parts[3]) if len(parts) > 3 else None
        print(f"{_label(backbone)} {size}^2 x {repeats} ...", flush=True)
        busy = C.wait_for_quiet()
        res = C.run_child(
            "predict_throughput.py",
            {
                "work": str(args.work),
                "size": size,
                "backbone": backbone,
                "repeats": repeats,
                "forward_cap": cap,
            },
        )
        res["cpu_busy_before"] = busy
        raw[case] = res
    command = C.command_line()
    if not args.quick:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps({"machine": m, "command": command, "cases": raw}, indent=2))
    title = "1. Prediction throughput and pipeline overhead"
    C.publish("predict_throughput", title, _report(m, raw, command), args.quick)


if __name__ == "__main__":
    main()
