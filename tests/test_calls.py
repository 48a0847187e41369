"""How denoiser calls are located: every pattern diffusers' video pipelines use, without a pipeline."""

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers.hooks.hooks import CacheContext

from lightcache.calls import NO_CONTEXT_BRANCH, CallLocator, CallSite, timestep_value


def _scheduler(step_index, n=10):
    return SimpleNamespace(step_index=step_index, timesteps=torch.arange(n))


def test_a_context_with_a_step_index_is_taken_as_is():
    loc = CallLocator(scheduler=_scheduler(7))
    site = loc.locate(CacheContext("cond", step_index=3, num_inference_steps=8), None)
    assert site == CallSite(3, "cond", 8, True)
    assert loc.locate(CacheContext("uncond", step_index=3), None) == CallSite(3, "uncond", 10, False)


def test_guider_and_extra_branch_names_follow_or_decide():
    loc = CallLocator(scheduler=_scheduler(2))
    names = ["pred_cond", "pred_uncond", "cond_uncond", "uncond_stg", "uncond_modality"]
    decides = [loc.locate(CacheContext(n), None).decides for n in names]
    assert decides == [True, False, True, False, False]


def test_a_context_without_a_step_reads_the_scheduler_which_may_be_replaced():
    holder = SimpleNamespace(scheduler=_scheduler(None))
    loc = CallLocator(scheduler=lambda: holder.scheduler)
    assert loc.locate(CacheContext("cond"), None).step == 0  # no step() yet in this run
    holder.scheduler = _scheduler(4, n=6)
    site = loc.locate(CacheContext("uncond"), None)
    assert (site.step, site.num_steps, site.decides) == (4, 6, False)


def test_no_context_numbers_the_calls_of_a_step():
    scheduler = _scheduler(0)
    loc = CallLocator(scheduler=scheduler)
    first, second = loc.locate(None, None), loc.locate(None, None)
    scheduler.step_index = 1
    third = loc.locate(None, None)
    assert (first.branch, first.decides) == ("cond", True)
    assert (second.branch, second.decides, second.step) == ("call1", False, 0)
    assert (third.branch, third.step, third.decides) == ("cond", 1, True)


def test_counting_without_a_scheduler_restarts_when_the_timestep_rises_or_on_reset():
    loc = CallLocator(num_inference_steps=4)
    steps = [loc.locate(None, torch.tensor([t])).step for t in (999.0, 700.0, 400.0)]
    assert steps == [0, 1, 2]
    assert [loc.locate(None, torch.tensor([t])).step for t in (999.0, 500.0, 200.0)] == [0, 1, 2]  # a new run
    loc.reset()
    assert loc.locate(None, torch.tensor([100.0])).step == 0
    # Followers with a name stay on the deciding call's step.
    assert loc.locate(CacheContext("uncond"), torch.tensor([100.0])).step == 0


def test_a_pinned_site_answers_inner_hooks():
    loc = CallLocator()
    site = CallSite(5, "uncond", 9, False)
    with loc.pin(site):
        assert loc.locate(CacheContext("cond", step_index=0), None) == site
    assert loc.locate(CacheContext("cond", step_index=0), None).step == 0


def test_per_token_timesteps_read_as_the_steps_timestep():
    # Wan2.2 TI2V with an image: the first frame's tokens carry 0, the others the step's timestep.
    assert timestep_value(torch.tensor([[0.0, 0.0, 812.0, 812.0]])) == 812.0
    assert timestep_value(None) != timestep_value(None)  # NaN


def test_a_repeated_timestep_is_the_next_step_not_a_new_run():
    # Some schedulers (second-order ones, and some flow schedules near the end) give two steps the same timestep.
    loc = CallLocator()
    assert [loc.locate(None, torch.tensor([t])).step for t in (999.0, 999.0, 500.0, 500.0)] == [0, 1, 2, 3]


def test_a_scheduler_without_a_step_index_has_its_steps_counted():
    """DDIM keeps no step_index: reading it as step 0 put every call of AnimateDiff and CogVideoX at step 0, where
    EasyCache never leaves its warm-up. The deciding calls are counted instead; followers take their step."""
    from diffusers import DDIMScheduler

    assert not hasattr(DDIMScheduler(), "step_index")  # what makes this path real
    loc = CallLocator(scheduler=SimpleNamespace(timesteps=torch.arange(4)))
    cond, uncond = CacheContext("cond"), CacheContext("uncond")
    sites = [loc.locate(ctx, torch.tensor([t])) for ctx, t in ((cond, 999.0), (uncond, 999.0), (cond, 700.0),
                                                                (uncond, 700.0), (cond, 400.0))]
    assert [(s.step, s.branch, s.num_steps) for s in sites] == [
        (0, "cond", 4), (0, "uncond", 4), (1, "cond", 4), (1, "uncond", 4), (2, "cond", 4)]
    # Without any context (a UNet pipeline's batched call) each call is the next step.
    loc = CallLocator(scheduler=SimpleNamespace(timesteps=torch.arange(3)))
    assert [loc.locate(None, torch.tensor([t])).step for t in (999.0, 500.0, 1.0)] == [0, 1, 2]


def test_a_named_context_without_a_step_or_scheduler_counts_its_deciding_calls():
    """A branch name but no step index and no scheduler: the deciding branch's calls are counted (a rising timestep
    starts again); the other branches take the step of the last deciding call and do not advance it."""
    loc = CallLocator()
    cond, uncond = CacheContext("cond"), CacheContext("uncond")
    sites = [loc.locate(ctx, torch.tensor([t])) for ctx, t in
             ((cond, 999.0), (uncond, 999.0), (cond, 900.0), (uncond, 900.0), (cond, 999.0), (uncond, 999.0))]
    assert [(s.step, s.branch, s.decides) for s in sites] == [
        (0, "cond", True), (0, "uncond", False), (1, "cond", True), (1, "uncond", False), (0, "cond", True),
        (0, "uncond", False)]


def test_without_any_context_every_call_decides_and_knows_the_step_count():
    loc = CallLocator(num_inference_steps=6)
    site = loc.locate(None, 999.0)
    assert site == CallSite(0, NO_CONTEXT_BRANCH, 6, True)
    assert loc.locate(None, 900.0) == CallSite(1, NO_CONTEXT_BRANCH, 6, True)


@pytest.mark.parametrize("timestep, expected", [(None, math.nan), (torch.tensor([]), math.nan), (5, 5.0),
                                                (torch.tensor(7.5), 7.5), ("not a number", math.nan)])
def test_a_timestep_reads_as_one_float_or_nan(timestep, expected):
    value = timestep_value(timestep)
    assert math.isnan(value) if math.isnan(expected) else value == expected


def test_calls_located_by_the_scheduler_know_the_step_count():
    loc = CallLocator(scheduler=_scheduler(2, n=10))
    assert loc.locate(None, 1.0) == CallSite(2, NO_CONTEXT_BRANCH, 10, True)
    assert loc.locate(None, 1.0) == CallSite(2, "call1", 10, False)
