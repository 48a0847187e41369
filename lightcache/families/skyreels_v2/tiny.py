"""Tiny SkyReels-V2 pipelines built offline from configs, with seeded random weights.

``task="t2v"`` gives a ``SkyReelsV2Pipeline``, ``task="i2v"`` a ``SkyReelsV2ImageToVideoPipeline`` (a CLIP image
encoder, and the transformer's input concatenates on the channel axis after the batch the noisy latent, a
per-frame mask and the first frame's latent: 4 + 2 + 4 channels here, 16 + 4 + 16 in the real model), ``task="df"``
a ``SkyReelsV2DiffusionForcingPipeline`` (one timestep per latent frame). The real parts at toy width: a
``SkyReelsV2Transformer3DModel`` (Wan's architecture), Wan's ``AutoencoderKLWan`` (here 4x spatial and 2x temporal
compression, the real one has 8x / 4x), a ``UMT5EncoderModel`` with its real tokenizer class over a tiny vocabulary
(:mod:`lightcache.tiny.parts`) and the ``UniPCMultistepScheduler`` with flow sigmas (shift 8 for text-to-video, 5
for image-to-video, as the model card says). A 4-step 32x32, 9-frame run takes well under a second on a CPU.

Example:
    >>> import torch
    >>> from lightcache.families.skyreels_v2.tiny import build_tiny_pipeline, tiny_call, tiny_inputs
    >>> pipe = build_tiny_pipeline(seed=0, task="df")
    >>> pipe(**tiny_inputs("df"), generator=torch.Generator().manual_seed(0), **tiny_call("df")).frames.shape
    (1, 9, 32, 32, 3)
"""

from __future__ import annotations

import torch

#: The variants: text-to-video, image-to-video, diffusion forcing (text-to-video).
TASKS = ("t2v", "i2v", "df")
#: Latent channels of the tiny VAE (the real one has 16) and its temporal compression.
LATENT_CHANNELS, TEMPORAL_COMPRESSION = 4, 2
#: Width of the UMT5 text embedding and of the CLIP image embedding.
TEXT_DIM, IMAGE_DIM = 32, 32
#: Side of the videos, in pixels.
SIZE = 32


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"Unknown SkyReels-V2 task {task!r}; choose one of {', '.join(TASKS)}.")


def tiny_call(task: str = "t2v", **overrides) -> dict:
    """Small ``pipe(...)`` keyword arguments that suit the tiny pipeline of ``task``: 32x32, 9 frames (5 latent
    frames), 4 steps, guidance 6.0 (> 1: two separate transformer calls per step, ``cond`` then ``uncond``; 1.0:
    one), a 32-token prompt, NumPy frames; diffusion forcing generates all 9 frames in one window
    (``base_num_frames``; its default, 97, is longer than the tiny video)."""
    _check_task(task)
    window = dict(base_num_frames=9) if task == "df" else {}
    return dict(height=SIZE, width=SIZE, num_frames=9, num_inference_steps=4, guidance_scale=6.0,
                max_sequence_length=32, output_type="np") | window | overrides


#: :func:`tiny_call` of text-to-video with no overrides.
TINY_CALL = tiny_call()
#: The keyword arguments of :func:`build_tiny_pipeline` for each variant.
TINY_VARIANTS = tuple(dict(task=task) for task in TASKS)


def tiny_inputs(task: str = "t2v") -> dict:
    """What the pipeline of ``task`` is conditioned on: a prompt, and for image-to-video a 32x32 first frame."""
    _check_task(task)
    from ...tiny.parts import tiny_image

    return dict(prompt="a red circle moving right") | (dict(image=tiny_image(SIZE)) if task == "i2v" else {})


def build_tiny_pipeline(seed: int = 0, task: str = "t2v"):
    """A complete SkyReels-V2 pipeline of ``task`` with random weights, in eval mode; the same ``seed`` gives the
    same weights."""
    _check_task(task)
    from diffusers import (
        SkyReelsV2DiffusionForcingPipeline, SkyReelsV2ImageToVideoPipeline, SkyReelsV2Pipeline,
        UniPCMultistepScheduler,
    )

    from ...tiny.parts import tiny_t5_tokenizer

    image_to_video = task == "i2v"
    tokenizer = tiny_t5_tokenizer(model_max_length=512)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = _umt5(len(tokenizer))
        transformer = _transformer(image_to_video)
        vae = _vae()
        image_encoder, image_processor = _image_encoder() if image_to_video else (None, None)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=5.0 if image_to_video else 8.0)
    common = dict(tokenizer=tokenizer, text_encoder=text_encoder.eval(), transformer=transformer.eval(),
                  vae=vae.eval(), scheduler=scheduler)
    if image_to_video:
        pipe = SkyReelsV2ImageToVideoPipeline(image_encoder=image_encoder.eval(), image_processor=image_processor,
                                              **common)
    elif task == "df":
        pipe = SkyReelsV2DiffusionForcingPipeline(**common)
    else:
        pipe = SkyReelsV2Pipeline(**common)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _umt5(vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(
        vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8,
    ))


def _transformer(image_to_video: bool):
    from diffusers import SkyReelsV2Transformer3DModel

    # Image-to-video: noisy latent, one mask channel per frame of a latent step, first-frame latent.
    in_channels = 2 * LATENT_CHANNELS + TEMPORAL_COMPRESSION if image_to_video else LATENT_CHANNELS
    return SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=in_channels,
        out_channels=LATENT_CHANNELS, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=64, num_layers=1, rope_max_seq_len=64,
        image_dim=IMAGE_DIM if image_to_video else None, added_kv_proj_dim=32 if image_to_video else None,
    )


def _vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=8, z_dim=LATENT_CHANNELS, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.0] * LATENT_CHANNELS, latents_std=[1.0] * LATENT_CHANNELS,
    )


def _image_encoder():
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from ...tiny.parts import tiny_clip_tokenizer

    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=IMAGE_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=SIZE,
        patch_size=8, projection_dim=IMAGE_DIM,
    ))
    image_processor = CLIPImageProcessor(crop_size={"height": SIZE, "width": SIZE}, size={"shortest_edge": SIZE})
    return encoder, CLIPProcessor(image_processor=image_processor, tokenizer=tiny_clip_tokenizer())
