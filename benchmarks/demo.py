"""The demo as a user runs it: wall time of `./run demo` and `./run demo --fast`, and the
accuracy claim the demo makes (GoPT beats the optical baselines under clouds); then the
training step time of each demo model in the demo recipe (Lite0, patch 128, batch 8).

Each run starts from a fresh output folder and goes through `./run` exactly as the
README's command does (the environment already built), so the time includes Python start,
imports, scene synthesis, both trainings, both predictions and the report. The machine is
checked for idle CPUs before every run. The accuracy numbers come from each run's
``report.json``; the demo is seeded, so repeated runs differ only by floating-point
non-determinism, and the table shows their median.

    ./run python benchmarks/demo.py [--repeats 3] [--quick]

Step times: each demo model (the demo's own config) in a fresh process, random inputs
(data loading is not in it), 3 warm-up + 10 timed steps of forward, loss, backward and
AdamW; also the forward alone, so backward + optimiser = step - forward; with the frozen
Lite0 in channels_last (the default) and in NCHW.

``--quick``: one `--fast` run and 2 timed steps, RESULTS.md untouched.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

MODELS = ("gopt", "optical_only", "optical_all_bands")


def run_once(work: Path, fast: bool, index: int) -> dict[str, Any]:
    out = work / f"demo-{'fast' if fast else 'full'}-{index}"
    shutil.rmtree(out, ignore_errors=True)
    busy = C.wait_for_quiet()
    cmd = [str(C.ROOT / "run"), "demo", "--out", str(out), "--device", "cpu"]
    if fast:
        cmd.append("--fast")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    scores = {
        variant: {
            region: 100 * report["models"][variant][region]["miou"]
            for region in ("overall", "clouds")
        }
        for variant in report["models"]
    }
    return {"fast": fast, "seconds": seconds, "busy_before": busy, "miou": scores}


def _step(args: dict[str, Any]) -> dict[str, Any]:
    """Child: median step and forward time of one demo model (see the module docstring)."""
    import dataclasses

    import torch
    from torch import nn

    from gopt_geo.data.classes import IGNORE_INDEX
    from gopt_geo.demo import FULL, demo_config
    from gopt_geo.models import build_model

    cfg = demo_config(Path(args["work"]), args["variant"], FULL, "cpu")
    routing = cfg.band_routing()
    scheme = cfg.class_scheme()
    n_aux = len(routing.aux_bands)
    torch.manual_seed(0)
    model = build_model(
        dataclasses.replace(cfg.model, num_classes=scheme.num_classes, aux_channels=n_aux)
    )
    model.set_backbone_checkpointing(cfg.train.checkpoint_backbone)
    if model.backbone.supports_channels_last:
        model.backbone.set_channels_last(args["channels_last"])
    model.train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=cfg.train.lr)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    g = torch.Generator().manual_seed(0)
    batch, size = cfg.data.batch_size, cfg.data.patch_size
    rgb = torch.randn(batch, 3, size, size, generator=g)
    aux = torch.randn(batch, n_aux, size, size, generator=g)
    mask = torch.randint(0, scheme.num_classes, (batch, size, size), generator=g)

    def forward() -> Any:
        out = model(rgb, aux, target=mask)
        loss = criterion(out.logits, mask)
        for value in out.losses.values():
            loss = loss + 0.1 * value
        return loss

    steps, forwards = [], []
    for i in range(args["warmup"] + args["repeats"]):
        start = time.perf_counter()
        loss = forward()
        mid = time.perf_counter()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= args["warmup"]:
            steps.append(time.perf_counter() - start)
            forwards.append(mid - start)
    return {
        "step_s": C.median(steps),
        "forward_s": C.median(forwards),
        "trainable": model.parameter_report().trainable,
        "checkpointing": model.backbone.checkpointing,
        "torch_threads": torch.get_num_threads(),
    }


def step_times(work: Path, quick: bool) -> dict[str, dict[str, Any]]:
    res = {}
    for channels_last in (True, False):
        for variant in MODELS:
            C.wait_for_quiet(timeout=0 if quick else 60)
            key = f"{variant}:{'nhwc' if channels_last else 'nchw'}"
            case = {
                "work": str(work / "step"),
                "variant": variant,
                "channels_last": channels_last,
                "warmup": 1 if quick else 3,
                "repeats": 2 if quick else 10,
            }
            res[key] = C.run_child("demo.py", case)
            print(f"  {key}: step {res[key]['step_s']:.3f} s", flush=True)
    return res


def step_table(res: dict[str, dict[str, Any]]) -> str:
    rows = []
    for variant in MODELS:
        nhwc, nchw = res[f"{variant}:nhwc"], res[f"{variant}:nchw"]
        base = res["optical_only:nhwc"]["step_s"]
        rows.append(
            [
                variant,
                f"{nhwc['trainable']:,}",
                f"{nhwc['forward_s']:.3f}",
                f"{nhwc['step_s'] - nhwc['forward_s']:.3f}",
                f"{nhwc['step_s']:.3f}",
                f"{nhwc['step_s'] / base:.2f}",
                f"{nchw['step_s']:.3f}",
                f"{nchw['step_s'] / nhwc['step_s']:.2f}x",
            ]
        )
    headers = [
        "model",
        "trainable",
        "forward s",
        "backward + AdamW s",
        "step s",
        "step / optical-only",
        "step s, NCHW",
        "channels_last speed-up",
    ]
    return C.table(headers, rows)


def main() -> None:
    if C.child_main(_step):
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=C.DEFAULT_WORK)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    plans = [(True, 1)] if args.quick else [(False, args.repeats), (True, args.repeats)]
    runs = [run_once(args.work, fast, i) for fast, n in plans for i in range(n)]
    steps = step_times(args.work, args.quick)
    C.save_raw(args.work, "demo", {"runs": runs, "steps": steps}, args.quick)

    rows = []
    for fast in sorted({r["fast"] for r in runs}):
        group = [r for r in runs if r["fast"] == fast]
        med = {
            (v, region): C.median([r["miou"][v][region] for r in group])
            for v in group[0]["miou"]
            for region in ("overall", "clouds")
        }
        gain = med[("gopt", "clouds")] - med[("optical_all_bands", "clouds")]
        rows.append(
            [
                "`./run demo --fast`" if fast else "`./run demo`",
                len(group),
                f"{C.median([r['seconds'] for r in group]):.0f} s",
                ", ".join(f"{r['seconds']:.0f}" for r in group),
                *(f"{med[(v, 'overall')]:.1f} / {med[(v, 'clouds')]:.1f}" for v in MODELS),
                f"{gain:+.1f}",
            ]
        )
    headers = [
        "command",
        "runs",
        "median wall time",
        "each run (s)",
        "GoPT mIoU (all / clouds)",
        "RGB-only",
        "every optical band",
        "GoPT gain in clouds over every-band",
    ]
    m = C.machine()
    body = (
        f"`{C.command_line()}` · {C.machine_line(m)}\n\n"
        + C.table(headers, rows)
        + "\n\nWall time of the whole command from a fresh output folder (environment "
        "already built). mIoU on the held-out synthetic scene, median of the runs; "
        "'clouds' scores only the pixels under the scene's clouds, where the optical "
        "image shows nothing and only SAR can tell the classes apart. This is the demo's "
        "accuracy claim, measured here rather than asserted in the unit suite.\n\n"
        "Training step time of each demo model (demo recipe: frozen EfficientNet-Lite0, "
        "patch 128, batch 8, random inputs, so no data loading; median of 10 steps after "
        "3 warm-up, one fresh process each):\n\n" + step_table(steps) + "\n"
    )
    C.publish("demo", "The demo: wall time, the accuracy claim, step times", body, args.quick)


if __name__ == "__main__":
    main()
