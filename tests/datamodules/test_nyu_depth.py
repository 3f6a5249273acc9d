"""NYU Depth v2 labelled release: the v7.3 .mat's transposed axes, the official split and class
mappings, normalisation, errors naming the file.

Fixtures are written by ``nyu_fixtures.py`` (an HDF5 ``.mat`` with MATLAB's user block and
transposed axes, v5 ``splits.mat`` / ``classMapping40.mat``); the real meta files under
``../shared/data/nyu_depth_v2/meta`` are used where present (required when CI=true).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules import DATAMODULES, build_datamodule
from datamodules.nyu_depth import (
    NYU40_TO_13,
    RGB_MEAN,
    RGB_STD,
    NYUDepthDataModule,
    label_lookup,
    read_splits,
)

sys.path.insert(0, str(Path(__file__).parent))
import nyu_fixtures as fx

SHARED_META = Path(__file__).resolve().parents[3] / "shared" / "data" / "nyu_depth_v2" / "meta"
HAS_META = (SHARED_META / "splits.mat").is_file() and (SHARED_META / "classMapping40.mat").is_file()
needs_meta = pytest.mark.skipif(
    not HAS_META and os.environ.get("CI") != "true", reason="no shared NYU meta files"
)
TRAIN, TEST = [1, 3, 4, 6, 7], [2, 5]  # 1-based, as in splits.mat
MAP_CLASS = (np.arange(894) % 40) + 1  # raw class r (1-based) -> 40-class ((r - 1) % 40) + 1


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("nyu_depth_v2")
    arrays = fx.labelled_arrays(8)
    fx.write_labelled_mat(root / "nyu_depth_v2_labeled.mat", arrays)
    fx.write_splits(root / "meta" / "splits.mat", TRAIN, TEST)
    fx.write_mapping(root / "meta" / "classMapping40.mat", MAP_CLASS)
    return root, arrays


def _module(root: Path, **kwargs) -> NYUDepthDataModule:
    return NYUDepthDataModule(root=str(root), **{"depth_stats": (2.0, 0.5), **kwargs})


@needs_meta
def test_official_split_is_795_train_654_test_and_read_0_based():
    splits = read_splits(SHARED_META / "splits.mat")
    assert len(splits["train"]) == 795 and len(splits["test"]) == 654
    assert splits["test"][:3].tolist() == [0, 1, 8]  # images 1, 2, 9
    assert set(splits["train"]).isdisjoint(splits["test"])


@needs_meta
def test_real_mapping_sends_894_classes_to_40_and_13():
    to40 = label_lookup(SHARED_META / "classMapping40.mat", 40)
    to13 = label_lookup(SHARED_META / "classMapping40.mat", 13)
    assert to40.shape == (895,) and to40[0] == 255 and to13[0] == 255
    assert set(to40[1:]) == set(range(40)) and set(to13[1:]) == set(range(13))
    # raw class 3 maps to 40-class 3, cabinet (mapClass starts 40, 40, 3, 22), i.e. furniture
    assert to40[3] == 2 and to13[3] == 5


def test_forty_to_thirteen_is_the_standard_table():
    table = np.asarray(NYU40_TO_13)
    assert table.shape == (41,) and table[0] == 0 and set(table[1:]) == set(range(1, 14))
    # wall, floor, bed, chair, sofa, table, window, ceiling, books, tv stay themselves
    pairs = {1: 12, 2: 5, 4: 1, 5: 4, 6: 9, 7: 10, 9: 13, 22: 3, 23: 2, 25: 11, 11: 8}
    assert all(table[k] == v for k, v in pairs.items())


def test_registered_as_a_dense_datamodule(nyu_root):
    dm = build_datamodule("nyu_depth", root=str(nyu_root[0]), depth_stats=(2.0, 0.5))
    assert DATAMODULES["nyu_depth"] is NYUDepthDataModule
    assert dm.task == "dense" and dm.num_classes == 40
    assert dm.input_shapes() == ((3, 8, 10), (1, 8, 10))
    assert NYUDepthDataModule.is_available(str(nyu_root[0]))


def test_item_undoes_matlabs_axis_order_and_normalises(nyu_root):
    root, arrays = nyu_root
    dm = _module(root, val_fraction=0.0)
    dm.setup()
    item = dm._datasets["test"][1]  # image 5 (1-based)
    rgb = arrays["images"][4].transpose(2, 0, 1) / 255.0
    mean, std = np.array(RGB_MEAN)[:, None, None], np.array(RGB_STD)[:, None, None]
    np.testing.assert_allclose(item["xa"].numpy(), (rgb - mean) / std, rtol=1e-5, atol=1e-6)
    depth = arrays["depths"][4]
    expected = np.where(depth > 0, (depth - 2.0) / 0.5, 0.0)
    np.testing.assert_allclose(item["xb"][0].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert item["valid"].tolist() == (depth > 0).tolist() and not item["valid"][0, 0]
    raw = arrays["labels"][4].astype(np.int64)
    expected_y = np.where(raw == 0, 255, (raw - 1) % 40)
    np.testing.assert_array_equal(item["y"].numpy(), expected_y)
    assert item["y"][1, 1] == 255


def test_resize_keeps_one_label_and_one_measured_depth_per_pixel(nyu_root):
    """Halving 8 x 10 to 4 x 5 takes labels, depth and ``valid`` from every other pixel
    (nearest) and averages RGB. Red if labels or depth were interpolated (blended classes,
    depths mixed with holes) or if ``input_shapes`` still named the file's size."""
    root, _ = nyu_root
    full, half = _module(root, val_fraction=0.0), _module(root, val_fraction=0.0, resize=(4, 5))
    assert half.input_shapes() == ((3, 4, 5), (1, 4, 5))
    full.setup()
    half.setup()
    a, b = full._datasets["test"][1], half._datasets["test"][1]
    assert b["xa"].shape == (3, 4, 5) and b["xb"].shape == (1, 4, 5)
    assert torch.equal(b["y"], a["y"][::2, ::2])
    assert torch.equal(b["valid"], a["valid"][::2, ::2])
    assert torch.equal(b["xb"], a["xb"][:, ::2, ::2])
    torch.testing.assert_close(b["xa"].mean((1, 2)), a["xa"].mean((1, 2)), atol=0.15, rtol=0)
    with pytest.raises(ValueError, match="resize must be"):
        _module(root, resize=(4,))


