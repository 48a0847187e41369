"""The benchmark's results as plain data: per-run records, per-setting aggregates, Pareto fronts and targets.

``results.json`` has one record per method x setting x case (a case is one prompt and seed) and one aggregate per
method x setting. The key sets below are the schema; :func:`check_schema` enforces them on write, and the tests pin
them, so a consumer can rely on every key being present (values may be None where a figure does not apply).

Speed-ups are ``plain time / method time`` per case, side by side in one process; aggregates take the geometric
mean over cases. PSNR is in dB over the whole video against the plain video of the same case (``"inf"`` when
identical), SSIM on luma; aggregates take the mean over cases.

Example:
    >>> from lightcache.bench.results import pareto_front
    >>> pareto_front([(1.0, 30.0), (2.0, 25.0), (1.5, 20.0)])
    [True, True, False]
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import median
from typing import Any, Iterable, Sequence

from ..errors import LightcacheError
from ..events import json_safe

SCHEMA = "lightcache.bench/2"

TOP_KEYS = (
    "schema", "created", "command", "environment", "preset", "model", "model_sha256", "quick", "settings", "cases",
    "methods",
    "skipped", "records", "aggregates", "targets", "overhead", "checks", "notes",
)
RECORD_KEYS = (
    "method", "label", "kind", "setting", "params", "case", "prompt", "seed", "repeats",
    "denoise_seconds", "end_to_end_seconds", "denoise_samples", "end_to_end_samples",
    "speedup_denoise", "speedup_end_to_end", "calls_computed", "calls_reused", "work_fraction", "counts",
    "psnr_db", "ssim", "memory", "deterministic", "skip_check",
)
AGGREGATE_KEYS = (
    "method", "label", "kind", "setting", "params", "cases", "denoise_seconds", "end_to_end_seconds",
    "speedup_denoise", "speedup_end_to_end", "work_fraction", "psnr_db", "psnr_db_min", "ssim", "peak_bytes",
    "peak_increase_bytes", "pareto",
)
#: The speed axes a point can be compared on: measured denoise time, measured end-to-end time, counted work.
AXES = ("denoise", "end_to_end", "work")
BUILT_IN = "diffusers"
#: This project's EasyCache points, by method: the reference mode and the extrapolating one (order 1).
OURS = ("easycache", "easycache-order1")
TARGET_PCT = 2.0


# --- numbers -----------------------------------------------------------------------------------------------
def as_float(value: Any) -> float:
    """A JSON number or one of the strings json_safe writes (``"inf"``, ``"nan"``) as a float."""
    if value is None:
        return math.nan
    return float(value)


def geometric_mean(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def mean_psnr(values: Sequence[float]) -> float:
    """Mean PSNR over cases: infinite when every case is identical to plain; otherwise the mean of the finite ones
    (an identical case has no finite PSNR to add; leaving it out can only understate the mean)."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.inf


def speed(point: dict[str, Any], axis: str) -> float:
    """A point's speed on ``axis``: measured speed-up, or 1 / fraction of the work computed."""
    if axis == "work":
        fraction = point.get("work_fraction")
        return 1.0 / fraction if fraction else math.nan
    value = point.get(f"speedup_{axis}")
    return math.nan if value is None else float(value)


