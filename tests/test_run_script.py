"""`./run` from two checkouts at once: each runs its own code from the shared environment."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # copies the checkout, starts ./run three times

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", "__pycache__", ".*_cache", "runs", "demo-output")


def test_two_checkouts_at_once_each_import_their_own_code(tmp_path: Path) -> None:
    clones = [tmp_path / "a", tmp_path / "b"]
    for clone in clones:
        shutil.copytree(ROOT, clone, ignore=SKIP, symlinks=True)
    code = "import gopt_geo, gopt_geo.cli; print(gopt_geo.__file__)"
    procs = [
        subprocess.Popen(
            [str(clone / "run"), "python", "-c", code],
            cwd=tmp_path,  # not the checkout: ./run must find its own code from anywhere
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for clone in clones
    ]
    for clone, proc in zip(clones, procs, strict=True):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert Path(out.strip().splitlines()[-1]) == clone / "gopt_geo" / "__init__.py"
    res = subprocess.run(
        [str(clones[0] / "run"), "gopt-geo", "--help"], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0 and "predict" in res.stdout
