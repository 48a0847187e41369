"""torch.compile together with the accelerations, on the CPU with inductor.

One tiny Wan2.2 A14B pipeline (two experts) is compiled once for the module (``runs``): eager and compiled runs of
4 and 8 steps with EasyCache and feature chunking on, then a run with compile off again. The tests compare them with
each other (same pipeline objects, same seed) and read torch's own compile counters: the compiled runs match the
eager ones within float rounding (the video, and each transformer block's output, hooked in both), doubling the
steps compiles nothing more, only the first call of the first run compiles and the trace says so, and removal
leaves an eager pipeline. A counting backend (the captured graph run as it is) shows the compiled code runs on
every computed call of both experts, and stays one graph beneath diffusers' group offloading. The refusals and
the form, view and figure parts need no compiling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lightcache.accelerate import AccelerationConfig, apply_lightcache
from lightcache.app.form import initial_values, parse_request
from lightcache.app.view import call_counts, comparison_markdown, stages_markdown, status_markdown
from lightcache.comparison import ACCELERATIONS_OFF, call_time_ratio, compare_runs
from lightcache.techniques.compile import (
    COMPILE_HOOK, CompileConfig, check_compiler_available, compile_activity, find_repeated_blocks,
)
from lightcache.errors import LightcacheError
from lightcache.events import Note, RunFinished, RunStarted, StageFinished, StageStarted, StepRecord
from lightcache.plots import timeline_figure, trace_figure
from lightcache.presets import load_preset
from lightcache.runner import run_generation
from lightcache.settings import RunSettings
from lightcache.techniques.easycache import EasyCacheConfig
from lightcache.tiny import build_tiny_pipeline
from lightcache.tiny.variants import build_tiny_variant

#: Compiled against eager video, pixel values in [0, 1]: inductor fuses and reorders float arithmetic (the runs
#: here differ by about 1e-6).
COMPILE_TOL = 1e-4
#: Compiled against eager output of each transformer block, as a fraction of the eager output's largest magnitude
#: (the runs here differ by about 3e-7, float32 rounding). The video bound above lets a block 0.1 % off through
#: (a planted one moved the video by 3e-5): this bound is read where compile acts, and such a block fails it 100x over.
BLOCK_TOL = 1e-5
EXPERTS = ("transformer", "transformer_2")


def _no_compiler() -> str | None:
    try:
        check_compiler_available("inductor", "cpu")
    except LightcacheError as exc:
        return str(exc)
    return None


# The module's one inductor compile takes about 45 s on two busy CPU cores with a cold cache: marked slow (it still
# runs with the rest). Without a C++ compiler inductor cannot run at all; the skip gives lightcache's own message.
def slow(test):
    reason = _no_compiler()
    return pytest.mark.skipif(reason is not None, reason=reason or "")(pytest.mark.slow(test))


def _settings(**overrides) -> RunSettings:
    values = dict(prompt="a red circle moving right", seed=3, steps=4, frames=5, height=32, width=32,
                  guidance_scale=5.0, warmup=1, threshold=0.2, max_sequence_length=16, chunk_ffn=2)
    guidance_2 = overrides.pop("guidance_scale_2", 3.0)  # Wan's two experts: a family field of the request
    values.update(overrides)
    return RunSettings(**values, extra={} if guidance_2 is None else {"guidance_scale_2": guidance_2})


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


def _records(events) -> list[StepRecord]:
    return [e for e in events if isinstance(e, StepRecord)]


def _decisions(events) -> list[tuple]:
    return [(r.step, r.branch, r.denoiser, r.computed, r.reason) for r in _records(events)]


def _assert_clean(pipe) -> None:
    """Nothing lightcache attached is left, and no block was compiled in place."""
    for name in EXPERTS:
        for sub_name, sub in getattr(pipe, name).named_modules():
            registry = getattr(sub, "_diffusers_hook", None)
            assert registry is None or not registry.hooks, f"hooks left on {name}.{sub_name}: {list(registry.hooks)}"
            assert getattr(sub, "_compiled_call_impl", None) is None, f"{name}.{sub_name} is compiled"
    assert getattr(pipe, "_lightcache_acceleration", None) is None


def _relative_error(compiled: torch.Tensor, eager: torch.Tensor) -> float:
    """Largest difference as a fraction of the eager tensor's largest magnitude."""
    return float((compiled - eager).abs().max() / eager.abs().max())


