"""JupyterLab with the built extension in headless Chromium, against a real ``jupyter lab`` (local backend, two
declared GPUs): Casa's options button (a gear) in dask-labextension's sidebar opens the options dialog; bad input
gets the server's own message next to the field and starts nothing; a GPU cluster is listed in the sidebar, its
task stream opens through dask-labextension's dashboard proxy, the sidebar's "<>" client runs a GPU task over TLS
in a notebook, the sidebar scales it, makes it adaptive and shuts it down; a second GPU cluster that would
double-book is refused; a server without GPUs says why; the credentials panel lists every credential and hands
out the laptop bundle; the status bar warns before expiry.

Screenshots go to test-artifacts/screenshots, or into docs/screenshots for the user guide with
CASA_UPDATE_SCREENSHOTS=1."""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import re
import zipfile
from pathlib import Path

import pytest
import requests

from casa_hub_ext.bundle import MountedBundle
from tests.ext.conftest import write_bundle
from tests.ext.jupyter_proc import LABEXTENSION, login_cluster_args, start_jupyter, stop_jupyter
from tests.support import CHROMIUM, REPO, launch_chromium, make_minter, need, wait_until

pytestmark = pytest.mark.browser

TIMEOUT = 60
SHOTS = REPO / ("docs/screenshots" if os.environ.get("CASA_UPDATE_SCREENSHOTS") else "test-artifacts/screenshots")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
SIDEBAR = "#dask-dashboard-launcher"
CASA_BUTTON = f'{SIDEBAR} [data-command="casa:new-dask-cluster"]'
DIALOG = "[data-testid=casa-options-dialog]"
GPU_TASK = (
    'client.submit(lambda: __import__("os").environ.get("CUDA_VISIBLE_DEVICES"), '
    'resources={"GPU": 1}, pure=False).result(timeout=60)'
)


def need_browser():
    need(Path(CHROMIUM).exists(), "Debian chromium")
    need(importlib.util.find_spec("playwright") is not None, "playwright (python)")
    need(importlib.util.find_spec("dask_labextension") is not None, "dask-labextension")
    need((LABEXTENSION / "package.json").exists(), "the built labextension (cd js && npm ci && npm run build)")


def start_lab(work: Path, minter, env: dict[str, str], args: list[str] = ()):
    """``jupyter lab`` with a bundle mounted and the environment the spawner gives the server (the Dask TLS client
    variables included, so the sidebar's ``Client("tls://...")`` connects)."""
    bundle = minter.mint("alice")
    bundle_dir = write_bundle(bundle, work / "casa")
    news = work / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text(json.dumps({"fetchNews": "false"}))  # no "Jupyter news?" toast over the screenshots
    proc = start_jupyter(
        work,
        {
            **bundle.env_for(str(bundle_dir)),
            "CASA_CREDENTIALS_DIR": str(bundle_dir),
            "CASA_DASK_BACKENDS": "local",
            **env,
        },
        app="lab",
        args=args,
    )
    proc.bundle_dir, proc.minter = bundle_dir, minter
    return proc


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    need_browser()
    work = tmp_path_factory.mktemp("lab")
    proc = start_lab(
        work,
        make_minter(work / "keys"),
        {
            "CASA_GPU_COUNT": "2",
            "CASA_GPU_MAX_PER_WORKER": "1",
            "CASA_DASK_ADDRESS": "tls://dask-alice.hub.casa.test:8786",  # the laptop bundle's scheduler route
        },
    )
    yield proc
    for cluster in api(proc, "GET", "clusters").json():  # leave nothing running if a step failed
        api(proc, "DELETE", f"clusters/{cluster['id']}")
    stop_jupyter(proc)


@pytest.fixture(scope="module")
def login_lab(tmp_path_factory):
    """A server with a login cluster, the scheduler the laptop route leads to: its users get a laptop bundle."""
    need_browser()
    work = tmp_path_factory.mktemp("login-lab")
    proc = start_lab(
        work,
        make_minter(work / "keys"),
        {"CASA_DASK_ADDRESS": "tls://dask-alice.hub.casa.test:8786"},  # the laptop bundle's scheduler route
        args=login_cluster_args(),
    )
    yield proc
    stop_jupyter(proc)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name))


