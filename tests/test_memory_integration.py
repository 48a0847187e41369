"""The memory strategies inside a run: parity with the plain run, the timeline, summaries, cleanup, bad values."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from conftest import FLOAT_TOL, strict_fp32, tiny_settings

from lightcache.errors import LightcacheError, RunCancelled
from lightcache.events import (
    FramesDecoded,
    MemorySample,
    Note,
    RunFinished,
    RunStarted,
    StageFinished,
    StageStarted,
    StepRecord,
)
from lightcache.runner import run_generation, run_to_completion
from lightcache.techniques.swap import CPU_NOTE

CHUNK_TOL = 1e-5  # feature chunking: fp32 transformer outputs
DECODE_TOL = 1e-4  # sliced decoding: fp32 decode


def _run(pipe, **overrides):
    events = list(run_generation(pipe, tiny_settings(**overrides)))
    return events, events[-1]


def _decisions(events):
    return [(e.step, e.branch, e.computed) for e in events if isinstance(e, StepRecord)]


def _sampler_threads():
    return [t for t in threading.enumerate() if t.name == "lightcache-memory-sampler" and t.is_alive()]


def _no_hooks(pipe) -> bool:
    return all(not getattr(m, "_diffusers_hook", None) or not m._diffusers_hook.hooks
               for m in pipe.transformer.modules())


@pytest.mark.parametrize("easycache", [False, True])
@pytest.mark.parametrize(
    "strategy, tol",
    [({"chunk_ffn": 3}, CHUNK_TOL), ({"sliced_decode": True}, DECODE_TOL), ({"async_swap": True}, 0.0),
     ({"chunk_ffn": 4, "sliced_decode": True, "async_swap": True}, DECODE_TOL)],
    # On a CPU swapping is a no-op (it says so in its note): those two cases check that asking for it changes
    # nothing. Its mechanics are tested in test_swap.py on a stand-in device, its transfers on a GPU.
    ids=["chunking", "sliced-decode", "async-swap-no-op-on-cpu", "chunking-and-sliced-decode-swap-no-op-on-cpu"],
)
def test_each_strategy_matches_the_plain_run(tiny_pipe, strategy, tol, easycache):
    plain_events, plain = _run(tiny_pipe, easycache=easycache, threshold=0.3)
    events, finished = _run(tiny_pipe, easycache=easycache, threshold=0.3, **strategy)
    assert finished.frames.shape == plain.frames.shape
    assert np.abs(finished.frames - plain.frames).max() <= tol
    assert _decisions(events) == _decisions(plain_events)
    if easycache:
        assert any(not computed for _, _, computed in _decisions(events))
    if strategy.get("async_swap"):
        swap = finished.summary["strategies"]["async_swap"]
        assert not swap["active"] and swap["note"] == CPU_NOTE
    assert _no_hooks(tiny_pipe)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "strategy", [{"chunk_ffn": 3}, {"sliced_decode": True}, {"async_swap": True},
                 {"chunk_ffn": 4, "sliced_decode": True, "async_swap": True}],
    ids=["chunking", "sliced-decode", "async-swap", "all-three"],
)
def test_each_strategy_matches_the_plain_run_on_cuda(strategy):
    """The CUDA paths (streams, pinned stores, parked modules) inside a whole run, with EasyCache reusing."""
    import torch

    from lightcache.tiny import build_tiny_pipeline

    with strict_fp32():
        pipe = build_tiny_pipeline(seed=0).to("cuda")
        plain_events, plain = _run(pipe, threshold=0.3)
        events, finished = _run(pipe, threshold=0.3, **strategy)
        again_events, again = _run(pipe, threshold=0.3)
    assert finished.summary["device"].startswith("cuda")
    assert np.abs(finished.frames - plain.frames).max() <= DECODE_TOL
    assert _decisions(events) == _decisions(plain_events) and any(not c for _, _, c in _decisions(events))
    # The same plain run again, now with other memory free: cuDNN may pick another convolution algorithm (see
    # strict_fp32), so the frames agree to rounding, not to the bit.
    assert np.abs(again.frames - plain.frames).max() <= FLOAT_TOL
    assert _decisions(again_events) == _decisions(plain_events)
    assert _no_hooks(pipe)
    for name in ("transformer", "vae", "text_encoder"):
        assert all(p.device.type == "cuda" for p in getattr(pipe, name).parameters())


def test_the_summary_says_which_strategies_acted(tiny_pipe):
    _, finished = _run(tiny_pipe, chunk_ffn=4, sliced_decode=True, async_swap=True)
    strategies = finished.summary["strategies"]
    assert strategies["async_swap"]["requested"] and not strategies["async_swap"]["active"]
    assert strategies["async_swap"]["note"] == CPU_NOTE
    assert strategies["feature_chunking"] == {"requested": True, "active": True, "num_chunks": 4}
    assert strategies["sliced_decode"]["active"] and strategies["sliced_decode"]["num_slices"] >= 1
    for stage in ("encode", "denoise", "decode"):
        info = finished.summary["stages"][stage]
        assert info["peak_bytes"] > 0 and info["resident_bytes"] > 0
        assert info["peak_bytes"] >= info["resident_bytes"]
    assert finished.summary["memory"]["peak_kind"] == "rss"
    json.dumps(finished.summary)  # plain data

    _, plain = _run(tiny_pipe)
    assert not any(s["active"] for s in plain.summary["strategies"].values())


def test_the_cpu_no_op_is_in_the_trace(tiny_pipe):
    events, _ = _run(tiny_pipe, async_swap=True)
    notes = [e.message for e in events if isinstance(e, Note)]
    assert CPU_NOTE in notes


def test_the_timeline_has_stage_and_step_marks_in_order(tiny_pipe):
    events, finished = _run(tiny_pipe, steps=6, chunk_ffn=2, sliced_decode=True)
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
    marks = [(type(e).__name__, e.stage) for e in events if isinstance(e, (StageStarted, StageFinished))]
    assert marks == [("StageStarted", "encode"), ("StageFinished", "encode"), ("StageStarted", "denoise"),
                     ("StageFinished", "denoise"), ("StageStarted", "decode"), ("StageFinished", "decode")]
    samples = [e for e in events if isinstance(e, MemorySample)]
    assert len(samples) >= 6  # at least a reading at each stage's start and end
    # Every event that carries a time comes in time order: samples interleave with the marks, never run ahead.
    times = [e.t for e in events if isinstance(e, (MemorySample, StageStarted, StageFinished, StepRecord))]
    assert times == sorted(times)
    stage_times = {e.stage: e.t for e in events if isinstance(e, StageStarted)}
    finish_times = {e.stage: e.t for e in events if isinstance(e, StageFinished)}
    steps = [e for e in events if isinstance(e, StepRecord)]
    assert len(steps) == 12 and all(stage_times["denoise"] <= s.t <= finish_times["denoise"] for s in steps)
    for stage in ("encode", "denoise", "decode"):
        inside = [s for s in samples if stage_times[stage] <= s.t <= finish_times[stage]]
        assert len(inside) >= 2, stage
    decoded = [e for e in events if isinstance(e, FramesDecoded)]
    assert decoded and [e.first for e in decoded] == sorted(e.first for e in decoded)
    assert sum(len(e.frames) for e in decoded) == len(finished.frames)

    from lightcache.plots import timeline_figure

    figure = timeline_figure([e.to_dict() for e in events])
    assert "process RSS" in [trace.name for trace in figure.data]


def test_no_sampler_thread_is_left_behind(tiny_pipe):
    run_to_completion(run_generation(tiny_pipe, tiny_settings(steps=3)))
    assert _sampler_threads() == []

    stream = run_generation(tiny_pipe, tiny_settings(steps=3))
    next(e for e in stream if isinstance(e, StepRecord))
    assert len(_sampler_threads()) == 1
    stream.close()  # the consumer walks away mid-run
    assert _sampler_threads() == []

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(RunCancelled):
        run_to_completion(run_generation(tiny_pipe, tiny_settings(steps=3, chunk_ffn=2), cancel=cancel))
    assert _sampler_threads() == [] and _no_hooks(tiny_pipe)


def test_a_run_that_raises_inside_a_stage_cleans_up(tiny_pipe, monkeypatch):
    def broken_decode(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(tiny_pipe.vae.decoder, "forward", broken_decode)
    with pytest.raises(RuntimeError, match="decoder exploded"):
        run_to_completion(run_generation(tiny_pipe, tiny_settings(steps=3, chunk_ffn=2, async_swap=True)))
    # The run's own cleanup stops and joins the sampler before the error reaches the caller: nothing to wait for.
    assert _sampler_threads() == [] and _no_hooks(tiny_pipe)


def test_more_chunks_than_tokens_is_refused_before_the_run(tiny_pipe):
    # 32x32 frames, 9 frames: (9-1)/2+1 = 5 latent frames of 8x8 -> 5 x 4 x 4 = 80 tokens.
    stream = run_generation(tiny_pipe, tiny_settings(chunk_ffn=81))
    with pytest.raises(LightcacheError, match="only 80 tokens"):
        next(stream)
    run_to_completion(run_generation(tiny_pipe, tiny_settings(steps=2, chunk_ffn=80)))


def test_chunk_count_zero_is_refused_by_the_settings():
    from lightcache.presets import load_preset
    from lightcache.settings import RunSettings

    with pytest.raises(LightcacheError, match="chunk_ffn"):
        RunSettings.from_preset(load_preset("tiny"), chunk_ffn=0)


def test_the_band_count_reaches_the_decoder_and_stays_exact(tiny_pipe):
    _, plain = _run(tiny_pipe, steps=3)
    for bands in (1, 2):
        _, finished = _run(tiny_pipe, steps=3, sliced_decode=True, decode_slices=bands)
        assert finished.summary["strategies"]["sliced_decode"]["num_slices"] == bands
        assert np.abs(finished.frames - plain.frames).max() <= DECODE_TOL


def test_the_default_band_count_cuts_a_wide_frame_into_several_bands(tiny_pipe):
    """The app never sets a band count: the default must slice (here 128 decoded pixels: two bands), exactly."""
    _, plain = _run(tiny_pipe, steps=2, width=128)
    _, finished = _run(tiny_pipe, steps=2, width=128, sliced_decode=True)
    assert finished.summary["strategies"]["sliced_decode"]["num_slices"] == 2
    assert np.abs(finished.frames - plain.frames).max() <= DECODE_TOL


def test_band_counts_are_validated():
    from lightcache.presets import load_preset
    from lightcache.settings import RunSettings

    tiny = load_preset("tiny")
    with pytest.raises(LightcacheError, match="turn sliced_decode on too"):
        RunSettings.from_preset(tiny, decode_slices=4)
    with pytest.raises(LightcacheError, match="decode_slices must be between 1 and 256"):
        RunSettings.from_preset(tiny, sliced_decode=True, decode_slices=0)


def test_too_many_bands_are_refused_before_the_run(tiny_pipe):
    stream = run_generation(tiny_pipe, tiny_settings(sliced_decode=True, decode_slices=200))
    with pytest.raises(LightcacheError, match="leaves a slice too narrow"):
        next(stream)


def test_sliced_decode_on_an_unsupported_vae_is_refused(tiny_pipe):
    from diffusers import AutoencoderKL

    tiny_pipe.vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4)
    with pytest.raises(LightcacheError, match="Sliced decoding supports the Wan VAE"):
        next(run_generation(tiny_pipe, tiny_settings(sliced_decode=True)))


# --- the command line -------------------------------------------------------------------------------------------
def test_cli_flags_write_the_timeline_and_the_strategies(tiny_model_dir, tmp_path):
    from lightcache.cli import main

    out = tmp_path / "run"
    code = main(["generate", "--preset", "tiny", "--model", str(tiny_model_dir), "--steps", "3", "--warmup", "1", "--frames", "5",
                 "--height", "32", "--width", "32", "--chunk-ffn", "2", "--sliced-decode", "--async-swap",
                 "--quiet", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategies"]["feature_chunking"]["num_chunks"] == 2
    assert summary["strategies"]["sliced_decode"]["active"]
    assert summary["strategies"]["async_swap"]["note"] == CPU_NOTE
    assert all(summary["stages"][s]["peak_bytes"] > 0 for s in ("encode", "denoise", "decode"))
    timeline = json.loads((out / "timeline.json").read_text())
    kinds = {e["event"] for e in timeline}
    assert {"RunStarted", "StageStarted", "StageFinished", "StepRecord", "MemorySample", "Note"} <= kinds
    html = (out / "timeline.html").read_text()
    assert "plotly" in html.lower() and "process RSS" in html


@pytest.mark.parametrize("flags, message", [
    (["--chunk-ffn", "0"], "chunk_ffn must be between 1 and"),
    (["--chunk-ffn", "100000"], "only 48 tokens"),
    (["--decode-slices", "4"], "turn sliced_decode on too"),
    (["--sliced-decode", "--decode-slices", "0"], "decode_slices must be between 1 and 256"),
    (["--sliced-decode", "--decode-slices", "200"], "leaves a slice too narrow"),
])
def test_cli_bad_strategy_counts_exit_with_one_clear_line(tiny_model_dir, tmp_path, capsys, flags, message):
    from lightcache.cli import main

    out = tmp_path / "bad"
    code = main(["generate", "--preset", "tiny", "--model", str(tiny_model_dir), "--steps", "2", "--warmup", "1", "--frames", "5",
                 "--height", "32", "--width", "32", *flags, "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err
    assert not out.exists()


# --- the memory benchmark's smoke path ---------------------------------------------------------------------------
def test_memory_benchmark_smoke_runs_end_to_end(tmp_path, capsys):
    """The GPU benchmark's own code path at tiny shapes on the CPU: every stage measured, outputs exact."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.memory import main

    code = main(["--smoke", "--configs", "plain", "chunking", "sliced_decode", "async_swap",
                 "diffusers_group_offload", "--out", str(tmp_path)])
    assert code == 0
    results = json.loads((tmp_path / "memory-smoke.json").read_text())
    assert results["exactness_fp32"]["chunking_fp32"] <= CHUNK_TOL
    assert results["exactness_fp32"]["sliced_decode_fp32"] <= DECODE_TOL
    configs = {r["config"]: r for r in results["models"]["tiny"]["configs"]}
    plain = configs["plain"]["stages"]
    assert plain["denoise"]["seconds"] > 0 and plain["decode"]["over_bytes"] > 0
    assert configs["chunking"]["stages"]["denoise"]["over_bytes"] < plain["denoise"]["over_bytes"]
    assert configs["sliced_decode"]["stages"]["decode"]["over_bytes"] < plain["decode"]["over_bytes"]
    assert configs["chunking"]["max_abs_diff"]["denoise"] <= CHUNK_TOL
    assert configs["sliced_decode"]["max_abs_diff"]["decode"] <= DECODE_TOL
    assert CPU_NOTE in configs["async_swap"]["notes"]
    assert configs["diffusers_group_offload"]["stages"] == {}  # needs CUDA: skipped, and said so
    assert any("needs a CUDA device" in n for n in configs["diffusers_group_offload"]["notes"])
    markdown = (tmp_path / "memory-smoke.md").read_text()
    assert "not GPU measurements" in markdown and "| sliced_decode |" in markdown


