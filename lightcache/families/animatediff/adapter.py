"""The AnimateDiff family: ``AnimateDiffPipeline`` (a Stable Diffusion 1.5 UNet with a motion adapter, text to video).

What differs from the defaults:

* the denoiser is the ``unet``: the pipeline fuses the Stable Diffusion UNet and the ``MotionAdapter`` into a
  ``UNetMotionModel`` when it is built; latents are (B, C, F, H, W), and classifier-free guidance is batched into
  one call per step (no cache context: each call is located by counting, since DDIM keeps no ``step_index``);
* the ``motion_adapter`` the pipeline keeps is never called during a run (its weights live on in the UNet): it is
  an idle module, which swapping parks for the whole run;
* one CLIP text encoder (77 tokens);
* feature chunking runs the UNet's feed-forward layers over token slices
  (:class:`~lightcache.techniques.chunk_parts.FeedForwardChunking`: the arithmetic of diffusers'
  ``enable_forward_chunking`` without its one chunk size for every axis);
* sliced decoding decodes the image VAE one frame at a time, each in bands with the whole frame's GroupNorm
  statistics (:mod:`.vae_bands`).

Example:
    >>> from lightcache.families import adapter_for
    >>> from lightcache.families.animatediff.tiny import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline(seed=0)
    >>> adapter = adapter_for(pipe)
    >>> adapter.name, list(adapter.denoisers(pipe)), list(adapter.idle_modules(pipe))
    ('animatediff', ['unet'], ['motion_adapter'])
"""

from __future__ import annotations

from typing import Any

from ..base import FamilyAdapter


class AnimateDiffAdapter(FamilyAdapter):
    name = "animatediff"
    pipeline_classes = ("AnimateDiffPipeline",)
    denoiser_names = ("unet",)
    image_encoder_names = ("image_encoder",)  # the optional IP-Adapter image encoder, when a checkpoint has one
    idle_module_names = ("motion_adapter",)

    def call_kwargs(self, pipe, settings, image: Any = None) -> dict[str, Any]:
        kwargs = self.video_kwargs(settings) | dict(
            prompt=settings.prompt,
            guidance_scale=settings.guidance_scale,
        )
        if settings.negative_prompt:
            kwargs["negative_prompt"] = settings.negative_prompt
        return kwargs

    def band_decoder(self, vae):
        from .vae_bands import ImageVAEBandDecoder

        return ImageVAEBandDecoder()

    def latent_shape(self, pipe, settings) -> tuple[int, int, int, int, int]:
        scale = pipe.vae_scale_factor
        return (1, int(pipe.unet.config.out_channels), settings.frames, settings.height // scale,
                settings.width // scale)

    def chunked_forwards(self, denoiser):
        from diffusers import UNetMotionModel

        from ...techniques.chunk_parts import FeedForwardChunking

        return FeedForwardChunking((UNetMotionModel,))
