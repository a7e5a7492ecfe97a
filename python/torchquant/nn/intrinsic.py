"""Fused float modules made by ``fuse_modules``; ``convert`` turns them into one int8 kernel
call (the ReLU becomes part of the GEMM epilogue)."""
from torch import nn

from ._fused import FusedSequential

__all__ = ["LinearReLU", "LinearBn1d"]


class LinearReLU(FusedSequential):
    """Linear followed by ReLU, fused (torch.ao.nn.intrinsic.LinearReLU)."""

    def __init__(self, linear: nn.Linear, relu: nn.ReLU):
        if type(linear) is not nn.Linear or not isinstance(relu, nn.ReLU):
            raise TypeError(f"LinearReLU fuses nn.Linear and nn.ReLU, got {type(linear).__name__} and {type(relu).__name__}")
        super().__init__(linear, relu)


class LinearBn1d(FusedSequential):
    """Linear followed by BatchNorm1d, kept apart for QAT (torch.ao.nn.intrinsic.LinearBn1d):
    ``fuse_modules_qat`` makes it, ``prepare_qat`` turns it into ``torchquant.nn.qat.LinearBn1d``."""

    def __init__(self, linear: nn.Linear, bn: nn.BatchNorm1d):
        if type(linear) is not nn.Linear or not isinstance(bn, nn.BatchNorm1d):
            raise TypeError(f"LinearBn1d fuses nn.Linear and nn.BatchNorm1d, got {type(linear).__name__} and "
                            f"{type(bn).__name__}")
        super().__init__(linear, bn)


from .intrinsic_conv import *  # noqa: E402,F401,F403  (fused convolution modules)
from .intrinsic_conv import __all__ as _conv_all  # noqa: E402

__all__ = __all__ + _conv_all
from .intrinsic_bn import BNReLU2d, BNReLU3d  # noqa: E402,F401
