"""Teachers: their identity, their cache, load-or-train, and the feature masks they carry.

A teacher is trained once per identity (data, model, schedule, seed; plus its mask when it was
retrained on masked input) and cached (:mod:`ntdh_bench.cache`), so every run of every
experiment that needs it reuses it. For a feature mask (Algorithm 1) this module also owns the
Eq. 26-trained pair ``(f_a, f_b)``, cached like a teacher, the saliency scored on it, and the
``keep`` mask itself, so that reports read a mask back without rebuilding anything.

:func:`prepare_teacher` is what a student run calls: the frozen teacher network, its metrics,
and the callbacks that apply a mask to it during distillation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from datamodules import IGNORE_INDEX, PairedDataModule
from ntdh_bench.builders import build_network
from ntdh_bench.cache import CacheEntry
from ntdh_bench.callbacks import FeatureMask
from ntdh_bench.extra_metrics import metric_callbacks
from ntdh_bench.masking.feature_mask import MaskedNetwork, feature_keep_mask, oracle_keep_mask
from ntdh_bench.masking.joint import joint_train
from ntdh_bench.masking.saliency import Saliency, capture, compute_saliency, patch_groups
from ntdh_bench.masking.selection import ORACLE_KINDS
from ntdh_bench.module import task_metric
from ntdh_bench.training import RunEnv, log_hparams, train_unimodal

# Teachers trained by this process, by cache folder: under DDP every rank trained the same
# teacher, and none should wait for rank 0's file.
_TRAINED_HERE: dict[str, tuple[dict[str, Tensor], dict[str, float]]] = {}


@dataclass
class PreparedTeacher:
    """The frozen teacher of a student run, its metrics, and callbacks that mask it."""

    network: nn.Module
    metrics: dict[str, float]
    callbacks: list[L.Callback] = field(default_factory=list)


# --- identities ----------------------------------------------------------------------------
def _mask_without_site(mask: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mask.items() if k != "teacher"}


def joint_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """What defines the Eq. 26-trained pair of a run with a feature mask."""
    settings = config["feature_mask"]["saliency"]
    return {
        "dataset": config["dataset"],
        "model": config["model"],
        "seed": config["seed"],
        "eq26": {k: v for k, v in settings.items() if k not in ("repeats", "n_samples")},
    }


def saliency_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """What defines a saliency: the scored pair, the reading, and the items."""
    mask = config["feature_mask"]
    settings = mask["saliency"]
    return {
        **joint_identity(config),
        "reading": mask["score"],
        "repeats": settings["repeats"] if mask["score"] == "permuted" else None,
        "n_samples": settings["n_samples"],
        "layer": mask["layer"],
        "patch": mask["patch"],
    }


def mask_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """What defines a feature mask's ``keep`` tensor."""
    return {
        "dataset": config["dataset"],
        "model": config["model"],
        "seed": config["seed"],
        "feature_mask": _mask_without_site(config["feature_mask"]),
    }


