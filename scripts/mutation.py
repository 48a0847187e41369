"""Run the mutation tests on the core modules and keep their outcome as a committed record.

mutmut is configured in ``setup.cfg`` (which modules it may mutate, which test files it runs); this script names
the functions of those modules that are mutated, so the run, its record and ``docs/testing.md`` agree on what was
covered. Run from the project root, by hand (hours on a laptop CPU, so never in CI)::

    .venv/bin/python scripts/mutation.py run                # mutmut run on FUNCTIONS, 2 workers
    .venv/bin/python scripts/mutation.py run --undecided    # only the mutants the last run left (it resumes)
    .venv/bin/python scripts/mutation.py run --survivors    # again only the survivors (after adding tests)
    .venv/bin/python scripts/mutation.py record             # write docs/testing/mutation.json from mutants/
    .venv/bin/python -m benchmarks.figures                  # the score in docs/testing.md, from that record

mutmut keeps each mutant's outcome in ``mutants/**/*.meta``; ``record`` copies the outcome of every mutant of
FUNCTIONS into the record, with the commit and the tool version, so the published score needs nothing that git
ignores. Every surviving mutant needs a reason in ``docs/testing/mutation-reasons.json``
(``tests/test_published_figures.py`` checks that).
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "docs" / "testing" / "mutation.json"

#: The functions mutated, as mutmut names them (``module.x_function`` or ``module.xǁClassǁmethod``).
FUNCTIONS = (
    "lightcache.easycache.*",
    "lightcache.calls.*",
    "lightcache.decode.x_plan_slices__*",
    "lightcache.decode.x_decode_into__*",
    "lightcache.decode.xǁ_HostStoreǁ*",
    "lightcache.app.jobs.*",
    "lightcache.app.waiting.*",
    "lightcache.app.layout.x_run_job__*",
    "lightcache.app.layout.x_stop_job__*",
    "lightcache.app.layout.x__present__*",
    "lightcache.swap.xǁAsyncSwapǁ*",
    "lightcache.swap.xǁPinnedTensorStoreǁ*",
)

def function_hashes(mutants_dir: Path) -> dict[str, str]:
    """``function -> hash of its source`` as mutmut saw it: two records compare a function only if it is the same."""
    out = {}
    for meta in sorted(mutants_dir.rglob("*.meta")):
        module = meta.relative_to(mutants_dir).with_suffix("").with_suffix("").as_posix().replace("/", ".")
        for function, digest in json.loads(meta.read_text()).get("hash_by_function_name", {}).items():
            name = f"{module}.{function}"
            if any(fnmatch.fnmatch(name + "__mutmut_1", pattern) for pattern in FUNCTIONS):
                out[name] = digest
    return out


def outcomes(mutants_dir: Path) -> dict[str, str | None]:
    """``mutant name -> status`` (None: not run yet) for every mutant of FUNCTIONS that mutmut generated."""
    from mutmut.stats import status_by_exit_code  # mutmut's own names: killed, survived, no tests, timeout, ...

    out: dict[str, str | None] = {}
    for meta in sorted(mutants_dir.rglob("*.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if any(fnmatch.fnmatch(name, pattern) for pattern in FUNCTIONS):
                out[name] = None if code is None else status_by_exit_code[code]
    return out


def function_of(mutant: str) -> str:
    """The function a mutant belongs to.

    >>> function_of("lightcache.calls.xǁCallLocatorǁlocate__mutmut_12")
    'lightcache.calls.xǁCallLocatorǁlocate'
    """
    return mutant.rsplit("__mutmut_", 1)[0]


def _mutmut(names: list[str], workers: int) -> int:
    command = [str(Path(sys.executable).with_name("mutmut")), "run", "--max-children", str(workers), *names]
    # One torch thread per worker: workers that each start a thread per core fight over the cores and every test
    # runs several times slower (a mutant's time limit comes from the tests' times in one process).
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.call(command, cwd=ROOT, env=env)


def run(args: argparse.Namespace) -> int:
    if args.undecided or args.survivors:
        wanted = {None} if args.undecided else {"survived", "no tests", "timeout"}
        names = sorted(n for n, status in outcomes(ROOT / "mutants").items() if status in wanted)
        if not names:
            print("nothing to run: no mutant of the named functions is " + ("undecided" if args.undecided else
                                                                             "left alive"))
            return 0
        print(f"running {len(names)} mutants")
        return _mutmut(names, args.workers)  # a mutant given by name is run again, whatever its last outcome
    return _mutmut(list(FUNCTIONS), args.workers)


def record(args: argparse.Namespace) -> int:
    results = outcomes(args.mutants)
    undecided = sorted(n for n, s in results.items() if s is None)
    if undecided and not args.partial:
        print(f"{len(undecided)} mutants have not run yet (first: {undecided[0]}); finish the run "
              "(`run --undecided`) or pass --partial", file=sys.stderr)
        return 1
    # The commit of the working tree mutmut ran in (its source and its tests).
    commit = args.commit or subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.mutants.resolve().parent,
                                           capture_output=True, text=True).stdout.strip()
    data = {
        "kind": "mutation",
        "tool": f"mutmut {metadata.version('mutmut')}",
        "command": args.command_run,
        "commit": commit,
        "date": datetime.date.today().isoformat(),
        "functions": list(FUNCTIONS),
        "complete": not undecided,
        "function_hashes": function_hashes(args.mutants),
        "results": dict(sorted(results.items())),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}: {len(results)} mutants")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="mutmut run on the named functions")
    p_run.add_argument("--workers", type=int, default=2)
    which = p_run.add_mutually_exclusive_group()
    which.add_argument("--undecided", action="store_true", help="only the mutants not run yet")
    which.add_argument("--survivors", action="store_true", help="only the mutants left alive (survived, no tests, "
                                                                  "timed out)")
    p_rec = sub.add_parser("record", help="write the outcome of every mutant into the committed record")
    p_rec.add_argument("--out", type=Path, default=RECORD)
    p_rec.add_argument("--mutants", type=Path, default=ROOT / "mutants", help="mutmut's working copy")
    p_rec.add_argument("--commit", help="the commit mutmut ran on (default: that working tree's HEAD)")
    p_rec.add_argument("--command-run", default="python scripts/mutation.py run", help="how the run was started")
    p_rec.add_argument("--partial", action="store_true", help="record even though some mutants have not run")
    args = parser.parse_args(argv)
    return run(args) if args.command == "run" else record(args)


if __name__ == "__main__":
    sys.exit(main())
