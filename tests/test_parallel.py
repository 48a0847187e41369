"""Context parallelism on two CPU processes (gloo): diffusers' Ulysses and ring attention under lightcache.

One pair of processes (spawned once for the module, meeting through a file, every collective bounded by the process
group's timeout) runs every scenario and leaves its results in a folder; the tests compare them with a
single-process run of a separately built pipeline with the same weights (within ``FLOAT_TOL``) and across the two
processes. The command line is run once under torchrun.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FLOAT_TOL, PATIENCE_S

from lightcache.errors import LightcacheError
from lightcache.events import StepRecord
from lightcache.parallel import (
    CONTEXT_PARALLEL_CLASSES, ParallelConfig, apply_context_parallel, check_shape, unsupported_with_context_parallel,
)
from lightcache.parallel_run import DECISION_FIELDS
from lightcache.runner import run_generation, run_to_completion
from lightcache.settings import RunSettings
from lightcache.tiny import build_tiny_pipeline
from lightcache.tiny.variants import build_tiny_variant

ROOT = Path(__file__).resolve().parent.parent
WORLD = 2
#: Every collective of the spawned processes fails after this many seconds instead of waiting for ever.
COLLECTIVE_TIMEOUT_S = 60

BASE = RunSettings(prompt="a red circle moving right", seed=3, steps=4, frames=5, height=32, width=32,
                   guidance_scale=5.0, warmup=1, threshold=0.0, max_sequence_length=16)
A14B = dataclasses.replace(BASE, steps=8, threshold=1e9)  # reuses every step it may, in both experts
#: name -> (mode, settings of process 0, settings of process 1)
SCENARIOS = {
    "ulysses-tau0": ("ulysses", BASE, BASE),
    "ring-reusing-sliced": ("ring", *[dataclasses.replace(BASE, steps=5, threshold=0.3, sliced_decode=True)] * 2),
    # Process 1 would reuse every step it may, process 0 none: left alone, process 1 would skip the collectives.
    "disagreeing": ("ulysses", BASE, dataclasses.replace(BASE, threshold=1e9)),
}


# --- the two processes ---------------------------------------------------------------------------------------
def _process(rank: int, rendezvous: str, out_dir: str) -> None:
    """One of the two processes: every scenario on one pipeline, results to ``out_dir/rank<r>.pt``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)  # two processes share the machine's cores
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch's deprecations inside diffusers' collectives
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    from lightcache.parallel import process_group
    from lightcache.parallel_run import run_parallel

    native = _AttentionBackendRegistry._backends[AttentionBackendName.NATIVE]
    results: dict = {"scenarios": {}}
    with process_group("cpu", timeout_s=COLLECTIVE_TIMEOUT_S, init_method=rendezvous) as group:
        pipe = build_tiny_pipeline(seed=0)
        for name, (mode, *per_process) in SCENARIOS.items():
            with apply_context_parallel(pipe, ParallelConfig(mode)) as parallel:
                events = list(run_generation(pipe, per_process[rank]))
            results["scenarios"][name] = {
                "frames": run_to_completion(iter(events)).frames, "summary": parallel.summary(),
                "records": [e.to_dict() for e in events if isinstance(e, StepRecord)], "clean": _clean(pipe, native),
            }
        with apply_context_parallel(pipe, ParallelConfig("ring")):
            result = run_parallel(pipe, group, dataclasses.replace(BASE, steps=2))
            results["run_parallel"] = None if result is None else {
                "parallel": result.summary["parallel"],
                "series": sorted({k for e in result.timeline if e["event"] == "MemorySample" for k in e["values"]}),
            }
            try:  # 3 tokens cannot be split in two: refused on both processes alike, before any collective
                pipe.transformer(torch.zeros(1, 4, 1, 2, 6), torch.tensor([500]), torch.zeros(1, 4, 32))
                results["odd_tokens"] = None
            except LightcacheError as exc:
                results["odd_tokens"] = str(exc)
        results["clean_at_end"] = _clean(pipe, native)
        # Two experts (Wan2.2 A14B): both split over one device mesh, EasyCache's one state across the switch.
        experts = build_tiny_variant("wan2.2-t2v-a14b")
        with apply_context_parallel(experts, ParallelConfig("ulysses")):
            events = list(run_generation(experts, A14B))
        results["a14b"] = {"frames": run_to_completion(iter(events)).frames,
                           "records": [e.to_dict() for e in events if isinstance(e, StepRecord)]}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def _clean(pipe, native) -> bool:
    """Nothing of context parallelism or lightcache is left on the pipeline, and diffusers' native attention is its
    own again."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    transformer = pipe.transformer
    hooks = [n for m in transformer.modules() for n in (getattr(getattr(m, "_diffusers_hook", None), "hooks", {}))]
    processors = [getattr(m, "processor", None) for m in transformer.modules()]
    return (not hooks and transformer._parallel_config is None
            and all(getattr(p, "_parallel_config", None) is None for p in processors)
            and not transformer._forward_pre_hooks
            and _AttentionBackendRegistry._backends[AttentionBackendName.NATIVE] is native
            and getattr(pipe, "_lightcache_context_parallel", None) is None)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both processes' results; spawned once, bounded by the process group's timeout (and a guard here)."""
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("parallel")
    rendezvous = f"file://{folder / 'rendezvous'}"
    context = mp.start_processes(_process, args=(rendezvous, str(folder)), nprocs=WORLD, join=False,
                                 start_method="spawn")
    guard = time.monotonic() + 4 * PATIENCE_S
    while not context.join(timeout=max(guard - time.monotonic(), 0)):  # raises if a process failed
        if time.monotonic() >= guard:
            for process in context.processes:
                process.kill()
            pytest.fail("the two processes did not finish (a collective should have timed out first)")
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single():
    """The same pipeline in one process (built separately, so compared within FLOAT_TOL)."""
    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def plain(single):
    """The plain pipeline's video for BASE, every acceleration off."""
    return _plain(single, BASE)


