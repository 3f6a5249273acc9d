"""Figs. 6, 8 and 13 end to end on tiny synthetic data: outputs, verdicts, resume, errors."""

from __future__ import annotations

import pytest

from experiments.mask_sweep import MaskSweep
from experiments.weight_sweep import WeightSweep
from ntdh_bench.callbacks import curve

TINY = [
    "--set", "teacher.epochs=2", "--set", "student.epochs=2",
    "--set", "dataset.n_samples=500", "--set", "dataset.n_train=300",
    "--set", "mask_sweep.feature_mask.saliency.epochs=2",
    "--set", "mask_sweep.feature_mask.saliency.repeats=2",
]  # fmt: skip


def test_weight_sweep_writes_both_panels_tables_and_the_paired_verdicts(tmp_path, capsys, out_dirs):
    argv = ["--dataset", "synthetic", "--gaps", "0", "1", "--values", "0", "8", "--seeds", "2"]
    records = WeightSweep.main([*argv, *TINY, *out_dirs])
    # per seed (2) and gap (2): teacher, no-KD, (alpha, beta) in {(0,1), (8,1), (1,0), (1,8), (1,1)}
    assert len(records) == 2 * 2 * 7
    kd = [r for r in records if r["config"]["role"] == "kd"]
    assert {(r["config"]["distiller"]["alpha"], r["config"]["distiller"]["beta"]) for r in kd} == {
        (0.0, 1.0),
        (8.0, 1.0),
        (1.0, 0.0),
        (1.0, 8.0),
        (1.0, 1.0),
    }
    assert all(r["config"]["distiller"]["name"] == "decoupled" for r in kd)
    out = tmp_path / "results" / "fig6"
    for name in ("fig6.md", "fig6.csv", "fig6.tex", "fig6.png", "verdicts.md", "verdicts.json"):
        assert (out / name).stat().st_size > 0, name
    printed = capsys.readouterr().out
    assert "larger beta hurts at gap 1: beta = 0 " in printed
    assert "KD falls below the no-KD student at gap 1 (negative transfer)" in printed
    assert "paired difference" in printed
    lines = (out / "runs.jsonl").read_text().count("\n")
    WeightSweep.main([*argv, *TINY, *out_dirs])  # a rerun runs nothing
    assert (out / "runs.jsonl").read_text().count("\n") == lines


@pytest.mark.parametrize("mask", ["feature", "sample"])
def test_mask_sweep_writes_fig8_fig13_and_the_paired_verdicts(tmp_path, capsys, mask, out_dirs):
    argv = ["--dataset", "synthetic", "--mask", mask, "--gaps", "0.5", "--ratios", "0.25", "0.5"]
    records = MaskSweep.main([*argv, "--seeds", "2", *TINY, *out_dirs])
    extra = 1 if mask == "sample" else 2  # pssm; or the two oracle masks
    assert len(records) == 2 * (3 + 2 * 3 + extra)  # seeds x (teacher, no-KD, KD, masked)
    masked = [r for r in records if r["config"].get(f"{mask}_mask")]
    kinds = {r["config"][f"{mask}_mask"]["kind"] for r in masked}
    assert kinds == {"true", "false", "random"} | (
        {"pssm"} if mask == "sample" else {"oracle_specific", "oracle_shared"}
    )
    out = tmp_path / "results" / ("fig8" if mask == "feature" else "mask_sweep_synthetic_sample")
    stem = "fig8" if mask == "feature" else "mask_sweep"
    for name in (f"{stem}.md", f"{stem}.csv", f"{stem}.tex", f"{stem}.png", "fig13.png"):
        assert (out / name).stat().st_size > 0, name
    printed = capsys.readouterr().out
    reading = " (permuted reading)" if mask == "feature" else ""
    for claim in (
        "`true` mask beats unmasked KD",
        "`true` beats `random`",
        "`random` beats `false`",
    ):
        assert f"{claim} at ratio 0.25 at gap 0.5{reading}:" in printed
    assert "Fig. 13: the true mask (0.25) lowers the NCJSD over training" in printed
    kd = next(r for r in records if r["config"]["role"] == "kd")
    assert len(curve(kd["metrics"], "val/ncjsd")) == 2  # Fig. 13's per-epoch curves
    if mask == "feature":
        teachers = list((tmp_path / "cache" / "teachers").glob("*/model.pt"))
        assert len(teachers) == 2 * (1 + 2 * 3 + 2)  # the plain teacher and one per mask
        assert len(list((tmp_path / "cache" / "saliency").glob("*/meta.json"))) == 2  # per seed
        assert len(list((tmp_path / "cache" / "joint").glob("*/meta.json"))) == 2  # per seed
        assert all("test/teacher_acc" in r["metrics"] for r in masked)
    else:
        fractions = [curve(r["metrics"], "train/masked_fraction") for r in masked]
        assert all(f for f in fractions)


def test_sweeps_refuse_a_dataset_without_config(out_dirs, capsys):
    for experiment in (WeightSweep, MaskSweep):
        with pytest.raises(SystemExit):
            experiment.main(["--dataset", "nosuchdata", *out_dirs])
        assert "invalid choice: 'nosuchdata'" in capsys.readouterr().err


@pytest.mark.parametrize(("option", "site"), [([], "retrain"), (["feed"], "feed")])
def test_mask_sweep_configs_record_where_the_mask_applies(out_dirs, option, site):
    argv = ["--seeds", "1", "--gaps", "0.5", "--ratios", "0.5", *TINY, *out_dirs]
    if option:
        argv += ["--set", f"mask_sweep.feature_mask.teacher={option[0]}"]
    experiment = MaskSweep(MaskSweep.parser().parse_args(argv))
    masked = [s.config for s in experiment.specs() if s.config.get("feature_mask")]
    assert len(masked) == 3 + 2  # true / random / false at 0.5, and the two oracles
    assert all(c["feature_mask"]["teacher"] == site for c in masked)


def test_mask_sweep_runs_both_readings_and_shares_the_random_mask(out_dirs):
    argv = ["--seeds", "1", "--gaps", "0.5", "--ratios", "0.5", "--scores", "permuted", "ablation"]
    experiment = MaskSweep(MaskSweep.parser().parse_args([*argv, *TINY, *out_dirs]))
    masked = [s.config["feature_mask"] for s in experiment.specs() if s.config.get("feature_mask")]
    scored = {(m["kind"], m["score"]) for m in masked if m["kind"] in ("true", "false")}
    assert scored == {(k, r) for k in ("true", "false") for r in ("permuted", "ablation")}
    assert sum(m["kind"] == "random" for m in masked) == 1
