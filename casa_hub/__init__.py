"""Casa Hub: per-user, short-lived credentials for a JupyterHub analysis facility."""

__version__ = "0.1.0"
