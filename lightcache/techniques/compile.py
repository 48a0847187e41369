"""torch.compile for the denoisers' repeated blocks, underneath every other hook, and how to tell when it compiles.

**What is compiled.** Each transformer block, the way diffusers' ``compile_repeated_blocks`` picks them: the
submodules whose class the model names in ``_repeated_blocks`` (``WanTransformerBlock`` for Wan), else the model's
block list. Regional compilation compiles one graph that every block of the same class and shape reuses (torch
treats the weights as inputs), so its cost does not grow with the depth of the model, and every denoiser of a
pipeline (both experts of Wan2.2 A14B) shares it.

**Where the graph boundary sits.** A block is not compiled with ``module.compile()`` (what ``compile_repeated_blocks``
does): that compiles the module's whole ``__call__``, which runs every diffusers hook registered on the block, so
diffusers' group offloading (what asynchronous swapping streams the blocks with) would be traced as well; its
``onload_`` and ``offload_`` are ``torch.compiler.disable``d (graph breaks around every block) and its per-group
state (the lazy-prefetch tracer removed after the first call, ``non_blocking`` switched on then) becomes guards,
which is how group offloading and compile clash in diffusers' issues. Instead a hook of its own, registered right
after feature chunking and before any other, calls a ``torch.compile``d version of what lies beneath it: the block's
forward, or feature chunking's sliced forward. The graph is exactly the block's arithmetic; group offloading moves
the weights outside it, in plain Python, and the compiled code reads them as inputs wherever they are.

**Why nothing recompiles from step to step.** The per-call decisions (EasyCache, the call locator, the trace, stop
requests) live in Python hooks on the whole model, outside every graph, and reach a block only through tensors: a
step's timestep arrives as the ``temb`` tensor, never as a Python number a guard could specialise on. The default
``dynamic=False`` compiles for the run's exact shapes, which stay the same over a run (both guidance branches, both
experts); a new video size compiles once more. ``torch._dynamo.config.recompile_limit`` (8 by default) bounds how
many sizes and configurations one process compiles before torch falls back to eager for the rest.

Removing it removes the hook: the blocks are what they were (``_compiled_call_impl`` is never touched), and the next
run without compile runs eagerly. The compiled code stays in torch's cache, keyed by the code it came from, so a
later run with compile on at the same size reuses it instead of compiling again.

Example (``find_repeated_blocks`` only: compiling takes tens of seconds on a CPU):
    >>> from lightcache.techniques.compile import CompileConfig, find_repeated_blocks
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> blocks = find_repeated_blocks(build_tiny_pipeline(seed=0).transformer)
    >>> len(blocks), type(blocks[0]).__name__
    (2, 'WanTransformerBlock')
    >>> CompileConfig().dynamic, CompileConfig().backend
    (False, 'inductor')
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple

import torch
from diffusers.hooks import HookRegistry, ModelHook

from ..errors import LightcacheError

COMPILE_HOOK = "lightcache_compile"
#: The only hook that may sit underneath the compile hook on a block: it replaces the innermost forward.
_BENEATH = frozenset({"lightcache_feature_chunking"})
#: Modes that make inductor record CUDA graphs, which replay fixed weight addresses.
CUDA_GRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})
_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Block lists the model names when it gives no ``_repeated_blocks`` (diffusers' usual attribute names).
_BLOCK_LISTS = ("blocks", "transformer_blocks", "single_transformer_blocks")


@dataclass(frozen=True)
class CompileConfig:
    """How the blocks are compiled; each field is passed to ``torch.compile`` as it is.

    Attributes:
        backend: ``"inductor"`` (needs a C++ compiler on a CPU, Triton on a GPU) or any ``torch.compile`` backend,
            a name or a callable.
        mode: inductor's mode (None: its default). ``"reduce-overhead"`` and ``"max-autotune"`` record CUDA graphs,
            which asynchronous swapping cannot take (it moves the weights on every call); they are refused with it.
        fullgraph: raise instead of splitting a block's graph where torch cannot trace (the blocks lightcache knows
            trace whole, so False costs nothing there and keeps other blocks working).
        dynamic: False compiles for the exact shapes of the run (fastest kernels; a new video size compiles again);
            None lets torch switch to shape-generic code after a size changes.
        options: inductor options (``torch.compile(options=...)``).
    """

    backend: str | Callable = "inductor"
    mode: str | None = None
    fullgraph: bool = False
    dynamic: bool | None = False
    options: Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self):
        if self.mode not in _MODES:
            raise LightcacheError(f"compile mode must be one of {', '.join(map(str, _MODES))}; got {self.mode!r}.")
        if not (isinstance(self.backend, str) or callable(self.backend)):
            raise LightcacheError(f"compile backend must be a name or a callable, got {self.backend!r}.")

    def torch_compile_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(backend=self.backend, fullgraph=self.fullgraph, dynamic=self.dynamic)
        if self.mode is not None:
            kwargs["mode"] = self.mode
        if self.options:
            kwargs["options"] = dict(self.options)
        return kwargs


class CompiledBlockHook(ModelHook):
    """Calls a ``torch.compile``d version of the forward beneath it. Made by :func:`apply_compile`."""

    def __init__(self, config: CompileConfig):
        super().__init__()
        self.config = config
        self.compiled: Callable | None = None

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        return self.compiled(*args, **kwargs)


@dataclass
class CompiledBlocks:
    """What :func:`apply_compile` compiled: ``denoiser name -> number of blocks`` and the config."""

    config: CompileConfig
    blocks: dict[str, int]

    def summary(self) -> dict[str, Any]:
        backend = self.config.backend if isinstance(self.config.backend, str) else getattr(
            self.config.backend, "__name__", type(self.config.backend).__name__)
        return {"blocks": dict(self.blocks), "backend": backend, "mode": self.config.mode,
                "dynamic": self.config.dynamic}


def find_repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks to compile: modules whose class ``model._repeated_blocks`` names, else its block list.

    A block nested inside another found block is left out: the outer one's graph already contains it.
    """
    names = set(getattr(model, "_repeated_blocks", None) or ())
    found = [m for m in model.modules() if m is not model and type(m).__name__ in names] if names else []
    if not found:
        for attribute in _BLOCK_LISTS:
            blocks = getattr(model, attribute, None)
            if isinstance(blocks, torch.nn.ModuleList):
                found.extend(blocks)
    inner = {id(sub) for block in found for sub in block.modules() if sub is not block}
    return [block for block in found if id(block) not in inner]


