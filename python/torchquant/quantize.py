"""The eager-mode flow, with torch.ao.quantization's names and behaviour:
``fuse_modules`` -> ``prepare`` (or ``prepare_qat``) -> calibrate / train -> ``convert``, and
``quantize_dynamic``.

    >>> model.qconfig = torchquant.get_default_qconfig("x86")
    >>> prepared = torchquant.prepare(model)              # inserts observers
    >>> torchquant.calibrate(prepared, batches)          # or a loop of forward passes
    >>> int8_model = torchquant.convert(prepared)        # swaps in int8 modules

Differences from torch.ao are listed in docs/eager_api.md.
"""
import copy
import enum
import functools
import inspect
import itertools
import os
import warnings
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Union

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrize import type_before_parametrizations

from .calibrate import _model_device as _device_of
from ._stack import user_stacklevel
from .fake_quantize import (FakeQuantizeBase, default_fixed_qparams_range_0to1_fake_quant,
                            default_fixed_qparams_range_neg1to1_fake_quant)
from .nn import intrinsic, qat
from .nn import quantized as nnq
from .nn._compact import compact_modules
from .nn import quantized_dynamic as nnqd
from .nn import quantized_embedding as nnqe
from .observer import _PER_CHANNEL, ObserverBase
from .qconfig import QConfig, default_dynamic_qconfig
from .qtensor import QTensor, _warn_once_on
from .stubs import DeQuantStub, QuantStub, QuantWrapper

__all__ = [
    "propagate_qconfig_",
    "prepare",
    "prepare_qat",
    "convert",
    "repack",
    "quantize",
    "quantize_qat",
    "quantize_dynamic",
    "fuse_modules",
    "fuse_modules_qat",
    "add_quant_dequant",
    "swap_module",
    "default_eval_fn",
    "QuantType",
    "ObserverOrFakeQuantize",
    "get_observer_state_dict",
    "load_observer_state_dict",
    "get_combined_dict",
    "get_default_static_quant_module_mappings",
    "get_default_qat_module_mappings",
    "get_default_dynamic_quant_module_mappings",
    "get_default_qconfig_propagation_list",
    "get_static_quant_module_class",
    "get_dynamic_quant_module_class",
    "no_observer_set",
]

# Exact types, as torch.ao: subclasses (e.g. MultiheadAttention's NonDynamicallyQuantizableLinear,
# whose weight MHA reads directly) are not swapped.
_STATIC = {
    nn.Linear: nnq.Linear,
    intrinsic.LinearReLU: nnq.LinearReLU,
    qat.Linear: nnq.Linear,
    qat.LinearReLU: nnq.LinearReLU,
    QuantStub: nnq.Quantize,
    DeQuantStub: nnq.DeQuantize,
    nn.ReLU: nnq.ReLU,
    nn.Dropout: nnq.Dropout,
    nn.Flatten: nnq.Flatten,
}
_QAT = {nn.Linear: qat.Linear, intrinsic.LinearReLU: qat.LinearReLU}
_DYNAMIC = {nn.Linear: nnq.DynamicLinear, intrinsic.LinearReLU: nnq.DynamicLinear}
# ---- sequence models: dynamic recurrent modules (torch.ao's default dynamic mappings) ----
_DYNAMIC_RNN = {nn.LSTM: nnqd.LSTM, nn.GRU: nnqd.GRU, nn.LSTMCell: nnqd.LSTMCell, nn.GRUCell: nnqd.GRUCell,
                nn.RNNCell: nnqd.RNNCell}
_DYNAMIC.update(_DYNAMIC_RNN)
# Beyond torch.ao (which has none): MultiheadAttention with its four projections int8.
_DYNAMIC[nn.MultiheadAttention] = nnqd.MultiheadAttention
# Modules whose output is observed: their int8 version needs output qparams.
_OBSERVED = (nn.Linear, intrinsic.LinearReLU, qat.Linear, qat.LinearReLU, QuantStub)
# Modules that need no observer: int8 in, int8 out with the same qparams (or no tensors at all).
# An empty container (ShuffleNet's stride-1 ``branch1 = nn.Sequential()``) is the identity; the
# tuple is only consulted for modules without children.
_PASSTHROUGH = (nn.ReLU, nn.Dropout, nn.Flatten, nn.Identity, DeQuantStub, nn.Sequential, nn.ModuleList,
                nn.ModuleDict)

# ---- sequence models: weight-only quantized embeddings (float_qparams_weight_only_qconfig) ----
# Weight-only: no activation observer; the weight observer runs at convert.
_EMBEDDING = {nn.Embedding: nnqe.Embedding, nn.EmbeddingBag: nnqe.EmbeddingBag}
_STATIC.update(_EMBEDDING)
_DYNAMIC.update(_EMBEDDING)
_PASSTHROUGH = _PASSTHROUGH + tuple(_EMBEDDING)
# QAT of the tables (default_embedding_qat_qconfig): not in the default QAT mapping, as in torch.ao;
# prepare_qat(model, mapping=get_embedding_qat_module_mappings()) swaps them in.
_EMBEDDING_QAT = {nn.Embedding: qat.Embedding, nn.EmbeddingBag: qat.EmbeddingBag}
_STATIC.update({qat.Embedding: nnqe.Embedding, qat.EmbeddingBag: nnqe.EmbeddingBag})
_WEIGHT_ONLY_TARGETS = (nnqe.Embedding, nnqe.EmbeddingBag)  # quantized modules that take what their float ones take


def get_default_static_quant_module_mappings() -> Dict[type, type]:
    """Get module mapping for post training static quantization (a copy: {float class: int8 class})."""
    return dict(_STATIC)


def get_default_qat_module_mappings() -> Dict[type, type]:
    """Get default module mapping for quantization aware training (a copy: {float class: QAT class})."""
    return dict(_QAT)


def get_default_dynamic_quant_module_mappings() -> Dict[type, type]:
    """Get module mapping for post training dynamic quantization (a copy: {float class: dynamic int8 class})."""
    return dict(_DYNAMIC)


def get_embedding_qat_module_mappings() -> Dict[type, type]:
    """The QAT mapping with the embedding tables' QAT modules added (torch.ao's function of this
    name): pass it to ``prepare_qat`` to train ``nn.Embedding`` / ``nn.EmbeddingBag`` that carry
    ``default_embedding_qat_qconfig`` (or its 4-bit twin) with their rows fake-quantized.

    >>> model.emb.qconfig = torchquant.default_embedding_qat_qconfig
    >>> prepared = torchquant.prepare_qat(model, mapping=torchquant.get_embedding_qat_module_mappings())
    """
    m = dict(_QAT)
    m.update(_EMBEDDING_QAT)
    return m


def get_embedding_static_quant_module_mappings() -> Dict[type, type]:
    """The static mapping including the embedding tables' QAT modules (torch.ao's function of
    this name): ``convert(prepared, mapping=...)`` with it swaps ``nn.Embedding`` /
    ``nn.EmbeddingBag`` and their QAT versions for the weight-only quantized modules, and every
    other module as the default mapping does.

    >>> get_embedding_static_quant_module_mappings()[torchquant.nn.qat.EmbeddingBag]
    <class 'torchquant.nn.quantized_embedding.EmbeddingBag'>
    """
    m = dict(_STATIC)
    m.update({qat.Embedding: nnqe.Embedding, qat.EmbeddingBag: nnqe.EmbeddingBag})
    m.update(_EMBEDDING)
    return m


# torch.ao's module-level mapping dicts, under its names (the getters above return copies).
DEFAULT_STATIC_QUANT_MODULE_MAPPINGS = _STATIC
DEFAULT_QAT_MODULE_MAPPINGS = _QAT
DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS = _DYNAMIC


class QuantType(enum.IntEnum):
    """The kinds of quantization, with torch.ao's names and values.

    >>> QuantType.STATIC, int(QuantType.QAT)
    (<QuantType.STATIC: 1>, 2)
    """

    DYNAMIC = 0
    STATIC = 1
    QAT = 2
    WEIGHT_ONLY = 3


# What prepare inserts and convert reads, for type hints (torch.ao's alias).
ObserverOrFakeQuantize = Union[ObserverBase, FakeQuantizeBase]


def get_combined_dict(default_dict: Dict[Any, Any], additional_dict: Dict[Any, Any]) -> Dict[Any, Any]:
    """A copy of ``default_dict`` updated with ``additional_dict`` (torch.ao's helper for
    extending the module mappings).

    >>> mapping = get_combined_dict(get_default_static_quant_module_mappings(), {MyLinear: nnq.Linear})
    """
    combined = dict(default_dict)
    combined.update(additional_dict)
    return combined


def get_default_qconfig_propagation_list() -> Set[type]:
    """The module types torch.ao's ``propagate_qconfig_`` gives a qconfig to by default: those
    of the static, QAT and dynamic mappings, and nn.Sequential. torchquant's propagate_qconfig_
    gives every module its qconfig; this list is for code that passes it on (``allow_list``).

    >>> nn.Linear in get_default_qconfig_propagation_list()
    True
    """
    return set(_STATIC) | set(_QAT) | set(_DYNAMIC) | {nn.Sequential}


def _module_class(kind: str, default: Dict[type, type], float_module_class, additional):
    mapping = get_combined_dict(default, additional or {})
    target = mapping.get(float_module_class)
    if target is None:
        known = sorted(t.__name__ for t in mapping)
        raise ValueError(f"argument 'float_module_class' {float_module_class} has no {kind} quantized module class; "
                         f"torchquant has them for {known}")
    return target


def get_static_quant_module_class(float_module_class, additional_static_quant_mapping: Optional[dict] = None,
                                  is_reference: bool = False):
    """The int8 module class ``convert`` swaps a float module class for.

    >>> get_static_quant_module_class(nn.Linear)
    <class 'torchquant.nn.quantized.Linear'>
    """
    if is_reference:
        raise NotImplementedError("torchquant has no reference quantized modules (argument 'is_reference'=True); "
                                  "its int8 modules run the real kernels")
    return _module_class("static", _STATIC, float_module_class, additional_static_quant_mapping)


def get_dynamic_quant_module_class(float_module_class, additional_dynamic_quant_mapping: Optional[dict] = None):
    """The dynamic int8 module class ``quantize_dynamic`` swaps a float module class for.

    >>> get_dynamic_quant_module_class(nn.Linear)
    <class 'torchquant.nn.quantized.DynamicLinear'>
    """
    return _module_class("dynamic", _DYNAMIC, float_module_class, additional_dynamic_quant_mapping)


def no_observer_set() -> Set[type]:
    """Module types that ``prepare`` gives no output observer because they observe themselves.
    torch.ao lists its quantizable LSTM and MultiheadAttention; torchquant has no such module,
    so the set is empty.

    >>> no_observer_set()
    set()
    """
    return set()


# Convolution subclasses that only add helpers (torchvision's video models' Conv3DSimple and
# Conv3DNoTemporal: nn.Conv3d with a static method) compute what their base computes: the
# static flow treats them as their base, where it matches module types exactly.
_CONV_BASES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _plain_conv_base(cls):
    """The torch.nn convolution class a subclass computes as (no forward, _conv_forward or
    _output_padding of its own anywhere below the base), else None."""
    if not isinstance(cls, type) or cls in _CONV_BASES or cls.__module__.startswith(("torchquant.", "torch.")):
        return None
    base = next((b for b in cls.__mro__ if b in _CONV_BASES), None)
    if base is None:
        return None
    for klass in cls.__mro__[:cls.__mro__.index(base)]:
        # Only a constructor, static / class methods and plain class attributes: a method of its
        # own (a helper the model's forward calls on it) would be lost with the class.
        for name, v in vars(klass).items():
            if name in ("forward", "_conv_forward", "_output_padding", "__call__"):
                return None
            if name != "__init__" and (inspect.isfunction(v) or isinstance(v, property)):
                return None
    return base


def _ao_fused_as_ours() -> dict:
    """torch.ao.nn.intrinsic's fused float modules -> torchquant's of the same name (the same
    nn.Sequential of the same parts, so the same state dict)."""
    try:
        import torch.ao.nn.intrinsic as ao
    except ImportError:  # a torch without torch.ao
        return {}
    names = list(intrinsic.__all__) + ["BNReLU2d", "BNReLU3d"]
    return {getattr(ao, n): getattr(intrinsic, n) for n in names if isinstance(getattr(ao, n, None), type)}


_AO_FUSED_AS_OURS = _ao_fused_as_ours()


def _as_plain_convs(model: nn.Module, keep=()) -> None:
    """Gives each convolution subclass that computes as its torch.nn base (_plain_conv_base) the
    base's class, so that fusion, prepare and convert match it (on the model they work on); and
    each fused module of torch.ao's (torchvision's fuse_model() makes them) torchquant's class:
    its forward leaves out the observer prepare adds as a child (nn.Sequential's ran it twice),
    and prepare_qat maps it (torch.ao's LinearReLU stayed a Sequential observed before its ReLU).
    The classes in ``keep`` (prepare's custom modules) stay as they are."""
    for m in model.modules():
        base = _plain_conv_base(type(m)) or _AO_FUSED_AS_OURS.get(type(m))
        if base is not None and type(m) not in keep:
            m.__class__ = base


_BAKED_TYPES = (nn.Linear, nn.RNNBase, nn.RNNCellBase, nn.Embedding, nn.EmbeddingBag) + tuple(_CONV_BASES)


def _bake_reparametrizations(model: nn.Module, where: str, select=lambda m: getattr(m, "qconfig", None) is not None) -> None:
    """Linear / Conv / ConvTranspose / recurrent / embedding layers whose weight is re-parametrized (torch.nn.utils's
    ``parametrizations.weight_norm`` / ``spectral_norm`` / ``register_parametrization``, or the
    older hook-based ``weight_norm`` / ``spectral_norm``) get their effective weight as a plain
    parameter, on the model the flow works on: their int8 versions quantize that weight.
    Otherwise a parametrized layer (a class of its own) stayed float, and a hooked one's hook,
    carried to the int8 module, failed at its first call. For QAT the weight then trains as a
    plain weight: a warning names the layers."""
    from torch.nn.utils import parametrize

    baked = []
    for name, m in model.named_modules():
        if not isinstance(m, _BAKED_TYPES) or not select(m):
            continue
        if parametrize.is_parametrized(m):
            # The class torch made for this module's parametrizations is shared with the model
            # this one was deep-copied from, and removing one deletes its property from the
            # class: this module gets a class of its own first.
            cls = type(m)
            m.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            for tensor_name in list(m.parametrizations.keys()):
                parametrize.remove_parametrizations(m, tensor_name, leave_parametrized=True)
            baked.append(name)
        for hook in list(_norm_hooks(m)):
            if type(hook).__name__ == "WeightNorm":
                torch.nn.utils.remove_weight_norm(m, hook.name)
            else:
                torch.nn.utils.remove_spectral_norm(m, hook.name)
            baked.append(name)
    if baked and where in ("prepare_qat", "fuse_modules_qat"):
        warnings.warn(f"{where}: the weight re-parametrizations (weight norm, spectral norm, ...) of "
                      f"{sorted(set(baked))} are replaced by their current effective weights, which QAT trains "
                      "(the int8 layers hold one weight)", UserWarning, stacklevel=user_stacklevel())


def _observer_types() -> tuple:
    """torchquant's observer and fake-quant bases, and torch.ao's (a torch.ao qconfig builds
    those): the modules prepare neither observes nor walks into."""
    types = (ObserverBase, FakeQuantizeBase)
    try:
        from torch.ao.quantization.fake_quantize import FakeQuantizeBase as _AoFakeQuantizeBase
        from torch.ao.quantization.observer import ObserverBase as _AoObserverBase
    except ImportError:  # pragma: no cover
        return types
    return types + (_AoObserverBase, _AoFakeQuantizeBase)


_OBSERVER_TYPES = _observer_types()


def _norm_hooks(m: nn.Module):
    """The hook-based weight norm / spectral norm hooks (torch.nn.utils.weight_norm /
    spectral_norm, the older API) of a module."""
    for hook in list(m._forward_pre_hooks.values()):
        kind = (type(hook).__module__, type(hook).__name__)
        if kind in (("torch.nn.utils.weight_norm", "WeightNorm"), ("torch.nn.utils.spectral_norm", "SpectralNorm")):
            yield hook


def _seed_norm_hook_weights(model: nn.Module, memo: dict) -> None:
    """A hook-based weight / spectral norm keeps the weight its last forward computed as a
    non-leaf tensor, which copy.deepcopy refuses ("Only Tensors created explicitly by the user");
    the hook computes it afresh at every forward, so the copy gets a detached clone (same values)
    through the deepcopy memo. The model keeps its own: detaching it there cut the caller's
    weight off weight_g / weight_v (prepare(inplace=False) changed the caller's model)."""
    for m in model.modules():
        for hook in _norm_hooks(m):
            t = getattr(m, hook.name, None)
            if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter) and not t.is_leaf:
                memo[id(t)] = t.detach().clone()


def _deepcopy(model: nn.Module, memo: Optional[dict] = None) -> nn.Module:
    """copy.deepcopy(model), keeping the plain attributes of a torch.fx GraphModule's root (a
    ``qconfig`` set on make_quantizable's result): GraphModule's own __deepcopy__ rebuilds the
    root from its graph and drops them, so prepare(inplace=False) saw no qconfig."""
    memo = {} if memo is None else memo
    _seed_norm_hook_weights(model, memo)
    new = copy.deepcopy(model, memo)
    if isinstance(model, torch.fx.GraphModule):
        for k, v in model.__dict__.items():
            if k not in new.__dict__ and not isinstance(v, (nn.Module, torch.Tensor)):
                new.__dict__[k] = v
    return new


def _is_observer(m) -> bool:
    return isinstance(m, _OBSERVER_TYPES)


