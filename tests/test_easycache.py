"""EasyCache against the plain pipeline and against an independent transcription of its rules."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import pipe_video, tiny_settings
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.hooks.hooks import CacheContext, _set_cache_context

from lightcache.techniques.easycache import (
    EASYCACHE_HOOK,
    EasyCacheConfig,
    EasyCacheState,
    TensorStore,
    apply_easycache,
    get_easycache_hook,
    remove_easycache,
)
from lightcache.calls import CallSite
from lightcache.runner import run_generation, run_to_completion


def _run(pipe, **overrides):
    return run_to_completion(run_generation(pipe, tiny_settings(**overrides)))


def _trace(finished_records):
    return [(r.step, r.branch, r.computed, r.reason) for r in finished_records]


# --- exactness ------------------------------------------------------------------------------------------
def test_tau_zero_is_bit_identical_to_the_plain_pipeline(tiny_pipe):
    settings = tiny_settings(threshold=0.0)
    plain = pipe_video(tiny_pipe, settings)
    hook = apply_easycache(tiny_pipe.transformer, EasyCacheConfig(threshold=0.0, warmup_steps=2))
    cached = pipe_video(tiny_pipe, settings)
    assert hook.records and all(r.computed for r in hook.records)
    assert np.array_equal(plain, cached)


def test_remove_easycache_restores_the_plain_output(tiny_pipe):
    settings = tiny_settings()
    plain = pipe_video(tiny_pipe, settings)
    hook = apply_easycache(tiny_pipe.transformer, EasyCacheConfig(threshold=1e9, warmup_steps=2))
    reused = pipe_video(tiny_pipe, settings)
    assert any(not r.computed for r in hook.records)
    assert not np.array_equal(plain, reused)  # caching really changed something ...
    remove_easycache(tiny_pipe.transformer)
    assert get_easycache_hook(tiny_pipe.transformer) is None
    assert np.array_equal(plain, pipe_video(tiny_pipe, settings))  # ... and removing it undoes all of it


def test_runner_with_tau_zero_matches_the_plain_pipeline(tiny_pipe):
    settings = tiny_settings(threshold=0.0)
    finished = run_to_completion(run_generation(tiny_pipe, settings))
    assert finished.summary["calls_reused"] == 0
    assert np.array_equal(finished.frames, pipe_video(tiny_pipe, settings))


# --- the huge-tau schedule ------------------------------------------------------------------------------
@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_huge_tau_computes_only_warmup_and_last_step(tiny_pipe, guidance):
    steps, warmup = 12, 3
    records = []
    events = run_generation(tiny_pipe, tiny_settings(threshold=1e9, warmup=warmup, steps=steps, guidance_scale=guidance))
    finished = run_to_completion(events, lambda e: records.append(e) if type(e).__name__ == "StepRecord" else None)
    branches = ["cond", "uncond"] if guidance > 1 else ["cond"]
    computed_steps = {s for s in range(warmup)} | {steps - 1}
    # warm-up step 0 has no k yet; step 1 sets it; after that everything but the last step is reused
    for branch in branches:
        mine = [r for r in records if r.branch == branch]
        assert [r.step for r in mine] == list(range(steps))
        assert {r.step for r in mine if r.computed} == computed_steps
    assert finished.summary["calls_computed"] == len(computed_steps) * len(branches)
    assert finished.summary["calls_reused"] == (steps - len(computed_steps)) * len(branches)
    reasons = {r.reason for r in records if r.branch == "cond"}
    assert reasons == {"warm-up", "E < tau", "last step"}


class _FakeTransformer(torch.nn.Module):
    """Output = a fixed nonlinear function of the input, so every computed value is known exactly."""

    def forward(self, hidden_states, timestep=None, encoder_hidden_states=None, attention_kwargs=None,
                return_dict=True):
        out = torch.tanh(hidden_states * 1.7) + 0.1 * timestep.view(-1, 1, 1, 1, 1) / 1000
        return (out,) if not return_dict else Transformer2DModelOutput(sample=out)


def _call(model, x, step, branch, steps):
    _set_cache_context(model, CacheContext(branch, step_index=step, num_inference_steps=steps))
    try:
        return model(hidden_states=x, timestep=torch.tensor([1000.0 - 10 * step]), return_dict=False)[0]
    finally:
        _set_cache_context(model, None)


def test_reused_call_returns_exactly_input_plus_its_branch_delta():
    model, plain = _FakeTransformer(), _FakeTransformer()
    apply_easycache(model, EasyCacheConfig(threshold=1e9, warmup_steps=2))
    gen = torch.Generator().manual_seed(0)
    deltas = {}
    steps = 6
    for step in range(steps):
        for branch, scale in (("cond", 1.0), ("uncond", 0.5)):
            x = torch.randn(1, 4, 2, 4, 4, generator=gen) * scale
            out = _call(model, x, step, branch, steps)
            if step < 2 or step == steps - 1:
                assert torch.equal(out, _call(plain, x, step, branch, steps))  # computed: the real output
                deltas[branch] = out - x
            else:
                assert torch.equal(out, x + deltas[branch]), (step, branch)  # reused: x_t + its own delta
    hook = get_easycache_hook(model)
    assert [r.computed for r in hook.records if r.branch == "cond"] == [True, True, False, False, False, True]


# --- an independent transcription of design.md §3 ------------------------------------------------------
class _Recorder(ModelHook):
    """Registered after EasyCache, so it wraps it: sees the input and the final output of every call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def new_forward(self, module, *args, **kwargs):
        output = self.fn_ref.original_forward(*args, **kwargs)
        self.calls.append((kwargs["hidden_states"].clone(), output[0].clone()))
        return output