def teacher_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that defines the teacher of a run; its hash keys the teacher cache.

    A teacher retrained on masked input is another teacher (its mask is in its identity); a
    teacher only fed the masked input is the unmasked one; a ``scored`` teacher is ``f_a``.
    """
    mask = config.get("feature_mask")
    if mask and mask["teacher"] == "scored":
        return {"scored_f_a": joint_identity(config)}
    identity = {
        "dataset": config["dataset"],
        "model": config["model"],
        # how often it is validated does not change what is trained
        "train": {k: v for k, v in config["teacher"].items() if k != "val_every"},
        "seed": config["seed"],
    }
    if mask and mask["teacher"] == "retrain":
        identity["feature_mask"] = _mask_without_site(mask)
    return identity


# --- the plain (or retrained masked) teacher -----------------------------------------------
def _load_state(network: nn.Module, state: Mapping[str, Tensor], entry: CacheEntry) -> bool:
    try:
        network.load_state_dict(state)
    except RuntimeError as err:  # a foreign checkpoint: another architecture or mask
        entry.discard(f"does not fit the network: {str(err).splitlines()[0]}")
        return False
    return True


def load_or_train_teacher(
    config: Mapping[str, Any],
    dm: PairedDataModule,
    env: RunEnv,
    mask: FeatureMask | None = None,
) -> tuple[nn.Module, dict[str, float]]:
    """The teacher of ``config`` (retrained under ``mask`` when given) and its test metrics.

    Worker processes that need the same teacher train it once (a lock on its cache entry);
    under DDP every rank trains it together, so no lock is taken there.
    """
    entry = CacheEntry(env.cache_dir, "teachers", teacher_identity(config))
    if env.devices.distributed:
        return _load_or_train_teacher(config, dm, env, mask, entry)
    with entry.lock():
        return _load_or_train_teacher(config, dm, env, mask, entry)


def _load_or_train_teacher(
    config: Mapping[str, Any],
    dm: PairedDataModule,
    env: RunEnv,
    mask: FeatureMask | None,
    entry: CacheEntry,
) -> tuple[nn.Module, dict[str, float]]:
    found = _TRAINED_HERE.get(str(entry.folder)) if env.devices.distributed else None
    if found is None and (cached := entry.read("model.pt")) is not None:
        found = cached[0]["model.pt"], cached[1]["metrics"]
    if found is not None:
        network = build_network(config, dm, "xa")
        if mask is not None:
            network = MaskedNetwork(network, mask.keep, mask.layer)
        if _load_state(network, found[0], entry):
            return network.eval(), dict(found[1])
    L.seed_everything(config["seed"], workers=True, verbose=False)
    network = build_network(config, dm, "xa")
    name = "teachers"
    version = f"teacher-{'masked-' if mask else ''}s{config['seed']}-{entry.key}"
    module, metrics, timing, trainer = train_unimodal(
        network,
        dm,
        "xa",
        config["teacher"],
        env,
        name,
        version,
        [*([mask] if mask else []), *metric_callbacks(dm)],
    )
    network = module.model.cpu().eval()
    log_hparams(trainer, entry.identity, metrics)
    if trainer.is_global_zero:
        entry.write({"model.pt": network.state_dict()}, {"metrics": metrics, "timing": timing})
    if env.devices.distributed:  # the other ranks must not wait for rank 0's file
        _TRAINED_HERE[str(entry.folder)] = (
            {k: v.clone() for k, v in network.state_dict().items()},
            metrics,
        )
    return network, metrics


# --- Algorithm 1: the scored pair, the saliency, the mask ----------------------------------
def _epochs(dm: PairedDataModule):
    loader = dm.train_dataloader()

    def batches(epoch: int) -> Iterable[Mapping[str, Tensor]]:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        return loader

    return batches


def _collect(batches: Iterable[Mapping[str, Tensor]], limit: int | None) -> dict[str, Tensor]:
    parts: dict[str, list[Tensor]] = {}
    count = 0
    for batch in batches:
        for key, value in batch.items():
            parts.setdefault(key, []).append(value)
        count += len(batch["y"])
        if limit is not None and count >= limit:
            break
    data = {k: torch.cat(v) for k, v in parts.items()}
    return data if limit is None else {k: v[:limit] for k, v in data.items()}


def _split(dm: PairedDataModule, split: str, limit: int | None = None) -> dict[str, Tensor]:
    if dm.uses_tensor_path:
        data = dm.split_tensors(split)
        return {k: v if limit is None else v[:limit] for k, v in data.items()}
    loader = {"train": dm.train_dataloader, "test": dm.test_dataloader}[split]()
    return _collect(loader, limit)


@torch.no_grad()
def evaluate(network: nn.Module, dm: PairedDataModule, modality: str) -> dict[str, float]:
    """``{"test/acc"}`` (or ``test/miou``) of ``network`` on the test split."""
    metric = task_metric(dm.task, dm.num_classes)
    network.eval()
    loader = dm.test_dataloader()
    for batch in loader:
        y = batch["y"]
        if "valid" in batch:
            y = y.masked_fill(~batch["valid"].bool(), IGNORE_INDEX)
        metric.update(network(batch[modality]).logits, y)
    name = "acc" if dm.task == "classification" else "miou"
    return {f"test/{name}": float(metric.compute())}


def load_or_train_joint(
    config: Mapping[str, Any], dm: PairedDataModule, env: RunEnv
) -> tuple[nn.Module, nn.Module, dict[str, float]]:
    """The Eq. 26-trained ``(f_a, f_b)`` of a run's feature mask and ``f_a``'s test metrics,
    trained once across worker processes (a lock on the cache entry)."""
    entry = CacheEntry(env.cache_dir, "joint", joint_identity(config))
    with entry.lock():
        return _load_or_train_joint(config, dm, env, entry)


def _load_or_train_joint(
    config: Mapping[str, Any], dm: PairedDataModule, env: RunEnv, entry: CacheEntry
) -> tuple[nn.Module, nn.Module, dict[str, float]]:
    torch.manual_seed(config["seed"])
    f_a, f_b = build_network(config, dm, "xa"), build_network(config, dm, "xb")
    cached = entry.read("f_a.pt", "f_b.pt")
    if cached is not None:
        states, info = cached
        if _load_state(f_a, states["f_a.pt"], entry) and _load_state(f_b, states["f_b.pt"], entry):
            return f_a.eval(), f_b.eval(), dict(info["metrics"])
        torch.manual_seed(config["seed"])
        f_a, f_b = build_network(config, dm, "xa"), build_network(config, dm, "xb")
    settings = config["feature_mask"]["saliency"]
    device = "cuda" if env.devices.gpus > 0 and torch.cuda.is_available() else "cpu"
    options = {k: v for k, v in settings.items() if k not in ("repeats", "n_samples")}
    joint_train(f_a, f_b, _epochs(dm), device=device, **options)
    f_a, f_b = f_a.cpu().eval(), f_b.cpu().eval()
    metrics = evaluate(f_a, dm, "xa")
    entry.write({"f_a.pt": f_a.state_dict(), "f_b.pt": f_b.state_dict()}, {"metrics": metrics})
    return f_a, f_b, metrics


def load_or_compute_saliency(
    config: Mapping[str, Any], dm: PairedDataModule, f_a: nn.Module, f_b: nn.Module, env: RunEnv
) -> Saliency:
    """Algorithm 1's scores of the run's items on the scored pair, cached."""
    entry = CacheEntry(env.cache_dir, "saliency", saliency_identity(config))
    with entry.lock():
        return _load_or_compute_saliency(config, dm, f_a, f_b, env, entry)


def _load_or_compute_saliency(
    config: Mapping[str, Any],
    dm: PairedDataModule,
    f_a: nn.Module,
    f_b: nn.Module,
    env: RunEnv,
    entry: CacheEntry,
) -> Saliency:
    cached = entry.read("saliency.pt")
    if cached is not None:
        return Saliency.from_dict(cached[0]["saliency.pt"])
    mask = config["feature_mask"]
    settings = mask["saliency"]
    data = _split(dm, "train", settings["n_samples"])
    with torch.no_grad():
        reference = f_b(data["xb"]).logits
    groups = None if mask["patch"] is None else patch_groups(data["xa"].shape[1:], mask["patch"])
    saliency = compute_saliency(
        f_a,
        data["xa"],
        reference,
        data["y"],
        reading=mask["score"],
        repeats=settings["repeats"],
        groups=groups,
        layer=mask["layer"],
        valid=data.get("valid"),
        T=settings["T"],
        seed=config["seed"],
    )
    entry.write({"saliency.pt": saliency.to_dict()})
    return saliency


def _layer_width(network: nn.Module, layer: str, dm: PairedDataModule) -> int:
    sample = torch.zeros(1, *dm.input_shapes()[0])
    with torch.no_grad():
        out, _ = capture(network.eval(), network.get_submodule(layer), sample)
    return int(out.shape[1])


def feature_keep(
    config: Mapping[str, Any],
    dm: PairedDataModule,
    env: RunEnv,
    scored: tuple[nn.Module, nn.Module] | None = None,
) -> Tensor:
    """The ``keep`` tensor of the run's feature mask (1 kept, 0 masked), cached.

    ``scored`` is the Eq. 26 pair when the caller has it; it is loaded or trained otherwise
    (``true`` / ``false`` masks, and hidden-layer masks, which need ``f_a``'s width).
    """
    entry = CacheEntry(env.cache_dir, "masks", mask_identity(config))
    cached = entry.read("keep.pt")
    if cached is not None:
        return cached[0]["keep.pt"]
    mask = config["feature_mask"]
    shape = tuple(dm.input_shapes()[0])
    if mask["kind"] in ORACLE_KINDS:
        sets = getattr(dm, "oracle_feature_sets", None)
        if sets is None:
            raise ValueError(
                f"an {mask['kind']!r} mask needs the true feature sets, which only synthetic "
                f"data knows; {type(dm).__name__} does not"
            )
        keep = oracle_keep_mask(mask["kind"], shape, sets())
    else:
        saliency, groups = None, None
        if mask["kind"] != "random" or mask["layer"] is not None:
            f_a, f_b = scored or load_or_train_joint(config, dm, env)[:2]
            if mask["layer"] is not None:
                shape = (_layer_width(f_a, mask["layer"], dm),)
            if mask["kind"] != "random":
                saliency = load_or_compute_saliency(config, dm, f_a, f_b, env)
        if mask["patch"] is not None and mask["layer"] is None:
            groups = patch_groups(shape, mask["patch"])
        keep = feature_keep_mask(
            mask["kind"], mask["ratio"], shape, saliency, groups, seed=mask["seed"]
        )
    masked = int((keep == 0).sum())
    entry.write({"keep.pt": keep}, {"masked": masked, "of": keep.numel(), "layer": mask["layer"]})
    return keep


def cached_mask(config: Mapping[str, Any], cache_dir) -> Tensor | None:
    """The ``keep`` tensor of a run's feature mask if it is in the cache (for figures)."""
    cached = CacheEntry(cache_dir, "masks", mask_identity(config)).read("keep.pt")
    return None if cached is None else cached[0]["keep.pt"]


def prepare_teacher(
    config: Mapping[str, Any], dm: PairedDataModule, env: RunEnv
) -> PreparedTeacher:
    """The frozen teacher of a run, trained or scored at most once across all runs."""
    mask = config.get("feature_mask")
    if mask is None:
        return PreparedTeacher(*load_or_train_teacher(config, dm, env))
    if mask["teacher"] == "scored":
        f_a, f_b, metrics = load_or_train_joint(config, dm, env)
        keep = feature_keep(config, dm, env, scored=(f_a, f_b))
        f_a.requires_grad_(False)
        return PreparedTeacher(f_a, metrics, [FeatureMask(keep, mask["layer"])])
    keep = feature_keep(config, dm, env)
    if mask["teacher"] == "retrain":
        return PreparedTeacher(*load_or_train_teacher(config, dm, env, FeatureMask(keep)))
    network, metrics = load_or_train_teacher(config, dm, env)
    return PreparedTeacher(network, metrics, [FeatureMask(keep)])
