"""Stable Video Diffusion (``StableVideoDiffusionPipeline``): image-to-video with a spatio-temporal UNet, no prompt."""
