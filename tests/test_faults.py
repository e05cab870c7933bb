"""Runs that never lose work: a prediction's outputs form one set.

The real command line is interrupted at known stages (the ``GOPT_GEO_TEST_PAUSE_AT`` test
hook of :mod:`gopt_geo.outputs.staging`): while windows are predicted, while polygons
are written, and inside the commit. SIGKILL runs the CLI in a subprocess (nothing can
catch it); SIGINT and SIGTERM run it both ways: in a subprocess, and in this process
with the hook sending the signal to the process itself (a real signal through the real
handlers, without paying for another interpreter and torch import). After each, the
output folder holds the previous set byte for byte, or the complete new set, or no file
of the new set under its final name, as designed (design §10); a rerun cleans leftovers.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pystac
import pytest
import rasterio
from conftest import ADAPTER_ROUTING, make_adapter, predict_args
from pystac.extensions.file import FileExtension
from typer.testing import CliRunner

from gopt_geo.cli import app
from gopt_geo.data.synthetic import SceneFiles
from gopt_geo.locks import LOCK_NAME
from gopt_geo.outputs.staging import PAUSE_ENV, SIGNAL_ENV

pytestmark = pytest.mark.filterwarnings("ignore::gopt_geo.models.RandomBackboneWarning")

ROOT = Path(__file__).resolve().parents[1]
MARKER = "gopt-geo test hook: paused at"
runner = CliRunner()


@dataclass
class Setup:
    scene: SceneFiles
    old: Path  # the adapter of the previous set
    new: Path  # the adapter of the interrupted run
    previous: Path  # a complete previous set (copied into each case's folder)


def save(path: Path, seed: int) -> Path:
    return make_adapter(path, routing=ADAPTER_ROUTING, seed=seed)  # another seed: another map


def predict_into(setup: Setup, adapter: Path, out: Path, overwrite: bool, *extra: str) -> list[str]:
    """``predict`` of the setup's scene, one window per batch (more stages to stop at)."""
    more = ["--batch-size", "1", "--device", "cpu", *(["--overwrite"] if overwrite else [])]
    return predict_args(setup.scene, adapter, out, *more, *extra)


@pytest.fixture(scope="module")
def setup(scene: SceneFiles, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("faults")
    s = Setup(scene, save(root / "old.safetensors", 1), save(root / "new.safetensors", 2), root)
    s.previous = root / "previous"
    res = runner.invoke(app, predict_into(s, s.old, s.previous, overwrite=False))
    assert res.exit_code == 0, res.output
    return s


def files(folder: Path) -> dict[str, bytes]:
    """Every file under its final name (hidden temporary files and journals aside)."""
    if not folder.exists():
        return {}
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


def hidden(folder: Path) -> list[str]:
    return (
        sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
        if folder.exists()
        else []
    )


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_complete_set(folder: Path, adapter: Path) -> None:
    """The report is there, the item describes every other file exactly (size and
    sha256), every file belongs to the set, and it is the set of ``adapter``."""
    report = json.loads((folder / "tile_report.json").read_text())
    assert report["model"]["adapter_sha256"] == sha(adapter)
    item = pystac.Item.from_file(str(folder / "tile_item.json"))
    described = {"tile_item.json"}
    for key, asset in item.assets.items():
        path = Path(asset.get_absolute_href())
        assert FileExtension.ext(asset).checksum == "1220" + sha(path), key
        described.add(path.name)
    assert set(files(folder)) == described
    with rasterio.open(folder / "tile_classes.tif") as cm:
        assert cm.tags()["GOPT_GEO_ADAPTER_SHA256"] == sha(adapter)
    assert hidden(folder) == []  # no temporary file, no journal


def copy_previous(setup: Setup, out: Path) -> Path:
    shutil.copytree(setup.previous, out)
    return out


# ---------------------------------------------------------------------------- in process


@pytest.fixture
def self_signal(monkeypatch: pytest.MonkeyPatch):
    """Make the test hook send ``sig`` to this process at ``stage`` (a real signal)."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("SIGTERM has a handler in this process; the run would not convert it")

    def arm(stage: str, sig: str) -> None:
        monkeypatch.setenv(PAUSE_ENV, stage)
        monkeypatch.setenv(SIGNAL_ENV, sig)

    return arm


@pytest.mark.parametrize(
    ("stage", "sig", "code"),
    [("windows", "INT", 130), ("vectorize", "TERM", 143)],
)
def test_interrupted_before_the_commit_keeps_the_previous_set(
    setup: Setup, tmp_path: Path, self_signal, stage: str, sig: str, code: int
) -> None:
    out = copy_previous(setup, tmp_path / "out")
    self_signal(stage, sig)
    res = runner.invoke(app, predict_into(setup, setup.new, out, overwrite=True))
    assert res.exit_code == code, res.output
    assert files(out) == files(setup.previous) and hidden(out) == []


@pytest.mark.parametrize(("sig", "code", "over"), [("INT", 130, True), ("TERM", 143, False)])
def test_signal_inside_the_commit_waits_for_it(
    setup: Setup, tmp_path: Path, self_signal, sig: str, code: int, over: bool
) -> None:
    """SIGINT/SIGTERM during the commit are held back: the set is completed, then the
    run stops with the signal's status."""
    out = copy_previous(setup, tmp_path / "out") if over else tmp_path / "out"
    self_signal("commit", sig)
    res = runner.invoke(app, predict_into(setup, setup.new, out, overwrite=over))
    assert res.exit_code == code, res.output
    assert_complete_set(out, setup.new)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_overwrite_replaces_every_file_of_the_previous_set(setup: Setup, tmp_path: Path) -> None:
    """A previous set with outputs the new run does not write (probabilities, parquet):
    they go too, never left beside the new set."""
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        predict_into(setup, setup.old, out, False, "--probabilities", "--vector", "parquet"),
    )
    assert res.exit_code == 0, res.output
    assert {"tile_probabilities.tif", "tile_landcover.parquet"} <= set(files(out))
    res = runner.invoke(app, predict_into(setup, setup.new, out, overwrite=True))
    assert res.exit_code == 0, res.output
    assert_complete_set(out, setup.new)
    assert "tile_probabilities.tif" not in files(out)


