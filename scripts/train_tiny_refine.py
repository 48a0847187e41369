"""Refine a trained tiny model (the second half of ``scripts/train_tiny.py``): full-length decoding, a deeper transformer.

Two stages on top of a pipeline directory the first part wrote; each is resumable step by step (every step's data
is drawn from a generator seeded by the stage seed and the step number, and a checkpoint is written every
``--ckpt-every`` steps, so a resumed stage continues exactly where it stopped):

1. **decoder**: the VAE's decoder is trained again on whole 17-frame clips, with the encoder frozen, in three phases
   (then at a lower learning rate; then with the first frame weighed up and an edge term). The first
   VAE saw only 5- and 9-frame windows, and its causal cache drifted past them (colour fringes and wrong colours
   in the last frames). Freezing the encoder keeps the latent space, so the transformer stays valid.
2. **deepen**: the transformer grows from ``L`` to ``--depth`` blocks. The original blocks keep their weights, in
   order; new blocks are inserted between them with their output projections at zero, so the grown model starts
   out computing exactly what the original did; it is then trained further by flow matching on the same
   latents. The deeper model draws sharper shapes and costs what a real video model costs relative to its VAE
   (the transformer, not the decode, is most of a generation).

    python scripts/train_tiny_refine.py --base /tmp/tiny-v1 --out lightcache/data/tiny-wan
    python scripts/train_tiny_refine.py --base /tmp/tiny-v1 --out lightcache/data/tiny-wan --stage decoder   # one stage

``--smoke`` runs a few steps of each stage.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_training, shared by both halves

from lightcache.tiny import shapes  # noqa: E402
from tiny_training import cosine_lr, decode_unclamped, flow_matching_step, log, to_tensor  # noqa: E402


class Checkpoint:
    """A stage's checkpoint file: model and optimizer state and the number of steps done."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict | None:
        return torch.load(self.path, weights_only=False) if self.path.exists() else None

    def save(self, **state) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)  # never a half-written checkpoint


# ------------------------------------------------------------------------------------------ decoder


