"""FakeQuantize modules for quantization-aware training, with torch.ao's names: an observer
plus torchquant's fake_quantize op (straight-through gradient), and a learnable-scale variant
(LSQ). State (scale, zero_point, enable flags) lives in buffers, so it survives state_dict()
and moves with .to().
"""
import itertools
import types
import weakref
from typing import Tuple

import torch
from torch import nn
from torch.fx.node import has_side_effect as _has_side_effect

from . import _ops
from . import observer as _obs
from ._ops import ops

# Observer classes of torchquant and torch.ao: a TypeError while building one is about its arguments.
_OBSERVER_BASES = (_obs.ObserverBase, torch.ao.quantization.observer.ObserverBase)

__all__ = [
    "FakeQuantizeBase",
    "FakeQuantize",
    "LearnableFakeQuantize",
    "FixedQParamsFakeQuantize",
    "FusedMovingAvgObsFakeQuantize",
    "default_fake_quant",
    "default_weight_fake_quant",
    "default_per_channel_weight_fake_quant",
    "default_dynamic_fake_quant",
    "default_histogram_fake_quant",
    "default_fixed_qparams_range_neg1to1_fake_quant",
    "default_fixed_qparams_range_0to1_fake_quant",
    "default_symmetric_fixed_qparams_fake_quant",
    "default_affine_fixed_qparams_fake_quant",
    "default_fused_act_fake_quant",
    "default_fused_wt_fake_quant",
    "default_fused_per_channel_wt_fake_quant",
    "fused_wt_fake_quant_range_neg_127_to_127",
    "default_embedding_fake_quant",
    "default_embedding_fake_quant_4bit",
    "fused_per_channel_wt_fake_quant_range_neg_127_to_127",
    "enable_fake_quant",
    "disable_fake_quant",
    "enable_observer",
    "disable_observer",
]


class _PartialWithRepr:
    """``FakeQuantize.with_args(...)``: a constructor with bound keyword arguments, called with
    more (positional ones too, as torch.ao's partial wrapper: ``with_args(...)(MinMaxObserver)``);
    ``with_callable_args`` binds arguments computed afresh at each call, as torch.ao's."""

    def __init__(self, cls, **kwargs):
        self.cls, self.kwargs = cls, kwargs
        self.callable_args = {}

    def __call__(self, *args, **kwargs):
        computed = {name: fn() for name, fn in self.callable_args.items() if name not in kwargs}
        return self.cls(*args, **{**self.kwargs, **computed, **kwargs})

    def with_args(self, **kwargs):
        result = _PartialWithRepr(self.cls, **{**self.kwargs, **kwargs})
        result.callable_args = dict(self.callable_args)
        return result

    def with_callable_args(self, **kwargs):
        result = _PartialWithRepr(self.cls, **self.kwargs)
        result.callable_args = {**self.callable_args, **kwargs}
        return result

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.cls.__name__}.with_args({args})"


def _check_quant_range(observer, quant_min, quant_max, observer_kwargs):
    """torch.ao's FakeQuantize checks: quant_min <= quant_max, both within the dtype (read from
    the keyword arguments or the observer's ``with_args``, quint8 if neither gives it). Without
    them quant_max=255 with dtype=qint8 would fake-quantize to a range int8 cannot store."""
    if quant_min > quant_max:
        raise ValueError(f"quant_min must be <= quant_max, got quant_min={quant_min}, quant_max={quant_max}")
    dtype = observer_kwargs.get("dtype", torch.quint8)
    keywords = getattr(getattr(observer, "p", None), "keywords", None)
    if keywords is not None:
        dtype = keywords.get("dtype", dtype)
    try:
        info = torch.iinfo(dtype)
    except TypeError:  # float dtypes (placeholders) and sub-byte types have no range to check here
        return
    if quant_min < info.min or quant_max > info.max:
        raise ValueError(f"quant_min={quant_min}, quant_max={quant_max} do not fit dtype {dtype} "
                         f"([{info.min}, {info.max}])")


# ---- torch.compile: a FakeQuantize as one opaque op of the graph.
# Its forward branches on its enable flags and on what its observer has seen (data-dependent
# control flow, host reads, buffers resized at the first batch): traced by Dynamo, every
# FakeQuantize broke the graph several times, and the resume functions, shared by all the
# model's fake-quants, were recompiled for each one's shapes until the recompile limit. Under
# torch.compile, FakeQuantize.forward is instead the op below, which runs the eager forward (the
# same code, bit for bit) on the real tensors each time the compiled model runs, and returns the
# output with its straight-through mask (the backward is ``where(mask, grad, 0)``). The op finds
# its module by a key, an int fixed per instance (a copy or an unpickled module gets its own).
_MODULES: "weakref.WeakValueDictionary[int, FakeQuantizeBase]" = weakref.WeakValueDictionary()
_NEXT_KEY = itertools.count()