def _check_qconfig(qc, where: str) -> None:
    """A qconfig is None or has callable ``activation`` and ``weight`` (a QConfig, torch.ao's
    too); anything else would fail later with an AttributeError far from its cause."""
    if qc is None or (callable(getattr(qc, "activation", None)) and callable(getattr(qc, "weight", None))):
        return
    owner = f"module '{where}'" if where else "the model"
    hint = (f"; for a backend name use torchquant.get_default_qconfig({qc!r})"
            if isinstance(qc, str) else "; e.g. torchquant.get_default_qconfig('x86')")
    raise TypeError(f"the 'qconfig' of {owner} must be a torchquant.QConfig or None, got "
                    f"{type(qc).__name__} {qc!r}{hint}")


def _check_args(fn: str, model, arg: str = "model", mapping=None, qconfig_dict=None) -> None:
    """A TypeError naming the argument for a model that is no nn.Module, and for a mapping /
    qconfig dict that is no dict (they failed deep inside with an AttributeError)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: argument '{arg}' must be an nn.Module, got {type(model).__name__}")
    for name, value in (("mapping", mapping), ("qconfig_dict", qconfig_dict)):
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"{fn}: argument '{name}' must be a dict or None, got {type(value).__name__}")
    _check_class_mapping(fn, "mapping", mapping, "from_float")


def _check_class_mapping(fn: str, arg: str, mapping, method: str) -> None:
    """Each value of a {module class: class} mapping has the classmethod that builds the new
    module (``from_float``, or ``from_observed`` for custom modules); None maps to nothing. A
    float class or a name given by mistake failed at the swap with a bare AttributeError."""
    if mapping is None:
        return
    if not isinstance(mapping, dict):
        raise TypeError(f"{fn}: argument '{arg}' must be a dict or None, got {type(mapping).__name__}")
    for key, value in mapping.items():
        if value is not None and not callable(getattr(value, method, None)):
            what = getattr(key, "__name__", repr(key))
            if method == "__call__":
                raise TypeError(f"{fn}: argument '{arg}' maps {what} to {value!r}, which is not callable: give a "
                                "fuser method, fuser_method(is_qat, *modules) -> fused module")
            raise TypeError(f"{fn}: argument '{arg}' maps {what} to {value!r}, which has no {method}() classmethod: "
                            f"give the class to swap {what} for (such as torchquant.nn.quantized.Linear for nn.Linear)")


def propagate_qconfig_(module: nn.Module, qconfig_dict: Optional[dict] = None,
                       prepare_custom_config_dict=None) -> None:
    """Gives every submodule a ``qconfig``: its own if set (``None`` switches quantization off
    for it and its children), else the one for its type or name in ``qconfig_dict``, else its
    parent's. (``prepare_custom_config_dict``: torch.ao's, accepted and not used.)"""
    _check_args("propagate_qconfig_", module, "module", qconfig_dict=qconfig_dict)
    _warn_unused("propagate_qconfig_", prepare_custom_config_dict=prepare_custom_config_dict)
    for mod, qc in _propagated_qconfigs(module, qconfig_dict):
        mod.qconfig = qc


def _propagated_qconfigs(module: nn.Module, qconfig_dict: Optional[dict] = None) -> list:
    """[(submodule, the qconfig propagate_qconfig_ gives it)], each qconfig checked, the model
    not changed: a refused qconfig leaves no module with a qconfig it did not have."""
    qconfig_dict = qconfig_dict or {}
    checked, out = set(), []

    def visit(mod, parent_qconfig, prefix):
        # (a parametrized layer's class is one torch made for it: its type is the one before)
        qc = qconfig_dict.get(type_before_parametrizations(mod), parent_qconfig)
        qc = qconfig_dict.get(prefix, qc)
        qc = getattr(mod, "qconfig", qc)
        if id(qc) not in checked:
            _check_qconfig(qc, prefix)
            checked.add(id(qc))
        out.append((mod, qc))
        for name, child in mod.named_children():
            if not _is_observer(child):
                visit(child, qc, f"{prefix}.{name}" if prefix else name)

    visit(module, None, "")
    return out


def _foreign_convert_error(module) -> TypeError:
    """The error of prepare's hooks found on a module prepare did not observe: torch.ao's convert
    (its swap_module) copies every forward hook onto the quantized module it builds, so the model
    it converted from a torchquant-prepared one failed at its first call with "'Quantize' object
    has no attribute 'activation_post_process'". That model cannot be trusted anyway: torch.ao's
    convert leaves torchquant's own modules (QuantStub, fused and QAT modules, FloatFunctional)
    in float and runs its kernels with qparams from torchquant's qconfigs (full 8-bit activations,
    which fbgemm's AVX2 kernels saturate)."""
    cls = type(module)
    return TypeError(f"{cls.__module__}.{cls.__name__} carries torchquant.prepare's observer hooks but no observer of "
                     "its own: it replaced a prepared module after prepare, as torch.ao.quantization.convert (or its "
                     "swap_module) does on a model prepared by torchquant.prepare, which it cannot convert (nor fuse "
                     "modules after prepare); convert a torchquant-prepared model with torchquant.convert, and fuse "
                     "before prepare: do not mix torch.ao's and torchquant's flows")


def _observer_hook(module, inputs, output):
    obs = module._modules.get("activation_post_process")
    if obs is None:
        raise _foreign_convert_error(module)
    return obs(output)


def _input_range_hook(module, inputs, kwargs=None):
    """Records the range of a float input (min and max, on its device, no host sync) of a module
    that becomes an int8 Linear / Conv: where a float function runs between modules, the int8
    module receives a float tensor and quantizes it with qparams from this range. Registered
    with ``with_kwargs=True``: the input may come as torch.nn's keyword ``input=``. (torch.ao's
    swap_module registers it again without kwargs: ``kwargs`` is then None.)"""
    if "_tq_input_range" not in module.__dict__:
        # (before its forward: torch.ao's quantized Linear / Conv fails on a float input)
        raise _foreign_convert_error(module)
    x = inputs[0] if inputs else (kwargs or {}).get("input")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return None
    if x.is_nested:  # (the transformer encoder's fast path) its values, the padding left out
        from .observer import _observed_values
        x = _observed_values(x)
    if x.numel() == 0:
        return None
    lo, hi = torch.aminmax(x.detach())
    lo, hi = lo.float(), hi.float()
    seen = module.__dict__.get("_tq_input_range")
    if seen is not None and seen[0].device == lo.device:
        if torch.compiler.is_compiling() or torch.is_inference_mode_enabled() or not seen[0].is_inference():
            # in place on the tensors prepare made: a compiled calibration, which traced this
            # hook once, keeps the running range (it stored each batch's range alone)
            torch.minimum(seen[0], lo, out=seen[0])
            torch.maximum(seen[1], hi, out=seen[1])
            return None
        lo, hi = torch.minimum(seen[0], lo), torch.maximum(seen[1], hi)
    module.__dict__["_tq_input_range"] = (lo, hi)
    return None


def _empty_input_range(device) -> tuple:
    """(+inf, -inf) on device: the range _input_range_hook widens in place."""
    with torch.inference_mode(False):  # (in place later, in or out of inference mode)
        return (torch.full((), float("inf"), device=device), torch.full((), float("-inf"), device=device))


def _set_input_fallback(old: nn.Module, new: nn.Module) -> None:
    """Gives an int8 Linear / Conv the qparams its float inputs are quantized with (see
    _input_range_hook), from the range its float module saw and its qconfig's activation
    observer's rule (dtype, range, scheme); none where the range is unknown or not finite."""
    seen = old.__dict__.get("_tq_input_range")
    qc = getattr(old, "qconfig", None)
    if seen is None or qc is None or not isinstance(new, nnq._Int8WeightModule):
        return
    lo, hi = (t.detach().float().cpu() for t in seen)
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
        return
    try:
        act = qc.activation()
        obs = getattr(act, "activation_post_process", act)
        if not hasattr(obs, "_qparams") or obs.qscheme not in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            return
        scale, zero_point = obs._qparams(lo.reshape(()), hi.reshape(()))
        new._set_float_input_qparams(scale, zero_point, obs.dtype)
    except (RuntimeError, ValueError, TypeError):
        return


def _float_dtype_of(module: nn.Module):
    """float16 / bfloat16 / float64 when all of module's floating-point parameters have that
    dtype (a model kept in that precision), else None (float32). The parameters of observers and
    fake-quants (a LearnableFakeQuantize's float32 scale) are left out."""
    dtypes = {p.dtype for m in module.modules() if not _is_observer(m)
              for p in m.parameters(recurse=False) if p.is_floating_point()}
    if len(dtypes) == 1:
        dt = next(iter(dtypes))
        return None if dt == torch.float32 else dt
    return None


def _fallback_observer_hook(module, inputs, output):
    # A module with no int8 version may return anything: only a float tensor is observed.
    obs = module._modules.get("activation_post_process")
    if obs is None:
        raise _foreign_convert_error(module)
    if isinstance(output, torch.Tensor) and output.is_floating_point():
        return obs(output)
    return None




def _attach_observer(mod: nn.Module, obs: nn.Module, model_dev, hook, prepend: bool = True,
                     input_range: bool = False) -> None:
    """obs as mod's activation_post_process, on mod's device (the model's for a module holding no
    tensors), run by ``hook`` after mod's forward; ``input_range``: the float-input range of a
    future int8 Linear / Conv recorded too."""
    dev = _device_of(mod) or model_dev
    if dev is not None:
        obs.to(dev)
    mod.add_module("activation_post_process", obs)
    mod.register_forward_hook(hook, prepend=prepend)
    if input_range:
        mod.register_forward_pre_hook(_input_range_hook, with_kwargs=True)
        mod.__dict__["_tq_input_range"] = _empty_input_range(dev or "cpu")


def _model_device(model: nn.Module):
    """The one device of the model's parameters and buffers (None if none or several; meta
    placeholders left out, as in _device_of): where observers of modules that hold no tensors
    themselves (QuantStub) go, as in torch.ao."""
    every = {t.device for t in itertools.chain(model.parameters(), model.buffers())}
    devices = {d for d in every if d.type != "meta"} or every  # (a model wholly on meta: a dry run)
    return devices.pop() if len(devices) == 1 else None


@functools.lru_cache(maxsize=None)
def _quantized_types() -> tuple:
    """torchquant's quantized module classes: those convert, quantize_dynamic and
    quantize_weight_only put in a model (the targets of the default mappings, int4 Linear)."""
    from .nn.quantized_int4 import LinearWeightOnlyInt4

    targets = {*_STATIC.values(), *_DYNAMIC.values(), LinearWeightOnlyInt4, nnq.FusedReLUSequential}
    return tuple(t for t in targets if isinstance(t, type) and issubclass(t, nn.Module)
                 and t.__module__.startswith("torchquant."))


def _batch_stats_bn(mod: nn.Module) -> bool:
    """A BatchNorm with no running statistics (``track_running_stats=False``): it normalizes with
    each batch's own statistics, in eval mode too, so it has no fixed affine map to fold into a
    convolution or to run as an int8 BatchNorm."""
    return isinstance(mod, nn.modules.batchnorm._BatchNorm) and (mod.running_mean is None or mod.running_var is None)


def _float_only(mod: nn.Module) -> bool:
    """A module of a mapped type that has no int8 form as configured: a BatchNorm, or a fused
    [BatchNorm, ReLU], that normalizes with batch statistics. It stays float, as modules with no
    int8 implementation do (dequantize before it, quantize after it)."""
    if isinstance(mod, nn.Sequential) and len(mod) > 0:
        mod = mod[0]
    return _batch_stats_bn(mod)


# The output fake-quants torch.ao's prepare_qat gives these modules (its
# DEFAULT_MODULE_TO_ACT_POST_PROCESS): their outputs' fixed ranges, whatever the qconfig.
_FIXED_QPARAMS_FAKE_QUANTS = {
    nn.Hardsigmoid: default_fixed_qparams_range_0to1_fake_quant,
    nn.Sigmoid: default_fixed_qparams_range_0to1_fake_quant,
    nn.Softmax: default_fixed_qparams_range_0to1_fake_quant,
    nn.Tanh: default_fixed_qparams_range_neg1to1_fake_quant,
}


def _add_observers(model: nn.Module, custom: frozenset = frozenset(), already: Optional[List[str]] = None,
                   dry: bool = False, custom_roots: Optional[Dict[int, type]] = None,
                   non_leaf: frozenset = frozenset()) -> List[str]:
    """Adds ``activation_post_process`` and its forward hook to every observed module under a
    qconfig; returns the names of leaf modules under a qconfig that stay float. ``custom``: the
    user's module types named in prepare's ``allow_list`` (:func:`_custom_allowed`), observed as
    modules with an int8 version. ``already`` gets the names of the quantized modules under a
    qconfig (a model, or part of one, converted before), which get no observer. ``custom_roots``:
    {id: observed class} of prepare's custom modules (:func:`_swap_float_to_observed`), observed
    as a whole. ``non_leaf``: module types observed as a whole too (prepare_qat's the user's QAT
    classes its ``mapping`` swaps in, as torch.ao's ``observer_non_leaf_module_list``). ``dry``:
    every observer is built (and so checked) but none attached, on the model before its
    re-parametrized weights are baked, read as after."""
    unsupported = []
    model_dev = _model_device(model)
    custom_roots = custom_roots or {}

    def baked_later(m):  # (dry: a layer _bake_reparametrizations turns into its plain class)
        return dry and isinstance(m, _BAKED_TYPES) and parametrize.is_parametrized(m)

    def kind(m):
        return type_before_parametrizations(m) if baked_later(m) else type(m)

    def has_children(m):
        return not _has_no_children(m) if baked_later(m) else any(True for _ in m.children())

    def attach(*args, **kwargs):
        if not dry:
            _attach_observer(*args, **kwargs)
    # torchquant's quantized modules (convert's, quantize_dynamic's, quantize_weight_only's) are
    # int8 already: observed as "no int8 implementation", their observers went to the meta device
    # of their qweight placeholder, and calibration failed on them. Their insides are skipped too.
    quantized = [(n, m) for n, m in model.named_modules() if isinstance(m, _quantized_types())]
    inside_quantized = {id(c) for _, m in quantized for c in m.modules()}
    if already is not None:
        inner = {id(c) for _, m in quantized for c in m.modules() if c is not m}
        already.extend(f"{n or 'the model'} ({type(m).__name__})" for n, m in quantized
                       if id(m) not in inner and getattr(m, "qconfig", None) is not None
                       and not isinstance(m, _PASSTHROUGH))
    # A fused module that stays float (a [BatchNorm, ReLU] with batch statistics) is not one
    # module: its BatchNorm is observed and stays float as a leaf, its ReLU is int8.
    inside_fused = {id(c) for m in model.modules() if isinstance(m, _FUSED) and not _float_only(m)
                    for c in m.modules() if c is not m}
    # a MultiheadAttention convert swaps as a whole (its out_proj is no Linear of its own)
    inside_fused |= {id(c) for m in model.modules() if type(m) in _STATIC and isinstance(m, nn.MultiheadAttention)
                     and getattr(m, "qconfig", None) is not None for c in m.modules() if c is not m}
    # prepare's custom modules: observed as a whole, as torch.ao's (their insides are their own)
    inside_fused |= {id(c) for m in model.modules() if id(m) in custom_roots for c in m.modules() if c is not m}
    inside_fused |= {id(c) for m in model.modules() if type(m) in non_leaf and getattr(m, "qconfig", None) is not None
                     for c in m.modules() if c is not m}
    for name, mod in model.named_modules():
        qc = getattr(mod, "qconfig", None)
        if qc is None or _is_observer(mod) or id(mod) in inside_fused or id(mod) in inside_quantized:
            continue
        if id(mod) in custom_roots:
            if (not issubclass(custom_roots[id(mod)], _ao_no_observer_types())
                    and not hasattr(mod, "activation_post_process")):
                attach(mod, _activation_observer(qc, name, mod), model_dev, _fallback_observer_hook)
            continue
        if type(mod) in non_leaf:
            if not hasattr(mod, "activation_post_process"):
                # (a weight-only qconfig's placeholder records nothing: no observer, as for a table)
                obs = _activation_observer(qc, name, mod, refuse_dynamic=False)
                if obs is not None and not isinstance(obs, _PLACEHOLDER_TYPES):
                    attach(mod, obs, model_dev, _fallback_observer_hook,
                           input_range=isinstance(mod, (nn.Linear,) + _CONV_BASES))
            continue
        float_only = _float_only(mod)
        if float_only and has_children(mod):
            continue
        fixed = _FIXED_QPARAMS_FAKE_QUANTS.get(kind(mod))
        if fixed is not None and mod.training and not hasattr(mod, "activation_post_process"):
            # QAT (torch.ao's rule, a module of these exact types in training mode, whatever the
            # qconfig's activation): it trains on the fixed output qparams its int8 version
            # computes with (scale 1/256 over [0, 1), 2/256 over [-1, 1)). A Softmax, which stays
            # float, has its output quantized with them after convert.
            stays_float = kind(mod) not in _STATIC
            if stays_float and mod is not model:
                unsupported.append(f"{name} ({type(mod).__name__})")
            attach(mod, fixed(), model_dev, _fallback_observer_hook if stays_float else _observer_hook,
                   prepend=not stays_float)
            continue
        if kind(mod) in _OBSERVED and not float_only and not hasattr(mod, "activation_post_process"):
            # Before the user's forward hooks (torch.ao's order): the int8 module computes its
            # own output, and the hooks, carried over by convert, run on that.
            target = _STATIC.get(kind(mod))
            attach(mod, _activation_observer(qc, name, mod), model_dev, _observer_hook,
                   input_range=isinstance(target, type) and issubclass(target, nnq._Int8WeightModule))
        elif isinstance(mod, _FLOAT_FUNCTIONALS):
            # Its methods call activation_post_process on their results (torch.ao's rule).
            if isinstance(getattr(mod, "activation_post_process", None), nn.Identity):
                obs = _activation_observer(qc, name, mod)
                dev = _device_of(mod) or model_dev
                if dev is not None:
                    obs.to(dev)
                if not dry:
                    mod.activation_post_process = obs
        elif (type_before_parametrizations(mod) in custom and not float_only and _has_no_children(mod)
              and not hasattr(mod, "activation_post_process")):
            # torch.ao's way to add a module type: allow_list at prepare, a mapping for it at
            # convert; it was warned about as staying float, and its int8 Linear / Conv got no
            # float-input qparams. Observed before the user's hooks, as the types above; with the
            # fallback hook (its forward may return anything but a float tensor), which also
            # requantizes its output if convert's mapping leaves it float.
            attach(mod, _activation_observer(qc, name, mod), model_dev, _fallback_observer_hook,
                   input_range=isinstance(mod, (nn.Linear,) + _CONV_BASES))
        elif ((float_only or (not has_children(mod) and not isinstance(mod, _PASSTHROUGH)
                              and kind(mod) not in _OBSERVED))
              and mod is not model and not hasattr(mod, "activation_post_process")):
            unsupported.append(f"{name} ({type(mod).__name__}"
                               + (": track_running_stats=False, it normalizes with batch statistics)" if float_only
                                  else ")"))
            # Observed too: where it runs inside the quantized part of the model, convert
            # quantizes its float output with these qparams (docs/eager_api.md). Not under a
            # dynamic qconfig (an LSTM left for a later quantize_dynamic, as torch.ao's flow
            # leaves it): that one records no range, and its output stays float.
            obs = _activation_observer(qc, name, mod, refuse_dynamic=False)
            if obs is not None:
                attach(mod, obs, model_dev, _fallback_observer_hook, prepend=False)
    return unsupported


