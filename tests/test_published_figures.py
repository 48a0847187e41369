"""Every published figure is regenerated from the committed raw records and compared with the committed documents.

A hand edit of a figure, a record changed without regenerating, or a measurement typed into prose outside a
generated block fails here. The fixes: ``python -m benchmarks.figures`` (README.md, docs/memory.md),
``python -m benchmarks.records <run dir>`` (records made from logs), ``python -m lightcache bench --from-results
--out docs/benchmarks --doc docs/benchmarks.md`` (the benchmark page), or the benchmark that wrote the page.
"""

from __future__ import annotations

import copy
import doctest
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import figures, records  # noqa: E402
from lightcache.bench.report import format_percent, percent_change  # noqa: E402

DOCS = ROOT / "docs"
RUN_DIR = figures.RUN_DIR


@pytest.fixture(scope="module")
def committed():
    return figures.load()


# --- the documents against their records ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", figures.DOCUMENTS)
def test_every_generated_block_equals_what_its_records_give(name, committed):
    text = (ROOT / name).read_text()
    assert figures.blocks_in(text), f"{name} has no generated block"
    regenerated = figures.render(text, committed)
    for block in figures.blocks_in(text):
        assert _body(regenerated, block) == _body(text, block), (
            f"{name}: block {block!r} differs from its records; run `python -m benchmarks.figures`")
    assert regenerated == text


def test_every_generator_is_used_once_across_the_documents():
    names = [b for doc in figures.DOCUMENTS for b in figures.blocks_in((ROOT / doc).read_text())]
    assert sorted(names) == sorted(figures.BLOCKS)


@pytest.mark.parametrize("name", figures.DOCUMENTS)
def test_each_document_says_visibly_how_its_figures_are_made(name):
    visible = re.sub(r"<!--.*?-->", "", (ROOT / name).read_text(), flags=re.S)
    assert figures.COMMAND in visible


def test_a_hand_edited_figure_fails(committed):
    text = (DOCS / "memory.md").read_text()
    assert "+13.8 %" in text
    assert figures.render(text.replace("+13.8 %", "+13 %", 1), committed) != text.replace("+13.8 %", "+13 %", 1)


def test_a_changed_record_fails(committed):
    text = (DOCS / "memory.md").read_text()
    changed = copy.deepcopy(committed)
    three = next(c for c in changed.memory["run1-1.3b-all"]["models"]["1.3b"]["configs"] if c["config"] == "all_three")
    three["stages"]["denoise"]["seconds"] *= 1.01
    assert figures.render(text, changed) != text


def test_a_record_removed_fails(committed):
    text = (ROOT / "README.md").read_text()
    fewer = copy.deepcopy(committed)
    del fewer.memory["run3-1.3b-steady"]
    assert figures.render(text, fewer) != text


# Figures outside generated blocks that are not measurements of this project, each with why it may stay.
NOT_MEASUREMENTS = {
    "10 MB": "the app's upload limit, a setting",
    "2.54x": "the EasyCache paper's own result, cited as such",
    "25.24 dB": "the EasyCache paper's own result, cited as such",
    "1904 s": "xDiT's published HunyuanVideo latency on one H100, cited as such",
    "338 s": "xDiT's published HunyuanVideo latency on eight H100s, cited as such",
    "1.96x": "diffusers' published ring-against-Ulysses time on four H100s, cited as such",
    "1.25x": "diffusers' published ring-against-Ulysses time on four L20s, cited as such",
}
MODEL_CARD = "lightcache/data/tiny-wan/MODEL_CARD.md"
# The same, allowed in one document only.
NOT_MEASUREMENTS_IN = {
    MODEL_CARD: {
        "8x": "the VAE's spatial compression, its architecture",
        "4x": "the VAE's temporal compression, its architecture",
        "50%": "the synthetic clips' travel (35-50% of the frame), a setting of the data",
        "5x": "a loss weight of the training recipe, a setting",
    },
    "README.md": {"5s": "part of a checkpoint's name (Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers), not a measurement"},
}
# "8x" but not "128 x 128": a size's "x" is followed by the next dimension.
FIGURE = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)?\s?"
                    r"(?:GiB|MiB|KiB|GB|MB|%|x\b(?!\s?\d)|dB|ms\b|s\b|seconds|minutes?)")
