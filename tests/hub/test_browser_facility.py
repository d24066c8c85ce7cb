"""A person in a real browser (Debian Chromium via Playwright) on the one-command facility: sign in at the
OIDC provider, start a server, reach JupyterLab; an outsider sees a clear refusal. Screenshots go to
docs/screenshots/ for the guides."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.hub import hub as H
from tests.support import CHROMIUM, REPO, free_port, launch_chromium, need, wait_for_port

pytestmark = pytest.mark.browser

# screenshots for the guides: regenerated into docs/ with CASA_UPDATE_SCREENSHOTS=1, else kept as artifacts
SHOTS = REPO / ("docs/screenshots" if os.environ.get("CASA_UPDATE_SCREENSHOTS") else "test-artifacts/screenshots")


@pytest.fixture(scope="module")
def facility(tmp_path_factory):
    need(H.CHP.exists(), "configurable-http-proxy (npm ci)")
    need(Path(CHROMIUM).exists(), "Debian chromium")
    state = tmp_path_factory.mktemp("browser-facility") / "state"
    port, oidc_port = free_port(), free_port()
    proc = subprocess.Popen(
        H.facility_command(port, oidc_port, state, "--gpus", 2),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(port, proc=proc, timeout=60)
        import httpx

        deadline = time.monotonic() + 60
        while httpx.get(f"http://127.0.0.1:{port}/hub/api", timeout=5).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", state
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def page():
    SHOTS.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        pg = context.new_page()
        pg.set_default_timeout(20_000)
        try:
            yield pg
        finally:
            browser.close()


def _sign_in(page, base: str, user: str, shot: str | None = None):
    page.goto(base + "/hub/login")
    if shot:
        page.screenshot(path=str(SHOTS / f"{shot}-hub-login.png"))
    page.get_by_text("Sign in with the Casa demo identity provider").click()
    page.wait_for_url("**/oauth2/authorize**")
    if shot:
        page.screenshot(path=str(SHOTS / f"{shot}-provider.png"))
    page.get_by_role("button", name=user, exact=True).click()


def test_physicist_signs_in_picks_gpu_profile_and_launches_a_cluster(facility, page):
    base, state = facility
    started = time.monotonic()
    _sign_in(page, base, "alice", shot="01")
    # the spawn form: alice (gpu-users) may pick the GPU profile
    page.wait_for_selector("form#spawn_form")
    assert page.locator("input[name=profile][value=gpu]").count() == 1
    page.locator("input[name=profile][value=gpu]").check()
    page.screenshot(path=str(SHOTS / "02-spawn-form.png"))
    page.locator("form#spawn_form input[type=submit], form#spawn_form button[type=submit]").first.click()
    page.wait_for_url("**/user/alice/lab**", timeout=120_000)
    page.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
    ready = time.monotonic() - started
    page.screenshot(path=str(SHOTS / "03-jupyterlab.png"))
    creds = state / "home" / "alice" / ".casa" / "credentials"
    assert (creds / "xcache.token").is_file()
    print(f"browser: sign-in click to JupyterLab ready in {ready:.1f} s")
    # the credentials show in the status bar; launch a GPU Dask cluster from the launcher
    page.wait_for_selector("[data-testid=casa-credential-status]")
    page.locator(".jp-LauncherCard", has_text="Dask cluster (Casa)").click()  # listed in the Dask sidebar
    page.locator("[data-testid=casa-option-workers]").fill("2")
    page.locator("[data-testid=casa-option-gpus_per_worker]").fill("1")
    page.screenshot(path=str(SHOTS / "05-dask-cluster-form.png"))
    page.locator("[data-testid=casa-options-dialog] .jp-Dialog-button.jp-mod-accept").click()
    card = page.locator("#dask-dashboard-launcher li.dask-ClusterListingItem")
    card.wait_for(timeout=60_000)
    assert "Number of Workers" in card.inner_text()
    page.screenshot(path=str(SHOTS / "06-dask-cluster.png"))
    card.locator(".dask-ClusterListingItem-stop").click()
    card.wait_for(state="detached", timeout=60_000)


def test_outsider_sees_a_clear_refusal(facility, page):
    base, _ = facility
    _sign_in(page, base, "eve")
    page.wait_for_load_state()
    body = page.inner_text("body")
    assert "403" in body and "not in a group allowed to use this facility" in body
    page.screenshot(path=str(SHOTS / "04-refused.png"))


def test_profile_outside_the_users_groups_is_not_offered_and_refused(facility, page):
    base, _ = facility
    _sign_in(page, base, "bob")  # atlas only: no GPU profile
    page.wait_for_selector("form#spawn_form")
    assert page.locator("input[name=profile][value=gpu]").count() == 0
    # a tampered form asking for it anyway
    page.evaluate("""() => { const i = document.querySelector('input[name=profile]');
                              i.value = 'gpu'; i.checked = true; }""")
    page.locator("form#spawn_form input[type=submit], form#spawn_form button[type=submit]").first.click()
    page.wait_for_selector("text=not available to your account", timeout=60_000)
