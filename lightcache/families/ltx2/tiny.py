"""A tiny ``LTX2Pipeline`` built offline from configs, with seeded random weights: video and audio.

The real parts at toy width: ``LTX2VideoTransformer3DModel`` (packed video tokens and packed audio tokens in, a
video and an audio prediction out), ``AutoencoderKLLTX2Video``, the audio branch (``AutoencoderKLLTX2Audio`` over
mel spectrograms and the ``LTX2Vocoder`` turning them into a waveform), the ``LTX2TextConnectors`` that turn the
text encoder's stacked hidden states into the video and audio prompt streams, and a ``Gemma3ForConditionalGeneration``
text encoder with its real tokenizer class over a tiny vocabulary (:mod:`lightcache.tiny.parts`). A 4-step 32x32,
9-frame run takes about a second on a CPU.

Example:
    >>> import torch
    >>> from lightcache.families.ltx2.tiny import build_tiny_pipeline, tiny_call, tiny_inputs
    >>> pipe = build_tiny_pipeline(seed=0)
    >>> out = pipe(**tiny_inputs(), generator=torch.Generator().manual_seed(0), **tiny_call())
    >>> out.frames.shape, out.audio.shape[:2]
    ((1, 9, 32, 32, 3), torch.Size([1, 2]))
"""

from __future__ import annotations

import torch

#: Latent channels of the tiny video VAE (the real one has 128).
LATENT_CHANNELS = 4
#: Width of the text encoder's hidden states and of the connectors' output streams.
TEXT_DIM = 32
#: Mel bins and latent channels of the tiny audio VAE; the audio tokens carry both (after the VAE's 4x mel
#: compression): 2 x 8 / 4 = 4 channels.
MEL_BINS, AUDIO_LATENT_CHANNELS = 8, 2
#: Channels of an audio token, and the width of the audio VAE's latent statistics.
AUDIO_TOKEN_CHANNELS = AUDIO_LATENT_CHANNELS * MEL_BINS // 4


def tiny_call(**overrides) -> dict:
    """Small ``pipe(...)`` keyword arguments that suit the tiny pipeline: 32x32, 9 frames, 4 steps, a 32-token prompt,
    NumPy frames, and the pipeline's own guidance defaults (classifier-free, spatio-temporal and modality guidance
    all on: three transformer calls per step) except ``spatio_temporal_guidance_blocks``, which names block 0 (the
    default names block 28, which the one-block tiny transformer does not have)."""
    return dict(height=32, width=32, num_frames=9, frame_rate=24.0, num_inference_steps=4, max_sequence_length=32,
                spatio_temporal_guidance_blocks=[0], output_type="np") | overrides


#: :func:`tiny_call` with no overrides.
TINY_CALL = tiny_call()
#: The keyword arguments of :func:`build_tiny_pipeline` for each variant (one here).
TINY_VARIANTS = ({},)


def tiny_inputs() -> dict:
    """What the pipeline is conditioned on: a prompt."""
    return dict(prompt="a red circle moving right")


def build_tiny_pipeline(seed: int = 0):
    """A complete ``LTX2Pipeline`` with random weights, in eval mode; the same ``seed`` gives the same weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTX2Pipeline

    from ...tiny.parts import tiny_gemma_tokenizer

    tokenizer = tiny_gemma_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = _gemma3(len(tokenizer))
        connectors = _connectors(text_encoder.config.text_config.num_hidden_layers)
        transformer = _transformer()
        vae = _vae()
        audio_vae = _audio_vae()
        vocoder = _vocoder()
    pipe = LTX2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae.eval(), audio_vae=audio_vae.eval(),
        text_encoder=text_encoder.eval(), tokenizer=tokenizer, connectors=connectors.eval(),
        transformer=transformer.eval(), vocoder=vocoder.eval(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _gemma3(vocab_size: int):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    # The vision tower is part of the class; the pipeline only reads the language model's hidden states.
    config = Gemma3Config(
        text_config=dict(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
                         sliding_window=64, pad_token_id=0, eos_token_id=1, bos_token_id=2),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4, image_token_index=4, boi_token_index=2, eoi_token_index=1,
    )
    return Gemma3ForConditionalGeneration(config)


def _connectors(text_layers: int):
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors

    # The connectors read every hidden state of the text encoder stacked: its layers and the embeddings.
    return LTX2TextConnectors(
        caption_channels=TEXT_DIM, text_proj_in_factor=text_layers + 1, video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=16, video_connector_num_layers=1,
        video_connector_num_learnable_registers=None, audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=16, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, connector_rope_base_seq_len=32, rope_double_precision=False,
        rope_type="split",
    )


def _transformer():
    from diffusers import LTX2VideoTransformer3DModel

    return LTX2VideoTransformer3DModel(
        in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, patch_size=1, patch_size_t=1,
        num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
        audio_in_channels=AUDIO_TOKEN_CHANNELS, audio_out_channels=AUDIO_TOKEN_CHANNELS,
        audio_num_attention_heads=2, audio_attention_head_dim=8, audio_cross_attention_dim=16, num_layers=1,
        caption_channels=TEXT_DIM, rope_double_precision=False, rope_type="split",
    )


def _vae():
    from diffusers import AutoencoderKLLTX2Video

    vae = AutoencoderKLLTX2Video(
        latent_channels=LATENT_CHANNELS, block_out_channels=(8,), decoder_block_out_channels=(8,),
        layers_per_block=(1,), decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
        decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False), downsample_type=("spatial",),
        upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=False, patch_size=2, patch_size_t=1,
        encoder_causal=True, decoder_causal=False,
    )
    return vae


def _audio_vae():
    from diffusers import AutoencoderKLLTX2Audio

    # Its latent statistics have base_channels entries, one per packed audio channel (the real VAE: 128 = 8 x 64 / 4).
    return AutoencoderKLLTX2Audio(
        base_channels=AUDIO_TOKEN_CHANNELS, output_channels=2, ch_mult=(1,), num_res_blocks=1, in_channels=2,
        resolution=32, latent_channels=AUDIO_LATENT_CHANNELS, mel_bins=MEL_BINS, sample_rate=16000,
        mel_hop_length=160,
    )


def _vocoder():
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    return LTX2Vocoder(
        in_channels=2 * MEL_BINS, hidden_channels=16, out_channels=2, upsample_kernel_sizes=[4, 4],
        upsample_factors=[2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], output_sampling_rate=16000,
    )
