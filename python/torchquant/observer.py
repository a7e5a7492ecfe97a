"""Observers: modules that watch tensors go by during calibration and turn what they saw into
quantization parameters (scale float32, zero_point int32).

The names, constructor arguments and defaults are torch.ao.quantization.observer's, so qconfigs
written for torch.ao port over unchanged, and for the same data and arguments the min/max
family gives torch.ao's qparams bit for bit (HistogramObserver: scale within 1%). The
statistics are gathered by fused torchquant ops (one pass over the data, no host sync) and live
in registered buffers, so they survive ``state_dict()`` / ``load_state_dict()`` and move with
``.to(device)``.

    >>> obs = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    >>> _ = obs(torch.tensor([-1.0, 0.5, 2.0]))
    >>> obs.calculate_qparams()
    (tensor([0.0157]), tensor([0], dtype=torch.int32))

Differences from torch.ao, on purpose:

- NaN in the data is skipped and counted (torch.ao lets it poison min/max), with one warning.
- +-Inf is clipped: it does not widen the range (torch.ao's HistogramObserver ignores it too;
  its min/max observers would give an infinite scale). At quantization an infinite value
  saturates to quant_min / quant_max. It is counted, with one warning.
- No data (nothing observed, or only NaN / Inf) raises at ``calculate_qparams()``, naming the
  observer; torch.ao warns and returns scale 1.0, zero_point 0.
- ``reduce_range`` is accepted and honoured, to give torch.ao's numbers, but torchquant's int8
  kernels never saturate on full 8-bit activations, so it only costs precision here.
"""
import functools
import math
import operator
import threading
import warnings
from abc import ABC, abstractmethod
from functools import partial
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

from . import _ops  # noqa: F401  (registers the ops)

__all__ = [
    "ObserverBase",
    "UniformQuantizationObserverBase",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "HistogramObserver",
    "PercentileObserver",
    "MSEObserver",
    "PlaceholderObserver",
    "NoopObserver",
    "RecordingObserver",
    "FixedQParamsObserver",
    "ReuseInputObserver",
    "default_observer",
    "default_placeholder_observer",
    "default_debug_observer",
    "default_weight_observer",
    "weight_observer_range_neg_127_to_127",
    "default_histogram_observer",
    "default_per_channel_weight_observer",
    "per_channel_weight_observer_range_neg_127_to_127",
    "default_dynamic_quant_observer",
    "default_float_qparams_observer",
    "default_float_qparams_observer_4bit",
    "default_fixed_qparams_range_neg1to1_observer",
    "default_fixed_qparams_range_0to1_observer",
    "default_symmetric_fixed_qparams_observer",
    "default_affine_fixed_qparams_observer",
    "default_reuse_input_observer",
]

ops = torch.ops.torchquant
# The overloads the forwards call, resolved once (each call would look them up by name again).
_observe_minmax_ = ops.observe_minmax_.default
_histogram_ = ops.histogram_.default
_INF = float("inf")
_EPS = torch.finfo(torch.float32).eps


class _PartialWrapper:
    """A constructor with some arguments bound, as torch.ao's ``with_args`` returns: each call
    builds a fresh instance."""

    def __init__(self, p):
        self.p = p
        self.callable_args = {}

    def __call__(self, *args, **keywords):
        for name, fn in self.callable_args.items():
            if name not in keywords:
                keywords = {**keywords, name: fn()}
        return self.p(*args, **keywords)

    def __repr__(self):
        return self.p.__repr__() + self.callable_args.__repr__()

    def with_args(self, **kwargs):
        return _with_args(self, **kwargs)

    def with_callable_args(self, **kwargs):
        result = _PartialWrapper(p=self.p)
        result.callable_args = {**self.callable_args, **kwargs}
        return result


def _with_args(cls_or_self, **kwargs):
    """``Observer.with_args(**kwargs)``: a factory of observers with these arguments.

    >>> factory = MinMaxObserver.with_args(dtype=torch.qint8)
    >>> factory() is factory()
    False
    """
    return _PartialWrapper(partial(cls_or_self, **kwargs))


def _with_callable_args(cls_or_self, **kwargs):
    return _PartialWrapper(partial(cls_or_self)).with_callable_args(**kwargs)


def _float32_factory(factory_kwargs) -> dict:
    """torch.nn.factory_kwargs without a dtype: the observers' statistics and eps are float32, as
    torchquant's ops read and write them (a float64 there failed at the first forward; torch.ao,
    computing in Python, keeps any dtype)."""
    kw = torch.nn.factory_kwargs(factory_kwargs)
    kw.pop("dtype", None)
    return kw


def _int_arg(name: str, v, owner: str = "", integral_float: bool = False) -> int:
    """An integer argument (numpy integers too; with ``integral_float`` an integral float, such
    as torch.ao's quant_max=255.0); else a TypeError naming it (and ``owner``). A bool is no int
    here (True would be 1 without a word)."""
    if integral_float and isinstance(v, float) and v.is_integer():
        return int(v)
    try:
        if isinstance(v, bool):
            raise TypeError
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{owner + ': ' if owner else ''}argument '{name}' must be an int, got {v!r}") from None


def _calculate_qmin_qmax(quant_min, quant_max, has_customized_qrange, dtype, reduce_range):
    """torch.ao.quantization.utils.calculate_qmin_qmax, quirks included: a customized range is
    halved by reduce_range too."""
    if has_customized_qrange:
        qrange_len = quant_max - quant_min + 1
        if dtype in (torch.qint8, torch.int8) and not 0 < qrange_len <= 256:
            raise ValueError(f"quant_min/quant_max span {qrange_len} values; at most 256 fit {dtype}")
        if dtype in (torch.qint32, torch.int32) and not 0 < qrange_len <= 2**32:
            raise ValueError(f"quant_min/quant_max span {qrange_len} values; at most 2**32 fit {dtype}")
        if reduce_range:
            quant_min, quant_max = quant_min // 2, quant_max // 2
        return quant_min, quant_max
    if dtype in (torch.qint8, torch.int8):
        return (-64, 63) if reduce_range else (-128, 127)
    if dtype in (torch.quint8, torch.uint8):
        return (0, 127) if reduce_range else (0, 255)
    if dtype in (torch.qint32, torch.int32):
        return -(2**31), 2**31 - 1
    if dtype == torch.uint16:
        return 0, 2**16 - 1
    if dtype == torch.int16:
        return -(2**15), 2**15 - 1
    return 0, 15


_ALLOWED_DTYPES = (torch.qint8, torch.quint8, torch.quint4x2, torch.qint32, torch.int8, torch.uint8,
                   torch.int16, torch.int32, torch.uint16)
