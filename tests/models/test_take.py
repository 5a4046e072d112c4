"""models.take: the index_select gather returns what advanced indexing returns."""

from __future__ import annotations

import pytest
import torch

from models.take import take_rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.int16, torch.bool])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (0, 4)])
def test_take_rows_equals_advanced_indexing(dtype, shape):
    gen = torch.Generator().manual_seed(0)
    table = (torch.randn(11, 3, generator=gen) * 5).to(dtype)
    idx = torch.randint(0, 11, shape, generator=gen)
    got = take_rows(table, idx)
    assert got.shape == (*shape, 3) and got.dtype == dtype
    assert torch.equal(got, table[idx])
    flags = table[:, 0]  # a 1-D table: one value per row
    assert torch.equal(take_rows(flags, idx), flags[idx])


def test_a_negative_index_is_an_error_not_a_row_from_the_end():
    with pytest.raises(IndexError):
        take_rows(torch.zeros(4, 2), torch.tensor([[0, -1]]))
