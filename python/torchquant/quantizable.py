"""``make_quantizable``: the arithmetic a model does between its modules (``x + y``, ``x * y``,
``torch.cat``, an add followed by a ReLU) rewritten as calls of ``FloatFunctional`` modules, by a
``torch.fx`` trace, so that ``prepare`` observes those outputs and ``convert`` runs them on int8
kernels: what torchvision's quantizable models do by hand, for a model written without
quantization in mind."""
import functools
import inspect
import operator
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.fx.passes.shape_prop
import torch.nn.functional as F
from torch import nn

from ._stack import user_stacklevel
from .nn.quantized_ops import FloatFunctional
from .qtensor import QTensor

__all__ = ["make_quantizable"]

_ADD = (operator.add, operator.iadd, torch.add)
_MUL = (operator.mul, operator.imul, torch.mul)
_CAT = (torch.cat, torch.concat)
_RELU_FUNCTIONS = (F.relu, torch.relu)


class _Tracer(torch.fx.Tracer):
    """torch.fx's Tracer that keeps torchquant's and torch.ao's modules (stubs, fused and quantized
    modules) as leaves, as it keeps torch.nn's. FloatFunctional's methods record themselves as
    calls on the module (``_fx_leaf_method``). Module-level, so that a GraphModule pickles."""

    # Buffers read in a forward are graph nodes (get_attr), as parameters are: arithmetic on them
    # (a FrozenBatchNorm2d's scale and shift) stays in the graph, reading the model's buffers,
    # instead of being computed once at trace time into `_tensor_constant` attributes that the
    # model's state dict does not load.
    proxy_buffer_attributes = True

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        mod = type(m).__module__
        if mod.startswith("torchquant.") or mod.startswith("torch.ao."):
            return True  # fused modules subclass nn.Sequential: kept whole too
        from .quantize import _plain_conv_base
        if _plain_conv_base(type(m)) is not None:
            return True  # a convolution subclass that computes as its base (Conv3DSimple): kept a module
        from torch.nn.utils import parametrize
        if parametrize.is_parametrized(m) and type(m).__bases__[0].__module__.startswith("torch.nn."):
            return True  # a torch.nn layer with a re-parametrized weight (weight norm): a module
        from ._conv_flow import frozen_bn_types
        if isinstance(m, frozen_bn_types()):
            return True  # torchvision's FrozenBatchNorm2d: a module, folded into the conv before it
        return super().is_leaf_module(m, qualname)


def _assert_is_none(value, msg: str) -> None:
    """torch.fx's check that a parameter concrete_args fixed to None is None (see make_quantizable)."""
    if value is not None:
        raise AssertionError(msg)


torch.fx.wrap("_assert_is_none")


def _tensor_meta(node):
    from torch.fx.passes.shape_prop import TensorMetadata
    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    return meta if isinstance(meta, TensorMetadata) else None


def _is_float_activation(arg) -> bool:
    """A node computed from the model's inputs (not a parameter / buffer, nor arithmetic on them
    alone, such as a FrozenBatchNorm2d's scale) whose value was a float tensor."""
    import torch.fx
    if not isinstance(arg, torch.fx.Node) or arg.op == "get_attr" or not _from_inputs(arg):
        return False
    meta = _tensor_meta(arg)
    return meta is not None and meta.dtype.is_floating_point


def _from_inputs(node) -> bool:
    """Whether the node depends on the model's inputs (marked by _mark_from_inputs; a node the
    rewrite adds carries the mark of the node it replaces, its meta being copied)."""
    return node.meta.get("_tq_from_inputs", False)


def _mark_from_inputs(graph) -> None:
    """Marks each node that depends on a placeholder: one pass, the nodes being in topological
    order."""
    for n in graph.nodes:
        n.meta["_tq_from_inputs"] = n.op == "placeholder" or any(a.meta["_tq_from_inputs"]
                                                                 for a in n.all_input_nodes)


# An add of two float activations whose largest magnitudes, on the example inputs, differ by more
# than this factor stays in float: its int8 output has one per-tensor scale, set by the larger
# operand, whose step then rounds the smaller one away (a BERT-style additive attention mask,
# scores + (1 - mask) * -10000: a step of ~40 turns every score into 0).
_MAX_ADD_MAGNITUDE_RATIO = 128.0


class _RangeProp(torch.fx.passes.shape_prop.ShapeProp):
    """ShapeProp that also records, on each node whose value is a float tensor, the largest
    magnitude of that value (node.meta["_tq_absmax"]), for _mismatched_add."""

    def run_node(self, n):
        result = super().run_node(n)
        if type(result) is torch.Tensor and result.is_floating_point() and result.numel() > 0:
            n.meta["_tq_absmax"] = float(result.detach().abs().amax())
        return result


def _mismatched_add(a, b) -> Optional[Tuple[float, float]]:
    """The largest magnitudes of a and b on the example inputs when they differ by more than
    _MAX_ADD_MAGNITUDE_RATIO, else None (also where one is unknown, or zero: the add is exact)."""
    x, y = a.meta.get("_tq_absmax"), b.meta.get("_tq_absmax")
    if x is None or y is None:
        return None
    small, big = min(x, y), max(x, y)
    return (x, y) if 0 < small and big > _MAX_ADD_MAGNITUDE_RATIO * small else None


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


# ---------------------------------------------------------------- in-place writes
# After convert, a value the model writes into in place may be a QTensor (an int8 module's or a
# FloatFunctional's output): a write that may leave the range its qparams were observed for
# saturates into them (x = torch.cat(...); x.add_(pos)). Such a value is dequantized by
# _float_for_in_place right after it is computed, and the write happens in float; writes that int8
# codes run exactly (relu_, clamp_(min=0), F.relu(x, inplace=True), ...) stay on the codes.

