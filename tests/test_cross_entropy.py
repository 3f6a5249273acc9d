"""The wide-batch cross-entropy is ``F.cross_entropy``, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import ntdh_bench.cross_entropy as ce_file
from ntdh_bench.cross_entropy import cross_entropy, per_sample_cross_entropy

IGNORE = ce_file.IGNORE_INDEX  # the suite's unlabelled value, passed as ignore_index by default


def _both(loss_fn, reference_fn, logits: torch.Tensor, target: torch.Tensor):
    """``(ours, reference)`` as ``(value, gradient)`` pairs under a random upstream gradient."""
    results = []
    upstream = None
    for fn in (loss_fn, reference_fn):
        z = logits.clone().requires_grad_(True)
        value = fn(z, target)
        if upstream is None:
            upstream = torch.rand_like(value) if value.dim() else torch.tensor(1.0)
        (value * upstream).sum().backward()
        results.append((value.detach(), z.grad))
    return results


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(3400, 5000),
    classes=st.integers(3, 15),
    scale=st.sampled_from([0.1, 3.0, 300.0]),
    ignored=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**16),
)
def test_wide_batches_give_f_cross_entropys_loss_and_gradient(rows, classes, scale, ignored, seed):
    # Red if the maximum were not subtracted (overflow at scale 300), the target's logit
    # taken from another class, ignored labels counted, or the gradient's onehot misplaced.
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=gen) * scale
    target = torch.randint(0, classes, (rows,), generator=gen)
    target[torch.rand(rows, generator=gen) < ignored] = IGNORE
    assert ce_file._wide(logits)
    pairs = [
        (
            per_sample_cross_entropy,
            lambda z, y: F.cross_entropy(z, y, reduction="none", ignore_index=IGNORE),
        ),
        (cross_entropy, lambda z, y: F.cross_entropy(z, y, ignore_index=IGNORE)),
    ]
    for ours_fn, reference_fn in pairs:
        (value, grad), (ref_value, ref_grad) = _both(ours_fn, reference_fn, logits, target)
        assert torch.allclose(value, ref_value, rtol=1e-5, atol=1e-5 * scale)
        # float rounding: 2.4e-7 seen on gradients of size 1
        assert torch.allclose(grad, ref_grad, rtol=1e-5, atol=1e-6 * float(ref_grad.abs().max()))
        assert float(grad[target == IGNORE].abs().sum()) == 0.0


def test_only_wide_cpu_batches_of_few_classes_take_the_fast_path(monkeypatch):
    taken = []
    apply = ce_file._PerRowCrossEntropy.apply
    monkeypatch.setattr(
        ce_file._PerRowCrossEntropy, "apply", lambda *a: taken.append(a[0].shape) or apply(*a)
    )
    shapes = {(6000, 4): True, (1024, 10): True, (256, 4): False, (6000, 16): False,
              (6000, 2): False, (2, 4, 8, 8): False}  # fmt: skip
    for shape, fast in shapes.items():
        taken.clear()
        logits = torch.randn(*shape)
        target = torch.randint(0, shape[1], (shape[0], *shape[2:]))
        assert cross_entropy(logits, target) == pytest.approx(
            float(F.cross_entropy(logits, target))
        )
        assert bool(taken) is fast, shape


def test_a_batch_with_every_label_ignored_is_nan_as_in_torch():
    logits = torch.randn(3000, 4)
    target = torch.full((3000,), IGNORE)
    assert torch.isnan(F.cross_entropy(logits, target, ignore_index=IGNORE))
    assert torch.isnan(cross_entropy(logits, target))
    assert float(per_sample_cross_entropy(logits, target).abs().sum()) == 0.0