def apply_compile(denoisers: Mapping[str, torch.nn.Module], config: CompileConfig | None = None,
                  device: torch.device | str | None = None,
                  blocks_of: Callable[[torch.nn.Module], list[torch.nn.Module]] = find_repeated_blocks,
                  ) -> CompiledBlocks:
    """Compile the repeated blocks of every denoiser in ``denoisers`` (``name -> model``); returns what it did.

    Apply it after feature chunking and before any other hook on the blocks (group offloading). Raises
    :class:`LightcacheError`, compiling nothing, for a model already compiled, blocks that carry other hooks,
    a model without repeated blocks, or a machine without the compiler the backend needs on ``device``.
    """
    config = config if config is not None else CompileConfig()
    check_compiler_available(config.backend, device)
    plan: dict[str, list[torch.nn.Module]] = {}
    for name, model in denoisers.items():
        if _is_compiled(model):
            raise LightcacheError(
                f"The {name} is already compiled with torch.compile; lightcache's compile switch compiles its "
                "blocks itself. Pass the model uncompiled, or leave compile off."
            )
        blocks = blocks_of(model)
        if not blocks:
            raise LightcacheError(
                f"compile: the {name} ({type(model).__name__}) names no repeated blocks (_repeated_blocks) and has "
                "no block list to compile."
            )
        for block in blocks:
            if _is_compiled(block):
                raise LightcacheError(
                    f"The {name}'s blocks are already compiled (module.compile or compile_repeated_blocks); "
                    "lightcache's compile switch compiles them itself. Load the model uncompiled, or leave compile off."
                )
            registry = getattr(block, "_diffusers_hook", None)
            other = [h for h in (registry.hooks if registry is not None else ()) if h not in _BENEATH]
            if COMPILE_HOOK in other:
                raise LightcacheError(f"The {name}'s blocks are already compiled by lightcache; remove it first.")
            if other:
                raise LightcacheError(
                    f"The {name}'s blocks already carry {', '.join(other)}; compiling them now would trace those "
                    "hooks too. Apply compile before them (lightcache's own swapping is attached after it)."
                )
        plan[name] = blocks
    kwargs = config.torch_compile_kwargs()
    for name, blocks in plan.items():
        for block in blocks:
            registry = HookRegistry.check_if_exists_or_initialize(block)
            hook = CompiledBlockHook(config)
            registry.register_hook(hook, COMPILE_HOOK)
            # What lies beneath: the block's own forward, or feature chunking's. Compiling it (not the module's
            # __call__) keeps every hook registered later outside the graph.
            hook.compiled = torch.compile(hook.fn_ref.original_forward, **kwargs)
        HookRegistry.check_if_exists_or_initialize(denoisers[name]).invalidate_child_registries_cache()
    return CompiledBlocks(config=config, blocks={name: len(blocks) for name, blocks in plan.items()})


