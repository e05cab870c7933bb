"""The demo as a user runs it: wall time of `./run demo` and `./run demo --fast`, and the
accuracy claim the demo makes (GoPT beats the optical-only baseline under clouds).

Each run starts from a fresh output folder and goes through `./run` exactly as the
README's command does (the environment already built), so the time includes Python start,
imports, scene synthesis, both trainings, both predictions and the report. The machine is
checked for idle CPUs before every run. The accuracy numbers come from each run's
``report.json``; the demo is seeded, so repeated runs differ only by floating-point
non-determinism, and the table shows their median.

    ./run python benchmarks/demo.py [--repeats 3] [--quick]

``--quick``: one `--fast` run, RESULTS.md untouched.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import _common as C


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=C.DEFAULT_WORK)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    plans = [(True, 1)] if args.quick else [(False, args.repeats), (True, args.repeats)]
    runs = [run_once(args.work, fast, i) for fast, n in plans for i in range(n)]
    C.save_raw(args.work, "demo", {"runs": runs}, args.quick)

    rows = []
    for fast in sorted({r["fast"] for r in runs}):
        group = [r for r in runs if r["fast"] == fast]
        med = {
            (v, region): C.median([r["miou"][v][region] for r in group])
            for v in group[0]["miou"]
            for region in ("overall", "clouds")
        }
        gain = med[("gopt", "clouds")] - med[("optical_only", "clouds")]
        rows.append(
            [
                "`./run demo --fast`" if fast else "`./run demo`",
                len(group),
                f"{C.median([r['seconds'] for r in group]):.0f} s",
                ", ".join(f"{r['seconds']:.0f}" for r in group),
                f"{med[('gopt', 'overall')]:.1f}",
                f"{med[('optical_only', 'overall')]:.1f}",
                f"{med[('gopt', 'clouds')]:.1f}",
                f"{med[('optical_only', 'clouds')]:.1f}",
                f"{gain:+.1f}",
            ]
        )
    headers = [
        "command",
        "runs",
        "median wall time",
        "each run (s)",
        "GoPT mIoU",
        "optical-only mIoU",
        "GoPT mIoU in clouds",
        "optical-only in clouds",
        "GoPT gain in clouds",
    ]
    m = C.machine()
    body = (
        f"`{C.command_line()}` · {C.machine_line(m)}\n\n"
        + C.table(headers, rows)
        + "\n\nWall time of the whole command from a fresh output folder (environment "
        "already built). mIoU on the held-out synthetic scene, median of the runs; "
        "'in clouds' scores only the pixels under the scene's clouds, where the optical "
        "image shows nothing and only SAR can tell the classes apart. This is the demo's "
        "accuracy claim, measured here rather than asserted in the unit suite.\n"
    )
    C.publish("demo", "The demo: wall time and the GoPT-vs-optical-only claim", body, args.quick)


if __name__ == "__main__":
    main()
