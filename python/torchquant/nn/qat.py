"""Quantization-aware-training modules: float modules whose weight goes through a
FakeQuantize in every forward, so training sees the int8 rounding."""
import torch
import torch.nn.functional as F
from torch import nn

from . import intrinsic
from .qat_conv import _BnStats, check_bn_statistics, check_float_source, fake_quant_folded_weight, running_std_of

__all__ = ["Linear", "LinearReLU", "LinearBn1d", "Embedding", "EmbeddingBag"]


class Linear(nn.Linear):
    """nn.Linear with fake-quantized weights (torch.ao.nn.qat.Linear)."""

    _FLOAT_MODULE = nn.Linear

    def __init__(self, in_features, out_features, bias=True, qconfig=None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        if qconfig is None:
            raise ValueError("qat.Linear needs a qconfig (argument 'qconfig')")
        self.qconfig = qconfig
        self.weight_fake_quant = qconfig.weight()
        if device is not None:
            self.weight_fake_quant.to(device)

    def forward(self, input):  # (torch.nn's name: input= calls work)
        x = input
        return F.linear(x, self.weight_fake_quant(self.weight), self.bias)

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant=False, name=None):
        check_float_source(cls, mod, name)
        linear = mod[0] if isinstance(mod, nn.Sequential) else mod
        qconfig = getattr(mod, "qconfig", None)
        if qconfig is None:
            raise ValueError(f"{type(mod).__name__} has no qconfig; prepare_qat assigns one")
        qat = cls(linear.in_features, linear.out_features, linear.bias is not None, qconfig=qconfig,
                  device=linear.weight.device, dtype=linear.weight.dtype)
        qat.weight = linear.weight
        qat.bias = linear.bias
        return qat

    def to_float(self):
        lin = nn.Linear(self.in_features, self.out_features, self.bias is not None)
        lin.weight = self.weight
        lin.bias = self.bias
        return lin


class LinearReLU(Linear):
    """Fused Linear + ReLU with fake-quantized weights (torch.ao.nn.intrinsic.qat.LinearReLU)."""

    _FLOAT_MODULE = intrinsic.LinearReLU

    def forward(self, input):  # (torch.nn's name: input= calls work)
        x = input
        return F.relu(F.linear(x, self.weight_fake_quant(self.weight), self.bias))


def bn_affine(bn):
    """A BatchNorm's (weight, bias), ones and zeros for affine=False (torch's fuse_linear_bn_weights
    needs tensors)."""
    rm = bn.running_mean
    return (bn.weight if bn.weight is not None else torch.ones_like(rm),
            bn.bias if bn.bias is not None else torch.zeros_like(rm))


