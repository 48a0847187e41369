"""Comparing an accelerated run with the plain one fairly: an untimed warm-up first, and the noise stated.

A process's first generation pays one-time costs (lazy imports, kernel selection, allocator growth). If the
accelerated run goes first it pays them and the plain run does not, and EasyCache can look *slower* than no
caching. :func:`warm_up` runs a short untimed generation first, so neither timed run pays them; the CLI's
``--compare-baseline`` and the app's *Compare* both use it.

The baseline is the plain ``pipe(...)``: :func:`plain_settings` turns every acceleration off (EasyCache or any
other step cache, the memory strategies and torch.compile), for the CLI and the app alike, and
:func:`compare_runs` records which settings the baseline actually ran (``baseline_settings``; :func:`baseline_text` says it in words).

Even then two runs of the same work differ by some noise. Every transformer call that both runs computed does
the same work, so the ratio of their median call times (:func:`call_time_ratio`) measures that noise directly
from the two runs, and the comparison reports it beside the speed-up.

Example:
    >>> from lightcache.events import StepRecord
    >>> a = [StepRecord(step=i, timestep=0.0, branch="cond", computed=i % 2 == 0, reason="", ms=10.0) for i in range(4)]
    >>> b = [StepRecord(step=i, timestep=0.0, branch="cond", computed=True, reason="", ms=11.0) for i in range(4)]
    >>> round(call_time_ratio(a, b), 3)
    0.909
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import threading
from typing import Any, Iterable, Sequence

from .events import RunFinished, StepRecord
from .metrics import psnr, ssim

#: The request fields that switch an acceleration on, each with its "off" value: the plain run has all of them.
ACCELERATIONS_OFF: dict[str, Any] = {"easycache": False, "cache": "none", "async_swap": False, "chunk_ffn": None,
                                     "sliced_decode": False, "decode_slices": None, "compile": False}


def plain_settings(settings):
    """The same request with every acceleration off: the plain ``pipe(...)`` a comparison is measured against.

    Example:
        >>> from lightcache.settings import RunSettings
        >>> plain = plain_settings(RunSettings(prompt="a red circle moving right", async_swap=True, chunk_ffn=4))
        >>> plain.easycache, plain.async_swap, plain.chunk_ffn, plain.prompt
        (False, False, None, 'a red circle moving right')
    """
    return dataclasses.replace(settings, **ACCELERATIONS_OFF)


def baseline_text(baseline_settings: dict[str, Any]) -> str:
    """Which accelerations the baseline ran with, from its recorded settings (``compare_runs``'s
    ``baseline_settings``), in words for the CLI's line and the app's comparison.

    Example:
        >>> print(baseline_text(dict(ACCELERATIONS_OFF)))  # doctest: +NORMALIZE_WHITESPACE
        the plain pipe(...), every acceleration off (easycache off, cache off, async_swap off, chunk_ffn off,
        sliced_decode off, decode_slices off, compile off)
        >>> print(baseline_text(dict(ACCELERATIONS_OFF, chunk_ffn=4)))  # doctest: +NORMALIZE_WHITESPACE
        NOT the plain pipe(...): easycache off, cache off, async_swap off, chunk_ffn 4, sliced_decode off,
        decode_slices off, compile off
    """
    def word(value: Any) -> str:
        return "off" if value in (False, None, "none") else "on" if value is True else str(value)

    parts = ", ".join(f"{name} {word(baseline_settings.get(name))}" for name in ACCELERATIONS_OFF)
    if all(baseline_settings.get(name) == off for name, off in ACCELERATIONS_OFF.items()):
        return f"the plain pipe(...), every acceleration off ({parts})"
    return f"NOT the plain pipe(...): {parts}"


#: Denoising steps of the warm-up run: enough for every module to run once (two calls per CFG step).
WARM_UP_STEPS = 2


def warm_up_settings(settings):
    """The untimed warm-up's request: the same shapes and memory strategies, two steps, no caching."""
    return dataclasses.replace(settings, steps=WARM_UP_STEPS, warmup=0, easycache=False)


def warm_up(pipe, settings, preset_name: str, image: Any = None, cancel: threading.Event | None = None) -> None:
    """Run :func:`warm_up_settings` of ``settings`` to completion and discard it (honours ``cancel``)."""
    from .runner import run_generation, run_to_completion

    run_to_completion(run_generation(pipe, warm_up_settings(settings), preset_name, cancel, image=image))


def call_time_ratio(accelerated: Iterable[StepRecord], plain: Iterable[StepRecord]) -> float:
    """Median time of a computed transformer call in the accelerated run over the plain run's (1.0: no noise).

    Computed calls do the same work in both runs, so this ratio away from 1.0 is measurement noise (and hook
    overhead), the scale against which a speed-up should be read. ``nan`` when either run computed nothing.
    """
    # A call during which torch.compile compiled is warm-up, not the work of a call.
    a = [r.ms for r in accelerated if r.computed and not r.compiling]
    p = [r.ms for r in plain if r.computed and not r.compiling]
    if not a or not p or statistics.median(p) <= 0:
        return math.nan
    return statistics.median(a) / statistics.median(p)


def compare_runs(accelerated: RunFinished, plain: RunFinished,
                 accelerated_steps: Sequence[StepRecord] = (), plain_steps: Sequence[StepRecord] = ()) -> dict[str, Any]:
    """Speed-up (whole run and denoise stage), PSNR and SSIM of the accelerated video against the plain one, and
    the per-call time ratio of the calls both computed (the noise of this measurement; with compile on in the
    accelerated run only, compile's effect on a call as well, which ``accelerated_compiled`` says)."""
    a, p = accelerated.summary, plain.summary

    def ratio(x: float, y: float) -> float:
        return x / y if y > 0 else float("inf")

    # A compiled run that compiled (no warm-up run before it) also gets the speed-up without the time torch
    # reports as compiling: torch keeps the compiled code for the next run at this size.
    compiled = a.get("compile") or {}
    compiling = compiled.get("compile_seconds") or 0.0
    return {
        "accelerated_compiled": bool(compiled.get("active")) and not (p.get("compile") or {}).get("active"),
        "accelerated_compile_seconds": compiling,
        "speedup_without_compiling": ratio(p["total_seconds"], a["total_seconds"] - compiling),
        "accelerated_seconds": a["total_seconds"],
        "plain_seconds": p["total_seconds"],
        "speedup": ratio(p["total_seconds"], a["total_seconds"]),
        "denoise_speedup": ratio(p["stages"]["denoise"]["seconds"], a["stages"]["denoise"]["seconds"]),
        "psnr_db": psnr(accelerated.frames, plain.frames),
        "ssim": ssim(accelerated.frames, plain.frames),
        "accelerated_calls": (a["calls_computed"], a["calls_computed"] + a["calls_reused"]),
        "plain_calls": (p["calls_computed"], p["calls_computed"] + p["calls_reused"]),
        "call_time_ratio": call_time_ratio(accelerated_steps, plain_steps),
        # What the baseline ran, as its own run recorded it (not as it was asked), so the summary cannot claim a
        # plain baseline that was not.
        "baseline_settings": {name: p["settings"][name] for name in ACCELERATIONS_OFF},
        "cache": a.get("cache"),
    }
