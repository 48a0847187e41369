"""SkyReels-V2 (``SkyReelsV2Pipeline`` and ``SkyReelsV2ImageToVideoPipeline``; its diffusion-forcing pipelines are
refused): a Wan-architecture transformer. Its adapter is :mod:`~lightcache.families.skyreels_v2.adapter`, its tiny
random pipelines :mod:`~lightcache.families.skyreels_v2.tiny`."""

from .adapter import SkyReelsV2Adapter

__all__ = ["SkyReelsV2Adapter"]