def open_lab(browser, lab, *, sidebar: bool = True):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(TIMEOUT * 1000)
    page.goto(f"{lab.url}lab?token={lab.token}")
    page.wait_for_selector("[data-testid=casa-credential-status]")
    if sidebar:
        page.locator('.jp-SideBar [data-id="dask-dashboard-launcher"]').click()
        page.locator(CASA_BUTTON).wait_for()
    return page


def api(lab, method, path, **kw):
    return requests.request(method, f"{lab.url}casa/{path}", headers=lab.headers(), timeout=TIMEOUT, **kw)


def dask_api(lab, path):
    return requests.get(f"{lab.url}dask/{path}", headers=lab.headers(), timeout=TIMEOUT)


def option(page, name: str):
    return page.get_by_test_id(f"casa-option-{name}")


def create(page):
    page.locator(f"{DIALOG} .jp-Dialog-button.jp-mod-accept").click()


def refused_inline(page, lab, body: dict, field: str, shown_at: str | None = None) -> str:
    """Click Create; the message shown next to ``field`` (or ``shown_at``) is the server's own for the same
    request."""
    create(page)
    error = page.get_by_test_id(f"casa-error-{shown_at or field}")
    try:
        error.wait_for(timeout=20_000)
    except Exception:
        raise AssertionError(f"no message next to {field}: {page.locator(DIALOG).inner_text()}") from None
    reply = api(lab, "POST", "clusters", json=body)
    assert reply.status_code in (409, 422), reply.text
    assert reply.json()["field"] == field, reply.json()
    assert error.inner_text() == reply.json()["message"]
    assert page.locator(DIALOG).count() == 1  # still open, to correct the value
    return error.inner_text()


def wait_for_sidebar_text(page, cluster_id: str, text: str) -> None:
    item = page.locator(f'{SIDEBAR} li.dask-ClusterListingItem[data-cluster-id="{cluster_id}"]')
    item.filter(has_text=text).wait_for(timeout=TIMEOUT * 1000)


def scale_from_sidebar(page, cluster_id: str, *, workers: str | None = None, adapt: tuple[str, str] | None = None):
    item = page.locator(f'{SIDEBAR} li.dask-ClusterListingItem[data-cluster-id="{cluster_id}"]')
    item.locator(".dask-ClusterListingItem-scale").click()
    dialog = page.locator(".jp-Dialog")
    inputs = dialog.locator(".dask-ScalingInput")
    if adapt:
        dialog.locator(".dask-ScalingCheckbox").check()
        inputs.nth(2).fill(adapt[1])  # maximum first: the minimum may not exceed it
        inputs.nth(1).fill(adapt[0])
    else:
        inputs.nth(0).fill(workers)
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    dialog.wait_for(state="detached")


