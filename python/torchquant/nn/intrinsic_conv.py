"""Fused float convolution modules made by ``fuse_modules`` / ``fuse_modules_qat``
(torch.ao.nn.intrinsic's names): Conv + ReLU, Conv + BatchNorm, Conv + BatchNorm + ReLU, for
1-d, 2-d and 3-d (the ReLU may be a ReLU6). ``convert`` turns ConvReLU into one int8 kernel call (the ReLU in the
epilogue); ``prepare_qat`` turns each into its torchquant.nn.qat version."""
from torch import nn

from ._fused import FusedSequential

__all__ = ["ConvReLU1d", "ConvReLU2d", "ConvReLU3d", "ConvBn1d", "ConvBn2d", "ConvBn3d",
           "ConvBnReLU1d", "ConvBnReLU2d", "ConvBnReLU3d"]


def _check(name, mods, kinds):
    # The activation may be a ReLU6 too: the fused module runs it, and convert folds it into the
    # int8 kernel's ReLU where the output qparams make the clamp at 6 implicit (docs/eager_api.md).
    if len(mods) != len(kinds) or any(type(m) is not k and not (k is nn.ReLU and isinstance(m, (nn.ReLU, nn.ReLU6)))
                                      for m, k in zip(mods, kinds)):
        raise TypeError(f"{name} fuses {[k.__name__ for k in kinds]}, got {[type(m).__name__ for m in mods]}")


class _Fused(FusedSequential):
    _KINDS = ()

    def __init__(self, *mods):
        _check(type(self).__name__, mods, self._KINDS)
        super().__init__(*mods)


class ConvReLU1d(_Fused):
    """Conv1d followed by ReLU, fused (torch.ao.nn.intrinsic.ConvReLU1d)."""
    _KINDS = (nn.Conv1d, nn.ReLU)


class ConvReLU2d(_Fused):
    """Conv2d followed by ReLU, fused (torch.ao.nn.intrinsic.ConvReLU2d)."""
    _KINDS = (nn.Conv2d, nn.ReLU)


class ConvReLU3d(_Fused):
    """Conv3d followed by ReLU, fused (torch.ao.nn.intrinsic.ConvReLU3d)."""
    _KINDS = (nn.Conv3d, nn.ReLU)


class ConvBn1d(_Fused):
    """Conv1d followed by BatchNorm1d, for QAT (torch.ao.nn.intrinsic.ConvBn1d)."""
    _KINDS = (nn.Conv1d, nn.BatchNorm1d)


class ConvBn2d(_Fused):
    """Conv2d followed by BatchNorm2d, for QAT (torch.ao.nn.intrinsic.ConvBn2d)."""
    _KINDS = (nn.Conv2d, nn.BatchNorm2d)


class ConvBn3d(_Fused):
    """Conv3d followed by BatchNorm3d, for QAT (torch.ao.nn.intrinsic.ConvBn3d)."""
    _KINDS = (nn.Conv3d, nn.BatchNorm3d)


class ConvBnReLU1d(_Fused):
    """Conv1d, BatchNorm1d and ReLU, for QAT (torch.ao.nn.intrinsic.ConvBnReLU1d)."""
    _KINDS = (nn.Conv1d, nn.BatchNorm1d, nn.ReLU)


class ConvBnReLU2d(_Fused):
    """Conv2d, BatchNorm2d and ReLU, for QAT (torch.ao.nn.intrinsic.ConvBnReLU2d)."""
    _KINDS = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)


class ConvBnReLU3d(_Fused):
    """Conv3d, BatchNorm3d and ReLU, for QAT (torch.ao.nn.intrinsic.ConvBnReLU3d)."""
    _KINDS = (nn.Conv3d, nn.BatchNorm3d, nn.ReLU)
