"""HunyuanVideo-1.5 (text- and image-to-video): a Qwen2.5-VL and a ByT5 text encoder, guidance through a guider. Its
adapter is :mod:`~lightcache.families.hunyuan_video15.adapter`, its tiny random pipelines
:mod:`~lightcache.families.hunyuan_video15.tiny`."""

from .adapter import HunyuanVideo15Adapter

__all__ = ["HunyuanVideo15Adapter"]
