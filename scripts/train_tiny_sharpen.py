"""Sharpen a tiny model's transformer (the fourth part of ``scripts/train_tiny.py``): corners, not blobs.

After the third part the VAE alone kept squares square (87.5 % recognised), yet generated squares came out round:
the transformer had learnt where the object is and what colour, not its corners. Two things in the earlier
transformer training worked against corners, and this part changes both while it trains further:

1. **where on the noise schedule it trains.** The earlier parts drew the noise level ``s`` from the sampler's own
   shifted schedule (``flow_shift`` 3), so three quarters of the steps were at ``s > 0.5``, where only the layout
   can be decided. Corners are decided late, at low noise. Here ``s`` is drawn with ``--train-shift`` (1: uniform),
   so half the steps are at ``s < 0.5``.
2. **what the loss looks at.** An object covers ~5 % of the latent cells; the rest is flat background, easy at any
   noise level. ``--object-weight`` weighs the cells that differ from the frame's background (and their
   neighbours) more, so the loss is mostly about the object.

It is one resumable stage on top of a pipeline directory (the third part's output): the latents of the same
training clips are encoded with that pipeline's VAE, then the transformer trains from its weights with an EMA copy
(what ships); the VAE, text encoder and scheduler are copied unchanged.

    python scripts/train_tiny_sharpen.py --base /tmp/train_tiny_v3 --out lightcache/data/tiny-wan

``--smoke`` runs a few steps.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_training, shared by every part

from lightcache.tiny import shapes  # noqa: E402
from tiny_training import cosine_lr, flow_matching_step, log  # noqa: E402
from train_tiny_refine import Checkpoint, encode_clips, training_clips  # noqa: E402


def object_cells(latents: torch.Tensor, dilate: int = 1) -> torch.Tensor:
    """Which latent cells show the object: (B, 1, F, H, W) booleans.

    A frame's background is the median latent over its cells (the background is most of a frame and flat); a cell
    is the object's where it is farther from that than a quarter of the frame's largest distance. ``dilate`` grows
    the mask by that many cells, so the object's edges (where corners are) count as the object's.

    >>> z = torch.zeros(1, 4, 2, 8, 8); z[:, :, :, 3:5, 3:5] = 2.0
    >>> m = object_cells(z, dilate=0)
    >>> int(m.sum()), bool(m[0, 0, 0, 3, 3]), bool(m[0, 0, 0, 0, 0])
    (8, True, False)
    >>> int(object_cells(z, dilate=1).sum())
    32
    """
    bg = latents.flatten(3).median(dim=3).values[..., None, None]
    dist = (latents - bg).pow(2).sum(dim=1, keepdim=True).sqrt()
    peak = dist.flatten(3).amax(dim=3)[..., None, None].clamp_min(1e-6)
    mask = dist > 0.25 * peak
    if dilate:
        k = 2 * dilate + 1
        b, _, f, h, w = mask.shape
        grown = F.max_pool2d(mask.float().transpose(1, 2).reshape(b * f, 1, h, w), k, stride=1, padding=dilate)
        mask = grown.reshape(b, f, 1, h, w).transpose(1, 2) > 0
    return mask


def shape_cells(clip: np.ndarray, spec: shapes.ClipSpec, threshold: float = 60.0) -> torch.Tensor:
    """The latent cells where the asked shape differs from the other shapes: (1, F', H / 8, W / 8) booleans.

    In each frame the object's mask gives its area and centroid; the ideal asked shape and each other shape of that
    area and centroid (as :func:`lightcache.tiny.shapes.measure_frames` draws them) differ at the corners, and those
    pixels are what tells a square from a circle. A latent cell is marked where any of its pixels, over the frames
    it encodes (the first frame alone, then groups of four), is such a pixel.

    >>> spec = shapes.parse_prompt("a red square moving right")
    >>> clip = shapes.render_clip(spec, frames=9, height=64, width=64, seed=1)
    >>> m = shape_cells(clip, spec)
    >>> tuple(m.shape), 0 < int(m[0, 0].sum()) < 16
    ((1, 3, 8, 8), True)
    """
    f, h, w, _ = clip.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    diff = np.zeros((f, h, w), bool)
    for i, frame in enumerate(clip):
        mask = frame.astype(np.float32).max(-1) > threshold
        if mask.sum() < 4:
            continue
        ideal = shapes._ideal_masks(float(mask.sum()), float(xs[mask].mean()), float(ys[mask].mean()), h, w)
        for other in shapes.SHAPES:
            if other != spec.shape:
                diff[i] |= ideal[spec.shape] ^ ideal[other]
    groups = [diff[:1]] + [diff[1 + 4 * k : 5 + 4 * k] for k in range((f - 1) // 4)]
    cells = np.stack([g.any(0).reshape(h // 8, 8, w // 8, 8).any(axis=(1, 3)) for g in groups])
    return torch.from_numpy(cells)[None]


def train(dit, latents, weights, clips, embeds, args, ckpt: Checkpoint, phase: int = 1):
    """Flow matching from ``dit``'s weights, with an EMA copy (what ships); returns the EMA copy and the loss curve.

    Phase 1 draws noise levels with ``--train-shift`` and weighs object cells; phase 2 continues from phase 1's EMA
    weights with a fresh optimizer at ``--shape-lr``, noise levels drawn with ``--shape-shift`` (the high levels,
    where SDEdit runs show a shape is decided), the cells that tell the shapes apart weighted too."""
    steps, lr, shift = {1: (args.steps, args.lr, args.train_shift),
                        2: (args.shape_steps, args.shape_lr, args.shape_shift)}[phase]
    opt = torch.optim.AdamW(dit.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    ema = copy.deepcopy(dit).eval()
    start, curve = 0, []
    state = ckpt.load()
    if state is not None:
        dit.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        start, curve = state["step"], state["curve"]
        log(f"sharpen phase {phase}: resumed at step {start}")
    for p in ema.parameters():
        p.requires_grad_(False)
    dit.train()
    acc, t0 = [], time.time()
    for step in range(start, steps):
        rng = np.random.default_rng([args.seed, 49 + phase, step])
        gen = torch.Generator().manual_seed(args.seed * 1_000_081 + 100_000 * (phase - 1) + step)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, 50)
        acc.append(flow_matching_step(dit, ema, opt, latents, clips, embeds, rng, gen, batch=args.batch,
                                      flow_shift=shift, ema_max=args.ema, step=step, weights=weights))
        if (step + 1) % args.log_every == 0 or step + 1 == steps:
            curve.append(float(np.mean(acc)))
            acc = []
            log(f"sharpen phase {phase} step {step + 1}/{steps} loss {curve[-1]:.4f} ({time.time() - t0:.0f}s)")
        if (step + 1) % args.ckpt_every == 0 or step + 1 == steps:
            ckpt.save(model=dit.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), step=step + 1, curve=curve)
    return ema.eval(), curve


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the pipeline directory the third part wrote")
    ap.add_argument("--out", default="lightcache/data/tiny-wan")
    ap.add_argument("--work", default="/tmp/tiny-sharpen", help="checkpoints and intermediate files")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--clips", type=int, default=800, help="the same training clips as the third part")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--train-shift", type=float, default=1.0, help="shift of the training noise levels (1: uniform)")
    ap.add_argument("--object-weight", type=float, default=4.0, help="extra loss weight of the object's cells")
    ap.add_argument("--shape-steps", type=int, default=800, help="phase 2 (0: none)")
    ap.add_argument("--shape-lr", type=float, default=6e-5)
    ap.add_argument("--shape-shift", type=float, default=3.0, help="shift of phase 2's noise levels")
    ap.add_argument("--shape-weight", type=float, default=10.0, help="extra weight of the cells telling shapes apart")
    ap.add_argument("--max-seq-len", type=int, default=16)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--ckpt-every", type=int, default=25)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.steps, args.shape_steps, args.clips, args.log_every, args.ckpt_every = 3, 3, 8, 1, 2
        args.work = args.work + "-smoke"

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from diffusers import WanPipeline, WanTransformer3DModel

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report_path = work / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {"seconds": {}}
    report["args"] = vars(args)  # a resumed run's: the recipe as it finishes

    base = WanPipeline.from_pretrained(args.base)
    clips = training_clips(args)
    if not (work / "transformer").exists() or (args.shape_steps and not (work / "transformer-shape").exists()):
        t0 = time.time()
        lat_path = work / "latents.pt"
        if lat_path.exists():
            raw = torch.load(lat_path)
        else:
            with torch.inference_mode():
                raw = encode_clips(base.vae.eval(), clips, args)
            torch.save(raw, lat_path)
        m = torch.tensor(base.vae.config.latents_mean).view(1, -1, 1, 1, 1)
        sd = torch.tensor(base.vae.config.latents_std).view(1, -1, 1, 1, 1)
        latents = (raw - m) / sd
        weights = 1.0 + args.object_weight * object_cells(latents).float()
        log(f"latents {tuple(latents.shape)}; object cells {float(object_cells(latents).float().mean()):.3f} of all")
        captions = {""} | {shapes.caption(s, say_background=b) for s, _, _ in clips for b in (True, False)}
        with torch.inference_mode():
            embeds = {
                c: base.encode_prompt(c, do_classifier_free_guidance=False, max_sequence_length=args.max_seq_len)[0][0]
                for c in sorted(captions)
            }
        report["seconds"].setdefault("latents", round(time.time() - t0))
        if not (work / "transformer").exists():
            t0 = time.time()
            dit = copy.deepcopy(base.transformer)
            ema, report["loss_curve"] = train(dit, latents, weights, clips, embeds, args,
                                              Checkpoint(work / "transformer.pt"))
            ema.save_pretrained(work / "transformer")
            report["seconds"]["transformer"] = round(time.time() - t0)
            report_path.write_text(json.dumps(report, indent=1))
        if args.shape_steps:
            t0 = time.time()
            cells = torch.cat([shape_cells(shapes.render_clip(s, args.frames, args.height, args.width, seed, spread=sp), s)
                               for s, seed, sp in clips])[:, None]
            log(f"shape cells {float(cells.float().mean()):.4f} of all")
            weights = weights + args.shape_weight * cells.float()
            report["seconds"]["shape_cells"] = round(time.time() - t0)
            t0 = time.time()
            dit = WanTransformer3DModel.from_pretrained(work / "transformer")
            ema, report["shape_loss_curve"] = train(dit, latents, weights, clips, embeds, args,
                                                    Checkpoint(work / "transformer-shape.pt"), phase=2)
            ema.save_pretrained(work / "transformer-shape")
            report["seconds"]["transformer_shape"] = round(time.time() - t0)
            report_path.write_text(json.dumps(report, indent=1))

    final = work / ("transformer-shape" if args.shape_steps else "transformer")
    pipe = WanPipeline(
        tokenizer=base.tokenizer, text_encoder=base.text_encoder.eval(), vae=base.vae.eval(),
        transformer=WanTransformer3DModel.from_pretrained(final).eval(), scheduler=base.scheduler,
    )
    out = Path(args.out)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "sharpen_log.json").write_text(json.dumps(report, indent=1))
    log(f"saved to {out}; seconds {report['seconds']}")


if __name__ == "__main__":
    main()
