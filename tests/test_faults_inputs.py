"""Messy input files (issue 24): partly named or duplicated band descriptions, rasters
without CRS on different grids. Each ends in a one-line error naming the file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import write_raster
from rasterio.transform import from_origin

from gopt_geo.adapter import read_adapter_metadata
from gopt_geo.errors import InputError
from gopt_geo.io import band_indexes, check_overlap


def _four_bands(path: Path, descriptions: tuple[str, ...]) -> Path:
    return write_raster(path, np.ones((4, 8, 8), dtype=np.uint16), descriptions=descriptions)


def _indexes(path: Path, indices: tuple[int, ...] = ()) -> list[int]:
    with rasterio.open(path) as src:
        return band_indexes(path, src, ["B", "G", "R", "NIR"], "optical", indices)


def test_bands_are_selected_by_name_when_every_band_is_named(tmp_path: Path) -> None:
    path = _four_bands(tmp_path / "a.tif", ("NIR", "R", "G", "B"))
    assert _indexes(path) == [4, 3, 2, 1]


def test_unnamed_files_are_read_by_position(tmp_path: Path) -> None:
    path = _four_bands(tmp_path / "a.tif", ("", "", "", ""))
    assert _indexes(path) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("descriptions", "problem"),
    [
        (("NIR", "R", "", "B"), "band(s) [3] have no description"),
        (("NIR", "R", "R", "B"), "the descriptions ['R'] name more than one band"),
    ],
)
def test_partly_named_or_duplicated_bands_are_refused(
    tmp_path: Path, descriptions: tuple[str, ...], problem: str
) -> None:
    path = _four_bands(tmp_path / "a.tif", descriptions)
    with pytest.raises(InputError) as err:
        _indexes(path)
    message = str(err.value)
    assert message.startswith(f"{path}: the optical bands are described as ")
    assert problem in message and "\n" not in message
    # explicit band indices are the user's choice of positions: honoured
    assert _indexes(path, (4, 3, 2, 1)) == [4, 3, 2, 1]


def test_rasters_without_crs_on_different_grids_say_so(tmp_path: Path) -> None:
    optical = write_raster(tmp_path / "o.tif", np.ones((3, 16, 16), dtype=np.uint8), crs=None)
    sar = write_raster(tmp_path / "s.tif", np.ones((1, 8, 8), dtype=np.float32), crs=None)
    with pytest.raises(InputError) as err:
        check_overlap(optical, sar)
    message = str(err.value)
    assert message.startswith(f"{sar}: neither this SAR raster nor the optical raster")
    assert "8x8 px vs 16x16 px" in message
    same = write_raster(tmp_path / "t.tif", np.ones((1, 16, 16), dtype=np.float32), crs=None)
    check_overlap(optical, same)  # same grid without CRS: paired pixel for pixel


def test_a_crs_on_both_still_checks_the_overlap(tmp_path: Path) -> None:
    optical = write_raster(tmp_path / "o.tif", np.ones((3, 16, 16), dtype=np.uint8))
    far = write_raster(
        tmp_path / "s.tif",
        np.ones((1, 16, 16), dtype=np.float32),
        transform=from_origin(900_000, 3_400_000, 10, 10),
    )
    with pytest.raises(InputError, match="does not overlap"):
        check_overlap(optical, far)


@pytest.mark.parametrize(
    ("name", "document", "problem"),
    [
        ("deep", "[" * 100_000 + "]" * 100_000, "nested deeper than 32 levels"),
        ("huge", json.dumps({"x": "a" * (17 * 2**20)}), "more than the 16,777,216"),
    ],
)
def test_crafted_adapter_metadata_is_refused_in_one_line(
    tmp_path: Path, name: str, document: str, problem: str
) -> None:
    header = json.dumps({"__metadata__": {"gopt_geo": document}}).encode()
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(InputError) as err:
        read_adapter_metadata(path)
    assert str(err.value).startswith(f"{path}: gopt-geo metadata ") and problem in str(err.value)
