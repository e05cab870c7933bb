"""The disk scene cache: patches mapped from disk equal torchgeo's reads; entries are keyed
by their sources, rebuilt when a source changes, built once when two processes race, and
survive pickling (what a DataLoader worker receives)."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from conftest import write_raster
from test_scene_cache import (
    NAMES,
    _batches,
    assert_same,
    dataset,
    patches,
    torchgeo_sample,
)
from torchgeo.samplers import GriddedPatchSampler, RandomPatchSampler

from gopt_geo.data import disk_cache
from gopt_geo.data import scenes as scenes_mod
from gopt_geo.data.bands import BandRouting
from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
from gopt_geo.data.disk_cache import CACHE_DIR_ENV, SceneStore, resolve_cache_dir
from gopt_geo.data.scenes import SCENE_CACHE_ENV, OpticalSarScenes, SceneCache

#: The in-memory budget of these tests (MiB): far below three 64x64 scenes, so every
#: split goes to the disk cache.
TINY_BUDGET = "0.01"


@pytest.fixture
def cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache root, named by the environment, and an in-memory budget too small."""
    folder = tmp_path_factory.mktemp("scene-cache")
    monkeypatch.setenv(CACHE_DIR_ENV, str(folder))
    monkeypatch.setenv(SCENE_CACHE_ENV, TINY_BUDGET)
    return folder


@pytest.fixture
def thin_strips(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenes written in strips of 10 rows (64-px scenes: 7 strips, the last partial)."""
    monkeypatch.setattr(scenes_mod, "STRIP_BYTES", 4 * 6 * 64 * 10)


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The scenes read through torchgeo and written to the disk cache."""
    calls: list[str] = []
    original = OpticalSarScenes._write_scene

    def counted(self: OpticalSarScenes, writer: Any, p: Any, leaves: Any) -> None:
        calls.append(p.name)
        original(self, writer, p, leaves)

    monkeypatch.setattr(OpticalSarScenes, "_write_scene", counted)
    return calls


def entries(folder: Path) -> dict[str, Path]:
    """Complete entries by scene name; fails if a scene has two."""
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_dir() and not f.name.startswith("."):
            name = f.name.rsplit("-", 1)[0]
            assert name not in found, f"two entries for {name}"
            found[name] = f
    return found


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_disk_patches_equal_torchgeo_reads(
    holed_scenes: Path, cache_dir: Path, thin_strips: None
) -> None:
    ds = dataset(holed_scenes)
    cache = ds.build_scene_cache(threads=2)
    assert cache is not None and sorted(cache.names) == NAMES
    assert sorted(entries(cache_dir)) == NAMES
    for scene in cache.scenes:  # mapped read-only from the entry, not held in memory
        assert scene.source is not None and scene.source.parent == cache_dir
        stored = disk_cache.open_entry(scene.source)
        assert isinstance(stored.image, np.memmap) and stored.image.mode == "r"
        assert stored.image.dtype == np.float32  # uint16 optical + float32 SAR
        assert stored.mask is not None and stored.mask.dtype == np.uint8
    served = 0
    nan_seen = False
    for index in patches(ds):
        from_cache = cache.sample(index) is not None
        sample = ds[index]
        assert_same(sample, torchgeo_sample(ds, index))
        served += from_cache
        nan_seen |= from_cache and bool(sample["image"].isnan().any())
    assert served >= 30 and nan_seen
    whole = (slice(500_000, 500_640), slice(3_399_360, 3_400_000))  # all of s0, 7 strips
    assert cache.sample(whole) is not None
    assert_same(ds[whole], torchgeo_sample(ds, whole))


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_narrow_scenes_are_stored_narrow(
    tmp_path: Path, cache_dir: Path, thin_strips: None
) -> None:
    """WHU-OPT-SAR-like scenes (uint8 optical and SAR, no CRS) are stored as uint8, a
    quarter of float32, and still give torchgeo's float32 patches."""
    rng = np.random.default_rng(0)
    names = ["a", "b"]
    for name in names:
        write_raster(
            tmp_path / "optical" / f"{name}.tif",
            rng.integers(1, 255, (4, 48, 40), np.uint8),
            crs=None,
        )
        write_raster(
            tmp_path / "sar" / f"{name}.tif", rng.integers(0, 255, (1, 48, 40), np.uint8), crs=None
        )
        labels = (rng.integers(1, 8, (48, 40)) * 10).astype(np.uint8)
        write_raster(tmp_path / "labels" / f"{name}.tif", labels, crs=None)
    ds = OpticalSarScenes(
        tmp_path,
        scenes={"train": names},
        routing=BandRouting(("R", "G", "B", "NIR"), ("SAR",)),
        classes=WHU_OPT_SAR_CLASSES,
    )
    cache = ds.build_scene_cache()
    assert cache is not None and sorted(cache.names) == names
    for scene in cache.scenes:
        assert scene.image.numpy().dtype == np.uint8
    for index in GriddedPatchSampler(ds, size=8, stride=8):  # 40 x 48 px: all inside
        assert cache.sample(index) is not None
        assert_same(ds[index], torchgeo_sample(ds, index))


def test_inexact_narrow_dtype_falls_back_to_float32(
    holed_scenes: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scenes_mod, "_narrow", lambda *args, **kw: np.dtype(np.uint8))
    ds = dataset(holed_scenes)
    cache = ds.build_scene_cache()
    assert cache is not None and sorted(cache.names) == NAMES
    for scene in cache.scenes:  # SAR dB values do not fit uint8: stored as float32
        assert scene.image.numpy().dtype == np.float32
        assert scene.mask is not None and scene.mask.numpy().dtype == np.uint8
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".build-")]
    for index in RandomPatchSampler(ds, size=16, length=10, generator=0):
        assert_same(ds[index], torchgeo_sample(ds, index))


