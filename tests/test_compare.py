import math

import pytest
import torch

from genie.compare import mcnemar_exact, paired_top1
from genie.errors import GenieError


def test_mcnemar_matches_the_binomial_tail():
    # 2 vs 8 discordant: P(X <= 2) for Binomial(10, 1/2) = (1 + 10 + 45) / 1024, doubled
    assert mcnemar_exact(2, 8) == pytest.approx(2 * 56 / 1024)
    assert mcnemar_exact(8, 2) == mcnemar_exact(2, 8)
    assert mcnemar_exact(5, 5) == 1.0  # an even split is no evidence either way
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 20) == pytest.approx(2 / 2**20)
    # large counts stay exact (no float overflow in the binomial sum)
    p = mcnemar_exact(416, 433)
    assert 0.5 < p < 0.7
    with pytest.raises(GenieError, match=">= 0"):
        mcnemar_exact(-1, 3)


def test_paired_top1_counts_each_kind_of_image():
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    a = torch.tensor([0, 1, 2, 9, 9, 5])  # right on 0, 1, 2, 5
    b = torch.tensor([0, 9, 9, 3, 9, 7])  # right on 0, 3
    r = paired_top1(a, b, labels)
    assert r["top1_a"] == pytest.approx(400 / 6) and r["top1_b"] == pytest.approx(200 / 6)
    assert (r["only_a_right"], r["only_b_right"], r["predictions_differ"]) == (3, 1, 4)
    assert r["p_value"] == pytest.approx(mcnemar_exact(3, 1))
    assert math.isclose(r["top1_a"] - r["top1_b"], 100 * (r["only_a_right"] - r["only_b_right"]) / 6)


def test_paired_top1_rejects_mismatched_shapes():
    with pytest.raises(GenieError, match="all \\(N,\\)"):
        paired_top1(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long), torch.zeros(3, dtype=torch.long))


def test_logit_distance_by_hand():
    from genie.compare import logit_distance

    ref = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    out = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    d = logit_distance(out, ref)
    assert d["logit_mse"] == pytest.approx((0.0 + 1.0) / 2)
    # second image: p = softmax(1, 2), q = (1/2, 1/2): KL = sum p log(2 p); the first adds 0
    p2 = torch.softmax(torch.tensor([1.0, 2.0], dtype=torch.float64), 0)
    assert d["kl"] == pytest.approx(float((p2 * (2 * p2).log()).sum()) / 2)
    same = logit_distance(ref, ref)
    assert same["logit_mse"] == 0.0 and abs(same["kl"]) < 1e-12
    # a shift of every logit of an image changes the squared error, not the softmax
    shifted = logit_distance(ref + 3.0, ref)
    assert shifted["logit_mse"] == pytest.approx(18.0) and abs(shifted["kl"]) < 1e-12
    with pytest.raises(GenieError, match="one shape"):
        logit_distance(ref, ref[:1])
