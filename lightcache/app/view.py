"""What the page shows of a run, computed from its events: status line, counts, stage table, comparison table.

Plain functions of plain data; :mod:`lightcache.plots` draws the figures from the same events.

Example:
    >>> from lightcache.events import StepRecord
    >>> from lightcache.app.view import call_counts
    >>> records = [StepRecord(step=0, timestep=999.0, branch="cond", computed=True, reason="warm-up", ms=10.0),
    ...            StepRecord(step=1, timestep=500.0, branch="cond", computed=False, reason="E < tau", ms=0.1)]
    >>> c = call_counts(records)
    >>> c.computed, c.reused, round(c.estimated_speedup, 2)
    (1, 1, 1.98)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..comparison import baseline_text
from ..events import Event, Note, RunFinished, RunStarted, StageFinished, StageStarted, StepRecord, call_kind
from ..plots import peak_by_stage

#: How the runner's note before MagCache's calibration run begins (the status line shows the run as calibrating).
CALIBRATING = "MagCache calibration: running"
# Which memory series best stands for "how much memory the run needed", in order of preference.
_PEAK_SERIES = ("cuda_allocated", "cuda_reserved", "rss")


@dataclass(frozen=True)
class CallCounts:
    """Transformer calls so far: computed, reused, and the denoise speed-up they imply.

    ``estimated_speedup`` is (calls x mean time of a computed call) / (time all calls took): what the denoise
    stage would have cost had every call run the transformer, over what it did cost. Calls during which
    torch.compile compiled are left out of it (their time is warm-up), and counted in ``compiling`` and
    ``warmup_seconds`` (their whole time) instead.
    """

    computed: int
    reused: int
    estimated_speedup: float
    compiling: int = 0
    warmup_seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.computed + self.reused


def call_counts(records: Iterable[StepRecord]) -> CallCounts:
    records = list(records)
    n_computed = sum(r.computed for r in records)
    warm = [r for r in records if r.compiling]
    counts = dict(computed=n_computed, reused=len(records) - n_computed, compiling=len(warm),
                  warmup_seconds=sum(r.ms for r in warm) / 1000.0)
    timed = [r for r in records if not r.compiling]
    computed = [r for r in timed if r.computed]
    spent = sum(r.ms for r in timed)
    if not computed or spent <= 0:
        return CallCounts(estimated_speedup=1.0, **counts)
    mean_computed = sum(r.ms for r in computed) / len(computed)
    return CallCounts(estimated_speedup=len(timed) * mean_computed / spent, **counts)


def status_markdown(events: Sequence[Event], label: str = "", headline: str | None = None) -> str:
    """One line for the top of the page: stage, step i / n, computed / reused counts, estimated speed-up.

    ``label`` names the run (e.g. the plain run of a comparison); ``headline`` replaces the stage name.
    """
    records = [e for e in events if isinstance(e, StepRecord)]
    settings = next((e.settings for e in events if isinstance(e, RunStarted)), {})
    steps = settings.get("steps")
    branches = max(1, len({r.branch for r in records}))
    stage = "starting"
    for e in events:
        if isinstance(e, Note) and e.message.startswith(CALIBRATING) and stage == "starting":
            stage = "MagCache calibration run (every call computed)"
        elif isinstance(e, StageStarted):
            stage = e.stage
        elif isinstance(e, StageFinished):
            stage = f"{e.stage} done"
        elif isinstance(e, RunFinished):
            stage = "finished"
    counts = call_counts(records)
    step_done = len({r.step for r in records}) if records else 0
    parts = [f"**{label + ': ' if label else ''}{headline or stage}**"]
    if steps:
        parts.append(f"step {min(step_done, steps)} / {steps}")
    parts.append(f"transformer calls: **{counts.computed} computed**, **{counts.reused} reused**")
    partial = sum(call_kind(r) == "partial" for r in records)
    if partial:
        parts.append(f"of these reused, **{partial} partial** (part of their blocks ran)")
    if records and settings.get("easycache", True):
        parts.append(f"est. denoise speed-up **{counts.estimated_speedup:.2f}x**")
    if records and branches > 1:
        parts.append(f"{branches} CFG branches per step")
    if counts.compiling:
        parts.append(f"torch.compile warm-up **{counts.warmup_seconds:.1f} s** in {counts.compiling} "
                     f"call{'s' if counts.compiling > 1 else ''}")
    finished = next((e for e in events if isinstance(e, RunFinished)), None)
    if finished is not None:
        parts.append(f"total **{finished.summary['total_seconds']:.1f} s**")
    return " · ".join(parts)


def notes_markdown(events: Sequence[Event]) -> str:
    """The run's notes (e.g. a strategy that is a no-op on this device), as a bullet list."""
    notes = [e.message for e in events if isinstance(e, Note)]
    return "\n".join(f"- {n}" for n in notes)


