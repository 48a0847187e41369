"""Asynchronous swapping: a plain no-op on the CPU, its mechanics on a stand-in device, the stores' stream order,
a tensor store that keeps EasyCache exact, hook order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import strict_fp32, tiny_settings
from diffusers.hooks import HookRegistry, ModelHook

from lightcache.errors import LightcacheError
from lightcache.families import adapter_for, adapter_named
from lightcache.techniques.easycache import (
    EasyCacheConfig,
    TensorStore,
    apply_easycache,
    get_easycache_hook,
    remove_easycache,
)
from lightcache.techniques.swap import (
    CPU_NOTE,
    AsyncSwapConfig,
    PinnedTensorStore,
    apply_async_swap,
    get_async_swap,
    remove_async_swap,
)

WAN = adapter_named("wan")


def _video(pipe, steps=8):
    return pipe("a red circle moving right", num_inference_steps=steps, height=32, width=32, num_frames=9,
                generator=torch.Generator().manual_seed(4), output_type="np").frames[0]


def _hooks(module):
    registry = getattr(module, "_diffusers_hook", None)
    return list(registry.hooks) if registry is not None else []


def test_on_the_cpu_swapping_is_a_no_op_that_says_so(tiny_pipe):
    before = {name: [p.data_ptr() for p in getattr(tiny_pipe, name).parameters()]
              for name in ("text_encoder", "transformer", "vae")}
    swap = apply_async_swap(tiny_pipe, adapter=adapter_for(tiny_pipe), device="cpu")
    assert not swap.active and swap.note == CPU_NOTE
    assert "did nothing" in swap.note and "CPU" in swap.note
    swap.after_encode()
    swap.before_decode()
    swap.after_decode()
    summary = swap.summary()
    assert summary == {"active": False, "note": CPU_NOTE, "transformer_group_offload": False,
                       "group_offloaded": [], "reused_pinned_weights": False, "parked": [], "cache_store": False,
                       "cache_bytes_parked": 0}
    assert _hooks(tiny_pipe.transformer) == []
    remove_async_swap(tiny_pipe)
    after = {name: [p.data_ptr() for p in getattr(tiny_pipe, name).parameters()] for name in before}
    assert after == before  # nothing moved, nothing copied
    assert get_async_swap(tiny_pipe) is None


def test_applying_twice_is_refused_and_removing_twice_is_harmless(tiny_pipe):
    apply_async_swap(tiny_pipe, adapter=adapter_for(tiny_pipe), device="cpu")
    with pytest.raises(LightcacheError, match="already applied"):
        apply_async_swap(tiny_pipe, adapter=adapter_for(tiny_pipe), device="cpu")
    remove_async_swap(tiny_pipe)
    remove_async_swap(tiny_pipe)


def test_config_is_validated():
    with pytest.raises(LightcacheError, match="AsyncSwapConfig.vae"):
        AsyncSwapConfig(vae="yes")


def test_a_copying_tensor_store_keeps_easycache_exact(tiny_pipe):
    """The store hands back copies, not the tensors it was given: EasyCache's decisions and output must not move."""
    config = EasyCacheConfig(threshold=0.3, warmup_steps=2)
    hook = apply_easycache(tiny_pipe.transformer, config)
    plain = _video(tiny_pipe)
    plain_records = [(r.step, r.branch, r.computed, r.error) for r in hook.records]
    store = PinnedTensorStore("cpu")
    hook.use_tensor_store(store)
    stored = _video(tiny_pipe)
    stored_records = [(r.step, r.branch, r.computed, r.error) for r in hook.records]
    remove_easycache(tiny_pipe.transformer)
    assert np.array_equal(stored, plain)
    assert stored_records == plain_records
    assert any(not computed for _, _, computed, _ in stored_records)
    assert store.peak_parked_bytes > 0


