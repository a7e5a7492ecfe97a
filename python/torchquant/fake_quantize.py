"""FakeQuantize modules for quantization-aware training, with torch.ao's names: an observer
plus torchquant's fake_quantize op (straight-through gradient), and a learnable-scale variant
(LSQ). State (scale, zero_point, enable flags) lives in buffers, so it survives state_dict()
and moves with .to().
"""
import torch
from torch import nn

from . import observer as _obs
from ._ops import ops

__all__ = [
    "FakeQuantizeBase",
    "FakeQuantize",
    "LearnableFakeQuantize",
    "default_fake_quant",
    "default_weight_fake_quant",
    "default_per_channel_weight_fake_quant",
    "enable_fake_quant",
    "disable_fake_quant",
    "enable_observer",
    "disable_observer",
]


class _PartialWithRepr:
    def __init__(self, cls, **kwargs):
        self.cls, self.kwargs = cls, kwargs

    def __call__(self, **kwargs):
        return self.cls(**{**self.kwargs, **kwargs})

    def with_args(self, **kwargs):
        return _PartialWithRepr(self.cls, **{**self.kwargs, **kwargs})

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.cls.__name__}.with_args({args})"


class FakeQuantizeBase(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("fake_quant_enabled", torch.tensor([1], dtype=torch.uint8))
        self.register_buffer("observer_enabled", torch.tensor([1], dtype=torch.uint8))

    @classmethod
    def with_args(cls, **kwargs):
        """A constructor with preset arguments, for QConfig (as torch.ao's with_args)."""
        return _PartialWithRepr(cls, **kwargs)

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

    def __init__(self, observer=_obs.MovingAverageMinMaxObserver, quant_min=None, quant_max=None, **observer_kwargs):
        super().__init__()
        if quant_min is not None:
            observer_kwargs["quant_min"] = quant_min
        if quant_max is not None:
            observer_kwargs["quant_max"] = quant_max
        self.activation_post_process = observer(**observer_kwargs)
        app = self.activation_post_process
        self.quant_min, self.quant_max = app.quant_min, app.quant_max
        self.dtype, self.qscheme = app.dtype, app.qscheme
        self.ch_axis = getattr(app, "ch_axis", -1)
        self.is_per_channel = self.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
        self.register_buffer("scale", torch.tensor([1.0], dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.int32))

    def calculate_qparams(self):
        return self.activation_post_process.calculate_qparams()

    def forward(self, x):
        if x.numel() == 0:
            # Nothing to observe or round; the qparams (and their shape) wait for real data.
            return x.clone()
        if self.observer_enabled[0] == 1:
            self.activation_post_process(x.detach())
            scale, zero_point = self.calculate_qparams()
            scale, zero_point = scale.to(self.scale.device), zero_point.to(self.zero_point.device)
            if self.scale.shape != scale.shape:
                self.scale.resize_(scale.shape)
                self.zero_point.resize_(zero_point.shape)
            self.scale.copy_(scale)
            self.zero_point.copy_(zero_point)
        if self.fake_quant_enabled[0] == 1:
            axis = self.ch_axis if self.is_per_channel else None
            x = ops.fake_quantize(x, self.scale, self.zero_point, axis, self.quant_min, self.quant_max)
        return x

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # scale/zero_point change shape once a per-channel observer has seen data.
        for name in ("scale", "zero_point"):
            key = prefix + name
            if key in state_dict:
                getattr(self, name).resize_(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self):
        return (f"fake_quant_enabled={int(self.fake_quant_enabled[0])}, observer_enabled={int(self.observer_enabled[0])}, "
                f"quant_min={self.quant_min}, quant_max={self.quant_max}, dtype={self.dtype}, qscheme={self.qscheme}")


class LearnableFakeQuantize(FakeQuantize):
    """Fake-quantize whose scale and zero point are trained by gradient descent (LSQ, Esser et
    al. 2020), initialized from the observer while it is enabled.

    >>> fq = LearnableFakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255)
    """

    def __init__(self, observer=_obs.MovingAverageMinMaxObserver, quant_min=None, quant_max=None,
                 use_grad_scaling: bool = True, **observer_kwargs):
        super().__init__(observer, quant_min, quant_max, **observer_kwargs)
        del self.scale, self.zero_point
        self.scale = nn.Parameter(torch.tensor([1.0]))
        self.zero_point = nn.Parameter(torch.tensor([0.0]))
        self.use_grad_scaling = use_grad_scaling

    def calculate_qparams(self):
        scale = self.scale.detach().abs().clamp(min=torch.finfo(torch.float32).eps)
        zp = self.zero_point.detach().round().clamp(self.quant_min, self.quant_max).to(torch.int32)
        return scale, zp

    def forward(self, x):
        if x.numel() == 0:
            return x.clone()  # as FakeQuantize: nothing to observe or round
        if self.observer_enabled[0] == 1:
            self.activation_post_process(x.detach())
            scale, zero_point = self.activation_post_process.calculate_qparams()
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
            self.scale.data.abs_().clamp_(min=torch.finfo(torch.float32).eps)
            x = ops.fake_quantize_learnable(x, self.scale, self.zero_point, axis, self.quant_min, self.quant_max, grad_factor)
        return x


default_fake_quant = FakeQuantize.with_args(
    observer=_obs.MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
    qscheme=torch.per_tensor_affine)
default_weight_fake_quant = FakeQuantize.with_args(
    observer=_obs.MovingAverageMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
    qscheme=torch.per_tensor_symmetric)
default_per_channel_weight_fake_quant = FakeQuantize.with_args(
    observer=_obs.MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
    qscheme=torch.per_channel_symmetric, ch_axis=0)


def _apply_to_fake_quants(fn):
    def visit(module):
        if isinstance(module, FakeQuantizeBase):
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
