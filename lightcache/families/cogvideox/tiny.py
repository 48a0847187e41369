"""Tiny CogVideoX pipelines built offline from configs, with seeded random weights.

``task="t2v"`` gives a ``CogVideoXPipeline``, ``task="i2v"`` a ``CogVideoXImageToVideoPipeline``; ``version="1.0"``
has CogVideoX-5B's layout (2x2 patches, rotary position embeddings, and for image-to-video learned ones too),
``version="1.5"`` CogVideoX1.5-5B's (2x2x2 patches: the pipeline pads the latent frames to an even count; image
-to-video adds the ``ofs`` embedding and the VAE's inverted latent scale). The real parts at toy width:
``CogVideoXTransformer3DModel`` (latents laid out (batch, frames, channels, height, width); image-to-video
concatenates the first frame's latent on the channel axis: 4 noisy + 4 condition channels here, 16 + 16 in the real
model), ``AutoencoderKLCogVideoX`` (here 4x spatial, 4x temporal compression; the real one has 8x / 4x), a
``T5EncoderModel`` with its real tokenizer class over a tiny vocabulary (:mod:`lightcache.tiny.parts`) and
CogVideoX-5B's ``CogVideoXDDIMScheduler`` settings. A 4-step 32x32, 9-frame run takes well under a second on a CPU.

Example:
    >>> import torch
    >>> from lightcache.families.cogvideox.tiny import build_tiny_pipeline, tiny_call, tiny_inputs
    >>> pipe = build_tiny_pipeline(seed=0, task="i2v", version="1.0")
    >>> pipe(**tiny_inputs("i2v"), generator=torch.Generator().manual_seed(0), **tiny_call("i2v")).frames.shape
    (1, 9, 32, 32, 3)
"""

from __future__ import annotations

import torch

#: The variants: text-to-video and image-to-video, each in the 1.0 and the 1.5 layout.
TASKS = ("t2v", "i2v")
VERSIONS = ("1.0", "1.5")
#: Latent channels of the tiny VAE (the real one has 16).
LATENT_CHANNELS = 4
#: Width of the T5 text embedding.
TEXT_DIM = 32
#: Side of the videos, in pixels, and of their latents.
SIZE, LATENT_SIZE = 32, 8


def _check(task: str, version: str = "1.0") -> None:
    if task not in TASKS:
        raise ValueError(f"Unknown CogVideoX task {task!r}; choose one of {', '.join(TASKS)}.")
    if version not in VERSIONS:
        raise ValueError(f"Unknown CogVideoX version {version!r}; choose one of {', '.join(VERSIONS)}.")


def tiny_call(task: str = "t2v", version: str = "1.0", **overrides) -> dict:
    """Small ``pipe(...)`` keyword arguments that suit the tiny pipelines: 32x32, 9 frames (3 latent frames: the
    VAE decodes an odd count of latent frames to 4n + 1 frames, an even one to more), 4 steps, guidance 6.0 (> 1:
    one batched uncond + cond transformer call per step; 1.0: one unbatched call), NumPy frames. The prompt length
    is the model's 226 tokens."""
    _check(task, version)
    return dict(height=SIZE, width=SIZE, num_frames=9, num_inference_steps=4, guidance_scale=6.0,
                output_type="np") | overrides


#: :func:`tiny_call` of text-to-video with no overrides.
TINY_CALL = tiny_call()
#: The keyword arguments of :func:`build_tiny_pipeline` for each tested variant (the presets' three models).
TINY_VARIANTS = (dict(task="t2v", version="1.0"), dict(task="t2v", version="1.5"), dict(task="i2v", version="1.0"))


def tiny_inputs(task: str = "t2v", version: str = "1.0") -> dict:
    """What the pipeline of ``task`` is conditioned on: a prompt, and for image-to-video a 32x32 first frame."""
    _check(task, version)
    from ...tiny.parts import tiny_image

    return dict(prompt="a red circle moving right") | (dict(image=tiny_image(SIZE)) if task == "i2v" else {})


def build_tiny_pipeline(seed: int = 0, task: str = "t2v", version: str = "1.0"):
    """A complete CogVideoX pipeline of ``task`` and ``version`` with random weights, in eval mode; the same
    ``seed`` gives the same weights."""
    _check(task, version)
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXPipeline

    from ...tiny.parts import tiny_t5_tokenizer

    tokenizer = tiny_t5_tokenizer(model_max_length=226)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = _t5(len(tokenizer))
        transformer = _transformer(task, version)
        vae = _vae(invert_scale_latents=(task, version) == ("i2v", "1.5"))
    pipeline_class = CogVideoXImageToVideoPipeline if task == "i2v" else CogVideoXPipeline
    pipe = pipeline_class(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(),
                          transformer=transformer.eval(), scheduler=_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _t5(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8,
    ))


def _transformer(task: str, version: str):
    from diffusers import CogVideoXTransformer3DModel

    image_to_video = task == "i2v"
    one_five = version == "1.5"
    return CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=LATENT_CHANNELS * (2 if image_to_video else 1),
        out_channels=LATENT_CHANNELS, time_embed_dim=32, text_embed_dim=TEXT_DIM, num_layers=1,
        # The positional tables are sized for the tiny videos: 8x8 latents, 9 frames; 226 text tokens as the model.
        sample_width=LATENT_SIZE, sample_height=LATENT_SIZE, sample_frames=9, patch_size=2,
        patch_size_t=2 if one_five else None, max_text_seq_length=226, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=image_to_video and not one_five,
        ofs_embed_dim=32 if image_to_video and one_five else None,
    )


def _vae(invert_scale_latents: bool):
    from diffusers import AutoencoderKLCogVideoX

    # Three blocks, the first two compressing space and time (4x / 4x); the real VAE has four (8x / 4x).
    return AutoencoderKLCogVideoX(
        down_block_types=("CogVideoXDownBlock3D",) * 3, up_block_types=("CogVideoXUpBlock3D",) * 3,
        block_out_channels=(8, 16, 16), latent_channels=LATENT_CHANNELS, layers_per_block=1, norm_num_groups=4,
        temporal_compression_ratio=4, sample_height=SIZE, sample_width=SIZE, scaling_factor=0.7,
        invert_scale_latents=invert_scale_latents,
    )


def _scheduler():
    from diffusers import CogVideoXDDIMScheduler

    return CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True, snr_shift_scale=1.0,
        timestep_spacing="trailing", steps_offset=0,
    )
