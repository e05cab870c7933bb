"""Many scenes, one call: each scene one task on any ``concurrent.futures.Executor``.

Design §8: mapping many scenes is split across workers by an existing engine (Dask),
never a home-made scheduler. :func:`predict_many` knows only the ``Executor``
interface: without one the scenes run one after another in this process; the command
line hands it a Dask client's ``get_executor()``
(:func:`~gopt_geo.inference.cluster.executor_for`), and a test or a notebook may pass
any executor.

This module plans a run and ties its parts together: which scenes to map and which to
skip, the tasks (:mod:`.runner`: one scene per task, a per-process model cache, retries
of transient failures) and the run's own files (:mod:`.run_outputs`: run.json/run.md,
the GeoParquet index, the VRT mosaics, the STAC collection).

``resume`` (the default) skips a scene whose report lists outputs that all exist, made
by the same adapter (sha256) with the same output settings
(:meth:`~gopt_geo.inference.options.PredictOptions.output_settings`):
:func:`finished_report`. Anything else is mapped again (the output set replaces the
stale set whole, and removes what a killed attempt left). An interrupted run, run again,
maps only what is left. A run into object storage (``out_dir`` an ``s3://`` or other
fsspec URL) resumes the same way from the uploaded reports (:mod:`gopt_geo.outputs.remote`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import hashlib
import os
import posixpath
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import disk_errors, ensure_output_dir, raster_stem
from ..locks import folder_lock
from ..outputs import remote
from ..outputs.remote import is_url_folder, local_folder
from .cluster import executor_for, plan_workers
from .options import PredictOptions
from .run_outputs import read_json, write_run_outputs
from .runner import SceneOutcome, SceneTask, is_transient, map_scene, one_line, run_tasks
from .scene import Scene, safe_id

__all__ = [  # the runner's and the cluster's names stay importable from here
    "RunResult",
    "SceneOutcome",
    "SceneTask",
    "executor_for",
    "finished_report",
    "is_transient",
    "map_scene",
    "one_line",
    "plan_workers",
    "predict_many",
]


@dataclass
class RunResult:
    """A run: every scene's outcome, the wall time, and the run's files."""

    out_dir: Path | str  # a URL string for a run into object storage
    scenes: list[SceneOutcome]
    seconds: float
    files: dict[str, Path | str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def with_status(self, status: str) -> list[SceneOutcome]:
        return [s for s in self.scenes if s.status == status]

    @property
    def failed(self) -> list[SceneOutcome]:
        return [s for s in self.scenes if s.status in ("failed", "not run")]


def finished_report(
    folder: Path | str, scene: Scene, adapter_sha256: str, settings: dict[str, Any]
) -> dict[str, Any] | None:
    """The report of a scene already mapped as this run would map it, else None: made by
    the same adapter with the same output settings from the same inputs (as the report
    names them), every output it lists present. ``folder`` may be a URL (object storage:
    the uploaded report JSON is the same mark)."""
    name = f"{raster_stem(scene.optical)}_report.json"
    url = is_url_folder(folder)
    if url:
        report = remote.read_json(remote.join(str(folder), name))
    else:
        report = read_json(Path(folder) / name)
    if report is None:
        return None
    if report.get("model", {}).get("adapter_sha256") != adapter_sha256:
        return None
    if report.get("options") != settings:
        return None
    inputs = report.get("inputs") or {}
    named = scene.describe()
    if inputs.get("scene") != named["optical"]:
        return None  # the id now names another scene (an edited manifest)
    if inputs.get("sar") is not None and named["sar"] is not None and inputs["sar"] != named["sar"]:
        return None
    outputs = report.get("outputs") or {}
    if "class_map" not in outputs:
        return None
    names = [posixpath.basename(str(p).replace("\\", "/")) for p in outputs.values()]
    if url:
        present = remote.list_names(str(folder))
        if not all(n in present for n in names):
            return None
    elif not all((Path(folder) / n).exists() for n in names):
        return None
    return report


def _check_ids(scenes: Sequence[Scene]) -> None:
    seen: set[str] = set()
    for s in scenes:
        if s.id != safe_id(s.id):
            raise InputError(f"scene id {s.id!r}: use letters, digits and ._- (it names a folder)")
        if s.id in seen:
            raise InputError(f"scene id {s.id} is given twice; ids name the output folders")
        seen.add(s.id)


def predict_many(
    scenes: Iterable[Scene],
    adapter: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    executor: Executor | None = None,
    options: PredictOptions | None = None,
    resume: bool = True,
    retries: int = 2,
    threads: int | None = None,
    progress: bool = True,
    executor_info: str | None = None,
) -> RunResult:
    """Map ``scenes`` with the adapter file ``adapter`` into ``out_dir/<scene id>/``.

    ``executor`` runs the tasks (None: here, one after another); ``options`` are
    ``predict``'s (its ``progress`` and ``overwrite`` are the run's business: per-scene
    bars are off, a scene that is mapped replaces its stale outputs); ``resume`` skips
    scenes already mapped the same way (False: map every scene again); ``retries`` is
    how often a transient failure is tried again; ``threads`` sets torch's threads in
    each worker (None: as the worker is). Writes the run's files and returns what
    became of every scene; a failed scene does not raise.

    ``out_dir`` may be an fsspec URL string (``s3://bucket/prefix/``): each worker makes
    its scene's set in a local temporary folder and uploads it (report JSON last), resume
    reads the uploaded reports, and the run's own files are made locally and uploaded at
    the end, so the workers need no shared file system; the adapter travels with each
    task. The folder lock (:mod:`gopt_geo.locks`) applies to local folders only: a store
    has no lock, so two runs into one prefix are the user's to avoid.
    """
    from ..adapter import read_adapter_metadata

    if retries < 0:
        raise InputError(f"--retries must be 0 or more, got {retries}")
    if threads is not None and threads < 1:
        raise InputError(f"--threads-per-worker must be at least 1, got {threads}")
    options = options if options is not None else PredictOptions()
    adapter_path = Path(adapter)
    if not adapter_path.is_file():
        raise InputError(f"{adapter_path}: file not found")
    meta = read_adapter_metadata(adapter_path)  # refuses a non-adapter before any work
    adapter_bytes = adapter_path.read_bytes()
    sha = hashlib.sha256(adapter_bytes).hexdigest()
    scenes = list(scenes)
    _check_ids(scenes)
    url = is_url_folder(out_dir)
    if not url:
        out_dir = local_folder(out_dir)
    # one writer per run folder: a second run would take this one's scenes as its own (a
    # URL has no lock: object stores have none)
    guard = contextlib.nullcontext() if url else folder_lock(out_dir, wait=options.wait)
    with guard, contextlib.nullcontext() if url else disk_errors(out_dir):
        out: Path | str = (
            remote.check_url_folder(str(out_dir)) if url else ensure_output_dir(out_dir)
        )
        settings = options.output_settings()
        task_options = dataclasses.replace(options, progress=False, overwrite=True)
        started = _dt.datetime.now(_dt.UTC)
        start = time.perf_counter()

        outcomes: dict[str, SceneOutcome] = {}
        tasks = []
        for scene in scenes:
            folder = remote.join(out, scene.id) if isinstance(out, str) else out / scene.id
            if scene.problem is not None:
                outcomes[scene.id] = SceneOutcome(scene.id, "failed", reason=scene.problem)
                continue
            report = finished_report(folder, scene, sha, settings) if resume else None
            if report is not None:
                outputs = report["outputs"]
                outcomes[scene.id] = SceneOutcome(
                    scene.id,
                    "skipped",
                    reason="already mapped with this adapter and these options",
                    report=_child(folder, f"{raster_stem(scene.optical)}_report.json"),
                    class_map=_child(folder, Path(str(outputs["class_map"])).name),
                )
                continue
            tasks.append(
                SceneTask(
                    scene,
                    str(adapter_path.absolute()),
                    sha,
                    folder if isinstance(folder, str) else str(folder.absolute()),
                    task_options,
                    threads,
                    # no shared file system with a URL run: the adapter goes with the task
                    adapter_bytes if url else None,
                )
            )

        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks), unit="scene", desc="scenes", disable=not progress)

        def record(outcome: SceneOutcome) -> None:
            outcomes[outcome.id] = outcome
            if outcome.status == "failed":
                bar.write(f"failed {outcome.id}: {outcome.reason}")
            bar.update(1)

        try:
            with bar:
                run_tasks(tasks, executor, retries, record)
        finally:  # an interrupted run still leaves its record (and is resumed from its files)
            seconds = time.perf_counter() - start
            ordered = [
                outcomes.get(s.id)
                or SceneOutcome(s.id, "not run", reason="the run was interrupted")
                for s in scenes
            ]
            run_files = functools.partial(
                write_run_outputs,
                scenes=scenes,
                outcomes=ordered,
                adapter=str(adapter_path),
                adapter_sha256=sha,
                settings=settings,
                seconds=seconds,
                started=started,
                executor_info=executor_info
                or ("in-process" if executor is None else type(executor).__name__),
                class_names={c.code: c.name for c in meta.classes.classes},
            )
            if isinstance(out, str):  # made here, uploaded (run.json, index, mosaics, ...)
                with remote.staged_locally(out, overwrite=True) as local:
                    files, summary = run_files(local, location=out)
            else:
                files, summary = run_files(out)
        return RunResult(out, ordered, seconds, files, summary)


def _child(folder: Path | str, name: str) -> str:
    """``folder/name`` as a string: a URL's child, or a local path."""
    return remote.join(folder, name) if isinstance(folder, str) else str(folder / name)
