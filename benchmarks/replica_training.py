"""Issue 26: the headline job at its real size, on a CPU: ``configs/whu-os.yaml`` trained on a
WHU-OPT-SAR-shaped replica, with the disk scene cache and without any cache.

The replica is written by ``gopt-geo synth --like whu-os`` (``--scenes`` scenes of
``--size`` px, the release's 3704 x 5556 by default; its split is the official one scaled
down, :func:`gopt_geo.data.replica.replica_split`: 20 scenes give 14 train, 2 val, 4 test);
it is made once and reused. The run is ``configs/whu-os.yaml`` as it stands, with these
overrides only: the backbone swapped for the packaged ImageNet EfficientNet-Lite0 (the
demo's: ``model.backbone=efficientnet_lite0``, ``model.weights=packaged``) so that it runs
on a CPU, ``--steps`` steps of ``--batch`` patches of ``--patch``² as one epoch
(``data.train_patches`` = steps x batch, ``train.epochs=1``), then one validation over
the whole validation split (``data.val_patches=null``: every gridded patch, to measure
its cost per patch), ``--workers`` DataLoader workers, ``train.device=cpu``.

Each run is a fresh child process. Modes:

- **disk cache**: every split cached on disk (``data.scene_cache_dir``; the in-memory
  budget is set to 1 MiB, ``GOPT_GEO_SCENE_CACHE_MB=1``, so that no split is held in
  RAM, as no split of WHU-OPT-SAR is). The first run builds the cache from scratch (the
  build is inside its time to the first step); the run on the smaller archive
  (``--compare-scenes``, a subset of the same files) finds its entries built;
- **no cache**: ``GOPT_GEO_SCENE_CACHE_MB=0``: every patch read by torchgeo (index
  query, windowed reads of the optical, SAR and label files).

Measured per run: time to the first training step (from the process's start, and from
the ``train()`` call), patches per second (steady state: from the end of the first step
to the end of the last), each step split into **data wait** (from the end of one step to
the start of the next: the loader's share that the workers did not hide, plus Lightning's
bookkeeping) and **model** (``on_train_batch_start`` to ``on_train_batch_end``: forward,
backward, optimiser), the validation's time and patch count, the scene cache's build time
and size on disk against the source GeoTIFFs, and memory: peak RSS of the main process
(``ru_maxrss``; a forked worker's RSS counts the pages it shares with it, so RSS does not
add up) and, sampled every 0.25 s from ``/proc/<pid>/smaps_rollup`` of the main process
and its loader workers together, the peak of their summed PSS (shared pages divided among
the processes sharing them: the memory the run holds), split into anonymous memory
(``Pss_Anon``: the processes' own) and file-backed pages (``Pss_File``: libraries and the
memory-mapped cache's pages the run touched; page cache, reclaimable).

Validation's share of an epoch is projected from the per-patch costs measured here to
the config's epoch (``data.train_patches`` of ``configs/whu-os.yaml``) and to the
validation of the real WHU-OPT-SAR (its 8 validation scenes of 3704 x 5556 px, gridded as
the datamodule grids them: the count needs only their footprints), with every gridded
patch and with the config's ``data.val_patches``.

    ./run python benchmarks/replica_training.py            # ~30 min on 2 idle cores
    ./run python benchmarks/replica_training.py --quick    # 4 scenes of 768 x 1024, 5 steps
    ./run python benchmarks/replica_training.py --report-only
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CONFIG = C.ROOT / "configs" / "whu-os.yaml"
#: (height, width) of a WHU-OPT-SAR scene (gopt_geo.data.replica.WHU_OS_SHAPE).
WHU_OS_SHAPE = (3704, 5556)
#: Validation scenes of the real WHU-OPT-SAR (WHUOptSar's default val_scenes).
WHU_OS_VAL_SCENES = 8
#: The config's validation target: at most this share of an epoch's training time.
VAL_SHARE_TARGET = 0.20
#: Memory sampling period (seconds).
SAMPLE_S = 0.25
#: Defaults of a full run and of ``--quick``: about 30 min and 2 min on 2 idle cores.
FULL: dict[str, Any] = {
    "scenes": 20,
    "size": WHU_OS_SHAPE,
    "compare_scenes": 10,
    "steps": 300,
    "batch": 4,
    "stats_patches": 0,  # 0: the config's
}
QUICK: dict[str, Any] = {
    "scenes": 4,
    "size": (768, 1024),
    "compare_scenes": 3,
    "steps": 5,
    "batch": 2,
    "stats_patches": 16,
}


# ---------------------------------------------------------------- the replica


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 3704x5556, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _tif_bytes(root: Path, names: list[str] | None = None) -> int:
    """Bytes of the replica's GeoTIFFs (of ``names`` only, when given)."""
    total = 0
    for folder in ("optical", "sar", "lbl"):
        for f in (root / folder).glob("*.tif"):
            if names is None or f.stem in names:
                total += f.stat().st_size
    return total


