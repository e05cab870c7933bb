"""An existing Dask cluster that cannot be reached (issue 24): one line within a bounded
time, for an address nobody listens on and for a scheduler file that does not exist."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from gopt_geo.errors import InputError
from gopt_geo.inference.cluster import CONNECT_TIMEOUT, executor_for


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_default_wait_is_bounded() -> None:
    assert 0 < CONNECT_TIMEOUT <= 30


@pytest.mark.parametrize("form", ["tcp://127.0.0.1:{port}", "127.0.0.1:{port}"])
def test_an_unreachable_scheduler_is_one_line(form: str) -> None:
    address = form.format(port=_closed_port())
    with pytest.raises(InputError) as caught:
        with executor_for(address, connect_timeout=1):
            pytest.fail("connected to a closed port")
    text = str(caught.value)
    assert text.startswith(f"{address}: cannot reach the Dask scheduler within 1 s (")
    assert "\n" not in text


def test_a_missing_scheduler_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "scheduler.json"
    with pytest.raises(InputError, match=r"scheduler file not found") as caught:
        with executor_for(str(missing), connect_timeout=1):
            pytest.fail("connected through a missing file")
    assert str(caught.value).startswith(str(missing))


def test_a_scheduler_file_of_a_dead_scheduler_is_one_line(tmp_path: Path) -> None:
    stale = tmp_path / "scheduler.json"
    stale.write_text(json.dumps({"address": f"tcp://127.0.0.1:{_closed_port()}"}))
    with pytest.raises(InputError) as caught:
        with executor_for(str(stale), connect_timeout=1):
            pytest.fail("connected to a dead scheduler")
    assert str(caught.value).startswith(f"{stale}: cannot reach the Dask scheduler file within 1 s")


def test_a_timeout_of_zero_is_refused() -> None:
    with pytest.raises(InputError, match="--connect-timeout"):
        with executor_for("tcp://127.0.0.1:1", connect_timeout=0):
            pass


def test_a_cluster_that_could_not_beat_this_process_is_not_started(monkeypatch) -> None:
    import gopt_geo.inference.cluster as cluster

    monkeypatch.setattr(cluster.os, "cpu_count", lambda: 2)  # a one-worker plan
    with executor_for(None, None, None, "cpu", scenes=8) as (executor, _, what):
        assert executor is None and "one worker's plan" in what
    monkeypatch.setattr(cluster.os, "cpu_count", lambda: 16)  # four workers of 4 threads
    with executor_for(None, None, None, "cpu", scenes=3) as (executor, _, what):
        assert executor is None and "3 scene(s) for 4 workers" in what
