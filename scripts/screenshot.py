"""Drive the app in headless Chromium: open the page, press Run, wait for the video and the timeline, screenshot.

Used two ways:

* ``python scripts/screenshot.py`` starts the app as it ships (the tiny preset's model, the page's defaults) and
  writes ``assets/screenshot.png``, the picture the README shows. Pass ``--url`` to shoot an app that is already
  running instead, ``--out`` to write elsewhere.
* ``tests/test_browser.py`` calls :func:`run_in_browser` against an app it serves with a tiny random model.

Needs the ``playwright`` Python package and a system Chromium (Debian: ``apt-get install chromium``); it never
downloads a browser: Playwright is pointed at ``/usr/bin/chromium`` (or ``$CHROMIUM``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str | None:
    """The system Chromium: ``$CHROMIUM``, else ``/usr/bin/chromium``, else ``chromium`` on the PATH."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def run_in_browser(url: str, screenshot: str | os.PathLike, timeout_s: float = 300.0,
                   viewport: tuple[int, int] = (1440, 1000), compare: bool = False) -> dict:
    """Load ``url``, click Run, wait until the run finished with a video and a timeline; save a full-page screenshot.

    ``compare`` ticks "Compare with the plain run" first.

    Returns what it saw: seconds to the first trace marker and to the finished run (from the click), and the
    status line's text.
    """
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("No system Chromium found (apt-get install chromium, or set $CHROMIUM).")
    timeout_ms = timeout_s * 1000
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.goto(url, timeout=timeout_ms)
            if compare:
                page.get_by_label("Compare with the plain run").check(timeout=timeout_ms)
            page.locator("#run").click(timeout=timeout_ms)
            clicked = time.monotonic()
            # The first trace marker: a point drawn in the trace plot while the run is still going.
            page.wait_for_selector("#trace .js-plotly-plot .scatterlayer .point", timeout=timeout_ms)
            first_marker = time.monotonic() - clicked
            page.wait_for_selector("#video video[src]", timeout=timeout_ms)
            page.wait_for_function(
                "() => (document.querySelector('#status')?.innerText || '').startsWith('Done.')",
                timeout=timeout_ms,
            )
            finished = time.monotonic() - clicked
            page.wait_for_selector("#timeline .js-plotly-plot", timeout=timeout_ms)
            status = page.locator("#status").inner_text()
            page.wait_for_timeout(500)  # let Plotly finish its transitions before the picture
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"first_marker_s": first_marker, "finished_s": finished, "status": status}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an app that is already running (default: start app.py's demo here)")
    parser.add_argument("--out", default=str(ROOT / "assets" / "screenshot.png"), help="where to write the PNG")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the run")
    parser.add_argument("--compare", action="store_true", help="tick 'Compare with the plain run' first")
    parser.add_argument("--random-weights", action="store_true",
                        help="serve a random-weight tiny model instead of the shipped one (the layout is the same; "
                        "the video is noise)")
    args = parser.parse_args(argv)

    demo = None
    url = args.url
    if url is None:
        sys.path.insert(0, str(ROOT))
        if args.random_weights:
            from lightcache.app import build_demo
            from lightcache.app.pipelines import PipelineCache
            from lightcache.tiny import build_tiny_pipeline

            demo = build_demo(PipelineCache(loader=lambda preset, device: build_tiny_pipeline(0)))
        else:
            from app import demo  # noqa: E402 - the page exactly as `python app.py` serves it

        demo.launch(prevent_thread_lock=True, quiet=True)
        url = demo.local_url
    try:
        seen = run_in_browser(url, args.out, timeout_s=args.timeout, compare=args.compare)
    finally:
        if demo is not None:
            demo.close()
    print(f"first trace marker {seen['first_marker_s']:.1f} s after Run, finished after {seen['finished_s']:.1f} s")
    print(f"status: {seen['status']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