def test_thirteen_classes_go_through_the_forty_class_map(nyu_root):
    root, arrays = nyu_root
    dm = _module(root, num_classes=13, val_fraction=0.0)
    dm.setup()
    y = dm._datasets["train"][0]["y"].numpy()
    raw = arrays["labels"][0].astype(np.int64)
    to13 = np.asarray(NYU40_TO_13)[np.where(raw == 0, 0, (raw - 1) % 40 + 1)]
    np.testing.assert_array_equal(y, np.where(to13 == 0, 255, to13 - 1))
    assert dm.num_classes == 13 and y[y != 255].max() < 13


def test_depth_statistics_default_to_the_measured_training_pixels(nyu_root):
    root, arrays = nyu_root
    dm = NYUDepthDataModule(root=str(root), val_fraction=0.4, seed=3)
    dm.setup()
    train = dm.indices()["train"]
    assert len(train) == 3 and len(dm.indices()["val"]) == 2
    pixels = arrays["depths"][train].astype(np.float64)
    pixels = pixels[pixels > 0]
    assert dm.depth_stats == pytest.approx((pixels.mean(), pixels.std()))


def test_splits_are_official_with_a_seeded_validation_part(nyu_root):
    root, _ = nyu_root
    a, b = (_module(root, val_fraction=0.4, seed=0).indices() for _ in range(2))
    others = [_module(root, val_fraction=0.4, seed=s).indices()["val"] for s in range(1, 5)]
    assert sorted([*a["train"], *a["val"]]) == [i - 1 for i in TRAIN]
    assert a["test"].tolist() == [i - 1 for i in TEST]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a["val"], val) for val in others)  # the seed decides
    assert len(_module(root, max_images=2, val_fraction=0.0).indices()["train"]) == 2


def test_missing_mat_names_the_file_and_where_to_get_it(tmp_path):
    fx.write_splits(tmp_path / "splits.mat", TRAIN, TEST)
    fx.write_mapping(tmp_path / "classMapping40.mat", MAP_CLASS)
    with pytest.raises(FileNotFoundError, match=r"nyu_depth_v2_labeled\.mat not found.*horatio"):
        _module(tmp_path)


def test_missing_dataset_inside_the_mat_is_named(tmp_path):
    fx.write_labelled_mat(tmp_path / "nyu_depth_v2_labeled.mat", fx.labelled_arrays(8), ("labels",))
    fx.write_splits(tmp_path / "splits.mat", TRAIN, TEST)
    fx.write_mapping(tmp_path / "classMapping40.mat", MAP_CLASS)
    with pytest.raises(ValueError, match=r"labeled\.mat: missing dataset\(s\) \['labels'\]"):
        _module(tmp_path)


def test_split_index_past_the_image_count_is_named(tmp_path):
    fx.write_labelled_mat(tmp_path / "nyu_depth_v2_labeled.mat", fx.labelled_arrays(8))
    fx.write_splits(tmp_path / "splits.mat", TRAIN, [2, 9])
    fx.write_mapping(tmp_path / "classMapping40.mat", MAP_CLASS)
    with pytest.raises(ValueError, match=r"splits\.mat: testNdxs .* outside the 8 images.* 9 "):
        _module(tmp_path)


def test_workers_open_their_own_handle_after_the_main_process_read(nyu_root):
    dm = _module(nyu_root[0], val_fraction=0.0, batch_size=2, num_workers=2)
    dm.setup()
    dataset = dm._datasets["train"]
    first = dataset[0]  # opens a handle in this process
    batch = next(iter(DataLoader(dataset, batch_size=2, num_workers=2)))
    assert torch.equal(batch["y"][0], first["y"]) and batch["xa"].shape == (2, 3, 8, 10)
