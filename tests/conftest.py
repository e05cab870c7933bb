"""Shared test helpers: tiny georeferenced rasters written on the fly, random-init
adapters, CLI argument lists and raster reads, so that no test module keeps its own copy.

Tests keep torch to one thread: the suite runs on 2 shared cores, and tiny models gain
nothing from more. Tests that start subprocesses, Dask clusters, DDP or the demo are
marked ``slow`` (``./run test -m "not slow"`` is the quick loop; ``./run test`` runs all).

Fixture names here are not reused by test modules (a module fixture of the same name
would shadow the shared one): a module that needs another scene or adapter names its own.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import os
import socket
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.warp import calculate_default_transform, reproject

from gopt_geo.data.bands import BandRouting
from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES, ClassScheme
from gopt_geo.data.synthetic import OPTICAL_BANDS, SAR_BANDS, SceneFiles

torch.set_num_threads(1)

UTM = "EPSG:32649"

#: Routing of the synthetic scenes' bands with plausible statistics, for models whose
#: adapters are made in a test rather than trained.
SYNTH_ROUTING = BandRouting(
    OPTICAL_BANDS,
    SAR_BANDS,
    rgb=("R", "G", "B"),
    mean={"B": 600, "G": 800, "R": 700, "NIR": 2500, "VV": -10.0, "VH": -17.0},
    std={"B": 300, "G": 300, "R": 350, "NIR": 900, "VV": 6.0, "VH": 6.0},
)

#: The same bands with rounder statistics: the routing of the shared ``adapter`` fixture
#: and of the adapters that the CLI, fault and many-scene tests compare with it (kept, so
#: that their maps stay what they were).
ADAPTER_ROUTING = BandRouting(
    OPTICAL_BANDS,
    SAR_BANDS,
    mean={"B": 800.0, "G": 900.0, "R": 900.0, "NIR": 2500.0, "VV": -12.0, "VH": -18.0},
    std={"B": 400.0, "G": 400.0, "R": 400.0, "NIR": 1000.0, "VV": 4.0, "VH": 4.0},
)

#: Options of every CLI ``predict`` in the tests: one small window, no progress bar.
QUICK_PREDICT = ("--window", "64", "--no-progress")


def make_adapter(
    path: Path,
    *,
    variant: str = "gopt",
    backbone: str = "test_efficientnet",
    routing: BandRouting = SYNTH_ROUTING,
    classes: ClassScheme = WHU_OPT_SAR_CLASSES,
    seed: int | None = None,
    weights: str = "random",
    **config: Any,
) -> Path:
    """A random-init adapter file for ``routing`` and ``classes`` (what predict loads).

    ``seed`` fixes the prompters' and head's random init (two seeds: two adapters that map
    differently); None leaves torch's generator as it is. Further keywords go to
    ``ModelConfig``.
    """
    from gopt_geo.checkpoint import save_adapter
    from gopt_geo.models import ModelConfig, RandomBackboneWarning, build_model

    if seed is not None:
        torch.manual_seed(seed)
    cfg = ModelConfig(
        variant=variant,
        backbone=backbone,
        weights=weights,
        num_classes=classes.num_classes,
        aux_channels=routing.num_aux,
        **config,
    )
    with warnings.catch_warnings():  # a random backbone is what a test adapter is for
        warnings.simplefilter("ignore", RandomBackboneWarning)
        model = build_model(cfg)
    meta = {"routing": routing.to_dict(), "classes": classes.to_dict()}
    return save_adapter(path, model, meta)


def predict_args(
    scene: SceneFiles | str | Path, adapter: Path, out: Path, *extra: str
) -> list[str]:
    """The argument list of ``gopt-geo predict``: a scene's files (or a scene given by
    one name: a URL, a STAC item), an adapter, an output folder, ``QUICK_PREDICT``, then
    ``extra`` (a later option of the same name wins)."""
    if isinstance(scene, SceneFiles):
        inputs = [str(scene.optical), "--sar", str(scene.sar)]
    else:
        inputs = [str(scene)]
    return ["predict", *inputs, "--model", str(adapter), "-o", str(out), *QUICK_PREDICT, *extra]


class Raster(NamedTuple):
    """What a test compares of a raster file."""

    data: np.ndarray  # [C, H, W], or [H, W] when one band was asked for
    profile: dict[str, Any]  # rasterio's profile: driver, dtype, crs, transform, nodata, ...
    tags: dict[str, str]  # the dataset's tags
    band_tags: dict[str, str]  # the first band's tags


def read_raster(path: Path | str, band: int | None = None) -> Raster:
    """A raster's pixels (every band, or ``band``), profile and tags, in one read."""
    with rasterio.open(path) as src:
        data = src.read() if band is None else src.read(band)
        return Raster(data, dict(src.profile), src.tags(), src.tags(1))


