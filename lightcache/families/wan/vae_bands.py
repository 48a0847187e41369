"""The Wan VAE's band decoder: sliced decoding (:mod:`lightcache.techniques.decode`) of Wan latents, exactly.

The Wan VAE decoder already works one latent frame at a time, carrying a causal cache (the last two frames of every
causal convolution's input) from one latent frame to the next. At 720x1280 those caches alone are about 8 GiB, and
one latent frame's activations at full resolution several more: that is the decode surge. diffusers' tiling cuts it
by decoding overlapping tiles and blending them, which changes the output at the seams and recomputes the overlaps.

This module decodes exactly, without recomputing anything (the band plan and the host store are the shared
ones of :mod:`lightcache.techniques.decode`):

1. **Whole frame, low resolution.** ``conv_in``, the mid block (whose attention is global over each frame) and the
   first up block run on the whole latent frame, one frame at a time, as in diffusers. Their caches and outputs are
   small (latent and 2x latent resolution); the outputs are kept aside, off the accelerator when there is one.
2. **Slice by slice, all frames.** The upsampling stages and the output head run on vertical (or horizontal) bands of
   the frame. A band goes through *all* latent frames before the next band starts, so only that band's causal caches
   exist at any time. Every stage is a chain of "units" (a residual block, an upsampler, the head) whose 3x3
   convolutions need a few neighbouring columns; instead of recomputing a halo, each unit hands the last columns of
   its input to the next band (a *carry*, stored per latent frame). Bands therefore come out shifted left by a fixed
   lag, and the last band runs to the frame's edge. Zero padding is applied only at the frame's true borders, so
   every output pixel is computed from exactly the values it depends on in the plain decode.

The Wan2.2 VAE (TI2V-5B) decodes the same way. Its residual up blocks add a ``DupUp3D`` shortcut (the block's input,
upsampled by moving channels into space and time) to the block's output; that is pointwise along the band axis
(output column ``c`` comes from input column ``c // 2``), but the block's resnets trim a band's output well inside
its carried input, so each band also keeps the block-input columns the next band's shortcut reads (a second carry,
``2 * resnets + 1`` columns). The shortcut's first-chunk handling (one frame from the first latent frame) follows
the latent frame, as in diffusers. The decoder's output (12 channels) is unpatchified band by band: every decoder
column becomes two pixel columns, so the bands' bookkeeping stays in decoder columns and only ``spans`` (the plan's
pixel ranges) are in the video's. The output is clamped exactly when ``vae.decode`` clamps.

Outputs are identical to ``vae.decode`` up to float rounding (the tests hold fp32 to 1e-4), with no seams.
Decoded bands are moved to host memory as they come out; frames are yielded once the last band is done (the order
that keeps only one band's caches alive completes frames last), grouped per latent frame like the plain decode.

Example:
    >>> import torch
    >>> from lightcache.tiny import build_tiny_pipeline
    >>> from lightcache.families.wan.vae_bands import iter_sliced_decode
    >>> vae = build_tiny_pipeline(seed=0).vae
    >>> latents = torch.randn(1, 4, 3, 16, 16)
    >>> chunks = list(iter_sliced_decode(vae, latents, num_slices=2))
    >>> [c.shape for c in chunks]
    [(1, 64, 64, 3), (2, 64, 64, 3), (2, 64, 64, 3)]
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ...errors import LightcacheError
from ...techniques.decode import (
    BandDecoder,
    BandUnit,
    HostStore,
    Window,
    band_cuts,
    band_lag,
    max_slices,
    simulate_bands,
    total_scale,
)

#: Frames of each causal convolution's input the Wan VAE carries from one latent frame to the next.
_CACHE_T = 2


class WanBandDecoder(BandDecoder):
    """Sliced decoding's view of ``AutoencoderKLWan`` (the Wan2.1 and the Wan2.2 VAE)."""

    def check(self, vae) -> None:
        check_sliced_decode_supported(vae)

    def plan(self, vae, latent_height: int, latent_width: int, num_slices: int | None = None,
             axis: str | None = None) -> dict:
        return plan_slices(vae, latent_height, latent_width, num_slices=num_slices, axis=axis)

    def decode(self, vae, latents: torch.Tensor, plan: dict) -> torch.Tensor:
        bands, layout = sliced_decode_bands(vae, latents, postprocess=False, plan=plan)
        video = torch.cat([torch.from_numpy(b) for b in bands], dim=3 if layout["dim"] == -1 else 2)
        del bands
        return video.permute(0, 4, 1, 2, 3)


