"""Presets load and validate; the pipeline loads through the real from_pretrained path from local directories."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lightcache.errors import LightcacheError
from lightcache.presets import list_presets, load_pipeline, load_preset
from lightcache.settings import RunSettings


def test_every_shipped_preset_validates():
    names = list_presets()
    assert names[0] == "tiny" and {"wan2.1-t2v-1.3b", "wan2.1-t2v-14b"} <= set(names)
    for name in names:
        preset = load_preset(name)
        assert preset.name == name
        RunSettings.from_preset(preset)  # the defaults are a valid request


def test_wan_presets_carry_the_recommended_settings():
    small, big = load_preset("wan2.1-t2v-1.3b"), load_preset("wan2.1-t2v-14b")
    assert small.model == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers" and big.model == "Wan-AI/Wan2.1-T2V-14B-Diffusers"
    for preset, size, shift in ((small, (480, 832), 3.0), (big, (720, 1280), 5.0)):
        d = preset.defaults
        assert (d["height"], d["width"]) == size and d["flow_shift"] == shift
        assert (d["frames"], d["steps"], d["guidance_scale"], d["threshold"], d["warmup"]) == (81, 50, 5.0, 0.05, 10)
        assert preset.requires_gpu


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(LightcacheError, match="Valid presets: tiny, wan2.1-i2v-14b-480p"):
        load_preset("sd-turbo")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("model"), "missing field 'model'"),
        (lambda d: d["defaults"].pop("steps"), "missing field 'defaults.steps'"),
        (lambda d: d.update(requires_gpu="no"), "'requires_gpu' has the wrong type"),
        (lambda d: d.update(dtype="float8"), "'dtype' must be one of"),
        (lambda d: d["limits"].update(bogus=1), "bad 'limits'"),
        (lambda d: d.update(lowercase_prompts="yes"), "'lowercase_prompts' must be true or false"),
        (lambda d: d["defaults"].update(frames=10), "its defaults are invalid: frames must be of the form"),
    ],
)
def test_malformed_presets_name_the_field(tmp_path, mutate, message):
    data = json.loads(load_preset("tiny").path.read_text())
    mutate(data)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    with pytest.raises(LightcacheError, match=message):
        load_preset(str(path))


def test_tiny_prompts_are_lower_cased_and_real_models_keep_their_case():
    tiny = RunSettings.from_preset(load_preset("tiny"), prompt="A Red Circle moving RIGHT", negative_prompt="Blue")
    assert (tiny.prompt, tiny.negative_prompt) == ("a red circle moving right", "blue")
    wan = RunSettings.from_preset(load_preset("wan2.1-t2v-1.3b"), prompt="A Red Circle")
    assert wan.prompt == "A Red Circle"


def test_settings_limits_come_from_the_preset():
    preset = load_preset("tiny")
    lim = preset.limits
    with pytest.raises(LightcacheError, match=f"steps must be between {lim.min_steps} and {lim.max_steps}"):
        RunSettings.from_preset(preset, steps=lim.max_steps + 1)
    with pytest.raises(LightcacheError, match="height must be between"):
        RunSettings.from_preset(preset, height=lim.max_height + lim.size_multiple)
    with pytest.raises(LightcacheError, match="Unknown setting 'colour'"):
        RunSettings.from_preset(preset, colour="red")


def test_load_pipeline_from_a_local_directory_is_eval_and_deterministic(tiny_model_dir):
    from conftest import pipe_video, tiny_settings

    from lightcache.tiny import build_tiny_pipeline

    pipe = load_pipeline(load_preset("tiny"), device="cpu", model=str(tiny_model_dir))
    assert not pipe.transformer.training and not pipe.text_encoder.training and not pipe.vae.training
    settings = tiny_settings()
    assert np.array_equal(pipe_video(pipe, settings), pipe_video(build_tiny_pipeline(seed=0), settings))


def test_hub_id_while_offline_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LightcacheError, match="HF_HUB_OFFLINE"):
        load_pipeline(load_preset("tiny"), device="cpu", model="Wan-AI/Wan2.1-T2V-1.3B-Diffusers")


def test_gpu_preset_without_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(LightcacheError, match="needs a CUDA GPU"):
        load_pipeline(load_preset("wan2.1-t2v-14b"))
