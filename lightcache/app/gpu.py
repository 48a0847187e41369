"""Hugging Face Spaces GPU support: ``spaces.GPU`` with a duration estimate where it exists, a no-op elsewhere.

On a ZeroGPU Space a GPU is attached only while a function decorated with ``spaces.GPU`` runs, for at most the
duration it asks for; the main process must never touch CUDA (which is why nothing in the project does at import
time). Outside Spaces the ``spaces`` package is usually absent and the decorator changes nothing.

Example:
    >>> from lightcache.app.gpu import estimate_gpu_seconds, on_gpu
    >>> estimate_gpu_seconds("tiny", steps=20, frames=33, height=128, width=128, compare=False)
    60
    >>> @on_gpu(duration=lambda *a, **k: 60)
    ... def f(x):
    ...     return x + 1
    >>> f(1)
    2
"""

from __future__ import annotations

from typing import Any, Callable

from ..presets import load_shipped_preset

#: Seconds per transformer call (one CFG branch) and the token count they were measured at (design notes §5,
#: one H100, bf16). Other shapes scale with the token count; other presets fall back to the 14B figure.
_MEASURED = {
    "wan2.1-t2v-1.3b": (0.63, 21 * 30 * 52),
    "wan2.1-t2v-14b": (12.53, 21 * 45 * 80),
}
_MIN_S, _MAX_S = 60, 1200
_LOAD_S = 60  # loading a checkpoint from the local cache onto the GPU


def on_gpu(duration: Callable[..., float]) -> Callable[[Callable], Callable]:
    """``spaces.GPU(duration=duration)`` when the ``spaces`` package is installed, else the identity decorator."""
    try:
        import spaces  # noqa: F401 - only present on Hugging Face Spaces
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


def estimate_gpu_seconds(preset: Any, steps: Any, frames: Any, height: Any, width: Any, compare: Any) -> int:
    """How long to ask ZeroGPU for: model load plus every transformer call, with a 1.5x margin, doubled to compare.

    Never raises: a bad request gets the minimum and is refused by validation inside the call.
    """
    try:
        p = load_shipped_preset(preset)
        if not p.requires_gpu:
            return _MIN_S
        per_call, ref_tokens = _MEASURED.get(p.name, _MEASURED["wan2.1-t2v-14b"])
        latent_frames = (int(frames) - 1) // 4 + 1
        tokens = latent_frames * (int(height) // 16) * (int(width) // 16)
        calls = 2 * int(steps)
        seconds = _LOAD_S + 1.5 * calls * per_call * tokens / ref_tokens
        if compare:
            seconds *= 2
        return int(min(_MAX_S, max(_MIN_S, seconds)))
    except Exception:  # noqa: BLE001 - see docstring
        return _MIN_S
