"""One generation as a generator of events: the pipeline's own ``pipe(...)``, watched through hooks.

The runner attaches the requested accelerations and a :class:`~lightcache.observe.RunObserver` to the pipeline
(:func:`lightcache.accelerate.apply_lightcache`), calls ``pipe(...)`` on the process's torch thread
(:mod:`lightcache.torch_thread`: one thread for all heavy torch work, so that the CPU's OpenMP threads keep their
speed) with the keyword arguments the pipeline's family adapter builds from the request, and yields what the hooks
report, in time order:
stage boundaries, one :class:`~lightcache.events.StepRecord` per denoiser call, memory samples, the decoded
frames. Because the run *is* ``pipe(...)``, its output is the pipeline's own (with every acceleration off it is
bit-identical to calling the pipeline directly), and a new pipeline needs only an adapter, not a copy of its loop.

Hooks are removed and the call waited for in ``finally``: a run that raises, is cancelled, or whose consumer stops
iterating leaves the pipeline as it found it. A stop request lands at the next watched module call (text encoder,
denoiser, or a part of the VAE decoder), so a stopped run never finishes its decode.

Example:
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> from lightcache.runner import run_generation
    >>> from lightcache.settings import RunSettings
    >>> pipe = build_tiny_pipeline(seed=0)
    >>> settings = RunSettings(prompt="a red circle moving right", steps=6, frames=5, height=32, width=32,
    ...                        warmup=2, threshold=0.2)
    >>> events = list(run_generation(pipe, settings))
    >>> type(events[-1]).__name__, events[-1].frames.shape
    ('RunFinished', (5, 32, 32, 3))
"""

from __future__ import annotations

import dataclasses
import queue
import statistics
import threading
import time
from typing import Any, Callable, Iterator

import numpy as np

from .accelerate import AccelerationConfig, apply_lightcache, cache_unsupported
from .cache_methods import CACHE_METHODS, MAGCACHE_CALIBRATIONS, calibrate_magcache, calibration_key
from .errors import LightcacheError
from .events import (
    Event,
    FramesDecoded,
    Note,
    RunFinished,
    RunStarted,
    StageFinished,
    StageStarted,
    StepRecord,
    call_kind,
)
from .families import FamilyAdapter, adapter_for
from .observe import RunObserver
from .techniques.chunk import check_num_chunks
from .techniques.easycache import EasyCacheConfig
from .telemetry import MemorySampler
from .torch_thread import torch_thread

#: Seconds between memory readings for the timeline (each reading costs microseconds).
SAMPLE_PERIOD_S = 0.05