def replica(work: Path, scenes: int, size: tuple[int, int]) -> dict[str, Any]:
    """The replica's root, split, generation time and size (written once, then reused)."""
    h, w = size
    root = work / f"whu_os_replica_{scenes}_{h}x{w}"
    record = root.with_suffix(".json")  # beside the replica: its folder stays as released
    if record.exists():
        info = json.loads(record.read_text())
        names = [n for part in info["split"].values() for n in part]
        if all((root / d / f"{n}.tif").exists() for d in ("optical", "sar", "lbl") for n in names):
            print(f"  replica: reusing {root} (generated in {info['generate_s']:.0f} s)")
            return {**info, "reused": True}
    shutil.rmtree(root, ignore_errors=True)
    cmd = [sys.executable, "-m", "gopt_geo", "synth", "--like", "whu-os", str(root)]
    cmd += ["--scenes", str(scenes), "--size", f"{h}x{w}"]
    print(f"  generating the replica: {' '.join(cmd[2:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"gopt-geo synth failed with exit code {proc.returncode}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("split (for data.scenes):"))
    split = json.loads(line.split(":", 1)[1])
    info = {
        "root": str(root),
        "scenes": scenes,
        "size": [h, w],
        "split": split,
        "generate_s": seconds,
        "bytes": _tif_bytes(root),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    record.write_text(json.dumps(info, indent=1))
    print(f"  ... {seconds:.0f} s, {info['bytes'] / 2**30:.2f} GiB", flush=True)
    return {**info, "reused": False}


def subset_split(n: int, full: dict[str, list[str]]) -> dict[str, list[str]]:
    """The split of an ``n``-scene replica, all of whose scenes the full replica holds."""
    from gopt_geo.data.replica import replica_split

    split = replica_split(n)
    have = {s for part in full.values() for s in part}
    missing = [s for part in split.values() for s in part if s not in have]
    if missing:
        raise SystemExit(f"--compare-scenes {n}: scenes {missing} are not in the replica")
    return split


def whu_os_val_grid(patch: int, size: tuple[int, int]) -> tuple[int, int]:
    """(gridded validation patches, of them inside one scene) of the real WHU-OPT-SAR's
    validation split: its 8 scenes of ``size`` placed on the pixel grid as the dataset
    places scenes without a CRS (every scene of the release in name order, 10,000 px
    apart; ``OpticalSarScenes.pixel_grid_offsets``), sampled as the datamodule samples
    validation (torchgeo's ``GriddedPatchSampler``). Only footprints; no file needed."""
    import geopandas
    import shapely
    from torchgeo.samplers import GriddedPatchSampler

    from gopt_geo.data.whu_opt_sar import official_split

    official = official_split()
    val = official["train"][-WHU_OS_VAL_SCENES:]
    h, w = size
    left = {
        n: i * (w + 10_000.0) for i, n in enumerate(sorted(official["train"] + official["test"]))
    }
    boxes = [shapely.box(left[n], -h, left[n] + w, 0.0) for n in val]

    class Footprints:  # what the sampler reads of a dataset
        res = (1.0, 1.0)
        index = geopandas.GeoDataFrame({"filepath": val}, geometry=boxes)

    patches = list(GriddedPatchSampler(Footprints(), size=patch, stride=patch))  # type: ignore[arg-type]
    inside = sum(
        any(b.contains(shapely.box(x.start, y.start, x.stop, y.stop)) for b in boxes)
        for x, y in patches
    )
    return len(patches), inside


# ---------------------------------------------------------------- the child: one run


class ProcessTreeMemory:
    """Background thread: peaks of RSS, PSS, anonymous and file-backed PSS, each summed
    over this process and its children (the DataLoader workers), from
    ``/proc/<pid>/smaps_rollup``."""

    FIELDS = {"Rss:": "rss", "Pss:": "pss", "Pss_Anon:": "anon", "Pss_File:": "file"}

    def __init__(self, period: float = SAMPLE_S) -> None:
        self.period = period
        self.peaks = {"rss": 0.0, "pss": 0.0, "anon": 0.0, "file": 0.0, "processes": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self, pid: int) -> dict[str, float]:
        out = {}
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    key = self.FIELDS.get(line.split(maxsplit=1)[0])
                    if key:
                        out[key] = int(line.split()[1]) / 1024  # kB -> MiB
        except OSError:  # a worker that just ended
            return {}
        return out

    def sample(self) -> None:
        import psutil

        me = psutil.Process()
        pids = [me.pid] + [c.pid for c in me.children(recursive=True)]
        totals = {"rss": 0.0, "pss": 0.0, "anon": 0.0, "file": 0.0}
        for pid in pids:
            for key, value in self._read(pid).items():
                totals[key] += value
        for key, value in totals.items():
            self.peaks[key] = max(self.peaks[key], value)
        self.peaks["processes"] = max(self.peaks["processes"], len(pids))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.period)

    def __enter__(self) -> ProcessTreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _timing_callback() -> Any:
    from lightning.pytorch.callbacks import Callback

    class Timing(Callback):
        """Wall-clock marks of every training step and of the validation."""

        def __init__(self) -> None:
            self.fit_start = 0.0  # perf_counter: trainer.fit() began
            self.train_start = 0.0  # perf_counter: the training loop began
            self.starts: list[float] = []
            self.ends: list[float] = []
            self.first_step_wall = 0.0  # time.time(), to compare with the process start
            self.patches = 0
            self.val_s = 0.0
            self.val_patches = 0
            self.datamodule: Any = None

        def on_fit_start(self, trainer: Any, task: Any) -> None:
            self.fit_start = time.perf_counter()

        def on_train_start(self, trainer: Any, task: Any) -> None:
            self.train_start = time.perf_counter()
            self.datamodule = trainer.datamodule

        def on_train_batch_start(self, trainer: Any, task: Any, batch: Any, i: int) -> None:
            self.starts.append(time.perf_counter())
            if len(self.starts) == 1:
                self.first_step_wall = time.time()
            self.patches += int(batch["image"].shape[0])

        def on_train_batch_end(self, trainer: Any, task: Any, *args: Any) -> None:
            self.ends.append(time.perf_counter())

        def on_validation_start(self, trainer: Any, task: Any) -> None:
            self._val0 = time.perf_counter()

        def on_validation_batch_end(self, trainer: Any, task: Any, out: Any, batch: Any, *a: Any):
            self.val_patches += int(batch["image"].shape[0])

        def on_validation_end(self, trainer: Any, task: Any) -> None:
            self.val_s += time.perf_counter() - self._val0

    return Timing()


