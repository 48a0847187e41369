"""Feature chunking: run the transformer's token-wise work over slices of the token sequence, exactly.

In a transformer block usually only the self-attention mixes tokens; everything else (the modulated norms, the q/k/v
projections, their norms and rotary embedding, the cross-attention queries, the feed-forward network, the output
head) treats every token on its own. Run whole, those layers materialise several ``tokens x width`` tensors at
once (the feed-forward's ``tokens x ffn_dim`` hidden layer above all). For Wan2.1-14B at 720x1280x81 (75,600
tokens) that is what lifts one forward 8 GiB above the weights.

This module is the shared part: the hook that replaces the forward of a model and of each of its blocks, the token
slices (:func:`token_bounds`, :func:`token_rows`), and the rule that lets a block write its output over its input
(when the model-level forward allocated that buffer itself and no hook keeps a reference to it). The chunked
arithmetic of a family's blocks is the family's own (:class:`ChunkedForwards`, returned by the family adapter's
``chunked_forwards``; Wan's is :mod:`lightcache.families.wan.chunked`), written with the parts every architecture
shares (:mod:`lightcache.techniques.chunk_parts`). Nothing is approximated: the output matches the unchunked model
to float rounding.

Order matters: this module replaces the innermost forward of the transformer and of each block, so apply it
*before* any other hook (EasyCache, group offloading) and remove it after them; both functions say so if not.

Example:
    >>> import torch
    >>> from lightcache.families import adapter_named
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> from lightcache.techniques.chunk import apply_feature_chunking, remove_feature_chunking
    >>> transformer = build_tiny_pipeline(seed=0).transformer
    >>> x, t = torch.randn(1, 4, 3, 8, 8), torch.tensor([500])
    >>> text = torch.randn(1, 6, 32)
    >>> with torch.no_grad():
    ...     plain = transformer(x, t, text, return_dict=False)[0]
    ...     _ = apply_feature_chunking(transformer, 4, adapter_named("wan"))
    ...     chunked = transformer(x, t, text, return_dict=False)[0]
    ...     remove_feature_chunking(transformer)
    >>> bool((plain - chunked).abs().max() < 1e-5)
    True
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from .compile import COMPILE_HOOK
from ..errors import LightcacheError

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


class ChunkedForwards:
    """What a family gives feature chunking for one kind of denoiser: its blocks and their chunked forwards.

    A family subclasses this (Wan: :class:`lightcache.families.wan.chunked.WanChunkedForwards`); its adapter's
    ``chunked_forwards(denoiser)`` returns an instance, or None where the family has none.
    """

    def check(self, model: torch.nn.Module) -> None:
        """Raise :class:`LightcacheError` (why, in one sentence) unless ``model`` can be chunked exactly."""
        raise NotImplementedError

    def blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The blocks whose forward :meth:`block_forward` replaces, in call order."""
        raise NotImplementedError

    def num_tokens(self, model: torch.nn.Module, latent_shape: tuple[int, ...]) -> int:
        """Tokens one call of ``model`` sees for latents of ``latent_shape`` (the adapter's latent shape)."""
        raise NotImplementedError

    def model_forward(self, model, hook: "FeatureChunkingHook", *args, **kwargs):
        """The model's forward with its blocks run (in place where ``hook`` allows) and its head chunked."""
        raise NotImplementedError

    def block_forward(self, block, hook: "FeatureChunkingHook", *args, **kwargs):
        """One block's forward, token slice by token slice; writes over its input when ``hook.owns_input``."""
        raise NotImplementedError


def check_num_chunks(num_chunks: int, tokens: int) -> None:
    """Raise :class:`LightcacheError` when ``num_chunks`` is invalid for a sequence of ``tokens`` tokens."""
    FeatureChunkConfig(num_chunks)
    if num_chunks > tokens:
        raise LightcacheError(
            f"chunk_ffn is {num_chunks} but one transformer call has only {tokens} tokens at this size; "
            f"use between 1 and {tokens}."
        )


