"""CRD: golden NCE value, memory update, negative sampling, alignment, precision, weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ntdh_bench.distillers import build_distiller

N, D_S, D_T, DIM = 8, 4, 5, 3
LABELS = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2])


def _bound_crd(make_output, num_negatives=3, labels=LABELS, seed=0, **overrides):
    torch.manual_seed(seed)
    crd = build_distiller("crd", dim=DIM, num_negatives=num_negatives, **overrides)
    crd.bind(
        make_output(embedding=torch.zeros(2, D_S)),
        make_output(embedding=torch.zeros(2, D_T)),
        num_train_samples=N if labels is None else len(labels),
        train_labels=labels,
    )
    return crd


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _reference_nce(scores: np.ndarray, T: float, n_data: int) -> np.ndarray:
    """Per-sample NCE with Z fixed from this batch, in the reference's form (with its eps)."""
    out = np.exp(scores / T)
    out = out / (out.mean() * n_data)
    m = scores.shape[1] - 1
    noise = m / n_data
    log_d1 = np.log(out[:, 0] / (out[:, 0] + noise + 1e-7))
    log_d0 = np.log(noise / (out[:, 1:] + noise + 1e-7)).sum(axis=1)
    return -(log_d1 + log_d0)


def test_crd_equals_the_nce_bound_of_both_directions(make_output, monkeypatch):
    crd = _bound_crd(make_output)
    e_s, e_t = torch.randn(3, D_S), torch.randn(3, D_T)
    index, y = torch.tensor([1, 4, 6]), LABELS[[1, 4, 6]]
    negatives = torch.tensor([[2, 5, 7], [0, 6, 1], [3, 0, 2]])
    monkeypatch.setattr(crd, "sample_negatives", lambda labels: negatives)
    mem_s, mem_t = _np(crd.memory_s).copy(), _np(crd.memory_t).copy()
    batch = {"index": index, "y": y}

    loss = crd(make_output(embedding=e_s), make_output(embedding=e_t), batch)["crd"]

    def embed(linear, e):
        v = _np(e) @ _np(linear.weight).T + _np(linear.bias)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    v_s, v_t = embed(crd.embed_s, e_s), embed(crd.embed_t, e_t)
    contrast = np.concatenate([index.numpy()[:, None], negatives.numpy()], axis=1)
    scores_s = np.einsum("bkd,bd->bk", mem_t[contrast], v_s)
    scores_t = np.einsum("bkd,bd->bk", mem_s[contrast], v_t)
    per_sample = _reference_nce(scores_s, 0.07, N) + _reference_nce(scores_t, 0.07, N)
    assert loss.item() == pytest.approx(0.8 * per_sample.mean(), rel=1e-4)

    for bank, old, v in ((crd.memory_s, mem_s, v_s), (crd.memory_t, mem_t, v_t)):
        mixed = 0.5 * old[index.numpy()] + 0.5 * v
        expected = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
        np.testing.assert_allclose(_np(bank)[index.numpy()], expected, rtol=1e-5, atol=1e-6)
        untouched = np.setdiff1d(np.arange(N), index.numpy())
        np.testing.assert_array_equal(_np(bank)[untouched], old[untouched])


def test_crd_normaliser_is_fixed_after_the_first_batch(make_output):
    crd = _bound_crd(make_output)
    batch = {"index": torch.tensor([0, 3]), "y": LABELS[[0, 3]]}
    crd(
        make_output(embedding=torch.randn(2, D_S)),
        make_output(embedding=torch.randn(2, D_T)),
        batch,
    )
    first = crd.log_z.clone()
    crd(
        make_output(embedding=torch.randn(2, D_S)),
        make_output(embedding=torch.randn(2, D_T)),
        batch,
    )
    assert torch.isfinite(first).all()
    assert torch.equal(crd.log_z, first)


def test_crd_loss_falls_when_embeddings_are_aligned(make_output):
    n = 64
    torch.manual_seed(1)
    crd = build_distiller("crd", dim=16, num_negatives=32, negatives="uniform")
    e_t = torch.randn(n, 16)
    crd.bind(make_output(embedding=e_t[:2]), make_output(embedding=e_t[:2]), num_train_samples=n)
    with torch.no_grad():
        crd.embed_s.weight.copy_(torch.eye(16))
        crd.embed_t.weight.copy_(torch.eye(16))
        crd.embed_s.bias.zero_()
        crd.embed_t.bias.zero_()
        crd.memory_s.copy_(F.normalize(e_t, dim=1))
        crd.memory_t.copy_(F.normalize(e_t, dim=1))
    crd.eval()  # leave the memory as it is between the two evaluations
    batch = {"index": torch.arange(n), "y": torch.zeros(n, dtype=torch.long)}
    torch.manual_seed(2)
    aligned = crd(make_output(embedding=e_t), make_output(embedding=e_t), batch)["crd"]
    torch.manual_seed(2)
    unrelated = crd(make_output(embedding=torch.randn(n, 16)), make_output(embedding=e_t), batch)
    assert aligned.item() < unrelated["crd"].item()


