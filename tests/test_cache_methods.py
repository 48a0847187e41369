"""Every step cache through the runner, the CLI and the app, on a tiny random pipeline: parity at the setting that
never skips, a trace that shows exactly the calls whose modules did not run, nothing left behind, Compare."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from conftest import FLOAT_TOL
from lightcache.accelerate import AccelerationConfig, apply_lightcache, cache_unsupported
from lightcache.cache_methods import CACHE_METHODS, MAGCACHE_CALIBRATIONS, get_cache_method, hook_names
from lightcache.comparison import compare_runs
from lightcache.errors import LightcacheError
from lightcache.events import Note, RunStarted, StepRecord, call_kind
from lightcache.runner import run_generation, run_to_completion
from lightcache.settings import RunSettings

SMALL = dict(prompt="a red circle moving right", seed=3, steps=8, frames=5, height=32, width=32, warmup=2)
CACHES = ("easycache", "fbc", "magcache", "taylorseer", "seacache", "pab")
# Settings that make every method skip on a random model, whose features change a lot from step to step.
HIGH = {"easycache": 5.0, "fbc": 5.0, "magcache": 5.0, "taylorseer": 3, "seacache": 5.0, "pab": 2}


def _settings(cache: str, value=None, **extra) -> RunSettings:
    if cache == "easycache":
        return RunSettings(**SMALL, cache=cache, threshold=value, **extra)
    return RunSettings(**SMALL, cache=cache, cache_setting=value, **extra)


@pytest.fixture(scope="module")
def pipe():
    from lightcache.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def plain(pipe):
    """The plain run on the module's pipeline, before any cache touched it."""
    return run_to_completion(run_generation(pipe, RunSettings(**SMALL, easycache=False)))


class _CallCounter:
    """Independent of the trace's work meter: per transformer call, in how many blocks the body (first norm), the
    self-attention (its query projection) and the feed-forward (its first projection) ran."""

    def __init__(self, transformer):
        self.calls: list[dict[str, int]] = []
        self.handles = [transformer.register_forward_pre_hook(lambda *a: self.calls.append(
            {"blocks": 0, "attn1": 0, "ffn": 0}))]
        for block in transformer.blocks:
            for module, key in ((block.norm1, "blocks"), (block.attn1.to_q, "attn1"), (block.ffn.net[0].proj, "ffn")):
                self.handles.append(module.register_forward_hook(lambda *a, key=key: self._bump(key)))

    def _bump(self, key):
        self.calls[-1][key] += 1

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _run(pipe, settings):
    events = []
    finished = run_to_completion(run_generation(pipe, settings), events.append)
    return finished, events


@pytest.mark.parametrize("cache", CACHES)
def test_each_cache_at_its_never_skip_setting_is_the_plain_run(pipe, plain, cache):
    method = get_cache_method(cache)
    finished, events = _run(pipe, _settings(cache, method.never_skips))
    records = [e for e in events if isinstance(e, StepRecord)]
    assert records and all(r.cache == cache for r in records)
    assert all(r.computed and r.work_fraction == 1.0 and r.ran == "whole call" for r in records)
    assert np.abs(finished.frames - plain.frames).max() <= FLOAT_TOL
    assert hook_names(pipe.transformer) == []


