"""The runs' optimizers: Adam, AdamW or SGD, fused where torch has the kernel."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ntdh_bench.torch_env import skip_failing_nvml_probe

OPTIMIZERS = ("adam", "adamw", "sgd")

skip_failing_nvml_probe()  # 0.1 ms per Adam step on machines without NVML (see torch_env)


def build_optimizer(
    params: Iterable[nn.Parameter],
    optimizer: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """The run's optimizer, ``adam`` | ``adamw`` | ``sgd`` (``momentum`` for SGD only).

    ``fused`` (default: wherever every parameter is a float tensor on the CPU or a CUDA
    device) runs each update as one kernel per tensor: the same update up to float rounding,
    about 3x cheaper for Adam on the suite's small MLPs (50 against 156 us a step on the
    synthetic one, CPU), which is a sixth of their training step.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    params = list(params)
    if fused is None:
        fused = bool(params) and all(fused_kernel_available(p) for p in params)
    if optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused
        )
    cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=weight_decay, fused=fused)


def fused_kernel_available(param: Tensor) -> bool:
    """Whether torch's fused Adam/SGD kernels take this parameter (float, CPU or CUDA)."""
    return param.is_floating_point() and param.device.type in ("cpu", "cuda")
