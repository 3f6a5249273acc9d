"""One LightningModule that trains K same-shaped networks as a ``torch.func`` ensemble.

The members' parameters are stacked (``stack_module_state``): every tensor gets a leading
member dimension, and one ``vmap`` of ``functional_call`` runs all K forwards and losses at
once. The loss handed to Lightning is the *sum* of the members' losses, so the gradient of
member k's parameters is exactly the gradient of member k's own loss, and one optimizer step
updates all members. Adam, AdamW and SGD (with momentum and weight decay) act elementwise, so
each member follows the trajectory it would follow alone (same initialisation, same batch order
``randperm(seed + epoch)``, same loss) up to float rounding of the batched products.

Each member keeps its own data (its cell of the sweep), its own teacher outputs, its own batch
order and its own epoch means, validation curves and divergences, which the owner reads back per
member (:mod:`ntdh_bench.ensemble.runner`). Evaluation is done here, without Lightning's
validation loop, at the epochs Lightning's ``check_val_every_n_epoch`` would choose.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from datamodules.base import IGNORE_INDEX, WholeEpoch, WholeEpochLoader
from models import MLP
from models.base import ModelOutput
from ntdh_bench.callbacks import DEFAULT_HISTORY, DIVERGENCES
from ntdh_bench.cross_entropy import per_sample_cross_entropy
from ntdh_bench.distillers.base import Distiller
from ntdh_bench.divergence import divergence_report
from ntdh_bench.guards import divergence_factor, divergence_message
from ntdh_bench.optimizers import OPTIMIZERS, build_optimizer
from ntdh_bench.whole_epochs import WholeEpochSteps

EpochSink = Callable[[int, dict[str, float], int], None]  # (member, metrics, step)

# vmap returns and takes pytrees of tensors: let it see through a ModelOutput (logits, the
# feature list, the embedding), so that a distiller's call is vmapped as it is written.
if ModelOutput not in pytree.SUPPORTED_NODES:
    pytree.register_dataclass(ModelOutput)


@dataclass
class StackedSplit:
    """One split of every member: ``x (K, N, ...)``, ``y (K, N)``, teacher ``logits (K, N, C)``
    and, for distillers that read them, the teacher's ``features`` (each ``(K, N, ...)``; its
    embedding is the last one, as in every MLP)."""

    x: Tensor
    y: Tensor
    teacher_logits: Tensor | None = None
    teacher_features: list[Tensor] | None = None

    def to(self, device: torch.device) -> StackedSplit:
        t, f = self.teacher_logits, self.teacher_features
        return StackedSplit(
            self.x.to(device),
            self.y.to(device),
            None if t is None else t.to(device),
            None if f is None else [v.to(device) for v in f],
        )


def _linear(h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``F.linear`` per member: ``h (K, B, in)``, ``weight (K, out, in)``, ``bias (K, out)``."""
    return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))


# The batch of a full-batch epoch: every row, in order (Lightning skips a ``None`` batch).
WHOLE_SPLIT = torch.empty(0, 0, dtype=torch.long)


# Member rows per group of a training step's forward and backward (see
# EnsembleModule._losses_in_chunks): 16384 rows of the suite's 16-wide MLPs stay in cache.
CHUNK_ROWS = 16384


def _member_slice(output: ModelOutput, a: int, b: int) -> ModelOutput:
    """Members ``a:b`` of a stacked output."""
    return ModelOutput(
        output.logits[a:b],
        [f[a:b] for f in output.features],
        None if output.embedding is None else output.embedding[a:b],
    )


def _rows(stacked: Tensor, index: Tensor) -> Tensor:
    """``stacked[k, index[k]]`` for every member k, as one ``index_select`` on the flattened
    member and sample dims (2-3x faster than advanced indexing with two index tensors);
    :data:`WHOLE_SPLIT`: every row, in order."""
    if index.numel() == 0:
        return stacked
    members, n = stacked.shape[:2]
    offsets = torch.arange(members, device=index.device)[:, None] * n
    flat = stacked.reshape(members * n, *stacked.shape[2:])
    rows = flat.index_select(0, (index + offsets).reshape(-1))
    return rows.view(*index.shape, *stacked.shape[2:])


