"""int8 modules that ``convert`` and ``quantize_dynamic`` swap in.

They hold plain tensors only (int8 weight, float32 scales, int32 zero points, float bias), so
``state_dict()`` loads with ``torch.load(..., weights_only=True)``. The kernel's packed weight is a
non-persistent buffer, rebuilt for the device whenever the module moves (``.to()``) or loads a
state dict; a module pickled whole (``torch.save(model)``) and loaded onto another device
(``torch.load(..., map_location=...)``) rebuilds it for that device when unpickled.

Their buffers cannot be parametrized (``torch.nn.utils.parametrize.register_parametrization``):
the kernels read them, and the layout packed from them, as they are. A call (or a move) of a
module with a parametrized buffer is a TypeError naming it (torch.ao's int8 modules refuse one at
registration).
"""
from typing import Optional

import torch
from torch.compiler import is_compiling as _is_compiling
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import nn
from torch.nn.modules.module import (_global_backward_hooks, _global_backward_pre_hooks, _global_forward_hooks,
                                     _global_forward_pre_hooks)

from .. import _fastcall
from .._ops import ops, packed_weight_shape
from ..observer import _PER_CHANNEL, _apply_keeping_float32, _int_arg
from ..qtensor import _QDTYPES as _QDTYPE_OF, QTensor, _warn_once_on
from ._input_grad import InputGrad, needs_input_grad
from ._compact import CompactWeight, _rebuild_of, expanded, portable_qweight, unpack_linear_cpu
from ._state_dict import (qparams_repr, OutputDtype, activation_dtype_errors, activation_qparams, integer_load_errors, note_packed,
                          own_loaded_qparams, qparam_load_errors, qparam_load_pre_hook, refuse_parametrized,
                          register_activation_dtype_hook, renote_packed, repack_for_copy, repack_if_stale)
from . import intrinsic, qat

__all__ = ["Quantize", "DeQuantize", "Linear", "LinearReLU", "DynamicLinear", "ReLU", "Dropout", "StochasticDepth",
           "Flatten", "FusedReLUSequential"]

_STORAGE = {torch.quint8: torch.uint8, torch.qint8: torch.int8, torch.uint8: torch.uint8, torch.int8: torch.int8}


def _storage(dtype) -> torch.dtype:
    try:
        return _STORAGE[dtype]
    except KeyError:
        raise ValueError(f"torchquant's int8 modules support torch.quint8 and torch.qint8 activations, got {dtype}") from None


def _activation_qparams(mod, what: str):
    obs = getattr(mod, "activation_post_process", None)
    if obs is None:
        raise RuntimeError(f"{what} has no activation observer: was the model passed through prepare()?")
    _check_observes(obs, what, "activation")
    scale, zero_point = obs.calculate_qparams()
    return scale.reshape(1).float(), zero_point.reshape(1).to(torch.int32), obs


def _check_observes(obs, what: str, role: str) -> None:
    """An observer with no qparams to give (nn.Identity: torch.ao's weight-only / activation-only
    QAT qconfigs) is named: the model trains with them, but int8 needs both qparams."""
    if not callable(getattr(obs, "calculate_qparams", None)):
        raise RuntimeError(f"{what}: its qconfig's {role} is {type(obs).__name__}, which observes nothing (torch.ao's "
                           f"weight-only / activation-only QAT qconfigs): such a model trains with fake-quantized "
                           f"values but cannot be converted to int8; give the qconfig an {role} observer, or use "
                           f"quantize_dynamic / quantize_weight_only for weight-only int8")


class Quantize(nn.Module):
    """float -> QTensor with calibrated per-tensor qparams (what QuantStub becomes).

    >>> q = Quantize(torch.tensor([0.02]), torch.tensor([128]), torch.quint8)(torch.randn(2, 3))
    """

    def __init__(self, scale, zero_point, dtype=torch.quint8):
        super().__init__()
        info = torch.iinfo(_storage(dtype))
        scale, zero_point = activation_qparams(type(self).__name__, scale, zero_point, info.min, info.max)
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero_point)
        self.dtype = dtype
        self.qmin, self.qmax = info.min, info.max
        self._register_load_state_dict_pre_hook(qparam_load_pre_hook, with_module=True)
        register_activation_dtype_hook(self)

    def _apply(self, fn, *args, **kwargs):
        # As Linear's: the scale stays float32 under a dtype cast of the model.
        return _apply_keeping_float32(self, super()._apply, fn, *args, **kwargs)

    def forward(self, x):
        if isinstance(x, QTensor):
            return x
        b = self._buffers
        try:
            scale, zero_point = b["scale"], b["zero_point"]
        except KeyError as e:  # (a parametrized buffer)
            refuse_parametrized(self, e)
            raise
        if _fastcall.usable(x, scale, zero_point):
            data = _fastcall.quantize(x, scale, zero_point, None, self.qmin, self.qmax, _STORAGE[self.dtype])
        else:
            data = ops.quantize.default(x, scale, zero_point, None, self.qmin, self.qmax, _STORAGE[self.dtype])
        return QTensor._make(data, scale, zero_point, None, self.qmin, self.qmax)

    @classmethod
    def from_float(cls, mod, name: str = "QuantStub"):
        scale, zero_point, obs = _activation_qparams(mod, name)
        return cls(scale, zero_point, obs.dtype)

    def extra_repr(self):
        return f"{qparams_repr(self.scale, self.zero_point)}, dtype={self.dtype}"


class DeQuantize(OutputDtype, nn.Module):
    """QTensor -> float (what DeQuantStub becomes); float input passes through. A container of
    outputs (a segmentation model's ``{'out': ..., 'aux': ...}``, a tuple of feature maps) has
    every QTensor in it dequantized, the container's type kept.

    ``output_dtype``: float32 (None), or the float dtype of the model it belongs to (``convert``
    gives it the dtype of a float16 / bfloat16 / float64 model's parameters), so that the float
    modules after it get their dtype (:class:`OutputDtype`)."""

    def __init__(self, output_dtype: Optional[torch.dtype] = None):
        super().__init__()
        if output_dtype is not None and (not isinstance(output_dtype, torch.dtype) or not output_dtype.is_floating_point):
            raise ValueError(f"argument 'output_dtype' must be a floating-point torch.dtype or None, got {output_dtype!r}")
        self._init_output_dtype(output_dtype)

    def __setstate__(self, state):
        # Pickled before the dtype was a buffer: no buffer (float32), or an output_dtype attribute.
        old = state.pop("output_dtype", None)
        super().__setstate__(state)
        self._restore_output_dtype(old)

    def _dequantize(self, q: QTensor) -> torch.Tensor:
        return self._to_output_dtype(q.dequantize())

    def forward(self, x):
        if isinstance(x, QTensor):
            return self._dequantize(x)
        if isinstance(x, (dict, list, tuple)):
            return pytree.tree_map_only(QTensor, self._dequantize, x, is_leaf=lambda v: isinstance(v, QTensor))
        return x

    @classmethod
    def from_float(cls, mod, name: str = "DeQuantStub"):
        return cls()

    def extra_repr(self):
        return "" if self.output_dtype is None else f"output_dtype={self.output_dtype}"


