"""Attach the chosen accelerations to a diffusers pipeline, and remove them: the one call library users make.

The pipeline stays the user's own: after :func:`apply_lightcache` a run is ``pipe(...)`` exactly as before, and
:meth:`Acceleration.remove` (or leaving the ``with`` block) puts every module back as it was. What is attached,
innermost first, on each denoiser the pipeline's family adapter names (both experts of Wan2.2 A14B):

1. feature chunking (it replaces the innermost forward of the model and its blocks);
2. torch.compile of the repeated blocks (a hook on each block that calls the compiled forward beneath it, so the
   graph holds the block's arithmetic, chunked or not, and nothing registered later; see
   :mod:`lightcache.techniques.compile`);
3. EasyCache (one shared state over all denoisers);
4. the run observer's trace hook (stages, one record per denoiser call, stop requests);
5. asynchronous swapping (diffusers' group offloading sits outermost: its stream prefetching removes one of its
   own hooks after the first forward, which would unlink any hook registered above it; outside the compiled
   graphs it moves the weights in plain Python, and the graphs read them wherever they are).

Sliced decoding replaces ``vae.decode`` for the length of the acceleration with an exact band-by-band decode that
returns the video on the host, so the pipeline's own postprocessing runs unchanged (attached before the observer,
which wraps ``vae.decode`` in turn, and removed after it).

Each technique receives the family adapter (or what it returns: the denoisers, their chunked forwards, the VAE's band
decoder); none of them looks an adapter up or imports a family.

Example:
    >>> import torch
    >>> from lightcache.accelerate import AccelerationConfig, apply_lightcache
    >>> from lightcache.techniques.easycache import EasyCacheConfig
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline(seed=0)
    >>> with apply_lightcache(pipe, AccelerationConfig(easycache=EasyCacheConfig(threshold=0.2, warmup_steps=2),
    ...                                                chunk_ffn=2, sliced_decode=True)) as acc:
    ...     video = pipe("a red circle", num_inference_steps=8, height=32, width=32, num_frames=5,
    ...                  generator=torch.Generator().manual_seed(0), output_type="np").frames
    >>> video.shape, sum(not r.computed for r in acc.records) > 0
    ((1, 5, 32, 32, 3), True)
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .cache_methods import attach_diffusers_cache, detach_diffusers_cache, get_cache_method, unsupported_reason
from .call_work import CallWork
from .calls import CallLocator
from .errors import LightcacheError
from .events import Event, StepRecord
from .families import FamilyAdapter, adapter_for
from .observe import RunObserver
from .parallel import context_parallel_of, unsupported_with_context_parallel
from .techniques.chunk import apply_feature_chunking, remove_feature_chunking
from .techniques.compile import CUDA_GRAPH_MODES, CompileConfig, CompiledBlocks, apply_compile, remove_compile
from .techniques.decode import apply_sliced_decode, remove_sliced_decode
from .techniques.easycache import EasyCacheConfig, EasyCacheHook, apply_easycache, remove_easycache
from .techniques.swap import AsyncSwap, AsyncSwapConfig, apply_async_swap, remove_async_swap

_ATTRIBUTE = "_lightcache_acceleration"


@dataclass
class AccelerationConfig:
    """Which accelerations to attach. Each is off unless asked for, and each is measurable on its own.

    Attributes:
        easycache: EasyCache's settings, or None for every step in full.
        chunk_ffn: feature chunking's number of token slices, or None.
        async_swap: True (or an :class:`~lightcache.techniques.swap.AsyncSwapConfig`) to swap idle modules and cache
            tensors to pinned host memory; a no-op, said in the summary, without a CUDA device.
        sliced_decode: decode in bands (exact) instead of the VAE's whole-frame decode.
        decode_slices: bands for sliced decoding (None: the decoder's default).
        device: where swapping moves things to (default: the pipeline's execution device).
        compile: True (or a :class:`~lightcache.techniques.compile.CompileConfig`) to torch.compile every denoiser's
            repeated blocks. The first calls of a run at a new size compile (tens of seconds); the trace marks them.
        cache: the step cache (see :mod:`lightcache.cache_methods`): ``easycache`` (the default; it runs when
            ``easycache`` holds its settings), or one of diffusers' caches ``fbc``, ``magcache``, ``taylorseer``,
            ``seacache``, ``pab``, or ``none``.
        cache_setting: the main setting of a diffusers cache (FirstBlockCache's threshold, TaylorSeer's interval ...;
            None: its default). EasyCache's tau is ``easycache.threshold``.
        magcache_ratios: MagCache's calibration, one ratio per step
            (:func:`lightcache.cache_methods.calibrate_magcache`; the runner calibrates and keeps them itself).
    """

    easycache: EasyCacheConfig | None = None
    chunk_ffn: int | None = None
    async_swap: bool | AsyncSwapConfig = False
    sliced_decode: bool = False
    decode_slices: int | None = None
    device: str | torch.device | None = None
    compile: bool | CompileConfig = False
    cache: str = "easycache"
    cache_setting: float | None = None
    magcache_ratios: Sequence[float] | None = None

    def __post_init__(self):
        method = get_cache_method(self.cache)
        if self.easycache is not None and self.cache != "easycache":
            raise LightcacheError(f"easycache settings were given with cache='{self.cache}'; give one step cache.")
        if self.cache_setting is not None:
            if not method.diffusers:
                raise LightcacheError(f"cache_setting is the main setting of diffusers' caches; cache='{self.cache}' "
                                      "has none (EasyCache's tau is easycache.threshold).")
            self.cache_setting = method.check(self.cache_setting)
        if self.magcache_ratios is not None and self.cache != "magcache":
            raise LightcacheError("magcache_ratios are MagCache's calibration; they need cache='magcache'.")
        if self.decode_slices is not None and not self.sliced_decode:
            raise LightcacheError("decode_slices is the band count of sliced decoding; turn sliced_decode on too.")
        if not isinstance(self.compile, (bool, CompileConfig)):
            raise LightcacheError(f"compile must be True, False or a CompileConfig, got {self.compile!r}.")
        if self.async_swap and self.compile_config is not None and self.compile_config.mode in CUDA_GRAPH_MODES:
            raise LightcacheError(
                f"compile mode '{self.compile_config.mode}' records CUDA graphs, which replay fixed weight addresses; "
                "asynchronous swapping moves the weights on every call. Use mode None or "
                "'max-autotune-no-cudagraphs' with swapping."
            )

    @property
    def step_cache(self) -> str:
        """The step cache that runs: ``none`` when EasyCache is chosen without its settings."""
        return "none" if self.cache == "easycache" and self.easycache is None else self.cache

    @property
    def compile_config(self) -> CompileConfig | None:
        """The compile settings in force, or None when compile is off."""
        if isinstance(self.compile, CompileConfig):
            return self.compile
        return CompileConfig() if self.compile else None


class Acceleration:
    """The accelerations attached to one pipeline. Made by :func:`apply_lightcache`; :meth:`remove` undoes them."""

    def __init__(self, pipe, adapter: FamilyAdapter, config: AccelerationConfig, observer: RunObserver):
        self.pipe = pipe
        self.adapter = adapter
        self.config = config
        self.observer = observer
        self.easycache: EasyCacheHook | None = None
        self.swap: AsyncSwap | None = None
        self.chunked: list[torch.nn.Module] = []
        self.compiled: CompiledBlocks | None = None
        self.sliced_vae = None
        self.diffusers_cache: str | None = None  # the diffusers cache enabled on the denoiser, by name
        self.work: dict[str, CallWork] = {}
        self._last_records: list[StepRecord] = []

    @property
    def records(self) -> list[StepRecord]:
        """EasyCache's decisions of the last run (empty when EasyCache is off); kept after :meth:`remove`."""
        return list(self.easycache.records) if self.easycache is not None else list(self._last_records)

    def remove(self) -> None:
        """Detach everything, in the reverse order of attaching; safe to call twice."""
        try:
            if self.swap is not None:
                remove_async_swap(self.pipe)
                self.swap = None
            self.observer.detach()
            for work in self.work.values():
                work.detach()
            self.work = {}
            if self.diffusers_cache is not None:
                for module in self.adapter.denoisers(self.pipe).values():
                    detach_diffusers_cache(module, self.diffusers_cache)
                self.diffusers_cache = None
            if self.sliced_vae is not None:
                remove_sliced_decode(self.sliced_vae)
                self.sliced_vae = None
            if self.easycache is not None:
                self._last_records = list(self.easycache.records)
            remove_easycache(*self.adapter.denoisers(self.pipe).values())
            self.easycache = None
            remove_compile(*self.adapter.denoisers(self.pipe).values())  # a no-op where nothing is compiled
            self.compiled = None
            for module in self.chunked:
                remove_feature_chunking(module)
            self.chunked = []
        finally:
            if getattr(self.pipe, _ATTRIBUTE, None) is self:
                setattr(self.pipe, _ATTRIBUTE, None)

    def __enter__(self) -> "Acceleration":
        return self

    def __exit__(self, *exc) -> None:
        self.observer.finish()
        self.remove()


def apply_lightcache(
    pipe,
    config: AccelerationConfig | None = None,
    *,
    on_event: Callable[[Event], None] | None = None,
    cancel: threading.Event | None = None,
    clock: Callable[[], float] | None = None,
    on_stage: Callable[[str], None] | None = None,
    adapter: FamilyAdapter | None = None,
) -> Acceleration:
    """Attach ``config``'s accelerations to ``pipe`` and start observing it; returns the :class:`Acceleration`.

    ``on_event`` receives the stage boundaries and one :class:`~lightcache.events.StepRecord` per denoiser call
    while ``pipe(...)`` runs; ``cancel`` stops the run at the next watched call. Raises
    :class:`~lightcache.errors.LightcacheError` (attaching nothing) for a pipeline no family covers, or a strategy
    its family cannot run.
    """
    config = config if config is not None else AccelerationConfig()
    adapter = adapter if adapter is not None else adapter_for(pipe)
    if getattr(pipe, _ATTRIBUTE, None) is not None:
        raise LightcacheError("lightcache is already applied to this pipeline; remove it first.")
    config = _agreed_across_processes(pipe, config)
    for wanted, why in ((config.chunk_ffn is not None, adapter.chunking_unsupported),
                        (config.sliced_decode, adapter.sliced_decode_unsupported)):
        reason = why(pipe) if wanted else None
        if reason:
            raise LightcacheError(reason)

    adapter.check_denoisers(pipe)
    denoisers = adapter.denoisers(pipe)
    reason = cache_unsupported(config, denoisers)
    if reason:
        raise LightcacheError(reason)

    locator = CallLocator(scheduler=lambda: getattr(pipe, "scheduler", None))
    swap_holder: list[AsyncSwap] = []

    def stage_changed(stage: str) -> None:
        for swap in swap_holder:
            swap.enter_stage(stage)
        if on_stage is not None:
            on_stage(stage)

    # What each call ran is read from the blocks' layers; compiled blocks hide them, so compiled runs are not measured.
    work = {} if config.compile_config is not None else {
        name: CallWork(module) for name, module in denoisers.items() if _has_blocks(module)}
    observer = RunObserver(pipe, on_event=on_event, adapter=adapter, locator=locator, cancel=cancel, clock=clock,
                           on_stage=stage_changed, work=work, cache=config.step_cache)
    acc = Acceleration(pipe, adapter, config, observer)
    setattr(pipe, _ATTRIBUTE, acc)
    try:
        if config.chunk_ffn is not None:
            for module in denoisers.values():
                apply_feature_chunking(module, config.chunk_ffn, adapter)
                acc.chunked.append(module)
        if config.compile_config is not None:
            device = config.device if config.device is not None else pipe._execution_device
            acc.compiled = apply_compile(denoisers, config.compile_config, device=device,
                                         blocks_of=adapter.repeated_blocks)
        if config.easycache is not None:
            acc.easycache = apply_easycache(denoisers, config.easycache, locator=locator,
                                            channel_axis=adapter.latent_channel_axis,
                                            latent_ndim=len(adapter.latent_layout),
                                            extra_inputs=adapter.extra_outputs,
                                            latent_channels=adapter.latent_channels)
        method = get_cache_method(config.cache)
        if method.diffusers:
            params = method.params(config.cache_setting)
            for module in denoisers.values():
                acc.diffusers_cache = config.cache
                attach_diffusers_cache(module, config.cache, params,
                                       list(config.magcache_ratios) if config.magcache_ratios is not None else None)
        for work_meter in work.values():
            acc.work = work
            work_meter.attach()
        if config.sliced_decode:
            vae = adapter.vae(pipe)
            apply_sliced_decode(vae, adapter, config.decode_slices)
            acc.sliced_vae = vae
        observer.attach()
        if config.async_swap:
            swap_config = config.async_swap if isinstance(config.async_swap, AsyncSwapConfig) else None
            acc.swap = apply_async_swap(pipe, config.device, swap_config, adapter=adapter)
            swap_holder.append(acc.swap)
    except BaseException:
        acc.remove()
        raise
    return acc


def cache_unsupported(config: AccelerationConfig, denoisers: dict[str, torch.nn.Module]) -> str | None:
    """Why ``config``'s step cache cannot run on these denoisers with the other accelerations asked for, or None."""
    method = get_cache_method(config.cache)
    if not method.diffusers:
        return None
    reason = unsupported_reason(config.cache, denoisers)
    if reason:
        return reason
    if config.compile_config is not None:
        return (f"{method.label} with compile: diffusers' cache hooks sit on the blocks that compile replaces, and the "
                "trace could not see which of their layers ran; use EasyCache with compile, or run without compile.")
    if config.chunk_ffn is not None and config.cache in ("taylorseer", "pab"):
        return (f"{method.label} with feature chunking: {method.label} caches the output of layers that feature "
                "chunking runs slice by slice (or not as a module at all), so it would hold one slice; use "
                "FirstBlockCache, MagCache or SeaCache with chunking.")
    if config.cache == "magcache" and config.magcache_ratios is None:
        return ("MagCache needs its calibration: pass magcache_ratios "
                "(lightcache.cache_methods.calibrate_magcache), or run through lightcache.run_generation, which "
                "calibrates once per model and settings.")
    return None


def _has_blocks(module: torch.nn.Module) -> bool:
    """A block list the work meter knows how to read (Wan's); another family's calls are traced unmeasured."""
    blocks = getattr(module, "blocks", None)
    return (isinstance(blocks, torch.nn.ModuleList) and len(blocks) > 0 and hasattr(module, "patch_embedding")
            and all(hasattr(blocks[0], name) for name in ("norm1", "attn1", "attn2", "ffn")))


def remove_lightcache(pipe) -> None:
    """Remove what :func:`apply_lightcache` attached to ``pipe``; a no-op when nothing is."""
    acc = getattr(pipe, _ATTRIBUTE, None)
    if acc is not None:
        acc.remove()


def get_acceleration(pipe) -> Acceleration | None:
    """The acceleration attached to ``pipe``, or None."""
    return getattr(pipe, _ATTRIBUTE, None)


def _agreed_across_processes(pipe, config: AccelerationConfig) -> AccelerationConfig:
    """With context parallelism on ``pipe``: refuse what does not combine with it, and have EasyCache take the
    decision every process agrees on (a process that reused alone would leave the others in a collective)."""
    parallel = context_parallel_of(pipe)
    if parallel is None:
        return config
    reason = unsupported_with_context_parallel(chunk_ffn=config.chunk_ffn, async_swap=config.async_swap,
                                               compile=config.compile)
    if reason:
        raise LightcacheError(reason)
    if config.easycache is None or config.easycache.agree is not None:
        return config
    return dataclasses.replace(config, easycache=dataclasses.replace(config.easycache, agree=parallel.agree_compute))