def read_pixels(path: Path | str, band: int | None = None) -> np.ndarray:
    """A raster's pixels: [C, H, W], or [H, W] for one ``band``."""
    return read_raster(path, band).data


def sar_on_optical_grid(files: SceneFiles, nodata_as_nan: bool = True) -> np.ndarray:
    """A synthetic scene's SAR warped (bilinear) onto its optical grid, as every consumer
    must read it: float64 [C, H, W]; outside the SAR NaN, or ``SAR_NODATA`` if not
    ``nodata_as_nan``."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from gopt_geo.data.synthetic import SAR_NODATA

    with rasterio.open(files.optical) as opt, rasterio.open(files.sar) as sar:
        with WarpedVRT(
            sar,
            crs=opt.crs,
            transform=opt.transform,
            width=opt.width,
            height=opt.height,
            resampling=Resampling.bilinear,
            src_nodata=SAR_NODATA,
            nodata=SAR_NODATA,
        ) as vrt:
            data = vrt.read().astype(np.float64)
    if nodata_as_nan:
        data[data == SAR_NODATA] = np.nan
    return data


def write_raster(
    path: Path,
    data: np.ndarray,
    crs: str | None = UTM,
    transform: rasterio.Affine | None = None,
    nodata: float | None = None,
    descriptions: tuple[str, ...] | None = None,
) -> Path:
    """Write a [C, H, W] (or [H, W]) array as a GeoTIFF."""
    if data.ndim == 2:
        data = data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": data.dtype,
        "nodata": nodata,
    }
    if crs is not None:
        profile["crs"] = crs
        profile["transform"] = transform or from_origin(500_000, 3_400_000, 10, 10)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = descriptions
    return path


def to_wgs84(
    out: Path, data: np.ndarray, src_transform: rasterio.Affine, nodata: float = -9999.0
) -> Path:
    """Reproject a float array on the UTM grid to EPSG:4326 (coarser), as the SAR files are."""
    h, w = data.shape[1:]
    left, top = src_transform.c, src_transform.f
    right, bottom = left + w * src_transform.a, top + h * src_transform.e
    dst_t, dw, dh = calculate_default_transform(
        UTM, "EPSG:4326", w, h, left, bottom, right, top, resolution=None
    )
    # a coarser grid than the optical one: 1.5x the default resolution
    dst_t = rasterio.Affine(dst_t.a * 1.5, 0, dst_t.c, 0, dst_t.e * 1.5, dst_t.f)
    dw, dh = int(np.ceil(dw / 1.5)), int(np.ceil(dh / 1.5))
    dst = np.full((data.shape[0], dh, dw), nodata, dtype=np.float32)
    reproject(
        data.astype(np.float32),
        dst,
        src_transform=src_transform,
        src_crs=UTM,
        dst_transform=dst_t,
        dst_crs="EPSG:4326",
        dst_nodata=nodata,
    )
    return write_raster(out, dst, crs="EPSG:4326", transform=dst_t, nodata=nodata)


def write_scene(
    root: Path,
    name: str,
    *,
    size: int = 64,
    origin: tuple[float, float] = (500_000, 3_400_000),
    labels: np.ndarray | None = None,
    seed: int = 0,
    optical_bands: int = 4,
) -> dict[str, Path]:
    """One scene in the folder layout: optical (UTM, uint16), SAR (EPSG:4326), labels."""
    rng = np.random.default_rng(seed)
    t = from_origin(origin[0], origin[1], 10, 10)
    if labels is None:
        # 8x8-pixel blocks of random codes: coherent patches, like land cover
        blocks = rng.integers(1, 8, (size // 8 + 1, size // 8 + 1)) * 10
        labels = np.kron(blocks, np.ones((8, 8)))[:size, :size].astype(np.uint8)
    optical = (rng.integers(200, 4000, (optical_bands, size, size))).astype(np.uint16)
    sar = np.stack([labels / 10.0 - 20, labels / 20.0 - 25]).astype(np.float32)
    return {
        "optical": write_raster(root / "optical" / f"{name}.tif", optical, transform=t, nodata=0),
        "sar": to_wgs84(root / "sar" / f"{name}.tif", sar, t),
        "labels": write_raster(root / "labels" / f"{name}.tif", labels, transform=t),
    }


def write_scenes(
    root: Path, names: Sequence[str] = ("scene_0", "scene_1", "scene_2"), **kw: Any
) -> Path:
    """Scenes side by side, 5 km apart (disjoint at any size up to 500 px), scene i with
    seed i; further keywords go to :func:`write_scene`. Returns ``root``."""
    for i, name in enumerate(names):
        write_scene(root, name, origin=(500_000 + 5_000 * i, 3_400_000), seed=i, **kw)
    return root


@pytest.fixture
def scene_root(tmp_path: Path) -> Path:
    """Three disjoint 64x64 scenes: enough for a train/val/test split by scene."""
    return write_scenes(tmp_path)


@pytest.fixture
def holed_scenes(tmp_path: Path) -> Path:
    """Three disjoint 64x64 scenes s0, s1, s2; s0 has optical nodata rows and a SAR
    nodata block inside the SAR's footprint."""
    write_scenes(tmp_path, ("s0", "s1", "s2"))
    with rasterio.open(tmp_path / "optical" / "s0.tif", "r+") as dst:
        data = dst.read()
        data[:, :10] = 0  # optical nodata
        dst.write(data)
    with rasterio.open(tmp_path / "sar" / "s0.tif", "r+") as dst:
        data = dst.read()
        data[:, 30:40, 10:20] = dst.nodata  # SAR nodata inside its footprint
        dst.write(data)
    return tmp_path


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three disjoint 96x96 scenes for training runs (one per split)."""
    return write_scenes(tmp_path_factory.mktemp("scenes"), size=96)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init test_efficientnet GoPT adapter (seed 0, ``ADAPTER_ROUTING``, WHU
    classes)."""
    path = tmp_path_factory.mktemp("model") / "adapter.safetensors"
    return make_adapter(path, routing=ADAPTER_ROUTING, seed=0)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> SceneFiles:
    """One 96x96 synthetic scene "tile" (optical, SAR, labels, clouds)."""
    from gopt_geo.data.synthetic import make_scene

    return make_scene(tmp_path_factory.mktemp("scene"), "tile", size=96, seed=3)


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder with HTTP byte ranges (what GDAL's /vsicurl/ reads with).

    ``fail_next``: that many requests are answered 500 first (a flaky server).
    """

    range_requests = 0
    fail_next = 0
    failed = 0

    def send_head(self):  # noqa: ANN201 (http.server's signature)
        if type(self).fail_next > 0:
            type(self).fail_next -= 1
            type(self).failed += 1
            self.send_error(500)
            return None
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return None
        data = path.read_bytes()
        wanted = self.headers.get("Range", "")
        if wanted.startswith("bytes="):
            first, _, last = wanted[len("bytes=") :].partition("-")
            start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            type(self).range_requests += 1
            data = data[start : end + 1]
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(data)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(folder: Path, handler: type[RangeHandler] = RangeHandler) -> Iterator[str]:
    """A local HTTP server (127.0.0.1 only) over ``folder``; its base URL."""
    bound = functools.partial(handler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), bound)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def stall() -> Iterator[tuple[str, threading.Event]]:
    """A server on 127.0.0.1 that accepts connections and never answers, and an event set
    at its first connection (the run then waits on it)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held: list[socket.socket] = []
    stop, connected = threading.Event(), threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
                connected.set()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/scene.tif", connected
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        sock.close()


# Splits over the memory budget are cached on disk: never in the user's own cache folder
# (subprocesses inherit it)
os.environ.setdefault("GOPT_GEO_SCENE_CACHE_DIR", tempfile.mkdtemp(prefix="gopt-geo-test-cache-"))

# Subprocesses that tests start (the CLI, DDP workers, notebook kernels) import this
# checkout's code, as ./run's PYTHONPATH gives it, also when pytest is run directly.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (_ROOT, os.environ.get("PYTHONPATH", "")) if p
    )


@pytest.fixture(autouse=True)
def default_signal_handlers() -> None:
    """Every test starts with Python's own SIGINT/SIGTERM handling (a library that
    changed them in an earlier test must not decide how a later one is interrupted;
    subprocesses inherit an ignored signal)."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
