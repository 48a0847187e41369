"""Every family through the runner, one row per model variant: parity with the pipeline's own call, EasyCache's
rules, the memory strategies, the event stream, bad inputs, a stop inside the decode, and loading from disk.

A family adds its rows to :data:`ROWS` (its tiny builder, its call pattern, the pipeline's own call written out);
the tests of sections 1, 2, 5, 6 and 8 run on every row. Wan's own behaviour (two experts, TI2V's image path, the
memory strategies) has its Wan-only tests. Each tiny variant is built once for the module (see ``pipes``); tests
that change a pipeline build their own.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FLOAT_TOL

from lightcache.errors import LightcacheError, RunCancelled
from lightcache.events import FramesDecoded, RunFinished, RunStarted, StageFinished, StageStarted, StepRecord
from lightcache.families import adapter_named
from lightcache.runner import run_generation, run_to_completion
from lightcache.settings import RunSettings
from lightcache.tiny.variants import TINY_BOUNDARY_RATIO, build_tiny_variant, save_tiny_variant


@dataclasses.dataclass(frozen=True)
class Row:
    """One model variant of one family, as the family-parametrised tests need it.

    ``branches``: the branch names of one step's denoiser calls, in call order (the first decides);
    ``image``: "none", "optional" or "required"; ``build(variant, seed)``: its tiny random pipeline;
    ``plain``: the pipeline's own call for a request, written out in this file (not taken from the adapter).
    """

    variant: str
    family: str
    branches: tuple[str, ...]
    image: str
    build: object
    plain: object
    denoisers: tuple[str, ...] = ("transformer",)
    pipeline: str = ""
    size: int = 32
    #: Request settings this row always runs with (a family field, a negative prompt that turns on true CFG...).
    settings: tuple[tuple[str, object], ...] = ()
    #: The stages a run goes through, in order, where they differ from encode, [encode_image,] denoise, decode.
    stages: tuple[str, ...] = ()


def _wan_row(variant: str, image: str = "none", denoisers=("transformer",), size: int = 32) -> Row:
    pipeline = "WanImageToVideoPipeline" if image == "required" else "WanPipeline"
    return Row(variant, "wan", ("cond", "uncond"), image, build_tiny_variant, lambda *a: plain_video(*a),
               denoisers, pipeline, size)


def _hunyuan_build(variant: str, seed: int = 0):
    from lightcache.families.hunyuan_video.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=seed)


def _hunyuan_plain(pipe, settings: RunSettings, image=None) -> np.ndarray:
    """HunyuanVideoPipeline's own call for the same request, written out here."""
    assert image is None
    kwargs = dict(prompt=settings.prompt, height=settings.height, width=settings.width, num_frames=settings.frames,
                  num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                  generator=torch.Generator().manual_seed(settings.seed), output_type="np",
                  max_sequence_length=settings.max_sequence_length)
    if settings.negative_prompt:
        kwargs["negative_prompt"] = settings.negative_prompt
    if settings.extras.get("true_cfg_scale") is not None:
        kwargs["true_cfg_scale"] = settings.extras["true_cfg_scale"]
    return np.asarray(pipe(**kwargs).frames[0], dtype=np.float32)


def _hunyuan_row(variant: str, branches=("cond",), settings=()) -> Row:
    return Row(variant, "hunyuan_video", branches, "none", _hunyuan_build, _hunyuan_plain,
               pipeline="HunyuanVideoPipeline", settings=settings)


def _svd_build(variant: str, seed: int = 0):
    from lightcache.families.svd.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=seed)


def _svd_plain(pipe, settings: RunSettings, image=None) -> np.ndarray:
    """StableVideoDiffusionPipeline's own call for the same request, written out here."""
    kwargs = dict(height=settings.height, width=settings.width, num_frames=settings.frames,
                  num_inference_steps=settings.steps, max_guidance_scale=settings.guidance_scale, fps=settings.fps,
                  generator=torch.Generator().manual_seed(settings.seed), output_type="np")
    kwargs.update({k: v for k, v in settings.extras.items() if v is not None})
    return np.asarray(pipe(image, **kwargs).frames[0], dtype=np.float32)


def _animatediff_build(variant: str, seed: int = 0):
    from lightcache.families.animatediff.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=seed)


def _animatediff_plain(pipe, settings: RunSettings, image=None) -> np.ndarray:
    """AnimateDiffPipeline's own call for the same request, written out here."""
    assert image is None
    kwargs = dict(prompt=settings.prompt, height=settings.height, width=settings.width, num_frames=settings.frames,
                  num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                  generator=torch.Generator().manual_seed(settings.seed), output_type="np")
    if settings.negative_prompt:
        kwargs["negative_prompt"] = settings.negative_prompt
    return np.asarray(pipe(**kwargs).frames[0], dtype=np.float32)


def _hunyuan15_build(variant: str, seed: int = 0):
    from lightcache.families.hunyuan_video15.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=seed, task=variant.rsplit("-", 1)[-1])


def _hunyuan15_plain(pipe, settings: RunSettings, image=None) -> np.ndarray:
    """The HunyuanVideo-1.5 pipelines' own call for the same request, written out here: the guidance scale is the
    guider's, the size of an image-to-video run the image's."""
    if pipe.guider.guidance_scale != settings.guidance_scale:
        pipe.guider = pipe.guider.new(guidance_scale=settings.guidance_scale)
    kwargs = dict(prompt=settings.prompt, negative_prompt=settings.negative_prompt or None,
                  num_frames=settings.frames, num_inference_steps=settings.steps,
                  generator=torch.Generator().manual_seed(settings.seed), output_type="np")
    if image is None:
        kwargs.update(height=settings.height, width=settings.width)
    else:
        kwargs["image"] = image
    return np.asarray(pipe(**kwargs).frames[0], dtype=np.float32)


def _ltx_build(variant: str, seed: int = 0):
    from lightcache.families.ltx.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=seed, task="i2v" if variant.endswith("-i2v") else "t2v")


def _ltx_plain(pipe, settings: RunSettings, image=None) -> np.ndarray:
    """The LTX-Video pipelines' own call for the same request, written out here: the fps is the frame rate the model
    is conditioned on, the decode timestep and noise are the request's where it gives them."""
    kwargs = dict(prompt=settings.prompt, negative_prompt=settings.negative_prompt or None, height=settings.height,
                  width=settings.width, num_frames=settings.frames, num_inference_steps=settings.steps,
                  guidance_scale=settings.guidance_scale, frame_rate=settings.fps,
                  max_sequence_length=settings.max_sequence_length,
                  generator=torch.Generator().manual_seed(settings.seed), output_type="np")
    kwargs.update({k: v for k, v in settings.extras.items() if v is not None})
    if image is not None:
        kwargs["image"] = image
    return np.asarray(pipe(**kwargs).frames[0], dtype=np.float32)


def _skyreels_build(variant: str, seed: int = 0):
    from lightcache.families.skyreels_v2.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=seed, task=variant.rsplit("-", 1)[-1])


def _skyreels_plain(pipe, settings: RunSettings, image=None) -> np.ndarray:
    """The SkyReels-V2 pipelines' own call for the same request, written out here."""
    kwargs = dict(prompt=settings.prompt, negative_prompt=settings.negative_prompt, height=settings.height,
                  width=settings.width, num_frames=settings.frames, num_inference_steps=settings.steps,
                  guidance_scale=settings.guidance_scale, generator=torch.Generator().manual_seed(settings.seed),
                  output_type="np", max_sequence_length=settings.max_sequence_length)
    if image is not None:
        kwargs["image"] = image
    return np.asarray(pipe(**kwargs).frames[0], dtype=np.float32)


#: LTX-Video 0.9.1's decode settings, which its timestep-conditioned VAE is made for.
LTX_DECODE = (("decode_timestep", 0.05), ("decode_noise_scale", 0.025))


def _ltx2_build(variant: str, seed: int = 0):
    from lightcache.families.ltx2.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=seed)


def _kandinsky5_build(variant: str, seed: int = 0):
    from lightcache.families.kandinsky5.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=seed)


def _ltx2_call(pipe, settings: RunSettings):
    """LTX2Pipeline's own call for the same request, written out here: video and audio."""
    return pipe(prompt=settings.prompt, negative_prompt=settings.negative_prompt or None, height=settings.height,
                width=settings.width, num_frames=settings.frames, num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale, frame_rate=float(settings.fps),
                max_sequence_length=settings.max_sequence_length,
                generator=torch.Generator().manual_seed(settings.seed), output_type="np")


def _ltx2_plain(pipe, settings: RunSettings, image=None) -> np.ndarray:
    assert image is None
    return np.asarray(_ltx2_call(pipe, settings).frames[0], dtype=np.float32)


def _cogvideox_build(variant: str, seed: int = 0):
    from lightcache.families.cogvideox.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=seed, task=variant.rsplit("-", 1)[-1],
                               version="1.5" if variant.startswith("cogvideox1.5") else "1.0")


def _cogvideox_plain(pipe, settings: RunSettings, image=None) -> np.ndarray:
    """The CogVideoX pipelines' own call for the same request, written out here."""
    kwargs = dict(prompt=settings.prompt, height=settings.height, width=settings.width, num_frames=settings.frames,
                  num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                  use_dynamic_cfg=bool(settings.extras.get("use_dynamic_cfg")),
                  generator=torch.Generator().manual_seed(settings.seed), output_type="np",
                  max_sequence_length=settings.max_sequence_length)
    if settings.negative_prompt:
        kwargs["negative_prompt"] = settings.negative_prompt
    if image is not None:
        kwargs["image"] = image
    return np.asarray(pipe(**kwargs).frames[0], dtype=np.float32)


def _cogvideox_row(variant: str, image: str = "none", dynamic_cfg: int = 0) -> Row:
    # 9 frames: an odd number of latent frames, which the VAE decodes to the frames asked; the prompt is padded to the
    # transformer's 226 text tokens.
    pipeline = "CogVideoXImageToVideoPipeline" if image == "required" else "CogVideoXPipeline"
    return Row(variant, "cogvideox", ("cond_uncond",), image, _cogvideox_build, _cogvideox_plain, pipeline=pipeline,
               settings=(("frames", 9), ("max_sequence_length", 226), ("use_dynamic_cfg", dynamic_cfg)))


def _mochi_build(variant: str, seed: int = 0):
    from lightcache.families.mochi.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=seed)


