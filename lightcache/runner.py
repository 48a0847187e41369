"""One generation as a generator of events: encode -> denoise -> decode.

The runner drives a diffusers ``WanPipeline`` stage by stage with exactly the pipeline's own arithmetic (the
parity tests compare it bit for bit with ``pipe(...)``), so that it can time each stage, emit a
:class:`~lightcache.events.StepRecord` for every transformer call as it happens, and switch the accelerations on
and off around the stage they belong to. Hooks are attached at the start and removed in ``finally``: a run that
raises, is cancelled, or whose consumer stops iterating leaves the pipeline as it found it.

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

import threading
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch
from diffusers.utils.torch_utils import get_module_execution_device

from .chunk import apply_feature_chunking, check_num_chunks, num_tokens, remove_feature_chunking
from .easycache import EasyCacheConfig, apply_easycache, remove_easycache
from .errors import LightcacheError, RunCancelled
from .events import Event, FramesDecoded, Note, RunFinished, RunStarted, StageFinished, StageStarted, StepRecord
from .swap import apply_async_swap, remove_async_swap
from .telemetry import MemorySampler

#: Seconds between memory readings for the timeline (each reading costs microseconds).
SAMPLE_PERIOD_S = 0.05


def run_generation(
    pipe,
    settings,
    preset_name: str = "custom",
    cancel: threading.Event | None = None,
) -> Iterator[Event]:
    """Generate one video with ``settings`` and yield its events; the last one is :class:`RunFinished`.

    ``cancel``: when set, the run stops at the next transformer call with :class:`RunCancelled`.
    """
    if getattr(pipe.config, "boundary_ratio", None) is not None or getattr(pipe, "transformer_2", None):
        raise LightcacheError("Two-transformer (Wan2.2 A14B) pipelines are not supported yet.")
    if getattr(pipe.config, "expand_timesteps", False):
        raise LightcacheError("Pipelines with per-token timesteps (Wan2.2 TI2V) are not supported yet.")

    latent_shape = _latent_shape(pipe, settings)
    slice_plan = _check_strategies(pipe, settings, latent_shape)
    clock = _Clock()
    device = pipe._execution_device
    yield RunStarted(preset=preset_name, settings=settings.to_dict(), device=str(device))

    stages: dict[str, dict[str, Any]] = {}
    records: list[StepRecord] = []
    hook = swap = None
    sampler = MemorySampler(period_s=SAMPLE_PERIOD_S, device=device, clock=clock).start()
    try:
        _set_flow_shift(pipe, settings.flow_shift)
        # Order matters: chunking replaces the transformer's innermost forward, EasyCache wraps that, and swapping's
        # group offloading wraps both (lightcache.swap explains why). The finally block removes them in reverse.
        if settings.chunk_ffn is not None:
            apply_feature_chunking(pipe.transformer, settings.chunk_ffn)
        if settings.easycache:
            hook = apply_easycache(
                pipe.transformer, EasyCacheConfig(threshold=settings.threshold, warmup_steps=settings.warmup)
            )
        if settings.async_swap:
            swap = apply_async_swap(pipe, device)
        for note in _strategy_notes(settings, swap, slice_plan):
            yield from _emit(sampler, Note(message=note, t=clock()))

        with torch.no_grad():
            yield from _emit(sampler, _stage("encode", clock, stages, sampler))
            embeds = _encode(pipe, settings, device)
            if swap is not None:
                swap.after_encode()
            yield from _emit(sampler, _finish("encode", clock, stages, sampler))

            yield from _emit(sampler, _stage("denoise", clock, stages, sampler))
            latents = None
            for item in _denoise(pipe, settings, embeds, device, hook, cancel, clock):
                if isinstance(item, StepRecord):
                    records.append(item)
                    yield from _emit(sampler, item)
                else:
                    latents = item
            del embeds
            yield from _emit(sampler, _finish("denoise", clock, stages, sampler))

            yield from _emit(sampler, _stage("decode", clock, stages, sampler))
            if swap is not None:
                swap.before_decode()
            if slice_plan is not None:
                pieces = []
                first = 0
                for piece in _decode_sliced(pipe, latents, slice_plan):
                    pieces.append(piece)
                    yield from _emit(sampler, FramesDecoded(first=first, t=clock(), frames=piece))
                    first += len(piece)
                frames = np.concatenate(pieces)
            else:
                frames = _decode(pipe, latents)
                yield from _emit(sampler, FramesDecoded(first=0, t=clock(), frames=frames))
            del latents
            if swap is not None:
                swap.after_decode()
            yield from _emit(sampler, _finish("decode", clock, stages, sampler))
    finally:
        # Reverse order of application (see above); the sampler's thread ends whatever happened.
        try:
            remove_async_swap(pipe)
            remove_easycache(pipe.transformer)
            remove_feature_chunking(pipe.transformer)
        finally:
            sampler.stop()

    summary = {
        "preset": preset_name,
        "device": str(device),
        "settings": settings.to_dict(),
        "stages": stages,
        "total_seconds": clock(),
        "calls_computed": sum(r.computed for r in records),
        "calls_reused": sum(not r.computed for r in records),
        "steps_reused": sorted({r.step for r in records if not r.computed and r.branch == "cond"}),
        "memory": {
            "peak_kind": "cuda_allocated" if torch.device(device).type == "cuda" else "rss",
            "peak_bytes": max((v["peak_bytes"] for v in stages.values() if v.get("peak_bytes") is not None),
                              default=None),
        },
        "strategies": _strategies_summary(settings, swap, slice_plan),
    }
    for sample in sampler.drain():
        yield sample
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


# --- stages -----------------------------------------------------------------------------------------------
def _encode(pipe, settings, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    do_cfg = settings.guidance_scale > 1.0
    _check_prompt_length(pipe, settings)
    prompt_embeds, negative_embeds = pipe.encode_prompt(
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt,
        do_classifier_free_guidance=do_cfg,
        num_videos_per_prompt=1,
        max_sequence_length=settings.max_sequence_length,
        device=device,
    )
    dtype = pipe.transformer.dtype
    return prompt_embeds.to(dtype), (negative_embeds.to(dtype) if negative_embeds is not None else None)


def _denoise(pipe, settings, embeds, device, hook, cancel, clock) -> Iterator[StepRecord | torch.Tensor]:
    """Mirror of ``WanPipeline.__call__``'s loop that yields one record per transformer call, then the latents."""
    prompt_embeds, negative_embeds = embeds
    transformer = pipe.transformer
    dtype = transformer.dtype
    pipe.scheduler.set_timesteps(settings.steps, device=device)
    timesteps = pipe.scheduler.timesteps
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    latents = pipe.prepare_latents(
        1, transformer.config.in_channels, settings.height, settings.width, settings.frames,
        torch.float32, device, generator, None,
    )
    pipe.scheduler.set_begin_index(0)
    num_timesteps = len(timesteps)
    for i, t in enumerate(timesteps):
        model_input = latents.to(dtype)
        timestep = t.expand(latents.shape[0])
        context = {"step_index": i, "sigma": float(pipe.scheduler.sigmas[i]), "num_inference_steps": num_timesteps}
        branches = [("cond", prompt_embeds)] + ([("uncond", negative_embeds)] if negative_embeds is not None else [])
        outputs = {}
        for branch, embedding in branches:
            if cancel is not None and cancel.is_set():
                raise RunCancelled("The run was stopped.")
            before = len(hook.records) if hook is not None else 0
            start = time.perf_counter()
            with transformer.cache_context(branch, **context):
                outputs[branch] = transformer(
                    hidden_states=model_input, timestep=timestep, encoder_hidden_states=embedding,
                    attention_kwargs=None, return_dict=False,
                )[0]
            _sync(device)
            ms = (time.perf_counter() - start) * 1000.0
            if hook is not None and len(hook.records) > before:
                record = hook.records[-1]
            else:
                record = StepRecord(step=i, timestep=float(t), branch=branch, computed=True, reason="EasyCache off")
            record.ms = ms
            record.t = clock()
            yield record
        noise_pred = outputs["cond"]
        if "uncond" in outputs:
            noise_pred = outputs["uncond"] + settings.guidance_scale * (noise_pred - outputs["uncond"])
        latents = pipe.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
    yield latents


