"""One writer per output folder (issue 24): a second run is refused at once, naming the
holder; a lock whose process died is taken over; ``wait`` waits for the holder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from gopt_geo.errors import InputError
from gopt_geo.locks import LOCK_NAME, folder_lock

HOLD = textwrap.dedent(
    """
    import sys, time
    from gopt_geo.locks import folder_lock
    with folder_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def _holder(folder: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    proc = _holder(tmp_path, 30)
    try:
        with pytest.raises(InputError) as err:
            with folder_lock(tmp_path):
                pass
        assert str(err.value).startswith(f"{tmp_path}: another gopt-geo run is writing")
        assert f"pid {proc.pid}" in str(err.value)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_the_lock_of_a_killed_run_is_taken_over(tmp_path: Path) -> None:
    proc = _holder(tmp_path, 30)
    proc.kill()  # SIGKILL: no clean-up ran, the lock file is still there
    proc.wait()
    assert (tmp_path / LOCK_NAME).exists()
    with folder_lock(tmp_path):
        assert f"pid {os.getpid()}" in (tmp_path / LOCK_NAME).read_text()
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.slow
def test_wait_takes_the_lock_when_the_holder_ends(tmp_path: Path) -> None:
    proc = _holder(tmp_path, 1.0)
    start = time.monotonic()
    try:
        with folder_lock(tmp_path, wait=30):
            assert time.monotonic() - start > 0.5  # only once the holder let go
            assert f"pid {os.getpid()}" in (tmp_path / LOCK_NAME).read_text()
    finally:
        proc.wait()


def test_threads_of_one_process_exclude_each_other(tmp_path: Path) -> None:
    inside: list[int] = []
    overlaps: list[int] = []

    def work() -> None:
        with folder_lock(tmp_path, wait=30):
            inside.append(1)
            overlaps.append(len(inside))
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [1, 1, 1, 1]


def test_predict_and_predict_many_refuse_a_folder_another_run_writes(
    adapter: Path, scene, tmp_path: Path
) -> None:
    from gopt_geo.inference import PredictOptions, predict_scene
    from gopt_geo.inference.many import predict_many
    from gopt_geo.inference.sources import Scene

    options = PredictOptions(window=64, vector=None, progress=False)
    out = tmp_path / "out"
    with folder_lock(out):  # another run (the lock excludes any other holder)
        with pytest.raises(InputError, match="another gopt-geo run is writing"):
            predict_scene(scene.optical, scene.sar, adapter, out, options)
        scenes = [Scene("tile", str(scene.optical), str(scene.sar))]
        with pytest.raises(InputError, match="another gopt-geo run is writing"):
            predict_many(scenes, adapter, out, options=options, executor=None)
    assert not any(p.name.endswith(".tif") for p in out.rglob("*"))
    result = predict_scene(scene.optical, scene.sar, adapter, out, options)  # free again
    assert result.class_map.exists() and not (out / LOCK_NAME).exists()
