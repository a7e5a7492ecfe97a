"""QTensor: int8/uint8 data with its quantization parameters.

A small Python class, not a torch.Tensor subclass: quantized modules take and return it, and
``.dequantize()`` gives float back. Its tensors (data, scale, zero_point) stay on one device, so
no operation needs a host sync. It is registered as a pytree node, so torch.compile and
torch.export see through it.
"""
from __future__ import annotations

import inspect
import operator
import warnings
from numbers import Number
from typing import Optional

import torch
import torch.utils._pytree as pytree

from . import _fastcall

__all__ = ["QTensor"]

_QDTYPES = {torch.int8: torch.qint8, torch.uint8: torch.quint8}
# (min, max) of each storage dtype: a dict lookup, where torch.iinfo would build an object on
# every QTensor a quantized module returns.
_QRANGE = {torch.int8: (-128, 127), torch.uint8: (0, 255)}
_STORAGE_OF = {q: s for s, q in _QDTYPES.items()}


def _int_arg(name: str, v) -> int:
    """v as an int; a float (which int() would truncate) or anything else is a TypeError naming it."""
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"QTensor: argument '{name}' must be an integer, got {v!r} ({type(v).__name__})") from None


def _comparison(fn):
    """A QTensor's Python comparison operator: ``fn`` (torch.eq, ...) elementwise, with numbers
    and tensors; anything else is Python's (``q == None`` is False)."""
    def compare(self, other):
        if isinstance(other, (torch.Tensor, QTensor, int, float, bool)):
            return fn(self, other)
        return NotImplemented
    compare.__name__ = f"__{fn.__name__}__"
    return compare


def _to_device_form(device=None, dtype=None, non_blocking=False, copy=False, *, memory_format=None):
    return device, dtype, non_blocking, copy, memory_format


def _to_dtype_form(dtype, non_blocking=False, copy=False, *, memory_format=None):
    return None, dtype, non_blocking, copy, memory_format


def _to_other_form(other, non_blocking=False, copy=False, *, memory_format=None):
    return other.device, None, non_blocking, copy, memory_format


def _parse_to(args, kwargs):
    """(device, dtype, non_blocking, copy, memory_format) from torch.Tensor.to's arguments, in
    its three forms, told apart as torch does by the first argument: a dtype, a tensor (or
    QTensor), else a device."""
    first = args[0] if args else kwargs.get("other")
    form = _to_dtype_form if isinstance(first, torch.dtype) else \
        _to_other_form if isinstance(first, (torch.Tensor, QTensor)) else _to_device_form
    try:
        device, dtype, non_blocking, copy, memory_format = form(*args, **kwargs)
    except TypeError:
        raise TypeError(f"QTensor.to() received an invalid combination of arguments: {args}, {kwargs}; it takes "
                        "torch.Tensor.to's: (device=None, dtype=None, non_blocking=False, copy=False, *, "
                        "memory_format=None), (dtype, non_blocking=False, copy=False, *, memory_format=None) or "
                        "(other, non_blocking=False, copy=False, *, memory_format=None)") from None
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"QTensor.to: argument 'dtype' must be a torch.dtype, got {dtype!r}")
    return device, dtype, non_blocking, copy, memory_format


def _dtype_hint(dtype: torch.dtype) -> str:
    """What to call instead of casting a QTensor's codes to `dtype` (QTensor.to and .type refuse it)."""
    if dtype.is_floating_point:
        return f"use .dequantize({dtype}) for a floating-point tensor"
    # dequantize gives floating point only: the integers a QTensor holds are its codes
    return "use .int_repr() for the integer codes or .dequantize() for the values"


def _tensor_type_dtype(t):
    """The dtype of torch.Tensor.type's argument that is no dtype: a tensor type ('torch.FloatTensor',
    torch.cuda.HalfTensor) by name or class; None for anything else."""
    if isinstance(t, str):
        for dtype, name in _TYPE_NAMES.items():  # (torch.quantized has no tensor-type classes to look up)
            if t.endswith(f"quantized.{name}"):
                return torch.qint8 if dtype == torch.int8 else torch.quint8
        head, _, rest = t.partition(".")
        t = torch if head == "torch" and rest else None
        for part in rest.split("."):
            t = getattr(t, part, None)
    dtype = getattr(t, "dtype", None) if isinstance(t, type) else None
    return dtype if isinstance(dtype, torch.dtype) else None


# torch's quantized tensors' type() (their backend, "torch.quantized", and their dtype's class name).
_TYPE_NAMES = {torch.int8: "QInt8Tensor", torch.uint8: "QUInt8Tensor"}
_REQUIRES_GRAD_MESSAGE = ("only Tensors of floating point dtype can require gradients (a QTensor's int8 codes carry "
                          "none; .dequantize() gives a float tensor that can)")


