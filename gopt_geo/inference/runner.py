"""One scene, one task: what a worker runs, how often it is tried, what it reports.

A task is :func:`map_scene`: exactly what ``gopt-geo predict`` does for one scene, into
its folder. Each worker process loads the model once and keeps it for the next scene
(keyed by the adapter's sha256, device and weights), maps one scene at a time, and sets
torch's threads explicitly (Dask starts workers with ``OMP_NUM_THREADS=1``). A task
whose folder is a URL (object storage) makes its set in a local temporary folder and
uploads it, and carries the adapter's bytes for a worker that cannot read the client's
path (:func:`adapter_file`): such workers share no file system with the client.

Failures stay with their scene: a task returns its one-line reason rather than raising,
and :func:`run_tasks` submits a failure that another try may cure (network, a lost
worker: :func:`is_transient`) again up to ``retries`` times, while the others finish.
Only the ``concurrent.futures.Executor`` interface is used (design §8), so no Dask
internal is imported here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rasterio

from ..errors import InputError
from ..io import (
    REMOTE_GDAL_OPTIONS,
    apply_http_defaults,
    atomic_path,
    is_remote,
    rasterio_reason,
)
from ..outputs.remote import is_url_folder
from .options import PredictOptions
from .scene import Scene

#: Words in an error that mark it as worth another try: the network or the cluster
#: failed, not the inputs. A corrupt file, a missing band or no overlap is never retried.
TRANSIENT_MARKERS = (
    "curl error",
    "http response code: 5",
    "http response code: 429",
    "timed out",
    "timeout was reached",
    "connection reset",
    "connection refused",
    "connection aborted",
    "temporarily unavailable",
    "broken pipe",
    "too many requests",
)
#: Exception types (by name, so that Dask need not be imported) of a lost worker.
TRANSIENT_TYPES = ("KilledWorker", "CommClosedError", "StreamClosedError", "WorkerLostError")


def is_transient(err: BaseException) -> bool:
    """Whether a scene's failure may pass on another try (see :data:`TRANSIENT_MARKERS`)."""
    if isinstance(err, TimeoutError | ConnectionError):
        return True
    if type(err).__name__ in TRANSIENT_TYPES:
        return True
    text = str(err).lower()
    return any(marker in text for marker in TRANSIENT_MARKERS)


def one_line(err: BaseException) -> str:
    """A failure as one line: a user mistake's own message, else type and first line (for
    a GDAL error its own reason, never "See previous exception")."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, InputError):
        return text or "invalid input"
    text = rasterio_reason(err) if text else text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@dataclass
class SceneOutcome:
    """What became of one scene: ``done``, ``skipped`` (finished before), ``failed`` or
    ``not run`` (the run was interrupted first)."""

    id: str
    status: str
    reason: str | None = None
    attempts: int = 0
    seconds: float = 0.0
    report: str | None = None
    class_map: str | None = None
    worker: str | None = None
    model_loaded: bool = False
    transient: bool = False
    #: when the worker finished it (seconds since the epoch, the worker's clock)
    finished_at: float | None = None
    #: torch's CPU threads while it was mapped
    threads: int | None = None


@dataclass(frozen=True)
class SceneTask:
    """One scene's task, as sent to a worker (plain, picklable values)."""

    scene: Scene
    adapter: str
    adapter_sha256: str
    folder: str
    options: PredictOptions
    threads: int | None = None
    #: the adapter file's bytes, for workers that do not share the client's file system
    #: (a run into object storage); None: the workers read ``adapter``
    adapter_bytes: bytes | None = field(default=None, repr=False)


# ---------------------------------------------------------------------------- worker side

#: One scene at a time per process (each uses every torch thread the worker has), and
#: the model cache below: a Dask worker with several threads queues its scenes here.
_ONE_SCENE = threading.Lock()
#: The model this process loaded last: ``{"key": ..., "predictor": ...}``.
_LOADED: dict[str, Any] = {}


def _predictor(task: SceneTask) -> tuple[Any, bool]:
    """The process's predictor for ``task`` (loaded now if it differs), and whether it
    was loaded now."""
    from .predictor import Predictor

    weights = str(task.options.weights) if task.options.weights is not None else None
    key = (task.adapter_sha256, task.options.device, weights)
    if _LOADED.get("key") == key:
        return _LOADED["predictor"], False
    _LOADED.clear()  # one model per process: a changed adapter replaces the old one
    predictor = Predictor.from_adapter(
        adapter_file(task), device=task.options.device, weights=weights
    )
    if predictor.model_info.get("adapter_sha256") != task.adapter_sha256:
        raise InputError(
            f"{task.adapter}: the adapter file changed while the run was going; run again"
        )
    _LOADED.update(key=key, predictor=predictor)
    return predictor, True


