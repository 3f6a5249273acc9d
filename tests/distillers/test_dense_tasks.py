"""Dense tasks: feature distillers work per sample on the pooled embedding; logit distillers and
the divergences work on flattened pixels or voxels alike (any number of spatial dims)."""

from __future__ import annotations

import pytest
import torch

from ntdh_bench.distillers import build_distiller
from ntdh_bench.distillers.base import sample_weight
from ntdh_bench.divergence import decoupled_kl, dense_keep_mask, flatten_dense, kl, nontarget_mass


def _dense_batch(gen: torch.Generator) -> dict[str, torch.Tensor]:
    y = torch.randint(0, 3, (4, 2, 2), generator=gen)
    valid = torch.ones(4, 2, 2, dtype=torch.bool)
    valid[0, 0] = False
    return {"y": y, "valid": valid, "index": torch.arange(4)}


@pytest.mark.parametrize("name", ["rkd", "pkt"])
def test_feature_distillers_on_dense_outputs_use_the_pooled_embedding(make_output, name):
    gen = torch.Generator().manual_seed(0)
    emb_s, emb_t = torch.randn(4, 5, 2, 2, generator=gen), torch.randn(4, 6, 2, 2, generator=gen)
    logits = torch.zeros(4, 3, 2, 2)
    batch = _dense_batch(gen)
    dense = build_distiller(name, task="dense")(
        make_output(logits, embedding=emb_s), make_output(logits, embedding=emb_t), batch
    )
    pooled = build_distiller(name)(
        make_output(embedding=emb_s.mean(dim=(2, 3))),
        make_output(embedding=emb_t.mean(dim=(2, 3))),
        {"y": torch.zeros(4, dtype=torch.long)},
    )
    for key in pooled:
        assert dense[key].item() == pytest.approx(pooled[key].item(), rel=1e-5)


def test_pixel_weights_of_a_dense_batch_weigh_whole_samples(make_output):
    gen = torch.Generator().manual_seed(1)
    emb_s, emb_t = torch.randn(4, 5, generator=gen), torch.randn(4, 6, generator=gen)
    batch = _dense_batch(gen)
    batch["distill_weight"] = torch.zeros(4, 2, 2)
    batch["distill_weight"][1:] = 1.0  # sample 0 masked at every pixel
    logits = torch.zeros(4, 3, 2, 2)
    rkd = build_distiller("rkd", task="dense")
    masked = rkd(make_output(logits, embedding=emb_s), make_output(logits, embedding=emb_t), batch)
    alone = build_distiller("rkd")(
        make_output(embedding=emb_s[1:]), make_output(embedding=emb_t[1:]), {}
    )
    for key in alone:
        assert masked[key].item() == pytest.approx(alone[key].item(), rel=1e-6)


def test_crd_with_uniform_negatives_runs_on_dense_outputs(make_output):
    gen = torch.Generator().manual_seed(2)
    crd = build_distiller("crd", task="dense", negatives="uniform", num_negatives=8)
    logits = torch.zeros(4, 3, 2, 2)
    student = make_output(logits, embedding=torch.randn(4, 5, 2, 2, generator=gen))
    teacher = make_output(logits, embedding=torch.randn(4, 6, 2, 2, generator=gen))
    crd.bind(student, teacher, num_train_samples=10)
    loss = crd(student, teacher, _dense_batch(gen))["crd"]
    assert torch.isfinite(loss) and loss > 0
    assert crd.embed_s.in_features == 5 and crd.embed_t.in_features == 6


# --- volumes: dense outputs (B, C, D, H, W) with labels (B, D, H, W) ---------------------------


def _volume_batch(gen: torch.Generator, shape=(2, 3, 4, 5)) -> dict[str, torch.Tensor]:
    y = torch.randint(0, 4, shape, generator=gen)
    y[0, 0, 0, :2] = 255
    valid = torch.rand(shape, generator=gen) > 0.3
    weight = torch.rand(shape, generator=gen)
    return {"y": y, "valid": valid, "distill_weight": weight, "index": torch.arange(shape[0])}


