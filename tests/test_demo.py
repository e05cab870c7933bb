"""The user's path: `gopt-geo demo --fast` end to end, and the notebook on its output."""

from __future__ import annotations

import json
from pathlib import Path

import papermill
import pytest
import yaml
from typer.testing import CliRunner

from gopt_geo.cli import app
from gopt_geo.demo import DEMO_SETTINGS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo-output"
    res = CliRunner().invoke(app, ["demo", "--fast", "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return out


def test_demo_writes_everything_and_gopt_wins_under_clouds(demo_dir: Path) -> None:
    report = json.loads((demo_dir / "report.json").read_text())
    for name in ("report.md", "comparison.png"):
        assert (demo_dir / name).stat().st_size > 0
    for variant in ("gopt", "optical_only"):
        files = report["models"][variant]["files"]
        for key in ("adapter", "class_map", "vector", "report"):
            assert (demo_dir / files[key]).stat().st_size > 0, (variant, key)
    gopt = report["models"]["gopt"]["clouds"]["miou"]
    optical = report["models"]["optical_only"]["clouds"]["miou"]
    assert gopt > optical, (gopt, optical)


def test_demo_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    res = CliRunner().invoke(app, ["demo", "--fast", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "not empty and not a previous demo; use --overwrite" in res.output
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_demo_settings_match_the_shipped_config() -> None:
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    for key, value in DEMO_SETTINGS.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        expected = yaml.safe_load(value) if isinstance(value, str) else value
        assert node == expected, key


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
