"""Outputs in object storage: write a set in a local folder, then upload it whole.

``predict`` and ``predict-many`` take an output *URL* (``s3://bucket/prefix/``, or any
fsspec URL: ``gs://``, ``az://``, ``memory://``...) as well as a folder. Object stores
have no rename, so the local commit of design §10 (temporary names, one journal, renames)
cannot happen there. Instead the set is written and committed as usual in a local
temporary folder on the machine that maps the scene (:func:`staged_locally`), then
uploaded in an order that keeps the same guarantee: an old set's report JSON is removed
first, the other files go up next and the report JSON goes up last. **A set is complete
when its report JSON exists** remotely as locally, so ``--resume`` reads the same mark.
A failed or interrupted run uploads nothing (its local folder is removed).

Credentials and endpoints come from the store's client as usual (S3: the
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` environment variables or the other
places botocore looks, ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for a store that is
not AWS); nothing here takes a secret. A URL folder has no lock (object stores offer no
advisory lock): two runs into one prefix are the user's to avoid.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError

#: Suffixes of the files uploaded last, in this order: the report JSON is the mark of a
#: complete set (:data:`~gopt_geo.outputs.naming.COMMIT_LAST`), so it goes up last.
UPLOAD_LAST = ("_item.json", "_report.md", "_report.json")
#: The completion mark of a set: removed first when a set is replaced, uploaded last.
MARK_SUFFIX = "_report.json"


def _scheme(text: str) -> str:
    head, sep, _ = text.partition("://")
    return head.lower() if sep and head.replace("+", "").replace("-", "").isalnum() else ""


def is_url_folder(out: object) -> bool:
    """True when ``out`` names an fsspec URL (``scheme://...``, not ``file://``) rather
    than a local folder. Only a string can: a ``Path`` folds the ``//`` of a URL."""
    return isinstance(out, str) and _scheme(out) not in ("", "file")


def local_folder(out: str | Path) -> Path:
    """A local output folder given as a path or a ``file://`` URL."""
    if isinstance(out, str) and _scheme(out) == "file":
        return Path(out[len("file://") :])
    return Path(out)


def join(url: str, *parts: str) -> str:
    """``url`` with path ``parts`` appended (``s3://b/p/`` + ``a``, ``x.tif`` -> ``s3://b/p/a/x.tif``)."""
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


def url_path(url: str) -> str:
    """The path part of a URL (no scheme), for relative links between two URLs."""
    return url.split("://", 1)[1] if "://" in url else url


def relative(url: str, start: str) -> str:
    """``url`` relative to the folder URL ``start`` (for hrefs that stay valid on upload)."""
    return posixpath.relpath(url_path(url), url_path(start.rstrip("/")))


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path it takes; one line for a scheme
    fsspec does not know (or whose package is missing)."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:
        raise InputError(f"{url}: cannot use this output URL ({err})") from None


@contextlib.contextmanager
def remote_errors(url: str) -> Iterator[None]:
    """A store's answer that is the user's to fix (no bucket, no permission, no
    credentials) as one line naming the URL; other errors (the network) pass on, so that
    ``predict-many`` may try the scene again."""
    try:
        yield
    except InputError:
        raise
    except (FileNotFoundError, PermissionError) as err:
        raise InputError(f"{url}: cannot write the outputs there ({_reason(err)})") from None
    except Exception as err:
        if type(err).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            raise InputError(f"{url}: no credentials for the store ({_reason(err)})") from None
        raise


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def check_url_folder(url: str) -> str:
    """Refuse an output URL that cannot be written before any work is done (as a local
    folder is probed): a small object is written there and removed. Returns ``url``."""
    fs, path = filesystem(url)
    probe = posixpath.join(path.rstrip("/"), f".gopt-geo-write-test-{uuid.uuid4().hex[:8]}")
    with remote_errors(url):
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    return url


def read_json(url: str) -> dict[str, Any] | None:
    """A JSON object at ``url``; None when it is missing, unreadable or not an object."""
    fs, path = filesystem(url)
    try:
        data = json.loads(fs.cat_file(path).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def list_names(url: str) -> set[str]:
    """The file names directly under the folder URL ``url`` (empty when there is none)."""
    fs, path = filesystem(url)
    try:
        return {posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def download(url: str, local: Path) -> Path | None:
    """Copy the file at ``url`` to ``local``; None when it does not exist."""
    fs, path = filesystem(url)
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        fs.get_file(path, str(local))
    except FileNotFoundError:
        return None
    return local


def open_raster(url: str) -> Any:
    """A raster at ``url`` opened through fsspec (only the bytes read are fetched), with
    the same credentials and endpoint as the outputs were written with."""
    import rasterio

    fs, _ = filesystem(url)
    return rasterio.open(url, opener=fs)


def refuse_existing(url: str, names: Iterable[str], overwrite: bool) -> None:
    """Refuse outputs that exist under ``url`` unless ``overwrite`` (as
    :func:`gopt_geo.io.check_writable` does for a folder): one line naming the first."""
    if overwrite:
        return
    with remote_errors(url):
        present = list_names(url)
    for name in names:
        if name in present:
            raise InputError(
                f"{join(url, name)}: output already exists (use --overwrite / overwrite=True)"
            )


def _rank(name: str) -> tuple[int, str]:
    for i, suffix in enumerate(UPLOAD_LAST, start=1):
        if name.endswith(suffix):
            return i, name
    return 0, name


def upload_order(names: Iterable[str]) -> list[str]:
    """Every file before the items, the Markdown reports and the report JSONs (last)."""
    return sorted(names, key=_rank)


def upload_folder(
    local: Path, url: str, *, overwrite: bool = False, replace: Iterable[str] = ()
) -> list[str]:
    """Upload every file under ``local`` to ``url`` (relative paths kept; hidden files,
    such as temporary names, left out) in :func:`upload_order`; returns their URLs.

    Without ``overwrite`` an existing remote file is refused (nothing is uploaded). With
    it, a previous set is replaced: its report JSON is removed first, then the names in
    ``replace`` (relative to ``url``) that this upload does not bring, then the new files
    go up, the report JSON last."""
    names = [
        p.relative_to(local).as_posix()
        for p in sorted(local.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(local).parts)
    ]
    fs, root = filesystem(url)
    root = root.rstrip("/")

    def remote(name: str) -> str:
        return posixpath.join(root, name)

    with remote_errors(url):
        if not overwrite:
            for name in names:
                if fs.exists(remote(name)):
                    raise InputError(
                        f"{join(url, name)}: output already exists "
                        "(use --overwrite / overwrite=True)"
                    )
        else:
            stale = [n for n in replace if n not in names]
            marks = [n for n in {*names, *stale} if n.endswith(MARK_SUFFIX)]
            # the old set's mark first (it no longer looks complete), then what the new
            # set does not bring
            for name in [*sorted(marks), *(n for n in stale if n not in marks)]:
                if fs.exists(remote(name)):
                    fs.rm_file(remote(name))
        made: set[str] = set()
        for name in upload_order(names):
            parent = posixpath.dirname(remote(name))
            if parent not in made:
                fs.makedirs(parent, exist_ok=True)
                made.add(parent)
            fs.put_file(str(local / name), remote(name))
    return [join(url, n) for n in upload_order(names)]


@contextlib.contextmanager
def staged_locally(
    url: str, *, overwrite: bool = False, replace: Iterable[str] = ()
) -> Iterator[Path]:
    """A local temporary folder whose files are uploaded to ``url`` when the block
    succeeds (:func:`upload_folder`: report JSON last; ``overwrite`` and ``replace`` as
    there); nothing is uploaded when it fails. The folder is removed either way."""
    local = Path(tempfile.mkdtemp(prefix="gopt-geo-upload-"))
    try:
        yield local
        upload_folder(local, url, overwrite=overwrite, replace=replace)
    finally:
        shutil.rmtree(local, ignore_errors=True)
