"""The Gradio app's logic: form validation, the pipeline cache, jobs, per-run outputs and the page layout.

``app.py`` at the project root only builds the page with :func:`build_demo` and launches it; everything it shows
is computed here and in :mod:`lightcache.plots` from the run-event stream.

Example:
    >>> from lightcache.app import build_demo
    >>> from lightcache.app.pipelines import PipelineCache
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> demo = build_demo(PipelineCache(loader=lambda preset, device: build_tiny_pipeline(0), device="cpu"))
"""

from .layout import build_demo
from .launch import main, parse_args

__all__ = ["build_demo", "main", "parse_args"]
