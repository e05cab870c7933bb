"""Issue 11: many scenes - scenes/hour with 1 and 2 Dask workers, and the Dask path's
overhead against a plain sequential loop at one worker.

Eight synthetic scenes of 512² (optical + SAR in EPSG:4326, warped on the fly), mapped by
GoPT on a randomly initialised timm ``test_efficientnet`` (speed does not depend on the
weights) with predict's default outputs (class map, confidence, GeoPackage polygons,
quicklook, STAC item, report). Every configuration runs in a fresh process, timed from
the start of its work (imports included) to the end, and in parts:

- ``loop``: the plain sequential loop: load the model once, ``Predictor.predict`` per
  scene, nothing else (what a user would write by hand);
- ``in-process``: ``predict_many`` without an executor (adds resume checks, run files);
- ``dask 1x2`` / ``dask 2x1``: ``predict_many`` on a ``LocalCluster`` of 1 worker with 2
  torch threads / 2 workers with 1 thread (what ``gopt-geo predict-many`` starts);
- ``floor``: the loop with a 1x1-convolution model, i.e. everything but the network
  (reading, SAR warping, COGs, polygons, quicklook, report): the least a scene costs a
  worker whatever its accelerator.

The Dask children also time 200 no-op tasks through the same executor (the scheduler's
overhead per task). Overhead ratios compare medians measured in the same run.

    ./run python benchmarks/predict_many.py            # the section in RESULTS.md
    ./run python benchmarks/predict_many.py --quick    # smoke run: 3 scenes of 256²
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = "predict_many.py"


def _setup(work: Path, n: int, size: int) -> tuple[Path, Path]:
    """Cached scenes and the adapter file (the tiny random-init GoPT)."""
    from gopt_geo.checkpoint import save_adapter
    from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
    from gopt_geo.data.synthetic import make_scenes

    root = work / f"scenes_{n}x{size}"
    if not (root / "optical" / f"scene_{n - 1:03d}.tif").exists():
        print(f"  generating {n} scenes of {size}^2 ...", flush=True)
        make_scenes(root, n, size=size, seed=0)
    adapter = work / "adapter_tiny.safetensors"
    if not adapter.exists():
        model = C.model("gopt", "tiny")
        meta = {"routing": C.routing().to_dict(), "classes": WHU_OPT_SAR_CLASSES.to_dict()}
        save_adapter(adapter, model, meta)
    return root, adapter


def _scenes(root: Path) -> list[Any]:
    from gopt_geo.inference.sources import scenes_from_dirs

    return scenes_from_dirs(root / "optical", root / "sar")


def _measure(args: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    import shutil

    import torch

    import gopt_geo.checkpoint  # noqa: F401  (timm too: imports are timed apart from loading)
    from gopt_geo.inference.options import PredictOptions

    kind, root, adapter = args["kind"], Path(args["root"]), args["adapter"]
    out = Path(args["out"])
    shutil.rmtree(out, ignore_errors=True)
    options = PredictOptions(progress=False)
    scenes = _scenes(root)
    result: dict[str, Any] = {"kind": kind, "scenes": len(scenes)}
    if kind in ("loop", "floor"):
        from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
        from gopt_geo.inference.predictor import Predictor

        torch.set_num_threads(args["threads"])
        imported = time.perf_counter()
        if kind == "loop":
            predictor = Predictor.from_adapter(adapter, device="cpu")
        else:

            class Pointwise(torch.nn.Module):  # a model that costs next to nothing
                def __init__(self) -> None:
                    super().__init__()
                    self.conv = torch.nn.Conv2d(3 + C.routing().num_aux, 7, 1)

                def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
                    return self.conv(torch.cat([rgb, aux], 1))

            predictor = Predictor(Pointwise(), C.routing(), WHU_OPT_SAR_CLASSES, device="cpu")
        loaded = time.perf_counter()
        per_scene, finished = [], []
        for s in scenes:
            t = time.perf_counter()
            predictor.predict(s.optical, s.sar, out / s.id, options)
            per_scene.append(time.perf_counter() - t)
            finished.append(time.time())
        end = time.perf_counter()
        result.update(
            imports_s=imported - start,
            load_s=loaded - imported,
            first_s=loaded - imported + per_scene[0],
            per_scene_s=per_scene,
            finished_at=finished,
            workers=["loop"] * len(scenes),
        )
    else:
        from gopt_geo.inference.cluster import executor_for
        from gopt_geo.inference.many import predict_many

        imported = time.perf_counter()
        workers = 0 if kind == "in-process" else args["workers"]
        with executor_for(None, workers, args["threads"], "cpu") as (executor, threads, what):
            up = time.perf_counter()
            run = predict_many(
                scenes,
                adapter,
                out,
                executor=executor,
                options=options,
                threads=threads,
                progress=False,
                executor_info=what,
            )
            mapped = time.perf_counter()
            if executor is not None:  # the scheduler's overhead per task: no-op tasks
                n = 200
                t = time.perf_counter()
                futures = [executor.submit(abs, i) for i in range(n)]
                [f.result() for f in futures]
                result["noop_batch_ms"] = (time.perf_counter() - t) / n * 1e3
                t = time.perf_counter()
                for i in range(20):
                    executor.submit(abs, -i).result()
                result["noop_roundtrip_ms"] = (time.perf_counter() - t) / 20 * 1e3
            closing = time.perf_counter()
        end = time.perf_counter()
        failed = [o.id for o in run.scenes if o.status != "done"]
        if failed:
            raise RuntimeError(f"scenes failed: {failed}")
        firsts = {}
        for o in sorted(run.scenes, key=lambda o: o.finished_at or 0):
            firsts.setdefault(o.worker, o.seconds)
        result.update(
            imports_s=imported - start,
            cluster_up_s=up - imported,
            run_s=mapped - up,
            close_s=end - closing,
            first_s=C.median(list(firsts.values())),
            per_scene_s=[o.seconds for o in run.scenes],
            finished_at=[o.finished_at for o in run.scenes],
            workers=[o.worker for o in run.scenes],
            model_loads=run.summary["model_loads"],
            executor=what,
        )
        end = end - (closing - mapped)  # the no-op probe is not part of the run
    result["total_s"] = end - start
    result["steady_s"] = _steady(result["workers"], result["finished_at"])
    return result


def _steady(workers: list[str], finished: list[float]) -> float:
    """Seconds per scene once every worker runs (after its first scene): from the times
    the scenes finished, worker by worker, so that Dask's time between tasks counts."""
    by_worker: dict[str, list[float]] = {}
    for w, t in zip(workers, finished, strict=True):
        by_worker.setdefault(w, []).append(t)
    rate = sum((len(ts) - 1) / (max(ts) - min(ts)) for ts in by_worker.values() if len(ts) > 1)
    return 1 / rate if rate else float("nan")


