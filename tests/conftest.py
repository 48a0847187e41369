"""Shared fixtures: tiny Wan pipelines built offline with random weights (a whole run takes well under a second)."""

from __future__ import annotations

import contextlib
import os

import pytest

# Tests never reach the network: a Hub id must fail fast and say so, never hang on a connection.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Largest difference allowed between videos of separately built or reloaded modules with the same weights (pixel
#: values in [0, 1]): their kernels may round differently in the last bits on some CPUs (~1e-7 seen on an AMD EPYC).
#: Bit equality is asserted only for the same objects run twice.
FLOAT_TOL = 1e-4


#: How long a test waits for another thread or a server to reach a state: a guard against hanging, never a timing.
PATIENCE_S = 120


#: Fixtures that serve the app on a local port (tests/test_app.py, tests/test_security.py).
SERVER_FIXTURES = frozenset({"served", "app"})


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one")
    config.addinivalue_line("markers", "slow: takes more than a few seconds on a CPU")
    config.addinivalue_line("markers", "server: serves the app on a local port (set on the tests that use it)")


def pytest_collection_modifyitems(config, items):
    import torch

    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker("server")
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """A test module may limit torch's threads for itself (test_tiny_model.py does); the next module gets the count
    back, so that no test runs differently for having followed another."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_pipe():
    """A fresh random tiny WanPipeline (seeded, eval mode)."""
    from lightcache.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The same tiny pipeline saved as a diffusers directory, for the from_pretrained / CLI paths."""
    from lightcache.tiny import build_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny-model")
    build_tiny_pipeline(seed=0).save_pretrained(path)
    return path


def tiny_settings(**overrides):
    """Small, fast RunSettings for the tiny pipeline (32x32, 9 frames)."""
    from lightcache.settings import RunSettings

    values = dict(prompt="a red circle moving right", seed=3, steps=10, frames=9, height=32, width=32,
                  guidance_scale=5.0, warmup=2, threshold=0.05, max_sequence_length=16)
    values.update(overrides)
    return RunSettings(**values)


def pipe_video(pipe, settings):
    """The plain diffusers call for the same request, as float32 frames (F, H, W, 3)."""
    import torch

    out = pipe(
        settings.prompt, negative_prompt=settings.negative_prompt, height=settings.height, width=settings.width,
        num_frames=settings.frames, num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
        generator=torch.Generator().manual_seed(settings.seed), output_type="np",
        max_sequence_length=settings.max_sequence_length,
    )
    return out.frames[0]


@contextlib.contextmanager
def strict_fp32():
    """fp32 matmuls and convolutions without TF32 on a GPU, so "exact" means there what it means on a CPU.

    cuDNN may also pick another convolution algorithm when free memory differs (it does once weights stream), which
    changes only the last float bits: GPU parity tests compare to rounding level inside this.
    """
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class FakeStream:
    """Stands in for a CUDA stream on a CPU: logs the events it records and waits for, and its synchronisations."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def record_event(self):
        event = f"{self.name}#{sum(entry[0] == 'record' for entry in self.log)}"
        self.log.append(("record", self.name, event))
        return event

    def wait_event(self, event):
        self.log.append(("wait", self.name, event))

    def synchronize(self):
        self.log.append(("synchronize", self.name))


class FakeCuda:
    """``torch.cuda``'s streams as the stores and the swap use them, on a CPU: a compute stream, side streams, the
    ``torch.cuda.stream`` context and ``record_stream``, all logged in one list (see the ``fake_cuda`` fixture)."""

    def __init__(self):
        self.log: list[tuple] = []
        self.compute = FakeStream("compute", self.log)
        self.current = self.compute
        self.sides: list[FakeStream] = []
        self.side_devices: list = []  # the device each side stream was made for

    def Stream(self, device=None):  # noqa: N802 - torch.cuda's name
        stream = FakeStream(f"side{len(self.sides)}", self.log)
        self.sides.append(stream)
        self.side_devices.append(device)
        return stream

    def current_stream(self, device=None):
        return self.current

    @contextlib.contextmanager
    def stream(self, stream):
        previous, self.current = self.current, stream
        try:
            yield
        finally:
            self.current = previous

    def synchronize(self, device=None):
        self.log.append(("synchronize", "device"))


@pytest.fixture
def fake_cuda(monkeypatch):
    """Replace torch.cuda's streams, ``Tensor.record_stream`` and pinned allocation by logging stand-ins (a CPU has
    no pinned allocator: ``pin_memory=True`` allocates plain memory here)."""
    import torch

    fake = FakeCuda()
    for name in ("Stream", "current_stream", "stream", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    monkeypatch.setattr(torch.Tensor, "record_stream",
                        lambda tensor, stream: fake.log.append(("record_stream", stream.name)), raising=False)
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *args, pin_memory=False, **kwargs: empty(*args, **kwargs))
    return fake


class CallGate:
    """A forward pre-hook that holds a transformer's calls after the first few until :meth:`release`, so that a test
    acts on a run that is surely still going (instead of slowing every call down and hoping it is slow enough)."""

    def __init__(self):
        import threading

        self._lock = threading.Lock()
        self._let_through: int | None = None  # None: not holding
        self._released = threading.Event()

    def hold(self, after_calls: int) -> None:
        with self._lock:
            self._released.clear()
            self._let_through = after_calls

    def release(self) -> None:
        with self._lock:
            self._let_through = None
            self._released.set()

    def __call__(self, module, args) -> None:
        with self._lock:
            if self._let_through is None:
                return
            if self._let_through > 0:
                self._let_through -= 1
                return
        self._released.wait(PATIENCE_S)
