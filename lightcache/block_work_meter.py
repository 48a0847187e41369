"""What a denoiser call computed, for any denoiser: counts of its repeated blocks that ran and their layers' FLOPs.

:class:`~lightcache.work_meter.WorkMeter` knows Wan's layout part by part. Other models differ in how their blocks
are built, so :class:`BlockWorkMeter` counts what every model has: the denoiser's calls, the calls in which a block
ran (a call EasyCache reused runs none), the block calls, and the FLOPs of the blocks' linear and convolution layers
(multiply-accumulates x 2, from the shapes each layer really saw). Attention scores, normalisations, embeddings and
the layers outside the blocks are not counted, so the work is a share of the blocks' layer work, not of the model's.
Per-layer counts (self-attention, cross-attention, feed-forward) are not known here: they are None.

The blocks are the adapter's repeated blocks (the ones torch.compile compiles); a model that names none (a UNet)
is metered on the entries of its top-level module lists (a UNet's down and up blocks).

Example:
    >>> import torch
    >>> from lightcache.block_work_meter import BlockWorkMeter
    >>> model = torch.nn.Module(); model.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])
    >>> model.forward = lambda x: model.blocks[1](model.blocks[0](x))
    >>> with BlockWorkMeter(model) as meter:
    ...     _ = model(torch.zeros(3, 4))
    >>> counts = meter.counts()
    >>> counts["transformer_calls"], counts["transformer_bodies"], counts["block_calls"], counts["work_flops"]
    (1, 1, 2, 192.0)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .errors import LightcacheError

#: The layers whose FLOPs are counted: nearly all of a block's arithmetic besides the attention scores.
_COUNTED = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def default_blocks(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    """The entries of ``denoiser``'s top-level module lists: what a model that names no repeated blocks is metered on.

    >>> model = torch.nn.Module(); model.down = torch.nn.ModuleList([torch.nn.Identity()]); model.out = torch.nn.Identity()
    >>> len(default_blocks(model))
    1
    """
    return [block for child in denoiser.children() if isinstance(child, torch.nn.ModuleList) for block in child]


class BlockWorkMeter:
    """Counts a denoiser's calls, the blocks that ran and their layers' FLOPs with plain PyTorch hooks.

    The same interface as :class:`~lightcache.work_meter.WorkMeter` (``attach``, ``detach``, ``reset``, ``counts``,
    ``per_block``); the counts it cannot know are None.
    """

    def __init__(self, denoiser: torch.nn.Module, blocks: Sequence[torch.nn.Module] | None = None):
        blocks = list(blocks) if blocks else default_blocks(denoiser)
        if not blocks:
            raise LightcacheError(
                f"The work meter finds no blocks in {type(denoiser).__name__} (no repeated blocks and no module "
                "list): it could count nothing."
            )
        self.transformer = denoiser
        self.blocks = blocks
        self.num_blocks = len(blocks)
        self.layers = [m for block in blocks for m in block.modules() if isinstance(m, _COUNTED)]
        self._handles: list[Any] = []
        self.reset()

    def reset(self) -> None:
        """Zero every count."""
        self.block_calls = [0] * self.num_blocks
        self.transformer_calls = 0
        self.transformer_bodies = 0
        self.flops = 0.0
        self._body_counted = False

    def attach(self) -> "BlockWorkMeter":
        if self._handles:
            return self
        add = self._handles.append
        add(self.transformer.register_forward_pre_hook(self._on_call))
        for i, block in enumerate(self.blocks):
            add(block.register_forward_pre_hook(self._make_block_hook(i)))
        for layer in self.layers:
            add(layer.register_forward_hook(self._on_layer))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "BlockWorkMeter":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def counts(self) -> dict[str, float | int | None]:
        """Totals since the last :meth:`reset`; per-layer counts are None (not known for this layout)."""
        return {
            "transformer_calls": self.transformer_calls,
            "transformer_bodies": self.transformer_bodies,
            "block_calls": sum(self.block_calls),
            "self_attention_calls": None,
            "cross_attention_calls": None,
            "ffn_calls": None,
            "work_flops": self.flops if self.layers else None,
        }

    def per_block(self) -> dict[str, list[int]]:
        """Executions per block index."""
        return {"block_calls": list(self.block_calls)}

    # --- hooks ---------------------------------------------------------------------------------------------
    def _on_call(self, module, args):
        self.transformer_calls += 1
        self._body_counted = False

    def _make_block_hook(self, index: int):
        def hook(module, args):
            self.block_calls[index] += 1
            if not self._body_counted:  # the first block of a call that runs any: this call computed
                self._body_counted = True
                self.transformer_bodies += 1

        return hook

    def _on_layer(self, module, args, output):
        if isinstance(output, torch.Tensor):
            self.flops += layer_flops(module, output)


def layer_flops(layer: torch.nn.Module, output: torch.Tensor) -> float:
    """Multiply-accumulates x 2 of one linear or convolution call, from its output's shape.

    >>> layer_flops(torch.nn.Linear(4, 8), torch.zeros(3, 8))
    192.0
    >>> layer_flops(torch.nn.Conv2d(2, 4, 3), torch.zeros(1, 4, 5, 5))
    3600.0
    """
    if isinstance(layer, torch.nn.Linear):
        return 2.0 * output.numel() * layer.in_features
    per_output = (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)
    return 2.0 * output.numel() * per_output
