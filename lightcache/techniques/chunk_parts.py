"""The parts of exact feature chunking every architecture shares: token-wise layers and attention over token slices.

A transformer block mixes tokens only in its attention; every other layer (norms, modulation, projections,
diffusers' ``FeedForward``) treats each token on its own, so running it on a slice of the tokens computes exactly
those tokens' rows. Attention is exact too when each *query* slice attends to the keys and values of *all* tokens:
every query row is computed on its own. A family's chunked block (``families/<family>/chunked.py``) is therefore
written with four parts from here:

* :func:`fill_rows`: run a per-slice computation and gather its outputs into whole-sequence buffers (the keys and
  values every query slice needs, or a block's output);
* :func:`attend`: attention of one query slice against all keys and values, through diffusers' dispatcher and the
  backend the block's own attention processor names;
* :func:`query_key_mask`: the rows of a dense ``(query, key)`` padding mask that a query slice needs, built for
  the slice only (a whole dense mask is ``tokens x tokens``);
* :class:`HeadOverSlices`: a model's output head, ``proj_out(norm_out(x, temb))``, run slice by slice inside the
  model's own forward.

:class:`OwnForwardChunking` is the base for a family whose model forward can stay diffusers' own: its blocks are
chunked and write over their input, and its head runs over slices; a family adds its blocks and their chunked
forward (HunyuanVideo: :mod:`lightcache.families.hunyuan_video.chunked`). :class:`FeedForwardChunking` chunks
only the ``FeedForward`` layers of any model (the UNets': see its docstring for why that is the right cut there).

Example:
    >>> import torch
    >>> from diffusers.models.attention import FeedForward
    >>> from lightcache.techniques.chunk import token_bounds
    >>> ff = FeedForward(8, mult=2).eval()
    >>> x = torch.randn(2, 10, 8)
    >>> sliced, = fill_rows(token_bounds(10, 3), lambda a, b: ff(x[:, a:b]))
    >>> bool((sliced - ff(x)).abs().max() < 1e-6)
    True
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Sequence

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_dispatch import dispatch_attention_fn

from ..errors import LightcacheError
from .chunk import ChunkedForwards, FeatureChunkingHook, token_bounds

Bounds = Sequence[tuple[int, int]]


def fill_rows(bounds: Bounds, compute: Callable[[int, int], torch.Tensor | tuple[torch.Tensor, ...]],
              out: Sequence[torch.Tensor | None] | None = None, offset: int = 0,
              length: int | None = None) -> tuple[torch.Tensor, ...]:
    """Write ``compute(a, b)`` (a tensor or a tuple of tensors with rows ``a..b`` on dim 1) into buffers, slice by
    slice; returns the buffers.

    A buffer given in ``out`` is written at rows ``offset + a .. offset + b`` (one buffer may hold several streams:
    a joint attention's video keys, then its text keys); a missing one is allocated on the first slice with
    ``length`` rows (by default the last bound's end) and the slice's dtype and device. Only one slice's
    temporaries exist at a time.

    >>> x = torch.arange(6.).view(1, 6, 1)
    >>> fill_rows([(0, 4), (4, 6)], lambda a, b: 2 * x[:, a:b])[0].flatten().tolist()
    [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    """
    tokens = length if length is not None else bounds[-1][1]
    buffers: list[torch.Tensor | None] = list(out) if out is not None else []
    for a, b in bounds:
        parts = compute(a, b)
        parts = parts if isinstance(parts, tuple) else (parts,)
        if len(buffers) < len(parts):
            buffers += [None] * (len(parts) - len(buffers))
        for i, part in enumerate(parts):
            if buffers[i] is None:
                buffers[i] = part.new_empty((part.shape[0], tokens, *part.shape[2:]))
            buffers[i][:, offset + a:offset + b] = part
        del parts
    return tuple(buffers)


def attend(attn: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of a query slice (B, rows, heads, head_dim) against all ``key`` / ``value`` rows, with the backend
    the attention module's processor names (diffusers' default otherwise); (B, rows, heads * head_dim) in the
    query's dtype, as diffusers' processors return it."""
    processor = getattr(attn, "processor", None)
    out = dispatch_attention_fn(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False,
                                backend=getattr(processor, "_attention_backend", None), parallel_config=None)
    return out.flatten(2, 3).to(query.dtype)


def query_key_mask(valid: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Rows ``a..b`` of the dense mask ``valid[:, q] & valid[:, k]`` (B, 1, b - a, tokens) that diffusers' processors
    build whole from a (B, tokens) padding mask: a query may attend to a key when both are real tokens.

    >>> query_key_mask(torch.tensor([[True, True, False]]), 1, 3).int().tolist()
    [[[[1, 1, 0], [0, 0, 0]]]]
    """
    valid = valid.bool()
    return valid[:, None, a:b, None] & valid[:, None, None, :]


def check_processor(module: torch.nn.Module, processor_types: tuple[type, ...], where: str) -> None:
    """Raise :class:`LightcacheError` unless ``module``'s attention runs diffusers' own processor (whose arithmetic
    a chunked forward reproduces) on unfused projections, without context parallelism."""
    processor = getattr(module, "processor", None)
    if type(processor) not in processor_types:
        names = " or ".join(t.__name__ for t in processor_types)
        raise LightcacheError(f"Feature chunking needs diffusers' {names}; {where} uses {type(processor).__name__}.")
    if getattr(module, "fused_projections", False):
        raise LightcacheError("Feature chunking needs unfused q/k/v projections; call unfuse_qkv_projections().")
    if getattr(processor, "_parallel_config", None) is not None:
        raise LightcacheError("Feature chunking does not combine with context parallelism.")


# --- a model forward that stays diffusers' own ------------------------------------------------------------------
class _Deferred:
    """What ``norm_out`` hands ``proj_out`` inside a chunked model forward: its plain forward and inputs, not a
    ``tokens x dim`` result."""

    def __init__(self, norm: Callable, hidden_states: torch.Tensor, args: tuple, kwargs: dict):
        self.norm, self.hidden_states, self.args, self.kwargs = norm, hidden_states, args, kwargs


class HeadOverSlices:
    """The output head ``proj_out(norm_out(x, temb))`` over token slices, for models whose forward ends that way.

    Inside the model's forward (:meth:`active`), ``norm_out`` returns its inputs unevaluated and ``proj_out`` runs
    both layers slice by slice into its ``tokens x out`` output, so the normalised ``tokens x dim`` tensor and its
    modulation temporaries never exist whole. Outside it both layers are plain. A forward that used ``norm_out``'s
    result for anything but ``proj_out`` would fail loudly on the unevaluated value, never silently.
    """

    def __init__(self, norm_out: torch.nn.Module, proj_out: torch.nn.Module):
        self.norm_out, self.proj_out = norm_out, proj_out
        self._active = False

    @contextlib.contextmanager
    def active(self):
        self._active = True
        try:
            yield
        finally:
            self._active = False

    def forward(self, module: torch.nn.Module, hook: FeatureChunkingHook, *args, **kwargs):
        """The chunking hook's forward for ``norm_out`` or ``proj_out``."""
        plain = hook.fn_ref.original_forward
        if module is self.norm_out:
            return _Deferred(plain, args[0], args[1:], kwargs) if self._active else plain(*args, **kwargs)
        deferred = args[0]
        if not isinstance(deferred, _Deferred):
            return plain(*args, **kwargs)
        x = deferred.hidden_states

        def head(a: int, b: int) -> torch.Tensor:
            return plain(deferred.norm(x[:, a:b], *deferred.args, **deferred.kwargs))

        return fill_rows(token_bounds(x.shape[1], hook.config.num_chunks), head)[0]


class OwnForwardChunking(ChunkedForwards):
    """Chunking for a model whose own forward runs its blocks one after another, each on the hidden state the one
    before returned, and ends with ``proj_out(norm_out(x, temb))``.

    The model's forward is diffusers' own; while it runs, each block may write its output over its input (the
    forward holds no other reference to it: that saves one ``tokens x dim`` buffer per block) and the head runs over
    slices (:class:`HeadOverSlices`). A family subclasses it with :meth:`check`, :meth:`transformer_blocks`,
    :meth:`num_tokens` and :meth:`transformer_block_forward` (which writes over its input only when
    ``hook.owns_input`` and the input is contiguous).
    """

    def __init__(self):
        self._heads: dict[int, HeadOverSlices] = {}

    def transformer_blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The model's transformer blocks, in call order."""
        raise NotImplementedError

    def blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The transformer blocks, then the head's two layers."""
        self._head(model)
        return [*self.transformer_blocks(model), model.norm_out, model.proj_out]

    def model_forward(self, model, hook: FeatureChunkingHook, *args, **kwargs):
        head = self._head(model)
        transformer_blocks = set(map(id, self.transformer_blocks(model)))
        owning = [h for block, h in zip(hook.blocks, hook.block_hooks) if id(block) in transformer_blocks]
        with hook.blocks_own_inputs(owning), head.active():
            return hook.fn_ref.original_forward(*args, **kwargs)

    def block_forward(self, block, hook: FeatureChunkingHook, *args, **kwargs):
        head = self._heads.get(id(block))
        if head is not None:
            return head.forward(block, hook, *args, **kwargs)
        return self.transformer_block_forward(block, hook, *args, **kwargs)

    def transformer_block_forward(self, block, hook: FeatureChunkingHook, *args, **kwargs):
        """One transformer block's chunked forward (the family's own)."""
        raise NotImplementedError

    def _head(self, model) -> HeadOverSlices:
        head = self._heads.get(id(model.norm_out))
        if head is None:
            head = HeadOverSlices(model.norm_out, model.proj_out)
            self._heads[id(model.norm_out)] = self._heads[id(model.proj_out)] = head
        return head


# --- the feed-forward layers alone ------------------------------------------------------------------------------
class FeedForwardChunking(ChunkedForwards):
    """Every diffusers ``FeedForward`` of a model run over ``num_chunks`` slices of its rows; the rest is untouched.

    This is the cut for the UNets (SVD, AnimateDiff): their transformer blocks are a small part of the model (the
    convolutions and the skip connections dominate its memory), and within a block the feed-forward's hidden layer
    (GEGLU: 8x the width, then 4x) is by far the widest temporary. It is the arithmetic of diffusers'
    ``enable_forward_chunking`` (the feed-forward over slices), without its limits: diffusers takes one chunk *size*
    and one axis for the whole UNet, which must divide that axis in every block (the batch of frames in spatial
    blocks, of pixels in temporal ones; SVD fixes frames), and concatenates the slices' outputs into a second
    buffer. Here each layer's rows (all leading axes together) split into ``num_chunks`` near-equal slices written
    into one output, whatever the shapes.

    A layer with fewer rows than ``num_chunks`` (the coarsest levels) runs one row per slice.
    """

    def __init__(self, model_types: tuple[type, ...] = ()):
        self.model_types = model_types

    def check(self, model: torch.nn.Module) -> None:
        if self.model_types and not isinstance(model, self.model_types):
            names = ", ".join(t.__name__ for t in self.model_types)
            raise LightcacheError(f"Feature chunking supports {names} here, not {type(model).__name__}.")
        if not self.blocks(model):
            raise LightcacheError(f"Feature chunking finds no feed-forward layer in {type(model).__name__}: it "
                                  "would chunk nothing.")

    def blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return [m for m in model.modules() if isinstance(m, FeedForward)]

    def num_tokens(self, model: torch.nn.Module, latent_shape: tuple[int, ...]) -> int:
        """Tokens of the finest level: the latent's frames x height x width (any layout: the three largest axes
        after batch and channels multiply the same)."""
        return math.prod(latent_shape[2:5])

    def model_forward(self, model, hook: FeatureChunkingHook, *args, **kwargs):
        return hook.fn_ref.original_forward(*args, **kwargs)

    def block_forward(self, ff, hook: FeatureChunkingHook, hidden_states: torch.Tensor, *args, **kwargs):
        plain = hook.fn_ref.original_forward
        rows = hidden_states.reshape(-1, hidden_states.shape[-1])  # every leading axis is a row: one token each
        out = None
        for a, b in token_bounds(rows.shape[0], min(hook.config.num_chunks, rows.shape[0])):
            y = plain(rows[a:b], *args, **kwargs)
            if out is None:
                out = y.new_empty((rows.shape[0], y.shape[-1]))
            out[a:b] = y
            del y
        return out.reshape(*hidden_states.shape[:-1], out.shape[-1])
