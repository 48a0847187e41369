"""The Gradio app: form validation, per-run outputs, sessions, and the served page driven through gradio_client.

The served app uses a random-weight tiny pipeline built offline (injected through PipelineCache) and small form
defaults, so that every run takes a second or two on a CPU.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from conftest import PATIENCE_S, CallGate
from gradio_client import Client

from lightcache.app import build_demo, jobs, layout, parse_args
from lightcache.app.form import FIELDS, initial_values, labelled, parse_request
from lightcache.app.gpu import estimate_gpu_seconds, job_gpu_seconds
from lightcache.app.jobs import ACCELERATED, JobUpdate, Session, stream_job
from lightcache.app.layout import preset_updates
from lightcache.app.outputs import OutputDirs
from lightcache.app.pipelines import PipelineCache
from lightcache.app.view import call_counts
from lightcache.app.waiting import enqueued_at, waiting_count
from lightcache.errors import LightcacheError, RunCancelled
from lightcache.events import FramesDecoded, RunFinished, RunStarted, StageStarted, StepRecord
from lightcache.plots import trace_figure
from lightcache.tiny import build_tiny_pipeline
from lightcache.video import read_mp4

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(steps=6, warmup=2, frames=5, height=32, width=32, tau=0.2)
#: Largest 8-bit difference allowed between decoded videos of separately built pipelines (float rounding only).
VIDEO_LEVELS_TOL = 3


# --- form -------------------------------------------------------------------------------------------------
def _raw(**changes):
    return dict(initial_values("tiny", SMALL), **changes)


def test_initial_values_cover_every_field_and_make_a_valid_job():
    values = initial_values("tiny")
    assert list(values) == list(FIELDS)
    job = parse_request(values, device="cpu")
    assert job.settings.easycache and job.settings.threshold == values["tau"]
    assert not job.plain_settings.easycache and job.plain_settings.chunk_ffn is None


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(prompt=""), "Prompt: prompt must not be empty."),
        (dict(prompt="   "), "Prompt: prompt must not be empty."),
        (dict(prompt=None), "Prompt: prompt must not be empty."),
        (dict(steps=500), "Steps: steps must be between 2 and 100, got 500."),
        (dict(steps=2.5), "Steps: steps must be a whole number between 2 and 100, got 2.5."),
        (dict(frames=6), "Frames: frames must be of the form 4k+1"),
        (dict(frames=129), "Frames: frames must be between 1 and 65, got 129."),
        (dict(height=40), "Height: height must be a multiple of 16, got 40."),
        (dict(width=4096), "Width: width must be between 16 and 256, got 4096."),
        (dict(seed=-1), "Seed: seed must be between 0 and"),
        (dict(tau=-0.1), "tau (EasyCache threshold): threshold must be between 0.0 and inf, got -0.1."),
        (dict(tau="abc"), "tau (EasyCache threshold): threshold must be a number"),
        (dict(warmup=6), "Warm-up steps: warmup must be between 0 and 5, got 6."),
        (dict(easycache="maybe"), "EasyCache must be true or false, got 'maybe'."),
        (dict(preset="nope"), "Preset: Unknown preset 'nope'. Valid presets: tiny"),
        (dict(preset="wan2.1-t2v-1.3b"), "Preset: 'wan2.1-t2v-1.3b' needs a CUDA GPU and this machine has none."),
    ],
)
def test_bad_input_names_the_field_and_range(changes, message):
    with pytest.raises(LightcacheError) as info:
        parse_request(_raw(**changes), device="cpu")
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("changes, message", [
    (dict(prompt="a red \ud800 circle"), "Prompt: prompt holds a character that is not valid text (U+D800, a lone "
                                         "surrogate, at position 6); remove it."),
    (dict(negative_prompt="\udcff"), "Negative prompt: negative_prompt holds a character that is not valid text "
                                     "(U+DCFF, a lone surrogate, at position 0); remove it."),
])
def test_text_that_utf8_cannot_encode_is_named(changes, message):
    with pytest.raises(LightcacheError) as info:
        parse_request(_raw(**changes), device="cpu")
    assert str(info.value) == message


@pytest.mark.parametrize("changes, start", [
    (dict(easycache="x" * 100_000), "EasyCache must be true or false, got 'xxx"),
    (dict(prompt=list(range(10_000))), "Prompt must be text, got [0, 1, 2"),
    (dict(seed=10 ** 308), "Seed: seed must be between 0 and 9223372036854775807, got 1000"),
    (dict(steps=int("9" * 309)), "Steps: steps must be between 2 and 100, got 9999"),
    (dict(frames=list(range(10_000))), "Frames: frames must be a whole number between 1 and 65, got [0, 1, 2"),
])
def test_a_long_value_is_quoted_cut(changes, start):
    with pytest.raises(LightcacheError) as info:
        parse_request(_raw(**changes), device="cpu")
    message = str(info.value)
    assert message.startswith(start) and message.endswith("….") and len(message) < len(start) + 80, message


def test_gpu_preset_is_accepted_where_cuda_is():
    job = parse_request(_raw(preset="wan2.1-t2v-1.3b", height=480, width=832, frames=81), device="cuda")
    assert job.preset.requires_gpu


def test_numbers_in_any_json_spelling_are_accepted():
    job = parse_request(_raw(steps=6.0, frames="5", seed="3", tau="0.1", compare="true"), device="cpu")
    assert (job.settings.steps, job.settings.frames, job.settings.seed, job.settings.threshold, job.compare) == (
        6, 5, 3, 0.1, True)


def test_feature_chunking_toggle_sets_a_chunk_count():
    assert parse_request(_raw(feature_chunking=True), device="cpu").settings.chunk_ffn >= 1
    assert parse_request(_raw(feature_chunking=False), device="cpu").settings.chunk_ffn is None


def test_sliced_decoding_from_the_form_leaves_the_band_count_to_the_default():
    # What the default does with it is tested in test_decode.py and test_memory_integration.py.
    settings = parse_request(_raw(sliced_decode=True), device="cpu").settings
    assert settings.sliced_decode and settings.decode_slices is None


def test_labelled_maps_setting_names_to_form_labels():
    assert labelled("chunk_ffn is 8 but ...").startswith("Feature chunking: ")
    assert labelled("something else") == "something else"


def test_preset_change_updates_bounds_and_warns_about_gpu_presets():
    with pytest.warns(UserWarning, match="needs a CUDA GPU"):
        info, prompt, image, negative, steps, frames, height, width, tau, warmup = preset_updates(
            "wan2.1-t2v-1.3b", "cpu")
    assert "Needs a CUDA GPU" in info["info"]
    assert height["maximum"] == 720 and width["maximum"] == 1280 and frames["value"] == 81
    assert image["visible"] is False and prompt["visible"] is True and negative["visible"] is True
    assert prompt["value"] == "A cat walks on the grass, realistic"
    info, *_ = preset_updates("tiny", "cpu")
    assert "CUDA" not in info["info"]
    with pytest.warns(UserWarning):
        _, _, image, *_ = preset_updates("wan2.1-i2v-14b-480p", "cpu")
    assert image["visible"] is True
    with pytest.warns(UserWarning):
        _, _, image, *_ = preset_updates("wan2.2-ti2v-5b", "cpu")
    assert image["visible"] is True and "optional" in image["label"]


def test_the_image_field_reads_only_gradio_uploads(tmp_path):
    from PIL import Image

    from lightcache.app.form import parse_image

    uploads = tmp_path / "uploads"
    (uploads / "abc").mkdir(parents=True)
    inside = uploads / "abc" / "frame.png"
    Image.new("RGB", (8, 8), "red").save(inside)
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), "blue").save(outside)
    assert parse_image(None, str(uploads)) is None
    assert parse_image({"path": str(inside)}, str(uploads)).size == (8, 8)
    for raw in ({"path": str(outside)}, {"path": str(uploads / "abc" / ".." / ".." / "secret.png")},
                {"url": "http://127.0.0.1/x.png"}, "/etc/passwd", {"path": str(uploads)}):
        with pytest.raises(LightcacheError, match="Image"):
            parse_image(raw, str(uploads))
    (uploads / "abc" / "not.png").write_bytes(b"plain text")
    with pytest.raises(LightcacheError, match="could not be read"):
        parse_image({"path": str(uploads / "abc" / "not.png")}, str(uploads))


def test_an_image_past_pils_own_limit_gets_the_size_message():
    import struct
    import zlib

    from lightcache.images import open_image

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def png_header(width: int, height: int) -> bytes:  # all PIL reads before it refuses or decodes
        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")

    with pytest.raises(LightcacheError) as info:
        open_image(png_header(20000, 20000), label="Image (first frame)")  # PIL's DecompressionBombError
    assert str(info.value) == "Image (first frame) is far too large; the largest accepted is 16 megapixels."
    with pytest.raises(LightcacheError) as info:
        open_image(png_header(5000, 5000), label="Image (first frame)")  # past our limit, within PIL's
    assert str(info.value) == "Image (first frame) is 5000x5000; the largest accepted is 16 megapixels."


def test_image_presets_need_an_image_and_text_presets_refuse_one():
    from lightcache.images import check_image_for_preset
    from lightcache.presets import load_preset
    from PIL import Image

    frame = Image.new("RGB", (8, 8))
    with pytest.raises(LightcacheError, match="first frame"):
        check_image_for_preset(load_preset("wan2.2-i2v-a14b"), None)
    with pytest.raises(LightcacheError, match="text-to-video only"):
        check_image_for_preset(load_preset("tiny"), frame)
    check_image_for_preset(load_preset("wan2.2-ti2v-5b"), None)
    check_image_for_preset(load_preset("wan2.2-ti2v-5b"), frame)


# --- outputs, sessions, GPU estimate, counts ---------------------------------------------------------------
def test_output_dirs_are_unique_and_old_ones_are_swept(tmp_path):
    dirs = OutputDirs(root=tmp_path, max_age_s=60)
    a, b = dirs.new(), dirs.new()
    assert a != b and os.path.isdir(a) and os.path.isdir(b)
    old = time.time() - 120
    os.utime(a, (old, old))
    assert dirs.sweep() == [a]
    assert not os.path.exists(a) and os.path.isdir(b)
    dirs.discard(b)
    assert not os.path.exists(b)
    outside = tmp_path / "not-a-run"
    outside.mkdir()
    dirs.discard(outside)  # never removes anything it did not create
    assert outside.is_dir()


def test_session_copies_are_independent_and_stop_only_their_own_run():
    template = Session()
    a, b = copy.deepcopy(template), copy.deepcopy(template)
    cancel = a.start()
    assert not b.stop() and not cancel.is_set()
    assert a.stop() and cancel.is_set()
    assert not a.stop()  # nothing left to stop
    again = pickle.loads(pickle.dumps(a))
    assert not again.stop()
    assert not pickle.loads(pickle.dumps(a)).stopped_since(1.0)  # a copy carries no Stop along either


def test_gpu_estimate_grows_with_work():
    # The decorator itself, with the spaces package and without it: tests/test_spaces.py.
    small = estimate_gpu_seconds("wan2.1-t2v-1.3b", 10, 33, 480, 832, False)
    big = estimate_gpu_seconds("wan2.1-t2v-1.3b", 50, 81, 480, 832, False)
    assert small < big <= estimate_gpu_seconds("wan2.1-t2v-1.3b", 50, 81, 480, 832, True)
    assert estimate_gpu_seconds("tiny", 20, 33, 128, 128, False) == 60
    assert estimate_gpu_seconds("nope", "x", None, 1, 1, False) == 60
    job = parse_request(dict(initial_values("wan2.1-t2v-1.3b"), steps=50, frames=81, compare=True), device="cuda")
    assert job_gpu_seconds(job, "out-dir", None) == estimate_gpu_seconds("wan2.1-t2v-1.3b", 50, 81, 480, 832, True)


def test_call_counts_estimate_the_denoise_speedup():
    def rec(computed, ms):
        return StepRecord(step=0, timestep=1.0, branch="cond", computed=computed, reason="", ms=ms)

    counts = call_counts([rec(True, 10.0), rec(True, 10.0), rec(False, 0.0), rec(False, 0.0)])
    assert (counts.computed, counts.reused, counts.estimated_speedup) == (2, 2, 2.0)
    assert call_counts([]).estimated_speedup == 1.0


def test_app_py_help_lists_its_flags(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--share" in out and "GRADIO_SERVER_PORT" in out


# --- the Stop path and the live updates, without a server ------------------------------------------------------
class _FakePipelines:
    """A PipelineCache stand-in: lends one object as the pipeline, records for which preset, and says when it has
    been given back."""

    def __init__(self, device="cpu", loaded="tiny"):
        self.device, self.loaded = device, loaded
        self.pipe = object()
        self.lent_for = []
        self.released = threading.Event()

    def holds(self, preset):
        return preset.name == self.loaded

    @contextlib.contextmanager
    def use(self, preset):
        self.lent_for.append(preset.name)
        try:
            yield self.pipe
        finally:
            self.released.set()


def _small_job():
    return parse_request(initial_values("tiny", SMALL), device="cpu")


def _stage_then_wait(seen):
    """A stand-in for a run: one update, then it waits for the cancel switch (the runner checks it before every
    transformer call) and raises what the runner raises when it is set."""

    def run(pipe, job, out_dir, cancel):
        seen["out_dir"], seen["cancel"] = out_dir, cancel
        yield JobUpdate(run=ACCELERATED, event=StageStarted(stage="denoise", t=0.0))
        seen["stopped"] = cancel.wait(PATIENCE_S)
        if seen["stopped"]:
            raise RunCancelled("stopped")

    return run


def test_closing_a_jobs_update_stream_cancels_the_run(monkeypatch):
    """Gradio closes the handler's generator when a run is cancelled (Stop's ``cancels=``) or its client goes away;
    the run on the worker thread must then stop too, and give the pipeline back."""
    seen = {}
    monkeypatch.setattr(jobs, "stream_job", _stage_then_wait(seen))
    pipelines, cancel = _FakePipelines(), threading.Event()
    updates = jobs.job_updates(pipelines, _small_job(), "unused", cancel)
    assert next(updates).event.stage == "denoise"
    assert not cancel.is_set()
    updates.close()
    assert cancel.is_set()
    assert pipelines.released.wait(PATIENCE_S) and seen["stopped"]


def test_a_jobs_updates_arrive_in_order_and_its_error_surfaces_in_the_consumer(monkeypatch):
    seen = {}

    def two_updates_then_fail(pipe, job, out_dir, cancel):
        worker = threading.current_thread()
        # A worker of its own, named for thread dumps, that never keeps the server process alive at exit.
        seen.update(pipe=pipe, job=job, out_dir=out_dir, cancel=cancel, name=worker.name, daemon=worker.daemon)
        yield JobUpdate(run=ACCELERATED, video="a.mp4")
        yield JobUpdate(run="plain", video="b.mp4")
        raise ValueError("the decoder failed")

    monkeypatch.setattr(jobs, "stream_job", two_updates_then_fail)
    pipelines, cancel, job = _FakePipelines(), threading.Event(), _small_job()
    updates = jobs.job_updates(pipelines, job, "out", cancel)
    assert [next(updates).video, next(updates).video] == ["a.mp4", "b.mp4"]
    with pytest.raises(ValueError, match="the decoder failed"):
        next(updates)
    assert pipelines.released.is_set() and pipelines.lent_for == ["tiny"]
    assert seen == dict(pipe=pipelines.pipe, job=job, out_dir="out", cancel=cancel, name="lightcache-job",
                        daemon=True)

    monkeypatch.setattr(jobs, "stream_job", lambda *args: iter([JobUpdate(run=ACCELERATED, video="c.mp4")]))
    assert [u.video for u in jobs.job_updates(_FakePipelines(), _small_job(), "unused", threading.Event())] == [
        "c.mp4"]


def test_closing_the_handler_mid_run_stops_the_run_and_removes_its_output(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(jobs, "stream_job", _stage_then_wait(seen))
    pipelines = _FakePipelines()
    handler = layout.run_job(pipelines, OutputDirs(tmp_path), initial_values("tiny", SMALL), Session())
    assert next(handler)[0] == "**Starting…**"
    assert "denoise" in next(handler)[0]
    assert os.path.isdir(seen["out_dir"])
    handler.close()  # what Gradio does to a cancelled event's generator
    assert seen["cancel"].is_set()
    assert pipelines.released.wait(PATIENCE_S) and seen["stopped"]
    assert not os.path.exists(seen["out_dir"])


def test_stop_ends_the_sessions_running_job_and_says_so(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(jobs, "stream_job", _stage_then_wait(seen))
    session = Session()
    handler = layout.run_job(_FakePipelines(), OutputDirs(tmp_path), initial_values("tiny", SMALL), session)
    next(handler), next(handler)
    note = layout.stop_job(session, waiting=0)
    assert note == layout.STOPPING and "waiting" not in note
    rest = list(handler)
    assert rest[-1][0] == layout.STOPPED and rest[-1][2] is None and rest[-1][5] is None  # no videos: none was kept
    assert gr.skip() not in rest[-1], "an API caller's result holds a skip where a value should be"
    assert seen["stopped"]
    assert not os.path.exists(seen["out_dir"])
    # Pressed again (and again), Stop still says the run was stopped: the page copies its answer into the status.
    assert layout.stop_job(session) == layout.stop_job(session) == layout.STOPPED_AGAIN
    session.start()  # a new run: Stop speaks of it, not of the one stopped before
    session.start().set()
    assert layout.stop_job(session) == layout.NOTHING_RUNNING


def test_stop_tells_apart_a_running_and_a_waiting_run(monkeypatch):
    session = Session()
    assert layout.stop_job(session, waiting=1) == "**Stopped.** Your run waiting in the queue will not start."
    running = ("**Stopped.** The run ends at its next transformer call, or within the frame it is decoding; its "
               "hooks are removed and its memory released before the next run starts.")
    cancel = session.start()
    assert layout.stop_job(session, waiting=2) == running + " Your waiting run will not start." and cancel.is_set()
    session.start()
    assert layout.stop_job(session, waiting=0) == running
    assert layout.stop_job(session, waiting=1) == layout.STOPPED_AGAIN + " Your waiting run will not start."
    # A run that entered the queue before Stop (or at the same instant) does not start; a later one does.
    monkeypatch.setattr(time, "monotonic", lambda: 100.0)
    fresh = Session()
    assert not fresh.stopped_since(99.0)
    fresh.stop()
    assert fresh.stopped_since(99.0) and fresh.stopped_since(100.0)
    assert not fresh.stopped_since(100.5) and not fresh.stopped_since(None)
    assert list(layout.run_job(_FakePipelines(), None, {}, fresh, enqueued_at=100.0)) == [
        (layout.STOPPED_BEFORE_START,) + (None,) * 6]


def test_a_finished_job_keeps_its_output_and_says_what_it_loaded(monkeypatch, tmp_path):
    seen = {}

    def finishes(pipe, job, out_dir, cancel):
        seen["out_dir"] = out_dir
        yield JobUpdate(run=ACCELERATED, video=os.path.join(out_dir, "accelerated.mp4"))

    monkeypatch.setattr(jobs, "stream_job", finishes)
    outputs = list(layout.run_job(_FakePipelines(loaded=None), OutputDirs(tmp_path), initial_values("tiny", SMALL),
                                  Session()))
    assert outputs[0][0] == "**Loading the model…**"  # a preset that is not loaded yet says so first
    assert outputs[-1][0].startswith("**Done.**") and outputs[-1][2].endswith("accelerated.mp4")
    assert os.path.isdir(seen["out_dir"])


def test_a_gpu_preset_runs_where_the_pipelines_are_on_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr(jobs, "stream_job", lambda *args: iter(()))
    raw = dict(initial_values("tiny", SMALL), preset="wan2.1-t2v-1.3b", height=480, width=832, frames=81)
    outputs = list(layout.run_job(_FakePipelines(device="cuda"), OutputDirs(tmp_path), raw, Session()))
    assert outputs[-1][0].startswith("**Done.**")


def test_errors_reach_the_page_as_one_sentence(monkeypatch, tmp_path, caplog):
    with pytest.raises(gr.Error) as refused:
        list(layout.run_job(_FakePipelines(), OutputDirs(tmp_path), dict(initial_values("tiny", SMALL), prompt=""),
                            Session()))
    assert refused.value.message == "Prompt: prompt must not be empty." and refused.value.print_exception is False

    def fails(error):
        def run(pipe, job, out_dir, cancel):
            raise error
            yield

        return run

    monkeypatch.setattr(jobs, "stream_job", fails(LightcacheError("chunk_ffn is 9 but only 8 tokens")))
    with pytest.raises(gr.Error) as known:
        list(layout.run_job(_FakePipelines(), OutputDirs(tmp_path), initial_values("tiny", SMALL), Session()))
    assert known.value.message == "Feature chunking: chunk_ffn is 9 but only 8 tokens"
    assert known.value.print_exception is False

    monkeypatch.setattr(jobs, "stream_job", fails(OSError("/srv/secret/blob is gone")))
    with caplog.at_level("ERROR", logger="lightcache.app.layout"), pytest.raises(gr.Error) as unknown:
        list(layout.run_job(_FakePipelines(), OutputDirs(tmp_path), initial_values("tiny", SMALL), Session()))
    assert unknown.value.message == "The run failed (OSError); the server's log has the details."
    assert [(r.getMessage(), r.exc_info[0]) for r in caplog.records] == [("generation failed", OSError)]
    assert os.listdir(tmp_path) == []  # no run left an output directory behind


def test_a_comparison_on_a_cpu_shows_the_video_only_at_the_end(monkeypatch, tmp_path):
    """On a CPU the page must not play the first video while the second run is being timed."""

    def two_runs(pipe, job, out_dir, cancel):
        yield JobUpdate(run=ACCELERATED, event=StageStarted(stage="decode", t=0.0))
        yield JobUpdate(run=ACCELERATED, video="a.mp4")
        yield JobUpdate(run="plain", event=StageStarted(stage="denoise", t=1.0))
        yield JobUpdate(run="plain", video="p.mp4")

    monkeypatch.setattr(jobs, "stream_job", two_runs)
    raw = dict(initial_values("tiny", SMALL), compare=True)
    outputs = list(layout.run_job(_FakePipelines(), OutputDirs(tmp_path), raw, Session()))
    assert all(not _is_value(out[2]) or out[2] is None for out in outputs[:-1])
    assert all(not _is_value(out[3]) or out[3] is None for out in outputs[:-1])  # nor redraw the timeline
    assert outputs[-1][2] == "a.mp4" and outputs[-1][5] == "p.mp4"


def test_a_new_job_stops_the_sessions_previous_one():
    session = Session()
    first = session.start()
    second = session.start()
    assert first.is_set() and not second.is_set()


def test_the_stop_button_cancels_the_run_event(tmp_path):
    """Stop reaches a running job two ways: the ``/stop`` handler flips its switch, and Gradio's ``cancels=`` closes
    the run's generator (which the job turns into the same switch). Only a browser triggers the second, so check
    that it is wired: some event of the Stop button cancels the ``generate`` event."""
    demo = build_demo(PipelineCache(loader=lambda preset, device: None, device="cpu"), OutputDirs(tmp_path),
                      defaults=SMALL)
    config = demo.config
    stop_button = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "stop")
    generate = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "generate")
    on_stop = [d for d in config["dependencies"] if [stop_button, "click"] in [list(t) for t in d["targets"]]]
    assert any(d.get("api_name") == "stop" for d in on_stop)
    assert any(generate in d.get("cancels", []) for d in on_stop)


def test_gradios_queue_is_read_for_the_asking_session_only():
    def event(session, api_name="generate", t=None):
        return SimpleNamespace(session_hash=session, fn=SimpleNamespace(api_name=api_name), enqueue_time=t)

    blocks = SimpleNamespace(_queue=SimpleNamespace(
        active_jobs=[None, [event("b", t=1.0)], [event("a", "stop", t=2.0), event("a", t=3.0)]],
        event_queue_per_concurrency_id={"generate": SimpleNamespace(queue=[event("a"), event("b"), event("a")]),
                                        "other": SimpleNamespace(queue=[event("a", "stop")])},
    ))
    assert (enqueued_at(blocks, "a"), enqueued_at(blocks, "b"), enqueued_at(blocks, "c")) == (3.0, 1.0, None)
    assert enqueued_at(blocks, None) is None and enqueued_at(blocks, "a", api_name="stop") == 2.0
    assert (waiting_count(blocks, "a"), waiting_count(blocks, "b"), waiting_count(blocks, None)) == (2, 1, 0)
    assert waiting_count(blocks, "a", api_name="stop") == 1
    # Should Gradio's internals change, the answer is "unknown", never an error.
    for changed in (object(), SimpleNamespace(_queue=object()),
                    SimpleNamespace(_queue=SimpleNamespace(active_jobs=[[object()]],
                                                           event_queue_per_concurrency_id={"g": object()}))):
        assert (enqueued_at(changed, "a"), waiting_count(changed, "a")) == (None, 0)
    no_time = SimpleNamespace(_queue=SimpleNamespace(active_jobs=[[SimpleNamespace(
        session_hash="a", fn=SimpleNamespace(api_name="generate"))]]))
    assert enqueued_at(no_time, "a") is None
    no_name = SimpleNamespace(_queue=SimpleNamespace(active_jobs=[[SimpleNamespace(
        session_hash="a", fn=object(), enqueue_time=1.0)]]))
    assert enqueued_at(no_name, "a") is None  # a handler without an API name is not this one


def _run_updates(job, branches=("cond", "uncond")):
    """A run's start and one step record per call, as a job hands them to the page."""
    # The run says how many calls make a step (its family adapter's count); the page redraws once a step is in.
    started = JobUpdate(run=ACCELERATED, event=RunStarted(preset="tiny", settings=job.settings.to_dict(),
                                                          device="cpu", calls_per_step=len(branches)))
    return [started] + [JobUpdate(run=ACCELERATED, event=StepRecord(step=s, timestep=1000.0 - s, branch=b,
                                                                    computed=True, reason="warm-up", ms=1.0))
                        for s in range(job.settings.steps) for b in branches]


