"""Issue 7, item 8: vectorisation time, peak memory and polygons per second.

``gopt_geo.outputs.vectorize`` on an 8192² class map. The class map is the reference
land-cover raster of a synthetic 8192² scene (uint8 WHU-OPT-SAR codes with class-name
tags, i.e. the structure of a clean predicted map: ~40-pixel parcels, roads, lakes);
each run is a fresh process (peak RSS = ``ru_maxrss``), median of ``--repeats``.

    ./run python benchmarks/vectorize_speed.py
    ./run python benchmarks/vectorize_speed.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

#: (label, options) of the settings measured.
SETTINGS = (
    ("gpkg, no filtering", {"min_area": 0.0, "simplify": 0.0}, ".gpkg"),
    ("gpkg, min area 1000 m², simplify 10 m", {"min_area": 1000.0, "simplify": 10.0}, ".gpkg"),
    ("GeoParquet, no filtering", {"min_area": 0.0, "simplify": 0.0}, ".parquet"),
)


def _measure(args: dict[str, Any]) -> dict[str, Any]:
    from gopt_geo.inference import vectorize

    work = Path(args["work"])
    files = C.scene(work, args["size"])
    out = work / "out" / f"vector_{args['size']}{args['suffix']}"
    rss_before = C.current_rss_mib()
    start = time.perf_counter()
    result = vectorize(files.labels, out, overwrite=True, **args["options"])
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "features": result.features,
        "removed_small": result.removed_small,
        "blocks": result.blocks,
        "rss_before_mib": rss_before,
        "bytes": out.stat().st_size,
    }


def main() -> None:
    if C.child_main(_measure):
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1024^2, 1 repeat")
    parser.add_argument("--work", type=Path, default=C.DEFAULT_WORK)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    C.quiet()
    size = 1024 if args.quick else args.size
    repeats = 1 if args.quick else args.repeats
    settings = SETTINGS[:1] if args.quick else SETTINGS
    C.scene(args.work, size)
    m = C.machine()
    rows, raw = [], {}
    for label, options, suffix in settings:
        runs = []
        for r in range(repeats):
            C.wait_for_quiet(timeout=0 if args.quick else 60)
            res = C.run_child(
                "vectorize_speed.py",
                {"work": str(args.work), "size": size, "options": options, "suffix": suffix},
            )
            print(f"{label} run {r + 1}: {res['seconds']:.1f} s, {res['features']} polygons")
            runs.append(res)
        raw[label] = runs
        sec = C.median([r["seconds"] for r in runs])
        feats = runs[0]["features"]
        rows.append(
            [
                label,
                len(runs),
                f"{sec:.1f}",
                f"{feats:,}",
                f"{feats / sec:,.0f}",
                f"{size * size / 1e6 / sec:.1f}",
                f"{C.median([r['peak_rss_mib'] for r in runs]):.0f}",
                f"{C.median([r['peak_rss_mib'] - r['rss_before_mib'] for r in runs]):.0f}",
                f"{runs[0]['bytes'] / 2**20:.1f}",
            ]
        )
    C.save_raw(args.work, "vectorize_speed", {"machine": m, "runs": raw}, args.quick)
    body = "\n".join(
        [
            f"Command: `{C.command_line()}`",
            "",
            C.machine_line(m),
            "",
            f"Class map: the {size}² reference land-cover raster of a synthetic scene "
            "(8 classes incl. background, no nodata), blocks of 2048 rows (default).",
            "",
            C.table(
                [
                    "setting",
                    "runs",
                    "seconds (median)",
                    "polygons",
                    "polygons / s",
                    "MPix / s",
                    "peak RSS MiB",
                    "RSS growth while vectorising MiB",
                    "file MiB",
                ],
                rows,
            ),
        ]
    )
    C.publish("vectorize_speed", "8. Vectorisation", body, args.quick)


if __name__ == "__main__":
    main()
