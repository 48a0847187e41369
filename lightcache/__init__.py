"""lightcache: training-free acceleration of diffusers video pipelines, and a way to see why it works.

EasyCache reuses the transformer's transformation on steps where the accumulated predicted error stays under a
threshold; LightCache's memory strategies (asynchronous swapping, feature chunking, sliced decoding) keep the
denoise and decode stages from surging in memory. A generation is a stream of plain-data events.

Example:
    >>> from lightcache import EasyCacheConfig, RunSettings, run_generation
    >>> EasyCacheConfig(threshold=0.05).warmup_steps
    10
"""

from importlib import import_module
from typing import Any

from .errors import LightcacheError, RunCancelled
from .settings import RunSettings

__version__ = "0.1.0"

# torch and diffusers load on first use of these names, not on ``import lightcache``: ``python -m lightcache``
# then reaches the CLI (which answers Ctrl-C with one line) within a fraction of a second.
_LAZY = {
    "AccelerationConfig": ".accelerate",
    "apply_lightcache": ".accelerate",
    "remove_lightcache": ".accelerate",
    "EasyCacheConfig": ".techniques.easycache",
    "apply_easycache": ".techniques.easycache",
    "remove_easycache": ".techniques.easycache",
    "run_generation": ".runner",
    "run_to_completion": ".runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AccelerationConfig",
    "EasyCacheConfig",
    "LightcacheError",
    "RunCancelled",
    "RunSettings",
    "apply_easycache",
    "apply_lightcache",
    "remove_easycache",
    "remove_lightcache",
    "run_generation",
    "run_to_completion",
]
