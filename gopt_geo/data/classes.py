"""Class schemes: dataset label codes <-> contiguous training indices, names, colours.

Datasets store land cover as codes (WHU-OPT-SAR: 10, 20, ... 70, background 0). The
model predicts contiguous indices 0..K-1. The scheme is written into the adapter file
so that a predicted map carries the dataset's codes, names and colours, never the
internal indices.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# IGNORE_INDEX lives below data and models (both use it); re-exported here, where it
# has always been imported from
from gopt_geo.constants import IGNORE_INDEX

#: Raster tag holding a class map's scheme (codes, names, colours) as JSON.
CLASSES_TAG = "GOPT_GEO_CLASSES"
#: Longest class name: names label legends, raster attribute tables and file columns.
MAX_NAME_LENGTH = 100


def _channel(v: object) -> bool:
    """A colour channel: a whole number 0..255 (255.0 too, as JSON writers may save it)."""
    return (
        isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and float(v).is_integer()
        and 0 <= v <= 255
    )


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a class, or None. Names go into XML (QGIS styles, GDAL
    ``.aux.xml``, VRTs), JSON and vector columns: escaping handles ``<&"``, but XML 1.0
    has no way at all to hold a control character, so those are refused here, once."""
    if not isinstance(name, str):
        return f"expected text, got {name!r}"
    if not name.strip():
        return "empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"longer than {MAX_NAME_LENGTH} characters ({name[:20]!r}...)"
    if not name.isprintable():
        bad = sorted({f"U+{ord(c):04X}" for c in name if not c.isprintable()})
        return f"{name!r} holds characters that are not printable ({', '.join(bad)})"
    return None


@dataclass(frozen=True)
class LandCoverClass:
    """One class: the code in label/map rasters, a name and an RGB colour."""

    code: int
    name: str
    color: tuple[int, int, int]


@dataclass(frozen=True)
class ClassScheme:
    """The trainable classes, in index order, and the codes that mean "ignore"
    (background, unlabelled, ...: never trained on, never scored)."""

    classes: tuple[LandCoverClass, ...]
    ignore_codes: tuple[int, ...] = (0,)
    ignore_name: str = "background"

    def __post_init__(self) -> None:
        codes = self.codes
        problems = []
        if not codes:
            problems.append("no classes")
        if len(set(codes)) != len(codes):
            problems.append(
                f"duplicate codes {sorted(c for c in set(codes) if codes.count(c) > 1)}"
            )
        for n in (*self.names, self.ignore_name):
            why = name_problem(n)
            if why:
                problems.append(f"class name {why}")
        names = [str(n) for n in self.names]
        if len(set(names)) != len(names):
            problems.append("duplicate class names")
        # class codes are written into uint8 class maps; ignore codes are only ever read
        # from label rasters, so any integer a label raster's type holds will do (-1, 65535)
        outside = sorted(c for c in codes if not 0 <= c <= 254)
        if outside:
            problems.append(
                f"class codes {outside} are outside 0..254 (class maps store codes as uint8)"
            )
        huge = sorted(c for c in self.ignore_codes if not -(2**63) <= c < 2**63)
        if huge:
            problems.append(f"ignore codes {huge} are outside the 64-bit integer range")
        both = sorted(set(codes) & set(self.ignore_codes))
        if both:
            problems.append(f"codes {both} are both classes and ignored")
        if problems:
            raise ValueError("class scheme: " + "; ".join(problems))

    @property
    def ignore_code(self) -> int | None:
        """The first ignore code (the background's), or None."""
        return self.ignore_codes[0] if self.ignore_codes else None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def codes(self) -> list[int]:
        return [c.code for c in self.classes]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def valid_codes(self) -> set[int]:
        """Codes a label raster may contain (classes plus the ignore codes)."""
        return set(self.codes) | set(self.ignore_codes)

    def code_indices(self, codes: np.ndarray) -> np.ndarray:
        """Class index of each label code (int64, same shape); IGNORE_INDEX for ignore
        and unknown codes. Any integer code maps, negative or past 255 (-1 "no data" in
        an int16 label raster), without clamping it onto a class's code first."""
        codes = np.asarray(codes)
        out = np.full(codes.shape, IGNORE_INDEX, dtype=np.int64)
        if not np.issubdtype(codes.dtype, np.integer):  # float labels: whole numbers only
            whole = np.isfinite(codes) & (codes == np.round(codes))
            for i, c in enumerate(self.codes):
                out[whole & (codes == c)] = i
            return out
        for i, c in enumerate(self.codes):
            out[codes == c] = i
        return out

    def code_to_index_lut(self) -> np.ndarray:
        """A 256-entry lookup table code -> index (IGNORE_INDEX for ignore/unknown codes).

        Only for codes known to lie in 0..255 (a uint8 class map); label rasters may hold
        any integer, so map those with :meth:`code_indices`."""
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for i, c in enumerate(self.classes):
            lut[c.code] = i
        return lut

    def index_to_code_lut(self) -> np.ndarray:
        """A 256-entry lookup table index -> code (unknown indices map to 0)."""
        lut = np.zeros(256, dtype=np.uint8)
        for i, c in enumerate(self.classes):
            lut[i] = c.code
        return lut

    def colormap(self, nodata: int | None = None) -> dict[int, tuple[int, int, int, int]]:
        """A rasterio-style colour table keyed by code (RGBA); the ignore code and
        ``nodata`` (a class map's) are transparent."""
        cmap = {c.code: (*c.color, 255) for c in self.classes}
        for code in (*self.ignore_codes, nodata):
            if code is not None and 0 <= code <= 255:  # a uint8 table has no entry for -1
                cmap[code] = (0, 0, 0, 0)
        return cmap  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": [
                {"code": c.code, "name": c.name, "color": list(c.color)} for c in self.classes
            ],
            "ignore_codes": list(self.ignore_codes),
            "ignore_code": self.ignore_code,  # read by gopt-geo before several ignore codes
            "ignore_name": self.ignore_name,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassScheme:
        if "ignore_codes" in d:
            ignore = tuple(int(c) for c in d["ignore_codes"])
        else:
            ignore = () if d.get("ignore_code") is None else (int(d["ignore_code"]),)
        return cls(
            classes=tuple(
                LandCoverClass(int(c["code"]), str(c["name"]), tuple(int(v) for v in c["color"]))  # type: ignore[arg-type]
                for c in d["classes"]
            ),
            ignore_codes=ignore,
            ignore_name=d.get("ignore_name", "background"),
        )