def _register(module) -> None:
    key = next(_NEXT_KEY)
    module.__dict__["_tq_key"] = key
    _MODULES[key] = module


def _exporting() -> bool:
    """torch.compiler.is_exporting(), read so that it holds inside torch.compile on every torch
    torchquant supports: the Dynamo of some releases (2.11 among them) folds the call itself to
    True in every graph, an export or not (every compiled FakeQuantize then traced its Python
    forward), while it reads the module's flag as it is."""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return torch.compiler.is_exporting() if flag is None else bool(flag)


def _graph_key(module):
    """The key through which torch.compile runs ``module`` as one op, or None where it traces
    the Python forward instead (torch.export, whose programs outlive the module)."""
    if not torch.compiler.is_compiling() or _exporting():
        return None
    return getattr(module, "_tq_key", None)


@torch.library.custom_op("torchquant::_fake_quantize_module", mutates_args=())
def _fake_quantize_module(x: torch.Tensor, key: int, need_mask: bool, call: int) -> Tuple[torch.Tensor, torch.Tensor]:
    module = _MODULES.get(key)
    if module is None:
        raise RuntimeError("torchquant: the FakeQuantize a compiled graph was built for no longer exists")
    y, mask = module._forward_with_mask(x, need_mask)
    return _dense_like(x, y), (_dense_like(x, mask) if need_mask else mask)