def test_the_store_fetches_on_demand_and_releases_before_the_forward():
    store = PinnedTensorStore("cpu")
    x = torch.randn(3, 4)
    original = x.clone()
    store.put("x_prev", x)
    x.add_(1.0)  # the caller may reuse its tensor: the store kept its own copy
    assert store.names() == ["x_prev"] and store.on_device_bytes() == 0
    store.prefetch(["x_prev", "missing"])
    fetched = store.get("x_prev")
    assert torch.equal(fetched, original)
    assert store.get("x_prev") is fetched  # fetched once per use, not once per access
    assert store.on_device_bytes() == fetched.nbytes
    store.release()
    assert store.on_device_bytes() == 0 and store.names() == ["x_prev"]
    assert store.get("missing") is None
    store.discard("x_prev")
    assert store.get("x_prev") is None
    default = TensorStore()
    default.put("a", x)
    assert default.get("a") is x  # the default store never copies


class _RemovesItselfAfterOneCall(ModelHook):
    """Behaves like diffusers' lazy prefetching hook: it unregisters itself after the first forward."""

    def post_forward(self, module, output):
        module._diffusers_hook.remove_hook("self_removing", recurse=False)
        return output


def test_easycache_survives_a_hook_that_removes_itself_when_applied_in_the_runner_order(tiny_pipe):
    """EasyCache first, then the offloading hooks: the offloader's self-removal must not unlink EasyCache."""
    transformer = tiny_pipe.transformer
    hook = apply_easycache(transformer, EasyCacheConfig(threshold=0.3, warmup_steps=2))
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(_RemovesItselfAfterOneCall(), "self_removing")
    _video(tiny_pipe)
    remove_easycache(transformer)
    assert "self_removing" not in _hooks(transformer)
    assert any(not r.computed for r in hook.records), "EasyCache was bypassed after the other hook left"


def test_a_kept_weight_copy_is_used_only_while_the_weights_are_unchanged():
    """The staleness check behind reusing the pinned transformer copy (the pinning itself needs CUDA)."""
    from lightcache.techniques.swap import PinnedWeights

    def fresh():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))

    def kept_for(module):
        kept = PinnedWeights({n: t.detach().clone() for n, t in (*module.named_parameters(), *module.named_buffers())})
        kept.stamp(module)
        return kept

    module = fresh()
    kept = kept_for(module)
    assert kept.matches(module) and kept.nbytes == sum(p.nbytes for p in module.parameters())
    module[0].weight.data.mul_(1.5)  # in place through .data: no new version, a new sum
    assert not kept.matches(module)
    module = fresh()
    kept = kept_for(module)
    with torch.no_grad():
        module[0].bias.add_(1.0)  # in place: a new version
    assert not kept.matches(module)
    module = fresh()
    kept = kept_for(module)
    module[1].weight.data = torch.ones(4)  # replaced: a new storage
    assert not kept.matches(module)
    assert not kept_for(fresh()).matches(torch.nn.Linear(4, 4))  # another model
    module = fresh()
    kept = kept_for(module)
    before = module(torch.ones(1, 4))
    kept.restore(module)
    assert torch.equal(module(torch.ones(1, 4)), before)
    assert all(p.data_ptr() == kept.host[n].data_ptr() for n, p in module.named_parameters())


def test_strict_fp32_restores_the_tf32_switches_even_after_an_error():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with pytest.raises(RuntimeError), strict_fp32():
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        raise RuntimeError("inside")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


# --- the mechanics, with the CPU standing in for the GPU ---------------------------------------------------------
def test_which_modules_each_stage_needs():
    from lightcache.techniques.swap import AsyncSwap
    from lightcache.tiny import build_tiny_pipeline

    swap = AsyncSwap(build_tiny_pipeline(seed=0), torch.device("cpu"), AsyncSwapConfig(), WAN)
    needs = {stage: swap.stage_modules(stage) for stage in ("encode", "encode_image", "denoise", "decode", "other")}
    assert needs == {"encode": {"text_encoder"}, "encode_image": {"vae"}, "denoise": set(), "decode": {"vae"},
                     "other": set()}
    assert swap._swappable() == ["text_encoder", "vae"]
    only_vae = AsyncSwap(swap.pipe, torch.device("cpu"), AsyncSwapConfig(text_encoder=False), WAN)
    assert only_vae.stage_modules("encode") == set() and only_vae._swappable() == ["vae"]
    nothing = AsyncSwap(swap.pipe, torch.device("cpu"), AsyncSwapConfig(text_encoder=False, vae=False), WAN)
    assert nothing.stage_modules("decode") == set() and nothing._swappable() == []


