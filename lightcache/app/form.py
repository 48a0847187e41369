"""The app's form: its fields, their initial values and bounds per preset, and turning raw input into a job.

The generation event receives the raw values the browser or an API client sent (Gradio's own preprocessing is
off for it), so every check happens here and every refusal names the field as the form labels it and the range
it allows. Gradio's built-in slider check would say only "Value 300 is greater than maximum value 256".

Example:
    >>> from lightcache.app.form import FIELDS, initial_values, parse_request
    >>> values = initial_values("tiny")
    >>> job = parse_request(dict(values, prompt="a blue square moving up"), device="cpu")
    >>> job.settings.prompt, job.compare
    ('a blue square moving up', False)
    >>> parse_request(dict(values, steps=500), device="cpu")
    Traceback (most recent call last):
    ...
    lightcache.errors.LightcacheError: Steps: steps must be between 2 and 100, got 500.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from ..cache_methods import CACHE_LABELS, CACHE_METHODS
from ..comparison import plain_settings
from ..errors import LightcacheError, shown
from ..images import check_image_for_preset, open_image
from ..presets import Preset, list_presets, load_shipped_preset
from ..settings import RunSettings
from .uploads import NOT_AN_UPLOAD, uploaded_file

DEFAULT_PRESET = "tiny"

#: Token slices per layer when feature chunking is switched on and the preset names no number of its own
#: (``defaults.chunk_ffn``): the widest intermediates shrink 8x, and slices stay long enough to keep a GPU busy
#: at the Wan2.1 sizes (see :class:`lightcache.techniques.chunk.FeatureChunkConfig`).
FEATURE_CHUNKS = 8

#: Upper end of the tau slider. Larger values are accepted through the API (tau may be any number >= 0).
TAU_SLIDER_MAX = 0.5

#: The generation event's inputs, in order: API parameter name -> the label the form shows. The API parameter
#: names are these keys; error messages use the labels.
FIELDS: Mapping[str, str] = MappingProxyType({
    "preset": "Preset",
    "prompt": "Prompt",
    "negative_prompt": "Negative prompt",
    "seed": "Seed",
    "steps": "Steps",
    "frames": "Frames",
    "height": "Height",
    "width": "Width",
    "easycache": "EasyCache",
    "tau": "tau (EasyCache threshold)",
    "warmup": "Warm-up steps",
    "async_swap": "Asynchronous swapping",
    "feature_chunking": "Feature chunking",
    "sliced_decode": "Sliced decoding",
    "compare": "Compare with the plain run",
    "image": "Image (first frame)",
    # Last, so that API clients that pass the parameters by position keep working.
    "compile": "Compile (torch.compile)",
    "cache": "Cache method",
    "cache_setting": "Cache setting",
    "easycache_order": "EasyCache order",
})

#: The EasyCache order control's choices: (label, value). 0 is the paper's rule; 1 goes beyond it.
EASYCACHE_ORDERS = (("0: reuse (the paper)", 0), ("1: extrapolate (beyond the paper)", 1))

# RunSettings names some fields differently from the form; its messages start with its own name.
_SETTING_TO_FIELD = {"threshold": "tau", "chunk_ffn": "feature_chunking"}
_INT_FIELDS = ("seed", "steps", "frames", "height", "width", "warmup", "easycache_order")
_BOOL_FIELDS = ("easycache", "async_swap", "feature_chunking", "sliced_decode", "compare", "compile")


@dataclass(frozen=True)
class Job:
    """One validated request: the preset, the accelerated run's settings, and whether to also run the plain one."""

    preset: Preset
    settings: RunSettings
    compare: bool = False
    image: Any = field(default=None, compare=False, repr=False)  # PIL image of image-to-video runs

    @property
    def plain_settings(self) -> RunSettings:
        """The same request with every acceleration off: the reference the comparison is measured against."""
        return plain_settings(self.settings)


