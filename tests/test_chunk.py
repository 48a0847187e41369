"""Feature chunking: exact against the unchunked transformer, composes with EasyCache and group offloading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightcache.errors import LightcacheError
from lightcache.families import adapter_named
from lightcache.families.base import FamilyAdapter
from lightcache.families.wan.chunked import WanChunkedForwards
from lightcache.techniques.chunk import (
    CHUNK_HOOK,
    FeatureChunkConfig,
    apply_feature_chunking,
    check_num_chunks,
    get_feature_chunking_hook,
    remove_feature_chunking,
    token_bounds,
)
from lightcache.techniques.easycache import EasyCacheConfig, apply_easycache, remove_easycache

WAN = adapter_named("wan")

TOL = 1e-5


def _inputs(seed=0, frames=3, size=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, frames, size, size, generator=g)
    text = torch.randn(1, 6, 32, generator=g)
    return x, torch.tensor([612]), text


def _forward(transformer, inputs):
    with torch.no_grad():
        return transformer(*inputs, return_dict=False)[0]


def _video(pipe, **kw):
    return pipe("a red circle moving right", num_inference_steps=6, height=32, width=32, num_frames=9,
                generator=torch.Generator().manual_seed(1), output_type="np", **kw).frames[0]


@pytest.mark.parametrize("chunks", [1, 2, 5, 16, 48])
def test_chunked_forward_matches_the_plain_forward(tiny_pipe, chunks):
    transformer = tiny_pipe.transformer
    inputs = _inputs()  # 3 x 4 x 4 patches = 48 tokens
    plain = _forward(transformer, inputs)
    apply_feature_chunking(transformer, chunks, WAN)
    chunked = _forward(transformer, inputs)
    remove_feature_chunking(transformer)
    assert chunked.shape == plain.shape
    assert (chunked - plain).abs().max().item() <= TOL
    assert torch.equal(_forward(transformer, inputs), plain)  # removal restores the plain forward exactly


def test_chunking_does_not_change_the_input_it_was_given(tiny_pipe):
    transformer = tiny_pipe.transformer
    inputs = _inputs()
    before = [t.clone() for t in inputs]
    apply_feature_chunking(transformer, 4, WAN)
    _forward(transformer, inputs)
    # A block called on its own (not from the chunked model forward) must not write over its input either.
    block = transformer.blocks[0]
    hidden = torch.randn(1, 12, 32)
    kept = hidden.clone()
    temb = torch.randn(1, 6, 32)
    rope = transformer.rope(torch.randn(1, 4, 1, 6, 8))
    with torch.no_grad():
        block(hidden, torch.randn(1, 5, 32), temb, rope)
    remove_feature_chunking(transformer)
    assert all(torch.equal(a, b) for a, b in zip(inputs, before))
    assert torch.equal(hidden, kept)


@pytest.mark.parametrize("easycache", [False, True])
def test_whole_pipeline_with_chunking_matches_plain(easycache, tiny_pipe):
    def run(chunked: bool):
        if chunked:
            apply_feature_chunking(tiny_pipe.transformer, 3, WAN)
        hook = apply_easycache(tiny_pipe.transformer, EasyCacheConfig(threshold=0.3, warmup_steps=2)) \
            if easycache else None
        try:
            video = _video(tiny_pipe)
            decisions = [(r.step, r.branch, r.computed) for r in hook.records] if hook else []
        finally:
            remove_easycache(tiny_pipe.transformer)
            remove_feature_chunking(tiny_pipe.transformer)
        return video, decisions

    plain, plain_decisions = run(False)
    chunked, chunked_decisions = run(True)
    assert np.abs(chunked - plain).max() <= TOL
    assert chunked_decisions == plain_decisions
    if easycache:
        assert any(not computed for _, _, computed in chunked_decisions), "EasyCache reused nothing: a weak test"


def test_composes_with_group_offloading_applied_after(tiny_pipe):
    from diffusers.hooks import apply_group_offloading

    transformer = tiny_pipe.transformer
    inputs = _inputs(seed=2)
    plain = _forward(transformer, inputs)
    apply_feature_chunking(transformer, 4, WAN)
    apply_group_offloading(transformer, onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                           offload_type="block_level", num_blocks_per_group=1)
    out = _forward(transformer, inputs)
    with pytest.raises(RuntimeError, match="Remove the hooks applied after feature chunking first"):
        remove_feature_chunking(transformer)
    for module in (transformer, *transformer.blocks):
        module._diffusers_hook.remove_hook("group_offloading", recurse=False)
    remove_feature_chunking(transformer)
    assert (out - plain).abs().max().item() <= TOL
    assert all(not m._diffusers_hook.hooks for m in (transformer, *transformer.blocks))


def test_applying_after_another_hook_or_twice_is_refused(tiny_pipe):
    transformer = tiny_pipe.transformer
    apply_easycache(transformer, EasyCacheConfig())
    with pytest.raises(LightcacheError, match="Apply feature chunking before other hooks"):
        apply_feature_chunking(transformer, 2, WAN)
    remove_easycache(transformer)
    hook = apply_feature_chunking(transformer, 2, WAN)
    assert get_feature_chunking_hook(transformer) is hook
    with pytest.raises(LightcacheError, match="already applied"):
        apply_feature_chunking(transformer, 2, WAN)
    remove_feature_chunking(transformer)
    assert get_feature_chunking_hook(transformer) is None
    assert all(CHUNK_HOOK not in b._diffusers_hook.hooks for b in transformer.blocks)
    remove_feature_chunking(transformer)  # a no-op the second time


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4", None])
def test_bad_chunk_counts_get_a_clear_error(bad):
    if bad is None:
        assert FeatureChunkConfig().num_chunks >= 1
        return
    with pytest.raises(LightcacheError, match="chunk_ffn"):
        FeatureChunkConfig(bad)


def test_more_chunks_than_tokens_is_refused_with_the_limit(tiny_pipe):
    transformer = tiny_pipe.transformer
    inputs = _inputs()
    tokens = WanChunkedForwards().num_tokens(transformer, inputs[0].shape)
    assert tokens == 48
    with pytest.raises(LightcacheError, match="only 48 tokens"):
        check_num_chunks(49, tokens)
    check_num_chunks(48, tokens)
    apply_feature_chunking(transformer, 49, WAN)
    try:
        with pytest.raises(LightcacheError, match="between 1 and 48"):
            _forward(transformer, inputs)
    finally:
        remove_feature_chunking(transformer)


def test_refuses_transformers_it_cannot_chunk(tiny_pipe):
    with pytest.raises(LightcacheError, match="Wan transformers"):
        apply_feature_chunking(tiny_pipe.vae, 2, WAN)
    # A family without chunked forwards (the base adapter's default) is refused, naming the module and the family.
    with pytest.raises(LightcacheError, match="no implementation for WanTransformer3DModel"):
        apply_feature_chunking(tiny_pipe.transformer, 2, FamilyAdapter())
    assert get_feature_chunking_hook(tiny_pipe.transformer) is None
    tiny_pipe.transformer.fuse_qkv_projections()
    with pytest.raises(LightcacheError, match="unfused"):
        apply_feature_chunking(tiny_pipe.transformer, 2, WAN)


def test_chunking_lowers_the_estimated_peak(tiny_pipe):
    """The live-bytes meter (no timing): chunked activations must peak well below the plain forward's."""
    from lightcache.telemetry import LiveBytesMeter

    transformer = tiny_pipe.transformer
    inputs = _inputs(frames=5, size=16)
    peaks = {}
    for chunks in (None, 8):
        if chunks:
            apply_feature_chunking(transformer, chunks, WAN)
        with LiveBytesMeter() as meter:
            _forward(transformer, inputs)
        remove_feature_chunking(transformer)
        peaks[chunks] = meter.peak
    assert peaks[8] < 0.6 * peaks[None]