class MemberBatches:
    """Per-member index batches ``(K, B)``: member k's order is ``randperm(N, seed_k + epoch)``,
    the order :class:`datamodules.base.TensorBatchLoader` gives the same run alone."""

    def __init__(self, num_samples: int, batch_size: int, seeds: Sequence[int]) -> None:
        self.num_samples, self.batch_size, self.seeds = num_samples, batch_size, list(seeds)
        self.epoch = 0
        self.sampler = self  # Lightning calls loader.sampler.set_epoch(epoch)
        self.batch_sampler = None
        self.device = torch.device("cpu")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        if self.batch_size >= self.num_samples:  # the whole split in order, as
            yield WHOLE_SPLIT.to(self.device)  # TensorBatchLoader gives it: no gather
            return
        orders = torch.stack(
            [
                torch.randperm(
                    self.num_samples, generator=torch.Generator().manual_seed(seed + self.epoch)
                )
                for seed in self.seeds
            ]
        ).to(self.device)
        for b in range(len(self)):
            yield orders[:, b * self.batch_size : (b + 1) * self.batch_size]


class EnsembleModule(WholeEpochSteps, L.LightningModule):
    """K members: networks on ``modality``, optionally distilled from cached teacher logits.

    Args:
        networks: the members, initialised as each run alone would be (same architecture).
        splits: ``{"train", "val", "test"}`` stacked data of the members.
        seeds: each member's batch-order seed (its datamodule's seed).
        distiller: a parameter-free logit distiller (None: cross-entropy only).
        lam, ce_weight: the loss ``(1 - lam) CE + lam distill`` or ``ce_weight CE + lam distill``.
        val_every: validate after epochs ``e`` with ``(e + 1) % val_every == 0``.
        monitor_T: temperature of the logged divergences.
        sink: receives ``(member, metrics, step)`` for every epoch's logged values.
    """

    def __init__(
        self,
        networks: Sequence[nn.Module],
        splits: dict[str, StackedSplit],
        seeds: Sequence[int],
        batch_size: int,
        eval_batch_size: int,
        distiller: Distiller | None = None,
        lam: float = 0.0,
        ce_weight: float | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: str = "adam",
        momentum: float = 0.9,
        val_every: int = 1,
        monitor_T: float = 1.0,
        sink: EpochSink | None = None,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if any(len(list(n.buffers())) for n in networks):
            raise ValueError("ensemble members must have no buffers (batch-norm statistics)")
        if distiller is not None and len(list(distiller.parameters())):
            raise ValueError(f"distiller {distiller.name!r} has parameters; it trains alone")
        params, _ = stack_module_state(list(networks))
        self.names = list(params)
        self.stacked = nn.ParameterList(nn.Parameter(params[n].detach()) for n in self.names)
        self._template = (copy.deepcopy(networks[0]).to("meta"),)  # not a registered submodule
        self.splits = splits
        self.members = len(networks)
        self.seeds = list(seeds)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.distiller = distiller
        self.lam, self.ce_weight = lam, ce_weight
        self.opt = dict(lr=lr, weight_decay=weight_decay, optimizer=optimizer, momentum=momentum)
        self.val_every, self.monitor_T = val_every, monitor_T
        self.sink = sink
        self.history: list[dict[str, dict[int, float]]] = [{} for _ in networks]
        self.errors: list[str | None] = [None] * len(networks)
        self.first_loss: list[float | None] = [None] * len(networks)
        self._sums: dict[str, Tensor] = {}
        self._count = 0
        self._factor = divergence_factor()

    # --- the members as functions ------------------------------------------------------
    def member_params(self) -> dict[str, Tensor]:
        return dict(zip(self.names, self.stacked, strict=True))

    def member_state(self, k: int) -> dict[str, Tensor]:
        """Member k's ``state_dict``, as the network trained alone would have it."""
        return {
            n: p[k].detach().cpu().clone() for n, p in zip(self.names, self.stacked, strict=True)
        }

    def forward_all(self, params: dict[str, Tensor], x: Tensor) -> ModelOutput:
        """Every member's output on its own ``x (K, B, ...)``, stacked: ``vmap`` of the
        network's ``functional_call``, or for the suite's :class:`~models.MLP` the same layers
        as batched products (``baddbmm`` over the member dimension), which skips ``vmap``'s
        per-operation dispatch (20% of a synthetic step) and gives the same values."""
        template = self._template[0]
        if type(template) is not MLP:
            return vmap(lambda p, xb: functional_call(template, p, (xb,)))(params, x)
        h, features = x.flatten(2), []
        for i in range(len(template.hidden)):
            h = _linear(h, params[f"hidden.{i}.weight"], params[f"hidden.{i}.bias"]).relu()
            features.append(h)
        logits = _linear(h, params["head.weight"], params["head.bias"])
        return ModelOutput(logits=logits, features=features, embedding=h)

    def _losses_in_chunks(
        self, params: dict[str, Tensor], x: Tensor, y: Tensor, teacher: ModelOutput | None
    ) -> dict[str, Tensor]:
        """:meth:`_losses` of groups of about :data:`CHUNK_ROWS` member rows, concatenated.

        A full-batch step stacks every member's whole split (10 x 6000 rows in the released
        protocol), and each elementwise pass then streams megabytes from memory; in groups
        that stay in the core's cache the same step is about 15% faster (36 -> 31 ms,
        measured); batches of a few hundred rows form one group. The groups' parameters are
        views of the stacked ones, so every member's gradient is still its own loss's.
        """
        members, rows = x.shape[:2]
        size = max(1, CHUNK_ROWS // max(rows, 1))
        if size >= members:
            return self._losses(params, x, y, teacher)
        parts = []
        for a in range(0, members, size):
            b = min(a + size, members)
            part = None if teacher is None else _member_slice(teacher, a, b)
            group = {name: value[a:b] for name, value in params.items()}
            parts.append(self._losses(group, x[a:b], y[a:b], part))
        return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}

    def _losses(
        self, params: dict[str, Tensor], x: Tensor, y: Tensor, teacher: ModelOutput | None
    ) -> dict[str, Tensor]:
        """Per member ``(K,)``: cross-entropy, the distiller's terms (vmapped as written) and
        the run's loss."""
        student = self.forward_all(params, x)
        members, batch, classes = student.logits.shape
        ce = per_sample_cross_entropy(
            student.logits.reshape(members * batch, classes), y.reshape(-1), IGNORE_INDEX
        )
        ce = ce.view(members, batch).mean(dim=1)  # classification: no ignored label
        if self.distiller is None:
            return {"ce": ce}
        if teacher.features and teacher.embedding is None:
            teacher = ModelOutput(teacher.logits, teacher.features, teacher.features[-1])
        terms = vmap(lambda s, t, yb: self.distiller(s, t, {"y": yb}))(student, teacher, y)
        distill = torch.stack(list(terms.values())).sum(dim=0)
        weight = 1.0 - self.lam if self.ce_weight is None else self.ce_weight
        return {"ce": ce, **terms, "loss": weight * ce + self.lam * distill}

    # --- training ----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Whole-epoch steps where possible (:mod:`ntdh_bench.whole_epochs`): the members'
        data are in memory."""
        if stage == "fit":
            self.choose_step_loop(data_in_memory=True)

    def train_dataloader(self) -> MemberBatches | WholeEpochLoader:
        loader = MemberBatches(len(self.splits["train"].y[0]), self.batch_size, self.seeds)
        loader.device = self.device
        return WholeEpochLoader(loader) if self.whole_epoch_steps else loader

    def on_fit_start(self) -> None:
        self.splits = {name: split.to(self.device) for name, split in self.splits.items()}

    def on_train_epoch_start(self) -> None:
        self._sums, self._count = {}, 0
        if self.distiller is not None:
            self.distiller.set_epoch(self.current_epoch)

    def training_step(self, index: Tensor | WholeEpoch, batch_idx: int) -> Tensor | None:
        """The summed loss of one batch of every member (Lightning optimises), or under
        whole-epoch steps the epoch trained here."""
        return self.step_batches(index, self._batch_loss)

    def _batch_loss(self, index: Tensor) -> Tensor:
        """The sum of the members' losses on their rows ``index (K, B)``; adds the batch to
        the epoch means."""
        train = self.splits["train"]
        x, y = _rows(train.x, index), _rows(train.y, index)
        teacher = None
        if train.teacher_logits is not None:
            features = [_rows(f, index) for f in train.teacher_features or []]
            teacher = ModelOutput(_rows(train.teacher_logits, index), features)
        losses = self._losses_in_chunks(self.member_params(), x, y, teacher)
        n = y.shape[1]
        for name, value in losses.items():  # epoch means: sum_b n_b value_b / sum_b n_b
            previous = self._sums.get(name)
            self._sums[name] = value.detach() * n + (0 if previous is None else previous)
        self._count += n
        return losses["loss" if "loss" in losses else "ce"].sum()

    def on_train_batch_end(self, outputs: Any, batch: Tensor, batch_idx: int) -> None:
        """The epoch's means, guards and validation, after its last optimizer step: here
        rather than in ``on_train_epoch_end``, which Lightning calls after the callbacks'
        (the epoch checkpoint must hold this epoch's history, as a run alone's does)."""
        if batch_idx == self.trainer.num_training_batches - 1:
            self._end_epoch()

    def _end_epoch(self) -> None:
        epoch, step = self.current_epoch, self.global_step
        means = {f"train/{k}": (v / self._count).tolist() for k, v in self._sums.items()}
        per_member = [
            {name: values[k] for name, values in means.items()} for k in range(self.members)
        ]
        self._guard(per_member, epoch)
        if (epoch + 1) % self.val_every == 0:
            for k, metrics in enumerate(self.evaluate("val")):
                per_member[k].update(metrics)
                for name in DEFAULT_HISTORY:
                    if name in metrics:
                        self.history[k].setdefault(name, {})[epoch] = metrics[name]
        if self.sink is not None:
            for k, metrics in enumerate(per_member):
                self.sink(k, metrics, step)

    def _guard(self, per_member: list[dict[str, float]], epoch: int) -> None:
        """The guards of a run alone, per member: a member whose loss is not finite or has
        diverged is failed (its error is kept); the others train on."""
        name = "train/loss" if self.distiller is not None else "train/ce"
        for k, metrics in enumerate(per_member):
            if self.errors[k] is not None:
                continue
            value = metrics[name]
            where = f"epoch {epoch} (step {self.global_step})"
            if not math.isfinite(value):
                self.errors[k] = f"{name} is {value} at {where}"
            elif self.first_loss[k] is None:
                self.first_loss[k] = value
            else:
                self.errors[k] = divergence_message(
                    name, value, self.first_loss[k], self._factor, where
                )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The runs' optimizer over the stacked parameters, fused as for a run alone (one
        pass per tensor, which matters most once the stacked parameters outgrow the caches:
        Adam on the digits MLPs 90 -> 67 ms a step at K = 5)."""
        o = self.opt
        return build_optimizer(
            self.stacked.parameters(),
            o["optimizer"],
            lr=o["lr"],
            weight_decay=o["weight_decay"],
            momentum=o["momentum"],
        )

    # --- evaluation --------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str) -> list[dict[str, float]]:
        """Per member: ``<split>/acc``, and with a teacher ``<split>/teacher_acc`` and the
        five divergences (means over the split's samples, at ``monitor_T``)."""
        data = self.splits[split].to(self.device)
        params = {n: p.detach() for n, p in self.member_params().items()}
        chunks = [
            self.forward_all(params, data.x[:, s : s + self.eval_batch_size]).logits
            for s in range(0, data.x.shape[1], self.eval_batch_size)
        ]
        logits = torch.cat(chunks, dim=1)
        values = {f"{split}/acc": (logits.argmax(-1) == data.y).float().mean(1)}
        t = data.teacher_logits
        if t is not None:
            values[f"{split}/teacher_acc"] = (t.argmax(-1) == data.y).float().mean(1)
            k, n, c = logits.shape
            report = divergence_report(
                t.reshape(k * n, c), logits.reshape(k * n, c), data.y.reshape(-1), self.monitor_T
            )
            for name in DIVERGENCES:
                values[f"{split}/{name}"] = report[name].float().reshape(k, n).mean(1)
        lists = {name: v.tolist() for name, v in values.items()}
        return [{name: v[k] for name, v in lists.items()} for k in range(self.members)]

    # --- resume ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ensemble"] = {
            "history": self.history,
            "errors": self.errors,
            "first_loss": self.first_loss,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("ensemble", {})
        self.history = state.get("history", self.history)
        self.errors = state.get("errors", self.errors)
        self.first_loss = state.get("first_loss", self.first_loss)
