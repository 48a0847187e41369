"""Plotly figures of one run, built only from its events (the dataclasses or their ``to_dict()`` form).

* :func:`trace_figure` - the step trace: per denoising step and CFG branch, whether the transformer ran or the
  cached transformation was reused, and below it the accumulated error ``E`` that EasyCache tested against
  ``tau``. It is cheap enough to rebuild after every step, which is how the app shows it live. Calls during which
  torch.compile compiled are ringed: their time is compile warm-up, not the speed of the compiled model.
* :func:`timeline_figure` - the memory timeline: every memory series the sampler reported, the encode / denoise /
  decode stages shaded behind them, and every transformer call marked on a strip below, computed or reused.

Both accept a partial event list (a run still going) and an empty one, and never need the model or a GPU.

Example:
    >>> from lightcache.events import RunStarted, StageStarted, StageFinished, StepRecord
    >>> from lightcache.plots import timeline_figure, trace_figure
    >>> events = [
    ...     RunStarted(preset="tiny", settings={"steps": 2, "warmup": 1, "threshold": 0.1, "easycache": True},
    ...                device="cpu"),
    ...     StageStarted("denoise", t=0.0),
    ...     StepRecord(step=0, timestep=999.0, branch="cond", computed=True, reason="warm-up", t=0.1),
    ...     StepRecord(step=1, timestep=500.0, branch="cond", computed=False, reason="E < tau",
    ...                eps=0.02, error=0.02, tau=0.1, t=0.2),
    ...     StageFinished("denoise", t=0.2, seconds=0.2),
    ... ]
    >>> [trace.name for trace in trace_figure(events).data][:2]
    ['computed', 'reused']
    >>> "no memory samples" in timeline_figure(events).layout.annotations[0].text
    True
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .cache_methods import CACHE_METHODS
from .events import STAGES, Event, call_kind

#: One colour per meaning, shared by both figures so a reader learns them once.
COLOURS = {
    "computed": "#3b5bdb",  # the transformer ran: this call cost time
    "reused": "#2f9e44",  # EasyCache returned x_t + delta: this call was (almost) free
    "error": "#862e9c",
    "tau": "#e03131",
    "partial": "#0c8599",  # a diffusers cache skipped part of this call (blocks after the first, attention...)
    "compiling": "#f08c00",  # torch.compile compiled during this call: warm-up time, not the model's speed
    "warm-up": "rgba(134, 142, 150, 0.15)",
}
STAGE_COLOURS = {
    "encode": "rgba(250, 176, 5, 0.18)",
    "encode_image": "rgba(247, 103, 7, 0.16)",
    "denoise": "rgba(51, 154, 240, 0.14)",
    "decode": "rgba(64, 192, 87, 0.18)",
}
SERIES_COLOURS = ("#495057", "#f76707", "#1098ad", "#ae3ec9", "#74b816")
SERIES_LABELS = {
    "rss": "process RSS",
    "cuda_allocated": "CUDA allocated",
    "cuda_reserved": "CUDA reserved",
}
_BRANCH_ORDER = ("uncond", "cond")  # bottom to top
#: The kinds of call the figures draw apart (see :func:`lightcache.events.call_kind`), and their markers.
CALL_KINDS = ("computed", "reused", "partial")
_CALL_SYMBOLS = {"computed": "square", "reused": "circle-open", "partial": "square-open-dot"}
_FONT = dict(family="system-ui, -apple-system, Segoe UI, sans-serif", size=12)


def trace_figure(events: Iterable[Event | Mapping[str, Any]], height: int = 360) -> go.Figure:
    """The step trace of a (possibly still running) generation.

    Top: one marker per transformer call at (step, branch), filled blue when computed, open green when reused (no
    block ran), open teal with a dot when a diffusers cache skipped part of it (blocks after the first, attention
    layers...); hovering shows the reason ("warm-up", "E < tau", ...) and what ran, measured from the modules that
    ran. Bottom, for EasyCache: the accumulated error ``E`` as it was tested at each step (it climbs while steps are
    reused and drops to 0 when one is computed) and ``tau`` as a dashed line; for a diffusers cache: the share of
    each call's block work that ran. The x axis spans all steps from the start, so the chart fills in from left to
    right as the run goes.
    """
    # Only these kinds matter here; skipping the rest before converting keeps a per-step redraw cheap when the
    # memory sampler has added thousands of samples.
    evs = _select(events, ("RunStarted", "StepRecord"))
    settings = _settings(evs)
    records = [e for e in evs if e["event"] == "StepRecord"]
    steps = int(settings.get("steps") or (max((r["step"] for r in records), default=0) + 1))
    easycache = bool(settings.get("easycache", any(r.get("tau") is not None for r in records)))
    tau = _tau(settings, records) if easycache else None

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.38, 0.62], vertical_spacing=0.08)
    for name in CALL_KINDS:
        rows = [r for r in records if call_kind(r) == name]
        if name == "partial" and not rows:
            continue  # only caches that skip part of a call (diffusers' FirstBlockCache, PAB...) draw these
        fig.add_trace(
            go.Scatter(
                x=[r["step"] for r in rows],
                y=[r["branch"] for r in rows],
                mode="markers",
                name=name,
                marker=dict(
                    symbol=_CALL_SYMBOLS[name],
                    size=11,
                    color=COLOURS[name],
                    line=dict(width=2, color=COLOURS[name]),
                ),
                customdata=[[r.get("reason", ""), _fmt_ms(r.get("ms")), r.get("denoiser") or "transformer",
                             _ran_text(r)] for r in rows],
                hovertemplate="step %{x} · %{y} · %{customdata[2]}<br>" + name
                + ": %{customdata[0]}%{customdata[3]}<br>%{customdata[1]}<extra></extra>",
            ),
            row=1,
            col=1,
        )

    _add_compiling(fig, records, x="step")
    method = _step_cache(settings)
    if method not in ("easycache", "none"):
        return _work_panel(fig, records, steps, method, height)
    tested = _tested_error(records)
    fig.add_trace(
        go.Scatter(
            x=[s for s, _ in tested],
            y=[e for _, e in tested],
            mode="lines+markers",
            name="E (accumulated error)",
            line=dict(color=COLOURS["error"], width=2, shape="linear"),
            marker=dict(size=6),
            hovertemplate="step %{x}<br>E = %{y:.4f}<extra></extra>",
        ),
        row=2,
        col=1,
    )
    if tau is not None:
        fig.add_trace(
            go.Scatter(
                x=[-0.5, steps - 0.5],
                y=[tau, tau],
                mode="lines",
                name=f"tau = {tau:g}",
                line=dict(color=COLOURS["tau"], dash="dash", width=2),
                hoverinfo="skip",
            ),
            row=2,
            col=1,
        )

    _mark_expert_switches(fig, records)
    warmup = int(settings.get("warmup") or 0) if easycache else 0
    if warmup > 0:
        for row in (1, 2):
            fig.add_vrect(
                x0=-0.5, x1=min(warmup, steps) - 0.5, fillcolor=COLOURS["warm-up"], line_width=0, layer="below",
                row=row, col=1, exclude_empty_subplots=False,
            )
        fig.add_annotation(
            x=(min(warmup, steps) - 1) / 2, y=1.0, xref="x", yref="paper", yanchor="bottom",
            text="warm-up", showarrow=False, font=dict(size=11, color="#868e96"),
        )
    if not easycache:
        fig.add_annotation(
            x=0.5, y=0.25, xref="paper", yref="paper", showarrow=False,
            text="EasyCache is off: every call runs the transformer", font=dict(color="#868e96"),
        )

    branches = [b for b in _BRANCH_ORDER if any(r["branch"] == b for r in records)] or ["cond"]
    branches += sorted({r["branch"] for r in records} - set(branches))
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=branches, row=1, col=1)
    top = max([tau or 0.0] + [e for _, e in tested]) or 0.1
    fig.update_yaxes(title_text="E", range=[0, top * 1.15], rangemode="tozero", row=2, col=1)
    fig.update_xaxes(range=[-0.5, steps - 0.5], row=1, col=1)
    fig.update_xaxes(range=[-0.5, steps - 0.5], title_text="denoising step", row=2, col=1)
    fig.update_layout(
        height=height,
        margin=dict(l=60, r=20, t=30, b=40),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1),
        font=_FONT,
        plot_bgcolor="white",
        uirevision="trace",  # keep the user's zoom while the figure is replaced step by step
    )
    _grid(fig)
    return fig


def timeline_figure(events: Iterable[Event | Mapping[str, Any]], height: int = 380) -> go.Figure:
    """The memory timeline of a (possibly still running) generation.

    Top: each memory series the sampler reported (``rss``, ``cuda_allocated``, ...) in MiB or GiB over seconds since
    the run started, with the stages shaded behind and each stage's peak labelled. Bottom strip: one tick per
    transformer call when it returned, computed or reused, so the reader can see where the denoise time went.
    With no memory samples in the list it still draws the stages and calls and says so.
    """
    evs = [_as_dict(e) for e in events]
    samples = [e for e in evs if e["event"] == "MemorySample"]
    records = [e for e in evs if e["event"] == "StepRecord" and e.get("t") is not None]
    stages = stage_spans(evs)
    end = max([0.0] + [float(e["t"]) for e in evs if isinstance(e.get("t"), (int, float))])

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.8, 0.2], vertical_spacing=0.05)
    series = _series(samples)
    peak = max((max(ys) for _, ys in series.values() if ys), default=0)
    unit, scale = ("GiB", 2**30) if peak >= 2 * 2**30 else ("MiB", 2**20)
    for i, (name, (xs, ys)) in enumerate(series.items()):
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[y / scale for y in ys],
                mode="lines",
                name=SERIES_LABELS.get(name, name),
                line=dict(color=SERIES_COLOURS[i % len(SERIES_COLOURS)], width=2),
                hovertemplate="%{x:.2f} s<br>%{y:.1f} " + unit + "<extra>" + SERIES_LABELS.get(name, name) + "</extra>",
            ),
            row=1,
            col=1,
        )
    for name in CALL_KINDS:
        rows = [r for r in records if call_kind(r) == name]
        fig.add_trace(
            go.Scatter(
                x=[r["t"] for r in rows],
                y=[r["branch"] for r in rows],
                mode="markers",
                name=f"call {name}",
                showlegend=bool(rows),
                marker=dict(symbol="line-ns-open", size=12, color=COLOURS[name],
                            line=dict(width=2, color=COLOURS[name])),
                customdata=[r["step"] for r in rows],
                hovertemplate="%{x:.2f} s · step %{customdata} · %{y}<br>" + name + "<extra></extra>",
            ),
            row=2,
            col=1,
        )
    _add_compiling(fig, records, x="t", row=2)

    for stage, (t0, t1, finished) in stages.items():
        t1 = t1 if finished else max(end, t0)
        for row in (1, 2):
            fig.add_vrect(
                x0=t0, x1=max(t1, t0 + 1e-3), fillcolor=STAGE_COLOURS.get(stage, "rgba(0,0,0,0.08)"),
                line_width=0, layer="below", row=row, col=1, exclude_empty_subplots=False,
            )
        label = stage if finished else f"{stage}…"
        stage_peak = _peak_between(series, t0, t1)
        # A stage too narrow to hold its peak's label (encode, usually) keeps just its name; the table has it.
        if stage_peak is not None and (t1 - t0) >= 0.12 * max(end, 1e-9):
            label += f"<br>peak {stage_peak / scale:.1f} {unit}"
        fig.add_annotation(
            x=(t0 + t1) / 2, y=1.0, xref="x", yref="paper", yanchor="bottom", showarrow=False, text=label,
            font=dict(size=11, color="#495057"),
        )
    if not series:
        fig.add_annotation(
            x=0.5, y=0.6, xref="paper", yref="paper", showarrow=False,
            text="no memory samples in this run<br>(stages and transformer calls are still shown)",
            font=dict(color="#868e96"),
        )
        fig.update_yaxes(showticklabels=False, row=1, col=1)
    # Put the "no memory samples" note first so a reader (or a test) finds it without knowing the stage count.
    fig.layout.annotations = sorted(fig.layout.annotations, key=lambda a: "no memory samples" not in (a.text or ""))

    # Not from zero: on a CPU the process's resident base dwarfs the stage surges the reader is looking for; the
    # stage labels carry the absolute peaks.
    fig.update_yaxes(title_text=f"memory ({unit})", row=1, col=1)
    fig.update_yaxes(type="category", categoryorder="array",
                     categoryarray=[b for b in _BRANCH_ORDER], showgrid=False, row=2, col=1)
    fig.update_xaxes(title_text="seconds since the run started", range=[0, max(end, 1e-3) * 1.02], row=2, col=1)
    fig.update_layout(
        height=height,
        margin=dict(l=60, r=20, t=40, b=40),
        legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0),
        font=_FONT,
        plot_bgcolor="white",
        uirevision="timeline",
    )
    _grid(fig)
    return fig


def _add_compiling(fig: go.Figure, records: list[Mapping[str, Any]], x: str, row: int = 1) -> None:
    """A ring around each call during which torch.compile compiled (only when there is one, so runs without
    compile draw exactly what they drew before)."""
    rows = [r for r in records if r.get("compiling")]
    if not rows:
        return
    where = "step %{x} · %{y}" if x == "step" else "%{x:.2f} s · %{y}"
    fig.add_trace(
        go.Scatter(
            x=[r[x] for r in rows],
            y=[r["branch"] for r in rows],
            mode="markers",
            name="compiling (torch.compile warm-up)",
            marker=dict(symbol="diamond-open", size=20, color=COLOURS["compiling"],
                        line=dict(width=2, color=COLOURS["compiling"])),
            customdata=[[_fmt_ms(r.get("compile_ms")) or "-", _fmt_ms(r.get("ms")) or "-"] for r in rows],
            hovertemplate=where + "<br>torch.compile compiled during this call: %{customdata[0]} of "
            "%{customdata[1]}<extra></extra>",
        ),
        row=row,
        col=1,
    )


def _step_cache(settings: Mapping[str, Any]) -> str:
    """The cache the run used, from its settings: ``none`` when caching was off (older records: EasyCache's switch)."""
    if settings.get("easycache") is False:
        return "none"
    return str(settings.get("cache") or "easycache")


def _ran_text(r: Mapping[str, Any]) -> str:
    """What of the call ran, for the hover: the measured modules and the share of the block work."""
    if not r.get("ran"):
        return ""
    fraction = r.get("work_fraction")
    share = f" ({100 * fraction:.0f}% of the block work)" if isinstance(fraction, (int, float)) else ""
    return f"<br>ran: {r['ran']}{share}"


def _work_panel(fig: go.Figure, records: list[Mapping[str, Any]], steps: int, method: str, height: int) -> go.Figure:
    """The lower half for a diffusers cache: per call, the share of its block work that ran, measured."""
    for branch in [b for b in _BRANCH_ORDER[::-1] if any(r["branch"] == b for r in records)] + sorted(
            {r["branch"] for r in records} - set(_BRANCH_ORDER)):
        rows = [r for r in records if r["branch"] == branch and r.get("work_fraction") is not None]
        fig.add_trace(
            go.Scatter(
                x=[r["step"] for r in rows],
                y=[100 * r["work_fraction"] for r in rows],
                mode="lines+markers",
                name=f"block work run, {branch}",
                line=dict(width=2, dash="solid" if branch == "cond" else "dot"),
                marker=dict(size=6),
                customdata=[r.get("ran", "") for r in rows],
                hovertemplate="step %{x} · " + branch + "<br>%{y:.0f}% of the block work ran<br>%{customdata}"
                "<extra></extra>",
            ),
            row=2,
            col=1,
        )
    _mark_expert_switches(fig, records)
    label = CACHE_METHODS[method].label if method in CACHE_METHODS else method
    fig.add_annotation(
        x=0.5, y=0.02, xref="paper", yref="paper", showarrow=False, yanchor="bottom",
        text=f"{label}: below, the share of each call's block work that ran (counted from the layers that ran)",
        font=dict(size=11, color="#868e96"),
    )
    branches = [b for b in _BRANCH_ORDER if any(r["branch"] == b for r in records)] or ["cond"]
    branches += sorted({r["branch"] for r in records} - set(branches))
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=branches, row=1, col=1)
    fig.update_yaxes(title_text="block work run (%)", range=[-5, 105], row=2, col=1)
    fig.update_xaxes(range=[-0.5, steps - 0.5], row=1, col=1)
    fig.update_xaxes(range=[-0.5, steps - 0.5], title_text="denoising step", row=2, col=1)
    fig.update_layout(height=height, margin=dict(l=60, r=20, t=30, b=40),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1),
                      font=_FONT, plot_bgcolor="white", uirevision="trace")
    _grid(fig)
    return fig


