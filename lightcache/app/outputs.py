"""Where the app writes videos: one fresh directory per run under an app-specific temporary root.

Each run gets its own ``mkdtemp`` directory, so no two users (or two runs of one user) ever share a path and
nothing is written to a fixed name like ``output.mp4``. A run that fails or is stopped removes its directory at
once; finished runs stay long enough for the browser to fetch the video (Gradio serves a copy from its own cache)
and are swept once they are older than ``max_age_s``, at the next run or when the app starts.

Example:
    >>> import os, shutil, tempfile
    >>> from lightcache.app.outputs import OutputDirs
    >>> dirs = OutputDirs(root=tempfile.mkdtemp())
    >>> a, b = dirs.new(), dirs.new()
    >>> a != b and os.path.isdir(a)
    True
    >>> dirs.discard(a); os.path.exists(a)
    False
    >>> shutil.rmtree(dirs.root)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

DEFAULT_MAX_AGE_S = 3600.0
_PREFIX = "run-"


class OutputDirs:
    """Unique per-run output directories under ``root`` (default ``<tmp>/lightcache-app``), swept by age."""

    def __init__(self, root: str | os.PathLike | None = None, max_age_s: float = DEFAULT_MAX_AGE_S):
        self.root = Path(root) if root is not None else Path(tempfile.gettempdir()) / "lightcache-app"
        self.max_age_s = max_age_s

    def new(self) -> str:
        """Sweep old run directories, then create and return a fresh one."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep()
        return tempfile.mkdtemp(prefix=_PREFIX, dir=self.root)

    def discard(self, path: str | os.PathLike) -> None:
        """Remove one run's directory (a failed or stopped run leaves nothing behind)."""
        path = Path(path)
        if path.parent.resolve() == self.root.resolve() and path.name.startswith(_PREFIX):
            shutil.rmtree(path, ignore_errors=True)

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove run directories older than ``max_age_s``; returns what was removed."""
        now = time.time() if now is None else now
        removed = []
        if not self.root.is_dir():
            return removed
        for entry in self.root.iterdir():
            try:
                old = entry.is_dir() and entry.name.startswith(_PREFIX) and now - entry.stat().st_mtime > self.max_age_s
            except FileNotFoundError:  # another worker swept it first
                continue
            if old:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(str(entry))
        return removed