def check_sliced_decode_supported(vae) -> None:
    """Raise :class:`LightcacheError` unless ``vae`` is a Wan VAE this module can decode exactly.

    Supported: the Wan2.1 VAE (Wan2.1 T2V / I2V, Wan2.2 A14B) and the Wan2.2 VAE (TI2V-5B: residual up blocks with
    ``DupUp3D`` shortcuts, patchified output), without offloading hooks.

    Example:
        >>> from lightcache.tiny import build_tiny_pipeline, build_tiny_wan22_vae
        >>> check_sliced_decode_supported(build_tiny_pipeline(seed=0).vae)
        >>> check_sliced_decode_supported(build_tiny_wan22_vae(seed=0))
        >>> check_sliced_decode_supported(object())
        Traceback (most recent call last):
        ...
        lightcache.errors.LightcacheError: Sliced decoding supports the Wan VAE (AutoencoderKLWan), not object.
    """
    from diffusers import AutoencoderKLWan
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanResidualUpBlock, WanUpBlock

    if not isinstance(vae, AutoencoderKLWan):
        raise LightcacheError(f"Sliced decoding supports the Wan VAE (AutoencoderKLWan), not {type(vae).__name__}.")
    blocks = list(vae.decoder.up_blocks)
    kind = WanResidualUpBlock if vae.config.is_residual else WanUpBlock
    if not blocks or not all(type(b) is kind for b in blocks):
        names = ", ".join(sorted({type(b).__name__ for b in blocks})) or "none"
        raise LightcacheError(
            f"Sliced decoding does not know this VAE decoder's up blocks ({names}); turn sliced decoding off."
        )
    for i, block in enumerate(blocks):
        upsampler = _upsampler(block)
        shortcut = getattr(block, "avg_shortcut", None)
        if upsampler is not None and upsampler.mode not in ("upsample2d", "upsample3d"):
            raise LightcacheError(f"Sliced decoding does not know up block {i}'s resampling mode {upsampler.mode!r}.")
        if kind is WanResidualUpBlock and (
            (shortcut is None) != (upsampler is None) or (shortcut is not None and shortcut.factor_s != 2)
        ):
            raise LightcacheError(
                f"Sliced decoding needs each residual up block's shortcut to upsample 2x exactly where its resampler "
                f"does; up block {i} differs. Turn sliced decoding off for this model."
            )
    patch = vae.config.patch_size
    if patch is not None and (isinstance(patch, bool) or not isinstance(patch, int) or patch < 1):
        raise LightcacheError(f"Sliced decoding needs a whole-number VAE patch size, got {patch!r}.")
    for name, module in vae.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        if getattr(module, "_hf_hook", None) is not None or (registry is not None and registry.hooks):
            raise LightcacheError(
                "Sliced decoding needs the VAE without offloading hooks (group or CPU offload): it runs the decoder's "
                f"parts itself. Found one on '{name or 'vae'}'."
            )


