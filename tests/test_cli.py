"""The CLI: the three output files, the comparison figures, and one clear message per bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightcache.cli import main
from lightcache.video import read_mp4

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--steps", "6", "--frames", "9", "--height", "32", "--width", "32", "--warmup", "2", "--quiet"]


def _generate(model_dir, out, *extra):
    return main(["generate", "--model", str(model_dir), "--prompt", "a red circle moving right", *SMALL,
                 "--out", str(out), *extra])


def test_generate_writes_video_trace_and_summary(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert _generate(tiny_model_dir, out, "--threshold", "0.3") == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "summary.json", "timeline.html", "timeline.json", "trace.json", "video.mp4"]
    video = read_mp4(out / "video.mp4")
    assert video.shape == (9, 32, 32, 3)
    summary = json.loads((out / "summary.json").read_text())
    trace = json.loads((out / "trace.json").read_text())
    assert summary["preset"] == "tiny"
    assert summary["settings"]["threshold"] == 0.3
    assert set(summary["stages"]) == {"encode", "denoise", "decode"}
    assert all(stage["seconds"] > 0 for stage in summary["stages"].values())
    assert summary["calls_computed"] + summary["calls_reused"] == len(trace) == 6 * 2
    assert summary["calls_reused"] == sum(not r["computed"] for r in trace)
    assert {r["branch"] for r in trace} == {"cond", "uncond"}


def test_compare_baseline_reports_identical_quality_at_tau_zero(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert _generate(tiny_model_dir, out, "--threshold", "0", "--compare-baseline") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["psnr_db"] == "inf"
    assert summary["ssim"] == pytest.approx(1.0)
    assert summary["baseline_seconds"] > 0 and summary["speedup"] > 0


def test_compare_baseline_measures_a_real_difference(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert _generate(tiny_model_dir, out, "--threshold", "100", "--compare-baseline") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["calls_reused"] > 0
    assert isinstance(summary["psnr_db"], float) and 0 < summary["psnr_db"] < 200
    assert summary["ssim"] < 1.0


def test_no_easycache_computes_every_call(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert _generate(tiny_model_dir, out, "--no-easycache") == 0
    trace = json.loads((out / "trace.json").read_text())
    assert all(r["computed"] for r in trace) and {r["reason"] for r in trace} == {"EasyCache off"}


BAD_INPUTS = [
    (["--frames", "10"], "frames must be of the form 4k+1"),
    (["--height", "40"], "height must be a multiple of 16"),
    (["--width", "50"], "width must be a multiple of 16"),
    (["--steps", "0"], "steps must be between"),
    (["--steps", "1000"], "steps must be between"),
    (["--threshold", "-0.5"], "threshold must be between"),
    (["--threshold", "nan"], "threshold must be a number"),
    (["--warmup", "6"], "warmup must be between 0 and 5"),
    (["--preset", "nope"], "Unknown preset 'nope'. Valid presets: tiny, wan2.1-i2v-14b-480p, wan2.1-i2v-14b-720p, wan2.1-t2v-1.3b, wan2.1-t2v-14b, wan2.2-i2v-a14b"),
    (["--model", "/definitely/not/here"], "Model directory '/definitely/not/here' does not exist"),
    (["--model", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"], "HF_HUB_OFFLINE"),
    (["--prompt", "   "], "prompt must not be empty"),
    (["--prompt", "a red circle " * 20], "tokens long; this model's text encoder takes at most 16"),
]


@pytest.mark.parametrize("extra, message", BAD_INPUTS, ids=[m[:30] for _, m in BAD_INPUTS])
def test_bad_input_gives_one_clear_message_and_leaves_nothing(tiny_model_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    args = ["generate", "--model", str(tiny_model_dir), *SMALL, "--out", str(out)]
    # later flags win in argparse, so the bad value overrides the small defaults
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".lightcache-")]


def test_refuses_a_non_empty_output_directory(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _generate(tiny_model_dir, out) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_gpu_preset_on_cpu_is_refused(tmp_path, capsys):
    assert main(["generate", "--preset", "wan2.1-t2v-1.3b", "--prompt", "x", "--out", str(tmp_path / "o")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_real_process_exit_code_and_no_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "lightcache", "generate", "--frames", "10", "--out", str(tmp_path / "o")],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: frames must be of the form 4k+1 (e.g. 5, 9, 13, 17), got 10."
    assert not (tmp_path / "o").exists()


def test_presets_command_lists_every_preset(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("tiny", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b"):
        assert name in out