class _Int8WeightModule(CompactWeight, nn.Module):
    """What the static int8 modules with a packed weight share (Linear, Conv, ConvTranspose): the
    plain-tensor buffers, the rebuild of the packed weight on ``.to()`` and on load, the checks
    of a loaded state dict, and of the input."""

    # 2: a state dict without the float-input qparams (float_input_scale / float_input_zero_point)
    # comes from a module without them; in a version-1 one their absence says nothing.
    _version = 2

    def __setstate__(self, state):
        # A module pickled before version 2 held its float-input Quantize in __dict__.
        old = state.pop("_fallback_input_quant", None)
        super().__setstate__(state)
        if old is not None and "float_input_scale" not in self._buffers:
            self._set_float_input_qparams(old.scale, old.zero_point, old.dtype)
        # A whole module pickled (torch.save(model)) carries its kernel layout: one for another
        # device (torch.load(map_location=...) moved the CPU layout to CUDA, or the CUDA one to
        # the CPU) or of an older layout (before the packed conv weights recorded their shapes:
        # the CPU conv weight 4-D, the transposed one 5-D, the depthwise one [taps, C]) is rebuilt.
        if self._packed_layout_stale():
            self._repack()
        renote_packed(self)
        self._compact_again()

    def __getstate__(self):
        repack_for_copy(self)
        return self._portable_state(super().__getstate__())

    def _packed_layout_stale(self) -> bool:
        """Whether the kernel layout in place is not the one the packing op builds for the weight
        where it lives now: on another device, or of another shape (another device's layout, an
        older one), or missing."""
        b = self._buffers
        w, packed, sums = b.get("qweight"), b.get("_packed_weight"), b.get("_col_sums")
        if not isinstance(w, torch.Tensor) or w.device.type == "meta":
            return False  # (no weight to pack: a skeleton, or another module's placeholder)
        if not isinstance(packed, torch.Tensor) or not isinstance(sums, torch.Tensor):
            return True
        if packed.device != w.device or sums.device != w.device:
            return True
        want = self._packed_shape_of(w)
        return want is not None and tuple(packed.shape) != tuple(want)

    def _packed_shape_of(self, w: torch.Tensor) -> Optional[tuple]:
        """The shape of the packed weight the packing op gives for weight ``w`` (on its device);
        None where unknown."""
        return None

    _tq_src0 = None  # the tensor the kernel layout was packed from (nn/_state_dict.py: note_packed)
    _tq_v0 = None  # and its version then

    def _init_int8_buffers(self, qweight_shape, out_channels: int, bias: bool, dtype, device=None):
        """The buffers, on `device` (the caller's _repack then packs the layout for it, as .to()
        does: a 'meta' skeleton holds no memory). dtype None (torch.ao's default, its float factory
        dtype) is the default activation dtype, torch.quint8."""
        dtype = torch.quint8 if dtype is None else dtype
        info = torch.iinfo(_storage(dtype))
        kw = dict(device=device)
        self.register_buffer("qweight", torch.zeros(*qweight_shape, dtype=torch.int8, **kw))
        self.register_buffer("weight_scale", torch.ones(out_channels, dtype=torch.float32, **kw))
        self.register_buffer("weight_zero_point", torch.zeros(out_channels, dtype=torch.int32, **kw))
        self.register_buffer("bias", torch.zeros(out_channels, dtype=torch.float32, **kw) if bias else None)
        self.register_buffer("scale", torch.ones(1, dtype=torch.float32, **kw))
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int32, **kw))
        self.register_buffer("_packed_weight", None, persistent=False)
        self.register_buffer("_col_sums", None, persistent=False)
        self.dtype = dtype
        self.qmin, self.qmax = info.min, info.max
        register_activation_dtype_hook(self)

    def _repack(self):
        raise NotImplementedError

    def _set_int8(self, qweight, w_scale, w_zp, bias, scale=None, zero_point=None):
        """Fills the buffers (kept on the CPU until the caller's .to()) and repacks: what every
        from_float ends with. scale / zero_point: the output qparams (static modules only)."""
        self.qweight.copy_(qweight.cpu())
        self.weight_scale.copy_(w_scale.cpu())
        self.weight_zero_point.copy_(w_zp.cpu())
        if bias is not None:
            self.bias.copy_(bias.detach().float().cpu())
        if scale is not None:
            self.scale.copy_(scale)
            self.zero_point.copy_(zero_point)
        self._repack()

    def _api_weight_shape(self) -> tuple:
        """The shape of ``weight()`` (what set_weight_bias takes): qweight's (a placeholder has it)."""
        return tuple(self._buffers["qweight"].shape)

    def _qweight_from_api(self, codes: torch.Tensor) -> torch.Tensor:
        """int8 codes in ``weight()``'s layout -> the ``qweight`` buffer's (the same here)."""
        return codes

    _api_weight_layout = ""  # (said in set_weight_bias's shape error where weight()'s layout is not qweight's)

    def set_weight_bias(self, w, b) -> None:
        """torch.ao's setter of the weight and bias (the counterpart of ``weight()`` / ``bias()`` /
        ``_weight_bias()``). ``w``: a torchquant QTensor or a torch quantized tensor of dtype
        qint8, symmetric (zero point 0), per tensor or per output channel (axis 0), of the shape
        (and layout) ``weight()`` has; ``b``: a float tensor [out_channels], or None for no bias.
        The values are written into the module's tensors, as load_state_dict writes them (a
        state dict or ``weight()`` / ``bias()`` taken before reads the new values; a model in
        shared memory changes for every process), and the kernel layout is rebuilt, so the next
        call uses them. The output qparams stay. ``m.set_weight_bias(*m._weight_bias())``
        changes nothing."""
        owner = f"{type(self).__name__}.set_weight_bias"
        shape = self._api_weight_shape()
        # Everything checked before anything is written: a refused call changes nothing.
        codes, w_scale = _int8_weight_arg(owner, w, shape, self._api_weight_layout)
        bias = _float_bias_arg(owner, b, shape[0])
        bufs = self._buffers
        if bufs["weight_scale"].device.type == "meta":
            raise RuntimeError(f"{owner}: the module is on the meta device (a skeleton, no memory to write into): "
                               "materialize it first (module.to_empty(device=...))")
        with torch.no_grad(), expanded(self):  # (a compact module's weight written, then compacted again)
            if not torch.is_inference_mode_enabled():
                # A module converted under torch.inference_mode holds inference tensors, which
                # cannot be written outside it: normal copies first (as a load made there is
                # given), so that no write fails halfway (new codes with the old scales)
                for k in ("qweight", "weight_scale", "weight_zero_point", "bias"):
                    t = bufs.get(k)
                    if isinstance(t, torch.Tensor) and t.is_inference() and t.device.type != "meta":
                        bufs[k] = t.clone()
            dev, q = bufs["weight_scale"].device, bufs["qweight"]
            codes = self._qweight_from_api(codes)
            if _rebuild_of(q) is not None:
                # another module's placeholder put in its place (load_state_dict(assign=True)): a tensor of its own
                bufs["qweight"] = torch.empty(q.shape, dtype=torch.int8, device=dev).copy_(codes)
            else:
                q.copy_(codes)
            bufs["weight_scale"].copy_(w_scale)
            bufs["weight_zero_point"].zero_()
            if bias is None:
                bufs["bias"] = None
            elif bufs["bias"] is None:  # (a module built with bias=False takes one, as torch.ao's)
                bufs["bias"] = torch.empty(bias.shape, dtype=torch.float32, device=dev).copy_(bias)
            else:
                bufs["bias"].copy_(bias)
            self._repack()

    def _apply(self, fn, *args, **kwargs):
        # The packed layout is per device: rebuild it after .to() / .cuda() / .cpu(). A dtype
        # cast (.half(), .double()) leaves the float32 scales and bias as they are: they are
        # part of the int8 computation (torch.ao keeps them in its packed params, which no cast
        # reaches), and rounding them through float16 would change every output.
        # The packed buffers are derived and rebuilt below: kept out of fn, which may not take
        # their shape (.to(memory_format=torch.channels_last) on a 4-D packed depthwise Conv3d
        # weight [kD, kH, kW, C], or a CUDA conv weight of 4 or 5 dimensions).
        # A compact module's weight is rebuilt first (from the layout about to be dropped).
        # A parametrized buffer is refused before anything moves.
        refuse_parametrized(self)
        with expanded(self):
            for k in ("_packed_weight", "_col_sums"):
                if k in self._buffers:
                    self._buffers[k] = None
            _apply_keeping_float32(self, super()._apply, fn, *args, **kwargs)
            self._repack()
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # copy_ into the buffers would cast a float qweight to int8 (0.7 -> 0) and keep a zero
        # point the kernel never reads: refuse both, naming the key, and load nothing of this module.
        what = f"the quantized {type(self).__name__}"
        errors = integer_load_errors(self, state_dict, prefix, ("qweight",))
        errors += activation_dtype_errors(self, local_metadata, prefix)
        errors += qparam_load_errors(self, state_dict, prefix)
        zp = state_dict.get(prefix + "weight_zero_point")
        if (isinstance(zp, torch.Tensor) and zp.device.type != "meta"
                and not (zp.is_floating_point() or zp.is_complex() or zp.dtype == torch.bool)):
            if bool((zp != 0).any()):
                bad = (zp.reshape(-1) != 0).nonzero().flatten().tolist()
                shown = ", ".join(str(c) for c in bad[:10]) + (", ..." if len(bad) > 10 else "")
                errors.append(f"{prefix}weight_zero_point: {what}'s int8 weights are symmetric (zero "
                              f"point 0), got non-zero values at channel(s) {shown}")
        if errors:
            error_msgs.extend(errors)
            return
        if isinstance(state_dict.get(prefix + "float_input_scale"), torch.Tensor) and "float_input_scale" not in self._buffers:
            # A module built by hand takes the float-input qparams a converted one saved (their
            # dtype: the module's own activation dtype, as the qconfigs give it).
            self._set_float_input_qparams(1.0, 0, self.dtype)
        elif (prefix + "float_input_scale" not in state_dict and "float_input_scale" in self._buffers
              and prefix + "qweight" in state_dict):  # (a strict=False load that leaves this module out: nothing)
            if (local_metadata or {}).get("version", 1) >= 2:
                # The saved module had none (it raised on a float input): neither has this one.
                for k in ("float_input_scale", "float_input_zero_point"):
                    del self._buffers[k]
            else:
                # A state dict from before version 2: the module keeps its own, as loading did then.
                for k in ("float_input_scale", "float_input_zero_point"):
                    state_dict[prefix + k] = self._buffers[k]
        own_loaded_qparams(self, state_dict, prefix)
        with expanded(self):  # (the load writes into the weight; a strict=False load may leave it)
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                          error_msgs)
            self._repack()

    def _check_input(self, x, what: str, hint: str = ""):
        """x must be a per-tensor QTensor; `what` names the operation in the error. Returns x, or,
        for a float tensor where convert recorded this module's calibration input range (a
        function between modules ran in float), x quantized with qparams from that range (the
        ``float_input_scale`` / ``float_input_zero_point`` buffers, saved in the state dict)."""
        if not isinstance(x, QTensor):
            if "float_input_scale" in self._buffers and isinstance(x, torch.Tensor) and x.is_floating_point():
                return self._quantize_float_input(x)
            got, fix = _received(x)
            raise TypeError(
                f"{type(self).__module__}.{type(self).__name__} received {got}, but a static quantized {what} takes "
                f"a QTensor: {fix}add a torchquant.QuantStub() before it{hint} (if a function before it warned that "
                "it has no int8 implementation and runs in float, the QuantStub goes after that function)")
        if x.axis is not None:
            raise ValueError(f"quantized {type(self).__name__} needs per-tensor quantized input, got a QTensor "
                             f"quantized along axis {x.axis}")
        return x

    def _set_float_input_qparams(self, scale, zero_point, dtype) -> None:
        """Makes float inputs quantize with (scale, zero_point) of `dtype` (see _check_input):
        buffers, so that they follow .to() and are saved and loaded with the state dict."""
        dev = self.scale.device
        self.register_buffer("float_input_scale", torch.as_tensor(scale, dtype=torch.float32).reshape(1).to(dev))
        self.register_buffer("float_input_zero_point", torch.as_tensor(zero_point).to(torch.int32).reshape(1).to(dev))
        info = torch.iinfo(_storage(dtype))
        self.__dict__["_float_input_dtype"] = (_STORAGE[dtype], info.min, info.max)

    def _quantize_float_input(self, x: torch.Tensor) -> QTensor:
        name = self.__dict__.get("_tq_name")
        _warn_once_on(self, "float input", lambda: (
            f"{type(self).__module__}.{type(self).__name__}{f' {name!r}' if name else ''} received a float tensor "
            "(no QuantStub before it, "
            "or a function before it has no int8 implementation and ran in float): it is quantized with the "
            "input range the module saw at calibration; a QuantStub or FloatFunctional there would keep the "
            "model int8"), 3)
        b = self._buffers
        scale, zero_point = b["float_input_scale"], b["float_input_zero_point"]
        storage, qmin, qmax = self.__dict__["_float_input_dtype"]
        data = ops.quantize.default(x, scale, zero_point, None, qmin, qmax, storage)
        return QTensor._make(data, scale, zero_point, None, qmin, qmax)


