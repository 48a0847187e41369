"""The Kandinsky 5 family: ``Kandinsky5T2VPipeline`` (text to video, the Lite and Pro checkpoints).

What differs from the defaults:

* **no cache context**: with ``guidance_scale > 1`` the pipeline calls the transformer twice a step, the
  conditional call then the unconditional one, with nothing to tell them apart but their order; the locator names
  them ``cond`` and ``call1`` (the step from the scheduler's ``step_index``), and ``call1`` follows ``cond``'s
  decision with its own cached transformation. The two calls read prompts of different lengths (the negative
  prompt's own), which changes nothing for EasyCache: it reads the latent input only;
* **channels-last latents**: the transformer's input is (batch, frames, height, width, channels), the noisy latent
  followed by a condition latent and a mask (16 + 16 + 1 channels in the real model, all zero for text to video),
  its output (batch, frames, height, width, 16). The latent layout is ``BFHWC`` and the noisy channels are the
  model's ``out_visual_dim``; the pipeline steps them in place, which EasyCache allows for by copying the inputs it
  keeps;
* **two text encoders**: Qwen2.5-VL, read through the pipeline's prompt template (its first 128 tokens cropped),
  and CLIP for the pooled embedding; both are encoders the run observes and swapping parks. A prompt either would
  cut is refused;
* no feature chunking and no sliced decoding yet (refused with the reason, before anything runs).

No EasyCache reference setting exists for this model: its preset starts from Wan's tau, untuned.

Example:
    >>> from lightcache.families import adapter_for
    >>> from lightcache.families.kandinsky5.tiny import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline(seed=0)
    >>> adapter = adapter_for(pipe)
    >>> adapter.name, adapter.latent_layout, adapter.latent_channels(pipe.transformer), list(adapter.text_encoders(pipe))
    ('kandinsky5', 'BFHWC', 4, ['text_encoder', 'text_encoder_2'])
"""

from __future__ import annotations

from typing import Any

from ...errors import LightcacheError
from ..base import FamilyAdapter


class Kandinsky5Adapter(FamilyAdapter):
    name = "kandinsky5"
    pipeline_classes = ("Kandinsky5T2VPipeline",)
    denoiser_names = ("transformer",)
    text_encoder_names = ("text_encoder", "text_encoder_2")
    latent_layout = "BFHWC"

    def latent_channels(self, denoiser) -> int | None:
        out = getattr(getattr(denoiser, "config", None), "out_visual_dim", None)
        return int(out) if isinstance(out, int) else super().latent_channels(denoiser)

    def calls_per_step(self, pipe, settings) -> int:
        # The pipeline makes the unconditional call whenever guidance_scale > 1.
        return 2 if settings.guidance_scale > 1.0 else 1

    def check_prompt(self, pipe, settings) -> None:
        """Refuse a prompt either text encoder would cut: the pipeline keeps ``max_sequence_length`` tokens of the
        Qwen2.5-VL prompt after its template's first 128 tokens (cutting the rest with a log line only), and CLIP
        reads 77 tokens."""
        template = pipe.prompt_template
        start = pipe.prompt_template_encode_start_idx
        clip_limit = pipe.tokenizer_2.model_max_length
        for name, text in (("prompt", settings.prompt), ("negative_prompt", settings.negative_prompt)):
            if not text:
                continue
            # A batch of one: the real tokenizer is a Qwen2-VL processor, which batches a single text anyway.
            n_qwen = len(pipe.tokenizer(text=[template.format(text)])["input_ids"][0])
            if n_qwen > start + settings.max_sequence_length:
                raise LightcacheError(
                    f"{name} is {n_qwen - start} tokens long with this model's prompt template; its Qwen2.5-VL text "
                    f"encoder takes at most {settings.max_sequence_length}. Shorten it.")
            if len(pipe.tokenizer_2(text).input_ids) > clip_limit:
                raise LightcacheError(f"{name} is longer than the {clip_limit} tokens this model's CLIP text encoder "
                                      "takes. Shorten it.")

    def call_kwargs(self, pipe, settings, image: Any = None) -> dict[str, Any]:
        # No negative prompt: the pipeline's own (it has one for guidance), as a plain call would have.
        return self.video_kwargs(settings) | dict(
            prompt=settings.prompt, negative_prompt=settings.negative_prompt or None,
            guidance_scale=settings.guidance_scale, max_sequence_length=settings.max_sequence_length)

    def latent_shape(self, pipe, settings) -> tuple[int, int, int, int, int]:
        frames = (settings.frames - 1) // pipe.vae_scale_factor_temporal + 1
        return (1, int(self.latent_channels(pipe.transformer)), frames,
                settings.height // pipe.vae_scale_factor_spatial, settings.width // pipe.vae_scale_factor_spatial)
