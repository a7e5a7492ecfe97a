"""Quantized modules for CNNs besides the GEMM ones: FloatFunctional / QFunctional (add, mul,
cat with requantize), normalization and activation modules with torch.ao's names.

The elementwise ops run torchquant's int8 kernels (``torch.ops.torchquant.add`` ...). The
normalization and activation modules compute in float inside: dequantize, the float op,
quantize with the module's own output qparams (what their observers saw at calibration).
ReLU6 and Hardtanh keep their input's qparams and clamp the int8 codes (exact).
"""
import functools
import math
from typing import List, Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .._ops import ops
from ..qtensor import QTensor, _QRANGE
from ..observer import _apply_keeping_float32
from ._state_dict import qparams_repr, activation_qparams, qparam_load_pre_hook, register_activation_dtype_hook

__all__ = [
    "FloatFunctional", "QFunctional", "BNReLU2d", "BNReLU3d", "BatchNorm2d", "BatchNorm3d",
    "ReLU6", "Hardsigmoid", "Hardswish", "ELU", "LeakyReLU", "PReLU", "Sigmoid", "LookupActivation", "LayerNorm", "GroupNorm", "InstanceNorm1d",
    "InstanceNorm2d", "InstanceNorm3d", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout",
]


# ---------------------------------------------------------------- FloatFunctional
def _first_proxy(args, kwargs):
    """The first torch.fx Proxy among the arguments (in a list too, for cat), or None."""
    for a in list(args) + list(kwargs.values()):
        for t in a if isinstance(a, (list, tuple)) else (a,):
            if isinstance(t, torch.fx.Proxy):
                return t
    return None


def _fx_leaf_method(fn):
    """A FloatFunctional / QFunctional method that torch.fx records as one ``call_method`` on the
    module (as it records a leaf module's call) instead of tracing through it: what
    ``make_quantizable`` emits, and what a GraphModule's unpickling traces again."""
    name = fn.__name__

    @functools.wraps(fn)
    def method(self, *args, **kwargs):
        proxy = _first_proxy(args, kwargs)
        if proxy is not None:
            tracer = proxy.tracer
            try:
                path = tracer.path_of_module(self)
            except NameError:  # not a submodule of the traced root: traced through
                return fn(self, *args, **kwargs)
            module = tracer.create_proxy("get_attr", path, (), {})
            return tracer.create_proxy("call_method", name, (module,) + tuple(args), kwargs)
        return fn(self, *args, **kwargs)

    return method


