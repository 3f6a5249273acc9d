"""Every claim's verdict on hand-made records, ordered each way: holds / does not hold / not
shown (and not judged without data). Reversing any comparison turns one of these red."""

from __future__ import annotations

import pytest

from experiments.gap_sweep import GapSweep
from experiments.mask_sweep import MaskSweep
from experiments.table2 import Table2
from experiments.weight_sweep import WeightSweep
from ntdh_bench.claims import judge, paired_verdict
from ntdh_bench.report import Records

SEEDS = range(5)
# per-seed differences in the claimed direction: clearly above zero, below, or straddling it
ORDERS = {
    "holds": [1.0, 1.2, 0.9, 1.1, 1.0],
    "does not hold": [-1.0, -1.2, -0.9, -1.1, -1.0],
    "not shown": [1.0, -1.0, 0.5, -0.5, 0.1],
}


def record(seed: int, metrics: dict, **config) -> dict:
    return {"config": {"seed": seed, **config}, "metrics": metrics}


def experiment(cls, *argv: str):
    return cls(cls.parser().parse_args(list(argv)))


def status(verdicts, claim: str) -> str:
    (found,) = [v for v in verdicts if v.claim.startswith(claim)]
    return found.status


def test_judge_reads_the_interval_of_the_mean_difference():
    assert judge([1.0, 1.1, 0.9])[0] == "holds"
    assert judge([-1.0, -1.1, -0.9])[0] == "does not hold"
    assert judge([1.0, -1.0, 0.2])[0] == "not shown"
    assert judge([1.0])[0] == "not judged"
    verdict = paired_verdict("a beats b", {0: 1.0, 1: 2.0}, {}, ("a", "b"))
    assert verdict.status == "not judged" and "no finished runs for b" in verdict.evidence


@pytest.mark.parametrize("order", ORDERS)
def test_fig3_ncjsd_grows_faster_than_tcjsd(order):
    gaps = (0.0, 0.5, 1.0)
    records = []
    for seed, d in zip(SEEDS, ORDERS[order], strict=True):
        for g in gaps:  # intercepts opposite to the slopes: an intercept-for-slope bug flips it
            metrics = {"test/ncjsd": 0.0 + (0.1 + 0.05 * d) * g, "test/tcjsd": 0.3 + 0.1 * g}
            metrics["test/acc"] = 0.7
            records.append(record(seed, metrics, role="kd", dataset={"gap": g}))
            records.append(record(seed, {"test/acc": 0.7}, role="student", dataset={"gap": g}))
    fig3 = experiment(GapSweep, "--gaps", *map(str, gaps))
    assert status(fig3.verdicts(Records(records)), "NCJSD grows faster") == order


@pytest.mark.parametrize("order", ORDERS)
def test_fig3_kd_gain_falls_with_the_gap(order):
    gaps = (0.0, 0.5, 1.0)
    records = []
    for seed, d in zip(SEEDS, ORDERS[order], strict=True):
        for g in gaps:
            kd = {"test/acc": 0.9 - 0.1 * d * g, "test/ncjsd": 0.1, "test/tcjsd": 0.1}
            records.append(record(seed, kd, role="kd", dataset={"gap": g}))
            records.append(
                record(seed, {"test/acc": 0.7 + 0.01 * g}, role="student", dataset={"gap": g})
            )
    fig3 = experiment(GapSweep, "--gaps", *map(str, gaps))
    assert status(fig3.verdicts(Records(records)), "the KD student's gain") == order


def _weights(seed: int, gap: float, alpha: float, beta: float, acc: float) -> dict:
    distiller = {"name": "decoupled", "alpha": alpha, "beta": beta}
    return record(seed, {"test/acc": acc}, role="kd", dataset={"gap": gap}, distiller=distiller)


@pytest.mark.parametrize("order", ORDERS)
def test_fig6_larger_beta_hurts_and_kd_falls_below_no_kd(order):
    records = []
    for seed, d in zip(SEEDS, ORDERS[order], strict=True):
        records += [
            _weights(seed, 1.0, 1.0, 0.0, 0.70 + 0.05 * d),  # beta = 0
            _weights(seed, 1.0, 1.0, 8.0, 0.70),  # beta = 8
            _weights(seed, 1.0, 0.0, 1.0, 0.70),
            _weights(seed, 1.0, 8.0, 1.0, 0.70),
            _weights(seed, 1.0, 1.0, 1.0, 0.70 - 0.05 * d),  # plain KD
            record(seed, {"test/acc": 0.70}, role="student", dataset={"gap": 1.0}),
        ]
    fig6 = experiment(WeightSweep, "--gaps", "1", "--values", "0", "8")
    verdicts = fig6.verdicts(Records(records), "test/acc")
    assert status(verdicts, "larger beta hurts at gap 1") == order
    assert status(verdicts, "KD falls below the no-KD student") == order
    # |acc(beta 8) - acc(beta 0)| > 0 = |alpha's effect| whichever way beta moves it
    assert status(verdicts, "beta moves the student more than alpha") == "holds"