def _plain(pipe, settings: RunSettings) -> np.ndarray:
    out = pipe(prompt=settings.prompt, negative_prompt=settings.negative_prompt, height=settings.height,
               width=settings.width, num_frames=settings.frames, num_inference_steps=settings.steps,
               guidance_scale=settings.guidance_scale, generator=torch.Generator().manual_seed(settings.seed),
               output_type="np", max_sequence_length=settings.max_sequence_length)
    return np.asarray(out.frames[0], dtype=np.float32)


def _decisions(records) -> list[dict]:
    return [{k: r.get(k) for k in DECISION_FIELDS} for r in records]


# --- two processes against one --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ulysses-tau0", "disagreeing"])
def test_two_processes_match_the_plain_pipeline(ranks, plain, name):
    for rank in ranks:
        scenario = rank["scenarios"][name]
        assert scenario["frames"].shape == plain.shape
        assert np.abs(scenario["frames"] - plain).max() <= FLOAT_TOL
        assert all(r["computed"] for r in scenario["records"])
        assert scenario["clean"]


def test_ring_with_reuse_and_sliced_decoding_matches_one_process(ranks, single):
    settings = SCENARIOS["ring-reusing-sliced"][1]
    events = list(run_generation(single, settings))
    alone = run_to_completion(iter(events))
    records = [e.to_dict() for e in events if isinstance(e, StepRecord)]
    assert alone.summary["calls_reused"] > 0  # the reuse path (no transformer, no collective) is exercised
    for rank in ranks:
        scenario = rank["scenarios"]["ring-reusing-sliced"]
        assert np.abs(scenario["frames"] - alone.frames).max() <= FLOAT_TOL
        got, want = _decisions(scenario["records"]), _decisions(records)
        assert [(r["step"], r["branch"], r["computed"]) for r in got] == [
            (r["step"], r["branch"], r["computed"]) for r in want]
        for a, b in zip(got, want):
            for field in ("eps", "error", "k"):
                assert (a[field] is None) == (b[field] is None)
                if a[field] is not None:
                    assert a[field] == pytest.approx(b[field], rel=1e-3, abs=1e-6)
        assert scenario["summary"]["cpu_lse_attention"] is True
        assert scenario["clean"]


@pytest.mark.parametrize("name", list(SCENARIOS)[:2])
def test_both_processes_have_the_same_trace_and_video(ranks, name):
    first, second = (rank["scenarios"][name] for rank in ranks)
    assert _decisions(first["records"]) == _decisions(second["records"])
    assert len(first["records"]) == 2 * SCENARIOS[name][1].steps
    assert np.array_equal(first["frames"], second["frames"])  # both gather the same pieces of every output


def test_a_forced_disagreement_is_settled_not_hung(ranks):
    """Process 1 would reuse, process 0 compute: both compute every call (the run finished, so nothing hung; a
    process left in a collective would have failed the spawn after the group's timeout)."""
    deciding, overruled = (rank["scenarios"]["disagreeing"] for rank in ranks)
    assert deciding["summary"]["decisions_overruled_here"] == 0
    assert overruled["summary"]["decisions_overruled_here"] > 0
    assert overruled["summary"]["decisions_agreed"] == 2 * BASE.steps
    reasons = [r["reason"] for r in overruled["records"] if "agreed across processes" in r["reason"]]
    assert reasons and all(r.startswith("computed") for r in reasons)


