"""
The last block of every decode head, where class-level plug-ins attach.

``HeadTail``: input (N, C_in, h, w) ->

- optional *regularization projection* (``REG_PROJECTION``): a 1x1 conv **with bias and no
  norm/activation** to ``REG_PROJECTION_CHANNELS`` (0 = ``min(C_in, 512)``) channels. Its output
  is returned as ``"reg_feature"``, the feature X that CAR regularizes (CAR, Sec. 4.2.1, as in
  the authors' released heads);
- the head's last conv -> norm -> ReLU with ``LAST_CONV_KERNEL`` x ``LAST_CONV_KERNEL`` kernels:
  3 is the usual 3x3 conv; 1 is CAR's architecture change "A" (CAR Sec. 4.2.1, Fig. 3B);
  ``separable`` makes the 3x3 conv depthwise-separable (mmsegmentation's DeepLabV3+ decoder);
- output: a :class:`~segcls.modeling.outputs.SegOutputs` whose ``pixel_feature`` (N, channels,
  h, w) is the classifier's input. Without the projection ``reg_features`` is empty and
  regularizers use the pixel feature.
"""
import torch
from fvcore.nn import weight_init
from torch import nn

from ..layers import conv_norm_act
from ..outputs import SegOutputs
from .blocks import separable_conv_norm_act

__all__ = ["HeadTail"]


class HeadTail(nn.Module):
    def __init__(
        self,
        in_channels,
        channels,
        *,
        norm="BN",
        last_conv_kernel=3,
        reg_projection=False,
        reg_channels=0,
        separable=False,
    ):
        super().__init__()
        if last_conv_kernel not in (1, 3):
            raise ValueError(f"LAST_CONV_KERNEL={last_conv_kernel}: expected 3 (standard) or 1 (CAR's change 'A')")
        if separable and last_conv_kernel != 3:
            raise ValueError("a depthwise-separable last conv needs LAST_CONV_KERNEL=3")
        self.projection = None
        if reg_projection:
            reg_channels = reg_channels or min(in_channels, 512)
            self.projection = nn.Conv2d(in_channels, reg_channels, kernel_size=1, bias=True)
            weight_init.c2_msra_fill(self.projection)
            in_channels = reg_channels
        block = separable_conv_norm_act if separable else conv_norm_act
        self.conv = block(in_channels, channels, last_conv_kernel, norm)
        self.out_channels = channels

    @classmethod
    def from_node(cls, node, in_channels, channels=None, separable=False):
        """Build from a head config node (``MODEL.DECODE_HEAD`` or ``MODEL.AUX_HEAD``);
        ``channels`` defaults to the node's ``CHANNELS``."""
        return cls(
            in_channels,
            node.CHANNELS if channels is None else channels,
            norm=node.NORM,
            last_conv_kernel=node.LAST_CONV_KERNEL,
            reg_projection=node.REG_PROJECTION,
            reg_channels=node.REG_PROJECTION_CHANNELS,
            separable=separable,
        )

    def forward(self, x: torch.Tensor) -> SegOutputs:
        out = SegOutputs()
        if self.projection is not None:
            x = out.reg_features["reg_feature"] = self.projection(x)
        out.pixel_feature = self.conv(x)
        return out