def test_gpu_cluster_from_the_sidebar_options_dialog(browser, lab):
    page = open_lab(browser, lab)
    # a notebook to receive the sidebar's client code later
    launcher = page.locator(".jp-Launcher")
    casa_card = launcher.locator(".jp-LauncherCard", has_text="Dask cluster (Casa)")
    casa_card.wait_for()
    assert casa_card.count() == 1 and casa_card.locator("svg").count() == 1  # with its icon
    launcher.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
    page.locator(".jp-Notebook .jp-Cell").first.wait_for()

    button = page.locator(CASA_BUTTON)
    # an icon (a label does not fit beside "+NEW"), named for screen readers and in its tooltip
    assert button.get_attribute("aria-label") == button.get_attribute("title")
    assert button.get_attribute("title").startswith("New Dask cluster with options")
    # right beside dask-labextension's own "+NEW"
    names = page.locator(f"{SIDEBAR} .dask-DaskClusterManager .jp-Toolbar-item").evaluate_all(
        "nodes => nodes.map(n => n.dataset.jpItemName)"
    )
    assert names.index("casa:new-dask-cluster") == names.index("dask:launch-cluster") + 1, names
    shot(page, "07-sidebar-casa-new.png")

    options = api(lab, "GET", "options").json()
    button.click()
    page.locator(DIALOG).wait_for()
    assert option(page, "backend").locator("option").all_inner_texts() == options["backends"] == ["local"]
    gpus = next(f for f in options["fields"] if f["name"] == "gpus_per_worker")
    assert page.get_by_test_id("casa-limit-gpus_per_worker").inner_text().startswith(f"{gpus['min']}–{gpus['max']}")
    assert (
        page.get_by_test_id("casa-limit-clusters").inner_text()
        == "Clusters running: 0 of at most " + str(options["limits"]["max_clusters"]) + "."
    )
    assert "0 of 2 GPUs booked on local" in page.get_by_test_id("casa-gpu-note").inner_text()
    assert option(page, "workers").is_visible() and not option(page, "adapt-minimum").is_visible()  # fixed first
    option(page, "gpus_per_worker").fill("1")
    shot(page, "08-options-dialog.png")

    # bad input: the server's message next to the field, the dialog stays open, nothing starts
    defaults = {
        "backend": "local",
        "cores": "1",
        "memory": option(page, "memory").input_value(),
        "gpus_per_worker": "1",
    }
    for value in ("abc", "", "0.5"):
        option(page, "workers").fill(value)
        message = refused_inline(page, lab, {**defaults, "workers": value}, "workers")
        assert f"workers={value!r}" in message and "whole number" in message
        assert option(page, "workers").get_attribute("aria-invalid") == "true"
    option(page, "workers").fill("3")  # 3 workers x 1 GPU > the 2 GPUs here
    assert "need 3 GPUs" in refused_inline(page, lab, {**defaults, "workers": "3"}, "workers")
    shot(page, "09-options-refused.png")
    option(page, "workers").fill("1")
    option(page, "cores").fill("99")
    assert "outside the allowed range" in refused_inline(
        page, lab, {**defaults, "workers": "1", "cores": "99"}, "cores"
    )
    option(page, "cores").fill("1")
    option(page, "memory").fill("lots")
    assert "expected a size" in refused_inline(page, lab, {**defaults, "workers": "1", "memory": "lots"}, "memory")
    option(page, "memory").fill(defaults["memory"])
    assert api(lab, "GET", "clusters").json() == [] and dask_api(lab, "clusters").json() == []

    # a GPU cluster: the dialog is disabled while the server starts it, then closes
    create(page)
    page.locator("[data-testid=casa-options-form][aria-busy=true]").wait_for(timeout=10_000)
    assert page.locator(f"{DIALOG} .jp-Dialog-button.jp-mod-accept").is_disabled()
    page.locator(DIALOG).wait_for(state="detached", timeout=TIMEOUT * 1000)
    (cluster,) = api(lab, "GET", "clusters").json()
    assert UUID4.match(cluster["id"]), cluster["id"]
    assert cluster["casa"]["gpus_per_worker"] == 1 and cluster["casa"]["gpus_booked"] == 1
    assert [c["id"] for c in dask_api(lab, "clusters").json()] == [cluster["id"]]  # one list: dask-labextension's
    assert cluster["scheduler_address"].startswith("tls://")
    active = page.locator(f"{SIDEBAR} li.dask-ClusterListingItem.jp-mod-active")
    active.wait_for()
    assert active.get_attribute("data-cluster-id") == cluster["id"]
    wait_for_sidebar_text(page, cluster["id"], "Number of Workers: 1")
    active.scroll_into_view_if_needed()  # below the dashboard's plot buttons, which the new cluster filled in
    shot(page, "10-cluster-in-sidebar.png")

    # its task stream, through dask-labextension's dashboard proxy
    page.locator(f'{SIDEBAR} .dask-DashboardListing-item button[value="Task Stream"]').click()
    frame = page.locator(".dask-DaskDashboard-widget iframe")
    frame.wait_for()
    src = frame.get_attribute("src")
    assert f"/dask/dashboard/{cluster['id']}/individual-task-stream" in src, src
    proxied = requests.get(
        f"{lab.url}dask/dashboard/{cluster['id']}/individual-task-stream", headers=lab.headers(), timeout=TIMEOUT
    )
    assert proxied.status_code == 200 and "bokeh" in proxied.text.lower()

    # "<>" puts the client code into the notebook; a GPU task runs there over TLS
    tabs = page.locator("#jp-main-dock-panel .lm-TabBar-tab")
    tabs.filter(has_text=".ipynb").click()
    page.locator(f"{SIDEBAR} li.dask-ClusterListingItem .dask-ClusterListingItem-code").click()
    cells = page.locator(".jp-Notebook .jp-Cell")
    cells.nth(0).locator(".cm-content", has_text="Client(").wait_for()
    assert f'Client("{cluster["scheduler_address"]}")' in cells.nth(0).locator(".cm-content").inner_text()
    cells.nth(0).locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")
    cells.nth(0).locator(".jp-OutputArea-output", has_text=cluster["scheduler_address"]).wait_for()
    cells.nth(1).locator(".cm-content").click()
    page.keyboard.insert_text(GPU_TASK)
    page.keyboard.press("Shift+Enter")
    output = cells.nth(1).locator(".jp-OutputArea-output")
    output.wait_for()
    assert output.inner_text().strip() in ("'0'", "'1'"), output.inner_text()
    shot(page, "11-notebook-gpu-task.png")
    tabs.filter(has_text="Task Stream").click()
    page.wait_for_timeout(1500)  # the task stream draws the task it ran
    shot(page, "12-task-stream.png")

    # the sidebar scales it to 2 workers (2 GPUs), then makes it adaptive (1..2)
    scale_from_sidebar(page, cluster["id"], workers="2")
    wait_for_sidebar_text(page, cluster["id"], "Number of Workers: 2")
    shot(page, "13-scaled.png")
    scale_from_sidebar(page, cluster["id"], adapt=("1", "2"))
    wait_for_sidebar_text(page, cluster["id"], "Maximum Workers: 2")
    wait_for_sidebar_text(page, cluster["id"], "Minimum Workers: 1")
    (model,) = dask_api(lab, "clusters").json()
    assert model["adapt"] == {"minimum": 1, "maximum": 2}
    shot(page, "14-adaptive.png")

    # a second GPU cluster would double-book: the adaptive one holds both GPUs until it shuts down
    page.locator(CASA_BUTTON).click()
    page.locator(DIALOG).wait_for()
    assert "2 of 2 GPUs booked on local" in page.get_by_test_id("casa-gpu-note").inner_text()
    option(page, "workers").fill("1")
    option(page, "gpus_per_worker").fill("1")
    message = refused_inline(page, lab, {**defaults, "workers": "1"}, "workers")
    assert "hold 2 of the 2 allowed" in message
    shot(page, "15-double-booking-refused.png")
    # adaptive asks for its maximum: refused too, the message beside the adaptive bounds
    page.get_by_test_id("casa-scaling-adaptive").check()
    assert not option(page, "workers").is_visible() and option(page, "adapt-maximum").is_visible()
    option(page, "adapt-minimum").fill("0")
    option(page, "adapt-maximum").fill("1")
    body = {**defaults, "adapt": {"minimum": "0", "maximum": "1"}}
    assert "hold 2 of the 2 allowed" in refused_inline(page, lab, body, "workers", shown_at="adapt")
    page.locator(f"{DIALOG} .jp-Dialog-button.jp-mod-reject").click()
    page.locator(DIALOG).wait_for(state="detached")
    assert [c["id"] for c in api(lab, "GET", "clusters").json()] == [cluster["id"]]

    # shut down from the sidebar: gone from both lists, its GPUs free again
    page.locator(f"{SIDEBAR} li.dask-ClusterListingItem .dask-ClusterListingItem-stop").click()
    page.locator(f"{SIDEBAR} li.dask-ClusterListingItem").wait_for(state="detached", timeout=TIMEOUT * 1000)
    assert api(lab, "GET", "clusters").json() == [] and dask_api(lab, "clusters").json() == []
    assert api(lab, "GET", "options").json()["limits"]["gpus"]["local"]["booked"] == 0
    page.close()


