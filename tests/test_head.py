"""The new classifier: the seed's layers, and the hidden-units forms it accepts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from petalnet.head import build_head, normalize_hidden_units


@pytest.mark.parametrize(
    ("given", "widths"),
    [(512, [512]), ([512, 256], [512, 256]), ((64,), [64]), (None, []), (0, []), ([], [])],
)
def test_hidden_units_forms(given, widths):
    assert normalize_hidden_units(given) == widths


@pytest.mark.parametrize("bad", [-1, [8, 0], [8, "4"], [True]])
def test_bad_hidden_units(bad):
    with pytest.raises(ValueError, match="hidden_units must be positive integers"):
        normalize_hidden_units(bad)


def test_head_is_the_seeds_classifier():
    head = build_head(10, 4, [8, 6], 0.3)
    kinds = [type(m) for m in head]
    assert kinds == [
        nn.Linear,
        nn.ReLU,
        nn.Dropout,
        nn.Linear,
        nn.ReLU,
        nn.Dropout,
        nn.Linear,
        nn.LogSoftmax,
    ]
    assert (head[0].in_features, head[0].out_features, head[6].out_features) == (10, 8, 4)
    assert head[2].p == 0.3
    out = head.eval()(torch.randn(5, 10))
    torch.testing.assert_close(out.exp().sum(1), torch.ones(5))


def test_linear_head_keeps_dropout_on_the_features():
    assert [type(m) for m in build_head(10, 4, [], 0.2)] == [nn.Dropout, nn.Linear, nn.LogSoftmax]
    assert [type(m) for m in build_head(10, 4, [], 0.0)] == [nn.Linear, nn.LogSoftmax]