def _masked(seed: int, kind: str | None, ratio, acc: float, ncjsd: list[float] | None = None):
    metrics = {"test/acc": acc}
    for epoch, value in enumerate(ncjsd or []):
        metrics[f"history/val/ncjsd/{epoch:04d}"] = value
    config = {"role": "kd", "dataset": {"gap": 0.5}}
    if kind is not None:
        config["feature_mask"] = {"kind": kind, "ratio": ratio, "score": "permuted"}
    return record(seed, metrics, **config)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(
    ("claim", "better"),
    [
        ("`true` mask beats unmasked KD", "true"),
        ("`true` beats `random`", "true"),
        ("`random` beats `false`", "random"),
    ],
)
def test_fig8_mask_orderings(order, claim, better):
    """Only ``better`` moves, by the order's per-seed differences; the rest stay at 70%."""
    records = []
    for seed, d in zip(SEEDS, ORDERS[order], strict=True):
        for kind in (None, "true", "random", "false"):
            acc = 0.70 + (0.05 * d if kind == better else 0.0)
            records.append(_masked(seed, kind, None if kind is None else 0.25, acc))
        records.append(_masked(seed, "oracle_specific", None, 0.7))
    fig8 = experiment(MaskSweep, "--gaps", "0.5", "--ratios", "0.25")
    verdicts = fig8.verdicts(Records(records), "test/acc")
    assert status(verdicts, f"{claim} at ratio 0.25 at gap 0.5") == order


@pytest.mark.parametrize("order", ORDERS)
def test_fig13_the_true_mask_lowers_ncjsd_over_training(order):
    records = []
    for seed, d in zip(SEEDS, ORDERS[order], strict=True):
        records.append(_masked(seed, None, None, 0.7, [0.3, 0.2, 0.1]))
        masked = [0.3 - 0.05 * d, 0.2 - 0.05 * d, 0.1 - 0.05 * d]
        records.append(_masked(seed, "true", 0.25, 0.7, masked))
    fig8 = experiment(MaskSweep, "--gaps", "0.5", "--ratios", "0.25")
    verdicts = fig8.verdicts(Records(records), "test/acc")
    assert status(verdicts, "Fig. 13: the true mask") == order


@pytest.mark.parametrize("order", ORDERS)
def test_table2_orderings_per_method_and_over_methods(order, tmp_path):
    records = []
    for seed, d in zip(SEEDS, ORDERS[order], strict=True):
        for method in ("dkd", "sp"):
            for kind, acc in (
                (None, 0.70),
                ("true", 0.70 + 0.05 * d),
                ("random", 0.70),
                ("false", 0.70 - 0.05 * d),
            ):
                config = {"role": "kd", "distiller": {"name": method}}
                if kind is not None:
                    config["feature_mask"] = {"kind": kind, "ratio": 0.5}
                records.append(record(seed, {"test/acc": acc}, **config))
    table = experiment(Table2, "--dataset", "digits", "--methods", "dkd", "sp", "--ratios", "0.5")
    verdicts = table.verdicts(Records(records))
    for who in ("DKD", "SP", "Mean over methods"):
        assert status(verdicts, f"{who}: `true` beats unmasked KD at ratio 0.5") == order
        assert status(verdicts, f"{who}: `true` beats `random` at ratio 0.5") == order
        assert status(verdicts, f"{who}: `random` beats `false` at ratio 0.5") == order


def test_verdicts_from_failed_cells_are_not_judged():
    records = [record(s, {"test/acc": 0.7}, role="student", dataset={"gap": 1.0}) for s in SEEDS]
    fig6 = experiment(WeightSweep, "--gaps", "1", "--values", "0", "8")
    verdicts = fig6.verdicts(Records(records), "test/acc")  # every KD run failed
    assert {v.status for v in verdicts} == {"not judged"}
    assert all(
        "no finished runs" in v.evidence
        or "no finished" in v.evidence
        or "a weight cell" in v.evidence
        for v in verdicts
    )
