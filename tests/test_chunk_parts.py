"""Feature chunking beyond Wan: the shared parts, HunyuanVideo's and HunyuanVideo-1.5's blocks and the UNets'
feed-forward layers, each against the same model unchunked (the family tests compare whole pipelines)."""

from __future__ import annotations

import pytest
import torch

from lightcache.errors import LightcacheError
from lightcache.families import adapter_named
from lightcache.techniques.chunk import apply_feature_chunking, get_feature_chunking_hook, remove_feature_chunking
from lightcache.techniques.chunk_parts import fill_rows, query_key_mask

TOL = 1e-5  # slicing changes no arithmetic, only the shapes of the matmuls: fp32 rounding


@pytest.fixture(scope="module")
def hunyuan():
    from lightcache.families.hunyuan_video.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=0).transformer


@pytest.fixture(scope="module")
def hunyuan15():
    from lightcache.families.hunyuan_video15.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=0, task="t2v").transformer


def _hunyuan_inputs(seed: int = 0, text: int = 12, padded: int = 4):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(1, text)
    mask[:, text - padded:] = 0  # padding at the end of the prompt, as the pipeline gives it
    return dict(hidden_states=torch.randn(1, 4, 2, 6, 8, generator=g), timestep=torch.tensor([700.0]),
                encoder_hidden_states=torch.randn(1, text, 32, generator=g), encoder_attention_mask=mask,
                pooled_projections=torch.randn(1, 32, generator=g), guidance=torch.tensor([6000.0]))


def _hunyuan15_inputs(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    config = model.config
    mask = torch.ones(1, 10, dtype=torch.long)
    mask[:, 7:] = 0
    mask_2 = torch.ones(1, 6, dtype=torch.long)
    mask_2[:, 4:] = 0
    return dict(hidden_states=torch.randn(1, config.in_channels, 2, 6, 8, generator=g),
                timestep=torch.tensor([700.0]),
                encoder_hidden_states=torch.randn(1, 10, config.text_embed_dim, generator=g),
                encoder_attention_mask=mask,
                encoder_hidden_states_2=torch.randn(1, 6, config.text_embed_2_dim, generator=g),
                encoder_attention_mask_2=mask_2,
                image_embeds=torch.zeros(1, 3, config.image_embed_dim))


def _run(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def _chunked(model, family: str, num_chunks: int, inputs):
    apply_feature_chunking(model, num_chunks, adapter_named(family))
    try:
        return _run(model, inputs)
    finally:
        remove_feature_chunking(model)


# --- the shared parts ------------------------------------------------------------------------------------------------
def test_fill_rows_writes_each_stream_at_its_offset():
    x = torch.arange(12.0).view(1, 6, 2)
    text = torch.full((1, 2, 2), -1.0)
    both, = fill_rows([(0, 4), (4, 6)], lambda a, b: x[:, a:b] * 2, length=8)
    fill_rows([(0, 2)], lambda a, b: text[:, a:b], out=(both,), offset=6)
    assert torch.equal(both, torch.cat([x * 2, text], dim=1))


def test_query_key_mask_rows_equal_the_processors_dense_mask():
    valid = torch.tensor([[True, True, True, False, True, False]])
    dense = valid.view(1, 1, 1, 6).repeat(1, 1, 6, 1)
    dense = dense & dense.transpose(2, 3)  # what diffusers' HunyuanVideo-1.5 processor builds whole
    for a, b in [(0, 2), (2, 5), (5, 6)]:
        assert torch.equal(query_key_mask(valid, a, b), dense[:, :, a:b])


# --- HunyuanVideo ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_chunks", [1, 2, 5, 96])  # 96: one video token per slice
def test_hunyuan_video_chunked_matches_unchunked(hunyuan, num_chunks):
    inputs = _hunyuan_inputs()
    plain = _run(hunyuan, inputs)
    chunked = _chunked(hunyuan, "hunyuan_video", num_chunks, inputs)
    assert chunked.shape == plain.shape
    assert (chunked - plain).abs().max() <= TOL
    assert torch.equal(_run(hunyuan, inputs), plain)  # removed: the same object gives the same output again


def test_hunyuan_video_chunking_leaves_the_callers_tensors_alone(hunyuan):
    inputs = _hunyuan_inputs(seed=1)
    before = {k: v.clone() for k, v in inputs.items()}
    first = _chunked(hunyuan, "hunyuan_video", 3, inputs)
    assert all(torch.equal(inputs[k], before[k]) for k in inputs)
    assert torch.equal(_chunked(hunyuan, "hunyuan_video", 3, inputs), first)


def test_a_block_called_on_its_own_does_not_write_over_its_input(hunyuan):
    """Blocks write over their input only inside the model's forward, which owns that buffer."""
    g = torch.Generator().manual_seed(2)
    hidden, text = torch.randn(1, 20, 32, generator=g), torch.randn(1, 5, 32, generator=g)
    temb, mask = torch.randn(1, 32, generator=g), torch.ones(1, 1, 1, 25, dtype=torch.bool)
    saved = hidden.clone()
    blocks = [hunyuan.transformer_blocks[0], hunyuan.single_transformer_blocks[0]]
    with torch.no_grad():
        plain = [block(hidden, text, temb, mask, None) for block in blocks]
        apply_feature_chunking(hunyuan, 4, adapter_named("hunyuan_video"))
        try:
            chunked = [block(hidden, text, temb, mask, None) for block in blocks]
            # Outside the model's forward the head's layers are plain layers too.
            head = hunyuan.proj_out(hunyuan.norm_out(hidden, temb))
        finally:
            remove_feature_chunking(hunyuan)
        plain_head = hunyuan.proj_out(hunyuan.norm_out(hidden, temb))
    assert torch.equal(hidden, saved)
    for (video, words), (video_c, words_c) in zip(plain, chunked):
        assert (video - video_c).abs().max() <= TOL and (words - words_c).abs().max() <= TOL
    assert torch.equal(head, plain_head)


def test_hunyuan_video_refuses_what_it_cannot_chunk_exactly(hunyuan):
    from diffusers.models.attention_processor import AttnProcessor2_0

    block = hunyuan.single_transformer_blocks[0]
    original = block.attn.processor
    block.attn.set_processor(AttnProcessor2_0())
    try:
        with pytest.raises(LightcacheError, match="HunyuanVideoAttnProcessor2_0; single-stream block 1 uses "
                                                  "AttnProcessor2_0"):
            apply_feature_chunking(hunyuan, 2, adapter_named("hunyuan_video"))
        assert get_feature_chunking_hook(hunyuan) is None
        assert adapter_named("hunyuan_video").chunked_forwards(hunyuan) is not None
    finally:
        block.attn.set_processor(original)


def test_the_image_to_video_token_replace_blocks_are_refused():
    from diffusers import HunyuanVideoTransformer3DModel

    model = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, text_embed_dim=16,
        pooled_projection_dim=16, rope_axes_dim=(2, 2, 4), image_condition_type="token_replace")
    with pytest.raises(LightcacheError, match="HunyuanVideoTokenReplaceTransformerBlock"):
        apply_feature_chunking(model, 2, adapter_named("hunyuan_video"))


# --- HunyuanVideo-1.5 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_chunks", [1, 3, 96])
def test_hunyuan_video15_chunked_matches_unchunked_with_padded_text(hunyuan15, num_chunks):
    inputs = _hunyuan15_inputs(hunyuan15)
    plain = _run(hunyuan15, inputs)
    assert torch.isfinite(plain).all()
    chunked = _chunked(hunyuan15, "hunyuan_video15", num_chunks, inputs)
    assert (chunked - plain).abs().max() <= TOL


# --- the UNets -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def svd_unet():
    from lightcache.families.svd.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=0).unet


