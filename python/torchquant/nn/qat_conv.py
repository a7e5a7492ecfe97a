"""Quantization-aware-training convolutions (torch.ao.nn.qat / torch.ao.nn.intrinsic.qat names):
Conv1d/2d/3d and ConvReLU* with fake-quantized weights, and ConvBn* / ConvBnReLU* that fold
BatchNorm into the weight before its fake-quant, with torch.ao's ``freeze_bn_stats`` /
``update_bn_stats`` semantics. ``convert`` folds the BatchNorm's running statistics into the
int8 weight and bias."""
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init

from . import intrinsic_conv as fused

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvReLU1d", "ConvReLU2d", "ConvReLU3d", "ConvBn1d", "ConvBn2d",
           "ConvBn3d", "ConvBnReLU1d", "ConvBnReLU2d", "ConvBnReLU3d", "freeze_bn_stats", "update_bn_stats"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _need_qconfig(qconfig, name):
    if qconfig is None:
        raise ValueError(f"{name} needs a qconfig (argument 'qconfig')")
    return qconfig


def check_float_source(cls, mod, name=None) -> None:
    """A TypeError unless ``mod`` is what ``cls.from_float`` is for: its float module class (a
    fused one of torch.ao's too), or a subclass that computes as it (no forward of its own:
    NonDynamicallyQuantizableLinear, torchvision's Conv3DSimple). Another class would lose or
    gain parts without a word (a ConvBn2d given to qat.Conv2d dropped its BatchNorm, a Linear
    given to qat.LinearReLU gained a ReLU, a ConvTranspose2d ran as a convolution)."""
    from ..quantize import _AO_FUSED_AS_OURS

    want, t = cls._FLOAT_MODULE, type(mod)
    if t is want or _AO_FUSED_AS_OURS.get(t) is want:
        return
    if isinstance(mod, want) and not any(
            k for k in t.__mro__[:t.__mro__.index(want)]
            if any(n in vars(k) for n in ("forward", "_conv_forward", "_output_padding", "__call__"))):
        return
    raise TypeError(f"{name or 'qat.' + cls.__name__}: qat.{cls.__name__}.from_float takes a "
                    f"{want.__module__}.{want.__name__} (or a subclass without a forward of its own), got "
                    f"{t.__module__}.{t.__name__}")


def check_bn_statistics(bn, name) -> None:
    """A BatchNorm folded into a QAT module needs its running statistics (convert folds them)."""
    if bn is None or bn.running_var is None or bn.running_mean is None:
        raise ValueError(f"{name}: its BatchNorm has no running statistics (track_running_stats=False): it cannot "
                         "be folded into the weight; keep it out of the fused group")


def _prepared_qconfig(mod):
    """The qconfig prepare_qat gave the float module mod (an error if it has none)."""
    qconfig = getattr(mod, "qconfig", None)
    if qconfig is None:
        raise ValueError(f"{type(mod).__name__} has no qconfig; prepare_qat assigns one")
    return qconfig


def _conv_args(conv):
    return dict(in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=conv.kernel_size,
                stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                bias=conv.bias is not None, padding_mode=conv.padding_mode)


def _float_parts(mod):
    """(conv, bn or None, has_relu) of a float conv, or of a fused one (torchquant's or torch.ao's);
    a ReLU6 counts as a ReLU (see :func:`has_relu6`)."""
    if isinstance(mod, nn.Sequential):
        mods = list(mod)
        bn = next((m for m in mods[1:] if isinstance(m, nn.modules.batchnorm._BatchNorm)), None)
        return mods[0], bn, any(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in mods[1:])
    return mod, None, False


def has_relu6(mod) -> bool:
    """Whether a fused float conv (its last module) or a QAT conv clamps at 6 (ReLU6)."""
    if isinstance(mod, nn.Sequential):
        return any(isinstance(m, nn.ReLU6) for m in list(mod)[1:])
    return bool(getattr(mod, "_relu6", False))



