"""Quality metrics of an accelerated video against the plain one: PSNR and SSIM over the whole video.

PSNR is ``-10 log10(MSE)`` over every pixel of every frame in [0, 1], as the EasyCache paper reports it; it is
``inf`` for identical videos (:func:`json_psnr` turns that into the string ``"inf"`` for JSON). SSIM is the
standard Gaussian-window SSIM (sigma 1.5, 11x11, K1=0.01, K2=0.03) on each frame's luma, averaged over frames.

Example:
    >>> import numpy as np
    >>> from lightcache.metrics import psnr, ssim
    >>> a = np.zeros((2, 16, 16, 3), np.float32); b = a + 0.1
    >>> round(psnr(a, b), 2), psnr(a, a), round(ssim(a, a), 4)
    (20.0, inf, 1.0)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two videos (F, H, W, C) in [0, 1]; ``inf`` when identical."""
    a, b = _as_pair(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0.0 else -10.0 * math.log10(mse)


def json_psnr(value: float) -> float | str:
    """PSNR for JSON: finite floats unchanged, ``inf`` as the string ``"inf"``."""
    return "inf" if math.isinf(value) else value


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM over frames of the luma of two videos (F, H, W, 3) in [0, 1]."""
    from .torch_thread import torch_thread

    # Convolutions over whole videos: heavy torch work, so on the thread that runs the pipelines.
    return torch_thread.call(_ssim, *_as_pair(a, b))


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    x = torch.from_numpy(_luma(a)).unsqueeze(1).double()  # F, 1, H, W
    y = torch.from_numpy(_luma(b)).unsqueeze(1).double()
    size = min(11, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2  # odd window
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :])[None, None]

    def blur(t):
        return F.conv2d(t, window)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def _as_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {a.shape} vs {b.shape}")
    if a.dtype == np.uint8:
        a, b = a / 255.0, b / 255.0
    return a, b


def _luma(v: np.ndarray) -> np.ndarray:
    if v.shape[-1] == 3:
        return (0.299 * v[..., 0] + 0.587 * v[..., 1] + 0.114 * v[..., 2]).astype(np.float64)
    return v[..., 0].astype(np.float64)