def _track_moves(pipe, monkeypatch):
    """Record where each parked module is (``"host"`` or ``"device"``) and which parking place moved it."""
    import lightcache.techniques.swap as swap_module

    names = {id(getattr(pipe, n)): n for n in ("text_encoder", "vae", "transformer")}
    where, movers = {}, {}
    for action in ("park", "unpark"):
        def moved(parked, *args, _action=action, _real=getattr(swap_module._ParkedModule, action)):
            where[names[id(parked.module)]] = "host" if _action == "park" else "device"
            movers.setdefault(names[id(parked.module)], set()).add(id(parked))
            return _real(parked, *args)

        monkeypatch.setattr(swap_module._ParkedModule, action, moved)
    return where, movers


def test_swapping_mechanics_on_a_stand_in_device(tiny_pipe, fake_cuda, monkeypatch):
    """Everything swapping does around a run, with the CPU standing in for the GPU (stand-in streams, plain memory
    for pinned): each stage gets exactly the modules it needs and the others are parked, the transformer streams
    under block-level group offloading, EasyCache's tensors live in the swap's store, and afterwards everything is
    back: no hooks, the default store, the same video and decisions as without swapping. Only the bytes moved
    between the memories are not tested here (tests marked ``gpu``)."""
    import lightcache.techniques.swap as swap_module
    from lightcache.runner import run_generation, run_to_completion

    plain_records = []
    collect = lambda into: lambda e: into.append(e) if type(e).__name__ == "StepRecord" else None  # noqa: E731
    settings = tiny_settings(threshold=0.3)
    plain = run_to_completion(run_generation(tiny_pipe, settings), collect(plain_records))

    monkeypatch.setattr(swap_module, "_swaps_on", lambda device: True)
    offload_requests = []
    offload = _offload_on_the_cpu(tiny_pipe.transformer)

    def cpu_group_offload(**kwargs):
        offload_requests.append(kwargs)
        offload(**kwargs)

    monkeypatch.setattr(tiny_pipe.transformer, "enable_group_offload", cpu_group_offload)
    where, movers = _track_moves(tiny_pipe, monkeypatch)
    seen = {}
    enter_stage = swap_module.AsyncSwap.enter_stage

    def enter_and_look(swap, stage):
        enter_stage(swap, stage)
        hook = get_easycache_hook(tiny_pipe.transformer)
        seen[stage] = (dict(where), _hooks(tiny_pipe.transformer), type(hook.state.store).__name__)
        seen[f"summary at {stage}"] = swap.summary()

    monkeypatch.setattr(swap_module.AsyncSwap, "enter_stage", enter_and_look)
    records = []
    swapped = run_to_completion(run_generation(tiny_pipe, tiny_settings(threshold=0.3, async_swap=True)),
                                collect(records))

    during = seen.pop("summary at decode")
    assert during["cache_store"] and during["cache_bytes_parked"] > 0 and during["parked"] == ["text_encoder", "vae"]
    seen = {stage: look for stage, look in seen.items() if not stage.startswith("summary")}
    assert [(s, w) for s, (w, _, _) in seen.items()] == [
        ("encode", {"vae": "host"}),  # the VAE is parked from the start; the text encoder is in use
        ("denoise", {"vae": "host", "text_encoder": "host"}),
        ("decode", {"vae": "device", "text_encoder": "host"}),
    ]
    assert where == {"vae": "device", "text_encoder": "device"}  # and everything comes back at the end
    # One parking place per module, kept for the run (its host buffers are reused), on the swap's device.
    assert {name: len(ids) for name, ids in movers.items()} == {"vae": 1, "text_encoder": 1}
    assert fake_cuda.side_devices == [torch.device("cpu")] * 2
    hooks = seen["denoise"][1]
    assert "group_offloading" in hooks and hooks.index("lightcache_easycache") < hooks.index("group_offloading")
    assert seen["denoise"][2] == "PinnedTensorStore"
    assert offload_requests == [dict(onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                                     offload_type="block_level", num_blocks_per_group=1, use_stream=True,
                                     record_stream=True)]
    summary = swapped.summary["strategies"]["async_swap"]  # read after the swap was undone
    assert summary["active"] and summary["note"] is None and summary["group_offloaded"] == ["transformer"]
    assert summary["transformer_group_offload"] and not summary["reused_pinned_weights"]
    assert summary["parked"] == ["text_encoder", "vae"] and summary["cache_store"]
    assert summary["cache_bytes_parked"] > 0
    assert all(not _hooks(m) for m in tiny_pipe.transformer.modules())
    assert get_easycache_hook(tiny_pipe.transformer) is None
    assert np.array_equal(swapped.frames, plain.frames)
    assert [(r.step, r.branch, r.computed) for r in records] == [(r.step, r.branch, r.computed) for r in plain_records]
    assert any(not r.computed for r in records)