def test_credentials_panel_lists_each_credential_and_the_laptop_bundle(browser, login_lab, tmp_path):
    lab = login_lab
    page = open_lab(browser, lab, sidebar=False)
    page.get_by_test_id("casa-credential-status").click()
    panel = page.get_by_test_id("casa-credential-panel")
    panel.wait_for()
    status = api(lab, "GET", "credentials").json()
    items = panel.get_by_test_id("casa-credential")
    wait_until(lambda: items.count() == len(status["credentials"]), TIMEOUT, "every credential listed")
    manifest = json.loads((lab.bundle_dir / "casa.json").read_text())
    assert len(status["credentials"]) >= len(manifest["credentials"]) > 0
    for cred in status["credentials"]:
        item = panel.locator(f'[data-testid=casa-credential][data-name="{cred["name"]}"]')
        assert item.get_by_test_id("casa-credential-label").inner_text() == cred["label"]
        assert item.get_by_test_id("casa-credential-kind").inner_text() == cred["name"]
        assert item.get_by_test_id("casa-credential-file").inner_text() == cred["file"]
        assert item.get_by_test_id("casa-credential-env").inner_text() == (f"${cred['env']}" if cred["env"] else "—")
        expiry = item.get_by_test_id("casa-credential-expiry").inner_text()
        assert expiry == "does not expire" if cred["expires_at"] is None else expiry.startswith("in "), expiry
    token = panel.locator('[data-testid=casa-credential][data-name="xcache"]')
    assert "scopes: storage.read:/store" in token.get_by_test_id("casa-credential-use").inner_text()
    assert "Last renewed" in panel.get_by_test_id("casa-credential-info").inner_text()
    assert "renews these credentials automatically" in panel.get_by_test_id("casa-renewal").inner_text()
    failed = panel.get_by_test_id("casa-renewal-failed").inner_text()
    assert "stop and start your server" in failed and "log in again" in failed
    shot(page, "16-credentials-panel.png")

    try:
        with page.expect_download(timeout=20_000) as download:
            panel.get_by_test_id("casa-bundle-download").click()
    except Exception:
        shown = panel.get_by_test_id("casa-bundle-error").inner_text()
        raise AssertionError(f"no laptop bundle was downloaded; the panel says: {shown!r}") from None
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.suffix == ".zip" and zipfile.is_zipfile(saved)
    assert panel.get_by_test_id("casa-bundle-error").inner_text() == ""
    page.close()


