import pytest
import torch

from models.rqvae import RQVAE, ResidualQuantizer, RQVAEConfig, suggest_codebook_size


def _small_config(**overrides) -> RQVAEConfig:
    kwargs = dict(input_dim=12, latent_dim=4, hidden_dims=(16,), n_levels=3, codebook_size=8)
    kwargs.update(overrides)
    return RQVAEConfig(**kwargs)


def _clusters(n_clusters: int, per_cluster: int, dim: int, spread: float, seed: int = 0):
    """Well-separated Gaussian blobs: (n_clusters * per_cluster, dim)."""
    g = torch.Generator().manual_seed(seed)
    centers = 4 * torch.randn(n_clusters, dim, generator=g)  # (C, dim)
    noise = spread * torch.randn(n_clusters, per_cluster, dim, generator=g)  # (C, P, dim)
    return (centers[:, None] + noise).reshape(-1, dim)


def _train(model: RQVAE, x: torch.Tensor, steps: int, restart_every: int = 0) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(1, steps + 1):
        out = model(x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if restart_every and step % restart_every == 0 and step < steps:
            with torch.no_grad():
                model.quantizer.restart_dead_codes(model.encoder(x))
    model.eval()


def test_shapes_finite_loss_and_grads_everywhere():
    torch.manual_seed(0)
    config = _small_config()
    model = RQVAE(config)
    x = torch.randn(10, 12)
    model.init_codebooks(x, generator=torch.Generator().manual_seed(0))
    out = model(x)
    assert out.x_hat.shape == (10, 12) and out.z.shape == (10, 4)
    assert out.codes.shape == (10, 3) and out.codes.dtype == torch.int64
    assert out.loss.shape == out.recon_loss.shape == out.quant_loss.shape == ()
    assert torch.isfinite(out.loss)
    assert torch.allclose(out.loss, out.recon_loss + out.quant_loss)
    out.loss.backward()
    for module in (model.encoder, model.decoder, model.quantizer):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0
    assert model.encode(x).shape == (10, 3)
    assert model.decode(out.codes).shape == (10, 12)
    assert model.decode(out.codes, n_levels=1).shape == (10, 12)
    assert model.quantizer.usage(out.codes).shape == (3, 8)
    assert model.quantizer.usage(out.codes).sum() == 30
    assert model.reconstruct(x).shape == (10, 12)


def test_rejects_bad_inputs_with_a_fix():
    model = RQVAE(_small_config())
    with pytest.raises(ValueError, match="input_dim"):
        model(torch.randn(3, 5))
    with pytest.raises(ValueError, match="n_levels"):
        model.decode(torch.zeros(3, 2, dtype=torch.long), n_levels=3)
    with pytest.raises(ValueError, match="codebook"):
        model.decode(torch.full((3, 3), 8))
    with pytest.raises(ValueError, match="latent_dim"):
        RQVAEConfig(input_dim=4, latent_dim=0)


def test_config_round_trips_through_a_dict():
    config = _small_config()
    as_json = {**config.to_dict(), "hidden_dims": list(config.hidden_dims)}
    assert RQVAEConfig(**as_json) == config


def test_encoding_is_deterministic():
    x = torch.randn(20, 12, generator=torch.Generator().manual_seed(1))
    models = []
    for _ in range(2):
        torch.manual_seed(7)
        model = RQVAE(_small_config())
        model.init_codebooks(x, generator=torch.Generator().manual_seed(3))
        models.append(model.eval())
    first = models[0].encode(x)
    assert torch.equal(first, models[0].encode(x))
    assert torch.equal(first, models[1].encode(x))


def test_straight_through_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    model = RQVAE(_small_config())
    x = torch.randn(16, 12)
    # Only the reconstruction term: any encoder gradient must cross the quantiser.
    model(x).recon_loss.backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0
    # And the quantiser passes it through unchanged.
    z = torch.randn(5, 4, requires_grad=True)
    z_q, _, _ = model.quantizer(z)
    upstream = torch.randn(5, 4)
    (z_q * upstream).sum().backward()
    assert torch.allclose(z.grad, upstream)


def test_more_levels_reconstruct_better():
    torch.manual_seed(0)
    x = _clusters(n_clusters=6, per_cluster=40, dim=12, spread=0.5)
    model = RQVAE(_small_config(hidden_dims=(32,), latent_dim=6))
    model.init_codebooks(x, generator=torch.Generator().manual_seed(0))
    _train(model, x, steps=150)
    codes = model.encode(x)
    errors = [(model.decode(codes, n_levels=n) - x).pow(2).mean() for n in (1, 3)]
    assert errors[0] > errors[1]


def test_kmeans_init_undoes_a_collapsed_codebook():
    z = _clusters(n_clusters=8, per_cluster=25, dim=4, spread=0.1)
    quantizer = ResidualQuantizer(_small_config(codebook_size=16))
    with torch.no_grad():
        # Collapse: one code on the data, the rest far away -> every point picks code 0.
        quantizer.codebooks.fill_(100.0)
        quantizer.codebooks[:, 0] = z.mean(0)
    assert quantizer.encode(z)[:, 0].unique().numel() == 1
    quantizer.init_kmeans(z, generator=torch.Generator().manual_seed(0))
    assert quantizer.encode(z)[:, 0].unique().numel() >= 8


def test_kmeans_init_with_fewer_distinct_points_than_codes():
    z = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]).repeat(10, 1)
    quantizer = ResidualQuantizer(_small_config(codebook_size=8))
    quantizer.init_kmeans(z, generator=torch.Generator().manual_seed(0))
    level0 = quantizer.codebooks[0].detach()
    assert torch.isfinite(level0).all()
    assert torch.unique(level0, dim=0).shape[0] == 8  # jittered, not duplicated
    assert (quantizer.decode(quantizer.encode(z), n_levels=1) - z).abs().max() < 1e-5


