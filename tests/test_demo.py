"""The user's path: `gopt-geo demo --fast` end to end, and the notebook on its output."""

from __future__ import annotations

import json
from pathlib import Path

import papermill
import pytest
from typer.testing import CliRunner

from gopt_geo.cli import app
from gopt_geo.config import load_config
from gopt_geo.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]


#: The whole chain on a tiny budget: the unit suite checks that every step runs and
#: writes its outputs; how well the models do is benchmarks/demo.py's business.
SMOKE_PLAN = {"scenes": 3, "size": 192, "epochs": 1, "train_patches": 16}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo-output"
    run_demo(out, device="cpu", plan=SMOKE_PLAN, log=lambda *_: None)
    return out


@pytest.mark.slow
def test_demo_chain_runs_end_to_end(demo_dir: Path) -> None:
    """Every step ran and left its output; the report scores every model overall and in
    clouds. (Whether GoPT wins is an accuracy claim: benchmarks/demo.py measures it.)"""
    report = json.loads((demo_dir / "report.json").read_text())
    for name in ("report.md", "comparison.png"):
        assert (demo_dir / name).stat().st_size > 0
    for variant in ("gopt", "optical_only", "optical_all_bands"):
        files = report["models"][variant]["files"]
        for key in ("adapter", "class_map", "vector", "report"):
            assert (demo_dir / files[key]).stat().st_size > 0, (variant, key)
        for region in ("overall", "clouds"):
            scores = report["models"][variant][region]
            assert 0.0 <= scores["miou"] <= 1.0 and scores["pixels"] > 0, (variant, region)


def test_demo_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    res = CliRunner().invoke(app, ["demo", "--fast", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "not empty and not a previous demo; use --overwrite" in res.output
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.slow
def test_demo_trains_with_the_shipped_config(demo_dir: Path) -> None:
    """What the demo's GoPT run actually trained with (the config train() saved) is
    configs/demo.yaml, apart from the settings the demo sets per run."""
    per_run = {("data", "root"), ("output_dir",), ("train", "epochs"), ("train", "device")}
    per_run |= {("data", "train_patches")}  # the budget (FULL, FAST or the smoke plan)
    used = load_config(demo_dir / "runs" / "gopt" / "config.yaml").to_dict()
    shipped = load_config(ROOT / "configs" / "demo.yaml").to_dict()

    def flat(tree: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
        out: dict[tuple[str, ...], object] = {}
        for key, value in tree.items():
            if isinstance(value, dict) and key in ("data", "model", "train"):
                out |= flat(value, (*prefix, key))
            else:
                out[(*prefix, key)] = value
        return out

    differ = {k for k in flat(used) if flat(used)[k] != flat(shipped)[k]}
    assert differ <= per_run, sorted(differ - per_run)


@pytest.mark.slow
def test_notebook_runs_on_demo_output(demo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "map_analysis.ipynb"),
        str(out),
        parameters={"demo_dir": str(demo_dir)},
        cwd=str(ROOT / "notebooks"),
        progress_bar=False,
        kernel_name="python3",
    )
    nb = json.loads(out.read_text())
    errors = [
        o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors
    text = json.dumps(nb)
    assert "maps agree on" in text and "mIoU" in text
