"""Issue 13: the paper's ablations (He, AAAI 2024) reproduced in shape on synthetic scenes.

Data as ``accuracy.py`` (its ``_data``): 5 disjoint 512² synthetic cloudy scenes (3
train, 1 val), one held-out 1024² test scene 60 km away (30 % cloud). Every run trains
with the demo recipe (``gopt_geo.demo.DEMO_SETTINGS``: patch 128, batch 8, AdamW lr
3e-3, warm-up + cosine) on this script's budget (full: 12 epochs x 320 patches = 480
steps; early fusion at lr 3e-4) on the row's configuration, maps the test scene (window
256, overlap 0.25) and scores
it overall and under the clouds: mean ± std over the seeds of mIoU, OA, AA and kappa.

Backbones: the frozen ImageNet EfficientNet-Lite0 (packaged weights) for every table,
and a frozen *random-init* ViT-S/16 for the tables where the ViT path matters
(structure, number and depth of prompters, auxiliary path, ACP query): no ViT weights
can be downloaded here, so the ViT rows show how the switches behave on the ViT code
path, not what GoPT on a pretrained ViT reaches.

Tables (shaped like the paper's): structure (RGB only / early fusion / static prompts /
CUP only / ACP only / CUP + ACP); number and depth of prompters; hard vs soft and the
assignment schedule; readings (auxiliary path, ACP query, CUP attention, each loss,
CUP's groups per window vs per scene); what the gain is made of (RGB only / every
optical band / SAR-only / NIR-only / NIR + SAR prompts); window independence (agreement
of window-128 predictions with one whole-scene pass). The training schedule of the
assignment (``model.set_progress``) is driven by a callback here, as the training task
does it.

    python benchmarks/paper_ablations.py                      # everything (see --help)
    python benchmarks/paper_ablations.py --quick              # smoke run, a few minutes
    python benchmarks/paper_ablations.py --backbones lite0 --tables assignment --seeds 0
    python benchmarks/paper_ablations.py --budget half --lean --tables hard_soft,structure
    python benchmarks/paper_ablations.py --budget half --cached-only ...  # tables, no training

``--budget`` halves (or quarters) the steps of every run and the section says which budget
it reports; runs are cached per row, seed and budget in --work, so a run stopped early
loses nothing and ``--cached-only`` writes the tables of what has finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

#: RESULTS.md section of this script (added to _common.SECTIONS here until it lists it).
SECTION = "paper_ablations"

#: The GoPT every ablation row starts from (on top of the demo recipe): our recommended
#: setting. Hard assignment with what measurement chose (RESULTS.md): bounded logits
#: (10 cos(q, k)) and the Gumbel noise annealed 1 -> 0 over the first half of training.
BASE: dict[str, Any] = {
    "model.variant": "gopt",
    "model.assignment": "hard",
    "model.assign_scale": 10.0,
    "model.soft_to_hard_start": 0.8,
    "model.soft_to_hard": 0.2,
    "model.anneal": 1.0,
    "model.group_mass_floor": 1.0,
    "model.cup_context": "window",
}

#: The hard assignment without the soft -> hard schedule (the base before it: noise
#: annealed over 50 %, group means over mass + 1e-6); the rows that vary that older hard
#: setting start from here, so that they keep measuring what they measured.
PLAIN_HARD: dict[str, Any] = {
    "model.soft_to_hard_start": 0.0,
    "model.soft_to_hard": 0.0,
    "model.anneal": 0.5,
    "model.group_mass_floor": "null",
}

BACKBONE_SETTINGS: dict[str, dict[str, Any]] = {
    "lite0": {"model.backbone": "efficientnet_lite0", "model.weights": "packaged"},
    "vit_s": {"model.backbone": "vit_small_patch16_224", "model.weights": "random"},
}

#: Injection points of each backbone (Lite0: stages at stride 2, 4, 8, 16, 32; ViT-S:
#: after blocks 0..10); the base prompts Lite0 at stride >= 8 (2, 3, 4) and ViT-S at all.
POINTS = {
    "lite0": {
        "p_1_shallow": ("1 (stride 8)", [2]),
        "p_1_deep": ("1 (stride 32)", [4]),
        "p_2_deep": ("2 (stride 16, 32)", [3, 4]),
        "gopt": ("3 (stride 8, 16, 32; base)", None),
        "p_all": ("5 (every stage, stride 2-32)", [0, 1, 2, 3, 4]),
    },
    "vit_s": {
        "p_1_shallow": ("1 (after block 0)", [0]),
        "p_1_deep": ("1 (after block 10)", [10]),
        "p_3_shallow": ("3 shallow (blocks 0-2)", [0, 1, 2]),
        "p_3_deep": ("3 deep (blocks 8-10)", [8, 9, 10]),
        "p_6": ("6 (every other block)", [0, 2, 4, 6, 8, 10]),
        "gopt": ("11 (every block; base)", None),
    },
}


def _row(label: str, overrides: dict[str, Any], gopt: bool = True) -> tuple[str, dict]:
    return label, ({**BASE, **overrides} if gopt else overrides)


def _plain(label: str, overrides: dict[str, Any]) -> tuple[str, dict]:
    """A GoPT row on the hard assignment without the schedule (``PLAIN_HARD``)."""
    return _row(label, {**PLAIN_HARD, **overrides})


#: row key -> (label, overrides). Point rows are per backbone (``_overrides``).
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "gopt": _row(
        "GoPT, CUP + ACP (base: hard, 10 cos, soft -> hard over 80-100 %, mass floor 1)", {}
    ),
    "rgb_only": _row("RGB only: frozen + decoder", {"model.variant": "optical_only"}, False),
    "early_fusion": _row(
        "early fusion, full fine-tuning (lr 3e-4)",
        {"model.variant": "early_fusion", "train.lr": 3e-4},
        False,
    ),
    "static": _row("static prompts (VPT-style)", {"model.variant": "static_prompt"}, False),
    "cup_only": _row("CUP only", {"model.prompters": "cup"}),
    "acp_only": _row(
        "ACP only (RGB queries the aux tokens, no grouping)",
        {
            "model.prompters": "acp",
            "model.cup_context": "window",
        },
    ),
    "soft": _plain(
        "soft assignment (logits q.k / sqrt(d))",
        {"model.assignment": "soft", "model.anneal": 0.0, "model.assign_scale": "null"},
    ),
    "soft_cos": _plain(
        "soft assignment, logits 10 cos(q, k)",
        {
            "model.assignment": "soft",
            "model.anneal": 0.0,
        },
    ),
    "hard_plain": _plain(
        "hard, logits q.k / sqrt(d), Gumbel noise throughout (literal)",
        {"model.anneal": 0.0, "model.assign_scale": "null"},
    ),
    "hard_anneal": _plain(
        "hard, logits q.k / sqrt(d), noise 1 -> 0 over the first 50 %",
        {"model.assign_scale": "null"},
    ),
    "hard_cos": _plain("hard, logits 10 cos(q, k), Gumbel noise throughout", {"model.anneal": 0.0}),
    "hard_anneal_50": _plain(
        "hard, 10 cos, noise 1 -> 0 over 50 % (the base before the schedule)", {}
    ),
    "hard_anneal_25": _plain(
        "hard, 10 cos, noise 1 -> 0 over the first 25 %", {"model.anneal": 0.25}
    ),
    "hard_anneal_100": _plain(
        "hard, 10 cos, noise 1 -> 0 over all training", {"model.anneal": 1.0}
    ),
    "hard_tau": _plain(
        "hard, 10 cos, noise 1 -> 0 and tau 2 -> 0.5 over 50 %",
        {"model.tau_start": 2.0, "model.tau": 0.5},
    ),
    "s2h": _plain(
        "hard, 10 cos, soft -> hard over 25-75 % (noise 1 -> 0 over 75 %)",
        {"model.soft_to_hard_start": 0.25, "model.soft_to_hard": 0.5, "model.anneal": 0.75},
    ),
    "s2h_floor": _row(
        "hard, 10 cos, soft -> hard over 25-75 % (noise 1 -> 0 over 75 %), group mass floor 1",
        {
            "model.soft_to_hard_start": 0.25,
            "model.soft_to_hard": 0.5,
            "model.anneal": 0.75,
            "model.group_mass_floor": 1.0,
        },
    ),
    "s2h_late": _row(
        "hard, 10 cos, soft -> hard over 50-100 % (noise 1 -> 0 over all), group mass floor 1",
        {
            "model.soft_to_hard_start": 0.5,
            "model.soft_to_hard": 0.5,
            "model.anneal": 1.0,
            "model.group_mass_floor": 1.0,
        },
    ),
    "s2h_end": _row(
        "hard, 10 cos, soft -> hard over 80-100 % (noise 1 -> 0 over all), group mass floor 1",
        {
            "model.soft_to_hard_start": 0.8,
            "model.soft_to_hard": 0.2,
            "model.anneal": 1.0,
            "model.group_mass_floor": 1.0,
        },
    ),
    "hard_floor": _plain(
        "hard, 10 cos, noise 1 -> 0 over 50 %, group mass floor 1", {"model.group_mass_floor": 1.0}
    ),
    "s2h_qk": _plain(
        "hard, q.k / sqrt(d), soft -> hard over 25-75 % (noise 1 -> 0 over 75 %)",
        {
            "model.soft_to_hard_start": 0.25,
            "model.soft_to_hard": 0.5,
            "model.anneal": 0.75,
            "model.assign_scale": "null",
        },
    ),
    "aux_backbone": _row("aux path: through the frozen backbone", {"model.aux_path": "backbone"}),
    "query_rgb": _row("ACP query: RGB only (pure)", {"model.acp_query": "rgb"}),
    "cup_self": _row("CUP attention: self over [class; aux]", {"model.cup_attention": "self"}),
    "no_class_aware": _row("no class-aware loss", {"model.class_aware_loss": False}),
    "no_alignment": _row("no alignment loss", {"model.alignment_loss": False}),
    "no_aux_losses": _row(
        "no auxiliary loss (only the losses the paper names)",
        {
            "model.class_aware_loss": False,
            "model.alignment_loss": False,
        },
    ),
    "all_optical": _row(
        "optical, every band: RGB frozen + NIR to the decoder",
        {"model.variant": "optical_all_bands", "data.aux_bands": "[NIR]"},
        False,
    ),
    "prompts_sar": _row("GoPT, SAR-only prompts (VV, VH)", {"data.aux_bands": "[VV, VH]"}),
    "prompts_nir": _row("GoPT, NIR-only prompts", {"data.aux_bands": "[NIR]"}),
}
for _points in POINTS.values():
    for _key, (_label, _list) in _points.items():
        if _list is not None:
            ROWS.setdefault(_key, _row(f"prompters at {_label}", {}))

#: the assignment statistics' columns, explained under both assignment tables
TABLES_NOTE_ASSIGNMENT = (
    "P(sample = argmax): the probability that a standard Gumbel sample picks the group "
    "the argmax picks (mean max softmax(logits)), at initialisation -> after training; "
    "1/K = 0.14 is random. groups = classes: fraction of labelled tokens of a test crop "
    "whose argmax group is their class (soft assignment learns groups = classes by "
    "itself). max logit: the largest |assignment logit|."
)

#: table key -> (title, rows per backbone, note). "gopt@scene" is the base runs scored
#: with CUP's groups from the whole scene instead of per window (same training).
TABLES: dict[str, tuple[str, dict[str, list[str]], str]] = {
    "structure": (
        "Structure (paper: Table of CUP / ACP ablation)",
        {
            "lite0": ["rgb_only", "early_fusion", "static", "cup_only", "acp_only", "gopt"],
            "vit_s": ["rgb_only", "early_fusion", "static", "cup_only", "acp_only", "gopt"],
        },
        "",
    ),
    "hard_soft": (
        "Hard vs soft assignment (the paper's claim), with the soft -> hard schedule",
        {
            "lite0": [
                "soft",
                "soft@argmax",
                "hard_plain",
                "s2h",
                "s2h_floor",
                "s2h_late",
                "gopt",
                "hard_anneal_50",
                "hard_floor",
            ]
        },
        "Literal hard: Gumbel-Softmax (tau 1) from the first step, logits q.k / sqrt(d). "
        "soft@argmax: the soft runs mapped with the argmax assignment. Group mass floor 1: "
        "CUP's group means divide by max(mass, 1) instead of mass + 1e-6 (see the notes). "
        + TABLES_NOTE_ASSIGNMENT,
    ),
    "points": (
        "Number and depth of prompters",
        {"lite0": list(POINTS["lite0"]), "vit_s": list(POINTS["vit_s"])},
        "",
    ),
    "assignment": (
        "Hard vs soft assignment, and the assignment schedule",
        {
            "lite0": [
                "soft",
                "soft@argmax",
                "soft_cos",
                "soft_cos@argmax",
                "hard_plain",
                "hard_anneal",
                "hard_cos",
                "hard_anneal_25",
                "hard_anneal_50",
                "hard_anneal_100",
                "hard_tau",
                "s2h",
                "s2h_floor",
                "s2h_late",
                "gopt",
                "s2h_qk",
                "hard_floor",
            ]
        },
        TABLES_NOTE_ASSIGNMENT,
    ),
    "readings": (
        "Readings of the paper: auxiliary path, ACP query, CUP attention, losses, context",
        {
            "lite0": [
                "gopt",
                "aux_backbone",
                "query_rgb",
                "cup_self",
                "no_class_aware",
                "no_alignment",
                "no_aux_losses",
                "gopt@scene",
            ],
            "vit_s": ["gopt", "aux_backbone", "query_rgb"],
        },
        "",
    ),
    "gain": (
        "What the gain is made of",
        {"lite0": ["rgb_only", "all_optical", "prompts_sar", "prompts_nir", "gopt"]},
        "",
    ),
}

TEST_WINDOW = 256

#: rows that train hard assignment with a schedule (the candidates for "hard" in the claim)
SCHEDULES = ("s2h", "s2h_floor", "s2h_late", "hard_floor", "hard_anneal_50")

#: ``--budget``: (epochs, training patches per epoch); batch 8, so full = 480 steps.
BUDGETS: dict[str, tuple[int, int]] = {"full": (12, 320), "half": (6, 320), "quarter": (3, 320)}


# ---------------------------------------------------------------- child: one run


def _settings(args: dict[str, Any]) -> list[str]:
    from gopt_geo.demo import DEMO_SETTINGS

    label, row = _row_spec(args["backbone"], args["row"])
    settings = {
        **DEMO_SETTINGS,
        **BACKBONE_SETTINGS[args["backbone"]],
        "seed": args["seed"],
        "data.root": args["root"],
        "output_dir": args["out"],
        "train.device": "cpu",
        "train.progress": False,
        "train.epochs": args["epochs"],
        "data.train_patches": args["train_patches"],
        **row,
    }
    return [f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in settings.items()]


def _row_spec(backbone: str, row: str) -> tuple[str, dict[str, Any]]:
    points = POINTS[backbone].get(row)
    if points is not None and points[1] is not None:
        return f"prompters at {points[0]}", {**BASE, "model.prompt_points": json.dumps(points[1])}
    return ROWS[row]


def assignment_stats(model: Any, rgb: Any, aux: Any, labels: Any = None) -> dict | None:
    """CUP's assignment on a crop, averaged over prompted points (eval mode):

    - ``sharpness``: mean max softmax(logits), the probability that a standard Gumbel
      sample equals the argmax (tau does not enter: argmax((l + g) / tau) = argmax(l + g));
    - ``max_logit``: the largest |logit|;
    - ``groups_are_classes`` (with ``labels`` [1, H, W] class indices): the fraction of
      labelled tokens whose argmax group is their majority class (K = classes).

    None for models without CUP."""
    import torch

    from gopt_geo.models.prompters import labels_to_grid

    cups = [p.cup for p in getattr(model, "prompters", {}).values() if getattr(p, "cup", None)]
    if not cups:
        return None
    seen: list[Any] = []
    hooks = [cup.register_forward_hook(lambda m, i, out: seen.append(out.logits)) for cup in cups]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(rgb, aux)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    stats = {
        "sharpness": sum(float(lg.softmax(-1).amax(-1).mean()) for lg in seen) / len(seen),
        "max_logit": max(float(lg.abs().max()) for lg in seen),
    }
    if labels is not None and model.config.groups == model.config.num_classes:
        hits = []
        pad = model.backbone.size_divisor
        h, w = -(-rgb.shape[-2] // pad) * pad, -(-rgb.shape[-1] // pad) * pad
        for lg in seen:
            n = lg.shape[1]
            scale = (h * w / n) ** 0.5
            grid = (round(h / scale), round(w / scale))
            target = torch.nn.functional.pad(
                labels, (0, w - labels.shape[-1], 0, h - labels.shape[-2]), value=255
            )
            cells = labels_to_grid(target, grid, model.config.num_classes).reshape(1, -1)
            keep = cells != 255
            if keep.any():
                hits.append(float((lg.argmax(-1)[keep] == cells[keep]).float().mean()))
        stats["groups_are_classes"] = sum(hits) / len(hits) if hits else None
    return stats


def assignment_sharpness(model: Any, rgb: Any, aux: Any) -> float | None:
    stats = assignment_stats(model, rgb, aux)
    return None if stats is None else stats["sharpness"]


def _labels(path: str, scheme: Any, size: int = 256) -> Any:
    """Class indices [1, size, size] of the top-left crop of the label raster."""
    import rasterio
    import torch
    from rasterio.windows import Window

    with rasterio.open(path) as src:
        codes = src.read(1, window=Window(0, 0, size, size))
    return torch.from_numpy(scheme.code_to_index_lut()[codes].astype("int64"))[None]


def _crop(path_optical: str, path_sar: str, routing: Any, size: int = 256) -> tuple[Any, Any]:
    from rasterio.windows import Window

    from gopt_geo.inference.context import model_inputs
    from gopt_geo.inference.reader import SceneReader

    with SceneReader(path_optical, path_sar, routing) as reader:
        image, valid = reader.read(Window(0, 0, size, size))
    return model_inputs(image, valid, routing)


def _callbacks(args: dict[str, Any], record: dict[str, Any]) -> list[Any]:
    from lightning.pytorch.callbacks import Callback

    class Progress(Callback):
        """The assignment schedule's clock (the task's own hook, added in training.py)."""

        def on_train_batch_start(self, trainer, task, batch, batch_idx) -> None:  # noqa: ANN001
            total = max(1, int(trainer.estimated_stepping_batches))
            task.model.set_progress(trainer.global_step / total)

    class SharpnessAtStart(Callback):
        def on_train_start(self, trainer, task) -> None:  # noqa: ANN001
            rgb, aux = _crop(args["test_optical"], args["test_sar"], task.routing)
            record["sharpness_init"] = assignment_sharpness(task.model, rgb, aux)

    return [Progress(), SharpnessAtStart()]


def _predict(
    adapter: Path, args: dict[str, Any], out: Path, window: int, scene: bool, argmax: bool = False
) -> Path:
    """Map the test scene; ``scene``: with CUP's groups from the whole scene (the model's
    ``cup_context`` switch, set on the loaded model: the predictor then computes the
    scene's groups once and hands them to every window); ``argmax``: a soft model's
    assignment replaced by the argmax at inference."""
    from gopt_geo.inference import PredictOptions, Predictor

    predictor = Predictor.from_adapter(adapter, device="cpu")
    config = getattr(predictor.model, "config", None)
    if config is not None and getattr(config, "cup_context", None) is not None:
        config.cup_context = "scene" if scene else "window"
    if argmax:
        for prompter in predictor.model.prompters.values():
            prompter.cup.assignment = "hard"
    result = predictor.predict(
        args["test_optical"],
        args["test_sar"],
        out,
        PredictOptions(
            window=window,
            overlap=0.25,
            batch_size=4,
            confidence=False,
            vector=None,
            overwrite=True,
            progress=False,
        ),
    )
    return result.class_map


def _agreement(a: Path, b: Path) -> float:
    import numpy as np
    import rasterio

    with rasterio.open(a) as x, rasterio.open(b) as y:
        p, q = x.read(1), y.read(1)
        nodata = x.nodata
    keep = (p != nodata) & (q != nodata) if nodata is not None else np.ones_like(p, bool)
    return float((p[keep] == q[keep]).mean())


def _scores(class_map: Path, args: dict[str, Any]) -> dict[str, Any]:
    from gopt_geo.evaluation import evaluate_maps

    return {
        region: evaluate_maps(class_map, args["test_labels"], within=within).to_dict()
        for region, within in (
            ("overall", None),
            ("clouds", args["test_clouds"]),
            ("clear", args["test_clear"]),
        )
    }


def _measure(args: dict[str, Any]) -> dict[str, Any]:
    from gopt_geo.checkpoint import load_adapter, read_adapter_metadata
    from gopt_geo.config import load_config
    from gopt_geo.training import train

    record: dict[str, Any] = {}
    cfg = load_config(None, _settings(args))
    result = train(cfg, log=lambda m: None, overwrite=True, callbacks=_callbacks(args, record))
    meta = read_adapter_metadata(result.adapter)
    out = Path(args["out"])
    has_cup = meta.model.variant == "gopt" and meta.model.prompters != "acp"
    scene_mode = has_cup and meta.model.cup_context == "scene"
    configured = _predict(result.adapter, args, out / "map", TEST_WINDOW, scene_mode)
    scores = {"configured": _scores(configured, args)}
    if has_cup and not args.get("lean"):  # the other form of CUP's groups, same adapter
        other = "window" if scene_mode else "scene"
        other_map = _predict(
            result.adapter, args, out / f"map_{other}", TEST_WINDOW, not scene_mode
        )
        scores[other] = _scores(other_map, args)
    if has_cup and meta.model.assignment == "soft":  # what hard inference would give it
        hard_map = _predict(result.adapter, args, out / "map_argmax", TEST_WINDOW, False, True)
        scores["argmax"] = _scores(hard_map, args)
    agreement = None
    if args.get("agree"):
        whole = _predict(result.adapter, args, out / "whole", args["test_size"], False)
        agreement = {
            mode: _agreement(
                _predict(result.adapter, args, out / f"w128_{mode}", 128, scene), whole
            )
            for mode, scene in (("window", False), ("scene", True))
        }
    model, _ = load_adapter(result.adapter)
    rgb, aux = _crop(args["test_optical"], args["test_sar"], meta.routing)
    return {
        "train_seconds": result.seconds,
        "parameters": dict(meta.parameters),
        "val": meta.metrics.get("val", {}),
        "best_epoch": meta.metrics.get("epoch"),
        "scores": scores,
        "agreement": agreement,
        "sharpness_init": record.get("sharpness_init"),
        "sharpness": assignment_sharpness(model, rgb, aux),
        "assignment": assignment_stats(model, rgb, aux, _labels(args["test_labels"], meta.classes)),
        "steps": cfg.train.epochs * (cfg.data.train_patches // cfg.data.batch_size),
    }


# ---------------------------------------------------------------- parent: tables


def _stat(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def _metric(runs: list[dict], mode: str, region: str, key: str) -> list[float]:
    out = []
    for r in runs:
        scores = r["scores"].get(mode) or r["scores"]["configured"]
        value = scores[region][key]
        if value is not None:
            out.append(float(value))
    return out


def _mean(runs: list[dict], region: str, key: str = "miou", mode: str = "configured") -> float:
    values = _metric(runs, mode, region, key)
    return 100 * statistics.fmean(values) if values else float("nan")


def _table(rows: list[tuple[str, list[dict], str]], sharpness: bool) -> str:
    headers = ["model", "seeds", "trainable %"]
    for region in ("", " clouds"):
        headers += [f"{k}{region}" for k in ("mIoU", "OA", "AA", "kappa")]
    if sharpness:
        headers += ["P(sample = argmax)", "groups = classes", "max logit"]
    lines = []
    for label, runs, mode in rows:
        p = runs[0]["parameters"]
        line = [label, len(runs), f"{p['percent']:.2f}%"]
        for region in ("overall", "clouds"):
            line += [_stat(_metric(runs, mode, region, k)) for k in ("miou", "oa", "aa", "kappa")]
        if sharpness:
            init = [r["sharpness_init"] for r in runs if r.get("sharpness_init") is not None]
            end = [r["sharpness"] for r in runs if r.get("sharpness") is not None]
            line.append(
                f"{statistics.fmean(init):.2f} -> {statistics.fmean(end):.2f}" if end else "-"
            )
            stats = [r["assignment"] for r in runs if r.get("assignment")]
            groups = [s["groups_are_classes"] for s in stats if s.get("groups_are_classes")]
            line.append(f"{statistics.fmean(groups):.2f}" if groups else "-")
            line.append(f"{statistics.fmean(s['max_logit'] for s in stats):.1f}" if stats else "-")
        lines.append(line)
    return C.table(headers, lines)


def _vit_b_paper_percent() -> float:
    """Trainable % of configs/whu-os-paper.yaml's model (ViT-B/16, 7 classes, 1 SAR band),
    counted on the meta device (no weights, no memory)."""
    import torch

    from gopt_geo.config import load_config
    from gopt_geo.models import build_model

    cfg = load_config(C.ROOT / "configs" / "whu-os-paper.yaml").model
    cfg.weights = "random"
    with torch.device("meta"):
        return build_model(cfg).parameter_report().percent


def _claims(results: dict[str, dict[str, list[dict]]]) -> list[str]:
    """The paper's qualitative claims, checked against the Lite0 (and ViT-S) numbers."""
    lines = []
    lite = results.get("lite0", {})

    def have(*keys: str, where: dict = lite) -> bool:
        return all(k in where for k in keys)

    hard_rows = [k for k in (*SCHEDULES, "gopt") if k in lite]
    if have("soft", "hard_plain") and hard_rows:
        # the best trained-hard row (most seeds first, then mIoU): the claim's "hard"
        best = max(hard_rows, key=lambda k: (len(lite[k]), _mean(lite[k], "overall")))
        soft, plain, ours = (_mean(lite[k], "overall") for k in ("soft", "hard_plain", best))
        clouds = {k: _mean(lite[k], "clouds") for k in ("soft", "hard_plain", best)}
        argmax = _mean(lite["soft"], "overall", mode="argmax")
        verdict = "holds" if ours > soft else "does not hold"
        lines.append(
            f"- Hard > soft: {verdict} here (best hard training, {_row_spec('lite0', best)[0]},"
            f" {len(lite[best])} seed(s): {ours:.1f} vs soft {soft:.1f} mIoU, "
            f"{len(lite['soft'])} seed(s); under clouds {clouds[best]:.1f} vs "
            f"{clouds['soft']:.1f}); the literal hard assignment (Gumbel-Softmax, tau 1, from "
            f"the first step) reaches {plain:.1f} ({clouds['hard_plain']:.1f} under clouds); "
            f"soft training mapped with the argmax: {argmax:.1f}. "
            f"Target 'hard >= soft - 2': {'met' if ours >= soft - 2 else 'missed'}."
        )
    for bb, points in POINTS.items():
        where = results.get(bb, {})
        present = [
            (label, _mean(where[k], "overall")) for k, (label, _) in points.items() if k in where
        ]
        if len(present) >= 2:
            body = ", ".join(f"{label}: {v:.1f}" for label, v in present)
            lines.append(f"- More prompters help ({C.BACKBONE_LABEL[bb]}), mIoU by points: {body}.")
    for bb, where in results.items():
        if have("gopt", "cup_only", "acp_only", where=where):
            full, cup, acp = (_mean(where[k], "overall") for k in ("gopt", "cup_only", "acp_only"))
            both = full > max(cup, acp)
            lines.append(
                f"- CUP and ACP both needed ({C.BACKBONE_LABEL[bb]}): "
                f"{'holds' if both else 'does not hold'} (CUP + ACP {full:.1f}, CUP only "
                f"{cup:.1f}, ACP only {acp:.1f} mIoU)."
            )
    shares = [
        f"{C.BACKBONE_LABEL[bb]} {where['gopt'][0]['parameters']['percent']:.2f}%"
        for bb, where in results.items()
        if "gopt" in where
    ]
    try:
        shares.append(f"ViT-B/16 (configs/whu-os-paper.yaml) {_vit_b_paper_percent():.2f}%")
    except Exception as err:  # the count is informative, never worth failing the tables
        shares.append(f"ViT-B/16: not counted ({err})")
    lines.append(f"- < 1 % trainable parameters: {', '.join(shares)}.")
    if have("gopt", "all_optical", "rgb_only", "prompts_sar", "prompts_nir"):
        g = {k: _mean(lite[k], "clouds") for k in lite}
        lines.append(
            f"- Gain under clouds (mIoU): RGB only {g['rgb_only']:.1f}, every optical band "
            f"{g['all_optical']:.1f}, NIR-only prompts {g['prompts_nir']:.1f}, SAR-only "
            f"prompts {g['prompts_sar']:.1f}, NIR + SAR prompts {g['gopt']:.1f}."
        )
    return lines


