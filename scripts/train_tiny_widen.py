"""Widen a refined tiny model's latent space (the third part of ``scripts/train_tiny.py``): sharper shapes.

After the first two parts the VAE alone recognised only ~62 % of squares and triangles: one 12-channel latent cell
covers 8 x 8 pixels over 4 frames while the object moves about two cells, and 12 numbers were too few to keep its
corners; the decoder rounded them. This part grows the latent space from ``z`` to ``--z-dim`` channels (Wan2.1
itself has 16), in two resumable stages on top of a pipeline directory the second part wrote:

1. **vae**: the new channels start switched off (the decoder reads them through zero weights, so the widened VAE
   starts out decoding exactly what the old one did), and the whole VAE, encoder included, is trained end to end
   on whole 17-frame clips with an edge term. The old channels are anchored to the old encoder's latents, so the
   transformer's knowledge of them stays valid; the new channels carry what the old ones lost.
2. **transformer**: its patch embedding and output projection grow to the new channels (zero-initialised), and it
   is trained further by flow matching on the widened latents.

Every step draws its data from a generator seeded by the stage and the step, and a checkpoint is written every
``--ckpt-every`` steps, so an interrupted stage resumes exactly.

    python scripts/train_tiny_widen.py --base /tmp/train_tiny_v2 --out lightcache/data/tiny-wan
    python scripts/train_tiny_widen.py --base /tmp/train_tiny_v2 --out lightcache/data/tiny-wan --stage vae   # one stage

``--smoke`` runs a few steps of each stage.
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
from tiny_training import cosine_lr, decode_unclamped, flow_matching_step, log, to_tensor  # noqa: E402
from train_tiny_refine import Checkpoint, encode_clips, training_clips  # noqa: E402

# ------------------------------------------------------------------------------------------ growing


def widen_vae(old, z_dim: int):
    """A copy of ``old`` with ``z_dim`` latent channels that decodes exactly what ``old`` decodes.

    The encoder's output is ``[mean | log-variance]``; the old halves go to the front of the new halves. The new
    channels pass through the quantisation convolutions unchanged (identity) and reach the decoder through zero
    weights, so at the start they change nothing.
    """
    from diffusers import AutoencoderKLWan

    z0 = old.config.z_dim
    if z_dim < z0:
        raise ValueError(f"cannot narrow {z0} latent channels to {z_dim}")
    cfg = dict(old.config)
    cfg["z_dim"] = z_dim
    # Placeholder statistics for the new channels; the real ones are measured on the training latents later.
    cfg["latents_mean"] = list(old.config.latents_mean) + [0.0] * (z_dim - z0)
    cfg["latents_std"] = list(old.config.latents_std) + [1.0] * (z_dim - z0)
    new = AutoencoderKLWan.from_config(cfg)
    src, dst = old.state_dict(), new.state_dict()
    halves = [(slice(0, z0), slice(0, z0)), (slice(z0, 2 * z0), slice(z_dim, z_dim + z0))]  # (old, new) mean, logvar
    with torch.no_grad():
        for name, t in dst.items():
            s = src[name]
            if s.shape == t.shape:
                t.copy_(s)
            elif name.startswith("encoder.conv_out"):
                for o, n in halves:
                    t[n] = s[o]
                # New mean channels start small so the widened latent is close to the old one at step 0.
                t[z0:z_dim].mul_(0.1)
            elif name == "quant_conv.weight":
                t.zero_()
                for o_out, n_out in halves:
                    for o_in, n_in in halves:
                        t[n_out, n_in] = s[o_out, o_in]
                for c in list(range(z0, z_dim)) + list(range(z_dim + z0, 2 * z_dim)):
                    t[c, c] = 1.0
            elif name == "quant_conv.bias":
                t.zero_()
                for o, n in halves:
                    t[n] = s[o]
            elif name == "post_quant_conv.weight":
                t.zero_()
                t[:z0, :z0] = s
                for c in range(z0, z_dim):
                    t[c, c] = 1.0
            elif name == "post_quant_conv.bias":
                t.zero_()
                t[:z0] = s
            elif name == "decoder.conv_in.weight":
                t.zero_()
                t[:, :z0] = s
            else:
                raise ValueError(f"unexpected shape change in {name}: {tuple(s.shape)} -> {tuple(t.shape)}")
    new.load_state_dict(dst)
    return new


def widen_transformer(old, channels: int):
    """A copy of ``old`` reading and predicting ``channels`` latent channels; the new ones start at zero weight,
    so the widened transformer predicts exactly what ``old`` did for the old channels and zero for the new."""
    from diffusers import WanTransformer3DModel

    c0 = old.config.in_channels
    cfg = dict(old.config)
    cfg["in_channels"] = cfg["out_channels"] = channels
    new = WanTransformer3DModel.from_config(cfg)
    src, dst = old.state_dict(), new.state_dict()
    patch = int(np.prod(old.config.patch_size))
    with torch.no_grad():
        for name, t in dst.items():
            s = src[name]
            if s.shape == t.shape:
                t.copy_(s)
            elif name == "patch_embedding.weight":
                t.zero_()
                t[:, :c0] = s
            elif name.startswith("proj_out."):
                # Output features are laid out (patch position, channel), channel fastest.
                t.zero_()
                t.view(patch, channels, *t.shape[1:])[:, :c0] = s.view(patch, c0, *s.shape[1:])
            else:
                raise ValueError(f"unexpected shape change in {name}: {tuple(s.shape)} -> {tuple(t.shape)}")
    new.load_state_dict(dst)
    return new


# ---------------------------------------------------------------------------------------------- vae


def crop_batch(rng: np.random.Generator, args) -> torch.Tensor:
    """Whole 17-frame clips, cropped (pixels, latent-aligned) around where the object is in the middle frame."""
    out = []
    for _ in range(args.batch):
        spec = shapes.sample_specs(1, int(rng.integers(2**31)), gray_fraction=args.gray_fraction)[0]
        seed = int(rng.integers(2**31))
        spread = 1.0 if rng.random() < 0.5 else 0.3
        cx, cy = shapes.object_centre(spec, args.frames, seed, args.frames // 2, spread=spread)
        c = args.crop
        top = int(np.clip(round((cy * args.height - c / 2 + rng.integers(-c // 4, c // 4 + 1)) / 8) * 8, 0, args.height - c))
        left = int(np.clip(round((cx * args.width - c / 2 + rng.integers(-c // 4, c // 4 + 1)) / 8) * 8, 0, args.width - c))
        out.append(shapes.render_clip(spec, args.frames, args.height, args.width, seed, crop=(top, left, c, c), spread=spread))
    return to_tensor(np.stack(out))


def normalised(vae, z: torch.Tensor, channels: int) -> torch.Tensor:
    mean = torch.tensor(vae.config.latents_mean[:channels]).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std[:channels]).view(1, -1, 1, 1, 1)
    return (z[:, :channels] - mean) / std


def train_vae(vae, old, args, ckpt: Checkpoint, phase: int = 1) -> list[float]:
    """The whole widened VAE, end to end, on whole clips; the old channels anchored to ``old``'s latents.

    Phase 2 continues from phase 1 with a fresh optimizer and schedule at ``--vae2-lr``: the shapes sharpen
    further once the learning rate is lower."""
    steps, lr = {1: (args.vae_steps, args.vae_lr), 2: (args.vae2_steps, args.vae2_lr)}[phase]
    z0 = old.config.z_dim
    params = [p for p in vae.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    start, curve = 0, []
    state = ckpt.load()
    if state is not None:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, curve = state["step"], state["curve"]
        log(f"vae phase {phase}: resumed at step {start}")
    vae.train()
    acc, t0 = [], time.time()
    for step in range(start, steps):
        rng = np.random.default_rng([args.seed, 40 + phase, step])
        gen = torch.Generator().manual_seed(args.seed * 1_000_037 + 100_000 * (phase - 1) + step)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, 30)
        x = crop_batch(rng, args)
        with torch.no_grad():
            anchor = normalised(old, old.encode(x).latent_dist.mode(), z0)
        mu = vae.encode(x).latent_dist.mode()
        z = mu + args.latent_noise * torch.randn(mu.shape, generator=gen)
        rec = decode_unclamped(vae, z)
        # As the decoder stages of the second part: object pixels weigh more (the background is most of a crop),
        # chroma is matched on its own (brightness explains most of the pixel variance), the first frame (decoded
        # alone) weighs more, and spatial gradients are matched so corners are not averaged into round blobs.
        bg = x.flatten(2).median(dim=2).values[:, :, None, None, None]
        weight = 1.0 + args.object_weight * ((x - bg).abs().amax(dim=1, keepdim=True) > 0.1).float()
        weight[:, :, 0] *= args.first_frame_weight
        err = rec - x
        chroma = (rec - rec.mean(1, keepdim=True)) - (x - x.mean(1, keepdim=True))
        pixel = ((err.abs() + err.pow(2) + args.chroma_weight * chroma.abs()) * weight).mean() / weight.mean()
        edge = sum(((rec.diff(dim=a) - x.diff(dim=a)).abs() * weight.narrow(a, 0, x.shape[a] - 1)).mean() for a in (3, 4))
        edge = edge / weight.mean()
        keep = F.mse_loss(normalised(vae, mu, z0), anchor)
        small = normalised(vae, mu, vae.config.z_dim)[:, z0:].pow(2).mean()  # the new channels stay near unit scale
        loss = pixel + args.edge_weight * edge + args.anchor_weight * keep + args.vae_kl * small
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        acc.append((loss.item(), pixel.item(), edge.item(), keep.item()))
        if (step + 1) % args.log_every == 0 or step + 1 == steps:
            a = np.mean(acc, axis=0)
            acc = []
            curve.append(float(a[0]))
            log(f"vae phase {phase} step {step + 1}/{steps} loss {a[0]:.4f} pixel {a[1]:.4f} edge {a[2]:.4f} anchor {a[3]:.4f} ({time.time() - t0:.0f}s)")
        if (step + 1) % args.ckpt_every == 0 or step + 1 == steps:
            ckpt.save(model=vae.state_dict(), opt=opt.state_dict(), step=step + 1, curve=curve)
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    return curve


# ------------------------------------------------------------------------------------- transformer


def train_transformer(dit, latents, clips, embeds, args, ckpt: Checkpoint, phase: int = 1):
    """Flow matching on the widened latents, with an EMA copy (what ships).

    Phase 2 continues from phase 1's EMA weights with a fresh optimizer, schedule and EMA at ``--dit2-lr``."""
    steps, lr = {1: (args.dit_steps, args.dit_lr), 2: (args.dit2_steps, args.dit2_lr)}[phase]
    opt = torch.optim.AdamW(dit.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    ema = copy.deepcopy(dit).eval()
    start, curve = 0, []
    state = ckpt.load()
    if state is not None:
        dit.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        start, curve = state["step"], state["curve"]
        log(f"transformer phase {phase}: resumed at step {start}")
    for p in ema.parameters():
        p.requires_grad_(False)
    dit.train()
    acc, t0 = [], time.time()
    for step in range(start, steps):
        rng = np.random.default_rng([args.seed, 42 + phase, step])
        gen = torch.Generator().manual_seed(args.seed * 1_000_039 + 100_000 * (phase - 1) + step)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, 50)
        acc.append(flow_matching_step(dit, ema, opt, latents, clips, embeds, rng, gen, batch=args.dit_batch,
                                      flow_shift=args.flow_shift, ema_max=args.ema, step=step))
        if (step + 1) % args.log_every == 0 or step + 1 == steps:
            curve.append(float(np.mean(acc)))
            acc = []
            log(f"transformer phase {phase} step {step + 1}/{steps} loss {curve[-1]:.4f} ({time.time() - t0:.0f}s)")
        if (step + 1) % args.ckpt_every == 0 or step + 1 == steps:
            ckpt.save(model=dit.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), step=step + 1, curve=curve)
    return ema.eval(), curve


