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

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..cache_methods import (  # noqa: F401 - shared with the app and the CLI, re-exported for the benchmark
    TAYLORSEER_WAN_PATTERNS,
    attach_diffusers_cache,
    attach_magcache_calibration,
    capture_magcache_calibration,
    combine_calibration,
    detach_diffusers_cache,
    hook_names,
)
from ..errors import LightcacheError

#: What a method is allowed to skip; the work meter checks each run against it.
SKIPS_NOTHING = "nothing"
SKIPS_CALLS = "whole transformer calls"
SKIPS_BLOCKS = "all blocks of a call"
SKIPS_BLOCKS_AFTER_FIRST = "blocks after the first"
SKIPS_ATTENTION = "attention layers"
SKIPS_ATTENTION_FFN = "attention and feed-forward layers"


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
        if self.kind != "diffusers":
            return
        attach_diffusers_cache(pipe.transformer, self.name, params, calibration)

    def detach(self, pipe) -> None:
        """Undo :meth:`attach` completely: hooks removed, cached tensors dropped."""
        if self.kind != "diffusers":
            return
        detach_diffusers_cache(pipe.transformer, self.name)


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
            # Dense between 0.02 and 0.05, where the extrapolating peers (SeaCache order 1, TaylorSeer) sit at 1.6-2.5x;
            # 0.2 and 0.3 reach past 3x, where the committed run found FirstBlockCache 0.15-0.2 and TaylorSeer lite
            # interval 4 (3.0-3.7x, about 25 dB) beyond its last point (tau 0.15, 3.01x).
            full=tuple({"threshold": t} for t in (0.01, 0.02, 0.025, 0.03, 0.035, 0.04, 0.045, 0.05, 0.06, 0.075,
                                                  0.1, 0.15, 0.2, 0.3)),
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


def slug(method: str, setting: str) -> str:
    """A filesystem- and id-safe key for one method x setting, e.g. ``fbc-threshold-0.1``."""
    return re.sub(r"[^a-z0-9.+]+", "-", f"{method}-{setting}".lower()).strip("-")
