"""Static int8 convolutions that ``convert`` swaps in (torch.ao.nn.quantized.Conv1d/2d/3d and
torch.ao.nn.intrinsic.quantized.ConvReLU1d/2d/3d): QTensor in, QTensor out, one kernel call
(int32 accumulation, bias, optional ReLU and requantization fused).

Activations stay channels-last: the int8 data of the QTensor a quantized conv returns is an
[N, C, *spatial] tensor in torch.channels_last (channels_last_3d) memory, which the next conv
reads in place. Plain-tensor state dict (``qweight`` int8 [Cout, Cin / groups, *kernel],
``weight_scale``, ``weight_zero_point``, ``bias``, ``scale``, ``zero_point``), loadable with
``torch.load(..., weights_only=True)``; the packed weight is rebuilt on ``.to()`` and on load.
"""
import operator
from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _ntuple

from .. import _fastcall
from .._ops import conv_packed_weight_shape
from ..qtensor import QTensor
from . import qat_conv
from .quantized import (lazy_weight, _STORAGE, _activation_qparams, _check_observes, _check_weight_axis, _Int8WeightModule,
                        _size_arg, _weight_range)
from ._state_dict import qparams_repr, note_packed, refuse_parametrized, repack_if_stale
from ._compact import unpack_by_probes, unpack_conv_cpu

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvReLU1d", "ConvReLU2d", "ConvReLU3d"]

ops = torch.ops.torchquant


def _check_geometry(cls_name: str, nsp: int, **args):
    """The constructor's kernel_size / stride / padding / dilation (/ output_padding), as tuples
    of nsp ints (numpy integers taken), checked: kernel_size, stride and dilation >= 1, padding
    >= 0 (the kernels would refuse them only at the first call). Returns them in the order given."""
    out = []
    for name, values in args.items():
        try:
            if not isinstance(values, (tuple, list)) or len(values) != nsp or any(isinstance(v, bool) for v in values):
                raise TypeError
            values = tuple(operator.index(v) for v in values)
        except TypeError:
            raise ValueError(f"{cls_name}: argument '{name}' must be an int or a tuple of {nsp} ints, got "
                             f"{values!r}") from None
        low = 0 if name in ("padding", "output_padding") else 1
        if any(v < low for v in values):
            raise ValueError(f"{cls_name}: argument '{name}' must hold values >= {low}, got {values!r}")
        out.append(values)
    return out[0] if len(out) == 1 else out