def _reference_decisions(xs, vs_if_computed, tau, warmup, steps, force_last=True):
    """The §3 rules written out plainly for the cond branch; returns (computed, eps) per step. ``force_last``: the
    last step always computes (the reference's Wan2.1 and A14B paths; its TI2V-5B path never forces it)."""
    mean_abs = lambda t: t.float().abs().mean().item()  # noqa: E731
    decisions = []
    k = None
    x_prev = x_last = v_last = None
    err = 0.0
    for i, x in enumerate(xs):
        eps = None
        if i < warmup or (force_last and i == steps - 1):
            compute, err = True, 0.0
        elif k is None or x_prev is None or v_last is None:
            compute, err = True, 0.0
        else:
            eps = k * mean_abs(x - x_prev) / mean_abs(v_last)
            err += eps
            compute = not err < tau
            if compute:
                err = 0.0
        if compute:
            v = vs_if_computed[i]
            if v_last is not None:
                k = mean_abs(v - v_last) / mean_abs(x - x_last)
            v_last, x_last = v, x
        x_prev = x
        decisions.append((compute, eps))
    return decisions


@pytest.mark.parametrize("tau", [0.02, 0.05, 0.1, 0.3])
def test_hook_matches_an_independent_transcription_over_50_steps(tiny_pipe, tau):
    steps, warmup = 50, 5
    hook = apply_easycache(tiny_pipe.transformer, EasyCacheConfig(threshold=tau, warmup_steps=warmup))
    recorder = _Recorder()
    HookRegistry.check_if_exists_or_initialize(tiny_pipe.transformer).register_hook(recorder, "test_recorder")
    pipe_video(tiny_pipe, tiny_settings(steps=steps, warmup=warmup, threshold=tau))

    cond = [r for r in hook.records if r.branch == "cond"]
    cond_calls = recorder.calls[0::2]  # cond, uncond alternate in the Wan pipeline
    assert len(cond) == len(cond_calls) == steps
    xs = [x for x, _ in cond_calls]
    vs = [v if r.computed else None for (_, v), r in zip(cond_calls, cond)]
    expected = _reference_decisions(xs, vs, tau, warmup, steps)
    assert [c for c, _ in expected] == [r.computed for r in cond]
    for (_, eps), r in zip(expected, cond):
        assert (eps is None) == (r.eps is None)
        if eps is not None:
            assert math.isclose(eps, r.eps, rel_tol=1e-6)
    # uncond always follows cond
    uncond = [r for r in hook.records if r.branch == "uncond"]
    assert [r.computed for r in uncond] == [r.computed for r in cond]


def test_transcription_sweep_is_not_trivial(tiny_pipe):
    """At least one tau of the sweep above must mix computed and reused steps, or the comparison proves little."""
    mixes = []
    for tau in (0.02, 0.05, 0.1, 0.3):
        finished = _run(tiny_pipe, steps=50, warmup=5, threshold=tau)
        mixes.append(0 < finished.summary["calls_reused"] < 2 * (50 - 6))
    assert any(mixes)


# --- state per run --------------------------------------------------------------------------------------
def test_two_identical_runs_give_identical_videos_and_traces(tiny_pipe):
    first_records, second_records = [], []
    collect = lambda into: lambda e: into.append(e) if type(e).__name__ == "StepRecord" else None  # noqa: E731
    a = run_to_completion(run_generation(tiny_pipe, tiny_settings(threshold=0.3)), collect(first_records))
    b = run_to_completion(run_generation(tiny_pipe, tiny_settings(threshold=0.3)), collect(second_records))
    assert np.array_equal(a.frames, b.frames)
    strip = lambda rs: [(r.step, r.branch, r.computed, r.reason, r.eps, r.error, r.k) for r in rs]  # noqa: E731
    assert strip(first_records) == strip(second_records)
    assert any(not r.computed for r in first_records)


def test_a_different_run_in_between_does_not_leak_state(tiny_pipe):
    a = _run(tiny_pipe, threshold=0.3)
    _run(tiny_pipe, threshold=0.3, prompt="a blue square moving up", seed=9, steps=7)
    b = _run(tiny_pipe, threshold=0.3)
    assert np.array_equal(a.frames, b.frames)


def test_hooks_are_removed_after_a_run(tiny_pipe):
    _run(tiny_pipe, threshold=0.3)
    registry = HookRegistry.check_if_exists_or_initialize(tiny_pipe.transformer)
    assert registry.get_hook(EASYCACHE_HOOK) is None


# --- misuse ---------------------------------------------------------------------------------------------
def test_applying_twice_is_refused(tiny_pipe):
    apply_easycache(tiny_pipe.transformer)
    with pytest.raises(ValueError, match="already applied"):
        apply_easycache(tiny_pipe.transformer)


def test_refuses_to_stack_on_a_diffusers_cache(tiny_pipe):
    from diffusers import FirstBlockCacheConfig

    tiny_pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    with pytest.raises(ValueError, match="FirstBlockCacheConfig"):
        apply_easycache(tiny_pipe.transformer)


