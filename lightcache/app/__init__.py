"""The Gradio app's logic: form validation, the pipeline cache, jobs, per-run outputs and the page layout.

``app.py`` at the project root only builds the page with :func:`build_demo` and launches it; everything it shows
is computed here and in :mod:`lightcache.plots` from the run-event stream.

Example:
    >>> from lightcache.app import build_demo
    >>> from lightcache.app.pipelines import PipelineCache
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> demo = build_demo(PipelineCache(loader=lambda preset, device: build_tiny_pipeline(0), device="cpu"))
"""

from importlib import import_module
from typing import Any

from .launch import main, parse_args

__all__ = ["build_demo", "main", "parse_args"]


def __getattr__(name: str) -> Any:
    # Gradio loads on first use of build_demo, not on import: app.py checks GRADIO_SERVER_PORT (which Gradio reads,
    # and chokes on, at import) through .launch first.
    if name == "build_demo":
        value = import_module(".layout", __name__).build_demo
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