class FloatFunctional(nn.Module):
    """Float elementwise ops whose output ``prepare`` observes (torch.ao.nn.quantized.FloatFunctional):
    call its methods instead of ``+``, ``*``, ``torch.cat`` so that ``convert`` can swap it for a
    :class:`QFunctional` with the observed qparams.

    >>> self.skip_add = torchquant.nn.quantized.FloatFunctional()
    >>> out = self.skip_add.add(x, identity)
    """

    def __init__(self):
        super().__init__()
        self.activation_post_process = nn.Identity()

    def forward(self, x):
        raise RuntimeError("FloatFunctional is not called directly: use its methods (add, mul, cat, ...)")

    @_fx_leaf_method
    def add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.activation_post_process(torch.add(x, y))

    @_fx_leaf_method
    def add_scalar(self, x: torch.Tensor, y: float) -> torch.Tensor:
        # Not observed, as torch.ao: the quantized version derives its qparams from x's.
        return torch.add(x, y)

    @_fx_leaf_method
    def mul(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.activation_post_process(torch.mul(x, y))

    @_fx_leaf_method
    def mul_scalar(self, x: torch.Tensor, y: float) -> torch.Tensor:
        return torch.mul(x, y)

    @_fx_leaf_method
    def cat(self, x: List[torch.Tensor], dim: int = 0) -> torch.Tensor:
        return self.activation_post_process(torch.cat(x, dim=dim))

    @_fx_leaf_method
    def add_relu(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.activation_post_process(F.relu(torch.add(x, y)))

    @_fx_leaf_method
    def matmul(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.activation_post_process(torch.matmul(x, y))


def _float_functional_types():
    """torchquant's FloatFunctional and torch.ao's (torchvision's quantizable models use the latter)."""
    types = [FloatFunctional]
    try:
        from torch.ao.nn.quantized import FloatFunctional as AoFloatFunctional
        types.append(AoFloatFunctional)
    except ImportError:  # a torch without torch.ao
        pass
    return tuple(types)


FLOAT_FUNCTIONAL_TYPES = _float_functional_types()


def _qparams_buffers(mod: nn.Module, scale, zero_point, dtype):
    storage = {torch.quint8: torch.uint8, torch.qint8: torch.int8, torch.uint8: torch.uint8,
               torch.int8: torch.int8}[dtype]
    qmin, qmax = _QRANGE[storage]
    scale, zero_point = activation_qparams(type(mod).__name__, scale, zero_point, qmin, qmax)
    mod.register_buffer("scale", scale)
    mod.register_buffer("zero_point", zero_point)
    mod.dtype = dtype
    mod._storage = storage
    mod.qmin, mod.qmax = qmin, qmax
    if qparam_load_pre_hook not in [getattr(h, "hook", h) for h in mod._load_state_dict_pre_hooks.values()]:
        mod._register_load_state_dict_pre_hook(qparam_load_pre_hook, with_module=True)
    register_activation_dtype_hook(mod)


def _observed_qparams(mod, what):
    obs = getattr(mod, "activation_post_process", None)
    if obs is None or isinstance(obs, nn.Identity):
        raise RuntimeError(f"{what} has no activation observer: was the model passed through prepare()?")
    scale, zero_point = obs.calculate_qparams()
    return scale.reshape(1).float(), zero_point.reshape(1).to(torch.int32), obs.dtype


def _device(mod):
    for t in list(mod.parameters()) + list(mod.buffers()):
        return t.device
    return None


class _QuantizedOutput(nn.Module):
    """Common part of the modules below: output qparams as buffers, float input quantized."""

    def _apply(self, fn, *args, **kwargs):
        # A cast of the model (.half(), .double(), .to(torch.bfloat16)) moves the float32 buffers
        # (output scale, norms' weight, bias and statistics) but keeps them float32, as the int8
        # Linear / Conv do: the outputs stay bit for bit those of the float32 buffers.
        return _apply_keeping_float32(self, super()._apply, fn, *args, **kwargs)

    def _out(self, data: torch.Tensor) -> QTensor:
        return QTensor._make(data, self.scale, self.zero_point, None, self.qmin, self.qmax)

    def _quantize(self, y: torch.Tensor) -> QTensor:
        # (a channels-last y gives channels-last codes: the op keeps a dense layout)
        return self._out(ops.quantize.default(y.float(), self.scale, self.zero_point, None, self.qmin, self.qmax,
                                              self._storage))

    def _as_qtensor(self, x) -> QTensor:
        """A float operand (from a module that stayed float) is quantized with this module's
        output qparams."""
        if isinstance(x, QTensor):
            if x.axis is not None:
                raise ValueError(f"{type(self).__name__} needs per-tensor quantized input, got a QTensor quantized "
                                 f"along axis {x.axis}")
            return x
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} takes QTensors (or float tensors), got {type(x).__name__}")
        return self._quantize(x)

    def extra_repr(self):
        return f"{qparams_repr(self.scale, self.zero_point)}, dtype={self.dtype}"


class QFunctional(_QuantizedOutput):
    """int8 elementwise ops with requantize to the calibrated output qparams
    (torch.ao.nn.quantized.QFunctional): what ``convert`` makes of a FloatFunctional.

    add / add_relu / mul / cat run torchquant's kernels (``docs/quantization.md``, "Elementwise
    ops"); add_scalar and mul_scalar derive their output qparams from the input's, as torch.ao's do;
    matmul multiplies the dequantized operands in float32 (torch.ao's quantized matmul).
    """

    def __init__(self, scale=1.0, zero_point=0, dtype=torch.quint8):
        super().__init__()
        _qparams_buffers(self, scale, zero_point, dtype)

    def forward(self, x):
        raise RuntimeError("QFunctional is not called directly: use its methods (add, mul, cat, ...)")

    def _binary(self, op, x, y, relu=False):
        self._check_calibrated()
        if not (isinstance(x, QTensor) and isinstance(y, QTensor)):
            # A float operand (from a part of the model that ran in float): the op in float, its
            # result quantized with the calibrated output qparams. (Quantizing the operand with
            # the output's qparams clipped it to the output's range: add_relu zeroed its negative
            # values before the add.)
            xf, yf = self._as_float(x), self._as_float(y)
            r = torch.mul(xf, yf) if op is ops.mul.default else torch.add(xf, yf)
            return self._quantize(F.relu(r) if relu else r)
        x, y = self._as_qtensor(x), self._as_qtensor(y)
        return self._out(op(x.data, x.scale, x.zero_point, y.data, y.scale, y.zero_point, self.scale,
                            self.zero_point, relu, self._storage))

    def _as_float(self, x) -> torch.Tensor:
        if isinstance(x, QTensor):
            return x.dequantize()
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} takes QTensors (or float tensors), got "
                            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
        return x

    @_fx_leaf_method
    def add(self, x, y) -> QTensor:
        return self._binary(ops.add.default, x, y)

    @_fx_leaf_method
    def add_relu(self, x, y) -> QTensor:
        return self._binary(ops.add.default, x, y, relu=True)

    @_fx_leaf_method
    def mul(self, x, y) -> QTensor:
        return self._binary(ops.mul.default, x, y)

    @_fx_leaf_method
    def cat(self, x, dim: int = 0) -> QTensor:
        self._check_calibrated()
        if not all(isinstance(t, QTensor) for t in x):  # a float input: as _binary's
            return self._quantize(torch.cat([self._as_float(t) for t in x], dim))
        xs = [self._as_qtensor(t) for t in x]
        return self._out(ops.cat.default([t.data for t in xs], [t.scale for t in xs], [t.zero_point for t in xs],
                                         dim, self.scale, self.zero_point, self._storage))

    @_fx_leaf_method
    def add_scalar(self, x, c: float) -> QTensor:
        """x + c. Output qparams: x's scale with the zero point moved by round(c / scale) when it
        stays in range (then the codes are unchanged), else a range covering x's shifted by c.
        A float x gives the float x + c (the op is not observed: no qparams to quantize it with)."""
        if not isinstance(x, QTensor):
            return torch.add(self._as_float(x), c)
        x = self._as_qtensor(x)
        if not math.isfinite(c):
            raise ValueError(f"add_scalar: argument 'c' must be finite, got {c}")
        lo, hi = _QRANGE[x.data.dtype]
        scale, zp = _add_scalar_qparams(x, float(c), lo, hi)
        data = ops.add_scalar.default(x.data, x.scale, x.zero_point, float(c), scale, zp, x.data.dtype)
        return QTensor._make(data, scale, zp, None, lo, hi)

    @_fx_leaf_method
    def mul_scalar(self, x, c: float) -> QTensor:
        """x * c, as torch.ao's: output scale scale * |c| (float64, rounded to float32) with the
        codes unchanged for c > 0, or mirrored with the zero point (lo + hi - code) for c < 0; for
        c == 0, scale 1 and zero point 0 (all codes 0). The codes are exact, whatever the scale
        (a tiny c gives a tiny scale, not saturated codes); a c whose output scale is 0 or inf in
        float32 is a ValueError. A float x gives the float x * c."""
        if not isinstance(x, QTensor):
            return torch.mul(self._as_float(x), c)
        x = self._as_qtensor(x)
        if not math.isfinite(c):
            raise ValueError(f"mul_scalar: argument 'c' must be finite, got {c}")
        c = float(c)
        lo, hi = _QRANGE[x.data.dtype]
        dev = x.data.device
        if c == 0:
            scale, zp = torch.ones(1, device=dev), torch.zeros(1, dtype=torch.int32, device=dev)
            return QTensor._make(torch.zeros_like(x.data), scale, zp, None, lo, hi)
        # Tensor arithmetic on the qparams' device (no host read, so torch.compile and torch.export
        # trace it).
        scale = (x.scale.reshape(1).double() * abs(c)).float()
        z = x.zero_point.reshape(1).to(torch.int32)
        zp, data = (z, x.data.clone()) if c > 0 else ((lo + hi) - z, (lo + hi) - x.data)
        # The output scale leaves float32's range (0 or inf) only for a c far from 1 (or a scale
        # near float32's limits): checked on the host on the CPU, and on a device for such a c.
        if not torch.compiler.is_compiling() and (dev.type == "cpu" or not 2.0 ** -32 <= abs(c) <= 2.0 ** 32):
            if not bool(torch.isfinite(scale).all() and (scale > 0).all()):
                raise ValueError(f"mul_scalar: argument 'c' = {c} gives the output scale "
                                 f"{float(x.scale.reshape(-1)[0])} * |c| = {float(scale[0])} in float32, which is "
                                 "not a valid scale (it must be > 0 and finite)")
        return QTensor._make(data, scale, zp, None, lo, hi)

    @_fx_leaf_method
    def matmul(self, x, y) -> QTensor:
        """torch.matmul as torch.ao's quantized matmul: the operands dequantized, multiplied in
        float32, the result quantized with the calibrated output qparams. A float operand (from a
        part of the model that ran in float) takes part as it is."""
        self._check_calibrated()
        xf, yf = (self._as_qtensor(t).dequantize() if isinstance(t, QTensor) else self._as_float(t).float()
                  for t in (x, y))
        return self._quantize(torch.matmul(xf, yf))

    _uncalibrated: Optional[str] = None

    def _check_calibrated(self):
        if self._uncalibrated is not None:
            raise RuntimeError(f"QFunctional '{self._uncalibrated}': its FloatFunctional was never called during "
                               "calibration, so it has no output qparams; run data through that path before convert")

    @classmethod
    def from_float(cls, mod, name: Optional[str] = None):
        """The QFunctional for a prepared FloatFunctional. One that calibration never called
        (torchvision's MobileNetV2 holds a skip_add in blocks without a skip connection) converts
        too, and raises if it is ever called."""
        name = name or type(mod).__name__
        try:
            scale, zero_point, dtype = _observed_qparams(mod, name)
        except RuntimeError:
            obs = getattr(mod, "activation_post_process", None)
            if obs is None or isinstance(obs, nn.Identity):
                raise
            q = cls(1.0, 0, obs.dtype)
            q._uncalibrated = name
            return q
        q = cls(scale, zero_point, dtype)
        dev = zero_point.device
        return q.to(dev)


# ---------------------------------------------------------------- float-computing modules
class _FloatInside(_QuantizedOutput):
    """dequantize -> the float op -> quantize with the module's output qparams."""

    def _float_op(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, input):  # (torch.nn's name, for calls with input=)
        x = input
        xf = x.dequantize() if isinstance(x, QTensor) else x  # (channels-last stays channels-last)
        if xf.dtype == torch.float64:
            # a float input from a float64 part of the model: the module's float32 parameters
            # (LayerNorm's weight) take float32; its output is quantized either way
            xf = xf.float()
        return self._quantize(self._float_op(xf))


def _settings(m: nn.Module) -> tuple:
    """((name, value), ...) of a module's plain settings (numbers, strings: ELU's alpha, GELU's
    approximate), the names found once per module (then a read of each per call)."""
    d = m.__dict__
    names = d.get("_tq_setting_names")
    if names is None:
        names = tuple(sorted(k for k, v in d.items()
                             if not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float, str))))
        d["_tq_setting_names"] = names
    return tuple((k, d.get(k)) for k in names)


