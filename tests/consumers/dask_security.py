"""A Dask ``Security`` built from a written Casa bundle, the way a user's code would configure it. Used by
test_dask_tls_bundle.py and test_dask_isolation.py."""

from __future__ import annotations

from pathlib import Path

from distributed.security import Security


def security_from(directory: Path) -> Security:
    """A Security built from the files and the env names the bundle declares, nothing else."""
    d = directory / "dask"
    return Security(
        require_encryption=True,
        tls_ca_file=str(d / "ca.pem"),
        tls_scheduler_cert=str(d / "scheduler.crt"),
        tls_scheduler_key=str(d / "scheduler.key"),
        tls_worker_cert=str(d / "worker.crt"),
        tls_worker_key=str(d / "worker.key"),
        tls_client_cert=str(d / "client.crt"),
        tls_client_key=str(d / "client.key"),
    )
