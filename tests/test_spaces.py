"""Hugging Face Spaces: the app with the real ``spaces`` package (which must change nothing outside a Space), without
it, and on a simulated ZeroGPU Space whose GPU call crosses a pickle boundary as ZeroGPU's worker process does.

What ZeroGPU requires (see lightcache/app/gpu.py): the model loads at module scope, the ``spaces.GPU`` function only
generates, what crosses into and out of it pickles, errors leave it as ``gr.Error``, and ``torch.compile`` is
refused there.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import pickle
import subprocess
import sys
import threading
import types
from pathlib import Path

import gradio as gr
import pytest
import spaces  # the real package: requirements.txt installs it for the tests
from gradio_client import Client
from PIL import Image

from lightcache.app import build_demo, layout
from lightcache.app import gpu, pipelines as pipelines_module
from lightcache.app.form import initial_values, parse_request
from lightcache.app.jobs import Session, portable, stream_job
from lightcache.app.outputs import OutputDirs
from lightcache.app.startup import PRESET_VARIABLE, served_preset, start_pipelines
from lightcache.errors import LightcacheError
from lightcache.events import FramesDecoded, RunFinished
from lightcache.presets import list_presets, load_preset
from lightcache.tiny import build_tiny_pipeline

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(steps=4, warmup=1, frames=5, height=32, width=32, tau=0.2)


class _Loader:
    """Tiny random pipelines; records where each load happened and counts transformer calls (warm-ups included)."""

    def __init__(self, inside_gpu=lambda: False):
        self.loads: list[bool] = []  # per load: was it inside a GPU call?
        self.calls = 0
        self._inside_gpu = inside_gpu

    def __call__(self, preset, device):
        self.loads.append(self._inside_gpu())
        pipe = build_tiny_pipeline(0)
        pipe.transformer.register_forward_pre_hook(lambda module, args: setattr(self, "calls", self.calls + 1))
        return pipe


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _serve(demo):
    # No port chosen here: a port found free and released could be taken before the server binds it. Gradio tries
    # its port range itself, starting the server on each until one binds.
    demo.launch(prevent_thread_lock=True, quiet=True)
    return Client(demo.local_url, verbose=False)


# --- the spaces package present and absent ---------------------------------------------------------------------
@pytest.mark.parametrize("installed", [True, False])
def test_on_gpu_asks_spaces_when_installed_and_is_the_identity_without_it(installed, monkeypatch):
    def f(x):
        return x

    asked = []
    if installed:
        real = spaces.GPU
        monkeypatch.setattr(spaces, "GPU", lambda **kw: asked.append(kw["duration"]) or real(**kw))
    else:
        monkeypatch.setitem(sys.modules, "spaces", None)  # as on a machine without the package
    duration = lambda *a, **k: 1  # noqa: E731
    assert gpu.on_gpu(duration=duration)(f) is f  # outside ZeroGPU, spaces.GPU hands the function back as it is
    assert asked == ([duration] if installed else [])
    assert (gpu.import_spaces() is spaces) == installed
    assert gpu.on_zero_gpu() is False


def test_zero_gpu_is_what_the_spaces_package_reads_from_the_space(monkeypatch):
    from spaces.config import Config, Settings

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert Settings().zero_gpu  # the variable a ZeroGPU Space sets, read the way spaces reads it
    assert not gpu.on_zero_gpu()  # spaces read it once, at import; this process is no Space
    monkeypatch.setattr(Config, "zero_gpu", True)
    assert gpu.on_zero_gpu()


def test_compile_is_refused_on_zero_gpu_and_allowed_elsewhere(monkeypatch):
    compiled, plain = types.SimpleNamespace(compile=True), types.SimpleNamespace(compile=False)
    with pytest.raises(LightcacheError, match=r"^torch\.compile is not available on ZeroGPU"):
        gpu.refuse_unsupported_on_zero_gpu(compiled, zero_gpu=True)
    gpu.refuse_unsupported_on_zero_gpu(plain, zero_gpu=True)
    gpu.refuse_unsupported_on_zero_gpu(compiled, zero_gpu=False)
    settings = parse_request(initial_values("tiny", SMALL), "cpu").settings
    gpu.refuse_unsupported_on_zero_gpu(settings, zero_gpu=True)  # settings without a compile switch pass
    gpu.refuse_unsupported_on_zero_gpu(compiled)  # the default asks spaces: not ZeroGPU here
    from spaces.config import Config

    monkeypatch.setattr(Config, "zero_gpu", True)
    with pytest.raises(LightcacheError, match="ZeroGPU"):
        gpu.refuse_unsupported_on_zero_gpu(compiled)


def test_a_compiled_request_on_zero_gpu_is_refused_before_the_gpu_call(monkeypatch, tmp_path):
    job = parse_request(initial_values("tiny", SMALL), "cpu")
    compiled = types.SimpleNamespace(preset=job.preset, settings=types.SimpleNamespace(compile=True), compare=False)
    monkeypatch.setattr(layout, "parse_request", lambda raw, device, presets=None: compiled)
    cache = pipelines_module.PipelineCache(loader=_Loader(), device="cpu")
    asked = []

    def generation(*args):
        asked.append(args)
        raise gr.Error("reached the GPU call")

    def run(zero_gpu):
        return list(layout.run_job(cache, OutputDirs(tmp_path), {}, Session(), generation=generation,
                                   zero_gpu=zero_gpu))

    with pytest.raises(gr.Error, match="torch.compile is not available on ZeroGPU"):
        run(zero_gpu=True)
    assert asked == [] and list(tmp_path.iterdir()) == []
    with pytest.raises(gr.Error, match="reached the GPU call"):
        run(zero_gpu=False)
    assert len(asked) == 1 and isinstance(asked[0][2], threading.Event)  # off ZeroGPU the stop switch goes along
    assert list(tmp_path.iterdir()) == [], "a failed run's output directory is removed"


def test_the_app_builds_and_serves_without_spaces(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "spaces", None)
    loader = _Loader()
    demo = build_demo(pipelines_module.PipelineCache(loader=loader, device="cpu"), OutputDirs(tmp_path),
                      defaults=SMALL)
    try:
        final = _serve(demo).predict(api_name="/generate")
    finally:
        demo.close()
    assert final[0].startswith("**Done.**") and Path(final[2]).stat().st_size > 0
    assert loader.loads == [False]  # loaded on the first Run, as the app always did off ZeroGPU


# --- LIGHTCACHE_PRESET: the preset loaded at start ---------------------------------------------------------------
def test_the_served_preset_is_a_shipped_name_checked_before_anything_loads():
    assert served_preset({}, zero_gpu=False) is None
    assert served_preset({PRESET_VARIABLE: "wan2.1-t2v-1.3b"}, zero_gpu=False) == "wan2.1-t2v-1.3b"
    assert served_preset({PRESET_VARIABLE: "  "}, zero_gpu=True) == "tiny"
    with pytest.raises(LightcacheError) as info:
        served_preset({PRESET_VARIABLE: "wan-9000"}, zero_gpu=False)
    assert str(info.value) == f"{PRESET_VARIABLE}: Unknown preset 'wan-9000'. Valid presets: {', '.join(list_presets())}."
    for path in ("presets/tiny.json", "/etc/passwd", "../tiny"):
        with pytest.raises(LightcacheError, match=r"^LIGHTCACHE_PRESET: Unknown preset \(a preset is chosen by name"):
            served_preset({PRESET_VARIABLE: path}, zero_gpu=False)


#: Runs app.py, printing the order in which it first imported ``spaces`` and ``torch``.
_IMPORT_ORDER = """
import runpy, sys
order = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name in ("spaces", "torch") and name not in order:
            order.append(name)
