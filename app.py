"""LightCache + EasyCache demo: run ``python app.py`` and open the printed address.

The page and all its logic live in :mod:`lightcache.app`; this file only loads what the server serves, builds the
page (``demo``, which Hugging Face Spaces and ``gradio app.py`` look for) and launches it. ``python app.py --help``
lists the flags; ``LIGHTCACHE_PRESET`` picks the one preset to load at start and serve (:mod:`lightcache.app.startup`).
"""

from lightcache.app.launch import check_server_port

check_server_port()  # before Gradio is imported: it reads GRADIO_SERVER_PORT then, and a bad one is a traceback

from lightcache.app.gpu import import_spaces  # noqa: E402

import_spaces()  # where installed, before torch: on ZeroGPU importing it is what patches torch

from lightcache.app.startup import start_or_exit  # noqa: E402

# At module scope, as ZeroGPU requires: the served preset's model loads here, not inside a GPU call.
pipelines, served = start_or_exit()

from lightcache.app import build_demo, main  # noqa: E402

demo = build_demo(pipelines, presets=[served] if served else None)

if __name__ == "__main__":
    main(demo)