class _LookupInside(_FloatInside):
    """An elementwise float function on a per-tensor QTensor: one table lookup per element
    (``torchquant::lookup_table``), the table being the function of each of the 256 codes,
    ``quantize(float_op(dequantize(code)))`` with the input's qparams and the module's output
    ones: the dequantize -> float op -> quantize of _FloatInside, element for element, without the
    float tensor. The table is built once per input qparams (the producing module's buffers, so
    once per model in practice) and rebuilt when they or the output qparams change."""

    _table_cache = None  # (qparam tensors, key, table): one attribute, replaced whole (threads see one or the other)

    def forward(self, input):
        x = input
        if isinstance(x, QTensor) and x.axis is None:
            return self._out(ops.lookup_table.default(x.data, self._table_for(x)))
        return super().forward(x)

    def _build_table(self, x: QTensor) -> torch.Tensor:
        lo = _QRANGE[x.data.dtype][0]
        codes = torch.arange(lo, lo + 256, dtype=torch.int16, device=x.data.device).to(x.data.dtype)
        xf = ops.dequantize.default(codes, x.scale, x.zero_point, None)
        y = self._float_op(xf)
        return ops.quantize.default(y.float(), self.scale, self.zero_point, None, self.qmin, self.qmax,
                                    self._storage)

    def _fn_key(self) -> tuple:
        """The float function's own settings (alpha, negative_slope, ...): a change rebuilds the table."""
        return _settings(self)

    def _table_for(self, x: QTensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # traced: the table is part of the graph
            return self._build_table(x)
        xs, xz, s, z = x.scale, x.zero_point, self.scale, self.zero_point
        # The qparams are tensors (reading their values would synchronize a GPU, and slow the
        # small calls this table is for): a table is reused while the same tensors hold the same
        # data, unchanged in place. A write through .data bumps no version and is not seen: reset
        # the table with ``_table_cache = None`` after one.
        try:
            key = (xs._version, xs.data_ptr(), xz._version, xz.data_ptr(), s._version, s.data_ptr(), z._version,
                   z.data_ptr(), x.data.dtype, self._fn_key())
        except RuntimeError:  # inference tensors have no version counter to tell a change by
            return self._build_table(x)
        cache = self._table_cache
        if cache is not None:
            ts, old, table = cache
            if ts[0] is xs and ts[1] is xz and ts[2] is s and ts[3] is z and old == key:
                return table
        table = self._build_table(x)
        self._table_cache = ((xs, xz, s, z), key, table)
        return table

    def __getstate__(self):  # the cache holds other modules' tensors: not pickled / deep-copied
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state.pop("_table_cache", None)
        return state


def _add_scalar_qparams(x: QTensor, c: float, lo: int, hi: int):
    """QFunctional.add_scalar's output qparams, as tensor arithmetic on the qparams' device (no
    host read: torch.compile and torch.export trace it): x's scale with the zero point moved by
    round(c / scale) (float64, half to even) when it stays in [lo, hi], else choose_qparams over
    x's range shifted by c (float64 ends rounded to float32). Both candidates are computed and
    one is selected."""
    s = x.scale.reshape(1).float()
    zx = x.zero_point.reshape(1).double()
    z = zx - torch.round(c / s.double())  # Python's round(c / s): float64, half to even
    inside = (z >= lo) & (z <= hi)
    mn = ((lo - zx) * s.double() + c).float()
    mx = ((hi - zx) * s.double() + c).float()
    cs, cz = ops.choose_qparams(mn, mx, lo, hi)
    scale = torch.where(inside, s, cs.reshape(1).float())
    zp = torch.where(inside, z.clamp(lo, hi).to(torch.int32), cz.reshape(1).to(torch.int32))
    return scale, zp


def _check_factory_dtype(cls, dtype):
    # torch.ao's modules take device / dtype factory arguments; the buffers here are float32
    if dtype is not None and dtype != torch.float32:
        raise ValueError(f"{cls.__name__}: argument 'dtype' (the float buffers' dtype) must be None or torch.float32, "
                         f"got {dtype}; the activations' int8 dtype comes with convert (or set it with "
                         f"load_state_dict of a converted model)")


def _from_float_with(cls, mod, name, build):
    scale, zero_point, dtype = _observed_qparams(mod, name or type(mod).__name__)
    q = build()
    _qparams_buffers(q, scale, zero_point, dtype)
    dev = _device(mod)
    return q.to(dev) if dev is not None else q


class BatchNorm2d(_FloatInside):
    """Quantized BatchNorm2d (torch.ao.nn.quantized.BatchNorm2d): the running statistics' affine
    map in float, requantized to the calibrated output qparams."""

    _dims = 4
    _relu = False

    def __init__(self, num_features, eps=1e-5, momentum=0.1, device=None, dtype=None):
        super().__init__()
        _check_factory_dtype(type(self), dtype)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        for n, v in (("weight", torch.ones(num_features, device=device)),
                     ("bias", torch.zeros(num_features, device=device)),
                     ("running_mean", torch.zeros(num_features, device=device)),
                     ("running_var", torch.ones(num_features, device=device))):
            self.register_buffer(n, v)
        # output qparams (torch.ao's default 1.0 / 0 before a load_state_dict or convert)
        _qparams_buffers(self, 1.0, 0, torch.quint8)
        if device is not None:
            self.to(device)

    def _float_op(self, x):
        if x.dim() != self._dims:
            raise ValueError(f"{type(self).__name__} expects a {self._dims}-D input, got {x.dim()}-D")
        y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return F.relu(y) if self._relu else y

    @classmethod
    def from_float(cls, mod, name=None):
        bn = mod[0] if isinstance(mod, nn.Sequential) else mod

        def build():
            # (torchvision's FrozenBatchNorm2d has neither num_features nor momentum)
            q = cls(getattr(bn, "num_features", bn.running_mean.numel()), bn.eps, getattr(bn, "momentum", 0.1))
            for n in ("weight", "bias"):
                t = getattr(bn, n)
                if t is not None:
                    getattr(q, n).copy_(t.detach().float())
            for n in ("running_mean", "running_var"):
                t = getattr(bn, n)
                if t is not None:
                    getattr(q, n).copy_(t.detach().float())
            return q

        return _from_float_with(cls, mod, name, build)


class BatchNorm3d(BatchNorm2d):
    """Quantized BatchNorm3d (torch.ao.nn.quantized.BatchNorm3d)."""

    _dims = 5


class BNReLU2d(BatchNorm2d):
    """Quantized BatchNorm2d + ReLU (torch.ao.nn.intrinsic.quantized.BNReLU2d)."""

    _relu = True


class BNReLU3d(BatchNorm3d):
    """Quantized BatchNorm3d + ReLU (torch.ao.nn.intrinsic.quantized.BNReLU3d)."""

    _relu = True


class Hardsigmoid(nn.Hardsigmoid):
    """nn.Hardsigmoid on a QTensor: ``F.hardsigmoid``'s int8 meaning (torch.ao's fixed output
    qparams, scale 1/256), called as a Python function, so that torch.compile traces it (it
    sends ``F.hardsigmoid`` to ``__torch_function__`` only for the functions on torch's list of
    overridable ones, which ``F.hardsigmoid`` is not: the float module broke the graph there).
    The result is a new QTensor whatever ``inplace`` is, as torch.ao's: written into the input,
    it would keep the input's qparams instead of the fixed ones QAT trained for."""

    def forward(self, input):
        x = input
        if isinstance(x, QTensor):
            return QTensor.__torch_function__(F.hardsigmoid, (QTensor,), (x,), {})
        return super().forward(x)

    @classmethod
    def from_float(cls, mod, name=None):
        return cls(mod.inplace)


class ReLU6(nn.ReLU6):
    """ReLU6 on a QTensor: the codes clamped to [zero_point, quantize(6)], qparams kept (exact;
    torch.ao.nn.quantized.ReLU6)."""

    def forward(self, input):
        x = input
        return F.relu6(x, inplace=self.inplace) if isinstance(x, QTensor) else super().forward(x)

    @classmethod
    def from_float(cls, mod, name=None):
        return cls(mod.inplace)


class Hardswish(_LookupInside):
    """Quantized Hardswish (torch.ao.nn.quantized.Hardswish)."""

    def __init__(self, scale=1.0, zero_point=0, device=None, dtype=None):
        super().__init__()
        _check_factory_dtype(type(self), dtype)
        _qparams_buffers(self, scale, zero_point, torch.quint8)
        if device is not None:
            self.to(device)

    def _float_op(self, x):
        return F.hardswish(x)

    @classmethod
    def from_float(cls, mod, name=None):
        return _from_float_with(cls, mod, name, cls)


class ELU(_LookupInside):
    """Quantized ELU (torch.ao.nn.quantized.ELU)."""

    def __init__(self, scale=1.0, zero_point=0, alpha=1.0):
        super().__init__()
        self.alpha = alpha
        _qparams_buffers(self, scale, zero_point, torch.quint8)

    def _float_op(self, x):
        return F.elu(x, self.alpha)

    @classmethod
    def from_float(cls, mod, name=None):
        return _from_float_with(cls, mod, name, lambda: cls(alpha=mod.alpha))


class LeakyReLU(_LookupInside):
    """Quantized LeakyReLU (torch.ao.nn.quantized.LeakyReLU)."""

    def __init__(self, scale=1.0, zero_point=0, negative_slope=0.01, inplace=False, device=None, dtype=None):
        super().__init__()
        _check_factory_dtype(type(self), dtype)
        self.negative_slope = negative_slope
        self.inplace = inplace  # (torch.ao's argument; the output is a new QTensor in any case)
        _qparams_buffers(self, scale, zero_point, torch.quint8)
        if device is not None:
            self.to(device)

    def _float_op(self, x):
        return F.leaky_relu(x, self.negative_slope)

    @classmethod
    def from_float(cls, mod, name=None):
        return _from_float_with(cls, mod, name, lambda: cls(negative_slope=mod.negative_slope))


class PReLU(_LookupInside):
    """Quantized PReLU (torch.ao.nn.quantized.PReLU): ``prelu`` of the dequantized input with the
    float module's slopes (``weight``, float32, one or one per channel), requantized to the
    calibrated output qparams. One slope: one table lookup per element, as the other
    activations; one per channel (``num_parameters`` = channels, dimension 1 of the input, or 0
    of a 1-d one): computed in float, element for element the same function. Beyond torch.ao,
    whose int8 PReLU rounds the slopes to a quint8 per-tensor tensor (negative slopes to 0 under
    a symmetric weight observer) and takes per-tensor weight qparams only.

    >>> q = PReLU(0.02, 64, num_parameters=16)   # convert makes these from nn.PReLU
    >>> q.set_weight(torch.full((16,), 0.25))
    """

    def __init__(self, output_scale=1.0, output_zero_point=0, num_parameters: int = 1, dtype=torch.quint8):
        super().__init__()
        if int(num_parameters) < 1:
            raise ValueError(f"PReLU: argument 'num_parameters' must be >= 1, got {num_parameters}")
        self.num_parameters = int(num_parameters)
        _qparams_buffers(self, output_scale, output_zero_point, dtype)
        self.register_buffer("weight", torch.full((self.num_parameters,), 0.25))

    def set_weight(self, w: torch.Tensor) -> None:
        """The slopes: a float tensor of ``num_parameters`` values (a torch quantized tensor, as
        torch.ao's ``set_weight`` takes, is dequantized)."""
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"PReLU.set_weight: argument 'w' must be a tensor, got {type(w).__name__}")
        if w.is_quantized:
            w = w.dequantize()
        if not w.is_floating_point() or w.numel() != self.num_parameters:
            raise ValueError(f"PReLU.set_weight: argument 'w' must be a float tensor of {self.num_parameters} "
                             f"value(s) (num_parameters), got dtype {w.dtype} with {w.numel()} values")
        self.weight = w.detach().reshape(self.num_parameters).to(device=self.scale.device, dtype=torch.float32).clone()
        self._table_cache = None

    def _float_op(self, x):
        w = self.weight.to(x.dtype)
        if self.num_parameters == 1 or x.dim() < 2 or x.shape[1] != self.num_parameters:
            return F.prelu(x, w)  # (torch's error for a wrong channel count)
        # F.prelu's function, elementwise: the output keeps the input's layout (channels-last
        # between convolutions), where F.prelu's per-channel form returns it contiguous.
        return torch.where(x > 0, x, x * w.reshape([1, -1] + [1] * (x.dim() - 2)))

    def _fn_key(self) -> tuple:
        w = self.weight  # one slope here (the table path)
        return _settings(self) + (w._version, w.data_ptr())

    def forward(self, input):
        if self.num_parameters == 1:
            return super().forward(input)
        return _FloatInside.forward(self, input)

    @classmethod
    def from_float(cls, mod, name=None):
        def build():
            q = cls(num_parameters=mod.num_parameters)
            q.weight = mod.weight.detach().float().reshape(mod.num_parameters).clone()
            return q

        return _from_float_with(cls, mod, name, build)

    def extra_repr(self):
        return f"num_parameters={self.num_parameters}, " + super().extra_repr()