@pytest.mark.parametrize("cache", CACHES)
def test_each_cache_skips_at_a_high_setting_and_the_trace_shows_exactly_what_did_not_run(pipe, plain, cache):
    layers = len(pipe.transformer.blocks)
    counter = _CallCounter(pipe.transformer)
    try:
        finished, events = _run(pipe, _settings(cache, HIGH[cache]))
    finally:
        counter.remove()
    records = [e for e in events if isinstance(e, StepRecord)]
    counted = counter.calls[-len(records):]  # MagCache's calibration run, if any, came first
    assert len(counted) == len(records) == SMALL["steps"] * 2
    for record, count in zip(records, counted):
        assert record.blocks_run == count["blocks"], (record.step, record.branch, record.ran)
        whole = count["blocks"] == count["attn1"] == count["ffn"] == layers
        assert record.computed == whole, (record.step, record.branch, record.ran)
        assert (record.ran == "whole call") == whole
        expected_kind = "computed" if whole else ("reused" if count["blocks"] == 0 else "partial")
        assert call_kind(record) == expected_kind, (record.step, record.ran)
        assert (record.work_fraction == 1.0) == whole and 0.0 <= record.work_fraction <= 1.0
    assert any(not r.computed for r in records), f"{cache} skipped nothing at {HIGH[cache]}"
    summary = finished.summary["cache"]
    assert summary["method"] == cache and summary["work_fraction"] < 1.0

    # Compare against the plain run: a speed-up and a PSNR for every method.
    comparison = compare_runs(finished, plain, records)
    assert comparison["speedup"] > 0 and comparison["denoise_speedup"] > 0
    assert np.isfinite(comparison["psnr_db"]) and comparison["cache"]["method"] == cache

    # Nothing left behind: no hook, and the next plain run is the first one, bit for bit (same objects).
    assert hook_names(pipe.transformer) == []
    again = run_to_completion(run_generation(pipe, RunSettings(**SMALL, easycache=False)))
    assert np.array_equal(again.frames, plain.frames)


def test_magcache_calibrates_once_per_model_and_settings_and_says_so(pipe):
    MAGCACHE_CALIBRATIONS.clear()
    counter = _CallCounter(pipe.transformer)
    try:
        _, first = _run(pipe, _settings("magcache", 0.06))
        calls_first = len(counter.calls)
        _, second = _run(pipe, _settings("magcache", 0.5))  # another threshold: the same ratios
    finally:
        counter.remove()
    notes = [[e.message for e in events if isinstance(e, Note) and e.message.startswith("MagCache calibration:")]
             for events in (first, second)]
    assert "one run of 8 steps" in notes[0][0]
    assert "earlier run" in notes[1][0]
    calls = SMALL["steps"] * 2
    assert calls_first == 2 * calls  # the calibration run, then the run
    assert len(counter.calls) - calls_first == calls  # no calibration the second time
    # Another step count is another calibration.
    _, third = _run(pipe, RunSettings(**dict(SMALL, steps=6), cache="magcache"))
    assert any("one run of 6 steps" in e.message for e in third if isinstance(e, Note))


def test_feature_chunking_combines_with_the_block_caches(pipe, plain):
    finished, events = _run(pipe, _settings("fbc", 0.0, chunk_ffn=2))
    assert np.abs(finished.frames - plain.frames).max() <= FLOAT_TOL
    skipped, events = _run(pipe, _settings("fbc", HIGH["fbc"], chunk_ffn=2))
    records = [e for e in events if isinstance(e, StepRecord)]
    assert any(r.ran == f"first block only (1 of {len(pipe.transformer.blocks)})" for r in records)
    assert hook_names(pipe.transformer) == []


@pytest.mark.parametrize("config, words", [
    (AccelerationConfig(cache="fbc", compile=True), "with compile"),
    (AccelerationConfig(cache="pab", chunk_ffn=2), "feature chunking"),
    (AccelerationConfig(cache="taylorseer", chunk_ffn=2), "feature chunking"),
    (AccelerationConfig(cache="magcache"), "calibration"),
])
def test_combinations_diffusers_does_not_allow_are_refused_with_the_reason(pipe, config, words):
    reason = cache_unsupported(config, {"transformer": pipe.transformer})
    assert reason and words in reason
    with pytest.raises(LightcacheError, match=words):
        apply_lightcache(pipe, config)
    assert hook_names(pipe.transformer) == []


