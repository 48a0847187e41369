"""``python app.py``: the app's own command-line flags, and launching the page.

Where to listen comes from Gradio's standard environment variables, ``GRADIO_SERVER_NAME`` (default 127.0.0.1;
0.0.0.0 to serve a network) and ``GRADIO_SERVER_PORT`` (default 7860), so the same ``app.py`` runs on a laptop,
in a container and on a Hugging Face Space. The flags below are only what Gradio has no variable for.

Example:
    >>> from lightcache.app.launch import parse_args
    >>> parse_args(["--share"]).share
    True
"""

from __future__ import annotations

import argparse
from typing import Sequence


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python app.py",
        description="Serve the LightCache + EasyCache demo page. Set GRADIO_SERVER_NAME / GRADIO_SERVER_PORT "
        "to choose the address and port (Gradio's standard variables).",
    )
    parser.add_argument("--share", action="store_true", help="also serve the page through a temporary public "
                        "gradio.live link (needs internet access)")
    return parser.parse_args(argv)


def main(demo, argv: Sequence[str] | None = None) -> None:
    """Parse the flags and serve ``demo`` until interrupted."""
    args = parse_args(argv)
    # server_name / server_port stay None so that Gradio reads its environment variables.
    demo.launch(share=args.share or None)
