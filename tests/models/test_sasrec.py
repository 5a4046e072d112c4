import numpy as np
import pytest
import torch

from models.sasrec import SASRec, SASRecConfig


def test_shapes_and_loss_is_a_sum_over_real_targets():
    model = SASRec(SASRecConfig(n_items=20, max_len=8, hidden=16, n_heads=2)).eval()
    seq = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4]])
    tgt = torch.tensor([[0, 0, 4, 5], [2, 3, 4, 5]])
    logits, loss = model(seq, tgt)
    assert logits.shape == (6, 21)
    assert torch.isinf(logits[:, 0]).all()
    manual = torch.nn.functional.cross_entropy(logits, tgt[tgt != 0], reduction="sum")
    assert torch.allclose(loss, manual)
    scores, none = model(seq)
    assert scores.shape == (2, 21) and none is None


def test_causal_and_padding_invariant():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=30, max_len=10, hidden=16, n_heads=2)).eval()
    seq = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        states = model.encode(seq)
        changed = model.encode(torch.tensor([[5, 6, 7, 8, 20]]))
        # earlier positions cannot see the last item
        assert torch.allclose(states[0, :4], changed[0, :4], atol=1e-6)
        # trimming left padding does not change the prediction (positions count from the right)
        padded = model.score(torch.tensor([[0, 0, 0, 5, 6, 7, 8, 9]]))
        assert torch.allclose(padded, model.score(seq), atol=1e-5)
    assert not torch.isnan(model.encode(torch.zeros(1, 4, dtype=torch.long))).any()


def test_learns_a_deterministic_successor():
    torch.manual_seed(0)
    n = 12
    model = SASRec(SASRecConfig(n_items=n, max_len=6, hidden=32, n_heads=2, dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    starts = np.arange(1, n + 1)
    seq = torch.as_tensor([[(s + k - 1) % n + 1 for k in range(6)] for s in starts])
    tgt = torch.as_tensor([[(s + k) % n + 1 for k in range(6)] for s in starts])
    for _ in range(150):
        _, loss = model(seq, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    pred = model.score(seq).argmax(dim=1)
    assert (pred == tgt[:, -1]).float().mean() > 0.9


def content_model(id_dropout: float = 0.0, id_rows=None) -> SASRec:
    torch.manual_seed(0)
    text = torch.randn(21, 6)
    text[0] = 0.0
    config = SASRecConfig(
        n_items=20, max_len=8, hidden=16, n_heads=2, text_dim=6, id_dropout=id_dropout
    )
    return SASRec(config, text, id_rows)


def test_id_plus_content_item_table():
    model = content_model().eval()
    table = model.item_table()
    with torch.no_grad():
        want = model.item_emb.weight + model.text @ model.text_proj.weight.T
    assert table.shape == (21, 16)
    torch.testing.assert_close(table[1:], want[1:])
    assert torch.equal(table[0], torch.zeros(16))  # padding stays zero
    assert torch.equal(model.item_embeddings(), model.item_emb.weight.detach())
    # A cold item (id row 0) is its text alone.
    rows = torch.arange(21)
    rows[[4, 9]] = 0
    cold = content_model(id_rows=rows).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            cold.item_table()[[4, 9]], model.text[[4, 9]] @ model.text_proj.weight.T
        )
        torch.testing.assert_close(cold.item_table()[5], table[5])
    # The table is the input AND the output of the model.
    seq = torch.tensor([[0, 3, 4, 5]])
    with torch.no_grad():
        state = model.encode(seq)[:, -1]
        torch.testing.assert_close(model.score(seq), state @ table.T)


def test_id_dropout_only_in_training():
    model = content_model(id_dropout=1.0)
    model.train()
    with torch.no_grad():
        text_only = model.text @ model.text_proj.weight.T
        torch.testing.assert_close(model.item_table()[1:], text_only[1:])  # every id dropped
        model.eval()
        assert not torch.allclose(model.item_table()[1:], text_only[1:])
    half = content_model(id_dropout=0.5).train()
    torch.manual_seed(1)
    with torch.no_grad():
        table = half.item_table()
        text_only = half.text @ half.text_proj.weight.T
    dropped = torch.isclose(table, text_only, atol=1e-6).all(1)[1:]
    assert 0 < int(dropped.sum()) < 20
    seq = torch.tensor([[0, 3, 4, 5], [1, 2, 3, 4]])
    logits, loss = half(seq, torch.tensor([[0, 4, 5, 6], [2, 3, 4, 5]]))
    assert logits.shape == (7, 21) and torch.isfinite(loss)
    loss.backward()
    assert half.text_proj.weight.grad.abs().sum() > 0


def test_content_variant_needs_its_text():
    config = SASRecConfig(n_items=20, max_len=8, hidden=16, n_heads=2, text_dim=6)
    with pytest.raises(ValueError, match="text"):
        SASRec(config)
    with pytest.raises(ValueError, match="text"):
        SASRec(config, torch.zeros(20, 6))  # one row short
