"""The step caches a run can use, one table: EasyCache and diffusers' own caches, each with its one main setting.

The app's dropdown, the CLI's ``--cache`` and :class:`lightcache.accelerate.AccelerationConfig` all read
:data:`CACHE_METHODS`. Each method exposes one setting (tau, a threshold, an interval ...) over the range the
benchmark sweeps (:mod:`lightcache.bench.methods`); its other settings stay at the values below, which are
diffusers' documented defaults except where a note says why (and are what the benchmark runs):

==============  ==========================  ===========  =======  ================================================
name            app label                   setting      default  fixed settings
==============  ==========================  ===========  =======  ================================================
``easycache``   EasyCache                   tau          preset   warm-up steps (the request's)
``fbc``         FirstBlockCache             threshold    0.1
``magcache``    MagCache                    threshold    0.06     max_skip_steps 3, retention_ratio 0.2,
                                                                  ratios calibrated on the same model and settings
``taylorseer``  TaylorSeer                  interval     2        lite mode, max_order 1, first 3 steps computed
``seacache``    SeaCache                    threshold    0.25     residual_order 0
``pab``         PAB                         skip range   2        self- and cross-attention, timesteps 100-800
``none``        none                        -            -        every call computed
==============  ==========================  ===========  =======  ================================================

The shared machinery the benchmark uses too lives here: the diffusers configs (:func:`diffusers_cache_config`), how
each is attached and removed on a transformer (:func:`attach_diffusers_cache`, :func:`detach_diffusers_cache`),
Pyramid Attention Broadcast's per-branch states on Wan's separate CFG calls, and MagCache's calibration
(:func:`calibrate_magcache`, kept per loaded transformer and settings in :data:`MAGCACHE_CALIBRATIONS`).

FasterCache is not offered: it assumes classifier-free guidance batched into one call, and Wan calls the
transformer once per branch.

Example:
    >>> from lightcache.cache_methods import CACHE_METHODS, get_cache_method
    >>> list(CACHE_METHODS)
    ['easycache', 'fbc', 'magcache', 'taylorseer', 'seacache', 'pab', 'none']
    >>> fbc = get_cache_method("fbc")
    >>> fbc.label, fbc.setting, (fbc.minimum, fbc.maximum), fbc.default, fbc.never_skips
    ('FirstBlockCache', 'threshold', (0.0, 0.2), 0.1, 0.0)
    >>> fbc.params(0.15)
    {'threshold': 0.15}
    >>> get_cache_method("taylorseer").check(2.5)
    Traceback (most recent call last):
    ...
    lightcache.errors.LightcacheError: TaylorSeer's interval (steps between full computations) must be a whole number >= 1, got 2.5.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import math
import weakref
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from .errors import LightcacheError

#: Module patterns TaylorSeer needs on Wan: its defaults (``^blocks.*attn``, matched with ``re.fullmatch``) miss
#: ``blocks.0.attn1`` because of the trailing digit, so out of the box it hooks nothing on Wan.
TAYLORSEER_WAN_PATTERNS = (r"blocks\.\d+\.attn1", r"blocks\.\d+\.attn2", r"blocks\.\d+\.ffn")

_PAB_ADAPTER = "lightcache_bench_pab_branches"
_PAB_CLOCK = "_lightcache_bench_clock"


@dataclass(frozen=True)
class CacheMethod:
    """One step cache and its one main setting.

    Attributes:
        name: the library's and the CLI's name (``--cache NAME``).
        label: the app's name for it.
        setting: the main setting's name as the controls show it (``tau``, ``threshold``...).
        meaning: what the setting does, for the control's help text.
        minimum, maximum: the range the benchmark sweeps, which the app's control spans; the library accepts any
            value from ``minimum`` up (a larger one only skips more).
        step: the control's step.
        default: the setting when none is given (EasyCache: the preset's tau).
        never_skips: the value at which the method computes every call in full (the run equals the plain run).
        integer: the setting is a whole number.
        fixed: the method's other settings, as it runs them (shown beside the control).
        diffusers: a diffusers cache (``transformer.enable_cache``) rather than lightcache's own.
        params: turns a setting into the benchmark's parameter set for it.
    """

    name: str
    label: str
    setting: str
    meaning: str
    minimum: float
    maximum: float
    step: float
    default: float | None
    never_skips: float | None
    integer: bool = False
    fixed: Mapping[str, Any] = field(default_factory=dict)
    diffusers: bool = False
    to_params: Callable[[float], dict[str, Any]] = field(default=lambda v: {}, repr=False, compare=False)

    def check(self, value: Any) -> float | int:
        """``value`` as this method's setting, or a :class:`LightcacheError` naming the setting and what it must be."""
        what = f"{self.label}'s {self.setting} ({self.meaning})"
        if self.integer:
            whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            if isinstance(value, bool) or not whole or value < self.minimum:
                raise LightcacheError(f"{what} must be a whole number >= {self.minimum:g}, got {value!r}.")
            return int(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
                or not self.minimum <= value < math.inf:
            raise LightcacheError(f"{what} must be a number >= {self.minimum:g}, got {value!r}.")
        return float(value)

    def params(self, value: Any = None) -> dict[str, Any]:
        """The benchmark's parameter set for ``value`` (default: :attr:`default`)."""
        return self.to_params(self.check(self.default if value is None else value))

    def describe(self, value: Any = None) -> str:
        """``threshold=0.1``: the setting as the trace and the summary name it."""
        if self.name == "none":
            return "every call computed"
        value = self.default if value is None else value
        return f"{self.setting}={self.check(value):g}" if value is not None else self.setting

    @property
    def control_label(self) -> str:
        """The app control's label: the setting's name and the range it spans."""
        return f"{self.label} {self.setting} ({self.minimum:g}-{self.maximum:g}; {self.meaning})"


CACHE_METHODS: Mapping[str, CacheMethod] = MappingProxyType({m.name: m for m in (
    CacheMethod("easycache", "EasyCache", "tau", "larger: more reused calls", 0.0, 0.3, 0.005, None, 0.0,
                fixed=MappingProxyType({"warm-up": "the request's"})),
    CacheMethod("fbc", "FirstBlockCache", "threshold", "larger: more calls skip the blocks after the first",
                0.0, 0.2, 0.005, 0.1, 0.0, diffusers=True, to_params=lambda v: {"threshold": v}),
    CacheMethod("magcache", "MagCache", "threshold", "larger: more calls skip every block", 0.0, 0.5, 0.01, 0.06, 0.0,
                fixed=MappingProxyType({"max_skip_steps": 3, "retention_ratio": 0.2, "calibration": "same model"}),
                diffusers=True, to_params=lambda v: {"threshold": v}),
    CacheMethod("taylorseer", "TaylorSeer", "interval", "steps between full computations", 1, 4, 1, 2, 1,
                integer=True,
                fixed=MappingProxyType({"lite": True, "max_order": 1, "disable_cache_before_step": 3}),
                diffusers=True, to_params=lambda v: {"cache_interval": v, "lite": True, "max_order": 1}),
    CacheMethod("seacache", "SeaCache", "threshold", "larger: more calls skip every block", 0.0, 0.5, 0.01, 0.25, 0.0,
                fixed=MappingProxyType({"residual_order": 0}),
                diffusers=True, to_params=lambda v: {"threshold": v, "residual_order": 0}),
    CacheMethod("pab", "PAB", "skip range", "attention recomputed every N-th call", 1, 3, 1, 2, 1, integer=True,
                fixed=MappingProxyType({"attention": "self and cross", "timesteps": "100-800"}),
                diffusers=True, to_params=lambda v: {"self": v, "cross": v}),
    CacheMethod("none", "none", "-", "every call computed", 0.0, 0.0, 0.0, None, None),
)})

#: The app's dropdown entries, in order: label -> name.
CACHE_LABELS: Mapping[str, str] = MappingProxyType({m.label: m.name for m in CACHE_METHODS.values()})


def get_cache_method(name: str) -> CacheMethod:
    """The method called ``name``; a :class:`LightcacheError` naming the valid ones otherwise."""
    if name not in CACHE_METHODS:
        raise LightcacheError(f"cache must be one of {', '.join(CACHE_METHODS)}, got {name!r}.")
    return CACHE_METHODS[name]


# --- which pipelines a diffusers cache can run on ----------------------------------------------------------
#: diffusers' caches whose hooks read each block's outputs through diffusers' registry of transformer block classes.
_READ_BLOCK_METADATA = ("fbc", "magcache", "seacache")


def unsupported_reason(name: str, denoisers: Mapping[str, Any]) -> str | None:
    """Why diffusers' cache ``name`` cannot run on a pipeline with these denoisers, or None when it can.

    Checked before anything runs: a cache whose hook would find nothing to attach to (no block list it knows, no
    attention layer) would otherwise run the plain pipeline and say it cached.
    """
    method = get_cache_method(name)
    if not method.diffusers:
        return None
    if len(denoisers) != 1:
        return (f"{method.label}: diffusers' caches keep one state per transformer, and this pipeline hands the run "
                f"from one expert to another ({', '.join(denoisers)}) mid-way; use EasyCache, which keeps one state "
                "over both experts.")
    (denoiser_name, transformer), = denoisers.items()
    if not hasattr(transformer, "enable_cache"):
        return f"{method.label}: the {denoiser_name} ({type(transformer).__name__}) takes no diffusers cache."
    blocks = getattr(transformer, "blocks", None)
    if not hasattr(blocks, "__len__") or len(blocks) == 0:
        return (f"{method.label}: the {denoiser_name} ({type(transformer).__name__}) has no 'blocks' list, which "
                "lightcache's trace and this cache's hooks need.")
    if name in _READ_BLOCK_METADATA:
        from diffusers.hooks._helpers import TransformerBlockRegistry

        # These hooks find a block's outputs through diffusers' registry of block classes; an unregistered class
        # (SkyReels-V2's blocks) fails deep inside enable_cache with diffusers' own message.
        try:
            TransformerBlockRegistry.get(type(blocks[0]))
        except ValueError:
            return (f"{method.label}: diffusers does not know the blocks of the {denoiser_name} "
                    f"({type(blocks[0]).__name__}), so its cache hooks cannot read their outputs; use EasyCache, "
                    "TaylorSeer or PAB.")
    return None


# --- attaching and removing a diffusers cache --------------------------------------------------------------
def attach_diffusers_cache(transformer, name: str, params: Mapping[str, Any],
                           calibration: list[float] | None = None) -> None:
    """Enable diffusers' cache ``name`` on ``transformer`` with ``params`` (the benchmark's parameter set).

    Raises :class:`LightcacheError` (with nothing left attached) when the cache hooked nothing.
    """
    before = len(hook_names(transformer))
    transformer.enable_cache(diffusers_cache_config(name, params, transformer, calibration))
    try:
        if name == "pab":
            _attach_pab_adapter(transformer)
        if len(hook_names(transformer)) == before:
            raise LightcacheError(f"{CACHE_METHODS[name].label} found nothing to hook on "
                                  f"{type(transformer).__name__}; it would skip nothing.")
    except BaseException:
        detach_diffusers_cache(transformer, name)
        raise


def detach_diffusers_cache(transformer, name: str) -> None:
    """Undo :func:`attach_diffusers_cache` completely: hooks removed, cached tensors dropped (safe to call twice)."""
    if name == "pab":
        _detach_pab_adapter(transformer)
    if getattr(transformer, "_cache_config", None) is not None:
        transformer.disable_cache()
    if hasattr(transformer, _PAB_CLOCK):
        delattr(transformer, _PAB_CLOCK)


def hook_names(transformer) -> list[str]:
    """Every diffusers hook registered anywhere in ``transformer``, as ``module.path:hook`` (for leak checks)."""
    names = []
    for path, module in transformer.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            names.extend(f"{path or '<root>'}:{hook}" for hook in registry._hook_order)
    return sorted(names)


def diffusers_cache_config(name: str, params: Mapping[str, Any], transformer, calibration: list[float] | None):
    """diffusers' config object for cache ``name`` with the benchmark's parameter set ``params``."""
    import torch
    from diffusers.hooks import (
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        SeaCacheConfig,
        TaylorSeerCacheConfig,
    )

    if name == "fbc":
        return FirstBlockCacheConfig(threshold=float(params["threshold"]))
    if name == "magcache":
        if calibration is None:
            raise LightcacheError("MagCache needs its calibration ratios; run the calibration first "
                                  "(lightcache.cache_methods.calibrate_magcache).")
        return MagCacheConfig(
            threshold=float(params["threshold"]), num_inference_steps=len(calibration),
            mag_ratios=torch.tensor(calibration), max_skip_steps=int(params.get("max_skip_steps", 3)),
            retention_ratio=float(params.get("retention_ratio", 0.2)),
        )
    if name == "taylorseer":
        # Taylor factors in the transformer's own dtype: the default bfloat16 would add rounding error that has
        # nothing to do with the method when the model runs in float32.
        lite = bool(params.get("lite", False))
        return TaylorSeerCacheConfig(
            cache_interval=int(params["cache_interval"]), max_order=int(params.get("max_order", 1)),
            disable_cache_before_step=int(params.get("disable_cache_before_step", 3)),
            taylor_factors_dtype=transformer.dtype if transformer.dtype.is_floating_point else torch.float32,
            # Lite mode brings its own patterns (blocks.N skipped, proj_out predicted), which do match Wan.
            cache_identifiers=None if lite else list(TAYLORSEER_WAN_PATTERNS),
            use_lite_mode=lite,
        )
    if name == "seacache":
        return SeaCacheConfig(threshold=float(params["threshold"]), residual_order=int(params.get("residual_order", 1)))
    if name == "pab":
        clock = _TimestepClock()
        setattr(transformer, _PAB_CLOCK, clock)
        return PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=params["self"],
            cross_attention_block_skip_range=params["cross"],
            current_timestep_callback=clock,
        )
    raise LightcacheError(f"'{name}' is not a diffusers cache.")


# --- MagCache calibration ---------------------------------------------------------------------------------
@contextlib.contextmanager
def capture_magcache_calibration():
    """Collect the ratios MagCache's calibration mode reports at the end of a run.

    diffusers exposes them only by printing them and logging ``MagCache Calibration Results: [...]`` at INFO level
    (one message per cache context, so cond and uncond each give one). The print is swallowed and the log records
    parsed; the yielded list fills with one list of floats per context.
    """
    results: list[list[float]] = []

    class _Grab(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            prefix = "MagCache Calibration Results:"
            if message.startswith(prefix):
                results.append([float(v) for v in ast.literal_eval(message[len(prefix):].strip())])

    logger = logging.getLogger("diffusers.hooks.mag_cache")
    handler = _Grab(level=logging.INFO)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield results
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def attach_magcache_calibration(pipe, steps: int) -> None:
    """MagCache in calibration mode on ``pipe.transformer``: computes everything, measures the residual magnitude
    ratios."""
    from diffusers.hooks import MagCacheConfig

    pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))