def test_reused_when_unchanged_rebuilt_when_a_source_changes(
    holed_scenes: Path, cache_dir: Path, writes: list[str]
) -> None:
    dataset(holed_scenes).build_scene_cache()
    assert sorted(writes) == NAMES
    first = entries(cache_dir)
    stamps = mtimes(cache_dir)

    writes.clear()
    ds = dataset(holed_scenes)
    assert ds.build_scene_cache() is not None
    assert writes == []  # nothing read again
    assert entries(cache_dir) == first and mtimes(cache_dir) == stamps

    # new labels for s1 (same size; mtime moved on explicitly, as a copy would)
    path = holed_scenes / "labels" / "s1.tif"
    with rasterio.open(path, "r+") as dst:
        data = dst.read()
        data[:, :16] = 70
        dst.write(data)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    ds = dataset(holed_scenes)
    cache = ds.build_scene_cache()
    assert writes == ["s1"]
    now = entries(cache_dir)
    assert now["s0"] == first["s0"] and now["s2"] == first["s2"]
    assert now["s1"] != first["s1"] and not first["s1"].exists()  # stale entry pruned
    assert cache is not None
    s1 = (slice(505_000, 505_640), slice(3_399_360, 3_400_000))
    sample = ds[s1]
    assert_same(sample, torchgeo_sample(ds, s1))
    assert cache.sample(s1) is not None


def test_band_routing_is_part_of_the_key(
    holed_scenes: Path, cache_dir: Path, writes: list[str]
) -> None:
    dataset(holed_scenes).build_scene_cache()
    routing = BandRouting(("B", "G", "R"), ("VV", "VH"))
    ds = dataset(holed_scenes, routing=routing)
    writes.clear()
    cache = ds.build_scene_cache()
    assert sorted(writes) == NAMES  # other bands: other entries, the first ones kept
    assert len([p for p in cache_dir.iterdir() if p.is_dir()]) == 2 * len(NAMES)
    assert cache is not None and cache.scenes[0].image.shape[0] == 5
    index = next(iter(RandomPatchSampler(ds, size=16, length=1, generator=4)))
    assert_same(ds[index], torchgeo_sample(ds, index))


def test_half_written_entries_are_never_used(
    holed_scenes: Path, cache_dir: Path, writes: list[str]
) -> None:
    dataset(holed_scenes).build_scene_cache()
    folders = entries(cache_dir)
    (folders["s0"] / "meta.json").unlink()  # as if killed before the entry was whole
    image = folders["s1"] / "image.npy"
    image.write_bytes(image.read_bytes()[:1000])  # truncated
    writes.clear()
    ds = dataset(holed_scenes)
    cache = ds.build_scene_cache()
    assert sorted(writes) == ["s0", "s1"]
    assert cache is not None and sorted(cache.names) == NAMES
    for index in RandomPatchSampler(ds, size=16, length=10, generator=5):
        assert_same(ds[index], torchgeo_sample(ds, index))


def test_pickled_dataset_maps_the_same_files(holed_scenes: Path, cache_dir: Path) -> None:
    """What a spawned DataLoader worker receives: paths, not arrays."""
    ds = dataset(holed_scenes)
    cache = ds.build_scene_cache()
    assert cache is not None
    scene = cache.scenes[0]
    assert len(pickle.dumps(scene)) < 1000 < scene.nbytes
    blob = pickle.dumps(ds)
    assert len(blob) < cache.nbytes / 4  # the arrays stay on disk
    copy = pickle.loads(blob)
    assert isinstance(copy.scene_cache, SceneCache)
    assert [s.source for s in copy.scene_cache.scenes] == [s.source for s in cache.scenes]
    assert copy.scene_cache.scenes[0].image.data_ptr() != scene.image.data_ptr()  # mapped anew
    indices = list(RandomPatchSampler(ds, size=16, length=15, generator=6))
    for index in indices:
        assert copy.scene_cache.sample(index) is not None
        assert_same(copy[index], ds[index])


