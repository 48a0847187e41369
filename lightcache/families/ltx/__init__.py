"""LTX-Video (``LTXPipeline``, ``LTXImageToVideoPipeline``): packed latent tokens, one batched call per step. Its
adapter is :mod:`~lightcache.families.ltx.adapter`, its tiny random pipelines :mod:`~lightcache.families.ltx.tiny`."""

from .adapter import LTXAdapter

__all__ = ["LTXAdapter"]
