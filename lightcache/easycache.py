"""EasyCache: runtime-adaptive reuse of the transformer's transformation vector (arXiv 2507.02860).

The hook wraps the whole transformer forward; one call is one CFG branch of one denoising step. At every
non-forced step the cond branch estimates how far the output would drift if the step reused the last
transformation ``delta = v - x`` and accumulates that estimate; while the accumulated error ``E`` stays under
``tau`` the call returns ``x_t + delta`` instead of running the transformer. The uncond branch of the same step
follows the cond decision with its own cached delta.

Rules (all norms are the mean absolute value over every element):

* the first ``warmup_steps`` steps and the last step always compute, and reset ``E`` to 0;
* ``eps = k * mean|x_t - x_prev| / mean|v_last|``, ``E += eps``; reuse if ``E < tau``, else compute and reset
  ``E = 0``; with no ``k`` yet, compute;
* on a computed cond call, ``k = mean|v_t - v_last| / mean|x_t - x_last|`` over the last *computed* step;
* ``x_prev`` is the cond input of the previous step, computed or not.

State lives on the hook and is reset at the start of every run (step 0 of the cond branch, or an explicit
:meth:`EasyCacheHook.reset_state`), so two generations in one process never share it.

Example:
    >>> import torch
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> from lightcache.easycache import EasyCacheConfig, apply_easycache, remove_easycache
    >>> pipe = build_tiny_pipeline(seed=0)
    >>> hook = apply_easycache(pipe.transformer, EasyCacheConfig(threshold=0.2, warmup_steps=2))
    >>> video = pipe("a red circle moving right", num_inference_steps=8, height=32, width=32, num_frames=9,
    ...              generator=torch.Generator().manual_seed(0), output_type="np").frames
    >>> sum(not r.computed for r in hook.records) > 0
    True
    >>> remove_easycache(pipe.transformer)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from .events import StepRecord

EASYCACHE_HOOK = "lightcache_easycache"

#: Branch names diffusers' pipelines give their calls via ``cache_context``.
COND = "cond"


@dataclass
class EasyCacheConfig:
    """How aggressively EasyCache reuses transformer calls.

    Attributes:
        threshold: ``tau``. A step reuses the cached transformation while the accumulated estimated error stays
            below it. 0 never reuses (output identical to the plain pipeline); 0.05 is the reference setting for
            Wan2.1 (about 2.5x fewer transformer calls at 50 steps); 0.1 gives about 2x and 0.2 about 3x speed-up,
            trading visible detail for speed.
        warmup_steps: ``R``. The first R steps always run in full: early steps set the layout and change fast, so
            caching them costs quality for little speed. The reference uses 10 for Wan2.1 at 50 steps.
        num_inference_steps: only needed for pipelines that do not announce their steps through
            ``cache_context`` (diffusers' Wan pipelines do). Used to force the last step.
        on_record: optional callback receiving every :class:`~lightcache.events.StepRecord` as it is made.
    """

    threshold: float = 0.05
    warmup_steps: int = 10
    num_inference_steps: int | None = None
    on_record: Callable[[StepRecord], None] | None = None

    def __post_init__(self):
        if not isinstance(self.threshold, (int, float)) or math.isnan(self.threshold) or self.threshold < 0:
            raise ValueError(f"EasyCache threshold (tau) must be a number >= 0, got {self.threshold!r}.")
        if self.threshold == math.inf:
            # An infinite tau is a legitimate "reuse everything allowed"; keep it a float.
            self.threshold = math.inf
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"EasyCache warm-up steps must be an integer >= 0, got {self.warmup_steps!r}.")
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps!r}.")


class TensorStore:
    """Where EasyCache keeps its cached tensors between calls: a plain dict, on the device they were made on.

    The default. :class:`lightcache.swap.PinnedTensorStore` is a drop-in replacement that parks them in pinned host
    memory between the calls that use them; the hook's arithmetic does not change with the store.
    """

    def __init__(self):
        self._tensors: dict[str, torch.Tensor] = {}

    def put(self, name: str, tensor: torch.Tensor) -> None:
        self._tensors[name] = tensor

    def get(self, name: str) -> torch.Tensor | None:
        return self._tensors.get(name)

    def discard(self, name: str) -> None:
        self._tensors.pop(name, None)

    def names(self) -> list[str]:
        return list(self._tensors)

    def prefetch(self, names) -> None:
        """A hint that ``names`` are needed soon; nothing to do when they never leave the device."""

    def release(self) -> None:
        """A hint that no cached tensor is needed until the next ``get`` (the transformer is about to run)."""

    def clear(self) -> None:
        self._tensors.clear()


def _stored(name: str, doc: str) -> property:
    def get(state):
        return state.store.get(name)

    def set_(state, value):
        if value is None:
            state.store.discard(name)
        else:
            state.store.put(name, value)

    return property(get, set_, doc=doc)


class _StoredDeltas:
    """``branch -> delta`` backed by the state's tensor store (supports ``in``, ``[]`` and ``[]=``)."""

    def __init__(self, store: TensorStore):
        self._store = store

    def __contains__(self, branch: str) -> bool:
        return f"delta/{branch}" in self._store.names()

    def __getitem__(self, branch: str) -> torch.Tensor:
        tensor = self._store.get(f"delta/{branch}")
        if tensor is None:
            raise KeyError(branch)
        return tensor

    def __setitem__(self, branch: str, tensor: torch.Tensor) -> None:
        self._store.put(f"delta/{branch}", tensor)

    def __len__(self) -> int:
        return sum(name.startswith("delta/") for name in self._store.names())


class EasyCacheState(BaseState):
    """Everything EasyCache remembers within one run. ``reset()`` returns it to the start of a run.

    The cached tensors (``x_prev``, ``x_last``, ``v_last``, ``deltas``) live in ``store`` (a :class:`TensorStore`);
    ``reset()`` empties it but keeps it, so a store swapped in for a run stays in place for the whole run.
    """

    x_prev = _stored("x_prev", "cond input of the previous step (computed or reused)")
    x_last = _stored("x_last", "cond input of the last computed step")
    v_last = _stored("v_last", "cond output of the last computed step")

    def __init__(self, store: TensorStore | None = None):
        self.store = store if store is not None else TensorStore()
        self.reset()

    def reset(self):
        self.step = -1  # index of the step whose cond decision is current
        self.compute_current = True  # the cond decision, followed by the other branches of the same step
        self.error = 0.0  # accumulated estimated error E
        self.k: float | None = None
        self.store.clear()  # x_prev, x_last, v_last and the deltas
        self.deltas = _StoredDeltas(self.store)  # branch -> v - x of its last computed call
        self.internal_calls = 0  # step counter for pipelines without a cache context


class EasyCacheHook(ModelHook):
    """The transformer-level hook. Create it with :func:`apply_easycache`, not directly."""

    _is_stateful = True

    def __init__(self, config: EasyCacheConfig):
        super().__init__()
        self.config = config
        self.state = EasyCacheState()
        # diffusers sets the pipeline's cache context on every StateManager attribute of a stateful hook;
        # this one exists only to receive it (our state is shared across branches, not per context).
        self.context_receiver = StateManager(EasyCacheState)
        self.records: list[StepRecord] = []

    def use_tensor_store(self, store: TensorStore | None) -> None:
        """Keep the cached tensors in ``store`` from now on (None: the default dict store). Resets the state."""
        self.state = EasyCacheState(store)

    # --- diffusers hook API -------------------------------------------------------------------------
    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        # diffusers calls this when a pipeline call ends (maybe_free_model_hooks): drop the cached tensors but
        # keep ``records``, the trace of the run that just finished.
        self.state.reset()
        return module

    @torch.compiler.disable
    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        branch, step, num_steps = self._locate_call()
        state = self.state
        cfg = self.config
        # The tensors this call's decision reads; a store that parks them off the device starts fetching them now.
        state.store.prefetch(("x_prev", "v_last", f"delta/{branch}") if branch == COND else (f"delta/{branch}",))

        if branch == COND:
            if step == 0 or step <= state.step:
                # A new run (or a restarted one): nothing from the previous generation may leak in.
                self.reset_state(module)
                self.records = []
            state.step = step

        start = time.perf_counter()
        eps = None
        if branch != COND:
            if step != state.step:
                raise RuntimeError(
                    f"EasyCache saw a '{branch}' call for step {step} before the cond call of that step; "
                    "the cond branch must be called first."
                )
            compute = state.compute_current or branch not in state.deltas
            reason = "follows cond" if compute == state.compute_current else "no cached delta for branch"
        else:
            x_t = self._latent_part(hidden_states, None)
            compute, reason, eps = self._decide(x_t, step, num_steps)
            state.compute_current = compute

        if compute:
            state.store.release()
            output = self.fn_ref.original_forward(*args, **kwargs)
            v_t = _sample_of(output)
            x_t = self._latent_part(hidden_states, v_t.shape[1])
            if branch == COND:
                self._remember_computed(x_t, v_t)
            state.deltas[branch] = (v_t - x_t).detach()
        else:
            x_t = self._latent_part(hidden_states, state.deltas[branch].shape[1])
            v_t = (x_t.to(state.deltas[branch].dtype) + state.deltas[branch]).to(x_t.dtype)
            output = _wrap_like(v_t, kwargs.get("return_dict", True))
        if branch == COND:
            state.x_prev = x_t.detach()

        ms = (time.perf_counter() - start) * 1000.0
        record = StepRecord(
            step=step,
            timestep=_as_float(timestep),
            branch=branch,
            computed=compute,
            reason=reason,
            eps=eps,
            error=state.error,
            tau=cfg.threshold,
            k=state.k,
            ms=ms,
        )
        self.records.append(record)
        if cfg.on_record is not None:
            cfg.on_record(record)
        return output

    # --- the decision ---------------------------------------------------------------------------------
    def _decide(self, x_t: torch.Tensor, step: int, num_steps: int | None) -> tuple[bool, str, float | None]:
        state, cfg = self.state, self.config
        if step < cfg.warmup_steps:
            state.error = 0.0
            return True, "warm-up", None
        if num_steps is not None and step >= num_steps - 1:
            state.error = 0.0
            return True, "last step", None
        if state.k is None or state.x_prev is None or state.v_last is None:
            state.error = 0.0
            return True, "no k yet", None
        input_change = _mean_abs(x_t - state.x_prev)
        eps = state.k * input_change / max(_mean_abs(state.v_last), 1e-12)
        state.error += eps
        if state.error < cfg.threshold:
            return False, "E < tau", eps
        state.error = 0.0
        return True, "E >= tau", eps

    def _remember_computed(self, x_t: torch.Tensor, v_t: torch.Tensor) -> None:
        state = self.state
        if state.v_last is not None and state.x_last is not None:
            input_change = _mean_abs(x_t - state.x_last)
            if input_change > 0:
                state.k = _mean_abs(v_t - state.v_last) / input_change
        state.v_last = v_t.detach()
        state.x_last = x_t.detach()

    # --- helpers --------------------------------------------------------------------------------------
    def _locate_call(self) -> tuple[str, int, int | None]:
        """Branch name, step index and step count of this call, from the pipeline's cache context if any."""
        context = self.context_receiver._context
        if context is not None and context.step_index is not None:
            return context.name, int(context.step_index), context.num_inference_steps
        # No context: a pipeline that batches CFG into one call or uses embedded guidance. One call is one step.
        step = self.state.internal_calls
        if self.config.num_inference_steps is not None and step >= self.config.num_inference_steps:
            step = 0
        self.state.internal_calls = step + 1
        return COND, step, self.config.num_inference_steps

    @staticmethod
    def _latent_part(hidden_states: torch.Tensor, channels: int | None) -> torch.Tensor:
        # Image-to-video pipelines concatenate condition channels after the noisy latent; only the noisy
        # latent is the "x_t" the transformation vector is defined against.
        if channels is None or hidden_states.shape[1] == channels:
            return hidden_states
        return hidden_states[:, :channels]


def apply_easycache(transformer: torch.nn.Module, config: EasyCacheConfig | None = None) -> EasyCacheHook:
    """Attach EasyCache to a diffusers transformer and return the hook (its ``records`` hold the trace).

    Applying twice raises; call :func:`remove_easycache` first. Composes with diffusers' own hooks registered
    through the same :class:`~diffusers.hooks.HookRegistry` (group offloading, layerwise casting).

    Example:
        >>> from lightcache.tiny import build_tiny_pipeline
        >>> pipe = build_tiny_pipeline(seed=0)
        >>> hook = apply_easycache(pipe.transformer, EasyCacheConfig(threshold=0.05))
        >>> remove_easycache(pipe.transformer)
    """
    config = config if config is not None else EasyCacheConfig()
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(EASYCACHE_HOOK) is not None:
        raise ValueError("EasyCache is already applied to this transformer; call remove_easycache() first.")
    if getattr(transformer, "_cache_config", None) is not None:
        raise ValueError(
            f"The transformer already has diffusers' {type(transformer._cache_config).__name__} enabled; "
            "disable it (transformer.disable_cache()) before applying EasyCache."
        )
    hook = EasyCacheHook(config)
    registry.register_hook(hook, EASYCACHE_HOOK)
    registry.invalidate_child_registries_cache()
    return hook


def remove_easycache(transformer: torch.nn.Module) -> None:
    """Detach EasyCache and drop its cached tensors; a no-op when it is not applied."""
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is None:
        return
    hook = registry.get_hook(EASYCACHE_HOOK)
    if hook is None:
        return
    hook.reset_state(transformer)
    registry.remove_hook(EASYCACHE_HOOK, recurse=False)
    registry.invalidate_child_registries_cache()


def get_easycache_hook(transformer: torch.nn.Module) -> EasyCacheHook | None:
    """The EasyCache hook on ``transformer``, or None."""
    registry = getattr(transformer, "_diffusers_hook", None)
    return None if registry is None else registry.get_hook(EASYCACHE_HOOK)


def _mean_abs(t: torch.Tensor) -> float:
    return t.float().abs().mean().item()


def _sample_of(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output.sample


def _wrap_like(sample: torch.Tensor, return_dict: bool) -> Any:
    if return_dict:
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=sample)
    return (sample,)


def _as_float(timestep: Any) -> float:
    if timestep is None:
        return float("nan")
    if isinstance(timestep, torch.Tensor):
        return float(timestep.flatten()[0].item())
    return float(timestep)