@pytest.mark.parametrize("tau", [-0.1, float("nan"), "0.1"])
def test_bad_thresholds_are_rejected(tau):
    with pytest.raises(ValueError, match="threshold"):
        EasyCacheConfig(threshold=tau)


def test_bad_warmup_is_rejected():
    with pytest.raises(ValueError, match="warm-up"):
        EasyCacheConfig(warmup_steps=-1)


# --- boundaries of the rules ------------------------------------------------------------------------------------
def test_with_tau_zero_an_input_that_did_not_move_is_still_computed():
    """Reuse needs ``E < tau`` strictly: at tau 0 an estimate of exactly 0 (the input did not change) computes."""
    model = _FakeTransformer()
    hook = apply_easycache(model, EasyCacheConfig(threshold=0.0, warmup_steps=2))
    gen = torch.Generator().manual_seed(1)
    x0, x1 = (torch.randn(1, 4, 2, 4, 4, generator=gen) for _ in range(2))
    steps = 5
    for step, x in enumerate([x0, x1, x1, x1, x1]):
        _call(model, x, step, "cond", steps)
    assert hook.records[1].k is not None  # k is known from step 2 on, so steps 2 and 3 are decided by E
    assert [r.eps for r in hook.records[2:4]] == [0.0, 0.0]
    assert [(r.computed, r.reason) for r in hook.records[2:4]] == [(True, "E >= tau")] * 2


def test_the_error_accumulates_over_reused_steps_and_resets_once_it_reaches_tau():
    model = _FakeTransformer()
    hook = apply_easycache(model, EasyCacheConfig(threshold=1.0, warmup_steps=2))
    gen = torch.Generator().manual_seed(2)
    x0, x1 = (torch.randn(1, 4, 2, 4, 4, generator=gen) for _ in range(2))
    steps = 8
    _call(model, x0, 0, "cond", steps)
    _call(model, x1, 1, "cond", steps)
    # The input moves by the same amount every step, sized so that each estimate is about 0.3: E = 0.3, 0.6 and
    # 0.9 reuse, 1.2 reaches tau and computes.
    move = 0.3 * hook.state.v_last.abs().mean().item() / hook.state.k
    x = x1
    for step in range(2, 6):
        x = x + move
        _call(model, x, step, "cond", steps)
    records = hook.records[2:]
    assert all(math.isclose(r.eps, 0.3, rel_tol=1e-3) for r in records)
    assert [r.computed for r in records] == [False, False, False, True]
    running = 0.0
    for r in records[:3]:
        running += r.eps
        assert r.error == pytest.approx(running, rel=1e-12) and r.reason == "E < tau"
    assert records[3].reason == "E >= tau" and records[3].error == 0.0


class _ConditionedTransformer(torch.nn.Module):
    """An image-to-video-like denoiser: 4 latent channels out, 2 condition channels appended to its input."""

    def __init__(self, channel_axis=1):
        super().__init__()
        self.config = SimpleNamespace(out_channels=4)
        self.axis = channel_axis

    def forward(self, hidden_states, timestep=None, encoder_hidden_states=None, attention_kwargs=None,
                return_dict=True):
        latent, condition = hidden_states.split([4, hidden_states.shape[self.axis] - 4], dim=self.axis)
        out = torch.tanh(latent * 1.7) + 0.1 * condition.mean(self.axis, keepdim=True)
        return (out,) if not return_dict else type("Out", (), {"sample": out})()


@pytest.mark.parametrize("channel_axis", [1, 2])
def test_only_the_noisy_latent_counts_when_condition_channels_are_appended(channel_axis):
    """x_t is the latent the model denoises: the decision and the reused output use its channels, never the
    condition channels concatenated after it (Wan I2V), whichever axis holds the channels."""
    model = _ConditionedTransformer(channel_axis)
    hook = apply_easycache(model, EasyCacheConfig(threshold=1e9, warmup_steps=2), channel_axis=channel_axis)
    gen = torch.Generator().manual_seed(3)
    shape = [1, 4, 3, 4, 4] if channel_axis == 1 else [1, 3, 4, 4, 4]
    cond_shape = list(shape)
    cond_shape[channel_axis] = 2
    condition = torch.randn(cond_shape, generator=gen)
    steps = 5
    latents = [torch.randn(shape, generator=gen) for _ in range(steps)]
    outputs = []
    for step, latent in enumerate(latents):
        # The condition channels change wildly from step to step; only the latent's change may count.
        x = torch.cat([latent, condition * (step + 1) * 100], dim=channel_axis)
        outputs.append(_call(model, x, step, "cond", steps))
    cond = hook.records
    assert [r.computed for r in cond] == [True, True, False, False, True]
    mean_abs = lambda t: t.abs().mean().item()  # noqa: E731
    k = mean_abs(outputs[1] - outputs[0]) / mean_abs(latents[1] - latents[0])
    assert math.isclose(cond[2].eps, k * mean_abs(latents[2] - latents[1]) / mean_abs(outputs[1]), rel_tol=1e-5)
    delta = outputs[1] - latents[1]
    assert outputs[2].shape == latents[2].shape
    assert torch.equal(outputs[2], latents[2] + delta) and torch.equal(outputs[3], latents[3] + delta)


