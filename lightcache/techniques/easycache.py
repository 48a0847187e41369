"""EasyCache: runtime-adaptive reuse of the denoiser's transformation vector (arXiv 2507.02860).

The hook wraps the whole denoiser forward; one call is one guidance branch of one denoising step. At every
non-forced step the deciding branch (``cond``, or the only call of a step) estimates how far the output would drift
if the step reused the last transformation ``delta = v - x`` and accumulates that estimate; while the accumulated
error ``E`` stays under ``tau`` the call returns ``x_t + delta`` instead of running the model. The other branches
of the same step (``uncond``, ``uncond_stg``...) follow that decision, each with its own cached delta.

Rules (all norms are the mean absolute value over every element):

* the first ``warmup_steps`` steps and the last step always compute, and reset ``E`` to 0 (the last step unless
  ``force_last_step`` is off, as in the reference's Wan2.2 TI2V-5B script);
* ``eps = k * mean|x_t - x_prev| / mean|v_last|``, ``E += eps``; reuse if ``E < tau``, else compute and reset
  ``E = 0``; with no ``k`` yet, compute;
* on a computed deciding call, ``k = mean|v_t - v_last| / mean|x_t - x_last|`` over the last *computed* step;
* ``x_prev`` is the deciding input of the previous step, computed or not;
* ``x_t`` is the noisy latent only: image-to-video denoisers get condition channels concatenated after it (Wan2.1
  I2V: 16 of 36 channels), and the transformation is defined against the latent the model denoises.

**Two experts (Wan2.2 A14B).** The pipeline hands the high-noise steps to ``transformer`` and the rest to
``transformer_2``. EasyCache treats them as one denoiser, as the reference implementation does for T2V-A14B and
I2V-A14B (``EasyCache4Wan2.2``: one set of globals patched into both experts): a single state with one step count over the
whole run, so the warm-up is the run's first ``R`` steps and the forced last step is the run's last; ``k``, ``E``,
``x_prev`` and the cached deltas carry across the switch, and the switch step itself is decided like any other.
Pass both experts to :func:`apply_easycache` (``{"transformer": ..., "transformer_2": ...}``) to get this.

**Order 1: extrapolating instead of repeating (beyond the paper).** With ``order=1`` a reused call returns
``x_t + delta_hat``, where ``delta_hat`` extends the branch's last two computed transformations along a straight
line in the step index: ``delta_hat = delta_last + (delta_last - delta_before) * f`` with ``f = (i - i_last) /
(i_last - i_before)``, capped at 1 (the line is followed at most as far as its two points lie apart).
The error estimate follows what is returned: its rate ``k`` is then how far the last computed transformation lay
from the line through the two before it, per unit of input change (``k = mean|delta_t - delta_hat_t| /
mean|x_t - x_last|``), so ``eps`` and ``E`` estimate the extrapolation's own error, and tau keeps its meaning. Until
a branch has two computed transformations it reuses as order 0 does; until ``k`` of order 1 exists, the step
computes. ``order=0`` (the default) is the reference, rule for rule.

State lives in one :class:`EasyCacheState` per application and is reset at the start of every run (the deciding
call of step 0, a step index that goes back, or diffusers' ``reset_state`` when a pipeline call ends), so two
generations in one process never share it.

Example:
    >>> import torch
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> from lightcache.techniques.easycache import EasyCacheConfig, apply_easycache, remove_easycache
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
from typing import Any, Callable, Mapping, Sequence

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from ..calls import CallLocator, CallSite, timestep_value
from ..errors import LightcacheError
from ..events import StepRecord

EASYCACHE_HOOK = "lightcache_easycache"

#: The branch name diffusers' pipelines give the conditional call via ``cache_context``.
COND = "cond"

#: EasyCache's orders: 0 reuses the last transformation (the reference), 1 extrapolates the last two.
ORDERS = (0, 1)

#: Appended to the reason of a reused call whose output is an extrapolation (order 1), so the trace says which.
EXTRAPOLATED = "extrapolated"


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
        num_inference_steps: only needed for pipelines that announce their step count nowhere (diffusers' Wan
            pipelines do, through ``cache_context``; the scheduler does for the others when a
            :class:`~lightcache.calls.CallLocator` is given one). Used to force the last step.
        on_record: optional callback receiving every :class:`~lightcache.events.StepRecord` as it is made.
        agree: optional callback for runs split over several processes (context parallelism): called on every
            call with this process's decision (True: compute) and returning the one every process takes, so that
            no process skips the transformer's collectives while another runs them
            (:meth:`lightcache.parallel.ContextParallel.agree_compute`). None: each process decides alone.
        order: 0 reuses the last transformation as it is (the reference, the default); 1 reuses a first-order
            extrapolation of the last two computed transformations, with an error estimate for that extrapolation
            (see the module docstring). Order 1 goes beyond the paper.
        force_last_step: compute the run's last step whatever ``E`` says (the reference does for Wan2.1 and for
            Wan2.2 A14B; its Wan2.2 TI2V-5B script never does, so that preset turns it off).
    """

    threshold: float = 0.05
    warmup_steps: int = 10
    num_inference_steps: int | None = None
    on_record: Callable[[StepRecord], None] | None = None
    agree: Callable[[bool], bool] | None = None
    order: int = 0
    force_last_step: bool = True

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
        if isinstance(self.order, bool) or self.order not in ORDERS:
            raise ValueError(f"EasyCache order must be 0 (reuse, the reference) or 1 (extrapolate), got {self.order!r}.")
        if not isinstance(self.force_last_step, bool):
            raise ValueError(f"force_last_step must be True or False, got {self.force_last_step!r}.")