class _Clock:
    """Seconds that move only when the test says: each call record handed over advances it by ``per_update``."""

    def __init__(self, updates, per_update):
        self.now, self._updates, self._per_update = 0.0, updates, per_update

    def __call__(self):
        return self.now

    def updates(self):
        for update in self._updates:
            if isinstance(update.event, StepRecord):
                self.now += self._per_update
            yield update


def test_fast_steps_redraw_the_trace_at_most_every_refresh_period_and_the_last_step_always():
    job = _small_job()
    steps = job.settings.steps
    # 1/16 s per call, two calls per step: 1/8 s per step, so 0.25 s (the refresh period) passes every other step.
    clock = _Clock(_run_updates(job), per_update=1 / 16)
    shown = [out[0] for out in layout._present(job, clock.updates(), loading=False, device="cpu", clock=clock)
             if _is_value(out[1])]
    assert layout.TRACE_REFRESH_S == 0.25 and steps == 6
    assert [s[s.index("step "):].split(" ·")[0] for s in shown[1:-1]] == [
        "step 1 / 6", "step 3 / 6", "step 5 / 6", "step 6 / 6"]


def test_slow_steps_redraw_the_trace_every_step_and_the_timeline_every_refresh_period():
    job = _small_job()
    clock = _Clock(_run_updates(job), per_update=0.75)  # 1.5 s per step
    outputs = list(layout._present(job, clock.updates(), loading=False, device="cpu", clock=clock))
    traced = [out for out in outputs[1:-1] if _is_value(out[1])]
    assert len(traced) == job.settings.steps
    # The timeline (2 s refresh) rides on the steps at 3.0, 6.0 and 9.0 s: more than 2 s after the last one.
    assert [_is_value(out[3]) for out in traced] == [False, True, False, True, False, True]