def _independence(results: dict[str, dict[str, list[dict]]]) -> str:
    rows = []
    for bb, where in results.items():
        for row, modes in (
            ("rgb_only", (("window", "RGB only: the frozen CNN + decoder alone"),)),
            (
                "gopt",
                (
                    ("window", "GoPT, CUP groups per window"),
                    ("scene", "GoPT, CUP groups from the scene"),
                ),
            ),
        ):
            runs = [r for r in where.get(row, []) if r.get("agreement")]
            for mode, label in modes if runs else ():
                agree = [r["agreement"][mode] for r in runs]
                score_mode = mode if row == "gopt" else "configured"
                rows.append(
                    [
                        f"{C.BACKBONE_LABEL[bb]}: {label}",
                        len(runs),
                        f"{100 * statistics.fmean(agree):.2f}%",
                        _stat(_metric(runs, score_mode, "overall", "miou")),
                        _stat(_metric(runs, score_mode, "clouds", "miou")),
                    ]
                )
    if not rows:
        return ""
    return C.table(
        ["model", "seeds", "agreement, window 128 vs whole scene", "mIoU", "mIoU clouds"], rows
    )


def _store(cache: Path, key: str, res: dict, machine: dict) -> dict:
    """Add one run to the cache and return every cached run.

    Several invocations may train different rows at once (e.g. one per core with
    ``OMP_NUM_THREADS=1``); each re-reads the file under a lock before writing, so none
    drops another's runs.
    """
    import fcntl

    with open(cache.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = json.loads(cache.read_text()).get("runs", {}) if cache.exists() else {}
        stored[key] = res
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"machine": machine, "runs": stored}, indent=2))
        tmp.replace(cache)
    return stored


