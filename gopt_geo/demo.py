"""`gopt-geo demo`: the whole chain on synthetic cloudy scenes, on a CPU, in minutes.

synth -> train GoPT (frozen, truly pretrained ImageNet EfficientNet-Lite0) -> train the
optical baselines (RGB only; every optical band) with the same backbone, data and budget
-> train the per-pixel yardstick (a 1x1 MLP on every band, no backbone) on the same data
-> all map the held-out scene -> vector land cover -> a report that compares them
overall and inside clouds, with a figure. Every step calls the same library functions
as the CLI commands.

The settings below are those of ``configs/demo.yaml`` (a test keeps them in step); the
demo defines them in code so that it also runs from an installed package.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunConfig, load_config
from .errors import InputError

#: ``configs/demo.yaml`` as overrides (root and output_dir are set per run).
DEMO_SETTINGS: dict[str, Any] = {
    "seed": 0,
    "data.dataset": "scenes",
    "data.optical_bands": "[B, G, R, NIR]",
    "data.sar_bands": "[VV, VH]",
    "data.rgb_bands": "[R, G, B]",
    "data.sar_units": "db",
    "data.patch_size": 128,
    "data.batch_size": 8,
    "data.train_patches": 416,
    "data.stats_patches": 32,
    "model.variant": "gopt",
    "model.backbone": "efficientnet_lite0",
    "model.weights": "packaged",
    "model.prompt_dim": 32,
    "model.assignment": "soft",
    "model.decoder_dim": 48,
    "model.detail_path": True,
    "train.epochs": 8,
    "train.lr": 0.003,
    "train.device": "auto",
}

#: Scene layout of the demo: (number of scenes, size in pixels), last two = val, test.
#: Full: 416 steps per model, three models in about 4 min on 2 CPU cores (measured by
#: benchmarks/demo.py; 12 x 320 took 243 s with three models).
FULL = {"scenes": 5, "size": 384, "epochs": 8, "train_patches": 416}
FAST = {"scenes": 4, "size": 320, "epochs": 6, "train_patches": 160}

MARKER = ".gopt-geo-demo"

#: The demo's models: GoPT, the RGB-only baseline, the fair optical baseline that sees
#: every optical band GoPT's prompts see (NIR reaches its decoder): the gain over that
#: one is what the SAR brings; and the per-pixel classifier on every band (RGB, NIR,
#: SAR), the yardstick a remote-sensing user applies first (seconds to train).
MODELS = {
    "gopt": "GoPT (SAR prompts)",
    "optical_only": "optical-only baseline (RGB)",
    "optical_all_bands": "optical baseline, every band (RGB + NIR)",
    "pixel": "per-pixel classifier, every band (RGB + NIR + SAR)",
}

#: Settings of one model beyond configs/demo.yaml's recipe.
MODEL_SETTINGS: dict[str, dict[str, Any]] = {"optical_all_bands": {"data.aux_bands": "[NIR]"}}


@dataclass
class DemoResult:
    """Where the demo wrote its outputs, and the comparison it made."""

    out_dir: Path
    report_json: Path
    report_markdown: Path
    figure: Path
    metrics: dict[str, dict[str, dict[str, Any]]]
    seconds: float


def demo_config(out: Path, variant: str, plan: dict[str, int], device: str = "auto") -> RunConfig:
    """The run config of one demo model: configs/demo.yaml's recipe on ``plan``'s budget."""
    settings = {
        **DEMO_SETTINGS,
        "data.root": str(out / "scenes"),
        "output_dir": str(out / "runs" / variant),
        "model.variant": variant,
        **MODEL_SETTINGS.get(variant, {}),
        "train.epochs": plan["epochs"],
        "data.train_patches": plan["train_patches"],
        "train.device": device,
    }
    return load_config(None, [f"{k}={v}" for k, v in settings.items()])


def run_demo(
    out: Path,
    fast: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    log: Callable[[str], None] = print,
    plan: dict[str, int] | None = None,
) -> DemoResult:
    """Run the whole chain into ``out``; returns the comparison (see module docstring).

    ``plan`` replaces the FULL/FAST budget (scenes, size, epochs, train_patches): the
    unit suite runs the whole chain on a tiny one.
    """
    from .data.synthetic import make_scenes
    from .evaluation import evaluate_maps
    from .inference.options import PredictOptions
    from .inference.predictor import Predictor
    from .training import train

    start = time.perf_counter()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        # a previous demo run (marked) is replaced; anything else needs --overwrite
        if not (overwrite or (out / MARKER).exists()):
            raise InputError(f"{out}: folder is not empty and not a previous demo; use --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by gopt-geo demo; the next demo run replaces this folder\n")
    plan = plan or (FAST if fast else FULL)
    steps = len(MODELS) + 2
    log(f"[1/{steps}] synthetic scenes: {plan['scenes']} x {plan['size']}^2 px -> {out / 'scenes'}")
    scenes = make_scenes(out / "scenes", plan["scenes"], size=plan["size"], seed=0)
    test = scenes[-1]

    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    maps: dict[str, Path] = {}
    for i, (variant, label) in enumerate(MODELS.items()):
        cfg = demo_config(out, variant, plan, device)
        log(f"[{2 + i}/{steps}] training {label} ({cfg.train.epochs} epochs)")
        result = train(cfg, log=lambda m: log("      " + m))
        pred_dir = out / "maps" / variant
        predictor = Predictor.from_adapter(result.adapter, device=device)
        # predict's defaults (window 512, auto margin): the map a user of `predict` gets
        options = PredictOptions(vector="gpkg", overwrite=True, progress=False)
        prediction = predictor.predict(test.optical, test.sar, pred_dir, options)
        maps[variant] = prediction.class_map
        overall = evaluate_maps(prediction.class_map, test.labels)
        clouds = evaluate_maps(prediction.class_map, test.labels, within=test.clouds)
        metrics[variant] = {
            "overall": overall.to_dict(),
            "clouds": clouds.to_dict(),
            "parameters": {"report": result.parameters},
            # relative to the demo folder, so the folder can be moved or shared
            "files": {
                "adapter": str(result.adapter.relative_to(out)),
                "class_map": str(prediction.class_map.relative_to(out)),
                "vector": str(Path(prediction.vector).relative_to(out)),
                "report": str(prediction.report_markdown.relative_to(out)),
            },
        }
        log(f"      held-out scene: {overall.summary()}")
        log(f"      inside clouds:  {clouds.summary()}")

    log(f"[{steps}/{steps}] report and figure")
    figure = out / "comparison.png"
    draw_figure(test, maps, figure)
    report_json = out / "report.json"
    report_md = out / "report.md"
    seconds = time.perf_counter() - start
    report = {"test_scene": test.name, "seconds": seconds, "fast": fast, "models": metrics}
    report_json.write_text(json.dumps(report, indent=2))
    report_md.write_text(render_report(report, figure.name))
    log(f"done in {seconds:.0f} s: {report_md}")
    return DemoResult(out, report_json, report_md, figure, metrics, seconds)


def render_report(report: dict[str, Any], figure: str) -> str:
    lines = [
        "# gopt-geo demo: GoPT vs the optical baselines and the per-pixel yardstick",
        "",
        f"Held-out synthetic scene `{report['test_scene']}`; every model but the per-pixel "
        "one uses the same frozen ImageNet EfficientNet-Lite0; all use the same data and "
        "training budget. The RGB-only baseline sees R, G, B; the every-band baseline also "
        "gets NIR (in its decoder); GoPT gets NIR and SAR as prompts; the per-pixel "
        "classifier (a 1x1 MLP, no backbone) sees every band of each pixel alone. Scores "
        "in %, kappa x100; background pixels are ignored.",
        "",
        "| model | region | mIoU | OA | AA | kappa |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for variant, m in report["models"].items():
        for region in ("overall", "clouds"):
            r = m[region]
            where = "whole scene" if region == "overall" else "under clouds"
            lines.append(
                f"| {MODELS.get(variant, variant)} | {where} | {100 * r['miou']:.1f} | "
                f"{100 * r['oa']:.1f} | {100 * r['aa']:.1f} | {100 * r['kappa']:.1f} |"
            )
    lines += ["", "Trainable parameters:", ""]
    for variant, m in report["models"].items():
        lines.append(f"- {MODELS.get(variant, variant)}: `{m['parameters']['report']}`")
    lines += ["", f"![comparison]({figure})", "", f"Run time: {report['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def draw_figure(scene: Any, maps: dict[str, Path], path: Path, max_size: int = 512) -> Path:
    """Optical and SAR quicklooks, reference, and each model's map, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import rasterio
    from matplotlib import pyplot as plt
    from matplotlib.colors import ListedColormap
    from rasterio.enums import Resampling

    from .data.classes import WHU_OPT_SAR_CLASSES
    from .data.plotting import stretch
    from .io import warp_onto

    with (
        rasterio.open(scene.optical) as src,
        rasterio.open(scene.sar) as sar,
        warp_onto(sar, src, Resampling.bilinear) as vrt,
    ):
        step = max(1, int(np.ceil(max(src.width, src.height) / max_size)))
        shape = (src.height // step, src.width // step)
        bands = [src.descriptions.index(b) + 1 for b in ("R", "G", "B")]
        rgb = src.read(bands, out_shape=(3, *shape)).astype(np.float32)
        rgb[:, (rgb == 0).all(0)] = np.nan
        vv = vrt.read(1, out_shape=shape, masked=True).filled(np.nan).astype(np.float32)

    colors = np.ones((256, 4))
    for c in WHU_OPT_SAR_CLASSES.classes:
        colors[c.code, :3] = np.array(c.color) / 255
    cmap = ListedColormap(colors)

    def read_codes(p: Path) -> np.ndarray:
        with rasterio.open(p) as src:
            data = src.read(1, out_shape=shape, resampling=Resampling.nearest)
        return data

    panels = [
        # stretched for the land, not the clouds (they saturate to white)
        ("Optical (R, G, B)", np.dstack([stretch(b, 2, 80) for b in rgb]), {}),
        ("SAR VV (dB)", stretch(vv), {"cmap": "gray"}),
        ("Reference", read_codes(scene.labels), {"cmap": cmap, "vmin": 0, "vmax": 255}),
    ]
    for variant, p in maps.items():
        panels.append(
            (MODELS.get(variant, variant), read_codes(p), {"cmap": cmap, "vmin": 0, "vmax": 255})
        )
    fig, axs = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (title, data, kw) in zip(axs, panels, strict=True):
        ax.imshow(data, interpolation="nearest", **kw)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    handles = [
        matplotlib.patches.Patch(color=np.array(c.color) / 255, label=c.name)
        for c in WHU_OPT_SAR_CLASSES.classes
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
