"""A tiny ``StableVideoDiffusionPipeline`` built offline from configs, with seeded random weights.

The real parts at toy width: a ``UNetSpatioTemporalConditionModel`` (latents laid out (batch, frames, channels,
height, width); 4 noisy channels and the 4 channels of the first frame's latent concatenated), a
``CLIPVisionModelWithProjection`` image encoder with its ``CLIPImageProcessor``, an ``AutoencoderKLTemporalDecoder``
(here 4x spatial compression, no temporal compression, as in the real model) and the ``EulerDiscreteScheduler``
with Karras sigmas and v-prediction that SVD uses. The pipeline takes an image and no prompt. A 4-step 32x32,
4-frame run takes about a second on a CPU.

Example:
    >>> import torch
    >>> from lightcache.families.svd.tiny import build_tiny_pipeline, tiny_call, tiny_inputs
    >>> pipe = build_tiny_pipeline(seed=0)
    >>> pipe(**tiny_inputs(), generator=torch.Generator().manual_seed(0), **tiny_call()).frames.shape
    (1, 4, 32, 32, 3)
"""

from __future__ import annotations

import torch

#: Latent channels of the VAE (as in the real model); the UNet takes twice as many (noisy + first frame).
LATENT_CHANNELS = 4
#: Width of the image embedding (the UNet's cross-attention width).
IMAGE_EMBED_DIM = 32


def tiny_call(**overrides) -> dict:
    """Small ``pipe(image, ...)`` keyword arguments that suit the tiny pipeline: 32x32, 4 frames, 4 steps, guidance
    ramping from 1.0 to 3.0 over the frames (> 1: one batched uncond + cond UNet call per step; set
    ``max_guidance_scale=1.0`` for a single unbatched call), NumPy frames."""
    return dict(height=32, width=32, num_frames=4, num_inference_steps=4, min_guidance_scale=1.0,
                max_guidance_scale=3.0, decode_chunk_size=4, output_type="np") | overrides


#: :func:`tiny_call` with no overrides.
TINY_CALL = tiny_call()
#: The keyword arguments of :func:`build_tiny_pipeline` for each variant (one here).
TINY_VARIANTS = ({},)


def tiny_inputs() -> dict:
    """What the pipeline is conditioned on: a 32x32 first frame (it takes no prompt)."""
    from ...tiny.parts import tiny_image

    return dict(image=tiny_image(32))


def build_tiny_pipeline(seed: int = 0):
    """A complete ``StableVideoDiffusionPipeline`` with random weights, in eval mode; the same ``seed`` gives the
    same weights."""
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _unet()
        image_encoder, feature_extractor = _image_encoder()
        vae = _vae()
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
        use_karras_sigmas=True, interpolation_type="linear", timestep_spacing="leading", steps_offset=1,
    )
    pipe = StableVideoDiffusionPipeline(
        vae=vae.eval(), image_encoder=image_encoder.eval(), unet=unet.eval(), scheduler=scheduler,
        feature_extractor=feature_extractor,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _unet():
    from diffusers import UNetSpatioTemporalConditionModel

    return UNetSpatioTemporalConditionModel(
        in_channels=2 * LATENT_CHANNELS, out_channels=LATENT_CHANNELS, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        # Three added time ids (fps, motion bucket, noise augmentation), each embedded to 8 values.
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=3 * 8, layers_per_block=1,
        cross_attention_dim=IMAGE_EMBED_DIM, num_attention_heads=(2, 4), num_frames=4,
    )


def _image_encoder():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224,
        patch_size=32, projection_dim=IMAGE_EMBED_DIM,
    ))
    # The pipeline resizes the image to CLIP's 224x224 itself: the encoder keeps that size, at 7x7 patches.
    processor = CLIPImageProcessor(crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224})
    return encoder, processor


def _vae():
    from diffusers import AutoencoderKLTemporalDecoder

    # Three blocks: 4x spatial compression (the real VAE has four, 8x); widths of 32, the VAE's group-norm size.
    return AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3, layers_per_block=1,
        latent_channels=LATENT_CHANNELS, sample_size=32,
    )
