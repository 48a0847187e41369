"""Tiny HunyuanVideo-1.5 pipelines built offline from configs, with seeded random weights.

``task="t2v"`` gives a ``HunyuanVideo15Pipeline``, ``task="i2v"`` a ``HunyuanVideo15ImageToVideoPipeline``. The real
parts at toy width: ``HunyuanVideo15Transformer3DModel`` (its input concatenates, on the channel axis after the
batch, the noisy latent, a condition latent and a one-channel mask: 4 + 4 + 1 = 9 channels here, 32 + 32 + 1 in the
real model), ``AutoencoderKLHunyuanVideo15`` (here 4x spatial and 4x temporal compression; the real one has 16x),
a ``Qwen2_5_VLTextModel`` read through a ChatML template and a ByT5 ``T5EncoderModel`` for quoted glyph text, each
with its real tokenizer class (:mod:`lightcache.tiny.parts`; ByT5's needs no vocabulary), classifier-free guidance
through a ``ClassifierFreeGuidance`` guider (``guidance_scale`` at build time: the pipeline's call takes none), and
for image-to-video a ``SiglipVisionModel`` image encoder. A 4-step 32x32, 5-frame run takes about a second on a CPU.

Example:
    >>> import torch
    >>> from lightcache.families.hunyuan_video15.tiny import build_tiny_pipeline, tiny_call, tiny_inputs
    >>> pipe = build_tiny_pipeline(seed=0, task="i2v")
    >>> pipe(**tiny_inputs("i2v"), generator=torch.Generator().manual_seed(0), **tiny_call("i2v")).frames.shape
    (1, 5, 32, 32, 3)
"""

from __future__ import annotations

import torch

#: The variants: text-to-video and image-to-video.
TASKS = ("t2v", "i2v")
#: Latent channels of the tiny VAE (the real model has 32).
LATENT_CHANNELS = 4
#: Width of the Qwen text embedding, the ByT5 embedding and the SigLIP image embedding.
EMBED_DIM = 32
#: Side of the images and videos the tiny pipelines make (the transformer's ``target_size``).
SIZE = 32


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"Unknown HunyuanVideo-1.5 task {task!r}; choose one of {', '.join(TASKS)}.")


def tiny_call(task: str = "t2v", **overrides) -> dict:
    """Small ``pipe(...)`` keyword arguments that suit the tiny pipeline of ``task``: 5 frames, 4 steps, NumPy
    frames; 32x32 for text-to-video (image-to-video takes its size from the image of :func:`tiny_inputs`)."""
    _check_task(task)
    size = dict(height=SIZE, width=SIZE) if task == "t2v" else {}
    return size | dict(num_frames=5, num_inference_steps=4, output_type="np") | overrides


#: :func:`tiny_call` of text-to-video with no overrides.
TINY_CALL = tiny_call()
#: The keyword arguments of :func:`build_tiny_pipeline` for each variant.
TINY_VARIANTS = tuple(dict(task=task) for task in TASKS)


def tiny_inputs(task: str = "t2v") -> dict:
    """What the pipeline of ``task`` is conditioned on: a prompt, and for image-to-video a 32x32 first frame."""
    _check_task(task)
    from ...tiny.parts import tiny_image

    return dict(prompt="a red circle moving right") | (dict(image=tiny_image(SIZE)) if task == "i2v" else {})


def build_tiny_pipeline(seed: int = 0, task: str = "t2v", guidance_scale: float = 6.0):
    """A complete HunyuanVideo-1.5 pipeline of ``task`` with random weights, in eval mode; the same ``seed`` gives the
    same weights. ``guidance_scale`` > 1 makes two transformer calls per step (``pred_cond``, ``pred_uncond``),
    1.0 one."""
    _check_task(task)
    from diffusers import (
        ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler, HunyuanVideo15ImageToVideoPipeline,
        HunyuanVideo15Pipeline,
    )
    from transformers import ByT5Tokenizer

    from ...tiny.parts import tiny_qwen2_tokenizer

    tokenizer, tokenizer_2 = tiny_qwen2_tokenizer(), ByT5Tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = _qwen(len(tokenizer))
        text_encoder_2 = _byt5(len(tokenizer_2))
        transformer = _transformer(task)
        vae = _vae()
        image_encoder, feature_extractor = _image_encoder() if task == "i2v" else (None, None)
    common = dict(
        text_encoder=text_encoder.eval(), tokenizer=tokenizer, transformer=transformer.eval(), vae=vae.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=tokenizer_2, guider=ClassifierFreeGuidance(guidance_scale=guidance_scale),
    )
    if task == "i2v":
        pipe = HunyuanVideo15ImageToVideoPipeline(image_encoder=image_encoder.eval(),
                                                  feature_extractor=feature_extractor, **common)
    else:
        pipe = HunyuanVideo15Pipeline(**common)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _qwen(vocab_size: int):
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    # Three layers: the pipeline reads the third-last hidden state. Multimodal rotary sections cover the 8
    # frequencies of a 16-wide head.
    return Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=vocab_size, hidden_size=EMBED_DIM, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=0, eos_token_id=2,
        pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
    ))


def _byt5(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=EMBED_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
    ))


def _transformer(task: str):
    from diffusers import HunyuanVideo15Transformer3DModel

    return HunyuanVideo15Transformer3DModel(
        in_channels=2 * LATENT_CHANNELS + 1, out_channels=LATENT_CHANNELS, num_attention_heads=2,
        attention_head_dim=16, num_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1,
        text_embed_dim=EMBED_DIM, text_embed_2_dim=EMBED_DIM, image_embed_dim=EMBED_DIM, rope_axes_dim=(4, 6, 6),
        target_size=SIZE, task_type=task,
    )


def _vae():
    from diffusers import AutoencoderKLHunyuanVideo15

    # Three blocks: two spatial (and temporal) downsamplings, 4x / 4x; the real VAE has five blocks, 16x / 4x.
    return AutoencoderKLHunyuanVideo15(
        latent_channels=LATENT_CHANNELS, block_out_channels=(8, 16, 16), layers_per_block=1,
        spatial_compression_ratio=4, temporal_compression_ratio=4,
    )


def _image_encoder():
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    encoder = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=EMBED_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=SIZE,
        patch_size=8,
    ))
    processor = SiglipImageProcessor(size={"height": SIZE, "width": SIZE})
    return encoder, processor
