"""Peak memory of one denoiser call at a real shape: plain, lightcache's feature chunking and, for the UNets,
diffusers' ``enable_forward_chunking``.

Runs the real configurations (SVD-XT, AnimateDiff: SD 1.5 + motion modules, HunyuanVideo 13B) on the meta device,
so nothing is computed and no weights exist; :class:`lightcache.telemetry.LiveBytesMeter` adds up the tensors the
call creates and keeps the peak, and attention is sized as the GPU's flash / memory-efficient kernels hold it (its
output only), so the figures are what a call adds over the weights on a GPU, up to the allocator's rounding. It
prints one line per setting; diffusers' settings that raise (a chunk size that does not divide an axis) print the
error. Only batch-axis settings of diffusers are measured: on the token axis (``dim=1``) a chunk size must divide
the tokens of every spatial block and the frames of every temporal one, so only tiny chunks qualify, thousands of
calls a layer. HunyuanVideo-1.5 cannot run on the meta device (its forward branches on a tensor's value).

    python scripts/chunking_memory.py                  # SVD-XT 576x1024 x 25 frames, AnimateDiff 512x512 x 16,
                                                       # HunyuanVideo 720x1280 x 129
    python scripts/chunking_memory.py hunyuan_video    # one of them
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lightcache.families import adapter_named  # noqa: E402
from lightcache.techniques.chunk import apply_feature_chunking, remove_feature_chunking  # noqa: E402
from lightcache.telemetry import LiveBytesMeter  # noqa: E402

GIB = 1024**3


@contextlib.contextmanager
def flash_like_attention():
    original = torch.nn.functional.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        return torch.empty(*query.shape[:-1], value.shape[-1], dtype=query.dtype, device=query.device)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def svd_call():
    from diffusers import UNetSpatioTemporalConditionModel

    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel().to("meta", torch.float16).eval()  # SVD-XT's configuration
    frames, height, width = 25, 576 // 8, 1024 // 8
    args = (torch.empty(2, frames, 8, height, width, dtype=torch.float16, device="meta"),
            torch.tensor([1.0], device="meta"), torch.empty(2, 1, 1024, dtype=torch.float16, device="meta"),
            torch.empty(2, 3, dtype=torch.float16, device="meta"))
    return "svd", unet, args, (1, 4, frames, height, width)


def animatediff_call():
    from diffusers import UNetMotionModel

    with torch.device("meta"):
        # SD 1.5 (its CLIP text width) with the motion modules of AnimateDiff v1.5
        unet = UNetMotionModel(cross_attention_dim=768).to("meta", torch.float16).eval()
    frames, height, width = 16, 512 // 8, 512 // 8
    args = (torch.empty(2, 4, frames, height, width, dtype=torch.float16, device="meta"),
            # the pipeline repeats the prompt's embedding for every frame
            torch.tensor([1.0], device="meta"), torch.empty(2 * frames, 77, 768, dtype=torch.float16, device="meta"))
    return "animatediff", unet, args, (1, 4, frames, height, width)


def hunyuan_video_call():
    from diffusers import HunyuanVideoTransformer3DModel

    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModel().to("meta", torch.bfloat16).eval()  # the 13B model's configuration
    frames, height, width = (129 - 1) // 4 + 1, 720 // 8, 1280 // 8
    args = (torch.empty(1, 16, frames, height, width, dtype=torch.bfloat16, device="meta"),
            torch.tensor([1000.0], device="meta"), torch.empty(1, 256, 4096, dtype=torch.bfloat16, device="meta"),
            torch.ones(1, 256, dtype=torch.bool, device="meta"), torch.empty(1, 768, dtype=torch.bfloat16,
                                                                             device="meta"),
            torch.tensor([6000.0], device="meta"))
    return "hunyuan_video", model, args, (1, 16, frames, height, width)


def peak(unet, args) -> int:
    with torch.no_grad(), flash_like_attention(), LiveBytesMeter() as meter:
        out = unet(*args, return_dict=False)[0]
        del out
    return meter.peak


def main() -> None:
    wanted = set(sys.argv[1:]) or {"svd", "animatediff", "hunyuan_video"}
    for make in (svd_call, animatediff_call, hunyuan_video_call):
        if make.__name__.removesuffix("_call") not in wanted:
            continue
        family, model, args, _ = make()
        print(f"{family}: plain {peak(model, args) / GIB:.2f} GiB", flush=True)
        if hasattr(model, "enable_forward_chunking"):  # the UNets
            for chunk_size, dim in ((1, 0), (2, 0)):
                model.enable_forward_chunking(chunk_size, dim)
                try:
                    print(f"{family}: diffusers enable_forward_chunking({chunk_size}, dim={dim}) "
                          f"{peak(model, args) / GIB:.2f} GiB", flush=True)
                except ValueError as exc:
                    print(f"{family}: diffusers enable_forward_chunking({chunk_size}, dim={dim}) refused: "
                          f"{str(exc)[:90]}", flush=True)
                finally:
                    _reset(model)
        for chunks in (4, 8, 16):
            apply_feature_chunking(model, chunks, adapter_named(family))
            try:
                print(f"{family}: lightcache chunk_ffn={chunks} {peak(model, args) / GIB:.2f} GiB", flush=True)
            finally:
                remove_feature_chunking(model)


def _reset(unet) -> None:
    for module in unet.modules():
        if hasattr(module, "set_chunk_feed_forward"):
            module._chunk_size = None


if __name__ == "__main__":
    main()
