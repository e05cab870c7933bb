"""The ``gopt-geo`` command line: parse options, call the library, print a summary.

No logic lives here. User mistakes (:class:`GoptGeoError`) print one line naming the
file and the problem and exit with status 2, without a traceback.

Why one module over 500 lines: it is the typer app, one short function per command
(eleven of them) that only parses options and prints; splitting the commands apart
would scatter the one place a user's command line is defined.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import GoptGeoError
from .inference.options import PredictOptions, option_fields  # torch-free

#: Environment variable (and --threads) for torch's CPU threads; applied in io.resolve_device
#: (repeated here so that the CLI does not import rasterio before it needs to).
THREADS_ENV = "GOPT_GEO_THREADS"

#: The prediction options both `predict` and `predict-many` offer, in their --help order;
#: type, default and help come from their one declaration, ``PredictOptions``'s fields
#: (`predict` adds overwrite and progress; predict-many has its own run-wide ones).
SCENE_OPTIONS = (
    "window",
    "overlap",
    "margin",
    "batch_size",
    "device",
    "weights",
    "probabilities",
    "confidence",
    "uncertainty",
    "uncertainty_threshold",
    "vector",
    "min_area",
    "simplify",
    "wait",
)


def prediction_options[F: Callable[..., Any]](*names: str, **fixed: Any) -> Callable[[F], F]:
    """Give a command the ``PredictOptions`` fields ``names`` as flags, in place of its
    ``options`` parameter, and call it with one ``PredictOptions`` made of them (and of
    ``fixed`` values).

    Typer reads a command's flags from ``inspect.signature``: the wrapper's
    ``__signature__`` is the command's own with ``options`` replaced by one parameter per
    field (type, default and help from the field's declaration), so nothing about a
    prediction option is written here a second time.
    """
    declared = option_fields()

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)
        own = list(signature.parameters.values())
        at = [p.name for p in own].index("options")
        flags = [
            inspect.Parameter(
                name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=declared[name][1],
                annotation=Annotated[declared[name][0], typer.Option(help=declared[name][2])],
            )
            for name in names
        ]
        params = [*own[:at], *flags, *own[at + 1 :]]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            chosen = {name: kwargs.pop(name) for name in names}
            return fn(**kwargs, options=PredictOptions(**chosen, **fixed))

        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper  # type: ignore[return-value]

    return decorate


app = typer.Typer(
    name="gopt-geo",
    help="Land-cover mapping from optical + SAR imagery with Grouping Prompt Tuning (GoPT).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def user_errors[F: Callable[..., Any]](fn: F) -> F:
    """Turn user-facing errors into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GoptGeoError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _echo(msg: str = "") -> None:
    typer.echo(msg)


@app.callback()
def main(
    threads: Annotated[
        int | None,
        typer.Option(
            envvar=THREADS_ENV,
            help="CPU threads for torch (train, predict, evaluate, demo); default: all "
            "cores. Lower it on a shared machine: oversubscribed threads make the same run "
            "many times slower.",
        ),
    ] = None,
) -> None:
    """Land-cover mapping from optical + SAR imagery with Grouping Prompt Tuning (GoPT)."""
    if threads is not None:
        if threads < 1:
            typer.echo(f"error: --threads {threads}: expected a positive number", err=True)
            raise typer.Exit(2)
        os.environ[THREADS_ENV] = str(threads)  # applied where torch is first set up


@app.command()
@user_errors
def synth(
    out_dir: Annotated[
        Path,
        typer.Argument(help="Folder to write optical/, sar/, labels/, clouds/ (or lbl/) into."),
    ],
    size: Annotated[
        str | None,
        typer.Option(
            help="Scene size in optical pixels: N (N x N) or HxW. Default 512; "
            "with --like whu-os the release's 3704x5556."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    scenes: Annotated[
        int | None,
        typer.Option(help="Number of scenes. Default 4; with --like whu-os 100 (at most 100)."),
    ] = None,
    like: Annotated[
        str | None,
        typer.Option(
            help="Write a dataset's layout as released: whu-os (optical/, sar/, lbl/; uint8; "
            "no CRS; the official split's scene names; features drawn at 5 m)."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing scene files.")] = False,
) -> None:
    """Write synthetic co-registered optical + SAR + label scenes (GeoTIFF) and summarise them."""
    if like not in (None, "whu-os"):
        raise GoptGeoError(f"--like: unknown layout {like!r}; expected whu-os")
    shape = _scene_size(size)
    if out_dir.exists() and any(out_dir.rglob("*.tif")) and not overwrite:
        raise GoptGeoError(f"{out_dir}: already holds scenes; use --overwrite to replace them")
    if like is None:
        from .data.summary import summarize_scenes
        from .data.synthetic import make_scenes

        make_scenes(out_dir, 4 if scenes is None else scenes, size=shape or 512, seed=seed)
        _echo(summarize_scenes(out_dir))
        return
    import json

    from .data.replica import WHU_OS_SHAPE, write_whu_os_like

    shape = shape or WHU_OS_SHAPE
    replica = write_whu_os_like(
        out_dir,
        scenes=100 if scenes is None else scenes,
        size=shape,
        seed=seed,
        progress=lambda i, n, name: _echo(f"  scene {i}/{n}: {name}"),
    )
    h, w = (shape, shape) if isinstance(shape, int) else shape
    _echo(
        f"{len(replica.scenes)} WHU-OPT-SAR-shaped scene(s) of {h}x{w} px in {out_dir} "
        "(optical/ R,G,B,NIR + sar/ + lbl/, uint8, no CRS)"
    )
    _echo("split (for data.scenes): " + json.dumps(replica.split))


def _scene_size(text: str | None) -> int | tuple[int, int] | None:
    """``--size``: N (N x N) or HxW, in pixels."""
    if text is None:
        return None
    try:
        values = [int(v) for v in text.lower().split("x")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise GoptGeoError(f"--size: expected N or HxW in pixels, got {text!r}")
    return values[0] if len(values) == 1 else (values[0], values[1])


@app.command()
@user_errors
def summary(
    root: Annotated[Path, typer.Argument(help="Scene folder (optical/, sar/, labels/).")],
) -> None:
    """Summarise a scene folder: scenes, grids, CRS, bands, class fractions."""
    from .data.summary import summarize_scenes

    _echo(summarize_scenes(root))


@app.command()
@user_errors
def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run config (YAML).")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value: key.sub=value (repeatable)."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run's last checkpoint.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace the run already in output_dir (its files only).")
    ] = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    devices: Annotated[int | None, typer.Option(help="Devices per node (Lightning).")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Nodes (Lightning).")] = None,
    strategy: Annotated[str | None, typer.Option(help="Lightning strategy, e.g. ddp.")] = None,
) -> None:
    """Train GoPT (or a baseline) on the configured scenes; writes the adapter of the best epoch."""
    from .config import load_config
    from .training import train as run_training

    overrides = list(set_ or [])
    for key, value in (
        ("device", device),
        ("devices", devices),
        ("num_nodes", num_nodes),
        ("strategy", strategy),
    ):
        if value is not None:
            overrides.append(f"train.{key}={value}")
    cfg = load_config(config, overrides)
    result = run_training(cfg, resume=resume, overwrite=overwrite, log=_echo)
    if result.finished_before:
        return
    _echo(f"trained in {result.seconds:.0f} s; outputs in {result.output_dir}")
    if result.adapter is None:
        _echo(
            "  no adapter written: training ended before the first validation "
            "(train.max_steps shorter than one epoch?)"
        )
    from .evaluation import Metrics

    # epochs counted from 1, as the progress bar does
    m, total = result.metrics, cfg.train.epochs
    if result.adapter is not None and "val" in m:
        _echo(f"  adapter: {result.adapter} (best epoch: {m['epoch'] + 1} of {total})")
        _echo(f"  validation, epoch {m['epoch'] + 1} (the adapter's):")
        _echo("    " + Metrics.from_dict(m["val"]).summary())
    if "last_val" in m and m.get("last_epoch") != m.get("epoch"):
        _echo(f"  validation, epoch {m['last_epoch'] + 1} (the last; not the adapter's):")
        _echo("    " + Metrics.from_dict(m["last_val"]).summary())


@app.command()
@user_errors
def evaluate(
    prediction: Annotated[
        Path | None, typer.Argument(help="A predicted class map (GeoTIFF) to score.")
    ] = None,
    reference: Annotated[
        Path | None, typer.Argument(help="Reference class raster (warped onto the map's grid).")
    ] = None,
    model: Annotated[Path | None, typer.Option(help="Adapter file to evaluate.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Run config.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Config override.")] = None,
    split: Annotated[
        str,
        typer.Option(
            help="train, val or test: the split a model is scored on, or, for a map with "
            "--config, the split's band of rows (or scenes) the map is scored on."
        ),
    ] = "test",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Metrics JSON.")] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            help="Class scheme of a map from another tool: a built-in scheme name "
            "(e.g. whu_opt_sar) or a class file (.yaml/.json with classes:)."
        ),
    ] = None,
    within: Annotated[
        Path | None,
        typer.Option(help="Score only where this 0/1 raster (on the map's grid) is non-zero."),
    ] = None,
) -> None:
    """Score a model on a data split (--model, --config), or a class map against a
    reference (everywhere, --within a mask, or on a split of --config's scenes)."""
    from .data.classes import scheme_option
    from .evaluation import evaluate_maps
    from .io import ensure_output_dir, strict_json, write_text_atomic

    if prediction is not None:
        if reference is None or model is not None:
            raise GoptGeoError(
                "give a predicted map and a reference raster, or --model and --config"
            )
        scheme = scheme_option(classes) if classes is not None else None
        region = None
        if config is not None:
            from .config import load_config
            from .evaluation import split_region

            chosen = split_region(load_config(config, set_), split, prediction)
            region = chosen.boxes
            _echo(f"scoring {chosen.description}")
        metrics = evaluate_maps(prediction, reference, classes=scheme, within=within, region=region)
        default_out = prediction.with_suffix(".metrics.json")
    else:
        if model is None or config is None:
            raise GoptGeoError("give --model ADAPTER and --config FILE (or PRED.tif REFERENCE.tif)")
        from .config import load_config
        from .evaluation import evaluate_model

        cfg = load_config(config, set_)
        metrics = evaluate_model(model, cfg, split=split, device=device)
        default_out = model.parent / f"{model.stem}.metrics-{split}.json"
    _echo(metrics.summary())
    for name, iou, acc in zip(metrics.class_names, metrics.iou, metrics.accuracy, strict=False):
        if name in metrics.absent:
            _echo(f"  {name:<12} absent from the data")
        else:
            _echo(f"  {name:<12} IoU {100 * iou:6.2f}  acc {100 * acc:6.2f}")
    out = output or default_out
    ensure_output_dir(out.parent)
    write_text_atomic(out, strict_json(metrics.to_dict()))
    _echo(f"metrics written to {out}")


@app.command()
@user_errors
@prediction_options(*SCENE_OPTIONS, "overwrite", "progress")
def predict(
    scene: Annotated[
        str,
        typer.Argument(
            help="Optical scene: a raster GDAL opens (path, VRT, https://, s3://, /vsicurl/...) "
            "or a STAC Item (.json file or URL); its grid is the output grid."
        ),
    ],
    model: Annotated[Path, typer.Option(help="Adapter file (.safetensors) from `gopt-geo train`.")],
    sar: Annotated[
        str | None,
        typer.Option(
            help="SAR raster or STAC Item (any CRS/resolution overlapping the scene); "
            "not needed when the scene's STAC item has the SAR bands."
        ),
    ] = None,
    assets: Annotated[
        str | None,
        typer.Option(
            help="STAC asset of each band, e.g. B=blue,NIR=B08 (default: the usual "
            "Sentinel-2 L2A and Sentinel-1 keys)."
        ),
    ] = None,
    out_dir: Annotated[
        str,
        typer.Option(
            "-o",
            "--out-dir",
            help="Output folder, or an object-storage URL (s3://bucket/prefix/, any fsspec "
            "URL): the set is made locally and uploaded, report JSON last.",
        ),
    ] = ".",
    *,
    options: PredictOptions,  # the flags of its fields (prediction_options)
) -> None:
    """Map a whole scene: class map COG, confidence, vector land cover and a run report."""
    from .adapter import read_adapter_metadata
    from .inference.predictor import predict_scene
    from .inference.sources import parse_asset_map, single_scene

    routing = read_adapter_metadata(model).routing  # STAC assets are matched to its bands
    chosen = single_scene(scene, sar, routing, parse_asset_map(assets))
    result = predict_scene(chosen.optical, chosen.sar, model, out_dir, options)
    s = result.stats
    _echo(
        f"mapped {s.pixels:,} px in {s.seconds:.1f} s ({s.mpix_per_s:.2f} MPix/s, {s.windows} "
        f"windows, {s.device}); {s.nodata_pixels:,} px nodata"
    )
    for label, path in (
        ("class map", result.class_map),
        ("confidence", result.confidence),
        ("probabilities", result.probabilities),
        ("uncertainty", result.uncertainty),
        ("vector land cover", result.vector),
        ("quicklook", result.quicklook),
        ("STAC item", result.item),
        ("report", result.report_markdown),
    ):
        if path is not None:
            _echo(f"  {label:<18} {path}")


@app.command()
@user_errors
def vectorize(
    class_map: Annotated[Path, typer.Argument(help="A class map GeoTIFF.")],
    output: Annotated[Path, typer.Option("-o", "--output", help=".gpkg, .parquet or .geojson")],
    min_area: Annotated[
        float,
        typer.Option(help="Merge regions smaller than this (m²) into their neighbours."),
    ] = 0.0,
    simplify: Annotated[
        float, typer.Option(help="Simplification tolerance in metres (0: none).")
    ] = 0.0,
    block_size: Annotated[int, typer.Option(help="Rows per block (memory bound).")] = 2048,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Polygonise a class map into vector land cover (dissolved per class, seams merged)."""
    from .outputs.vectorize import vectorize as run_vectorize

    result = run_vectorize(
        class_map,
        output,
        min_area=min_area,
        simplify=simplify,
        block_size=block_size,
        overwrite=overwrite,
    )
    _echo(
        f"{result.features:,} polygons ({result.sieved_pixels:,} px of regions below --min-area "
        f"merged into neighbours, {result.removed_small:,} isolated ones dropped) in "
        f"{result.seconds:.1f} s -> {result.path} ({result.driver})"
    )


@app.command("init-config")
@user_errors
def init_config(
    root: Annotated[Path, typer.Argument(help="Scene folder with optical/, sar/, labels/.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Config file to write.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing config file.")] = False,
) -> None:
    """Write a starter training config from a scene folder: bands, classes, split."""
    from .init_config import write_starter_config

    path = write_starter_config(root, output, overwrite=overwrite)
    _echo(path.read_text())
    _echo(f"written to {path}; check the commented guesses, then: gopt-geo train --config {path}")


@app.command()
@user_errors
def info(adapter: Annotated[Path, typer.Argument(help="Adapter file (.safetensors).")]) -> None:
    """What a model is: backbone and weights, bands, classes, parameters, metrics."""
    from .adapter import describe_adapter

    _echo(describe_adapter(adapter))


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("demo-output"),
    fast: Annotated[
        bool,
        typer.Option(help="Smaller scenes, fewer steps: about 1 min on 2 CPU cores, not 3.5."),
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    overwrite: Annotated[
        bool, typer.Option(help="Replace OUT even if it is not a previous demo's folder.")
    ] = False,
) -> None:
    """Run the whole chain on synthetic cloudy scenes: GoPT vs the optical baselines."""
    from .demo import run_demo

    result = run_demo(out, fast=fast, overwrite=overwrite, device=device, log=_echo)
    _echo("")
    _echo(result.report_markdown.read_text())


@app.command("predict-many")
@user_errors
@prediction_options(*SCENE_OPTIONS, progress=False)  # the run's bar is over scenes
def predict_many(
    model: Annotated[Path, typer.Option(help="Adapter file (.safetensors) from `gopt-geo train`.")],
    out_dir: Annotated[
        str,
        typer.Option(
            "-o",
            "--out-dir",
            help="Run folder: OUT/<scene id>/ per scene; or an object-storage URL "
            "(s3://bucket/prefix/, any fsspec URL): workers then need no shared file system.",
        ),
    ],
    scenes: Annotated[
        list[str] | None,
        typer.Argument(
            help="Manifests (.csv/.yaml with id, optical, sar), STAC Items or "
            "ItemCollections (.json, file or URL), or optical rasters (paths or URLs)."
        ),
    ] = None,
    optical_dir: Annotated[
        Path | None, typer.Option(help="Folder of optical rasters (scene id = file stem).")
    ] = None,
    sar_dir: Annotated[
        Path | None,
        typer.Option(help="Folder of SAR rasters, paired by file stem (missing: reported)."),
    ] = None,
    assets: Annotated[
        str | None, typer.Option(help="STAC asset of each band, e.g. B=blue,NIR=B08.")
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Dask scheduler address or scheduler file; default: a LocalCluster on this "
            "machine (one worker per GPU)."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Local workers (default: sized to the machine; 0: no cluster)."),
    ] = None,
    threads_per_worker: Annotated[
        int | None, typer.Option(help="Torch threads per worker (default: cores / workers).")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--overwrite",
            help="Skip scenes already mapped by this adapter with these options, or map all.",
        ),
    ] = True,
    retries: Annotated[
        int, typer.Option(help="Tries again for network or worker failures (not bad inputs).")
    ] = 2,
    connect_timeout: Annotated[
        float,
        typer.Option(help="Seconds to wait for --scheduler (or its scheduler file) to answer."),
    ] = 10.0,
    *,
    options: PredictOptions,  # the flags of its fields (prediction_options)
    progress: Annotated[bool, typer.Option(help="Show a progress bar over scenes.")] = True,
) -> None:
    """Map many scenes on a Dask cluster (local or existing): one task per scene, resumable;
    per scene what `predict` writes, per run a report, a GeoParquet index and VRT mosaics."""
    from .adapter import read_adapter_metadata
    from .errors import InputError
    from .inference.cluster import executor_for
    from .inference.many import predict_many as run_many
    from .inference.sources import collect_scenes, parse_asset_map

    if retries < 0:
        raise InputError(f"--retries must be 0 or more, got {retries}")
    routing = read_adapter_metadata(model).routing
    found = collect_scenes(
        scenes or [],
        routing,
        optical_dir=optical_dir,
        sar_dir=sar_dir,
        assets=parse_asset_map(assets),
    )
    with executor_for(scheduler, workers, threads_per_worker, options.device, connect_timeout) as (
        executor,
        threads,
        what,
    ):
        _echo(what)
        result = run_many(
            found,
            model,
            out_dir,
            executor=executor,
            options=options,
            resume=resume,
            retries=retries,
            threads=threads,
            progress=progress,
            executor_info=what,
        )
    counts = result.summary["counts"]
    _echo(
        f"{counts['total']} scene(s) in {result.seconds:.1f} s: {counts['done']} mapped, "
        f"{counts['skipped']} skipped, {counts['failed']} failed "
        f"({result.summary['scenes_per_hour']:,.0f} scenes/hour)"
    )
    for outcome in result.failed:
        _echo(f"  {outcome.status} {outcome.id}: {outcome.reason}")
    for label, path in result.files.items():
        _echo(f"  {label:<18} {path}")
    if result.failed:
        raise typer.Exit(1)


@app.command()
@user_errors
def change(
    before: Annotated[
        Path, typer.Argument(help="Class map of the earlier date (its grid is used).")
    ],
    after: Annotated[
        Path, typer.Argument(help="Class map of the later date (any grid; warped onto BEFORE's).")
    ],
    out_dir: Annotated[Path, typer.Option("-o", "--out-dir", help="Output folder.")] = Path("."),
    name: Annotated[
        str | None, typer.Option(help="Output name prefix (default: BEFORE_to_AFTER).")
    ] = None,
    min_confidence: Annotated[
        float | None,
        typer.Option(
            help="Mask pixels where either map's confidence (0..1) is lower; reads "
            "X_confidence.tif beside X_classes.tif unless given."
        ),
    ] = None,
    before_confidence: Annotated[
        Path | None, typer.Option(help="Confidence map of BEFORE (for --min-confidence).")
    ] = None,
    after_confidence: Annotated[
        Path | None, typer.Option(help="Confidence map of AFTER (for --min-confidence).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    classes: Annotated[
        str | None,
        typer.Option(
            help="Class scheme of both maps, for maps from other tools: a built-in scheme "
            "name or a class file (.yaml/.json with classes:)."
        ),
    ] = None,
) -> None:
    """Compare two class maps of the same place: transition map and matrix (m², ha)."""
    from .change import change_maps
    from .data.classes import scheme_option

    result = change_maps(
        before,
        after,
        out_dir,
        name=name,
        min_confidence=min_confidence,
        before_confidence=before_confidence,
        after_confidence=after_confidence,
        overwrite=overwrite,
        classes=scheme_option(classes) if classes is not None else None,
    )
    _echo(result.summary())
    for label, path in (
        ("transition map", result.transitions),
        ("matrix (CSV)", result.matrix_csv),
        ("matrix (Markdown)", result.matrix_markdown),
    ):
        _echo(f"  {label:<18} {path}")
