"""Casa Hub user-side extension: reads the mounted credentials and launches GPU-aware Dask clusters."""

__version__ = "0.1.0"
__all__ = ["CasaCluster"]


def __getattr__(name: str):
    # ``from casa_hub_ext import CasaCluster`` in a notebook; imported on use, so loading the server extension
    # does not import distributed
    if name == "CasaCluster":
        from .notebook import CasaCluster

        return CasaCluster
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _jupyter_server_extension_points():
    from .app import CasaExtensionApp

    return [{"module": "casa_hub_ext", "app": CasaExtensionApp}]


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "casa-hub-ext"}]
