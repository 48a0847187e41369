"""What a model family tells the rest of lightcache: the only place where diffusers' pipelines differ for us.

A run is the pipeline's own ``pipe(...)``; the accelerations attach to its modules. What really differs between
families is small, and it is all here, as one :class:`FamilyAdapter` subclass per family, each in its own folder
(``families/wan/``):

* which modules denoise (two experts in Wan2.2 A14B), which encode text, which encode images, and which decode
  beside the VAE (LTX-2's audio VAE and vocoder);
* how the noisy latent is laid out in a denoiser's input (:attr:`FamilyAdapter.latent_layout`; the condition
  channels are found from the model's own in/out channels) and which extra outputs move with which input (LTX-2's
  audio);
* how many denoiser calls a step makes (the live trace redraws once per step) and which request fields the family
  takes beyond the core request (:class:`~lightcache.fields.RequestField`: Wan's flow shift...), read by the CLI,
  the app, the settings' validation and the presets;
* whether it takes a prompt, and how long one may be;
* which keyword arguments a run passes to ``pipe(...)`` and which pipeline settings it sets first (flow shift,
  the expert boundary);
* its feature-chunking forwards and its VAE's band decoder, or none (then those strategies are refused, saying so);
* which blocks torch.compile compiles (the ones the model names in ``_repeated_blocks`` by default).

How a call's step and branch are found is not per family: :mod:`lightcache.calls` reads diffusers' cache context
where the pipeline gives one and the scheduler (or a count of the calls) otherwise. This module loads no torch:
the CLI reads the families' request fields before anything heavy is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import LightcacheError
from ..fields import RequestField

if TYPE_CHECKING:
    import torch

#: Latent layouts a denoiser's input may have, and the channel axis of each: (B, C, F, H, W) video latents,
#: (B, F, C, H, W) ones (SVD, CogVideoX), channels-last ones (B, F, H, W, C) (Kandinsky 5) and packed tokens
#: (B, N, C) (LTX).
LATENT_LAYOUTS = {"BCFHW": 1, "BFCHW": 2, "BFHWC": -1, "BNC": -1}


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
    #: Modules the pipeline holds that no stage of a run calls (AnimateDiff's motion adapter, whose weights its
    #: pipeline copies into the UNet): swapping parks them for the whole run, so nothing stays on the GPU by omission.
    idle_module_names: ClassVar[tuple[str, ...]] = ()
    #: Modules the ``decode`` stage calls besides the VAE, in call order (LTX-2's ``audio_vae``, whose ``decode`` turns
    #: the audio latent into a spectrogram, and its ``vocoder``): the stage observer starts ``decode`` at, and checks
    #: for a stop before, each of their calls, and swapping brings them in for the decode only.
    decoder_names: ClassVar[tuple[str, ...]] = ()
    #: The layout of the denoiser's latent input, one of :data:`LATENT_LAYOUTS`. EasyCache reads the noisy latent
    #: on its channel axis; a layout that does not fit the model is a clear error at the first call.
    latent_layout: ClassVar[str] = "BCFHW"
    #: Output index -> input keyword of the input that output moves with, for denoisers with several outputs.
    extra_outputs: ClassVar[dict[int, str]] = {}
    #: Whether ``pipe(...)`` takes a text prompt (SVD takes none: a prompt given to it is refused).
    takes_prompt: ClassVar[bool] = True
    #: The settings this family takes beyond the core request, declared once (see :mod:`lightcache.fields`).
    request_fields: ClassVar[tuple[RequestField, ...]] = ()
    #: diffusers pipeline classes of this family that lightcache refuses, and why (``{class name: reason}``): a
    #: pipeline that would run but that a technique cannot follow (SkyReels-V2's diffusion forcing) is refused by
    #: name instead of running wrong, or being called unknown.
    unsupported_pipelines: ClassVar[dict[str, str]] = {}

    @property
    def latent_channel_axis(self) -> int:
        """The channel axis of the denoiser's latent input, from :attr:`latent_layout`."""
        return LATENT_LAYOUTS[self.latent_layout]

    def latent_channels(self, denoiser: torch.nn.Module) -> int | None:
        """Channels of the noisy latent in ``denoiser``'s input: what it predicts, its config's ``out_channels``
        (condition channels may follow them on the channel axis). None where the config does not say; a family whose
        models name it otherwise (Kandinsky 5: ``out_visual_dim``) overrides this."""
        config = getattr(denoiser, "config", None)
        out = getattr(config, "out_channels", None) if config is not None else None
        return int(out) if isinstance(out, int) else None

    def request_field(self, name: str) -> RequestField | None:
        """The declared request field called ``name``, or None."""
        return next((f for f in self.request_fields if f.name == name), None)

    # --- modules ---------------------------------------------------------------------------------------
    def denoisers(self, pipe) -> dict[str, torch.nn.Module]:
        """``name -> module`` for every denoiser the pipeline has, in run order."""
        return _present(pipe, self.denoiser_names)

    def text_encoders(self, pipe) -> dict[str, torch.nn.Module]:
        return _present(pipe, self.text_encoder_names)

    def image_encoders(self, pipe) -> dict[str, torch.nn.Module]:
        return _present(pipe, self.image_encoder_names)

    def idle_modules(self, pipe) -> dict[str, torch.nn.Module]:
        return _present(pipe, self.idle_module_names)

    def decoders(self, pipe) -> dict[str, torch.nn.Module]:
        """``name -> module`` for every module the decode stage calls besides the VAE."""
        return _present(pipe, self.decoder_names)

    def vae(self, pipe) -> torch.nn.Module | None:
        import torch

        vae = getattr(pipe, "vae", None)
        return vae if isinstance(vae, torch.nn.Module) else None

    def check_denoisers(self, pipe) -> None:
        """Refuse a pipeline on which this adapter finds no denoiser: nothing could be accelerated or traced, and
        attaching nothing would pass in silence."""
        if not self.denoisers(pipe):
            raise LightcacheError(
                f"The {self.name or type(self).__name__} family adapter finds no denoiser on this "
                f"{type(pipe).__name__} (it looks for {', '.join(self.denoiser_names)}): this adapter does not fit "
                "the pipeline."
            )

    # --- what a run is -----------------------------------------------------------------------------------
    def takes_image(self, pipe) -> bool:
        """True when ``pipe(...)`` needs an ``image`` (an image-to-video pipeline)."""
        return False

    def pipeline_for(self, pipe, image: Any):
        """The pipeline to call for this request: ``pipe`` itself, or a view of it that takes the image. An image
        given to a pipeline that takes none is refused."""
        if image is not None and not self.takes_image(pipe):
            raise LightcacheError(f"This {type(pipe).__name__} is text-to-video only; it takes no image.")
        return pipe

    def prepare(self, pipe, settings) -> None:
        """Set what the request changes on the pipeline itself before the call (scheduler shift...)."""

    def calls_per_step(self, pipe, settings) -> int:
        """Denoiser calls one step of this request makes (the live trace draws a step once all of them are in).

        The default is one call per step: embedded guidance, or classifier-free guidance batched into one call.
        """
        return 1

    def check_prompt(self, pipe, settings) -> None:
        """Refuse a prompt this model cannot take: any prompt where it takes none, and prompts its text encoder
        would silently truncate (the default reads ``pipe.tokenizer`` against ``settings.max_sequence_length``)."""
        texts = (("prompt", settings.prompt), ("negative_prompt", settings.negative_prompt))
        if not self.takes_prompt:
            given = [name for name, text in texts if text]
            if given:
                raise LightcacheError(f"This model takes no prompt; leave {' and '.join(given)} empty.")
            return
        tokenizer = getattr(pipe, "tokenizer", None)
        if tokenizer is None:
            return
        for name, text in texts:
            if not text:
                continue
            n_tokens = len(tokenizer(text, add_special_tokens=True).input_ids)
            if n_tokens > settings.max_sequence_length:
                raise LightcacheError(
                    f"{name} is {n_tokens} tokens long; this model's text encoder takes at most "
                    f"{settings.max_sequence_length}. Shorten it."
                )

    def estimate_call_seconds(self, preset, frames: int, height: int, width: int) -> float | None:
        """Seconds one denoiser call of ``preset``'s model takes on a GPU at this size, where the family has a
        measured anchor; None where it has none (the app then asks ZeroGPU for its longest duration)."""
        return None

    def call_kwargs(self, pipe, settings, image: Any = None) -> dict[str, Any]:
        """Keyword arguments of ``pipe(...)`` for one request (``output_type="np"``, a seeded CPU generator)."""
        raise NotImplementedError

    @staticmethod
    def video_kwargs(settings) -> dict[str, Any]:
        """What every video pipeline's call takes the same way: the size, the frames, the steps, a CPU generator
        seeded with the request's seed (the same noise on any device) and ``output_type="np"``; a family's
        ``call_kwargs`` adds its own."""
        import torch

        return dict(height=settings.height, width=settings.width, num_frames=settings.frames,
                    num_inference_steps=settings.steps,
                    generator=torch.Generator(device="cpu").manual_seed(settings.seed), output_type="np")

    def latent_shape(self, pipe, settings) -> tuple[int, int, int, int, int]:
        """(batch, channels, frames, height, width) of the latent the run denoises and decodes."""
        raise NotImplementedError

    # --- memory strategies -------------------------------------------------------------------------------
    def chunked_forwards(self, denoiser: torch.nn.Module):
        """Feature chunking's forwards for ``denoiser`` (a :class:`~lightcache.techniques.chunk.ChunkedForwards`),
        or None where the family has none."""
        return None

    def band_decoder(self, vae):
        """Sliced decoding's band decoder for ``vae`` (a :class:`~lightcache.techniques.decode.BandDecoder`), or
        None where the family has none."""
        return None

    def refused_strategies(self) -> dict[str, str]:
        """The settings this family refuses whatever the checkpoint, and why (``{"chunk_ffn": reason}``): known
        before anything loads, so a request asking for them is refused with the other bad inputs. A family that
        gives no chunked forwards or no band decoder refuses feature chunking or sliced decoding."""
        family = self.name or type(self).__name__
        refused = {}
        if type(self).chunked_forwards is FamilyAdapter.chunked_forwards:
            refused["chunk_ffn"] = (f"Feature chunking has no implementation for the {family} family yet (its "
                                    "transformer blocks have no chunked forward); turn it off.")
        if type(self).band_decoder is FamilyAdapter.band_decoder:
            refused["sliced_decode"] = (f"Sliced decoding has no implementation for the {family} family yet (its "
                                        "VAE has no exact band decoder); turn it off.")
        return refused

    def chunking_unsupported(self, pipe) -> str | None:
        """Why feature chunking cannot run on this pipeline's denoisers, or None when it can."""
        for module in self.denoisers(pipe).values():
            forwards = self.chunked_forwards(module)
            if forwards is None:
                return self.refused_strategies().get("chunk_ffn") or (
                    f"Feature chunking has no implementation for {type(module).__name__}; turn it off.")
            try:
                forwards.check(module)
            except LightcacheError as exc:
                return str(exc)
        return None

    def repeated_blocks(self, denoiser: torch.nn.Module) -> list[torch.nn.Module]:
        """The blocks of ``denoiser`` that compile compiles: those its class names in ``_repeated_blocks`` (what
        diffusers' ``compile_repeated_blocks`` uses), else its block list. A family whose models name neither
        overrides this."""
        from ..techniques.compile import find_repeated_blocks

        return find_repeated_blocks(denoiser)

    def sliced_decode_unsupported(self, pipe) -> str | None:
        """Why sliced decoding cannot run on this pipeline's VAE, or None when it can."""
        vae = self.vae(pipe)
        decoder = self.band_decoder(vae) if vae is not None else None
        if decoder is None:
            return self.refused_strategies().get("sliced_decode") or (
                f"Sliced decoding has no implementation for {type(vae).__name__}; turn it off.")
        try:
            decoder.check(vae)
        except LightcacheError as exc:
            return str(exc)
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _present(pipe, names) -> dict[str, torch.nn.Module]:
    import torch

    out = {}
    for name in names:
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            out[name] = module
    return out