def test_a_family_a_diffusers_cache_cannot_serve_is_refused_before_the_run(pipe):
    two_experts = {"transformer": pipe.transformer, "transformer_2": pipe.transformer}
    assert "one state per transformer" in cache_unsupported(AccelerationConfig(cache="seacache"), two_experts)
    no_blocks = {"transformer": torch.nn.Linear(2, 2)}
    assert "takes no diffusers cache" in cache_unsupported(AccelerationConfig(cache="fbc"), no_blocks)
    assert cache_unsupported(AccelerationConfig(cache="easycache"), two_experts) is None
    # The runner refuses before its first event: nothing ran, nothing is attached.
    events = run_generation(pipe, _settings("pab", 2, chunk_ffn=2))
    with pytest.raises(LightcacheError, match="feature chunking"):
        next(events)
    assert hook_names(pipe.transformer) == []


def test_settings_check_the_cache_and_its_setting():
    assert RunSettings(**SMALL, cache="fbc").step_cache == "fbc"
    assert RunSettings(**SMALL, cache="fbc", easycache=False).step_cache == "none"
    for bad, words in (({"cache": "fastercache"}, "cache must be one of"),
                       ({"cache": "taylorseer", "cache_setting": 0}, "whole number >= 1"),
                       ({"cache": "fbc", "cache_setting": -0.1}, "number >= 0"),
                       ({"cache": "easycache", "cache_setting": 0.1}, "EasyCache's tau is the threshold")):
        with pytest.raises(LightcacheError, match=words):
            RunSettings(**SMALL, **bad).validate(_Preset())
    with pytest.raises(LightcacheError, match="give one step cache"):
        AccelerationConfig(cache="fbc", easycache=__import__("lightcache").EasyCacheConfig())


class _Preset:
    defaults: dict = {}
    lowercase_prompts = False
    takes_prompt = True
    request_fields = ()

    class limits:  # noqa: N801 - what settings read of a preset
        min_steps, max_steps, max_frames, frame_multiple, max_height, max_width, size_multiple = 2, 100, 65, 4, 256, \
            256, 16


def test_every_method_has_its_setting_range_from_the_benchmark_sweep():
    from lightcache.bench.methods import METHODS

    assert list(CACHE_METHODS) == ["easycache", "fbc", "magcache", "taylorseer", "seacache", "pab", "none"]
    keys = {"easycache": "threshold", "fbc": "threshold", "magcache": "threshold", "taylorseer": "cache_interval",
            "seacache": "threshold", "pab": "self"}
    for name, key in keys.items():
        method = CACHE_METHODS[name]
        swept = [p[key] for p in METHODS[name].full]
        assert method.minimum <= min(swept) and max(swept) <= method.maximum, name
        assert method.never_skips == method.minimum
        if method.diffusers:
            assert method.minimum <= method.default <= method.maximum
            # The default is one of the benchmark's quick settings, so the trace and the benchmark page agree.
            assert method.params() in [dict(p) for p in METHODS[name].quick]


# --- the CLI -----------------------------------------------------------------------------------------------
def _cli_overrides(*argv):
    from lightcache.cli import _settings_overrides, add_generate_arguments

    parser = argparse.ArgumentParser()
    add_generate_arguments(parser)
    return _settings_overrides(parser.parse_args([*argv, "--out", "x"]))


def test_cli_cache_flags_map_onto_the_settings():
    assert "cache" not in _cli_overrides()  # the preset's default: EasyCache
    assert _cli_overrides("--cache", "none")["easycache"] is False
    assert _cli_overrides("--no-easycache").get("easycache") is False
    assert _cli_overrides("--cache", "fbc", "--cache-setting", "0.15") == {
        **_cli_overrides("--cache", "fbc"), "cache_setting": 0.15}
    assert _cli_overrides("--cache-setting", "0.2")["threshold"] == 0.2  # EasyCache's setting is tau
    with pytest.raises(LightcacheError, match="cannot go with --cache fbc"):
        _cli_overrides("--no-easycache", "--cache", "fbc")
    with pytest.raises(LightcacheError, match="give one"):
        _cli_overrides("--threshold", "0.1", "--cache-setting", "0.2")
    with pytest.raises(SystemExit):
        _cli_overrides("--cache", "FirstBlockCache")  # the CLI takes the exact names


