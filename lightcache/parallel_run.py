"""One generation split over several processes, as the command line runs it: every process runs the same
``pipe(...)``, and process 0 gets what it writes: the video, the trace, the summary and a timeline with every
process's memory.

The processes run the same request on the same inputs; context parallelism (:mod:`lightcache.parallel`) splits each
transformer call between them and gathers its output on each, so every process ends with the whole video and the
same trace. Only process 0 needs them; the others send it their memory readings (each process's own ``rss``, and
its GPU's memory on a GPU) and whether their EasyCache decisions were the same, and write nothing.

Example (the command line does this; run it under ``torchrun --nproc-per-node 2``)::

    from lightcache.parallel import ParallelConfig, apply_context_parallel, process_group
    from lightcache.parallel_run import run_parallel
    from lightcache.settings import RunSettings
    from lightcache.tiny import build_tiny_pipeline

    with process_group() as group:
        pipe = build_tiny_pipeline(seed=0)
        with apply_context_parallel(pipe, ParallelConfig("ring")):
            result = run_parallel(pipe, group, RunSettings(prompt="a red circle", steps=6, frames=5, height=32,
                                                           width=32, warmup=2))
        if result is not None:  # process 0
            print(result.summary["parallel"])

The checks that need no process run anywhere:

    >>> from lightcache.settings import RunSettings
    >>> check_parallel_request("ulysses", RunSettings(prompt="x", chunk_ffn=2), world_size=2)
    Traceback (most recent call last):
    ...
    lightcache.errors.LightcacheError: feature chunking (--chunk-ffn) does not combine with --parallel: it replaces the blocks' forward, which context parallelism splits and gathers; each process already holds 1/N of the tokens.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import LightcacheError
from .events import FramesDecoded, MemorySample, StepRecord
from .parallel import ProcessGroup, context_parallel_of, unsupported_with_context_parallel

#: The fields of a trace record that must be the same on every process (the call's time is each process's own).
DECISION_FIELDS = ("step", "branch", "denoiser", "computed", "reason", "eps", "error", "tau", "k")


@dataclass
class ParallelResult:
    """What process 0 writes: the run's summary (with ``parallel``), the trace, the timeline events and the frames."""

    summary: dict[str, Any]
    trace: list[dict[str, Any]]
    timeline: list[dict[str, Any]]
    frames: np.ndarray


def check_parallel_request(mode: str | None, settings, world_size: int, compare_baseline: bool = False) -> None:
    """Refuse, before any model loads, a parallel request that cannot run: the wrong process count for the flag,
    a baseline comparison, or an acceleration that does not combine with context parallelism."""
    if mode is None:
        raise LightcacheError(f"launched as {world_size} processes without --parallel: add --parallel ulysses or "
                              "--parallel ring to split each transformer call over them (or launch one process).")
    if world_size < 2:
        raise LightcacheError(f"--parallel {mode} splits each transformer call over the processes torchrun starts: "
                              "launch with `torchrun --nproc-per-node N -m lightcache generate ...` and N >= 2.")
    if compare_baseline:
        raise LightcacheError("--compare-baseline does not combine with --parallel yet; compare the two runs "
                              "(with and without --no-easycache) yourself.")
    reason = unsupported_with_context_parallel(chunk_ffn=settings.chunk_ffn, async_swap=settings.async_swap,
                                               compile=getattr(settings, "compile", False))
    if reason:
        raise LightcacheError(reason)


def run_parallel(pipe, group: ProcessGroup, settings, preset_name: str = "custom", image: Any = None,
                 on_step: Callable[[StepRecord], None] | None = None) -> ParallelResult | None:
    """Run one generation on this process (context parallelism already applied to ``pipe``); process 0 gets the
    :class:`ParallelResult`, the others None. ``on_step`` sees this process's trace records as they come."""
    from .runner import run_generation, run_to_completion

    parallel = context_parallel_of(pipe)
    if parallel is None:
        raise LightcacheError("apply context parallelism to the pipeline first (lightcache.parallel."
                              "apply_context_parallel).")
    timeline: list[dict[str, Any]] = []
    trace: list[dict[str, Any]] = []

    def on_event(event) -> None:
        if isinstance(event, FramesDecoded):
            return
        timeline.append(event.to_dict())
        if isinstance(event, StepRecord):
            trace.append(event.to_dict())
            if on_step is not None:
                on_step(event)

    with warnings.catch_warnings():
        # torch warns on every functional collective that it will not wait for itself; the calls do wait.
        warnings.filterwarnings("ignore", module="torch.distributed._functional_collectives")
        finished = run_to_completion(run_generation(pipe, settings, preset_name, image=image), on_event)
    samples = [e for e in timeline if e["event"] == MemorySample.__name__]
    decisions = [{k: r.get(k) for k in DECISION_FIELDS} for r in trace]
    everyone = group.gather({"samples": samples, "decisions": decisions,
                             "peak_bytes": finished.summary["memory"]["peak_bytes"]})
    if group.rank != 0:
        return None
    summary = dict(finished.summary)
    summary["parallel"] = {
        **parallel.summary(),
        "decisions_identical_across_processes": all(p["decisions"] == decisions for p in everyone),
        "peak_bytes_by_process": [p["peak_bytes"] for p in everyone],
    }
    return ParallelResult(summary=summary, trace=trace, timeline=_with_every_process(timeline, everyone),
                          frames=finished.frames)


def _with_every_process(timeline: list[dict[str, Any]], everyone: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Process 0's events with each memory series named by its process (``rss (process 1)``...) and the other
    processes' readings added in time order; each process's clock starts at its own run's start."""
    def renamed(sample: dict[str, Any], rank: int) -> dict[str, Any]:
        return {**sample, "values": {f"{name} (process {rank})": v for name, v in sample["values"].items()}}

    events = [renamed(e, 0) if e["event"] == MemorySample.__name__ else e for e in timeline]
    others = sorted((renamed(s, rank) for rank, p in enumerate(everyone) if rank for s in p["samples"]),
                    key=lambda s: s["t"])
    merged, i = [], 0
    for event in events:
        t = event.get("t")
        while i < len(others) and t is not None and others[i]["t"] <= t:
            merged.append(others[i])
            i += 1
        merged.append(event)
    return merged + others[i:]
