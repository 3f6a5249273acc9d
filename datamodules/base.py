"""``PairedDataModule``: the batch-dict contract and the on-device tensor fast path.

Every datamodule of the suite yields dicts with ``xa`` (teacher modality), ``xb`` (student
modality), ``y`` (labels) and ``index`` (the sample's position in its split, for CRD's memory
bank and for the masks). Dense tasks add ``valid``.

Small datasets implement :meth:`PairedDataModule.build_split_tensors`; their splits then live
as tensors on the training device and batches are cut by index slicing, with no DataLoader
and no worker processes (for a 50-feature MLP, a DataLoader costs more than the step).
Larger datasets implement :meth:`PairedDataModule.build_datasets` instead and get ordinary
DataLoaders.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IGNORE_INDEX = 255  # the label of dense items (pixels, points, voxels) without a class
REQUIRED_KEYS = ("xa", "xb", "y")


STRICT_VARIABLE = "NTDH_STRICT"
_DATA_WARNINGS: Counter[str] = Counter()


class DataWarning(UserWarning):
    """A data problem that changes what is trained on (a short read zero-padded, a clip left
    out, a file skipped): shown to the user and counted in the run record."""


class DataError(ValueError):
    """A data problem under ``--strict`` (``$NTDH_STRICT=1``): the run stops instead."""


def strict_data() -> bool:
    """Whether data problems are errors: ``$NTDH_STRICT`` set to anything but ``""``/``0``."""
    return os.environ.get(STRICT_VARIABLE, "") not in ("", "0")


def report_data_problem(kind: str, message: str, count: int = 1) -> None:
    """Warn that ``count`` items were affected by problem ``kind`` (``message`` names them),
    and count them for the run record (:func:`data_warning_counts`); raise
    :class:`DataError` instead when strict (:func:`strict_data`)."""
    if count <= 0:
        return
    if strict_data():
        raise DataError(f"{message} (an error under --strict / {STRICT_VARIABLE}=1)")
    _DATA_WARNINGS[kind] += count
    log.warning("%s", message)
    warnings.warn(message, DataWarning, stacklevel=2)


def data_warning_counts() -> dict[str, int]:
    """Items affected per problem kind since :func:`reset_data_warnings` (this process)."""
    return dict(_DATA_WARNINGS)


def reset_data_warnings() -> None:
    """Start counting afresh (at the start of each run)."""
    _DATA_WARNINGS.clear()


@contextlib.contextmanager
def data_environment(cache_dir: str | os.PathLike | None, strict: bool) -> Iterator[None]:
    """Point every default cache location at ``cache_dir`` (``$NTDH_CACHE``) and set
    ``$NTDH_STRICT`` while the block runs, then restore both.

    Environment variables, not config entries: they reach datamodules built anywhere (pool
    workers and SLURM jobs inherit them) without changing any run's identity (its config
    hash). A datamodule's explicit ``cache_dir`` option still wins.
    """
    wanted = {STRICT_VARIABLE: "1" if strict else "0"}
    if cache_dir is not None:
        wanted["NTDH_CACHE"] = str(cache_dir)
    previous = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _EpochSeed:
    """Receives ``set_epoch`` from Lightning's fit loop (it looks for ``loader.sampler``)."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class TensorBatchLoader:
    """Batches of a dict of same-length tensors, cut by index slicing.

    Shuffling draws a fresh permutation per epoch from ``seed + epoch`` (so a run resumed at
    epoch e sees the same order as an uninterrupted one). A batch that holds the whole split
    (full-batch training, the released synthetic protocol) is the split in order: shuffling it
    would change only the summation order, at the cost of a permutation and a gather per epoch.
    Under data parallelism each rank takes every ``world_size``-th index of the permutation,
    padded by wrap-around to equal length, as ``DistributedSampler`` does.
    """

    def __init__(
        self,
        tensors: dict[str, Tensor],
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        lengths = {len(v) for v in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"all tensors of a split need the same length, got {lengths}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tensors = tensors
        self.num_samples = lengths.pop()
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.sampler = _EpochSeed()
        self.batch_sampler = None  # Lightning inspects loaders for both attributes
        # ``index`` as every split has it (``check_split``: the row numbers) is the batch's
        # row numbers themselves: handed out as they are, not gathered
        index = tensors.get("index")
        self._index_is_rows = index is not None and torch.equal(
            index, torch.arange(self.num_samples, device=index.device)
        )

    def without(self, keys: Iterable[str]) -> TensorBatchLoader:
        """The same batches without ``keys`` (a module that never reads them saves their
        gather each step); ``y`` stays, it sizes every batch."""
        drop = set(keys) - {"y"}
        loader = copy.copy(self)  # the same settings and sampler (Lightning's set_epoch)
        loader.tensors = {k: v for k, v in self.tensors.items() if k not in drop}
        return loader

    @property
    def _per_rank(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    def __len__(self) -> int:
        n = self._per_rank
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self) -> Tensor:
        if self.shuffle and self.batch_size < self.num_samples:
            gen = torch.Generator().manual_seed(self.seed + self.sampler.epoch)
            order = torch.randperm(self.num_samples, generator=gen)
        else:
            order = torch.arange(self.num_samples)
        if self.world_size > 1:
            padded = self._per_rank * self.world_size
            order = order.repeat(math.ceil(padded / self.num_samples))[:padded]
            order = order[self.rank :: self.world_size]
        return order

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        if self.world_size == 1 and self.batch_size >= self.num_samples:
            yield dict(self.tensors)  # the whole split, as it is: no gather
            return
        device = next(iter(self.tensors.values())).device
        order = self._order().to(device)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            # index_select, not v[idx]: the same rows, without advanced indexing's 10 us of
            # dispatch per tensor (a third of a small MLP's step)
            yield {
                k: idx if k == "index" and self._index_is_rows else v.index_select(0, idx)
                for k, v in self.tensors.items()
            }


class WholeEpoch:
    """The one item of a :class:`WholeEpochLoader`: iterating it yields the epoch's batches."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


class WholeEpochLoader:
    """A loader of one item per epoch, a :class:`WholeEpoch` over ``loader``'s batches.

    For modules that train a whole epoch inside one Lightning step
    (:mod:`ntdh_bench.whole_epochs`): the batches and their order are ``loader``'s, and
    Lightning's ``set_epoch`` reaches ``loader``'s sampler.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.sampler = loader.sampler  # Lightning calls loader.sampler.set_epoch(epoch)
        self.batch_sampler = None

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[WholeEpoch]:
        yield WholeEpoch(self.loader)


EVAL_BATCH_BYTES = 64 * 2**20


def eval_rows(splits: dict[str, dict[str, Tensor]], floor: int) -> int:
    """Rows of an evaluation batch of in-memory splits: the largest evaluated split whole
    when its tensors fit in :data:`EVAL_BATCH_BYTES`, else as many rows as fit, never fewer
    than ``floor``.

    Evaluation in one batch rather than several gives the same metrics (exact counts, and sums
    of the same rows in another order) for a fraction of the evaluation loop's per-batch cost,
    which dominates a small network's validation.
    """
    evaluated = [t for s, t in splits.items() if s != "train"] or list(splits.values())
    rows = max(len(t["y"]) for t in evaluated)
    row_bytes = max(
        sum(math.prod(v.shape[1:]) * v.element_size() for v in t.values()) for t in evaluated
    )
    return max(floor, min(rows, EVAL_BATCH_BYTES // max(row_bytes, 1)))


def check_split(split: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Validate a split against the batch contract and add ``index``."""
    missing = [k for k in REQUIRED_KEYS if k not in tensors]
    if missing:
        raise ValueError(f"split {split!r} lacks the batch keys {missing}")
    n = len(tensors["y"])
    bad = {k: len(v) for k, v in tensors.items() if len(v) != n}
    if bad:
        raise ValueError(f"split {split!r}: lengths differ from len(y) = {n}: {bad}")
    if tensors["y"].dtype != torch.long:
        raise ValueError(f"split {split!r}: y must be int64, got {tensors['y'].dtype}")
    return {**tensors, "index": torch.arange(n)}


class PairedDataModule(L.LightningDataModule):
    """Base of every datamodule: owns the batch contract, splits and loaders.

    Subclasses set ``num_classes`` (in ``__init__`` or as a class attribute) and ``task``, and
    implement either :meth:`build_split_tensors` (small data, tensor fast path) or
    :meth:`build_datasets` (file-backed data, DataLoaders). ``extra_metrics`` names metrics
    that runs on the data report beside the task's accuracy or mIoU (e.g. ``"ssc"``, scene
    completion's scores); ``ntdh_bench.extra_metrics`` resolves the names.
    """

    task: ClassVar[str] = "classification"
    extra_metrics: ClassVar[tuple[str, ...]] = ()
    num_classes: int

    def __init__(
        self,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self._eval_batch_size = eval_batch_size
        self.seed = seed
        self.num_workers = num_workers
        self._tensors: dict[str, dict[str, Tensor]] | None = None
        self._datasets: dict[str, Dataset] | None = None

    # --- what subclasses provide -------------------------------------------------------
    def build_split_tensors(self) -> dict[str, dict[str, Tensor]]:
        """Return ``{split: {"xa", "xb", "y", ...}}`` for in-memory datasets."""
        raise NotImplementedError

    def build_datasets(self) -> dict[str, Dataset]:
        """Return ``{split: Dataset}`` whose items are dicts of the batch contract."""
        raise NotImplementedError

    @classmethod
    def is_available(cls, root: str | None = None) -> bool:
        """Whether the files this datamodule reads are present (synthetic data: always)."""
        return True

    # --- Lightning hooks ---------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._tensors is not None or self._datasets is not None:
            return
        try:
            built = self.build_split_tensors()
        except NotImplementedError:
            self._datasets = self.build_datasets()
            return
        self._tensors = {s: check_split(s, t) for s, t in built.items()}

    def train_dataloader(self) -> Any:
        """The training batches; one :class:`WholeEpoch` per epoch when the trainer's module
        trains whole epochs in one step (``whole_epoch_steps``) and the data are tensors."""
        loader = self._loader("train", self.batch_size, shuffle=True)
        trainer = getattr(self, "trainer", None)
        if trainer is None or not isinstance(loader, TensorBatchLoader):
            return loader
        fitting = trainer.state.fn == "fit" and trainer.state.status == "running"
        module = trainer.lightning_module
        if fitting and getattr(module, "whole_epoch_steps", False):
            unread = getattr(module, "keys_unread_in_training", None)
            return WholeEpochLoader(loader.without(unread()) if unread is not None else loader)
        return loader

    def val_dataloader(self) -> Any:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> Any:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    # --- helpers -----------------------------------------------------------------------
    @property
    def eval_batch_size(self) -> int:
        """Rows per validation and test batch: the constructor's, or by default as many as
        :func:`eval_rows` allows (in-memory splits), at least 1024 and ``batch_size``."""
        if self._eval_batch_size is None:
            self.setup()
            floor = max(self.batch_size, 1024)
            self._eval_batch_size = eval_rows(self._tensors, floor) if self._tensors else floor
        return self._eval_batch_size

    @property
    def uses_tensor_path(self) -> bool:
        self.setup()
        return self._tensors is not None

    def split_tensors(self, split: str) -> dict[str, Tensor]:
        """The whole of a split as tensors (tensor fast path only)."""
        self.setup()
        if self._tensors is None:
            raise RuntimeError(f"{type(self).__name__} is file-backed; it has no split tensors")
        if split not in self._tensors:
            raise KeyError(f"{type(self).__name__} has no split {split!r}")
        return self._tensors[split]

    def input_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of one ``xa`` and one ``xb`` sample, to size the networks."""
        self.setup()
        if self._tensors is not None:
            first = self._tensors["train"]
            return tuple(first["xa"].shape[1:]), tuple(first["xb"].shape[1:])
        item = self._datasets["train"][0]
        return tuple(item["xa"].shape), tuple(item["xb"].shape)

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> Any:
        self.setup()
        trainer = getattr(self, "trainer", None)
        rank = trainer.global_rank if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        if self._tensors is not None:
            device = self._device()
            tensors = {k: v.to(device) for k, v in self.split_tensors(split).items()}
            return TensorBatchLoader(
                tensors, batch_size, shuffle=shuffle, seed=self.seed, rank=rank, world_size=world
            )
        return DataLoader(
            self._datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