class FeatureChunkingHook(ModelHook):
    """Replaces a model's (``role="model"``) or block's (``role="block"``) forward with the family's chunked one.

    Create it with :func:`apply_feature_chunking`, not directly.
    """

    def __init__(self, config: FeatureChunkConfig, role: str, forwards: ChunkedForwards):
        super().__init__()
        self.config = config
        self.role = role
        self.forwards = forwards
        # Set by the model-level hook while it runs the blocks on a hidden-state buffer it allocated itself.
        self.owns_input = False
        self.block_hooks: list[FeatureChunkingHook] = []  # the model-level hook's view of its blocks' hooks
        self.blocks: list[torch.nn.Module] = []  # the model-level hook's blocks, in the order of block_hooks

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        if self.role == "model":
            return self.forwards.model_forward(module, self, *args, **kwargs)
        return self.forwards.block_forward(module, self, *args, **kwargs)

    def run_block(self, block: torch.nn.Module, index: int, *args) -> torch.Tensor:
        """Run block ``index`` of the model on a hidden state this (model-level) forward allocated itself: the block
        may then write its output over its input, unless a hook that keeps its input sits on it."""
        block_hook = self.block_hooks[index]
        block_hook.owns_input = _inplace_safe(block)
        try:
            return block(*args)
        finally:
            block_hook.owns_input = False

    @contextlib.contextmanager
    def blocks_own_inputs(self, block_hooks: list["FeatureChunkingHook"]):
        """While the model's own forward runs the blocks of ``block_hooks`` one after another, each on the hidden
        state the one before returned (and holds no other reference to it), let each write its output over its
        input, unless a hook that keeps its input sits on it."""
        for block, block_hook in zip(self.blocks, self.block_hooks):
            if block_hook in block_hooks:
                block_hook.owns_input = _inplace_safe(block)
        try:
            yield
        finally:
            for block_hook in block_hooks:
                block_hook.owns_input = False


def apply_feature_chunking(
    transformer: torch.nn.Module, num_chunks: int | FeatureChunkConfig, adapter: Any
) -> FeatureChunkingHook:
    """Chunk a denoiser's token-wise layers with the chunked forwards its family ``adapter`` gives; returns the
    model-level hook.

    ``num_chunks`` is the number of token slices (or a :class:`FeatureChunkConfig`). Apply it before any other
    hook on the transformer (EasyCache, group offloading): it raises :class:`LightcacheError` otherwise, and for
    denoisers the family cannot chunk.

    Example:
        >>> from lightcache.families import adapter_named
        >>> from lightcache.tiny import build_tiny_pipeline
        >>> transformer = build_tiny_pipeline(seed=0).transformer
        >>> hook = apply_feature_chunking(transformer, 4, adapter_named("wan"))
        >>> hook.config.num_chunks
        4
        >>> remove_feature_chunking(transformer)
    """
    config = num_chunks if isinstance(num_chunks, FeatureChunkConfig) else FeatureChunkConfig(num_chunks)
    forwards = adapter.chunked_forwards(transformer)
    if forwards is None:
        raise LightcacheError(f"Feature chunking has no implementation for {type(transformer).__name__} "
                              f"(the {adapter.name or type(adapter).__name__} family).")
    forwards.check(transformer)
    blocks = list(forwards.blocks(transformer))
    for module in (transformer, *blocks):
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.hooks:
            names = ", ".join(registry.hooks)
            if CHUNK_HOOK in registry.hooks:
                raise LightcacheError("Feature chunking is already applied to this transformer.")
            raise LightcacheError(
                f"Apply feature chunking before other hooks: this transformer already has {names}. Chunking "
                "replaces the innermost forward, so hooks registered earlier would be bypassed."
            )
    model_hook = FeatureChunkingHook(config, role="model", forwards=forwards)
    model_hook.blocks = blocks
    model_hook.block_hooks = [FeatureChunkingHook(config, role="block", forwards=forwards) for _ in blocks]
    for block, hook in zip(blocks, model_hook.block_hooks):
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
    model_hook = get_feature_chunking_hook(transformer)
    if model_hook is None:
        return
    modules = [transformer, *model_hook.blocks]
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


# --- the shared token slicing --------------------------------------------------------------------------------
def token_bounds(tokens: int, num_chunks: int) -> list[tuple[int, int]]:
    """``num_chunks`` contiguous (start, stop) slices of ``tokens`` tokens, as even as whole tokens allow.

    >>> token_bounds(10, 3)
    [(0, 4), (4, 7), (7, 10)]
    """
    check_num_chunks(num_chunks, tokens)
    base, extra = divmod(tokens, num_chunks)
    bounds, start = [], 0
    for i in range(num_chunks):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def token_rows(t: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Slice a per-token tensor (B, tokens, ...) to tokens a..b; broadcast ones (B, 1, ...) pass through."""
    return t if t.shape[1] == 1 else t[:, a:b]


def _inplace_safe(block: torch.nn.Module) -> bool:
    registry = getattr(block, "_diffusers_hook", None)
    return registry is not None and set(registry.hooks) <= _INPLACE_SAFE_HOOKS