@pytest.mark.parametrize("shape", [
    (1, 3, 8, 4, 4),  # (B, F, C, H, W) latents of an SVD-like UNet, declared as (B, C, F, H, W)
    (1, 12, 8),  # packed tokens (B, N, C) with more tokens than channels, declared as (B, C, F, H, W)
])
def test_a_latent_layout_that_does_not_fit_the_model_is_a_clear_error(shape):
    """The adapter declares the layout; when the model's input has no latent channels on the declared axis, the
    first call says so, instead of torch's error from inside a slice."""
    from lightcache.errors import LightcacheError

    class _Model(torch.nn.Module):
        config = SimpleNamespace(out_channels=8)

        def forward(self, hidden_states, timestep=None, return_dict=True):
            return (hidden_states * 0.5,)

    model = _Model()
    apply_easycache(model, EasyCacheConfig(threshold=0.1, warmup_steps=1), channel_axis=1, latent_ndim=5)
    try:
        with pytest.raises(LightcacheError, match=r"not 5 dimensions with 8 latent channels on axis 1.*adapter"):
            _call(model, torch.randn(shape), 0, "cond", 4)
    finally:
        remove_easycache(model)


class _TwoOutputTransformer(torch.nn.Module):
    """An audio-video denoiser like LTX-2's: a second output that moves with a second input, and a third with none."""

    def forward(self, hidden_states, audio_hidden_states=None, timestep=None, return_dict=True, gate_input=None):
        video = torch.tanh(hidden_states * 1.7)
        audio = torch.sin(audio_hidden_states * 2.0) + 0.5
        gate = video.mean().reshape(1) * 3.0  # an extra output with no input to move with
        return (video, audio, gate) if not return_dict else type("Out", (), {"to_tuple": lambda s: (video, audio,
                                                                                                   gate)})()


@pytest.mark.parametrize("return_dict", [False, True])
def test_extra_outputs_are_reused_with_their_own_transformation(return_dict):
    """Output 1 moves with the input named in ``extra_inputs`` (its delta added to the new input); output 2 has no
    such input and is returned as last computed. A reused call returns every output, in order."""
    model, plain = _TwoOutputTransformer(), _TwoOutputTransformer()
    hook = apply_easycache(model, EasyCacheConfig(threshold=1e9, warmup_steps=2),
                           extra_inputs={1: "audio_hidden_states"})
    gen = torch.Generator().manual_seed(4)
    steps = 5
    computed = {}
    for step in range(steps):
        x, audio = torch.randn(1, 4, 2, 4, 4, generator=gen), torch.randn(1, 8, 3, generator=gen)
        _set_cache_context(model, CacheContext("cond", step_index=step, num_inference_steps=steps))
        try:
            out = model(hidden_states=x, audio_hidden_states=audio, timestep=torch.tensor([1000.0 - step]),
                        return_dict=return_dict)
        finally:
            _set_cache_context(model, None)
        out = tuple(out) if isinstance(out, tuple) else out.to_tuple()
        assert len(out) == 3
        if step in (0, 1, steps - 1):
            expected = plain(hidden_states=x, audio_hidden_states=audio, return_dict=False)
            assert all(torch.equal(a, b) for a, b in zip(out, expected))
            computed = {"video": out[0] - x, "audio": out[1] - audio, "gate": out[2]}
        else:
            assert torch.equal(out[0], x + computed["video"])
            assert torch.equal(out[1], audio + computed["audio"])  # its own delta, on its own new input
            assert torch.equal(out[2], computed["gate"])  # no input to move with: kept as it was
    assert [r.computed for r in hook.records] == [True, True, False, False, True]


def test_an_extra_input_of_another_shape_is_not_used_to_move_its_output():
    """A keyword input that does not have the output's shape cannot carry its delta: the output is kept as is."""
    model = _TwoOutputTransformer()
    hook = apply_easycache(model, EasyCacheConfig(threshold=1e9, warmup_steps=2),
                           extra_inputs={1: "audio_hidden_states", 2: "hidden_states"})
    outs = []
    for step, scale in enumerate([1.0, 2.0, 3.0]):
        x, audio = torch.full((1, 4, 2, 4, 4), scale), torch.full((1, 8, 3), scale)
        _set_cache_context(model, CacheContext("cond", step_index=step, num_inference_steps=4))
        try:
            outs.append(model(hidden_states=x, audio_hidden_states=audio, timestep=torch.tensor([1.0]),
                              return_dict=False))
        finally:
            _set_cache_context(model, None)
    assert [r.computed for r in hook.records] == [True, True, False]
    assert torch.equal(outs[2][1], torch.full((1, 8, 3), 3.0) + (outs[1][1] - torch.full((1, 8, 3), 2.0)))
    assert torch.equal(outs[2][2], outs[1][2])  # output 2's named input has another shape: not moved
    assert len(hook.state.deltas) == 3 and set(hook.state.store.names()) >= {"delta/cond/1", "delta/cond/2"}


def test_the_state_keeps_its_tensors_in_its_store_under_their_names():
    """The state's tensors are the store's entries (a store swapped in sees them all); None removes one."""
    state = EasyCacheState()
    x, delta = torch.ones(2), torch.zeros(3)
    state.x_prev, state.v_last = x, delta
    assert state.store.get("x_prev") is x and state.x_prev is x and state.store.get("v_last") is delta
    assert state.x_last is None
    state.x_prev = None
    assert state.x_prev is None and state.store.names() == ["v_last"]
    state.store.discard("never-stored")  # discarding what is not there is fine
    state.deltas["cond"] = x
    assert "cond" in state.deltas and "uncond" not in state.deltas and len(state.deltas) == 1
    assert state.deltas["cond"] is x and state.store.get("delta/cond") is x
    with pytest.raises(KeyError) as missing:
        state.deltas["uncond"]
    assert missing.value.args == ("uncond",)
    state.reset()
    assert state.store.names() == [] and len(state.deltas) == 0 and state.v_last is None


