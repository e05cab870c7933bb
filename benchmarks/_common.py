"""Shared helpers of the benchmark scripts: machine record, child processes, RESULTS.md.

Every measurement that reports memory runs in a fresh child process (the script itself
re-invoked with ``--child``), so that the peak RSS (``ru_maxrss``) belongs to that one
measurement and not to whatever the parent did before. Children print one JSON line
prefixed with ``RESULT``; the parent collects them.

RESULTS.md is made of sections delimited by HTML comments; each script replaces its own
section and leaves the others alone, so the scripts can be run in any order.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
#: Where scenes and outputs are cached between runs (outside the repository).
DEFAULT_WORK = Path(os.environ.get("GOPT_GEO_BENCH_DIR", "/tmp/gopt-geo-bench"))

#: Section order in RESULTS.md (issue 7's items).
SECTIONS = (
    "summary",  # written by hand from the sections below (findings, profiles, fixes)
    "predict_throughput",
    "memory_flatness",
    "vs_usual_approach",
    "prompter_overhead",
    "training_cost",
    "parameters",
    "accuracy",
    "vectorize_speed",
    "demo",
    "predict_many",
    "paper_ablations",
    "window_independence",
    "channels_last",
    "at_the_pixel",
    "at_the_pixel_fresh",  # the same table on a held-out scene nobody tuned on
    "detail_path_cost",
    "loader_rate",
    "gpu_feed",
    "replica_training",
)

HEADER = """# gopt-geo benchmarks

Measured by the scripts in this folder (issue 7); each section names the command that
produced it, the machine and the date. Timings are medians of repeated runs, memory is
the peak resident set size (``ru_maxrss``) of a fresh process per measurement, and every
ratio compares numbers measured in the same run. Run everything with
``./run python benchmarks/<script>.py`` (``--quick`` for a smoke run).
"""

#: Normalisation statistics used for benchmark models (typical values of the synthetic
#: scenes; speed and memory do not depend on them, accuracy runs compute their own).
BENCH_MEAN = {"B": 700.0, "G": 850.0, "R": 700.0, "NIR": 2300.0, "VV": -10.0, "VH": -17.0}
BENCH_STD = {"B": 400.0, "G": 400.0, "R": 400.0, "NIR": 1000.0, "VV": 4.0, "VH": 4.0}

BACKBONES = {
    "lite0": ("efficientnet_lite0", "packaged"),
    "vit_t": ("vit_tiny_patch16_224", "random"),
    "vit_s": ("vit_small_patch16_224", "random"),
    "vit_b": ("vit_base_patch16_224", "random"),
    "tiny": ("test_efficientnet", "random"),
}
BACKBONE_LABEL = {
    "lite0": "EfficientNet-Lite0",
    "vit_t": "ViT-Ti/16",
    "vit_s": "ViT-S/16",
    "vit_b": "ViT-B/16",
    "tiny": "timm test_efficientnet",
}


def quiet() -> None:
    """Random-backbone warnings are expected here (speed does not depend on weights)."""
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


# ---------------------------------------------------------------- machine and statistics


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, GPU, library versions: what a reader needs to compare."""
    import torch

    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "gopt_geo"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        code = commit + (" + uncommitted changes in gopt_geo/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        code = "unknown"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "gpu": gpu,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg_at_start": round(os.getloadavg()[0], 2),
        "code": code,
    }


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM, GPU: {m['gpu']}; "
        f"torch {m['torch']} ({m['torch_threads']} threads), Python {m['python']}. "
        f"Date: {m['date']}. Code: {m.get('code', 'unknown')}. "
        f"Load average when the run started: {m['load_avg_at_start']}."
    )


def interleaved_ratios(
    steps: dict[str, Callable[[], object]], reference: str, rounds: int, warmup: int = 1
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Time one call of every step per round, in an order rotated each round, and give
    each step's median over rounds of its time / ``reference``'s time in that round.

    This VM's speed drifts by 10-20 % between minutes: steps timed one after another in
    separate processes carry that drift into their ratios; steps interleaved call by call
    in one process do not. Returns (times per step, median ratio per step but the
    reference).
    """
    order = list(steps)
    for key in order:
        for _ in range(warmup):
            steps[key]()
    times: dict[str, list[float]] = {key: [] for key in order}
    for r in range(rounds):
        for key in order[r % len(order) :] + order[: r % len(order)]:
            start = time.perf_counter()
            steps[key]()
            times[key].append(time.perf_counter() - start)
    ratios = {
        key: median([t / f for t, f in zip(times[key], times[reference], strict=True)])
        for key in order
        if key != reference
    }
    return times, ratios


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def mean(values: Sequence[float | None]) -> float:
    """The mean of the values that are numbers (None and NaN left out); NaN if none are."""
    good = [v for v in values if v is not None and v == v]
    return statistics.fmean(good) if good else float("nan")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all cores busy over ``seconds`` (from /proc/stat), 0..1."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_quiet(max_busy: float = 0.15, timeout: float = 120.0) -> float:
    """Wait (up to ``timeout`` s) until the CPUs are idle (busy fraction < ``max_busy``).

    The machine is shared; timings taken while another process computes are not honest
    (with 2 cores, another busy process also stalls every parallel torch operator).
    Returns the busy fraction when the wait ended.
    """
    start = time.time()
    busy = cpu_busy()
    while busy >= max_busy and time.time() - start < timeout:
        busy = cpu_busy(2.0)
    return busy


# ---------------------------------------------------------------- child processes


def run_child(script: str, args: dict[str, Any], env: dict[str, str] | None = None) -> dict:
    """Run ``script --child JSON`` in a fresh interpreter; returns its RESULT dict."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), "--child", json.dumps(args)]
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=ROOT)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    sys.stderr.write(proc.stdout[-4000:] + "\n" + proc.stderr[-4000:] + "\n")
    raise RuntimeError(f"child {script} {args} failed with exit code {proc.returncode}")


