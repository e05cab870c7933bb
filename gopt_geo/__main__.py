"""``python -m gopt_geo``: the ``gopt-geo`` command, for a checkout that is not installed."""

from gopt_geo.cli import app

app(prog_name="gopt-geo")