def _dense_like(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """t with the layout ``torch.empty_like(x)`` has, which the op's fake kernel promises."""
    if x.is_contiguous() and t.is_contiguous():
        return t
    out = torch.empty_like(x, dtype=t.dtype)
    if out.stride() != t.stride():
        return out.copy_(t)
    return t


@_fake_quantize_module.register_fake
def _(x, key, need_mask, call):
    mask = torch.empty_like(x, dtype=torch.bool) if need_mask else x.new_empty(0, dtype=torch.bool)
    return torch.empty_like(x), mask


def _fake_quantize_module_setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _fake_quantize_module_backward(ctx, grad, _grad_mask):
    (mask,) = ctx.saved_tensors
    return torch.where(mask, grad, torch.zeros((), dtype=grad.dtype, device=grad.device)), None, None, None


_fake_quantize_module.register_autograd(_fake_quantize_module_backward,
                                        setup_context=_fake_quantize_module_setup_context)
# It changes its module's state (observer statistics, scale, zero point), which the schema cannot
# say: marked as having side effects, so that a graph neither drops a call whose output is unused
# nor merges two calls on the same tensor (the observer would see one batch where eager sees two).
_has_side_effect(torch.ops.torchquant._fake_quantize_module.default)
_CALLS = itertools.count()


@torch.compiler.assume_constant_result
def _call_index() -> int:
    """A new int for each call a graph traces, passed to the op as ``call``: two calls on one
    tensor then differ in their arguments, and no graph pass merges them, whether or not it
    honours the side-effect mark (the common-subexpression pass of torch 2.11's AOTAutograd
    does not: an observer saw one batch where eager saw two)."""
    return next(_CALLS)


class FakeQuantizeBase(_obs._LockedState, nn.Module):
    """Base of the fake-quant modules: enable flags; float32 buffers (scale) stay float32 when
    the model is cast to another dtype, as its observer's do."""

    def _apply(self, fn, *args, **kwargs):
        return _obs._apply_keeping_float32(self, super()._apply, fn, *args, **kwargs)

    def __init__(self):
        super().__init__()
        self.register_buffer("fake_quant_enabled", torch.tensor([1], dtype=torch.uint8))
        self.register_buffer("observer_enabled", torch.tensor([1], dtype=torch.uint8))
        _register(self)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_tq_key", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        _register(self)  # a copy (copy.deepcopy) or an unpickled module: its own key

    @classmethod
    def with_args(cls, **kwargs):
        """A constructor with preset arguments, for QConfig (as torch.ao's with_args)."""
        return _PartialWithRepr(cls, **kwargs)

    @classmethod
    def with_callable_args(cls, **kwargs):
        """A constructor whose arguments are computed at each call (as torch.ao's)."""
        return _PartialWithRepr(cls).with_callable_args(**kwargs)

    def enable_fake_quant(self, enabled: bool = True):
        self.fake_quant_enabled[0] = 1 if enabled else 0
        return self

    def disable_fake_quant(self):
        return self.enable_fake_quant(False)

    def enable_observer(self, enabled: bool = True):
        self.observer_enabled[0] = 1 if enabled else 0
        return self

    def disable_observer(self):
        return self.enable_observer(False)


class FakeQuantize(FakeQuantizeBase):
    """Observer + fake-quantize, as ``torch.ao.quantization.FakeQuantize``.

    >>> fq = FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255)
    >>> y = fq(torch.randn(8, 4))          # observes, then fake-quantizes
    >>> scale, zero_point = fq.calculate_qparams()
    """

    _GRAPH_OP = True  # torch.compile runs forward as one op (see _fake_quantize_module)

    def __init__(self, observer=_obs.MovingAverageMinMaxObserver, quant_min=None, quant_max=None, **observer_kwargs):
        super().__init__()
        if quant_min is not None and quant_max is not None:
            _check_quant_range(observer, quant_min, quant_max, observer_kwargs)
        if quant_min is not None:
            observer_kwargs["quant_min"] = quant_min
        if quant_max is not None:
            observer_kwargs["quant_max"] = quant_max
        if isinstance(observer, torch.nn.Module):
            raise ValueError(f"argument 'observer' of {type(self).__name__} must be an observer class or its "
                             f"with_args(...), not an instance, got {type(observer).__name__}()")
        made_by = observer
        while not isinstance(made_by, type) and (hasattr(made_by, "p") or hasattr(made_by, "func")):
            made_by = made_by.p if hasattr(made_by, "p") else made_by.func  # with_args / functools.partial
        try:
            self.activation_post_process = observer(**observer_kwargs)
        except TypeError as e:
            if isinstance(made_by, type) and issubclass(made_by, _OBSERVER_BASES):
                raise  # an observer given arguments it does not take: Python's own error names them
            raise ValueError(f"argument 'observer' of {type(self).__name__} must make an observer, got "
                             f"{getattr(made_by, '__name__', made_by)!r}, which could not be built from "
                             f"{sorted(observer_kwargs)}: {e}") from e
        app = self.activation_post_process
        if not all(hasattr(app, a) for a in ("quant_min", "quant_max", "dtype", "qscheme", "calculate_qparams")):
            raise ValueError(f"argument 'observer' of {type(self).__name__} must make an observer (quant_min, quant_max, "
                             f"dtype, qscheme, calculate_qparams), got {getattr(observer, '__name__', observer)!r}, which "
                             f"made a {type(app).__name__}")
        self.quant_min, self.quant_max = app.quant_min, app.quant_max
        self.dtype, self.qscheme = app.dtype, app.qscheme
        if isinstance(self.quant_min, int) and isinstance(self.quant_max, int) and (
                self.quant_min < -(1 << 23) or self.quant_max > 1 << 23):
            # the fake-quant kernels compute in float32, where integers past 2^23 are not all exact
            raise ValueError(f"{type(self).__name__}: the range [{self.quant_min}, {self.quant_max}] (dtype "
                             f"{self.dtype}) is wider than the [-2^23, 2^23] torchquant's fake-quant computes "
                             f"exactly in float32; pass quant_min / quant_max within it (an int32 bias is not "
                             f"fake-quantized in torchquant's flows)")
        self.is_dynamic = app.is_dynamic
        self.ch_axis = getattr(app, "ch_axis", -1)
        # Float qparams (per-row float scale and zero point: embedding tables, as torch.ao's
        # default_embedding_fake_quant) round x / s + z with a float z.
        self.is_float_qparams = self.qscheme == torch.per_channel_affine_float_qparams
        self.is_per_channel = self.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine,
                                               torch.per_channel_affine_float_qparams)
        self.register_buffer("scale", torch.tensor([1.0], dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.float32 if self.is_float_qparams
                                                        else torch.int32))

    def calculate_qparams(self):
        return self.activation_post_process.calculate_qparams()

    def _observed_qparams(self):
        """The observer's qparams for the training step that just fed it: its
        ``calculate_qparams()`` without the checks that would read a GPU's statistics on the
        host every step (see ``UniformQuantizationObserverBase._step_qparams``)."""
        app = self.activation_post_process
        step = getattr(app, "_step_qparams", None)
        return app.calculate_qparams() if step is None else step()

    def _step_qparams(self):
        if type(self).calculate_qparams is FakeQuantize.calculate_qparams:
            return self._observed_qparams()
        return self.calculate_qparams()  # a subclass's own

    def forward(self, x):
        if x.numel() == 0:
            # Nothing to observe or round; the qparams (and their shape) wait for real data.
            return x.clone()
        key = _graph_key(self)
        if key is not None:  # torch.compile: one opaque op, see _fake_quantize_module
            need_mask = x.requires_grad and torch.is_grad_enabled()  # (no backward: no mask)
            return _fake_quantize_module(x, key, need_mask, _call_index())[0]
        return self._forward_eager(x)

    def _forward_eager(self, x):
        # The two enable flags are read on the host (as torch.ao's FakeQuantize does), nothing
        # else: a GPU's statistics are not (see _observed_qparams).
        if self.observer_enabled[0] == 1:
            self.activation_post_process(x.detach())
            scale, zero_point = self._step_qparams()
            scale, zero_point = scale.to(self.scale.device), zero_point.to(self.zero_point.device)
            if self.scale.shape != scale.shape:
                self.scale.resize_(scale.shape)
                self.zero_point.resize_(zero_point.shape)
            self.scale.copy_(scale)
            self.zero_point.copy_(zero_point)
        if self.fake_quant_enabled[0] == 1:
            return self._fake_quantize(x, self.scale, self.zero_point)
        return x

    def _fake_quantize(self, x, scale, zero_point):
        if self.is_float_qparams:  # torch's kernel: torchquant's ops take integer zero points
            # (torch's takes no negative axis; the observer and torchquant's ops do)
            return torch.fake_quantize_per_channel_affine(x, scale, zero_point, self.ch_axis % max(x.dim(), 1),
                                                          self.quant_min, self.quant_max)
        axis = self.ch_axis if self.is_per_channel else None
        return ops.fake_quantize(x, scale, zero_point, axis, self.quant_min, self.quant_max)

    def _pass_mask(self, x, scale, zero_point):
        """Where the straight-through gradient of ``_fake_quantize(x, scale, zero_point)`` passes."""
        if self.is_float_qparams:
            return torch.ops.aten.fake_quantize_per_channel_affine_cachemask(
                x, scale, zero_point, self.ch_axis % max(x.dim(), 1), self.quant_min, self.quant_max)[1]
        axis = self.ch_axis if self.is_per_channel else None
        return ops.fake_quantize_backward(torch.ones_like(x, dtype=torch.float32), x, scale, zero_point, axis,
                                          self.quant_min, self.quant_max) != 0

    def _forward_with_mask(self, x, need_mask: bool = True):
        """The eager forward of ``x`` (no autograd) and its straight-through mask: where the
        gradient passes (all of x while fake-quant is off; an empty tensor without
        ``need_mask``). Run by torch.compile's graphs."""
        with _obs._update_lock(self):
            y = self._forward_eager(x)
            if not need_mask:
                return (x.clone() if y is x else y), x.new_empty(0, dtype=torch.bool)
            if y is x:  # fake-quant off: the gradient passes everywhere
                return x.clone(), torch.ones_like(x, dtype=torch.bool)
            return y, self._pass_mask(x, self.scale, self.zero_point)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # scale/zero_point change shape once a per-channel observer has seen data.
        for name in ("scale", "zero_point"):
            key = prefix + name
            if key in state_dict:
                t = getattr(self, name)
                if t.shape != state_dict[key].shape:
                    if isinstance(t, nn.Parameter):  # LearnableFakeQuantize's: a new tensor, no resize_
                        t.data = torch.empty(state_dict[key].shape, dtype=t.dtype, device=t.device)
                    else:
                        t.resize_(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self):
        # The current qparams too, as torch.ao's (what print(qat_model) is read for).
        return (f"fake_quant_enabled={int(self.fake_quant_enabled[0])}, observer_enabled={int(self.observer_enabled[0])}, "
                f"quant_min={self.quant_min}, quant_max={self.quant_max}, dtype={self.dtype}, qscheme={self.qscheme}, "
                f"ch_axis={getattr(self, 'ch_axis', -1)}, scale={self.scale.detach()}, zero_point={self.zero_point.detach()}")


