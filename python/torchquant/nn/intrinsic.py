"""Fused float modules made by ``fuse_modules``; ``convert`` turns them into one int8 kernel
call (the ReLU becomes part of the GEMM epilogue)."""
from torch import nn

__all__ = ["LinearReLU"]


class LinearReLU(nn.Sequential):
    """Linear followed by ReLU, fused (torch.ao.nn.intrinsic.LinearReLU)."""

    def __init__(self, linear: nn.Linear, relu: nn.ReLU):
        if type(linear) is not nn.Linear or not isinstance(relu, nn.ReLU):
            raise TypeError(f"LinearReLU fuses nn.Linear and nn.ReLU, got {type(linear).__name__} and {type(relu).__name__}")
        super().__init__(linear, relu)


from .intrinsic_conv import *  # noqa: E402,F401,F403  (fused convolution modules)
from .intrinsic_conv import __all__ as _conv_all  # noqa: E402

__all__ = __all__ + _conv_all

from .intrinsic_bn import BNReLU2d, BNReLU3d  # noqa: E402,F401
