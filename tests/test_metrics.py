"""PSNR and SSIM: known values, identity, and that they fall as the videos drift apart."""

import math

import numpy as np
import pytest

from lightcache.metrics import json_psnr, psnr, ssim


def test_psnr_known_value_and_identity():
    a = np.zeros((3, 8, 8, 3), np.float32)
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    assert psnr(a, a + 0.01) == pytest.approx(40.0)
    assert psnr(a, a) == math.inf and json_psnr(psnr(a, a)) == "inf"


def test_uint8_inputs_are_scaled():
    a = np.zeros((2, 8, 8, 3), np.uint8)
    assert psnr(a, a + 26) == pytest.approx(-10 * math.log10((26 / 255) ** 2))


def test_ssim_is_one_for_identical_and_falls_with_noise():
    rng = np.random.default_rng(0)
    a = rng.random((4, 32, 32, 3)).astype(np.float32)
    small = np.clip(a + rng.normal(0, 0.02, a.shape), 0, 1)
    large = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    assert ssim(a, a) == pytest.approx(1.0)
    assert 1.0 > ssim(a, small) > ssim(a, large) > 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(np.zeros((1, 4, 4, 3)), np.zeros((2, 4, 4, 3)))
