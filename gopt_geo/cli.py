"""The ``gopt-geo`` command line: parse options, call the library, print a summary.

No logic lives here. User mistakes (:class:`GoptGeoError`) print one line naming the
file and the problem and exit with status 2, without a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import GoptGeoError

app = typer.Typer(
    name="gopt-geo",
    help="Land-cover mapping from optical + SAR imagery with Grouping Prompt Tuning (GoPT).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def user_errors[F: Callable[..., Any]](fn: F) -> F:
    """Turn user-facing errors into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GoptGeoError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _echo(msg: str = "") -> None:
    typer.echo(msg)


@app.command()
@user_errors
def synth(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder to write optical/, sar/, labels/, clouds/ into.")
    ],
    size: Annotated[int, typer.Option(help="Scene width and height in optical pixels.")] = 512,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    scenes: Annotated[int, typer.Option(help="Number of scenes (spatially disjoint).")] = 4,
    overwrite: Annotated[bool, typer.Option(help="Replace existing scene files.")] = False,
) -> None:
    """Write synthetic co-registered optical + SAR + label scenes (GeoTIFF) and summarise them."""
    from .data.summary import summarize_scenes
    from .data.synthetic import make_scenes

    if out_dir.exists() and any(out_dir.rglob("*.tif")) and not overwrite:
        raise GoptGeoError(f"{out_dir}: already holds scenes; use --overwrite to replace them")
    make_scenes(out_dir, scenes, size=size, seed=seed)
    _echo(summarize_scenes(out_dir))


@app.command()
@user_errors
def summary(
    root: Annotated[Path, typer.Argument(help="Scene folder (optical/, sar/, labels/).")],
) -> None:
    """Summarise a scene folder: scenes, grids, CRS, bands, class fractions."""
    from .data.summary import summarize_scenes

    _echo(summarize_scenes(root))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
