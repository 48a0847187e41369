"""The Wan family (Wan2.1 and Wan2.2, text- and image-to-video, one or two experts): its adapter
(:mod:`~lightcache.families.wan.adapter`), its transformer's chunked forwards (:mod:`~lightcache.families.wan.chunked`)
and its VAE's band decoder (:mod:`~lightcache.families.wan.vae_bands`)."""

from .adapter import WanAdapter

__all__ = ["WanAdapter"]
