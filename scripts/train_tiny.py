"""Train the tiny shapes text-to-video model shipped in ``lightcache/data/tiny-wan``.

Everything is built with diffusers' and transformers' own classes, so the result loads through
``WanPipeline.from_pretrained(dir)`` exactly like a real Wan2.1 checkpoint:

* tokenizer: a ``T5Tokenizer`` over the grammar's words (built offline, no sentencepiece file);
* text encoder: a small ``UMT5EncoderModel`` with seeded random weights, frozen (it only has to give
  each word a distinct, stable embedding; the transformer's cross-attention learns what they mean);
* VAE: ``AutoencoderKLWan`` (8x spatial, 4x temporal compression, causal in time), trained first on
  short clips and 64x64 crops, which is enough because it is fully convolutional;
* transformer: ``WanTransformer3DModel`` trained by flow matching, as Wan: ``x_s = (1-s) x0 + s n``,
  input timestep ``1000 s``, target ``n - x0``, with 10% empty captions so classifier-free guidance works.

Data are synthetic clips from :mod:`lightcache.tiny.shapes`, generated from the seed; the (colour, shape,
motion) triples in ``lightcache.tiny.shapes.HELD_OUT`` are never shown, so the prompt-following test can ask
for them.

Stages (each seeded on its own, each resumable; see ``--help`` and lightcache/data/tiny-wan/MODEL_CARD.md):
VAE phases 1-4, latents of 1000 clips, transformer phases 1-2 on them, latents of 600 clips whose paths
run near the middle of the frame, transformer phase 3 on those (the first part, staged in ``--v1-dir``); then
``scripts/train_tiny_refine.py`` (the second part): the decoder trained again on whole 17-frame clips and the
transformer deepened from 4 to 24 blocks (staged in ``--v2-dir``); then ``scripts/train_tiny_widen.py`` (the third
part): the latent space widened from 12 to 16 channels, the whole VAE trained again, and the transformer trained on
the widened latents (staged in ``--v3-dir``); then ``scripts/train_tiny_sharpen.py`` (the fourth part): the
transformer trained further at low noise levels too, with the object's latent cells weighted. The shipped weights::

    python scripts/train_tiny.py --out lightcache/data/tiny-wan --seed 0 --dit2-stop 3500
    python scripts/train_tiny.py --out lightcache/data/tiny-wan --v1-from /tmp/train_tiny_v1   # resume at the second part
    python scripts/train_tiny.py --out lightcache/data/tiny-wan --v2-from /tmp/train_tiny_v2   # resume at the third part
    python scripts/train_tiny.py --out lightcache/data/tiny-wan --v3-from /tmp/train_tiny_v3   # resume at the fourth part

``--smoke`` runs a few steps of each stage to check shapes and speed.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_training and train_tiny_refine

from lightcache.tiny import shapes  # noqa: E402
from tiny_training import cosine_lr, decode_unclamped, log, to_tensor  # noqa: E402

# Words the tokenizer knows, in a fixed order so the token ids (and so the frozen encoder's
# embeddings) are the same on every run.
WORDS = shapes.VOCABULARY


def build_tokenizer():
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in WORDS]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_text_encoder(vocab_size: int, d_model: int, seed: int):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    cfg = UMT5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=d_model * 2,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    enc = UMT5EncoderModel(cfg).eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc


def build_vae(args):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(args.seed + 1)
    return AutoencoderKLWan(
        base_dim=args.vae_dim,
        z_dim=args.z_dim,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
        latents_mean=[0.0] * args.z_dim,
        latents_std=[1.0] * args.z_dim,
        scale_factor_spatial=8,
        scale_factor_temporal=4,
    )


def build_transformer(args):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(args.seed + 2)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=args.dit_dim // 32,
        attention_head_dim=32,
        in_channels=args.z_dim,
        out_channels=args.z_dim,
        text_dim=args.text_dim,
        freq_dim=128,
        ffn_dim=args.dit_dim * 4,
        num_layers=args.dit_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=256,
    )


def build_scheduler(flow_shift: float):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=flow_shift
    )


# ---------------------------------------------------------------------------------------------- VAE


def vae_batch(rng: np.random.Generator, args, frames: int, crop: int, gray: float) -> np.ndarray:
    """Short windows and crops of full-size clips, centred near the object so most crops show it."""
    out = []
    for _ in range(args.vae_batch):
        spec = shapes.sample_specs(1, int(rng.integers(2**31)), gray_fraction=gray)[0]
        seed = int(rng.integers(2**31))
        first = int(rng.integers(0, args.frames - frames + 1))
        cx, cy = shapes.object_centre(spec, args.frames, seed, first + frames // 2)
        c = crop
        # Jitter the crop so the object is anywhere in it, sometimes at or past the edge.
        top = int(np.clip(cy * args.height - c / 2 + rng.integers(-c // 3, c // 3 + 1), 0, args.height - c))
        left = int(np.clip(cx * args.width - c / 2 + rng.integers(-c // 3, c // 3 + 1), 0, args.width - c))
        out.append(
            shapes.render_clip(
                spec, args.frames, args.height, args.width, seed,
                window=(first, first + frames), crop=(top, left, c, c),
            )
        )
    return np.stack(out)


def train_vae(vae, args, phase: int) -> list[float]:
    """Phase 1: 5-frame windows (first frame + one chunk), 64x64 crops, plain loss: learns shapes.
    Phase 2: 9-frame windows (so the chunk-to-chunk causal cache is trained too), 48x48 crops, and
    object pixels weighted up: phase 1 learns where things are long before it learns their colour,
    because the background is most of every pixel."""
    steps, frames, crop, obj_w, chroma_w, lr, gray = {
        1: (args.vae_steps, 5, 64, 0.0, 0.0, args.vae_lr, 0.3),
        2: (args.vae2_steps, 9, 48, args.vae2_obj_weight, 0.0, args.vae_lr, 0.3),
        3: (args.vae3_steps, 9, 48, args.vae2_obj_weight, args.vae3_chroma_weight, args.vae3_lr, 0.3),
        4: (args.vae4_steps, 9, 48, args.vae2_obj_weight, args.vae3_chroma_weight, args.vae4_lr, args.gray_fraction),
    }[phase]
    rng = np.random.default_rng(args.seed + 10 * phase)
    if phase >= 2:
        torch.manual_seed(args.seed + 100 * phase)  # each later phase starts from a known state, also when resumed
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    curve, acc, t0 = [], [], time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, 50)
        x = to_tensor(vae_batch(rng, args, frames, crop, gray))
        # Object pixels: those away from the clip's median colour (the background covers most of it).
        bg = x.flatten(2).median(dim=2).values[:, :, None, None, None]
        weight = 1.0 + obj_w * ((x - bg).abs().amax(dim=1, keepdim=True) > 0.1).float()
        post = vae.encode(x).latent_dist
        # A fixed small latent noise instead of the learned posterior variance: with the variance head
        # starting at 1 against means of ~0.1, a sampled latent is all noise and the decoder learns
        # nothing for hundreds of steps. Fixed noise still teaches the decoder to tolerate slightly
        # wrong latents (which is what a diffusion model hands it); the L2 term stops the encoder from
        # simply scaling its way past the noise. Latents are read with ``.mode()`` afterwards.
        z = post.mean + args.vae_noise * torch.randn_like(post.mean)
        rec = decode_unclamped(vae, z)
        l1 = ((rec - x).abs() * weight).mean() / weight.mean()
        mse = ((rec - x).pow(2) * weight).mean() / weight.mean()
        kl = post.mean.pow(2).mean()
        # Chroma: each pixel minus its own channel mean. Brightness explains most of the pixel variance,
        # so without this term the VAE draws grey-ish shapes long before red, green and blue part ways.
        chroma = (((rec - rec.mean(1, keepdim=True)) - (x - x.mean(1, keepdim=True))).abs() * weight).mean() / weight.mean()
        loss = l1 + mse + chroma_w * chroma + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        acc.append((l1.item(), mse.item(), kl.item()))
        if (step + 1) % 100 == 0:
            vae.save_pretrained(f"/tmp/train_tiny_vae_phase{phase}_latest")
        if (step + 1) % args.log_every == 0 or step + 1 == steps:
            a = np.mean(acc, axis=0)
            acc = []
            curve.append(float(a[0]))
            log(f"vae phase {phase} step {step + 1}/{steps} l1 {a[0]:.4f} mse {a[1]:.5f} mean^2 {a[2]:.3f} ({time.time() - t0:.0f}s)")
    vae.eval()
    return curve


# ------------------------------------------------------------------------------------- transformer


def clip_set(args, phase: int = 1):
    """The transformer's training clips: (spec, seed) pairs, deterministic from the seed.
    Phases 1-2 share one set (paths anywhere in the frame); phase 3 has its own (paths near the middle)."""
    if phase < 3:
        specs = shapes.sample_specs(args.num_clips, seed=args.seed + 20, gray_fraction=args.gray_fraction)
        rng = np.random.default_rng(args.seed + 21)
    else:
        specs = shapes.sample_specs(args.dit3_clips, seed=args.seed + 50, gray_fraction=args.gray_fraction)
        rng = np.random.default_rng(args.seed + 51)
    return [(s, int(rng.integers(2**31))) for s in specs]


@torch.inference_mode()
def encode_latents(vae, clips, args, spread: float = 1.0) -> torch.Tensor:
    lat = []
    t0 = time.time()
    for i in range(0, len(clips), 4):
        part = clips[i : i + 4]
        x = to_tensor(np.stack([shapes.render_clip(s, args.frames, args.height, args.width, seed, spread=spread) for s, seed in part]))
        lat.append(vae.encode(x).latent_dist.mode())
        if (i // 4) % 50 == 0:
            log(f"encoded {i + len(part)}/{len(clips)} clips ({time.time() - t0:.0f}s)")
    return torch.cat(lat)


@torch.inference_mode()
def caption_embeddings(pipe, captions, max_len: int) -> dict[str, torch.Tensor]:
    out = {}
    for c in captions:
        emb, _ = pipe.encode_prompt(c, do_classifier_free_guidance=False, max_sequence_length=max_len, device="cpu")
        out[c] = emb[0].float()
    return out


def train_transformer(dit, ema, latents, clips, embeds, args, phase: int) -> tuple[torch.nn.Module, list[float]]:
    """Phase 1: ``--dit-steps`` at ``--dit-lr``; phase 2 continues (fresh optimizer, new warm-up and
    cosine) for ``--dit2-steps`` at ``--dit2-lr``: after phase 1 the model knows colours but not yet
    coherent motion, which needs the longer run."""
    steps, base_lr = {
        1: (args.dit_steps, args.dit_lr),
        2: (args.dit2_steps, args.dit2_lr),
        3: (args.dit3_steps, args.dit3_lr),
    }[phase]
    rng = np.random.default_rng(args.seed + 30 + 10 * (phase - 1))
    gen = torch.Generator().manual_seed(args.seed + 31 + 10 * (phase - 1))
    opt = torch.optim.AdamW(dit.parameters(), lr=base_lr, weight_decay=0.01, betas=(0.9, 0.99))
    if ema is None:
        ema = copy.deepcopy(dit).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    dit.train()
    curve, acc, t0 = [], [], time.time()
    n = len(clips)
    ema_step0 = {1: 0, 2: args.dit_steps, 3: args.dit_steps + (args.dit2_stop or args.dit2_steps)}[phase]
    # Phase 2 may stop early (--dit2-stop): it then ran the first part of its cosine schedule only.
    stop = args.dit2_stop if phase == 2 and args.dit2_stop else steps
    for step in range(stop):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, base_lr, 200)
        idx = rng.integers(0, n, size=args.dit_batch)
        x0 = latents[idx]
        caps = []
        for i in idx:
            spec = clips[i][0]
            r = rng.random()
            if r < args.caption_dropout:
                caps.append("")
            else:
                # A black background is said half of the time: a prompt that names none must mean black.
                caps.append(shapes.caption(spec, say_background=bool(rng.random() < 0.5)))
        ctx = torch.stack([embeds[c] for c in caps])
        # Uniform in [0, 1] then shifted like the sampler (flow_shift): each inference step is trained
        # about as often as it is used.
        u = torch.rand(args.dit_batch, generator=gen)
        s = args.flow_shift * u / (1 + (args.flow_shift - 1) * u)
        noise = torch.randn(x0.shape, generator=gen)
        sv = s.view(-1, 1, 1, 1, 1)
        xs = (1 - sv) * x0 + sv * noise
        pred = dit(hidden_states=xs, timestep=s * 1000, encoder_hidden_states=ctx, return_dict=False)[0]
        loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + ema_step0 + step) / (10 + ema_step0 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), dit.parameters()):
                pe.lerp_(p, 1 - decay)
        acc.append(loss.item())
        if (step + 1) % args.log_every == 0 or step + 1 == steps:
            curve.append(float(np.mean(acc)))
            acc = []
            log(f"dit phase {phase} step {step + 1}/{steps} loss {curve[-1]:.4f} lr {opt.param_groups[0]['lr']:.2e} ({time.time() - t0:.0f}s)")
        if args.ckpt_every and (step + 1) % args.ckpt_every == 0:
            torch.save({"phase": phase, "step": step + 1, "ema": ema.state_dict(), "dit": dit.state_dict()}, args.ckpt)
    return ema.eval(), curve


# --------------------------------------------------------------------------------------------- main


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="lightcache/data/tiny-wan")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--z-dim", type=int, default=12)
    ap.add_argument("--vae-dim", type=int, default=16)
    ap.add_argument("--vae-steps", type=int, default=500)
    ap.add_argument("--vae-batch", type=int, default=4)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--vae-kl", type=float, default=1e-3, help="weight of the L2 penalty on latent means")
    ap.add_argument("--vae-noise", type=float, default=0.05, help="std of the noise added to latents in training")
    ap.add_argument(
        "--gray-fraction", type=float, default=0.0,
        help="share of gray-background clips in VAE phase 4 and the transformer's data (phases 1-3 use 0.3)",
    )
    ap.add_argument("--text-dim", type=int, default=64)
    ap.add_argument("--max-seq-len", type=int, default=16)
    ap.add_argument("--num-clips", type=int, default=1000)
    ap.add_argument("--dit-dim", type=int, default=128)
    ap.add_argument("--dit-layers", type=int, default=4)
    ap.add_argument("--dit-steps", type=int, default=3000)
    ap.add_argument("--dit2-steps", type=int, default=5000)
    ap.add_argument("--dit2-lr", type=float, default=5e-4)
    ap.add_argument("--dit-resume", default=None, help="resume: a transformer checkpoint saved at the end of phase 1")
    ap.add_argument("--latents-from", default=None, help="resume: training latents saved by an earlier run with the same VAE")
    ap.add_argument("--dit2-stop", type=int, default=0, help="end phase 2 after this many steps of its schedule (0: all)")
    ap.add_argument("--dit2-resume", default=None, help="resume: a transformer checkpoint saved at the end of phase 2")
    ap.add_argument("--dit3-steps", type=int, default=3000)
    ap.add_argument("--dit3-lr", type=float, default=4e-4)
    ap.add_argument("--dit3-clips", type=int, default=600)
    ap.add_argument("--dit3-spread", type=float, default=0.3)
    ap.add_argument("--latents3-from", default=None, help="resume: phase-3 latents saved by an earlier run")
    ap.add_argument("--encode-phase3-only", action="store_true", help="only encode the phase-3 latents (to run beside phase 2)")
    ap.add_argument("--dit-batch", type=int, default=8)
    ap.add_argument("--dit-lr", type=float, default=8e-4)
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--caption-dropout", type=float, default=0.1)
    ap.add_argument("--flow-shift", type=float, default=3.0)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--ckpt", default="/tmp/train_tiny_ckpt.pt")
    ap.add_argument("--ckpt-every", type=int, default=500)
    ap.add_argument("--vae-from", default=None, help="skip VAE training: load this saved VAE directory")
    ap.add_argument("--vae-resume", default=None, help="resume: a VAE directory saved by an earlier run after a phase")
    ap.add_argument("--vae-resume-phase", type=int, default=0, help="the phase --vae-resume was saved after")
    ap.add_argument("--vae3-steps", type=int, default=400)
    ap.add_argument("--vae3-lr", type=float, default=2e-3)
    ap.add_argument("--vae3-chroma-weight", type=float, default=3.0)
    ap.add_argument("--vae4-steps", type=int, default=300)
    ap.add_argument("--vae4-lr", type=float, default=1e-3)
    ap.add_argument("--vae2-steps", type=int, default=400)
    ap.add_argument("--vae2-obj-weight", type=float, default=4.0)
    ap.add_argument("--smoke", action="store_true", help="a few steps per stage, to check shapes and speed")
    ap.add_argument("--v1-dir", default="/tmp/train_tiny_v1", help="where the first part's model is staged")
    ap.add_argument("--v1-from", default=None, help="resume: skip the first part, refine this saved first-part model")
    ap.add_argument("--no-refine", action="store_true", help="stop after the first part and write it to --out")
    ap.add_argument("--v2-dir", default="/tmp/train_tiny_v2", help="where the second part's model is staged")
    ap.add_argument("--v2-from", default=None, help="resume: skip the first two parts, widen this saved model")
    ap.add_argument("--v3-dir", default="/tmp/train_tiny_v3", help="where the third part's model is staged")
    ap.add_argument("--v3-from", default=None, help="resume: skip the first three parts, sharpen this saved model")
    args = ap.parse_args(argv)
    if args.v3_from:
        args.v3_dir = args.v3_from
        sharpen(args)
        return
    if args.v2_from:
        args.v2_dir = args.v2_from
        widen(args)
        return
    if args.v1_from:
        args.v1_dir = args.v1_from
        refine(args)
        return
    if args.smoke:
        args.vae_steps, args.vae2_steps, args.vae3_steps, args.vae4_steps, args.dit_steps, args.dit2_steps, args.dit3_steps, args.dit3_clips, args.num_clips, args.log_every = 4, 4, 4, 4, 10, 10, 10, 8, 16, 2

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormals make CPU convolutions crawl late in training
    torch.manual_seed(args.seed)
    from diffusers import AutoencoderKLWan, WanPipeline

    t_start = time.time()
    log(f"args: {vars(args)}")
    tok = build_tokenizer()
    enc = build_text_encoder(len(tok), args.text_dim, args.seed)

    # 1. VAE.
    if args.vae_from:
        vae = AutoencoderKLWan.from_pretrained(args.vae_from).eval()
        vae_curve = []
        log(f"loaded VAE from {args.vae_from}")
    else:
        vae_curve = []
        if args.vae_resume:
            vae = AutoencoderKLWan.from_pretrained(args.vae_resume)
            log(f"loaded the VAE after phase {args.vae_resume_phase} from {args.vae_resume}")
        else:
            vae = build_vae(args)
            log(f"VAE params {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M")
        for phase in (1, 2, 3, 4):
            if args.vae_resume and phase <= args.vae_resume_phase:
                continue
            vae_curve += train_vae(vae, args, phase=phase)
            vae.save_pretrained(f"/tmp/train_tiny_vae_phase{phase}")
        vae.save_pretrained("/tmp/train_tiny_vae")
    t_vae = time.time() - t_start

    if args.encode_phase3_only:
        raw3 = encode_latents(vae, clip_set(args, phase=3), args, spread=args.dit3_spread)
        torch.save(raw3, "/tmp/train_tiny_latents3.pt")
        log("saved phase-3 latents to /tmp/train_tiny_latents3.pt")
        return

    # 2. Latents of the training clips; their per-channel statistics go into the VAE config so the
    # pipeline's latents are ~unit variance, as Wan's are.
    clips = clip_set(args)
    if args.latents_from:
        raw = torch.load(args.latents_from)
        log(f"loaded latents from {args.latents_from}")
    else:
        raw = encode_latents(vae, clips, args)
        torch.save(raw, "/tmp/train_tiny_latents.pt")
    mean = raw.mean(dim=(0, 2, 3, 4))
    std = raw.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    vae.register_to_config(latents_mean=[round(float(v), 5) for v in mean], latents_std=[round(float(v), 5) for v in std])
    latents = (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
    log(f"latents {tuple(latents.shape)}, channel std before scaling {[round(float(v), 3) for v in std]}")
    t_lat = time.time() - t_start - t_vae

    # 3. Transformer.
    dit = build_transformer(args)
    log(f"transformer params {sum(p.numel() for p in dit.parameters()) / 1e6:.2f}M")
    pipe = WanPipeline(tokenizer=tok, text_encoder=enc, vae=vae, transformer=dit, scheduler=build_scheduler(args.flow_shift))
    captions = {""}
    for s, _ in clips:
        captions.add(shapes.caption(s, say_background=True))
        captions.add(shapes.caption(s, say_background=False))
    embeds = caption_embeddings(pipe, sorted(captions), args.max_seq_len)
    log(f"{len(embeds)} distinct captions embedded")
    ema, dit_curve = None, []
    if args.dit_resume:
        state = torch.load(args.dit_resume)
        assert state["phase"] == 1 and state["step"] == args.dit_steps, "resume from the end of phase 1"
        dit.load_state_dict(state["dit"])
        ema = build_transformer(args)
        ema.load_state_dict(state["ema"])
        ema.eval()
        log(f"resumed the transformer after phase 1 from {args.dit_resume}")
    else:
        ema, dit_curve = train_transformer(dit, None, latents, clips, embeds, args, phase=1)
        torch.save({"phase": 1, "step": args.dit_steps, "ema": ema.state_dict(), "dit": dit.state_dict()}, "/tmp/train_tiny_dit_phase1.pt")
    if args.dit2_resume:
        state = torch.load(args.dit2_resume)
        assert state["phase"] == 2 and state["step"] == (args.dit2_stop or args.dit2_steps), "resume from the end of phase 2"
        dit.load_state_dict(state["dit"])
        ema.load_state_dict(state["ema"])
        log(f"resumed the transformer after phase 2 from {args.dit2_resume}")
    else:
        ema, curve2 = train_transformer(dit, ema, latents, clips, embeds, args, phase=2)
        dit_curve += curve2
        torch.save({"phase": 2, "step": args.dit2_stop or args.dit2_steps, "ema": ema.state_dict(), "dit": dit.state_dict()}, "/tmp/train_tiny_dit_phase2.pt")
    # Phase 3: paths kept near the middle of the frame (spread < 1). With paths anywhere, the model
    # learned colours but motion only slowly; nearer-the-middle paths make direction the main thing
    # left to learn from the prompt.
    clips3 = clip_set(args, phase=3)
    if args.latents3_from:
        raw3 = torch.load(args.latents3_from)
    else:
        raw3 = encode_latents(vae, clips3, args, spread=args.dit3_spread)
        torch.save(raw3, "/tmp/train_tiny_latents3.pt")
    latents3 = (raw3 - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
    for s, _ in clips3:
        for say in (True, False):
            c = shapes.caption(s, say_background=say)
            if c not in embeds:
                embeds.update(caption_embeddings(pipe, [c], args.max_seq_len))
    ema, curve3 = train_transformer(dit, ema, latents3, clips3, embeds, args, phase=3)
    dit_curve += curve3
    t_dit = time.time() - t_start - t_vae - t_lat

    pipe = WanPipeline(
        tokenizer=tok, text_encoder=enc.eval(), vae=vae.eval(), transformer=ema.eval(), scheduler=build_scheduler(args.flow_shift)
    )
    # The first part's model goes to a staging directory; the refinement stages (scripts/train_tiny_refine.py)
    # build the shipped model on it.
    out = Path(args.out) if args.no_refine else Path(args.v1_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    report = {
        "args": vars(args),
        "seconds": {"vae": round(t_vae), "latents": round(t_lat), "transformer": round(t_dit), "total": round(time.time() - t_start)},
        "vae_l1_curve": vae_curve,
        "transformer_loss_curve": dit_curve,
        "params": {
            "transformer": sum(p.numel() for p in ema.parameters()),
            "vae": sum(p.numel() for p in vae.parameters()),
            "text_encoder": sum(p.numel() for p in enc.parameters()),
        },
    }
    (out / "training_log.json").write_text(json.dumps(report, indent=1))
    log(f"saved to {out}; seconds {report['seconds']}")
    if not args.no_refine:
        refine(args)


def refine(args) -> None:
    """The second part: full-length decoding and a deeper transformer, on the first part's model; then the third."""
    import train_tiny_refine

    argv = ["--base", args.v1_dir, "--out", args.v2_dir, "--seed", str(args.seed), "--threads", str(args.threads)]
    train_tiny_refine.main(argv + (["--smoke"] if args.smoke else []))
    widen(args)


def widen(args) -> None:
    """The third part: a wider latent space (sharper shapes), on the second part's model."""
    import train_tiny_widen

    argv = ["--base", args.v2_dir, "--out", args.v3_dir, "--seed", str(args.seed), "--threads", str(args.threads)]
    train_tiny_widen.main(argv + (["--smoke"] if args.smoke else []))
    sharpen(args)


def sharpen(args) -> None:
    """The fourth part: the transformer trained further for corners (low noise levels, the object weighted)."""
    import train_tiny_sharpen

    argv = ["--base", args.v3_dir, "--out", args.out, "--seed", str(args.seed), "--threads", str(args.threads)]
    train_tiny_sharpen.main(argv + (["--smoke"] if args.smoke else []))


if __name__ == "__main__":
    main()
