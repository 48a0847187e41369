"""Tiny LTX-Video pipelines built offline from configs, with seeded random weights.

``task="t2v"`` gives an ``LTXPipeline``, ``task="i2v"`` an ``LTXImageToVideoPipeline``. The real parts at toy width:
``LTXVideoTransformer3DModel`` (it takes the latents packed into tokens, (batch, tokens, channels); image-to-video
keeps the first latent frame clean through a per-token timestep, (batch, tokens)), ``AutoencoderKLLTXVideo`` with
timestep conditioning in the decoder, as from LTX-Video 0.9.1 (the pipeline decodes with
``vae.decode(latents, timestep, return_dict=False)``; here 2x2 pixel patches and two space-time downsamplings: 8x
spatial and 4x temporal compression, the real VAE has 32x / 8x), a ``T5EncoderModel`` with its real tokenizer class
over a tiny vocabulary (:mod:`lightcache.tiny.parts`) and the dynamically shifted ``FlowMatchEulerDiscreteScheduler``.
A 4-step 32x32, 9-frame run takes well under a second on a CPU.

Example:
    >>> import torch
    >>> from lightcache.families.ltx.tiny import build_tiny_pipeline, tiny_call, tiny_inputs
    >>> pipe = build_tiny_pipeline(seed=0, task="t2v")
    >>> pipe(**tiny_inputs("t2v"), generator=torch.Generator().manual_seed(0), **tiny_call("t2v")).frames.shape
    (1, 9, 32, 32, 3)
"""

from __future__ import annotations

import torch

#: The variants: text-to-video and image-to-video.
TASKS = ("t2v", "i2v")
#: Latent channels of the tiny VAE (the real one has 128).
LATENT_CHANNELS = 8
#: Width of the T5 text embedding.
TEXT_DIM = 32
#: Side of the videos, in pixels.
SIZE = 32


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"Unknown LTX-Video task {task!r}; choose one of {', '.join(TASKS)}.")


def tiny_call(task: str = "t2v", **overrides) -> dict:
    """Small ``pipe(...)`` keyword arguments that suit the tiny pipelines: 32x32, 9 frames (3 latent frames of 4x4
    tokens), 4 steps, guidance 3.0 (> 1: one batched uncond + cond transformer call per step; 1.0: one unbatched
    call), decode timestep 0.05 and noise scale 0.025 (the settings LTX-Video 0.9.1 recommends), NumPy frames."""
    _check_task(task)
    return dict(height=SIZE, width=SIZE, num_frames=9, num_inference_steps=4, guidance_scale=3.0,
                decode_timestep=0.05, decode_noise_scale=0.025, output_type="np") | overrides


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
    """A complete LTX-Video pipeline of ``task`` with random weights, in eval mode; the same ``seed`` gives the same
    weights."""
    _check_task(task)
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXImageToVideoPipeline, LTXPipeline

    from ...tiny.parts import tiny_t5_tokenizer

    tokenizer = tiny_t5_tokenizer(model_max_length=128)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = _t5(len(tokenizer))
        transformer = _transformer()
        vae = _vae()
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024, max_image_seq_len=4096,
        shift_terminal=0.1,
    )
    pipeline_class = LTXImageToVideoPipeline if task == "i2v" else LTXPipeline
    pipe = pipeline_class(scheduler=scheduler, vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                          transformer=transformer.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _t5(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8,
    ))


def _transformer():
    from diffusers import LTXVideoTransformer3DModel

    return LTXVideoTransformer3DModel(
        in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, patch_size=1, patch_size_t=1,
        num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32, num_layers=1, caption_channels=TEXT_DIM,
    )


def _vae():
    from diffusers import AutoencoderKLLTXVideo

    # The decoder keeps one width: diffusers' timestep-conditioned up block feeds the raw timestep to a
    # width-changing input layer.
    return AutoencoderKLLTXVideo(
        latent_channels=LATENT_CHANNELS, block_out_channels=(8, 16, 16), decoder_block_out_channels=(16, 16, 16),
        down_block_types=("LTXVideoDownBlock3D",) * 3, layers_per_block=(1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1), spatio_temporal_scaling=(True, True, False),
        decoder_spatio_temporal_scaling=(True, True, False), decoder_inject_noise=(True, True, True, False),
        upsample_residual=(False, False, False), upsample_factor=(1, 1, 1), timestep_conditioning=True,
        patch_size=2, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    )
