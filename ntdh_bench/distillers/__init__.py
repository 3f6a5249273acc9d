"""The KD loss zoo: one file per method, registered by name (see ``base.Distiller``)."""

from ntdh_bench.distillers import crd, decoupled, dkd, fitnet, kd, pkt, pmf_kl, rkd, sp  # noqa: F401
from ntdh_bench.distillers.base import Distiller, paired_logits, weighted_mean
from ntdh_bench.distillers.registry import DISTILLERS, build_distiller, register_distiller

__all__ = [
    "DISTILLERS",
    "Distiller",
    "build_distiller",
    "paired_logits",
    "register_distiller",
    "weighted_mean",
]
