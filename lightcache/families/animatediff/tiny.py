"""A tiny ``AnimateDiffPipeline`` built offline from configs, with seeded random weights.

The real parts at toy width: a Stable Diffusion ``UNet2DConditionModel`` and a ``MotionAdapter``, which the pipeline
fuses into a ``UNetMotionModel`` (latents laid out (batch, channels, frames, height, width), all 4 channels noisy),
a ``CLIPTextModel`` with its real tokenizer class over a tiny vocabulary (:mod:`lightcache.tiny.parts`), an
``AutoencoderKL`` decoding frame by frame (here 4x spatial compression; the real one has 8x) and the
``DDIMScheduler`` settings diffusers documents for AnimateDiff. A 4-step 32x32, 4-frame run takes well under a
second on a CPU.

Example:
    >>> import torch
    >>> from lightcache.families.animatediff.tiny import build_tiny_pipeline, tiny_call, tiny_inputs
    >>> pipe = build_tiny_pipeline(seed=0)
    >>> pipe(**tiny_inputs(), generator=torch.Generator().manual_seed(0), **tiny_call()).frames.shape
    (1, 4, 32, 32, 3)
"""

from __future__ import annotations

import torch

#: Width of the text embedding (the UNet's cross-attention width).
TEXT_DIM = 32
#: Channel widths of the UNet's and the motion adapter's blocks (multiples of 32, their group-norm size).
BLOCK_CHANNELS = (32, 64)


def tiny_call(**overrides) -> dict:
    """Small ``pipe(prompt, ...)`` keyword arguments that suit the tiny pipeline: 32x32, 4 frames, 4 steps,
    guidance 7.5 (> 1: one batched uncond + cond UNet call per step; 1.0: one unbatched call), NumPy frames."""
    return dict(height=32, width=32, num_frames=4, num_inference_steps=4, guidance_scale=7.5,
                output_type="np") | overrides


#: :func:`tiny_call` with no overrides.
TINY_CALL = tiny_call()
#: The keyword arguments of :func:`build_tiny_pipeline` for each variant (one here).
TINY_VARIANTS = ({},)


def tiny_inputs() -> dict:
    """What the pipeline is conditioned on: a prompt."""
    return dict(prompt="a red circle moving right")


def build_tiny_pipeline(seed: int = 0):
    """A complete ``AnimateDiffPipeline`` with random weights, in eval mode; the same ``seed`` gives the same
    weights."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler

    from ...tiny.parts import tiny_clip_tokenizer

    tokenizer = tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = _clip_text(len(tokenizer))
        unet = _unet()
        motion_adapter = _motion_adapter()
        vae = _vae()
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False, steps_offset=1,
        timestep_spacing="linspace",
    )
    # The pipeline fuses the UNet and the adapter into a UNetMotionModel, as from_pretrained on a real checkpoint does.
    pipe = AnimateDiffPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet,
        motion_adapter=motion_adapter.eval(), scheduler=scheduler,
    )
    pipe.unet.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _clip_text(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))


def _unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=BLOCK_CHANNELS, layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=8,
    )


def _motion_adapter():
    from diffusers import MotionAdapter

    return MotionAdapter(
        block_out_channels=BLOCK_CHANNELS, motion_layers_per_block=1, motion_num_attention_heads=2,
        motion_max_seq_length=32, use_motion_mid_block=True,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, layers_per_block=1, sample_size=32,
    )
