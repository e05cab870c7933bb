"""Profiles behind the "causes and fixes" of RESULTS.md's summary; prints, writes nothing.

Each subcommand isolates one cause, so that a fix in the library can be checked
directly (run it before and after):

    ./run python benchmarks/diagnostics.py predict-breakdown [--size 8192]
        where the main thread of one Predictor.predict spends its time (model, waiting
        for the reader thread, strip accumulation, finishing rows, COG conversion)
    ./run python benchmarks/diagnostics.py write-rows [--width 8192]
        the operations of OutputSet.write_rows on one strip, and argmax alternatives
    ./run python benchmarks/diagnostics.py strip-memory [--width 16384]
        RSS added by the accumulator strip (RowStrip), finishing its rows and
        OutputSet.write_rows at one width
    ./run python benchmarks/diagnostics.py read-breakdown [--size 8192]
        SceneReader.read split into optical / SAR reads and masks
    ./run python benchmarks/diagnostics.py train-checkpoint [--backbone vit_s]
        GoPT training step time and memory with and without activation checkpointing
        of the frozen backbone blocks (monkeypatched here, not a library feature)

Memory subcommands should run in a fresh process each (they are: one command = one
process).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _timed_wrap(obj: Any, name: str, key: str, spent: dict[str, float]) -> None:
    """Replace ``obj.name`` by a wrapper that adds its wall time to ``spent[key]``."""
    original = getattr(obj, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - start

    setattr(obj, name, wrapper)


def predict_breakdown(args: argparse.Namespace) -> None:
    import concurrent.futures

    import torch

    from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
    from gopt_geo.inference import PredictOptions
    from gopt_geo.inference import predictor as P
    from gopt_geo.inference import tiling as T
    from gopt_geo.outputs import output_set as O
    from gopt_geo.outputs import writers as W

    spent: dict[str, float] = {}
    model_key = "model (Predictor.on_forward)"
    _timed_wrap(T.RowStrip, "add", "RowStrip.add", spent)
    for name in ("finished", "discard"):
        _timed_wrap(T.RowStrip, name, f"RowStrip.{name}", spent)
    _timed_wrap(O.OutputSet, "write_rows", "OutputSet.write_rows", spent)
    _timed_wrap(W.StripRasterWriter, "finish", "StripRasterWriter.finish (COG)", spent)
    _timed_wrap(concurrent.futures.Future, "result", "waiting for the reader thread", spent)
    files = C.scene(args.work, args.size)
    routing = C.routing()
    model = C.model("gopt", args.backbone).eval()
    predictor = P.Predictor(model, routing, WHU_OPT_SAR_CLASSES, device="cpu")

    def model_time(windows: int, seconds: float) -> None:
        spent[model_key] = spent.get(model_key, 0.0) + seconds

    predictor.on_forward = model_time
    with torch.inference_mode():  # warm-up
        model(*routing.prepare(torch.randn(4, len(routing.all_bands), 512, 512)))
    spent.clear()
    start = time.perf_counter()
    predictor.predict(
        files.optical,
        files.sar,
        args.work / "out" / "diagnostics",
        PredictOptions(vector=None, overwrite=True, progress=False),
    )
    total = time.perf_counter() - start
    print(f"predict {args.size}^2 with GoPT / {C.BACKBONE_LABEL[args.backbone]}: {total:.2f} s")
    for key, value in spent.items():
        print(f"  {key:40s} {value:7.2f} s")
    print(f"  {'other (main thread)':40s} {total - sum(spent.values()):7.2f} s")


def _median_ms(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return 1000 * C.median(times), out


def write_rows(args: argparse.Namespace) -> None:
    import torch

    torch.manual_seed(0)
    k, n, w = 7, args.rows, args.width
    logits = torch.randn(k, n, w)
    with torch.inference_mode():
        cases = {
            "logits.argmax(0)  (_write_rows before d57c904)": lambda: logits.argmax(0),
            "logits.max(0).indices": lambda: logits.max(0).indices,
            "softmax(0) (confidence)": lambda: torch.softmax(logits, dim=0),
            "amax(0)": lambda: logits.amax(0),
        }
        results = {}
        for name, fn in cases.items():
            ms, results[name] = _median_ms(fn)
            print(f"  [{k}, {n}, {w}] {name:45s} {ms:7.0f} ms")
        ms, _ = _median_ms(lambda: _call_write_rows(logits))
        print(
            f"  [{k}, {n}, {w}] {'OutputSet.write_rows (class map + confidence)':45s} {ms:7.0f} ms"
        )
        same = torch.equal(
            results["logits.argmax(0)  (_write_rows before d57c904)"],
            results["logits.max(0).indices"],
        )
        print(f"  argmax(0) == max(0).indices: {same}")


class _NullWriter:
    def write(self, rows: Any) -> None:
        pass


@functools.cache
def _null_outputs(width: int) -> Any:
    """An OutputSet (class map + confidence, UTM grid ``width`` wide) whose rasters are
    never written: only its row-finishing code is used."""
    import tempfile

    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
    from gopt_geo.inference import Grid, OutputSet, PredictOptions

    grid = Grid(CRS.from_epsg(32649), from_origin(0, 0, 10, 10), width, width)
    options = PredictOptions(vector=None, overwrite=True)
    with tempfile.TemporaryDirectory() as folder:
        outputs = OutputSet(Path(folder) / "null.tif", Path(folder), WHU_OPT_SAR_CLASSES, options)
        outputs.open(grid).abort()  # no files: the writers are replaced below
    outputs.writers = {name: _NullWriter() for name in outputs.writers}  # type: ignore[assignment]
    return outputs


def _call_write_rows(logits: Any) -> None:
    """One real ``OutputSet.write_rows`` call on ``logits`` [K, n, W] (UTM grid)."""
    import torch

    _, n, w = logits.shape
    valid = torch.ones(n, w, dtype=torch.bool)
    _null_outputs(w).write_rows(0, logits, valid)


def strip_memory(args: argparse.Namespace) -> None:
    import torch
    from rasterio.windows import Window

    from gopt_geo.inference import tiling as T

    width = args.width
    outputs = _null_outputs(width)
    base = C.current_rss_mib()
    peak0 = max(C.peak_rss_mib(), base)
    strip = T.RowStrip(7, 512, width, torch.device("cpu"))
    weight = T.blend_weight(512, 512)
    with torch.inference_mode():
        for col in range(0, width - 511, 384):
            strip.add(
                Window(col, 0, 512, 512),
                torch.randn(7, 512, 512),
                weight,
                torch.ones(512, 512, dtype=torch.bool),
            )
        print(f"width {width}: strip filled            +{C.current_rss_mib() - base:6.0f} MiB")
        for row0, logits, valid in strip.finished(384):  # rows finished in chunks (c10f39c)
            outputs.write_rows(row0, logits, valid)
        strip.discard(384)
        print(f"  384 rows finished + shift  peak +{C.peak_rss_mib() - peak0:6.0f} MiB")


def read_breakdown(args: argparse.Namespace) -> None:
    from gopt_geo.inference.reader import SceneReader
    from gopt_geo.inference.tiling import WindowPlan

    files = C.scene(args.work, args.size)
    plan = WindowPlan.for_grid(args.size, args.size, 512, 0.25)
    windows = plan.windows()
    spent: dict[str, float] = {}
    with SceneReader(files.optical, files.sar, C.routing()) as reader:
        for name in ("_read", "_masks"):
            original = getattr(reader, name)

            def wrapper(src: Any, *a: Any, _f: Any = original, _n: str = name, **kw: Any) -> Any:
                start = time.perf_counter()
                out = _f(src, *a, **kw)
                key = f"{_n} {'SAR' if src is reader._sar else 'optical'}"
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - start
                return out

            setattr(reader, name, wrapper)
        start = time.perf_counter()
        for window in windows:
            reader.read(window)
        total = time.perf_counter() - start
    print(f"{len(windows)} windows of {args.size}^2 read in {total:.2f} s")
    for key, value in spent.items():
        print(f"  {key:20s} {value:6.2f} s  ({1000 * value / len(windows):.1f} ms / window)")


def train_checkpoint(args: argparse.Namespace) -> None:
    import subprocess

    for mode in ("plain", "checkpoint"):
        proc = subprocess.run(
            [sys.executable, __file__, "_train-step", "--backbone", args.backbone, "--mode", mode],
            capture_output=True,
            text=True,
        )
        print(proc.stdout.strip() or proc.stderr[-2000:])


def _train_step(args: argparse.Namespace) -> None:
    import torch
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    from gopt_geo.data.classes import IGNORE_INDEX

    routing = C.routing()
    model = C.model("gopt", args.backbone)
    model.train()
    if args.mode == "checkpoint":
        backbone = model.backbone
        blocks = (
            list(backbone.model.blocks)
            if backbone.kind == "vit"
            else [m for _, m in backbone._sequence]
        )
        for block in blocks:
            block.forward = functools.partial(  # type: ignore[method-assign]
                lambda f, *a, **kw: checkpoint(f, *a, use_reentrant=False, **kw), block.forward
            )
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    image = torch.randn(8, len(routing.all_bands), 256, 256)
    mask = torch.randint(0, 7, (8, 256, 256))
    before = C.current_rss_mib()
    times = []
    for i in range(6):
        start = time.perf_counter()
        out = model(*routing.prepare(image), target=mask)
        loss = criterion(out.logits, mask) + sum(0.1 * v for v in out.losses.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
    print(
        f"GoPT / {C.BACKBONE_LABEL[args.backbone]} {args.mode:10s}: "
        f"{C.median(times):.2f} s/step, training memory {C.peak_rss_mib() - before:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "what",
        choices=[
            "predict-breakdown",
            "write-rows",
            "strip-memory",
            "read-breakdown",
            "train-checkpoint",
            "_train-step",
        ],
    )
    parser.add_argument("--work", type=Path, default=C.DEFAULT_WORK)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--width", type=int, default=8192)
    parser.add_argument("--rows", type=int, default=64, help="rows finished at a time")
    parser.add_argument("--backbone", default="lite0")
    parser.add_argument("--mode", default="plain")
    args = parser.parse_args()
    C.quiet()
    {
        "predict-breakdown": predict_breakdown,
        "write-rows": write_rows,
        "strip-memory": strip_memory,
        "read-breakdown": read_breakdown,
        "train-checkpoint": train_checkpoint,
        "_train-step": _train_step,
    }[args.what](args)


if __name__ == "__main__":
    main()
