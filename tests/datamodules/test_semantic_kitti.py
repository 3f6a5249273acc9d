"""SemanticKITTI: projection, z-buffer, labels, crops, file errors, splits, real samples.

Fixtures are written in the real formats by ``semantic_kitti_fixtures.py`` (float32 ``.bin``,
uint32 ``.label``, ``calib.txt`` with ``P0..P3`` and ``Tr``, PNG images, the yaml). The real
scan 07/000964 and the KITTI object samples under ``../shared/data`` are used where present
(skipped when absent, except under ``CI=true``, where their absence fails).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import DATAMODULES, build_datamodule
from datamodules.lidar_projection import (
    POINT_MEAN,
    POINT_STD,
    label_image,
    point_image,
    project_scan,
)
from datamodules.semantic_kitti import SemanticKittiDataModule
from datamodules.semantic_kitti_files import (
    lidar_to_image,
    load_label_config,
    read_labels,
    read_scan,
)
from models import build_model

sys.path.insert(0, str(Path(__file__).parent))
import semantic_kitti_fixtures as fx

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
SEQ07 = SHARED / "semantic_kitti" / "dataset" / "sequences" / "07"
KITTI_OBJECT = SHARED / "kitti_object" / "training"
SMALL = {"crop_size": (32, 64), "eval_crop_size": (40, 96), "batch_size": 2}


def _shared(path: Path) -> Path:
    """``path`` when present; otherwise skip, or fail under CI=true."""
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the shared sample {path} is missing")
        pytest.skip(f"no shared sample at {path}")
    return path


def _reference_module():
    spec = importlib.util.spec_from_file_location(
        "kitti_projection_bench", REPO / "benchmarks" / "kitti_projection.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kitti_root")
    fx.write_semantic_kitti(root)
    return root


@pytest.fixture
def root_copy(data_root, tmp_path) -> Path:
    """A private copy of the fixture root, for tests that break files."""
    shutil.copytree(data_root / "semantic_kitti", tmp_path / "semantic_kitti")
    return tmp_path


def _dm(root: Path, **kwargs) -> SemanticKittiDataModule:
    return SemanticKittiDataModule(root=str(root), **{"train_sequences": (0, 1), **SMALL, **kwargs})


def _fixture_scan(data_root: Path, seq: int = 0, frame: int = 0) -> tuple[np.ndarray, Path]:
    seq_dir = data_root / "semantic_kitti" / "dataset" / "sequences" / f"{seq:02d}"
    return read_scan(seq_dir / "velodyne" / f"{frame:06d}.bin"), seq_dir / "calib.txt"


# --- projection ------------------------------------------------------------------------------
def test_planted_points_land_on_the_pixel_the_calibration_gives(data_root):
    points, calib = _fixture_scan(data_root)
    matrix = lidar_to_image(calib)
    np.testing.assert_allclose(matrix, fx.lidar_to_pixel_matrix(), atol=1e-9)
    projection = project_scan(points, matrix, fx.HEIGHT, fx.WIDTH)
    planted = fx.default_planted(0)
    assert projection.indices.tolist() == list(range(len(planted)))  # background never lands
    expected = [(p.row, p.col) for p in planted]
    assert list(zip(projection.rows.tolist(), projection.cols.tolist(), strict=True)) == expected
    np.testing.assert_allclose(projection.depth.numpy(), [p.depth for p in planted], rtol=1e-5)


def test_the_nearest_point_wins_a_shared_pixel(data_root):
    points, calib = _fixture_scan(data_root)
    projection = project_scan(points, lidar_to_image(calib), fx.HEIGHT, fx.WIDTH)
    # planted 2 (building, 5 m) and 5 (vegetation, 15 m, written last) share pixel (20, 48)
    shown = dict(zip(projection.hit_pixels.tolist(), projection.hit_points.tolist(), strict=True))
    assert shown[20 * fx.WIDTH + 48] == 2
    assert int(projection.valid.sum()) == len(fx.default_planted(0)) - 1
    image = point_image(points, projection)
    assert image[4, 20, 48] == pytest.approx(0.9)  # the near point's remission
    assert image[0, 20, 48] == pytest.approx(float(np.linalg.norm(points[2, :3])), rel=1e-6)
    labels = load_label_config(data_root / "semantic_kitti" / "semantic-kitti.yaml")
    classes = labels.map_labels(np.fromfile(calib.parent / "labels" / "000000.label", np.uint32))
    assert label_image(classes, projection)[20, 48] == labels.class_names.index("building")


def test_projection_equals_the_numpy_reference_on_random_scans():
    reference = _reference_module().project_reference
    gen = np.random.default_rng(3)
    matrix = fx.lidar_to_pixel_matrix()
    for _ in range(3):
        xyz = gen.uniform([-5, -10, -3], [40, 10, 3], (4000, 3))
        xyz[:500] = np.round(xyz[:500], 1)  # coarse grid: many shared pixels and equal depths
        xyz[500:600] = xyz[:100]  # exact duplicates: the lower index must win
        points = np.c_[xyz, gen.uniform(0, 1, len(xyz))].astype(np.float32)
        labels = gen.integers(0, 19, len(points))
        projection = project_scan(points, matrix, fx.HEIGHT, fx.WIDTH)
        ours = (
            point_image(points, projection).numpy(),
            projection.valid.numpy(),
            label_image(labels, projection).numpy(),
        )
        ref = reference(points, labels, matrix, fx.HEIGHT, fx.WIDTH)
        np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6, atol=1e-5)
        assert np.array_equal(ours[1], ref[1]) and np.array_equal(ours[2], ref[2])
        assert 100 < ours[1].sum() < len(points)  # shared pixels were resolved


def test_empty_scans_and_points_behind_the_camera_project_to_nothing():
    matrix = fx.lidar_to_pixel_matrix()
    behind = np.c_[fx.point_for_pixel(10, 10, 5.0)[None] * [-1, 1, 1], [[0.5]]]
    for points in (np.zeros((0, 4), np.float32), behind.astype(np.float32)):
        projection = project_scan(points, matrix, fx.HEIGHT, fx.WIDTH)
        assert len(projection.indices) == 0 and not projection.valid.any()
        assert (point_image(points, projection) == 0).all()


# --- labels ----------------------------------------------------------------------------------
def test_labels_go_through_learning_map_with_unknown_ids_and_instances_ignored(data_root):
    config = load_label_config(data_root / "semantic_kitti" / "semantic-kitti.yaml")
    assert config.num_classes == 19
    assert config.class_names[0] == "car" and config.class_names[8] == "road"
    raw = np.array([10, 10 | (5 << 16), 252, 40, 60, 0, 1, 52, 77, 300, 0xFFFF, 81 | (9 << 16)])
    mapped = config.map_labels(raw.astype(np.uint32)).tolist()
    assert mapped == [0, 0, 0, 8, 8, 255, 255, 255, 255, 255, 255, 18]


def test_class_weights_are_inverse_content_frequencies_with_mean_one(data_root):
    config = load_label_config(data_root / "semantic_kitti" / "semantic-kitti.yaml")
    freq = config.class_frequencies
    assert freq[config.class_names.index("car")] == pytest.approx(0.0408 + 0.0018)  # + moving
    w = config.class_weights
    assert w.mean() == pytest.approx(1.0, rel=1e-6)
    expected = 1 / (freq + 0.001)
    np.testing.assert_allclose(w, expected / expected.mean(), rtol=1e-6)
    road, motorcyclist = config.class_names.index("road"), config.class_names.index("motorcyclist")
    assert w[motorcyclist] > 100 * w[road]


# --- samples and crops -----------------------------------------------------------------------
def _check_alignment(item: dict, frame: int) -> bool:
    """Each valid pixel shows the planted point whose pixel the camera input says it is at,
    and every planted pixel inside the window is valid; returns whether the sample was
    flipped (the decoded columns decrease)."""
    rows, cols = fx.decode_pixels(item["xa"].numpy())
    real = (item["xa"] != 0).any(0).numpy()  # not padding
    planted = {(p.row, p.col): p for p in fx.default_planted(frame)[:5]}
    classes = {10: 0, 40: 8, 50: 12, 77: 255, 70: 14}
    seen = set()
    for r, c in zip(*np.nonzero(item["valid"].numpy()), strict=True):
        p = planted[(int(rows[r, c]), int(cols[r, c]))]
        seen.add((p.row, p.col))
        assert item["y"][r, c] == classes[p.label & 0xFFFF]
        assert item["xb"][4, r, c] == pytest.approx((p.remission - POINT_MEAN[4]) / POINT_STD[4])
    assert (item["xb"][:, ~item["valid"]] == 0).all()
    assert (item["y"][~item["valid"]] == 255).all()
    inside = {k for k in planted if ((rows == k[0]) & (cols == k[1]) & real).any()}
    assert seen == inside
    return bool(cols[0, 1] < cols[0, 0])


def test_evaluation_takes_the_centre_crop_padded_to_the_stride(data_root):
    dm = _dm(data_root, eval_crop_size=(30, 70))
    dm.setup()
    item = dm._datasets["val"][0]
    assert item["xa"].shape == (3, 32, 96) and item["xb"].shape == (5, 32, 96)
    assert item["y"].dtype == torch.int64 and item["valid"].dtype == torch.bool
    rows, cols = fx.decode_pixels(item["xa"].numpy())
    assert (rows[0, 0], cols[0, 0]) == (5, 13)  # (40 - 30) // 2, (96 - 70) // 2
    assert (item["xa"][:, 30:] == 0).all() and (item["xa"][:, :, 70:] == 0).all()
    assert not item["valid"][30:].any() and (item["y"][:, 70:] == 255).all()
    assert not _check_alignment(item, frame=0)


def test_training_crops_and_flips_cut_both_modalities_alike(data_root):
    dm = _dm(data_root)
    dm.setup()
    train = dm._datasets["train"]
    torch.manual_seed(0)
    flips, tops = set(), set()
    for _ in range(12):
        item = train[1]
        assert item["xa"].shape == (3, 32, 64)
        flips.add(_check_alignment(item, frame=1))
        tops.add(int(fx.decode_pixels(item["xa"].numpy())[0][0, 0]))
    assert flips == {False, True} and len(tops) > 1


def test_a_flip_negates_the_lateral_channel(data_root):
    dm = _dm(data_root, crop_size=(40, 96))  # the whole image: only the flip varies
    dm.setup()
    train = dm._datasets["train"]
    y_channel = {}
    torch.manual_seed(1)
    while len(y_channel) < 2:
        item = train[0]
        flipped = _check_alignment(item, frame=0)
        col = 95 - 10 if flipped else 10  # the car at (5, 10)
        y_channel[flipped] = float(item["xb"][2, 5, col]) * POINT_STD[2] + POINT_MEAN[2]
    assert y_channel[True] == pytest.approx(-y_channel[False], abs=1e-5)
    assert abs(y_channel[False]) > 0.1


def test_points_uv_follow_the_crop_and_flip(data_root):
    dm = _dm(data_root, return_points=True, max_points=16, crop_size=(24, 48))
    dm.setup()
    torch.manual_seed(2)
    for _ in range(6):
        item = dm._datasets["train"][0]
        n = int(item["num_points"])
        uv, label = item["points_uv"][:n], item["points_label"][:n]
        assert (item["points_uv"][n:] == -1).all() and (item["points_label"][n:] == 255).all()
        assert item["valid"][uv[:, 1], uv[:, 0]].all()
        pixels = [tuple(x) for x in uv.tolist()]
        assert len(set(pixels)) == int(item["valid"].sum())  # every valid pixel has its point
        shown = item["y"][uv[:, 1], uv[:, 0]]
        shared = torch.tensor([pixels.count(x) > 1 for x in pixels], dtype=torch.bool)
        assert (shown[~shared] == label[~shared]).all()
        assert (shown[shared] == 12).all()  # the building point hides the vegetation behind it


def test_dense_labels_replace_the_projected_ones(data_root, tmp_path):
    from PIL import Image

    dense_dir = tmp_path / "dense"
    for seq, n in fx.SEQUENCES.items():
        (dense_dir / f"{seq:02d}").mkdir(parents=True)
        for frame in range(n):
            ids = np.zeros((fx.HEIGHT, fx.WIDTH), np.uint8)
            ids[:20] = 9  # road (learning id 9 -> class 8) on the upper half
            ids[0, 0] = 255
            Image.fromarray(ids).save(dense_dir / f"{seq:02d}" / f"{frame:06d}.png")
    dm = _dm(data_root, dense_label_dir=str(dense_dir))
    dm.setup()
    item = dm._datasets["val"][0]
    assert (item["y"][1:20, :96] == 8).all() and item["y"][0, 0] == 255
    assert (item["y"][20:40] == 255).all() and (item["y"][40:] == 255).all()
    assert item["valid"].sum() == len(fx.default_planted(0)) - 1  # still where points landed


# --- splits ----------------------------------------------------------------------------------
def test_splits_are_by_sequence_with_stride_and_max_scans(data_root):
    dm = _dm(data_root)
    train = [(f.sequence, f.frame) for f in dm.frames("train")]
    assert train == [(0, "000000"), (0, "000001"), (0, "000002"), (1, "000000"), (1, "000001")]
    assert [(f.sequence, f.frame) for f in dm.frames("val")] == [(8, "000000"), (8, "000001")]
    assert dm.frames("test") == dm.frames("val")
    quick = _dm(data_root, scan_stride=2, max_scans=2)
    assert [(f.sequence, f.frame) for f in quick.frames("train")] == [(0, "000000"), (0, "000002")]
    assert SemanticKittiDataModule(root=str(data_root)).sequences["train"] == (
        0, 1, 2, 3, 4, 5, 6, 7, 9, 10,
    )  # fmt: skip


def test_registered_and_available(data_root, tmp_path):
    assert DATAMODULES["semantic_kitti"] is SemanticKittiDataModule
    assert SemanticKittiDataModule.task == "dense"
    assert SemanticKittiDataModule.is_available(str(data_root))
    assert not SemanticKittiDataModule.is_available(str(tmp_path))
    dm = build_datamodule("semantic_kitti", root=str(data_root), teacher="lidar", **SMALL)
    assert dm.input_shapes() == ((5, 32, 64), (3, 32, 64))


# --- file errors -----------------------------------------------------------------------------
def _seq(root: Path, seq: int = 0) -> Path:
    return root / "semantic_kitti" / "dataset" / "sequences" / f"{seq:02d}"


def _first_item(root: Path, split: str = "train", **kwargs):
    dm = _dm(root, **kwargs)
    dm.setup()
    return dm._datasets[split][0]


def test_a_missing_sequence_folder_names_the_layout_and_the_download(data_root):
    dm = SemanticKittiDataModule(root=str(data_root), **SMALL)  # default sequences: 02 missing
    with pytest.raises(FileNotFoundError, match=r"sequences/02/velodyne") as err:
        dm.setup()
    assert "semantic-kitti.org" in str(err.value) and "odometry" in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"semantic_kitti/dataset/sequences"):
        SemanticKittiDataModule(root=str(data_root / "nowhere"))


def test_a_scan_whose_size_is_not_a_multiple_of_16_bytes(root_copy):
    scan = _seq(root_copy) / "velodyne" / "000000.bin"
    with open(scan, "ab") as f:
        f.write(b"\0" * 6)
    with pytest.raises(ValueError, match=r"000000\.bin: \d+ bytes is not a multiple of 16"):
        _first_item(root_copy)


def test_a_label_file_of_another_length(root_copy):
    label = _seq(root_copy) / "labels" / "000000.label"
    label.write_bytes(label.read_bytes()[:-8])
    with pytest.raises(ValueError, match=r"000000\.label: \d+ labels for a scan of \d+ points"):
        _first_item(root_copy)


@pytest.mark.parametrize("drop", ["P2", "Tr"])
def test_a_calibration_without_p2_or_tr(root_copy, drop):
    calib = _seq(root_copy) / "calib.txt"
    lines = [line for line in calib.read_text().splitlines() if not line.startswith(f"{drop}:")]
    calib.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"calib\.txt: missing {drop}"):
        _dm(root_copy).setup()


def test_a_missing_image_or_label_names_the_file(root_copy):
    (_seq(root_copy, 1) / "image_2" / "000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"sequences/01/image_2/000001\.png"):
        _dm(root_copy).setup()
    (_seq(root_copy, 8) / "labels" / "000000.label").unlink()
    with pytest.raises(FileNotFoundError, match=r"sequences/08/labels/000000\.label"):
        _dm(root_copy, train_sequences=(0,)).setup()


def test_a_missing_yaml_names_where_it_was_expected(root_copy):
    (root_copy / "semantic_kitti" / "semantic-kitti.yaml").unlink()
    with pytest.raises(FileNotFoundError, match=r"semantic_kitti/semantic-kitti\.yaml"):
        _dm(root_copy)


# --- end to end ------------------------------------------------------------------------------
def test_a_training_batch_runs_through_the_light_network(data_root):
    torch.manual_seed(0)
    dm = _dm(data_root)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["xa"].shape == (2, 3, 32, 64) and batch["xb"].shape == (2, 5, 32, 64)
    assert batch["y"].shape == batch["valid"].shape == (2, 32, 64)
    shape_a, shape_b = dm.input_shapes()
    losses = []
    for key, shape in (("xa", shape_a), ("xb", shape_b)):
        model = build_model("pmf_light", shape, dm.num_classes)
        out = model(batch[key])
        assert out.logits.shape == (2, 19, 32, 64)
        loss = torch.nn.functional.cross_entropy(
            out.logits, batch["y"], weight=dm.class_weights, ignore_index=255
        )
        loss.backward()
        losses.append(loss.item())
    assert all(np.isfinite(losses))


# --- real samples ----------------------------------------------------------------------------
def test_real_scan_000964_projects_inside_a_1226_by_370_image():
    seq = _shared(SEQ07)
    points = read_scan(seq / "velodyne" / "000964.bin")
    raw = read_labels(seq / "labels" / "000964.label", len(points))
    projection = project_scan(points, lidar_to_image(seq / "calib.txt"), 370, 1226)
    assert len(points) == 120485 and len(projection.indices) == 16850  # the provenance note
    assert projection.rows.min() >= 0 and projection.rows.max() < 370
    assert projection.cols.min() >= 0 and projection.cols.max() < 1226
    assert (projection.depth > 0).all()
    config = load_label_config(_shared(SHARED / "semantic_kitti" / "semantic-kitti.yaml"))
    classes = config.map_labels(raw)[projection.indices.numpy()]
    counts = np.bincount(classes[classes != 255], minlength=19)
    for name in ("road", "vegetation", "building", "car"):
        assert counts[config.class_names.index(name)] > 500, name
    assert counts.argmax() == config.class_names.index("road")


@pytest.mark.parametrize(("frame", "inside"), [("000000", 20_800), ("000001", 18_600)])
def test_kitti_object_samples_use_p2_r0_rect_tr_velo_to_cam(frame, inside):
    root = _shared(KITTI_OBJECT)
    points = read_scan(root / "velodyne" / f"{frame}.bin")
    matrix = lidar_to_image(root / "calib" / f"{frame}.txt")
    # the provenance note counts points inside a 1242 x 375 image for both frames (000000's
    # own image is 1224 x 370, which holds 20,285 of them)
    projection = project_scan(points, matrix, 375, 1242)
    assert len(projection.indices) == pytest.approx(inside, rel=0.002)
    # R0_rect matters: without it the same points land a few pixels away
    lines = (root / "calib" / f"{frame}.txt").read_text().splitlines()
    calib = dict(line.split(":", 1) for line in lines if line.strip())
    p2 = np.array(calib["P2"].split(), float).reshape(3, 4)
    velo = np.eye(4)
    velo[:3] = np.array(calib["Tr_velo_to_cam"].split(), float).reshape(3, 4)
    assert not np.allclose(matrix, p2 @ velo, atol=1e-3)


def test_the_experiment_config_builds_the_datamodule_and_the_network(data_root):
    from ntdh_bench.builders import build_run_datamodule
    from ntdh_bench.config import dataset_config, run_config

    overrides = [f"dataset.root={data_root}", "dataset.train_sequences=[0, 1]"]
    config = run_config(dataset_config("semantic_kitti", overrides=overrides), "kd", 0)
    dm = build_run_datamodule({**config, "dataset": {**config["dataset"], "num_workers": 0}})
    assert dm.scan_stride == 20 and dm.sequences["val"] == (8,)
    assert dm.input_shapes() == ((3, 256, 1024), (5, 256, 1024))
    model_args = {k: v for k, v in config["model"].items() if k != "name"}
    model = build_model(config["model"]["name"], dm.input_shapes()[1], dm.num_classes, **model_args)
    assert model.backbone == "resnet34" and model.output_stride == 16


def test_cross_modal_kd_trains_and_validates_on_the_fixture(data_root, lean_trainer):
    from ntdh_bench.distillers import build_distiller
    from ntdh_bench.module import CrossModalKD

    torch.manual_seed(0)
    dm = _dm(data_root)
    shape_a, shape_b = dm.input_shapes()
    teacher = build_model("pmf_light", shape_a, dm.num_classes)
    student = build_model("pmf_light", shape_b, dm.num_classes)
    module = CrossModalKD(
        student, teacher, build_distiller("kd", task="dense"), dm.num_classes, task="dense"
    )
    from ntdh_bench.callbacks import DivergenceMonitor

    trainer = lean_trainer(max_epochs=1, callbacks=[DivergenceMonitor()])
    trainer.fit(module, datamodule=dm)
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert 0.0 <= metrics["val/miou"] <= 1.0 and np.isfinite(metrics["val/ncjsd"])
