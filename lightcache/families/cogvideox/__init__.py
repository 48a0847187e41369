"""CogVideoX (``CogVideoXPipeline``, ``CogVideoXImageToVideoPipeline``; 1.0 and 1.5): a T5 encoder, one batched call.
Its adapter is :mod:`~lightcache.families.cogvideox.adapter`, its tiny random pipelines
:mod:`~lightcache.families.cogvideox.tiny`."""

from .adapter import CogVideoXAdapter

__all__ = ["CogVideoXAdapter"]
