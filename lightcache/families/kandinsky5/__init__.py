"""Kandinsky 5 (``Kandinsky5T2VPipeline``): a Qwen2.5-VL and a CLIP text encoder, channel-last latents. Its adapter
is :mod:`~lightcache.families.kandinsky5.adapter`, its tiny random pipeline :mod:`~lightcache.families.kandinsky5.tiny`."""

from .adapter import Kandinsky5Adapter

__all__ = ["Kandinsky5Adapter"]
