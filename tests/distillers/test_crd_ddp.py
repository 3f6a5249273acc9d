"""CRD under data parallelism: two gloo processes on the CPU end with identical memory banks.

The workers drive the distiller directly with ``torch.distributed``, so that each spawned
process imports only torch and the distiller (about 7 s); ``test_crd_ddp_lightning.py`` runs
the same check through Lightning's DDP (slow).
"""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models.base import ModelOutput
from ntdh_bench.distillers import build_distiller

WORLD, N, STEPS = 2, 40, 3
LABELS = torch.arange(N) % 4


def _rank_indices(rank: int, step: int) -> torch.Tensor:
    """Disjoint rows per rank and step, unequal batch sizes, and one row both ranks write."""
    start = 12 * step + 6 * rank
    rows = torch.arange(start, start + 6 - rank)
    return torch.cat([rows, torch.tensor([N - 1])]) if step == STEPS - 1 else rows


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    torch.manual_seed(0)  # the same initial heads and banks, as DDP's start-up broadcast gives
    crd = build_distiller("crd", dim=8, num_negatives=16)
    crd.bind(
        ModelOutput(torch.zeros(2, 4), [], torch.zeros(2, 6)),
        ModelOutput(torch.zeros(2, 4), [], torch.zeros(2, 5)),
        num_train_samples=N,
        train_labels=LABELS,
    )
    initial = (crd.memory_s.clone(), crd.memory_t.clone())
    gen = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
    for step in range(STEPS):
        index = _rank_indices(rank, step)
        student = ModelOutput(
            torch.zeros(len(index), 4), [], torch.randn(len(index), 6, generator=gen)
        )
        teacher = ModelOutput(
            torch.zeros(len(index), 4), [], torch.randn(len(index), 5, generator=gen)
        )
        crd(student, teacher, {"index": index, "y": LABELS[index]})["crd"].backward()
    torch.save(
        {
            "memory_s": crd.memory_s,
            "memory_t": crd.memory_t,
            "log_z": crd.log_z,
            "initial": initial,
        },
        Path(out_dir) / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_crd_memory_is_identical_on_both_ranks_and_holds_every_ranks_updates(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for key in ("memory_s", "memory_t", "log_z"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    written = torch.cat([_rank_indices(r, s) for r in range(WORLD) for s in range(STEPS)]).unique()
    unwritten = torch.tensor(sorted(set(range(N)) - set(written.tolist())))
    for bank, initial in zip(("memory_s", "memory_t"), ranks[0]["initial"], strict=True):
        changed = (ranks[0][bank] != initial).any(dim=1)
        assert changed[written].all(), f"{bank}: some rank's rows were lost"
        assert not changed[unwritten].any()
