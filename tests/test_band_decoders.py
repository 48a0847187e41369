"""Sliced decoding beyond Wan: the GroupNorm band passes (techniques/norm_bands.py) and the band decoders of
AnimateDiff's image VAE, SVD's temporal decoder and HunyuanVideo's causal VAE, each against the VAE's own decode
(the same objects, so within fp32 rounding), each holding less than it, and each refusing what it cannot do."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightcache.errors import LightcacheError
from lightcache.techniques.decode import apply_sliced_decode, remove_sliced_decode
from lightcache.techniques.norm_bands import BandPasses, halo_of, plan_bands, resnet_passes
from lightcache.telemetry import LiveBytesMeter

TOL = 1e-4  # as DECODE_TOL in test_families.py: fp32 rounding of the convolutions and of the statistics


def _latents(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def animatediff_pipe():
    from lightcache.families.animatediff.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def svd_pipe():
    from lightcache.families.svd.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def hunyuan_vae():
    from lightcache.families.hunyuan_video.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=0).vae


def _band_decoder(family: str):
    from lightcache.families import adapter_named

    return adapter_named(family).band_decoder(None)


def _decode(family, vae, z, slices, axis=None, **kwargs):
    bands = _band_decoder(family)
    bands.check(vae)
    with torch.no_grad():
        return bands.decode(vae, z, bands.plan(vae, z.shape[-2], z.shape[-1], num_slices=slices, axis=axis), **kwargs)


# --- the shared passes -------------------------------------------------------------------------------------------
def test_group_stats_are_the_whole_tensors_and_bands_need_only_their_halo():
    norm = torch.nn.GroupNorm(4, 8, eps=1e-6).eval()
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    conv = torch.nn.Conv2d(8, 8, 5, padding=2, padding_mode="replicate").eval()
    x = _latents(2, 8, 6, 23, seed=1) * 3 + 1
    passes = BandPasses("cpu", num_slices=5, dim=-1)
    stats = passes.group_stats(norm, x)
    values = x.reshape(2, 4, -1).double()
    torch.testing.assert_close(stats.mean, values.mean(-1).float())
    torch.testing.assert_close(stats.rstd, torch.rsqrt(values.var(-1, unbiased=False) + 1e-6).float())
    with torch.no_grad():
        banded = passes.map(lambda b: conv(passes.normalize(norm, stats, b)), x, halo=halo_of(conv, -1))
        plain = conv(norm(x))
    assert halo_of(conv, -1) == 2
    assert (banded - plain).abs().max() < 1e-5
    # One column too few and the bands' edges differ from the whole tensor's.
    with torch.no_grad():
        short = passes.map(lambda b: conv(passes.normalize(norm, stats, b)), x, halo=1)
    assert (short - plain).abs().max() > 1e-3


def test_a_residual_block_in_bands_matches_its_forward_and_writes_over_its_input():
    from diffusers.models.resnet import ResnetBlock2D

    block = ResnetBlock2D(in_channels=32, out_channels=32, temb_channels=None, output_scale_factor=2.0).eval()
    x = _latents(1, 32, 12, 20, seed=2)
    with torch.no_grad():
        plain = block(x, None)
        staged = x.clone()
        out = resnet_passes(BandPasses("cpu", 3, dim=-2), block, staged)
    assert out is staged  # same channels: the output is written over the input, band by band
    assert (out - plain).abs().max() < 1e-5


def test_band_plans_default_to_bands_about_64_pixels_wide_and_refuse_bad_counts():
    assert plan_bands(64, 128, 8)["num_slices"] == 16
    assert plan_bands(8, 4, 4) == {"axis": "height", "dim": -2, "num_slices": 1, "cuts": [0, 8]}
    assert plan_bands(8, 8, 4, num_slices=3)["cuts"] == [0, 3, 5, 8]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(LightcacheError, match="whole number of slices"):
            plan_bands(8, 8, 4, num_slices=bad)
    with pytest.raises(LightcacheError, match="at least that many latent columns wide; this one is 8"):
        plan_bands(8, 8, 4, num_slices=9)
    with pytest.raises(LightcacheError, match="axis"):
        plan_bands(8, 8, 4, axis="depth")


# --- AnimateDiff: the image VAE -------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames, slices, axis", [(3, 2, "width"), (1, 4, "height"), (2, 1, None), (2, 8, "width")])
def test_the_image_vae_in_bands_matches_its_decode(animatediff_pipe, frames, slices, axis):
    vae = animatediff_pipe.vae
    z = _latents(frames, 4, 8, 8, seed=3)
    with torch.no_grad():
        plain = vae.decode(z).sample
    video = _decode("animatediff", vae, z, slices, axis)
    assert video.shape == plain.shape and video.device.type == "cpu"
    assert (video - plain).abs().max() < TOL


# --- SVD: the temporal decoder, exact at the pipeline's own decode chunk size ---------------------------------------
@pytest.mark.parametrize("frames, slices, axis", [(4, 2, "width"), (3, 4, "height"), (2, 1, None)])
def test_the_temporal_decoder_in_bands_matches_its_decode(svd_pipe, frames, slices, axis):
    vae = svd_pipe.vae
    z = _latents(frames, 4, 8, 8, seed=4)
    with torch.no_grad():
        plain = vae.decode(z, num_frames=frames).sample
    video = _decode("svd", vae, z, slices, axis, num_frames=frames)
    assert video.shape == plain.shape
    assert (video - plain).abs().max() < TOL


def test_svd_decodes_exactly_what_the_pipeline_decodes_at_its_chunk_size(svd_pipe):
    """pipe(...) with sliced decoding against the plain pipe(...) on the same pipeline, at a decode_chunk_size that
    splits the frames (the temporal decoder's output depends on it)."""
    from PIL import Image

    from lightcache.families import adapter_named

    image = Image.fromarray(np.linspace(0, 255, 32 * 32 * 3).astype(np.uint8).reshape(32, 32, 3), "RGB")

    def run():
        return svd_pipe(image, height=32, width=32, num_frames=4, num_inference_steps=2, decode_chunk_size=3,
                        generator=torch.Generator().manual_seed(0), output_type="np").frames[0]

    plain = run()
    apply_sliced_decode(svd_pipe.vae, adapter_named("svd"), num_slices=2)
    try:
        sliced = run()
    finally:
        remove_sliced_decode(svd_pipe.vae)
    assert "decode" not in svd_pipe.vae.__dict__
    assert np.abs(sliced - plain).max() < TOL
    # At another chunk size the plain decode itself changes: the chunk size is part of what "exact" means.
    other = svd_pipe(image, height=32, width=32, num_frames=4, num_inference_steps=2, decode_chunk_size=4,
                     generator=torch.Generator().manual_seed(0), output_type="np").frames[0]
    assert np.abs(other - plain).max() > 10 * TOL


def test_svd_needs_the_frame_count_vae_decode_needs(svd_pipe):
    with pytest.raises(LightcacheError, match="num_frames"):
        _decode("svd", svd_pipe.vae, _latents(2, 4, 8, 8), 2)


# --- HunyuanVideo: the causal VAE, its frame-wise time tiles and its frame-causal mid-block attention ------------
@pytest.mark.parametrize("latent_frames, slices, axis", [
    (2, 2, "width"),  # one clip
    (3, 3, "height"),
    (9, 2, None),  # more latent frames than a time tile: overlapping tiles blended in time, as vae.decode does
    (9, 1, "width"),
])
def test_the_causal_vae_in_bands_matches_its_decode(hunyuan_vae, latent_frames, slices, axis):
    z = _latents(1, 4, latent_frames, 8, 12, seed=5)
    with torch.no_grad():
        plain = hunyuan_vae.decode(z).sample
    video = _decode("hunyuan_video", hunyuan_vae, z, slices, axis)
    assert video.shape == plain.shape
    assert (video - plain).abs().max() < TOL


def test_the_frame_wise_decode_is_followed_not_replaced(hunyuan_vae):
    """With diffusers' frame-wise decoding switched off, vae.decode is one clip, and so is the band decode."""
    z = _latents(1, 4, 9, 8, 8, seed=6)
    hunyuan_vae.use_framewise_decoding = False
    try:
        with torch.no_grad():
            whole = hunyuan_vae.decode(z).sample
        video = _decode("hunyuan_video", hunyuan_vae, z, 2)
    finally:
        hunyuan_vae.use_framewise_decoding = True
    with torch.no_grad():
        tiled = hunyuan_vae.decode(z).sample
    assert (video - whole).abs().max() < TOL
    assert (tiled - whole).abs().max() > 10 * TOL


def test_the_mid_block_attention_by_query_frame_is_the_masked_attention(hunyuan_vae, monkeypatch):
    from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import prepare_causal_attention_mask

    from lightcache.families.hunyuan_video import vae_bands

    attn = hunyuan_vae.decoder.mid_block.attentions[0]
    x = _latents(2, 8, 3, 4, 5, seed=7)
    with torch.no_grad():
        hidden = x.permute(0, 2, 3, 4, 1).flatten(1, 3)
        mask = prepare_causal_attention_mask(3, 20, hidden.dtype, hidden.device, batch_size=2)
        plain = attn(hidden, attention_mask=mask).unflatten(1, (3, 4, 5)).permute(0, 4, 1, 2, 3)
        by_frame = vae_bands._frame_causal_attention(attn, x)
        monkeypatch.setattr(vae_bands, "SCORES_AT_ONCE", 64)  # a few query rows at a time
        by_rows = vae_bands._frame_causal_attention(attn, x)
    assert (by_frame - plain).abs().max() < 1e-5
    assert (by_rows - plain).abs().max() < 1e-5


def test_the_mid_block_never_builds_the_tokens_by_tokens_mask(hunyuan_vae):
    from lightcache.families.hunyuan_video.vae_bands import _mid_block

    mid = hunyuan_vae.decoder.mid_block
    x = _latents(1, 8, 4, 16, 16, seed=8)  # 1024 tokens: the plain mask alone is 1024 x 1024
    with torch.no_grad(), LiveBytesMeter() as plain:
        expected = mid(x)
    with torch.no_grad(), LiveBytesMeter() as ours:
        got = _mid_block(mid, x)
    assert (got - expected).abs().max() < 1e-5
    assert plain.peak > 1024 * 1024 * 4
    assert ours.peak < 0.2 * plain.peak


# --- each holds less than the plain decode (live bytes: deterministic, no timing) ---------------------------------
@pytest.mark.parametrize("family, shape, kwargs, ratio", [
    # Four frames of a batch, one at a time, each in four bands.
    ("animatediff", (4, 4, 16, 32), {}, 0.4),
    # A four-frame chunk, whole in time, in four bands.
    ("svd", (4, 4, 16, 32), {"num_frames": 4}, 0.6),
    # A three-latent-frame clip in four bands (the bands hold its statistics; the clip's output is on the host).
    ("hunyuan_video", (1, 4, 3, 16, 32), {}, 0.75),
])
def test_the_band_decode_holds_less_than_the_plain_decode(animatediff_pipe, svd_pipe, hunyuan_vae, family, shape,
                                                            kwargs, ratio):
    vae = {"animatediff": animatediff_pipe.vae, "svd": svd_pipe.vae, "hunyuan_video": hunyuan_vae}[family]
    z = _latents(*shape, seed=9)
    with torch.no_grad(), LiveBytesMeter() as plain:
        vae.decode(z, **kwargs)
    with LiveBytesMeter() as sliced:
        _decode(family, vae, z, 4, **kwargs)
    assert sliced.peak < ratio * plain.peak


# --- refusals ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, name", [("animatediff", "AutoencoderKL"), ("svd", "AutoencoderKLTemporalDecoder"),
                                          ("hunyuan_video", "AutoencoderKLHunyuanVideo")])
