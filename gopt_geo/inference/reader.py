"""Windowed reading of a scene for prediction: optical from the file, SAR warped onto it.

The optical raster's grid is the reference grid (design §1). SAR in any CRS and at any
resolution is read through a ``WarpedVRT`` that has exactly the optical CRS, transform and
size, so a window of the optical grid is also a window of the warped SAR and nothing is
ever warped as a whole. Inputs are checked up front, so that user mistakes surface as one
:class:`~gopt_geo.errors.InputError` line naming the file before any work is done.

Nodata follows the training convention (:class:`gopt_geo.data.rasters.SampleCleaner`):
an optical pixel is nodata when *all* its bands are nodata (GDAL's dataset mask, which also
honours alpha bands and internal masks); a SAR pixel is nodata when *any* band is nodata
or the pixel lies outside the SAR footprint; NaN in any band is nodata.

:meth:`SceneReader.batches` reads batches of windows one ahead on a thread, so that reading
(and warping) overlaps the model; the tiling (:mod:`gopt_geo.inference.tiling`) consumes
them without knowing where they came from. The windows it is given are the tiling's
enlarged windows (each window with its margin of context,
:meth:`~gopt_geo.inference.tiling.WindowPlan.read_windows`): always inside the grid and
of one size, so no read is boundless and every batch stacks.

Inputs are anything GDAL opens (:func:`gopt_geo.io.open_raster`): local files and VRTs,
URLs read by byte ranges (``https://`` through ``/vsicurl/``, ``s3://`` through
``/vsis3/``), and VRT documents held as a string, which is how a STAC item's single-band
assets arrive stacked (:mod:`gopt_geo.inference.sources`). Messages and the report name an
input as given (a VRT document by its label). Values reach the model the same way from
all of them: a file's stored values go through the adapter's
:meth:`~gopt_geo.data.bands.BandRouting.to_physical` (its training-time optical
scale/offset); a STAC asset whose ``raster:bands`` declares a scale/offset is first put
into that stored convention by the VRT itself (stac_scenes.py explains the arithmetic), so the
adapter's scale is applied exactly once.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from ..data.bands import BandRouting
from ..errors import InputError
from ..io import (
    alpha_band,
    band_indexes,
    check_band_count,
    check_overlap,
    data_band_count,
    display_name,
    gdal_path,
    is_remote,
    open_raster,
    reading,
    same_grid,
    warp_onto,
)
from ..outputs.grid import Grid

#: Seconds a stopped run waits for the read in flight before abandoning it (a local read
#: ends well within this; a read waiting on a stalled server would not end at all).
READ_GRACE = 5.0


@dataclass(frozen=True)
class ValueMask:
    """A source's GDAL mask as a function of the values read from it: each band valid
    where it is not its ``nodata`` (NaN: not NaN), combined over the bands with all
    (``every``) or any; ``nodata`` None: every pixel valid."""

    nodata: tuple[np.float32, ...] | None
    every: bool

    def __call__(self, values: np.ndarray) -> np.ndarray:
        if self.nodata is None:
            return np.ones(values.shape[1:], dtype=bool)
        band_valid = np.empty(values.shape, dtype=bool)
        for i, nodata in enumerate(self.nodata):
            band_valid[i] = ~np.isnan(values[i]) if np.isnan(nodata) else values[i] != nodata
        return band_valid.all(axis=0) if self.every else band_valid.any(axis=0)


def value_mask(
    src: rasterio.DatasetReader | WarpedVRT, bands: Sequence[int], *, every: bool
) -> ValueMask | None:
    """How GDAL's mask of ``bands`` of ``src`` follows from their values, where it
    does exactly; None otherwise. Decided once per source (the mask flags do not change
    between windows).

    Where each band's mask is only its nodata value (the usual GeoTIFF, and the warped SAR,
    whose VRT carries the source's nodata), GDAL computes the mask by reading the band again
    and comparing it with nodata; through a ``WarpedVRT`` that is a second warp of the
    window, which made mask reads about half of a scene's reading time. Alpha bands,
    internal masks and a dataset mask over bands not read (``every=False``: valid where
    any band is) return None: the caller reads GDAL's masks. Bands without nodata or mask
    are valid everywhere.
    """
    if not every and sorted(bands) != list(range(1, src.count + 1)):
        return None
    flags = src.mask_flag_enums
    if all(flags[b - 1] == [MaskFlags.all_valid] for b in bands):
        return ValueMask(None, every)
    if any(flags[b - 1] != [MaskFlags.nodata] for b in bands):
        return None
    return ValueMask(tuple(np.float32(src.nodatavals[b - 1]) for b in bands), every)


def values_valid(
    src: rasterio.DatasetReader | WarpedVRT,
    values: np.ndarray,
    bands: Sequence[int],
    *,
    every: bool,
) -> np.ndarray | None:
    """GDAL's mask of ``values`` (``bands`` of ``src``, just read as float32), computed
    from the values themselves where that is exactly what GDAL would do (:func:`value_mask`);
    None otherwise."""
    mask = value_mask(src, bands, every=every)
    return None if mask is None else mask(values)


def _as_input(path: str | Path) -> str | Path:
    """A local path as a ``Path`` (``file://`` too); a URL or VRT document unchanged (a
    ``Path`` would fold the ``//`` of a URL)."""
    return path if is_remote(path) else gdal_path(path)


class SceneReader:
    """Reads windows of the stacked optical+SAR image on the optical grid, with a validity mask.

    Use as a context manager. ``read(window)`` returns ``(image, valid)``: ``image`` is
    float32 ``[C, h, w]`` with the optical bands then the SAR bands (the layout
    :meth:`BandRouting.prepare` expects), ``valid`` is bool ``[h, w]``.
    """

    def __init__(self, scene: str | Path, sar: str | Path | None, routing: BandRouting) -> None:
        # local files as a Path, remote ones (URLs, VRT documents) as given: open_raster
        # hands those to GDAL; messages and the report name them as display_name says
        self.scene_path = _as_input(scene)
        self.sar_path = _as_input(sar) if sar is not None else None
        self.scene_name = display_name(scene)
        self.sar_name = display_name(sar) if sar is not None else None
        self.routing = routing
        self._sar_src: rasterio.DatasetReader | None = None
        self._sar: rasterio.DatasetReader | WarpedVRT | None = None
        self._sar_alpha: int | None = None  # band of self._sar holding the footprint, if any
        self.sar_warped = False
        self._abandoned = False  # a read that never returned holds the datasets
        self._opt = open_raster(self.scene_path)
        try:
            self._validate_and_open_sar()
        except BaseException:
            self.close()
            raise
        self.grid = Grid(self._opt.crs, self._opt.transform, self._opt.width, self._opt.height)

    @staticmethod
    def _bands(
        name: str | None,
        src: rasterio.DatasetReader,
        names: tuple[str, ...],
        role: str,
        indices: tuple[int, ...] = (),
    ) -> list[int]:
        """The file bands to read as the model's ``names``: by band description when the
        file names its bands, at ``indices``, or exactly the file's bands otherwise (a file
        with more unnamed bands than the model takes is a mistake, not a choice)."""
        count = data_band_count(src)
        described = all(src.descriptions[:count]) and count > 0
        if not described and not indices:
            check_band_count(name, count, names, role)
        return band_indexes(name, src, names, role, indices)

    def _validate_and_open_sar(self) -> None:
        opt = self._opt
        self._opt_bands = self._bands(
            self.scene_name,
            opt,
            self.routing.optical_bands,
            "optical",
            self.routing.optical_indices,
        )
        if not self.routing.sar_bands:
            if self.sar_path is not None:
                raise InputError(
                    f"{self.sar_name}: the model was trained without SAR bands; "
                    "predict without a SAR raster"
                )
            return
        if self.sar_path is None:
            raise InputError(
                f"{self.scene_name}: the model expects SAR bands "
                f"({', '.join(self.routing.sar_bands)}); give a SAR raster"
            )
        # Missing CRS on one side, or no overlap at all: refuse before reading anything.
        check_overlap(self.scene_path, self.sar_path)
        src = open_raster(self.sar_path)
        self._sar_src = src
        self._sar_bands = self._bands(self.sar_name, src, self.routing.sar_bands, "SAR")
        alpha = alpha_band(src)
        if same_grid(src, opt):
            self._sar, self._sar_alpha = src, alpha
            return
        if opt.crs is None:  # neither has a CRS (check_overlap refused mixed cases)
            raise InputError(
                f"{self.sar_name}: neither this SAR raster nor {self.scene_name} has a CRS, and "
                "their grids differ; give both a CRS (or the same size and transform)"
            )
        add_alpha = src.nodata is None and alpha is None
        # Without a nodata value the footprint is only known through an alpha band.
        self._sar = warp_onto(src, opt, Resampling.bilinear, add_alpha=add_alpha)
        self._sar_alpha = src.count + 1 if add_alpha else alpha
        self.sar_warped = True

    @functools.cached_property
    def _opt_mask(self) -> ValueMask | None:
        return value_mask(self._opt, self._opt_bands, every=False)

    @functools.cached_property
    def _sar_mask(self) -> ValueMask | None:
        if self._sar is None or self._sar_alpha is not None:  # an alpha band: GDAL reads it
            return None
        return value_mask(self._sar, self._sar_bands, every=True)

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """The stacked image and its validity mask for one window of the optical grid."""
        optical = self._read(self._opt, self.scene_name, window, self._opt_bands)
        if self._opt_mask is not None:
            valid = self._opt_mask(optical)
        else:
            valid = self._masks(self._opt, self.scene_name, window, alpha=None, bands=None)
        parts = [optical]
        if self._sar is not None:
            sar = self._read(self._sar, self.sar_name, window, self._sar_bands)
            parts.append(sar)
            if self._sar_mask is not None:
                valid &= self._sar_mask(sar)
            else:
                valid &= self._masks(
                    self._sar, self.sar_name, window, alpha=self._sar_alpha, bands=self._sar_bands
                )
        image = np.concatenate(parts, axis=0)
        valid &= np.isfinite(image).all(axis=0)
        return image, valid

    def read_batch(self, windows: Sequence[Window]) -> tuple[np.ndarray, np.ndarray]:
        """Images [B, C, h, w] and validity [B, h, w] of equally sized windows."""
        images, valids = zip(*(self.read(w) for w in windows), strict=True)
        return np.stack(images), np.stack(valids)

    def batches(
        self, windows: Sequence[Window], batch_size: int
    ) -> Iterator[tuple[list[Window], np.ndarray, np.ndarray]]:
        """``(windows, images, valid)`` for ``batch_size`` windows at a time, in order.

        One reader thread reads the next batch (and warps its SAR) while the caller works
        on this one; one, because a GDAL dataset must not be read from two threads at
        once. Close the generator (or run it to the end) before closing the reader:
        closing waits for the read in flight, which must not outlive the datasets (up
        to :data:`READ_GRACE` seconds: a read stuck on a stalled server is abandoned,
        so that Ctrl-C stops the run).
        """
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        groups = [list(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]
        if not groups:
            return
        pending = self._read_ahead(groups[0])
        try:
            for i, group in enumerate(groups):
                images, valid = pending.result()
                if i + 1 < len(groups):
                    pending = self._read_ahead(groups[i + 1])
                yield group, images, valid
        finally:
            self._settle(pending)

    def _read_ahead(self, windows: list[Window]) -> Future[tuple[np.ndarray, np.ndarray]]:
        """Read ``windows`` on a daemon thread (one at a time: the caller waits for each
        before starting the next). Not a thread pool: a pool's thread is joined on exit,
        and one waiting on a stalled server would hold a Ctrl-C'd run for minutes."""
        future: Future[tuple[np.ndarray, np.ndarray]] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(self.read_batch(windows))
            except BaseException as err:  # handed to the caller through the future
                future.set_exception(err)

        threading.Thread(target=run, name="gopt-read", daemon=True).start()
        return future

    def _settle(self, pending: Future[tuple[np.ndarray, np.ndarray]]) -> None:
        """Before the datasets may close: wait for the read in flight, up to
        :data:`READ_GRACE` seconds. One still waiting then (a stalled server, and the run
        is being stopped) is abandoned with its datasets, which :meth:`close` leaves
        open rather than close under a live read."""
        try:
            pending.exception(timeout=READ_GRACE)
        except TimeoutError:
            self._abandoned = True
        except CancelledError:
            pass

    @staticmethod
    def _read(
        src: rasterio.DatasetReader | WarpedVRT, path: str | None, window: Window, bands: list[int]
    ) -> np.ndarray:
        with reading(path):  # the file or URL, and GDAL's reason
            return src.read(indexes=bands, window=window, out_dtype="float32")

    @staticmethod
    def _masks(
        src: rasterio.DatasetReader | WarpedVRT,
        path: str | None,
        window: Window,
        *,
        alpha: int | None,
        bands: list[int] | None,
    ) -> np.ndarray:
        """Valid pixels: any band valid (``bands=None``, the dataset mask) or every one of
        ``bands`` valid.

        An alpha band is read directly: a WarpedVRT's band masks ignore the alpha band
        it adds, so the SAR footprint would otherwise be lost.
        """
        with reading(path):
            if alpha is not None:
                return src.read(alpha, window=window) > 0
            if bands is None:
                return src.dataset_mask(window=window) > 0
            masks = src.read_masks(indexes=bands, window=window)
        return (masks > 0).all(axis=0)

    def describe(self) -> dict[str, object]:
        """Input summary for the run report."""
        info: dict[str, object] = {
            "scene": self.scene_name,
            "width": self.grid.width,
            "height": self.grid.height,
            "crs": self.grid.crs.to_string() if self.grid.crs else None,
            "transform": list(self.grid.transform)[:6],
            "optical_bands": list(self.routing.optical_bands),
            "optical_nodata": self._opt.nodata,
        }
        if self._sar_src is not None:
            info.update(
                sar=self.sar_name,
                sar_crs=self._sar_src.crs.to_string() if self._sar_src.crs else None,
                sar_size=[self._sar_src.width, self._sar_src.height],
                sar_bands=list(self.routing.sar_bands),
                sar_nodata=self._sar_src.nodata,
                sar_warped_on_the_fly=self.sar_warped,
            )
        return info

    def close(self) -> None:
        if self._abandoned:  # a read thread still uses them; they end with the process
            return
        for ds in (self._sar if self.sar_warped else None, self._sar_src, self._opt):
            if ds is not None:
                ds.close()

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