@functools.lru_cache(maxsize=None)
def _ao_no_observer_types() -> tuple:
    """torch.ao's custom modules that observe themselves (its quantizable LSTM and
    MultiheadAttention): as torch.ao's prepare, no output observer for them."""
    try:
        from torch.ao.quantization.quantization_mappings import no_observer_set as _ao_no_observer_set
    except ImportError:  # pragma: no cover
        return ()
    return tuple(_ao_no_observer_set())


def _swap_float_to_observed(model: nn.Module, mapping: Dict[type, type], dry: bool = False) -> Dict[int, type]:
    """prepare's custom modules (torch.ao's ``prepare_custom_config_dict`` entry
    ``"float_to_observed_custom_module_class"``): each module under a qconfig whose class is
    mapped becomes ``observed_class.from_float(module)`` (given the module's qconfig if it has
    none), keeping the user's hooks; prepare then observes its output. Returns {id: observed
    class} of the new modules (``dry``: of the modules it would replace; the model not changed)."""
    roots: Dict[int, type] = {}
    memo: Dict[int, nn.Module] = {}

    def visit(parent):
        for name, child in list(parent._modules.items()):
            if child is None or _is_observer(child):
                continue
            cls = mapping.get(type_before_parametrizations(child))
            if cls is None or getattr(child, "qconfig", None) is None:
                visit(child)
                continue
            if not dry:
                if id(child) not in memo:
                    new = cls.from_float(child)
                    if not hasattr(new, "qconfig"):
                        new.qconfig = child.qconfig
                    _copy_hooks(child, new)
                    memo[id(child)] = new
                child = parent._modules[name] = memo[id(child)]
            roots[id(child)] = cls

    if mapping:
        visit(model)
    return roots


