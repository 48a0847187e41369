"""Model presets: one JSON file per model in ``presets/``, validated on load, turned into a pipeline.

A preset names the model (a local directory or a Hugging Face Hub id), its family and diffusers pipeline class,
whether it takes an image, the dtypes, the model's reference generation settings and the limits a request must
respect. Presets are data; this module only reads and checks them.

Example:
    >>> from lightcache.presets import list_presets, load_preset
    >>> "tiny" in list_presets()
    True
    >>> load_preset("tiny").limits.max_steps >= load_preset("tiny").defaults["steps"]
    True
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LightcacheError

#: The directory that holds the ``lightcache`` package: the source tree, or ``site-packages`` when it is installed.
#: Paths in presets (the tiny model's ``lightcache/data/tiny-wan``) are relative to it, so they resolve either way.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Where the shipped presets are: the project's top-level ``presets/`` in a checkout. The wheel ships the same files
#: as the package ``lightcache._presets`` (pyproject.toml maps the folder there), which is where an installed
#: lightcache finds them.
PRESET_DIR = next((d for d in (Path(__file__).resolve().parent / "_presets", PROJECT_ROOT / "presets") if d.is_dir()),
                  PROJECT_ROOT / "presets")

_DTYPES = ("float32", "float16", "bfloat16")
_IMAGE_INPUTS = ("none", "optional", "required")
#: What every preset's ``defaults`` holds; a family's own fields (its adapter's ``request_fields``, e.g. Wan's
#: ``flow_shift``) are checked against that declaration, and the prompts only where the model takes one.
_REQUIRED_DEFAULTS = ("height", "width", "frames", "steps", "guidance_scale", "threshold", "warmup", "fps")
_PROMPT_DEFAULTS = {"prompt": str, "negative_prompt": str, "max_sequence_length": (int, float)}


@dataclass(frozen=True)
class PresetLimits:
    """What a request may ask of a preset. ``frame_multiple``: frames must be ``n * frame_multiple + 1``."""

    max_frames: int
    max_height: int
    max_width: int
    min_steps: int = 1
    max_steps: int = 100
    frame_multiple: int = 4
    size_multiple: int = 16


@dataclass(frozen=True)
class Preset:
    """One model preset. Build it with :func:`load_preset`."""

    name: str
    title: str
    description: str
    model: str
    family: str
    requires_gpu: bool
    dtype: str
    vae_dtype: str
    defaults: dict[str, Any]
    limits: PresetLimits
    # True for models whose tokenizer only knows lower-case words (the tiny model): prompts are lower-cased
    # before encoding, so "A Red Circle" means the same as "a red circle" instead of three unknown tokens.
    lowercase_prompts: bool = False
    #: The diffusers pipeline class that loads the model (one the family's adapter serves; its first by default).
    pipeline: str = ""
    #: Whether a run takes a first-frame image: "none" (text to video), "optional" (TI2V) or "required" (I2V).
    image_input: str = "none"
    #: Dtypes of components that differ from ``dtype`` besides the VAE (e.g. the CLIP image encoder in fp32).
    component_dtypes: dict[str, str] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)
    #: Components the model's repository lacks, each loaded from its own: ``name -> (diffusers class, Hub id)``
    #: (AnimateDiff: the motion adapter beside a Stable Diffusion base). A local model directory holds its own.
    components: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: The scheduler the model is documented with, when not the repository's: ``(diffusers class, config changes)``.
    scheduler: tuple[str, dict[str, Any]] | None = None
    #: The family's own request fields (its adapter's declaration) and whether its model takes a prompt.
    request_fields: tuple = ()
    takes_prompt: bool = True
    #: Settings the family refuses, and why (its adapter's ``refused_strategies``), checked before anything loads.
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def takes_image(self) -> bool:
        """True when a run of this preset may be given an image."""
        return self.image_input != "none"

    @property
    def local_model_dir(self) -> Path | None:
        """The model directory when ``model`` is a local path that exists, else None (a Hub id)."""
        return resolve_local_model(self.model)


def list_presets(preset_dir: Path = PRESET_DIR) -> list[str]:
    """Names of the presets on disk, sorted, ``tiny`` first."""
    names = sorted(p.stem for p in Path(preset_dir).glob("*.json"))
    return sorted(names, key=lambda n: (n != "tiny", n))


def load_preset(name: str, preset_dir: Path = PRESET_DIR) -> Preset:
    """Read and validate the shipped preset ``<name>.json``; a path to a JSON file also works.

    Raises :class:`LightcacheError` naming the valid presets when ``name`` is unknown, and naming the field when
    the file is malformed.
    """
    path = Path(name) if str(name).endswith(".json") else Path(preset_dir) / f"{name}.json"
    if not path.is_file():
        valid = ", ".join(list_presets(preset_dir)) or "(none found)"
        raise LightcacheError(f"Unknown preset '{name}'. Valid presets: {valid}.")
    return _read_preset(path)


def load_shipped_preset(name: str, preset_dir: Path = PRESET_DIR) -> Preset:
    """The preset called ``name`` among those shipped in :data:`PRESET_DIR`; never a path.

    This is what the app and its API use: a web client may only choose among the presets the server's owner
    shipped, so it cannot make the server read a file, load a model or fetch a Hub repository of its choosing
    (:func:`load_preset` also reads a JSON file from a path, which is for the CLI and the library). The refusal
    names the valid presets and echoes the request only when it is a plain name.

    >>> load_shipped_preset("tiny").name
    'tiny'
    >>> load_shipped_preset("/tmp/gradio/upload/tiny.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lightcache.errors.LightcacheError: Unknown preset (a preset is chosen by name, not by path). Valid presets: tiny, ...
    """
    valid = list_presets(preset_dir)
    if not isinstance(name, str) or name.strip() not in valid:
        raise LightcacheError(f"Unknown preset{_shown_name(name)}. Valid presets: {', '.join(valid) or '(none found)'}.")
    return _read_preset(Path(preset_dir) / f"{name.strip()}.json")


def _shown_name(name: Any) -> str:
    """How a refused preset request is quoted back: a short plain name as it is, anything else not at all."""
    if isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", name.strip()) \
            and not name.strip().endswith(".json"):
        return f" '{name.strip()}'"
    if isinstance(name, str) and any(mark in name for mark in ("/", "\\", ".json")):
        return " (a preset is chosen by name, not by path)"
    return ""


def _read_preset(path: Path) -> Preset:
    """Read and validate one preset file; errors name the file (not its directory) and the field, never a value."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LightcacheError(f"Preset file {path.name} is not valid JSON (line {exc.lineno}, column {exc.colno}).") \
            from None
    except (OSError, UnicodeDecodeError):
        raise LightcacheError(f"Preset file {path.name} could not be read as UTF-8 text.") from None
    if not isinstance(data, dict):
        raise LightcacheError(f"Preset {path.name}: the file must hold one JSON object.")
    return _parse_preset(data, path)


def _parse_preset(data: dict[str, Any], path: Path) -> Preset:
    def need(key: str, kind: type | tuple[type, ...], where: dict[str, Any] = data, prefix: str = "") -> Any:
        if key not in where:
            raise LightcacheError(f"Preset {path.name}: missing field '{prefix}{key}'.")
        value = where[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise LightcacheError(f"Preset {path.name}: field '{prefix}{key}' must be {_kind_name(kind)}.")
        return value

    for key in ("name", "title", "description", "model", "family", "dtype", "vae_dtype"):
        need(key, str)
    need("requires_gpu", bool)
    lowercase = data.get("lowercase_prompts", False)
    if not isinstance(lowercase, bool):
        raise LightcacheError(f"Preset {path.name}: field 'lowercase_prompts' must be true or false.")
    defaults = need("defaults", dict)
    for key in _REQUIRED_DEFAULTS:
        need(key, (int, float), defaults, "defaults.")
    raw_limits = need("limits", dict)
    limits = _parse_limits(raw_limits, path)
    for dtype_key in ("dtype", "vae_dtype"):
        if data[dtype_key] not in _DTYPES:
            raise LightcacheError(f"Preset {path.name}: '{dtype_key}' must be one of {', '.join(_DTYPES)}.")
    from .families import adapter_named

    try:
        adapter = adapter_named(data["family"])
    except LightcacheError:
        raise LightcacheError(f"Preset {path.name}: field 'family' names a model family not supported yet "
                              f"({', '.join(sorted(_family_names()))}).") from None
    if adapter.takes_prompt:
        for key, kind in _PROMPT_DEFAULTS.items():
            need(key, kind, defaults, "defaults.")
    for declared in adapter.request_fields:
        if not declared.optional:
            need(declared.name, (int, float), defaults, "defaults.")
    pipeline = data.get("pipeline", adapter.pipeline_classes[0])
    if pipeline not in adapter.pipeline_classes:
        raise LightcacheError(f"Preset {path.name}: 'pipeline' must be one of {', '.join(adapter.pipeline_classes)}.")
    image_input = data.get("image_input", "none")
    if image_input not in _IMAGE_INPUTS:
        raise LightcacheError(f"Preset {path.name}: 'image_input' must be one of {', '.join(_IMAGE_INPUTS)}.")
    component_dtypes = data.get("component_dtypes", {})
    if not isinstance(component_dtypes, dict) or any(v not in _DTYPES for v in component_dtypes.values()):
        raise LightcacheError(f"Preset {path.name}: 'component_dtypes' maps component names to {', '.join(_DTYPES)}.")
    components = _parse_components(data.get("components", {}), path)
    scheduler = _parse_scheduler(data.get("scheduler"), path)
    preset = Preset(
        name=data["name"], title=data["title"], description=data["description"], model=data["model"],
        family=data["family"], requires_gpu=data["requires_gpu"], dtype=data["dtype"],
        vae_dtype=data["vae_dtype"], defaults=dict(defaults), limits=limits,
        lowercase_prompts=lowercase, pipeline=pipeline, image_input=image_input,
        component_dtypes=dict(component_dtypes), path=path, request_fields=tuple(adapter.request_fields),
        components=components, scheduler=scheduler,
        takes_prompt=adapter.takes_prompt, refused=adapter.refused_strategies(),
    )
    # The defaults must themselves be a valid request, or every run that keeps them would fail.
    from .settings import RunSettings

    try:
        RunSettings.from_preset(preset)
    except LightcacheError as exc:
        raise LightcacheError(f"Preset {path.name}: its defaults are invalid: {_without_value(str(exc))}") from None
    return preset


def _parse_components(raw: Any, path: Path) -> dict[str, tuple[str, str]]:
    """``components``: ``{name: {"class": <diffusers class>, "model": <Hub id>}}``, each checked by name only."""
    import diffusers

    if not isinstance(raw, dict):
        raise LightcacheError(f"Preset {path.name}: 'components' maps component names to a class and a model.")
    out = {}
    for name, spec in raw.items():
        if not isinstance(spec, dict) or set(spec) != {"class", "model"} or not all(
                isinstance(v, str) for v in spec.values()):
            raise LightcacheError(f"Preset {path.name}: 'components.{name}' needs a 'class' and a 'model' (text).")
        if not hasattr(diffusers, spec["class"]) or not looks_like_hub_id(spec["model"]):
            raise LightcacheError(f"Preset {path.name}: 'components.{name}' must name a diffusers class and a Hub id.")
        out[str(name)] = (spec["class"], spec["model"])
    return out


def _parse_scheduler(raw: Any, path: Path) -> tuple[str, dict[str, Any]] | None:
    """``scheduler``: ``{"class": <diffusers scheduler class>, "config": {...}}``, or absent."""
    import diffusers

    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"class", "config"} or not isinstance(raw.get("class"), str) \
            or not isinstance(raw.get("config", {}), dict) or not raw["class"].endswith("Scheduler") \
            or not hasattr(diffusers, raw["class"]):
        raise LightcacheError(f"Preset {path.name}: 'scheduler' needs a diffusers scheduler 'class' and a 'config'.")
    return raw["class"], dict(raw.get("config", {}))


def _kind_name(kind: type | tuple[type, ...]) -> str:
    """'text', 'a number', ... for a validation message that names the expected type and not the value found."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "text", int: "a number", float: "a number", bool: "true or false", dict: "an object"}
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def _parse_limits(raw: dict[str, Any], path: Path) -> PresetLimits:
    """``limits`` as :class:`PresetLimits`: known fields only, whole numbers only; errors name the fields allowed."""
    allowed = [f.name for f in dataclasses.fields(PresetLimits)]
    required = [f.name for f in dataclasses.fields(PresetLimits) if f.default is dataclasses.MISSING]
    if set(raw) - set(allowed) or set(required) - set(raw):
        raise LightcacheError(f"Preset {path.name}: 'limits' needs {', '.join(required)} and may also have "
                              f"{', '.join(a for a in allowed if a not in required)}, nothing else.")
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LightcacheError(f"Preset {path.name}: field 'limits.{key}' must be a whole number >= 1.")
    return PresetLimits(**raw)


def _without_value(message: str) -> str:
    """A settings message without its trailing ", got <value>": preset errors never repeat what the file holds."""
    return re.sub(r",? got .*$", ".", message)


def _family_names() -> list[str]:
    from .families import ADAPTERS

    return list(ADAPTERS)


def resolve_local_model(model: str) -> Path | None:
    """``model`` as an existing local directory (absolute, relative to the cwd or the project), else None."""
    candidate = Path(model).expanduser()
    for path in (candidate, PROJECT_ROOT / candidate):
        if path.is_dir():
            return path.resolve()
    return None


def looks_like_hub_id(model: str) -> bool:
    """True for ``owner/name`` strings that are not local paths (an existing file such as ``docs/memory.md`` is not)."""
    parts = model.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not model.startswith((".", "/", "~"))
        and not model.startswith(("assets/", "presets/", "lightcache/"))
        and not any(path.exists() for path in _local_candidates(model))
    )


def _local_candidates(model: str) -> tuple[Path, Path]:
    """Where ``model`` would be on disk: as given (absolute or relative to the cwd), and relative to the project."""
    candidate = Path(model).expanduser()
    return candidate, PROJECT_ROOT / candidate


def missing_model_message(model: str) -> str:
    """Why ``model`` names neither a model directory nor a Hub id: it is a file, or nothing is at that path."""
    if any(path.exists() and not path.is_dir() for path in _local_candidates(model)):
        return f"'{model}' is a file, not a model directory; give a diffusers model directory or a Hub id (owner/name)."
    return f"Model directory '{model}' does not exist."


def model_identity(preset: Preset, device: str, model: str | None = None) -> tuple:
    """What :func:`load_pipeline` would load, as a hashable key: a pipeline cache keyed on this never aliases.

    ``(family, "dir", resolved directory, None, dtype, vae_dtype, device)`` for a local model and
    ``(family, "hub", hub id, revision, dtype, vae_dtype, device)`` for a Hub id (revision None: the Hub's default
    branch; presets name no revision yet). Two presets naming the same weights in the same dtypes share a key; a
    preset's name plays no part, so no preset can pass its weights off under another preset's name.

    >>> tiny = load_preset("tiny")
    >>> model_identity(tiny, "cpu")[:2], model_identity(tiny, "cpu")[-3:]
    (('wan', 'dir'), ('float32', 'float32', 'cpu'))
    >>> model_identity(tiny, "cpu") == model_identity(tiny, "cpu", model="Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    False
    """
    source = model or preset.model
    local = resolve_local_model(source)
    where = ("dir", str(local), None) if local is not None else ("hub", source, None)
    # The pipeline class and the other components' dtypes change what is loaded too (an I2V class over the same
    # directory loads an image encoder).
    extra = (preset.pipeline, tuple(sorted(preset.component_dtypes.items())),
             tuple(sorted(preset.components.items())) if local is None else (), repr(preset.scheduler))
    return (preset.family, *where, *extra, preset.dtype, preset.vae_dtype, str(device))


def load_pipeline(preset: Preset, device: str | None = None, model: str | None = None):
    """Load the preset's pipeline (its ``pipeline`` class, ``from_pretrained``) onto ``device`` in its dtypes.

    ``model`` overrides the preset's model: a local directory or a Hub id; a local directory must hold a pipeline
    of the preset's class (``model_index.json``), so a preset never runs another family's weights with its own
    settings. Raises :class:`LightcacheError` for a missing directory, another family's model, a Hub id that
    cannot be fetched (offline: mentions ``HF_HUB_OFFLINE``) or a GPU preset without a GPU.
    """
    from .torch_thread import torch_thread

    # Loading copies and casts every weight: heavy torch work, done on the thread that will run the pipeline.
    return torch_thread.call(_load_pipeline, preset, device, model)


def _load_pipeline(preset: Preset, device: str | None, model: str | None):
    import diffusers
    import torch

    device = device or default_device()
    # The GPU requirement is the preset's checkpoint's size; a local directory of that family (a small test model)
    # runs wherever the user asks.
    if preset.requires_gpu and model is None and not device.startswith("cuda"):
        raise LightcacheError(
            f"Preset '{preset.name}' needs a CUDA GPU and this machine has none; use the 'tiny' preset on a CPU."
        )
    source = model or preset.model
    local = resolve_local_model(source)
    if local is None and not looks_like_hub_id(source):
        raise LightcacheError(missing_model_message(source))
    if local is not None:
        check_model_matches_preset(local, preset)
    dtypes = {"default": getattr(torch, preset.dtype), "vae": getattr(torch, preset.vae_dtype)}
    dtypes.update({name: getattr(torch, value) for name, value in preset.component_dtypes.items()})
    cls = getattr(diffusers, preset.pipeline)
    offline = local is not None or not hub_usable()
    try:
        # A Hub model lacking a component gets it from the repository the preset names; a local directory holds its
        # own (save_pretrained writes every component).
        extra = {} if local is not None else {
            name: _from_pretrained(getattr(diffusers, class_name), model, dtypes["default"], offline)
            for name, (class_name, model) in preset.components.items()}
        pipe = _from_pretrained(cls, str(local or source), dtypes, offline=offline, **extra)
    except LightcacheError:
        raise
    except Exception as exc:  # noqa: BLE001 - the hub raises many types; the user needs one sentence
        if local is not None:
            raise LightcacheError(f"Could not load the model in '{local}': {exc}") from None
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        hint = (
            "HF_HUB_OFFLINE is set, so only models already in the local Hugging Face cache can load"
            if offline
            else "the Hub could not be reached (offline?). Download it first on a connected machine, or set "
            "HF_HUB_OFFLINE=1 to use the local cache only"
        )
        raise LightcacheError(
            f"Could not load '{source}' from the Hugging Face Hub: {hint}. You can also pass a local directory "
            f"with --model. ({type(exc).__name__})"
        ) from None
    if preset.scheduler is not None:
        scheduler_class, changes = preset.scheduler
        pipe.scheduler = getattr(diffusers, scheduler_class).from_config(pipe.scheduler.config, **changes)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()  # freshly built or loaded modules may be in train mode (UMT5's dropout)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def check_model_matches_preset(model_dir: Path, preset: Preset) -> None:
    """Refuse a local model directory whose pipeline class is not the preset's (read from ``model_index.json``)."""
    from .families import family_of_pipeline_class

    index = Path(model_dir) / "model_index.json"
    try:
        class_name = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        raise LightcacheError(
            f"'{model_dir}' is not a diffusers pipeline directory (no readable model_index.json)."
        ) from None
    if class_name == preset.pipeline:
        return
    family = family_of_pipeline_class(str(class_name))
    if family is None:
        from .families import ADAPTERS

        known = ", ".join(c for adapter in ADAPTERS.values() for c in adapter.pipeline_classes)
        raise LightcacheError(
            f"'{model_dir}' holds a {class_name}, which lightcache does not run (it runs {known}); preset "
            f"'{preset.name}' needs a {preset.pipeline}."
        )
    if family != preset.family:
        presets = [name for name in list_presets() if load_preset(name).family == family]
        advice = (f"choose one of that family's presets: {', '.join(presets)}" if presets
                  else "no shipped preset runs that family")
        raise LightcacheError(
            f"'{model_dir}' holds a {class_name} (the {family} family), but preset '{preset.name}' is a "
            f"{preset.family} model; {advice}."
        )
    raise LightcacheError(
        f"'{model_dir}' holds a {class_name}, but preset '{preset.name}' runs a {preset.pipeline}; choose the preset "
        f"that matches the checkpoint (see `python -m lightcache presets`)."
    )


def _from_pretrained(cls, source: str, dtypes, offline: bool, **components):
    """``cls.from_pretrained``: ``dtypes`` is a pipeline's per-component dict, or one dtype for a single model."""
    kwargs = {"local_files_only": True} if offline else {}
    return cls.from_pretrained(source, dtype=dtypes, **kwargs, **components)


def hub_usable(timeout_s: float = 3.0) -> bool:
    """False when ``HF_HUB_OFFLINE`` is set or the Hub's endpoint does not accept a connection within ``timeout_s``.

    Without it, huggingface_hub retries an unreachable Hub five times with back-off (about half a minute, per file)
    before it falls back to its cache or fails. One quick probe first lets an offline machine load from the cache,
    or fail with the right message, at once. Behind a proxy (``HTTPS_PROXY``, ``ALL_PROXY``) a direct connection
    proves nothing, so there the probe is skipped and the Hub is tried as usual.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)), timeout_s):
            return True
    except (OSError, ValueError):
        return False


def resolve_device(device: str | None) -> str:
    """``device`` checked against this machine before anything loads; None picks :func:`default_device`.

    Accepts ``cpu`` and ``cuda`` / ``cuda:N`` where torch sees that GPU; anything else is refused with one sentence
    (loading first and failing later would cost the whole model load and end in a torch traceback).

    >>> resolve_device("CPU")
    'cpu'
    >>> resolve_device("banana")
    Traceback (most recent call last):
    ...
    lightcache.errors.LightcacheError: Unknown device 'banana'; use cpu or cuda (cuda:N for another GPU).
    """
    if device is None or not str(device).strip():
        return default_device()
    name = str(device).strip().lower()
    if name == "cpu":
        return name
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise LightcacheError(f"Unknown device '{device}'; use cpu or cuda (cuda:N for another GPU).")
    import torch

    if not torch.cuda.is_available():
        raise LightcacheError(f"Device '{device}' is not available: torch sees no CUDA GPU on this machine; use cpu.")
    count = torch.cuda.device_count()
    if match.group(1) is not None and int(match.group(1)) >= count:
        raise LightcacheError(f"Device '{device}' does not exist: this machine has {count} CUDA GPU(s), "
                              f"cuda:0 to cuda:{count - 1}.")
    return name


def default_device() -> str:
    """``cuda`` when a CUDA GPU is usable, else ``cpu``. Touches CUDA only when called, never at import."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
