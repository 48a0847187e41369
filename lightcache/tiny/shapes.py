"""Synthetic moving-shape clips: the world the shipped tiny model was trained on.

Everything here is deterministic from a seed and needs no download. It has three jobs:

1. **Vocabulary and caption grammar.** A prompt such as ``"a red circle moving right"`` or
   ``"a yellow triangle moving up on a gray background"`` is parsed into a :class:`ClipSpec`.
2. **Rendering.** :func:`render_clip` draws that spec as a video (frames x height x width x RGB),
   with the start position, size and speed drawn from a seed. :func:`sample_specs` is the data set
   sampler used by ``scripts/train_tiny.py``.
3. **Measurement.** :func:`measure_motion` looks at a generated video and reports the dominant colour
   of the object that is not background and how far its centroid moved. The prompt-following test
   uses it, so that the model is judged on what it draws, not on its training loss.

Example:

>>> spec = parse_prompt("a red circle moving right")
>>> spec
ClipSpec(colour='red', shape='circle', motion='right', background='black')
>>> clip = render_clip(spec, frames=17, height=64, width=64, seed=0)
>>> clip.shape, clip.dtype
((17, 64, 64, 3), dtype('uint8'))
>>> m = measure_motion(clip)
>>> m.colour, m.direction
('red', 'right')
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "COLOURS",
    "SHAPES",
    "MOTIONS",
    "BACKGROUNDS",
    "PALETTE",
    "BACKGROUND_RGB",
    "VOCABULARY",
    "HELD_OUT",
    "ClipSpec",
    "Motion",
    "parse_prompt",
    "caption",
    "render_clip",
    "sample_specs",
    "object_centre",
    "all_specs",
    "measure_motion",
    "follows_prompt",
    "FrameReport",
    "measure_frames",
]

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "white")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down")
BACKGROUNDS: tuple[str, ...] = ("black", "gray")

# Saturated, well separated colours: the VAE and the measurement both have an easy time telling them apart.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 70),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "white": (240, 240, 240),
}
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "gray": (110, 110, 110)}
# "grey" is accepted by the parser as a spelling of "gray".
_BACKGROUND_ALIASES = {"grey": "gray"}

# (colour, shape, motion) triples never shown in training. The prompt-following test asks for them to
# check that the model composes words it has only seen in other combinations.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("red", "square", "up"),
    ("green", "circle", "left"),
    ("blue", "triangle", "right"),
    ("yellow", "circle", "down"),
    ("white", "square", "left"),
    ("green", "triangle", "up"),
)

# Every word the tokenizer knows. Grammar words first; then common filler words so that a prompt
# like "the red circle is moving right" does not collapse half its words into <unk>.
VOCABULARY: tuple[str, ...] = (
    COLOURS
    + SHAPES
    + MOTIONS
    + BACKGROUNDS
    + ("grey", "moving", "moves", "on", "background", "a", "an", "the", "and", "is", "to", "towards", "of")
    + ("video", "clip", "shape", "object", "plain", "with", ",", ".")
)


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """What one clip shows: a coloured shape moving in one direction over a plain background."""

    colour: str
    shape: str
    motion: str
    background: str = "black"

    def __post_init__(self) -> None:
        for value, allowed, name in (
            (self.colour, COLOURS, "colour"),
            (self.shape, SHAPES, "shape"),
            (self.motion, MOTIONS, "motion"),
            (self.background, BACKGROUNDS, "background"),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.colour, self.shape, self.motion)


def caption(spec: ClipSpec, say_background: bool | None = None) -> str:
    """The caption of a spec in the grammar the model was trained on.

    A black background may be left unsaid (black is the default); any other background is always said.

    >>> caption(ClipSpec("red", "circle", "right"))
    'a red circle moving right'
    >>> caption(ClipSpec("blue", "square", "up", "gray"))
    'a blue square moving up on a gray background'
    """
    if say_background is None:
        say_background = spec.background != "black"
    text = f"a {spec.colour} {spec.shape} moving {spec.motion}"
    if say_background or spec.background != "black":
        text += f" on a {spec.background} background"
    return text


def parse_prompt(prompt: str) -> ClipSpec:
    """Parse a prompt of the grammar into a :class:`ClipSpec`.

    The parser is keyword based so that small variations still parse: the first colour word before
    "background" is the object's colour, the colour word just before "background" is the background.
    A prompt that names no background gets black.

    >>> parse_prompt("A green triangle moving down on a grey background")
    ClipSpec(colour='green', shape='triangle', motion='down', background='gray')
    >>> parse_prompt("a circle")
    Traceback (most recent call last):
    ...
    ValueError: prompt 'a circle' names no colour
    """
    words = re.findall(r"[a-z]+", prompt.lower())
    words = [_BACKGROUND_ALIASES.get(w, w) for w in words]
    background = "black"
    if "background" in words:
        i = words.index("background")
        if i > 0 and words[i - 1] in BACKGROUNDS:
            background = words[i - 1]
        words = words[: max(i - 1, 0)]

    def first(options: Sequence[str], name: str) -> str:
        for w in words:
            if w in options:
                return w
        raise ValueError(f"prompt {prompt!r} names no {name}")

    return ClipSpec(first(COLOURS, "colour"), first(SHAPES, "shape"), first(MOTIONS, "motion"), background)


def all_specs(include_held_out: bool = False) -> list[ClipSpec]:
    """Every (colour, shape, motion) on a black background, training triples only unless asked."""
    return [
        ClipSpec(c, s, m)
        for c in COLOURS
        for s in SHAPES
        for m in MOTIONS
        if include_held_out or (c, s, m) not in HELD_OUT
    ]


_DIRECTION = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


def _trajectory(
    spec: ClipSpec, frames: int, rng: np.random.Generator, spread: float = 1.0
) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre (x, y) per frame in units of the frame size, and the object's half-size.

    ``spread`` scales how far the start position may stray from the middle of its allowed range
    (1: anywhere the path fits, 0: always the middle); the seed draws the same numbers either way.
    """
    size = rng.uniform(0.10, 0.15)  # half-size as a fraction of the frame: 13-19 px at 128 px
    travel = rng.uniform(0.35, 0.50)  # a clear, measurable move over the clip
    dx, dy = _DIRECTION[spec.motion]
    # Along the motion: start so that the whole path stays inside the frame.
    lo, hi = size + 0.02, 1.0 - size - 0.02 - travel
    start_along = rng.uniform(lo, hi)
    across = rng.uniform(size + 0.05, 1.0 - size - 0.05)
    start_along = (lo + hi) / 2 + spread * (start_along - (lo + hi) / 2)
    across = 0.5 + spread * (across - 0.5)
    t = np.linspace(0.0, 1.0, frames)
    along = start_along + travel * t
    if dx:
        x = along if dx > 0 else 1.0 - along
        y = np.full(frames, across)
    else:
        y = along if dy > 0 else 1.0 - along
        x = np.full(frames, across)
    return x, y, size


