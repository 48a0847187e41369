"""Running one job for the app: the accelerated run, the plain run when comparing, their videos and metrics.

:func:`job_updates` is what the UI consumes. It runs the job on a worker thread of its own and hands its updates
over through a queue, for two reasons:

* the worker owns the pipeline lock, the hooks and the video writers from start to end, in one thread, with plain
  ``try/finally``; whatever the web server does with the consumer (closes it, cancels it, drops it), the worker
  still unwinds completely: hooks removed, partial files deleted, memory released, lock freed;
* a stop request only has to set a :class:`threading.Event`; the runner checks it before every transformer call.

Example:
    >>> import tempfile, threading
    >>> from lightcache.app.form import initial_values, parse_request
    >>> from lightcache.app.jobs import job_updates
    >>> from lightcache.app.pipelines import PipelineCache
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> cache = PipelineCache(loader=lambda preset, device: build_tiny_pipeline(0), device="cpu")
    >>> job = parse_request(dict(initial_values(), steps=4, warmup=1, frames=5, height=32, width=32), "cpu")
    >>> with tempfile.TemporaryDirectory() as out_dir:
    ...     updates = list(job_updates(cache, job, out_dir, threading.Event()))
    >>> [u.video.rsplit("/", 1)[-1] for u in updates if u.video]
    ['accelerated.mp4']
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..comparison import compare_runs, warm_up
from ..events import Event, FramesDecoded, RunFinished, StepRecord
from ..runner import run_generation
from ..video import Mp4Writer
from .form import Job
from .pipelines import PipelineCache

ACCELERATED, PLAIN = "accelerated", "plain"
#: The run label of the untimed warm-up before a comparison (an update with neither event nor video).
WARM_UP = "warm-up"


@dataclass
class JobUpdate:
    """One thing that happened in a job: an event of one of its runs, a finished video, or the comparison."""

    run: str
    event: Event | None = None
    video: str | None = None
    comparison: dict[str, Any] | None = field(default=None)


def job_updates(pipelines: PipelineCache, job: Job, out_dir: str, cancel: threading.Event) -> Iterator[JobUpdate]:
    """Run ``job`` on a worker thread and yield its updates as they happen; exceptions surface here.

    Closing this iterator early sets ``cancel``: the worker stops at its next model call and cleans up.
    """
    updates: queue.Queue = queue.Queue()
    done = object()

    def work() -> None:
        try:
            with pipelines.use(job.preset) as pipe:
                for update in stream_job(pipe, job, out_dir, cancel):
                    updates.put(update)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            updates.put(exc)
        finally:
            updates.put(done)

    worker = threading.Thread(target=work, name="lightcache-job", daemon=True)
    worker.start()
    try:
        while True:
            item = updates.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        # Reached on normal end, on error, and when the consumer goes away mid-run; only the last needs it.
        cancel.set()


def stream_job(pipe, job: Job, out_dir: str, cancel: threading.Event | None = None) -> Iterator[JobUpdate]:
    """Run ``job`` on ``pipe`` in this thread, writing ``accelerated.mp4`` (and ``plain.mp4``) into ``out_dir``."""
    runs = [(ACCELERATED, job.settings)] + ([(PLAIN, job.plain_settings)] if job.compare else [])
    finished: dict[str, RunFinished] = {}
    steps: dict[str, list[StepRecord]] = {ACCELERATED: [], PLAIN: []}
    if job.compare:
        # Untimed, so that the process's one-time costs land on neither timed run (the CLI does the same).
        yield JobUpdate(run=WARM_UP)
        warm_up(pipe, job.settings, job.preset.name, image=job.image, cancel=cancel)
    for label, settings in runs:
        path = Path(out_dir) / f"{label}.mp4"
        # Frames go to the file as the decoder produces them; a run that raises deletes its partial file.
        with Mp4Writer(path, fps=settings.fps) as writer:
            for event in run_generation(pipe, settings, job.preset.name, cancel, image=job.image):
                if isinstance(event, FramesDecoded):
                    writer.write(event.frames)
                elif isinstance(event, RunFinished):
                    finished[label] = event
                elif isinstance(event, StepRecord):
                    steps[label].append(event)
                yield JobUpdate(run=label, event=event)
        yield JobUpdate(run=label, video=str(path))
    if job.compare:
        yield JobUpdate(run=PLAIN, comparison=compare_runs(finished[ACCELERATED], finished[PLAIN],
                                                                steps[ACCELERATED], steps[PLAIN]))


def portable(update: JobUpdate) -> JobUpdate | None:
    """``update`` as the page needs it, without the video frames: None for :class:`FramesDecoded` (already written
    to the job's file), a :class:`RunFinished` without its frames.

    What crosses ZeroGPU's pickle boundary from the GPU worker to the page, so that a video of 81 frames at 720p does
    not travel (twice) as float arrays.
    """
    if isinstance(update.event, FramesDecoded):
        return None
    if isinstance(update.event, RunFinished) and update.event.frames is not None:
        return dataclasses.replace(update, event=dataclasses.replace(update.event, frames=None))
    return update


class Session:
    """One browser session's handle on its jobs: the switch the Stop button flips, and when it was last pressed.

    Gradio deep-copies a ``gr.State`` value for every new session, so each visitor gets a fresh instance; the
    copy (and pickling, which a ZeroGPU worker needs) never carries a live job along.

    Stop reaches the running job through its switch, and the jobs still waiting in the queue through the time it
    was pressed: a job that entered the queue before that must not start (:meth:`stopped_since`).
    """

    def __init__(self) -> None:
        self._cancel: threading.Event | None = None
        self._stopped_at: float | None = None
        self._stopped_last = False

    def start(self) -> threading.Event:
        """A fresh cancel switch for a new job (stopping any job this session still had running)."""
        self._cancel_running()
        self._cancel = threading.Event()
        self._stopped_last = False
        return self._cancel

    def stop(self) -> bool:
        """Ask the running job to stop, and every job of this session waiting in the queue not to start; True when
        one was running."""
        self._stopped_at = time.monotonic()
        running = self._cancel_running()
        self._stopped_last |= running
        return running

    @property
    def stopped_last_job(self) -> bool:
        """True when this session's last job was ended by :meth:`stop` (and no job started since)."""
        return self._stopped_last

    def stopped_since(self, enqueued_at: float | None) -> bool:
        """True when Stop was pressed after a job entered the queue at ``enqueued_at`` (``time.monotonic()``)."""
        return enqueued_at is not None and self._stopped_at is not None and enqueued_at <= self._stopped_at

    def _cancel_running(self) -> bool:
        cancel, self._cancel = self._cancel, None
        if cancel is None or cancel.is_set():
            return False
        cancel.set()
        return True

    def __deepcopy__(self, memo) -> "Session":
        return Session()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._cancel = None
        self._stopped_at = None
        self._stopped_last = False
