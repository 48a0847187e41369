"""Plant each of a list of known bugs in a copy of the project and check that its guarding tests fail.

mutmut (see docs/testing.md) only makes small local changes: it never deletes a statement or a call, so it cannot
make some of the bugs a careful reviewer would try first (a stream wait removed, a copy turned into a view, the
Stop button's ``cancels=`` dropped). Those are listed here, each with the tests that must catch it.

Usage::

    .venv/bin/python scripts/named_mutants.py            # every bug below; exit status 1 if one survives
    .venv/bin/python scripts/named_mutants.py host-store # only the bugs whose name contains "host-store"

Each bug runs in a fresh temporary copy of the tracked files, so the working tree is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Bug:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


BUGS = [
    Bug("easycache-reuses-at-tau", "lightcache/techniques/easycache.py", "if state.error < cfg.threshold:",
        "if state.error <= cfg.threshold:",
        ("tests/test_easycache.py::test_with_tau_zero_an_input_that_did_not_move_is_still_computed",)),
    Bug("easycache-error-not-accumulated", "lightcache/techniques/easycache.py", "state.error += eps",
        "state.error = eps",
        ("tests/test_easycache.py::test_the_error_accumulates_over_reused_steps_and_resets_once_it_reaches_tau",)),
    Bug("easycache-condition-channels-kept", "lightcache/techniques/easycache.py",
        "if n is None or hidden_states.shape[axis] == n:", "if True:",
        ("tests/test_easycache.py::test_only_the_noisy_latent_counts_when_condition_channels_are_appended",)),
    # The state's tensor properties are made when the module is imported, before mutmut chooses a mutant, so its
    # mutants of them can never be active; these two are planted here instead.
    Bug("easycache-state-reads-another-name", "lightcache/techniques/easycache.py", "return state.store.get(name)",
        "return state.store.get(None)",
        ("tests/test_easycache.py::test_the_state_keeps_its_tensors_in_its_store_under_their_names",)),
    Bug("easycache-state-never-forgets", "lightcache/techniques/easycache.py", "state.store.discard(name)", "pass",
        ("tests/test_easycache.py::test_the_state_keeps_its_tensors_in_its_store_under_their_names",)),
    Bug("no-context-step-stuck-at-0", "lightcache/calls.py", "return max(self._counted_step, 0)", "return 0",
        ("tests/test_calls.py::test_counting_without_a_scheduler_restarts_when_the_timestep_rises_or_on_reset",)),
    Bug("default-band-count-1", "lightcache/families/wan/vae_bands.py",
        "num_slices = max(1, min(16, length * total_scale(units) * patch // 64))", "num_slices = 1",
        ("tests/test_decode.py::test_the_default_is_one_band_per_64_decoded_pixels",
         "tests/test_memory_integration.py::test_the_default_band_count_cuts_a_wide_frame_into_several_bands")),
    Bug("host-store-keeps-views", "lightcache/techniques/decode.py", "self.items[key] = tensor.clone()",
        "self.items[key] = tensor",
        ("tests/test_decode.py::test_what_waits_between_bands_is_copied_not_viewed",)),
    Bug("host-store-no-wait-before-use", "lightcache/techniques/decode.py", "        current.wait_event(done)\n", "",
        ("tests/test_decode.py::test_the_host_store_orders_its_copies_on_the_streams",)),
    Bug("host-store-no-wait-before-copy", "lightcache/techniques/decode.py",
        "            self.stream.wait_event(produced)\n", "",
        ("tests/test_decode.py::test_the_host_store_orders_its_copies_on_the_streams",)),
    Bug("pinned-store-no-wait-before-use", "lightcache/techniques/swap.py", "            current.wait_event(arrived)\n",
        "", ("tests/test_swap.py::test_the_pinned_store_orders_its_copies_on_the_streams",)),
    Bug("swap-decode-stage-without-vae", "lightcache/techniques/swap.py", '"decode": vae}', '"decode": set()}',
        ("tests/test_swap.py::test_swapping_mechanics_on_a_stand_in_device",)),
    Bug("swap-no-group-offload", "lightcache/techniques/swap.py", "        if self.config.transformer:\n",
        "        if False:\n", ("tests/test_swap.py::test_swapping_mechanics_on_a_stand_in_device",)),
    Bug("closing-the-stream-does-not-cancel", "lightcache/app/jobs.py", "        cancel.set()\n", "        pass\n",
        ("tests/test_app.py::test_closing_a_jobs_update_stream_cancels_the_run",)),
    Bug("stop-button-without-cancels", "lightcache/app/layout.py", "cancels=[run_event], ", "",
        ("tests/test_app.py::test_the_stop_button_cancels_the_run_event",)),
]


def _copy_project(into: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _plant(bug: Bug, root: Path) -> None:
    path = root / bug.path
    text = path.read_text()
    if text.count(bug.old) != 1:
        raise SystemExit(f"{bug.name}: expected the text to change exactly once in {bug.path}; update this script")
    path.write_text(text.replace(bug.old, bug.new))


def main(argv: list[str]) -> int:
    chosen = [b for b in BUGS if not argv or any(word in b.name for word in argv)]
    survived = []
    for bug in chosen:
        with tempfile.TemporaryDirectory(prefix="named-mutant-") as tmp:
            root = Path(tmp)
            _copy_project(root)
            _plant(bug, root)
            proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                   "--no-header", *bug.tests], cwd=root, capture_output=True, text=True)
        # Exit status 1: tests ran and failed (caught); 0: they passed (survived); anything else: they did not run.
        verdict = {0: "SURVIVED", 1: "caught"}.get(proc.returncode, f"error {proc.returncode}")
        print(f"{verdict:>9}  {bug.name}", flush=True)
        if proc.returncode != 1:
            survived.append(bug.name)
            print(proc.stdout[-2000:] + proc.stderr[-2000:])
    print(f"{len(chosen) - len(survived)} of {len(chosen)} planted bugs caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