# --- Pareto ------------------------------------------------------------------------------------------------
def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (speed, quality) points: True where no other point is at least as good on both and better on one."""
    flags = []
    for i, (s, q) in enumerate(points):
        dominated = any(
            (s2 >= s and q2 >= q) and (s2 > s or q2 > q) for j, (s2, q2) in enumerate(points) if j != i
        )
        flags.append(not dominated and math.isfinite(s))
    return flags


def dominance(aggregates: list[dict[str, Any]], axis: str) -> dict[str, Any]:
    """Does some EasyCache point match or beat every built-in point on ``axis`` speed and PSNR at once?

    Returns the count of built-in points, how many are dominated, and for each one that is not, the EasyCache point
    that comes closest (the fastest one with at least its PSNR, else the one with the highest PSNR). On the work
    axis, where some point's work was not counted, ``dominated`` and ``holds`` are None and ``not_counted`` True.
    """
    ours = [a for a in aggregates if a["method"] in OURS]
    theirs = [a for a in aggregates if a["kind"] == BUILT_IN]
    if axis == "work" and any(a.get("work_fraction") is None for a in ours + theirs):
        # The work meter could not price this model's layers: no work axis, rather than a verdict made of gaps.
        return {"axis": axis, "built_in_points": len(theirs), "dominated": None, "holds": None, "exceptions": [],
                "not_counted": True}
    exceptions = []
    for b in theirs:
        sb, qb = speed(b, axis), as_float(b["psnr_db"])
        winners = [e for e in ours if speed(e, axis) >= sb and as_float(e["psnr_db"]) >= qb]
        if winners:
            continue
        at_quality = [e for e in ours if as_float(e["psnr_db"]) >= qb]
        nearest = (max(at_quality, key=lambda e: speed(e, axis)) if at_quality
                   else max(ours, key=lambda e: as_float(e["psnr_db"]), default=None))
        exceptions.append({
            "method": b["method"], "setting": b["setting"], "speed": sb, "psnr_db": b["psnr_db"],
            "nearest_easycache": None if nearest is None else {
                "setting": easycache_setting(nearest), "speed": speed(nearest, axis), "psnr_db": nearest["psnr_db"]},
        })
    return {"axis": axis, "built_in_points": len(theirs), "dominated": len(theirs) - len(exceptions),
            "holds": bool(theirs) and bool(ours) and not exceptions, "exceptions": exceptions}


def easycache_setting(point: dict[str, Any]) -> str:
    """An EasyCache point's setting, naming the order when it is not the reference's: ``order 1, tau=0.05``."""
    return point["setting"] if point["method"] == OURS[0] else f"order 1, {point['setting']}"


def dominance_per_case(records: list[dict[str, Any]], axis: str) -> list[dict[str, Any]]:
    """:func:`dominance` within each case (one prompt and seed) on its own: each record is its own point."""
    cases: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        cases.setdefault(r["case"], []).append(r)
    out = []
    for case, rs in cases.items():
        d = dominance(rs, axis)
        out.append({"case": case, "prompt": rs[0]["prompt"], "seed": rs[0]["seed"], **d})
    return out


# --- aggregation -------------------------------------------------------------------------------------------
def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One aggregate per method x setting, in the order the records first name them, with Pareto flags."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["method"], r["setting"]), []).append(r)
    out = []
    for (method, setting), rs in groups.items():
        psnrs = [as_float(r["psnr_db"]) for r in rs]
        fractions = [r["work_fraction"] for r in rs if r["work_fraction"] is not None]
        peaks: dict[str, int] = {}
        increases: dict[str, int] = {}
        for r in rs:
            for stage, mem in (r["memory"] or {}).items():
                for key, into in (("peak_bytes", peaks), ("increase_bytes", increases)):
                    if mem.get(key) is not None:
                        into[stage] = max(into.get(stage, 0), int(mem[key]))
        out.append({
            "method": method, "label": rs[0]["label"], "kind": rs[0]["kind"], "setting": setting,
            "params": rs[0]["params"], "cases": len(rs),
            "denoise_seconds": median(r["denoise_seconds"] for r in rs),
            "end_to_end_seconds": median(r["end_to_end_seconds"] for r in rs),
            "speedup_denoise": geometric_mean(r["speedup_denoise"] for r in rs),
            "speedup_end_to_end": geometric_mean(r["speedup_end_to_end"] for r in rs),
            "work_fraction": sum(fractions) / len(fractions) if fractions else None,
            "psnr_db": mean_psnr(psnrs),
            "psnr_db_min": min(psnrs),
            "ssim": sum(r["ssim"] for r in rs) / len(rs),
            "peak_bytes": peaks,
            "peak_increase_bytes": increases,
            "pareto": {},
        })
    for method in {a["method"] for a in out}:
        mine = [a for a in out if a["method"] == method]
        for axis in AXES:
            flags = pareto_front([(speed(a, axis), a["psnr_db"]) for a in mine])
            for a, flag in zip(mine, flags):
                a["pareto"][axis] = flag
    return out


def targets(aggregates: list[dict[str, Any]], overhead: dict[str, Any] | None) -> dict[str, Any]:
    """The project's targets, read off the results: Pareto dominance per axis and the two hook-overhead bounds."""
    result: dict[str, Any] = {"pareto_dominance": {axis: dominance(aggregates, axis) for axis in AXES}}
    if overhead:
        # Per computed call: the median of every call's wall time (hundreds of samples) is far steadier on a shared
        # machine than the median of a few whole denoise stages, which is reported beside it.
        result["tau0_overhead"] = _bound(overhead.get("call_overhead_pct"))
        result["reused_call_cost"] = _bound((overhead.get("reuse") or {}).get("ratio_pct"))
    else:
        result["tau0_overhead"] = result["reused_call_cost"] = _bound(None)
    return result


def _bound(value: float | None) -> dict[str, Any]:
    return {"value_pct": value, "target_pct": TARGET_PCT, "met": None if value is None else value <= TARGET_PCT}


# --- file --------------------------------------------------------------------------------------------------
def check_schema(results: dict[str, Any]) -> None:
    """Raise :class:`LightcacheError` naming the first missing or unexpected key."""
    _same_keys("results", results, TOP_KEYS)
    if results["schema"] != SCHEMA:
        raise LightcacheError(f"results.json has schema {results['schema']!r}; this version reads {SCHEMA!r}.")
    for i, record in enumerate(results["records"]):
        _same_keys(f"records[{i}]", record, RECORD_KEYS)
    for i, agg in enumerate(results["aggregates"]):
        _same_keys(f"aggregates[{i}]", agg, AGGREGATE_KEYS)


def _same_keys(where: str, data: dict[str, Any], keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in data]
    extra = [k for k in data if k not in keys]
    if missing or extra:
        raise LightcacheError(f"{where}: missing keys {missing}, unexpected keys {extra} (schema {SCHEMA}).")


def write_results(results: dict[str, Any], path: Path) -> None:
    check_schema(results)
    Path(path).write_text(json.dumps(json_safe(results), indent=1) + "\n")


def read_results(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise LightcacheError(f"No results file at {path}.")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LightcacheError(f"{path} is not valid JSON: {exc}.") from None
    if not isinstance(results, dict):
        raise LightcacheError(f"{path} does not hold a benchmark result.")
    check_schema(results)
    return results