def _mark_expert_switches(fig: go.Figure, records: list[Mapping[str, Any]]) -> None:
    """A dotted line where the run hands over to another denoiser (Wan2.2 A14B's low-noise expert), labelled."""
    previous = None
    for r in records:
        denoiser = r.get("denoiser") or "transformer"
        if previous is not None and denoiser != previous:
            for row in (1, 2):
                fig.add_vline(x=r["step"] - 0.5, line=dict(color="#495057", dash="dot", width=1), row=row, col=1)
            fig.add_annotation(x=r["step"] - 0.5, y=1.0, xref="x", yref="paper", yanchor="bottom", xanchor="left",
                               text=f"{denoiser} from here", showarrow=False, font=dict(size=11, color="#495057"))
        previous = denoiser


def stage_spans(events: Iterable[Event | Mapping[str, Any]]) -> dict[str, tuple[float, float, bool]]:
    """``stage -> (start, end, finished)`` in seconds, in run order; an unfinished stage ends at its start."""
    spans: dict[str, tuple[float, float, bool]] = {}
    for e in _select(events, ("StageStarted", "StageFinished")):
        if e["event"] == "StageStarted":
            spans[e["stage"]] = (float(e["t"]), float(e["t"]), False)
        elif e["event"] == "StageFinished" and e["stage"] in spans:
            spans[e["stage"]] = (spans[e["stage"]][0], float(e["t"]), True)
    order = {s: i for i, s in enumerate(STAGES)}
    return dict(sorted(spans.items(), key=lambda kv: (kv[1][0], order.get(kv[0], 99))))