# A count in words ("three of four squares stayed square") is a measured rate as much as "75 %" is.
_SMALL = r"(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)"
COUNT = re.compile(rf"\b{_SMALL}\s+(?:of|in|out of)\s+{_SMALL}\b", re.I)
# Documents written whole by a generator are checked against it by the tests above and below.
WHOLLY_GENERATED = {"benchmarks.md", "hook-overhead-gpu.md", "memory-gpu.md", "memory-smoke.md"}


def typed_figures(text: str, allowed=()) -> list[str]:
    """Measurement-like figures in ``text`` outside generated blocks and code blocks, less the ``allowed`` ones."""
    text = re.sub(r"<!-- generated: (\S+) .*?<!-- end generated: \1 -->", "", text, flags=re.S)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    found = [m.group() for pattern in (FIGURE, COUNT) for m in pattern.finditer(text)]
    return [f for f in found if f not in NOT_MEASUREMENTS and f not in allowed]


@pytest.mark.parametrize("path", ["README.md", MODEL_CARD, *sorted(
    str(p.relative_to(ROOT)) for p in DOCS.glob("*.md") if p.name not in WHOLLY_GENERATED)])
def test_no_measurement_is_typed_by_hand(path):
    typed = typed_figures((ROOT / path).read_text(), NOT_MEASUREMENTS_IN.get(path, {}))
    assert not typed, f"{path}: figures typed outside a generated block: {typed}"


def test_the_figure_pattern_finds_typed_measurements():
    found = [m.group() for m in FIGURE.finditer("denoise +13 %, decode 1.48x, 4.70 GiB, 49.9 dB, 2-3 s, 0.6 s")]
    assert found == ["+13 %", "1.48x", "4.70 GiB", "49.9 dB", "3 s", "0.6 s"]
    assert not FIGURE.findall("a 128 x 128 x 17 video, 8 x 8 pixels")


def test_the_model_card_is_read_and_a_sentence_no_record_backs_fails():
    card = (ROOT / MODEL_CARD).read_text()
    allowed = NOT_MEASUREMENTS_IN[MODEL_CARD]
    assert not typed_figures(card, allowed)
    for sentence in ("The VAE alone kept the asked shape in only 62 % of clips.",
                     "From s = 0.2 to 0.6 three of four squares stayed square."):
        assert typed_figures(card + "\n" + sentence + "\n", allowed), sentence
    # The same sentence inside the card's generated block is the generator's business, not a typed figure.
    block = "<!-- generated: tiny-rates (python -m benchmarks.figures) -->"
    assert not typed_figures(card.replace(block, block + "\n62 % of clips", 1), allowed)


# --- records made from logs ------------------------------------------------------------------------------------------
LOGS = sorted(RUN_DIR.glob("*.log"))


@pytest.mark.parametrize("log", LOGS, ids=[p.name for p in LOGS])
def test_each_log_has_the_record_made_from_it(log):
    record = log.with_suffix(".json")
    assert record.is_file(), f"run `python -m benchmarks.records {RUN_DIR.relative_to(ROOT)}`"
    assert record.read_text() == records.dumps(records.from_log(log.read_text(), log.name))