def iter_sliced_decode(
    vae,
    latents: torch.Tensor,
    num_slices: int | None = None,
    axis: str | None = None,
    plan: dict | None = None,
) -> Iterator[np.ndarray]:
    """Decode de-normalised Wan ``latents`` (1, z, F, h, w) band by band; yield float32 frames (n, H, W, 3) in [0, 1].

    One array per latent frame (1 frame, then 4 each for the Wan VAE), postprocessed exactly as
    ``pipe.video_processor.postprocess_video(video, output_type="np")`` does. ``num_slices``: bands across the frame
    (None: one per ~64 decoded pixels, at most 16; each band holds about 1/num_slices of the decode's activations
    and caches); ``axis``: ``"width"`` or ``"height"`` (None: the longer side, so the cuts are short). The input
    must already be de-normalised (``latents / inv_std + mean``). ``plan``: a :func:`plan_slices` result for these
    latents, used instead of planning again from ``num_slices`` and ``axis``.

    Example:
        >>> import torch
        >>> from lightcache.tiny import build_tiny_pipeline
        >>> vae = build_tiny_pipeline(seed=0).vae
        >>> frames = np.concatenate(list(iter_sliced_decode(vae, torch.randn(1, 4, 2, 8, 24), num_slices=3)))
        >>> frames.shape, frames.dtype
        ((3, 32, 96, 3), dtype('float32'))
    """
    if latents.ndim != 5 or latents.shape[0] != 1:
        raise LightcacheError(f"Sliced decoding takes one video's latents (1, C, F, H, W), got {tuple(latents.shape)}.")
    bands, layout = sliced_decode_bands(vae, latents, num_slices=num_slices, axis=axis, postprocess=True, plan=plan)
    dim = layout["dim"]
    first = 0
    for count in layout["frames_per_latent"]:
        parts = [band[0, first : first + count] for band in bands]  # (n, H, w_s, 3) per band
        yield np.ascontiguousarray(np.concatenate(parts, axis=2 if dim == -1 else 1), dtype=np.float32)
        first += count


def sliced_decode(vae, latents: torch.Tensor, num_slices: int | None = None, axis: str | None = None) -> torch.Tensor:
    """The decoded video (B, 3, F, H, W) in [-1, 1] on the CPU, as ``vae.decode(latents).sample`` gives it."""
    bands, layout = sliced_decode_bands(vae, latents, num_slices=num_slices, axis=axis, postprocess=False)
    video = torch.cat([torch.from_numpy(b) for b in bands], dim=3 if layout["dim"] == -1 else 2)
    return video.permute(0, 4, 1, 2, 3)


