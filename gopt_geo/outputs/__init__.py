"""The GIS outputs: what a map becomes on disk, for prediction and change alike.

Everything here writes or describes files on the reference grid (design §2, §10): the
strip raster writers and their class-map metadata, the output set with its staging and
commit, QGIS styles, STAC items and collections, the quicklook, vectorisation and the
grid itself. It knows nothing of models or windows: ``inference/`` (prediction) and
``change.py`` both build their outputs from it, and nothing in it imports them.
"""
