"""Sliced decoding: exact against vae.decode (no seams), streams per latent frame, refuses what it cannot do."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightcache.decode import (
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


def test_default_band_count_is_valid(tiny_pipe):
    plan = plan_slices(tiny_pipe.vae, 32, 32)
    assert len(plan["cuts"]) - 1 >= 1
    assert plan["axis"] == "width"


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
    from lightcache.decode import _max_slices, _split_units

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