class Sigmoid(_LookupInside):
    """Quantized Sigmoid (torch.ao.nn.quantized.Sigmoid), with calibrated output qparams."""

    def __init__(self, output_scale=1.0, output_zero_point=0):
        super().__init__()
        _qparams_buffers(self, output_scale, output_zero_point, torch.quint8)

    def _float_op(self, x):
        return torch.sigmoid(x)

    @classmethod
    def from_float(cls, mod, name=None):
        return _from_float_with(cls, mod, name, cls)


class LookupActivation(_LookupInside):
    """Any elementwise activation module with no int8 kernel of its own (SiLU, GELU, Mish, Tanh,
    Softplus, ...) on int8 codes, beyond torch.ao (which leaves them in float): the float module's
    function of each of the 256 input codes, requantized to the calibrated output qparams, as one
    table lookup per element (``torchquant::lookup_table``). Holds the float module as ``fn``; a
    float input gives ``fn``'s float output.

    >>> act = LookupActivation(nn.SiLU(), scale=0.02, zero_point=14)   # convert makes these
    """

    def __init__(self, fn: nn.Module, scale=1.0, zero_point=0, dtype=torch.quint8):
        super().__init__()
        if not isinstance(fn, nn.Module):
            raise TypeError(f"LookupActivation: argument 'fn' must be the float activation module (nn.Module), got "
                            f"{type(fn).__name__}")
        self.fn = fn
        _qparams_buffers(self, scale, zero_point, dtype)

    def _float_op(self, x):
        return self.fn(x)

    def _fn_key(self) -> tuple:
        # The function module's own plain settings (GELU's approximate, Softplus's beta): what the
        # elementwise activations this module is made for hold. A setting kept in a tensor or a
        # child module is not followed: rebuild the table with ``_table_cache = None``.
        return (id(self.fn),) + _settings(self.fn)

    def forward(self, input):
        # A float input (the module sits in a float part of the model: before the QuantStub, or
        # after a module that ran in float) gives the float function's float output, as the float
        # fallback it replaces did.
        if not isinstance(input, QTensor):
            return self.fn(input)
        return super().forward(input)

    @classmethod
    def from_float(cls, mod, name=None):
        import copy

        fn = copy.deepcopy(mod)
        for n in ("activation_post_process",):
            if n in fn._modules:
                del fn._modules[n]
        fn._forward_hooks.clear()
        fn._forward_pre_hooks.clear()
        return _from_float_with(cls, mod, name, lambda: cls(fn))

    def extra_repr(self):
        return f"{type(self.fn).__name__}, " + super().extra_repr()


