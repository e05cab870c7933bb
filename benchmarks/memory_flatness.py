"""Issue 7, item 2: memory flatness of prediction in scene size.

Peak RSS of one ``Predictor.predict`` (window 512, overlap 0.25, batch 4, class map +
confidence, no vector) per scene size, each in a fresh process. The pipeline, not the
model, is what grows with the scene, so the full series (2048², 8192², 16384²) uses the
model of the other benchmarks, GoPT on EfficientNet-Lite0 (``--tiny-sizes`` adds runs
with GoPT on timm's ``test_efficientnet``, whose forward costs almost nothing).
Target: peak(16384²) <= 1.3 x peak(2048²).

Besides the peak, the child samples its RSS every 50 ms and records it at phase
boundaries, so the table says *where* memory grows: the baseline after the model is
built (interpreter + torch + model), the largest RSS during the window loop, and the
largest RSS while the outputs are finished (COG conversion).

    ./run python benchmarks/memory_flatness.py
    ./run python benchmarks/memory_flatness.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

WINDOW, OVERLAP, BATCH = 512, 0.25, 4


class RssSampler:
    """Background thread: the highest RSS seen in each named phase."""

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self.phase = "setup"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = C.current_rss_mib()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)
            time.sleep(self.period)

    def set(self, phase: str) -> None:
        rss = C.current_rss_mib()
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)
        self.phase = phase

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.set("done")
        self._stop.set()
        self._thread.join()


def _measure(args: dict[str, Any]) -> dict[str, Any]:
    from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
    from gopt_geo.inference import Predictor
    from gopt_geo.inference import writers as writers_module

    work = Path(args["work"])
    files = C.scene(work, args["size"])
    with RssSampler() as sampler:
        sampler.set("model")
        model = C.model("gopt", args["backbone"]).eval()
        predictor = Predictor(model, C.routing(), WHU_OPT_SAR_CLASSES, device="cpu")
        baseline = C.current_rss_mib()
        sampler.set("windows")
        # mark the start of the output finishing (COG copy) without changing the library
        original_finish = writers_module.StripRasterWriter.finish

        def finish(self: Any, **kw: Any) -> Any:
            sampler.set("finish")
            return original_finish(self, **kw)

        writers_module.StripRasterWriter.finish = finish  # type: ignore[method-assign]
        start = time.perf_counter()
        result = predictor.predict(
            files.optical,
            files.sar,
            work / "out" / f"memory_{args['backbone']}_{args['size']}",
            C.predict_options(window=WINDOW, overlap=OVERLAP, batch_size=BATCH),
        )
        seconds = time.perf_counter() - start
    return {
        "baseline_mib": baseline,
        "phases": sampler.peaks,
        "seconds": seconds,
        "windows": result.stats.windows,
    }


def _report(m: dict[str, Any], results: list[list[Any]], command: str) -> str:
    rows, verdicts = [], []
    for backbone, size, res in results:
        group = [(s, r) for b, s, r in results if b == backbone]
        smallest, ref = min(group, key=lambda g: g[0])
        ratio = res["peak_rss_mib"] / ref["peak_rss_mib"]
        ph = res["phases"]
        rows.append(
            [
                f"GoPT / {C.BACKBONE_LABEL[backbone]}",
                f"{size}²",
                res["windows"],
                f"{res['seconds']:.0f}",
                f"{res['baseline_mib']:.0f}",
                f"{ph.get('windows', 0):.0f}",
                f"{ph.get('finish', 0):.0f}",
                f"{res['peak_rss_mib']:.0f}",
                f"{ratio:.2f}",
            ]
        )
        if size == max(s for s, _ in group) and size != smallest:
            verdicts.append(
                f"- {C.BACKBONE_LABEL[backbone]}: {size}² / {smallest}² = {ratio:.2f} "
                f"({'meets' if ratio <= 1.3 else 'misses'} the 1.3 target)"
            )
    return "\n".join(
        [
            f"Command: `{command}`",
            "",
            C.machine_line(m),
            "",
            f"Window {WINDOW}, overlap {OVERLAP}, batch {BATCH}, CPU, class map + confidence "
            "COGs, no vector; the predictor's own bounded GDAL block cache (128 MiB). One "
            "fresh process per row; peak RSS = `ru_maxrss`; the phase columns are the largest "
            "RSS sampled every 50 ms in that phase.",
            "",
            C.table(
                [
                    "model",
                    "scene",
                    "windows",
                    "predict s",
                    "RSS after model built MiB",
                    "max RSS in window loop MiB",
                    "max RSS finishing COGs MiB",
                    "peak RSS MiB",
                    "peak / smallest scene",
                ],
                rows,
            ),
            "",
            *verdicts,
        ]
    )


def main() -> None:
    if C.child_main(_measure):
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1024^2 and 2048^2")
    parser.add_argument("--work", type=Path, default=C.DEFAULT_WORK)
    parser.add_argument("--sizes", default="2048,8192,16384")
    parser.add_argument("--backbone", default="lite0", help="model for the full series")
    parser.add_argument(
        "--tiny-sizes", default="", help="sizes also run with GoPT on test_efficientnet"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the RESULTS.md section from the last run's results JSON",
    )
    args = parser.parse_args()
    C.quiet()
    saved = args.work / "results" / "memory_flatness.json"
    title = "2. Memory flatness of prediction"
    if args.report_only:
        data = json.loads(saved.read_text())
        C.publish("memory_flatness", title, _report(**data), False)
        return
    sizes = [1024, 2048] if args.quick else [int(s) for s in args.sizes.split(",")]
    tiny = [] if args.quick or not args.tiny_sizes else [int(s) for s in args.tiny_sizes.split(",")]
    backbone = "tiny" if args.quick else args.backbone
    runs = [(backbone, s) for s in sizes] + [("tiny", s) for s in tiny]
    m = C.machine()
    results = []
    for name, size in runs:
        C.scene(args.work, size)  # generate outside the measured child
        print(f"{C.BACKBONE_LABEL[name]} {size}^2 ...", flush=True)
        res = C.run_child(
            "memory_flatness.py", {"work": str(args.work), "size": size, "backbone": name}
        )
        print(f"  peak {res['peak_rss_mib']:.0f} MiB in {res['seconds']:.0f} s", flush=True)
        results.append([name, size, res])
    data = {"m": m, "results": results, "command": C.command_line()}
    if not args.quick:
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(data, indent=2))
    C.publish("memory_flatness", title, _report(**data), args.quick)


if __name__ == "__main__":
    main()
