"""The page in a real browser: headless system Chromium driven by Playwright loads it, runs, stops, screenshots.

Skips (saying why) where the ``playwright`` package or a system Chromium is missing; CI installs both.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import CallGate

from lightcache.app import build_demo
from lightcache.app.outputs import OutputDirs
from lightcache.app.pipelines import PipelineCache
from lightcache.tiny import build_tiny_pipeline

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(warmup=2, frames=5, height=32, width=32, tau=0.2)


def _screenshot_module():
    # The driver lives in scripts/screenshot.py, which also makes the README's picture; load it by path.
    spec = importlib.util.spec_from_file_location("screenshot", ROOT / "scripts" / "screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shot():
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    module = _screenshot_module()
    if module.chromium_path() is None:
        pytest.skip("no system Chromium (apt-get install chromium)")
    return module


def _serve(tmp_path, loader, warm_up=True, **defaults):
    demo = build_demo(PipelineCache(loader=loader, device="cpu", warm_up=warm_up), OutputDirs(tmp_path / "outputs"),
                      defaults=dict(SMALL, **defaults))
    demo.launch(prevent_thread_lock=True, quiet=True)
    return demo


def test_page_runs_in_headless_chromium(shot, tmp_path):
    demo = _serve(tmp_path, lambda preset, device: build_tiny_pipeline(0), steps=8)
    try:
        png = tmp_path / "page.png"
        seen = shot.run_in_browser(demo.local_url, png, timeout_s=180)
    finally:
        demo.close()
    assert seen["status"].startswith("Done.") and "step 8 / 8" in seen["status"]
    assert seen["first_marker_s"] <= seen["finished_s"]
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stop_in_the_browser_ends_the_run_cleanly_and_run_works_again(shot, tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    from lightcache.app.jobs import Session

    pipes = []
    # The first run holds its third transformer call (its first step is on the page by then) until Stop reaches
    # the server, so it cannot end before Stop arrives, however fast or slow this machine is.
    gate = CallGate()
    gate.hold(after_calls=2)
    session_stop = Session.stop

    def stop(session):
        gate.release()
        return session_stop(session)

    monkeypatch.setattr(Session, "stop", stop)

    def loader(preset, device):
        pipe = build_tiny_pipeline(0)
        pipe.transformer.register_forward_pre_hook(gate)
        pipes.append(pipe)
        return pipe

    # No warm-up generation after loading, so the calls counted above are the first run's own.
    demo = _serve(tmp_path, loader, warm_up=False, steps=100)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shot.chromium_path(), args=shot.CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(demo.local_url)
            page.locator("#run").click()
            page.wait_for_selector("#trace .js-plotly-plot .scatterlayer .point", timeout=120_000)
            page.locator("#stop").click()
            _wait_for_status(page, "Stopped.", 60)
            page.wait_for_timeout(1000)  # any update still in flight would land now and must not undo the stop
            # Nothing reverted it to a running or finished state, and no error frame surrounds it (the status box
            # has no progress tracker of its own, see lightcache.app.layout).
            assert page.locator("#status").inner_text().startswith("Stopped.")
            page.locator("#run").click()
            _wait_for_status(page, "Done.", 180)
            browser.close()
    finally:
        demo.close()
    registry = getattr(pipes[0].transformer, "_diffusers_hook", None)
    assert len(pipes) == 1 and (registry is None or not registry.hooks)
    assert not list((tmp_path / "outputs").iterdir())[1:], "only the finished run's directory may remain"


def _wait_for_status(page, prefix: str, timeout_s: float) -> None:
    """Wait until the status line starts with ``prefix``; on timeout say what it showed instead."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            "(prefix) => (document.querySelector('#status')?.innerText || '').startsWith(prefix)",
            arg=prefix, timeout=timeout_s * 1000,
        )
    except PlaywrightTimeout:
        pytest.fail(f"status never started with {prefix!r}; it shows: {page.locator('#status').inner_text()!r}")
