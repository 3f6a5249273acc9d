"""The one owner of run configs: complete resolution, identity, typed overrides."""

from __future__ import annotations

import inspect

import pytest
from pydantic import Field

from ntdh_bench import config as config_module
from ntdh_bench.config import (
    TrainSettings,
    apply_overrides,
    dataset_config,
    parse_value,
    resolve_run_config,
    run_config,
    run_id,
    validate_after_last_epoch,
)
from ntdh_bench.distillers import DISTILLERS
from ntdh_bench.validation import ConfigError


def _raw_kd() -> dict:
    return {
        "role": "kd",
        "seed": 0,
        "dataset": {"name": "synthetic", "gap": 0.5},
        "model": {"name": "mlp"},
        "teacher": {},
        "student": {},
        "distiller": {"name": "kd"},
        "feature_mask": {"kind": "true", "ratio": 0.25},
    }


def test_resolution_names_every_setting_and_is_idempotent():
    resolved = resolve_run_config(_raw_kd())
    assert resolved["dataset"]["n_samples"] == 10000  # the datamodule's default, filled in
    assert resolved["model"]["hidden"] == [16, 16]
    assert resolved["teacher"] == TrainSettings().model_dump()
    assert resolved["student"]["lam"] == 0.5 and resolved["distiller"]["T"] == 4.0
    assert resolved["feature_mask"]["saliency"]["repeats"] == 10
    assert resolved["protocol"] == "suite"
    assert resolve_run_config(resolved) == resolved
    assert run_id(resolved) == run_id(_raw_kd())


def test_changing_a_default_changes_the_run_id(monkeypatch):
    before = run_id(_raw_kd())

    class Slower(TrainSettings):
        momentum: float = Field(0.5, ge=0, lt=1)

    monkeypatch.setattr(config_module, "TrainSettings", Slower)
    assert run_id(_raw_kd()) != before


def test_a_teacher_config_holds_no_student_settings():
    teacher = resolve_run_config({**_raw_kd(), "role": "teacher"})
    assert set(teacher) == {
        "role",
        "seed",
        "protocol",
        "dataset",
        "model",
        "teacher",
        "feature_mask",
    }
    with pytest.raises(ConfigError, match="weighs a distillation term"):
        resolve_run_config({**_raw_kd(), "role": "student", "sample_mask": {"kind": "true"}})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"role": "boss"}, "role must be one of"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"protocol": "paper"}, "protocol must be one of"),
        ({"studnet": {}}, "studnet: unknown config section; did you mean 'student'"),
        ({"dataset": {"name": "synthetc"}}, "unknown dataset 'synthetc'; did you mean 'synthetic'"),
        ({"model": {"name": "mlp", "width": 3}}, r"model\.width: unknown option"),
        ({"distiller": {"name": "dkd", "alpha": -1.0}}, r"distiller\.alpha: a loss weight"),
    ],
)
def test_bad_configs_name_the_entry(change, message):
    with pytest.raises(ConfigError, match=message):
        resolve_run_config({**_raw_kd(), **change})


def test_overrides_parse_numbers_as_numbers():
    assert parse_value("1e-4") == 1e-4 and parse_value("3") == 3 and parse_value("[1, 2]") == [1, 2]
    assert parse_value("true") is True and parse_value("adam") == "adam"
    config = apply_overrides({"student": {"lr": 0.1}}, ["student.lr=5E-3", "distiller.T=2"])
    assert config == {"student": {"lr": 0.005}, "distiller": {"T": 2}}


def test_dataset_config_merges_full_protocol_quick_then_overrides():
    quick = dataset_config("digits", quick="table2", overrides=["teacher.epochs=3"])
    assert quick["teacher"]["epochs"] == 3  # --set wins over quick:
    assert dataset_config("digits", quick="table2")["teacher"]["epochs"] == 1
    assert dataset_config("synthetic", full=True)["teacher"]["epochs"] == 100
    with pytest.raises(ConfigError, match=r"there is no .*nosuch\.yaml"):
        dataset_config("nosuch")


def test_run_config_builds_resolved_configs_per_role():
    base = dataset_config("synthetic")
    kd = run_config(base, "kd", 1, {"gap": 0.2}, feature_mask={"kind": "random", "ratio": 0.5})
    assert kd == resolve_run_config(kd) and kd["feature_mask"]["seed"] == 1
    unimodal = run_config(base, "unimodal", 0, modality="xb")
    assert unimodal["modality"] == "xb" and "student" not in unimodal


@pytest.mark.parametrize(
    ("where", "func"),
    [
        *((f"model {n}", cls.from_shape) for n, cls in __import__("models").MODELS.items()),
        *(
            (f"dataset {n}", cls.__init__)
            for n, cls in __import__("datamodules").DATAMODULES.items()
        ),
        *((f"distiller {n}", cls.__init__) for n, cls in DISTILLERS.items()),
    ],
)
def test_every_registered_class_names_its_options_so_configs_can_check_them(where, func):
    kinds = {p.kind for p in inspect.signature(func).parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds, f"{where} hides options behind **kwargs"


def test_the_released_protocol_is_the_authors_training_and_part_of_the_run_identity():
    suite = run_config(dataset_config("synthetic"), "kd", 0, {"gap": 0.5})
    released = run_config(dataset_config("synthetic", protocol="released"), "kd", 0, {"gap": 0.5})
    assert released["protocol"] == "released" and suite["protocol"] == "suite"
    assert released["dataset"]["batch_size"] == 6000  # full batch
    student = released["student"]
    assert (student["optimizer"], student["lr"], student["momentum"]) == ("sgd", 0.01, 0.0)
    assert (released["student"]["lam"], released["student"]["ce_weight"]) == (1.0, 1.0)  # CE + KL
    assert released["distiller"]["T"] == 1.0 and released["student"]["epochs"] == 1000
    assert run_id(released) != run_id(suite)
    ravdess = run_config(dataset_config("ravdess", protocol="released"), "kd", 0)
    assert (ravdess["student"]["lam"], ravdess["student"]["ce_weight"]) == (1.0, 0.0)  # KD only
    mnist = dataset_config("mnist_m", protocol="released")
    assert mnist["dataset"]["noise"] == {"mnist": 4.0, "mnist_m": 1.0}
    with pytest.raises(ConfigError, match="no 'released' protocol"):
        dataset_config("nyu_ssc", protocol="released")


def test_validate_after_last_epoch_fills_only_what_the_config_leaves_open():
    config = {"teacher": {"epochs": 7}, "student": {"epochs": 9, "val_every": 1}, "model": {}}
    filled = validate_after_last_epoch(config)
    assert filled["teacher"]["val_every"] == 7  # once, after the last epoch
    assert filled["student"]["val_every"] == 1  # asked for: kept
    assert "val_every" not in config["teacher"]  # the input is not changed
    default = TrainSettings.model_fields["epochs"].default
    assert validate_after_last_epoch({"student": {}})["student"]["val_every"] == default
