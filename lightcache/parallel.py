"""Multi-process runs on diffusers' context parallelism: each transformer call split over N processes.

lightcache adds no parallelism of its own. diffusers 0.42 splits a transformer's token sequence over the processes
of a ``torch.distributed`` group (``ContextParallelConfig``, ``transformer.enable_parallelism``): **Ulysses**
exchanges attention heads with an all-to-all so every process attends over the whole sequence for its share of
the heads; **ring** passes keys and values round the processes and merges the partial results with their
log-sum-exp. Only model classes that carry a context-parallel plan (``_cp_plan``) can be split; this module checks
that and the shape limits before anything runs, turns it on and off for one pipeline, and keeps EasyCache's
decisions the same on every process.

* :func:`process_group` sets up the default process group from the launcher's environment (``torchrun`` sets
  ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``; gloo on a CPU, NCCL on CUDA) and tears it
  down with a barrier first: without it a process could leave while another still used the device-mesh subgroups.
* :func:`apply_context_parallel` turns diffusers' context parallelism on for every denoiser of a pipeline (both
  experts of Wan2.2 A14B, over one device mesh) and returns a :class:`ContextParallel` whose ``remove()`` turns it
  off again. Apply it *before* :func:`lightcache.accelerate.apply_lightcache`: lightcache's hooks then sit outside
  diffusers' split and gather, so EasyCache sees the whole input and the gathered output on every process.
* EasyCache across processes: each process sees the same input and output, so decisions agree by construction;
  but a process that ever decided to reuse while another computed would skip the transformer's collectives and
  leave the others waiting. :meth:`ContextParallel.agree_compute` (installed as EasyCache's ``agree`` by
  ``apply_lightcache``) all-reduces every call's decision: the call computes wherever any process would compute,
  so no process is ever made to reuse a transformation it has not cached.

Two workarounds make the same code run on a CPU (with gloo), which is how it is tested:
``enable_parallelism`` divides by ``torch.accelerator.device_count()``, 0 on a CPU-only build (the count is made at
least 1 while enabling; the device it computes is only stored); and ring attention asks the attention op for the
log-sum-exp, which diffusers' CPU-capable ``native`` backend refuses (while ring runs on a CPU, ``native`` computes
it with ``aten::_scaled_dot_product_flash_attention_for_cpu``, which returns it; the original is put back on
``remove()``).

Example (two processes on a CPU; run it with ``torchrun --nproc-per-node 2 script.py``)::

    import torch
    from lightcache import AccelerationConfig, EasyCacheConfig, apply_lightcache
    from lightcache.parallel import ParallelConfig, apply_context_parallel, process_group
    from lightcache.tiny import build_tiny_pipeline

    with process_group() as group:
        pipe = build_tiny_pipeline(seed=0)
        with apply_context_parallel(pipe, ParallelConfig("ulysses")), \\
                apply_lightcache(pipe, AccelerationConfig(easycache=EasyCacheConfig(threshold=0.1, warmup_steps=2))):
            video = pipe("a red circle moving right", num_inference_steps=10, height=32, width=32, num_frames=9,
                         generator=torch.Generator().manual_seed(0), output_type="np").frames
        if group.rank == 0:
            print(video.shape)

The checks run in one process too:

    >>> ParallelConfig("ulysses").mode
    'ulysses'
    >>> ParallelConfig("tensor")
    Traceback (most recent call last):
    ...
    lightcache.errors.LightcacheError: parallel mode must be 'ulysses' or 'ring', got 'tensor'.
    >>> check_shape("ring", world_size=2, tokens=30, heads=12)
    >>> check_shape("ulysses", world_size=4, tokens=32, heads=6)
    Traceback (most recent call last):
    ...
    lightcache.errors.LightcacheError: --parallel ulysses over 4 processes splits the attention heads: this transformer has 6 heads, not a multiple of 4. Use --parallel ring, or a process count that divides 6.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from .errors import LightcacheError

#: The parallel modes, as the CLI's ``--parallel`` names them.
MODES = ("ulysses", "ring")

#: Transformer classes of diffusers 0.42.1 that carry a context-parallel plan (``_cp_plan``); a test checks this
#: list against the installed diffusers. Only these can be split; lightcache runs the ones its families cover.
CONTEXT_PARALLEL_CLASSES = (
    "ChronoEditTransformer3DModel", "Flux2Transformer2DModel", "FluxTransformer2DModel", "HeliosTransformer3DModel",
    "LTX2VideoTransformer3DModel", "LTXVideoTransformer3DModel", "MiniMaxH3Transformer3DModel",
    "QwenImageTransformer2DModel", "WanTransformer3DModel",
)

#: How long a collective waits for the other processes before it fails (and the run with it) instead of hanging.
#: Generous: the first collective comes after every process has loaded the model, which can take minutes at 14B.
DEFAULT_TIMEOUT_S = 1800.0

_ATTRIBUTE = "_lightcache_context_parallel"


@dataclass
class ParallelConfig:
    """How each transformer call is split over the processes of the default process group (all of them).

    Attributes:
        mode: ``"ulysses"`` (an all-to-all over attention heads: the head count must be a multiple of the process
            count; usually the faster on fast links) or ``"ring"`` (keys and values passed round the processes: any
            head count; less memory for the keys and values, more steps of communication).
    """

    mode: str = "ulysses"

    def __post_init__(self):
        if self.mode not in MODES:
            raise LightcacheError(f"parallel mode must be 'ulysses' or 'ring', got {self.mode!r}.")


@dataclass
class ProcessGroup:
    """The launched processes as :func:`process_group` set them up: this one's rank, their count, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: str

    def all_ok(self, error: BaseException | None) -> None:
        """Every process calls this with what failed on it (None if nothing). Raises on every process when any
        failed: its own error where it failed, a pointer to the first process that failed elsewhere, so that no
        process goes on to a collective the others never reach."""
        failed = torch.tensor([self.rank if error is not None else self.world_size], device=_collective_device())
        torch.distributed.all_reduce(failed, op=torch.distributed.ReduceOp.MIN)
        first = int(failed.item())
        if error is not None:
            raise error
        if first < self.world_size:
            raise LightcacheError(f"process {first} refused the request (its message says why); nothing ran.")

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every process, in rank order (picklable objects; on every process)."""
        values: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values


def launched_world_size() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise LightcacheError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a process count.") from None


@contextlib.contextmanager
def process_group(device: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                  init_method: str | None = None) -> Iterator[ProcessGroup]:
    """The default process group for the length of the block, from the launcher's environment.

    ``device``: ``cpu`` (gloo) or ``cuda`` (NCCL, this process on GPU ``LOCAL_RANK``); default CUDA when available.
    ``timeout_s`` bounds every collective: a process left waiting for another fails after it instead of hanging.
    ``init_method``: where the processes meet, e.g. ``file:///shared/path`` (default: torchrun's
    ``MASTER_ADDR``/``MASTER_PORT``); ``RANK`` and ``WORLD_SIZE`` come from the environment either way.
    A group that is already set up is used as it is and left up.
    """
    dist = torch.distributed
    if not dist.is_available():
        raise LightcacheError("this torch build has no torch.distributed; context parallelism needs it.")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if local_rank >= torch.cuda.device_count():
            raise LightcacheError(f"process {local_rank} of this machine has no GPU of its own: torch sees "
                                  f"{torch.cuda.device_count()}; start at most that many (--nproc-per-node).")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    owned = not dist.is_initialized()
    if owned:
        if "RANK" not in os.environ or (init_method is None and "MASTER_ADDR" not in os.environ):
            raise LightcacheError("no process group to join: launch with `torchrun --nproc-per-node N ...` "
                                  "(it sets RANK, WORLD_SIZE and MASTER_ADDR).")
        meeting = {} if init_method is None else {
            "init_method": init_method, "rank": int(os.environ["RANK"]), "world_size": launched_world_size()}
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s), **meeting)
    group = ProcessGroup(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                         device=device)
    try:
        yield group
    finally:
        if owned:
            try:
                # Every process reaches the end before any tears the group down: without this, one process
                # destroying the group while another still held device-mesh subgroups aborted a run.
                dist.barrier()
            finally:
                dist.destroy_process_group()


def check_shape(mode: str, world_size: int, tokens: int, heads: int) -> None:
    """Refuse a call shape the split cannot serve, naming what to change: the token count must be a multiple of the
    process count, and for Ulysses the attention head count too."""
    if tokens % world_size:
        raise LightcacheError(
            f"--parallel {mode} over {world_size} processes splits the video's {tokens} transformer tokens, not a "
            f"multiple of {world_size}: change --frames, --height or --width, or the process count."
        )
    if mode == "ulysses" and heads % world_size:
        raise LightcacheError(
            f"--parallel ulysses over {world_size} processes splits the attention heads: this transformer has "
            f"{heads} heads, not a multiple of {world_size}. Use --parallel ring, or a process count that divides "
            f"{heads}."
        )


def unsupported_with_context_parallel(*, chunk_ffn: int | None = None, async_swap: Any = False,
                                      compile: Any = False) -> str | None:
    """Why a requested acceleration cannot run with context parallelism, or None. Sliced decoding and EasyCache
    do (the VAE decodes on every process, unsplit); the others are refused before anything runs."""
    if chunk_ffn is not None:
        return ("feature chunking (--chunk-ffn) does not combine with --parallel: it replaces the blocks' forward, "
                "which context parallelism splits and gathers; each process already holds 1/N of the tokens.")
    if async_swap:
        return ("asynchronous swapping (--async-swap) does not combine with --parallel yet: group offloading has not "
                "been run with context parallelism's hooks on the blocks.")
    if compile:
        return ("--compile does not combine with --parallel yet: the compiled blocks would hold context "
                "parallelism's collectives.")
    return None


class ContextParallel:
    """Context parallelism on one pipeline's denoisers. Made by :func:`apply_context_parallel`."""

    def __init__(self, pipe, config: ParallelConfig, denoisers: dict[str, torch.nn.Module], world_size: int,
                 channel_axis: int = 1):
        self.pipe = pipe
        self.channel_axis = channel_axis  # of the denoisers' latent input, as the family adapter says
        self.config = config
        self.denoisers = denoisers
        self.world_size = world_size
        self.cpu_lse_attention = False  # whether the CPU ring workaround is installed
        self._guards: list[Any] = []
        self._restore_native: Callable[[], None] | None = None
        self.agreements = 0  # how many decisions were agreed (one per EasyCache call)
        self.overruled = 0  # how many of them differed from this process's own

    @property
    def mode(self) -> str:
        return self.config.mode

    def agree_compute(self, compute: bool) -> bool:
        """The decision every process takes for one transformer call: compute if any process would.

        An all-reduce (MAX) over the process group; every process calls it for every EasyCache call, in the same
        order, since they all run the same pipeline call sequence.
        """
        flag = torch.tensor([1 if compute else 0], dtype=torch.int32, device=_collective_device())
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        agreed = bool(flag.item())
        self.agreements += 1
        self.overruled += agreed != compute
        return agreed

    def check_request(self, pipe, settings) -> None:
        """Refuse a request the split cannot serve (tokens, heads, strategies) before anything runs."""
        reason = unsupported_with_context_parallel(chunk_ffn=settings.chunk_ffn, async_swap=settings.async_swap,
                                                   compile=getattr(settings, "compile", False))
        if reason:
            raise LightcacheError(reason)
        from .families import adapter_for

        latent = adapter_for(pipe).latent_shape(pipe, settings)
        for module in self.denoisers.values():
            check_shape(self.mode, self.world_size, _tokens(module, latent[2:]), _heads(module))

    def remove(self) -> None:
        """Turn context parallelism off on every denoiser; safe to call twice."""
        from diffusers.hooks.context_parallel import remove_context_parallel

        for handle in self._guards:
            handle.remove()
        self._guards = []
        for module in self.denoisers.values():
            if getattr(module, "_parallel_config", None) is None:
                continue
            remove_context_parallel(module, type(module)._cp_plan)
            for sub in module.modules():
                processor = getattr(sub, "processor", None)
                if processor is not None and getattr(processor, "_parallel_config", None) is not None:
                    processor._parallel_config = None
            module._parallel_config = None
        if self._restore_native is not None:
            self._restore_native()
            self._restore_native = None
        if getattr(self.pipe, _ATTRIBUTE, None) is self:
            setattr(self.pipe, _ATTRIBUTE, None)

    def summary(self) -> dict[str, Any]:
        """What ran: mode, process count, and how the decisions were agreed."""
        return {"mode": self.mode, "processes": self.world_size, "cpu_lse_attention": self.cpu_lse_attention,
                "decisions_agreed": self.agreements, "decisions_overruled_here": self.overruled}

    def __enter__(self) -> "ContextParallel":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def apply_context_parallel(pipe, config: ParallelConfig | str = "ulysses", *, adapter=None) -> ContextParallel:
    """Split every denoiser of ``pipe`` over the processes of the default process group; returns the handle.

    Refuses, before changing anything: no process group, a single process, a denoiser class without a
    context-parallel plan in diffusers, a model already parallelised, hooks already on a denoiser (apply this
    first, then :func:`~lightcache.accelerate.apply_lightcache`), and ring attention on a GPU with the ``native``
    attention backend (it cannot return the log-sum-exp ring needs: set another with
    ``transformer.set_attention_backend(...)``, e.g. ``"_native_cudnn"`` or ``"flash"``).
    """
    config = config if isinstance(config, ParallelConfig) else ParallelConfig(config)
    if getattr(pipe, _ATTRIBUTE, None) is not None:
        raise LightcacheError("context parallelism is already applied to this pipeline.")
    if adapter is None:
        from .families import adapter_for

        adapter = adapter_for(pipe)
    denoisers = adapter.denoisers(pipe)
    for name, module in denoisers.items():
        _check_splittable(name, module)
    dist = torch.distributed
    if not dist.is_available() or not dist.is_initialized():
        raise LightcacheError("context parallelism needs a process group: launch with `torchrun --nproc-per-node N` "
                              "and set it up first (lightcache.parallel.process_group()).")
    world_size = dist.get_world_size()
    if world_size < 2:
        raise LightcacheError("context parallelism splits each call over several processes; this group has one. "
                              "Launch with `torchrun --nproc-per-node N` and N >= 2.")
    on_cpu = all(p.device.type == "cpu" for m in denoisers.values() for p in m.parameters())
    if config.mode == "ring" and not on_cpu and _uses_native_attention(denoisers):
        raise LightcacheError(
            "--parallel ring needs an attention backend that returns the log-sum-exp; diffusers' 'native' does not on "
            "a GPU. Set one with transformer.set_attention_backend('_native_cudnn') (or 'flash'), or use "
            "--parallel ulysses."
        )

    from diffusers import ContextParallelConfig

    handle = ContextParallel(pipe, config, denoisers, world_size, channel_axis=adapter.latent_channel_axis)
    setattr(pipe, _ATTRIBUTE, handle)
    try:
        if config.mode == "ring" and on_cpu:
            handle._restore_native = _install_cpu_lse_attention()
            handle.cpu_lse_attention = True
        degrees = {"ring_degree": world_size} if config.mode == "ring" else {"ulysses_degree": world_size}
        with _accelerator_count_at_least_one():
            # One mesh for every denoiser: its subgroups are made once, not per expert.
            mesh = _device_mesh(degrees)
            for module in denoisers.values():
                module.enable_parallelism(config=ContextParallelConfig(**degrees, mesh=mesh))
        for name, module in denoisers.items():
            handle._guards.append(module.register_forward_pre_hook(_shape_guard(handle, name), with_kwargs=True))
    except BaseException:
        handle.remove()
        raise
    return handle


