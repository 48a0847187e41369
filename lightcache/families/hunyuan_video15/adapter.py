"""The HunyuanVideo-1.5 family: ``HunyuanVideo15Pipeline`` (text to video) and
``HunyuanVideo15ImageToVideoPipeline`` (image to video).

What differs from the defaults:

* **guidance through a guider**: the pipeline's call takes no guidance scale; its ``guider``
  (``ClassifierFreeGuidance``) holds it, so a run sets the request's guidance on the guider first. With guidance
  the transformer is called twice a step, in diffusers' ``cache_context("pred_cond")`` then ``("pred_uncond")``;
  the step comes from the scheduler;
* **the transformer's input** concatenates, on the channel axis, the noisy latent, a condition latent and a
  one-channel mask (32 + 32 + 1 = 65 channels in the real model): EasyCache reads the first ``out_channels``;
* **two text encoders**, a Qwen2.5-VL model read through a chat template and a ByT5 model for quoted glyph text,
  and for image to video a SigLIP image encoder; all are encoders the run observes and swapping parks;
* **image to video** takes no size: the video's size is the pipeline's bucket for the image's aspect ratio at the
  model's ``target_size``, and a request for another size is refused with the size to ask for;
* feature chunking chunks its dual-stream blocks (HunyuanVideo's, with this model's dense mask built a query slice
  at a time: :mod:`.chunked`) and the head; no sliced decoding yet (refused with the reason, before anything runs).

No EasyCache reference setting exists for this model: its presets start from Wan's tau, untuned.

Example:
    >>> from lightcache.families import adapter_for
    >>> from lightcache.families.hunyuan_video15.tiny import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline(seed=0, task="i2v")
    >>> adapter = adapter_for(pipe)
    >>> adapter.name, list(adapter.text_encoders(pipe)), list(adapter.image_encoders(pipe)), adapter.takes_image(pipe)
    ('hunyuan_video15', ['text_encoder', 'text_encoder_2'], ['image_encoder'], True)
"""

from __future__ import annotations

import math
from typing import Any

from ...errors import LightcacheError
from ..base import FamilyAdapter

I2V_PIPELINE = "HunyuanVideo15ImageToVideoPipeline"


class HunyuanVideo15Adapter(FamilyAdapter):
    name = "hunyuan_video15"
    pipeline_classes = ("HunyuanVideo15Pipeline", I2V_PIPELINE)
    denoiser_names = ("transformer",)
    text_encoder_names = ("text_encoder", "text_encoder_2")
    image_encoder_names = ("image_encoder",)

    def takes_image(self, pipe) -> bool:
        return type(pipe).__name__ == I2V_PIPELINE

    def pipeline_for(self, pipe, image: Any):
        if image is not None and not self.takes_image(pipe):
            raise LightcacheError(f"This {type(pipe).__name__} is text-to-video only; it takes no image.")
        return pipe

    def chunked_forwards(self, denoiser):
        from .chunked import HunyuanVideo15ChunkedForwards

        return HunyuanVideo15ChunkedForwards()

    def prepare(self, pipe, settings) -> None:
        # The guider holds the guidance scale; a request that asks for another one gets a guider of its own.
        guider = pipe.guider
        if getattr(guider, "guidance_scale", None) != settings.guidance_scale:
            pipe.guider = guider.new(guidance_scale=settings.guidance_scale)

    def calls_per_step(self, pipe, settings) -> int:
        guider = pipe.guider
        neutral = 0.0 if getattr(guider, "use_original_formulation", False) else 1.0
        guided = getattr(guider, "_enabled", True) and not math.isclose(settings.guidance_scale, neutral)
        return 2 if guided else 1

    def check_prompt(self, pipe, settings) -> None:
        """Refuse a prompt either text encoder would cut: the Qwen model reads up to the pipeline's
        ``tokenizer_max_length`` tokens (1000), ByT5 the prompt's quoted glyph text up to ``tokenizer_2_max_length``
        (256); the pipeline would truncate both without a word."""
        from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import extract_glyph_texts

        limits = ((pipe.tokenizer, getattr(pipe, "tokenizer_max_length", 1000), lambda text: text, "Qwen2.5-VL"),
                  (pipe.tokenizer_2, getattr(pipe, "tokenizer_2_max_length", 256), extract_glyph_texts,
                   "ByT5 (the quoted text)"))
        for name, text in (("prompt", settings.prompt), ("negative_prompt", settings.negative_prompt)):
            for tokenizer, limit, part, encoder in limits:
                read = part(text) if text else None
                if read and len(tokenizer(read).input_ids) > limit:
                    raise LightcacheError(f"{name} is longer than the {limit} tokens this model's {encoder} text "
                                          "encoder takes. Shorten it.")

    def call_kwargs(self, pipe, settings, image: Any = None) -> dict[str, Any]:
        kwargs = self.video_kwargs(settings) | dict(prompt=settings.prompt,
                                                    negative_prompt=settings.negative_prompt or None)
        if self.takes_image(pipe):
            del kwargs["height"], kwargs["width"]  # the pipeline sizes the video from the image (below)
            if image is None:
                raise LightcacheError("This is an image-to-video model: give it an image to start from.")
            # The pipeline sizes the video itself (the bucket of the image's aspect ratio); a request for another
            # size would be ignored in silence, so it is refused with the size to ask for.
            height, width = pipe.video_processor.calculate_default_height_width(
                height=image.size[1], width=image.size[0], target_size=pipe.target_size)
            if (height, width) != (settings.height, settings.width):
                raise LightcacheError(
                    f"This image-to-video model makes a {width}x{height} video from this image (its aspect ratio at "
                    f"the model's {pipe.target_size}-pixel size); ask for width {width} and height {height}.")
            kwargs["image"] = image
        return kwargs

    def latent_shape(self, pipe, settings) -> tuple[int, int, int, int, int]:
        frames = (settings.frames - 1) // pipe.vae_scale_factor_temporal + 1
        return (1, int(pipe.transformer.config.out_channels), frames,
                settings.height // pipe.vae_scale_factor_spatial, settings.width // pipe.vae_scale_factor_spatial)
