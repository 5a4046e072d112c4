"""The sampled softmax with logQ correction: its limit is the full softmax, its correction
pulls the estimate towards the full loss, and "auto" switches at the catalogue line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.sampled_softmax import SAMPLED_SOFTMAX_MIN_ITEMS, SampledSoftmax, resolve_loss
from models.sasrec import SASRec, SASRecConfig
from training.loop import LoopConfig
from training.stages.sasrec import SASRecTrainConfig, _SASRecStep


def full_loss(states: torch.Tensor, targets: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    logits = states @ table.T
    logits[:, 0] = float("-inf")
    return F.cross_entropy(logits, targets, reduction="sum")


def toy(n_items: int = 20, n: int = 8, hidden: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(n, hidden, generator=g, requires_grad=True)
    table = torch.randn(n_items + 1, hidden, generator=g, requires_grad=True)
    targets = torch.randint(1, n_items + 1, (n,), generator=g)
    return states, targets, table


@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_limit_is_the_full_softmax_loss_and_gradient(sampler):
    # With far more draws than items every item is in C for sure: q = 1, no correction,
    # and the sampled loss is the full softmax, value and gradients.
    states, targets, table = toy()
    counts = np.arange(21) ** 2  # skewed; row 0 is ignored
    sampled = SampledSoftmax(counts, n_negatives=20_000, sampler=sampler)
    torch.manual_seed(0)
    got = sampled(states, targets, table)
    got_states, got_table = torch.autograd.grad(got, (states, table))
    want = full_loss(states, targets, table)
    want_states, want_table = torch.autograd.grad(want, (states, table))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_states, want_states, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_table, want_table, rtol=1e-5, atol=1e-5)
    assert got_table[0].abs().sum() == 0  # padding is never a candidate


def test_candidates_are_a_set_with_the_target_and_never_padding():
    states, targets, table = toy(n_items=500, n=16)
    sampled = SampledSoftmax(np.ones(501), n_negatives=32)
    seen = []
    original = sampled.log_q

    def spy(candidates, n_targets):
        seen.append(candidates)
        return original(candidates, n_targets)

    sampled.log_q = spy
    loss = sampled(states, targets, table)
    (candidates,) = seen
    assert torch.isfinite(loss)
    assert len(torch.unique(candidates)) == len(candidates)  # no copy of a target
    assert (candidates > 0).all()
    assert set(targets.tolist()) <= set(candidates.tolist())
    assert len(candidates) <= 16 + 32  # n x (n + M) logits, whatever N is


@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_log_q_correction_makes_the_expected_gradient_the_full_one(sampler):
    # Targets drawn from a skewed catalogue (the in-batch candidates arrive as training
    # targets do), 60 shared negatives: averaged over batches, the corrected gradient of
    # the item table is close to the full softmax's; without the correction the popular
    # items, in C nearly every step, get far too much of the push-down.
    n_items, n = 400, 32
    g = torch.Generator().manual_seed(1)
    counts = np.concatenate([[0], 1000.0 / np.arange(1, n_items + 1) ** 1.2])
    probs = torch.as_tensor(counts / counts.sum())
    states = (0.3 * torch.randn(1, 8, generator=g)).expand(n, 8).contiguous()
    table = torch.randn(n_items + 1, 8, generator=g, requires_grad=True)
    batches = [torch.multinomial(probs, n, replacement=True, generator=g) for _ in range(200)]
    want = torch.stack(
        [torch.autograd.grad(full_loss(states, t, table), table)[0] for t in batches]
    )

    def mean_gradient_error(sampled: SampledSoftmax) -> float:
        torch.manual_seed(0)
        got = torch.stack(
            [torch.autograd.grad(sampled(states, t, table), table)[0] for t in batches]
        )
        return float((got.mean(0) - want.mean(0)).norm() / want.mean(0).norm())

    corrected = mean_gradient_error(SampledSoftmax(counts, 60, sampler))
    plain = SampledSoftmax(counts, 60, sampler)
    plain.log_q = lambda candidates, n_targets: torch.zeros(len(candidates))
    uncorrected = mean_gradient_error(plain)
    assert corrected < 0.1 and corrected < 0.5 * uncorrected


def test_auto_switches_at_the_catalogue_line():
    assert resolve_loss("auto", SAMPLED_SOFTMAX_MIN_ITEMS - 1) == "full"
    assert resolve_loss("auto", SAMPLED_SOFTMAX_MIN_ITEMS) == "sampled"
    assert resolve_loss("full", 10**6) == "full"
    assert resolve_loss("sampled", 10) == "sampled"
    with pytest.raises(ValueError):
        resolve_loss("softmax", 10)
    config = LoopConfig()
    assert config.sampled_softmax(np.ones(SAMPLED_SOFTMAX_MIN_ITEMS), "cpu") is None
    big = config.sampled_softmax(np.ones(SAMPLED_SOFTMAX_MIN_ITEMS + 1), "cpu")
    assert isinstance(big, SampledSoftmax) and big.n_negatives == config.sampled_negatives
    forced = LoopConfig(loss="sampled", sampled_negatives=7).sampled_softmax(np.ones(30), "cpu")
    assert forced.n_negatives == 7
    for bad in ({"loss": "x"}, {"negative_sampler": "x"}, {"sampled_negatives": -1}):
        with pytest.raises(ValueError):
            LoopConfig(**bad)


def sasrec_batch():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=20, max_len=8, hidden=16, n_heads=2)).eval()
    seq = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4]])
    tgt = torch.tensor([[0, 0, 4, 5], [2, 3, 4, 5]])
    return model, seq, tgt


def test_sasrec_step_default_is_the_full_softmax_on_small_catalogues():
    model, seq, tgt = sasrec_batch()
    counts = np.ones(21)
    step = _SASRecStep(model, SASRecTrainConfig().sampled_softmax(counts, "cpu"))
    assert step.sampled is None
    assert torch.equal(step(seq, tgt), model(seq, tgt)[1])  # the very same computation
    # Forced on with every item sure to be drawn: the same loss through target_states.
    sampled = SASRecTrainConfig(loss="sampled", sampled_negatives=5000)
    step = _SASRecStep(model, sampled.sampled_softmax(counts, "cpu"))
    torch.testing.assert_close(step(seq, tgt), model(seq, tgt)[1], rtol=1e-5, atol=1e-5)


def test_sasrec_learns_a_deterministic_successor_with_the_sampled_loss():
    torch.manual_seed(0)
    n = 40
    model = SASRec(SASRecConfig(n_items=n, max_len=6, hidden=32, n_heads=2, dropout=0.0))
    step = _SASRecStep(model, SampledSoftmax(np.ones(n + 1), n_negatives=4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    starts = np.arange(1, n + 1)
    seq = torch.as_tensor([[(s + k - 1) % n + 1 for k in range(6)] for s in starts])
    tgt = torch.as_tensor([[(s + k) % n + 1 for k in range(6)] for s in starts])
    for _ in range(150):
        loss = step(seq, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    pred = model.score(seq).argmax(dim=1)
    assert (pred == tgt[:, -1]).float().mean() > 0.9


def test_generator_dense_head_takes_the_sampled_loss():
    from tests.models.test_generator import N_ITEMS, catalogue, model, sequences

    features, _, _, paths = catalogue()
    gen = model().eval()
    seq, targets = sequences(3, 5)
    full = gen(seq, targets, features, paths)
    sure = SampledSoftmax(np.ones(N_ITEMS + 1), n_negatives=5000)  # C = the catalogue
    sampled = gen(seq, targets, features, paths, dense_loss=sure)
    torch.testing.assert_close(sampled["dense"], full["dense"], rtol=1e-5, atol=1e-5)
    assert torch.equal(sampled["generative"], full["generative"])
    # GeneratorTrainConfig's default keeps the full softmax on small catalogues.
    from training.stages.generator import GeneratorTrainConfig

    assert GeneratorTrainConfig().sampled_softmax(np.ones(N_ITEMS + 1), "cpu") is None