# Methods and functions that return their input or a view of it: a write into their result is a
# write into it. (Those that return the input itself when nothing changes too: x.float(), x.to().)
_ALIASING = frozenset({
    "getitem", "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "squeeze",
    "unsqueeze", "transpose", "permute", "t", "expand", "expand_as", "narrow", "select", "split", "chunk",
    "unbind", "tensor_split", "split_with_sizes", "hsplit", "vsplit", "dsplit", "movedim", "moveaxis", "swapaxes",
    "swapdims", "diagonal", "as_strided", "unfold", "detach", "alias", "contiguous", "view_as_real",
    "view_as_complex", "real", "imag", "to", "type", "type_as", "float", "double", "half", "bfloat16", "cpu",
    "cuda", "atleast_1d", "atleast_2d", "atleast_3d", "broadcast_to",
})
# Attributes that are the tensor or a view of it (x.T, x.real); others (x.shape, x.dtype) are no tensor.
_TENSOR_ATTRIBUTES = frozenset({"T", "mT", "H", "mH", "real", "imag", "data"})
# Methods and functions that read a tensor's metadata, not its values.
_METADATA_METHODS = frozenset({
    "size", "dim", "ndimension", "numel", "nelement", "stride", "storage_offset", "element_size", "is_contiguous",
    "is_floating_point", "is_complex", "get_device",
})
_METADATA_FUNCTIONS = (len, torch.numel, torch.is_floating_point, torch.is_complex)
# In-place methods that change no values.
_NOT_WRITES = frozenset({"requires_grad_", "share_memory_"})
_INPLACE_OPERATORS = frozenset({
    operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
    operator.imod, operator.ipow, operator.imatmul, operator.iand, operator.ior, operator.ixor, operator.ilshift,
    operator.irshift,
})
_INPLACE_DUNDERS = frozenset(f"__{op.__name__}__" for op in _INPLACE_OPERATORS)  # (x.__iadd__(y), ...)
# Leaf modules that return their input or a view of it (nn.Dropout in inference).
_VIEW_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.modules.dropout._DropoutNd)
# torch.nn's activations whose int8 version (or float fallback) returns a new tensor whatever their
# `inplace`: with it set, the float module writes into its input, the converted one does not.
_NEW_TENSOR_ACTIVATIONS = (nn.ELU, nn.CELU, nn.SELU, nn.LeakyReLU, nn.RReLU, nn.SiLU, nn.Mish, nn.Hardswish,
                           nn.Hardsigmoid, nn.Threshold)
# Those of them whose forward is this function of their attributes, called with inplace=True:
# {module class: (function, the attributes passed by keyword)}. (nn.RReLU's forward depends on the
# module's training mode, which a function fixed at trace time would not follow; it has no int8
# version, and writes in float into its dequantized input.)
_IN_PLACE_FUNCTION_OF = {
    nn.ELU: (F.elu, ("alpha",)), nn.CELU: (F.celu, ("alpha",)), nn.SELU: (F.selu, ()),
    nn.LeakyReLU: (F.leaky_relu, ("negative_slope",)), nn.SiLU: (F.silu, ()), nn.Mish: (F.mish, ()),
    nn.Hardswish: (F.hardswish, ()), nn.Hardsigmoid: (F.hardsigmoid, ()),
    nn.Threshold: (F.threshold, ("threshold", "value")),
}


def _float_for_in_place(t, dtype=None, memory_format=None):
    """The value that the model then writes into in place, as a float tensor: a QTensor
    dequantized (in the float model's ``dtype`` and ``memory_format``, when given), any other
    value itself (a float tensor stays the same tensor, so that its views see the write)."""
    if isinstance(t, QTensor):
        t = t.dequantize()
        if dtype is not None:
            t = t.to(dtype)
        return t if memory_format is None else t.contiguous(memory_format=memory_format)
    return t


torch.fx.wrap("_float_for_in_place")


def _name_of(node) -> Optional[str]:
    if node.op == "call_method":
        return node.target if isinstance(node.target, str) else None
    if node.op == "call_function":
        return getattr(node.target, "__name__", None)
    return None


def _settings(node, names: Tuple[str, ...], defaults: Tuple) -> Optional[Dict[str, Any]]:
    """The call's arguments after its input, by name (positional ones in the order of names),
    defaults filled in; None for an argument that is not one of names."""
    if len(node.args) - 1 > len(names) or any(k not in names for k in node.kwargs):
        return None
    values = dict(zip(names, defaults))
    values.update(zip(names, node.args[1:]))
    values.update(node.kwargs)
    return values


def _around_zero(lo, hi) -> bool:
    """Whether bounds lo <= 0 <= hi are numbers (None: unbounded): a clamp to them keeps every value
    inside an observed range, which always holds 0."""
    return all(v is None or _is_number(v) for v in (lo, hi)) and (lo is None or lo <= 0) and (hi is None or hi >= 0)


def _in_unit(v) -> bool:
    return _is_number(v) and 0 <= v <= 1


