"""The seed's hand-written UNet, and the smallest fix that lets it predict noise (chapter 5)."""
import torch
from torch import nn


class BasicUNet(nn.Module):
    """一个十分简单的UNet网络部署 — the seed's class (309,057 parameters).

    forward(x): x (B, in_channels, H, W), H and W divisible by 4. It never sees t, and its final
    SiLU bounds the output below by -0.278 (chapter 5). The seed's code with one setting added
    (``final_act``) so that :class:`BasicUNetFixed` can state its changes; chapter 5 checks it."""

    final_act = True  # the seed applies its activation after the last layer too

    def __init__(self, in_channels=1, out_channels=1):
        super().__init__()
        self.down_layers = torch.nn.ModuleList([
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.Conv2d(64, 64, kernel_size=5, padding=2),
        ])
        self.up_layers = torch.nn.ModuleList([
            nn.Conv2d(64, 64, kernel_size=5, padding=2),
            nn.Conv2d(64, 32, kernel_size=5, padding=2),
            nn.Conv2d(32, out_channels, kernel_size=5, padding=2),
        ])
        self.act = nn.SiLU()  # 激活函数
        self.downscale = nn.MaxPool2d(2)  # 下采样
        self.upscale = nn.Upsample(scale_factor=2)  # 上采样

    def forward(self, x):
        h = []  # 用于存储下采样过程中的数据
        for i, l in enumerate(self.down_layers):
            x = self.act(l(x))  # 通过运算层与激活函数
            if i < 2:  # 选择除了第3层（最后一层）以外的层
                h.append(x)  # 排列供残差连接使用的数据
                x = self.downscale(x)  # 进行下采样以适配下一层的输入
        for i, l in enumerate(self.up_layers):
            if i > 0:  # 选择除了第1个上采样层以外的层
                x = self.upscale(x)  # Upscale上采样
                x += h.pop()  # 得到之前排列好的供残差连接使用的数据
            x = l(x)  # 通过运算层
            if i < 2 or self.final_act:
                x = self.act(x)  # 与激活函数
        return x


class BasicUNetFixed(BasicUNet):
    """BasicUNet with the two smallest changes that make eps-prediction learnable (chapter 5).

    forward(x, t): x (B, in_channels, H, W); t (B,) 0-based long. 309,857 parameters.
    """

    final_act = False  # change 1: no activation on the output (it can be any real number)

    def __init__(self, in_channels=1, out_channels=1, num_timesteps=1000):
        super().__init__(in_channels + 1, out_channels)  # change 2: one more input channel ...
        self.num_timesteps = num_timesteps

    def forward(self, x, t):
        # ... holding t / T as a constant plane: t (B,) -> (B, 1, H, W)
        t_plane = (t.to(x.dtype) / self.num_timesteps).reshape(-1, 1, 1, 1)
        return super().forward(torch.cat([x, t_plane.expand(-1, 1, *x.shape[2:])], dim=1))
