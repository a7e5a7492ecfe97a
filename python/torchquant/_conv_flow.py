"""The convolution entries of the eager flow: module mappings for prepare / prepare_qat /
convert, and the fusion patterns conv-bn, conv-bn-relu, conv-relu, linear-bn and convtranspose-bn of
``fuse_modules`` / ``fuse_modules_qat``. torch.ao's own fused modules (what
``torch.ao.quantization.fuse_modules`` makes, e.g. through torchvision's ``fuse_model()``) map
to the same torchquant modules as torchquant's."""
import copy
import functools
import warnings

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights, fuse_linear_bn_eval, fuse_linear_bn_weights

from .nn import intrinsic, qat
from .nn import quantized as nnq

try:  # torch.ao's fused modules, where torch still ships them
    import torch.ao.nn.intrinsic as _ao_nni
except ImportError:  # pragma: no cover
    _ao_nni = None

_DIMS = (1, 2, 3)


def _ours_and_ao(name):
    out = [getattr(intrinsic, name)]
    if _ao_nni is not None and hasattr(_ao_nni, name):
        out.append(getattr(_ao_nni, name))
    return out


def static_mappings():
    """float / fused / QAT convolution type -> int8 module type."""
    m = {}
    for d in _DIMS:
        conv, conv_relu = getattr(nnq, f"Conv{d}d"), getattr(nnq, f"ConvReLU{d}d")
        m[getattr(nn, f"Conv{d}d")] = conv
        m[getattr(qat, f"Conv{d}d")] = conv
        m[getattr(qat, f"ConvReLU{d}d")] = conv_relu
        m[getattr(qat, f"ConvBn{d}d")] = conv
        m[getattr(qat, f"ConvBnReLU{d}d")] = conv_relu
        for t in _ours_and_ao(f"ConvReLU{d}d"):
            m[t] = conv_relu
        # A ConvBn left unfolded (fused in training mode) is folded with its running statistics.
        for t in _ours_and_ao(f"ConvBn{d}d"):
            m[t] = conv
        for t in _ours_and_ao(f"ConvBnReLU{d}d"):
            m[t] = conv_relu
        # Transposed convolutions: static only, as torch.ao's (no QAT or fused modules).
        m[getattr(nn, f"ConvTranspose{d}d")] = getattr(nnq, f"ConvTranspose{d}d")
    m[qat.LinearBn1d] = nnq.Linear  # its BatchNorm folded in
    for t in _ours_and_ao("LinearBn1d"):  # fused for QAT but calibrated as it is: running statistics folded
        m[t] = nnq.Linear
    return m


def qat_mappings():
    """float / fused convolution type -> QAT module type."""
    m = {}
    for d in _DIMS:
        m[getattr(nn, f"Conv{d}d")] = getattr(qat, f"Conv{d}d")
        for name in ("ConvReLU", "ConvBn", "ConvBnReLU"):
            for t in _ours_and_ao(f"{name}{d}d"):
                m[t] = getattr(qat, f"{name}{d}d")
    for t in _ours_and_ao("LinearBn1d"):
        m[t] = qat.LinearBn1d
    return m


def fused_types():
    """Fused module types whose children prepare leaves alone (the fused module is observed)."""
    out = []
    for d in _DIMS:
        for name in ("ConvReLU", "ConvBn", "ConvBnReLU"):
            out += _ours_and_ao(f"{name}{d}d")
        out += [getattr(qat, f"ConvBn{d}d"), getattr(qat, f"ConvBnReLU{d}d")]  # their BatchNorm child
    return tuple(out + _ours_and_ao("LinearBn1d") + [qat.LinearBn1d])


def _check_eval(mods, is_qat, what):
    if not is_qat and any(m.training for m in mods):
        raise ValueError(f"fuse_modules: {what} folds the BatchNorm with its running statistics, in eval mode only; "
                         "call model.eval() first, or use fuse_modules_qat to train with it")


def _conv_bn(conv, bn, is_qat=False):
    if is_qat:
        return getattr(intrinsic, f"ConvBn{conv.weight.dim() - 2}d")(conv, bn)
    _check_eval((conv, bn), is_qat, "[Conv, BatchNorm]")
    return fuse_conv_bn_eval(conv, bn)


def _conv_bn_relu(conv, bn, relu, is_qat=False):
    d = conv.weight.dim() - 2
    if is_qat:
        return getattr(intrinsic, f"ConvBnReLU{d}d")(conv, bn, relu)
    _check_eval((conv, bn), is_qat, "[Conv, BatchNorm, ReLU]")
    return getattr(intrinsic, f"ConvReLU{d}d")(fuse_conv_bn_eval(conv, bn), relu)


