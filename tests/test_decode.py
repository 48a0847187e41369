"""Sliced decoding: exact against vae.decode (no seams), streams per latent frame, refuses what it cannot do."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightcache.families.wan.vae_bands import (
    check_sliced_decode_supported,
    iter_sliced_decode,
    plan_slices,
    sliced_decode,
    sliced_decode_bands,
)
from lightcache.errors import LightcacheError

TOL = 1e-4


def _latents(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _plain(vae, z):
    with torch.no_grad():
        return vae.decode(z).sample


@pytest.mark.parametrize(
    "shape, slices, axis",
    [
        ((1, 4, 3, 8, 40), 4, "width"),  # many bands across the width
        ((1, 4, 3, 8, 40), 2, None),  # the longer side by default
        ((1, 4, 2, 24, 8), 3, "height"),  # horizontal bands
        ((1, 4, 1, 8, 16), 2, "width"),  # a single latent frame
        ((1, 4, 4, 12, 20), 1, "width"),  # one band: the same code path, no cuts
    ],
)
def test_sliced_decode_matches_vae_decode(tiny_pipe, shape, slices, axis):
    vae = tiny_pipe.vae
    z = _latents(shape)
    plain = _plain(vae, z)
    sliced = sliced_decode(vae, z, num_slices=slices, axis=axis)
    assert sliced.shape == plain.shape
    assert (sliced - plain).abs().max().item() <= TOL


def test_no_seams_at_the_band_edges(tiny_pipe):
    """The error right at each cut is as small as anywhere (tiling would blend, and differ, exactly there)."""
    vae = tiny_pipe.vae
    z = _latents((1, 4, 3, 8, 40), seed=5)
    plain = _plain(vae, z)
    plan = plan_slices(vae, 8, 40, num_slices=5, axis="width")
    edges = [rows[-1][1].start for rows in plan["windows"][1:]]  # first decoded column of each later band
    assert len(edges) == 4 and all(0 < e < plain.shape[-1] for e in edges)
    error = (sliced_decode(vae, z, num_slices=5) - plain).abs()
    for e in edges:
        assert error[..., e - 2 : e + 2].max().item() <= TOL


def test_iter_yields_postprocessed_frames_per_latent_frame(tiny_pipe):
    vae = tiny_pipe.vae
    z = _latents((1, 4, 4, 8, 24), seed=1)
    expected = tiny_pipe.video_processor.postprocess_video(_plain(vae, z), output_type="np")[0]
    chunks = list(iter_sliced_decode(vae, z, num_slices=3))
    assert [len(c) for c in chunks] == [1, 2, 2, 2]  # the tiny VAE upsamples time 2x after the first frame
    assert all(c.dtype == np.float32 and c.shape[1:] == (32, 96, 3) for c in chunks)
    frames = np.concatenate(chunks)
    assert frames.min() >= 0.0 and frames.max() <= 1.0
    assert np.abs(frames - expected).max() <= TOL


def test_many_bands_down_to_one_column_stay_exact(tiny_pipe):
    vae = tiny_pipe.vae
    z = _latents((1, 4, 2, 8, 16), seed=2)
    plain = _plain(vae, z)
    plan = plan_slices(vae, 8, 16, num_slices=12, axis="width")
    assert min(b - a for a, b in zip(plan["cuts"], plan["cuts"][1:])) == 1
    assert (sliced_decode(vae, z, num_slices=12, axis="width") - plain).abs().max().item() <= TOL


def test_too_many_slices_names_the_limit(tiny_pipe):
    with pytest.raises(LightcacheError, match=r"use between 1 and \d+ slices"):
        plan_slices(tiny_pipe.vae, 8, 16, num_slices=500)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_bad_slice_counts_get_a_clear_error(tiny_pipe, bad):
    with pytest.raises(LightcacheError, match="whole number of slices"):
        plan_slices(tiny_pipe.vae, 8, 16, num_slices=bad)


def test_bad_axis_and_batch(tiny_pipe):
    with pytest.raises(LightcacheError, match="axis"):
        plan_slices(tiny_pipe.vae, 8, 16, axis="depth")
    with pytest.raises(LightcacheError, match="one video's latents"):
        next(iter_sliced_decode(tiny_pipe.vae, _latents((2, 4, 1, 8, 8))))


def test_unsupported_vaes_are_refused(tiny_pipe):
    from diffusers import AutoencoderKL

    with pytest.raises(LightcacheError, match="Wan VAE"):
        check_sliced_decode_supported(AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4))
    with pytest.raises(LightcacheError, match="Wan VAE"):
        next(iter_sliced_decode(AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4),
                                _latents((1, 4, 1, 8, 8))))


def test_a_decoder_with_unknown_up_blocks_is_refused(tiny_pipe):
    class OtherUpBlock(torch.nn.Module):
        pass

    vae = tiny_pipe.vae
    vae.decoder.up_blocks[1] = OtherUpBlock()
    with pytest.raises(LightcacheError, match=r"does not know this VAE decoder's up blocks \(.*OtherUpBlock"):
        check_sliced_decode_supported(vae)


def test_an_offloaded_vae_is_refused(tiny_pipe):
    vae = tiny_pipe.vae
    vae.enable_group_offload(onload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
    with pytest.raises(LightcacheError, match="offloading hooks"):
        check_sliced_decode_supported(vae)


def test_sliced_decode_holds_less_than_the_plain_decode(tiny_pipe):
    """Live bytes of the decode itself (deterministic, no timing): bands must peak well below the whole frame."""
    from lightcache.telemetry import LiveBytesMeter

    vae = tiny_pipe.vae
    z = _latents((1, 4, 3, 16, 48), seed=3)
    with LiveBytesMeter() as plain:
        _plain(vae, z)
    with LiveBytesMeter() as sliced:
        sliced_decode(vae, z, num_slices=6)
    # The sliced figure includes the decoded video on the host; without it the gap is larger still.
    assert sliced.peak < 0.6 * plain.peak


# --- the Wan2.2 VAE (TI2V-5B): residual up blocks with DupUp3D shortcuts, 12 channels unpatchified 2x -----------
@pytest.fixture(scope="module")
def wan22_vae():
    from lightcache.tiny import build_tiny_wan22_vae

    return build_tiny_wan22_vae(seed=0)


@pytest.mark.parametrize(
    "shape, slices, axis",
    [
        ((1, 48, 3, 4, 10), 3, "width"),  # vertical bands
        ((1, 48, 2, 9, 5), 3, "height"),  # horizontal bands, odd latent height
        ((1, 48, 3, 5, 11), 4, None),  # odd sizes, the longer side by default
        ((1, 48, 1, 4, 8), 2, "width"),  # a single latent frame (the shortcut's first-chunk path only)
        ((1, 48, 4, 4, 9), 2, "width"),  # several latent frames: causal caches and shortcuts per band and frame
        ((1, 48, 2, 4, 4), 1, None),  # one band
    ],
)
def test_wan22_sliced_decode_matches_vae_decode(wan22_vae, shape, slices, axis):
    z = _latents(shape, seed=sum(shape) + slices)
    plain = _plain(wan22_vae, z)
    sliced = sliced_decode(wan22_vae, z, num_slices=slices, axis=axis)
    assert sliced.shape == plain.shape == (1, 3, 1 + 4 * (shape[2] - 1), 16 * shape[3], 16 * shape[4])
    assert (plain.abs() < 0.99).float().mean() > 0.5, "a decode saturated by the clamp would test little"
    assert (sliced - plain).abs().max().item() <= TOL


def test_wan22_many_bands_stay_exact(wan22_vae):
    from lightcache.families.wan.vae_bands import _split_units
    from lightcache.techniques.decode import max_slices as _max_slices

    z = _latents((1, 48, 2, 4, 12), seed=4)
    most = _max_slices(_split_units(wan22_vae)[1], 24)
    plan = plan_slices(wan22_vae, 4, 12, num_slices=most, axis="width")
    assert most >= 8 and min(b - a for a, b in zip(plan["cuts"], plan["cuts"][1:])) == 1
    assert (sliced_decode(wan22_vae, z, num_slices=most, axis="width") - _plain(wan22_vae, z)).abs().max() <= TOL
    with pytest.raises(LightcacheError, match=rf"use between 1 and {most} slices"):
        plan_slices(wan22_vae, 4, 12, num_slices=most + 1, axis="width")


def test_wan22_no_seams_and_spans_in_pixels(wan22_vae):
    """``spans`` are in decoded pixels (2x the decoder's columns: the output is unpatchified); the error at each
    band edge is as small as anywhere, and the edges fall on odd pixels too (no alignment to the patch assumed)."""
    z = _latents((1, 48, 2, 4, 10), seed=6)
    plain = _plain(wan22_vae, z)
    plan = plan_slices(wan22_vae, 4, 10, num_slices=4, axis="width")
    spans = plan["spans"]
    assert plan["patch"] == 2 and spans[0][0] == 0 and spans[-1][1] == plain.shape[-1]
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert spans == [(rows[-1][1].start * 2, rows[-1][1].stop * 2) for rows in plan["windows"]]
    bands, _ = sliced_decode_bands(wan22_vae, z, plan=plan, postprocess=False)
    assert [b.shape[3] for b in bands] == [b - a for a, b in spans]
    error = (sliced_decode(wan22_vae, z, num_slices=4, axis="width") - plain).abs()
    for edge, _ in spans[1:]:
        assert error[..., edge - 2 : edge + 2].max().item() <= TOL


def test_wan22_iter_yields_postprocessed_frames(wan22_vae):
    from diffusers.video_processor import VideoProcessor

    z = _latents((1, 48, 3, 4, 10), seed=7)
    expected = VideoProcessor(vae_scale_factor=16).postprocess_video(_plain(wan22_vae, z), output_type="np")[0]
    chunks = list(iter_sliced_decode(wan22_vae, z, num_slices=3))
    assert [len(c) for c in chunks] == [1, 4, 4]
    assert all(c.dtype == np.float32 and c.shape[1:] == (64, 160, 3) for c in chunks)
    assert np.abs(np.concatenate(chunks) - expected).max() <= TOL


def test_wan22_clip_output_in_the_config_is_what_vae_decode_does(wan22_vae):
    """The Wan2.2-TI2V-5B Hub config carries ``clip_output: false``. diffusers 0.42 ignores it and clamps anyway, so
    sliced decoding must clamp too (it follows the key only where ``AutoencoderKLWan`` takes it)."""
    from diffusers import AutoencoderKLWan

    config = dict(wan22_vae.config)
    config["clip_output"] = False
    vae = AutoencoderKLWan.from_config(config).eval()
    vae.load_state_dict(wan22_vae.state_dict())
    z = 8 * _latents((1, 48, 2, 4, 9), seed=8)  # large latents: some output beyond [-1, 1] before the clamp
    plain = _plain(vae, z)
    sliced = sliced_decode(vae, z, num_slices=2)
    assert (plain.abs() == 1).any()
    assert sliced.abs().max() <= 1 and (sliced - plain).abs().max().item() <= TOL


def test_wan22_other_layouts_are_exact_too():
    """A smaller residual layout (one resnet fewer per block, three stages) and a base width the encoder shares."""
    from diffusers import AutoencoderKLWan

    with torch.random.fork_rng():  # the weights' draws seeded here, the process's random state left as it was
        torch.manual_seed(1)
        vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, is_residual=True,
                               temperal_downsample=[False, True], in_channels=12, out_channels=12, patch_size=2,
                               latents_mean=[0.0] * 4, latents_std=[1.0] * 4).eval()
    check_sliced_decode_supported(vae)
    for shape, slices, axis in [((1, 4, 3, 8, 12), 4, "width"), ((1, 4, 2, 11, 7), 3, "height")]:
        z = _latents(shape, seed=9)
        assert (sliced_decode(vae, z, num_slices=slices, axis=axis) - _plain(vae, z)).abs().max().item() <= TOL


def test_wan22_sliced_decode_holds_less_than_the_plain_decode(wan22_vae):
    from lightcache.telemetry import LiveBytesMeter

    z = _latents((1, 48, 3, 4, 16), seed=3)
    with LiveBytesMeter() as plain:
        _plain(wan22_vae, z)
    with LiveBytesMeter() as sliced:
        sliced_decode(wan22_vae, z, num_slices=6)
    assert sliced.peak < 0.6 * plain.peak


# --- the default band count and the store between bands --------------------------------------------------------
@pytest.mark.parametrize("latent_width, bands", [(8, 1), (32, 2), (64, 4), (200, 12)])
def test_the_default_is_one_band_per_64_decoded_pixels(tiny_pipe, latent_width, bands):
    """The app never sets a band count, so the default is what it runs: about one band per 64 decoded pixels along
    the longer side (the tiny VAE decodes 4 pixels per latent column)."""
    plan = plan_slices(tiny_pipe.vae, 8, latent_width)
    assert plan["axis"] == "width" and len(plan["cuts"]) - 1 == bands
    tall = plan_slices(tiny_pipe.vae, latent_width, 8)
    assert tall["axis"] == ("height" if latent_width > 8 else "width") and len(tall["cuts"]) - 1 == bands


def test_the_default_band_count_stops_at_16(wan22_vae):
    # The Wan2.2 VAE decodes 16 pixels per latent column: 32 columns are 512 pixels (8 bands), 200 would be 50.
    assert len(plan_slices(wan22_vae, 4, 32)["cuts"]) - 1 == 8
    assert len(plan_slices(wan22_vae, 4, 200)["cuts"]) - 1 == 16


class _CheckingStore:
    """A real host store, wrapped so that a test can check how the decode uses it (subclasses override its calls)."""

    def __init__(self, vae):
        from lightcache.techniques.decode import HostStore

        self.store = HostStore(next(vae.parameters()).device)

    def __getattr__(self, name):
        return getattr(self.store, name)


def _decode_through(store_type, vae_name, tiny_pipe, wan22_vae, seed):
    """Decode in 3 bands through a ``store_type`` wrapper, check the video is exact, and return (store, shape)."""
    from lightcache.families.wan.vae_bands import decode_into

    vae, shape = (tiny_pipe.vae, (1, 4, 2, 8, 24)) if vae_name == "wan21" else (wan22_vae, (1, 48, 2, 4, 10))
    z = _latents(shape, seed=seed)
    store = store_type(vae)
    bands, _ = decode_into(vae, z, plan_slices(vae, shape[-2], shape[-1], num_slices=3), store, postprocess=False)
    video = torch.cat(bands, dim=3).permute(0, 4, 1, 2, 3)
    assert (video - _plain(vae, z)).abs().max().item() <= TOL
    return store, shape


class _OwnershipCheckingStore(_CheckingStore):
    """A host store that checks, for every tensor put aside during a decode, that what it keeps is a copy holding
    exactly that tensor's bytes: a view would keep the whole activation it was cut from alive (a band's input, a
    whole frame's mid-block output) and share memory that later kernels overwrite on a GPU."""

    def __init__(self, vae):
        super().__init__(vae)
        self.puts = 0

    def put(self, key, tensor):
        self.store.put(key, tensor)
        kept = self.store.items[key]
        assert torch.equal(kept, tensor)
        assert kept.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr(), key
        assert kept.untyped_storage().nbytes() == kept.numel() * kept.element_size(), key
        self.puts += 1


@pytest.mark.parametrize("vae_name", ["wan21", "wan22"])
def test_what_waits_between_bands_is_copied_not_viewed(tiny_pipe, wan22_vae, vae_name):
    store, shape = _decode_through(_OwnershipCheckingStore, vae_name, tiny_pipe, wan22_vae, seed=11)
    assert store.puts > 3 * shape[2]  # mid outputs and carries, per band and latent frame


class _ReadCountingStore(_CheckingStore):
    """A host store that counts, per key, the tensors put aside and the reads of each."""

    def __init__(self, vae):
        super().__init__(vae)
        self.log: list[tuple[str, tuple]] = []

    def put(self, key, tensor):
        self.log.append(("put", key))
        self.store.put(key, tensor)

    def get(self, key):
        self.log.append(("get", key))
        return self.store.get(key)

    def unread_puts(self) -> int:
        """Tensors put aside and replaced, or left at the end, without a read in between."""
        waiting: dict = {}
        unread = 0
        for op, key in self.log:
            if op == "put":
                unread += waiting.get(key, False)
                waiting[key] = True
            else:
                waiting[key] = False
        return unread + sum(waiting.values())


@pytest.mark.parametrize("vae_name", ["wan21", "wan22"])
def test_every_tensor_set_aside_between_bands_is_read_once(tiny_pipe, wan22_vae, vae_name):
    """The last band hands nothing on: a carry (or, in Wan2.2's residual blocks, a shortcut's columns) copied to
    the host there would never be read, costing a device-to-host copy and host memory for the same video."""
    store, shape = _decode_through(_ReadCountingStore, vae_name, tiny_pipe, wan22_vae, seed=13)
    puts = sum(op == "put" for op, _ in store.log)
    assert store.unread_puts() == 0
    assert puts == sum(op == "get" for op, _ in store.log) > 3 * shape[2]


def _cuda_path_store(vae=None):
    """The store between bands on its CUDA path, with the CPU standing in for the device (streams: ``fake_cuda``)."""
    from lightcache.techniques.decode import HostStore

    store = HostStore(torch.device("cpu"))
    store.cuda, store.stream = True, torch.cuda.Stream()
    return store


def test_the_host_store_orders_its_copies_on_the_streams(fake_cuda):
    """A copy to the host starts only once the compute stream has produced the tensor, and the compute stream waits
    for a copy back before using it (without either wait a GPU reads or overwrites memory mid-copy)."""
    store = _cuda_path_store()
    x = torch.randn(2, 8)
    store.put("a", x.narrow(1, 0, 4))
    assert fake_cuda.log == [("record", "compute", "compute#0"), ("wait", "side0", "compute#0"),
                             ("record_stream", "side0")]
    host = store.items["a"]
    fake_cuda.log.clear()
    store.prefetch(["a", "missing"])
    store.prefetch(["a"])  # already on its way: not copied twice
    back = store.get("a")
    assert fake_cuda.log == [("record", "side0", "side0#0"), ("wait", "compute", "side0#0"),
                             ("record_stream", "compute")]
    assert torch.equal(back, x[:, :4])
    store.put("a", torch.ones(2, 4))  # the same key and shape again: the host buffer is reused
    assert store.items["a"] is host and torch.equal(host, torch.ones(2, 4))
    store.put("a", torch.ones(3, 4))
    assert store.items["a"] is not host


def test_a_host_store_for_a_cuda_device_takes_its_cuda_path_on_that_device(fake_cuda):
    """Only built, never copied through (the CPU cannot stand in for a CUDA tensor): its mode and stream's device."""
    from lightcache.techniques.decode import HostStore as _HostStore

    store = _HostStore(torch.device("cuda"))
    assert store.device == torch.device("cuda") and store.cuda is True
    assert store.stream is fake_cuda.sides[0] and fake_cuda.side_devices == [torch.device("cuda")]
    on_cpu = _HostStore(torch.device("cpu"))
    assert on_cpu.cuda is False and on_cpu.stream is None and len(fake_cuda.sides) == 1


def test_the_host_store_keeps_each_tensors_dtype(fake_cuda):
    # bf16 is what the big models' VAEs decode in; a host buffer of the default dtype would widen it on the way.
    store = _cuda_path_store()
    x = _latents((2, 4), seed=14).to(torch.bfloat16)
    store.put("a", x)
    assert store.items["a"].dtype == torch.bfloat16
    back = store.get("a")
    assert back.dtype == torch.bfloat16 and torch.equal(back, x)


def test_the_decode_on_the_streams_waits_for_every_tensor_it_fetches(tiny_pipe, fake_cuda):
    from lightcache.families.wan.vae_bands import decode_into

    vae = tiny_pipe.vae
    z = _latents((1, 4, 2, 8, 24), seed=12)
    bands, _ = decode_into(vae, z, plan_slices(vae, 8, 24, num_slices=3), _cuda_path_store(), postprocess=False)
    fetched = [event for kind, stream, *event in fake_cuda.log if kind == "record" and stream == "side0"]
    waited = [event for kind, stream, *event in fake_cuda.log if kind == "wait" and stream == "compute"]
    assert fetched and sorted(waited) == sorted(fetched)
    assert ("synchronize", "device") in fake_cuda.log
    video = torch.cat(bands, dim=3).permute(0, 4, 1, 2, 3)
    assert (video - _plain(vae, z)).abs().max().item() <= TOL


class _PrefetchCheckingStore(_CheckingStore):
    """A host store that checks the decode's fetch-ahead protocol: each frame of a band first announces (prefetch)
    exactly the tensors it then reads, and nothing that was never put aside. On a GPU a tensor read without being
    announced is copied back synchronously, stalling the compute stream."""

    def __init__(self, vae):
        super().__init__(vae)
        self.announced: set = set()
        self.reads = 0

    def prefetch(self, keys):
        keys = set(keys)
        assert keys <= set(self.store.items), sorted(keys - set(self.store.items))
        assert not self.announced, f"announced but never read: {sorted(self.announced)}"
        self.announced = keys

    def get(self, key):
        assert key in self.announced, key
        self.announced.discard(key)
        self.reads += 1
        return self.store.get(key)


@pytest.mark.parametrize("vae_name", ["wan21", "wan22"])
def test_each_frame_of_a_band_fetches_ahead_exactly_what_it_reads(tiny_pipe, wan22_vae, vae_name):
    store, shape = _decode_through(_PrefetchCheckingStore, vae_name, tiny_pipe, wan22_vae, seed=13)
    assert store.reads > 3 * shape[2] and not store.announced


def test_latents_in_another_dtype_decode_in_the_vaes(tiny_pipe):
    """The pipeline may hand over float64 (or bfloat16) latents: they are cast to the VAE's dtype first, as
    ``vae.decode`` expects."""
    from lightcache.families.wan.vae_bands import decode_into
    from lightcache.techniques.decode import HostStore

    vae = tiny_pipe.vae
    z = _latents((1, 4, 2, 8, 16), seed=14)
    plan = plan_slices(vae, 8, 16, num_slices=2)
    bands32, _ = decode_into(vae, z, plan, HostStore(torch.device("cpu")))
    bands64, _ = decode_into(vae, z.double(), plan, HostStore(torch.device("cpu")))
    assert all(b.dtype == torch.float32 for b in bands64)
    assert all(torch.equal(a, b) for a, b in zip(bands32, bands64))


def test_the_decode_postprocesses_to_0_1_unless_told_not_to(tiny_pipe):
    from lightcache.families.wan.vae_bands import decode_into
    from lightcache.techniques.decode import HostStore

    vae = tiny_pipe.vae
    z = _latents((1, 4, 2, 8, 16), seed=15)
    plan = plan_slices(vae, 8, 16, num_slices=2)
    default, _ = decode_into(vae, z, plan, HostStore(torch.device("cpu")))
    raw, _ = decode_into(vae, z, plan, HostStore(torch.device("cpu")), postprocess=False)
    for shown, values in zip(default, raw):
        assert torch.allclose(shown, (values * 0.5 + 0.5).clamp(0, 1))
    assert min(b.min().item() for b in raw) < 0  # the raw decode spans [-1, 1]; the default is the 0-1 video


@pytest.mark.parametrize("fits, expected", [(3, 3), (1, 1)])
def test_the_default_band_count_comes_down_until_the_bands_fit(tiny_pipe, monkeypatch, fits, expected):
    """One band per 64 decoded pixels fits every Wan VAE layout tried, so the fall-back is driven here by a VAE
    that takes at most ``fits`` bands: the count comes down one at a time to the most that fit."""
    from lightcache.families.wan import vae_bands

    real = vae_bands.simulate_bands
    monkeypatch.setattr(vae_bands, "simulate_bands", lambda units, cuts, length: (
        None if len(cuts) - 1 > fits else real(units, cuts, length)))
    plan = plan_slices(tiny_pipe.vae, 8, 128)  # 1024 decoded pixels: 16 bands by default
    assert len(plan["cuts"]) - 1 == expected


def test_a_plan_says_how_far_the_band_chain_lags(tiny_pipe):
    plan = plan_slices(tiny_pipe.vae, 8, 24, num_slices=3)
    assert isinstance(plan["lag"], int) and plan["lag"] > 0


def test_too_many_slices_names_the_latent_size_and_the_limit(tiny_pipe):
    with pytest.raises(LightcacheError) as refused:
        plan_slices(tiny_pipe.vae, 8, 16, num_slices=500)
    assert str(refused.value).startswith(
        "Sliced decoding with 500 slices leaves a slice too narrow for this VAE at a latent width of 16; use between 1 "
        "and ")


def test_the_bands_hold_the_batch_in_the_vaes_dtype_and_the_whole_frames_are_let_go(tiny_pipe):
    import copy

    from lightcache.families.wan.vae_bands import decode_into
    from lightcache.techniques.decode import HostStore

    vae = copy.deepcopy(tiny_pipe.vae).double()
    z = _latents((1, 4, 3, 8, 16), seed=16)
    store = HostStore(torch.device("cpu"))
    bands, per_latent = decode_into(vae, z, plan_slices(vae, 8, 16, num_slices=2), store)
    assert len(per_latent) == 3 and per_latent[0] == 1 and per_latent[1] == per_latent[2] > 1
    assert [b.shape[:2] for b in bands] == [(1, sum(per_latent))] * 2 and all(b.dtype == torch.float64 for b in bands)
    assert not [key for key in store.items if key[0] == "mid"]  # each band's mid-block outputs dropped after it
    _, one_band = decode_into(vae, z, plan_slices(vae, 8, 16, num_slices=1), HostStore(torch.device("cpu")))
    assert one_band == per_latent


def test_the_host_store_fetches_past_what_it_cannot_fetch(fake_cuda):
    store = _cuda_path_store()
    store.put("a", torch.ones(2))
    store.put("b", torch.ones(2))
    store.prefetch(["b"])
    store.prefetch(["missing", "b", "a"])  # neither an unknown key nor one already on its way stops the rest
    assert set(store.ready) == {"a", "b"}
    store.put("c", torch.full((2,), 3.0))
    assert torch.equal(store.get("c"), torch.full((2,), 3.0))  # not announced: fetched when asked
