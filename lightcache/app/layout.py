"""The Gradio page: controls, live step trace, video beside the memory timeline, comparison, "How it works".

:func:`build_demo` wires the components to the handlers in this module; the handlers only translate between the
form, a job's updates (:mod:`.jobs`) and the figures and tables (:mod:`lightcache.plots`, :mod:`.view`).

API: the Run button's event is ``/generate``. Its parameters are the form fields (:data:`.form.FIELDS`), each
defaulting to what the page shows at start; it streams one update per denoising step and ends with the video,
the timeline figure and the tables.

The Run handler validates the request here, in the server's own process, and hands only the generation to the GPU
call (:func:`.gpu.gpu_generation`): on a ZeroGPU Space a refused request never waits for a GPU, and the figures are
drawn without holding one.

Example:
    >>> from lightcache.app import build_demo
    >>> from lightcache.app.pipelines import PipelineCache
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> demo = build_demo(PipelineCache(loader=lambda preset, device: build_tiny_pipeline(0), device="cpu"))
    >>> type(demo).__name__
    'Blocks'
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import gradio as gr

from ..errors import LightcacheError, RunCancelled
from ..events import Note, RunFinished, RunStarted, StageFinished, StageStarted, StepRecord
from ..plots import timeline_figure, trace_figure
from ..presets import load_shipped_preset
from . import texts, view
from ..cache_methods import CACHE_METHODS
from .form import (
    DEFAULT_PRESET,
    EASYCACHE_ORDERS,
    FIELDS,
    cache_setting_control,
    initial_values,
    labelled,
    parse_request,
    preset_choices,
    slider_bounds,
    warmup_for_steps,
)
from .gpu import gpu_generation, on_zero_gpu, refuse_unsupported_on_zero_gpu
from .jobs import ACCELERATED, PLAIN, WARM_UP, Session
from .outputs import OutputDirs
from .pipelines import PipelineCache
from .waiting import enqueued_at, waiting_count

log = logging.getLogger(__name__)

#: Waiting requests beyond this are turned away with "queue full" instead of piling up on one machine.
QUEUE_MAX_SIZE = 16
#: Gradio's cache of served files is swept every hour of files older than an hour (frequency, age in seconds).
GRADIO_CACHE_SWEEP = (3600, 3600)
#: During a long stage the timeline is refreshed at most this often (seconds), with the trace update it rides on.
TIMELINE_REFRESH_S = 2.0
#: The live trace is redrawn at most this often (seconds; the last step always shows). A GPU step takes longer, so
#: there every step shows; on a CPU a tiny-model step takes ~15 ms, and redrawing the chart for each one cost more
#: than the steps themselves and slowed the run being timed.
TRACE_REFRESH_S = 0.25
#: Pixel height of the video players (the tiny model's 128 px clips would otherwise fill the screen).
VIDEO_HEIGHT = 300
#: The status of a run whose session pressed Stop while it waited in the queue: it never starts.
WARMING_UP = ("**Warming up…** a short untimed run first, so that one-time costs land on neither of the two "
              "runs being compared.")
#: Added to it when Compile is on: the warm-up run is where the blocks compile, so the timed run does not.
COMPILE_WARMING_UP = " With Compile on, this is where the transformer blocks compile (tens of seconds on a CPU)."
STOPPED_BEFORE_START = "**Stopped** before it started: Stop was pressed while this run waited in the queue."
#: The status of a run that ended because Stop was pressed.
STOPPED = "**Stopped.** The pipeline was released and the next run starts fresh."
#: What Stop says when it stops the running run: the stop lands at the next model call, the decode's included.
STOPPING = ("**Stopped.** The run ends at its next transformer call, or within the frame it is decoding; its hooks "
            "are removed and its memory released before the next run starts.")
#: What Stop says again, pressed once more after it stopped this session's run (the run may still be unwinding).
STOPPED_AGAIN = ("**Stopped.** Your run was stopped; its hooks are removed and its memory released before the next "
                 "run starts.")
NOTHING_RUNNING = "Nothing is running."


def build_demo(
    pipelines: PipelineCache | None = None,
    outputs: OutputDirs | None = None,
    defaults: Mapping[str, Any] | None = None,
    presets: Sequence[str] | None = None,
) -> gr.Blocks:
    """Build the page.

    Args:
        pipelines: where models come from; default a :class:`PipelineCache` over the presets' own models.
        outputs: where videos are written; default per-run directories under ``<tmp>/lightcache-app``.
        defaults: form values to start from instead of the first offered preset's (tests use small sizes).
        presets: the names of the shipped presets the page and its API offer; default all of them. A server that
            loaded its model at start offers that one (:mod:`.startup`).
    """
    pipelines = pipelines if pipelines is not None else PipelineCache()
    outputs = outputs if outputs is not None else OutputDirs()
    start = initial_values(presets[0] if presets else DEFAULT_PRESET, defaults)
    preset = load_shipped_preset(start["preset"])
    bounds = slider_bounds(preset, start["steps"])
    outputs.sweep()

    with gr.Blocks(title="LightCache + EasyCache", delete_cache=GRADIO_CACHE_SWEEP) as demo:
        session = gr.State(Session())
        gr.Markdown(texts.INTRO)
        with gr.Accordion("How it works: EasyCache, the three memory strategies and compile", open=False,
                          elem_id="how-it-works"):
            gr.Markdown(texts.HOW_IT_WORKS)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                preset_dd = gr.Dropdown(
                    preset_choices(presets), value=start["preset"], label=FIELDS["preset"], info=preset.description,
                )
                prompt = gr.Textbox(start["prompt"], label=FIELDS["prompt"], lines=2, max_lines=4,
                                    visible=preset.takes_prompt)
                # Shown for image-to-video presets only; its value reaches the handler as Gradio's reference to an
                # uploaded file, which form.parse_image reads only from Gradio's upload folder.
                image = gr.Image(None, label=FIELDS["image"], type="filepath", sources=["upload", "clipboard"],
                                 visible=preset.takes_image, height=160, elem_id="image")
                negative = gr.Textbox(start["negative_prompt"], label=FIELDS["negative_prompt"], lines=1,
                                      max_lines=4, placeholder="what the video should not show (optional)",
                                      visible=preset.takes_prompt)
                with gr.Row():
                    seed = gr.Number(start["seed"], label=FIELDS["seed"], precision=0, minimum=None)
                    steps = gr.Slider(value=start["steps"], label=FIELDS["steps"], **bounds["steps"])
                with gr.Row():
                    frames = gr.Slider(value=start["frames"], label=FIELDS["frames"], **bounds["frames"])
                    height = gr.Slider(value=start["height"], label=FIELDS["height"], **bounds["height"])
                    width = gr.Slider(value=start["width"], label=FIELDS["width"], **bounds["width"])
                with gr.Group():
                    gr.Markdown("**Accelerations**", padding=True)
                    with gr.Row():
                        easycache = gr.Checkbox(start["easycache"], label=FIELDS["easycache"],
                                                info="reuse steps while E < tau")
                        cache = gr.Dropdown(cache_choices(), value=start["cache"], label=FIELDS["cache"],
                                            elem_id="cache", info="EasyCache, or one of diffusers' caches")
                        async_swap = gr.Checkbox(start["async_swap"], label=FIELDS["async_swap"],
                                                 info="idle weights and caches to CPU (GPU only)")
                    with gr.Row():
                        chunking = gr.Checkbox(start["feature_chunking"], label=FIELDS["feature_chunking"],
                                               info="token-wise layers over token slices")
                        sliced = gr.Checkbox(start["sliced_decode"], label=FIELDS["sliced_decode"],
                                             info="decode the latent in slices")
                    compile_box = gr.Checkbox(start["compile"], label=FIELDS["compile"], elem_id="compile",
                                              info="compile the transformer blocks: faster calls after a slow "
                                                   "first one (compiling, ringed in the trace)")
                    with gr.Row():
                        tau = gr.Slider(value=start["tau"], label=FIELDS["tau"],
                                        info="larger: more reuse, faster, less exact", **bounds["tau"])
                        warmup = gr.Slider(value=start["warmup"], label=FIELDS["warmup"],
                                           info="first steps always computed", **bounds["warmup"])
                    cache_setting = gr.Slider(elem_id="cache-setting", **cache_setting_control(start["cache"]))
                    order = gr.Radio(list(EASYCACHE_ORDERS), value=start["easycache_order"],
                                     label=FIELDS["easycache_order"], elem_id="easycache-order",
                                     info="what a reused step returns: the last transformation, or its "
                                          "extrapolation from the last two")
                compare = gr.Checkbox(start["compare"], label=FIELDS["compare"],
                                      info="run again with every acceleration off; speed-up, PSNR, SSIM")
                with gr.Row():
                    run_btn = gr.Button("Run", variant="primary", elem_id="run")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                gr.Examples([list(e) for e in texts.EXAMPLES], inputs=[prompt, seed, tau], label="Prompts the tiny model draws well")
            with gr.Column(scale=3, min_width=420):
                status = gr.Markdown("Press **Run** to start.", label="Status", show_label=False, elem_id="status")
                trace = gr.Plot(_planned_trace(preset.name, start), label="Step trace: computed or reused, and E "
                                "against tau", elem_id="trace")
                with gr.Row(equal_height=False):
                    video = gr.Video(label="Video", elem_id="video", autoplay=True, loop=True,
                                     interactive=False, height=VIDEO_HEIGHT, scale=2, min_width=200)
                    timeline = gr.Plot(label="Memory timeline", elem_id="timeline", scale=3)
                stages = gr.Markdown(label="Stage times and peaks", show_label=False, elem_id="stages")
                with gr.Row(equal_height=False):
                    plain_video = gr.Video(label="Plain run (every acceleration off)", elem_id="plain-video",
                                           interactive=False, autoplay=True, loop=True, height=VIDEO_HEIGHT,
                                           scale=2, min_width=200)
                    with gr.Column(scale=3, min_width=240):
                        comparison = gr.Markdown(texts.COMPARE_HINT, label="Comparison", show_label=False,
                                                 elem_id="comparison")

        inputs = [preset_dd, prompt, negative, seed, steps, frames, height, width, easycache, tau, warmup,
                  async_swap, chunking, sliced, compare, image, compile_box, cache, cache_setting, order,
                  session]
        results = [status, trace, video, timeline, stages, plain_video, comparison]
        # Decorated here, while the page is built at import: ZeroGPU registers its GPU functions before launch.
        generation = gpu_generation(pipelines)
        zero_gpu = on_zero_gpu()

        # ``image`` defaults to None so that API clients may leave it out (text-to-video presets take none).
        def generate(preset, prompt, negative_prompt, seed, steps, frames, height, width, easycache, tau,
                     warmup, async_swap, feature_chunking, sliced_decode, compare, image=None, compile=False,
                     cache="easycache", cache_setting=None, easycache_order=0,
                     session: Session | None = None,
                     request: gr.Request = None):
            raw = dict(zip(FIELDS, (preset, prompt, negative_prompt, seed, steps, frames, height, width,
                                    easycache, tau, warmup, async_swap, feature_chunking, sliced_decode, compare,
                                    image, compile, cache, cache_setting, easycache_order)))
            yield from run_job(pipelines, outputs, raw, session, enqueued_at(demo, request.session_hash),
                               generation=generation, presets=presets, zero_gpu=zero_gpu)

        run_event = run_btn.click(
            generate,
            inputs=inputs,
            outputs=results,
            api_name="generate",
            api_description="Generate one video; streams the step trace, then the video and the memory timeline.",
            # Raw values in: every check (and its message naming the field) is ours, see form.parse_request.
            preprocess=False,
            concurrency_limit=1,
            concurrency_id="generate",
            # Queue position and timer show on the trace only: a status box with a progress tracker of its own would
            # show the cancelled run's error frame around the "Stopped." message when Stop lands mid-update.
            show_progress="minimal",
            show_progress_on=[trace],
        )
        # The stop message goes through a hidden box and is copied to the status afterwards: an update of the run
        # that was already on its way when Stop was pressed would otherwise overwrite it.
        stop_note = gr.Textbox(label="Stop", visible=False)
        def stop(session: Session, request: gr.Request) -> str:
            return stop_job(session, waiting=waiting_count(demo, request.session_hash))

        stop_btn.click(
            stop, inputs=[session], outputs=[stop_note], cancels=[run_event], api_name="stop",
            concurrency_limit=None, queue=False,
        ).then(lambda note: note, inputs=[stop_note], outputs=[status], api_visibility="private", queue=False)
        # The warm-up slider ends at steps - 1 and follows the Steps slider.
        steps.change(
            lambda n, w: gr.update(**warmup_for_steps(n, w)), inputs=[steps, warmup], outputs=[warmup],
            api_visibility="private", queue=False, show_progress="hidden",
        )
        # The setting control follows the cache: its name, range and default; tau and warm-up are EasyCache's.
        cache.change(
            cache_updates, inputs=[cache], outputs=[cache_setting, tau, warmup],
            api_visibility="private", queue=False, show_progress="hidden",
        )
        preset_dd.change(
            lambda name: preset_updates(name, pipelines.device),
            inputs=[preset_dd],
            outputs=[preset_dd, prompt, image, negative, steps, frames, height, width, tau, warmup],
            api_visibility="private",
            concurrency_limit=None,
        )
    demo.queue(max_size=QUEUE_MAX_SIZE)
    return demo


def run_job(pipelines: PipelineCache, outputs: OutputDirs, raw: Mapping[str, Any], session: Session,
            enqueued_at: float | None = None, *, generation: Callable[..., Iterator] | None = None,
            presets: Sequence[str] | None = None, zero_gpu: bool = False) -> Iterator[tuple]:
    """The generation handler's body: validate, run, and turn each update into new values for the outputs.

    ``enqueued_at``: when the request entered the queue; if this session pressed Stop since, it does not start.
    ``generation``: the GPU call (:func:`.gpu.gpu_generation` of ``pipelines``, the default). ``presets``: the
    preset names offered (default all). ``zero_gpu``: this is a ZeroGPU Space (what it cannot do is refused here,
    and the run's stop switch stays in this process).
    Output order: status, trace figure, video, timeline figure, stage table, plain video, comparison.
    """
    if session.stopped_since(enqueued_at):
        yield (STOPPED_BEFORE_START,) + (None,) * 6  # an API caller's result: nothing was made
        return
    try:
        job = parse_request(raw, pipelines.device, presets)
        refuse_unsupported_on_zero_gpu(job.settings, zero_gpu)
    except LightcacheError as exc:
        raise gr.Error(str(exc), print_exception=False) from None

    generation = generation if generation is not None else gpu_generation(pipelines)
    cancel = session.start()
    out_dir = outputs.new()
    kept = False
    latest: list[Any] = [None] * 7  # each output's last value, for the stopped run's final update
    try:
        # A threading.Event cannot cross into a ZeroGPU worker; there Stop ends the run by closing `updates`.
        with contextlib.closing(generation(job, out_dir, None if zero_gpu else cancel)) as updates:
            for values in _present(job, updates, loading=not pipelines.holds(job.preset), device=pipelines.device):
                latest = [old if _skipped(new) else new for old, new in zip(latest, values)]
                yield values
        kept = True
    except RunCancelled:
        # The last update is an API caller's result: real values, the trace and figures so far, and no videos
        # (their files are removed with the stopped run's directory).
        trace, _, timeline, stages, _, comparison = latest[1:]
        yield STOPPED, trace, None, timeline, stages, None, comparison
    except gr.Error:
        raise  # the generation's own message, fit for the page
    except LightcacheError as exc:
        raise gr.Error(labelled(str(exc)), print_exception=False) from None
    except Exception as exc:
        # The page may be public: the type of error only, never its text (paths, library internals).
        log.exception("generation failed")
        raise gr.Error(f"The run failed ({type(exc).__name__}); the server's log has the details.") from None
    finally:
        if not kept:
            outputs.discard(out_dir)


def _calls_per_step(events: list) -> int:
    """The denoiser calls per step of this run, as its family adapter counted them (``RunStarted``), else 1."""
    started = next((e for e in events if isinstance(e, RunStarted)), None)
    return getattr(started, "calls_per_step", None) or 1


def _present(job, updates, loading: bool, device: str, clock: Callable[[], float] = time.monotonic) -> Iterator[tuple]:
    """Turn a job's updates into output values: the trace as steps come in (at most every ``TRACE_REFRESH_S``),
    the timeline and stage table at stage boundaries, everything in full at the end. ``clock`` (seconds) paces the
    redraws; the tests pass their own.

    Both runs of a comparison are shown live the same way (the plain run's trace fills the chart while it runs),
    so the browser's redrawing costs the two timed runs alike and the speed-up compares like with like.
    """
    runs: dict[str, list] = {ACCELERATED: [], PLAIN: []}
    videos: dict[str, str | None] = {ACCELERATED: None, PLAIN: None}
    comparison = "" if job.compare else texts.COMPARE_HINT
    last_timeline = clock()
    last_trace = -math.inf  # the first step always shows
    skip = gr.skip
    # On a CPU the browser shares the cores with the runs: playing the first video and redrawing the memory timeline
    # take cycles from the very runs being timed against each other. With a comparison both come at the end there,
    # and the two runs stream the same thing (status and trace), so the speed-up compares like with like.
    quiet = job.compare and device == "cpu"

    # An empty trace with this run's axes, tau and warm-up band, so the page shows what is about to fill in.
    planned = RunStarted(preset=job.preset.name, settings=job.settings.to_dict(), device=device)
    yield ("**Loading the model…**" if loading else "**Starting…**", trace_figure([planned]), None, None, "",
           None, comparison)
    for update in updates:
        if update.run == WARM_UP:
            yield (WARMING_UP + (COMPILE_WARMING_UP if job.settings.compile else ""),) + (skip(),) * 6
            continue
        events = runs[update.run]
        accelerated = update.run == ACCELERATED
        if update.comparison is not None:
            comparison = view.comparison_markdown(update.comparison)
            continue
        if update.video is not None:
            videos[update.run] = update.video
            if accelerated and not quiet:
                yield (_status(runs), skip(), update.video, timeline_figure(events), view.stages_markdown(events),
                       skip(), skip())
            continue
        event = update.event  # without frames (jobs.portable): the worker wrote them to the video
        events.append(event)
        if isinstance(event, StepRecord):
            calls = sum(isinstance(e, StepRecord) for e in events)
            if calls % _calls_per_step(events):
                continue  # one update per step, once all its calls (guidance branches) are in
            last_step = event.step == job.settings.steps - 1
            now = clock()
            if not last_step and now - last_trace < TRACE_REFRESH_S:
                continue
            last_trace = now
            timeline = skip()
            if accelerated and not quiet and now - last_timeline > TIMELINE_REFRESH_S:
                timeline, last_timeline = timeline_figure(events), now
            yield (_status(runs), trace_figure(events), skip(), timeline, skip(), skip(), skip())
        elif isinstance(event, Note) and event.message.startswith(view.CALIBRATING):
            yield (_status(runs),) + (skip(),) * 6  # MagCache calibrates before the run: say so while it does
        elif isinstance(event, (StageStarted, StageFinished, RunFinished)):
            if accelerated and not quiet:
                last_timeline = clock()
                yield (_status(runs), skip(), skip(), timeline_figure(events), view.stages_markdown(events),
                       skip(), skip())
            else:
                yield (_status(runs),) + (skip(),) * 6
    # The last update carries every output in full, so an API caller's final result is complete.
    events = runs[ACCELERATED]
    yield (_status(runs, done=True), trace_figure(events), videos[ACCELERATED], timeline_figure(events),
           view.stages_markdown(events), videos[PLAIN], comparison)


def _planned_trace(preset_name: str, values: Mapping[str, Any]):
    """The empty trace of the form's starting request: its steps, tau and warm-up, before anything ran."""
    settings = {"steps": values["steps"], "warmup": values["warmup"], "threshold": values["tau"],
                "easycache": values["easycache"]}
    return trace_figure([RunStarted(preset=preset_name, settings=settings, device="")])


def _status(runs: dict[str, list], done: bool = False) -> str:
    line = view.status_markdown(runs[ACCELERATED], headline="Done." if done else None)
    if runs[PLAIN] and not done:
        line += "  \n" + view.status_markdown(runs[PLAIN], label="Plain run for comparison")
    return line


def stop_job(session: Session, waiting: int = 0) -> str:
    """The Stop button: ask this session's running job to stop at its next model call, and its ``waiting`` jobs in
    the queue not to start. Pressed again after it stopped a run, it still says the run was stopped (the page
    copies its answer into the status line)."""
    running = session.stop()
    if running or session.stopped_last_job:
        return (STOPPING if running else STOPPED_AGAIN) + (" Your waiting run will not start." if waiting else "")
    if waiting:
        return "**Stopped.** Your run waiting in the queue will not start."
    return NOTHING_RUNNING


def _skipped(value: Any) -> bool:
    """True for ``gr.skip()``: an update that leaves its output as it was."""
    return isinstance(value, dict) and value == {"__type__": "update"}


def cache_choices() -> list[tuple[str, str]]:
    """``(label, name)`` pairs for the cache dropdown: EasyCache, FirstBlockCache, MagCache, TaylorSeer, SeaCache,
    PAB, none."""
    return [(m.label, m.name) for m in CACHE_METHODS.values()]


def cache_updates(name: str) -> tuple:
    """The controls when the cache changes: its setting control, and tau and warm-up shown for EasyCache only."""
    if name not in CACHE_METHODS:
        raise gr.Error(f"{FIELDS['cache']}: choose one of {', '.join(m.label for m in CACHE_METHODS.values())}.",
                       print_exception=False)
    easy = name == "easycache"
    return gr.update(**cache_setting_control(name)), gr.update(visible=easy), gr.update(visible=easy)


def preset_updates(name: str, device: str) -> tuple:
    """New bounds and starting values for the controls when the preset changes (a GPU preset on CPU: warn)."""
    try:
        preset = load_shipped_preset(name)
    except LightcacheError as exc:
        raise gr.Error(f"Preset: {exc}", print_exception=False) from None
    values = initial_values(preset.name)
    bounds = slider_bounds(preset)
    info = preset.description
    if preset.requires_gpu and not str(device).startswith("cuda"):
        info = f"Needs a CUDA GPU; this machine has none, so Run will refuse it. {info}"
        gr.Warning(f"'{preset.name}' needs a CUDA GPU and this machine has none.")
    # Only the controls the preset's family takes: no prompt boxes for a model without a prompt (SVD), the image
    # box for image-to-video.
    return (
        gr.update(info=info),
        gr.update(value=values["prompt"], visible=preset.takes_prompt),
        gr.update(visible=preset.takes_image, value=None,
                  label=FIELDS["image"] + (" (optional)" if preset.image_input == "optional" else "")),
        gr.update(value=values["negative_prompt"], visible=preset.takes_prompt),
        *(gr.update(value=values[k], **bounds[k]) for k in ("steps", "frames", "height", "width", "tau", "warmup")),
    )
