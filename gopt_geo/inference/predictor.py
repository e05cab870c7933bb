"""Whole-scene mapping: reader -> tiling -> outputs -> polygons -> report.

A :class:`Predictor` holds a model with the band routing and class scheme it was trained
with and maps scenes with it. Each part lives in its own module, so that each can be
tested and changed alone: :class:`~gopt_geo.inference.reader.SceneReader` reads windows
(SAR warped on the fly, one batch read ahead on a thread),
:func:`~gopt_geo.inference.tiling.stream_rows` blends the model's windows into finished
rows while holding one strip of rows (memory flat in the scene's height, design §6;
each window is read with a margin of context that the tiling cuts off again),
:class:`~gopt_geo.outputs.output_set.OutputSet` writes those rows as COGs,
:func:`~gopt_geo.outputs.vectorize.write_polygons` polygonises the class map,
:mod:`~gopt_geo.outputs.quicklook` draws it beside the optical image,
:func:`~gopt_geo.inference.describe.describe_prediction` writes the statistics, the
report and the STAC item of the finished run;
every file stays under a temporary name until the output set commits them all at once
(:mod:`~gopt_geo.outputs.staging`). What to do comes in one
:class:`~gopt_geo.inference.options.PredictOptions`.

A model that does not read SAR - it ignores the auxiliary input (variant
``optical_only``, ``static_prompt``), or none of its auxiliary bands is a SAR band -
predicts without SAR even when its adapter lists SAR bands (its training config had
them): those bands are fed as their training means, as nodata always is. Any other model
needs the SAR raster.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapter import read_adapter_metadata
from ..constants import Keep
from ..data.bands import BandRouting
from ..data.classes import ClassScheme
from ..errors import InputError
from ..io import (
    disk_errors,
    display_name,
    is_remote,
    open_raster,
    raster_stem,
    resolve_device,
    streaming_gdal_env,
)
from ..locks import folder_lock
from ..models.variants import AUX_FREE_VARIANTS as AUX_FREE
from ..outputs.memory import ArrayOutputs
from ..outputs.naming import output_family
from ..outputs.output_set import OutputSet
from ..outputs.quicklook import optical_panel, panel_shape, write_quicklook
from ..outputs.remote import (
    check_url_folder,
    is_url_folder,
    local_folder,
    refuse_existing,
    staged_locally,
)
from ..outputs.remote import join as remote_join
from ..outputs.staging import pause_point, terminate_as_exit
from ..outputs.vectorize import SHORT_HASH, VectorResult, driver_for, write_polygons
from .context import scene_context
from .describe import describe_prediction
from .options import PredictOptions
from .reader import SceneReader
from .report import PredictionStats
from .sanity import check_inputs
from .tiling import ModelForward, WindowPlan, stream_rows

#: Model variants whose model ignores the auxiliary input (``models/variants.py``, the one
#: table of them): they predict without SAR; the SAR bands are fed as their training means
#: (0 after normalising).
AUX_FREE_VARIANTS = AUX_FREE


@dataclass
class PredictionResult:
    """Paths of everything a run wrote, and its statistics. With an output URL
    (``s3://...``) each path is the URL string of the uploaded file."""

    class_map: Path
    report_json: Path
    report_markdown: Path
    stats: PredictionStats
    confidence: Path | None = None
    probabilities: Path | None = None
    vector: Path | None = None
    uncertainty: Path | None = None
    item: Path | None = None  # the STAC item (write_collection links these)
    quicklook: Path | None = None


class Predictor:
    """Maps whole scenes with a segmentation model and the routing/classes it was trained with.

    ``model(rgb, aux)`` must return logits ``[B, K, H, W]`` (or an object with ``.logits``)
    for any H, W; ``routing`` turns raster bands into those inputs, ``classes`` turns
    class indices into the dataset's codes, names and colours.

    ``on_forward``, when set, is called after each batch of windows has been through the
    model, with the number of windows and the seconds the call took (benchmarks time the
    model this way; on a GPU the call returns before the device has finished, so time
    there with the device synchronised). It changes nothing in the outputs.
    """

    #: ``on_forward(windows, seconds)`` after each model call (see the class docstring).
    on_forward: Callable[[int, float], object] | None = None

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
            # which adapter made a map, whatever its file is called (predict-many's resume)
            "adapter_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            "backbone": dict(meta.backbone),
            "config": meta.model.to_dict(),
            "parameters": dict(meta.parameters),
        }
        return cls(model, meta.routing, meta.classes, device=dev, model_info=info)

    # ------------------------------------------------------------------ prediction

    def predict_array(
        self, optical: Any, sar: Any = None, options: PredictOptions | None = None
    ) -> Any:
        """Map in-memory arrays; returns the ``xarray.Dataset`` of
        :func:`gopt_geo.maps.map_dataset` (as :func:`gopt_geo.maps.open_map` reads a map
        from files) and writes no file.

        ``optical`` and ``sar``: ``xarray.DataArray`` (band, y, x) with their CRS and
        transform (rioxarray's, as ``odc.stac.load`` and ``rioxarray.open_rasterio`` give
        them; a Dataset of one variable per band and one time step is taken too). Bands
        are selected by the band coordinate's names when it names the model's bands,
        else taken in order. SAR on another grid is warped onto the optical grid as for
        files. ``options``: the tiling (window, overlap, margin, batch size) and which of
        confidence, uncertainty and probabilities to return; the file options are unused.
        """
        from ..outputs.memory import raster_in_memory

        options = options if options is not None else PredictOptions()
        routing = self.routing
        with ExitStack() as stack:
            stack.enter_context(streaming_gdal_env())
            scene = stack.enter_context(raster_in_memory(optical, "optical", routing.optical_bands))
            sar_path = None
            if sar is not None:
                sar_path = stack.enter_context(raster_in_memory(sar, "SAR", routing.sar_bands))
            reader_routing, pad_sar = self._reader_routing(scene, sar_path)
            check_inputs(scene, sar_path if not pad_sar else None, reader_routing)
            with SceneReader(scene, sar_path, reader_routing) as reader:
                plan = WindowPlan.for_grid(
                    reader.grid.height,
                    reader.grid.width,
                    options.window,
                    options.overlap,
                    options.margin_pixels,
                )
                outputs = ArrayOutputs(self.classes, reader.grid, options)
                self._map(reader, plan, outputs, options, pad_sar)
        return outputs.dataset()

    def predict(
        self,
        scene: str | Path,
        sar: str | Path | None,
        out_dir: str | Path,
        options: PredictOptions | None = None,
    ) -> PredictionResult:
        """Map ``scene`` (with ``sar``) into ``out_dir`` as ``options`` say (default
        options when None); see the module docstring. ``options.device`` and
        ``options.weights`` are not used: this predictor's model is already loaded.

        ``out_dir``: a folder, or an fsspec URL string (``s3://bucket/prefix/``): the set
        is made in a local temporary folder and uploaded, report JSON last
        (:mod:`~gopt_geo.outputs.remote`; a ``Path`` cannot be a URL, it folds ``//``).
        The folder lock applies to local folders only."""
        options = options if options is not None else PredictOptions()
        scene = scene if is_remote(scene) else Path(scene)  # a Path folds a URL's "//"
        if is_url_folder(out_dir):
            return self._predict_to_url(scene, sar, str(out_dir), options)
        out_dir = local_folder(out_dir)
        # memory flat in scene size: GDAL's cache too; SIGTERM cleans up like Ctrl-C; one
        # writer per folder (a second run would remove this one's temporary files)
        with (
            streaming_gdal_env(),
            terminate_as_exit(),
            folder_lock(out_dir, wait=options.wait),
            disk_errors(out_dir),  # a full disk: one line naming the folder
        ):
            return self._predict(scene, sar, Path(out_dir), options)

    def _predict_to_url(
        self, scene: str | Path, sar: str | Path | None, url: str, options: PredictOptions
    ) -> PredictionResult:
        """Map into a local temporary folder, then upload the set to ``url``, report JSON
        last (:mod:`~gopt_geo.outputs.remote`); the result names the uploaded files by URL.
        Existing outputs are refused before any work, as in a folder (no lock: a store
        has none)."""
        named = scene if isinstance(scene, Path) else Path(f"{raster_stem(scene)}.tif")
        family = [p.name for p in output_family(named, Path("."))]
        with streaming_gdal_env(), terminate_as_exit():
            check_url_folder(url)  # the store's refusals are one line (remote_errors)
            refuse_existing(url, family, options.overwrite)
            with staged_locally(url, overwrite=options.overwrite, replace=family) as local:
                with disk_errors(local):
                    result = self._predict(scene, sar, local, options)
                uploaded = {
                    f.name: remote_join(url, value.relative_to(local).as_posix())
                    for f in dataclasses.fields(result)
                    if isinstance(value := getattr(result, f.name), Path)
                }
        return dataclasses.replace(result, **uploaded)

    @property
    def variant(self) -> str | None:
        """The model variant (from the adapter's model config, or the model's own)."""
        config = self.model_info.get("config") or {}
        if config.get("variant"):
            return str(config["variant"])
        model_config = getattr(self.model, "config", None)
        return getattr(model_config, "variant", None)

    @property
    def needs_sar(self) -> bool:
        """Whether a scene must come with SAR: the model reads the auxiliary input (an
        ``optical_only`` model does not) and some of its auxiliary bands are SAR bands (an
        adapter trained with ``data.aux_bands: [NIR]`` still lists the config's SAR bands)."""
        sar_in_aux = set(self.routing.aux_bands) & set(self.routing.sar_bands)
        return bool(sar_in_aux) and self.variant not in AUX_FREE_VARIANTS

    def _reader_routing(self, scene: str | Path, sar: str | Path | None) -> tuple[BandRouting, int]:
        """The routing the reader reads with, and how many SAR bands ``_infer`` must add.

        Without SAR, a model that ignores the auxiliary input gets its SAR bands as NaN,
        which normalising turns into the training mean (0) like any nodata; any other
        model with SAR bands needs the SAR raster (one line naming its bands).
        """
        routing = self.routing
        if sar is not None or not routing.sar_bands:
            return routing, 0
        if self.needs_sar:
            raise InputError(
                f"{display_name(scene)}: the model expects SAR bands "
                f"({', '.join(routing.sar_bands)}); "
                "give a SAR raster (--sar)"
            )
        optical = dataclasses.replace(
            routing,
            sar_bands=(),
            aux=tuple(b for b in routing.aux_bands if b in routing.optical_bands),
        )
        return optical, len(routing.sar_bands)

    def _predict(
        self, scene: str | Path, sar: str | Path | None, out_dir: Path, options: PredictOptions
    ) -> PredictionResult:
        # outputs are named after the scene's stem: a URL's file name, a VRT document's name
        named = scene if isinstance(scene, Path) else Path(f"{raster_stem(scene)}.tif")
        scene_id = named.stem
        sha = self.model_info.get("adapter_sha256")
        outputs = OutputSet(  # cleans a killed run's leftovers, refuses to overwrite
            named, out_dir, self.classes, options, scene_id=scene_id, adapter_sha256=sha
        )
        reader_routing, pad_sar = self._reader_routing(scene, sar)
        check_inputs(scene, sar if not pad_sar else None, reader_routing)  # units, scaling
        start = time.perf_counter()
        # the quicklook's optical panel is read beside the model, not after it (a
        # decimated read of the whole scene: the largest part of the quicklook's time)
        side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gopt-quicklook")
        with outputs, side:  # every file under a temporary name until the set is committed
            with SceneReader(scene, sar, reader_routing) as reader:
                grid = reader.grid
                panel = side.submit(
                    optical_panel, scene, self.routing, panel_shape(grid.width, grid.height)
                )
                plan = WindowPlan.for_grid(
                    grid.height, grid.width, options.window, options.overlap, options.margin_pixels
                )
                inputs = reader.describe()
                outputs.open(grid)
                self._map(reader, plan, outputs, options, pad_sar)
            outputs.finish()
            if pad_sar:
                inputs["sar"] = None
                inputs["sar_note"] = (
                    f"none needed: the model ({self.variant}) ignores auxiliary bands; "
                    f"{', '.join(self.routing.sar_bands)} fed as their training means"
                )
            seconds_map = time.perf_counter() - start
            vector_result: VectorResult | None = None
            if options.vector is not None:
                final = outputs.paths["vector"]
                vector_result = write_polygons(  # reads the class map before it is committed
                    outputs.temp("class_map"),
                    outputs.temp("vector"),
                    layer=final.stem,
                    driver=driver_for(final),
                    min_area=options.min_area,
                    simplify=options.simplify,
                    attributes={
                        "scene_id": scene_id,
                        "adapter_sha": sha[:SHORT_HASH] if sha else None,
                    },
                )
                vector_result.path = final
            write_quicklook(
                scene,
                outputs.temp("class_map"),
                outputs.temp("quicklook"),
                self.routing,
                self.classes,
                outputs.nodata,
                title=f"{scene_id}: land cover ({self.variant or 'model'})",
                optical=panel.result(),
            )
            description = describe_prediction(  # the report and the STAC item, written
                outputs,
                scene=scene,
                sar=sar,
                scene_id=scene_id,
                grid=grid,
                plan=plan,
                options=options,
                inputs=inputs,
                model_info=self.model_info,
                routing=self.routing,
                classes=self.classes,
                device=str(self.device),
                vector=vector_result,
                seconds=time.perf_counter() - start,
                seconds_map=seconds_map,
            )
            outputs.commit()
        paths = outputs.paths
        return PredictionResult(
            class_map=paths["class_map"],
            report_json=paths["report_json"],
            report_markdown=paths["report_markdown"],
            stats=description.stats,
            confidence=paths.get("confidence"),
            probabilities=paths.get("probabilities"),
            vector=paths.get("vector"),
            uncertainty=paths.get("uncertainty"),
            item=paths["item"],
            quicklook=paths["quicklook"],
        )

    def _map(
        self,
        reader: SceneReader,
        plan: WindowPlan,
        outputs: OutputSet | ArrayOutputs,
        options: PredictOptions,
        pad_sar: int = 0,
    ) -> None:
        """Windows (read ahead) -> model -> blended rows -> outputs, strip by strip."""
        bar = tqdm(total=len(plan), unit="window", desc="predict", disable=not options.progress)
        context = scene_context(reader, self.model)  # None unless model.cup_context == "scene"
        # each window with its margin of context; the tiling keeps the window (its core)
        batches = reader.batches(plan.read_windows(), options.batch_size)
        forward = functools.partial(self._infer, pad_sar=pad_sar, context=context)
        if self.on_forward is not None:
            forward = _timed(forward, self.on_forward)
        rows = stream_rows(
            plan,
            batches,
            forward,
            self.classes.num_classes,
            self.device,
            on_batch=bar.update,
            cores=_takes_keep(self.model) and plan.margin > 0,
        )
        # closing: the read in flight ends before the reader's files close, even on error
        with bar, closing(batches), closing(rows):
            for i, (row0, logits, valid) in enumerate(rows):
                outputs.write_rows(row0, logits, valid)
                if i == 0:
                    pause_point("windows")  # test hook (staging.py)
        if not outputs.class_pixels:  # the model never ran (windows without a valid pixel)
            where = (
                f"valid in both the scene and {reader.sar_name}"
                if reader.sar_name and not pad_sar
                else "valid"
            )
            warnings.warn(
                f"{reader.scene_name}: no pixel is {where} (all nodata); the outputs are "
                "nodata everywhere and no window was run through the model",
                UserWarning,
                stacklevel=2,
            )

    @torch.inference_mode()
    def _infer(
        self,
        images: torch.Tensor,
        valid: torch.Tensor,
        keep: Keep | None = None,
        *,
        pad_sar: int = 0,
        context: Any = None,
    ) -> torch.Tensor:
        """The model's logits [B, K, h, w] for a batch of windows (the tiling's
        ``model_forward``); invalid pixels are fed as band means (0 after normalising), and
        so are ``pad_sar`` SAR bands a model that ignores them was not given. ``keep``:
        the boxes the tiling keeps, passed to a model that takes them (`_takes_keep`)."""
        if pad_sar:
            b, _, h, w = images.shape
            images = torch.cat([images, images.new_full((b, pad_sar, h, w), float("nan"))], 1)
        rgb, aux = self.routing.prepare(images)
        rgb = torch.where(valid[:, None], rgb, 0.0)  # also clears NaN, which would spread
        aux = torch.where(valid[:, None], aux, 0.0)
        extra: dict[str, Any] = {} if context is None else {"context": context}
        if keep is not None:
            extra["keep"] = keep
        out = self.model(rgb, aux, **extra)
        logits = out.logits if hasattr(out, "logits") else out
        if logits.shape[1] != self.classes.num_classes:
            raise RuntimeError(
                f"model returns {logits.shape[1]} classes, the class scheme has "
                f"{self.classes.num_classes}"
            )
        return logits.float()


