"""Teachers and Algorithm 1's cached parts: identity, reuse, masks, and a corrupt cache."""

from __future__ import annotations

import pytest
import torch

from ntdh_bench.builders import build_run_datamodule
from ntdh_bench.config import dataset_config, run_config
from ntdh_bench.masking import MaskedNetwork
from ntdh_bench.runner import RunEnv, execute_run
from ntdh_bench.teachers import (
    cached_mask,
    load_or_train_joint,
    prepare_teacher,
    teacher_identity,
)
from ntdh_bench.training import quiet_lightning

TINY = ["teacher.epochs=2", "student.epochs=2", "dataset.n_samples=600", "dataset.n_train=400"]
SALIENCY = {"saliency": {"epochs": 2, "repeats": 2}}


def _base():
    return dataset_config("synthetic", overrides=TINY)


def _kd(mask=None, seed=0):
    extra = {"feature_mask": {**SALIENCY, **mask}} if mask else {}
    return run_config(_base(), "kd", seed, {"gap": 0.5}, **extra)


def test_teacher_identity_depends_on_the_mask_only_when_the_teacher_is_retrained():
    plain = _kd()
    retrained = _kd({"kind": "true", "ratio": 0.25})
    fed = _kd({"kind": "true", "ratio": 0.25, "teacher": "feed"})
    assert teacher_identity(fed) == teacher_identity(plain)
    assert teacher_identity(retrained) != teacher_identity(plain)
    assert teacher_identity(retrained)["feature_mask"]["ratio"] == 0.25
    assert teacher_identity(_kd({"kind": "true", "ratio": 0.5})) != teacher_identity(retrained)
    scored = _kd({"kind": "true", "ratio": 0.25, "teacher": "scored"})
    assert "scored_f_a" in teacher_identity(scored)


def test_feature_masked_runs_retrain_the_teacher_unless_only_fed(tmp_path):
    env = RunEnv(runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache")
    mask = {"kind": "random", "ratio": 0.5}
    with quiet_lightning():
        plain = execute_run(_kd(), env)
        teachers = tmp_path / "cache" / "teachers"
        assert len(list(teachers.glob("*/model.pt"))) == 1
        fed = execute_run(_kd({**mask, "teacher": "feed"}), env)
        assert len(list(teachers.glob("*/model.pt"))) == 1  # only fed the mask
        retrained = execute_run(_kd(mask), env)
    assert len(list(teachers.glob("*/model.pt"))) == 2
    keep = cached_mask(_kd(mask), tmp_path / "cache")
    assert int((keep == 0).sum()) == 25
    assert retrained.metrics["teacher/test/acc"] != plain.metrics["teacher/test/acc"]
    # the fed teacher is the plain one, but the teacher the student learnt from is masked
    assert fed.metrics["teacher/test/acc"] == plain.metrics["teacher/test/acc"]
    assert fed.metrics["test/teacher_acc"] != plain.metrics["test/teacher_acc"]
    assert not (tmp_path / "cache" / "saliency").exists()  # random masks need no saliency


def test_a_hidden_layer_mask_masks_the_scored_network_itself(tmp_path):
    env = RunEnv(runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache")
    config = _kd({"kind": "true", "ratio": 0.25, "layer": "hidden.0"})
    dm = build_run_datamodule(config)
    with quiet_lightning():
        teacher = prepare_teacher(config, dm, env)
    f_a, _, _ = load_or_train_joint(config, dm, env)  # from the cache
    got, expected = teacher.network.state_dict(), f_a.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)  # the same weights, bitwise
    (mask,) = teacher.callbacks
    assert mask.layer == "hidden.0" and int((mask.keep == 0).sum()) == 4  # floor(0.25 * 16)
    assert not any((tmp_path / "cache" / "teachers").glob("*/model.pt"))  # nothing retrained


def test_a_corrupt_cached_teacher_is_moved_aside_and_retrained(tmp_path, caplog):
    env = RunEnv(runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache")
    with quiet_lightning():
        first = execute_run(_kd(), env)
        (weights,) = (tmp_path / "cache" / "teachers").glob("*/model.pt")
        weights.write_bytes(weights.read_bytes()[:100])  # truncated
        again = execute_run(_kd(), env)
    assert again.metrics["teacher/test/acc"] == first.metrics["teacher/test/acc"]
    assert "unusable" in caplog.text and str(weights.parent) in caplog.text
    assert any((tmp_path / "cache" / "teachers" / ".bad").iterdir())


def test_joint_pair_and_saliency_are_computed_once_per_identity(tmp_path, monkeypatch):
    env = RunEnv(runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache")
    config = _kd({"kind": "true", "ratio": 0.25})
    dm = build_run_datamodule(config)
    with quiet_lightning():
        prepare_teacher(config, dm, env)

    def fail(*args, **kwargs):
        raise AssertionError("recomputed a cached result")

    monkeypatch.setattr("ntdh_bench.teachers.joint_train", fail)
    monkeypatch.setattr("ntdh_bench.teachers.compute_saliency", fail)
    with quiet_lightning():
        for kind in ("true", "false"):  # same pair and saliency, another mask
            prepared = prepare_teacher(_kd({"kind": kind, "ratio": 0.25}), dm, env)
            assert isinstance(prepared.network, MaskedNetwork)
        with pytest.raises(AssertionError, match="recomputed"):
            prepare_teacher(_kd({"kind": "true", "ratio": 0.25}, seed=1), dm, env)
