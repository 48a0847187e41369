"""Asynchronous swapping: whatever is idle on the GPU waits in pinned host memory and moves on a side stream.

One run with swapping on, stage by stage:

* **encode**: the text encoder runs where it is; the denoisers and the VAE are already parked in pinned host
  memory (the denoisers as diffusers' group offloading keeps them, the VAE as plain pinned copies).
* **encode_image** (image-to-video): the image encoder and the VAE come in; the text encoder is parked.
* **denoise**: encoders and VAE are parked; each denoiser's blocks stream through diffusers' group offloading with CUDA streams (one block per
  group; while block *i* computes, block *i+1* is copied in on a side stream), so about two blocks and the small
  embedding/output layers are resident instead of the whole model. EasyCache's cached tensors (its deltas, ``x_prev``,
  ``x_last``, ``v_last``) go to pinned host memory as soon as they are made and are fetched back on the side stream
  when a call's decision needs them, so none of them sits on the GPU during a transformer forward. With two experts
  (Wan2.2 A14B) both are under group offloading, so the idle one has nothing on the device.
* **decode**: the VAE (and the family's other decoders: LTX-2's audio VAE and vocoder) is copied in, decodes, and
  is parked again.

The stage changes come from the run's observer (:mod:`lightcache.observe`), which calls :meth:`AsyncSwap.enter_stage`
before a stage's first module call; the modules of each role come from the pipeline's family adapter.

At the end of the run everything goes back where it was (the same devices, no hooks left), so a run with swapping
leaves the pipeline as it found it, with one deliberate exception: the transformer's pinned host copy is kept with
the pipeline (:class:`PinnedWeights`, one per denoiser), because making it means copying and pinning the whole transformer (about a
minute for Wan2.1-14B's 27 GiB). The next run with swapping checks that the weights on the GPU are still the ones it
copied (their storage, version and a checksum) and reuses it; :func:`release_pinned_weights` frees it. On a machine without a CUDA device the strategy does nothing and says so in
:attr:`AsyncSwap.note` (the runner puts that sentence in the trace and the summary): there is no second memory to
swap to.

Order with the other hooks: apply feature chunking first, then EasyCache, then swapping, and remove them in the
reverse order. diffusers' stream prefetching removes one of its own hooks after the first forward, which would
unlink a hook that replaces the forward (EasyCache) if that hook sat above it.

Example:
    >>> from lightcache.families import adapter_for
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> from lightcache.techniques.swap import apply_async_swap, remove_async_swap
    >>> pipe = build_tiny_pipeline(seed=0)
    >>> swap = apply_async_swap(pipe, device="cpu", adapter=adapter_for(pipe))
    >>> swap.active, swap.note.startswith("Asynchronous swapping did nothing")
    (False, True)
    >>> remove_async_swap(pipe)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .easycache import TensorStore, get_easycache_hook
from ..errors import LightcacheError

CPU_NOTE = (
    "Asynchronous swapping did nothing: this run is on the CPU, where the model weights, the text encoder, the VAE "
    "and EasyCache's cached tensors already share one memory. Swapping moves them between a GPU and pinned CPU "
    "memory, so it only acts on a CUDA device."
)

_ATTRIBUTE = "_lightcache_async_swap"
_PINNED_ATTRIBUTE = "_lightcache_pinned_weights"
_GROUP_OFFLOAD_HOOKS = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")


@dataclass
class AsyncSwapConfig:
    """What to swap. Every part is exact: only where tensors live changes, never what is computed.

    Attributes:
        text_encoder: park the text encoder in pinned host memory once the prompts are encoded.
        transformer: stream the transformer's blocks during denoising (diffusers' block-level group offloading with
            CUDA streams). The largest saving: the weights resident during denoising drop to about two blocks.
        vae: keep the VAE parked until decoding starts, and park it again afterwards.
        cache: keep EasyCache's cached tensors in pinned host memory between the calls that use them. They are
            small (a few latents' worth), so this saves little; it is here because every cache should be swappable.
        record_stream: let diffusers mark streamed weights with ``record_stream`` instead of synchronising after
            every block (faster; the allocator may hold a block's memory a little longer).
    """

    text_encoder: bool = True
    transformer: bool = True
    vae: bool = True
    cache: bool = True
    record_stream: bool = True

    def __post_init__(self):
        for name in ("text_encoder", "transformer", "vae", "cache", "record_stream"):
            if not isinstance(getattr(self, name), bool):
                raise LightcacheError(f"AsyncSwapConfig.{name} must be True or False, got {getattr(self, name)!r}.")


class AsyncSwap:
    """The swapping of one pipeline: built by :func:`apply_async_swap`, undone by :func:`remove_async_swap`.

    :meth:`enter_stage` moves modules at each stage boundary (the run's observer calls it before a stage's first
    module call): a stage's own modules come in, the others wait in pinned host memory. The denoisers stream
    their blocks through group offloading for the whole run, so an idle expert (Wan2.2 A14B) stays parked on the
    host while the other one computes. Every method is a no-op when the strategy is inactive (no CUDA device).
    """

    def __init__(self, pipe, device: torch.device, config: AsyncSwapConfig, adapter):
        self.pipe = pipe
        self.device = device
        self.config = config
        self.adapter = adapter
        self.active = _swaps_on(device)
        self.note: str | None = None
        if not self.active:
            self.note = CPU_NOTE if device.type == "cpu" else (
                f"Asynchronous swapping did nothing: it moves tensors between a CUDA GPU and pinned CPU memory, and "
                f"this run is on '{device.type}'."
            )
        self.group_offload: list[str] = []
        self.reused_pinned_weights: list[str] = []
        self.cache_store: PinnedTensorStore | None = None
        # What the run did, for the summary, which is read after the swap has been undone.
        self._offloaded: list[str] = []
        self._ever_parked: set[str] = set()
        self._cache_bytes_parked: int | None = None
        self._parked: dict[str, _ParkedModule] = {}
        self._home: dict[str, torch.device] = {}

    # --- stage boundaries ------------------------------------------------------------------------------
    def stage_modules(self, stage: str) -> set[str]:
        """Names of the whole modules (not streamed) that ``stage`` needs on the device."""
        encoders = set(self.adapter.text_encoders(self.pipe)) if self.config.text_encoder else set()
        images = set(self.adapter.image_encoders(self.pipe)) if self.config.text_encoder else set()
        vae = {"vae"} if self.config.vae else set()
        decoders = set(self.adapter.decoders(self.pipe)) if self.config.vae else set()
        return {"encode": encoders, "encode_image": images | vae, "denoise": set(),
                "decode": vae | decoders}.get(stage, set())

    def enter_stage(self, stage: str) -> None:
        """Bring in what ``stage`` needs and park every other swappable module (idle ones wait on the host)."""
        if not self.active:
            return
        needed = self.stage_modules(stage)
        for name in self._swappable():
            if name in needed:
                self._unpark(name, self.device)
            else:
                self._park(name)

    def after_encode(self) -> None:
        self.enter_stage("denoise")

    def before_decode(self) -> None:
        self.enter_stage("decode")

    def after_decode(self) -> None:
        if self.active and self.config.vae:
            for name in ("vae", *self.adapter.decoders(self.pipe)):
                self._park(name)

    def summary(self) -> dict[str, Any]:
        """Plain data for the run summary: what was swapped (during the run, and still after removal), or why
        nothing was."""
        store = self.cache_store
        return {
            "active": self.active,
            "note": self.note,
            "transformer_group_offload": bool(self._offloaded),
            "group_offloaded": list(self._offloaded),
            "reused_pinned_weights": bool(self.reused_pinned_weights),
            "parked": sorted(self._ever_parked),
            "cache_store": store is not None or self._cache_bytes_parked is not None,
            "cache_bytes_parked": store.peak_parked_bytes if store is not None else self._cache_bytes_parked or 0,
        }

    # --- setup and teardown ----------------------------------------------------------------------------
    def _swappable(self) -> list[str]:
        names = []
        if self.config.text_encoder:
            names += [*self.adapter.text_encoders(self.pipe), *self.adapter.image_encoders(self.pipe)]
        if self.config.vae and self.adapter.vae(self.pipe) is not None:
            names.append("vae")
        if self.config.vae:
            names += list(self.adapter.decoders(self.pipe))  # LTX-2's audio VAE and vocoder: in for the decode only
        # Modules the pipeline holds but no stage calls (AnimateDiff's motion adapter, copied into its UNet): no
        # stage asks for them, so they wait on the host for the whole run.
        return names + [name for name in self.adapter.idle_modules(self.pipe) if name not in names]

    def _start(self) -> None:
        if not self.active:
            return
        denoisers = self.adapter.denoisers(self.pipe)
        for name in [*self._swappable(), *denoisers]:
            self._home[name] = _module_device(getattr(self.pipe, name))
        if self.config.vae:
            for name in ("vae", *self.adapter.decoders(self.pipe)):
                self._park(name)
        if self.config.transformer:
            from diffusers.hooks.group_offloading import _is_group_offload_enabled

            kept_all = getattr(self.pipe, _PINNED_ATTRIBUTE, None) or {}
            setattr(self.pipe, _PINNED_ATTRIBUTE, None)  # used now, or stale
            for name, module in denoisers.items():
                if _is_group_offload_enabled(module):
                    self.note = f"The {name} already had group offloading; it was left as it was."
                    continue
                # diffusers' streamed block offloading: one block per group (the only size it streams), pinned
                # copies made now so that every transfer during denoising is an asynchronous copy. diffusers pins
                # whatever is not pinned yet, so weights that already sit in the previous run's pinned copy cost
                # nothing here. An expert that is not running simply has none of its blocks on the device.
                kept = kept_all.get(name)
                if kept is not None and kept.matches(module):
                    kept.restore(module)
                    self.reused_pinned_weights.append(name)
                module.enable_group_offload(
                    onload_device=self.device, offload_device=torch.device("cpu"), offload_type="block_level",
                    num_blocks_per_group=1, use_stream=True, record_stream=self.config.record_stream,
                )
                self.group_offload.append(name)
                self._offloaded.append(name)
        if self.config.cache:
            hook = next((h for h in map(get_easycache_hook, denoisers.values()) if h is not None), None)
            if hook is not None:
                self.cache_store = PinnedTensorStore(self.device)
                hook.use_tensor_store(self.cache_store)  # shared by every expert's hook

    def _stop(self) -> None:
        if not self.active:
            return
        denoisers = self.adapter.denoisers(self.pipe)
        if self.cache_store is not None:
            for hook in map(get_easycache_hook, denoisers.values()):
                if hook is not None and hook.state.store is self.cache_store:
                    hook.use_tensor_store(None)
            self._cache_bytes_parked = self.cache_store.peak_parked_bytes
            self.cache_store.clear()
            self.cache_store = None
        kept = {}
        for name in self.group_offload:
            module = denoisers[name]
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None:
                for hook_name in _GROUP_OFFLOAD_HOOKS:
                    registry.remove_hook(hook_name, recurse=True)
                registry.invalidate_child_registries_cache()
            home = self._home.get(name, self.device)
            pinned = PinnedWeights.capture(module)
            module.to(home)
            if pinned is not None and torch.device(home).type == "cuda":
                pinned.stamp(module)
                kept[name] = pinned
        setattr(self.pipe, _PINNED_ATTRIBUTE, kept or None)
        self.group_offload = []
        for name in list(self._parked):
            self._unpark(name, self._home.get(name, self.device))
        self._parked.clear()
        torch.cuda.synchronize(self.device)

    # --- parking whole modules ------------------------------------------------------------------------
    def _park(self, name: str) -> None:
        module = getattr(self.pipe, name, None)
        if not isinstance(module, torch.nn.Module):
            return
        parked = self._parked.get(name)
        if parked is None:
            parked = self._parked[name] = _ParkedModule(module, self.device)
        parked.park()
        self._ever_parked.add(name)

    def _unpark(self, name: str, device: torch.device) -> None:
        # The pinned copies stay with the swap, so parking the same module again reuses them.
        parked = self._parked.get(name)
        if parked is not None:
            parked.unpark(device)


def apply_async_swap(pipe, device: torch.device | str | None = None, config: AsyncSwapConfig | None = None, *,
                     adapter) -> AsyncSwap:
    """Start swapping for ``pipe`` on ``device`` (default: the pipeline's execution device); returns the swap.

    ``adapter``: the pipeline's family adapter, which names every module the pipeline calls (denoisers, text and
    image encoders, the VAE).

    On a CUDA device this parks the VAE, puts the transformer under streamed group offloading and, if EasyCache is
    already applied, gives it a pinned tensor store. On any other device it changes nothing and the returned
    swap's ``note`` says so. Raises :class:`LightcacheError` if swapping is already applied.

    Example:
        >>> from lightcache.families import adapter_for
        >>> from lightcache.tiny import build_tiny_pipeline
        >>> pipe = build_tiny_pipeline(seed=0)
        >>> swap = apply_async_swap(pipe, device="cpu", adapter=adapter_for(pipe))
        >>> swap.summary()["active"]
        False
        >>> remove_async_swap(pipe)
    """
    if getattr(pipe, _ATTRIBUTE, None) is not None:
        raise LightcacheError("Asynchronous swapping is already applied to this pipeline; remove it first.")
    config = config if config is not None else AsyncSwapConfig()
    device = torch.device(device) if device is not None else torch.device(pipe._execution_device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    swap = AsyncSwap(pipe, device, config, adapter)
    setattr(pipe, _ATTRIBUTE, swap)
    try:
        swap._start()
    except BaseException:
        remove_async_swap(pipe)
        raise
    return swap


def remove_async_swap(pipe) -> None:
    """Put everything back where it was and drop the hooks; a no-op when swapping is not applied."""
    swap = getattr(pipe, _ATTRIBUTE, None)
    if swap is None:
        return
    try:
        swap._stop()
    finally:
        setattr(pipe, _ATTRIBUTE, None)


def release_pinned_weights(pipe) -> int:
    """Free the pinned host copies of the denoisers that swapping keeps between runs; returns the bytes released.

    Example:
        >>> from lightcache.tiny import build_tiny_pipeline
        >>> release_pinned_weights(build_tiny_pipeline(seed=0))  # nothing kept on a CPU
        0
    """
    kept = getattr(pipe, _PINNED_ATTRIBUTE, None) or {}
    setattr(pipe, _PINNED_ATTRIBUTE, None)
    return sum(copy.nbytes for copy in kept.values())


class PinnedWeights:
    """The transformer's weights in pinned host memory, kept from one run with swapping to the next.

    :meth:`stamp` records, for every weight now on the GPU, its storage pointer, its version counter and a float64
    sum; :meth:`matches` recomputes them, so that replaced weights (a new storage), weights changed in place (a new
    version or, through ``.data``, a new sum) or a different model make the copy stale and it is not used.
    """

    def __init__(self, host: dict[str, torch.Tensor]):
        self.host = host
        self.stamps: dict[str, tuple[int, int]] = {}
        self.sums: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.host.values())

    @staticmethod
    def _named(module: torch.nn.Module):
        yield from module.named_parameters()
        yield from module.named_buffers()

    @classmethod
    def capture(cls, module: torch.nn.Module) -> "PinnedWeights | None":
        """The pinned host tensors ``module`` points at now (under group offloading: the blocks' weights; diffusers
        moves the few weights outside the blocks without pinning), or None if there are none."""
        host = {name: t.data for name, t in cls._named(module) if t.device.type == "cpu" and t.is_pinned()}
        return cls(host) if host else None

    def stamp(self, module: torch.nn.Module) -> None:
        self.stamps = {name: (t.data_ptr(), t._version) for name, t in self._named(module)}
        self.sums = self._sums(module)

    def matches(self, module: torch.nn.Module) -> bool:
        named = dict(self._named(module))
        if set(named) != set(self.stamps) or self.sums is None:
            return False
        for name, t in named.items():
            if (t.data_ptr(), t._version) != self.stamps[name]:
                return False
            host = self.host.get(name)
            if host is not None and (t.shape != host.shape or t.dtype != host.dtype):
                return False
        return bool(torch.equal(self._sums(module), self.sums))

    def restore(self, module: torch.nn.Module) -> None:
        """Point every kept weight at its pinned copy (the GPU copies are freed as their last reference goes)."""
        for name, t in self._named(module):
            if name in self.host:
                t.data = self.host[name]

    @classmethod
    def _sums(cls, module: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([t.detach().sum(dtype=torch.float64) for _, t in cls._named(module)]).cpu()


def get_async_swap(pipe) -> AsyncSwap | None:
    """The swap applied to ``pipe``, or None."""
    return getattr(pipe, _ATTRIBUTE, None)


class PinnedTensorStore(TensorStore):
    """An EasyCache tensor store that parks tensors in pinned host memory, copying on a side CUDA stream.

    ``put`` starts the device-to-host copy once the compute stream has produced the tensor and lets the device copy
    go; ``prefetch`` starts host-to-device copies; ``get`` waits for its copy (on the compute stream, not the CPU)
    and keeps that device copy until ``release`` (the hook calls it before running the transformer), ``put`` or
    ``clear``. On a CPU device it keeps private copies instead (the same bookkeeping, which the tests exercise).
    """

    def __init__(self, device: torch.device | str):
        super().__init__()
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._host: dict[str, torch.Tensor] = {}
        self._incoming: dict[str, tuple[torch.Tensor, Any]] = {}
        self._fetched: dict[str, torch.Tensor] = {}
        self.peak_parked_bytes = 0

    def put(self, name: str, tensor: torch.Tensor) -> None:
        self._incoming.pop(name, None)
        self._fetched.pop(name, None)
        if not self.cuda:
            self._host[name] = tensor.detach().clone()
        else:
            produced = torch.cuda.current_stream(self.device).record_event()
            old = self._host.get(name)
            reuse = old is not None and old.shape == tensor.shape and old.dtype == tensor.dtype
            with torch.cuda.stream(self.stream):
                self.stream.wait_event(produced)
                host = old if reuse else torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                host.copy_(tensor, non_blocking=True)
            # The caller may drop the device tensor at once: record_stream keeps its memory from being reused
            # until the side stream has read it.
            tensor.record_stream(self.stream)
            self._host[name] = host
        self.peak_parked_bytes = max(self.peak_parked_bytes, sum(t.nbytes for t in self._host.values()))

    def prefetch(self, names) -> None:
        for name in names:
            host = self._host.get(name)
            if host is None or name in self._incoming or name in self._fetched:
                continue
            if not self.cuda:
                self._incoming[name] = (host.clone(), None)
                continue
            with torch.cuda.stream(self.stream):
                on_device = host.to(self.device, non_blocking=True)
                arrived = self.stream.record_event()
            self._incoming[name] = (on_device, arrived)

    def get(self, name: str) -> torch.Tensor | None:
        if name in self._fetched:
            return self._fetched[name]
        if name not in self._host:
            return None
        self.prefetch([name])
        on_device, arrived = self._incoming.pop(name)
        if self.cuda:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(arrived)
            on_device.record_stream(current)
        self._fetched[name] = on_device
        return on_device

    def release(self) -> None:
        self._fetched.clear()
        self._incoming.clear()

    def discard(self, name: str) -> None:
        self._host.pop(name, None)
        self._incoming.pop(name, None)
        self._fetched.pop(name, None)

    def names(self) -> list[str]:
        return list(self._host)

    def on_device_bytes(self) -> int:
        """Bytes of cached tensors currently fetched onto (or on their way to) the device."""
        return sum(t.nbytes for t in self._fetched.values()) + sum(t.nbytes for t, _ in self._incoming.values())

    def clear(self) -> None:
        self._host.clear()
        self.release()


class _ParkedModule:
    """A module's parameters and buffers moved to pinned host memory and back, on a side stream."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.module = module
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.host: dict[int, torch.Tensor] = {}

    def _tensors(self):
        yield from self.module.parameters()
        yield from self.module.buffers()

    def park(self) -> None:
        produced = torch.cuda.current_stream(self.device).record_event()
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(produced)
            for t in self._tensors():
                if t.device.type != "cuda":
                    continue
                host = self.host.get(id(t))
                if host is None or host.shape != t.shape or host.dtype != t.dtype:
                    host = self.host[id(t)] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                host.copy_(t.data, non_blocking=True)
                t.data.record_stream(self.stream)
                t.data = host

    def unpark(self, device: torch.device) -> None:
        if device.type != "cuda":
            self.stream.synchronize()
            for t in self._tensors():
                if t.is_pinned():
                    t.data = t.data.to(device)  # a pageable copy: pinned pages go back with the host store
            self.host.clear()
            return
        with torch.cuda.stream(self.stream):
            moved = [(t, t.data.to(device, non_blocking=True)) for t in self._tensors() if t.device.type == "cpu"]
            arrived = self.stream.record_event()
        current = torch.cuda.current_stream(device)
        current.wait_event(arrived)
        for t, on_device in moved:
            on_device.record_stream(current)
            t.data = on_device


def _swaps_on(device: torch.device) -> bool:
    """Whether swapping acts on ``device``: it moves tensors between a CUDA GPU and pinned host memory. (One place,
    so that the tests can drive the swap's bookkeeping on a CPU with stand-in streams.)"""
    return device.type == "cuda"


def _module_device(module: torch.nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    return torch.device("cpu")
