"""What every part of the tiny model's training shares: logging, clips as tensors, the schedule, the raw decode, a
flow-matching step."""

from __future__ import annotations

import math
import time

import numpy as np
import torch


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def to_tensor(clips: np.ndarray) -> torch.Tensor:
    """uint8 (B, F, H, W, 3) -> float (B, 3, F, H, W) in [-1, 1], as the Wan VAE expects."""
    x = torch.from_numpy(clips).float().div_(127.5).sub_(1.0)
    return x.permute(0, 4, 1, 2, 3).contiguous()


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def decode_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """``AutoencoderKLWan._decode`` without its final clamp to [-1, 1].

    Training through the clamp fails: the decoder learns to push the black background below -1 (free,
    since the clamp hides it), the whole output drifts there, and object pixels below -1 get no
    gradient, so objects are never learned. The loss must see the raw output.
    """
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    outs = []
    for i in range(x.shape[2]):
        vae._conv_idx = [0]
        outs.append(vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=i == 0))
    vae.clear_cache()
    return torch.cat(outs, 2)


def flow_matching_step(dit, ema, opt, latents, clips, embeds, rng, gen, *, batch: int, flow_shift: float,
                       ema_max: float, step: int, weights: torch.Tensor | None = None) -> float:
    """One training step of the transformer by flow matching, as Wan trains, and the EMA update; returns the loss.

    ``x_s = (1 - s) x0 + s n`` at the sampler's shifted ``s``, input timestep ``1000 s``, target ``n - x0``; 10 % of
    captions are empty so classifier-free guidance works, and half say the black background. ``rng`` draws the
    clips and captions, ``gen`` the noise, so a step is reproducible from its seeds. ``weights`` (broadcastable to
    ``latents``, one row per clip), if given, weighs the squared error per latent cell, normalised to mean 1.
    """
    from lightcache.tiny import shapes

    idx = rng.integers(0, len(clips), size=batch)
    caps = []
    for i in idx:
        if rng.random() < 0.1:
            caps.append("")  # empty captions keep classifier-free guidance working
        else:
            caps.append(shapes.caption(clips[i][0], say_background=bool(rng.random() < 0.5)))
    ctx = torch.stack([embeds[c] for c in caps])
    x0 = latents[idx]
    u = torch.rand(batch, generator=gen)
    s = flow_shift * u / (1 + (flow_shift - 1) * u)  # the sampler's shifted schedule
    noise = torch.randn(x0.shape, generator=gen)
    sv = s.view(-1, 1, 1, 1, 1)
    pred = dit(hidden_states=(1 - sv) * x0 + sv * noise, timestep=s * 1000, encoder_hidden_states=ctx, return_dict=False)[0]
    if weights is None:
        loss = torch.nn.functional.mse_loss(pred, noise - x0)
    else:
        w = weights[idx]
        loss = ((pred - (noise - x0)).pow(2) * w).mean() / w.mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
    opt.step()
    decay = min(ema_max, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), dit.parameters()):
            pe.lerp_(p, 1 - decay)
    return loss.item()
