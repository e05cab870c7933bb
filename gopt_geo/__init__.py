"""gopt-geo: land-cover mapping from optical + SAR with Grouping Prompt Tuning (GoPT)."""

#: The package version; pyproject.toml reads it from here, so a checkout run through
#: ``PYTHONPATH`` (as ``./run`` does) reports the same version as an installed copy.
__version__ = "0.2.0"

__all__ = ["__version__"]