def child_main(handler: Callable[[dict[str, Any]], dict[str, Any]]) -> bool:
    """If invoked as a child, run ``handler`` on the JSON arguments, print RESULT, return
    True (the caller then exits)."""
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        quiet()
        result = handler(json.loads(sys.argv[2]))
        result.setdefault("peak_rss_mib", peak_rss_mib())
        print("RESULT " + json.dumps(result), flush=True)
        return True
    return False


# ---------------------------------------------------------------- scenes and models


def predict_options(**settings: Any) -> Any:
    """``PredictOptions`` as every timing here runs them: no vector output (its own
    section), outputs replaced, no progress bar; ``settings`` add window, overlap, ..."""
    from gopt_geo.inference import PredictOptions

    return PredictOptions(**{"vector": None, "overwrite": True, "progress": False, **settings})


def scene(work: Path, size: int, seed: int = 7) -> Any:
    """A cached synthetic scene of ``size``^2 optical pixels (SAR in EPSG:4326)."""
    from gopt_geo.data.synthetic import make_scene, scene_files

    root = work / "scenes"
    name = f"scene_{size}_s{seed}"
    files = scene_files(root, name)
    if all(Path(p).exists() for p in (files.optical, files.sar, files.labels, files.clouds)):
        return files
    print(f"  generating {size}^2 scene ...", flush=True)
    t, files = timed(lambda: make_scene(root, name, size=size, seed=seed))
    print(f"  ... {t:.0f} s", flush=True)
    return files


def routing() -> Any:
    from gopt_geo.data.bands import BandRouting

    return BandRouting(("B", "G", "R", "NIR"), ("VV", "VH"), mean=BENCH_MEAN, std=BENCH_STD)


def model(variant: str, backbone: str, **overrides: Any) -> Any:
    """A benchmark model: ``backbone`` is a key of BACKBONES; untrained prompters and head
    (speed, memory and parameter counts do not depend on the trained values)."""
    import torch

    from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
    from gopt_geo.models import ModelConfig, build_model

    torch.manual_seed(0)  # the same prompters and head in every process
    name, weights = BACKBONES[backbone]
    cfg = ModelConfig(
        variant=variant,
        backbone=name,
        weights=weights,
        num_classes=WHU_OPT_SAR_CLASSES.num_classes,
        aux_channels=routing().num_aux,
        **overrides,
    )
    return build_model(cfg)


# ---------------------------------------------------------------- RESULTS.md


def _parse_sections(text: str) -> dict[str, str]:
    pattern = re.compile(r"<!-- BEGIN (\w+) -->\n(.*?)<!-- END \1 -->\n?", re.S)
    return {m.group(1): m.group(2) for m in pattern.finditer(text)}


def write_section(name: str, body: str) -> Path:
    """Replace (or add) section ``name`` of RESULTS.md; sections stay in issue order."""
    if name not in SECTIONS:
        raise ValueError(f"unknown section {name!r}")
    sections = _parse_sections(RESULTS.read_text()) if RESULTS.exists() else {}
    sections[name] = body.rstrip("\n") + "\n"
    parts = [HEADER]
    for key in SECTIONS:
        if key in sections:
            parts.append(f"<!-- BEGIN {key} -->\n{sections[key]}<!-- END {key} -->\n")
    RESULTS.write_text("\n".join(parts))
    return RESULTS


def command_line(argv: Sequence[str] | None = None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    script = Path(sys.argv[0]).name
    return " ".join(["./run python", f"benchmarks/{script}", *(shlex.quote(a) for a in args)])


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; numbers right-aligned."""

    number = re.compile(r"^[-+]?[\d,.]+\s*(%|x|s|MiB|MB|kB|M)?$")

    def numeric(i: int) -> bool:
        cells = [str(r[i]) for r in rows if str(r[i]) not in ("", "-", "n/a")]
        return bool(cells) and all(number.match(c) for c in cells)

    align = ["---:" if numeric(i) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save_raw(work: Path, name: str, data: dict[str, Any], quick: bool) -> None:
    """Keep a full run's raw per-run numbers as JSON under ``work/results`` (a ``--quick``
    smoke run must not overwrite them)."""
    if quick:
        return
    folder = work / "results"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(data, indent=2))


def publish(name: str, title: str, body: str, quick: bool) -> None:
    """Print the section; write it to RESULTS.md unless this was a ``--quick`` smoke run."""
    text = f"## {title}\n\n{body}"
    print(text)
    if quick:
        print("(--quick: RESULTS.md not updated)")
    else:
        print(f"-> {write_section(name, text)}")
