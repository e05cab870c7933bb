"""Data layer: class schemes, band routing, torchgeo datasets, synthetic scenes."""
