"""The benchmark's Markdown: the results table, the targets with their measured figures, and docs/benchmarks.md.

Everything here is rendered from ``results.json`` data, so ``python -m lightcache bench --from-results`` can
rebuild the documents without running a model.

Example:
    >>> from lightcache.bench.report import format_bytes
    >>> format_bytes(3 * 2**30), format_bytes(None)
    ('3.00 GiB', '-')
"""

from __future__ import annotations

import math
from typing import Any

from .results import as_float, speed


def format_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value} B"


def _psnr(value: Any) -> str:
    v = as_float(value)
    return "identical" if math.isinf(v) else ("-" if math.isnan(v) else f"{v:.2f}")


def _psnr_db(value: Any) -> str:
    text = _psnr(value)
    return text if text in ("identical", "-") else f"{text} dB"


def _x(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}x"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def results_table(results: dict[str, Any]) -> str:
    """One row per method x setting: times, speed-ups, work computed, PSNR, SSIM, peak memory per stage."""
    stages = ("encode", "denoise", "decode")
    head = ("| method | setting | denoise s | speed-up (denoise) | end-to-end s | speed-up (end-to-end) "
            "| work computed | PSNR dB (mean / min) | SSIM | " + " | ".join(f"peak {s}" for s in stages) + " |")
    rule = "|" + "---|" * (9 + len(stages))
    rows = [head, rule]
    for a in results["aggregates"]:
        front = " \u25c6" if a["pareto"].get("denoise") and a["method"] != "plain" else ""
        psnr = _psnr(a["psnr_db"]) if math.isinf(as_float(a["psnr_db"])) else (
            f"{_psnr(a['psnr_db'])} / {_psnr(a['psnr_db_min'])}")
        rows.append(
            f"| {a['label']} | {a['setting']}{front} | {a['denoise_seconds']:.3f} | {_x(a['speedup_denoise'])} "
            f"| {a['end_to_end_seconds']:.3f} | {_x(a['speedup_end_to_end'])} | {_pct(a['work_fraction'])} "
            f"| {psnr} | {a['ssim']:.4f} | "
            + " | ".join(_memory(a, s) for s in stages) + " |"
        )
    return "\n".join(rows)


def _memory(aggregate: dict[str, Any], stage: str) -> str:
    peak = aggregate["peak_bytes"].get(stage)
    increase = aggregate["peak_increase_bytes"].get(stage)
    if peak is None:
        return "-"
    return format_bytes(peak) + (f" (+{format_bytes(increase)})" if increase is not None else "")


def memory_source(results: dict[str, Any]) -> str:
    names = {"rss": "the runner's telemetry, process RSS high-water mark per stage",
             "cuda_allocated": "the runner's telemetry, CUDA allocator peak per stage"}
    sources = sorted({str(mem["source"]) for r in results["records"] for mem in (r["memory"] or {}).values()})
    return ", ".join(names.get(s, s) for s in sources) or "none"


