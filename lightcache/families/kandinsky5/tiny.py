"""A tiny ``Kandinsky5T2VPipeline`` built offline from configs, with seeded random weights.

The real parts at toy width: ``Kandinsky5Transformer3DModel`` (latents laid out channel-last, (batch, frames,
height, width, channels); with ``visual_cond`` the pipeline appends a zero condition latent and a zero mask: 4 + 4 + 1
channels here, of which the scheduler steps the first 4), ``AutoencoderKLHunyuanVideo`` (here 4x spatial and 4x
temporal compression), a ``Qwen2_5_VLForConditionalGeneration`` text encoder read through the pipeline's prompt
template (its last hidden state, the first 128 tokens cropped) and a ``CLIPTextModel`` giving the pooled embedding.
One deviation: the real pipeline's ``tokenizer`` is a ``Qwen2VLProcessor``, which needs torchvision (not installed
here) for its video processor, so the tiny one is the processor's own tokenizer class, ``Qwen2Tokenizer``, which the
pipeline calls the same way for text. A 4-step 32x32, 5-frame run takes about a second on a CPU.

Example:
    >>> import torch
    >>> from lightcache.families.kandinsky5.tiny import build_tiny_pipeline, tiny_call, tiny_inputs
    >>> pipe = build_tiny_pipeline(seed=0)
    >>> pipe(**tiny_inputs(), generator=torch.Generator().manual_seed(0), **tiny_call()).frames.shape
    (1, 5, 32, 32, 3)
"""

from __future__ import annotations

import torch

#: Latent channels of the tiny VAE (the real one has 16).
LATENT_CHANNELS = 4
#: Width of the Qwen text embedding and of CLIP's pooled embedding.
TEXT_DIM = 32


def tiny_call(**overrides) -> dict:
    """Small ``pipe(...)`` keyword arguments that suit the tiny pipeline: 32x32, 5 frames (2 latent frames), 4 steps,
    guidance 5.0 (> 1: two separate transformer calls per step, conditional then unconditional; 1.0: one), a
    32-token prompt, NumPy frames."""
    return dict(height=32, width=32, num_frames=5, num_inference_steps=4, guidance_scale=5.0, max_sequence_length=32,
                output_type="np") | overrides


#: :func:`tiny_call` with no overrides.
TINY_CALL = tiny_call()
#: The keyword arguments of :func:`build_tiny_pipeline` for each variant (one here).
TINY_VARIANTS = ({},)


def tiny_inputs() -> dict:
    """What the pipeline is conditioned on: a prompt."""
    return dict(prompt="a red circle moving right")


def build_tiny_pipeline(seed: int = 0):
    """A complete ``Kandinsky5T2VPipeline`` with random weights, in eval mode; the same ``seed`` gives the same
    weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky5T2VPipeline

    from ...tiny.parts import tiny_clip_tokenizer, tiny_qwen2_tokenizer

    tokenizer, tokenizer_2 = tiny_qwen2_tokenizer(), tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = _qwen_vl(len(tokenizer))
        text_encoder_2 = _clip_text(len(tokenizer_2))
        transformer = _transformer()
        vae = _vae()
    pipe = Kandinsky5T2VPipeline(
        transformer=transformer.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
        text_encoder_2=text_encoder_2.eval(), tokenizer_2=tokenizer_2,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=10.0),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _qwen_vl(vocab_size: int):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    # The vision tower is part of the class; the pipeline only reads the language model's hidden states.
    # Multimodal rotary sections cover the 8 frequencies of a 16-wide head.
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=0,
                         eos_token_id=2, pad_token_id=0,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=TEXT_DIM,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[0]),
        image_token_id=3, video_token_id=4, vision_start_token_id=1, vision_end_token_id=2,
    ))


def _clip_text(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))


def _transformer():
    from diffusers import Kandinsky5Transformer3DModel

    # The attention heads are as wide as the rotary axes together: 4 + 6 + 6 = 16, two heads of a 32-wide model.
    return Kandinsky5Transformer3DModel(
        in_visual_dim=LATENT_CHANNELS, out_visual_dim=LATENT_CHANNELS, in_text_dim=TEXT_DIM, in_text_dim2=TEXT_DIM,
        time_dim=16, patch_size=(1, 2, 2), model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=1,
        axes_dims=(4, 6, 6), visual_cond=True,
    )


def _vae():
    from diffusers import AutoencoderKLHunyuanVideo

    # Three blocks: two spatial and two temporal downsamplings (4x / 4x); the real VAE has four (8x / 4x).
    return AutoencoderKLHunyuanVideo(
        latent_channels=LATENT_CHANNELS, block_out_channels=(8, 8, 8),
        down_block_types=("HunyuanVideoDownBlock3D",) * 3, up_block_types=("HunyuanVideoUpBlock3D",) * 3,
        layers_per_block=1, norm_num_groups=4, spatial_compression_ratio=4, temporal_compression_ratio=4,
    )
