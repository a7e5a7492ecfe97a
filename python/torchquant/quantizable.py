"""``make_quantizable``: the arithmetic a model does between its modules (``x + y``, ``x * y``,
``torch.cat``, an add followed by a ReLU) rewritten as calls of ``FloatFunctional`` modules, by a
``torch.fx`` trace, so that ``prepare`` observes those outputs and ``convert`` runs them on int8
kernels: what torchvision's quantizable models do by hand, for a model written without
quantization in mind."""
import functools
import inspect
import operator
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .nn.quantized_ops import FloatFunctional

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


# Methods and functions that return their input or a view of it: a write into their result is a
# write into it. (Those that return the input itself when nothing changes too: x.float(), x.to().)
_ALIASING = frozenset({
    "getitem", "getattr", "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "squeeze",
    "unsqueeze", "transpose", "permute", "t", "expand", "expand_as", "narrow", "select", "split", "chunk",
    "unbind", "tensor_split", "split_with_sizes", "hsplit", "vsplit", "dsplit", "movedim", "moveaxis", "swapaxes",
    "swapdims", "diagonal", "as_strided", "unfold", "detach", "alias", "contiguous", "view_as_real",
    "view_as_complex", "real", "imag", "to", "type", "type_as", "float", "double", "half", "bfloat16", "cpu",
    "cuda", "atleast_1d", "atleast_2d", "atleast_3d", "broadcast_to",
})
# In-place methods that change no values.
_NOT_WRITES = frozenset({"requires_grad_", "share_memory_"})
_INPLACE_OPERATORS = frozenset({
    operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
    operator.imod, operator.ipow, operator.imatmul, operator.iand, operator.ior, operator.ixor, operator.ilshift,
    operator.irshift,
})
_INPLACE_DUNDERS = frozenset(f"__{op.__name__}__" for op in _INPLACE_OPERATORS)  # (x.__iadd__(y), ...)


def _name_of(node) -> Optional[str]:
    if node.op == "call_method":
        return node.target if isinstance(node.target, str) else None
    if node.op == "call_function":
        return getattr(node.target, "__name__", None)
    return None


def _writes_into(user, alias) -> bool:
    """Whether the call ``user`` writes into the tensor ``alias``: an in-place method or function
    on it (``x.add_(y)``, ``torch.relu_(x)``, ``x[i] = v``, ``F.relu(x, inplace=True)``), or
    ``out=x``."""
    out = user.kwargs.get("out")
    if out is alias or (isinstance(out, (tuple, list)) and any(o is alias for o in out)):
        return True
    if not user.args or user.args[0] is not alias:
        return False
    if user.op == "call_function" and user.target in _INPLACE_OPERATORS:
        return True
    name = _name_of(user)
    if name is None:
        return False
    if name.endswith("_") and not name.startswith("__") and name not in _NOT_WRITES:
        return True
    if name in _INPLACE_DUNDERS:
        return True
    if user.op == "call_function" and user.kwargs.get("inplace", False) is not False:
        return True
    if user.op == "call_function" and callable(user.target):
        try:  # an inplace flag passed by position (F.relu(x, True))
            bound = inspect.signature(user.target).bind(*user.args, **user.kwargs)
        except (TypeError, ValueError):
            return False
        return bound.arguments.get("inplace", False) is not False
    return False


def _changed_in_place(node) -> bool:
    """Whether the value of ``node``, or a view of it, is written into later in the graph. An
    observer on it would record the range before the write, and at inference the write would
    saturate into those int8 qparams: such a node is not rewritten."""
    seen, todo = set(), [node]
    while todo:
        alias = todo.pop()
        if alias in seen:
            continue
        seen.add(alias)
        for user in alias.users:
            if _writes_into(user, alias):
                return True
            if user.args and user.args[0] is alias and _name_of(user) in _ALIASING:
                todo.append(user)  # (getitem: an element of split / chunk's tuple too)
    return False


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
    read from parameters or buffers (a positional embedding) are left as they are.
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
    ``QFunctional``, so a residual add runs on int8 codes instead of falling back to float.

    >>> model = torchquant.make_quantizable(resnet.eval(), torch.randn(1, 3, 224, 224))
    >>> model = torchquant.fuse_modules(model, torchquant.find_fusable_modules(model))
    >>> wrapped = nn.Sequential(torchquant.QuantStub(), model, torchquant.DeQuantStub())
    """

    from torch.fx.passes.shape_prop import ShapeProp

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
            traced_out = ShapeProp(gm).propagate(*traced_in)
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
    for node in list(gm.graph.nodes):
        act = _activation_module(node)
        if act is not None:
            if _changed_in_place(node):
                continue  # (as an add's result below)
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
        if _changed_in_place(last):
            # its observer would record the range before the write, which int8 codes then
            # saturate into (x = torch.cat(...); x.add_(pos)): it stays float
            continue
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