def _received(x):
    """(what x is, the fix for it before the QuantStub hint) for _check_input's error: a torch
    quantized tensor or integer codes are neither a float tensor nor fixed by a QuantStub alone."""
    if isinstance(x, torch.Tensor):
        if x.is_quantized:
            return (f"a torch quantized tensor (dtype {x.dtype})",
                    "convert it with torchquant.quantize_per_tensor(x.dequantize(), scale, zero_point, dtype), or "
                    "dequantize it and ")
        if x.is_floating_point():
            return f"a float {type(x).__name__}", ""
        if not (x.is_complex() or x.dtype == torch.bool):
            return (f"an integer tensor (dtype {x.dtype})",
                    "wrap integer codes in a QTensor with their qparams (torchquant.QTensor(codes, scale, "
                    "zero_point)), or for float values ")
        return f"a tensor of dtype {x.dtype}", ""
    return f"a {type(x).__name__}", ""


def _weight_codes(w: QTensor) -> torch.Tensor:
    """The int8 codes of w; a layer's own ``.weight`` (:class:`_LazyCodes`) read without putting a
    compact layer's weight back in its buffer (it stays compact)."""
    if not isinstance(w, _LazyCodes):
        return w.data
    return w._portable_codes()


def _int8_weight_arg(owner: str, w, shape, layout: str = ""):
    """set_weight_bias's ``w`` (a QTensor or a torch quantized tensor: qint8, symmetric, per tensor
    or per channel along axis 0, of `shape`) as (int8 codes, float32 scales [shape[0]]); errors
    name the argument and what it got."""
    what = f"{owner}: argument 'w'"
    n = shape[0]
    if isinstance(w, QTensor):
        codes = _weight_codes(w)
        if codes.dtype != torch.int8:
            raise ValueError(f"{what} must be qint8 (int8 weights), got dtype {_QDTYPE_OF[codes.dtype]}")
        axis, scale, zp = w.axis, w.scale, w.zero_point
    elif isinstance(w, torch.Tensor) and w.is_quantized:
        if w.dtype != torch.qint8:
            raise ValueError(f"{what} must be qint8 (int8 weights), got dtype {w.dtype}")
        qs = w.qscheme()
        if qs in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            axis, scale, zp = None, torch.tensor([w.q_scale()]), torch.tensor([w.q_zero_point()])
        elif qs in (torch.per_channel_affine, torch.per_channel_symmetric):
            axis, scale, zp = w.q_per_channel_axis(), w.q_per_channel_scales(), w.q_per_channel_zero_points()
        else:
            raise ValueError(f"{what} must be quantized per tensor or per channel (symmetric), got qscheme {qs}")
        codes = w.int_repr()
    else:
        got = f"a tensor of dtype {w.dtype}" if isinstance(w, torch.Tensor) else type(w).__name__
        if isinstance(w, torch.Tensor) and w.is_floating_point():
            got = (f"a float tensor (dtype {w.dtype}): quantize it first (torchquant.quantize_per_channel(w, scales, "
                   "torch.zeros_like(scales, dtype=torch.int32), 0, torch.qint8))")
        raise TypeError(f"{what} must be a torchquant QTensor or a torch quantized tensor (qint8), got {got}")
    if tuple(codes.shape) != tuple(shape):
        raise ValueError(f"{what} must have shape {list(shape)} (as weight() has it{layout}), got {list(codes.shape)}")
    if axis is not None and axis not in (0, -len(shape)):
        raise ValueError(f"{what} must be quantized per tensor or per output channel (axis 0), got one quantized "
                         f"along axis {axis}")
    scale = scale.detach().reshape(-1).to(torch.float32)
    zp = zp.detach().reshape(-1)
    want = 1 if axis is None else n
    if scale.numel() != want or zp.numel() != want:
        raise ValueError(f"{what} must have {want} scale(s) and zero point(s), got {scale.numel()} and {zp.numel()}")
    bad = None if scale.device.type == "meta" else ~(torch.isfinite(scale) & (scale > 0))
    if bad is not None and bool(bad.any()):
        raise ValueError(f"{what}: its scales must be > 0 and finite, got {scale[bad][0].item()}")
    if zp.device.type != "meta" and bool((zp != 0).any()):
        raise ValueError(f"{what} must be symmetric (zero point 0): torchquant's int8 weights are, got zero point "
                         f"{int(zp[zp != 0][0])}")
    return codes, (scale.expand(n) if axis is None else scale)