class LearnableFakeQuantize(FakeQuantize):
    """Fake-quantize whose scale and zero point are trained by gradient descent (LSQ, Esser et
    al. 2020), initialized from the observer while it is enabled.

    >>> fq = LearnableFakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255)
    """

    def __init__(self, observer=_obs.MovingAverageMinMaxObserver, quant_min=None, quant_max=None,
                 use_grad_scaling: bool = True, **observer_kwargs):
        super().__init__(observer, quant_min, quant_max, **observer_kwargs)
        if self.qscheme == torch.per_channel_affine_float_qparams:
            raise ValueError("LearnableFakeQuantize: qscheme torch.per_channel_affine_float_qparams (an embedding "
                             "table's float zero points) is not supported: its trained zero point is an integer "
                             "in [quant_min, quant_max]; use FakeQuantize (default_embedding_fake_quant)")
        del self.scale, self.zero_point
        self.scale = nn.Parameter(torch.tensor([1.0]))
        self.zero_point = nn.Parameter(torch.tensor([0.0]))
        self.use_grad_scaling = use_grad_scaling

    # Its scale and zero point are trained, so torch.compile cannot run it as one opaque op as
    # FakeQuantize's: under torch.compile its forward runs outside the graph (as torch.ao's
    # fake-quants, which Dynamo skips), one graph break per instance, and no frame of its own
    # recompiled for every instance's shapes.
    _GRAPH_OP = False

    def _symmetric_zero_point(self):
        """For a symmetric qscheme, the zero point its observer gives (0 for signed dtypes), held
        fixed: training moves the scale only, as torch.ao's _LearnableFakeQuantize, which resets
        the zero point every step (a trained one would make the weights asymmetric, which
        convert refuses for symmetric qconfigs). None for affine schemes."""
        if self.qscheme not in (torch.per_tensor_symmetric, torch.per_channel_symmetric):
            return None
        fixed = getattr(self.activation_post_process, "_symmetric_zero_point", None)
        return fixed() if fixed is not None else 0

    def calculate_qparams(self):
        scale = self.scale.detach().clamp(min=torch.finfo(torch.float32).eps)
        fixed = self._symmetric_zero_point()
        zp = self.zero_point.detach() if fixed is None else torch.full_like(self.zero_point.detach(), fixed)
        zp = zp.round().clamp(self.quant_min, self.quant_max).to(torch.int32)
        return scale, zp

    def forward(self, x):
        if torch.compiler.is_compiling() and not _exporting():
            return self._forward_outside_graph(x)
        return self._forward_learnable(x)

    @torch.compiler.disable
    def _forward_outside_graph(self, x):
        with _obs._update_lock(self):
            return self._forward_learnable(x)

    def _forward_learnable(self, x):
        if x.numel() == 0:
            return x.clone()  # as FakeQuantize: nothing to observe or round
        if self.observer_enabled[0] == 1:
            self.activation_post_process(x.detach())
            scale, zero_point = self._observed_qparams()
            with torch.no_grad():
                if self.scale.shape != scale.shape:
                    self.scale.data = torch.empty_like(scale, dtype=torch.float32)
                    self.zero_point.data = torch.empty_like(scale, dtype=torch.float32)
                self.scale.copy_(scale)
                self.zero_point.copy_(zero_point.float())
        if self.fake_quant_enabled[0] == 1:
            axis = self.ch_axis if self.is_per_channel else None
            # Gradient scaling of LSQ: 1 / sqrt(numel * Q_P) keeps scale updates in step with weights;
            # Q_P is quant_max (torch.ao's), or -quant_min when the range has no positive level.
            qp = self.quant_max if self.quant_max > 0 else -self.quant_min
            grad_factor = 1.0 / (x.numel() * qp) ** 0.5 if self.use_grad_scaling else 1.0
            # a step that took the scale to or below 0 leaves it at eps, as torch.ao's does
            self.scale.data.clamp_(min=torch.finfo(torch.float32).eps)
            zero_point = self.zero_point
            fixed = self._symmetric_zero_point()
            if fixed is not None:  # held, and not trained (no gradient reaches it)
                self.zero_point.data.fill_(fixed)
                zero_point = self.zero_point.detach()
            x = ops.fake_quantize_learnable(x, self.scale, zero_point, axis, self.quant_min, self.quant_max, grad_factor)
        return x


