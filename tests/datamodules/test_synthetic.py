"""Synthetic datamodule: the gap semantics of DESIGN.md, argument checks, the batch contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules import DATAMODULES, SyntheticDataModule, build_datamodule
from datamodules.synthetic import make_gap_modalities

SMALL = dict(n_samples=400, n_train=240)


def _shared_columns(xa: np.ndarray, xb: np.ndarray) -> set[tuple[int, int]]:
    """Pairs (column of xa, column of xb) that are identical."""
    return {
        (i, j)
        for i in range(xa.shape[1])
        for j in range(xb.shape[1])
        if np.array_equal(xa[:, i], xb[:, j])
    }


@pytest.mark.parametrize(
    ("gap", "expected_shared"),
    [
        (0.0, {(i, i) for i in range(20)}),
        (0.5, {(i, i + 10) for i in range(10)}),  # teacher window 10..30, student 0..20
        (1.0, set()),  # disjoint windows 20..40 and 0..20
    ],
)
def test_teacher_window_shifts_by_round_window_times_gap(gap, expected_shared):
    xa, xb, _ = make_gap_modalities(n_samples=300, gap=gap, seed=3)
    assert xa.shape == xb.shape == (300, 50)
    assert _shared_columns(xa, xb) == expected_shared


def test_noise_columns_are_standard_normal_and_independent_per_modality():
    xa, xb, _ = make_gap_modalities(n_samples=5000, gap=0.0, seed=0)
    noise_a, noise_b = xa[:, 20:], xb[:, 20:]
    assert abs(noise_a.mean()) < 0.05 and abs(noise_a.std() - 1) < 0.05
    assert abs(np.corrcoef(noise_a[:, 0], noise_b[:, 0])[0, 1]) < 0.05


def test_informative_columns_are_standardised():
    xa, _, _ = make_gap_modalities(n_samples=2000, gap=0.0, seed=0)
    np.testing.assert_allclose(xa[:, :20].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(xa[:, :20].std(axis=0), 1, atol=1e-4)


def test_same_seed_same_data_other_seed_other_data():
    a1 = make_gap_modalities(n_samples=200, gap=0.4, seed=7)
    a2 = make_gap_modalities(n_samples=200, gap=0.4, seed=7)
    b = make_gap_modalities(n_samples=200, gap=0.4, seed=8)
    for x, x2 in zip(a1, a2, strict=True):
        np.testing.assert_array_equal(x, x2)
    assert not np.array_equal(a1[0], b[0])


@pytest.mark.parametrize("gap", [-0.1, 1.5])
def test_gap_outside_unit_interval_raises(gap):
    with pytest.raises(ValueError, match=r"gap must lie in \[0, 1\]"):
        SyntheticDataModule(gap=gap)


def test_window_wider_than_informative_columns_raises():
    with pytest.raises(ValueError, match="window 30 is too wide"):
        SyntheticDataModule(gap=1.0, window=30)
    SyntheticDataModule(gap=0.5, window=30)  # 30 + 15 <= 50 fits
    with pytest.raises(ValueError, match="n_train"):
        SyntheticDataModule(n_samples=100, n_train=100)


def test_splits_follow_the_batch_contract():
    dm = build_datamodule("synthetic", gap=0.2, **SMALL)
    dm.setup()
    train, test = dm.split_tensors("train"), dm.split_tensors("test")
    assert len(train["y"]) == 240 and len(test["y"]) == 160
    assert train["xa"].dtype == torch.float32 and train["y"].dtype == torch.long
    assert torch.equal(train["index"], torch.arange(240))
    assert set(train["y"].tolist()) == {0, 1, 2, 3}
    assert dm.input_shapes() == ((50,), (50,))
    assert dm.num_classes == 4 and dm.task == "classification"
    assert "synthetic" in DATAMODULES


def test_train_loader_visits_every_sample_once_per_epoch_in_a_seeded_order():
    dm = SyntheticDataModule(batch_size=64, seed=5, **SMALL)
    loader = dm.train_dataloader()
    assert len(loader) == 4  # ceil(240 / 64)

    def epoch_indices(epoch: int) -> list[int]:
        loader.sampler.set_epoch(epoch)
        return torch.cat([b["index"] for b in loader]).tolist()

    first, again, second = epoch_indices(0), epoch_indices(0), epoch_indices(1)
    assert sorted(first) == list(range(240))
    assert first == again and first != second
    batch = next(iter(loader))
    assert set(batch) == {"xa", "xb", "y", "index"}
    xb_rows = dm.split_tensors("train")["xb"][batch["index"]]
    assert torch.equal(batch["xb"], xb_rows)  # rows stay paired with their index


def test_a_loader_without_keys_gives_the_same_batches_less_those_keys():
    # Red if leaving keys out changed the order (a new sampler would not see set_epoch),
    # dropped the labels that size each batch, or handed out other rows as ``index``.
    dm = SyntheticDataModule(batch_size=64, seed=5, **SMALL)
    loader = dm.train_dataloader()
    lean = loader.without({"xa", "y"})
    loader.sampler.set_epoch(3)
    for batch, kept in zip(loader, lean, strict=True):
        assert set(kept) == {"xb", "y", "index"}
        for key, value in kept.items():
            assert torch.equal(value, batch[key]), key
    rows = dm.split_tensors("train")
    assert torch.equal(batch["xa"], rows["xa"][batch["index"]])


def test_eval_loader_is_ordered():
    dm = SyntheticDataModule(eval_batch_size=100, **SMALL)
    indices = torch.cat([b["index"] for b in dm.test_dataloader()]).tolist()
    assert indices == list(range(160))


def test_eval_batches_default_to_the_whole_split_when_it_fits_the_memory_budget(monkeypatch):
    import datamodules.base as base

    dm = SyntheticDataModule(batch_size=16, **SMALL)  # 160 val rows of 2 x 50 floats + labels
    assert [len(b["y"]) for b in dm.val_dataloader()] == [160]
    row_bytes = 2 * 50 * 4 + 8 + 8
    monkeypatch.setattr(base, "EVAL_BATCH_BYTES", 30 * row_bytes)
    splits = {s: dm.split_tensors(s) for s in ("train", "val", "test")}
    assert base.eval_rows(splits, floor=16) == 30
    assert base.eval_rows(splits, floor=50) == 50  # never below the floor
    assert SyntheticDataModule(eval_batch_size=7, **SMALL).eval_batch_size == 7  # asked for
    empty = {"val": {k: v[:0] for k, v in splits["val"].items()}, "train": splits["train"]}
    assert base.eval_rows(empty, floor=16) == 16  # an empty split sizes nothing


def test_ranks_take_disjoint_shards_that_cover_the_split():
    from datamodules.base import TensorBatchLoader

    tensors = {"y": torch.arange(10), "index": torch.arange(10)}
    shards = [
        torch.cat([b["index"] for b in TensorBatchLoader(tensors, 2, True, rank=r, world_size=3)])
        for r in range(3)
    ]
    assert all(len(s) == 4 for s in shards)  # ceil(10 / 3), padded by wrap-around
    everything = torch.cat(shards).tolist()
    assert set(everything) == set(range(10))
    assert len(everything) - len(set(everything)) == 2  # only the 2 padding repeats recur


def test_unknown_dataset_names_the_registered_ones():
    with pytest.raises(ValueError, match="registered"):
        build_datamodule("imagenet")
