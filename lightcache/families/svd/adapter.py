"""The Stable Video Diffusion family: ``StableVideoDiffusionPipeline`` (image to video, no prompt).

What differs from the defaults:

* the denoiser is a ``unet`` (``UNetSpatioTemporalConditionModel``) whose latents are laid out (B, F, C, H, W), with
  the first frame's latent concatenated after the 4 noisy channels; guidance is batched into one call per step
  (no cache context: the first call of a step decides, the scheduler gives the step);
* it takes an image (a CLIP image encoder, and the VAE encodes it) and **no prompt**: a prompt given to it is refused;
* the request's guidance scale is the pipeline's ``max_guidance_scale`` (guidance ramps over the frames from
  ``min_guidance_scale``), and its ``fps`` is also the frame rate the model is conditioned on; the family's own
  fields are the motion bucket, the noise added to the image, the first guidance of the ramp and the frames the VAE
  decodes at once;
* feature chunking runs the UNet's feed-forward layers over token slices
  (:class:`~lightcache.techniques.chunk_parts.FeedForwardChunking`: the arithmetic of diffusers'
  ``enable_forward_chunking`` without its one chunk size for every axis);
* sliced decoding keeps each of the pipeline's ``decode_chunk_size`` chunks whole in time and decodes it in spatial
  bands with the chunk's GroupNorm statistics (:mod:`.vae_bands`), so it is exact at any chunk size.

Example:
    >>> from lightcache.families import adapter_for
    >>> from lightcache.families.svd.tiny import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline(seed=0)
    >>> adapter = adapter_for(pipe)
    >>> adapter.name, list(adapter.denoisers(pipe)), list(adapter.image_encoders(pipe)), adapter.takes_prompt
    ('svd', ['unet'], ['image_encoder'], False)
"""

from __future__ import annotations

from typing import Any

from ...fields import RequestField
from ..base import FamilyAdapter

MOTION_BUCKET_ID = RequestField(
    "motion_bucket_id", "Motion bucket", "how much the video moves (higher: more motion)", low=0, high=1023,
    kind="int")
NOISE_AUG_STRENGTH = RequestField(
    "noise_aug_strength", "Image noise", "noise added to the first frame (more: the video departs further from it)",
    low=0.0, high=1.0)
MIN_GUIDANCE_SCALE = RequestField(
    "min_guidance_scale", "Guidance (first frame)",
    "the guidance of the first frame; it ramps up to the guidance scale at the last frame", low=0.0, high=30.0,
    optional=True)
DECODE_CHUNK_SIZE = RequestField(
    "decode_chunk_size", "Frames decoded at once", "frames the VAE decodes at once (fewer: less memory, slower)",
    low=1, high=128, kind="int", optional=True)


class SVDAdapter(FamilyAdapter):
    name = "svd"
    pipeline_classes = ("StableVideoDiffusionPipeline",)
    denoiser_names = ("unet",)
    text_encoder_names = ()
    image_encoder_names = ("image_encoder",)
    latent_layout = "BFCHW"
    takes_prompt = False
    request_fields = (MOTION_BUCKET_ID, NOISE_AUG_STRENGTH, MIN_GUIDANCE_SCALE, DECODE_CHUNK_SIZE)

    def takes_image(self, pipe) -> bool:
        return True

    def call_kwargs(self, pipe, settings, image: Any = None) -> dict[str, Any]:
        extras = settings.extras
        kwargs = self.video_kwargs(settings) | dict(
            image=image,
            max_guidance_scale=settings.guidance_scale,
            fps=settings.fps,
        )
        for field in self.request_fields:
            if extras.get(field.name) is not None:
                kwargs[field.name] = extras[field.name]
        return kwargs

    def band_decoder(self, vae):
        from .vae_bands import TemporalVAEBandDecoder

        return TemporalVAEBandDecoder()

    def latent_shape(self, pipe, settings) -> tuple[int, int, int, int, int]:
        scale = pipe.vae_scale_factor
        return (1, int(pipe.unet.config.out_channels), settings.frames, settings.height // scale,
                settings.width // scale)

    def chunked_forwards(self, denoiser):
        from diffusers import UNetSpatioTemporalConditionModel

        from ...techniques.chunk_parts import FeedForwardChunking

        return FeedForwardChunking((UNetSpatioTemporalConditionModel,))
