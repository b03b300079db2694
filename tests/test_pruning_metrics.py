"""Metrics on matrices and distributions whose effective rank and entropy are known exactly."""

import math

import pytest
import torch

import pruning


def test_erank_of_equal_singular_values_is_the_rank():
    k = 7
    x = torch.cat([torch.eye(k), -torch.eye(k)])  # centred, all singular values sqrt(2)
    assert pruning.effective_rank(x) == pytest.approx(k, rel=1e-5)


def test_erank_uses_sum_normalised_singular_values():
    x = torch.tensor([[3.0, 0], [-3, 0], [0, 1], [0, -1]]) / math.sqrt(2)  # singular values 3 and 1
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert pruning.effective_rank(x) == pytest.approx(expected, rel=1e-5)


def test_erank_centres_columns():
    # A constant offset added to every row changes nothing.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 50, generator=g)
    assert pruning.effective_rank(x + 5.0) == pytest.approx(pruning.effective_rank(x), rel=1e-4)


def test_erank_range_and_rank_one():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 1, generator=g) @ torch.randn(1, 60, generator=g)
    # float32 eigenvalues of the 39 null directions come back as rounding noise, not zeros
    assert pruning.effective_rank(x) == pytest.approx(1.0, abs=0.05)
    y = torch.randn(40, 60, generator=g)
    assert 1.0 <= pruning.effective_rank(y) <= 40.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_erank_any_dtype_computed_in_float32(dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20, 30, generator=g)
    assert pruning.effective_rank(x.to(dtype)) == pytest.approx(pruning.effective_rank(x), rel=2e-2)


def test_attention_entropy_known_values():
    n = 576
    uniform = torch.full((n,), 1.0 / n)
    assert pruning.attention_entropy(uniform) == pytest.approx(math.log(n), rel=1e-6)
    assert pruning.attention_entropy(uniform, normalized=True) == pytest.approx(1.0, rel=1e-6)
    one_hot = torch.zeros(n).index_fill_(0, torch.tensor([3]), 1.0)
    assert pruning.attention_entropy(one_hot) == 0.0
    p = torch.tensor([0.5, 0.25, 0.25])
    assert pruning.attention_entropy(p) == pytest.approx(1.5 * math.log(2), rel=1e-6)
    # The [CLS] row is not renormalised upstream: the metric renormalises over the patches.
    assert pruning.attention_entropy(p * 0.8) == pytest.approx(1.5 * math.log(2), rel=1e-6)
    assert pruning.attention_entropy(torch.ones(1), normalized=True) == 0.0


def test_retained_attention():
    a = torch.tensor([0.4, 0.3, 0.2, 0.1]) * 0.5
    assert pruning.retained_attention(a, torch.tensor([0, 2])) == pytest.approx(0.6)
    assert pruning.retained_attention(a, torch.arange(4)) == pytest.approx(1.0)
    assert pruning.retained_attention(a, torch.tensor([], dtype=torch.long)) == 0.0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: pruning.effective_rank(torch.ones(3)), "2-D"),
        (lambda: pruning.effective_rank(torch.zeros(0, 4)), "non-empty"),
        (lambda: pruning.effective_rank(torch.tensor([[1.0, float("nan")]])), "NaN"),
        (lambda: pruning.attention_entropy(torch.tensor([0.5, -0.1])), "non-negative"),
        (lambda: pruning.attention_entropy(torch.zeros(4)), "sums to zero"),
        (lambda: pruning.attention_entropy(torch.tensor([float("inf"), 1.0])), "NaN or Inf"),
        (lambda: pruning.retained_attention(torch.ones(4), torch.tensor([4])), r"\[0, 3\]"),
        (lambda: pruning.retained_attention(torch.ones(4), torch.tensor([1, 1])), "unique"),
        (lambda: pruning.retained_attention(torch.ones(4), torch.tensor([0.5])), "integer"),
    ],
)
def test_metric_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
