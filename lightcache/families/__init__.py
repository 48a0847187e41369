"""One adapter per model family, and the registry from a pipeline (or a pipeline class name) to its adapter.

Adding a family is one folder (``families/<family>/``: its adapter, a
:class:`~lightcache.families.base.FamilyAdapter` subclass, and its tiny random pipeline), one line in
:data:`ADAPTERS`, its presets and its rows in ``tests/test_families.py``.

Example:
    >>> from lightcache.families import adapter_named, family_of_pipeline_class
    >>> family_of_pipeline_class("WanImageToVideoPipeline")
    'wan'
    >>> adapter_named("wan").denoiser_names
    ('transformer', 'transformer_2')
"""

from __future__ import annotations

from ..errors import LightcacheError
from .animatediff import AnimateDiffAdapter
from .base import FamilyAdapter
from .cogvideox import CogVideoXAdapter
from .hunyuan_video import HunyuanVideoAdapter
from .hunyuan_video15 import HunyuanVideo15Adapter
from .ltx import LTXAdapter
from .ltx2 import LTX2Adapter
from .mochi import MochiAdapter
from .kandinsky5 import Kandinsky5Adapter
from .skyreels_v2 import SkyReelsV2Adapter
from .svd import SVDAdapter
from .wan import WanAdapter

#: Every family lightcache knows, by preset ``family`` name: adding a family is one line here.
ADAPTERS: dict[str, FamilyAdapter] = {adapter.name: adapter for adapter in (
    WanAdapter(),
    HunyuanVideoAdapter(),
    HunyuanVideo15Adapter(),
    SVDAdapter(),
    AnimateDiffAdapter(),
    LTXAdapter(),
    LTX2Adapter(),
    CogVideoXAdapter(),
    MochiAdapter(),
    SkyReelsV2Adapter(),
    Kandinsky5Adapter(),
)}


def adapter_named(family: str) -> FamilyAdapter:
    """The adapter of a preset's ``family``; a clear error naming the known families otherwise."""
    try:
        return ADAPTERS[family]
    except KeyError:
        raise LightcacheError(
            f"Model family '{family}' is not supported yet; supported: {', '.join(sorted(ADAPTERS))}."
        ) from None


def family_of_pipeline_class(class_name: str) -> str | None:
    """The family serving diffusers pipeline class ``class_name``, or None."""
    for adapter in ADAPTERS.values():
        if class_name in adapter.pipeline_classes:
            return adapter.name
    return None


def adapter_for(pipe) -> FamilyAdapter:
    """The adapter serving ``pipe``'s class; a clear error for pipelines no family covers, and the family's reason
    for a pipeline class it refuses (:attr:`FamilyAdapter.unsupported_pipelines`)."""
    family = family_of_pipeline_class(type(pipe).__name__)
    for adapter in ADAPTERS.values():
        reason = adapter.unsupported_pipelines.get(type(pipe).__name__)
        if reason:
            raise LightcacheError(reason)
    if family is None:
        known = ", ".join(c for a in ADAPTERS.values() for c in a.pipeline_classes)
        raise LightcacheError(f"lightcache does not know {type(pipe).__name__} yet; it runs {known}.")
    return ADAPTERS[family]


__all__ = ["ADAPTERS", "FamilyAdapter", "adapter_for", "adapter_named", "family_of_pipeline_class"]