# In-place functions and methods that QTensor runs on its codes keeping its qparams
# (qtensor._write_in_place with an int8 function): {function or method name: (the arguments after
# the input, their defaults, whether the settings keep every value inside the input's range)}.
_EXACT_IN_PLACE = {
    torch.relu_: ((), (), lambda s: True),
    "relu_": ((), (), lambda s: True),
    torch.clamp_: (("min", "max"), (None, None), lambda s: _around_zero(s["min"], s["max"])),
    torch.clip_: (("min", "max"), (None, None), lambda s: _around_zero(s["min"], s["max"])),
    "clamp_": (("min", "max"), (None, None), lambda s: _around_zero(s["min"], s["max"])),
    "clip_": (("min", "max"), (None, None), lambda s: _around_zero(s["min"], s["max"])),
    torch._C._nn.hardtanh_: (("min_val", "max_val"), (-1.0, 1.0),
                             lambda s: _around_zero(s["min_val"], s["max_val"])),
    torch._C._nn.leaky_relu_: (("negative_slope",), (0.01,), lambda s: _in_unit(s["negative_slope"])),
    torch._C._nn.elu_: (("alpha", "scale", "input_scale"), (1.0, 1.0, 1.0),
                        lambda s: _in_unit(s["alpha"]) and s["scale"] == 1 and _in_unit(s["input_scale"])),
}
_DROPOUT_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout)
# The same for functions called with inplace=True: {function: whether its settings keep the range}.
_EXACT_INPLACE_FLAG = {
    F.relu: lambda s: True,
    F.relu6: lambda s: True,
    F.hardtanh: lambda s: _around_zero(s["min_val"], s["max_val"]),
    F.leaky_relu: lambda s: _in_unit(s["negative_slope"]),
    F.elu: lambda s: _in_unit(s["alpha"]),
    **{fn: (lambda s: s["training"] is False) for fn in _DROPOUT_FUNCTIONS},  # (the identity in inference)
}


def _bound_arguments(node) -> Optional[Dict[str, Any]]:
    try:
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
    except (TypeError, ValueError):
        return None
    bound.apply_defaults()
    return dict(bound.arguments)


def _inplace_flag(node) -> bool:
    """Whether a function call passes a true inplace (F.relu(x, inplace=True), F.relu(x, True))."""
    if node.kwargs.get("inplace", False) is not False:
        return True
    if not callable(node.target):
        return False
    bound = _bound_arguments(node)
    return bound is not None and bound.get("inplace", False) is not False


def _keeps_range(node) -> bool:
    """Whether the in-place call node is one that a QTensor runs exactly on its codes, its values
    staying inside the range of its qparams."""
    key = node.target if node.op == "call_function" else _name_of(node)
    entry = _EXACT_IN_PLACE.get(key) if _hashable(key) else None
    if entry is not None:
        names, defaults, keeps = entry
        settings = _settings(node, names, defaults)
        return settings is not None and keeps(settings)
    check = _EXACT_INPLACE_FLAG.get(node.target) if node.op == "call_function" and _hashable(node.target) else None
    if check is not None:
        bound = _bound_arguments(node)
        return bound is not None and check(bound)
    return False


def _hashable(v) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True


def _op_effect(user, alias) -> Optional[str]:
    """_effect for a torch.ops target (an OpOverload or an OpOverloadPacket's overloads), from its
    schema: an argument marked written (Tensor(a!)) is written into, one marked aliased (a view's
    Tensor(a)) is returned or viewed."""
    target = user.target
    if isinstance(target, torch._ops.OpOverload):
        schemas = [target._schema]
    else:
        schemas = [getattr(target, name)._schema for name in target.overloads()]
    kind = None
    for schema in schemas:
        for i, arg in enumerate(schema.arguments):
            value = user.args[i] if i < len(user.args) and not arg.kwarg_only else user.kwargs.get(arg.name)
            if not (value is alias or (isinstance(value, (tuple, list)) and any(v is alias for v in value))):
                continue
            if arg.alias_info is not None:
                if arg.alias_info.is_write:
                    return "writes"  # (torch.ops calls run in float on a QTensor: always in float)
                kind = "aliases"
    return kind