def main() -> None:
    if C.child_main(_measure):
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 scenes of 256^2")
    parser.add_argument("--work", type=Path, default=C.DEFAULT_WORK)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    C.quiet()
    n, size = (3, 256) if args.quick else (8, 512)
    repeats = 1 if args.quick else args.repeats
    work = args.work / "predict_many"
    root, adapter = _setup(work, n, size)
    configs = [
        ("loop", {"kind": "loop", "threads": 2}),
        ("in-process", {"kind": "in-process", "threads": 2}),
        ("dask 1x2", {"kind": "dask", "workers": 1, "threads": 2}),
        ("dask 2x1", {"kind": "dask", "workers": 2, "threads": 1}),
        ("floor", {"kind": "floor", "threads": 2}),
    ]
    m = C.machine()
    raw: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in configs}
    for r in range(repeats):
        order = configs if r % 2 == 0 else list(reversed(configs))
        for label, cfg in order:
            C.wait_for_quiet(timeout=0 if args.quick else 60)
            res = C.run_child(
                SCRIPT,
                {**cfg, "root": str(root), "adapter": str(adapter), "out": str(work / "out")},
            )
            print(
                f"{label} run {r + 1}: total {res['total_s']:.1f} s, steady "
                f"{res['steady_s']:.2f} s/scene",
                flush=True,
            )
            raw[label].append(res)
    C.save_raw(args.work, "predict_many", {"machine": m, "runs": raw}, args.quick)
    C.publish("predict_many", "9. Many scenes: predict-many", _body(raw, m, n, size), args.quick)


