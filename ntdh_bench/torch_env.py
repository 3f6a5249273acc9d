"""A per-step cost that importing Lightning adds to CPU training, and its removal.

``import lightning`` sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` so that asking whether CUDA
is available does not initialise CUDA in a process that may fork. With it, every
``torch.cuda.is_available()`` call loads the NVML library and counts devices through it
unless CUDA is already initialised, and Adam and AdamW ask on every ``step()`` (a check for
CUDA-graph capture). On a machine without NVML the library load fails each time and torch
falls back to the CUDA runtime's device count, which is what it would have called without the
variable: about 0.1 ms per optimizer step for nothing (a third of an Adam step of the
synthetic MLP).

:func:`skip_failing_nvml_probe` removes the variable only where NVML cannot be loaded, so the
fork safety it buys on GPU machines is kept, and nothing else changes where it is removed.
"""

from __future__ import annotations

import ctypes
import os

import lightning  # noqa: F401  (sets the variable at import; it must be set before we look)

NVML_CHECK_VARIABLE = "PYTORCH_NVML_BASED_CUDA_CHECK"
NVML_LIBRARY = "libnvidia-ml.so.1"  # the name torch loads


def nvml_loadable(library: str = NVML_LIBRARY) -> bool:
    """Whether the NVML library can be loaded in this process."""
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


def skip_failing_nvml_probe(library: str = NVML_LIBRARY) -> bool:
    """Unset ``PYTORCH_NVML_BASED_CUDA_CHECK`` when NVML cannot be loaded (the probe would
    fail on every call and fall back to what torch does without it). Returns whether it did."""
    if os.environ.get(NVML_CHECK_VARIABLE) != "1" or nvml_loadable(library):
        return False
    del os.environ[NVML_CHECK_VARIABLE]
    return True