def test_a_memory_log_becomes_the_benchmarks_own_schema_without_invented_figures():
    log = ("exactness (fp32, small shape): {'chunking_fp32': 1e-07, 'sliced_decode_fp32': 0.0}\n"
           "Wan2.1-1.3B plain: denoise 1.27 s, +1541.8 MiB over 3274.2 MiB, decode 3.24 s, +8966.2 MiB over 3274.2 MiB"
           " (20 s)\n"
           "Wan2.1-1.3B sliced_decode: decode 4.64 s, +588.1 MiB over 3274.2 MiB (9 s)\n"
           "Wan2.1-1.3B diffusers_group_offload:  [diffusers' streamed group offloading needs a CUDA device; skipped.]"
           " (0 s)\n")
    record = records.from_log(log, "x.log")
    configs = {c["config"]: c for c in record["models"]["1.3b"]["configs"]}
    plain = configs["plain"]["stages"]
    assert plain["denoise"]["seconds"] == 1.27 and plain["decode"]["over_bytes"] == int(8966.2 * 2**20)
    assert plain["denoise"]["peak_bytes"] == plain["denoise"]["resident_bytes"] + plain["denoise"]["over_bytes"]
    assert plain["denoise"]["weights_resident_bytes"] is None and configs["plain"]["setup_seconds"] is None
    assert configs["plain"]["max_abs_diff"] == {} and record["gpu"] is None and "gpu" in record["not_in_log"]
    # Sliced decoding's end-to-end peak is plain's denoise peak, the larger one here, as the benchmark computes it.
    assert configs["sliced_decode"]["end_to_end_peak_bytes"] == plain["denoise"]["peak_bytes"]
    assert configs["diffusers_group_offload"]["stages"] == {}
    assert "needs a CUDA device" in configs["diffusers_group_offload"]["notes"][0]
    assert record["exactness_fp32"] == {"chunking_fp32": 1e-07, "sliced_decode_fp32": 0.0}


def test_a_swap_setup_log_keeps_first_and_reused_runs_apart():
    log = ("# a comment\n14b build 1.8\n"
           "14b run 0: apply 42.4 s (reused pinned copy: False), remove 0.8 s, on GPU 27.24 GiB\n"
           "Wan2.1-14B run 1: apply 0.6 s (reused pinned copy: ['transformer']), remove 0.8 s, on GPU 27.24 GiB\n"
           "released the kept copy: 26.18 GiB\n")
    record = records.from_log(log, "s.log")
    runs = record["models"]["14b"]["runs"]
    assert [(r["apply_seconds"], r["reused"]) for r in runs] == [(42.4, False), (0.6, True)]
    assert record["models"]["14b"]["released_gib"] == 26.18 and record["comments"] == ["a comment"]


def test_figures_typed_in_a_log_comment_are_never_published():
    # A comment is typed by hand after the run; only the lines the run printed are measurements.
    log = ("14b build 1.8\n14b run 0: apply 42.4 s (reused pinned copy: False), remove 0.8 s, on GPU 27.24 GiB\n"
           "# Before the change (same script, run 5): apply 44.7 s, 46.7 s, 48.0 s (never reused); 1.3B: 3.1 s.\n")
    record = records.from_log(log, "s.log")
    fields = json.dumps({k: v for k, v in record.items() if k != "comments"})
    assert "42.4" in fields and "44.7" not in fields and "3.1" not in fields
    text = figures._setup_sentences(figures.Records(memory={}, swap_setup={"s": record}))
    assert "42.4 s at 14B (1 timing: `s` first run)" in text
    assert "44.7" not in text and "48.0" not in text and "1.3B" not in text


def test_an_unknown_log_is_refused():
    with pytest.raises(ValueError, match="not a log this module knows"):
        records.from_log("hello\n", "x.log")


# --- documents other generators write --------------------------------------------------------------------------------
def test_memory_gpu_page_is_the_merge_of_run_3(tmp_path):
    from benchmarks.memory import merge

    merge([RUN_DIR / "run3-1.3b-steady.json", RUN_DIR / "run3-14b.json"], tmp_path)
    assert json.loads((tmp_path / "memory-gpu.json").read_text()) == json.loads((DOCS / "memory-gpu.json").read_text())
    assert (tmp_path / "memory-gpu.md").read_text() == (DOCS / "memory-gpu.md").read_text()


