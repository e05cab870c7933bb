"""One scene of a run, as plain strings any process can open.

Every source of scenes (:mod:`.sources`: paths and URLs, folders, manifests;
:mod:`.stac_scenes`: STAC items) ends as a :class:`Scene`: an id (the name of the
scene's output folder) and an optical and a SAR input as strings GDAL opens - a local
path, a URL (``https://``, ``s3://``, ``/vsicurl/``...), or a VRT document. A record of
plain strings is what a scene needs to travel to another process or machine (a Dask
worker) and be opened there.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..io import display_name, gdal_path, is_remote

#: Suffixes of STAC documents (an Item or an ItemCollection), local or remote.
STAC_SUFFIXES = (".json", ".geojson")


@dataclass(frozen=True)
class Scene:
    """One scene of a run: ``id`` names its output folder; ``optical`` and ``sar`` are what
    GDAL opens (path, URL or VRT document). ``problem`` says why the scene cannot be
    mapped (a missing SAR file, a band without an asset): it is reported, not run."""

    id: str
    optical: str
    sar: str | None = None
    problem: str | None = None
    #: where the scene was named (a STAC document, a manifest), for the run report
    origin: str | None = None

    def describe(self) -> dict[str, Any]:
        """The scene's inputs as the run report names them (never a VRT's XML)."""
        return {
            "id": self.id,
            "optical": display_name(self.optical),
            "sar": display_name(self.sar) if self.sar is not None else None,
            "origin": self.origin,
        }


def safe_id(text: str) -> str:
    """A scene id usable as a folder name on every system: letters, digits, ``._-``."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "scene"
    return cleaned


def gdal_string(path: str | os.PathLike[str]) -> str:
    """A plain string GDAL opens: local paths made absolute (a worker may run elsewhere
    in the tree), URLs through their virtual file system."""
    if is_remote(path):
        return str(gdal_path(path))
    return str(Path(gdal_path(path)).absolute())


def href_suffix(href: str) -> str:
    """The lower-case file suffix of a path or URL (a URL's query left out)."""
    path = urlparse(href).path if "://" in href else href
    return Path(path).suffix.lower()


def is_stac(href: str | os.PathLike[str]) -> bool:
    """True for what names a STAC Item or ItemCollection: a ``.json``/``.geojson`` file or URL."""
    return not str(href).lstrip().startswith("<") and href_suffix(str(href)) in STAC_SUFFIXES
