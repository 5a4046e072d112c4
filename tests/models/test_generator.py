import torch

from models.generator import Generator, GeneratorConfig, HistoryItems

L = 3
V = 40


def history_of(cf, sem, dedup, n_cf):
    """Hard-mask histories: cf, sem (B, T, L) tokens, dedup (B, T), n_cf (B, T) CF levels."""
    levels = torch.arange(1, L + 1)
    cf_mask = (levels[None, None] <= n_cf[..., None]).float()
    sem_mask = (levels[None, None] <= (L - n_cf)[..., None]).float()
    pad = (dedup == 0)[..., None]
    return HistoryItems(cf, sem, cf_mask.masked_fill(pad, 0), sem_mask.masked_fill(pad, 0), dedup)


def random_history(batch, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    cf = torch.randint(3, 20, (batch, length, L), generator=g)
    sem = torch.randint(20, 36, (batch, length, L), generator=g)
    dedup = torch.randint(36, V, (batch, length), generator=g)
    n_cf = torch.randint(0, L + 1, (batch, length), generator=g)
    return history_of(cf, sem, dedup, n_cf)


def model(**overrides):
    torch.manual_seed(0)
    return Generator(GeneratorConfig(vocab_size=V, budget=L, max_len=8, hidden=16, **overrides))


def test_shapes_and_summed_loss():
    gen = model().eval()
    history = random_history(2, 5)
    targets = torch.randint(3, V, (2, 5, L + 1))
    targets[0, :2] = 0  # no target at two positions
    logits, loss = gen(history, targets)
    assert logits.shape == (8, L + 1, V)
    assert loss.ndim == 0 and torch.isfinite(loss)
    state, none = gen(history)
    assert state.shape == (2, 16) and none is None


def test_history_is_causal_and_left_padding_is_ignored():
    gen = model().eval()
    history = random_history(1, 5)
    states = gen.encode_history(history)
    changed = history._replace(dedup_tokens=history.dedup_tokens.clone())
    changed.dedup_tokens[0, -1] = 3
    assert torch.allclose(states[0, :4], gen.encode_history(changed)[0, :4], atol=1e-6)
    padded = HistoryItems(*(torch.cat([torch.zeros_like(t[:, :2]), t], dim=1) for t in history))
    assert torch.allclose(gen.user_state(padded), gen.user_state(history), atol=1e-5)


def test_router_masks_receive_gradient_from_the_generation_loss():
    gen = model(dropout=0.0)
    history = random_history(2, 4)
    soft_cf = torch.full_like(history.cf_mask, 0.5, requires_grad=True)
    soft = history._replace(cf_mask=soft_cf)
    _, loss = gen(soft, torch.randint(3, V, (2, 4, L + 1)))
    loss.backward()
    assert soft_cf.grad is not None and soft_cf.grad.abs().sum() > 0


def test_next_token_log_probs_match_the_teacher_forced_logits():
    gen = model().eval()
    state = torch.randn(2, 16)
    prefix = torch.randint(3, V, (2, 3, 2))  # 2 requests, 3 beams, 2 tokens so far
    step = gen.next_token_log_probs(state, prefix)
    assert step.shape == (2, 3, V)
    full = gen.decode_logits(state[:, None].expand(2, 3, 16).reshape(6, 16), prefix.reshape(6, 2))
    expected = torch.log_softmax(full[:, -1], dim=-1).view(2, 3, V)
    assert torch.allclose(step, expected, atol=1e-5)


def test_learns_to_generate_the_next_items_tokens():
    # Each item's next item is fixed; greedy decoding must reproduce its tokens.
    torch.manual_seed(0)
    n_items = 6
    item_tokens = torch.stack(
        [torch.tensor([3 + i, 10 + i, 20 + i, 36 + i % 4]) for i in range(n_items)]
    )  # (items, L + 1), here all CF levels (n_cf = L)
    seq = torch.tensor([[(s + k) % n_items for k in range(5)] for s in range(n_items)])
    hist_tokens = item_tokens[seq]  # (B, T, L + 1)
    history = history_of(
        hist_tokens[..., :L], hist_tokens[..., :L], hist_tokens[..., L], torch.full(seq.shape, L)
    )
    targets = item_tokens[(seq + 1) % n_items]
    gen = model(dropout=0.0)
    opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
    for _ in range(200):
        _, loss = gen(history, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    gen.eval()
    state = gen.user_state(history)
    prefix = torch.zeros(n_items, 1, 0, dtype=torch.long)
    for _ in range(L + 1):
        nxt = gen.next_token_log_probs(state, prefix).argmax(-1, keepdim=True)  # (B, 1, 1)
        prefix = torch.cat([prefix, nxt], dim=2)
    assert torch.equal(prefix[:, 0], targets[:, -1])