def test_the_stage_hooks_of_the_benchmark_move_what_each_stage_needs(tiny_pipe, fake_cuda, monkeypatch):
    """``after_encode``, ``before_decode`` and ``after_decode`` (what benchmarks/memory.py calls around its own
    stages) on the stand-in device: encoders parked for the denoise, the VAE in for the decode and out after it."""
    import lightcache.techniques.swap as swap_module

    monkeypatch.setattr(swap_module, "_swaps_on", lambda device: True)
    monkeypatch.setattr(tiny_pipe.transformer, "enable_group_offload", lambda **kwargs: None)
    where, _ = _track_moves(tiny_pipe, monkeypatch)
    swap = apply_async_swap(tiny_pipe, adapter=WAN, device="cpu", config=AsyncSwapConfig(cache=False))
    assert where == {"vae": "host"}  # parked from the start: the encode stage does not use it
    states = []
    for stage_hook in (swap.after_encode, swap.before_decode, swap.after_decode):
        stage_hook()
        states.append(dict(where))
    remove_async_swap(tiny_pipe)
    assert states == [{"vae": "host", "text_encoder": "host"}, {"vae": "device", "text_encoder": "host"},
                      {"vae": "host", "text_encoder": "host"}]
    assert where == {"vae": "device", "text_encoder": "device"}


def _offload_on_the_cpu(module):
    """Group offloading as swapping asks for it, between CPU memories (diffusers streams only to a GPU)."""
    enable = module.enable_group_offload
    return lambda **kwargs: enable(**dict(kwargs, use_stream=False, record_stream=False))


def test_a_denoiser_already_under_group_offloading_is_left_as_it_was(fake_cuda, monkeypatch):
    import lightcache.techniques.swap as swap_module
    from lightcache.tiny.variants import build_tiny_variant

    monkeypatch.setattr(swap_module, "_swaps_on", lambda device: True)
    pipe = build_tiny_variant("wan2.2-t2v-a14b")  # two experts
    pipe.transformer.enable_group_offload(onload_device=torch.device("cpu"), offload_type="block_level",
                                          num_blocks_per_group=1)
    monkeypatch.setattr(pipe.transformer_2, "enable_group_offload", _offload_on_the_cpu(pipe.transformer_2))
    swap = apply_async_swap(pipe, adapter=adapter_for(pipe), device="cpu")
    assert swap.note == "The transformer already had group offloading; it was left as it was."
    assert swap.group_offload == ["transformer_2"]  # the other expert still gets it
    remove_async_swap(pipe)
    assert "group_offloading" in _hooks(pipe.transformer) and not _hooks(pipe.transformer_2)


