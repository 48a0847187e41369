"""Every measured figure of README.md and docs/memory.md, generated from the committed raw records.

The documents are hand-written except for marked blocks, which this module writes::

    <!-- generated: memory-14b (python -m benchmarks.figures) -->
    ...
    <!-- end generated: memory-14b -->

A block holds the tables and also every prose sentence that quotes a measurement, so no figure is typed by hand.
Each block is made from the JSON records of one run directory (``docs/gpu-runs/<date>-<gpu>/``; a run that left
only a log has a JSON made from that log by :mod:`benchmarks.records`), from ``docs/hook-overhead-gpu.json``,
``docs/memory-smoke.json`` and the peer benchmark's ``docs/benchmarks/results.json``. Every table names the record
each row comes from, and a ratio or percentage always compares figures of one record (one process).

Usage::

    python -m benchmarks.figures           # rewrite the generated blocks of README.md and docs/memory.md
    python -m benchmarks.figures --check   # exit 1 and name the blocks that differ from their records

``tests/test_published_figures.py`` regenerates every block and compares it with the committed documents, so a
hand edit of a figure or a changed record fails the tests until this command is run again.

Example:
    >>> row = {"config": "chunking", "stages": {"denoise": {"seconds": 1.3913}}}
    >>> plain = {"config": "plain", "stages": {"denoise": {"seconds": 1.2694}}}
    >>> time_cell(row, plain, "denoise")
    '1.39 (+9.6 %)'
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import statistics
import sys
import textwrap
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lightcache.bench.report import format_percent, percent_change

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUN_DIR = DOCS / "gpu-runs" / "2026-11-22-h100"
DOCUMENTS = ("README.md", "docs/memory.md", "docs/testing.md", "lightcache/data/tiny-wan/MODEL_CARD.md")
TINY = ROOT / "lightcache" / "data" / "tiny-wan"
COMMAND = "python -m benchmarks.figures"
GIB = 2**30
WIDTH = 118  # the documents' line length

#: What is known about a record or one of its rows beyond the figures it holds: how the run went, not a number.
RECORD_NOTES = {
    "run2-14b-all": "killed by the host running out of memory during its last configuration (diffusers' group "
                    "offload), so only the lines it printed survive: no setup times, weights on the GPU or output "
                    "comparisons",
}
_FIRST_SLICED = ("the first sliced decode in its process, timed before the benchmark warmed sliced decoding up "
                 "(PyTorch pins the bands' host memory slowly the first time); later records time the steady state, "
                 "and the targets below use those")
ROW_NOTES = {("run1-1.3b-all", "sliced_decode"): _FIRST_SLICED, ("run2-14b-all", "sliced_decode"): _FIRST_SLICED}
LABELS = {
    "plain": "plain",
    "chunking": "feature chunking",
    "sliced_decode": "sliced decoding",
    "async_swap": "asynchronous swapping",
    "all_three": "all three",
    "diffusers_group_offload": "diffusers group offload (streams)",
    "diffusers_vae_tiling": "diffusers VAE tiling",
}
MODEL_ORDER = ("14b", "1.3b")
MODEL_SHORT = {"14b": "14B", "1.3b": "1.3B"}
START = re.compile(r"^<!-- generated: (?P<name>[a-z0-9.-]+) \(python -m benchmarks\.figures\) -->$", re.M)


# --- the records -------------------------------------------------------------------------------------------------
@dataclass
class Records:
    """The raw records the published figures come from."""

    memory: dict[str, dict[str, Any]]  # memory-benchmark records by file stem, in run order
    swap_setup: dict[str, dict[str, Any]] = field(default_factory=dict)
    host_memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    gpu_tests: dict[str, dict[str, int]] = field(default_factory=dict)  # JUnit summaries of `pytest -m gpu` runs
    hook_overhead: dict[str, Any] | None = None
    smoke: dict[str, Any] | None = None
    bench: dict[str, Any] | None = None
    tiny: dict[str, Any] = field(default_factory=dict)  # the shipped tiny model's records, by file stem
    mutation: dict[str, Any] = field(default_factory=dict)  # docs/testing/*.json: the mutation runs and reasons
    run_dir: str = "gpu-runs/2026-11-22-h100"

    def rows(self, model: str) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
        """(record stem, configuration, that record's plain configuration) for every row of ``model``."""
        out = []
        for stem, record in self.memory.items():
            result = record["models"].get(model)
            if result is None:
                continue
            plain = next((c for c in result["configs"] if c["config"] == "plain"), None)
            out.extend((stem, c, plain) for c in result["configs"])
        return out

    def spec(self, model: str) -> dict[str, Any]:
        return next(r["models"][model]["spec"] for r in self.memory.values() if model in r["models"])

    def slices(self, stem: str, model: str) -> int:
        return self.memory[stem]["models"][model]["spec"]["slices"]


def run_number(stem: str) -> int:
    """The run a record belongs to, from its file name.

    >>> run_number("run4-14b-slices8")
    4
    """
    match = re.match(r"run(\d+)", stem)
    return int(match.group(1)) if match else 0


def load(root: Path = ROOT, run_dir: Path = RUN_DIR) -> Records:
    """Read every record the documents cite."""
    memory, swap, host = {}, {}, {}
    for path in sorted(run_dir.glob("*.json"), key=lambda p: (run_number(p.stem), p.stem)):
        data = json.loads(path.read_text())
        if "models" in data and data.get("mode") == "gpu":
            memory[path.stem] = data
        elif data.get("kind") == "swap_setup":
            swap[path.stem] = data
        elif data.get("kind") == "host_memory":
            host[path.stem] = data
    tests = {path.name: junit_summary(path.read_text()) for path in sorted(run_dir.glob("pytest-gpu*.xml"))}

    def optional(path: Path) -> dict[str, Any] | None:
        return json.loads(path.read_text()) if path.is_file() else None

    docs = root / "docs"
    tiny_dir = root / "lightcache" / "data" / "tiny-wan"
    tiny = {path.stem: json.loads(path.read_text()) for path in sorted(tiny_dir.glob("*.json"))
            if path.stem in TINY_RECORDS}
    if (tiny_dir / "training_log.txt").is_file():
        tiny["training_log"] = {"text": (tiny_dir / "training_log.txt").read_text()}
    mutation = {path.stem: json.loads(path.read_text()) for path in sorted((docs / "testing").glob("mutation*.json"))}
    return Records(tiny=tiny, mutation=mutation, memory=memory, swap_setup=swap, host_memory=host, gpu_tests=tests,
                   hook_overhead=optional(docs / "hook-overhead-gpu.json"), smoke=optional(docs / "memory-smoke.json"),
                   bench=optional(docs / "benchmarks" / "results.json"),
                   run_dir=run_dir.relative_to(docs).as_posix() if run_dir.is_relative_to(docs) else str(run_dir))


def junit_summary(xml: str) -> dict[str, int]:
    """Counts of a JUnit XML report (``pytest --junitxml``): tests, passed, failures, errors, skipped.

    >>> junit_summary('<testsuites><testsuite tests="5" failures="1" errors="0" skipped="2"/></testsuites>')
    {'tests': 5, 'passed': 2, 'failures': 1, 'errors': 0, 'skipped': 2}
    """
    root = ElementTree.fromstring(xml)
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {"tests": counts["tests"], "passed": passed, "failures": counts["failures"], "errors": counts["errors"],
            "skipped": counts["skipped"]}


# --- cells -------------------------------------------------------------------------------------------------------
def gib(value: int | None) -> str:
    """Bytes as GiB with two decimals.

    >>> gib(12835013632), gib(None)
    ('11.95 GiB', '-')
    """
    return "-" if value is None else f"{value / GIB:.2f} GiB"


def _stage(config: dict[str, Any] | None, stage: str) -> dict[str, Any] | None:
    return None if config is None else config["stages"].get(stage)


def time_cell(config: dict[str, Any], plain: dict[str, Any] | None, stage: str) -> str:
    """A stage's seconds, with the change against plain of the same record: denoise in percent, decode as a ratio
    (the decode overheads are large, and the targets state them as ratios)."""
    own, base = _stage(config, stage), _stage(plain, stage)
    if own is None or own["seconds"] is None:
        return "-"
    text = f"{own['seconds']:.2f}"
    if config["config"] == "plain" or base is None or base["seconds"] is None:
        return text
    if stage == "denoise":
        return f"{text} ({format_percent(percent_change(own['seconds'], base['seconds']), signed=True)})"
    return f"{text} ({own['seconds'] / base['seconds']:.2f}x)"


def over_cell(config: dict[str, Any], stage: str) -> str:
    own = _stage(config, stage)
    return "-" if own is None else f"+{gib(own['over_bytes'])} over {gib(own['resident_bytes'])}"


def weights_cell(config: dict[str, Any]) -> str:
    own = _stage(config, "denoise")
    if own is None:
        return "-"
    return "not logged" if own["weights_resident_bytes"] is None else gib(own["weights_resident_bytes"])


def peak_source(config: dict[str, Any], plain: dict[str, Any] | None) -> str:
    """Which stage the record's end-to-end peak is: the configuration's own stage, or plain's that it borrows.

    >>> plain = {"config": "plain", "stages": {"denoise": {"peak_bytes": 5}, "decode": {"peak_bytes": 12}}}
    >>> sliced = {"config": "sliced_decode", "stages": {"decode": {"peak_bytes": 6}}, "end_to_end_peak_bytes": 6}
    >>> peak_source(sliced, plain)
    'decode'
    """
    candidates = {name: s["peak_bytes"] for name, s in config["stages"].items()}
    if plain is not None and config["config"] != "plain":
        for name, s in plain["stages"].items():
            if name not in candidates and any(f"plain {name} stage" in n for n in config.get("notes", [])):
                candidates[f"plain's {name}"] = s["peak_bytes"]
    peak = config["end_to_end_peak_bytes"]
    matches = [name for name, value in candidates.items() if value == peak]
    if not matches:
        raise ValueError(f"{config['config']}: end-to-end peak {peak} is none of its stages' peaks {candidates}")
    return matches[0]


def peak_cell(config: dict[str, Any], plain: dict[str, Any] | None) -> str:
    if config["end_to_end_peak_bytes"] is None:
        return "-"
    return f"{gib(config['end_to_end_peak_bytes'])} ({peak_source(config, plain)})"


def setup_cell(config: dict[str, Any]) -> str:
    if config["setup_seconds"] is None:
        return "not logged"
    return f"{config['setup_seconds']:.2f}"


def label(stem: str, records: Records, model: str, config: dict[str, Any]) -> str:
    name = LABELS.get(config["config"], config["config"])
    if config["config"] in ("sliced_decode", "all_three"):
        name += f", {records.slices(stem, model)} bands"
    return name


def spread(values: list[float]) -> float:
    """How far the largest value lies above the smallest, in percent.

    >>> round(spread([1.2694, 1.2988, 1.3355, 1.2895]), 1)
    5.2
    """
    return 100.0 * (max(values) / min(values) - 1.0)


# --- memory.md ---------------------------------------------------------------------------------------------------
def memory_intro(records: Records) -> str:
    gpus = sorted({r["gpu"] for r in records.memory.values() if r.get("gpu")})
    torches = sorted({r["torch"] for r in records.memory.values() if r.get("torch")})
    diffusers = sorted({r["diffusers"] for r in records.memory.values() if r.get("diffusers")})
    unnamed = [stem for stem, r in records.memory.items() if not r.get("gpu")]
    chunks = sorted({m["spec"]["chunks"] for r in records.memory.values() for m in r["models"].values()})
    steps = sorted({m["spec"]["steps"] for r in records.memory.values() for m in r["models"].values()})
    where = f"[`{records.run_dir}/`]({records.run_dir}/)"
    text = [
        f"Every figure in this section is generated by `{COMMAND}` from the records in {where}: the JSON each run "
        "wrote, or for a run that left only its printed lines, a JSON made from that log by "
        "`python -m benchmarks.records` (the log stays beside it). `tests/test_published_figures.py` fails when "
        "this page and the records disagree.",
        "",
        f"Measured on one {', '.join(gpus)} (torch {', '.join(torches)}; "
        + (f"diffusers {', '.join(diffusers)}" if diffusers else "these runs did not record diffusers' version")
        + ") with random weights at the real shapes"
        + (f"; {', '.join(f'`{s}`' for s in unnamed)} does not name its GPU or torch" if unnamed else "")
        + ". Each table lists every configuration of every record for its model, in run order. A percentage or "
        "ratio compares with the plain row of the same record, which ran in the same process. \"Over\" is the "
        "allocator's peak during the stage minus what was allocated when it started; the end-to-end peak names the "
        "stage it comes from (a configuration that leaves a stage as plain has it borrows plain's). "
        f"The denoise stage is {_count(steps, 'step')} (a cond and an uncond transformer call), feature chunking "
        f"uses {', '.join(map(str, chunks))} chunks.",
    ]
    for stem, note in RECORD_NOTES.items():
        if stem in records.memory:
            text += ["", f"`{stem}` was {note}."]
    return "\n".join(text)


def _count(values: list[int], noun: str) -> str:
    return " or ".join(f"{v} {noun}{'' if v == 1 else 's'}" for v in values)


def model_table(records: Records, model: str) -> str:
    spec = records.spec(model)
    lines = [
        f"### {spec['name']}, {spec['height']}x{spec['width']}x{spec['frames']}",
        "",
        "| record | configuration | denoise s | denoise over | transformer weights on GPU | decode s | decode over "
        "| end-to-end peak | setup s |",
        "|---|---|---:|---|---:|---:|---|---|---:|",
    ]
    marks: list[str] = []
    for stem, config, plain in records.rows(model):
        note = ROW_NOTES.get((stem, config["config"]))
        mark = ""
        if note:
            marks.append(note)
            mark = " " + "\u2020" * len(marks)
        lines.append(
            f"| `{stem}` | {label(stem, records, model, config)}{mark} | {time_cell(config, plain, 'denoise')} | "
            f"{over_cell(config, 'denoise')} | {weights_cell(config)} | {time_cell(config, plain, 'decode')} | "
            f"{over_cell(config, 'decode')} | {peak_cell(config, plain)} | {setup_cell(config)} |")
    if marks:
        lines.append("")
        lines.extend(f"- {chr(0x2020) * (i + 1)} {note}." for i, note in enumerate(marks))
    sentences = _spread_sentences(records, model)
    if sentences:
        lines += ["", " ".join(sentences)]
    return "\n".join(lines)


def _overheads(records: Records, model: str, config_name: str, stage: str = "denoise") -> list[tuple[str, float]]:
    out = []
    for stem, config, plain in records.rows(model):
        own, base = _stage(config, stage), _stage(plain, stage)
        if config["config"] == config_name and own and base and own["seconds"] and base["seconds"]:
            out.append((stem, percent_change(own["seconds"], base["seconds"])))
    return out


def _spread_sentences(records: Records, model: str) -> list[str]:
    plains = [c for _, c, _ in records.rows(model) if c["config"] == "plain"]
    if len(plains) < 2:
        return []
    denoise = [c["stages"]["denoise"]["seconds"] for c in plains]
    decode = [c["stages"]["decode"]["seconds"] for c in plains]
    noise = spread(denoise)
    text = [f"Plain's own times differ between the {len(plains)} records: denoise {_range(denoise)} "
            f"({format_percent(noise)} apart), decode {_range(decode)} ({format_percent(spread(decode))}), so a "
            "denoise overhead smaller than that is not resolved by one step."]
    three = _overheads(records, model, "all_three")
    if len(three) > 1:
        values = [v for _, v in three]
        listed = " and ".join(f"{format_percent(v, signed=True)} (`{stem}`)" for stem, v in three)
        if max(values) - min(values) > noise:
            text.append(f"The records disagree on what all three strategies add to the denoise stage: {listed}, "
                        "further apart than plain's own spread. Nothing in the records explains the difference; a "
                        "rerun with several steps and repeats is needed to say which is typical, and until then "
                        "both figures stand.")
        else:
            text.append(f"All three strategies add {listed} to the denoise stage, within plain's own spread.")
    return text


def _range(values: list[float]) -> str:
    """The range of some seconds as published.

    >>> _range([1.2694, 1.3355]), _range([7.6872, 7.6909])
    ('1.27-1.34 s', '7.69 s in each')
    """
    low, high = f"{min(values):.2f}", f"{max(values):.2f}"
    return f"{low} s in each" if low == high else f"{low}-{high} s"


def exactness(records: Records) -> str:
    exact, differs, missing = [], [], []
    decode_diffs, tiling = [], []
    for stem, record in records.memory.items():
        for model, result in record["models"].items():
            for c in result["configs"]:
                if c["config"] == "plain":
                    continue
                where = f"{LABELS[c['config']]} at {MODEL_SHORT[model]} (`{stem}`)"
                if "denoise" in c["stages"]:
                    value = c["max_abs_diff"].get("denoise")
                    (missing if value is None else exact if value == 0 else differs).append((where, value, stem))
                if "decode" in c["stages"] and c["max_abs_diff"].get("decode") is not None:
                    value = c["max_abs_diff"]["decode"]
                    if c["config"] == "diffusers_vae_tiling":
                        tiling.append((f"at {MODEL_SHORT[model]} (`{stem}`)", value))
                    else:
                        decode_diffs.append((where, value))
    fp32 = [r["exactness_fp32"] for r in records.memory.values() if r.get("exactness_fp32")]
    text = []
    if exact or differs:
        compared = sorted({stem for *_, stem in exact + differs}, key=lambda s: (run_number(s), s))
        sentence = (f"Exactness on the GPU: the denoise output is bit-identical to plain (bf16) in {len(exact)} of "
                    f"the {len(exact) + len(differs)} configurations whose record compares it ("
                    + ", ".join(f"`{s}`" for s in compared) + ")")
        if differs:
            sentence += "; it differs in " + ", ".join(f"{w} by {v:.2g}" for w, v, _ in differs)
        text.append(sentence + ".")
    if missing:
        text.append("Not compared, because the record holds no comparison: " + ", ".join(w for w, *_ in missing)
                    + "; their exactness on the GPU awaits a recorded run.")
    if decode_diffs:
        sentence = (f"Decoding in bands differs from plain by at most {max(v for _, v in decode_diffs):.2g} "
                    f"({len(decode_diffs)} comparisons; fp32 VAE with cuDNN's default TF32 convolutions, whose "
                    "algorithm can change with the band width)")
        if fp32:
            sentence += (f", and by {max(r['sliced_decode_fp32'] for r in fp32):.2g} in the strict fp32 check at a "
                         "small shape with TF32 off, where feature chunking differs by at most "
                         f"{max(r['chunking_fp32'] for r in fp32):.2g} ({len(fp32)} records)")
        text.append(sentence + ".")
    if tiling:
        text.append("diffusers' VAE tiling differs by " + ", ".join(f"{v:.2g} {w}" for w, v in tiling)
                    + ": it blends overlapping tiles.")
    if records.gpu_tests:
        for name, s in records.gpu_tests.items():
            text.append(f"The GPU tests (`pytest -m gpu`) on this machine, [`{name}`]({records.run_dir}/{name}): "
                        f"{s['passed']} passed, {s['failures']} failed, {s['errors']} errors, {s['skipped']} "
                        "skipped.")
    else:
        text.append("No output of the GPU tests (`pytest -m gpu`: swapping exact and leaving everything on the GPU, "
                    "every strategy inside a whole run matching plain with EasyCache reusing) is recorded with these "
                    "figures, so this page claims no result for them; to record one, run "
                    f"`python -m pytest -m gpu --junitxml docs/{records.run_dir}/pytest-gpu.xml` on the machine "
                    f"and then `{COMMAND}`.")
    return " ".join(text)


def _sliced_entries(records: Records, model: str) -> list[tuple[str, int, float, float]]:
    """(record, bands, GiB over resident, time / plain decode) of every steady-state sliced decode of ``model``."""
    out = []
    for stem, config, plain in records.rows(model):
        if config["config"] != "sliced_decode" or (stem, "sliced_decode") in ROW_NOTES:
            continue
        dec, base = config["stages"]["decode"], plain["stages"]["decode"]
        out.append((stem, records.slices(stem, model), dec["over_bytes"] / GIB, dec["seconds"] / base["seconds"]))
    return sorted(out, key=lambda e: -e[1])


def _both(memory_ok: list[bool], time_ok: list[bool], what: str) -> str:
    if any(m and t for m, t in zip(memory_ok, time_ok)):
        return "yes"
    if any(memory_ok) and any(time_ok):
        return f"no: each half is met by a different {what}"
    if any(memory_ok):
        return "memory yes, time no"
    if any(time_ok):
        return "time yes, memory no"
    return "no"


def targets(records: Records) -> str:
    from benchmarks.memory import TARGETS

    lines = ["| model | target | measured (record) | met |", "|---|---|---|---|"]
    for model in MODEL_ORDER:
        limits = TARGETS.get(model)
        if not limits or not records.rows(model):
            continue
        m = MODEL_SHORT[model]
        sliced = _sliced_entries(records, model)
        if sliced:
            measured = "; ".join(f"{bands} bands: {over:.2f} GiB at {ratio:.2f}x (`{stem}`)"
                                 for stem, bands, over, ratio in sliced)
            verdict = _both([e[2] <= limits["decode_over_gib"] for e in sliced],
                            [e[3] <= limits["decode_time_ratio"] for e in sliced], "band count")
            lines.append(f"| {m} | decode over resident <= {limits['decode_over_gib']} GiB at <= "
                         f"{limits['decode_time_ratio']}x plain | {measured} | {verdict} |")
        if "denoise_over_gib" in limits:
            for stem, config, plain in records.rows(model):
                if config["config"] != "chunking":
                    continue
                over = config["stages"]["denoise"]["over_bytes"] / GIB
                extra = percent_change(config["stages"]["denoise"]["seconds"], plain["stages"]["denoise"]["seconds"])
                verdict = _both([over <= limits["denoise_over_gib"]],
                                [extra <= 100 * (limits["denoise_time_ratio"] - 1)], "")
                lines.append(f"| {m} | denoise activations <= {limits['denoise_over_gib']} GiB at <= "
                             f"{format_percent(100 * (limits['denoise_time_ratio'] - 1))} extra | {over:.2f} GiB at "
                             f"{format_percent(extra, signed=True)} (`{stem}`) | {verdict} |")
        if "swap_resident_gib" in limits:
            lines.extend(_swap_target(records, model, limits))
        for stem, config, plain in records.rows(model):
            if config["config"] == "all_three" and config["end_to_end_peak_bytes"] is not None:
                peak = config["end_to_end_peak_bytes"] / GIB
                lines.append(f"| {m} | end-to-end peak with all three <= {limits['end_to_end_gib']} GiB | "
                             f"{peak:.2f} GiB, plain {gib(plain['end_to_end_peak_bytes'])} (`{stem}`) | "
                             f"{'yes' if peak <= limits['end_to_end_gib'] else 'no'} |")
    return "\n".join(lines)


def _swap_target(records: Records, model: str, limits: dict[str, float]) -> list[str]:
    """Swapping's weights on the GPU and its time, each from the record that holds it; never one joined figure."""
    m, lines = MODEL_SHORT[model], []
    offload = [(stem, c) for stem, c, _ in records.rows(model) if c["config"] == "diffusers_group_offload"
               and c["stages"].get("denoise", {}).get("weights_resident_bytes") is not None]
    for stem, config, plain in records.rows(model):
        if config["config"] != "async_swap":
            continue
        den = config["stages"]["denoise"]
        extra = percent_change(den["seconds"], plain["stages"]["denoise"]["seconds"])
        time_ok = extra <= 100 * (limits["swap_time_ratio"] - 1)
        weights = den["weights_resident_bytes"]
        if weights is not None:
            measured = f"{gib(weights)} at {format_percent(extra, signed=True)} (`{stem}`)"
            verdict = _both([weights / GIB <= limits["swap_resident_gib"]], [time_ok], "")
        else:
            measured = f"time {format_percent(extra, signed=True)} (`{stem}`); weights on the GPU not recorded there"
            if offload:
                o_stem, o = offload[0]
                measured += (f" (diffusers' group offload, which streams the blocks the same way, one block per "
                             f"group: {gib(o['stages']['denoise']['weights_resident_bytes'])} in `{o_stem}`)")
            verdict = f"time {'yes' if time_ok else 'no'}; memory not measured for swapping itself"
        lines.append(f"| {m} | transformer weights on the GPU during denoise <= {limits['swap_resident_gib']} GiB at "
                     f"<= {format_percent(100 * (limits['swap_time_ratio'] - 1))} extra | {measured} | {verdict} |")
    return lines


def costs(records: Records) -> str:
    text = []
    drops: dict[str, list[str]] = {}
    for model in MODEL_ORDER:
        for stem, config, plain in records.rows(model):
            if config["config"] == "all_three":
                drops.setdefault(f"{MODEL_SHORT[model]} from {gib(plain['end_to_end_peak_bytes'])} to "
                                 f"{gib(config['end_to_end_peak_bytes'])}", []).append(f"`{stem}`")
    if drops:
        text.append("What this says for choosing settings: all three strategies cut the end-to-end peak, "
                    + ", ".join(f"{what} ({', '.join(stems)})" for what, stems in drops.items()) + ".")
    for model in MODEL_ORDER:
        sliced = _sliced_entries(records, model)
        if len(sliced) >= 2:
            (s1, b1, o1, r1), (s2, b2, o2, r2) = sliced[0], sliced[1]
            text.append(f"Sliced decoding costs time because thinner bands use the GPU less well: at "
                        f"{MODEL_SHORT[model]}, {b2} bands instead of {b1} cut the decode overhead from "
                        f"{format_percent(100 * (r1 - 1), signed=True)} to {format_percent(100 * (r2 - 1), signed=True)}"
                        f" for {o2 - o1:.2f} GiB more (`{s1}`, `{s2}`; `--decode-slices {b2}`, or "
                        f"`decode_slices={b2}` in `RunSettings`).")
            break
    chunk = {model: _overheads(records, model, "chunking") for model in MODEL_ORDER}
    if all(chunk.values()):
        text.append("Feature chunking adds " + " and ".join(
            f"{format_percent(v, signed=True)} at {MODEL_SHORT[model]} (`{stem}`)"
            for model in MODEL_ORDER for stem, v in chunk[model]) + " to the denoise stage, each from one step.")
    text.append(_setup_sentences(records))
    return "\n\n".join(t for t in text if t)


def _setup_sentences(records: Records) -> str:
    """Swapping's setup (pinning a host copy of the transformer) from every record that timed it."""
    by_model: dict[str, list[tuple[float, str, str]]] = {}  # (seconds, as published, where from) per model
    for stem, record in records.memory.items():
        for model, result in record["models"].items():
            for c in result["configs"]:
                if c["config"] in ("async_swap", "all_three") and c["setup_seconds"] is not None:
                    by_model.setdefault(model, []).append((c["setup_seconds"], f"{c['setup_seconds']:.2f}",
                                                           f"`{stem}` {LABELS[c['config']]}"))
    reused: list[tuple[str, float, str]] = []
    released = []
    for stem, record in records.swap_setup.items():
        for model, result in record["models"].items():
            for run in result["runs"]:
                if run["reused"]:
                    reused.append((model, run["apply_seconds"], stem))
                else:
                    by_model.setdefault(model, []).append((run["apply_seconds"], f"{run['apply_seconds']:.1f}",
                                                           f"`{stem}` first run"))
            if result["released_gib"] is not None:
                released.append((model, result["released_gib"], stem))
    if not by_model:
        return ""
    parts = []
    for model in MODEL_ORDER:
        if model in by_model:
            values = sorted(by_model[model])
            sources = sorted({src for *_, src in values})
            # Each timing as precise as its record: two decimals as the tables print the JSON records, one as
            # the logs printed it.
            span = values[0][1] if len(values) == 1 else f"{values[0][1]}-{values[-1][1]}"
            parts.append(f"{span} s at {MODEL_SHORT[model]} "
                         f"({len(values)} timing{'s' if len(values) > 1 else ''}: {'; '.join(sources)})")
    text = ("Two costs outside the stages. Setting swapping up pins a host copy of the transformer's blocks: "
            + ", ".join(parts) + ".")
    if reused:
        by = {}
        for model, seconds, stem in reused:
            by.setdefault((model, stem), []).append(seconds)
        text += (" That copy is now kept with the pipeline between runs (`lightcache.techniques.swap.PinnedWeights`: "
                 "reused only while every weight on the GPU has the storage, version and checksum it had when the copy "
                 "was made; "
                 "`release_pinned_weights(pipe)` frees it), so later runs with swapping set up in "
                 + ", ".join(f"{'-'.join(sorted({f'{v:.1f}' for v in vs}))} s at {MODEL_SHORT[model]} (`{stem}`, "
                             f"{len(vs)} runs)" for (model, stem), vs in by.items()) + ".")
    for model, size, stem in released:
        text += f" The kept copy holds {size:.2f} GiB of host memory at {MODEL_SHORT[model]} (`{stem}`)."
    for stem, record in records.host_memory.items():
        samples = record["samples"]
        if not samples:
            continue
        top = max(s["used_gib"] for s in samples)
        times = [_seconds(s["time"]) for s in samples]
        step = statistics.median(b - a for a, b in zip(times, times[1:])) if len(times) > 1 else 0
        text += (" PyTorch also keeps freed pinned host memory cached, so pinned copies add up within a process: in "
                 "run 2, before the copy was kept, the host ran out of memory when diffusers' group offloading "
                 "pinned its own copy after two swapping configurations. Run 3's host-memory log (`free -g` every "
                 f"{step:.0f} s, `{stem}`) reads at most {top} GiB used of {samples[0]['total_gib']} GiB; in that "
                 "run only diffusers' group offloading (14B) and all three strategies (1.3B) pin host memory.")
    return text


def _seconds(clock: str) -> int:
    h, m, s = (int(v) for v in clock.split(":"))
    return 3600 * h + 60 * m + s


def smoke(records: Records) -> str:
    from benchmarks.memory import table

    if records.smoke is None:
        return "No smoke record is committed."
    s = records.smoke
    checks = s.get("exactness_fp32") or {}
    return (f"`{s.get('command', 'python -m benchmarks.memory --smoke')}` (torch {s['torch']}, diffusers "
            f"{s.get('diffusers', 'not recorded')}), recorded in [`memory-smoke.json`](memory-smoke.json):\n\n"
            + table(s["models"], s["mode"]).strip()
            + f"\n\nExactness check (fp32): chunking {checks.get('chunking_fp32', float('nan')):.2g}, sliced decoding "
            f"{checks.get('sliced_decode_fp32', float('nan')):.2g} max abs difference.")


# --- README.md ---------------------------------------------------------------------------------------------------
def readme_h100(records: Records) -> str:
    gpus = sorted({r["gpu"] for r in records.memory.values() if r.get("gpu")})
    torches = sorted({r["torch"] for r in records.memory.values() if r.get("torch")})
    lines = [
        f"Measured on one {', '.join(gpus)} (torch {', '.join(torches)}) with random weights at the real shapes, "
        "which do not change time or memory. Each row is one run of `python -m benchmarks.memory` (percentages and "
        "ratios against the plain run of the same process); [docs/memory.md](docs/memory.md) has every figure of "
        f"every run and the commands. This paragraph and the table are generated from the records by `{COMMAND}`.",
        "",
        "| Wan2.1, 81 frames | record | plain end-to-end peak | with all three strategies | denoise time they add "
        "| decode time |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for model in MODEL_ORDER:
        if not records.rows(model):
            continue
        spec = records.spec(model)
        for stem, config, plain in records.rows(model):
            if config["config"] != "all_three":
                continue
            lines.append(f"| {MODEL_SHORT[model]}, {spec['height']}x{spec['width']} | `{stem}` | "
                         f"{gib(plain['end_to_end_peak_bytes'])} | {gib(config['end_to_end_peak_bytes'])} | "
                         f"{time_cell(config, plain, 'denoise').split(' ', 1)[1].strip('()')} | "
                         f"{time_cell(config, plain, 'decode').split(' ', 1)[1].strip('()')} |")
    lines.append("")
    text = []
    for model in MODEL_ORDER:
        three = _overheads(records, model, "all_three")
        plains = [c["stages"]["denoise"]["seconds"] for _, c, _ in records.rows(model) if c["config"] == "plain"]
        values = [v for _, v in three]
        if len(values) > 1 and max(values) - min(values) > spread(plains):
            text.append(f"The {MODEL_SHORT[model]} runs disagree on the denoise time the strategies add ("
                        + " and ".join(format_percent(v, signed=True) for v in values)
                        + ", one step each), more than plain's own spread between runs "
                        f"({format_percent(spread(plains))}); until a rerun with repeats settles it, both stand.")
    o = records.hook_overhead
    if o:
        ov, reuse = o["overhead"], o["overhead"]["reuse"]
        plain = ov["denoise_seconds"]["plain"]
        noise = spread(plain)
        text.append(
            f"EasyCache's own cost at the {o['model'].split('-', 1)[1]} shape "
            f"([docs/hook-overhead-gpu.md](docs/hook-overhead-gpu.md), {ov['steps']} steps, {ov['repeats']} "
            f"interleaved repeats): with tau = 0 (never reusing) the denoise stage's time differed from plain's by "
            f"{format_percent(ov['overhead_pct'], signed=True)}"
            + (f", inside the {format_percent(noise)} spread of plain's own repeats" if abs(ov["overhead_pct"]) < noise
               else "")
            + f", and a reused call took {reuse['reused_ms_median']:.2f} ms against "
            f"{reuse['computed_ms_median']:.0f} ms for a computed one; not measured at 14B.")
    for stem, record in records.swap_setup.items():
        for model, result in record["models"].items():
            first = [r["apply_seconds"] for r in result["runs"] if not r["reused"]]
            later = sorted({r["apply_seconds"] for r in result["runs"] if r["reused"]})
            if first and later:
                text.append(f"Setting swapping up at {MODEL_SHORT[model]} took {first[0]:.1f} s the first time in a "
                            f"process and {'-'.join(f'{v:.1f}' for v in later)} s on later runs, which reuse the "
                            f"pinned copy (`{stem}`).")
    lines.append(" ".join(text))
    return "\n".join(lines)


def readme_bench(records: Records) -> str:
    b = records.bench
    if b is None:
        return "No benchmark record is committed."
    from lightcache.bench.report import computed_fraction, load_sentence

    tau = b["settings"]["threshold"]
    modes = {0: "easycache", 1: "easycache-order1"}
    points = {order: [a for a in b["aggregates"] if a["method"] == name] for order, name in modes.items()}
    d = b["targets"]["pareto_dominance"]["denoise"]
    if d["holds"]:
        claim = (f"for each of the {d['built_in_points']} built-in settings there is an EasyCache point (either order) "
                 "at least as fast (denoise) with at least as high PSNR")
    else:
        claim = (f"{d['dominated']} of the {d['built_in_points']} built-in settings are matched or beaten by an "
                 "EasyCache point (either order) on denoise speed and PSNR at once")
    extent = (f"the quick run ({len(b['cases'])} prompts and seeds, a short sweep)" if b.get("quick")
              else "the full run")

    def at(order: int) -> str:
        point = next((a for a in points[order] if a["params"].get("threshold") == tau), None)
        if point is None:
            return "not measured"
        return (f"computes {_share(computed_fraction(b, point['method'], point['setting']))} of the transformer "
                f"calls and runs the denoise stage {point['speedup_denoise']:.2f}x faster at {point['psnr_db']:.2f} dB "
                "PSNR against the plain video")

    lines = [
        f"[docs/benchmarks.md](docs/benchmarks.md) is {extent} on the `{b['preset']}` model, {b['settings']['steps']} "
        f"steps, {b['settings']['frames']} frames (regenerated by the command at its top). At tau {tau:g}, the "
        f"preset's default, EasyCache as the paper defines it (order 0, the default everywhere) {at(0)}; order 1 "
        "(`--easycache-order 1`), which goes beyond the paper by reusing an extrapolation of the last two computed "
        f"transformations instead of the last one, {at(1)}. {claim[0].upper() + claim[1:]}.",
    ]
    load = load_sentence(b["environment"])
    if "loaded" in load:
        lines[0] += (" The machine was shared with other work during that run (load averages on the page), so its "
                     "times are noisier than a quiet machine's; the call fractions have no timing noise.")
    lines += ["", "| mode | tau | calls computed | denoise speed-up | PSNR |", "|---|---:|---:|---:|---:|"]
    for order in (0, 1):
        for a in points[order]:
            lines.append(f"| order {order} | {a['params'].get('threshold'):g} | "
                         f"{_share(computed_fraction(b, a['method'], a['setting']))} | {a['speedup_denoise']:.2f}x | "
                         f"{a['psnr_db'] if isinstance(a['psnr_db'], str) else format(a['psnr_db'], '.2f')} dB |")
    return "\n".join(lines)


# --- lightcache/data/tiny-wan/MODEL_CARD.md ------------------------------------------------------------------------------
#: The tiny model's records: its evaluation (generations and the VAE alone), the cost of a default generation, and
#: the second, third and fourth parts' logs; the first part's kept log lines are ``training_log.txt``.
TINY_RECORDS = ("eval", "eval-vae", "cost", "refine_log", "widen_log", "sharpen_log")
#: What issue-level targets the card compares the measured rates with: (label, key, target, higher is better).
TINY_TARGETS = (
    ("the asked colour in every frame", "colour_every_frame", 0.95, True),
    ("median video's worst frame: object pixels nearer another colour", "median_worst_off_colour", 0.10, False),
    ("the asked shape recognised", "shape_recognised", 0.85, True),
    ("the asked colour and motion", "colour_and_motion", 0.95, True),
    ("the asked colour and motion, held-out combinations", "held_out_colour_and_motion", 0.95, True),
)


def _share(x: float) -> str:
    return f"{x * 100:.0f} %"


def tiny_rates(records: Records) -> str:
    ev, vae = records.tiny.get("eval"), records.tiny.get("eval-vae")
    if ev is None:
        return "No evaluation record is committed."
    lines = [
        f"Measured on the output by `{ev['command']}` ({ev['summary']['videos']} videos, every (colour, shape, "
        f"motion) triple in turn, held-out ones included, {ev['steps']} steps, {ev['frames']} frames, noise seeds "
        f"{ev['videos'][0]['seed']}-{ev['videos'][-1]['seed']}), recorded in [`eval.json`](eval.json)"
        + (f"; the VAE alone (the same clips rendered, encoded and decoded) by `{vae['command']}` in "
           f"[`eval-vae.json`](eval-vae.json)" if vae else "") + ".",
        "",
        "| measure | target | generations | VAE alone |",
        "|---|---:|---:|---:|",
    ]
    for label, key, target, higher in TINY_TARGETS:
        got = ev["summary"][key]
        ok = got >= target if higher else got <= target
        lines.append(f"| {label} | {'>=' if higher else '<='} {_share(target)} | {_share(got)}"
                     f"{'' if ok else ' (missed)'} | {_share(vae['summary'][key]) if vae else 'not measured'} |")
    failed = [r for r in ev["videos"] if not (r["colour_every_frame"] and r["shape_recognised"] and r["follows_prompt"])]
    if failed:
        lines += ["", "Videos that missed something: " + "; ".join(
            f"{r['prompt']} (seed {r['seed']}: " + ", ".join(
                w for w, bad in (("colour off in a frame", not r["colour_every_frame"]),
                                 (f"read as a {r['shape']}", not r["shape_recognised"]),
                                 ("wrong motion or colour", not r["follows_prompt"])) if bad) + ")"
            for r in failed) + "."]
    return "\n".join(lines)


def tiny_cost(records: Records) -> str:
    c = records.tiny.get("cost")
    if c is None:
        return "No cost record is committed."
    s, m, st = c["summary"], c["medians"], c["settings"]
    n = len(c["runs"]["plain"])
    return (
        f"One generation at the preset's defaults ({st['height']} x {st['width']}, {st['frames']} frames, "
        f"{st['steps']} steps, guidance {st['guidance_scale']:g}), {c['threads']} CPU threads, medians of {n} plain "
        f"and {n} EasyCache runs interleaved after an untimed warm-up (`{c['command']}`, recorded in "
        f"[`cost.json`](cost.json)): a plain run takes {m['plain']['total_seconds']:.2f} s, of which the denoise "
        f"stage is {m['plain']['denoise_seconds']:.2f} s ({_share(s['denoise_share'])}) and the VAE decode "
        f"{m['plain']['decode_seconds']:.2f} s ({_share(s['decode_share'])}). With EasyCache at tau "
        f"{st['threshold']:g} the run takes {m['easycache']['total_seconds']:.2f} s: {s['speedup']:.2f}x end to end "
        f"against {s['denoise_speedup']:.2f}x on the denoise stage." + _load_sentence(c))


def _load_sentence(record: dict[str, Any]) -> str:
    """What the machine was doing meanwhile, where the record says (its 1-minute load average)."""
    load = record.get("load_average")
    if load is None:
        return " The record does not say how busy the machine was."
    cpu = f" ({record['cpu']})" if record.get("cpu") else ""
    return (f" The {record.get('cpus', '?')}-core machine's{cpu} 1-minute load average was {load['before']:.2f} before "
            f"the runs and {load['after']:.2f} after.")


def _log_phases(text: str) -> dict[str, tuple[int, float]]:
    """(steps, seconds) of each training phase whose loss lines ``training_log.txt`` kept."""
    out: dict[str, tuple[int, float]] = {}
    for m in re.finditer(r"(vae phase \d|dit phase \d) step (\d+)/\d+ .*?\((\d+)s\)", text):
        out[m[1]] = (int(m[2]), float(m[3]))
    return out


def tiny_training(records: Records) -> str:
    r = records.tiny.get("refine_log")
    if r is None:
        return "No refinement record is committed."
    a, sec = r["args"], r["seconds"]
    phases = _log_phases(records.tiny.get("training_log", {}).get("text", ""))
    first = ", ".join(f"{name.replace('dit', 'transformer').replace('vae', 'VAE')} {steps} steps in {s:.0f} s"
                      for name, (steps, s) in phases.items())
    loss = "L1 + MSE + chroma x{:g}, object pixels x{:g}".format(a["chroma_weight"], 1 + a["object_weight"])
    rows = [
        ("decoder 1", f"the decoder (and post-quant conv) on whole {a['frames']}-frame clips, {a['crop']}x{a['crop']} "
                      f"crops of the latent around the object, encoder frozen; {loss}; lr {a['decoder_lr']:g} cosine",
         a["decoder_steps"], a["batch"], "decoder1"),
        ("decoder 2", f"as 1, lr {a['decoder2_lr']:g}", a["decoder2_steps"], a["batch"], "decoder2"),
        ("decoder 3", f"as 2 with the first frame weighed x{a['first_frame_weight']:g} and an edge term "
                      f"x{a['edge_weight']:g}, lr {a['decoder3_lr']:g}", a["decoder3_steps"], a["batch"], "decoder3"),
        ("deepen", f"the transformer grown to {a['depth']} blocks, flow matching on {a['clips']} clips' latents; lr "
                   f"{a['dit_lr']:g} cosine, EMA {a['ema']:g}", a["dit_steps"], a["dit_batch"], "transformer"),
    ]
    lines = ["| stage | what | steps (batch) | final loss | time |", "|---|---|---|---|---|"]
    for name, what, steps, batch, key in rows:
        curve = r[f"{key}_loss_curve"]
        seconds = sec["deepen" if key == "transformer" else key]
        lines.append(f"| {name} | {what} | {steps} ({batch}) | {curve[-1]:.3f} | {seconds} s |")
    w = records.tiny.get("widen_log")
    if w is not None:
        lines += _widen_rows(w)
    sh = records.tiny.get("sharpen_log")
    if sh is not None:
        lines += _sharpen_rows(sh)
    total = sum(sec.values())
    lines += ["", f"The second part took {total} s of compute ({total / 60:.0f} minutes; `refine_log.json` has the "
                  f"loss curves). How it ran: {r.get('how_it_ran', 'in one invocation')}."]
    if w is not None:
        wtotal = sum(w["seconds"].values())
        lines += ["", f"The third part took {wtotal} s of compute ({wtotal / 60:.0f} minutes; `widen_log.json` has the "
                      f"loss curves). How it ran: {w.get('how_it_ran', 'in one invocation')}."]
    if sh is not None:
        stotal = sum(sh["seconds"].values())
        lines += ["", f"The fourth part took {stotal} s of compute ({stotal / 60:.0f} minutes; `sharpen_log.json` has "
                      f"the loss curve). How it ran: {sh.get('how_it_ran', 'in one invocation')}."]
    lines += ["", f"The first part's kept log lines (`training_log.txt`): {first or 'none'}; its other stages left no "
                  "record."]
    return "\n".join(lines)


def _widen_rows(w: dict[str, Any]) -> list[str]:
    """The third part's rows of the training table (``widen_log.json``)."""
    a, sec = w["args"], w["seconds"]
    loss = (f"L1 + MSE + chroma x{a['chroma_weight']:g}, object pixels x{1 + a['object_weight']:g}, first frame "
            f"x{a['first_frame_weight']:g}, edge term x{a['edge_weight']:g}, old channels anchored to the old encoder "
            f"x{a['anchor_weight']:g}")
    rows = [
        ("widen VAE 1", f"the latent space widened to {a['z_dim']} channels (the new ones start unread); the whole VAE, "
                        f"encoder included, on whole {a['frames']}-frame clips, {a['crop']}x{a['crop']}-pixel crops "
                        f"around the object; {loss}; lr {a['vae_lr']:g} cosine", a["vae_steps"], a["batch"], "vae1"),
        ("widen VAE 2", f"as widen VAE 1, lr {a['vae2_lr']:g}", a["vae2_steps"], a["batch"], "vae2"),
        ("widen transformer 1", f"its input and output grown to {a['z_dim']} channels (the new weights start at "
                                f"zero), flow matching on {a['clips']} clips' latents (encoding them: "
                                f"{sec['latents']} s); lr {a['dit_lr']:g} cosine, EMA {a['ema']:g}",
         a["dit_steps"], a["dit_batch"], "transformer1"),
        ("widen transformer 2", f"as widen transformer 1, from its EMA weights, lr {a['dit2_lr']:g}", a["dit2_steps"],
         a["dit_batch"], "transformer2"),
    ]
    return [f"| {name} | {what} | {steps} ({batch}) | {w[f'{key}_loss_curve'][-1]:.3f} | {sec[key]} s |"
            for name, what, steps, batch, key in rows]


def _sharpen_rows(sh: dict[str, Any]) -> list[str]:
    """The fourth part's rows of the training table (``sharpen_log.json``)."""
    a, sec = sh["args"], sh["seconds"]
    noise = "uniform" if a["train_shift"] == 1 else f"shifted by {a['train_shift']:g}"
    what = (f"flow matching from the third part's transformer, noise levels drawn {noise}, the object's latent cells "
            f"(and their neighbours) x{1 + a['object_weight']:g}, on {a['clips']} clips' latents (encoding them: "
            f"{sec['latents']} s); lr {a['lr']:g} cosine, EMA {a['ema']:g}")
    rows = [f"| sharpen transformer 1 | {what} | {a['steps']} ({a['batch']}) | {sh['loss_curve'][-1]:.3f} | "
            f"{sec['transformer']} s |"]
    if a.get("shape_steps") and "shape_loss_curve" in sh:
        shape_noise = "uniform" if a["shape_shift"] == 1 else f"shifted by {a['shape_shift']:g}"
        rows.append(f"| sharpen transformer 2 | as 1, from its EMA weights, noise levels drawn {shape_noise}, the cells "
                    f"where the asked shape differs from the other shapes given {a['shape_weight']:g} more weight (finding "
                    f"them: {sec['shape_cells']} s); lr {a['shape_lr']:g} | {a['shape_steps']} ({a['batch']}) | "
                    f"{sh['shape_loss_curve'][-1]:.3f} | {sec['transformer_shape']} s |")
    return rows


# --- mutation testing (docs/testing.md) --------------------------------------------------------------------------
MUTATION_MODULES = ("lightcache.easycache", "lightcache.calls", "lightcache.decode", "lightcache.swap",
                    "lightcache.app.jobs", "lightcache.app.waiting", "lightcache.app.layout")
ALIVE = ("survived", "no tests")
_LONGEST_FIRST = sorted(MUTATION_MODULES, key=len, reverse=True)  # lightcache.app.jobs before a shorter prefix


def module_of(mutant: str) -> str:
    """The module a mutant was made in.

    >>> module_of("lightcache.app.jobs.x_portable__mutmut_3")
    'lightcache.app.jobs'
    """
    return next(m for m in _LONGEST_FIRST if mutant.startswith(m + "."))


def reason_for(mutant: str, reasons: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first entry of ``mutation-reasons.json`` whose patterns match ``mutant``."""
    return next((r for r in reasons if any(fnmatch.fnmatchcase(mutant, p) for p in r["mutants"])), None)


def _mutation_counts(results: dict[str, str | None]) -> dict[str, int]:
    counts = {"mutants": len(results)}
    for status in ("killed", "timeout", "survived", "no tests"):
        counts[status] = sum(s == status for s in results.values())
    return counts


def _score(c: dict[str, int]) -> str:
    return f"{100 * (c['killed'] + c['timeout']) / c['mutants']:.1f} %" if c["mutants"] else "-"


def mutation_score(records: Records) -> str:
    run = records.mutation.get("mutation")
    if run is None:
        return "No mutation run is recorded."
    results, reasons = run["results"], records.mutation.get("mutation-reasons", {}).get("reasons", [])
    total = _mutation_counts(results)
    lines = [
        f"The run of {run['date']} on commit `{run['commit'][:7]}` ({run['tool']}, `{run['command']}`; every mutant's "
        f"outcome is in [`testing/mutation.json`](testing/mutation.json)"
        + ("" if run["complete"] else "; the run did not finish, so this is not a score") + "): "
        f"{total['mutants']} mutants of {len(run['function_hashes'])} functions, {total['killed']} killed and "
        f"{total['timeout']} timed out (a mutant that makes the tests hang is caught too): a score of "
        f"{_score(total)}. {total['survived']} survived and {total['no tests']} were reached by no test of the "
        f"mutation run; each of them is listed below with why it is harmless or where it is caught.",
        "",
        "| module | mutants | killed | timed out | survived | no tests | score |",
        "|---|---|---|---|---|---|---|",
    ]
    by_module: dict[str, dict[str, str | None]] = {}
    for name, status in results.items():
        by_module.setdefault(module_of(name), {})[name] = status
    for module in MUTATION_MODULES:
        c = _mutation_counts(by_module.get(module, {}))
        if c["mutants"]:
            lines.append(f"| `{module}` | {c['mutants']} | {c['killed']} | {c['timeout']} | {c['survived']} | "
                         f"{c['no tests']} | {_score(c)} |")
    lines.append(f"| all | {total['mutants']} | {total['killed']} | {total['timeout']} | {total['survived']} | "
                 f"{total['no tests']} | {_score(total)} |")
    earlier = [(stem, r) for stem, r in records.mutation.items() if stem not in ("mutation", "mutation-reasons")]
    if earlier:
        lines += ["", "Earlier runs, compared on the mutants they share with this one (same function source):", ""]
        lines += [_mutation_before(stem, r, run) for stem, r in sorted(earlier)]
    alive = sorted(k for k, v in results.items() if v in ALIVE)
    if alive:
        lines += ["", "#### The mutants left alive, and why", ""]
        by_reason: dict[str, list[str]] = {}
        for name in alive:
            reason = reason_for(name, reasons)
            by_reason.setdefault(reason["why"] if reason else "NO REASON GIVEN", []).append(name)
        for why, names in by_reason.items():
            functions = sorted({n.rsplit("__mutmut_", 1)[0] for n in names})
            numbers = {f: sorted(int(n.rsplit("__mutmut_", 1)[1]) for n in names if n.startswith(f + "__mutmut_"))
                       for f in functions}
            lines.append(f"- {why} ({len(names)}: " + ", ".join(
                f"`{f}` {', '.join(map(str, numbers[f]))}" for f in functions) + ")")
    return "\n".join(lines)


def _mutation_before(stem: str, before: dict[str, Any], run: dict[str, Any]) -> str:
    decided = {k: v for k, v in before["results"].items() if v is not None}
    b = _mutation_counts(decided)
    same = {k: v for k, v in decided.items()
            if before["function_hashes"].get(k.rsplit("__mutmut_", 1)[0])
            == run["function_hashes"].get(k.rsplit("__mutmut_", 1)[0]) and k in run["results"]}
    now = _mutation_counts({k: run["results"][k] for k in same})
    then = _mutation_counts(same)
    extent = ("all" if len(decided) == len(before["results"]) else "the first") + f" {b['mutants']}"
    return (
        f"- Commit `{before['commit'][:7]}` ({before['command']}; [`testing/{stem}.json`](testing/{stem}.json)) "
        f"decided {extent} of its {len(before['results'])} mutants: {b['killed']} killed, {b['timeout']} timed out, "
        f"{b['survived']} survived, {b['no tests']} reached by no test. On the {len(same)} of them that this run has "
        f"too: {then['killed'] + then['timeout']} caught then ({_score(then)}), "
        f"{now['killed'] + now['timeout']} now ({_score(now)}).")


# --- blocks ------------------------------------------------------------------------------------------------------
BLOCKS: dict[str, Callable[[Records], str]] = {
    "memory-intro": memory_intro,
    "memory-14b": lambda r: model_table(r, "14b"),
    "memory-1.3b": lambda r: model_table(r, "1.3b"),
    "memory-exactness": exactness,
    "memory-targets": targets,
    "memory-costs": costs,
    "memory-smoke": smoke,
    "readme-h100": readme_h100,
    "readme-bench": readme_bench,
    "tiny-rates": tiny_rates,
    "tiny-cost": tiny_cost,
    "tiny-training": tiny_training,
    "mutation-score": mutation_score,
}


def render(text: str, records: Records) -> str:
    """``text`` with the body of every generated block replaced by what its generator makes of ``records``.

    >>> doc = "Intro.\\n<!-- generated: readme-bench (python -m benchmarks.figures) -->\\nold\\n"
    >>> doc += "<!-- end generated: readme-bench -->\\nOutro."
    >>> render(doc, Records(memory={})).splitlines()[2]
    'No benchmark record is committed.'
    """
    out, pos = [], 0
    for start in START.finditer(text):
        name = start["name"]
        if name not in BLOCKS:
            raise ValueError(f"unknown generated block {name!r}")
        end_marker = f"<!-- end generated: {name} -->"
        end = text.find(end_marker, start.end())
        if end < 0:
            raise ValueError(f"generated block {name!r} has no {end_marker!r}")
        out.append(text[pos:start.end()] + "\n" + wrap(BLOCKS[name](records).strip()) + "\n")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def wrap(markdown: str, width: int = WIDTH) -> str:
    """Prose paragraphs and list items filled to ``width`` columns, as the hand-written text around them is;
    tables, headings and code are left as they are.

    >>> print(wrap("- one two three four", width=12))
    - one two
      three four
    """
    out = []
    for paragraph in markdown.split("\n\n"):
        lines = paragraph.split("\n")
        if paragraph.startswith(("|", "#", "```", "<!--")):
            out.append(paragraph)
        elif all(line.startswith("- ") for line in lines):
            out.append("\n".join(textwrap.fill(line, width, subsequent_indent="  ", break_long_words=False,
                                                break_on_hyphens=False) for line in lines))
        else:
            out.append(textwrap.fill(" ".join(lines), width, break_long_words=False, break_on_hyphens=False))
    return "\n\n".join(out)


def blocks_in(text: str) -> list[str]:
    """The names of the generated blocks in ``text``, in order."""
    return [m["name"] for m in START.finditer(text)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a document is stale")
    args = parser.parse_args(argv)
    records = load()
    stale = []
    for name in DOCUMENTS:
        path = ROOT / name
        text = path.read_text()
        new = render(text, records)
        if new != text:
            stale.append(name)
            if not args.check:
                path.write_text(new)
    if args.check:
        for name in stale:
            print(f"{name}: generated blocks differ from the records; run `{COMMAND}`", file=sys.stderr)
        return 1 if stale else 0
    print("rewrote " + (", ".join(stale) if stale else "nothing (all up to date)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
