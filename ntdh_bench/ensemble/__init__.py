"""Vectorised ensembles: a sweep's runs that differ only in seed and data cell, trained as one
``torch.func`` model with one optimizer step (:mod:`.grouping`, :mod:`.module`, :mod:`.runner`)."""

from ntdh_bench.ensemble.grouping import ensemble_key, ineligibility, plan_tasks
from ntdh_bench.ensemble.module import EnsembleModule, MemberBatches, StackedSplit
from ntdh_bench.ensemble.runner import MemberOutcome, execute_ensemble

__all__ = [
    "EnsembleModule",
    "MemberBatches",
    "MemberOutcome",
    "StackedSplit",
    "ensemble_key",
    "execute_ensemble",
    "ineligibility",
    "plan_tasks",
]