def initial_values(preset_name: str = DEFAULT_PRESET, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The form's starting value for every field in :data:`FIELDS`: the preset's defaults, accelerations as chosen.

    ``overrides`` replaces any of them (tests use it to make the no-argument API call small).
    """
    preset = load_shipped_preset(preset_name)
    d = preset.defaults
    values = {
        "preset": preset.name,
        "prompt": d.get("prompt", ""),
        "negative_prompt": d.get("negative_prompt", ""),
        "seed": int(d.get("seed", 0)),
        "steps": int(d["steps"]),
        "frames": int(d["frames"]),
        "height": int(d["height"]),
        "width": int(d["width"]),
        "easycache": True,
        "tau": float(d["threshold"]),
        "warmup": int(d["warmup"]),
        "async_swap": False,
        "feature_chunking": False,
        "sliced_decode": False,
        "compare": False,
        "image": None,
        "compile": False,
        "cache": "easycache",
        "cache_setting": None,
        "easycache_order": int(d.get("easycache_order", 0)),
    }
    for key, value in (overrides or {}).items():
        if key not in values:
            raise KeyError(f"unknown form field {key!r}; fields: {', '.join(values)}")
        values[key] = value
    return values


def slider_bounds(preset: Preset, steps: int | None = None) -> dict[str, dict[str, float]]:
    """``field -> {minimum, maximum, step}`` for the sliders, from the preset's limits.

    The warm-up slider ends at ``steps - 1`` (``steps``: what the Steps slider starts at, default the preset's).
    """
    lim = preset.limits
    return {
        "steps": dict(minimum=lim.min_steps, maximum=lim.max_steps, step=1),
        "frames": dict(minimum=lim.frame_multiple + 1, maximum=lim.max_frames, step=lim.frame_multiple),
        "height": dict(minimum=lim.size_multiple, maximum=lim.max_height, step=lim.size_multiple),
        "width": dict(minimum=lim.size_multiple, maximum=lim.max_width, step=lim.size_multiple),
        "warmup": warmup_bounds(steps if steps is not None else int(preset.defaults["steps"])),
        "tau": dict(minimum=0.0, maximum=TAU_SLIDER_MAX, step=0.005),
    }


def warmup_bounds(steps: int) -> dict[str, int]:
    """The warm-up slider's range for ``steps`` steps: 0 to ``steps - 1`` (the last step always computes)."""
    return dict(minimum=0, maximum=max(0, int(steps) - 1), step=1)


def warmup_for_steps(steps: Any, warmup: Any) -> dict[str, Any]:
    """The warm-up slider once Steps reads ``steps``: its new range, and its value clamped into it.

    Returns ``{}`` (no change) for a value of Steps that is not a whole number; the run's validation names it.

    >>> warmup_for_steps(3, 4)
    {'minimum': 0, 'maximum': 2, 'step': 1, 'value': 2}
    >>> warmup_for_steps(50, 4)["value"]
    4
    """
    steps, warmup = _as_int(steps), _as_int(warmup)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        return {}
    bounds = warmup_bounds(steps)
    if isinstance(warmup, bool) or not isinstance(warmup, int):
        return bounds
    return dict(bounds, value=min(max(warmup, 0), bounds["maximum"]))


def preset_choices(names: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``(label, name)`` pairs for the preset dropdown: of ``names`` (default: every shipped preset)."""
    choices = []
    for name in names if names is not None else list_presets():
        preset = load_shipped_preset(name)
        choices.append((f"{name} - {preset.title}", name))
    return choices


def parse_request(raw: Mapping[str, Any], device: str, presets: Sequence[str] | None = None) -> Job:
    """Validate raw form values into a :class:`Job`, or raise :class:`LightcacheError` naming the field.

    ``device`` is where the run would go (``cpu`` or ``cuda``): a GPU preset on a CPU-only machine is refused here,
    before anything is loaded. The preset is a name from the shipped presets only (:func:`load_shipped_preset`):
    a web client never makes the server read a file or choose a model. ``presets``: the names this server offers,
    when it serves fewer than all (a server that loaded its model at start serves that one).

    >>> parse_request(dict(initial_values("tiny"), preset="wan2.1-t2v-1.3b"), "cuda", presets=["tiny"])
    Traceback (most recent call last):
    ...
    lightcache.errors.LightcacheError: Preset: this server serves tiny only.
    """
    missing = [name for name in FIELDS if name not in raw]
    if missing:
        raise LightcacheError(f"Missing field(s): {', '.join(FIELDS[m] for m in missing)}.")
    preset_name = raw["preset"]
    offered = list(presets) if presets is not None else list_presets()
    if not isinstance(preset_name, str) or not preset_name.strip():
        raise LightcacheError(f"Preset: choose one of {', '.join(offered)}.")
    if presets is not None and preset_name.strip() not in offered:
        raise LightcacheError(f"Preset: this server serves {', '.join(offered)} only.")
    try:
        preset = load_shipped_preset(preset_name.strip())
    except LightcacheError as exc:
        raise LightcacheError(f"Preset: {exc}") from None
    if preset.requires_gpu and not str(device).startswith("cuda"):
        raise LightcacheError(
            f"Preset: '{preset.name}' needs a CUDA GPU and this machine has none. "
            f"Choose '{DEFAULT_PRESET}', which runs on a CPU."
        )
    for name in ("prompt", "negative_prompt"):
        if raw[name] is not None and not isinstance(raw[name], str):
            raise LightcacheError(f"{FIELDS[name]} must be text, got {shown(raw[name])}.")
    flags = {name: _as_bool(name, raw[name]) for name in _BOOL_FIELDS}
    ints = {name: _as_int(raw[name]) for name in _INT_FIELDS}
    tau = _as_number(raw["tau"])
    cache, cache_setting = parse_cache(raw["cache"], raw["cache_setting"])
    chunk = int(preset.defaults.get("chunk_ffn", FEATURE_CHUNKS)) if flags["feature_chunking"] else None
    try:
        settings = RunSettings.from_preset(
            preset,
            prompt=(raw["prompt"] or "").strip(),
            negative_prompt=raw["negative_prompt"] or "",
            threshold=tau,
            easycache=flags["easycache"] and cache != "none",
            cache=cache,
            cache_setting=cache_setting,
            async_swap=flags["async_swap"],
            chunk_ffn=chunk,
            sliced_decode=flags["sliced_decode"],
            compile=flags["compile"],
            **ints,
        )
    except LightcacheError as exc:
        raise LightcacheError(labelled(str(exc))) from None
    image = parse_image(raw["image"])
    try:
        check_image_for_preset(preset, image)
    except LightcacheError as exc:
        raise LightcacheError(f"{FIELDS['image']}: {exc}") from None
    return Job(preset=preset, settings=settings, compare=flags["compare"], image=image)


def parse_cache(raw_cache: Any, raw_setting: Any) -> tuple[str, Any]:
    """The cache method (its name or its label, as the dropdown shows it) and its setting, as settings take them.

    The setting control is read for diffusers' caches only (EasyCache's is tau); empty means the method's default.

    >>> parse_cache("FirstBlockCache", "0.15"), parse_cache("easycache", 0.3)
    (('fbc', 0.15), ('easycache', None))
    """
    name = raw_cache if raw_cache not in (None, "") else "easycache"
    name = CACHE_LABELS.get(name, name) if isinstance(name, str) else name
    if name not in CACHE_METHODS:
        choices = ", ".join(m.label for m in CACHE_METHODS.values())
        raise LightcacheError(f"{FIELDS['cache']}: choose one of {choices}, got {raw_cache!r}.")
    method = CACHE_METHODS[name]
    if not method.diffusers or raw_setting in (None, ""):
        return name, None
    value = _as_number(raw_setting)
    try:
        method.check(value)
    except LightcacheError as exc:
        raise LightcacheError(f"{FIELDS['cache_setting']}: {exc}") from None
    return name, value


def cache_setting_control(name: str) -> dict[str, Any]:
    """The setting control for cache ``name``: its label (the setting's name and range), bounds, value and whether it
    shows (diffusers' caches; EasyCache's setting is the tau slider), and the other settings as its help.

    >>> cache_setting_control("seacache")["label"]
    'SeaCache threshold (0-0.5; larger: more calls skip every block)'
    """
    method = CACHE_METHODS[CACHE_LABELS.get(name, name)]
    fixed = ", ".join(f"{k} {v}" for k, v in method.fixed.items())
    return dict(label=method.control_label, minimum=method.minimum, maximum=method.maximum, step=method.step or 1,
                value=method.default if method.default is not None else 0, visible=method.diffusers,
                info=f"{method.label}'s other settings: {fixed}" if fixed else f"{method.label}: diffusers' defaults")


def parse_image(raw: Any, upload_dir: str | None = None):
    """The uploaded first-frame image as a PIL image, or None.

    The API is a public endpoint: an image arrives as Gradio's file reference (``{"path": ...}``) of a file its
    upload route stored. Only files inside Gradio's upload folder are read; any other path, a URL to fetch or a
    plain string is refused, so no client can make the server read a file of its choosing. (On the served app a
    request naming such a file is refused before Gradio resolves it: :mod:`.uploads`.)
    """
    if raw is None or raw == "":
        return None
    path = raw.get("path") if isinstance(raw, Mapping) else None
    if not isinstance(path, str) or not path:
        raise LightcacheError(f"{FIELDS['image']}: upload an image file (PNG, JPEG, WebP).")
    if upload_dir is None:
        from gradio.utils import get_upload_folder

        upload_dir = get_upload_folder()
    resolved = uploaded_file(path, upload_dir)
    if resolved is None:
        raise LightcacheError(f"{FIELDS['image']}: {NOT_AN_UPLOAD}")
    return open_image(resolved, label=FIELDS["image"])


def labelled(message: str) -> str:
    """Prefix a settings error (which starts with the setting's name) with the form label of that field.

    >>> labelled("threshold must be between 0.0 and inf, got -1.")
    'tau (EasyCache threshold): threshold must be between 0.0 and inf, got -1.'
    """
    match = re.match(r"([a-z_]+)\b", message)
    if match:
        name = _SETTING_TO_FIELD.get(match.group(1), match.group(1))
        if name in FIELDS:
            return f"{FIELDS[name]}: {message}"
    return message


# --- coercion: JSON numbers arrive as floats from some clients, and "20" from others -------------------------
def _as_int(value: Any) -> Any:
    """Whole numbers in any JSON spelling become int; anything else is passed on for the range check to name."""
    if isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return _as_int(float(value.strip()))
        except ValueError:
            return value
    return value


def _as_number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise LightcacheError(f"{FIELDS[name]} must be true or false, got {shown(value)}.")