class FixedQParamsFakeQuantize(FakeQuantize):
    """Fake-quantize with the fixed qparams of a FixedQParamsObserver (outputs of sigmoid, tanh,
    ...), as torch.ao's FixedQParamsFakeQuantize: ``scale`` and ``zero_point`` are the
    observer's own buffers.

    >>> fq = FixedQParamsFakeQuantize(observer=default_fixed_qparams_range_0to1_observer)
    >>> fq(torch.tensor([0.5, 2.0]))
    tensor([0.5000, 0.9961])
    """

    def __init__(self, observer):
        super().__init__(observer=observer)
        app = self.activation_post_process
        if type(app) is not _obs.FixedQParamsObserver:
            raise ValueError("argument 'observer' of FixedQParamsFakeQuantize must build a FixedQParamsObserver, "
                             f"got {type(app).__name__}")
        if self.qscheme not in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            raise ValueError(f"FixedQParamsFakeQuantize supports per-tensor qschemes only, got {self.qscheme}")
        self._observer_ctr = observer
        self.scale = app.scale
        self.zero_point = app.zero_point

    def calculate_qparams(self):
        return self.scale, self.zero_point


class _FakeQuantizeIf(torch.autograd.Function):
    """``module._fake_quantize(x, scale, zero_point)`` where the bool tensor ``on`` (one element,
    on x's device) is True, else x, chosen on the device: no host read. The gradient is the
    fake-quant's straight-through one where ``on``, else the incoming one as it is: chosen, not
    summed (autograd's sum of two branches' gradients would turn a -0.0 into +0.0)."""

    @staticmethod
    def forward(ctx, x, on, scale, zero_point, module):
        # Copies of the qparams: they are the module's buffers, which its next call (a module run
        # twice in one forward) updates in place before this backward runs.
        scale, zero_point = scale.clone(), zero_point.clone()
        ctx.axis = module.ch_axis if module.is_per_channel else None
        ctx.qmin, ctx.qmax = module.quant_min, module.quant_max
        if module.is_float_qparams:  # torch's kernel, as torch.fake_quantize_per_channel_affine runs it
            y, mask = torch.ops.aten.fake_quantize_per_channel_affine_cachemask(
                x, scale, zero_point, module.ch_axis % max(x.dim(), 1), module.quant_min, module.quant_max)
            ctx.save_for_backward(on, mask)
        else:
            y = ops.fake_quantize(x, scale, zero_point, ctx.axis, ctx.qmin, ctx.qmax)
            ctx.save_for_backward(on, x, scale, zero_point)
        # laid out as x (x itself is what a step with fake-quant off returns on the CPU)
        return torch.where(on, y, x, out=torch.empty_like(x))

    @staticmethod
    def backward(ctx, grad):
        on, *saved = ctx.saved_tensors
        if len(saved) == 1:  # torch's kernel's gradient
            gx = torch.ops.aten.fake_quantize_per_channel_affine_cachemask_backward(grad, saved[0])
        else:  # torchquant's fake_quantize's, as its autograd formula computes it
            ste = types.SimpleNamespace(saved_tensors=tuple(saved), axis=ctx.axis, qmin=ctx.qmin, qmax=ctx.qmax)
            gx = _ops._fake_quantize_backward(ste, grad)[0]
        return torch.where(on, gx, grad), None, None, None, None