def test_with_one_call_per_step_every_step_is_drawn_once_it_is_in():
    """A family with one call per step (embedded guidance, a UNet's batched call): the run says so, and the page
    draws every step, not every other one as a guessed 'two calls with guidance' would."""
    job = _small_job()
    assert job.settings.guidance_scale > 1
    clock = _Clock(_run_updates(job, branches=("cond",)), per_update=1.5)
    outputs = list(layout._present(job, clock.updates(), loading=False, device="cpu", clock=clock))
    assert len([out for out in outputs[1:-1] if _is_value(out[1])]) == job.settings.steps

# --- the served app -------------------------------------------------------------------------------------
class _Loader:
    """Builds tiny random pipelines and remembers them, so tests can inspect what the app ran on.

    ``gate`` can hold the transformer's calls, so that a test can stop a run surely before it ends.
    """

    def __init__(self):
        self.pipes = []
        self.gate = CallGate()

    def __call__(self, preset, device):
        pipe = build_tiny_pipeline(0)
        pipe.transformer.register_forward_pre_hook(self.gate)
        self.pipes.append(pipe)
        return pipe


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    loader = _Loader()
    out_root = tmp_path_factory.mktemp("app-outputs")
    demo = build_demo(PipelineCache(loader=loader, device="cpu"), OutputDirs(out_root), defaults=SMALL)
    # No port given: Gradio binds the first free one itself (and moves on if another process takes it first).
    demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        yield demo, loader, out_root
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(served):
    return _client(served[0].local_url, served[2].parent / "downloads")


