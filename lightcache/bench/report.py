"""The benchmark's Markdown: the results table, the targets with their measured figures, and docs/benchmarks.md.

Everything here is rendered from ``results.json`` data, so ``python -m lightcache bench --from-results`` can
rebuild the documents without running a model. That includes the page's analysis: every number in its prose is
computed here from the results, so the page cannot disagree with its own record.

Percentages follow one rule everywhere the project publishes them (:func:`format_percent`).

Example:
    >>> from lightcache.bench.report import format_bytes, format_percent
    >>> format_bytes(3 * 2**30), format_bytes(None)
    ('3.00 GiB', '-')
    >>> format_percent(13.77, signed=True)
    '+13.8 %'
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from .results import BUILT_IN, OURS, TARGET_PCT, as_float, dominance_per_case, easycache_setting, pareto_front, speed


def format_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value} B"


def format_percent(value: float | None, signed: bool = False, unit: str = "%") -> str:
    """A percentage (``value`` already in percent) as published: one decimal place, or two significant figures
    when the value is so small that one decimal would hide it; halves round away from zero.

    One rule for every published percentage, so a figure and the record it comes from can be compared by eye:
    +13.77 % is "+13.8 %", never "+13 %" or "+14 %".

    >>> format_percent(13.77, signed=True), format_percent(47.60, signed=True), format_percent(9.6)
    ('+13.8 %', '+47.6 %', '9.6 %')
    >>> format_percent(-0.1182, signed=True), format_percent(0.0318), format_percent(7.25)
    ('-0.12 %', '0.032 %', '7.3 %')
    >>> format_percent(0.0, signed=True), format_percent(None), format_percent(float("nan"))
    ('0.0 %', '-', '-')
    >>> format_percent(1.96, unit="points"), format_percent(0.99999999), format_percent(0.0999999, unit="")
    ('2.0 points', '1.0 %', '0.10')
    """
    if value is None or not math.isfinite(value):
        return "-"
    exact = Decimal(repr(float(value)))
    # Decimal's adjusted() is floor(log10(|x|)): keep two significant figures, and at least one decimal place.
    places = 1 if exact == 0 else max(1, 1 - exact.copy_abs().adjusted())
    rounded = exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    if rounded != 0 and rounded.copy_abs().adjusted() > exact.copy_abs().adjusted():
        # Rounding carried into the next power of ten (0.996 -> 1.00): two significant figures of the result.
        places = max(1, 1 - rounded.copy_abs().adjusted())
        rounded = exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    sign = "+" if signed and rounded > 0 else ""
    if rounded == 0:
        rounded = abs(rounded)  # no "-0.0"
    return f"{sign}{rounded} {unit}" if unit else f"{sign}{rounded}"


def percent_change(new: float, old: float) -> float:
    """How much longer (positive) or shorter ``new`` is than ``old``, in percent.

    >>> round(percent_change(1.4442, 1.2694), 2)
    13.77
    """
    return 100.0 * (new / old - 1.0)


def _psnr(value: Any) -> str:
    v = as_float(value)
    return "identical" if math.isinf(v) else ("-" if math.isnan(v) else f"{v:.2f}")


def _psnr_db(value: Any) -> str:
    text = _psnr(value)
    return text if text in ("identical", "-") else f"{text} dB"


def _x(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}x"


def _pct(value: float | None) -> str:
    return "-" if value is None else format_percent(100 * value)


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
    lines.append("**EasyCache Pareto-dominates every built-in** (for each built-in point there is an EasyCache point, "
                 "of either order, at least as fast with at least as high PSNR):\n")
    for axis, d in dom.items():
        if d.get("not_counted"):
            lines.append(f"- speed by {names[axis]}: **not counted** (the work meter does not price this model's "
                         "layers).")
            continue
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
    for key, label, signed in (
            ("tau0_overhead", "EasyCache at tau = 0 (never reuses) costs <= 2% over plain", True),
            ("reused_call_cost", "a reused call costs <= 2% of a computed call", False)):
        b = t[key]
        if b["value_pct"] is None:
            lines.append(f"- **{label}**: not measured.")
        else:
            lines.append(f"- **{label}**: {format_percent(b['value_pct'], signed=signed)} \u2192 "
                         f"**{'met' if b['met'] else 'not met'}**.")
    if o:
        lines.append(
            f"  (Denoise only, {o['frames']} frames at {o['height']}x{o['width']}, {o['steps']} steps, "
            f"{o['repeats']} interleaved repeats. The figure is per computed call, median over every call: "
            f"{o['plain_call_ms_median']:.2f} ms plain vs {o['tau0_call_ms_median']:.2f} ms at tau = 0. Whole denoise "
            f"stages, median: plain {o['plain_denoise_median']:.3f} s, tau = 0 {o['tau0_denoise_median']:.3f} s "
            f"({format_percent(o['overhead_pct'], signed=True)}). At tau = "
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
        verdict = "not counted" if d.get("not_counted") else f"{d['dominated']}/{d['built_in_points']}"
        lines.append(f"EasyCache dominates built-ins by {axis}: {verdict}")
    for key in ("tau0_overhead", "reused_call_cost"):
        if t[key]["value_pct"] is not None:
            lines.append(f"{key}: {format_percent(t[key]['value_pct'], signed=True)} (target <= 2%)")
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
        "`--quick` runs two prompts, one seed and a short sweep in a few minutes on a laptop CPU; on a GPU "
        "machine pass a GPU preset (`--preset wan2.1-t2v-1.3b`). `--from-results` re-renders this page, the table "
        "and the chart from `results.json` without running a model; every number on the page, the analysis's "
        "included, comes from that file.",
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
        *([load_sentence(env)] if load_sentence(env) else []),
        f"- Weights measured: SHA-256 of the model files `{results['model_sha256']}`."
        if results.get("model_sha256") else "- Weights measured: not from a local model directory (no digest).",
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
        "## The same methods in the app and the CLI",
        "",
        app_settings_section(results),
        "",
        "## Targets",
        "",
        targets_section(results),
        "",
        "## The two EasyCache modes and the frontier",
        "",
        modes_section(results),
        "",
        frontier_table(results),
        "",
        per_case_section(results),
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
        "## Analysis",
        "",
        analysis_section(results),
        "",
    ]
    return "\n".join(parts)


def app_settings_section(results: dict[str, Any]) -> str:
    """Which app setting and CLI flag run each benchmarked method, from :data:`lightcache.cache_methods.CACHE_METHODS`
    (the one table the app, the CLI and the library read)."""
    from ..cache_methods import CACHE_METHODS

    lines = [
        "Each cache of this page is one choice of the app's **Cache method** dropdown and of `python -m lightcache "
        "generate --cache NAME`, with its main setting on one control (`--cache-setting`; EasyCache's tau is "
        "`--threshold`) spanning the range swept here, and its other settings as run here. The live step trace "
        "shows, call by call, which blocks and layers each one ran.",
        "",
        "| method | app (Cache method) | CLI | setting (range) | default | other settings |",
        "|---|---|---|---|---|---|",
    ]
    for entry in results["methods"]:
        method = CACHE_METHODS.get(entry["method"])
        if method is None or method.name == "none":
            continue
        fixed = ", ".join(f"{k} {v}" for k, v in method.fixed.items()) or "diffusers' defaults"
        default = "the preset's" if method.default is None else f"{method.default:g}"
        lines.append(f"| {entry['label']} | {method.label} | `--cache {method.name}` | {method.setting} "
                     f"({method.minimum:g}-{method.maximum:g}) | {default} | {fixed} |")
    lines.append(f"| plain | **EasyCache** switch off, or {CACHE_METHODS['none'].label} | `--cache none` | | | |")
    return "\n".join(lines)


def load_sentence(env: dict[str, Any]) -> str:
    """Says how loaded the machine was (load averages at both ends) and whether that makes it a shared machine."""
    start, end = env.get("load_average_start"), env.get("load_average_end")
    if not start or not end:
        return ""
    cores = env.get("cpu_count") or 1
    loaded = max(start[0], end[0], end[2]) > 0.5 * cores
    return (f"- Load average (1 / 5 / 15 min) at the start {' / '.join(f'{v:.2f}' for v in start)}, at the end "
            f"{' / '.join(f'{v:.2f}' for v in end)} on {cores} cores: "
            + ("**the machine was loaded by other work during the run**, so its times are slower and noisier than a "
               "quiet machine's; the ratios are of interleaved runs, and the computed-call fractions have no timing "
               "noise." if loaded else "a quiet machine."))


def computed_fraction(results: dict[str, Any], method: str, setting: str) -> float | None:
    """Transformer calls computed / all calls, mean over the cases of one method x setting (no timing noise)."""
    fractions = [r["calls_computed"] / (r["calls_computed"] + r["calls_reused"]) for r in results["records"]
                 if r["method"] == method and r["setting"] == setting and r["calls_computed"] + r["calls_reused"]]
    return sum(fractions) / len(fractions) if fractions else None


def modes_section(results: dict[str, Any]) -> str:
    """Both EasyCache curves side by side: tau, calls computed, denoise speed-up and PSNR of each point."""
    rows = ["Order 0 is EasyCache as the paper and its reference code define it: a reused call returns the input plus "
            "the last computed transformation. Order 1 (`--easycache-order 1`) goes beyond the paper: it returns the "
            "input plus an extrapolation of the last two computed transformations, and its error estimate measures "
            "that extrapolation's error (see `lightcache/techniques/easycache.py`).", "",
            "| mode | tau | calls computed | speed-up (denoise) | work computed | PSNR dB |", "|---|---:|---:|---:|---:|---:|"]
    for a in results["aggregates"]:
        if a["method"] not in OURS:
            continue
        fraction = computed_fraction(results, a["method"], a["setting"])
        rows.append(f"| order {OURS.index(a['method'])} | {_fmt_tau(a['params'].get('threshold'))} | {_pct(fraction)} | "
                    f"{_x(a['speedup_denoise'])} | {_pct(a['work_fraction'])} | {_psnr(a['psnr_db'])} |")
    return "\n".join(rows)


def _fmt_tau(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


def frontier_table(results: dict[str, Any]) -> str:
    """The frontier over every method together (denoise speed-up against PSNR): the points nothing beats on both."""
    points = [a for a in results["aggregates"] if a["method"] != "plain"]
    flags = pareto_front([(speed(a, "denoise"), as_float(a["psnr_db"])) for a in points])
    front = sorted((a for a, f in zip(points, flags) if f), key=lambda a: speed(a, "denoise"))
    rows = ["The frontier of all methods together (denoise speed-up against PSNR), slowest first:", "",
            "| method | setting | speed-up (denoise) | calls computed | work computed | PSNR dB |",
            "|---|---|---:|---:|---:|---:|"]
    for a in front:
        setting = easycache_setting(a) if a["method"] in OURS else a["setting"]
        rows.append(f"| {a['label']} | {setting} | {_x(a['speedup_denoise'])} | "
                    f"{_pct(computed_fraction(results, a['method'], a['setting']))} | {_pct(a['work_fraction'])} | "
                    f"{_psnr(a['psnr_db'])} |")
    builtins = sum(a["kind"] == BUILT_IN for a in front)
    rows += ["", f"{len(front)} points on the frontier, {builtins} of them built-in."]
    return "\n".join(rows)


def per_case_section(results: dict[str, Any]) -> str:
    """Dominance within each prompt and seed on its own, by measured denoise time and by counted work."""
    by_axis = {axis: dominance_per_case(results["records"], axis) for axis in ("denoise", "work")}
    rows = ["Per prompt and seed (each case on its own, every point one run):", "",
            "| case | prompt | seed | built-in points dominated (denoise time) | (counted work) |",
            "|---|---|---:|---:|---:|"]
    for d, w in zip(by_axis["denoise"], by_axis["work"]):
        work = "not counted" if w.get("not_counted") else f"{w['dominated']} of {w['built_in_points']}"
        rows.append(f"| {d['case']} | {d['prompt']} | {d['seed']} | {d['dominated']} of {d['built_in_points']} | "
                    f"{work} |")
    return "\n".join(rows)


# --- the analysis ------------------------------------------------------------------------------------------
def analysis_section(results: dict[str, Any]) -> str:
    """What the results say, in prose whose every number is computed from ``results``.

    Each paragraph reads its own part of the results and says only what that part supports (a bound met or
    missed, exceptions or none), so re-running the benchmark on another model or machine rewrites it correctly.
    """
    paragraphs = (_time_paragraph(results), _dominance_paragraph(results), _overhead_paragraph(results),
                  _memory_paragraph(results), _scope_paragraph(results))
    return "\n\n".join(p for p in paragraphs if p)


def _aggregate(results: dict[str, Any], method: str, **params: Any) -> dict[str, Any] | None:
    return next((a for a in results["aggregates"] if a["method"] == method
                 and all(a["params"].get(k) == v for k, v in params.items())), None)


def _time_paragraph(results: dict[str, Any]) -> str:
    plain = _aggregate(results, "plain")
    if plain is None:
        return ""
    denoise, total = plain["denoise_seconds"], plain["end_to_end_seconds"]
    rest = 100 * (1 - denoise / total)
    ceiling = total / (total - denoise)
    return (f"**Where the time goes.** The plain run takes {denoise:.3f} s to denoise of {total:.3f} s end to end "
            f"(medians over the cases, device `{results['environment']['device']}`). The other "
            f"{format_percent(rest)} "
            "(encoding the prompt, decoding the video) is work no cache touches, so even a method that made "
            f"denoising free would be at most {ceiling:.2f}x faster end to end. Caching acts on the denoise stage: "
            "read that column and the chart.")


def _dominance_paragraph(results: dict[str, Any]) -> str:
    dominance_by_axis = results["targets"]["pareto_dominance"]
    labels = {m["method"]: m["label"] for m in results["methods"]}
    text = ["**Pareto dominance.**"]
    names = {"denoise": "measured denoise time", "end_to_end": "measured end-to-end time",
             "work": "counted work (FLOPs that ran)"}
    table: list[str] = []
    for axis, d in dominance_by_axis.items():
        if not d["built_in_points"]:
            continue
        if d.get("not_counted"):
            text.append(f"By {names[axis]}, no comparison: the work meter does not price this model's layers.")
            continue
        sentence = f"By {names[axis]}, {d['dominated']} of {d['built_in_points']} built-in points are dominated"
        if len(text) == 1:
            sentence += " (there is an EasyCache tau at least as fast with at least as high PSNR)"
        if axis == "end_to_end" and d["exceptions"]:
            sentence += "; " + "; ".join(_near_miss(e, labels) for e in d["exceptions"])
        elif axis == "work" and d["exceptions"]:
            gaps, table = _work_table(d["exceptions"], labels)
            sentence += (f". The {len(gaps)} that are not each compute between "
                         f"{format_percent(min(gaps), unit='')} and {format_percent(max(gaps), unit='points')} less "
                         "of the work than the EasyCache point nearest to them at equal or better PSNR (the table "
                         "below)")
        text.append(sentence + ".")
    reuse = (results.get("overhead") or {}).get("reuse") or {}
    measured = dominance_by_axis.get("denoise", {})
    if dominance_by_axis.get("work", {}).get("exceptions") and measured.get("holds"):
        cost = (f" ({reuse['reused_ms_median']:.3f} ms here, against {reuse['computed_ms_median']:.2f} ms for a "
                "computed call)" if reuse.get("reused_ms_median") is not None else "")
        text.append("They still lose on measured time because a reused EasyCache call skips the whole transformer"
                    f"{cost}, while the block caches still run the patch embedding, the timestep and text "
                    "embeddings, the first block or the non-cached layers, and the output head on every call.")
    paragraph = " ".join(text)
    return paragraph + ("\n\n" + "\n".join(table) if table else "")


def _near_miss(exception: dict[str, Any], labels: dict[str, str]) -> str:
    near = exception["nearest_easycache"]
    point = (f"the exception, {labels.get(exception['method'], exception['method'])} ({exception['setting']}) at "
             f"{exception['speed']:.3f}x and {_psnr_db(exception['psnr_db'])}")
    if near is None:
        return point + ", has no EasyCache point to compare with"
    return (f"{point}, is {format_percent(percent_change(exception['speed'], near['speed']))} faster than "
            f"EasyCache {near['setting']} at {near['speed']:.3f}x, whose PSNR is higher "
            f"({_psnr_db(near['psnr_db'])})")


def _work_table(exceptions: list[dict[str, Any]], labels: dict[str, str]) -> tuple[list[float], list[str]]:
    """The built-in points EasyCache does not dominate on counted work, beside the nearest EasyCache point."""
    rows = ["| built-in point | work computed | PSNR | nearest EasyCache point | work computed | PSNR | "
            "difference in work |", "|---|---:|---:|---|---:|---:|---:|"]
    gaps = []
    for e in exceptions:
        near = e["nearest_easycache"]
        work = 100 / e["speed"]  # the work axis's speed is 1 / work computed
        if near is None:
            rows.append(f"| {labels.get(e['method'], e['method'])} {e['setting']} | {format_percent(work)} | "
                        f"{_psnr_db(e['psnr_db'])} | none | - | - | - |")
            continue
        near_work = 100 / near["speed"]
        gaps.append(near_work - work)
        rows.append(f"| {labels.get(e['method'], e['method'])} {e['setting']} | {format_percent(work)} | "
                    f"{_psnr_db(e['psnr_db'])} | EasyCache {near['setting']} | {format_percent(near_work)} | "
                    f"{_psnr_db(near['psnr_db'])} | {format_percent(near_work - work, unit='points')} |")
    return gaps, rows


def _overhead_paragraph(results: dict[str, Any]) -> str:
    o = results.get("overhead")
    if not o:
        return ""
    reuse = o["reuse"]
    met = results["targets"]["tau0_overhead"]["met"]
    extra_ms = o["tau0_call_ms_median"] - o["plain_call_ms_median"]
    text = (f"**Hook overhead.** At {o['frames']}x{o['height']}x{o['width']} ({o['steps']} steps, {o['repeats']} "
            f"interleaved repeats) EasyCache at tau = 0 costs {format_percent(o['overhead_pct'], signed=True)} "
            f"over plain on the whole denoise stage and {format_percent(o['call_overhead_pct'], signed=True)} per "
            f"computed call (medians: {extra_ms:.2f} ms more than {o['plain_call_ms_median']:.2f} ms)")
    if met is False:
        text += (f", so the per-call bound ({TARGET_PCT:.0f} %) is missed here: the hook's two mean-absolute norms "
                 "per call weigh more in a call of a model this small than in a real model's")
    elif met:
        text += f", within the per-call bound ({TARGET_PCT:.0f} %)"
    text += "."
    if reuse.get("ratio_pct") is not None:
        text += (f" A reused call costs {format_percent(reuse['ratio_pct'])} of a computed one "
                 f"({reuse['reused_ms_median']:.3f} ms against {reuse['computed_ms_median']:.2f} ms).")
    if not results["environment"].get("gpu"):
        text += (" The same figures on a GPU at the Wan2.1-1.3B shape: "
                 "[hook-overhead-gpu.md](hook-overhead-gpu.md).")
    return text


def _memory_paragraph(results: dict[str, Any]) -> str:
    sentences = []
    records = results["records"]
    for a in (x for x in results["aggregates"] if x["method"] == "easycache+memory"):
        alone = _aggregate(results, "easycache", threshold=a["params"].get("threshold"))
        if alone is None:
            continue
        pairs = [(r, next((q for q in records if q["method"] == "easycache" and q["setting"] == alone["setting"]
                           and q["case"] == r["case"]), None))
                 for r in records if r["method"] == a["method"] and r["setting"] == a["setting"]]
        pairs = [(r, q) for r, q in pairs if q is not None]
        same = sum(r["calls_reused"] == q["calls_reused"] for r, q in pairs)
        psnr_gap = max((abs(as_float(r["psnr_db"]) - as_float(q["psnr_db"])) for r, q in pairs
                        if math.isfinite(as_float(r["psnr_db"])) and math.isfinite(as_float(q["psnr_db"]))),
                       default=0.0)
        sentences.append(f"at {a['setting']}, {_x(a['speedup_denoise'])} denoise against "
                         f"{_x(alone['speedup_denoise'])} for EasyCache alone, the same reuse decisions in {same} of "
                         f"{len(pairs)} cases and PSNR within {psnr_gap:.1g} dB of it")
    if not sentences:
        return ""
    cpu = results["environment"]["device"] == "cpu"
    lead = ("**Memory strategies in this table.** On a CPU swapping is a no-op (the run's trace says so), and "
            "feature chunking with sliced decoding costs time at these sizes without changing what is computed: "
            if cpu else "**Memory strategies in this table.** ")
    return lead + "; ".join(sentences) + ". Their point is GPU memory, measured in [memory.md](memory.md)."


def _scope_paragraph(results: dict[str, Any]) -> str:
    if results["environment"].get("gpu"):
        return ""
    return ("**Not run here.** The same command on a GPU preset (`--preset wan2.1-t2v-1.3b`) needs the real "
            "checkpoint, since quality figures from random weights mean nothing; this page's figures are preset "
            f"`{results['preset']}`'s. EasyCache's speed-up on real Wan2.1 is reported by its authors (2.54x at "
            "25.24 dB PSNR, Wan2.1-1.3B) and not yet reproduced here.")
