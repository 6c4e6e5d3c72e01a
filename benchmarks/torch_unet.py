"""The same U-Net written in PyTorch: the peer users would otherwise run (benchmark-only; never imported by
the package or its tests). Weights load from an agatax member's Flax variables so outputs can be compared."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TorchResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.conv0 = nn.Conv3d(cin, cout, 3, padding=1, bias=False)
        self.norm0 = nn.BatchNorm3d(cout, eps=eps)
        self.conv1 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm3d(cout, eps=eps)
        self.proj = nn.Conv3d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.elu(self.norm0(self.conv0(x)))
        h = self.norm1(self.conv1(h))
        return nn.functional.elu(h + (self.proj(x) if self.proj is not None else x))


class TorchUNet(nn.Module):
    """x (batch, 1, z, y, x) -> logits (batch, 1, z, y, x)."""

    def __init__(self, levels: int = 4, base_filters: int = 16) -> None:
        super().__init__()
        f = [base_filters * 2**l for l in range(levels)]
        self.levels = levels
        self.down = nn.ModuleList([TorchResBlock(1 if l == 0 else f[l - 1], f[l]) for l in range(levels)])
        self.up = nn.ModuleList([nn.ConvTranspose3d(f[l + 1], f[l], 2, stride=2) for l in range(levels - 1)])
        self.dec = nn.ModuleList([TorchResBlock(2 * f[l], f[l]) for l in range(levels - 1)])
        self.head = nn.Conv3d(f[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for l in range(self.levels):
            x = self.down[l](x)
            if l < self.levels - 1:
                skips.append(x)
                x = nn.functional.max_pool3d(x, 2)
        for l in reversed(range(self.levels - 1)):
            x = torch.cat([self.up[l](x), skips[l]], dim=1)
            x = self.dec[l](x)
        return self.head(x)


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=np.float32)))


def _load_block(block: TorchResBlock, params, stats) -> None:
    block.conv0.weight.data = _t(np.transpose(params["Conv3_0"]["kernel"], (4, 3, 0, 1, 2)))
    block.conv1.weight.data = _t(np.transpose(params["Conv3_1"]["kernel"], (4, 3, 0, 1, 2)))
    for k, norm in enumerate((block.norm0, block.norm1)):
        norm.weight.data = _t(params[f"BatchNorm_{k}"]["scale"])
        norm.bias.data = _t(params[f"BatchNorm_{k}"]["bias"])
        norm.running_mean.data = _t(stats[f"BatchNorm_{k}"]["mean"])
        norm.running_var.data = _t(stats[f"BatchNorm_{k}"]["var"])
    if block.proj is not None:
        block.proj.weight.data = _t(np.asarray(params["Dense1_0"]["kernel"]).T[:, :, None, None, None])
        block.proj.bias.data = _t(params["Dense1_0"]["bias"])


def from_flax(variables, levels: int = 4, base_filters: int = 16) -> TorchUNet:
    """A TorchUNet (eval mode) holding one agatax member's weights ({"params", "batch_stats"})."""
    net = TorchUNet(levels, base_filters)
    params, stats = variables["params"], variables["batch_stats"]
    for l in range(levels):
        _load_block(net.down[l], params[f"down{l}"], stats[f"down{l}"])
    for l in range(levels - 1):
        k = np.asarray(params[f"up{l}"]["kernel"])[::-1, ::-1, ::-1]  # flax ConvTranspose flips the taps
        net.up[l].weight.data = _t(np.transpose(k, (3, 4, 0, 1, 2)))
        net.up[l].bias.data = _t(params[f"up{l}"]["bias"])
        _load_block(net.dec[l], params[f"dec{l}"], stats[f"dec{l}"])
    net.head.weight.data = _t(np.asarray(params["head"]["kernel"]).T[:, :, None, None, None])
    net.head.bias.data = _t(params["head"]["bias"])
    return net.eval()
