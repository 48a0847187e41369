"""HunyuanVideo's chunked blocks: joint text+video attention, slice by slice, exactly.

``HunyuanVideoTransformer3DModel`` runs dual-stream blocks (video and text each with their own norms, projections
and feed-forward, one attention over both) and then single-stream blocks (one set of layers over the video and
text tokens side by side, the feed-forward's hidden layer beside the attention). Both are chunked the same way
(:mod:`lightcache.techniques.chunk_parts`):

1. keys and values of the whole joint sequence (video rows, then text rows) into two buffers, one video token
   slice at a time (the rotary embedding turns the video rows only);
2. the text rows (a few hundred tokens against tens of thousands of video tokens) in one piece: their queries
   against all keys, their output and feed-forward;
3. each video slice: its queries against all keys, output projection, gated residual, the feed-forward and its
   gated residual, written over its own input rows when the model's forward owns that buffer.

The model's forward stays diffusers' own (:class:`~lightcache.techniques.chunk_parts.OwnForwardChunking`): the
head runs over slices too. Not chunked: the token refiner (``context_embedder``), which runs on the text tokens
alone, before the blocks; its largest tensor is ``text tokens x dim`` (256 tokens in the real model, against 75,600
video tokens at 720p x 129 frames), so slicing it would save nothing measurable. The image-to-video model's
token-replace blocks are refused (no pipeline of this family runs them).

The attention mask is the model's key mask (B, 1, 1, tokens), the same for every query slice; HunyuanVideo-1.5
(:mod:`lightcache.families.hunyuan_video15.chunked`) reuses these blocks with its own dense mask.

Example:
    >>> import torch
    >>> from lightcache.families.hunyuan_video.tiny import build_tiny_pipeline
    >>> transformer = build_tiny_pipeline(seed=0).transformer
    >>> forwards = HunyuanVideoChunkedForwards()
    >>> forwards.check(transformer)
    >>> forwards.num_tokens(transformer, (1, 4, 2, 8, 8)), len(forwards.transformer_blocks(transformer))
    (128, 2)
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import apply_rotary_emb

from ...errors import LightcacheError
from ...techniques.chunk import FeatureChunkingHook, token_bounds
from ...techniques.chunk_parts import OwnForwardChunking, attend, check_processor, fill_rows


class HunyuanVideoChunkedForwards(OwnForwardChunking):
    """Feature chunking's view of ``HunyuanVideoTransformer3DModel``: dual- then single-stream blocks."""

    def check(self, model: torch.nn.Module) -> None:
        from diffusers.models.transformers.transformer_hunyuan_video import (
            HunyuanVideoAttnProcessor2_0,
            HunyuanVideoSingleTransformerBlock,
            HunyuanVideoTransformer3DModel,
            HunyuanVideoTransformerBlock,
        )

        if not isinstance(model, HunyuanVideoTransformer3DModel):
            raise LightcacheError(f"Feature chunking supports HunyuanVideoTransformer3DModel here, not "
                                  f"{type(model).__name__}.")
        kinds = {HunyuanVideoTransformerBlock: "dual-stream", HunyuanVideoSingleTransformerBlock: "single-stream"}
        for i, block in enumerate(self.transformer_blocks(model)):
            if type(block) not in kinds:
                raise LightcacheError(f"Feature chunking has no chunked forward for {type(block).__name__} (block "
                                      f"{i}): only text-to-video HunyuanVideo blocks are chunked.")
            check_processor(block.attn, (HunyuanVideoAttnProcessor2_0,), f"{kinds[type(block)]} block {i}")

    def transformer_blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return [*model.transformer_blocks, *model.single_transformer_blocks]

    def num_tokens(self, model: torch.nn.Module, latent_shape: tuple[int, ...]) -> int:
        """Video tokens one call sees for latents of ``latent_shape`` (B, C, F, H, W)."""
        p, p_t = model.config.patch_size, model.config.patch_size_t
        _, _, frames, height, width = latent_shape
        return (frames // p_t) * (height // p) * (width // p)

    def transformer_block_forward(self, block, hook: FeatureChunkingHook, *args, **kwargs):
        if hasattr(block, "norm1_context"):
            return dual_stream_block(block, hook, *args, mask_rows=self.mask_rows, **kwargs)
        return self._single_stream_block(block, hook, *args, **kwargs)

    @staticmethod
    def mask_rows(attention_mask: torch.Tensor | None, a: int, b: int, tokens: int) -> torch.Tensor | None:
        """The mask of joint rows ``a..b`` against all ``tokens`` keys: HunyuanVideo's is a key mask
        (B, 1, 1, tokens), the same for every query row."""
        return attention_mask

    def _single_stream_block(self, block, hook: FeatureChunkingHook, hidden_states: torch.Tensor,
                             encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                             attention_mask: torch.Tensor | None = None,
                             image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None, *args, **kwargs):
        """``HunyuanVideoSingleTransformerBlock.forward`` over slices; the video and text rows stay two tensors."""
        attn = block.attn
        n_video, n_text = hidden_states.shape[1], encoder_hidden_states.shape[1]
        tokens = n_video + n_text
        shift, scale, gate = block.norm.linear(block.norm.silu(temb)).chunk(3, dim=1)
        # The joint sequence as (stream, first joint row, bounds in the stream, turned by the rotary embedding).
        segments = ((hidden_states, 0, token_bounds(n_video, hook.config.num_chunks), True),
                    (encoder_hidden_states, n_video, [(0, n_text)], False))

        def normed(stream: torch.Tensor, a: int, b: int) -> torch.Tensor:
            return block.norm.norm(stream[:, a:b]) * (1 + scale[:, None]) + shift[:, None]

        key = value = None
        for stream, offset, bounds, rotated in segments:
            def keys_values(a: int, b: int, stream=stream, rotated=rotated):
                x = normed(stream, a, b)
                k = _heads(attn, attn.to_k(x), attn.norm_k)
                v = _heads(attn, attn.to_v(x), None)
                return (_rotate(k, image_rotary_emb, a, b) if rotated else k), v

            key, value = fill_rows(bounds, keys_values, out=(key, value), offset=offset, length=tokens)

        outputs = []
        for stream, offset, bounds, rotated in segments:
            def rows(a: int, b: int, stream=stream, offset=offset, rotated=rotated) -> torch.Tensor:
                x = normed(stream, a, b)
                q = _heads(attn, attn.to_q(x), attn.norm_q)
                q = _rotate(q, image_rotary_emb, a, b) if rotated else q
                o = attend(attn, q, key, value, self.mask_rows(attention_mask, offset + a, offset + b, tokens))
                mlp = block.act_mlp(block.proj_mlp(x))
                del x, q
                return gate.unsqueeze(1) * block.proj_out(torch.cat([o, mlp], dim=2)) + stream[:, a:b]

            owned = rotated and hook.owns_input and stream.is_contiguous()
            outputs.append(fill_rows(bounds, rows, out=(stream if owned else None,))[0])
        return outputs[0], outputs[1]


def dual_stream_block(block, hook: FeatureChunkingHook, hidden_states: torch.Tensor,
                      encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                      attention_mask: torch.Tensor | None = None,
                      freqs_cis: tuple[torch.Tensor, torch.Tensor] | None = None, *args, mask_rows, **kwargs):
    """The dual-stream block's forward (``HunyuanVideoTransformerBlock``, and HunyuanVideo-1.5's, which differs only
    in its mask: ``mask_rows(attention_mask, a, b, tokens)`` gives joint rows ``a..b`` theirs) over video slices."""
    attn = block.attn
    n_video, n_text = hidden_states.shape[1], encoder_hidden_states.shape[1]
    tokens = n_video + n_text
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1.linear(
        block.norm1.silu(temb)).chunk(6, dim=1)
    c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context.linear(
        block.norm1_context.silu(temb)).chunk(6, dim=1)
    bounds = token_bounds(n_video, hook.config.num_chunks)

    def normed(a: int, b: int) -> torch.Tensor:
        return block.norm1.norm(hidden_states[:, a:b]) * (1 + scale_msa[:, None]) + shift_msa[:, None]

    # 1. Keys and values: the video rows slice by slice, then the text rows.
    def video_keys_values(a: int, b: int):
        x = normed(a, b)
        k = _heads(attn, attn.to_k(x), attn.norm_k)
        return _rotate(k, freqs_cis, a, b), _heads(attn, attn.to_v(x), None)

    key, value = fill_rows(bounds, video_keys_values, length=tokens)
    context = block.norm1_context.norm(encoder_hidden_states) * (1 + c_scale_msa[:, None]) + c_shift_msa[:, None]
    text_query = _heads(attn, attn.add_q_proj(context), attn.norm_added_q)
    key[:, n_video:] = _heads(attn, attn.add_k_proj(context), attn.norm_added_k)
    value[:, n_video:] = _heads(attn, attn.add_v_proj(context), None)
    del context

    # 2. The text stream, whole: it is short.
    context_attn = attn.to_add_out(attend(attn, text_query, key, value,
                                          mask_rows(attention_mask, n_video, tokens, tokens)))
    encoder_hidden_states = encoder_hidden_states + context_attn * c_gate_msa.unsqueeze(1)
    context = block.norm2_context(encoder_hidden_states) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
    encoder_hidden_states = encoder_hidden_states + c_gate_mlp.unsqueeze(1) * block.ff_context(context)
    del text_query, context_attn, context

    # 3. The video stream, slice by slice: keys and values already hold what later slices need from the input.
    def video_rows(a: int, b: int) -> torch.Tensor:
        q = _heads(attn, attn.to_q(normed(a, b)), attn.norm_q)
        o = attend(attn, _rotate(q, freqs_cis, a, b), key, value, mask_rows(attention_mask, a, b, tokens))
        h = hidden_states[:, a:b] + attn.to_out[1](attn.to_out[0](o)) * gate_msa.unsqueeze(1)
        del q, o
        x = block.norm2(h) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return h + gate_mlp.unsqueeze(1) * block.ff(x)

    owned = hook.owns_input and hidden_states.is_contiguous()
    out = fill_rows(bounds, video_rows, out=(hidden_states if owned else None,))[0]
    return out, encoder_hidden_states


# --- helpers ------------------------------------------------------------------------------------------------
def _rotate(x: torch.Tensor, freqs: tuple[torch.Tensor, torch.Tensor] | None, a: int, b: int) -> torch.Tensor:
    # diffusers' own rotation (its float32 arithmetic), on the slice's rows of the tables.
    if freqs is None:
        return x
    return apply_rotary_emb(x, tuple(f[a:b] for f in freqs), sequence_dim=1)


def _heads(attn, projected: torch.Tensor, norm) -> torch.Tensor:
    # (B, rows, heads * head_dim) -> (B, rows, heads, head_dim), then the per-head norm where the layer has one.
    projected = projected.unflatten(2, (attn.heads, -1))
    return projected if norm is None else norm(projected)