def _custom_config(fn: str, arg: str, config, key: str, method: str) -> Dict[type, type]:
    """The {class: class} mapping under ``key`` in torch.ao's custom config dict ``config``,
    checked (each class has ``method``); its other entries (FX graph mode's) are named in a
    warning as not used."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise TypeError(f"{fn}: argument '{arg}' must be a dict or None, got {type(config).__name__}")
    mapping = config.get(key) or {}
    _check_class_mapping(fn, f"{arg}[{key!r}]", mapping, method)
    # torch.ao's own custom modules (get_default_custom_config_dict's quantizable / quantized LSTM
    # and MultiheadAttention) compute on torch.ao's quantized tensors, not on torchquant's QTensors:
    # those entries are left out, and torchquant's own handling of those types applies.
    foreign = sorted(getattr(k, "__name__", repr(k)) for k, v in mapping.items()
                     if v is not None and getattr(v, "__module__", "").startswith("torch.ao."))
    if foreign:
        mapping = {k: v for k, v in mapping.items()
                   if not (v is not None and getattr(v, "__module__", "").startswith("torch.ao."))}
        warnings.warn(f"{fn}: argument '{arg}' maps {', '.join(foreign)} to torch.ao's own modules, which run on "
                      "torch.ao's quantized tensors: those entries are not used, torchquant's own modules for those "
                      "types apply (its dynamic LSTM, its int8 MultiheadAttention)", UserWarning,
                      stacklevel=user_stacklevel())
    others = sorted(repr(k) for k, v in config.items() if k != key and v is not None
                    and not (hasattr(v, "__len__") and len(v) == 0))
    if others:
        warnings.warn(f"{fn}: argument(s) '{arg}' are accepted for torch.ao compatibility, and only its entry {key!r} "
                      f"is used by torchquant: its entries {', '.join(others)} are not", UserWarning,
                      stacklevel=user_stacklevel())
    return mapping


def _activation_observer(qc, name: str, mod: nn.Module, refuse_dynamic: bool = True):
    """qc.activation(), refused by name when it is per channel: torchquant's int8 activations
    (QTensors between modules) are per tensor, and convert could not use its qparams. A dynamic
    qconfig's placeholder is refused too, or (``refuse_dynamic=False``: a module that stays
    float) None."""
    obs = qc.activation()
    if not isinstance(obs, nn.Module):  # (nn.Identity, torch.ao's weight-only QAT qconfig, is one)
        raise TypeError(f"prepare: module '{name or type(mod).__name__}' ({type(mod).__name__}): its qconfig's "
                        f"activation() made a {type(obs).__name__}, not an observer or fake-quant module: pass an "
                        "observer class or its with_args(...)")
    if getattr(obs, "qscheme", None) in _PER_CHANNEL:
        raise ValueError(f"prepare: module '{name or type(mod).__name__}' ({type(mod).__name__}): its qconfig's "
                         f"activation {type(obs).__name__} is per channel (qscheme={obs.qscheme}); int8 activations "
                         "are per tensor: use a per-tensor observer (torch.per_tensor_affine or "
                         "torch.per_tensor_symmetric)")
    if _is_dynamic_placeholder(obs):
        if not refuse_dynamic:
            return None
        # It records nothing: convert failed after calibration ("calculate_qparams should not be
        # called for PlaceholderObserver"; torch.ao's, a bare Exception naming no module).
        raise ValueError(f"prepare: module '{name or type(mod).__name__}' ({type(mod).__name__}) has a dynamic "
                         f"qconfig (its activation is a {type(obs).__name__} with dtype={obs.dtype}, such as "
                         "default_dynamic_qconfig's), which is for quantize_dynamic: it records no activation range "
                         "for the static flow (prepare, calibrate, convert); use torchquant.quantize_dynamic(model), "
                         "or a static qconfig such as torchquant.get_default_qconfig('x86')")
    return obs


def _placeholder_types() -> tuple:
    """torchquant's PlaceholderObserver, and torch.ao's (its qconfigs build those)."""
    from .observer import PlaceholderObserver
    try:
        from torch.ao.quantization.observer import PlaceholderObserver as _AoPlaceholderObserver
    except ImportError:  # pragma: no cover
        return (PlaceholderObserver,)
    return (PlaceholderObserver, _AoPlaceholderObserver)


_PLACEHOLDER_TYPES = _placeholder_types()


def _is_dynamic_placeholder(obs) -> bool:
    """A dynamic qconfig's activation (torchquant's or torch.ao's default_dynamic_qconfig: a
    PlaceholderObserver with an int8 dtype or is_dynamic=True). A float one (the weight-only
    qconfigs of embedding tables, float_qparams_weight_only_qconfig) is not: the modules that
    get an activation observer under it stay float, as before."""
    if not isinstance(obs, _PLACEHOLDER_TYPES):
        return False
    dtype = getattr(obs, "dtype", None)
    return bool(getattr(obs, "is_dynamic", False)) or (isinstance(dtype, torch.dtype) and not dtype.is_floating_point)


def _has_any_qconfig(model) -> bool:
    return any(getattr(m, "qconfig", None) is not None for m in model.modules())


def _warn_unused(fn: str, **kwargs) -> None:
    """torch.ao's arguments for custom module swaps and fusers, which torchquant accepts so that
    torch.ao code runs, but does not use: a value given is named in a warning."""
    given = sorted(k for k, v in kwargs.items() if v is not None and not (hasattr(v, "__len__") and len(v) == 0))
    if given:
        warnings.warn(f"{fn}: argument(s) {', '.join(repr(k) for k in given)} are accepted for torch.ao "
                      "compatibility but not used by torchquant", UserWarning, stacklevel=user_stacklevel())


_FLOAT_DTYPES = (torch.float16, torch.bfloat16)


def _refuse_float_qconfigs(model: nn.Module, fn: str) -> None:
    """A ValueError naming the first module whose qconfig asks for float16 (torch.ao's
    ``float16_dynamic_qconfig`` / ``float16_static_qconfig``: fp16 weights, which torch.ao calls
    quantization): torchquant's modules are int8 (or int4 weight-only), so such a module would
    otherwise fail deep inside convert."""
    seen = set()
    for name, mod in model.named_modules():
        qc = getattr(mod, "qconfig", None)
        if qc is None or id(qc) in seen:
            continue
        seen.add(id(qc))
        for field in ("weight", "activation"):
            ctr = getattr(qc, field, None)
            try:
                dtype = getattr(ctr(), "dtype", None) if callable(ctr) else None
            except Exception:  # an observer that cannot be built alone is checked where it is used
                continue
            if dtype in _FLOAT_DTYPES:
                raise ValueError(
                    f"{fn}: module '{name or type(mod).__name__}' ({type(mod).__name__}) has a qconfig whose {field} "
                    f"dtype is {dtype} (such as float16_dynamic_qconfig): torchquant quantizes to int8 (or int4 "
                    "weight-only), and has no float16 modules; use an int8 qconfig, or qconfig=None to keep the "
                    "module in float")


def prepare(model: nn.Module, inplace: bool = False, allow_list=None, observer_non_leaf_module_list=None,
            prepare_custom_config_dict=None) -> nn.Module:
    """Inserts observers into a float model (torch.ao.quantization.prepare): every module under a
    qconfig that has an int8 version (QuantStub, Linear, Conv / ConvTranspose 1d-3d and their
    fused forms, BatchNorm, the norms and activations, FloatFunctional) records its output range
    during the forward passes that follow; Linear / Conv / ConvTranspose also record the range
    of a float input (the qparams convert gives them for float inputs). A leaf module with no
    int8 version stays float, with a warning naming it, and is observed too (convert quantizes
    its output). torch.ao's fused modules (torchvision's ``fuse_model()``) are taken as
    torchquant's. ``allow_list`` (torch.ao's way to add a module type, with a mapping for it at
    convert): its types of the user's own are observed as such modules too; torchquant's own
    types are observed whether listed or not (a warning names those it leaves out). Modules
    quantized already (by convert, quantize_dynamic or quantize_weight_only) get no observer, with
    a warning naming them. ``prepare_custom_config_dict["float_to_observed_custom_module_class"]``
    swaps custom modules as torch.ao's (:func:`_swap_float_to_observed`). Every qconfig is checked
    before the model changes: a model refused with ``inplace=True`` is left as it was. Returns the
    prepared model (a copy unless ``inplace``).
    """
    _check_args("prepare", model)
    float_to_observed = _custom_config("prepare", "prepare_custom_config_dict", prepare_custom_config_dict,
                                       "float_to_observed_custom_module_class", "from_float")
    _warn_unused("prepare", observer_non_leaf_module_list=observer_non_leaf_module_list)
    return _prepare(model, inplace, allow_list, float_to_observed)


def _prepare(model: nn.Module, inplace: bool, allow_list, float_to_observed: Dict[type, type],
             non_leaf: frozenset = frozenset()) -> nn.Module:
    """prepare's work, its arguments checked; ``non_leaf``: module types observed as a whole
    (see :func:`_add_observers`)."""
    allow_list = _check_allow_list(allow_list)
    custom = _custom_allowed(allow_list)
    if not inplace:
        model = _deepcopy(model)
    # Every check on the propagated qconfigs (float16, per-channel or dynamic activations, the
    # observers they build) comes before the model changes: a refused model given with
    # inplace=True is left as it was (its classes and qconfigs put back; nothing baked).
    # (and a failure after them, in a custom module's from_float, is undone the same way)
    saved = _module_snapshot(model) if inplace else None
    try:
        _as_plain_convs(model, keep=float_to_observed)
        propagate_qconfig_(model)
        _refuse_float_qconfigs(model, "prepare")
        roots = _swap_float_to_observed(model, float_to_observed, dry=True)
        _add_observers(model, custom, dry=True, custom_roots=roots, non_leaf=non_leaf)
        _bake_reparametrizations(model, "prepare")
        if not _has_any_qconfig(model):
            warnings.warn("prepare: no qconfig is set on the model or any submodule, so nothing will be quantized; "
                          "set model.qconfig = torchquant.get_default_qconfig('x86')", UserWarning,
                          stacklevel=user_stacklevel())
            return model
        _keep_tables_float(model)
        observed = _swap_float_to_observed(model, float_to_observed)
        already: List[str] = []
        unsupported = _add_observers(model, custom, already, custom_roots=observed, non_leaf=non_leaf)
    except BaseException:
        _restore_snapshot(saved)
        raise
    if already:
        warnings.warn("prepare: these modules are already quantized (by convert, quantize_dynamic or "
                      "quantize_weight_only) and get no observer: " + ", ".join(already[:10])
                      + (f", ... ({len(already)} in all)" if len(already) > 10 else ""),
                      UserWarning, stacklevel=user_stacklevel())
    if unsupported:
        warnings.warn("prepare: these modules have no int8 implementation and stay in float: " + ", ".join(unsupported),
                      UserWarning, stacklevel=user_stacklevel())
    left_out = _left_out_of_allow_list(model, allow_list)
    if left_out:
        warnings.warn(f"prepare: argument 'allow_list' leaves out {left_out}, which torch.ao's prepare would then not "
                      "observe; torchquant observes the module types it has int8 versions of whether listed or not "
                      "(allow_list adds types to them), so these are quantized: set their qconfig to None to keep "
                      "them in float", UserWarning, stacklevel=user_stacklevel())
    return model


def _ao_propagation_list() -> Set[type]:
    """torch.ao's default allow_list, its fused types read as torchquant's (empty without torch.ao)."""
    try:
        from torch.ao.quantization.quantization_mappings import get_default_qconfig_propagation_list as _ao_list
    except ImportError:  # pragma: no cover
        return set()
    return {_AO_FUSED_AS_OURS.get(t, t) for t in _ao_list()}


def _check_allow_list(allow_list) -> Optional[list]:
    """prepare's ``allow_list`` as a list of module classes (None: no list); a TypeError naming it
    for anything else (a single class failed with "'type' object is not iterable")."""
    if allow_list is None:
        return None
    if isinstance(allow_list, (str, type, nn.Module)) or not isinstance(allow_list, Iterable):
        raise TypeError(f"prepare: argument 'allow_list' must be a set (or list) of module classes or None, got "
                        f"{allow_list!r}; e.g. {{nn.Linear}}")
    allow_list = list(allow_list)
    wrong = [t for t in allow_list if not isinstance(t, type)]
    if wrong:
        raise TypeError(f"prepare: argument 'allow_list' must hold module classes, got {wrong[0]!r} "
                        f"({type(wrong[0]).__name__})")
    return allow_list


def _custom_allowed(allow_list) -> frozenset:
    """The types of prepare's ``allow_list`` that neither torchquant nor torch.ao knows (the
    user's own, for which convert gets a mapping): prepare observes them as modules with an int8
    version. The types torchquant knows keep their own handling (an LSTM under a static qconfig
    stays float; a Dropout needs no observer), whether listed or not."""
    if allow_list is None:
        return frozenset()
    known = get_default_qconfig_propagation_list() | _ao_propagation_list()
    return frozenset(t for t in allow_list if isinstance(t, type) and issubclass(t, nn.Module)
                     and _AO_FUSED_AS_OURS.get(t, t) not in known and t not in _PASSTHROUGH
                     and not t.__module__.startswith(("torchquant.", "torch.ao."))
                     and not issubclass(t, _OBSERVER_TYPES))


def _left_out_of_allow_list(model: nn.Module, allow_list) -> List[str]:
    """The types of the modules prepare observed that ``allow_list`` (when given) leaves out
    although torch.ao's default list has them: torch.ao's prepare observes only the listed types
    (and its convert then leaves the others float, or fails on its QuantStub), torchquant's its
    own whether listed or not. A type counts as listed when a listed type has the same int8
    version (torch.ao's QuantStub for torchquant's). An empty list leaves out every type."""
    if allow_list is None:
        return []
    listed = {_AO_FUSED_AS_OURS.get(t, t) for t in allow_list}
    listed_targets = {_STATIC.get(t) for t in listed} - {None}
    ao_default = _ao_propagation_list()
    ao_targets = {_STATIC.get(t) for t in ao_default} - {None}
    out = set()
    for mod in model.modules():
        t = type(mod)
        if (t in _OBSERVED and _is_observer(getattr(mod, "activation_post_process", None))
                and t not in listed and _STATIC.get(t) not in listed_targets
                and (t in ao_default or _STATIC.get(t) in ao_targets)):
            out.add(t.__name__)
    return sorted(out)


def _keep_tables_float(model: nn.Module) -> None:
    """Embedding tables under a qconfig whose weight observer is not per row with float qparams
    (a model-wide static qconfig reaching a position table: Whisper's, CLIP's) stay float, named
    in one warning: convert could only refuse them, after calibration."""
    kept = []
    for name, mod in model.named_modules():
        qc = getattr(mod, "qconfig", None)
        if type(mod) not in _EMBEDDING or qc is None:
            continue
        try:
            obs = qc.weight()
        except Exception:  # (an observer that cannot be built alone: convert names it)
            continue
        if getattr(obs, "qscheme", None) != torch.per_channel_affine_float_qparams:
            kept.append(f"{name or 'the model'} ({type(mod).__name__})")
            mod.qconfig = None
    if kept:
        warnings.warn("prepare: these embedding tables stay in float: their qconfig's weight observer is not per row "
                      "with float qparams (a static int8 qconfig quantizes activations, not tables): "
                      + ", ".join(kept) + "; set torchquant.float_qparams_weight_only_qconfig (or its _4bit form) on "
                      "them to quantize them", UserWarning, stacklevel=user_stacklevel())


def _swap(model: nn.Module, mapping: Dict[type, type], prefix: str, require_qconfig: bool = True,
          memo: Optional[Dict[int, nn.Module]] = None, custom: Optional[Dict[type, type]] = None) -> None:
    # Children are walked through _modules, not named_children(), which lists a module held
    # under two names once: the second name would keep the float module. `memo` maps each float
    # module to its replacement, so a module shared by several names or parents stays one
    # shared module after the swap (one copy of the int8 weights, as there was one float copy).
    memo = {} if memo is None else memo
    for name, child in list(model._modules.items()):
        if child is None or _is_observer(child):
            continue
        full = f"{prefix}.{name}" if prefix else name
        if id(child) in memo:
            setattr(model, name, memo[id(child)])
            continue
        target = mapping.get(type(child))
        observed = custom is not None and type_before_parametrizations(child) in custom
        if observed:  # convert's custom modules: swapped as a whole by from_observed, as torch.ao's
            target = custom[type_before_parametrizations(child)]
        elif target is not None and _float_only(child):
            target = None  # stays float (prepare said so); its children are left as they are
            memo[id(child)] = child
            continue
        if target is not None and (getattr(child, "qconfig", None) is not None or not require_qconfig):
            try:
                new = compact_modules(target.from_observed(child)) if observed else _from_float(target, child, full)
            except Exception as e:  # (torch.ao's classes and observers raise bare Exceptions, AssertionErrors, ...)
                if _names_the_module(e):
                    raise
                raise _naming_module(e, f"convert: module '{full}' ({type(child).__name__}) could not be "
                                        f"quantized: {e}") from e
            if hasattr(child, "training"):
                new.train(child.training)
            if isinstance(new, nn.Module) and new is not child:
                new.__dict__["_tq_name"] = full  # (named in its run-time warnings)
            _set_input_fallback(child, new)
            _copy_hooks(child, new)
            memo[id(child)] = new
            setattr(model, name, new)
        else:
            memo[id(child)] = child
            _swap(child, mapping, full, require_qconfig, memo, custom)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))  # (torchquant/, its subpackages under it)


def _names_the_module(e: Exception) -> bool:
    """An error torchquant's own code raised other than a RuntimeError (a ValueError, TypeError,
    ...): its from_float names the module (or its weights' state-dict keys) in its own words, at
    the start of the message. Any other error (torch.ao's classes or observers, a user's
    mapping class) is raised again naming the module; a RuntimeError too, as always."""
    if isinstance(e, RuntimeError):
        return False
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = os.path.dirname(os.path.abspath(tb.tb_frame.f_code.co_filename)) if tb is not None else ""
    return where == _PACKAGE_DIR or where.startswith(_PACKAGE_DIR + os.sep)


def _naming_module(e: Exception, message: str) -> Exception:
    """An exception of e's type (a ValueError stays a ValueError, for code that catches it) with
    the message naming the module that failed; a RuntimeError where e's type is a bare Exception
    or cannot be built from one message."""
    if type(e) is not Exception:
        try:
            new = type(e)(message)
            if new.args == (message,):  # (str() of a KeyError is its message's repr)
                return new
        except Exception:  # (a constructor taking other arguments)
            pass
    return RuntimeError(message)


@functools.lru_cache(maxsize=None)
def _ao_observer_hooks() -> tuple:
    """torch.ao's prepare's observer hooks (a model prepared by it converts with torchquant's
    convert: its observers are read as torchquant's; the hooks call them, so they go with them)."""
    import importlib
    try:  # (the module: the package's attribute of that name is its quantize function)
        _aoq = importlib.import_module("torch.ao.quantization.quantize")
    except ImportError:  # pragma: no cover
        return ()
    return tuple(h for h in (getattr(_aoq, "_observer_forward_hook", None),
                             getattr(_aoq, "_observer_forward_pre_hook", None)) if h is not None)


def _copy_hooks(old: nn.Module, new: nn.Module) -> None:
    """Gives ``new`` the user's forward pre-hooks and forward hooks of the module it replaces
    (as torch.ao's swap_module does), with their kwargs / always_call flags; prepare's observer
    hook is left behind, the int8 module computing its output qparams itself, and so is a
    hook-based weight / spectral norm's hook (the replacement holds the weight it computes).
    The hooks convert gives a module left float inside the quantized part of the model (its
    QTensor input dequantized, its output quantized again by its ``output_quant``) go along with
    that ``output_quant``: a dynamic module swapped in later (``quantize_dynamic`` on a converted
    model) takes float input and feeds the int8 module after it as the float module did."""
    norms = {id(h) for h in _norm_hooks(old)}
    observers = _ao_observer_hooks()
    for hid, hook in old._forward_pre_hooks.items():
        if hook is _input_range_hook or id(hook) in norms or hook in observers:
            continue
        new.register_forward_pre_hook(hook, with_kwargs=hid in old._forward_pre_hooks_with_kwargs)
    for hid, hook in old._forward_hooks.items():
        if hook is _observer_hook or hook is _fallback_observer_hook or hook in observers:
            continue
        if hook is _float_fallback_output_hook:
            out_quant = old._modules.get("output_quant")
            if out_quant is not None and not hasattr(new, "output_quant"):
                new.add_module("output_quant", out_quant)
            if out_quant is None or new._modules.get("output_quant") is not out_quant:
                continue
        new.register_forward_hook(hook, with_kwargs=hid in old._forward_hooks_with_kwargs,
                                  always_call=hid in old._forward_hooks_always_called)


@functools.lru_cache(maxsize=None)
def _float_input_types() -> tuple:
    """torchquant's quantized modules that compute on float inputs: the dynamic ones (int8
    weights, activations quantized inside each call) and int4 weight-only Linear."""
    from .nn.quantized_int4 import LinearWeightOnlyInt4

    return tuple(t for t in {*_DYNAMIC.values(), LinearWeightOnlyInt4}
                 if isinstance(t, type) and issubclass(t, nn.Module) and t.__module__.startswith("torchquant.")
                 and t not in _WEIGHT_ONLY_TARGETS)


def _float_input_message(module) -> Optional[str]:
    """The run-time warning of a hook dequantizing a QTensor input for one of torchquant's
    modules that take float input (:func:`_float_input_types`), else None."""
    if not isinstance(module, _float_input_types()):
        return None
    return (f"{module._get_name()} is a dynamic (or weight-only) quantized module and takes float input: its QTensor "
            "input is dequantized")


def _float_fallback_message(module) -> str:
    float_input = _float_input_message(module)
    if float_input is not None:
        return float_input
    unrun = module.__dict__.get("_tq_uncalibrated")
    if unrun is not None:  # (a type with an int8 version, left float by convert: see _unrun_modules)
        return (f"module '{unrun}' ({module._get_name()}) stayed float because it never ran during calibration: its "
                "QTensor input is dequantized and it runs in float (calibrate on data, and in the mode, that runs "
                "it to quantize it)")
    return f"{module._get_name()} has no int8 implementation: its QTensor input is dequantized and it runs in float"


def _float_fallback_hook(module, args, kwargs):
    quantized_input = any(isinstance(a, QTensor) for a in list(args) + list(kwargs.values()))
    module._tq_quantized_input = quantized_input
    if not quantized_input:
        return None
    # once per module, kept on the module (a global set of ids kept growing, and a dead module's
    # reused id silenced another model's warning)
    _warn_once_on(module, "float fallback", lambda: _float_fallback_message(module), 1)
    return _dequantized_inputs(module, args, kwargs)


def _dequantized_inputs(module, args, kwargs):
    """(args, kwargs) with every QTensor dequantized to the module's own float dtype (float32
    unless the model is float16 / bfloat16 / float64)."""
    dtype = _float_dtype_of(module)
    unwrap = lambda v: (v.dequantize() if dtype is None else v.dequantize().to(dtype)) if isinstance(v, QTensor) else v  # noqa: E731,E501
    return tuple(unwrap(a) for a in args), {k: unwrap(v) for k, v in kwargs.items()}


# Float modules whose forward makes tensors of its input's dtype (torch's recurrent layers build
# their initial hidden state with dtype=input.dtype): a QTensor's quint8 there fails inside torch.
_DTYPE_FROM_INPUT = (nn.RNNBase, nn.RNNCellBase)


def _float_module_input_hook(module, args, kwargs):
    """The pre-hook of a float module of _DTYPE_FROM_INPUT with qconfig None: its QTensor inputs
    are dequantized, as a float module's are where it computes with torch functions."""
    if not any(isinstance(a, QTensor) for a in list(args) + list(kwargs.values())):
        return None
    _warn_once_on(module, "float module input", lambda: _float_input_message(module) or (
        f"{module._get_name()} has qconfig None and runs in float: its QTensor input is dequantized"), 1)
    return _dequantized_inputs(module, args, kwargs)


def _float_fallback_output_hook(module, args, output):
    """Quantizes the float output of a module that stayed float, with the qparams its observer
    saw at calibration, when its input was a QTensor (it runs inside the quantized part of the
    model, so the next module expects a QTensor). Outside that part its output stays float."""
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        return None
    # The pre-hook has already turned the QTensor inputs into float: look at what was passed in.
    if not getattr(module, "_tq_quantized_input", False):
        return None
    return module.output_quant(output)


def _fallback_output_quant(mod):
    """An nnq.Quantize with the qparams mod's observer saw, or None if it saw no data (mod ran
    only outside the quantized part, or never)."""
    obs = mod.activation_post_process
    stats = obs.activation_post_process if hasattr(obs, "activation_post_process") else obs
    mn = getattr(stats, "min_val", None)
    if mn is not None and (mn.numel() == 0 or not bool(torch.isfinite(mn).all())):
        return None
    try:
        return nnq.Quantize.from_float(mod, name=type(mod).__name__)
    except (RuntimeError, ValueError):
        return None


# Containers that compute in float on their inputs themselves (attention: the input's dtype sets
# the masks' dtype, which a QTensor's quint8 would break): their QTensor inputs are dequantized on
# entry, as a leaf module's with no int8 version.
_FLOAT_BLOCKS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
                 nn.TransformerEncoder, nn.TransformerDecoder, nn.Transformer)


def _clean(model: nn.Module, remove_qconfig: bool = True, custom: tuple = ()) -> None:
    """Removes observers, their hooks and (``remove_qconfig``) qconfigs left on modules that were
    not swapped; float leaf modules under a qconfig get a hook that dequantizes QTensor inputs
    (with a warning), except in the quantized custom modules of the classes in ``custom`` and
    inside torchquant's quantized modules (a LookupActivation's float ``fn``, which it calls on
    float values itself)."""
    observers = _ao_observer_hooks()
    own = {id(c) for m in model.modules() if isinstance(m, custom) for c in m.modules()}
    own |= {id(c) for m in model.modules() if isinstance(m, _quantized_types())
            and not isinstance(m, nnq.FusedReLUSequential) for c in m.modules() if c is not m}
    for mod in list(model.modules()):
        out_quant = None
        for k, hook in list(mod._forward_pre_hooks.items()):
            if hook is _input_range_hook:
                del mod._forward_pre_hooks[k]
                mod._forward_pre_hooks_with_kwargs.pop(k, None)
        mod.__dict__.pop("_tq_input_range", None)
        # (a fake-quant's own observer stays: the weight fake-quant of a QAT module left float, one
        # calibration never ran, runs with it)
        if (hasattr(mod, "activation_post_process") and not _is_observer(mod)
                and not isinstance(mod, (nnq.Linear, nnq.Quantize))):
            for k, hook in list(mod._forward_pre_hooks.items()):
                if hook in observers:
                    del mod._forward_pre_hooks[k]
            for k, hook in list(mod._forward_hooks.items()):
                if hook is _observer_hook or hook is _fallback_observer_hook or hook in observers:
                    if hook is _fallback_observer_hook:
                        out_quant = _fallback_output_quant(mod)
                    del mod._forward_hooks[k]
            if isinstance(mod, _nqo.FLOAT_FUNCTIONAL_TYPES):
                # a FloatFunctional left in float (qconfig None) calls it in its methods
                mod.activation_post_process = nn.Identity()
            else:
                del mod.activation_post_process
        if id(mod) in own:
            pass
        elif getattr(mod, "qconfig", None) is not None and (isinstance(mod, _FLOAT_BLOCKS) or (
                not any(True for _ in mod.children()) and not type(mod).__module__.startswith("torchquant.")
                and not isinstance(mod, _PASSTHROUGH))):
            if _float_fallback_hook not in mod._forward_pre_hooks.values():  # (once: a model converted again)
                mod.register_forward_pre_hook(_float_fallback_hook, with_kwargs=True)
            if out_quant is not None:
                mod.add_module("output_quant", out_quant)
                mod.register_forward_hook(_float_fallback_output_hook)
        elif (getattr(mod, "qconfig", None) is None and isinstance(mod, _DTYPE_FROM_INPUT)
              and not type(mod).__module__.startswith("torchquant.")
              and _float_module_input_hook not in mod._forward_pre_hooks.values()):
            # kept float by the user (qconfig None), with a QTensor reaching it from int8 modules
            mod.register_forward_pre_hook(_float_module_input_hook, with_kwargs=True)
        if remove_qconfig and hasattr(mod, "qconfig"):
            del mod.qconfig


def _fold_relus(model: nn.Module) -> None:
    """Every plain nn.Sequential holding an int8 Linear or Conv directly followed by an int8 ReLU
    becomes a FusedReLUSequential, whose forward runs each such pair as one call (bit-identical;
    see its docstring). Its children stay as they are: a child called alone, or by code that
    iterates the Sequential and keeps an intermediate output, gives what it gave before (the
    earlier fold changed the Linear's class and put an Identity for the ReLU, and such code got
    the Linear's output after the ReLU). A subclass of nn.Sequential (its own forward) is left
    alone."""
    folds_of = {}
    for mod in model.modules():
        if type(mod) is not nn.Sequential:
            continue
        names = list(mod._modules.keys())
        folds = {a: b for a, b in zip(names[:-1], names[1:])
                 if type(mod._modules[a]) in _RELU_FOLDS and type(mod._modules[b]) is nnq.ReLU}
        if folds:
            folds_of[id(mod)] = (mod, folds)
    for mod, folds in folds_of.values():
        mod.__class__ = nnq.FusedReLUSequential
        mod.__dict__["_tq_relu_folds"] = folds


def _refuse_ao_qat_modules(module: nn.Module, mapping) -> None:
    """A model prepared by torch.ao's prepare_qat holds torch.ao's QAT modules, which convert does
    not map (it left them in place and removed the observer inside their weight fake-quant, so the
    model failed at its first call, or raised naming a fused module's BatchNorm): a TypeError
    naming them and the way to convert such a model (unless ``mapping`` maps their types)."""
    found = [(n, type(m)) for n, m in module.named_modules()
             if type(m).__module__.startswith(("torch.ao.nn.qat", "torch.ao.nn.intrinsic.qat"))
             and (mapping is None or type(m) not in mapping)]
    if found:
        shown = ", ".join(f"'{n or 'the model'}' ({t.__module__}.{t.__name__})" for n, t in found[:3])
        raise TypeError(f"convert: {shown}{' ...' if len(found) > 3 else ''} come from torch.ao's prepare_qat, "
                        "whose QAT modules torchquant's convert does not take; prepare the float model with "
                        "torchquant.prepare_qat (same qconfig and fusion) and train it, or load this model's state "
                        "dict into such a model (torch.ao's QAT state dicts load) and convert that")


def _refuse_ao_prepared_stubs(module: nn.Module, mapping) -> None:
    """A model prepared by torch.ao's prepare holds torch.ao's observers, but torchquant's
    QuantStubs (and FloatFunctionals) unobserved: torch.ao's prepare does not know them. Their
    swap raised "has no activation observer: was the model passed through prepare()?", which it
    was (torch.ao's): a TypeError naming them and torchquant.prepare."""
    # torch.ao's prepare calls its observers from hooks of its own (torchquant's prepare, given a
    # torch.ao qconfig, holds torch.ao's observers too, but calls them from its hooks)
    ao_hooks = _ao_observer_hooks()
    if not any(h in ao_hooks for m in module.modules()
               for h in itertools.chain(m._forward_hooks.values(), m._forward_pre_hooks.values())):
        return
    mapped = _STATIC if mapping is None else mapping
    unobserved = [f"'{n or 'the model'}' ({type(m).__name__})" for n, m in module.named_modules()
                  if isinstance(m, (QuantStub, _nqo.FloatFunctional)) and type(m) in mapped
                  and getattr(m, "qconfig", None) is not None
                  and not _is_observer(getattr(m, "activation_post_process", None))]
    if unobserved:
        raise TypeError(f"convert: {', '.join(unobserved[:3])}{' ...' if len(unobserved) > 3 else ''} "
                        f"{'has' if len(unobserved) == 1 else 'have'} no observer: "
                        "the model was prepared by torch.ao.quantization.prepare, which does not observe torchquant's "
                        "QuantStub and FloatFunctional (it observes its own modules only); prepare the float model "
                        "with torchquant.prepare (it takes torch.ao's stubs, FloatFunctionals and qconfigs too), "
                        "calibrate it and convert it with torchquant.convert: do not mix the two libraries' flows")


def convert(module: nn.Module, mapping: Optional[Dict[type, type]] = None, inplace: bool = False,
            remove_qconfig: bool = True, is_reference: bool = False, convert_custom_config_dict=None,
            use_precomputed_fake_quant: bool = False) -> nn.Module:
    """Swaps observed float modules for int8 ones (torch.ao.quantization.convert): Linear, Conv,
    ConvTranspose and their fused ReLU / BatchNorm forms run torchquant's int8 kernels (BatchNorm
    folded in), BatchNorm, norms, activations and FloatFunctional their int8 versions,
    QuantStub/DeQuantStub become Quantize/DeQuantize, QAT modules convert from their fake-quant
    qparams. Inside a plain nn.Sequential, a Linear or Conv followed by a ReLU runs as one fused
    call (bit-identical: the Sequential becomes a FusedReLUSequential; its children stay as they are).
    Raises, naming the module, if no observer has seen data; modules whose observers saw none
    while others did (never run during calibration, as an auxiliary head that runs only in
    training) stay float, with a warning naming them. ``remove_qconfig=False`` keeps the modules'
    ``qconfig`` attributes (observers and their hooks go either way, as torch.ao's).
    ``is_reference`` and ``use_precomputed_fake_quant`` (torch.ao's) take only False: torchquant
    has no reference modules, and reads every weight's qparams at convert.
    ``convert_custom_config_dict["observed_to_quantized_custom_module_class"]`` swaps each observed
    custom module of a class it maps for that class's ``from_observed(module)``, as torch.ao's.
    """
    _check_args("convert", module, "module", mapping=mapping)
    custom = _custom_config("convert", "convert_custom_config_dict", convert_custom_config_dict,
                            "observed_to_quantized_custom_module_class", "from_observed")
    for arg, value in (("is_reference", is_reference), ("use_precomputed_fake_quant", use_precomputed_fake_quant)):
        if value is not False:
            raise _only_false("convert", arg, value)
    _refuse_ao_qat_modules(module, mapping)
    _refuse_ao_prepared_stubs(module, mapping)
    if not inplace:
        module = _deepcopy(module)
    before = {id(m) for m in module.modules()}
    model_dtype = _float_dtype_of(module)  # a float16 / bfloat16 / float64 model: its DeQuantize returns that
    if mapping is None:  # an empty mapping swaps nothing, as torch.ao's
        mapping = _STATIC
    root_target = mapping.get(type(module)) if getattr(module, "qconfig", None) is not None else None
    if root_target in _WEIGHT_ONLY_TARGETS:
        # A table converted alone (torch.ao converts only children, and returned it in float with
        # nothing said): its quantized form takes the same indices, so the model itself is swapped.
        module = _swap_root(module, mapping)
    else:
        if root_target is None:
            try:
                _swap(module, mapping, "", memo=_unrun_modules(module, mapping), custom=custom)
            except RuntimeError as e:
                if "observed no finite data" not in str(e) or _any_observer_ran(module):
                    raise
                raise type(e)(f"{e}; {_SKELETON_HINT}") from (e.__cause__ or e)
        # else the model itself is of a mapped type (a bare Linear, a fused LinearReLU): it is
        # swapped as a whole or not at all, as it would be as a child; its own children (the fused
        # module's Linear, observed through the fused module) are not swapped one by one (they
        # raised "has no activation observer: was the model passed through prepare()?").
        if root_target is not None and any(_is_observer(m) for m in module.modules()):
            warnings.warn(f"convert: the model itself is a {type(module).__name__} with a qconfig; convert swaps the "
                          f"modules inside a model, not the model (as torch.ao's), so it stays in float: wrap it, as "
                          f"nn.Sequential(torchquant.QuantStub(), model, torchquant.DeQuantStub())", UserWarning,
                          stacklevel=user_stacklevel())
    if model_dtype is not None:
        for m in module.modules():
            if isinstance(m, nnq.DeQuantize) and id(m) not in before:
                m._buffers["_output_dtype"] = torch.empty(0, dtype=model_dtype, device=m._buffers["_output_dtype"].device)
    if ({id(m) for m in module.modules()} == before and _has_any_qconfig(module)
            and not any(_is_observer(m) for m in module.modules())
            and not any(isinstance(m, _quantized_types()) for m in module.modules())):  # (converted before)
        # torch.ao returns the float model silently here; a forgotten prepare() is the usual cause.
        warnings.warn("convert: the model has a qconfig but no observers, so nothing was quantized and it stays "
                      "in float; call torchquant.prepare(model) and calibrate it before convert", UserWarning,
                      stacklevel=user_stacklevel())
    if mapping is _STATIC:  # the default mapping (a user's mapping may map ReLU elsewhere)
        _fold_relus(module)
    _clean(module, remove_qconfig, tuple(c for c in custom.values() if isinstance(c, type)))
    return module


def _only_false(fn: str, arg: str, value) -> NotImplementedError:
    return NotImplementedError(f"{fn}: argument '{arg}' takes only False in torchquant, got {value!r} "
                               "(torchquant has no reference quantized modules; its int8 modules run the "
                               "real kernels, with the weights' qparams read at convert)")


# No observer saw data: torch.ao's recipe for reloading a quantized model (prepare + convert
# with no calibration, then load_state_dict) is the usual way here.
_SKELETON_HINT = ("to rebuild a converted model for load_state_dict (torch.ao's prepare + convert skeleton), calibrate "
                  "the prepared model on one batch of any data of the input's shape first, e.g. "
                  "torchquant.calibrate(prepared, [torch.zeros(1, ...)]): load_state_dict then sets every weight and "
                  "qparam (docs/eager_api.md, \"Saving and loading a quantized model\")")


def _any_observer_ran(model: nn.Module) -> bool:
    """Whether some observer of the model recorded anything (finite or not)."""
    for m in model.modules():
        obs = getattr(m, "activation_post_process", None)
        if obs is not None and _is_observer(obs) and (_saw_data(obs) is not False or _saw_nonfinite(obs)):
            return True
    return False


def _saw_data(obs) -> Optional[bool]:
    """Whether an observer (or a fake-quant's observer) has recorded anything; None if unknown."""
    stats = getattr(obs, "activation_post_process", obs)
    mn = getattr(stats, "min_val", None)
    if not isinstance(mn, torch.Tensor):
        return None
    if mn.numel() and bool(torch.isnan(mn).any()):
        return None  # a NaN statistic (a corrupt observer state dict) is no sign of a module that never ran
    return mn.numel() > 0 and bool(torch.isfinite(mn).all())


def _saw_nonfinite(obs) -> bool:
    stats = getattr(obs, "activation_post_process", obs)
    counts = getattr(stats, "nonfinite_count", None)
    return isinstance(counts, torch.Tensor) and bool((counts != 0).any())


def _unrun_modules(model: nn.Module, mapping) -> Dict[int, nn.Module]:
    """convert's memo entries for the observed modules that calibration never ran while others
    ran: they are left as they are (float), with one warning naming them. When no module ran,
    none is skipped, and the first swap raises naming its module."""
    observed, unrun = 0, []
    for name, mod in model.named_modules():
        mod.__dict__.pop("_tq_uncalibrated", None)  # (from an earlier convert of this model)
        obs = getattr(mod, "activation_post_process", None)
        if type(mod) not in mapping or obs is None or not _is_observer(obs) or isinstance(mod, _FLOAT_FUNCTIONALS):
            continue  # an unrun FloatFunctional becomes a QFunctional that raises if called
        observed += 1
        if _saw_data(obs) is False and not _saw_nonfinite(obs):
            # (one that ran on NaN / inf alone is not skipped: its swap raises, naming it and
            # the values it left out, as when every module saw only those)
            unrun.append((name, mod))
    if not unrun or len(unrun) == observed:
        return {}
    warnings.warn("convert: these modules never ran during calibration and stay in float: "
                  + ", ".join(f"{n} ({type(m).__name__})" for n, m in unrun), UserWarning, stacklevel=user_stacklevel())
    for n, m in unrun:  # (named in the run-time warning of their float fallback; a fused one's layers too)
        for sub_name, sub in m.named_modules():
            sub.__dict__["_tq_uncalibrated"] = f"{n}.{sub_name}" if sub_name else n
    return {id(m): m for _, m in unrun}


def prepare_qat(model: nn.Module, mapping: Optional[Dict[type, type]] = None, inplace: bool = False) -> nn.Module:
    """Prepares for quantization-aware training (torch.ao.quantization.prepare_qat): Linear, Conv
    and the fused modules (ConvBn*, ConvBnReLU*, ConvReLU*, LinearReLU, LinearBn1d, torch.ao's
    too) become torchquant.nn.qat modules with fake-quantized weights (BatchNorm folded as
    torch.ao's, with freeze_bn_stats / update_bn_stats), every observed output gets a
    FakeQuantize, and, as in torch.ao, an nn.Hardsigmoid, nn.Sigmoid or nn.Softmax in training
    mode a FixedQParamsFakeQuantize of scale 1/256, zero point 0 ([0, 1)), an nn.Tanh one of
    scale 2/256, zero point 128 ([-1, 1)), whatever the qconfig: the qparams convert gives them.
    The model must be in training mode."""
    _check_args("prepare_qat", model, mapping=mapping)
    if not model.training:
        raise ValueError("prepare_qat needs a model in training mode; call model.train() first")
    if not inplace:
        model = _deepcopy(model)
    # The QAT modules are swapped in before prepare's checks: a model refused there (or failing
    # anywhere below) with inplace=True gets its float modules, classes and qconfigs back.
    saved = _module_snapshot(model) if inplace else None
    try:
        return _prepare_qat(model, mapping)
    except BaseException:
        _restore_snapshot(saved)
        raise


def _prepare_qat(model: nn.Module, mapping: Optional[Dict[type, type]]) -> nn.Module:
    _as_plain_convs(model)
    propagate_qconfig_(model)
    if not _has_any_qconfig(model):
        warnings.warn("prepare_qat: no qconfig is set on the model or any submodule, so nothing will be quantized; "
                      "set model.qconfig = torchquant.get_default_qat_qconfig('x86')", UserWarning, stacklevel=user_stacklevel())
        return model
    _bake_reparametrizations(model, "prepare_qat")
    if mapping is not None:
        # torch.ao's own QAT classes in a mapping (its get_default_qat_module_mappings()) stand for
        # torchquant's of the same float class: prepare observes those, and convert swaps them (a
        # torch.ao QAT Linear got no output fake-quant here and failed after convert)
        # Its keys for torch.ao's fused modules stand for torchquant's of the same name, which the
        # model's torch.ao fused modules became (_as_plain_convs above).
        ours = {**_QAT, **_EMBEDDING_QAT}
        mapping = {_AO_FUSED_AS_OURS.get(k, k): v for k, v in mapping.items()}
        mapping = {k: (ours[k] if k in ours and getattr(v, "__module__", "").startswith("torch.ao.nn") else v)
                   for k, v in mapping.items()}
    qat_mapping = _QAT if mapping is None else mapping
    # The user's own QAT classes in the mapping (torchquant's have their own rules): their
    # outputs get a fake-quant, as torch.ao's prepare_qat observes every class its mapping swaps
    # in (observer_non_leaf_module_list=set(mapping.values())); convert reads it from them.
    non_leaf = frozenset(v for v in qat_mapping.values() if isinstance(v, type) and issubclass(v, nn.Module)
                         and v not in _OBSERVED and not v.__module__.startswith("torchquant.")
                         and not issubclass(v, _ao_no_observer_types()))
    if type(model) not in qat_mapping or getattr(model, "qconfig", None) is None:
        _swap(model, qat_mapping, "")
    # else the model itself is of a mapped type: left as it is, as a bare nn.Linear is (_swap
    # swaps children), where a fused root's Linear became a qat.Linear inside a float
    # LinearReLU, which convert then leaves in float (with its warning) all the same.
    model = _prepare(model, True, None, {}, non_leaf=non_leaf)
    # A post-training qconfig (observers where fake-quants belong) trains without any rounding.
    fake_quants, observers = (FakeQuantizeBase,), (ObserverBase,)
    try:  # torch.ao's too: its qconfigs are used here as often as torchquant's
        from torch.ao.quantization.fake_quantize import FakeQuantizeBase as _AoFQ
        from torch.ao.quantization.observer import ObserverBase as _AoObs
        fake_quants, observers = fake_quants + (_AoFQ,), observers + (_AoObs,)
    except ImportError:
        pass
    plain = [f"{n} ({'weight' if k == 'weight_fake_quant' else 'output'})" for n, m in model.named_modules()
             if not isinstance(m, fake_quants + observers)  # (a fake-quant's own observer is one)
             for k in ("weight_fake_quant", "activation_post_process")
             if isinstance(getattr(m, k, None), observers)]
    if plain:
        warnings.warn(f"prepare_qat: {len(plain)} observer(s) where fake-quants belong ({', '.join(plain[:5])}"
                      f"{', ...' if len(plain) > 5 else ''}): training sees no int8 rounding there; use a QAT qconfig "
                      "(torchquant.get_default_qat_qconfig('x86'))", UserWarning, stacklevel=user_stacklevel())
    return model


def add_quant_dequant(module: nn.Module) -> nn.Module:
    """Wraps every leaf module that has a qconfig in a QuantWrapper (QuantStub, module,
    DeQuantStub), as torch.ao's add_quant_dequant: each then takes and returns float tensors.
    Modifies ``module``'s children in place; returns ``module``, or a new QuantWrapper when
    ``module`` itself is such a leaf.

    >>> model.qconfig = torchquant.default_qconfig
    >>> torchquant.propagate_qconfig_(model)
    >>> model = torchquant.add_quant_dequant(model)
    """
    _check_args("add_quant_dequant", module, "module")
    if _has_no_children(module) and getattr(module, "qconfig", None):
        return QuantWrapper(module)
    for name, child in list(module.named_children()):
        module._modules[name] = add_quant_dequant(child)
    return module


def _has_no_children(module: nn.Module) -> bool:
    # A parametrized module holds its parametrizations as a child; they do not make it a parent.
    return all(name == "parametrizations" for name in module._modules)


def _from_float(target, mod, name: str):
    """target.from_float(mod), with the module's name where from_float takes one (torchquant's
    classes name the module in their errors); a class written for torch.ao's mappings
    (``from_float(cls, mod, use_precomputed_fake_quant=False)``) is called as torch.ao calls it."""
    try:
        params = inspect.signature(target.from_float).parameters
    except (TypeError, ValueError):
        params = {}
    if "name" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        new = target.from_float(mod, name=name)
    else:
        new = target.from_float(mod)
    return compact_modules(new) if isinstance(new, nn.Module) else new  # (one copy of its weights in memory)


def swap_module(mod: nn.Module, mapping: Dict[type, type], custom_module_class_mapping: Optional[dict] = None,
                use_precomputed_fake_quant: bool = False) -> nn.Module:
    """``mod``'s quantized replacement if it has a qconfig and its exact type is in ``mapping``
    (or in ``custom_module_class_mapping``, whose classes build it with ``from_observed``), else
    ``mod`` itself: the step ``convert`` takes for each module, as torch.ao's swap_module. The
    new module keeps ``mod``'s forward pre-hooks and forward hooks, except the observer's.

    >>> qlinear = swap_module(prepared.fc1, get_default_static_quant_module_mappings(), {})

    ``use_precomputed_fake_quant=True`` is passed on to a class of the user's whose ``from_float``
    takes it; for torchquant's classes (which read every weight's qparams at swap time) and any
    other it is a NotImplementedError, as in ``convert``.
    """
    _check_args("swap_module", mod, "mod")
    if mapping is None or not isinstance(mapping, dict):
        raise TypeError(f"swap_module: argument 'mapping' must be a dict of module classes to their quantized "
                        f"classes, got {mapping!r}; e.g. torchquant.get_default_static_quant_module_mappings()")
    _check_class_mapping("swap_module", "mapping", mapping, "from_float")
    _check_class_mapping("swap_module", "custom_module_class_mapping", custom_module_class_mapping, "from_observed")
    if getattr(mod, "qconfig", None) is None:
        return mod
    custom = custom_module_class_mapping or {}
    if type(mod) not in custom and type(mod) not in mapping:
        return mod
    devices = {t.device for t in list(mod.parameters()) + list(mod.buffers())} - {torch.device("meta")}
    if len(devices) > 1:
        raise ValueError(f"swap_module: {type(mod).__name__} holds tensors on several devices "
                         f"{sorted(map(str, devices))}; move it to one first")
    if type(mod) in custom:
        new = custom[type(mod)].from_observed(mod)
    else:
        target = mapping[type(mod)]
        takes = "use_precomputed_fake_quant" in inspect.signature(target.from_float).parameters
        if use_precomputed_fake_quant is not False and (not takes or target.__module__.startswith("torchquant.")):
            raise _only_false("swap_module", "use_precomputed_fake_quant", use_precomputed_fake_quant)
        if takes:
            new = target.from_float(mod, use_precomputed_fake_quant=use_precomputed_fake_quant)
        else:
            new = target.from_float(mod)
    _copy_hooks(mod, new)
    if devices:
        new.to(devices.pop())
    return compact_modules(new) if isinstance(new, nn.Module) else new


def default_eval_fn(model: nn.Module, calib_data) -> None:
    """Runs ``model`` on the inputs of ``calib_data`` (an iterable of (input, target) pairs,
    targets ignored): torch.ao's stock ``run_fn`` for :func:`quantize`.

    >>> int8_model = torchquant.quantize(model, torchquant.default_eval_fn, [loader])
    """
    for data, _target in calib_data:
        model(data)


def get_observer_state_dict(mod: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The observers' statistics of a prepared model: the entries of its state_dict under an
    ``activation_post_process`` (torch.ao's rule), with the state_dict's version metadata, so
    calibration can be saved and loaded into another copy of the prepared model.

    >>> torch.save(torchquant.get_observer_state_dict(prepared), "observers.pt")
    """
    state = mod.state_dict()
    observers = OrderedDict((k, v) for k, v in state.items() if "activation_post_process" in k)
    # The float-input range each future int8 Linear / Conv saw (_input_range_hook), which its
    # convert needs where a float function runs before it.
    for name, m in mod.named_modules():
        seen = m.__dict__.get("_tq_input_range")
        if seen is not None:
            pre = name + "." if name else ""
            observers[pre + _INPUT_RANGE_KEYS[0]] = seen[0].detach().clone()
            observers[pre + _INPUT_RANGE_KEYS[1]] = seen[1].detach().clone()
    observers._metadata = getattr(state, "_metadata", None)
    return observers


_INPUT_RANGE_KEYS = ("input_range.min_val", "input_range.max_val")


def load_observer_state_dict(mod: nn.Module, obs_dict: Dict[str, torch.Tensor]) -> None:
    """Loads :func:`get_observer_state_dict`'s statistics (torchquant's or torch.ao's) into the
    observers and fake-quants of a prepared model. Raises naming the keys if an observer's
    entry is missing, an entry under an observer is not one of its buffers, or an entry belongs
    to no observer of the model.

    >>> torchquant.load_observer_state_dict(prepared, torch.load("observers.pt"))

    Unlike torch.ao's (which passes no version metadata and loads non-strictly), it keeps each
    observer's eps (torch.ao resets it to the default, in the caller's dict too), never writes
    to ``obs_dict``, and reports missing entries and shape mismatches; a dict without version
    metadata is read as written by this version.
    """
    metadata = getattr(obs_dict, "_metadata", None) or {}
    # _load_from_state_dict may add entries (an old checkpoint's eps): to a copy, not the caller's dict.
    state = OrderedDict(obs_dict)
    missing: List[str] = []
    unexpected: List[str] = []
    errors: List[str] = []
    # A shared observer is in the dict under each of its names (state_dict lists them all).
    observers = {name for name, m in mod.named_modules(remove_duplicate=False) if _is_observer(m)}
    for name, module in mod.named_modules():
        if not _is_observer(module):
            continue
        local = metadata.get(name, {"version": getattr(module, "_version", None)})
        module._load_from_state_dict(state, name + "." if name else "", local, True, missing, unexpected, errors)
    # The float-input ranges (get_observer_state_dict's), for the modules that record one; a dict
    # without them (torch.ao's, or an earlier one) leaves those as they are.
    ranges = set()
    for name, module in mod.named_modules():
        if "_tq_input_range" not in module.__dict__:
            continue
        pre = name + "." if name else ""
        lo, hi = (obs_dict.get(pre + k) for k in _INPUT_RANGE_KEYS)
        if isinstance(lo, torch.Tensor) and isinstance(hi, torch.Tensor):
            if lo.numel() != 1 or hi.numel() != 1 or not lo.is_floating_point() or not hi.is_floating_point():
                errors.append(f"{pre}{_INPUT_RANGE_KEYS[0]} / {_INPUT_RANGE_KEYS[1]} must be one floating-point "
                              f"value each, got shapes {tuple(lo.shape)} and {tuple(hi.shape)}")
                continue
            dev = module.__dict__["_tq_input_range"][0].device
            with torch.inference_mode(False):
                module.__dict__["_tq_input_range"] = (lo.detach().reshape(()).float().to(dev, copy=True),
                                                      hi.detach().reshape(()).float().to(dev, copy=True))
            ranges.update(pre + k for k in _INPUT_RANGE_KEYS)
    # Entries of observers the model does not have (a dict from a model with more layers).
    orphans = [k for k in obs_dict if k.rpartition(".")[0] not in observers and k not in ranges]
    missing = [k for k in missing if "activation_post_process" in k]
    if missing or unexpected or orphans or errors:
        parts = ([f"missing keys for observers: {missing}"] if missing else []) + \
                ([f"unexpected keys under observers: {unexpected}"] if unexpected else []) + \
                ([f"keys of observers the model does not have: {orphans}"] if orphans else []) + errors
        raise RuntimeError("load_observer_state_dict: " + "; ".join(parts))


def repack(model: nn.Module) -> nn.Module:
    """Rebuilds the kernel layouts of every quantized module in ``model`` (the packed weights
    that convert, a state-dict load and ``.to()`` build from the int8 buffers) from the buffers as
    they are now, and drops the lookup tables the table activations and ``torch.sigmoid`` /
    ``F.hardsigmoid`` on QTensors cached. Returns ``model``.

    A forward sees most changes without it: a buffer assigned a new tensor, or changed in place
    (``qweight.mul_(2)``, ``copy_``, ``load_state_dict``), is noticed by its identity or its
    version counter and the layout rebuilt at the next call. Call it after a write through
    ``.data`` (``m.qweight.data.mul_(2)``), which bumps no version counter, and before
    ``torch.compile`` / ``torch.export`` / ``torch.jit.trace`` of a model whose weights changed
    in place since its last eager call: a trace takes the layout it finds and checks no version.
    Not while another thread runs the model (as for any change of its weights)."""
    from .nn._state_dict import _REPACK_LOCK

    if not isinstance(model, nn.Module):
        raise TypeError(f"argument 'model' must be an nn.Module, got {type(model).__name__}")
    from . import _qfunctions

    with torch.no_grad(), _REPACK_LOCK:
        _qfunctions._FIXED_TABLES = None  # (sigmoid / hardsigmoid tables, per input qparams, of every model)
        for m in model.modules():
            if "_tq_packed_from" in m.__dict__:
                m._repack()
            if "_table_cache" in m.__dict__:
                m._table_cache = None
    return model


def quantize(model: nn.Module, run_fn, run_args, mapping=None, inplace: bool = False) -> nn.Module:
    """prepare, ``run_fn(model, *run_args)`` to calibrate, convert (torch.ao.quantization.quantize)."""
    if not inplace:
        model = _deepcopy(model)
    model.eval()
    prepare(model, inplace=True)
    run_fn(model, *run_args)
    return convert(model, mapping, inplace=True)


def quantize_qat(model: nn.Module, run_fn, run_args, inplace: bool = False) -> nn.Module:
    """prepare_qat, ``run_fn(model, *run_args)`` to train, convert (torch.ao.quantization.quantize_qat)."""
    if not inplace:
        model = _deepcopy(model)
    model.train()
    prepare_qat(model, inplace=True)
    run_fn(model, *run_args)
    return convert(model.eval(), inplace=True)


def quantize_dynamic(model: nn.Module, qconfig_spec: Union[None, set, dict, Iterable] = None, dtype=torch.qint8,
                     mapping: Optional[Dict[type, type]] = None, inplace: bool = False) -> nn.Module:
    """Swaps Linear layers for dynamic int8 ones (float in, float out; activations quantized per
    row inside the kernel, weights int8 per channel), as torch.ao.quantization.quantize_dynamic.
    LSTM, GRU, LSTMCell, GRUCell and RNNCell become ``torchquant.nn.quantized.dynamic``'s
    modules; ``dtype=torch.quint8`` quantizes the rows of Embedding and EmbeddingBag tables
    instead, ``torch.quint4x2`` those of EmbeddingBag tables, as torch.ao's. Beyond torch.ao, an entry for nn.Linear also
    covers its subclasses that compute as nn.Linear and add no method or property (such as
    MultiheadAttention's NonDynamicallyQuantizableLinear; their plain instance attributes go to
    the int8 module; one with a forward, methods or properties, or parameters, buffers or
    submodules of its own stays float, with a warning naming it) and Hugging Face's
    ``transformers.pytorch_utils.Conv1D`` (its weight is transposed once, at convert, for the
    class ``mapping`` gives nn.Linear); Conv1D can also be named on its own. A lazy module
    before its first forward stays float, with a warning. A layer whose weight is tied to
    another module's (an LM head and its embedding) is quantized as a copy, untied, with a
    warning naming both (give its name with None in ``qconfig_spec`` to keep it float and
    tied). Without ``qconfig_spec``, the default set is cut to the types ``mapping`` has. Also
    beyond torch.ao (which swaps only submodules), a model whose own type is mapped is swapped:
    ``quantize_dynamic(nn.LSTM(...), {nn.LSTM})`` returns the int8 LSTM; use the returned
    module, with ``inplace=True`` as well (``True`` or ``False`` only; a call that fails leaves
    the model as it was). The model is put in eval mode first, as torch.ao's.

    >>> qmodel = torchquant.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    """
    _check_args("quantize_dynamic", model, mapping=mapping)
    if isinstance(inplace, (str, bytes)) or not isinstance(inplace, (int, bool)) and not hasattr(type(inplace), "__bool__"):
        # (a string "no" is true; a bool, an int, numpy's bool_ are taken)
        raise TypeError(f"quantize_dynamic: argument 'inplace' must be True or False, got {inplace!r}")
    from .qconfig import float_qparams_weight_only_qconfig, float_qparams_weight_only_qconfig_4bit
    by_dtype = {torch.qint8: default_dynamic_qconfig, torch.quint8: float_qparams_weight_only_qconfig,
                torch.quint4x2: float_qparams_weight_only_qconfig_4bit}
    if dtype not in by_dtype:
        raise ValueError("quantize_dynamic: argument 'dtype' must be torch.qint8 (int8 Linear and recurrent "
                         "layers), torch.quint8 or torch.quint4x2 (8- or 4-bit rows of Embedding / EmbeddingBag "
                         f"tables), got {dtype}" + ("; torchquant has no float16 modules" if dtype == torch.float16
                                                    else ""))
    default = by_dtype[dtype]
    spec_given = qconfig_spec is not None
    base_targets = _DYNAMIC if mapping is None else mapping
    if qconfig_spec is None:
        if dtype == torch.qint8:
            qconfig_spec = {nn.Linear: default, intrinsic.LinearReLU: default}
            qconfig_spec.update({k: default for k in _DYNAMIC_RNN})
            qconfig_spec[nn.MultiheadAttention] = default
        else:  # torch.ao's defaults for these dtypes: the embedding tables (4-bit: EmbeddingBag only)
            qconfig_spec = {nn.EmbeddingBag: default}
            if dtype == torch.quint8:
                qconfig_spec[nn.Embedding] = default
        # Only the types the mapping has: a default type it lacks (MultiheadAttention in torch.ao's
        # mapping) would stay float with its qconfig, and its children be swapped under it.
        qconfig_spec = {k: qc for k, qc in qconfig_spec.items() if k in base_targets}
    elif not isinstance(qconfig_spec, dict):
        if isinstance(qconfig_spec, (str, type)) or not isinstance(qconfig_spec, Iterable):
            raise TypeError("quantize_dynamic: argument 'qconfig_spec' must be a set (or list) of module types or "
                            f"names, or a dict of them to qconfigs, got {qconfig_spec!r}; e.g. {{nn.Linear}}")
        qconfig_spec = list(qconfig_spec)
        if dtype != torch.qint8:
            wrong = [k.__name__ for k in qconfig_spec if isinstance(k, type) and k not in _EMBEDDING]
            if wrong:
                raise ValueError(f"quantize_dynamic: dtype={dtype} quantizes the rows of nn.Embedding / "
                                 f"nn.EmbeddingBag tables; {wrong} in argument 'qconfig_spec' need dtype=torch.qint8")
            # names too: the layers a named module is, or holds, get the tables' qconfig
            modules = dict(model.named_modules())
            layers = [layer for k in qconfig_spec if isinstance(k, str) and k in modules
                      for layer in _non_table_layers(modules[k], k, base_targets)]
            if layers:
                shown = ", ".join(dict.fromkeys(layers))
                raise ValueError(f"quantize_dynamic: dtype={dtype} quantizes the rows of nn.Embedding / "
                                 f"nn.EmbeddingBag tables; {shown} named in argument 'qconfig_spec' (or held by a "
                                 "module it names) need dtype=torch.qint8")
        qconfig_spec = {k: default for k in qconfig_spec}
    # (a MultiheadAttention's out_proj is swapped only when its own type is named and mapped)
    explicit = {k for k in qconfig_spec if isinstance(k, type) and k in base_targets}
    qconfig_spec, targets = _extend_dynamic(model, qconfig_spec, base_targets)
    if spec_given:
        missing = sorted(k.__name__ for k in qconfig_spec if isinstance(k, type) and k not in targets
                         and not _dynamic_by_kind(k, targets)
                         # (a container's qconfig goes to the layers it holds)
                         and not _container_type(k, model)
                         # (an nn.Linear subclass left float is named by _keep_unswappable_float)
                         and not (issubclass(k, nn.Linear) and nn.Linear in targets))
        if missing:
            warnings.warn(f"quantize_dynamic: {missing} in argument 'qconfig_spec' have no dynamic int8 module and "
                          f"stay in float; torchquant has them for {sorted(t.__name__ for t in targets)}", UserWarning,
                          stacklevel=user_stacklevel())
    names = {k for k in qconfig_spec if isinstance(k, str)}
    module_names = {n for n, _ in model.named_modules()}
    names_unmatched = sorted(names - module_names)  # (a misspelt name quantized nothing, without a word)
    if not inplace:
        model = _deepcopy(model)
    # Everything from here on changes the model: a call with inplace=True that is refused (a
    # check below, or a from_float of the swap) or interrupted leaves it as it was.
    saved = _module_snapshot(model) if inplace else None
    try:
        propagate_qconfig_(model, qconfig_spec)
        _refuse_float_qconfigs(model, "quantize_dynamic")
        _keep_mha_out_proj_float(model, targets, explicit)
        carry = _keep_unswappable_float(model, targets, base_targets)
        meta = [n for n, m in _swapped_modules(model, targets)
                if any(t.is_meta for t in [*m.parameters(), *m.buffers()])]
        if meta:
            raise ValueError(f"quantize_dynamic: the weights of {meta[:3]}{' ...' if len(meta) > 3 else ''} are on "
                             "the meta device (no values to quantize): quantize the model with its weights loaded; for "
                             "a model too large for that, quantize it once, then build the quantized skeleton with "
                             ".to('meta').to_empty(device=...) and load_state_dict")
        _warn_tied(model, targets)
        # In eval mode, as torch.ao's: a model built and quantized at once is in training mode, and
        # its dynamic LSTM / GRU then dropped out between layers on every call.
        model.eval()
        _bake_reparametrizations(model, "quantize_dynamic")
        if nn.Linear in qconfig_spec:  # on the float model: the int8 weights are no parameters after the swap
            warn_fused_experts(model, "quantize_dynamic")
        before = {id(m) for m in model.modules()}
        memo: Dict[int, nn.Module] = {}
        root = model
        model = _swap_root(model, targets, memo)
        if model is not root:
            memo[id(root)] = model
        for key, attrs in carry.items():  # (a Linear subclass's plain attributes, as the model reads them)
            new = memo.get(key)
            if new is not None:
                for k, v in attrs.items():
                    new.__dict__.setdefault(k, v)
        for mod in model.modules():
            if hasattr(mod, "qconfig"):
                del mod.qconfig
    except BaseException:
        _restore_snapshot(saved)
        raise
    if {id(m) for m in model.modules()} == before:
        why = _nothing_quantized_why(model, qconfig_spec, names_unmatched, dtype, spec_given, targets)
        warnings.warn("quantize_dynamic: nothing was quantized: " + why, UserWarning, stacklevel=user_stacklevel())
    elif names_unmatched:
        warnings.warn(f"quantize_dynamic: argument 'qconfig_spec' names {names_unmatched}, which name no module of the "
                      "model (names as model.named_modules() gives them); they are left out", UserWarning,
                      stacklevel=user_stacklevel())
    return model


def _non_table_layers(mod: nn.Module, name: str, targets) -> List[str]:
    """"'name' (Type)" of mod, or the modules under it, that have a dynamic int8 version other
    than an embedding table's (the qconfig a name in quantize_dynamic's spec gives goes to them);
    a module with a qconfig of its own (None or not), and what it holds, left out."""
    found: List[str] = []

    def visit(m, path):
        # (a module's own qconfig wins over the spec's, as in propagate_qconfig_)
        if "qconfig" in m.__dict__ or isinstance(m, _quantized_types()) or _is_observer(m):
            return
        cls = type_before_parametrizations(m)
        if cls not in _EMBEDDING and (cls in targets or _dynamic_by_kind(cls, targets) is not None):
            found.append(f"'{path or 'the model'}' ({cls.__name__})")
            return
        for child_name, child in m.named_children():
            visit(child, f"{path}.{child_name}" if path else child_name)

    visit(mod, name)
    return found


def _container_type(cls, model: nn.Module) -> bool:
    """nn.Sequential, nn.ModuleList, nn.ModuleDict (and their subclasses), or a type whose
    instances in ``model`` all hold modules and no parameters or buffers of their own: its
    qconfig in quantize_dynamic's spec goes to the layers it holds."""
    if not isinstance(cls, type):
        return False
    if issubclass(cls, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return True
    found = [m for m in model.modules() if type(m) is cls]
    # (weights in a ParameterList / ParameterDict child, or moved by a parametrization into its
    # 'parametrizations' child, are its own; a parametrized layer it holds is a layer of its own)
    return bool(found) and all(any(True for _ in m.children())
                               and all(p is None for p in m._parameters.values())
                               and all(b is None for b in m._buffers.values())
                               and not parametrize.is_parametrized(m)
                               and not any(isinstance(c, (nn.ParameterList, nn.ParameterDict))
                                           for c in m.children()) for m in found)


def _nothing_quantized_why(model, qconfig_spec, names_unmatched, dtype, spec_given, targets) -> str:
    """The end of quantize_dynamic's "nothing was quantized" warning: what the spec asked for
    and why the model had none of it (a misspelt name, the tables a dtype covers)."""
    if not spec_given and dtype != torch.qint8:
        tables = "nn.EmbeddingBag" if dtype == torch.quint4x2 else "nn.Embedding / nn.EmbeddingBag"
        return (f"dtype={dtype} quantizes the rows of {tables} tables only, and the model has none; for nn.Linear and "
                "recurrent layers use dtype=torch.qint8 (the default)")
    layers = [n for n, m in model.named_modules() if n and (type(m) in targets or _dynamic_by_kind(type(m), targets))]
    hint = (f"; its layers with a dynamic int8 version: {layers[:5]}{' ...' if len(layers) > 5 else ''}"
            if layers else "")
    if names_unmatched:
        return (f"argument 'qconfig_spec' names {names_unmatched}, which name no module of the model (names as "
                f"model.named_modules() gives them){hint}")
    modules = dict(model.named_modules())
    named = [f"'{k}' ({type(modules[k]).__name__})" for k in sorted(k for k in qconfig_spec if isinstance(k, str))]
    if named and not any(isinstance(k, type) for k in qconfig_spec):
        return (f"the modules named in argument 'qconfig_spec', {', '.join(named)}, hold no layer that has a dynamic "
                f"int8 version (an already quantized model comes back as it was){hint}")
    return ("the model has no module of the types in 'qconfig_spec' that has a dynamic int8 version (an already "
            "quantized model comes back as it was)")


def warn_fused_experts(model: nn.Module, who: str) -> None:
    """Warns when 3-D float weights outside convolutions (a mixture of experts' stacked expert
    matrices, as Mixtral's and Qwen-MoE's in transformers 5: [experts, out, in] Parameters, not
    nn.Linear modules) hold a large share of the model's parameters: they stay in float. Called on
    the float model (quantized weights are buffers, not parameters). A 3-D parameter with one
    leading entry (a class token, a position embedding, attention's bias_k / bias_v) is no stack of
    experts."""
    from torch.nn.modules.conv import _ConvNd
    total, fused = 0, []
    for mname, m in model.named_modules():
        for pname, p in m._parameters.items():
            if p is None or nn.parameter.is_lazy(p):  # (a lazy module's: no shape before its first forward)
                continue
            total += p.numel()
            if p.dim() == 3 and p.shape[0] > 1 and not isinstance(m, _ConvNd):
                fused.append((f"{mname}.{pname}" if mname else pname, tuple(p.shape), p.numel()))
    share = sum(n for _, _, n in fused) / total if total else 0.0
    if fused and share >= 0.1:
        shown = ", ".join(f"{n} {list(s)}" for n, s, _ in fused[:3]) + (", ..." if len(fused) > 3 else "")
        warnings.warn(f"{who}: {len(fused)} 3-D weights outside nn.Linear layers (stacked experts of a mixture of "
                      f"experts: {shown}) hold {share:.0%} of the parameters and stay in float: torchquant "
                      "quantizes nn.Linear (and Conv1D) layers", UserWarning, stacklevel=user_stacklevel())


def _swap_root(model: nn.Module, mapping: Dict[type, type], memo: Optional[Dict[int, nn.Module]] = None) -> nn.Module:
    """:func:`_swap` that also swaps ``model`` itself when its own type is mapped: torch.ao's
    quantize_dynamic only swaps children, so ``quantize_dynamic(nn.LSTM(...), {nn.LSTM})`` there
    returns the float LSTM unchanged, silently. The quantized root is returned (with
    ``inplace=True`` too: an object cannot change its class in place). ``memo`` gets
    {id(float child): its replacement}, as :func:`_swap` fills it."""
    target = mapping.get(type(model))
    if target is None or getattr(model, "qconfig", None) is None:
        _swap(model, mapping, "", memo=memo)
        return model
    name = type(model).__name__
    try:
        new = _from_float(target, model, name)
    except Exception as e:
        if _names_the_module(e):
            raise
        raise _naming_module(e, f"convert: module '{name}' (the model itself) could not be quantized: {e}") from e
    new.train(model.training)
    _copy_hooks(model, new)
    return new


# ---------------------------------------------------------------- dynamic: Linear subclasses, HF Conv1D
def _dynamic_by_kind(cls, targets):
    """The dynamic target of a module type not in ``targets`` by its exact type: Hugging Face's
    Conv1D (a Linear with its weight stored [in, out]) and the subclasses of a mapped nn.Linear
    that compute as it and add no method (:func:`_plain_linear_subclass`, as
    MultiheadAttention's NonDynamicallyQuantizableLinear) map like an nn.Linear. torchquant's
    own modules are never matched."""
    if not isinstance(cls, type) or cls.__module__.startswith("torchquant."):
        return None
    if nnqd.is_hf_conv1d(cls):
        return _conv1d_target(targets.get(nn.Linear))
    if issubclass(cls, nn.Linear) and nn.Linear in targets and _plain_linear_subclass(cls):
        return targets[nn.Linear]
    return None


def _overrides_forward(cls) -> bool:
    """True for an nn.Linear subclass with a forward of its own (a router returning a tuple, a
    scaled or masked Linear): swapped for a DynamicLinear it would lose it, so it stays float."""
    return cls.forward is not nn.Linear.forward


def _plain_linear_subclass(cls) -> bool:
    """Whether an nn.Linear subclass computes as nn.Linear and has nothing its int8 version
    would lose with the class (the rule of :func:`_plain_conv_base`): only a constructor, static /
    class methods and plain class attributes below nn.Linear. A forward, a helper method the
    model calls on the layer (``self.fc.gate(self.fc(x))``) or a property of its own keeps it
    float. (The class torch makes for a parametrized layer is looked through.)"""
    mro = cls.__mro__
    for klass in mro[:mro.index(nn.Linear)]:
        if klass.__module__ == parametrize.__name__:
            continue
        for name, v in vars(klass).items():
            if name in ("forward", "__call__"):
                return False
            # (an override of what nn.Linear has, reset_parameters or extra_repr, is no method
            # the model could call on the int8 layer and miss)
            if (name != "__init__" and (inspect.isfunction(v) or isinstance(v, property))
                    and not hasattr(nn.Linear, name)):
                return False
    return True


@functools.lru_cache(maxsize=None)
def _linear_instance_keys() -> frozenset:
    """The instance attributes every nn.Linear has (its hook and state dicts, in / out
    features, training), and those the flows or loaders set on any module."""
    return frozenset(vars(nn.Linear(1, 1, device="meta"))) | {"qconfig", "weight", "bias"}


def _linear_subclass_state(m: nn.Module, target) -> Optional[dict]:
    """The plain attributes an nn.Linear subclass instance has beyond nn.Linear's (a temperature,
    a flag the model reads, Hugging Face's ``_is_hf_initialized``): its int8 module gets them
    too. None when it holds what cannot be carried: parameters, buffers or submodules of its
    own (a weight re-parametrization's are no such state: it is baked into the weight), or an
    attribute its int8 class has under the same name."""
    hooked = bool(list(_norm_hooks(m)))
    own = set(m._parameters) - {"weight", "bias"} or m._buffers
    if (own and not hooked) or set(m._modules) - {"parametrizations"}:
        return None
    extra = {k: v for k, v in vars(m).items() if k not in _linear_instance_keys() and not k.startswith("_tq")
             and not (callable(v) and not isinstance(v, (torch.Tensor, nn.Module)))}  # (a per-instance forward, hooks)
    if any(hasattr(target, k) for k in extra):
        return None
    return extra


def _reached_modules(model: nn.Module, targets) -> list:
    """[(name, module)] of the modules the swap reaches (each once): those not inside a module
    that is swapped as a whole (its type mapped, with a qconfig)."""
    out, seen = [], set()

    def visit(mod, prefix):
        if id(mod) in seen:
            return
        seen.add(id(mod))
        out.append((prefix, mod))
        if type(mod) in targets and getattr(mod, "qconfig", None) is not None:
            return
        for name, child in mod._modules.items():
            if child is not None and not _is_observer(child):
                visit(child, f"{prefix}.{name}" if prefix else name)

    visit(model, "")
    return out


def _swapped_modules(model: nn.Module, targets) -> list:
    """[(name, module)] of the modules quantize_dynamic's swap replaces."""
    return [(n, m) for n, m in _reached_modules(model, targets)
            if type(m) in targets and getattr(m, "qconfig", None) is not None]


def _keep_unswappable_float(model: nn.Module, targets, base_targets) -> Dict[int, dict]:
    """Leaves in float (qconfig None), with a warning naming them, the modules under a qconfig that
    the swap reaches and no dynamic int8 module can stand for: a module whose parameters are
    uninitialized (a lazy module before its first forward: no values, no shape), and an
    nn.Linear subclass with a forward, methods or properties of its own, or with parameters,
    buffers or submodules beyond nn.Linear's (as torch.ao, which swaps exact types only, leaves
    it). Returns {id(module): {attribute: value}}: the plain attributes of the Linear subclasses
    that are swapped (:func:`_linear_subclass_state`), which their int8 modules get too."""
    kinds = tuple(k for k in targets if isinstance(k, type))
    lazy: List[str] = []
    kept: Dict[str, Dict[str, List[str]]] = {"forward": {}, "methods": {}, "state": {}}
    carry: Dict[int, dict] = {}
    for name, m in _reached_modules(model, targets):
        if getattr(m, "qconfig", None) is None:
            continue
        if isinstance(m, kinds) and any(p is not None and nn.parameter.is_lazy(p) for p in m._parameters.values()):
            lazy.append(name or "<model>")
            m.qconfig = None
            continue
        cls = type_before_parametrizations(m)
        if (not isinstance(m, nn.Linear) or nn.Linear not in targets or cls in base_targets
                or cls.__module__.startswith("torchquant.")):
            continue
        if type(m) not in targets:
            why = "forward" if _overrides_forward(cls) else "methods"
        else:
            state = _linear_subclass_state(m, targets[type(m)])
            if state is not None:
                if state:
                    carry[id(m)] = state
                continue
            why = "state"
        kept[why].setdefault(cls.__name__, []).append(name or "<model>")
        m.qconfig = None
    if lazy:
        warnings.warn(f"quantize_dynamic: {lazy[:5]}{' ...' if len(lazy) > 5 else ''} have uninitialized (lazy) "
                      "parameters and stay in float: run a forward pass on the model first, which gives them their "
                      "shapes and values, then quantize it", UserWarning, stacklevel=user_stacklevel())
    if kept["forward"]:
        warnings.warn(f"quantize_dynamic: {sorted(kept['forward'])} subclass nn.Linear but have a forward() of their "
                      "own, which a dynamic int8 Linear would not run; they stay in float (name the class in "
                      "arguments 'qconfig_spec' and 'mapping' to swap it anyway)", UserWarning,
                      stacklevel=user_stacklevel())
    for why, what in (("methods", "methods or properties of their own (which the model may call on them)"),
                      ("state", "parameters, buffers or submodules of their own")):
        if kept[why]:
            layers = [n for names in kept[why].values() for n in names]
            warnings.warn(f"quantize_dynamic: {sorted(kept[why])} ({layers[:5]}{' ...' if len(layers) > 5 else ''}) "
                          f"subclass nn.Linear but have {what}, which a dynamic int8 Linear would not have; they stay "
                          "in float (name the class in arguments 'qconfig_spec' and 'mapping' to swap it anyway)",
                          UserWarning, stacklevel=user_stacklevel())
    return carry


def _warn_tied(model: nn.Module, targets) -> None:
    """Warns about the modules to be swapped whose parameters are shared with a module that is
    not (a language model's head tied to its input embedding): the swap gives the one an int8
    copy and leaves the other the float weight, which are then no longer tied."""
    holders: Dict[int, list] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for pname, p in mod._parameters.items():
            if p is not None:
                holders.setdefault(id(p), []).append((mod, f"{mname}.{pname}" if mname else pname))
    tied = []
    for name, m in _swapped_modules(model, targets):
        inside = {id(x) for x in m.modules()}
        for pname, p in m.named_parameters():
            others = sorted({full for mod, full in holders.get(id(p), []) if id(mod) not in inside})
            if others:
                tied.append(f"{name}.{pname} is {', '.join(others)}")
    if tied:
        warnings.warn(f"quantize_dynamic: tied weights ({'; '.join(tied[:3])}{'; ...' if len(tied) > 3 else ''}): "
                      "the quantized module gets an int8 copy and the other keeps the float weight, so they are no "
                      "longer tied (the state dict holds both; a change to one does not reach the other); to keep "
                      "them tied, keep the quantized module float by its name, with None in argument 'qconfig_spec' "
                      "(e.g. {nn.Linear: torchquant.default_dynamic_qconfig, 'lm_head': None})", UserWarning,
                      stacklevel=user_stacklevel())


_CONV1D_TARGETS: Dict[type, type] = {}


def _conv1d_target(target):
    """The mapping target of Hugging Face's Conv1D for a mapping whose nn.Linear maps to
    ``target``: torchquant's DynamicLinear takes it through nnqd.Conv1DAsLinear; another class
    (torch.ao's dynamic Linear, a user's) gets the nn.Linear the Conv1D computes as (its weight
    transposed once) in its from_float."""
    if target is None or target is nnqd.Linear:
        return None if target is None else nnqd.Conv1DAsLinear
    if target not in _CONV1D_TARGETS:
        def from_float(cls, mod, name=None):
            return _from_float(target, nnqd.Conv1DAsLinear.as_linear(mod, name), name or "Conv1D")

        _CONV1D_TARGETS[target] = type(f"Conv1DAs{target.__name__}", (), {
            "__module__": __name__, "from_float": classmethod(from_float),
            "__doc__": f"Hugging Face's Conv1D quantized by {target.__name__}.from_float on the nn.Linear it "
                       "computes as."})
    return _CONV1D_TARGETS[target]


def _keep_mha_out_proj_float(model, targets, explicit):
    """MultiheadAttention reads ``out_proj.weight`` and ``.bias`` directly (its fused kernel and
    F.multi_head_attention_forward): an int8 out_proj would run in float on a dequantized weight
    there (with torch.ao's dynamic Linear, whose ``weight`` is a method, it failed). Its out_proj
    stays float unless its own type is in ``explicit`` (the types of ``qconfig_spec`` that the
    mapping has); a MultiheadAttention swapped as a whole is left as it is."""
    for mod in model.modules():
        swapped = type(mod) in targets and getattr(mod, "qconfig", None) is not None  # (as a whole)
        if isinstance(mod, nn.MultiheadAttention) and not swapped and type(mod.out_proj) not in explicit:
            mod.out_proj.qconfig = None


def _extend_dynamic(model, qconfig_spec, targets):
    """``qconfig_spec`` and ``targets`` completed for the module types of ``model`` matched by
    :func:`_dynamic_by_kind`: such a type gets the qconfig of the first spec entry it is a
    subclass of (a Conv1D the entry for nn.Linear, unless it has its own). An nn.Linear subclass
    that is not matched gets that qconfig too, and no target: :func:`_keep_unswappable_float`
    then names it (it stays float)."""
    spec, targets = dict(qconfig_spec), dict(targets)
    for cls in {type(m) for m in model.modules()}:
        if cls in targets:
            continue
        target = _dynamic_by_kind(cls, targets)
        if target is None and not (isinstance(cls, type) and issubclass(cls, nn.Linear) and nn.Linear in targets
                                   and not cls.__module__.startswith("torchquant.")):
            continue
        if target is not None:
            targets[cls] = target
        if cls not in spec:
            for key, qc in qconfig_spec.items():
                if isinstance(key, type) and (issubclass(cls, key) or (nnqd.is_hf_conv1d(cls) and key is nn.Linear)):
                    spec[cls] = qc
                    break
    return spec, targets


def _module_snapshot(model: nn.Module) -> list:
    """What an ``inplace=True`` flow changes on the modules of ``model``, for
    :func:`_restore_snapshot` when it fails: each module's class and attributes (its parameter,
    buffer, child and hook dicts by content), and the data of parametrized weights (baking a
    parametrization writes it)."""
    saved = []
    for m in model.modules():
        state = dict(m.__dict__)
        inner = [(v, copy.copy(v)) for v in state.values() if type(v) in (dict, OrderedDict, set)]
        data = ([(p, p.data) for p in m.parametrizations.parameters()]
                if parametrize.is_parametrized(m) else [])
        saved.append((m, m.__class__, state, inner, data))
    return saved


def _restore_snapshot(saved: Optional[list]) -> None:
    for m, cls, state, inner, data in saved or ():
        m.__class__ = cls
        m.__dict__.clear()
        m.__dict__.update(state)
        for obj, content in inner:
            obj.clear()
            obj.update(content)
        for p, d in data:
            p.data = d


# ---------------------------------------------------------------- fusion
def _fuse_linear_relu(linear, relu, is_qat=False):
    return intrinsic.LinearReLU(linear, relu)


_FUSIONS = {(nn.Linear, nn.ReLU): _fuse_linear_relu}


def _get(model, path):
    """The submodule named path, by name as named_modules() gives it (get_submodule's rule):
    a slice of an nn.Sequential keeps its children's keys ('2', '3', ...), so a number is a
    name, not a position."""
    mod = model
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


def _set(model, path, new):
    parent_path, _, last = path.rpartition(".")
    parent = _get(model, parent_path) if parent_path else model
    setattr(parent, last, new)


def fuse_modules(model: nn.Module, modules_to_fuse: Union[Sequence[str], Sequence[Sequence[str]]], inplace: bool = False,
                 fuser_func=None, fuse_custom_config_dict=None) -> nn.Module:
    """Fuses groups of modules given by name (torch.ao.quantization.fuse_modules): the first
    becomes the fused module, the others nn.Identity. Supported: [Linear, ReLU], [Linear,
    BatchNorm1d], for Conv1d/2d/3d [Conv, ReLU], [Conv, BatchNorm] and [Conv, BatchNorm,
    ReLU] (the ReLU may be a ReLU6), [BatchNorm2d/3d, ReLU], and [ConvTranspose1d/2d/3d,
    BatchNorm]; BatchNorm is folded into the weight and bias (torch's fuse_conv_bn_eval), which
    needs the modules in eval mode. As torch.ao's: ``fuser_func(modules, is_qat,
    additional_fuser_method_mapping)`` replaces the built-in fusion when given (it returns the
    group's new modules, one per name), and ``fuse_custom_config_dict["additional_fuser_method_mapping"]``
    (``{(Linear, BatchNorm1d): fuser_method(is_qat, linear, bn)}``) adds patterns.

    >>> model = torchquant.fuse_modules(model, [["fc1", "relu1"], ["fc2", "relu2"]])
    """
    return _fuse(model, modules_to_fuse, inplace, False, fuser_func, fuse_custom_config_dict)


def _fuse(model, modules_to_fuse, inplace, is_qat, fuser_func=None, fuse_custom_config_dict=None):
    fn = "fuse_modules_qat" if is_qat else "fuse_modules"
    _check_args(fn, model)
    extra = _custom_config(fn, "fuse_custom_config_dict", fuse_custom_config_dict, "additional_fuser_method_mapping",
                           "__call__")
    if fuser_func is not None and not callable(fuser_func):
        raise TypeError(f"{fn}: argument 'fuser_func' must be a function or None, got {fuser_func!r}")
    if fuser_func is not None and getattr(fuser_func, "__module__", "") + "." + getattr(fuser_func, "__name__", "") \
            == "torch.ao.quantization.fuse_modules.fuse_known_modules":
        fuser_func = None  # torch.ao's default: the built-in fusion, which does what it does
    if isinstance(modules_to_fuse, str) or not isinstance(modules_to_fuse, (list, tuple)):
        raise TypeError(f"{fn}: argument 'modules_to_fuse' must be a list of names or a list of lists of names, "
                        f"got {modules_to_fuse!r}")
    if not inplace:
        model = _deepcopy(model)
    _as_plain_convs(model)
    groups = [modules_to_fuse] if modules_to_fuse and isinstance(modules_to_fuse[0], str) else modules_to_fuse
    for group in groups:
        # (a number, an nn.Sequential's child by position, failed with "'int' object has no attribute 'split'")
        for n in (group if isinstance(group, (list, tuple)) else [group]):
            if not isinstance(n, str):
                hint = f" (an nn.Sequential's children are named '{n}', '{n + 1}', ...)" if isinstance(n, int) else ""
                raise TypeError(f"{fn}: module names must be strings, as model.named_modules() gives them, got {n!r} "
                                f"({type(n).__name__}) in argument 'modules_to_fuse' {modules_to_fuse!r}{hint}")
    try:
        firsts = {id(_get(model, g[0])) for g in groups if g}
    except AttributeError:
        firsts = set()  # the loop below names the missing module
    if fuser_func is None:
        _bake_reparametrizations(model, fn, lambda m: id(m) in firsts)
    for group in groups:
        try:
            mods = [_get(model, n) for n in group]
        except (AttributeError, IndexError) as e:
            raise ValueError(f"{fn}: cannot find module ({e}) in group {list(group)}") from None
        if fuser_func is not None:  # the user's fuser, as torch.ao calls it
            new = fuser_func(mods, is_qat, extra)
            if not isinstance(new, (list, tuple)) or len(new) != len(mods):
                raise TypeError(f"{fn}: argument 'fuser_func' must return a list of {len(mods)} modules for group "
                                f"{list(group)}, got {new!r}")
            for n, m in zip(group, new):
                _set(model, n, m)
            continue
        method = extra.get(tuple(type(m) for m in mods))
        fuse = (lambda *ms, is_qat: method(is_qat, *ms)) if method is not None else \
            _FUSIONS.get(tuple(type(m) for m in mods))
        if fuse is None:
            raise ValueError(f"{fn}: cannot fuse {[type(m).__name__ for m in mods]} (group {list(group)}); "
                             f"supported patterns: {[[t.__name__ for t in k] for k in _FUSIONS]}")
        if (any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods)
                and len({m.training for m in mods}) > 1):
            modes = ", ".join(f"'{n}' {'train' if m.training else 'eval'}" for n, m in zip(group, mods))
            raise ValueError(f"{fn}: the modules of group {list(group)} must all be in the same mode (train or eval) "
                             f"to fuse a BatchNorm, got {modes} (torch.ao refuses this too)")
        for n, m in zip(group[1:], mods[1:]):
            if _batch_stats_bn(m):
                raise ValueError(f"{fn}: cannot fuse group {list(group)}: '{n}' ({type(m).__name__}) has "
                                 "track_running_stats=False, so it normalizes with each batch's statistics and has no "
                                 "fixed scale and shift to fold into the layer before it; leave it out of the group")
        first, last = mods[0], mods[-1]
        pre = [(h, hid in first._forward_pre_hooks_with_kwargs) for hid, h in first._forward_pre_hooks.items()]
        post = [(h, hid in last._forward_hooks_with_kwargs, hid in last._forward_hooks_always_called)
                for hid, h in last._forward_hooks.items()]
        # The first module's pre-hooks are taken off it while the fuser runs: the folding fusers
        # (torch's fuse_conv_bn_eval / fuse_linear_bn_eval, ConvTranspose and FrozenBatchNorm
        # folding) return a deep copy of it, hooks included, and the fused module would run
        # them twice (the copy's and the ones registered on it below).
        saved_pre = (OrderedDict(first._forward_pre_hooks), dict(first._forward_pre_hooks_with_kwargs))
        first._forward_pre_hooks.clear()
        first._forward_pre_hooks_with_kwargs.clear()
        try:
            fused = fuse(*mods, is_qat=is_qat)
        finally:
            first._forward_pre_hooks.update(saved_pre[0])
            first._forward_pre_hooks_with_kwargs.update(saved_pre[1])
        # The user's hooks move to the fused module (torch.ao's rule): the first module's
        # pre-hooks and the last one's forward hooks; those of modules in between are lost.
        if fused is not first:
            first._forward_pre_hooks.clear()
            first._forward_pre_hooks_with_kwargs.clear()
            for h, kw in pre:
                fused.register_forward_pre_hook(h, with_kwargs=kw)
        if fused is not last:
            last._forward_hooks.clear()
            for h, kw, always in post:
                fused.register_forward_hook(h, with_kwargs=kw, always_call=always)
        fused.train(mods[0].training)
        if hasattr(mods[0], "qconfig"):
            fused.qconfig = mods[0].qconfig
        _set(model, group[0], fused)
        for n in group[1:]:
            ident = nn.Identity()
            ident.train(mods[0].training)
            _set(model, n, ident)
    return model


def fuse_modules_qat(model: nn.Module, modules_to_fuse: Union[Sequence[str], Sequence[Sequence[str]]],
                     inplace: bool = False, fuser_func=None, fuse_custom_config_dict=None) -> nn.Module:
    """The QAT version of :func:`fuse_modules` (torch.ao.quantization.fuse_modules_qat): the
    same patterns, but a BatchNorm is kept, not folded: [Conv, BatchNorm(, ReLU)] becomes a
    ``torchquant.nn.intrinsic.ConvBn*`` / ``ConvBnReLU*`` that prepare_qat turns into its QAT
    module (BatchNorm folded into the fake-quantized weight at each step, folded for good at
    convert). [Linear, ReLU] and [Conv, ReLU] fuse as for inference.

    >>> model = torchquant.fuse_modules_qat(model.train(), [["conv1", "bn1", "relu1"]])
    """
    return _fuse(model, modules_to_fuse, inplace, True, fuser_func, fuse_custom_config_dict)


def _fusion_kind(m: nn.Module) -> type:
    """The class a module fuses as: its torch.nn base for a plain convolution subclass and for a
    layer with a re-parametrized weight (fuse_modules bakes its effective weight first)."""
    from torch.nn.utils import parametrize

    if parametrize.is_parametrized(m):
        return type(m).__bases__[0]
    return _plain_conv_base(type(m)) or type(m)


def find_fusable_modules(model: nn.Module, qat: bool = False, example_inputs=None) -> List[List[str]]:
    """The groups of module names that :func:`fuse_modules` takes, found by tracing ``model``
    with ``torch.fx``: each chain [Conv, BatchNorm, ReLU], [Conv, BatchNorm], [Conv, ReLU],
    [Linear, BatchNorm1d], [Linear, ReLU], [BatchNorm, ReLU] or [ConvTranspose, BatchNorm] (not
    with ``qat=True``: the groups for :func:`fuse_modules_qat`) in which each module is called
    once, on the previous one's output and on nothing else, and that output has no other user.
    A module called more than once (a ResNet block's one ``relu`` after both its first
    BatchNorm and its residual add) is left out, and so is a BatchNorm with
    ``track_running_stats=False`` (it stays float): fusing it would drop it from its other call.
    torch.ao's eager API has no such search (its FX API fuses while it traces); the model is
    not changed, and the groups can be read, edited and passed on.

    [Linear, BatchNorm1d] folds the BatchNorm's statistics into the Linear's output features,
    which is right for a 2-D ``[N, C]`` output only (on ``[N, L, C]`` a BatchNorm1d(L) normalizes
    dim 1): the pair is proposed when ``bn.num_features == linear.out_features`` and, given
    ``example_inputs`` (a tensor or a tuple of ``forward``'s arguments; the model runs once on
    them, in eval mode without gradients, its modes restored), when the Linear's output was 2-D on
    every call. Without example inputs a 3-D output with L == C cannot be told apart: pass them.

    >>> groups = torchquant.find_fusable_modules(model)   # [['conv1', 'bn1', 'relu'], ...]
    >>> model = torchquant.fuse_modules(model.eval(), groups)
    """
    import torch.fx

    _check_args("find_fusable_modules", model)
    if isinstance(qat, (torch.Tensor, tuple, list, dict)):
        raise TypeError(f"find_fusable_modules: argument 'qat' must be a bool, got {type(qat).__name__}; "
                        "example inputs go in 'example_inputs='")

    try:
        from .quantizable import _Tracer  # torch.nn's leaves, and convolution subclasses kept as modules
        graph = _Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 — data-dependent control flow and the like
        raise RuntimeError(
            f"find_fusable_modules: torch.fx could not trace the model ({type(exc).__name__}: {exc}); "
            "name the groups to fuse_modules by hand") from exc
    modules = dict(model.named_modules())
    calls: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    patterns = set(_FUSIONS) - (_QAT_UNFUSABLE if qat else set())

    def next_in_chain(node):
        users = list(node.users)
        if len(users) != 1:
            return None
        u = users[0]
        if u.op != "call_module" or len(u.args) != 1 or u.args[0] is not node or u.kwargs:
            return None
        return u

    # [Linear, BatchNorm1d]: the BatchNorm must normalize the Linear's output features, its dim 1
    # (a 2-D output); on [N, L, C] it normalizes L, and folding it into the C outputs is wrong
    # (fuse_modules raises for L != C, and folds silently for L == C).
    ranks = None
    if example_inputs is not None:
        def before_bn(node):
            user = next(iter(node.users)) if len(node.users) == 1 else None
            return (user is not None and user.op == "call_module"
                    and _fusion_kind(modules[user.target]) is nn.BatchNorm1d)

        linears = [n.target for n in graph.nodes
                   if n.op == "call_module" and _fusion_kind(modules[n.target]) is nn.Linear and before_bn(n)]
        ranks = _linear_output_ranks("find_fusable_modules", model, linears, example_inputs)

    def linear_bn_folds(linear_name, bn_name):
        linear, bn = modules[linear_name], modules[bn_name]
        if bn.num_features != linear.out_features:
            return False
        return ranks is None or not ranks.get(linear_name) or ranks[linear_name] == {2}

    groups, taken = [], set()
    for node in graph.nodes:
        if node.op != "call_module" or node.target in taken:
            continue
        chain = [node]
        while len(chain) < 3:
            nxt = next_in_chain(chain[-1])
            if nxt is None:
                break
            chain.append(nxt)
        for length in (3, 2):
            part = chain[:length]
            if len(part) < length:
                continue
            names = [n.target for n in part]
            kinds = tuple(_fusion_kind(modules[n]) for n in names)
            if (kinds in patterns and all(calls[n] == 1 for n in names)
                    and not taken.intersection(names) and not any(_batch_stats_bn(modules[n]) for n in names)
                    and (kinds != (nn.Linear, nn.BatchNorm1d) or linear_bn_folds(*names))):
                groups.append(names)
                taken.update(names)
                break
    return groups


def _linear_output_ranks(fn: str, model: nn.Module, names: List[str], example_inputs) -> Dict[str, set]:
    """{name: the ranks of the named modules' outputs} over one run of model on example_inputs
    (eval mode, no gradients: no BatchNorm statistics change; every module's mode restored)."""
    args = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"{fn}: argument 'example_inputs' must be a tensor or a tuple of forward's arguments, "
                        f"got {type(example_inputs).__name__}")
    ranks: Dict[str, set] = {n: set() for n in names}

    def hook(name):
        def fn_(module, inputs, out):
            if isinstance(out, torch.Tensor):
                ranks[name].add(out.dim())
        return fn_

    handles = [_get(model, n).register_forward_hook(hook(n)) for n in names]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(*args)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"{fn}: running the model on 'example_inputs' failed ({type(exc).__name__}: {exc})") from exc
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    return ranks


