"""The Plotly figures are built from event lists alone, for finished, partial and empty runs."""

from __future__ import annotations

import pytest

from lightcache.events import MemorySample, RunStarted, StageFinished, StageStarted, StepRecord
from lightcache.plots import peak_by_stage, stage_spans, timeline_figure, trace_figure
from lightcache.runner import run_generation
from lightcache.settings import RunSettings
from lightcache.tiny import build_tiny_pipeline

STEPS = 10


@pytest.fixture(scope="module")
def events():
    settings = RunSettings(prompt="a red circle moving right", steps=STEPS, frames=5, height=32, width=32,
                           warmup=2, threshold=0.2)
    return list(run_generation(build_tiny_pipeline(0), settings, "tiny"))


def _records(events):
    return [e for e in events if isinstance(e, StepRecord)]


def _trace(fig, name):
    return next(t for t in fig.data if t.name == name)


def test_trace_marks_every_call_computed_or_reused(events):
    records = _records(events)
    assert any(not r.computed for r in records), "tau=0.2 should reuse some calls on the tiny model"
    fig = trace_figure(events)
    computed, reused = _trace(fig, "computed"), _trace(fig, "reused")
    assert sorted(zip(computed.x, computed.y)) == sorted((r.step, r.branch) for r in records if r.computed)
    assert sorted(zip(reused.x, reused.y)) == sorted((r.step, r.branch) for r in records if not r.computed)
    # the x axis spans all steps from the start, so a live chart fills in instead of rescaling
    assert tuple(fig.layout.xaxis.range) == (-0.5, STEPS - 0.5)


def test_trace_plots_the_error_that_was_tested_against_tau(events):
    fig = trace_figure(events)
    tau_line = next(t for t in fig.data if t.name.startswith("tau"))
    assert set(tau_line.y) == {0.2}
    e_line = _trace(fig, "E (accumulated error)")
    tested = dict(zip(e_line.x, e_line.y))
    cond = [r for r in _records(events) if r.branch == "cond"]
    assert sorted(tested) == [r.step for r in cond]
    for r in cond:
        if not r.computed:
            assert tested[r.step] == pytest.approx(r.error) and tested[r.step] < 0.2
        elif r.reason == "E >= tau":
            assert tested[r.step] >= 0.2  # the value that crossed tau, not the 0 it was reset to
        else:
            assert tested[r.step] == 0.0


def test_trace_accepts_event_dicts_like_the_cli_trace(events):
    as_dicts = [e.to_dict() for e in events]
    a, b = trace_figure(events), trace_figure(as_dicts)
    assert [(t.name, tuple(t.x), tuple(t.y)) for t in a.data] == [(t.name, tuple(t.x), tuple(t.y)) for t in b.data]


def test_trace_of_a_run_without_easycache_says_so():
    events = [RunStarted(preset="tiny", settings={"steps": 3, "easycache": False, "threshold": 0.05}, device="cpu")]
    events += [StepRecord(step=s, timestep=1.0, branch="cond", computed=True, reason="EasyCache off")
               for s in range(3)]
    fig = trace_figure(events)
    assert not any(t.name.startswith("tau") for t in fig.data)
    assert any("EasyCache is off" in a.text for a in fig.layout.annotations)


def test_partial_and_empty_runs_render(events):
    first_step = next(i for i, e in enumerate(events) if isinstance(e, StepRecord))
    partial = events[: first_step + 1]
    fig = trace_figure(partial)
    assert len(_trace(fig, "computed").x) == 1
    timeline = timeline_figure(partial)
    assert any("denoise…" in a.text for a in timeline.layout.annotations)  # unfinished stage is marked
    assert trace_figure([]).data and timeline_figure([]).data


def test_timeline_without_memory_samples_shows_stages_and_calls(events):
    events = [e for e in events if not isinstance(e, MemorySample)]  # e.g. a trace recorded without the sampler
    fig = timeline_figure(events)
    assert "no memory samples" in fig.layout.annotations[0].text
    stage_labels = {a.text for a in fig.layout.annotations[1:]}
    assert stage_labels == {"encode", "denoise", "decode"}
    assert len(fig.layout.shapes) == 3 * 2  # each stage shaded on both rows
    calls = sum(len(t.x) for t in fig.data if t.name.startswith("call "))
    assert calls == len(_records(events))


