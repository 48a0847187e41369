"""AnimateDiff (``AnimateDiffPipeline``): a Stable Diffusion UNet with a motion adapter's temporal layers, DDIM."""
