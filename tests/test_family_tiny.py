"""The tiny random-weight pipeline of every family: built offline, deterministic for a seed, saved and loaded back
through the real ``DiffusionPipeline.from_pretrained`` path, and a plain ``pipe(...)`` run on each.

Each case is built and run once for the module (see ``built``); that run, with a fixed seed, is repeated on the
same object (bit-identical) and on the loaded copy (within FLOAT_TOL: another object with the same weights).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from conftest import FLOAT_TOL

#: Every family with a tiny builder, by folder name under ``lightcache/families``.
FAMILIES = (
    "hunyuan_video", "hunyuan_video15", "svd", "animatediff",
    "cogvideox", "ltx", "ltx2", "mochi", "skyreels_v2", "kandinsky5",
)


def _tiny(family: str):
    return importlib.import_module(f"lightcache.families.{family}.tiny")


#: (family, variant keyword arguments) for every variant of every family.
CASES = [(family, variant) for family in FAMILIES for variant in _tiny(family).TINY_VARIANTS]
IDS = ["-".join((family, *map(str, variant.values()))) for family, variant in CASES]


def _run(pipe, family: str, variant: dict) -> dict[str, np.ndarray]:
    """The frames of a plain run with a fixed seed, and its audio where the family makes some (LTX-2)."""
    tiny = _tiny(family)
    out = pipe(**tiny.tiny_inputs(**variant), generator=torch.Generator().manual_seed(5), **tiny.tiny_call(**variant))
    audio = getattr(out, "audio", None)
    return {"frames": np.asarray(out.frames)} | ({} if audio is None else {"audio": np.asarray(audio)})


class _Built:
    """Each case's pipeline and its first plain video, made on first use and kept for the module."""

    def __init__(self):
        self._pipes: dict[tuple, object] = {}
        self._videos: dict[tuple, dict[str, np.ndarray]] = {}

    def pipe(self, family: str, variant: dict):
        key = (family, *sorted(variant.items()))
        if key not in self._pipes:
            self._pipes[key] = _tiny(family).build_tiny_pipeline(seed=0, **variant)
        return self._pipes[key]

    def video(self, family: str, variant: dict) -> dict[str, np.ndarray]:
        key = (family, *sorted(variant.items()))
        if key not in self._videos:
            self._videos[key] = _run(self.pipe(family, variant), family, variant)
        return self._videos[key]


@pytest.fixture(scope="module")
def built():
    return _Built()


@pytest.mark.parametrize(("family", "variant"), CASES, ids=IDS)
def test_a_plain_run_repeats_bit_for_bit_and_has_the_asked_shape(built, family, variant):
    call = _tiny(family).tiny_call(**variant)
    first, second = built.video(family, variant), _run(built.pipe(family, variant), family, variant)
    assert first.keys() == second.keys() == ({"frames", "audio"} if family == "ltx2" else {"frames"})
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
        # Random weights draw noise, never a flat or broken video or sound.
        assert np.isfinite(first[name]).all() and first[name].std() > 0, name
    assert first["frames"].shape == (1, call["num_frames"], 32, 32, 3)


@pytest.mark.parametrize(("family", "variant"), CASES, ids=IDS)
def test_the_pipeline_saved_and_loaded_with_from_pretrained_makes_the_same_video(built, family, variant, tmp_path):
    from diffusers import DiffusionPipeline

    pipe = built.pipe(family, variant)
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(pipe)
    again, before = _run(loaded, family, variant), built.video(family, variant)
    assert again.keys() == before.keys()
    for name in before:
        # Another object with the same weights: within FLOAT_TOL, not bit for bit.
        np.testing.assert_allclose(again[name], before[name], rtol=0, atol=FLOAT_TOL, err_msg=name)


@pytest.mark.parametrize(("family", "variant"), CASES, ids=IDS)
def test_the_same_seed_gives_the_same_weights_and_another_seed_others(built, family, variant):
    tiny = _tiny(family)
    pipe, again = built.pipe(family, variant), tiny.build_tiny_pipeline(0, **variant)
    other = tiny.build_tiny_pipeline(1, **variant)
    for name, module in pipe.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        assert not module.training, f"{name} is left in training mode"
        weights = module.state_dict()
        # Separately built: the same weights within float tolerance, never asserted bit for bit.
        torch.testing.assert_close(again.components[name].state_dict(), weights)
        assert any(not torch.equal(value, weights[key]) for key, value in other.components[name].state_dict().items()
                   if value.is_floating_point()), f"{name} ignores the seed"
