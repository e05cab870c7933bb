"""Issue 23: at the pixel. GoPT with and without the full-resolution detail path against
the yardsticks a remote-sensing user applies first, on scenes with thin features.

Data: the synthetic scenes of ``gopt_geo.data.synthetic`` draw rivers and canals 1-3 px
wide, roads 1-2 px and small ponds. Training: 5 scenes (seed 0; 3 train, 1 val); test:
one held-out scene (seed 1234, 30 % cloud) 60 km away, never trained on; the detail
path's design was chosen by its scores on it, so ``--test-seed N`` draws another.
Every learned row trains with the demo's recipe at the same step budget and seeds
(``benchmarks/accuracy.py``'s ``measure``: train, best-validation adapter, map the test
scene, score it). Yardsticks: the ``pixel`` variant (a per-pixel MLP on every band,
trained by the same trainer) and a one-threshold NDWI rule for water, fitted on the
training scenes' pixels (the threshold that maximises water IoU there).

Scores: per-class IoU, mIoU and OA overall and under clouds; "thin" is the share of
thin-feature pixels (water or road pixels that a 3x3 opening of their class removes,
i.e. in features at most 2-3 px wide) mapped to their class. Costs: training seconds and
prediction seconds of GoPT with / without the detail path, ratios from the same run.

    ./run python benchmarks/at_the_pixel.py              # 5 rows x 3 seeds
    ./run python benchmarks/at_the_pixel.py --quick      # 2 rows, 1 seed, tiny budget
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from accuracy import _data, train_row  # noqa: E402

WATER, ROAD = 40, 60
THIN_CLASSES = (WATER, ROAD)

#: row -> (label, overrides of the demo recipe)
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "gopt_detail": ("GoPT + detail path", {"model.detail_path": True}),
    "gopt": ("GoPT, no detail path", {"model.detail_path": False}),
    "pixel": ("per-pixel MLP (`pixel`)", {"model.variant": "pixel", "model.detail_path": False}),
    "optical_only": (
        "RGB only (frozen + decoder)",
        {"model.variant": "optical_only", "model.detail_path": False},
    ),
    "optical_all_bands": (
        "`optical_all_bands` (RGB + NIR)",
        {"model.variant": "optical_all_bands", "model.detail_path": False},
    ),
}


def _read(path: str | Path) -> Any:
    import rasterio

    with rasterio.open(path) as src:
        return src.read()


def thin_mask(labels: Any) -> Any:
    """Pixels of the thin classes in features a 3x3 opening removes (<= ~2-3 px wide)."""
    import numpy as np

    out = np.zeros(labels.shape, dtype=bool)
    for code in THIN_CLASSES:
        m = labels == code
        p = np.pad(m, 1)
        eroded = np.ones_like(m)
        for dy in range(3):
            for dx in range(3):
                eroded &= p[dy : dy + m.shape[0], dx : dx + m.shape[1]]
        q = np.pad(eroded, 1)
        opened = np.zeros_like(m)
        for dy in range(3):
            for dx in range(3):
                opened |= q[dy : dy + m.shape[0], dx : dx + m.shape[1]]
        out |= m & ~opened
    return out


def thin_recall(class_map: str, labels_path: str) -> float:
    labels = _read(labels_path)[0]
    pred = _read(class_map)[0]
    thin = thin_mask(labels)
    return float((pred[thin] == labels[thin]).mean()) if thin.any() else float("nan")


def _ndwi(optical: Any) -> Any:
    import numpy as np

    g, nir = optical[1].astype(np.float64), optical[3].astype(np.float64)
    return (g - nir) / np.maximum(g + nir, 1e-6)


def ndwi_rule(train_root: Path, test: Any, clouds: str) -> dict[str, Any]:
    """Water IoU of the NDWI threshold fitted on the training scenes (3 train scenes)."""
    import numpy as np

    xs, ys = [], []
    for i in range(3):
        name = f"scene_{i:03d}"
        xs.append(_ndwi(_read(train_root / "optical" / f"{name}.tif")).ravel())
        ys.append((_read(train_root / "labels" / f"{name}.tif")[0] == WATER).ravel())
    x, y = np.concatenate(xs), np.concatenate(ys)

    def iou(pred: Any, truth: Any) -> float:
        union = (pred | truth).sum()
        return float((pred & truth).sum() / union) if union else float("nan")

    candidates = np.quantile(x, np.linspace(0.5, 0.995, 200))
    best = max(candidates, key=lambda t: iou(x > t, y))
    nd = _ndwi(_read(test.optical))
    truth = _read(test.labels)[0]
    water = truth == WATER
    cloudy = _read(clouds)[0] > 0
    labels_thin = thin_mask(truth) & water
    pred = nd > best
    return {
        "threshold": float(best),
        "water_iou": iou(pred, water),
        "water_iou_clouds": iou(pred & cloudy, water & cloudy),
        "thin_water": float(pred[labels_thin].mean()) if labels_thin.any() else float("nan"),
    }


def _pct(v: float) -> str:
    return "-" if v != v else f"{100 * v:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--work", type=Path, default=C.DEFAULT_WORK)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-patches", type=int, default=320)
    parser.add_argument("--rerun", action="store_true")
    parser.add_argument(
        "--test-seed",
        type=int,
        default=1234,
        help="seed of the held-out scene; another than 1234 (the scene the detail path's "
        "design was chosen on) checks the claim on a scene nobody looked at",
    )
    args = parser.parse_args()
    C.quiet()
    rows = ["gopt_detail", "pixel"] if args.quick else args.rows.split(",")
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    epochs, patches = (2, 64) if args.quick else (args.epochs, args.train_patches)
    name = "at_the_pixel" if args.test_seed == 1234 else f"at_the_pixel_test{args.test_seed}"
    train_root, test, clear = _data(args.work, args.quick, name=name, test_seed=args.test_seed)
    folder = args.work / (f"{name}_quick" if args.quick else name)
    cache = args.work / "results" / f"{folder.name}.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    stored = json.loads(cache.read_text()).get("runs", {}) if cache.exists() else {}
    m = C.machine()
    results: dict[str, list[dict[str, Any]]] = {}
    for seed in seeds:  # seed-major: the rows of one seed run back to back (cost ratios)
        for row in rows:
            key = f"{row}@{seed}@{epochs}x{patches}"
            if key in stored and not args.rerun:
                results.setdefault(row, []).append({**stored[key], "cached": True})
                continue
            print(f"{row} seed {seed}: training ...", flush=True)
            res = train_row(
                row, ROWS[row][1], seed, train_root, folder, epochs, patches, test, clear
            )
            res["thin"] = thin_recall(res["class_map"], str(test.labels))
            res["seed"] = seed
            print(
                f"  mIoU {_pct(res['scores']['overall']['miou'])}, thin {_pct(res['thin'])}, "
                f"{res['train_seconds']:.0f} s",
                flush=True,
            )
            results.setdefault(row, []).append(res)
            stored[key] = res
            cache.write_text(json.dumps({"machine": m, "runs": stored}, indent=2))
    rule = ndwi_rule(train_root, test, str(test.clouds))
    names = next(iter(results.values()))[0]["scores"]["overall"]["class_names"]
    headers = ["method", "seeds", "trainable", "mIoU", "OA", "mIoU clouds", "thin px"]
    headers += [f"IoU {n}" for n in names]
    table = []
    for row, runs in results.items():
        per_class = [
            _pct(C.mean([r["scores"]["overall"]["iou"][i] for r in runs]))
            for i in range(len(names))
        ]
        table.append(
            [
                ROWS[row][0],
                len(runs),
                f"{runs[0]['parameters']['trainable']:,}",
                _pct(C.mean([r["scores"]["overall"]["miou"] for r in runs])),
                _pct(C.mean([r["scores"]["overall"]["oa"] for r in runs])),
                _pct(C.mean([r["scores"]["clouds"]["miou"] for r in runs])),
                _pct(C.mean([r["thin"] for r in runs])),
                *per_class,
            ]
        )
    water = names.index("water") if "water" in names else None
    table.append(
        ["NDWI rule (water only, fitted on train)", "-", "0", "-", "-", "-", "-"]
        + [_pct(rule["water_iou"]) if i == water else "-" for i in range(len(names))]
    )
    lines = [
        f"Command: `{C.command_line()}`",
        "",
        C.machine_line(m),
        "",
        f"Each learned row: {epochs} epochs x {patches} patches (batch 8, patch 128), demo "
        f"recipe, best-validation adapter; test scene held out (seed {args.test_seed}, never "
        "trained on; seed 1234 is the scene the detail path's design was chosen on). "
        "Scores in %, means over seeds. 'thin px': share of thin-feature pixels (water and "
        f"road features at most ~3 px wide) mapped to their class. NDWI threshold "
        f"{rule['threshold']:.3f}; its water IoU under clouds {_pct(rule['water_iou_clouds'])}, "
        f"thin water pixels found {_pct(rule['thin_water'])}.",
        "",
        C.table(headers, table),
    ]
    pairs = [  # timed in this run (a cached row's seconds come from another time)
        (a, b)
        for a in results.get("gopt_detail", [])
        for b in results.get("gopt", [])
        if a["seed"] == b["seed"] and not a.get("cached") and not b.get("cached")
    ]
    if pairs:
        train_ratio = C.median([a["train_seconds"] / b["train_seconds"] for a, b in pairs])
        predict_ratio = C.median([a["predict_seconds"] / b["predict_seconds"] for a, b in pairs])
        lines += [
            "",
            f"- Detail path cost (same seeds, back to back): training {train_ratio:.2f}x, "
            f"predict {predict_ratio:.2f}x (target <= 1.15x).",
        ]
    title = "At the pixel (issue 23)"
    if args.test_seed != 1234:  # its own section: the design scene's table stays
        title += f", on a second held-out scene (seed {args.test_seed})"
    C.save_raw(args.work, f"{name}_table", {"rows": results, "ndwi": rule}, args.quick)
    section = "at_the_pixel" if args.test_seed == 1234 else "at_the_pixel_fresh"
    C.publish(section, title, "\n".join(lines), args.quick)


if __name__ == "__main__":
    main()
