"""Exact bands through GroupNorm: a decoder's up path run pass by pass over bands of whole staged tensors.

Wan's VAE normalises each position on its own, so its band decoder (:mod:`lightcache.families.wan.vae_bands`) can
carry a band through the whole up path at once. Most other VAEs (Stable Diffusion's image VAE, SVD's temporal
decoder, HunyuanVideo's causal 3D VAE) put a GroupNorm before every convolution, whose statistics are taken over the
whole frame (or the whole clip): a band alone cannot know them. Here each GroupNorm is a synchronisation point:

1. the tensor a GroupNorm reads is *staged* whole (in pinned host memory when the decoder runs on CUDA, so the
   device never holds it; on a CPU it stays where it is);
2. a first pass over its bands accumulates each (sample, group)'s sum and sum of squares in float64
   (:meth:`BandPasses.group_stats`), giving the same statistics as the whole-tensor GroupNorm;
3. a second pass runs, band by band, everything up to the next GroupNorm (normalise with those statistics,
   activation, convolution, upsampler) on the band plus the few neighbouring columns its convolutions reach (a
   *halo*, read from the staged input, so nothing is carried and the padding at the frame's true edges is the
   module's own), keeps exactly the band's own output columns and writes them into the next staged tensor.

With the statistics fixed, every layer between two GroupNorms is local along the band axis, so each output column is
computed from exactly the values the plain decode uses: the result equals ``vae.decode`` up to float rounding. What
is run whole is what is cheap and global: the low-resolution input convolution and mid block (its attention sees
the whole frame). A family's band decoder describes its up path with :func:`resnet_passes` (a residual block:
``norm1, nonlinearity, conv1, norm2, dropout, conv2`` and a pointwise shortcut, the layout diffusers' VAE resnets
share) and :meth:`BandPasses.map`.

Example:
    >>> import torch
    >>> norm, conv = torch.nn.GroupNorm(2, 4).eval(), torch.nn.Conv2d(4, 4, 3, padding=1).eval()
    >>> x = torch.randn(1, 4, 6, 20)
    >>> passes = BandPasses(x.device, num_slices=3, dim=-1)
    >>> stats = passes.group_stats(norm, x)
    >>> y = passes.map(lambda band: conv(passes.normalize(norm, stats, band)), x, halo=halo_of(conv, -1))
    >>> bool((y - conv(norm(x))).abs().max() < 1e-5)
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import LightcacheError


@dataclass(frozen=True)
class GroupStats:
    """A GroupNorm's statistics over a whole tensor: ``mean`` and ``rstd`` (1 / sqrt(var + eps)) per (sample, group),
    in float32."""

    mean: torch.Tensor
    rstd: torch.Tensor


class BandPasses:
    """Runs passes over ``num_slices`` bands along ``dim`` (-1: width, -2: height) of staged tensors on ``device``.

    Staged tensors (the inputs and outputs of :meth:`map`) live in host memory (pinned) when ``device`` is CUDA and
    are moved one band (and its halo) at a time; on a CPU they are ordinary tensors and a band is a view.
    """

    def __init__(self, device, num_slices: int, dim: int):
        if num_slices < 1:
            raise LightcacheError(f"Sliced decoding needs a whole number of slices >= 1, got {num_slices!r}.")
        if dim not in (-1, -2):
            raise ValueError(f"dim must be -1 (width) or -2 (height), got {dim!r}")
        self.device = torch.device(device)
        self.num_slices = num_slices
        self.dim = dim
        self.host = self.device.type == "cuda"

    def cuts(self, length: int) -> list[int]:
        """Band starts and the end along a ``length``-wide axis: ``num_slices`` bands of about equal width."""
        if length < self.num_slices:
            raise LightcacheError(f"Sliced decoding with {self.num_slices} slices needs a frame at least that many "
                                  f"latent columns wide; this one is {length}. Use fewer slices.")
        return [round(s * length / self.num_slices) for s in range(self.num_slices + 1)]

    def stage(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` as a staged tensor: moved to pinned host memory on CUDA, itself otherwise."""
        if not self.host:
            return tensor
        staged = self.staged_empty(tensor.shape, tensor.dtype)
        staged.copy_(tensor)
        return staged

    def staged_empty(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """A new staged tensor (what :meth:`map` writes its bands into)."""
        if self.host:
            return torch.empty(shape, dtype=dtype, pin_memory=True)
        return torch.empty(shape, dtype=dtype, device=self.device)

    def fetch(self, staged: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Columns [start, stop) of a staged tensor, on the device."""
        band = staged.narrow(self.dim, start, stop - start)
        return band.to(self.device, non_blocking=True) if self.host else band

    def group_stats(self, norm: torch.nn.GroupNorm, staged: torch.Tensor) -> GroupStats:
        """The statistics ``norm`` takes of ``staged`` (per sample, over each group's channels and every position):
        each band's mean and variance in float32 (as GroupNorm itself accumulates), merged across bands in float64
        (Chan's pairwise update, which keeps the variance accurate where the mean is large)."""
        n, groups = staged.shape[0], norm.num_groups
        mean = torch.zeros(n, groups, dtype=torch.float64, device=self.device)
        m2 = torch.zeros_like(mean)  # sum of squared deviations from the mean
        count = 0
        cuts = self.cuts(staged.shape[self.dim])
        for start, stop in zip(cuts, cuts[1:]):
            values = self.fetch(staged, start, stop).reshape(n, groups, -1)
            var_b, mean_b = torch.var_mean(values.float(), dim=-1, correction=0)
            count_b = values.shape[-1]
            del values
            total = count + count_b
            delta = mean_b.double() - mean
            mean += delta * (count_b / total)
            m2 += var_b.double() * count_b + delta.square() * (count * count_b / total)
            count = total
        return GroupStats(mean.float(), torch.rsqrt(m2 / count + norm.eps).float())

    def normalize(self, norm: torch.nn.GroupNorm, stats: GroupStats, band: torch.Tensor) -> torch.Tensor:
        """``norm(whole)`` restricted to ``band``: the band normalised with the whole tensor's statistics."""
        n, channels = band.shape[:2]
        groups = norm.num_groups
        # One float32 working copy, updated in place: the band's temporaries are what sliced decoding's peak is.
        out = band.float().reshape(n, groups, -1) - stats.mean[..., None]
        out.mul_(stats.rstd[..., None])
        out = out.view(band.shape)
        if norm.affine:
            shape = (1, channels) + (1,) * (band.dim() - 2)
            out.mul_(norm.weight.float().view(shape)).add_(norm.bias.float().view(shape))
        return out.to(band.dtype)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor], staged: torch.Tensor, halo: int, scale: int = 1,
            extra: Sequence[torch.Tensor] = (), combine: Callable[..., torch.Tensor] | None = None,
            out: torch.Tensor | None = None) -> torch.Tensor:
        """Apply ``fn`` band by band; returns the staged output.

        ``fn`` takes a band of ``staged`` with ``halo`` more columns on each side where the frame has them and
        returns ``scale`` output columns per input column (a same-padded convolution, a 2x upsampler); only the
        band's own output columns are kept. ``combine(y, *extra_bands)`` then adds what is pointwise in the output
        (a residual, a blend) from ``extra``, staged tensors at the output's resolution. ``out``: the staged tensor
        to write into (it may be one of ``extra``: each band reads its own columns of it before writing them).
        """
        length = staged.shape[self.dim]
        cuts = self.cuts(length)
        for start, stop in zip(cuts, cuts[1:]):
            low, high = max(0, start - halo), min(length, stop + halo)
            y = fn(self.fetch(staged, low, high))
            if y.shape[self.dim] != (high - low) * scale:
                raise AssertionError(f"a band of {high - low} columns gave {y.shape[self.dim]}, expected "
                                     f"{(high - low) * scale}")
            y = y.narrow(self.dim, (start - low) * scale, (stop - start) * scale)
            if combine is not None:
                y = combine(y, *(self.fetch(e, start * scale, stop * scale) for e in extra))
            if out is None:
                shape = list(y.shape)
                shape[self.dim] = length * scale
                out = self.staged_empty(shape, y.dtype)
            out.narrow(self.dim, start * scale, (stop - start) * scale).copy_(y)
            del y
        return out


def resnet_passes(passes: BandPasses, block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A VAE residual block over bands of staged ``x``:
    ``shortcut(x) + conv2(dropout(act(norm2(conv1(act(norm1(x)))))))``, divided by its ``output_scale_factor`` where
    it has one, in two passes (one per GroupNorm). Writes the output over ``x`` when the block keeps the channel
    count."""
    stats = passes.group_stats(block.norm1, x)
    h = passes.map(lambda b: block.conv1(block.nonlinearity(passes.normalize(block.norm1, stats, b))), x,
                   halo=halo_of(block.conv1, passes.dim))
    stats = passes.group_stats(block.norm2, h)
    shortcut = block.conv_shortcut
    scale = getattr(block, "output_scale_factor", 1.0)

    def add_residual(y: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if shortcut is not None:
            residual = shortcut(residual)
        y = residual + y
        return y / scale if scale != 1.0 else y

    def second(b: torch.Tensor) -> torch.Tensor:
        return block.conv2(block.dropout(block.nonlinearity(passes.normalize(block.norm2, stats, b))))

    return passes.map(second, h, halo=halo_of(block.conv2, passes.dim), extra=(x,), combine=add_residual,
                      out=x if shortcut is None else None)


def halo_of(module: torch.nn.Module, dim: int) -> int:
    """Columns a module's convolutions reach on each side along ``dim`` (their kernel's half width, summed over the
    convolutions it holds, which run one after another)."""
    reach = 0
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            size, dilation = m.kernel_size[dim], m.dilation[dim]
            reach += (size - 1) // 2 * dilation
    return reach


def plan_bands(latent_height: int, latent_width: int, upscale: int, num_slices: int | None = None,
               axis: str | None = None) -> dict:
    """The band plan of a GroupNorm VAE's decode for a latent frame of this size (what ``BandDecoder.plan``
    returns): ``axis`` (the longer side by default), ``dim``, ``num_slices`` (None: bands about 64 decoded pixels
    wide, at most 16) and ``cuts`` (band starts and the end, in latent columns). ``upscale``: decoded pixels per
    latent column.

    Example:
        >>> plan_bands(64, 64, 8)
        {'axis': 'width', 'dim': -1, 'num_slices': 8, 'cuts': [0, 8, 16, 24, 32, 40, 48, 56, 64]}
        >>> plan_bands(4, 6, 4, num_slices=2, axis="height")["cuts"]
        [0, 2, 4]
    """
    if axis is None:
        axis = "width" if latent_width >= latent_height else "height"
    if axis not in ("width", "height"):
        raise LightcacheError(f"Sliced decoding axis must be 'width' or 'height', got {axis!r}.")
    length = latent_width if axis == "width" else latent_height
    if num_slices is None:
        num_slices = max(1, min(16, length * upscale // 64, length))
    if isinstance(num_slices, bool) or not isinstance(num_slices, int) or num_slices < 1:
        raise LightcacheError(f"Sliced decoding needs a whole number of slices >= 1, got {num_slices!r}.")
    dim = -1 if axis == "width" else -2
    cuts = BandPasses("cpu", num_slices, dim).cuts(length)
    return {"axis": axis, "dim": dim, "num_slices": num_slices, "cuts": cuts}


def check_no_offloading(vae) -> None:
    """Refuse a VAE with offloading hooks (diffusers' group offloading, accelerate's CPU offload): a band decoder
    calls the decoder's parts itself, in its own order, which such hooks do not expect."""
    for name, module in vae.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        if getattr(module, "_hf_hook", None) is not None or (registry is not None and registry.hooks):
            raise LightcacheError("Sliced decoding needs the VAE without offloading hooks (group or CPU offload): it "
                                  f"runs the decoder's parts itself. Found one on '{name or 'vae'}'.")
