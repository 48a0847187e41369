"""A fair comparison: an untimed warm-up runs before the two timed runs, and the noise of the reading is reported.

The app's *Compare* used to time the accelerated run first, so it paid the process's one-time costs and could
show EasyCache "slower" than no caching. These tests check the order of the runs and the noise figure, never a
wall-clock value.
"""

from __future__ import annotations

import math
import threading

import pytest

from lightcache.app.form import initial_values, parse_request
from lightcache.app.jobs import ACCELERATED, PLAIN, WARM_UP, stream_job
from lightcache.app.view import comparison_markdown
from lightcache.comparison import ACCELERATIONS_OFF, WARM_UP_STEPS, call_time_ratio, warm_up_settings
from lightcache.errors import RunCancelled
from lightcache.events import RunStarted, StepRecord
from lightcache.tiny import build_tiny_pipeline

SMALL = dict(steps=4, warmup=1, frames=5, height=32, width=32, tau=0.2)


def _record(ms: float, computed: bool = True) -> StepRecord:
    return StepRecord(step=0, timestep=0.0, branch="cond", computed=computed, reason="", ms=ms)


def test_call_time_ratio_compares_computed_calls_only():
    accelerated = [_record(10.0), _record(12.0), _record(0.1, computed=False)]
    plain = [_record(10.0), _record(11.0), _record(12.0)]
    # Medians 11 (the reused call's 0.1 ms would pull it to 10) over 11.
    assert call_time_ratio(accelerated, plain) == pytest.approx(1.0)
    assert call_time_ratio([_record(20.0)], plain) == pytest.approx(20.0 / 11.0)
    assert math.isnan(call_time_ratio([_record(1.0, computed=False)], plain))
    assert math.isnan(call_time_ratio([], plain))


def test_warm_up_is_short_untimed_and_without_caching_but_keeps_shapes_and_memory_strategies():
    job = parse_request(dict(initial_values("tiny", SMALL), compare=True, chunking=True), device="cpu")
    w = warm_up_settings(job.settings)
    assert (w.steps, w.easycache) == (WARM_UP_STEPS, False)
    assert (w.height, w.width, w.frames, w.chunk_ffn) == (
        job.settings.height, job.settings.width, job.settings.frames, job.settings.chunk_ffn)


def _runs_of(pipe, job, tmp_path, cancel=None):
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    try:
        updates = list(stream_job(pipe, job, str(tmp_path), cancel))
    finally:
        handle.remove()
    return updates, len(calls)


def test_compare_warms_up_before_the_timed_runs_and_reports_the_noise(tmp_path):
    pipe = build_tiny_pipeline(0)
    job = parse_request(dict(initial_values("tiny", SMALL), compare=True), device="cpu")
    updates, calls = _runs_of(pipe, job, tmp_path)
    labels = [u.run for u in updates]
    assert labels[0] == WARM_UP and WARM_UP not in labels[1:]
    first_timed = next(u for u in updates if u.event is not None)
    assert first_timed.run == ACCELERATED and isinstance(first_timed.event, RunStarted)
    steps = {run: [u.event for u in updates if u.run == run and isinstance(u.event, StepRecord)]
             for run in (ACCELERATED, PLAIN)}
    # The transformer ran for the warm-up (2 steps, both CFG branches) on top of every computed timed call.
    computed = sum(r.computed for rs in steps.values() for r in rs)
    assert calls == computed + 2 * WARM_UP_STEPS
    comparison = next(u.comparison for u in updates if u.comparison is not None)
    assert comparison["call_time_ratio"] == pytest.approx(call_time_ratio(steps[ACCELERATED], steps[PLAIN]))
    assert comparison["call_time_ratio"] > 0
    assert "Measurement noise" in comparison_markdown(comparison)
    # The baseline is the plain pipe(...), and the comparison says so from what that run recorded.
    assert comparison["baseline_settings"] == ACCELERATIONS_OFF
    assert "The plain run is the plain pipe(...), every acceleration off" in comparison_markdown(comparison)


def test_a_single_run_has_no_warm_up(tmp_path):
    pipe = build_tiny_pipeline(0)
    job = parse_request(dict(initial_values("tiny", SMALL), compare=False), device="cpu")
    updates, calls = _runs_of(pipe, job, tmp_path)
    assert WARM_UP not in {u.run for u in updates}
    assert calls == sum(u.event.computed for u in updates if isinstance(u.event, StepRecord))


def test_stop_during_the_warm_up_ends_the_job_before_any_timed_run(tmp_path):
    pipe = build_tiny_pipeline(0)
    job = parse_request(dict(initial_values("tiny", SMALL), compare=True), device="cpu")
    cancel = threading.Event()
    cancel.set()
    seen = []
    with pytest.raises(RunCancelled):
        for update in stream_job(pipe, job, str(tmp_path), cancel):
            seen.append(update.run)
    assert seen == [WARM_UP]
    assert list(tmp_path.iterdir()) == []


def test_the_comparison_text_states_the_noise_only_when_it_was_measured():
    base = dict(accelerated_seconds=1.0, plain_seconds=2.0, speedup=2.0, denoise_speedup=2.5, psnr_db=30.0,
                ssim=0.9, accelerated_calls=(4, 8), plain_calls=(8, 8), baseline_settings=dict(ACCELERATIONS_OFF))
    assert "3% longer" in comparison_markdown(dict(base, call_time_ratio=1.03))
    assert "5% shorter" in comparison_markdown(dict(base, call_time_ratio=0.95))
    assert "Measurement noise" not in comparison_markdown(dict(base, call_time_ratio=math.nan))
