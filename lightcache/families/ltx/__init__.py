"""LTX-Video (``LTXPipeline``, ``LTXImageToVideoPipeline``): packed latent tokens, one batched call per step."""