@contextlib.contextmanager
def _block_outputs(pipe, scale_first: float = 1.0):
    """Every transformer block's output in call order, both experts. A forward hook on the block runs outside the
    compiled region (which is the forward beneath the block's compile hook), so it sees what the compiled code
    returned. ``scale_first`` scales the first output (a planted error, for the test that the bound catches it)."""
    outputs: list[torch.Tensor] = []

    def record(module, args, output):
        if not outputs:
            output = output * scale_first
        outputs.append(output.detach().clone())
        return output

    handles = [block.register_forward_hook(record) for name in EXPERTS
               for block in find_repeated_blocks(getattr(pipe, name))]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


class _Run(SimpleNamespace):
    events: list
    frames: np.ndarray
    summary: dict
    block_outputs: list  # every transformer block's output, in call order
    frames_compiled: int  # dynamo frames converted during the run (each compile and each recompile is one)
    graphs_compiled: int


@pytest.fixture(scope="module")
def runs():
    # Counts start from zero whatever this process compiled before.
    torch._dynamo.reset()
    pipe = build_tiny_variant("wan2.2-t2v-a14b", seed=0)

    def run(settings: RunSettings, scale_first: float = 1.0) -> _Run:
        before, graphs = compile_activity(), _graphs()
        with _block_outputs(pipe, scale_first) as outputs:
            events = list(run_generation(pipe, settings))
        finished = events[-1]
        assert isinstance(finished, RunFinished)
        return _Run(events=events, frames=finished.frames, summary=finished.summary, block_outputs=outputs,
                    frames_compiled=compile_activity().since(before).frames, graphs_compiled=_graphs() - graphs)

    four, eight = _settings(steps=4), _settings(steps=8)
    result = SimpleNamespace(pipe=pipe, graph_breaks_before=_graph_breaks())
    result.eager4 = run(four)
    result.compiled4 = run(dataclasses.replace(four, compile=True))
    result.compiled8 = run(dataclasses.replace(eight, compile=True))
    result.eager8 = run(eight)
    # The same compiled run with its first block's output 0.1 % off: what the block bound must catch.
    result.compiled4_planted = run(dataclasses.replace(four, compile=True), scale_first=1.001)
    result.eager4_again = run(four)  # compile off again, on the same pipeline
    result.graph_breaks = _graph_breaks() - result.graph_breaks_before
    return result


# --- compiled runs with EasyCache and feature chunking ---------------------------------------------------------
@slow
def test_compiled_runs_match_the_eager_runs(runs):
    for compiled, eager in ((runs.compiled4, runs.eager4), (runs.compiled8, runs.eager8)):
        assert _decisions(compiled.events) == _decisions(eager.events)
        assert compiled.frames.shape == eager.frames.shape
        assert np.abs(compiled.frames - eager.frames).max() < COMPILE_TOL
    # Both features were really on: calls were reused, both experts ran, the token-wise layers were chunked.
    records = _records(runs.compiled8.events)
    assert any(not r.computed for r in records)
    assert {r.denoiser for r in records if r.computed} == set(EXPERTS)
    assert runs.compiled8.summary["strategies"]["feature_chunking"]["active"]


@slow
def test_each_compiled_block_matches_its_eager_output(runs):
    for compiled, eager in ((runs.compiled4, runs.eager4), (runs.compiled8, runs.eager8)):
        # Same decisions (above), so the same block calls in the same order: 2 blocks per computed call.
        computed = sum(r.computed for r in _records(eager.events))
        assert len(compiled.block_outputs) == len(eager.block_outputs) == 2 * computed
        errors = [_relative_error(c, e) for c, e in zip(compiled.block_outputs, eager.block_outputs)]
        assert max(errors) < BLOCK_TOL, f"worst block {max(errors):.2e} of its output's largest magnitude"


