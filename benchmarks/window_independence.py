"""Issue 13: window-independent maps: tiled prediction against one whole-scene pass.

The demo's two models (GoPT with SAR prompts and the optical-only baseline, both on the
frozen EfficientNet-Lite0, ``gopt_geo.demo``'s recipe) map the demo's held-out test scene
window by window (window 128, overlap 0.25 unless told) with a tiling margin of 0, 16,
32 and 64 pixels (each window read with that much scene around it, only the window
kept), GoPT with CUP's groups per window and from the whole scene
(``model.cup_context``). Each map is compared with the same model's whole-scene pass
(one window covering the scene, no margin): the share of pixels with the same class is
the agreement. Every map is also scored against the labels (mIoU, and inside the clouds)
to show what the tiling costs or gains in accuracy, and the pixels the model runs on are
counted (``WindowPlan.model_pixels``) against the scene's: the margin's compute cost.
Nothing is timed (shared CPUs): only agreement, accuracy and pixel counts.

    python benchmarks/window_independence.py                  # trains the demo, full table
    python benchmarks/window_independence.py --demo DIR       # an existing demo output
    python benchmarks/window_independence.py --quick          # --fast demo, margins 0 / 64

Prints a Markdown table and writes it with the raw numbers to ``WORK/window_independence``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

#: The target setting of issue 13, and the margins measured on it.
WINDOW, OVERLAP = 128, 0.25
MARGINS = (0, 16, 32, 64)
QUICK_MARGINS = (0, 64)
#: Further rows (window, overlap, margin): a larger window, and no overlap with a margin
#: (the cheaper way to pay for context). Not window 256 with margin 64: on the demo's
#: 384-pixel scene its enlarged windows are the whole scene (100 % by construction).
EXTRA = ((256, 0.25, 0), (256, 0.25, 32), (128, 0.0, 64), (128, 0.0, 32))


@dataclass(frozen=True)
class Setting:
    model: str  # "gopt" or "optical_only" (the demo's run folders)
    context: str  # CUP's groups: "window" or "scene"; "-" for a model without CUP
    window: int
    overlap: float
    margin: int


def demo_scene(demo: Path) -> Any:
    """The demo's held-out test scene (its files) from the demo's report."""
    from gopt_geo.data.synthetic import scene_files

    report = json.loads((demo / "report.json").read_text())
    return scene_files(demo / "scenes", report["test_scene"])


def adapter_of(demo: Path, model: str) -> Path:
    report = json.loads((demo / "report.json").read_text())
    return demo / report["models"][model]["files"]["adapter"]


def predict(predictor: Any, scene: Any, out: Path, window: int, overlap: float, margin: int) -> Any:
    """Map the scene with these tiling options; returns the class map."""
    from gopt_geo.inference import PredictOptions

    options = PredictOptions(
        window=window,
        overlap=overlap,
        margin=margin,
        batch_size=4,
        confidence=False,
        vector=None,
        overwrite=True,
        progress=False,
    )
    return predictor.predict(scene.optical, scene.sar, out, options).class_map


def read_codes(path: Path) -> tuple[Any, Any]:
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1), src.nodata


def agreement(a: Path, b: Path) -> float:
    """Share of pixels (valid in both) with the same class."""
    import numpy as np

    p, nodata = read_codes(a)
    q, _ = read_codes(b)
    keep = (p != nodata) & (q != nodata) if nodata is not None else np.ones_like(p, bool)
    return float((p[keep] == q[keep]).mean())


def model_pixels(height: int, width: int, window: int, overlap: float, margin: int) -> int:
    from gopt_geo.inference.tiling import WindowPlan

    return WindowPlan.for_grid(height, width, window, overlap, margin).model_pixels


def settings_for(quick: bool, models: list[str]) -> list[Setting]:
    margins = QUICK_MARGINS if quick else MARGINS
    extra = () if quick else EXTRA
    rows: list[Setting] = []
    for model in models:
        contexts = ("window", "scene") if model == "gopt" else ("-",)
        for context in contexts:
            rows += [Setting(model, context, WINDOW, OVERLAP, m) for m in margins]
            rows += [Setting(model, context, w, o, m) for w, o, m in extra]
    return rows


def measure(demo: Path, work: Path, quick: bool, models: list[str]) -> list[dict[str, Any]]:
    import rasterio

    from gopt_geo.evaluation import evaluate_maps
    from gopt_geo.inference import Predictor

    scene = demo_scene(demo)
    with rasterio.open(scene.optical) as src:
        height, width = src.height, src.width
    whole_window = max(height, width)
    results: list[dict[str, Any]] = []
    for model in models:
        predictor = Predictor.from_adapter(adapter_of(demo, model), device="cpu")
        config = getattr(predictor.model, "config", None)
        for context in ("window", "scene") if model == "gopt" else ("-",):
            if context != "-" and config is not None:
                config.cup_context = context  # the switch, on the same trained adapter
            tag = f"{model}_{context}"
            whole = predict(predictor, scene, work / tag / "whole", whole_window, 0.0, 0)
            for s in settings_for(quick, [model]):
                if s.context != context:
                    continue
                name = f"w{s.window}_o{int(100 * s.overlap)}_m{s.margin}"
                class_map = predict(
                    predictor, scene, work / tag / name, s.window, s.overlap, s.margin
                )
                overall = evaluate_maps(class_map, scene.labels)
                clouds = evaluate_maps(class_map, scene.labels, within=scene.clouds)
                pixels = model_pixels(height, width, s.window, s.overlap, s.margin)
                plain = model_pixels(height, width, s.window, s.overlap, 0)
                row = {
                    **s.__dict__,
                    "agreement": agreement(class_map, whole),
                    "miou": overall.miou,
                    "miou_clouds": clouds.miou,
                    "model_pixels_per_scene_pixel": pixels / (height * width),
                    "model_pixels_vs_no_margin": pixels / plain,
                }
                print(
                    f"{model:<12} {context:<6} window {s.window} overlap {s.overlap} "
                    f"margin {s.margin:>2}: agreement {100 * row['agreement']:.2f} %, "
                    f"mIoU {100 * row['miou']:.1f}",
                    flush=True,
                )
                results.append(row)
            whole_scores = evaluate_maps(whole, scene.labels)
            results.append(
                {
                    "model": model,
                    "context": context,
                    "window": whole_window,
                    "overlap": 0.0,
                    "margin": 0,
                    "agreement": 1.0,
                    "miou": whole_scores.miou,
                    "miou_clouds": evaluate_maps(whole, scene.labels, within=scene.clouds).miou,
                    "model_pixels_per_scene_pixel": 1.0,
                    "model_pixels_vs_no_margin": 1.0,
                    "whole_scene": True,
                }
            )
    return results


def table(results: list[dict[str, Any]], scene_size: str) -> str:
    label = {"gopt": "GoPT", "optical_only": "optical-only"}
    head = (
        "| model | CUP groups | window | overlap | margin | agreement with whole scene | "
        "mIoU | mIoU clouds | model px / scene px | vs margin 0 |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in results:
        window = f"whole ({scene_size})" if r.get("whole_scene") else str(r["window"])
        lines.append(
            f"| {label.get(r['model'], r['model'])} | {r['context']} | {window} | "
            f"{r['overlap']:.2f} | {r['margin']} | {100 * r['agreement']:.2f} % | "
            f"{100 * r['miou']:.1f} | {100 * r['miou_clouds']:.1f} | "
            f"{r['model_pixels_per_scene_pixel']:.2f} | {r['model_pixels_vs_no_margin']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="--fast demo, margins 0 and 64")
    parser.add_argument("--demo", type=Path, help="an existing `gopt-geo demo` output folder")
    parser.add_argument("--work", type=Path, default=C.DEFAULT_WORK)
    parser.add_argument("--models", default="gopt,optical_only")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    work = args.work / "window_independence"
    work.mkdir(parents=True, exist_ok=True)
    demo = args.demo
    if demo is None:
        from gopt_geo.demo import run_demo

        demo = work / ("demo-fast" if args.quick else "demo")
        run_demo(demo, fast=args.quick, overwrite=True, device="cpu")
    models = [m for m in args.models.split(",") if m]
    results = measure(demo, work / "maps", args.quick, models)
    scene = demo_scene(demo)
    import rasterio

    with rasterio.open(scene.optical) as src:
        size = f"{src.width}x{src.height}"
    text = table(results, size)
    print()
    print(
        f"Demo test scene `{scene.name}` ({size} px), {'--fast ' if args.quick else ''}demo "
        "models; agreement: share of valid pixels with the class of the same model's "
        "whole-scene pass (same CUP groups setting)."
    )
    print()
    print(text)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    (work / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