def context_parallel_of(pipe) -> ContextParallel | None:
    """The context parallelism applied to ``pipe``, or None."""
    return getattr(pipe, _ATTRIBUTE, None)


# --- helpers -----------------------------------------------------------------------------------------------
def _check_splittable(name: str, module: torch.nn.Module) -> None:
    cls = type(module)
    if getattr(cls, "_cp_plan", None) is None:
        raise LightcacheError(
            f"the {name} ({cls.__name__}) has no context-parallel plan in diffusers, so it cannot be split over "
            f"processes; diffusers can split {', '.join(CONTEXT_PARALLEL_CLASSES)}."
        )
    if getattr(module, "_parallel_config", None) is not None:
        raise LightcacheError(f"the {name} is already parallelised (enable_parallelism or from_pretrained with "
                              "parallel_config); apply lightcache's context parallelism to a plain model.")
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None and registry.hooks:
        raise LightcacheError(f"the {name} already has hooks ({', '.join(registry.hooks)}): apply context parallelism "
                              "first, then lightcache's accelerations.")


def _uses_native_attention(denoisers: dict[str, torch.nn.Module]) -> bool:
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    for module in denoisers.values():
        for sub in module.modules():
            processor = getattr(sub, "processor", None)
            if processor is None or not hasattr(processor, "_attention_backend"):
                continue
            backend = processor._attention_backend or _AttentionBackendRegistry.get_active_backend()[0]
            if AttentionBackendName(backend) == AttentionBackendName.NATIVE:
                return True
    return False


