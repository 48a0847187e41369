"""How much of one denoiser call's work ran, measured from the modules that ran, not from what a cache claims.

:class:`CallWork` puts a :class:`~lightcache.work_meter.WorkMeter` on a denoiser and reads it around each call: did
the transformer's body run, how many blocks ran their body, and in how many blocks the self-attention,
cross-attention and feed-forward layers ran. From that it writes what ran in words ("whole call", "first block only
(1 of 30)", "no block ran: cached residual", "all 30 blocks, self-attention skipped in 30") and the share of the
call's block work (FLOPs of those layers) that ran. A layer a cache skipped is priced at what the same layer cost in
this call's other blocks, or, where no block ran it, in the last call that did: every block of a call costs the same.

Every cache gets the same measurement, so the trace can compare EasyCache (whole calls reused) with diffusers'
caches (blocks or layers skipped inside a call) on one scale.

Example:
    >>> import torch
    >>> from lightcache.call_work import CallWork
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> transformer = build_tiny_pipeline(seed=0).transformer
    >>> work = CallWork(transformer).attach()
    >>> work.start()
    >>> with torch.no_grad():
    ...     _ = transformer(torch.randn(1, 4, 3, 8, 8), torch.tensor([500]), torch.randn(1, 6, 32))
    >>> measured = work.finish(); work.detach()
    >>> measured.ran, measured.blocks_run, measured.blocks_total, measured.work_fraction
    ('whole call', 2, 2, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .work_meter import UNITS, WorkMeter

#: How the trace names the layers of a block.
_UNIT_NAMES = {"self": "self-attention", "cross": "cross-attention", "ffn": "feed-forward"}
_UNIT_COUNTERS = {"self": "self_attention_calls", "cross": "cross_attention_calls", "ffn": "ffn_calls"}

#: The three kinds of call the trace draws apart.
COMPUTED, PARTIAL, REUSED = "computed", "partial", "reused"


@dataclass(frozen=True)
class CallMeasure:
    """What one call ran.

    Attributes:
        body_ran: the transformer's own body ran (its patch embedding); False when the whole call was reused.
        blocks_run: blocks whose body ran (their first norm).
        blocks_total: blocks the transformer has.
        units_run: per layer kind (``self``, ``cross``, ``ffn``), in how many blocks it ran.
        work_fraction: the share of a whole call's block work (FLOPs) that ran, 0 to 1.
        ran: the same in words, for the trace's hover.
    """

    body_ran: bool
    blocks_run: int
    blocks_total: int
    units_run: dict[str, int]
    work_fraction: float
    ran: str

    @property
    def kind(self) -> str:
        """``computed`` (everything ran), ``partial`` (some blocks or layers skipped) or ``reused`` (no block ran)."""
        if self.blocks_run == 0:
            return REUSED
        return COMPUTED if self.work_fraction >= 1.0 else PARTIAL


class CallWork:
    """A work meter on one denoiser, read call by call: :meth:`start` before the call, :meth:`finish` after it."""

    def __init__(self, transformer: torch.nn.Module):
        self.meter = WorkMeter(transformer)
        # The last known FLOPs of one block's layer of each kind: prices a layer no block ran in this call.
        self._unit_cost: dict[str, float | None] = {unit: None for unit in UNITS}
        self._before: tuple | None = None

    def attach(self) -> "CallWork":
        self.meter.attach()
        return self

    def detach(self) -> None:
        self.meter.detach()

    def start(self) -> None:
        m = self.meter
        self._before = (m.transformer_bodies, list(m.block_calls),
                        {u: sum(getattr(m, _UNIT_COUNTERS[u])) for u in UNITS}, dict(m.unit_flops))

    def finish(self) -> CallMeasure:
        """What ran since :meth:`start`."""
        m = self.meter
        bodies, blocks_before, units_before, flops_before = self._before
        self._before = None
        n = m.num_blocks
        ran_blocks = [i for i in range(n) if m.block_calls[i] > blocks_before[i]]
        units = {u: sum(getattr(m, _UNIT_COUNTERS[u])) - units_before[u] for u in UNITS}
        flops = {u: m.unit_flops[u] - flops_before[u] for u in UNITS}
        for u in UNITS:
            if units[u] > 0:
                self._unit_cost[u] = flops[u] / units[u]
        if all(cost is not None for cost in self._unit_cost.values()):
            whole = sum(self._unit_cost[u] * n for u in UNITS)
            fraction = sum(flops.values()) / whole if whole > 0 else 0.0
        else:  # no layer of some kind has ever run: count layers instead of pricing them
            fraction = sum(units.values()) / (len(UNITS) * n)
        everything = len(ran_blocks) == n and all(units[u] == n for u in UNITS)
        fraction = 1.0 if everything else min(fraction, 1.0 - 1e-9)
        return CallMeasure(body_ran=m.transformer_bodies > bodies, blocks_run=len(ran_blocks), blocks_total=n,
                           units_run=units, work_fraction=fraction,
                           ran=_describe(m.transformer_bodies > bodies, ran_blocks, units, n))


def _describe(body_ran: bool, ran_blocks: list[int], units: dict[str, int], n: int) -> str:
    if not ran_blocks:
        return "no block ran: cached residual" if body_ran else "transformer skipped: cached output"
    if len(ran_blocks) < n:
        if ran_blocks == [0]:
            return f"first block only (1 of {n})"
        return f"{len(ran_blocks)} of {n} blocks"
    skipped = [f"{_UNIT_NAMES[u]} skipped in {n - units[u]}" for u in UNITS if units[u] < n]
    return f"all {n} blocks, " + ", ".join(skipped) if skipped else "whole call"
