"""Errors meant for the user (shown in JupyterLab and returned as 4xx) versus everything else (logged)."""

from __future__ import annotations


class CasaUserError(Exception):
    """A problem the user can fix or must know about; ``str(error)`` is safe to show.

    Like dask-gateway's ``PublicException``: the REST handlers turn it into a 4xx response with this message,
    every other exception is logged and answered with a generic 500.
    """

    status_code = 400
    field: str | None = None  # the request field at fault, when there is one (the form highlights it)


class OptionError(CasaUserError):
    """A cluster request outside the bounds the facility allows (nothing has been submitted)."""

    status_code = 422

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class LimitError(OptionError):
    """A request that is valid by itself but exceeds what the user has left: concurrent clusters, GPUs booked."""

    status_code = 409


class CredentialError(CasaUserError):
    """A credential the action needs is missing, unreadable or expired; the message names it."""

    status_code = 409

    def __init__(self, credential: str, message: str):
        super().__init__(message)
        self.credential = credential


class ClusterNotFound(CasaUserError):
    status_code = 404