@contextlib.contextmanager
def _accelerator_count_at_least_one():
    """diffusers computes the process's device as ``rank % torch.accelerator.device_count()``, which divides by zero
    on a CPU-only build; the device is only stored, so a count of 1 while enabling is enough there."""
    count = torch.accelerator.device_count
    if count() > 0:
        yield
        return
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = count


def _device_mesh(degrees: dict[str, int]):
    from torch.distributed.device_mesh import init_device_mesh

    shape = (degrees.get("ring_degree", 1), degrees.get("ulysses_degree", 1))
    return init_device_mesh(torch._C._get_accelerator().type, mesh_shape=shape, mesh_dim_names=("ring", "ulysses"))


def _collective_device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _install_cpu_lse_attention() -> Callable[[], None]:
    """While ring attention runs on a CPU, diffusers' ``native`` backend computes each ring step with an op that
    returns the log-sum-exp; calls without a parallel config (every other model) go to the original unchanged.
    Returns the function that puts the original back."""
    from diffusers.models import attention_dispatch as dispatch

    registry = dispatch._AttentionBackendRegistry
    name = dispatch.AttentionBackendName.NATIVE
    original = registry._backends[name]

    def native(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
               return_lse=False, _parallel_config=None):
        if _parallel_config is None:
            return original(query=query, key=key, value=value, attn_mask=attn_mask, dropout_p=dropout_p,
                            is_causal=is_causal, scale=scale, enable_gqa=enable_gqa, return_lse=return_lse)
        return dispatch._templated_context_parallel_attention(
            query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_lse,
            forward_op=_cpu_attention_with_lse, backward_op=_no_backward, _parallel_config=_parallel_config,
        )

    registry._backends[name] = native

    def restore() -> None:
        registry._backends[name] = original

    return restore


