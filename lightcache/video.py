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

    The frame size is taken from the first frame. On an exception the partial file is deleted, so a failed run
    never leaves a broken video behind.
    """

    def __init__(self, path: str | os.PathLike, fps: int, quality: int = 8):
        self.path = os.fspath(path)
        self.fps = fps
        self.quality = quality
        self.frames_written = 0
        self._writer = None

    def __enter__(self) -> "Mp4Writer":
        return self

    def write(self, frames: np.ndarray) -> None:
        """Append one frame (H, W, 3) or a batch (N, H, W, 3)."""
        frames = to_uint8(frames)
        for frame in frames if frames.ndim == 4 else [frames]:
            if self._writer is None:
                self._open(frame.shape[1], frame.shape[0])
            self._writer.send(np.ascontiguousarray(frame))
            self.frames_written += 1

    def _open(self, width: int, height: int) -> None:
        import imageio_ffmpeg

        # libx264 + yuv420p is what browsers play; macro_block_size=1 keeps any even size as it is.
        self._writer = imageio_ffmpeg.write_frames(
            self.path, (width, height), fps=self.fps, codec="libx264", pix_fmt_out="yuv420p",
            quality=self.quality, macro_block_size=1, ffmpeg_log_level="error",
        )
        self._writer.send(None)  # start the encoder process

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._writer is not None:
            self._writer.close()
        if exc_type is None and self.frames_written == 0:
            raise ValueError("no frames were written to the video")
        if exc_type is not None and os.path.exists(self.path):
            os.remove(self.path)


def write_mp4(frames: np.ndarray | Iterable[np.ndarray], path: str | os.PathLike, fps: int = 12) -> None:
    """Write frames (F, H, W, 3) in [0, 1] or uint8 to ``path`` as H.264 mp4."""
    with Mp4Writer(path, fps) as writer:
        for frame in frames:
            writer.write(frame)


def read_mp4(path: str | os.PathLike) -> np.ndarray:
    """Read an mp4 back as uint8 (F, H, W, 3); the tests use it to check that a file really decodes."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(os.fspath(path))
    width, height = next(reader)["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader])
