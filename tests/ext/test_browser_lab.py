"""JupyterLab with the built extension in headless Chromium: the form creates a GPU cluster on the local
backend, it is listed, a GPU-tagged task runs on it, it is shut down; the status bar shows (and warns about)
credential expiry."""

from __future__ import annotations

import datetime
import importlib.util
import re
from pathlib import Path

import pytest
import requests
from distributed import Client

from casa_hub_ext.bundle import MountedBundle
from tests.ext.conftest import write_bundle
from tests.ext.jupyter_proc import LABEXTENSION, start_jupyter, stop_jupyter
from tests.support import CHROMIUM, launch_chromium, make_minter, need

pytestmark = pytest.mark.browser

TIMEOUT = 60


def gpu_task():
    import os

    return os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    need(Path(CHROMIUM).exists(), "Debian chromium")
    need(importlib.util.find_spec("playwright") is not None, "playwright (python)")
    need((LABEXTENSION / "package.json").exists(), "the built labextension (cd js && npm ci && npm run build)")
    work = tmp_path_factory.mktemp("lab")
    minter = make_minter(work / "keys")
    bundle_dir = write_bundle(minter.mint("alice"), work / "casa")
    proc = start_jupyter(
        work,
        {
            "CASA_CREDENTIALS_DIR": str(bundle_dir),
            "CASA_GPU_COUNT": "2",
            "CASA_GPU_MAX_PER_WORKER": "1",
            "CASA_DASK_BACKENDS": "local",
        },
        app="lab",
    )
    proc.bundle_dir, proc.minter = bundle_dir, minter
    yield proc
    stop_jupyter(proc)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


def open_lab(browser, lab):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(TIMEOUT * 1000)
    page.goto(f"{lab.url}lab?token={lab.token}")
    page.wait_for_selector("[data-testid=casa-credential-status]")
    return page


def api(lab, method, path, **kw):
    return requests.request(method, f"{lab.url}casa/{path}", headers=lab.headers(), timeout=TIMEOUT, **kw)


def test_create_gpu_cluster_from_the_form(browser, lab, tmp_path):
    page = open_lab(browser, lab)
    page.wait_for_selector(".jp-Launcher")
    page.wait_for_function(  # the 1 h storage token lapses first
        "/^Credentials: 5[89]m$/.test(document.querySelector('[data-testid=casa-credential-status]').textContent)"
    )
    assert page.locator(".jp-LauncherCard", has_text="New Dask cluster").count() == 1

    # command palette entry opens the form
    page.keyboard.press("Control+Shift+C")
    page.locator(".lm-CommandPalette-input").fill("New Dask cluster")
    page.keyboard.press("Enter")
    form = page.locator(".casa-form")
    form.wait_for()
    page.locator("[data-testid=casa-backend]").wait_for()
    assert page.locator("[data-testid=casa-gpus_per_worker]").get_attribute("max") == "1"

    # over the limit: the server's message is shown, nothing starts
    page.locator("[data-testid=casa-workers]").fill("3")
    page.locator("[data-testid=casa-gpus_per_worker]").fill("1")
    page.locator("[data-testid=casa-create]").click()
    page.wait_for_function("document.querySelector('[data-testid=casa-error]').textContent.includes('need 3 GPUs')")
    assert api(lab, "GET", "clusters").json() == []

    page.locator("[data-testid=casa-workers]").fill("2")
    page.locator("[data-testid=casa-create]").click()
    card = page.locator("[data-testid=casa-cluster]")
    card.wait_for(timeout=TIMEOUT * 1000)
    assert "1 GPU/worker" in card.inner_text()
    assert card.locator("a", has_text="Dashboard").get_attribute("href").endswith("/status")
    page.screenshot(path=str(tmp_path / "casa-dask-form.png"))

    (cluster,) = api(lab, "GET", "clusters").json()
    assert page.locator("[data-testid=casa-scheduler]").inner_text() == cluster["scheduler_address"]
    security = MountedBundle.from_directory(lab.bundle_dir).security()
    with Client(cluster["scheduler_address"], security=security, timeout=TIMEOUT) as client:
        client.wait_for_workers(2, timeout=TIMEOUT)
        devices = client.gather(client.map(lambda i: gpu_task(), range(4), pure=False, resources={"GPU": 1}))
        assert set(devices) <= {"0", "1"}

    card.locator("[data-testid=casa-shutdown]").click()
    page.wait_for_function("!document.querySelector('[data-testid=casa-cluster]')")
    assert api(lab, "GET", "clusters").json() == []
    page.close()


def test_status_bar_warns_before_expiry(browser, lab):
    # re-mount a bundle minted 50 min ago: its 1 h tokens lapse in ~10 min
    then = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=50)
    write_bundle(lab.minter.mint("alice", now=then), lab.bundle_dir)
    page = open_lab(browser, lab)
    status = page.locator("[data-testid=casa-credential-status].casa-warn")
    status.wait_for()
    assert re.match(r"Credentials: (9|10)m", status.inner_text())
    toast = page.locator(".Toastify__toast", has_text="restart your server")
    toast.wait_for()
    assert "expire in" in toast.inner_text()
    page.close()
