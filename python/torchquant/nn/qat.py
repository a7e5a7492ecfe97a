"""Quantization-aware-training modules: float modules whose weight goes through a
FakeQuantize in every forward, so training sees the int8 rounding."""
import torch.nn.functional as F
from torch import nn

from . import intrinsic

__all__ = ["Linear", "LinearReLU"]


class Linear(nn.Linear):
    """nn.Linear with fake-quantized weights (torch.ao.nn.qat.Linear)."""

    _FLOAT_MODULE = nn.Linear

    def __init__(self, in_features, out_features, bias=True, qconfig=None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        if qconfig is None:
            raise ValueError("qat.Linear needs a qconfig (argument 'qconfig')")
        self.qconfig = qconfig
        self.weight_fake_quant = qconfig.weight()
        if device is not None:
            self.weight_fake_quant.to(device)

    def forward(self, x):
        return F.linear(x, self.weight_fake_quant(self.weight), self.bias)

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant=False, name=None):
        linear = mod[0] if isinstance(mod, intrinsic.LinearReLU) else mod
        qconfig = getattr(mod, "qconfig", None)
        if qconfig is None:
            raise ValueError(f"{type(mod).__name__} has no qconfig; prepare_qat assigns one")
        qat = cls(linear.in_features, linear.out_features, linear.bias is not None, qconfig=qconfig,
                  device=linear.weight.device, dtype=linear.weight.dtype)
        qat.weight = linear.weight
        qat.bias = linear.bias
        return qat

    def to_float(self):
        lin = nn.Linear(self.in_features, self.out_features, self.bias is not None)
        lin.weight = self.weight
        lin.bias = self.bias
        return lin


class LinearReLU(Linear):
    """Fused Linear + ReLU with fake-quantized weights (torch.ao.nn.intrinsic.qat.LinearReLU)."""

    _FLOAT_MODULE = intrinsic.LinearReLU

    def forward(self, x):
        return F.relu(F.linear(x, self.weight_fake_quant(self.weight), self.bias))


from .qat_conv import *  # noqa: E402,F401,F403  (QAT convolutions)
from .qat_conv import __all__ as _conv_all  # noqa: E402

__all__ = __all__ + _conv_all
