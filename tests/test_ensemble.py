"""Vectorised ensembles: members train as the same runs alone would, and are recorded so."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from datamodules.base import TensorBatchLoader
from experiments.gap_sweep import GapSweep
from models import MLP
from ntdh_bench.builders import build_run_datamodule
from ntdh_bench.checkpointing import resumable_checkpoint
from ntdh_bench.config import apply_overrides, dataset_config, resolve_run_config, run_config
from ntdh_bench.distillers import build_distiller
from ntdh_bench.ensemble import (
    EnsembleModule,
    MemberBatches,
    StackedSplit,
    ensemble_key,
    execute_ensemble,
    plan_tasks,
)
from ntdh_bench.masking import MaskedNetwork
from ntdh_bench.runner import RunEnv, execute_run
from ntdh_bench.teachers import prepare_teacher
from ntdh_bench.training import DeviceConfig, make_trainer, quiet_lightning

TINY = ["teacher.epochs=2", "student.epochs=2", "dataset.n_samples=600", "dataset.n_train=400"]
CELLS = [(0.0, 0), (1.0, 0), (0.0, 1)]  # (gap, seed): members differ in data and in seed


def _configs(role: str, overrides: list[str] = (), distiller: str | None = None) -> list[dict]:
    base = apply_overrides(dataset_config("synthetic"), [*TINY, *overrides])
    if distiller is not None:  # another method: its own options, at their defaults
        base["distiller"] = {"name": distiller}
    return [
        resolve_run_config(run_config(base, role, s, {"gap": g, "data_seed": s})) for g, s in CELLS
    ]


@pytest.mark.parametrize(
    "overrides",
    [[], ["distiller.name=decoupled", "distiller.alpha=0.5", "distiller.beta=4.0"]],
    ids=["kd", "decoupled"],
)
def test_members_give_the_numbers_of_the_same_runs_alone(tmp_path, overrides):
    # Red if a member read another member's data or batch order, if the distillation term or
    # its weights were dropped, or if teacher and student were swapped in the divergences.
    alone_env = RunEnv(tmp_path / "r1", tmp_path / "c1")
    together_env = RunEnv(tmp_path / "r2", tmp_path / "c2")
    for role in ("teacher", "student", "kd"):
        configs = _configs(role, overrides)
        alone = [execute_run(c, alone_env).metrics for c in configs]
        together = execute_ensemble(configs, together_env)
        for single, member in zip(alone, together, strict=True):
            assert not isinstance(member, Exception), member
            assert set(member.metrics) == set(single), set(member.metrics) ^ set(single)
            for name, value in single.items():
                assert member.metrics[name] == pytest.approx(value, abs=1e-5), (role, name)
        if role == "kd":
            divergences = [m.metrics["test/kl"] for m in together]
            assert len(set(divergences)) == len(divergences)  # the members did differ
    # every teacher the ensemble trained is in the cache, readable as a run alone reads it
    assert len(list((tmp_path / "c2" / "teachers").glob("*/model.pt"))) == len(CELLS)


@pytest.mark.parametrize("distiller", ["dkd", "rkd", "pkt", "sp"])
def test_members_distil_features_and_relations_as_alone(tmp_path, distiller):
    # RKD, PKT and SP read the teacher's embedding / last feature map: red if a member got
    # another member's (or no) teacher features.
    env = RunEnv(tmp_path / "r", tmp_path / "c")
    configs = _configs("kd", distiller=distiller)
    alone = [execute_run(c, env).metrics for c in configs]
    together = execute_ensemble(configs, RunEnv(tmp_path / "r2", tmp_path / "c"))
    for single, member in zip(alone, together, strict=True):
        assert member.metrics == pytest.approx(single, abs=1e-5)


def test_member_batches_follow_the_order_of_each_run_alone():
    loader = MemberBatches(10, 4, seeds=[3, 7])
    loader.set_epoch(2)
    batches = list(loader)
    assert [tuple(b.shape) for b in batches] == [(2, 4), (2, 4), (2, 2)]
    for k, seed in enumerate((3, 7)):
        alone = TensorBatchLoader({"i": torch.arange(10)}, 4, shuffle=True, seed=seed)
        alone.sampler.set_epoch(2)
        assert torch.equal(torch.cat([b[k] for b in batches]), torch.cat([b["i"] for b in alone]))


def _tiny_module(x: torch.Tensor, epochs_sink=None) -> EnsembleModule:
    torch.manual_seed(0)
    networks = [MLP(5, 3, hidden=(4,)) for _ in range(len(x))]
    y = torch.arange(x.shape[1]).remainder(3).expand(len(x), -1).contiguous()
    teacher = torch.randn(len(x), x.shape[1], 3, generator=torch.Generator().manual_seed(1))
    splits = {s: StackedSplit(x, y, teacher) for s in ("train", "val", "test")}
    return EnsembleModule(
        networks, splits, seeds=list(range(len(x))), batch_size=8, eval_batch_size=16,
        distiller=build_distiller("kd", T=2.0), lam=0.5, lr=0.01, sink=epochs_sink,
    )  # fmt: skip


def _fit(module: EnsembleModule, epochs: int, **kwargs) -> None:
    with quiet_lightning():
        make_trainer(epochs, DeviceConfig(), None, limit_val_batches=0, **kwargs).fit(module)


def test_a_member_whose_loss_is_not_finite_fails_alone():
    x = torch.randn(2, 24, 5, generator=torch.Generator().manual_seed(2))
    broken = x.clone()
    broken[1, 3, 0] = float("nan")
    healthy, mixed = _tiny_module(x), _tiny_module(broken)
    _fit(healthy, 2)
    _fit(mixed, 2)
    assert mixed.errors[0] is None and "train/loss is nan" in mixed.errors[1]
    assert healthy.errors == [None, None]
    for name, value in healthy.member_state(0).items():  # member 0 did not notice
        assert torch.allclose(mixed.member_state(0)[name], value, atol=1e-6), name


class _StopAfter(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("killed")


def test_an_interrupted_ensemble_resumes_to_the_uninterrupted_result(tmp_path):
    x = torch.randn(2, 24, 5, generator=torch.Generator().manual_seed(3))
    straight = _tiny_module(x)
    _fit(straight, 4)
    first = _tiny_module(x)
    with pytest.raises(RuntimeError, match="killed"):
        _fit(first, 4, checkpoint_dir=tmp_path, checkpoint_interval_s=0, callbacks=[_StopAfter(1)])
    resumed = _tiny_module(x)
    with quiet_lightning():
        trainer = make_trainer(4, DeviceConfig(), None, limit_val_batches=0)
        trainer.fit(resumed, ckpt_path=resumable_checkpoint(tmp_path))
    for k in range(2):
        for name, value in straight.member_state(k).items():
            assert torch.allclose(resumed.member_state(k)[name], value, atol=1e-6), name
    assert resumed.history == straight.history and len(resumed.history[0]["val/acc"]) == 4


def test_only_runs_that_differ_in_seed_and_data_cell_share_a_key():
    kd = _configs("kd")
    assert len({ensemble_key(c) for c in kd}) == 1
    assert ensemble_key(_configs("student")[0]) != ensemble_key(kd[0])
    assert ensemble_key(_configs("kd", ["student.lam=0.7"])[0]) != ensemble_key(kd[0])
    masked = {**kd[0], "sample_mask": {"kind": "true", "ratio": 0.25}}
    crd = _configs("kd", ["distiller.name=crd"])[0]
    assert ensemble_key(masked) is None and ensemble_key(crd) is None


def test_tasks_keep_the_sweep_order_and_give_every_worker_an_ensemble():
    runs = [(c, f"{c['role']}{i}") for i, c in enumerate(_configs("teacher") + _configs("kd"))]
    alone = ({**runs[0][0], "sample_mask": {"kind": "true", "ratio": 0.25}}, "masked")
    tasks = plan_tasks([*runs, alone], lambda run: run[0], workers=2)
    names = [[r[1] for r in t] if isinstance(t, list) else t[1] for t in tasks]
    assert names == [["teacher0", "teacher1"], "teacher2", ["kd3", "kd4"], "kd5", "masked"]
    assert len(plan_tasks(runs, lambda run: run[0], workers=1)) == 2


def test_a_sweep_records_the_same_runs_with_and_without_ensembles(tmp_path, tiny_args, dirs_under):
    # Red if ensembles changed what is recorded: run ids, statuses, metric names or values,
    # or the TensorBoard folders of the runs.
    argv = ["--seeds", "2", "--gaps", "0", "1", *tiny_args]
    GapSweep.main([*argv, *dirs_under(tmp_path / "together")])
    GapSweep.main([*argv, "--no-ensemble", *dirs_under(tmp_path / "alone")])

    def records(root):
        lines = (root / "results" / "fig3" / "runs.jsonl").read_text().splitlines()
        return {r["run_id"]: r for r in map(json.loads, lines)}

    together, alone = records(tmp_path / "together"), records(tmp_path / "alone")
    assert set(together) == set(alone) and len(alone) == 12
    assert any("ensemble_members" in r["timing"] for r in together.values())
    assert not any("ensemble_members" in r["timing"] for r in alone.values())
    for run_id, record in alone.items():
        assert together[run_id]["status"] == record["status"] == "done"
        metrics = together[run_id]["metrics"]
        assert metrics == pytest.approx(record["metrics"], abs=1e-5)
    folders = {p.name for p in (tmp_path / "alone" / "runs" / "fig3").iterdir()}
    assert {p.name for p in (tmp_path / "together" / "runs" / "fig3").iterdir()} == folders


@pytest.mark.parametrize("teacher", ["retrain", "feed"])
def test_feature_masked_students_train_together_as_they_train_alone(
    tmp_path, tiny_args, dirs_under, teacher
):
    # Red if an ensemble member distilled from the unmasked teacher (feed: the mask wraps the
    # cached teacher; retrain: the teacher retrained on masked input), or from another
    # member's mask.
    from experiments.mask_sweep import MaskSweep

    argv = [
        "--seeds", "1", "--gaps", "0.5", "--ratios", "0.5", *tiny_args,
        "--set", "mask_sweep.feature_mask.saliency.epochs=2",
        "--set", "mask_sweep.feature_mask.saliency.repeats=2",
        "--set", f"mask_sweep.feature_mask.teacher={teacher}",
    ]  # fmt: skip
    together = MaskSweep.main([*argv, *dirs_under(tmp_path / "together")])
    alone = {
        r["run_id"]: r
        for r in MaskSweep.main([*argv, "--no-ensemble", *dirs_under(tmp_path / "alone")])
    }
    masked = [r for r in together if r["config"].get("feature_mask")]
    assert len(masked) == 5 and any("ensemble_members" in r["timing"] for r in masked)
    assert len({r["metrics"]["test/teacher_acc"] for r in masked}) > 1  # masks differ
    for record in together:
        assert record["metrics"] == pytest.approx(alone[record["run_id"]]["metrics"], abs=1e-5)
    # the teachers the ensemble trained were read back from the cache, never retrained alone
    assert not (tmp_path / "together" / "cache" / "teachers" / ".bad").exists()
    logs = [p.name for p in (tmp_path / "together" / "runs" / "teachers").iterdir()]
    masked_logs = [name for name in logs if name.startswith("teacher-masked-")]
    assert len(masked_logs) == (5 if teacher == "retrain" else 0) and len(logs) == len(set(logs))


def test_teachers_retrained_on_masked_input_train_together_as_alone(tmp_path, tiny_args):
    # Red if a member trained on its unmasked input, on another member's mask, or were saved
    # in a form the teacher cache cannot load into a MaskedNetwork.
    from experiments.mask_sweep import MaskSweep

    argv = ["--seeds", "2", "--gaps", "0", "1", "--ratios", "0.5", *tiny_args]
    sweep = MaskSweep(MaskSweep.parser().parse_args(argv))
    configs = [
        resolve_run_config({**s.config, "role": "teacher"})
        for s in sweep.specs()
        if (s.config.get("feature_mask") or {}).get("kind") == "random"
    ]
    assert len(configs) == 4 and len({ensemble_key(c) for c in configs}) == 1
    alone = [execute_run(c, RunEnv(tmp_path / "r1", tmp_path / "c1")).metrics for c in configs]
    env = RunEnv(tmp_path / "r2", tmp_path / "c2")
    together = execute_ensemble(configs, env)
    for single, member in zip(alone, together, strict=True):
        assert member.metrics == pytest.approx(single, abs=1e-5)
    for config in configs:  # each loads as a MaskedNetwork, as a run alone would read it
        network = prepare_teacher(config, build_run_datamodule(config), env).network
        assert isinstance(network, MaskedNetwork) and 0 < network.masked_fraction < 1
    assert not (tmp_path / "c2" / "teachers" / ".bad").exists()


def test_members_too_large_to_gain_train_alone(tmp_path, monkeypatch):
    import ntdh_bench.ensemble.runner as ensemble_runner

    monkeypatch.setattr(ensemble_runner, "MAX_MEMBER_PARAMETERS", 10)
    configs = _configs("student")[:2]
    results = execute_ensemble(configs, RunEnv(tmp_path / "r", tmp_path / "c"))
    alone = [execute_run(c, RunEnv(tmp_path / "r2", tmp_path / "c2")) for c in configs]
    for result, single in zip(results, alone, strict=True):
        assert "ensemble_members" not in result.timing
        assert result.metrics == single.metrics  # the same code path: the same bits


class _SubclassedMLP(MLP):
    """An MLP the fast path does not recognise: it goes through vmap(functional_call)."""

    def forward(self, x: torch.Tensor):
        return super().forward(x)


def test_the_batched_mlp_forward_equals_vmap_of_the_network():
    torch.manual_seed(4)
    nets = [MLP(6, 3, hidden=(5, 4)) for _ in range(3)]
    twins = [_SubclassedMLP(6, 3, hidden=(5, 4)) for _ in range(3)]
    for net, twin in zip(nets, twins, strict=True):
        twin.load_state_dict(net.state_dict())
    x = torch.randn(3, 7, 6)
    split = {s: StackedSplit(x, torch.zeros(3, 7, dtype=torch.long)) for s in ("train", "val")}
    fast, generic = (EnsembleModule(n, split, [0, 1, 2], 4, 4) for n in (nets, twins))
    a, b = (m.forward_all(m.member_params(), x) for m in (fast, generic))
    assert torch.allclose(a.logits, b.logits, atol=1e-6)
    assert all(torch.allclose(f, g, atol=1e-6) for f, g in zip(a.features, b.features, strict=True))
    assert torch.allclose(a.embedding, b.embedding, atol=1e-6)
    assert torch.allclose(a.logits[1], nets[1](x[1]).logits, atol=1e-6)  # member 1 is net 1


def test_full_batch_sgd_members_match_alone(tmp_path):
    # The released protocol: one full batch per epoch (taken in order, no gather) and SGD.
    base = dataset_config("synthetic", protocol="released", overrides=TINY)
    base = apply_overrides(base, ["teacher.epochs=5", "student.epochs=5", "student.val_every=2"])
    for role in ("teacher", "kd"):
        configs = [
            resolve_run_config(run_config(base, role, s, {"gap": g, "data_seed": s}))
            for g, s in CELLS[:2]
        ]
        alone = [execute_run(c, RunEnv(tmp_path / "r1", tmp_path / "c1")).metrics for c in configs]
        together = execute_ensemble(configs, RunEnv(tmp_path / "r2", tmp_path / "c2"))
        for single, member in zip(alone, together, strict=True):
            assert member.metrics == pytest.approx(single, abs=1e-6)
    loader = TensorBatchLoader({"i": torch.arange(5)}, 8, shuffle=True, seed=1)
    assert [b["i"].tolist() for b in loader] == [[0, 1, 2, 3, 4]]  # a full batch, in order


def test_runs_that_cannot_train_together_are_refused(tmp_path):
    env = RunEnv(tmp_path / "r", tmp_path / "c")
    mixed = [_configs("kd")[0], _configs("kd", ["student.lam=0.7"])[1]]
    with pytest.raises(ValueError, match="differ only in seed, data cell and teacher mask"):
        execute_ensemble(mixed, env)
    masked = {**_configs("kd")[0], "sample_mask": {"kind": "true", "ratio": 0.25}}
    with pytest.raises(ValueError, match="sample-masked runs train alone"):
        execute_ensemble([masked, _configs("kd")[1]], env)


def test_members_trained_in_cache_sized_groups_match_all_at_once(monkeypatch):
    # Red if a group read another group's rows, parameters or teacher outputs, or if the
    # groups' losses were concatenated out of member order (each member's logged means).
    import ntdh_bench.ensemble.module as ensemble_module

    x = torch.randn(5, 24, 5, generator=torch.Generator().manual_seed(4))
    logged: dict[str, list] = {"together": [], "grouped": []}
    together = _tiny_module(x, lambda k, m, step: logged["together"].append((k, step, m)))
    _fit(together, 2)
    monkeypatch.setattr(ensemble_module, "CHUNK_ROWS", 16)  # batches of 8 rows: groups of 2
    grouped = _tiny_module(x, lambda k, m, step: logged["grouped"].append((k, step, m)))
    _fit(grouped, 2)
    for k in range(5):
        for name, value in together.member_state(k).items():
            torch.testing.assert_close(grouped.member_state(k)[name], value, msg=name)
    assert len(logged["grouped"]) == len(logged["together"]) == 10
    for (k, step, mine), (k2, step2, theirs) in zip(*logged.values(), strict=True):
        assert (k, step) == (k2, step2) and mine.keys() == theirs.keys()
        assert list(mine.values()) == pytest.approx(list(theirs.values())), k
