"""A tiny ``MochiPipeline`` built offline from configs, with seeded random weights.

The real parts at toy width: ``MochiTransformer3DModel`` (latents laid out (batch, channels, frames, height, width),
all 12 channels noisy, as in the real model: the pipeline hard-codes 12), ``AutoencoderKLMochi`` with the real
model's compression (the pipeline hard-codes 8x spatial and 6x temporal: ``spatial_expansions`` (2, 2, 2),
``temporal_expansions`` (1, 2, 3)) and latent statistics, at widths of 32 (its group norms have 32 groups), and a
``T5EncoderModel`` with its real tokenizer class over a tiny vocabulary (:mod:`lightcache.tiny.parts`). A 4-step
32x32, 7-frame run takes about a second on a CPU.

Example:
    >>> import torch
    >>> from lightcache.families.mochi.tiny import build_tiny_pipeline, tiny_call, tiny_inputs
    >>> pipe = build_tiny_pipeline(seed=0)
    >>> pipe(**tiny_inputs(), generator=torch.Generator().manual_seed(0), **tiny_call()).frames.shape
    (1, 7, 32, 32, 3)
"""

from __future__ import annotations

import torch

#: Latent channels: fixed at 12 by the pipeline.
LATENT_CHANNELS = 12
#: Width of the T5 text embedding.
TEXT_DIM = 32


def tiny_call(**overrides) -> dict:
    """Small ``pipe(...)`` keyword arguments that suit the tiny pipeline: 32x32, 7 frames (2 latent frames), 4 steps,
    guidance 4.5 (> 1: one batched uncond + cond transformer call per step; 1.0: one unbatched call), a 32-token
    prompt, NumPy frames."""
    return dict(height=32, width=32, num_frames=7, num_inference_steps=4, guidance_scale=4.5, max_sequence_length=32,
                output_type="np") | overrides


#: :func:`tiny_call` with no overrides.
TINY_CALL = tiny_call()
#: The keyword arguments of :func:`build_tiny_pipeline` for each variant (one here).
TINY_VARIANTS = ({},)


def tiny_inputs() -> dict:
    """What the pipeline is conditioned on: a prompt."""
    return dict(prompt="a red circle moving right")


def build_tiny_pipeline(seed: int = 0):
    """A complete ``MochiPipeline`` with random weights, in eval mode; the same ``seed`` gives the same weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, MochiPipeline

    from ...tiny.parts import tiny_t5_tokenizer

    tokenizer = tiny_t5_tokenizer(model_max_length=256)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = _t5(len(tokenizer))
        transformer = _transformer()
        vae = _vae()
    pipe = MochiPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(invert_sigmas=True), vae=vae.eval(),
        text_encoder=text_encoder.eval(), tokenizer=tokenizer, transformer=transformer.eval(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _t5(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8,
    ))


def _transformer():
    from diffusers import MochiTransformer3DModel

    return MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=16, num_layers=1, pooled_projection_dim=16,
        in_channels=LATENT_CHANNELS, text_embed_dim=TEXT_DIM, time_embed_dim=16,
    )


def _vae():
    from diffusers import AutoencoderKLMochi

    return AutoencoderKLMochi(
        latent_channels=LATENT_CHANNELS, encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1),
        add_attention_block=(False, False, False, False, False),
    )
