"""Mochi 1 (``MochiPipeline``): an asymmetric diffusion transformer with a T5 encoder, one batched call per step.
Its adapter is :mod:`~lightcache.families.mochi.adapter`, its tiny random pipeline
:mod:`~lightcache.families.mochi.tiny`."""

from .adapter import MochiAdapter

__all__ = ["MochiAdapter"]