def test_a_denoiser_called_positionally_without_a_cache_context():
    """``transformer(latent, timestep, ...)`` with no cache context: the input and timestep are read from the
    positional arguments, passed on unchanged, and a timestep that goes up again starts a new run."""
    model, plain = _FakeTransformer(), _FakeTransformer()
    hook = apply_easycache(model, EasyCacheConfig(threshold=1e9, warmup_steps=2))
    gen = torch.Generator().manual_seed(5)
    delta = None
    for call, t in enumerate([999.0, 900.0, 800.0, 700.0, 999.0]):
        x, timestep = torch.randn(1, 4, 2, 4, 4, generator=gen), torch.tensor([t])
        out = model(x, timestep, None, None, False)[0]
        if call in (0, 1, 4):
            assert torch.equal(out, plain(x, timestep, None, None, False)[0])
            delta = out - x
        else:
            assert torch.equal(out, x + delta)
    assert [(r.step, r.timestep, r.computed) for r in hook.records] == [(0, 999.0, True)]  # the new run's trace
    assert hook.state.step == 0


def test_a_deciding_call_that_does_not_advance_the_step_starts_a_new_run():
    """A deciding call for the step that was already decided (the pipeline called again from that step) must not
    reuse anything of the run before: state and trace start afresh."""
    model = _FakeTransformer()
    hook = apply_easycache(model, EasyCacheConfig(threshold=1e9, warmup_steps=0))
    gen = torch.Generator().manual_seed(6)
    for step in (0, 1, 2, 2):
        _call(model, torch.randn(1, 4, 2, 4, 4, generator=gen), step, "cond", 8)
    assert [(r.step, r.computed, r.reason) for r in hook.records] == [(2, True, "no k yet")]


def test_the_other_branches_follow_the_deciding_call_and_say_why():
    """A branch that does not decide computes when the deciding call computed, or when it has no delta of its own
    yet; its record has no estimate (eps) of its own."""
    model = _FakeTransformer()
    hook = apply_easycache(model, EasyCacheConfig(threshold=1e9, warmup_steps=2))
    gen = torch.Generator().manual_seed(7)
    for step, branches in enumerate([("cond", "uncond"), ("cond",), ("cond", "uncond"), ("cond", "uncond")]):
        for branch in branches:
            _call(model, torch.randn(1, 4, 2, 4, 4, generator=gen), step, branch, 8)
    uncond = [(r.step, r.computed, r.reason, r.eps) for r in hook.records if r.branch == "uncond"]
    assert uncond == [(0, True, "follows cond", None), (2, False, "follows cond", None),
                      (3, False, "follows cond", None)]
    fresh = _FakeTransformer()
    hook = apply_easycache(fresh, EasyCacheConfig(threshold=1e9, warmup_steps=2))
    for step, branches in enumerate([("cond",), ("cond",), ("cond", "uncond")]):
        for branch in branches:
            _call(fresh, torch.randn(1, 4, 2, 4, 4, generator=gen), step, branch, 8)
    assert [(r.computed, r.reason) for r in hook.records if r.branch == "uncond"] == [
        (True, "no cached delta for branch")]


def test_a_branch_before_its_deciding_call_is_refused_with_the_rule():
    model = _FakeTransformer()
    apply_easycache(model, EasyCacheConfig(threshold=0.1, warmup_steps=1))
    _call(model, torch.randn(1, 4, 2, 4, 4), 0, "cond", 4)
    with pytest.raises(RuntimeError) as refused:
        _call(model, torch.randn(1, 4, 2, 4, 4), 1, "uncond", 4)
    assert str(refused.value) == ("EasyCache saw a 'uncond' call for step 1 before the deciding call of that step; "
                                  "the conditional branch must be called first.")


class _RecordingStore(TensorStore):
    def __init__(self):
        super().__init__()
        self.prefetched = []

    def prefetch(self, names) -> None:
        self.prefetched.append(tuple(names))


def test_each_call_asks_its_store_for_the_tensors_its_decision_reads():
    model = _FakeTransformer()
    hook = apply_easycache(model, EasyCacheConfig(threshold=1e9, warmup_steps=1))
    store = _RecordingStore()
    hook.use_tensor_store(store)
    _call(model, torch.randn(1, 4, 2, 4, 4), 0, "cond", 4)
    _call(model, torch.randn(1, 4, 2, 4, 4), 0, "uncond", 4)
    assert store.prefetched == [("x_prev", "v_last", "delta/cond"), ("delta/uncond",)]