@slow
def test_a_block_one_tenth_of_a_percent_off_fails_the_block_bound(runs):
    planted = runs.compiled4_planted.block_outputs
    assert _relative_error(planted[0], runs.eager4.block_outputs[0]) > BLOCK_TOL
    assert _relative_error(planted[0], runs.compiled4.block_outputs[0] * 1.001) < BLOCK_TOL  # the plant, no more


@slow
def test_no_recompilation_per_step(runs):
    assert runs.compiled4.frames_compiled >= 1 and runs.compiled4.graphs_compiled >= 1, "nothing was compiled"
    # Twice the steps (so every per-step input changes more often, the timestep above all) compile nothing new:
    # the graphs of the 4-step run serve every call of the 8-step run, in both experts.
    assert runs.compiled8.frames_compiled == 0 and runs.compiled8.graphs_compiled == 0
    # Within the 4-step run only its first call compiled: no later step, branch or the other expert did.
    compiling = [(r.step, r.branch, r.denoiser) for r in _records(runs.compiled4.events) if r.compiling]
    assert compiling == [(0, "cond", "transformer")]
    assert runs.graph_breaks == 0, "a block's graph was split"


@slow
def test_the_trace_and_the_summary_show_the_compile_warm_up(runs):
    first = _records(runs.compiled4.events)[0]
    assert first.compiling and first.compile_ms > 0
    assert not any(r.compiling for r in _records(runs.compiled4.events)[1:])
    assert all(not r.compiling and r.compile_ms == 0 for r in _records(runs.eager4.events))
    summary = runs.compiled4.summary["compile"]
    assert summary["requested"] and summary["active"]
    assert summary["blocks"] == {"transformer": 2, "transformer_2": 2}
    assert summary["calls_compiling"] == 1
    assert summary["compile_seconds"] == pytest.approx(first.compile_ms / 1000, abs=1e-6)
    assert summary["warmup_call_seconds"] == pytest.approx(first.ms / 1000, abs=1e-6)
    assert summary["call_ms_after_warmup"] is not None
    assert runs.compiled8.summary["compile"]["calls_compiling"] == 0
    assert runs.eager4.summary["compile"] == dict(requested=False, active=False, calls_compiling=0,
                                                  warmup_call_seconds=0.0, compile_seconds=0.0,
                                                  call_ms_after_warmup=runs.eager4.summary["compile"]
                                                  ["call_ms_after_warmup"])
    notes = [e.message for e in runs.compiled4.events if isinstance(e, Note)]
    assert any(n.startswith("torch.compile: 4 transformer blocks compiled") for n in notes)
    # The trace written to disk carries the flag.
    assert first.to_dict()["compiling"] is True


@slow
def test_compile_off_again_is_the_eager_run_exactly(runs):
    """Toggling compile changes only compile: the next run without it runs no compiled code and gives the same
    video, bit for bit, as the eager run before compile was ever on."""
    assert runs.eager4_again.frames_compiled == 0 and runs.eager8.frames_compiled == 0
    np.testing.assert_array_equal(runs.eager4_again.frames, runs.eager4.frames)
    assert _decisions(runs.eager4_again.events) == _decisions(runs.eager4.events)
    _assert_clean(runs.pipe)


@slow
def test_every_strategy_on_with_compile_matches_the_same_run_eager(runs):
    # On the CPU swapping is a no-op (said in a note); sliced decoding runs outside the transformer.
    every = _settings(async_swap=True, sliced_decode=True)
    eager = list(run_generation(runs.pipe, every))
    before = compile_activity()
    compiled = list(run_generation(runs.pipe, dataclasses.replace(every, compile=True)))
    assert compile_activity().since(before).frames == 0, "the chunked blocks' graph is already compiled"
    assert _decisions(compiled) == _decisions(eager)
    assert np.abs(compiled[-1].frames - eager[-1].frames).max() < COMPILE_TOL
    strategies = compiled[-1].summary["strategies"]
    assert strategies["async_swap"]["requested"] and strategies["sliced_decode"]["active"]
    _assert_clean(runs.pipe)


