"""Time and peak memory of every stage, for each LightCache memory strategy, against plain and against diffusers.

Wan2.1-1.3B at 480x832x81 and Wan2.1-14B at 720x1280x81 are built from their Hub configs with random weights
(time and memory do not depend on weight values): a bf16 transformer (with the modules diffusers keeps in fp32
kept in fp32, as ``from_pretrained`` does) and the fp32 Wan VAE. No text encoder: the prompt embeddings are random
(1, 512, 4096) tensors, the same for every configuration, so the figures are the denoise and decode stages.

Configurations: ``plain``; each strategy alone (``chunking``, ``sliced_decode``, ``async_swap``); ``all_three``;
diffusers' block-level group offloading with CUDA streams (``diffusers_group_offload``); diffusers' VAE tiling
(``diffusers_vae_tiling``). For each: the denoise stage (``--steps`` steps x cond/uncond transformer calls on the
same latents, after one untimed call) and the decode stage, each with its wall time and its peak allocated memory
over what was resident when it started; the end-to-end peak is the highest allocation over both stages with the
weights placed as the configuration places them. Outputs of the strategies are compared with plain.

Usage::

    python -m benchmarks.memory                         # on a CUDA GPU: both models, every configuration
    python -m benchmarks.memory --models 14b --configs plain all_three
    python -m benchmarks.memory --smoke                 # tiny shapes on the CPU in seconds: checks the machinery
    python -m benchmarks.memory --estimate              # real shapes on the meta device: live-tensor estimates
    python -m benchmarks.memory --estimate --models --decoders animatediff svd-xt hunyuanvideo
                                                        # only the other families' VAE decodes, plain and sliced

``--decoders`` adds the decode of other families' presets (their VAEs built from the real configs, random weights,
the preset's VAE dtype): the pipeline's own decode against sliced decoding, each one's peak of live tensors. With
``--estimate`` at the preset's size on the meta device, where sliced decoding's staged tensors are counted as the
CUDA path keeps them (in host memory, off the device) and attention as flash kernels hold it; with ``--smoke`` at a
small size on the CPU, where staged and working memory are the same and the outputs are compared.

A GPU run writes ``docs/memory-gpu.json`` and ``docs/memory-gpu.md``; ``--smoke`` and ``--estimate`` write
``memory-smoke.*`` / ``memory-estimate.*`` into ``--out`` (default: a new temporary directory), so they never
overwrite measured figures. Smoke and estimate figures are not GPU measurements and are labelled so.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch

GIB = 2**30
DOCS = Path(__file__).resolve().parent.parent / "docs"

_WAN_T2V = dict(patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
                freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    transformer: dict
    vae: dict
    height: int
    width: int
    frames: int
    text_len: int = 512
    chunks: int = 8
    slices: int = 16
    tiling: dict = field(default_factory=dict)  # diffusers' enable_tiling arguments (its defaults when empty)


MODELS = {
    "1.3b": ModelSpec("Wan2.1-1.3B", dict(_WAN_T2V, num_attention_heads=12, ffn_dim=8960, num_layers=30), {},
                      480, 832, 81),
    "14b": ModelSpec("Wan2.1-14B", dict(_WAN_T2V, num_attention_heads=40, ffn_dim=13824, num_layers=40), {},
                     720, 1280, 81),
}
# The smoke shapes: the same classes and code paths, small enough for a laptop CPU in seconds.
SMOKE = ModelSpec(
    "tiny (smoke)",
    dict(_WAN_T2V, num_attention_heads=2, attention_head_dim=16, text_dim=64, freq_dim=32, ffn_dim=128, num_layers=2,
         rope_max_seq_len=64),
    dict(base_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1),
    48, 96, 5, text_len=16, chunks=4, slices=3,
    tiling=dict(tile_sample_min_height=48, tile_sample_min_width=64, tile_sample_stride_height=32,
                tile_sample_stride_width=48),
)

CONFIGS = ("plain", "chunking", "sliced_decode", "async_swap", "all_three", "diffusers_group_offload",
           "diffusers_vae_tiling")
_STAGES = {
    "plain": ("denoise", "decode"),
    "chunking": ("denoise",),
    "sliced_decode": ("decode",),
    "async_swap": ("denoise", "decode"),
    "all_three": ("denoise", "decode"),
    "diffusers_group_offload": ("denoise",),
    "diffusers_vae_tiling": ("decode",),
}

#: Targets from the project's brief (GiB over resident, and time ratios against plain).
TARGETS = {
    "14b": {"decode_over_gib": 1.5, "decode_time_ratio": 1.15, "denoise_over_gib": 3.5, "denoise_time_ratio": 1.03,
            "swap_resident_gib": 3.0, "swap_time_ratio": 1.05, "end_to_end_gib": 6.0},
    "1.3b": {"decode_over_gib": 0.8, "decode_time_ratio": 1.15, "end_to_end_gib": 2.5},
}


@dataclass
class StageResult:
    seconds: float | None
    resident_bytes: int
    peak_bytes: int
    over_bytes: int
    call_seconds: list[float] = field(default_factory=list)
    weights_resident_bytes: int | None = None  # most transformer weight bytes on the device at any block boundary

    @property
    def over_gib(self) -> float:
        return self.over_bytes / GIB


@dataclass
class ConfigResult:
    config: str
    stages: dict[str, StageResult]
    setup_seconds: float | None
    end_to_end_peak_bytes: int | None
    max_abs_diff: dict[str, float]
    notes: list[str]


# --- building the models ----------------------------------------------------------------------------------------
def build_models(spec: ModelSpec, device: torch.device, materialise: bool = True):
    """Transformer (bf16, fp32 where diffusers keeps fp32) and VAE (fp32) with random weights on ``device``."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    generator = torch.Generator(device="cpu").manual_seed(0)
    with torch.device("meta"):
        transformer = WanTransformer3DModel(**spec.transformer).eval()
        vae = AutoencoderKLWan(**spec.vae).eval()
    _cast_like_from_pretrained(transformer, torch.bfloat16)
    if device.type == "meta":
        transformer.rope = WanRotaryPosEmbed(spec.transformer["attention_head_dim"], spec.transformer["patch_size"],
                                             spec.transformer["rope_max_seq_len"]).to("meta")
        return transformer, vae
    transformer.to_empty(device=device)
    vae.to_empty(device=device)
    for module in (transformer, vae):
        with torch.no_grad():
            for name, p in module.named_parameters():
                if p.ndim >= 2:
                    p.normal_(0.0, 0.02, generator=None if device.type == "cuda" else generator)
                elif name.endswith(("weight", "gamma")):
                    p.fill_(1.0)
                else:
                    p.zero_()
    # The rotary tables are non-persistent buffers computed at construction: rebuild them for real.
    transformer.rope = WanRotaryPosEmbed(spec.transformer["attention_head_dim"], spec.transformer["patch_size"],
                                         spec.transformer["rope_max_seq_len"]).to(device)
    return transformer, vae