class FusedMovingAvgObsFakeQuantize(FakeQuantize):
    """torch.ao's default QAT fake-quant class: a FakeQuantize whose observer is a
    MovingAverageMinMaxObserver or MovingAveragePerChannelMinMaxObserver, with quant_min=0,
    quant_max=255 by default and int64 enable flags, as torch.ao's.

    >>> fq = FusedMovingAvgObsFakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255)
    >>> y = fq(torch.randn(8, 4))

    One difference, on purpose: torch.ao runs it as one fused kernel that picks its training-time
    qparams by another rule than its observer's ``calculate_qparams`` (which convert uses): for
    symmetric int8 weights that scale is about 0.4% larger (a 255-level grid laid over
    [-128, 127] steps), and an affine scale can differ in its last bit. Here training
    fake-quantizes with the observer's qparams, the ones the int8 model will use, so the output
    equals torch.ao's FakeQuantize with the same observer bit for bit; the running min/max and
    ``calculate_qparams()`` equal torch.ao's fused module's.
    """

    def __init__(self, observer=_obs.MovingAverageMinMaxObserver, quant_min=0, quant_max=255, **observer_kwargs):
        super().__init__(observer, quant_min, quant_max, **observer_kwargs)
        app = self.activation_post_process
        if not isinstance(app, (_obs.MovingAverageMinMaxObserver, _obs.MovingAveragePerChannelMinMaxObserver)):
            raise ValueError("argument 'observer' of FusedMovingAvgObsFakeQuantize must build a "
                             "MovingAverageMinMaxObserver or MovingAveragePerChannelMinMaxObserver, "
                             f"got {type(app).__name__}")
        # torch.ao keeps these flags as int64; the same dtype lets its state_dicts load unchanged.
        self.register_buffer("fake_quant_enabled", torch.tensor([1], dtype=torch.long))
        self.register_buffer("observer_enabled", torch.tensor([1], dtype=torch.long))
        self.is_symmetric_quant = self.qscheme in (torch.per_tensor_symmetric, torch.per_channel_symmetric)

    def _flags_read_on_host(self, x) -> bool:
        """Whether a step reads the enable flags on the host, as FakeQuantize's does: on the CPU,
        where that is free, while traced (torch.export), for subclasses or observer subclasses,
        whose steps may do more than the statistics and qparams kept below, and for a
        per-channel observer whose statistics do not have x's channels yet (its first batch, or
        a mismatch): whether it sizes them, or raises, depends on the flag, as on the CPU."""
        app = self.activation_post_process
        if (self._buffers["observer_enabled"].is_cpu or torch.compiler.is_compiling()
                or type(app) not in (_obs.MovingAverageMinMaxObserver, _obs.MovingAveragePerChannelMinMaxObserver)
                or type(self).calculate_qparams is not FakeQuantize.calculate_qparams
                or type(self)._fake_quantize is not FakeQuantize._fake_quantize):
            return True
        if type(app) is _obs.MovingAveragePerChannelMinMaxObserver:
            axis = app.ch_axis
            if x.dim() == 0 or not -x.dim() <= axis < x.dim():
                return True
            channels = x.shape[axis]
            if (app.min_val.numel() != channels or self.scale.numel() != channels
                    or self.zero_point.numel() != channels):
                return True
        return False

    def _forward_eager(self, x):
        if self._flags_read_on_host(x):
            return super()._forward_eager(x)
        # Off the CPU the flags are read on the device, as torch.ao's fused kernel does: the step
        # observes and fake-quantizes, and keeps the old statistics and qparams where the observer
        # is off, x where fake-quant is off (torch.where), so that it needs no host sync. The same
        # numbers as FakeQuantize's step, bit for bit; it costs an observation while the observer
        # is off, and a fake-quant and one more pass over x while fake-quant is off.
        b = self._buffers
        observe = b["observer_enabled"][0] == 1
        self.activation_post_process._forward_where(x.detach(), observe)
        scale, zero_point = self._observed_qparams()
        scale, zero_point = scale.to(b["scale"].device), zero_point.to(b["zero_point"].device)
        if b["scale"].shape != scale.shape:  # (a per-channel observer's first batch)
            b["scale"].resize_(scale.shape).fill_(1.0)  # kept while the observer is off: the initial qparams
            b["zero_point"].resize_(zero_point.shape).zero_()
        b["scale"].copy_(torch.where(observe, scale, b["scale"]))
        b["zero_point"].copy_(torch.where(observe, zero_point, b["zero_point"]))
        return _FakeQuantizeIf.apply(x, b["fake_quant_enabled"][0] == 1, b["scale"], b["zero_point"], self)

    def _forward_with_mask(self, x, need_mask: bool = True):
        if self._flags_read_on_host(x):
            return super()._forward_with_mask(x, need_mask)
        with _obs._update_lock(self):
            y = self._forward_eager(x)
            if not need_mask:
                return y, x.new_empty(0, dtype=torch.bool)
            off = self._buffers["fake_quant_enabled"][0] != 1
            return y, self._pass_mask(x, self.scale, self.zero_point) | off

    def extra_repr(self):
        return super().extra_repr() + f", reduce_range={self.activation_post_process.reduce_range}"