def combine_calibration(per_context: list[list[float]], steps: int) -> list[float]:
    """One ratio per step for ``MagCacheConfig.mag_ratios``: the mean over the CFG branches' calibrations.

    diffusers' MagCache uses one ratio array for every cache context; the branches' ratios are close, and their
    mean treats both alike.
    """
    usable = [r for r in per_context if len(r) == steps]
    if not usable:
        raise LightcacheError(
            f"MagCache calibration reported no ratios for {steps} steps (got lengths "
            f"{[len(r) for r in per_context]}); MagCache cannot be configured for this model."
        )
    return [sum(values) / len(values) for values in zip(*usable)]


def calibrate_magcache(pipe, call: Callable[[], Any], steps: int) -> list[float]:
    """Run ``call()`` (the pipeline's own ``pipe(...)`` with every acceleration off) once with MagCache calibrating
    ``pipe.transformer``, and return its ratios, one per step: the benchmark's calibration.

    It computes every call, so its video is the plain one; its hooks are removed whatever happens.
    """
    transformer = pipe.transformer
    attach_magcache_calibration(pipe, steps)
    try:
        with capture_magcache_calibration() as captured:
            call()
    finally:
        if getattr(transformer, "_cache_config", None) is not None:
            transformer.disable_cache()
    return combine_calibration(captured, steps)