def test_the_kept_weight_copy_is_reused_only_while_it_matches(tiny_pipe, fake_cuda, monkeypatch):
    """The transformer's pinned copy kept from the previous run (made on a GPU; built by hand here): used when the
    weights are the ones it was made from, dropped otherwise, and taken by the run either way."""
    import lightcache.techniques.swap as swap_module
    from lightcache.techniques.swap import PinnedWeights

    monkeypatch.setattr(swap_module, "_swaps_on", lambda device: True)
    transformer = tiny_pipe.transformer
    monkeypatch.setattr(transformer, "enable_group_offload", _offload_on_the_cpu(transformer))

    def kept_copy():
        kept = PinnedWeights({n: t.detach().clone() for n, t in (*transformer.named_parameters(),
                                                                  *transformer.named_buffers())})
        kept.stamp(transformer)
        return kept

    kept = kept_copy()
    setattr(tiny_pipe, swap_module._PINNED_ATTRIBUTE, {"transformer": kept})
    swap = apply_async_swap(tiny_pipe, adapter=adapter_for(tiny_pipe), device="cpu")
    assert swap.reused_pinned_weights == ["transformer"] and swap.summary()["reused_pinned_weights"]
    assert all(p.data_ptr() == kept.host[n].data_ptr() for n, p in transformer.named_parameters())
    assert getattr(tiny_pipe, swap_module._PINNED_ATTRIBUTE) is None  # taken by this run
    remove_async_swap(tiny_pipe)

    stale = kept_copy()
    with torch.no_grad():
        transformer.proj_out.weight.mul_(0.5)  # as a LoRA merged in place would
    setattr(tiny_pipe, swap_module._PINNED_ATTRIBUTE, {"transformer": stale})
    swap = apply_async_swap(tiny_pipe, adapter=adapter_for(tiny_pipe), device="cpu")
    assert swap.reused_pinned_weights == [] and not swap.summary()["reused_pinned_weights"]
    assert getattr(tiny_pipe, swap_module._PINNED_ATTRIBUTE) is None
    remove_async_swap(tiny_pipe)


def test_a_pinned_store_for_a_cuda_device_takes_its_cuda_path_on_that_device(fake_cuda):
    """Only built, never copied through (the CPU cannot stand in for a CUDA tensor): its mode and stream's device."""
    store = PinnedTensorStore(torch.device("cuda"))
    assert store.device == torch.device("cuda") and store.cuda is True
    assert store.stream is fake_cuda.sides[0] and fake_cuda.side_devices == [torch.device("cuda")]
    on_cpu = PinnedTensorStore("cpu")
    assert on_cpu.cuda is False and on_cpu.stream is None and len(fake_cuda.sides) == 1


def test_the_pinned_store_orders_its_copies_on_the_streams(fake_cuda):
    """The store's CUDA path on stand-in streams: a copy to the host waits for the compute stream to produce the
    tensor, and the compute stream waits for a copy back before it reads it."""
    store = PinnedTensorStore("cpu")
    store.cuda, store.stream = True, torch.cuda.Stream()  # its CUDA path, with the CPU standing in for the device
    x = torch.randn(3, 4)
    store.put("x_prev", x)
    assert fake_cuda.log == [("record", "compute", "compute#0"), ("wait", "side0", "compute#0"),
                             ("record_stream", "side0")]
    host = store._host["x_prev"]
    assert torch.equal(host, x) and host.data_ptr() != x.data_ptr()
    fake_cuda.log.clear()
    store.prefetch(["x_prev", "missing"])
    store.prefetch(["x_prev"])  # already on its way
    fetched = store.get("x_prev")
    assert fake_cuda.log == [("record", "side0", "side0#0"), ("wait", "compute", "side0#0"),
                             ("record_stream", "compute")]
    assert torch.equal(fetched, x) and store.get("x_prev") is fetched and len(fake_cuda.log) == 3
    store.release()
    store.put("x_prev", torch.zeros(3, 4))  # same shape and dtype: the host buffer is reused
    assert store._host["x_prev"] is host
    store.put("x_prev", torch.zeros(3, 4, dtype=torch.float64))
    assert store._host["x_prev"] is not host and store.peak_parked_bytes == 3 * 4 * 8
    store.put("v_last", torch.zeros(2, 4))
    store.prefetch(["x_prev"])  # on its way ...
    store.get("v_last")  # ... and fetched: both count as on the device
    assert store.on_device_bytes() == 3 * 4 * 8 + 2 * 4 * 4
    store.discard("x_prev")
    store.discard("never-stored")
    assert store.names() == ["v_last"] and store.on_device_bytes() == 2 * 4 * 4
    store.discard("v_last")  # fetched: its device copy goes too
    assert store.get("v_last") is None and store.on_device_bytes() == 0


