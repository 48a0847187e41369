"""What the app loads before it serves: the preset named by ``LIGHTCACHE_PRESET``, loaded at module scope.

A Hugging Face ZeroGPU Space must load its model when ``app.py`` is imported: there ZeroGPU intercepts
``.to("cuda")`` and keeps the weights, moving them onto a GPU for each ``spaces.GPU`` call. A model loaded inside
the call would be lost with the call's worker process and loaded again on every request. So a server picks its
preset at start:

* ``LIGHTCACHE_PRESET`` set (a Space variable, or the environment of ``python app.py``): the shipped preset of that
  name is checked before anything loads (an unknown name ends the app with one line), its model is loaded (and, off
  ZeroGPU, warmed up) before the page serves, and the page and its API offer that preset only;
* unset, off ZeroGPU: as always, every shipped preset is offered and a model loads on the first Run that needs it;
* unset, on ZeroGPU: the default preset (``tiny``) is served the same way, and the log says how to choose another.

A preset is still chosen by shipped name only, never by path.

Example:
    >>> from lightcache.app.startup import served_preset
    >>> served_preset({}, zero_gpu=False) is None, served_preset({"LIGHTCACHE_PRESET": " tiny "}, zero_gpu=False)
    (True, 'tiny')
    >>> served_preset({}, zero_gpu=True)
    'tiny'
    >>> served_preset({"LIGHTCACHE_PRESET": "nope"}, zero_gpu=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lightcache.errors.LightcacheError: LIGHTCACHE_PRESET: Unknown preset 'nope'. Valid presets: tiny, ...
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Mapping

from ..errors import LightcacheError
from ..presets import load_shipped_preset
from .form import DEFAULT_PRESET
from .gpu import import_spaces, on_zero_gpu
from .pipelines import Loader, PipelineCache

PRESET_VARIABLE = "LIGHTCACHE_PRESET"

log = logging.getLogger(__name__)


def served_preset(environ: Mapping[str, str] = os.environ, zero_gpu: bool | None = None) -> str | None:
    """The name of the preset this server loads at start and serves alone, or None (all, loaded on demand).

    ``zero_gpu``: whether this is a ZeroGPU Space (default: :func:`.gpu.on_zero_gpu`). Raises
    :class:`LightcacheError` for a name that is not a shipped preset.
    """
    raw = environ.get(PRESET_VARIABLE, "").strip()
    if not raw:
        if on_zero_gpu() if zero_gpu is None else zero_gpu:
            log.warning("ZeroGPU: serving the '%s' preset; set the Space variable %s to serve another.",
                        DEFAULT_PRESET, PRESET_VARIABLE)
            return DEFAULT_PRESET
        return None
    try:
        return load_shipped_preset(raw).name
    except LightcacheError as exc:
        raise LightcacheError(f"{PRESET_VARIABLE}: {exc}") from None


def start_pipelines(served: str | None, loader: Loader | None = None,
                    zero_gpu: bool | None = None, device: str | None = None) -> PipelineCache:
    """The app's pipeline cache, with ``served``'s model loaded now (None: nothing loads before a Run).

    The ``spaces`` package is imported first where it is installed: on ZeroGPU, importing it is what patches torch
    so that the model's move to CUDA is intercepted. The warm-up run needs a GPU, which ZeroGPU's main process never
    has: there it happens on each GPU worker's first run instead (:meth:`PipelineCache.preload`). A GPU preset on a
    machine without CUDA (and outside ZeroGPU) is refused before anything loads. ``device``: where the pipelines go
    (default: CUDA when available).
    """
    import_spaces()
    zero_gpu = on_zero_gpu() if zero_gpu is None else zero_gpu
    pipelines = PipelineCache(loader=loader, device=device)
    if served is not None:
        preset = load_shipped_preset(served)
        if preset.requires_gpu and not zero_gpu and not pipelines.device.startswith("cuda"):
            raise LightcacheError(
                f"{PRESET_VARIABLE}: '{preset.name}' needs a CUDA GPU and this machine has none; set it to "
                f"'{DEFAULT_PRESET}', which runs on a CPU, or leave it unset."
            )
        pipelines.preload(preset, warm_up=not zero_gpu)
    return pipelines


def start_or_exit() -> tuple[PipelineCache, str | None]:
    """:func:`served_preset` and :func:`start_pipelines` for ``app.py``: a bad name or a model that cannot load ends
    the app with one ``error:`` line and exit status 2 (the log has a loading failure's details)."""
    try:
        served = served_preset()
        return start_pipelines(served), served
    except LightcacheError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
