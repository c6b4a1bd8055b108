"""stable_top_k must pick and order exactly as a stable descending sort does, ties included."""

import pytest
import torch

from vlmcompress.methods.ranking import stable_top_k


def reference(scores, k):
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


@pytest.mark.parametrize("levels", [3, 50, None])  # few distinct values (ties everywhere), some, continuous
@pytest.mark.parametrize("k", [0, 1, 7, 63, 64])
def test_equals_the_stable_sort_prefix(levels, k):
    g = torch.Generator().manual_seed(k + (levels or 0))
    for shape in [(64,), (5, 64), (2, 3, 64)]:
        scores = torch.randint(0, levels, shape, generator=g).float() if levels else torch.randn(shape, generator=g)
        assert torch.equal(stable_top_k(scores, k), reference(scores, k))


def test_ties_inside_the_winners_keep_position_order_and_infinities_and_nans_rank_as_the_sort_does():
    scores = torch.tensor([[1.0, 5.0, 5.0, 2.0, 5.0, float("-inf"), 3.0]])
    assert stable_top_k(scores, 3).tolist() == [[1, 2, 4]]  # the fast path (no tie at the boundary)
    assert stable_top_k(scores, 2).tolist() == [[1, 2]]  # a tie straddles the boundary: the sort
    with_nan = torch.tensor([0.5, float("nan"), 2.0, 2.0])
    assert torch.equal(stable_top_k(with_nan, 2), reference(with_nan, 2))
    assert stable_top_k(torch.tensor([3, 1, 3, 2]), 2).tolist() == [0, 2]  # integer scores
