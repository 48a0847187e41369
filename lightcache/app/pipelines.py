"""The process-wide pipeline cache: one loaded model, lent to one run at a time.

Loading a model costs far more than a tiny run, so the app keeps the last one it loaded. EasyCache and the memory
strategies attach hooks to that one pipeline for the length of a run, so two runs must never hold it at once:
:meth:`PipelineCache.use` holds a lock for the whole run. The generation queue already lets one run through at a
time; the lock is what keeps a stopped run that is still unwinding from overlapping with the next one.

The cache is keyed by what is loaded (:func:`lightcache.presets.model_identity`: model directory or Hub id and
revision, dtypes, device), never by a preset's name alone, so no preset can pass its weights off under another's name.
A model that fails to load is reported to the web page in one sentence without server paths; the server's log has
the details.

A server may load its model before it serves (:meth:`PipelineCache.preload`, which :mod:`.startup` calls at module
scope: the way a ZeroGPU Space must load). The warm-up run happens once per process, because a ZeroGPU worker is a
process forked for the GPU call: the main process, which has no GPU, never warms up; each worker does on its first run.

The loader is injectable, which is how the tests serve a random-weight tiny pipeline built offline.

Example:
    >>> from lightcache.app.pipelines import PipelineCache
    >>> from lightcache.presets import load_preset
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> cache = PipelineCache(loader=lambda preset, device: build_tiny_pipeline(0), device="cpu")
    >>> with cache.use(load_preset("tiny")) as pipe:
    ...     type(pipe).__name__
    'WanPipeline'
    >>> cache.loaded, cache.holds(load_preset("tiny"))
    ('tiny', True)
    >>> started = PipelineCache(loader=lambda preset, device: build_tiny_pipeline(0), device="cpu")
    >>> started.preload(load_preset("tiny"))   # before the first request, as a Space does at start
    >>> started.holds(load_preset("tiny"))
    True
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from ..errors import LightcacheError
from ..presets import Preset, default_device, load_pipeline, model_identity
from ..runner import run_to_completion, run_generation
from ..settings import RunSettings

Loader = Callable[[Preset, str], object]

log = logging.getLogger(__name__)


class PipelineCache:
    """Holds at most one loaded pipeline; :meth:`use` lends it to one run at a time.

    Args:
        loader: ``loader(preset, device) -> pipeline``; default :func:`lightcache.presets.load_pipeline`.
        device: ``"cpu"`` or ``"cuda"``; default: decided on first use (never at import, so a ZeroGPU Space's main
            process never touches CUDA).
        warm_up: run one minimal generation right after loading, so that one-time costs (allocator growth, lazy
            imports, kernel selection) land on no timed run and "compare" measures like against like.
    """

    def __init__(self, loader: Loader | None = None, device: str | None = None, warm_up: bool = True):
        self._loader = loader or (lambda preset, dev: load_pipeline(preset, device=dev))
        self._device = device
        self._warm_up = warm_up
        self._lock = threading.Lock()
        self._name: str | None = None
        self._identity: tuple | None = None
        self._pipe = None
        self._warmed_in: int | None = None  # the process id the loaded pipeline was warmed up in

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = default_device()
        return self._device

    @property
    def loaded(self) -> str | None:
        """Name of the preset whose pipeline was loaded, or None (display only; the cache is keyed by identity)."""
        return self._name

    @property
    def identity(self) -> tuple | None:
        """:func:`~lightcache.presets.model_identity` of the loaded pipeline, or None."""
        return self._identity

    def holds(self, preset: Preset) -> bool:
        """True when ``preset``'s model is the one loaded (a run of it starts without loading)."""
        return self._pipe is not None and self._identity == model_identity(preset, self.device)

    @contextmanager
    def use(self, preset: Preset) -> Iterator[object]:
        """Lend the pipeline of ``preset`` (loading it, and dropping any other, first) for the ``with`` block."""
        with self._lock:
            self._ensure(preset)
            self._warm(preset)
            try:
                yield self._pipe
            finally:
                release_memory()

    def preload(self, preset: Preset, warm_up: bool = True) -> None:
        """Load ``preset``'s pipeline now, before any request (a failure raises the same sentence as in a run).

        ``warm_up=False`` leaves the warm-up to the first run in each process: ZeroGPU's main process has no GPU to
        run it on.
        """
        with self._lock:
            self._ensure(preset)
            if warm_up:
                self._warm(preset)

    def _ensure(self, preset: Preset) -> None:
        """Make ``preset``'s model the loaded one (dropping any other first)."""
        identity = model_identity(preset, self.device)
        if self._identity != identity or self._pipe is None:
            self._drop()
            pipe = self._guarded(preset, lambda: self._loader(preset, self.device))
            self._pipe, self._name, self._identity = pipe, preset.name, identity

    def _warm(self, preset: Preset) -> None:
        """Warm the loaded pipeline up once in this process (its one-time costs are the process's own)."""
        if self._warm_up and self._warmed_in != os.getpid():
            self._guarded(preset, lambda: _warm_up(self._pipe, preset))
            self._warmed_in = os.getpid()

    def _guarded(self, preset: Preset, step):
        """Run a loading step; a failure drops the model and becomes one sentence fit for a public page."""
        try:
            return step()
        except Exception:  # noqa: BLE001 - whatever it was, the page gets no paths; the log gets the traceback
            log.exception("loading the model of preset %r failed", preset.name)
            self._drop()
            raise LightcacheError(
                f"Preset: the model of '{preset.name}' could not be loaded on this server (the server's log says "
                "why). Try another preset."
            ) from None

    def clear(self) -> None:
        """Forget the loaded pipeline (waits for a run using it to end)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        self._pipe, self._name, self._identity, self._warmed_in = None, None, None, None
        release_memory()


def release_memory() -> None:
    """Return what a finished or stopped run held: Python garbage, and the CUDA cache when CUDA is in use."""
    gc.collect()
    import torch

    # is_initialized() is False in a process that never used CUDA, so this never starts a CUDA context.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _warm_up(pipe, preset: Preset) -> None:
    """One short run right after loading (the smallest size the preset allows, its fewest steps), so the first
    visitor's run does not pay for kernel selection. A model that takes only its own shape refuses the small request
    before anything runs (HunyuanVideo-1.5's image-to-video sizes the video from the image, CogVideoX-5B-I2V's learned
    positions hold one size and frame count); it warms up at its preset's size, then at its preset's frames too."""
    lim, d = preset.limits, preset.defaults
    size = (int(d["height"]), int(d["width"]))
    tries = [(1, lim.size_multiple, lim.size_multiple), (1, *size), (int(d["frames"]), *size)]
    for attempt, (frames, height, width) in enumerate(tries):
        try:
            return _warm_up_at(pipe, preset, frames, height, width)
        except LightcacheError:
            if attempt == len(tries) - 1:
                raise
            log.info("warm-up of %s: %dx%d, %d frames refused; trying a larger request", preset.name, width, height,
                     frames)


def _warm_up_at(pipe, preset: Preset, frames: int, height: int, width: int) -> None:
    settings = RunSettings.from_preset(
        preset,
        steps=preset.limits.min_steps,
        frames=frames,
        height=height,
        width=width,
        easycache=False,
        warmup=0,
    )
    # Image-to-video models need a first frame even to warm up; a grey one of the warm-up size will do.
    image = None
    if preset.image_input == "required":
        from PIL import Image

        image = Image.new("RGB", (width, height), (128, 128, 128))
    run_to_completion(run_generation(pipe, settings, preset.name, image=image))