@slow
def test_cli_compile_flag(runs, tiny_model_dir, tmp_path, capsys):
    from lightcache.cli import main

    out = tmp_path / "run"
    code = main(["generate", "--model", str(tiny_model_dir), "--prompt", "a red circle moving right", "--steps", "4",
                 "--frames", "5", "--height", "32", "--width", "32", "--warmup", "1", "--chunk-ffn", "2",
                 "--compile", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    trace = json.loads((out / "trace.json").read_text())
    assert summary["settings"]["compile"] is True and summary["compile"]["active"]
    assert summary["compile"]["blocks"] == {"transformer": 2}
    assert all("compiling" in r and "compile_ms" in r for r in trace)
    assert sum(r["compiling"] for r in trace) == summary["compile"]["calls_compiling"]
    assert "torch.compile warm-up" in capsys.readouterr().out


# --- the compiled code runs on every computed call, beneath group offloading ----------------------------------
class _CountingBackend:
    """A torch.compile backend that runs each captured graph as it is, counting graphs and their executions."""

    __name__ = "counting"

    def __init__(self):
        self.graphs = 0
        self.executions = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1

        def run(*args):
            self.executions += 1
            return graph_module(*args)

        return run


def _call_pipe(pipe, steps=6):
    return pipe("a red circle moving right", negative_prompt="", num_inference_steps=steps, height=32, width=32,
                num_frames=5, guidance_scale=5.0, guidance_scale_2=3.0, max_sequence_length=16,
                generator=torch.Generator().manual_seed(3), output_type="np").frames[0]


@pytest.mark.parametrize("group_offload", [False, True], ids=["hooks", "hooks+group-offload"])
def test_compiled_blocks_run_on_every_computed_call(group_offload):
    """Each computed call of either expert runs the captured graph once per block; reused calls run none. With
    diffusers' group offloading added on top (CPU to CPU here), the offloading stays outside the graph: still one
    graph and no graph break, where compiling the block's whole __call__ would trace it and break around it."""
    from diffusers.hooks.group_offloading import _GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER

    pipe = build_tiny_variant("wan2.2-t2v-a14b", seed=0)
    config = dict(easycache=EasyCacheConfig(threshold=1.0, warmup_steps=1), chunk_ffn=2)
    with apply_lightcache(pipe, AccelerationConfig(**config)):
        eager = _call_pipe(pipe)
    backend = _CountingBackend()
    breaks = _graph_breaks()
    acc = apply_lightcache(pipe, AccelerationConfig(**config, compile=CompileConfig(backend=backend)))
    try:
        if group_offload:
            for name in EXPERTS:
                getattr(pipe, name).enable_group_offload(
                    onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                    offload_type="block_level", num_blocks_per_group=1)
        compiled = _call_pipe(pipe)
        records = list(acc.records)
        if group_offload:
            with pytest.raises(RuntimeError, match="Remove the hooks applied after compile first"):
                acc.remove()
            for name in EXPERTS:
                registry = getattr(pipe, name)._diffusers_hook
                for hook in (_LAYER_EXECUTION_TRACKER, _GROUP_OFFLOADING):
                    registry.remove_hook(hook, recurse=True)
    finally:
        acc.remove()
    computed = {name: sum(r.computed for r in records if r.denoiser == name) for name in EXPERTS}
    assert all(computed.values()) and any(not r.computed for r in records)
    assert backend.graphs == 1
    assert backend.executions == 2 * computed["transformer"] + 2 * computed["transformer_2"]
    assert _graph_breaks() == breaks
    assert np.abs(compiled - eager).max() < COMPILE_TOL
    # Removed: the next run executes no compiled code.
    _call_pipe(pipe, steps=2)
    assert backend.executions == 2 * computed["transformer"] + 2 * computed["transformer_2"]
    _assert_clean(pipe)


# --- refusals, before anything is attached ------------------------------------------------------------------
def test_blocks_the_user_already_compiled_are_refused():
    pipe = build_tiny_pipeline(seed=0)
    pipe.transformer.compile_repeated_blocks()  # only wraps the blocks; nothing compiles until they are called
    with pytest.raises(LightcacheError, match="already compiled"):
        apply_lightcache(pipe, AccelerationConfig(chunk_ffn=2, compile=True))
    assert getattr(pipe, "_lightcache_acceleration", None) is None
    for block in pipe.transformer.blocks:
        registry = getattr(block, "_diffusers_hook", None)
        assert registry is None or not registry.hooks


def test_blocks_with_other_hooks_are_refused():
    pipe = build_tiny_pipeline(seed=0)
    pipe.transformer.enable_group_offload(onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                                          offload_type="block_level", num_blocks_per_group=1)
    with pytest.raises(LightcacheError, match="already carry group_offloading"):
        apply_lightcache(pipe, AccelerationConfig(compile=True))
    assert all(COMPILE_HOOK not in b._diffusers_hook.hooks for b in pipe.transformer.blocks)


def test_no_cpp_compiler_is_one_clear_error(monkeypatch):
    import lightcache.techniques.compile as compile_module

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compile_module.shutil, "which", lambda name: None)
    pipe = build_tiny_pipeline(seed=0)
    with pytest.raises(LightcacheError, match="needs a C.. compiler"):
        apply_lightcache(pipe, AccelerationConfig(compile=True, device="cpu"))
    assert getattr(pipe, "_lightcache_acceleration", None) is None
    # Another backend needs no compiler.
    apply_lightcache(pipe, AccelerationConfig(compile=CompileConfig(backend="eager"), device="cpu")).remove()
    assert shutil.which is not None


def test_cuda_graph_modes_are_refused_with_swapping():
    with pytest.raises(LightcacheError, match="CUDA graphs"):
        AccelerationConfig(async_swap=True, compile=CompileConfig(mode="reduce-overhead"))
    AccelerationConfig(async_swap=True, compile=CompileConfig(mode="max-autotune-no-cudagraphs"))
    with pytest.raises(LightcacheError, match="compile mode"):
        CompileConfig(mode="fastest")
    with pytest.raises(LightcacheError, match="compile must be"):
        AccelerationConfig(compile="yes")


def test_settings_and_form_carry_the_switch():
    assert RunSettings(prompt="x").compile is False
    with pytest.raises(LightcacheError, match="compile must be true or false"):
        RunSettings.from_preset(load_preset("tiny"), compile="yes")
    small = dict(steps=6, warmup=2, frames=5, height=32, width=32)
    assert initial_values("tiny")["compile"] is False
    job = parse_request(dict(initial_values("tiny", small), compile=True), device="cpu")
    assert job.settings.compile is True and job.plain_settings.compile is False
    with pytest.raises(LightcacheError, match=r"^Compile \(torch.compile\) must be true or false"):
        parse_request(dict(initial_values("tiny", small), compile="maybe"), device="cpu")


def test_the_page_has_the_checkbox_off_and_the_api_takes_it_last():
    from lightcache.app import build_demo
    from lightcache.app.pipelines import PipelineCache

    demo = build_demo(PipelineCache(loader=lambda preset, device: build_tiny_pipeline(0), device="cpu"))
    fn = next(f for f in demo.fns.values() if getattr(f, "api_name", None) == "generate")
    labels = [getattr(block, "label", None) for block in fn.inputs]
    checkbox = fn.inputs[labels.index("Compile (torch.compile)")]
    assert checkbox.value is False and "first one" in checkbox.info
    assert labels.index("Compile (torch.compile)") == labels.index("Image (first frame)") + 1


def test_find_repeated_blocks_follows_repeated_blocks_then_the_block_list():
    transformer = build_tiny_pipeline(seed=0).transformer
    assert find_repeated_blocks(transformer) == list(transformer.blocks)

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer_blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])

    plain = Plain()
    assert find_repeated_blocks(plain) == list(plain.transformer_blocks)
    assert find_repeated_blocks(torch.nn.Linear(2, 2)) == []
    with pytest.raises(LightcacheError, match="names no repeated blocks"):
        from lightcache.techniques.compile import apply_compile

        apply_compile({"transformer": torch.nn.Linear(2, 2)}, CompileConfig(backend="eager"))


