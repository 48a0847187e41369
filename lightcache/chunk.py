"""Feature chunking: run the transformer's token-wise work over slices of the token sequence, exactly.

In a Wan transformer block only the self-attention mixes tokens; everything else (the modulated norms, the q/k/v
projections, their RMS norms and rotary embedding, the cross-attention queries, the feed-forward network, the
output head) treats every token on its own. Run whole, those layers materialise several ``tokens x width`` tensors at
once: the feed-forward's ``tokens x ffn_dim`` hidden layer twice (projection and GELU), float32 copies of the hidden
state for the norms, and float64 temporaries in the rotary embedding (diffusers keeps the rotary tables in float64).
For Wan2.1-14B at 720x1280x81 (75,600 tokens) that is what lifts one forward 8 GiB above the weights.

With chunking, each block

1. computes keys and values for the whole sequence, one token slice at a time, into two preallocated buffers;
2. for each token slice: its queries, attention against all keys (each query row is independent, so this is the
   same computation as the unchunked attention), the output projection and the gated residual;
3. for each token slice: cross-attention, the feed-forward network and its gated residual, in place.

The new hidden state is written over the old one when the transformer-level part of this module owns that buffer,
so a block holds the hidden state, keys and values (3 x ``tokens x dim``) plus one slice's temporaries. The output
head (norm, modulation, projection) is chunked the same way. With one timestep per token (Wan2.2 TI2V: ``timestep`` of
shape (batch, tokens)) the modulations differ per token, and each slice takes its own rows of them. Nothing is
approximated: the output matches the unchunked model to float rounding (the tests hold fp32 to 1e-5).

Order matters: this module replaces the innermost forward of the transformer and of each block, so apply it
*before* any other hook (EasyCache, group offloading) and remove it after them; both functions say so if not.

Example:
    >>> import torch
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> from lightcache.chunk import apply_feature_chunking, remove_feature_chunking
    >>> transformer = build_tiny_pipeline(seed=0).transformer
    >>> x, t = torch.randn(1, 4, 3, 8, 8), torch.tensor([500])
    >>> text = torch.randn(1, 6, 32)
    >>> with torch.no_grad():
    ...     plain = transformer(x, t, text, return_dict=False)[0]
    ...     _ = apply_feature_chunking(transformer, num_chunks=4)
    ...     chunked = transformer(x, t, text, return_dict=False)[0]
    ...     remove_feature_chunking(transformer)
    >>> bool((plain - chunked).abs().max() < 1e-5)
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from .compile import COMPILE_HOOK
from .errors import LightcacheError

CHUNK_HOOK = "lightcache_feature_chunking"

# Hooks that never keep a reference to a block's input, so writing the block's output over its input is safe
# under them (lightcache's compile hook, diffusers' group offloading and its execution-order tracer). Under compile
# the write is a mutation of a graph input, which torch carries out on the caller's tensor when the graph returns.
_INPLACE_SAFE_HOOKS = frozenset({CHUNK_HOOK, COMPILE_HOOK, "group_offloading", "layer_execution_tracker"})


@dataclass
class FeatureChunkConfig:
    """How finely to slice the token sequence.

    Attributes:
        num_chunks: number of token slices per layer. 1 runs the same code unsliced. More chunks lower the peak
            (the widest temporaries shrink as 1/num_chunks) and cost a little time once slices get too short to
            keep the GPU busy; 4-16 suits the Wan2.1 sizes. Must not exceed the number of tokens of a call.
    """

    num_chunks: int = 8

    def __post_init__(self):
        if isinstance(self.num_chunks, bool) or not isinstance(self.num_chunks, int) or self.num_chunks < 1:
            raise LightcacheError(f"chunk_ffn (feature chunks) must be a whole number >= 1, got {self.num_chunks!r}.")


def num_tokens(transformer: torch.nn.Module, latent_shape: tuple[int, ...]) -> int:
    """Tokens one transformer call sees for latents of ``latent_shape`` (B, C, F, H, W)."""
    p_t, p_h, p_w = transformer.config.patch_size
    _, _, frames, height, width = latent_shape
    return (frames // p_t) * (height // p_h) * (width // p_w)


def check_num_chunks(num_chunks: int, tokens: int) -> None:
    """Raise :class:`LightcacheError` when ``num_chunks`` is invalid for a sequence of ``tokens`` tokens."""
    FeatureChunkConfig(num_chunks)
    if num_chunks > tokens:
        raise LightcacheError(
            f"chunk_ffn is {num_chunks} but one transformer call has only {tokens} tokens at this size; "
            f"use between 1 and {tokens}."
        )


class FeatureChunkingHook(ModelHook):
    """Replaces a Wan transformer's (``role="model"``) or block's (``role="block"``) forward with a chunked one.

    Create it with :func:`apply_feature_chunking`, not directly.
    """

    def __init__(self, config: FeatureChunkConfig, role: str):
        super().__init__()
        self.config = config
        self.role = role
        # Set by the model-level hook while it runs the blocks on a hidden-state buffer it allocated itself.
        self.owns_input = False
        self.block_hooks: list[FeatureChunkingHook] = []  # the model-level hook's view of its blocks' hooks

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        if self.role == "model":
            return _chunked_model_forward(module, self, *args, **kwargs)
        return _chunked_block_forward(module, self, *args, **kwargs)


def apply_feature_chunking(
    transformer: torch.nn.Module, num_chunks: int | FeatureChunkConfig = 8
) -> FeatureChunkingHook:
    """Chunk a diffusers ``WanTransformer3DModel``'s token-wise layers; returns the model-level hook.

    ``num_chunks`` is the number of token slices (or a :class:`FeatureChunkConfig`). Apply it before any other
    hook on the transformer (EasyCache, group offloading): it raises :class:`LightcacheError` otherwise, and for
    transformers it does not know how to chunk.

    Example:
        >>> from lightcache.tiny import build_tiny_pipeline
        >>> transformer = build_tiny_pipeline(seed=0).transformer
        >>> hook = apply_feature_chunking(transformer, 4)
        >>> hook.config.num_chunks
        4
        >>> remove_feature_chunking(transformer)
    """
    config = num_chunks if isinstance(num_chunks, FeatureChunkConfig) else FeatureChunkConfig(num_chunks)
    _check_supported(transformer)
    for module in (transformer, *transformer.blocks):
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.hooks:
            names = ", ".join(registry.hooks)
            if CHUNK_HOOK in registry.hooks:
                raise LightcacheError("Feature chunking is already applied to this transformer.")
            raise LightcacheError(
                f"Apply feature chunking before other hooks: this transformer already has {names}. Chunking "
                "replaces the innermost forward, so hooks registered earlier would be bypassed."
            )
    model_hook = FeatureChunkingHook(config, role="model")
    model_hook.block_hooks = [FeatureChunkingHook(config, role="block") for _ in transformer.blocks]
    for block, hook in zip(transformer.blocks, model_hook.block_hooks):
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, CHUNK_HOOK)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(model_hook, CHUNK_HOOK)
    registry.invalidate_child_registries_cache()
    return model_hook


def remove_feature_chunking(transformer: torch.nn.Module) -> None:
    """Restore the plain forward; a no-op when chunking is not applied.

    Hooks registered after chunking must be removed first (diffusers' registry cannot unlink an inner hook from
    under an outer one that replaces the forward); this raises :class:`RuntimeError` rather than silently break them.
    """
    modules = [transformer, *transformer.blocks]
    registries = [getattr(m, "_diffusers_hook", None) for m in modules]
    registries = [r for r in registries if r is not None and CHUNK_HOOK in r.hooks]
    for registry in registries:
        later = list(registry.hooks)[list(registry.hooks).index(CHUNK_HOOK) + 1 :]
        if later:
            raise RuntimeError(
                f"Remove the hooks applied after feature chunking first ({', '.join(later)}), then remove chunking."
            )
    for registry in registries:
        registry.remove_hook(CHUNK_HOOK, recurse=False)
    if registries:
        HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()


def get_feature_chunking_hook(transformer: torch.nn.Module) -> FeatureChunkingHook | None:
    """The model-level chunking hook on ``transformer``, or None."""
    registry = getattr(transformer, "_diffusers_hook", None)
    return None if registry is None else registry.get_hook(CHUNK_HOOK)


# --- the chunked computations ---------------------------------------------------------------------------------
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
    bounds = _bounds(post_f * post_h * post_w, hook.config.num_chunks)

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
    for block, block_hook in zip(model.blocks, hook.block_hooks):
        block_hook.owns_input = _inplace_safe(block)
        try:
            hidden_states = block(hidden_states, encoder_hidden_states, timestep_proj, rotary_emb)
        finally:
            block_hook.owns_input = False

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
        y = (model.norm_out(part.float()) * (1 + _rows(scale, a, b)) + _rows(shift, a, b)).type_as(part)
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
    bounds = _bounds(hidden_states.shape[1], hook.config.num_chunks)
    attn = block.attn1

    def modulated(a: int, b: int) -> torch.Tensor:
        part = hidden_states[:, a:b]
        return (block.norm1(part.float()) * (1 + _rows(scale_msa, a, b)) + _rows(shift_msa, a, b)).type_as(part)

    # 1. Keys and values of the whole sequence (self-attention needs all of them for every query).
    key = value = None
    for a, b in bounds:
        normed = modulated(a, b)
        k = attn.norm_k(attn.to_k(normed)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(normed).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            k = _rotate(k, *(_rows(f, a, b) for f in rotary_emb))
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
            q = _rotate(q, *(_rows(f, a, b) for f in rotary_emb))
        o = _dispatch_attention(attn, q, key, value)
        o = o.flatten(2, 3).type_as(q)
        o = attn.to_out[1](attn.to_out[0](o))
        part = hidden_states[:, a:b]
        out[:, a:b] = (part.float() + o * _rows(gate_msa, a, b)).type_as(part)
        del q, o, part
    del key, value

    # 3. Cross-attention and feed-forward: purely per token, done in place on ``out``.
    for a, b in bounds:
        h = out[:, a:b]
        normed = block.norm2(h.float()).type_as(h)
        h = h + block.attn2(normed, encoder_hidden_states, None, None)
        normed = (block.norm3(h.float()) * (1 + _rows(c_scale_msa, a, b)) + _rows(c_shift_msa, a, b)).type_as(h)
        ff = block.ffn(normed)
        del normed
        out[:, a:b] = (h.float() + ff.float() * _rows(c_gate_msa, a, b)).type_as(h)
        del h, ff
    return out


# --- helpers ------------------------------------------------------------------------------------------------
def _bounds(tokens: int, num_chunks: int) -> list[tuple[int, int]]:
    check_num_chunks(num_chunks, tokens)
    base, extra = divmod(tokens, num_chunks)
    bounds, start = [], 0
    for i in range(num_chunks):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def _rows(t: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Slice a per-token tensor (B, tokens, ...) to tokens a..b; broadcast ones (B, 1, ...) pass through."""
    return t if t.shape[1] == 1 else t[:, a:b]


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


def _inplace_safe(block: torch.nn.Module) -> bool:
    registry = getattr(block, "_diffusers_hook", None)
    return registry is not None and set(registry.hooks) <= _INPLACE_SAFE_HOOKS


def _check_supported(transformer: torch.nn.Module) -> None:
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
