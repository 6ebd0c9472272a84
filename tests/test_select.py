"""The one selection primitive (dst/select.py): an exact top-k whose ties go to the lower index."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsity_core.dst.select import choose

values = st.lists(st.sampled_from([0.0, 0.0, 1.0, 1.0, 2.0, 3.5, -1.0, float("inf")]), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), largest=st.booleans(), random_floats=st.booleans())
def test_choose_is_the_stable_top_k(data, largest, random_floats):
    if random_floats:
        n = data.draw(st.integers(1, 80))
        score = torch.rand(n, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 9999))))
    else:
        score = torch.tensor(data.draw(values))
    k = data.draw(st.integers(0, score.numel()))
    idx = choose(score, k, largest=largest).tolist()
    assert len(idx) == len(set(idx)) == k
    assert set(idx) == set(torch.sort(score, descending=largest, stable=True).indices[:k].tolist())


def test_eligibility_wins_over_a_tied_sentinel():
    score = torch.tensor([-float("inf"), 5.0, -float("inf"), -float("inf")])  # 0 and 2 ineligible (sentinels)
    eligible = torch.tensor([False, True, False, True])
    assert sorted(choose(score, 2, largest=True, eligible=eligible).tolist()) == [1, 3]
