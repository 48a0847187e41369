"""Which denoising step and which guidance branch a denoiser call belongs to.

diffusers' video pipelines announce their denoiser calls in different ways, and every per-step technique (EasyCache,
the step trace) needs the same answer, so it is worked out here once:

* **a cache context with a step index** (Wan: ``cache_context("cond" | "uncond", step_index=i, ...)``): taken as is;
* **a cache context without a step index** (HunyuanVideo's ``cond`` / ``uncond``, guider names such as
  ``pred_cond``, LTX-2's ``uncond_stg``): the branch is the context name, the step comes from the scheduler's
  ``step_index`` when it keeps one, else from counting the calls of the deciding branch (DDIM keeps none);
* **no context at all** (UNet pipelines: SVD, AnimateDiff): the first call of a step is ``cond``, later calls of
  the same step are ``call1``, ``call2``...

A *deciding* branch carries the step's decision (EasyCache's ``cond``); every other branch of the same step
follows it. One locator serves every denoiser of a pipeline (Wan2.2 A14B has two experts that share one step
count), and :meth:`CallLocator.pin` lets an outer hook hand its answer to inner ones, so a call is located once.

Example:
    >>> from diffusers.hooks.hooks import CacheContext
    >>> loc = CallLocator()
    >>> loc.locate(CacheContext("uncond", step_index=3, num_inference_steps=8), timestep=None)
    CallSite(step=3, branch='uncond', num_steps=8, decides=False)
    >>> [loc.locate(None, timestep=t).step for t in (999.0, 900.0, 800.0, 999.0)]  # a new run restarts the count
    [0, 1, 2, 0]
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, NamedTuple

import torch

#: Context names whose call makes the step's decision; every other name follows the decider of its step.
DECIDING_BRANCHES = frozenset({"cond", "cond_uncond", "pred_cond"})

#: The branch name given to a call that arrives without any cache context.
NO_CONTEXT_BRANCH = "cond"


class CallSite(NamedTuple):
    """Where one denoiser call sits in the run: step index, branch, step count if known, and whether it decides."""

    step: int
    branch: str
    num_steps: int | None
    decides: bool


class CallLocator:
    """Locates denoiser calls. Keep one per pipeline run; :meth:`reset` starts a new run.

    Args:
        scheduler: the pipeline's scheduler, or a function returning it (a run may replace the scheduler), read
            (never changed) for ``step_index`` and ``timesteps`` when the pipeline gives no step index of its own.
        num_inference_steps: the run's step count, for pipelines that announce it nowhere (forces the last step).
    """

    def __init__(self, scheduler: Any = None, num_inference_steps: int | None = None):
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps
        self._pinned: CallSite | None = None
        self.reset()

    def reset(self) -> None:
        self._counted_step = -1  # step of the last deciding call when counting calls ourselves
        self._last_timestep: float | None = None
        self._calls_at_step: dict[int, int] = {}

    @contextmanager
    def pin(self, site: CallSite) -> Iterator[None]:
        """Within the block, :meth:`locate` answers ``site`` (an outer hook already located this call)."""
        previous, self._pinned = self._pinned, site
        try:
            yield
        finally:
            self._pinned = previous

    def locate(self, context: Any, timestep: Any) -> CallSite:
        """The call site of the call being made now. ``context`` is diffusers' ``CacheContext`` or None."""
        if self._pinned is not None:
            return self._pinned
        name = getattr(context, "name", None)
        step_index = getattr(context, "step_index", None)
        num_steps = getattr(context, "num_inference_steps", None) or self._num_steps()
        if name is not None and step_index is not None:
            return CallSite(int(step_index), name, num_steps, name in DECIDING_BRANCHES)
        step = self._scheduler_step()
        if name is not None:
            decides = name in DECIDING_BRANCHES
            if step is None:
                step = self._count(decides, timestep)
            return CallSite(step, name, num_steps, decides)
        # No context: one call per step is the common case (embedded guidance, batched CFG); extra calls of the
        # same step are numbered so they stay apart in the trace and follow the first.
        if step is None:
            return CallSite(self._count(True, timestep), NO_CONTEXT_BRANCH, num_steps, True)
        n = self._calls_at_step.get(step, 0)
        self._calls_at_step[step] = n + 1
        return CallSite(step, NO_CONTEXT_BRANCH if n == 0 else f"call{n}", num_steps, n == 0)

    # --- helpers ----------------------------------------------------------------------------------------
    def _scheduler(self) -> Any:
        # Schedulers have no __call__, so a callable here is a getter.
        return self.scheduler() if callable(self.scheduler) else self.scheduler

    def _num_steps(self) -> int | None:
        if self.num_inference_steps is not None:
            return self.num_inference_steps
        timesteps = getattr(self._scheduler(), "timesteps", None)
        return len(timesteps) if timesteps is not None else None

    def _scheduler_step(self) -> int | None:
        scheduler = self._scheduler()
        # Schedulers that keep a step_index set it on their first step() of a run (None before it) and advance it by
        # one per step. Some keep none at all (DDIM: AnimateDiff, CogVideoX): their calls are counted instead, or
        # every call would read as step 0 and EasyCache would never leave its warm-up.
        if scheduler is None or not hasattr(scheduler, "step_index"):
            return None
        index = scheduler.step_index
        return 0 if index is None else int(index)

    def _count(self, decides: bool, timestep: Any) -> int:
        """Step index from counting deciding calls; a timestep that goes up again means a new run began."""
        t = timestep_value(timestep)
        if decides:
            restarted = self._last_timestep is not None and not math.isnan(t) and t > self._last_timestep
            if restarted:
                self._counted_step = -1
            self._counted_step += 1
            self._last_timestep = t
        return max(self._counted_step, 0)


def timestep_value(timestep: Any) -> float:
    """A call's timestep as one float (NaN when there is none).

    Per-token timesteps (Wan2.2 TI2V) hold 0 for the tokens of a given first frame and the step's timestep
    elsewhere, so the largest value is the step's.
    """
    if timestep is None:
        return float("nan")
    if isinstance(timestep, torch.Tensor):
        return float(timestep.detach().max().item()) if timestep.numel() else float("nan")
    try:
        return float(timestep)
    except (TypeError, ValueError):
        return float("nan")