def _mochi_plain(pipe, settings: RunSettings, image=None) -> np.ndarray:
    """MochiPipeline's own call for the same request, written out here."""
    assert image is None
    kwargs = dict(prompt=settings.prompt, height=settings.height, width=settings.width, num_frames=settings.frames,
                  num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                  generator=torch.Generator().manual_seed(settings.seed), output_type="np",
                  max_sequence_length=settings.max_sequence_length)
    if settings.negative_prompt:
        kwargs["negative_prompt"] = settings.negative_prompt
    return np.asarray(pipe(**kwargs).frames[0], dtype=np.float32)


def _kandinsky5_plain(pipe, settings: RunSettings, image=None) -> np.ndarray:
    """Kandinsky5T2VPipeline's own call for the same request, written out here: without a negative prompt of the
    request's, the pipeline's own."""
    assert image is None
    kwargs = dict(prompt=settings.prompt, height=settings.height, width=settings.width, num_frames=settings.frames,
                  num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                  generator=torch.Generator().manual_seed(settings.seed), output_type="np",
                  max_sequence_length=settings.max_sequence_length)
    if settings.negative_prompt:
        kwargs["negative_prompt"] = settings.negative_prompt
    return np.asarray(pipe(**kwargs).frames[0], dtype=np.float32)


#: Every family's rows. A new family adds its own here.
ROWS = {r.variant: r for r in (
    _wan_row("wan2.1-t2v"),
    _wan_row("wan2.1-i2v", image="required"),
    # The Wan2.2 VAE compresses 16x and the transformer patches 2x2: sizes are multiples of 32, 64 at least here.
    _wan_row("wan2.2-ti2v", image="optional", size=64),
    _wan_row("wan2.2-t2v-a14b", denoisers=("transformer", "transformer_2")),
    _wan_row("wan2.2-i2v-a14b", image="required", denoisers=("transformer", "transformer_2")),
    # Embedded guidance: one call per step. True CFG (with a negative prompt) adds the uncond call.
    _hunyuan_row("hunyuanvideo"),
    _hunyuan_row("hunyuanvideo-true-cfg", ("cond", "uncond"),
                 (("true_cfg_scale", 4.0), ("negative_prompt", "a blue square"))),
    # A UNet over (B, F, C, H, W) latents, guidance batched into one call per step; an image and no prompt.
    Row("svd", "svd", ("cond",), "required", _svd_build, _svd_plain, denoisers=("unet",),
        pipeline="StableVideoDiffusionPipeline",
        settings=(("prompt", ""), ("frames", 4), ("decode_chunk_size", 4), ("min_guidance_scale", 1.0))),
    # A Stable Diffusion UNet with a motion adapter, guidance batched, DDIM (no step_index: steps are counted).
    Row("animatediff", "animatediff", ("cond",), "none", _animatediff_build, _animatediff_plain, denoisers=("unet",),
        pipeline="AnimateDiffPipeline", settings=(("frames", 4),)),
    # Guidance through a guider: pred_cond then pred_uncond, each in its cache context; 4 + 4 + 1 input channels.
    Row("hunyuanvideo-1.5-t2v", "hunyuan_video15", ("pred_cond", "pred_uncond"), "none", _hunyuan15_build,
        _hunyuan15_plain, pipeline="HunyuanVideo15Pipeline"),
    # Image to video: the SigLIP image encoder runs before the text encoders, the VAE encodes the image after them.
    Row("hunyuanvideo-1.5-i2v", "hunyuan_video15", ("pred_cond", "pred_uncond"), "required", _hunyuan15_build,
        _hunyuan15_plain, pipeline="HunyuanVideo15ImageToVideoPipeline",
        stages=("encode_image", "encode", "encode_image", "denoise", "decode")),
    # Packed tokens (B, N, C), guidance batched into one cond_uncond call; image to video keeps the first frame's
    # tokens clean with a per-token timestep, and the VAE encodes the image.
    # The tiny VAE is timestep-conditioned (LTX-Video 0.9.1 and later): the rows decode at a timestep, with noise.
    Row("ltx-video", "ltx", ("cond_uncond",), "none", _ltx_build, _ltx_plain, pipeline="LTXPipeline",
        settings=LTX_DECODE),
    Row("ltx-video-i2v", "ltx", ("cond_uncond",), "required", _ltx_build, _ltx_plain,
        pipeline="LTXImageToVideoPipeline", settings=LTX_DECODE),
    # Video and audio: three calls per step (batched CFG decides; spatio-temporal and modality guidance follow).
    Row("ltx-2", "ltx2", ("cond_uncond", "uncond_stg", "uncond_modality"), "none", _ltx2_build, _ltx2_plain,
        pipeline="LTX2Pipeline"),
    # One batched cond_uncond call per step over (B, F, C, H, W) latents, DDIM without step_index (steps are counted);
    # 1.5 pads the latent frames to an even count; image to video adds 4 condition channels after the 4 noisy ones.
    _cogvideox_row("cogvideox-t2v"),
    _cogvideox_row("cogvideox1.5-t2v", dynamic_cfg=1),
    _cogvideox_row("cogvideox-i2v", image="required", dynamic_cfg=1),
    # One batched cond_uncond call per step, 12 noisy channels; its VAE compresses 6x in time: 7 frames.
    Row("mochi", "mochi", ("cond_uncond",), "none", _mochi_build, _mochi_plain, pipeline="MochiPipeline",
        settings=(("frames", 7),)),
    # Wan's architecture: cond then uncond in their cache contexts, UniPC; image to video adds a mask and the first
    # frame's latent after the noisy channels (4 + 2 + 4) and a CLIP image encoder.
    Row("skyreels-v2-t2v", "skyreels_v2", ("cond", "uncond"), "none", _skyreels_build, _skyreels_plain,
        pipeline="SkyReelsV2Pipeline"),
    Row("skyreels-v2-i2v", "skyreels_v2", ("cond", "uncond"), "required", _skyreels_build, _skyreels_plain,
        pipeline="SkyReelsV2ImageToVideoPipeline"),
    # No cache context: two calls a step told apart by their order (cond, call1); channels-last latents, 4 noisy of
    # 9 input channels. The prompt template leaves room for the pipeline's own negative prompt at 128 tokens.
    Row("kandinsky5-t2v", "kandinsky5", ("cond", "call1"), "none", _kandinsky5_build, _kandinsky5_plain,
        pipeline="Kandinsky5T2VPipeline", settings=(("max_sequence_length", 128),)),
)}
VARIANTS = tuple(ROWS)
WAN = tuple(v for v, r in ROWS.items() if r.family == "wan")
IMAGE_TO_VIDEO = tuple(v for v, r in ROWS.items() if r.image == "required")
TEXT_TO_VIDEO = tuple(v for v, r in ROWS.items() if r.image == "none")
TWO_EXPERTS = tuple(v for v, r in ROWS.items() if len(r.denoisers) == 2)
#: The variants whose family offers sliced decoding (Wan's, and SkyReels-V2's on Wan's VAE).
SLICED = tuple(v for v, r in ROWS.items() if "sliced_decode" not in adapter_named(r.family).refused_strategies())
#: Variant name, or "<variant>+image": a variant that may take a first frame, given one.
CASES = (*VARIANTS, *(f"{v}+image" for v, r in ROWS.items() if r.image == "optional"))

CHUNK_TOL = 1e-5  # feature chunking reorders nothing but slices matmuls: fp32 rounding only
DECODE_TOL = 1e-4  # sliced decoding: fp32 rounding of the convolutions (the tolerance decode.py documents)


# --- helpers -----------------------------------------------------------------------------------------------------
class _Pipes:
    """Builds each variant on first use and keeps it for the module, with the plain videos already made on it."""

    def __init__(self):
        self._built: dict[str, object] = {}
        self._plain: dict[tuple, np.ndarray] = {}

    def __getitem__(self, variant: str):
        if variant not in self._built:
            self._built[variant] = ROWS[variant].build(variant, seed=0)
        return self._built[variant]

    def plain(self, case: str, settings: RunSettings) -> np.ndarray:
        """:func:`plain_video` of ``case`` on the module's pipeline; lightcache's own settings do not change it."""
        request = dataclasses.replace(settings, easycache=False, threshold=0.0, warmup=0, async_swap=False,
                                      chunk_ffn=None, sliced_decode=False, decode_slices=None)
        if (case, request) not in self._plain:
            self._plain[case, request] = _row(case).plain(self[_variant(case)], request, _image(case))
        return self._plain[case, request]


@pytest.fixture(scope="module")
def pipes():
    return _Pipes()


def _variant(case: str) -> str:
    return case.removesuffix("+image")


def _build(case: str, seed: int = 0):
    return _row(case).build(_variant(case), seed=seed)


def _row(case: str) -> Row:
    return ROWS[_variant(case)]


def _size(case: str) -> int:
    return _row(case).size


def _calls_per_step(case: str) -> int:
    return len(_row(case).branches)


def _image(case: str):
    """A small RGB gradient for the cases that take a first frame, else None."""
    from PIL import Image

    if case not in IMAGE_TO_VIDEO and not case.endswith("+image"):
        return None
    n = _size(case)
    ramp = np.linspace(0, 255, n, dtype=np.uint8)
    rgb = np.stack([np.tile(ramp, (n, 1)), np.tile(ramp[:, None], (1, n)), np.full((n, n), 96, np.uint8)], -1)
    return Image.fromarray(rgb, "RGB")


def _settings(case: str, **overrides) -> RunSettings:
    n = _size(case)
    values = dict(prompt="a red circle moving right", seed=3, steps=5, frames=5, height=n, width=n,
                  guidance_scale=5.0, warmup=1, threshold=0.05, max_sequence_length=16)
    if _variant(case) in TWO_EXPERTS:
        values["guidance_scale_2"] = 3.0  # differs from guidance_scale, so passing it (or not) shows
    values.update(dict(_row(case).settings))
    values.update(overrides)
    # The family's own fields (its adapter's declaration) go where RunSettings keeps them.
    family = {f.name for f in adapter_named(_row(case).family).request_fields}
    extra = {k: values.pop(k) for k in list(values) if k in family}
    return RunSettings(**values, extra=extra)


def plain_video(pipe, settings: RunSettings, image=None) -> np.ndarray:
    """The pipeline's own call for the same request, written out here (not taken from the family adapter)."""
    kwargs = dict(
        prompt=settings.prompt, negative_prompt=settings.negative_prompt, height=settings.height,
        width=settings.width, num_frames=settings.frames, num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale, generator=torch.Generator().manual_seed(settings.seed),
        output_type="np", max_sequence_length=settings.max_sequence_length,
    )
    if settings.extras.get("guidance_scale_2") is not None:
        kwargs["guidance_scale_2"] = settings.extras["guidance_scale_2"]
    if image is not None:
        if type(pipe).__name__ != "WanImageToVideoPipeline":
            from diffusers import WanImageToVideoPipeline

            pipe = WanImageToVideoPipeline.from_pipe(pipe)
            pipe.set_progress_bar_config(disable=True)
        kwargs["image"] = image
    return np.asarray(pipe(**kwargs).frames[0], dtype=np.float32)