# --- on a GPU ------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_swapping_on_cuda_is_exact_and_puts_everything_back():
    from lightcache.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0).to("cuda")
    with strict_fp32():
        hook = apply_easycache(pipe.transformer, EasyCacheConfig(threshold=0.3, warmup_steps=2))
        plain = _video(pipe)
        plain_records = [(r.step, r.branch, r.computed) for r in hook.records]
        swap = apply_async_swap(pipe, adapter=adapter_for(pipe), device="cuda")
        assert swap.active and swap.group_offload and swap.cache_store is not None
        assert next(pipe.vae.parameters()).device.type == "cpu"
        swapped = _video(pipe)
        records = [(r.step, r.branch, r.computed) for r in hook.records]
        remove_async_swap(pipe)
        remove_easycache(pipe.transformer)
    assert np.abs(swapped - plain).max() <= 1e-5
    assert records == plain_records and any(not c for _, _, c in records)
    for name in ("transformer", "vae", "text_encoder"):
        assert all(p.device.type == "cuda" for p in getattr(pipe, name).parameters())
    assert all(not _hooks(m) for m in pipe.transformer.modules())


@pytest.mark.gpu
def test_the_next_run_reuses_the_pinned_copy_and_a_changed_weight_is_copied_again():
    from lightcache.techniques.swap import release_pinned_weights
    from lightcache.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0).to("cuda")
    with strict_fp32():
        videos, reused = [], []
        for change in (False, False, True, False):
            if change:  # as a LoRA merged in place would: the kept copy is now stale
                with torch.no_grad():
                    pipe.transformer.proj_out.weight.mul_(0.5)
            swap = apply_async_swap(pipe, adapter=adapter_for(pipe), device="cuda")
            reused.append(swap.reused_pinned_weights)
            videos.append(_video(pipe))
            remove_async_swap(pipe)
        plain = _video(pipe)  # no swapping: the weights as they are now
    assert reused == [False, True, False, True]
    assert np.abs(videos[1] - videos[0]).max() <= 1e-5
    assert np.abs(videos[2] - plain).max() <= 1e-5 and np.abs(videos[3] - plain).max() <= 1e-5
    assert np.abs(videos[2] - videos[0]).max() > 1e-3  # the change itself shows
    assert all(p.device.type == "cuda" for p in pipe.transformer.parameters())
    block_bytes = sum(t.nbytes for t in (*pipe.transformer.blocks.parameters(), *pipe.transformer.blocks.buffers()))
    assert release_pinned_weights(pipe) >= block_bytes and release_pinned_weights(pipe) == 0


@pytest.mark.gpu
def test_swapping_on_cuda_lowers_the_resident_weights():
    from lightcache.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0, num_layers=6, ffn_dim=256).to("cuda")
    torch.cuda.synchronize()
    full = torch.cuda.memory_allocated()
    apply_async_swap(pipe, adapter=adapter_for(pipe), device="cuda")
    torch.cuda.synchronize()
    swapped = torch.cuda.memory_allocated()
    remove_async_swap(pipe)
    torch.cuda.synchronize()
    assert swapped < full
    assert torch.cuda.memory_allocated() == full


@pytest.mark.gpu
def test_a_parked_module_waits_in_pinned_host_memory_and_comes_back_unchanged():
    from lightcache.techniques.swap import _ParkedModule

    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)).to("cuda")
    before = {name: t.detach().clone() for name, t in module.state_dict().items()}
    parked = _ParkedModule(module, torch.device("cuda", torch.cuda.current_device()))
    parked.park()
    torch.cuda.synchronize()
    assert all(p.device.type == "cpu" and p.is_pinned() for p in module.parameters())
    hosts = [p.data_ptr() for p in module.parameters()]
    parked.unpark(parked.device)
    torch.cuda.synchronize()
    assert all(p.device.type == "cuda" for p in module.parameters())
    assert all(torch.equal(module.state_dict()[name], t) for name, t in before.items())
    parked.park()  # parking again copies into the same pinned buffers
    torch.cuda.synchronize()
    assert [p.data_ptr() for p in module.parameters()] == hosts
    assert all(torch.equal(module.state_dict()[name].cuda(), t) for name, t in before.items())


