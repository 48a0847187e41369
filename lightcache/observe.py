"""Watching a pipeline run: hooks that turn its module calls into stage boundaries and one record per denoiser call.

A run is the pipeline's own ``pipe(...)``, so lightcache learns where the run is from the modules it calls:

* a text encoder's forward starts the ``encode`` stage;
* an image encoder's forward, or ``vae.encode`` (the conditioning image of image-to-video), starts ``encode_image``;
* a denoiser's forward starts ``denoise``, and every call becomes a :class:`~lightcache.events.StepRecord` (step,
  branch, which denoiser, computed or reused and why, wall time, and whether torch.compile compiled during it);
* ``vae.decode`` starts ``decode``, and so does a call of any other decoder the family names (LTX-2's audio VAE
  and vocoder): its ``decode`` method where it has one, else its forward.

A stage ends where the next begins (or when the run ends). The same hooks are where a stop request lands: before
every text-encoder, denoiser and VAE-decoder call (the decoder is checked per frame, and per band when decoding is
sliced) and before each part of the family's other decoders, the observer raises :class:`~lightcache.errors.RunCancelled` once its ``cancel`` event is set, so a
stopped run never finishes its decode.

The observer changes no result: it only reads arguments, times calls and forwards outputs untouched.

Example:
    >>> import torch
    >>> from lightcache.families import adapter_for
    >>> from lightcache.observe import RunObserver
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline(seed=0)
    >>> seen = []
    >>> observer = RunObserver(pipe, on_event=seen.append, adapter=adapter_for(pipe)).attach()
    >>> _ = pipe("a red circle", num_inference_steps=2, height=32, width=32, num_frames=5,
    ...          generator=torch.Generator().manual_seed(0), output_type="np")
    >>> observer.finish(); observer.detach()
    >>> [type(e).__name__ for e in seen if type(e).__name__ != "StepRecord"]
    ['StageStarted', 'StageFinished', 'StageStarted', 'StageFinished', 'StageStarted', 'StageFinished']
    >>> sum(type(e).__name__ == "StepRecord" for e in seen)  # 2 steps x (cond, uncond)
    4
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import StateManager

from .cache_methods import CACHE_METHODS
from .calls import CallLocator, timestep_value
from .errors import RunCancelled
from .events import Event, StageFinished, StageStarted, StepRecord
from .techniques.compile import compile_activity
from .techniques.easycache import EasyCacheState, get_easycache_hook

TRACE_HOOK = "lightcache_trace"
_MISSING = object()


class RunObserver:
    """Hooks on one pipeline's modules that report stages and denoiser calls; :meth:`detach` removes them all.

    Args:
        pipe: the pipeline to watch.
        on_event: receives :class:`StageStarted`, :class:`StageFinished` and :class:`StepRecord` events, on the
            thread that runs the pipeline.
        adapter: the pipeline's family adapter (which modules encode, denoise and decode).
        locator: how denoiser calls are located (default: one over the pipeline's scheduler). Share it with
            EasyCache so both agree on every call.
        cancel: when set, the next watched call raises :class:`RunCancelled`.
        clock: seconds since the run started (default: since the observer was made).
        on_stage: called with the new stage's name before its first call runs (asynchronous swapping moves
            modules there), after the ``StageStarted`` event.
        work: per denoiser name, the :class:`~lightcache.call_work.CallWork` that measures what each of its calls
            ran (none: not measured).
        cache: the run's step cache (:mod:`lightcache.cache_methods`), named in every record.
    """

    def __init__(self, pipe, on_event: Callable[[Event], None] | None = None, *, adapter: Any,
                 locator: CallLocator | None = None, cancel: threading.Event | None = None,
                 clock: Callable[[], float] | None = None, on_stage: Callable[[str], None] | None = None,
                 work: Mapping[str, Any] | None = None, cache: str = "easycache"):
        self.pipe = pipe
        self.work = dict(work or {})
        self.cache = cache
        self.adapter = adapter
        self.locator = locator if locator is not None else CallLocator(scheduler=getattr(pipe, "scheduler", None))
        self.cancel = cancel
        self.on_event = on_event or (lambda event: None)
        self.on_stage = on_stage or (lambda stage: None)
        start = time.perf_counter()
        self.clock = clock or (lambda: time.perf_counter() - start)
        self.stage: str | None = None
        self._stage_start = 0.0
        self._handles: list[Any] = []
        self._wrapped: list[tuple[Any, str, Any]] = []
        self._traced: list[torch.nn.Module] = []

    # --- attaching -------------------------------------------------------------------------------------
    def attach(self) -> "RunObserver":
        """Register every hook; returns self. Attach after EasyCache and before swapping (see accelerate.py)."""
        for module in self.adapter.text_encoders(self.pipe).values():
            self._pre_hook(module, "encode")
        for module in self.adapter.image_encoders(self.pipe).values():
            self._pre_hook(module, "encode_image")
        vae = self.adapter.vae(self.pipe)
        if vae is not None:
            self._wrap_method(vae, "encode", "encode_image")
            self._wrap_method(vae, "decode", "decode")
            # Checked per part of the decoder: the plain decode calls them once per latent frame, sliced decoding
            # once per frame and band, so a stop lands within one frame's work either way.
            self._cancel_hooks(getattr(vae, "decoder", None))
        for module in self.adapter.decoders(self.pipe).values():
            # An audio VAE is called through its decode method (its forward is never run), a vocoder through forward.
            if callable(getattr(module, "decode", None)):
                self._wrap_method(module, "decode", "decode")
            else:
                self._pre_hook(module, "decode")
            self._cancel_hooks(getattr(module, "decoder", None))
        for name, module in self.adapter.denoisers(self.pipe).items():
            registry = HookRegistry.check_if_exists_or_initialize(module)
            if registry.get_hook(TRACE_HOOK) is None:
                registry.register_hook(_TraceHook(self, name), TRACE_HOOK)
                registry.invalidate_child_registries_cache()
                self._traced.append(module)
        return self

    def detach(self) -> None:
        """Remove every hook and wrapper this observer added (safe to call twice)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for obj, name, previous in reversed(self._wrapped):
            if previous is _MISSING:
                obj.__dict__.pop(name, None)
            else:
                obj.__dict__[name] = previous  # e.g. sliced decoding's decode, which has its own owner
        self._wrapped.clear()
        for module in self._traced:
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None and registry.get_hook(TRACE_HOOK) is not None:
                registry.remove_hook(TRACE_HOOK, recurse=False)
                registry.invalidate_child_registries_cache()
        self._traced.clear()

    # --- stages ----------------------------------------------------------------------------------------
    def enter(self, stage: str) -> None:
        """Start ``stage`` unless it is already the current one (finishing the current one)."""
        if stage == self.stage:
            return
        self.finish()
        self.stage = stage
        self._stage_start = self.clock()
        self.on_event(StageStarted(stage=stage, t=self._stage_start))
        self.on_stage(stage)

    def finish(self) -> None:
        """End the current stage, if any."""
        if self.stage is None:
            return
        now = self.clock()
        self.on_event(StageFinished(stage=self.stage, t=now, seconds=now - self._stage_start))
        self.stage = None

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise RunCancelled("The run was stopped.")

    # --- helpers ---------------------------------------------------------------------------------------
    def _pre_hook(self, module: torch.nn.Module, stage: str) -> None:
        def hook(_module, _args):
            self.check_cancel()
            self.enter(stage)

        self._handles.append(module.register_forward_pre_hook(hook))

    def _check_cancel_hook(self, _module, _args) -> None:
        self.check_cancel()

    def _cancel_hooks(self, decoder: Any) -> None:
        """A stop check before each part of ``decoder`` (when it is a module)."""
        if isinstance(decoder, torch.nn.Module):
            for child in decoder.children():
                self._handles.append(child.register_forward_pre_hook(self._check_cancel_hook))

    def _wrap_method(self, obj: Any, name: str, stage: str) -> None:
        # An instance attribute shadows the class's method and is removed again by detach(); whatever replaced the
        # method before (sliced decoding) is what the wrapper calls.
        inner = getattr(obj, name)

        def wrapper(*args, **kwargs):
            self.check_cancel()
            self.enter(stage)
            return inner(*args, **kwargs)

        wrapper.__wrapped__ = inner
        self._wrapped.append((obj, name, obj.__dict__.get(name, _MISSING)))
        obj.__dict__[name] = wrapper


