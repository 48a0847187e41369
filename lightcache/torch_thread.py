"""One long-lived thread for a process's heavy torch work: loading, accelerating, running and measuring pipelines.

Why one thread: PyTorch's CPU builds parallelise with libgomp, which gives every thread that runs a parallel op its
own team of helper threads and keeps that team for as long as the thread lives. Idle helpers spin-wait for the next
op, which is what makes a transformer's many small ops fast; but once the process holds more OpenMP threads than it
has CPUs (two live teams on a 2-core machine: the main thread that loaded the model and the thread that runs it),
libgomp throttles the spinning of every team and each op pays for a sleep and a wake: a generation of the tiny
model on a 2-core CPU then takes several times as long (``python -m benchmarks.openmp_threads`` measures it;
``docs/openmp-threads.json`` holds a run). Doing the heavy work on one thread keeps one team, whichever thread (the
main one, a web server's worker) asks for it.

Each call runs with the asking thread's ``torch.get_num_threads()``: PyTorch fixes a thread's count when it first
runs a parallel op, so a long-lived thread would otherwise ignore a later ``torch.set_num_threads``.

>>> from lightcache.torch_thread import torch_thread
>>> torch_thread.call(sum, [1, 2, 3])
6
>>> torch_thread.submit(max, 4, 9).result()
9
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

T = TypeVar("T")

THREAD_NAME = "lightcache-torch"


class TorchThread:
    """A daemon thread that runs submitted calls one at a time, in order.

    :meth:`call` runs a call there and waits for it (inline when already there, so nested calls do not deadlock);
    :meth:`submit` hands one over and returns its :class:`~concurrent.futures.Future`. The thread starts on first
    use and is a daemon, so a call that never returns cannot keep the process from exiting.
    """

    def __init__(self, name: str = THREAD_NAME):
        self._name = name
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def is_current(self) -> bool:
        """True when called from this thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> "Future[T]":
        """Queue ``fn(*args, **kwargs)`` on the thread; its result or exception arrives in the returned future."""
        import torch

        future: Future = Future()
        self._ensure_started()
        self._jobs.put((future, torch.get_num_threads(), fn, args, kwargs))
        return future

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the thread and return its result (raise its exception)."""
        if self.is_current():
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result()

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        import torch

        while True:
            future, threads, fn, args, kwargs = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                if torch.get_num_threads() != threads:
                    torch.set_num_threads(threads)
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)
            else:
                future.set_result(result)
            del future, fn, args, kwargs  # do not hold the last call's pipeline or frames while idle


torch_thread = TorchThread()
"""The process's thread for heavy torch work (see the module's docstring)."""