def _same_padding(kernel_size, dilation):
    """padding='same' as torch computes it: ``dilation * (kernel - 1)`` in all per dimension,
    half on the left and the rest (one more for an odd total) on the right. Returns (left pads,
    F.pad's list for the whole, last dimension first)."""
    left, pad = [], []
    for k, d in zip(kernel_size, dilation):
        total = d * (k - 1)
        left.append(total // 2)
        pad = [total // 2, total - total // 2] + pad
    return tuple(left), pad


class _ConvLikeNd(_Int8WeightModule):
    """What the quantized Conv and ConvTranspose modules share: the channel / groups checks, the
    input's optional batch dimension and the repr."""

    _NSP = 2
    _packed_shape = staticmethod(conv_packed_weight_shape)  # the packing op's shape for (w_shape, groups, device)

    def _packed_shape_of(self, w: torch.Tensor) -> tuple:
        return self._packed_shape(tuple(w.shape), self.groups, w.device)

    def _init_channels(self, in_channels: int, out_channels: int, groups: int):
        in_channels = _size_arg(self, "in_channels", in_channels)
        out_channels = _size_arg(self, "out_channels", out_channels)
        groups = _size_arg(self, "groups", groups)
        if groups <= 0:
            raise ValueError("groups must be a positive integer")
        if in_channels % groups != 0:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups != 0:
            raise ValueError("out_channels must be divisible by groups")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups

    def _unbatched(self, data, fn: str) -> bool:
        """Whether data is one sample [C, *spatial] rather than a batch [N, C, *spatial]; torch's
        error for any other rank (fn names torch's function: "conv", "conv_transpose")."""
        nsp = self._NSP
        if data.dim() not in (nsp + 1, nsp + 2):
            raise RuntimeError(f"Expected {nsp + 1}D (unbatched) or {nsp + 2}D (batched) input to {fn}{nsp}d, but "
                               f"got input of size: {list(data.shape)}")
        unbatched = data.dim() == nsp + 1
        c = data.shape[0 if unbatched else 1]
        if c != self.in_channels:
            # torch's message. The op cannot always tell: its packed weight pads the channels of a
            # small kernel (3 and 4 channels of a 3x3 one pack alike).
            shape = [1, *data.shape] if unbatched else list(data.shape)
            if self.transposed:
                what = f"transposed=1, weight of size {[self.in_channels, self.out_channels // self.groups, *self.kernel_size]}"
            else:
                what = f"groups={self.groups}, weight of size {[self.out_channels, self.in_channels // self.groups, *self.kernel_size]}"
            raise RuntimeError(f"Given {what}, expected input{shape} to have {self.in_channels} channels, but got {c} "
                               "channels instead")
        return unbatched

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"{qparams_repr(self.scale, self.zero_point)}")
        if self.padding != (0,) * self._NSP:
            s += f", padding={self.padding}"
        if self.output_padding != (0,) * self._NSP:
            s += f", output_padding={self.output_padding}"
        if self.dilation != (1,) * self._NSP:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if getattr(self, "_relu6", False):
            s += ", relu6=True"
        return s + f", dtype={self.dtype}"


_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


class _ConvNd(_ConvLikeNd):
    _NSP = 2
    _relu = False
    # A ConvReLU fused from a ReLU6 (set by from_float): the codes are clamped at quantize(6) too,
    # which is a no-op (and skipped) where the output qparams cannot represent more than 6. The
    # bound is a Python int computed from the output qparams at convert, on load_state_dict and
    # on .to() (with the packed weight), so forward reads no tensor value (export, compile).
    _relu6 = False
    _relu6_hi = None

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=torch.quint8):
        super().__init__()
        tup = _ntuple(self._NSP)
        self._init_channels(in_channels, out_channels, groups)
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, but got padding_mode='{padding_mode}'")
        self.kernel_size, self.stride, self.dilation = tup(kernel_size), tup(stride), tup(dilation)
        self.kernel_size, self.stride, self.dilation = _check_geometry(
            type(self).__name__, self._NSP, kernel_size=self.kernel_size, stride=self.stride, dilation=self.dilation)
        asym_pad = None
        if isinstance(padding, str):
            if padding == "valid":
                padding = 0
            elif padding == "same":
                if any(s != 1 for s in self.stride):
                    raise ValueError("padding='same' is not supported for strided convolutions")
                padding, same_pad = _same_padding(self.kernel_size, self.dilation)
                if same_pad[0::2] != same_pad[1::2]:
                    asym_pad = same_pad
            else:
                raise ValueError(f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
        self.padding = tup(padding) if asym_pad is None else "same"
        if asym_pad is None:
            self.padding = _check_geometry(type(self).__name__, self._NSP, padding=self.padding)
        self.padding_mode = padding_mode
        # reflect / replicate / circular, and padding='same' with more on the right (an even
        # kernel): the codes are padded (exact copies of codes, or the zero point, which is the
        # real 0), then the kernel runs unpadded; F.pad's order is last dimension first.
        if asym_pad is not None:
            self._pad = asym_pad
        else:
            self._pad = [p for q in reversed(self.padding) for p in (q, q)] if padding_mode != "zeros" else None
        self.transposed, self.output_padding = False, tup(0)
        # (on `device`, the layout packed for it below: torch.ao's factory argument; dtype None, its
        # default, is the default activation dtype)
        self._init_int8_buffers((out_channels, in_channels // groups, *self.kernel_size), out_channels, bias, dtype,
                                device)
        # The op's list arguments, built once.
        kernel_pad = [0] * self._NSP if self._pad is not None else list(self.padding)
        self._geometry = (list(self.kernel_size), list(self.stride), kernel_pad, list(self.dilation))
        self._repack()

    def _weight_bias(self):
        """(weight, bias): torch.ao's accessor of a quantized module's int8 weight (a QTensor
        here) and float bias (None without one)."""
        return self.weight, self.bias

    @property
    def weight(self) -> QTensor:
        """The int8 weight with its per-channel scales, as a QTensor (torch.ao's ``weight()``); the
        codes are read from the module when used."""
        return lazy_weight(self)

    def _repack(self):
        self._packed_weight, self._col_sums = ops.pack_conv_weight(self.qweight, self.groups)
        self._update_relu6_bound()
        note_packed(self, ("qweight", "scale", "zero_point"), "_packed_weight")  # (the ReLU6 bound: the qparams)

    _unpack_attrs = ("groups",)

    def _unpack_qweight(self, bufs, shape):
        p = bufs["_packed_weight"]
        if p.device.type == "cpu":
            return unpack_conv_cpu(p, shape, self.groups)
        return unpack_by_probes(lambda w: ops.pack_conv_weight(w, self.groups)[0], p, shape)

    def _update_relu6_bound(self):
        """quantize(6) with the output qparams, as the quantized ReLU6 clamps the codes."""
        from .._qfunctions import _quantize_value

        if not self._relu6:
            self._relu6_hi = None
            return
        scale, zero_point = self._buffers["scale"], self._buffers["zero_point"]
        codes = torch.zeros((), dtype=_STORAGE[self.dtype])
        self._relu6_hi = int(_quantize_value(QTensor._make(codes, scale, zero_point, None, self.qmin, self.qmax), 6.0))

    def forward(self, input, *, _tq_relu: bool = False):
        # (`input`: torch.nn's name, for calls with input=; _tq_relu: the ReLU after it in its
        # nn.Sequential, run in the epilogue: FusedReLUSequential)
        # (a KeyError of a buffer read: one that register_parametrization moved, refused by name)
        try:
            x = self._check_input(input, "convolution")
            repack_if_stale(self)
            data = x.data
            unbatched = self._unbatched(data, "conv")
            if unbatched:
                data = data.unsqueeze(0)
            b = self._buffers
            scale, zero_point = b["scale"], b["zero_point"]
            k, s, p, d = self._geometry
            if self._pad is not None:
                fmt = _CHANNELS_LAST.get(data.dim(), torch.contiguous_format)
                if self.padding_mode == "zeros":
                    zp = x.zero_point.float()  # codes minus the zero point are exact in float32
                    padded = F.pad(data.float() - zp, self._pad) + zp
                else:
                    padded = F.pad(data.float(), self._pad, self.padding_mode)
                data = padded.to(data.dtype).contiguous(memory_format=fmt)
            xs, xz = x.scale, x.zero_point
            wp, cs, ws, bias = b["_packed_weight"], b["_col_sums"], b["weight_scale"], b["bias"]
            groups = self.groups  # (of another type than int: torch.ops converts it or names it)
            f = (_fastcall.conv_int8 if _fastcall.usable_int8_layer(data, xs, xz, wp, cs, ws, bias, scale, zero_point)
                 and _fastcall.is_int64(groups) else ops.conv_int8)
            y = f(data, xs, xz, wp, cs, ws, bias, k, s, p, d, groups, scale, zero_point, self._relu or _tq_relu,
                  _STORAGE[self.dtype])
        except KeyError as e:
            refuse_parametrized(self, e)
            raise
        if self._relu6 and self._relu6_hi is not None and self._relu6_hi < self.qmax:
            y.clamp_(max=self._relu6_hi)
        if unbatched:
            y = y.squeeze(0)
        return QTensor._make(y, scale, zero_point, None, self.qmin, self.qmax)

    @classmethod
    def from_float(cls, mod, name: Optional[str] = None, use_precomputed_fake_quant: bool = False):
        """Quantizes a prepared (observed) float Conv, fused ConvReLU (torchquant's or
        torch.ao's) or QAT Conv / ConvReLU / ConvBn / ConvBnReLU (BatchNorm folded in)."""
        name = name or type(mod).__name__
        weight, bias, conv = _float_weight_bias(mod)
        w_scale, w_zp, w_range = _conv_weight_qparams(mod, weight, name)
        scale, zero_point, obs = _activation_qparams(mod, name)
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, bias is not None, conv.padding_mode, dtype=obs.dtype)
        w = weight.detach().float()
        q._set_int8(ops.quantize(w, w_scale, w_zp, 0, w_range[0], w_range[1], torch.int8), w_scale, w_zp, bias,
                    scale, zero_point)
        q = q.to(weight.device)
        if cls._relu and qat_conv.has_relu6(mod):
            q._relu6 = True
            q._update_relu6_bound()
        return q


def _float_weight_bias(mod):
    """(weight, bias, conv) of what convert quantizes: the conv's own, or with a QAT
    ConvBn's BatchNorm folded in."""
    if isinstance(mod, qat_conv._ConvBn):
        w, b = mod.folded_weight_bias()
        return w, b, mod
    conv, bn, _ = qat_conv._float_parts(mod)
    if bn is not None:  # a ConvBn fused for training but calibrated as it is: fold its running statistics
        from torch.nn.utils.fusion import fuse_conv_bn_weights

        w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight,
                                    bn.bias)
        return w, b, conv
    return conv.weight, conv.bias, conv


