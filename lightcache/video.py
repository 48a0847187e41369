"""Writing videos: H.264 mp4 through imageio-ffmpeg, from whole arrays or from frames as they arrive.

Example:
    >>> import numpy as np, tempfile, os
    >>> from lightcache.video import write_mp4
    >>> path = os.path.join(tempfile.mkdtemp(), "clip.mp4")
    >>> write_mp4(np.zeros((5, 32, 32, 3), np.float32), path, fps=8)
    >>> os.path.getsize(path) > 0
    True
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] (or uint8) -> uint8, rounding as diffusers' own exporters do."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


class Mp4Writer:
    """Streams frames to an H.264 mp4 (yuv420p, playable in browsers). Use as a context manager.

    On an exception the partial file is deleted, so a failed run never leaves a broken video behind.
    """

    def __init__(self, path: str | os.PathLike, fps: int, quality: int = 8):
        self.path = os.fspath(path)
        self.fps = fps
        self.quality = quality
        self._writer = None

    def __enter__(self) -> "Mp4Writer":
        import imageio.v2 as imageio

        # macro_block_size=1 keeps odd sizes legal; libx264 + yuv420p is what browsers play.
        self._writer = imageio.get_writer(
            self.path, fps=self.fps, codec="libx264", quality=self.quality, pixelformat="yuv420p",
            macro_block_size=1, ffmpeg_log_level="error",
        )
        return self

    def write(self, frames: np.ndarray) -> None:
        """Append one frame (H, W, 3) or a batch (N, H, W, 3)."""
        frames = to_uint8(frames)
        for frame in frames if frames.ndim == 4 else [frames]:
            self._writer.append_data(frame)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._writer is not None:
            self._writer.close()
        if exc_type is not None and os.path.exists(self.path):
            os.remove(self.path)


def write_mp4(frames: np.ndarray | Iterable[np.ndarray], path: str | os.PathLike, fps: int = 12) -> None:
    """Write frames (F, H, W, 3) in [0, 1] or uint8 to ``path`` as H.264 mp4."""
    with Mp4Writer(path, fps) as writer:
        for frame in frames:
            writer.write(frame)


def read_mp4(path: str | os.PathLike) -> np.ndarray:
    """Read an mp4 back as uint8 (F, H, W, 3); used by tests to check a file really plays."""
    import imageio.v2 as imageio

    return np.stack(list(imageio.get_reader(os.fspath(path), format="ffmpeg")))
