"""The command line: ``lightcache generate ...`` or ``python -m lightcache generate ...`` (and the benchmark's).

``generate`` writes into ``--out``: ``video.mp4`` (H.264), ``trace.json`` (one record per transformer call),
``summary.json`` (preset, settings, stage times and peak memory, which memory strategies acted, computed/reused
counts and, with ``--compare-baseline``, the plain run's time, the speed-up, PSNR and SSIM), ``timeline.json`` (the
run's events as plain data: stages, calls, memory samples) and ``timeline.html`` (the memory timeline figure). A
bad request prints one line starting with ``error:`` and exits with status 2, leaving nothing in ``--out``; so does an
``--out`` that cannot be written or that another run is writing. Ctrl-C (130) and SIGTERM (143) print one line and
leave nothing behind either.

Example:
    python -m lightcache generate --preset tiny --prompt "a red circle moving right" --out out/red-circle
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from .cache_methods import CACHE_METHODS
from .errors import LightcacheError, RunCancelled
from .events import json_safe

EXIT_USAGE = 2
#: ``--cache``'s names, exactly the library's (lightcache.cache_methods).
CACHE_CHOICES = tuple(CACHE_METHODS)
CACHE_SETTINGS = tuple((m.name, m.setting, m.minimum, m.maximum) for m in CACHE_METHODS.values() if m.name != "none")
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's way of refusing: one ``error:`` line and exit status 2 (via :func:`main`), instead of
    the usage block. Its subcommands' parsers are of this class too."""

    def error(self, message: str):
        raise LightcacheError(f"{message} (see `{self.prog} --help`).")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=_prog(),
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
    for declared, families in _family_fields():
        p.add_argument(declared.cli_flag, dest=declared.name, type=float if declared.kind == "float" else int,
                       metavar="X" if declared.kind == "float" else "N",
                       help=f"{declared.help} ({', '.join(families)} presets only)")
    p.add_argument("--threshold", type=float, help="EasyCache threshold tau (0 never reuses)")
    p.add_argument("--warmup", type=int, help="EasyCache warm-up steps that always compute")
    p.add_argument("--no-easycache", action="store_true", help="run every step in full (the same as --cache none)")
    p.add_argument("--cache", choices=CACHE_CHOICES, default=None,
                   help="the step cache: easycache (default), or diffusers' fbc (FirstBlockCache), magcache "
                        "(calibrated once per model and settings), taylorseer, seacache, pab (Pyramid Attention "
                        "Broadcast), or none")
    p.add_argument("--cache-setting", dest="cache_setting", type=float, metavar="VALUE",
                   help="the chosen cache's main setting: " + "; ".join(
                       f"{name} {setting} ({low:g}-{high:g})" for name, setting, low, high in CACHE_SETTINGS)
                   + "; for easycache the same as --threshold")
    p.add_argument("--easycache-order", dest="easycache_order", type=int, choices=(0, 1),
                   help="0: reuse the last transformation, as the EasyCache paper (default); 1: reuse an "
                        "extrapolation of the last two (goes beyond the paper)")
    p.add_argument("--async-swap", dest="async_swap", action="store_true",
                   help="keep idle weights and cache tensors in pinned CPU memory, streamed in on a side CUDA stream "
                        "(a no-op on a CPU, and the summary says so)")
    p.add_argument("--chunk-ffn", dest="chunk_ffn", type=int, metavar="N",
                   help="feature chunking: run the transformer's token-wise layers over N slices of the sequence")
    p.add_argument("--sliced-decode", dest="sliced_decode", action="store_true",
                   help="decode the latents in bands so the VAE's full-resolution activations never exist whole")
    p.add_argument("--decode-slices", dest="decode_slices", type=int, metavar="N",
                   help="bands for --sliced-decode (default: up to 16); fewer decode faster and hold more memory")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer blocks; the first call at a size compiles (marked in "
                        "trace.json, counted apart in the summary), later calls run the compiled code")
    p.add_argument("--compare-baseline", action="store_true",
                   help="also run the plain pipeline (every acceleration off) with the same seed; report "
                        "speed-up, PSNR and SSIM")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    multi = p.add_argument_group("several GPUs", "launch with `torchrun --nproc-per-node N -m lightcache generate "
                                 "...`; every process runs the request, process 0 writes --out")
    multi.add_argument("--parallel", choices=("ulysses", "ring"),
                       help="split each transformer call over the N processes with diffusers' context parallelism: "
                            "ulysses (attention heads, a multiple of N) or ring (keys and values passed round)")
    p.add_argument("--out", required=True, help="output directory (created; must be empty if it exists)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _prog() -> str:
    """The name usage lines show: ``lightcache`` when run as the installed command, else ``python -m lightcache``
    (argparse's default would be ``__main__.py``)."""
    return "lightcache" if Path(sys.argv[0]).stem == "lightcache" else "python -m lightcache"


def main(argv: Sequence[str] | None = None) -> int:
    # Everything, imports included, runs inside the handlers: Ctrl-C in the first seconds (torch and diffusers
    # loading) and SIGTERM at any time end with one line and run every ``finally`` (no staging left behind).
    with _stop_signals_raise() as received:
        try:
            parser = build_parser()
            args = parser.parse_args(_negative_values_attached(sys.argv[1:] if argv is None else argv))
            _quiet_libraries()
            return int(args.handler(args) or 0)
        except LightcacheError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except (KeyboardInterrupt, RunCancelled, _Terminated):
            return _stopped(received)
        except Exception:
            if not received:
                raise
            # Ctrl-C inside a library's lazy import can come back as another error ("Failed to import ...").
            return _stopped(received)


def _negative_values_attached(argv: Sequence[str]) -> list[str]:
    """``--threshold -inf`` read as ``--threshold=-inf``: argparse takes a word starting with '-' for an option unless
    it is a plain negative number, and would answer "expected one argument" instead of the value's own check.

    >>> _negative_values_attached(["--threshold", "-inf", "--steps", "-1e3", "--prompt", "-x"])
    ['--threshold=-inf', '--steps=-1e3', '--prompt', '-x']
    """
    words: list[str] = []
    for word in argv:
        if words and words[-1].startswith("--") and "=" not in words[-1] and word.startswith("-") and _is_number(word):
            words[-1] = f"{words[-1]}={word}"
        else:
            words.append(word)
    return words


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def _stopped(received: list[int]) -> int:
    if signal.SIGTERM in received:
        print("error: terminated; nothing was written.", file=sys.stderr)
        return EXIT_TERMINATED
    print("error: stopped; nothing was written.", file=sys.stderr)
    return EXIT_INTERRUPTED


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
    from .extras import CLI_MODULES, require_extra
    from .parallel import launched_world_size
    from .presets import load_preset, resolve_device
    from .images import check_image_for_preset, open_image
    from .settings import RunSettings

    require_extra("cli", CLI_MODULES, "`generate`")
    preset = load_preset(args.preset)
    settings = RunSettings.from_preset(preset, **_settings_overrides(args))
    image = open_image(args.image, label="--image") if args.image else None
    check_image_for_preset(preset, image)
    args.device = resolve_device(args.device)
    if getattr(args, "parallel", None) is not None or launched_world_size() > 1:
        return _generate_parallel(args, preset, settings, image)
    out = Path(args.out)
    _check_out_dir(out)
    # Validate everything that can fail cheaply before loading a model, and write into a staging directory
    # that only becomes --out when the run succeeded: a failed or stopped run leaves nothing behind.
    with _staging_for(out) as staging:
        pipe = _load(preset, args)
        summary = generate_to_dir(pipe, preset.name, settings, staging, args.compare_baseline, not args.quiet,
                                  image=image)
        _publish(staging, out)
    if not args.quiet:
        _print_summary(summary, out)
    return 0


def generate_to_dir(pipe, preset_name: str, settings, out_dir: Path, compare_baseline: bool = False,
                    progress: bool = False, image: Any = None) -> dict[str, Any]:
    """Run one generation (and optionally the plain baseline) and write the output files into ``out_dir``.

    ``image``: the first frame of an image-to-video run (a PIL image), given to both runs of a comparison.
    """
    from .comparison import compare_runs, plain_settings, warm_up
    from .events import FramesDecoded, RunStarted, StepRecord
    from .metrics import json_psnr
    from .runner import run_generation, run_to_completion
    from .video import Mp4Writer

    out_dir = Path(out_dir)
    records: list[dict[str, Any]] = []
    accelerated_steps: list[StepRecord] = []
    timeline: list[dict[str, Any]] = []
    if compare_baseline:
        # One untimed short run first, so that one-time costs (kernel selection, allocator growth, lazy
        # imports; with --compile, compiling the blocks) land on neither of the two timed runs and the speed-up
        # compares like with like.
        warm_up(pipe, settings, preset_name, image=image)
    with _progress(settings, progress, "accelerated" if settings.easycache else "plain") as bar, \
            Mp4Writer(out_dir / "video.mp4", fps=settings.fps) as writer:

        def on_event(event):
            if not isinstance(event, FramesDecoded):
                timeline.append(event.to_dict())
            if isinstance(event, RunStarted):
                bar.started(event)
            if isinstance(event, StepRecord):
                records.append(event.to_dict())
                accelerated_steps.append(event)
                bar(event)
            elif isinstance(event, FramesDecoded):
                writer.write(event.frames)

        finished = run_to_completion(run_generation(pipe, settings, preset_name, image=image), on_event)
    summary = dict(finished.summary)
    if compare_baseline:
        # The same plain pipe(...) as the app's Compare: every acceleration off, not only EasyCache.
        baseline_settings = plain_settings(settings)
        plain_steps: list[StepRecord] = []

        def on_plain_event(event):
            if isinstance(event, RunStarted):
                bar.started(event)
            if isinstance(event, StepRecord):
                plain_steps.append(event)
                bar(event)

        with _progress(baseline_settings, progress, "plain baseline") as bar:
            baseline = run_to_completion(run_generation(pipe, baseline_settings, preset_name, image=image),
                                         on_plain_event)
        compared = compare_runs(finished, baseline, accelerated_steps, plain_steps)
        summary.update(
            baseline_seconds=compared["plain_seconds"],
            baseline_stages=baseline.summary["stages"],
            baseline_settings=compared["baseline_settings"],
            speedup=compared["speedup"],
            denoise_speedup=compared["denoise_speedup"],
            psnr_db=json_psnr(compared["psnr_db"]),
            ssim=compared["ssim"],
            call_time_ratio=compared["call_time_ratio"],
        )
    (out_dir / "trace.json").write_text(json.dumps(records, indent=1))
    (out_dir / "summary.json").write_text(json.dumps(json_safe(summary), indent=2))
    _write_timeline(timeline, out_dir)
    return summary


def _generate_parallel(args, preset, settings, image) -> int:
    """``generate --parallel``: one of the processes torchrun started. Each loads the model and runs the request
    with its transformer calls split over all of them; process 0 alone writes --out (and prints)."""
    from .parallel import ParallelConfig, apply_context_parallel, launched_world_size, process_group
    from .parallel_run import check_parallel_request, run_parallel
    from .video import Mp4Writer

    check_parallel_request(args.parallel, settings, launched_world_size(), args.compare_baseline)
    out = Path(args.out)
    with process_group(args.device) as group, contextlib.ExitStack() as stack:
        staging = pipe = failure = None
        try:
            if group.rank == 0:
                _check_out_dir(out)
                staging = stack.enter_context(_staging_for(out))
            args.device = group.device
            pipe = _load(preset, args)
            stack.enter_context(apply_context_parallel(pipe, ParallelConfig(args.parallel))).check_request(pipe,
                                                                                                          settings)
        except Exception as exc:  # noqa: BLE001 - raised again by all_ok, after every process has heard of it
            failure = exc
        group.all_ok(failure)  # a process that refused stops them all here, before any collective of the run
        with _progress(settings, staging is not None and not args.quiet, f"--parallel {args.parallel}") as bar:
            result = run_parallel(pipe, group, settings, preset.name, image=image, on_step=bar)
        if result is None:
            return 0
        with Mp4Writer(staging / "video.mp4", fps=settings.fps) as writer:
            writer.write(result.frames)
        (staging / "trace.json").write_text(json.dumps(result.trace, indent=1))
        (staging / "summary.json").write_text(json.dumps(json_safe(result.summary), indent=2))
        _write_timeline(result.timeline, staging)
        _publish(staging, out)
    if not args.quiet:
        _print_summary(result.summary, out)
    return 0


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
    # diffusers still passes this deprecated argument to huggingface_hub, whose warning would precede the one line
    # an offline Hub id gets.
    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")


def _family_fields() -> list[tuple[Any, list[str]]]:
    """Every family's declared request fields, each once, with the families that take it (the adapters' own
    declarations: a new family's fields become flags without an edit here)."""
    from .families import ADAPTERS

    found: dict[str, tuple[Any, list[str]]] = {}
    for family, adapter in ADAPTERS.items():
        for declared in adapter.request_fields:
            found.setdefault(declared.name, (declared, []))[1].append(family)
    return list(found.values())


def _settings_overrides(args) -> dict[str, Any]:
    names = ("prompt", "negative_prompt", "seed", "steps", "frames", "height", "width", "guidance_scale",
             "threshold", "warmup", "easycache_order")
    overrides = {name: getattr(args, name, None) for name in names}
    for declared, _ in _family_fields():
        if getattr(args, declared.name, None) is not None:
            overrides[declared.name] = getattr(args, declared.name)
    if getattr(args, "no_easycache", False):
        overrides["easycache"] = False
    overrides.update(_cache_overrides(args, overrides))
    overrides["chunk_ffn"] = getattr(args, "chunk_ffn", None)
    overrides["decode_slices"] = getattr(args, "decode_slices", None)
    for flag in ("async_swap", "sliced_decode", "compile"):
        if getattr(args, flag, False):
            overrides[flag] = True
    return overrides


def _cache_overrides(args, overrides: dict[str, Any]) -> dict[str, Any]:
    """``--cache`` and ``--cache-setting`` as settings: ``--cache none`` is ``--no-easycache``; the setting of
    EasyCache is its tau (``--threshold``)."""
    cache, value = getattr(args, "cache", None), getattr(args, "cache_setting", None)
    if cache is None and value is None:
        return {}
    if getattr(args, "no_easycache", False) and cache not in (None, "none"):
        raise LightcacheError(f"--no-easycache runs every step in full; it cannot go with --cache {cache}.")
    cache = cache or ("none" if getattr(args, "no_easycache", False) else "easycache")
    out: dict[str, Any] = {"cache": cache}
    if cache == "none":
        out["easycache"] = False
        if value is not None:
            raise LightcacheError("--cache-setting needs a cache; --cache none (or --no-easycache) has no setting.")
    elif cache == "easycache" and value is not None:
        if overrides.get("threshold") is not None and overrides["threshold"] != value:
            raise LightcacheError("--cache-setting is EasyCache's tau, and --threshold gives another; give one.")
        out["threshold"] = value
    elif value is not None:
        out["cache_setting"] = value
    return out


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


def _existing_parent(out: Path) -> Path:
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    return parent


@contextlib.contextmanager
def _staging_for(out: Path):
    """A fresh staging directory beside ``out`` for the length of the block, removed afterwards (unless published).

    Its name carries a digest of ``out``, and it is locked while the run lives: a second run to the same ``--out``
    is refused at once instead of failing after its whole run, and a staging directory that a killed run left (its
    lock gone with it) is removed. Made with ``mkdir``, so ``--out`` gets the umask's permissions, not mkdtemp's 0700.
    """
    parent = _existing_parent(out)
    if not parent.is_dir():
        raise LightcacheError(f"--out {out}: {parent.name} is a file, not a directory.")
    prefix = f".lightcache-{hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]}-"
    for sibling in _staging_dirs(parent, prefix, out):
        if _locked_by_another_run(sibling):
            raise LightcacheError(f"--out {out}: another run is writing there now; wait for it or choose another "
                                  "directory.")
        shutil.rmtree(sibling, ignore_errors=True)  # left by a run that was killed
    staging, lock = _make_locked_dir(parent, prefix, out)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        os.close(lock)


def _staging_dirs(parent: Path, prefix: str, out: Path) -> list[Path]:
    """The staging directories in ``parent`` of runs to the same ``out`` (live, or left by a killed run)."""
    try:
        return [p for p in parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    except OSError as exc:
        raise LightcacheError(f"--out {out}: cannot read {parent} ({exc.strerror or exc}).") from None


def _make_locked_dir(parent: Path, prefix: str, out: Path) -> tuple[Path, int]:
    """A new directory ``parent/prefix<random>`` and an open descriptor holding its lock.

    It is made and locked under another name first, so no run ever sees it under ``prefix`` unlocked.
    """
    for _ in range(100):
        token = secrets.token_hex(4)
        path = parent / f".lightcache-new-{token}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise LightcacheError(f"--out {out}: cannot write in {parent} ({exc.strerror or exc}).") from None
        fd = os.open(path, os.O_RDONLY)
        _lock(fd)
        final = parent / f"{prefix}{token}"
        os.rename(path, final)
        return final, fd
    raise LightcacheError(f"--out {out}: could not create a staging directory in {parent}.")


def _lock(fd: int) -> bool:
    """Take an exclusive lock on ``fd`` without waiting; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # no advisory locks here (Windows): concurrent runs are then caught when publishing
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _locked_by_another_run(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return not _lock(fd)
    finally:
        os.close(fd)


def _publish(staging: Path, out: Path) -> None:
    """Move the finished run into place; two runs that raced past the start both finish, one keeps ``out``."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.is_dir():
            with contextlib.suppress(FileNotFoundError):
                out.rmdir()  # empty, checked before the run; fails if another run filled it meanwhile
        os.replace(staging, out)
    except OSError as exc:
        if out.is_dir() and any(out.iterdir()):
            raise LightcacheError(f"--out {out} was filled by another run while this one ran; this run's results "
                                  "were not kept.") from None
        raise LightcacheError(f"--out {out}: could not move the results there ({exc.strerror or exc}).") from None


class _Terminated(Exception):
    """SIGTERM, raised in the main thread so that the run unwinds like Ctrl-C: every ``finally`` runs."""


@contextlib.contextmanager
def _stop_signals_raise():
    """While the block runs (in the main thread), SIGINT raises KeyboardInterrupt and SIGTERM :class:`_Terminated`;
    yields the list of the signals received. SIGTERM raises once; later ones are ignored so the clean-up it
    started can finish."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def on_signal(signum, frame):
        received.append(signum)
        if signum == signal.SIGTERM:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise _Terminated()
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _progress:
    """A tqdm bar over transformer calls that shows computed/reused counts; silent when disabled.

    Its length is the steps until the run starts, then the run's calls: steps x the calls per step its family
    adapter counts (``RunStarted.calls_per_step``).
    """

    def __init__(self, settings, enabled: bool, label: str):
        self.enabled = enabled
        self.steps = settings.steps
        self.total = settings.steps
        self.label = label
        self.reused = 0

    def started(self, event) -> None:
        """Size the bar from the run's :class:`RunStarted`."""
        if event.calls_per_step:
            self.total = self.steps * event.calls_per_step
            if self.enabled:
                self.bar.total = self.total
                self.bar.refresh()

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
    from .comparison import baseline_text

    stages = ", ".join(f"{k} {v['seconds']:.2f}s" for k, v in summary["stages"].items())
    line = (f"wrote {out}/video.mp4, trace.json, summary.json, timeline.json, timeline.html | {stages} | "
            f"calls computed {summary['calls_computed']}, reused {summary['calls_reused']}")
    cache = summary.get("cache") or {}
    if cache.get("method") not in (None, "easycache", "none"):
        line += (f" (of these, {cache['calls_partial']} ran part of their blocks) | {cache['label']} "
                 f"{cache['setting']}={cache['value']:g}")
        if cache.get("work_fraction") is not None:
            line += f", block work run {100 * cache['work_fraction']:.0f}% of plain"
    compiled = summary.get("compile") or {}
    if compiled.get("active"):
        after = compiled.get("call_ms_after_warmup")
        line += (f" | torch.compile warm-up {compiled['warmup_call_seconds']:.2f} s in "
                 f"{compiled['calls_compiling']} call(s), {compiled['compile_seconds']:.2f} s of it compiling"
                 + (f"; median computed call after it {after:.1f} ms" if after is not None else ""))
    if "speedup" in summary:
        psnr_db = summary["psnr_db"]
        psnr_text = f"{psnr_db:.2f}" if isinstance(psnr_db, float) else psnr_db
        line += (f" | speed-up {summary['speedup']:.2f}x (denoise {summary['denoise_speedup']:.2f}x), "
                 f"PSNR {psnr_text} dB, SSIM {summary['ssim']:.4f} | baseline: "
                 f"{baseline_text(summary['baseline_settings'])}")
        noise = summary.get("call_time_ratio")
        if isinstance(noise, float) and noise == noise:
            line += f" | noise: a call both runs computed took {noise:.2f}x as long in the accelerated run"
    print(line)