def decoder_batch(rng: np.random.Generator, args) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Whole clips (every frame, full size) and a latent-aligned crop position near each object."""
    clips, crops = [], []
    lat_h, lat_w, c = args.height // 8, args.width // 8, args.crop // 8
    for _ in range(args.batch):
        spec = shapes.sample_specs(1, int(rng.integers(2**31)), gray_fraction=args.gray_fraction)[0]
        seed = int(rng.integers(2**31))
        clip = shapes.render_clip(spec, args.frames, args.height, args.width, seed)
        # Crop around where the object is in the middle frame, jittered, in latent cells.
        cx, cy = shapes.object_centre(spec, args.frames, seed, args.frames // 2)
        top = int(np.clip(round(cy * lat_h - c / 2) + rng.integers(-c // 3, c // 3 + 1), 0, lat_h - c))
        left = int(np.clip(round(cx * lat_w - c / 2) + rng.integers(-c // 3, c // 3 + 1), 0, lat_w - c))
        clips.append(clip)
        crops.append((top, left))
    return np.stack(clips), crops


def train_decoder(vae, args, ckpt: Checkpoint, phase: int = 1) -> list[float]:
    """Phase 1 at ``--decoder-lr``; phase 2 continues from it (fresh optimizer and schedule) at ``--decoder2-lr``
    for ``--decoder2-steps``: the colours settle only once the learning rate is low. Phase 3 weighs the first frame
    up (it is decoded alone, from the first latent frame, and is 1 of 17 frames in the loss: after phase 2 it could
    still come out grey) and adds an edge term (spatial gradients matched, so edges and corners are not averaged
    away into round blobs)."""
    steps, lr, first_w, edge_w = {
        1: (args.decoder_steps, args.decoder_lr, 1.0, 0.0),
        2: (args.decoder2_steps, args.decoder2_lr, 1.0, 0.0),
        3: (args.decoder3_steps, args.decoder3_lr, args.first_frame_weight, args.edge_weight),
    }[phase]
    for p in vae.parameters():
        p.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    start, curve = 0, []
    state = ckpt.load()
    if state is not None:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, curve = state["step"], state["curve"]
        log(f"decoder phase {phase}: resumed at step {start}")
    vae.train()
    c = args.crop // 8
    acc, t0 = [], time.time()
    for step in range(start, steps):
        rng = np.random.default_rng([args.seed, phase, step]) if phase > 1 else np.random.default_rng([args.seed, 1, step])
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + 100_000 * (phase - 1) + step)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, 30)
        clips, crops = decoder_batch(rng, args)
        x = to_tensor(clips)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
        z = z + args.latent_noise * torch.randn(z.shape, generator=gen)
        zc = torch.stack([z[i, :, :, t : t + c, l : l + c] for i, (t, l) in enumerate(crops)])
        xc = torch.stack([x[i, :, :, 8 * t : 8 * (t + c), 8 * l : 8 * (l + c)] for i, (t, l) in enumerate(crops)])
        rec = decode_unclamped(vae, zc)
        # Object pixels weigh more (the background is most of every crop), and chroma (each pixel minus its own
        # channel mean) is matched on its own: brightness alone explains most of the pixel variance.
        bg = xc.flatten(2).median(dim=2).values[:, :, None, None, None]
        weight = 1.0 + args.object_weight * ((xc - bg).abs().amax(dim=1, keepdim=True) > 0.1).float()
        weight[:, :, 0] *= first_w
        err = rec - xc
        chroma = (rec - rec.mean(1, keepdim=True)) - (xc - xc.mean(1, keepdim=True))
        loss = ((err.abs() + err.pow(2) + args.chroma_weight * chroma.abs()) * weight).mean() / weight.mean()
        if edge_w:
            for axis in (3, 4):
                loss = loss + edge_w * (rec.diff(dim=axis) - xc.diff(dim=axis)).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        acc.append(loss.item())
        if (step + 1) % args.log_every == 0 or step + 1 == steps:
            curve.append(float(np.mean(acc)))
            acc = []
            log(f"decoder phase {phase} step {step + 1}/{steps} loss {curve[-1]:.4f} ({time.time() - t0:.0f}s)")
        if (step + 1) % args.ckpt_every == 0 or step + 1 == steps:
            ckpt.save(model=vae.state_dict(), opt=opt.state_dict(), step=step + 1, curve=curve)
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    return curve


# ------------------------------------------------------------------------------------- transformer


def deepen(small, depth: int):
    """A copy of ``small`` with ``depth`` blocks: the originals in order, new ones between them that start as
    the identity (their attention and feed-forward output projections are zero, so each adds nothing)."""
    from diffusers import WanTransformer3DModel

    old = len(small.blocks)
    if depth < old:
        raise ValueError(f"cannot deepen {old} blocks to {depth}")
    cfg = dict(small.config)
    cfg["num_layers"] = depth
    big = WanTransformer3DModel.from_config(cfg)
    own = {k: v for k, v in small.state_dict().items() if not k.startswith("blocks.")}
    big.load_state_dict(own, strict=False)
    # Original block i goes to position round(i * depth / old); the rest are new.
    places = [round(i * depth / old) for i in range(old)]
    for i, j in enumerate(places):
        big.blocks[j].load_state_dict(small.blocks[i].state_dict())
    for j, block in enumerate(big.blocks):
        if j in places:
            continue
        for lin in (block.attn1.to_out[0], block.attn2.to_out[0], block.ffn.net[-1]):
            torch.nn.init.zeros_(lin.weight)
            torch.nn.init.zeros_(lin.bias)
    return big


@torch.inference_mode()
def encode_clips(vae, clips, args) -> torch.Tensor:
    out, t0 = [], time.time()
    for i in range(0, len(clips), 4):
        part = clips[i : i + 4]
        x = to_tensor(np.stack([shapes.render_clip(s, args.frames, args.height, args.width, seed, spread=sp) for s, seed, sp in part]))
        out.append(vae.encode(x).latent_dist.mode())
        if (i // 4) % 50 == 0:
            log(f"encoded {i + len(part)}/{len(clips)} clips ({time.time() - t0:.0f}s)")
    return torch.cat(out)


def training_clips(args) -> list[tuple[shapes.ClipSpec, int, float]]:
    """Clips anywhere in the frame and clips near its middle, as the first part trained on (deterministic)."""
    rng = np.random.default_rng([args.seed, 2])
    specs = shapes.sample_specs(args.clips, seed=args.seed + 60, gray_fraction=0.0)
    return [(s, int(rng.integers(2**31)), 1.0 if i % 2 == 0 else 0.3) for i, s in enumerate(specs)]


def train_deeper(dit, latents, clips, embeds, args, ckpt: Checkpoint):
    opt = torch.optim.AdamW(dit.parameters(), lr=args.dit_lr, weight_decay=0.01, betas=(0.9, 0.99))
    ema = copy.deepcopy(dit).eval()
    start, curve = 0, []
    state = ckpt.load()
    if state is not None:
        dit.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        start, curve = state["step"], state["curve"]
        log(f"deepen: resumed at step {start}")
    for p in ema.parameters():
        p.requires_grad_(False)
    dit.train()
    acc, t0 = [], time.time()
    for step in range(start, args.dit_steps):
        rng = np.random.default_rng([args.seed, 3, step])
        gen = torch.Generator().manual_seed(args.seed * 1_000_033 + step)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.dit_steps, args.dit_lr, 100)
        acc.append(flow_matching_step(dit, ema, opt, latents, clips, embeds, rng, gen, batch=args.dit_batch,
                                      flow_shift=args.flow_shift, ema_max=args.ema, step=step))
        if (step + 1) % args.log_every == 0 or step + 1 == args.dit_steps:
            curve.append(float(np.mean(acc)))
            acc = []
            log(f"deepen step {step + 1}/{args.dit_steps} loss {curve[-1]:.4f} ({time.time() - t0:.0f}s)")
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.dit_steps:
            ckpt.save(model=dit.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), step=step + 1, curve=curve)
    return ema.eval(), curve


# --------------------------------------------------------------------------------------------- main


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the pipeline directory the first part wrote")
    ap.add_argument("--out", default="lightcache/data/tiny-wan")
    ap.add_argument("--work", default="/tmp/tiny-refine", help="checkpoints and intermediate files")
    ap.add_argument("--stage", choices=("decoder", "deepen", "all"), default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--gray-fraction", type=float, default=0.2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--crop", type=int, default=64, help="decoder crops, pixels (a multiple of 8)")
    ap.add_argument("--decoder-steps", type=int, default=700)
    ap.add_argument("--decoder-lr", type=float, default=5e-4)
    ap.add_argument("--decoder2-steps", type=int, default=500)
    ap.add_argument("--decoder2-lr", type=float, default=1.5e-4)
    ap.add_argument("--decoder3-steps", type=int, default=300)
    ap.add_argument("--decoder3-lr", type=float, default=1e-4)
    ap.add_argument("--first-frame-weight", type=float, default=6.0, help="decoder phase 3: weight of frame 0")
    ap.add_argument("--edge-weight", type=float, default=1.0, help="decoder phase 3: weight of the edge term")
    ap.add_argument("--latent-noise", type=float, default=0.05)
    ap.add_argument("--object-weight", type=float, default=4.0)
    ap.add_argument("--chroma-weight", type=float, default=3.0)
    ap.add_argument("--depth", type=int, default=24)
    ap.add_argument("--clips", type=int, default=800)
    ap.add_argument("--dit-steps", type=int, default=1000)
    ap.add_argument("--dit-batch", type=int, default=8)
    ap.add_argument("--dit-lr", type=float, default=3e-4)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--flow-shift", type=float, default=3.0)
    ap.add_argument("--max-seq-len", type=int, default=16)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.decoder_steps, args.decoder2_steps, args.decoder3_steps, args.dit_steps, args.clips, args.log_every, args.ckpt_every = 3, 3, 3, 3, 8, 1, 2
        args.work = args.work + "-smoke"

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormals make CPU convolutions crawl late in training
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report_path = work / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {"args": vars(args), "seconds": {}}

    if args.stage in ("decoder", "all") and not (work / "vae").exists():
        for phase, source, target in ((1, Path(args.base) / "vae", work / "vae-phase1"),
                                      (2, work / "vae-phase1", work / "vae-phase2"), (3, work / "vae-phase2", work / "vae")):
            if target.exists():
                continue
            t0 = time.time()
            vae = AutoencoderKLWan.from_pretrained(source)
            report[f"decoder{phase}_loss_curve"] = train_decoder(vae, args, Checkpoint(work / f"decoder{phase}.pt"), phase)
            vae.save_pretrained(target)
            report["seconds"][f"decoder{phase}"] = round(time.time() - t0)
            report_path.write_text(json.dumps(report, indent=1))

    if args.stage in ("deepen", "all") and not (work / "transformer").exists():
        t0 = time.time()
        base = WanPipeline.from_pretrained(args.base)
        clips = training_clips(args)
        lat_path = work / "latents.pt"
        if lat_path.exists():
            raw = torch.load(lat_path)
        else:
            raw = encode_clips(base.vae, clips, args)  # the frozen encoder: the first part's latent space
            torch.save(raw, lat_path)
        mean = torch.tensor(base.vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(base.vae.config.latents_std).view(1, -1, 1, 1, 1)
        latents = (raw - mean) / std
        captions = sorted({""} | {shapes.caption(s, say_background=b) for s, _, _ in clips for b in (True, False)})
        embeds = {}
        with torch.inference_mode():
            for c in captions:
                emb, _ = base.encode_prompt(c, do_classifier_free_guidance=False, max_sequence_length=args.max_seq_len, device="cpu")
                embeds[c] = emb[0].float()
        dit = deepen(base.transformer, args.depth)
        log(f"transformer: {len(base.transformer.blocks)} -> {len(dit.blocks)} blocks, {sum(p.numel() for p in dit.parameters()) / 1e6:.2f}M parameters")
        ema, curve = train_deeper(dit, latents, clips, embeds, args, Checkpoint(work / "deepen.pt"))
        ema.save_pretrained(work / "transformer")
        report["transformer_loss_curve"] = curve
        report["seconds"]["deepen"] = round(time.time() - t0)
        report_path.write_text(json.dumps(report, indent=1))

    if args.stage == "all":
        pipe = WanPipeline.from_pretrained(args.base)
        pipe.vae = AutoencoderKLWan.from_pretrained(work / "vae")
        pipe.transformer = WanTransformer3DModel.from_pretrained(work / "transformer")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        pipe.save_pretrained(out, safe_serialization=True)
        (out / "refine_log.json").write_text(json.dumps(report, indent=1) + "\n")
        log(f"saved to {out}; seconds {report['seconds']}")


if __name__ == "__main__":
    main()
