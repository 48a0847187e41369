"""The run-event stream: order, parity with the plain pipeline, cancellation and cleanup."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import FLOAT_TOL, pipe_video, tiny_settings

from lightcache.errors import LightcacheError, RunCancelled
from lightcache.events import FramesDecoded, RunFinished, RunStarted, StageFinished, StageStarted, StepRecord
from lightcache.runner import run_generation, run_to_completion
from lightcache.techniques.easycache import get_easycache_hook


def test_plain_runner_is_bit_identical_to_the_pipeline(tiny_pipe):
    settings = tiny_settings(easycache=False)
    finished = run_to_completion(run_generation(tiny_pipe, settings))
    assert np.array_equal(finished.frames, pipe_video(tiny_pipe, settings))


def test_events_come_in_stage_order_with_one_record_per_call(tiny_pipe):
    events = list(run_generation(tiny_pipe, tiny_settings(steps=5)))
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
    stage_marks = [(type(e).__name__, e.stage) for e in events if isinstance(e, (StageStarted, StageFinished))]
    assert stage_marks == [
        ("StageStarted", "encode"), ("StageFinished", "encode"),
        ("StageStarted", "denoise"), ("StageFinished", "denoise"),
        ("StageStarted", "decode"), ("StageFinished", "decode"),
    ]
    marks = [(i, e.stage) for i, e in enumerate(events) if isinstance(e, (StageStarted, StageFinished))]
    denoise_marks = [i for i, stage in marks if stage == "denoise"]
    denoise = events[denoise_marks[0] + 1: denoise_marks[1]]
    records = [e for e in denoise if isinstance(e, StepRecord)]
    assert [(r.step, r.branch) for r in records] == [(s, b) for s in range(5) for b in ("cond", "uncond")]
    assert all(r.ms > 0 and r.t is not None for r in records)
    assert [r.t for r in records] == sorted(r.t for r in records)
    decoded = [e for e in events if isinstance(e, FramesDecoded)]
    assert sum(len(e.frames) for e in decoded) == 9


def test_the_first_record_arrives_before_the_run_ends(tiny_pipe):
    stream = run_generation(tiny_pipe, tiny_settings())
    first = next(e for e in stream if isinstance(e, StepRecord))
    assert first.step == 0
    stream.close()  # abandoning the stream must clean up
    assert get_easycache_hook(tiny_pipe.transformer) is None


def test_cancel_stops_the_run_and_removes_hooks(tiny_pipe):
    cancel = threading.Event()
    seen = []

    def on_event(event):
        seen.append(event)
        if isinstance(event, StepRecord) and event.step == 2:
            cancel.set()

    with pytest.raises(RunCancelled):
        run_to_completion(run_generation(tiny_pipe, tiny_settings(), cancel=cancel), on_event)
    assert max(e.step for e in seen if isinstance(e, StepRecord)) == 2
    assert get_easycache_hook(tiny_pipe.transformer) is None
    # the next run is identical to one on a fresh pipeline
    after = run_to_completion(run_generation(tiny_pipe, tiny_settings()))
    from lightcache.tiny import build_tiny_pipeline

    fresh = run_to_completion(run_generation(build_tiny_pipeline(seed=0), tiny_settings()))
    # A separately built module: equal within float tolerance (bit equality holds only for the same objects).
    np.testing.assert_allclose(after.frames, fresh.frames, rtol=0, atol=FLOAT_TOL)


def test_a_prompt_longer_than_the_text_encoder_takes_is_refused(tiny_pipe):
    with pytest.raises(LightcacheError, match="prompt is .* tokens long"):
        run_to_completion(run_generation(tiny_pipe, tiny_settings(prompt="red " * 40)))
    assert get_easycache_hook(tiny_pipe.transformer) is None


def test_summary_counts_match_the_records(tiny_pipe):
    records = []
    finished = run_to_completion(
        run_generation(tiny_pipe, tiny_settings(threshold=0.5, steps=12)),
        lambda e: records.append(e) if isinstance(e, StepRecord) else None,
    )
    s = finished.summary
    assert s["calls_computed"] == sum(r.computed for r in records)
    assert s["calls_reused"] == sum(not r.computed for r in records) > 0
    assert s["steps_reused"] == sorted({r.step for r in records if not r.computed and r.branch == "cond"})


def test_an_adapter_that_finds_no_denoiser_is_refused_before_anything_attaches(tiny_pipe):
    """A hand-written adapter whose denoiser names match no module of the pipeline (the default "transformer" on a
    UNet pipeline) would attach nothing and trace nothing, in silence: it is refused, and nothing is left."""
    from lightcache.accelerate import AccelerationConfig, apply_lightcache
    from lightcache.families.wan import WanAdapter
    from lightcache.techniques.easycache import EasyCacheConfig

    class _UNetNames(WanAdapter):
        denoiser_names = ("unet",)

    with pytest.raises(LightcacheError, match=r"finds no denoiser on this WanPipeline \(it looks for unet\)"):
        apply_lightcache(tiny_pipe, AccelerationConfig(easycache=EasyCacheConfig(threshold=0.1)),
                         adapter=_UNetNames())
    assert getattr(tiny_pipe, "_lightcache_acceleration", None) is None
    assert get_easycache_hook(tiny_pipe.transformer) is None
    assert "decode" not in tiny_pipe.vae.__dict__


def test_the_run_says_how_many_calls_a_step_makes(tiny_pipe):
    """The family adapter counts a step's calls (Wan: cond and uncond with guidance > 1, one without), so a consumer
    never guesses it from the guidance scale."""
    for guidance, calls in ((5.0, 2), (1.0, 1)):
        events = list(run_generation(tiny_pipe, tiny_settings(steps=3, guidance_scale=guidance)))
        assert events[0].calls_per_step == calls
        assert len([e for e in events if isinstance(e, StepRecord)]) == 3 * calls
        assert all(r.decides == (r.branch == "cond") for r in events if isinstance(r, StepRecord))