def _run(pipe, settings: RunSettings, image=None, cancel=None) -> tuple[list, RunFinished]:
    events = list(run_generation(pipe, settings, cancel=cancel, image=image))
    assert isinstance(events[-1], RunFinished)
    return events, events[-1]


def _records(events) -> list[StepRecord]:
    return [e for e in events if isinstance(e, StepRecord)]


def _denoisers(pipe) -> dict[str, torch.nn.Module]:
    from lightcache.families import adapter_for

    return adapter_for(pipe).denoisers(pipe)


def _assert_pipeline_clean(pipe) -> None:
    """No lightcache hook, wrapper or torch hook is left on the pipeline."""
    for name, module in _denoisers(pipe).items():
        for sub_name, sub in module.named_modules():
            registry = getattr(sub, "_diffusers_hook", None)
            assert registry is None or not registry.hooks, f"hooks left on {name}.{sub_name}: {list(registry.hooks)}"
    for attribute in ("encode", "decode"):
        assert attribute not in pipe.vae.__dict__, f"vae.{attribute} is still wrapped"
    from lightcache.families import adapter_for

    adapter = adapter_for(pipe)
    encoders = [*adapter.text_encoders(pipe).values(), *adapter.image_encoders(pipe).values()]
    for module in [pipe.vae.decoder, *pipe.vae.decoder.children(), *encoders]:
        assert not module._forward_pre_hooks and not module._forward_hooks
    for name, module in adapter.decoders(pipe).items():  # LTX-2's audio VAE and vocoder
        assert "decode" not in module.__dict__, f"{name}.decode is still wrapped"
        parts = [*getattr(module, "decoder", torch.nn.Module()).children(), module]
        assert not any(m._forward_pre_hooks or m._forward_hooks for m in parts), f"hooks left on {name}"
    assert getattr(pipe, "_lightcache_acceleration", None) is None


class _CallRecorder:
    """Torch forward hooks on every expert: (denoiser, hidden_states, output) of each call as it really happened."""

    def __init__(self, pipe):
        self.calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self._handles = []
        for name, module in _denoisers(pipe).items():
            self._handles.append(module.register_forward_hook(self._hook(name), with_kwargs=True))

    def _hook(self, name):
        def hook(_module, args, kwargs, output):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            out = output if isinstance(output, torch.Tensor) else (
                output[0] if isinstance(output, (tuple, list)) else output.sample)
            self.calls.append((name, hidden.detach().clone(), out.detach().clone()))

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


# --- 1. parity with the pipeline's own call ------------------------------------------------------------------------
@pytest.mark.parametrize("easycache", [True, False], ids=["tau0", "easycache-off"])
@pytest.mark.parametrize("case", CASES)
def test_runner_is_bit_identical_to_the_pipeline(pipes, case, easycache):
    pipe = pipes[_variant(case)]
    settings = _settings(case, easycache=easycache, threshold=0.0)
    events, finished = _run(pipe, settings, image=_image(case))
    assert finished.frames.dtype == np.float32
    assert np.array_equal(finished.frames, pipes.plain(case, settings))
    records = _records(events)
    assert len(records) == _calls_per_step(case) * settings.steps and all(r.computed for r in records)
    assert events[0].calls_per_step == _calls_per_step(case)


# --- 2. a high tau reuses, in both experts, and the experts switch where the pipeline says --------------------------
@pytest.mark.parametrize("case", VARIANTS)
def test_high_tau_reuses_and_experts_switch_at_the_boundary(pipes, case):
    pipe = pipes[case]
    settings = _settings(case, steps=8, warmup=1, threshold=1e9)
    events, finished = _run(pipe, settings, image=_image(case))
    records = _records(events)
    n = _calls_per_step(case)
    assert len(records) == n * settings.steps
    assert finished.summary["calls_reused"] > 0
    assert [r.computed for r in records if r.step < settings.warmup] == [True] * n * settings.warmup
    last = [r for r in records if r.step == settings.steps - 1]
    assert len(last) == n and all(r.computed for r in last)
    assert [r.reason for r in last if r.decides] == ["last step"]
    # With tau this high every step between the second computed one (the first k) and the last is reused.
    cond = [r for r in records if r.decides]
    assert [r.branch for r in cond] == [_row(case).branches[0]] * settings.steps
    assert [r.computed for r in cond] == [True, True] + [False] * (settings.steps - 3) + [True]
    assert finished.summary["steps_reused"] == list(range(2, settings.steps - 1))

    timesteps = pipe.scheduler.timesteps
    if case in TWO_EXPERTS:
        boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
        expected = ["transformer" if float(t) >= boundary else "transformer_2" for t in timesteps]
        assert "transformer" in expected and "transformer_2" in expected  # the run really crosses the boundary
        for name in ("transformer", "transformer_2"):
            assert any(not r.computed for r in records if r.denoiser == name), f"{name} reused nothing"
        assert finished.summary["denoisers"] == ["transformer", "transformer_2"]
    else:
        expected = [_row(case).denoisers[0]] * settings.steps
    assert [r.denoiser for r in cond] == expected
    for follower in _row(case).branches[1:]:
        assert [r.denoiser for r in records if r.branch == follower] == expected


def test_a_boundary_ratio_setting_moves_the_switch():
    pipe = build_tiny_variant("wan2.2-t2v-a14b")
    settings = _settings("wan2.2-t2v-a14b", steps=8, boundary_ratio=0.5, threshold=0.0)
    events, finished = _run(pipe, settings)
    expected = ["transformer" if float(t) >= 500 else "transformer_2" for t in pipe.scheduler.timesteps]
    assert expected.count("transformer") > 3  # more than the tiny model's own 0.875 boundary gives
    assert [r.denoiser for r in _records(events) if r.branch == "cond"] == expected
    assert np.array_equal(finished.frames, plain_video(pipe, settings))  # the pipeline now runs with 0.5 too


# --- 3. an independent transcription of EasyCache's rules -----------------------------------------------------------
def _mean_abs(t: torch.Tensor) -> float:
    return t.double().abs().mean().item()


def reference_easycache(calls, num_steps: int, warmup: int, tau: float, latent_channels: int,
                        branches=("cond", "uncond"), channel_axis: int = 1):
    """EasyCache's rules as the easycache module documents them, replayed over the calls of a real run.

    ``calls``: (denoiser, hidden_states, output) in call order, one call per branch for every step (the first
    branch decides; Wan's cond then uncond by default). The noisy latent is the first ``latent_channels`` channels
    on ``channel_axis``. One state for the whole run whichever expert runs. Returns, per call, (computed, eps,
    expected output if reused else None).
    """
    n = len(branches)
    assert len(calls) == n * num_steps
    k = x_prev = x_last = v_last = None
    error = 0.0
    deltas: dict[str, torch.Tensor] = {}
    out = []
    for step in range(num_steps):
        for branch, (_name, hidden, output) in zip(branches, calls[n * step: n * step + n]):
            x = hidden.narrow(channel_axis, 0, latent_channels)
            eps = None
            if branch == branches[0]:
                if step < warmup or step == num_steps - 1 or k is None:
                    compute, error = True, 0.0
                else:
                    eps = k * _mean_abs(x - x_prev) / max(_mean_abs(v_last), 1e-12)
                    error += eps
                    compute = error >= tau
                    if compute:
                        error = 0.0
                step_computes = compute
                if compute:
                    if v_last is not None and _mean_abs(x - x_last) > 0:
                        k = _mean_abs(output - v_last) / _mean_abs(x - x_last)
                    v_last, x_last = output, x
                x_prev = x
            else:
                compute = step_computes or branch not in deltas
            if compute:
                deltas[branch] = output - x
                out.append((True, eps, None))
            else:
                out.append((False, eps, x + deltas[branch]))
    return out


#: Where the noisy latent sits in a denoiser's input, for the variants whose input is not (B, C, F, H, W) with the
#: model's ``out_channels`` first: Kandinsky 5 is channels-last, its noisy channels the model's ``out_visual_dim``.
_NOISY_CHANNELS = {"kandinsky5-t2v": ("out_visual_dim", -1)}


@pytest.mark.parametrize("case, tau", [("wan2.1-i2v", 0.5), ("wan2.2-i2v-a14b", 0.5), ("wan2.2-t2v-a14b", 0.5),
                                       ("skyreels-v2-i2v", 0.5), ("kandinsky5-t2v", 0.05)])