def _takes_keep(model: Any) -> bool:
    """Whether ``model`` takes ``keep`` (`SegmentationModel.takes_keep`): its per-pixel
    work then skips each window's margin, which the tiling cuts off anyway."""
    return bool(getattr(model, "takes_keep", False))


def _timed(forward: ModelForward, report: Callable[[int, float], object]) -> ModelForward:
    """``forward`` that tells ``report`` how many windows it took and how long it ran."""

    def timed(images: torch.Tensor, valid: torch.Tensor, *keep: Any) -> torch.Tensor:
        start = time.perf_counter()
        logits = forward(images, valid, *keep)
        report(int(images.shape[0]), time.perf_counter() - start)
        return logits

    return timed


def predict_scene(
    scene: str | Path,
    sar: str | Path | None,
    model: str | Path,
    out_dir: str | Path,
    options: PredictOptions | None = None,
) -> PredictionResult:
    """``gopt-geo predict``: load the adapter ``model`` (on ``options.device``, with
    ``options.weights``) and map ``scene`` with it."""
    options = options if options is not None else PredictOptions()
    weights = str(options.weights) if options.weights is not None else None
    # inputs first (seconds), the model after: a missing or unreadable file, or an adapter
    # that is not one, fails before torch and the backbone are loaded
    read_adapter_metadata(model)
    for path in (scene, sar):
        if path is not None:
            open_raster(path if is_remote(path) else Path(path)).close()
    predictor = Predictor.from_adapter(model, device=options.device, weights=weights)
    return predictor.predict(scene, sar, out_dir, options)
