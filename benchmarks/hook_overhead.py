"""EasyCache's hook overhead at a real model shape: tau = 0 against plain, and a reused call against a computed one.

The pipeline is a real ``WanPipeline`` driven by :func:`lightcache.runner.run_generation`, with the Wan2.1
transformer and VAE built from their configs with random weights (time does not depend on weight values; see
:mod:`benchmarks.memory`). The text encoder is a one-layer UMT5 with Wan's 4096-wide output over the tiny
vocabulary: prompt encoding is not what is measured, and a random 5.7B UMT5-XXL would only cost load time.

The measurement itself is :func:`lightcache.bench.harness.measure_overhead`, the same one ``python -m lightcache
bench`` runs on the tiny model: denoise-only runs of plain, tau = 0 and a tau no estimate reaches (every call after
the warm-up is reused), interleaved, medians. Targets (from the benchmark brief): tau = 0 costs <= 2% over plain,
a reused call costs <= 2% of a computed call.

Usage::

    python -m benchmarks.hook_overhead                       # CUDA: Wan2.1-1.3B at 480x832x81, 10 steps
    python -m benchmarks.hook_overhead --model 14b --steps 6 # Wan2.1-14B at 720x1280x81
    python -m benchmarks.hook_overhead --smoke               # CPU, tiny shapes: checks the machinery in seconds

A GPU run writes ``docs/hook-overhead-gpu.json`` and ``.md``; ``--smoke`` writes into ``--out`` (default: a new
temporary directory) so it never replaces measured figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.memory import DOCS, MODELS, SMOKE, ModelSpec, build_models

TARGET_PCT = 2.0


def build_random_pipeline(spec: ModelSpec, device: torch.device):
    """A ``WanPipeline`` at ``spec``'s shapes with random weights: bf16 transformer, fp32 VAE, small text encoder."""
    from diffusers import UniPCMultistepScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    from lightcache.tiny import build_tiny_tokenizer

    transformer, vae = build_models(spec, device)
    if device.type == "cpu":
        transformer.float()  # bf16 matmuls are slow on most CPUs; the smoke run checks machinery, not figures
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=len(tokenizer), d_model=spec.transformer["text_dim"], d_kv=64, d_ff=256, num_layers=1,
            num_heads=4, relative_attention_num_buckets=8,
        ))
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder.to(device).eval(), vae=vae.eval(),
                       transformer=transformer.eval(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def markdown(result: dict) -> str:
    from lightcache.bench.report import format_percent

    o = result["overhead"]
    r = o["reuse"]
    mode = "" if result["mode"] == "gpu" else "*smoke run: tiny shapes on the CPU, not a measurement.*\n\n"
    rows = [
        ("tau = 0 over plain, whole denoise stage", format_percent(o["overhead_pct"], signed=True),
         o["overhead_pct"]),
        ("tau = 0 over plain, median transformer call", format_percent(o["call_overhead_pct"], signed=True),
         o["call_overhead_pct"]),
        ("reused call / computed call (medians)", format_percent(r["ratio_pct"]), r["ratio_pct"]),
    ]
    lines = [
        f"{mode}### {result['model']}, {o['height']}x{o['width']}x{o['frames']}, {o['steps']} steps, "
        f"{o['repeats']} interleaved repeats ({result['device']})\n",
        f"Plain denoise {o['plain_denoise_median']:.3f} s, tau = 0 {o['tau0_denoise_median']:.3f} s (medians); "
        f"median call: plain {o['plain_call_ms_median']:.2f} ms, tau = 0 {o['tau0_call_ms_median']:.2f} ms, "
        f"computed {r['computed_ms_median']:.2f} ms, reused "
        + ("-" if r["reused_ms_median"] is None else f"{r['reused_ms_median']:.3f} ms")
        + f" ({r['reused_calls_per_run']} reused calls per run).\n",
        "| figure | value | target | met |",
        "|---|---:|---:|---|",
    ]
    for what, text, value in rows:
        met = "-" if value is None else ("yes" if value <= TARGET_PCT else "no")
        lines.append(f"| {what} | {text} | <= {TARGET_PCT:.0f}% | {met} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from lightcache.bench.harness import BenchConfig, environment, measure_overhead
    from lightcache.presets import load_preset

    parser = argparse.ArgumentParser(prog="python -m benchmarks.hook_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="1.3b")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per run (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="EasyCache warm-up steps (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: a machinery check, no figures")
    parser.add_argument("--out", help="directory for hook-overhead-<mode>.json/.md")
    args = parser.parse_args(argv)
    if args.steps < 2 or not 0 <= args.warmup < args.steps or args.repeats < 1:
        parser.error("need --steps >= 2, 0 <= --warmup < --steps and --repeats >= 1")

    if args.smoke:
        mode, device, spec, preset = "smoke", torch.device("cpu"), SMOKE, load_preset("tiny")
    elif not torch.cuda.is_available():
        print("error: the hook-overhead benchmark measures a CUDA GPU; use --smoke without one.", file=sys.stderr)
        return 2
    else:
        mode, device, spec = "gpu", torch.device("cuda", torch.cuda.current_device()), MODELS[args.model]
        preset = load_preset("wan2.1-t2v-14b" if args.model == "14b" else "wan2.1-t2v-1.3b")
    out_dir = Path(args.out) if args.out else (DOCS if mode == "gpu" else Path(tempfile.mkdtemp(prefix="overhead-")))
    out_dir.mkdir(parents=True, exist_ok=True)

    pipe = build_random_pipeline(spec, device)
    config = BenchConfig(
        overhead_repeats=args.repeats, overhead_size=(spec.frames, spec.height, spec.width),
        settings={"steps": args.steps, "warmup": args.warmup, "max_sequence_length": spec.text_len},
    )
    overhead = measure_overhead(pipe, preset, config, log=lambda m: print(m, flush=True))
    env = environment(pipe)
    result = {"mode": mode, "model": spec.name, "device": env.get("gpu", device.type), "environment": env,
              "overhead": overhead}
    text = markdown(result)
    (out_dir / f"hook-overhead-{mode}.json").write_text(json.dumps(result, indent=1))
    (out_dir / f"hook-overhead-{mode}.md").write_text(text)
    print()
    print(text)
    print(f"wrote {out_dir / f'hook-overhead-{mode}.json'} and {out_dir / f'hook-overhead-{mode}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