def _decode(pipe, latents: torch.Tensor) -> np.ndarray:
    video = pipe.vae.decode(_denormalise(pipe, latents), return_dict=False)[0]
    frames = pipe.video_processor.postprocess_video(video, output_type="np")
    return np.asarray(frames[0], dtype=np.float32)


def _decode_sliced(pipe, latents: torch.Tensor, plan: dict) -> Iterator[np.ndarray]:
    from .decode import iter_sliced_decode

    yield from iter_sliced_decode(pipe.vae, _denormalise(pipe, latents), plan=plan)


def _denormalise(pipe, latents: torch.Tensor) -> torch.Tensor:
    vae = pipe.vae
    latents = latents.to(get_module_execution_device(vae), dtype=vae.dtype)
    z_dim = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(latents.device, latents.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(latents.device, latents.dtype)
    return latents / inv_std + mean


# --- helpers ----------------------------------------------------------------------------------------------
class _Clock:
    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def _stage(name: str, clock: _Clock, stages: dict, sampler: MemorySampler) -> StageStarted:
    start = clock()  # before the stage's first memory reading, so that reading falls inside the stage
    stages[name] = {"_start": start, "resident_bytes": sampler.begin_stage(name)}
    return StageStarted(stage=name, t=start)


def _finish(name: str, clock: _Clock, stages: dict, sampler: MemorySampler) -> StageFinished:
    peak = sampler.end_stage(name)
    now = clock()
    seconds = now - stages[name].pop("_start")
    stages[name].update(seconds=seconds, peak_bytes=peak)
    return StageFinished(stage=name, t=now, seconds=seconds, peak_bytes=peak)


def _emit(sampler: MemorySampler, event: Event) -> Iterator[Event]:
    """``event`` with the memory readings taken so far, merged so that the stream stays in time order."""
    samples = sampler.drain()
    t = getattr(event, "t", None)
    if t is None:
        yield from samples
        yield event
        return
    yield from (s for s in samples if s.t <= t)
    yield event
    yield from (s for s in samples if s.t > t)


def _sync(device) -> None:
    # Kernel launches are asynchronous on a GPU: without a sync the call time would be launch time only.
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _set_flow_shift(pipe, flow_shift: float) -> None:
    config = pipe.scheduler.config
    if "flow_shift" in config and config.flow_shift != flow_shift:
        pipe.scheduler = type(pipe.scheduler).from_config(config, flow_shift=flow_shift)


def _check_prompt_length(pipe, settings) -> None:
    """Refuse prompts the text encoder would silently truncate, naming the limit."""
    for field, text in (("prompt", settings.prompt), ("negative_prompt", settings.negative_prompt)):
        if not text:
            continue
        n_tokens = len(pipe.tokenizer(text, add_special_tokens=True).input_ids)
        if n_tokens > settings.max_sequence_length:
            raise LightcacheError(
                f"{field} is {n_tokens} tokens long; this model's text encoder takes at most "
                f"{settings.max_sequence_length}. Shorten it."
            )


def _latent_shape(pipe, settings) -> tuple[int, int, int, int, int]:
    frames = (settings.frames - 1) // pipe.vae_scale_factor_temporal + 1
    return (1, pipe.transformer.config.in_channels, frames, settings.height // pipe.vae_scale_factor_spatial,
            settings.width // pipe.vae_scale_factor_spatial)


def _check_strategies(pipe, settings, latent_shape) -> dict | None:
    """Refuse memory-strategy settings this model cannot honour before anything runs; the sliced-decode plan."""
    if settings.chunk_ffn is not None:
        check_num_chunks(settings.chunk_ffn, num_tokens(pipe.transformer, latent_shape))
    if settings.sliced_decode:
        from .decode import plan_slices

        return plan_slices(pipe.vae, latent_shape[3], latent_shape[4], num_slices=settings.decode_slices)
    return None


def _strategy_notes(settings, swap=None, slice_plan=None) -> list[str]:
    notes = []
    if not settings.easycache:
        notes.append("EasyCache is off: every step runs the transformer.")
    if swap is not None and swap.note:
        notes.append(swap.note)
    if settings.chunk_ffn is not None:
        notes.append(f"Feature chunking: token-wise layers run over {settings.chunk_ffn} slices of the sequence.")
    if slice_plan is not None:
        notes.append(
            f"Sliced decoding: {len(slice_plan['cuts']) - 1} bands across the frame's {slice_plan['axis']}; "
            "frames are released when the last band is done."
        )
    return notes


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