def _as_images(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same voxels as images: (B, D, H, W) -> (B, D * H, W)."""
    return {k: v.flatten(1, 2) if v.dim() == 4 else v for k, v in batch.items()}


def test_flatten_dense_keeps_each_valid_labelled_voxel_with_its_own_logits():
    gen = torch.Generator().manual_seed(3)
    batch = _volume_batch(gen)
    logits = torch.randn(2, 4, 3, 4, 5, generator=gen)
    rows, target = flatten_dense(logits, batch["y"], batch["valid"])
    keep = (batch["y"] != 255) & batch["valid"]
    assert rows.shape == (int(keep.sum()), 4)
    first = keep.flatten().nonzero()[0].item()  # the first kept voxel, in C order
    b, d, h, w = torch.unravel_index(torch.tensor(first), keep.shape)
    assert torch.equal(rows[0], logits[b, :, d, h, w])
    assert target[0] == batch["y"][b, d, h, w]
    assert not (target == 255).any()


def test_kl_equals_tckl_plus_weighted_nckl_on_flattened_voxels():
    gen = torch.Generator().manual_seed(4)
    batch = _volume_batch(gen)
    logits_t = 3 * torch.randn(2, 4, 3, 4, 5, generator=gen, dtype=torch.float64)
    logits_s = 3 * torch.randn(2, 4, 3, 4, 5, generator=gen, dtype=torch.float64)
    flat_t, target = flatten_dense(logits_t, batch["y"], batch["valid"])
    flat_s, _ = flatten_dense(logits_s, batch["y"], batch["valid"])
    tckl, nckl = decoupled_kl(flat_t, flat_s, target)
    expected = tckl + nontarget_mass(flat_t, target) * nckl
    torch.testing.assert_close(kl(flat_t, flat_s), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["kd", "decoupled", "dkd"])
def test_logit_distillers_on_volumes_equal_the_same_voxels_as_images(make_output, name):
    gen = torch.Generator().manual_seed(5)
    batch = _volume_batch(gen)
    logits_s = torch.randn(2, 4, 3, 4, 5, generator=gen, requires_grad=True)
    logits_t = torch.randn(2, 4, 3, 4, 5, generator=gen)
    distiller = build_distiller(name, task="dense")
    volume = distiller(make_output(logits_s), make_output(logits_t), batch)
    image = distiller(
        make_output(logits_s.flatten(2, 3)), make_output(logits_t.flatten(2, 3)), _as_images(batch)
    )
    assert volume.keys() == image.keys()
    for key in volume:
        torch.testing.assert_close(volume[key], image[key])
        assert volume[key] > 0
    # the weights matter: zeroing half the voxels' weights changes the loss
    halved = dict(batch, distill_weight=batch["distill_weight"] * (torch.arange(5) < 2))
    changed = distiller(make_output(logits_s), make_output(logits_t), halved)
    assert any(not torch.allclose(changed[k], volume[k]) for k in volume)


def test_voxel_weights_average_per_sample_as_pixel_weights_do():
    gen = torch.Generator().manual_seed(6)
    batch = _volume_batch(gen)
    keep = ((batch["y"] != 255) & batch["valid"]).float()
    expected = (batch["distill_weight"] * keep).flatten(1).sum(1) / keep.flatten(1).sum(1)
    torch.testing.assert_close(sample_weight(batch), expected)
    torch.testing.assert_close(sample_weight(batch), sample_weight(_as_images(batch)))


def test_fitnet_regresses_volume_hints_with_a_pointwise_3d_convolution(make_output):
    gen = torch.Generator().manual_seed(7)
    batch = _volume_batch(gen)
    h_s, h_t = torch.randn(2, 5, 3, 4, 5, generator=gen), torch.randn(2, 6, 3, 4, 5, generator=gen)
    logits = torch.zeros(2, 4, 3, 4, 5)
    volume = build_distiller("fitnet", task="dense", hint_layer=0)
    s, t = make_output(logits, features=[h_s]), make_output(logits, features=[h_t])
    volume.bind(s, t, num_train_samples=2)
    assert isinstance(volume.regressor, torch.nn.Conv3d)
    image = build_distiller("fitnet", task="dense", hint_layer=0)
    s2, t2 = (make_output(logits.flatten(2, 3), features=[h.flatten(2, 3)]) for h in (h_s, h_t))
    image.bind(s2, t2, num_train_samples=2)
    image.regressor.weight.data.copy_(volume.regressor.weight.data.flatten(2, 3))
    image.regressor.bias.data.copy_(volume.regressor.bias.data)
    torch.testing.assert_close(
        volume(s, t, batch)["hint"], image(s2, t2, _as_images(batch))["hint"]
    )
    # a student map at twice the resolution is pooled to the teacher's grid
    fine = make_output(logits, features=[h_s.repeat_interleave(2, dim=2)])
    torch.testing.assert_close(volume(fine, t, batch)["hint"], volume(s, t, batch)["hint"])


def test_flatten_dense_rejects_logits_and_labels_of_different_grids():
    with pytest.raises(ValueError, match="spatial"):
        flatten_dense(torch.zeros(1, 3, 2, 4, 4), torch.zeros(1, 2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="valid"):
        dense_keep_mask(torch.zeros(1, 2, 4, dtype=torch.long), torch.ones(1, 8, dtype=torch.bool))
