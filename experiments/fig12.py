"""Fig. 12: where teacher and student disagree on the non-target classes, over the camera image.

For one SemanticKITTI frame, each projected point (a valid pixel of the point image) is drawn
over the camera image, coloured by its NCJSD between the teacher's prediction (camera image)
and the student's (point image) at temperature ``T``; the ``top`` fraction of points with the
largest NCJSD, those Algorithm 2's ``true`` mask drops, are ringed. The networks are two state
dicts (a cached teacher's ``cache/teachers/<hash>/model.pt`` is one; a student saved with
``torch.save(module.student.state_dict(), path)`` the other) of the config's architecture.

    python experiments/fig12.py --teacher cache/teachers/<hash>/model.pt --student s.pt
    python experiments/fig12.py --teacher t.pt --student s.pt --frame 3 --set model.name=pmf_light
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ntdh_bench.builders import build_network, build_run_datamodule
from ntdh_bench.config import dataset_config, run_config
from ntdh_bench.divergence import decoupled_jsd

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def point_ncjsd(
    teacher: nn.Module, student: nn.Module, sample: Mapping[str, Tensor], T: float = 1.0
) -> tuple[Tensor, Tensor]:
    """``(pixels (N, 2) as (row, col), ncjsd (N,))`` over one sample's valid, labelled pixels."""
    teacher.eval()
    student.eval()
    with torch.no_grad():
        z_t = teacher(sample["xa"][None]).logits[0]
        z_s = student(sample["xb"][None]).logits[0]
    keep = sample["valid"].bool() & (sample["y"] != 255)
    rows, cols = keep.nonzero(as_tuple=True)
    target = sample["y"][keep]
    ncjsd = decoupled_jsd(z_t[:, keep].T, z_s[:, keep].T, target, T)[1]
    return torch.stack([rows, cols], dim=1), ncjsd


def draw_fig12(
    image: np.ndarray, pixels: np.ndarray, ncjsd: np.ndarray, top: float = 0.25, title: str = ""
) -> Figure:
    """The points over ``image`` (``H x W x 3`` in [0, 1]) coloured by NCJSD, the ``top``
    fraction with the largest NCJSD ringed in red."""
    fig, ax = plt.subplots(figsize=(max(6.0, image.shape[1] / 80), max(2.5, image.shape[0] / 80)))
    ax.imshow(image)
    order = np.argsort(ncjsd)
    dots = ax.scatter(
        pixels[order, 1], pixels[order, 0], c=ncjsd[order], s=6, cmap="viridis", vmin=0
    )
    count = int(np.floor(top * len(ncjsd)))
    if count:
        worst = order[-count:]
        ax.scatter(
            pixels[worst, 1],
            pixels[worst, 0],
            s=40,
            facecolors="none",
            edgecolors="red",
            linewidths=0.8,
            label=f"largest {top:.0%} NCJSD",
        )
        ax.legend(loc="upper right", fontsize=7)
    fig.colorbar(dots, ax=ax, shrink=0.8, label="NCJSD teacher vs student (nats)")
    ax.set_axis_off()
    ax.set_title(title or "Fig. 12: points with the largest NCJSD over the image")
    return fig


def camera_image(xa: Tensor) -> np.ndarray:
    """The standardised camera image back in [0, 1], ``H x W x 3``, without the zero padding
    that the datamodule adds at the bottom and right (rows / columns that are all zero)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    content = (xa != 0).any(dim=0)
    rows = int(content.any(dim=1).nonzero().max()) + 1 if content.any() else xa.shape[1]
    cols = int(content.any(dim=0).nonzero().max()) + 1 if content.any() else xa.shape[2]
    return (xa[:, :rows, :cols] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def fig12(
    teacher: nn.Module,
    student: nn.Module,
    sample: Mapping[str, Tensor],
    path: Path,
    T: float = 1.0,
    top: float = 0.25,
) -> Path:
    """Draw Fig. 12 for one sample (camera teacher, point-image student) into ``path``."""
    pixels, ncjsd = point_ncjsd(teacher, student, sample, T)
    fig = draw_fig12(camera_image(sample["xa"]), pixels.numpy(), ncjsd.numpy(), top)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, required=True, help="teacher state dict (xa)")
    parser.add_argument("--student", type=Path, required=True, help="student state dict (xb)")
    parser.add_argument("--frame", type=int, default=0, help="index in the test split")
    parser.add_argument("--T", type=float, default=1.0, help="temperature of the NCJSD")
    parser.add_argument("--top", type=float, default=0.25, help="fraction of points ringed")
    parser.add_argument("--out", type=Path, default=Path("results/fig12/fig12.png"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    config = run_config(dataset_config("semantic_kitti", overrides=args.overrides), "teacher", 0)
    dm = build_run_datamodule(config)
    dm.setup("test")
    sample = dm.test_dataloader().dataset[args.frame]
    teacher, student = build_network(config, dm, "xa"), build_network(config, dm, "xb")
    teacher.load_state_dict(torch.load(args.teacher, map_location="cpu", weights_only=True))
    student.load_state_dict(torch.load(args.student, map_location="cpu", weights_only=True))
    path = fig12(teacher, student, sample, args.out, args.T, args.top)
    print(f"written to {path}")
    return path


if __name__ == "__main__":
    main()
