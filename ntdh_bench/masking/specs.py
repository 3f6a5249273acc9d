"""The ``feature_mask`` and ``sample_mask`` sections of a run config: options, defaults, checks.

Feature mask (Algorithm 1): ``kind`` true / false / random (ranked by ``score``, the reading of
:mod:`ntdh_bench.masking.saliency`) or, on synthetic data, oracle_specific / oracle_shared
(exactly the teacher-only or the shared decisive columns; no ``ratio``). Where it applies,
``teacher``:

* ``retrain``: input features zeroed, the teacher trained anew on the masked input (default
  for input masks);
* ``feed``: input features zeroed, the unmasked teacher only fed the masked input;
* ``scored``: the mask applied to the Eq. 26-trained ``f_a`` it was scored on, frozen, which
  is then the teacher (the only choice for a hidden ``layer``, whose channels have no identity
  in another network; allowed for input masks too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ntdh_bench.masking.saliency import SCORE_READINGS
from ntdh_bench.masking.sample_mask import PSSM_THRESHOLD, SAMPLE_MASK_KINDS
from ntdh_bench.masking.selection import MASK_KINDS, ORACLE_KINDS
from ntdh_bench.validation import ConfigError, Section, validate_section

FEATURE_MASK_KINDS = (*MASK_KINDS, *ORACLE_KINDS)
MASK_SITES = ("retrain", "feed", "scored")


def _kind_text(value: Any) -> Any:
    """YAML reads a bare ``true`` / ``false`` as a boolean; the kinds are names."""
    return str(value).lower() if isinstance(value, bool) else value


class SaliencySettings(Section):
    """Eq. 26 joint training and the scoring of Algorithm 1."""

    repeats: int = Field(10, ge=1, description="M, permutations per item (permuted reading)")
    epochs: int = Field(30, ge=1, description="epochs of the Eq. 26 joint training")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    T: float = Field(1.0, gt=0, description="temperature of the NCJSD, in training and scoring")
    n_samples: int | None = Field(None, ge=1, description="training samples scored (None: all)")


class FeatureMaskSpec(Section):
    kind: Literal["true", "false", "random", "oracle_specific", "oracle_shared"] = "true"
    ratio: float | None = Field(0.25, ge=0, lt=1)
    score: Literal["permuted", "ablation"] = "permuted"
    layer: str | None = None
    patch: int | list[int] | None = None
    teacher: Literal["retrain", "feed", "scored"] | None = None
    seed: int = 0
    saliency: SaliencySettings = Field(default_factory=SaliencySettings)

    _kind = field_validator("kind", mode="before")(_kind_text)

    @model_validator(mode="after")
    def _consistent(self) -> FeatureMaskSpec:
        if self.patch is not None and self.layer is not None:
            raise ValueError("'patch' groups input features; it cannot go with 'layer'")
        if self.kind in ORACLE_KINDS:
            if self.layer is not None or self.patch is not None:
                raise ValueError(f"an {self.kind!r} mask masks input columns; drop layer/patch")
            self.ratio = None  # the oracle's set fixes how many
        elif self.ratio is None:
            raise ValueError(f"a {self.kind!r} mask needs a ratio")
        if self.teacher is None:
            self.teacher = "scored" if self.layer is not None else "retrain"
        if self.layer is not None and self.teacher != "scored":
            raise ValueError(
                f"a hidden-layer mask ({self.layer!r}) applies to the network it was scored on: "
                f"teacher must be 'scored', not {self.teacher!r}"
            )
        return self


class SampleMaskSpec(Section):
    kind: Literal["true", "false", "random", "pssm"] = "true"
    ratio: float = Field(0.25, ge=0, lt=1)
    T: float = Field(1.0, gt=0)
    seed: int = 0
    threshold: float = Field(PSSM_THRESHOLD, ge=-1, le=1)

    _kind = field_validator("kind", mode="before")(_kind_text)


def resolve_feature_mask(spec: Mapping[str, Any] | None, seed: int) -> dict[str, Any] | None:
    """A complete ``feature_mask`` section (``seed``, the run's, draws a random mask)."""
    if not spec:
        return None
    return validate_section(FeatureMaskSpec, {"seed": seed, **spec}, "feature_mask")


def resolve_sample_mask(spec: Mapping[str, Any] | None, seed: int) -> dict[str, Any] | None:
    """A complete ``sample_mask`` section (``seed``, the run's, draws a random mask)."""
    if not spec:
        return None
    return validate_section(SampleMaskSpec, {"seed": seed, **spec}, "sample_mask")


def check_mask_roles(config: Mapping[str, Any]) -> None:
    """A sample mask weighs a distillation term: only ``kd`` runs have one."""
    if config.get("sample_mask") and config.get("role") not in (None, "kd"):
        raise ConfigError(
            f"a sample mask weighs a distillation term; role {config['role']!r} has none"
        )


__all__ = [
    "FEATURE_MASK_KINDS",
    "MASK_SITES",
    "SAMPLE_MASK_KINDS",
    "SCORE_READINGS",
    "FeatureMaskSpec",
    "SaliencySettings",
    "SampleMaskSpec",
    "check_mask_roles",
    "resolve_feature_mask",
    "resolve_sample_mask",
]