def test_memory_benchmark_merges_runs_of_separate_models(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.memory import merge

    runs = []
    for key in ("1.3b", "14b"):
        path = tmp_path / f"{key}.json"
        spec = {"name": key, "height": 16, "width": 16, "frames": 5, "chunks": 2, "slices": 2, "steps": 1}
        path.write_text(json.dumps({"mode": "gpu", "gpu": "test", "models": {key: {
            "spec": spec, "device": "test", "configs": [], "targets": []}}}))
        runs.append(path)
    merge(runs, tmp_path / "out")
    merged = json.loads((tmp_path / "out" / "memory-gpu.json").read_text())
    assert set(merged["models"]) == {"1.3b", "14b"}
    smoke = tmp_path / "smoke.json"
    smoke.write_text(json.dumps({"mode": "smoke", "models": {}}))
    with pytest.raises(SystemExit, match="only GPU runs are merged"):
        merge([smoke], tmp_path / "out")


def test_hook_overhead_benchmark_smoke_runs_end_to_end(tmp_path, capsys):
    """The GPU overhead benchmark's code path at tiny shapes on the CPU: three figures and their targets."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.hook_overhead import main

    assert main(["--smoke", "--steps", "4", "--warmup", "1", "--repeats", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "hook-overhead-smoke.json").read_text())
    overhead = result["overhead"]
    # Times are not compared here: on a shared CPU a reused call may take as long as a computed one.
    assert overhead["reuse"]["reused_calls_per_run"] > 0 and overhead["reuse"]["ratio_pct"] > 0
    assert overhead["plain_denoise_median"] > 0 and overhead["tau0_denoise_median"] > 0
    markdown = (tmp_path / "hook-overhead-smoke.md").read_text()
    assert "not a measurement" in markdown and "reused call / computed call" in markdown


def test_swap_setup_benchmark_refuses_to_run_without_cuda(capsys):
    import sys
    from pathlib import Path

    import torch

    if torch.cuda.is_available():
        pytest.skip("this checks the message on a machine without CUDA")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.swap_setup import main

    assert main([]) == 2 and "only acts on a CUDA GPU" in capsys.readouterr().err
