"""Time per transformer call with and without torch.compile, with EasyCache alone and with every strategy on.

Four configurations in one process: ``easycache`` and ``all`` (EasyCache, feature chunking, asynchronous swapping
and sliced decoding), each eager and compiled. The pipeline is the one :mod:`benchmarks.hook_overhead` builds: a real
``WanPipeline`` at a real model's shapes with random weights (time does not depend on weight values).

Each compiled configuration first runs once untimed: that run compiles, and what the trace says about it (calls that
compiled, the seconds torch spent compiling, the whole time of those calls) is the warm-up. Then ``--repeats``
denoise-only runs of the four configurations, interleaved; the figures are medians of the computed calls (the runner's
wall time per call, with a device sync on a GPU) and of the denoise stage, and the frames torch compiled during the
timed runs, which must be 0: a recompile there would be a per-run or per-step recompile. The eager and compiled runs
of a configuration must make the same EasyCache decisions. The process's CPU time of each denoise-only run is recorded
too: on a shared CPU it compares the work of the two runs where wall time mostly measures the other processes.

Usage::

    python -m benchmarks.compile_speed                        # CUDA: Wan2.1-1.3B at 480x832x81, 10 steps
    python -m benchmarks.compile_speed --model 14b --steps 6  # Wan2.1-14B at 720x1280x81
    python -m benchmarks.compile_speed --smoke --threads 1    # CPU, tiny shapes (inductor needs a C++ compiler)

A GPU run writes ``docs/compile-gpu.json`` and ``.md``; ``--smoke`` writes ``compile-smoke.*`` into ``--out``
(default: a new temporary directory), so it never replaces GPU figures. Smoke figures are CPU figures at toy shapes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.hook_overhead import build_random_pipeline
from benchmarks.memory import DOCS, MODELS, SMOKE

CONFIGS = ("easycache", "all")


def run_configs(pipe, preset, spec, steps: int, warmup: int, tau: float, repeats: int, log=print) -> dict:
    """Warm-up and interleaved timed runs of every configuration, eager and compiled; plain data."""
    from lightcache.bench.harness import _denoise_only
    from lightcache.techniques.compile import compile_activity
    from lightcache.settings import RunSettings

    common = dict(frames=spec.frames, height=spec.height, width=spec.width, steps=steps, warmup=warmup,
                  threshold=tau, max_sequence_length=spec.text_len, easycache=True)
    settings = {
        ("easycache", False): RunSettings.from_preset(preset, **common),
        ("all", False): RunSettings.from_preset(preset, **common, chunk_ffn=spec.chunks, async_swap=True,
                                                sliced_decode=True, decode_slices=spec.slices),
    }
    for name in CONFIGS:
        settings[name, True] = RunSettings.from_preset(preset, **{**settings[name, False].to_dict(), "compile": True})

    def denoise(key):
        before, cpu = compile_activity(), time.process_time()
        seconds, records = _denoise_only(pipe, settings[key], preset.name)
        return seconds, records, compile_activity().since(before), time.process_time() - cpu

    log("untimed eager warm-up run")
    denoise(("easycache", False))
    warm = {}
    for name in CONFIGS:
        log(f"compile warm-up: {name}")
        seconds, records, activity, _ = denoise((name, True))
        compiling = [r for r in records if r.compiling]
        warm[name] = {"denoise_seconds": seconds, "frames_compiled": activity.frames,
                      "compile_seconds": activity.seconds, "calls_compiling": len(compiling),
                      "warmup_call_seconds": sum(r.ms for r in compiling) / 1000.0}
    timed = {key: {"denoise": [], "cpu": [], "computed_ms": [], "reused_ms": [], "frames_compiled": 0,
                   "decisions": None} for key in settings}
    keys = list(settings)
    for r in range(repeats):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            seconds, records, activity, cpu = denoise(key)
            cell = timed[key]
            cell["denoise"].append(seconds)
            cell["cpu"].append(cpu)
            cell["computed_ms"] += [x.ms for x in records if x.computed and not x.compiling]
            cell["reused_ms"] += [x.ms for x in records if not x.computed]
            cell["frames_compiled"] += activity.frames
            cell["decisions"] = [(x.step, x.branch, x.computed) for x in records]
        log(f"  repeat {r + 1}: " + ", ".join(f"{n}{'+compile' if c else ''} {timed[n, c]['denoise'][-1]:.3f}s"
                                               for n, c in keys))

    def med(values):
        return statistics.median(values) if values else None

    out = {}
    for name in CONFIGS:
        eager, compiled = timed[name, False], timed[name, True]
        e_ms, c_ms = med(eager["computed_ms"]), med(compiled["computed_ms"])
        out[name] = {
            "eager": {"call_ms_median": e_ms, "reused_ms_median": med(eager["reused_ms"]),
                      "denoise_median": med(eager["denoise"]), "denoise_seconds": eager["denoise"],
                      "cpu_median": med(eager["cpu"]), "cpu_seconds": eager["cpu"],
                      "computed_calls": len(eager["computed_ms"])},
            "compiled": {"call_ms_median": c_ms, "reused_ms_median": med(compiled["reused_ms"]),
                         "denoise_median": med(compiled["denoise"]), "denoise_seconds": compiled["denoise"],
                         "cpu_median": med(compiled["cpu"]), "cpu_seconds": compiled["cpu"],
                         "computed_calls": len(compiled["computed_ms"]),
                         "frames_compiled_in_timed_runs": compiled["frames_compiled"]},
            "warmup": warm[name],
            "call_speedup": (e_ms / c_ms) if e_ms and c_ms else None,
            "decisions_match": eager["decisions"] == compiled["decisions"],
        }
    return out


def markdown(result: dict) -> str:
    head = "" if result["mode"] == "gpu" else (
        "*CPU run at toy shapes (the smoke shapes), on the machine named below: the machinery and the relative "
        "figures, not a GPU measurement.*\n\n")
    lines = [
        f"{head}### torch.compile: {result['model']}, {result['height']}x{result['width']}x{result['frames']}, "
        f"{result['steps']} steps, {result['repeats']} interleaved repeats ({result['device']})\n",
        "| configuration | eager call (median) | compiled call (median) | call speed-up | denoise eager / compiled "
        "| CPU time per run eager / compiled | compile warm-up | compiling | recompiles in timed runs "
        "| same decisions |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in result["configs"].items():
        e, c, w = r["eager"], r["compiled"], r["warmup"]
        lines.append(
            f"| {name} | {e['call_ms_median']:.2f} ms | {c['call_ms_median']:.2f} ms | {r['call_speedup']:.2f}x "
            f"| {e['denoise_median']:.2f} s / {c['denoise_median']:.2f} s "
            f"| {e['cpu_median']:.2f} s / {c['cpu_median']:.2f} s | {w['warmup_call_seconds']:.1f} s "
            f"({w['calls_compiling']} call) | {w['compile_seconds']:.1f} s, {w['frames_compiled']} graph(s) "
            f"| {c['frames_compiled_in_timed_runs']} | {'yes' if r['decisions_match'] else 'no'} |"
        )
    lines.append("")
    lines.append("`easycache`: EasyCache alone; `all`: EasyCache, feature chunking, asynchronous swapping (a no-op on "
                 "a CPU) and sliced decoding. Calls are the computed transformer calls of denoise-only runs; the "
                 "compile warm-up is the whole time of the calls during which torch compiled, in the first "
                 "compiled run, and \"compiling\" the part torch reports as compiling.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from lightcache.bench.harness import environment
    from lightcache.presets import load_preset

    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="1.3b")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per run (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="EasyCache warm-up steps (default 2)")
    parser.add_argument("--threshold", type=float, default=0.1, help="EasyCache tau (default 0.1)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's); on a shared CPU one "
                        "thread keeps eager and compiled code from spinning against the other processes")
    parser.add_argument("--out", help="directory for compile-<mode>.json/.md")
    args = parser.parse_args(argv)
    if args.steps < 2 or not 0 <= args.warmup < args.steps or args.repeats < 1:
        parser.error("need --steps >= 2, 0 <= --warmup < --steps and --repeats >= 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("need --threads >= 1")
        torch.set_num_threads(args.threads)

    if args.smoke:
        mode, device, spec, preset = "smoke", torch.device("cpu"), SMOKE, load_preset("tiny")
    elif not torch.cuda.is_available():
        print("error: the compile benchmark measures a CUDA GPU; use --smoke without one.", file=sys.stderr)
        return 2
    else:
        mode, device, spec = "gpu", torch.device("cuda", torch.cuda.current_device()), MODELS[args.model]
        preset = load_preset("wan2.1-t2v-14b" if args.model == "14b" else "wan2.1-t2v-1.3b")
    out_dir = Path(args.out) if args.out else (DOCS if mode == "gpu" else Path(tempfile.mkdtemp(prefix="compile-")))
    out_dir.mkdir(parents=True, exist_ok=True)

    pipe = build_random_pipeline(spec, device)
    configs = run_configs(pipe, preset, spec, args.steps, args.warmup, args.threshold, args.repeats,
                          log=lambda m: print(m, flush=True))
    env = environment(pipe)
    result = {"mode": mode, "model": spec.name, "device": env.get("gpu", device.type), "environment": env,
              "height": spec.height, "width": spec.width, "frames": spec.frames, "steps": args.steps,
              "warmup": args.warmup, "threshold": args.threshold, "repeats": args.repeats, "configs": configs}
    text = markdown(result)
    (out_dir / f"compile-{mode}.json").write_text(json.dumps(result, indent=1))
    (out_dir / f"compile-{mode}.md").write_text(text)
    print()
    print(text)
    print(f"wrote {out_dir / f'compile-{mode}.json'} and {out_dir / f'compile-{mode}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
