"""Dynamic int8 modules under torch.ao's names (``torch.ao.nn.quantized.dynamic``): float in,
float out, weights int8 per output channel, activations quantized on the fly.

Reached as ``torchquant.nn.quantized.dynamic.<Name>`` (also importable as the module
``torchquant.nn.quantized.dynamic``).

    >>> qlstm = torchquant.nn.quantized.dynamic.LSTM.from_float(lstm)   # or quantize_dynamic
"""
from typing import Optional

import torch
from torch import nn

from .quantized import DynamicLinear as Linear
from .quantized_dynamic_mha import MultiheadAttention
from .quantized_dynamic_rnn import GRU, LSTM, GRUCell, LSTMCell, RNNCell

__all__ = ["Linear", "LSTM", "GRU", "LSTMCell", "GRUCell", "RNNCell", "MultiheadAttention", "Conv1DAsLinear",
           "is_hf_conv1d"]


def is_hf_conv1d(cls) -> bool:
    """Whether ``cls`` is Hugging Face's ``transformers.pytorch_utils.Conv1D`` (a Linear whose
    weight is stored [in, out]), checked without importing transformers."""
    return isinstance(cls, type) and cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


class Conv1DAsLinear:
    """The mapping target of Hugging Face's Conv1D: ``from_float`` returns the dynamic int8
    :class:`Linear` with the Conv1D's weight transposed once, at convert, to the Linear layout
    [out, in] (``y = x @ W + b`` is ``F.linear(x, W.t(), b)``)."""

    @staticmethod
    def as_linear(mod: nn.Module, name: Optional[str] = None) -> nn.Linear:
        """The float ``nn.Linear`` a Conv1D computes as (its weight transposed to [out, in], no
        gradient; the Conv1D is left as it was), carrying its qconfig: the module another
        mapping's Linear class quantizes in the Conv1D's place."""
        w = mod.weight
        if w.dim() != 2:
            raise ValueError(f"{name or 'Conv1D'}: expected a 2-D weight [in, out], got shape {tuple(w.shape)}")
        nx, nf = w.shape
        # A float Linear on the transposed weight carries the qconfig, so the weight observer
        # sees the weight as an nn.Linear's and gives one scale per output feature.
        lin = nn.Linear(nx, nf, bias=mod.bias is not None, device="meta")
        lin.weight = nn.Parameter(w.detach().t().contiguous(), requires_grad=False)
        if mod.bias is not None:
            lin.bias = nn.Parameter(mod.bias.detach(), requires_grad=False)
        lin.qconfig = getattr(mod, "qconfig", None)
        return lin

    @classmethod
    def from_float(cls, mod: nn.Module, name: Optional[str] = None) -> Linear:
        return Linear.from_float(cls.as_linear(mod, name), name=name)
