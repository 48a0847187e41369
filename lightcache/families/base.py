"""What a model family tells the rest of lightcache: the only place where diffusers' pipelines differ for us.

A run is the pipeline's own ``pipe(...)``; the accelerations attach to its modules. What really differs between
families is small, and it is all here, as one :class:`FamilyAdapter` subclass per family (``wan.py``, and later
``hunyuan.py``, ``cogvideox.py``, ``ltx.py``, ``mochi.py``, ``unet.py``):

* which modules denoise (two experts in Wan2.2 A14B), which encode text, which encode images;
* where the noisy latent sits in a denoiser's input (channel axis; the condition channels are found from the
  model's own in/out channels) and which extra outputs move with which input (LTX-2's audio);
* which keyword arguments a run passes to ``pipe(...)`` and which pipeline settings it sets first (flow shift,
  the expert boundary);
* which feature-chunking and sliced-decoding code fits its blocks and its VAE, or why none does;
* which blocks torch.compile compiles (the ones the model names in ``_repeated_blocks`` by default).

How a call's step and branch are found is not per family: :mod:`lightcache.calls` reads diffusers' cache context
where the pipeline gives one and the scheduler otherwise.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch


class FamilyAdapter:
    """Defaults that fit most diffusers video pipelines; a family overrides what differs.

    Adapters hold no state: one instance serves every pipeline of its family.
    """

    #: The preset ``family`` value, e.g. ``"wan"``.
    name: ClassVar[str] = ""
    #: diffusers pipeline class names this adapter serves.
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    #: Attribute names of the denoisers, in the order a run uses them; absent ones are skipped.
    denoiser_names: ClassVar[tuple[str, ...]] = ("transformer",)
    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder",)
    image_encoder_names: ClassVar[tuple[str, ...]] = ("image_encoder",)
    #: The channel axis of the denoiser's latent input: 1 for (B, C, F, H, W), 2 for (B, F, C, H, W).
    latent_channel_axis: ClassVar[int] = 1
    #: Output index -> input keyword of the input that output moves with, for denoisers with several outputs.
    extra_outputs: ClassVar[dict[int, str]] = {}

    # --- modules ---------------------------------------------------------------------------------------
    def denoisers(self, pipe) -> dict[str, torch.nn.Module]:
        """``name -> module`` for every denoiser the pipeline has, in run order."""
        return _present(pipe, self.denoiser_names)

    def text_encoders(self, pipe) -> dict[str, torch.nn.Module]:
        return _present(pipe, self.text_encoder_names)

    def image_encoders(self, pipe) -> dict[str, torch.nn.Module]:
        return _present(pipe, self.image_encoder_names)

    def vae(self, pipe) -> torch.nn.Module | None:
        vae = getattr(pipe, "vae", None)
        return vae if isinstance(vae, torch.nn.Module) else None

    # --- what a run is -----------------------------------------------------------------------------------
    def takes_image(self, pipe) -> bool:
        """True when ``pipe(...)`` needs an ``image`` (an image-to-video pipeline)."""
        return False

    def pipeline_for(self, pipe, image: Any):
        """The pipeline to call for this request: ``pipe`` itself, or a view of it that takes the image."""
        return pipe

    def prepare(self, pipe, settings) -> None:
        """Set what the request changes on the pipeline itself before the call (scheduler shift...)."""

    def call_kwargs(self, pipe, settings, image: Any = None) -> dict[str, Any]:
        """Keyword arguments of ``pipe(...)`` for one request (``output_type="np"``, a seeded CPU generator)."""
        raise NotImplementedError

    def latent_shape(self, pipe, settings) -> tuple[int, int, int, int, int]:
        """(batch, channels, frames, height, width) of the latent the run denoises and decodes."""
        raise NotImplementedError

    # --- memory strategies -------------------------------------------------------------------------------
    def chunking_unsupported(self, pipe) -> str | None:
        """Why feature chunking cannot run on this pipeline's denoisers, or None when it can."""
        return f"Feature chunking has no implementation for the {self.name or type(pipe).__name__} family yet."

    def repeated_blocks(self, denoiser: torch.nn.Module) -> list[torch.nn.Module]:
        """The blocks of ``denoiser`` that compile compiles: those its class names in ``_repeated_blocks`` (what
        diffusers' ``compile_repeated_blocks`` uses), else its block list. A family whose models name neither
        overrides this."""
        from ..compile import find_repeated_blocks

        return find_repeated_blocks(denoiser)

    def sliced_decode_unsupported(self, pipe) -> str | None:
        """Why sliced decoding cannot run on this pipeline's VAE, or None when it can."""
        return f"Sliced decoding has no implementation for the {self.name or type(pipe).__name__} family yet."

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _present(pipe, names) -> dict[str, torch.nn.Module]:
    out = {}
    for name in names:
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            out[name] = module
    return out
