"""LightningModules: ``CrossModalKD`` (frozen teacher, student, distiller) and ``UnimodalModule``.

``CrossModalKD`` trains the student on ``xb`` with (paper Eq. 4)::

    loss = (1 - lam) * CE(student) + lam * sum(distiller(student_out, teacher_out, batch))

or, with ``ce_weight`` given, ``ce_weight * CE + lam * distill`` (the released code's forms:
``CE + KL`` is ``ce_weight = 1, lam = 1``; distillation alone is ``ce_weight = 0, lam = 1``).

The teacher is frozen: ``requires_grad_(False)``, excluded from the optimizer, run under
``no_grad`` and kept in eval mode through Lightning's ``train()`` calls. With no distiller the
same module trains the no-KD student baseline, still measuring its divergences to the teacher.
Validation and test log the student's accuracy (classification) or mIoU (dense) through
torchmetrics, and the teacher's as ``<stage>/teacher_<metric>`` (the teacher actually used,
masked or not); the evaluation steps return both networks' outputs, from which
:class:`ntdh_bench.callbacks.DivergenceMonitor` logs the divergences.

When the datamodule keeps its splits as tensors, the teacher's outputs on every split are
computed once at the start and served by ``index`` (``cache_teacher``): the inputs are not
augmented, so recomputing them each epoch would only repeat work.

Distillation weightings (:class:`ntdh_bench.callbacks.SampleMask` registers Algorithm 2's)
set each training batch's ``distill_weight`` from the detached outputs, removing samples from
the distillation term only, for any distiller; ``train/masked_fraction`` is logged. Feature masks
(:class:`ntdh_bench.callbacks.FeatureMask`) wrap the teacher network itself.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from datamodules.base import IGNORE_INDEX, WholeEpoch
from models.base import ModelOutput
from ntdh_bench.cross_entropy import cross_entropy
from ntdh_bench.distillers.base import Distiller
from ntdh_bench.epoch_metrics import (
    EpochMeans,
    direct_logging,
    epoch_log_step,
    log_epoch_values,
    publish,
    write_to_loggers,
)
from ntdh_bench.masking.sample_mask import SampleWeighting
from ntdh_bench.optimizers import OPTIMIZERS, build_optimizer
from ntdh_bench.teacher_rows import CachedRows, same_view
from ntdh_bench.whole_epochs import WholeEpochSteps

METRIC_NAMES = {"classification": "acc", "dense": "miou"}
_BIND_ROWS = 2  # training samples shown to Distiller.bind to size its adapters


def task_metric(task: str, num_classes: int) -> Metric:
    """Accuracy (classification) or macro mIoU over labelled items (dense), torchmetrics."""
    if task == "classification":
        return MulticlassAccuracy(num_classes=num_classes, average="micro")
    return MulticlassJaccardIndex(
        num_classes=num_classes, ignore_index=IGNORE_INDEX, average="macro"
    )


def _labels(batch: dict[str, Tensor]) -> Tensor:
    """Labels with pixels outside ``valid`` set to the ignore index (dense tasks)."""
    y = batch["y"]
    valid = batch.get("valid")
    return y if valid is None else y.masked_fill(~valid.bool(), IGNORE_INDEX)


class _SupervisedBase(WholeEpochSteps, L.LightningModule):
    """Shared by both modules: the task metric per stage, cross-entropy, the optimizer.

    Training losses are logged as epoch means, ``sum_b n_b * value_b / sum_b n_b`` as
    Lightning's ``on_epoch`` mean computes them, but accumulated here as detached tensors and
    handed to ``self.log`` once, at the epoch's last batch: a ``self.log`` call per step costs
    about 1 ms of Lightning's bookkeeping, more than a step of the suite's small networks.

    For the same reason, a run on in-memory tensors trains each epoch in one Lightning step
    (:mod:`ntdh_bench.whole_epochs`) wherever that computes what the per-step loop would;
    ``whole_epochs=False`` keeps Lightning's automatic optimisation.
    """

    def __init__(
        self,
        num_classes: int,
        task: str,
        lr: float,
        weight_decay: float,
        optimizer: str,
        momentum: float = 0.9,
        whole_epochs: bool = True,
    ) -> None:
        super().__init__()
        self.whole_epochs = whole_epochs
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if task not in METRIC_NAMES:
            raise ValueError(f"task must be one of {sorted(METRIC_NAMES)}, got {task!r}")
        self.num_classes = num_classes
        self.task = task
        self.metric_name = METRIC_NAMES[task]
        self.stage_metrics = nn.ModuleDict(
            {stage: task_metric(task, num_classes) for stage in ("val", "test")}
        )
        self._epoch_sums = EpochMeans()
        self._unwritten_means: dict[str, Tensor] = {}

    def _accumulate(self, name: str, value: Tensor | float, batch: dict[str, Tensor]) -> None:
        """Add a training batch's ``value`` to the epoch mean of ``name`` (no device sync)."""
        self._epoch_sums.add(name, value, len(batch["y"]))

    def _is_last_batch(self, batch_idx: int) -> bool:
        trainer = self._trainer
        if trainer is None:
            return True
        n = trainer.num_training_batches
        return not math.isfinite(n) or batch_idx >= n - 1

    def _log_epoch_means(self, batch_idx: int) -> None:
        """At the epoch's last batch, log each accumulated mean once (synced across ranks;
        in one process straight to the callbacks, and to the loggers at the epoch's end, see
        :mod:`ntdh_bench.epoch_metrics`)."""
        if not self._is_last_batch(batch_idx):
            return
        means = self._epoch_sums.means(self.device)
        self._epoch_sums = EpochMeans()
        if self._trainer is not None and direct_logging(self._trainer):
            publish(self._trainer, means)
            self._unwritten_means = means
            return
        for name, mean in means.items():
            self.log(name, mean, on_step=False, on_epoch=True, sync_dist=True, batch_size=1)

    def on_train_epoch_start(self) -> None:
        self._epoch_sums = EpochMeans()

    def on_train_epoch_end(self) -> None:
        """The epoch's training means reach the loggers where Lightning would write them."""
        if self._unwritten_means:
            trainer = self.trainer
            write_to_loggers(trainer, self._unwritten_means, epoch_log_step(trainer))
            self._unwritten_means = {}

    def setup(self, stage: str) -> None:
        """Choose the training loop: whole-epoch steps where possible (see the class)."""
        if stage != "fit":
            return
        dm = getattr(self.trainer, "datamodule", None)
        self.choose_step_loop(bool(getattr(dm, "uses_tensor_path", False)))

    def training_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """One training batch's loss; its terms are added to the epoch means."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, Tensor] | WholeEpoch, batch_idx: int) -> Tensor | None:
        """One batch (Lightning optimises), or under whole-epoch steps every batch of the
        epoch, each with its own optimizer step (:mod:`ntdh_bench.whole_epochs`)."""
        loss = self.step_batches(batch, self.training_loss)
        self._log_epoch_means(batch_idx)
        return loss

    def _cross_entropy(self, logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return cross_entropy(logits, _labels(batch), ignore_index=IGNORE_INDEX)

    def _log_task_metric(self, stage: str, logits: Tensor, batch: dict[str, Tensor]) -> None:
        """Update the stage's task metric; it is logged once, at the epoch's end."""
        self.stage_metrics[stage].update(logits, _labels(batch))

    def _stage_metrics(self, stage: str) -> dict[str, Metric | Tensor]:
        """The stage's torchmetrics by logged name."""
        return {f"{stage}/{self.metric_name}": self.stage_metrics[stage]}

    def _log_stage_metrics(self, stage: str) -> None:
        """Log the stage's torchmetrics once per epoch (computed and reset)."""
        log_epoch_values(self, self._stage_metrics(stage))

    def on_validation_epoch_end(self) -> None:
        self._log_stage_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_stage_metrics("test")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return build_optimizer(
            self.trainable_parameters(),
            hp.optimizer,
            lr=hp.lr,
            weight_decay=hp.weight_decay,
            momentum=hp.get("momentum", 0.9),
        )


