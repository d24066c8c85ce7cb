"""The fuzz tier (hypothesis, derandomized; no servers, no cluster): the fixtures its modules share."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config import kube_config

from tests.fuzz.spawners import KUBECONFIG, Spawners


@pytest.fixture(scope="module")
def spawners(tmp_path_factory):
    kubeconfig = tmp_path_factory.mktemp("kube") / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    old_location, old_default = kube_config.KUBE_CONFIG_DEFAULT_LOCATION, Configuration.get_default_copy()
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(kubeconfig)
    loop = asyncio.new_event_loop()
    try:
        yield Spawners(loop)
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = old_location
        Configuration.set_default(old_default)  # other tests' spawners configure their own API host
