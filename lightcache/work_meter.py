"""What a transformer call really computed: counts of the parts of a Wan transformer that ran.

:class:`WorkMeter` counts, with plain PyTorch forward pre-hooks, which parts of the transformer actually ran:
transformer bodies (the patch embedding ran: a call EasyCache reused never gets there), block bodies (the block's
first norm ran: a block a cache skipped never gets there), and the tokens that went through each block's
self-attention, cross-attention and feed-forward layers. PyTorch hooks fire on ``module(...)`` whatever diffusers'
hooks do inside ``forward``, so a cache that skips a layer simply leaves its counters alone, and a method that slices
the tokens (feature chunking) adds up to the same totals.

From the token counts it derives the work in multiply-accumulate FLOPs of those layers (they are nearly all of a
Wan transformer's arithmetic; embeddings and the output head are left out). ``work / plain work`` is the fraction
of the transformer's work a method computed. Each hook costs well under a microsecond; a tiny-model call takes
milliseconds. The benchmark reads it per run (:mod:`lightcache.bench.meter`); the live trace reads it per call
(:class:`lightcache.call_work.CallWork`).

Example:
    >>> import torch
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> from lightcache.work_meter import WorkMeter
    >>> transformer = build_tiny_pipeline(seed=0).transformer
    >>> with WorkMeter(transformer) as meter, torch.no_grad():
    ...     _ = transformer(torch.randn(1, 4, 3, 8, 8), torch.tensor([500]), torch.randn(1, 6, 32))
    >>> meter.counts()["block_calls"], meter.counts()["transformer_bodies"]
    (2, 1)
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import LightcacheError

#: The keys of :meth:`WorkMeter.counts`, in order.
COUNT_KEYS = (
    "transformer_calls", "transformer_bodies", "block_calls", "self_attention_calls", "cross_attention_calls",
    "ffn_calls", "work_flops",
)

#: The layers of a block the meter prices: self-attention, cross-attention, feed-forward.
UNITS = ("self", "cross", "ffn")


class WorkMeter:
    """Counts executed transformer parts with forward pre-hooks; use as a context manager or attach/detach."""

    def __init__(self, transformer: torch.nn.Module):
        blocks = getattr(transformer, "blocks", None)
        if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) == 0:
            raise LightcacheError(
                f"The work meter needs a transformer with a 'blocks' list (Wan); {type(transformer).__name__} has none."
            )
        self.transformer = transformer
        config = transformer.config
        self.dim = int(config.num_attention_heads * config.attention_head_dim)
        self.ffn_dim = int(config.ffn_dim)
        self.patch = tuple(config.patch_size)
        self.num_blocks = len(blocks)
        self._handles: list[Any] = []
        self.reset()

    # --- lifecycle -----------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Zero every count. In place: the hooks hold references to these lists and sets."""
        if not hasattr(self, "block_calls"):
            self.block_calls = [0] * self.num_blocks
            self.self_attention_calls = [0] * self.num_blocks
            self.cross_attention_calls = [0] * self.num_blocks
            self.ffn_calls = [0] * self.num_blocks
            self._seen: list[set[str]] = [set() for _ in range(self.num_blocks)]
        for counter in (self.block_calls, self.self_attention_calls, self.cross_attention_calls, self.ffn_calls):
            counter[:] = [0] * self.num_blocks
        for seen in self._seen:
            seen.clear()
        self.transformer_calls = 0
        self.transformer_bodies = 0
        self.flops = 0.0
        # The FLOPs of each kind of layer, apart: the live trace prices a skipped layer at what its kind cost.
        self.unit_flops = {unit: 0.0 for unit in UNITS}
        self._tokens = 0  # sequence length of the current call
        self._cross_queries = 0  # query tokens per sample of the cross-attention being run

    def attach(self) -> "WorkMeter":
        if self._handles:
            return self
        t = self.transformer
        add = self._handles.append
        add(t.register_forward_pre_hook(self._on_transformer, with_kwargs=True))
        add(t.patch_embedding.register_forward_pre_hook(self._on_body))
        for i, block in enumerate(t.blocks):
            add(block.register_forward_pre_hook(self._make_block_hook(i)))
            add(block.norm1.register_forward_pre_hook(self._make_unit_hook(i, "block", self.block_calls)))
            add(block.attn1.to_q.register_forward_pre_hook(self._make_unit_hook(i, "self", self.self_attention_calls,
                                                                                 self._self_attention_flops)))
            add(block.attn2.to_q.register_forward_pre_hook(self._make_unit_hook(i, "cross", self.cross_attention_calls,
                                                                                  self._cross_attention_flops)))
            add(block.attn2.to_k.register_forward_pre_hook(self._make_flops_hook(self._projection_flops, "cross")))
            first_ffn_layer = _first_linear(block.ffn)
            add(first_ffn_layer.register_forward_pre_hook(self._make_unit_hook(i, "ffn", self.ffn_calls,
                                                                                 self._ffn_flops)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "WorkMeter":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def counts(self) -> dict[str, float | int]:
        """Totals since the last :meth:`reset`: calls and bodies of the transformer, executed block parts, FLOPs."""
        return {
            "transformer_calls": self.transformer_calls,
            "transformer_bodies": self.transformer_bodies,
            "block_calls": sum(self.block_calls),
            "self_attention_calls": sum(self.self_attention_calls),
            "cross_attention_calls": sum(self.cross_attention_calls),
            "ffn_calls": sum(self.ffn_calls),
            "work_flops": self.flops,
        }

    def per_block(self) -> dict[str, list[int]]:
        """Executions per block index, for checking what a method skipped."""
        return {
            "block_calls": list(self.block_calls),
            "self_attention_calls": list(self.self_attention_calls),
            "cross_attention_calls": list(self.cross_attention_calls),
            "ffn_calls": list(self.ffn_calls),
        }

    # --- hooks ---------------------------------------------------------------------------------------------
    def _on_transformer(self, module, args, kwargs):
        self.transformer_calls += 1
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if isinstance(hidden, torch.Tensor) and hidden.ndim == 5:
            pt, ph, pw = self.patch
            self._tokens = (hidden.shape[2] // pt) * (hidden.shape[3] // ph) * (hidden.shape[4] // pw)
        return None

    def _on_body(self, module, args):
        self.transformer_bodies += 1

    def _make_block_hook(self, index: int):
        def hook(module, args):
            # A new invocation of this block: each unit counts once per invocation, however many slices it runs.
            self._seen[index].clear()

        return hook

    def _make_unit_hook(self, index: int, unit: str, counter: list[int], flops=None):
        seen = self._seen[index]

        def hook(module, args):
            if unit not in seen:
                seen.add(unit)
                counter[index] += 1
            if flops is not None:
                cost = flops(args[0])
                self.flops += cost
                self.unit_flops[unit] += cost

        return hook

    def _make_flops_hook(self, flops, unit: str):
        def hook(module, args):
            cost = flops(args[0])
            self.flops += cost
            self.unit_flops[unit] += cost

        return hook

    # --- the work model (multiply-accumulates x 2) ---------------------------------------------------------
    def _self_attention_flops(self, x: torch.Tensor) -> float:
        # q, k, v and output projections per query token, plus its scores and weighted sum against every token of
        # the call (keys and values are as many as the call's tokens, however the queries are sliced).
        d = self.dim
        return _rows(x) * (4 * 2 * d * d + 2 * 2 * self._tokens * d)

    def _cross_attention_flops(self, x: torch.Tensor) -> float:
        # q and output projections per query token; the scores are added when the keys are projected (next hook),
        # because only then is the text length known. The processor always projects q before k.
        d = self.dim
        self._cross_queries = _rows(x) // max(1, x.shape[0])
        return _rows(x) * 2 * 2 * d * d

    def _projection_flops(self, context: torch.Tensor) -> float:
        # cross-attention keys and values of the text tokens, and the scores of the queries just projected.
        d = self.dim
        text_tokens = _rows(context) // max(1, context.shape[0])
        return _rows(context) * 2 * 2 * d * d + context.shape[0] * self._cross_queries * text_tokens * 2 * 2 * d

    def _ffn_flops(self, x: torch.Tensor) -> float:
        return _rows(x) * 2 * 2 * self.dim * self.ffn_dim


def has_wan_layout(transformer: torch.nn.Module) -> bool:
    """True when ``transformer`` is laid out as :class:`WorkMeter` reads it part by part (Wan's, and models built
    like it): a patch embedding, a ``blocks`` list, blocks with ``norm1``, ``attn1``, ``attn2`` and ``ffn``."""
    blocks = getattr(transformer, "blocks", None)
    config = getattr(transformer, "config", None)
    return (isinstance(blocks, torch.nn.ModuleList) and len(blocks) > 0 and hasattr(transformer, "patch_embedding")
            and all(hasattr(blocks[0], name) for name in ("norm1", "attn1", "attn2", "ffn"))
            and all(hasattr(config, key) for key in ("num_attention_heads", "attention_head_dim", "ffn_dim",
                                                      "patch_size")))


def work_meter_for(denoiser: torch.nn.Module, blocks=None):
    """The exact :class:`WorkMeter` where ``denoiser`` has Wan's layout, else a
    :class:`~lightcache.block_work_meter.BlockWorkMeter` on ``blocks`` (the adapter's repeated blocks).

    >>> from lightcache.tiny import build_tiny_pipeline
    >>> type(work_meter_for(build_tiny_pipeline(seed=0).transformer)).__name__
    'WorkMeter'
    """
    if has_wan_layout(denoiser):
        return WorkMeter(denoiser)
    from .block_work_meter import BlockWorkMeter

    return BlockWorkMeter(denoiser, blocks)


def _rows(x: Any) -> int:
    """Tokens in a (batch, tokens, features) activation: every row a linear layer sees."""
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        return 0
    return x.numel() // x.shape[-1]


def _first_linear(module: torch.nn.Module) -> torch.nn.Module:
    for sub in module.modules():
        if isinstance(sub, torch.nn.Linear):
            return sub
    raise LightcacheError(f"No linear layer found in {type(module).__name__}.")