def _is_value(output):
    return not (isinstance(output, dict) and output.get("__type__") == "update")


def _plot(output):
    assert isinstance(output, dict) and output["type"] == "plotly", output
    return json.loads(output["plot"])


def test_default_run_streams_every_step_then_video_and_timeline(client, monkeypatch):
    monkeypatch.setattr(layout, "TRACE_REFRESH_S", 0.0)  # every step (a GPU step is slower than the default)
    job = client.submit(api_name="/generate")  # no arguments: the form's defaults
    final = job.result(timeout=120)
    updates = job.outputs()
    trace_updates = [u for u in updates if _is_value(u[1]) and _plot(u[1])["data"][0]["x"]]
    assert len(trace_updates) >= SMALL["steps"]
    first_step = next(i for i, u in enumerate(updates) if "step 1 /" in u[0])
    first_video = next(i for i, u in enumerate(updates) if _is_value(u[2]) and u[2])
    assert first_step < first_video, "the trace must be live: steps show before the video exists"

    status, trace, video, timeline, stages, plain_video, comparison = final
    assert status.startswith("**Done.**") and f"step {SMALL['steps']} / {SMALL['steps']}" in status
    frames = read_mp4(video)
    assert frames.shape == (SMALL["frames"], SMALL["height"], SMALL["width"], 3)
    timeline_fig = _plot(timeline)
    labels = " ".join(a["text"] for a in timeline_fig["layout"]["annotations"])
    assert "encode" in labels and "denoise" in labels and "decode" in labels
    assert "| decode |" in stages and plain_video is None and "Tick **Compare" in comparison