def _cache_served(ds: Any, sampler: Any) -> tuple[int, int]:
    """(patches the split's scene cache answers, all patches) of ``sampler``; nothing read."""
    indices = list(sampler)
    cache = ds.scene_cache
    if cache is None:
        return 0, len(indices)
    served = 0
    for index in indices:
        resolved = cache.resolve(index)
        if resolved is not None and cache.locate(resolved[0], resolved[1]) is not None:
            served += 1
    return served, len(indices)


def run(args: dict[str, Any]) -> dict[str, Any]:
    """One training run (in a fresh process): the measurements listed in the docstring."""
    memory = ProcessTreeMemory()
    with memory:
        from gopt_geo.config import load_config
        from gopt_geo.data import disk_cache
        from gopt_geo.data.scenes import OpticalSarScenes
        from gopt_geo.training import train

        overrides = {
            "data.root": args["root"],
            "data.scenes": json.dumps(args["split"]),
            "output_dir": args["out"],
            "model.backbone": "efficientnet_lite0",
            "model.weights": "packaged",
            "data.batch_size": args["batch"],
            "data.patch_size": args["patch"],
            "data.train_patches": args["steps"] * args["batch"],
            "data.val_patches": "null",
            **({"data.stats_patches": args["stats_patches"]} if args.get("stats_patches") else {}),
            "data.num_workers": args["workers"],
            "data.scene_cache_dir": args["cache_dir"] or "'off'",  # unquoted: YAML's false
            "train.epochs": 1,
            "train.device": "cpu",
            "train.progress": "false",
        }
        cfg = load_config(CONFIG, [f"{k}={v}" for k, v in overrides.items()])

        builds: dict[str, dict[str, Any]] = {}
        original = OpticalSarScenes.build_scene_cache

        def timed_build(self: Any, *a: Any, **kw: Any) -> Any:
            first = not self._scene_cache_done
            folder = Path(args["cache_dir"]) if args["cache_dir"] else None
            before = set(folder.glob("*-*")) if folder and folder.exists() else set()
            start = time.perf_counter()
            cache = original(self, *a, **kw)
            if first:
                on_disk = cache is not None and cache.scenes and cache.scenes[0].source
                builds[self.split] = {
                    "seconds": time.perf_counter() - start,
                    "kind": "disk" if on_disk else ("memory" if cache is not None else "none"),
                    "scenes": len(self.scene_names),
                    "cached_scenes": len(cache.scenes) if cache is not None else 0,
                    "built_scenes": len(
                        {Path(s.source) for s in (cache.scenes if on_disk else [])} - before
                    ),
                    "cache_bytes": sum(
                        f.stat().st_size
                        for s in (cache.scenes if on_disk else [])
                        for f in Path(s.source).glob("*.npy")
                    ),
                    "source_bytes": _tif_bytes(Path(args["root"]), self.scene_names),
                }
            return cache

        OpticalSarScenes.build_scene_cache = timed_build  # type: ignore[method-assign]
        timing = _timing_callback()
        train_call = time.perf_counter()
        train_call_wall = time.time()
        result = train(cfg, overwrite=True, log=lambda m: None, callbacks=[timing])
        memory.sample()
    dm = timing.datamodule
    served, val_total = _cache_served(dm.val_dataset, dm.val_sampler)
    starts, ends = timing.starts, timing.ends
    steady_s = ends[-1] - ends[0] if len(ends) > 1 else float("nan")
    model_s = [e - s for s, e in zip(starts, ends, strict=True)]
    waits = [starts[0] - timing.train_start] + [
        starts[i] - ends[i - 1] for i in range(1, len(starts))
    ]
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "mode": args["mode"],
        "scenes": args["split"],
        "steps": len(starts),
        "patches": timing.patches,
        "process_to_first_step_s": timing.first_step_wall - args["spawned"],
        "train_call_to_first_step_s": timing.first_step_wall - train_call_wall,
        "process_to_train_call_s": train_call_wall - args["spawned"],
        "train_call_to_fit_s": timing.fit_start - train_call,
        "fit_to_train_s": timing.train_start - timing.fit_start,
        "first_step_s": model_s[0],
        "first_wait_s": waits[0],
        "steady_s": steady_s,
        "steady_patches": timing.patches - args["batch"],
        "step_model_s": model_s,
        "step_wait_s": waits,
        "val_s": timing.val_s,
        "val_patches": timing.val_patches,
        "val_cache_served": served,
        "val_gridded": val_total,
        "train_seconds": result.seconds,
        "val_miou": (result.metrics.get("val") or {}).get("miou"),
        "builds": builds,
        "cache_dir": args["cache_dir"],
        "format": disk_cache.FORMAT_VERSION,
        "peak_rss_mib": C.peak_rss_mib(),
        "peak_worker_rss_mib": children,
        "tree_peaks_mib": memory.peaks,
    }


