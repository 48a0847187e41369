"""The LTX-Video family: ``LTXPipeline`` (text to video) and ``LTXImageToVideoPipeline`` (image to video).

What differs from the defaults:

* **packed tokens**: the transformer takes the latent packed into tokens, (batch, tokens, channels)
  (``latent_layout = "BNC"``); classifier-free guidance is batched into one call per step, in diffusers'
  ``cache_context("cond_uncond")``, and the scheduler gives the step;
* **image to video** conditions on the first frame by keeping its tokens clean: the VAE encodes the image and the
  timestep is given per token, (batch, tokens) (the step's timestep is the largest);
* **the decode** is ``vae.decode(latents, timestep)``: the VAE of LTX-Video 0.9.1 and later is conditioned on a
  decode timestep, with noise of ``decode_noise_scale`` mixed into the latent first; both are this family's fields;
* the pipeline's ``frame_rate`` (the rate the model's positions are scaled to) is the request's fps;
* no feature chunking and no sliced decoding yet (refused with the reason, before anything loads).

No EasyCache reference setting exists for this model: its preset starts from Wan's tau, untuned.

Example:
    >>> from lightcache.families import adapter_for
    >>> from lightcache.families.ltx.tiny import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline(seed=0, task="i2v")
    >>> adapter = adapter_for(pipe)
    >>> adapter.name, adapter.latent_layout, adapter.latent_channel_axis, adapter.takes_image(pipe)
    ('ltx', 'BNC', -1, True)
"""

from __future__ import annotations

from typing import Any

from ...errors import LightcacheError
from ...fields import RequestField
from ..base import FamilyAdapter

I2V_PIPELINE = "LTXImageToVideoPipeline"

DECODE_TIMESTEP = RequestField(
    "decode_timestep", "Decode timestep",
    "the timestep the VAE decodes at (VAEs with timestep conditioning, LTX-Video 0.9.1 and later; 0: a clean "
    "decode)", low=0.0, high=1.0)
DECODE_NOISE_SCALE = RequestField(
    "decode_noise_scale", "Decode noise",
    "noise mixed into the latent before a timestep-conditioned decode (unset: the decode timestep)", low=0.0,
    high=1.0, optional=True)


class LTXAdapter(FamilyAdapter):
    name = "ltx"
    pipeline_classes = ("LTXPipeline", I2V_PIPELINE)
    denoiser_names = ("transformer",)
    text_encoder_names = ("text_encoder",)
    image_encoder_names = ()  # the VAE encodes the first frame
    latent_layout = "BNC"
    request_fields = (DECODE_TIMESTEP, DECODE_NOISE_SCALE)

    def takes_image(self, pipe) -> bool:
        return type(pipe).__name__ == I2V_PIPELINE

    def call_kwargs(self, pipe, settings, image: Any = None) -> dict[str, Any]:
        kwargs = self.video_kwargs(settings) | dict(
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt or None,
            guidance_scale=settings.guidance_scale,
            frame_rate=settings.fps,
            max_sequence_length=settings.max_sequence_length,
        )
        for field in self.request_fields:
            if settings.extras.get(field.name) is not None:
                kwargs[field.name] = settings.extras[field.name]
        if self.takes_image(pipe):
            if image is None:
                raise LightcacheError("This is an image-to-video model: give it an image to start from.")
            kwargs["image"] = image
        return kwargs

    def latent_shape(self, pipe, settings) -> tuple[int, int, int, int, int]:
        frames = (settings.frames - 1) // pipe.vae_temporal_compression_ratio + 1
        scale = pipe.vae_spatial_compression_ratio
        return (1, int(pipe.transformer.config.out_channels), frames, settings.height // scale,
                settings.width // scale)
