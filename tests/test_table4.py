"""Table IV end to end at the quick size on the SemanticKITTI fixture: both systems, the sample
mask's grid, the layout, the verdicts and the masked fractions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experiments.table4 import Table4
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


def test_table4_quick_runs_both_systems_with_the_sample_mask(
    kitti_root, tmp_path, capsys, out_dirs
):
    argv = ["--quick", "--seeds", "1", "--ratios", "0.5", *fixture_args(kitti_root), *out_dirs]
    records = Table4.main(argv)
    # per system: teacher, no-KD, base KD, and true / false / random at 0.5
    assert len(records) == 2 * 6 and all(r["status"] == "done" for r in records)
    models = {r["config"]["model"]["name"] for r in records}
    assert models == {"pmf_light", "point_branch"}  # red if a system lost its own network
    kd = [r for r in records if r["config"]["role"] == "kd"]
    assert {r["config"]["distiller"]["name"] for r in kd} == {"pmf_kl", "kd"}
    masked = [r for r in kd if r["config"].get("sample_mask")]
    assert {r["config"]["sample_mask"]["kind"] for r in masked} == {"true", "false", "random"}
    for r in masked:  # the points of each batch dropped from the distillation term
        fraction = float(np.mean(curve(r["metrics"], "train/masked_fraction")))
        assert fraction == pytest.approx(0.5, abs=0.1), r["config"]["sample_mask"]
    out = tmp_path / "results" / "table4"
    for name in ("table4.md", "table4.csv", "table4.tex", "table4.png", "verdicts.md"):
        assert (out / name).stat().st_size > 0, name
    table = (out / "table4.md").read_text()
    for row in ("| PMF | w/o KD |", "| 2DPASS-style | w/o KD |", "| base |", "| λ = 0.50 | T |"):
        assert row in table, row
    assert table.index("| T |") < table.index("| F |") < table.index("| R |")  # paper's order
    printed = capsys.readouterr().out
    for system in ("PMF", "2DPASS-style"):
        for claim in ("`true` beats base", "`true` beats `random`", "`random` beats `false`"):
            assert f"{system}: {claim} at ratio 0.5:" in printed