def _float_bias_arg(owner: str, b, n: int) -> Optional[torch.Tensor]:
    """set_weight_bias's ``b``: None, or a float tensor [n] (detached)."""
    if b is None:
        return None
    if not isinstance(b, torch.Tensor) or b.is_quantized or not b.is_floating_point():
        got = f"a tensor of dtype {b.dtype}" if isinstance(b, torch.Tensor) else type(b).__name__
        raise TypeError(f"{owner}: argument 'b' must be a float tensor or None, got {got}")
    if tuple(b.shape) != (n,):
        raise ValueError(f"{owner}: argument 'b' must have shape [{n}] (one per output channel), got {list(b.shape)}")
    return b.detach()


def _size_arg(module: nn.Module, name: str, v) -> int:
    """A constructor's size argument as an int (numpy integers too), >= 0; else an error naming it
    (a float failed inside torch.zeros)."""
    v = _int_arg(name, v, type(module).__name__)
    if v < 0:
        raise ValueError(f"{type(module).__name__}: argument '{name}' must be >= 0, got {v}")
    return v


class Linear(_Int8WeightModule):
    """Static int8 Linear: QTensor in, QTensor out, one kernel call (int32 accumulation, bias,
    optional ReLU and requantization fused).

    Weights are int8, symmetric (zero point 0), per output channel; activations uint8 or int8 per
    tensor. A float input (no QuantStub before it) is quantized with the input range the module
    saw at calibration, with one warning naming the module; a module without those qparams (built
    by hand) raises a TypeError asking for a QuantStub.
    """

    _relu = False

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=torch.quint8):
        super().__init__()
        in_features = _size_arg(self, "in_features", in_features)
        out_features = _size_arg(self, "out_features", out_features)
        self.in_features, self.out_features = in_features, out_features
        self._init_int8_buffers((out_features, in_features), out_features, bias, dtype)
        self._repack()

    def _weight_bias(self):
        """(weight, bias): torch.ao's accessor of a quantized module's int8 weight (a QTensor
        here) and float bias (None without one)."""
        return self.weight, self.bias

    @property
    def weight(self) -> QTensor:
        """The int8 weight with its per-channel scales, as a QTensor (torch.ao's ``weight()``).
        Being no plain tensor also keeps fused fast paths that read ``.weight`` directly (such as
        TransformerEncoderLayer's) off this module. The codes are read from the module when used
        (a compact module's shape and device answer without that)."""
        return lazy_weight(self)

    def _repack(self):
        self._packed_weight, self._col_sums = ops.pack_weight(self.qweight)
        note_packed(self, ("qweight",), "_packed_weight")

    def _packed_shape_of(self, w: torch.Tensor) -> tuple:
        return packed_weight_shape(w.shape[0], w.shape[1], w.device)

    def _unpack_qweight(self, bufs, shape):
        p = bufs["_packed_weight"]
        if p.device.type == "cpu":
            return unpack_linear_cpu(p, shape[0], shape[1])
        if p.device.type == "cuda":  # [N, K rounded up to 16], zeros past K
            return p[:, :shape[1]].clone()
        raise NotImplementedError

    def forward(self, input, *, _tq_relu: bool = False):
        # (`input`: torch.nn's name, for calls with input=; _tq_relu: the ReLU after it in its
        # nn.Sequential, run in the epilogue: FusedReLUSequential)
        # (a KeyError of a buffer read: one that register_parametrization moved, refused by name)
        try:
            x = self._check_input(input, "Linear", " (or use torchquant.quantize_dynamic for float in, float out)")
            w0 = self._buffers["qweight"]  # (torch.func.functional_call, an assignment, an in-place change)
            if (w0 is not self._tq_src0
                    or (self._tq_v0 is not None and not _is_compiling() and w0._version != self._tq_v0)):
                repack_if_stale(self)
            # Buffers read straight from _buffers: nn.Module.__getattr__ per tensor is a measurable
            # part of a small-batch call.
            b = self._buffers
            scale, zero_point = b["scale"], b["zero_point"]
            xd, xs, xz = x.data, x.scale, x.zero_point
            wp, cs, ws, bias = b["_packed_weight"], b["_col_sums"], b["weight_scale"], b["bias"]
            f = (_fastcall.linear_int8 if _fastcall.usable_int8_layer(xd, xs, xz, wp, cs, ws, bias, scale, zero_point)
                 else ops.linear_int8.default)
            y = f(xd, xs, xz, wp, cs, ws, bias, scale, zero_point, self._relu or _tq_relu, _STORAGE[self.dtype])
        except KeyError as e:
            refuse_parametrized(self, e)
            raise
        return QTensor._make(y, scale, zero_point, None, self.qmin, self.qmax)

    @classmethod
    def from_float(cls, mod, name: Optional[str] = None):
        """Quantizes a prepared (observed) nn.Linear, fused LinearReLU, QAT Linear or QAT LinearBn1d."""
        name = name or type(mod).__name__
        linear = _float_linear(mod)
        w_scale, w_zp, w_range = _weight_qparams(mod, linear, name)
        scale, zero_point, obs = _activation_qparams(mod, name)
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, dtype=obs.dtype)
        _load_weight(q, linear, w_scale, w_zp, w_range)
        q.scale.copy_(scale)
        q.zero_point.copy_(zero_point)
        return q.to(linear.weight.device)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{qparams_repr(self.scale, self.zero_point)}, dtype={self.dtype}")