def test_crd_class_negatives_come_from_other_classes(make_output):
    crd = _bound_crd(make_output, num_negatives=3)
    assert not crd.replacement  # every class has at least 3 samples outside it
    y = LABELS[[0, 2, 5, 7]]
    negatives = crd.sample_negatives(y)
    assert negatives.shape == (4, 3)
    assert (LABELS[negatives] != y.unsqueeze(1)).all()
    assert all(len(set(row.tolist())) == 3 for row in negatives)  # without replacement


def test_crd_draws_with_replacement_when_too_few_negatives_exist(make_output):
    crd = _bound_crd(make_output, num_negatives=50)
    assert crd.replacement
    y = LABELS[[0, 2, 5]]
    negatives = crd.sample_negatives(y)
    assert negatives.shape == (3, 50)
    assert (LABELS[negatives] != y.unsqueeze(1)).all()
    for row, label in zip(negatives, y, strict=True):  # reaches every other-class sample
        assert set(row.tolist()) == set(LABELS.ne(label).nonzero().flatten().tolist())


def test_crd_uniform_negatives_cover_the_training_set(make_output):
    crd = _bound_crd(make_output, num_negatives=400, negatives="uniform")
    negatives = crd.sample_negatives(LABELS[:2])
    assert negatives.shape == (2, 400)
    assert set(negatives.flatten().tolist()) == set(range(N))


def test_crd_class_negatives_need_the_training_labels(make_output):
    with pytest.raises(ValueError, match="negatives='uniform'"):
        _bound_crd(make_output, labels=None)


def test_crd_class_negatives_do_not_apply_to_dense_tasks():
    with pytest.raises(ValueError, match="negatives='uniform'"):
        build_distiller("crd", task="dense")
    assert build_distiller("crd", task="dense", negatives="uniform").task == "dense"


def test_crd_memory_and_heads_are_in_the_state_dict(make_output):
    state = _bound_crd(make_output).state_dict()
    assert {"memory_s", "memory_t", "log_z", "embed_s.weight", "embed_t.weight"} <= set(state)
    assert state["memory_s"].shape == (N, DIM)


def test_crd_is_computed_in_float32_under_autocast(make_output):
    crd = _bound_crd(make_output)
    batch = {"index": torch.tensor([0, 5]), "y": LABELS[[0, 5]]}
    e_s = torch.randn(2, D_S, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = crd(make_output(embedding=e_s), make_output(embedding=torch.randn(2, D_T)), batch)
    assert loss["crd"].dtype == torch.float32
    assert crd.memory_s.dtype == torch.float32
    loss["crd"].backward()
    assert torch.isfinite(e_s.grad.float()).all()


def test_crd_is_finite_on_extreme_embeddings(make_output):
    crd = _bound_crd(make_output)
    e_s = torch.tensor([[1e6, -1e6, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    e_t = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [-1e6, 1e6, 1e6, 0.0, 0.0]])
    batch = {"index": torch.tensor([0, 5]), "y": LABELS[[0, 5]]}
    for _ in range(3):
        loss = crd(make_output(embedding=e_s), make_output(embedding=e_t), batch)["crd"]
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(e_s.grad).all()
    assert torch.isfinite(crd.memory_s).all() and torch.isfinite(crd.memory_t).all()


def test_crd_honours_distill_weight(make_output, monkeypatch):
    index = torch.tensor([1, 4, 6])
    negatives = torch.tensor([[2, 5, 7], [0, 6, 1], [3, 0, 2]])
    e_s, e_t = torch.randn(3, D_S), torch.randn(3, D_T)

    def per_sample(weight):
        crd = _bound_crd(make_output)
        crd.log_z.fill_(math.log(N))  # the same normaliser for every subset
        monkeypatch.setattr(crd, "sample_negatives", lambda labels: negatives[: len(labels)])
        batch = {"index": index, "y": LABELS[index]}
        if weight is not None:
            batch["distill_weight"] = weight
        return crd(make_output(embedding=e_s), make_output(embedding=e_t), batch)["crd"]

    w = torch.tensor([0.0, 1.0, 3.0])
    singles = [per_sample(torch.eye(3)[i]) for i in range(3)]
    expected = (w[1] * singles[1] + w[2] * singles[2]) / w.sum()
    assert per_sample(w).item() == pytest.approx(expected.item(), rel=1e-5)
