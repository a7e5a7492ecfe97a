"""``make_quantizable``: the arithmetic a model does between its modules (``x + y``, ``x * y``,
``torch.cat``, an add followed by a ReLU) rewritten as calls of ``FloatFunctional`` modules, by a
``torch.fx`` trace, so that ``prepare`` observes those outputs and ``convert`` runs them on int8
kernels: what torchvision's quantizable models do by hand, for a model written without
quantization in mind."""
import operator
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .nn.quantized_ops import FLOAT_FUNCTIONAL_TYPES, FloatFunctional

__all__ = ["make_quantizable"]

_ADD = (operator.add, operator.iadd, torch.add)
_MUL = (operator.mul, operator.imul, torch.mul)
_CAT = (torch.cat, torch.concat)
_RELU_FUNCTIONS = (F.relu, torch.relu)


class _Tracer:
    """torch.fx's Tracer that keeps torchquant's and torch.ao's modules (stubs, FloatFunctional,
    fused and quantized modules) as leaves, as it keeps torch.nn's."""

    @staticmethod
    def make():
        import torch.fx

        class Tracer(torch.fx.Tracer):
            def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
                mod = type(m).__module__
                if mod.startswith("torchquant.") or mod.startswith("torch.ao."):
                    return not isinstance(m, nn.Sequential)
                return super().is_leaf_module(m, qualname)

        return Tracer()


def _tensor_meta(node):
    from torch.fx.passes.shape_prop import TensorMetadata
    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    return meta if isinstance(meta, TensorMetadata) else None


def _is_float_activation(arg) -> bool:
    """A node computed by the model (not a parameter / buffer read) whose value was a float tensor."""
    import torch.fx
    if not isinstance(arg, torch.fx.Node) or arg.op == "get_attr":
        return False
    meta = _tensor_meta(arg)
    return meta is not None and meta.dtype.is_floating_point


def _is_number(arg) -> bool:
    return isinstance(arg, (int, float)) and not isinstance(arg, bool)


def _kind(node) -> Optional[str]:
    if node.op == "call_function":
        if node.target in _ADD:
            return "add"
        if node.target in _MUL:
            return "mul"
        if node.target in _CAT:
            return "cat"
    elif node.op == "call_method" and node.target in ("add", "mul"):
        return node.target
    return None


def _is_relu(node, modules: Dict[str, nn.Module]) -> bool:
    if len(node.args) < 1:
        return False
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return len(node.args) == 1 and set(node.kwargs) <= {"inplace"}
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return len(node.args) == 1 and not node.kwargs
    if node.op == "call_module":
        return type(modules.get(node.target)) is nn.ReLU and len(node.args) == 1 and not node.kwargs
    return False


def make_quantizable(model: nn.Module, example_inputs: Union[torch.Tensor, Sequence[Any]]):
    """A copy of ``model`` (a ``torch.fx.GraphModule`` holding the same submodules under the same
    names, so the same state dict) in which the arithmetic between modules calls
    ``torchquant.nn.quantized.FloatFunctional`` modules: ``a + b`` -> ``add``, ``a + b`` followed by
    a ReLU -> ``add_relu`` (the ReLU call is dropped), ``a * b`` -> ``mul``, ``a + c`` / ``a * c``
    with a Python number -> ``add_scalar`` / ``mul_scalar``, ``torch.cat`` -> ``cat``. Only float
    tensors that the model computes are rewritten: shape arithmetic, integer tensors and operands
    read from parameters or buffers (a positional embedding) are left as they are.
    ``example_inputs`` (a tensor or a tuple of ``forward``'s arguments) is run once, in eval mode
    without gradients, to tell tensors from numbers.

    After it, ``prepare`` observes each new module's output and ``convert`` makes it a
    ``QFunctional``, so a residual add runs on int8 codes instead of falling back to float.

    >>> model = torchquant.make_quantizable(resnet.eval(), torch.randn(1, 3, 224, 224))
    >>> model = torchquant.fuse_modules(model, torchquant.find_fusable_modules(model))
    >>> wrapped = nn.Sequential(torchquant.QuantStub(), model, torchquant.DeQuantStub())
    """
    import torch.fx
    from torch.fx.passes.shape_prop import ShapeProp

    if not isinstance(model, nn.Module):
        raise TypeError(f"argument 'model' must be an nn.Module, got {type(model).__name__}")
    args: Tuple = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    try:
        graph = _Tracer.make().trace(model)
    except Exception as exc:  # noqa: BLE001 — data-dependent control flow and the like
        raise RuntimeError(
            f"make_quantizable: torch.fx could not trace the model ({type(exc).__name__}: {exc}); "
            "call torchquant.nn.quantized.FloatFunctional's methods in its forward by hand") from exc
    import copy
    gm = torch.fx.GraphModule(copy.deepcopy(model), graph, class_name=type(model).__name__)
    modes = {name: m.training for name, m in gm.named_modules()}
    try:
        gm.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(*args)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"make_quantizable: running the traced model on 'example_inputs' failed "
                           f"({type(exc).__name__}: {exc})") from exc
    finally:
        for name, m in gm.named_modules():
            m.training = modes.get(name, m.training)

    modules = dict(gm.named_modules())
    count = 0
    for node in list(gm.graph.nodes):
        kind = _kind(node)
        if kind is None or _tensor_meta(node) is None or not _tensor_meta(node).dtype.is_floating_point:
            continue
        if kind == "cat":
            tensors = node.args[0] if node.args else node.kwargs.get("tensors")
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            extra = set(node.kwargs) - {"tensors", "dim"}
            if extra or not isinstance(tensors, (list, tuple)) or not tensors \
                    or not all(_is_float_activation(t) for t in tensors) or not isinstance(dim, int):
                continue
            method, call_args = "cat", (list(tensors), dim)
        else:
            if len(node.args) != 2 or node.kwargs:
                continue
            a, b = node.args
            if _is_float_activation(a) and _is_float_activation(b):
                method, call_args = kind, (a, b)
            elif _is_float_activation(a) and _is_number(b):
                method, call_args = f"{kind}_scalar", (a, b)
            elif _is_number(a) and _is_float_activation(b):
                method, call_args = f"{kind}_scalar", (b, a)
            else:
                continue
        relu = None
        if method == "add" and len(node.users) == 1:
            user = next(iter(node.users))
            if _is_relu(user, modules) and user.args[0] is node:
                relu, method = user, "add_relu"
        name = f"functional_{node.name}"
        while hasattr(gm, name):
            name += "_"
        gm.add_submodule(name, FloatFunctional())
        with gm.graph.inserting_before(node):
            mod_node = gm.graph.get_attr(name)
            new = gm.graph.call_method(method, (mod_node,) + tuple(call_args))
        new.meta = dict(node.meta)
        last = relu if relu is not None else node
        last.replace_all_uses_with(new)
        if relu is not None:
            gm.graph.erase_node(relu)
        gm.graph.erase_node(node)
        count += 1
    gm.graph.lint()
    gm.recompile()
    gm.train(model.training)
    for name, m in gm.named_modules():
        if name in modes:
            m.training = modes[name]
    return gm