# --- per-token timesteps (Wan2.2 TI2V: WanPipeline with expand_timesteps=True) -------------------------------------
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("chunks", [1, 3, 7, 48])
def test_chunking_with_per_token_timesteps_matches_the_plain_forward(batch, chunks):
    """timestep (batch, tokens): every block's six modulations and the head's shift and scale differ per token, so
    each token slice must take its own rows of them (a broadcast would be visibly wrong: see the last assert)."""
    from lightcache.tiny import build_tiny_wan22_transformer

    transformer = build_tiny_wan22_transformer(seed=0)
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 48, 3, 8, 8, generator=g)  # 3 x 4 x 4 patches = 48 tokens
    t = torch.randint(1, 1000, (batch, 48), generator=g).float()
    t[:, :16] = 0.0  # the first latent frame's tokens, as the TI2V pipeline sets them for a conditioning image
    inputs = (x, t, torch.randn(batch, 5, 32, generator=g))
    assert WanChunkedForwards().num_tokens(transformer, x.shape) == 48
    plain = _forward(transformer, inputs)
    apply_feature_chunking(transformer, chunks, WAN)
    try:
        chunked = _forward(transformer, inputs)
    finally:
        remove_feature_chunking(transformer)
    assert chunked.shape == plain.shape == x.shape
    assert (chunked - plain).abs().max().item() <= TOL
    one_timestep = _forward(transformer, (x, t[:, 20], inputs[2]))
    assert (one_timestep - plain).abs().max().item() > 100 * TOL


def test_ti2v_pipeline_with_chunking_matches_plain():
    """The real call path: WanPipeline with expand_timesteps passes an expanded (non-contiguous) (batch, tokens)
    timestep, for both guidance branches."""
    from lightcache.tiny import build_tiny_wan22_pipeline

    pipe = build_tiny_wan22_pipeline(seed=0)
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs["timestep"].shape),
                                               with_kwargs=True)

    def run():
        return pipe("a red circle moving right", num_inference_steps=3, height=64, width=96, num_frames=5,
                    guidance_scale=4.0, generator=torch.Generator().manual_seed(2), output_type="latent").frames

    plain = run()
    assert calls and all(shape == (1, 2 * 2 * 3) for shape in calls)  # 2 latent frames x 2 x 3 patches
    apply_feature_chunking(pipe.transformer, 5, WAN)
    try:
        chunked = run()
    finally:
        remove_feature_chunking(pipe.transformer)
    assert (chunked - plain).abs().max().item() <= TOL


def test_token_bounds_cover_every_token_once_as_evenly_as_possible():
    bounds = token_bounds(11, 4)
    assert bounds[0][0] == 0 and bounds[-1][1] == 11
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert sorted(b - a for a, b in bounds) == [2, 3, 3, 3]
    with pytest.raises(LightcacheError, match="between 1 and 3"):
        token_bounds(3, 4)
