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
* feature chunking fits every Wan transformer block (per-token timesteps included); sliced decoding fits the
  Wan VAEs that :mod:`lightcache.decode` can decode exactly.

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

import torch

from ..errors import LightcacheError
from .base import FamilyAdapter

I2V_PIPELINE = "WanImageToVideoPipeline"


class WanAdapter(FamilyAdapter):
    name = "wan"
    pipeline_classes = ("WanPipeline", I2V_PIPELINE)
    denoiser_names = ("transformer", "transformer_2")

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
        if "flow_shift" in config and config.flow_shift != settings.flow_shift:
            pipe.scheduler = type(pipe.scheduler).from_config(config, flow_shift=settings.flow_shift)
        boundary = getattr(settings, "boundary_ratio", None)
        if boundary is not None and getattr(pipe, "transformer_2", None) is not None:
            pipe.register_to_config(boundary_ratio=boundary)

    def call_kwargs(self, pipe, settings, image: Any = None) -> dict[str, Any]:
        kwargs = dict(
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt,
            height=settings.height,
            width=settings.width,
            num_frames=settings.frames,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            generator=torch.Generator(device="cpu").manual_seed(settings.seed),
            output_type="np",
            max_sequence_length=settings.max_sequence_length,
        )
        if getattr(pipe.config, "boundary_ratio", None) is not None and settings.guidance_scale_2 is not None:
            kwargs["guidance_scale_2"] = settings.guidance_scale_2
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

    def chunking_unsupported(self, pipe) -> str | None:
        from ..chunk import _check_supported

        try:
            for module in self.denoisers(pipe).values():
                _check_supported(module)
        except LightcacheError as exc:
            return str(exc)
        return None

    def sliced_decode_unsupported(self, pipe) -> str | None:
        from ..decode import check_sliced_decode_supported

        try:
            check_sliced_decode_supported(pipe.vae)
        except LightcacheError as exc:
            return str(exc)
        return None
