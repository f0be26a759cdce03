"""ESPNet (Mehta et al., ECCV 2018), the full encoder-decoder network with p=2, q=8.

Written so that the authors' published state_dicts load with ``strict=True``: module names,
parameter shapes and BatchNorm epsilons follow the original checkpoints. The network is
TorchScript-scriptable and fully convolutional; input sides must be multiples of 8.
"""

from __future__ import annotations

import torch
from torch import nn

_BN_EPS = 1e-3


class ConvBnPrelu(nn.Module):
    """3x3/1x1 convolution, batch norm, PReLU (``CBR`` in the paper's code)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        pad = (kernel - 1) // 2
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=pad, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=_BN_EPS)
        self.act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class BnPrelu(nn.Module):
    """Batch norm followed by PReLU (``BR``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=_BN_EPS)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class Conv(nn.Module):
    """Bias-free convolution with 'same' padding, optionally dilated (``C`` / ``CDilated``)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1
    ) -> None:
        super().__init__()
        pad = (kernel - 1) // 2 * dilation
        self.conv = nn.Conv2d(
            in_ch, out_ch, kernel, stride=stride, padding=pad, dilation=dilation, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class EspModule(nn.Module):
    """Efficient spatial pyramid: a reduction conv, five dilated branches, hierarchical fusion.

    ``stride=2`` is the down-sampling variant (3x3 reduction, no residual). The stride-1
    variant either adds the input (residual) or not, and ends with ``BnPrelu`` stored as
    ``bn`` (the checkpoints name it ``bn.bn`` / ``bn.act``).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, residual: bool = True) -> None:
        super().__init__()
        n = out_ch // 5
        n1 = out_ch - 4 * n
        self.downsample = stride == 2
        self.residual = residual and not self.downsample
        if self.downsample:
            self.c1 = Conv(in_ch, n, 3, stride=2)
        else:
            self.c1 = Conv(in_ch, n, 1)
        self.d1 = Conv(n, n1, 3, dilation=1)
        self.d2 = Conv(n, n, 3, dilation=2)
        self.d4 = Conv(n, n, 3, dilation=4)
        self.d8 = Conv(n, n, 3, dilation=8)
        self.d16 = Conv(n, n, 3, dilation=16)
        if self.downsample:
            # The original down-sampler keeps bn/act flat; keep the names the weights use.
            self.bn = nn.BatchNorm2d(out_ch, eps=_BN_EPS)
            self.act = nn.PReLU(out_ch)
        else:
            self.bn = BnPrelu(out_ch)
            self.act = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.c1(x)
        add1 = self.d2(reduced)
        add2 = add1 + self.d4(reduced)
        add3 = add2 + self.d8(reduced)
        add4 = add3 + self.d16(reduced)
        combined = torch.cat([self.d1(reduced), add1, add2, add3, add4], 1)
        if self.residual:
            combined = x + combined
        return self.act(self.bn(combined))


class InputProjection(nn.Module):
    """The input image average-pooled ``times`` times by 2, fed to deeper levels."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.pool = nn.ModuleList([nn.AvgPool2d(3, stride=2, padding=1) for _ in range(times)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for pool in self.pool:
            x = pool(x)
        return x


class EspNetEncoder(nn.Module):
    """ESPNet-C: the encoder at 1/8 resolution."""

    def __init__(self, num_classes: int, p: int = 2, q: int = 8) -> None:
        super().__init__()
        self.level1 = ConvBnPrelu(3, 16, 3, stride=2)
        self.sample1 = InputProjection(1)
        self.sample2 = InputProjection(2)
        self.b1 = BnPrelu(16 + 3)
        self.level2_0 = EspModule(16 + 3, 64, stride=2)
        self.level2 = nn.ModuleList([EspModule(64, 64) for _ in range(p)])
        self.b2 = BnPrelu(128 + 3)
        self.level3_0 = EspModule(128 + 3, 128, stride=2)
        self.level3 = nn.ModuleList([EspModule(128, 128) for _ in range(q)])
        self.b3 = BnPrelu(256)
        self.classifier = Conv(256, num_classes, 1)


class EspNet(nn.Module):
    """ESPNet with its light-weight decoder; returns logits at the input resolution.

    ``fuse_input_projection``: the CamVid checkpoint's last fusion conv sees the 19-channel
    level-1 features (16 conv channels + the pooled input), the Cityscapes one only the 16.
    """

    def __init__(
        self, num_classes: int, p: int = 2, q: int = 8, fuse_input_projection: bool = False
    ) -> None:
        super().__init__()
        c = num_classes
        self.fuse_input_projection = fuse_input_projection
        self.encoder = EspNetEncoder(c, p, q)
        self.level3_C = Conv(128 + 3, c, 1)
        self.br = nn.BatchNorm2d(c, eps=_BN_EPS)
        self.conv = ConvBnPrelu((19 if fuse_input_projection else 16) + c, c, 3)
        self.up_l3 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2, bias=False))
        self.combine_l2_l3 = nn.Sequential(BnPrelu(2 * c), EspModule(2 * c, c, residual=False))
        self.up_l2 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2, bias=False), BnPrelu(c))
        self.classifier = nn.ConvTranspose2d(c, c, 2, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        level1 = enc.level1(x)
        level1_cat = enc.b1(torch.cat([level1, enc.sample1(x)], 1))
        level2_0 = enc.level2_0(level1_cat)
        level2 = level2_0
        for layer in enc.level2:
            level2 = layer(level2)
        level2_cat = enc.b2(torch.cat([level2, level2_0, enc.sample2(x)], 1))
        level3_0 = enc.level3_0(level2_cat)
        level3 = level3_0
        for layer in enc.level3:
            level3 = layer(level3)
        level3_cat = enc.b3(torch.cat([level3_0, level3], 1))

        up3 = self.up_l3(self.br(enc.classifier(level3_cat)))
        merged = self.up_l2(self.combine_l2_l3(torch.cat([self.level3_C(level2_cat), up3], 1)))
        skip = level1_cat if self.fuse_input_projection else level1
        return self.classifier(self.conv(torch.cat([merged, skip], 1)))
