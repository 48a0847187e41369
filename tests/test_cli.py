"""The CLI: the three output files, the comparison figures, and one clear message per bad input."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from lightcache import cli
from lightcache.cli import main
from lightcache.video import read_mp4
from lightcache.presets import list_presets

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
    # --out gets the permissions any new directory gets here (the umask's), not a temporary directory's 0700.
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~_umask()
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


def test_compare_baseline_runs_the_plain_pipe_with_every_acceleration_off(tiny_model_dir, tmp_path, monkeypatch,
                                                                         capsys):
    from lightcache import runner
    from lightcache.comparison import ACCELERATIONS_OFF

    ran = []
    real_run_generation = runner.run_generation

    def recording(pipe, settings, *args, **kwargs):
        ran.append(settings)
        return real_run_generation(pipe, settings, *args, **kwargs)

    monkeypatch.setattr(runner, "run_generation", recording)
    out = tmp_path / "run"
    loud = [a for a in SMALL if a != "--quiet"]
    assert main(["generate", "--model", str(tiny_model_dir), "--prompt", "a red circle moving right", *loud,
                 "--out", str(out), "--compare-baseline", "--async-swap", "--chunk-ffn", "2", "--sliced-decode",
                 "--decode-slices", "2"]) == 0
    warm_up, accelerated, baseline = ran
    assert (accelerated.easycache, accelerated.async_swap, accelerated.chunk_ffn, accelerated.sliced_decode,
            accelerated.decode_slices) == (True, True, 2, True, 2)
    assert {name: getattr(baseline, name) for name in ACCELERATIONS_OFF} == ACCELERATIONS_OFF
    assert (baseline.prompt, baseline.seed, baseline.steps) == (accelerated.prompt, accelerated.seed, accelerated.steps)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline_settings"] == ACCELERATIONS_OFF
    assert "baseline: the plain pipe(...), every acceleration off" in capsys.readouterr().out


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
    (["--preset", "nope"], f"Unknown preset 'nope'. Valid presets: {', '.join(list_presets())}."),
    (["--model", "/definitely/not/here"], "Model directory '/definitely/not/here' does not exist"),
    (["--model", "README.md"], "'README.md' is a file, not a model directory"),
    (["--device", "banana"], "Unknown device 'banana'; use cpu or cuda"),
    (["--device", "mps"], "Unknown device 'mps'"),
    (["--model", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"], "HF_HUB_OFFLINE"),
    (["--prompt", "   "], "prompt must not be empty"),
    (["--prompt", "a red circle " * 20], "tokens long; this model's text encoder takes at most 16"),
    # The family's own fields are flags read from its adapter's declaration, validated the same way.
    (["--flow-shift", "-1"], "flow_shift must be between 0.0 and 100.0, got -1.0"),
    (["--guidance-scale-2", "31"], "guidance_scale_2 must be between 0.0 and 30.0, got 31.0"),
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


@pytest.mark.parametrize("words, message", [
    (["--threshold", "-inf"], "threshold must be between 0.0 and inf, got -inf."),
    (["--steps", "nan"], "argument --steps: invalid int value: 'nan' (see `python -m lightcache generate --help`)."),
    (["--frames"], "argument --frames: expected one argument (see `python -m lightcache generate --help`)."),
])
def test_a_value_argparse_refuses_is_one_error_line_too(monkeypatch, tmp_path, capsys, words, message):
    monkeypatch.setattr(sys, "argv", ["python -m lightcache"])
    assert main(["generate", "--out", str(tmp_path / "o"), *words]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "o").exists()


def test_presets_command_lists_every_preset(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("tiny", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b"):
        assert name in out


# --- issue 10: devices, unwritable and contended --out, signals, warm-up, Hub warnings -------------------------------
def _one_error_line(capsys, message):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err


def _never_load(monkeypatch):
    def load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(cli, "_load", load)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps", "banana"])
def test_a_device_this_machine_lacks_is_refused_before_anything_loads(monkeypatch, tmp_path, capsys, device):
    _never_load(monkeypatch)
    assert main(["generate", "--device", device, "--out", str(tmp_path / "o")]) == 2
    _one_error_line(capsys, f"'{device}'")
    assert list(tmp_path.iterdir()) == []


def test_out_under_a_file_is_one_error_line(tmp_path, monkeypatch, capsys):
    _never_load(monkeypatch)
    (tmp_path / "a-file").write_text("x")
    assert main(["generate", "--out", str(tmp_path / "a-file" / "run")]) == 2
    _one_error_line(capsys, "a-file is a file, not a directory")
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


def test_out_on_a_read_only_filesystem_is_one_error_line(tmp_path, monkeypatch, capsys):
    _never_load(monkeypatch)
    mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.parent == tmp_path:
            raise OSError(errno.EROFS, "Read-only file system")
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(["generate", "--out", str(tmp_path / "run")]) == 2
    _one_error_line(capsys, f"cannot write in {tmp_path} (Read-only file system)")
    assert list(tmp_path.iterdir()) == []


def _fake_run(monkeypatch, during=None):
    """No model: ``generate_to_dir`` writes one file (after calling ``during``), so a run takes no time."""
    monkeypatch.setattr(cli, "_load", lambda preset, args: None)

    def generate_to_dir(pipe, preset_name, settings, out_dir, *args, **kwargs):
        (Path(out_dir) / "video.mp4").write_bytes(b"not really")
        if during is not None:
            during()
        return {}

    monkeypatch.setattr(cli, "generate_to_dir", generate_to_dir)


def test_sigterm_mid_run_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    _fake_run(monkeypatch, during=lambda: os.kill(os.getpid(), signal.SIGTERM))
    before = signal.getsignal(signal.SIGTERM)
    assert main(["generate", "--quiet", "--out", str(tmp_path / "run")]) == 143
    _one_error_line(capsys, "terminated; nothing was written")
    assert list(tmp_path.iterdir()) == [], "no .lightcache-* staging directory and no --out"
    assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_while_libraries_import_is_one_line(tmp_path, monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_quiet_libraries", interrupted)
    assert main(["generate", "--out", str(tmp_path / "run")]) == 130
    _one_error_line(capsys, "stopped; nothing was written")


def test_ctrl_c_that_a_library_turns_into_another_error_is_still_one_line(tmp_path, monkeypatch, capsys):
    def lazy_import():  # diffusers' lazy modules report an interrupted import as "Failed to import ..."
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            raise RuntimeError("Failed to import diffusers.pipelines.wan.pipeline_wan") from None

    monkeypatch.setattr(cli, "_quiet_libraries", lazy_import)
    assert main(["generate", "--out", str(tmp_path / "run")]) == 130
    _one_error_line(capsys, "stopped; nothing was written")


def test_importing_lightcache_loads_no_torch_so_ctrl_c_reaches_the_cli_at_once():
    code = "import sys, lightcache, lightcache.cli; print(sorted({'torch', 'diffusers'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr


@pytest.mark.parametrize("module, package", [("plotly", "plotly"), ("imageio_ffmpeg", "imageio-ffmpeg")])
def test_generate_without_the_cli_extra_names_it_before_loading_anything(module, package, tmp_path, monkeypatch,
                                                                          capsys):
    _never_load(monkeypatch)
    monkeypatch.setitem(sys.modules, module, None)  # as after `pip install lightcache` without [cli]
    assert main(["generate", "--quiet", "--out", str(tmp_path / "run")]) == 2
    _one_error_line(capsys, f'needs {package}, which is not installed: pip install "lightcache[cli]".')
    assert list(tmp_path.iterdir()) == []


def test_the_usage_line_names_the_command_as_it_was_started(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/lightcache"])
    assert cli.build_parser().format_usage().startswith("usage: lightcache ")
    monkeypatch.setattr(sys, "argv", ["/src/lightcache/__main__.py"])
    assert cli.build_parser().format_usage().startswith("usage: python -m lightcache ")


def test_a_second_run_to_the_same_out_is_refused_while_the_first_runs(tmp_path, monkeypatch, capsys):
    _never_load(monkeypatch)
    out = tmp_path / "run"
    with cli._staging_for(out):  # the first run, still going
        assert main(["generate", "--quiet", "--out", str(out)]) == 2
    _one_error_line(capsys, "another run is writing there now")
    assert list(tmp_path.iterdir()) == []


def test_a_staging_directory_left_by_a_killed_run_is_cleared(tmp_path, monkeypatch):
    out = tmp_path / "run"
    with cli._staging_for(out) as staging:
        left = staging.with_name(staging.name + "x")  # same --out, no live run holds it
    left.mkdir()
    _fake_run(monkeypatch)
    assert main(["generate", "--quiet", "--out", str(out)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["run"] and [p.name for p in out.iterdir()] == ["video.mp4"]


def test_runs_that_raced_past_the_start_keep_one_result_and_say_so(tmp_path):
    out, staging = tmp_path / "run", tmp_path / "staging"
    out.mkdir()
    (out / "video.mp4").write_text("the other run's")
    staging.mkdir()
    with pytest.raises(cli.LightcacheError, match="was filled by another run while this one ran"):
        cli._publish(staging, out)
    assert (out / "video.mp4").read_text() == "the other run's"


def test_default_warmup_follows_the_steps_and_plain_runs_never_check_it(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["generate", "--model", str(tiny_model_dir), "--no-easycache", "--steps", "3", "--frames", "5",
                 "--height", "32", "--width", "32", "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["settings"]["warmup"] == 2


def test_an_offline_hub_id_prints_no_library_warning(tmp_path, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["generate", "--model", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "--out", str(tmp_path / "o")]) == 2
    _one_error_line(capsys, "HF_HUB_OFFLINE")
    assert not [w for w in caught if "local_dir_use_symlinks" in str(w.message)]


def test_easycache_order_flag_reaches_the_settings_and_defaults_to_the_reference():
    from lightcache import cli
    from lightcache.presets import load_preset
    from lightcache.settings import RunSettings

    def settings(*flags):
        args = cli.build_parser().parse_args(["generate", "--preset", "tiny", "--out", "unused", *flags])
        return RunSettings.from_preset(load_preset("tiny"), **cli._settings_overrides(args))

    assert settings().easycache_order == 0
    assert settings("--easycache-order", "1").easycache_order == 1
    assert settings("--easycache-order", "0").easycache_order == 0
    with pytest.raises(cli.LightcacheError, match="--easycache-order: invalid choice: 2"):
        cli.build_parser().parse_args(["generate", "--out", "unused", "--easycache-order", "2"])


def test_a_family_field_flag_reaches_the_run(tiny_model_dir, tmp_path, capsys):
    """``--flow-shift`` exists because the Wan adapter declares flow_shift; the value is the run's, in its summary."""
    assert "--flow-shift" in cli.build_parser()._subparsers._group_actions[0].choices["generate"].format_help()
    out = tmp_path / "run"
    assert _generate(tiny_model_dir, out, "--flow-shift", "7.5", "--steps", "3") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["flow_shift"] == 7.5 and summary["family"] == "wan"