@pytest.mark.parametrize("page", [p for p in [*RUN_DIR.glob("*.md"), DOCS / "memory-smoke.md"]
                                  if p.with_suffix(".json").is_file()], ids=lambda p: p.name)
def test_memory_tables_beside_their_records(page):
    from benchmarks.memory import table

    data = json.loads(page.with_suffix(".json").read_text())
    assert page.read_text() == table(data["models"], data["mode"]) + "\n"


def test_hook_overhead_page_is_its_record():
    from benchmarks.hook_overhead import markdown

    assert (DOCS / "hook-overhead-gpu.md").read_text() == markdown(json.loads((DOCS / "hook-overhead-gpu.json")
                                                                              .read_text()))


def test_benchmark_page_and_table_are_their_results():
    from lightcache.bench.report import benchmarks_doc, results_table
    from lightcache.bench.results import read_results

    folder = DOCS / "benchmarks"
    results = read_results(folder / "results.json")
    chart = {"html": "speed_vs_psnr.html", "png": "speed_vs_psnr.png" if (folder / "speed_vs_psnr.png").is_file()
             else None}
    assert (DOCS / "benchmarks.md").read_text() == benchmarks_doc(results, results["command"], chart, "benchmarks")
    assert (folder / "table.md").read_text() == results_table(results) + "\n"
    assert not (folder / "analysis.md").exists(), "the analysis is generated into the page, not typed beside it"


# --- the generator's rules, on small records -------------------------------------------------------------------------
@pytest.mark.parametrize("value, signed, text", [
    (13.77, True, "+13.8 %"), (9.6, True, "+9.6 %"), (47.604, True, "+47.6 %"), (7.25, False, "7.3 %"),
    (-7.25, True, "-7.3 %"), (0.62, True, "+0.62 %"), (-0.1182, True, "-0.12 %"), (0.0318, False, "0.032 %"),
    (0.99999, False, "1.0 %"), (0.0, True, "0.0 %"), (-0.0001, False, "-0.00010 %"), (None, True, "-"),
])
def test_one_rounding_rule_for_every_percentage(value, signed, text):
    assert format_percent(value, signed=signed) == text


def test_percent_change_is_against_the_old_figure():
    assert percent_change(1.44, 1.2) == pytest.approx(20.0)
    assert percent_change(1.2, 1.44) == pytest.approx(-16.667, abs=1e-3)


def _config(name, denoise=None, decode=None, e2e=None, notes=(), diff=None, setup=0.0, weights=None):
    stages = {}
    for stage, values in (("denoise", denoise), ("decode", decode)):
        if values is not None:
            seconds, resident, over = values
            stages[stage] = {"seconds": seconds, "resident_bytes": resident, "over_bytes": over,
                             "peak_bytes": resident + over, "call_seconds": [],
                             "weights_resident_bytes": weights if stage == "denoise" else None}
    peak = e2e if e2e is not None else max(s["peak_bytes"] for s in stages.values())
    return {"config": name, "stages": stages, "setup_seconds": setup, "end_to_end_peak_bytes": peak,
            "max_abs_diff": diff if diff is not None else {s: 0.0 for s in stages}, "notes": list(notes)}


G = 2**30


def _record(*configs, slices=16):
    spec = {"name": "Wan2.1-1.3B", "height": 480, "width": 832, "frames": 81, "chunks": 8, "slices": slices,
            "steps": 1}
    return {"mode": "gpu", "gpu": "GPU", "torch": "t", "models": {"1.3b": {"spec": spec, "device": "GPU",
                                                                          "configs": list(configs)}}}


def _plain(denoise_s=1.0):
    return _config("plain", (denoise_s, 3 * G, 1 * G), (3.0, 3 * G, 9 * G), weights=2 * G)


