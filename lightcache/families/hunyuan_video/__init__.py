"""HunyuanVideo (``HunyuanVideoPipeline``): a Llama and a CLIP text encoder, embedded guidance. Its adapter is
:mod:`~lightcache.families.hunyuan_video.adapter`, its tiny random pipeline
:mod:`~lightcache.families.hunyuan_video.tiny`."""

from .adapter import HunyuanVideoAdapter

__all__ = ["HunyuanVideoAdapter"]