default_fake_quant = FakeQuantize.with_args(
    observer=_obs.MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
    qscheme=torch.per_tensor_affine)
default_weight_fake_quant = FakeQuantize.with_args(
    observer=_obs.MovingAverageMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
    qscheme=torch.per_tensor_symmetric)
default_per_channel_weight_fake_quant = FakeQuantize.with_args(
    observer=_obs.MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
    qscheme=torch.per_channel_symmetric, ch_axis=0)

# Embedding tables for QAT (torch.ao's): one float scale and zero point per row, from the row's
# current min / max (averaging_constant=1), 8-bit or 4-bit values.
default_embedding_fake_quant = FakeQuantize.with_args(
    observer=_obs.MovingAveragePerChannelMinMaxObserver, qscheme=torch.per_channel_affine_float_qparams,
    dtype=torch.quint8, quant_min=0, quant_max=255, ch_axis=0, averaging_constant=1)
default_embedding_fake_quant_4bit = FakeQuantize.with_args(
    observer=_obs.MovingAveragePerChannelMinMaxObserver, qscheme=torch.per_channel_affine_float_qparams,
    dtype=torch.quint4x2, ch_axis=0, averaging_constant=1)

default_dynamic_fake_quant = FakeQuantize.with_args(
    observer=_obs.MovingAverageMinMaxObserver, quant_min=0, quant_max=255, is_dynamic=True, dtype=torch.quint8,
    averaging_constant=1)
