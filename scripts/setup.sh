#!/usr/bin/env bash
# One-time setup: a virtual environment in .venv with everything the app, the CLI and the tests need.
# Safe to run again: it only installs what is missing. Works offline apart from the package registry.
#   TORCH_SPEC  the torch requirement to install first (default: torch==2.13.0; on a GPU machine you may
#               prefer a CUDA build matching your driver, e.g. TORCH_SPEC="torch==2.13.0" from the CUDA index)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch first and pinned: a bare `torch` requirement can resolve to a multi-GB build the machine may not need.
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
fi
python -m pip install --quiet -r requirements.txt
echo "setup done: $(python -c 'import torch, diffusers, gradio; print("torch", torch.__version__, "| diffusers", diffusers.__version__, "| gradio", gradio.__version__)')"