def _fake_quant_in_graph(fake_quant) -> bool:
    """Whether torch.compile runs this fake-quant as one op of the graph (torchquant's
    FakeQuantize and its subclasses but LearnableFakeQuantize; see fake_quantize.py): no graph
    break, so the BatchNorm folding around it may be traced too."""
    return getattr(fake_quant, "_GRAPH_OP", False) and getattr(fake_quant, "_tq_key", None) is not None


def running_std_of(bn: nn.Module, fake_quant: nn.Module = None) -> torch.Tensor:
    """sqrt(running_var + eps) of a BatchNorm; computed outside torch.compile's graph unless
    ``fake_quant`` (the folded weight's) runs inside it. A fake-quant that breaks the graph
    between this and the BatchNorm's in-place update of running_var splits the compiled graph
    in two; inside the first graph, autograd could save running_var itself for the backward
    (recomputing the square root there) and find it changed by the update: "one of the
    variables needed for gradient computation has been modified by an inplace operation"."""
    if fake_quant is not None and _fake_quant_in_graph(fake_quant) and torch.compiler.is_compiling():
        # One graph: an opaque op, so that inductor's partitioner saves its result for the
        # backward instead of recomputing it there from running_var, which the BatchNorm has
        # updated in place by then (silently wrong weight gradients).
        return _running_std_op(bn.running_var, float(bn.eps))
    return _running_std_outside_graph(bn)


@torch.library.custom_op("torchquant::_running_std", mutates_args=())
def _running_std_op(running_var: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.sqrt(running_var + eps)


@_running_std_op.register_fake
def _(running_var, eps):
    return torch.empty_like(running_var)


@torch.compiler.disable
def _running_std_outside_graph(bn: nn.Module) -> torch.Tensor:
    return torch.sqrt(bn.running_var + bn.eps)


def fake_quant_folded_weight(fake_quant: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """``fake_quant(weight)`` for a weight with a BatchNorm folded in. A fake-quant that
    torch.compile cannot run as one op of the graph (LearnableFakeQuantize, torch.ao's) is run
    outside it: traced, its graph breaks leave resume functions shared by every fake-quant of
    the model; seen with the activations' and the weight's shapes they are recompiled with
    dynamic sizes, and their output would carry them into the convolution and training-mode
    BatchNorm that follow, a graph inductor fails to compile ("Cannot convert expression to
    float"). Eager: fake_quant(weight)."""
    if _fake_quant_in_graph(fake_quant):
        return fake_quant(weight)
    return _fake_quant_outside_graph(fake_quant, weight)


@torch.compiler.disable
def _fake_quant_outside_graph(fake_quant: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    return fake_quant(weight)


class _QATConv:
    """Mixin of the QAT convolutions: the weight passes through ``weight_fake_quant``."""

    _RELU = False
    _relu6 = False  # set on instances fused with a ReLU6 (from_float)

    def _init_qat(self, qconfig, device):
        self.qconfig = _need_qconfig(qconfig, type(self).__name__)
        self.weight_fake_quant = qconfig.weight()
        if device is not None:
            self.weight_fake_quant.to(device)

    def forward(self, input):  # (torch.nn's name: input= calls work)
        x = input
        y = self._conv_forward(x, self.weight_fake_quant(self.weight), self.bias)
        if not self._RELU:
            return y
        return F.relu6(y) if self._relu6 else F.relu(y)

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant=False, name=None):
        """The QAT module for a float Conv (or fused ConvReLU) that carries a qconfig."""
        check_float_source(cls, mod, name)
        qconfig = _prepared_qconfig(mod)
        conv, _, _ = _float_parts(mod)
        qat = cls(**_conv_args(conv), qconfig=qconfig, device=conv.weight.device, dtype=conv.weight.dtype)
        qat.weight = conv.weight
        qat.bias = conv.bias
        if cls._RELU and has_relu6(mod):
            qat._relu6 = True
        return qat

    def _float_activation(self):
        """The float module of the fused activation: ReLU6 where fused from one, else ReLU."""
        return nn.ReLU6() if self._relu6 else nn.ReLU()

    def _with_activation(self, conv):
        """to_float's result: the conv, or with the activation the fused float ConvReLU (torch.ao's)."""
        if not self._RELU:
            return conv
        from . import intrinsic_conv
        return getattr(intrinsic_conv, f"ConvReLU{self._NSP}d")(conv, self._float_activation())

    def extra_repr(self):
        s = super().extra_repr()
        return s + ", relu6=True" if self._relu6 else s

    def to_float(self):
        conv = _CONV[self._NSP](**_conv_args(self))
        conv.weight = self.weight
        conv.bias = self.bias
        return self._with_activation(conv)


def _make_conv(nsp, relu, float_module):
    base = _CONV[nsp]

    class QATConv(_QATConv, base):
        _NSP = nsp
        _RELU = relu
        _FLOAT_MODULE = float_module

        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                     bias=True, padding_mode="zeros", qconfig=None, device=None, dtype=None):
            base.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                          padding_mode, device=device, dtype=dtype)
            self._init_qat(qconfig, device)

    return QATConv