def _svd_inputs(unet, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    config = unet.config
    return dict(sample=torch.randn(2, 3, config.in_channels, 8, 8, generator=g), timestep=torch.tensor([0.7]),
                encoder_hidden_states=torch.randn(2, 1, config.cross_attention_dim, generator=g),
                added_time_ids=torch.tensor([[6.0, 127.0, 0.02]] * 2))


@pytest.mark.parametrize("num_chunks", [2, 7])  # 7 slices of 8 x 8 x 3 tokens: uneven ones
def test_unet_feed_forward_chunking_matches_unchunked_and_diffusers_own(svd_unet, num_chunks):
    inputs = _svd_inputs(svd_unet)
    plain = _run(svd_unet, inputs)
    ours = _chunked(svd_unet, "svd", num_chunks, inputs)
    svd_unet.enable_forward_chunking()  # diffusers' own: one frame (spatial) or one frame's pixels at a time
    try:
        theirs = _run(svd_unet, inputs)
    finally:
        for module in svd_unet.modules():
            if hasattr(module, "set_chunk_feed_forward"):
                module._chunk_size = None
    assert (ours - plain).abs().max() <= TOL
    assert (ours - theirs).abs().max() <= TOL


def test_unet_chunking_refuses_a_model_without_feed_forward_layers():
    from diffusers import UNetSpatioTemporalConditionModel

    from lightcache.techniques.chunk_parts import FeedForwardChunking

    with pytest.raises(LightcacheError, match="no feed-forward layer"):
        FeedForwardChunking().check(torch.nn.Linear(2, 2))
    with pytest.raises(LightcacheError, match="UNetSpatioTemporalConditionModel"):
        FeedForwardChunking((UNetSpatioTemporalConditionModel,)).check(torch.nn.Linear(2, 2))
