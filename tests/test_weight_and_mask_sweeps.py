"""Figs. 6, 8 and 13 end to end on tiny synthetic data: outputs, verdicts, resume, errors."""

from __future__ import annotations

import pytest

from ntdh_bench.callbacks import curve

TINY = [
    "--set",
    "teacher.epochs=2",
    "--set",
    "student.epochs=2",
    "--set",
    "dataset.n_samples=500",
    "--set",
    "dataset.n_train=300",
    "--set",
    "mask_sweep.feature_mask.saliency.epochs=2",
    "--set",
    "mask_sweep.feature_mask.saliency.repeats=2",
]


def test_weight_sweep_writes_both_panels_tables_and_the_beta_verdict(
    tmp_path, capsys, experiment_script, out_dirs
):
    fig6 = experiment_script("weight_sweep").WeightSweep
    argv = ["--dataset", "synthetic", "--gaps", "0", "1", "--values", "0", "8", *TINY]
    records = fig6.main([*argv, *out_dirs])
    # per seed (2) and gap (2): teacher, no-KD, and (alpha, beta) in {(0,1), (8,1), (1,0), (1,8)}
    assert len(records) == 2 * 2 * 6
    kd = [r for r in records if r["config"]["role"] == "kd"]
    assert {(r["config"]["distiller"]["alpha"], r["config"]["distiller"]["beta"]) for r in kd} == {
        (0.0, 1.0),
        (8.0, 1.0),
        (1.0, 0.0),
        (1.0, 8.0),
    }
    assert all(r["config"]["distiller"]["name"] == "decoupled" for r in kd)
    out = tmp_path / "results" / "fig6"
    for name in ("fig6.md", "fig6.csv", "fig6.tex", "fig6.png", "verdicts.md"):
        assert (out / name).stat().st_size > 0, name
    printed = capsys.readouterr().out
    assert "larger beta hurts at gap 1: beta = 0:" in printed
    lines = (out / "runs.jsonl").read_text().count("\n")
    fig6.main([*argv, *out_dirs])  # a rerun runs nothing
    assert (out / "runs.jsonl").read_text().count("\n") == lines


@pytest.mark.parametrize("mask", ["feature", "sample"])
def test_mask_sweep_writes_fig8_fig13_and_the_ordering_verdict(
    tmp_path, capsys, mask, experiment_script, out_dirs
):
    fig8 = experiment_script("mask_sweep").MaskSweep
    argv = ["--dataset", "synthetic", "--mask", mask, "--gaps", "0.5", "--ratios", "0.25", "0.5"]
    records = fig8.main([*argv, *TINY, *out_dirs])
    pssm = 1 if mask == "sample" else 0
    assert len(records) == 2 * (3 + 2 * 3 + pssm)  # seeds x (teacher, no-KD, KD, masked)
    masked = [r for r in records if r["config"].get(f"{mask}_mask")]
    assert {r["config"][f"{mask}_mask"]["kind"] for r in masked} == {
        "true",
        "false",
        "random",
        *(["pssm"] if pssm else []),
    }
    out = tmp_path / "results" / ("fig8" if mask == "feature" else "mask_sweep_synthetic_sample")
    stem = "fig8" if mask == "feature" else "mask_sweep"
    for name in (f"{stem}.md", f"{stem}.csv", f"{stem}.tex", f"{stem}.png", "fig13.png"):
        assert (out / name).stat().st_size > 0, name
    printed = capsys.readouterr().out
    assert "`true` beats `random` beats `false` at ratios 0.25 and 0.5 at gap 0.5: ratio 0.25:" in (
        printed
    )
    assert "interpolated" not in printed
    kd = next(r for r in records if r["config"]["role"] == "kd")
    assert len(curve(kd["metrics"], "val/ncjsd")) == 2  # Fig. 13's per-epoch curves
    if mask == "feature":
        teachers = list((tmp_path / "cache" / "teachers").iterdir())
        assert len(teachers) == 2 * (1 + 2 * 3)  # the plain teacher and one per mask
        assert len(list((tmp_path / "cache" / "saliency").iterdir())) == 2  # one per seed
    else:
        fractions = [curve(r["metrics"], "train/masked_fraction") for r in masked]
        assert all(f for f in fractions)


def test_mask_sweep_interpolates_a_claim_ratio_missing_from_the_grid(
    tmp_path, capsys, experiment_script, out_dirs
):
    fig8 = experiment_script("mask_sweep").MaskSweep
    argv = ["--seeds", "1", "--gaps", "0.5", "--ratios", "0.2", "0.3", "0.5", *TINY]
    fig8.main([*argv, *out_dirs])
    assert "(interpolated between grid ratios)" in capsys.readouterr().out


def test_sweeps_name_the_missing_dataset_config(tmp_path, experiment_script, out_dirs):
    for script, cls in (("weight_sweep", "WeightSweep"), ("mask_sweep", "MaskSweep")):
        experiment = getattr(experiment_script(script), cls)
        with pytest.raises(SystemExit, match=r"no .*nosuchdata\.yaml.*synthetic"):
            experiment.main(["--dataset", "nosuchdata", *out_dirs])


def test_mask_sweep_configs_record_whether_the_teacher_is_retrained(
    tmp_path, experiment_script, out_dirs
):
    fig8 = experiment_script("mask_sweep").MaskSweep
    argv = ["--seeds", "1", "--gaps", "0.5", "--ratios", "0.5", *TINY, *out_dirs]
    for option, expected in (
        ([], True),
        (["--set", "mask_sweep.feature_mask.retrain_teacher=false"], False),
    ):
        experiment = fig8(fig8.parser().parse_args([*argv, *option]))
        masked = [s.config for s in experiment.specs() if s.config.get("feature_mask")]
        assert len(masked) == 3
        assert all(c["feature_mask"]["retrain_teacher"] is expected for c in masked)
