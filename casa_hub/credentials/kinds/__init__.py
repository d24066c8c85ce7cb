"""The built-in credential kinds, one module each (entry points in pyproject.toml, group ``casa_hub.credentials``).

``mlflow.py`` is the documented example of a kind a site adds: one file and one entry point.
"""