def test_easycache_decisions_follow_an_independent_transcription_of_the_rules(pipes, case, tau):
    pipe = pipes[case]
    settings = _settings(case, steps=14, warmup=2, threshold=tau)
    recorder = _CallRecorder(pipe)
    try:
        events, _finished = _run(pipe, settings, image=_image(case))
    finally:
        recorder.remove()
    records = _records(events)
    channels_name, axis = _NOISY_CHANNELS.get(case, ("out_channels", 1))
    latent_channels = getattr(pipe.transformer.config, channels_name)
    if case in IMAGE_TO_VIDEO or case in _NOISY_CHANNELS:  # the input carries condition channels after the latent
        assert recorder.calls[0][1].shape[axis] > latent_channels
    branches = _row(case).branches
    expected = reference_easycache(recorder.calls, settings.steps, settings.warmup, tau, latent_channels, branches,
                                   axis)

    assert [(r.step, r.branch, r.denoiser) for r in records] == [
        (i // 2, branches[i % 2], name) for i, (name, _, _) in enumerate(recorder.calls)]
    assert [r.computed for r in records] == [computed for computed, _, _ in expected]
    reasons = {r.reason for r in records}
    assert {"E < tau", "E >= tau"} <= reasons, f"tau {tau} does not exercise both outcomes: {reasons}"
    for record, (_computed, eps, _) in zip(records, expected):
        if eps is None:
            assert record.eps is None
        else:
            assert record.eps == pytest.approx(eps, rel=1e-4)
    # A reused call returns x_t + (v - x) of its branch's last computed call, on the noisy latent only.
    for (_name, _hidden, output), (computed, _, reused) in zip(recorder.calls, expected):
        if not computed:
            assert output.shape[axis] == latent_channels
            torch.testing.assert_close(output, reused, rtol=0, atol=1e-6)
    if case in TWO_EXPERTS:  # both experts reuse, and the switch did not reset anything
        cond = [r for r in records if r.branch == "cond"]
        switch = next(i for i, r in enumerate(cond) if r.denoiser == "transformer_2")
        assert cond[switch].reason not in ("warm-up", "no k yet")
        assert {r.denoiser for r in records if not r.computed} == {"transformer", "transformer_2"}


# --- 4. memory strategies --------------------------------------------------------------------------------------------
def _refuses(variant: str, strategy: str) -> bool:
    return strategy in adapter_named(ROWS[variant].family).refused_strategies()


#: The variants whose family offers feature chunking (every family that does must be exact against plain).
CHUNKED = tuple(v for v in VARIANTS if not _refuses(v, "chunk_ffn"))


class _FeedForwardCalls:
    """Calls of each denoiser and of its diffusers ``FeedForward`` layers (their first sub-layer): chunking runs a
    feed-forward once per token slice, the plain model once per call."""

    def __init__(self, pipe):
        from diffusers.models.attention import FeedForward

        self.denoiser_calls: dict[str, int] = {}
        self.layer_calls: dict[str, dict[int, int]] = {}
        self._handles = []
        for name, module in _denoisers(pipe).items():
            self.denoiser_calls[name], self.layer_calls[name] = 0, {}
            self._handles.append(module.register_forward_pre_hook(self._counter(self.denoiser_calls, name)))
            for ff in (m for m in module.modules() if isinstance(m, FeedForward)):
                self._handles.append(ff.net[0].register_forward_pre_hook(self._counter(self.layer_calls[name],
                                                                                      id(ff))))

    @staticmethod
    def _counter(counts: dict, key):
        def count(_module, _args):
            counts[key] = counts.get(key, 0) + 1

        return count

    def most_per_call(self, name: str) -> float:
        """The most calls any feed-forward of denoiser ``name`` made per call of the denoiser."""
        return max(self.layer_calls[name].values()) / self.denoiser_calls[name]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def test_every_family_with_chunked_blocks_offers_chunking():
    assert {"wan", "hunyuan_video", "hunyuan_video15", "svd", "animatediff"} <= {ROWS[v].family for v in CHUNKED}


@pytest.mark.parametrize("case", CHUNKED)
def test_feature_chunking_matches_the_plain_run(pipes, case):
    pipe = pipes[_variant(case)]
    settings = _settings(case, easycache=False, chunk_ffn=3)
    calls = _FeedForwardCalls(pipe)
    try:
        _events, finished = _run(pipe, settings, image=_image(case))
    finally:
        calls.remove()
    assert finished.summary["strategies"]["feature_chunking"]["active"]
    # The run really sliced: in every denoiser some feed-forward ran once per slice, three times per call.
    assert set(calls.denoiser_calls) == set(_row(case).denoisers) and all(calls.denoiser_calls.values())
    assert all(calls.most_per_call(name) >= 3 for name in calls.denoiser_calls)
    plain = pipes.plain(case, settings)
    assert finished.frames.shape == plain.shape
    assert np.abs(finished.frames - plain).max() <= CHUNK_TOL
    _assert_pipeline_clean(pipe)


@pytest.mark.parametrize("case", SLICED)
def test_sliced_decoding_is_exact_or_clearly_refused(pipes, case):
    pipe = pipes[case]
    # Two bands need room: the Wan2.2 VAE's 16x compression leaves a 64-pixel frame 4 latent columns wide, too few.
    wider = {"width": 160} if case == "wan2.2-ti2v" else {}
    settings = _settings(case, easycache=False, sliced_decode=True, decode_slices=2, **wider)
    try:
        _events, finished = _run(pipe, settings, image=_image(case))
    except LightcacheError as exc:
        # Refusing is fine only for the Wan2.2 VAE, and only with a reason a user can act on.
        assert _row(case).family == "wan" and pipe.vae.config.is_residual, f"this VAE must be supported: {exc}"
        message = str(exc)
        assert "Sliced decoding" in message and "Wan2.2" in message and "off" in message
        _assert_pipeline_clean(pipe)
        return
    assert finished.summary["strategies"]["sliced_decode"]["active"]
    assert finished.summary["strategies"]["sliced_decode"]["num_slices"] == 2
    plain = pipes.plain(case, settings)
    assert finished.frames.shape == plain.shape
    assert np.abs(finished.frames - plain).max() <= DECODE_TOL


@pytest.mark.parametrize("case", WAN)
def test_async_swap_is_a_noted_no_op_on_cpu(pipes, case):
    pipe = pipes[case]
    settings = _settings(case, easycache=False, async_swap=True)
    events, finished = _run(pipe, settings, image=_image(case))
    swap = finished.summary["strategies"]["async_swap"]
    assert swap["requested"] and not swap["active"]
    assert swap["note"] and "nothing" in swap["note"]
    assert any(getattr(e, "message", None) == swap["note"] for e in events)
    assert np.allclose(finished.frames, pipes.plain(case, settings), rtol=0, atol=CHUNK_TOL)


# --- 5. the event stream ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_event_stream_of_each_variant(pipes, case):
    pipe = pipes[_variant(case)]
    settings = _settings(case, steps=4, threshold=0.2)
    recorder = _CallRecorder(pipe)
    try:
        events, finished = _run(pipe, settings, image=_image(case))
    finally:
        recorder.remove()
    assert isinstance(events[0], RunStarted)
    takes_image = _image(case) is not None
    from lightcache.families import adapter_for

    encodes = bool(adapter_for(pipe).text_encoders(pipe))
    stages = list(_row(case).stages) or [*(["encode"] if encodes else []), *(["encode_image"] if takes_image else []),
                                         "denoise", "decode"]
    marks = [(type(e).__name__, e.stage) for e in events if isinstance(e, (StageStarted, StageFinished))]
    assert marks == [(kind, stage) for stage in stages for kind in ("StageStarted", "StageFinished")]

    records = _records(events)
    branches = _row(case).branches
    assert len(records) == len(recorder.calls) == len(branches) * settings.steps
    assert [(r.step, r.branch) for r in records] == [(s, b) for s in range(settings.steps) for b in branches]
    assert [r.decides for r in records] == [b == branches[0] for _ in range(settings.steps) for b in branches]
    assert [r.denoiser for r in records] == [name for name, _, _ in recorder.calls]
    starts = {e.stage: i for i, e in enumerate(events) if isinstance(e, StageStarted)}
    ends = {e.stage: i for i, e in enumerate(events) if isinstance(e, StageFinished)}
    assert all(starts["denoise"] < events.index(r) < ends["denoise"] for r in records)

    decoded = [e for e in events if isinstance(e, FramesDecoded)]
    assert sum(len(e.frames) for e in decoded) == settings.frames
    assert finished.frames.shape == (settings.frames, settings.height, settings.width, 3)
    s = finished.summary
    experts = list(_row(case).denoisers)
    assert s["denoisers"] == experts
    assert list(s["calls_by_denoiser"]) == experts
    assert sum(s["calls_by_denoiser"].values()) == len(records)
    assert s["family"] == _row(case).family
    if _row(case).family == "wan":
        assert s["pipeline"] == ("WanImageToVideoPipeline" if takes_image else "WanPipeline")
    assert list(s["stages"]) == list(dict.fromkeys(stages))  # the summary has each stage once


# --- 6. bad inputs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", IMAGE_TO_VIDEO)
def test_image_to_video_without_an_image_is_refused(pipes, case):
    pipe = pipes[case]
    with pytest.raises(LightcacheError, match=r"image-to-video.*image"):
        _run(pipe, _settings(case))
    _assert_pipeline_clean(pipe)


@pytest.mark.parametrize("case", TEXT_TO_VIDEO)
def test_text_to_video_with_an_image_is_refused(pipes, case):
    from PIL import Image

    pipe = pipes[case]
    with pytest.raises(LightcacheError, match=r"(text-to-video|takes no image)"):
        _run(pipe, _settings(case), image=Image.new("RGB", (32, 32), "red"))
    _assert_pipeline_clean(pipe)


def test_ti2v_with_an_image_runs_as_image_to_video(pipes):
    pipe = pipes["wan2.2-ti2v"]
    settings = _settings("wan2.2-ti2v+image", steps=4)
    events, finished = _run(pipe, settings, image=_image("wan2.2-ti2v+image"))
    assert finished.frames.shape == (settings.frames, 64, 64, 3)
    assert np.isfinite(finished.frames).all()
    assert finished.summary["pipeline"] == "WanImageToVideoPipeline"
    assert finished.summary["image"] == {"width": 64, "height": 64}
    assert type(pipe).__name__ == "WanPipeline"  # the user's pipeline is left as it was
    _assert_pipeline_clean(pipe)


def test_ti2v_with_an_image_honours_the_flow_shift():
    # The image-to-video view is made from the pipeline; a flow shift that differs from the checkpoint's must reach
    # the scheduler the view actually steps with, and the step trace must still count steps.
    pipe = build_tiny_variant("wan2.2-ti2v")
    image = _image("wan2.2-ti2v+image")
    settings = _settings("wan2.2-ti2v+image", steps=5, flow_shift=7.0, threshold=0.0)
    events, finished = _run(pipe, settings, image=image)
    assert [r.step for r in _records(events) if r.branch == "cond"] == list(range(settings.steps))
    reference = build_tiny_variant("wan2.2-ti2v")
    reference.scheduler = type(reference.scheduler).from_config(reference.scheduler.config, flow_shift=7.0)
    # Another object with the same weights: within FLOAT_TOL, not bit for bit.
    np.testing.assert_allclose(finished.frames, plain_video(reference, settings, image), rtol=0, atol=FLOAT_TOL)


# --- 7. a stop inside the decode -------------------------------------------------------------------------------------
_SLICED_STOPS = ("wan2.1-t2v", "wan2.2-ti2v", "hunyuanvideo", "svd", "animatediff")


@pytest.mark.parametrize("case, sliced", [*((c, False) for c in VARIANTS), *((c, True) for c in _SLICED_STOPS)],
                         ids=[*VARIANTS, *(f"{c}-sliced" for c in _SLICED_STOPS)])
def test_cancel_during_decode_stops_and_leaves_the_pipeline_clean(case, sliced):
    from lightcache.families import adapter_for

    pipe = _row(case).build(case, seed=0)  # a run that is stopped must leave nothing behind: a pipeline of its own
    if sliced and adapter_for(pipe).sliced_decode_unsupported(pipe):
        pytest.skip("sliced decoding is refused for this VAE (covered by the sliced-decoding test)")
    wider = {"width": 160} if sliced and case == "wan2.2-ti2v" else {}
    settings = _settings(case, steps=3, threshold=0.2, sliced_decode=sliced, **({"decode_slices": 2} if sliced else {}),
                         **wider)
    image = _image(case)
    cancel = threading.Event()
    seen = []

    def stop_after_first(_module, _args, _output):
        cancel.set()

    handle = pipe.vae.decoder.conv_in.register_forward_hook(stop_after_first)
    try:
        with pytest.raises(RunCancelled):
            run_to_completion(run_generation(pipe, settings, cancel=cancel, image=image), seen.append)
    finally:
        handle.remove()
    assert cancel.is_set()
    assert any(isinstance(e, StageStarted) and e.stage == "decode" for e in seen)
    assert not any(isinstance(e, (FramesDecoded, RunFinished)) for e in seen)
    assert len(_records(seen)) == _calls_per_step(case) * settings.steps
    _assert_pipeline_clean(pipe)

    plain = _settings(case, steps=3, **wider)
    after = _row(case).plain(pipe, plain, image)
    # A fresh pipeline with the same weights: within FLOAT_TOL, not bit for bit.
    fresh = _row(case).plain(_row(case).build(case, seed=0), plain, image)
    np.testing.assert_allclose(after, fresh, rtol=0, atol=FLOAT_TOL)


# --- 8. loading from disk --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", WAN)
def test_a_saved_variant_loads_and_runs(pipes, case, tmp_path):
    from diffusers import DiffusionPipeline

    built = pipes[case]
    path = save_tiny_variant(case, tmp_path / case)
    loaded = DiffusionPipeline.from_pretrained(path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded).__name__ == type(built).__name__
    assert (getattr(loaded, "transformer_2", None) is not None) == (case in TWO_EXPERTS)
    assert (getattr(loaded, "image_encoder", None) is not None) == (case == "wan2.1-i2v")
    assert loaded.config.boundary_ratio == (TINY_BOUNDARY_RATIO if case in TWO_EXPERTS else None)
    assert bool(loaded.config.expand_timesteps) == (case == "wan2.2-ti2v")

    settings = _settings(case, steps=4, threshold=0.2)
    events, finished = _run(loaded, settings, image=_image(case))
    assert finished.summary["denoisers"] == list(_denoisers(built))
    assert finished.frames.shape == (settings.frames, settings.height, settings.width, 3)
    # Same weights as the pipeline built in memory, so the same accelerated video, within FLOAT_TOL.
    _events, same = _run(built, settings, image=_image(case))
    np.testing.assert_allclose(finished.frames, same.frames, rtol=0, atol=FLOAT_TOL)


# --- 9. HunyuanVideo: EasyCache4HunyuanVideo's rules, transcribed independently ------------------------------------
def reference_easycache_hunyuan(calls, num_steps: int, ret_steps: int, thresh: float):
    """The rules of EasyCache4HunyuanVideo's transformer forward, written out from the reference's description: one
    transformer call per step (embedded guidance), counted by ``cnt``.

    Forced (computed, error reset to 0) while ``cnt < ret_steps`` and at ``cnt >= num_steps - 1``. Otherwise, once a
    previous input and a previous output exist and ``k`` is known: ``pred_change = k * mean|x - previous input| /
    mean|previous output|`` is added to the error, and the call reuses while the error stays under ``thresh``
    (computing resets it); without ``k`` it computes. The previous input is remembered on every call. A reused call
    returns ``x + cache``; a computed one sets ``cache = output - x`` and, when an earlier computed call exists,
    ``k = mean|output - previous output| / mean|x - input of the previous computed call|``.
    Returns, per call, (computed, pred_change or None, expected output if reused else None).
    """
    assert len(calls) == num_steps
    cnt, error = 0, 0.0
    previous_input = previous_output = computed_input = k = cache = None
    out = []
    for _name, x, output in calls:
        change = None
        if cnt < ret_steps or cnt >= num_steps - 1:
            calc, error = True, 0.0
        elif previous_input is not None and previous_output is not None and k is not None:
            change = k * _mean_abs(x - previous_input) / _mean_abs(previous_output)
            error += change
            calc = error >= thresh
            if calc:
                error = 0.0
        else:
            calc = True
        previous_input = x
        if not calc and cache is not None:
            out.append((False, change, x + cache))
        else:
            cache = output - x
            if previous_output is not None and computed_input is not None:
                k = _mean_abs(output - previous_output) / _mean_abs(x - computed_input)
            computed_input, previous_output = x, output
            out.append((True, change, None))
        cnt += 1
    return out


def test_hunyuanvideo_follows_an_independent_transcription_of_the_reference(pipes):
    """The ``hunyuanvideo`` preset's reference settings are warm-up 5 and the last step computed; replayed on a
    tiny run (14 steps, tau 0.1 so that both outcomes occur), every decision, error estimate and reused output is
    the reference's."""
    pipe = pipes["hunyuanvideo"]
    settings = _settings("hunyuanvideo", steps=14, warmup=5, threshold=0.1)
    recorder = _CallRecorder(pipe)
    try:
        events, _finished = _run(pipe, settings)
    finally:
        recorder.remove()
    records = _records(events)
    expected = reference_easycache_hunyuan(recorder.calls, settings.steps, settings.warmup, settings.threshold)
    assert [(r.step, r.branch) for r in records] == [(s, "cond") for s in range(settings.steps)]
    assert [r.computed for r in records] == [c for c, _, _ in expected]
    assert {"E < tau", "E >= tau"} <= {r.reason for r in records}
    assert [r.reason for r in records[:5]] == ["warm-up"] * 5 and records[-1].reason == "last step"
    for record, (_c, change, _) in zip(records, expected):
        assert (record.eps is None) == (change is None)
        if change is not None:
            assert record.eps == pytest.approx(change, rel=1e-4)
    for (_name, _x, output), (computed, _, reused) in zip(recorder.calls, expected):
        if not computed:
            torch.testing.assert_close(output, reused, rtol=0, atol=1e-6)


def test_the_hunyuanvideo_preset_carries_the_reference_settings():
    from lightcache.presets import load_preset

    preset = load_preset("hunyuanvideo")
    d = preset.defaults
    assert (preset.family, preset.pipeline, preset.image_input) == ("hunyuan_video", "HunyuanVideoPipeline", "none")
    assert (d["height"], d["width"], d["frames"], d["steps"]) == (720, 1280, 129, 50)
    assert (d["threshold"], d["warmup"]) == (0.025, 5)
    assert preset.model == "hunyuanvideo-community/HunyuanVideo"


# --- 10. what every family's adapter must cover ------------------------------------------------------------------
@pytest.mark.parametrize("case", VARIANTS)
def test_the_adapter_names_every_module_the_pipeline_calls(pipes, case):
    """Swapping parks and the observer watches what the adapter names: a module of the pipeline it does not name
    would stay on the GPU by omission."""
    from lightcache.families import adapter_for

    pipe = pipes[case]
    adapter = adapter_for(pipe)
    named = {*adapter.denoisers(pipe), *adapter.text_encoders(pipe), *adapter.image_encoders(pipe),
             *adapter.idle_modules(pipe), *adapter.decoders(pipe), *(["vae"] if adapter.vae(pipe) is not None else [])}
    modules = {name for name, value in pipe.components.items() if isinstance(value, torch.nn.Module)}
    assert modules == named


@pytest.mark.parametrize("case, strategy, flag", [
    (v, strategy, flag) for v, r in ROWS.items() for strategy, flag in (("chunk_ffn", 2), ("sliced_decode", True))
    if strategy in adapter_named(r.family).refused_strategies()])
def test_strategies_a_family_lacks_are_refused_before_anything_runs(pipes, case, strategy, flag):
    pipe = pipes[case]
    with pytest.raises(LightcacheError, match=r"no implementation for the \w+ family yet.*turn it off"):
        _run(pipe, _settings(case, **{strategy: flag}), image=_image(case))
    _assert_pipeline_clean(pipe)


# --- 11. each non-Wan preset through the CLI and the app's handler, on a saved tiny checkpoint ---------------------
#: Preset -> the row whose tiny pipeline stands in for its model.
PRESET_ROWS = {"hunyuanvideo": "hunyuanvideo", "svd-xt": "svd", "animatediff": "animatediff",
               "hunyuanvideo-1.5-480p": "hunyuanvideo-1.5-t2v", "hunyuanvideo-1.5-i2v-480p": "hunyuanvideo-1.5-i2v",
               "ltx-video": "ltx-video", "ltx-2": "ltx-2",
               "cogvideox-5b": "cogvideox-t2v", "cogvideox1.5-5b": "cogvideox1.5-t2v",
               "cogvideox-5b-i2v": "cogvideox-i2v", "mochi-1": "mochi",
               "skyreels-v2-t2v-540p": "skyreels-v2-t2v", "kandinsky5-t2v-lite": "kandinsky5-t2v"}
#: A small request each preset's tiny checkpoint runs quickly (within its limits: SVD sizes are multiples of 64).
SMALL_REQUESTS = {
    "hunyuanvideo": dict(steps=3, frames=5, height=32, width=32, warmup=1, prompt="a red circle moving right"),
    "svd-xt": dict(steps=3, frames=4, height=64, width=64, warmup=1, decode_chunk_size=4),
    "animatediff": dict(steps=3, frames=4, height=32, width=32, warmup=1, prompt="a red circle moving right",
                        negative_prompt=""),
    "hunyuanvideo-1.5-480p": dict(steps=3, frames=5, height=32, width=32, warmup=1, prompt="a red circle moving right"),
    "hunyuanvideo-1.5-i2v-480p": dict(steps=3, frames=5, height=32, width=32, warmup=1,
                                      prompt="a red circle moving right"),
    "ltx-video": dict(steps=3, frames=9, height=32, width=32, warmup=1, prompt="a red circle moving right"),
    "ltx-2": dict(steps=3, frames=9, height=32, width=32, warmup=1, prompt="a red circle moving right"),
    # CogVideoX: 8k+1 frames (1.5: 16k+1); the image-to-video model's learned positions fit its own 32x32, 9 frames.
    "cogvideox-5b": dict(steps=3, frames=9, height=32, width=32, warmup=1, prompt="a red circle moving right"),
    "cogvideox1.5-5b": dict(steps=3, frames=17, height=32, width=32, warmup=1, prompt="a red circle moving right"),
    "cogvideox-5b-i2v": dict(steps=3, frames=9, height=32, width=32, warmup=1, prompt="a red circle moving right"),
    "mochi-1": dict(steps=3, frames=7, height=32, width=32, warmup=1, prompt="a red circle moving right"),
    "skyreels-v2-t2v-540p": dict(steps=3, frames=5, height=32, width=32, warmup=1, prompt="a red circle moving right"),
    "kandinsky5-t2v-lite": dict(steps=3, frames=5, height=32, width=32, warmup=1, prompt="a red circle moving right"),
}


def _image_file(folder: Path) -> Path:
    from PIL import Image

    path = folder / "first-frame.png"
    Image.fromarray(np.linspace(0, 255, 64 * 64 * 3).astype(np.uint8).reshape(64, 64, 3), "RGB").save(path)
    return path


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    saved = {}

    def saved_model(preset: str):
        if preset not in saved:
            path = tmp_path_factory.mktemp(preset)
            ROWS[PRESET_ROWS[preset]].build(PRESET_ROWS[preset], seed=0).save_pretrained(path)
            saved[preset] = path
        return saved[preset]

    return saved_model


@pytest.mark.parametrize("preset", PRESET_ROWS)
def test_each_preset_runs_through_the_cli_on_a_local_checkpoint(preset, saved_models, tmp_path):
    import json

    from lightcache.cli import main

    out = tmp_path / "run"
    request = SMALL_REQUESTS[preset]
    args = ["generate", "--preset", preset, "--model", str(saved_models(preset)), "--device", "cpu", "--quiet",
            "--out", str(out), *[f"--{k.replace('_', '-')}={v}" for k, v in request.items()], "--threshold", "0.5"]
    if ROWS[PRESET_ROWS[preset]].image == "required":
        args += ["--image", str(_image_file(tmp_path))]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preset"] == preset and summary["family"] == ROWS[PRESET_ROWS[preset]].family
    assert summary["calls_computed"] + summary["calls_reused"] == request["steps"] * len(
        ROWS[PRESET_ROWS[preset]].branches)
    assert (out / "video.mp4").stat().st_size > 0


class _Lend:
    """A pipeline cache stand-in that lends one pipeline, on a GPU as far as the form can tell (GPU presets are
    refused on a CPU before anything loads; the tiny checkpoint itself runs wherever it is)."""

    device, loaded = "cuda", None

    def __init__(self, pipe):
        self.pipe = pipe

    def holds(self, preset):
        return True

    def use(self, preset):
        import contextlib

        return contextlib.nullcontext(self.pipe)


@pytest.mark.parametrize("preset", PRESET_ROWS)
def test_each_preset_runs_through_the_apps_handler(preset, pipes, tmp_path):
    from lightcache.app import layout
    from lightcache.app.form import initial_values
    from lightcache.app.jobs import Session
    from lightcache.app.outputs import OutputDirs

    from gradio.utils import get_upload_folder

    request = {k: v for k, v in SMALL_REQUESTS[preset].items()
               if k in ("steps", "frames", "height", "width", "warmup", "prompt", "negative_prompt")}
    raw = initial_values(preset, dict(request, tau=0.5))
    upload = None
    if ROWS[PRESET_ROWS[preset]].image == "required":
        # The app reads images only from Gradio's upload folder, as its upload route stores them.
        folder = Path(get_upload_folder()) / f"lightcache-test-{os.getpid()}"
        folder.mkdir(parents=True, exist_ok=True)
        upload = _image_file(folder)
        raw["image"] = {"path": str(upload), "meta": {"_type": "gradio.FileData"}}
    try:
        outputs = list(layout.run_job(_Lend(pipes[PRESET_ROWS[preset]]), OutputDirs(tmp_path), raw, Session()))
    finally:
        if upload is not None:
            upload.unlink()
            upload.parent.rmdir()
    assert outputs[-1][0].startswith("**Done.**")


@pytest.mark.parametrize("preset", [p for p, row in PRESET_ROWS.items() if ROWS[row].image == "none"])
def test_a_text_to_video_preset_refuses_an_image_before_anything_loads(preset, saved_models, tmp_path, capsys):
    from PIL import Image

    from lightcache.cli import main

    image = tmp_path / "frame.png"
    Image.new("RGB", (32, 32), "red").save(image)
    out = tmp_path / "run"
    assert main(["generate", "--preset", preset, "--model", str(tmp_path / "nothing-here"), "--device", "cpu",
                 "--image", str(image), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "image" in err and "does not exist" not in err
    assert not out.exists()


# --- 12. Stable Video Diffusion: no prompt, an image ---------------------------------------------------------------
def test_a_prompt_given_to_svd_is_refused(pipes):
    pipe = pipes["svd"]
    with pytest.raises(LightcacheError, match="takes no prompt"):
        _run(pipe, _settings("svd", prompt="a red circle moving right"), image=_image("svd"))
    _assert_pipeline_clean(pipe)


def test_the_svd_preset_takes_no_prompt_and_needs_an_image():
    from lightcache.presets import load_preset

    preset = load_preset("svd-xt")
    assert not preset.takes_prompt and preset.image_input == "required"
    d = preset.defaults
    assert (d["height"], d["width"], d["frames"]) == (576, 1024, 25) and "not tuned" in preset.description
    with pytest.raises(LightcacheError, match="takes no prompt"):
        RunSettings.from_preset(preset, prompt="a cat")
    assert RunSettings.from_preset(preset).prompt == ""


# --- 13. AnimateDiff: DDIM keeps no step index ---------------------------------------------------------------------
def test_animatediff_steps_are_counted_under_ddim_and_the_motion_adapter_is_an_idle_module(pipes):
    """DDIM has no ``step_index``: before the locator counted steps, every call read as step 0, EasyCache never left
    its warm-up and nothing was reused, in silence."""
    from lightcache.families import adapter_for

    pipe = pipes["animatediff"]
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and not hasattr(pipe.scheduler, "step_index")
    events, finished = _run(pipe, _settings("animatediff", steps=6, warmup=1, threshold=1e9))
    assert [r.step for r in _records(events)] == list(range(6))
    assert finished.summary["steps_reused"] == [2, 3, 4]
    assert list(adapter_for(pipe).idle_modules(pipe)) == ["motion_adapter"]


def test_the_animatediff_preset_loads_its_motion_adapter_and_ddim_from_the_repositories_it_names(monkeypatch):
    """The Stable Diffusion base has no motion adapter: the preset names the adapter's repository, which is loaded
    and handed to the pipeline, and the documented DDIM settings replace the base's scheduler."""
    import lightcache.presets as presets

    loaded = []

    def fake_from_pretrained(cls, source, dtypes, offline, **components):
        loaded.append((cls.__name__, source, sorted(components)))
        return "the adapter" if cls.__name__ == "MotionAdapter" else _animatediff_build("animatediff")

    monkeypatch.setattr(presets, "_from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(presets, "hub_usable", lambda: False)
    # The GPU check passes as on a GPU machine; everything else is the real loading path.
    preset = dataclasses.replace(presets.load_preset("animatediff"), requires_gpu=False)
    pipe = presets._load_pipeline(preset, "cpu", None)
    assert loaded == [("MotionAdapter", "guoyww/animatediff-motion-adapter-v1-5-2", []),
                      ("AnimateDiffPipeline", "SG161222/Realistic_Vision_V5.1_noVAE", ["motion_adapter"])]
    config = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert (config.clip_sample, config.timestep_spacing, config.beta_schedule, config.steps_offset) == (
        False, "linspace", "linear", 1)
    assert "not tuned" in preset.description and preset.defaults["steps"] == 25


def test_hunyuanvideo15_image_to_video_refuses_a_size_the_image_does_not_give(pipes):
    pipe = pipes["hunyuanvideo-1.5-i2v"]
    with pytest.raises(LightcacheError, match=r"makes a 32x32 video from this image.*width 32 and height 32"):
        _run(pipe, _settings("hunyuanvideo-1.5-i2v", height=48), image=_image("hunyuanvideo-1.5-i2v"))
    _assert_pipeline_clean(pipe)


def test_hunyuanvideo15_guidance_reaches_the_guider(pipes):
    """The call takes no guidance scale: the request's goes to the guider, and guidance 1 is one call a step."""
    from lightcache.families.hunyuan_video15.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0, task="t2v")
    settings = _settings("hunyuanvideo-1.5-t2v", guidance_scale=1.0, steps=3)
    events, finished = _run(pipe, settings)
    assert pipe.guider.guidance_scale == 1.0
    assert events[0].calls_per_step == 1
    assert [(r.step, r.branch) for r in _records(events)] == [(s, "pred_cond") for s in range(3)]
    assert np.array_equal(finished.frames, _hunyuan15_plain(pipe, settings))


def test_hunyuanvideo15_refuses_glyph_text_byt5_would_cut(pipes):
    pipe = pipes["hunyuanvideo-1.5-t2v"]
    long_quote = 'a sign that reads "' + "x" * 300 + '"'
    with pytest.raises(LightcacheError, match="256 tokens this model's ByT5"):
        _run(pipe, _settings("hunyuanvideo-1.5-t2v", prompt=long_quote, max_sequence_length=512))
    _assert_pipeline_clean(pipe)


def test_the_hunyuanvideo15_presets_name_the_diffusers_checkpoints():
    from lightcache.presets import load_preset

    t2v, i2v = load_preset("hunyuanvideo-1.5-480p"), load_preset("hunyuanvideo-1.5-i2v-480p")
    assert (t2v.pipeline, t2v.image_input) == ("HunyuanVideo15Pipeline", "none")
    assert (i2v.pipeline, i2v.image_input) == ("HunyuanVideo15ImageToVideoPipeline", "required")
    assert t2v.model == "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_t2v"
    assert i2v.model == "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_i2v"
    for preset in (t2v, i2v):
        d = preset.defaults
        assert (d["height"], d["width"], d["frames"], d["steps"], d["guidance_scale"]) == (480, 848, 121, 50, 6.0)
        assert "not tuned" in preset.description


# --- 14. LTX-Video and LTX-2: packed tokens, three calls per step, audio -------------------------------------------
@pytest.mark.parametrize("case", ["ltx-video", "ltx-video-i2v", "ltx-2"])
def test_ltx_easycache_decisions_follow_an_independent_transcription_of_the_rules(pipes, case):
    """On packed tokens (B, N, C) the latent's channels are the last axis; LTX-2's spatio-temporal and modality calls
    follow the batched cond_uncond call, each reusing its own branch's transformation."""
    pipe = pipes[case]
    settings = _settings(case, steps=14, warmup=2, threshold=0.2)
    recorder = _CallRecorder(pipe)
    try:
        events, _finished = _run(pipe, settings, image=_image(case))
    finally:
        recorder.remove()
    records = _records(events)
    branches = _row(case).branches
    assert recorder.calls[0][1].ndim == 3  # packed tokens
    expected = reference_easycache(recorder.calls, settings.steps, settings.warmup, settings.threshold,
                                   pipe.transformer.config.out_channels, branches=branches, channel_axis=-1)
    assert [(r.step, r.branch) for r in records] == [(s, b) for s in range(settings.steps) for b in branches]
    assert [r.computed for r in records] == [computed for computed, _, _ in expected]
    assert {"E < tau", "E >= tau"} <= {r.reason for r in records}
    for record, (_computed, eps, _) in zip(records, expected):
        assert (record.eps is None) == (eps is None)
        if eps is not None:
            assert record.eps == pytest.approx(eps, rel=1e-4)
    for (_name, _hidden, output), (computed, _, reused) in zip(recorder.calls, expected):
        if not computed:
            torch.testing.assert_close(output, reused, rtol=0, atol=1e-6)


class _AudioRecorder:
    """(branch, audio input, audio output) of every LTX-2 transformer call, as it really happened."""

    def __init__(self, pipe):
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._handle = pipe.transformer.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, _args, kwargs, output):
        self.calls.append((kwargs["audio_hidden_states"].detach().clone(), output[1].detach().clone()))

    def remove(self) -> None:
        self._handle.remove()


def test_ltx2_reused_calls_move_the_audio_with_its_own_input(pipes):
    """A reused LTX-2 call returns video and audio: the audio is its input plus the audio transformation of the
    branch's last computed call, the way the video is."""
    pipe = pipes["ltx-2"]
    settings = _settings("ltx-2", steps=8, warmup=1, threshold=1e9)
    recorder = _AudioRecorder(pipe)
    try:
        events, finished = _run(pipe, settings)
    finally:
        recorder.remove()
    records = _records(events)
    assert len(records) == len(recorder.calls) == 3 * settings.steps
    assert finished.summary["calls_reused"] == 3 * len(finished.summary["steps_reused"]) > 0
    last_delta = {}
    for record, (audio_in, audio_out) in zip(records, recorder.calls):
        assert audio_out.shape == audio_in.shape and torch.isfinite(audio_out).all()
        if record.computed:
            last_delta[record.branch] = audio_out - audio_in
        else:
            torch.testing.assert_close(audio_out, audio_in + last_delta[record.branch], rtol=0, atol=1e-6)


def test_ltx2_audio_is_the_plain_runs_at_tau_0_and_present_at_a_high_tau():
    from lightcache.accelerate import AccelerationConfig, apply_lightcache, remove_lightcache
    from lightcache.techniques.easycache import EasyCacheConfig

    pipe = _ltx2_build("ltx-2")
    settings = _settings("ltx-2", steps=6, warmup=1)
    plain = _ltx2_call(pipe, settings)
    outputs = {}
    for tau in (0.0, 1e9):
        acc = apply_lightcache(pipe, AccelerationConfig(easycache=EasyCacheConfig(threshold=tau, warmup_steps=1)))
        try:
            outputs[tau] = _ltx2_call(pipe, settings)
            reused = sum(not r.computed for r in acc.records)
        finally:
            remove_lightcache(pipe)
        assert (reused > 0) == (tau > 0)
    # The same objects run twice: bit for bit.
    assert torch.equal(torch.as_tensor(outputs[0.0].audio), torch.as_tensor(plain.audio))
    assert np.array_equal(outputs[0.0].frames, plain.frames)
    audio = torch.as_tensor(outputs[1e9].audio)
    assert audio.shape == torch.as_tensor(plain.audio).shape and torch.isfinite(audio).all()
    assert not torch.equal(audio, torch.as_tensor(plain.audio))  # reused steps really changed what was decoded


def test_ltx2_decode_stage_covers_the_audio_decode_and_a_stop_lands_inside_it():
    pipe = _ltx2_build("ltx-2")
    settings = _settings("ltx-2", steps=2, threshold=0.0)
    seen = []
    vocoder = pipe.vocoder.register_forward_hook(lambda *_: seen.append("vocoder ran"))
    try:
        run_to_completion(run_generation(pipe, settings), seen.append)
    finally:
        vocoder.remove()
    stages = [(type(e).__name__, e.stage) for e in seen if isinstance(e, (StageStarted, StageFinished))]
    assert stages[-2:] == [("StageStarted", "decode"), ("StageFinished", "decode")]
    started = next(i for i, e in enumerate(seen) if isinstance(e, StageStarted) and e.stage == "decode")
    assert started < seen.index("vocoder ran") < next(i for i, e in enumerate(seen) if isinstance(e, StageFinished)
                                                       and e.stage == "decode")

    # A stop asked for during the audio VAE's decode ends the run before the vocoder, and leaves nothing behind.
    cancel, seen = threading.Event(), []
    first = next(pipe.audio_vae.decoder.children())
    handle = first.register_forward_hook(lambda *_: cancel.set())
    vocoder = pipe.vocoder.register_forward_hook(lambda *_: seen.append("vocoder ran"))
    try:
        with pytest.raises(RunCancelled):
            run_to_completion(run_generation(pipe, settings, cancel=cancel), seen.append)
    finally:
        handle.remove()
        vocoder.remove()
    assert cancel.is_set() and "vocoder ran" not in seen
    assert not any(isinstance(e, (FramesDecoded, RunFinished)) for e in seen)
    _assert_pipeline_clean(pipe)


def test_swapping_brings_ltx2s_connectors_and_audio_decoders_in_for_their_stage_only(pipes):
    from lightcache.families import adapter_for
    from lightcache.techniques.swap import AsyncSwap, AsyncSwapConfig

    pipe = pipes["ltx-2"]
    swap = AsyncSwap(pipe, torch.device("cpu"), AsyncSwapConfig(), adapter_for(pipe))
    assert swap.stage_modules("encode") == {"text_encoder", "connectors"}
    assert swap.stage_modules("denoise") == set()
    assert swap.stage_modules("decode") == {"vae", "audio_vae", "vocoder"}
    kept = AsyncSwap(pipe, torch.device("cpu"), AsyncSwapConfig(vae=False), adapter_for(pipe))
    assert kept.stage_modules("decode") == set()  # the decoders swap with the VAE, or not at all


def test_the_ltx_presets_carry_the_documented_settings():
    """The settings of diffusers' own examples for each pipeline; EasyCache from Wan, said to be untuned."""
    from lightcache.presets import load_preset

    ltx, ltx2 = load_preset("ltx-video"), load_preset("ltx-2")
    assert (ltx.model, ltx.family, ltx.pipeline) == ("Lightricks/LTX-Video", "ltx", "LTXPipeline")
    assert (ltx2.model, ltx2.family, ltx2.pipeline) == ("Lightricks/LTX-2", "ltx2", "LTX2Pipeline")
    d, d2 = ltx.defaults, ltx2.defaults
    assert (d["height"], d["width"], d["frames"], d["steps"], d["guidance_scale"]) == (480, 704, 161, 50, 3.0)
    assert (d2["height"], d2["width"], d2["frames"], d2["steps"], d2["guidance_scale"]) == (512, 768, 121, 30, 3.0)
    # Wan2.1's tau and warm-up share: 10 of 50 steps.
    assert (d["threshold"], d["warmup"], d2["threshold"], d2["warmup"]) == (0.05, 10, 0.05, 6)
    for preset in (ltx, ltx2):
        assert preset.requires_gpu and preset.image_input == "none" and "not tuned" in preset.description
        assert (preset.limits.frame_multiple, preset.limits.size_multiple) == (8, 32)  # what the pipelines accept
        assert set(preset.refused) == {"chunk_ffn", "sliced_decode"}


# --- 15. CogVideoX: a counted step, the noisy channels on axis 2, the frames the VAE returns ------------------------
@pytest.mark.parametrize("case, scheduler, tau", [("cogvideox-i2v", "CogVideoXDDIMScheduler", 0.3),
                                                  ("cogvideox1.5-t2v", "CogVideoXDPMScheduler", 0.3)])
def test_cogvideox_follows_an_independent_transcription_of_the_rules(case, scheduler, tau):
    """One batched call per step under a scheduler without ``step_index`` (the presets' DPM one and the checkpoints'
    DDIM one): the steps are counted, every decision, error estimate and reused output is the reference's, read on the
    noisy channels of the (B, F, C, H, W) input only (image to video concatenates the image's latent after them)."""
    import diffusers

    pipe = _build(case)
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config, timestep_spacing="trailing")
    assert not hasattr(pipe.scheduler, "step_index")
    settings = _settings(case, steps=14, warmup=2, threshold=tau)
    recorder = _CallRecorder(pipe)
    try:
        events, finished = _run(pipe, settings, image=_image(case))
    finally:
        recorder.remove()
    records = _records(events)
    noisy = pipe.transformer.config.out_channels
    frames = (settings.frames - 1) // pipe.vae_scale_factor_temporal + 1
    from lightcache.families import adapter_for

    latent_shape = adapter_for(pipe).latent_shape(pipe, settings)
    for _name, hidden, _output in recorder.calls:
        # (B, F, C, H, W): CogVideoX 1.5 denoises one padding frame more than it decodes (odd -> even latent frames).
        assert hidden.shape[1] == latent_shape[2] == frames + (case == "cogvideox1.5-t2v")
        assert hidden.shape[2] == noisy * (2 if case in IMAGE_TO_VIDEO else 1)
    calls = [(name, hidden[:, :, :noisy], output) for name, hidden, output in recorder.calls]
    expected = reference_easycache_hunyuan(calls, settings.steps, settings.warmup, tau)
    assert [(r.step, r.branch, r.decides) for r in records] == [(s, "cond_uncond", True) for s in range(settings.steps)]
    assert [r.computed for r in records] == [c for c, _, _ in expected]
    assert {"E < tau", "E >= tau"} <= {r.reason for r in records}, "tau does not exercise both outcomes"
    for record, (_c, change, _) in zip(records, expected):
        assert (record.eps is None) == (change is None)
        if change is not None:
            assert record.eps == pytest.approx(change, rel=1e-4)
    for (_name, _x, output), (computed, _, reused) in zip(recorder.calls, expected):
        if not computed:
            assert output.shape[2] == noisy
            torch.testing.assert_close(output, reused, rtol=0, atol=1e-6)
    assert finished.frames.shape == (settings.frames, settings.height, settings.width, 3)


@pytest.mark.parametrize("case, overrides, message", [
    # An even number of latent frames: the VAE would return 8 frames for 5, 16 for 13.
    ("cogvideox-t2v", dict(frames=5), r"frames must be of the form 8k\+1 for CogVideoX.*got 5"),
    ("cogvideox1.5-t2v", dict(frames=13), r"frames must be of the form 8k\+1 for CogVideoX.*got 13"),
    ("cogvideox-t2v", dict(max_sequence_length=64), r"max_sequence_length must be 226 for this model"),
    # The learned position table holds the model's own 32x32, 9 frames (720x480, 49 frames in the real model).
    ("cogvideox-i2v", dict(height=48), r"fit one video shape: 32x32, 9 frames; ask for width 32, height 32 and 9"),
    ("cogvideox-i2v", dict(frames=17), r"fit one video shape: 32x32, 9 frames"),
    # The Mochi VAE compresses 6x in time: 9 frames would come back as 7; one step divides by zero in its schedule.
    ("mochi", dict(frames=9), r"frames must be of the form 6k\+1 for Mochi.*got 9"),
    ("mochi", dict(steps=1, warmup=0), r"steps must be at least 2 for Mochi"),
])
def test_requests_the_pipeline_would_change_or_fail_on_are_refused(pipes, case, overrides, message):
    pipe = pipes[case]
    with pytest.raises(LightcacheError, match=message):
        _run(pipe, _settings(case, **overrides), image=_image(case))
    _assert_pipeline_clean(pipe)


def test_cogvideox_dynamic_cfg_reaches_the_call(pipes):
    """``use_dynamic_cfg`` is the family's field: with it the pipeline recomputes the guidance scale at every step, so
    the video differs from the same request without it, and each is the pipeline's own call."""
    pipe = pipes["cogvideox-t2v"]
    dynamic = _settings("cogvideox-t2v", steps=3, threshold=0.0, use_dynamic_cfg=1)
    fixed = _settings("cogvideox-t2v", steps=3, threshold=0.0, use_dynamic_cfg=0)
    (_, with_dynamic), (_, without) = _run(pipe, dynamic), _run(pipe, fixed)
    assert np.array_equal(with_dynamic.frames, pipes.plain("cogvideox-t2v", dynamic))
    assert np.array_equal(without.frames, pipes.plain("cogvideox-t2v", fixed))
    assert not np.array_equal(with_dynamic.frames, without.frames)


def test_the_cogvideox_presets_carry_the_recommended_settings():
    from lightcache.presets import load_preset

    expected = {  # model, pipeline, image, (height, width, frames, steps, guidance, fps), frame multiple
        "cogvideox-5b": ("THUDM/CogVideoX-5b", "CogVideoXPipeline", "none", (480, 720, 49, 50, 6.0, 8), 8),
        "cogvideox1.5-5b": ("THUDM/CogVideoX1.5-5B", "CogVideoXPipeline", "none", (768, 1360, 81, 50, 6.0, 16), 16),
        "cogvideox-5b-i2v": ("THUDM/CogVideoX-5b-I2V", "CogVideoXImageToVideoPipeline", "required",
                             (480, 720, 49, 50, 6.0, 8), 8),
    }
    for name, (model, pipeline, image, shape, multiple) in expected.items():
        preset = load_preset(name)
        d = preset.defaults
        assert (preset.model, preset.pipeline, preset.image_input, preset.family) == (model, pipeline, image,
                                                                                      "cogvideox")
        assert (d["height"], d["width"], d["frames"], d["steps"], d["guidance_scale"], d["fps"]) == shape
        assert (d["use_dynamic_cfg"], d["max_sequence_length"], d["threshold"], d["warmup"]) == (1, 226, 0.05, 10)
        assert preset.scheduler == ("CogVideoXDPMScheduler", {"timestep_spacing": "trailing"})
        assert preset.limits.frame_multiple == multiple and preset.requires_gpu
        assert "not tuned" in preset.description and set(preset.refused) == {"chunk_ffn", "sliced_decode"}


def test_a_cogvideox_checkpoint_loads_with_the_presets_scheduler(saved_models):
    """The preset names the scheduler the CogVideoX authors run the 5B models with; a checkpoint's own (DDIM) is
    replaced when it loads, keeping the checkpoint's noise schedule."""
    from lightcache.presets import load_pipeline, load_preset

    path = saved_models("cogvideox-5b")
    pipe = load_pipeline(load_preset("cogvideox-5b"), "cpu", model=str(path))
    config = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "CogVideoXDPMScheduler"
    assert (config.timestep_spacing, config.prediction_type, config.rescale_betas_zero_snr) == (
        "trailing", "v_prediction", True)


# --- 16. Mochi --------------------------------------------------------------------------------------------------------
def test_the_mochi_preset_carries_the_documented_settings():
    from lightcache.presets import load_preset

    preset = load_preset("mochi-1")
    d = preset.defaults
    assert (preset.model, preset.pipeline, preset.family, preset.image_input) == (
        "genmo/mochi-1-preview", "MochiPipeline", "mochi", "none")
    assert (d["height"], d["width"], d["frames"], d["steps"], d["guidance_scale"], d["fps"]) == (
        480, 848, 85, 64, 4.5, 30)
    # Wan2.1's tau and warm-up share (10 of 50) scaled to 64 steps.
    assert (d["threshold"], d["warmup"], d["max_sequence_length"]) == (0.05, 13, 256)
    assert (preset.limits.frame_multiple, preset.limits.min_steps) == (6, 2)
    assert "not tuned" in preset.description and set(preset.refused) == {"chunk_ffn", "sliced_decode"}


# --- 17. SkyReels-V2: Wan's architecture; diffusion forcing refused ------------------------------------------------
def test_skyreels_v2_diffusion_forcing_is_refused_by_name_before_anything_runs():
    """Diffusion forcing steps each latent frame with its own copy of the scheduler: the pipeline's scheduler never
    counts a step, so every call would read as step 0. It is refused, saying which pipelines to use instead."""
    from lightcache.families.skyreels_v2.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0, task="df")
    with pytest.raises(LightcacheError, match=r"SkyReelsV2DiffusionForcingPipeline.*not supported.*SkyReelsV2Pipeline"):
        _run(pipe, _settings("skyreels-v2-t2v", threshold=0.2))
    # Refused before anything attached (the adapter lookup itself refuses this class, so it is checked directly).
    assert getattr(pipe.transformer, "_diffusers_hook", None) is None or not pipe.transformer._diffusers_hook.hooks
    assert getattr(pipe, "_lightcache_acceleration", None) is None


def test_the_skyreels_v2_preset_names_the_diffusers_checkpoint_and_its_settings():
    from lightcache.presets import load_preset

    preset = load_preset("skyreels-v2-t2v-540p")
    d = preset.defaults
    assert (preset.family, preset.pipeline, preset.image_input) == ("skyreels_v2", "SkyReelsV2Pipeline", "none")
    assert preset.model == "Skywork/SkyReels-V2-T2V-14B-540P-Diffusers" and preset.requires_gpu
    assert (d["height"], d["width"], d["frames"], d["steps"], d["guidance_scale"], d["flow_shift"]) == (
        544, 960, 97, 50, 6.0, 8.0)
    assert (d["threshold"], d["warmup"]) == (0.05, 10) and "not tuned" in preset.description
    assert set(preset.refused) == {"chunk_ffn"}


def test_skyreels_v2_flow_shift_reaches_the_scheduler():
    from lightcache.families.skyreels_v2.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0)
    settings = _settings("skyreels-v2-t2v", steps=3, flow_shift=3.0, threshold=0.0)
    _events, finished = _run(pipe, settings)
    assert pipe.scheduler.config.flow_shift == 3.0
    reference = build_tiny_pipeline(seed=0)
    reference.scheduler = type(reference.scheduler).from_config(reference.scheduler.config, flow_shift=3.0)
    np.testing.assert_allclose(finished.frames, _skyreels_plain(reference, settings), rtol=0, atol=FLOAT_TOL)


