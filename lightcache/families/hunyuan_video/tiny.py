"""A tiny ``HunyuanVideoPipeline`` built offline from configs, with seeded random weights.

The real parts at toy width: ``HunyuanVideoTransformer3DModel`` (dual-stream, then single-stream blocks, a token
refiner, embedded guidance), ``AutoencoderKLHunyuanVideo`` (here 4x spatial and 4x temporal compression), a
``LlamaModel`` text encoder read through the pipeline's prompt template (its third-last hidden state, as in the
real model) and a ``CLIPTextModel`` giving the pooled projection, each with its real tokenizer class over a tiny
vocabulary (:mod:`lightcache.tiny.parts`). The pipeline crops the first 95 tokens (the real tokenizer's length of
the template before the prompt); with the tiny vocabulary that part is 99 tokens long, so the prompt survives the
crop. A 4-step 32x32, 5-frame run takes well under a second on a CPU.

Example:
    >>> import torch
    >>> from lightcache.families.hunyuan_video.tiny import build_tiny_pipeline, tiny_call, tiny_inputs
    >>> pipe = build_tiny_pipeline(seed=0)
    >>> pipe(**tiny_inputs(), generator=torch.Generator().manual_seed(0), **tiny_call()).frames.shape
    (1, 5, 32, 32, 3)
"""

from __future__ import annotations

import torch

#: Latent channels of the tiny VAE (the real model has 16).
LATENT_CHANNELS = 4


def tiny_call(**overrides) -> dict:
    """Small ``pipe(...)`` keyword arguments that suit the tiny pipeline: 32x32, 5 frames (2 latent frames), 4 steps,
    embedded guidance 6.0 (one transformer call per step; ``true_cfg_scale`` > 1 with a negative prompt adds a
    second), NumPy frames."""
    return dict(height=32, width=32, num_frames=5, num_inference_steps=4, guidance_scale=6.0, output_type="np",
                max_sequence_length=32) | overrides


#: :func:`tiny_call` with no overrides.
TINY_CALL = tiny_call()
#: The keyword arguments of :func:`build_tiny_pipeline` for each variant (one here).
TINY_VARIANTS = ({},)


def tiny_inputs() -> dict:
    """What the pipeline is conditioned on: a prompt."""
    return dict(prompt="a red circle moving right")


def build_tiny_pipeline(seed: int = 0):
    """A complete ``HunyuanVideoPipeline`` with random weights, in eval mode; the same ``seed`` gives the same
    weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    from ...tiny.parts import tiny_clip_tokenizer, tiny_llama_tokenizer

    tokenizer, tokenizer_2 = tiny_llama_tokenizer(), tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = _llama(len(tokenizer))
        text_encoder_2 = _clip_text(len(tokenizer_2))
        transformer = _transformer()
        vae = _vae()
    pipe = HunyuanVideoPipeline(
        text_encoder=text_encoder.eval(), tokenizer=tokenizer, transformer=transformer.eval(), vae=vae.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=tokenizer_2,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _llama(vocab_size: int):
    from transformers import LlamaConfig, LlamaModel

    # Three layers: the pipeline reads the third-last hidden state (it skips the last two layers).
    return LlamaModel(LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
    ))


def _clip_text(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))


def _transformer():
    from diffusers import HunyuanVideoTransformer3DModel

    return HunyuanVideoTransformer3DModel(
        in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_attention_heads=2, attention_head_dim=16,
        num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1,
        text_embed_dim=32, pooled_projection_dim=32, rope_axes_dim=(4, 6, 6), guidance_embeds=True,
    )


def _vae():
    from diffusers import AutoencoderKLHunyuanVideo

    # Three blocks: two spatial and two temporal downsamplings (4x / 4x); the real VAE has four (8x / 4x).
    return AutoencoderKLHunyuanVideo(
        latent_channels=LATENT_CHANNELS, block_out_channels=(8, 8, 8),
        down_block_types=("HunyuanVideoDownBlock3D",) * 3, up_block_types=("HunyuanVideoUpBlock3D",) * 3,
        layers_per_block=1, norm_num_groups=4, spatial_compression_ratio=4, temporal_compression_ratio=4,
    )
