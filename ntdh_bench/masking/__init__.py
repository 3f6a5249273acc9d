"""The paper's masking method (Sec. IV-C, second part), one job per module.

* :mod:`.selection`: how many items a mask removes and which (``true`` / ``false`` /
  ``random``);
* :mod:`.joint`: Algorithm 1's Eq. 26 joint training of ``f_a`` and ``f_b``;
* :mod:`.saliency`: Algorithm 1's scores, ``permuted`` (the paper's) and ``ablation``;
* :mod:`.ncjsd`: the NCJSD of many perturbed teacher outputs against one student output;
* :mod:`.feature_mask`: the ``keep`` masks and the network that applies them;
* :mod:`.sample_mask`: Algorithm 2's per-batch distillation weights;
* :mod:`.specs`: the config sections, their defaults and checks.

The Lightning callbacks that apply masks to a run are in :mod:`ntdh_bench.callbacks`.
"""

from ntdh_bench.masking.feature_mask import MaskedNetwork, feature_keep_mask, oracle_keep_mask
from ntdh_bench.masking.joint import eq26_loss, joint_train
from ntdh_bench.masking.saliency import (
    SCORE_READINGS,
    NontargetReference,
    Saliency,
    compute_saliency,
    patch_groups,
    saliency_loop,
)
from ntdh_bench.masking.sample_mask import (
    PSSM_THRESHOLD,
    SAMPLE_MASK_KINDS,
    SampleWeighting,
    pssm_weights,
)
from ntdh_bench.masking.selection import (
    MASK_KINDS,
    ORACLE_KINDS,
    mask_count,
    masked_indices,
    select_masked,
)
from ntdh_bench.masking.specs import (
    FEATURE_MASK_KINDS,
    resolve_feature_mask,
    resolve_sample_mask,
)

__all__ = [
    "FEATURE_MASK_KINDS",
    "MASK_KINDS",
    "ORACLE_KINDS",
    "PSSM_THRESHOLD",
    "SAMPLE_MASK_KINDS",
    "SCORE_READINGS",
    "MaskedNetwork",
    "NontargetReference",
    "Saliency",
    "SampleWeighting",
    "compute_saliency",
    "eq26_loss",
    "feature_keep_mask",
    "joint_train",
    "mask_count",
    "masked_indices",
    "oracle_keep_mask",
    "patch_groups",
    "pssm_weights",
    "resolve_feature_mask",
    "resolve_sample_mask",
    "saliency_loop",
    "select_masked",
]