def test_compare_shows_plain_video_speedup_psnr_ssim(client):
    args = dict(initial_values("tiny", SMALL), compare=True)
    job = client.submit(*args.values(), api_name="/generate")
    final = job.result(timeout=120)
    status, trace, video, timeline, stages, plain_video, comparison = final
    # On a CPU the accelerated video waits for the plain run, so playing it does not slow the run it is timed against.
    assert not any(_is_value(u[2]) and u[2] for u in job.outputs()[:-1])
    assert read_mp4(plain_video).shape == read_mp4(video).shape
    assert "Speed-up" in comparison and "PSNR" in comparison and "SSIM" in comparison


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(prompt=""), "Prompt: prompt must not be empty."),
        (dict(steps=500), "Steps: steps must be between 2 and 100, got 500."),
        (dict(height=300), "Height: height must be between 16 and 256, got 300."),
        (dict(tau=-1), "tau (EasyCache threshold): threshold must be between 0.0 and inf"),
        (dict(preset="wan2.1-t2v-14b"), "Preset: 'wan2.1-t2v-14b' needs a CUDA GPU"),
        (dict(prompt="a red circle moving right " * 4), "Prompt: prompt is 21 tokens long; this model's text "
                                                        "encoder takes at most 16."),
    ],
)
def test_bad_inputs_return_the_specific_error(client, served, changes, message):
    before = set(os.listdir(served[2]))
    with pytest.raises(Exception) as info:
        client.predict(**changes, api_name="/generate")
    assert message in str(info.value)
    assert set(os.listdir(served[2])) <= before, "a refused run must leave no output directory behind"


def test_stop_mid_run_leaves_a_clean_pipeline_and_the_next_run_is_a_fresh_one(client, served):
    demo, loader, out_root = served
    if not loader.pipes:
        client.predict(api_name="/generate")  # load the model first: its warm-up run would go through the gate too
    before = set(os.listdir(out_root))
    loader.gate.hold(after_calls=2)  # step 1 (cond and uncond) runs, step 2 waits until Stop has been pressed
    try:
        job = client.submit(steps=100, api_name="/generate")
        deadline = time.monotonic() + PATIENCE_S
        while not any("step 1 /" in u[0] for u in job.outputs()):
            assert time.monotonic() < deadline and not job.done(), "the run never reached its first step"
            time.sleep(0.05)
        assert "Stopped" in client.predict(api_name="/stop")
    finally:
        loader.gate.release()
    final = job.result(timeout=PATIENCE_S)
    assert "Stopped" in final[0]
    assert "step 100 / 100" not in job.outputs()[-2][0]
    # The API's result holds values: the trace so far, and no videos (the stopped run's files are gone).
    assert final[2] is None and final[5] is None and isinstance(final[1], dict) and "plot" in final[1], final

    pipe = loader.pipes[-1]
    registry = getattr(pipe.transformer, "_diffusers_hook", None)
    assert registry is None or not registry.hooks, "hooks left on the transformer after Stop"
    assert set(os.listdir(out_root)) == before, "the stopped run's output directory was not removed"

    after_stop = client.predict(api_name="/generate")
    assert len(loader.pipes) == 1  # the same pipeline object served the stopped and the next run
    job = parse_request(initial_values("tiny", SMALL), device="cpu")
    with tempfile.TemporaryDirectory() as fresh_dir:
        list(stream_job(build_tiny_pipeline(0), job, fresh_dir))
        fresh = read_mp4(Path(fresh_dir) / "accelerated.mp4")
    # A separately built pipeline: the same video up to float rounding, which the 8-bit H.264 video may show as a
    # level here and there; a run that inherited state from the stopped one differs far more.
    difference = np.abs(read_mp4(after_stop[2]).astype(int) - fresh.astype(int))
    assert difference.max() <= VIDEO_LEVELS_TOL and difference.mean() < 0.05


