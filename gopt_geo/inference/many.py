"""Many scenes, one call: each scene one task on any ``concurrent.futures.Executor``.

Design §8: mapping many scenes is split across workers by an existing engine (Dask),
never a home-made scheduler. The core, :func:`predict_many`, knows only the ``Executor``
interface: without one the scenes run one after another in this process; the command
line hands it a Dask client's ``get_executor()`` (:func:`executor_for`: a
``LocalCluster`` sized to the machine, or an existing cluster), so this module imports
no Dask internals and a test or a notebook may pass any executor.

A task is :func:`map_scene`: exactly what ``gopt-geo predict`` does for one scene, into
``OUT/<scene id>/``. Each worker process loads the model once and keeps it for the next
scene (keyed by the adapter's sha256, device and weights), maps one scene at a time, and
sets torch's threads explicitly (Dask starts workers with ``OMP_NUM_THREADS=1``).

Failures stay with their scene: a task returns its one-line reason rather than raising,
a failure that another try may cure (network, a lost worker: :func:`is_transient`) is
submitted again up to ``retries`` times, and the others finish. ``resume`` (the default)
skips a scene whose report lists outputs that all exist, made by the same adapter
(sha256) with the same output settings
(:meth:`~gopt_geo.inference.options.PredictOptions.output_settings`); anything else is
mapped again (the output set replaces the stale set whole, and removes what a killed
attempt left). An interrupted run, run again, maps only what is left.

Per run (:func:`write_run_outputs`): ``run.json`` and ``run.md`` (scenes done, skipped
and failed with reasons, time, scenes/hour, class areas summed over the run),
``index.parquet`` (GeoParquet, one row per scene: footprint, paths, class areas, status)
and ``mosaic_<CRS>.vrt``, the class maps of each CRS as one raster (QGIS opens the whole
run as one layer).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from rasterio.crs import CRS

from .. import __version__
from ..errors import InputError
from ..io import (
    atomic_path,
    ensure_output_dir,
    open_raster,
    raster_stem,
    strict_json,
    write_text_atomic,
)
from ..outputs.stac import write_collection
from .options import PredictOptions
from .sources import Scene, safe_id

RUN_JSON = "run.json"
RUN_MARKDOWN = "run.md"
INDEX = "index.parquet"
#: The index's CRS when the scenes are in several CRSs.
INDEX_FALLBACK_CRS = "EPSG:4326"
#: GDAL settings for remote inputs in worker processes (set only where not set already):
#: one request per file instead of a folder listing, and GDAL's own retries of HTTP
#: errors that usually pass (429, 5xx) before a scene is failed.
REMOTE_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
}
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
    """A failure as one line: a user mistake's own message, else type and first line."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, InputError):
        return text or "invalid input"
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


@dataclass
class RunResult:
    """A run: every scene's outcome, the wall time, and the run's files."""

    out_dir: Path
    scenes: list[SceneOutcome]
    seconds: float
    files: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def with_status(self, status: str) -> list[SceneOutcome]:
        return [s for s in self.scenes if s.status == status]

    @property
    def failed(self) -> list[SceneOutcome]:
        return [s for s in self.scenes if s.status in ("failed", "not run")]


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
    predictor = Predictor.from_adapter(task.adapter, device=task.options.device, weights=weights)
    if predictor.model_info.get("adapter_sha256") != task.adapter_sha256:
        raise InputError(
            f"{task.adapter}: the adapter file changed while the run was going; run again"
        )
    _LOADED.update(key=key, predictor=predictor)
    return predictor, True


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
            for key, value in REMOTE_ENV.items():
                os.environ.setdefault(key, value)
            predictor, loaded = _predictor(task)
            if task.threads:
                torch.set_num_threads(task.threads)  # after loading: it may apply --threads
            # overwrite=True: the output set replaces a stale set whole (and what a killed
            # attempt left); finished scenes were skipped before the task was made
            result = predictor.predict(scene.optical, scene.sar, Path(task.folder), task.options)
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


