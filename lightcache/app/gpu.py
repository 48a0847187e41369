"""Hugging Face Spaces: the generation as a ``spaces.GPU`` call with a duration estimate, and ZeroGPU's rules.

On a ZeroGPU Space the main process has no GPU. The ``spaces`` package patches torch there, so that a model moved
``.to("cuda")`` at module scope is kept and moved onto a GPU whenever a function decorated with ``spaces.GPU`` runs,
for at most the duration it asks for. That function runs in a worker process forked for the call: its arguments,
what it yields and what it raises cross a pickle boundary, and whatever it loads is lost with the worker. So:

* the model is loaded at start, never inside the call (:mod:`.startup`);
* the decorated function, :func:`gpu_generation`, only generates: it takes a validated job and an output directory
  (plain data), yields updates without the video frames (the worker writes those to the file itself), and raises
  errors as ``gr.Error``, which ZeroGPU passes on (any other exception reaches the page as "ZeroGPU worker error");
* ``torch.compile`` is refused there (:func:`refuse_unsupported_on_zero_gpu`).

Outside a ZeroGPU Space ``spaces.GPU`` returns the function unchanged, and without the package :func:`on_gpu` does
the same; nothing here touches CUDA.

Example:
    >>> from lightcache.app.gpu import estimate_gpu_seconds, on_gpu, on_zero_gpu
    >>> estimate_gpu_seconds("tiny", steps=20, frames=33, height=128, width=128, compare=False)
    60
    >>> @on_gpu(duration=lambda *a, **k: 60)
    ... def f(x):
    ...     return x + 1
    >>> f(1), on_zero_gpu()
    (2, False)
"""

from __future__ import annotations

import contextlib
import logging
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..errors import LightcacheError, RunCancelled
from ..presets import load_shipped_preset

if TYPE_CHECKING:
    from .form import Job
    from .jobs import JobUpdate
    from .pipelines import PipelineCache

log = logging.getLogger(__name__)

_MIN_S, _MAX_S = 60, 1200
#: Getting the weights onto the GPU: ZeroGPU moves the model loaded at start onto the GPU of each new worker, and
#: a GPU Space that loads on the first Run reads the checkpoint from the local cache.
_LOAD_S = 60

#: Why a ZeroGPU Space refuses a compiled run (the request's ``compile`` switch).
COMPILE_ON_ZERO_GPU = (
    "torch.compile is not available on ZeroGPU: the GPU is lent to a worker process for one generation, and "
    "compiling there is not supported. Switch compile off, or run on a Space with its own GPU or locally."
)


def import_spaces() -> ModuleType | None:
    """The ``spaces`` package, or None where it is not installed (anywhere but a Hugging Face Space, usually).

    On ZeroGPU it must be imported before a model is moved to CUDA: importing it is what patches torch.
    """
    try:
        import spaces
    except ImportError:
        return None
    return spaces


def on_zero_gpu() -> bool:
    """True on ZeroGPU hardware, as the ``spaces`` package itself decides (``spaces.config.Config.zero_gpu``, read
    from the ``SPACES_ZERO_GPU`` variable the Space sets); False where ``spaces`` is not installed."""
    if import_spaces() is None:
        return False
    from spaces.config import Config

    return bool(Config.zero_gpu)


def on_gpu(duration: Callable[..., float]) -> Callable[[Callable], Callable]:
    """``spaces.GPU(duration=duration)`` when the ``spaces`` package is installed, else the identity decorator."""
    spaces = import_spaces()
    if spaces is None:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


