"""The torch thread: one long-lived thread does every heavy torch call of a run (why: lightcache/torch_thread.py)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lightcache.errors import LightcacheError
from lightcache.torch_thread import THREAD_NAME, TorchThread, torch_thread

from conftest import tiny_settings


def test_call_returns_the_result_and_runs_on_one_named_daemon_thread():
    t = TorchThread(name="lc-test-torch")
    seen = [t.call(lambda: threading.current_thread()) for _ in range(3)]
    assert len({id(s) for s in seen}) == 1
    assert seen[0] is not threading.current_thread()
    assert seen[0].name == "lc-test-torch" and seen[0].daemon
    assert t.call(pow, 2, exp=5) == 32


def test_call_raises_what_the_call_raised():
    t = TorchThread(name="lc-test-torch")

    def boom():
        raise LightcacheError("specific")

    with pytest.raises(LightcacheError, match="specific"):
        t.call(boom)
    assert t.call(lambda: 7) == 7  # the thread survives a raising call


def test_calls_run_in_the_order_submitted():
    t = TorchThread(name="lc-test-torch")
    gate, order = threading.Event(), []
    first = t.submit(gate.wait, 10)
    later = [t.submit(order.append, i) for i in range(5)]
    gate.set()
    first.result(timeout=10)
    for f in later:
        f.result(timeout=10)
    assert order == [0, 1, 2, 3, 4]


def test_nested_call_runs_inline_instead_of_deadlocking():
    t = TorchThread(name="lc-test-torch")
    outer = t.call(lambda: (threading.current_thread(), t.call(threading.current_thread), t.is_current()))
    assert outer[0] is outer[1] and outer[2] is True
    assert t.is_current() is False


def test_a_cancelled_future_is_skipped():
    t = TorchThread(name="lc-test-torch")
    gate, ran = threading.Event(), []
    blocker = t.submit(gate.wait, 10)
    skipped = t.submit(ran.append, "should not run")
    assert skipped.cancel()
    gate.set()
    blocker.result(timeout=10)
    assert t.call(lambda: "after") == "after" and ran == []


@pytest.fixture
def forward_threads(tiny_pipe):
    """The threads the tiny pipeline's transformer and VAE decoder ran on, recorded by forward pre-hooks."""
    seen: list[str] = []
    handles = [m.register_forward_pre_hook(lambda mod, args: seen.append(threading.current_thread().name))
               for m in (tiny_pipe.transformer, tiny_pipe.vae.decoder)]
    yield seen
    for h in handles:
        h.remove()


def test_every_denoiser_and_decoder_call_of_runs_lands_on_the_torch_thread(tiny_pipe, forward_threads):
    from lightcache.runner import run_generation, run_to_completion

    for easycache in (False, True):
        run_to_completion(run_generation(tiny_pipe, tiny_settings(easycache=easycache)))
    assert forward_threads and set(forward_threads) == {THREAD_NAME}


def test_attaching_and_removing_the_accelerations_run_on_the_torch_thread(tiny_pipe, monkeypatch):
    import lightcache.runner as runner

    where: dict[str, str] = {}
    real_apply = runner.apply_lightcache

    def apply(*args, **kwargs):
        acc = real_apply(*args, **kwargs)
        where["apply"] = threading.current_thread().name
        real_remove = acc.remove

        def remove():
            where["remove"] = threading.current_thread().name
            real_remove()

        acc.remove = remove
        return acc

    monkeypatch.setattr(runner, "apply_lightcache", apply)
    runner.run_to_completion(runner.run_generation(tiny_pipe, tiny_settings()))
    assert where == {"apply": THREAD_NAME, "remove": THREAD_NAME}


def test_iterating_a_run_on_the_torch_thread_is_refused(tiny_pipe):
    from lightcache.runner import run_generation

    with pytest.raises(LightcacheError, match="torch thread"):
        torch_thread.call(lambda: next(run_generation(tiny_pipe, tiny_settings())))
    assert getattr(tiny_pipe.transformer, "_diffusers_hook", None) is None  # refused before anything was attached


def test_loading_a_preset_runs_on_the_torch_thread(monkeypatch, tmp_path):
    import lightcache.presets as presets

    seen = []
    monkeypatch.setattr(presets, "_load_pipeline", lambda *a: seen.append(threading.current_thread().name) or "pipe")
    assert presets.load_pipeline(presets.load_shipped_preset("tiny"), device="cpu") == "pipe"
    assert seen == [THREAD_NAME]


def test_ssim_runs_on_the_torch_thread(monkeypatch):
    import lightcache.metrics as metrics

    seen = []
    real = metrics._ssim
    monkeypatch.setattr(metrics, "_ssim", lambda a, b: seen.append(threading.current_thread().name) or real(a, b))
    video = np.random.default_rng(0).random((2, 16, 16, 3))
    assert metrics.ssim(video, video) == pytest.approx(1.0)
    assert seen == [THREAD_NAME]


def test_each_call_runs_with_the_asking_threads_torch_thread_count():
    import torch

    t = TorchThread(name="lc-test-torch")
    before = torch.get_num_threads()
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            assert t.call(torch.get_num_threads) == n
    finally:
        torch.set_num_threads(before)