class UnimodalModule(_SupervisedBase):
    """One network trained with cross-entropy on one modality.

    Trains the teachers (``modality="xa"``) and measures each modality's strength alone
    (Table I).
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        modality: str = "xa",
        task: str = "classification",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: str = "adam",
        momentum: float = 0.9,
        whole_epochs: bool = True,
    ) -> None:
        super().__init__(num_classes, task, lr, weight_decay, optimizer, momentum, whole_epochs)
        if modality not in ("xa", "xb"):
            raise ValueError(f"modality must be 'xa' or 'xb', got {modality!r}")
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.modality = modality

    def forward(self, x: Tensor) -> ModelOutput:
        return self.model(x)

    def keys_unread_in_training(self) -> frozenset[str]:
        """The other modality and the row index: the loss reads one input and the labels."""
        return frozenset({"xa", "xb", "index"} - {self.modality})

    def training_loss(self, batch: dict[str, Tensor]) -> Tensor:
        loss = self._cross_entropy(self.model(batch[self.modality]).logits, batch)
        self._accumulate("train/ce", loss, batch)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict:
        """The trained network's output as ``student`` (no teacher), for metric callbacks
        such as :class:`ntdh_bench.ssc_metrics.SSCMonitor`."""
        out = self.model(batch[self.modality])
        self._log_task_metric("val", out.logits, batch)
        return {"student": out, "teacher": None}

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict:
        out = self.model(batch[self.modality])
        self._log_task_metric("test", out.logits, batch)
        return {"student": out, "teacher": None}


class CrossModalKD(_SupervisedBase):
    """Cross-modal KD: a frozen teacher on ``xa`` distils into a student on ``xb``."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        distiller: Distiller | None,
        num_classes: int,
        lam: float = 0.5,
        task: str = "classification",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: str = "adam",
        momentum: float = 0.9,
        cache_teacher: bool = True,
        ce_weight: float | None = None,
        whole_epochs: bool = True,
    ) -> None:
        super().__init__(num_classes, task, lr, weight_decay, optimizer, momentum, whole_epochs)
        if distiller is not None and teacher is None:
            raise ValueError("a distiller needs a teacher")
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must lie in [0, 1], got {lam}")
        if ce_weight is not None and ce_weight < 0:
            raise ValueError(f"ce_weight must be >= 0, got {ce_weight}")
        if distiller is not None and distiller.task != task:
            raise ValueError(
                f"distiller {distiller.name!r} was built for {distiller.task!r}, the module "
                f"trains a {task!r} task"
            )
        self.save_hyperparameters(ignore=["student", "teacher", "distiller"])
        self.student = student
        self.teacher = teacher
        self.distiller = distiller
        self.distill_weightings: list[SampleWeighting] = []
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
            self.teacher_metrics = nn.ModuleDict(
                {stage: task_metric(task, num_classes) for stage in ("val", "test")}
            )
        self._teacher_cache: dict[str, ModelOutput] = {}
        self._embedding_is_last: set[str] = set()  # splits whose embedding is features[-1]
        self._teacher_scores: dict[str, Tensor] = {}  # per split, while its outputs are cached

    def add_distill_weighting(self, weighting: SampleWeighting) -> None:
        """Weigh every training batch's distillation term with ``weighting`` (Algorithm 2)."""
        if self.distiller is None:
            raise ValueError("a sample mask weighs the distillation term; it needs a distiller")
        if weighting not in self.distill_weightings:
            self.distill_weightings.append(weighting)

    # --- the teacher -------------------------------------------------------------------
    def train(self, mode: bool = True) -> CrossModalKD:
        """Lightning calls ``train()`` every epoch; the teacher must stay in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def teacher_input(self, batch: dict[str, Tensor]) -> Tensor:
        """What the teacher is fed; a feature mask lives in the teacher network itself
        (:class:`ntdh_bench.masking.MaskedNetwork`), so the cached outputs include it."""
        return batch["xa"]

    @torch.no_grad()
    def _run_teacher(self, xa: Tensor) -> ModelOutput:
        return self.teacher(xa).detach()

    def keys_unread_in_training(self) -> frozenset[str]:
        """``xa`` once the teacher's training outputs are cached (served by ``index``)."""
        return frozenset({"xa"}) if "train" in self._teacher_cache else frozenset()

    def teacher_output(self, batch: dict[str, Tensor], split: str) -> ModelOutput:
        """The teacher's output for a batch: from the cache when there is one."""
        cached = self._teacher_cache.get(split)
        if cached is not None:
            return CachedRows(cached, batch["index"], split in self._embedding_is_last)
        return self._run_teacher(self.teacher_input(batch))

    def _fill_teacher_cache(self) -> None:
        self._teacher_cache, self._embedding_is_last, self._teacher_scores = {}, set(), {}
        dm = getattr(self.trainer, "datamodule", None)
        if not self.hparams.cache_teacher or self.teacher is None:
            return
        if dm is None or not getattr(dm, "uses_tensor_path", False):
            return
        for split in ("train", "val", "test"):
            try:
                tensors = dm.split_tensors(split)
            except KeyError:
                continue
            chunks = []
            chunk = dm.batch_size  # a training batch fits; so does its forward pass alone
            for start in range(0, len(tensors["y"]), chunk):
                part = {k: v[start : start + chunk].to(self.device) for k, v in tensors.items()}
                chunks.append(self._run_teacher(self.teacher_input(part)))
            features = [torch.cat(f) for f in zip(*(c.features for c in chunks), strict=True)]
            is_last = all(
                same_view(c.embedding, c.features[-1] if c.features else None) for c in chunks
            )
            if is_last:
                self._embedding_is_last.add(split)
            self._teacher_cache[split] = ModelOutput(
                logits=torch.cat([c.logits for c in chunks]),
                features=features,
                embedding=None
                if chunks[0].embedding is None
                else features[-1]
                if is_last
                else torch.cat([c.embedding for c in chunks]),
            )

    def on_fit_start(self) -> None:
        self._fill_teacher_cache()

    def on_test_start(self) -> None:
        if not self._teacher_cache:
            self._fill_teacher_cache()

    def on_validation_start(self) -> None:
        if not self._teacher_cache:
            self._fill_teacher_cache()

    # --- the distiller -----------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Bind the distiller (its adapters) before Lightning builds the optimizer."""
        super().setup(stage)
        if self.distiller is not None:
            self._bind_distiller()

    def _bind_distiller(self) -> None:
        """Call :meth:`Distiller.bind` with both networks' outputs on a few training samples.

        Without a datamodule there is nothing to bind from; a distiller that needs binding then
        says so when it is first called.
        """
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            return
        labels = None
        if getattr(dm, "uses_tensor_path", False):
            train = dm.split_tensors("train")
            labels, num_train = train["y"], len(train["y"])
            batch = {k: v[:_BIND_ROWS] for k, v in train.items()}
        else:
            loader = dm.train_dataloader()
            batch, num_train = next(iter(loader)), len(loader.dataset)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        was_training = self.student.training
        self.student.eval()
        with torch.no_grad():
            student_out = self.student(batch["xb"])
        self.student.train(was_training)
        teacher_out = self._run_teacher(self.teacher_input(batch))
        self.distiller.bind(student_out, teacher_out, num_train, labels)

    def on_train_epoch_start(self) -> None:
        """Schedules inside the distiller (DKD's warm-up, FitNet's stages) follow the epoch."""
        super().on_train_epoch_start()
        if self.distiller is not None:
            self.distiller.set_epoch(self.current_epoch)

    # --- training ----------------------------------------------------------------------
    def forward(self, x: Tensor) -> ModelOutput:
        return self.student(x)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student and distiller parameters; never the teacher's."""
        params = list(self.student.parameters())
        if self.distiller is not None:
            params += list(self.distiller.parameters())
        return [p for p in params if p.requires_grad]

    def training_loss(self, batch: dict[str, Tensor]) -> Tensor:
        student_out = self.student(batch["xb"])
        ce = self._cross_entropy(student_out.logits, batch)
        self._accumulate("train/ce", ce, batch)
        if self.distiller is None:
            return ce
        teacher_out = self.teacher_output(batch, "train")
        for weighting in self.distill_weightings:
            batch = self._weighted(weighting, student_out, teacher_out, batch)
        terms = self.distiller(student_out, teacher_out, batch)
        values = list(terms.values())
        distill = values[0] if len(values) == 1 else torch.stack(values).sum()
        for name, value in terms.items():
            self._accumulate(f"train/{name}", value, batch)
        lam, ce_weight = self.hparams.lam, self.hparams.ce_weight
        loss = (1.0 - lam if ce_weight is None else ce_weight) * ce + lam * distill
        self._accumulate("train/loss", loss, batch)
        return loss

    def _weighted(
        self,
        weighting: SampleWeighting,
        student_out: ModelOutput,
        teacher_out: ModelOutput,
        batch: dict[str, Tensor],
    ) -> dict[str, Tensor]:
        """The batch with the weighting's ``distill_weight`` (times any weight the batch
        already carries); logs the fraction of masked samples (pixels)."""
        weight, fraction = weighting(student_out, teacher_out, batch)
        if "distill_weight" in batch:
            weight = weight * batch["distill_weight"]
        self._accumulate("train/masked_fraction", fraction, batch)
        return {**batch, "distill_weight": weight}

    # --- evaluation --------------------------------------------------------------------
    def _evaluate(self, batch: dict[str, Tensor], stage: str) -> dict[str, ModelOutput | None]:
        student_out = self.student(batch["xb"])
        self._log_task_metric(stage, student_out.logits, batch)
        if self.teacher is None:
            return {"student": student_out, "teacher": None}
        teacher_out = self.teacher_output(batch, stage)
        if stage not in self._teacher_scores:
            self.teacher_metrics[stage].update(teacher_out.logits, _labels(batch))
        return {"student": student_out, "teacher": teacher_out}

    def _stage_metrics(self, stage: str) -> dict[str, Metric | Tensor]:
        metrics = super()._stage_metrics(stage)
        if self.teacher is not None:
            metrics[f"{stage}/teacher_{self.metric_name}"] = self._teacher_score(stage)
        return metrics

    def _teacher_score(self, stage: str) -> Metric | Tensor:
        """The teacher's metric for the stage: while its outputs on the split are cached they
        are the same every epoch, and so is the score, computed once and then reused; else
        the torchmetrics object, computed by the caller."""
        score = self._teacher_scores.get(stage)
        if score is not None:
            return score
        metric = self.teacher_metrics[stage]
        trainer = self._trainer
        sanity = trainer is not None and trainer.sanity_checking  # a few batches only
        if stage not in self._teacher_cache or sanity or not metric.update_called:
            return metric
        score = self._teacher_scores[stage] = torch.as_tensor(metric.compute())
        metric.reset()
        return score

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict:
        """Both networks' outputs, for :class:`ntdh_bench.callbacks.DivergenceMonitor`."""
        return self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict:
        return self._evaluate(batch, "test")
