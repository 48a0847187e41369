"""One generation request, validated against its preset's limits.

Every field error names the field and the allowed range, so the CLI and the app can show it as it is.

Example:
    >>> from lightcache.presets import load_preset
    >>> from lightcache.settings import RunSettings
    >>> s = RunSettings.from_preset(load_preset("tiny"), prompt="a blue square moving up", threshold=0.1)
    >>> s.threshold, s.easycache
    (0.1, True)
    >>> RunSettings.from_preset(load_preset("tiny"), steps=3).warmup   # the preset's warm-up, fitted to 3 steps
    2
    >>> RunSettings.from_preset(load_preset("tiny"), frames=10)
    Traceback (most recent call last):
    ...
    lightcache.errors.LightcacheError: frames must be of the form 4k+1 (e.g. 5, 9, 13, 17), got 10.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from .cache_methods import CACHE_METHODS
from .errors import LightcacheError, shown


class Preset(Protocol):
    """What settings read of a preset (:class:`lightcache.presets.Preset` is one); a protocol, so that presets may
    depend on settings (they validate their defaults with it) and not the other way round."""

    defaults: Mapping[str, Any]
    limits: Any
    lowercase_prompts: bool


@dataclass(frozen=True)
class RunSettings:
    """Everything one generation needs besides the model. Build with :meth:`from_preset` to validate."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    frames: int = 17
    height: int = 64
    width: int = 64
    guidance_scale: float = 5.0
    # Two-expert models (Wan2.2 A14B): the guidance of the low-noise expert (None: the same as guidance_scale) and
    # the fraction of the 1000 training timesteps above which the high-noise expert runs (None: the checkpoint's).
    guidance_scale_2: float | None = None
    boundary_ratio: float | None = None
    flow_shift: float = 3.0
    easycache: bool = True
    threshold: float = 0.05
    warmup: int = 4
    # 0: EasyCache as the reference (reuse the last transformation); 1: extrapolate the last two (beyond the paper).
    easycache_order: int = 0
    # Compute the last step whatever EasyCache's estimate says (the reference does, except for Wan2.2 TI2V-5B).
    force_last_step: bool = True
    fps: int = 12
    max_sequence_length: int = 16
    # LightCache memory strategies; each is off unless asked for.
    async_swap: bool = False
    chunk_ffn: int | None = None
    sliced_decode: bool = False
    # Bands for sliced decoding (None: the decoder's default, up to 16). Fewer bands decode faster and hold more:
    # on an H100 at Wan2.1-14B 720p, 16 bands add 1.26 GiB at 1.20x the plain decode time, 8 add 2.36 GiB at 1.08x.
    decode_slices: int | None = None
    # torch.compile the denoisers' repeated blocks (see lightcache.compile). The first calls at a new size compile;
    # the trace and the summary keep that warm-up apart from the speed of the compiled model.
    compile: bool = False
    # The step cache (lightcache.cache_methods): "easycache" (tau is ``threshold``), one of diffusers' caches, or
    # "none"; ``easycache=False`` turns whichever is chosen off. ``cache_setting``: a diffusers cache's main setting
    # (None: its default).
    cache: str = "easycache"
    cache_setting: float | None = None

    @property
    def step_cache(self) -> str:
        """The cache that runs: ``cache``, or ``none`` when caching is switched off (``easycache=False``)."""
        return self.cache if self.easycache else "none"

    @classmethod
    def from_preset(cls, preset: "Preset", **overrides: Any) -> "RunSettings":
        """The preset's defaults with ``overrides`` applied (None values are ignored), validated.

        Prompts are lower-cased when the preset says its tokenizer only knows lower-case words. A warm-up left unset
        follows the steps (see :func:`fitted_warmup`); one given explicitly is checked as given.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in preset.defaults.items() if k in known}
        for key, value in overrides.items():
            if key not in known:
                raise LightcacheError(f"Unknown setting '{key}'.")
            if value is not None:
                values[key] = value
        if overrides.get("warmup") is None and "warmup" in values and "steps" in values:
            values["warmup"] = fitted_warmup(values["warmup"], values["steps"])
        if preset.lowercase_prompts:
            for key in ("prompt", "negative_prompt"):
                if isinstance(values.get(key), str):
                    values[key] = values[key].lower()
        settings = cls(**values)
        settings.validate(preset)
        return settings

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, preset: "Preset") -> None:
        """Raise :class:`LightcacheError` for the first field outside what ``preset`` allows."""
        lim = preset.limits
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise LightcacheError("prompt must not be empty.")
        for name in ("prompt", "negative_prompt"):
            _check_text(name, getattr(self, name))
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("steps", self.steps, lim.min_steps, lim.max_steps)
        _check_int("frames", self.frames, 1, lim.max_frames)
        if (self.frames - 1) % lim.frame_multiple:
            m = lim.frame_multiple
            examples = ", ".join(str(m * k + 1) for k in range(1, 5))
            raise LightcacheError(f"frames must be of the form {m}k+1 (e.g. {examples}), got {self.frames}.")
        for name, value, top in (("height", self.height, lim.max_height), ("width", self.width, lim.max_width)):
            _check_int(name, value, lim.size_multiple, top)
            if value % lim.size_multiple:
                raise LightcacheError(f"{name} must be a multiple of {lim.size_multiple}, got {value}.")
        _check_float("guidance_scale", self.guidance_scale, 0.0, 30.0)
        if self.guidance_scale_2 is not None:
            _check_float("guidance_scale_2", self.guidance_scale_2, 0.0, 30.0)
        if self.boundary_ratio is not None:
            _check_float("boundary_ratio", self.boundary_ratio, 0.0, 1.0)
        _check_float("flow_shift", self.flow_shift, 0.0, 100.0)
        _check_float("threshold", self.threshold, 0.0, math.inf)
        if self.cache not in CACHE_METHODS:
            raise LightcacheError(f"cache must be one of {', '.join(CACHE_METHODS)}, got {self.cache!r}.")
        if self.cache_setting is not None:
            method = CACHE_METHODS[self.cache]
            if not method.diffusers:
                raise LightcacheError(f"cache_setting is the main setting of diffusers' caches; cache "
                                      f"'{self.cache}' has none (EasyCache's tau is the threshold).")
            method.check(self.cache_setting)
        if self.step_cache == "easycache":  # the warm-up is EasyCache's; a run without EasyCache never reads it
            _check_int("warmup", self.warmup, 0, self.steps - 1)
        if isinstance(self.easycache_order, bool) or self.easycache_order not in (0, 1):
            raise LightcacheError(f"easycache_order must be 0 (reuse, the reference) or 1 (extrapolate), "
                                  f"got {str(self.easycache_order)[:40]}.")
        if not isinstance(self.force_last_step, bool):
            raise LightcacheError("force_last_step must be true or false.")
        _check_int("fps", self.fps, 1, 60)
        _check_int("max_sequence_length", self.max_sequence_length, 1, 512)
        if self.chunk_ffn is not None:
            _check_int("chunk_ffn", self.chunk_ffn, 1, 1_000_000)
        if not isinstance(self.compile, bool):
            raise LightcacheError(f"compile must be true or false, got {shown(self.compile)}.")
        if self.decode_slices is not None:
            _check_int("decode_slices", self.decode_slices, 1, 256)
            if not self.sliced_decode:
                raise LightcacheError("decode_slices is the band count of sliced decoding; turn sliced_decode on too.")


def fitted_warmup(warmup: Any, steps: Any) -> Any:
    """A default warm-up made to fit ``steps``: at most ``steps - 1`` (the last step always computes anyway).

    A preset's default (e.g. 10 steps of 50) must not turn a short run the user asked for (``--steps 3``) into an
    error about a setting they never gave. Values that are not whole numbers pass through for validation to name.

    >>> fitted_warmup(10, 50), fitted_warmup(10, 3), fitted_warmup(4, 1)
    (10, 2, 0)
    """
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    if whole(warmup) and whole(steps) and steps >= 1:
        return min(warmup, max(0, steps - 1))
    return warmup


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LightcacheError(f"{name} must be a whole number between {low} and {high}, got {shown(value)}.")
    if not low <= value <= high:
        raise LightcacheError(f"{name} must be between {low} and {high}, got {shown(value)}.")


def _check_float(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise LightcacheError(f"{name} must be a number between {low} and {high}, got {shown(value)}.")
    if not low <= value <= high:
        raise LightcacheError(f"{name} must be between {low} and {high}, got {shown(value)}.")


def _check_text(name: str, value: Any) -> None:
    """Text the tokenizer can take: a string that UTF-8 can encode (a lone surrogate such as ``"\\ud800"``, which a
    JSON client or an undecodable command-line byte can produce, cannot be)."""
    if not isinstance(value, str):
        raise LightcacheError(f"{name} must be text, got {shown(value)}.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LightcacheError(
            f"{name} holds a character that is not valid text (U+{ord(value[exc.start]):04X}, a lone surrogate, at "
            f"position {exc.start}); remove it."
        ) from None
