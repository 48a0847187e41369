"""Optional dependencies: what each command needs beyond the library, and one clear sentence when it is missing.

``pip install lightcache`` installs the library only (torch, diffusers, ...). The command line writes an mp4 and an
HTML timeline, the benchmark draws a chart: those need the ``cli`` and ``bench`` extras. A command checks its extra
before it loads a model, so a missing package costs nothing and names the install command.

Example:
    >>> from lightcache.extras import missing_packages, require_extra
    >>> missing_packages({"json": "json"})
    []
    >>> require_extra("cli", {"no_such_module_here": "no-such-package"}, "`lightcache generate`")
    Traceback (most recent call last):
    ...
    lightcache.errors.LightcacheError: `lightcache generate` needs no-such-package, which is not installed: pip install "lightcache[cli]".
"""

from __future__ import annotations

import importlib.util
from typing import Mapping

from .errors import LightcacheError

#: Module -> the package that provides it, for what ``lightcache generate`` writes: the video and the timeline.
CLI_MODULES = {"imageio_ffmpeg": "imageio-ffmpeg", "plotly": "plotly"}
#: What ``lightcache bench`` needs: the chart.
BENCH_MODULES = {"plotly": "plotly"}


def missing_packages(modules: Mapping[str, str]) -> list[str]:
    """The packages (values of ``modules``) whose module (key) cannot be imported here, without importing any."""
    return [package for module, package in modules.items() if importlib.util.find_spec(module) is None]


def require_extra(extra: str, modules: Mapping[str, str], what: str) -> None:
    """Raise :class:`LightcacheError` naming the missing packages and ``pip install "lightcache[<extra>]"``."""
    missing = missing_packages(modules)
    if missing:
        raise LightcacheError(f"{what} needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                              f"not installed: pip install \"lightcache[{extra}]\".")