# ---------------------------------------------------------------- the parent


def _signature(args: argparse.Namespace, mode: str, scenes: int) -> dict[str, Any]:
    return {
        "mode": mode,
        "scenes": scenes,
        "replica": [args.scenes, *args.size],
        "steps": args.steps,
        "batch": args.batch,
        "patch": args.patch,
        "workers": args.workers,
        "stats_patches": args.stats_patches,
    }


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.1f}" if seconds < 100 else f"{seconds:.0f}"


def report(data: dict[str, Any], args: argparse.Namespace, m: dict[str, Any]) -> str:
    """The RESULTS.md section from the runs' results."""
    from gopt_geo.config import load_config
    from gopt_geo.data.disk_cache import human_size

    rep = data["replica"]
    runs = data["runs"]
    cfg = load_config(CONFIG)
    h, w = rep["size"]
    split = rep["split"]
    rows, notes = [], []
    for key, r in runs.items():
        steady = r["steady_patches"] / r["steady_s"] if r["steady_s"] > 0 else float("nan")
        waits, model_s = r["step_wait_s"][1:], r["step_model_s"][1:]
        build = sum(b["seconds"] for b in r["builds"].values())
        kinds = sorted({b["kind"] for b in r["builds"].values()})
        peaks = r["tree_peaks_mib"]
        rows.append(
            [
                key,
                f"{len(r['scenes']['train'])}/{len(r['scenes']['val'])}",
                "+".join(kinds),
                _fmt_s(build),
                _fmt_s(r["process_to_first_step_s"]),
                _fmt_s(r["train_call_to_first_step_s"]),
                f"{steady:.2f}",
                f"{C.mean(waits) * 1000:.0f}",
                f"{C.mean(model_s) * 1000:.0f}",
                f"{r['peak_rss_mib']:.0f}",
                f"{peaks['pss']:.0f}",
                f"{peaks['anon']:.0f}",
                f"{peaks['file']:.0f}",
            ]
        )
    table = C.table(
        [
            "run",
            "scenes train/val",
            "patches from",
            "cache build s",
            "first step from process start s",
            "from train() s",
            "patches / s",
            "data wait ms / step",
            "model ms / step",
            "peak RSS main MiB",
            "peak PSS all MiB",
            "of it anon MiB",
            "of it file MiB",
        ],
        rows,
    )
    for key, r in runs.items():
        build = sum(b["seconds"] for b in r["builds"].values())
        notes.append(
            f"- `{key}`: first step {r['process_to_first_step_s']:.0f} s after the process "
            f"started: imports {r['process_to_train_call_s']:.1f} s, then in `train()` the "
            f"splits, scene cache and statistics ({r['train_call_to_fit_s']:.1f} s, of which "
            f"scene cache {build:.1f} s), Lightning's setup {r['fit_to_train_s']:.1f} s, "
            f"the first batch {r['first_wait_s']:.1f} s (the loader worker starting); the "
            f"first step itself took {r['first_step_s']:.1f} s."
        )
    # cache size against sources (first disk run: it built the entries)
    disk_runs = {k: r for k, r in runs.items() if r["mode"] == "disk"}
    for key, r in disk_runs.items():
        cached = sum(b["cache_bytes"] for b in r["builds"].values())
        sources = sum(b["source_bytes"] for b in r["builds"].values())
        seconds = sum(b["seconds"] for b in r["builds"].values())
        n = sum(b["cached_scenes"] for b in r["builds"].values())
        built = sum(b["built_scenes"] for b in r["builds"].values())
        verb = f"{built} of them built" if built else "all found built and mapped"
        notes.append(
            f"- `{key}`: disk cache of {n} scenes (train + val), {verb} in {seconds:.1f} s: "
            f"{human_size(cached)} on disk for {human_size(sources)} of source GeoTIFFs "
            f"({cached / max(sources, 1):.2f}x)."
        )
    # peak memory against the archive's size
    if len(disk_runs) >= 2:
        (ka, a), (kb, b) = sorted(disk_runs.items(), key=lambda kv: len(kv[1]["scenes"]["train"]))[
            :2
        ]
        pa, pb = a["tree_peaks_mib"], b["tree_peaks_mib"]
        notes.append(
            f"- Peak memory against the archive's size (disk cache, "
            f"{len(a['scenes']['train'])} vs {len(b['scenes']['train'])} training scenes): "
            f"anonymous {pa['anon']:.0f} vs {pb['anon']:.0f} MiB "
            f"({pb['anon'] / pa['anon']:.2f}x), file-backed {pa['file']:.0f} vs "
            f"{pb['file']:.0f} MiB, PSS {pa['pss']:.0f} vs {pb['pss']:.0f} MiB "
            f"({pb['pss'] / pa['pss']:.2f}x), RSS of the main process "
            f"{a['peak_rss_mib']:.0f} vs {b['peak_rss_mib']:.0f} MiB "
            f"({b['peak_rss_mib'] / a['peak_rss_mib']:.2f}x). Summed over the main process "
            "and its workers (peaks, sampled every 0.25 s); file-backed pages include the "
            "cache entries' pages the run touched (page cache, reclaimable)."
        )
    # validation's share of an epoch
    epoch_patches = cfg.data.train_patches
    whu_all, whu_inside = data["whu_os_val_grid"]
    subset = cfg.data.val_patches
    val_rows = []
    for key, r in runs.items():
        if len(r["scenes"]["train"]) != len(split["train"]):
            continue  # the smaller archive's run: memory only
        per_train = r["steady_s"] / r["steady_patches"]
        per_val = r["val_s"] / r["val_patches"]
        epoch_s = per_train * epoch_patches
        row = [
            key,
            f"{r['val_patches']} ({r['val_gridded'] - r['val_cache_served']})",
            f"{r['val_s']:.1f}",
            f"{per_val * 1000:.0f}",
            f"{per_train * 1000:.0f}",
            f"{epoch_s:.0f}",
            f"{r['val_s'] / epoch_s:.1%}",
            f"{per_val * whu_all / epoch_s:.1%}",
        ]
        if subset is not None:
            row.append(f"{per_val * subset / epoch_s:.1%}")
        val_rows.append(row)
    val_headers = [
        "run",
        "val patches here (read by torchgeo)",
        "validation s",
        "ms / val patch",
        "ms / training patch",
        f"epoch of {epoch_patches} patches s",
        "share: this replica's val",
        f"share: WHU-OS val, all {whu_all}",
    ]
    if subset is not None:
        val_headers.append(f"share: WHU-OS val, data.val_patches {subset}")
    validation = [
        f"Validation's share of an epoch (target <= {VAL_SHARE_TARGET:.0%}). The datamodule "
        "samples validation with torchgeo's `GriddedPatchSampler`: one grid of "
        f"{args.patch}² patches, stride {args.patch}, over the bounding box of the split's "
        "scenes, every patch that touches a scene kept; `data.val_patches` keeps a fixed, "
        "evenly spread subset of them (the same every epoch, every scene represented). "
        f"WHU-OPT-SAR's {WHU_OS_VAL_SCENES} validation scenes give {whu_all} patches "
        f"({whu_all / WHU_OS_VAL_SCENES:.0f} per scene), of which {whu_all - whu_inside} "
        f"({(whu_all - whu_inside) / whu_all:.0%}) cross a scene's edge: the scene cache "
        "cannot answer those, torchgeo reads them, and part of each is outside the scene. "
        "Shares below: the validation time per patch measured here times the patch count, "
        f"over the time of an epoch of the config's {epoch_patches} training patches at "
        "this run's training rate.",
        "",
        C.table(val_headers, val_rows),
    ]
    dates = "; ".join(f"`{k}` {r.get('date')}" for k, r in runs.items())
    fresh = "reused from an earlier run" if rep.get("reused") else "written by this run"
    return "\n".join(
        [
            f"Command: `{C.command_line()}`",
            "",
            C.machine_line(m),
            "",
            f"Replica: {rep['scenes']} WHU-OPT-SAR-shaped scenes of {h} x {w} px "
            f"(`gopt-geo synth --like whu-os --scenes {rep['scenes']} --size {h}x{w}`, "
            f"{fresh}): generated in {rep['generate_s']:.0f} s, "
            f"{human_size(rep['bytes'])} of GeoTIFFs; split {len(split['train'])} train / "
            f"{len(split['val'])} val / {len(split['test'])} test scenes.",
            "",
            f"Run: `configs/whu-os.yaml` with the backbone swapped for the packaged "
            f"EfficientNet-Lite0 (`model.backbone=efficientnet_lite0 model.weights=packaged`), "
            f"{args.steps} steps of {args.batch} patches of {args.patch}² as one epoch, then "
            f"one validation over every gridded validation patch; "
            f"`data.num_workers={args.workers}`, CPU, torch {m['torch_threads']} threads; each "
            "run a fresh process. Data wait and model times are means over the steps after "
            "the first; patches / s from the end of the first step to the end of the last.",
            "",
            table,
            "",
            *notes,
            *(
                [f"- Runs measured by different invocations of this script: {dates}."]
                if len({r.get("date") for r in runs.values()}) > 1
                else []
            ),
            "",
            *validation,
        ]
    )


