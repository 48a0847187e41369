"""The shipped tiny model (lightcache/data/tiny-wan) and the synthetic world it was trained on.

The first half checks the grammar, the renderer and the measurement on rendered clips, so the
measurement is shown to be able to fail. The second half loads the shipped weights offline through
``WanPipeline.from_pretrained`` and checks what the model draws: for every prompt, the dominant colour of
the moving object must be the one asked for and its centroid must move the stated way by a clear margin.
Prompts include (colour, shape, motion) triples that were held out of training.

Run ``pytest tests/test_tiny_model.py -s`` to see the per-prompt table and the pass rate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lightcache.tiny import shapes

ASSETS = Path(__file__).resolve().parents[1] / "lightcache" / "data" / "tiny-wan"

# Settings of the prompt-following check. Fewer steps than the app's default keep the test quick;
# the model follows prompts at these settings too (see MODEL_CARD.md for the pass rate at the default).
HEIGHT, WIDTH, FRAMES = 128, 128, 17
STEPS = 12
GUIDANCE = 5.0
MAX_SEQ_LEN = 16
# Floors of the prompt-following test (rates over PROMPTS, measured on the output), a little under what the shipped
# weights measure here (colour and motion 96 %, colour in every frame 92 %, median worst frame 13 % off colour, shape
# 46 %: 11 of 24), each allowing one video to flip on another CPU. The shape floor sits above 9/24 = 37.5 %, what a
# model that draws every object round would score.
COLOUR_EVERY_FRAME_FLOOR = 0.85
WORST_FRAME_OFF_COLOUR_CEILING = 0.2
COLOUR_AND_MOTION_FLOOR = 0.9
SHAPE_FLOOR = 0.4

PROMPTS = [
    # Held out of training: the model never saw these (colour, shape, motion) combinations.
    "a red square moving up",
    "a green circle moving left",
    "a blue triangle moving right",
    "a yellow circle moving down",
    "a white square moving left",
    "a green triangle moving up",
    # Seen combinations, every colour, shape and direction, black background said or not.
    "a red circle moving right",
    "a red triangle moving down",
    "a green square moving right",
    "a green circle moving down",
    "a blue circle moving up",
    "a blue square moving left",
    "a yellow square moving right",
    "a yellow triangle moving left",
    "a white circle moving up",
    "a white triangle moving down",
    "a blue square moving down on a black background",
    "a red circle moving left on a black background",
    "a yellow circle moving up on a black background",
    "a white square moving right on a black background",
    "a green triangle moving left",
    "a red square moving down",
    "a blue circle moving left",
    "a yellow square moving up",
]


# ------------------------------------------------------------------ grammar, renderer, measurement


def test_parse_prompt_and_caption_round_trip():
    for spec in shapes.all_specs(include_held_out=True):
        for bg in shapes.BACKGROUNDS:
            s = shapes.ClipSpec(spec.colour, spec.shape, spec.motion, bg)
            assert shapes.parse_prompt(shapes.caption(s)) == s
            assert shapes.parse_prompt(shapes.caption(s, say_background=True)) == s
    assert shapes.parse_prompt("a red circle moving right").background == "black"
    assert shapes.parse_prompt("A White Square moving down on a grey background").background == "gray"
    with pytest.raises(ValueError):
        shapes.parse_prompt("a purple circle moving right")


def test_sampler_is_deterministic_and_holds_out():
    a, b = shapes.sample_specs(300, seed=7), shapes.sample_specs(300, seed=7)
    assert a == b
    assert not any(s.triple in shapes.HELD_OUT for s in a)
    assert {s.colour for s in a} == set(shapes.COLOURS)
    assert {s.motion for s in a} == set(shapes.MOTIONS)
    assert all(p.split(" moving")[0] for p in PROMPTS)
    assert sum(shapes.parse_prompt(p).triple in shapes.HELD_OUT for p in PROMPTS) == len(shapes.HELD_OUT)


def test_render_is_deterministic_and_seed_dependent():
    a = shapes.render_clip("a green square moving up", 17, 64, 64, seed=1)
    b = shapes.render_clip("a green square moving up", 17, 64, 64, seed=1)
    c = shapes.render_clip("a green square moving up", 17, 64, 64, seed=2)
    assert a.shape == (17, 64, 64, 3) and a.dtype == np.uint8
    assert (a == b).all() and not (a == c).all()


@pytest.mark.parametrize("spec", shapes.all_specs(include_held_out=True)[::5])
def test_measurement_reads_rendered_clips(spec):
    for bg in shapes.BACKGROUNDS:
        s = shapes.ClipSpec(spec.colour, spec.shape, spec.motion, bg)
        clip = shapes.render_clip(s, FRAMES, HEIGHT, WIDTH, seed=3)
        ok, m = shapes.follows_prompt(clip, s)
        assert ok, m
        assert m.colour == s.colour and m.direction == s.motion and m.background == bg
        # Float frames in [0, 1] with a batch axis, as the pipeline returns them, read the same.
        assert shapes.measure_motion(clip[None].astype(np.float32) / 255.0).direction == s.motion


def test_measurement_can_fail():
    clip = shapes.render_clip("a red circle moving right", FRAMES, HEIGHT, WIDTH, seed=0)
    m = shapes.measure_motion(clip)
    assert (m.colour, m.direction) == ("red", "right") and m.dx > 0.3
    # Played backwards, it moves left, so a "moving right" prompt fails.
    assert shapes.measure_motion(clip[::-1]).direction == "left"
    assert not shapes.follows_prompt(clip[::-1], "a red circle moving right")[0]
    assert not shapes.follows_prompt(clip, "a blue circle moving right")[0]
    # A still object (every frame the first) has no motion; an empty video has no object at all.
    assert not shapes.follows_prompt(np.repeat(clip[:1], FRAMES, 0), "a red circle moving right")[0]
    assert shapes.measure_motion(np.zeros_like(clip)).colour is None
    # Painting the whole frame red is a red background with nothing on it, not a red object.
    red = np.zeros_like(clip)
    red[...] = shapes.PALETTE["red"]
    assert not shapes.follows_prompt(red, "a red circle moving right")[0]


@pytest.mark.parametrize("spec", shapes.all_specs(include_held_out=True)[::4])
def test_frame_measure_recognises_every_rendered_shape_and_colour(spec):
    for seed in (1, 2):
        report = shapes.measure_frames(shapes.render_clip(spec, FRAMES, HEIGHT, WIDTH, seed=seed), spec)
        assert report.shape == spec.shape and all(s == spec.shape for s in report.shapes)
        assert report.colour_every_frame and report.worst_off_colour < 0.02


def test_frame_measure_catches_colour_drift_in_late_frames():
    clip = shapes.render_clip("a blue square moving right", FRAMES, HEIGHT, WIDTH, seed=4)
    drifted = clip.copy()
    late = drifted[-3:]
    late[(late == shapes.PALETTE["blue"]).all(-1)] = shapes.PALETTE["green"]  # the last three frames turn green
    report = shapes.measure_frames(drifted, "a blue square moving right")
    assert not report.colour_every_frame and report.worst_off_colour > 0.9
    assert max(report.off_colour[:-3]) < 0.02, "the early frames are still blue"
    # A fringe: a third of the object's pixels in one frame.
    fringe = clip.copy()
    rows = np.where((fringe[8] == shapes.PALETTE["blue"]).all(-1).any(1))[0]
    fringe[8, rows[: len(rows) // 3]] = np.where((fringe[8, rows[: len(rows) // 3]] > 0).any(-1, keepdims=True),
                                                 np.array(shapes.PALETTE["red"], np.uint8), 0)
    report = shapes.measure_frames(fringe, "a blue square moving right")
    assert report.colour_every_frame and 0.2 < report.worst_off_colour < 0.5


def test_frame_measure_reads_blobs_and_wrong_shapes_as_such():
    triangle = shapes.render_clip("a red triangle moving down", FRAMES, HEIGHT, WIDTH, seed=5)
    square = shapes.render_clip("a red square moving down", FRAMES, HEIGHT, WIDTH, seed=5)
    assert not shapes.measure_frames(square, "a red triangle moving down").shape_recognised
    circle = shapes.render_clip("a red circle moving down", FRAMES, HEIGHT, WIDTH, seed=5)
    report = shapes.measure_frames(circle, "a red triangle moving down")
    assert report.shape == "circle" and not report.shape_recognised
    # A blurred triangle is still a triangle: the measure reads the outline, not sharp edges.
    import torch

    x = torch.from_numpy(triangle).float().permute(0, 3, 1, 2)
    soft = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    soft = soft.permute(0, 2, 3, 1).round().clamp(0, 255).numpy().astype(np.uint8)
    assert shapes.measure_frames(soft, "a red triangle moving down").shape_recognised
    assert shapes.measure_frames(np.zeros_like(triangle), "a red triangle moving down").shape is None


# ------------------------------------------------------------------------------- the shipped model


@pytest.fixture(scope="module")
def pipe():
    import torch
    from diffusers import WanPipeline

    assert (ASSETS / "model_index.json").is_file(), f"the shipped model is missing from {ASSETS}"
    threads = torch.get_num_threads()
    # The environment and torch's thread count are restored after this module, for the tests that follow it.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        torch.set_num_threads(min(2, threads))
        try:
            yield WanPipeline.from_pretrained(str(ASSETS))
        finally:
            torch.set_num_threads(threads)


def _generate(pipe, prompts, seed, steps=STEPS, frames=FRAMES):
    import torch

    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    return pipe(
        prompts,
        negative_prompt=[""] * len(prompts),
        height=HEIGHT,
        width=WIDTH,
        num_frames=frames,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        generator=gens,
        output_type="np",
        max_sequence_length=MAX_SEQ_LEN,
    ).frames


def test_assets_are_small_safetensors():
    weights = list(ASSETS.rglob("*.safetensors"))
    assert {p.parent.name for p in weights} == {"transformer", "vae", "text_encoder"}
    assert not list(ASSETS.rglob("*.bin"))
    assert sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file()) < 40 * 2**20


def test_loads_offline_in_eval_mode(pipe):
    for name in ("transformer", "vae", "text_encoder"):
        module = getattr(pipe, name)
        assert not any(m.training for m in module.modules()), f"{name} is in train mode"
    assert pipe.vae_scale_factor_spatial == 8 and pipe.vae_scale_factor_temporal == 4


def test_same_seed_same_video(pipe):
    a = _generate(pipe, ["a red circle moving right"], seed=5, steps=4, frames=9)
    b = _generate(pipe, ["a red circle moving right"], seed=5, steps=4, frames=9)
    c = _generate(pipe, ["a red circle moving right"], seed=6, steps=4, frames=9)
    assert a.shape == (1, 9, HEIGHT, WIDTH, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_prompt_following(pipe):
    """The output, measured frame by frame: the asked colour in every frame, the asked shape, the asked motion.

    Rates over the 24 prompts (held-out combinations included); the floors sit a little under what the shipped
    weights measure here (MODEL_CARD.md has the rates over 60 videos at the app's defaults), so a model that
    drifts in colour, draws blobs or ignores the direction fails.
    """
    rows = []
    for i in range(0, len(PROMPTS), 8):
        batch = PROMPTS[i : i + 8]
        videos = _generate(pipe, batch, seed=100 + i)
        for prompt, video in zip(batch, videos):
            ok, m = shapes.follows_prompt(video, prompt)
            frames = shapes.measure_frames(video, prompt)
            held = shapes.parse_prompt(prompt).triple in shapes.HELD_OUT
            rows.append((ok, held, prompt, m, frames))
    n = len(rows)
    lines = [
        f"{'PASS' if ok else 'FAIL'} {'held-out' if held else '        '} {prompt:<50} -> {m.colour} "
        f"({m.colour_share:.0%}), dx {m.dx:+.2f} dy {m.dy:+.2f} | worst frame {f.worst_off_colour:.0%} off colour, "
        f"shape {f.shape}"
        for ok, held, prompt, m, f in rows
    ]
    motion_rate = sum(r[0] for r in rows) / n
    held_rows = [r for r in rows if r[1]]
    colour_rate = sum(f.colour_every_frame for *_, f in rows) / n
    worst = sorted(f.worst_off_colour for *_, f in rows)[n // 2]
    shape_rate = sum(f.shape_recognised for *_, f in rows) / n
    summary = (
        f"colour and motion {motion_rate:.0%} (held-out {sum(r[0] for r in held_rows)}/{len(held_rows)}); "
        f"colour in every frame {colour_rate:.0%}, median worst frame {worst:.0%} off colour; "
        f"shape {shape_rate:.0%} ({STEPS} steps, guidance {GUIDANCE})"
    )
    print("\n" + "\n".join(lines) + "\n" + summary)
    detail = summary + "\n" + "\n".join(lines)
    assert n >= 20
    assert colour_rate >= COLOUR_EVERY_FRAME_FLOOR, detail
    assert worst <= WORST_FRAME_OFF_COLOUR_CEILING, detail
    assert motion_rate >= COLOUR_AND_MOTION_FLOOR, detail
    assert shape_rate >= SHAPE_FLOOR, detail
