"""The CogVideoX family: ``CogVideoXPipeline`` (text to video) and ``CogVideoXImageToVideoPipeline`` (image to
video), CogVideoX 1.0 (5B) and 1.5 (5B).

What differs from the defaults:

* **one batched call per step**: classifier-free guidance runs the unconditional and the conditional batch in one
  transformer call, in diffusers' ``cache_context("cond_uncond")`` (also at guidance 1, unbatched). The CogVideoX
  schedulers (DDIM and DPM) keep no ``step_index``, so the step of each call is counted;
* **latents laid out (B, F, C, H, W)**; image to video concatenates the first frame's latent after the noisy
  channels (16 + 16 in the real model): EasyCache reads the first ``out_channels`` on axis 2;
* **the frames the VAE gives back**: it decodes an odd number of latent frames to 4n + 1 frames and an even one to
  more, so only ``8k + 1`` frames come back as asked; any other count is refused (the pipeline would change it in
  silence). CogVideoX 1.5 (``patch_size_t`` 2) pads the latent frames to an even count and drops the padding
  before decoding, so the latent it denoises has one frame more than the one it decodes;
* **the text is the transformer's length**: the pipeline pads every prompt to ``max_sequence_length`` tokens and the
  transformer was trained on its ``max_text_seq_length`` (226); CogVideoX-5B-I2V's learned position table
  (text and video positions) fails on any other length, so a request must ask for exactly that length;
* **learned position embeddings** (CogVideoX-5B-I2V) hold one size and one frame count, the model's own: another
  size fails in the transformer, another frame count would swap the learned table for a computed one in silence;
  both are refused before anything runs;
* the family's own field: ``use_dynamic_cfg`` (1: the pipeline recomputes the guidance scale from each step's
  timestep, as the CogVideoX authors run the 5B models with the DPM scheduler);
* no feature chunking and no sliced decoding yet (refused with the reason, before anything loads).

No EasyCache reference setting exists for these models: their presets start from Wan's tau, untuned.

Example:
    >>> from lightcache.families import adapter_for
    >>> from lightcache.families.cogvideox.tiny import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline(seed=0, task="i2v")
    >>> adapter = adapter_for(pipe)
    >>> adapter.name, adapter.latent_layout, adapter.takes_image(pipe), list(adapter.image_encoders(pipe))
    ('cogvideox', 'BFCHW', True, [])
"""

from __future__ import annotations

from typing import Any

from ...errors import LightcacheError
from ...fields import RequestField
from ..base import FamilyAdapter

I2V_PIPELINE = "CogVideoXImageToVideoPipeline"

USE_DYNAMIC_CFG = RequestField(
    "use_dynamic_cfg", "Dynamic CFG",
    "1: dynamic classifier-free guidance (the pipeline recomputes the scale from each step's timestep), as the "
    "CogVideoX authors run the 5B models with the DPM scheduler; 0: the guidance scale stays as given", low=0, high=1,
    kind="int")


class CogVideoXAdapter(FamilyAdapter):
    name = "cogvideox"
    pipeline_classes = ("CogVideoXPipeline", I2V_PIPELINE)
    denoiser_names = ("transformer",)
    text_encoder_names = ("text_encoder",)
    # The image-to-video pipeline has no image encoder: the VAE encodes the first frame (the encode_image stage).
    image_encoder_names = ()
    latent_layout = "BFCHW"
    request_fields = (USE_DYNAMIC_CFG,)

    def takes_image(self, pipe) -> bool:
        return type(pipe).__name__ == I2V_PIPELINE

    def check_prompt(self, pipe, settings) -> None:
        """Refuse a text length other than the transformer's (see the module's notes), then prompts the T5 encoder
        would cut at that length."""
        text_length = int(pipe.transformer.config.max_text_seq_length)
        if settings.max_sequence_length != text_length:
            raise LightcacheError(
                f"max_sequence_length must be {text_length} for this model: CogVideoX pads every prompt to its "
                f"transformer's {text_length} text tokens (got {settings.max_sequence_length}).")
        super().check_prompt(pipe, settings)

    def call_kwargs(self, pipe, settings, image: Any = None) -> dict[str, Any]:
        self._check_frames(pipe, settings)
        kwargs = self.video_kwargs(settings) | dict(
            prompt=settings.prompt,
            guidance_scale=settings.guidance_scale,
            use_dynamic_cfg=bool(settings.extras.get("use_dynamic_cfg") or 0),
            max_sequence_length=settings.max_sequence_length,
        )
        if settings.negative_prompt:
            kwargs["negative_prompt"] = settings.negative_prompt
        if self.takes_image(pipe):
            if image is None:
                raise LightcacheError("This is an image-to-video model: give it an image to start from.")
            self._check_learned_positions(pipe, settings)
            kwargs["image"] = image
        return kwargs

    def latent_shape(self, pipe, settings) -> tuple[int, int, int, int, int]:
        """The latent the transformer denoises: CogVideoX 1.5's padding frame included."""
        frames = (settings.frames - 1) // pipe.vae_scale_factor_temporal + 1
        patch_t = pipe.transformer.config.patch_size_t
        if patch_t:
            frames += -frames % patch_t
        scale = pipe.vae_scale_factor_spatial
        return (1, int(pipe.transformer.config.out_channels), frames, settings.height // scale,
                settings.width // scale)

    @staticmethod
    def _check_frames(pipe, settings) -> None:
        # An even number of latent frames decodes to more frames than asked (4n + 4 for 4n + 1); only 8k + 1 frames
        # give an odd number, which comes back as asked (CogVideoX 1.5's padding frame is dropped before decoding).
        step = 2 * pipe.vae_scale_factor_temporal
        if (settings.frames - 1) % step:
            examples = ", ".join(str(step * k + 1) for k in range(1, 5))
            raise LightcacheError(
                f"frames must be of the form {step}k+1 for CogVideoX (e.g. {examples}), got {settings.frames}: its "
                "VAE would return another number of frames.")

    @staticmethod
    def _check_learned_positions(pipe, settings) -> None:
        config = pipe.transformer.config
        if not config.use_learned_positional_embeddings:
            return
        scale = pipe.vae_scale_factor_spatial
        height, width = config.sample_height * scale, config.sample_width * scale
        if (settings.height, settings.width, settings.frames) != (height, width, config.sample_frames):
            raise LightcacheError(
                f"This image-to-video model's learned position embeddings fit one video shape: {width}x{height}, "
                f"{config.sample_frames} frames; ask for width {width}, height {height} and {config.sample_frames} "
                "frames.")