class LinearReLU(Linear):
    """Static int8 Linear with ReLU fused into the kernel's epilogue."""

    _relu = True


def _float_linear(mod) -> nn.Linear:
    """The Linear whose weight and bias ``from_float`` quantizes: a fused LinearReLU's Linear, a
    fused (not yet QAT) LinearBn1d's with its running statistics folded in, a
    QAT LinearBn1d's with its BatchNorm folded in (its weight observer sees the folded weight
    once more, as in torch.ao's convert), else the module itself."""
    if isinstance(mod, intrinsic.LinearReLU):
        return mod[0]
    if isinstance(mod, nn.Sequential) and type(mod).__name__ == "LinearBn1d":  # torchquant's or torch.ao's
        # Fused for QAT but prepared for static quantization: the running statistics folded in
        # (as an unfolded ConvBn's); the model's own modules are left as they are.
        from torch.nn.utils.fusion import fuse_linear_bn_weights

        lin, bn = mod[0], mod[1]
        from .qat import bn_affine

        w, b = fuse_linear_bn_weights(lin.weight, lin.bias, bn.running_mean, bn.running_var, bn.eps, *bn_affine(bn))
        linear = nn.Linear(lin.in_features, lin.out_features, device=w.device, dtype=w.dtype)
        linear.weight, linear.bias = nn.Parameter(w.detach()), nn.Parameter(b.detach())
        return linear
    if hasattr(mod, "folded_weight_bias"):
        w, b = mod.folded_weight_bias()
        linear = nn.Linear(mod.in_features, mod.out_features, device=w.device, dtype=w.dtype)
        linear.weight, linear.bias = nn.Parameter(w.detach()), nn.Parameter(b.detach())
        with torch.no_grad():
            mod.weight_fake_quant(linear.weight)
        return linear
    return mod


