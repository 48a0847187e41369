"""LightCache + EasyCache demo: run ``python app.py`` and open the printed address.

The page and all its logic live in :mod:`lightcache.app`; this file only builds the page (``demo``, which
Hugging Face Spaces and ``gradio app.py`` look for) and launches it. ``python app.py --help`` lists the flags.
"""

from lightcache.app import build_demo, main

demo = build_demo()

if __name__ == "__main__":
    main(demo)