class _TraceHook(ModelHook):
    """Outermost of lightcache's denoiser hooks: locates the call, checks for a stop, times it, reports it."""

    _is_stateful = True

    def __init__(self, observer: RunObserver, name: str):
        super().__init__()
        self.observer = observer
        self.name = name
        self.context_receiver = StateManager(EasyCacheState)  # receives the pipeline's cache context

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    @torch.compiler.disable
    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        observer = self.observer
        observer.check_cancel()
        observer.enter("denoise")
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        site = observer.locator.locate(self.context_receiver._context, timestep)
        easycache = get_easycache_hook(module)
        # Compared by identity: EasyCache starts a new list when a new run begins.
        before = easycache.records[-1] if easycache is not None and easycache.records else None
        compiled_before = compile_activity()
        work = observer.work.get(self.name)
        if work is not None:
            work.start()
        start = time.perf_counter()
        with observer.locator.pin(site):
            output = self.fn_ref.original_forward(*args, **kwargs)
        _sync(module)
        ms = (time.perf_counter() - start) * 1000.0
        measured = work.finish() if work is not None else None
        compiled = compile_activity().since(compiled_before)
        if easycache is not None and easycache.records and easycache.records[-1] is not before:
            record = easycache.records[-1]
        else:
            record = StepRecord(step=site.step, timestep=timestep_value(timestep), branch=site.branch, computed=True,
                                reason=_reason(observer.cache), denoiser=self.name,
                                decides=site.decides)
        record.cache = observer.cache if easycache is None else "easycache"
        if measured is not None:
            # What ran, from the modules themselves; a diffusers cache's call counts as computed only when whole.
            record.ran, record.work_fraction = measured.ran, measured.work_fraction
            record.blocks_run, record.blocks_total = measured.blocks_run, measured.blocks_total
            if easycache is None:
                record.computed = measured.work_fraction >= 1.0
        record.ms = ms
        record.t = observer.clock()
        # From torch's counters, not from the time: a slow call is not necessarily a compiling one.
        record.compiling = compiled.frames > 0
        record.compile_ms = compiled.seconds * 1000.0 if record.compiling else 0.0
        observer.on_event(record)
        return output


def _reason(cache: str) -> str:
    """A record's reason when EasyCache did not decide the call: the diffusers cache that ran, or that none did."""
    method = CACHE_METHODS.get(cache)
    return method.label if method is not None and method.diffusers else "EasyCache off"


def _sync(module: torch.nn.Module) -> None:
    # Kernel launches are asynchronous on a GPU: without a sync the call time would be launch time only. The current
    # device is the one the pipeline runs on; looking for a parameter instead would walk every weight of an
    # offloaded model on every call.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
