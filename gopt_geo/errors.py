"""User-facing errors.

A `GoptGeoError` is a user mistake or a bad input (missing file, rasters that do not
overlap, wrong band count, ...). The CLI prints its message on one line and exits
non-zero without a traceback; anything else is a bug and keeps its traceback.
"""


class GoptGeoError(Exception):
    """A problem with the user's input, explained in one line that names the file."""


class InputError(GoptGeoError, ValueError):
    """A raster, config or model file that cannot be used as given."""
