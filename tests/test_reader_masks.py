"""The reader computes nodata masks from the values it has read (no second read, no second
warp), and the result is GDAL's own mask wherever it takes that path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from conftest import SYNTH_ROUTING, write_raster, write_scene
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from gopt_geo.inference.reader import SceneReader, values_valid


def _holes(path: Path, value: float, every_band: bool) -> None:
    """Write ``value`` into blocks of ``path``: whole pixels (every band) or one band."""
    with rasterio.open(path, "r+") as dst:
        data = dst.read()
        data[:, 5:12, 7:20] = value  # all bands nodata
        if not every_band:
            data[0, 30:40, 30:45] = value  # one band only
        dst.write(data)


def _gdal_masks(reader: SceneReader, window: Window) -> np.ndarray:
    """Validity from GDAL's masks, as the reader computed it before it read values."""
    valid = reader._masks(reader._opt, None, window, alpha=None, bands=None)
    valid &= reader._masks(
        reader._sar, None, window, alpha=reader._sar_alpha, bands=reader._sar_bands
    )
    return valid


def test_masks_from_values_equal_gdal_masks(tmp_path: Path) -> None:
    files = write_scene(tmp_path, "s", size=96, seed=3)
    _holes(files["optical"], 0, every_band=False)  # optical nodata 0: all bands -> invalid
    _holes(files["sar"], -9999.0, every_band=False)  # SAR nodata: any band -> invalid
    with SceneReader(files["optical"], files["sar"], SYNTH_ROUTING) as reader:
        assert reader.sar_warped
        for window in (Window(0, 0, 96, 96), Window(10, 20, 64, 48)):
            image, valid = reader.read(window)
            opt = image[: len(reader._opt_bands)]
            sar = image[len(reader._opt_bands) :]
            # the fast path was taken for both inputs ...
            assert values_valid(reader._opt, opt, reader._opt_bands, every=False) is not None
            assert values_valid(reader._sar, sar, reader._sar_bands, every=True) is not None
            # ... and gives exactly GDAL's masks (and the scene has invalid pixels to find)
            np.testing.assert_array_equal(valid, _gdal_masks(reader, window))
            assert 0 < valid.sum() < valid.size
        # optical: a pixel with one band at nodata stays valid; every band at nodata is not
        image, _ = reader.read(Window(0, 0, 96, 96))
        opt = image[: len(reader._opt_bands)]
        opt_valid = values_valid(reader._opt, opt, reader._opt_bands, every=False)
        assert opt[0, 35, 35] == 0 and opt_valid[35, 35]
        assert not opt_valid[8, 10]


def test_alpha_bands_and_subsets_go_through_gdal(tmp_path: Path) -> None:
    data = np.full((4, 16, 16), 500, dtype=np.uint16)
    path = write_raster(tmp_path / "a.tif", data, nodata=0)
    with rasterio.open(path) as src:
        values = src.read(out_dtype="float32")
        # a dataset mask over bands not all read: GDAL decides
        assert values_valid(src, values[:3], [1, 2, 3], every=False) is None
        assert values_valid(src, values, [1, 2, 3, 4], every=False).all()
    plain = write_raster(tmp_path / "b.tif", data, nodata=None)
    with rasterio.open(plain) as src:
        assert values_valid(src, src.read(out_dtype="float32"), [1, 2, 3, 4], every=True).all()
    rgba = np.concatenate([data[:3].astype(np.uint8), np.zeros((1, 16, 16), np.uint8)])
    rgba[3, :8] = 255
    with rasterio.open(
        tmp_path / "c.tif",
        "w",
        driver="GTiff",
        width=16,
        height=16,
        count=4,
        dtype="uint8",
        photometric="RGB",
        alpha="YES",  # GTiff creation option: the 4th band is an (unassociated) alpha
    ) as dst:
        dst.write(rgba)
    with rasterio.open(tmp_path / "c.tif") as src:
        assert src.colorinterp[3] == ColorInterp.alpha
        assert (
            values_valid(src, src.read([1, 2, 3], out_dtype="float32"), [1, 2, 3], every=True)
            is None
        )


def test_nan_nodata(tmp_path: Path) -> None:
    data = np.ones((2, 8, 8), dtype=np.float32)
    data[0, 2, 3] = np.nan
    path = write_raster(tmp_path / "n.tif", data, nodata=float("nan"))
    with rasterio.open(path) as src:
        values = src.read(out_dtype="float32")
        every = values_valid(src, values, [1, 2], every=True)
        gdal = (src.read_masks([1, 2]) > 0).all(axis=0)
    np.testing.assert_array_equal(every, gdal)
    assert not every[2, 3] and every.sum() == 63