class MagCacheCalibrations:
    """MagCache's ratios kept per loaded transformer and calibration key, so a second run does not calibrate again.

    The ratios belong to the model's weights, the scheduler, the step count and the video shape (the benchmark
    calibrates once per model and reuses the ratios over prompts and seeds); a transformer loaded again is another
    object and calibrates again. Keyed weakly by the transformer: dropping a model drops its ratios.

    >>> calibrations = MagCacheCalibrations()
    >>> import torch; t = torch.nn.Linear(1, 1)
    >>> calibrations.get(t, ("k",)) is None
    True
    >>> calibrations.put(t, ("k",), [1.0, 0.9]); calibrations.get(t, ("k",))
    [1.0, 0.9]
    """

    def __init__(self) -> None:
        self._by_model: "weakref.WeakKeyDictionary[Any, dict[tuple, list[float]]]" = weakref.WeakKeyDictionary()

    def get(self, transformer, key: tuple) -> list[float] | None:
        ratios = self._by_model.get(transformer, {}).get(key)
        return list(ratios) if ratios is not None else None

    def put(self, transformer, key: tuple, ratios: list[float]) -> None:
        self._by_model.setdefault(transformer, {})[key] = list(ratios)

    def clear(self) -> None:
        self._by_model.clear()


#: The process's calibrations: what lets a second MagCache run of the same model and settings skip calibrating.
#: The one piece of state that outlives a run, on purpose: it holds measured ratios, never a hook or a tensor.
MAGCACHE_CALIBRATIONS = MagCacheCalibrations()


