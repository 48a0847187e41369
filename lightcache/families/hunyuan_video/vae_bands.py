"""HunyuanVideo's band decoder: sliced decoding (:mod:`lightcache.techniques.decode`) of its causal 3D VAE
(``AutoencoderKLHunyuanVideo``), exactly.

The decoder is a stack of causal 3D convolutions (3x3x3, padded by repeating the first frame in time and the edge
pixels in space) behind GroupNorms whose statistics cover the whole clip, with a mid block whose attention is
frame-causal (every position attends to every position of its own and earlier latent frames). None of it can be cut
in time without changing the statistics, and a spatial band cannot know them either; this decoder keeps the clip
whole in time and decodes it in spatial bands:

* the up path and the output head run pass by pass over the bands, each GroupNorm's statistics accumulated over the
  whole clip first (:mod:`lightcache.techniques.norm_bands`), each band with the one column its convolutions reach
  on either side; the replicate padding at the frame's true edges is the convolutions' own;
* the input convolution and the mid block run whole at latent resolution, but the mid block's attention runs by
  query frame against the keys of that frame and the earlier ones, which is exactly what its causal mask allows:
  diffusers builds that mask as one (tokens x tokens) tensor, about 450 GB in float16 for 129 frames at 720x1280,
  where here each query frame's scores are all that exist (and on a GPU SDPA's fused kernels hold no score matrix).

Example:
    >>> import torch
    >>> from lightcache.families.hunyuan_video.tiny import build_tiny_pipeline
    >>> vae = build_tiny_pipeline(seed=0).vae
    >>> z = torch.randn(1, 4, 3, 8, 8)
    >>> bands = CausalVAEBandDecoder()
    >>> video = bands.decode(vae, z, bands.plan(vae, 8, 8, num_slices=2))
    >>> bool((video - vae.decode(z).sample).abs().max() < 1e-4)
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import LightcacheError
from ...techniques.decode import BandDecoder
from ...techniques.norm_bands import BandPasses, check_no_offloading, halo_of, plan_bands, resnet_passes

#: Query rows x key columns of attention scores the mid block's attention computes at once (a query frame is split
#: further when its scores would exceed it): 2**26 float32 scores are 256 MiB.
SCORES_AT_ONCE = 2**26


class CausalVAEBandDecoder(BandDecoder):
    """Sliced decoding's view of ``AutoencoderKLHunyuanVideo``."""

    def check(self, vae) -> None:
        from diffusers import AutoencoderKLHunyuanVideo
        from diffusers.models.attention_processor import AttnProcessor2_0
        from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import (
            HunyuanVideoResnetBlockCausal3D,
            HunyuanVideoUpBlock3D,
        )

        if not isinstance(vae, AutoencoderKLHunyuanVideo):
            raise LightcacheError(f"Sliced decoding supports HunyuanVideo's VAE (AutoencoderKLHunyuanVideo), not "
                                  f"{type(vae).__name__}.")
        decoder = vae.decoder
        kinds = {type(b).__name__ for b in decoder.up_blocks if type(b) is not HunyuanVideoUpBlock3D}
        kinds |= {type(r).__name__ for b in decoder.up_blocks for r in getattr(b, "resnets", ())
                  if type(r) is not HunyuanVideoResnetBlockCausal3D}
        kinds |= {type(a.processor).__name__ for a in decoder.mid_block.attentions
                  if a is not None and type(a.processor) is not AttnProcessor2_0}
        if kinds:
            raise LightcacheError(f"Sliced decoding supports HunyuanVideo's decoder as diffusers builds it (causal "
                                  f"up blocks, the default attention processor); this one has "
                                  f"{', '.join(sorted(kinds))}. Turn sliced decoding off.")
        if vae.use_tiling:
            raise LightcacheError("Sliced decoding replaces the VAE's spatial tiling (which blends tiles, so its "
                                  "output differs); disable vae tiling or turn sliced decoding off.")
        check_no_offloading(vae)

    def plan(self, vae, latent_height: int, latent_width: int, num_slices: int | None = None,
             axis: str | None = None) -> dict:
        return plan_bands(latent_height, latent_width, vae.spatial_compression_ratio, num_slices=num_slices,
                          axis=axis)

    def decode(self, vae, latents: torch.Tensor, plan: dict, **_) -> torch.Tensor:
        """``vae.decode(latents).sample`` for (B, C, T, h, w) latents: (B, 3, frames, H, W), on the host."""
        decoder = vae.decoder
        device = next(vae.parameters()).device
        passes = BandPasses(device, plan["num_slices"], plan["dim"])
        axis = 2 if plan["dim"] == -1 else 1  # the band axis in an upsampler's (time, height, width) factors

        def clip(z: torch.Tensor) -> torch.Tensor:
            """``post_quant_conv`` and the decoder on one latent clip, in bands."""
            z = vae.post_quant_conv(z.to(device=device, dtype=vae.dtype))
            x = passes.stage(_mid_block(decoder.mid_block, decoder.conv_in(z)))
            del z
            for block in decoder.up_blocks:
                for resnet in block.resnets:
                    x = resnet_passes(passes, resnet, x)
                for upsampler in block.upsamplers or ():
                    x = passes.map(upsampler, x, halo=halo_of(upsampler, passes.dim),
                                   scale=int(upsampler.upsample_factor[axis]))
            stats = passes.group_stats(decoder.conv_norm_out, x)
            head = lambda b: decoder.conv_out(decoder.conv_act(  # noqa: E731
                passes.normalize(decoder.conv_norm_out, stats, b)))
            return passes.map(head, x, halo=halo_of(decoder.conv_out, passes.dim))

        with torch.no_grad():
            # One clip at a time, as vae.decode with slicing does: the statistics are per clip either way.
            return torch.cat([_in_time_tiles(vae, clip, z) for z in latents.split(1)])


