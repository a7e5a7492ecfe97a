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
import warnings
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

from .fake_quantize import FakeQuantizeBase
from .nn import intrinsic, qat
from .nn import quantized as nnq
from .observer import ObserverBase
from .qconfig import QConfig, default_dynamic_qconfig
from .qtensor import QTensor
from .stubs import DeQuantStub, QuantStub

__all__ = [
    "propagate_qconfig_",
    "prepare",
    "prepare_qat",
    "convert",
    "quantize",
    "quantize_qat",
    "quantize_dynamic",
    "fuse_modules",
    "get_default_static_quant_module_mappings",
    "get_default_qat_module_mappings",
    "get_default_dynamic_quant_module_mappings",
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
# Modules whose output is observed: their int8 version needs output qparams.
_OBSERVED = (nn.Linear, intrinsic.LinearReLU, qat.Linear, qat.LinearReLU, QuantStub)
# Modules that need no observer: int8 in, int8 out with the same qparams (or no tensors at all).
_PASSTHROUGH = (nn.ReLU, nn.Dropout, nn.Flatten, nn.Identity, DeQuantStub)


def get_default_static_quant_module_mappings() -> Dict[type, type]:
    return dict(_STATIC)


def get_default_qat_module_mappings() -> Dict[type, type]:
    return dict(_QAT)


def get_default_dynamic_quant_module_mappings() -> Dict[type, type]:
    return dict(_DYNAMIC)


def _is_observer(m) -> bool:
    return isinstance(m, (ObserverBase, FakeQuantizeBase))


def propagate_qconfig_(module: nn.Module, qconfig_dict: Optional[dict] = None) -> None:
    """Gives every submodule a ``qconfig``: its own if set (``None`` switches quantization off
    for it and its children), else the one for its type or name in ``qconfig_dict``, else its
    parent's."""
    qconfig_dict = qconfig_dict or {}

    def visit(mod, parent_qconfig, prefix):
        qc = qconfig_dict.get(type(mod), parent_qconfig)
        qc = qconfig_dict.get(prefix, qc)
        qc = getattr(mod, "qconfig", qc)
        mod.qconfig = qc
        for name, child in mod.named_children():
            if not _is_observer(child):
                visit(child, qc, f"{prefix}.{name}" if prefix else name)

    visit(module, None, "")


def _observer_hook(module, inputs, output):
    return module.activation_post_process(output)


def _device_of(mod: nn.Module):
    for t in list(mod.parameters()) + list(mod.buffers()):
        return t.device
    return None


def _model_device(model: nn.Module):
    """The one device of the model's parameters and buffers (None if none or several): where
    observers of modules that hold no tensors themselves (QuantStub) go, as in torch.ao."""
    devices = {t.device for t in list(model.parameters()) + list(model.buffers())}
    return devices.pop() if len(devices) == 1 else None


def _add_observers(model: nn.Module) -> List[str]:
    """Adds ``activation_post_process`` and its forward hook to every observed module under a
    qconfig; returns the names of leaf modules under a qconfig that stay float."""
    unsupported = []
    model_dev = _model_device(model)
    for name, mod in model.named_modules():
        qc = getattr(mod, "qconfig", None)
        if qc is None or _is_observer(mod):
            continue
        if type(mod) in _OBSERVED and not hasattr(mod, "activation_post_process"):
            obs = qc.activation()
            dev = _device_of(mod) or model_dev
            if dev is not None:
                obs.to(dev)
            mod.add_module("activation_post_process", obs)
            mod.register_forward_hook(_observer_hook)
        elif (not any(True for _ in mod.children()) and not isinstance(mod, _PASSTHROUGH)
              and type(mod) not in _OBSERVED and mod is not model):
            unsupported.append(f"{name} ({type(mod).__name__})")
    return unsupported


def _has_any_qconfig(model) -> bool:
    return any(getattr(m, "qconfig", None) is not None for m in model.modules())


def prepare(model: nn.Module, inplace: bool = False, allow_list=None, observer_non_leaf_module_list=None,
            prepare_custom_config_dict=None) -> nn.Module:
    """Inserts observers into a float model (torch.ao.quantization.prepare): every Linear (or
    fused LinearReLU) and QuantStub under a qconfig records its output range during the forward
    passes that follow. Returns the prepared model (a copy unless ``inplace``).
    """
    if not inplace:
        model = copy.deepcopy(model)
    propagate_qconfig_(model)
    if not _has_any_qconfig(model):
        warnings.warn("prepare: no qconfig is set on the model or any submodule, so nothing will be quantized; "
                      "set model.qconfig = torchquant.get_default_qconfig('x86')", UserWarning, stacklevel=2)
        return model
    unsupported = _add_observers(model)
    if unsupported:
        warnings.warn("prepare: these modules have no int8 implementation and stay in float: " + ", ".join(unsupported),
                      UserWarning, stacklevel=2)
    return model


def _swap(model: nn.Module, mapping: Dict[type, type], prefix: str, require_qconfig: bool = True,
          memo: Optional[Dict[int, nn.Module]] = None) -> None:
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
        if target is not None and (getattr(child, "qconfig", None) is not None or not require_qconfig):
            try:
                new = target.from_float(child, name=full)
            except RuntimeError as e:
                raise RuntimeError(f"convert: module '{full}' ({type(child).__name__}) could not be quantized: {e}") from e
            if hasattr(child, "training"):
                new.train(child.training)
            memo[id(child)] = new
            setattr(model, name, new)
        else:
            memo[id(child)] = child
            _swap(child, mapping, full, require_qconfig, memo)


_warned_fallback = set()


def _float_fallback_hook(module, args, kwargs):
    if not any(isinstance(a, QTensor) for a in list(args) + list(kwargs.values())):
        return None
    key = id(module)
    if key not in _warned_fallback:
        _warned_fallback.add(key)
        warnings.warn(f"{module._get_name()} has no int8 implementation: its QTensor input is dequantized and it "
                      "runs in float", UserWarning, stacklevel=2)
    unwrap = lambda v: v.dequantize() if isinstance(v, QTensor) else v  # noqa: E731
    return tuple(unwrap(a) for a in args), {k: unwrap(v) for k, v in kwargs.items()}


def _clean(model: nn.Module) -> None:
    """Removes observers, their hooks and qconfigs left on modules that were not swapped; float
    leaf modules under a qconfig get a hook that dequantizes QTensor inputs (with a warning)."""
    for mod in model.modules():
        if hasattr(mod, "activation_post_process") and not isinstance(mod, (nnq.Linear, nnq.Quantize)):
            for k, hook in list(mod._forward_hooks.items()):
                if hook is _observer_hook:
                    del mod._forward_hooks[k]
            del mod.activation_post_process
        if getattr(mod, "qconfig", None) is not None and not any(True for _ in mod.children()) \
                and not type(mod).__module__.startswith("torchquant.") and not isinstance(mod, nn.Identity):
            mod.register_forward_pre_hook(_float_fallback_hook, with_kwargs=True)
        if hasattr(mod, "qconfig"):
            del mod.qconfig


def _fold_relus(model: nn.Module) -> None:
    """In an nn.Sequential, an int8 Linear directly followed by an int8 ReLU becomes one
    LinearReLU call. The result is bit-identical: requantization is monotonic and maps 0 to the
    zero point, so requant(max(y, 0)) == max(requant(y), zero_point) with the same qparams. It
    saves one op (and its dispatch) per pair, which is most of the cost at small batch sizes."""
    for mod in model.modules():
        if not isinstance(mod, nn.Sequential):
            continue
        names = list(mod._modules.keys())
        for a, b in zip(names[:-1], names[1:]):
            lin, relu = mod._modules[a], mod._modules[b]
            if type(lin) is nnq.Linear and type(relu) is nnq.ReLU:
                lin.__class__ = nnq.LinearReLU
                ident = nn.Identity()
                ident.train(relu.training)
                mod._modules[b] = ident


def convert(module: nn.Module, mapping: Optional[Dict[type, type]] = None, inplace: bool = False,
            remove_qconfig: bool = True, convert_custom_config_dict=None) -> nn.Module:
    """Swaps observed float modules for int8 ones (torch.ao.quantization.convert): Linear and
    LinearReLU run torchquant's int8 GEMM, QuantStub/DeQuantStub become Quantize/DeQuantize.
    Inside an nn.Sequential, a Linear followed by a ReLU runs as one fused call (bit-identical).
    Raises, naming the module, if an observer has seen no data.
    """
    if not inplace:
        module = copy.deepcopy(module)
    _swap(module, mapping or _STATIC, "")
    if mapping is None:
        _fold_relus(module)
    if remove_qconfig:
        _clean(module)
    return module


def prepare_qat(model: nn.Module, mapping: Optional[Dict[type, type]] = None, inplace: bool = False) -> nn.Module:
    """Prepares for quantization-aware training (torch.ao.quantization.prepare_qat): Linear
    layers get fake-quantized weights and every observed output a FakeQuantize. The model must
    be in training mode."""
    if not model.training:
        raise ValueError("prepare_qat needs a model in training mode; call model.train() first")
    if not inplace:
        model = copy.deepcopy(model)
    propagate_qconfig_(model)
    if not _has_any_qconfig(model):
        warnings.warn("prepare_qat: no qconfig is set on the model or any submodule, so nothing will be quantized; "
                      "set model.qconfig = torchquant.get_default_qat_qconfig('x86')", UserWarning, stacklevel=2)
        return model
    _swap(model, mapping or _QAT, "")
    return prepare(model, inplace=True)


def quantize(model: nn.Module, run_fn, run_args, mapping=None, inplace: bool = False) -> nn.Module:
    """prepare, ``run_fn(model, *run_args)`` to calibrate, convert (torch.ao.quantization.quantize)."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    prepare(model, inplace=True)
    run_fn(model, *run_args)
    return convert(model, mapping, inplace=True)


def quantize_qat(model: nn.Module, run_fn, run_args, inplace: bool = False) -> nn.Module:
    """prepare_qat, ``run_fn(model, *run_args)`` to train, convert (torch.ao.quantization.quantize_qat)."""
    if not inplace:
        model = copy.deepcopy(model)
    model.train()
    prepare_qat(model, inplace=True)
    run_fn(model, *run_args)
    return convert(model.eval(), inplace=True)


def quantize_dynamic(model: nn.Module, qconfig_spec: Union[None, set, dict, Iterable] = None, dtype=torch.qint8,
                     mapping: Optional[Dict[type, type]] = None, inplace: bool = False) -> nn.Module:
    """Swaps Linear layers for dynamic int8 ones (float in, float out; activations quantized per
    row inside the kernel, weights int8 per channel), as torch.ao.quantization.quantize_dynamic.

    >>> qmodel = torchquant.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    """
    if dtype != torch.qint8:
        raise ValueError(f"quantize_dynamic supports dtype=torch.qint8, got {dtype}")
    if qconfig_spec is None:
        qconfig_spec = {nn.Linear: default_dynamic_qconfig, intrinsic.LinearReLU: default_dynamic_qconfig}
    elif not isinstance(qconfig_spec, dict):
        qconfig_spec = {k: default_dynamic_qconfig for k in qconfig_spec}
    if not inplace:
        model = copy.deepcopy(model)
    propagate_qconfig_(model, qconfig_spec)
    _swap(model, mapping or _DYNAMIC, "")
    for mod in model.modules():
        if hasattr(mod, "qconfig"):
            del mod.qconfig
    return model


# ---------------------------------------------------------------- fusion
def _fuse_linear_relu(linear, relu):
    return intrinsic.LinearReLU(linear, relu)


_FUSIONS = {(nn.Linear, nn.ReLU): _fuse_linear_relu}


def _get(model, path):
    mod = model
    for part in path.split("."):
        mod = getattr(mod, part) if not part.isdigit() or not isinstance(mod, (nn.Sequential, nn.ModuleList)) else mod[int(part)]
    return mod


def _set(model, path, new):
    parent_path, _, last = path.rpartition(".")
    parent = _get(model, parent_path) if parent_path else model
    setattr(parent, last, new)


def fuse_modules(model: nn.Module, modules_to_fuse: Union[Sequence[str], Sequence[Sequence[str]]], inplace: bool = False,
                 fuser_func=None, fuse_custom_config_dict=None) -> nn.Module:
    """Fuses groups of modules given by name (torch.ao.quantization.fuse_modules): the first
    becomes the fused module, the others nn.Identity. Supported: [Linear, ReLU].

    >>> model = torchquant.fuse_modules(model, [["fc1", "relu1"], ["fc2", "relu2"]])
    """
    if not inplace:
        model = copy.deepcopy(model)
    groups = [modules_to_fuse] if modules_to_fuse and isinstance(modules_to_fuse[0], str) else modules_to_fuse
    for group in groups:
        try:
            mods = [_get(model, n) for n in group]
        except (AttributeError, IndexError) as e:
            raise ValueError(f"fuse_modules: cannot find module ({e}) in group {list(group)}") from None
        fuse = _FUSIONS.get(tuple(type(m) for m in mods))
        if fuse is None:
            raise ValueError(f"fuse_modules: cannot fuse {[type(m).__name__ for m in mods]} (group {list(group)}); "
                             f"supported patterns: {[[t.__name__ for t in k] for k in _FUSIONS]}")
        fused = fuse(*mods)
        fused.train(mods[0].training)
        if hasattr(mods[0], "qconfig"):
            fused.qconfig = mods[0].qconfig
        _set(model, group[0], fused)
        for n in group[1:]:
            ident = nn.Identity()
            ident.train(mods[0].training)
            _set(model, n, ident)
    return model