def _med(runs: list[dict[str, Any]], key: str) -> float:
    return C.median([r[key] for r in runs])


def _body(raw: dict[str, list[dict[str, Any]]], m: dict[str, Any], n: int, size: int) -> str:
    loop_total, loop_steady = _med(raw["loop"], "total_s"), _med(raw["loop"], "steady_s")
    rows = []
    for label, runs in raw.items():
        total, steady, first = _med(runs, "total_s"), _med(runs, "steady_s"), _med(runs, "first_s")
        vs = label not in ("floor",)
        rows.append(
            [
                label,
                len(runs),
                f"{total:.1f}",
                f"{n / (total / 3600):,.0f}",
                f"{first:.1f}",
                f"{steady:.2f}",
                f"{3600 / steady:,.0f}",
                f"{total / loop_total:.2f}x" if vs else "-",
                f"{steady / loop_steady:.2f}x" if vs else "-",
            ]
        )
    dask = raw["dask 1x2"] + raw["dask 2x1"]
    facts = {
        "noop_batch": C.median([r["noop_batch_ms"] for r in dask]),
        "noop_rt": C.median([r["noop_roundtrip_ms"] for r in dask]),
        "imports": _med(raw["loop"], "imports_s"),
        "load": _med(raw["loop"], "load_s"),
        "up": _med(raw["dask 1x2"], "cluster_up_s"),
        "close": _med(raw["dask 1x2"], "close_s"),
        "first_dask": _med(raw["dask 1x2"], "first_s"),
        "first_loop": _med(raw["loop"], "first_s"),
        "floor": _med(raw["floor"], "steady_s"),
        "gopt": loop_steady,
        "dask1": _med(raw["dask 1x2"], "steady_s"),
        "dask2": _med(raw["dask 2x1"], "steady_s"),
        "mpix": size * size / 1e6,
        "n": n,
        "loop_total": loop_total,
        "dask1_total": _med(raw["dask 1x2"], "total_s"),
        "spread_lo": min(min(r["per_scene_s"][1:]) for r in raw["loop"]),
        "spread_hi": max(max(r["per_scene_s"][1:]) for r in raw["loop"]),
        "load_avg": m["load_avg_at_start"],
    }
    table = C.table(
        [
            "configuration",
            "runs",
            f"total s ({n} scenes)",
            "scenes/h end to end",
            "first scene s",
            "steady s / scene",
            "steady scenes/h",
            "total vs loop",
            "steady vs loop",
        ],
        rows,
    )
    f = facts
    return "\n".join(
        [
            f"Command: `{C.command_line()}`",
            "",
            C.machine_line(m),
            "",
            f"{n} synthetic scenes of {size}² (optical 4 bands uint16 in UTM, SAR 2 bands in "
            "EPSG:4326 warped on the fly), GoPT on a random-init timm `test_efficientnet`, "
            "predict's default options and outputs (window 512, class map + confidence "
            "COGs, GeoPackage polygons, quicklook, STAC item, report), CPU. Each "
            "configuration runs in a fresh process; medians over the runs. *total*: from "
            "the start of the work (library imports included) to the end, cluster start "
            "and stop included. *first scene*: on a fresh worker (the loop: after the "
            "imports), model loading included (for Dask also the worker's imports). "
            "*steady*: seconds per scene once every worker runs, from the times the "
            "scenes finished, worker by worker, so Dask's time between two tasks counts. "
            "*floor*: the loop with a 1x1-convolution model (everything but the network).",
            "",
            table,
            "",
            "Fixed costs measured here: importing the library in a fresh process "
            f"{f['imports']:.1f} s; loading this adapter {f['load']:.2f} s; starting a "
            f"1-worker LocalCluster {f['up']:.1f} s and stopping it {f['close']:.1f} s; the "
            f"first scene on a fresh Dask worker {f['first_dask']:.1f} s against "
            f"{f['first_loop']:.1f} s in the loop (model load included in both); Dask's "
            f"own cost per task {f['noop_batch']:.1f} ms when many are queued and "
            f"{f['noop_rt']:.1f} ms for one round trip (no-op tasks on the same cluster).",
            "",
            _paragraph(f),
        ]
    )