def calibration_key(settings) -> tuple:
    """What MagCache's ratios depend on besides the model: the steps, guidance, the shape and the family's own
    request fields (Wan's scheduler shift and expert boundary...)."""
    return (settings.steps, float(settings.guidance_scale), settings.frames, settings.height, settings.width,
            tuple(sorted(settings.extras.items())))


# --- Pyramid Attention Broadcast on separate CFG calls ----------------------------------------------------
class _TimestepClock:
    """PAB asks a callback for the current timestep; the runner does not set ``pipe._current_timestep``, so the
    adapter hook records the timestep of each transformer call here."""

    def __init__(self):
        self.value = -1.0

    def __call__(self) -> float:
        return self.value


def _attach_pab_adapter(transformer) -> None:
    """Give every PAB hook one state per CFG branch, and feed PAB the timestep.

    diffusers' PAB keeps a single state per attention module. Wan's pipeline calls the transformer once for cond and
    once for uncond, so with one shared state the uncond call would reuse the attention the cond call just computed
    (and the skip counter would alternate between branches). With a state per branch each branch reuses only its own
    attention, which is what PAB means.
    """
    from diffusers.hooks import HookRegistry, ModelHook
    from diffusers.hooks.hooks import BaseState, StateManager
    from diffusers.hooks.pyramid_attention_broadcast import (
        _PYRAMID_ATTENTION_BROADCAST_HOOK,
        PyramidAttentionBroadcastState,
    )

    pab_hooks = [
        module._diffusers_hook.get_hook(_PYRAMID_ATTENTION_BROADCAST_HOOK)
        for module in transformer.modules()
        if getattr(module, "_diffusers_hook", None) is not None
        and module._diffusers_hook.get_hook(_PYRAMID_ATTENTION_BROADCAST_HOOK) is not None
    ]
    if not pab_hooks:
        raise LightcacheError("Pyramid Attention Broadcast found no attention layer to hook on this transformer.")
    clock = getattr(transformer, _PAB_CLOCK)

    class _Unused(BaseState):
        def reset(self):
            pass

    class _BranchStates(ModelHook):
        _is_stateful = True

        def __init__(self):
            super().__init__()
            # Receives the pipeline's cache context (diffusers sets it on every StateManager of a stateful hook).
            self.context = StateManager(_Unused)
            self.states: dict[tuple[int, str], PyramidAttentionBroadcastState] = {}

        def pre_forward(self, module, *args, **kwargs):
            timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
            clock.value = float(timestep.flatten()[0]) if hasattr(timestep, "flatten") else float(timestep)
            branch = self.context._context.name if self.context._context is not None else "default"
            for i, hook in enumerate(pab_hooks):
                hook.state = self.states.setdefault((i, branch), PyramidAttentionBroadcastState())
            return args, kwargs

        def reset_state(self, module):
            self.states.clear()
            return module

    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(_BranchStates(), _PAB_ADAPTER)
    registry.invalidate_child_registries_cache()


def _detach_pab_adapter(transformer) -> None:
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None and registry.get_hook(_PAB_ADAPTER) is not None:
        registry.remove_hook(_PAB_ADAPTER, recurse=False)
        registry.invalidate_child_registries_cache()