# --- what the page and the CLI make of a warm-up call --------------------------------------------------------
def _events_with_warmup() -> list:
    settings = {"steps": 3, "warmup": 1, "threshold": 0.1, "easycache": True}
    records = [
        StepRecord(step=0, timestep=999.0, branch="cond", computed=True, reason="warm-up", ms=9000.0, t=9.0,
                   compiling=True, compile_ms=8800.0),
        StepRecord(step=0, timestep=999.0, branch="uncond", computed=True, reason="follows cond", ms=10.0, t=9.1),
        StepRecord(step=1, timestep=600.0, branch="cond", computed=False, reason="E < tau", ms=0.1, t=9.2),
        StepRecord(step=1, timestep=600.0, branch="uncond", computed=False, reason="follows cond", ms=0.1, t=9.3),
        StepRecord(step=2, timestep=300.0, branch="cond", computed=True, reason="last step", ms=10.0, t=9.4),
        StepRecord(step=2, timestep=300.0, branch="uncond", computed=True, reason="follows cond", ms=10.0, t=9.5),
    ]
    return [RunStarted(preset="tiny", settings=settings, device="cpu"), StageStarted("denoise", t=0.0), *records,
            StageFinished("denoise", t=9.5, seconds=9.5)]


def test_the_estimated_speed_up_leaves_the_warm_up_out():
    records = [e for e in _events_with_warmup() if isinstance(e, StepRecord)]
    counts = call_counts(records)
    assert (counts.computed, counts.reused, counts.compiling) == (4, 2, 1)
    assert counts.warmup_seconds == pytest.approx(9.0)
    # Without the warm-up call: 5 calls, 3 computed at 10 ms, 30.2 ms spent: 5 x 10 / 30.2.
    assert counts.estimated_speedup == pytest.approx(5 * 10.0 / 30.2)
    status = status_markdown(_events_with_warmup())
    assert "torch.compile warm-up **9.0 s** in 1 call" in status
    assert "torch.compile warm-up: 9.00 s" in stages_markdown(_events_with_warmup())