def _in_time_tiles(vae, clip, z: torch.Tensor) -> torch.Tensor:
    """What ``vae.decode`` makes of latent clip ``z`` given ``clip``, its decoder: one clip, or, with the VAE's
    frame-wise decoding on (diffusers' default) and more latent frames than a tile, overlapping tiles of latent
    frames decoded as clips of their own and blended in time by the VAE's own ``blend_t``. The output depends on
    those tiles, so this is the decode that is exact against ``vae.decode``."""
    ratio = vae.temporal_compression_ratio
    tile, stride = vae.tile_sample_min_num_frames // ratio, vae.tile_sample_stride_num_frames // ratio
    frames = z.shape[2]
    if not vae.use_framewise_decoding or frames <= tile:
        return clip(z)
    overlap = vae.tile_sample_min_num_frames - vae.tile_sample_stride_num_frames
    kept, previous = [], None
    for start in range(0, frames, stride):
        decoded = clip(z[:, :, start : start + tile + 1])
        if previous is None:
            kept.append(decoded[:, :, : vae.tile_sample_stride_num_frames + 1])
        else:
            # The first frame of a later tile repeats the last of the one before; the next frames fade in.
            decoded = vae.blend_t(previous, decoded[:, :, 1:], overlap)
            kept.append(decoded[:, :, : vae.tile_sample_stride_num_frames])
        previous = decoded
    return torch.cat(kept, dim=2)[:, :, : (frames - 1) * ratio + 1]


def _mid_block(mid, x: torch.Tensor) -> torch.Tensor:
    """``HunyuanVideoMidBlock3D.forward`` with its attention run by query frame (:func:`_frame_causal_attention`)."""
    x = mid.resnets[0](x)
    for attn, resnet in zip(mid.attentions, mid.resnets[1:]):
        if attn is not None:
            x = _frame_causal_attention(attn, x)
        x = resnet(x)
    return x


def _frame_causal_attention(attn, x: torch.Tensor) -> torch.Tensor:
    """The mid block's attention (diffusers' ``AttnProcessor2_0`` under the causal mask of
    ``prepare_causal_attention_mask``) on (B, C, T, H, W) ``x``: the queries of latent frame ``t`` attend to the keys
    of frames 0..t, which is what the mask's zeros allow and its minus infinities forbid."""
    batch, channels, frames, height, width = x.shape
    per_frame = height * width
    hidden = x.permute(0, 2, 3, 4, 1).flatten(1, 3)  # (B, T*H*W, C), as the mid block lays it out
    residual = hidden
    if attn.group_norm is not None:
        hidden = attn.group_norm(hidden.transpose(1, 2)).transpose(1, 2)
    query, key, value = attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)
    del hidden
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
    out = torch.empty_like(residual)
    for t in range(frames):
        keys = (t + 1) * per_frame
        rows = max(1, min(per_frame, SCORES_AT_ONCE // (keys * attn.heads * batch)))
        for start in range(t * per_frame, keys, rows):
            stop = min(start + rows, keys)
            y = F.scaled_dot_product_attention(query[:, :, start:stop], key[:, :, :keys], value[:, :, :keys])
            y = y.transpose(1, 2).reshape(batch, stop - start, attn.heads * head_dim).to(query.dtype)
            y = attn.to_out[1](attn.to_out[0](y))
            if attn.residual_connection:
                y = y + residual[:, start:stop]
            out[:, start:stop] = y / attn.rescale_output_factor
    return out.unflatten(1, (frames, height, width)).permute(0, 4, 1, 2, 3)
