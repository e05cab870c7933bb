"""Issue 7, item 3: gopt-geo's predictor against the usual TorchGeo-style whole-scene loop.

The usual approach, as TorchGeo / TerraTorch / geoai users typically write it: the
optical and SAR rasters as torchgeo ``RasterDataset``s joined by ``&``
(``IntersectionDataset``; torchgeo warps the SAR onto the optical grid per sample), a
``GriddedPatchSampler`` with the same window and stride, a ``DataLoader``
(``stack_samples``, the default ``num_workers=0``), the same model, a full-scene
in-memory float32 accumulator of blended logits (the same Hann weight), argmax, one
``rasterio`` write (tiled, DEFLATE GeoTIFF). gopt-geo: ``Predictor.predict`` with the
same window, overlap and batch, writing the class map only (no confidence, no vector),
so that both produce the same output. The two class maps are compared pixel by pixel
as a sanity check.

Each run is a fresh process (peak RSS = ``ru_maxrss``); the two approaches alternate.

    ./run python benchmarks/vs_usual_approach.py
    ./run python benchmarks/vs_usual_approach.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

WINDOW, OVERLAP, BATCH = 512, 0.25, 4


def usual_predict(files: Any, model: Any, routing: Any, classes: Any, out: Path) -> int:
    """The typical torchgeo inference loop; returns the number of patches."""
    import numpy as np
    import rasterio
    import torch
    from torch.utils.data import DataLoader
    from torchgeo.datasets import IntersectionDataset
    from torchgeo.datasets.utils import stack_samples
    from torchgeo.samplers import GriddedPatchSampler

    from gopt_geo.data.rasters import OpticalRaster, SarRaster, collate_intersection
    from gopt_geo.inference.tiling import blend_weight

    opt = OpticalRaster(files.optical, routing.optical_bands)
    sar = SarRaster(files.sar, routing.sar_bands, crs=opt.crs, res=opt.res)
    ds = IntersectionDataset(opt, sar, spatial_only=True, collate_fn=collate_intersection)
    stride = max(1, int(round(WINDOW * (1 - OVERLAP))))
    sampler = GriddedPatchSampler(ds, size=WINDOW, stride=stride)
    loader = DataLoader(ds, sampler=sampler, batch_size=BATCH, collate_fn=stack_samples)

    with rasterio.open(files.optical) as src:
        profile = src.profile
        height, width, transform = src.height, src.width, src.transform
    k = classes.num_classes
    acc = np.zeros((k, height, width), dtype=np.float32)
    weight = blend_weight(WINDOW, WINDOW).numpy()
    patches = 0
    for batch in loader:
        rgb, aux = routing.prepare(batch["image"])
        with torch.inference_mode():
            logits = model(rgb, aux).logits.numpy()
        for j in range(logits.shape[0]):
            t = batch["transform"][j].tolist()  # from_origin(xmin, ymax, xres, yres)
            col = int(round((t[2] - transform.c) / transform.a))
            row = int(round((t[5] - transform.f) / transform.e))
            r0, c0 = max(row, 0), max(col, 0)
            r1, c1 = min(row + WINDOW, height), min(col + WINDOW, width)
            sl = (slice(r0 - row, r1 - row), slice(c0 - col, c1 - col))
            acc[:, r0:r1, c0:c1] += logits[j][:, sl[0], sl[1]] * weight[sl]
            patches += 1
    lut = classes.index_to_code_lut()
    codes = lut[acc.argmax(0)].astype(np.uint8)
    profile.update(
        count=1,
        dtype="uint8",
        nodata=None,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        bigtiff="if_safer",
    )
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(codes, 1)
    return patches


def _measure(args: dict[str, Any]) -> dict[str, Any]:
    from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
    from gopt_geo.inference import PredictOptions, Predictor

    work = Path(args["work"])
    files = C.scene(work, args["size"])
    routing = C.routing()
    model = C.model("gopt", args["backbone"]).eval()
    rss_before = C.current_rss_mib()
    out_dir = work / "out" / f"usual_{args['backbone']}_{args['size']}"
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args["approach"] == "usual":
        out = out_dir / "usual_classes.tif"
        n = usual_predict(files, model, routing, WHU_OPT_SAR_CLASSES, out)
    else:
        result = Predictor(model, routing, WHU_OPT_SAR_CLASSES, device="cpu").predict(
            files.optical,
            files.sar,
            out_dir,
            PredictOptions(
                window=WINDOW,
                overlap=OVERLAP,
                batch_size=BATCH,
                confidence=False,
                vector=None,
                overwrite=True,
                progress=False,
            ),
        )
        out, n = result.class_map, result.stats.windows
    return {
        "seconds": time.perf_counter() - start,
        "windows": n,
        "rss_before_mib": rss_before,
        "class_map": str(out),
    }


def _agreement(a: str, b: str) -> float:
    import numpy as np
    import rasterio

    with rasterio.open(a) as x, rasterio.open(b) as y:
        return float(np.mean(x.read(1) == y.read(1)))


def main() -> None:
    if C.child_main(_measure):
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 1024^2")
    parser.add_argument("--work", type=Path, default=C.DEFAULT_WORK)
    parser.add_argument(
        "--cases",
        default=None,
        help="backbone:size:repeats list (backbones: lite0, vit_s, tiny, ...); default "
        "lite0:2048:3,tiny:8192:1 (--quick: tiny:1024:1)",
    )
    args = parser.parse_args()
    C.quiet()
    cases = args.cases or ("tiny:1024:1" if args.quick else "lite0:2048:3,tiny:8192:1")
    m = C.machine()
    rows, raw = [], {}
    for case in cases.split(","):
        backbone, size, repeats = case.split(":")
        size, repeats = int(size), int(repeats)
        C.scene(args.work, size)
        runs: dict[str, list[dict[str, Any]]] = {"gopt-geo": [], "usual": []}
        for r in range(repeats):
            order = ["gopt-geo", "usual"] if r % 2 == 0 else ["usual", "gopt-geo"]
            for approach in order:
                C.wait_for_quiet(timeout=0 if args.quick else 60)
                res = C.run_child(
                    "vs_usual_approach.py",
                    {
                        "work": str(args.work),
                        "size": size,
                        "backbone": backbone,
                        "approach": approach,
                    },
                )
                print(
                    f"{backbone} {size}^2 {approach} run {r + 1}: {res['seconds']:.1f} s, "
                    f"peak {res['peak_rss_mib']:.0f} MiB",
                    flush=True,
                )
                runs[approach].append(res)
        agree = _agreement(runs["gopt-geo"][0]["class_map"], runs["usual"][0]["class_map"])
        raw[case] = {"runs": runs, "agreement": agree}
        sec = {a: C.median([x["seconds"] for x in v]) for a, v in runs.items()}
        peak = {a: C.median([x["peak_rss_mib"] for x in v]) for a, v in runs.items()}
        grow = {
            a: C.median([x["peak_rss_mib"] - x["rss_before_mib"] for x in v])
            for a, v in runs.items()
        }
        for approach in ("gopt-geo", "usual"):
            rows.append(
                [
                    f"GoPT / {C.BACKBONE_LABEL[backbone]}",
                    f"{size}²",
                    "gopt-geo Predictor"
                    if approach == "gopt-geo"
                    else "torchgeo sampler + DataLoader + in-memory accumulator",
                    runs[approach][0]["windows"],
                    repeats,
                    f"{sec[approach]:.1f}",
                    f"{peak[approach]:.0f}",
                    f"{grow[approach]:.0f}",
                    f"{sec['gopt-geo'] / sec['usual']:.2f}" if approach == "gopt-geo" else "",
                    f"{peak['gopt-geo'] / peak['usual']:.2f}" if approach == "gopt-geo" else "",
                    f"{100 * agree:.2f}%" if approach == "gopt-geo" else "",
                ]
            )
    C.save_raw(args.work, "vs_usual_approach", {"machine": m, "cases": raw}, args.quick)
    body = "\n".join(
        [
            f"Command: `{C.command_line()}`",
            "",
            C.machine_line(m),
            "",
            f"Window {WINDOW}, overlap {OVERLAP} (stride {int(round(WINDOW * (1 - OVERLAP)))}), "
            f"batch {BATCH}, CPU; both write the class map only. Untrained GoPT prompters and "
            "head (speed and memory do not depend on their values). Medians over the runs; "
            "ratios are gopt-geo / usual. 'RSS growth' = peak RSS minus the RSS after the "
            "model was built.",
            "",
            C.table(
                [
                    "model",
                    "scene",
                    "approach",
                    "windows",
                    "runs",
                    "seconds",
                    "peak RSS MiB",
                    "RSS growth MiB",
                    "time ratio",
                    "peak memory ratio",
                    "same class",
                ],
                rows,
            ),
        ]
    )
    C.publish("vs_usual_approach", "3. Against the usual approach", body, args.quick)


if __name__ == "__main__":
    main()
