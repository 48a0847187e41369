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
    from diffusers import AutoencoderKL, AutoencoderKLWan

    with pytest.raises(LightcacheError, match="Wan VAE"):
        check_sliced_decode_supported(AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4))
    wan22 = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, is_residual=True,
                             temperal_downsample=[False, True], in_channels=12, out_channels=12, patch_size=2,
                             latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    with pytest.raises(LightcacheError, match="Wan2.2"):
        check_sliced_decode_supported(wan22)
    with pytest.raises(LightcacheError, match="Wan2.2"):
        next(iter_sliced_decode(wan22, _latents((1, 4, 1, 8, 8))))


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
