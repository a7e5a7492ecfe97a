"""Qconfigs and mappings from torch.ao code: what the int8 modules cannot honour is refused by
name, and what torch.ao accepts (its mapping classes, empty mappings) behaves as there."""
import copy
import warnings

import pytest
import torch
from torch import nn

import torchquant as tq


def _per_channel(axis, fake=False):
    if fake:
        return tq.FakeQuantize.with_args(observer=tq.MovingAveragePerChannelMinMaxObserver, ch_axis=axis,
                                         quant_min=-128, quant_max=127, dtype=torch.qint8,
                                         qscheme=torch.per_channel_symmetric)
    return tq.PerChannelMinMaxObserver.with_args(ch_axis=axis, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)


@pytest.mark.parametrize("layer", [nn.Linear(8, 8), nn.Conv2d(8, 8, 3)], ids=["linear", "conv"])
def test_weight_observer_along_another_axis_is_refused(layer):
    # The int8 kernels scale each output channel: scales along the input channels would be
    # applied to the wrong channels (silently, where the weight is square).
    x = torch.randn(2, 8) if isinstance(layer, nn.Linear) else torch.randn(2, 8, 6, 6)
    m = nn.Sequential(tq.QuantStub(), copy.deepcopy(layer), tq.DeQuantStub()).eval()
    m.qconfig = tq.QConfig(tq.MinMaxObserver, _per_channel(1))
    p = tq.prepare(m)
    p(x)
    with pytest.raises(ValueError, match=r"1: the per-channel weight observer PerChannelMinMaxObserver has ch_axis=1"):
        tq.convert(p)
    # QAT: the fake-quant trains along axis 1; convert refuses instead of rounding along axis 0
    m = nn.Sequential(tq.QuantStub(), copy.deepcopy(layer), tq.DeQuantStub()).train()
    m.qconfig = tq.QConfig(tq.default_fake_quant, _per_channel(1, fake=True))
    p = tq.prepare_qat(m)
    p(x)
    with pytest.raises(ValueError, match="ch_axis must be 0"):
        tq.convert(p.eval())
    # axis 0 (or -ndim) converts
    m = nn.Sequential(tq.QuantStub(), copy.deepcopy(layer), tq.DeQuantStub()).eval()
    m.qconfig = tq.QConfig(tq.MinMaxObserver, _per_channel(-layer.weight.dim()))
    p = tq.prepare(m)
    p(x)
    tq.convert(p)


def test_dynamic_weight_observer_along_another_axis_is_refused():
    with pytest.raises(ValueError, match="ch_axis=1"):
        tq.quantize_dynamic(nn.Sequential(nn.Linear(8, 8)), {nn.Linear: tq.QConfig(tq.PlaceholderObserver, _per_channel(1))})


def test_per_channel_activation_observer_is_refused_at_prepare():
    act = tq.PerChannelMinMaxObserver.with_args(ch_axis=1, dtype=torch.quint8, qscheme=torch.per_channel_affine)
    m = nn.Sequential(tq.QuantStub(), nn.Linear(16, 8), tq.DeQuantStub()).eval()
    m.qconfig = tq.QConfig(act, tq.default_per_channel_weight_observer)
    with pytest.raises(ValueError, match=r"module '0' \(QuantStub\): its qconfig's activation PerChannelMinMaxObserver "
                                         r"is per channel"):
        tq.prepare(m)
    fq = tq.FakeQuantize.with_args(observer=tq.MovingAveragePerChannelMinMaxObserver, ch_axis=1, quant_min=0,
                                   quant_max=255, dtype=torch.quint8, qscheme=torch.per_channel_affine)
    m = nn.Sequential(tq.QuantStub(), nn.Linear(16, 8), tq.DeQuantStub()).train()
    m.qconfig = tq.QConfig(fq, tq.default_per_channel_weight_fake_quant)
    with pytest.raises(ValueError, match="is per channel"):
        tq.prepare_qat(m)


class _Scale(nn.Module):
    def forward(self, x):
        return x * 2


class _QScale(nn.Module):
    """A quantized class written for torch.ao's mappings: from_float takes no name."""

    def forward(self, x):
        return x

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant=False):
        return cls()


def test_mapping_classes_written_for_torch_ao():
    m = nn.Sequential(tq.QuantStub(), nn.Linear(4, 4), _Scale(), tq.DeQuantStub()).eval()
    m.qconfig = tq.default_qconfig
    p = tq.prepare(m)
    p(torch.randn(2, 4))
    q = tq.convert(p, mapping={**tq.get_default_static_quant_module_mappings(), _Scale: _QScale})
    assert type(q[2]) is _QScale and type(q[1]) is tq.nn.quantized.Linear
    d = tq.quantize_dynamic(nn.Sequential(nn.Linear(4, 4), _Scale()), {nn.Linear, _Scale},
                            mapping={**tq.get_default_dynamic_quant_module_mappings(), _Scale: _QScale})
    assert type(d[1]) is _QScale
    # torch.ao's own QAT mapping: its classes stand for torchquant's (a torch.ao QAT Linear got no
    # output fake-quant from prepare and failed after convert); a user's QAT class is called as given
    m = nn.Sequential(tq.QuantStub(), nn.Linear(4, 4), _Scale(), tq.DeQuantStub()).train()
    m.qconfig = tq.default_qat_qconfig
    p = tq.prepare_qat(m, mapping={**torch.ao.quantization.get_default_qat_module_mappings(), _Scale: _QScale})
    assert type(p[1]) is tq.nn.qat.Linear and type(p[2]) is _QScale


def test_empty_mapping_swaps_nothing():
    m = nn.Sequential(nn.Linear(4, 4))
    assert type(tq.quantize_dynamic(copy.deepcopy(m), {nn.Linear}, mapping={})[0]) is nn.Linear
    s = nn.Sequential(tq.QuantStub(), nn.Linear(4, 4), tq.DeQuantStub()).eval()
    s.qconfig = tq.default_qconfig
    p = tq.prepare(s)
    p(torch.randn(2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = tq.convert(p, mapping={})
    assert [type(c) for c in q] == [tq.QuantStub, nn.Linear, tq.DeQuantStub]


def test_qconfig_getters_refuse_unknown_versions():
    assert tq.get_default_qconfig("x86", 0) is not None
    assert tq.get_default_qat_qconfig("x86", 0) is not None and tq.get_default_qat_qconfig("x86", 1) is not None
    with pytest.raises(ValueError, match="argument 'version' must be 0 .*got 1"):
        tq.get_default_qconfig("x86", 1)
    with pytest.raises(ValueError, match="argument 'version' must be 0 or 1 .*got 7"):
        tq.get_default_qat_qconfig("x86", 7)


def test_ranges_the_fake_quant_cannot_use_are_refused_at_construction():
    import torchquant as tq
    with pytest.raises(ValueError, match=r"FakeQuantize: the range \[-2147483648, 2147483647\] \(dtype torch.qint32\)"):
        tq.FakeQuantize(observer=tq.MovingAverageMinMaxObserver, dtype=torch.qint32)
    tq.FakeQuantize(observer=tq.MovingAverageMinMaxObserver, dtype=torch.qint32, quant_min=-(1 << 23),
                    quant_max=1 << 23)  # within float32's exact integers
    with pytest.raises(ValueError, match=r"reduce_range=True halves \[quant_min, quant_max\] = \[0, 1\] to \[0, 0\]"):
        tq.MinMaxObserver(quant_min=0, quant_max=1, reduce_range=True)