def test_end_to_end_peak_names_the_stage_it_comes_from():
    plain = _plain()
    borrowed = _config("sliced_decode", decode=(4.0, 3 * G, 1 * G // 2), e2e=4 * G,
                       notes=["sliced_decode: end-to-end peak uses the plain denoise stage, which it leaves unchanged."])
    own = _config("sliced_decode", decode=(3.5, 3 * G, 2 * G),
                  notes=["sliced_decode: end-to-end peak uses the plain denoise stage, which it leaves unchanged."])
    assert figures.peak_cell(borrowed, plain) == "4.00 GiB (plain's denoise)"
    assert figures.peak_cell(own, plain) == "5.00 GiB (decode)"
    broken = dict(own, end_to_end_peak_bytes=7 * G)
    with pytest.raises(ValueError, match="is none of its stages' peaks"):
        figures.peak_cell(broken, plain)


def _records(*memory):
    return figures.Records(memory={f"run{i + 1}-1.3b": m for i, m in enumerate(memory)})


def test_percentages_compare_with_the_plain_run_of_the_same_record():
    recs = _records(_record(_plain(1.0), _config("all_three", (1.2, 0, G), (4.0, 0, G))),
                    _record(_plain(2.0), _config("all_three", (2.2, 0, G), (4.0, 0, G))))
    table = figures.model_table(recs, "1.3b")
    assert "| `run1-1.3b` | all three, 16 bands | 1.20 (+20.0 %) |" in table
    assert "| `run2-1.3b` | all three, 16 bands | 2.20 (+10.0 %) |" in table


def test_runs_that_disagree_beyond_plains_spread_are_both_published_and_flagged():
    disagree = _records(_record(_plain(1.0), _config("all_three", (1.1, 0, G), (4.0, 0, G))),
                        _record(_plain(1.01), _config("all_three", (1.5, 0, G), (4.0, 0, G))))
    agree = _records(_record(_plain(1.0), _config("all_three", (1.10, 0, G), (4.0, 0, G))),
                     _record(_plain(1.05), _config("all_three", (1.16, 0, G), (4.0, 0, G))))
    text = figures.model_table(disagree, "1.3b")
    assert "The records disagree" in text and "+10.0 % (`run1-1.3b`) and +48.5 % (`run2-1.3b`)" in text
    assert "rerun" in text and "rerun" in figures.readme_h100(disagree)
    assert "within plain's own spread" in figures.model_table(agree, "1.3b")
    assert "disagree" not in figures.readme_h100(agree)


def test_exactness_claims_only_what_the_records_compare():
    recs = _records(_record(_plain(), _config("chunking", (1.1, 3 * G, G // 2), e2e=12 * G),
                            _config("async_swap", (1.05, 0, G), (3.0, 0, 9 * G), diff={})))
    text = figures.exactness(recs)
    assert "bit-identical to plain (bf16) in 1 of the 1 configurations" in text
    assert "asynchronous swapping at 1.3B (`run1-1.3b`)" in text and "awaits a recorded run" in text
    assert "No output of the GPU tests" in text and "passed" not in text


def test_a_recorded_gpu_test_run_is_reported_as_recorded():
    recs = _records(_record(_plain()))
    recs.gpu_tests = {"pytest-gpu.xml": figures.junit_summary(
        '<testsuite tests="7" failures="0" errors="0" skipped="1"/>')}
    assert "6 passed, 0 failed, 0 errors, 1 skipped" in figures.exactness(recs)


def test_swapping_target_never_joins_figures_of_two_records():
    swap = _config("async_swap", (1.03, 0, G), (3.0, 0, 9 * G))  # weights on the GPU not recorded
    offload = _config("diffusers_group_offload", (1.5, 0, G), weights=G // 4)
    recs = figures.Records(memory={"run1-14b": _record14(_plain(), swap), "run2-14b": _record14(_plain(), offload)})
    row = next(line for line in figures.targets(recs).splitlines() if "weights on the GPU during denoise" in line)
    assert "time +3.0 % (`run1-14b`); weights on the GPU not recorded there" in row
    assert "0.25 GiB in `run2-14b`" in row and row.endswith("| time yes; memory not measured for swapping itself |")


def _record14(*configs):
    data = _record(*configs)
    data["models"] = {"14b": dict(data["models"]["1.3b"], spec=dict(data["models"]["1.3b"]["spec"],
                                                                      name="Wan2.1-14B"))}
    return data


@pytest.mark.parametrize("memory, time, verdict", [
    ([True], [True], "yes"), ([True, False], [False, True], "no: each half is met by a different band count"),
    ([True], [False], "memory yes, time no"), ([False], [True], "time yes, memory no"), ([False], [False], "no"),
])
def test_targets_with_two_halves(memory, time, verdict):
    assert figures._both(memory, time, "band count") == verdict


def test_blocks_need_their_end_marker_and_a_known_name():
    start = "<!-- generated: {} (python -m benchmarks.figures) -->\n"
    with pytest.raises(ValueError, match="has no"):
        figures.render(start.format("readme-bench") + "text\n", figures.Records(memory={}))
    with pytest.raises(ValueError, match="unknown generated block"):
        figures.render(start.format("nothing-here") + "<!-- end generated: nothing-here -->",
                       figures.Records(memory={}))


# --- the mutation record (docs/testing.md) ------------------------------------------------------------------------
def test_every_mutant_left_alive_has_a_reason_and_every_reason_a_mutant(committed):
    run = committed.mutation["mutation"]
    reasons = committed.mutation["mutation-reasons"]["reasons"]
    alive = [k for k, v in run["results"].items() if v in figures.ALIVE]
    assert not [k for k in alive if figures.reason_for(k, reasons) is None], "add a reason to mutation-reasons.json"
    used = {id(figures.reason_for(k, reasons)) for k in alive}
    assert not [r["why"] for r in reasons if id(r) not in used], "a reason in mutation-reasons.json matches nothing"


def test_the_recorded_mutation_run_is_complete_and_covers_the_named_functions(committed):
    run = committed.mutation["mutation"]
    assert run["complete"] and None not in run["results"].values()
    sys.path.insert(0, str(ROOT / "scripts"))
    import mutation

    assert tuple(run["functions"]) == mutation.FUNCTIONS
    assert {mutation.function_of(k) for k in run["results"]} <= set(run["function_hashes"])


def test_the_score_counts_timeouts_as_caught_and_lists_survivors_by_reason():
    run = {"date": "d", "commit": "0" * 40, "tool": "mutmut", "command": "c", "complete": True,
           "function_hashes": {"lightcache.calls.x_f": "h"},
           "results": {"lightcache.calls.x_f__mutmut_1": "killed", "lightcache.calls.x_f__mutmut_2": "timeout",
                       "lightcache.calls.x_f__mutmut_3": "survived", "lightcache.calls.x_f__mutmut_4": "killed"}}
    reasons = {"reasons": [{"mutants": ["lightcache.calls.x_f__mutmut_3"], "why": "Equivalent."}]}
    text = figures.mutation_score(figures.Records(memory={}, mutation={"mutation": run, "mutation-reasons": reasons}))
    assert "| `lightcache.calls` | 4 | 2 | 1 | 1 | 0 | 75.0 % |" in text
    assert "- Equivalent. (1: `lightcache.calls.x_f` 3)" in text
    assert "NO REASON" not in text


@pytest.mark.parametrize("module", [figures, records], ids=["figures", "records"])
def test_doctests(module):
    # benchmarks/ is outside pytest's doctest collection (its GPU modules are not collected), so run them here.
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def _body(text: str, block: str) -> str:
    start = text.index(f"<!-- generated: {block} ")
    return text[start:text.index(f"<!-- end generated: {block} -->", start)]
