"""Issue 26: patches per second from a split larger than the RAM budget.

One process, one split of synthetic scenes (``--scenes`` of ``--size``² px, optical
uint16 x 4 + SAR float32 x 2 in EPSG:4326 + labels), the same random ``--patch``² patches
served three ways, interleaved round by round (so the machine's drift cancels in the
ratios):

- **torchgeo**: every patch read by torchgeo (index query, windowed reads, SAR warped per
  patch) - ``GOPT_GEO_SCENE_CACHE_MB=0``;
- **disk cache**: the split over a tiny in-memory budget (``GOPT_GEO_SCENE_CACHE_MB=1``),
  so it is cached on disk and patches are sliced from the memory-mapped entries;
- **in-memory cache**: the default budget, the scenes held in RAM.

Each patch is what the DataLoader gets (``dataset[index]``, cleaned). The disk cache is
built from scratch first (its build time and size are reported; the page cache then
holds the entries, as in a training run's second epoch and later).

    ./run python benchmarks/loader_rate.py
    ./run python benchmarks/loader_rate.py --quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

MODES = ("torchgeo", "disk cache", "in-memory cache")


def _scenes(work: Path, n: int, size: int) -> Path:
    """``n`` synthetic scenes of ``size``² under ``work`` (made once, then reused)."""
    from gopt_geo.data.synthetic import make_scenes

    root = work / f"loader_{n}x{size}"
    if len(list((root / "labels").glob("*.tif"))) < n:
        print(f"  generating {n} scenes of {size}^2 ...", flush=True)
        t, _ = C.timed(lambda: make_scenes(root, n, size=size, seed=26))
        print(f"  ... {t:.0f} s", flush=True)
    return root


def _dataset(root: Path, budget_mb: str, disk_dir: Path | None) -> tuple[Any, float]:
    """The split's dataset with its scene cache built under ``budget_mb``; build seconds."""
    from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
    from gopt_geo.data.scenes import SCENE_CACHE_ENV, OpticalSarScenes

    names = sorted(p.stem for p in (root / "optical").glob("*.tif"))
    os.environ[SCENE_CACHE_ENV] = budget_mb
    ds = OpticalSarScenes(
        root,
        split="train",
        scenes={"train": names},
        routing=C.routing(),
        classes=WHU_OPT_SAR_CLASSES,
    )
    start = time.perf_counter()
    ds.build_scene_cache(disk_dir=disk_dir)
    return ds, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 scenes of 512²")
    parser.add_argument("--work", type=Path, default=C.DEFAULT_WORK)
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--patch", type=int, default=512)
    parser.add_argument("--per-round", type=int, default=8, help="patches per mode per round")
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    C.quiet()
    if args.quick:
        args.scenes, args.size, args.patch, args.per_round, args.rounds = 2, 512, 128, 4, 2
    from torchgeo.samplers import RandomPatchSampler

    from gopt_geo.data import disk_cache
    from gopt_geo.data.scenes import SCENE_CACHE_BYTES

    root = _scenes(args.work, args.scenes, args.size)
    cache_dir = args.work / "scene-cache" / f"loader_{args.scenes}x{args.size}"
    shutil.rmtree(cache_dir, ignore_errors=True)  # measure a build from scratch
    C.wait_for_quiet(timeout=0 if args.quick else 60)
    m = C.machine()

    rss0 = C.current_rss_mib()
    disk, build_s = _dataset(root, "1", cache_dir)
    rss_disk = C.current_rss_mib() - rss0
    assert disk.scene_cache is not None and disk.scene_cache.scenes[0].source is not None
    plain, _ = _dataset(root, "0", None)
    assert plain.scene_cache is None
    memory, memory_s = _dataset(root, str(SCENE_CACHE_BYTES // 2**20), None)
    assert memory.scene_cache is not None and memory.scene_cache.scenes[0].source is None
    reopen_start = time.perf_counter()
    _dataset(root, "1", cache_dir)  # the entries found and mapped again
    reopen_s = time.perf_counter() - reopen_start

    n = args.per_round * (args.rounds + 1)
    indices = list(RandomPatchSampler(plain, size=args.patch, length=n, generator=26))
    datasets = dict(zip(MODES, (plain, disk, memory), strict=True))
    for index in indices[:3]:  # the three modes serve the same sample
        a, b, c = (ds[index] for ds in datasets.values())
        for key in ("image", "mask"):
            x, y, z = a[key].nan_to_num(-1), b[key].nan_to_num(-1), c[key].nan_to_num(-1)
            assert (x == y).all() and (x == z).all(), key
    cursor = dict.fromkeys(MODES, 0)

    def serve(mode: str) -> Any:
        def step() -> None:
            ds = datasets[mode]
            for _ in range(args.per_round):
                ds[indices[cursor[mode] % n]]
                cursor[mode] += 1

        return step

    times, ratios = C.interleaved_ratios(
        {mode: serve(mode) for mode in MODES}, reference="torchgeo", rounds=args.rounds
    )
    rates = {mode: args.per_round / C.median(times[mode]) for mode in MODES}
    for mode in MODES:
        print(f"{mode}: {rates[mode]:.1f} patches/s")

    sources = sum(
        f.stat().st_size for d in ("optical", "sar", "labels") for f in (root / d).glob("*.tif")
    )
    cached = sum(f.stat().st_size for f in cache_dir.rglob("*.npy"))
    C.save_raw(
        args.work,
        "loader_rate",
        {
            "machine": m,
            "args": vars(args) | {"work": str(args.work)},
            "times": times,
            "rates": rates,
            "patch": args.patch,
        },
        args.quick,
    )
    rows = [
        [
            mode,
            f"{rates[mode]:.1f}",
            f"{C.median(times[mode]) / args.per_round * 1000:.1f}",
            "1.00x" if mode == "torchgeo" else f"{1 / ratios[mode]:.2f}x",
        ]
        for mode in MODES
    ]
    # per-round ratio of the disk cache's time to the in-memory cache's (same rounds)
    disk_vs_memory = C.median(
        [m_ / d for d, m_ in zip(times["disk cache"], times["in-memory cache"], strict=True)]
    )
    body = "\n".join(
        [
            f"Command: `{C.command_line()}`",
            "",
            C.machine_line(m),
            "",
            f"Split: {args.scenes} synthetic scenes of {args.size}² px (optical uint16 x 4, "
            f"SAR float32 x 2 in EPSG:4326, labels); random {args.patch}² patches as the "
            f"DataLoader gets them (cleaned), one process, {args.rounds} rounds of "
            f"{args.per_round} patches per mode, interleaved; medians.",
            "",
            C.table(["patches from", "patches / s", "ms / patch", "speed vs torchgeo"], rows),
            "",
            f"Disk cache against the in-memory cache: {disk_vs_memory:.2f}x the speed "
            "(median of per-round ratios).",
            "",
            f"Disk cache: built from scratch in {build_s:.1f} s "
            f"({disk_cache.human_size(cached)} on disk for "
            f"{disk_cache.human_size(sources)} of source GeoTIFFs); found and mapped again "
            f"in {reopen_s:.2f} s; RSS after the build {rss_disk:+.0f} MiB (one strip of a "
            f"scene is held at a time). In-memory cache: read in {memory_s:.1f} s.",
        ]
    )
    C.publish("loader_rate", "Loader rate beyond the RAM cache (issue 26)", body, args.quick)


if __name__ == "__main__":
    main()
