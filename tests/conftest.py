import sys

import pytest

from tests.support import make_minter


@pytest.fixture
def minter(tmp_path):
    """A CasaMinter with all credential kinds enabled and fresh keys."""
    return make_minter(tmp_path / "keys")


@pytest.fixture(autouse=True)
def _declared_gpus_only(request, monkeypatch):
    """Outside the gpu tier, tests declare their GPUs: a machine's real GPU must not answer for them through NVML,
    here or in Dask workers (distributed's NVML monitor would look up a declared device the machine lacks, and the
    worker would not start). A server a test starts as a process may still see it, capped by its declared count."""
    if request.node.get_closest_marker("gpu") is not None:
        yield
        return
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setenv("DASK_DISTRIBUTED__DIAGNOSTICS__NVML", "False")  # workers started as commands
    import dask  # noqa: PLC0415 - a nanny hands its own process's config to its worker, over the environment's

    with dask.config.set({"distributed.diagnostics.nvml": False}):
        yield