def stages_markdown(events: Sequence[Event]) -> str:
    """A table of the stages: wall time, peak memory, and how far the peak rose above what was resident when the
    stage began (the surge the memory strategies cut), from the stage reports or else the memory samples."""
    finished = [e for e in events if isinstance(e, StageFinished)]
    if not finished:
        return ""
    end = next((e for e in events if isinstance(e, RunFinished)), None)
    summary_stages = end.summary.get("stages", {}) if end is not None else {}
    kind = (end.summary.get("memory") or {}).get("peak_kind") if end is not None else None
    sampled = peak_by_stage(events)
    rows = [f"| stage | time | peak memory{f' ({kind})' if kind else ''} | rise during the stage |",
            "|---|---:|---:|---:|"]
    for e in finished:
        resident = summary_stages.get(e.stage, {}).get("resident_bytes")
        rise = _bytes(e.peak_bytes - resident) if e.peak_bytes is not None and resident is not None else ""
        rows.append(f"| {e.stage} | {e.seconds:.2f} s | {_peak_text(e.peak_bytes, sampled.get(e.stage, {}))} "
                    f"| {rise} |")
    if end is not None:
        rows.append(f"| **total** | **{end.summary['total_seconds']:.2f} s** | | |")
    counts = call_counts(e for e in events if isinstance(e, StepRecord))
    if counts.compiling:
        rows.append(f"\ntorch.compile warm-up: {counts.warmup_seconds:.2f} s of the denoise time went to "
                    f"{counts.compiling} call{'s' if counts.compiling > 1 else ''} during which torch compiled; "
                    "the estimated denoise speed-up in the status line leaves them out.")
    notes = notes_markdown(events)
    return "\n".join(rows) + ("\n\n" + notes if notes else "")


def comparison_markdown(comparison: dict[str, Any]) -> str:
    """The comparison of the accelerated run with the plain one, as a headline and a small table."""
    c = comparison
    psnr_text = "identical (inf)" if math.isinf(c["psnr_db"]) else f"{c['psnr_db']:.2f} dB"
    a_done, a_all = c["accelerated_calls"]
    p_done, p_all = c["plain_calls"]
    lines = [
        f"**Speed-up {c['speedup']:.2f}x** (denoise stage {c['denoise_speedup']:.2f}x) · "
        f"**PSNR {psnr_text}** · **SSIM {c['ssim']:.4f}** against the plain run",
        "",
        f"The plain run is {baseline_text(c['baseline_settings'])}.",
        "",
        "| | accelerated | plain |",
        "|---|---:|---:|",
        f"| total time | {c['accelerated_seconds']:.2f} s | {c['plain_seconds']:.2f} s |",
        f"| transformer calls computed | {a_done} / {a_all} | {p_done} / {p_all} |",
    ]
    cache = c.get("cache") or {}
    if cache.get("method") not in (None, "none"):
        setting = f" {cache['setting']}={cache['value']:g}" if cache.get("value") is not None else ""
        lines.insert(4, f"| step cache | {cache['label']}{setting} | none |")
    if isinstance(cache.get("work_fraction"), (int, float)):
        lines.append(f"| block work run (measured) | {100 * cache['work_fraction']:.0f}% | 100% |")
    if c.get("accelerated_compile_seconds"):
        lines += [f"| of which torch.compile compiling | {c['accelerated_compile_seconds']:.2f} s | |", "",
                  f"Without the compiling (torch keeps the compiled code for the next run at this size): speed-up "
                  f"**{c['speedup_without_compiling']:.2f}x**."]
    noise = c.get("call_time_ratio", math.nan)
    if not math.isnan(noise) and c.get("accelerated_compiled"):
        # Compiled against eager calls: the ratio is compile's own effect on a call (and noise), not noise alone.
        lines += ["", f"A transformer call both runs computed took {_signed_percent(noise - 1.0)} in the "
                      "accelerated run, whose transformer blocks are compiled: that is compile's effect on a call, "
                      "plus noise."]
    elif not math.isnan(noise):
        # The same work timed twice: how far apart the two runs' computed calls are is the noise of this reading.
        lines += ["", f"Measurement noise: a transformer call both runs computed took {_signed_percent(noise - 1.0)} "
                      "in the accelerated run; read the speed-up with that margin."]
    return "\n".join(lines)


def _signed_percent(x: float) -> str:
    """``0.031`` -> ``"3% longer"``, ``-0.004`` -> ``"0% shorter"`` (whole percent: finer is not meaningful)."""
    return f"{abs(x) * 100:.0f}% {'longer' if x >= 0 else 'shorter'}"


def _peak_text(reported: int | None, sampled: dict[str, int]) -> str:
    if reported is not None:
        return _bytes(reported)
    for name in _PEAK_SERIES:
        if name in sampled:
            return f"{_bytes(sampled[name])} ({name})"
    if sampled:
        name, value = next(iter(sampled.items()))
        return f"{_bytes(value)} ({name})"
    return "not sampled"


def _bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.1f} MiB"