def test_a_reused_call_answers_in_the_form_it_was_asked_and_in_the_inputs_dtype():
    """return_dict=True gets an output object with ``sample``; a delta kept in another dtype is added in that dtype
    and the sum returned in the input's."""
    model = _FakeTransformer()
    hook = apply_easycache(model, EasyCacheConfig(threshold=1e9, warmup_steps=2))
    gen = torch.Generator().manual_seed(8)
    xs = [torch.randn(1, 4, 2, 4, 4, generator=gen) for _ in range(3)]
    for step in (0, 1):
        _call(model, xs[step], step, "cond", 5)
    delta = hook.state.deltas["cond"].to(torch.bfloat16)
    hook.state.deltas["cond"] = delta
    _set_cache_context(model, CacheContext("cond", step_index=2, num_inference_steps=5))
    try:
        out = model(hidden_states=xs[2], timestep=torch.tensor([980.0]), return_dict=True)
    finally:
        _set_cache_context(model, None)
    assert not hook.records[-1].computed
    assert out.sample.dtype == torch.float32
    assert torch.equal(out.sample, (xs[2].to(torch.bfloat16) + delta).float())


def test_remove_easycache_skips_what_has_no_hook_and_resets_the_rest():
    bare, with_registry, cached = _FakeTransformer(), _FakeTransformer(), _FakeTransformer()
    HookRegistry.check_if_exists_or_initialize(with_registry)  # a registry, but no EasyCache in it
    hook = apply_easycache(cached, EasyCacheConfig(threshold=1e9, warmup_steps=1))
    _call(cached, torch.randn(1, 4, 2, 4, 4), 0, "cond", 4)
    assert hook.state.store.names()
    remove_easycache(None, bare, with_registry, cached)
    assert get_easycache_hook(cached) is None and hook.state.store.names() == []


def test_config_bounds_are_inclusive_where_the_rules_allow():
    assert EasyCacheConfig(threshold=math.inf).threshold == math.inf
    assert EasyCacheConfig(warmup_steps=0).warmup_steps == 0  # no warm-up at all is allowed
    assert EasyCacheConfig(num_inference_steps=1).num_inference_steps == 1
    with pytest.raises(ValueError) as refused:
        EasyCacheConfig(num_inference_steps=0)
    assert str(refused.value) == "num_inference_steps must be >= 1, got 0."


def test_a_fresh_state_is_the_start_of_a_run():
    state = EasyCacheState()
    assert (state.step, state.compute_current, state.error, state.k) == (-1, True, 0.0, None)
    state.step, state.compute_current, state.error, state.k = 4, False, 0.7, 1.3
    state.reset()
    assert (state.step, state.compute_current, state.error, state.k) == (-1, True, 0.0, None)


def test_every_forced_computation_starts_the_error_afresh():
    """Warm-up, "no k yet" and the last step each compute and set E back to 0, like E >= tau does."""
    model = _FakeTransformer()
    hook = apply_easycache(model, EasyCacheConfig(threshold=1e9, warmup_steps=1))
    assert hook.records == []
    gen = torch.Generator().manual_seed(9)
    for step in range(4):
        hook.state.error = 0.5  # as if errors had been accumulating
        _call(model, torch.randn(1, 4, 2, 4, 4, generator=gen), step, "cond", 4)
    assert [(r.reason, r.error) for r in hook.records] == [
        ("warm-up", 0.0), ("no k yet", 0.0), ("E < tau", hook.records[2].eps + 0.5), ("last step", 0.0)]


def test_records_name_the_denoiser_that_made_the_call():
    first, second = _FakeTransformer(), _FakeTransformer()
    hook = apply_easycache([first, None, second], EasyCacheConfig(threshold=0.0))
    _call(first, torch.randn(1, 4, 2, 4, 4), 0, "cond", 4)
    _call(second, torch.randn(1, 4, 2, 4, 4), 1, "cond", 4)
    assert [r.denoiser for r in hook.records] == ["transformer", "transformer_2"]
    remove_easycache(first, second)
    single = apply_easycache(first, EasyCacheConfig(threshold=0.0))
    _call(first, torch.randn(1, 4, 2, 4, 4), 0, "cond", 4)
    assert [r.denoiser for r in single.records] == ["transformer"]
    remove_easycache(first)
    named = apply_easycache({"transformer_2": second, "transformer": None}, EasyCacheConfig(threshold=0.0))
    _call(second, torch.randn(1, 4, 2, 4, 4), 0, "cond", 4)
    assert [r.denoiser for r in named.records] == ["transformer_2"] and get_easycache_hook(first) is None


def test_a_denoiser_whose_config_has_no_channel_count_uses_its_whole_input():
    model = _FakeTransformer()
    model.config = SimpleNamespace()
    assert apply_easycache(model, EasyCacheConfig()).latent_channels is None


def test_the_locator_given_is_the_one_asked():
    class _Fixed:
        def __init__(self):
            self.asked = 0

        def locate(self, context, timestep):
            self.asked += 1
            return CallSite(0, "cond", 3, True)

        def reset(self):
            pass

    model, locator = _FakeTransformer(), _Fixed()
    hook = apply_easycache(model, EasyCacheConfig(threshold=0.0), locator=locator)
    model(hidden_states=torch.randn(1, 4, 2, 4, 4), timestep=torch.tensor([10.0]), return_dict=False)
    assert locator.asked == 1 and [(r.step, r.branch) for r in hook.records] == [(0, "cond")]


def test_stacking_on_a_diffusers_cache_names_the_way_out():
    model = _FakeTransformer()
    model._cache_config = SimpleNamespace()
    with pytest.raises(ValueError) as refused:
        apply_easycache(model, EasyCacheConfig())
    assert str(refused.value) == ("transformer already has diffusers' SimpleNamespace enabled; disable it "
                                  "(transformer.disable_cache()) before applying EasyCache.")