class LinearBn1d(_BnStats, nn.Linear):
    """Linear + BatchNorm1d for QAT (torch.ao.nn.intrinsic.qat.LinearBn1d): the BatchNorm's scale
    is folded into the weight before its fake-quant, the Linear's output unscaled and passed
    through the BatchNorm, whose statistics update unless frozen (``freeze_bn_stats`` /
    ``update_bn_stats``, as the QAT ConvBn modules). ``convert`` folds the running statistics
    into the int8 weight and bias (an int8 ``Linear``)."""

    _FLOAT_MODULE = intrinsic.LinearBn1d

    def __init__(self, in_features, out_features, bias=True, eps=1e-05, momentum=0.1, freeze_bn=False,
                 qconfig=None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        if qconfig is None:
            raise ValueError("qat.LinearBn1d needs a qconfig (argument 'qconfig')")
        self.qconfig = qconfig
        self.weight_fake_quant = qconfig.weight()
        if device is not None:
            self.weight_fake_quant.to(device)
        self.bn = nn.BatchNorm1d(out_features, eps, momentum, True, True, device=device, dtype=dtype)
        self.freeze_bn = freeze_bn if self.training else True
        if self.training and not freeze_bn:
            self.update_bn_stats()
        else:
            self.freeze_bn_stats()

    def forward(self, input):  # (torch.nn's name: input= calls work)
        x = input
        running_std = running_std_of(self.bn, self.weight_fake_quant)
        gamma = self.bn.weight if self.bn.weight is not None else torch.ones_like(running_std)  # affine=False
        scale_factor = gamma / running_std
        scaled_weight = fake_quant_folded_weight(self.weight_fake_quant, self.weight * scale_factor.reshape(-1, 1))
        out = F.linear(x, scaled_weight, torch.zeros_like(scale_factor, dtype=x.dtype)) / scale_factor
        if self.bias is not None:
            out = out + self.bias
        return self.bn(out)

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant=False, name=None):
        """The QAT module for a fused LinearBn1d (torchquant's or torch.ao's)."""
        check_float_source(cls, mod, name)
        qconfig = getattr(mod, "qconfig", None)
        if qconfig is None:
            raise ValueError(f"{type(mod).__name__} has no qconfig; prepare_qat assigns one")
        linear, bn = mod[0], mod[1]
        check_bn_statistics(bn, name or type(mod).__name__)
        qat = cls(linear.in_features, linear.out_features, linear.bias is not None, bn.eps, bn.momentum,
                  qconfig=qconfig, device=linear.weight.device, dtype=linear.weight.dtype)
        qat.weight, qat.bias = linear.weight, linear.bias
        qat.bn.weight, qat.bn.bias = bn.weight, bn.bias
        qat.bn.running_mean, qat.bn.running_var = bn.running_mean, bn.running_var
        qat.bn.num_batches_tracked = bn.num_batches_tracked
        return qat

    def folded_weight_bias(self):
        """(weight, bias) with the BatchNorm's running statistics folded in (what convert
        quantizes), with torch's fuse_linear_bn_weights."""
        from torch.nn.utils.fusion import fuse_linear_bn_weights

        return fuse_linear_bn_weights(self.weight, self.bias, self.bn.running_mean, self.bn.running_var,
                                      self.bn.eps, *bn_affine(self.bn))

    def to_float(self):
        w, b = self.folded_weight_bias()
        lin = nn.Linear(self.in_features, self.out_features)
        lin.weight, lin.bias = w, b
        return lin


from .qat_conv import *  # noqa: E402,F401,F403  (QAT convolutions)
from .qat_conv import __all__ as _conv_all  # noqa: E402

__all__ = __all__ + _conv_all


def _check_embedding_qconfig(qconfig, name):
    if not qconfig:
        raise ValueError(f"{name} needs a qconfig (argument 'qconfig'): "
                         "torchquant.default_embedding_qat_qconfig or default_embedding_qat_qconfig_4bit")
    fq = qconfig.weight()
    qscheme = getattr(fq, "qscheme", None)
    if qscheme != torch.per_channel_affine_float_qparams:
        raise ValueError(f"{name}: embedding weights need a weight fake-quant with qscheme="
                         f"torch.per_channel_affine_float_qparams (torchquant.default_embedding_qat_qconfig), "
                         f"got {qscheme}")
    if not hasattr(fq, "fake_quant_enabled"):
        # An observer (float_qparams_weight_only_qconfig) would train on the float table and
        # convert with the min / max of every step's table.
        raise ValueError(f"{name}: QAT needs a weight FakeQuantize (torchquant.default_embedding_qat_qconfig), got "
                         f"the observer {type(fq).__name__}; float_qparams_weight_only_qconfig is for "
                         "post-training quantization (prepare / convert, no prepare_qat)")


def _check_max_norm(max_norm, name):
    if max_norm is not None:
        raise ValueError(f"{name}: max_norm renormalizes rows on lookup, which the quantized table cannot; an "
                         "embedding with max_norm is not quantized (give it qconfig None)")