class TensorStore:
    """Where EasyCache keeps its cached tensors between calls: a plain dict, on the device they were made on.

    The default. :class:`lightcache.techniques.swap.PinnedTensorStore` is a drop-in replacement that parks them in
    pinned host memory between the calls that use them; the hook's arithmetic does not change with the store.
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

    x_prev = _stored("x_prev", "deciding input of the previous step (computed or reused)")
    x_last = _stored("x_last", "deciding input of the last computed step")
    v_last = _stored("v_last", "deciding output of the last computed step")

    def __init__(self, store: TensorStore | None = None):
        self.store = store if store is not None else TensorStore()
        self.reset()

    def reset(self):
        self.step = -1  # index of the step whose deciding call is current
        self.compute_current = True  # the step's decision, followed by its other branches
        self.error = 0.0  # accumulated estimated error E
        self.k: float | None = None
        self.store.clear()  # x_prev, x_last, v_last and the deltas
        self.deltas = _StoredDeltas(self.store)  # "branch[/output]" -> v - x of its last computed call
        # Order 1 only: the step of each branch's last computed delta, and of the one before it (kept in the store
        # as "before/<branch[/output]>").
        self.delta_steps: dict[str, int] = {}
        self.before_steps: dict[str, int] = {}


class _SharedRun:
    """What the hooks on every denoiser of one pipeline share: config, state, locator and the trace."""

    def __init__(self, config: EasyCacheConfig, locator: CallLocator):
        self.config = config
        self.locator = locator
        self.state = EasyCacheState()
        self.records: list[StepRecord] = []


class EasyCacheHook(ModelHook):
    """The hook on one denoiser. Create it with :func:`apply_easycache`, not directly.

    ``records``, ``state`` and ``config`` are shared by the hooks of all denoisers passed to one
    :func:`apply_easycache` call.
    """

    _is_stateful = True

    def __init__(self, run: _SharedRun, name: str, latent_channels: int | None, channel_axis: int = 1,
                 extra_inputs: Mapping[int, str] | None = None, latent_ndim: int | None = None):
        super().__init__()
        self._run = run
        self.name = name
        self.latent_channels = latent_channels
        self.channel_axis = channel_axis
        self.latent_ndim = latent_ndim
        self.extra_inputs = dict(extra_inputs or {})
        # diffusers sets the pipeline's cache context on every StateManager attribute of a stateful hook; this one
        # exists only to receive it (our state is shared across branches and experts, not kept per context).
        self.context_receiver = StateManager(EasyCacheState)

    @property
    def config(self) -> EasyCacheConfig:
        return self._run.config

    @property
    def state(self) -> EasyCacheState:
        return self._run.state

    @property
    def records(self) -> list[StepRecord]:
        return self._run.records

    @records.setter
    def records(self, value: list[StepRecord]) -> None:
        self._run.records = value

    def use_tensor_store(self, store: TensorStore | None) -> None:
        """Keep the cached tensors in ``store`` from now on (None: the default dict store). Resets the state."""
        self._run.state = EasyCacheState(store)

    # --- diffusers hook API -------------------------------------------------------------------------
    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        # diffusers calls this when a pipeline call ends (maybe_free_model_hooks): drop the cached tensors but
        # keep ``records``, the trace of the run that just finished.
        self._run.state.reset()
        self._run.locator.reset()
        return module

    @torch.compiler.disable
    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        # torch.compile must not trace the hook (disabling is recursive). The body is a plain method so that tools
        # instrumenting undecorated methods only (mutmut, see docs/testing.md) reach it.
        return self._forward(module, *args, **kwargs)

    def _forward(self, module: torch.nn.Module, *args, **kwargs):
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        site = self._run.locator.locate(self.context_receiver._context, timestep)
        branch, step = site.branch, site.step
        state, cfg = self.state, self.config
        # The tensors this call's decision reads; a store that parks them off the device starts fetching them now.
        wanted = (f"delta/{branch}", f"before/{branch}") if cfg.order == 1 else (f"delta/{branch}",)
        state.store.prefetch(("x_prev", "v_last", *wanted) if site.decides else wanted)

        if site.decides:
            if step == 0 or step <= state.step:
                # A new run (or a restarted one): nothing from the previous generation may leak in.
                state.reset()
                self._run.records = []
            state.step = step

        start = time.perf_counter()
        eps = None
        x_t = self._latent_part(hidden_states)
        if not site.decides:
            if step != state.step:
                raise RuntimeError(
                    f"EasyCache saw a '{branch}' call for step {step} before the deciding call of that step; "
                    "the conditional branch must be called first."
                )
            compute = state.compute_current or branch not in state.deltas
            reason = "follows cond" if compute == state.compute_current else "no cached delta for branch"
        else:
            compute, reason, eps = self._decide(x_t, site)
            state.compute_current = compute
        if cfg.agree is not None:
            compute, reason = self._agree(compute, reason, site, branch)

        if compute:
            state.store.release()
            output = self.fn_ref.original_forward(*args, **kwargs)
            outputs = _tensors_of(output)
            v_t = outputs[0]
            delta = (v_t - x_t).detach()
            if site.decides:
                self._remember_computed(x_t, v_t, delta, branch, step)
            self._keep_delta(branch, delta, step)
            for index, tensor in enumerate(outputs[1:], start=1):
                self._keep_delta(f"{branch}/{index}", self._extra_delta(index, tensor, args, kwargs), step)
        else:
            extrapolated = cfg.order == 1 and branch in state.before_steps
            outputs = [_apply_delta(x_t, self._reused_delta(branch, step))]
            index = 1
            while f"{branch}/{index}" in state.deltas:
                outputs.append(self._extra_reused(index, self._reused_delta(f"{branch}/{index}", step), args, kwargs))
                index += 1
            output = _wrap_like(outputs, kwargs.get("return_dict", True))
            if extrapolated:
                reason = f"{reason}, {EXTRAPOLATED}"
        if site.decides:
            state.x_prev = _kept(x_t)

        record = StepRecord(
            step=step,
            timestep=timestep_value(timestep),
            branch=branch,
            computed=compute,
            reason=reason,
            eps=eps,
            error=state.error,
            tau=cfg.threshold,
            k=state.k,
            ms=(time.perf_counter() - start) * 1000.0,
            denoiser=self.name,
            decides=site.decides,
        )
        self._run.records.append(record)
        if cfg.on_record is not None:
            cfg.on_record(record)
        return output

    # --- the decision ---------------------------------------------------------------------------------
    def _decide(self, x_t: torch.Tensor, site: CallSite) -> tuple[bool, str, float | None]:
        state, cfg = self.state, self.config
        num_steps = site.num_steps or cfg.num_inference_steps
        if site.step < cfg.warmup_steps:
            state.error = 0.0
            return True, "warm-up", None
        if cfg.force_last_step and num_steps is not None and site.step >= num_steps - 1:
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

    def _agree(self, compute: bool, reason: str, site: CallSite, branch: str) -> tuple[bool, str]:
        """The decision every process takes (``config.agree``); where it differs from this process's own, the
        state follows it as if this process had decided so."""
        agreed = bool(self.config.agree(compute))
        if agreed == compute:
            return compute, reason
        if not agreed and branch not in self.state.deltas:
            raise RuntimeError(f"EasyCache was told to reuse step {site.step} ('{branch}') but this process has no "
                               "cached transformation for it; the processes' runs have diverged.")
        if site.decides:
            self.state.compute_current = agreed
            if agreed:
                self.state.error = 0.0  # a computed step resets E, whoever decided it
        return agreed, f"{'computed' if agreed else 'reused'} as agreed across processes (here: {reason})"

    def _remember_computed(self, x_t: torch.Tensor, v_t: torch.Tensor, delta: torch.Tensor, branch: str,
                           step: int) -> None:
        state = self.state
        if state.v_last is not None and state.x_last is not None:
            input_change = _mean_abs(x_t - state.x_last)
            if input_change > 0:
                if self.config.order == 0:
                    state.k = _mean_abs(v_t - state.v_last) / input_change
                elif branch in state.before_steps:
                    # The rate of the error of what order 1 would have returned here: the computed transformation
                    # against the line through the two before it.
                    state.k = _mean_abs(delta - self._extrapolated(branch, step)) / input_change
        state.v_last = v_t.detach()
        state.x_last = _kept(x_t)

    # --- the cached transformations ---------------------------------------------------------------------
    def _keep_delta(self, key: str, delta: torch.Tensor, step: int) -> None:
        """Cache ``key``'s newly computed transformation; order 1 also keeps the one it replaces."""
        state = self.state
        if self.config.order == 1 and key in state.deltas and state.delta_steps.get(key, step) < step:
            state.store.put(f"before/{key}", state.deltas[key])
            state.before_steps[key] = state.delta_steps[key]
        state.deltas[key] = delta
        state.delta_steps[key] = step

    def _reused_delta(self, key: str, step: int) -> torch.Tensor:
        """What a reused call adds to its input: the last transformation (order 0), or its extrapolation (order 1)
        once two computed ones exist."""
        if self.config.order == 1 and key in self.state.before_steps:
            return self._extrapolated(key, step)
        return self.state.deltas[key]

    def _extrapolated(self, key: str, step: int) -> torch.Tensor:
        """The line through ``key``'s last two computed transformations, evaluated at ``step``."""
        state = self.state
        last, before = state.deltas[key], state.store.get(f"before/{key}")
        i_last, i_before = state.delta_steps[key], state.before_steps[key]
        # At most one gap ahead: a line through two points strays once it is followed further than they lie
        # apart (on the tiny model, unbounded extrapolation fell to 17 dB at tau 0.4 where this keeps 25 dB).
        factor = min((step - i_last) / (i_last - i_before), 1.0)
        return last + (last - before) * factor

    # --- helpers --------------------------------------------------------------------------------------
    def _latent_part(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # Image-to-video denoisers get condition channels concatenated after the noisy latent; only the noisy
        # latent is the "x_t" the transformation vector is defined against.
        n = self.latent_channels
        axis = self.channel_axis
        wrong_rank = self.latent_ndim is not None and hidden_states.ndim != self.latent_ndim
        if wrong_rank or (n is not None and (hidden_states.ndim <= (axis if axis >= 0 else -axis - 1)
                                             or hidden_states.shape[axis] < n)):
            # The family adapter's latent layout does not fit this model: say so, instead of torch's error from deep
            # inside narrow(), or a wrong slice that would decide on the wrong tensor.
            expected = f"{self.latent_ndim} dimensions with " if self.latent_ndim is not None else ""
            raise LightcacheError(
                f"EasyCache: the {self.name}'s latent input has shape {tuple(hidden_states.shape)}, not "
                f"{expected}{n} latent channels on axis {axis} as its family adapter declares. The adapter's "
                "latent layout does not fit this model."
            )
        if n is None or hidden_states.shape[axis] == n:
            return hidden_states
        return hidden_states.narrow(axis, 0, n)

    def _extra_input(self, index: int, args, kwargs) -> torch.Tensor | None:
        name = self.extra_inputs.get(index)
        value = kwargs.get(name) if name is not None else None
        return value if isinstance(value, torch.Tensor) else None

    def _extra_delta(self, index: int, tensor: torch.Tensor, args, kwargs) -> torch.Tensor:
        # A second output (LTX-2's audio) has its own transformation when its input is known; else it is kept as
        # it was, which is what reusing means for an output that has no input to move with.
        source = self._extra_input(index, args, kwargs)
        if source is not None and source.shape == tensor.shape:
            return (tensor - source).detach()
        return tensor.detach()

    def _extra_reused(self, index: int, delta: torch.Tensor, args, kwargs) -> torch.Tensor:
        source = self._extra_input(index, args, kwargs)
        if source is not None and source.shape == delta.shape:
            return _apply_delta(source, delta)
        return delta


def apply_easycache(
    denoisers: torch.nn.Module | Sequence[torch.nn.Module] | Mapping[str, torch.nn.Module],
    config: EasyCacheConfig | None = None,
    *,
    locator: CallLocator | None = None,
    channel_axis: int = 1,
    extra_inputs: Mapping[int, str] | None = None,
    latent_ndim: int | None = None,
    latent_channels: Callable[[torch.nn.Module], int | None] | None = None,
) -> EasyCacheHook:
    """Attach EasyCache to a pipeline's denoiser(s) and return the hook (its ``records`` hold the trace).

    Args:
        denoisers: one diffusers transformer, or several that take turns in one run (Wan2.2 A14B's two experts,
            as ``{"transformer": pipe.transformer, "transformer_2": pipe.transformer_2}``); several share one
            state (see the module docstring).
        config: threshold, warm-up and the optional record callback.
        locator: how a call's step and branch are found; default one that reads diffusers' cache contexts and
            counts calls otherwise. :func:`lightcache.accelerate.apply_lightcache` passes one that also reads the
            pipeline's scheduler.
        channel_axis: the channel axis of the denoiser's latent input (2 for UNets that take (B, F, C, H, W), -1 for
            packed tokens (B, N, C)).
        extra_inputs: for denoisers with several outputs, ``output index -> input keyword`` of the input each
            extra output moves with (e.g. ``{1: "audio_hidden_states"}``).
        latent_ndim: the dimensions the latent input has (5 for video latents, 3 for packed tokens), when known;
            an input of another rank is refused at its first call, naming the layout the adapter declares.
        latent_channels: the noisy latent's channel count in a denoiser's input, given the denoiser (the family
            adapter's :meth:`~lightcache.families.base.FamilyAdapter.latent_channels`); default: its config's
            ``out_channels``.

    Applying twice raises; call :func:`remove_easycache` first. Composes with diffusers' own hooks registered
    through the same :class:`~diffusers.hooks.HookRegistry` (group offloading, layerwise casting).

    Example:
        >>> from lightcache.tiny import build_tiny_pipeline
        >>> pipe = build_tiny_pipeline(seed=0)
        >>> hook = apply_easycache(pipe.transformer, EasyCacheConfig(threshold=0.05))
        >>> remove_easycache(pipe.transformer)
    """
    config = config if config is not None else EasyCacheConfig()
    named = _named_denoisers(denoisers)
    for name, module in named.items():
        registry = HookRegistry.check_if_exists_or_initialize(module)
        if registry.get_hook(EASYCACHE_HOOK) is not None:
            raise ValueError(f"EasyCache is already applied to {name}; call remove_easycache() first.")
        if getattr(module, "_cache_config", None) is not None:
            raise ValueError(
                f"{name} already has diffusers' {type(module._cache_config).__name__} enabled; "
                "disable it (transformer.disable_cache()) before applying EasyCache."
            )
    run = _SharedRun(config, locator if locator is not None else CallLocator(
        num_inference_steps=config.num_inference_steps))
    first = None
    for name, module in named.items():
        channels = (latent_channels or _latent_channels)(module)
        hook = EasyCacheHook(run, name, channels, channel_axis, extra_inputs, latent_ndim)
        registry = HookRegistry.check_if_exists_or_initialize(module)
        registry.register_hook(hook, EASYCACHE_HOOK)
        registry.invalidate_child_registries_cache()
        first = first or hook
    return first


def remove_easycache(*denoisers: torch.nn.Module) -> None:
    """Detach EasyCache from each module given and drop its cached tensors; a no-op where it is not applied."""
    for module in denoisers:
        registry = getattr(module, "_diffusers_hook", None) if module is not None else None
        if registry is None:
            continue
        hook = registry.get_hook(EASYCACHE_HOOK)
        if hook is None:
            continue
        hook.reset_state(module)
        registry.remove_hook(EASYCACHE_HOOK, recurse=False)
        registry.invalidate_child_registries_cache()


def get_easycache_hook(transformer: torch.nn.Module) -> EasyCacheHook | None:
    """The EasyCache hook on ``transformer``, or None."""
    registry = getattr(transformer, "_diffusers_hook", None)
    return None if registry is None else registry.get_hook(EASYCACHE_HOOK)


def _kept(x_t: torch.Tensor) -> torch.Tensor:
    """A copy of the input latent to remember across steps: the input may be the pipeline's own latent tensor, which
    some pipelines step in place (Kandinsky 5 writes the scheduler's result into its latents' noisy channels), so a
    view of it would change under the cache and every input change would read as 0."""
    return x_t.detach().clone()


def _mean_abs(t: torch.Tensor) -> float:
    return t.float().abs().mean().item()


def _apply_delta(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``x + delta`` computed in the delta's dtype, returned in ``x``'s (what the pipeline expects back)."""
    return (x.to(delta.dtype) + delta).to(x.dtype)


def _named_denoisers(denoisers) -> dict[str, torch.nn.Module]:
    if isinstance(denoisers, torch.nn.Module):
        return {"transformer": denoisers}
    if isinstance(denoisers, Mapping):
        return {str(k): v for k, v in denoisers.items() if v is not None}
    modules = [m for m in denoisers if m is not None]
    return {("transformer" if i == 0 else f"transformer_{i + 1}"): m for i, m in enumerate(modules)}


def _latent_channels(module: torch.nn.Module) -> int | None:
    """Channels of the noisy latent in the denoiser's input: its output channels (what it predicts)."""
    config = getattr(module, "config", None)
    out = getattr(config, "out_channels", None) if config is not None else None
    return int(out) if isinstance(out, int) else None


def _tensors_of(output: Any) -> list[torch.Tensor]:
    """The output tensors of a denoiser call, in order: a tensor, a tuple, or a diffusers output object."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for t in output if isinstance(t, torch.Tensor)]
    return [t for t in output.to_tuple() if isinstance(t, torch.Tensor)]


def _wrap_like(outputs: list[torch.Tensor], return_dict: bool) -> Any:
    if return_dict:
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        if len(outputs) == 1:
            return Transformer2DModelOutput(sample=outputs[0])
    return tuple(outputs)