# The values each dtype stores: a custom [quant_min, quant_max] must lie inside.
_DTYPE_RANGE = {torch.qint8: (-128, 127), torch.int8: (-128, 127), torch.quint8: (0, 255), torch.uint8: (0, 255),
                torch.quint4x2: (0, 15), torch.qint32: (-(2**31), 2**31 - 1), torch.int32: (-(2**31), 2**31 - 1),
                torch.int16: (-(2**15), 2**15 - 1), torch.uint16: (0, 2**16 - 1)}
_PER_TENSOR = (torch.per_tensor_affine, torch.per_tensor_symmetric)
_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams)
_SYMMETRIC = (torch.per_tensor_symmetric, torch.per_channel_symmetric)


def _observed_values(x: torch.Tensor) -> torch.Tensor:
    """x, or for a nested tensor (torch's transformer encoder fast path hands them between its
    layers in eval mode without grad when given a padding mask) its values without the padding,
    as one flat tensor."""
    if not x.is_nested:
        return x
    parts = [t.reshape(-1) for t in x.unbind()]
    return torch.cat(parts) if parts else x.new_zeros(0)


def _keeps_dtype(t: torch.Tensor) -> bool:
    return t.dtype == torch.float32 or not (t.is_floating_point() or t.is_complex())


def _apply_keeping_float32(module: nn.Module, apply, fn, *args, **kwargs):
    """``apply(fn, ...)`` (nn.Module._apply) with the module's own float32 and integer buffers
    kept in their dtype: the float32 ones are statistics and qparams that torchquant's ops read
    and write as float32 only, so a cast of the whole model (``.double()``, ``.half()``,
    ``.to(torch.bfloat16)``) moves them to the new device but leaves their dtype, and their
    values, as they were (torch.ao's observers, computing in Python, run in any dtype). The
    integer ones (int8 / uint8 weight codes, int32 zero points, counters, flags) are cast by
    ``.type(torch.float32)`` / ``.type(torch.FloatTensor)`` alone, which casts every tensor:
    a float model's no-op, which would break every int8 kernel here."""
    return _apply_keeping(module, _keeps_dtype, apply, fn, *args, **kwargs)


def _apply_keeping_integers(module: nn.Module, apply, fn, *args, **kwargs):
    """``apply(fn, ...)`` with the module's own integer buffers kept in their dtype, for a
    module whose float buffers follow the model's dtype (a quantized embedding's output
    dtype)."""
    return _apply_keeping(module, lambda t: not (t.is_floating_point() or t.is_complex()), apply, fn, *args,
                          **kwargs)


def _apply_keeping(module: nn.Module, keep, apply, fn, *args, **kwargs):
    kept = {k: b for k, b in module._buffers.items() if b is not None and keep(b)}
    apply(fn, *args, **kwargs)
    for k, before in kept.items():
        after = module._buffers.get(k)
        if after is not None and after.dtype != before.dtype:
            # (the values as they were: int32 -> float32 -> int32 would round past 2**24)
            module._buffers[k] = before.to(after.device)
    return module


def _update_lock(module: nn.Module) -> threading.RLock:
    """The module's own lock, made at first use. It lives in ``__dict__`` (not a buffer, so not
    in the state dict) and is left out by ``_LockedState.__getstate__`` (a lock cannot be
    pickled or deep-copied; the copy makes its own)."""
    lock = module.__dict__.get("_tq_update_lock")
    if lock is None:
        # dict.setdefault is atomic: two threads racing here end up with the same lock.
        lock = module.__dict__.setdefault("_tq_update_lock", threading.RLock())
    return lock


def _synchronized(fn):
    """Runs a method under its module's lock. torch.ops calls release the GIL, so two threads in
    one observer's forward interleave its read-modify-write of the statistics (a histogram lost
    counts, a per-channel observer's two-step resize was seen half done). Reentrant, so that a
    locked method may call another. Not taken while torch.compile traces: a graph has no lock."""

    @functools.wraps(fn)
    def locked(self, *args, **kwargs):
        if torch.compiler.is_compiling():
            return fn(self, *args, **kwargs)
        with _update_lock(self):
            return fn(self, *args, **kwargs)

    locked._tq_synchronized = True
    return locked


class _LockedState:
    """Mixin: ``forward``, ``calculate_qparams``, ``reset_min_max_vals`` and state-dict loading,
    wherever a subclass defines them, run under one lock per instance, so that calls on one
    shared observer from several threads do not interleave."""

    _SYNCHRONIZED = ("forward", "calculate_qparams", "reset_min_max_vals", "_load_from_state_dict")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in cls._SYNCHRONIZED:
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "_tq_synchronized", False):
                setattr(cls, name, _synchronized(fn))

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state.pop("_tq_update_lock", None)
        state.pop("_tq_eps", None)
        return state


class ObserverBase(_LockedState, ABC, nn.Module):
    """Base of every observer: ``forward(x)`` records statistics and returns x unchanged;
    ``calculate_qparams()`` returns (scale, zero_point). Its float32 buffers stay float32 when
    the model is cast to another dtype. One instance may be shared by threads: each call of
    ``forward`` / ``calculate_qparams`` / ``reset_min_max_vals`` / ``load_state_dict`` on it is
    atomic with respect to the others (a lock per observer)."""

    def _apply(self, fn, *args, **kwargs):
        return _apply_keeping_float32(self, super()._apply, fn, *args, **kwargs)

    def __init__(self, dtype, is_dynamic: bool = False):
        super().__init__()
        self.dtype = dtype
        self.is_dynamic = is_dynamic
        # Set by torchquant.calibrate / sync_observers so errors can say which observer failed.
        self.observer_name: Optional[str] = None

    @abstractmethod
    def forward(self, x):
        pass

    @abstractmethod
    def calculate_qparams(self, **kwargs):
        pass

    def has_data(self) -> bool:
        """True once the observer holds the statistics calculate_qparams needs."""
        return False

    def _describe(self) -> str:
        name = type(self).__name__
        return f"{name} '{self.observer_name}'" if self.observer_name else name

    with_args = classmethod(_with_args)
    with_callable_args = classmethod(_with_callable_args)