def test_the_figures_ring_the_compiling_call_and_only_when_there_is_one():
    events = _events_with_warmup()
    ring = [t for t in trace_figure(events).data if t.name == "compiling (torch.compile warm-up)"]
    assert len(ring) == 1 and list(ring[0].x) == [0] and list(ring[0].y) == ["cond"]
    assert "8800.0 ms" in ring[0].customdata[0][0]
    assert any(t.name == "compiling (torch.compile warm-up)" for t in timeline_figure(events).data)
    plain = [e if not isinstance(e, StepRecord) else dataclasses.replace(e, compiling=False, compile_ms=0.0)
             for e in events]
    assert not any(t.name.startswith("compiling") for t in trace_figure(plain).data)


def test_the_comparison_gives_the_speed_up_without_compiling():
    accelerated = RunFinished(summary=dict(total_seconds=12.0, stages={"denoise": {"seconds": 11.0}},
                                           calls_computed=4, calls_reused=2,
                                           compile={"active": True, "compile_seconds": 8.0,
                                                    "warmup_call_seconds": 9.0}),
                              frames=np.zeros((1, 4, 4, 3), np.float32))
    plain = RunFinished(summary=dict(total_seconds=6.0, stages={"denoise": {"seconds": 5.0}}, calls_computed=6,
                                     calls_reused=0, compile={"active": False, "compile_seconds": 0.0},
                                     settings=dict(ACCELERATIONS_OFF)),
                        frames=np.zeros((1, 4, 4, 3), np.float32))
    steps = [e for e in _events_with_warmup() if isinstance(e, StepRecord)]
    plain_steps = [dataclasses.replace(r, computed=True, compiling=False, compile_ms=0.0, ms=20.0) for r in steps]
    comparison = compare_runs(accelerated, plain, steps, plain_steps)
    assert comparison["speedup"] == pytest.approx(0.5)
    assert comparison["speedup_without_compiling"] == pytest.approx(6.0 / 4.0)
    # The warm-up call (9 s) is not a call's work: the computed calls left take 10 ms against 20 ms.
    assert comparison["call_time_ratio"] == pytest.approx(0.5) == call_time_ratio(steps, plain_steps)
    text = comparison_markdown(comparison)
    assert "of which torch.compile compiling | 8.00 s" in text and "speed-up **1.50x**" in text
    # Compiled against eager calls: the ratio is compile's effect, and is not called noise.
    assert "50% shorter in the accelerated run, whose transformer blocks are compiled" in text
    assert "Measurement noise" not in text
    no_compile = comparison_markdown(compare_runs(plain, plain, plain_steps, plain_steps))
    assert "compiling" not in no_compile and "compiled" not in no_compile and "Measurement noise" in no_compile
    assert "The plain run is the plain pipe(...), every acceleration off" in no_compile