def _cast_like_from_pretrained(model: torch.nn.Module, dtype: torch.dtype) -> None:
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, module in model.named_modules():
        if any(k in name.split(".") for k in keep):
            continue
        for p in module.parameters(recurse=False):
            p.data = p.data.to(dtype)


def make_inputs(spec: ModelSpec, device: torch.device) -> dict[str, torch.Tensor]:
    f = (spec.frames - 1) // 4 + 1
    h, w = spec.height // 8, spec.width // 8
    g = torch.Generator(device="cpu").manual_seed(1)

    def randn(*shape, dtype=torch.bfloat16):
        if device.type == "meta":
            return torch.empty(*shape, dtype=dtype, device="meta")
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    text_dim = spec.transformer["text_dim"]
    return {
        "latents": randn(1, 16, f, h, w),
        "timestep": torch.tensor([999.0], device=device),
        "cond": randn(1, spec.text_len, text_dim),
        "uncond": randn(1, spec.text_len, text_dim),
        "z": randn(1, 16, f, h, w, dtype=torch.float32),
    }


# --- measuring ---------------------------------------------------------------------------------------------------
class _CudaMeter:
    """Allocated bytes at the start, and the allocator's peak, of one stage."""

    def __init__(self, device):
        self.device = device

    @contextlib.contextmanager
    def stage(self):
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        box = SimpleNamespace(resident=torch.cuda.memory_allocated(self.device), peak=0, seconds=0.0)
        start = time.perf_counter()
        yield box
        torch.cuda.synchronize(self.device)
        box.seconds = time.perf_counter() - start
        box.peak = torch.cuda.max_memory_allocated(self.device)

    def resident_now(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.memory_allocated(self.device)


class _LiveMeter:
    """CPU and meta: bytes of tensors a stage creates (LiveBytesMeter) over the weights on the device."""

    def __init__(self, device, modules_on_device: Callable[[], int]):
        self.device = device
        self.resident_now = modules_on_device

    @contextlib.contextmanager
    def stage(self):
        from lightcache.telemetry import LiveBytesMeter

        resident = self.resident_now()
        box = SimpleNamespace(resident=resident, peak=resident, seconds=0.0)
        start = time.perf_counter()
        with LiveBytesMeter() as meter:
            yield box
        box.seconds = time.perf_counter() - start
        box.peak = resident + meter.peak


@contextlib.contextmanager
def _flash_like_attention():
    """On the meta device, size attention as the GPU's flash / memory-efficient kernels hold it: the output only."""

    original = torch.nn.functional.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        return torch.empty(*query.shape[:-1], value.shape[-1], dtype=query.dtype, device=query.device)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


class _OffDeviceStore:
    """Sliced decoding's store as the CUDA path keeps it, for the meta device: parked tensors cost nothing."""

    def __init__(self):
        self.items = {}

    def put(self, key, tensor):
        self.items[key] = (tuple(tensor.shape), tensor.dtype)

    def prefetch(self, keys):
        pass

    def get(self, key):
        shape, dtype = self.items[key]
        return torch.empty(shape, dtype=dtype, device="meta")

    def drop(self, predicate):
        for key in [k for k in self.items if predicate(k)]:
            del self.items[key]

    def host_buffer(self, shape, dtype):
        from torch.utils._python_dispatch import _disable_current_modes

        with _disable_current_modes():
            return torch.empty(shape, dtype=dtype, device="meta")

    def synchronize(self):
        pass


# --- one configuration -------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, spec: ModelSpec, key: str, device: torch.device, steps: int, chunks: int | None,
                 slices: int | None, log=print):
        self.spec, self.key, self.device, self.steps, self.log = spec, key, device, steps, log
        self.chunks = chunks or spec.chunks
        self.slices = slices or spec.slices
        self.meta = device.type == "meta"
        self.transformer, self.vae = build_models(spec, device)
        self.inputs = make_inputs(spec, device)
        self.pipe = SimpleNamespace(transformer=self.transformer, vae=self.vae, text_encoder=None,
                                    _execution_device=device)
        if device.type == "cuda":
            self.meter = _CudaMeter(device)
        else:
            self.meter = _LiveMeter(device, self._bytes_on_device)
        self.reference: dict[str, torch.Tensor] = {}

    def _bytes_on_device(self) -> int:
        return sum(t.nbytes for m in (self.transformer, self.vae) for t in (*m.parameters(), *m.buffers())
                   if t.device.type == self.device.type)

    def run(self, config: str) -> ConfigResult:
        from lightcache.families import adapter_named
        from lightcache.techniques.chunk import apply_feature_chunking, remove_feature_chunking
        from lightcache.techniques.swap import apply_async_swap, release_pinned_weights, remove_async_swap

        # Swapping keeps a pinned copy of the transformer between runs; drop it so every configuration starts from
        # the same host memory and "setup s" is a first run's (later runs reuse it: benchmarks/swap_setup.py).
        release_pinned_weights(self.pipe)
        notes: list[str] = []
        stages: dict[str, StageResult] = {}
        diffs: dict[str, float] = {}
        chunked = config in ("chunking", "all_three")
        swapped = config in ("async_swap", "all_three")
        sliced = config in ("sliced_decode", "all_three")
        swap = None
        setup_start = time.perf_counter()
        try:
            if chunked:
                apply_feature_chunking(self.transformer, self.chunks, adapter_named("wan"))
            if swapped:
                swap = apply_async_swap(self.pipe, self.device, adapter=adapter_named("wan"))
                if swap.note:
                    notes.append(swap.note)
                if self.meta:
                    notes.append(f"estimate: streaming would keep about {_streamed_weights(self.transformer) / GIB:.2f}"
                                 " GiB of transformer weights on the device (weights outside the blocks + two blocks)"
                                 " and the VAE off it until decoding; not modelled in the table.")
            if config == "diffusers_group_offload":
                if self.device.type != "cuda":
                    notes.append("diffusers' streamed group offloading needs a CUDA device; skipped.")
                    return ConfigResult(config, {}, None, None, {}, notes)
                self.transformer.enable_group_offload(
                    onload_device=self.device, offload_device=torch.device("cpu"), offload_type="block_level",
                    num_blocks_per_group=1, use_stream=True,
                )
            if config == "diffusers_vae_tiling":
                self.vae.enable_tiling(**self.spec.tiling)
            self._sync()
            setup = time.perf_counter() - setup_start
            with torch.no_grad():
                if "denoise" in _STAGES[config]:
                    stages["denoise"], out = self._denoise()
                    diffs["denoise"] = self._compare("denoise", out, first=config == "plain")
                    del out
                if "decode" in _STAGES[config]:
                    if swap is not None:
                        swap.before_decode()
                    stages["decode"], video = self._decode(sliced)
                    if swap is not None:
                        swap.after_decode()
                    diffs["decode"] = self._compare("decode", video, first=config == "plain")
                    del video
        finally:
            if swap is not None:
                remove_async_swap(self.pipe)
            if config == "diffusers_group_offload" and self.device.type == "cuda":
                registry = self.transformer._diffusers_hook
                for name in ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading"):
                    registry.remove_hook(name, recurse=True)
                self.transformer.to(self.device)
            if chunked:
                remove_feature_chunking(self.transformer)
            if config == "diffusers_vae_tiling":
                self.vae.disable_tiling()
            self._sync()
        peaks = [s.peak_bytes for s in stages.values()]
        return ConfigResult(config, stages, setup, max(peaks) if peaks else None, diffs, notes)

    def _denoise(self) -> tuple[StageResult, torch.Tensor]:
        x, t = self.inputs["latents"], self.inputs["timestep"]
        # One untimed call: kernel selection, and diffusers' streamed offloading traces the block order on it.
        self.transformer(x, t, self.inputs["cond"], return_dict=False)
        self._sync()
        calls = []
        out = None
        weights = _WeightsOnDevice(self.transformer, self.device)
        with self.meter.stage() as box, weights:
            for _ in range(self.steps):
                for branch in ("cond", "uncond"):
                    start = time.perf_counter()
                    y = self.transformer(x, t, self.inputs[branch], return_dict=False)[0]
                    self._sync()
                    calls.append(time.perf_counter() - start)
                    if out is None:
                        out = y
                    del y
        result = StageResult(None if self.meta else box.seconds, box.resident, box.peak, box.peak - box.resident,
                             [] if self.meta else calls, weights.most)
        return result, out

    def _decode(self, sliced: bool) -> tuple[StageResult, torch.Tensor]:
        from lightcache.families.wan.vae_bands import decode_into, plan_slices
        from lightcache.techniques.decode import HostStore

        z = self.inputs["z"]
        plan = plan_slices(self.vae, z.shape[-2], z.shape[-1], num_slices=self.slices) if sliced else None
        if not self.meta:
            # Untimed warm-up on two latent frames (the first decodes to one frame, later ones to four: two cover
            # every shape the timed decode meets), so kernel and algorithm selection is not timed.
            small = z[:, :, :2]
            if sliced:
                # Sliced decoding parks bands in pinned host memory, which PyTorch allocates slowly the first time
                # and then reuses: warm up on the whole latent so the timed decode is the steady state of an app
                # that decodes more than once (the first decode in a process pays the pinning on top).
                decode_into(self.vae, z, plan, HostStore(self.device), postprocess=False)
            else:
                self.vae.decode(small)
            self._sync()
        with self.meter.stage() as box:
            if sliced:
                store = _OffDeviceStore() if self.meta else HostStore(self.device)
                bands, _ = decode_into(self.vae, z, plan, store, postprocess=False)
                video = None if self.meta else torch.cat(bands, dim=3 if plan["dim"] == -1 else 2).permute(0, 4, 1, 2, 3)
            else:
                video = self.vae.decode(z).sample
        result = StageResult(None if self.meta else box.seconds, box.resident, box.peak, box.peak - box.resident)
        return result, video

    def _compare(self, stage: str, out: torch.Tensor | None, first: bool) -> float:
        """Max abs difference from the plain configuration's output of this stage (plain runs first)."""
        if out is None or self.meta:
            return float("nan")
        out = out.detach().float().cpu()
        if first:
            self.reference[stage] = out
            return 0.0
        if stage not in self.reference:
            return float("nan")
        return float((out - self.reference[stage]).abs().max())

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _streamed_weights(transformer: torch.nn.Module) -> int:
    """Weight bytes block-level streaming keeps resident: everything outside the blocks and two blocks."""
    blocks = sorted((sum(p.nbytes for p in b.parameters()) for b in transformer.blocks), reverse=True)
    outside = sum(p.nbytes for p in transformer.parameters()) - sum(blocks)
    return outside + sum(blocks[:2])