sys.meta_path.insert(0, Watch())
try:
    runpy.run_path("app.py", run_name="__main__")
finally:
    print("IMPORTED", order)
"""


def test_python_app_py_imports_spaces_first_and_ends_with_one_line_for_an_unknown_preset():
    # The unknown preset ends the app before it serves anything, so it binds no port.
    env = dict(os.environ, **{PRESET_VARIABLE: "wan-9000"})
    proc = subprocess.run([sys.executable, "-c", _IMPORT_ORDER], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {PRESET_VARIABLE}: Unknown preset 'wan-9000'. Valid presets: tiny, ")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    # On ZeroGPU importing spaces patches torch, so app.py imports it before anything imports torch.
    assert "IMPORTED ['spaces', 'torch']" in proc.stdout


def test_a_gpu_preset_on_a_machine_without_cuda_is_refused_before_anything_loads():
    loader = _Loader()
    with pytest.raises(LightcacheError) as info:
        start_pipelines("wan2.1-t2v-1.3b", loader=loader, zero_gpu=False, device="cpu")
    assert str(info.value) == (f"{PRESET_VARIABLE}: 'wan2.1-t2v-1.3b' needs a CUDA GPU and this machine has none; "
                               "set it to 'tiny', which runs on a CPU, or leave it unset.")
    assert loader.loads == []
    # ZeroGPU's main process has no GPU either; there the move to CUDA is intercepted, so the model loads at start.
    assert start_pipelines("wan2.1-t2v-1.3b", loader=loader, zero_gpu=True, device="cpu").loaded == "wan2.1-t2v-1.3b"
    assert start_pipelines("wan2.1-t2v-1.3b", loader=loader, zero_gpu=False, device="cuda").loaded == "wan2.1-t2v-1.3b"
    assert loader.loads == [False, False]


@pytest.mark.skipif(_cuda_available(), reason="shows what a machine without CUDA prints")
def test_python_app_py_with_a_gpu_preset_on_a_machine_without_cuda_ends_with_one_line():
    env = dict(os.environ, **{PRESET_VARIABLE: "wan2.1-t2v-1.3b"})  # it ends before it would serve
    proc = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"error: {PRESET_VARIABLE}: 'wan2.1-t2v-1.3b' needs a CUDA GPU and this machine has none; "
                           "set it to 'tiny', which runs on a CPU, or leave it unset.\n")


def test_start_loads_and_warms_up_once_per_process(monkeypatch):
    loader = _Loader()
    cache = start_pipelines("tiny", loader=loader, zero_gpu=False)
    assert loader.loads == [False] and cache.holds(load_preset("tiny")) and loader.calls > 0  # warmed up at start
    warm = loader.calls
    with cache.use(load_preset("tiny")):
        pass
    assert loader.loads == [False] and loader.calls == warm  # the first run neither loads nor warms up again

    loader = _Loader()
    cold = start_pipelines("tiny", loader=loader, zero_gpu=True)
    assert loader.calls == 0  # ZeroGPU's main process has no GPU: no warm-up there
    with cold.use(load_preset("tiny")):
        assert loader.calls > 0  # the first run in a process warms up first
    once = loader.calls
    with cold.use(load_preset("tiny")):
        pass
    assert loader.calls == once
    # Another process, as a forked GPU worker is (only the cache's own view of its process id changes).
    monkeypatch.setattr(pipelines_module, "os", types.SimpleNamespace(getpid=lambda: os.getpid() + 1))
    with cold.use(load_preset("tiny")):
        pass
    assert loader.loads == [False] and loader.calls > once


def test_a_served_preset_is_the_only_one_offered(tmp_path):
    demo = build_demo(pipelines_module.PipelineCache(loader=_Loader(), device="cuda"), OutputDirs(tmp_path),
                      presets=["wan2.1-t2v-1.3b"])
    dropdown = next(b for b in demo.blocks.values() if isinstance(b, gr.Dropdown))
    assert [value for _, value in dropdown.choices] == ["wan2.1-t2v-1.3b"] and dropdown.value == "wan2.1-t2v-1.3b"
    with pytest.raises(LightcacheError, match=r"^Preset: this server serves wan2\.1-t2v-1\.3b only\.$"):
        parse_request(initial_values("tiny"), "cuda", presets=["wan2.1-t2v-1.3b"])


# --- what crosses ZeroGPU's pickle boundary ----------------------------------------------------------------------
def _roundtrip(value):
    return pickle.loads(pickle.dumps(value))


def test_jobs_and_their_updates_pickle_without_the_frames(tmp_path):
    job = parse_request(initial_values("tiny", SMALL), "cpu")
    assert _roundtrip(job) == job
    image_job = dataclasses.replace(job, image=Image.new("RGB", (32, 32), (200, 10, 10)))
    assert _roundtrip(image_job).image.getpixel((0, 0)) == (200, 10, 10)

    updates = list(stream_job(build_tiny_pipeline(0), job, str(tmp_path)))
    assert any(isinstance(u.event, FramesDecoded) for u in updates)
    light = [p for p in map(portable, updates) if p is not None]
    assert len(light) == len(updates) - sum(isinstance(u.event, FramesDecoded) for u in updates)
    finished = [u.event for u in light if isinstance(u.event, RunFinished)]
    assert finished and all(e.frames is None for e in finished)
    assert all(_roundtrip(u) == u for u in light if u.event is None or not isinstance(u.event, RunFinished))
    assert len(pickle.dumps(light)) < 200_000  # no video arrays cross


class _FakeZeroGPU:
    """A stand-in for ``spaces`` on a ZeroGPU Space: ``GPU`` runs the generator with its arguments, each value it
    yields and what it raises pickled and unpickled, as ZeroGPU's worker process hands them over."""

    def __init__(self):
        self.module = types.ModuleType("spaces")
        self.module.GPU = self.GPU
        self.module.config = types.ModuleType("spaces.config")
        self.module.config.Config = types.SimpleNamespace(zero_gpu=True)
        self.inside = False
        self.durations: list[int] = []
        self.arguments: list[tuple] = []
        self.largest = 0  # bytes of the largest value that crossed back

    def GPU(self, duration):
        def decorate(task):
            assert inspect.isgeneratorfunction(task), "spaces runs a plain function's result through pickle whole"

            def worker(*args, **kwargs):
                self.durations.append(duration(*args, **kwargs))
                args, kwargs = _roundtrip((args, kwargs))  # a threading.Event here would fail, as on ZeroGPU
                self.arguments.append(args)
                self.inside = True
                try:
                    for value in task(*args, **kwargs):
                        self.largest = max(self.largest, len(pickle.dumps(value)))
                        yield _roundtrip(value)
                except Exception as exc:
                    raise _roundtrip(exc) from None
                finally:
                    self.inside = False

            return worker

        return decorate