def _weight_qparams(mod, linear, name):
    n = linear.out_features
    if linear.weight.numel() == 0:
        # in_features or out_features 0: no weight value to quantize, so any scale is exact.
        dev = linear.weight.device
        return torch.ones(n, device=dev), torch.zeros(n, dtype=torch.int32, device=dev), (-128, 127)
    wobs = getattr(mod, "weight_fake_quant", None)
    if wobs is None:
        qconfig = getattr(mod, "qconfig", None)
        if qconfig is None:
            raise RuntimeError(f"{name} has no qconfig: was the model passed through prepare()?")
        wobs = qconfig.weight()
        wobs.to(linear.weight.device)
        wobs(linear.weight.detach())
    elif not hasattr(mod, "folded_weight_bias"):  # (a LinearBn1d's saw its folded weight in _float_linear)
        # As torch.ao's convert: the QAT module's weight observer sees the final weight once
        # more, so the scales follow the last optimizer step.
        with torch.no_grad():
            wobs(linear.weight.detach())
    _check_observes(wobs, name, "weight")
    if getattr(wobs, "dtype", None) in (torch.float16, torch.bfloat16, torch.float32):
        # torch.ao's float16_dynamic_qconfig through from_float (quantize_dynamic refuses it first)
        raise ValueError(f"{name}: its qconfig's weight dtype is {wobs.dtype} (such as float16_dynamic_qconfig): "
                         "torchquant quantizes to int8 (or int4 weight-only), and has no float16 modules; use an "
                         "int8 qconfig")
    _check_weight_axis(wobs, linear.weight.dim(), name, "Linear")
    w_scale, w_zp = wobs.calculate_qparams()
    w_scale = w_scale.float().reshape(-1).to(linear.weight.device)
    w_zp = w_zp.to(torch.int32).reshape(-1).to(linear.weight.device)
    if bool((w_zp != 0).any()):
        raise ValueError(
            f"{name}: torchquant's int8 Linear needs symmetric weights (zero point 0), but the weight observer "
            f"{type(wobs).__name__} gave non-zero zero points; use qscheme=torch.per_channel_symmetric or "
            "torch.per_tensor_symmetric with dtype=torch.qint8"
        )
    if w_scale.numel() == 1:
        w_scale, w_zp = w_scale.expand(n).contiguous(), w_zp.expand(n).contiguous()
    return w_scale, w_zp, _weight_range(wobs, name)


def _check_weight_axis(wobs, ndim: int, name: str, what: str) -> None:
    """A per-channel weight observer must split the weight along its output channels (axis 0):
    the int8 kernels scale each output channel. Another axis (per input column) would have its
    scales applied to the wrong channels: silently wrong where the weight is square, a shape
    error elsewhere."""
    if getattr(wobs, "qscheme", None) not in _PER_CHANNEL:
        return
    axis = int(getattr(wobs, "ch_axis", 0))
    if axis not in (0, -ndim):
        raise ValueError(f"{name}: the per-channel weight observer {type(wobs).__name__} has ch_axis={axis}, but "
                         f"a quantized {what} scales its weight per output channel: ch_axis must be 0")


def _weight_range(wobs, name):
    """The integer range the weight observer's qparams were chosen for (a 4-bit
    quant_min=-8, quant_max=7, or -127..127): the int8 weight is clamped to it, as its
    fake-quant clamps during QAT, so the converted Linear computes with the weights QAT trained."""
    lo, hi = getattr(wobs, "quant_min", None), getattr(wobs, "quant_max", None)
    if lo is None or hi is None:
        return -128, 127
    lo, hi = int(lo), int(hi)
    if not -128 <= lo <= hi <= 127:
        raise ValueError(f"{name}: the weight observer {type(wobs).__name__} has quant_min={lo}, quant_max={hi}, "
                         "outside the int8 weights' range [-128, 127]; use dtype=torch.qint8 for weights")
    return lo, hi


def _load_weight(q, linear, w_scale, w_zp, w_range=(-128, 127)):
    w = linear.weight.detach().float()
    q._set_int8(ops.quantize(w, w_scale, w_zp, 0, w_range[0], w_range[1], torch.int8), w_scale, w_zp, linear.bias)


def _codes_of(m: nn.Module) -> torch.Tensor:
    """m's int8 codes for a value read of its ``.weight``: ``m.qweight`` (which puts a compact
    layer's weight back in its buffer); under torch.compile / torch.export, a compact layer's
    computed in the graph from its layout (the module is not changed inside a trace), or an error
    naming the workaround where that layout cannot be read in a graph."""
    if _is_compiling():
        w = portable_qweight(m)
        if w is not None:
            return w
    return m.qweight