def _conv_relu(conv, relu, is_qat=False):
    return getattr(intrinsic, f"ConvReLU{conv.weight.dim() - 2}d")(conv, relu)


def _linear_bn(linear, bn, is_qat=False):
    if is_qat:
        return intrinsic.LinearBn1d(linear, bn)
    _check_eval((linear, bn), is_qat, "[Linear, BatchNorm1d]")
    if bn.weight is None or bn.bias is None:
        # affine=False: torch's fuse_linear_bn_eval multiplies by the missing weight; fold the
        # statistics with a gamma of ones and a beta of zeros, as the convolutions do
        fused = copy.deepcopy(linear)
        fused.weight, fused.bias = fuse_linear_bn_weights(linear.weight, linear.bias, bn.running_mean,
                                                          bn.running_var, bn.eps, *qat.bn_affine(bn))
        return fused
    return fuse_linear_bn_eval(linear, bn)


def _convtranspose_bn(convt, bn, is_qat=False):
    if is_qat:
        raise ValueError(f"fuse_modules_qat: [{type(convt).__name__}, {type(bn).__name__}] cannot be fused for QAT "
                         "(no QAT ConvTranspose-BatchNorm module, as in torch.ao); fuse it for inference with "
                         "fuse_modules on the eval-mode model, or leave the BatchNorm unfused "
                         "(find_fusable_modules(model, qat=True) leaves it out)")
    if convt.training or bn.training:
        raise ValueError(f"fuse_modules: [{type(convt).__name__}, {type(bn).__name__}] folds the BatchNorm with its "
                         "running statistics, in eval mode only; call model.eval() first")
    return _fold_bn_into_convtranspose(convt, bn)


def _fold_bn_into_convtranspose(convt, bn):
    """torch's ``fuse_conv_bn_eval(convt, bn, transpose=True)`` (the same arithmetic, in the same
    order), for any ``groups``: torch's scales weight column j by the BatchNorm's channel j, which
    is right only for groups=1 (the weight is [Cin, Cout / groups, *kernel]; output channel
    ``(i // (Cin / groups)) * (Cout / groups) + j``) and a shape error otherwise."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"fuse_modules: {type(bn).__name__} has no running statistics (track_running_stats=False) "
                         "to fold into the ConvTranspose")
    w = convt.weight
    groups, cin, cout_g = convt.groups, w.shape[0], w.shape[1]
    if bn.num_features != groups * cout_g:
        raise ValueError(f"fuse_modules: {type(bn).__name__}({bn.num_features}) after a {type(convt).__name__} with "
                         f"{groups * cout_g} output channels")
    fused = copy.deepcopy(convt)
    with torch.no_grad():
        rm, rv = bn.running_mean, bn.running_var
        bw = bn.weight if bn.weight is not None else torch.ones_like(rm)
        bb = bn.bias if bn.bias is not None else torch.zeros_like(rm)
        cb = convt.bias if convt.bias is not None else torch.zeros_like(rm)
        bias_dtype = cb.dtype if convt.bias is not None else w.dtype  # as torch's
        rsqrt = torch.rsqrt(rv + bn.eps)
        factor = (bw * rsqrt).reshape(groups, 1, cout_g, *([1] * (w.dim() - 2)))
        fw = (w.reshape(groups, cin // groups, cout_g, *w.shape[2:]) * factor).reshape(w.shape).to(w.dtype)
        fb = ((cb - rm) * rsqrt * bw + bb).to(bias_dtype)
    fused.weight = nn.Parameter(fw, w.requires_grad)
    fused.bias = nn.Parameter(fb, convt.bias is not None and convt.bias.requires_grad)
    return fused


@functools.lru_cache(maxsize=None)
def _torchvision_ops():
    """torchvision.ops (and its misc module) when torchvision is installed and imports, else None.
    torchvision is optional: one that is installed but fails to import (a build for another torch:
    "operator torchvision::nms does not exist") must not make torchquant fail to import; it is
    said once, and its module types are then not handled."""
    try:
        import torchvision.ops
        import torchvision.ops.misc
    except ImportError:
        return None
    except Exception as exc:  # noqa: BLE001 (whatever a broken install raises)
        warnings.warn(f"torchquant: torchvision is installed but failed to import ({type(exc).__name__}: "
                      f"{str(exc)[:200]}); its FrozenBatchNorm2d, StochasticDepth and Permute modules are not "
                      f"handled (install the torchvision release built for this torch)", RuntimeWarning, stacklevel=2)
        return None
    return torchvision.ops


def frozen_bn_types():
    """torchvision's FrozenBatchNorm2d (its detection backbones' BatchNorm: running statistics and
    affine map held as constant buffers), when torchvision is installed."""
    ops = _torchvision_ops()
    return () if ops is None else (ops.misc.FrozenBatchNorm2d,)


def torchvision_passthrough_types():
    """(StochasticDepth, Permute) of torchvision when it is installed: the identity in inference,
    and a layout change that a per-tensor QTensor takes natively (ConvNeXt, EfficientNet, Swin,
    MaxViT hold them between int8 layers)."""
    ops = _torchvision_ops()
    return (None, None) if ops is None else (ops.StochasticDepth, ops.misc.Permute)


def _fold_frozen_bn(conv, bn):
    """conv with a FrozenBatchNorm2d folded into its weight and bias: for inference and for QAT
    alike (nothing of a frozen BatchNorm trains, so folding it changes no computation), in any
    mode. Its arithmetic is fuse_conv_bn_eval's."""
    fused = copy.deepcopy(conv)
    fused.weight, fused.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                                    bn.weight, bn.bias)
    return fused