# ---------------------------------------------------------------- convolutions
from . import _conv_flow  # noqa: E402

_STATIC.update(_conv_flow.static_mappings())
_QAT.update(_conv_flow.qat_mappings())
_OBSERVED = _OBSERVED + tuple(_conv_flow.static_mappings())
_FUSED = (intrinsic.LinearReLU, intrinsic.BNReLU2d, intrinsic.BNReLU3d) + _conv_flow.fused_types()
_FUSIONS.update(_conv_flow.fusions())
_RELU_FOLDS = {nnq.Linear: nnq.LinearReLU, **_conv_flow.relu_folds()}


# ---------------------------------------------------------------- CNN modules
# FloatFunctional / QFunctional, BatchNorm, BN-ReLU, activations and normalizations
# (torchquant.nn.quantized_ops); torch.ao's own FloatFunctional and BNReLU modules are accepted
# too (torchvision's quantizable models and fuse_model() make them).
from .nn import intrinsic_bn as _ibn  # noqa: E402
from .nn import quantized_ops as _nqo  # noqa: E402

_FLOAT_FUNCTIONALS = _nqo.FLOAT_FUNCTIONAL_TYPES
_CNN_STATIC = {t: _nqo.QFunctional for t in _FLOAT_FUNCTIONALS}
_CNN_STATIC.update({
    nn.BatchNorm2d: _nqo.BatchNorm2d,
    nn.BatchNorm3d: _nqo.BatchNorm3d,
    _ibn.BNReLU2d: _nqo.BNReLU2d,
    _ibn.BNReLU3d: _nqo.BNReLU3d,
    nn.ReLU6: _nqo.ReLU6,
    nn.Hardsigmoid: _nqo.Hardsigmoid,
    nn.Hardswish: _nqo.Hardswish,
    nn.ELU: _nqo.ELU,
    nn.LeakyReLU: _nqo.LeakyReLU,
    nn.PReLU: _nqo.PReLU,
    nn.Sigmoid: _nqo.Sigmoid,
    nn.LayerNorm: _nqo.LayerNorm,
    nn.GroupNorm: _nqo.GroupNorm,
    nn.InstanceNorm1d: _nqo.InstanceNorm1d,
    nn.InstanceNorm2d: _nqo.InstanceNorm2d,
    nn.InstanceNorm3d: _nqo.InstanceNorm3d,
})
_CNN_STATIC.update({t: _nqo.LookupActivation for t in _nqo.LOOKUP_ACTIVATIONS})
# torchvision's FrozenBatchNorm2d not after a convolution: the int8 BatchNorm2d of its constants.
_CNN_STATIC.update({t: _nqo.BatchNorm2d for t in _conv_flow.frozen_bn_types()})
_AO_STUBS = ()
try:
    import torch.ao.nn.intrinsic as _ao_intrinsic
    from torch.ao.quantization import DeQuantStub as _AoDeQuantStub
    from torch.ao.quantization import QuantStub as _AoQuantStub

    _CNN_STATIC[_ao_intrinsic.BNReLU2d] = _nqo.BNReLU2d
    _CNN_STATIC[_ao_intrinsic.BNReLU3d] = _nqo.BNReLU3d
    # torch.ao's stubs (torchvision's quantizable models hold them) convert as torchquant's.
    _CNN_STATIC[_AoQuantStub] = nnq.Quantize
    _CNN_STATIC[_AoDeQuantStub] = nnq.DeQuantize
    _AO_STUBS = (_AoDeQuantStub,)