def refuse_unsupported_on_zero_gpu(settings: Any, zero_gpu: bool | None = None) -> None:
    """Refuse, with :class:`LightcacheError`, what a request asks that ZeroGPU cannot do: ``torch.compile``.

    ``settings``: the request's settings; its ``compile`` switch is read with a default of off, so settings without
    one pass. ``zero_gpu``: whether this is ZeroGPU (default: :func:`on_zero_gpu`).

    >>> from types import SimpleNamespace
    >>> refuse_unsupported_on_zero_gpu(SimpleNamespace(compile=True), zero_gpu=False)  # elsewhere it may compile
    >>> refuse_unsupported_on_zero_gpu(SimpleNamespace(compile=True), zero_gpu=True)
    Traceback (most recent call last):
    ...
    lightcache.errors.LightcacheError: torch.compile is not available on ZeroGPU: the GPU is lent to a worker process for one generation, and compiling there is not supported. Switch compile off, or run on a Space with its own GPU or locally.
    """
    if getattr(settings, "compile", False) and (on_zero_gpu() if zero_gpu is None else zero_gpu):
        raise LightcacheError(COMPILE_ON_ZERO_GPU)


def estimate_gpu_seconds(preset: Any, steps: Any, frames: Any, height: Any, width: Any, compare: Any) -> int:
    """How long to ask ZeroGPU for: the weights onto the GPU plus every transformer call, with a 1.5x margin,
    doubled to compare. The time of one call at this size is the preset's family adapter's (from its measured
    anchors); a family without one gets the longest duration.

    Never raises: a bad request gets the minimum (the app validates before it asks).
    """
    try:
        from ..families import adapter_named

        p = load_shipped_preset(preset)
        if not p.requires_gpu:
            return _MIN_S
        per_call = adapter_named(p.family).estimate_call_seconds(p, int(frames), int(height), int(width))
        if per_call is None:
            return _MAX_S
        # Every step with guidance's two calls: the most a step of a video family makes.
        calls = 2 * int(steps)
        seconds = _LOAD_S + 1.5 * calls * per_call
        if compare:
            seconds *= 2
        return int(min(_MAX_S, max(_MIN_S, seconds)))
    except Exception:  # noqa: BLE001 - see docstring
        return _MIN_S


def job_gpu_seconds(job: "Job", *args: Any, **kwargs: Any) -> int:
    """:func:`estimate_gpu_seconds` of a validated job (``spaces.GPU`` calls it with the generation's arguments)."""
    s = job.settings
    # MagCache's calibration (when no earlier run kept it) is one more whole run, as long as the plain one of Compare.
    two_runs = job.compare or getattr(s, "step_cache", None) == "magcache"
    return estimate_gpu_seconds(job.preset.name, s.steps, s.frames, s.height, s.width, two_runs)


def gpu_generation(pipelines: "PipelineCache") -> Callable[..., Iterator["JobUpdate"]]:
    """The generation, decorated with :func:`on_gpu`: ``generation(job, out_dir, cancel=None)`` runs a validated
    job on ``pipelines`` and yields its updates (:func:`.jobs.portable` ones).

    ``cancel``: a :class:`threading.Event` that stops the run at its next transformer call. It cannot cross into a
    ZeroGPU worker (a lock does not pickle), so there the caller passes None and the run stops when its consumer
    closes this generator: ``spaces`` then tells the worker to close its own, and closing it sets the run's switch.

    Errors leave as ``gr.Error`` with a message fit for a public page (ZeroGPU would show any other exception by its
    type only). :class:`RunCancelled` leaves as it is: the caller says "Stopped." (on ZeroGPU it is only raised
    after the caller went away).
    """
    import gradio as gr

    from .form import labelled
    from .jobs import job_updates, portable

    def generation(job: "Job", out_dir: str, cancel: threading.Event | None = None) -> Iterator["JobUpdate"]:
        try:
            with contextlib.closing(job_updates(pipelines, job, out_dir, cancel or threading.Event())) as updates:
                for update in updates:
                    light = portable(update)
                    if light is not None:
                        yield light
        except RunCancelled:
            raise
        except LightcacheError as exc:
            raise gr.Error(labelled(str(exc)), print_exception=False) from None
        except Exception as exc:
            # The page may be public: the type of error only, never its text (paths, library internals).
            log.exception("generation failed")
            raise gr.Error(f"The run failed ({type(exc).__name__}); the server's log has the details.") from None

    return on_gpu(duration=job_gpu_seconds)(generation)
