"""Sliced decoding: decode a video's latents band by band, so the VAE's full-resolution activations never exist for a
whole frame, and exactly (no tiles to blend, nothing recomputed).

This module is the shared part; each VAE's band decoder is its family's own (Wan's:
:mod:`lightcache.families.wan.vae_bands`), reached through the family adapter's ``band_decoder(vae)``:

* :func:`apply_sliced_decode` / :func:`remove_sliced_decode`: shadow ``vae.decode`` with the family's band decode for
  the length of an acceleration (it returns the video on the host, so the pipeline's own postprocessing runs
  unchanged), and put it back;
* the band plan: a decoder's upsampling part is a chain of *units* (:class:`BandUnit`: a residual block, an
  upsampler, the head) whose convolutions need a few neighbouring columns. Instead of recomputing a halo, each unit
  hands the last columns of its input to the next band (a *carry*), so bands come out shifted left by a fixed lag
  and the last band runs to the frame's edge; :func:`simulate_bands` checks that a set of cuts gives every output
  column exactly once, :func:`band_cuts` picks cuts that give bands of about equal width;
* :class:`HostStore`: where set-aside tensors wait between uses, in pinned host memory moved on a side CUDA stream
  (on a CPU they stay where they are).

Example:
    >>> import torch
    >>> from lightcache.families import adapter_named
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> vae = build_tiny_pipeline(seed=0).vae
    >>> z = torch.randn(1, 4, 2, 8, 16)
    >>> plain = vae.decode(z).sample
    >>> sliced = apply_sliced_decode(vae, adapter_named("wan"), num_slices=2)
    >>> bool((vae.decode(z).sample - plain).abs().max() < 1e-4)
    True
    >>> remove_sliced_decode(vae); "decode" in vae.__dict__
    False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import LightcacheError


class BandDecoder:
    """What a family gives sliced decoding for its VAE. A family subclasses this (Wan:
    :class:`lightcache.families.wan.vae_bands.WanBandDecoder`); its adapter's ``band_decoder(vae)`` returns one, or
    None where the family has none."""

    def check(self, vae) -> None:
        """Raise :class:`LightcacheError` (why, in one sentence) unless ``vae`` can be decoded in bands exactly."""
        raise NotImplementedError

    def plan(self, vae, latent_height: int, latent_width: int, num_slices: int | None = None,
             axis: str | None = None) -> dict[str, Any]:
        """The band layout for a latent frame of this size; at least ``cuts`` (band starts and the end) and
        ``axis`` (``"width"`` or ``"height"``)."""
        raise NotImplementedError

    def decode(self, vae, latents: torch.Tensor, plan: dict[str, Any], **decode_kwargs: Any) -> torch.Tensor:
        """What ``vae.decode(latents, **decode_kwargs).sample`` gives (Wan: the video, (B, 3, F, H, W)), assembled
        on the host from the bands. ``decode_kwargs``: what the pipeline passes besides the latents and
        ``return_dict`` (SVD's ``num_frames``)."""
        raise NotImplementedError


def apply_sliced_decode(vae, adapter: Any, num_slices: int | None = None) -> BandDecoder:
    """Make ``vae.decode`` the exact band-by-band decode of the family ``adapter`` serves; returns its band decoder.

    ``num_slices``: bands per frame (None: the band decoder's default). Raises :class:`LightcacheError` for a VAE the
    family cannot slice, and when sliced decoding is already applied.
    """
    from diffusers.models.autoencoders.vae import DecoderOutput

    band_decoder = adapter.band_decoder(vae)
    if band_decoder is None:
        raise LightcacheError(f"Sliced decoding has no implementation for {type(vae).__name__} "
                              f"(the {adapter.name or type(adapter).__name__} family).")
    band_decoder.check(vae)
    if "decode" in vae.__dict__:
        raise LightcacheError("vae.decode is already replaced (sliced decoding applied twice?); remove it first.")

    def decode(z: torch.Tensor, return_dict: bool = True, **decode_kwargs: Any):
        plan = band_decoder.plan(vae, z.shape[-2], z.shape[-1], num_slices=num_slices)
        video = band_decoder.decode(vae, z, plan, **decode_kwargs)
        return DecoderOutput(sample=video) if return_dict else (video,)

    decode.band_decoder = band_decoder
    vae.__dict__["decode"] = decode
    return band_decoder


def remove_sliced_decode(vae) -> None:
    """Give ``vae`` its own decode back; a no-op when sliced decoding is not applied.

    A wrapper registered over the sliced decode after it (the run observer's) must come off first: removing the
    sliced decode from under it would leave the wrapper calling it. This raises :class:`RuntimeError` rather than
    silently leave it behind.
    """
    current = vae.__dict__.get("decode")
    if current is None:
        return
    if getattr(current, "band_decoder", None) is not None:
        del vae.__dict__["decode"]
        return
    inner = getattr(current, "__wrapped__", None)
    while inner is not None:
        if getattr(inner, "band_decoder", None) is not None:
            raise RuntimeError("Remove the wrappers put on vae.decode after sliced decoding first (the run "
                               "observer's), then remove sliced decoding.")
        inner = getattr(inner, "__wrapped__", None)


def get_band_decoder(vae) -> BandDecoder | None:
    """The band decoder sliced decoding runs ``vae`` with, or None when it is not applied."""
    current = vae.__dict__.get("decode")
    while current is not None:
        if getattr(current, "band_decoder", None) is not None:
            return current.band_decoder
        current = getattr(current, "__wrapped__", None)
    return None


# --- the band plan --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BandUnit:
    """One step of the sliced chain and its geometry along the slicing axis.

    ``scale``: output columns per input column; ``shrink``: columns lost at an interior edge (its convolutions'
    reach, in output columns); ``carry``: input columns the next band needs from this band.
    """

    kind: str  # "resnet" | "resample" | "head"
    module: torch.nn.Module
    scale: int
    shrink: int
    carry: int
    #: Wan2.2 residual up blocks: the block's ``DupUp3D`` shortcut, added to the output of its last unit (this one),
    #: and how many units back the block starts (the shortcut reads that unit's input, the block's input).
    shortcut: torch.nn.Module | None = None
    shortcut_back: int = 0


@dataclass(frozen=True)
class Window:
    """Columns [start, stop) of a unit's input or output, in that unit's resolution."""

    start: int
    stop: int

    @property
    def width(self) -> int:
        return self.stop - self.start


def total_scale(units: list[BandUnit]) -> int:
    scale = 1
    for u in units:
        scale *= u.scale
    return scale


def step_window(unit: BandUnit, window: Window, length_in: int) -> Window:
    """The exact output columns of ``unit`` given input columns ``window`` of a ``length_in`` wide frame."""
    start = window.start * unit.scale + (unit.shrink if window.start > 0 else 0)
    stop = window.stop * unit.scale - (unit.shrink if window.stop < length_in else 0)
    return Window(start, stop)


def band_lag(units: list[BandUnit], length: int) -> int:
    """How far (in output columns) an interior cut moves left through the chain."""
    # Follow a band that starts at the frame's left edge and stops at an interior cut: its right edge loses each
    # unit's reach, scaled up by the units after it.
    cut = far = 1 << 20
    window = Window(0, cut)
    for u in units:
        window = step_window(u, window, far * 4)
        far *= u.scale
    return cut * total_scale(units) - window.stop


def simulate_bands(units: list[BandUnit], cuts: list[int], length: int):
    """Per band, per unit: (input window, output window); None when some band is too narrow to be exact."""
    bands = []
    previous: list[Window] | None = None
    for s in range(len(cuts) - 1):
        if cuts[s + 1] <= cuts[s]:
            return None
        last = s == len(cuts) - 2
        rows = []
        new = Window(cuts[s], cuts[s + 1])
        length_in = length
        for k, u in enumerate(units):
            start = 0 if previous is None else previous[k].stop - u.carry
            window = Window(start, new.stop)
            # The new columns must continue exactly where the previous band's input to this unit stopped.
            if previous is not None and (start < previous[k].start or new.start != previous[k].stop):
                return None
            if not last and window.width < u.carry:
                return None
            out = step_window(u, window, length_in)
            if out.width <= 0:
                return None
            if u.shortcut is not None:
                # The shortcut reads block-input columns out.start // scale .. ceil(out.stop / scale), from this
                # band's block input and what the previous band kept of its own.
                opened = rows[k - u.shortcut_back][0]
                first = 0 if previous is None else bands[-1][k][1].stop // u.scale
                if first > out.start // u.scale or -(-out.stop // u.scale) > opened.stop:
                    return None
            rows.append((window, out))
            new = out
            length_in *= u.scale
        if s > 0 and rows[-1][1].start != bands[-1][-1][1].stop:
            return None
        bands.append(rows)
        previous = [w for w, _ in rows]
    if bands[-1][-1][1].stop != length * total_scale(units):
        return None
    return bands


def max_slices(units: list[BandUnit], length: int) -> int:
    best = 1
    for n in range(2, length + 1):
        if simulate_bands(units, band_cuts(units, length, n), length) is None:
            break
        best = n
    return best


def band_cuts(units: list[BandUnit], length: int, num_slices: int) -> list[int]:
    """Latent columns where bands start, chosen so the decoded bands come out about equally wide."""
    total, lag = total_scale(units), band_lag(units, length)
    cuts = [0]
    for s in range(1, num_slices):
        target = round((s * length * total / num_slices + lag) / total)
        # Leave at least one column for each band still to come.
        cuts.append(min(max(target, cuts[-1] + 1), length - (num_slices - s)))
    return cuts + [length]


class HostStore:
    """Where the mid-block outputs and the carries wait between uses.

    On a CUDA device they go to pinned host memory on a side stream and come back ahead of use, so the accelerator
    holds only what the current band and frame need. On a CPU they simply stay where they are (as copies, so that a
    carried view does not keep a whole activation alive).
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.items: dict = {}
        self.ready: dict = {}  # key -> (device tensor, event) fetched ahead of use
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None

    def put(self, key, tensor: torch.Tensor) -> None:
        if not self.cuda:
            self.items[key] = tensor.clone()
            return
        # Copy out on the side stream once the compute stream has produced the tensor; record_stream keeps the
        # allocator from handing its memory to a later kernel before the copy has read it.
        produced = torch.cuda.current_stream(self.device).record_event()
        old = self.items.get(key)
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(produced)
            host = old if old is not None and old.shape == tensor.shape else torch.empty(
                tensor.shape, dtype=tensor.dtype, pin_memory=True
            )
            host.copy_(tensor, non_blocking=True)
        tensor.record_stream(self.stream)
        self.items[key] = host

    def prefetch(self, keys) -> None:
        if not self.cuda:
            return
        for key in keys:
            if key in self.ready or key not in self.items:
                continue
            with torch.cuda.stream(self.stream):
                on_device = self.items[key].to(self.device, non_blocking=True)
                done = self.stream.record_event()
            self.ready[key] = (on_device, done)

    def get(self, key) -> torch.Tensor:
        if not self.cuda:
            return self.items[key]
        if key not in self.ready:
            self.prefetch([key])
        on_device, done = self.ready.pop(key)
        current = torch.cuda.current_stream(self.device)
        current.wait_event(done)
        on_device.record_stream(current)
        return on_device

    def drop(self, predicate) -> None:
        for key in [k for k in self.items if predicate(k)]:
            del self.items[key]

    def host_buffer(self, shape, dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=self.cuda)

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