# ---------------------------------------------------------------------------- subprocesses


class Run:
    """``python -m gopt_geo predict ...`` paused at ``stage`` by the test hook."""

    def __init__(self, args: list[str], stage: str) -> None:
        env = os.environ | {"PYTHONPATH": str(ROOT), PAUSE_ENV: stage, "GOPT_GEO_THREADS": "1"}
        env.pop(SIGNAL_ENV, None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gopt_geo", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def wait_paused(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line.startswith(MARKER):
                return
        self.proc.kill()
        pytest.fail("run never reached its pause:\n" + "".join(self.stderr))

    def kill(self, sig: int) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


#: Subprocess cases: name -> (stage, signal, run over a previous set with --overwrite?)
CASES = {
    "kill_in_vectorize": ("vectorize", signal.SIGKILL, True),
    "kill_in_commit": ("commit", signal.SIGKILL, True),
    "term_in_windows": ("windows", signal.SIGTERM, False),
}


@pytest.fixture(scope="module")
def launched(setup: Setup) -> dict[str, tuple[Path, Run]]:
    """The subprocess cases, started together when the module starts (each pays for its
    own torch import, while the in-process cases run)."""
    base = setup.previous.parent / "killed"
    runs = {}
    for name, (stage, _, over) in CASES.items():
        out = copy_previous(setup, base / name) if over else base / name
        runs[name] = (out, Run(predict_into(setup, setup.new, out, overwrite=over), stage))
    yield runs
    for _, run in runs.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


@pytest.fixture(scope="module", autouse=True)
def _start_early(request: pytest.FixtureRequest) -> None:
    """Start the subprocesses before the first test of the module, when a test that
    needs them was selected (``-m "not slow"`` leaves them out)."""
    here = [item for item in request.session.items if item.module is request.module]
    if any("killed" in getattr(item, "fixturenames", ()) for item in here):
        request.getfixturevalue("launched")


@pytest.fixture(scope="module")
def killed(launched: dict[str, tuple[Path, Run]]) -> dict[str, tuple[Path, int]]:
    """Each subprocess stopped with its signal when it reached its stage."""
    results = {}
    for name, (out, run) in launched.items():
        run.wait_paused()
        results[name] = (out, run.kill(CASES[name][1]))
    return results


@pytest.mark.slow
def test_sigkill_while_vectorising_keeps_the_previous_set(
    setup: Setup, killed: dict[str, tuple[Path, int]]
) -> None:
    out, code = killed["kill_in_vectorize"]
    assert code == -signal.SIGKILL
    assert files(out) == files(setup.previous)  # byte for byte, nothing new beside it
    left = hidden(out)
    assert LOCK_NAME in left  # the killed run's lock: the kernel released it, the file stays
    left.remove(LOCK_NAME)
    assert left and all(".partial-" in name for name in left)  # the killed run's temps
    # the next run into the folder removes them; without --overwrite it then refuses
    res = runner.invoke(app, predict_into(setup, setup.new, out, overwrite=False))
    assert res.exit_code == 2 and "already exists" in res.output
    assert hidden(out) == [] and files(out) == files(setup.previous)
    res = runner.invoke(app, predict_into(setup, setup.new, out, overwrite=True))
    assert res.exit_code == 0, res.output
    assert_complete_set(out, setup.new)


@pytest.mark.slow
def test_sigkill_inside_the_commit_is_finished_by_the_next_run(
    setup: Setup, killed: dict[str, tuple[Path, int]]
) -> None:
    out, code = killed["kill_in_commit"]
    assert code == -signal.SIGKILL
    cut = files(out)
    previous = files(setup.previous)
    # the old set went (its report first); part of the new one is in; no report
    assert "tile_report.json" not in cut and "tile_report.md" not in cut
    assert any(name not in previous or data != previous[name] for name, data in cut.items())
    assert any(name.endswith(".commit.json") for name in hidden(out))  # the journal
    res = runner.invoke(app, predict_into(setup, setup.new, out, overwrite=False))
    assert res.exit_code == 2 and "already exists" in res.output  # the commit was finished
    assert_complete_set(out, setup.new)
    final = files(out)
    assert all(final[name] == data for name, data in cut.items())  # all of it was new


@pytest.mark.slow
def test_sigterm_while_predicting_leaves_nothing(
    setup: Setup, killed: dict[str, tuple[Path, int]]
) -> None:
    out, code = killed["term_in_windows"]
    assert code == 128 + signal.SIGTERM  # SystemExit(143): cleaned up like Ctrl-C
    assert files(out) == {} and hidden(out) == []
    res = runner.invoke(app, predict_into(setup, setup.new, out, overwrite=False))
    assert res.exit_code == 0, res.output
    assert_complete_set(out, setup.new)