class QTensor:
    """Quantized tensor: ``x ≈ (data - zero_point) * scale``.

    Per tensor (``axis is None``): ``scale`` and ``zero_point`` hold one element. Per channel:
    one element per ``data.size(axis)``.

    The constructor checks that ``data`` is an int8 or uint8 tensor, ``scale`` and
    ``zero_point`` are tensors, ``qmin`` and ``qmax`` are integers with ``qmin <= qmax`` inside
    data's dtype (default: its whole range) and ``axis`` is an integer inside data's
    dimensions; a TypeError or ValueError names the argument at fault. The qparams' shapes,
    dtypes and devices are not checked.

    Example::

        >>> q = torchquant.quantize_per_tensor(torch.tensor([0.1, -0.5]), 0.01, 0, torch.qint8)
        >>> q.int_repr()
        tensor([ 10, -50], dtype=torch.int8)
        >>> q.dequantize()
        tensor([ 0.1000, -0.5000])
    """

    __slots__ = ("data", "scale", "zero_point", "axis", "qmin", "qmax")

    def __init__(
        self,
        data: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        axis: Optional[int] = None,
        qmin: Optional[int] = None,
        qmax: Optional[int] = None,
    ):
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"QTensor: argument 'data' must be a tensor, got {type(data).__name__}")
        qrange = _QRANGE.get(data.dtype)
        if qrange is None:
            raise TypeError(f"QTensor data must be int8 or uint8, got {data.dtype} (argument 'data')")
        for name, t in (("scale", scale), ("zero_point", zero_point)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"QTensor: argument '{name}' must be a tensor, got {type(t).__name__}")
        lo = qrange[0] if qmin is None else _int_arg("qmin", qmin)
        hi = qrange[1] if qmax is None else _int_arg("qmax", qmax)
        if not qrange[0] <= lo <= hi <= qrange[1]:
            raise ValueError(f"QTensor: arguments 'qmin' and 'qmax' must satisfy {qrange[0]} <= qmin <= qmax <= "
                             f"{qrange[1]} for {data.dtype} data, got qmin={lo}, qmax={hi}")
        if axis is not None:
            axis = _int_arg("axis", axis)
            if not -data.dim() <= axis < max(data.dim(), 1):
                raise ValueError(f"QTensor: argument 'axis' must lie in [{-data.dim()}, {data.dim() - 1}] for data of "
                                 f"shape {tuple(data.shape)}, got {axis}")
            if axis < 0:  # as torch's q_per_channel_axis(): the axis counted from the front
                axis += data.dim()
        self.data = data
        self.scale = scale
        self.zero_point = zero_point
        self.axis = axis
        self.qmin = lo
        self.qmax = hi

    @classmethod
    def _make(cls, data, scale, zero_point, axis, qmin, qmax) -> "QTensor":
        """The constructor without its checks, for values that come from a QTensor or a quantized
        module already (a small-batch forward builds one per module)."""
        self = object.__new__(cls)
        self.data = data
        self.scale = scale
        self.zero_point = zero_point
        self.axis = axis
        self.qmin = qmin
        self.qmax = qmax
        return self

    def __reduce__(self):
        # Pickling stores the constructor's arguments, so unpickling (torch.load with
        # weights_only=True included: QTensor is on torch's list of safe globals) goes through
        # the constructor's checks.
        return (QTensor, (self.data, self.scale, self.zero_point, self.axis, self.qmin, self.qmax))

    # ---- torch quantized-tensor accessors ----
    def int_repr(self) -> torch.Tensor:
        """A copy of the codes, as torch's int_repr returns a new tensor (a change to it leaves the
        QTensor as it is; ``.data`` is the QTensor's own)."""
        return self.data.clone()

    def __call__(self) -> "QTensor":
        """The QTensor itself: a quantized module's ``.weight`` also reads as torch.ao's method
        form ``weight()`` (``model.fc.weight().int_repr()``)."""
        return self

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        # float32 is the op's default: passing None skips a dtype conversion per call (batch 1).
        if dtype is torch.float32:
            dtype = None
        elif not isinstance(dtype, torch.dtype):
            raise TypeError(f"argument 'dtype' must be a torch.dtype, got {dtype!r}")
        d, s, z = self.data, self.scale, self.zero_point
        f = _fastcall.dequantize if _fastcall.usable(d, s, z) else torch.ops.torchquant.dequantize.default
        return f(d, s, z, self.axis, dtype)

    def qscheme(self):
        return torch.per_tensor_affine if self.axis is None else torch.per_channel_affine

    def q_scale(self) -> float:
        self._require_per_tensor("q_scale")
        return float(self.scale.reshape(()))

    def q_zero_point(self) -> int:
        self._require_per_tensor("q_zero_point")
        return int(self.zero_point.reshape(()))

    def q_per_channel_scales(self) -> torch.Tensor:
        self._require_per_channel("q_per_channel_scales")
        return self.scale

    def q_per_channel_zero_points(self) -> torch.Tensor:
        self._require_per_channel("q_per_channel_zero_points")
        return self.zero_point

    def q_per_channel_axis(self) -> int:
        self._require_per_channel("q_per_channel_axis")
        return self.axis

    # ---- shape and device ----
    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def size(self, dim: Optional[int] = None):
        return self.data.size() if dim is None else self.data.size(dim)

    def dim(self) -> int:
        return self.data.dim()

    def numel(self) -> int:
        return self.data.numel()

    @property
    def dtype(self) -> torch.dtype:
        """torch.qint8 or torch.quint8, as a torch quantized tensor reports."""
        return _QDTYPES[self.data.dtype]

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def is_cuda(self) -> bool:
        return self.data.is_cuda

    def to(self, *args, **kwargs) -> "QTensor":
        """The QTensor on another device (its data and qparams moved together), with torch.Tensor.to's
        arguments: ``to(device, dtype=None, non_blocking=False, copy=False, *, memory_format=...)``,
        ``to(dtype, ...)`` and ``to(other, ...)`` (a tensor or QTensor, whose device is taken; its dtype
        is not: a QTensor's codes keep theirs). A dtype is the QTensor's own or the other 8-bit
        quantized one (torch.qint8 <-> torch.quint8: the same values, exactly); any other is a
        TypeError: casting the codes would change their values.

        >>> q.to("cuda")
        """
        device, dtype, non_blocking, copy, memory_format = _parse_to(args, kwargs)
        src = self
        if dtype is not None and dtype != self.dtype:
            if dtype not in _STORAGE_OF:
                # Tensor.to(dtype) would turn the int8 data into other values with the qparams kept.
                raise TypeError(f"QTensor.to moves a QTensor to a device (argument 'device') and to the other 8-bit "
                                f"quantized dtype, got dtype {dtype} (argument 'dtype'); {_dtype_hint(dtype)}")
            src = self._other_8bit()
        if device is None:
            device = src.data.device
        kw = dict(non_blocking=non_blocking, copy=copy)
        data = src.data.to(device, **kw) if memory_format is None else \
            src.data.to(device, memory_format=memory_format, **kw)
        return QTensor._make(data, src.scale.to(device, **kw), src.zero_point.to(device, **kw), src.axis,
                             src.qmin, src.qmax)

    def type(self, dtype=None, non_blocking: bool = False):
        """torch's type string of a quantized tensor of this dtype ('torch.quantized.QInt8Tensor' or
        'torch.quantized.QUInt8Tensor'; off the CPU with the device, as torch names its other backends:
        'torch.cuda.quantized.QInt8Tensor'). With a dtype (or a tensor type, by name or class), as
        :meth:`to`: the QTensor itself for its own dtype, the same values in the other 8-bit quantized
        dtype, and a TypeError for any other (casting the codes would change their values)."""
        if dtype is None:
            device = self.data.device.type
            backend = "torch.quantized" if device == "cpu" else f"torch.{device}.quantized"
            return f"{backend}.{_TYPE_NAMES[self.data.dtype]}"
        if isinstance(dtype, str) and dtype == self.type():
            return self
        target = dtype if isinstance(dtype, torch.dtype) else _tensor_type_dtype(dtype)
        if target is None:
            raise ValueError(f"invalid type: {dtype!r}")
        if target == self.dtype:
            return self
        if target not in _STORAGE_OF:
            raise TypeError(f"QTensor.type converts a QTensor to the other 8-bit quantized dtype only, got dtype "
                            f"{target} (argument 'dtype'); {_dtype_hint(target)}")
        return self.to(target, non_blocking=non_blocking)

    def _other_8bit(self) -> "QTensor":
        """The same values in the other 8-bit dtype (quint8 <-> qint8): codes, zero point and
        quantization range moved by 128 together, which is exact (model code that casts its
        input to a layer's weight dtype, as Hugging Face's ViT and CLIP do, gets qint8 here)."""
        shift = -128 if self.data.dtype == torch.uint8 else 128
        storage = torch.int8 if shift < 0 else torch.uint8
        data = (self.data.to(torch.int16) + shift).to(storage)
        return QTensor._make(data, self.scale, self.zero_point.to(torch.int32) + shift, self.axis, self.qmin + shift,
                             self.qmax + shift)

    def cpu(self) -> "QTensor":
        return self.to("cpu")

    def cuda(self) -> "QTensor":
        return self.to("cuda")

    def _same_qparams(self, data: torch.Tensor) -> "QTensor":
        return QTensor._make(data, self.scale, self.zero_point, self.axis, self.qmin, self.qmax)

    def _reshaping(self, name, fn, *args, **kwargs) -> "QTensor":
        if self.axis is not None:
            raise NotImplementedError(
                f"QTensor.{name} is only defined for per-tensor quantization (this QTensor is "
                f"per channel along axis {self.axis}); call .dequantize() first"
            )
        return self._same_qparams(fn(self.data, *args, **kwargs))

    def reshape(self, *shape, **kwargs) -> "QTensor":
        # kwargs: torch's keyword form, q.reshape(shape=(6, 4))
        return self._reshaping("reshape", torch.Tensor.reshape, *shape, **kwargs)

    def view(self, *shape, **kwargs) -> "QTensor":
        # kwargs: torch's keyword forms, q.view(size=(6, 4)) and q.view(dtype=...)
        dtype = shape[0] if len(shape) == 1 else kwargs.get("dtype")
        if isinstance(dtype, torch.dtype):
            raise TypeError(f"QTensor.view takes a shape, got dtype {dtype} (reinterpreting the codes as "
                            "another dtype would change their values); use .dequantize() or .int_repr()")
        if not shape and set(kwargs) == {"size"}:
            shape = (kwargs.pop("size"),)
        # codes an int8 conv or a functional op left channels last are not viewable as (N, -1): a copy in
        # the logical order then, as reshape does (a view whenever the layout allows one)
        return self._reshaping("view", torch.Tensor.reshape, *shape, **kwargs)

    def view_as(self, other) -> "QTensor":
        return self.view(other.shape)

    def reshape_as(self, other) -> "QTensor":
        return self.reshape(other.shape)

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> "QTensor":
        return self._reshaping("flatten", torch.flatten, start_dim, end_dim)

    def contiguous(self, memory_format=torch.contiguous_format) -> "QTensor":
        return self._same_qparams(self.data.contiguous(memory_format=memory_format))

    def detach(self) -> "QTensor":
        """The QTensor itself with detached codes (int8 codes carry no gradient)."""
        return self._same_qparams(self.data.detach())

    def detach_(self) -> "QTensor":
        """The QTensor, as it is: its int8 codes carry no gradient, there is nothing to detach (as
        requires_grad_, not a value change written back into the codes)."""
        return self

    # ---- autograd: int8 codes carry no gradient. requires_grad_() read as an in-place function
    # whose float result was written back: it did nothing, with a warning that it had.
    @property
    def requires_grad(self) -> bool:
        return False

    @requires_grad.setter
    def requires_grad(self, requires_grad) -> None:
        self.requires_grad_(requires_grad)

    def requires_grad_(self, requires_grad: bool = True) -> "QTensor":
        """As on torch's quantized tensors: False is a no-op returning the QTensor, True a RuntimeError."""
        if requires_grad:
            raise RuntimeError(_REQUIRES_GRAD_MESSAGE)
        return self

    @property
    def ndim(self) -> int:
        return self.data.dim()

    @property
    def is_quantized(self) -> bool:
        """True, as for torch.ao's quantized tensors."""
        return True

    @property
    def mT(self) -> "QTensor":
        return self._reshaping("mT", lambda t: t.mT)

    @property
    def T(self) -> "QTensor":
        return self._reshaping("T", lambda t: t.permute(*range(t.dim() - 1, -1, -1)))

    # The conjugate transposes of real values are the transposes (torch's checks of the
    # dimensions kept: H takes a matrix, mH at least one), and the real part is the QTensor.
    @property
    def H(self) -> "QTensor":
        return self._reshaping("H", lambda t: t.H)

    @property
    def mH(self) -> "QTensor":
        return self._reshaping("mH", lambda t: t.mH)

    @property
    def real(self) -> "QTensor":
        """The QTensor itself, as torch's ``real`` of a real tensor is the tensor."""
        return self

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self):
        """The QTensors along dimension 0, as iterating a tensor gives its unbind(0)."""
        if self.data.dim() == 0:
            raise TypeError("iteration over a 0-d tensor")
        return iter(self.unbind(0))

    def __format__(self, format_spec: str) -> str:
        """As a tensor's: a 0-d QTensor formats as its value (f"{q.max():.3f}")."""
        if self.data.dim() == 0:
            return float(self).__format__(format_spec)
        return object.__format__(self, format_spec)

    # ---- NumPy and DLPack see the values: np.asarray(q), torch.tensor(q) and torch.as_tensor(q)
    # give the dequantized float tensor's (not a QTensor of each element, nor an error).
    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise ValueError("a QTensor's values are computed from its codes: an array of them is a new array "
                             "(argument 'copy' is False)")
        return self.dequantize().__array__(dtype)

    def __dlpack__(self, *args, **kwargs):
        return self.dequantize().__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.data.__dlpack_device__()

    # ---- values as Python sees them: comparisons elementwise (as torch's tensors, on the
    # dequantized values, with the float fallback's warning), truth and numbers from the value.
    # Without them Python compared identities: q1 == q2 was False for equal values.
    __hash__ = object.__hash__  # by identity, as torch.Tensor's

    # ---- layout and storage: the codes' (the float fallback answered for a dequantized copy:
    # a channels-last QTensor said it was not channels-last contiguous, 4 bytes per element)
    def stride(self, dim=None):
        return self.data.stride() if dim is None else self.data.stride(dim)

    def is_contiguous(self, memory_format=torch.contiguous_format) -> bool:
        return self.data.is_contiguous(memory_format=memory_format)

    def storage_offset(self) -> int:
        return self.data.storage_offset()

    def element_size(self) -> int:
        return self.data.element_size()

    @property
    def itemsize(self) -> int:
        return self.data.itemsize

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def untyped_storage(self):
        return self.data.untyped_storage()

    def share_memory_(self) -> "QTensor":
        """Moves the codes and the qparams to shared memory, in place (torch.Tensor.share_memory_);
        returns the QTensor."""
        for t in (self.data, self.scale, self.zero_point):
            t.share_memory_()
        return self

    def is_shared(self) -> bool:
        return self.data.is_shared()

    def pin_memory(self, *args, **kwargs) -> "QTensor":
        """A copy in pinned memory, codes and qparams (torch.Tensor.pin_memory)."""
        return QTensor._make(self.data.pin_memory(*args, **kwargs), self.scale.pin_memory(*args, **kwargs),
                             self.zero_point.pin_memory(*args, **kwargs), self.axis, self.qmin, self.qmax)

    def is_pinned(self, *args, **kwargs) -> bool:
        return self.data.is_pinned(*args, **kwargs)

    def data_ptr(self) -> int:
        return self.data.data_ptr()

    def get_device(self) -> int:
        return self.data.get_device()

    def nelement(self) -> int:
        return self.data.nelement()

    def ndimension(self) -> int:
        return self.data.dim()

    def dim_order(self, *args, **kwargs):
        return self.data.dim_order(*args, **kwargs)

    def is_floating_point(self) -> bool:
        return False

    def is_complex(self) -> bool:
        return False

    __eq__, __ne__ = _comparison(torch.eq), _comparison(torch.ne)
    __lt__, __le__ = _comparison(torch.lt), _comparison(torch.le)
    __gt__, __ge__ = _comparison(torch.gt), _comparison(torch.ge)

    def __bool__(self) -> bool:
        return bool(self.dequantize())

    def __float__(self) -> float:
        return float(self.dequantize())

    def __int__(self) -> int:
        return int(self.dequantize())

    def __contains__(self, element) -> bool:
        """``element in q``, as torch.Tensor's: whether any value equals element (a number, a tensor
        or a QTensor, compared by values), read on the host."""
        if isinstance(element, QTensor):
            element = element.dequantize()
        if isinstance(element, (torch.Tensor, Number, torch.SymInt, torch.SymFloat, torch.SymBool)):
            return bool((element == self.dequantize()).any().item())
        raise RuntimeError(f"Tensor.__contains__ only supports Tensor or scalar, but you passed in a {type(element)}.")

    def __setitem__(self, index, value) -> None:
        """``q[index] = value``: value (a number, float tensor or QTensor) quantized with this
        QTensor's qparams into the selected codes, as torch's quantized tensors do (per tensor)."""
        if self.axis is not None:
            raise NotImplementedError("item assignment into a per-channel QTensor is not supported; dequantize, "
                                      "assign and quantize again")
        if isinstance(value, QTensor):
            value = value.dequantize()
        v = torch.as_tensor(value, dtype=torch.float32, device=self.data.device)
        codes = torch.ops.torchquant.quantize(v, self.scale, self.zero_point, None, self.qmin, self.qmax,
                                              self.data.dtype)
        self.data[index] = codes

    def __getitem__(self, index) -> "QTensor":
        """Indexing and slicing of a per-tensor QTensor: the selected int8 values with the same
        qparams (exact). A per-channel QTensor raises: an index can drop or move its axis.

        >>> q[0], q[:, 1:3]
        """
        return self._reshaping("__getitem__", torch.Tensor.__getitem__, index)

    def __repr__(self) -> str:
        if self.axis is None:
            qp = f"scale={self.scale.reshape(()).item():.6g}, zero_point={int(self.zero_point.reshape(()).item())}"
        else:
            qp = f"axis={self.axis}, scales={tuple(self.scale.shape)}"
        return (f"QTensor(shape={tuple(self.data.shape)}, dtype={self.dtype}, {qp}, "
                f"qrange=[{self.qmin}, {self.qmax}], device={self.device})")

    # ---- torch functions ----
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        """torch functions on a QTensor: the ones with an exact int8 meaning (flatten, reshape,
        relu, dropout in inference) keep it int8; any other dequantizes its QTensor arguments,
        runs in float and warns once per function."""
        kwargs = kwargs or {}
        if "out" in kwargs:
            _refuse_qtensor_out(func, kwargs["out"])
        if not args and "input" in kwargs:  # torch.relu(input=q): the int8 functions take it first
            kwargs = dict(kwargs)
            args = (kwargs.pop("input"),)
        impl = _INT8_FUNCTIONS.get(func)
        if impl is not None and args and not isinstance(args[0], (QTensor, list, tuple)):
            impl = None  # torch.clamp(x_float, min=q): a float first argument, computed in float
        if args and isinstance(args[0], QTensor) and _in_place(func, args, kwargs):
            return _write_in_place(func, impl, args, kwargs)
        if impl is not None:
            return impl(*args, **kwargs)
        return _run_in_float(func, args, kwargs, stacklevel=3)

    def __getattr__(self, name):
        """torch.Tensor's other methods (``new_zeros``, ``masked_fill``, ``softmax``, ...) as on
        the dequantized tensor, through the float fallback of ``__torch_function__`` (one
        warning per method); its other public attributes (``layout``, ``grad``, ...) read off the
        dequantized tensor."""
        if name.startswith("_"):
            raise AttributeError(f"'QTensor' object has no attribute '{name}'")
        attr = getattr(torch.Tensor, name, None)
        if attr is None:
            raise AttributeError(f"'QTensor' object has no attribute '{name}'")
        if callable(attr):
            return lambda *args, **kwargs: QTensor.__torch_function__(attr, (QTensor,), (self,) + args, kwargs)
        return getattr(self.dequantize(), name)

    # ---- Python's arithmetic operators: as torch's functions of the same meaning (a QTensor
    # operand is dequantized and the result is float, with the warning above). Without them,
    # `a + b` of two QTensors (a residual written with `+` instead of FloatFunctional) would be
    # a TypeError; the int8 module after it quantizes the float result (docs/eager_api.md).
    def __add__(self, other):
        return torch.add(self, other)

    def __radd__(self, other):
        return torch.add(other, self)

    def __sub__(self, other):
        return torch.sub(self, other)

    def __rsub__(self, other):
        return torch.sub(other, self)

    def __mul__(self, other):
        return torch.mul(self, other)

    def __rmul__(self, other):
        return torch.mul(other, self)

    def __truediv__(self, other):
        return torch.div(self, other)

    def __rtruediv__(self, other):
        return torch.div(other, self)

    def __matmul__(self, other):
        return torch.matmul(self, other)

    def __rmatmul__(self, other):
        return torch.matmul(other, self)

    def __neg__(self):
        return torch.neg(self)

    def __pos__(self):
        return torch.positive(self)

    def __abs__(self):
        return torch.abs(self)

    def __pow__(self, other):
        return torch.pow(self, other)

    def __rpow__(self, other):
        return torch.pow(other, self)

    def __floordiv__(self, other):
        return torch.floor_divide(self, other)

    def __rfloordiv__(self, other):
        return torch.floor_divide(other, self)

    def __mod__(self, other):
        return torch.remainder(self, other)

    def __rmod__(self, other):
        return torch.remainder(other, self)

    def _require_per_tensor(self, name):
        if self.axis is not None:
            raise RuntimeError(f"QTensor.{name}() needs a per-tensor QTensor; this one is per channel (axis {self.axis})")

    def _require_per_channel(self, name):
        if self.axis is None:
            raise RuntimeError(f"QTensor.{name}() needs a per-channel QTensor; this one is per tensor")