class _LazyCodes:
    """Mixin of the QTensors a converted layer's ``.weight`` returns: the codes are the module's
    ``qweight``, read when something uses them (a torch function, ``.data``, ``dequantize()``,
    pickling), which puts a compact module's weight back in its buffer; shape, size and device
    answer from the module without that. Model code that reads a layer's ``.weight`` only to look
    at it (Hugging Face T5's ``isinstance(wo.weight, torch.Tensor)``, the ``has_torch_function``
    test of TransformerEncoderLayer's fused path, ``weight.dtype`` casts) leaves the layer
    holding its weight once. ``_module`` is the layer, or a tuple of layers whose weights the
    QTensor stacks along dimension 0 (MultiheadAttention's ``in_proj_weight``)."""

    __slots__ = ()

    def _layers(self):
        m = self._module
        return m if isinstance(m, tuple) else (m,)

    @property
    def data(self) -> torch.Tensor:
        ms = self._layers()
        return _codes_of(ms[0]) if len(ms) == 1 else torch.cat([_codes_of(m) for m in ms])

    def _portable_codes(self) -> torch.Tensor:
        """The codes read without putting a compact layer's weight back in its buffer."""
        parts = []
        for m in self._layers():
            p = portable_qweight(m)
            parts.append(m._buffers["qweight"] if p is None else p)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    # the qparams read when used too, so that codes and scales are always the module's of the
    # same moment (a QTensor held across a load or a move)
    @property
    def scale(self) -> torch.Tensor:
        ms = self._layers()
        return ms[0].weight_scale if len(ms) == 1 else torch.cat([m.weight_scale for m in ms])

    @property
    def zero_point(self) -> torch.Tensor:
        ms = self._layers()
        return ms[0].weight_zero_point if len(ms) == 1 else torch.cat([m.weight_zero_point for m in ms])

    @property
    def shape(self) -> torch.Size:
        shapes = [m._buffers["qweight"].shape for m in self._layers()]  # (a placeholder has the weight's shape)
        return shapes[0] if len(shapes) == 1 else torch.Size((sum(s[0] for s in shapes), *shapes[0][1:]))

    def size(self, dim: Optional[int] = None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return len(self.shape)

    ndimension = dim
    ndim = property(dim)

    def numel(self) -> int:
        return self.shape.numel()

    nelement = numel

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def device(self) -> torch.device:
        return self._layers()[0]._buffers["weight_scale"].device

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def get_device(self) -> int:
        d = self.device
        return -1 if d.type == "cpu" else d.index


class _LazyQWeight(_LazyCodes, QTensor):
    """An int8 layer's ``.weight`` (:class:`_LazyCodes`)."""

    __slots__ = ("_module",)

    @property
    def dtype(self) -> torch.dtype:
        return torch.qint8


def _lazy(cls, module) -> QTensor:
    """A ``cls`` (a :class:`_LazyCodes` QTensor) over ``module`` (a layer, or a tuple of layers):
    per-channel int8 codes along dimension 0."""
    w = object.__new__(cls)
    w._module = module
    w.axis, w.qmin, w.qmax = 0, -128, 127
    return w


def lazy_weight(module: nn.Module) -> QTensor:
    """``module.weight`` of an int8 Linear / Conv: its per-channel int8 weight, the codes read
    from the module when used (:class:`_LazyCodes`)."""
    return _lazy(_LazyQWeight, module)


class FloatDtypeWeight(QTensor):
    """What a float-in, float-out int8 layer's ``.weight`` returns: its int8 weight as a QTensor
    whose ``dtype`` is the float dtype of the weight it was quantized from (as torchao's quantized
    weights report theirs), since model code reads a layer's ``weight.dtype`` to cast the layer's
    input (Mamba's ``lm_head(h.to(lm_head.weight.dtype))``). Everything else is the QTensor's;
    torch.ao's method form ``weight()`` returns the plain QTensor, whose ``dtype`` is
    ``torch.qint8``, as does a copy or a pickle of it."""

    __slots__ = ("_float_dtype",)

    @property
    def dtype(self) -> torch.dtype:
        return self._float_dtype

    def __call__(self) -> QTensor:
        return QTensor._make(self.data, self.scale, self.zero_point, self.axis, self.qmin, self.qmax)

    def __repr__(self) -> str:
        return repr(self())


class _LazyFloatDtypeWeight(_LazyCodes, FloatDtypeWeight):
    """A dynamic int8 layer's ``.weight``: :class:`FloatDtypeWeight`, the codes read from the
    module when used (:class:`_LazyCodes`)."""

    __slots__ = ("_module",)

    @property
    def dtype(self) -> torch.dtype:
        return self._layers()[0]._float_dtype  # (the module's now: .to(torch.bfloat16) after the read)


class DynamicLinear(Linear):
    """Dynamic int8 Linear: float in, float out. Each input row is quantized on the fly (its own
    scale and zero point, inside the kernel); weights are int8 per output channel. Any floating
    dtype is accepted (the output has the input's dtype); an integer tensor is an error.

    ``.weight`` is the int8 weight (a QTensor) whose ``dtype`` reads as the float dtype it was
    quantized from (float32 for a module built by hand), for model code that casts the layer's
    input to it; ``.weight()`` is torch.ao's form, a QTensor of dtype ``torch.qint8``.

    ``reduce_range``: the rows are quantized to 7-bit uint8 codes, [0, 127] (torch.ao's x86
    dynamic range; one bit of precision less), where False (the default) gives full 8-bit int8
    codes. On CPUs without AVX-512 VNNI the 7-bit rows multiply with ``vpmaddubsw``, about 1.5x
    faster; elsewhere both cost the same. ``quantize_dynamic`` sets it from a qconfig whose
    activation observer has ``quant_max=127`` (``torchquant.reduce_range_dynamic_qconfig``).
    A runtime choice, not part of the state dict: either loads the same checkpoint.

    >>> m = torchquant.quantize_dynamic(nn.Sequential(nn.Linear(16, 8)), {nn.Linear})
    """

    _float_dtype = torch.float32
    reduce_range = False

    def _apply(self, fn, *args, **kwargs):
        # A cast of the model (.to(torch.bfloat16), .half(), .float()) is the float dtype its
        # weight now reads as (the int8 state and float32 scales stay as they are).
        cast = None
        if fn is not None:
            p32, p16 = fn(torch.empty(0)), fn(torch.empty(0, dtype=torch.float16))
            if isinstance(p32, torch.Tensor) and p32.is_floating_point() and p32.dtype != torch.float32:
                cast = p32.dtype
            elif isinstance(p16, torch.Tensor) and p16.dtype == torch.float32:
                cast = torch.float32
        super()._apply(fn, *args, **kwargs)
        if cast is not None:
            self._float_dtype = cast
        return self

    @property
    def weight(self) -> FloatDtypeWeight:
        return _lazy(_LazyFloatDtypeWeight, self)

    def forward(self, input):
        x = input.dequantize() if isinstance(input, QTensor) else input
        # The kernel reads any floating-point x as float32 itself (a float32 x costs no call).
        # (a KeyError of a buffer read: one that register_parametrization moved, refused by name)
        try:
            w0 = self._buffers["qweight"]  # (torch.func.functional_call, an assignment, an in-place change)
            if (w0 is not self._tq_src0
                    or (self._tq_v0 is not None and not _is_compiling() and w0._version != self._tq_v0)):
                repack_if_stale(self)
            b = self._buffers
            w, cs, ws, bias = b["_packed_weight"], b["_col_sums"], b["weight_scale"], b["bias"]
            rr = self.reduce_range  # (of another type than bool: torch.ops converts it or names it)
            f = (_fastcall.linear_dynamic if _fastcall.usable_dynamic(x, w, cs, ws, bias) and type(rr) is bool
                 else ops.linear_dynamic.default)
            if needs_input_grad(x):  # training through the layer: dL/dx = dL/dy @ W (nn/_input_grad.py)
                y = InputGrad.apply(x, lambda t: f(t, w, cs, ws, bias, self._relu, rr), self._float_weight, self._relu)
            else:
                y = f(x, w, cs, ws, bias, self._relu, rr)
        except KeyError as e:
            refuse_parametrized(self, e)
            raise
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def _float_weight(self) -> torch.Tensor:
        """The int8 weight times its per-channel scales, float32 [N, K] (a compact layer's read
        back from its layout: it stays compact)."""
        w = portable_qweight(self)
        return (self.qweight if w is None else w).float() * self.weight_scale.reshape(-1, 1)

    @classmethod
    def from_float(cls, mod, name: Optional[str] = None):
        name = name or type(mod).__name__
        linear = _float_linear(mod)
        w_scale, w_zp, w_range = _weight_qparams(mod, linear, name)
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, dtype=torch.quint8)
        q._relu = isinstance(mod, intrinsic.LinearReLU)
        q.reduce_range = _seven_bit_rows(mod)
        if linear.weight.dtype.is_floating_point:
            q._float_dtype = linear.weight.dtype
        _load_weight(q, linear, w_scale, w_zp, w_range)
        return q.to(linear.weight.device)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"relu={self._relu}" + (", reduce_range=True" if self.reduce_range else ""))


