"""How long asynchronous swapping takes to set up and tear down, run after run, at a real model shape.

The first run with swapping copies the transformer's blocks into pinned host memory (diffusers' streamed group
offloading); later runs reuse that copy while the weights on the GPU are unchanged (see
:class:`lightcache.techniques.swap.PinnedWeights`). This applies and removes swapping ``--runs`` times on a Wan2.1
transformer with random weights and prints each time, whether the kept copy was reused, and what is on the GPU after
each run.

Usage::

    python -m benchmarks.swap_setup --model 14b      # CUDA GPU: Wan2.1-14B, three runs
"""

from __future__ import annotations

import argparse
import sys
import time
from types import SimpleNamespace

import torch

from benchmarks.memory import MODELS, build_models


def main(argv=None) -> int:
    from lightcache.families import adapter_named
    from lightcache.techniques.swap import apply_async_swap, release_pinned_weights, remove_async_swap

    parser = argparse.ArgumentParser(prog="python -m benchmarks.swap_setup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="14b")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: swapping only acts on a CUDA GPU; there is nothing to time without one.", file=sys.stderr)
        return 2
    device = torch.device("cuda", torch.cuda.current_device())
    transformer, vae = build_models(MODELS[args.model], device)
    pipe = SimpleNamespace(transformer=transformer, vae=vae, text_encoder=None, _execution_device=device)
    for run in range(args.runs):
        start = time.perf_counter()
        swap = apply_async_swap(pipe, device, adapter=adapter_named("wan"))
        torch.cuda.synchronize(device)
        applied = time.perf_counter() - start
        start = time.perf_counter()
        remove_async_swap(pipe)
        torch.cuda.synchronize(device)
        removed = time.perf_counter() - start
        print(f"{MODELS[args.model].name} run {run}: apply {applied:.1f} s (reused pinned copy: "
              f"{swap.reused_pinned_weights}), remove {removed:.1f} s, on GPU "
              f"{torch.cuda.memory_allocated(device) / 2**30:.2f} GiB", flush=True)
    print(f"released the kept copy: {release_pinned_weights(pipe) / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