def test_records_carry_the_calls_timestep_tau_and_time(monkeypatch):
    """Each record has the call's timestep (keyword or second positional argument), the threshold, and how long the
    hook's work took (read from an injected clock: 1.5 ms between the hook's two readings)."""
    import lightcache.techniques.easycache as easycache_module

    ticks = iter(x / 1000.0 for x in range(0, 10_000, 3))  # every reading 3 ms after the last ...
    readings = []

    def clock():
        readings.append(next(ticks))
        return readings[-1]

    monkeypatch.setattr(easycache_module.time, "perf_counter", clock)
    model = _FakeTransformer()
    hook = apply_easycache(model, EasyCacheConfig(threshold=0.3, warmup_steps=1))
    x = torch.randn(1, 4, 2, 4, 4)
    model(x, timestep=torch.tensor([900.0]))  # one positional argument, the timestep by keyword
    model(x, torch.tensor([800.0]))  # exactly two positional arguments
    assert [(r.timestep, r.tau) for r in hook.records] == [(900.0, 0.3), (800.0, 0.3)]
    assert [r.ms for r in hook.records] == [pytest.approx(3.0)] * 2  # ... and two readings per call


def test_a_reused_call_answers_in_the_form_it_was_asked():
    """return_dict=False gets a tuple; no return_dict (diffusers' default, True) gets an output object."""
    model = _FakeTransformer()
    hook = apply_easycache(model, EasyCacheConfig(threshold=1e9, warmup_steps=2))
    gen = torch.Generator().manual_seed(10)
    for step in range(4):
        x = torch.randn(1, 4, 2, 4, 4, generator=gen)
        try:  # the same input for both branches, asked in the two forms
            _set_cache_context(model, CacheContext("cond", step_index=step, num_inference_steps=6))
            as_tuple = model(hidden_states=x, timestep=torch.tensor([900.0]), return_dict=False)
            _set_cache_context(model, CacheContext("uncond", step_index=step, num_inference_steps=6))
            as_object = model(hidden_states=x, timestep=torch.tensor([900.0]))
        finally:
            _set_cache_context(model, None)
        if step >= 2:
            assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
            assert not isinstance(as_object, tuple) and torch.equal(as_object.sample, as_tuple[0])
    assert not hook.records[-1].computed


def test_an_extra_input_that_is_not_a_tensor_is_treated_as_absent():
    model = _TwoOutputTransformer()
    hook = apply_easycache(model, EasyCacheConfig(threshold=1e9, warmup_steps=2),
                           extra_inputs={1: "audio_hidden_states", 2: "gate_input"})
    outs = []
    for step in range(3):
        _set_cache_context(model, CacheContext("cond", step_index=step, num_inference_steps=5))
        try:
            outs.append(model(hidden_states=torch.full((1, 4, 2, 4, 4), float(step)),
                              audio_hidden_states=torch.full((1, 8, 3), float(step)), gate_input=[1.0, 2.0],
                              timestep=torch.tensor([1.0]), return_dict=False))
        finally:
            _set_cache_context(model, None)
    assert [r.computed for r in hook.records] == [True, True, False]
    assert torch.equal(outs[2][2], outs[1][2])  # kept as last computed, not moved by a list


def test_the_record_callback_gets_every_record_as_it_is_made():
    seen = []
    model = _FakeTransformer()
    hook = apply_easycache(model, EasyCacheConfig(threshold=1e9, warmup_steps=1, on_record=seen.append))
    for step in range(3):
        _call(model, torch.randn(1, 4, 2, 4, 4), step, "cond", 3)
    assert len(seen) == 3 and all(a is b for a, b in zip(seen, hook.records))


# --- force_last_step: the reference's TI2V-5B path never forces the last step ---------------------------------
def test_without_a_forced_last_step_the_last_step_is_decided_like_any_other():
    model = _FakeTransformer()
    apply_easycache(model, EasyCacheConfig(threshold=1e9, warmup_steps=2, force_last_step=False))
    steps = 6
    for step in range(steps):
        for branch in ("cond", "uncond"):
            _call(model, torch.full((1, 4, 2, 4, 4), 1.0 - 0.1 * step), step, branch, steps)
    cond = [r for r in get_easycache_hook(model).records if r.branch == "cond"]
    assert [r.computed for r in cond] == [True, True, False, False, False, False]
    assert cond[-1].reason == "E < tau"


def test_hook_matches_the_transcription_without_a_forced_last_step(tiny_pipe):
    steps, warmup, tau = 50, 5, 0.1
    hook = apply_easycache(tiny_pipe.transformer, EasyCacheConfig(threshold=tau, warmup_steps=warmup,
                                                                  force_last_step=False))
    recorder = _Recorder()
    HookRegistry.check_if_exists_or_initialize(tiny_pipe.transformer).register_hook(recorder, "test_recorder")
    pipe_video(tiny_pipe, tiny_settings(steps=steps, warmup=warmup, threshold=tau))
    cond = [r for r in hook.records if r.branch == "cond"]
    xs = [x for x, _ in recorder.calls[0::2]]
    vs = [v if r.computed else None for (_, v), r in zip(recorder.calls[0::2], cond)]
    expected = _reference_decisions(xs, vs, tau, warmup, steps, force_last=False)
    assert [c for c, _ in expected] == [r.computed for r in cond]
    assert cond[-1].reason in ("E < tau", "E >= tau")  # decided by the estimate, not forced


