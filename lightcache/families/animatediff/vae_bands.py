"""AnimateDiff's band decoder: sliced decoding (:mod:`lightcache.techniques.decode`) of Stable Diffusion's image VAE
(``AutoencoderKL``), exactly.

The image VAE decodes every frame on its own (GroupNorm statistics are per sample), so decoding the pipeline's
batch of frames (``decode_chunk_size``, 16 by default) one frame at a time is already exact, and divides the
decode's activations by the batch. Within a frame, every residual block and the output head put a GroupNorm,
whose statistics cover the whole frame, before their convolutions: the up path runs in bands with the whole
frame's statistics (:mod:`lightcache.techniques.norm_bands`: a pass per GroupNorm, each band with the one column
its 3x3 convolutions reach on either side). The input convolution and the mid block (whose attention sees the whole
frame) run whole, at latent resolution.

Example:
    >>> import torch
    >>> from lightcache.families.animatediff.tiny import build_tiny_pipeline
    >>> vae = build_tiny_pipeline(seed=0).vae
    >>> z = torch.randn(3, 4, 8, 8)
    >>> bands = ImageVAEBandDecoder()
    >>> video = bands.decode(vae, z, bands.plan(vae, 8, 8, num_slices=2))
    >>> bool((video - vae.decode(z).sample).abs().max() < 1e-4)
    True
"""

from __future__ import annotations

import torch

from ...errors import LightcacheError
from ...techniques.decode import BandDecoder
from ...techniques.norm_bands import BandPasses, check_no_offloading, halo_of, plan_bands, resnet_passes


class ImageVAEBandDecoder(BandDecoder):
    """Sliced decoding's view of ``AutoencoderKL`` with the ``UpDecoderBlock2D`` decoder Stable Diffusion uses."""

    def check(self, vae) -> None:
        from diffusers import AutoencoderKL
        from diffusers.models.resnet import ResnetBlock2D
        from diffusers.models.unets.unet_2d_blocks import UpDecoderBlock2D

        if not isinstance(vae, AutoencoderKL):
            raise LightcacheError(f"Sliced decoding supports AnimateDiff's image VAE (AutoencoderKL), not "
                                  f"{type(vae).__name__}.")
        decoder = vae.decoder
        kinds = {type(b).__name__ for b in decoder.up_blocks if type(b) is not UpDecoderBlock2D}
        kinds |= {type(r).__name__ for b in decoder.up_blocks for r in getattr(b, "resnets", ())
                  if type(r) is not ResnetBlock2D}
        if kinds or not isinstance(decoder.conv_norm_out, torch.nn.GroupNorm):
            found = ", ".join(sorted(kinds)) or type(decoder.conv_norm_out).__name__
            raise LightcacheError(f"Sliced decoding supports the image VAE's UpDecoderBlock2D decoder with GroupNorm "
                                  f"residual blocks; this one has {found}. Turn sliced decoding off.")
        if getattr(vae, "use_tiling", False):
            raise LightcacheError("Sliced decoding replaces the VAE's tiled decode (which blends tiles, so its output "
                                  "differs); disable vae tiling or turn sliced decoding off.")
        check_no_offloading(vae)

    def plan(self, vae, latent_height: int, latent_width: int, num_slices: int | None = None,
             axis: str | None = None) -> dict:
        return plan_bands(latent_height, latent_width, _upscale(vae), num_slices=num_slices, axis=axis)

    def decode(self, vae, latents: torch.Tensor, plan: dict, **_) -> torch.Tensor:
        """``vae.decode(latents).sample`` for (N, C, h, w) latents: (N, 3, H, W), on the host."""
        decoder = vae.decoder
        device = next(vae.parameters()).device
        passes = BandPasses(device, plan["num_slices"], plan["dim"])
        frames = []
        with torch.no_grad():
            for z in latents.split(1):
                z = z.to(device=device, dtype=vae.dtype)
                if vae.post_quant_conv is not None:
                    z = vae.post_quant_conv(z)
                x = decoder.conv_in(z)
                if decoder.mid_block is not None:
                    x = decoder.mid_block(x, None)
                x = passes.stage(x)
                for block in decoder.up_blocks:
                    for resnet in block.resnets:
                        x = resnet_passes(passes, resnet, x)
                    for upsampler in block.upsamplers or ():
                        x = passes.map(upsampler, x, halo=halo_of(upsampler, passes.dim), scale=2)
                stats = passes.group_stats(decoder.conv_norm_out, x)
                head = lambda b: decoder.conv_out(decoder.conv_act(  # noqa: E731
                    passes.normalize(decoder.conv_norm_out, stats, b)))
                frames.append(passes.map(head, x, halo=halo_of(decoder.conv_out, passes.dim)))
                del x
        return torch.cat(frames)


def _upscale(vae) -> int:
    return 2 ** sum(block.upsamplers is not None for block in vae.decoder.up_blocks)
