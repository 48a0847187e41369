"""How much memory each stage of a benchmark run took; the work meter itself is :mod:`lightcache.work_meter`.

:func:`stage_memory` reads the peak memory of each stage from the runner's summary. :class:`WorkMeter` (what a run
really computed) lives in the library, where the live trace uses it too, and is imported here for the benchmark.

Example:
    >>> stage_memory({"memory": {"peak_kind": "rss"}, "stages": {"decode": {"peak_bytes": 5, "resident_bytes": 3}}})
    {'decode': {'peak_bytes': 5, 'increase_bytes': 2, 'source': 'rss'}}
"""

from __future__ import annotations

from typing import Any

from ..work_meter import COUNT_KEYS, WorkMeter

__all__ = ["COUNT_KEYS", "WorkMeter", "stage_memory"]


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