class _WeightsOnDevice:
    """The most transformer weight bytes on the device, read before and after every block runs."""

    def __init__(self, transformer: torch.nn.Module, device: torch.device):
        self.transformer, self.device, self.most, self._handles = transformer, device, 0, []

    def _read(self, *_):
        on = sum(t.nbytes for t in (*self.transformer.parameters(), *self.transformer.buffers())
                 if t.device.type == self.device.type)
        self.most = max(self.most, on)

    def __enter__(self):
        self._read()
        for block in self.transformer.blocks:
            self._handles.append(block.register_forward_pre_hook(self._read))
            self._handles.append(block.register_forward_hook(self._read))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def exactness_check(device: torch.device, log=print) -> dict[str, float]:
    """Strategy vs plain at a small shape in strict fp32 (no TF32): the exactness claims, on this device."""
    from lightcache.families import adapter_named
    from lightcache.families.wan.vae_bands import sliced_decode
    from lightcache.techniques.chunk import apply_feature_chunking, remove_feature_chunking

    spec = SMOKE
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        transformer, vae = build_models(spec, device)
        transformer.float()
        inputs = make_inputs(spec, device)
        x, t, text = inputs["latents"].float(), inputs["timestep"], inputs["cond"].float()
        with torch.no_grad():
            plain = transformer(x, t, text, return_dict=False)[0]
            apply_feature_chunking(transformer, spec.chunks, adapter_named("wan"))
            chunked = transformer(x, t, text, return_dict=False)[0]
            remove_feature_chunking(transformer)
            decoded = vae.decode(inputs["z"]).sample.cpu()
        sliced = sliced_decode(vae, inputs["z"], num_slices=spec.slices)
        return {"chunking_fp32": float((plain - chunked).abs().max()),
                "sliced_decode_fp32": float((sliced - decoded).abs().max())}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