def _conv_weight_qparams(mod, weight, name):
    n = weight.shape[0]
    dev = weight.device
    if weight.numel() == 0:
        return torch.ones(n, device=dev), torch.zeros(n, dtype=torch.int32, device=dev), (-128, 127)
    wobs = getattr(mod, "weight_fake_quant", None)
    if wobs is None:
        qconfig = getattr(mod, "qconfig", None)
        if qconfig is None:
            raise RuntimeError(f"{name} has no qconfig: was the model passed through prepare()?")
        wobs = qconfig.weight()
        wobs.to(dev)
        wobs(weight.detach())
    else:
        # As torch.ao's convert: the QAT module's weight observer sees the final weight once more
        # (a ConvBn's folded weight), so the scales follow the last optimizer step.
        with torch.no_grad():
            wobs(weight.detach())
    _check_observes(wobs, name, "weight")
    _check_weight_axis(wobs, weight.dim(), name, "convolution")
    w_scale, w_zp = wobs.calculate_qparams()
    w_scale = w_scale.float().reshape(-1).to(dev)
    w_zp = w_zp.to(torch.int32).reshape(-1).to(dev)
    if bool((w_zp != 0).any()):
        raise ValueError(
            f"{name}: torchquant's int8 convolution needs symmetric weights (zero point 0), but the weight observer "
            f"{type(wobs).__name__} gave non-zero zero points; use qscheme=torch.per_channel_symmetric or "
            "torch.per_tensor_symmetric with dtype=torch.qint8")
    if w_scale.numel() == 1:
        w_scale, w_zp = w_scale.expand(n).contiguous(), w_zp.expand(n).contiguous()
    return w_scale, w_zp, _weight_range(wobs, name)


def _make(nsp, relu, name, doc):
    cls = type(name, (_ConvNd,), {"_NSP": nsp, "_relu": relu, "__doc__": doc, "__module__": "torchquant.nn.quantized"})
    return cls


Conv1d = _make(1, False, "Conv1d", "Static int8 Conv1d (torch.ao.nn.quantized.Conv1d).")
Conv2d = _make(2, False, "Conv2d", "Static int8 Conv2d (torch.ao.nn.quantized.Conv2d).")
Conv3d = _make(3, False, "Conv3d", "Static int8 Conv3d (torch.ao.nn.quantized.Conv3d).")
ConvReLU1d = _make(1, True, "ConvReLU1d", "Static int8 Conv1d with ReLU fused into the epilogue "
                   "(torch.ao.nn.intrinsic.quantized.ConvReLU1d).")
ConvReLU2d = _make(2, True, "ConvReLU2d", "Static int8 Conv2d with ReLU fused into the epilogue "
                   "(torch.ao.nn.intrinsic.quantized.ConvReLU2d).")
ConvReLU3d = _make(3, True, "ConvReLU3d", "Static int8 Conv3d with ReLU fused into the epilogue "
                   "(torch.ao.nn.intrinsic.quantized.ConvReLU3d).")
