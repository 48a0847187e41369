"""Measure what the tiny model draws, frame by frame: colour, shape and motion against the prompt.

Writes a JSON record (every video's per-frame readings and the summary rates) that the model card's figures are
generated from. Prompts cycle through every (colour, shape, motion) triple, held-out ones included; noise seeds
start at ``--seed`` (1000 by default, away from every seed the training used).

    python scripts/eval_tiny.py --model lightcache/data/tiny-wan --videos 60 --out lightcache/data/tiny-wan/eval.json
    python scripts/eval_tiny.py --vae-only --videos 60     # the VAE alone: ground-truth clips encoded and decoded
    python scripts/eval_tiny.py --cost 5 --out lightcache/data/tiny-wan/cost.json   # where a default generation's time goes

``--cost N`` times N plain and N EasyCache generations at the preset's defaults through lightcache's runner (the
numbers the app shows), interleaved after one untimed warm-up, and records each run's stage times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightcache.tiny import shapes  # noqa: E402
from lightcache.torch_thread import torch_thread  # noqa: E402


def _cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, else the platform's word): the same run differs a few times over
    between CPUs, so a time means little without it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@torch.inference_mode()
def round_trip(vae, x: torch.Tensor) -> torch.Tensor:
    """``x`` encoded and decoded by ``vae``: what the VAE alone makes of perfect latents."""
    return vae.decode(vae.encode(x).latent_dist.mode()).sample


def prompts(n: int) -> list[shapes.ClipSpec]:
    specs = shapes.all_specs(include_held_out=True)
    # A fixed stride through the list so a short run still covers every colour, shape and motion.
    return [specs[(i * 7) % len(specs)] for i in range(n)]


def summarise(rows: list[dict]) -> dict:
    n = len(rows)
    return {
        "videos": n,
        "colour_every_frame": sum(r["colour_every_frame"] for r in rows) / n,
        "median_worst_off_colour": statistics.median(r["worst_off_colour"] for r in rows),
        "shape_recognised": sum(r["shape_recognised"] for r in rows) / n,
        "colour_and_motion": sum(r["follows_prompt"] for r in rows) / n,
        "held_out_colour_and_motion": (
            sum(r["follows_prompt"] for r in rows if r["held_out"]) / max(1, sum(r["held_out"] for r in rows))
        ),
    }


def row(spec: shapes.ClipSpec, seed: int, frames: np.ndarray) -> dict:
    rep = shapes.measure_frames(frames, spec)
    ok, _ = shapes.follows_prompt(frames, spec)
    return {
        "prompt": shapes.caption(spec),
        "seed": seed,
        "held_out": spec.triple in shapes.HELD_OUT,
        "off_colour": [round(x, 4) for x in rep.off_colour],
        "shapes": list(rep.shapes),
        "worst_off_colour": round(rep.worst_off_colour, 4),
        "colour_every_frame": rep.colour_every_frame,
        "shape": rep.shape,
        "shape_recognised": rep.shape_recognised,
        "follows_prompt": ok,
    }


def cost(pipe, runs: int) -> dict:
    """Stage times of ``runs`` plain and ``runs`` EasyCache generations at the tiny preset's defaults, interleaved."""
    from lightcache.comparison import warm_up
    from lightcache.presets import load_shipped_preset
    from lightcache.runner import run_generation, run_to_completion
    from lightcache.settings import RunSettings

    preset = load_shipped_preset("tiny")
    # The 1-minute load average before and after: a figure taken while other work shared the cores says so.
    load_before = round(os.getloadavg()[0], 2)
    configs = {"plain": RunSettings.from_preset(preset, easycache=False), "easycache": RunSettings.from_preset(preset)}
    warm_up(pipe, configs["plain"], preset.name)
    out: dict[str, list] = {name: [] for name in configs}
    for i in range(runs):
        for name, settings in configs.items():
            summary = run_to_completion(run_generation(pipe, settings, preset.name)).summary
            out[name].append({
                "total_seconds": round(summary["total_seconds"], 4),
                "stages": {k: round(v["seconds"], 4) for k, v in summary["stages"].items()},
                "calls_computed": summary["calls_computed"], "calls_reused": summary["calls_reused"],
            })
            print(f"run {i + 1}/{runs} {name:<9} {out[name][-1]}", flush=True)
    med = {name: {"total_seconds": statistics.median(r["total_seconds"] for r in rows),
                  "denoise_seconds": statistics.median(r["stages"]["denoise"] for r in rows),
                  "decode_seconds": statistics.median(r["stages"]["decode"] for r in rows)}
           for name, rows in out.items()}
    summary = {
        "denoise_share": med["plain"]["denoise_seconds"] / med["plain"]["total_seconds"],
        "decode_share": med["plain"]["decode_seconds"] / med["plain"]["total_seconds"],
        "plain_seconds": med["plain"]["total_seconds"],
        "easycache_seconds": med["easycache"]["total_seconds"],
        "speedup": med["plain"]["total_seconds"] / med["easycache"]["total_seconds"],
        "denoise_speedup": med["plain"]["denoise_seconds"] / med["easycache"]["denoise_seconds"],
    }
    return {"settings": configs["plain"].to_dict(), "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "cpu": _cpu_name(), "load_average": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
            "runs": out, "medians": med, "summary": summary}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lightcache/data/tiny-wan")
    ap.add_argument("--videos", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=None, help="default: the tiny preset's")
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--vae-only", action="store_true")
    ap.add_argument("--cost", type=int, default=0, metavar="N", help="time N plain and N EasyCache generations instead")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from diffusers import WanPipeline

    from lightcache.presets import load_shipped_preset

    d = load_shipped_preset("tiny").defaults
    steps = args.steps or d["steps"]
    frames_n = args.frames or d["frames"]
    # Every heavy torch call on one thread, the runner's (lightcache.torch_thread says why it matters for speed).
    pipe = torch_thread.call(WanPipeline.from_pretrained, args.model)
    pipe.set_progress_bar_config(disable=True)
    command = "python scripts/eval_tiny.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.cost:
        record = {"command": command, "what": "stage times of default generations", **cost(pipe, args.cost)}
        print(json.dumps(record["summary"], indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
        return record
    rows, t0 = [], time.time()
    for i, spec in enumerate(prompts(args.videos)):
        seed = args.seed + i
        if args.vae_only:
            clip = shapes.render_clip(spec, frames_n, d["height"], d["width"], seed=seed)
            x = torch.from_numpy(clip).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
            y = torch_thread.call(round_trip, pipe.vae, x)
            frames = ((y[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
        else:
            frames = torch_thread.call(
                pipe, shapes.caption(spec), negative_prompt="", height=d["height"], width=d["width"], num_frames=frames_n,
                num_inference_steps=steps, guidance_scale=d["guidance_scale"],
                max_sequence_length=d["max_sequence_length"], generator=torch.Generator().manual_seed(seed),
                output_type="np",
            ).frames[0]
        rows.append(row(spec, seed, frames))
        print(f"{i + 1}/{args.videos} {rows[-1]['prompt']:<40} colour {'ok' if rows[-1]['colour_every_frame'] else '--'} "
              f"worst {rows[-1]['worst_off_colour']:.2f} shape {rows[-1]['shape']} motion {'ok' if rows[-1]['follows_prompt'] else '--'}",
              flush=True)
    record = {
        "command": command,
        "what": "vae reconstruction of ground-truth clips" if args.vae_only else "generations at the tiny preset's defaults",
        "steps": steps, "frames": frames_n, "seconds": round(time.time() - t0, 1),
        "summary": summarise(rows), "videos": rows,
    }
    print(json.dumps(record["summary"], indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main()
