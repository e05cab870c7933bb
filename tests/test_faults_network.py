"""Network faults: a stalled server, a flaky one (issue 24). Servers run on 127.0.0.1
and stop with the test; every wait is bounded by the test itself."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import RangeHandler, serve, write_raster

from gopt_geo.errors import InputError
from gopt_geo.io import HTTP_DEFAULTS, open_raster


@pytest.fixture
def stalled_url(stall: tuple[str, object]) -> str:
    return stall[0]


def test_a_stalled_server_fails_in_bounded_time_naming_the_url(stalled_url: str) -> None:
    # in a subprocess, so that a regression (an unbounded wait) fails the test at the
    # subprocess timeout instead of hanging the suite; a short stall time keeps it quick
    code = textwrap.dedent(
        f"""
        import os, sys
        os.environ["GDAL_HTTP_LOW_SPEED_TIME"] = "2"
        os.environ["GDAL_HTTP_MAX_RETRY"] = "0"
        from gopt_geo.errors import InputError
        from gopt_geo.io import open_raster
        try:
            open_raster({stalled_url!r})
        except InputError as err:
            print(err)
            sys.exit(3)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    line = done.stdout.strip()
    assert line.startswith(f"{stalled_url}: cannot open (") and "\n" not in line


def test_http_defaults_bound_every_wait() -> None:
    assert int(HTTP_DEFAULTS["GDAL_HTTP_CONNECTTIMEOUT"]) > 0
    assert int(HTTP_DEFAULTS["GDAL_HTTP_LOW_SPEED_TIME"]) > 0
    assert "500" in HTTP_DEFAULTS["GDAL_HTTP_RETRY_CODES"].split(",")


def test_a_server_error_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    write_raster(tmp_path / "a.tif", data)
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.1")

    class Flaky(RangeHandler):
        fail_next = 2
        failed = 0

    with serve(tmp_path, Flaky) as url:
        with open_raster(f"{url}/a.tif") as src:
            np.testing.assert_array_equal(src.read(1), data)
    assert Flaky.failed == 2  # two 500s, answered by retrying


def test_a_server_that_keeps_failing_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_raster(tmp_path / "a.tif", np.zeros((16, 16), dtype=np.uint8))
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.1")

    class Broken(RangeHandler):
        fail_next = 10**6

    with serve(tmp_path, Broken) as url:
        with pytest.raises(InputError) as err:
            open_raster(f"{url}/a.tif")
    assert str(err.value).startswith(f"{url}/a.tif: cannot open (") and "500" in str(err.value)