def test_only_process_zero_gets_the_outputs_with_every_process_memory(ranks):
    assert ranks[1]["run_parallel"] is None
    result = ranks[0]["run_parallel"]
    assert result["series"] == ["rss (process 0)", "rss (process 1)"]
    assert result["parallel"]["decisions_identical_across_processes"] is True
    assert len(result["parallel"]["peak_bytes_by_process"]) == WORLD


def test_two_experts_split_over_one_mesh_match_one_process(ranks):
    events = list(run_generation(build_tiny_variant("wan2.2-t2v-a14b"), A14B))
    alone = run_to_completion(iter(events))
    records = [e.to_dict() for e in events if isinstance(e, StepRecord)]
    assert {r["denoiser"] for r in records if not r["computed"]} == {"transformer", "transformer_2"}
    for rank in ranks:
        assert np.abs(rank["a14b"]["frames"] - alone.frames).max() <= FLOAT_TOL
        assert [(r["denoiser"], r["computed"]) for r in rank["a14b"]["records"]] == [
            (r["denoiser"], r["computed"]) for r in records]


def test_a_shape_that_cannot_be_split_is_refused_on_every_process(ranks):
    for rank in ranks:
        assert "3 transformer tokens, not a multiple of 2" in rank["odd_tokens"]
        assert rank["clean_at_end"]


# --- refusals in one process ----------------------------------------------------------------------------------
def test_the_classes_with_a_plan_are_diffusers_own():
    import diffusers

    names = [n for n in dir(diffusers) if n.endswith("Model") or "Transformer" in n]
    planned = sorted(n for n in names if getattr(getattr(diffusers, n, None), "_cp_plan", None) is not None)
    assert tuple(planned) == CONTEXT_PARALLEL_CLASSES


def test_a_transformer_without_a_plan_is_refused_before_anything(tiny_pipe):
    from diffusers import WanTransformer3DModel

    class NoPlan(WanTransformer3DModel):
        _cp_plan = None

    tiny_pipe.transformer.__class__ = NoPlan
    with pytest.raises(LightcacheError, match="NoPlan.*no context-parallel plan.*WanTransformer3DModel"):
        apply_context_parallel(tiny_pipe, "ulysses")
    assert getattr(tiny_pipe, "_lightcache_context_parallel", None) is None


def test_without_a_process_group_it_says_how_to_launch(tiny_pipe):
    with pytest.raises(LightcacheError, match="torchrun --nproc-per-node N"):
        apply_context_parallel(tiny_pipe, "ring")
    assert getattr(tiny_pipe, "_lightcache_context_parallel", None) is None


@pytest.mark.parametrize("tokens, heads, mode, message", [
    (75, 2, "ring", "75 transformer tokens, not a multiple of 2"),
    (76, 3, "ulysses", "3 heads, not a multiple of 2"),
])
def test_shape_limits(tokens, heads, mode, message):
    with pytest.raises(LightcacheError, match=message):
        check_shape(mode, 2, tokens, heads)
    check_shape("ring", 2, 76, 3)  # ring splits tokens only


def _handle_without_processes(pipe, mode: str, world_size: int):
    """What apply_context_parallel would attach for ``world_size`` processes, without turning anything on: enough
    for the checks that read it."""
    from lightcache.parallel import ContextParallel

    return ContextParallel(pipe, ParallelConfig(mode), {"transformer": pipe.transformer}, world_size)


@pytest.mark.parametrize("mode, world_size, message", [
    ("ulysses", 3, "2 heads, not a multiple of 3"),
    ("ring", 5, "48 transformer tokens, not a multiple of 5"),
])
def test_a_request_is_checked_against_the_split_before_it_runs(tiny_pipe, mode, world_size, message):
    settings = dataclasses.replace(BASE, frames=5, height=32, width=32)  # 3 latent frames x 4 x 4 patches
    handle = _handle_without_processes(tiny_pipe, mode, world_size)
    with pytest.raises(LightcacheError, match=message):
        handle.check_request(tiny_pipe, settings)
    _handle_without_processes(tiny_pipe, "ring", 3).check_request(tiny_pipe, settings)  # 48 = 3 x 16
    with pytest.raises(LightcacheError, match="feature chunking"):
        handle.check_request(tiny_pipe, dataclasses.replace(settings, chunk_ffn=2))