def test_server_without_gpus_and_without_the_sidebar(browser, tmp_path):
    """No GPU: the GPU option is disabled with the server's reason. No dask-labextension front end: the launcher
    item still opens the dialog and a notification says where clusters are listed."""
    need_browser()
    labconfig = tmp_path / "config" / "labconfig"
    labconfig.mkdir(parents=True)
    (labconfig / "page_config.json").write_text(json.dumps({"disabledExtensions": {"dask-labextension": True}}))
    lab = start_lab(tmp_path, make_minter(tmp_path / "keys"), {"CASA_GPU_COUNT": "0"})
    try:
        options = api(lab, "GET", "options").json()
        assert options["gpu"]["available"] is False and options["gpu"]["reason"]
        page = open_lab(browser, lab, sidebar=False)
        assert page.locator('.jp-SideBar [data-id="dask-dashboard-launcher"]').count() == 0
        page.locator(".jp-LauncherCard", has_text="Dask cluster (Casa)").click()
        page.locator(DIALOG).wait_for()
        assert option(page, "gpus_per_worker").is_disabled()
        assert page.get_by_test_id("casa-limit-gpus_per_worker").inner_text() == "unavailable"
        assert options["gpu"]["reason"] in page.get_by_test_id("casa-gpu-note").inner_text()
        shot(page, "17-no-gpu.png")
        option(page, "workers").fill("1")
        create(page)
        page.locator(DIALOG).wait_for(state="detached", timeout=TIMEOUT * 1000)
        (cluster,) = api(lab, "GET", "clusters").json()
        assert cluster["casa"]["gpus_per_worker"] == 0
        toast = page.locator(".Toastify__toast", has_text="has no Dask sidebar, where clusters are listed")
        toast.wait_for()
        assert cluster["scheduler_address"] in toast.inner_text()
        page.wait_for_timeout(800)  # the toast slides in
        shot(page, "18-no-sidebar-notification.png")
        assert api(lab, "DELETE", f"clusters/{cluster['id']}").status_code == 204
        page.close()
    finally:
        for cluster in api(lab, "GET", "clusters").json():
            api(lab, "DELETE", f"clusters/{cluster['id']}")
        stop_jupyter(lab)


def test_status_bar_warns_before_expiry(browser, lab):
    # re-mount a bundle minted 50 min ago: its 1 h tokens lapse in ~10 min
    then = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=50)
    write_bundle(lab.minter.mint("alice", now=then), lab.bundle_dir)
    page = open_lab(browser, lab, sidebar=False)
    status = page.locator("[data-testid=casa-credential-status].casa-warn")
    status.wait_for()
    assert re.match(r"Credentials: (9|10)m", status.inner_text())
    toast = page.locator(".Toastify__toast", has_text="restart your server")
    toast.wait_for()
    assert "expire in" in toast.inner_text()
    assert MountedBundle.from_directory(lab.bundle_dir).status()["seconds_left"] < 11 * 60
    page.close()
