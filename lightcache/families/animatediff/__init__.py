"""AnimateDiff (``AnimateDiffPipeline``): a Stable Diffusion UNet with a motion adapter's temporal layers, DDIM."""

from .adapter import AnimateDiffAdapter

__all__ = ["AnimateDiffAdapter"]
