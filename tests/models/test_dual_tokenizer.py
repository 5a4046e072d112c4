import pytest
import torch

from models.alignment import AlignmentConfig
from models.dual_tokenizer import DualTokenizer, DualTokenizerConfig
from models.rqvae import RQVAEConfig


def config(weight=0.1):
    return DualTokenizerConfig(
        sem=RQVAEConfig(input_dim=12, latent_dim=4, hidden_dims=(16,), n_levels=3, codebook_size=8),
        cf=RQVAEConfig(input_dim=6, latent_dim=4, hidden_dims=(16,), n_levels=3, codebook_size=8),
        alignment=AlignmentConfig(sem_dim=12, cf_dim=6, proj_dim=4, hidden_dim=8, weight=weight),
    )


def test_config_round_trip_and_mismatch_errors():
    c = config()
    assert DualTokenizerConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="share n_levels"):
        DualTokenizerConfig(
            sem=c.sem,
            cf=RQVAEConfig(input_dim=6, n_levels=2, codebook_size=8),
            alignment=c.alignment,
        )


def test_standardisation_and_joint_loss_reach_every_part():
    torch.manual_seed(0)
    model = DualTokenizer(config())
    sem, cf = torch.randn(64, 12) * 5 + 3, torch.randn(64, 6) * 0.01
    model.fit_standardisation(sem, cf)
    z = model.standardise_sem(sem)
    assert z.mean().abs() < 1e-4 and (z.pow(2).mean() - 1).abs() < 1e-4
    model.init_codebooks(sem, cf)
    loss = model(sem, cf)
    loss.total.backward()
    for part in (model.sem.encoder, model.cf.encoder, model.align.sem_head, model.align.cf_head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert model.encode_sem(sem).shape == (64, 3) and model.encode_cf(cf).shape == (64, 3)


def test_no_align_skips_the_heads():
    model = DualTokenizer(config(weight=0.0))
    sem, cf = torch.randn(32, 12), torch.randn(32, 6)
    model.fit_standardisation(sem, cf)
    loss = model(sem, cf)
    loss.total.backward()
    assert float(loss.align) == 0.0
    assert all(p.grad is None for p in model.align.parameters())
