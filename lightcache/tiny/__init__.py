"""The tiny model's world: offline random-weight Wan pipelines, their variants, and the moving-shape clips the
shipped model (``lightcache/data/tiny-wan``) was trained on.

* :mod:`lightcache.tiny.pipeline`: tiny Wan pipelines built from configs with seeded random weights (the tests'
  and the smoke runs' model);
* :mod:`lightcache.tiny.variants`: one tiny checkpoint per Wan variant (I2V, TI2V-5B, the two-expert A14B);
* :mod:`lightcache.tiny.shapes`: captions, rendered clips and the measures of what a video shows.

The pipeline builders are importable from here (``from lightcache.tiny import build_tiny_pipeline``); they load
torch and diffusers on first use, so importing :mod:`lightcache.tiny.shapes` alone stays light.

Example:
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> type(build_tiny_pipeline(seed=0)).__name__
    'WanPipeline'
"""

from importlib import import_module
from typing import Any

_FROM_PIPELINE = ("TINY_WORDS", "build_tiny_pipeline", "build_tiny_tokenizer", "build_tiny_wan22_pipeline",
                  "build_tiny_wan22_transformer", "build_tiny_wan22_vae")


def __getattr__(name: str) -> Any:
    if name in _FROM_PIPELINE:
        value = getattr(import_module(".pipeline", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_FROM_PIPELINE)