def test_the_cli_summary_line_names_the_warm_up(capsys, tmp_path):
    from lightcache.cli import _print_summary

    summary = dict(stages={"denoise": {"seconds": 9.5}}, calls_computed=4, calls_reused=2,
                   compile=dict(active=True, calls_compiling=1, warmup_call_seconds=9.0, compile_seconds=8.8,
                                call_ms_after_warmup=10.0))
    _print_summary(summary, tmp_path)
    line = capsys.readouterr().out
    assert "torch.compile warm-up 9.00 s in 1 call(s), 8.80 s of it compiling; median computed call after it " \
           "10.0 ms" in line


def test_a_run_without_a_compiler_is_refused_before_it_starts(monkeypatch):
    import lightcache.techniques.compile as compile_module

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compile_module.shutil, "which", lambda name: None)
    pipe = build_tiny_pipeline(seed=0)
    events = run_generation(pipe, _settings(guidance_scale_2=None, chunk_ffn=None, compile=True))
    with pytest.raises(LightcacheError, match="needs a C.. compiler"):
        next(events)  # refused before RunStarted: nothing ran, nothing attached
    assert getattr(pipe, "_lightcache_acceleration", None) is None


def test_the_benchmark_table_reads_its_record():
    from benchmarks.compile_speed import markdown

    side = dict(call_ms_median=10.0, reused_ms_median=0.1, denoise_median=2.0, denoise_seconds=[2.0],
                cpu_median=1.5, cpu_seconds=[1.5], computed_calls=8)
    config = dict(eager=side, compiled=dict(side, call_ms_median=5.0, frames_compiled_in_timed_runs=0),
                  warmup=dict(warmup_call_seconds=30.0, calls_compiling=1, compile_seconds=29.5, frames_compiled=1),
                  call_speedup=2.0, decisions_match=True)
    result = dict(mode="gpu", model="Wan2.1-1.3B", height=480, width=832, frames=81, steps=10, repeats=3,
                  device="GPU", configs={"easycache": config, "all": dict(config, decisions_match=False)})
    text = markdown(result)
    assert "| easycache | 10.00 ms | 5.00 ms | 2.00x | 2.00 s / 2.00 s | 1.50 s / 1.50 s | 30.0 s (1 call) " \
           "| 29.5 s, 1 graph(s) | 0 | yes |" in text
    assert "| all |" in text and text.count("| no |") == 1
    assert "CPU run" not in text and "CPU run" in markdown(dict(result, mode="smoke"))