# --- 18. Kandinsky 5: two calls a step without a context, channels-last latents, two prompt limits --------------------
def test_kandinsky5_without_guidance_makes_one_call_a_step(pipes):
    pipe = pipes["kandinsky5-t2v"]
    settings = _settings("kandinsky5-t2v", guidance_scale=1.0, steps=3, threshold=0.0)
    events, finished = _run(pipe, settings)
    assert events[0].calls_per_step == 1
    assert [(r.step, r.branch) for r in _records(events)] == [(s, "cond") for s in range(3)]
    assert np.array_equal(finished.frames, pipes.plain("kandinsky5-t2v", settings))


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_kandinsky5_refuses_a_prompt_its_qwen_encoder_would_cut(pipes, field):
    """The pipeline keeps ``max_sequence_length`` tokens after its template's first 128 and cuts the rest with a
    log line only."""
    pipe = pipes["kandinsky5-t2v"]
    long_text = " ".join(["red circle"] * 40)
    with pytest.raises(LightcacheError, match=rf"{field} is \d+ tokens long.*Qwen2.5-VL.*at most 64"):
        _run(pipe, _settings("kandinsky5-t2v", max_sequence_length=64, **{field: long_text}))
    _assert_pipeline_clean(pipe)


def test_kandinsky5_refuses_a_prompt_clip_would_cut(pipes):
    pipe = pipes["kandinsky5-t2v"]
    with pytest.raises(LightcacheError, match="77 tokens this model's CLIP"):
        _run(pipe, _settings("kandinsky5-t2v", max_sequence_length=512, prompt=" ".join(["red circle"] * 40)))
    _assert_pipeline_clean(pipe)