def plan_slices(vae, latent_height: int, latent_width: int, num_slices: int | None = None, axis: str | None = None):
    """The band layout for a latent frame of this size: cut columns, output windows and the chain's lag.

    Keys: ``axis``, ``dim`` (-1 or -2), ``cuts`` (where bands start, in the sliced chain's input columns), ``lag``,
    ``windows`` (per band, per unit: input and output columns, in the decoder's own resolution), ``patch`` (the
    VAE's patch size: 1 for Wan2.1, 2 for Wan2.2, whose decoder output is unpatchified to ``patch`` x its
    resolution) and ``spans``: per band, the (start, stop) decoded pixels along the axis, as in the video.
    Raises :class:`LightcacheError` when ``num_slices`` is not a whole number >= 1 or leaves a band too narrow.

    Example:
        >>> from lightcache.tiny import build_tiny_wan22_vae
        >>> plan = plan_slices(build_tiny_wan22_vae(seed=0), 4, 10, num_slices=2)
        >>> plan["axis"], plan["patch"], plan["spans"]
        ('width', 2, [(0, 60), (60, 160)])
    """
    check_sliced_decode_supported(vae)
    if axis is None:
        axis = "width" if latent_width >= latent_height else "height"
    if axis not in ("width", "height"):
        raise LightcacheError(f"Sliced decoding axis must be 'width' or 'height', got {axis!r}.")
    if num_slices is not None and (isinstance(num_slices, bool) or not isinstance(num_slices, int) or num_slices < 1):
        raise LightcacheError(f"Sliced decoding needs a whole number of slices >= 1, got {num_slices!r}.")
    whole, units = _split_units(vae)
    # Bands are cut where the sliced chain starts, after the whole-frame units have upsampled the latent.
    length = (latent_width if axis == "width" else latent_height) * total_scale(whole)
    patch = _patch(vae)
    if num_slices is None:
        num_slices = max(1, min(16, length * total_scale(units) * patch // 64))
        while num_slices > 1 and simulate_bands(units, band_cuts(units, length, num_slices), length) is None:
            num_slices -= 1
    cuts = band_cuts(units, length, num_slices)
    windows = simulate_bands(units, cuts, length)
    if windows is None:
        most = max_slices(units, length)
        raise LightcacheError(
            f"Sliced decoding with {num_slices} slices leaves a slice too narrow for this VAE at a latent "
            f"{axis} of {length // total_scale(whole)}; use between 1 and {most} slices."
        )
    lag = band_lag(units, length)
    spans = [(rows[-1][1].start * patch, rows[-1][1].stop * patch) for rows in windows]
    return {"axis": axis, "dim": -1 if axis == "width" else -2, "cuts": cuts, "lag": lag, "windows": windows,
            "patch": patch, "spans": spans}


def sliced_decode_bands(vae, latents, num_slices=None, axis=None, postprocess=True, plan=None):
    """Decode and return ``(bands, layout)``: one host float32 array (B, F, H, w, 3) per band, in order.

    ``postprocess=True`` maps to [0, 1] like ``VideoProcessor.postprocess_video``; False keeps the clamped [-1, 1]
    decoder output. ``plan``: a :func:`plan_slices` result for these latents (None: plan here).
    """
    if plan is None:
        plan = plan_slices(vae, latents.shape[-2], latents.shape[-1], num_slices=num_slices, axis=axis)
    store = HostStore(_module_device(vae))
    bands, frames_per_latent = decode_into(vae, latents, plan, store, postprocess=postprocess)
    arrays = [b.float().numpy() for b in bands]
    return arrays, {"dim": plan["dim"], "frames_per_latent": frames_per_latent, "plan": plan}


def decode_into(vae, latents, plan, store, postprocess=True):
    """The decode itself, keeping set-aside tensors in ``store``; returns (host band tensors, frames per latent)."""
    dim, cuts, windows = plan["dim"], plan["cuts"], plan["windows"]
    whole, units = _split_units(vae)
    decoder = vae.decoder
    num_latent = latents.shape[2]
    num_bands = len(cuts) - 1
    patch, clip = _patch(vae), _clips_output(vae)
    # Residual (Wan2.2) up blocks: the unit that opens each block -> the unit whose output gets the block's shortcut.
    opens = {k - u.shortcut_back: k for k, u in enumerate(units) if u.shortcut is not None}

    with torch.no_grad():
        z = latents.to(device=_module_device(vae), dtype=vae.dtype)
        # 1. Whole frames at low resolution: conv_in, the mid block (its attention sees the whole frame) and the
        # first up block. Their caches are small; running them whole keeps the sliced chain's lag short.
        x = vae.post_quant_conv(z)
        del z
        first_cache: list = [None] * _count_causal_convs([decoder.conv_in, decoder.mid_block, *(u.module for u in whole)])
        for i in range(num_latent):
            idx = [0]
            h = _cached_conv(decoder.conv_in, x[:, :, i : i + 1], first_cache, idx)
            h = decoder.mid_block(h, feat_cache=first_cache, feat_idx=idx)
            h = _run_whole(whole, decoder, h, first_cache, idx, first_chunk=i == 0)
            for s in range(num_bands):
                store.put(("mid", s, i), h.narrow(dim, cuts[s], cuts[s + 1] - cuts[s]))
            del h
        del x, first_cache

        # 2. Band by band through every latent frame; carries hand each unit's last input columns to the next band.
        bands = []
        frames_per_latent = []
        total_frames = 1 + (num_latent - 1) * _frames_per_step(vae)
        tail_convs = _count_causal_convs([u.module for u in units if u.kind != "head"]) + 1
        for s in range(num_bands):
            last = s == num_bands - 1
            cache: list = [None] * tail_convs
            band = None
            written = 0
            for i in range(num_latent):
                # Ask for everything this frame needs at once: later units' carries arrive while earlier units run.
                keys = [("mid", s, i)]
                if s > 0:
                    keys += [("carry", k, i) for k in range(len(units))] + [("skip", k, i) for k in opens]
                store.prefetch(keys)
                idx = [0]
                x = store.get(("mid", s, i))
                sources: dict = {}  # closing unit -> (this band's block input for the shortcut, its first column)
                for k, unit in enumerate(units):
                    new = x
                    if s > 0:
                        x = torch.cat([store.get(("carry", k, i)), x], dim=dim)
                    window, out_window = windows[s][k]
                    if x.shape[dim] != window.width:
                        raise AssertionError(f"band {s} unit {k}: {x.shape[dim]} columns, planned {window.width}")
                    if k in opens:
                        sources[opens[k]] = _shortcut_source(store, windows, s, k, opens[k], i, x, new, dim, last)
                    del new
                    if not last:
                        store.put(("carry", k, i), x.narrow(dim, x.shape[dim] - unit.carry, unit.carry))
                    y = _run_unit(unit, decoder, x, cache, idx)
                    del x
                    x = y.narrow(dim, out_window.start - window.start * unit.scale, out_window.width)
                    del y
                    if unit.shortcut is not None:
                        source, first = sources.pop(k)
                        x = x + _band_shortcut(unit, source, first, out_window, dim, first_chunk=i == 0)
                        del source
                if patch > 1:
                    x = _unpatchify(x, patch)
                video = torch.clamp(x, min=-1.0, max=1.0) if clip else x
                del x
                if postprocess:
                    video = (video * 0.5 + 0.5).clamp(0, 1)
                video = video.permute(0, 2, 3, 4, 1)  # (B, T, H, w, 3): frames laid out as postprocess_video does
                if band is None:
                    band = store.host_buffer((video.shape[0], total_frames, *video.shape[2:]), video.dtype)
                band[:, written : written + video.shape[1]].copy_(video, non_blocking=True)
                if s == 0:
                    frames_per_latent.append(video.shape[1])
                written += video.shape[1]
                del video
            if written != total_frames:
                raise AssertionError(f"band {s}: decoded {written} frames, expected {total_frames}")
            store.drop(lambda key: key[0] == "mid" and key[1] == s)
            bands.append(band)
        store.synchronize()
    return bands, frames_per_latent


def _shortcut_source(store, windows, s, k, close, i, x, new, dim, last):
    """The block input columns a residual up block's shortcut reads in band ``s``, and the first one's index.

    The shortcut is pointwise (output column c comes from input column c // 2), but the block's resnets and
    resampler trim the band's output well inside the carried input, so the shortcut reaches further back than the
    resnets' carry: band ``s`` keeps, from the first input column the next band's output needs, to its last (a
    ``("skip", k, i)`` carry), and the next band puts it before its new columns.
    """
    if s == 0:
        source, first = x, 0
    else:
        source = torch.cat([store.get(("skip", k, i)), new], dim=dim)
        first = windows[s - 1][close][1].stop // 2
    if not last:
        keep = windows[s][close][1].stop // 2
        stop = windows[s][k][0].stop
        store.put(("skip", k, i), source.narrow(dim, keep - first, stop - keep))
    return source, first


def _band_shortcut(unit: BandUnit, source, first: int, out_window: "Window", dim: int, first_chunk: bool):
    """``DupUp3D`` on the source columns under ``out_window``, trimmed to exactly those output columns."""
    lo, hi = out_window.start // unit.scale, -(-out_window.stop // unit.scale)
    if lo < first or first + source.shape[dim] < hi:
        raise AssertionError(f"shortcut needs input columns {lo}..{hi}, has {first}..{first + source.shape[dim]}")
    up = unit.shortcut(source.narrow(dim, lo - first, hi - lo), first_chunk=first_chunk)
    return up.narrow(dim, out_window.start - lo * unit.scale, out_window.width)


# --- the chain -----------------------------------------------------------------------------------------------


def _split_units(vae) -> tuple[list[BandUnit], list[BandUnit]]:
    """(units run on whole frames, units run band by band): the split is after the first upsampler."""
    units = _units(vae)
    for k, unit in enumerate(units):
        if unit.kind == "resample":
            return units[: k + 1], units[k + 1 :]
    return [], units


def _units(vae) -> list[BandUnit]:
    decoder = vae.decoder
    units = []
    for block in decoder.up_blocks:
        opened = len(units)
        for resnet in block.resnets:
            units.append(BandUnit("resnet", resnet, scale=1, shrink=2, carry=4))
        upsampler = _upsampler(block)
        if upsampler is not None:
            # Nearest 2x then a 3x3 conv: an output column 2c+1 needs input columns c..c+1 (one carried column).
            # Residual (Wan2.2) blocks add their shortcut, read from the block's input, to the resampler's output.
            shortcut = getattr(block, "avg_shortcut", None)
            back = len(units) - opened if shortcut is not None else 0
            units.append(BandUnit("resample", upsampler, scale=2, shrink=1, carry=1, shortcut=shortcut,
                                  shortcut_back=back))
    units.append(BandUnit("head", decoder.conv_out, scale=1, shrink=1, carry=2))
    return units


def _upsampler(block):
    """A Wan2.1 (``upsamplers``) or Wan2.2 (``upsampler``) up block's resampler, or None."""
    if getattr(block, "upsamplers", None) is not None:
        return block.upsamplers[0]
    return getattr(block, "upsampler", None)


def _run_whole(units: list[BandUnit], decoder, h: torch.Tensor, cache: list, idx: list, first_chunk: bool):
    """Whole-frame units in order, with residual up blocks' shortcuts (as ``WanResidualUpBlock.forward``)."""
    opens = {k - u.shortcut_back for k, u in enumerate(units) if u.shortcut is not None}
    inputs = {}
    for k, unit in enumerate(units):
        if k in opens:
            inputs[k] = h
        out = _run_unit(unit, decoder, h, cache, idx)
        if unit.shortcut is not None:
            out = out + unit.shortcut(inputs.pop(k - unit.shortcut_back), first_chunk=first_chunk)
        h = out
    return h


def _run_unit(unit: BandUnit, decoder, x: torch.Tensor, cache: list, idx: list) -> torch.Tensor:
    if unit.kind == "head":
        x = decoder.nonlinearity(decoder.norm_out(x))
        return _cached_conv(decoder.conv_out, x, cache, idx)
    return unit.module(x, feat_cache=cache, feat_idx=idx)


def _cached_conv(conv, x: torch.Tensor, cache: list, idx: list) -> torch.Tensor:
    """A causal conv with the Wan decoder's cache bookkeeping (as in ``WanDecoder3d.forward``)."""
    i = idx[0]
    cache_x = x[:, :, -_CACHE_T:].clone()
    if cache_x.shape[2] < 2 and cache[i] is not None:
        cache_x = torch.cat([cache[i][:, :, -1:].to(cache_x.device), cache_x], dim=2)
    out = conv(x, cache[i])
    cache[i] = cache_x
    idx[0] += 1
    return out


def _count_causal_convs(modules) -> int:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) for module in modules for m in module.modules())


def _patch(vae) -> int:
    return vae.config.patch_size or 1


def _clips_output(vae) -> bool:
    """Whether ``vae.decode`` clamps its output to [-1, 1].

    diffusers 0.42 clamps unconditionally (a ``clip_output`` entry in a Hub config is ignored there); a diffusers
    whose ``AutoencoderKLWan`` takes ``clip_output`` clamps only when it is true.
    """
    import inspect

    from diffusers import AutoencoderKLWan

    if "clip_output" in inspect.signature(AutoencoderKLWan.__init__).parameters:
        return bool(vae.config.clip_output)
    return True


def _unpatchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """The decoder's (B, 3 * p * p, T, h, w) output as (B, 3, T, h * p, w * p), as ``AutoencoderKLWan._decode`` does.

    Every decoder column becomes ``p`` adjacent pixel columns, so unpatchifying a band gives exactly that band of
    the unpatchified frame.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    return unpatchify(x, patch_size=patch)


def _frames_per_step(vae) -> int:
    return 2 ** sum(bool(t) for t in vae.temperal_upsample)


def _module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device