def _warn_once(seen, key, message, stacklevel: int = 1) -> None:
    """warnings.warn(message()) the first time `key` is added to the set `seen`. Never while
    torch.compile traces: a warning cannot be traced (fullgraph refused the call), and the
    eager call that follows warns. `message` is a callable: built only when it is shown."""
    if key in seen or torch.compiler.is_compiling():
        return
    seen.add(key)
    warnings.warn(message(), UserWarning, stacklevel=stacklevel + 2)


def _warn_once_on(module, key, message, stacklevel: int = 1) -> None:
    """_warn_once with the set of warnings shown kept on `module` (made at its first warning, and
    not looked up while torch.compile traces: the Dynamo of torch 2.11 cannot trace a
    ``module.__dict__.setdefault``, which broke fullgraph compiles)."""
    if torch.compiler.is_compiling():
        return
    _warn_once(module.__dict__.setdefault("_tq_warned", set()), key, message, stacklevel + 1)


def _refuse_qtensor_out(func, out) -> None:
    """A QTensor given as ``out=`` (or inside it: ``out=(values, indices)``) is an error: the functions
    return new tensors (QTensors or, computed in float, float tensors) and would leave it unwritten."""
    if isinstance(out, QTensor) or (isinstance(out, (tuple, list)) and any(isinstance(t, QTensor) for t in out)):
        name = getattr(func, "__name__", repr(func))
        raise TypeError(f"{name}: argument 'out' is (or holds) a QTensor, which torchquant's functions do not write "
                        "into; use the returned value (q[...] = value and the in-place functions write into a QTensor)")