def main() -> None:
    if C.child_main(run):
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 small scenes, 5 steps")
    parser.add_argument("--work", type=Path, default=C.DEFAULT_WORK)
    parser.add_argument("--scenes", type=int, help="scenes in the replica (20)")
    parser.add_argument("--size", type=_size, help="scene size HxW (3704x5556)")
    parser.add_argument(
        "--compare-scenes",
        type=int,
        help="a second disk-cache run on this many of the scenes, for peak RAM against the "
        "archive's size (10; 0: none)",
    )
    parser.add_argument("--steps", type=int, help="training steps per run (300)")
    parser.add_argument("--batch", type=int, help="patches per step (4)")
    parser.add_argument("--patch", type=int, default=512)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    parser.add_argument("--stats-patches", type=int, help="data.stats_patches (the config's)")
    parser.add_argument("--rerun", action="store_true", help="rerun runs saved in the JSON")
    parser.add_argument("--report-only", action="store_true", help="rebuild from the JSON")
    args = parser.parse_args()
    C.quiet()
    # --quick fills what is not given with its small values (a smoke run of any size)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    work = args.work
    name = "replica_training_quick" if args.quick else "replica_training"
    saved = work / "results" / f"{name}.json"
    data = json.loads(saved.read_text()) if saved.exists() else {}
    if args.report_only:
        ran = argparse.Namespace(**{**data["args"], "size": tuple(data["args"]["size"])})
        C.publish(
            "replica_training",
            "The headline job on a WHU-OS-shaped replica (issue 26)",
            report(data, ran, data["machine"]),
            args.quick,
        )
        return

    rep = replica(work, args.scenes, args.size)
    cache_dir = work / "scene-cache" / f"replica_{args.scenes}_{args.size[0]}x{args.size[1]}"
    plan = [("disk", args.scenes), ("none", args.scenes)]
    if args.compare_scenes:
        plan.append(("disk", args.compare_scenes))
    saved_runs = {} if args.rerun else data.get("runs", {})
    runs: dict[str, Any] = {}
    busy = C.wait_for_quiet(timeout=0 if args.quick else 60)
    m = C.machine()
    cleared = False
    for mode, n in plan:
        key = f"{'disk cache' if mode == 'disk' else 'no cache'}, {n} scenes"
        sig = _signature(args, mode, n)
        old = saved_runs.get(key)
        if old is not None and old.get("signature") == sig:
            print(f"  {key}: reusing the saved run")
            runs[key] = old
            continue
        split = rep["split"] if n == args.scenes else subset_split(n, rep["split"])
        if mode == "disk" and not cleared:
            shutil.rmtree(cache_dir, ignore_errors=True)  # the first disk run builds it
            cleared = True
        print(f"  {key}: training ...", flush=True)
        start = time.perf_counter()
        result = C.run_child(
            "replica_training.py",
            {
                "mode": mode,
                "root": rep["root"],
                "split": split,
                "out": str(work / "replica_training" / f"{mode}_{n}"),
                "cache_dir": str(cache_dir) if mode == "disk" else None,
                "steps": args.steps,
                "batch": args.batch,
                "patch": args.patch,
                "workers": args.workers,
                "stats_patches": args.stats_patches,
                "spawned": time.time(),
            },
            env={"GOPT_GEO_SCENE_CACHE_MB": "1" if mode == "disk" else "0"},
        )
        result["signature"] = sig
        result["wall_s"] = time.perf_counter() - start
        result["date"] = time.strftime("%Y-%m-%d %H:%M")
        runs[key] = result
        print(f"  ... {result['wall_s']:.0f} s", flush=True)
        data = {**data, "runs": {**data.get("runs", {}), key: result}}
        saved.parent.mkdir(parents=True, exist_ok=True)  # an interrupted run keeps it
        saved.write_text(json.dumps(data, indent=1))
    data = {
        "machine": {**m, "busy_at_start": round(busy, 2)},
        "replica": rep,
        "runs": runs,
        "whu_os_val_grid": whu_os_val_grid(args.patch, WHU_OS_SHAPE),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(data, indent=1))
    C.publish(
        "replica_training",
        "The headline job on a WHU-OS-shaped replica (issue 26)",
        report(data, args, m),
        args.quick,
    )


if __name__ == "__main__":
    main()
