"""Issue 7, item 6: parameter table and file sizes.

For each backbone: trainable / total parameters and trainable % (peft convention, from
``model.parameter_report()``) of GoPT and of the baselines, and the size of GoPT's adapter
file (``checkpoint.save_adapter``: trainable tensors + JSON metadata) against the size of
the full model saved the same way (every tensor of ``model.state_dict()`` in one
safetensors file), i.e. what one would ship per task without GoPT.

ViT backbones are randomly initialised (no download possible); parameter counts and
file sizes do not depend on the weights' values.

    ./run python benchmarks/parameters.py
    ./run python benchmarks/parameters.py --quick
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

#: Rows of the table: label -> (variant, ModelConfig overrides). GoPT with and without
#: the full-resolution detail path (issue 23); ``pixel`` builds no backbone (the same
#: row for every backbone: the yardstick's size).
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "gopt": ("gopt", {}),
    "gopt + detail path": ("gopt", {"detail_path": True}),
    "optical_only": ("optical_only", {}),
    "static_prompt": ("static_prompt", {}),
    "early_fusion": ("early_fusion", {}),
    "pixel": ("pixel", {}),
}


def _measure(args: dict[str, Any]) -> dict[str, Any]:
    import safetensors.torch

    from gopt_geo.checkpoint import save_adapter
    from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (variant, overrides) in ROWS.items():
            model = C.model(variant, args["backbone"], **overrides)
            rep = model.parameter_report()
            row: dict[str, Any] = rep.to_dict()
            if label == "gopt":
                adapter = Path(tmp) / "adapter.safetensors"
                save_adapter(
                    adapter,
                    model,
                    {"routing": C.routing().to_dict(), "classes": WHU_OPT_SAR_CLASSES.to_dict()},
                )
                full = Path(tmp) / "full.safetensors"
                tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
                safetensors.torch.save_file(tensors, str(full))
                row["adapter_bytes"] = adapter.stat().st_size
                row["full_bytes"] = full.stat().st_size
                row["prompted_points"] = len(model.prompters)
                row["injection_points"] = len(model.backbone.injection_points)
            out[label] = row
            del model
    return out


def main() -> None:
    if C.child_main(_measure):
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny backbone")
    parser.add_argument("--work", type=Path, default=C.DEFAULT_WORK)
    parser.add_argument("--backbones", default="vit_t,vit_s,vit_b,lite0")
    args = parser.parse_args()
    C.quiet()
    backbones = ["tiny"] if args.quick else args.backbones.split(",")
    m = C.machine()
    rows, size_rows, raw = [], [], {}
    for backbone in backbones:
        print(f"{C.BACKBONE_LABEL[backbone]} ...", flush=True)
        res = C.run_child("parameters.py", {"backbone": backbone})
        raw[backbone] = res
        for variant in ROWS:
            r = res[variant]
            rows.append(
                [
                    C.BACKBONE_LABEL[backbone],
                    variant,
                    f"{r['trainable']:,}",
                    f"{r['total']:,}",
                    f"{r['percent']:.3f}%",
                ]
            )
        g = res["gopt"]
        size_rows.append(
            [
                C.BACKBONE_LABEL[backbone],
                f"{g['prompted_points']} of {g['injection_points']}",
                f"{g['trainable']:,}",
                f"{g['percent']:.3f}%",
                f"{g['adapter_bytes'] / 2**20:.2f}",
                f"{g['full_bytes'] / 2**20:.1f}",
                f"{100 * g['adapter_bytes'] / g['full_bytes']:.2f}%",
            ]
        )
    C.save_raw(args.work, "parameters", {"machine": m, "runs": raw}, args.quick)
    body = "\n".join(
        [
            f"Command: `{C.command_line()}`",
            "",
            C.machine_line(m),
            "",
            "Default model settings (d_p 48, K = 7 classes, decoder width 64, projections "
            "shared per width, prompters from stride 8 on CNNs), 3 auxiliary bands "
            "(NIR, VV, VH), 7 classes.",
            "",
            "GoPT adapter file vs full model file:",
            "",
            C.table(
                [
                    "backbone",
                    "prompted points",
                    "GoPT trainable",
                    "trainable %",
                    "adapter file MiB",
                    "full model file MiB",
                    "adapter / full",
                ],
                size_rows,
            ),
            "",
            "Every variant:",
            "",
            C.table(["backbone", "variant", "trainable", "total", "trainable %"], rows),
        ]
    )
    C.publish("parameters", "6. Parameters and file sizes", body, args.quick)


if __name__ == "__main__":
    main()