def run_generation(
    pipe,
    settings,
    preset_name: str = "custom",
    cancel: threading.Event | None = None,
    image: Any = None,
) -> Iterator[Event]:
    """Generate one video with ``settings`` and yield its events; the last one is :class:`RunFinished`.

    ``cancel``: when set, the run stops at the next watched module call with :class:`RunCancelled`.
    ``image``: the first frame (a PIL image) for image-to-video pipelines; refused by text-to-video ones.
    """
    if torch_thread.is_current():
        # The call would queue behind this very generator on the one thread that could run it.
        raise LightcacheError("run_generation cannot be iterated on lightcache's torch thread; iterate it elsewhere.")
    adapter = adapter_for(pipe)
    adapter.check_denoisers(pipe)
    # Before any view of the pipeline is made (TI2V with an image): a view shares the scheduler it finds.
    adapter.prepare(pipe, settings)
    call_pipe = _pipeline_for(adapter, pipe, image)
    adapter.check_prompt(pipe, settings)
    latent_shape = adapter.latent_shape(pipe, settings)
    slice_plan = _check_strategies(pipe, adapter, settings, latent_shape)
    # Refused before anything runs (MagCache's calibration included) where the family or the strategies rule it out.
    reason = cache_unsupported(_acceleration_config(settings, magcache_ratios=()), adapter.denoisers(pipe))
    if reason:
        raise LightcacheError(reason)
    device = pipe._execution_device
    yield RunStarted(preset=preset_name, settings=settings.to_dict(), device=str(device),
                     calls_per_step=adapter.calls_per_step(call_pipe, settings))
    # MagCache's calibration is a run of its own, before this run's clock starts: its time is no part of this run's.
    if _needs_calibration(pipe, settings, image):
        yield Note(message=f"MagCache calibration: running one run of {settings.steps} steps with every call "
                           "computed, before the run (MagCache skips blocks by the residual ratios it measures).",
                   t=0.0)
    magcache_ratios, calibration = _magcache_calibration(pipe, adapter, call_pipe, settings, image, cancel)
    clock = _Clock()

    stages: dict[str, dict[str, Any]] = {}
    records: list[StepRecord] = []
    updates: queue.Queue = queue.Queue()
    stop = _Stop(cancel)
    sampler = MemorySampler(period_s=SAMPLE_PERIOD_S, device=device, clock=clock).start()
    order = _TimeOrder(sampler)

    def on_event(event: Event) -> None:
        # Runs on the worker thread, inside the pipeline's call: stage reports get their memory figures here.
        if isinstance(event, StageStarted):
            stages.setdefault(event.stage, {"seconds": 0.0, "peak_bytes": None})
            stages[event.stage]["resident_bytes"] = sampler.begin_stage(event.stage)
        elif isinstance(event, StageFinished):
            event.peak_bytes = sampler.end_stage(event.stage)
            # end_stage takes a last reading; the stage ends after it, so that reading falls inside the stage.
            now = clock()
            event.seconds += now - event.t
            event.t = now
            entry = stages[event.stage]
            entry["seconds"] += event.seconds
            entry["peak_bytes"] = max(entry["peak_bytes"] or 0, event.peak_bytes or 0) or event.peak_bytes
        elif isinstance(event, StepRecord):
            records.append(event)
        updates.put(event)

    worker = None
    acc = swap = compiled = None
    frames = None
    try:
        # Attaching moves and copies weights (swapping's host stores): heavy work, so on the torch thread too.
        acc = torch_thread.call(apply_lightcache, pipe, _acceleration_config(settings, magcache_ratios),
                                on_event=on_event, cancel=stop, clock=clock, adapter=adapter)
        swap, compiled = acc.swap, acc.compiled
        for note in cache_notes(settings, calibration) + _strategy_notes(settings, swap, slice_plan, compiled):
            yield from order.emit(Note(message=note, t=clock()))
        kwargs = adapter.call_kwargs(call_pipe, settings, image)
        done = object()

        def work() -> None:
            try:
                output = call_pipe(**kwargs)
                video = np.asarray(output.frames[0], dtype=np.float32)
                on_event(FramesDecoded(first=0, t=clock(), frames=video))
                acc.observer.finish()
                updates.put((done, video))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
                updates.put((done, exc))

        worker = torch_thread.submit(work)
        while True:
            item = updates.get()
            if isinstance(item, tuple) and item and item[0] is done:
                if isinstance(item[1], BaseException):
                    raise item[1]
                frames = item[1]
                break
            yield from order.emit(item)
    finally:
        # Reached on success, error, cancellation and when the consumer stops iterating: the worker is told to
        # stop and joined before any hook comes off, so no call can run on a half-detached pipeline.
        stop.set()
        if worker is not None:
            worker.exception()  # waits for the call; what it raised has already reached the consumer
        try:
            if acc is not None:
                acc.observer.finish()
                torch_thread.call(acc.remove)
        finally:
            sampler.stop()

    summary = {
        "preset": preset_name,
        "family": adapter.name,
        "pipeline": type(call_pipe).__name__,
        "denoisers": list(adapter.denoisers(pipe)),
        "image": None if image is None else {"width": image.width, "height": image.height},
        "device": str(device),
        "settings": settings.to_dict(),
        "stages": stages,
        "total_seconds": clock(),
        "calls_computed": sum(r.computed for r in records),
        "calls_reused": sum(not r.computed for r in records),
        "steps_reused": sorted({r.step for r in records if not r.computed and r.decides}),
        "calls_by_denoiser": {name: sum(r.denoiser == name for r in records)
                              for name in dict.fromkeys(r.denoiser for r in records)},
        "memory": {
            "peak_kind": "cuda_allocated" if sampler.cuda else "rss",
            "peak_bytes": max((v["peak_bytes"] for v in stages.values() if v.get("peak_bytes") is not None),
                              default=None),
        },
        "strategies": _strategies_summary(settings, swap, slice_plan),
        "compile": compile_summary(settings, compiled, records),
        "cache": cache_summary(settings, records, calibration),
    }
    yield from order.flush()
    yield RunFinished(summary=summary, frames=frames)


