"""Where the scenes of a run come from: paths and URLs, STAC items, folders, manifests.

Every source ends as a :class:`~gopt_geo.inference.scene.Scene` (:mod:`.scene`). A STAC
item is read by :mod:`.stac_scenes` (its bands matched to assets and stacked by a VRT);
this module takes the scenes a command names - one scene for ``predict``
(:func:`single_scene`), many for ``predict-many`` (:func:`collect_scenes`) - whatever
their source.


**Folders and manifests.** ``--optical-dir``/``--sar-dir`` pair files by stem; a scene
whose SAR is missing is kept with its :attr:`Scene.problem` (reported as a failed scene,
never paired with a guess). gopt-geo's own outputs in such a folder (class maps and their
siblings, run mosaics: ``-o`` given the input folder) are never taken as scenes; a
warning names the ones skipped. A manifest (CSV with a header, or YAML) lists ``id,
optical, sar``; relative paths are relative to the manifest, and an ``optical`` or
``sar`` entry may be a URL or a STAC item. A CSV may be saved by a spreadsheet: UTF-8
with or without a byte-order mark, or else Windows-1252/Latin-1 (read so, with a
warning), with a comma, semicolon or tab between the columns.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..data.bands import BandRouting
from ..data.classes import CLASSES_TAG
from ..errors import InputError
from ..io import display_name, gdal_path, is_remote, raster_stem
from ..outputs.naming import FAMILY
from .scene import STAC_SUFFIXES, Scene, gdal_string, href_suffix, is_stac, safe_id
from .stac_scenes import (
    ASSET_KEYS,
    COMMON_NAMES,
    match_assets,
    one_item,
    parse_asset_map,
    read_stac,
    stac_scene,
    stac_scenes,
    stac_stack,
    stack_assets,
)

__all__ = [  # the scene record and the STAC readers stay importable from here
    "ASSET_KEYS",
    "COMMON_NAMES",
    "RASTER_SUFFIXES",
    "STAC_SUFFIXES",
    "Scene",
    "collect_scenes",
    "is_stac",
    "match_assets",
    "parse_asset_map",
    "read_stac",
    "safe_id",
    "scenes_from_dirs",
    "scenes_from_manifest",
    "single_scene",
    "stac_scene",
    "stac_scenes",
    "stac_stack",
    "stack_assets",
]

#: File suffixes a scene folder's rasters may have (others, e.g. ``.aux.xml``, are skipped).
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")


def _absolute(path: str | None) -> str | None:
    """A local path made absolute; URLs, GDAL names, VRT documents and '' unchanged."""
    if not path or is_remote(path):
        return path
    return str(Path(gdal_path(path)).absolute())


# ---------------------------------------------------------------------------- one scene


def single_scene(
    optical: str | os.PathLike[str],
    sar: str | os.PathLike[str] | None,
    routing: BandRouting,
    assets: Mapping[str, tuple[str, int]] | None = None,
) -> Scene:
    """What ``gopt-geo predict SCENE [--sar SAR]`` maps. Each side is a raster (path, URL,
    VRT) or a STAC document of one item; without ``sar`` the SAR bands come from the
    optical STAC item when it has them."""
    if is_stac(optical):
        scene = stac_scene(one_item(optical), routing, assets, origin=str(optical))
        if scene.problem:
            raise InputError(scene.problem)
    else:  # as given: messages and reports then name it as the user did
        scene = Scene(safe_id(raster_stem(str(optical))), str(optical))
    if sar is None:
        return scene
    if not is_stac(sar):
        return dataclasses.replace(scene, sar=str(sar))
    if not routing.sar_bands:
        raise InputError(f"{sar}: the model was trained without SAR bands; predict without SAR")
    stacked = stac_stack(one_item(sar), "SAR", routing, assets, origin=str(sar))
    if stacked is None:
        raise InputError(
            f"{sar}: the STAC item has no assets for the SAR bands "
            f"({', '.join(routing.sar_bands)}); map them with --assets BAND=KEY,..."
        )
    return dataclasses.replace(scene, sar=stacked)


# ---------------------------------------------------------------------------- many scenes


#: Name suffixes of the rasters a prediction writes beside its class map (outputs.naming).
_OUTPUT_RASTERS = tuple(v for v in FAMILY.values() if v.endswith(".tif"))


def _tagged_by_us(path: Path) -> bool:
    """True when ``path`` is a class map gopt-geo wrote (it carries the class scheme tag)."""
    import rasterio

    try:
        with rasterio.open(path) as src:
            return CLASSES_TAG in src.tags() or CLASSES_TAG in src.tags(1)
    except Exception:  # not readable: not ours to judge; the scene reports it
        return False


def is_own_output(path: Path) -> bool:
    """Whether a raster in a scene folder is one of gopt-geo's outputs: a class map (or a
    sibling of one: confidence, probabilities, uncertainty) that carries gopt-geo's class
    tag, or a run's class-map mosaic (``mosaic_<CRS>.vrt`` of ``*_classes.tif``)."""
    name = path.name
    if name.startswith("mosaic_") and path.suffix.lower() == ".vrt":
        try:
            head = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
        return "<Description>land cover class</Description>" in head and "_classes.tif" in head
    for suffix in _OUTPUT_RASTERS:
        if name.endswith(suffix):
            class_map = path.with_name(name[: -len(suffix)] + FAMILY["class_map"])
            return class_map.is_file() and _tagged_by_us(class_map)
    return False


