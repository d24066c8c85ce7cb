"""Server side of the dask-gateway contract: the cluster options the facility's gateway offers.

In ``dask_gateway_config.py``::

    from casa_hub_ext.gateway import cluster_options
    c.Backend.cluster_options = cluster_options(max_cores=8, max_memory_gib=32, max_gpus=4,
                                                worker_cmd=["/opt/venv/bin/dask", "worker"])

``worker_gpus`` becomes ``--resources GPU=n`` on the worker command line (the env-var form would lower-case
the resource name) so a ``resources={"GPU": 1}`` task lands only on GPU workers.
"""

from __future__ import annotations


def cluster_options(
    *, max_cores: int = 8, max_memory_gib: float = 32, max_gpus: int = 4, worker_cmd: list[str] | None = None
):
    from dask_gateway_server.options import Float, Integer, Options

    cmd = list(worker_cmd or ["dask", "worker"])

    def handler(options):
        config = {"worker_cores": options.worker_cores, "worker_memory": int(options.worker_memory * 2**30)}
        if options.worker_gpus:
            config["worker_cmd"] = cmd + ["--resources", f"GPU={options.worker_gpus}"]
        return config

    return Options(
        Integer("worker_cores", 1, min=1, max=max_cores, label="Cores per worker"),
        Float("worker_memory", 2, min=0.25, max=max_memory_gib, label="Memory per worker (GiB)"),
        Integer("worker_gpus", 0, min=0, max=max_gpus, label="GPUs per worker"),
        handler=handler,
    )
