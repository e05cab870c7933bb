"""Config loading: defaults, YAML, overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gopt_geo.config import load_config
from gopt_geo.errors import InputError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_overrides_are_typed(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "model.prompt_dim=32",
            "train.lr=0.01",
            "data.root=/x",
            "data.aux_bands=[NIR, VV]",
            "train.class_weights=null",
        ],
    )
    assert cfg.model.prompt_dim == 32 and cfg.train.lr == 0.01
    assert cfg.data.root == "/x" and cfg.data.aux_bands == ["NIR", "VV"]
    assert cfg.train.class_weights is None


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  promt_dim: 32\n")
    with pytest.raises(
        InputError,
        match=r"c.yaml: unknown config key\(s\) model.promt_dim; "
        r"valid keys in model: .*prompt_dim",
    ):
        load_config(path)


def test_wrong_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"model.prompt_dim: expected int, got 'big'"):
        load_config(None, ["model.prompt_dim=big"])
    with pytest.raises(InputError, match=r"train.lr: expected float, got \[1, 2\]"):
        load_config(None, ["train.lr=[1, 2]"])


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.model.variant in {"gopt", "optical_only", "early_fusion", "static_prompt"}


def test_the_optical_yardstick_gets_the_optical_bands_only() -> None:
    """optical_all_bands sees every optical band and no SAR, whatever aux_bands says
    (with SAR it would be a late-fusion model, not the optical baseline)."""
    import warnings

    base = ["model.variant=optical_all_bands", "data.optical_bands=[B, G, R, NIR, SWIR]"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default aux_bands: nothing to say
        routing = load_config(None, base).band_routing()
    assert routing.aux_bands == ("NIR", "SWIR") and routing.sar_bands == ("VV", "VH")
    with pytest.warns(UserWarning, match=r"optical bands only, \['NIR', 'SWIR'\] \(not the SAR"):
        named = load_config(None, [*base, "data.aux_bands=[NIR, VV]"]).band_routing()
    assert named.aux_bands == ("NIR", "SWIR")
    # the other variants route as configured
    gopt = load_config(None, ["data.aux_bands=[NIR, VV]"]).band_routing()
    assert gopt.aux_bands == ("NIR", "VV")
    assert load_config(None, []).band_routing().aux_bands == ("NIR", "VV", "VH")
    rgb_only = ["model.variant=optical_all_bands", "data.optical_bands=[R, G, B]"]
    with pytest.raises(InputError, match=r"optical_all_bands: no optical band besides the RGB"):
        load_config(None, rgb_only).band_routing()


def test_a_bare_off_in_yaml_turns_the_scene_cache_off(tmp_path: Path) -> None:
    # YAML 1.1 reads `off` as false; the documented value must still work
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  scene_cache_dir: off\n")
    assert load_config(str(path), []).data.scene_cache_dir == "off"
    assert load_config(None, ["data.scene_cache_dir=off"]).data.scene_cache_dir == "off"
    path.write_text("data:\n  patch_size: off\n")  # other keys still refuse it
    with pytest.raises(InputError, match="data.patch_size"):
        load_config(str(path), [])
