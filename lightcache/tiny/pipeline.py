"""Tiny Wan pipelines built offline from configs, with seeded random weights.

They have the real Wan architecture (``WanTransformer3DModel``, ``AutoencoderKLWan``, ``UMT5EncoderModel``) at a
size that runs a whole generation in well under a second on a CPU, which is what the tests and the smoke runs
need. Random weights draw noise, not shapes: the model the app ships by default is the trained one in
``lightcache/data/tiny-wan``. :func:`build_tiny_pipeline` is Wan2.1-shaped; :func:`build_tiny_wan22_pipeline` (with
:func:`build_tiny_wan22_vae` and :func:`build_tiny_wan22_transformer`) has the Wan2.2-TI2V-5B layout: the residual,
patchified 48-channel VAE and per-token timesteps.

Example:
    >>> import torch
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline(seed=0)
    >>> pipe("a red circle", num_inference_steps=2, height=32, width=32, num_frames=5,
    ...      generator=torch.Generator().manual_seed(0), output_type="np").frames.shape
    (1, 5, 32, 32, 3)
"""

from __future__ import annotations

import torch

#: Words the tiny tokenizer knows; anything else maps to ``<unk>``.
TINY_WORDS = (
    "a an the and on of with moving left right up down circle square triangle "
    "red green blue yellow white black gray background"
).split()


def build_tiny_tokenizer(words=TINY_WORDS):
    """A T5 tokenizer over a fixed word list, built without any sentencepiece file or download."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in words]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_tiny_pipeline(
    seed: int = 0,
    num_layers: int = 2,
    dim_head: int = 16,
    heads: int = 2,
    ffn_dim: int = 64,
    z_dim: int = 4,
):
    """A complete ``WanPipeline`` with random weights, in eval mode, 4x spatial / 2x temporal VAE compression.

    The same ``seed`` always gives the same weights.
    """
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = _tiny_text_encoder(tokenizer)
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=heads,
            attention_head_dim=dim_head,
            in_channels=z_dim,
            out_channels=z_dim,
            text_dim=32,
            freq_dim=32,
            ffn_dim=ffn_dim,
            num_layers=num_layers,
            rope_max_seq_len=64,
        )
        vae = AutoencoderKLWan(
            base_dim=8,
            z_dim=z_dim,
            dim_mult=[1, 2, 2],
            num_res_blocks=1,
            temperal_downsample=[False, True],
            latents_mean=[0.0] * z_dim,
            latents_std=[1.0] * z_dim,
            scale_factor_spatial=4,
            scale_factor_temporal=2,
        )
    scheduler = _tiny_scheduler()
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(), transformer=transformer.eval(),
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tiny_text_encoder(tokenizer):
    """A 2-layer UMT5 encoder with 32-wide outputs (the tiny transformers' ``text_dim``); seed the RNG first."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=8)
    return UMT5EncoderModel(config)


def _tiny_scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    )


def build_tiny_wan22_pipeline(seed: int = 0):
    """A ``WanPipeline`` in the Wan2.2-TI2V-5B configuration, random weights, eval mode.

    :func:`build_tiny_wan22_transformer` and :func:`build_tiny_wan22_vae` (16x spatial / 4x temporal compression,
    48 latent channels) with ``expand_timesteps=True``: the transformer gets one timestep per token, shape
    (batch, tokens). Sizes are multiples of 32 (the VAE's 16 times the transformer's 2x2 patches).

    Example:
        >>> import torch
        >>> from lightcache.tiny import build_tiny_wan22_pipeline
        >>> pipe = build_tiny_wan22_pipeline(seed=0)
        >>> pipe("a red circle", num_inference_steps=2, height=64, width=64, num_frames=5,
        ...      generator=torch.Generator().manual_seed(0), output_type="np").frames.shape
        (1, 5, 64, 64, 3)
    """
    from diffusers import WanPipeline

    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = _tiny_text_encoder(tokenizer)
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=build_tiny_wan22_vae(seed),
        transformer=build_tiny_wan22_transformer(seed), scheduler=_tiny_scheduler(), expand_timesteps=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_wan22_vae(seed: int = 0, base_dim: int = 8, decoder_base_dim: int = 12, z_dim: int = 48):
    """A Wan2.2 (TI2V-5B) style ``AutoencoderKLWan`` with random weights, in eval mode.

    The same layout as the Wan2.2-TI2V-5B VAE (``is_residual=True``: residual up/down blocks with ``DupUp3D`` /
    ``AvgDown3D`` shortcuts; ``patch_size=2``: 12 pixel-space channels; 48 latent channels; ``dim_mult`` [1, 2, 4, 4]
    and 2 residual blocks per stage; 16x spatial and 4x temporal compression; a decoder wider than the encoder), at
    base widths of 8 / 12 channels instead of 160 / 256. The same ``seed`` always gives the same weights.

    Example:
        >>> import torch
        >>> from lightcache.tiny import build_tiny_wan22_vae
        >>> vae = build_tiny_wan22_vae(seed=0)
        >>> vae.config.z_dim, vae.config.patch_size, vae.config.scale_factor_spatial, vae.config.is_residual
        (48, 2, 16, True)
        >>> with torch.no_grad():
        ...     vae.decode(torch.randn(1, 48, 2, 2, 3)).sample.shape
        torch.Size([1, 3, 5, 32, 48])
    """
    from diffusers import AutoencoderKLWan

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(
            base_dim=base_dim,
            decoder_base_dim=decoder_base_dim,
            z_dim=z_dim,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=2,
            attn_scales=[],
            temperal_downsample=[False, True, True],
            is_residual=True,
            in_channels=12,
            out_channels=12,
            patch_size=2,
            latents_mean=[0.0] * z_dim,
            latents_std=[1.0] * z_dim,
            scale_factor_spatial=16,
            scale_factor_temporal=4,
        )
    return vae.eval()


def build_tiny_wan22_transformer(seed: int = 0, num_layers: int = 2, dim_head: int = 16, heads: int = 2):
    """A ``WanTransformer3DModel`` with the Wan2.2-TI2V-5B layout at toy width, random weights, eval mode.

    48 latent channels in and out, (1, 2, 2) patches, RMS q/k norm across heads, cross-attention norm, the 5B
    model's feed-forward ratio (14336 / 3072) and no image branch. It takes ``timestep`` of shape (batch,) or,
    as ``WanPipeline`` passes it with ``expand_timesteps=True``, one timestep per token (batch, tokens).

    Example:
        >>> import torch
        >>> from lightcache.tiny import build_tiny_wan22_transformer
        >>> transformer = build_tiny_wan22_transformer(seed=0)
        >>> x = torch.randn(1, 48, 2, 4, 4)                       # 2 x 2 x 2 = 8 tokens
        >>> t = torch.full((1, 8), 700.0)
        >>> with torch.no_grad():
        ...     transformer(x, t, torch.randn(1, 5, 32), return_dict=False)[0].shape
        torch.Size([1, 48, 2, 4, 4])
    """
    from diffusers import WanTransformer3DModel

    dim = heads * dim_head
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=heads,
            attention_head_dim=dim_head,
            in_channels=48,
            out_channels=48,
            text_dim=32,
            freq_dim=32,
            ffn_dim=round(dim * 14336 / 3072),
            num_layers=num_layers,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            rope_max_seq_len=64,
        )
    return transformer.eval()
