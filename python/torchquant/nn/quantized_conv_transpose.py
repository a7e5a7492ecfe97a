"""Static int8 transposed convolutions that ``convert`` swaps in for nn.ConvTranspose1d/2d/3d
(torch.ao.nn.quantized.ConvTranspose1d/2d/3d): QTensor in, QTensor out, one kernel call (exact
int32 sums, bias and requantization fused).

Weights are symmetric int8 per output channel. The weight observer of the qconfig sees the
weight in Conv's layout [Cout, Cin / groups, *kernel] (output channel first), so the default
per-channel qconfigs (``ch_axis=0``) give one scale per output channel, and per-tensor
observers one scale for all (torch.ao's x86 / fbgemm choice for ConvTranspose: its eager flow
rejects per-channel weight observers here). Plain-tensor state dict (``qweight`` int8 [Cin,
Cout / groups, *kernel], nn.ConvTranspose's layout; ``weight_scale``, ``weight_zero_point``,
``bias``, ``scale``, ``zero_point``), loadable with ``torch.load(..., weights_only=True)``; the
packed weight is rebuilt on ``.to()`` and on load. The output's int8 data is channels-last.
"""
from typing import List, Optional

import torch
from torch.compiler import is_compiling as _is_compiling
from torch import nn
from torch.nn.modules.utils import _ntuple

from .._ops import conv_transpose_packed_weight_shape
from ..observer import _PER_CHANNEL
from ..qtensor import QTensor
from .quantized import _STORAGE, _LazyQWeight, _activation_qparams, _codes_of, _lazy
from ._state_dict import note_packed, refuse_parametrized, repack_if_stale
from ._compact import unpack_by_probes
from .quantized_conv import _check_geometry, _ConvLikeNd, _conv_weight_qparams