_OTHER_FLOAT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float64})


def _run_in_float(func, args, kwargs, label=None, stacklevel=2):
    """func on args with every QTensor dequantized, warning once per function that it has no
    int8 implementation: the rule for whatever has no int8 meaning."""
    name = label or getattr(func, "__name__", repr(func))
    _warn_once(_WARNED, name, lambda: f"{name} has no int8 implementation in torchquant: its QTensor arguments "
               "are dequantized and it runs in float", stacklevel)
    # A QTensor has no float dtype of its own: float32, or float16 / bfloat16 / float64 where the
    # float tensors beside it (the weight of a module kept in that precision) all have that dtype.
    # Tensors of no dimension are left out, as torch's type promotion leaves them out.
    is_q = lambda v: isinstance(v, QTensor)  # noqa: E731
    dtypes = {t.dtype for t in pytree.tree_leaves((args, kwargs), is_leaf=is_q)
              if isinstance(t, torch.Tensor) and not is_q(t) and t.is_floating_point() and t.dim() > 0}
    target = next(iter(dtypes)) if len(dtypes) == 1 and dtypes <= _OTHER_FLOAT_DTYPES else None
    deq = (lambda q: q.dequantize()) if target is None else (lambda q: q.dequantize().to(target))  # noqa: E731
    args, kwargs = pytree.tree_map_only(QTensor, deq, (args, kwargs), is_leaf=is_q)
    return func(*args, **kwargs)