class _BnStats:
    """Mixin of the QAT modules holding a BatchNorm ``bn`` (ConvBn*, LinearBn1d): torch.ao's
    ``freeze_bn_stats`` / ``update_bn_stats``, and ``train`` keeping a frozen BatchNorm in eval mode."""

    def update_bn_stats(self):
        self.freeze_bn = False
        self.bn.training = True
        return self

    def freeze_bn_stats(self):
        self.freeze_bn = True
        self.bn.training = False
        return self

    def train(self, mode=True):
        # A frozen BatchNorm stays in eval mode (running statistics fixed), as torch.ao's.
        self.training = mode
        if not self.freeze_bn:
            for module in self.children():
                module.train(mode)
        return self


class _ConvBn(_BnStats, _QATConv):
    """Mixin of ConvBn* / ConvBnReLU*: BatchNorm folded into the weight before its fake-quant
    (torch.ao's approximate fused forward), BatchNorm statistics updated unless frozen."""

    def _init_bn(self, eps, momentum, freeze_bn, qconfig, device, dtype):
        self._init_qat(qconfig, device)
        self.freeze_bn = freeze_bn if self.training else True
        self.bn = _BN[self._NSP](self.out_channels, eps, momentum, True, True, device=device, dtype=dtype)
        self.bn.reset_running_stats()
        init.uniform_(self.bn.weight)
        init.zeros_(self.bn.bias)
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)
        if self.training and not freeze_bn:
            self.update_bn_stats()
        else:
            self.freeze_bn_stats()

    def forward(self, input):  # (torch.nn's name: input= calls work)
        x = input
        running_std = running_std_of(self.bn, self.weight_fake_quant)
        gamma = self.bn.weight if self.bn.weight is not None else torch.ones_like(running_std)  # affine=False
        scale_factor = gamma / running_std
        # a channel whose gamma is exactly 0 folds with a factor of 1 instead (weight * 0 then conv / 0
        # would be NaN); its BatchNorm multiplies by gamma = 0 itself, so its output is beta as in float
        scale_factor = torch.where(scale_factor == 0, torch.ones_like(scale_factor), scale_factor)
        wshape = [-1] + [1] * (self.weight.dim() - 1)
        bshape = [1, -1] + [1] * (self.weight.dim() - 2)
        scaled_weight = fake_quant_folded_weight(self.weight_fake_quant, self.weight * scale_factor.reshape(wshape))
        zero_bias = torch.zeros(self.out_channels, device=scaled_weight.device, dtype=x.dtype)
        conv = self._conv_forward(x, scaled_weight, zero_bias)
        conv_orig = conv / scale_factor.reshape(bshape)
        if self.bias is not None:
            conv_orig = conv_orig + self.bias.reshape(bshape)
        y = self.bn(conv_orig)
        if not self._RELU:
            return y
        return F.relu6(y) if self._relu6 else F.relu(y)

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant=False, name=None):
        """The QAT module for a fused float ConvBn / ConvBnReLU (torchquant's or torch.ao's)."""
        check_float_source(cls, mod, name)
        qconfig = _prepared_qconfig(mod)
        conv, bn, _ = _float_parts(mod)
        check_bn_statistics(bn, name or type(mod).__name__)
        qat = cls(**_conv_args(conv), eps=bn.eps, momentum=bn.momentum, freeze_bn=False, qconfig=qconfig,
                  device=conv.weight.device, dtype=conv.weight.dtype)
        qat.weight = conv.weight
        qat.bias = conv.bias
        qat.bn.weight = bn.weight
        qat.bn.bias = bn.bias
        qat.bn.running_mean = bn.running_mean
        qat.bn.running_var = bn.running_var
        qat.bn.num_batches_tracked = bn.num_batches_tracked
        if cls._RELU and has_relu6(mod):
            qat._relu6 = True
        return qat

    def folded_weight_bias(self):
        """(weight, bias) with the BatchNorm's running statistics folded in (what convert
        quantizes), with torch's fuse_conv_bn_weights."""
        from torch.nn.utils.fusion import fuse_conv_bn_weights

        return fuse_conv_bn_weights(self.weight, self.bias, self.bn.running_mean, self.bn.running_var,
                                    self.bn.eps, self.bn.weight, self.bn.bias)

    def to_float(self):
        w, b = self.folded_weight_bias()
        conv = _CONV[self._NSP](**dict(_conv_args(self), bias=True))
        conv.weight, conv.bias = w, b
        return self._with_activation(conv)