__all__ = ["ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]

ops = torch.ops.torchquant


def _to_conv_layout(w: torch.Tensor, groups: int) -> torch.Tensor:
    """[Cin, Cout / groups, *k] -> [Cout, Cin / groups, *k] (output channel g * Ng + j first)."""
    cin, ng, k = w.shape[0], w.shape[1], w.shape[2:]
    return w.reshape(groups, cin // groups, ng, *k).transpose(1, 2).reshape(groups * ng, cin // groups, *k)


def _from_conv_layout(w: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse of _to_conv_layout."""
    cout, cg, k = w.shape[0], w.shape[1], w.shape[2:]
    return w.reshape(groups, cout // groups, cg, *k).transpose(1, 2).reshape(groups * cg, cout // groups, *k)




def _per_channel_axis(mod) -> Optional[int]:
    """ch_axis of the qconfig's weight observer (or FakeQuantize) when it is per channel."""
    qconfig = getattr(mod, "qconfig", None)
    if qconfig is None or getattr(qconfig, "weight", None) is None:
        return None
    wobs = qconfig.weight()
    if getattr(wobs, "qscheme", None) not in _PER_CHANNEL:
        return None
    return int(getattr(wobs, "ch_axis", 0))


class _LazyTransposedQWeight(_LazyQWeight):
    """A transposed convolution's ``.weight``: the codes in Conv's layout [Cout, Cin / groups,
    *kernel] (the module holds [Cin, Cout / groups, *kernel]), read when used."""

    __slots__ = ()

    @property
    def data(self) -> torch.Tensor:
        return _to_conv_layout(_codes_of(self._module), self._module.groups)

    def _portable_codes(self) -> torch.Tensor:
        return _to_conv_layout(super()._portable_codes(), self._module.groups)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self._module._api_weight_shape())


class _ConvTransposeNd(_ConvLikeNd):
    _NSP = 2
    _FLOAT_MODULE = nn.ConvTranspose2d
    _packed_shape = staticmethod(conv_transpose_packed_weight_shape)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, padding_mode: str = "zeros", device=None,
                 dtype=torch.quint8):
        super().__init__()
        tup = _ntuple(self._NSP)
        self._init_channels(in_channels, out_channels, groups)
        if padding_mode != "zeros":
            raise ValueError(f'Only "zeros" padding mode is supported for {type(self).__name__}, got '
                             f"padding_mode={padding_mode!r}")
        self.kernel_size, self.stride, self.dilation = tup(kernel_size), tup(stride), tup(dilation)
        self.padding, self.output_padding = tup(padding), tup(output_padding)
        (self.kernel_size, self.stride, self.dilation, self.padding, self.output_padding) = _check_geometry(
            type(self).__name__, self._NSP, kernel_size=self.kernel_size, stride=self.stride, dilation=self.dilation,
            padding=self.padding, output_padding=self.output_padding)
        for o, s, d in zip(self.output_padding, self.stride, self.dilation):
            if not (o < s or o < d):
                raise ValueError(f"output_padding must be smaller than either stride or dilation, got "
                                 f"output_padding={self.output_padding}, stride={self.stride}, "
                                 f"dilation={self.dilation}")
        self.padding_mode = padding_mode
        self.transposed = True
        # (on `device`, the layout packed for it below: torch.ao's factory argument; dtype None, its
        # default, is the default activation dtype)
        self._init_int8_buffers((in_channels, out_channels // groups, *self.kernel_size), out_channels, bias, dtype,
                                device)
        self._geometry = (list(self.kernel_size), list(self.stride), list(self.padding), list(self.dilation))
        self._repack()

    def _weight_bias(self):
        """(weight, bias): torch.ao's accessor of a quantized module's int8 weight (a QTensor
        here) and float bias (None without one)."""
        return self.weight, self.bias

    @property
    def weight(self) -> QTensor:
        """The int8 weight [Cin, Cout / groups, *kernel] with its per-output-channel scales, as a
        QTensor in Conv's layout [Cout, Cin / groups, *kernel] (quantized along axis 0)."""
        # lazy, as Conv's: its shape answers without the codes (inside a graph too, where this
        # layout cannot be read back: a value read there names the workaround)
        return _lazy(_LazyTransposedQWeight, self)

    def _api_weight_shape(self) -> tuple:
        # weight()'s: Conv's layout [Cout, Cin / groups, *kernel]
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def _qweight_from_api(self, codes: torch.Tensor) -> torch.Tensor:
        return _from_conv_layout(codes, self.groups)

    _api_weight_layout = (": Conv's layout [Cout, Cin / groups, *kernel], quantized along axis 0, not "
                          "nn.ConvTranspose's [Cin, Cout / groups, *kernel]")

    def _repack(self):
        self._packed_weight, self._col_sums = ops.pack_conv_transpose_weight(self.qweight, self.groups)
        note_packed(self, ("qweight",), "_packed_weight")

    _unpack_attrs = ("groups",)

    def _unpack_qweight(self, bufs, shape):
        return unpack_by_probes(lambda w: ops.pack_conv_transpose_weight(w, self.groups)[0], bufs["_packed_weight"],
                                shape)

    def _output_padding(self, data, output_size: Optional[List[int]]):
        if output_size is None:
            return list(self.output_padding)
        k, s, p, d = self._geometry
        # nn.ConvTranspose*d's rule (and its errors) for the output_size argument.
        return nn.modules.conv._ConvTransposeNd._output_padding(self, data, list(output_size), s, p, k, self._NSP, d)

    def forward(self, input, output_size: Optional[List[int]] = None):
        # (`input`: torch.nn's name, for calls with input=)
        # (a KeyError of a buffer read: one that register_parametrization moved, refused by name)
        try:
            x = self._check_input(input, "transposed convolution")
            w0 = self._buffers["qweight"]  # (torch.func.functional_call, an assignment, an in-place change)
            if (w0 is not self._tq_src0
                    or (self._tq_v0 is not None and not _is_compiling() and w0._version != self._tq_v0)):
                repack_if_stale(self)
            data = x.data
            unbatched = self._unbatched(data, "conv_transpose")
            op = self._output_padding(data, output_size)
            if unbatched:
                data = data.unsqueeze(0)
            b = self._buffers
            scale, zero_point = b["scale"], b["zero_point"]
            k, s, p, d = self._geometry
            y = ops.conv_transpose_int8(data, x.scale, x.zero_point, b["_packed_weight"], b["_col_sums"],
                                        b["weight_scale"], b["bias"], k, s, p, op, d, self.groups, scale, zero_point,
                                        False, _STORAGE[self.dtype])
        except KeyError as e:
            refuse_parametrized(self, e)
            raise
        if unbatched:
            y = y.squeeze(0)
        return QTensor._make(y, scale, zero_point, None, self.qmin, self.qmax)

    @classmethod
    def from_float(cls, mod, name: Optional[str] = None, use_precomputed_fake_quant: bool = False):
        """Quantizes a prepared (observed) float nn.ConvTranspose*d: weights symmetric int8 per
        output channel (per-channel observers; the observer sees the weight as [Cout, Cin /
        groups, *kernel]) or per tensor, activations with the calibrated output qparams."""
        name = name or type(mod).__name__
        if not isinstance(mod, cls._FLOAT_MODULE):
            raise TypeError(f"{cls.__name__}.from_float takes an nn.{cls._FLOAT_MODULE.__name__}, got "
                            f"{type(mod).__name__}")
        g = mod.groups
        weight = mod.weight.detach().float()
        wc = _to_conv_layout(weight, g)
        ch_axis = _per_channel_axis(mod)
        if ch_axis is not None and ch_axis not in (0, -wc.dim()):
            raise ValueError(f"{name}: a per-channel weight observer of a quantized ConvTranspose must have "
                             f"ch_axis=0 (it sees the weight as [Cout, Cin / groups, *kernel]), got ch_axis={ch_axis}")
        w_scale, w_zp, w_range = _conv_weight_qparams(mod, wc, name)
        if w_scale.numel() != mod.out_channels:
            raise ValueError(f"{name}: the weight observer gave {w_scale.numel()} scales, but a quantized "
                             f"ConvTranspose needs one or one per output channel ({mod.out_channels})")
        scale, zero_point, obs = _activation_qparams(mod, name)
        q = cls(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.output_padding,
                mod.groups, mod.bias is not None, mod.dilation, mod.padding_mode, dtype=obs.dtype)
        qc = ops.quantize(wc, w_scale, w_zp, 0, w_range[0], w_range[1], torch.int8)
        q._set_int8(_from_conv_layout(qc, g), w_scale, w_zp, mod.bias, scale, zero_point)
        return q.to(weight.device)


def _make(nsp, name, doc):
    return type(name, (_ConvTransposeNd,), {"_NSP": nsp, "_FLOAT_MODULE": getattr(nn, name), "__doc__": doc,
                                            "__module__": "torchquant.nn.quantized"})


ConvTranspose1d = _make(1, "ConvTranspose1d", "Static int8 ConvTranspose1d (torch.ao.nn.quantized.ConvTranspose1d).")
ConvTranspose2d = _make(2, "ConvTranspose2d", "Static int8 ConvTranspose2d (torch.ao.nn.quantized.ConvTranspose2d).")
ConvTranspose3d = _make(3, "ConvTranspose3d", "Static int8 ConvTranspose3d (torch.ao.nn.quantized.ConvTranspose3d).")
