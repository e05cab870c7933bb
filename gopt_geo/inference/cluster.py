"""Where ``predict-many``'s tasks run: a Dask cluster sized to the machine, or one given.

Design §8: the scenes are split across workers by an existing engine (Dask), never a
home-made scheduler. :func:`executor_for` hands :func:`~gopt_geo.inference.many.predict_many`
a Dask client's ``concurrent.futures`` executor: an existing cluster as it is, or a
``LocalCluster`` sized by :func:`plan_workers` (one worker per GPU, each seeing only its
GPU; on CPUs, workers of a few torch threads each). Dask is imported only here, and only
when a cluster is asked for.

An existing cluster that cannot be reached is one line within a bounded time
(``connect_timeout``, ``--connect-timeout``; Dask's own default waits 30 s and then
raises a traceback), and so is a scheduler file that does not exist.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import InputError

#: Seconds to wait for an existing Dask scheduler to answer (``--connect-timeout``).
CONNECT_TIMEOUT = 10.0


def _looks_like_file(scheduler: str) -> bool:
    """A scheduler file rather than an address (``tcp://host:port``, ``host:port``)."""
    if "://" in scheduler:
        return False
    return (
        scheduler.lower().endswith((".json", ".yaml", ".yml"))
        or "/" in scheduler
        or (os.sep in scheduler)
    )


def connect(scheduler: str, timeout: float = CONNECT_TIMEOUT) -> Any:
    """A Dask client of the scheduler at ``scheduler`` (an address, or a scheduler file
    as ``dask scheduler --scheduler-file`` writes it), or one :class:`InputError` line
    within about ``timeout`` seconds: a file that does not exist, an address that does
    not parse, a scheduler that does not answer."""
    if timeout <= 0:
        raise InputError(f"--connect-timeout must be more than 0 seconds, got {timeout:g}")
    path = Path(scheduler)
    is_file = path.is_file()
    if not is_file and _looks_like_file(scheduler):
        raise InputError(f"{scheduler}: scheduler file not found (--scheduler)")
    from distributed import Client

    try:
        if is_file:
            return Client(scheduler_file=str(path), timeout=timeout)
        return Client(scheduler, timeout=timeout)
    except (OSError, ValueError, TypeError) as err:  # TimeoutError is an OSError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        what = "scheduler file" if is_file else "scheduler"
        raise InputError(
            f"{scheduler}: cannot reach the Dask {what} within {timeout:g} s ({reason}); "
            "check the address and that the scheduler runs (--connect-timeout sets the wait)"
        ) from None


def plan_workers(
    workers: int | None,
    threads_per_worker: int | None,
    *,
    cores: int,
    gpus: int,
) -> tuple[int, int]:
    """(workers, torch threads per worker) of a local cluster on ``cores`` CPU cores and
    ``gpus`` GPUs. With GPUs: one worker per GPU. On CPUs: what is given, the rest
    filled from the cores; nothing given: workers of 4 threads (or of all the cores,
    when there are fewer), torch's inner threads scaling well up to about that."""
    for name, value in (("--workers", workers), ("--threads-per-worker", threads_per_worker)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    if gpus:
        n = workers or gpus
        return n, threads_per_worker or max(1, cores // n)
    if workers and threads_per_worker:
        return workers, threads_per_worker
    if workers:
        return workers, max(1, cores // workers)
    threads = threads_per_worker or min(4, cores)
    return max(1, cores // threads), threads


@contextmanager
def executor_for(
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    device: str = "auto",
    connect_timeout: float = CONNECT_TIMEOUT,
    scenes: int | None = None,
) -> Iterator[tuple[Executor | None, int | None, str]]:
    """``(executor, torch threads per worker, description)`` for ``predict-many``: an
    existing Dask cluster (``scheduler``: its address or scheduler file, used as it is),
    or a ``LocalCluster`` on this machine sized by :func:`plan_workers` (one worker per
    GPU, each seeing only its GPU), closed on exit; ``workers=0``: no cluster, the scenes
    run one after another in this process (debugging, tiny runs).

    Workers of an existing cluster run one scene at a time each; their torch threads are
    ``threads_per_worker`` if given, else the threads Dask gives the worker
    (``dask worker --nthreads``). An existing cluster that does not answer within
    ``connect_timeout`` seconds is one :class:`InputError` line (:func:`connect`).

    Without ``scheduler`` and ``workers``, a cluster that could not beat this process is
    not started: when the plan has one worker (its threads are this process's, plus the
    cluster's start, stop and imports: 6.6 s a run on 2 cores,
    ``benchmarks/predict_many.py``), or there are no more ``scenes`` than workers.
    """
    if workers == 0 and not scheduler:
        yield None, threads_per_worker, "in this process (--workers 0, no cluster)"
        return
    if not scheduler and workers is None:
        gpus = _gpu_count(device)
        n, threads = plan_workers(None, threads_per_worker, cores=os.cpu_count() or 1, gpus=gpus)
        if n == 1 or (scenes is not None and scenes <= n):
            why = "one worker's plan" if n == 1 else f"{scenes} scene(s) for {n} workers"
            yield (
                None,
                threads_per_worker,
                f"in this process ({why}: a cluster would only add its start-up; "
                "--workers N starts one)",
            )
            return
    cluster = None
    if scheduler:
        client = connect(scheduler, connect_timeout)
        nthreads = [w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()]
        threads = threads_per_worker or (min(nthreads) if nthreads else None)
        what = f"Dask cluster at {scheduler}: {len(nthreads)} worker(s) x {threads} torch thread(s)"
    else:
        from distributed import Client, LocalCluster

        gpus = _gpu_count(device)
        n, threads = plan_workers(workers, threads_per_worker, cores=os.cpu_count() or 1, gpus=gpus)
        common = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
        if gpus:
            cluster = _gpu_cluster(n, gpus, common)
        else:
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,  # one scene at a time per worker, with `threads`
                processes=True,
                memory_limit=0,  # memory is flat per scene; Dask's pausing would only stall
                **common,
            )
        client = Client(cluster)
        what = f"Dask LocalCluster: {n} worker(s) x {threads} torch thread(s)" + (
            f", one per GPU ({gpus} GPU(s))" if gpus else ""
        )
    try:
        services = client.scheduler_info().get("services", {})
        what += (
            f"; dashboard {client.dashboard_link}"
            if "dashboard" in services
            else "; no dashboard (pip install bokeh for one)"
        )
        yield client.get_executor(pure=False), threads, what
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _gpu_count(device: str) -> int:
    if str(device).lower() == "cpu":
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _gpu_cluster(n: int, gpus: int, common: dict[str, Any]) -> Any:
    """A local cluster of ``n`` workers, worker i seeing only GPU i mod ``gpus`` (as
    dask-cuda does it), each running one scene at a time."""
    from distributed import Nanny, Scheduler, SpecCluster

    return SpecCluster(
        silence_logs=logging.WARNING,  # as LocalCluster does
        scheduler={"cls": Scheduler, "options": dict(common)},
        workers={
            f"gpu-{i}": {
                "cls": Nanny,
                "options": {
                    "nthreads": 1,
                    "memory_limit": 0,
                    "env": {"CUDA_VISIBLE_DEVICES": str(i % gpus)},
                },
            }
            for i in range(n)
        },
    )
