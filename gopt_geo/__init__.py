"""gopt-geo: land-cover mapping from optical + SAR with Grouping Prompt Tuning (GoPT)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gopt-geo")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