def run_to_completion(events: Iterator[Event], on_event: Callable[[Event], None] | None = None) -> RunFinished:
    """Drain an event stream and return its :class:`RunFinished` (calling ``on_event`` on each event)."""
    finished = None
    for event in events:
        if on_event is not None:
            on_event(event)
        if isinstance(event, RunFinished):
            finished = event
    if finished is None:
        raise RuntimeError("The run ended without a RunFinished event.")
    return finished


def _acceleration_config(settings, magcache_ratios=None) -> AccelerationConfig:
    cache = getattr(settings, "step_cache", "easycache" if settings.easycache else "none")
    return AccelerationConfig(
        easycache=EasyCacheConfig(threshold=settings.threshold, warmup_steps=settings.warmup,
                                  order=getattr(settings, "easycache_order", 0),
                                  force_last_step=getattr(settings, "force_last_step", True))
        if cache == "easycache" else None,
        cache=cache,
        cache_setting=getattr(settings, "cache_setting", None) if cache not in ("easycache", "none") else None,
        magcache_ratios=magcache_ratios if cache == "magcache" else None,
        chunk_ffn=settings.chunk_ffn,
        async_swap=settings.async_swap,
        sliced_decode=settings.sliced_decode,
        decode_slices=settings.decode_slices,
        compile=bool(getattr(settings, "compile", False)),
    )


def _magcache_calibration(pipe, adapter: FamilyAdapter, call_pipe, settings, image, cancel):
    """MagCache's ratios for this run and what the trace says of them: ``(None, None)`` for any other cache.

    As the benchmark does it: one run of the same model, steps and shape with MagCache calibrating and every call
    computed, its branches' ratios averaged. Kept per loaded transformer and settings
    (:data:`~lightcache.cache_methods.MAGCACHE_CALIBRATIONS`), so the next run of this model at these settings
    skips it.
    """
    if getattr(settings, "step_cache", None) != "magcache":
        return None, None
    key = _calibration_key(settings, image)
    transformer = pipe.transformer
    ratios = MAGCACHE_CALIBRATIONS.get(transformer, key)
    if ratios is not None:
        return ratios, {"ran": False, "seconds": 0.0, "steps": len(ratios)}
    plain = dataclasses.replace(settings, easycache=False)
    kwargs = adapter.call_kwargs(call_pipe, plain, image)

    def run_once() -> None:
        # Watched for Stop only: a stop request lands in the calibration run as in any other.
        observer = RunObserver(pipe, adapter=adapter, cancel=cancel).attach()
        try:
            call_pipe(**kwargs)
        finally:
            observer.detach()

    start = time.perf_counter()
    ratios = torch_thread.call(calibrate_magcache, pipe, run_once, settings.steps)
    MAGCACHE_CALIBRATIONS.put(transformer, key, ratios)
    return ratios, {"ran": True, "seconds": time.perf_counter() - start, "steps": len(ratios)}


def _calibration_key(settings, image) -> tuple:
    return calibration_key(settings) + (None if image is None else image.size,)


def _needs_calibration(pipe, settings, image) -> bool:
    return getattr(settings, "step_cache", None) == "magcache" and MAGCACHE_CALIBRATIONS.get(
        pipe.transformer, _calibration_key(settings, image)) is None


