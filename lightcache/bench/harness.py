"""Run every method on the same prompts and seeds, side by side in one process, and collect the results.

Order of work (one process, one pipeline):

1. an untimed two-step warm-up run, so one-time costs land on no method;
2. per case (prompt x seed): the plain run (the reference video and work); after the first one, when MagCache is
   in the sweep, its calibration run on the same model, prompt, seed and steps (it computes everything, so its
   video must equal the plain one; that is checked);
3. ``repeats`` rounds; in each round, per case, every method x setting once, the order rotated from round to round,
   so that slow phases of a shared machine spread over all methods instead of landing on one;
4. per case a final plain run: it must reproduce the first plain video bit for bit (nothing leaked from any
   method) and is one more timing sample for plain.

Every run goes through :func:`lightcache.runner.run_generation` with a work meter on each denoiser the family adapter
names (:class:`~lightcache.bench.meter.DenoiserMeters`; peak memory per stage comes from the runner's own telemetry);
every method is detached right after its run and the denoisers' hook lists are checked to be back to what they were.

Any family's preset runs: a model that takes no prompt gets an empty one, an image-to-video model a deterministic
first frame (:func:`bench_image`), and a method the family cannot run (a diffusers cache on a model without the
block list it needs, a memory strategy the family has no implementation of) is left out before the runs, with the
reason in the results' ``skipped`` list.

Example:
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> from lightcache.presets import load_preset
    >>> from lightcache.bench.harness import BenchConfig, run_benchmark
    >>> config = BenchConfig(quick=True, methods=("plain", "easycache"), overhead=False,
    ...                      settings={"steps": 6, "warmup": 2, "frames": 5, "height": 32, "width": 32})
    >>> results = run_benchmark(build_tiny_pipeline(seed=0), load_preset("tiny"), config)
    >>> sorted({r["method"] for r in results["records"]})
    ['easycache', 'plain']
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import hashlib
import math
import platform
import time
from dataclasses import dataclass, field
from statistics import median
from typing import Any, Callable

import numpy as np
import torch

from ..cache_methods import unsupported_reason
from ..errors import LightcacheError
from ..families import adapter_for
from ..events import StageFinished, StepRecord
from ..metrics import json_psnr, psnr, ssim
from ..runner import run_generation, run_to_completion
from ..settings import RunSettings
from . import methods as M
from .meter import COUNT_KEYS, DenoiserMeters, WorkMeter, stage_memory
from .results import SCHEMA, aggregate, targets

#: Prompts per preset. The tiny model knows only its shapes grammar; the GPU presets get everyday scenes.
BENCH_PROMPTS: dict[str, tuple[str, ...]] = {
    # Colour, shape and motion combinations the shipped model was trained on, on its black background.
    "tiny": (
        "a red circle moving right",
        "a blue square moving up",
        "a green triangle moving left",
        "a yellow square moving down",
        "a white circle moving right",
    ),
}
DEFAULT_PROMPTS = (
    "A cat walks on the grass, realistic",
    "A red sports car drives along a coastal road at sunset, aerial shot",
    "Waves crash against dark rocks on a beach, slow motion",
    "A chef slices vegetables on a wooden board, close-up",
    "A hot air balloon rises over green hills in the morning fog",
)

#: tau for measuring what a reused call costs (any tau gives the same cost per reused call; this one reuses most).
REUSE_TAU = 10.0

NOTES = (
    "FasterCache is not benchmarked: it assumes classifier-free guidance batched into one transformer call (its "
    "block hook splits every output in two along the batch), and Wan's pipeline calls the transformer once per "
    "branch with batch 1, so on Wan it stops with IndexError at its first cached step.",
    "TaylorSeer runs in two of diffusers' variants: with the module patterns blocks.N.attn1, blocks.N.attn2 and "
    "blocks.N.ffn (its default patterns hook nothing on Wan), and in lite mode (whole blocks skipped, the output "
    "projection predicted), at Taylor order 1 (diffusers' default) and 0. Taylor factors are kept in the "
    "transformer's dtype (the default is bfloat16); the first 3 steps are computed, as diffusers' default.",
    "SeaCache runs at residual_order 1 (diffusers' default, extrapolates the cached residual) and 0 (reuses it).",
    "Pyramid Attention Broadcast gets one state per CFG branch (diffusers keeps one per attention layer, which on "
    "Wan's separate cond/uncond calls would hand the cond branch's attention to the uncond branch) and the timestep "
    "of each call.",
    "MagCache is calibrated once, with calibrate=True on the same model and steps, on the first prompt and seed; "
    "the ratios of the cond and uncond branches are averaged, since diffusers uses one ratio array for both.",
    "Work computed counts the FLOPs of the blocks' attention and feed-forward layers that actually ran, against the "
    "plain run of the same case.",
)

#: Added to the notes where a denoiser has no layout the work meter reads part by part (any model but Wan's).
GENERIC_WORK_NOTE = (
    "This model's work is counted on its repeated blocks (the entries of its top-level block lists where it names "
    "none): calls, calls in which a block ran, block calls, and the FLOPs of the blocks' linear and convolution "
    "layers that ran (attention scores and layers outside the blocks not counted). Self-attention, cross-attention "
    "and feed-forward calls are not counted apart on it."
)


@dataclass
class BenchConfig:
    """What to benchmark. The defaults are the full benchmark; ``quick=True`` is the three-minute CPU version.

    Attributes:
        quick: two prompts, one repeat, a short sweep.
        prompts: override the preset's prompt set (five prompts; quick takes the first two).
        seeds: override the seeds (default: 0).
        repeats: timed runs per method x setting x case (quick 1, full 2); the median is reported.
        methods: restrict to these method names (see :data:`lightcache.bench.methods.METHODS`).
        sweeps: override a method's parameter sets, e.g. ``{"fbc": ({"threshold": 0.1},)}``.
        overhead: also measure EasyCache's hook overhead (tau = 0 against plain, reused against computed calls).
        overhead_repeats: interleaved repeats of that measurement (quick 3, full 5).
        overhead_size: ``(frames, height, width)`` for it; default the run size (quick) or the largest size the
            preset allows up to 33 frames (full).
        settings: RunSettings overrides for every run (``steps``, ``frames``, ``height``, ``width``, ...).
    """

    quick: bool = False
    prompts: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None
    repeats: int | None = None
    methods: tuple[str, ...] | None = None
    sweeps: dict[str, tuple[dict[str, Any], ...]] | None = None
    overhead: bool = True
    overhead_repeats: int | None = None
    overhead_size: tuple[int, int, int] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.prompts is not None:
            self.prompts = tuple(self.prompts)
            if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
                raise LightcacheError("Benchmark prompts must be a non-empty list of non-empty strings.")
        if self.seeds is not None:
            self.seeds = tuple(self.seeds)
            if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                         for s in self.seeds):
                raise LightcacheError("Benchmark seeds must be a non-empty list of whole numbers >= 0.")
        for name, value in (("repeats", self.repeats), ("overhead_repeats", self.overhead_repeats)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise LightcacheError(f"{name} must be a whole number >= 1, got {value!r}.")
        if self.methods is not None:
            self.methods = tuple(self.methods)
            if not self.methods:
                raise LightcacheError("Name at least one benchmark method.")
            for name in self.methods:
                M.get_method(name)
        for name, params in (self.sweeps or {}).items():
            M.get_method(name)
            if not params:
                raise LightcacheError(f"The sweep for '{name}' is empty.")
        if self.overhead_size is not None:
            if len(self.overhead_size) != 3 or not all(isinstance(v, int) and v > 0 for v in self.overhead_size):
                raise LightcacheError("overhead_size must be three whole numbers: frames, height, width.")

    def resolved_prompts(self, preset_name: str) -> tuple[str, ...]:
        prompts = self.prompts or BENCH_PROMPTS.get(preset_name, DEFAULT_PROMPTS)
        return prompts[:2] if self.quick and self.prompts is None else prompts

    def resolved_seeds(self) -> tuple[int, ...]:
        return self.seeds or (0,)

    def resolved_repeats(self) -> int:
        return self.repeats or (1 if self.quick else 2)

    def resolved_overhead_repeats(self) -> int:
        return self.overhead_repeats or (3 if self.quick else 5)

    def sweep(self, name: str) -> list[dict[str, Any]]:
        if self.sweeps and name in self.sweeps:
            return [dict(p) for p in self.sweeps[name]]
        return M.sweep(name, self.quick)


@dataclass
class _Entry:
    method: M.Method
    params: dict[str, Any]
    setting: str


@dataclass
class _Outcome:
    summary: dict[str, Any]
    digest: str
    frames: np.ndarray | None
    counts: dict[str, Any]
    per_block: dict[str, list[int]]
    memory: dict[str, Any]
    #: Per denoiser: its own counts, per-block counts and whether it was metered part by part (Wan's layout).
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _Cell:
    """Everything measured for one method x setting x case."""

    entry: _Entry
    case: dict[str, Any]
    first: _Outcome | None = None
    denoise: list[float] = field(default_factory=list)
    end_to_end: list[float] = field(default_factory=list)
    deterministic: bool = True
    psnr: float | None = None
    ssim: float | None = None


def run_benchmark(
    pipe,
    preset,
    config: BenchConfig | None = None,
    log: Callable[[str], None] | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Benchmark every selected method on ``pipe`` and return the results (see :mod:`lightcache.bench.results`)."""
    config = config or BenchConfig()
    log = log or (lambda message: None)
    started = time.perf_counter()
    load_at_start = _load_average()
    adapter = adapter_for(pipe)
    adapter.check_denoisers(pipe)
    prompts, seeds = _case_prompts(config, preset, adapter), config.resolved_seeds()
    cases = [{"id": f"p{i}-s{seed}", "prompt": p, "seed": seed} for i, p in enumerate(prompts) for seed in seeds]
    entries = _entries(config)
    if not entries or entries[0].method.name != "plain":
        raise LightcacheError("The benchmark needs the plain method: every figure is relative to it.")
    plain = entries[0]
    skipped: list[dict[str, Any]] = []  # methods or settings left out, with why (refusals, _Session._drop)
    entries = _runnable(pipe, preset, config, cases, entries, skipped, log)
    # An image-to-video model needs a first frame; a model that may take one (TI2V) runs as text to video.
    needs_image = preset.image_input == "required"
    image = bench_image(RunSettings.from_preset(preset, **config.settings)) if needs_image else None
    for case in cases if image is not None else ():
        case["image"] = f"generated {image.width}x{image.height} (bench_image)"
    session = _Session(pipe, preset, config, cases, entries, skipped, log, image)
    try:
        _warm_up(pipe, session.settings[(cases[0]["id"], _key(plain))], preset.name, image)
        for case in cases:
            session.reference(case)
            if case is cases[0] and any(e.method.needs_calibration for e in entries):
                session.calibrate(case)  # once: MagCache's ratios belong to the model, scheduler and steps
        for round_index in range(config.resolved_repeats()):
            shift = round_index % len(entries)
            for case in cases:
                for entry in entries[shift:] + entries[:shift]:
                    if not (entry is plain and round_index == 0):  # the reference run is plain's first sample
                        session.measure(entry, case)
        for case in cases:
            session.leak_check(case)
    finally:
        session.close()
    cells = session.cells
    checks = session.checks
    settings = session.settings

    records = [_record(cell, cells[(cell.case["id"], _key(plain))]) for cell in cells.values() if cell.entry]
    aggregates = aggregate(records)
    overhead = None
    if config.overhead:
        overhead = measure_overhead(pipe, preset, config, log, image)
    notes = list(NOTES)
    if not session.meter.exact:
        notes.append(GENERIC_WORK_NOTE)
    results = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "environment": environment(pipe),
        "preset": preset.name,
        "model": _model_name(pipe),
        "model_sha256": _model_digest(pipe),
        "quick": config.quick,
        "settings": {k: v for k, v in settings[(cases[0]["id"], _key(plain))].to_dict().items()
                     if k not in ("prompt", "seed")},
        "cases": cases,
        "methods": [
            {"method": m.name, "label": m.label, "kind": m.kind, "skips": m.skips,
             "settings": [e.setting for e in entries if e.method is m]}
            for m in _unique(e.method for e in entries)
        ],
        "skipped": skipped,
        "records": records,
        "aggregates": aggregates,
        "targets": targets(aggregates, overhead),
        "overhead": overhead,
        "checks": checks,
        "notes": notes,
    }
    results["environment"]["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    # Timings on a shared machine are slower and noisier: the page says how loaded it was at both ends.
    results["environment"]["load_average_start"] = load_at_start
    results["environment"]["load_average_end"] = _load_average()
    return results


class _Session:
    """The state of one benchmark: the pipeline with its work meter, every cell measured so far, the checks."""

    def __init__(self, pipe, preset, config: BenchConfig, cases, entries: list[_Entry], skipped, log, image=None):
        self.pipe, self.preset, self.log, self.skipped, self.image = pipe, preset, log, skipped, image
        self.plain = entries[0]
        self.settings = {(c["id"], _key(e)): _settings(preset, config, c, e) for c in cases for e in entries}
        self.cells = {(c["id"], _key(e)): _Cell(e, c) for c in cases for e in entries}
        self.references: dict[str, _Outcome] = {}
        self.calibration: list[float] | None = None
        self.checks: dict[str, Any] = {"leaks": [], "magcache_calibration": [], "hooks_restored": True}
        self.hooks_before = denoiser_hook_names(pipe)
        self.entries = entries
        self.progress = _Progress(len(cases) * (len(entries) * config.resolved_repeats() + 1), log)
        self.meter = DenoiserMeters(pipe).attach()

    def close(self) -> None:
        self.meter.detach()
        for entry in self.entries:
            entry.method.detach(self.pipe)

    def reference(self, case) -> None:
        """The plain run that every other run of ``case`` is compared with."""
        outcome = self._run(self.plain, case)
        self.references[case["id"]] = outcome
        self._add(self.plain, case, outcome)

    def measure(self, entry: _Entry, case) -> None:
        """One timed run of ``entry`` on ``case``; a diffusers cache that raises is left out with its reason."""
        if self.cells[(case["id"], _key(entry))].entry is None:
            return  # failed on an earlier case
        try:
            outcome = self._run(entry, case)
        except LightcacheError:
            raise
        except Exception as exc:  # noqa: BLE001 - a peer's cache failing must not end the benchmark
            if entry is self.plain:
                raise
            self._drop(entry.method.name, entry.setting, f"{type(exc).__name__}: {exc}")
            return
        self._add(entry, case, outcome)

    def calibrate(self, case) -> None:
        settings = self.settings[(case["id"], _key(self.plain))]
        try:
            self.calibration = _calibrate_magcache(self.pipe, settings, self.preset.name, self.references[case["id"]],
                                                   self.checks, self.log, self.image)
        except LightcacheError as exc:
            self._drop("magcache", None, str(exc))

    def leak_check(self, case) -> None:
        """Plain once more after every method: it must reproduce the reference video bit for bit."""
        outcome = self._run(self.plain, case)
        same = outcome.digest == self.references[case["id"]].digest
        self.checks["leaks"].append({"case": case["id"], "plain_identical_after_all_methods": same})
        self._add(self.plain, case, outcome, label="plain (leak check)")
        if not same:
            self.log(f"  WARNING: the plain run of {case['id']} changed after the other methods ran")

    def _run(self, entry: _Entry, case) -> _Outcome:
        return _timed_run(self.pipe, self.settings[(case["id"], _key(entry))], self.preset.name, entry,
                          self.calibration, self.meter, self.checks, self.hooks_before, self.image)

    def _add(self, entry: _Entry, case, outcome: _Outcome, label: str | None = None) -> None:
        cell = self.cells[(case["id"], _key(entry))]
        _add(cell, outcome, self.references[case["id"]])
        self.progress(entry, case, outcome, cell, label)

    def _drop(self, method: str, setting: str | None, reason: str) -> None:
        """Leave a method x setting (every setting when ``setting`` is None) out of the results, saying why."""
        self.skipped.append({"method": method, "setting": setting or "", "reason": reason})
        self.log(f"  {method} {setting or ''} is left out: {reason}")
        for cell in self.cells.values():
            if cell.entry is not None and cell.entry.method.name == method and setting in (None, cell.entry.setting):
                cell.entry = None


# --- one run -----------------------------------------------------------------------------------------------
def _timed_run(pipe, settings: RunSettings, preset_name: str, entry: _Entry, calibration, meter: DenoiserMeters,
               checks: dict[str, Any], hooks_before: list[str], image=None) -> _Outcome:
    _release_memory(pipe)
    entry.method.attach(pipe, entry.params, calibration)
    try:
        meter.reset()
        finished = run_to_completion(run_generation(pipe, settings, preset_name, image=image))
    finally:
        entry.method.detach(pipe)
    hooks_after = denoiser_hook_names(pipe)
    if hooks_after != hooks_before:
        checks["hooks_restored"] = False
        raise LightcacheError(
            f"{entry.method.name} left hooks behind on the transformer: {sorted(set(hooks_after) - set(hooks_before))}"
        )
    frames = finished.frames
    return _Outcome(
        summary=finished.summary,
        digest=hashlib.sha1(np.ascontiguousarray(frames).tobytes()).hexdigest(),
        frames=frames,
        counts=meter.counts(),
        per_block=meter.per_block(),
        memory=stage_memory(finished.summary),
        parts={name: {"counts": m.counts(), "per_block": m.per_block(), "exact": isinstance(m, WorkMeter)}
               for name, m in meter.meters.items()},
    )


def _add(cell: _Cell, outcome: _Outcome, reference: _Outcome) -> None:
    cell.denoise.append(float(outcome.summary["stages"]["denoise"]["seconds"]))
    cell.end_to_end.append(float(outcome.summary["total_seconds"]))
    if cell.first is None:
        cell.psnr = psnr(outcome.frames, reference.frames)
        cell.ssim = ssim(outcome.frames, reference.frames)
        cell.first = outcome
    elif outcome.digest != cell.first.digest:
        cell.deterministic = False
    if outcome is not reference:
        outcome.frames = None  # only the plain reference videos are kept: long sweeps stay small in memory


def _record(cell: _Cell, plain: _Cell) -> dict[str, Any]:
    entry, first, reference = cell.entry, cell.first, plain.first
    plain_denoise, plain_total = median(plain.denoise), median(plain.end_to_end)
    denoise, total = median(cell.denoise), median(cell.end_to_end)
    work = first.counts["work_flops"]
    plain_work = reference.counts["work_flops"]  # None where the meter cannot price the layers: work not counted
    return {
        "method": entry.method.name,
        "label": entry.method.label,
        "kind": entry.method.kind,
        "setting": entry.setting,
        "params": entry.params,
        "case": cell.case["id"],
        "prompt": cell.case["prompt"],
        "seed": cell.case["seed"],
        "repeats": len(cell.denoise),
        "denoise_seconds": denoise,
        "end_to_end_seconds": total,
        "denoise_samples": list(cell.denoise),
        "end_to_end_samples": list(cell.end_to_end),
        "speedup_denoise": plain_denoise / denoise if denoise > 0 else None,
        "speedup_end_to_end": plain_total / total if total > 0 else None,
        "calls_computed": first.summary["calls_computed"],
        "calls_reused": first.summary["calls_reused"],
        "work_fraction": work / plain_work if work is not None and plain_work else None,
        "counts": {k: first.counts[k] for k in COUNT_KEYS},
        "psnr_db": json_psnr(cell.psnr),
        "ssim": cell.ssim,
        "memory": first.memory,
        "deterministic": cell.deterministic,
        "skip_check": check_skips(entry.method.claim(entry.params), first, reference),
    }


def check_skips(claim: str, outcome: _Outcome, reference: _Outcome) -> dict[str, Any]:
    """Does the run skip what its method claims (``claim``, a ``SKIPS_*`` constant), and nothing else? Read off the
    work meter's counts.

    ``skipped`` is True when the run computed less than plain; ``holds`` when the pattern of what ran matches the
    claim (e.g. FirstBlockCache always runs block 0 and runs the other blocks all or none).
    """
    problems = []

    def expect(condition: bool, message: str) -> None:
        if not condition and message not in problems:
            problems.append(message)

    # Each denoiser on its own (Wan2.2 A14B's experts take turns: a block runs on its own expert's calls only).
    parts = outcome.parts or {"transformer": {"counts": outcome.counts, "per_block": outcome.per_block, "exact": True}}
    ref_parts = reference.parts or {"transformer": {"counts": reference.counts, "per_block": reference.per_block}}
    for name, part in parts.items():
        per, ref = part["per_block"], ref_parts[name]["per_block"]
        calls, bodies = part["counts"]["transformer_calls"], part["counts"]["transformer_bodies"]
        blocks = per["block_calls"]
        # Per-layer counts exist where the meter knows the layout part by part (Wan's); else blocks are checked.
        units = [u for u in ("self_attention_calls", "cross_attention_calls", "ffn_calls") if u in per]
        full = {k: sum(ref[k]) for k in ref}
        if claim == M.SKIPS_NOTHING:
            expect(all(b == calls for b in blocks), "every block runs on every call")
            expect(all(sum(per[u]) == full[u] for u in units), "every layer runs")
        elif claim == M.SKIPS_CALLS:
            expect(all(b == bodies for b in blocks), "every block runs on every computed call, none on reused ones")
        elif claim == M.SKIPS_BLOCKS:
            if part["exact"]:  # the generic meter counts a body only where a block ran: nothing to check apart
                expect(bodies == calls, "the transformer body runs on every call")
            expect(len(set(blocks)) == 1, "all blocks run, or none, on each call")
        elif claim == M.SKIPS_BLOCKS_AFTER_FIRST:
            expect(blocks[0] == calls, "the first block runs on every call")
            expect(len(set(blocks[1:])) <= 1, "the other blocks run all together or not at all")
        elif claim in (M.SKIPS_ATTENTION, M.SKIPS_ATTENTION_FFN):
            expect(sum(blocks) == sum(ref["block_calls"]), "every block is entered on every call")
            if claim == M.SKIPS_ATTENTION and "ffn_calls" in per:
                expect(sum(per["ffn_calls"]) == full["ffn_calls"], "every feed-forward layer runs")
    if claim == M.SKIPS_CALLS:
        computed = outcome.summary["calls_computed"]
        expect(outcome.counts["transformer_bodies"] == computed, "the transformer body runs on computed calls only")
    work, plain_work = outcome.counts["work_flops"], reference.counts["work_flops"]
    if work is not None and plain_work is not None:
        skipped = work < plain_work
    else:  # layers not priced: fewer block calls than plain is what skipping means then
        skipped = outcome.counts["block_calls"] < reference.counts["block_calls"]
    return {"claim": claim, "holds": not problems, "skipped": skipped,
            "detail": "; ".join(f"expected: {p}" for p in problems) or "as claimed"}


# --- MagCache calibration ----------------------------------------------------------------------------------
def _calibrate_magcache(pipe, settings: RunSettings, preset_name: str, plain: _Outcome, checks: dict[str, Any],
                        log, image=None) -> list[float]:
    steps = settings.steps
    plain_settings = dataclasses.replace(settings, easycache=False)
    M.attach_magcache_calibration(pipe, steps)
    try:
        with M.capture_magcache_calibration() as captured:
            finished = run_to_completion(run_generation(pipe, plain_settings, preset_name, image=image))
    finally:
        if getattr(pipe.transformer, "_cache_config", None) is not None:
            pipe.transformer.disable_cache()
    ratios = M.combine_calibration(captured, steps)
    digest = hashlib.sha1(np.ascontiguousarray(finished.frames).tobytes()).hexdigest()
    checks["magcache_calibration"].append({
        "contexts": len(captured), "ratios": [round(r, 5) for r in ratios],
        "video_identical_to_plain": digest == plain.digest,
    })
    log(f"  MagCache calibrated: {len(captured)} branches, ratios {', '.join(f'{r:.3f}' for r in ratios[:6])} ...")
    return ratios


# --- hook overhead -----------------------------------------------------------------------------------------
def measure_overhead(pipe, preset, config: BenchConfig, log: Callable[[str], None], image=None) -> dict[str, Any]:
    """EasyCache's cost when it never reuses (tau = 0) and the cost of a reused call, against computed calls.

    Denoise-only runs (the event stream is closed after the denoise stage, so no decode is paid), plain, tau = 0
    and a reusing tau interleaved ``overhead_repeats`` times; medians. The per-call figures come from the runner's
    wall time of each transformer call (:attr:`StepRecord.ms`), so a reused call includes the runner's own cost of
    entering the cache context.
    """
    size = config.overhead_size or _overhead_size(preset, config)
    frames, height, width = size
    # The cost of a reused call does not depend on tau; a tau no estimate reaches makes every call after the
    # warm-up a candidate for reuse, so the medians rest on many reused calls.
    reuse_tau = REUSE_TAU
    common = {**config.settings, "frames": frames, "height": height, "width": width,
              "prompt": _case_prompts(config, preset, adapter_for(pipe))[0], "seed": config.resolved_seeds()[0]}
    variants = {
        "plain": RunSettings.from_preset(preset, **common, easycache=False),
        "tau0": RunSettings.from_preset(preset, **common, easycache=True, threshold=0.0),
        "reuse": RunSettings.from_preset(preset, **common, easycache=True, threshold=float(reuse_tau)),
    }
    log(f"hook overhead: {frames} frames at {height}x{width}, {config.resolved_overhead_repeats()} interleaved "
        "repeats of plain / tau=0 / reusing tau, denoise only")
    if preset.image_input == "required" and (image is None or image.size != (width, height)):
        image = bench_image(variants["plain"])  # the overhead's own size
    _denoise_only(pipe, dataclasses.replace(variants["plain"], steps=2, warmup=0), preset.name, image)  # warm-up
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    call_ms: dict[str, list[float]] = {"plain": [], "tau0": [], "computed": [], "reused": []}
    names = list(variants)
    for r in range(config.resolved_overhead_repeats()):
        order = names[r % 3:] + names[:r % 3]
        for name in order:
            _release_memory(pipe)
            denoise, records = _denoise_only(pipe, variants[name], preset.name, image)
            seconds[name].append(denoise)
            if name == "reuse":
                call_ms["computed"] += [rec.ms for rec in records if rec.computed]
                call_ms["reused"] += [rec.ms for rec in records if not rec.computed]
            else:
                call_ms[name] += [rec.ms for rec in records]
        log(f"  repeat {r + 1}: " + ", ".join(f"{n} {seconds[n][-1]:.3f}s" for n in names))
    plain_s, tau0_s = median(seconds["plain"]), median(seconds["tau0"])
    reused = call_ms["reused"]
    reuse = {
        "tau": reuse_tau,
        "reused_calls_per_run": len(reused) // max(1, len(seconds["reuse"])),
        "computed_ms_median": median(call_ms["computed"]) if call_ms["computed"] else None,
        "reused_ms_median": median(reused) if reused else None,
        "ratio_pct": (100.0 * median(reused) / median(call_ms["computed"])) if reused else None,
    }
    return {
        "frames": frames, "height": height, "width": width,
        "steps": variants["plain"].steps,
        "repeats": config.resolved_overhead_repeats(),
        "denoise_seconds": {k: v for k, v in seconds.items()},
        "plain_denoise_median": plain_s,
        "tau0_denoise_median": tau0_s,
        "overhead_pct": 100.0 * (tau0_s / plain_s - 1.0),
        "plain_call_ms_median": median(call_ms["plain"]),
        "tau0_call_ms_median": median(call_ms["tau0"]),
        "call_overhead_pct": 100.0 * (median(call_ms["tau0"]) / median(call_ms["plain"]) - 1.0),
        "reuse": reuse,
    }


def _overhead_size(preset, config: BenchConfig) -> tuple[int, int, int]:
    base = RunSettings.from_preset(preset, **config.settings)
    if config.quick:
        return base.frames, base.height, base.width
    lim = preset.limits
    # The largest frame size the preset allows, at a clip length that keeps a CPU run to minutes.
    return min(base.frames, lim.max_frames), lim.max_height, lim.max_width


def _denoise_only(pipe, settings: RunSettings, preset_name: str, image=None) -> tuple[float, list[StepRecord]]:
    records: list[StepRecord] = []
    events = run_generation(pipe, settings, preset_name, image=image)
    try:
        for event in events:
            if isinstance(event, StepRecord):
                records.append(event)
            elif isinstance(event, StageFinished) and event.stage == "denoise":
                return event.seconds, records
    finally:
        events.close()  # stops before decoding; the runner's finally removes its hooks
    raise RuntimeError("The run ended without a denoise stage.")


# --- what a family can run ---------------------------------------------------------------------------------
def _case_prompts(config: BenchConfig, preset, adapter) -> tuple[str, ...]:
    """The prompts of the cases; one empty prompt for a model that takes none (SVD): its cases differ by seed."""
    if not adapter.takes_prompt:
        if config.prompts is not None and any(p.strip() for p in config.prompts):
            raise LightcacheError(f"The {preset.name} model takes no prompt; give no --prompt.")
        return ("",)
    return config.resolved_prompts(preset.name)


def refusal(pipe, preset, config: BenchConfig, case: dict[str, Any], entry: _Entry) -> str | None:
    """Why ``entry`` cannot run on this pipeline and preset, or None when it can: a diffusers cache on denoisers it
    cannot hook (:func:`lightcache.cache_methods.unsupported_reason`), or settings the family refuses (a memory
    strategy it has no implementation of)."""
    if entry.method.kind == "diffusers":
        reason = unsupported_reason(entry.method.name, adapter_for(pipe).denoisers(pipe))
        if reason is not None:
            return reason
    try:
        _settings(preset, config, case, entry)
    except LightcacheError as exc:
        return str(exc)
    return None


def _runnable(pipe, preset, config: BenchConfig, cases, entries: list[_Entry], skipped, log) -> list[_Entry]:
    """``entries`` without those this family cannot run, each left out with its reason in ``skipped``."""
    kept = []
    for entry in entries:
        reason = refusal(pipe, preset, config, cases[0], entry)
        if reason is None:
            kept.append(entry)
        elif entry is entries[0]:
            raise LightcacheError(f"The plain run cannot run: {reason}")
        else:
            skipped.append({"method": entry.method.name, "setting": entry.setting, "reason": reason})
            log(f"  {entry.method.name} {entry.setting} is left out: {reason}")
    return kept


def bench_image(settings: RunSettings):
    """The first frame an image-to-video preset is benchmarked from: a deterministic picture at the run's size (a
    colour gradient with a bright disc), the same on every machine.

    >>> from lightcache.presets import load_preset
    >>> settings = RunSettings.from_preset(load_preset("tiny"), height=32, width=48)
    >>> bench_image(settings).size
    (48, 32)
    """
    from PIL import Image

    h, w = settings.height, settings.width
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    red, green = 255 * x / max(1, w - 1), 255 * y / max(1, h - 1)
    disc = ((x - w / 3) ** 2 + (y - h / 2) ** 2) < (min(h, w) / 4) ** 2
    blue = np.where(disc, 255.0, 64.0)
    return Image.fromarray(np.stack([red, green, blue], axis=-1).astype(np.uint8), "RGB")


def denoiser_hook_names(pipe) -> list[str]:
    """Every diffusers hook on every denoiser of ``pipe``, as ``denoiser/module.path:hook`` (for leak checks)."""
    return sorted(f"{name}/{hook}" for name, module in adapter_for(pipe).denoisers(pipe).items()
                  for hook in M.hook_names(module))


# --- helpers -----------------------------------------------------------------------------------------------
def _entries(config: BenchConfig) -> list[_Entry]:
    names = list(config.methods or M.METHODS)
    if "plain" not in names:
        names.insert(0, "plain")
    names.sort(key=lambda n: list(M.METHODS).index(n))
    entries = []
    for name in names:
        method = M.get_method(name)
        for params in config.sweep(name):
            entries.append(_Entry(method, params, method.describe(params)))
    return entries


def _settings(preset, config: BenchConfig, case: dict[str, Any], entry: _Entry) -> RunSettings:
    overrides = {**config.settings, "prompt": case["prompt"], "seed": case["seed"],
                 **entry.method.settings_overrides(entry.params)}
    return RunSettings.from_preset(preset, **overrides)


def _key(entry: _Entry) -> str:
    return M.slug(entry.method.name, entry.setting)


def _unique(items):
    seen = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def _model_name(pipe) -> str:
    """Where the model came from: a Hub id, or a path (relative to the project when inside it, so results.json
    reads the same on every machine)."""
    from pathlib import Path

    from ..presets import PROJECT_ROOT

    name = str(getattr(pipe, "name_or_path", None) or getattr(pipe.config, "_name_or_path", "") or "")
    try:
        return str(Path(name).resolve().relative_to(PROJECT_ROOT)) if name and Path(name).exists() else name
    except ValueError:
        return name


def _model_digest(pipe) -> str | None:
    """The SHA-256 of the model files measured (:func:`lightcache.fingerprint.model_digest`), or None when the
    pipeline was not loaded from a local model directory (a Hub id, or built in memory)."""
    from pathlib import Path

    from ..fingerprint import MODEL_INDEX, model_digest

    name = str(getattr(pipe, "name_or_path", None) or getattr(pipe.config, "_name_or_path", "") or "")
    return model_digest(name) if name and (Path(name) / MODEL_INDEX).is_file() else None


def _load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, where the platform has them."""
    import os

    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _warm_up(pipe, settings: RunSettings, preset_name: str, image=None) -> None:
    warm = dataclasses.replace(settings, steps=2, warmup=0, easycache=False)
    run_to_completion(run_generation(pipe, warm, preset_name, image=image))


def _release_memory(pipe) -> None:
    """Give freed memory back before a run, so each run's peak is its own rather than an earlier run's."""
    gc.collect()
    device = torch.device(pipe._execution_device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: RSS peaks then include memory held from earlier runs


def environment(pipe) -> dict[str, Any]:
    import diffusers

    device = torch.device(pipe._execution_device)
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": __import__("os").cpu_count(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


class _Progress:
    def __init__(self, total: int, log):
        self.total, self.done, self.log = total, 0, log

    def __call__(self, entry: _Entry, case, outcome: _Outcome, cell: _Cell, label: str | None = None) -> None:
        self.done += 1
        stages = outcome.summary["stages"]
        psnr_text = "identical" if cell.psnr is None or math.isinf(cell.psnr) else f"PSNR {cell.psnr:.2f} dB"
        self.log(
            f"[{self.done:3d}/{self.total}] {label or entry.method.name:18s} {entry.setting:22s} {case['id']:6s} "
            f"denoise {stages['denoise']['seconds']:6.2f}s  total {outcome.summary['total_seconds']:6.2f}s  "
            f"blocks {outcome.counts['block_calls']:4d}  {psnr_text}"
        )
