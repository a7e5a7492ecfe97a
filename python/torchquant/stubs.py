"""QuantStub / DeQuantStub / QuantWrapper: the float <-> int8 boundaries of a model, with
torch.ao.quantization's names and behaviour.

Before ``convert`` both are identities (QuantStub carries the observer of the model's input);
``convert`` turns QuantStub into :class:`torchquant.nn.quantized.Quantize` and DeQuantStub into
:class:`torchquant.nn.quantized.DeQuantize`.
"""
import torch
from torch import nn

__all__ = ["QuantStub", "DeQuantStub", "QuantWrapper"]


class QuantStub(nn.Module):
    """Marks where float activations become int8.

    >>> m = nn.Sequential(torchquant.QuantStub(), nn.Linear(4, 4), torchquant.DeQuantStub())
    """

    def __init__(self, qconfig=None):
        super().__init__()
        if qconfig is not None:
            self.qconfig = qconfig

    def forward(self, x):
        return x


class DeQuantStub(nn.Module):
    """Marks where int8 activations become float again."""

    def __init__(self, qconfig=None):
        super().__init__()
        if qconfig is not None:
            self.qconfig = qconfig

    def forward(self, x):
        return x


class QuantWrapper(nn.Module):
    """Wraps a module between a QuantStub and a DeQuantStub (torch.ao's QuantWrapper)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        qconfig = getattr(module, "qconfig", None)
        self.add_module("quant", QuantStub(qconfig))
        self.add_module("dequant", DeQuantStub(qconfig))
        self.add_module("module", module)
        self.train(module.training)

    def forward(self, x):
        return self.dequant(self.module(self.quant(x)))