#: WHU-OPT-SAR's label codes (its README); background (0) is ignored in training and
#: evaluation, as in the published results.
WHU_OPT_SAR_CLASSES = ClassScheme(
    classes=(
        LandCoverClass(10, "farmland", (204, 178, 102)),
        LandCoverClass(20, "city", (230, 25, 75)),
        LandCoverClass(30, "village", (245, 130, 48)),
        LandCoverClass(40, "water", (0, 92, 230)),
        LandCoverClass(50, "forest", (34, 139, 34)),
        LandCoverClass(60, "road", (128, 128, 128)),
        LandCoverClass(70, "others", (170, 110, 200)),
    ),
    ignore_codes=(0,),
)

#: Built-in class schemes, by the name a run config gives in ``data.classes``.
CLASS_SCHEMES: dict[str, ClassScheme] = {"whu_opt_sar": WHU_OPT_SAR_CLASSES}


def scheme_from_tags(tags: Mapping[str, str]) -> ClassScheme | None:
    """The class scheme gopt-geo embedded in a class map's tags, if any (and readable)."""
    text = tags.get(CLASSES_TAG)
    if not text:
        return None
    try:
        return ClassScheme.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError):
        return None


def names_from_tags(tags: Mapping[str, str], band_tags: Mapping[str, str]) -> dict[int, str]:
    """code -> name from a class raster's tags: gopt-geo's JSON scheme, else ``CLASS_<code>``
    tags (dataset or band level, as the synthetic label rasters have)."""
    scheme = scheme_from_tags(tags)
    if scheme is not None:
        names = {c.code: c.name for c in scheme.classes}
        if scheme.ignore_code is not None:
            names.setdefault(scheme.ignore_code, scheme.ignore_name)
        return names
    names = {}
    for group in (tags, band_tags):
        for key, value in group.items():
            if key.upper().startswith("CLASS_") and key[6:].isdigit():
                names[int(key[6:])] = value
    return names