def test_the_kandinsky5_preset_names_the_diffusers_checkpoint_and_its_settings():
    from lightcache.presets import load_preset

    preset = load_preset("kandinsky5-t2v-lite")
    d = preset.defaults
    assert (preset.family, preset.pipeline, preset.image_input) == ("kandinsky5", "Kandinsky5T2VPipeline", "none")
    assert preset.model == "kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers" and preset.requires_gpu
    assert (d["height"], d["width"], d["frames"], d["steps"], d["guidance_scale"]) == (512, 768, 121, 50, 5.0)
    assert (d["threshold"], d["warmup"]) == (0.05, 10) and "not tuned" in preset.description
    assert set(preset.refused) == {"chunk_ffn", "sliced_decode"}


# --- 19. diffusers' caches on the new families: run, or refused with the reason before anything runs ----------------
@pytest.mark.parametrize("case, cache, refusal", [
    # SkyReels-V2's blocks are not in diffusers' block registry, which FirstBlockCache, MagCache and SeaCache read.
    *(("skyreels-v2-t2v", cache, "diffusers does not know the blocks") for cache in ("fbc", "magcache", "seacache")),
    ("skyreels-v2-t2v", "taylorseer", None), ("skyreels-v2-t2v", "pab", None),
    ("kandinsky5-t2v", "fbc", "no 'blocks' list"),
])
def test_diffusers_caches_run_or_are_refused_with_the_reason(pipes, case, cache, refusal):
    pipe = pipes[case]
    settings = _settings(case, steps=4, cache=cache)
    if refusal is None:
        _events, finished = _run(pipe, settings)
        assert finished.summary["calls_computed"] + finished.summary["calls_reused"] == 4 * _calls_per_step(case)
        assert np.isfinite(finished.frames).all()
    else:
        with pytest.raises(LightcacheError, match=refusal):
            _run(pipe, settings)
    _assert_pipeline_clean(pipe)
