"""`make lab` as a reader uses it: JupyterLab from the project's venv on book/, opened in headless
Chromium (Debian's) on 127.0.0.1 with every other request blocked; a chapter's first cells run
through the kernel and their output appears; then the server is stopped."""
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHROMIUM = "/usr/bin/chromium"
SHOTS = os.path.join(ROOT, "_build", "screenshots")
CHAPTER = "02_forward_process.ipynb"
EXPECTED = "betas[0], betas[-1] ="  # what the chapter's first printing cell (its 4th cell) prints

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} not found: install Debian's Chromium (apt-get install chromium) to run the browser tests",
                allow_module_level=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)  # no news or update checks: nothing to fetch, no pop-up in the way
    (settings / "notification.jupyterlab-settings").write_text('{"checkForUpdates": false, "fetchNews": "false"}')
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"))
    args = (f"--no-browser --ip=127.0.0.1 --port={port} --IdentityProvider.token={token} "
            "--ServerApp.port_retries=0")
    proc = subprocess.Popen(["make", "-s", "lab", f"LAB_ARGS={args}"], cwd=ROOT, env=env, start_new_session=True,
                            stdout=open(tmp_path / "lab.log", "w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()[-3000:])
            time.sleep(0.5)
    yield base, token
    os.killpg(proc.pid, signal.SIGTERM)  # make, jupyter lab and its kernels
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    with pytest.raises(OSError):  # the server is gone
        urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)


def test_make_lab_opens_a_chapter_and_runs_its_first_cells(lab):
    from playwright.sync_api import sync_playwright

    base, token = lab
    blocked = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1300, "height": 900})

        def route(r):
            if r.request.url.startswith(base) or r.request.url.startswith(("data:", "blob:")):
                r.continue_()
            else:
                blocked.append(r.request.url)
                r.abort()
        page.route("**/*", route)
        page.goto(f"{base}/lab/tree/{CHAPTER}?token={token}", wait_until="load")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
        page.wait_for_function("() => document.querySelector('.jp-Notebook').innerText.includes('前向过程')",
                               timeout=60_000)
        page.locator(".jp-Notebook .jp-Cell").first.click()
        for _ in range(4):  # title (markdown), set-up, markdown, the first printing cell
            page.keyboard.press("Shift+Enter")
            page.wait_for_timeout(300)
        page.wait_for_function(f"() => [...document.querySelectorAll('.jp-OutputArea-output')]"
                               f".some(e => e.innerText.includes({EXPECTED!r}))", timeout=240_000)
        outputs = page.evaluate("() => [...document.querySelectorAll('.jp-OutputArea-output')].map(e => e.innerText)")
        errors = page.evaluate("() => document.querySelectorAll('.jp-OutputArea-output[data-mime-type*=\"error\"]').length")
        os.makedirs(SHOTS, exist_ok=True)
        page.screenshot(path=os.path.join(SHOTS, "lab.png"))
        browser.close()
    assert any("NoiseSchedule" in o or EXPECTED in o for o in outputs)
    assert errors == 0, outputs
    assert blocked == [], blocked  # JupyterLab needed nothing from outside 127.0.0.1