# Elementwise activation modules that convert to LookupActivation (each output element a
# function of the same input element alone; no parameters).
LOOKUP_ACTIVATIONS = (nn.SiLU, nn.GELU, nn.Mish, nn.Softplus, nn.Tanh, nn.CELU, nn.SELU, nn.Softsign, nn.LogSigmoid,
                      nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.Threshold)


class _AffineNorm(_FloatInside):
    def _init_affine(self, shape, affine, weight, bias, scale, zero_point, device, dtype):
        """torch.ao's constructor arguments: the given weight / bias (or ones / zeros when
        affine and none is given; none when not affine) and the output qparams."""
        _check_factory_dtype(type(self), dtype)
        for n, given, fill in (("weight", weight, torch.ones), ("bias", bias, torch.zeros)):
            if given is not None:
                if not isinstance(given, torch.Tensor) or tuple(given.shape) != tuple(shape):
                    got = tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__
                    raise ValueError(f"{type(self).__name__}: argument '{n}' must be a tensor of shape {tuple(shape)}, "
                                     f"got {got}")
                self.register_buffer(n, given.detach().float().clone())
            else:
                self.register_buffer(n, fill(shape) if affine else None)
        _qparams_buffers(self, scale, zero_point, torch.quint8)
        if device is not None:
            self.to(device)

    def _copy_affine(self, mod):
        for n in ("weight", "bias"):
            t = getattr(mod, n, None)
            if t is not None:
                self.register_buffer(n, t.detach().float().clone())
            else:
                self.register_buffer(n, None)
        return self


