"""The weights a record measured: the model digest, and the published records checked against the shipped model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lightcache.errors import LightcacheError
from lightcache.fingerprint import model_digest
from lightcache.presets import PROJECT_ROOT, load_preset

SHIPPED = load_preset("tiny").local_model_dir
SHIPPED_NAME = str(Path(SHIPPED).resolve().relative_to(PROJECT_ROOT))


def _published_records_of_the_shipped_model() -> list[Path]:
    """Every committed JSON record under docs/ whose ``model`` is the shipped tiny model."""
    found = []
    for path in sorted((PROJECT_ROOT / "docs").rglob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("model") == SHIPPED_NAME:
            found.append(path)
    return found


def test_the_published_benchmark_is_among_the_records_checked():
    assert PROJECT_ROOT / "docs" / "benchmarks" / "results.json" in _published_records_of_the_shipped_model()


@pytest.mark.parametrize("path", _published_records_of_the_shipped_model(), ids=lambda p: p.name)
def test_every_published_record_of_the_tiny_model_measured_the_shipped_weights(path):
    record = json.loads(path.read_text())
    assert record.get("model_sha256") == model_digest(SHIPPED), (
        f"{path.relative_to(PROJECT_ROOT)} was measured on other weights than the shipped model's; rerun the command "
        "it names")


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory):
    copy = tmp_path_factory.mktemp("model") / "tiny-wan"
    shutil.copytree(SHIPPED, copy)
    return copy


def test_the_digest_changes_with_any_weight_and_not_with_the_notes_beside_them(model_copy):
    before = model_digest(model_copy)
    assert before == model_digest(SHIPPED)  # the same files give the same digest wherever they lie
    (model_copy / "eval.json").write_text("{}")  # a record about the weights is not the weights
    assert model_digest(model_copy) == before
    weights = model_copy / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert model_digest(model_copy) != before
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    (model_copy / "scheduler" / "scheduler_config.json").write_text("{}")
    assert model_digest(model_copy) != before


def test_a_folder_that_is_no_model_is_refused(tmp_path):
    with pytest.raises(LightcacheError, match="model_index.json"):
        model_digest(tmp_path)
