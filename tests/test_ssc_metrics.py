"""SSC scores on hand-made volumes: completion IoU (occupied vs empty) and the mIoU of the
semantic classes, both over the evaluated voxels only; the monitor that logs them from a run,
and the runner's hook that adds it for the data that asks."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from datamodules import SyntheticDataModule
from datamodules.nyu_ssc import SSC_CLASSES, NYUSSCDataModule
from models import build_model
from ntdh_bench.config import dataset_config, run_config
from ntdh_bench.extra_metrics import metric_callbacks
from ntdh_bench.module import CrossModalKD
from ntdh_bench.runner import RunEnv, execute_run
from ntdh_bench.ssc_metrics import SSCMetrics, SSCMonitor


def _volumes() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    #                       0  1  2  3  4  5    6  7
    target = torch.tensor([0, 0, 1, 1, 2, 2, 255, 3]).view(1, 2, 2, 2)
    preds = torch.tensor([0, 1, 1, 2, 2, 2, 3, 0]).view(1, 2, 2, 2)
    valid = torch.ones(1, 2, 2, 2, dtype=torch.bool)
    return preds, target, valid


def test_scores_of_a_hand_made_volume():
    preds, target, valid = _volumes()
    metric = SSCMetrics(num_classes=4)
    metric.update(preds, target, valid)
    scores = metric.compute()
    # voxel 6 is unlabelled. occupied: target {2,3,4,5,7}, predicted {1,2,3,4,5}
    # tp = {2,3,4,5} = 4, fp = {1} = 1, fn = {7} = 1
    assert scores["completion_iou"].item() == pytest.approx(4 / 6)
    assert scores["completion_precision"].item() == pytest.approx(4 / 5)
    assert scores["completion_recall"].item() == pytest.approx(4 / 5)
    # class 1: tp {2}, fp {1}, fn {3} -> 1/3; class 2: tp {4,5}, fp {3} -> 2/3; class 3: 0
    iou = scores["iou"]
    assert iou[1:].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert scores["ssc_miou"].item() == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_voxels_outside_valid_do_not_count_and_logits_are_argmaxed():
    preds, target, valid = _volumes()
    valid.view(-1)[7] = False  # drop the missed class-3 voxel
    logits = torch.nn.functional.one_hot(preds, 4).movedim(-1, 1).float()
    metric = SSCMetrics(num_classes=4)
    metric.update(logits, target, valid)
    scores = metric.compute()
    assert scores["completion_iou"].item() == pytest.approx(4 / 5)
    assert math.isnan(scores["iou"][3].item())  # class 3 is now absent from both
    assert scores["ssc_miou"].item() == pytest.approx(0.5)


def test_scores_accumulate_over_batches_not_per_frame():
    preds, target, valid = _volumes()
    metric = SSCMetrics(num_classes=4)
    metric.update(preds, target, valid)
    metric.update(torch.zeros_like(preds), torch.zeros_like(target), valid)  # all empty, right
    assert metric.compute()["completion_iou"].item() == pytest.approx(4 / 6)


def test_monitor_logs_student_and_teacher_scores_over_the_split_from_a_real_run(
    tmp_path, lean_trainer
):
    """``SSCMonitor`` in a Trainer around ``CrossModalKD`` on a NYU SSC fixture logs what
    ``SSCMetrics`` gives on the same networks' outputs, accumulated over the split. Red if the
    monitor mixed up student and teacher, dropped ``valid``, or averaged per batch (the two
    test frames come in two batches of one)."""
    sys.path.insert(0, str(Path(__file__).parent / "datamodules"))
    import nyu_fixtures as fx

    fx.write_ssc(tmp_path, n_train=4, n_test=2)
    dm = NYUSSCDataModule(
        root=str(tmp_path), grid=fx.SSC_GRID, scale=fx.SSC_SCALE, batch_size=1, val_fraction=0.25
    )
    torch.manual_seed(0)
    shape_a, shape_b = dm.input_shapes()
    options = {"grid": fx.SSC_GRID, "scale": fx.SSC_SCALE}
    student = build_model("ssc", shape_b, 12, **options).eval()
    teacher = build_model("ssc", shape_a, 12, **options).eval()
    module = CrossModalKD(student, teacher, None, 12, task="dense")
    trainer = lean_trainer(callbacks=[SSCMonitor(12, SSC_CLASSES)])
    logged = trainer.test(module, datamodule=dm, verbose=False)[0]

    expected = {"student": SSCMetrics(12), "teacher": SSCMetrics(12)}
    with torch.no_grad():
        for batch in dm.test_dataloader():
            expected["student"].update(student(batch["xb"]).logits, batch["y"], batch["valid"])
            expected["teacher"].update(teacher(batch["xa"]).logits, batch["y"], batch["valid"])
    scores = {k: m.compute() for k, m in expected.items()}
    for prefix, network in (("test/", "student"), ("test/teacher_", "teacher")):
        assert logged[f"{prefix}ssc_miou"] == pytest.approx(scores[network]["ssc_miou"].item())
        assert logged[f"{prefix}sc_iou"] == pytest.approx(scores[network]["completion_iou"].item())
        assert logged[f"{prefix}sc_recall"] == pytest.approx(
            scores[network]["completion_recall"].item()
        )
    assert scores["student"]["ssc_miou"] != scores["teacher"]["ssc_miou"]  # the check can tell
    iou = scores["student"]["iou"].tolist()
    present = [n for n, v in zip(SSC_CLASSES, iou, strict=True) if not math.isnan(v)]
    assert {k for k in logged if k.startswith("test/ssc_iou_")} == {
        f"test/ssc_iou_{n}" for n in present
    }


def test_the_runner_adds_the_metrics_a_datamodule_names(tmp_path):
    """NYU SSC asks for ``ssc``; data that names nothing gets nothing; an unknown name is
    refused with the remedy (red if the resolver ignored the attribute or guessed)."""
    sys.path.insert(0, str(Path(__file__).parent / "datamodules"))
    import nyu_fixtures as fx

    fx.write_ssc(tmp_path, n_train=2, n_test=1)
    dm = NYUSSCDataModule(root=str(tmp_path), grid=fx.SSC_GRID, scale=fx.SSC_SCALE)
    [monitor] = metric_callbacks(dm)
    assert isinstance(monitor, SSCMonitor) and monitor.names == list(SSC_CLASSES)
    assert metric_callbacks(SyntheticDataModule(n_samples=200, n_train=100)) == []

    class Odd(SyntheticDataModule):
        extra_metrics = ("nope",)

    with pytest.raises(ValueError, match=r"Odd.extra_metrics names unknown metric\(s\) \['nope'\]"):
        metric_callbacks(Odd(n_samples=200, n_train=100))


def test_a_kd_run_on_nyu_ssc_records_the_ssc_scores(tmp_path):
    """``execute_run`` (the sweeps' path) on a NYU SSC fixture: the run's record holds the SSC
    scores of student and teacher. Red if the runner stopped adding the data's metrics."""
    sys.path.insert(0, str(Path(__file__).parent / "datamodules"))
    import nyu_fixtures as fx

    fx.write_ssc(tmp_path / "data", n_train=3, n_test=1)
    small = {"grid": list(fx.SSC_GRID), "scale": fx.SSC_SCALE}
    config = dataset_config("nyu_ssc")
    config["dataset"].update(root=str(tmp_path / "data"), num_workers=0, val_fraction=0.34, **small)
    config["model"].update(small)
    config["teacher"]["epochs"] = config["student"]["epochs"] = 1
    env = RunEnv(runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache")
    metrics = execute_run(run_config(config, "kd", 0), env).metrics
    for name in ("ssc_miou", "sc_iou", "sc_precision", "sc_recall"):
        assert 0.0 <= metrics[f"test/{name}"] <= 1.0
        assert 0.0 <= metrics[f"test/teacher_{name}"] <= 1.0
    assert "test/miou" in metrics  # the 12-class mIoU of dense tasks stays beside them
    # the teacher itself, and Table I's unimodal runs, are scored by the SSC scores too
    assert 0.0 <= metrics["teacher/test/ssc_miou"] <= 1.0
    unimodal = execute_run(run_config(config, "unimodal", 0, modality="xb"), env).metrics
    assert 0.0 <= unimodal["test/ssc_miou"] <= 1.0 and "test/sc_iou" in unimodal