def test_two_clients_are_queued_both_finish_and_see_only_their_own_run(served):
    url = served[0].local_url
    a, b, c = (_client(url, served[2].parent / "downloads") for _ in range(3))
    job_a = a.submit(prompt="a blue square moving down", api_name="/generate")
    job_b = b.submit(prompt="a yellow triangle moving up", seed=7, api_name="/generate")
    assert "Nothing is running" in c.predict(api_name="/stop")  # c cannot stop a or b
    result_a, result_b = job_a.result(timeout=120), job_b.result(timeout=120)
    assert "Done." in result_a[0] and "Done." in result_b[0]
    assert result_a[2] != result_b[2]
    assert not np.array_equal(read_mp4(result_a[2]), read_mp4(result_b[2]))


def test_python_app_py_serves_the_page_on_the_gradio_port():
    # The test chooses the port (that is what it checks); another process may take it between the choice and the
    # app binding it, and the app then ends with its one-line "in use" error: choose again.
    for attempt in range(5):
        port = _free_port()
        env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
                   GRADIO_ANALYTICS_ENABLED="False")
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            page = _wait_for_page(proc, port)
        finally:
            proc.terminate()
            output = proc.communicate(timeout=30)[0]
        if page is not None or f"port {port} is already in use" not in output:
            break
    assert page is not None, output
    assert "LightCache + EasyCache" in page


def _wait_for_page(proc, port: int) -> str | None:
    """The page ``proc`` serves on ``port``, or None when it exits first."""
    deadline = time.monotonic() + PATIENCE_S  # generous: this checks that it serves, the benchmark times it
    while proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                return response.read().decode()
        except OSError:
            assert time.monotonic() < deadline, "python app.py did not serve the page"
            time.sleep(0.2)
    return None


def _client(url: str, downloads: Path) -> Client:
    return Client(url, verbose=False, download_files=str(downloads))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_building_the_page_never_touches_cuda(monkeypatch, tmp_path):
    # A ZeroGPU Space forbids CUDA in the main process: importing app.py and building the page must not ask.
    import torch

    def forbidden(*args, **kwargs):
        raise AssertionError("CUDA was queried while building the page")

    monkeypatch.setattr(torch.cuda, "is_available", forbidden)
    monkeypatch.setattr(torch.cuda, "init", forbidden)
    monkeypatch.setattr(torch.cuda, "device_count", forbidden)
    demo = build_demo(outputs=OutputDirs(tmp_path))
    assert demo.fns  # built, with its events


def test_every_example_is_something_the_tiny_model_was_trained_to_draw():
    from lightcache.app import texts
    from lightcache.tiny.shapes import HELD_OUT, parse_prompt

    for prompt, seed, tau in texts.EXAMPLES:
        spec = parse_prompt(prompt)
        assert spec.background == "black", f"{prompt!r}: the shipped model was trained on black backgrounds only"
        assert (spec.colour, spec.shape, spec.motion) not in HELD_OUT, f"{prompt!r} is held out of training"
        assert prompt == prompt.lower()


def test_every_example_drew_what_it_asks_in_the_model_evaluation():
    """The examples are rows of the shipped model's evaluation record that passed every measure."""
    from lightcache.app import texts

    record = json.loads((ROOT / "lightcache" / "data" / "tiny-wan" / "eval.json").read_text())
    rows = {(r["prompt"], r["seed"]): r for r in record["videos"]}
    for prompt, seed, _ in texts.EXAMPLES:
        row = rows[(prompt, seed)]
        assert row["colour_every_frame"] and row["shape_recognised"] and row["follows_prompt"], row


# --- the job's own run (no server) ------------------------------------------------------------------------------
def test_a_compared_job_warms_up_then_streams_each_run_into_its_file_and_compares_them(tiny_pipe, tmp_path):
    job = parse_request(dict(initial_values("tiny", SMALL), compare=True), device="cpu")
    updates = list(stream_job(tiny_pipe, job, str(tmp_path), threading.Event()))
    assert updates[0] == JobUpdate(run=jobs.WARM_UP)
    videos = [u for u in updates if u.video is not None]
    assert [(u.run, u.video) for u in videos] == [(ACCELERATED, str(tmp_path / "accelerated.mp4")),
                                                  (jobs.PLAIN, str(tmp_path / "plain.mp4"))]
    first_video, second_video = updates.index(videos[0]), updates.index(videos[1])
    assert {u.run for u in updates[1:first_video]} == {ACCELERATED}  # each run's events, then its video
    assert {u.run for u in updates[first_video + 1:second_video]} == {jobs.PLAIN}
    for video in videos:
        assert read_mp4(video.video).shape[0] == SMALL["frames"]
    calls = {run: sum(isinstance(u.event, StepRecord) for u in updates if u.run == run)
             for run in (ACCELERATED, jobs.PLAIN)}
    assert calls == {ACCELERATED: 2 * SMALL["steps"], jobs.PLAIN: 2 * SMALL["steps"]}
    last = updates[-1]
    assert (last.run, last.event, last.video) == (jobs.PLAIN, None, None)
    assert last.comparison["plain_calls"] == (2 * SMALL["steps"], 2 * SMALL["steps"])
    assert 0 < last.comparison["accelerated_calls"][0] < 2 * SMALL["steps"]  # EasyCache reused some calls
    assert math.isfinite(last.comparison["call_time_ratio"])  # from both runs' computed calls
    assert {u.event.preset for u in updates if isinstance(u.event, RunStarted)} == {"tiny"}
    import imageio_ffmpeg

    meta = next(imageio_ffmpeg.read_frames(videos[0].video))
    assert meta["fps"] == job.settings.fps


def test_a_single_job_has_no_warm_up_and_no_comparison(tiny_pipe, tmp_path):
    updates = list(stream_job(tiny_pipe, _small_job(), str(tmp_path)))
    assert updates[0].run == ACCELERATED and isinstance(updates[0].event, RunStarted)
    assert [u.video for u in updates if u.video] == [str(tmp_path / "accelerated.mp4")]
    assert updates[-1].video and all(u.comparison is None for u in updates)
    assert sorted(os.listdir(tmp_path)) == ["accelerated.mp4"]


