"""``gopt_geo.open_map`` (issue 25): a prediction's files as one lazily read xarray
Dataset, locally and over HTTP, equal to what rasterio reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import serve

from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
from gopt_geo.errors import InputError
from gopt_geo.inference import PredictOptions, predict_scene
from gopt_geo.maps import map_dataset, open_map


@pytest.fixture(scope="module")
def mapped(adapter: Path, scene, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mapped")
    options = PredictOptions(
        window=64, probabilities=True, uncertainty=True, vector=None, progress=False
    )
    return predict_scene(scene.optical, scene.sar, adapter, out, options).class_map


def _read(path: Path) -> tuple[np.ndarray, rasterio.Affine, object, list]:
    with rasterio.open(path) as src:
        data = src.read(masked=True).astype("float64") * np.array(src.scales)[:, None, None]
        return data, src.transform, src.crs, src.nodatavals


def test_open_map_equals_the_files(mapped: Path) -> None:
    ds = open_map(mapped)
    assert all(hasattr(ds[v].data, "dask") for v in ds.data_vars)  # lazily read
    with rasterio.open(mapped) as src:
        np.testing.assert_array_equal(ds.classes.values, src.read(1))
        assert ds.rio.crs == src.crs and ds.rio.transform() == src.transform
    assert ds.attrs["class_names"] == WHU_OPT_SAR_CLASSES.names
    assert ds.attrs["class_codes"] == WHU_OPT_SAR_CLASSES.codes
    for product in ("confidence", "uncertainty", "probabilities"):
        raw, *_ = _read(mapped.with_name(mapped.name.replace("classes", product)))
        values = ds[product].values
        values = values if values.ndim == 3 else values[None]
        np.testing.assert_allclose(np.nan_to_num(values, nan=-1), raw.filled(-1), atol=1e-6)
    assert list(ds.probabilities["class"].values) == WHU_OPT_SAR_CLASSES.names


def test_open_map_over_http(mapped: Path) -> None:
    with serve(mapped.parent) as url:
        ds = open_map(f"{url}/{mapped.name}")
        assert set(ds.data_vars) == {"classes", "confidence", "uncertainty", "probabilities"}
        local = open_map(mapped)
        np.testing.assert_array_equal(ds.classes.values, local.classes.values)


def test_a_raster_without_a_scheme_is_refused(tmp_path: Path, scene) -> None:
    with pytest.raises(InputError, match="not a gopt-geo class map"):
        open_map(scene.optical)


def test_map_dataset_has_the_layout_of_open_map(mapped: Path) -> None:
    on_disk = open_map(mapped).load()
    with rasterio.open(mapped) as src:
        built = map_dataset(
            on_disk.classes.values,
            WHU_OPT_SAR_CLASSES,
            int(src.nodata),
            src.crs,
            src.transform,
            confidence=on_disk.confidence.values,
        )
    np.testing.assert_array_equal(built.x.values, on_disk.x.values)
    np.testing.assert_array_equal(built.y.values, on_disk.y.values)
    assert built.rio.crs == on_disk.rio.crs
    assert built.attrs["class_names"] == on_disk.attrs["class_names"]