def test_datamodule_with_workers_serves_from_disk(
    holed_scenes: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forked workers map the disk cache built in setup; batches equal torchgeo's."""
    cached, dm = _batches(holed_scenes, workers=2, n=3)
    for ds in (dm.train_dataset, dm.val_dataset):
        assert ds.scene_cache is not None
        assert all(s.source is not None for s in ds.scene_cache.scenes)
    monkeypatch.setenv(SCENE_CACHE_ENV, "0")
    plain, dm_plain = _batches(holed_scenes, workers=0, n=3)
    assert dm_plain.train_dataset.scene_cache is None
    assert len(cached) == len(plain)
    for a, b in zip(cached, plain, strict=True):
        assert_same(a, b)


def _build_in_child(root: str, folder: str, barrier: Any, results: Any) -> None:
    """One process's build: reports the scenes it had to write itself."""
    os.environ[SCENE_CACHE_ENV] = TINY_BUDGET
    written: list[str] = []
    original = OpticalSarScenes._write_scene

    def counted(self: OpticalSarScenes, writer: Any, p: Any, leaves: Any) -> None:
        written.append(p.name)
        original(self, writer, p, leaves)

    OpticalSarScenes._write_scene = counted  # type: ignore[method-assign]
    ds = dataset(Path(root))
    barrier.wait(timeout=60)  # both processes start building together
    cache = ds.build_scene_cache(disk_dir=folder, threads=1)
    results.put((sorted(cache.names) if cache is not None else None, written))


def test_two_processes_build_one_cache(holed_scenes: Path, cache_dir: Path) -> None:
    """Two processes released together onto one empty cache (forked: a spawned one
    spends seconds importing torch; the locks and renames are the same)."""
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(
            target=_build_in_child, args=(str(holed_scenes), str(cache_dir), barrier, results)
        )
        for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    assert [names for names, _ in outcomes] == [NAMES, NAMES]
    # each scene written once in all (the second builder waits and reuses the entry)
    assert sorted(outcomes[0][1] + outcomes[1][1]) == NAMES
    assert sorted(entries(cache_dir)) == NAMES
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".build-")]
    ds = dataset(holed_scenes)
    cache = ds.build_scene_cache()
    assert cache is not None
    for index in RandomPatchSampler(ds, size=16, length=10, generator=7):
        assert cache.sample(index) is not None
        assert_same(ds[index], torchgeo_sample(ds, index))


def test_losing_the_rename_race_discards_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without working locks both builders write; the one that renames second keeps the
    winner's entry and leaves nothing of its own behind."""
    import contextlib

    monkeypatch.setattr(SceneStore, "_lock", lambda self, name, key: contextlib.nullcontext())
    store = SceneStore(tmp_path)
    shape = (2, 4, 3)

    def fill_with(value: float, then: Any = None) -> Any:
        def fill(writer: disk_cache.SceneWriter) -> None:
            if then is not None:
                then()  # the other builder finishes while this one is writing
            for row in range(4):
                writer.write_rows(row, np.full((2, 1, 3), value, np.float32), None)

        return fill

    def rival() -> None:
        _, built = store.build("x", "k", shape, np.float32, None, fill_with(1.0))
        assert built

    stored, built = store.build("x", "k", shape, np.float32, None, fill_with(2.0, rival))
    assert not built
    assert (np.asarray(stored.image) == 1.0).all()  # the winner's entry
    assert [p.name for p in tmp_path.iterdir()] == ["x-k"]


def test_scene_not_cached_when_the_disk_is_full(
    holed_scenes: Path,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    usage = disk_cache.shutil.disk_usage(cache_dir)
    monkeypatch.setattr(disk_cache.shutil, "disk_usage", lambda path: usage._replace(free=1024))
    ds = dataset(holed_scenes)
    assert ds.build_scene_cache() is None
    assert "read by torchgeo" in capsys.readouterr().err
    assert entries(cache_dir) == {}
    index = next(iter(RandomPatchSampler(ds, size=16, length=1, generator=8)))
    assert_same(ds[index], torchgeo_sample(ds, index))


def test_unusable_cache_folder_falls_back_to_torchgeo(
    holed_scenes: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setenv(SCENE_CACHE_ENV, TINY_BUDGET)
    blocker = tmp_path_factory.mktemp("x") / "a-file"
    blocker.write_text("")
    assert dataset(holed_scenes).build_scene_cache(disk_dir=blocker / "cache") is None
    assert CACHE_DIR_ENV in capsys.readouterr().err


def test_cache_folder_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir() == tmp_path / "xdg" / "gopt-geo" / "scenes"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir("auto") == tmp_path / "home" / ".cache" / "gopt-geo" / "scenes"
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "elsewhere"))
    assert resolve_cache_dir() == tmp_path / "elsewhere"
    assert resolve_cache_dir(tmp_path / "config") == tmp_path / "config"  # explicit wins
    for off in ("off", "0", "OFF", "none"):
        monkeypatch.setenv(CACHE_DIR_ENV, off)
        assert resolve_cache_dir() is None
        assert resolve_cache_dir(off) is None
    assert resolve_cache_dir(None) is None


def test_entry_meta_records_the_sources(holed_scenes: Path, cache_dir: Path) -> None:
    dataset(holed_scenes).build_scene_cache()
    meta = json.loads((entries(cache_dir)["s0"] / "meta.json").read_text())
    paths = sorted(s[0] for s in meta["sources"])
    assert paths == sorted(str(holed_scenes / d / "s0.tif") for d in ("optical", "sar", "labels"))
    assert meta["shape"] == [6, 64, 64] and meta["mask"] is True