# Methods named as in-place ones that change where the data lives or its autograd state, not its
# values: QTensor's own methods (_INT8_FUNCTIONS), not a float computation written back
# (requires_grad_ written back did nothing, with a warning that it had requantized the values).
_METADATA_IN_PLACE = frozenset({"share_memory_", "requires_grad_", "detach_"})


def _in_place_table():
    """{function: None (works in place by torch's naming rule: ``relu_``, ``add_``, ``clamp_``;
    not dunders) or the position of its ``inplace`` argument (F.silu(x, True),
    F.leaky_relu(x, 0.1, True); -1 where it takes it by keyword only)}, over torch.Tensor's
    methods and torch's, torch.nn.functional's and torch._C._nn's functions. Built once, so that
    the check per call is one dict lookup (torch.compile traces it)."""
    table = {}
    for owner in (torch.Tensor, torch, torch.nn.functional, torch._C._nn):
        for name in dir(owner):
            if name.startswith("_"):
                continue
            fn = getattr(owner, name, None)
            if not callable(fn) or isinstance(fn, type):
                continue
            try:
                hash(fn)
            except TypeError:
                continue
            if name.endswith("_"):
                if name not in _METADATA_IN_PLACE:
                    table[fn] = None
                continue
            try:
                params = list(inspect.signature(fn).parameters.values())
            except (TypeError, ValueError):  # builtins without a Python signature
                continue
            for i, p in enumerate(params):
                if p.name == "inplace":
                    table[fn] = i if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) else -1
    return table


