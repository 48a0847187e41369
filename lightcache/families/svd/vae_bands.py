"""SVD's band decoder: sliced decoding (:mod:`lightcache.techniques.decode`) of the temporal decoder
(``AutoencoderKLTemporalDecoder``), exactly.

The pipeline decodes ``decode_chunk_size`` frames per ``vae.decode`` call, and the temporal decoder mixes the frames
of a call (temporal residual blocks, a temporal output convolution): its output depends on the chunk size, and
"exact" here means identical, within fp32 rounding, to the pipeline's own decode at the same chunk size. This
decoder therefore keeps every call whole in time and slices it in space: each spatio-temporal residual block is a
spatial residual block (GroupNorm statistics per frame), a temporal one (GroupNorm statistics over the chunk, its
convolutions 3x1x1: nothing spatial to reach) and a pointwise blend, and the up path runs in bands with those
statistics taken whole (:mod:`lightcache.techniques.norm_bands`). The input convolution and the mid block (whose
attention sees the whole frame) run whole, at latent resolution; the final temporal convolution, pointwise in space,
runs per band too.

Example:
    >>> import torch
    >>> from lightcache.families.svd.tiny import build_tiny_pipeline
    >>> vae = build_tiny_pipeline(seed=0).vae
    >>> z = torch.randn(3, 4, 8, 8)
    >>> bands = TemporalVAEBandDecoder()
    >>> video = bands.decode(vae, z, bands.plan(vae, 8, 8, num_slices=2), num_frames=3)
    >>> bool((video - vae.decode(z, num_frames=3).sample).abs().max() < 1e-4)
    True
"""

from __future__ import annotations

import torch

from ...errors import LightcacheError
from ...techniques.decode import BandDecoder
from ...techniques.norm_bands import BandPasses, check_no_offloading, halo_of, plan_bands, resnet_passes


class TemporalVAEBandDecoder(BandDecoder):
    """Sliced decoding's view of SVD's ``AutoencoderKLTemporalDecoder``."""

    def check(self, vae) -> None:
        from diffusers import AutoencoderKLTemporalDecoder
        from diffusers.models.resnet import SpatioTemporalResBlock
        from diffusers.models.unets.unet_3d_blocks import UpBlockTemporalDecoder

        if not isinstance(vae, AutoencoderKLTemporalDecoder):
            raise LightcacheError(f"Sliced decoding supports SVD's temporal VAE (AutoencoderKLTemporalDecoder), not "
                                  f"{type(vae).__name__}.")
        blocks = vae.decoder.up_blocks
        kinds = {type(b).__name__ for b in blocks if type(b) is not UpBlockTemporalDecoder}
        kinds |= {type(r).__name__ for b in blocks for r in getattr(b, "resnets", ())
                  if type(r) is not SpatioTemporalResBlock}
        if kinds:
            raise LightcacheError(f"Sliced decoding supports the temporal decoder's UpBlockTemporalDecoder blocks; "
                                  f"this one has {', '.join(sorted(kinds))}. Turn sliced decoding off.")
        temporal = [vae.decoder.time_conv_out] + [r.temporal_res_block for b in blocks for r in b.resnets]
        if any(halo_of(m, -1) or halo_of(m, -2) for m in temporal):
            raise LightcacheError("Sliced decoding expects the temporal decoder's temporal convolutions to be "
                                  "pointwise in space (kernel 3x1x1); this one's are not. Turn sliced decoding off.")
        check_no_offloading(vae)

    def plan(self, vae, latent_height: int, latent_width: int, num_slices: int | None = None,
             axis: str | None = None) -> dict:
        upscale = 2 ** sum(block.upsamplers is not None for block in vae.decoder.up_blocks)
        return plan_bands(latent_height, latent_width, upscale, num_slices=num_slices, axis=axis)

    def decode(self, vae, latents: torch.Tensor, plan: dict, num_frames: int | None = None, **_) -> torch.Tensor:
        """``vae.decode(latents, num_frames).sample``: (batch * num_frames, 3, H, W), on the host."""
        if num_frames is None:
            raise LightcacheError("SVD's VAE decodes a chunk of frames: vae.decode needs num_frames.")
        decoder = vae.decoder
        device = next(vae.parameters()).device
        passes = BandPasses(device, plan["num_slices"], plan["dim"])
        batch = latents.shape[0] // num_frames
        with torch.no_grad():
            z = latents.to(device=device, dtype=vae.dtype)
            indicator = torch.zeros(batch, num_frames, dtype=z.dtype, device=device)
            x = decoder.conv_in(z)
            del z
            upscale_dtype = next(decoder.up_blocks.parameters()).dtype
            x = passes.stage(decoder.mid_block(x, image_only_indicator=indicator).to(upscale_dtype))
            for block in decoder.up_blocks:
                for resnet in block.resnets:
                    x = _spatio_temporal_passes(passes, resnet, x, indicator, batch, num_frames)
                for upsampler in block.upsamplers or ():
                    x = passes.map(upsampler, x, halo=halo_of(upsampler, passes.dim), scale=2)
            stats = passes.group_stats(decoder.conv_norm_out, x)
            head = lambda b: decoder.conv_out(decoder.conv_act(  # noqa: E731
                passes.normalize(decoder.conv_norm_out, stats, b)))
            frames = passes.map(head, x, halo=halo_of(decoder.conv_out, passes.dim))
            del x
            # The temporal output convolution (3x1x1) reads each position across the chunk's frames only (no halo),
            # so each band can be written back over its own input.
            video = _as_video(frames, batch, num_frames)
            passes.map(decoder.time_conv_out, video, halo=0, out=video)
        return frames


def _spatio_temporal_passes(passes: BandPasses, block, x: torch.Tensor, indicator: torch.Tensor, batch: int,
                            num_frames: int) -> torch.Tensor:
    """``SpatioTemporalResBlock.forward`` over bands of (batch * frames, C, H, W) ``x``, as ``x``'s layout."""
    spatial = resnet_passes(passes, block.spatial_res_block, x)
    mix = _as_video(spatial, batch, num_frames)
    temporal = block.temporal_res_block

    def blend(y: torch.Tensor, spatial_band: torch.Tensor) -> torch.Tensor:
        residual = temporal.conv_shortcut(spatial_band) if temporal.conv_shortcut is not None else spatial_band
        return block.time_mixer(x_spatial=spatial_band, x_temporal=residual + y, image_only_indicator=indicator)

    stats = passes.group_stats(temporal.norm1, mix)
    h = passes.map(lambda b: temporal.conv1(temporal.nonlinearity(passes.normalize(temporal.norm1, stats, b))), mix,
                   halo=halo_of(temporal.conv1, passes.dim))
    stats = passes.group_stats(temporal.norm2, h)
    second = lambda b: temporal.conv2(temporal.dropout(temporal.nonlinearity(  # noqa: E731
        passes.normalize(temporal.norm2, stats, b))))
    # The blend reads the spatial output's band before the band is overwritten with the result.
    passes.map(second, h, halo=halo_of(temporal.conv2, passes.dim), extra=(mix,), combine=blend, out=mix)
    return spatial


def _as_video(x: torch.Tensor, batch: int, num_frames: int) -> torch.Tensor:
    """(batch * frames, C, H, W) as a (batch, C, frames, H, W) view, the layout the temporal layers take."""
    return x.unflatten(0, (batch, num_frames)).permute(0, 2, 1, 3, 4)
