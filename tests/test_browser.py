"""The page in a real browser: headless system Chromium driven by Playwright loads it, runs, and screenshots.

Skips (saying why) where the ``playwright`` package or a system Chromium is missing; CI installs both.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lightcache.app import build_demo
from lightcache.app.outputs import OutputDirs
from lightcache.app.pipelines import PipelineCache
from lightcache.tiny import build_tiny_pipeline

ROOT = Path(__file__).resolve().parent.parent


def _screenshot_module():
    # The driver lives in scripts/screenshot.py, which also makes the README's picture; load it by path.
    spec = importlib.util.spec_from_file_location("screenshot", ROOT / "scripts" / "screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_page_runs_in_headless_chromium(tmp_path):
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    shot = _screenshot_module()
    if shot.chromium_path() is None:
        pytest.skip("no system Chromium (apt-get install chromium)")

    demo = build_demo(
        PipelineCache(loader=lambda preset, device: build_tiny_pipeline(0), device="cpu"),
        OutputDirs(tmp_path / "outputs"),
        defaults=dict(steps=8, warmup=2, frames=5, height=32, width=32, tau=0.2),
    )
    demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        png = tmp_path / "page.png"
        seen = shot.run_in_browser(demo.local_url, png, timeout_s=180)
    finally:
        demo.close()
    assert seen["status"].startswith("Done.") and "step 8 / 8" in seen["status"]
    assert seen["first_marker_s"] <= seen["finished_s"]
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
