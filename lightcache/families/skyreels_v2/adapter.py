"""The SkyReels-V2 family: ``SkyReelsV2Pipeline`` (text to video) and ``SkyReelsV2ImageToVideoPipeline``.

SkyReels-V2 is Wan's architecture trained anew: a ``SkyReelsV2Transformer3DModel``, Wan's VAE, a UMT5 text encoder
and, for image to video, a CLIP image encoder. What differs from the defaults:

* the pipelines call the transformer the way Wan's do: ``cache_context("cond")`` then ``("uncond")`` when
  ``guidance_scale > 1``, the step from the UniPC scheduler's ``step_index``;
* **image to video** concatenates a mask and the first frame's latent after the noisy latent on the channel axis
  (16 + 4 + 16 channels in the real model): EasyCache reads the first ``out_channels``;
* **request field**: the scheduler's flow shift (8.0 for text to video, 5.0 for image to video, as the model card
  says), Wan's field;
* **sliced decoding**: the VAE is Wan's ``AutoencoderKLWan``, which Wan's band decoder decodes exactly; feature
  chunking is refused: the transformer's forward is not Wan's (frame-rate embedding, causal blocks), so Wan's
  chunked forward does not fit it;
* **diffusion forcing** (``SkyReelsV2DiffusionForcing*Pipeline``) is refused by name: it steps every latent frame
  with its own copy of the scheduler and one timestep per frame, so the pipeline's scheduler never counts a step
  and no call could be placed in its step.

No EasyCache reference setting exists for this model: its preset starts from Wan's tau, untuned.

Example:
    >>> from lightcache.families import adapter_for
    >>> from lightcache.families.skyreels_v2.tiny import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline(seed=0, task="i2v")
    >>> adapter = adapter_for(pipe)
    >>> adapter.name, list(adapter.denoisers(pipe)), list(adapter.image_encoders(pipe)), adapter.takes_image(pipe)
    ('skyreels_v2', ['transformer'], ['image_encoder'], True)
    >>> adapter_for(build_tiny_pipeline(seed=0, task="df"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lightcache.errors.LightcacheError: SkyReels-V2's diffusion-forcing pipelines ...
"""

from __future__ import annotations

from typing import Any

from ...errors import LightcacheError
from ..base import FamilyAdapter
from ..wan.adapter import FLOW_SHIFT

I2V_PIPELINE = "SkyReelsV2ImageToVideoPipeline"

_DIFFUSION_FORCING = ("SkyReelsV2DiffusionForcingPipeline", "SkyReelsV2DiffusionForcingImageToVideoPipeline",
                      "SkyReelsV2DiffusionForcingVideoToVideoPipeline")
_WHY_NOT_DIFFUSION_FORCING = (
    "SkyReels-V2's diffusion-forcing pipelines ({name}) are not supported: they step every latent frame with its own "
    "copy of the scheduler and one timestep per frame, so lightcache cannot tell which step a transformer call "
    "belongs to, and the step cache and the trace would be wrong. Use SkyReelsV2Pipeline (text to video) or "
    "SkyReelsV2ImageToVideoPipeline.")


class SkyReelsV2Adapter(FamilyAdapter):
    name = "skyreels_v2"
    pipeline_classes = ("SkyReelsV2Pipeline", I2V_PIPELINE)
    unsupported_pipelines = {name: _WHY_NOT_DIFFUSION_FORCING.format(name=name) for name in _DIFFUSION_FORCING}
    denoiser_names = ("transformer",)
    request_fields = (FLOW_SHIFT,)

    def takes_image(self, pipe) -> bool:
        return type(pipe).__name__ == I2V_PIPELINE

    def prepare(self, pipe, settings) -> None:
        config = pipe.scheduler.config
        # A request without a flow shift of its own leaves the checkpoint's scheduler as it is.
        shift = settings.extras.get("flow_shift")
        if shift is not None and "flow_shift" in config and config.flow_shift != shift:
            pipe.scheduler = type(pipe.scheduler).from_config(config, flow_shift=shift)

    def calls_per_step(self, pipe, settings) -> int:
        # The pipelines run the unconditional branch whenever guidance_scale > 1.
        return 2 if settings.guidance_scale > 1.0 else 1

    def call_kwargs(self, pipe, settings, image: Any = None) -> dict[str, Any]:
        kwargs = self.video_kwargs(settings) | dict(
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt,
            guidance_scale=settings.guidance_scale,
            max_sequence_length=settings.max_sequence_length,
        )
        if self.takes_image(pipe):
            if image is None:
                raise LightcacheError("This is an image-to-video model: give it an image to start from.")
            kwargs["image"] = image
        return kwargs

    def latent_shape(self, pipe, settings) -> tuple[int, int, int, int, int]:
        frames = (settings.frames - 1) // pipe.vae_scale_factor_temporal + 1
        return (1, int(pipe.vae.config.z_dim), frames, settings.height // pipe.vae_scale_factor_spatial,
                settings.width // pipe.vae_scale_factor_spatial)

    def band_decoder(self, vae):
        # The same VAE class as Wan's: its band decoder (which checks the VAE it is given) decodes it exactly.
        from ..wan.vae_bands import WanBandDecoder

        return WanBandDecoder()