def test_timeline_draws_memory_series_and_stage_peaks():
    mib = 2**20
    events = [
        StageStarted("encode", t=0.0),
        MemorySample(t=0.05, values={"rss": 100 * mib}),
        StageFinished("encode", t=0.1, seconds=0.1),
        StageStarted("denoise", t=0.1),
        MemorySample(t=0.2, values={"rss": 300 * mib, "cuda_allocated": 50 * mib}),
        MemorySample(t=0.3, values={"rss": 250 * mib, "cuda_allocated": 80 * mib}),
        StageFinished("denoise", t=0.4, seconds=0.3),
    ]
    fig = timeline_figure(events)
    rss = _trace(fig, "process RSS")
    assert list(rss.y) == [100, 300, 250]  # MiB
    assert list(_trace(fig, "CUDA allocated").y) == [50, 80]
    labels = [a.text for a in fig.layout.annotations]
    assert "encode<br>peak 100.0 MiB" in labels and "denoise<br>peak 300.0 MiB" in labels
    assert not any("no memory samples" in t for t in labels)
    assert peak_by_stage(events) == {"encode": {"rss": 100 * mib}, "denoise": {"rss": 300 * mib,
                                                                            "cuda_allocated": 80 * mib}}


def test_timeline_switches_to_gib_for_large_memory():
    events = [StageStarted("decode", t=0.0), MemorySample(t=0.5, values={"cuda_allocated": 3 * 2**30}),
              StageFinished("decode", t=1.0, seconds=1.0)]
    fig = timeline_figure(events)
    assert list(_trace(fig, "CUDA allocated").y) == [3.0]
    assert fig.layout.yaxis.title.text == "memory (GiB)"


def test_stage_spans_follow_run_order(events):
    spans = stage_spans(events)
    assert list(spans) == ["encode", "denoise", "decode"]
    assert all(finished and end >= start for start, end, finished in spans.values())


def test_unknown_objects_are_refused():
    with pytest.raises(TypeError, match="expected a lightcache event"):
        trace_figure([object()])


def test_timeline_of_a_sampled_run_draws_its_series(events):
    samples = [e for e in events if isinstance(e, MemorySample)]
    assert samples, "the run emitted no memory samples: the sampler is broken"  # every run samples, at least per stage
    fig = timeline_figure(events)
    series = [t for t in fig.data if not t.name.startswith("call ")]
    assert series and sum(len(t.x) for t in series) == sum(len(s.values) for s in samples)
    assert not any("no memory samples" in (a.text or "") for a in fig.layout.annotations)


def test_the_error_curve_follows_the_deciding_call_whatever_its_branch_is_called():
    """A guider's branches (HunyuanVideo-1.5's ``pred_cond`` / ``pred_uncond``) or a UNet's single batched call:
    the curve is drawn from the calls that decided, not from a branch named "cond"."""
    def record(step, branch, decides, eps, error, computed):
        return StepRecord(step=step, timestep=900.0 - step, branch=branch, computed=computed, reason="r", eps=eps,
                          error=error, tau=0.5, decides=decides)

    records = [record(0, "pred_cond", True, None, 0.0, True), record(0, "pred_uncond", False, None, 0.0, True),
               record(1, "pred_cond", True, 0.2, 0.2, False), record(1, "pred_uncond", False, None, 0.2, False)]
    e_line = _trace(trace_figure(records), "E (accumulated error)")
    assert list(zip(e_line.x, e_line.y)) == [(0, 0.0), (1, pytest.approx(0.2))]
    # A trace written before records said which call decided (Wan's): the "cond" branch decided.
    old = [dict(r.to_dict(), branch={"pred_cond": "cond", "pred_uncond": "uncond"}[r.branch]) for r in records]
    for r in old:
        del r["decides"]
    assert list(_trace(trace_figure(old), "E (accumulated error)").x) == [0, 1]
