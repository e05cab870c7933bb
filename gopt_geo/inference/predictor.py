"""Whole-scene mapping: sliding windows, blended logits, streaming reads and writes.

Windows of ``window`` pixels with ``overlap`` are laid over the optical grid (edge
windows shifted inside, scenes smaller than a window padded and cropped back), read
window by window (:class:`~gopt_geo.inference.io.SceneReader`), run through the model in
batches and blended with a smooth weight that is largest at the window centre, where the
model sees the most context. Only a strip of rows as tall as one window is held in
memory: rows are finished and written as soon as no later window touches them, so memory
grows with the scene's width, never with its height (DESIGN.md §6).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.windows import Window
from torch import nn
from tqdm.auto import tqdm

from ..data.bands import BandRouting
from ..data.classes import ClassScheme
from ..data.rasters import streaming_gdal_env
from ..errors import InputError
from .io import Grid, SceneReader, pixel_areas_m2
from .report import write_report
from .vectorize import VECTOR_SUFFIXES, vectorize
from .writers import (
    StripRasterWriter,
    check_writable,
    class_colormap,
    class_map_metadata,
    class_map_nodata,
    write_rat_sidecar,
)

log = logging.getLogger(__name__)

#: Smallest value of the 1-D blending weight: never exactly zero, so that pixels on the
#: scene border, seen by one window only and at its edge, still get a prediction.
MIN_BLEND_WEIGHT = 1e-3


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def axis_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets along one axis; the last window is shifted inside the raster."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window, stride))
    starts.append(size - window)
    return starts


@dataclass(frozen=True)
class WindowPlan:
    """The windows over a ``height`` x ``width`` grid, in row-major order."""

    height: int
    width: int
    window: int
    stride: int

    @classmethod
    def for_grid(cls, height: int, width: int, window: int, overlap: float) -> WindowPlan:
        if window < 16:
            raise InputError(f"window must be at least 16 pixels, got {window}")
        if not 0.0 <= overlap < 1.0:
            raise InputError(f"overlap must be in [0, 1), got {overlap}")
        stride = max(1, int(round(window * (1.0 - overlap))))
        return cls(height, width, window, stride)

    @property
    def tile_height(self) -> int:
        return min(self.window, self.height)

    @property
    def tile_width(self) -> int:
        return min(self.window, self.width)

    @property
    def row_starts(self) -> list[int]:
        return axis_starts(self.height, self.window, self.stride)

    @property
    def col_starts(self) -> list[int]:
        return axis_starts(self.width, self.window, self.stride)

    def windows(self) -> list[Window]:
        h, w = self.tile_height, self.tile_width
        return [Window(c, r, w, h) for r in self.row_starts for c in self.col_starts]

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)


def blend_weight(height: int, width: int) -> torch.Tensor:
    """Separable Hann (sin²) weight: 1 at the centre, small but never zero at the edges.

    With 50% overlap the weights of neighbouring windows sum to one (sin² + cos² = 1);
    in any case the blend divides by the summed weights.
    """

    def hann(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float64)
        return torch.sin(math.pi * (i + 0.5) / n).pow(2).clamp_min(MIN_BLEND_WEIGHT)

    return (hann(height)[:, None] * hann(width)[None, :]).float()


class _Strip:
    """Accumulators for the rows ``top .. top + rows`` of the scene, on the model's device."""

    def __init__(self, num_classes: int, rows: int, width: int, device: torch.device) -> None:
        self.rows = rows
        self.top = 0
        self.logits = torch.zeros(num_classes, rows, width, device=device)
        self.weight = torch.zeros(rows, width, device=device)
        self.valid = torch.ones(rows, width, dtype=torch.bool, device=device)

    def add(
        self, window: Window, logits: torch.Tensor, weight: torch.Tensor, valid: torch.Tensor
    ) -> None:
        r = int(window.row_off) - self.top
        c = int(window.col_off)
        h, w = weight.shape
        if r < 0 or r + h > self.rows:
            raise RuntimeError(f"window {window} outside the accumulator strip at row {self.top}")
        self.logits[:, r : r + h, c : c + w] += logits * weight
        self.weight[r : r + h, c : c + w] += weight
        # A pixel is valid only if every window that read it found it valid (warped
        # footprints can differ by a fraction of a pixel between windows).
        self.valid[r : r + h, c : c + w] &= valid

    def finished(
        self, until: int, chunk: int = 64
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(first row, blended logits [K, n, W], validity [n, W]) of rows ``top .. until``,
        ``chunk`` rows at a time: the temporaries of blending, softmax and argmax stay a
        few rows high however wide the scene (they used to be the whole strip, several
        times over, and made memory grow with the scene's width)."""
        n = until - self.top
        for r in range(0, n, chunk):
            e = min(n, r + chunk)
            yield self.top + r, self.logits[:, r:e] / self.weight[r:e], self.valid[r:e]

    def discard(self, until: int) -> None:
        """Drop rows ``top .. until`` and move the rest up, without a full-strip copy."""
        n = until - self.top
        keep = self.rows - n
        for buf, fill in ((self.logits, 0.0), (self.weight, 0.0), (self.valid, True)):
            # forward copy in blocks of n rows: a block's source lies entirely below its
            # destination, so nothing is overwritten before it is read
            for r in range(0, keep, n):
                e = min(keep, r + n)
                buf[..., r:e, :] = buf[..., r + n : e + n, :]
            buf[..., keep:, :] = fill
        self.top = until


@dataclass
class PredictionStats:
    """What a run did and found (also in the run report)."""

    windows: int
    seconds: float
    mpix_per_s: float
    device: str
    pixels: int
    nodata_pixels: int
    class_pixels: dict[int, int]
    class_area_m2: dict[int, float] | None  # None when the scene has no CRS
    vector_features: int | None = None


@dataclass
class PredictionResult:
    """Paths of everything a run wrote, and its statistics."""

    class_map: Path
    report_json: Path
    report_markdown: Path
    stats: PredictionStats
    confidence: Path | None = None
    probabilities: Path | None = None
    vector: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def output_paths(
    scene: Path, out_dir: Path, *, confidence: bool, probabilities: bool, vector: str | None
) -> dict[str, Path]:
    """File names of a run's outputs, derived from the scene's name."""
    stem = scene.stem
    paths = {
        "class_map": out_dir / f"{stem}_classes.tif",
        "report_json": out_dir / f"{stem}_report.json",
        "report_markdown": out_dir / f"{stem}_report.md",
    }
    if confidence:
        paths["confidence"] = out_dir / f"{stem}_confidence.tif"
    if probabilities:
        paths["probabilities"] = out_dir / f"{stem}_probabilities.tif"
    if vector is not None:
        if vector not in VECTOR_SUFFIXES:
            raise InputError(
                f"unknown vector format {vector!r} (use {', '.join(VECTOR_SUFFIXES)} or none)"
            )
        paths["vector"] = out_dir / f"{stem}_landcover{VECTOR_SUFFIXES[vector]}"
    return paths


class Predictor:
    """Maps whole scenes with a segmentation model and the routing/classes it was trained with.

    ``model(rgb, aux)`` must return logits ``[B, K, H, W]`` (or an object with ``.logits``)
    for any H, W; ``routing`` turns raster bands into those inputs, ``classes`` turns
    class indices into the dataset's codes, names and colours.
    """

    def __init__(
        self,
        model: nn.Module,
        routing: BandRouting,
        classes: ClassScheme,
        *,
        device: str | torch.device = "auto",
        model_info: dict[str, Any] | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.routing = routing
        self.classes = classes
        self.model_info = dict(model_info or {})
        self.nodata = class_map_nodata(classes)
        self._lut = torch.from_numpy(classes.index_to_code_lut()).to(self.device)

    @classmethod
    def from_adapter(
        cls, path: str | Path, device: str | torch.device = "auto", weights: str | None = None
    ) -> Predictor:
        """Load an adapter file (frozen backbone + trained prompters/head) for prediction.

        ``weights`` points at a local copy of the backbone weights the adapter was trained
        on (another machine); the adapter refuses any other backbone.
        """
        from ..checkpoint import load_adapter

        dev = resolve_device(device)
        model, meta = load_adapter(path, map_location=dev, weights=weights)
        info: dict[str, Any] = {
            "adapter": str(path),
            "backbone": dict(meta.backbone),
            "config": meta.model.to_dict(),
            "parameters": dict(meta.parameters),
        }
        return cls(model, meta.routing, meta.classes, device=dev, model_info=info)

    # ------------------------------------------------------------------ prediction

    def predict(
        self,
        scene: str | Path,
        sar: str | Path | None,
        out_dir: str | Path,
        *,
        window: int = 512,
        overlap: float = 0.25,
        batch_size: int = 4,
        probabilities: bool = False,
        confidence: bool = True,
        vector: str | None = "gpkg",
        min_area: float = 0.0,
        simplify: float = 0.0,
        overwrite: bool = False,
        progress: bool = True,
    ) -> PredictionResult:
        """Map ``scene`` (with ``sar``) into ``out_dir``; see the module docstring."""
        with streaming_gdal_env():  # memory flat in scene size: GDAL's cache too
            return self._predict(
                Path(scene),
                sar,
                Path(out_dir),
                window=window,
                overlap=overlap,
                batch_size=batch_size,
                probabilities=probabilities,
                confidence=confidence,
                vector=vector,
                min_area=min_area,
                simplify=simplify,
                overwrite=overwrite,
                progress=progress,
            )

    def _predict(
        self,
        scene: Path,
        sar: str | Path | None,
        out_dir: Path,
        *,
        window: int,
        overlap: float,
        batch_size: int,
        probabilities: bool,
        confidence: bool,
        vector: str | None,
        min_area: float,
        simplify: float,
        overwrite: bool,
        progress: bool,
    ) -> PredictionResult:
        if vector is not None and vector.lower() == "none":
            vector = None
        if batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}")
        paths = output_paths(
            scene, out_dir, confidence=confidence, probabilities=probabilities, vector=vector
        )
        check_writable(paths.values(), overwrite)
        start = time.perf_counter()
        with SceneReader(scene, sar, self.routing) as reader:
            grid = reader.grid
            plan = WindowPlan.for_grid(grid.height, grid.width, window, overlap)
            inputs = reader.describe()
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise InputError(
                    f"{out_dir}: cannot create the output folder ({err.strerror})"
                ) from None
            writers = self._open_writers(paths, grid)
            try:
                counts, areas = self._run(reader, plan, batch_size, writers, progress)
                for name, writer in writers.items():
                    self._finish_writer(name, writer)
            except BaseException:
                for writer in writers.values():
                    writer.abort()
                raise
        write_rat_sidecar(paths["class_map"], self.classes)
        seconds_map = time.perf_counter() - start
        vector_result = None
        if vector is not None:
            vector_result = vectorize(
                paths["class_map"],
                paths["vector"],
                min_area=min_area,
                simplify=simplify,
                overwrite=overwrite,
            )
        seconds = time.perf_counter() - start
        valid_pixels = int(sum(counts.values()))
        stats = PredictionStats(
            windows=len(plan),
            seconds=seconds,
            mpix_per_s=grid.pixels / 1e6 / max(seconds_map, 1e-9),
            device=str(self.device),
            pixels=grid.pixels,
            nodata_pixels=grid.pixels - valid_pixels,
            class_pixels=counts,
            class_area_m2=areas,
            vector_features=vector_result.features if vector_result else None,
        )
        report = self._report(inputs, plan, batch_size, stats, paths, seconds_map, vector_result)
        write_report(report, paths["report_json"], paths["report_markdown"])
        return PredictionResult(
            class_map=paths["class_map"],
            report_json=paths["report_json"],
            report_markdown=paths["report_markdown"],
            stats=stats,
            confidence=paths.get("confidence"),
            probabilities=paths.get("probabilities"),
            vector=paths.get("vector"),
        )

    def _open_writers(self, paths: dict[str, Path], grid: Grid) -> dict[str, StripRasterWriter]:
        writers: dict[str, StripRasterWriter] = {}
        try:
            writers["class_map"] = StripRasterWriter(
                paths["class_map"],
                grid,
                count=1,
                dtype="uint8",
                nodata=self.nodata,
                overview_resampling="MODE",
                colormap=class_colormap(self.classes, self.nodata),
            )
            if "confidence" in paths:
                writers["confidence"] = StripRasterWriter(
                    paths["confidence"],
                    grid,
                    count=1,
                    dtype="uint8",
                    nodata=0,
                    overview_resampling="AVERAGE",
                )
            if "probabilities" in paths:
                writers["probabilities"] = StripRasterWriter(
                    paths["probabilities"],
                    grid,
                    count=self.classes.num_classes,
                    dtype="uint8",
                    nodata=255,
                    overview_resampling="AVERAGE",
                )
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        return writers

    def _finish_writer(self, name: str, writer: StripRasterWriter) -> None:
        k = self.classes.num_classes
        if name == "class_map":
            writer.finish(**class_map_metadata(self.classes, self.nodata))  # type: ignore[arg-type]
        elif name == "confidence":
            writer.finish(
                descriptions=["confidence (max class probability x 255)"],
                scales=[1 / 255],
                tags={"NODATA_MEANING": "0: no prediction (input nodata)"},
            )
        else:
            writer.finish(
                descriptions=[f"p({c.name}) x 254" for c in self.classes.classes],
                scales=[1 / 254] * k,
                band_tags={
                    i + 1: {"CLASS_CODE": str(c.code)} for i, c in enumerate(self.classes.classes)
                },
            )

    def _run(
        self,
        reader: SceneReader,
        plan: WindowPlan,
        batch_size: int,
        writers: dict[str, StripRasterWriter],
        progress: bool,
    ) -> tuple[dict[int, int], dict[int, float] | None]:
        """Windows -> batches -> model -> blended strip -> rows written; class statistics."""
        grid = reader.grid
        windows = plan.windows()
        batches = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
        weight = blend_weight(plan.tile_height, plan.tile_width).to(self.device)
        strip = _Strip(self.classes.num_classes, plan.tile_height, grid.width, self.device)
        counts = np.zeros(256, dtype=np.int64)
        areas = np.zeros(256, dtype=np.float64) if grid.crs is not None else None

        def emit(until: int) -> None:
            if until <= strip.top:
                return
            for row0, logits, valid in strip.finished(until):
                self._write_rows(logits, valid, row0, grid, writers, counts, areas)
            strip.discard(until)

        bar = tqdm(total=len(windows), unit="window", desc="predict", disable=not progress)
        # One reader thread: the next batch is read (and SAR warped) while the model runs.
        with bar, ThreadPoolExecutor(max_workers=1, thread_name_prefix="gopt-read") as pool:
            pending: Future | None = pool.submit(_read_batch, reader, batches[0])
            for i, batch in enumerate(batches):
                assert pending is not None
                images, valids = pending.result()
                if i + 1 < len(batches):
                    pending = pool.submit(_read_batch, reader, batches[i + 1])
                valids = valids.to(self.device)
                logits = self._infer(images, valids, plan.window)
                for j, win in enumerate(batch):
                    emit(int(win.row_off))
                    strip.add(win, logits[j], weight, valids[j])
                bar.update(len(batch))
        emit(grid.height)
        class_pixels = {c: int(counts[c]) for c in self.classes.codes if counts[c]}
        class_areas = None
        if areas is not None:
            class_areas = {c: float(areas[c]) for c in self.classes.codes if counts[c]}
        return class_pixels, class_areas

    @torch.inference_mode()
    def _infer(self, images: torch.Tensor, valids: torch.Tensor, window: int) -> torch.Tensor:
        """Logits [B, K, h, w] for a batch of windows; invalid pixels fed as band means."""
        x = images.to(self.device, non_blocking=True)
        valid = valids.to(self.device, non_blocking=True)
        rgb, aux = self.routing.prepare(x)
        rgb = torch.where(valid[:, None], rgb, 0.0)  # also clears NaN, which would spread
        aux = torch.where(valid[:, None], aux, 0.0)
        h, w = x.shape[-2:]
        pad_h, pad_w = window - h if h < window else 0, window - w if w < window else 0
        if pad_h or pad_w:  # a scene smaller than the window: pad, predict, crop back
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            rgb = F.pad(rgb, (0, pad_w, 0, pad_h), mode=mode)
            aux = F.pad(aux, (0, pad_w, 0, pad_h), mode=mode)
        out = self.model(rgb, aux)
        logits = out.logits if hasattr(out, "logits") else out
        if logits.shape[1] != self.classes.num_classes:
            raise RuntimeError(
                f"model returns {logits.shape[1]} classes, the class scheme has "
                f"{self.classes.num_classes}"
            )
        return logits[..., :h, :w].float()

    @torch.inference_mode()
    def _write_rows(
        self,
        logits: torch.Tensor,
        valid: torch.Tensor,
        row0: int,
        grid: Grid,
        writers: dict[str, StripRasterWriter],
        counts: np.ndarray,
        areas: np.ndarray | None,
    ) -> None:
        """Finished rows: argmax -> codes (nodata where invalid), confidence, probabilities."""
        # max(0).indices: the same as argmax(0), ~8x faster on CPU over [K, rows, W]
        codes = self._lut[logits.max(0).indices]
        codes = torch.where(valid, codes, self.nodata)
        codes_np = codes.cpu().numpy()
        writers["class_map"].write(codes_np[None])
        if "confidence" in writers or "probabilities" in writers:
            probs = torch.softmax(logits, dim=0)
            if "confidence" in writers:
                conf = (probs.amax(0) * 255).round().clamp(1, 255).to(torch.uint8)
                conf = torch.where(valid, conf, 0)
                writers["confidence"].write(conf.cpu().numpy()[None])
            if "probabilities" in writers:
                p8 = (probs * 254).round().to(torch.uint8)
                p8 = torch.where(valid[None], p8, 255)
                writers["probabilities"].write(p8.cpu().numpy())
        valid_np = valid.cpu().numpy()
        counts += np.bincount(codes_np[valid_np], minlength=256)
        if areas is not None:
            row_area = pixel_areas_m2(grid.crs, grid.transform, row0, codes_np.shape[0])
            assert row_area is not None
            per_pixel = np.broadcast_to(row_area[:, None], codes_np.shape)
            areas += np.bincount(codes_np[valid_np], weights=per_pixel[valid_np], minlength=256)

    def _report(
        self,
        inputs: dict[str, Any],
        plan: WindowPlan,
        batch_size: int,
        stats: PredictionStats,
        paths: dict[str, Path],
        seconds_map: float,
        vector_result: Any,
    ) -> dict[str, Any]:
        names = {c.code: c.name for c in self.classes.classes}
        classes = []
        valid = max(stats.pixels - stats.nodata_pixels, 1)
        for code in self.classes.codes:
            n = stats.class_pixels.get(code, 0)
            entry: dict[str, Any] = {
                "code": code,
                "name": names[code],
                "pixels": n,
                "percent": 100 * n / valid,
            }
            if stats.class_area_m2 is not None:
                entry["area_ha"] = stats.class_area_m2.get(code, 0.0) / 1e4
            classes.append(entry)
        return {
            "inputs": inputs,
            "model": {
                **self.model_info,
                "optical_bands": list(self.routing.optical_bands),
                "sar_bands": list(self.routing.sar_bands),
                "rgb_bands": list(self.routing.rgb),
                "aux_bands": list(self.routing.aux_bands),
                "classes": self.classes.to_dict(),
            },
            "prediction": {
                "device": stats.device,
                "window": plan.window,
                "overlap": 1 - plan.stride / plan.window,
                "stride": plan.stride,
                "batch_size": batch_size,
                "windows": stats.windows,
                "blend": "separable Hann (sin^2) weight on logits",
            },
            "timing": {
                "seconds_total": stats.seconds,
                "seconds_map": seconds_map,
                "seconds_vector": vector_result.seconds if vector_result else None,
                "megapixels": stats.pixels / 1e6,
                "mpix_per_s": stats.mpix_per_s,
            },
            "classes": classes,
            "nodata_pixels": stats.nodata_pixels,
            "class_map_nodata": self.nodata,
            "vector": vector_result.to_dict() if vector_result else None,
            "outputs": {k: str(v) for k, v in paths.items()},
        }


def _read_batch(
    reader: SceneReader, windows: Sequence[Window]
) -> tuple[torch.Tensor, torch.Tensor]:
    images, valids = zip(*(reader.read(w) for w in windows), strict=True)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(valids))


def predict_scene(
    scene: str | Path,
    sar: str | Path | None,
    model: str | Path,
    out_dir: str | Path,
    *,
    device: str = "auto",
    weights: str | None = None,
    **options: Any,
) -> PredictionResult:
    """``gopt-geo predict``: load the adapter ``model`` and map ``scene``; options as in
    :meth:`Predictor.predict`."""
    predictor = Predictor.from_adapter(model, device=device, weights=weights)
    return predictor.predict(scene, sar, out_dir, **options)
