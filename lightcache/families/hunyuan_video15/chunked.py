"""HunyuanVideo-1.5's chunked blocks: HunyuanVideo's dual-stream block over video slices, with this model's mask.

``HunyuanVideo15Transformer3DModel`` has dual-stream blocks only, the same arithmetic as HunyuanVideo's
(:func:`lightcache.families.hunyuan_video.chunked.dual_stream_block`); what differs is the attention mask. Its
processor builds a dense (tokens x tokens) mask, a query and a key attending each other when both are real tokens
(the video tokens always are, the text's padding is not); a chunked block builds only the rows of its query slice
(:func:`~lightcache.techniques.chunk_parts.query_key_mask`), so the whole dense mask (tokens squared booleans:
over 1 GiB at 480p x 121 frames) never exists either. Not chunked, as in HunyuanVideo: the token refiner and the
other condition embedders, which see only the text and image tokens.

Example:
    >>> from lightcache.families.hunyuan_video15.tiny import build_tiny_pipeline
    >>> transformer = build_tiny_pipeline(seed=0, task="t2v").transformer
    >>> forwards = HunyuanVideo15ChunkedForwards()
    >>> forwards.check(transformer)
    >>> len(forwards.blocks(transformer))  # its one transformer block, then the head's norm and projection
    3
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import LightcacheError
from ...techniques.chunk_parts import check_processor, query_key_mask
from ..hunyuan_video.chunked import HunyuanVideoChunkedForwards


class HunyuanVideo15ChunkedForwards(HunyuanVideoChunkedForwards):
    """Feature chunking's view of ``HunyuanVideo15Transformer3DModel``: its dual-stream blocks and head."""

    def check(self, model: torch.nn.Module) -> None:
        from diffusers.models.transformers.transformer_hunyuan_video15 import (
            HunyuanVideo15AttnProcessor2_0,
            HunyuanVideo15Transformer3DModel,
            HunyuanVideo15TransformerBlock,
        )

        if not isinstance(model, HunyuanVideo15Transformer3DModel):
            raise LightcacheError(f"Feature chunking supports HunyuanVideo15Transformer3DModel here, not "
                                  f"{type(model).__name__}.")
        for i, block in enumerate(self.transformer_blocks(model)):
            if type(block) is not HunyuanVideo15TransformerBlock:
                raise LightcacheError(f"Feature chunking has no chunked forward for {type(block).__name__} "
                                      f"(block {i}).")
            check_processor(block.attn, (HunyuanVideo15AttnProcessor2_0,), f"block {i}")

    def transformer_blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(model.transformer_blocks)

    @staticmethod
    def mask_rows(attention_mask: torch.Tensor, a: int, b: int, tokens: int) -> torch.Tensor:
        """Rows ``a..b`` of the processor's dense mask: the text mask (B, text tokens), padded on the left with the
        always-real video tokens, against itself."""
        valid = F.pad(attention_mask, (tokens - attention_mask.shape[1], 0), value=True)
        return query_key_mask(valid, a, b)