def _paragraph(f: dict[str, float]) -> str:
    """The reading of the numbers above; every claim is computed from them."""
    fixed = f["up"] + f["close"] + max(0.0, f["first_dask"] - f["first_loop"])
    scenes_for_5pct = fixed / (0.05 * f["gopt"])
    share_floor = f["floor"] / f["gopt"]
    two_vs_one = f["dask1"] / f["dask2"]
    if two_vs_one > 1.2:
        workers = (
            f"two 1-thread workers mapped {two_vs_one:.1f}x as many scenes per hour as one "
            f"2-thread worker ({f['dask2']:.2f} against {f['dask1']:.2f} s/scene): most of a "
            f"scene's time is not the network (the *floor* is {100 * share_floor:.0f}% of a "
            "GoPT scene) and much of it is single-threaded (warping, COG writing, "
            "polygonising, the quicklook), so on CPUs processes scale better than torch "
            "threads (given the noise noted above, take the size of that gain with care)."
        )
    else:
        workers = (
            f"two 1-thread workers ({f['dask2']:.2f} s/scene) did about as well as one "
            f"2-thread worker ({f['dask1']:.2f} s/scene): on 2 cores they share the same CPUs."
        )
    noisy = f["spread_hi"] > 1.5 * f["spread_lo"]
    noise = (
        f"This run was **noisy**: another process kept the machine busy (load average "
        f"{f['load_avg']:.1f} at the start) and the same scene took {f['spread_lo']:.2f} to "
        f"{f['spread_hi']:.2f} s in the loop, so ratios within about ±30% (the steady "
        "rate of Dask at one worker against the loop's above included) are noise, not "
        "differences.\n\n"
        if noisy
        else ""
    )
    return (
        noise + "**Overhead of the Dask path at one worker.** Per scene it is the scheduler's "
        f"{f['noop_batch']:.1f} ms per task against {f['gopt']:.2f} s per {f['mpix']:.2f} MPix "
        f"scene ({100 * f['noop_batch'] / 1e3 / f['gopt']:.2f}%; a task carries paths, never "
        f"pixels). Per run it is a fixed {fixed:.1f} s: starting ({f['up']:.1f} s) and "
        f"stopping ({f['close']:.1f} s) the cluster, and the fresh worker's imports before "
        f"its first scene ({f['first_dask']:.1f} against {f['first_loop']:.1f} s in the "
        f"loop). Hence {f['dask1_total'] / f['loop_total']:.2f}x the loop's wall time for "
        f"these {f['n']:.0f} scenes, and within the 1.05x target from about "
        f"{scenes_for_5pct:.0f} scenes of this size (fewer for larger scenes).\n\n"
        "**What limits scaling on a cluster.** Not the scheduler: at "
        f"{f['noop_batch']:.1f} ms per task one scheduler hands out some "
        f"{3600 / (f['noop_batch'] / 1e3):,.0f} tasks/hour. Each worker pays its start-up "
        f"once (imports {f['imports']:.1f} s in a fresh process, model load "
        f"{f['load']:.2f} s for this tiny adapter, more for a real backbone), amortised "
        "after a few scenes. Then the CPU and I/O work that no GPU takes over: with a free "
        f"model (*floor*) a {f['mpix']:.2f} MPix scene still costs {f['floor']:.2f} s - "
        "reading, warping SAR, writing COGs with overviews, polygonising, quicklook, "
        f"report - at most {3600 / f['floor']:,.0f} scenes/hour per such worker. On this "
        f"2-core machine {workers}\n\n"
        "**N GPU workers.** The network then costs milliseconds per 512² window, so a GPU "
        "worker runs at about its CPU floor and the GPU idles most of the time: N GPU "
        f"workers reach about N x {3600 / f['floor']:,.0f} scenes/hour of {f['mpix']:.2f} "
        f"MPix (N x {3600 / f['floor'] * f['mpix']:,.0f} MPix/hour) with 2 cores each, "
        "roughly proportionally more with more cores per worker or several worker "
        "processes per GPU (`--workers` above the GPU count shares the GPUs round-robin), "
        "as long as the storage serves every worker's reads. This is an estimate from the "
        "CPU-side costs measured here: this machine has no GPU to check it on."
    )


if __name__ == "__main__":
    main()