def test_on_a_zero_gpu_space_the_model_loads_at_start_and_the_gpu_call_only_generates(monkeypatch, tmp_path):
    fake = _FakeZeroGPU()
    monkeypatch.setitem(sys.modules, "spaces", fake.module)
    monkeypatch.setitem(sys.modules, "spaces.config", fake.module.config)
    loader = _Loader(inside_gpu=lambda: fake.inside)

    served = served_preset({})  # nothing set: ZeroGPU serves the default preset
    cache = start_pipelines(served, loader=loader)
    assert served == "tiny" and loader.loads == [False] and loader.calls == 0  # loaded at start; no warm-up there
    demo = build_demo(cache, OutputDirs(tmp_path), defaults=SMALL, presets=[served])
    try:
        client = _serve(demo)
        final = client.predict(api_name="/generate")
        assert final[0].startswith("**Done.**") and Path(final[2]).stat().st_size > 0
        assert loader.loads == [False], "the GPU call loaded a model"
        assert fake.durations == [60] and fake.arguments[0][2] is None  # the estimate; no stop switch crossed
        assert loader.calls > 0  # the worker warmed up and ran
        frames = SMALL["frames"] * SMALL["height"] * SMALL["width"] * 3 * 4
        assert fake.largest < frames / 2, "video frames crossed the boundary"

        with pytest.raises(Exception, match="Steps: steps must be between 2 and 100, got 500"):
            client.predict(steps=500, api_name="/generate")
        with pytest.raises(Exception, match="Preset: this server serves tiny only"):
            client.predict(preset="wan2.1-t2v-1.3b", api_name="/generate")
        assert len(fake.durations) == 1, "a refused request asked for a GPU"

        with pytest.raises(Exception, match=r"Prompt: prompt is \d+ tokens long"):  # raised inside the GPU call
            client.predict(prompt="a red circle moving right " * 4, api_name="/generate")
        assert len(fake.durations) == 2 and not fake.inside
    finally:
        demo.close()