def _make_convbn(nsp, relu, float_module):
    base = _CONV[nsp]

    class QATConvBn(_ConvBn, base):
        _NSP = nsp
        _RELU = relu
        _FLOAT_MODULE = float_module

        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                     bias=None, padding_mode="zeros", eps=1e-05, momentum=0.1, freeze_bn=False, qconfig=None,
                     device=None, dtype=None):
            base.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                          bool(bias), padding_mode, device=device, dtype=dtype)
            self._init_bn(eps, momentum, freeze_bn, qconfig, device, dtype)

    return QATConvBn


def _family(make, relu, kind, floats, doc):
    """The 1-d, 2-d and 3-d QAT classes of one kind ("Conv", "ConvBnReLU", ...): make(nsp, relu,
    float module) builds each, the float module being floats.<kind><n>d; {n} in doc stands for
    the dimension."""
    out = []
    for n in (1, 2, 3):
        cls = make(n, relu, getattr(floats, f"{kind}{n}d"))
        cls.__name__ = cls.__qualname__ = f"{kind}{n}d"
        cls.__doc__ = doc.format(n=n)
        cls.__module__ = "torchquant.nn.qat"
        out.append(cls)
    return out


Conv1d, Conv2d, Conv3d = _family(_make_conv, False, "Conv", nn,
                                 "nn.Conv{n}d with fake-quantized weights (torch.ao.nn.qat.Conv{n}d).")
ConvReLU1d, ConvReLU2d, ConvReLU3d = _family(
    _make_conv, True, "ConvReLU", fused,
    "Fused Conv{n}d + ReLU with fake-quantized weights (torch.ao.nn.intrinsic.qat.ConvReLU{n}d).")
ConvBn1d, ConvBn2d, ConvBn3d = _family(
    _make_convbn, False, "ConvBn", fused,
    "Conv{n}d + BatchNorm{n}d folded for QAT (torch.ao.nn.intrinsic.qat.ConvBn{n}d).")
ConvBnReLU1d, ConvBnReLU2d, ConvBnReLU3d = _family(
    _make_convbn, True, "ConvBnReLU", fused,
    "Conv{n}d + BatchNorm{n}d + ReLU for QAT (torch.ao.nn.intrinsic.qat.ConvBnReLU{n}d).")


def _has_bn_stats(mod):
    return isinstance(mod, _BnStats)


def freeze_bn_stats(mod):
    """Fixes the BatchNorm statistics of a QAT ConvBn / LinearBn1d module (for ``model.apply``;
    other modules are left alone), as torch.ao.nn.intrinsic.qat.freeze_bn_stats."""
    if _has_bn_stats(mod):
        mod.freeze_bn_stats()


def update_bn_stats(mod):
    """Lets a QAT ConvBn / LinearBn1d module update its BatchNorm statistics again (for
    ``model.apply``), as torch.ao.nn.intrinsic.qat.update_bn_stats."""
    if _has_bn_stats(mod):
        mod.update_bn_stats()
