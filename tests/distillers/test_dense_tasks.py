"""Dense tasks: feature distillers work per sample on the pooled embedding."""

from __future__ import annotations

import pytest
import torch

from ntdh_bench.distillers import build_distiller


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