_MISSING = object()
# In-place functions that move elements around (a square transpose keeps the shape: a per-channel
# QTensor's scales would no longer line up with its channels).
_IN_PLACE_LAYOUT = frozenset({"t_", "transpose_", "swapaxes_", "swapdims_", "squeeze_", "unsqueeze_", "as_strided_",
                              "resize_", "resize_as_", "set_"})


def _in_place(func, args, kwargs) -> bool:
    """Whether func works in place on its first argument."""
    pos = _IN_PLACE.get(func, _MISSING)
    if pos is _MISSING:
        return False
    if pos is None or kwargs.get("inplace", False):
        return True
    return 0 <= pos < len(args) and bool(args[pos])


def _write_in_place(func, impl, args, kwargs):
    """A function that works in place on a QTensor writes its result into that QTensor's codes, as
    torch's in-place ops on quantized tensors do: the QTensor object and its data tensor stay the
    same (views of it see the change), and so do its qparams. An int8 function that keeps the
    qparams (relu, relu6, hardtanh, clamp, leaky_relu, elu, dropout in inference) gives its codes,
    exactly; any other runs in float on the dequantized values, and its result is quantized with
    the QTensor's own qparams (values outside their range saturate), with a warning once per
    function. A result of another shape (``unsqueeze_``, ``t_``) is an error."""
    q = args[0]
    name = getattr(func, "__name__", "")
    if name in _IN_PLACE_LAYOUT:
        raise RuntimeError(f"{name} changes the layout of a QTensor in place; QTensors change shape out of place "
                           f"(x = x.{name[:-1]}(...))")
    if impl is not None:
        out = impl(*args, **kwargs)
        if out is q:
            return q
        if isinstance(out, QTensor) and out.scale is q.scale and out.zero_point is q.zero_point \
                and out.axis == q.axis and out.data.dtype == q.data.dtype:
            codes = out.data
        else:
            codes = None
    else:
        codes = None
    if codes is None:
        name = getattr(func, "__name__", repr(func))
        fargs, fkwargs = pytree.tree_map_only(QTensor, lambda t: t.dequantize(), (args, kwargs),
                                               is_leaf=lambda v: isinstance(v, QTensor))
        y = func(*fargs, **fkwargs)
        if isinstance(y, QTensor):
            y = y.dequantize()
        if not isinstance(y, torch.Tensor) or not y.is_floating_point():
            raise RuntimeError(f"{name} on a QTensor in place: its float result is not a floating-point tensor "
                               f"({type(y).__name__}); call .dequantize() first")
        if y.shape != q.data.shape:
            raise RuntimeError(f"{name} changes the shape of a QTensor in place (from {tuple(q.data.shape)} to "
                               f"{tuple(y.shape)}); QTensors change shape out of place (x = x.{name[:-1]}(...))")
        _warn_once(_WARNED_IN_PLACE, name, lambda: f"{name} works in place on a QTensor: it runs in float on the "
                   "dequantized values and its result is quantized into the QTensor with the QTensor's own scale and "
                   "zero point (values outside their range saturate)", 3)
        codes = torch.ops.torchquant.quantize(y.float(), q.scale, q.zero_point, q.axis, q.qmin, q.qmax, q.data.dtype)
    if codes.shape != q.data.shape:
        raise RuntimeError(f"{getattr(func, '__name__', repr(func))} changes the shape of a QTensor in place (from "
                           f"{tuple(q.data.shape)} to {tuple(codes.shape)}); QTensors change shape out of place")
    if codes is not q.data:
        q.data.copy_(codes)
    return q


