"""The mask sections of a run config: defaults, checks, and where the mask applies."""

from __future__ import annotations

import pytest

from ntdh_bench.masking import resolve_feature_mask, resolve_sample_mask
from ntdh_bench.validation import ConfigError


def test_feature_mask_defaults_to_the_papers_reading_and_a_retrained_teacher():
    spec = resolve_feature_mask({"kind": True, "ratio": "0.5"}, seed=3)  # YAML's bare true
    assert spec["kind"] == "true" and spec["ratio"] == 0.5 and spec["seed"] == 3
    assert spec["score"] == "permuted" and spec["teacher"] == "retrain"
    assert resolve_feature_mask(spec, seed=9) == spec  # idempotent: the seed is already there


def test_hidden_layer_masks_apply_to_the_scored_network_only():
    assert resolve_feature_mask({"layer": "fc.1"}, 0)["teacher"] == "scored"
    with pytest.raises(ConfigError, match="teacher must be 'scored'"):
        resolve_feature_mask({"layer": "fc.1", "teacher": "retrain"}, 0)


def test_oracle_masks_have_no_ratio_and_no_layer():
    assert resolve_feature_mask({"kind": "oracle_specific", "ratio": 0.25}, 0)["ratio"] is None
    with pytest.raises(ConfigError, match="masks input columns"):
        resolve_feature_mask({"kind": "oracle_shared", "layer": "hidden.0"}, 0)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"kind": "biggest"}, r"feature_mask\.kind"),
        ({"ratoi": 0.5}, r"feature_mask\.ratoi: unknown option; did you mean 'ratio'"),
        ({"ratio": 1.0}, r"feature_mask\.ratio: Input should be less than 1"),
        ({"score": "drop"}, r"feature_mask\.score"),
        ({"saliency": {"epochs": 0}}, r"feature_mask\.saliency\.epochs"),
        ({"patch": [2, 2], "layer": "hidden.0"}, "cannot go with 'layer'"),
    ],
)
def test_bad_feature_mask_options_name_the_entry(section, message):
    with pytest.raises(ConfigError, match=message):
        resolve_feature_mask(section, 0)


def test_sample_mask_checks_its_options():
    assert resolve_sample_mask({"kind": "pssm", "ratio": 0.0}, 2)["seed"] == 2
    with pytest.raises(ConfigError, match=r"sample_mask\.T"):
        resolve_sample_mask({"T": 0}, 0)
