"""CogVideoX (``CogVideoXPipeline``, ``CogVideoXImageToVideoPipeline``; 1.0 and 1.5): a T5 encoder, one batched call."""
