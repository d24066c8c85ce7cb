"""Casa Hub user-side extension: reads the mounted credentials and launches GPU-aware Dask clusters."""

__version__ = "0.1.0"


def _jupyter_server_extension_points():
    from .app import CasaExtensionApp

    return [{"module": "casa_hub_ext", "app": CasaExtensionApp}]


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "casa-hub-ext"}]
