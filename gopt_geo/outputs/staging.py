"""Output sets committed as one: all new files or none, never a mix with the previous set.

A run writes several files (class map, its sidecars, confidence, vectors, item, report).
Renaming each into place as it completes would let an interruption leave a new class
map beside the previous run's vectors and report. A :class:`StagedSet` instead completes
*every* file under its temporary name (:func:`gopt_geo.io.temporary_name`) and then
commits the set in one short step (design §10):

1. a journal (``.<set>.commit.json``, written atomically) lists the old files to remove
   and the renames to make, in order;
2. the previous set's files are removed, its report first (so that it stops looking
   complete first);
3. the new files are renamed into place, the report JSON last: **a set is complete when
   its report JSON exists and no journal does**;
4. the journal is removed.

What an interruption leaves, and what a reader of the folder sees:

- before the commit (any signal, at any moment): the previous set untouched, byte for
  byte, or no file of the new set under its final name. SIGINT raises KeyboardInterrupt
  and SIGTERM raises ``SystemExit(143)`` (:func:`terminate_as_exit`), so the run removes
  its temporary files; after a SIGKILL they stay, hidden, until the next run;
- during the commit: SIGINT and SIGTERM are held back until it ends
  (:func:`deferred_signals`): the run stops with the complete new set in place. A SIGKILL
  (or a power cut) inside step 2 or 3 leaves a subset of the new set *without its report
  JSON* next to the journal; the next run into that folder finishes the journal's renames
  before anything else (:meth:`StagedSet.prepare`, :func:`recover`), so the folder then
  holds the complete new set (and that run, without ``--overwrite``, refuses to replace it).

So a reader that takes a set as complete only when its report JSON exists and no journal
does never sees a mix of two runs. Leftover temporary files of a killed run
(``.NAME.partial-XXXXXXXX.ext`` of this set's names) are removed when the next run into
the folder starts. Signal handling needs the main thread: in a worker thread (Dask) a
signal simply ends the process, and the next run cleans up. Two runs of the same set into
the same folder at the same time are not supported: each would clean the other's files.

Test hook: ``GOPT_GEO_TEST_PAUSE_AT=<stage>`` makes :func:`pause_point` print
``gopt-geo test hook: paused at <stage>`` to stderr and sleep
(``GOPT_GEO_TEST_PAUSE_SECONDS``, default 60) at that stage, so that fault-injection tests
can kill a run at a known moment; with ``GOPT_GEO_TEST_SIGNAL=INT|TERM`` the process sends
itself that signal there instead. Stages: ``windows`` (after the first rows were written),
``vectorize`` (after the first batch of polygons), ``commit`` (old set removed, half of
the new one renamed). Unset, the hook costs one environment lookup.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..io import PARTIAL_MARKER, check_writable, remove_quietly, temporary_name, write_text_atomic

#: Environment variables of the test hook (see the module docstring).
PAUSE_ENV = "GOPT_GEO_TEST_PAUSE_AT"
PAUSE_SECONDS_ENV = "GOPT_GEO_TEST_PAUSE_SECONDS"
SIGNAL_ENV = "GOPT_GEO_TEST_SIGNAL"
#: Suffix of a set's commit journal (``.<set>.commit.json``).
JOURNAL_SUFFIX = ".commit.json"
#: What may follow a temporary name: GDAL sidecars, SQLite journals (GeoPackage).
_TEMP_EXTRAS = ("", ".aux.xml", ".ovr", "-journal", "-wal", "-shm")
_TEMP_NAME = re.compile(rf"^\.(?P<stem>.+){re.escape(PARTIAL_MARKER)}[0-9a-f]{{8}}(?P<rest>.*)$")

#: Signals received while a commit holds them back (None: no commit running).
_deferred: list[int] | None = None


# -- signals ---------------------------------------------------------------------------------


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def deferred_signals(signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for the block and deliver them when it ends.

    The commit of an output set is short (a few renames); letting Ctrl-C split it would
    leave a partial set. Python can only set handlers in the main thread: elsewhere (a
    Dask worker thread) signals are not delivered to this code anyway, and this is a no-op.
    """
    global _deferred
    if not _in_main_thread() or _deferred is not None:
        yield
        return
    received: list[int] = []

    def record(signum: int, frame: Any) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, record) for s in signals}
    _deferred = received
    try:
        yield
    finally:
        _deferred = None
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(received):  # each signal once, in arrival order
            signal.raise_signal(s)