def targets_section(results: dict[str, Any]) -> str:
    """The targets, each with its measured figure and whether it is met."""
    t = results["targets"]
    lines = []
    dom = t["pareto_dominance"]
    names = {"denoise": "measured denoise time", "end_to_end": "measured end-to-end time",
             "work": "counted work (1 / work computed)"}
    lines.append("**EasyCache Pareto-dominates every built-in** (for each built-in point there is an EasyCache point "
                 "at least as fast with at least as high PSNR):\n")
    for axis, d in dom.items():
        verdict = "met" if d["holds"] else ("not met" if d["built_in_points"] else "not measured")
        lines.append(f"- speed by {names[axis]}: **{verdict}**, {d['dominated']} of {d['built_in_points']} "
                     "built-in points dominated.")
        for e in d["exceptions"]:
            near = e["nearest_easycache"]
            near_text = (f"closest EasyCache point {near['setting']} at {_x(near['speed'])}, PSNR "
                         f"{_psnr_db(near['psnr_db'])}" if near else "no EasyCache point")
            lines.append(f"  - not dominated: {e['method']} {e['setting']} at {_x(e['speed'])}, PSNR "
                         f"{_psnr_db(e['psnr_db'])}; {near_text}.")
    o = results.get("overhead")
    for key, label in (("tau0_overhead", "EasyCache at tau = 0 (never reuses) costs <= 2% over plain"),
                       ("reused_call_cost", "a reused call costs <= 2% of a computed call")):
        b = t[key]
        if b["value_pct"] is None:
            lines.append(f"- **{label}**: not measured.")
        else:
            lines.append(f"- **{label}**: {b['value_pct']:+.2f}% \u2192 **{'met' if b['met'] else 'not met'}**.")
    if o:
        lines.append(
            f"  (Denoise only, {o['frames']} frames at {o['height']}x{o['width']}, {o['steps']} steps, "
            f"{o['repeats']} interleaved repeats. The figure is per computed call, median over every call: "
            f"{o['plain_call_ms_median']:.2f} ms plain vs {o['tau0_call_ms_median']:.2f} ms at tau = 0. Whole denoise "
            f"stages, median: plain {o['plain_denoise_median']:.3f} s, tau = 0 {o['tau0_denoise_median']:.3f} s "
            f"({o['overhead_pct']:+.2f}%). At tau = "
            f"{o['reuse']['tau']} a reused call took {_ms(o['reuse']['reused_ms_median'])} against "
            f"{_ms(o['reuse']['computed_ms_median'])} for a computed one, {o['reuse']['reused_calls_per_run']} "
            "reused calls per run.)"
        )
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def checks_section(results: dict[str, Any]) -> str:
    c = results["checks"]
    lines = []
    leaks = c["leaks"]
    if leaks:
        ok = all(x["plain_identical_after_all_methods"] for x in leaks)
        lines.append(f"- Plain run after all methods bit-identical to the first plain run: "
                     f"**{'yes' if ok else 'NO'}** ({len(leaks)} cases).")
    lines.append(f"- Every method's hooks removed after its run: **{'yes' if c['hooks_restored'] else 'NO'}**.")
    for cal in c["magcache_calibration"]:
        lines.append(f"- MagCache calibration ({cal['contexts']} branches) video identical to plain: "
                     f"**{'yes' if cal['video_identical_to_plain'] else 'NO'}**.")
        break
    bad = [r for r in results["records"] if not r["skip_check"]["holds"]]
    idle = [r for r in results["records"] if r["method"] != "plain" and not r["skip_check"]["skipped"]]
    lines.append(f"- Every run skipped only what its method claims (work meter): "
                 f"**{'yes' if not bad else 'NO'}**" + "".join(
                     f"; {r['method']} {r['setting']} {r['case']}: {r['skip_check']['detail']}" for r in bad) + ".")
    if idle:
        lines.append("- Runs that skipped nothing at all: " + ", ".join(
            f"{r['method']} {r['setting']} ({r['case']})" for r in idle) + ".")
    nondet = [r for r in results["records"] if not r["deterministic"]]
    lines.append(f"- Repeats reproduced their video bit for bit: **{'yes' if not nondet else 'NO'}**.")
    return "\n".join(lines)


def summary_text(results: dict[str, Any]) -> str:
    """A few lines for the terminal: the best point of each method and the targets."""
    lines = []
    by_method: dict[str, list[dict[str, Any]]] = {}
    for a in results["aggregates"]:
        by_method.setdefault(a["method"], []).append(a)
    for method, points in by_method.items():
        if method == "plain":
            p = points[0]
            lines.append(f"{'plain':28s} denoise {p['denoise_seconds']:.3f}s, end-to-end {p['end_to_end_seconds']:.3f}s")
            continue
        for p in points:
            lines.append(f"{p['label'] + ' ' + p['setting']:28s} {_x(p['speedup_denoise'])} denoise, "
                         f"{_x(p['speedup_end_to_end'])} end-to-end, work {_pct(p['work_fraction'])}, "
                         f"PSNR {_psnr_db(p['psnr_db'])}, SSIM {p['ssim']:.4f}")
    t = results["targets"]
    for axis, d in t["pareto_dominance"].items():
        lines.append(f"EasyCache dominates built-ins by {axis}: {d['dominated']}/{d['built_in_points']}")
    for key in ("tau0_overhead", "reused_call_cost"):
        if t[key]["value_pct"] is not None:
            lines.append(f"{key}: {t[key]['value_pct']:+.2f}% (target <= 2%)")
    return "\n".join(lines)


