"""The 2DPASS-style point branch: voxel pooling by scatter_reduce, per-scan voxels, gradients."""

from __future__ import annotations

import pytest
import torch

from models.point_branch import PointBranch, voxel_ids, voxel_pool


def test_voxel_pool_matches_a_loop_over_voxels():
    gen = torch.Generator().manual_seed(0)
    coords = torch.rand(200, 3, generator=gen) * 2
    feats = torch.randn(200, 6, generator=gen)
    ids = voxel_ids(coords, 0.5)
    assert ids.max() + 1 == len({tuple(c) for c in torch.floor(coords / 0.5).long().tolist()})
    for reduce, fn in (("amax", lambda x: x.max(0).values), ("mean", lambda x: x.mean(0))):
        pooled = voxel_pool(feats, ids, reduce)
        for v in range(int(ids.max()) + 1):
            torch.testing.assert_close(pooled[v], fn(feats[ids == v]))


def test_points_of_different_scans_never_share_a_voxel():
    coords = torch.tensor([[0.1, 0.1, 0.1], [0.15, 0.1, 0.1], [0.1, 0.1, 0.1]])
    assert voxel_ids(coords, 0.2).tolist() == [0, 0, 0]
    ids = voxel_ids(coords, 0.2, batch=torch.tensor([0, 0, 1]))
    assert ids[0] == ids[1] != ids[2]


def test_a_scan_is_not_affected_by_another_scan_in_the_batch():
    torch.manual_seed(0)
    model = PointBranch(4, 5, widths=(8, 16), voxel_sizes=(0.5, 1.0)).eval()
    scan = torch.cat([torch.rand(50, 3) * 4, torch.rand(50, 1)], dim=1)
    other = torch.cat([torch.rand(60, 3) * 4, torch.rand(60, 1)], dim=1)
    batch = torch.cat([torch.zeros(50), torch.ones(60)]).long()
    with torch.no_grad():
        both = model(torch.cat([scan, other]), batch)
        alone = model(scan, torch.zeros(50, dtype=torch.long))
    torch.testing.assert_close(both.logits[:50], alone.logits)
    torch.testing.assert_close(both.embedding[0], alone.embedding[0])
    assert both.logits.shape == (110, 5) and both.embedding.shape == (2, 16)


def test_voxel_context_reaches_points_of_the_same_voxel_only():
    torch.manual_seed(0)
    model = PointBranch(4, 3, widths=(8,), voxel_sizes=(1.0,)).eval()
    points = torch.tensor([[0.2, 0.2, 0.2, 0.5], [0.7, 0.3, 0.1, 0.5], [3.5, 0.2, 0.2, 0.5]])
    changed = points.clone()
    changed[1, 3] = 5.0  # the second point's remission
    with torch.no_grad():
        a, b = model(points).logits, model(changed).logits
    assert not torch.allclose(a[0], b[0])  # same voxel: sees the change
    torch.testing.assert_close(a[2], b[2])  # another voxel: does not


def test_permuting_points_permutes_outputs_and_every_parameter_learns():
    torch.manual_seed(0)
    model = PointBranch.from_shape((4,), 19)
    points = torch.cat([torch.randn(300, 3) * 5, torch.rand(300, 1)], dim=1)
    perm = torch.randperm(300)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(points).logits[perm], model(points[perm]).logits)
    model.train()
    out = model(points)
    torch.nn.functional.cross_entropy(out.logits, torch.randint(0, 19, (300,))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert [f.shape[1] for f in out.features] == [32, 64, 128]


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="reduce"):
        voxel_pool(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), "sum")
    with pytest.raises(ValueError, match="one voxel size per width"):
        PointBranch(4, 19, widths=(8, 16), voxel_sizes=(0.2,))
    with pytest.raises(ValueError, match=r"\(C,\) points"):
        PointBranch.from_shape((4, 10), 19)


def _point_image(gen: torch.Generator, b: int = 2, h: int = 6, w: int = 8) -> torch.Tensor:
    """A standardised point image with about a third of the pixels holding a point."""
    x = torch.randn(b, 5, h, w, generator=gen)
    return x * (torch.rand(b, 1, h, w, generator=gen) < 0.35)


def test_point_image_branch_is_the_point_branch_scattered_to_the_valid_pixels():
    from models import MODELS, build_model
    from models.point_branch import PointImageBranch

    gen = torch.Generator().manual_seed(0)
    x = _point_image(gen)
    net = build_model("point_branch", (5, 6, 8), 4, widths=(8, 16), voxel_sizes=(0.5, 1.0))
    assert MODELS["point_branch"] is PointImageBranch and isinstance(net, PointImageBranch)
    net.eval()
    with torch.no_grad():
        out = net(x)
        valid = (x != 0).any(dim=1)
        # the same points by hand: (x, y, z, remission, range) features, metres for the voxels
        pixels = x.permute(0, 2, 3, 1)[valid]
        metres = pixels * net.std + net.mean
        feats = torch.cat([pixels[:, 1:], pixels[:, :1]], dim=1)
        direct = net.points(feats, valid.nonzero()[:, 0], metres[:, 1:4])
    assert out.logits.shape == (2, 4, 6, 8) and out.embedding.shape == (2, 16)
    # red if the logits land on other pixels, or the channels / units are mixed up
    torch.testing.assert_close(out.logits.permute(0, 2, 3, 1)[valid], direct.logits)
    assert torch.all(out.logits.permute(0, 2, 3, 1)[~valid] == 0)


def test_point_image_branch_voxels_are_in_metres():
    from models.point_branch import PointImageBranch

    # two points 0.1 m apart share a 1 m voxel only if the standardisation is undone
    net = PointImageBranch(5, 3, widths=(4,), voxel_sizes=(1.0,)).eval()
    raw = torch.tensor([[10.0, 10.2, 0.3, -1.2, 0.2], [10.1, 10.3, 0.3, -1.2, 0.2]])
    x = torch.zeros(1, 5, 1, 3)
    x[0, :, 0, 0], x[0, :, 0, 2] = ((raw - net.mean) / net.std).unbind(0)
    grouped = []
    net.points.stages[0].register_forward_hook(lambda m, a, o: grouped.append(a[1]))
    with torch.no_grad():
        net(x)
    from models.point_branch import voxel_ids

    assert voxel_ids(grouped[0], 1.0).tolist() == [0, 0]


def test_point_branch_pair_builds_the_2d_teacher_for_the_camera_and_trains():
    from datamodules.lidar_projection import POINT_MEAN, POINT_STD
    from models import build_model
    from models import point_branch as pb
    from models.pmf import PMFStream

    assert pb.POINT_MEAN == POINT_MEAN and pb.POINT_STD == POINT_STD  # the datamodule's
    teacher = build_model("point_branch", (3, 32, 64), 5, image_backbone="light")
    assert isinstance(teacher, PMFStream) and teacher.backbone == "light"
    student = build_model("point_branch", (5, 32, 64), 5, widths=(8,), voxel_sizes=(0.4,))
    x = _point_image(torch.Generator().manual_seed(1), 2, 32, 64)
    out = student(x)
    out.logits.sum().backward()
    assert all(p.grad is not None for p in student.parameters())
    empty = student(torch.zeros(1, 5, 4, 4))  # no point at all: zeros, still in the graph
    assert torch.all(empty.logits == 0) and empty.logits.requires_grad
