"""Speed against PSNR, one colour per method, each method's Pareto front drawn as a line.

Three panels share the PSNR axis: the measured denoise speed-up, the measured end-to-end speed-up, and the speed-up
the work counts allow (``1 / fraction of work computed``, which no noisy machine can blur). The plain pipeline is
the reference (1x, identical video) and is not drawn. Built from ``results.json`` data only.

Example:
    >>> from lightcache.bench.chart import speed_psnr_figure
    >>> aggregates = [
    ...     {"method": "easycache", "label": "EasyCache", "kind": "ours", "setting": "tau=0.1",
    ...      "speedup_denoise": 1.8, "speedup_end_to_end": 1.2, "work_fraction": 0.5, "psnr_db": 30.0,
    ...      "ssim": 0.95, "pareto": {"denoise": True, "end_to_end": True, "work": True}},
    ... ]
    >>> len(speed_psnr_figure(aggregates).data) > 0
    True
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .results import AXES, as_float, speed

AXIS_TITLES = {
    "denoise": "denoise speed-up (measured)",
    "end_to_end": "end-to-end speed-up (measured)",
    "work": "1 / work computed (counted)",
}
# One fixed colour per method so that the charts of different runs read alike.
COLOURS = {
    "easycache": "#d62728",
    "easycache-order1": "#e377c2",
    "easycache+memory": "#ff7f0e",
    "fbc": "#1f77b4",
    "magcache": "#2ca02c",
    "taylorseer": "#9467bd",
    "seacache": "#8c564b",
    "pab": "#17becf",
}


def speed_psnr_figure(aggregates: list[dict[str, Any]], title: str = "Speed vs quality"):
    """A Plotly figure: one panel per speed axis, points per method x setting, Pareto fronts as lines."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(AXES), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[AXIS_TITLES[a] for a in AXES])
    methods = []
    for a in aggregates:
        if a["method"] != "plain" and a["method"] not in methods:
            methods.append(a["method"])
    finite = [as_float(a["psnr_db"]) for a in aggregates if math.isfinite(as_float(a["psnr_db"]))]
    for col, axis in enumerate(AXES, start=1):
        for method in methods:
            points = [a for a in aggregates if a["method"] == method and math.isfinite(speed(a, axis))]
            points = [a for a in points if math.isfinite(as_float(a["psnr_db"]))]
            if not points:
                continue
            colour = COLOURS.get(method, "#7f7f7f")
            label = points[0]["label"]
            fig.add_trace(go.Scatter(
                x=[speed(a, axis) for a in points],
                y=[as_float(a["psnr_db"]) for a in points],
                mode="markers",
                marker={"color": colour, "size": 10 if points[0]["kind"] == "ours" else 8,
                        "symbol": "star" if points[0]["kind"] == "ours" else "circle"},
                name=label, legendgroup=method, showlegend=col == 1,
                text=[a["setting"] for a in points],
                customdata=[[a.get("ssim"), a.get("work_fraction")] for a in points],
                hovertemplate=(f"<b>{label}</b> %{{text}}<br>speed-up %{{x:.2f}}x<br>PSNR %{{y:.2f}} dB"
                               "<br>SSIM %{customdata[0]:.4f}<br>work computed %{customdata[1]:.0%}<extra></extra>"),
            ), row=1, col=col)
            front = sorted((a for a in points if a["pareto"].get(axis)), key=lambda a: speed(a, axis))
            if len(front) > 1:
                fig.add_trace(go.Scatter(
                    x=[speed(a, axis) for a in front], y=[as_float(a["psnr_db"]) for a in front],
                    mode="lines", line={"color": colour, "width": 1.5, "dash": "solid"},
                    legendgroup=method, showlegend=False, hoverinfo="skip",
                ), row=1, col=col)
        fig.add_vline(x=1.0, line={"color": "#999", "dash": "dot", "width": 1}, row=1, col=col)
        fig.update_xaxes(title_text="x faster than plain", type="log", row=1, col=col)
    fig.update_yaxes(title_text="PSNR vs plain (dB, higher is closer)", row=1, col=1)
    if finite:
        fig.update_yaxes(range=[min(finite) - 2, max(finite) + 2])
    fig.update_layout(title=title, template="plotly_white", height=480, width=1350,
                      legend={"orientation": "h", "y": -0.2})
    return fig


def write_chart(aggregates: list[dict[str, Any]], out_dir: Path, title: str) -> dict[str, str | None]:
    """Write ``speed_vs_psnr.html`` (always) and ``speed_vs_psnr.png`` when an image exporter is at hand.

    The PNG comes from Plotly's own exporter (kaleido) when it is installed, else from a headless Chromium
    screenshot of the chart when a ``chromium`` binary is on the PATH. Returns the file names written; ``png`` is
    None with the reason in ``png_note`` when neither works.
    """
    fig = speed_psnr_figure(aggregates, title)
    out_dir = Path(out_dir)
    html = out_dir / "speed_vs_psnr.html"
    # plotly.js from its CDN keeps the committed page small; the PNG below is the offline view.
    fig.write_html(html, include_plotlyjs="cdn", full_html=True)
    written: dict[str, str | None] = {"html": html.name, "png": None, "png_note": None}
    png = out_dir / "speed_vs_psnr.png"
    try:
        fig.write_image(png, scale=1)
        written["png"] = png.name
        return written
    except Exception as exc:  # noqa: BLE001 - no exporter installed is the normal case; try the next one
        reason = f"{type(exc).__name__}"
    if _png_with_chromium(fig, png):
        written["png"] = png.name
    else:
        written["png_note"] = (f"no PNG: Plotly could not export an image ({reason}) and no chromium binary was "
                               "found; install kaleido or Chromium for one")
    return written


def _png_with_chromium(fig, png: Path) -> bool:
    """Screenshot the figure with headless Chromium (plotly.js inlined, so no network is needed)."""
    import shutil
    import subprocess
    import tempfile

    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                  None)
    if binary is None:
        return False
    width, height = int(fig.layout.width or 1350), int(fig.layout.height or 480)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "chart.html"
        fig.write_html(page, include_plotlyjs=True, full_html=True, config={"displayModeBar": False})
        shot = Path(tmp) / "chart.png"
        try:
            subprocess.run(
                [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 f"--window-size={width + 20},{height + 20}", f"--screenshot={shot}", page.as_uri()],
                check=True, capture_output=True, timeout=60,
            )
        except (OSError, subprocess.SubprocessError):
            return False
        if not shot.is_file() or shot.stat().st_size == 0:
            return False
        shutil.copyfile(shot, png)
    return True
