"""``python -m lightcache bench``: run the benchmark and write results.json, table.md and the chart.

Example:
    python -m lightcache bench --preset tiny --quick --out out/bench
    python -m lightcache bench --preset tiny --out docs/benchmarks --doc docs/benchmarks.md

``--from-results`` re-renders table, chart and page from an existing ``results.json`` without running a model.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from ..errors import LightcacheError

OUTPUT_FILES = ("results.json", "table.md", "speed_vs_psnr.html", "speed_vs_psnr.png")


def register(subparsers) -> None:
    """Add the ``bench`` subcommand to the CLI's subparsers."""
    p = subparsers.add_parser(
        "bench", help="benchmark EasyCache against diffusers' caches: speed, quality and memory side by side",
        description="Run the plain pipeline, EasyCache at a sweep of tau and diffusers' built-in caches on the same "
                    "prompts and seeds; write results.json, table.md and a speed-vs-PSNR chart into --out.",
    )
    p.add_argument("--preset", default="tiny", help="model preset (see `python -m lightcache presets`)")
    p.add_argument("--model", help="override the preset's model: a local diffusers directory or a Hub id")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="2 prompts, 1 seed, 1 repeat, a short sweep (~3 min on CPU)")
    p.add_argument("--out", required=True, help="output directory; its results.json, table.md and chart are replaced")
    p.add_argument("--doc", help="also write the Markdown page here (e.g. docs/benchmarks.md)")
    p.add_argument("--methods", help="comma-separated subset of methods (plain is always run)")
    p.add_argument("--prompt", action="append", dest="prompts", help="a prompt (repeat for several)")
    p.add_argument("--seeds", help="comma-separated seeds")
    p.add_argument("--repeats", type=int, help="timed runs per method x setting x prompt (median reported)")
    p.add_argument("--steps", type=int, help="denoising steps")
    p.add_argument("--warmup", type=int, help="EasyCache warm-up steps (default: the preset's)")
    p.add_argument("--frames", type=int, help="frames, of the form 4k+1")
    p.add_argument("--height", type=int, help="height in pixels")
    p.add_argument("--width", type=int, help="width in pixels")
    p.add_argument("--no-overhead", action="store_true", help="skip the EasyCache hook-overhead measurement")
    p.add_argument("--overhead-size", help="FRAMESxHEIGHTxWIDTH for the overhead measurement, e.g. 33x256x256")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--from-results", action="store_true",
                   help="do not run anything: re-render table, chart and --doc from --out/results.json")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=cmd_bench)


def cmd_bench(args) -> int:
    from ..extras import BENCH_MODULES, require_extra

    require_extra("bench", BENCH_MODULES, "`bench`")
    from .chart import write_chart
    from .report import benchmarks_doc, results_table, summary_text
    from .results import read_results, write_results

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LightcacheError(f"--out {out} exists and is not a directory.")
    doc = Path(args.doc) if args.doc else None
    if doc is not None and doc.suffix.lower() != ".md":
        raise LightcacheError(f"--doc must name a Markdown file (.md), got {doc}.")
    command = command_line(args)
    if args.from_results:
        results = read_results(out / "results.json")
        command = results["command"] or command
    else:
        results = _run(args, command)
        out.mkdir(parents=True, exist_ok=True)
        write_results(results, out / "results.json")
    title = f"{results['preset']}: speed vs PSNR against the plain pipeline"
    stale_png = out / "speed_vs_psnr.png"
    if stale_png.exists():
        stale_png.unlink()
    chart = write_chart(results["aggregates"], out, title)
    (out / "table.md").write_text(results_table(results) + "\n")
    if doc is not None:
        doc.parent.mkdir(parents=True, exist_ok=True)
        rel = os.path.relpath(out.resolve(), doc.parent.resolve())
        doc.write_text(benchmarks_doc(results, command, chart, rel))
    if not args.quiet:
        print(summary_text(results))
        print(f"wrote {out}/results.json, table.md, {chart['html']}" + (f", {chart['png']}" if chart["png"] else "")
              + (f" and {doc}" if doc else ""))
    return 0


def _run(args, command: str) -> dict[str, Any]:
    import torch

    from ..presets import load_pipeline, load_preset
    from .harness import BenchConfig, run_benchmark

    if args.threads is not None:
        if args.threads < 1:
            raise LightcacheError(f"--threads must be >= 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    preset = load_preset(args.preset)
    config = BenchConfig(
        quick=args.quick,
        prompts=tuple(args.prompts) if args.prompts else None,
        seeds=_ints(args.seeds, "--seeds"),
        repeats=args.repeats,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()) if args.methods else None,
        overhead=not args.no_overhead,
        overhead_size=_size(args.overhead_size),
        settings={k: getattr(args, k) for k in ("steps", "warmup", "frames", "height", "width")
                  if getattr(args, k) is not None},
    )
    # Validate the request before the model loads (it takes time on a GPU preset). A method whose settings the family
    # refuses (a memory strategy it has no implementation of) is left out by the harness, with its reason.
    from ..families import adapter_named
    from .harness import _case_prompts, _entries, _settings

    plain = _entries(config)[0]
    for prompt in _case_prompts(config, preset, adapter_named(preset.family)):
        _settings(preset, config, {"prompt": prompt, "seed": config.resolved_seeds()[0]}, plain)
    pipe = load_pipeline(preset, device=args.device, model=args.model)
    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    return run_benchmark(pipe, preset, config, log=log, command=command)


def command_line(args) -> str:
    """The command that reproduces this run, for the page and results.json."""
    parts = ["python", "-m", "lightcache", "bench", "--preset", args.preset]
    for flag, value in (("--model", args.model), ("--device", args.device), ("--methods", args.methods),
                        ("--seeds", args.seeds), ("--repeats", args.repeats), ("--steps", args.steps),
                        ("--warmup", args.warmup),
                        ("--frames", args.frames), ("--height", args.height), ("--width", args.width),
                        ("--overhead-size", args.overhead_size), ("--threads", args.threads)):
        if value is not None:
            parts += [flag, str(value)]
    for prompt in args.prompts or []:
        parts += ["--prompt", prompt]
    if args.quick:
        parts.append("--quick")
    if args.no_overhead:
        parts.append("--no-overhead")
    parts += ["--out", args.out]
    if args.doc:
        parts += ["--doc", args.doc]
    return shlex.join(parts)


def _ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise LightcacheError(f"{flag} must be comma-separated whole numbers, got {text!r}.") from None


def _size(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        frames, height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise LightcacheError(f"--overhead-size must look like 33x256x256 (frames x height x width), got {text!r}.") \
            from None
    return frames, height, width
