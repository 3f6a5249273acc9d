"""Fig. 12 from two networks on the SemanticKITTI fixture: NCJSD per projected point, a PNG."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experiments.fig12 import main, point_ncjsd
from models import build_model
from ntdh_bench.divergence import decoupled_jsd
from tests.datamodules import semantic_kitti_fixtures as fx


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kitti_root")
    fx.write_semantic_kitti(root)
    return root


def test_fig12_draws_the_points_ncjsd_from_two_saved_networks(kitti_root, tmp_path):
    torch.manual_seed(0)
    teacher = build_model("pmf_light", (3, 48, 96), 19)
    student = build_model("pmf_light", (5, 48, 96), 19)
    torch.save(teacher.state_dict(), tmp_path / "t.pt")
    torch.save(student.state_dict(), tmp_path / "s.pt")
    sets = [
        f"dataset.root={kitti_root}", "dataset.train_sequences=[0, 1]", "dataset.num_workers=0",
        "dataset.scan_stride=1",
        "model.name=pmf_light", "model.backbone=light",
    ]  # fmt: skip
    out = tmp_path / "fig12.png"
    argv = ["--teacher", str(tmp_path / "t.pt"), "--student", str(tmp_path / "s.pt")]
    path = main([*argv, "--out", str(out), *[a for s in sets for a in ("--set", s)]])
    assert path == out and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one value per valid labelled pixel, at that pixel (red if points and values misalign)
    sample = {
        "xa": torch.randn(3, 8, 16),
        "xb": torch.zeros(5, 8, 16),
        "y": torch.full((8, 16), 255),
        "valid": torch.zeros(8, 16, dtype=torch.bool),
    }
    for (r, c), label in (((1, 2), 3), ((5, 9), 7), ((6, 1), 255)):
        sample["xb"][:, r, c] = 1.0
        sample["valid"][r, c] = True
        sample["y"][r, c] = label
    pixels, ncjsd = point_ncjsd(teacher, student, sample)
    assert pixels.tolist() == [[1, 2], [5, 9]]  # the unlabelled point is left out
    with torch.no_grad():
        z_t = teacher.eval()(sample["xa"][None]).logits[0]
        z_s = student.eval()(sample["xb"][None]).logits[0]
    expected = decoupled_jsd(z_t[:, 5, 9][None], z_s[:, 5, 9][None], torch.tensor([7]))[1]
    torch.testing.assert_close(ncjsd[1:], expected)