# torch.ao sets reduce_range=True here (7-bit activations, for fbgemm's AVX2 kernel); torchquant's
# kernels are exact on full 8-bit activations, so its activation defaults use the whole range, as
# default_fake_quant above.
default_histogram_fake_quant = FakeQuantize.with_args(
    observer=_obs.HistogramObserver, quant_min=0, quant_max=255, dtype=torch.quint8, qscheme=torch.per_tensor_affine)
default_fixed_qparams_range_neg1to1_fake_quant = FixedQParamsFakeQuantize.with_args(
    observer=_obs.default_fixed_qparams_range_neg1to1_observer)
default_fixed_qparams_range_0to1_fake_quant = FixedQParamsFakeQuantize.with_args(
    observer=_obs.default_fixed_qparams_range_0to1_observer)
# torch.ao's older names for the two above.
default_symmetric_fixed_qparams_fake_quant = default_fixed_qparams_range_neg1to1_fake_quant
default_affine_fixed_qparams_fake_quant = default_fixed_qparams_range_0to1_fake_quant
default_fused_act_fake_quant = FusedMovingAvgObsFakeQuantize.with_args(
    observer=_obs.MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8)
default_fused_wt_fake_quant = FusedMovingAvgObsFakeQuantize.with_args(
    observer=_obs.MovingAverageMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
    qscheme=torch.per_tensor_symmetric)
default_fused_per_channel_wt_fake_quant = FusedMovingAvgObsFakeQuantize.with_args(
    observer=_obs.MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
    qscheme=torch.per_channel_symmetric)
fused_wt_fake_quant_range_neg_127_to_127 = FusedMovingAvgObsFakeQuantize.with_args(
    observer=_obs.MovingAverageMinMaxObserver, quant_min=-127, quant_max=127, dtype=torch.qint8,
    qscheme=torch.per_tensor_symmetric, eps=2**-12)
fused_per_channel_wt_fake_quant_range_neg_127_to_127 = FusedMovingAvgObsFakeQuantize.with_args(
    observer=_obs.MovingAveragePerChannelMinMaxObserver, quant_min=-127, quant_max=127, dtype=torch.qint8,
    qscheme=torch.per_channel_symmetric, eps=2**-12)


def _fake_quant_types():
    """torchquant's fake-quant base and torch.ao's (a torch.ao QAT qconfig kept from an older
    script builds torch.ao fake-quants, which these switches must reach too)."""
    try:
        from torch.ao.quantization.fake_quantize import FakeQuantizeBase as _AoFakeQuantizeBase
    except ImportError:  # pragma: no cover
        return (FakeQuantizeBase,)
    return (FakeQuantizeBase, _AoFakeQuantizeBase)


def _apply_to_fake_quants(fn):
    types = _fake_quant_types()

    def visit(module):
        if isinstance(module, types):
            fn(module)
    return visit


def enable_fake_quant(mod):
    """``model.apply(torchquant.enable_fake_quant)``"""
    _apply_to_fake_quants(lambda m: m.enable_fake_quant())(mod)


def disable_fake_quant(mod):
    """``model.apply(torchquant.disable_fake_quant)``"""
    _apply_to_fake_quants(lambda m: m.disable_fake_quant())(mod)


def enable_observer(mod):
    """``model.apply(torchquant.enable_observer)``"""
    _apply_to_fake_quants(lambda m: m.enable_observer())(mod)


def disable_observer(mod):
    """``model.apply(torchquant.disable_observer)``"""
    _apply_to_fake_quants(lambda m: m.disable_observer())(mod)


# torch.ao's QAT switches (``model.apply(torch.ao.quantization.disable_observer)``, as its
# tutorials write) test isinstance(mod, torch.ao's FakeQuantizeBase): registered as a virtual
# subclass of it (an ABC), torchquant's fake-quants are switched by them too, instead of silently
# not at all in a script whose import was swapped.
try:
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase as _AoFakeQuantizeBase

    _AoFakeQuantizeBase.register(FakeQuantizeBase)
except ImportError:  # pragma: no cover - a torch without torch.ao
    pass
