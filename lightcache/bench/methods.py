"""The methods the benchmark compares, each a way to switch one cache on and off around a run.

Every method runs through :func:`lightcache.runner.run_generation`, so all of them are timed by the same code:

* ``plain``: the pipeline as it is, every transformer call computed;
* ``easycache``: this project's EasyCache (the runner applies it when ``settings.easycache`` is on);
* ``easycache-order1``: EasyCache reusing an extrapolation of the last two transformations instead of the last one
  (``easycache_order=1``, beyond the paper);
* ``easycache+memory``: EasyCache with LightCache's three memory strategies (asynchronous swapping, feature chunking,
  sliced decoding), available once the runner honours those settings;
* diffusers' own caches on the same transformer, enabled with ``transformer.enable_cache(config)``:
  ``fbc`` (FirstBlockCache), ``magcache`` (MagCache, calibrated on the same model, prompt, seed and steps),
  ``taylorseer`` (TaylorSeer with module patterns for Wan), ``seacache`` (SeaCache) and ``pab`` (Pyramid Attention
  Broadcast with one state per CFG branch).

FasterCache is left out: it assumes classifier-free guidance batched into one call and fails on Wan, whose
pipeline calls the transformer once per branch (see ``docs/benchmarks.md``).

Each method says what it skips (:attr:`Method.skips`); the benchmark's work meter checks that claim on every run.

Example:
    >>> from lightcache.bench.methods import METHODS, sweep
    >>> [m.name for m in METHODS.values()][:3]
    ['plain', 'easycache', 'easycache-order1']
    >>> [p["threshold"] for p in sweep("easycache", quick=True)]
    [0.025, 0.05, 0.075, 0.1, 0.2]
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import LightcacheError

#: What a method is allowed to skip; the work meter checks each run against it.
SKIPS_NOTHING = "nothing"
SKIPS_CALLS = "whole transformer calls"
SKIPS_BLOCKS = "all blocks of a call"
SKIPS_BLOCKS_AFTER_FIRST = "blocks after the first"
SKIPS_ATTENTION = "attention layers"
SKIPS_ATTENTION_FFN = "attention and feed-forward layers"

#: Module patterns TaylorSeer needs on Wan: its defaults (``^blocks.*attn``, matched with ``re.fullmatch``) miss
#: ``blocks.0.attn1`` because of the trailing digit, so out of the box it hooks nothing on Wan.
TAYLORSEER_WAN_PATTERNS = (r"blocks\.\d+\.attn1", r"blocks\.\d+\.attn2", r"blocks\.\d+\.ffn")

_PAB_ADAPTER = "lightcache_bench_pab_branches"


@dataclass(frozen=True)
class Method:
    """One method: how to configure the run and which hooks to attach around it.

    Attributes:
        name: stable identifier used in results.json (``plain``, ``easycache``, ``fbc`` ...).
        label: human name for tables and charts.
        kind: ``reference`` (plain), ``ours`` (this project) or ``diffusers`` (a built-in cache).
        skips: what the method may skip (one of the ``SKIPS_*`` constants), checked by the work meter; see
            :meth:`claim` for the one setting that changes it.
        quick: parameter sets of the ``--quick`` sweep.
        full: parameter sets of the full sweep.
        describe: turns one parameter set into a short setting label, e.g. ``tau=0.05``.
    """

    name: str
    label: str
    kind: str
    skips: str
    quick: tuple[dict[str, Any], ...]
    full: tuple[dict[str, Any], ...]
    describe: Callable[[dict[str, Any]], str] = field(repr=False, default=lambda p: "default")
    needs_calibration: bool = False

    def claim(self, params: dict[str, Any]) -> str:
        """What this method skips with ``params`` (TaylorSeer's lite variant skips whole blocks)."""
        if self.name == "taylorseer" and params.get("lite"):
            return SKIPS_BLOCKS
        return self.skips

    def settings_overrides(self, params: dict[str, Any]) -> dict[str, Any]:
        """RunSettings fields this method sets (EasyCache on or off, its threshold, the memory strategies)."""
        if self.name == "easycache":
            return {"easycache": True, "threshold": float(params["threshold"])}
        if self.name == "easycache-order1":
            return {"easycache": True, "threshold": float(params["threshold"]), "easycache_order": 1}
        if self.name == "easycache+memory":
            return {"easycache": True, "threshold": float(params["threshold"]), "async_swap": True,
                    "chunk_ffn": int(params["chunk_ffn"]), "sliced_decode": True}
        return {"easycache": False}

    def attach(self, pipe, params: dict[str, Any], calibration: list[float] | None = None) -> None:
        """Enable this method's diffusers cache on ``pipe.transformer`` (nothing for plain and EasyCache)."""
        transformer = pipe.transformer
        if self.kind != "diffusers":
            return
        transformer.enable_cache(_diffusers_config(self.name, params, transformer, calibration))
        if self.name == "pab":
            _attach_pab_adapter(transformer)

    def detach(self, pipe) -> None:
        """Undo :meth:`attach` completely: hooks removed, cached tensors dropped."""
        transformer = pipe.transformer
        if self.kind != "diffusers":
            return
        if self.name == "pab":
            _detach_pab_adapter(transformer)
        if getattr(transformer, "_cache_config", None) is not None:
            transformer.disable_cache()


def _fmt(value: float) -> str:
    return f"{value:g}"


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("plain", "plain", "reference", SKIPS_NOTHING, ({},), ({},)),
        Method(
            "easycache", "EasyCache", "ours", SKIPS_CALLS,
            # Dense enough to land near every built-in point: each tau reuses a whole number of steps, so the
            # reachable work fractions are discrete and a coarse sweep leaves gaps a peer can fall into.
            quick=tuple({"threshold": t} for t in (0.025, 0.05, 0.075, 0.1, 0.2)),
            full=tuple({"threshold": t} for t in (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1, 0.125, 0.15,
                                                  0.2, 0.3)),
            describe=lambda p: f"tau={_fmt(p['threshold'])}",
        ),
        Method(
            "easycache-order1", "EasyCache, order 1 (extrapolating)", "ours", SKIPS_CALLS,
            # Extrapolating keeps more of the quality per reused step than repeating, so the same tau reuses about
            # as much at a higher PSNR; past tau ~0.2 the lines it follows stray and order 0 is the better of the two.
            quick=tuple({"threshold": t} for t in (0.02, 0.05, 0.1)),
            full=tuple({"threshold": t} for t in (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15)),
            describe=lambda p: f"tau={_fmt(p['threshold'])}",
        ),
        Method(
            "easycache+memory", "EasyCache + memory strategies", "ours", SKIPS_CALLS,
            quick=({"threshold": 0.1, "chunk_ffn": 4},),
            full=({"threshold": 0.05, "chunk_ffn": 4}, {"threshold": 0.1, "chunk_ffn": 4}),
            describe=lambda p: f"tau={_fmt(p['threshold'])}, chunks={p['chunk_ffn']}",
        ),
        Method(
            "fbc", "FirstBlockCache", "diffusers", SKIPS_BLOCKS_AFTER_FIRST,
            quick=({"threshold": 0.1},),
            full=tuple({"threshold": t} for t in (0.02, 0.05, 0.075, 0.1, 0.15, 0.2)),
            describe=lambda p: f"threshold={_fmt(p['threshold'])}",
        ),
        Method(
            "magcache", "MagCache", "diffusers", SKIPS_BLOCKS,
            quick=({"threshold": 0.06},),
            full=tuple({"threshold": t} for t in (0.03, 0.06, 0.12, 0.24, 0.5)),
            describe=lambda p: f"threshold={_fmt(p['threshold'])}",
            needs_calibration=True,
        ),
        Method(
            "taylorseer", "TaylorSeer", "diffusers", SKIPS_ATTENTION_FFN,
            # Two of diffusers' variants: Taylor-predicted attention and feed-forward outputs in every block, and
            # "lite" (every block skipped, the output projection predicted), which is lighter and on Wan closer.
            # Order 0 (reuse the last computed output) is TaylorSeer without the extrapolation; on the tiny model's
            # uneven flow-matching steps it is often the better of the two, so both are swept.
            quick=({"cache_interval": 2, "lite": True, "max_order": 1},),
            full=(*({"cache_interval": n, "lite": True, "max_order": 1} for n in (2, 3, 4)),
                  *({"cache_interval": n, "lite": False, "max_order": o} for o in (1, 0) for n in (2, 3))),
            describe=lambda p: (f"{'lite' if p.get('lite') else 'attn+ffn'}, order={p.get('max_order', 1)}, "
                                f"interval={p['cache_interval']}"),
        ),
        Method(
            "seacache", "SeaCache", "diffusers", SKIPS_BLOCKS,
            # residual_order 1 (diffusers' default) extrapolates the cached residual, 0 reuses it; both are swept.
            quick=({"threshold": 0.25, "residual_order": 0},),
            full=tuple({"threshold": t, "residual_order": o} for o in (0, 1) for t in (0.1, 0.25, 0.5)),
            describe=lambda p: f"threshold={_fmt(p['threshold'])}, order={p.get('residual_order', 1)}",
        ),
        Method(
            "pab", "PyramidAttentionBroadcast", "diffusers", SKIPS_ATTENTION,
            quick=({"self": 2, "cross": 2},),
            full=({"self": 2, "cross": None}, {"self": 2, "cross": 2}, {"self": 3, "cross": 3}),
            describe=lambda p: f"self={p['self']}, cross={p['cross'] or 'off'}",
        ),
    )
}