# --- reporting ---------------------------------------------------------------------------------------------------
def _gib(b: int | None, unit: int = GIB) -> str:
    return "-" if b is None else f"{b / unit:.2f}"


def _sec(s: float | None) -> str:
    return "-" if s is None else f"{s:.2f}"


def table(model_results: dict[str, Any], mode: str) -> str:
    lines = []
    for key, res in model_results.items():
        spec = res["spec"]
        biggest = max([r["end_to_end_peak_bytes"] or 0 for r in res["configs"]] + [0])
        unit, u = ("GiB", GIB) if biggest >= GIB else ("MiB", 2**20)
        lines.append(f"### {spec['name']}, {spec['height']}x{spec['width']}x{spec['frames']} ({res['device']})\n")
        lines.append(f"| configuration | denoise s | per call s | weights on device {unit} | denoise resident {unit} | "
                     f"denoise peak over resident {unit} | decode s | decode peak over resident {unit} | end-to-end "
                     f"peak {unit} | setup s | max abs diff vs plain |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in res["configs"]:
            d, c = r["stages"].get("denoise"), r["stages"].get("decode")
            per_call = statistics.median(d["call_seconds"]) if d and d["call_seconds"] else None
            diff = ", ".join(f"{k} {v:.2g}" for k, v in r["max_abs_diff"].items() if v is not None) or "-"
            lines.append(
                f"| {r['config']} | {_sec(d and d['seconds'])} | {_sec(per_call)} | "
                f"{_gib(d and d['weights_resident_bytes'], u)} | {_gib(d and d['resident_bytes'], u)} | "
                f"{_gib(d and d['over_bytes'], u)} | {_sec(c and c['seconds'])} | {_gib(c and c['over_bytes'], u)} | "
                f"{_gib(r['end_to_end_peak_bytes'], u)} | {_sec(r['setup_seconds'])} | "
                f"{diff} |"
            )
        notes = sorted({n for r in res["configs"] for n in r["notes"]})
        if notes:
            lines.append("")
            lines.extend(f"- {n}" for n in notes)
        if res.get("targets"):
            lines.append("")
            lines.append("| target | value | limit | met |")
            lines.append("|---|---:|---:|---|")
            for t in res["targets"]:
                lines.append(f"| {t['what']} | {t['value']} | {t['limit']} | {'yes' if t['met'] else 'no'} |")
        lines.append("")
    if mode != "gpu":
        lines.insert(0, f"*{mode} run: not GPU measurements.*\n")
    return "\n".join(lines)


def check_targets(key: str, configs: list[dict]) -> list[dict]:
    """Each target of the brief against this run's figures (GPU runs only)."""
    limits = TARGETS.get(key)
    by = {r["config"]: r for r in configs}
    if not limits or "plain" not in by:
        return []
    plain = by["plain"]["stages"]
    out = []

    def add(what, value, limit, fmt="{:.2f}"):
        if value is not None:
            out.append({"what": what, "value": fmt.format(value), "limit": fmt.format(limit), "met": value <= limit})

    def stage(config, name):
        return by.get(config, {}).get("stages", {}).get(name)

    dec = stage("sliced_decode", "decode")
    if dec:
        add("sliced decode: peak over resident (GiB)", dec["over_bytes"] / GIB, limits["decode_over_gib"])
        add("sliced decode: time / plain decode", dec["seconds"] / plain["decode"]["seconds"],
            limits["decode_time_ratio"])
    den = stage("chunking", "denoise")
    if den and "denoise_over_gib" in limits:
        add("chunking: denoise peak over resident (GiB)", den["over_bytes"] / GIB, limits["denoise_over_gib"])
        add("chunking: denoise time / plain", den["seconds"] / plain["denoise"]["seconds"],
            limits["denoise_time_ratio"])
    sw = stage("async_swap", "denoise")
    if sw and "swap_resident_gib" in limits and sw["weights_resident_bytes"] is not None:
        add("async swap: transformer weights resident during denoise (GiB)", sw["weights_resident_bytes"] / GIB,
            limits["swap_resident_gib"])
        add("async swap: denoise time / plain", sw["seconds"] / plain["denoise"]["seconds"], limits["swap_time_ratio"])
    if "all_three" in by and by["all_three"]["end_to_end_peak_bytes"] is not None:
        add("all three: end-to-end peak (GiB)", by["all_three"]["end_to_end_peak_bytes"] / GIB,
            limits["end_to_end_gib"])
    return out


def _fill_end_to_end(configs: list[dict]) -> None:
    """A configuration that leaves a stage as plain has it (chunking: decode) borrows plain's figure for it."""
    plain = next((r for r in configs if r["config"] == "plain"), None)
    # diffusers' VAE tiling changes the decode only, like sliced decoding. Group offloading is left alone: it moves
    # the weights off the device, so plain's decode (with the weights resident) is not its decode.
    borrows = {"chunking": "decode", "sliced_decode": "denoise", "diffusers_vae_tiling": "denoise"}
    for r in configs:
        peaks = [s["peak_bytes"] for s in r["stages"].values()]
        if plain is not None and r["config"] in borrows:
            missing = borrows[r["config"]]
            if missing in plain["stages"]:
                peaks.append(plain["stages"][missing]["peak_bytes"])
                r["notes"].append(f"{r['config']}: end-to-end peak uses the plain {missing} stage, which it leaves "
                                  "unchanged.")
        r["end_to_end_peak_bytes"] = max(peaks) if peaks else None


# --- other families' decoders: the pipeline's decode against sliced decoding ----------------------------------------
_SD_VAE = dict(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
               block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32,
               sample_size=512)
_SVD_VAE = dict(down_block_types=("DownEncoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, latent_channels=4)


@dataclass(frozen=True)
class DecoderSpec:
    """A preset's VAE (its diffusers class and the real checkpoint's config) and the latents its pipeline decodes.

    ``chunk``: frames per ``vae.decode`` call where the pipeline decodes in chunks (its default or the preset's
    ``decode_chunk_size``); None where it decodes the whole clip at once. ``smoke``: a small latent for the CPU.
    """

    preset: str
    family: str
    vae_class: str
    config: dict
    latent: tuple[int, ...]
    smoke: tuple[int, ...]
    chunk: int | None = None


DECODERS = {
    # 16 frames at 512x512, decoded 16 at a time (AnimateDiffPipeline's decode_chunk_size).
    "animatediff": DecoderSpec("animatediff", "animatediff", "AutoencoderKL", _SD_VAE, (16, 4, 64, 64),
                               (2, 4, 8, 8), chunk=16),
    # 25 frames at 576x1024, the preset's decode_chunk_size 8.
    "svd-xt": DecoderSpec("svd-xt", "svd", "AutoencoderKLTemporalDecoder", _SVD_VAE, (25, 4, 72, 128),
                          (4, 4, 8, 8), chunk=8),
    # 129 frames at 720x1280: 33 latent frames, which the VAE decodes in its frame-wise time tiles.
    "hunyuanvideo": DecoderSpec("hunyuanvideo", "hunyuan_video", "AutoencoderKLHunyuanVideo", {}, (1, 16, 33, 90, 160),
                                (1, 16, 2, 8, 8)),
}


class _OffDeviceBandPasses:
    """Sliced decoding's band passes as their CUDA path keeps staged tensors (in host memory), for the meta device:
    a staged tensor is made where the meter does not see it, and a band fetched from it is a copy on the device."""

    @staticmethod
    def patch(passes_class):
        from torch.utils._python_dispatch import _disable_current_modes

        class OffDevice(passes_class):
            def staged_empty(self, shape, dtype):
                with _disable_current_modes():
                    return torch.empty(shape, dtype=dtype, device=self.device)

            def stage(self, tensor):
                return self.staged_empty(tensor.shape, tensor.dtype)

            def fetch(self, staged, start, stop):
                return staged.narrow(self.dim, start, stop - start).clone()

        return OffDevice


def measure_decoder(preset: str, device: torch.device, slices: int | None = None) -> dict[str, Any]:
    """The peak of live tensors (over the weights) of ``preset``'s VAE decode, as its pipeline calls it and with
    sliced decoding (``slices`` bands, None: the default); on a CPU also the time and the largest difference."""
    import importlib

    import diffusers

    from lightcache.families import adapter_named
    from lightcache.telemetry import LiveBytesMeter

    spec = DECODERS[preset]
    meta = device.type == "meta"
    dtype = torch.float16 if meta else torch.float32  # the presets' VAE dtype; fp32 on the CPU (its exactness)
    latent = spec.latent if meta else spec.smoke
    with torch.device("meta"):
        vae = getattr(diffusers, spec.vae_class)(**spec.config).eval()
    # (.to(device) on the meta device too: a few parameters, SVD's blend factors, are made on the CPU regardless.)
    vae = vae.to(device=device, dtype=dtype) if meta else vae.to_empty(device=device).to(dtype)
    if not meta:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in vae.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * (1 / max(1, p[0].numel()) ** 0.5))
            for m in vae.modules():
                if isinstance(m, torch.nn.GroupNorm):
                    m.weight.fill_(1.0), m.bias.zero_()
    z = torch.randn(latent, generator=torch.Generator().manual_seed(1)).to(device, dtype) if not meta else \
        torch.empty(latent, device=device, dtype=dtype)
    adapter = adapter_named(spec.family)
    bands = adapter.band_decoder(vae)
    bands.check(vae)
    module = importlib.import_module(type(bands).__module__)
    original = module.BandPasses
    if meta:
        module.BandPasses = _OffDeviceBandPasses.patch(original)

    def pipeline_decode(decode):
        # As the pipeline calls vae.decode: in chunks of frames (AnimateDiff, SVD), or the whole clip.
        if spec.chunk is None:
            return decode(z)
        outs = []
        for start in range(0, z.shape[0], spec.chunk):
            part = z[start : start + spec.chunk]
            outs.append(decode(part, num_frames=part.shape[0]) if spec.family == "svd" else decode(part))
        return torch.cat(outs)

    results, outputs = {}, {}
    try:
        for config in ("plain", "sliced_decode"):
            if config == "plain":
                decode = lambda x, **kw: vae.decode(x, **kw).sample  # noqa: E731
            else:
                plan = bands.plan(vae, latent[-2], latent[-1], num_slices=slices)
                decode = lambda x, **kw: bands.decode(vae, x, plan, **kw)  # noqa: E731
            start = time.perf_counter()
            with torch.no_grad(), LiveBytesMeter() as meter:
                out = pipeline_decode(decode)
            results[config] = {"peak_bytes": meter.peak, "seconds": None if meta else time.perf_counter() - start}
            if config == "sliced_decode":
                results[config]["num_slices"] = plan["num_slices"]
            outputs[config] = out
    finally:
        module.BandPasses = original
    diff = None if meta else float((outputs["sliced_decode"].float() - outputs["plain"].float()).abs().max())
    return {"latent": list(latent), "dtype": str(dtype).removeprefix("torch."), "chunk": spec.chunk,
            "device": device.type, "max_abs_diff": diff, "configs": results}


def decoder_table(decoders: dict[str, Any]) -> str:
    lines = ["### Other families' VAE decode: the pipeline's own against sliced decoding\n",
             "| preset | latent | dtype | frames per decode call | plain peak GiB | sliced peak GiB | bands | "
             "plain s | sliced s | max abs diff |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for preset, r in decoders.items():
        plain, sliced = r["configs"]["plain"], r["configs"]["sliced_decode"]
        diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2g}"
        lines.append(
            f"| {preset} | {'x'.join(map(str, r['latent']))} ({r['device']}) | {r['dtype']} | {r['chunk'] or 'all'} | "
            f"{plain['peak_bytes'] / GIB:.3f} | {sliced['peak_bytes'] / GIB:.3f} | {sliced['num_slices']} | "
            f"{_sec(plain['seconds'])} | {_sec(sliced['seconds'])} | {diff} |")
    return "\n".join(lines)


def _jsonable(result: ConfigResult) -> dict:
    data = asdict(result)
    data["max_abs_diff"] = {k: (None if math.isnan(v) else v) for k, v in result.max_abs_diff.items()}
    return data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", choices=sorted(MODELS), default=["1.3b", "14b"])
    parser.add_argument("--decoders", nargs="*", choices=sorted(DECODERS), default=[],
                        help="also the VAE decode of these presets, plain and sliced (--estimate or --smoke)")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=1, help="denoising steps timed (each is a cond and an uncond call)")
    parser.add_argument("--chunks", type=int, help="feature chunks (default: 8)")
    parser.add_argument("--slices", type=int, help="sliced-decoding bands (default: 16)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: a machinery check, no figures")
    mode.add_argument("--estimate", action="store_true", help="real shapes on the meta device: live-tensor estimates")
    parser.add_argument("--out", help="directory for the JSON and Markdown results")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="do not measure: combine these memory-gpu.json files into --out (default docs/)")
    args = parser.parse_args(argv)
    if args.merge:
        print(merge([Path(p) for p in args.merge], Path(args.out) if args.out else DOCS))
        return 0
    if args.steps < 1:
        parser.error("--steps must be at least 1")

    if args.decoders and not (args.smoke or args.estimate):
        parser.error("--decoders runs with --estimate or --smoke")
    if args.smoke:
        name, device, specs = "smoke", torch.device("cpu"), {"tiny": SMOKE} if args.models else {}
    elif args.estimate:
        name, device, specs = "estimate", torch.device("meta"), {k: MODELS[k] for k in args.models}
    else:
        if not torch.cuda.is_available():
            print("error: the memory benchmark measures a CUDA GPU; use --smoke or --estimate without one.",
                  file=sys.stderr)
            return 2
        name, device, specs = "gpu", torch.device("cuda", torch.cuda.current_device()), {
            k: MODELS[k] for k in args.models}
    out_dir = Path(args.out) if args.out else (DOCS if name == "gpu" else Path(tempfile.mkdtemp(prefix="memory-")))
    out_dir.mkdir(parents=True, exist_ok=True)

    import diffusers

    results: dict[str, Any] = {"mode": name, "torch": torch.__version__, "diffusers": diffusers.__version__,
                               "command": shlex.join(["python", "-m", "benchmarks.memory", *(
                                   sys.argv[1:] if argv is None else argv)]),
                               "models": {}}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    if device.type != "meta":
        results["exactness_fp32"] = exactness_check(device)
        print(f"exactness (fp32, small shape): {results['exactness_fp32']}", flush=True)
    attention = _flash_like_attention() if device.type == "meta" else contextlib.nullcontext()
    with attention:
        for key, spec in specs.items():
            bench = Bench(spec, key, device, args.steps, args.chunks, args.slices)
            configs = []
            for config in args.configs:
                start = time.perf_counter()
                result = _jsonable(bench.run(config))
                configs.append(result)
                print(f"{spec.name} {config}: " + ", ".join(
                    f"{s} {_sec(v['seconds'])} s, +{v['over_bytes'] / 2**20:.1f} MiB over "
                    f"{v['resident_bytes'] / 2**20:.1f} MiB" for s, v in result["stages"].items())
                    + "".join(f" [{n}]" for n in result["notes"] if "skipped" in n)
                    + f" ({time.perf_counter() - start:.0f} s)", flush=True)
                # After every configuration, so a run that is cut short (or killed) keeps what it measured.
                done = copy.deepcopy(configs)
                _fill_end_to_end(done)
                results["models"][key] = {
                    "spec": {"name": spec.name, "height": spec.height, "width": spec.width, "frames": spec.frames,
                             "chunks": bench.chunks, "slices": bench.slices, "steps": args.steps},
                    "device": results.get("gpu", device.type),
                    "configs": done,
                    "targets": check_targets(key, done) if name == "gpu" else [],
                }
                _write(results, out_dir, name)
            del bench
        for preset in args.decoders:
            start = time.perf_counter()
            results.setdefault("decoders", {})[preset] = measure_decoder(preset, device, args.slices)
            print(f"{preset} decode: " + ", ".join(f"{k} +{v['peak_bytes'] / 2**20:.1f} MiB" for k, v in
                                                   results["decoders"][preset]["configs"].items())
                  + f" ({time.perf_counter() - start:.0f} s)", flush=True)
            _write(results, out_dir, name)
    markdown = _write(results, out_dir, name)
    print()
    print(markdown)
    print(f"wrote {out_dir / f'memory-{name}.json'} and {out_dir / f'memory-{name}.md'}")
    return 0


def _write(results: dict[str, Any], out_dir: Path, name: str) -> str:
    markdown = table(results["models"], name)
    if results.get("decoders"):
        markdown = (markdown + "\n\n" if markdown else "") + decoder_table(results["decoders"])
    (out_dir / f"memory-{name}.json").write_text(json.dumps(results, indent=1))
    (out_dir / f"memory-{name}.md").write_text(markdown + "\n")
    return markdown


def merge(paths: list[Path], out_dir: Path) -> str:
    """Combine GPU result files of separate runs (e.g. one per model) into ``memory-gpu.json`` / ``.md``."""
    merged: dict[str, Any] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        if data.get("mode") != "gpu":
            raise SystemExit(f"error: {path} is a {data.get('mode')!r} run; only GPU runs are merged.")
        models = {**merged.get("models", {}), **data["models"]}
        merged = {**merged, **data, "models": models}
    out_dir.mkdir(parents=True, exist_ok=True)
    return _write(merged, out_dir, "gpu")


if __name__ == "__main__":
    sys.exit(main())