# --------------------------------------------------------------------------------------------- main


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the pipeline directory the second part wrote")
    ap.add_argument("--out", default="lightcache/data/tiny-wan")
    ap.add_argument("--work", default="/tmp/tiny-widen", help="checkpoints and intermediate files")
    ap.add_argument("--stage", choices=("vae", "transformer", "all"), default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--z-dim", type=int, default=16)
    ap.add_argument("--gray-fraction", type=float, default=0.2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--crop", type=int, default=64, help="VAE crops, pixels (a multiple of 8)")
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--vae-lr", type=float, default=3e-4)
    ap.add_argument("--vae2-steps", type=int, default=600)
    ap.add_argument("--vae2-lr", type=float, default=1.5e-4)
    ap.add_argument("--vae-kl", type=float, default=1e-3, help="weight of the scale penalty on the new channels")
    ap.add_argument("--anchor-weight", type=float, default=0.5, help="weight of keeping the old channels' latents")
    ap.add_argument("--first-frame-weight", type=float, default=3.0)
    ap.add_argument("--edge-weight", type=float, default=2.0)
    ap.add_argument("--latent-noise", type=float, default=0.05)
    ap.add_argument("--object-weight", type=float, default=4.0)
    ap.add_argument("--chroma-weight", type=float, default=3.0)
    ap.add_argument("--clips", type=int, default=800)
    ap.add_argument("--dit-steps", type=int, default=1000)
    ap.add_argument("--dit-batch", type=int, default=8)
    ap.add_argument("--dit-lr", type=float, default=2e-4)
    ap.add_argument("--dit2-steps", type=int, default=800)
    ap.add_argument("--dit2-lr", type=float, default=8e-5)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--flow-shift", type=float, default=3.0)
    ap.add_argument("--max-seq-len", type=int, default=16)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--ckpt-every", type=int, default=25)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.vae_steps, args.vae2_steps, args.dit_steps, args.dit2_steps, args.clips = 3, 3, 3, 3, 8
        args.log_every, args.ckpt_every = 1, 2
        args.work = args.work + "-smoke"

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormals make CPU convolutions crawl late in training
    from diffusers import AutoencoderKLWan, WanPipeline

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report_path = work / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {"args": vars(args), "seconds": {}}

    def save_report() -> None:
        report_path.write_text(json.dumps(report, indent=1))

    if args.stage in ("vae", "all") and not (work / "vae").exists():
        old = AutoencoderKLWan.from_pretrained(Path(args.base) / "vae").eval()
        for p in old.parameters():
            p.requires_grad_(False)
        for phase, target in ((1, work / "vae-phase1"), (2, work / "vae")):
            if target.exists():
                continue
            t0 = time.time()
            vae = widen_vae(old, args.z_dim)
            if phase == 2:
                vae.load_state_dict(AutoencoderKLWan.from_pretrained(work / "vae-phase1").state_dict())
            report[f"vae{phase}_loss_curve"] = train_vae(vae, old, args, Checkpoint(work / f"vae{phase}.pt"), phase)
            vae.save_pretrained(target)
            report["seconds"][f"vae{phase}"] = round(time.time() - t0)
            save_report()

    if args.stage in ("transformer", "all") and not (work / "transformer").exists():
        from diffusers import WanTransformer3DModel

        t0 = time.time()
        base = WanPipeline.from_pretrained(args.base)
        vae = AutoencoderKLWan.from_pretrained(work / "vae").eval()
        clips = training_clips(args)
        lat_path = work / "latents.pt"
        if lat_path.exists():
            raw = torch.load(lat_path)
        else:
            raw = encode_clips(vae, clips, args)
            torch.save(raw, lat_path)
        # The new channels' statistics go into the config (the pipeline normalises latents with them); the old
        # channels keep theirs, to which the VAE stage anchored them.
        z0 = base.vae.config.z_dim
        mean = raw.mean(dim=(0, 2, 3, 4))
        std = raw.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
        report["latent_stats_measured"] = {"mean": mean.tolist(), "std": std.tolist()}
        vae.register_to_config(
            latents_mean=list(base.vae.config.latents_mean) + [round(float(v), 5) for v in mean[z0:]],
            latents_std=list(base.vae.config.latents_std) + [round(float(v), 5) for v in std[z0:]],
        )
        m = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        sd = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        latents = (raw - m) / sd
        log(f"latents {tuple(latents.shape)}, normalised channel std {[round(float(v), 2) for v in latents.std(dim=(0, 2, 3, 4))]}")
        captions = {""} | {shapes.caption(s, say_background=b) for s, _, _ in clips for b in (True, False)}
        with torch.inference_mode():
            embeds = {
                c: base.encode_prompt(c, do_classifier_free_guidance=False, max_sequence_length=args.max_seq_len)[0][0]
                for c in sorted(captions)
            }
        vae.save_pretrained(work / "vae")  # with the measured statistics
        report["seconds"].setdefault("latents", round(time.time() - t0))
        for phase, target in ((1, work / "transformer-phase1"), (2, work / "transformer")):
            if target.exists():
                continue
            t0 = time.time()
            if phase == 1:
                dit = widen_transformer(base.transformer, args.z_dim)
            else:
                dit = WanTransformer3DModel.from_pretrained(work / "transformer-phase1")
            ema, report[f"transformer{phase}_loss_curve"] = train_transformer(
                dit, latents, clips, embeds, args, Checkpoint(work / f"transformer{phase}.pt"), phase)
            ema.save_pretrained(target)
            report["seconds"][f"transformer{phase}"] = round(time.time() - t0)
            save_report()

    if args.stage == "all":
        base = WanPipeline.from_pretrained(args.base)
        from diffusers import WanTransformer3DModel

        pipe = WanPipeline(
            tokenizer=base.tokenizer, text_encoder=base.text_encoder.eval(),
            vae=AutoencoderKLWan.from_pretrained(work / "vae").eval(),
            transformer=WanTransformer3DModel.from_pretrained(work / "transformer").eval(), scheduler=base.scheduler,
        )
        out = Path(args.out)
        pipe.save_pretrained(out, safe_serialization=True)
        (out / "widen_log.json").write_text(json.dumps(report, indent=1))
        log(f"saved to {out}; seconds {report['seconds']}")


if __name__ == "__main__":
    main()
