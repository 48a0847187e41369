"""Which weights a measurement was made on: one digest of a diffusers model directory's files.

A record that publishes figures names the weights it measured with :func:`model_digest`, so a figure measured on
other weights (an earlier training of the tiny model, say) can be told from one measured on the shipped model.
Only the pipeline's own files count: ``model_index.json`` and every file in the component folders (weights,
configs, tokenizer). Logs, evaluations and the model card at the top level describe the weights without being
them, and rewriting them does not change the digest.

Example:
    >>> from lightcache.fingerprint import model_digest
    >>> from lightcache.presets import load_preset
    >>> digest = model_digest(load_preset("tiny").local_model_dir)
    >>> len(digest), digest == model_digest(load_preset("tiny").local_model_dir)
    (64, True)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import LightcacheError

#: The one top-level file of a diffusers model directory that belongs to the pipeline itself.
MODEL_INDEX = "model_index.json"


def model_files(directory: str | Path) -> list[Path]:
    """The files that make up the pipeline in ``directory``, as paths relative to it, sorted."""
    root = Path(directory)
    if not (root / MODEL_INDEX).is_file():
        raise LightcacheError(f"{root.name} is not a diffusers model directory (it has no {MODEL_INDEX}).")
    files = [Path(MODEL_INDEX)]
    for component in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files += sorted(p.relative_to(root) for p in component.rglob("*") if p.is_file())
    return files


def model_digest(directory: str | Path) -> str:
    """SHA-256 over the pipeline files of ``directory``: each file's relative path, size and bytes, in order."""
    root = Path(directory)
    digest = hashlib.sha256()
    for relative in model_files(root):
        path = root / relative
        digest.update(relative.as_posix().encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
