"""A finished map as an ``xarray.Dataset``: the hand-over format of the Pangeo stack.

odc-stac, stackstac and xarray + Dask hand rasters around as xarray objects with their
CRS and transform. :func:`open_map` opens the files one prediction wrote (``S_classes.tif``
and, when present beside it, ``S_confidence.tif``, ``S_uncertainty.tif`` and
``S_probabilities.tif``; local paths or URLs) as one lazily read Dataset: nothing is read
until a value is asked for, in Dask chunks of the files' own 512-px tiles, so a
continental map opens at once. Class codes stay integer codes; the class scheme (names,
codes, colours) travels in the attributes; the other products are scaled back to 0..1
with nodata as NaN; the CRS is rioxarray's ``spatial_ref``.
:func:`map_dataset` builds the same Dataset from arrays in memory
(``Predictor.predict_array``), so both paths give one layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .data.classes import ClassScheme, scheme_from_tags
from .errors import InputError
from .io import REMOTE_GDAL_OPTIONS, gdal_path, is_remote, open_raster

#: Products beside a class map, by the suffix gopt-geo predict gives them.
SIBLINGS = ("confidence", "uncertainty", "probabilities")
#: Dask chunk edge in pixels: the outputs' tile size, so one chunk is whole tiles.
CHUNK = 512


def _sibling(class_map: str, product: str) -> str:
    head, sep, tail = class_map.rpartition("_classes")
    if not sep:
        return ""
    return f"{head}_{product}{tail}"


def _exists(path: str) -> bool:
    if not path:
        return False
    if not is_remote(path):
        return Path(path).is_file()
    try:
        open_raster(path).close()
    except InputError:
        return False
    return True


def scheme_attrs(scheme: ClassScheme, nodata: int | None) -> dict[str, Any]:
    """The class scheme as Dataset attributes (plain lists: netCDF and Zarr keep them)."""
    return {
        "class_codes": [c.code for c in scheme.classes],
        "class_names": [c.name for c in scheme.classes],
        "class_colours": [list(c.color) for c in scheme.classes],
        "nodata": nodata,
    }


def open_map(path: str | os.PathLike[str]) -> Any:
    """The map of one prediction as a lazily read ``xarray.Dataset``.

    ``path``: the class map (``S_classes.tif``), a local path or a URL. Variables:
    ``classes`` (y, x; the class codes, nodata as the file's nodata), ``confidence``,
    ``uncertainty`` (y, x; 0..1, NaN where nodata) and ``probabilities`` (class, y, x; the
    ``class`` coordinate holds the class names) when those files exist beside it.
    Attributes: ``class_codes``, ``class_names``, ``class_colours``, ``nodata``, the scene
    id and adapter hash when the map carries them.
    """
    import rasterio
    import rioxarray
    import xarray as xr

    text = os.fspath(path)
    with open_raster(text) as src:
        scheme = scheme_from_tags(src.tags())
        tags = src.tags()
        if scheme is None:
            raise InputError(
                f"{text}: not a gopt-geo class map (no class scheme in its tags); open other "
                "rasters with rioxarray.open_rasterio"
            )
    target = str(gdal_path(text))

    def raster(name: str, scaled: bool) -> Any:
        # a remote file opens as open_raster opens it (no listing of the remote folder,
        # bounded HTTP waits: io.REMOTE_GDAL_OPTIONS, io.HTTP_DEFAULTS)
        with rasterio.Env(**(REMOTE_GDAL_OPTIONS if is_remote(text) else {})):
            return rioxarray.open_rasterio(
                name, chunks={"x": CHUNK, "y": CHUNK}, mask_and_scale=scaled, lock=None
            )

    classes = raster(target, scaled=False).squeeze("band", drop=True)
    nodata = classes.rio.nodata
    variables: dict[str, Any] = {"classes": classes.rename("classes")}
    for product in SIBLINGS:
        sibling = _sibling(text, product)
        if not _exists(sibling):
            continue
        data = raster(str(gdal_path(sibling)), scaled=True)
        if product == "probabilities":
            data = data.rename({"band": "class"}).assign_coords(
                {"class": [c.name for c in scheme.classes]}
            )
        else:
            data = data.squeeze("band", drop=True)
        variables[product] = data.rename(product)
    attrs = scheme_attrs(scheme, None if nodata is None else int(nodata))
    for key, attr in (("GOPT_GEO_SCENE_ID", "scene_id"), ("GOPT_GEO_ADAPTER_SHA256", "adapter")):
        if key in tags:
            attrs[attr] = tags[key]
    return xr.Dataset(variables, attrs=attrs)


def map_dataset(
    classes: Any,
    scheme: ClassScheme,
    nodata: int,
    crs: Any,
    transform: Any,
    *,
    confidence: Any = None,
    uncertainty: Any = None,
    probabilities: Any = None,
) -> Any:
    """The layout of :func:`open_map` from arrays in memory: ``classes`` [H, W] codes,
    ``confidence`` / ``uncertainty`` [H, W] and ``probabilities`` [C, H, W] in 0..1 (NaN
    where nodata), on the grid of ``crs`` and ``transform`` (pixel centres as x, y)."""
    import numpy as np
    import rioxarray  # noqa: F401 (registers the .rio accessor)
    import xarray as xr

    height, width = classes.shape
    a, e = transform.a, transform.e
    x = transform.c + a * (np.arange(width) + 0.5)
    y = transform.f + e * (np.arange(height) + 0.5)
    coords: dict[str, Any] = {"y": y, "x": x}
    variables: dict[str, Any] = {"classes": (("y", "x"), classes)}
    for name, value in (("confidence", confidence), ("uncertainty", uncertainty)):
        if value is not None:
            variables[name] = (("y", "x"), value)
    if probabilities is not None:
        variables["probabilities"] = (("class", "y", "x"), probabilities)
        coords["class"] = [c.name for c in scheme.classes]
    ds = xr.Dataset(variables, coords=coords, attrs=scheme_attrs(scheme, nodata))
    ds["classes"].attrs["_FillValue"] = nodata
    if crs is not None:
        ds = ds.rio.write_crs(crs)
    return ds.rio.write_transform(transform)
