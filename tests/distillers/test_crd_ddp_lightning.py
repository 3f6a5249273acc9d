"""CRD through Lightning's DDP on two CPU processes (gloo): the banks end identical."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from datamodules import SyntheticDataModule
from models import MLP
from ntdh_bench.distillers import build_distiller
from ntdh_bench.module import CrossModalKD
from ntdh_bench.training import quiet_lightning

WORLD = 2


class _SaveBanks(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer: L.Trainer, pl_module: CrossModalKD) -> None:
        crd = pl_module.distiller
        banks = {"memory_s": crd.memory_s.clone(), "memory_t": crd.memory_t.clone()}
        torch.save(banks, Path(self.out_dir) / f"lightning_rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_crd_memory_is_identical_across_lightning_ddp_ranks(tmp_path):
    """The real path: CrossModalKD binds CRD on each rank, Lightning's DDP trains it.

    Buffer broadcasting is switched off, so only the all-gather can keep the banks equal.
    """
    L.seed_everything(0, verbose=False)
    dm = SyntheticDataModule(n_samples=300, n_train=200, batch_size=32)
    module = CrossModalKD(MLP(50, 4), MLP(50, 4), build_distiller("crd"), num_classes=4)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=0,
        accelerator="cpu",
        devices=WORLD,
        strategy=DDPStrategy(start_method="spawn", broadcast_buffers=False),
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[_SaveBanks(str(tmp_path))],
    )
    with quiet_lightning():
        trainer.fit(module, datamodule=dm)
    ranks = [torch.load(tmp_path / f"lightning_rank{r}.pt") for r in range(WORLD)]
    for key in ("memory_s", "memory_t"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key
