"""The masked network and the oracle masks."""

from __future__ import annotations

import pytest
import torch

from datamodules import SyntheticDataModule
from models import build_model
from ntdh_bench.masking import MaskedNetwork, oracle_keep_mask


def test_masked_network_zeroes_masked_inputs_and_hidden_channels():
    torch.manual_seed(0)
    net = build_model("mlp", (6,), 3, hidden=[4, 4])
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    x = torch.randn(8, 6)
    masked = MaskedNetwork(net, keep)
    torch.testing.assert_close(masked(x).logits, net(x * keep).logits)
    torch.testing.assert_close(masked(x).logits, masked(x + torch.randn(8, 1) * keep.eq(0)).logits)
    assert set(masked.state_dict()) == {"keep", *(f"net.{k}" for k in net.state_dict())}
    channel_net = build_model("mlp", (6,), 3, hidden=[4, 4])
    channels = MaskedNetwork(channel_net, torch.tensor([1.0, 0.0, 0.0, 1.0]), layer="hidden.0")
    assert channels(x).features[0][:, 1:3].eq(0).all()
    assert masked.masked_fraction == pytest.approx(2 / 6)


@pytest.mark.parametrize(("gap", "shared", "specific"), [(0.5, 10, 10), (0.2, 16, 4), (1.0, 0, 20)])
def test_oracle_masks_take_exactly_the_known_columns(gap, shared, specific):
    dm = SyntheticDataModule(gap=gap, n_samples=200, n_train=100)
    sets = dm.oracle_feature_sets()
    keep = oracle_keep_mask("oracle_specific", (50,), sets)
    assert (keep == 0).nonzero().flatten().tolist() == list(range(20 - specific, 20))
    keep = oracle_keep_mask("oracle_shared", (50,), sets)
    assert (keep == 0).nonzero().flatten().tolist() == list(range(shared))
    # the columns are what the data says: xa's specific columns are informative columns the
    # student's xb does not carry, its shared ones equal xb's columns
    dm.setup()
    train = dm.split_tensors("train")
    window, shift = 20, round(20 * gap)
    for col in sets["shared"].tolist():
        torch.testing.assert_close(train["xa"][:, col], train["xb"][:, col + shift])
    assert len(sets["noise"]) == 30 and sets["noise"].min() == window
