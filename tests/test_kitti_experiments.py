"""Fig. 7c, Fig. 11a / 13a and Table I's row on the SemanticKITTI fixture at the quick size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experiments.mask_sweep import MaskSweep
from experiments.table1 import Table1
from experiments.weight_sweep import WeightSweep
from ntdh_bench.callbacks import curve
from tests.datamodules import semantic_kitti_fixtures as fx


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kitti_root")
    fx.write_semantic_kitti(root)
    return root


def fixture_args(root: Path) -> list[str]:
    """The fixture's data root and training sequences (00 and 01; validation 08)."""
    return ["--set", f"dataset.root={root}", "--set", "dataset.train_sequences=[0, 1]"]


@pytest.mark.slow
def test_weight_sweep_on_semantic_kitti_reports_miou_and_the_verdicts(
    kitti_root, tmp_path, capsys, out_dirs
):
    argv = ["--dataset", "semantic_kitti", "--quick", "--seeds", "2", "--values", "0", "8"]
    records = WeightSweep.main([*argv, *fixture_args(kitti_root), *out_dirs])
    assert len(records) == 2 * (2 + 5) and all(r["status"] == "done" for r in records)
    kd = [r for r in records if r["config"]["role"] == "kd"]
    assert all("test/miou" in r["metrics"] and "test/ncjsd" in r["metrics"] for r in kd)
    out = tmp_path / "results" / "weight_sweep_semantic_kitti"
    for name in ("weight_sweep.md", "weight_sweep.png", "verdicts.md"):
        assert (out / name).stat().st_size > 0, name
    printed = capsys.readouterr().out
    assert "KD student mIoU (%)" in printed and "|mIoU(beta = 8)" in printed
    assert "larger beta hurts: beta = 0 " in printed


@pytest.mark.slow
def test_sample_mask_sweep_on_semantic_kitti_masks_points(kitti_root, tmp_path, capsys, out_dirs):
    argv = ["--dataset", "semantic_kitti", "--mask", "sample", "--quick", "--ratios", "0.5"]
    records = MaskSweep.main([*argv, "--seeds", "2", *fixture_args(kitti_root), *out_dirs])
    assert len(records) == 2 * (3 + 3 + 1) and all(r["status"] == "done" for r in records)
    masked = [r for r in records if (r["config"].get("sample_mask") or {}).get("ratio") == 0.5]
    for r in masked:  # half of each batch's points leave the distillation term
        assert np.mean(curve(r["metrics"], "train/masked_fraction")) == pytest.approx(0.5, abs=0.1)
    out = tmp_path / "results" / "mask_sweep_semantic_kitti_sample"
    for name in ("mask_sweep.md", "mask_sweep.png", "fig13.png", "verdicts.md"):
        assert (out / name).stat().st_size > 0, name
    printed = capsys.readouterr().out
    assert "points (valid, labelled pixels)" in printed
    assert "`true` beats `random` at ratio 0.5:" in printed
    assert "Fig. 13: the true mask (0.5) lowers the NCJSD over training" in printed


def test_table1_row_for_semantic_kitti(kitti_root, tmp_path, capsys, out_dirs):
    light = ["--set", "model.name=pmf_light", "--set", "model.backbone=light"]
    small = [
        "--set", "dataset.num_workers=0", "--set", "dataset.scan_stride=1",
        "--set", "dataset.crop_size=[32, 64]", "--set", "dataset.eval_crop_size=[40, 96]",
        "--set", "teacher.epochs=1",
    ]  # fmt: skip
    argv = ["--datasets", "semantic_kitti", "--seeds", "1", *light, *small]
    records = Table1.main([*argv, *fixture_args(kitti_root), *out_dirs])
    assert {r["config"]["modality"] for r in records} == {"xa", "xb"}
    assert all("test/miou" in r["metrics"] for r in records)
    table = (tmp_path / "results" / "table1" / "table1.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| semantic_kitti"))
    # the light stream: camera (3 channels) and point image (5) differ in the first conv only
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "mIoU" and float(cells[2]) > float(cells[1]) > 0
