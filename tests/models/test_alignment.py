import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.alignment import (
    AlignmentConfig,
    CrossCodebookAlignment,
    alignment_ranks,
    info_nce,
)


def unit_rows(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=gen), dim=1)


def test_info_nce_is_lower_for_aligned_pairs_than_for_shuffled_ones():
    a = unit_rows(16, 8)
    b = F.normalize(a + 0.1 * unit_rows(16, 8, seed=1), dim=1)
    shuffled = b[torch.roll(torch.arange(16), 1)]  # same vectors, every row mismatched
    assert info_nce(a, b, 0.1) < info_nce(a, shuffled, 0.1)


def test_info_nce_is_symmetric_and_matches_the_formula():
    a, b = unit_rows(6, 4), unit_rows(6, 4, seed=2)
    assert torch.allclose(info_nce(a, b, 0.2), info_nce(b, a, 0.2))
    # two orthogonal pairs: each row scores 1/t on its positive and 0 on its negative
    e = torch.eye(2)
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert info_nce(e, e, 0.5).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="must both be"):
        info_nce(a, b[:, :3], 0.1)


def test_forward_shapes_and_gradients_reach_both_heads_and_inputs():
    torch.manual_seed(0)
    config = AlignmentConfig(sem_dim=12, cf_dim=6, proj_dim=4, hidden_dim=8)
    model = CrossCodebookAlignment(config)
    sem = torch.randn(10, 12, requires_grad=True)
    cf = torch.randn(10, 6, requires_grad=True)
    loss, z_sem, z_cf = model(sem, cf)
    assert loss.ndim == 0 and z_sem.shape == (10, 4) and z_cf.shape == (10, 4)
    assert torch.allclose(z_sem.norm(dim=1), torch.ones(10), atol=1e-5)
    loss.backward()
    for head in (model.sem_head, model.cf_head):
        for param in head.parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0
    assert sem.grad.abs().sum() > 0 and cf.grad.abs().sum() > 0  # reaches the RQ-VAEs
    projected = model.project_sem(sem)
    assert not projected.requires_grad and torch.allclose(projected, z_sem.detach())
    assert torch.allclose(model.project_cf(cf), z_cf.detach())


def test_training_the_heads_aligns_paired_embeddings():
    torch.manual_seed(0)
    model = CrossCodebookAlignment(AlignmentConfig(sem_dim=8, cf_dim=5, proj_dim=8))
    sem = torch.randn(64, 8)
    cf = sem[:, :5] @ torch.randn(5, 5) + 0.05 * torch.randn(64, 5)  # a paired view
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    first = model(sem, cf)[0].item()
    for _ in range(30):
        opt.zero_grad()
        loss = model(sem, cf)[0]
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    ranks = alignment_ranks(model.project_sem(sem), model.project_cf(cf))
    assert np.median(ranks) <= 1


def test_config_validates_and_round_trips():
    config = AlignmentConfig(sem_dim=384, cf_dim=64)
    assert config.weight == 0.1 and config.temperature == 0.1
    assert AlignmentConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="temperature"):
        AlignmentConfig(sem_dim=4, cf_dim=4, temperature=0.0)
    with pytest.raises(ValueError, match="sem_dim"):
        AlignmentConfig.from_dict({"cf_dim": 4})


def test_alignment_ranks_identical_inputs_are_all_zero():
    z = unit_rows(50, 8).numpy()
    assert (alignment_ranks(z, z) == 0).all()
    assert (alignment_ranks(torch.from_numpy(z), torch.from_numpy(z), chunk=7) == 0).all()


def test_alignment_ranks_hand_case():
    cf = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    sem = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    # item 1: cf0 scores higher than its own cf1; item 2: cf1 higher, cf0 ties (0 = 0) and
    # comes first, so it ranks ahead too
    assert alignment_ranks(sem, cf).tolist() == [0, 1, 2]
    # identical CF projections (colliding CF codes) are exact ties, broken by item index
    cf_dup = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert alignment_ranks(cf_dup, cf_dup).tolist() == [0, 1, 0]
    # scale does not matter: cosine
    assert alignment_ranks(3 * sem, 0.5 * cf).tolist() == [0, 1, 2]


def test_alignment_ranks_match_brute_force_and_do_not_depend_on_the_chunk_size():
    sem, cf = unit_rows(37, 6).numpy(), unit_rows(37, 6, seed=3).numpy()
    whole = alignment_ranks(sem, cf, chunk=37)
    assert whole.shape == (37,) and whole.dtype == np.int64
    scores = sem.astype(np.float64) @ cf.T.astype(np.float64)  # (N, N), no ties here
    brute = (scores > np.diag(scores)[:, None]).sum(axis=1)
    assert (whole == brute).all() and whole.max() > 0
    cf[5] = cf[20]  # a collision: exact ties between items 5 and 20
    whole = alignment_ranks(sem, cf, chunk=37)
    for chunk in (1, 4, 10, 100):
        assert (alignment_ranks(sem, cf, chunk=chunk) == whole).all()
    assert alignment_ranks(np.zeros((0, 6)), np.zeros((0, 6))).shape == (0,)
    with pytest.raises(ValueError, match="chunk"):
        alignment_ranks(sem, cf, chunk=0)