def test_another_vae_is_refused_with_the_one_it_supports(hunyuan_vae, animatediff_pipe, family, name):
    other = animatediff_pipe.vae if family != "animatediff" else hunyuan_vae
    with pytest.raises(LightcacheError, match=rf"Sliced decoding supports .*\({name}\), not {type(other).__name__}"):
        _band_decoder(family).check(other)


@pytest.mark.parametrize("family", ["animatediff", "hunyuan_video"])
def test_spatial_tiling_is_refused_not_silently_replaced(animatediff_pipe, hunyuan_vae, family):
    vae = animatediff_pipe.vae if family == "animatediff" else hunyuan_vae
    vae.enable_tiling()
    try:
        with pytest.raises(LightcacheError, match="tiling.*turn sliced decoding off"):
            _band_decoder(family).check(vae)
    finally:
        vae.disable_tiling()
    _band_decoder(family).check(vae)


def test_a_decoder_block_it_does_not_know_is_refused(animatediff_pipe):
    import copy

    vae = copy.deepcopy(animatediff_pipe.vae)
    vae.decoder.up_blocks[0] = torch.nn.Identity()
    with pytest.raises(LightcacheError, match="this one has Identity. Turn sliced decoding off"):
        _band_decoder("animatediff").check(vae)


@pytest.mark.parametrize("family", ["animatediff", "svd", "hunyuan_video"])
def test_an_offloaded_vae_is_refused(animatediff_pipe, svd_pipe, hunyuan_vae, family):
    import copy

    vaes = {"animatediff": animatediff_pipe.vae, "svd": svd_pipe.vae, "hunyuan_video": hunyuan_vae}
    vae = copy.deepcopy(vaes[family])
    vae.enable_group_offload(onload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
    with pytest.raises(LightcacheError, match="without offloading hooks"):
        _band_decoder(family).check(vae)


@pytest.mark.parametrize("family", ["animatediff", "svd", "hunyuan_video"])
def test_the_staging_path_of_a_cuda_device_gives_the_same_video(animatediff_pipe, svd_pipe, hunyuan_vae, fake_cuda,
                                                                  monkeypatch, family):
    """Staged tensors as on CUDA (copied into pinned host buffers of their own, bands fetched from them): the same
    video. On this CPU the buffers are plain memory (``fake_cuda``) and a fetched band stays a view."""
    from lightcache.techniques import norm_bands

    staged = []
    make = norm_bands.BandPasses.staged_empty

    def staged_empty(self, shape, dtype):
        staged.append(make(self, shape, dtype))
        return staged[-1]

    original_init = norm_bands.BandPasses.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.host = True

    monkeypatch.setattr(norm_bands.BandPasses, "__init__", init)
    monkeypatch.setattr(norm_bands.BandPasses, "staged_empty", staged_empty)
    vae = {"animatediff": animatediff_pipe.vae, "svd": svd_pipe.vae, "hunyuan_video": hunyuan_vae}[family]
    z = _latents(1, 4, 5, 8, 8, seed=10) if family == "hunyuan_video" else _latents(3, 4, 8, 8, seed=10)
    kwargs = {"num_frames": 3} if family == "svd" else {}
    with torch.no_grad():
        plain = vae.decode(z, **kwargs).sample
    video = _decode(family, vae, z, 3, **kwargs)
    assert staged, "the host path allocated no staged tensor"
    assert (video - plain).abs().max() < TOL


def test_the_memory_benchmark_decodes_a_real_config_vae_exactly_in_less():
    """``benchmarks/memory.py --smoke --decoders animatediff``'s measurement: Stable Diffusion's VAE at its real
    widths (GroupNorms of 32 groups over 128 to 512 channels), a small frame on the CPU."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.memory import decoder_table, measure_decoder

    result = measure_decoder("animatediff", torch.device("cpu"), slices=4)
    assert result["max_abs_diff"] <= TOL
    plain, sliced = result["configs"]["plain"], result["configs"]["sliced_decode"]
    assert sliced["num_slices"] == 4
    assert sliced["peak_bytes"] < 0.6 * plain["peak_bytes"]
    assert "| animatediff | 2x4x8x8 (cpu) | float32 | 16 |" in decoder_table({"animatediff": result})