class UniformQuantizationObserverBase(ObserverBase):
    """Shared by the observers that compute an affine or symmetric uniform quantization:
    checks the arguments as torch.ao does, owns ``eps`` and the NaN / Inf counters
    (``nonfinite_count``, int64 [2]), and turns a (min, max) range into qparams with
    ``torch.ops.torchquant.choose_qparams``."""

    _version = 3  # torch.ao's state_dict version, so its checkpoints load here

    def __init__(self, dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=False,
                 quant_min=None, quant_max=None, factory_kwargs=None, eps=_EPS, is_dynamic=False, **kwargs):
        factory_kwargs = _float32_factory(factory_kwargs)
        super().__init__(dtype=dtype, is_dynamic=is_dynamic, **kwargs)
        if qscheme not in _PER_TENSOR + _PER_CHANNEL:
            raise ValueError(f"argument 'qscheme' must be one of {_PER_TENSOR + _PER_CHANNEL}, got {qscheme}")
        if dtype not in _ALLOWED_DTYPES:
            raise ValueError(f"argument 'dtype' must be one of {_ALLOWED_DTYPES}, got {dtype}")
        self.qscheme = qscheme
        self.reduce_range = reduce_range
        try:
            ok = math.isfinite(float(eps)) and float(eps) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:  # (a zero / negative eps gave scale 0 and a NaN or infinite zero point)
            raise ValueError(f"argument 'eps' must be > 0 and finite, got {eps!r}")
        self.register_buffer("eps", torch.tensor([float(eps)], **factory_kwargs))
        if quant_min is not None:
            quant_min = _int_arg("quant_min", quant_min, integral_float=True)
        if quant_max is not None:
            quant_max = _int_arg("quant_max", quant_max, integral_float=True)
        self.has_customized_qrange = quant_min is not None and quant_max is not None
        # Order first: for [10, 5] the fault is min > max, not that 0 lies outside.
        if self.has_customized_qrange and quant_min >= quant_max:
            raise ValueError(f"quant_min must be < quant_max, got quant_min={quant_min}, quant_max={quant_max}")
        if self.has_customized_qrange and not quant_min <= 0 <= quant_max:
            raise ValueError(f"quant_min/quant_max must include 0, got [{quant_min}, {quant_max}]")
        lo_hi = _DTYPE_RANGE.get(dtype)
        if self.has_customized_qrange and lo_hi is not None and not lo_hi[0] <= quant_min <= quant_max <= lo_hi[1]:
            # (torch.ao accepts these and converts to codes the dtype cannot hold)
            raise ValueError(f"quant_min={quant_min}, quant_max={quant_max} do not fit dtype {dtype} "
                             f"([{lo_hi[0]}, {lo_hi[1]}])")
        self.quant_min, self.quant_max = _calculate_qmin_qmax(
            quant_min, quant_max, self.has_customized_qrange, dtype, reduce_range)
        if self.quant_min >= self.quant_max:
            raise ValueError(f"reduce_range=True halves [quant_min, quant_max] = [{quant_min}, {quant_max}] to "
                             f"[{self.quant_min}, {self.quant_max}]: a single level; widen the range or pass "
                             f"reduce_range=False")
        if qscheme in _SYMMETRIC and reduce_range and dtype in (torch.quint8, torch.uint8):
            # torch.ao refuses this too: the symmetric zero point 128 would lie outside [0, 127].
            raise NotImplementedError("Cannot reduce range for symmetric quantization for quint8")
        self.register_buffer("nonfinite_count", torch.zeros(2, dtype=torch.int64, device=factory_kwargs.get("device")))
        self._warned_nonfinite = False

    # torch.ao's zero point for symmetric schemes: 0 for signed types, the middle for unsigned.
    def _symmetric_zero_point(self) -> int:
        if self.dtype in (torch.quint8, torch.uint8):
            return (self.quant_min + self.quant_max) // 2 if self.has_customized_qrange else 128
        if self.dtype == torch.uint16:
            return 2**15
        return 0

    def _qparams(self, min_val: torch.Tensor, max_val: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """torch.ao's _calculate_qparams on an observed range; per tensor results have shape [1]."""
        if self.qscheme == torch.per_channel_affine_float_qparams:
            # Embedding tables: a float zero point, as torch.ao returns it.
            scale = (max_val - min_val) / float(self.quant_max - self.quant_min)
            scale = torch.where(scale > self.eps, scale, torch.ones_like(scale))
            return scale, -1 * min_val / scale
        scale, zp = ops.choose_qparams(min_val, max_val, self.quant_min, self.quant_max,
                                       self.qscheme in _SYMMETRIC, self._eps_value(), self._symmetric_zero_point())
        if scale.dim() == 0:
            scale, zp = scale.reshape(1), zp.reshape(1)
        return scale, zp

    def _eps_value(self) -> float:
        """``float(self.eps)``, read once per tensor off the CPU (a host sync there, which a
        fake-quant would pay at every training step): kept with the buffer it was read from and
        that buffer's version, so an assignment, ``load_state_dict`` or in-place change of
        ``eps`` is read again (a write through ``eps.data``, which bumps no version, is not; nor
        is an inference tensor's, which has no version: it is read each time)."""
        eps = self._buffers["eps"]
        if eps.is_cpu or torch.compiler.is_compiling():
            return float(eps)
        try:
            version = eps._version
        except RuntimeError:  # an inference tensor (the observer made under torch.inference_mode)
            return float(eps)
        seen = self.__dict__.get("_tq_eps")
        if seen is not None and seen[0] is eps and seen[1] == version:
            return seen[2]
        value = float(eps)
        self.__dict__["_tq_eps"] = (eps, version, value)
        return value

    @_synchronized
    def _step_qparams(self):
        """The qparams a fake-quant's training step takes, just after this observer saw the
        step's batch: ``calculate_qparams()`` on the CPU (and for a subclass that defines its
        own), where its checks read the statistics for free. Elsewhere the same numbers without
        the checks, each of which would be a host sync per step: the non-finite warning, and
        the error for no finite data (a batch of NaN / Inf only, or a channel with no finite
        value, so far), come from the next ``calculate_qparams()`` (convert's, or the user's);
        until then such a range [+inf, -inf] gives scale ``eps`` and zero point 0
        (``choose_qparams`` reads it as [0, 0]). Only for a class that names its
        ``calculate_qparams`` as ``_step_checks_of`` (min/max observers: their qparams are
        ``_qparams(min_val, max_val)`` once the checks pass)."""
        b, cls = self._buffers, type(self)
        lo = b.get("min_val")
        if (lo is None or lo.is_cpu or lo.numel() == 0 or cls._step_checks_of is None
                or cls.calculate_qparams is not cls._step_checks_of):
            return self.calculate_qparams()
        return self._qparams(lo, b["max_val"])

    # The calculate_qparams whose host-side checks _step_qparams leaves out off the CPU
    _step_checks_of = None

    def _prepare_stats(self, x: torch.Tensor) -> None:
        """What ``forward(x)`` does to the statistics before it reads ``x``: checks, sizing."""

    @_synchronized
    def _forward_where(self, x_orig: torch.Tensor, enabled: torch.Tensor) -> torch.Tensor:
        """``forward(x_orig)`` where the bool tensor ``enabled`` (one element, on the statistics'
        device) is True; else the statistics stay as they were, bit for bit. Chosen on the
        device, with no host read: the observer of a fake-quant whose enable flag lives on a
        GPU."""
        if x_orig.numel() == 0:
            return x_orig
        self._prepare_stats(x_orig)
        b = self._buffers
        before = {k: t.clone() for k, t in b.items() if t is not None and k != "eps"}
        self.forward(x_orig)
        for k, old in before.items():
            b[k].copy_(torch.where(enabled, b[k], old))
        return x_orig

    def _check_nonfinite(self):
        if self._warned_nonfinite:
            return
        nan, inf = (int(v) for v in self.nonfinite_count.tolist())
        if nan or inf:
            self._warned_nonfinite = True
            warnings.warn(
                f"{self._describe()}: the calibration data held {nan} NaN and {inf} +-Inf values; they were "
                "left out of the statistics (infinite values saturate at quantization)", RuntimeWarning, stacklevel=3)

    def _after_forward(self):
        # Reading the counters is free on the CPU; elsewhere it would cost a host sync, so the
        # warning waits for calculate_qparams there. Called on every forward: buffers are read
        # from _buffers directly (nn.Module.__getattr__ costs about a microsecond each).
        if self._warned_nonfinite:
            return
        counts = self._buffers["nonfinite_count"]
        if counts.is_cpu and any(counts.tolist()):
            self._check_nonfinite()

    def _no_data_error(self, detail: str = ""):
        nan, inf = (int(v) for v in self.nonfinite_count.tolist())
        seen = f" (it skipped {nan} NaN and {inf} +-Inf values)" if nan or inf else ""
        return RuntimeError(
            f"{self._describe()} has observed no finite data{seen}{detail}: run calibration data through the "
            "model (torchquant.calibrate) before calculate_qparams() / convert")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        version = local_metadata.get("version", None)
        if (version is None or version == 1) and prefix + "eps" not in state_dict:
            # (eps became a buffer in version 2; a dict without metadata that has one keeps it:
            # a plain dict(...) or a safetensors file of a version-3 state dict)
            state_dict[prefix + "eps"] = torch.tensor([_EPS])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        # torch.ao's checkpoints have no NaN / Inf counters: start them at zero.
        key = prefix + "nonfinite_count"
        if key in missing_keys and key not in state_dict:
            missing_keys.remove(key)

    @staticmethod
    def _as_float(x: torch.Tensor) -> torch.Tensor:
        x = _observed_values(x.detach())
        if x.is_complex():  # (.float() would keep the real parts with one warning per process)
            raise TypeError(f"argument 'x' of an observer must be a real tensor, got {x.dtype}")
        return x if x.is_floating_point() else x.float()

    def reset_min_max_vals(self):
        raise NotImplementedError(f"{type(self).__name__} cannot reset its statistics")


class MinMaxObserver(UniformQuantizationObserverBase):
    """Running minimum and maximum of everything observed (torch.ao's MinMaxObserver).

    Args: dtype, qscheme (per_tensor_affine / per_tensor_symmetric), reduce_range,
    quant_min, quant_max, factory_kwargs, eps, is_dynamic: as in torch.ao.

    >>> obs = MinMaxObserver()
    >>> _ = obs(torch.tensor([-1.0, 3.0]))
    >>> obs.calculate_qparams()
    (tensor([0.0157]), tensor([64], dtype=torch.int32))
    """

    def __init__(self, dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=False, quant_min=None,
                 quant_max=None, factory_kwargs=None, eps=_EPS, is_dynamic=False, **kwargs):
        if qscheme not in _PER_TENSOR:
            raise NotImplementedError(f"{type(self).__name__} supports per_tensor_affine and per_tensor_symmetric, "
                                      f"got {qscheme}")
        super().__init__(dtype=dtype, qscheme=qscheme, reduce_range=reduce_range, quant_min=quant_min,
                         quant_max=quant_max, factory_kwargs=factory_kwargs, eps=eps, is_dynamic=is_dynamic, **kwargs)
        factory_kwargs = _float32_factory(factory_kwargs)
        self.register_buffer("min_val", torch.tensor(_INF, **factory_kwargs))
        self.register_buffer("max_val", torch.tensor(-_INF, **factory_kwargs))

    def _averaging_constant(self) -> Optional[float]:
        return None

    def forward(self, x_orig):
        """Records the running min/max of ``x_orig``'s finite values; returns ``x_orig``."""
        if x_orig.numel() == 0:
            return x_orig
        b = self._buffers
        _observe_minmax_(b["min_val"], b["max_val"], b["nonfinite_count"], self._as_float(x_orig), None,
                         self._averaging_constant())
        self._after_forward()
        return x_orig

    def has_data(self) -> bool:
        return bool((self.min_val <= self.max_val).all()) and self.min_val.numel() > 0

    def calculate_qparams(self):
        """(scale float32 [1], zero_point int32 [1]). Raises if no finite data was observed."""
        self._check_nonfinite()
        if not self.has_data():
            raise self._no_data_error()
        return self._qparams(self.min_val, self.max_val)

    def extra_repr(self):
        return f"min_val={self.min_val}, max_val={self.max_val}"

    def reset_min_max_vals(self):
        self.min_val.fill_(_INF)
        self.max_val.fill_(-_INF)
        self.nonfinite_count.zero_()


MinMaxObserver._step_checks_of = MinMaxObserver.calculate_qparams


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Moving averages of the batches' minima and maxima: ``m += c * (batch_min - m)``, the
    first batch setting them (torch.ao's MovingAverageMinMaxObserver).

    >>> obs = MovingAverageMinMaxObserver(averaging_constant=0.5)
    >>> _ = obs(torch.tensor([0.0, 2.0])); _ = obs(torch.tensor([0.0, 4.0]))
    >>> obs.max_val
    tensor(3.)
    """

    def __init__(self, averaging_constant=0.01, dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                 reduce_range=False, quant_min=None, quant_max=None, eps=_EPS, is_dynamic=False, **kwargs):
        if not 0.0 <= averaging_constant <= 1.0:
            raise ValueError(f"argument 'averaging_constant' must lie in [0, 1], got {averaging_constant}")
        if is_dynamic and averaging_constant != 1:
            raise NotImplementedError("MovingAverageMinMaxObserver supports dynamic quantization only with "
                                      f"averaging_constant=1, got {averaging_constant}")
        self.averaging_constant = averaging_constant
        super().__init__(dtype=dtype, qscheme=qscheme, reduce_range=reduce_range, quant_min=quant_min,
                         quant_max=quant_max, eps=eps, is_dynamic=is_dynamic, **kwargs)

    def _averaging_constant(self):
        return float(self.averaging_constant)


class PerChannelMinMaxObserver(UniformQuantizationObserverBase):
    """Running min/max per channel of ``ch_axis`` (torch.ao's PerChannelMinMaxObserver). The
    buffers hold no channel until the first batch (or a loaded state_dict) sets their length.

    >>> obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    >>> _ = obs(torch.tensor([[1.0, -2.0], [0.5, 0.25]]))
    >>> obs.calculate_qparams()[0]
    tensor([0.0157, 0.0039])
    """

    def __init__(self, ch_axis=0, dtype=torch.quint8, qscheme=torch.per_channel_affine, reduce_range=False,
                 quant_min=None, quant_max=None, factory_kwargs=None, eps=_EPS, is_dynamic=False, **kwargs):
        if qscheme not in _PER_CHANNEL:
            raise NotImplementedError(f"{type(self).__name__} supports {_PER_CHANNEL}, got {qscheme}")
        if is_dynamic:
            raise NotImplementedError(f"{type(self).__name__} doesn't support dynamic quantization")
        super().__init__(dtype=dtype, qscheme=qscheme, reduce_range=reduce_range, quant_min=quant_min,
                         quant_max=quant_max, factory_kwargs=factory_kwargs, eps=eps, is_dynamic=is_dynamic, **kwargs)
        factory_kwargs = _float32_factory(factory_kwargs)
        self.ch_axis = _int_arg("ch_axis", ch_axis)
        self.register_buffer("min_val", torch.tensor([], **factory_kwargs))
        self.register_buffer("max_val", torch.tensor([], **factory_kwargs))

    def _averaging_constant(self) -> Optional[float]:
        return None

    def _ensure_channels(self, channels: int):
        if self.min_val.numel() == 0:
            self.min_val.resize_(channels).fill_(_INF)
            self.max_val.resize_(channels).fill_(-_INF)
        elif self.min_val.numel() != channels:
            raise ValueError(f"{self._describe()} has statistics for {self.min_val.numel()} channels but its "
                             f"input has {channels} along ch_axis={self.ch_axis}")

    def _prepare_stats(self, x_orig):
        if x_orig.dim() == 0 or not -x_orig.dim() <= self.ch_axis < x_orig.dim():
            raise ValueError(f"{self._describe()}: ch_axis={self.ch_axis} is out of range for an input with "
                             f"{x_orig.dim()} dimensions")
        self._ensure_channels(x_orig.shape[self.ch_axis])

    def forward(self, x_orig):
        """Records per-channel running min/max of ``x_orig``'s finite values; returns ``x_orig``."""
        if x_orig.numel() == 0:
            return x_orig
        self._prepare_stats(x_orig)
        b = self._buffers
        _observe_minmax_(b["min_val"], b["max_val"], b["nonfinite_count"], self._as_float(x_orig), self.ch_axis,
                         self._averaging_constant())
        self._after_forward()
        return x_orig

    def has_data(self) -> bool:
        return self.min_val.numel() > 0 and bool((self.min_val <= self.max_val).all())

    def calculate_qparams(self):
        """(scale float32 [C], zero_point int32 [C]). Raises if any channel saw no finite data."""
        self._check_nonfinite()
        if self.min_val.numel() == 0:
            raise self._no_data_error()
        empty = (~(self.min_val <= self.max_val)).nonzero().flatten().tolist()
        if empty:
            shown = ", ".join(str(c) for c in empty[:10]) + (", ..." if len(empty) > 10 else "")
            raise self._no_data_error(f" in channel(s) {shown} of {self.min_val.numel()}")
        return self._qparams(self.min_val, self.max_val)

    def extra_repr(self):
        return f"min_val={self.min_val}, max_val={self.max_val}"

    def reset_min_max_vals(self):
        self.min_val.resize_(0)
        self.max_val.resize_(0)
        self.nonfinite_count.zero_()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        version = local_metadata.get("version")
        old_names = version is not None and version < 3  # torch.ao once called them min_vals / max_vals
        got = {name: state_dict.get(prefix + (name + "s" if old_names else name)) for name in ("min_val", "max_val")}
        bad = [f"{prefix}{n} has shape {tuple(t.shape)}" for n, t in got.items()
               if isinstance(t, torch.Tensor) and t.dim() != 1]
        if not bad and all(isinstance(t, torch.Tensor) for t in got.values()) \
                and got["min_val"].shape != got["max_val"].shape:
            bad = [f"{prefix}min_val has {got['min_val'].numel()} channels and {prefix}max_val "
                   f"{got['max_val'].numel()}"]
        if bad:  # one entry per channel in both, or the module is left as it was
            error_msgs.append(f"{type(self).__name__}: per-channel statistics must be 1-D with one entry per "
                              f"channel in both min_val and max_val: " + "; ".join(bad))
            return
        for name in ("min_val", "max_val"):
            key = prefix + (name + "s" if old_names else name)
            if key in state_dict:
                if old_names:
                    state_dict[prefix + name] = state_dict.pop(key)
                # The buffers have as many channels as the data seen; take the checkpoint's.
                getattr(self, name).resize_(state_dict[prefix + name].shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


PerChannelMinMaxObserver._step_checks_of = PerChannelMinMaxObserver.calculate_qparams


class MovingAveragePerChannelMinMaxObserver(PerChannelMinMaxObserver):
    """Per-channel moving averages of the batches' minima and maxima (torch.ao's
    MovingAveragePerChannelMinMaxObserver).

    >>> obs = MovingAveragePerChannelMinMaxObserver(averaging_constant=0.5, ch_axis=1)
    >>> _ = obs(torch.randn(8, 4))
    """

    def __init__(self, averaging_constant=0.01, ch_axis=0, dtype=torch.quint8, qscheme=torch.per_channel_affine,
                 reduce_range=False, quant_min=None, quant_max=None, eps=_EPS, is_dynamic=False, **kwargs):
        if not 0.0 <= averaging_constant <= 1.0:
            raise ValueError(f"argument 'averaging_constant' must lie in [0, 1], got {averaging_constant}")
        super().__init__(ch_axis=ch_axis, dtype=dtype, qscheme=qscheme, reduce_range=reduce_range,
                         quant_min=quant_min, quant_max=quant_max, eps=eps, is_dynamic=is_dynamic, **kwargs)
        self.averaging_constant = averaging_constant

    def _averaging_constant(self):
        return float(self.averaging_constant)


class HistogramObserver(UniformQuantizationObserverBase):
    """A histogram of everything observed, its range growing to cover new data as torch.ao's
    does; ``calculate_qparams`` searches the (min, max) with the least L2 quantization error
    (torch.ao's HistogramObserver; its scale within 1% here). ``upsample_rate`` (>= 1, with
    ``bins * upsample_rate <= 2**31 - 1``) is the number of parts each bin is split into when
    the range grows; a value outside that bound is an error at the first ``forward`` with data.

    >>> obs = HistogramObserver(bins=256)
    >>> _ = obs(torch.randn(10000))
    >>> scale, zero_point = obs.calculate_qparams()
    """

    def __init__(self, bins: int = 2048, dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=False,
                 quant_min=None, quant_max=None, factory_kwargs=None, eps=_EPS, is_dynamic=False,
                 upsample_rate: int = 16, **kwargs):
        if qscheme not in _PER_TENSOR:
            raise NotImplementedError(f"{type(self).__name__} supports per_tensor_affine and per_tensor_symmetric, "
                                      f"got {qscheme}")
        if is_dynamic:
            raise NotImplementedError(f"{type(self).__name__} doesn't support dynamic quantization")
        bins = _int_arg("bins", bins)  # (int(2.5) would make it 2 without a word)
        if int(bins) < 1:
            raise ValueError(f"argument 'bins' must be >= 1, got {bins}")
        super().__init__(dtype=dtype, qscheme=qscheme, reduce_range=reduce_range, quant_min=quant_min,
                         quant_max=quant_max, factory_kwargs=factory_kwargs, eps=eps, is_dynamic=is_dynamic, **kwargs)
        factory_kwargs = _float32_factory(factory_kwargs)
        self.bins = int(bins)
        self.register_buffer("histogram", torch.zeros(self.bins, **factory_kwargs))
        self.register_buffer("min_val", torch.tensor(_INF, **factory_kwargs))
        self.register_buffer("max_val", torch.tensor(-_INF, **factory_kwargs))
        self.dst_nbins = 2 ** torch.iinfo(self.dtype).bits
        self.upsample_rate = _int_arg("upsample_rate", upsample_rate)
        if self.upsample_rate < 1:
            raise ValueError(f"argument 'upsample_rate' must be >= 1, got {upsample_rate}")

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        """Adds ``x_orig``'s finite values to the histogram; returns ``x_orig``."""
        if x_orig.numel() == 0:
            return x_orig
        b = self._buffers
        _histogram_(b["histogram"], b["min_val"], b["max_val"], b["nonfinite_count"], self._as_float(x_orig),
                    self.upsample_rate)
        self._after_forward()
        return x_orig

    def has_data(self) -> bool:
        return bool(self.min_val <= self.max_val)

    def _range(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The (min, max) handed to choose_qparams."""
        return self._non_linear_param_search()

    def calculate_qparams(self):
        """(scale float32 [1], zero_point int32 [1]). Raises if no finite data was observed."""
        self._check_nonfinite()
        if not self.has_data():
            raise self._no_data_error()
        if self.histogram.numel() != self.bins:
            raise ValueError(f"{self._describe()}: the histogram has {self.histogram.numel()} bins, "
                             f"expected bins={self.bins}")
        new_min, new_max = self._range()
        return self._qparams(new_min, new_max)

    # ---- torch.ao's L2 search, step for step (float32 where torch.ao computes in float32);
    # the cumulative sum is walked as a numpy array instead of one tensor index per step.
    def _get_norm(self, delta_begin, delta_end, density):
        norm = (delta_end * delta_end * delta_end - delta_begin * delta_begin * delta_begin) / 3
        return density * norm

    def _compute_quantization_error(self, hist, lo: float, hi: float, next_start_bin: int, next_end_bin: int):
        bin_width = (hi - lo) / self.bins
        dst_bin_width = bin_width * (next_end_bin - next_start_bin + 1) / self.dst_nbins
        if dst_bin_width == 0.0:
            return 0.0
        src_bin = torch.arange(self.bins, device=hist.device)
        src_bin_begin = (src_bin - next_start_bin) * bin_width
        src_bin_end = src_bin_begin + bin_width
        dst_bin_of_begin = torch.clamp(torch.div(src_bin_begin, dst_bin_width, rounding_mode="floor"), 0,
                                       self.dst_nbins - 1)
        dst_bin_of_begin_center = (dst_bin_of_begin + 0.5) * dst_bin_width
        dst_bin_of_end = torch.clamp(torch.div(src_bin_end, dst_bin_width, rounding_mode="floor"), 0,
                                     self.dst_nbins - 1)
        density = hist / bin_width
        norm = torch.zeros(self.bins, device=hist.device)
        delta_begin = src_bin_begin - dst_bin_of_begin_center
        delta_end = dst_bin_width / 2
        norm += self._get_norm(delta_begin, torch.ones(self.bins, device=hist.device) * delta_end, density)
        norm += (dst_bin_of_end - dst_bin_of_begin - 1) * self._get_norm(
            torch.tensor(-dst_bin_width / 2), torch.tensor(dst_bin_width / 2), density)
        dst_bin_of_end_center = dst_bin_of_end * dst_bin_width + dst_bin_width / 2
        norm += self._get_norm(torch.tensor(-dst_bin_width / 2), src_bin_end - dst_bin_of_end_center, density)
        return norm.sum().item()

    def _non_linear_param_search(self) -> Tuple[torch.Tensor, torch.Tensor]:
        # On the CPU whatever the observer's device: the search is sequential, and ATen's CUDA
        # division by a Python number multiplies by its reciprocal, which would give other bits.
        hist = self.histogram.detach().cpu()
        mn, mx = self.min_val.detach().cpu(), self.max_val.detach().cpu()
        lo, hi = float(mn), float(mx)
        bin_width = (mx - mn) / self.bins
        total = torch.sum(hist).item()
        csum = torch.cumsum(hist, dim=0).numpy()
        f32 = np.float32
        stepsize, alpha, beta = 1e-5, 0.0, 1.0
        start_bin, end_bin = 0, self.bins - 1
        norm_min = _INF
        while alpha < beta:
            next_alpha, next_beta = alpha + stepsize, beta - stepsize
            # torch compares a float32 element with a Python float in float32: so does this.
            a_thr, b_thr = f32(next_alpha * total), f32(next_beta * total)
            left, right = start_bin, end_bin
            while left < end_bin and csum[left] < a_thr:
                left += 1
            while right > start_bin and csum[right] > b_thr:
                right -= 1
            next_start_bin, next_end_bin = start_bin, end_bin
            if (left - start_bin) > (end_bin - right):
                next_start_bin, alpha = left, next_alpha
            else:
                next_end_bin, beta = right, next_beta
            if next_start_bin == start_bin and next_end_bin == end_bin:
                continue
            norm = self._compute_quantization_error(hist, lo, hi, next_start_bin, next_end_bin)
            if norm > norm_min:
                break
            norm_min, start_bin, end_bin = norm, next_start_bin, next_end_bin
        new_min = mn + bin_width * start_bin
        new_max = mn + bin_width * (end_bin + 1)
        return new_min.to(self.min_val.device), new_max.to(self.min_val.device)

    def extra_repr(self):
        return f"bins={self.bins}, min_val={self.min_val}, max_val={self.max_val}"

    def reset_min_max_vals(self):
        self.histogram.zero_()
        self.min_val.fill_(_INF)
        self.max_val.fill_(-_INF)
        self.nonfinite_count.zero_()


class PercentileObserver(HistogramObserver):
    """Clips outliers: the range runs from the ``(100 - percentile)``-th to the
    ``percentile``-th percentile of the observed values, read from the histogram (linear
    inside a bin). Symmetric schemes then take the larger magnitude of the two.

    >>> obs = PercentileObserver(percentile=99.9, dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    >>> _ = obs(torch.cat([torch.randn(100000), torch.tensor([1000.0])]))
    >>> bool(obs.calculate_qparams()[0] < 0.05)  # the outlier does not set the scale
    True
    """

    def __init__(self, percentile: float = 99.99, bins: int = 2048, dtype=torch.quint8,
                 qscheme=torch.per_tensor_affine, reduce_range=False, quant_min=None, quant_max=None,
                 factory_kwargs=None, eps=_EPS, **kwargs):
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"argument 'percentile' must lie in (50, 100], got {percentile}")
        super().__init__(bins=bins, dtype=dtype, qscheme=qscheme, reduce_range=reduce_range, quant_min=quant_min,
                         quant_max=quant_max, factory_kwargs=factory_kwargs, eps=eps, **kwargs)
        self.percentile = float(percentile)

    def _quantile(self, csum: torch.Tensor, hist: torch.Tensor, q: float, lo: float, width: float) -> float:
        target = q * float(csum[-1])
        b = int(torch.searchsorted(csum, torch.tensor([target], dtype=csum.dtype)).clamp(max=self.bins - 1))
        before = float(csum[b - 1]) if b > 0 else 0.0
        inside = float(hist[b])
        frac = (target - before) / inside if inside > 0 else 0.0
        return lo + width * (b + min(max(frac, 0.0), 1.0))

    def _range(self):
        hist = self.histogram.detach().double().cpu()
        lo, hi = float(self.min_val), float(self.max_val)
        if lo == hi:
            return self.min_val, self.max_val
        csum = torch.cumsum(hist, 0)
        width = (hi - lo) / self.bins
        q = self.percentile / 100.0
        new_lo = max(lo, self._quantile(csum, hist, 1.0 - q, lo, width))
        new_hi = min(hi, self._quantile(csum, hist, q, lo, width))
        dev = self.min_val.device
        return torch.tensor(new_lo, device=dev), torch.tensor(max(new_hi, new_lo), device=dev)


class MSEObserver(HistogramObserver):
    """Clips outliers where that lowers the error: tries ``num_candidates`` ranges
    ``[a * min, a * max]`` for a in (0, 1] and keeps the one whose quantize-dequantize mean
    squared error over the observed histogram (each bin's count spread evenly over the bin,
    the error integrated exactly) is least.

    >>> obs = MSEObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    >>> _ = obs(torch.cat([torch.randn(100000), torch.tensor([10.0])]))
    >>> bool(obs.calculate_qparams()[0] < 0.07)  # the full range would give 10 / 127.5 = 0.078
    True
    """

    def __init__(self, num_candidates: int = 100, bins: int = 2048, dtype=torch.quint8,
                 qscheme=torch.per_tensor_affine, reduce_range=False, quant_min=None, quant_max=None,
                 factory_kwargs=None, eps=_EPS, **kwargs):
        if _int_arg("num_candidates", num_candidates) < 1:
            raise ValueError(f"argument 'num_candidates' must be >= 1, got {num_candidates}")
        super().__init__(bins=bins, dtype=dtype, qscheme=qscheme, reduce_range=reduce_range, quant_min=quant_min,
                         quant_max=quant_max, factory_kwargs=factory_kwargs, eps=eps, **kwargs)
        self.num_candidates = int(num_candidates)

    def _range(self):
        hist = self.histogram.detach().double().cpu()
        lo, hi = float(self.min_val), float(self.max_val)
        if lo == hi:
            return self.min_val, self.max_val
        a = torch.arange(1, self.num_candidates + 1, dtype=torch.float64) / self.num_candidates
        cand_lo, cand_hi = (a * lo).float(), (a * hi).float()
        scale, zp = self._qparams(cand_lo, cand_hi)
        s, z = scale.cpu().double().unsqueeze(1), zp.cpu().double().unsqueeze(1)
        # Each bin's count spread evenly over the bin, as torch.ao's L2 search assumes. F(x) is
        # the integral of the squared quantize-dequantize error from the grid's bottom to x:
        # inside the grid each step of width s contributes s^3/12, with the partial step's
        # (u^3 + s^3/8)/3 where u = x - round(x/s)*s; past either end the error grows as the
        # clip distance, (x - T)^3/3.
        edges = lo + (hi - lo) / self.bins * torch.arange(self.bins + 1, dtype=torch.float64)
        bottom, top = (self.quant_min - z) * s, (self.quant_max - z) * s
        xc = torch.minimum(torch.maximum(edges, bottom), top)
        k = torch.round(xc / s)
        u = xc - k * s
        F = k * s ** 3 / 12 + (u ** 3 + s ** 3 / 8) / 3
        F = F + torch.clamp(edges - top, min=0) ** 3 / 3 - torch.clamp(bottom - edges, min=0) ** 3 / 3
        density = hist / ((hi - lo) / self.bins)
        err = (density * (F[:, 1:] - F[:, :-1])).sum(1)
        best = int(torch.argmin(err))
        dev = self.min_val.device
        return cand_lo[best].to(dev), cand_hi[best].to(dev)


class PlaceholderObserver(ObserverBase):
    """Observes nothing; carries dtype / qscheme / range to conversion (e.g. float16, or
    dynamic quantization), as torch.ao's PlaceholderObserver."""

    def __init__(self, dtype=torch.float32, custom_op_name="", compute_dtype=None, quant_min=None, quant_max=None,
                 qscheme=None, eps=None, is_dynamic=False):
        if compute_dtype:
            is_dynamic = True
            warnings.warn("PlaceholderObserver: use is_dynamic instead of compute_dtype", DeprecationWarning,
                          stacklevel=2)
        super().__init__(dtype=dtype, is_dynamic=is_dynamic)
        self.qscheme = torch.per_tensor_affine if qscheme is None else qscheme
        self.quant_min, self.quant_max = quant_min, quant_max
        self.eps = _EPS if eps is None else eps
        self.custom_op = custom_op_name

    def forward(self, x):
        return x

    def extra_repr(self):
        return f"dtype={self.dtype}, is_dynamic={self.is_dynamic}"

    def calculate_qparams(self):
        raise RuntimeError(f"calculate_qparams should not be called for {self._describe()}")


class NoopObserver(ObserverBase):
    """Observes nothing (float16 paths), as torch.ao's NoopObserver."""

    def __init__(self, dtype=torch.float16, custom_op_name=""):
        super().__init__(dtype=dtype, is_dynamic=False)
        self.custom_op = custom_op_name

    def forward(self, x):
        return x

    def calculate_qparams(self):
        raise RuntimeError(f"calculate_qparams should not be called for {self._describe()}")


class RecordingObserver(ObserverBase):
    """Keeps a copy of every tensor observed (debugging), as torch.ao's RecordingObserver."""

    def __init__(self, dtype=torch.quint8):
        super().__init__(dtype=dtype, is_dynamic=False)
        self.tensor_val = []

    def forward(self, x):
        self.tensor_val.append(x.clone())
        return x

    def get_tensor_value(self):
        return self.tensor_val

    def calculate_qparams(self):
        raise RuntimeError(f"calculate_qparams should not be called for {self._describe()}")


class FixedQParamsObserver(ObserverBase):
    """Returns fixed qparams whatever it sees (outputs of sigmoid, tanh, ...), as torch.ao's."""

    def __init__(self, scale, zero_point, dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0,
                 quant_max=255, is_dynamic=False, **kwargs):
        if is_dynamic:
            raise NotImplementedError("FixedQParamsObserver doesn't support dynamic quantization")
        # Observers never hand out a zero, negative or non-finite scale, nor a zero point outside
        # the range (torch.ao returns these as given).
        if not quant_min < quant_max:
            raise ValueError(f"quant_min must be < quant_max, got quant_min={quant_min}, quant_max={quant_max}")
        if not (math.isfinite(float(scale)) and float(scale) > 0):
            raise ValueError(f"argument 'scale' must be > 0 and finite, got {float(scale)}")
        scale32 = float(torch.tensor(float(scale), dtype=torch.float32))
        if not (math.isfinite(scale32) and scale32 > 0):
            # The buffer is float32: 1e-50 would be stored as 0, 1e39 as inf.
            raise ValueError(f"argument 'scale' must be > 0 and finite, got {float(scale)} ({scale32} in float32)")
        if not float(zero_point).is_integer():
            raise ValueError(f"argument 'zero_point' must be an integer, got {float(zero_point)}")
        if not quant_min <= zero_point <= quant_max:
            raise ValueError(f"argument 'zero_point' must lie in [{quant_min}, {quant_max}], got {zero_point}")
        super().__init__(dtype=dtype, is_dynamic=is_dynamic)
        self.quant_min, self.quant_max, self.qscheme = quant_min, quant_max, qscheme
        self.register_buffer("scale", torch.tensor([scale], dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor([zero_point], dtype=torch.int32))

    def forward(self, x):
        return x

    def has_data(self) -> bool:
        return True

    def calculate_qparams(self):
        return self.scale, self.zero_point


class ReuseInputObserver(ObserverBase):
    """Observes nothing, as torch.ao's ReuseInputObserver. In torch.ao's FX mode it marks an
    output (of reshape, say) that reuses its input's observer; eager mode, torch.ao's and
    torchquant's, has no such sharing, so here it is a placeholder whose qparams cannot be asked
    for.

    >>> ReuseInputObserver()(torch.ones(2))
    tensor([1., 1.])
    """

    def __init__(self):
        super().__init__(torch.quint8, is_dynamic=False)

    def forward(self, x):
        return x

    def calculate_qparams(self):
        raise RuntimeError(f"calculate_qparams should not be called for {self._describe()}")


# torch.ao's default observers, same names and arguments.
default_observer = MinMaxObserver.with_args(quant_min=0, quant_max=127)
default_placeholder_observer = PlaceholderObserver
default_debug_observer = RecordingObserver
default_weight_observer = MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
weight_observer_range_neg_127_to_127 = MinMaxObserver.with_args(
    dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=-127, quant_max=127, eps=2**-12)
default_histogram_observer = HistogramObserver.with_args(quant_min=0, quant_max=127)
default_per_channel_weight_observer = PerChannelMinMaxObserver.with_args(
    dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
per_channel_weight_observer_range_neg_127_to_127 = PerChannelMinMaxObserver.with_args(
    dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-127, quant_max=127, eps=2**-12)
default_dynamic_quant_observer = PlaceholderObserver.with_args(
    dtype=torch.quint8, quant_min=0, quant_max=255, is_dynamic=True)
default_float_qparams_observer = PerChannelMinMaxObserver.with_args(
    dtype=torch.quint8, qscheme=torch.per_channel_affine_float_qparams, ch_axis=0)
default_float_qparams_observer_4bit = PerChannelMinMaxObserver.with_args(
    dtype=torch.quint4x2, qscheme=torch.per_channel_affine_float_qparams, ch_axis=0)
default_fixed_qparams_range_neg1to1_observer = FixedQParamsObserver.with_args(
    scale=2.0 / 256.0, zero_point=128, dtype=torch.quint8, quant_min=0, quant_max=255)
default_fixed_qparams_range_0to1_observer = FixedQParamsObserver.with_args(
    scale=1.0 / 256.0, zero_point=0, dtype=torch.quint8, quant_min=0, quant_max=255)
# torch.ao's older names for the two above.
default_symmetric_fixed_qparams_observer = default_fixed_qparams_range_neg1to1_observer
default_affine_fixed_qparams_observer = default_fixed_qparams_range_0to1_observer
default_reuse_input_observer = ReuseInputObserver
