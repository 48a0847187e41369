"""Every step cache at its default setting on one model: what each skipped, measured, and how close it stays.

Runs the plain pipeline, then each cache of :data:`lightcache.cache_methods.CACHE_METHODS` at its default setting
(EasyCache at the preset's tau), through the same runner the app and the CLI use, on the preset's default request,
and writes one JSON record: per method, the share of the transformer's block work its calls ran (the trace's
measurement, from the modules that ran), its calls computed / partial / reused, PSNR and SSIM against the plain
video, the denoise stage's time and speed-up, and MagCache's calibration run. An untimed two-step warm-up goes first.

    .venv/bin/python scripts/cache_methods_record.py --preset tiny --out docs/cache-methods-tiny.json

Times on a shared CPU are noisy; the work and the PSNR are not (the same inputs give the same videos).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--out", required=True, help="where to write the JSON record")
    parser.add_argument("--steps", type=int, help="override the preset's steps")
    args = parser.parse_args(argv)

    import diffusers
    import torch

    from lightcache.cache_methods import CACHE_METHODS
    from lightcache.comparison import compare_runs, warm_up
    from lightcache.events import StepRecord, call_kind
    from lightcache.metrics import json_psnr
    from lightcache.presets import load_pipeline, load_preset
    from lightcache.runner import run_generation, run_to_completion
    from lightcache.settings import RunSettings

    preset = load_preset(args.preset)
    pipe = load_pipeline(preset, device="cpu" if not torch.cuda.is_available() else "cuda")
    base = RunSettings.from_preset(preset, steps=args.steps)
    started = time.perf_counter()
    warm_up(pipe, base, preset.name)

    def run(settings):
        records: list[StepRecord] = []
        finished = run_to_completion(run_generation(pipe, settings, preset.name),
                                     lambda e: records.append(e) if isinstance(e, StepRecord) else None)
        return finished, records

    plain, plain_records = run(RunSettings.from_preset(preset, steps=args.steps, easycache=False))
    methods = []
    for name, method in CACHE_METHODS.items():
        if name == "none":
            continue
        settings = RunSettings.from_preset(preset, steps=args.steps, cache=name)
        finished, records = run(settings)
        c = compare_runs(finished, plain, records, plain_records)
        cache = finished.summary["cache"]
        kinds = [call_kind(r) for r in records]
        methods.append({
            "method": name,
            "label": method.label,
            "setting": cache["setting"],
            "value": cache["value"],
            "fixed": cache["fixed"],
            "work_fraction": cache["work_fraction"],
            "work_skipped": 1.0 - cache["work_fraction"] if cache["work_fraction"] is not None else None,
            "calls": len(records),
            "calls_computed": kinds.count("computed"),
            "calls_partial": kinds.count("partial"),
            "calls_reused": kinds.count("reused"),
            "psnr_db": json_psnr(c["psnr_db"]),
            "ssim": c["ssim"],
            "denoise_seconds": finished.summary["stages"]["denoise"]["seconds"],
            "denoise_speedup": c["denoise_speedup"],
            "calibration": cache["calibration"],
        })
        print(f"{method.label:16s} {cache['setting']}={cache['value']:g}: block work run "
              f"{100 * cache['work_fraction']:.1f} %, PSNR {c['psnr_db']:.2f} dB, denoise {c['denoise_speedup']:.2f}x",
              flush=True)
    record = {
        "command": "python scripts/cache_methods_record.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "diffusers": diffusers.__version__, "platform": platform.platform(),
                        "device": str(pipe._execution_device), "cpu_threads": torch.get_num_threads()},
        "preset": preset.name,
        "settings": {k: v for k, v in plain.summary["settings"].items() if k not in ("cache", "cache_setting")},
        "plain_denoise_seconds": plain.summary["stages"]["denoise"]["seconds"],
        "methods": methods,
        "seconds": round(time.perf_counter() - started, 1),
    }
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
