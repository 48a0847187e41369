"""The benchmark's machinery on a tiny random pipeline: what each method skips, the results schema, the reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lightcache.bench import methods as M
from lightcache.bench.harness import BenchConfig, run_benchmark
from lightcache.bench.meter import WorkMeter
from lightcache.bench.results import (
    AGGREGATE_KEYS,
    RECORD_KEYS,
    SCHEMA,
    TOP_KEYS,
    check_schema,
    dominance,
    pareto_front,
    read_results,
    write_results,
)
from lightcache.errors import LightcacheError
from lightcache.presets import load_preset
from lightcache.runner import run_generation, run_to_completion
from lightcache.settings import RunSettings

SMALL = {"steps": 10, "warmup": 2, "frames": 9, "height": 32, "width": 32}
# Settings that make every adaptive method skip on a random model (whose features change a lot between steps).
AGGRESSIVE = {
    "easycache": ({"threshold": 5.0},),
    "easycache-order1": ({"threshold": 5.0},),
    "fbc": ({"threshold": 5.0},),
    "magcache": ({"threshold": 5.0},),
    "taylorseer": ({"cache_interval": 3},),
    "seacache": ({"threshold": 5.0},),
    "pab": ({"self": 2, "cross": 2},),
    "easycache+memory": ({"threshold": 5.0, "chunk_ffn": 2},),
}


def _config(**overrides):
    values = dict(quick=True, prompts=("a red circle moving right",), overhead=False, settings=dict(SMALL),
                  sweeps=AGGRESSIVE)
    values.update(overrides)
    return BenchConfig(**values)


@pytest.fixture(scope="module")
def bench_results():
    """One quick benchmark of every method on a random tiny pipeline (a few seconds)."""
    from lightcache.tiny import build_tiny_pipeline

    return run_benchmark(build_tiny_pipeline(seed=0), load_preset("tiny"), _config(), command="test")


def _by_method(results):
    return {r["method"]: r for r in results["records"]}


# --- every method skips what it claims ---------------------------------------------------------------------
class _BlockCounter:
    """Independent of the work meter: counts block bodies that ran (their first norm is called) and attention /
    feed-forward layers that ran (their first projection is called)."""

    def __init__(self, transformer):
        self.blocks = self.attn1 = self.ffn = 0
        self.handles = []
        for block in transformer.blocks:
            self.handles.append(block.norm1.register_forward_hook(lambda *a: self._bump("blocks")))
            self.handles.append(block.attn1.to_q.register_forward_hook(lambda *a: self._bump("attn1")))
            self.handles.append(block.ffn.net[0].proj.register_forward_hook(lambda *a: self._bump("ffn")))

    def _bump(self, name):
        setattr(self, name, getattr(self, name) + 1)

    def remove(self):
        for h in self.handles:
            h.remove()


def _count(pipe, name, params, calibration=None):
    method = M.get_method(name)
    settings = RunSettings(prompt="a red circle moving right", seed=0, **SMALL, **method.settings_overrides(params))
    counter = _BlockCounter(pipe.transformer)
    method.attach(pipe, params, calibration)
    try:
        finished = run_to_completion(run_generation(pipe, settings))
    finally:
        method.detach(pipe)
        counter.remove()
    return counter, finished


@pytest.mark.parametrize("name, params", [
    *((n, AGGRESSIVE[n][0]) for n in ("easycache", "fbc", "magcache", "taylorseer", "seacache", "pab")),
    ("taylorseer", {"cache_interval": 2, "lite": True}),
])
def test_every_method_changes_the_block_calls_it_claims_to(tiny_pipe, name, params):
    layers = len(tiny_pipe.transformer.blocks)
    plain, plain_run = _count(tiny_pipe, "plain", {})
    calls = plain_run.summary["calls_computed"]
    assert plain.blocks == plain.attn1 == plain.ffn == calls * layers

    calibration = None
    if name == "magcache":
        M.attach_magcache_calibration(tiny_pipe, SMALL["steps"])
        try:
            with M.capture_magcache_calibration() as captured:
                run_to_completion(run_generation(tiny_pipe, RunSettings(prompt="a red circle moving right",
                                                                        easycache=False, **SMALL)))
        finally:
            tiny_pipe.transformer.disable_cache()
        calibration = M.combine_calibration(captured, SMALL["steps"])
    counted, run = _count(tiny_pipe, name, params, calibration)
    skips = M.get_method(name).claim(params)
    if skips == M.SKIPS_CALLS:
        assert run.summary["calls_reused"] > 0
        assert counted.blocks == run.summary["calls_computed"] * layers
    elif skips in (M.SKIPS_BLOCKS, M.SKIPS_BLOCKS_AFTER_FIRST):
        assert counted.blocks < plain.blocks
        assert counted.blocks == counted.attn1 == counted.ffn  # a skipped block skips all of itself
        if skips == M.SKIPS_BLOCKS_AFTER_FIRST:
            assert counted.blocks >= calls  # the first block always runs
    elif skips == M.SKIPS_ATTENTION:
        assert counted.blocks == plain.blocks and counted.ffn == plain.ffn
        assert counted.attn1 < plain.attn1
    elif skips == M.SKIPS_ATTENTION_FFN:
        assert counted.blocks == plain.blocks
        assert counted.attn1 < plain.attn1 and counted.ffn < plain.ffn
    # Nothing is left behind: the plain pipeline is back.
    assert M.hook_names(tiny_pipe.transformer) == []


def test_the_benchmark_reports_the_skips_it_measured(bench_results):
    records = _by_method(bench_results)
    expected = {"plain", "easycache", "easycache-order1", "fbc", "magcache", "taylorseer", "seacache", "pab",
                "easycache+memory"}
    assert set(records) == expected
    for name, record in records.items():
        check = record["skip_check"]
        assert check["holds"], (name, check)
        assert check["skipped"] == (name != "plain"), name
        assert (record["work_fraction"] < 1.0) == (name != "plain"), name
    plain = records["plain"]["counts"]
    ec = records["easycache"]
    assert ec["counts"]["transformer_bodies"] == ec["calls_computed"] < plain["transformer_bodies"]
    assert records["pab"]["counts"]["ffn_calls"] == plain["ffn_calls"]
    assert records["pab"]["counts"]["self_attention_calls"] < plain["self_attention_calls"]


def test_work_meter_counts_match_the_model_and_survive_reset(tiny_pipe):
    transformer = tiny_pipe.transformer
    x, t, text = torch.randn(1, 4, 3, 8, 8), torch.tensor([500]), torch.randn(1, 6, 32)
    with WorkMeter(transformer) as meter, torch.no_grad():
        transformer(x, t, text)
        first = meter.counts()
        meter.reset()
        assert meter.counts()["block_calls"] == 0
        transformer(x, t, text)
        transformer(x, t, text)
        second = meter.counts()
    layers = len(transformer.blocks)
    assert first["block_calls"] == layers and first["ffn_calls"] == layers
    assert second["block_calls"] == 2 * layers  # counters still live after reset()
    assert second["work_flops"] == pytest.approx(2 * first["work_flops"])
    # The feed-forward share follows the layer sizes: tokens x 2 x 2 x dim x ffn_dim per block.
    tokens = 3 * 4 * 4
    dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    ffn = tokens * 4 * dim * transformer.config.ffn_dim * layers
    assert 0 < ffn < first["work_flops"]


# --- quality: a method against itself ------------------------------------------------------------------------
def test_psnr_of_a_video_against_itself_is_reported_identical(bench_results):
    plain = _by_method(bench_results)["plain"]
    assert plain["psnr_db"] == "inf" and plain["ssim"] == 1.0
    assert plain["deterministic"]
    assert all(x["plain_identical_after_all_methods"] for x in bench_results["checks"]["leaks"])
    # A real approximation is not reported as identical.
    ec = _by_method(bench_results)["easycache"]
    assert isinstance(ec["psnr_db"], float) and math.isfinite(ec["psnr_db"]) and ec["ssim"] < 1.0


def test_tau_zero_is_reported_identical_to_plain(tiny_pipe):
    results = run_benchmark(tiny_pipe, load_preset("tiny"), _config(methods=("easycache",),
                                                                    sweeps={"easycache": ({"threshold": 0.0},)}))
    ec = _by_method(results)["easycache"]
    assert ec["psnr_db"] == "inf" and ec["calls_reused"] == 0 and ec["work_fraction"] == 1.0


# --- schema ----------------------------------------------------------------------------------------------
def test_results_schema_is_stable(bench_results, tmp_path):
    assert tuple(bench_results) == TOP_KEYS
    assert TOP_KEYS == (
        "schema", "created", "command", "environment", "preset", "model", "model_sha256", "quick", "settings", "cases",
        "methods", "skipped", "records", "aggregates", "targets", "overhead", "checks", "notes",
    )
    assert RECORD_KEYS == (
        "method", "label", "kind", "setting", "params", "case", "prompt", "seed", "repeats",
        "denoise_seconds", "end_to_end_seconds", "denoise_samples", "end_to_end_samples",
        "speedup_denoise", "speedup_end_to_end", "calls_computed", "calls_reused", "work_fraction", "counts",
        "psnr_db", "ssim", "memory", "deterministic", "skip_check",
    )
    assert AGGREGATE_KEYS == (
        "method", "label", "kind", "setting", "params", "cases", "denoise_seconds", "end_to_end_seconds",
        "speedup_denoise", "speedup_end_to_end", "work_fraction", "psnr_db", "psnr_db_min", "ssim", "peak_bytes",
        "peak_increase_bytes", "pareto",
    )
    for record in bench_results["records"]:
        assert tuple(record) == RECORD_KEYS
        assert set(record["memory"]) == {"encode", "denoise", "decode"}
        assert all(m["peak_bytes"] > 0 for m in record["memory"].values())
    for agg in bench_results["aggregates"]:
        assert tuple(agg) == AGGREGATE_KEYS and set(agg["pareto"]) == {"denoise", "end_to_end", "work"}
    path = tmp_path / "results.json"
    write_results(bench_results, path)
    again = read_results(path)
    assert again["schema"] == SCHEMA and len(again["records"]) == len(bench_results["records"])
    json.loads(path.read_text())  # strict JSON: no NaN / Infinity literals

    broken = dict(again)
    broken["records"] = [dict(again["records"][0])]
    del broken["records"][0]["psnr_db"]
    with pytest.raises(LightcacheError, match="psnr_db"):
        check_schema(broken)


# --- Pareto and targets ------------------------------------------------------------------------------------
def test_pareto_front_keeps_only_undominated_points():
    assert pareto_front([(1.0, 30.0), (2.0, 25.0), (1.5, 20.0), (2.0, 25.0)]) == [True, True, False, True]


def _agg(method, kind, speedup, psnr_db):
    return {"method": method, "kind": kind, "setting": f"s{speedup}", "speedup_denoise": speedup,
            "speedup_end_to_end": speedup, "work_fraction": 1 / speedup, "psnr_db": psnr_db}


def test_dominance_names_the_built_in_points_easycache_does_not_beat():
    aggs = [_agg("easycache", "ours", 2.0, 30.0), _agg("easycache", "ours", 3.0, 25.0),
            _agg("fbc", "diffusers", 1.5, 28.0), _agg("magcache", "diffusers", 2.5, 29.0)]
    result = dominance(aggs, "denoise")
    assert result["built_in_points"] == 2 and result["dominated"] == 1 and not result["holds"]
    (exception,) = result["exceptions"]
    assert exception["method"] == "magcache"
    assert exception["nearest_easycache"]["setting"] == "s2.0"  # the fastest EasyCache point at >= its PSNR


# --- the command line ------------------------------------------------------------------------------------
def test_cli_writes_results_table_chart_and_page(tiny_model_dir, tmp_path, capsys):
    from lightcache.cli import main

    out, doc = tmp_path / "bench", tmp_path / "docs" / "benchmarks.md"
    code = main(["bench", "--preset", "tiny", "--model", str(tiny_model_dir), "--quick", "--methods",
                 "easycache,fbc", "--prompt", "a red circle moving right", "--steps", "14", "--frames", "5", "--height", "32", "--width", "32",
                 "--overhead-size", "5x32x32", "--out", str(out), "--doc", str(doc), "--quiet"])
    assert code == 0
    results = read_results(out / "results.json")
    assert {r["method"] for r in results["records"]} == {"plain", "easycache", "fbc"}
    # 14 steps: past the tiny preset's 10 warm-up steps, so the reusing tau reuses.
    assert results["overhead"]["reuse"]["reused_calls_per_run"] > 0
    assert "| method |" in (out / "table.md").read_text()
    assert "plotly" in (out / "speed_vs_psnr.html").read_text().lower()
    page = doc.read_text()
    assert results["command"] in page and "## Targets" in page and "../bench/speed_vs_psnr.html" in page

    # Re-rendering from results.json alone gives the same page.
    doc.unlink()
    assert main(["bench", "--from-results", "--out", str(out), "--doc", str(doc), "--quiet"]) == 0
    assert doc.read_text() == page


@pytest.mark.parametrize("argv, message", [
    (["--methods", "plain,teacache"], "Unknown benchmark method 'teacache'"),
    (["--seeds", "one"], "--seeds must be comma-separated"),
    (["--frames", "10"], "frames must be of the form 4k+1"),
    (["--overhead-size", "big"], "--overhead-size must look like"),
])
def test_cli_rejects_bad_input_with_one_line(tiny_model_dir, tmp_path, capsys, argv, message):
    from lightcache.cli import main

    code = main(["bench", "--preset", "tiny", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_bench_config_validates():
    with pytest.raises(LightcacheError, match="repeats"):
        BenchConfig(repeats=0)
    with pytest.raises(LightcacheError, match="seeds"):
        BenchConfig(seeds=(-1,))
    with pytest.raises(LightcacheError, match="empty"):
        BenchConfig(sweeps={"fbc": ()})


def test_magcache_calibration_is_read_from_diffusers_report(tiny_pipe):
    M.attach_magcache_calibration(tiny_pipe, SMALL["steps"])
    try:
        with M.capture_magcache_calibration() as captured:
            finished = run_to_completion(run_generation(
                tiny_pipe, RunSettings(prompt="a red circle moving right", easycache=False, **SMALL)))
    finally:
        tiny_pipe.transformer.disable_cache()
    assert len(captured) == 2  # cond and uncond
    ratios = M.combine_calibration(captured, SMALL["steps"])
    assert len(ratios) == SMALL["steps"] and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    plain = run_to_completion(run_generation(tiny_pipe, RunSettings(prompt="a red circle moving right",
                                                                    easycache=False, **SMALL)))
    assert np.array_equal(finished.frames, plain.frames)  # calibration computes everything


def test_memory_strategies_method_runs(tiny_pipe):
    results = run_benchmark(tiny_pipe, load_preset("tiny"), _config(
        methods=("easycache+memory",), sweeps={"easycache+memory": ({"threshold": 5.0, "chunk_ffn": 2},)}))
    assert {r["method"] for r in results["records"]} == {"plain", "easycache+memory"} and results["skipped"] == []
    record = next(r for r in results["records"] if r["method"] == "easycache+memory")
    assert record["skip_check"]["holds"] and record["calls_reused"] > 0


def test_either_easycache_order_counts_for_dominance_and_is_named_when_nearest():
    aggs = [_agg("easycache", "ours", 3.0, 25.0), _agg("easycache-order1", "ours", 2.0, 40.0),
            _agg("fbc", "diffusers", 1.5, 35.0), _agg("magcache", "diffusers", 2.5, 45.0)]
    result = dominance(aggs, "denoise")
    assert result["dominated"] == 1  # fbc, by the order-1 point alone
    (exception,) = result["exceptions"]
    assert exception["method"] == "magcache"
    assert exception["nearest_easycache"]["setting"] == "order 1, s2.0"


def test_dominance_per_case_judges_each_prompt_and_seed_on_its_own():
    from lightcache.bench.results import dominance_per_case

    def rec(case, method, kind, speedup, psnr_db):
        return dict(_agg(method, kind, speedup, psnr_db), case=case, prompt=f"prompt {case}", seed=int(case[-1]))

    records = [rec("p0-s0", "easycache", "ours", 2.0, 40.0), rec("p0-s0", "fbc", "diffusers", 1.5, 35.0),
               rec("p1-s1", "easycache", "ours", 2.0, 30.0), rec("p1-s1", "fbc", "diffusers", 1.5, 35.0)]
    by_case = {d["case"]: d for d in dominance_per_case(records, "denoise")}
    assert by_case["p0-s0"]["dominated"] == 1 and by_case["p1-s1"]["dominated"] == 0
    assert by_case["p1-s1"]["seed"] == 1


def test_the_order_one_method_runs_easycache_at_order_one():
    from lightcache.bench.methods import get_method

    overrides = get_method("easycache-order1").settings_overrides({"threshold": 0.05})
    assert overrides == {"easycache": True, "threshold": 0.05, "easycache_order": 1}
    assert "easycache_order" not in get_method("easycache").settings_overrides({"threshold": 0.05})


def test_the_page_says_when_the_machine_was_loaded():
    from lightcache.bench.report import load_sentence

    busy = load_sentence({"load_average_start": [6.0, 5.0, 4.0], "load_average_end": [7.0, 6.0, 5.0],
                          "cpu_count": 2})
    quiet = load_sentence({"load_average_start": [0.1, 0.2, 0.2], "load_average_end": [0.3, 0.2, 0.2],
                           "cpu_count": 2})
    assert "loaded by other work" in busy and "6.00 / 5.00 / 4.00" in busy
    assert "quiet" in quiet and "loaded" not in quiet
    assert load_sentence({}) == ""
