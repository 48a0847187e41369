"""The Mochi family: ``MochiPipeline`` (Genmo's Mochi 1 preview, text to video).

What differs from the defaults:

* **one batched call per step**: classifier-free guidance runs the unconditional and the conditional batch in one
  transformer call, in diffusers' ``cache_context("cond_uncond")``; the flow-matching scheduler keeps a
  ``step_index``, which gives the step;
* latents laid out (B, C, F, H, W), all 12 channels noisy (the defaults fit);
* **the frames and steps the pipeline takes as asked**: its VAE compresses 6x in time, so only ``6k + 1`` frames
  come back as asked (another count would be changed in silence: 9 gives 7); its sigma schedule (linear, then
  quadratic) needs at least 2 steps. Both are refused otherwise, before anything runs;
* one T5 text encoder (the pipeline's ``max_sequence_length``, 256 in the real model);
* no feature chunking and no sliced decoding yet (refused with the reason, before anything loads).

No EasyCache reference setting exists for this model: its preset starts from Wan's tau, untuned.

Example:
    >>> from lightcache.families import adapter_for
    >>> from lightcache.families.mochi.tiny import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline(seed=0)
    >>> adapter = adapter_for(pipe)
    >>> adapter.name, list(adapter.denoisers(pipe)), list(adapter.text_encoders(pipe)), adapter.latent_layout
    ('mochi', ['transformer'], ['text_encoder'], 'BCFHW')
"""

from __future__ import annotations

from typing import Any

from ...errors import LightcacheError
from ..base import FamilyAdapter

#: Steps the pipeline's sigma schedule needs at least (one step divides by zero in it).
MIN_STEPS = 2


class MochiAdapter(FamilyAdapter):
    name = "mochi"
    pipeline_classes = ("MochiPipeline",)
    denoiser_names = ("transformer",)
    text_encoder_names = ("text_encoder",)
    image_encoder_names = ()

    def call_kwargs(self, pipe, settings, image: Any = None) -> dict[str, Any]:
        temporal = pipe.vae_temporal_scale_factor
        if (settings.frames - 1) % temporal:
            examples = ", ".join(str(temporal * k + 1) for k in range(1, 5))
            raise LightcacheError(
                f"frames must be of the form {temporal}k+1 for Mochi (e.g. {examples}), got {settings.frames}: its VAE "
                "would return another number of frames.")
        if settings.steps < MIN_STEPS:
            raise LightcacheError(f"steps must be at least {MIN_STEPS} for Mochi (its sigma schedule needs two), got "
                                  f"{settings.steps}.")
        kwargs = self.video_kwargs(settings) | dict(
            prompt=settings.prompt,
            guidance_scale=settings.guidance_scale,
            max_sequence_length=settings.max_sequence_length,
        )
        if settings.negative_prompt:
            kwargs["negative_prompt"] = settings.negative_prompt
        return kwargs

    def latent_shape(self, pipe, settings) -> tuple[int, int, int, int, int]:
        frames = (settings.frames - 1) // pipe.vae_temporal_scale_factor + 1
        scale = pipe.vae_spatial_scale_factor
        config = pipe.transformer.config  # out_channels None means as many as in (all 12 noisy)
        return (1, int(config.out_channels or config.in_channels), frames, settings.height // scale,
                settings.width // scale)
