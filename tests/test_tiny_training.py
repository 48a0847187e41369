"""The tiny model's growing steps (scripts/train_tiny_*.py): a grown network starts out computing what the old one
did, so training continues from what the old one had learned instead of from noise."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from train_tiny_refine import deepen  # noqa: E402
from train_tiny_widen import widen_transformer, widen_vae  # noqa: E402


@pytest.fixture(scope="module")
def small():
    from lightcache.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0)
    torch.manual_seed(1)
    for module in (pipe.vae, pipe.transformer):  # random non-zero weights everywhere, so a wrong copy shows
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return pipe


def test_widened_vae_decodes_what_the_old_one_decoded(small):
    old = small.vae.eval()
    z0 = old.config.z_dim
    new = widen_vae(old, z0 + 4).eval()
    assert new.config.z_dim == z0 + 4 and len(new.config.latents_mean) == z0 + 4
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        a, b = old.encode(x).latent_dist, new.encode(x).latent_dist
        assert torch.allclose(a.mean, b.mean[:, :z0], atol=1e-5)
        assert torch.allclose(a.logvar, b.logvar[:, :z0], atol=1e-5)
        # Whatever the new channels hold, the decoder does not read them yet.
        z = torch.cat([a.mean, 3 * torch.randn_like(b.mean[:, z0:])], 1)
        assert torch.allclose(old.decode(a.mean).sample, new.decode(z).sample, atol=1e-5)


def test_widening_a_vae_refuses_fewer_channels(small):
    with pytest.raises(ValueError, match="narrow"):
        widen_vae(small.vae, small.vae.config.z_dim - 1)


def test_widened_transformer_predicts_the_old_channels_unchanged_and_zero_for_the_new(small):
    old = small.transformer.eval()
    c0 = old.config.in_channels
    new = widen_transformer(old, c0 + 4).eval()
    h = torch.randn(1, c0, 2, 8, 8)
    ctx = torch.randn(1, 6, old.config.text_dim)
    with torch.no_grad():
        a = old(h, torch.tensor([500.0]), ctx, return_dict=False)[0]
        b = new(torch.cat([h, torch.randn(1, 4, 2, 8, 8)], 1), torch.tensor([500.0]), ctx, return_dict=False)[0]
    assert b.shape[1] == c0 + 4
    assert torch.allclose(a, b[:, :c0], atol=1e-5)
    assert torch.count_nonzero(b[:, c0:]) == 0


def test_deepened_transformer_computes_what_the_shallow_one_did(small):
    old = small.transformer.eval()
    big = deepen(old, 2 * len(old.blocks)).eval()
    h = torch.randn(1, old.config.in_channels, 2, 8, 8)
    ctx = torch.randn(1, 6, old.config.text_dim)
    with torch.no_grad():
        a = old(h, torch.tensor([300.0]), ctx, return_dict=False)[0]
        b = big(h, torch.tensor([300.0]), ctx, return_dict=False)[0]
    assert len(big.blocks) == 2 * len(old.blocks)
    assert torch.allclose(a, b, atol=1e-5)