def cache_notes(settings, calibration: dict | None) -> list[str]:
    """What the trace says of the step cache: which diffusers cache runs with which settings, and its calibration."""
    method = CACHE_METHODS.get(getattr(settings, "step_cache", ""))
    if method is None or not method.diffusers:
        return []
    fixed = ", ".join(f"{k} {v}" for k, v in method.fixed.items())
    notes = [f"{method.label} (diffusers), {method.describe(settings.cache_setting)}"
             + (f"; {fixed}" if fixed else "") + ": what each call ran is counted from the blocks and layers that "
             "ran."]
    if calibration is not None and calibration["ran"]:
        notes.append(f"MagCache calibration: one run of {calibration['steps']} steps with every call computed "
                     f"({calibration['seconds']:.1f} s, before this run and not in its time) measured the residual "
                     "ratios; they are kept for the next run of this model at these settings.")
    elif calibration is not None:
        notes.append("MagCache calibration: the ratios measured by an earlier run of this model at these settings "
                     "(no calibration run).")
    return notes


def cache_summary(settings, records: list[StepRecord], calibration: dict | None) -> dict[str, Any]:
    """The step cache of a run: which, its main setting, what share of the block work its calls ran, and MagCache's
    calibration."""
    name = getattr(settings, "step_cache", "easycache" if settings.easycache else "none")
    method = CACHE_METHODS[name]
    value = settings.threshold if name == "easycache" else (
        settings.cache_setting if settings.cache_setting is not None else method.default)
    fractions = [r.work_fraction for r in records if r.work_fraction is not None]
    return {
        "method": name,
        "label": method.label,
        "setting": None if name == "none" else method.setting,
        "value": None if name == "none" else value,
        "fixed": dict(method.fixed),
        "work_fraction": sum(fractions) / len(fractions) if fractions and len(fractions) == len(records) else None,
        "calls_partial": sum(call_kind(r) == "partial" for r in records),
        "calibration": calibration,
    }


def _pipeline_for(adapter: FamilyAdapter, pipe, image):
    call_pipe = adapter.pipeline_for(pipe, image)
    if adapter.takes_image(call_pipe) and image is None:
        raise LightcacheError("This is an image-to-video model: give it an image to start from (--image).")
    return call_pipe


class _Stop:
    """Set by the runner when it ends; also reads as set when the caller's ``cancel`` is."""

    def __init__(self, cancel: threading.Event | None):
        self._own = threading.Event()
        self._cancel = cancel

    def set(self) -> None:
        self._own.set()

    def is_set(self) -> bool:
        return self._own.is_set() or (self._cancel is not None and self._cancel.is_set())


# --- helpers ----------------------------------------------------------------------------------------------
class _Clock:
    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


class _TimeOrder:
    """Merges the memory readings into the event stream in time order.

    Events come from the pipeline's thread and are yielded a little later; readings newer than the event being
    yielded are held back until an event at least as new arrives (or the run ends).
    """

    def __init__(self, sampler: MemorySampler):
        self.sampler = sampler
        self.held: list = []

    def emit(self, event: Event) -> Iterator[Event]:
        self.held += self.sampler.drain()
        t = getattr(event, "t", None)
        if t is None:
            ready, self.held = self.held, []
        else:
            ready = [s for s in self.held if s.t <= t]
            self.held = [s for s in self.held if s.t > t]
        yield from ready
        yield event

    def flush(self) -> Iterator[Event]:
        held, self.held = self.held + self.sampler.drain(), []
        yield from held