class LayerNorm(_AffineNorm):
    """Quantized LayerNorm (torch.ao.nn.quantized.LayerNorm)."""

    def __init__(self, normalized_shape, weight=None, bias=None, scale=1.0, zero_point=0, eps=1e-5,
                 elementwise_affine=True, device=None, dtype=None):
        super().__init__()
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape, self.eps = tuple(normalized_shape), eps
        self._init_affine(self.normalized_shape, elementwise_affine, weight, bias, scale, zero_point, device, dtype)

    def _float_op(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    @classmethod
    def from_float(cls, mod, name=None):
        return _from_float_with(cls, mod, name, lambda: cls(mod.normalized_shape, eps=mod.eps)._copy_affine(mod))


class GroupNorm(_AffineNorm):
    """Quantized GroupNorm (torch.ao.nn.quantized.GroupNorm)."""

    def __init__(self, num_groups, num_channels, weight=None, bias=None, scale=1.0, zero_point=0, eps=1e-5,
                 affine=True, device=None, dtype=None):
        super().__init__()
        try:
            bad = num_groups <= 0 or num_channels % num_groups != 0
        except TypeError:
            bad = True
        if bad:
            raise ValueError(f"argument 'num_groups' of GroupNorm must be a positive divisor of num_channels "
                             f"({num_channels}), got {num_groups!r}")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self._init_affine((num_channels,), affine, weight, bias, scale, zero_point, device, dtype)

    def _float_op(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, " + super().extra_repr()

    @classmethod
    def from_float(cls, mod, name=None):
        return _from_float_with(cls, mod, name, lambda: cls(mod.num_groups, mod.num_channels, eps=mod.eps)._copy_affine(mod))


class InstanceNorm1d(_AffineNorm):
    """Quantized InstanceNorm1d (torch.ao.nn.quantized.InstanceNorm1d); uses the input's own
    statistics (running statistics, if the float module tracked them, as the float module in eval)."""

    def __init__(self, num_features, weight=None, bias=None, scale=1.0, zero_point=0, eps=1e-5, momentum=0.1,
                 affine=False, track_running_stats=False, device=None, dtype=None):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.register_buffer("running_mean", torch.zeros(num_features) if track_running_stats else None)
        self.register_buffer("running_var", torch.ones(num_features) if track_running_stats else None)
        self._init_affine((num_features,), affine or weight is not None, weight, bias, scale, zero_point, device,
                          dtype)

    _NO_BATCH_DIM = 2  # an unbatched input's dimensions: [C, L]

    def _float_op(self, x):
        nb = self._NO_BATCH_DIM
        if x.dim() not in (nb, nb + 1):  # the float module's check and message
            raise ValueError(f"expected {nb}D or {nb + 1}D input (got {x.dim()}D input)")
        if x.dim() == nb:  # unbatched, as the float module takes it (instance_norm reads dim 0 as the batch)
            return self._float_op(x.unsqueeze(0)).squeeze(0)
        use_input_stats = self.running_mean is None
        return F.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias, use_input_stats,
                               0.0, self.eps)

    @classmethod
    def from_float(cls, mod, name=None):
        def build():
            q = cls(mod.num_features, eps=mod.eps)._copy_affine(mod)
            if mod.track_running_stats and mod.running_mean is not None:
                q.running_mean = mod.running_mean.detach().float().clone()
                q.running_var = mod.running_var.detach().float().clone()
            return q

        return _from_float_with(cls, mod, name, build)


class InstanceNorm2d(InstanceNorm1d):
    """Quantized InstanceNorm2d (torch.ao.nn.quantized.InstanceNorm2d)."""

    _NO_BATCH_DIM = 3


class InstanceNorm3d(InstanceNorm1d):
    """Quantized InstanceNorm3d (torch.ao.nn.quantized.InstanceNorm3d)."""

    _NO_BATCH_DIM = 4


class _QTensorPassthroughDropout:
    """A dropout module after convert: a QTensor passes through unchanged (converted models run
    inference), as through :class:`torchquant.nn.quantized.Dropout`; a float tensor gets the float
    module's dropout."""

    def forward(self, input):
        return input if isinstance(input, QTensor) else super().forward(input)

    @classmethod
    def from_float(cls, mod, name=None):
        return cls(mod.p, mod.inplace)


class Dropout1d(_QTensorPassthroughDropout, nn.Dropout1d):
    """nn.Dropout1d after convert: a QTensor passes through unchanged."""


class Dropout2d(_QTensorPassthroughDropout, nn.Dropout2d):
    """nn.Dropout2d after convert: a QTensor passes through unchanged."""


class Dropout3d(_QTensorPassthroughDropout, nn.Dropout3d):
    """nn.Dropout3d after convert: a QTensor passes through unchanged."""


class AlphaDropout(_QTensorPassthroughDropout, nn.AlphaDropout):
    """nn.AlphaDropout after convert: a QTensor passes through unchanged."""


class FeatureAlphaDropout(_QTensorPassthroughDropout, nn.FeatureAlphaDropout):
    """nn.FeatureAlphaDropout after convert: a QTensor passes through unchanged."""


# float dropout type -> its converted module (no observer: the identity in inference)
DROPOUTS = {nn.Dropout1d: Dropout1d, nn.Dropout2d: Dropout2d, nn.Dropout3d: Dropout3d, nn.AlphaDropout: AlphaDropout,
            nn.FeatureAlphaDropout: FeatureAlphaDropout}

# Float modules that run on QTensors as they are: their forward calls torch functions that
# QTensor answers in int8 with the input's qparams (python/torchquant/_qfunctions.py), so
# prepare gives them no observer and convert leaves them in place. The padding modules call
# F.pad (a constant pad is the code of its value in the input's qparams: 0 is the zero point;
# reflect / replicate / circular copy codes), PixelShuffle / PixelUnshuffle / ChannelShuffle
# their functional forms and Unflatten ``unflatten``: all exact on the codes.
_PADS = tuple(getattr(nn, f"{kind}Pad{d}d") for kind in ("Zero", "Constant", "Reflection", "Replication", "Circular")
              for d in (1, 2, 3) if hasattr(nn, f"{kind}Pad{d}d"))
QTENSOR_NATIVE = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                  nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Upsample, nn.UpsamplingNearest2d, nn.Hardsigmoid, nn.Hardtanh,
                  nn.Identity) + _PADS + (nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle, nn.Unflatten)
