"""Stable Video Diffusion (``StableVideoDiffusionPipeline``): image-to-video with a spatio-temporal UNet, no prompt.
Its adapter is :mod:`~lightcache.families.svd.adapter`, its tiny random pipeline
:mod:`~lightcache.families.svd.tiny`."""

from .adapter import SVDAdapter

__all__ = ["SVDAdapter"]