def test_an_image_encoder_is_swapped_with_the_text_encoder():
    """Wan2.1 I2V's image encoder is parked and brought in like the text encoder (and only when that is swapped)."""
    from lightcache.techniques.swap import AsyncSwap
    from lightcache.tiny.variants import build_tiny_variant

    pipe = build_tiny_variant("wan2.1-i2v")
    swap = AsyncSwap(pipe, torch.device("cpu"), AsyncSwapConfig(), WAN)
    assert swap.stage_modules("encode_image") == {"image_encoder", "vae"}
    assert swap._swappable() == ["text_encoder", "image_encoder", "vae"]
    vae_only = AsyncSwap(pipe, torch.device("cpu"), AsyncSwapConfig(text_encoder=False), WAN)
    assert vae_only.stage_modules("encode_image") == {"vae"} and vae_only._swappable() == ["vae"]


def test_the_adapter_given_is_used_and_other_devices_are_named():
    from lightcache.techniques.swap import AsyncSwap
    from lightcache.tiny import build_tiny_pipeline

    pipe, adapter = build_tiny_pipeline(seed=0), object()
    assert AsyncSwap(pipe, torch.device("cpu"), AsyncSwapConfig(), adapter=adapter).adapter is adapter
    elsewhere = AsyncSwap(pipe, torch.device("meta"), AsyncSwapConfig(), WAN)
    assert not elsewhere.active and "'meta'" in elsewhere.note and elsewhere.note != CPU_NOTE
    assert PinnedTensorStore(torch.device("cpu")).peak_parked_bytes == 0


def test_removing_the_swap_gives_easycache_its_own_store_back(tiny_pipe, fake_cuda, monkeypatch):
    """A library user may remove swapping and keep EasyCache: its tensors go back to a plain store, and the swap
    holds no modules any more."""
    import lightcache.techniques.swap as swap_module
    from lightcache.techniques.easycache import EasyCacheConfig, TensorStore, apply_easycache, remove_easycache

    monkeypatch.setattr(swap_module, "_swaps_on", lambda device: True)
    monkeypatch.setattr(tiny_pipe.transformer, "enable_group_offload", _offload_on_the_cpu(tiny_pipe.transformer))
    hook = apply_easycache(tiny_pipe.transformer, EasyCacheConfig(threshold=0.1))
    swap = apply_async_swap(tiny_pipe, adapter=adapter_for(tiny_pipe), device="cpu")
    assert isinstance(hook.state.store, PinnedTensorStore)
    remove_async_swap(tiny_pipe)
    assert type(hook.state.store) is TensorStore and swap.group_offload == [] and swap.cache_store is None
    assert get_easycache_hook(tiny_pipe.transformer) is hook
    # A store the user gave EasyCache while swapping ran is theirs: removing the swap leaves it.
    apply_async_swap(tiny_pipe, adapter=adapter_for(tiny_pipe), device="cpu")
    mine = TensorStore()
    hook.use_tensor_store(mine)
    remove_async_swap(tiny_pipe)
    assert hook.state.store is mine
    remove_easycache(tiny_pipe.transformer)


def test_a_store_fetches_past_what_it_cannot_fetch_and_a_new_value_replaces_one_on_its_way(fake_cuda):
    store = PinnedTensorStore("cpu")
    store.cuda, store.stream = True, torch.cuda.Stream()
    store.put("a", torch.ones(2))
    store.put("b", torch.ones(2))
    store.prefetch(["b"])
    store.prefetch(["missing", "b", "a"])  # neither an unknown name nor one already on its way stops the rest
    assert set(store._incoming) == {"a", "b"}
    # The copy on its way is of the old value (another shape here, so that the stand-in's host buffer is not the
    # one the old copy points to, as a GPU's device copy never is).
    store.put("a", torch.zeros(3))
    assert torch.equal(store.get("a"), torch.zeros(3))
