"""Memory telemetry: a sampler thread for the run's memory timeline, per-stage peaks, and a live-bytes meter.

:class:`MemorySampler` reads the process RSS (psutil) and, on a CUDA device, the allocator's allocated and reserved
bytes every ``period_s`` seconds on a background thread. The runner starts it, marks stages on it and drains its
readings into the run stream as :class:`~lightcache.events.MemorySample` events; ``lightcache.plots`` draws them.
Each stage also gets an exact peak: the CUDA allocator's peak on a GPU (reset when the stage starts), the kernel's
RSS high-water mark on Linux (reset through ``/proc/self/clear_refs``), else the highest sampled RSS.

:class:`LiveBytesMeter` counts the bytes of tensors created inside it that are still alive, and their peak, with a
dispatch mode: no timing, no allocator, any device (meta too). It answers "how much does this computation hold at
its worst" deterministically, which is how the tests check that a memory strategy does what it claims and how the
benchmark's ``--estimate`` mode sizes real Wan shapes on a machine without their memory.

Nothing here touches CUDA at import time.

Example:
    >>> import torch
    >>> from lightcache.telemetry import LiveBytesMeter, MemorySampler
    >>> with MemorySampler(period_s=0.02) as sampler:
    ...     start = sampler.begin_stage("work")
    ...     _ = torch.ones(1000, 1000).sum()
    ...     peak = sampler.end_stage("work")
    >>> peak > 0, all(s.values["rss"] > 0 for s in sampler.drain())
    (True, True)
    >>> with LiveBytesMeter() as meter:
    ...     a = torch.ones(1024, dtype=torch.float32)
    ...     b = a * 2
    ...     del a, b
    >>> meter.peak, meter.live
    (8192, 0)
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .errors import LightcacheError
from .events import MemorySample

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


class MemorySampler:
    """Samples memory on a background thread; a context manager that always stops its thread.

    Args:
        period_s: seconds between readings (0.01 to 1; the runner uses 0.05). Every reading is a few microseconds.
        device: the run's device; CUDA series are read only when it is a CUDA device.
        clock: returns the seconds to stamp readings with (the runner passes its run clock so that samples line
            up with the stage and step events); defaults to seconds since :meth:`start`.
    """

    def __init__(self, period_s: float = 0.05, device: torch.device | str | None = None,
                 clock: Callable[[], float] | None = None):
        if isinstance(period_s, bool) or not isinstance(period_s, (int, float)) or math.isnan(period_s) \
                or not 0.01 <= period_s <= 1.0:
            raise LightcacheError(f"Memory sampling period must be between 0.01 and 1 seconds, got {period_s!r}.")
        self.period_s = float(period_s)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.cuda = self.device.type == "cuda"
        self._clock = clock
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._pending: list[MemorySample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stage: str | None = None
        self._stage_sampled_peak = 0
        self._hwm_reset = False
        import psutil

        self._process = psutil.Process()

    # --- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> "MemorySampler":
        if self._thread is not None:
            raise RuntimeError("This memory sampler is already running.")
        if self._clock is None:
            self._t0 = time.perf_counter()
        self._stop.clear()
        self.sample()
        # The thread holds only a weak reference: if a sampler is dropped without stop(), its thread ends too.
        self._thread = threading.Thread(
            target=_sample_loop, args=(weakref.ref(self), self._stop, self.period_s),
            name="lightcache-memory-sampler", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and join the thread (idempotent), then take one last reading."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout=max(5.0, 10 * self.period_s))
            self.sample()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "MemorySampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- readings ----------------------------------------------------------------------------------------
    def sample(self) -> MemorySample:
        """Take one reading now (also called by the thread) and queue it for :meth:`drain`."""
        values = {"rss": int(self._process.memory_info().rss)}
        if self.cuda:
            values["cuda_allocated"] = int(torch.cuda.memory_allocated(self.device))
            values["cuda_reserved"] = int(torch.cuda.memory_reserved(self.device))
        with self._lock:
            # Time and queue together under the lock: once a consumer has drained after time t, no reading with an
            # earlier time can still arrive, which is what keeps the merged event stream in time order.
            reading = MemorySample(t=self._now(), values=values)
            self._pending.append(reading)
            if self._stage is not None:
                self._stage_sampled_peak = max(self._stage_sampled_peak, _tracked(values, self.cuda))
        return reading

    def drain(self) -> list[MemorySample]:
        """The readings taken since the last drain, oldest first."""
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    # --- stages ------------------------------------------------------------------------------------------
    def begin_stage(self, name: str) -> int:
        """Start tracking ``name``'s peak; returns the bytes held when it starts (CUDA allocated, else RSS)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._hwm_reset = _reset_rss_high_water_mark()
        start = self.sample()
        with self._lock:
            self._stage = name
            self._stage_sampled_peak = _tracked(start.values, self.cuda)
        return _tracked(start.values, self.cuda)

    def end_stage(self, name: str) -> int:
        """The peak bytes while ``name`` ran: CUDA allocator peak on a GPU, else the process RSS peak."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
        last = self.sample()
        with self._lock:
            sampled, self._stage = max(self._stage_sampled_peak, _tracked(last.values, self.cuda)), None
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        if self._hwm_reset:
            hwm = _rss_high_water_mark()
            if hwm is not None:
                return max(hwm, sampled)
        return sampled

    def _now(self) -> float:
        return self._clock() if self._clock is not None else time.perf_counter() - self._t0


def _sample_loop(ref: "weakref.ref[MemorySampler]", stop: threading.Event, period: float) -> None:
    while not stop.wait(period):
        sampler = ref()
        if sampler is None:
            return
        try:
            sampler.sample()
        except Exception:  # noqa: BLE001 - a failed reading must never take the run down; the next one may work
            pass
        del sampler


def _tracked(values: dict[str, int], cuda: bool) -> int:
    return values["cuda_allocated"] if cuda else values["rss"]


def _reset_rss_high_water_mark() -> bool:
    """Reset the kernel's peak-RSS counter (Linux); False where that is not possible."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_high_water_mark() -> int | None:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


class LiveBytesMeter(TorchDispatchMode):
    """Bytes of the tensors created inside the ``with`` block that are still alive (``live``), and their ``peak``.

    Tensors that existed before (weights, inputs) are "resident" and not counted, nor are views of them. Storage is
    counted once however many views share it, and released when the last one dies. Works on any device; on the meta
    device it sizes a computation without running it (diffusers' Wan models run there as they are).
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # storage id -> [bytes, live tensors using it]
        self._seen: dict[int, int] = {}  # id(tensor) -> storage id, for tensors already counted

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {_storage_id(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or id(t) in self._seen:
                continue
            key = _storage_id(t)
            entry = self._storages.get(key)
            if entry is not None:
                entry[1] += 1
            elif key in inputs:
                continue  # a view of something that existed before: resident
            else:
                size = t.untyped_storage().nbytes()
                self._storages[key] = [size, 1]
                self.live += size
                self.peak = max(self.peak, self.live)
            self._seen[id(t)] = key
            weakref.finalize(t, self._release, key, id(t))
        return out

    def _release(self, key: int, tensor_id: int) -> None:
        self._seen.pop(tensor_id, None)
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._storages[key]


def _storage_id(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata

