"""The command line: ``python -m lightcache generate ...`` (and the benchmarks' subcommands).

``generate`` writes into ``--out``: ``video.mp4`` (H.264), ``trace.json`` (one record per transformer call),
``summary.json`` (preset, settings, stage times and peak memory, which memory strategies acted, computed/reused
counts and, with ``--compare-baseline``, the plain run's time, the speed-up, PSNR and SSIM), ``timeline.json`` (the
run's events as plain data: stages, calls, memory samples) and ``timeline.html`` (the memory timeline figure). A
bad request prints one line starting with ``error:`` and exits with status 2, leaving nothing in ``--out``.

Example:
    python -m lightcache generate --preset tiny --prompt "a red circle moving right" --out out/red-circle
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import LightcacheError, RunCancelled
from .events import json_safe

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lightcache",
        description="Faster, lighter video diffusion with EasyCache and LightCache's memory strategies.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = sub.add_parser("generate", help="generate one video and write video.mp4, trace.json, summary.json, "
                                          "timeline.json, timeline.html")
    add_generate_arguments(gen)
    gen.set_defaults(handler=cmd_generate)
    presets = sub.add_parser("presets", help="list the model presets")
    presets.set_defaults(handler=cmd_presets)
    for register in _extra_commands():
        register(sub)
    return parser


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--preset", default="tiny", help="model preset (see `python -m lightcache presets`)")
    p.add_argument("--model", help="override the preset's model: a local diffusers directory or a Hub id")
    p.add_argument("--image", metavar="PATH", help="first frame for image-to-video presets (PNG, JPEG, ...); "
                   "required by the I2V presets, optional for wan2.2-ti2v-5b, refused by text-to-video ones")
    p.add_argument("--prompt", help="text prompt (default: the preset's example prompt)")
    p.add_argument("--negative-prompt", dest="negative_prompt", help="negative prompt (default: the preset's)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--steps", type=int, help="denoising steps")
    p.add_argument("--frames", type=int, help="number of frames, of the form 4k+1")
    p.add_argument("--height", type=int, help="height in pixels, a multiple of 16")
    p.add_argument("--width", type=int, help="width in pixels, a multiple of 16")
    p.add_argument("--guidance", dest="guidance_scale", type=float, help="classifier-free guidance scale")
    p.add_argument("--threshold", type=float, help="EasyCache threshold tau (0 never reuses)")
    p.add_argument("--warmup", type=int, help="EasyCache warm-up steps that always compute")
    p.add_argument("--no-easycache", action="store_true", help="run every step in full")
    p.add_argument("--async-swap", dest="async_swap", action="store_true",
                   help="keep idle weights and cache tensors in pinned CPU memory, streamed in on a side CUDA stream "
                        "(a no-op on a CPU, and the summary says so)")
    p.add_argument("--chunk-ffn", dest="chunk_ffn", type=int, metavar="N",
                   help="feature chunking: run the transformer's token-wise layers over N slices of the sequence")
    p.add_argument("--sliced-decode", dest="sliced_decode", action="store_true",
                   help="decode the latents in bands so the VAE's full-resolution activations never exist whole")
    p.add_argument("--decode-slices", dest="decode_slices", type=int, metavar="N",
                   help="bands for --sliced-decode (default: up to 16); fewer decode faster and hold more memory")
    p.add_argument("--compare-baseline", action="store_true",
                   help="also run the plain pipeline with the same seed; report speed-up, PSNR and SSIM")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", required=True, help="output directory (created; must be empty if it exists)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        return int(args.handler(args) or 0)
    except LightcacheError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, RunCancelled):
        print("error: stopped; nothing was written.", file=sys.stderr)
        return 130


def cmd_presets(args) -> int:
    from .presets import list_presets, load_preset

    for name in list_presets():
        preset = load_preset(name)
        d = preset.defaults
        where = "GPU" if preset.requires_gpu else "CPU"
        kind = {"none": "T2V", "optional": "TI2V", "required": "I2V"}[preset.image_input]
        print(f"{name:20s} {where} {kind:4s} {d['width']}x{d['height']}x{d['frames']}, {d['steps']} steps  {preset.model}")
    return 0


def cmd_generate(args) -> int:
    from .presets import load_preset
    from .settings import RunSettings

    from .images import check_image_for_preset, open_image

    preset = load_preset(args.preset)
    settings = RunSettings.from_preset(preset, **_settings_overrides(args))
    image = open_image(args.image, label="--image") if args.image else None
    check_image_for_preset(preset, image)
    out = Path(args.out)
    _check_out_dir(out)
    # Validate everything that can fail cheaply before loading a model, and write into a staging directory
    # that only becomes --out when the run succeeded: a failed or stopped run leaves nothing behind.
    staging = Path(tempfile.mkdtemp(prefix=".lightcache-", dir=_existing_parent(out)))
    try:
        pipe = _load(preset, args)
        summary = generate_to_dir(pipe, preset.name, settings, staging, args.compare_baseline, not args.quiet,
                                  image=image)
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not args.quiet:
        _print_summary(summary, out)
    return 0


def generate_to_dir(pipe, preset_name: str, settings, out_dir: Path, compare_baseline: bool = False,
                    progress: bool = False, image: Any = None) -> dict[str, Any]:
    """Run one generation (and optionally the plain baseline) and write the output files into ``out_dir``.

    ``image``: the first frame of an image-to-video run (a PIL image), given to both runs of a comparison.
    """
    import dataclasses

    from .events import FramesDecoded, StepRecord
    from .metrics import json_psnr, psnr, ssim
    from .runner import run_generation, run_to_completion
    from .video import Mp4Writer

    out_dir = Path(out_dir)
    records: list[dict[str, Any]] = []
    timeline: list[dict[str, Any]] = []
    if compare_baseline:
        # One untimed two-step run first, so that one-time costs (kernel selection, allocator growth, lazy
        # imports) land on neither of the two timed runs and the speed-up compares like with like.
        warmup = dataclasses.replace(settings, steps=2, warmup=0, easycache=False)
        run_to_completion(run_generation(pipe, warmup, preset_name, image=image))
    with _progress(settings, progress, "accelerated" if settings.easycache else "plain") as bar, \
            Mp4Writer(out_dir / "video.mp4", fps=settings.fps) as writer:

        def on_event(event):
            if not isinstance(event, FramesDecoded):
                timeline.append(event.to_dict())
            if isinstance(event, StepRecord):
                records.append(event.to_dict())
                bar(event)
            elif isinstance(event, FramesDecoded):
                writer.write(event.frames)

        finished = run_to_completion(run_generation(pipe, settings, preset_name, image=image), on_event)
    summary = dict(finished.summary)
    if compare_baseline:
        plain_settings = dataclasses.replace(settings, easycache=False)
        with _progress(plain_settings, progress, "plain baseline") as bar:
            baseline = run_to_completion(
                run_generation(pipe, plain_settings, preset_name, image=image),
                lambda e: bar(e) if isinstance(e, StepRecord) else None,
            )
        speedup = baseline.summary["total_seconds"] / max(summary["total_seconds"], 1e-9)
        summary.update(
            baseline_seconds=baseline.summary["total_seconds"],
            baseline_stages=baseline.summary["stages"],
            speedup=speedup,
            denoise_speedup=baseline.summary["stages"]["denoise"]["seconds"]
            / max(summary["stages"]["denoise"]["seconds"], 1e-9),
            psnr_db=json_psnr(psnr(finished.frames, baseline.frames)),
            ssim=ssim(finished.frames, baseline.frames),
        )
    (out_dir / "trace.json").write_text(json.dumps(records, indent=1))
    (out_dir / "summary.json").write_text(json.dumps(json_safe(summary), indent=2))
    _write_timeline(timeline, out_dir)
    return summary


# --- helpers ----------------------------------------------------------------------------------------------
def _extra_commands() -> list[Callable[[Any], None]]:
    """Subcommands that live in their own modules register themselves here."""
    from .bench.cli import register as register_bench

    return [register_bench]


def _quiet_libraries() -> None:
    """diffusers and transformers log loading bars and deprecation chatter; the CLI has its own progress bar."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="diffusers")


def _settings_overrides(args) -> dict[str, Any]:
    names = ("prompt", "negative_prompt", "seed", "steps", "frames", "height", "width", "guidance_scale",
             "threshold", "warmup")
    overrides = {name: getattr(args, name, None) for name in names}
    if getattr(args, "no_easycache", False):
        overrides["easycache"] = False
    overrides["chunk_ffn"] = getattr(args, "chunk_ffn", None)
    overrides["decode_slices"] = getattr(args, "decode_slices", None)
    for flag in ("async_swap", "sliced_decode"):
        if getattr(args, flag, False):
            overrides[flag] = True
    return overrides


def _write_timeline(events: list[dict[str, Any]], out_dir: Path) -> None:
    """timeline.json (the events the figure is drawn from) and timeline.html (the figure, viewable offline)."""
    from .plots import timeline_figure

    (out_dir / "timeline.json").write_text(json.dumps(json_safe(events), indent=1))
    timeline_figure(events).write_html(out_dir / "timeline.html", include_plotlyjs=True, full_html=True)


def _load(preset, args):
    from .presets import load_pipeline

    return load_pipeline(preset, device=args.device, model=args.model)


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise LightcacheError(f"--out {out} exists and is not a directory.")
    if out.is_dir() and any(out.iterdir()):
        raise LightcacheError(f"--out {out} is not empty; choose a new directory so no results get mixed.")


def _existing_parent(out: Path) -> str:
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    return str(parent)


def _publish(staging: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_dir():
        out.rmdir()  # empty, checked before the run
    os.replace(staging, out)


class _progress:
    """A tqdm bar over transformer calls that shows computed/reused counts; silent when disabled."""

    def __init__(self, settings, enabled: bool, label: str):
        self.enabled = enabled
        self.total = settings.steps * (2 if settings.guidance_scale > 1.0 else 1)
        self.label = label
        self.reused = 0

    def __enter__(self):
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=self.label, unit="call", file=sys.stderr, leave=True)
        return self

    def __call__(self, record) -> None:
        if not self.enabled:
            return
        self.reused += not record.computed
        self.bar.set_postfix(step=record.step, reused=self.reused, refresh=False)
        self.bar.update(1)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.close()


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    stages = ", ".join(f"{k} {v['seconds']:.2f}s" for k, v in summary["stages"].items())
    line = (f"wrote {out}/video.mp4, trace.json, summary.json, timeline.json, timeline.html | {stages} | "
            f"calls computed {summary['calls_computed']}, reused {summary['calls_reused']}")
    if "speedup" in summary:
        psnr_db = summary["psnr_db"]
        psnr_text = f"{psnr_db:.2f}" if isinstance(psnr_db, float) else psnr_db
        line += f" | speed-up {summary['speedup']:.2f}x, PSNR {psnr_text} dB, SSIM {summary['ssim']:.4f}"
    print(line)
