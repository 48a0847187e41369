"""The LTX-2 family: ``LTX2Pipeline`` (text to video with sound).

What differs from the defaults:

* **video and audio**: the transformer takes packed video tokens (``hidden_states``, (batch, tokens, channels):
  ``latent_layout = "BNC"``) and packed audio tokens (``audio_hidden_states``) and returns a prediction for each. The
  adapter declares ``extra_outputs = {1: "audio_hidden_states"}``: a call EasyCache reuses returns both, the video
  moved with its input as always and the audio with its own input by the audio transformation of its branch's last
  computed call;
* **three calls per step** with the pipeline's guidance defaults: classifier-free guidance batched in
  ``cache_context("cond_uncond")`` (it decides), then spatio-temporal guidance (``uncond_stg``: the positive prompt
  with some blocks' self-attention perturbed) and modality isolation guidance (``uncond_modality``: the
  audio-video cross-attention off); both follow the first call's decision. The step comes from the scheduler;
* **encoders**: a Gemma 3 text encoder whose stacked hidden states the pipeline's ``connectors`` turn into the video
  and audio prompt streams; both run in the ``encode`` stage (swapping brings both in for it);
* **decoders**: besides the video VAE, the ``audio_vae`` decodes the audio latent into a mel spectrogram and the
  ``vocoder`` turns it into a waveform; both are the family's ``decoder_names``, so the ``decode`` stage covers them
  (a stop lands inside them) and swapping keeps them parked until the decode;
* the pipeline's ``frame_rate`` (the rate the model's positions and the audio length follow) is the request's fps;
  the prompt enhancer and duration head a checkpoint may hold are never called (the run gives the frame count and
  no enhancement): idle modules;
* no feature chunking and no sliced decoding yet (refused with the reason, before anything loads).

The run returns the video; the pipeline's audio waveform (``output.audio``) is made and decoded but not kept.

No EasyCache reference setting exists for this model: its preset starts from Wan's tau, untuned.

Example:
    >>> from lightcache.families import adapter_for
    >>> from lightcache.families.ltx2.tiny import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline(seed=0)
    >>> adapter = adapter_for(pipe)
    >>> list(adapter.text_encoders(pipe)), list(adapter.decoders(pipe)), adapter.extra_outputs
    (['text_encoder', 'connectors'], ['audio_vae', 'vocoder'], {1: 'audio_hidden_states'})
"""

from __future__ import annotations

from typing import Any

from ..base import FamilyAdapter

#: The branches of one step with the pipeline's guidance defaults, in call order (the first decides).
BRANCHES = ("cond_uncond", "uncond_stg", "uncond_modality")


class LTX2Adapter(FamilyAdapter):
    name = "ltx2"
    pipeline_classes = ("LTX2Pipeline",)
    denoiser_names = ("transformer",)
    # The connectors finish the text encoding: they read the text encoder's hidden states, before any denoising.
    text_encoder_names = ("text_encoder", "connectors")
    image_encoder_names = ()
    decoder_names = ("audio_vae", "vocoder")
    idle_module_names = ("prompt_enhancer", "duration_head")
    latent_layout = "BNC"
    extra_outputs = {1: "audio_hidden_states"}

    def calls_per_step(self, pipe, settings) -> int:
        # The request sets the video guidance only; the pipeline's defaults keep its audio guidance (7.0), its
        # spatio-temporal guidance (1.0) and its modality guidance (3.0) on, so every step makes all three calls.
        return len(BRANCHES)

    def call_kwargs(self, pipe, settings, image: Any = None) -> dict[str, Any]:
        return self.video_kwargs(settings) | dict(
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt or None,
            guidance_scale=settings.guidance_scale,
            frame_rate=float(settings.fps),
            max_sequence_length=settings.max_sequence_length,
        )

    def latent_shape(self, pipe, settings) -> tuple[int, int, int, int, int]:
        frames = (settings.frames - 1) // pipe.vae_temporal_compression_ratio + 1
        scale = pipe.vae_spatial_compression_ratio
        return (1, int(pipe.transformer.config.out_channels), frames, settings.height // scale,
                settings.width // scale)
