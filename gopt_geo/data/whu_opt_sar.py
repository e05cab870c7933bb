"""WHU-OPT-SAR (Li et al., 2022), written the way torchgeo writes its datasets.

100 GF-1 optical scenes (RGB + NIR, 5 m, 5556 x 3704 px) with co-located GF-3 SAR (one
band) and land-cover labels over Hubei, China. The official 80/20 scene split ships with
this package (``whu_opt_sar_split.txt``, unchanged from the dataset's repository). The
validation scenes are the last ``val_scenes`` of the official training list, so the test
scenes are never seen during model selection.

Not known about the release, so not assumed here: whether the files carry a CRS (scenes
without one are placed on a pixel grid, see rasters.py), the optical band order
(``optical_bands``), the SAR product's units (``sar_units``).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import ClassVar

from torchgeo.datasets import DatasetNotFoundError
from torchgeo.datasets.utils import Sample

from ..errors import InputError
from .bands import BandRouting
from .classes import WHU_OPT_SAR_CLASSES, ClassScheme
from .scenes import OpticalSarScenes


class WHUOptSarNotFoundError(InputError, DatasetNotFoundError):
    """WHU-OPT-SAR is missing or incomplete under ``root``; the message says what and where."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)


def official_split() -> dict[str, list[str]]:
    """The official split as ``{"train": [...], "test": [...]}`` of scene names (no suffix)."""
    text = resources.files("gopt_geo.data").joinpath("whu_opt_sar_split.txt").read_text()
    split: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.endswith(":"):
            current = split.setdefault(line[:-1].lower(), [])
        elif current is not None:
            current.append(Path(line).stem)
    return split


class WHUOptSar(OpticalSarScenes):
    """WHU-OPT-SAR land-cover segmentation dataset (optical + SAR).

    Dataset features:

    * 100 scenes of 5556 x 3704 px, 5 m; GF-1 optical (4 bands), GF-3 SAR (1 band)
    * 8 label codes: 0 background (ignored), 10 farmland, 20 city, 30 village,
      40 water, 50 forest, 60 road, 70 others

    Dataset format: ``optical/``, ``sar/`` and ``lbl/`` folders of ``<scene>.tif``.

    If you use this dataset in your research, please cite: Li, X. et al. (2022). MCANet:
    A joint semantic segmentation framework of optical and SAR images for land use
    classification. Int. J. Appl. Earth Obs. Geoinf. 106, 102638,
    https://doi.org/10.1016/j.jag.2021.102638
    """

    optical_dir: ClassVar[str] = "optical"
    sar_dir: ClassVar[str] = "sar"
    label_dir: ClassVar[str] = "lbl"
    default_classes: ClassVar[ClassScheme | None] = WHU_OPT_SAR_CLASSES
    scene_shape: ClassVar[tuple[int, int]] = (3704, 5556)
    optical_bands: ClassVar[tuple[str, ...]] = ("R", "G", "B", "NIR")
    sar_bands: ClassVar[tuple[str, ...]] = ("SAR",)
    sources: ClassVar[str] = (
        "https://github.com/AmberHen/WHU-OPT-SAR-dataset (Baidu pan or Google Drive links "
        "in its README)"
    )

    def __init__(
        self,
        root: str | Path = "data",
        split: str = "train",
        val_scenes: int = 8,
        routing: BandRouting | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        scenes: dict[str, list[str]] | None = None,
    ) -> None:
        """Initialise the dataset for one split.

        Args:
            root: folder holding ``optical/``, ``sar/`` and ``lbl/``
            split: ``train``, ``val`` or ``test``
            val_scenes: scenes taken from the end of the official training list for
                validation
            routing: band names and routing (default: R, G, B, NIR optical; one SAR band)
            transforms: applied to each sample after cleaning
            scenes: override the split (e.g. a subset for quick experiments)

        Raises:
            WHUOptSarNotFoundError: if the folders or any split scene are missing
        """
        self.val_scenes = val_scenes
        self._scene_override = scenes
        super().__init__(
            root,
            split=split,
            scenes=scenes,
            routing=routing or BandRouting(self.optical_bands, self.sar_bands, sar_units="db"),
            classes=WHU_OPT_SAR_CLASSES,
            labels=True,
            transforms=transforms,
        )

    def default_split(self) -> dict[str, list[str]]:
        official = official_split()
        train = official["train"]
        n_val = self.val_scenes
        return {
            "train": train[: len(train) - n_val],
            "val": train[len(train) - n_val :],
            "test": official["test"],
        }

    def _verify(self) -> None:
        """Every folder and every scene of the split must be there (the official split,
        or the ``scenes`` given: a subset of the release, or a replica, need only those)."""
        layout = (
            f"expected {self.root}/{{{self.optical_dir},{self.sar_dir},{self.label_dir}}}/"
            f"<scene>.tif for the 100 scenes of the official split; get the data from "
            f"{self.sources}"
        )
        dirs = [
            d
            for d in (self.optical_dir, self.sar_dir, self.label_dir)
            if not (self.root / d).is_dir()
        ]
        if dirs:
            raise WHUOptSarNotFoundError(
                f"WHU-OPT-SAR not found: {self.root} lacks {', '.join(d + '/' for d in dirs)}; "
                + layout
            )
        split = self._scene_override or official_split()
        wanted = [n for names in split.values() for n in names]
        missing = [
            f"{d}/{n}.tif"
            for n in wanted
            for d in (self.optical_dir, self.sar_dir, self.label_dir)
            if not (self.root / d / f"{n}.tif").exists()
        ]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise WHUOptSarNotFoundError(
                f"WHU-OPT-SAR incomplete: {len(missing)} file(s) missing under {self.root} "
                f"({shown}); " + layout
            )
