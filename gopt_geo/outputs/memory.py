"""A prediction kept in memory: arrays in and an ``xarray.Dataset`` out, no file written.

``Predictor.predict_array`` maps ``xarray.DataArray`` inputs (from ``odc.stac.load``,
``rioxarray``, a Dask pipeline) with the very machinery that maps files: the arrays are
put in GDAL's memory file system (:func:`raster_in_memory`, a GeoTIFF under
``/vsimem/`` with the array's CRS, transform, nodata and band names), so the reader,
the tiling and the SAR warping run unchanged; :class:`ArrayOutputs` takes the blended
rows an :class:`~gopt_geo.outputs.output_set.OutputSet` would write and keeps them, as
the same bytes (:class:`~gopt_geo.outputs.products.RowEncoder`), then decodes them the
way :func:`gopt_geo.maps.open_map` reads the files (0..1, NaN where nodata). The Dataset
of an array therefore equals the one ``open_map`` gives for the same scene mapped to
files.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ..data.classes import ClassScheme
from ..errors import InputError
from .class_counts import ClassCounts
from .grid import Grid
from .naming import Products
from .products import (
    CONFIDENCE_SCALE,
    PROBABILITY_PRODUCTS,
    PROBABILITY_SCALE,
    UNCERTAINTY_NODATA,
    UNCERTAINTY_SCALE,
    RowEncoder,
)
from .writers import class_map_nodata

#: Dimensions an input array may have beside y and x.
BAND_DIMS = ("band", "variable", "bands")


def _as_band_array(data: Any, role: str) -> Any:
    """``data`` (a DataArray, or a Dataset of one variable per band as ``odc.stac.load``
    returns) as a DataArray (band, y, x); one time step at most."""
    import xarray as xr

    if isinstance(data, xr.Dataset):
        data = data.to_array("band")
    if not isinstance(data, xr.DataArray):
        raise InputError(f"{role} input: expected an xarray.DataArray, got {type(data).__name__}")
    if "time" in data.dims:
        if data.sizes["time"] != 1:
            raise InputError(
                f"{role} input: {data.sizes['time']} time steps; map one at a time "
                "(select one with .isel(time=i))"
            )
        data = data.isel(time=0, drop=True)
    if data.ndim == 2:
        data = data.expand_dims("band")
    band_dim = next((d for d in data.dims if d in BAND_DIMS), None)
    if data.ndim != 3 or band_dim is None or not {"y", "x"} <= set(data.dims):
        raise InputError(
            f"{role} input: expected dimensions (band, y, x), got {tuple(map(str, data.dims))}"
        )
    return data.transpose(band_dim, "y", "x")


def _nodata(data: Any) -> float | None:
    """The array's nodata: rioxarray's, else the ``nodata``/``_FillValue`` attribute, else
    NaN for floating-point data (NaN is always nodata to the reader)."""
    value = None
    try:
        value = data.rio.nodata
    except Exception:  # noqa: BLE001 - no rioxarray metadata: the attributes say
        value = None
    if value is None:
        value = data.attrs.get("nodata", data.attrs.get("_FillValue"))
    if value is None and np.issubdtype(data.dtype, np.floating):
        value = float("nan")
    return None if value is None else float(value)


def _grid(data: Any, role: str) -> tuple[Any, Any]:
    """(CRS or None, affine transform) of an array, through rioxarray."""
    import rioxarray  # noqa: F401 (registers the .rio accessor)

    try:
        transform = data.rio.transform(recalc=True)
    except Exception as exc:  # noqa: BLE001 - one line naming the problem
        raise InputError(f"{role} input: no x/y coordinates to place it ({exc})") from None
    return data.rio.crs, transform


@contextmanager
def raster_in_memory(data: Any, role: str, band_names: Sequence[str] = ()) -> Iterator[str]:
    """``data`` as a GeoTIFF in GDAL's memory file system; yields its ``/vsimem/`` name
    and removes it on exit. The band coordinate's names become band descriptions when
    they name every band of ``band_names`` (the model's), so the reader selects bands by
    name as it does in files; otherwise bands are taken in order."""
    import rasterio
    import rasterio.shutil

    array = _as_band_array(data, role)
    crs, transform = _grid(array, role)
    values = np.asarray(array.values)
    if values.dtype == np.float64:
        values = values.astype(np.float32)
    if values.dtype == bool:
        values = values.astype(np.uint8)
    names = (
        [str(v) for v in array.coords[array.dims[0]].values]
        if array.dims[0] in array.coords
        else []
    )
    describe = bool(band_names) and set(band_names) <= set(names) and len(set(names)) == len(names)
    path = f"/vsimem/gopt-geo-{uuid.uuid4().hex}-{role}.tif"
    profile = {
        "driver": "GTiff",
        "width": values.shape[2],
        "height": values.shape[1],
        "count": values.shape[0],
        "dtype": values.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": _nodata(array),
    }
    try:
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(values)
            if describe:
                for i, name in enumerate(names, start=1):
                    dst.set_band_description(i, name)
        yield path
    finally:
        try:
            rasterio.shutil.delete(path)
        except rasterio.errors.RasterioIOError:  # never written (the write failed)
            pass


class ArrayOutputs:
    """Takes blended rows as an output set does, keeps them as arrays (the same bytes the
    files would hold) and counts the classes; :meth:`dataset` decodes them."""

    def __init__(self, classes: ClassScheme, grid: Grid, options: Products) -> None:
        self.classes = classes
        self.grid = grid
        self.nodata = class_map_nodata(classes)
        products = [name for name in PROBABILITY_PRODUCTS if getattr(options, name)]
        self._encoder = RowEncoder(classes, self.nodata, products, options.uncertainty_threshold)
        self.counts = ClassCounts(classes, grid, uncertainty="uncertainty" in products)
        shape = (grid.height, grid.width)
        self.bands: dict[str, np.ndarray] = {
            "class_map": np.full((1, *shape), self.nodata, np.uint8)
        }
        fill = {"confidence": 0, "probabilities": 255, "uncertainty": UNCERTAINTY_NODATA}
        for name in products:
            count = classes.num_classes if name == "probabilities" else 1
            self.bands[name] = np.full((count, *shape), fill[name], np.uint8)

    def write_rows(self, row0: int, logits: torch.Tensor, valid: torch.Tensor) -> None:
        """Rows ``row0 ..`` from blended logits [K, n, W] and validity [n, W]."""
        rows = self._encoder.encode(logits, valid)
        n = rows.codes.shape[0]
        for name, data in rows.bands.items():
            self.bands[name][:, row0 : row0 + n] = data
        self.counts.add(row0, rows.codes, valid.cpu().numpy(), rows.uncertain)

    @property
    def class_pixels(self) -> dict[int, int]:
        return self.counts.class_pixels

    def dataset(self) -> Any:
        """The map as :func:`gopt_geo.maps.map_dataset` lays it out."""
        from ..maps import map_dataset

        def decode(name: str, nodata: int, scale: int) -> np.ndarray | None:
            if name not in self.bands:
                return None
            raw = self.bands[name]
            values = raw.astype(np.float32) * np.float32(1 / scale)
            values[raw == nodata] = np.nan
            return values if name == "probabilities" else values[0]

        return map_dataset(
            self.bands["class_map"][0],
            self.classes,
            self.nodata,
            self.grid.crs,
            self.grid.transform,
            confidence=decode("confidence", 0, CONFIDENCE_SCALE),
            uncertainty=decode("uncertainty", UNCERTAINTY_NODATA, UNCERTAINTY_SCALE),
            probabilities=decode("probabilities", 255, PROBABILITY_SCALE),
        )
