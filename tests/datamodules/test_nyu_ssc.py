"""NYU SSC (DDRNet's repackaged .npz): layout, batch contract, evaluated voxels, splits, errors,
and an end-to-end smoke through the SSC network and the non-target divergence.

Fixtures are written by ``nyu_fixtures.py`` with the real key names and dtypes on a grid
scaled down to (10, 6, 8) x 2 (W != D, so a transposition error shows).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules import DATAMODULES, build_datamodule
from datamodules.nyu_ssc import NYUSSCDataModule, evaluated_voxels
from models import build_model
from ntdh_bench.builders import build_network, build_run_datamodule
from ntdh_bench.config import dataset_config, run_config
from ntdh_bench.divergence import decoupled_jsd, flatten_dense
from ntdh_bench.ssc_metrics import SSCMetrics

sys.path.insert(0, str(Path(__file__).parent))
import nyu_fixtures as fx

SMALL = {"grid": fx.SSC_GRID, "scale": fx.SSC_SCALE}


@pytest.fixture(scope="module")
def ssc_root(tmp_path_factory) -> tuple[Path, dict[str, list[Path]]]:
    root = tmp_path_factory.mktemp("nyu_ssc")
    return root, fx.write_ssc(root, n_train=10, n_test=2)


def _module(root: Path, **kwargs) -> NYUSSCDataModule:
    return NYUSSCDataModule(root=str(root), **{**SMALL, "val_fraction": 0.2, **kwargs})


def _item(dm: NYUSSCDataModule, split: str, path: Path) -> dict[str, torch.Tensor]:
    dm.setup()
    dataset = dm._datasets[split]
    return dataset[dataset.files.index(path)]


def test_registered_as_a_dense_datamodule(ssc_root):
    dm = build_datamodule("nyu_ssc", root=str(ssc_root[0]), **SMALL)
    assert DATAMODULES["nyu_ssc"] is NYUSSCDataModule
    assert dm.task == "dense" and dm.num_classes == 12
    assert NYUSSCDataModule.is_available(str(ssc_root[0]))
    assert not NYUSSCDataModule.is_available(str(ssc_root[0] / "nowhere"))


def test_item_packs_rgb_depth_and_the_voxel_index_and_transposes_volumes(ssc_root):
    root, files = ssc_root
    path = files["test"][0]
    frame = fx.ssc_frame(1000)
    item = _item(_module(root), "test", path)
    h, w = fx.SSC_IMAGE
    gx, gy, gz = fx.SSC_GRID
    assert item["xa"].shape == (4, h, w) and item["xb"].shape == (2, h, w)
    assert item["y"].shape == (gz, gy, gx) and item["y"].dtype == torch.long
    np.testing.assert_array_equal(item["xa"][:3].numpy(), frame["rgb"])
    np.testing.assert_array_equal(item["xb"][:1].numpy(), frame["depth"])
    np.testing.assert_array_equal(item["y"].numpy(), frame["target_lr"].T)
    expected_position = np.where(frame["position"] == 0, -1, frame["position"])
    np.testing.assert_array_equal(item["position"].numpy(), expected_position)
    for x in (item["xa"], item["xb"]):  # the packed channel holds the exact index
        assert torch.equal(x[-1].long(), item["position"])


def test_valid_is_sscnets_rule_labelled_and_occluded_or_surface():
    tsdf = np.array([-0.5, 0.0, 0.0005, 0.001, 0.5, 1.0, 1.0], dtype=np.float32)
    target = np.array([3, 0, 2, 1, 0, 4, 255], dtype=np.uint8)
    expected = [True, True, True, False, False, True, False]
    assert evaluated_voxels(tsdf, target).tolist() == expected


def test_item_valid_applies_the_rule_to_the_files_tsdf(ssc_root):
    root, files = ssc_root
    frame = fx.ssc_frame(1000)
    item = _item(_module(root), "test", files["test"][0])
    expected = evaluated_voxels(frame["tsdf_lr"], frame["target_lr"]).T
    np.testing.assert_array_equal(item["valid"].numpy(), expected)
    assert 0 < item["valid"].float().mean() < 1


def test_tsdf_student_input_is_the_low_resolution_volume(ssc_root):
    root, files = ssc_root
    dm = _module(root, student_input="tsdf")
    item = _item(dm, "test", files["test"][0])
    gx, gy, gz = fx.SSC_GRID
    assert item["xb"].shape == (1, gz, gy, gx)
    np.testing.assert_array_equal(item["xb"][0].numpy(), fx.ssc_frame(1000)["tsdf_lr"].T)
    assert dm.input_shapes() == ((4, *fx.SSC_IMAGE), (1, gz, gy, gx))


def test_validation_is_a_seeded_part_of_train_and_test_is_the_test_folder(ssc_root):
    root, files = ssc_root
    a, b, c = (_module(root, seed=s).files() for s in (0, 0, 1))
    assert len(a["val"]) == 2 and len(a["train"]) == 8
    assert set(a["val"]).isdisjoint(a["train"])
    assert set(a["val"]) | set(a["train"]) == set(files["train"])
    assert a == b and a["val"] != c["val"]
    assert a["test"] == files["test"]
    quick = _module(root, max_files=5).files()
    assert len(quick["train"]) + len(quick["val"]) == 5 and len(quick["test"]) == 2


def test_missing_folder_names_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nyu_ssc/train.*train/\*\.npz"):
        NYUSSCDataModule(root=str(tmp_path / "nyu_ssc"))


def _write_bad(tmp_path: Path, change) -> Path:
    fx.write_ssc(tmp_path, n_train=2, n_test=1)
    bad = tmp_path / "train" / "NYU0001_0000_voxels.npz"
    arrays = dict(np.load(bad))
    change(arrays)
    np.savez_compressed(bad, **arrays)
    return bad


def test_missing_key_is_named_with_the_file(tmp_path):
    bad = _write_bad(tmp_path, lambda a: a.pop("tsdf_lr"))
    with pytest.raises(ValueError, match=rf"{bad.name}.*missing key.*tsdf_lr"):
        _module(tmp_path)


def test_wrong_shape_is_named_with_the_file(tmp_path):
    bad = _write_bad(tmp_path, lambda a: a.update(target_lr=a["target_lr"].T.copy()))
    with pytest.raises(ValueError, match=rf"{bad.name}.*'target_lr' has shape \(8, 6, 10\)"):
        _module(tmp_path)


def test_position_outside_the_grid_is_named_with_the_file(tmp_path):
    n_voxels = math.prod(fx.SSC_GRID) * fx.SSC_SCALE**3

    def spoil(arrays):
        arrays["position"][2, 2] = n_voxels

    bad = _write_bad(tmp_path, spoil)
    dm = _module(tmp_path, val_fraction=0.0)  # headers are fine: values are read per item
    dm.setup()
    with pytest.raises(ValueError, match=rf"{bad.name}.*'position'.*outside.*e\.g\. {n_voxels}"):
        dm._datasets["train"][1]


def test_unknown_label_is_named_with_the_file(tmp_path):
    def spoil(arrays):
        arrays["target_lr"][0, 0, 0] = 12

    bad = _write_bad(tmp_path, spoil)
    dm = _module(tmp_path, val_fraction=0.0)
    dm.setup()
    with pytest.raises(ValueError, match=rf"{bad.name}.*labels \[12\]"):
        dm._datasets["train"][1]


def test_end_to_end_batch_to_both_networks_to_the_voxel_ncjsd(ssc_root):
    root, _ = ssc_root
    dm = _module(root, batch_size=2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["xa"].shape[0] == 2 and batch["index"].shape == (2,)
    shape_a, shape_b = dm.input_shapes()
    torch.manual_seed(0)
    teacher = build_model("ssc", shape_a, dm.num_classes, **SMALL)
    student = build_model("ssc", shape_b, dm.num_classes, **SMALL)
    out_t, out_s = teacher(batch["xa"]), student(batch["xb"])
    assert out_t.logits.shape == (2, 12, *batch["y"].shape[1:])
    flat_t, target = flatten_dense(out_t.logits, batch["y"], batch["valid"])
    flat_s, _ = flatten_dense(out_s.logits, batch["y"], batch["valid"])
    assert len(target) == int((batch["valid"] & (batch["y"] != 255)).sum()) > 0
    tcjsd, ncjsd = decoupled_jsd(flat_t, flat_s, target)
    assert torch.isfinite(tcjsd).all() and torch.isfinite(ncjsd).all()
    assert (ncjsd >= 0).all() and (ncjsd <= math.log(2)).all()
    assert ncjsd.mean() > 0  # two differently initialised networks disagree
    metrics = SSCMetrics()
    metrics.update(out_s.logits, batch["y"], batch["valid"])
    assert 0 <= metrics.compute()["completion_iou"] <= 1


def test_dataloader_workers_open_their_own_files(ssc_root):
    dm = _module(ssc_root[0], num_workers=2, batch_size=3)
    dm.setup()
    loader = DataLoader(dm._datasets["test"], batch_size=2, num_workers=2)
    batch = next(iter(loader))
    assert batch["y"].shape[0] == 2


def test_config_builds_the_datamodule_and_both_networks(ssc_root):
    small = [
        f"{s}.{k}={list(v) if isinstance(v, tuple) else v}"
        for s in ("dataset", "model")
        for k, v in SMALL.items()
    ]
    base = dataset_config("nyu_ssc", overrides=[f"dataset.root={ssc_root[0]}", *small])
    config = run_config(base, "kd", seed=0)  # resolved: every option checked
    dm = build_run_datamodule(config)
    teacher, student = build_network(config, dm, "xa"), build_network(config, dm, "xb")
    batch = next(iter(dm.val_dataloader()))
    assert teacher(batch["xa"]).logits.shape == student(batch["xb"]).logits.shape
    assert teacher.in_channels == 3 and student.in_channels == 1
