"""The run-event stream: the plain-data events one generation emits, in order.

A generation (see :func:`lightcache.runner.run_generation`) is a generator of these dataclasses. The CLI, the
Gradio app and the benchmark only consume them, which is why the trace shown live in the UI is identical to the
``trace.json`` the CLI writes.

Order of a normal run::

    RunStarted
    StageStarted("encode")  StageFinished("encode")
    [StageStarted("encode_image") StageFinished("encode_image")]   (image-to-video pipelines)
    StageStarted("denoise") StepRecord x (steps x branches) StageFinished("denoise")
    StageStarted("decode")  FramesDecoded  StageFinished("decode")
    RunFinished

``MemorySample`` and ``Note`` events may appear anywhere in between.

Example:
    >>> from lightcache.events import StepRecord
    >>> r = StepRecord(step=3, timestep=812.0, branch="cond", computed=False, reason="E < tau",
    ...                eps=0.01, error=0.03, tau=0.05, k=1.2, ms=0.4)
    >>> r.to_dict()["reason"]
    'E < tau'
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

#: The stages of a run, in the order a pipeline goes through them. ``encode_image`` exists only for
#: image-to-video pipelines (image encoder and the VAE encoding the conditioning image).
STAGES = ("encode", "encode_image", "denoise", "decode")


def json_safe(value: Any) -> Any:
    """Floats that JSON cannot hold (nan, inf) become strings; containers are converted recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class Event:
    """Base class: every event converts to a JSON-safe dict with its type name under ``"event"``."""

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}
        return {"event": type(self).__name__, **json_safe(data)}


@dataclass
class RunStarted(Event):
    """A generation began; ``settings`` is the validated request as a plain dict. ``calls_per_step``: the denoiser
    calls each step makes, as the family adapter counts them (None: not known), so that a consumer can act once a
    step is complete without guessing the family's guidance pattern."""

    preset: str
    settings: dict[str, Any]
    device: str
    calls_per_step: int | None = None


@dataclass
class StageStarted(Event):
    """One of :data:`STAGES` began at ``t`` seconds since the run started."""

    stage: str
    t: float


@dataclass
class StageFinished(Event):
    """A stage ended; ``seconds`` is its wall time and ``peak_bytes`` the peak memory seen during it (or None)."""

    stage: str
    t: float
    seconds: float
    peak_bytes: int | None = None


@dataclass
class StepRecord(Event):
    """One transformer call (one CFG branch of one denoising step) and why it was computed or reused.

    Attributes:
        step: denoising step index, 0-based.
        timestep: the scheduler timestep passed to the transformer.
        branch: ``"cond"`` or ``"uncond"`` (or the cache-context name the pipeline used).
        computed: True when the transformer ran, False when EasyCache returned ``x_t + delta``.
        reason: short human-readable cause, e.g. ``"warm-up"``, ``"last step"``, ``"E < tau"``.
        eps: the error estimate added at this step (None on forced steps and followers).
        error: the accumulated error ``E`` after this decision (0 after a compute).
        tau: the threshold in force (None when EasyCache is off).
        k: the transformation rate used for the estimate (None until two computed steps exist).
        ms: wall time of the call in milliseconds.
        t: seconds since the run started, when the call returned (filled in by the runner).
        denoiser: which of the pipeline's denoisers ran the call (``transformer``, or ``transformer_2`` for the
            low-noise expert of Wan2.2 A14B).
        compiling: torch.compile compiled code during this call (read from torch's own counters), so ``ms``
            includes compiling: a warm-up call, not the speed of the compiled model.
        compile_ms: of ``ms``, the time torch spent compiling (0 when ``compiling`` is False).
        ran: what of the call ran, measured from the modules that ran (``"whole call"``, ``"first block only (1 of
            30)"``, ``"no block ran: cached residual"``...; see :mod:`lightcache.call_work`); empty when not measured
            (compiled blocks).
        blocks_run, blocks_total: blocks whose body ran, of how many (None when not measured).
        work_fraction: the share of a whole call's block work (FLOPs) that ran, 0 to 1 (None when not measured).
        cache: the step cache of the run (``easycache``, ``fbc``, ... ``none``; see :mod:`lightcache.cache_methods`).
        decides: this call made its step's decision (the ``cond`` call of Wan, the batched call of a UNet, the
            ``pred_cond`` call of a guider); the step's other calls follow it. Consumers count steps and draw the
            error curve from the deciding calls, whatever the branch is named.
    """

    step: int
    timestep: float
    branch: str
    computed: bool
    reason: str
    eps: float | None = None
    error: float | None = None
    tau: float | None = None
    k: float | None = None
    ms: float = 0.0
    t: float | None = None
    denoiser: str = "transformer"
    compiling: bool = False
    compile_ms: float = 0.0
    ran: str = ""
    blocks_run: int | None = None
    blocks_total: int | None = None
    work_fraction: float | None = None
    cache: str = "easycache"
    decides: bool = True


def call_kind(record: "StepRecord | dict[str, Any]") -> str:
    """``computed`` (the whole call ran), ``partial`` (some blocks or layers were skipped) or ``reused`` (no block
    ran), from what was measured, or from ``computed`` where nothing was.

    >>> call_kind({"computed": False, "work_fraction": 0.5, "blocks_run": 1}), call_kind({"computed": False})
    ('partial', 'reused')
    """
    get = record.get if isinstance(record, dict) else lambda key, default=None: getattr(record, key, default)
    fraction = get("work_fraction")
    if fraction is None:
        return "computed" if get("computed") else "reused"
    if fraction >= 1.0:
        return "computed"
    return "partial" if get("blocks_run") else "reused"


@dataclass
class MemorySample(Event):
    """One reading of the memory sampler: bytes per series (e.g. ``rss``, ``cuda_allocated``) at ``t`` seconds."""

    t: float
    values: dict[str, int]


@dataclass
class Note(Event):
    """A plain message for the trace, e.g. that a strategy is a no-op on this device."""

    message: str
    t: float = 0.0


@dataclass
class FramesDecoded(Event):
    """Decoded frames ``first .. first + len(frames) - 1`` as float32 (n, H, W, 3) in [0, 1], in order.

    A run is the pipeline's own ``pipe(...)``, which returns the whole video, so the runner emits one event with every
    frame when the pipeline returns; a consumer hands it to the video writer. Frames are not serialised by
    ``to_dict``.
    """

    first: int
    t: float
    frames: Any = field(default=None, repr=False)


@dataclass
class RunFinished(Event):
    """The run ended. ``frames`` is a float32 array (F, H, W, 3) in [0, 1] (not serialised); ``summary`` is plain data."""

    summary: dict[str, Any]
    frames: Any = field(default=None, repr=False)
