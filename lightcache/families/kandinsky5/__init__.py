"""Kandinsky 5 (``Kandinsky5T2VPipeline``): a Qwen2.5-VL and a CLIP text encoder, channel-last latents."""