def _check_strategies(pipe, adapter: FamilyAdapter, settings, latent_shape) -> dict | None:
    """Refuse memory-strategy settings this model cannot honour before anything runs; the sliced-decode plan."""
    if getattr(settings, "compile", False):
        from .techniques.compile import check_compiler_available

        check_compiler_available("inductor", pipe._execution_device)
        for name, module in adapter.denoisers(pipe).items():
            if not adapter.repeated_blocks(module):
                raise LightcacheError(f"compile: the {name} ({type(module).__name__}) has no repeated blocks to "
                                      "compile.")
    if settings.chunk_ffn is not None:
        reason = adapter.chunking_unsupported(pipe)
        if reason:
            raise LightcacheError(reason)
        for module in adapter.denoisers(pipe).values():
            check_num_chunks(settings.chunk_ffn, adapter.chunked_forwards(module).num_tokens(module, latent_shape))
    if settings.sliced_decode:
        reason = adapter.sliced_decode_unsupported(pipe)
        if reason:
            raise LightcacheError(reason)
        vae = adapter.vae(pipe)
        return adapter.band_decoder(vae).plan(vae, latent_shape[3], latent_shape[4], num_slices=settings.decode_slices)
    return None


def _strategy_notes(settings, swap=None, slice_plan=None, compiled=None) -> list[str]:
    notes = []
    if getattr(settings, "step_cache", "none" if not settings.easycache else "easycache") == "none":
        notes.append("EasyCache is off: every step runs the transformer.")
    if swap is not None and swap.note:
        notes.append(swap.note)
    if settings.chunk_ffn is not None:
        notes.append(f"Feature chunking: token-wise layers run over {settings.chunk_ffn} slices of the sequence.")
    if slice_plan is not None:
        notes.append(
            f"Sliced decoding: {len(slice_plan['cuts']) - 1} bands across the frame's {slice_plan['axis']}; "
            "the video is assembled on the host, never whole on the device."
        )
    if compiled is not None:
        blocks = sum(compiled.blocks.values())
        notes.append(
            f"torch.compile: {blocks} transformer blocks compiled ({compiled.summary()['backend']}). Calls that "
            "compiled are marked in the trace; their time is warm-up, not the compiled model's speed."
        )
    return notes


def compile_summary(settings, compiled, records: list[StepRecord]) -> dict[str, Any]:
    """Whether compile was asked for and acted, and its warm-up: the calls during which torch compiled.

    ``warmup_call_seconds`` is the whole time of those calls (compiling and running); ``compile_seconds`` the part
    torch reports as compiling. ``call_ms_after_warmup`` is the median computed call without them: the speed of the
    compiled model.

    >>> from lightcache.events import StepRecord
    >>> calls = [StepRecord(step=0, timestep=900.0, branch="cond", computed=True, reason="warm-up", ms=9000.0,
    ...                     compiling=True, compile_ms=8900.0),
    ...          StepRecord(step=1, timestep=800.0, branch="cond", computed=True, reason="warm-up", ms=50.0)]
    >>> s = compile_summary(None, None, calls)
    >>> s["calls_compiling"], s["compile_seconds"], s["call_ms_after_warmup"]
    (1, 8.9, 50.0)
    """
    warm = [r for r in records if r.compiling]
    after = [r.ms for r in records if r.computed and not r.compiling]
    summary: dict[str, Any] = {
        "requested": bool(getattr(settings, "compile", False)),
        "active": compiled is not None,
        "calls_compiling": len(warm),
        "warmup_call_seconds": round(sum(r.ms for r in warm) / 1000.0, 6),
        "compile_seconds": round(sum(r.compile_ms for r in warm) / 1000.0, 6),
        "call_ms_after_warmup": statistics.median(after) if after else None,
    }
    if compiled is not None:
        summary.update(compiled.summary())
    return summary


def _strategies_summary(settings, swap, slice_plan) -> dict[str, Any]:
    """Which memory strategies were asked for, which acted, and why one did not."""
    if swap is not None:
        async_swap = {"requested": True, **swap.summary()}
    else:
        async_swap = {"requested": bool(settings.async_swap), "active": False, "note": None}
    return {
        "async_swap": async_swap,
        "feature_chunking": {"requested": settings.chunk_ffn is not None, "active": settings.chunk_ffn is not None,
                             "num_chunks": settings.chunk_ffn},
        "sliced_decode": {"requested": bool(settings.sliced_decode), "active": slice_plan is not None,
                          "num_slices": len(slice_plan["cuts"]) - 1 if slice_plan else None,
                          "axis": slice_plan["axis"] if slice_plan else None},
    }