class Embedding(nn.Embedding):
    """nn.Embedding whose table goes through a per-row float-qparams FakeQuantize in every forward
    (torch.ao.nn.qat.Embedding, the same arguments); ``convert`` turns it into the weight-only
    quantized ``torchquant.nn.quantized.Embedding`` with that fake-quant's qparams.

    >>> emb = nn.Embedding(1000, 64); emb.qconfig = torchquant.default_embedding_qat_qconfig
    >>> qat_emb = Embedding.from_float(emb)
    """

    _FLOAT_MODULE = nn.Embedding

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None, norm_type=2.0,
                 scale_grad_by_freq=False, sparse=False, _weight=None, device=None, dtype=None, qconfig=None):
        _check_max_norm(max_norm, "qat.Embedding")
        _check_embedding_qconfig(qconfig, "qat.Embedding")
        super().__init__(num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse,
                         _weight, device=device, dtype=dtype)
        self.qconfig = qconfig
        self.weight_fake_quant = qconfig.weight()
        if device is not None:
            self.weight_fake_quant.to(device)

    def forward(self, input):
        return F.embedding(input, self.weight_fake_quant(self.weight), self.padding_idx, self.max_norm,
                           self.norm_type, self.scale_grad_by_freq, self.sparse)

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant=False, name=None):
        name = name or f"qat.{cls.__name__}"
        if type(mod) is not cls._FLOAT_MODULE:
            raise TypeError(f"{name}: qat.{cls.__name__}.from_float takes an nn.{cls._FLOAT_MODULE.__name__}, "
                            f"got {type(mod).__name__}")
        qconfig = getattr(mod, "qconfig", None)
        _check_max_norm(mod.max_norm, name)
        _check_embedding_qconfig(qconfig, name)
        # _weight: the table is the float module's (no fresh one allocated and discarded)
        qat = cls(mod.num_embeddings, mod.embedding_dim, mod.padding_idx, mod.max_norm, mod.norm_type,
                  mod.scale_grad_by_freq, mod.sparse, _weight=mod.weight.detach(), device=mod.weight.device,
                  dtype=mod.weight.dtype, qconfig=qconfig)
        qat.weight = mod.weight
        return qat

    def to_float(self):
        emb = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse, _weight=self.weight.detach())
        emb.weight = self.weight
        emb.train(self.training)
        return emb


class EmbeddingBag(nn.EmbeddingBag):
    """nn.EmbeddingBag whose table goes through a per-row float-qparams FakeQuantize in every
    forward (torch.ao.nn.qat.EmbeddingBag, the same arguments); ``convert`` turns it into the
    weight-only quantized ``torchquant.nn.quantized.EmbeddingBag``."""

    _FLOAT_MODULE = nn.EmbeddingBag

    def __init__(self, num_embeddings, embedding_dim, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
                 mode="mean", sparse=False, _weight=None, include_last_offset=False, padding_idx=None,
                 qconfig=None, device=None, dtype=None):
        _check_max_norm(max_norm, "qat.EmbeddingBag")
        _check_embedding_qconfig(qconfig, "qat.EmbeddingBag")
        super().__init__(num_embeddings, embedding_dim, max_norm, norm_type, scale_grad_by_freq, mode, sparse,
                         _weight, include_last_offset, padding_idx, device=device, dtype=dtype)
        self.qconfig = qconfig
        self.weight_fake_quant = qconfig.weight()
        if device is not None:
            self.weight_fake_quant.to(device)

    def forward(self, input, offsets=None, per_sample_weights=None):
        return F.embedding_bag(input, self.weight_fake_quant(self.weight), offsets, self.max_norm, self.norm_type,
                               self.scale_grad_by_freq, self.mode, self.sparse, per_sample_weights,
                               self.include_last_offset, self.padding_idx)

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant=False, name=None):
        name = name or f"qat.{cls.__name__}"
        if type(mod) is not cls._FLOAT_MODULE:
            raise TypeError(f"{name}: qat.{cls.__name__}.from_float takes an nn.{cls._FLOAT_MODULE.__name__}, "
                            f"got {type(mod).__name__}")
        qconfig = getattr(mod, "qconfig", None)
        _check_max_norm(mod.max_norm, name)
        _check_embedding_qconfig(qconfig, name)
        qat = cls(mod.num_embeddings, mod.embedding_dim, mod.max_norm, mod.norm_type, mod.scale_grad_by_freq,
                  mod.mode, mod.sparse, _weight=mod.weight.detach(), include_last_offset=mod.include_last_offset,
                  padding_idx=mod.padding_idx, qconfig=qconfig, device=mod.weight.device, dtype=mod.weight.dtype)
        qat.weight = mod.weight
        return qat

    def to_float(self):
        bag = nn.EmbeddingBag(self.num_embeddings, self.embedding_dim, self.max_norm, self.norm_type,
                              self.scale_grad_by_freq, self.mode, self.sparse, self.weight.detach(),
                              self.include_last_offset, self.padding_idx)
        bag.weight = self.weight
        bag.train(self.training)
        return bag