def _rasters(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"{folder}: {role} folder not found")
    files: dict[str, Path] = {}
    own: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in RASTER_SUFFIXES:
            if is_own_output(path):  # -o was this folder: never map our own maps
                own.append(path.name)
                continue
            if path.stem in files:
                raise InputError(
                    f"{folder}: two {role} rasters are named {path.stem} "
                    f"({files[path.stem].name}, {path.name}); keep one per scene"
                )
            files[path.stem] = path
    if own:
        shown = ", ".join(own[:5]) + (f" and {len(own) - 5} more" if len(own) > 5 else "")
        warnings.warn(
            f"{folder}: skipped {len(own)} gopt-geo output(s) in this {role} folder ({shown}); "
            "the tool's own outputs are never taken as scenes",
            UserWarning,
            stacklevel=3,
        )
    return files


def scenes_from_dirs(
    optical_dir: str | os.PathLike[str], sar_dir: str | os.PathLike[str] | None
) -> list[Scene]:
    """One scene per optical raster, paired with the SAR raster of the same stem. An
    optical raster without one is kept with a problem (reported, never guessed)."""
    optical = _rasters(Path(optical_dir), "optical")
    if not optical:
        raise InputError(f"{optical_dir}: no rasters ({', '.join(RASTER_SUFFIXES)}) in this folder")
    sar = _rasters(Path(sar_dir), "SAR") if sar_dir is not None else None
    scenes = []
    for stem, path in optical.items():
        if sar is None:
            scenes.append(Scene(safe_id(stem), gdal_string(path)))
        elif stem in sar:
            scenes.append(Scene(safe_id(stem), gdal_string(path), gdal_string(sar[stem])))
        else:
            scenes.append(
                Scene(
                    safe_id(stem),
                    gdal_string(path),
                    problem=f"{path}: no SAR raster named {stem}.* in {sar_dir}",
                )
            )
    return scenes


#: Column separators a spreadsheet may save a CSV with (its locale decides).
_DELIMITERS = (",", ";", "\t")


