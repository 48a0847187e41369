"""How much memory each stage of a benchmark run took, and the work meters on every denoiser of a pipeline.

:func:`stage_memory` reads the peak memory of each stage from the runner's summary. :class:`WorkMeter` (what a run
really computed) lives in the library, where the live trace uses it too, and is imported here for the benchmark;
:class:`DenoiserMeters` puts one on each denoiser the family adapter names (Wan2.2 A14B's two experts, a UNet) and
adds their counts up.

Example:
    >>> stage_memory({"memory": {"peak_kind": "rss"}, "stages": {"decode": {"peak_bytes": 5, "resident_bytes": 3}}})
    {'decode': {'peak_bytes': 5, 'increase_bytes': 2, 'source': 'rss'}}
"""

from __future__ import annotations

from typing import Any

from ..work_meter import COUNT_KEYS, WorkMeter, work_meter_for

__all__ = ["COUNT_KEYS", "DenoiserMeters", "WorkMeter", "stage_memory"]


class DenoiserMeters:
    """A work meter on each denoiser of ``pipe`` (from its family adapter), read as one.

    Counts are summed over the denoisers; a count that some denoiser's meter cannot know (None) is None in the sum,
    so a figure is never made of part of the model. ``per_block`` lists the blocks of every denoiser in run order.

    >>> from lightcache.tiny import build_tiny_pipeline
    >>> meters = DenoiserMeters(build_tiny_pipeline(seed=0))
    >>> list(meters.meters), meters.exact
    (['transformer'], True)
    """

    def __init__(self, pipe):
        from ..families import adapter_for

        adapter = adapter_for(pipe)
        adapter.check_denoisers(pipe)
        self.meters = {name: work_meter_for(module, adapter.repeated_blocks(module))
                       for name, module in adapter.denoisers(pipe).items()}
        #: Every denoiser metered part by part (Wan's layout); else only calls, blocks and their layers' FLOPs.
        self.exact = all(isinstance(m, WorkMeter) for m in self.meters.values())

    def attach(self) -> "DenoiserMeters":
        for meter in self.meters.values():
            meter.attach()
        return self

    def detach(self) -> None:
        for meter in self.meters.values():
            meter.detach()

    def reset(self) -> None:
        for meter in self.meters.values():
            meter.reset()

    def counts(self) -> dict[str, Any]:
        totals: dict[str, Any] = {}
        for meter in self.meters.values():
            for key, value in meter.counts().items():
                known = key not in totals or totals[key] is not None
                totals[key] = totals.get(key, 0) + value if known and value is not None else None
        return totals

    def per_block(self) -> dict[str, list[int]]:
        merged: dict[str, list[int]] = {}
        per = [meter.per_block() for meter in self.meters.values()]
        for key in set.intersection(*(set(p) for p in per)):
            merged[key] = [v for p in per for v in p[key]]
        return merged


# --- memory ------------------------------------------------------------------------------------------------
def stage_memory(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Peak memory per stage of a finished run, from the runner's own telemetry.

    ``peak_bytes`` is the runner's peak while the stage ran (the CUDA allocator's peak on a GPU; on a CPU the
    process RSS high-water mark, which includes the weights and the Python heap); ``increase_bytes`` its rise over
    what was resident when the stage began. None where the runner reported nothing.
    """
    kind = (summary.get("memory") or {}).get("peak_kind")
    out = {}
    for stage, info in summary["stages"].items():
        peak, resident = info.get("peak_bytes"), info.get("resident_bytes")
        out[stage] = {
            "peak_bytes": peak,
            "increase_bytes": max(0, peak - resident) if peak is not None and resident is not None else None,
            "source": kind,
        }
    return out
