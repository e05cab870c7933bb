"""Config and class-name validation (issue 24): every ``--set`` mistake, every unusable
class name is one line naming it; names that are usable are escaped in every XML and
JSON written. And the optical scale check that training runs on its band means."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gopt_geo.config import check_optical_scale, load_config
from gopt_geo.data.classes import ClassScheme, LandCoverClass, scheme_from_declaration
from gopt_geo.errors import InputError
from gopt_geo.outputs.styles import class_map_qml, vector_qml
from gopt_geo.outputs.writers import class_map_metadata, class_rat_xml


def _one_line(err: BaseException) -> str:
    assert "\n" not in str(err)
    return str(err)


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("train.lr=[oops", r"--set train\.lr=\[oops: not valid YAML \("),
        ("train.lr={a: [}", r"not valid YAML"),
        ("train.lr=!!python/object/apply:os.system [true]", r"not valid YAML"),  # no code
        ("train.lr=", r"--set train\.lr=: no value \(write null"),
        ("train.lr=  ", r"no value"),
        ("=3", r"expected key=value with a dotted key"),
        ("train..lr=3", r"expected key=value with a dotted key"),
        ("train.lr.x=3", r"train\.lr: expected float, got \{'x': 3\}"),
        ("train.lr=fast", r"train\.lr: expected a number, got 'fast'"),
        ("train.lr=.nan", r"train\.lr: expected a finite number"),
        ("train.epochs=[1, 2]", r"train\.epochs: expected int, got \[1, 2\]"),
        ("data.batch_size={a: 1}", r"data\.batch_size: expected int"),
        ("train=5", r"train: expected a mapping, got 5"),
        ("train.lrr=0.1", r"unknown config key\(s\) train\.lrr"),
        ("nosuch.key=1", r"unknown config key\(s\) nosuch"),
        ("train.lr=" + "1" * 20_000, r"longer than"),
    ],
)
def test_set_mistakes_are_one_line(override: str, says: str) -> None:
    with pytest.raises(InputError, match=says) as caught:
        load_config(None, [override])
    _one_line(caught.value)


def test_set_values_that_are_fine() -> None:
    cfg = load_config(None, ["train.lr=1e-3", "data.root = /x", "data.aux_bands=null"])
    assert cfg.train.lr == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as text
    assert cfg.data.root == "/x" and cfg.data.aux_bands is None
    assert load_config(None, ["data.root=''"]).data.root == ""


def test_config_files_in_other_encodings_or_not_files(tmp_path: Path) -> None:
    bom = tmp_path / "bom.yaml"
    bom.write_bytes("train:\n  epochs: 3\n".encode("utf-8-sig"))
    assert load_config(bom).train.epochs == 3
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("data:\n  root: d\xe9j\xe0\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin\.yaml: not UTF-8 text"):
        load_config(latin)
    with pytest.raises(InputError, match="not a file"):
        load_config(tmp_path)
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(InputError, match=r"deep\.yaml: "):
        load_config(deep)


# -- class names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("Water\x07", r"not printable \(U\+0007\)"),
        ("Fo\x00rest", r"U\+0000"),
        ("a\nb", r"U\+000A"),
        ("", "empty"),
        ("   ", "empty"),
        ("x" * 101, "longer than 100"),
        (["Water"], "expected text"),
    ],
)
def test_unusable_class_names_are_refused(name: object, says: str) -> None:
    with pytest.raises(ValueError, match=rf"classes\[0\]\.name: .*{says}") as caught:
        scheme_from_declaration([{"code": 1, "name": name}, {"code": 2, "name": "b"}], None)
    _one_line(caught.value)
    with pytest.raises(ValueError, match=says):  # an adapter's scheme is checked the same
        ClassScheme((LandCoverClass(1, name, (1, 2, 3)),))  # type: ignore[arg-type]


def test_a_bad_class_name_in_a_config_is_one_line() -> None:
    with pytest.raises(InputError, match=r"name: .*not printable"):
        load_config(None, ['data.classes=[{code: 1, name: "Wa\\x07ter"}]']).class_scheme()


def test_colours_are_checked_without_a_traceback() -> None:
    for colour in (5, "red", [1, 2], [1, 2, 300], [1.5, 2, 3], [True, 0, 0]):
        with pytest.raises(ValueError, match=r"classes\[0\]\.colour: expected \[r, g, b\]"):
            scheme_from_declaration([{"code": 1, "name": "a", "colour": colour}], None)
    (c,) = scheme_from_declaration(
        [{"code": 1, "name": 2020, "colour": [255.0, 0, 0]}], None
    ).classes
    assert c.name == "2020" and c.color == (255, 0, 0)


def test_names_with_markup_are_escaped_in_xml_and_json() -> None:
    tricky = "Roads & \"rails\" <tracks> 'x' é"
    scheme = ClassScheme((LandCoverClass(1, tricky, (1, 2, 3)), LandCoverClass(2, "b", (4, 5, 6))))
    for document in (class_rat_xml(scheme), class_map_qml(scheme), vector_qml(scheme)):
        root = ET.fromstring(document)  # valid XML
        assert any(tricky in (e.text or "") or tricky in e.attrib.values() for e in root.iter())
    tags = class_map_metadata(scheme, 255)["tags"]
    written = json.loads(tags["GOPT_GEO_CLASSES"])  # valid JSON, the name intact
    assert [c["name"] for c in written["classes"]][0] == tricky


# -- optical scale plausibility -----------------------------------------------------------


def test_reflectance_in_range_says_nothing() -> None:
    means = {"B": 800.0, "G": 900.0, "R": 1000.0, "NIR": 2500.0}
    assert check_optical_scale(means, 0.0001, 0.0) == []
    assert check_optical_scale({"B": 0.08, "NIR": 0.3}, None, None) == []  # reflectance as is
    assert check_optical_scale({"B": 900.0, "NIR": 2600.0}, None, None) == []  # digital numbers


def test_a_scale_wrong_by_ten_is_named() -> None:
    means = {"B": 800.0, "G": 900.0, "R": 1000.0, "NIR": 2500.0}
    (warning,) = [w for w in check_optical_scale(means, 0.001, 0.0) if "NIR" in w]
    assert "NIR" in warning and "2.5" in warning and "data.optical_scale" in warning
    (low,) = check_optical_scale(means, 0.00001, 0.0)
    assert "B 0.008" in low and "NIR 0.025" in low and "data.optical_scale" in low


def test_per_band_scale_and_offset() -> None:
    means = {"B": 1800.0, "NIR": 3500.0}  # Sentinel-2 baseline 04.00: offset -1000
    assert check_optical_scale(means, [0.0001, 0.0001], [-1000.0, -1000.0]) == []
    (w,) = check_optical_scale(means, [0.0001, 0.01], [-1000.0, -1000.0])
    assert w.startswith("optical band NIR")


def test_training_warns_about_an_implausible_scale(scenes, tmp_path) -> None:
    from test_training import tiny_config

    from gopt_geo.training import train

    said: list[str] = []
    cfg = tiny_config(scenes, tmp_path / "run", "data.optical_scale=0.001", "train.epochs=1")
    train(cfg, log=said.append)
    warnings = [line for line in said if line.startswith("warning: optical band")]
    assert warnings and "data.optical_scale" in warnings[0]
    said.clear()
    train(tiny_config(scenes, tmp_path / "ok", "data.optical_scale=0.0001", "train.epochs=1"),
          log=said.append)  # fmt: skip
    assert not [line for line in said if line.startswith("warning: optical band")]