def test_dead_codes_are_restarted():
    z = _clusters(n_clusters=8, per_cluster=25, dim=4, spread=0.1)
    quantizer = ResidualQuantizer(_small_config(codebook_size=16))
    quantizer.init_kmeans(z, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        quantizer.codebooks[0, 2:] = 1e3  # all but two level-0 codes out of reach
    quantizer.train()
    quantizer(z)  # a training forward fills the usage window
    before = quantizer.encode(z)[:, 0].unique().numel()
    assert before <= 2
    assert quantizer.usage_counts[0, 2:].sum() == 0
    restarted = quantizer.restart_dead_codes(z, generator=torch.Generator().manual_seed(0))
    assert restarted >= 14
    assert quantizer.usage_counts.sum() == 0  # the window starts over
    assert quantizer.encode(z)[:, 0].unique().numel() > before


def test_suggest_codebook_size():
    assert suggest_codebook_size(1349) == 64
    assert suggest_codebook_size(10_000) == 512
    assert suggest_codebook_size(1_000_000) == 512
    assert suggest_codebook_size(50) == 16
    assert suggest_codebook_size(1) == 16
    with pytest.raises(ValueError):
        suggest_codebook_size(0)


def test_short_training_reduces_error_and_uses_the_codebooks():
    torch.manual_seed(0)
    x = _clusters(n_clusters=20, per_cluster=50, dim=16, spread=0.6)  # (1000, 16)
    config = RQVAEConfig(
        input_dim=16, latent_dim=8, hidden_dims=(32,), n_levels=3, codebook_size=16
    )
    model = RQVAE(config)
    model.init_codebooks(x, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        initial = model(x).recon_loss
    _train(model, x, steps=300, restart_every=50)
    with torch.no_grad():
        out = model(x)
    assert out.recon_loss < 0.5 * initial
    used = (model.quantizer.usage(model.encode(x)) > 0).sum(1)  # (L,)
    assert (used >= config.codebook_size // 2).all(), used.tolist()
