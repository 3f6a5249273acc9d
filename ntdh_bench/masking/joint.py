"""Algorithm 1, step 1: train ``f_a`` and ``f_b`` together with Eq. 26.

``loss = CE(y, f_a(xa)) + CE(y, f_b(xb)) + mean NCJSD(f_a(xa), f_b(xb))`` with Adam; dense
outputs use the valid, labelled pixels. The NCJSD term pulls the two networks' non-target
distributions together, so that what still diverges after training is what the modalities do
not share; Algorithm 1 then scores the items of ``xa`` on the trained ``f_a``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ntdh_bench.distillers.base import paired_logits
from ntdh_bench.divergence import decoupled_jsd


def eq26_loss(
    out_a, out_b, batch: Mapping[str, Tensor], T: float = 1.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """Eq. 26 on one batch: the total and its three terms (``ce_a``, ``ce_b``, ``ncjsd``)."""
    logits_b, logits_a, target, _ = paired_logits(out_b, out_a, dict(batch))
    _, ncjsd = decoupled_jsd(logits_a, logits_b, target, T)
    terms = {
        "ce_a": F.cross_entropy(logits_a, target),
        "ce_b": F.cross_entropy(logits_b, target),
        "ncjsd": ncjsd.mean(),
    }
    return torch.stack(list(terms.values())).sum(), terms


def joint_train(
    f_a: nn.Module,
    f_b: nn.Module,
    batches: Callable[[int], Iterable[Mapping[str, Tensor]]],
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    T: float = 1.0,
    device: str | torch.device = "cpu",
    optimizer: str = "adam",
    momentum: float = 0.9,
) -> list[float]:
    """Train ``f_a`` (on ``xa``) and ``f_b`` (on ``xb``) with Eq. 26 (Adam, or SGD with
    momentum); both end in eval mode.

    ``batches(epoch)`` yields the training batches of one epoch. Returns each epoch's mean loss.
    """
    f_a.to(device).train()
    f_b.to(device).train()
    params = [p for net in (f_a, f_b) for p in net.parameters() if p.requires_grad]
    if optimizer == "sgd":  # the released code's SGD(lr, momentum=0.9)
        step = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "adam":
        step = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"joint training optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    history = []
    for epoch in range(epochs):
        total, count = torch.zeros((), device=device), 0
        for raw in batches(epoch):
            batch = {k: v.to(device) for k, v in raw.items()}
            loss, _ = eq26_loss(f_a(batch["xa"]), f_b(batch["xb"]), batch, T)
            step.zero_grad(set_to_none=True)
            loss.backward()
            step.step()
            total, count = total + loss.detach(), count + 1
        history.append(float(total) / max(count, 1))
    f_a.eval()
    f_b.eval()
    return history
