"""The HunyuanVideo family: ``HunyuanVideoPipeline`` (text to video, a guidance-distilled transformer).

What differs from the defaults:

* **embedded guidance**: the request's guidance scale is the one the transformer is conditioned on (one call per
  step, in diffusers' ``cache_context("cond")``). True classifier-free guidance (``true_cfg_scale`` > 1 with a
  negative prompt) adds an ``uncond`` call to every step, which follows the ``cond`` call's decision;
* **two text encoders**: a Llama model read through the pipeline's prompt template (up to ``max_sequence_length``
  tokens of the prompt) and a CLIP text model for the pooled projection (77 tokens); both are encoders the run
  observes and swapping parks, and a prompt either would cut is refused;
* the scheduler has a ``step_index``, the cache context has none: the step comes from the scheduler;
* feature chunking chunks the dual- and single-stream blocks and the head (:mod:`.chunked`);
* sliced decoding keeps the clip whole in time and decodes it in spatial bands with the whole clip's GroupNorm
  statistics, the mid block's frame-causal attention run by query frame (:mod:`.vae_bands`).

EasyCache's reference for this model (``EasyCache4HunyuanVideo``) uses tau 0.025, five warm-up steps of 50, and
computes the last step; the ``hunyuanvideo`` preset carries those settings.

Example:
    >>> from lightcache.families import adapter_for
    >>> from lightcache.families.hunyuan_video.tiny import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline(seed=0)
    >>> adapter = adapter_for(pipe)
    >>> adapter.name, list(adapter.denoisers(pipe)), list(adapter.text_encoders(pipe))
    ('hunyuan_video', ['transformer'], ['text_encoder', 'text_encoder_2'])
"""

from __future__ import annotations

from typing import Any

from ...errors import LightcacheError
from ...fields import RequestField
from ..base import FamilyAdapter

TRUE_CFG_SCALE = RequestField(
    "true_cfg_scale", "True CFG scale",
    "true classifier-free guidance (a second, unconditional call per step) when > 1 and a negative prompt is "
    "given; 1 keeps the embedded guidance alone", low=1.0, high=30.0, optional=True)

#: Tokens the CLIP text encoder takes (the pipeline would cut a longer prompt with a warning only).
CLIP_TOKENS = 77


class HunyuanVideoAdapter(FamilyAdapter):
    name = "hunyuan_video"
    pipeline_classes = ("HunyuanVideoPipeline",)
    denoiser_names = ("transformer",)
    text_encoder_names = ("text_encoder", "text_encoder_2")
    image_encoder_names = ()
    request_fields = (TRUE_CFG_SCALE,)

    def calls_per_step(self, pipe, settings) -> int:
        # HunyuanVideoPipeline runs the uncond branch only with true CFG and a negative prompt.
        return 2 if self._true_cfg(settings) else 1

    def check_prompt(self, pipe, settings) -> None:
        super().check_prompt(pipe, settings)  # the Llama tokenizer against max_sequence_length
        tokenizer = getattr(pipe, "tokenizer_2", None)
        if tokenizer is None:
            return
        for name, text in (("prompt", settings.prompt), ("negative_prompt", settings.negative_prompt)):
            if text and len(tokenizer(text, add_special_tokens=True).input_ids) > CLIP_TOKENS:
                raise LightcacheError(f"{name} is longer than the {CLIP_TOKENS} tokens this model's CLIP text "
                                      "encoder takes. Shorten it.")

    def call_kwargs(self, pipe, settings, image: Any = None) -> dict[str, Any]:
        kwargs = self.video_kwargs(settings) | dict(
            prompt=settings.prompt,
            guidance_scale=settings.guidance_scale,
            max_sequence_length=settings.max_sequence_length,
        )
        if settings.negative_prompt:
            kwargs["negative_prompt"] = settings.negative_prompt
        true_cfg = settings.extras.get("true_cfg_scale")
        if true_cfg is not None:
            kwargs["true_cfg_scale"] = true_cfg
        return kwargs

    def latent_shape(self, pipe, settings) -> tuple[int, int, int, int, int]:
        frames = (settings.frames - 1) // pipe.vae_scale_factor_temporal + 1
        return (1, int(pipe.transformer.config.in_channels), frames, settings.height // pipe.vae_scale_factor_spatial,
                settings.width // pipe.vae_scale_factor_spatial)

    def chunked_forwards(self, denoiser):
        from .chunked import HunyuanVideoChunkedForwards

        return HunyuanVideoChunkedForwards()

    def band_decoder(self, vae):
        from .vae_bands import CausalVAEBandDecoder

        return CausalVAEBandDecoder()

    @staticmethod
    def _true_cfg(settings) -> bool:
        return (settings.extras.get("true_cfg_scale") or 1.0) > 1.0 and bool(settings.negative_prompt)