def adapter_file(task: SceneTask) -> str:
    """The adapter file this worker loads: the task's path, or, where that is missing or
    another file (a worker without the client's file system), the bytes the task carries,
    written once per process into the temporary folder under their sha256."""
    if task.adapter_bytes is None or _same_file(task.adapter, task.adapter_sha256):
        return task.adapter
    if hashlib.sha256(task.adapter_bytes).hexdigest() != task.adapter_sha256:
        raise InputError(f"{task.adapter}: the adapter sent to the worker is damaged")
    cache = Path(tempfile.gettempdir()) / "gopt-geo-adapters"
    cached = cache / f"{task.adapter_sha256}.safetensors"
    if not _same_file(str(cached), task.adapter_sha256):
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp:
            tmp.write_bytes(task.adapter_bytes)
    return str(cached)


def _same_file(path: str, sha256: str) -> bool:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha256
    except OSError:
        return False


def map_scene(task: SceneTask) -> SceneOutcome:
    """Map one scene into its folder: the task a worker runs. Never raises for the
    scene's own failure: the outcome carries its one-line reason instead."""
    import torch

    worker = f"{socket.gethostname()}:{os.getpid()}"
    scene = task.scene
    with _ONE_SCENE:
        start = time.perf_counter()
        loaded = False
        try:
            apply_http_defaults()  # bounded waits, retries of 429/5xx (io.HTTP_DEFAULTS)
            predictor, loaded = _predictor(task)
            if task.threads:
                torch.set_num_threads(task.threads)  # after loading: it may apply --threads
            # a remote scene (a VRT stack of STAC assets opens its files lazily): no folder
            # listing per file, for this scene only (set for good, it would hide the
            # .aux.xml sidecars of every local file the process opens later)
            remote = any(is_remote(p) for p in (scene.optical, scene.sar) if p)
            with rasterio.Env(**REMOTE_GDAL_OPTIONS) if remote else contextlib.nullcontext():
                # overwrite=True: the output set replaces a stale set whole (and what a
                # killed attempt left); finished scenes were skipped before the task was made
                folder = task.folder if is_url_folder(task.folder) else Path(task.folder)
                result = predictor.predict(scene.optical, scene.sar, folder, task.options)
        except Exception as err:  # the scene's failure, reported; the others go on
            return SceneOutcome(
                scene.id,
                "failed",
                reason=one_line(err),
                seconds=time.perf_counter() - start,
                worker=worker,
                model_loaded=loaded,
                transient=is_transient(err),
                finished_at=time.time(),
                threads=torch.get_num_threads(),
            )
    return SceneOutcome(
        scene.id,
        "done",
        seconds=time.perf_counter() - start,
        report=str(result.report_json),
        class_map=str(result.class_map),
        worker=worker,
        model_loaded=loaded,
        finished_at=time.time(),
        threads=torch.get_num_threads(),
    )


def run_tasks(
    tasks: Sequence[SceneTask],
    executor: Executor | None,
    retries: int,
    done: Callable[[SceneOutcome], object],
) -> None:
    """Run every task (again, for transient failures, up to ``retries`` times); ``done``
    gets each final outcome as it comes."""
    if executor is None:
        for task in tasks:
            attempt = 1
            outcome = map_scene(task)
            while outcome.status == "failed" and outcome.transient and attempt <= retries:
                attempt += 1
                outcome = map_scene(task)
            outcome.attempts = attempt
            done(outcome)
        return
    pending: dict[Future[SceneOutcome], tuple[SceneTask, int]] = {
        executor.submit(map_scene, task): (task, 1) for task in tasks
    }
    try:
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                task, attempt = pending.pop(future)
                try:
                    outcome = future.result()
                except Exception as err:  # the task never ran to its end: a lost worker
                    outcome = SceneOutcome(
                        task.scene.id, "failed", reason=one_line(err), transient=is_transient(err)
                    )
                if outcome.status == "failed" and outcome.transient and attempt <= retries:
                    pending[executor.submit(map_scene, task)] = (task, attempt + 1)
                    continue
                outcome.attempts = attempt
                done(outcome)
    finally:
        for future in pending:
            future.cancel()
