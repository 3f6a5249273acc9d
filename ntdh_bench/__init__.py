"""ntdh-bench: cross-modal knowledge distillation experiments of the Non-target Divergence
Hypothesis, on PyTorch Lightning."""

__version__ = "0.1.0"
