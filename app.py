"""LightCache + EasyCache demo: run ``python app.py`` and open the printed address.

The page and all its logic live in :mod:`lightcache.app`; this file only builds the page (``demo``, which
Hugging Face Spaces and ``gradio app.py`` look for) and launches it. ``python app.py --help`` lists the flags.
"""

from lightcache.app.launch import check_server_port

check_server_port()  # before Gradio is imported: it reads GRADIO_SERVER_PORT then, and a bad one is a traceback

from lightcache.app import build_demo, main  # noqa: E402

demo = build_demo()

if __name__ == "__main__":
    main(demo)
