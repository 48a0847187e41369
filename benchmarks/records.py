"""Turn benchmark output that was kept only as a text log into a JSON record beside it.

The published figures are generated from JSON records (:mod:`benchmarks.figures`). Some runs left only the lines
their command printed; this module reads those lines, exactly as printed, into JSON, and never adds a figure the
log does not hold: what a log lacks is ``null`` in the record and named in its ``not_in_log`` list. The log stays
in the repository and the record names it as its ``source``; ``tests/test_published_figures.py`` checks that every
record made from a log is what this module makes of that log today.

Three kinds of log are recognised by their lines:

* **memory**: what ``python -m benchmarks.memory`` prints while it runs (one line per configuration), turned into
  that benchmark's own JSON schema (``memory-gpu.json``), end-to-end peaks and targets computed by its own code;
* **swap setup**: what ``python -m benchmarks.swap_setup`` prints (apply and remove times run after run);
* **host memory**: ``free -g``'s ``Mem:`` row sampled every few seconds during a run, each line with the time in
  front and the GPU's memory in use (MiB) appended.

Usage::

    python -m benchmarks.records docs/gpu-runs/2026-11-22-h100    # writes <name>.json beside every <name>.log

Example:
    >>> record = from_log("Wan2.1-14B plain: denoise 24.69 s, +8209.3 MiB over 27962.6 MiB (48 s)", "run.log")
    >>> stage = record["models"]["14b"]["configs"][0]["stages"]["denoise"]
    >>> stage["seconds"], round(stage["over_bytes"] / 2**30, 2), record["not_in_log"][0]
    (24.69, 8.02, 'torch')
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

MIB = 2**20

# --- memory-benchmark logs ---------------------------------------------------------------------------------------
_MEMORY_LINE = re.compile(r"^(?P<model>.+?) (?P<config>[a-z0-9_]+): (?P<stages>.*?)(?P<notes>(?: \[[^\]]*\])*)"
                          r" \((?P<wall>\d+) s\)$")
_STAGE = re.compile(r"(?P<stage>[a-z_]+) (?P<seconds>-|\d+(?:\.\d+)?) s, \+(?P<over>\d+(?:\.\d+)?) MiB over "
                    r"(?P<resident>\d+(?:\.\d+)?) MiB")
_EXACTNESS = re.compile(r"^exactness \(fp32, small shape\): (?P<dict>\{.*\})$")

# --- swap-setup logs ---------------------------------------------------------------------------------------------
_SWAP_RUN = re.compile(r"^(?P<model>\S+) run (?P<run>\d+): apply (?P<apply>\d+(?:\.\d+)?) s \(reused pinned copy: "
                       r"(?P<reused>[^)]*)\), remove (?P<remove>\d+(?:\.\d+)?) s, on GPU (?P<on_gpu>\d+(?:\.\d+)?) GiB$")
_SWAP_BUILD = re.compile(r"^(?P<model>\S+) build (?P<seconds>\d+(?:\.\d+)?)$")
_SWAP_RELEASED = re.compile(r"^(?:(?P<model>\S+) released|released the kept copy:) (?P<gib>\d+(?:\.\d+)?) GiB$")

# --- host-memory logs --------------------------------------------------------------------------------------------
_HOST_LINE = re.compile(r"^(?P<time>\d\d:\d\d:\d\d) Mem:\s+(?P<total>\d+)\s+(?P<used>\d+)\s+(?P<free>\d+)\s+"
                        r"(?P<shared>\d+)\s+(?P<buff_cache>\d+)\s+(?P<available>\d+)\s+(?P<gpu>\d+) MiB$")
HOST_COLUMNS = {
    "total_gib": "free -g: total host memory",
    "used_gib": "free -g: used",
    "free_gib": "free -g: free",
    "shared_gib": "free -g: shared (pinned host memory shows here)",
    "buff_cache_gib": "free -g: buffers and page cache",
    "available_gib": "free -g: available",
    "gpu_used_mib": "the GPU's memory in use, MiB",
}


def kind_of(text: str) -> str:
    """Which kind of log ``text`` is: ``"memory"``, ``"swap_setup"`` or ``"host_memory"``.

    >>> kind_of("12:00:01 Mem: 125 0 123 0 1 125 0 MiB")
    'host_memory'
    """
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    for kind, pattern in (("host_memory", _HOST_LINE), ("swap_setup", _SWAP_RUN), ("memory", _MEMORY_LINE)):
        if lines and any(pattern.match(line) for line in lines):
            return kind
    raise ValueError("not a log this module knows: no line of a memory-benchmark, swap-setup or host-memory log")


def from_log(text: str, source: str) -> dict[str, Any]:
    """The JSON record of one log's ``text``; ``source`` is the log's file name, kept in the record."""
    kind = kind_of(text)
    return {"memory": _memory_record, "swap_setup": _swap_record, "host_memory": _host_record}[kind](text, source)


def _mib_bytes(text: str) -> int:
    # The log prints MiB to 0.1; bytes are what the JSON schema holds, so the record keeps the log's precision.
    return int(Decimal(text) * MIB)


def _model_key(name: str) -> str:
    from benchmarks.memory import MODELS

    for key, spec in MODELS.items():
        if name in (spec.name, key) or name.lower() == key:
            return key
    raise ValueError(f"unknown model {name!r} in the log")


def _memory_record(text: str, source: str) -> dict[str, Any]:
    from benchmarks.memory import MODELS, _fill_end_to_end, check_targets

    record: dict[str, Any] = {
        "mode": "gpu", "torch": None, "gpu": None, "source": source,
        "not_in_log": ["torch", "gpu", "setup_seconds", "call_seconds", "weights_resident_bytes", "max_abs_diff",
                       "spec chunks, slices and steps (the benchmark's defaults are assumed)"],
        "models": {},
    }
    configs: dict[str, list[dict[str, Any]]] = {}
    for line in text.splitlines():
        if m := _EXACTNESS.match(line):
            record["exactness_fp32"] = ast.literal_eval(m["dict"])
        elif m := _MEMORY_LINE.match(line):
            stages = {}
            for s in _STAGE.finditer(m["stages"]):
                resident, over = _mib_bytes(s["resident"]), _mib_bytes(s["over"])
                stages[s["stage"]] = {
                    "seconds": None if s["seconds"] == "-" else float(s["seconds"]), "resident_bytes": resident,
                    "peak_bytes": resident + over, "over_bytes": over, "call_seconds": [],
                    "weights_resident_bytes": None,
                }
            notes = re.findall(r"\[([^\]]*)\]", m["notes"])
            configs.setdefault(_model_key(m["model"]), []).append({
                "config": m["config"], "stages": stages, "setup_seconds": None, "end_to_end_peak_bytes": None,
                "max_abs_diff": {}, "notes": notes, "wall_seconds": int(m["wall"]),
            })
    for key, runs in configs.items():
        spec = MODELS[key]
        _fill_end_to_end(runs)
        record["models"][key] = {
            "spec": {"name": spec.name, "height": spec.height, "width": spec.width, "frames": spec.frames,
                     "chunks": spec.chunks, "slices": spec.slices, "steps": 1},
            "device": None, "configs": runs, "targets": check_targets(key, runs),
        }
    return record


def _swap_record(text: str, source: str) -> dict[str, Any]:
    # A comment line is kept as text only: figures typed into a comment (say, the timings of an earlier run whose
    # output was not kept) were never measured by the run this log records, so they never become a record's fields.
    record: dict[str, Any] = {"kind": "swap_setup", "source": source, "comments": [], "models": {}}

    def model(name: str) -> dict[str, Any]:
        return record["models"].setdefault(_model_key(name), {"build_seconds": None, "runs": [],
                                                              "released_gib": None})

    last = None
    for line in text.splitlines():
        if line.startswith("#"):
            record["comments"].append(line[1:].strip())
        elif m := _SWAP_BUILD.match(line):
            model(m["model"])["build_seconds"] = float(m["seconds"])
            last = _model_key(m["model"])
        elif m := _SWAP_RUN.match(line):
            reused = m["reused"].strip()
            model(m["model"])["runs"].append({
                "run": int(m["run"]), "apply_seconds": float(m["apply"]),
                "reused": reused not in ("False", "[]", ""), "remove_seconds": float(m["remove"]),
                "on_gpu_gib": float(m["on_gpu"])})
            last = _model_key(m["model"])
        elif m := _SWAP_RELEASED.match(line):
            key = _model_key(m["model"]) if m["model"] else last
            record["models"][key]["released_gib"] = float(m["gib"])
    return record


def _host_record(text: str, source: str) -> dict[str, Any]:
    samples = []
    for line in text.splitlines():
        if m := _HOST_LINE.match(line):
            samples.append({"time": m["time"], **{
                key: int(m[group]) for key, group in (
                    ("total_gib", "total"), ("used_gib", "used"), ("free_gib", "free"), ("shared_gib", "shared"),
                    ("buff_cache_gib", "buff_cache"), ("available_gib", "available"), ("gpu_used_mib", "gpu"))}})
    return {"kind": "host_memory", "source": source, "columns": HOST_COLUMNS, "samples": samples}


def convert(log: Path) -> Path:
    """Write ``log``'s record beside it (same name, ``.json``) and return its path."""
    out = log.with_suffix(".json")
    out.write_text(dumps(from_log(log.read_text(), log.name)))
    return out


def dumps(record: dict[str, Any]) -> str:
    """A record as the repository keeps it (the memory benchmark's own layout: one-space indents)."""
    return json.dumps(record, indent=1) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.records", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run directories holding .log files")
    args = parser.parse_args(argv)
    for directory in args.dirs:
        for log in sorted(directory.glob("*.log")):
            print(f"wrote {convert(log)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
