"""The 2D CNN of the authors' released RAVDESS code (paper Sec. IV-B; Table I).

One class serves both modalities (Assumption 1): three convolution blocks of 32 / 64 / 128
channels (convolution with ``padding=1``, ReLU, then a 2x2 max-pool after the first two and an
adaptive max-pool to ``pool_size`` after the third), then fully connected layers
``128 * 7 * 14 -> 1024 -> 128 -> C``. Only the input channels and the kernel sizes follow the
modality, as in the release: ``(3, 3, 3)`` for images and ``(7, 5, 5)`` for the one-channel
spectrogram. The adaptive pool makes the parameter count independent of the input's height and
width; with the defaults it is Table I's:

* spectrogram ``(1, H, W)``, kernels ``(7, 5, 5)``: 13,236,104 parameters (Table I: 13.24M);
* one RGB frame ``(3, H, W)``, kernels ``(3, 3, 3)``: 13,071,560 (Table I: 13.07M);
* ``k`` RGB frames stacked as ``3k`` channels add ``32 * 9`` weights per extra channel (three
  frames: 13,073,288).

``features`` holds the activations whose shapes agree between the two modalities, so that a
feature-based distiller can pair them by position: the last block's pooled map
``(B, 128, 7, 14)`` and each hidden fully connected activation ``(B, 1024)``, ``(B, 128)``.
(The earlier blocks' maps differ in height and width between a spectrogram and a frame.)
``embedding`` is the last hidden activation (128-d). For masks on hidden channels
(:mod:`ntdh_bench.masking`, ``layer=``) the submodules are named ``blocks.0`` .. ``blocks.2``
and ``fc.0``, ``fc.1``; the released code's default site is the 128-unit layer, ``fc.1``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from models.base import ModelOutput

KernelSpec = Sequence[int] | Mapping[int | str, Sequence[int]]

# The release's kernels, keyed by the number of input channels ("default": any other).
RELEASED_KERNELS: dict[str, tuple[int, ...]] = {"1": (7, 5, 5), "default": (3, 3, 3)}


def kernels_for(kernel_sizes: KernelSpec | None, in_channels: int) -> tuple[int, ...]:
    """The kernel sizes for an input of ``in_channels`` channels.

    ``kernel_sizes`` is a sequence (every input), or a mapping keyed by the number of input
    channels (``1`` or ``"1"``; string keys so that YAML and JSON configs keep them) with an
    optional ``"default"``; ``None`` is :data:`RELEASED_KERNELS`.
    """
    spec = RELEASED_KERNELS if kernel_sizes is None else kernel_sizes
    if not isinstance(spec, Mapping):
        return tuple(int(k) for k in spec)
    by_channels = {str(k): v for k, v in spec.items()}
    bad = [k for k in by_channels if k != "default" and not k.isdigit()]
    if bad:
        raise ValueError(
            f"kernel_sizes keys are input channel counts or 'default'; got {sorted(bad)}"
        )
    chosen = by_channels.get(str(in_channels), by_channels.get("default"))
    if chosen is None:
        raise ValueError(
            f"kernel_sizes {dict(spec)} has no entry for {in_channels} input channels and no "
            f"'default'"
        )
    return tuple(int(k) for k in chosen)


class CNN2d(nn.Module):
    """Conv blocks ``channels`` (2x2 max-pools, then an adaptive max-pool), FC ``hidden``, C."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        kernel_sizes: Sequence[int] = (3, 3, 3),
        channels: Sequence[int] = (32, 64, 128),
        padding: int = 1,
        pool_size: Sequence[int] = (7, 14),
        hidden: Sequence[int] = (1024, 128),
    ) -> None:
        super().__init__()
        if len(kernel_sizes) != len(channels) or not channels:
            raise ValueError(
                f"need one kernel size per conv block: kernel_sizes={list(kernel_sizes)}, "
                f"channels={list(channels)}"
            )
        if in_channels < 1 or num_classes < 2 or min(*channels, *hidden, *pool_size) < 1:
            raise ValueError(
                f"CNN2d needs in_channels >= 1, num_classes >= 2 and positive sizes; got "
                f"in_channels={in_channels}, num_classes={num_classes}, channels="
                f"{list(channels)}, hidden={list(hidden)}, pool_size={list(pool_size)}"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.kernel_sizes = tuple(kernel_sizes)
        self.padding = padding
        blocks = []
        c_in = in_channels
        for i, (c_out, k) in enumerate(zip(channels, kernel_sizes, strict=True)):
            last = i == len(channels) - 1
            pool = nn.AdaptiveMaxPool2d(tuple(pool_size)) if last else nn.MaxPool2d(2, 2)
            blocks.append(
                nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=padding), nn.ReLU(), pool)
            )
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        widths = [c_in * pool_size[0] * pool_size[1], *hidden]
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.head = nn.Linear(widths[-1], num_classes)

    @classmethod
    def from_shape(
        cls,
        input_shape: Sequence[int],
        num_classes: int,
        kernel_sizes: KernelSpec | None = None,
        channels: Sequence[int] = (32, 64, 128),
        padding: int = 1,
        pool_size: Sequence[int] = (7, 14),
        hidden: Sequence[int] = (1024, 128),
    ) -> CNN2d:
        """Size the network for ``(C, H, W)`` inputs; kernels chosen by :func:`kernels_for`."""
        if len(input_shape) != 3:
            raise ValueError(f"cnn2d takes (C, H, W) inputs, got a sample of shape {input_shape}")
        in_channels, height, width = (int(s) for s in input_shape)
        kernels = kernels_for(kernel_sizes, in_channels)
        model = cls(in_channels, num_classes, kernels, channels, padding, pool_size, hidden)
        model.check_input_size(height, width)
        return model

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` when an ``H x W`` input vanishes before the adaptive pool."""
        h, w = height, width
        for i, k in enumerate(self.kernel_sizes):
            h, w = h + 2 * self.padding - k + 1, w + 2 * self.padding - k + 1
            if i < len(self.kernel_sizes) - 1:
                h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise ValueError(
                    f"cnn2d: a {height}x{width} input is too small for kernels "
                    f"{list(self.kernel_sizes)} with padding {self.padding}: block {i} leaves "
                    f"{max(h, 0)}x{max(w, 0)}"
                )

    def forward(self, x: Tensor) -> ModelOutput:
        h = x
        for block in self.blocks:
            h = block(h)
        features = [h]
        v = h.flatten(1)
        for layer in self.fc:
            v = layer(v).relu()
            features.append(v)
        return ModelOutput(logits=self.head(v), features=features, embedding=v)
