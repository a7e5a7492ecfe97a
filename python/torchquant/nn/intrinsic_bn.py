"""Fused float BatchNorm + ReLU modules made by ``fuse_modules`` (torch.ao.nn.intrinsic.BNReLU2d
/ BNReLU3d); ``convert`` turns them into ``torchquant.nn.quantized.BNReLU2d`` / ``BNReLU3d``."""
from torch import nn

from ._fused import FusedSequential

__all__ = ["BNReLU2d", "BNReLU3d"]


class _BNReLU(FusedSequential):
    _BN = nn.BatchNorm2d

    def __init__(self, bn, relu):
        if type(bn) is not self._BN or not isinstance(relu, nn.ReLU):
            raise TypeError(f"{type(self).__name__} fuses {self._BN.__name__} and nn.ReLU, got "
                            f"{type(bn).__name__} and {type(relu).__name__}")
        super().__init__(bn, relu)


class BNReLU2d(_BNReLU):
    """BatchNorm2d followed by ReLU, fused (torch.ao.nn.intrinsic.BNReLU2d)."""

    _BN = nn.BatchNorm2d


class BNReLU3d(_BNReLU):
    """BatchNorm3d followed by ReLU, fused (torch.ao.nn.intrinsic.BNReLU3d)."""

    _BN = nn.BatchNorm3d