def main() -> None:
    if C.child_main(_measure):
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 rows, 8 steps")
    parser.add_argument("--work", type=Path, default=C.DEFAULT_WORK)
    parser.add_argument("--backbones", default="lite0,vit_s")
    parser.add_argument("--tables", default=",".join(TABLES))
    parser.add_argument(
        "--rows",
        default="",
        help="only these row keys, in this order (default: the tables'); a partial run: the "
        "tables are printed, RESULTS.md is not written",
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--budget",
        choices=list(BUDGETS),
        default="full",
        help="training steps per run: full = 12 epochs x 320 patches (the demo recipe "
        "otherwise, 480 steps), half = 6 x 320, quarter = 3 x 320; "
        "--epochs/--train-patches override",
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--train-patches", type=int, default=None)
    parser.add_argument(
        "--lean",
        action="store_true",
        help="map the test scene once per run (plus the argmax map of soft runs): no "
        "scene-context map, no window-independence maps (a short budget on busy cores)",
    )
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="train nothing: tables from the runs cached in --work, missing rows listed",
    )
    parser.add_argument("--rerun", action="store_true", help="retrain cached runs")
    args = parser.parse_args()
    C.quiet()
    from accuracy import _data

    backbones = args.backbones.split(",")
    tables = args.tables.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    epochs = args.epochs if args.epochs is not None else BUDGETS[args.budget][0]
    patches = args.train_patches if args.train_patches is not None else BUDGETS[args.budget][1]
    if args.quick:
        tables, seeds, epochs, patches = ["gain"], [0], 2, 32
        plan = {"lite0": ["gopt", "rgb_only", "all_optical"], "vit_s": ["gopt"]}
        plan = {bb: rows for bb, rows in plan.items() if bb in backbones}
    else:
        plan = {}
        for t in tables:
            for bb, rows in TABLES[t][1].items():
                if bb in backbones:
                    plan.setdefault(bb, [])
                    plan[bb] += [r for r in rows if r not in plan[bb] and "@" not in r]
        if args.rows:  # in the order given
            wanted = args.rows.split(",")
            plan = {bb: [r for r in wanted if r in rows] for bb, rows in plan.items()}
    train_root, test, clear = _data(args.work, args.quick)
    import rasterio

    with rasterio.open(test.optical) as src:
        test_size = max(src.width, src.height)
    name = "paper_ablations_quick" if args.quick else "paper_ablations"
    cache = args.work / "results" / f"{name}.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    stored = json.loads(cache.read_text()).get("runs", {}) if cache.exists() else {}
    m = C.machine()
    results: dict[str, dict[str, list[dict]]] = {}
    total = sum(len(rows) for rows in plan.values()) * len(seeds)
    done = 0
    missing: list[str] = []
    for bb, rows in plan.items():
        for row in rows:
            for seed in seeds:
                done += 1
                key = f"{bb}/{row}@{seed}@{epochs}x{patches}"
                if key in stored and not args.rerun:
                    results.setdefault(bb, {}).setdefault(row, []).append(stored[key])
                    continue
                if args.cached_only:
                    missing.append(f"{bb}/{row}@{seed}")
                    continue
                print(f"[{done}/{total}] {bb} {row} seed {seed}: training ...", flush=True)
                start = time.perf_counter()
                res = C.run_child(
                    "paper_ablations.py",
                    {
                        "backbone": bb,
                        "row": row,
                        "seed": seed,
                        "root": str(train_root),
                        "out": str(args.work / name / "runs" / f"{bb}_{row}_s{seed}"),
                        "epochs": epochs,
                        "train_patches": patches,
                        "agree": row in ("gopt", "rgb_only", "s2h")
                        and seed == seeds[0]
                        and not args.lean,
                        "lean": args.lean,
                        "test_size": test_size,
                        "test_optical": str(test.optical),
                        "test_sar": str(test.sar),
                        "test_labels": str(test.labels),
                        "test_clouds": str(test.clouds),
                        "test_clear": str(clear),
                    },
                )
                res.update(seed=seed, date=C.machine()["date"])
                s = res["scores"]["configured"]
                print(
                    f"  {time.perf_counter() - start:.0f} s; mIoU {100 * s['overall']['miou']:.1f}"
                    f", clouds {100 * s['clouds']['miou']:.1f}"
                    + (f"; agreement {res['agreement']}" if res.get("agreement") else ""),
                    flush=True,
                )
                results.setdefault(bb, {}).setdefault(row, []).append(res)
                stored = _store(cache, key, res, m)

    steps = epochs * (patches // 8)
    budget = next(
        (name for name, (e, p) in BUDGETS.items() if (e, p) == (epochs, patches)), "custom"
    )
    shown = tables if not args.quick else ["gain"]
    parts = [
        f"Command: `{C.command_line()}`",
        "",
        C.machine_line(m),
        "",
        f"**Budget: {budget}, {steps} training steps per run** (the full budget, the demo "
        "recipe, is 480); seeds "
        + ", ".join(map(str, seeds))
        + "; backbones "
        + ", ".join(C.BACKBONE_LABEL[bb] for bb in backbones)
        + ". Tables here: "
        + ", ".join(shown)
        + "; not run at this budget: "
        + (", ".join(t for t in TABLES if t not in shown) or "none")
        + (f"; rows not yet run: {', '.join(missing)}" if missing else "")
        + ". The full run (every table, 3 seeds, 480 steps, about 6-7 h on 2 CPU cores): "
        "`./run python benchmarks/paper_ablations.py`.",
        "",
        f"Each run: {epochs} epochs x {patches} patches of 128² (batch 8), demo recipe; "
        f"seeds {', '.join(map(str, seeds))}; test: the held-out {test_size}² scene "
        f"(30 % cloud), window {TEST_WINDOW}, overlap 0.25, background ignored. Mean ± "
        "std over seeds, in %, kappa x 100. Base GoPT: "
        + ", ".join(f"{k.split('.', 1)[1]} {v}" for k, v in BASE.items() if k != "model.variant")
        + ". ViT-S/16 is frozen at random initialisation (no weights offline).",
    ]
    for t in tables if not args.quick else ["gain"]:
        title, per_bb, note = TABLES[t]
        for bb in backbones:
            keys = per_bb.get(bb, []) if not args.quick else plan.get(bb, [])
            rows = []
            for k in keys:
                base, _, mode = k.partition("@")
                runs = results.get(bb, {}).get(base)
                if not runs or (mode and any(mode not in r["scores"] for r in runs)):
                    continue  # not run, or not mapped that way (--lean)
                label = _row_spec(bb, base)[0]
                if mode == "scene":
                    label = "GoPT base, CUP groups from the whole scene (same runs)"
                elif mode == "argmax":
                    label = f"{label}, argmax at inference (same runs)"
                elif base == "gopt" and t == "points":
                    label = f"prompters at {POINTS[bb]['gopt'][0]}"
                rows.append((label, runs, mode or "configured"))
            if rows:
                parts += ["", f"### {title}: {C.BACKBONE_LABEL[bb]}", ""]
                parts.append(_table(rows, sharpness=t in ("assignment", "hard_soft")))
                if note:
                    parts += ["", note]
    independence = _independence(results)
    if independence:
        parts += ["", "### Window independence (base GoPT, first seed)", "", independence]
    parts += ["", "### The paper's qualitative claims, here", "", *_claims(results)]
    C.save_raw(args.work, name, {"machine": m, "runs": stored}, args.quick or bool(args.rows))
    if SECTION not in C.SECTIONS:
        C.SECTIONS = (*C.SECTIONS, SECTION)
    partial = args.quick or bool(args.rows)
    C.publish(SECTION, "10. The paper's ablations (issue 13)", "\n".join(parts), partial)


if __name__ == "__main__":
    main()