def benchmarks_doc(results: dict[str, Any], command: str, chart: dict[str, Any], rel: str) -> str:
    """docs/benchmarks.md: how to regenerate it, the setup, the table, the chart, the targets, the checks, notes.

    ``rel`` is the path from the document to the folder holding results.json and the chart.
    """
    env = results["environment"]
    s = results["settings"]
    cases = results["cases"]
    prompts = sorted({c["prompt"] for c in cases}, key=[c["prompt"] for c in cases].index)
    seeds = sorted({c["seed"] for c in cases})
    repeats = max((r["repeats"] for r in results["records"] if r["method"] != "plain"), default=1)
    chart_lines = [f"Interactive chart: [{chart['html']}]({rel}/{chart['html']})"]
    if chart.get("png"):
        chart_lines.insert(0, f"![speed vs PSNR]({rel}/{chart['png']})")
    elif chart.get("png_note"):
        chart_lines.append(f"({chart['png_note']}.)")
    skipped = results["skipped"]
    parts = [
        "# Benchmarks: EasyCache against the caches diffusers ships",
        "",
        "Regenerate this page (it and everything under `docs/benchmarks/` are written by one command):",
        "",
        "```",
        command,
        "```",
        "",
        "`--quick` runs two prompts, one seed and a short sweep in about three minutes on a laptop CPU; on a GPU "
        "machine pass a GPU preset (`--preset wan2.1-t2v-1.3b`).",
        "",
        "## Setup",
        "",
        f"- Preset `{results['preset']}` (model `{results['model']}`), {s['width']}x{s['height']}, {s['frames']} "
        f"frames, {s['steps']} steps, guidance {s['guidance_scale']}, EasyCache warm-up {s['warmup']} steps.",
        f"- {len(prompts)} prompts x {len(seeds)} seed(s) ({', '.join(map(str, seeds))}): "
        + "; ".join(f"\"{p}\"" for p in prompts) + ".",
        f"- {repeats} timed run(s) per method x setting x prompt, interleaved in one process (medians); plain has "
        "one more (the leak check).",
        f"- Machine: {env['device']}, {env['cpu_count']} CPU cores ({env['cpu_threads']} torch threads)"
        + (f", {env['gpu']}" if env.get("gpu") else "") + f"; torch {env['torch']}, diffusers {env['diffusers']}; "
        f"{env.get('benchmark_seconds', '?')} s for the whole benchmark. Created {results['created']}.",
        f"- Peak memory per stage from: {memory_source(results)}.",
        "",
        "## Results",
        "",
        "Speed-ups are plain time / method time for the same prompt and seed (geometric mean over cases). Work "
        "computed: FLOPs of the attention and feed-forward layers that ran, against plain. PSNR and SSIM compare "
        "each video with the plain video of the same prompt and seed. \u25c6 marks the method's Pareto front "
        "(denoise speed-up against PSNR). Peak memory: the peak during the stage, and in brackets its rise over "
        "what was resident when the stage began (on a CPU the process RSS, which includes the weights and the "
        "Python heap).",
        "",
        results_table(results),
        "",
        *chart_lines,
        "",
        "## Targets",
        "",
        targets_section(results),
        "",
        "## Checks",
        "",
        checks_section(results),
        "",
        "## Files",
        "",
        f"- [`results.json`]({rel}/results.json) (schema `{results['schema']}`): `records`, one per method x "
        "setting x prompt and seed (median times and every sample, speed-ups, transformer calls computed and "
        "reused, the work meter's counts, PSNR, SSIM, peak memory per stage, whether repeats reproduced the video, "
        "and the skip check); `aggregates`, one per method x setting (with Pareto flags per speed axis); "
        "`targets`, `overhead`, `checks`, `notes`.",
        f"- [`table.md`]({rel}/table.md): the table above. The chart: `speed_vs_psnr.html` (and `.png`).",
        "",
        "## Notes",
        "",
        *[f"- {n}" for n in results["notes"]],
        *([f"- Skipped: " + "; ".join(f"{x['method']}: {x['reason']}" for x in skipped)] if skipped else []),
        "",
    ]
    return "\n".join(parts)