#: Colours for declared classes that give none (distinct, colour-blind friendly first).
DEFAULT_COLOURS = (
    (0, 114, 178),
    (230, 159, 0),
    (0, 158, 115),
    (204, 121, 167),
    (86, 180, 233),
    (213, 94, 0),
    (240, 228, 66),
    (120, 120, 120),
)


def scheme_from_declaration(
    entries: list[dict[str, Any]], ignore_codes: list[int] | None, where: str = "data.classes"
) -> ClassScheme:
    """A scheme declared in a config: ``[{code, name, colour}, ...]`` plus ignore codes.

    ``colour`` (or ``color``) is optional; classes without one get a distinct default.
    """
    classes = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "code" not in entry:
            raise ValueError(f"{where}[{i}]: expected {{code, name, colour}}, got {entry!r}")
        unknown = sorted(set(entry) - {"code", "name", "colour", "color"})
        if unknown:
            raise ValueError(f"{where}[{i}]: unknown keys {unknown} (code, name, colour)")
        code = entry["code"]
        if not isinstance(code, int) or isinstance(code, bool):
            raise ValueError(f"{where}[{i}].code: expected an integer, got {code!r}")
        if not 0 <= code <= 254:
            raise ValueError(
                f"{where}[{i}].code: {code} is outside 0..254 (class maps store codes as "
                "uint8); if it marks unlabelled pixels, list it in data.ignore_codes instead"
            )
        colour = entry.get("colour", entry.get("color"))
        if colour is None:
            colour = DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)]
        if (
            not isinstance(colour, list | tuple)
            or len(colour) != 3
            or not all(_channel(v) for v in colour)
        ):
            raise ValueError(f"{where}[{i}].colour: expected [r, g, b] in 0..255, got {colour!r}")
        name = entry.get("name", f"class_{code}")
        if isinstance(name, int) and not isinstance(name, bool):
            name = str(name)  # YAML reads a name such as 2020 as a number
        why = name_problem(name)
        if why:
            raise ValueError(f"{where}[{i}].name: {why}")
        classes.append(LandCoverClass(code, name, tuple(int(v) for v in colour)))  # type: ignore[arg-type]
    ignore = tuple(ignore_codes if ignore_codes is not None else ())
    both = sorted({c.code for c in classes} & set(ignore))
    if both:
        raise ValueError(
            f"data.ignore_codes: {both} also declared as classes in {where}; a code is "
            "either a class or ignored"
        )
    return ClassScheme(tuple(classes), ignore)


def resolve_scheme(
    spec: str | list[dict[str, Any]], ignore_codes: list[int] | None, base: Path | None = None
) -> ClassScheme:
    """The class scheme a config names: a built-in name, a YAML/JSON file (relative to
    ``base``) holding ``classes:`` and ``ignore_codes:``, or an inline declaration.

    ``ignore_codes`` given in the config replace those of a built-in scheme or a file.
    """
    import yaml

    if isinstance(spec, list):
        return scheme_from_declaration(spec, ignore_codes)
    if spec in CLASS_SCHEMES:
        scheme = CLASS_SCHEMES[spec]
        if ignore_codes is None:
            return scheme
        return ClassScheme(scheme.classes, tuple(ignore_codes), scheme.ignore_name)
    path = Path(spec)
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise ValueError(
            f"data.classes: unknown class scheme {spec!r} (built in: "
            f"{', '.join(sorted(CLASS_SCHEMES))}; or a .yaml/.json file, or a list of classes)"
        )
    if base is not None and not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise ValueError(f"{path}: class scheme file not found (data.classes)")
    try:
        doc = yaml.safe_load(path.read_text())  # YAML reads JSON too
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML/JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), list):
        raise ValueError(f"{path}: expected a mapping with a 'classes' list")
    file_ignore = doc.get("ignore_codes")
    return scheme_from_declaration(
        doc["classes"], ignore_codes if ignore_codes is not None else file_ignore, str(path)
    )


def scheme_option(spec: str, option: str = "--classes") -> ClassScheme:
    """The scheme a command-line option names (a built-in scheme or a class file, as
    ``data.classes`` takes them), for maps from other tools that carry none; a bad value
    is one line naming the option."""
    from gopt_geo.errors import InputError

    try:
        return resolve_scheme(spec, None, Path.cwd())
    except ValueError as err:
        raise InputError(f"{option}: {str(err).replace('data.classes: ', '')}") from None