def _manifest_text(path: Path) -> str:
    """A manifest's text: UTF-8 (a byte-order mark, as spreadsheets write, removed), else
    Windows-1252 or Latin-1, which every byte sequence is, with a warning that says so."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read the manifest ({err.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        where = f"byte {err.start}"
    for encoding, label in (("cp1252", "Windows-1252"), ("latin-1", "Latin-1")):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        warnings.warn(
            f"{path}: not UTF-8 (at {where}); read as {label} (save it as UTF-8 to be sure "
            "non-ASCII names are read as meant)",
            UserWarning,
            stacklevel=4,
        )
        return text.lstrip("\ufeff")
    raise InputError(f"{path}: not a text file in UTF-8 or Latin-1")  # unreachable


def _csv_rows(path: Path, text: str) -> list[dict[str, Any]]:
    lines = text.splitlines()
    header = next((line for line in lines if line.strip()), "")
    delimiter = max(_DELIMITERS, key=header.count) if header else ","
    rows = list(csv.DictReader(lines, delimiter=delimiter))
    columns = [k.strip().lstrip("\ufeff").lower() for k in (rows[0].keys() if rows else [])]
    if rows and "optical" not in columns:
        raise InputError(
            f"{path}: no 'optical' column in the header (found: {', '.join(columns) or 'none'}); "
            "a manifest's header is id,optical,sar"
        )
    return [
        {k.strip().lstrip("\ufeff").lower(): (v or "").strip() for k, v in r.items() if k}
        for r in rows
    ]


def _manifest_rows(path: Path) -> list[dict[str, Any]]:
    text = _manifest_text(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if isinstance(data, dict):
            data = data.get("scenes")
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise InputError(
                f"{path}: expected a list of scenes (id, optical, sar), or 'scenes:' holding one"
            )
        return data
    return _csv_rows(path, text)


def scenes_from_manifest(
    path: str | os.PathLike[str],
    routing: BandRouting,
    assets: Mapping[str, tuple[str, int]] | None = None,
) -> list[Scene]:
    """Scenes listed in a CSV (header ``id,optical,sar``) or YAML manifest. ``id`` and
    ``sar`` may be empty; relative paths are relative to the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    rows = _manifest_rows(path)
    if not rows:
        raise InputError(f"{path}: the manifest lists no scenes")

    def locate(entry: str) -> str:
        entry = str(entry)
        if is_remote(entry) or entry.startswith("file://") or Path(entry).is_absolute():
            return entry
        return str(path.parent / entry)

    scenes = []
    for n, row in enumerate(rows, start=1):
        optical, sar = row.get("optical"), row.get("sar") or None
        if not optical:
            raise InputError(
                f"{path}: scene {n} has no 'optical' entry (columns: id, optical, sar)"
            )
        try:
            scene = single_scene(locate(optical), locate(sar) if sar else None, routing, assets)
        except InputError as err:
            scene = Scene(safe_id(str(row.get("id") or f"row_{n}")), "", problem=str(err))
        scene_id = safe_id(str(row["id"])) if row.get("id") else scene.id
        scenes.append(
            Scene(scene_id, scene.optical, scene.sar, scene.problem, origin=f"{path}:{n}")
        )
    return scenes


def collect_scenes(
    sources: Iterable[str | os.PathLike[str]],
    routing: BandRouting,
    *,
    optical_dir: str | os.PathLike[str] | None = None,
    sar_dir: str | os.PathLike[str] | None = None,
    assets: Mapping[str, tuple[str, int]] | None = None,
) -> list[Scene]:
    """Every scene ``predict-many`` is given: manifests (``.csv``, ``.yaml``), STAC
    documents (``.json``), rasters, and the pairs of ``optical_dir``/``sar_dir``. A scene
    still without SAR takes ``sar_dir``'s raster of the same id; the model needing SAR
    and none found is the scene's problem. Ids must be unique (they name folders)."""
    scenes: list[Scene] = []
    for source in sources:
        text = str(source)
        suffix = href_suffix(text)
        if suffix in (".csv", ".yaml", ".yml"):
            scenes += scenes_from_manifest(text, routing, assets)
        elif is_stac(text):
            scenes += stac_scenes(text, routing, assets)
        else:
            scenes.append(single_scene(text, None, routing, assets))
    if optical_dir is not None:
        scenes += scenes_from_dirs(optical_dir, sar_dir)
    if not scenes:
        raise InputError(
            "no scenes given (give manifests, STAC documents, rasters or --optical-dir)"
        )
    sar_files = _rasters(Path(sar_dir), "SAR") if sar_dir is not None else {}
    needs_sar = bool(routing.sar_bands)
    completed = []
    for s in scenes:
        if s.problem is None and s.sar is None and needs_sar:
            match = sar_files.get(s.id)
            if match is not None:
                s = Scene(s.id, s.optical, gdal_string(match), origin=s.origin)
            else:
                where = f" and none named {s.id}.* in {sar_dir}" if sar_dir is not None else ""
                s = Scene(
                    s.id,
                    s.optical,
                    problem=f"{display_name(s.optical)}: no SAR input for this scene{where}",
                    origin=s.origin,
                )
        completed.append(s)
    # local paths made absolute: a worker may run in another folder
    completed = [
        dataclasses.replace(s, optical=_absolute(s.optical), sar=_absolute(s.sar))
        for s in completed
    ]
    seen: dict[str, Scene] = {}
    for s in completed:
        if s.id in seen:
            first = seen[s.id].origin or display_name(seen[s.id].optical)
            raise InputError(
                f"scene id {s.id} is given twice ({first}; {s.origin or display_name(s.optical)}); "
                "ids name the output folders, give each scene its own (manifest 'id' column)"
            )
        seen[s.id] = s
    return completed
