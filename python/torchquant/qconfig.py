"""QConfig and the default configurations, with torch.ao.quantization's names.

A QConfig says how to observe (or fake-quantize) a module's activations and weights. Every
backend name torch.ao knows ("x86", "fbgemm", "qnnpack", "onednn") is accepted and all of them
run torchquant's kernels. One deliberate difference: torch.ao's "x86"/"fbgemm" defaults set
``reduce_range=True`` (7-bit activations) because fbgemm's AVX2 kernel saturates int16 on full
8-bit inputs; torchquant's kernels are exact for full 8-bit activations, so its defaults use the
whole range (see docs/eager_api.md).

    >>> model.qconfig = torchquant.get_default_qconfig("x86")       # per-channel weights
    >>> model.qconfig = torchquant.per_tensor_qconfig               # per-tensor weights
"""
from collections import namedtuple
from typing import Optional

import torch

from . import observer as _obs
from .fake_quantize import FakeQuantize, LearnableFakeQuantize, _PartialWithRepr

__all__ = [
    "QConfig",
    "QConfigDynamic",
    "QConfigAny",
    "qconfig_equals",
    "get_default_qconfig",
    "get_default_qat_qconfig",
    "default_qconfig",
    "per_channel_qconfig",
    "per_tensor_qconfig",
    "default_dynamic_qconfig",
    "reduce_range_dynamic_qconfig",
    "default_qat_qconfig",
    "learnable_qat_qconfig",
    "BACKENDS",
]

BACKENDS = ("x86", "fbgemm", "qnnpack", "onednn")


class QConfig(namedtuple("QConfig", ["activation", "weight"])):
    """``QConfig(activation=..., weight=...)``: each field is an observer or FakeQuantize class
    (or ``.with_args(...)`` of one), called once per module that needs it.

    >>> QConfig(activation=HistogramObserver.with_args(reduce_range=False),
    ...         weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric))
    """

    __slots__ = ()

    def __new__(cls, activation, weight):
        if isinstance(activation, torch.nn.Module) or isinstance(weight, torch.nn.Module):
            raise ValueError(
                "QConfig received an observer instance; pass the class or Class.with_args(...) so that each "
                "module gets its own observer"
            )
        for name, ctr in (("activation", activation), ("weight", weight)):
            if not callable(ctr):
                raise TypeError(f"QConfig: argument '{name}' must be an observer or FakeQuantize class, or "
                                f"Class.with_args(...), got {type(ctr).__name__} {ctr!r}")
        return super().__new__(cls, activation, weight)


QConfigDynamic = QConfig  # torch.ao keeps this alias for dynamic quantization configs
QConfigAny = Optional[QConfig]


def _ao_partial_wrapper():
    """torch.ao's with_args wrapper class (the same fields as torchquant's), or () without torch.ao."""
    try:
        from torch.ao.quantization.observer import _PartialWrapper
    except ImportError:
        return ()
    return _PartialWrapper


def _ctr_key(ctr):
    """What a ``with_args`` constructor builds, as a comparable value: the class, its bound
    positional and keyword arguments, nested wrappers (an ``observer=`` argument, a with_args of
    a with_args) unwrapped the same way. Anything else compares as itself."""
    if isinstance(ctr, _obs._PartialWrapper) or isinstance(ctr, _ao_partial_wrapper()):
        return ("with_args", _ctr_key(ctr.p.func), ctr.p.args,
                {k: _ctr_key(v) for k, v in ctr.p.keywords.items()}, dict(ctr.callable_args))
    if isinstance(ctr, _PartialWithRepr):
        return ("with_args", ctr.cls, (), {k: _ctr_key(v) for k, v in ctr.kwargs.items()},
                dict(ctr.callable_args))
    return ctr


def qconfig_equals(q1: QConfigAny, q2: QConfigAny) -> bool:
    """True if two qconfigs build the same observers / fake-quants: the same classes with the
    same ``with_args`` arguments (``with_args`` returns a new object each call, so ``==`` would
    compare identities). As torch.ao's qconfig_equals; it also sees through nested with_args,
    which torch.ao compares by identity.

    >>> qconfig_equals(QConfig(MinMaxObserver.with_args(dtype=torch.quint8), default_weight_observer),
    ...                QConfig(MinMaxObserver.with_args(dtype=torch.quint8), default_weight_observer))
    True
    """
    if q1 is None or q2 is None:
        return q1 == q2
    try:
        return _ctr_key(q1.activation) == _ctr_key(q2.activation) and _ctr_key(q1.weight) == _ctr_key(q2.weight)
    except AttributeError:
        return q1 == q2