def sweep(name: str, quick: bool) -> list[dict[str, Any]]:
    """The parameter sets of ``name``'s sweep (copies, safe to modify)."""
    method = get_method(name)
    return [dict(p) for p in (method.quick if quick else method.full)]


def get_method(name: str) -> Method:
    """The registered method called ``name``; a :class:`LightcacheError` naming the valid ones otherwise."""
    if name not in METHODS:
        raise LightcacheError(f"Unknown benchmark method '{name}'. Valid methods: {', '.join(METHODS)}.")
    return METHODS[name]


# --- MagCache calibration ---------------------------------------------------------------------------------
@contextlib.contextmanager
def capture_magcache_calibration():
    """Collect the ratios MagCache's calibration mode reports at the end of a run.

    diffusers exposes them only by printing them and logging ``MagCache Calibration Results: [...]`` at INFO level
    (one message per cache context, so cond and uncond each give one). The print is swallowed and the log records
    parsed; the yielded list fills with one list of floats per context.
    """
    import ast

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
    """MagCache in calibration mode: computes everything, measures the residual magnitude ratios."""
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


# --- diffusers configs ------------------------------------------------------------------------------------
def _diffusers_config(name: str, params: dict[str, Any], transformer, calibration: list[float] | None):
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
            raise LightcacheError("MagCache needs its calibration ratios; run the calibration first.")
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
        transformer._lightcache_bench_clock = clock
        return PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=params["self"],
            cross_attention_block_skip_range=params["cross"],
            current_timestep_callback=clock,
        )
    raise LightcacheError(f"'{name}' is not a diffusers cache.")


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
    clock = transformer._lightcache_bench_clock

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
    if hasattr(transformer, "_lightcache_bench_clock"):
        del transformer._lightcache_bench_clock


def hook_names(transformer) -> list[str]:
    """Every diffusers hook registered anywhere in ``transformer``, as ``module.path:hook`` (for leak checks)."""
    names = []
    for path, module in transformer.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            names.extend(f"{path or '<root>'}:{hook}" for hook in registry._hook_order)
    return sorted(names)


def slug(method: str, setting: str) -> str:
    """A filesystem- and id-safe key for one method x setting, e.g. ``fbc-threshold-0.1``."""
    return re.sub(r"[^a-z0-9.+]+", "-", f"{method}-{setting}".lower()).strip("-")
