"""The benchmark on other families' tiny checkpoints (saved with ``save_pretrained``, loaded like a real model):
a transformer family (Mochi) through ``python -m lightcache bench``, a UNet family (SVD: an image, no prompt) and
LTX-2 (three denoiser calls per step) through :func:`run_benchmark`.

Each checks that the counts add up (computed + reused calls = steps x calls per step, bodies = computed calls),
that EasyCache's reuse shows in the counted work, and that the methods the family cannot run are named with why.
"""

from __future__ import annotations

import importlib
import json

import pytest

from lightcache.bench.harness import BenchConfig, run_benchmark
from lightcache.bench.report import benchmarks_doc
from lightcache.presets import load_pipeline, load_preset

STEPS = 4
# tau 5 makes EasyCache reuse every call after the warm-up on a random model; plain computes them all.
SWEEPS = {"easycache": ({"threshold": 5.0},)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    saved = {}

    def saved_checkpoint(family: str):
        if family not in saved:
            path = tmp_path_factory.mktemp(family)
            importlib.import_module(f"lightcache.families.{family}.tiny").build_tiny_pipeline(seed=0) \
                .save_pretrained(path)
            saved[family] = path
        return saved[family]

    return saved_checkpoint


def _check_counts(results, calls_per_step: int) -> None:
    calls = STEPS * calls_per_step
    records = results["records"]
    assert {r["method"] for r in records} == {"plain", "easycache"}
    for r in records:
        assert r["calls_computed"] + r["calls_reused"] == calls, r["setting"]
        assert r["counts"]["transformer_calls"] == calls
        # A call EasyCache reused runs no block: bodies are the computed calls, and every block ran on each of them.
        assert r["counts"]["transformer_bodies"] == r["calls_computed"]
        assert r["skip_check"]["holds"], r["skip_check"]["detail"]
    plain = next(r for r in records if r["method"] == "plain")
    reusing = next(r for r in records if r["method"] == "easycache")
    assert plain["calls_reused"] == 0 and plain["work_fraction"] == 1.0
    assert reusing["calls_reused"] > 0
    # Work is counted from the layers that ran, so it falls with the reused calls (exactly: every call costs alike).
    assert reusing["work_fraction"] == pytest.approx(reusing["calls_computed"] / calls)
    assert reusing["counts"]["block_calls"] < plain["counts"]["block_calls"]
    assert any("repeated blocks" in note for note in results["notes"])


def _skipped(results) -> dict[str, str]:
    return {s["method"]: s["reason"] for s in results["skipped"]}


def test_bench_cli_runs_on_a_mochi_checkpoint(checkpoint, tmp_path):
    from lightcache.cli import main

    out = tmp_path / "bench"
    args = ["bench", "--preset", "mochi-1", "--model", str(checkpoint("mochi")), "--device", "cpu", "--quick",
            "--methods", "plain,easycache,easycache+memory,fbc", "--prompt", "a red circle moving right",
            "--steps", str(STEPS), "--warmup", "1", "--frames", "7", "--height", "32", "--width", "32",
            "--no-overhead", "--quiet", "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["preset"] == "mochi-1"
    records = results["records"]
    assert {r["method"] for r in records} == {"plain", "easycache"}
    for r in records:
        assert r["calls_computed"] + r["calls_reused"] == STEPS
        assert r["counts"]["transformer_bodies"] == r["calls_computed"] and r["skip_check"]["holds"]
        assert r["counts"]["self_attention_calls"] is None  # not counted apart on this layout, not invented
    skipped = _skipped(results)
    assert "Feature chunking" in skipped["easycache+memory"] and "'blocks' list" in skipped["fbc"]
    page = benchmarks_doc(results, "cmd", {"html": "c.html", "png": None}, ".")
    assert "easycache+memory: " in page and "fbc: " in page  # the page names what was left out, and why


def test_bench_runs_on_an_svd_checkpoint_with_a_generated_image_and_no_prompt(checkpoint):
    preset = load_preset("svd-xt")
    pipe = load_pipeline(preset, device="cpu", model=str(checkpoint("svd")))
    config = BenchConfig(quick=True, methods=("plain", "easycache", "fbc", "pab"), sweeps=SWEEPS, overhead=False,
                         settings={"steps": STEPS, "warmup": 1, "frames": 4, "height": 64, "width": 64,
                                   "decode_chunk_size": 4})
    results = run_benchmark(pipe, preset, config)
    assert [c["prompt"] for c in results["cases"]] == [""]
    assert results["cases"][0]["image"].startswith("generated 64x64")
    _check_counts(results, calls_per_step=1)
    assert set(_skipped(results)) == {"fbc", "pab"}
    page = benchmarks_doc(results, "cmd", {"html": "c.html", "png": None}, ".")
    assert "Skipped: " in page and "fbc: " in page


def test_bench_runs_on_an_ltx2_checkpoint_with_three_calls_per_step(checkpoint):
    preset = load_preset("ltx-2")
    pipe = load_pipeline(preset, device="cpu", model=str(checkpoint("ltx2")))
    config = BenchConfig(quick=True, prompts=("a red circle moving right",), methods=("plain", "easycache"),
                         sweeps=SWEEPS, overhead=False,
                         settings={"steps": STEPS, "warmup": 1, "frames": 9, "height": 32, "width": 32})
    results = run_benchmark(pipe, preset, config)
    _check_counts(results, calls_per_step=3)


def test_a_missing_work_axis_is_reported_as_not_counted_never_as_a_verdict():
    from lightcache.bench.report import targets_section
    from lightcache.bench.results import dominance, targets

    def point(method, kind, work):
        return {"method": method, "kind": kind, "setting": "s", "speedup_denoise": 2.0, "speedup_end_to_end": 1.5,
                "work_fraction": work, "psnr_db": 30.0}

    counted = [point("easycache", "ours", 0.5), point("fbc", "diffusers", 0.6)]
    assert dominance(counted, "work")["holds"] is True  # counted work: a verdict
    uncounted = [point("easycache", "ours", None), point("fbc", "diffusers", 0.6)]
    work = dominance(uncounted, "work")
    assert work["not_counted"] and work["dominated"] is None and work["holds"] is None
    assert dominance(uncounted, "denoise")["holds"] is True  # the measured axes are unaffected
    text = targets_section({"targets": targets(uncounted, None)})
    assert "counted work (1 / work computed): **not counted**" in text