_act_histogram = _obs.HistogramObserver.with_args(reduce_range=False)
_act_minmax = _obs.MinMaxObserver.with_args(reduce_range=False)
_weight_per_channel = _obs.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
_weight_per_tensor = _obs.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)

per_channel_qconfig = QConfig(activation=_act_histogram, weight=_weight_per_channel)
per_tensor_qconfig = QConfig(activation=_act_histogram, weight=_weight_per_tensor)
default_qconfig = QConfig(activation=_act_minmax, weight=_weight_per_tensor)
default_dynamic_qconfig = QConfig(activation=_obs.PlaceholderObserver.with_args(dtype=torch.quint8), weight=_weight_per_channel)
# Dynamic Linear layers with 7-bit activation rows (uint8 codes in [0, 127], torch.ao's x86 dynamic
# range): one bit less precision; on CPUs without AVX-512 VNNI, about 1.5x faster (DynamicLinear).
reduce_range_dynamic_qconfig = QConfig(
    activation=_obs.PlaceholderObserver.with_args(dtype=torch.quint8, quant_min=0, quant_max=127, is_dynamic=True),
    weight=_weight_per_channel)

_qat_activation = FakeQuantize.with_args(observer=_obs.MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                         dtype=torch.quint8, qscheme=torch.per_tensor_affine)
_qat_weight_per_channel = FakeQuantize.with_args(observer=_obs.MovingAveragePerChannelMinMaxObserver, quant_min=-128,
                                                 quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
_qat_weight_per_tensor = FakeQuantize.with_args(observer=_obs.MovingAverageMinMaxObserver, quant_min=-128,
                                                quant_max=127, dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
default_qat_qconfig = QConfig(activation=_qat_activation, weight=_qat_weight_per_channel)
learnable_qat_qconfig = QConfig(
    activation=LearnableFakeQuantize.with_args(observer=_obs.MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                               dtype=torch.quint8, qscheme=torch.per_tensor_affine),
    weight=LearnableFakeQuantize.with_args(observer=_obs.MovingAveragePerChannelMinMaxObserver, quant_min=-128,
                                           quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
)


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"argument 'backend' must be one of {BACKENDS}, got {backend!r}")


def get_default_qconfig(backend: str = "x86", version: int = 0) -> QConfig:
    """The static-quantization QConfig for a backend: HistogramObserver activations (uint8,
    full range) and symmetric int8 weights, per channel except for "qnnpack" (per tensor, as
    torch.ao's qnnpack default).

    >>> model.qconfig = torchquant.get_default_qconfig("fbgemm")
    """
    _check_backend(backend)
    if version != 0:
        raise ValueError(f"get_default_qconfig: argument 'version' must be 0 (as torch.ao's), got {version!r}")
    return per_tensor_qconfig if backend == "qnnpack" else per_channel_qconfig


def get_default_qat_qconfig(backend: str = "x86", version: int = 1) -> QConfig:
    """The quantization-aware-training QConfig: moving-average min/max FakeQuantize on
    activations (uint8) and weights (int8 symmetric, per channel except for "qnnpack").

    >>> model.qconfig = torchquant.get_default_qat_qconfig("x86")
    """
    _check_backend(backend)
    if version not in (0, 1):
        raise ValueError(f"get_default_qat_qconfig: argument 'version' must be 0 or 1 (as torch.ao's), got {version!r}")
    return QConfig(activation=_qat_activation, weight=_qat_weight_per_tensor if backend == "qnnpack" else _qat_weight_per_channel)

# ---- sequence models: weight-only embedding tables (torch.ao's qconfigs of the same names) ----
# One float scale and zero point per row; 8-bit (quint8) or 4-bit (quint4x2, two per byte) values.
float_qparams_weight_only_qconfig = QConfig(activation=_obs.PlaceholderObserver,
                                            weight=_obs.default_float_qparams_observer)
float_qparams_weight_only_qconfig_4bit = QConfig(activation=_obs.PlaceholderObserver,
                                                 weight=_obs.default_float_qparams_observer_4bit)
__all__ += ["float_qparams_weight_only_qconfig", "float_qparams_weight_only_qconfig_4bit"]

# ---- the rest of torch.ao's named qconfigs (not in its __all__, but imported by name) ----
from . import fake_quantize as _fq  # noqa: E402

# Static per-channel weights with min/max activations: default_qconfig's per-channel twin.
default_per_channel_qconfig = QConfig(activation=_act_minmax, weight=_weight_per_channel)
# Dynamic per-channel weights: what default_dynamic_qconfig already is here.
per_channel_dynamic_qconfig = QConfig(activation=_obs.PlaceholderObserver.with_args(dtype=torch.quint8),
                                      weight=_weight_per_channel)
# The fused-observer QAT qconfig (torch.ao's "v2"), per-channel weights as default_qat_qconfig.
default_qat_qconfig_v2 = QConfig(activation=_fq.default_fused_act_fake_quant,
                                 weight=_fq.default_fused_per_channel_wt_fake_quant)
# Symmetric int8 activations (qint8, eps 2**-12) with weights in [-127, 127], as torch.ao's.
_act_symmetric_int8 = _obs.HistogramObserver.with_args(dtype=torch.qint8, reduce_range=False, eps=2 ** -12)
default_symmetric_qnnpack_qconfig = QConfig(activation=_act_symmetric_int8,
                                            weight=_obs.weight_observer_range_neg_127_to_127)
default_per_channel_symmetric_qnnpack_qconfig = QConfig(activation=_act_symmetric_int8,
                                                        weight=_obs.per_channel_weight_observer_range_neg_127_to_127)
_qat_act_symmetric_int8 = _fq.FusedMovingAvgObsFakeQuantize.with_args(
    observer=_obs.MovingAverageMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8, reduce_range=False,
    eps=2 ** -12)
default_symmetric_qnnpack_qat_qconfig = QConfig(activation=_qat_act_symmetric_int8,
                                                weight=_fq.fused_wt_fake_quant_range_neg_127_to_127)
default_per_channel_symmetric_qnnpack_qat_qconfig = QConfig(
    activation=_qat_act_symmetric_int8, weight=_fq.fused_per_channel_wt_fake_quant_range_neg_127_to_127)
# float16 "quantization" (torch.ao's fp16 weights): the names exist so that code naming them
# gets torchquant's clear error at convert / quantize_dynamic, not an AttributeError.
float16_dynamic_qconfig = QConfig(activation=_obs.PlaceholderObserver.with_args(dtype=torch.float16, is_dynamic=True),
                                  weight=_obs.PlaceholderObserver.with_args(dtype=torch.float16))
float16_static_qconfig = QConfig(activation=_obs.PlaceholderObserver.with_args(dtype=torch.float16),
                                 weight=_obs.PlaceholderObserver.with_args(dtype=torch.float16))
# QAT of embedding tables (torch.ao's): the table fake-quantized per row in training, the
# lookups' float output not observed; prepare_qat with get_embedding_qat_module_mappings().
default_embedding_qat_qconfig = QConfig(activation=_obs.NoopObserver.with_args(dtype=torch.float32),
                                        weight=_fq.default_embedding_fake_quant)
default_embedding_qat_qconfig_4bit = QConfig(activation=_obs.NoopObserver.with_args(dtype=torch.float32),
                                             weight=_fq.default_embedding_fake_quant_4bit)
__all__ += ["default_embedding_qat_qconfig", "default_embedding_qat_qconfig_4bit"]
__all__ += ["default_per_channel_qconfig", "per_channel_dynamic_qconfig", "default_qat_qconfig_v2",
            "default_symmetric_qnnpack_qconfig", "default_per_channel_symmetric_qnnpack_qconfig",
            "default_symmetric_qnnpack_qat_qconfig", "default_per_channel_symmetric_qnnpack_qat_qconfig",
            "float16_dynamic_qconfig", "float16_static_qconfig"]