def test_what_crosses_to_the_page_leaves_the_frames_behind():
    frames = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    assert jobs.portable(JobUpdate(run=ACCELERATED, event=FramesDecoded(first=0, t=1.0, frames=frames))) is None
    finished = RunFinished(summary={"total_seconds": 1.5}, frames=frames)
    light = jobs.portable(JobUpdate(run=jobs.PLAIN, event=finished))
    assert light == JobUpdate(run=jobs.PLAIN, event=RunFinished(summary={"total_seconds": 1.5}, frames=None))
    assert finished.frames is frames  # the worker's own event is not changed
    for kept in (JobUpdate(run=ACCELERATED, video="a.mp4"), JobUpdate(run=ACCELERATED, event=finished.__class__(
            summary={}, frames=None)), JobUpdate(run=jobs.PLAIN, comparison={"speedup": 2.0})):
        assert jobs.portable(kept) is kept


def _skips(n):
    return (gr.skip(),) * n


def test_every_update_becomes_seven_outputs_in_their_places(monkeypatch):
    """A compared job on a GPU (nothing held back): the planned trace first, the warm-up notice, one trace redraw per
    step once both branches are in, the first video and its timeline as soon as it exists, the plain run as status
    lines, and everything in full at the end."""
    from lightcache.app import texts, view

    monkeypatch.setattr(view, "comparison_markdown", lambda c: f"compared: {c['speedup']}x")
    job = parse_request(dict(initial_values("tiny", SMALL), compare=True), device="cpu")
    steps = job.settings.steps
    started = RunStarted(preset="tiny", settings=job.settings.to_dict(), device="cuda", calls_per_step=2)
    updates = [JobUpdate(run=jobs.WARM_UP), JobUpdate(run=ACCELERATED, event=started),
               JobUpdate(run=ACCELERATED, event=StageStarted(stage="denoise", t=0.0))]
    updates += [JobUpdate(run=ACCELERATED, event=StepRecord(step=s, timestep=1000.0 - s, branch=b, computed=True,
                                                            reason="warm-up", ms=1.0))
                for s in range(steps) for b in ("cond", "uncond")]
    updates += [JobUpdate(run=ACCELERATED, video="a.mp4"),
                JobUpdate(run=jobs.PLAIN, event=StageStarted(stage="denoise", t=5.0)),
                JobUpdate(run=jobs.PLAIN, video="p.mp4"), JobUpdate(run=jobs.PLAIN, comparison={"speedup": 2.5})]
    clock = _Clock(updates, per_update=0.5)  # one step a second: every step redraws the trace
    outs = list(layout._present(job, clock.updates(), loading=True, device="cuda", clock=clock))
    assert all(len(out) == 7 for out in outs)
    assert outs[0] == ("**Loading the model…**", trace_figure([started]), None, None, "", None, "")
    assert outs[1] == (layout.WARMING_UP,) + _skips(6)
    # The run's start is in the planned trace already; the denoise stage beginning redraws timeline and stages.
    assert _is_value(outs[2][3]) and _is_value(outs[2][4]) and (outs[2][1], outs[2][2]) == _skips(2)
    traces = [out for out in outs if _is_value(out[1]) and out is not outs[0] and out is not outs[-1]]
    assert len(traces) == steps
    # The timeline redraws with a trace once more than TIMELINE_REFRESH_S (2 s) passed since it was last drawn (at
    # the stage's start, t = 0): steps end at t = 1, 2, ..., 6, so it redraws at t = 3 and t = 6.
    assert layout.TIMELINE_REFRESH_S == 2.0 and steps == 6
    assert [i + 1 for i, out in enumerate(traces) if _is_value(out[3])] == [3, 6]
    video = next(out for out in outs if out[2] == "a.mp4")
    assert video[1] == gr.skip() and _is_value(video[3]) and _is_value(video[4]) and video[5:] == _skips(2)
    plain = outs[outs.index(video) + 1]
    assert plain[1:] == _skips(6) and "Plain run for comparison" in plain[0]
    assert outs[-2] is plain  # the plain run's video and the comparison wait for the end
    final = outs[-1]
    assert final[0].startswith("**Done.**") and not any(out[0].startswith("**Done.**") for out in outs[:-1])
    assert final[2] == "a.mp4" and final[5] == "p.mp4" and final[6] == "compared: 2.5x"

    # A preset without classifier-free guidance (one call per step; the form has no guidance field).
    single = _small_job()
    single = dataclasses.replace(single, settings=dataclasses.replace(single.settings, guidance_scale=1.0))
    calls = [JobUpdate(run=ACCELERATED, event=StepRecord(step=s, timestep=1000.0 - s, branch="cond",
                                                         computed=True, reason="warm-up", ms=1.0))
             for s in range(single.settings.steps)]
    clock = _Clock(calls, per_update=1.0)
    outs = list(layout._present(single, clock.updates(), loading=False, device="cpu", clock=clock))
    assert outs[0][0] == "**Starting…**" and outs[0][6] == texts.COMPARE_HINT
    assert sum(_is_value(out[1]) for out in outs[1:-1]) == single.settings.steps  # one call per step, each shown
    # A run that says its steps make two calls (Wan with guidance above 1): a step is shown once its second call is in.
    weak = dataclasses.replace(single, settings=dataclasses.replace(single.settings, guidance_scale=1.5))
    started = RunStarted(preset="tiny", settings=weak.settings.to_dict(), device="cpu", calls_per_step=2)
    calls = [JobUpdate(run=ACCELERATED, event=started)]
    calls += [JobUpdate(run=ACCELERATED, event=StepRecord(step=s, timestep=1000.0 - s, branch=b, computed=True,
                                                          reason="warm-up", ms=1.0))
              for s in range(weak.settings.steps) for b in ("cond", "uncond")]
    clock = _Clock(calls, per_update=1.0)
    outs = list(layout._present(weak, clock.updates(), loading=False, device="cpu", clock=clock))
    assert sum(_is_value(out[1]) for out in outs[1:-1]) == weak.settings.steps


def test_stop_during_the_warm_up_ends_the_job_before_either_timed_run(tiny_pipe, tmp_path):
    cancel = threading.Event()
    cancel.set()
    job = parse_request(dict(initial_values("tiny", SMALL), compare=True), device="cpu")
    updates = stream_job(tiny_pipe, job, str(tmp_path), cancel)
    assert next(updates) == JobUpdate(run=jobs.WARM_UP)
    with pytest.raises(RunCancelled):
        next(updates)
    assert os.listdir(tmp_path) == []


def _generation_that(seen, error=None):
    """A stand-in for the GPU call: records what it was given, then finishes or raises ``error``."""

    def generation(job, out_dir, cancel):
        seen.update(job=job, cancel=cancel)
        if error is not None:
            raise error
        yield JobUpdate(run=ACCELERATED, video="a.mp4")

    return generation


