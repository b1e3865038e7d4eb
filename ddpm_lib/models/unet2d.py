"""The seed's diffusers UNet2DModel configuration (chapter 6) and the CPU-sized one (chapter 8)."""


def make_unet2d(sample_size=28, in_channels=1, out_channels=1):
    """The seed's diffusers ``UNet2DModel``, exactly (1,707,009 parameters for 1 channel)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=sample_size,  # 目标图像的分辨率
        in_channels=in_channels,  # 输入图像的通道数，RGB图像的通道数为3
        out_channels=out_channels,  # 输出图像的通道数
        layers_per_block=2,  # 设置要在每一个UNet块中使用多少个ResNet层
        block_out_channels=(32, 64, 64),  # 与BasicUNet模型的配置基本相同
        down_block_types=(
            "DownBlock2D",  # 标准的ResNet下采样模块
            "AttnDownBlock2D",  # 带有空域维度self-att的ResNet下采样模块
            "AttnDownBlock2D",
        ),
        up_block_types=(
            "AttnUpBlock2D",
            "AttnUpBlock2D",  # 带有空域维度self-att的ResNet上采样模块
            "UpBlock2D",  # 标准的ResNet上采样模块
        ),
    )


def make_small_unet2d(block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8,
                      attention=False, in_channels=1, num_classes=None):
    """A ``UNet2DModel`` sized for a CPU (chapter 8): 619,697 parameters by default. attention:
    self-attention in the lowest-resolution blocks (down, middle and up) or in none;
    num_classes: K for a class-conditional model (chapter 9): K + 1 class embeddings, the last
    one the null label of classifier-free guidance, added to the timestep embedding."""
    from diffusers import UNet2DModel

    n = len(block_out_channels)
    return UNet2DModel(
        sample_size=28, in_channels=in_channels, out_channels=in_channels,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups, add_attention=attention,
        num_class_embeds=None if num_classes is None else num_classes + 1,
        down_block_types=("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D" if attention else "DownBlock2D",),
        up_block_types=("AttnUpBlock2D" if attention else "UpBlock2D",) + ("UpBlock2D",) * (n - 1),
    )