def test_apply_lightcache_refuses_what_does_not_combine_and_installs_the_agreement(tiny_pipe):
    from lightcache.accelerate import AccelerationConfig, apply_lightcache
    from lightcache.techniques.easycache import EasyCacheConfig

    handle = _handle_without_processes(tiny_pipe, "ulysses", 2)
    tiny_pipe._lightcache_context_parallel = handle
    try:
        for config in (AccelerationConfig(chunk_ffn=2), AccelerationConfig(async_swap=True),
                       AccelerationConfig(compile=True)):
            with pytest.raises(LightcacheError, match="does not combine with --parallel"):
                apply_lightcache(tiny_pipe, config)
        with apply_lightcache(tiny_pipe, AccelerationConfig(easycache=EasyCacheConfig(), sliced_decode=True)) as acc:
            assert acc.easycache.config.agree == handle.agree_compute
    finally:
        tiny_pipe._lightcache_context_parallel = None


def test_strategies_that_do_not_combine_are_named():
    assert "feature chunking" in unsupported_with_context_parallel(chunk_ffn=2)
    assert "swapping" in unsupported_with_context_parallel(async_swap=True)
    assert "--compile" in unsupported_with_context_parallel(compile=True)
    assert unsupported_with_context_parallel() is None


def test_cli_refuses_parallel_without_processes_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    from lightcache.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "out"
    assert main(["generate", "--preset", "tiny", "--parallel", "ulysses", "--out", str(out), "--quiet"]) == 2
    assert "torchrun --nproc-per-node N" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["generate", "--preset", "tiny", "--parallel", "ring", "--chunk-ffn", "2", "--out", str(out),
                 "--quiet"]) == 2
    assert "feature chunking (--chunk-ffn) does not combine with --parallel" in capsys.readouterr().err
    assert main(["generate", "--preset", "tiny", "--out", str(out), "--quiet"]) == 2
    assert "without --parallel" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --- EasyCache's agreement hook, in one process -----------------------------------------------------------------
def test_an_agreement_to_compute_overrules_a_reuse(tiny_pipe):
    from lightcache.techniques.easycache import EasyCacheConfig, apply_easycache, remove_easycache

    asked: list[bool] = []

    def everyone_computes(compute: bool) -> bool:
        asked.append(compute)
        return True

    settings = dataclasses.replace(BASE, steps=6)
    plain = _plain(tiny_pipe, settings)
    hook = apply_easycache(tiny_pipe.transformer, EasyCacheConfig(threshold=1e9, warmup_steps=1,
                                                                  agree=everyone_computes))
    try:
        video = _plain(tiny_pipe, settings)
    finally:
        remove_easycache(tiny_pipe.transformer)
    assert len(asked) == 2 * settings.steps and not all(asked)  # it would have reused some calls on its own
    assert all(r.computed for r in hook.records)
    overruled = [r.reason for r in hook.records if "agreed across processes" in r.reason]
    assert len(overruled) == asked.count(False) and "(here: E < tau)" in overruled[0]
    assert np.array_equal(video, plain)  # every call computed: the plain run, on the same objects


def test_an_agreement_to_reuse_without_a_cached_transformation_is_an_error(tiny_pipe):
    from lightcache.techniques.easycache import EasyCacheConfig, apply_easycache, remove_easycache

    apply_easycache(tiny_pipe.transformer, EasyCacheConfig(threshold=0.0, agree=lambda compute: False))
    try:
        with pytest.raises(RuntimeError, match="no cached transformation"):
            _plain(tiny_pipe, BASE)
    finally:
        remove_easycache(tiny_pipe.transformer)


# --- the command line under torchrun ---------------------------------------------------------------------------
def test_torchrun_generate_writes_once_from_process_zero(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
           "-m", "lightcache", "generate", "--preset", "tiny", "--model", str(tiny_model_dir), "--device", "cpu",
           "--steps", "4", "--frames", "5", "--height", "32", "--width", "32", "--warmup", "1",
           "--threshold", "0.3", "--parallel", "ulysses", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=4 * PATIENCE_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # process 0 alone reports
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left, nothing beside it
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "timeline.html", "timeline.json", "trace.json",
                                                    "video.mp4"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parallel"]["mode"] == "ulysses" and summary["parallel"]["processes"] == WORLD
    assert summary["parallel"]["decisions_identical_across_processes"] is True
    trace = json.loads((out / "trace.json").read_text())
    assert len(trace) == 2 * 4
    timeline = json.loads((out / "timeline.json").read_text())
    series = {k for e in timeline if e["event"] == "MemorySample" for k in e["values"]}
    assert series == {"rss (process 0)", "rss (process 1)"}
