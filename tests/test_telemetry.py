"""The memory sampler (thread lifecycle, readings, stage peaks) and the live-bytes meter."""

from __future__ import annotations

import gc
import os
import threading
import time

import pytest
import torch

from lightcache.errors import LightcacheError
from lightcache.events import MemorySample
from lightcache.telemetry import LiveBytesMeter, MemorySampler

THREAD_NAME = "lightcache-memory-sampler"
#: How long a test waits for the sampler thread (a guard against hanging, not a timing).
PATIENCE_S = 30


def sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


def wait_for_no_sampler_threads(timeout: float = PATIENCE_S) -> bool:
    deadline = time.monotonic() + timeout
    while sampler_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not sampler_threads()


def test_start_and_stop_leave_no_thread():
    sampler = MemorySampler(period_s=0.02)
    sampler.start()
    assert sampler.running and len(sampler_threads()) == 1
    sampler.stop()
    assert not sampler.running and sampler_threads() == []
    sampler.stop()  # idempotent


def test_the_context_manager_stops_the_thread_when_the_body_raises():
    with pytest.raises(ZeroDivisionError):
        with MemorySampler(period_s=0.02):
            assert len(sampler_threads()) == 1
            1 / 0
    assert sampler_threads() == []


def test_a_sampler_dropped_without_stop_ends_its_thread():
    MemorySampler(period_s=0.02).start()
    gc.collect()
    assert wait_for_no_sampler_threads()


class CountingClock:
    """A clock for the sampler that counts its readings and says when ``enough`` of them have been taken."""

    def __init__(self, enough: int):
        self.readings, self.enough = 0, enough
        self.reached = threading.Event()

    def __call__(self) -> float:
        self.readings += 1
        if self.readings >= self.enough:
            self.reached.set()
        return time.perf_counter()


def test_readings_are_plain_events_in_time_order():
    clock = CountingClock(enough=3)  # the one at start and two from the thread
    with MemorySampler(period_s=0.02, clock=clock) as sampler:
        assert clock.reached.wait(PATIENCE_S), "the sampler thread took no readings"
    samples = sampler.drain()
    assert len(samples) >= 4  # one at start, at least two from the thread, one at stop
    assert all(isinstance(s, MemorySample) and s.values["rss"] > 0 for s in samples)
    assert "cuda_allocated" not in samples[0].values  # a CPU sampler reads no CUDA series
    assert [s.t for s in samples] == sorted(s.t for s in samples)
    assert sampler.drain() == []  # drained readings are not returned again
    assert samples[0].to_dict()["event"] == "MemorySample"


def test_readings_use_the_given_clock():
    ticks = iter(range(1000))
    with MemorySampler(period_s=1.0, clock=lambda: float(next(ticks))) as sampler:
        pass
    # Readings at start and at stop (stop does not wait out a period): the clock's first two ticks.
    assert [s.t for s in sampler.drain()][:2] == [0.0, 1.0]


@pytest.mark.parametrize("bad", [0, 0.001, 5, -1, float("nan"), "0.05", True])
def test_bad_periods_get_a_clear_error(bad):
    with pytest.raises(LightcacheError, match="between 0.01 and 1 seconds"):
        MemorySampler(period_s=bad)


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_a_stage_peak_catches_a_spike_between_readings():
    """A 1 s period cannot see a 200 MB allocation that lives for microseconds; the stage peak must."""
    with MemorySampler(period_s=1.0) as sampler:
        start = sampler.begin_stage("spike")
        block = torch.ones(50_000_000, dtype=torch.float32)  # 200 MB, touched
        del block
        peak = sampler.end_stage("spike")
    assert peak - start >= 150 * 2**20


def test_live_bytes_counts_new_storage_once_and_releases_it():
    resident = torch.ones(1000)
    with LiveBytesMeter() as meter:
        a = torch.ones(256, dtype=torch.float32)  # 1 KiB
        view = a[:128]  # shares a's storage: not counted again
        b = resident * 2  # new: 4000 bytes
        same = resident[:10]  # a view of something resident: not counted
        assert meter.live == 1024 + 4000
        del a
        assert meter.live == 1024 + 4000  # the view keeps the storage alive
        del view, b, same
    assert meter.live == 0 and meter.peak == 1024 + 4000


def test_live_bytes_sizes_a_computation_on_the_meta_device():
    with torch.device("meta"):
        x = torch.empty(1024, 1024)
        with LiveBytesMeter() as meter:
            y = (x * 2).sum()
            del y
    assert meter.peak == 1024 * 1024 * 4 + 4


@pytest.mark.gpu
def test_cuda_sampler_reads_the_allocator_and_the_stage_peak():
    device = torch.device("cuda")
    with MemorySampler(period_s=0.02, device=device) as sampler:
        start = sampler.begin_stage("alloc")
        block = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)
        del block
        peak = sampler.end_stage("alloc")
    samples = sampler.drain()
    assert {"rss", "cuda_allocated", "cuda_reserved"} <= set(samples[0].values)
    assert peak - start >= 64 * 2**20
