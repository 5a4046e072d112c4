"""The generator: item vectors, the causal user encoder, and its dense and generative heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.beam_search import constrained_beam_search, sequence_log_probs
from models.cold_start import served_item_features
from models.generator import Generator, GeneratorConfig, ItemFeatures, running_mean
from models.path_tables import build_path_tables
from models.prefix_index import build_prefix_index
from models.router import Router, RouterConfig
from models.tokens import PAD, TokenLayout, item_tokens

L = 3
LAYOUT = TokenLayout(codebook_size=4, n_levels=L, dedup_size=4)
V = LAYOUT.vocab_size
N_ITEMS = 12
TEXT_DIM = 5


def catalogue(seed: int = 0, n_items: int = N_ITEMS):
    """(features, item_tokens (R, L + 1), index, paths) of a small random catalogue,
    R = N + 1, written as serving writes it (the gate of each item's alpha, ids 1..N)."""
    rng = np.random.default_rng(seed)
    rows = n_items + 1
    cf = rng.integers(0, 4, size=(rows, L))
    sem = rng.integers(0, 4, size=(rows, L))
    n_cf = rng.integers(0, L + 1, size=rows)
    alpha = n_cf / L
    text = rng.standard_normal((rows, TEXT_DIM)).astype(np.float32)
    cf[0] = sem[0] = n_cf[0] = 0
    text[0] = 0.0
    router = Router(RouterConfig(budget=L))
    features = served_item_features(
        router, LAYOUT, L, np.arange(rows), cf, sem, alpha, text, torch.device("cpu")
    )
    # Row 0 is padding: no id, PAD tokens, zero text.
    features = features._replace(
        cf_tokens=features.cf_tokens.index_fill(0, torch.tensor([0]), PAD),
        sem_tokens=features.sem_tokens.index_fill(0, torch.tensor([0]), PAD),
    )
    tokens = np.zeros((rows, L + 1), dtype=np.int64)
    tokens[1:] = item_tokens(cf[1:], sem[1:], n_cf[1:], L, LAYOUT)
    index = build_prefix_index(tokens[1:], np.arange(1, rows), V).to_tensors()
    paths = build_path_tables(tokens, np.arange(1, rows))
    return features, torch.as_tensor(tokens), index, paths


def model(**overrides) -> Generator:
    torch.manual_seed(0)
    kwargs = {
        "vocab_size": V,
        "budget": L,
        "n_ids": N_ITEMS + 1,
        "code_levels": L,
        "text_dim": TEXT_DIM,
        "max_len": 8,
        "hidden": 16,
        "n_heads": 2,
    }
    return Generator(GeneratorConfig(**{**kwargs, **overrides}))


def sequences(batch: int, length: int, seed: int = 0, n_items: int = N_ITEMS):
    """(seq, targets) (B, T) item rows, left-padded; targets 0 where there is none."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, n_items + 1, (batch, length + 1), generator=g)
    seq, targets = items[:, :-1].clone(), items[:, 1:].clone()
    seq[0, :2] = 0  # a shorter history, left-padded
    targets[0, :2] = 0
    return seq, targets


# ---- item vectors -------------------------------------------------------------------------


def test_item_vectors_compose_ids_codes_and_text():
    gen = model()
    features, _, _, _ = catalogue()
    with torch.no_grad():
        vectors = gen.item_vectors(features)
        want = (
            gen.id_emb.weight[features.ids]
            + (gen.token_emb.weight[features.cf_tokens] * features.cf_weight[..., None]).sum(1)
            + (gen.token_emb.weight[features.sem_tokens] * features.sem_weight[..., None]).sum(1)
            + features.text @ gen.text_proj.weight.T
        )
    assert vectors.shape == (N_ITEMS + 1, 16)
    torch.testing.assert_close(vectors, want)
    assert torch.equal(vectors[0], torch.zeros(16))  # the padding row is zero
    assert (vectors[1:].abs().sum(1) > 0).all()
    # No weights = weight 1 on every level.
    unweighted = features._replace(cf_weight=None, sem_weight=None)
    full = features._replace(
        cf_weight=torch.ones_like(features.cf_weight),
        sem_weight=torch.ones_like(features.sem_weight),
    )
    torch.testing.assert_close(gen.item_vectors(unweighted), gen.item_vectors(full))


def test_padding_row_is_zero_without_text_too():
    gen = model(text_dim=0)
    features, _, _, _ = catalogue()
    vectors = gen.item_vectors(features._replace(text=None))
    assert torch.equal(vectors[0], torch.zeros(16))
    with pytest.raises(ValueError, match="text"):
        model().item_vectors(features._replace(text=None))


def test_id_keep_removes_the_id_part():
    gen = model()
    features, _, _, _ = catalogue()
    keep = torch.ones(N_ITEMS + 1)
    keep[[2, 5, 7]] = 0.0
    with torch.no_grad():
        dropped = gen.item_vectors(features, keep)
        no_ids = gen.item_vectors(features._replace(ids=torch.zeros_like(features.ids)))
        plain = gen.item_vectors(features)
    torch.testing.assert_close(dropped[[2, 5, 7]], no_ids[[2, 5, 7]])
    others = keep.bool()
    torch.testing.assert_close(dropped[others], plain[others])
    diff = (plain[[2, 5, 7]] - dropped[[2, 5, 7]]).abs().sum(1)
    assert (diff > 0).all()  # the id embedding was really there
    torch.testing.assert_close(plain[[2, 5, 7]] - dropped[[2, 5, 7]], gen.id_emb.weight[[2, 5, 7]])


def test_id_embeddings_start_from_a_given_table():
    gen = model()
    table = np.random.default_rng(1).standard_normal((N_ITEMS + 1, 16)).astype(np.float32)
    gen.init_id_embeddings(table)
    torch.testing.assert_close(gen.id_emb.weight[1:], torch.as_tensor(table[1:]))
    assert torch.equal(gen.id_emb.weight[0], torch.zeros(16))  # row 0 still means "no id"
    with pytest.raises(ValueError, match="hidden"):
        gen.init_id_embeddings(table[:, :8])


def test_new_item_embedding_goes_to_id_free_rows_only():
    gen = model(new_item_embedding=True)
    features, _, _, _ = catalogue()
    with torch.no_grad():
        gen.new_item.copy_(torch.arange(16, dtype=torch.float32))
        ids = features.ids.clone()
        ids[4] = 0  # an item without an id of its own (a new or cold item)
        keep = torch.ones(N_ITEMS + 1)
        keep[6] = 0.0  # an item whose id training dropped this step
        vectors = gen.item_vectors(features._replace(ids=ids), keep)
        plain = model().item_vectors(features._replace(ids=ids), keep)  # same init, no flag
    assert torch.equal(vectors[0], torch.zeros(16))  # padding stays zero
    torch.testing.assert_close(vectors[[4, 6]] - plain[[4, 6]], gen.new_item.expand(2, 16))
    others = [i for i in range(N_ITEMS + 1) if i not in (4, 6)]
    torch.testing.assert_close(vectors[others], plain[others])
    assert model().new_item is None  # off by default: the shipped model has no such vector


def test_id_gate_scales_the_id_by_the_routers_cf_weight():
    features, _, _, _ = catalogue()
    with torch.no_grad():
        gated = model(id_gate=True).item_vectors(features)
        plain = model().item_vectors(features)  # same init, no gate
        id_part = model().id_emb.weight[features.ids]
    # The gate multiplies only the id part, by 2 alpha_i (the CF weight of every level).
    torch.testing.assert_close(
        gated - plain, id_part * (features.cf_weight[:, :1] - 1.0), atol=1e-6, rtol=0
    )
    assert (features.cf_weight[1:, 0] != 1.0).any()  # the check is not vacuous
    # Without router weights there is nothing to gate by: weight 1, as before.
    unweighted = features._replace(cf_weight=None, sem_weight=None)
    with torch.no_grad():
        torch.testing.assert_close(
            model(id_gate=True).item_vectors(unweighted), model().item_vectors(unweighted)
        )


def test_item_features_helpers():
    features, _, _, _ = catalogue()
    picked = features.rows(torch.tensor([3, 1]))
    assert isinstance(picked, ItemFeatures)
    assert picked.ids.tolist() == [3, 1] and picked.text.shape == (2, TEXT_DIM)
    assert torch.equal(picked.cf_tokens, features.cf_tokens[[3, 1]])
    moved = features._replace(text=None).to("cpu")
    assert moved.text is None and torch.equal(moved.sem_weight, features.sem_weight)


# ---- the user encoder ---------------------------------------------------------------------


def test_history_encoding_is_causal():
    gen = model().eval()
    features, _, _, _ = catalogue()
    table = gen.item_vectors(features).detach()
    seq = torch.tensor([[4, 6, 1, 9, 3]])
    with torch.no_grad():
        states = gen.encode(table[seq], seq != 0)
        changed = gen.encode(table[torch.tensor([[4, 6, 1, 9, 11]])], seq != 0)
    assert states.shape == (1, 5, 16)
    assert torch.allclose(states[0, :4], changed[0, :4], atol=1e-6)  # earlier positions blind
    assert not torch.allclose(states[0, 4], changed[0, 4], atol=1e-3)  # the last one sees it


def test_left_padding_does_not_change_the_user_state():
    gen = model().eval()
    features, _, _, _ = catalogue()
    table = gen.item_vectors(features).detach()
    seq = torch.tensor([[4, 6, 1, 9, 3]])
    history = table[seq]
    state = gen.user_state(history, seq != 0)
    assert state.shape == (1, 16)
    # Padding positions: whatever vectors they hold, they are not seen.
    garbage = torch.randn(1, 3, 16, generator=torch.Generator().manual_seed(0)) * 5
    padded = torch.cat([garbage, history], dim=1)
    valid = torch.cat([torch.zeros(1, 3, dtype=torch.bool), seq != 0], dim=1)
    torch.testing.assert_close(gen.user_state(padded, valid), state, rtol=0, atol=1e-5)
    # ... and in a batch, with rows of other lengths.
    batch = torch.cat([padded, torch.randn(1, 8, 16)], dim=0)
    batch_valid = torch.cat([valid, torch.ones(1, 8, dtype=torch.bool)], dim=0)
    torch.testing.assert_close(gen.user_state(batch, batch_valid)[:1], state, rtol=0, atol=1e-5)
    # An empty history is still a finite state.
    assert torch.isfinite(gen.user_state(garbage, torch.zeros(1, 3, dtype=torch.bool))).all()
    with pytest.raises(ValueError, match="max_len"):
        gen.user_state(torch.zeros(1, 9, 16), torch.ones(1, 9, dtype=torch.bool))


def test_running_mean_averages_the_valid_vectors_so_far():
    history = torch.tensor([[[9.0], [2.0], [4.0], [6.0]]])
    valid = torch.tensor([[False, True, True, True]])
    got = running_mean(history, valid)
    torch.testing.assert_close(got[0, :, 0], torch.tensor([0.0, 2.0, 3.0, 4.0]))


def test_history_profile_joins_the_state_causally_and_ignores_padding():
    features, _, _, _ = catalogue()
    plain, profiled = model(), model(history_profile=True)
    assert set(profiled.state_dict()) - set(plain.state_dict()) == {"profile.weight"}
    profiled.eval()
    table = profiled.item_vectors(features).detach()
    seq = torch.tensor([[4, 6, 1, 9, 3]])
    with torch.no_grad():
        states = profiled.encode(table[seq], seq != 0)
        changed = profiled.encode(table[torch.tensor([[4, 6, 1, 9, 11]])], seq != 0)
        # The profile path acts: without its weight the state differs.
        profiled.profile.weight.zero_()
        no_profile = profiled.encode(table[seq], seq != 0)
    assert torch.allclose(states[0, :4], changed[0, :4], atol=1e-6)
    assert not torch.allclose(states, no_profile, atol=1e-3)
    # Left padding with garbage vectors changes nothing.
    gen = model(history_profile=True).eval()
    history = table[seq]
    garbage = torch.randn(1, 3, 16, generator=torch.Generator().manual_seed(0)) * 5
    valid = torch.cat([torch.zeros(1, 3, dtype=torch.bool), seq != 0], dim=1)
    torch.testing.assert_close(
        gen.user_state(torch.cat([garbage, history], dim=1), valid),
        gen.user_state(history, seq != 0),
        rtol=0,
        atol=1e-5,
    )


# ---- heads --------------------------------------------------------------------------------


def test_decoder_shapes_and_log_probs():
    gen = model().eval()
    g = torch.Generator().manual_seed(1)
    state = torch.randn(2, 16, generator=g)
    for t in range(L + 1):
        prefix = torch.randint(3, V, (2, 3, t), generator=g)  # 2 requests, 3 beams
        step = gen.next_token_log_probs(state, prefix)
        assert step.shape == (2, 3, V)
        torch.testing.assert_close(step.logsumexp(-1), torch.zeros(2, 3))
        flat = gen.decode(state[:, None].expand(2, 3, 16).reshape(6, 16), prefix.reshape(6, t))
        assert flat.shape == (6, t + 1, V)
        expected = torch.log_softmax(flat[:, -1], dim=-1).view(2, 3, V)
        torch.testing.assert_close(step, expected, rtol=0, atol=1e-5)
    tokens = torch.randint(3, V, (2, 4, L + 1), generator=g)
    teacher = gen.token_log_probs(state, tokens)
    assert teacher.shape == (2, 4, L + 1, V)
    for t in range(L + 1):  # position t = the next-token step after the first t tokens
        torch.testing.assert_close(
            teacher[:, :, t], gen.next_token_log_probs(state, tokens[:, :, :t]), atol=1e-5, rtol=0
        )


def test_decoder_is_causal_over_the_prefix():
    gen = model().eval()
    state = torch.randn(1, 16)
    prefix = torch.tensor([[5, 9, 20]])
    with torch.no_grad():
        a = gen.decode(state, prefix)
        b = gen.decode(state, torch.tensor([[5, 9, 21]]))
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3], b[:, 3])


def test_dense_log_probs():
    features, _, _, _ = catalogue()
    gen = model().eval()
    vectors = gen.item_vectors(features).detach()
    state = torch.randn(3, 16)
    log_p = Generator.dense_log_probs(state, vectors)
    assert log_p.shape == (3, N_ITEMS + 1)
    assert torch.isneginf(log_p[:, 0]).all()
    torch.testing.assert_close(log_p.logsumexp(1), torch.zeros(3))
    torch.testing.assert_close(log_p[:, 1:], torch.log_softmax(state @ vectors[1:].T, dim=1))


# ---- training -----------------------------------------------------------------------------


def test_forward_losses_are_sums_of_the_two_heads():
    features, tokens, index, paths = catalogue()
    gen = model().eval()  # no dropout: the losses can be recomputed by hand
    seq, targets = sequences(3, 5)
    losses = gen(seq, targets, features, paths)
    assert set(losses) == {"dense", "generative"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        table = gen.item_vectors(features)
        states = gen.encode(table[seq], seq != 0)
        has = targets != 0
        state, target = states[has], targets[has]  # 13 target positions
        dense = Generator.dense_log_probs(state, table)
        want_dense = -dense.gather(1, target[:, None]).sum()
        log_p, found = sequence_log_probs(
            gen.decode(state, tokens[target][:, :-1]), tokens[target], index
        )
        # The same through the serving path (teacher-forced log-probs of the whole vocab).
        served = gen.token_log_probs(state, tokens[target][:, None])[:, 0]
        log_p2, _ = sequence_log_probs(served, tokens[target], index)
    assert state.shape[0] == 13 and torch.equal(found, target)
    assert torch.isfinite(log_p).all()
    torch.testing.assert_close(losses["dense"], want_dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses["generative"], -log_p.sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses["generative"], -log_p2.sum(), rtol=1e-5, atol=1e-4)
    # The restricted softmax is a distribution over the catalogue's items: P(target) <= 1.
    assert (log_p.sum(1) <= 1e-6).all()


def test_history_keep_masks_input_items_only():
    """Training's history masking: a kept position is unchanged, a masked one enters the
    encoder as a zero item vector; targets (hence the number of loss terms) stay."""
    features, _, _, paths = catalogue()
    gen = model().eval()
    seq, targets = sequences(3, 5)
    plain = gen(seq, targets, features, paths)
    ones = gen(seq, targets, features, paths, history_keep=torch.ones(seq.shape))
    assert all(torch.equal(plain[k], ones[k]) for k in plain)
    keep = torch.ones(seq.shape)
    keep[1, 2] = 0.0
    masked = gen(seq, targets, features, paths, history_keep=keep)
    with torch.no_grad():
        table = gen.item_vectors(features)
        history = table[seq]
        history[1, 2] = 0.0
        states = gen.encode(history, seq != 0)[targets != 0]
        dense = Generator.dense_log_probs(states, table)
        want = -dense.gather(1, targets[targets != 0][:, None]).sum()
    torch.testing.assert_close(masked["dense"], want, rtol=1e-5, atol=1e-5)
    assert not torch.equal(masked["dense"], plain["dense"])


def test_decoder_state_dropout_acts_in_training_only():
    _, tokens, _, _ = catalogue()
    state = torch.randn(6, 16)
    prefix = tokens[1:7, :2]
    # The blocks' own dropout off, so only the state's can act.
    plain, dropped = model(dropout=0.0), model(dropout=0.0, decoder_state_dropout=0.5)
    assert dropped.state_dict().keys() == plain.state_dict().keys()  # no new weights
    plain.eval(), dropped.eval()
    want = plain.decode(state, prefix)
    assert torch.equal(want, dropped.decode(state, prefix))
    plain.train(), dropped.train()
    torch.manual_seed(1)
    assert torch.equal(want, plain.decode(state, prefix))
    assert not torch.equal(want, dropped.decode(state, prefix))
    with pytest.raises(ValueError, match="decoder_state_dropout"):
        model(decoder_state_dropout=1.0)


def test_path_log_probs_are_the_restricted_softmax():
    """Scoring only each node's children (path tables) gives what the restricted softmax
    over the prefix index gives from the whole vocabulary's logits."""
    _, tokens, index, paths = catalogue()
    gen = model().eval()
    g = torch.Generator().manual_seed(2)
    rows = torch.tensor([1, 5, 5, 12, 7, 3])
    state = torch.randn(6, 16, generator=g)
    with torch.no_grad():
        got = gen.path_log_probs(state, rows, paths)
        want, found = sequence_log_probs(
            gen.decode(state, tokens[rows][:, :-1]), tokens[rows], index
        )
    assert got.shape == (6, L + 1) and torch.equal(found, rows)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (got <= 0).all()


def test_all_rows_log_probs_are_a_distribution_over_the_catalogue():
    _, tokens, _, paths = catalogue()
    gen = model().eval()
    state = torch.randn(3, 16, generator=torch.Generator().manual_seed(3))
    every = gen.all_rows_log_probs(state, paths)
    assert every.shape == (3, N_ITEMS + 1)
    assert torch.isneginf(every[:, 0]).all() and torch.isfinite(every[:, 1:]).all()
    torch.testing.assert_close(
        every[:, 1:].double().exp().sum(1), torch.ones(3, dtype=torch.float64)
    )
    rows = torch.arange(1, N_ITEMS + 1)
    for b in range(3):
        one = gen.path_log_probs(state[b : b + 1].expand(N_ITEMS, -1), rows, paths).sum(1)
        torch.testing.assert_close(every[b, 1:], one.detach(), rtol=0, atol=1e-5)
    # Rows left out of the tables (a retired row, say) get -inf; the rest renormalise.
    kept = np.delete(np.arange(1, N_ITEMS + 1), [3])  # row 4 out
    fewer = gen.all_rows_log_probs(state, build_path_tables(tokens.numpy(), kept))
    assert torch.isneginf(fewer[:, [0, 4]]).all()
    torch.testing.assert_close(fewer.double().exp().sum(1), torch.ones(3, dtype=torch.float64))
    assert (fewer[:, kept] >= every[:, kept] - 1e-6).all()


def test_gradients_reach_every_part():
    features, _, _, paths = catalogue()
    gen = model()
    seq, targets = sequences(3, 5)
    soft_cf = features.cf_weight.clone().requires_grad_(True)
    soft_sem = features.sem_weight.clone().requires_grad_(True)
    soft = features._replace(cf_weight=soft_cf, sem_weight=soft_sem)
    losses = gen(seq, targets, soft, paths, id_keep=torch.ones(N_ITEMS + 1))
    losses["generative"].backward(retain_graph=True)
    # The generative loss trains the decoder's token embeddings, input and output.
    assert gen.token_emb.weight.grad.abs().sum() > 0
    assert gen.token_out.weight.grad.abs().sum() > 0
    assert gen.token_emb.weight.grad[PAD].abs().sum() == 0  # the padding token's row
    assert all(p.grad is not None for p in gen.decoder_blocks.parameters())
    gen.zero_grad()
    (losses["dense"] + losses["generative"]).backward()
    for name, p in gen.named_parameters():
        if name.startswith("item_pos"):  # only the positions the short batch uses
            assert p.grad[-5:].abs().sum() > 0
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert gen.id_emb.weight.grad[0].abs().sum() == 0
    # ... and the router's masks, through the item vectors (history and targets).
    assert soft_cf.grad.abs().sum() > 0 and soft_sem.grad.abs().sum() > 0


def test_learns_the_next_item():
    """A fixed successor per item: both heads learn it; the beam search over the prefix
    index finds it first."""
    torch.manual_seed(0)
    n = 8
    features, _, index, paths = catalogue(seed=3, n_items=n)
    gen = model(n_ids=n + 1, dropout=0.0)
    starts = torch.arange(1, n + 1)
    seq = torch.stack([(starts + k - 1) % n + 1 for k in range(5)], dim=1)
    targets = seq % n + 1
    opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
    for _ in range(60):
        losses = gen(seq, targets, features, paths)
        opt.zero_grad()
        (losses["dense"] + losses["generative"]).backward()
        opt.step()
    gen.eval()
    with torch.no_grad():
        final = gen(seq, targets, features, paths)
        assert float(final["generative"]) / targets.numel() < 0.2
        table = gen.item_vectors(features)
        state = gen.user_state(table[seq], seq != 0)
        dense = Generator.dense_log_probs(state, table)

    def step(prefix, s):
        return gen.next_token_log_probs(state, prefix[:, :, 1:]), s

    items, _, _ = constrained_beam_search(step, index, n, 4, 1)
    assert torch.equal(items[:, 0], targets[:, -1])
    assert torch.equal(dense.argmax(1), targets[:, -1])


def test_config_checks_and_round_trip():
    cfg = model().config
    assert GeneratorConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        GeneratorConfig.from_dict({**cfg.to_dict(), "nope": 1})
    for bad in ({"budget": 0}, {"n_ids": 0}, {"hidden": 15}, {"ffn": "relu"}):
        with pytest.raises(ValueError):
            GeneratorConfig(**{**cfg.to_dict(), **bad})
    for ffn in ("gelu", "swiglu"):
        gen = model(ffn=ffn).eval()
        features, _, _, paths = catalogue()
        seq, targets = sequences(2, 4)
        assert torch.isfinite(gen(seq, targets, features, paths)["generative"])
