"""Presets load and validate; the pipeline loads through the real from_pretrained path from local directories."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from lightcache.errors import LightcacheError
from lightcache.presets import (
    list_presets,
    load_pipeline,
    load_preset,
    load_shipped_preset,
    model_identity,
    resolve_device,
)
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
    with pytest.raises(LightcacheError, match=re.escape(f"Valid presets: {', '.join(list_presets())}.")):
        load_preset("sd-turbo")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("model"), "missing field 'model'"),
        (lambda d: d["defaults"].pop("steps"), "missing field 'defaults.steps'"),
        (lambda d: d.update(requires_gpu="no"), "field 'requires_gpu' must be true or false."),
        (lambda d: d.update(name={"db_password": "x"}), "field 'name' must be text."),
        (lambda d: d.update(dtype="float8"), "'dtype' must be one of"),
        (lambda d: d["limits"].update(bogus=1), "'limits' needs max_frames, max_height, max_width and may also"),
        (lambda d: d["limits"].update(max_frames="secret"), "field 'limits.max_frames' must be a whole number"),
        (lambda d: d.update(family="secret"), "field 'family' names a model family not supported yet"),
        (lambda d: d.update(lowercase_prompts="yes"), "'lowercase_prompts' must be true or false"),
        (lambda d: d["defaults"].update(frames=10), "its defaults are invalid: frames must be of the form"),
        # The family's own fields come from its adapter's declaration: Wan's flow shift is required and checked.
        (lambda d: d["defaults"].pop("flow_shift"), "missing field 'defaults.flow_shift'"),
        (lambda d: d["defaults"].update(flow_shift=500), "its defaults are invalid: flow_shift must be between"),
    ],
)
def test_malformed_presets_name_the_field(tmp_path, mutate, message):
    data = json.loads(load_preset("tiny").path.read_text())
    mutate(data)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    with pytest.raises(LightcacheError, match=message) as info:
        load_preset(str(path))
    # The message names the field, never what the file holds (a preset file can be any JSON file).
    assert "secret" not in str(info.value) and "db_password" not in str(info.value)
    assert "got 10" not in str(info.value) and str(tmp_path) not in str(info.value)


@pytest.mark.parametrize("text", ["[1, 2]", "{not json", b"\xff\xfe\x00"])
def test_unreadable_preset_files_are_one_sentence_without_their_content(tmp_path, text):
    path = tmp_path / "odd.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(LightcacheError, match="^Preset (file )?odd.json") as info:
        load_preset(str(path))
    assert str(tmp_path) not in str(info.value)


@pytest.mark.parametrize("name", ["../presets/tiny", "presets/tiny.json", "/etc/passwd", "tiny.json", "", None,
                                  str(load_preset("tiny").path), "x" * 300])
def test_shipped_presets_are_chosen_by_name_only(name):
    with pytest.raises(LightcacheError) as info:
        load_shipped_preset(name)
    message = str(info.value)
    assert message.startswith("Unknown preset") and f"Valid presets: {', '.join(list_presets())}." in message
    assert "/" not in message.split("Valid presets")[0] and "x" * 65 not in message
    assert load_shipped_preset(" tiny ") == load_preset("tiny")


def test_a_json_path_still_works_for_the_library_and_the_cli(tmp_path):
    data = json.loads(load_preset("tiny").path.read_text())
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(dict(data, name="mine")))
    assert load_preset(str(path)).name == "mine"


def test_model_identity_is_what_gets_loaded_not_the_preset_name(tmp_path, tiny_model_dir):
    tiny = load_preset("tiny")
    same_weights_other_name = dataclasses.replace(tiny, name="other")
    other_weights_same_name = dataclasses.replace(tiny, model=str(tiny_model_dir))
    assert model_identity(tiny, "cpu") == model_identity(same_weights_other_name, "cpu")
    assert model_identity(tiny, "cpu") != model_identity(other_weights_same_name, "cpu")
    assert model_identity(tiny, "cpu") != model_identity(tiny, "cuda")
    assert model_identity(tiny, "cpu") != model_identity(dataclasses.replace(tiny, dtype="bfloat16"), "cpu")
    assert model_identity(tiny, "cpu", model=str(tiny_model_dir)) == model_identity(other_weights_same_name, "cpu")
    hub = model_identity(load_preset("wan2.1-t2v-1.3b"), "cuda")
    assert hub[1:4] == ("hub", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", None)
    hash(hub)


def test_unset_warmup_follows_the_steps_and_an_explicit_one_is_checked():
    tiny = load_preset("tiny")
    assert RunSettings.from_preset(tiny, steps=3).warmup == 2
    assert RunSettings.from_preset(tiny, steps=2, easycache=False).warmup == 1
    assert RunSettings.from_preset(tiny).warmup == tiny.defaults["warmup"]
    with pytest.raises(LightcacheError, match="warmup must be between 0 and 2, got 4"):
        RunSettings.from_preset(tiny, steps=3, warmup=4)
    # Without EasyCache the warm-up does not apply, so it is not checked at all.
    assert RunSettings.from_preset(tiny, steps=3, warmup=50, easycache=False).steps == 3


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
    from conftest import FLOAT_TOL, pipe_video, tiny_settings

    from lightcache.tiny import build_tiny_pipeline

    pipe = load_pipeline(load_preset("tiny"), device="cpu", model=str(tiny_model_dir))
    assert not pipe.transformer.training and not pipe.text_encoder.training and not pipe.vae.training
    settings = tiny_settings()
    loaded = pipe_video(pipe, settings)
    # The same object twice: bit for bit. A saved-and-reloaded module against a freshly built one: the same weights,
    # but kernels may differ in the last bits between machines (~1e-7 seen on an AMD EPYC), so within a tolerance.
    assert np.array_equal(loaded, pipe_video(pipe, settings))
    np.testing.assert_allclose(loaded, pipe_video(build_tiny_pipeline(seed=0), settings), rtol=0, atol=FLOAT_TOL)


def test_hub_id_while_offline_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LightcacheError, match="HF_HUB_OFFLINE"):
        load_pipeline(load_preset("tiny"), device="cpu", model="Wan-AI/Wan2.1-T2V-1.3B-Diffusers")


def test_unreachable_hub_without_hf_hub_offline_goes_to_the_cache_at_once(monkeypatch):
    """No network and no HF_HUB_OFFLINE: one quick probe, then the cache only (no half minute of HEAD retries)."""
    import socket

    from lightcache import presets

    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    probes, loads = [], []

    def no_network(address, timeout=None, *args, **kwargs):
        probes.append((address, timeout))
        raise OSError("Name or service not known")

    def from_pretrained(cls, source, dtypes, offline):
        loads.append(offline)
        raise OSError("not in the local cache")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(presets, "_from_pretrained", from_pretrained)
    with pytest.raises(LightcacheError, match="the Hub could not be reached") as info:
        load_pipeline(load_preset("tiny"), device="cpu", model="Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    assert "HF_HUB_OFFLINE" in str(info.value)
    assert len(probes) == 1 and probes[0][1] <= 5 and loads == [True], "the cache only, without network retries"


def test_a_file_given_as_model_is_called_a_file():
    for name in ("README.md", "docs/memory.md"):
        with pytest.raises(LightcacheError, match=f"'{name}' is a file, not a model directory"):
            load_pipeline(load_preset("tiny"), device="cpu", model=name)


@pytest.mark.parametrize("device, message", [
    ("banana", "Unknown device 'banana'; use cpu or cuda"),
    ("mps", "Unknown device 'mps'"),
    ("cuda", "Device 'cuda' is not available"),
    ("cuda:7", "is not available" if not torch.cuda.is_available() else "does not exist"),
])
def test_devices_this_machine_lacks_are_refused_by_name(device, message):
    if device == "cuda" and torch.cuda.is_available():
        assert resolve_device(device) == "cuda"
        return
    with pytest.raises(LightcacheError, match=message):
        resolve_device(device)
    assert resolve_device("cpu") == "cpu" and resolve_device(None) in ("cpu", "cuda")


def test_a_model_of_another_family_is_refused_with_advice_that_holds(tmp_path, monkeypatch):
    from lightcache import families
    from lightcache.presets import check_model_matches_preset

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(LightcacheError) as info:
        check_model_matches_preset(tmp_path, load_preset("tiny"))
    runs = ", ".join(c for adapter in families.ADAPTERS.values() for c in adapter.pipeline_classes)
    assert "WanPipeline, WanImageToVideoPipeline" in runs
    assert str(info.value) == (f"'{tmp_path}' holds a FluxPipeline, which lightcache does not run (it runs "
                               f"{runs}); preset 'tiny' needs a WanPipeline.")
    # A family lightcache runs but no shipped preset does: no advice to choose a preset of it.
    other = type("OtherFamily", (), {"name": "other", "pipeline_classes": ("FluxPipeline",)})
    monkeypatch.setitem(families.ADAPTERS, "other", other)
    with pytest.raises(LightcacheError) as info:
        check_model_matches_preset(tmp_path, load_preset("tiny"))
    assert str(info.value).endswith("(the other family), but preset 'tiny' is a wan model; no shipped preset runs "
                                    "that family.")


def test_gpu_preset_without_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(LightcacheError, match="needs a CUDA GPU"):
        load_pipeline(load_preset("wan2.1-t2v-14b"))


def test_family_fields_are_the_adapters_declaration_kept_beside_the_core_request():
    from lightcache.families import adapter_named

    preset = load_preset("tiny")
    assert preset.request_fields == adapter_named("wan").request_fields and preset.takes_prompt
    assert preset.pipeline == "WanPipeline"
    s = RunSettings.from_preset(preset, flow_shift=5.0)
    assert s.flow_shift == 5.0 and s.extras == {"flow_shift": 5.0} and s.to_dict()["flow_shift"] == 5.0
    assert "flow_shift" not in {f.name for f in dataclasses.fields(RunSettings)}
    assert hash(s) == hash(dataclasses.replace(s))  # settings stay hashable (caches key on them)
    with pytest.raises(LightcacheError, match="Unknown setting 'motion_bucket'"):
        RunSettings.from_preset(preset, motion_bucket=127)
    with pytest.raises(AttributeError):
        RunSettings.from_preset(preset).motion_bucket_id