def _relu(q, inplace=False):
    zp = q.zero_point.reshape([-1 if d == q.axis else 1 for d in range(q.dim())]) if q.axis is not None else q.zero_point.reshape(())
    return q._same_qparams(torch.maximum(q.data, zp.to(q.data.dtype)))


def _dropout(q, p=0.5, training=False, inplace=False):
    if training:
        raise RuntimeError("dropout in training mode on a QTensor is not defined; converted models run inference (model.eval())")
    return q


def _dropout1d(q, p=0.5, training=False, inplace=False):
    # torch's check of the float function (made whatever the mode), then as _dropout
    if q.dim() not in (2, 3):
        raise RuntimeError(f"dropout1d: Expected 2D or 3D input, but received a {q.dim()}D input. Note that dropout1d "
                           "exists to provide channel-wise dropout on inputs with 1 spatial dimension, a channel "
                           "dimension, and an optional batch dimension (i.e. 2D or 3D inputs).")
    return _dropout(q, p, training, inplace)


_WARNED = set()
_WARNED_IN_PLACE = set()
_IN_PLACE = _in_place_table()
_INT8_FUNCTIONS = {
    torch.flatten: lambda q, start_dim=0, end_dim=-1: q.flatten(start_dim, end_dim),
    torch.reshape: lambda q, shape: q.reshape(shape),
    torch.relu: _relu,
    torch.nn.functional.relu: _relu,
    torch.nn.functional.dropout: _dropout,
    # the channel-wise and alpha forms: the identity in inference too (nn.Dropout2d's forward, ...)
    torch.nn.functional.dropout1d: _dropout1d,
    torch.nn.functional.dropout2d: _dropout,
    torch.nn.functional.dropout3d: _dropout,
    torch.nn.functional.alpha_dropout: _dropout,
    torch.nn.functional.feature_alpha_dropout: _dropout,
    # A QTensor's type and storage are its codes' (not a dequantized copy's).
    torch.is_floating_point: lambda q: False,
    torch.is_complex: lambda q: False,
    torch.Tensor.share_memory_: lambda q: q.share_memory_(),
    torch.Tensor.requires_grad_: lambda q, requires_grad=True: q.requires_grad_(requires_grad),
    torch.Tensor.detach_: lambda q: q.detach_(),
}