@contextmanager
def terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit(143)`` for the block, so that a terminated run
    removes its temporary files as Ctrl-C does, instead of dying on the spot.

    Only in the main thread and only where SIGTERM has its default disposition: a host
    application (or a test) that set its own handler keeps it.
    """
    if not _in_main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def pause_point(stage: str) -> None:
    """Test hook: pause (or signal this process) at ``stage`` when asked to by the
    environment; see the module docstring. A held-back signal ends the pause early."""
    if os.environ.get(PAUSE_ENV) != stage:
        return
    print(f"gopt-geo test hook: paused at {stage}", file=sys.stderr, flush=True)
    name = os.environ.get(SIGNAL_ENV)
    if name:
        signal.raise_signal(getattr(signal, f"SIG{name.upper().removeprefix('SIG')}"))
        time.sleep(0.01)  # let the handler run here, at the stage
        return
    end = time.monotonic() + float(os.environ.get(PAUSE_SECONDS_ENV, "60"))
    while time.monotonic() < end and not _deferred:
        time.sleep(0.02)


# -- leftovers and recovery -------------------------------------------------------------------


def journal_path(out_dir: Path, name: str) -> Path:
    """The commit journal of the set ``name`` in ``out_dir``."""
    return Path(out_dir) / f".{name}{JOURNAL_SUFFIX}"


def leftovers(out_dir: Path, finals: Iterable[Path]) -> list[Path]:
    """Temporary files in ``out_dir`` of any of ``finals`` (and their GDAL/SQLite sidecars)."""
    wanted = {(f.stem, f.suffix + extra) for f in map(Path, finals) for extra in _TEMP_EXTRAS}
    found = []
    for entry in Path(out_dir).iterdir():
        m = _TEMP_NAME.match(entry.name)
        if m and (m["stem"], m["rest"]) in wanted and entry.is_file():
            found.append(entry)
    return sorted(found)


def _apply(out_dir: Path, plan: dict[str, Any], pause: bool = False) -> None:
    """Carry out a commit journal; idempotent, so that recovery can run it again.

    An old file whose replacement was already renamed into place (its temporary file is
    gone) is not removed again: that name now holds the new file.
    """
    renames = [(out_dir / tmp, out_dir / final) for tmp, final in plan["rename"]]
    pending = {final for tmp, final in renames if tmp.exists()}
    incoming = {final for _, final in renames}
    for name in plan["remove"]:
        path = out_dir / name
        if path in incoming and path not in pending:
            continue
        path.unlink(missing_ok=True)
    for i, (tmp, final) in enumerate(renames):
        if pause and i == len(renames) // 2:
            pause_point("commit")
        if tmp.exists():
            os.replace(tmp, final)


def recover(out_dir: Path, name: str, finals: Iterable[Path]) -> list[Path]:
    """Finish the commit a killed run left half done, then remove its temporary files.

    Returns the leftover temporary files removed. Called when a run into ``out_dir``
    starts, before it checks for existing outputs.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    journal = journal_path(out_dir, name)
    if journal.exists():
        try:
            plan = json.loads(journal.read_text(encoding="utf-8"))
        except ValueError:  # cannot happen (written atomically); nothing was touched then
            plan = None
        if isinstance(plan, dict) and plan.get("rename"):
            _apply(out_dir, plan)
        journal.unlink(missing_ok=True)
    found = leftovers(out_dir, [*finals, journal])
    for path in found:
        remove_quietly(path)
    return found


# -- the set ----------------------------------------------------------------------------------


class StagedSet:
    """The files of one output set, completed under temporary names and committed together.

    ``family`` lists every final name this set may own (whatever a run's options), the
    files a run replaces (``--overwrite``) or refuses to replace. A run names each file it
    writes with :meth:`stage` (which gives its temporary path), then calls :meth:`commit`
    with the new files in rename order (report JSON last), or :meth:`discard` on failure.
    """

    def __init__(self, out_dir: Path, name: str, family: Sequence[Path]) -> None:
        self.out_dir = Path(out_dir)
        self.name = name
        self.family = [Path(p) for p in family]
        self.journal = journal_path(self.out_dir, name)
        self.staged: dict[Path, Path] = {}  # final -> temporary
        self.committed = False

    def prepare(self, overwrite: bool) -> list[Path]:
        """Start of a run: finish a commit a killed run left half done, remove leftover
        temporary files (returned), then refuse existing outputs unless ``overwrite``."""
        removed = recover(self.out_dir, self.name, self.family)
        check_writable(self.family, overwrite)
        return removed

    def stage(self, final: Path) -> Path:
        """The temporary path the file ``final`` is written to (the same on every call)."""
        final = Path(final)
        if final not in self.staged:
            self.staged[final] = temporary_name(final)
        return self.staged[final]

    def discard(self) -> None:
        """Remove every temporary file of the set (after an error or an interruption)."""
        for tmp in self.staged.values():
            remove_quietly(tmp)
            for extra in ("-journal", "-wal", "-shm"):
                Path(f"{tmp}{extra}").unlink(missing_ok=True)

    def commit(
        self, order: Sequence[Path], overwrite: bool, remove_first: Sequence[Path] = ()
    ) -> None:
        """Replace the previous set (if any, with ``overwrite``) by the staged files, renamed
        in ``order``; of the old files, ``remove_first`` (the report) go before the others.
        See the module docstring for the steps and the guarantees."""
        order = [Path(p) for p in order]
        missing = [f for f in order if f not in self.staged or not self.staged[f].exists()]
        if missing:
            raise RuntimeError(f"output set {self.name}: not written: {missing}")
        first = [Path(p) for p in remove_first]
        old = [p for p in [*first, *(p for p in self.family if p not in first)] if p.exists()]
        if old and not overwrite:  # appeared while this run worked: never replace them
            check_writable(old, overwrite)
        plan = {
            "version": 1,
            "remove": [p.name for p in old],
            "rename": [[self.staged[f].name, f.name] for f in order],
        }
        with deferred_signals():
            write_text_atomic(self.journal, json.dumps(plan, indent=1) + "\n")
            _apply(self.out_dir, plan, pause=True)
            self.journal.unlink()
            self.committed = True
        stray = [f for f in self.staged if f not in order]
        for f in stray:  # staged but not part of the set: a bug, but leave no temp file
            remove_quietly(self.staged[f])
