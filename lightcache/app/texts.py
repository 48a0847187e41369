"""The words on the page: the introduction, the "How it works" section and the example prompts.

Kept apart from the layout so that a teacher can reword them without reading any UI code. Every paragraph points
at something the reader can see in the step trace or the memory timeline.
"""

INTRO = """\
# LightCache + EasyCache: faster, lighter video diffusion, and why

Pick a preset, type a prompt and press **Run**. While the video is being made, the **step trace** shows every
call of the diffusion transformer as it happens: computed (blue square) or reused from the cache (green circle),
and the error estimate **E** that decides it. When it is done you get the video next to a **memory timeline** of
the three stages: encode, denoise, decode. Switch each acceleration on or off, move **tau**, and tick
**Compare with the plain run** to see what they buy and what they cost.
"""

HOW_IT_WORKS = """\
### EasyCache: skip the steps whose work can be predicted

A video diffusion model runs its transformer once per denoising step (twice with classifier-free guidance: a
*cond* and an *uncond* branch; the two rows of the trace). Between neighbouring steps, what the transformer does
to its input, the **transformation vector** (output minus input), changes only slowly. After two computed steps
EasyCache knows **k**, how much the output moves per unit of input change. At each later step it estimates the
error of reusing the last transformation as k times how far the input moved, relative to the last output, and
adds that up into **E**. While **E stays below tau** the step returns *input + cached transformation* without
running the transformer (green circles); when E reaches tau the step runs in full (blue square) and E starts
again from 0. The first **warm-up** steps (grey band) and the last step always run. In the lower half of the
trace the purple line is E climbing towards the red dashed tau and dropping back to 0. A larger tau reuses more:
faster, and further from the plain result; tau = 0 reuses nothing and gives the plain video exactly.

### Other caches: skip part of a call instead of all of it

The **Cache method** beside the EasyCache switch swaps EasyCache for one of the caches diffusers ships, each with
its one setting: **FirstBlockCache** runs the first block and skips the others while that block's output barely
changed; **MagCache** (after one calibration run, reused by later runs of the same model and settings) and
**SeaCache** skip every block and reuse the cached residual; **TaylorSeer** computes every few steps and predicts
in between; **PAB** reuses the attention layers' outputs. The trace counts what really ran in each call: a call
that ran only part of its blocks or layers is a teal square with a dot (hover to see what ran), a call where no
block ran is a green circle, and the lower half shows the share of each call's block work that ran.

### Asynchronous swapping: keep only what is needed on the GPU

Whatever is idle (the text encoder once the prompt is encoded, transformer blocks between their turns, the VAE
until decoding, cached tensors between the steps that use them) waits in pinned CPU memory and is copied back on a
side stream just before it is needed, so the copy overlaps with computing. In the timeline the CUDA memory line
stays lower through the denoise band at little extra time. On a CPU there is nowhere to swap to: the run says so
under the stage table and nothing changes.

### Feature chunking: never build the widest tensor whole

Most of a transformer block treats every token on its own: the feed-forward layers (whose middle layer is several
times wider than the model), the normalisations and the projections; only attention mixes tokens, and even there
each query can be computed on its own. Feature chunking runs all of this over slices of the token sequence, so that
the widest intermediates never exist for the whole video at once. The result is the same up to float rounding; in
the timeline the peak inside the denoise band is lower.

### Sliced decoding: decode the latent in pieces

The VAE turns the small latent video into full-size frames, and its full-resolution activations are the largest
tensors of the whole run: the jump at the start of the decode band. Sliced decoding decodes the latent in bands,
each band handing the few edge columns its neighbour needs to the next one, so nothing is recomputed, there are no
seams and the result is exact; the decode peak drops.

What the three do on a real model (H100, Wan2.1-14B at 720x1280, 81 frames): the run's peak goes from 47.5 GiB to
4.8 GiB, for about 8 % more denoising time and a 1.2x slower decode.

### Compile: the same blocks as faster code, after a slow first call

**Compile (torch.compile)** turns each transformer block into optimised code for this machine and this video
size. The first call at a size compiles (seconds on a GPU, tens of seconds on a CPU): in the trace it is ringed in
orange, and the status line counts it as warm-up, apart from the speed-up. Every later call, in this run and in
the next runs at the same size, runs the compiled code; a new size compiles once more. The result matches the
uncompiled run up to float rounding, and it combines with EasyCache (a reused step skips the compiled blocks just
as it skips the plain ones) and with the three memory strategies.

### Reading the comparison

**Compare with the plain run** generates the same prompt and seed again with every acceleration off and shows
both videos. The speed-up is plain time over accelerated time. PSNR (in dB, higher is closer; "inf" means
identical) and SSIM (1 means identical) say how close the accelerated video is to the plain one.
"""

COMPARE_HINT = (
    "Tick **Compare with the plain run** to see the plain video here, with the speed-up, PSNR and SSIM."
)

#: (prompt, seed, tau) triples the tiny shapes model draws well: seen combinations whose plain video, at the preset's
#: defaults, showed the asked colour in every frame, the asked shape and the asked motion in the model's evaluation
#: (``lightcache/data/tiny-wan/eval.json``, where each of these prompts and seeds is a row).
EXAMPLES = (
    ("a green circle moving up", 1002, 0.05),
    ("a blue triangle moving down", 1005, 0.1),
    ("a white triangle moving left", 1008, 0.05),
    ("a red circle moving down", 1009, 0.1),
    ("a yellow triangle moving left", 1032, 0.05),
)
