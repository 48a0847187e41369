"""The Wan family: Wan2.1 T2V and I2V, Wan2.2 TI2V-5B and the two-expert A14B models (T2V and I2V).

What differs from the defaults:

* **two experts** (Wan2.2 A14B): ``transformer`` runs the steps with ``t >= boundary_ratio * 1000`` and
  ``transformer_2`` the rest; both are denoisers, and the pipeline's ``boundary_ratio`` and ``guidance_scale_2``
  are run settings;
* **image to video**: ``WanImageToVideoPipeline`` takes an ``image``. Wan2.1 I2V encodes it with a CLIP image
  encoder and concatenates the VAE-encoded condition (mask + latent, 20 channels) after the 16 noisy channels of
  the transformer's input; Wan2.2 TI2V-5B has no image encoder and writes the image's latent into the first latent
  frame (per-token timesteps, ``expand_timesteps``), so a TI2V-5B checkpoint loaded as ``WanPipeline`` runs
  image-to-video through ``WanImageToVideoPipeline.from_pipe`` over the same modules;
* **request fields**: the scheduler's flow shift, and for the two experts the low-noise expert's guidance and the
  expert boundary;
* classifier-free guidance is two calls per step (``cond`` then ``uncond``) when ``guidance_scale > 1``;
* feature chunking fits every Wan transformer block (per-token timesteps included,
  :mod:`lightcache.families.wan.chunked`); sliced decoding fits the Wan VAEs that
  :mod:`lightcache.families.wan.vae_bands` can decode exactly.

Example:
    >>> from lightcache.families import adapter_for
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline(seed=0)
    >>> adapter = adapter_for(pipe)
    >>> adapter.name, list(adapter.denoisers(pipe)), adapter.takes_image(pipe)
    ('wan', ['transformer'], False)
"""

from __future__ import annotations

from typing import Any

from ...errors import LightcacheError
from ...fields import RequestField
from ..base import FamilyAdapter

I2V_PIPELINE = "WanImageToVideoPipeline"

FLOW_SHIFT = RequestField(
    "flow_shift", "Flow shift", "the flow-matching scheduler's shift (Wan: 3.0 at 480p, 5.0 at 720p)",
    low=0.0, high=100.0)
GUIDANCE_SCALE_2 = RequestField(
    "guidance_scale_2", "Guidance (low-noise expert)",
    "two-expert models (Wan2.2 A14B): the low-noise expert's guidance scale (default: the same as the guidance)",
    low=0.0, high=30.0, optional=True)
BOUNDARY_RATIO = RequestField(
    "boundary_ratio", "Expert boundary",
    "two-expert models: the fraction of the 1000 training timesteps above which the high-noise expert runs "
    "(default: the checkpoint's)", low=0.0, high=1.0, optional=True)

#: Seconds per transformer call (one CFG branch) and the token count they were measured at (one H100, bf16; the
#: design notes' anchors). Other shapes scale with the token count; other presets use the 14B figure.
_MEASURED_CALLS = {
    "wan2.1-t2v-1.3b": (0.63, 21 * 30 * 52),
    "wan2.1-t2v-14b": (12.53, 21 * 45 * 80),
}


class WanAdapter(FamilyAdapter):
    name = "wan"
    pipeline_classes = ("WanPipeline", I2V_PIPELINE)
    denoiser_names = ("transformer", "transformer_2")
    request_fields = (FLOW_SHIFT, GUIDANCE_SCALE_2, BOUNDARY_RATIO)

    def takes_image(self, pipe) -> bool:
        return type(pipe).__name__ == I2V_PIPELINE

    def accepts_image(self, pipe) -> bool:
        """True when the pipeline can take an image: an I2V pipeline, or a TI2V one (``expand_timesteps``)."""
        return self.takes_image(pipe) or bool(getattr(pipe.config, "expand_timesteps", False))

    def pipeline_for(self, pipe, image: Any):
        if image is None or self.takes_image(pipe):
            return pipe
        if not self.accepts_image(pipe):
            raise LightcacheError(f"This {type(pipe).__name__} is text-to-video only; it takes no image.")
        from diffusers import WanImageToVideoPipeline

        # Same modules, same hooks; only the call differs (the image's latent goes into the first latent frame).
        view = WanImageToVideoPipeline.from_pipe(pipe)
        view.set_progress_bar_config(disable=True)
        return view

    def prepare(self, pipe, settings) -> None:
        config = pipe.scheduler.config
        # A request without a value of its own leaves the pipeline's setting as it is.
        shift = settings.extras.get("flow_shift")
        if shift is not None and "flow_shift" in config and config.flow_shift != shift:
            pipe.scheduler = type(pipe.scheduler).from_config(config, flow_shift=shift)
        boundary = settings.extras.get("boundary_ratio")
        if boundary is not None and getattr(pipe, "transformer_2", None) is not None:
            pipe.register_to_config(boundary_ratio=boundary)

    def calls_per_step(self, pipe, settings) -> int:
        # WanPipeline runs the unconditional branch whenever guidance_scale > 1 (for both experts).
        return 2 if settings.guidance_scale > 1.0 else 1

    def estimate_call_seconds(self, preset, frames: int, height: int, width: int) -> float | None:
        per_call, ref_tokens = _MEASURED_CALLS.get(preset.name, _MEASURED_CALLS["wan2.1-t2v-14b"])
        # The Wan2.1 VAE compresses 4x in time and 8x in space, the transformer patches 2x2: 16 pixels a token.
        tokens = ((int(frames) - 1) // 4 + 1) * (int(height) // 16) * (int(width) // 16)
        return per_call * tokens / ref_tokens

    def call_kwargs(self, pipe, settings, image: Any = None) -> dict[str, Any]:
        kwargs = self.video_kwargs(settings) | dict(
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt,
            guidance_scale=settings.guidance_scale,
            max_sequence_length=settings.max_sequence_length,
        )
        guidance_2 = settings.extras.get("guidance_scale_2")
        if getattr(pipe.config, "boundary_ratio", None) is not None and guidance_2 is not None:
            kwargs["guidance_scale_2"] = guidance_2
        if self.takes_image(pipe):
            if image is None:
                raise LightcacheError("This is an image-to-video model: give it an image to start from.")
            kwargs["image"] = image
        return kwargs

    def latent_shape(self, pipe, settings) -> tuple[int, int, int, int, int]:
        frames = (settings.frames - 1) // pipe.vae_scale_factor_temporal + 1
        channels = getattr(pipe.vae.config, "z_dim", None) or pipe.transformer.config.out_channels
        return (1, int(channels), frames, settings.height // pipe.vae_scale_factor_spatial,
                settings.width // pipe.vae_scale_factor_spatial)

    def chunked_forwards(self, denoiser):
        from .chunked import WanChunkedForwards

        return WanChunkedForwards()

    def band_decoder(self, vae):
        from .vae_bands import WanBandDecoder

        return WanBandDecoder()
