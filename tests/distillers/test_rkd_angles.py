"""RKD's angle term from the Gram matrix, block by block, against the direct form.

The direct form (normalised differences multiplied together, as RKD's reference code does)
is written here in float64 with autograd; the suite's blocked law-of-cosines form must give
the same cosines, loss and gradients for both embeddings, keep no ``B^3`` tensor for the
backward pass, and not depend on how the vertices are split into blocks.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ntdh_bench.distillers import rkd_angles
from ntdh_bench.distillers.rkd_angles import angle_loss, cosines


def _direct_cosines(e: torch.Tensor) -> torch.Tensor:
    u = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return u @ u.transpose(1, 2)


def _direct_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    return F.smooth_l1_loss(_direct_cosines(e_s), _direct_cosines(e_t))


def _embeddings(n: int, d: int, scale: float = 1.0, shift: float = 0.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) * scale + shift).relu()


@pytest.mark.parametrize(
    ("n", "d", "scale", "shift"),
    [(9, 3, 1.0, 0.0), (40, 64, 10.0, 5.0), (33, 8, 1e-3, 1e3), (50, 300, 1.0, 0.0)],
)
def test_cosines_equal_the_direct_form(n, d, scale, shift):
    e = _embeddings(n, d, scale, shift)
    expected = _direct_cosines(e.double())
    assert torch.allclose(cosines(e), expected, rtol=0, atol=1e-9)


def test_coincident_points_have_cosine_zero_like_the_direct_form():
    e = _embeddings(6, 4)
    e[3] = e[1]  # a repeated sample
    e[5] = 0.0  # and an all-zero embedding (a dead ReLU layer)
    e[4] = 0.0
    assert torch.allclose(cosines(e), _direct_cosines(e.double()), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("n", "d_s", "d_t"), [(12, 5, 7), (64, 32, 16)])
def test_loss_and_both_gradients_equal_the_direct_form(n, d_s, d_t):
    e_s, e_t = _embeddings(n, d_s, seed=1), _embeddings(n, d_t, 3.0, seed=2)
    s, t = e_s.double().requires_grad_(), e_t.double().requires_grad_()
    s_ref, t_ref = e_s.double().requires_grad_(), e_t.double().requires_grad_()
    loss, expected = angle_loss(s, t), _direct_loss(s_ref, t_ref)
    (3.0 * loss).backward()
    (3.0 * expected).backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    assert torch.allclose(s.grad, s_ref.grad, rtol=1e-7, atol=1e-12)
    assert torch.allclose(t.grad, t_ref.grad, rtol=1e-7, atol=1e-12)


def test_coincident_points_get_a_finite_gradient_where_the_direct_form_explodes():
    # Where two points coincide the cosines are not differentiable; the direct form's
    # normalisation divides by its eps (1e-12) there, the blocked form leaves them out.
    e_s, e_t = _embeddings(10, 4, seed=11).double(), _embeddings(10, 4, seed=12).double()
    e_s[2] = e_s[5]
    s, s_ref = e_s.clone().requires_grad_(), e_s.clone().requires_grad_()
    angle_loss(s, e_t).backward()
    _direct_loss(s_ref, e_t).backward()
    assert s_ref.grad.abs().max() > 1e6
    assert s.grad.abs().max() < 10.0
    away = [i for i in range(10) if i not in (2, 5)]
    assert torch.isfinite(s.grad).all() and s.grad[away].abs().sum() > 0


def test_a_teacher_without_gradient_gets_none_and_the_student_the_same_gradient():
    e_s, e_t = _embeddings(20, 6, seed=3), _embeddings(20, 4, seed=4)
    alone = e_s.double().requires_grad_()
    angle_loss(alone, e_t.double()).backward()
    both_s, both_t = e_s.double().requires_grad_(), e_t.double().requires_grad_()
    angle_loss(both_s, both_t).backward()
    assert torch.equal(alone.grad, both_s.grad)


def test_the_loss_is_in_the_student_dtype_and_float32_agrees_with_float64():
    e_s, e_t = _embeddings(30, 10, seed=5), _embeddings(30, 10, seed=6)
    loss32 = angle_loss(e_s, e_t)
    assert loss32.dtype == torch.float32
    assert loss32.item() == pytest.approx(_direct_loss(e_s.double(), e_t.double()).item(), rel=1e-6)


def test_blocks_of_any_size_give_the_same_loss_and_gradient(monkeypatch):
    e_s, e_t = _embeddings(17, 5, seed=7).double(), _embeddings(17, 3, seed=8).double()

    def run() -> tuple[float, torch.Tensor]:
        s = e_s.clone().requires_grad_()
        loss = angle_loss(s, e_t)
        loss.backward()
        return loss.item(), s.grad

    whole = run()  # one block: 17^3 < BLOCK_ELEMENTS
    monkeypatch.setattr(rkd_angles, "BLOCK_ELEMENTS", 3 * 17 * 17)  # blocks of 3, last of 2
    blocked = run()
    assert blocked[0] == pytest.approx(whole[0], rel=1e-12)
    assert torch.allclose(blocked[1], whole[1], rtol=1e-10, atol=1e-15)


def test_no_cubic_tensor_is_kept_for_the_backward_pass():
    n = 48
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    e_s = _embeddings(n, 16, seed=9).requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = angle_loss(e_s, _embeddings(n, 16, seed=10))
    loss.backward()
    assert saved and max(saved) <= n * n  # the direct form keeps (n, n, 16) and (n, n, n)
