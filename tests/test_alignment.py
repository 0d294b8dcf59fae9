import math

import pytest
import torch

from interp.analysis.alignment import (compare, kendall, rec2ftp, record, sim_am, sim_am_delta,
                                       sim_aou)


def _orthonormal(d: int, k: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
    return q.T  # k orthonormal rows


def test_random_update_construction_of_the_paper():
    """z, z + r, z + r' with |r|^2 = |r'|^2 = 3 |z|^2, all three orthogonal: SimAOU_norm = 0.25
    exactly, while the unnormalised SimAOU is 0."""
    z, r, r2 = _orthonormal(64, 3) * torch.tensor([[2.0], [2.0 * math.sqrt(3)],
                                                  [2.0 * math.sqrt(3)]], dtype=torch.float64)
    assert sim_aou(z + r, z + r2, z, normalize=True).item() == pytest.approx(0.25, abs=1e-6)
    assert sim_aou(z + r, z + r2, z).item() == pytest.approx(0.0, abs=1e-6)


def test_identical_and_opposite_updates():
    gen = torch.Generator().manual_seed(1)
    zs, delta = torch.randn(5, 3, 16, generator=gen), torch.randn(5, 3, 16, generator=gen)
    assert torch.allclose(sim_aou(zs + delta, zs + delta, zs), torch.ones(5, 3))
    assert torch.allclose(sim_aou(zs + delta, zs - delta, zs), -torch.ones(5, 3))
    assert torch.allclose(sim_am_delta(zs + delta, zs - 2 * delta, zs), -torch.ones(5, 3))
    assert torch.allclose(sim_am(zs, 3 * zs), torch.ones(5, 3))
    # a zero update has no direction: undefined, not 0
    assert torch.isnan(sim_am_delta(zs, zs + delta, zs)).all()


def test_sim_am_hand_value():
    assert sim_am(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])).item() == pytest.approx(
        1 / math.sqrt(2))


def test_kendall_hand_computed():
    assert kendall([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # pairs (1,2) c, (1,3) c, (2,3) d -> (2 - 1) / 3
    assert kendall([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)


def test_rec2ftp_hand_computed():
    zs = [0.5, 0.5, 0.5, 0.5, 0.5]
    ft = [0.6, 0.7, 0.4, 0.9, 0.5]    # FT improves examples 0, 1, 3
    icl = [0.8, 0.4, 0.9, 0.6, 0.9]   # ICL improves 0, 2, 3, 4
    assert rec2ftp(icl, ft, zs) == pytest.approx(2 / 3)
    assert math.isnan(rec2ftp(icl, zs, zs))


def test_recording_and_comparison_on_a_model():
    from interp.models import load_model
    from interp.prompts import demo_pool, sample_demos
    from interp.tasks import generate

    model = load_model("tiny-random-llama")
    queries = generate("boolean", 3, seed=0)
    demos = sample_demos(demo_pool("boolean", 16), 2)
    zs, icl = record(model, queries), record(model, queries, demos)
    assert zs.aou.shape == (3, model.n_layers, model.d_model)
    assert icl.am[0].shape == zs.am[0].shape  # the query's own tokens in both settings
    assert not torch.allclose(icl.aou, zs.aou)
    same = compare(zs, icl, icl)                # FT identical to ICL: perfect alignment
    for name in ("SimAOU", "SimAOU_norm", "SimAM", "SimAM_delta"):
        assert same[name] == pytest.approx(1.0, abs=1e-5), name
    assert len(same["per_layer"]["SimAOU"]) == model.n_layers
    assert -1.0 <= same["Kendall"] <= 1.0