def _cpu_attention_with_lse(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                            enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
    # diffusers' layout is (batch, tokens, heads, dim); the aten op's (batch, heads, tokens, dim), and its
    # log-sum-exp (batch, heads, tokens) goes back as (batch, tokens, heads) like the other backends'.
    q, k, v = (x.transpose(1, 2).contiguous() for x in (query, key, value))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, dropout_p=dropout_p, is_causal=is_causal, attn_mask=attn_mask, scale=scale)
    out = out.transpose(1, 2).contiguous()
    lse = lse.transpose(1, 2).contiguous()
    return (out, lse) if return_lse else out


def _no_backward(ctx, grad_out, *args, **kwargs):
    raise RuntimeError("lightcache's CPU ring attention is for inference; it has no backward pass.")


def _tokens(module: torch.nn.Module, latent_fhw) -> int:
    """Tokens of one call: the latent's frames x height x width over the model's patch."""
    patch = tuple(getattr(module.config, "patch_size", (1, 1, 1)) or (1, 1, 1))
    patch = (1,) * (3 - len(patch)) + patch
    tokens = 1
    for size, p in zip(latent_fhw, patch):
        tokens *= size // p
    return tokens


def _heads(module: torch.nn.Module) -> int:
    return int(getattr(module.config, "num_attention_heads", 1))


def _shape_guard(handle: ContextParallel, name: str):
    """A pre-hook that refuses a call the split cannot serve with a clear message (the same on every process, so
    all stop together) instead of an assertion deep inside diffusers' sharder."""
    module = handle.denoisers[name]
    heads = _heads(module)

    def guard(_module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if hidden.ndim != 5:
            return  # a packed (batch, tokens, channels) latent: diffusers' sharder checks it
        # frames, height, width: after the channels for (B, C, F, H, W), around them for (B, F, C, H, W).
        fhw = hidden.shape[2:] if handle.channel_axis == 1 else (hidden.shape[1], *hidden.shape[3:])
        check_shape(handle.mode, handle.world_size, _tokens(module, tuple(fhw)), heads)

    return guard


__all__ = ["CONTEXT_PARALLEL_CLASSES", "ContextParallel", "ParallelConfig", "ProcessGroup", "apply_context_parallel",
           "check_shape", "context_parallel_of", "launched_world_size", "process_group",
           "unsupported_with_context_parallel"]
