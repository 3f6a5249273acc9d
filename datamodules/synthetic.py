"""Scikit-learn synthetic data with a controlled domain gap (paper Sec. IV-A-1, Figs. 3-4a).

As in the authors' released code: ``make_classification(n_samples=10000, n_classes=4,
n_features=50, n_informative=50, n_redundant=0, n_clusters_per_class=1)``, standardised, split
6000 / 4000. The student modality ``xb`` carries informative columns ``0 .. window``; the
teacher modality ``xa`` carries the window of the same width shifted by
``round(window * gap)``. Every other input column of each modality is independent N(0, 1)
noise, so both inputs are ``n_features`` wide and equally strong (Assumption 2), and they share
a fraction ``1 - gap`` of their decisive columns (``x_b = [x_{d0:db}, z]``,
``x_a = [x_{d0:dt}, x_{db:da}, z]`` in the paper's notation).

The validation split is the test split: no checkpoint or hyper-parameter is selected on it,
and the suite reports the last epoch's test metrics.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import make_classification
from torch import Tensor

from datamodules.base import PairedDataModule


def check_gap_args(gap: float, window: int, n_features: int, n_informative: int) -> None:
    """Raise ``ValueError`` for a gap outside [0, 1], or a teacher window that does not fit.

    The shifted teacher window spans ``window + round(window * gap)`` informative columns.
    """
    if not 0.0 <= gap <= 1.0:
        raise ValueError(f"gap must lie in [0, 1], got {gap}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if n_informative > n_features:
        raise ValueError(f"n_informative ({n_informative}) exceeds n_features ({n_features})")
    shift = round(window * gap)
    if window + shift > n_informative:
        raise ValueError(
            f"window {window} is too wide: the teacher window at gap {gap} spans columns "
            f"{shift}..{shift + window}, beyond the {n_informative} informative columns "
            f"(need window + round(window * gap) <= n_informative)"
        )


def make_gap_modalities(
    n_samples: int = 10000,
    n_classes: int = 4,
    n_features: int = 50,
    n_informative: int = 50,
    window: int = 20,
    gap: float = 0.0,
    class_sep: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(xa, xb, y)`` as float32 / float32 / int64 arrays, standardised."""
    check_gap_args(gap, window, n_features, n_informative)
    shift = round(window * gap)
    rng = np.random.default_rng(seed)
    x, y = make_classification(
        n_samples=n_samples,
        n_classes=n_classes,
        n_features=n_informative,
        n_informative=n_informative,
        n_redundant=0,
        n_repeated=0,
        n_clusters_per_class=1,
        class_sep=class_sep,
        shuffle=True,
        random_state=int(rng.integers(2**31 - 1)),
    )
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    n_noise = n_features - window
    noise_b = rng.standard_normal((n_samples, n_noise))
    noise_a = rng.standard_normal((n_samples, n_noise))
    xb = np.concatenate([x[:, :window], noise_b], axis=1)
    xa = np.concatenate([x[:, shift : shift + window], noise_a], axis=1)
    return xa.astype(np.float32), xb.astype(np.float32), y.astype(np.int64)


class SyntheticDataModule(PairedDataModule):
    """Paired synthetic modalities whose shared decisive columns shrink as ``gap`` grows."""

    def __init__(
        self,
        gap: float = 0.0,
        n_samples: int = 10000,
        n_train: int = 6000,
        n_classes: int = 4,
        n_features: int = 50,
        n_informative: int = 50,
        window: int = 20,
        class_sep: float = 1.0,
        data_seed: int = 0,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed)
        if not 0 < n_train < n_samples:
            raise ValueError(f"need 0 < n_train < n_samples, got {n_train} and {n_samples}")
        self.num_classes = n_classes
        self.generator_args = dict(
            n_samples=n_samples,
            n_classes=n_classes,
            n_features=n_features,
            n_informative=n_informative,
            window=window,
            gap=gap,
            class_sep=class_sep,
            seed=data_seed,
        )
        self.n_train = n_train
        check_gap_args(gap, window, n_features, n_informative)  # fail now, not inside a Trainer

    def oracle_feature_sets(self) -> dict[str, Tensor]:
        """The columns of ``xa`` by what they carry, known here only because the data is made:
        ``shared`` (decisive columns the student sees too), ``specific`` (decisive columns only
        the teacher sees) and ``noise``. The oracle feature masks read them."""
        window = self.generator_args["window"]
        shift = round(window * self.generator_args["gap"])
        columns = torch.arange(self.generator_args["n_features"])
        return {
            "shared": columns[: window - shift],
            "specific": columns[window - shift : window],
            "noise": columns[window:],
        }

    def build_split_tensors(self) -> dict[str, dict[str, Tensor]]:
        xa, xb, y = make_gap_modalities(**self.generator_args)
        n = self.n_train
        train = {"xa": xa[:n], "xb": xb[:n], "y": y[:n]}
        test = {"xa": xa[n:], "xb": xb[n:], "y": y[n:]}
        train, test = _as_tensors(train), _as_tensors(test)
        return {"train": train, "val": test, "test": test}


def _as_tensors(arrays: dict[str, np.ndarray]) -> dict[str, Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
