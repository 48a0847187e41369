"""The tiny model's training steps (scripts/train_tiny_*.py): a grown network starts out computing what the old one
did, so training continues from what the old one had learned instead of from noise; the fourth part's loss weighs
the object's latent cells as it says."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from tiny_training import flow_matching_step  # noqa: E402
from train_tiny_refine import deepen  # noqa: E402
from train_tiny_sharpen import object_cells  # noqa: E402
from train_tiny_widen import widen_transformer, widen_vae  # noqa: E402


@pytest.fixture(scope="module")
def small():
    from lightcache.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0)
    g = torch.Generator().manual_seed(1)  # a local generator: the process's random state is left alone
    for module in (pipe.vae, pipe.transformer):  # random non-zero weights everywhere, so a wrong copy shows
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return pipe


def test_widened_vae_decodes_what_the_old_one_decoded(small):
    old = small.vae.eval()
    z0 = old.config.z_dim
    new = widen_vae(old, z0 + 4).eval()
    assert new.config.z_dim == z0 + 4 and len(new.config.latents_mean) == z0 + 4
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 5, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        a, b = old.encode(x).latent_dist, new.encode(x).latent_dist
        assert torch.allclose(a.mean, b.mean[:, :z0], atol=1e-5)
        assert torch.allclose(a.logvar, b.logvar[:, :z0], atol=1e-5)
        # Whatever the new channels hold, the decoder does not read them yet.
        z = torch.cat([a.mean, 3 * torch.randn(b.mean[:, z0:].shape, generator=g)], 1)
        assert torch.allclose(old.decode(a.mean).sample, new.decode(z).sample, atol=1e-5)


def test_widening_a_vae_refuses_fewer_channels(small):
    with pytest.raises(ValueError, match="narrow"):
        widen_vae(small.vae, small.vae.config.z_dim - 1)


def test_widened_transformer_predicts_the_old_channels_unchanged_and_zero_for_the_new(small):
    old = small.transformer.eval()
    c0 = old.config.in_channels
    new = widen_transformer(old, c0 + 4).eval()
    g = torch.Generator().manual_seed(3)
    h = torch.randn(1, c0, 2, 8, 8, generator=g)
    ctx = torch.randn(1, 6, old.config.text_dim, generator=g)
    extra = torch.randn(1, 4, 2, 8, 8, generator=g)
    with torch.no_grad():
        a = old(h, torch.tensor([500.0]), ctx, return_dict=False)[0]
        b = new(torch.cat([h, extra], 1), torch.tensor([500.0]), ctx, return_dict=False)[0]
    assert b.shape[1] == c0 + 4
    assert torch.allclose(a, b[:, :c0], atol=1e-5)
    assert torch.count_nonzero(b[:, c0:]) == 0


def test_deepened_transformer_computes_what_the_shallow_one_did(small):
    old = small.transformer.eval()
    big = deepen(old, 2 * len(old.blocks)).eval()
    g = torch.Generator().manual_seed(4)
    h = torch.randn(1, old.config.in_channels, 2, 8, 8, generator=g)
    ctx = torch.randn(1, 6, old.config.text_dim, generator=g)
    with torch.no_grad():
        a = old(h, torch.tensor([300.0]), ctx, return_dict=False)[0]
        b = big(h, torch.tensor([300.0]), ctx, return_dict=False)[0]
    assert len(big.blocks) == 2 * len(old.blocks)
    assert torch.allclose(a, b, atol=1e-5)


def test_object_cells_find_a_moving_object_and_its_edge_not_the_background():
    z = torch.full((1, 4, 3, 12, 12), -0.5)
    for f in range(3):  # a 3 x 3 object two cells further right in each frame
        z[0, :, f, 4:7, 1 + 2 * f : 4 + 2 * f] = 1.5
    inner = object_cells(z, dilate=0)
    assert inner.shape == (1, 1, 3, 12, 12)
    assert [int(inner[0, 0, f].sum()) for f in range(3)] == [9, 9, 9]
    assert bool(inner[0, 0, 2, 5, 6]) and not bool(inner[0, 0, 0, 5, 6])
    grown = object_cells(z, dilate=1)
    assert [int(grown[0, 0, f].sum()) for f in range(3)] == [25, 25, 25]
    assert bool(grown[0, 0, 0, 3, 0]) and not bool(grown[0, 0, 0, 9, 9])


def _one_step(small, weights):
    """One flow-matching step from the same weights and draws; returns the loss and the updated model."""
    import copy

    import numpy as np

    from lightcache.tiny import shapes

    dit = copy.deepcopy(small.transformer).train()
    ema = copy.deepcopy(dit).eval()
    opt = torch.optim.SGD(dit.parameters(), lr=0.0)  # the loss is what is compared; nothing moves
    c = dit.config.in_channels
    latents = torch.randn(3, c, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    clips = [(spec, 0, 1.0) for spec in shapes.sample_specs(3, seed=0)]
    g = torch.Generator().manual_seed(3)
    captions = sorted({shapes.caption(s, say_background=b) for s, _, _ in clips for b in (True, False)})
    embeds = {cap: torch.randn(6, dit.config.text_dim, generator=g) for cap in captions}
    embeds[""] = torch.zeros(6, dit.config.text_dim)
    return flow_matching_step(dit, ema, opt, latents, clips, embeds, np.random.default_rng(1), torch.Generator().manual_seed(2),
                              batch=2, flow_shift=3.0, ema_max=0.99, step=0, weights=weights)


def test_weighted_flow_matching_loss_is_the_weighted_mean_of_the_squared_error(small):
    plain = _one_step(small, None)
    # Uniform weights of any size are the plain loss.
    assert _one_step(small, torch.full((3, 1, 2, 8, 8), 7.0)) == pytest.approx(plain, rel=1e-5)
    # Weight on one half of the cells only: the loss is that half's mean error, not the whole mean.
    left = torch.zeros(3, 1, 2, 8, 8)
    left[..., :4] = 1.0
    right = 1.0 - left
    a, b = _one_step(small, left), _one_step(small, right)
    assert a != pytest.approx(plain, rel=1e-3) and b != pytest.approx(plain, rel=1e-3)
    assert (a + b) / 2 == pytest.approx(plain, rel=1e-5)
