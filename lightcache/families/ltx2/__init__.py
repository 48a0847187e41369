"""LTX-2 (``LTX2Pipeline``): video and audio denoised together, up to three guidance calls per step. Its adapter is
:mod:`~lightcache.families.ltx2.adapter`, its tiny random pipeline :mod:`~lightcache.families.ltx2.tiny`."""

from .adapter import LTX2Adapter

__all__ = ["LTX2Adapter"]