def peak_by_stage(events: Iterable[Event | Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """``stage -> {series: peak bytes}`` from the memory samples taken while each stage ran."""
    evs = [_as_dict(e) for e in events]
    series = _series([e for e in evs if e["event"] == "MemorySample"])
    out: dict[str, dict[str, int]] = {}
    for stage, (t0, t1, _) in stage_spans(evs).items():
        peaks = {
            name: max(y for x, y in zip(xs, ys) if t0 <= x <= t1)
            for name, (xs, ys) in series.items()
            if any(t0 <= x <= t1 for x in xs)
        }
        if peaks:
            out[stage] = peaks
    return out


# --- helpers ----------------------------------------------------------------------------------------------
def _select(events: Iterable[Event | Mapping[str, Any]], kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    """The events of the given kinds, as dicts, without converting the others."""
    out = []
    for event in events:
        kind = type(event).__name__ if isinstance(event, Event) else None
        if kind is None:
            kind = _as_dict(event)["event"]
        if kind in kinds:
            out.append(_as_dict(event))
    return out


def _as_dict(event: Event | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(event, Event):
        return event.to_dict()
    if isinstance(event, Mapping) and "event" in event:
        return dict(event)
    raise TypeError(f"expected a lightcache event or its dict, got {type(event).__name__}")


def _settings(evs: list[dict[str, Any]]) -> dict[str, Any]:
    for e in evs:
        if e["event"] == "RunStarted":
            return dict(e.get("settings") or {})
    return {}


def _tau(settings: dict[str, Any], records: list[dict[str, Any]]) -> float | None:
    for r in records:
        if isinstance(r.get("tau"), (int, float)):
            return float(r["tau"])
    value = settings.get("threshold")
    return float(value) if isinstance(value, (int, float)) else None


def _tested_error(records: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """Per step, the E that was compared with tau: the running sum *before* a compute resets it to 0.

    The records carry E after the decision, which is 0 on every computed step; plotting that would hide the very
    moment E crossed tau. Forced steps (warm-up, last step, no k yet) plot as 0, which is what E is reset to.
    """
    out: list[tuple[int, float]] = []
    previous = 0.0
    for r in records:
        # The deciding call of each step carries E (Wan's "cond", a UNet's one batched call, a guider's
        # "pred_cond"); records written before StepRecord had ``decides`` were Wan's, decided by "cond".
        if not r.get("decides", r.get("branch") == "cond"):
            continue
        eps = r.get("eps")
        error = r.get("error")
        if isinstance(eps, (int, float)):
            value = previous + float(eps)
        elif isinstance(error, (int, float)):
            value = float(error)
        else:
            continue
        out.append((int(r["step"]), value))
        previous = float(error) if isinstance(error, (int, float)) else 0.0
    return out


def _series(samples: list[dict[str, Any]]) -> dict[str, tuple[list[float], list[int]]]:
    series: dict[str, tuple[list[float], list[int]]] = {}
    for s in samples:
        for name, value in (s.get("values") or {}).items():
            if isinstance(value, (int, float)):
                xs, ys = series.setdefault(name, ([], []))
                xs.append(float(s["t"]))
                ys.append(int(value))
    return series


def _peak_between(series: dict[str, tuple[list[float], list[int]]], t0: float, t1: float) -> int | None:
    values = [y for xs, ys in series.values() for x, y in zip(xs, ys) if t0 <= x <= t1]
    return max(values) if values else None


def _fmt_ms(ms: Any) -> str:
    return f"{ms:.1f} ms" if isinstance(ms, (int, float)) and ms else ""


def _grid(fig: go.Figure) -> None:
    fig.update_xaxes(showgrid=True, gridcolor="#f1f3f5", zeroline=False, linecolor="#ced4da", showline=True)
    fig.update_yaxes(showgrid=True, gridcolor="#f1f3f5", zeroline=False, linecolor="#ced4da", showline=True)
