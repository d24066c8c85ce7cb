"""Casa Hub user-side extension: reads the mounted credentials and launches GPU-aware Dask clusters."""

__version__ = "0.1.0"
