"""The runner's per-process reuse of in-memory datamodules across runs."""

from __future__ import annotations

import torch

from ntdh_bench.config import dataset_config, run_config
from ntdh_bench.runner import run_datamodule

TINY = ["dataset.n_samples=600", "dataset.n_train=400"]


def test_runs_with_the_same_data_and_seed_share_a_datamodule_and_no_other_runs_do():
    # Red if the cache ignored the seed (a run would get another seed's batch order), the data
    # options (another gap's data), or kept the last run's trainer attached (its device).
    base = dataset_config("synthetic", overrides=TINY)
    teacher = run_config(base, "teacher", 0, dataset={"gap": 0.5})
    student = run_config(base, "student", 0, dataset={"gap": 0.5})
    dm = run_datamodule(teacher)
    dm.trainer = object()
    again = run_datamodule(student)
    assert again is dm and again.trainer is None
    other_seed = run_datamodule(run_config(base, "teacher", 1, dataset={"gap": 0.5}))
    other_gap = run_datamodule(run_config(base, "teacher", 0, dataset={"gap": 0.0}))
    assert other_seed is not dm and other_gap is not dm
    assert other_seed.seed == 1 and dm.seed == 0
    a, b = other_gap.split_tensors("train"), dm.split_tensors("train")
    assert not all(torch.equal(a[k], b[k]) for k in ("xa", "xb"))


def test_kept_datamodules_stay_within_the_memory_budget(monkeypatch):
    import ntdh_bench.runner as runner

    monkeypatch.setattr(runner, "_DATAMODULES", type(runner._DATAMODULES)())
    base = dataset_config("synthetic", overrides=TINY)
    configs = [run_config(base, "teacher", s, dataset={"gap": 0.5}) for s in range(3)]
    first = run_datamodule(configs[0])
    assert run_datamodule(configs[0]) is first  # within the budget: kept
    one = runner._tensor_bytes(first)
    monkeypatch.setattr(runner, "_DATAMODULES_BYTES", 2 * one)
    for config in configs[1:]:
        run_datamodule(config)
    assert len(runner._DATAMODULES) == 2  # the oldest went; the budget holds two
    assert run_datamodule(configs[0]) is not first