except ImportError:  # a torch without torch.ao
    pass
_STATIC.update(_CNN_STATIC)
_OBSERVED = _OBSERVED + tuple(t for t in _CNN_STATIC
                              if t not in (nn.ReLU6, nn.Hardsigmoid, nnq.DeQuantize) and t not in _AO_STUBS and t not in _FLOAT_FUNCTIONALS)
_PASSTHROUGH = _PASSTHROUGH + _nqo.QTENSOR_NATIVE + (nn.ReLU6,) + _AO_STUBS
# nn.Dropout1d/2d/3d, AlphaDropout, FeatureAlphaDropout: as nn.Dropout (the identity in inference),
# no observer, swapped for modules that pass a QTensor through (a float tensor gets their dropout).
_STATIC.update(_nqo.DROPOUTS)
# MultiheadAttention under a static qconfig: its four projections int8 (the qconfig's weight
# observer; each input row quantized on the fly, as its input is float: the attention computes in
# float between them), where it stayed float before; torch.ao's static flow needs its custom
# module configuration for that.
_STATIC[nn.MultiheadAttention] = nnqd.MultiheadAttention
_PASSTHROUGH = _PASSTHROUGH + tuple(_nqo.DROPOUTS)
# torchvision's StochasticDepth (identity in inference: as nn.Dropout, no observer, swapped for one
# that passes a QTensor through) and Permute (a QTensor permutes natively): they were observed,
# warned about and run in float, a dequantize / requantize around each.
_TV_STOCHASTIC_DEPTH, _TV_PERMUTE = _conv_flow.torchvision_passthrough_types()
if _TV_STOCHASTIC_DEPTH is not None:
    _STATIC[_TV_STOCHASTIC_DEPTH] = nnq.StochasticDepth
    _PASSTHROUGH = _PASSTHROUGH + (_TV_STOCHASTIC_DEPTH, _TV_PERMUTE)


def _fuse_bn_relu(bn, relu, is_qat=False):
    return (_ibn.BNReLU2d if type(bn) is nn.BatchNorm2d else _ibn.BNReLU3d)(bn, relu)


_FUSIONS[(nn.BatchNorm2d, nn.ReLU)] = _fuse_bn_relu
_FUSIONS[(nn.BatchNorm3d, nn.ReLU)] = _fuse_bn_relu

_QAT_UNFUSABLE = _conv_flow.qat_unfusable()