#: The reference's setting per model (EasyCache4Wan2.1 and EasyCache4Wan2.2 easycache_generate.py): tau, warm-up
#: steps, whether the last step is forced.
REFERENCE_SETTINGS = {
    "wan2.1-t2v-1.3b": (0.05, 10, True),
    "wan2.1-t2v-14b": (0.05, 10, True),
    "wan2.1-i2v-14b-480p": (0.05, 10, True),  # ret_steps 10 of 40 in its image-to-video path
    "wan2.1-i2v-14b-720p": (0.05, 10, True),
    "wan2.2-ti2v-5b": (0.05, 7, False),  # its cut-off is past the run's last call: never forced
    "wan2.2-t2v-a14b": (0.06, 7, True),
    "wan2.2-i2v-a14b": (0.05, 7, True),  # --thresh_i2v, one state over both experts as for T2V-A14B
}


@pytest.mark.parametrize("name", sorted(REFERENCE_SETTINGS))
def test_each_preset_runs_easycache_as_the_reference_does_for_its_model(name):
    from lightcache.presets import load_preset
    from lightcache.runner import _acceleration_config
    from lightcache.settings import RunSettings

    config = _acceleration_config(RunSettings.from_preset(load_preset(name))).easycache
    assert (config.threshold, config.warmup_steps, config.force_last_step) == REFERENCE_SETTINGS[name]
    assert config.order == 0  # every preset runs the reference mode


# --- order 1: extrapolating instead of repeating ---------------------------------------------------------------
def test_order_one_at_tau_zero_is_bit_identical_to_the_plain_pipeline(tiny_pipe):
    settings = tiny_settings(threshold=0.0)
    plain = pipe_video(tiny_pipe, settings)
    hook = apply_easycache(tiny_pipe.transformer, EasyCacheConfig(threshold=0.0, warmup_steps=2, order=1))
    cached = pipe_video(tiny_pipe, settings)
    assert hook.records and all(r.computed for r in hook.records)
    assert np.array_equal(plain, cached)


def test_order_one_returns_the_extrapolated_transformation_and_says_so():
    model, plain = _FakeTransformer(), _FakeTransformer()
    apply_easycache(model, EasyCacheConfig(threshold=1e9, warmup_steps=3, order=1))
    gen = torch.Generator().manual_seed(0)
    history = {"cond": [], "uncond": []}  # (step, delta) of every computed call, computed here independently
    steps = 8
    for step in range(steps):
        for branch, scale in (("cond", 1.0), ("uncond", 0.5)):
            x = torch.randn(1, 4, 2, 4, 4, generator=gen) * scale
            out = _call(model, x, step, branch, steps)
            if step < 3 or step == steps - 1:
                real = _call(plain, x, step, branch, steps)
                assert torch.equal(out, real)
                history[branch].append((step, real - x))
            else:
                (i0, d0), (i1, d1) = history[branch][-2:]
                factor = min((step - i1) / (i1 - i0), 1.0)  # followed at most one gap ahead
                assert torch.allclose(out, x + d1 + (d1 - d0) * factor, atol=1e-6), (step, branch)
                assert not torch.allclose(out, x + d1, atol=1e-3)  # not the last delta as it is
    records = get_easycache_hook(model).records
    reused = [r for r in records if not r.computed]
    assert reused and {r.reason for r in reused} == {"E < tau, extrapolated", "follows cond, extrapolated"}


def test_order_one_estimates_the_error_of_what_it_returns():
    """k of order 1 is the computed transformation's distance from the line through the two before it, per unit of
    input change; eps = k * mean|x_t - x_prev| / mean|v_last| as in order 0."""
    model, plain = _FakeTransformer(), _FakeTransformer()
    apply_easycache(model, EasyCacheConfig(threshold=1e9, warmup_steps=3, order=1))
    xs = [torch.full((1, 4, 2, 4, 4), 1.0) * (1.0 - 0.2 * i) + 0.05 * i * i for i in range(5)]
    vs = []
    for step, x in enumerate(xs):
        _call(model, x, step, "cond", 5)
        vs.append(_call(plain, x, step, "cond", 5))
    mean_abs = lambda t: t.float().abs().mean().item()  # noqa: E731
    d = [v - x for v, x in zip(vs, xs)]
    k = mean_abs(d[2] - (d[1] + (d[1] - d[0]))) / mean_abs(xs[2] - xs[1])
    records = get_easycache_hook(model).records
    assert records[1].k is None and math.isclose(records[2].k, k, rel_tol=1e-6)
    assert not records[3].computed
    assert math.isclose(records[3].eps, k * mean_abs(xs[3] - xs[2]) / mean_abs(vs[2]), rel_tol=1e-6)


def test_order_one_with_a_high_tau_reuses_and_differs_from_order_zero(tiny_pipe):
    orders = {}
    for order in (0, 1):
        finished = _run(tiny_pipe, steps=12, warmup=3, threshold=1e9, easycache_order=order)
        assert finished.summary["calls_reused"] > 0
        orders[order] = finished.frames
    assert not np.array_equal(orders[0], orders[1])


@pytest.mark.parametrize("order", [2, -1, True, 0.5, "1"])
def test_bad_orders_are_rejected(order):
    with pytest.raises(ValueError, match="order must be 0"):
        EasyCacheConfig(order=order)