def test_cli_compare_reports_speedup_psnr_and_the_measured_work(pipe, tmp_path):
    import json

    from lightcache.cli import generate_to_dir

    summary = generate_to_dir(pipe, "tiny", _settings("pab", HIGH["pab"]), tmp_path, compare_baseline=True)
    assert summary["speedup"] > 0 and isinstance(summary["psnr_db"], float)
    assert summary["cache"]["method"] == "pab" and summary["cache"]["calls_partial"] > 0
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert {r["cache"] for r in trace} == {"pab"} and any(r["ran"].startswith("all ") and "skipped" in r["ran"]
                                                          for r in trace)


# --- the app -----------------------------------------------------------------------------------------------
def test_app_form_takes_the_cache_by_label_or_name_and_names_bad_values():
    from lightcache.app.form import cache_setting_control, initial_values, parse_request

    values = dict(initial_values("tiny"), steps=8, warmup=2, frames=5, height=32, width=32)
    job = parse_request(dict(values, cache="TaylorSeer", cache_setting=3), device="cpu")
    assert job.settings.step_cache == "taylorseer" and job.settings.cache_setting == 3
    assert job.plain_settings.step_cache == "none"
    assert parse_request(dict(values, cache="none"), device="cpu").settings.step_cache == "none"
    # The hidden setting control is not read for EasyCache: tau is its setting.
    assert parse_request(dict(values, cache="easycache", cache_setting=2), device="cpu").settings.cache_setting is None
    with pytest.raises(LightcacheError, match="Cache method: choose one of EasyCache, FirstBlockCache"):
        parse_request(dict(values, cache="fastercache"), device="cpu")
    with pytest.raises(LightcacheError, match="Cache setting: PAB's skip range"):
        parse_request(dict(values, cache="pab", cache_setting=0.5), device="cpu")
    control = cache_setting_control("magcache")
    assert control["label"].startswith("MagCache threshold (0-0.5") and control["visible"]
    assert "retention_ratio 0.2" in control["info"]
    assert not cache_setting_control("easycache")["visible"]


def test_app_compare_works_for_a_diffusers_cache(pipe, tmp_path):
    from lightcache.app.form import initial_values, parse_request
    from lightcache.app.jobs import stream_job
    from lightcache.app.view import comparison_markdown
    from lightcache.plots import trace_figure

    values = dict(initial_values("tiny"), steps=8, warmup=2, frames=5, height=32, width=32, compare=True)
    job = parse_request(dict(values, cache="fbc", cache_setting=HIGH["fbc"]), device="cpu")
    updates = list(stream_job(pipe, job, str(tmp_path)))
    comparison = next(u.comparison for u in updates if u.comparison is not None)
    assert comparison["speedup"] > 0 and np.isfinite(comparison["psnr_db"])
    text = comparison_markdown(comparison)
    assert "FirstBlockCache threshold=5" in text and "block work run (measured)" in text
    accelerated = [u.event for u in updates if u.run == "accelerated" and u.event is not None]
    fig = trace_figure(accelerated)
    partial = next(t for t in fig.data if t.name == "partial")
    records = [e for e in accelerated if isinstance(e, StepRecord)]
    assert sorted(zip(partial.x, partial.y)) == sorted((r.step, r.branch) for r in records
                                                       if call_kind(r) == "partial")
    assert any("ran: first block only" in row[3] for row in partial.customdata)
    assert any(t.name == "block work run, cond" for t in fig.data)
    assert isinstance(accelerated[0], RunStarted)


def test_app_dropdown_offers_every_cache_and_the_setting_control_follows_it():
    from lightcache.app.layout import cache_choices, cache_updates

    assert [label for label, _ in cache_choices()] == ["EasyCache", "FirstBlockCache", "MagCache", "TaylorSeer",
                                                       "SeaCache", "PAB", "none"]
    control, tau, warmup = cache_updates("taylorseer")
    assert control["label"].startswith("TaylorSeer interval (1-4") and control["visible"] and control["step"] == 1
    assert tau["visible"] is False and warmup["visible"] is False
    control, tau, _ = cache_updates("easycache")
    assert control["visible"] is False and tau["visible"] is True
