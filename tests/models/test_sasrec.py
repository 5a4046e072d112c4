import numpy as np
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