def _seven_bit_rows(mod) -> bool:
    """Whether mod's qconfig asks for 7-bit dynamic activations: an activation observer (torch.ao's
    PlaceholderObserver or torchquant's) of dtype quint8 with quant_max=127."""
    ctr = getattr(getattr(mod, "qconfig", None), "activation", None)
    try:
        obs = ctr() if callable(ctr) else None
    except Exception:  # (an observer that cannot be built alone: the default range)
        return False
    return (getattr(obs, "dtype", None) == torch.quint8 and getattr(obs, "quant_max", None) == 127
            and getattr(obs, "quant_min", None) in (0, None))


class FusedReLUSequential(nn.Sequential):
    """An ``nn.Sequential`` in which convert found an int8 Linear or Conv directly followed by an
    int8 ReLU: its forward runs each such pair as one call, the ReLU in the kernel's epilogue
    (bit-identical: requantization is monotonic and maps 0 to the zero point, so requant(max(y,
    0)) == max(requant(y), zero_point) with the same qparams), which saves one op and its dispatch
    per pair, most of the cost at small batch sizes. The children are the modules they were:
    called alone, or by code that iterates the Sequential and keeps an intermediate output, the
    Linear gives its own output, before the ReLU. A pair whose modules have hooks (now, or global
    ones) runs as two calls, so that every hook sees what it would.

    An int8 Linear / Conv child with no hooks (of its own or global) has its ``forward`` called
    directly: ``nn.Module.__call__`` would only call it, at 0.7 us a call, a tenth of a batch-1
    layer. Not while torch.compile / torch.export, torch.jit.trace or torch.fx trace, which
    follow module calls through ``__call__``."""

    _foldable = frozenset()  # the int8 Linear / Conv types (set below, after the conv modules)

    def forward(self, input):
        folds = self.__dict__.get("_tq_relu_folds") or {}
        hooked = bool(_global_forward_hooks or _global_forward_pre_hooks or _global_backward_hooks
                      or _global_backward_pre_hooks)
        # (torch.fx's symbolic trace patches nn.Module.__call__ while it runs)
        direct = not (hooked or _is_compiling() or torch._C._get_tracing_state() or nn.Module.__call__ is not _MODULE_CALL)
        foldable = self._foldable
        items = list(self._modules.items())
        i, n = 0, len(items)
        while i < n:
            name, m = items[i]
            relu = folds.get(name)
            own = type(m) in foldable and not hooked and not _own_call(m)
            # the pair convert recorded, as it still is: the ReLU next, both of their types, no
            # hooks and no forward of their own set on them since
            if (own and relu is not None and i + 1 < n and items[i + 1][0] == relu
                    and type(items[i + 1][1]) is ReLU and not _own_call(items[i + 1][1])):
                input = m.forward(input, _tq_relu=True) if direct else m(input, _tq_relu=True)
                i += 2
            else:
                input = m.forward(input) if own and direct else m(input)
                i += 1
        return input


_MODULE_CALL = nn.Module.__call__


def _own_call(m: nn.Module) -> bool:
    """Hooks or an instance forward on m: its call is not just its class's forward."""
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or "forward" in m.__dict__)


class ReLU(nn.ReLU):
    """ReLU on a QTensor stays int8: max(q, zero_point) keeps the qparams and is exact."""

    def forward(self, input):
        x = input
        if isinstance(x, QTensor):
            if x.axis is not None:
                zp = x.zero_point.reshape([-1 if d == x.axis else 1 for d in range(x.dim())])
            else:
                zp = x.zero_point.reshape(())
            if self.inplace:  # as the float module: the input's codes change (its qparams stay)
                torch.maximum(x.data, zp.to(x.data.dtype), out=x.data)
                return x
            return x._same_qparams(torch.maximum(x.data, zp.to(x.data.dtype)))
        return F.relu(x, inplace=self.inplace)

    @classmethod
    def from_float(cls, mod, name=None):
        return cls(mod.inplace)


class Dropout(nn.Dropout):
    """Dropout passes a QTensor through unchanged (converted models run inference)."""

    def forward(self, input):
        return input if isinstance(input, QTensor) else super().forward(input)

    @classmethod
    def from_float(cls, mod, name=None):
        return cls(mod.p, mod.inplace)


class StochasticDepth(nn.Module):
    """torchvision's ``StochasticDepth`` (the residual branch dropped per sample or per batch in
    training; the identity in inference) after convert: a QTensor passes through unchanged, as
    through :class:`Dropout`; a float tensor gets torchvision's ``stochastic_depth``."""

    def __init__(self, p: float, mode: str):
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, input):
        if isinstance(input, QTensor):
            return input
        from torchvision.ops import stochastic_depth
        return stochastic_depth(input, self.p, self.mode, self.training)

    @classmethod
    def from_float(cls, mod, name=None):
        return cls(mod.p, mod.mode)

    def extra_repr(self):
        return f"p={self.p}, mode={self.mode}"


class Flatten(nn.Flatten):
    """Flatten keeps a per-tensor QTensor int8 (only the shape changes)."""

    def forward(self, input):
        return input.flatten(self.start_dim, self.end_dim) if isinstance(input, QTensor) else super().forward(input)

    @classmethod
    def from_float(cls, mod, name=None):
        return cls(mod.start_dim, mod.end_dim)




from .quantized_conv import *  # noqa: E402,F401,F403  (int8 convolutions)
from .quantized_conv import __all__ as _conv_all  # noqa: E402
FusedReLUSequential._foldable = frozenset({Linear, Conv1d, Conv2d, Conv3d})  # noqa: F405

__all__ = __all__ + _conv_all
from .quantized_conv_transpose import *  # noqa: E402,F401,F403  (int8 transposed convolutions)
from .quantized_conv_transpose import __all__ as _conv_transpose_all  # noqa: E402

__all__ = __all__ + _conv_transpose_all
# CNN modules: FloatFunctional / QFunctional, normalization and activations (quantized_ops.py).
from .quantized_ops import *  # noqa: E402,F401,F403
from .quantized_ops import __all__ as _cnn_all  # noqa: E402

__all__ += _cnn_all
# int4 group-wise weight-only Linear (torchquant.nn.quantized_int4).
from .quantized_int4 import LinearWeightOnlyInt4  # noqa: E402,F401
