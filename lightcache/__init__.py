"""lightcache: training-free acceleration of diffusers video pipelines, and a way to see why it works.

EasyCache reuses the transformer's transformation on steps where the accumulated predicted error stays under a
threshold; LightCache's memory strategies (asynchronous swapping, feature chunking, sliced decoding) keep the
denoise and decode stages from surging in memory. A generation is a stream of plain-data events.

Example:
    >>> from lightcache import EasyCacheConfig, RunSettings, run_generation
    >>> EasyCacheConfig(threshold=0.05).warmup_steps
    10
"""

from .easycache import EasyCacheConfig, apply_easycache, remove_easycache
from .errors import LightcacheError, RunCancelled
from .runner import run_generation, run_to_completion
from .settings import RunSettings

__version__ = "0.1.0"

__all__ = [
    "EasyCacheConfig",
    "LightcacheError",
    "RunCancelled",
    "RunSettings",
    "apply_easycache",
    "remove_easycache",
    "run_generation",
    "run_to_completion",
]