# ---------------------------------------------------------------------------- client side


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def finished_report(
    folder: Path, scene: Scene, adapter_sha256: str, settings: dict[str, Any]
) -> dict[str, Any] | None:
    """The report of a scene already mapped as this run would map it, else None: made by
    the same adapter with the same output settings from the same inputs (as the report
    names them), every output it lists present."""
    report = _read_json(folder / f"{raster_stem(scene.optical)}_report.json")
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
    if not all((folder / Path(str(p)).name).exists() for p in outputs.values()):
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


def _run_tasks(
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
    sha = hashlib.sha256(adapter_path.read_bytes()).hexdigest()
    scenes = list(scenes)
    _check_ids(scenes)
    out = ensure_output_dir(out_dir)
    settings = options.output_settings()
    task_options = dataclasses.replace(options, progress=False, overwrite=True)
    started = _dt.datetime.now(_dt.UTC)
    start = time.perf_counter()

    outcomes: dict[str, SceneOutcome] = {}
    tasks = []
    for scene in scenes:
        folder = out / scene.id
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
                report=str(folder / f"{raster_stem(scene.optical)}_report.json"),
                class_map=str(folder / Path(str(outputs["class_map"])).name),
            )
            continue
        tasks.append(
            SceneTask(
                scene,
                str(adapter_path.absolute()),
                sha,
                str(folder.absolute()),
                task_options,
                threads,
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
            _run_tasks(tasks, executor, retries, record)
    finally:  # an interrupted run still leaves its record (and is resumed from its files)
        seconds = time.perf_counter() - start
        ordered = [
            outcomes.get(s.id) or SceneOutcome(s.id, "not run", reason="the run was interrupted")
            for s in scenes
        ]
        files, summary = write_run_outputs(
            out,
            scenes,
            ordered,
            adapter=str(adapter_path),
            adapter_sha256=sha,
            settings=settings,
            seconds=seconds,
            started=started,
            executor_info=executor_info
            or ("in-process" if executor is None else type(executor).__name__),
            class_names={c.code: c.name for c in meta.classes.classes},
        )
    return RunResult(out, ordered, seconds, files, summary)


# ---------------------------------------------------------------------------- run outputs


def _class_rows(report: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list((report or {}).get("classes") or [])


def _footprint(path: str) -> tuple[Any, Any] | None:
    """(CRS, shapely polygon of the grid's bounds) of a raster, or None if it cannot be
    read or has no CRS."""
    from shapely.geometry import box

    try:
        with open_raster(path) as src:
            if src.crs is None:
                return None
            return src.crs, box(*src.bounds)
    except Exception:  # a failed scene's unreadable input: no footprint, not an error
        return None


def _to_crs(geometry: Any, src: Any, dst: Any) -> Any:
    """A polygon in another CRS, its edges densified (straight lines do not stay straight)."""
    from rasterio.warp import transform_geom
    from shapely.geometry import mapping, shape

    if src == dst:
        return geometry
    dense = geometry.segmentize(max(geometry.length / 400, 1e-9))
    return shape(transform_geom(src, dst, mapping(dense)))


def write_run_outputs(
    out: Path,
    scenes: Sequence[Scene],
    outcomes: Sequence[SceneOutcome],
    *,
    adapter: str,
    adapter_sha256: str,
    settings: dict[str, Any],
    seconds: float,
    started: _dt.datetime,
    executor_info: str,
    class_names: dict[int, str],
) -> tuple[dict[str, Path], dict[str, Any]]:
    """``run.json``, ``run.md``, ``index.parquet`` and the mosaics of a run (see the
    module docstring); returns their paths and the summary."""
    rows = []
    totals: dict[int, dict[str, Any]] = {}
    for scene, outcome in zip(scenes, outcomes, strict=True):
        report = _read_json(Path(outcome.report)) if outcome.report else None
        areas: dict[str, float | None] = {}
        for c in _class_rows(report):
            total = totals.setdefault(
                int(c["code"]), {"code": c["code"], "name": c["name"], "pixels": 0}
            )
            total["pixels"] += int(c.get("pixels", 0))
            if "area_ha" in c:
                total["area_ha"] = total.get("area_ha", 0.0) + float(c["area_ha"])
                areas[c["name"]] = float(c["area_ha"])
        mapped = outcome.status in ("done", "skipped") and outcome.class_map
        source = outcome.class_map if mapped else scene.optical
        footprint = _footprint(source) if source else None
        rows.append((scene, outcome, report, areas, footprint))

    crss = {fp[0].to_string(): fp[0] for *_, fp in rows if fp is not None}
    index_crs = next(iter(crss.values())) if len(crss) == 1 else CRS.from_string(INDEX_FALLBACK_CRS)
    mosaics = write_mosaics(out, [(o, fp) for _, o, _, _, fp in rows])
    index_path = _write_index(out, rows, index_crs, class_names)
    # the STAC items the scenes' runs wrote, linked by one collection (rewritten per run)
    items = [
        Path(o.report).with_name(Path(o.report).name.replace("_report.json", "_item.json"))
        for o in outcomes
        if o.status in ("done", "skipped") and o.report
    ]
    items = [p for p in items if p.exists()]
    collection = (
        write_collection(
            items, out, description=f"gopt-geo land-cover maps made with {adapter}", overwrite=True
        )
        if items
        else None
    )

    done = [o for o in outcomes if o.status == "done"]
    counts = {
        status: sum(o.status == status for o in outcomes)
        for status in ("done", "skipped", "failed", "not run")
    }
    summary: dict[str, Any] = {
        "gopt_geo_version": __version__,
        "started": started.isoformat(timespec="seconds"),
        "seconds": seconds,
        "scenes_per_hour": len(done) / (seconds / 3600) if done and seconds > 0 else 0.0,
        "executor": executor_info,
        "adapter": adapter,
        "adapter_sha256": adapter_sha256,
        "options": settings,
        "counts": {**counts, "total": len(outcomes)},
        "model_loads": sum(o.model_loaded for o in outcomes),
        "workers": sorted({o.worker for o in outcomes if o.worker}),
        "scenes": [
            {
                **scene.describe(),
                **dataclasses.asdict(outcome),
                "area_ha": areas or None,
                "crs": fp[0].to_string() if fp else None,
            }
            for scene, outcome, _, areas, fp in rows
        ],
        "class_totals": [totals[k] for k in sorted(totals)],
        "index": str(index_path),
        "index_crs": index_crs.to_string(),
        "mosaics": {k: str(v) for k, v in mosaics.items()},
        "collection": str(collection) if collection else None,
    }
    files = {
        "run_json": write_text_atomic(out / RUN_JSON, strict_json(summary)),
        "run_markdown": write_text_atomic(out / RUN_MARKDOWN, render_run_markdown(summary)),
        "index": index_path,
        **{f"mosaic {k}": v for k, v in mosaics.items()},
        **({"collection": collection} if collection else {}),
    }
    return files, summary


def _write_index(
    out: Path, rows: Sequence[tuple[Any, ...]], crs: Any, class_names: dict[int, str]
) -> Path:
    """The GeoParquet index: one row per scene, its footprint in ``crs``."""
    import geopandas as gpd

    names = [class_names[k] for k in sorted(class_names)]
    records, geometries = [], []
    for scene, outcome, _report, areas, fp in rows:
        record = {
            "id": scene.id,
            "status": outcome.status,
            "reason": outcome.reason,
            "attempts": outcome.attempts,
            "seconds": outcome.seconds,
            "optical": scene.describe()["optical"],
            "sar": scene.describe()["sar"],
            "class_map": outcome.class_map,
            "report": outcome.report,
            "scene_crs": fp[0].to_string() if fp else None,
        }
        for name in names:
            record[f"area_ha_{safe_id(name)}"] = areas.get(name) if areas else None
        records.append(record)
        geometries.append(_to_crs(fp[1], fp[0], crs) if fp else None)
    frame = gpd.GeoDataFrame(records, geometry=geometries, crs=crs)
    final = out / INDEX
    with atomic_path(final) as tmp:
        frame.to_parquet(tmp)
    return final


def _crs_tag(crs: Any) -> str:
    epsg = crs.to_epsg()
    return f"EPSG_{epsg}" if epsg else safe_id(crs.to_string())[:40]


def write_mosaics(out: Path, mapped: Sequence[tuple[SceneOutcome, Any]]) -> dict[str, Path]:
    """One VRT per CRS over the class maps of the run (done and skipped scenes): the finest
    pixel size of the group, nearest-neighbour, each map's nodata transparent so that
    overlapping scenes do not hide each other; palette and class names from the maps.
    Paths are relative to the VRT, so the run folder can be moved as a whole."""
    import rasterio

    groups: dict[str, list[Any]] = {}
    for outcome, fp in mapped:
        if outcome.status in ("done", "skipped") and outcome.class_map and fp is not None:
            groups.setdefault(fp[0].to_string(), []).append(outcome.class_map)
    written = {}
    for key, paths in groups.items():
        infos = []
        for p in paths:
            with rasterio.open(p) as src:
                infos.append(
                    {
                        "path": Path(p),
                        "transform": src.transform,
                        "width": src.width,
                        "height": src.height,
                        "crs": src.crs,
                        "nodata": src.nodata,
                        "colormap": _colormap(src),
                        "tags": src.tags(1),
                    }
                )
        final = out / f"mosaic_{_crs_tag(infos[0]['crs'])}.vrt"
        write_text_atomic(final, _mosaic_xml(final.parent, infos))
        written[key] = final
    return written


def _colormap(src: Any) -> dict[int, tuple[int, ...]] | None:
    try:
        return src.colormap(1)
    except ValueError:  # no palette
        return None


def _mosaic_xml(folder: Path, infos: Sequence[dict[str, Any]]) -> str:
    res_x = min(abs(i["transform"].a) for i in infos)
    res_y = min(abs(i["transform"].e) for i in infos)
    lefts = [i["transform"].c for i in infos]
    tops = [i["transform"].f for i in infos]
    rights = [i["transform"].c + i["width"] * i["transform"].a for i in infos]
    bottoms = [i["transform"].f + i["height"] * i["transform"].e for i in infos]
    left, top, right, bottom = min(lefts), max(tops), max(rights), min(bottoms)
    width = max(1, round((right - left) / res_x))
    height = max(1, round((top - bottom) / res_y))
    first = infos[0]
    nodata = first["nodata"]
    lines = [
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
        f"<SRS>{escape(first['crs'].to_wkt())}</SRS>",
        f"<GeoTransform>{left!r}, {res_x!r}, 0.0, {top!r}, 0.0, {-res_y!r}</GeoTransform>",
        '<VRTRasterBand dataType="Byte" band="1">',
        "<Description>land cover class</Description>",
    ]
    if nodata is not None:
        lines.append(f"<NoDataValue>{int(nodata)}</NoDataValue>")
    names = {
        int(k.split("_", 1)[1]): v
        for k, v in first["tags"].items()
        if k.startswith("CLASS_") and k.split("_", 1)[1].isdigit()
    }
    if names:
        lines.append("<CategoryNames>")
        lines += [f"<Category>{escape(names.get(c, ''))}</Category>" for c in range(max(names) + 1)]
        lines.append("</CategoryNames>")
    if first["colormap"]:
        lines.append("<ColorInterp>Palette</ColorInterp><ColorTable>")
        cmap = first["colormap"]
        for value in range(max(cmap) + 1):
            r, g, b, a = cmap.get(value, (0, 0, 0, 0))
            lines.append(f'<Entry c1="{r}" c2="{g}" c3="{b}" c4="{a}"/>')
        lines.append("</ColorTable>")
    for info in infos:
        t = info["transform"]
        x0, y0 = (t.c - left) / res_x, (top - t.f) / res_y
        xs, ys = info["width"] * abs(t.a) / res_x, info["height"] * abs(t.e) / res_y
        rel = os.path.relpath(info["path"].absolute(), folder.absolute())
        lines += [
            "<ComplexSource>",
            f'<SourceFilename relativeToVRT="1">{escape(rel)}</SourceFilename>',
            "<SourceBand>1</SourceBand>",
            f'<SrcRect xOff="0" yOff="0" xSize="{info["width"]}" ySize="{info["height"]}"/>',
            f'<DstRect xOff="{x0!r}" yOff="{y0!r}" xSize="{xs!r}" ySize="{ys!r}"/>',
        ]
        if info["nodata"] is not None:
            lines.append(f"<NODATA>{int(info['nodata'])}</NODATA>")
        lines.append("</ComplexSource>")
    lines += ["</VRTRasterBand>", "</VRTDataset>"]
    return "\n".join(lines) + "\n"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds:.1f} s"


def render_run_markdown(summary: dict[str, Any]) -> str:
    """The run report for people: counts, time, scenes/hour, failures, class areas."""
    c = summary["counts"]
    lines = [
        "# Prediction run",
        "",
        f"{c['total']} scene(s): {c['done']} mapped, {c['skipped']} skipped (already mapped), "
        f"{c['failed']} failed"
        + (f", {c['not run']} not run (interrupted)" if c["not run"] else "")
        + ".",
        "",
        "| | |",
        "|---|---|",
        f"| started | {summary['started']} |",
        f"| time | {_hours(summary['seconds'])} |",
        f"| scenes/hour | {summary['scenes_per_hour']:,.1f} |",
        f"| executor | {summary['executor']} |",
        f"| model loads | {summary['model_loads']} |",
        f"| adapter | `{summary['adapter']}` (sha256 {summary['adapter_sha256'][:12]}) |",
        f"| options | {', '.join(f'{k}={v}' for k, v in summary['options'].items())} |",
        f"| index | `{Path(summary['index']).name}` (footprints in {summary['index_crs']}) |",
    ]
    for crs, path in summary["mosaics"].items():
        lines.append(f"| mosaic ({crs}) | `{Path(path).name}` |")
    lines += ["", "## Scenes", "", "| scene | status | s | reason |", "|---|---|---:|---|"]
    for s in summary["scenes"]:
        reason = (s["reason"] or "").replace("|", "\\|") if s["status"] != "done" else ""
        lines.append(f"| {s['id']} | {s['status']} | {s['seconds']:.1f} | {reason} |")
    totals = summary["class_totals"]
    if totals:
        has_area = any("area_ha" in t for t in totals)
        lines += ["", "## Classes over the run (mapped and skipped scenes)", ""]
        lines += [
            "| code | class | pixels |" + (" area (ha) |" if has_area else ""),
            "|---:|---|---:|" + ("---:|" if has_area else ""),
        ]
        for t in totals:
            row = f"| {t['code']} | {t['name']} | {t['pixels']:,} |"
            if has_area:
                row += f" {t.get('area_ha', 0.0):,.2f} |"
            lines.append(row)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- Dask


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
) -> Iterator[tuple[Executor | None, int | None, str]]:
    """``(executor, torch threads per worker, description)`` for ``predict-many``: an
    existing Dask cluster (``scheduler``: its address or scheduler file, used as it is),
    or a ``LocalCluster`` on this machine sized by :func:`plan_workers` (one worker per
    GPU, each seeing only its GPU), closed on exit; ``workers=0``: no cluster, the scenes
    run one after another in this process (debugging, tiny runs).

    Workers of an existing cluster run one scene at a time each; their torch threads are
    ``threads_per_worker`` if given, else the threads Dask gives the worker
    (``dask worker --nthreads``).
    """
    if workers == 0 and not scheduler:
        yield None, threads_per_worker, "in this process (--workers 0, no cluster)"
        return
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler:
        if Path(scheduler).is_file():
            client = Client(scheduler_file=scheduler)
        else:
            client = Client(scheduler)
        nthreads = [w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()]
        threads = threads_per_worker or (min(nthreads) if nthreads else None)
        what = f"Dask cluster at {scheduler}: {len(nthreads)} worker(s) x {threads} torch thread(s)"
    else:
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