def test_the_handler_uses_the_generation_it_is_given_and_keeps_the_stop_switch_off_zero_gpu(tmp_path):
    seen = {}
    session = Session()
    outs = list(layout.run_job(_FakePipelines(), OutputDirs(tmp_path), initial_values("tiny", SMALL), session,
                               generation=_generation_that(seen)))
    assert outs[-1][2] == "a.mp4" and isinstance(seen["cancel"], threading.Event)
    seen.clear()
    list(layout.run_job(_FakePipelines(), OutputDirs(tmp_path), initial_values("tiny", SMALL), Session(),
                        generation=_generation_that(seen), zero_gpu=True))
    assert seen["cancel"] is None  # a threading.Event cannot cross into a ZeroGPU worker


def test_the_handler_refuses_what_this_server_does_not_offer(tmp_path):
    seen = {}
    with pytest.raises(gr.Error) as refused:
        list(layout.run_job(_FakePipelines(), OutputDirs(tmp_path), initial_values("tiny", SMALL), Session(),
                            generation=_generation_that(seen), presets=["wan2.1-t2v-1.3b"]))
    assert refused.value.message == "Preset: this server serves wan2.1-t2v-1.3b only."
    assert refused.value.print_exception is False
    with pytest.raises(gr.Error) as compiled:
        list(layout.run_job(_FakePipelines(), OutputDirs(tmp_path), dict(initial_values("tiny", SMALL), compile=True),
                            Session(), generation=_generation_that(seen), zero_gpu=True))
    assert compiled.value.message.startswith("torch.compile is not available on ZeroGPU")
    assert seen == {} and os.listdir(tmp_path) == []


def test_a_given_generations_own_errors_reach_the_page_as_one_sentence(tmp_path, caplog):
    seen = {}
    raw = initial_values("tiny", SMALL)
    with pytest.raises(gr.Error) as known:
        list(layout.run_job(_FakePipelines(), OutputDirs(tmp_path), raw, Session(), generation=_generation_that(
            seen, LightcacheError("chunk_ffn is 9 but only 8 tokens"))))
    assert (known.value.message, known.value.print_exception) == (
        "Feature chunking: chunk_ffn is 9 but only 8 tokens", False)
    with caplog.at_level("ERROR", logger="lightcache.app.layout"), pytest.raises(gr.Error) as unknown:
        list(layout.run_job(_FakePipelines(), OutputDirs(tmp_path), raw, Session(),
                            generation=_generation_that(seen, OSError("/srv/secret/blob is gone"))))
    assert unknown.value.message == "The run failed (OSError); the server's log has the details."
    assert [(r.getMessage(), r.exc_info[0]) for r in caplog.records] == [("generation failed", OSError)]
    assert os.listdir(tmp_path) == []


def test_the_warm_up_notice_says_when_compile_happens_there():
    job = _small_job()
    job = dataclasses.replace(job, settings=dataclasses.replace(job.settings, compile=True))
    outs = list(layout._present(job, iter([JobUpdate(run=jobs.WARM_UP)]), loading=False, device="cpu"))
    assert outs[1] == (layout.WARMING_UP + layout.COMPILE_WARMING_UP,) + _skips(6)


def test_the_jobs_image_preset_and_stop_switch_reach_the_warm_up_and_both_runs(monkeypatch, tmp_path):
    from PIL import Image

    calls = []

    def fake_run(pipe, settings, preset_name, cancel=None, image=None):
        calls.append(("run", settings.easycache, preset_name, cancel, image))
        yield FramesDecoded(first=0, t=0.0, frames=np.zeros((1, 16, 16, 3), np.float32))
        yield RunFinished(summary={}, frames=None)

    monkeypatch.setattr(jobs, "run_generation", fake_run)
    monkeypatch.setattr(jobs, "warm_up", lambda pipe, settings, name, image=None, cancel=None: calls.append(
        ("warm-up", settings.easycache, name, cancel, image)))
    monkeypatch.setattr(jobs, "compare_runs", lambda *args: {"compared": len(args)})
    image, cancel = Image.new("RGB", (16, 16)), threading.Event()
    job = dataclasses.replace(parse_request(dict(initial_values("tiny", SMALL), compare=True), device="cpu"),
                              image=image)
    updates = list(stream_job(object(), job, str(tmp_path), cancel))
    assert calls == [("warm-up", True, "tiny", cancel, image), ("run", True, "tiny", cancel, image),
                     ("run", False, "tiny", cancel, image)]
    assert updates[-1].comparison == {"compared": 4}  # both runs' results and both runs' call records


def test_a_stopped_job_ends_at_its_first_call_and_leaves_no_video(tiny_pipe, tmp_path):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(RunCancelled):
        list(stream_job(tiny_pipe, _small_job(), str(tmp_path), cancel))
    assert os.listdir(tmp_path) == []


def test_the_easycache_order_control_reaches_the_run_and_defaults_to_the_reference():
    assert initial_values("tiny")["easycache_order"] == 0
    assert parse_request(_raw(), device="cpu").settings.easycache_order == 0
    assert parse_request(_raw(easycache_order="1"), device="cpu").settings.easycache_order == 1
    with pytest.raises(LightcacheError) as info:
        parse_request(_raw(easycache_order=2), device="cpu")
    assert str(info.value).startswith("EasyCache order: easycache_order must be 0")


def test_a_model_that_refuses_the_small_warm_up_warms_up_at_its_presets_own_shape(monkeypatch):
    """CogVideoX-5B-I2V takes only 480x720 and 49 frames: the warm-up moves to the preset's size, then its frames."""
    from lightcache.app import pipelines
    from lightcache.errors import LightcacheError
    from lightcache.presets import load_shipped_preset

    preset = load_shipped_preset("cogvideox-5b-i2v")
    d = preset.defaults
    tried = []

    def warm_up_at(pipe, preset, frames, height, width):
        tried.append((frames, height, width))
        if (frames, height, width) != (d["frames"], d["height"], d["width"]):
            raise LightcacheError("this model takes one shape only")

    monkeypatch.setattr(pipelines, "_warm_up_at", warm_up_at)
    pipelines._warm_up(object(), preset)
    small = preset.limits.size_multiple
    assert tried == [(1, small, small), (1, d["height"], d["width"]), (d["frames"], d["height"], d["width"])]
    tried.clear()
    monkeypatch.setattr(pipelines, "_warm_up_at", lambda *a: tried.append(a[2:]))
    pipelines._warm_up(object(), preset)  # a model that takes the small request stops there
    assert tried == [(1, small, small)]
    monkeypatch.setattr(pipelines, "_warm_up_at", lambda *a: (_ for _ in ()).throw(LightcacheError("no")))
    with pytest.raises(LightcacheError):
        pipelines._warm_up(object(), preset)
