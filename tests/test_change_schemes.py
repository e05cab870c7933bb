"""``change`` across class schemes (issues 24, 25): classes matched by name, maps with no
class in common refused, maps from other tools compared with a given scheme."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import write_raster

from gopt_geo.change import change_maps
from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES, ClassScheme, LandCoverClass
from gopt_geo.errors import InputError
from gopt_geo.outputs.grid import Grid
from gopt_geo.outputs.writers import StripRasterWriter, class_map_metadata

NODATA = 255


def _renumbered(scheme: ClassScheme, offset: int) -> ClassScheme:
    return ClassScheme(
        tuple(LandCoverClass(i + offset, c.name, c.color) for i, c in enumerate(scheme.classes))
    )


def _write(path: Path, codes: np.ndarray, scheme: ClassScheme) -> Path:
    with rasterio.open(write_raster(path.with_suffix(".grid.tif"), codes)) as src:
        grid = Grid(src.crs, src.transform, src.width, src.height)
    writer = StripRasterWriter(
        path, grid, count=1, dtype="uint8", nodata=NODATA, overview_resampling="MODE"
    )
    writer.write(codes[None])
    return writer.finish(**class_map_metadata(scheme, NODATA))  # type: ignore[arg-type]


@pytest.fixture
def arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    before = np.kron(rng.choice([10, 40, 50], (4, 4)), np.ones((16, 16), int)).astype(np.uint8)
    after = before.copy()
    after[:16, :32] = 40  # some change
    return before, after


def test_a_class_renumbered_in_the_other_scheme_is_not_a_change(arrays, tmp_path: Path) -> None:
    before, after = arrays
    scheme = WHU_OPT_SAR_CLASSES
    other = _renumbered(scheme, 1)  # the same names, codes 1..7
    to_other = {c.code: o.code for c, o in zip(scheme.classes, other.classes, strict=True)}
    after_other = np.vectorize(to_other.get)(after).astype(np.uint8)
    b = _write(tmp_path / "b.tif", before, scheme)
    same = change_maps(b, _write(tmp_path / "a.tif", after, scheme), tmp_path / "same")
    across = change_maps(b, _write(tmp_path / "o.tif", after_other, other), tmp_path / "across")
    expected = float((before != after).mean())
    assert same.changed_share == pytest.approx(expected)
    assert across.changed_share == pytest.approx(expected)  # not 100 %: matched by name
    assert "matched by name" in across.summary() and "water (40 -> 4)" in across.summary()
    assert "matched by name" not in same.summary()


def test_maps_with_no_class_in_common_are_refused(arrays, tmp_path: Path) -> None:
    before, after = arrays
    strangers = ClassScheme(
        tuple(LandCoverClass(c.code, f"x{c.code}", c.color) for c in WHU_OPT_SAR_CLASSES.classes)
    )
    b = _write(tmp_path / "b.tif", before, WHU_OPT_SAR_CLASSES)
    a = _write(tmp_path / "a.tif", after, strangers)
    with pytest.raises(InputError) as err:
        change_maps(b, a, tmp_path / "out")
    assert str(err.value).startswith(f"{a}: no class in common with {b}")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_maps_from_other_tools_take_a_given_scheme(arrays, tmp_path: Path) -> None:
    before, after = arrays
    b = write_raster(tmp_path / "b.tif", before)  # plain rasters: no class tags at all
    a = write_raster(tmp_path / "a.tif", after)
    with pytest.raises(InputError, match="give the scheme with --classes"):
        change_maps(b, a, tmp_path / "refused")
    result = change_maps(b, a, tmp_path / "out", classes=WHU_OPT_SAR_CLASSES)
    assert result.changed_share == pytest.approx(float((before != after).mean()))


def test_evaluate_and_change_commands_take_a_scheme_for_other_tools_maps(
    arrays, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from gopt_geo.cli import app

    before, after = arrays
    pred = write_raster(tmp_path / "pred.tif", after)  # another tool's map: no tags
    ref = write_raster(tmp_path / "ref.tif", before)
    within = write_raster(tmp_path / "within.tif", (np.arange(64)[:, None] < 16) * np.ones(64))
    runner = CliRunner()
    refused = runner.invoke(app, ["evaluate", str(pred), str(ref)])
    assert refused.exit_code == 2 and "--classes" in refused.output
    out = tmp_path / "m.json"
    done = runner.invoke(
        app, ["evaluate", str(pred), str(ref), "--classes", "whu_opt_sar", "-o", str(out)]
    )
    assert done.exit_code == 0, done.output
    assert json.loads(out.read_text())["pixels"] == before.size
    part = runner.invoke(
        app,
        ["evaluate", str(pred), str(ref), "--classes", "whu_opt_sar", "--within", str(within)]
        + ["-o", str(tmp_path / "w.json")],
    )
    assert part.exit_code == 0, part.output
    assert json.loads((tmp_path / "w.json").read_text())["pixels"] == 16 * 64
    bad = runner.invoke(app, ["evaluate", str(pred), str(ref), "--classes", "nope"])
    assert bad.exit_code == 2 and "--classes: unknown class scheme 'nope'" in bad.output
    changed = runner.invoke(
        app,
        ["change", str(ref), str(pred), "-o", str(tmp_path / "c"), "--classes", "whu_opt_sar"],
    )
    assert changed.exit_code == 0, changed.output
    assert "changed class" in changed.output
