"""Wan's chunked transformer forwards: the arithmetic of ``WanTransformer3DModel`` and its blocks, slice by slice.

With chunking (:mod:`lightcache.techniques.chunk`), each Wan block

1. computes keys and values for the whole sequence, one token slice at a time, into two preallocated buffers;
2. for each token slice: its queries, attention against all keys (each query row is independent, so this is the
   same computation as the unchunked attention), the output projection and the gated residual;
3. for each token slice: cross-attention, the feed-forward network and its gated residual, in place.

The new hidden state is written over the old one when the transformer-level part owns that buffer, so a block
holds the hidden state, keys and values (3 x ``tokens x dim``) plus one slice's temporaries; besides the
feed-forward's ``tokens x ffn_dim`` layer, that avoids float32 copies of the hidden state for the norms and the
float64 temporaries of the rotary embedding (diffusers keeps its tables in float64). The output head (norm,
modulation, projection) is chunked the same way. With one timestep per token (Wan2.2 TI2V: ``timestep`` of shape
(batch, tokens)) the modulations differ per token, and each slice takes its own rows of them. The output matches
the unchunked model to float rounding (the tests hold fp32 to 1e-5).

Example:
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> transformer = build_tiny_pipeline(seed=0).transformer
    >>> forwards = WanChunkedForwards()
    >>> forwards.check(transformer)
    >>> forwards.num_tokens(transformer, (1, 4, 3, 8, 8)), len(forwards.blocks(transformer))
    (48, 2)
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from ...errors import LightcacheError
from ...techniques.chunk import ChunkedForwards, FeatureChunkingHook, token_bounds, token_rows


class WanChunkedForwards(ChunkedForwards):
    """Feature chunking's view of ``WanTransformer3DModel``: its ``blocks`` and their chunked forwards."""

    def check(self, model: torch.nn.Module) -> None:
        check_supported(model)

    def blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(model.blocks)

    def num_tokens(self, model: torch.nn.Module, latent_shape: tuple[int, ...]) -> int:
        """Tokens one transformer call sees for latents of ``latent_shape`` (B, C, F, H, W)."""
        p_t, p_h, p_w = model.config.patch_size
        _, _, frames, height, width = latent_shape
        return (frames // p_t) * (height // p_h) * (width // p_w)

    def model_forward(self, model, hook: FeatureChunkingHook, *args, **kwargs):
        return _chunked_model_forward(model, hook, *args, **kwargs)

    def block_forward(self, block, hook: FeatureChunkingHook, *args, **kwargs):
        return _chunked_block_forward(block, hook, *args, **kwargs)


def _chunked_model_forward(
    model,
    hook: FeatureChunkingHook,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    encoder_hidden_states_image: torch.Tensor | None = None,
    return_dict: bool = True,
    attention_kwargs: dict[str, Any] | None = None,
):
    """``WanTransformer3DModel.forward`` with the blocks run in place and the output head chunked."""
    if attention_kwargs and attention_kwargs.get("scale", 1.0) != 1.0:
        raise LightcacheError("Feature chunking does not support a LoRA scale in attention_kwargs.")
    batch_size, _, num_frames, height, width = hidden_states.shape
    p_t, p_h, p_w = model.config.patch_size
    post_f, post_h, post_w = num_frames // p_t, height // p_h, width // p_w
    bounds = token_bounds(post_f * post_h * post_w, hook.config.num_chunks)

    rotary_emb = model.rope(hidden_states)
    hidden_states = model.patch_embedding(hidden_states)
    hidden_states = hidden_states.flatten(2).transpose(1, 2).contiguous()

    if timestep.ndim == 2:
        ts_seq_len = timestep.shape[1]
        timestep = timestep.flatten()
    else:
        ts_seq_len = None
    temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image = model.condition_embedder(
        timestep, encoder_hidden_states, encoder_hidden_states_image, timestep_seq_len=ts_seq_len
    )
    if ts_seq_len is not None:
        timestep_proj = timestep_proj.unflatten(2, (6, -1))
    else:
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
    if encoder_hidden_states_image is not None:
        encoder_hidden_states = torch.concat([encoder_hidden_states_image, encoder_hidden_states], dim=1)

    # The buffer below was allocated by this forward and nothing else refers to it, so each block may write its
    # output over its input: that saves one tokens x dim buffer for the whole denoise stage.
    for i, block in enumerate(model.blocks):
        hidden_states = hook.run_block(block, i, hidden_states, encoder_hidden_states, timestep_proj, rotary_emb)

    if temb.ndim == 3:
        shift, scale = (model.scale_shift_table.unsqueeze(0).to(temb.device) + temb.unsqueeze(2)).chunk(2, dim=2)
        shift, scale = shift.squeeze(2), scale.squeeze(2)
    else:
        shift, scale = (model.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
    shift = shift.to(hidden_states.device)
    scale = scale.to(hidden_states.device)

    out = None
    for a, b in bounds:
        part = hidden_states[:, a:b]
        y = (model.norm_out(part.float()) * (1 + token_rows(scale, a, b)) + token_rows(shift, a, b)).type_as(part)
        y = model.proj_out(y)
        if out is None:
            out = y.new_empty((y.shape[0], hidden_states.shape[1], y.shape[2]))
        out[:, a:b] = y
        del part, y
    del hidden_states

    out = out.reshape(batch_size, post_f, post_h, post_w, p_t, p_h, p_w, -1)
    out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)
    output = out.flatten(6, 7).flatten(4, 5).flatten(2, 3)
    if not return_dict:
        return (output,)
    return Transformer2DModelOutput(sample=output)


def _chunked_block_forward(
    block,
    hook: FeatureChunkingHook,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    temb: torch.Tensor,
    rotary_emb: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """``WanTransformerBlock.forward``, token slice by token slice (same arithmetic, same dtypes)."""
    if temb.ndim == 4:
        mods = (block.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)
        mods = [m.squeeze(2) for m in mods]
    else:
        mods = (block.scale_shift_table + temb.float()).chunk(6, dim=1)
    shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = mods
    bounds = token_bounds(hidden_states.shape[1], hook.config.num_chunks)
    attn = block.attn1

    def modulated(a: int, b: int) -> torch.Tensor:
        part = hidden_states[:, a:b]
        scaled = block.norm1(part.float()) * (1 + token_rows(scale_msa, a, b))
        return (scaled + token_rows(shift_msa, a, b)).type_as(part)

    # 1. Keys and values of the whole sequence (self-attention needs all of them for every query).
    key = value = None
    for a, b in bounds:
        normed = modulated(a, b)
        k = attn.norm_k(attn.to_k(normed)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(normed).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            k = _rotate(k, *(token_rows(f, a, b) for f in rotary_emb))
        if key is None:
            key = k.new_empty((k.shape[0], hidden_states.shape[1], *k.shape[2:]))
            value = v.new_empty((v.shape[0], hidden_states.shape[1], *v.shape[2:]))
        key[:, a:b] = k
        value[:, a:b] = v
        del normed, k, v

    # 2. Queries, attention, output projection and gated residual, slice by slice. Keys and values already hold
    # everything later slices need from the input, so a slice's output may overwrite its own input rows.
    out = hidden_states if hook.owns_input else torch.empty_like(hidden_states)
    for a, b in bounds:
        normed = modulated(a, b)
        q = attn.norm_q(attn.to_q(normed)).unflatten(2, (attn.heads, -1))
        del normed
        if rotary_emb is not None:
            q = _rotate(q, *(token_rows(f, a, b) for f in rotary_emb))
        o = _dispatch_attention(attn, q, key, value)
        o = o.flatten(2, 3).type_as(q)
        o = attn.to_out[1](attn.to_out[0](o))
        part = hidden_states[:, a:b]
        out[:, a:b] = (part.float() + o * token_rows(gate_msa, a, b)).type_as(part)
        del q, o, part
    del key, value

    # 3. Cross-attention and feed-forward: purely per token, done in place on ``out``.
    for a, b in bounds:
        h = out[:, a:b]
        normed = block.norm2(h.float()).type_as(h)
        h = h + block.attn2(normed, encoder_hidden_states, None, None)
        normed = block.norm3(h.float()) * (1 + token_rows(c_scale_msa, a, b))
        normed = (normed + token_rows(c_shift_msa, a, b)).type_as(h)
        ff = block.ffn(normed)
        del normed
        out[:, a:b] = (h.float() + ff.float() * token_rows(c_gate_msa, a, b)).type_as(h)
        del h, ff
    return out


# --- helpers ------------------------------------------------------------------------------------------------
def _rotate(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    # The same arithmetic as diffusers' WanAttnProcessor (including its float64 tables), on a token slice.
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def _dispatch_attention(attn, query, key, value) -> torch.Tensor:
    processor = attn.processor
    return dispatch_attention_fn(
        query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
        backend=getattr(processor, "_attention_backend", None), parallel_config=None,
    )


def check_supported(transformer: torch.nn.Module) -> None:
    """Raise :class:`LightcacheError` unless ``transformer`` is a Wan transformer this module chunks exactly."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor, WanTransformer3DModel

    if not isinstance(transformer, WanTransformer3DModel):
        raise LightcacheError(
            f"Feature chunking supports Wan transformers (WanTransformer3DModel), not {type(transformer).__name__}."
        )
    for i, block in enumerate(transformer.blocks):
        attn = block.attn1
        if getattr(attn, "fused_projections", False):
            raise LightcacheError("Feature chunking needs unfused q/k/v projections; call unfuse_qkv_projections().")
        if type(attn.processor) is not WanAttnProcessor:
            raise LightcacheError(
                f"Feature chunking needs diffusers' WanAttnProcessor; block {i} uses {type(attn.processor).__name__}."
            )
        if getattr(attn.processor, "_parallel_config", None) is not None:
            raise LightcacheError("Feature chunking does not combine with context parallelism.")
