"""``python app.py``: the app's own command-line flags, and launching the page.

Where to listen comes from Gradio's standard environment variables, ``GRADIO_SERVER_NAME`` (default 127.0.0.1;
0.0.0.0 to serve a network) and ``GRADIO_SERVER_PORT`` (default 7860), so the same ``app.py`` runs on a laptop,
in a container and on a Hugging Face Space. The flags below are only what Gradio has no variable for.

The port is checked here and given to Gradio explicitly: a port in use ends the app with one line (Gradio would
otherwise serve on the next free port, where nobody looks), and a ``GRADIO_SERVER_PORT`` that is not a port
number is named (Gradio would fail with a traceback when imported). This module imports no Gradio, so ``app.py``
can check the variable first.

Example:
    >>> from lightcache.app.launch import parse_args, server_port
    >>> parse_args(["--share"]).share
    True
    >>> server_port({"GRADIO_SERVER_PORT": "8080"}), server_port({})
    (8080, 7860)
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Mapping, Sequence

from ..errors import LightcacheError

DEFAULT_PORT = 7860
#: Largest upload the server accepts. The one file the app takes is the first-frame image of image-to-video presets,
#: and 10 MB is plenty for that. Gradio's upload route is open to anyone who can reach the page, so it must not take
#: more than that.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python app.py",
        description="Serve the LightCache + EasyCache demo page. Set GRADIO_SERVER_NAME / GRADIO_SERVER_PORT "
        "to choose the address and port (Gradio's standard variables).",
    )
    parser.add_argument("--share", action="store_true", help="also serve the page through a temporary public "
                        "gradio.live link (needs internet access)")
    return parser.parse_args(argv)


def server_port(environ: Mapping[str, str] = os.environ) -> int:
    """``GRADIO_SERVER_PORT`` as a port number (default 7860); a :class:`LightcacheError` names a bad one."""
    raw = environ.get("GRADIO_SERVER_PORT", "").strip()
    if not raw:
        return DEFAULT_PORT
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise LightcacheError(f"GRADIO_SERVER_PORT must be a port number between 1 and 65535, got {raw[:20]!r}.")
    return int(raw)


def check_server_port() -> int:
    """:func:`server_port`, or one ``error:`` line and exit status 2 (called before Gradio is imported)."""
    try:
        return server_port()
    except LightcacheError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def launch_options(port: int | None, share: bool = False) -> dict[str, Any]:
    """The keyword arguments of ``demo.launch`` (the tests serve the app with the same ones).

    The port is explicit (None: Gradio takes the first free one from 7860 on, as the tests do), uploads are capped
    at :data:`MAX_UPLOAD_BYTES`, a request naming a file that is not an upload (a URL, a server path) is refused
    before Gradio resolves it (:mod:`.uploads`), and plain REST calls get the form's defaults for the parameters
    they leave out (:mod:`.rest`).
    """
    from starlette.middleware import Middleware

    from .rest import RestDefaults
    from .uploads import UploadsOnly

    # The first is the outermost: the file check sees each request as the client sent it.
    return dict(server_port=port, share=share or None, max_file_size=MAX_UPLOAD_BYTES,
                app_kwargs={"middleware": [Middleware(UploadsOnly), Middleware(RestDefaults)]})


def main(demo, argv: Sequence[str] | None = None) -> None:
    """Parse the flags and serve ``demo`` until interrupted; a port that cannot be served ends it with one line."""
    args = parse_args(argv)
    port = check_server_port()
    # server_name stays None so that Gradio reads GRADIO_SERVER_NAME.
    try:
        demo.launch(**launch_options(port, share=args.share))
    except OSError as exc:
        print(f"error: {launch_failure(exc, port)}", file=sys.stderr)
        raise SystemExit(2) from None


def launch_failure(exc: OSError, port: int) -> str:
    """One sentence for a server that could not start (Gradio says "Cannot find empty port" for a port in use)."""
    if "empty port" in str(exc) or getattr(exc, "errno", None) in (48, 98):  # EADDRINUSE on macOS, Linux
        return (f"port {port} is already in use (another app is serving there?); stop it or set GRADIO_SERVER_PORT "
                "to a free port.")
    return f"could not serve on port {port}: {exc.strerror or exc}."
