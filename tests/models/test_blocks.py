"""The causal transformer blocks shared by SASRec and the generator."""

import pytest
import torch

from models.blocks import BlockConfig, CausalSelfAttentionBlock, causal_mask, init_weights


def test_causal_mask():
    valid = torch.tensor([[False, False, True, True], [True, True, True, True]])
    mask = causal_mask(valid)
    assert mask.shape == (2, 1, 4, 4) and mask.dtype == torch.bool
    assert mask[0, 0].int().tolist() == [
        [1, 0, 0, 0],  # a padded query sees itself only: no empty attention row
        [0, 1, 0, 0],
        [0, 0, 1, 0],  # valid queries see valid keys at or before them
        [0, 0, 1, 1],
    ]
    assert torch.equal(mask[1, 0], torch.ones(4, 4).tril().bool())


@pytest.mark.parametrize("ffn", ["gelu", "swiglu"])
def test_block_is_causal_and_ignores_padded_keys(ffn):
    torch.manual_seed(0)
    block = CausalSelfAttentionBlock(BlockConfig(16, 2, 0.0, ffn)).eval()
    x = torch.randn(1, 5, 16)
    valid = torch.tensor([[False, True, True, True, True]])
    with torch.no_grad():
        out = block(x, causal_mask(valid))
        later = x.clone()
        later[0, 4] += 1.0
        padded = x.clone()
        padded[0, 0] = 100.0
        assert out.shape == x.shape and torch.isfinite(out).all()
        torch.testing.assert_close(block(later, causal_mask(valid))[0, :4], out[0, :4])
        torch.testing.assert_close(block(padded, causal_mask(valid))[0, 1:], out[0, 1:])
        assert not torch.allclose(block(later, causal_mask(valid))[0, 4], out[0, 4])


def test_ffn_kinds_have_about_the_same_size():
    sizes = {
        ffn: sum(
            p.numel() for p in CausalSelfAttentionBlock(BlockConfig(64, 2, 0.1, ffn)).parameters()
        )
        for ffn in ("gelu", "swiglu")
    }
    assert abs(sizes["gelu"] - sizes["swiglu"]) / sizes["gelu"] < 0.01
    with pytest.raises(ValueError, match="ffn"):
        BlockConfig(64, 2, 0.1, "relu")
    with pytest.raises(ValueError, match="divisible"):
        BlockConfig(64, 3, 0.1)


def test_init_weights():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 8, padding_idx=0)
    lin = torch.nn.Linear(8, 300)
    for m in (emb, lin):
        init_weights(m)
    assert torch.equal(emb.weight[0], torch.zeros(8))
    assert torch.equal(lin.bias, torch.zeros(300))
    assert abs(float(lin.weight.detach().std()) - 0.02) < 0.002
