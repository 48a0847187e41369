"""Tiny random-weight pipelines of every Wan variant, built offline from configs, for tests and smoke runs.

Each keeps what makes its variant different at a size that runs a whole generation in about a second on a CPU:

* ``wan2.1-i2v``: ``WanImageToVideoPipeline`` with a CLIP image encoder and image processor, a transformer taking
  noisy + mask + condition channels (36 = 16 + 4 + 16 in the real model) with image cross-attention;
* ``wan2.2-ti2v``: ``WanPipeline`` with ``expand_timesteps`` (per-token timesteps), a 48-channel latent and the
  Wan2.2 VAE (residual up blocks, patchified output, 16x spatial compression);
* ``wan2.2-t2v-a14b``: ``WanPipeline`` with two experts (``transformer``, ``transformer_2``) and ``boundary_ratio``;
* ``wan2.2-i2v-a14b``: ``WanImageToVideoPipeline`` with two experts, no image encoder.

The same ``seed`` always gives the same weights. :func:`save_tiny_variant` writes one with ``save_pretrained`` so
the real ``from_pretrained`` path can be tested on it.

Example:
    >>> import torch
    >>> from PIL import Image
    >>> from lightcache.tiny.variants import build_tiny_variant
    >>> pipe = build_tiny_variant("wan2.1-i2v")
    >>> out = pipe(image=Image.new("RGB", (32, 32), "red"), prompt="a red circle", num_inference_steps=2,
    ...            height=32, width=32, num_frames=5, generator=torch.Generator().manual_seed(0), output_type="np")
    >>> out.frames.shape
    (1, 5, 32, 32, 3)
"""

from __future__ import annotations

from pathlib import Path

import torch

from .pipeline import (
    _tiny_scheduler, _tiny_text_encoder, build_tiny_pipeline, build_tiny_tokenizer, build_tiny_wan22_pipeline,
)

#: Variant name -> one-line description; the names follow the presets' model names.
VARIANTS = {
    "wan2.1-t2v": "Wan2.1 text-to-video (WanPipeline)",
    "wan2.1-i2v": "Wan2.1 image-to-video with a CLIP image encoder (WanImageToVideoPipeline)",
    "wan2.2-ti2v": "Wan2.2 TI2V-5B: Wan2.2 VAE, per-token timesteps (WanPipeline, expand_timesteps)",
    "wan2.2-t2v-a14b": "Wan2.2 T2V-A14B: two experts split at boundary_ratio (WanPipeline)",
    "wan2.2-i2v-a14b": "Wan2.2 I2V-A14B: two experts, no image encoder (WanImageToVideoPipeline)",
}

#: The experts' switch point the tiny A14B variants are built with (the real T2V-A14B uses 0.875).
TINY_BOUNDARY_RATIO = 0.875


def build_tiny_variant(variant: str, seed: int = 0):
    """A complete pipeline of ``variant`` (a key of :data:`VARIANTS`) with seeded random weights, in eval mode."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown tiny variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    from diffusers import WanImageToVideoPipeline, WanPipeline

    if variant == "wan2.1-t2v":
        return build_tiny_pipeline(seed=seed)
    if variant == "wan2.2-ti2v":
        return build_tiny_wan22_pipeline(seed=seed)
    image_to_video = variant in ("wan2.1-i2v", "wan2.2-i2v-a14b")
    two_experts = variant.endswith("a14b")
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = _tiny_text_encoder(tokenizer)
        vae = _wan21_vae()
        z_dim = vae.config.z_dim
        # Image-to-video concatenates the mask (one channel per frame of a latent step) and the condition.
        in_channels = z_dim + vae.config.scale_factor_temporal + z_dim if image_to_video else z_dim
        image_dim = 32 if variant == "wan2.1-i2v" else None
        transformer = _transformer(in_channels, z_dim, image_dim)
        transformer_2 = _transformer(in_channels, z_dim, image_dim) if two_experts else None
        image_encoder = image_processor = None
        if variant == "wan2.1-i2v":
            image_encoder, image_processor = _clip_image_encoder()
    common = dict(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(),
                  transformer=transformer.eval(), scheduler=_tiny_scheduler(),
                  transformer_2=transformer_2.eval() if transformer_2 is not None else None,
                  boundary_ratio=TINY_BOUNDARY_RATIO if two_experts else None)
    if image_to_video:
        pipe = WanImageToVideoPipeline(
            image_encoder=image_encoder.eval() if image_encoder is not None else None,
            image_processor=image_processor, **common,
        )
    else:
        pipe = WanPipeline(**common)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_variant(variant: str, path: str | Path, seed: int = 0) -> Path:
    """Build ``variant`` and ``save_pretrained`` it into ``path``; returns the path."""
    path = Path(path)
    build_tiny_variant(variant, seed=seed).save_pretrained(path)
    return path


# --- parts ---------------------------------------------------------------------------------------------------
def _transformer(in_channels: int, out_channels: int, image_dim: int | None):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=in_channels,
        out_channels=out_channels, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, rope_max_seq_len=64,
        image_dim=image_dim, added_kv_proj_dim=32 if image_dim else None,
    )


def _wan21_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4, scale_factor_spatial=4, scale_factor_temporal=2,
    )


def _clip_image_encoder():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    encoder = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=32,
    ))
    processor = CLIPImageProcessor(crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32})
    return encoder, processor