def _refuse_integer_cast(name: str, dtype: torch.dtype):
    def refuse(q, *args, **kwargs):
        # Tensor.int() & co. would truncate the dequantized values: neither the codes nor the values.
        raise TypeError(f"QTensor.{name}() would cast a QTensor to {dtype}; {_dtype_hint(dtype)}")
    return refuse


def _dequantize(q, *args, **kwargs):
    """torch.dequantize / torch.Tensor.dequantize: a QTensor's values (a list of tensors: each one's)."""
    if isinstance(q, (list, tuple)):
        return [t.dequantize() if isinstance(t, QTensor) else torch.dequantize(t) for t in q]
    return q.dequantize(*args, **kwargs)


_INT8_FUNCTIONS.update({getattr(torch.Tensor, name): _refuse_integer_cast(name, dtype) for name, dtype in (
    ("byte", torch.uint8), ("char", torch.int8), ("short", torch.int16), ("int", torch.int32),
    ("long", torch.int64))})
_INT8_FUNCTIONS.update({torch.dequantize: _dequantize, torch.Tensor.dequantize: _dequantize})


def _flatten(q: QTensor):
    return [q.data, q.scale, q.zero_point], (q.axis, q.qmin, q.qmax)


def _unflatten(children, context) -> QTensor:
    axis, qmin, qmax = context
    return QTensor._make(children[0], children[1], children[2], axis, qmin, qmax)


# torch.load(..., weights_only=True) reads a saved QTensor (its reduce is the checking
# constructor over tensors and integers).
torch.serialization.add_safe_globals([QTensor])

def _flatten_with_keys(q: QTensor):
    # torch.export names a QTensor input's leaves by these keys (q.data, q.scale, q.zero_point).
    children, context = _flatten(q)
    keys = (pytree.GetAttrKey("data"), pytree.GetAttrKey("scale"), pytree.GetAttrKey("zero_point"))
    return list(zip(keys, children)), context


pytree.register_pytree_node(
    QTensor,
    _flatten,
    _unflatten,
    serialized_type_name="torchquant.QTensor",
    flatten_with_keys_fn=_flatten_with_keys,
)

# torch functions that keep a QTensor int8 beyond the few above: pooling, averaging, upsampling,
# activations, shape functions, cat (python/torchquant/_qfunctions.py).
from . import _qfunctions  # noqa: E402,F401
