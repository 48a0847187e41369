"""Mochi 1 (``MochiPipeline``): an asymmetric diffusion transformer with a T5 encoder, one batched call per step."""
