"""What a second live OpenMP thread costs a CPU generation: why lightcache does its torch work on one thread.

Two process layouts, each in fresh processes, alternated, on the tiny model through the runner:

* ``one thread``: as lightcache runs today: the model is loaded and every run made on the torch thread
  (:mod:`lightcache.torch_thread`);
* ``two threads``: the same, after one parallel torch op on the main thread, which gives the main thread an OpenMP
  team of its own, as loading on the main thread and running on a worker thread did before.

Each process makes one untimed warm-up run and ``--runs`` timed ones; the record keeps every run's denoise time.
The ratio only means something on a CPU with few cores (libgomp throttles spin-waiting once the process holds more
OpenMP threads than CPUs), which is the machine the tiny model serves.

Usage::

    python -m benchmarks.openmp_threads --out docs/openmp-threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

LAYOUTS = ("one thread", "two threads")


def measure(layout: str, runs: int, steps: int) -> list[float]:
    """Denoise seconds of ``runs`` runs in this process, laid out as ``layout``."""
    import torch

    from lightcache.presets import load_pipeline, load_shipped_preset
    from lightcache.runner import run_generation, run_to_completion
    from lightcache.settings import RunSettings

    preset = load_shipped_preset("tiny")
    pipe = load_pipeline(preset, device="cpu")
    if layout == "two threads":
        torch.randn(1_000_000).exp().sum()  # any op big enough to run in parallel gives the main thread its team
    settings = RunSettings.from_preset(preset, easycache=False, steps=steps)
    out = []
    for i in range(runs + 1):
        summary = run_to_completion(run_generation(pipe, settings, preset.name)).summary
        if i:  # the first run is the warm-up
            out.append(round(summary["stages"]["denoise"]["seconds"], 4))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per process")
    ap.add_argument("--rounds", type=int, default=2, help="processes per layout, alternated")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", help="write the record here (JSON)")
    ap.add_argument("--layout", choices=LAYOUTS, help=argparse.SUPPRESS)  # one measuring process
    args = ap.parse_args(argv)
    if args.layout:
        print(json.dumps(measure(args.layout, args.runs, args.steps)))
        return {}

    import torch

    record = {
        "command": "python -m benchmarks.openmp_threads" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
        "what": "denoise seconds of tiny-model runs through the runner, per process layout",
        "steps": args.steps, "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        "load_average_before": os.getloadavg()[0], "runs": {layout: [] for layout in LAYOUTS},
    }
    root = Path(__file__).resolve().parents[1]
    for r in range(args.rounds):
        for layout in LAYOUTS:
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.openmp_threads", "--layout", layout, "--runs", str(args.runs),
                 "--steps", str(args.steps)], cwd=root, capture_output=True, text=True, check=True)
            times = json.loads(done.stdout.strip().splitlines()[-1])
            record["runs"][layout] += times
            print(f"round {r + 1}, {layout}: denoise {', '.join(f'{t:.2f}' for t in times)} s", flush=True)
    record["load_average_after"] = os.getloadavg()[0]
    one, two = (statistics.median(record["runs"][layout]) for layout in LAYOUTS)
    record["median_seconds"] = {"one thread": one, "two threads": two}
    record["ratio"] = round(two / one, 3)
    print(f"median denoise: one thread {one:.2f} s, two threads {two:.2f} s: {two / one:.2f}x as long")
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main()