def remove_compile(*denoisers: torch.nn.Module) -> None:
    """Remove the compile hooks from every block of ``denoisers``; a no-op where there are none.

    Hooks registered after compile (group offloading) must be removed first: this raises :class:`RuntimeError`
    rather than unlink them.
    """
    for model in denoisers:
        registries = [r for r in (getattr(m, "_diffusers_hook", None) for m in model.modules())
                      if r is not None and COMPILE_HOOK in r.hooks]
        for registry in registries:
            later = list(registry.hooks)[list(registry.hooks).index(COMPILE_HOOK) + 1:]
            if later:
                raise RuntimeError(f"Remove the hooks applied after compile first ({', '.join(later)}), then compile.")
        for registry in registries:
            registry.remove_hook(COMPILE_HOOK, recurse=False)
        if registries:
            HookRegistry.check_if_exists_or_initialize(model).invalidate_child_registries_cache()


def compiled_block_count(model: torch.nn.Module) -> int:
    """How many of ``model``'s modules lightcache has compiled now."""
    return sum(1 for m in model.modules()
               if getattr(m, "_diffusers_hook", None) is not None and COMPILE_HOOK in m._diffusers_hook.hooks)


def check_compiler_available(backend: str | Callable, device: torch.device | str | None) -> None:
    """Raise :class:`LightcacheError` when inductor lacks what it needs to build code for ``device``.

    Without it the failure would come from deep inside the first denoiser call, after the text encoder ran.
    """
    if backend != "inductor":
        return
    kind = torch.device(device).type if device is not None else "cpu"
    if kind == "cuda" and importlib.util.find_spec("triton") is None:
        raise LightcacheError("compile on a GPU needs Triton (pip install triton), which is not installed.")
    if kind == "cpu":
        candidates = [os.environ.get("CXX"), "g++", "clang++", "c++"]
        if not any(c and shutil.which(c) for c in candidates):
            raise LightcacheError(
                "compile on the CPU needs a C++ compiler (g++ or clang++) for torch's inductor backend, and none "
                "was found; install one or leave compile off."
            )


class CompileActivity(NamedTuple):
    """How much torch has compiled so far in this process: frames converted and seconds spent compiling."""

    frames: int
    seconds: float

    def since(self, before: "CompileActivity") -> "CompileActivity":
        return CompileActivity(self.frames - before.frames, self.seconds - before.seconds)


def compile_activity() -> CompileActivity:
    """torch's own compile counters, read without importing anything (zero until torch.compile first runs).

    ``frames``: the frames dynamo has converted (one per graph it compiles, including recompiles); ``seconds``:
    the time its compile entry point took (tracing, guards and the backend's code generation). Read before and
    after a call, they tell whether the call compiled, from what torch did rather than from how long it took.
    """
    utils = sys.modules.get("torch._dynamo.utils")
    if utils is None:
        return CompileActivity(0, 0.0)
    frames = utils.counters.get("frames", {}).get("total", 0)
    seconds = sum(utils.compilation_time_metrics.get("_compile.compile_inner", ()))
    return CompileActivity(int(frames), float(seconds))


def _is_compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None or type(module).__name__ == "OptimizedModule"
