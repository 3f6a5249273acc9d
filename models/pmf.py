"""PMF's camera-stream network without its fusion module (paper Sec. IV-B; Table I).

The paper adopts PMF (its ref. [42]) on SemanticKITTI "with the intermediate fusion layer
removed", and uses one architecture for both modalities (Assumption 1): here one class serves
the camera image (3 channels) and the projected point image (5 channels), differing only in
the first convolution.

**Encoder**: torchvision's ResNet-34 (``weights=None``: nothing is downloaded), its first
convolution replaced by a 7x7 one over the input's channels with stride ``stem_stride``
(default 1: PMF does not downsample in the stem, so the encoder's output stride is 16), then
max-pool and the four residual stages. ``backbone="light"`` builds the same layout from
torchvision's ``BasicBlock`` with ``light_widths`` (default 16, 32, 64, 128) and one block per
stage, for tests and CPU runs.

**Decoder**: U-Net-like, as PMF's camera decoder. The deepest map goes through a 3x3
convolution (BatchNorm, LeakyReLU) to ``decoder_width`` channels and is upsampled bilinearly
to the next shallower stage's size; it is concatenated with that stage's map and the step
repeats (3x3 convolutions, a 1x1 at the shallowest stage), the last upsampling going to the
input's size; a 3x3 convolution gives the logits. Inputs whose sides are multiples of
``output_stride`` keep every map aligned with its skip; other sizes work too, since every
upsampling goes to the skip's own size.

**Capacity** (Table I, SemanticKITTI: 21.42M): the encoder without its classifier has
21,284,672 parameters and the decoder with ``decoder_width=16`` 137,859 at 19 classes:
21,422,531 for the camera image (21.42M) and 21,428,803 for the point image (two more input
channels in the first convolution).

``features`` are the four decoder maps, coarse to fine (``decoder_width`` channels at strides
8, 4, 2 and 1 for ``stem_stride=1``): the same shapes for both modalities, so feature-based
distillers pair them by position. ``embedding`` is the global average of the deepest encoder
map (512-d for ResNet-34).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet34
from torchvision.models.resnet import BasicBlock

from models.base import ModelOutput

BACKBONES = ("resnet34", "light")


def _light_stages(widths: Sequence[int]) -> nn.ModuleList:
    """Four stages of one ``BasicBlock`` each; every stage after the first halves the size."""
    stages, c_in = [], widths[0]
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        down = None
        if stride != 1 or c_in != width:
            down = nn.Sequential(
                nn.Conv2d(c_in, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
            )
        stages.append(nn.Sequential(BasicBlock(c_in, width, stride, down)))
        c_in = width
    return nn.ModuleList(stages)


class _Decode(nn.Module):
    """Convolution, BatchNorm, LeakyReLU, then bilinear upsampling to a given size."""

    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        x = F.leaky_relu(self.bn(self.conv(x)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PMFStream(nn.Module):
    """One stream of PMF without fusion: ResNet encoder, U-Net decoder (module doc)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        backbone: str = "resnet34",
        decoder_width: int = 16,
        stem_stride: int = 1,
        light_widths: Sequence[int] = (16, 32, 64, 128),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        if in_channels < 1 or num_classes < 2 or decoder_width < 1 or stem_stride not in (1, 2):
            raise ValueError(
                f"PMFStream needs in_channels >= 1, num_classes >= 2, decoder_width >= 1 and "
                f"stem_stride 1 or 2; got {in_channels}, {num_classes}, {decoder_width}, "
                f"{stem_stride}"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.backbone = backbone
        if backbone == "resnet34":
            net = resnet34(weights=None)
            widths = [64, 128, 256, 512]
            stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        else:
            widths = [int(w) for w in light_widths]
            if len(widths) != 4 or min(widths) < 1:
                raise ValueError(f"light_widths must be four positive widths, got {widths}")
            stages = _light_stages(widths)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 7, stride=stem_stride, padding=3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.stages = stages
        self.dropout = nn.Dropout(dropout)
        self.output_stride = stem_stride * 16
        d = decoder_width
        self.decoder = nn.ModuleList(
            [
                _Decode(widths[3], d, 3),
                _Decode(widths[2] + d, d, 3),
                _Decode(widths[1] + d, d, 3),
                _Decode(widths[0] + d, d, 1),
            ]
        )
        self.head = nn.Conv2d(d, num_classes, 3, padding=1)
        self.embedding_dim = widths[3]

    @classmethod
    def from_shape(
        cls,
        input_shape: Sequence[int],
        num_classes: int,
        backbone: str = "resnet34",
        decoder_width: int = 16,
        stem_stride: int = 1,
        light_widths: Sequence[int] = (16, 32, 64, 128),
        dropout: float = 0.2,
    ) -> PMFStream:
        """Size the stream for ``(C, H, W)`` inputs (only ``C`` matters)."""
        if len(input_shape) != 3:
            raise ValueError(f"pmf takes (C, H, W) inputs, got a sample of shape {input_shape}")
        return cls(
            int(input_shape[0]),
            num_classes,
            backbone,
            decoder_width,
            stem_stride,
            light_widths,
            dropout,
        )

    def forward(self, x: Tensor) -> ModelOutput:
        skips = []
        h = self.stem(x)
        for i, stage in enumerate(self.stages):
            h = stage(h)
            h = self.dropout(h) if i >= 2 else h  # PMF: dropout after the two deepest stages
            skips.append(h)
        embedding = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)
        targets = [s.shape[-2:] for s in skips[2::-1]] + [x.shape[-2:]]
        features = []
        for i, (block, size) in enumerate(zip(self.decoder, targets, strict=True)):
            h = block(h if i == 0 else torch.cat([h, skips[3 - i]], dim=1), tuple(size))
            features.append(h)
        return ModelOutput(logits=self.head(h), features=features, embedding=embedding)


class PMFLight(PMFStream):
    """:class:`PMFStream` with the light backbone by default (tests, CPU runs)."""

    @classmethod
    def from_shape(
        cls,
        input_shape: Sequence[int],
        num_classes: int,
        backbone: str = "light",
        decoder_width: int = 16,
        stem_stride: int = 1,
        light_widths: Sequence[int] = (16, 32, 64, 128),
        dropout: float = 0.2,
    ) -> PMFStream:
        return super().from_shape(
            input_shape, num_classes, backbone, decoder_width, stem_stride, light_widths, dropout
        )