def _conv_frozen_bn(conv, bn, is_qat=False):
    return _fold_frozen_bn(conv, bn)


def _conv_frozen_bn_relu(conv, bn, relu, is_qat=False):
    return intrinsic.ConvReLU2d(_fold_frozen_bn(conv, bn), relu)


def fusions():
    """(module types) -> fuser(*modules, is_qat)."""
    f = {(nn.Linear, nn.BatchNorm1d): _linear_bn}
    for d in _DIMS:
        conv, bn = getattr(nn, f"Conv{d}d"), getattr(nn, f"BatchNorm{d}d")
        f[(conv, bn)] = _conv_bn
        f[(conv, bn, nn.ReLU)] = _conv_bn_relu
        f[(conv, nn.ReLU)] = _conv_relu
        f[(conv, bn, nn.ReLU6)] = _conv_bn_relu
        f[(conv, nn.ReLU6)] = _conv_relu
    for pattern in qat_unfusable():
        f[pattern] = _convtranspose_bn
    for frozen in frozen_bn_types():
        f[(nn.Conv2d, frozen)] = _conv_frozen_bn
        f[(nn.Conv2d, frozen, nn.ReLU)] = _conv_frozen_bn_relu
        f[(nn.Conv2d, frozen, nn.ReLU6)] = _conv_frozen_bn_relu
    return f


def qat_unfusable():
    """Patterns fuse_modules folds for inference but fuse_modules_qat rejects."""
    return {(getattr(nn, f"ConvTranspose{d}d"), getattr(nn, f"BatchNorm{d}d")) for d in _DIMS}


def relu_folds():
    """int8 module type -> its ReLU-fused type, for convert's folding of a following ReLU."""
    return {getattr(nnq, f"Conv{d}d"): getattr(nnq, f"ConvReLU{d}d") for d in _DIMS}


def fuse_conv_bn(is_qat, conv, bn):
    """[Conv, BatchNorm] fused (torch.ao.quantization.fuse_conv_bn): for QAT a
    ``torchquant.nn.intrinsic.ConvBn*d``, else the conv with the BatchNorm folded in (eval mode).

    >>> fused = torchquant.fuse_conv_bn(False, conv.eval(), bn.eval())
    """
    return _conv_bn(conv, bn, is_qat=is_qat)


def fuse_conv_bn_relu(is_qat, conv, bn, relu):
    """[Conv, BatchNorm, ReLU] fused (torch.ao.quantization.fuse_conv_bn_relu): for QAT a
    ``ConvBnReLU*d``, else a ``ConvReLU*d`` of the folded conv (eval mode)."""
    return _conv_bn_relu(conv, bn, relu, is_qat=is_qat)


def fuse_convtranspose_bn(is_qat, convt, bn):
    """[ConvTranspose, BatchNorm] -> the ConvTranspose with the BatchNorm's running statistics
    folded into its weight and bias (torch.ao.quantization.fuse_convtranspose_bn; torch's
    ``fuse_conv_bn_eval(..., transpose=True)``), eval mode; QAT has no such module (a ValueError,
    as torch.ao's)."""
    return _convtranspose_bn(convt, bn, is_qat=is_qat)


def fuse_linear_bn(is_qat, linear, bn):
    """[Linear, BatchNorm1d] folded into one Linear, eval mode (torch.ao.quantization.fuse_linear_bn);
    for QAT a ``torchquant.nn.intrinsic.LinearBn1d``."""
    return _linear_bn(linear, bn, is_qat=is_qat)