def _shape_mask(shape: str, cx: float, cy: float, r: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Soft coverage (0..1) of one shape; 4x supersampled edges keep the VAE's job smooth."""
    if shape == "circle":
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    elif shape == "square":
        s = r * 0.9  # same visual area as the circle, roughly
        inside = (np.abs(xx - cx) <= s) & (np.abs(yy - cy) <= s)
    else:  # an upright triangle with its apex up
        top, bottom = cy - r, cy + r * 0.85
        half = (yy - top) / (bottom - top) * r * 1.1
        inside = (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half)
    return inside.astype(np.float32)


def render_clip(
    spec: ClipSpec | str,
    frames: int = 33,
    height: int = 128,
    width: int = 128,
    seed: int = 0,
    *,
    window: tuple[int, int] | None = None,
    crop: tuple[int, int, int, int] | None = None,
    spread: float = 1.0,
) -> np.ndarray:
    """Render a spec (or a prompt) as a uint8 video of shape (frames, height, width, 3).

    The seed picks the size, the start position and the travel; the same seed gives the same clip.
    ``window=(first, stop)`` and ``crop=(top, left, h, w)`` render only part of that clip (exactly the
    same pixels, at a fraction of the cost): the VAE trains on such short, small pieces. ``spread`` below
    1 keeps the path closer to the middle of the frame (see ``_trajectory``).

    >>> a = render_clip("a white square moving down", frames=9, height=32, width=32, seed=3)
    >>> b = render_clip("a white square moving down", frames=9, height=32, width=32, seed=3)
    >>> bool((a == b).all()), a.shape
    (True, (9, 32, 32, 3))
    """
    if isinstance(spec, str):
        spec = parse_prompt(spec)
    rng = np.random.default_rng(seed)
    xs, ys, size = _trajectory(spec, frames, rng, spread)
    first, stop = window if window is not None else (0, frames)
    top, left, ch, cw = crop if crop is not None else (0, 0, height, width)
    ss = 4
    # Pixel-centre sample positions in frame units, 4x4 per pixel; both axes scale with the same unit
    # (the shorter side) so circles stay round on non-square frames.
    unit = float(min(height, width))
    yy = (np.arange(top * ss, (top + ch) * ss, dtype=np.float32) + 0.5) / ss / unit
    xx = (np.arange(left * ss, (left + cw) * ss, dtype=np.float32) + 0.5) / ss / unit
    yy, xx = yy[:, None], xx[None, :]
    bg = np.asarray(BACKGROUND_RGB[spec.background], np.float32)
    fg = np.asarray(PALETTE[spec.colour], np.float32)
    out = np.empty((stop - first, ch, cw, 3), np.uint8)
    for i, f in enumerate(range(first, stop)):
        cx, cy = xs[f] * width / unit, ys[f] * height / unit
        m = _shape_mask(spec.shape, cx, cy, size, yy, xx)
        cover = m.reshape(ch, ss, cw, ss).mean(axis=(1, 3))[..., None]
        out[i] = np.rint(bg * (1.0 - cover) + fg * cover).astype(np.uint8)
    return out


def object_centre(spec: ClipSpec, frames: int, seed: int, frame: int, spread: float = 1.0) -> tuple[float, float]:
    """Where :func:`render_clip` (with the same ``spread``) puts the object's centre (x, y, frame units) at ``frame``."""
    xs, ys, _ = _trajectory(spec, frames, np.random.default_rng(seed), spread)
    return float(xs[frame]), float(ys[frame])


def sample_specs(n: int, seed: int, include_held_out: bool = False, gray_fraction: float = 0.3) -> list[ClipSpec]:
    """The training sampler: ``n`` specs drawn uniformly from the allowed triples, deterministic from ``seed``.

    >>> specs = sample_specs(100, seed=0)
    >>> any(s.triple in HELD_OUT for s in specs)
    False
    """
    rng = np.random.default_rng(seed)
    triples = [s.triple for s in all_specs(include_held_out)]
    out = []
    for _ in range(n):
        c, s, m = triples[rng.integers(len(triples))]
        bg = "gray" if rng.random() < gray_fraction else "black"
        out.append(ClipSpec(c, s, m, bg))
    return out


@dataclasses.dataclass(frozen=True)
class Motion:
    """What :func:`measure_motion` saw in a video.

    ``dx``/``dy`` are the centroid displacement from the first to the last quarter of the clip in
    units of the frame size (x to the right, y downwards). ``colour`` is the palette colour most of the
    object's pixels are nearest to; ``colour_share`` is the fraction of object pixels that voted for it.
    ``coverage`` is the mean fraction of the frame the object covers (0 means nothing was drawn).
    """

    colour: str | None
    colour_share: float
    background: str
    dx: float
    dy: float
    coverage: float

    @property
    def direction(self) -> str | None:
        if self.colour is None:
            return None
        if abs(self.dx) >= abs(self.dy):
            return "right" if self.dx > 0 else "left"
        return "down" if self.dy > 0 else "up"

    @property
    def along(self) -> float:
        """The displacement along the dominant direction (positive)."""
        return max(abs(self.dx), abs(self.dy))


def _as_uint8(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 5:  # a pipeline's (batch, frames, H, W, 3)
        frames = frames[0]
    if frames.dtype != np.uint8:
        frames = np.clip(np.rint(frames.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return frames


def measure_motion(frames: np.ndarray, threshold: float = 60.0) -> Motion:
    """Measure the dominant colour and the centroid motion of the object in a video.

    ``frames`` is (F, H, W, 3) uint8, or float in [0, 1] (a pipeline's ``output_type="np"`` frames,
    with or without the batch axis). The background is the median colour of the frame border; object
    pixels are those farther than ``threshold`` (RGB distance, 0-255 scale) from it. Only the object's
    own pixels count, so a model that paints the whole frame red does not pass as a red object.

    >>> clip = render_clip("a blue triangle moving up", frames=17, height=64, width=64, seed=1)
    >>> m = measure_motion(clip)
    >>> m.colour, m.direction, m.along > 0.3
    ('blue', 'up', True)
    >>> measure_motion(clip[::-1]).direction  # the same clip played backwards moves down
    'down'
    """
    v = _as_uint8(frames).astype(np.float32)
    f, h, w, _ = v.shape
    border = np.concatenate([v[:, 0], v[:, -1], v[:, :, 0], v[:, :, -1]], axis=1).reshape(-1, 3)
    bg_rgb = np.median(border, axis=0)
    background = min(BACKGROUND_RGB, key=lambda k: np.sum((np.asarray(BACKGROUND_RGB[k]) - bg_rgb) ** 2))
    dist = np.sqrt(((v - bg_rgb) ** 2).sum(-1))  # (F, H, W)
    mask = dist > threshold
    coverage = float(mask.mean())
    if mask.sum() < max(4, f):  # nothing drawn
        return Motion(None, 0.0, background, 0.0, 0.0, coverage)

    pix = v[mask]
    names = list(PALETTE)
    pal = np.asarray([PALETTE[k] for k in names], np.float32)
    nearest = np.argmin(((pix[:, None, :] - pal[None]) ** 2).sum(-1), axis=1)
    votes = np.bincount(nearest, minlength=len(names))
    colour = names[int(votes.argmax())]
    share = float(votes.max() / votes.sum())

    # Centroid per frame, weighted by how far each pixel is from the background, so soft edges count less.
    wts = np.where(mask, dist, 0.0)
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w
    mass = wts.sum(axis=(1, 2))
    ok = mass > 0
    cx = (wts.sum(axis=1) * xs).sum(-1)[ok] / mass[ok]
    cy = (wts.sum(axis=2) * ys).sum(-1)[ok] / mass[ok]
    if len(cx) < 2:
        return Motion(colour, share, background, 0.0, 0.0, coverage)
    q = max(1, len(cx) // 4)
    dx = float(cx[-q:].mean() - cx[:q].mean())
    dy = float(cy[-q:].mean() - cy[:q].mean())
    return Motion(colour, share, background, dx, dy, coverage)


def follows_prompt(frames: np.ndarray, prompt: str | ClipSpec, min_travel: float = 0.15) -> tuple[bool, Motion]:
    """Whether a video shows what the prompt asked for: the right colour, moving the right way.

    "The right way" means the centroid moved at least ``min_travel`` of the frame size in the stated
    direction, and more along it than across it. The shape is not checked: at 8x spatial compression a
    tiny model's circles and squares are close, and the test says so rather than pretending.

    >>> ok, m = follows_prompt(render_clip("a yellow square moving left", 17, 64, 64, seed=2), "a yellow square moving left")
    >>> ok
    True
    >>> follows_prompt(render_clip("a yellow square moving left", 17, 64, 64, seed=2), "a red square moving left")[0]
    False
    """
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    m = measure_motion(frames)
    dx, dy = _DIRECTION[spec.motion]
    along = m.dx * dx + m.dy * dy
    across = abs(m.dx * dy) + abs(m.dy * dx)
    ok = m.colour == spec.colour and along >= min_travel and along > 2.0 * across
    return bool(ok), m


@dataclasses.dataclass(frozen=True)
class FrameReport:
    """What :func:`measure_frames` saw, frame by frame, against what a prompt asked for.

    ``off_colour[i]`` is the share of frame ``i``'s object pixels whose colour is nearer another palette colour
    than the one asked for (1.0 where the frame shows no object); ``shapes[i]`` is the ideal shape whose mask best
    overlaps frame ``i``'s object mask (``None`` where there is no object).
    """

    asked: ClipSpec
    off_colour: tuple[float, ...]
    shapes: tuple[str | None, ...]

    @property
    def worst_off_colour(self) -> float:
        """The largest off-colour share over the frames: how far the worst frame strays."""
        return max(self.off_colour)

    @property
    def colour_every_frame(self) -> bool:
        """Whether the asked colour is the majority of the object's pixels in every frame."""
        return self.worst_off_colour < 0.5

    @property
    def shape(self) -> str | None:
        """The shape most frames look like (ties go to the order of :data:`SHAPES`)."""
        seen = [s for s in self.shapes if s is not None]
        if not seen:
            return None
        return max(SHAPES, key=seen.count)

    @property
    def shape_recognised(self) -> bool:
        return self.shape == self.asked.shape


def _ideal_masks(area: float, cx: float, cy: float, h: int, w: int) -> dict[str, np.ndarray]:
    """Binary masks of an ideal circle, square and triangle with the given area (pixels) and centroid.

    They are drawn by the renderer's own :func:`_shape_mask`, sized for equal area; the triangle is moved up
    so that its centroid (not its bounding-box centre) sits on the object's.
    """
    unit = float(min(h, w))
    yy = (np.arange(h, dtype=np.float32) + 0.5)[:, None] / unit
    xx = (np.arange(w, dtype=np.float32) + 0.5)[None, :] / unit
    a = area / unit**2
    # Areas of the renderer's shapes in units of r^2: circle pi, square (2 * 0.9)^2, triangle 1.1 * 1.85.
    tri_k = 1.1 * 1.85
    r = {"circle": np.sqrt(a / np.pi), "square": np.sqrt(a / (1.8 * 1.8)), "triangle": np.sqrt(a / tri_k)}
    x, y = cx / unit, cy / unit
    # The triangle spans [cy - r, cy + 0.85 r] and is wider at the bottom: its centroid is 2/3 of the way down.
    tri_centroid_offset = -1.0 + (2.0 / 3.0) * 1.85
    return {
        "circle": _shape_mask("circle", x, y, r["circle"], yy, xx) > 0,
        "square": _shape_mask("square", x, y, r["square"], yy, xx) > 0,
        "triangle": _shape_mask("triangle", x, y - tri_centroid_offset * r["triangle"], r["triangle"], yy, xx) > 0,
    }


def measure_frames(frames: np.ndarray, prompt: str | ClipSpec, threshold: float = 60.0) -> FrameReport:
    """Measure colour and shape in every frame of a video against what ``prompt`` asked for.

    Object pixels are those farther than ``threshold`` from the background (the median colour of the frame
    border), as in :func:`measure_motion`. A pixel's colour is the palette colour that, blended with the
    background at the best opacity, comes nearest to it, so the soft edge of a yellow object (dark yellow) still
    counts as yellow, not green. A frame's shape is the ideal circle, square or upright triangle of the same area
    and centroid whose mask overlaps the object's mask best (intersection over union).

    >>> clip = render_clip("a green triangle moving left", frames=9, height=128, width=128, seed=4)
    >>> r = measure_frames(clip, "a green triangle moving left")
    >>> r.shape, r.colour_every_frame, r.worst_off_colour < 0.05
    ('triangle', True, True)
    >>> measure_frames(clip, "a red square moving left").shape_recognised
    False
    """
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    v = _as_uint8(frames).astype(np.float32)
    _, h, w, _ = v.shape
    border = np.concatenate([v[:, 0], v[:, -1], v[:, :, 0], v[:, :, -1]], axis=1).reshape(-1, 3)
    bg = np.median(border, axis=0)
    names = list(PALETTE)
    pal = np.asarray([PALETTE[k] for k in names], np.float32) - bg  # (C, 3) directions from the background
    asked = names.index(spec.colour)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    off, found = [], []
    for frame in v:
        d = frame - bg
        mask = np.sqrt((d**2).sum(-1)) > threshold
        n = int(mask.sum())
        if n < 4:
            off.append(1.0)
            found.append(None)
            continue
        pix = d[mask]  # (N, 3)
        alpha = np.clip(pix @ pal.T / (pal**2).sum(-1), 0.0, 1.0)  # best opacity per (pixel, colour)
        err = ((pix[:, None, :] - alpha[..., None] * pal[None]) ** 2).sum(-1)
        off.append(float((err.argmin(axis=1) != asked).mean()))
        ideal = _ideal_masks(float(n), float(xs[mask].mean()), float(ys[mask].mean()), h, w)
        iou = {k: (m & mask).sum() / max(1, (m | mask).sum()) for k, m in ideal.items()}
        found.append(max(SHAPES, key=lambda k: iou[k]))
    return FrameReport(spec, tuple(off), tuple(found))


def iter_prompts(specs: Iterable[ClipSpec]) -> list[str]:
    """Captions for a list of specs (black backgrounds left unsaid)."""
    return [caption(s) for s in specs]