def _effect(user, alias, modules: Optional[Dict[str, nn.Module]]) -> Optional[str]:
    """What the call ``user`` does to the tensor ``alias``, one of its inputs: "keeps", writes into
    it in place, as int8 codes run exactly with their range kept (``x.relu_()``,
    ``F.relu(x, inplace=True)``, ``x.clamp_(min=0)``), and returns it; "writes", any other write
    (``x.add_(y)``, ``x[i] = v``, ``out=x``, a torch.ops op writing it, an in-place module other than
    those); "aliases", returns it or a view of it (``x.view(...)``, ``nn.Identity``, ``nn.Dropout``
    in inference); "module", a torch.nn activation with ``inplace`` set whose int8 version returns
    a new tensor (its float module writes into its input); None, reads it or does not use it."""
    if user.op == "call_module":
        module = modules.get(user.target) if modules is not None else None
        if module is None or not user.args or user.args[0] is not alias:
            return None
        if getattr(module, "inplace", False) is True:
            if isinstance(module, (nn.ReLU, nn.modules.dropout._DropoutNd)):
                return "keeps"
            if isinstance(module, nn.Hardtanh):  # (nn.ReLU6 too)
                return "keeps" if _around_zero(module.min_val, module.max_val) else "writes"
            if isinstance(module, _NEW_TENSOR_ACTIVATIONS):
                return "module"
            return "writes"
        return "aliases" if isinstance(module, _VIEW_MODULES) else None
    if user.op not in ("call_function", "call_method"):
        return None
    if isinstance(user.target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return _op_effect(user, alias)
    out = user.kwargs.get("out")
    if out is alias or (isinstance(out, (tuple, list)) and any(o is alias for o in out)):
        return "writes"
    if not user.args or user.args[0] is not alias:
        return None
    if user.op == "call_function" and user.target in _INPLACE_OPERATORS:
        return "writes"
    name = _name_of(user)
    if name is None:
        return None
    if name in _INPLACE_DUNDERS:
        return "writes"
    if name.endswith("_") and not name.startswith("__"):
        if name in _NOT_WRITES:
            return None
        return "keeps" if _keeps_range(user) else "writes"
    if user.op == "call_function" and _inplace_flag(user):
        return "keeps" if _keeps_range(user) else "writes"
    if user.op == "call_function" and user.target in _DROPOUT_FUNCTIONS:
        bound = _bound_arguments(user)  # (the input itself in inference)
        return "aliases" if bound is not None and bound.get("training") is False else None
    if user.op == "call_function" and user.target is getattr:
        return "aliases" if _is_tensor_attribute(user) else None
    return "aliases" if name in _ALIASING else None


def _is_tensor_attribute(node) -> bool:
    """Whether getattr node reads an attribute that is the tensor or a view of it (``x.T``), not
    metadata (``x.shape``)."""
    return (len(node.args) > 1 and node.args[1] in _TENSOR_ATTRIBUTES) or _tensor_meta(node) is not None


def _reads_data(node) -> bool:
    """Whether node reads its inputs' values, not only their metadata (``x.shape``, ``x.size(0)``)."""
    if node.op == "call_function" and node.target is getattr:
        return _is_tensor_attribute(node)
    if node.op == "call_method":
        return node.target not in _METADATA_METHODS
    return not (node.op == "call_function" and node.target in _METADATA_FUNCTIONS)


def _alias_parent(node, modules):
    """The node whose tensor node's value is, or views, in the float model (a view's input, an
    in-place call's written input), or None."""
    for inp in node.all_input_nodes:
        if _effect(node, inp, modules) is not None:
            return inp
    return None


def _reads_after(act, modules, order) -> Tuple[list, bool]:
    """For a call ``act`` that writes into its input in place: the nodes after it that read that
    input itself, and whether a node after it reads the written tensor through another of its
    aliases (a view made before, the tensor it views)."""
    inp = act.args[0]
    root = inp
    while True:
        parent = _alias_parent(root, modules)
        if parent is None:
            break
        root = parent
    direct, other = [], False
    seen, todo = set(), [root]
    while todo:
        alias = todo.pop()
        if alias in seen:
            continue
        seen.add(alias)
        for user in alias.users:
            if user is act or not _reads_data(user):
                continue
            if order[user] > order[act]:
                if alias is inp:
                    direct.append(user)
                else:
                    other = True
            elif _effect(user, alias, modules) is not None:
                todo.append(user)
    return direct, other


def _changed_in_place(node, modules: Optional[Dict[str, nn.Module]] = None, order=None) -> bool:
    """Whether the value of ``node``, or an alias of it, is written into later by a write that may
    leave the range observed for it (``_effect``'s "writes"; an in-place activation module whose
    input is read afterwards counts: its int8 version does not write)."""
    for _, user, kind in _alias_uses(node, modules, ("keeps", "aliases")):
        if kind == "module":
            if order is None:
                order = {n: i for i, n in enumerate(node.graph.nodes)}
            direct, other = _reads_after(user, modules, order)
            kind = "writes" if direct or other else None
        if kind == "writes":
            return True
    return False


def _alias_uses(node, modules, follow: Tuple[str, ...]):
    """(alias, user, _effect(user, alias)) for every user of ``node`` and of the aliases of it
    reached through users whose effect is in ``follow``, each alias once."""
    seen, todo = set(), [node]
    while todo:
        alias = todo.pop()
        if alias in seen:
            continue
        seen.add(alias)
        for user in alias.users:
            kind = _effect(user, alias, modules)
            yield alias, user, kind
            if kind in follow:
                todo.append(user)


def _in_place_activation(node, modules) -> bool:
    """Whether node is an activation that writes into its input and that runs, once converted, as
    a module returning a new tensor: a torch.nn activation module with ``inplace`` set, or a
    function that make_quantizable makes such a module (``F.silu(x, inplace=True)``)."""
    if not node.args or not isinstance(node.args[0], torch.fx.Node):
        return False
    if node.op == "call_module":
        return _effect(node, node.args[0], modules) == "module"
    act = _activation_module(node)
    return act is not None and getattr(act, "inplace", False) is True


def _read_through_result(graph, modules) -> None:
    """An in-place activation returns its input: the nodes after it that read that input read its
    result instead (the same tensor in the float model), so that its int8 version, which returns
    a new tensor, reaches them (``F.leaky_relu(y, 0.1, inplace=True); return conv(y)``). Left as it
    is where the written tensor is also read after it through another alias; there an activation
    module becomes its in-place function (_IN_PLACE_FUNCTION_OF), which writes into its input
    once converted too, as an activation function left a function does."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        if node.op in ("call_function", "call_module") and _in_place_activation(node, modules):
            direct, other = _reads_after(node, modules, order)
            if other:
                entry = _IN_PLACE_FUNCTION_OF.get(type(modules[node.target])) if node.op == "call_module" else None
                if entry is not None and len(node.args) == 1 and not node.kwargs:
                    fn, names = entry
                    module = modules[node.target]
                    with graph.inserting_before(node):
                        new = graph.call_function(fn, node.args, {**{k: getattr(module, k) for k in names},
                                                                  "inplace": True})
                    new.meta = dict(node.meta)
                    order[new] = order[node]
                    node.replace_all_uses_with(new)
                    graph.erase_node(node)
                continue
            for user in direct:
                user.replace_input_with(node.args[0], node)


def _float_from(node, modules, order) -> list:
    """The users of ``node`` that must read the float tensor written into: those on a path to a
    write (the write, or the alias it writes through), those making an alias read after the first
    write (in place, exactly or not), and those after that write. The others see no write."""
    writes, children = [], {node: []}  # (children: each alias reached, and the aliases made from it)
    for alias, user, kind in _alias_uses(node, modules, ("keeps", "writes", "aliases")):
        if kind == "module":
            direct, other = _reads_after(user, modules, order)
            if direct or other:
                writes.append(user)
        elif kind in ("keeps", "writes", "aliases"):
            if kind != "aliases":
                writes.append(user)
            children[alias].append(user)
            children.setdefault(user, [])
    last = {}

    def last_use(alias):  # the last node reading alias or an alias made from it
        if alias not in last:
            last[alias] = max([order[alias]] + [order[u] for u in alias.users]
                              + [last_use(c) for c in children[alias]])
        return last[alias]

    first = min(order[w] for w in writes)
    return [u for u in node.users if order[u] >= first or (u in children and last_use(u) >= first)]


def _dequantize_before_writes(graph, modules) -> None:
    """Each value that is written into later by a write that may leave its observed range
    (``_changed_in_place``) goes through ``_float_for_in_place`` before the first node on the way
    to the write: those users read the result (``_float_from``), so that the write happens in
    float; the others, which see no write, read the value itself. The value is computed as before
    (an int8 FloatFunctional cat, observed before the write)."""
    nodes = list(graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    covered = set()
    for node in nodes:
        if node in covered or node.op not in ("placeholder", "call_function", "call_method", "call_module"):
            continue
        if node.op == "call_function" and node.target is _float_for_in_place:
            continue  # (a GraphModule made quantizable again: its values already written in float)
        meta = _tensor_meta(node)
        if meta is None or not meta.dtype.is_floating_point or not _from_inputs(node):
            continue  # (a tuple's elements are their own values: getitem nodes)
        # (its aliases, an in-place call's result included: covered by its dequantization)
        covered.add(node)
        covered.update(user for _, user, kind in _alias_uses(node, modules, ("keeps", "aliases", "writes"))
                       if kind in ("keeps", "aliases", "writes"))
        if not _changed_in_place(node, modules, order):
            continue
        users = _float_from(node, modules, order)
        start = min(users, key=order.__getitem__)
        # (dequantized in the float model's dtype and layout: a QTensor may be channels-last where
        # the float tensor, which the model views, is contiguous)
        kwargs = {"dtype": meta.dtype} if meta.dtype != torch.float32 else {}
        if meta.memory_format is not None:
            kwargs["memory_format"] = meta.memory_format
        with graph.inserting_before(start):
            new = graph.call_function(_float_for_in_place, (node,), kwargs)
        new.meta = dict(node.meta)
        new.meta["is_wrapped"] = True  # (the code declares it with torch.fx.wrap: a retrace records it)
        order[new] = order[start] - 0.5
        node.replace_all_uses_with(new, delete_user_cb=lambda user: user in users)


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


def _forward_args(model: nn.Module, args: Tuple, kwargs: Dict[str, Any],
                  concrete_args: Dict[str, Any]) -> Tuple[Tuple, Tuple[str, ...]]:
    """The inputs of the example runs: the values of ``model.forward``'s parameters in its order
    (one per placeholder of the trace: torch.fx makes each parameter one, keyword-only ones too,
    defaults filled in; a parameter in concrete_args takes its value from there), and the names of
    the last ones, keyword-only parameters, which the eager run passes by keyword."""
    if not kwargs and not concrete_args:
        return args, ()
    sig = inspect.signature(model.forward)
    given = "'concrete_args'" if concrete_args and not kwargs else "'example_kwargs'"
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()):
        raise TypeError(f"make_quantizable: argument {given} needs a forward whose parameters are all "
                        f"named (torch.fx makes each one a placeholder); {type(model).__name__}.forward{sig} also "
                        "takes *args or **kwargs: pass its inputs in 'example_inputs'")
    unknown = [name for name in concrete_args if name not in sig.parameters]
    if unknown:
        raise TypeError(f"make_quantizable: argument 'concrete_args' names {unknown}, which are no parameters of "
                        f"{type(model).__name__}.forward{sig}")
    try:
        bound = sig.bind_partial(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"make_quantizable: 'example_inputs' and 'example_kwargs' do not match "
                        f"{type(model).__name__}.forward{sig}: {exc}") from None
    twice = [name for name in concrete_args if name in bound.arguments]
    if twice:
        raise TypeError(f"make_quantizable: {twice} given both in 'concrete_args' and in 'example_inputs' / "
                        "'example_kwargs': a parameter in concrete_args takes its value from there, in the trace "
                        "and in the example runs alike")
    try:
        bound = sig.bind(*args, **kwargs, **concrete_args)
    except TypeError as exc:
        raise TypeError(f"make_quantizable: 'example_inputs' and 'example_kwargs' do not match "
                        f"{type(model).__name__}.forward{sig}: {exc}") from None
    bound.apply_defaults()
    values = tuple(bound.arguments[name] for name in sig.parameters)
    return values, tuple(name for name, p in sig.parameters.items() if p.kind == p.KEYWORD_ONLY)


def _traced_as_tensors(model: nn.Module, args: Tuple, kwargs: Dict[str, Any], concrete_args: Dict[str, Any]) -> str:
    """A hint for a trace that failed or computes something else: forward's parameters whose
    default is no tensor (mask=None, a flag) and whose example value is none either, which the
    trace took as tensors anyway (torch.fx makes every parameter a Proxy, so `if mask is not None:`
    takes its branch); "" when there are none."""
    try:
        sig = inspect.signature(model.forward)
        bound = sig.bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):
        return ""
    names = {}
    for name, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or name in concrete_args or p.default is p.empty:
            continue
        value = bound.get(name, p.default)
        if not isinstance(p.default, torch.Tensor) and not isinstance(value, torch.Tensor):
            names[name] = value
    if not names:
        return ""
    listed = ", ".join(f"'{n}'" for n in names)
    suggested = ", ".join(f'"{n}": {v!r}' for n, v in names.items())
    return (f"; forward's parameter(s) {listed}, whose default is no tensor, were traced as tensors (torch.fx "
            f"makes every parameter a Proxy: `if mask is not None:` takes its branch, `if flag:` cannot be "
            f"followed): fix their values for the trace with concrete_args={{{suggested}}}, as torch.fx's "
            "symbolic_trace takes them")


def make_quantizable(model: nn.Module, example_inputs: Union[torch.Tensor, Sequence[Any]] = (), *,
                     example_kwargs: Optional[Dict[str, Any]] = None, concrete_args: Optional[Dict[str, Any]] = None):
    """A copy of ``model`` (a ``torch.fx.GraphModule`` holding the same submodules under the same
    names, so the same state dict) in which the arithmetic between modules calls
    ``torchquant.nn.quantized.FloatFunctional`` modules: ``a + b`` -> ``add``, ``a + b`` followed by
    a ReLU -> ``add_relu`` (the ReLU call is dropped), ``a * b`` -> ``mul``, ``a + c`` / ``a * c``
    with a Python number -> ``add_scalar`` / ``mul_scalar``, ``torch.cat`` -> ``cat``. Only float
    tensors that the model computes are rewritten: shape arithmetic, integer tensors and operands
    read from parameters or buffers (a positional embedding) are left as they are, and so is an
    ``a + b`` whose operands' largest magnitudes on ``example_inputs`` differ by more than 128x (an
    additive attention mask of -10000: the int8 output's one scale would round the scores away),
    with a warning naming it.
    ``example_inputs`` (a tensor or a tuple of ``forward``'s arguments; keyword arguments in
    ``example_kwargs``, as torch.export's ``args`` / ``kwargs``) runs, in eval mode
    without gradients, through the model and through its trace: to tell tensors from numbers,
    and to check that the two agree (torch.fx traces ``a += b`` as ``a + b``, which differs where
    a view of ``a`` or the caller's input sees the write: then a RuntimeError says so).
    Keyword-only parameters are passed by keyword; the result takes them as the model does.

    The trace follows the eval-mode forward, whatever the model's mode: a training-only branch,
    torchvision's ``stochastic_depth`` and ``F.dropout(training=self.training)`` are fixed to their
    eval behaviour (modules, ``nn.Dropout`` and BatchNorm, keep following ``.train()``); every
    module's training flag is restored. ``concrete_args`` (``{"mask": None}``, as
    ``torch.fx.symbolic_trace``'s) fixes parameters that torch.fx would otherwise trace as tensors
    (``if mask is not None:`` takes its branch on a Proxy); the result then asserts that value.

    After it, ``prepare`` observes each new module's output and ``convert`` makes it a
    ``QFunctional``, so a residual add runs on int8 codes instead of falling back to float. A
    value the model then writes into in place by a write that may leave its observed range
    (``x = torch.cat(...); x.add_(pos)``) is dequantized before the first node on the way to the
    write (``_float_for_in_place``: the identity on a float tensor), so the write happens in float;
    nodes that read the input of an in-place activation after it read its result (the int8
    module returns a new tensor).

    >>> model = torchquant.make_quantizable(resnet.eval(), torch.randn(1, 3, 224, 224))
    >>> model = torchquant.fuse_modules(model, torchquant.find_fusable_modules(model))
    >>> wrapped = nn.Sequential(torchquant.QuantStub(), model, torchquant.DeQuantStub())
    """

    if not isinstance(model, nn.Module):
        raise TypeError(f"argument 'model' must be an nn.Module, got {type(model).__name__}")
    args: Tuple = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if example_kwargs is not None and not isinstance(example_kwargs, dict):
        raise TypeError(f"make_quantizable: argument 'example_kwargs' must be a dict of forward's keyword "
                        f"arguments, got {type(example_kwargs).__name__}")
    if concrete_args is not None and not isinstance(concrete_args, dict):
        raise TypeError(f"make_quantizable: argument 'concrete_args' must be a dict of forward's parameter names "
                        f"and the values the trace fixes them to, got {type(concrete_args).__name__}")
    kwargs, concrete = example_kwargs or {}, concrete_args or {}
    values, kw_names = _forward_args(model, args, kwargs, concrete)
    n_pos = len(values) - len(kw_names)
    from .quantize import _deepcopy  # (a hook-based weight norm's cached weight is detached first)

    root = _deepcopy(model)
    _own_float_functionals(root)
    # The trace follows the eval-mode forward: what reads self.training in Python (a training-only
    # branch, torchvision's stochastic_depth, F.dropout(training=self.training)) is fixed in the
    # graph as it is traced, and a trace in training mode would drop residual branches at random at
    # inference. Every module's own flag comes back afterwards (nn.Dropout, BatchNorm: modules,
    # which keep following .train()).
    modes = [(m, m.training) for m in root.modules()]
    try:
        root.eval()
        graph = _Tracer().trace(root, concrete_args=concrete or None)
    except Exception as exc:  # noqa: BLE001 — data-dependent control flow and the like
        raise RuntimeError(
            f"make_quantizable: torch.fx could not trace the model ({type(exc).__name__}: {exc}); "
            "call torchquant.nn.quantized.FloatFunctional's methods in its forward by hand, or, for a model "
            "whose forward fx cannot follow (Hugging Face transformers: data-dependent branches, Python "
            "containers of tensors), quantize its Linear layers with torchquant.quantize_dynamic (int8) or "
            "torchquant.quantize_weight_only (int4), which need no trace"
            + _traced_as_tensors(model, args, kwargs, concrete)) from exc
    finally:
        for m, training in modes:
            m.training = training
    # torch.fx names a fixed parameter's placeholder `mask_1`: named back, so that the result takes
    # it as the model does (gm(x, mask=None)).
    placeholders = {n.target for n in graph.nodes if n.op == "placeholder"}
    for node in graph.nodes:
        if node.op == "placeholder" and isinstance(node.target, str) and node.target.endswith("_1"):
            name = node.target[:-2]
            if name in concrete and name not in placeholders and f"{name}_2" not in placeholders:
                node.target = name
        elif node.op == "call_function" and getattr(node.target, "__name__", None) == "_assert_is_none" \
                and getattr(node.target, "__module__", None) == "torch.fx._symbolic_trace":
            # torch.fx's check of a None fixed by concrete_args, as ours: a GraphModule unpickled
            # with torch.fx's registers it for later traces under its dotted name, and every
            # torch.fx trace in the process then fails (KeyError). Marked as a wrapped function,
            # the code declares ours with torch.fx.wrap, so that an unpickling's trace records it.
            node.target = _assert_is_none
            node.meta["is_wrapped"] = True
    gm = torch.fx.GraphModule(root, graph, class_name=type(model).__name__)
    # GraphModule keeps only what the graph reads, under bare containers: put the model's own
    # children, parameters and buffers back (unused ones too: the same state dict, strict loads,
    # a qconfig set on a container), the graph's targets resolving through them as before. Every
    # name of a child registered twice (self.dec = self.enc): named_children() gives only its first.
    for name, child in root._modules.items():
        gm._modules[name] = child
    for name, p in root._parameters.items():
        gm._parameters[name] = p
    for name, b in root._buffers.items():
        gm._buffers[name] = b
    gm._non_persistent_buffers_set = set(root._non_persistent_buffers_set)
    if hasattr(root, "qconfig"):
        gm.qconfig = root.qconfig
    traced_run = False
    try:
        root.eval()  # (gm runs root's modules: both in eval mode)
        with torch.no_grad():
            # torch.fx records `a += b` as `a + b` (a Proxy has no in-place operators), which
            # differs where a, or a view of it, is read elsewhere (or is an input): the model and
            # its trace run on copies of the inputs and must agree, outputs and inputs alike.
            rng = torch.get_rng_state()
            cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
            eager_in = _clone_tree(values)
            # (keyword-only parameters by keyword; the trace takes every parameter positionally)
            eager_out = root(*eager_in[:n_pos], **dict(zip(kw_names, eager_in[n_pos:])))
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            traced_in = _clone_tree(values)
            traced_run = True
            traced_out = _RangeProp(gm).propagate(*traced_in)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"make_quantizable: running the traced model on 'example_inputs' failed "
                           f"({type(exc).__name__}: {exc})"
                           + (_traced_as_tensors(model, args, kwargs, concrete) if traced_run else "")) from exc
    finally:
        gm.training = model.training
        for m, training in modes:
            m.training = training
    if not _same_tree((eager_out, eager_in), (traced_out, traced_in)):
        raise RuntimeError(
            "make_quantizable: torch.fx's trace of the model computes something else than the model on "
            "'example_inputs'; an in-place op (a += b, x *= c) on a tensor that is read elsewhere (a view of "
            "it, an input) is traced as out of place: write it out of place, or call "
            "torchquant.nn.quantized.FloatFunctional's methods in the model's forward by hand"
            + _traced_as_tensors(model, args, kwargs, concrete))

    modules = dict(gm.named_modules())
    _mark_from_inputs(gm.graph)
    _read_through_result(gm.graph, modules)
    # An in-place activation function whose input is still read after it (through a view made
    # before it) stays a function: the module's int8 version would return a new tensor, unseen
    # there, where the function writes into it (exactly, or in float: _dequantize_before_writes).
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    stay = {n for n in gm.graph.nodes if _in_place_activation(n, modules) and n.op == "call_function"
            and any(_reads_after(n, modules, order))}
    kept_float = []  # adds of operands of too different magnitudes, left in float
    for node in list(gm.graph.nodes):
        act = _activation_module(node)
        if act is not None and node not in stay:
            owner = _owner_path(node, modules)
            qualname = _add_module(modules, owner, f"activation_{type(act).__name__.lower()}", act)
            with gm.graph.inserting_before(node):
                new = gm.graph.call_module(qualname, (node.args[0],))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            continue
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
                mismatch = _mismatched_add(a, b) if kind == "add" else None
                if mismatch is not None:
                    owner = _owner_path(node, modules)
                    kept_float.append(f"{owner + ': ' if owner else ''}{node.name} "
                                      f"(max |a| {mismatch[0]:.3g}, max |b| {mismatch[1]:.3g})")
                    continue
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
        last = relu if relu is not None else node
        # The new module lives in the module whose forward did the arithmetic (a ResNet block's
        # add is layer1.0.functional_add_relu), as torchvision's quantizable models name theirs.
        qualname = _add_module(modules, _owner_path(node, modules), f"functional_{method}", FloatFunctional())
        with gm.graph.inserting_before(node):
            mod_node = gm.graph.get_attr(qualname)
            new = gm.graph.call_method(method, (mod_node,) + tuple(call_args))
        new.meta = dict(node.meta)
        last.replace_all_uses_with(new)
        if relu is not None:
            gm.graph.erase_node(relu)
        gm.graph.erase_node(node)
    if kept_float:
        warnings.warn(f"make_quantizable: {len(kept_float)} add(s) of two activations whose magnitudes on "
                      f"'example_inputs' differ by more than {_MAX_ADD_MAGNITUDE_RATIO:g}x stay in float: "
                      f"{', '.join(kept_float[:5])}{', ...' if len(kept_float) > 5 else ''}; an int8 add has "
                      "one scale for its output, set by the larger operand, whose step would round the "
                      "smaller one away (an additive attention mask of -10000 erases the scores)",
                      UserWarning, stacklevel=user_stacklevel())
    _dequantize_before_writes(gm.graph, modules)
    gm.graph.lint()
    gm.recompile()
    return gm


def _clone_tree(tree):
    from torch.utils._pytree import tree_map
    return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, tree)


def _close(x: torch.Tensor, y: torch.Tensor) -> bool:
    """The same values up to float rounding of the dtype (kernels may sum in another order):
    non-finite values where the other has the same, finite ones within 16 ulps of the largest."""
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    if torch.equal(x, y):
        return True
    if not (x.is_floating_point() or x.is_complex()):
        return False
    x, y = x.detach().cpu(), y.detach().cpu()
    fx, fy = torch.isfinite(x), torch.isfinite(y)
    if not torch.equal(fx, fy):
        return False
    odd = ~fx
    if odd.any() and not bool(((x[odd] == y[odd]) | (torch.isnan(x[odd]) & torch.isnan(y[odd]))).all()):
        return False
    xs, ys = x[fx].double(), y[fx].double()
    if xs.numel() == 0:
        return True
    eps = torch.finfo(x.real.dtype if x.is_complex() else x.dtype).eps
    tol = 16 * eps * float(xs.abs().max())
    return bool(((xs - ys).abs() <= tol).all())


def _same_tree(a, b) -> bool:
    """Whether two nests of outputs hold the same leaves (torch.fx returns its own immutable
    list / dict types where the model returns list / dict: the leaves are compared, not the
    containers' types)."""
    from torch.utils._pytree import tree_leaves
    la, lb = tree_leaves(a), tree_leaves(b)
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor) and not _close(x, y):
            return False
    return True


def _add_module(modules: Dict[str, nn.Module], owner: str, name: str, module: nn.Module) -> str:
    """Registers module in the module named owner under name (name_1, name_2, ... when taken), in
    its training mode; returns its qualified name."""
    parent = modules[owner]
    i = 0
    while hasattr(parent, name if i == 0 else f"{name}_{i}"):
        i += 1
    name = name if i == 0 else f"{name}_{i}"
    module.train(parent.training)
    parent.add_module(name, module)
    qualname = f"{owner}.{name}" if owner else name
    modules[qualname] = module
    return qualname


@functools.lru_cache(maxsize=None)
def _activation_table():
    """{function: (module class, the function's parameters the module takes)}: elementwise
    activations called as functions, which become modules so that prepare observes them and
    convert makes them int8 (a table lookup; docs/eager_api.md)."""
    return {
        F.silu: (nn.SiLU, ("inplace",)), F.gelu: (nn.GELU, ("approximate",)), F.mish: (nn.Mish, ("inplace",)),
        F.softplus: (nn.Softplus, ("beta", "threshold")), F.hardswish: (nn.Hardswish, ("inplace",)),
        F.elu: (nn.ELU, ("alpha", "inplace")), F.celu: (nn.CELU, ("alpha", "inplace")),
        F.selu: (nn.SELU, ("inplace",)), torch.selu: (nn.SELU, ()),
        F.leaky_relu: (nn.LeakyReLU, ("negative_slope", "inplace")), F.tanh: (nn.Tanh, ()), torch.tanh: (nn.Tanh, ()),
        F.sigmoid: (nn.Sigmoid, ()), torch.sigmoid: (nn.Sigmoid, ()), F.softsign: (nn.Softsign, ()),
        F.logsigmoid: (nn.LogSigmoid, ()), F.tanhshrink: (nn.Tanhshrink, ()), F.hardshrink: (nn.Hardshrink, ("lambd",)),
        F.softshrink: (nn.Softshrink, ("lambd",)),
    }


_ACTIVATION_METHODS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def _activation_module(node) -> Optional[nn.Module]:
    """The module equivalent to node when it is an elementwise activation function of a float
    activation (F.silu(x), F.gelu(x, approximate="tanh"), x.sigmoid(), ...), else None."""
    if node.op == "call_method" and node.target in _ACTIVATION_METHODS:
        if len(node.args) == 1 and not node.kwargs and _is_float_activation(node.args[0]):
            return _ACTIVATION_METHODS[node.target]()
        return None
    if node.op != "call_function":
        return None
    entry = _activation_table().get(node.target)
    if entry is None or not node.args or not _is_float_activation(node.args[0]):
        return None
    cls, names = entry
    # The function's arguments after the input, in its order (F.elu(x, alpha, inplace)).
    if len(node.args) - 1 > len(names):
        return None
    extra = dict(zip(names, node.args[1:]))
    for k, v in node.kwargs.items():
        if k not in names or k in extra:
            return None
        extra[k] = v
    if any(isinstance(v, torch.fx.Node) for v in extra.values()):
        return None  # a setting the model computes
    return cls(**extra)


def _owner_path(node, modules: Dict[str, nn.Module]) -> str:
    """The qualified name of the innermost module whose forward produced node ("" for the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    for value in reversed(list(stack.values())):
        path = value[0] if isinstance(value, tuple) else value
        if isinstance(path, str) and path in modules:
            return path
    return ""


def _own_float_functionals(root: nn.Module) -> None:
    """torch.ao's FloatFunctional modules in the model (torchvision's quantizable models hold them)
    become torchquant's, which torch.fx records as calls (and convert maps alike)."""
    try:
        from torch.ao.nn.quantized import FloatFunctional as AoFloatFunctional
    except ImportError:
        return
    for parent in list(root.modules()):
        for name, child in list(parent._modules.items()):
            if type(child) is AoFloatFunctional:
                ff = FloatFunctional()
                ff.activation_post_process = child.activation_post_process
                ff.training = child.training
                for attr in ("qconfig",):
                    if hasattr(child, attr):
                        setattr(ff, attr, getattr(child, attr))
                parent._modules[name] = ff
