"""Browser test of the quickstart notebook: JupyterLab on localhost, Debian's chromium driven by
playwright (headless). Runs the notebook in smoke mode and checks that the live views appear
while it runs, that the image grid and the plots render, and that the control panel talks to
the kernel: a slider moved in the browser changes the status line the kernel writes, and the
Run button runs the pipeline again with the new value. Screenshots go to
``tests/_artifacts/test_browser/`` (or ``$GENIE_TEST_ARTIFACTS/test_browser``).

Skipped when playwright or chromium is missing, unless ``GENIE_REQUIRE_BROWSER=1`` (CI sets it),
which turns the skip into a failure.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_quickstart.ipynb"
CHROMIUM = os.environ.get("GENIE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("GENIE_TEST_ARTIFACTS", ROOT / "tests" / "_artifacts")) / "test_browser"
RUN_TIMEOUT_S = 240


def _missing() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; never 'playwright install')"
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        return "jupyterlab is not installed"
    if not Path(CHROMIUM).is_file():
        return f"no chromium at {CHROMIUM} (apt-get install chromium)"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = _missing()
    if reason:
        if os.environ.get("GENIE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser test required (GENIE_REQUIRE_BROWSER=1) but {reason}")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    settings = root / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = _free_port(), "genie-browser-test"
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(root / "settings"), JUPYTER_RUNTIME_DIR=str(root / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(root / "workspaces"), OMP_NUM_THREADS="1")
    env.pop("GENIE_LIVE", None)
    log = open(root / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
         "--LabApp.extension_manager=readonly", f"--LabApp.workspaces_dir={root / 'workspaces'}"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    log.flush()
                    pytest.fail("JupyterLab did not start:\n" + (root / "jupyterlab.log").read_text()[-3000:])
                time.sleep(0.3)
        yield {"url": f"{base}/lab/tree/{NOTEBOOK.name}?token={token}", "root": root}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


KERNEL_IDLE = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.status === 'idle';
}"""

ALL_EXECUTED = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const cells = w.content.widgets.filter(c => c.model.type === 'code');
  const k = w.sessionContext.session.kernel;
  return k.status === 'idle' && cells.every(c => c.model.executionCount != null);
}"""


def test_quickstart_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    seen = {"progress": False, "live_plot": False}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(lab["url"])
            page.wait_for_function(KERNEL_IDLE, timeout=120_000)
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

            # while it runs: the live views (progress bar widget, plotly FigureWidget) must appear
            deadline = time.time() + RUN_TIMEOUT_S
            while time.time() < deadline:
                seen["progress"] |= page.locator(".genie-progress").count() > 0
                seen["live_plot"] |= page.locator(".genie-live-plot").count() > 0
                if page.evaluate(ALL_EXECUTED):
                    break
                time.sleep(0.15)
            else:
                page.screenshot(path=str(ARTIFACTS / "timeout.png"))
                pytest.fail(f"the notebook did not finish within {RUN_TIMEOUT_S} s")
            errors = page.locator("[data-mime-type='application/vnd.jupyter.error']")
            assert errors.count() == 0, errors.first.inner_text()
            assert seen["progress"], "no live progress bar appeared while the notebook ran"
            assert seen["live_plot"], "no live plotly FigureWidget appeared while the notebook ran"

            # the image grid (a PNG) and the plots (BNS loss, per-block errors) rendered
            grid = page.locator(".jp-OutputArea-output img").first
            grid.scroll_into_view_if_needed()
            assert grid.evaluate("img => img.complete && img.naturalWidth > 100")
            plot = page.locator(".jp-RenderedPlotly").first
            plot.wait_for(state="attached", timeout=30_000)
            plot.scroll_into_view_if_needed()
            assert page.locator(".js-plotly-plot .main-svg").count() >= 2
            assert "BNS loss" in plot.text_content()
            page.screenshot(path=str(ARTIFACTS / "quickstart_distillation.png"))

            # the control panel: move the w_bits slider with the keyboard, the kernel answers
            panel = page.locator(".genie-run-panel")
            panel.scroll_into_view_if_needed()
            status = panel.locator(".genie-kernel-settings")
            assert "w_bits=4" in status.text_content()
            slider = panel.locator(".widget-slider").filter(has_text="w bits").locator(".noUi-handle").first
            slider.focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function(
                "() => document.querySelector('.genie-kernel-settings').textContent.includes('w_bits=5')", timeout=30_000)

            # Run with the new value and short runs (Home moves a slider to its minimum, ArrowRight
            # one step up): the pipeline runs again inside the panel, with live views
            for label, keys, value in (("distill iters", ["Home"], 10), ("recon iters", ["Home", "ArrowRight"], 10)):
                panel.locator(".widget-slider").filter(has_text=label).locator(".noUi-handle").first.focus()
                for key in keys:
                    page.keyboard.press(key)
                page.wait_for_function(
                    f"() => /{label.replace(' ', '_')}={value}(?![0-9])/"
                    ".test(document.querySelector('.genie-kernel-settings').textContent)", timeout=30_000)
            panel.locator("button", has_text="Run").click()
            page.wait_for_function(
                "() => /run 1 finished|the run failed/.test(document.querySelector('.genie-run-panel').textContent)",
                timeout=RUN_TIMEOUT_S * 1000)
            text = panel.text_content()
            assert "the run failed" not in text, text[-3000:]
            assert "W5A4" in text, text[-2000:]
            assert panel.locator(".js-plotly-plot").count() >= 1
            panel.locator(".js-plotly-plot").last.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "quickstart_panel_run.png"))
            status.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "quickstart.png"))
        finally:
            browser.close()
    assert (ARTIFACTS / "quickstart.png").stat().st_size > 10_000
