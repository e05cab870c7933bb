"""A full disk (issue 24): one line naming the folder and "no space left on device", and
nothing that looks complete. On a real small file system (a tmpfs, mounted when the
platform lets this process mount one) and with a simulated ENOSPC everywhere else."""

from __future__ import annotations

import errno
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import UTM, predict_args
from rasterio.transform import from_origin
from typer.testing import CliRunner

from gopt_geo import io as gio
from gopt_geo.cli import app
from gopt_geo.errors import InputError
from gopt_geo.io import PARTIAL_MARKER, atomic_path, disk_errors
from gopt_geo.run_folder import AtomicCheckpointIO


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file system of its own (tmpfs); skipped where this process cannot mount."""
    mount = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("cannot mount a small file system here")
    if done.returncode != 0:
        pytest.skip("cannot mount a small file system here (not root, or no tmpfs)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=10)


def _fill(folder: Path, leave: int = 0) -> None:
    """Fill ``folder``'s file system, leaving about ``leave`` bytes."""
    with open(folder / "ballast", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    if leave:
        with open(folder / "ballast", "r+b") as f:
            f.truncate(max(0, (folder / "ballast").stat().st_size - leave))


def _one_line(err: BaseException, folder: Path) -> str:
    text = str(err)
    assert "\n" not in text
    assert text.startswith(f"{folder}: no space left on device (")
    return text


# -- simulated: the errors each writer raises on a full disk ---------------------------


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        sqlite3.OperationalError("database or disk is full"),
        RuntimeError(
            "Could not add feature to layer: failed to execute insert : database or disk is full"
        ),  # noqa: E501
        rasterio.errors.RasterioIOError("Failed to commit transaction"),
    ],
    ids=["enospc", "sqlite", "pyogrio", "gpkg-commit"],
)
def test_writers_words_for_a_full_disk_are_one_line(tmp_path: Path, error: Exception) -> None:
    with pytest.raises(InputError) as caught:
        with disk_errors(tmp_path):
            raise error
    _one_line(caught.value, tmp_path)


def test_a_vague_write_error_on_a_full_disk_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch's writer says only "unexpected pos"; the free space says why
    monkeypatch.setattr(gio, "free_bytes", lambda folder: 4096)
    with pytest.raises(InputError) as caught:
        with disk_errors(tmp_path):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576")
    assert "unexpected pos" in _one_line(caught.value, tmp_path)


def test_other_errors_pass_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError, match="a bug"):
        with disk_errors(tmp_path):
            raise RuntimeError("a bug")
    monkeypatch.setattr(gio, "free_bytes", lambda folder: 0)
    with pytest.raises(FileNotFoundError):  # says what it is, whatever the free space
        with disk_errors(tmp_path):
            raise FileNotFoundError(errno.ENOENT, "No such file", "x")
    with pytest.raises(ValueError, match="not about disks"):  # not a write error
        with disk_errors(tmp_path):
            raise ValueError("not about disks")


def test_atomic_write_on_a_full_disk_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "report.json"
    final.write_text("previous")
    with pytest.raises(InputError) as caught:
        with atomic_path(final) as tmp:
            tmp.write_text("partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    _one_line(caught.value, tmp_path)
    assert final.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def _checkpoint() -> dict:
    return {"state_dict": {"w": torch.zeros(400_000)}, "epoch": 1}  # 1.6 MB


def test_staged_adapter_follows_the_checkpoint(tmp_path: Path) -> None:
    ckpt_io = AtomicCheckpointIO()
    adapter = tmp_path / "adapter.safetensors"
    adapter.write_text("epoch 0")
    staged = ckpt_io.stage(adapter)
    staged.write_text("epoch 1")
    ckpt_io.save_checkpoint({"epoch": 1}, tmp_path / "checkpoints" / "best.ckpt")
    assert adapter.read_text() == "epoch 0"  # best.ckpt is not what a resume reads
    ckpt_io.save_checkpoint({"epoch": 1}, tmp_path / "checkpoints" / "last.ckpt")
    assert adapter.read_text() == "epoch 1"
    assert not staged.exists()


def test_no_adapter_without_its_checkpoint_on_a_simulated_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt_io = AtomicCheckpointIO()
    adapter = tmp_path / "adapter.safetensors"
    adapter.write_text("epoch 0")
    last = tmp_path / "checkpoints" / "last.ckpt"
    ckpt_io.save_checkpoint({"epoch": 0}, last)
    ckpt_io.stage(adapter).write_text("epoch 1")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(InputError) as caught:
        ckpt_io.save_checkpoint({"epoch": 1}, last)
    _one_line(caught.value, last.parent)
    assert adapter.read_text() == "epoch 0"  # the previous adapter ...
    assert ckpt_io.load_checkpoint(last)["epoch"] == 0  # ... beside the previous checkpoint
    assert not [p for p in tmp_path.rglob("*") if PARTIAL_MARKER in p.name]


# -- a real full file system -----------------------------------------------------------


def test_checkpoint_on_a_full_file_system(small_fs: Path) -> None:
    ckpt_io = AtomicCheckpointIO()
    adapter = small_fs / "adapter.safetensors"
    adapter.write_text("epoch 0")
    ckpt_io.stage(adapter).write_text("epoch 1")
    last = small_fs / "checkpoints" / "last.ckpt"
    with pytest.raises(InputError) as caught:
        ckpt_io.save_checkpoint(_checkpoint(), last)  # torch says only "unexpected pos"
    _one_line(caught.value, last.parent)
    assert adapter.read_text() == "epoch 0"
    assert not last.exists()
    assert not [p for p in small_fs.rglob("*") if PARTIAL_MARKER in p.name]


def test_raster_on_a_full_file_system(small_fs: Path) -> None:
    final = small_fs / "map.tif"
    with pytest.raises(InputError) as caught:
        with atomic_path(final) as tmp:  # GDAL says only "Write error at scanline"
            with rasterio.open(
                tmp,
                "w",
                driver="GTiff",
                width=1024,
                height=1024,
                count=1,
                dtype="float32",
                crs=UTM,
                transform=from_origin(500_000, 3_400_000, 10, 10),
            ) as dst:
                dst.write(np.random.default_rng(0).random((1, 1024, 1024), dtype=np.float32))
    _one_line(caught.value, small_fs)
    assert list(small_fs.iterdir()) == []


def test_predict_on_a_full_file_system(small_fs: Path, scene, adapter: Path) -> None:
    _fill(small_fs, leave=24 * 1024)
    out = small_fs / "out"
    result = CliRunner().invoke(app, predict_args(scene, adapter, out))
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: ") and "no space left on device" in line
    assert str(small_fs) in line
    finished = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert not [p for p in finished if p.suffix in (".tif", ".gpkg", ".json")], finished
